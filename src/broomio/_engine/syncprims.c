/*
 * syncprims.c -- Event, Lock, Semaphore, CapacityLimiter and Queue.
 *
 * Each primitive is a small C object that embeds one or two parking lots (sync.c) and the
 * state they guard: a flag, an owner, a counter, a set of borrowers, a ring of items.  The
 * operations that may wait (Event.wait, *.acquire, Queue.get/put, `async for`) return the
 * engine awaitable of op.c with kind OP_SYNC; op.c runs the awaitable protocol and checks
 * cancellation, then asks bro_sync_fresh() here to complete the operation now (DONE), park
 * the task (PARKED) or yield once because the step's budget is spent (BUDGET).  A resumed
 * waiter reads its outcome from task->wake like every other engine wait.  Operations that
 * never wait (release, set, put_nowait, close) are plain methods.
 *
 * Fairness by hand-off.  Whoever makes a resource available gives it directly to the first
 * waiter before waking it: Lock.release() makes the first waiter the owner; a Semaphore or
 * CapacityLimiter passes its permit on without counting it back in; Queue.put() hands its
 * item to the first waiting getter (as the getter's wake value); Queue.get() refills the
 * buffer from the first waiting putter.  This keeps the invariants
 *
 *     Lock:            waiters  =>  owner != NULL
 *     Semaphore:       waiters  =>  value == 0
 *     CapacityLimiter: waiters  =>  borrowed >= total
 *     Queue:           getters  =>  buffer empty;   putters  =>  buffer full
 *
 * so a newcomer's fast path can only succeed when nobody is waiting: it can never barge
 * ahead of a waiter, and every waiter is served in FIFO order.
 *
 * Cancellation safety.  A waiter is in one of two states.  Still parked: it is in the lot
 * and WAITING, it has received nothing, and cancellation (bro_task_deliver_cancel) unlinks
 * it in O(1) and wakes it with Cancelled; what it brought along (a putter's item, a
 * borrower) lives in its task->wake slot and is dropped by that very wake, since the put or
 * acquire did not happen.  Already served: it was unlinked and woken with its resource, so
 * it is READY, cancellation cannot abort it, its awaitable returns the resource, and the
 * cancellation hits its next checkpoint.  Either way nothing is lost or duplicated.
 *
 * Where a waiter's data lives.  A parked putter's item and a parked limiter waiter's
 * borrower are kept in the task's wake slot, which is unused while a task waits in a lot
 * (bro_task_wake overwrites it with the outcome).  The waker steals the item before it
 * wakes the putter, so the queue needs no parallel deque and removal stays O(1).
 *
 * Ownership.  A Lock owns a reference to its owner task, a Queue to its items, a
 * CapacityLimiter to its borrowers (a set).  The lots hold borrowed pointers, as everywhere:
 * a parked task is kept alive by its nursery, and a parked task's awaitable holds a strong
 * reference to the primitive, so a primitive outlives its waiters; if one is destroyed
 * anyway (cyclic garbage of an abandoned loop), it detaches its waiters first.
 *
 * Threads and loops.  The primitives are not thread-safe, and their waiters must all belong
 * to one loop (the one whose thread touches them): parking in a lot whose waiters run on
 * another loop, or waking waiters from anywhere but their loop's thread, raises
 * RuntimeError instead of corrupting that loop's ready ring.  A primitive may be used by
 * several loops one after the other.
 *
 * Condition is Python (broomio/_sync.py): it is trio's design on top of Lock and a
 * lowlevel.ParkingLot, using Lock._adopt() (trio's repark) to move notified waiters into
 * the lock's queue, so that they are woken by the hand-off of the lock itself.
 */
#include "loop.h"
#include "sync.h"
#include "syncprims.h"
#include "task.h"

/* CapacityLimiter total_tokens = math.inf. */
#define TOKENS_INFINITE PY_SSIZE_T_MAX

/* ---- helpers shared by the primitives ------------------------------------------------- */

static bro_state *state_of_type(PyTypeObject *type)
{
    PyObject *module = PyType_GetModuleByDef(type, &bro_module_def);
    return module ? (bro_state *)PyModule_GetState(module) : NULL;
}

static int no_arguments(const char *name, PyObject *args, PyObject *kwds)
{
    if (PyTuple_GET_SIZE(args) != 0 || (kwds != NULL && PyDict_GET_SIZE(kwds) != 0)) {
        PyErr_Format(PyExc_TypeError, "%s() takes no arguments", name);
        return -1;
    }
    return 0;
}

/* Every waiter of a primitive must run on the same loop as t; see the essay. */
static int check_park_loop(bro_lot *lot, bro_task *t, const char *what)
{
    if (lot->head != NULL && lot->head->loop != t->loop) {
        PyErr_Format(PyExc_RuntimeError,
                     "this %s is being waited on by tasks of another broomio loop; "
                     "synchronization primitives cannot be shared between running loops",
                     what);
        return -1;
    }
    return 0;
}

/* Waking a task pushes it on its loop's ready ring, which only that loop's thread may do. */
static int check_wake_loop(bro_lot *lot, const char *what)
{
    if (lot->head != NULL && lot->head->loop != bro_running_loop) {
        PyErr_Format(PyExc_RuntimeError,
                     "this %s has waiters in a broomio loop that is not running in this "
                     "thread; use loop.call_soon_threadsafe() to reach that loop",
                     what);
        return -1;
    }
    return 0;
}

static bro_task *current_task_or_error(const char *what)
{
    bro_task *t = bro_current_task();
    if (t == NULL)
        PyErr_Format(PyExc_RuntimeError, "%s must be called from a task run by a broomio loop",
                     what);
    return t;
}

/* Unlinks t from its lot and wakes it with a new exception of `type`.  The exception is
 * created first: if that fails, t stays parked and untouched. */
static int wake_with_new_error(bro_task *t, PyObject *type, const char *msg)
{
    PyObject *exc = PyObject_CallFunction(type, "s", msg);
    if (exc == NULL)
        return -1;
    bro_lot_unlink(t);
    bro_task_wake(t, NULL, exc);
    Py_DECREF(exc);
    return 0;
}

/* Unlinks t and wakes it with the exception currently set (which is cleared). */
static void wake_with_current_error(bro_task *t)
{
    PyObject *exc = bro_fetch_exception();
    if (exc == NULL) {
        /* Never wake a waiter as if it had succeeded. */
        exc = PyObject_CallFunction(PyExc_SystemError, "s", "broomio: lost error");
        if (exc == NULL)
            exc = bro_fetch_exception();
    }
    bro_lot_unlink(t);
    bro_task_wake(t, NULL, exc);
    Py_XDECREF(exc);
}

/* Parses a count argument: a non-negative int. */
static int parse_count(PyObject *obj, const char *what, Py_ssize_t *out)
{
    if (!PyLong_Check(obj) || PyBool_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be an int, not %.200s", what, Py_TYPE(obj)->tp_name);
        return -1;
    }
    Py_ssize_t n = PyLong_AsSsize_t(obj);
    if (n == -1 && PyErr_Occurred())
        return -1;
    if (n < 0) {
        PyErr_Format(PyExc_ValueError, "%s must be non-negative, got %zd", what, n);
        return -1;
    }
    *out = n;
    return 0;
}

/* ---- Event ---------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD bro_state *st;
    bro_lot lot;
    uint8_t flag;
} bro_event;

static PyObject *event_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    if (no_arguments("Event", args, kwds) < 0)
        return NULL;
    bro_state *st = state_of_type(type);
    if (st == NULL)
        return NULL;
    bro_event *ev = (bro_event *)type->tp_alloc(type, 0);
    if (ev != NULL)
        ev->st = st;
    return (PyObject *)ev;
}

static int event_fresh(bro_event *ev, bro_task *t, PyObject **res)
{
    if (ev->flag) {
        if (bro_budget_spend(t->loop))
            return BRO_SYNC_BUDGET;
        *res = Py_NewRef(Py_None);
        return BRO_SYNC_DONE;
    }
    if (check_park_loop(&ev->lot, t, "Event") < 0)
        return BRO_SYNC_ERROR;
    bro_lot_append(&ev->lot, t);
    return BRO_SYNC_PARKED;
}

static PyObject *event_set(bro_event *ev, PyObject *Py_UNUSED(ignored))
{
    if (ev->flag)
        Py_RETURN_NONE;
    if (check_wake_loop(&ev->lot, "Event") < 0)
        return NULL;
    ev->flag = 1;
    bro_lot_unpark(&ev->lot, PY_SSIZE_T_MAX, NULL);
    Py_RETURN_NONE;
}

static PyObject *event_is_set(bro_event *ev, PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(ev->flag);
}

static PyObject *event_wait(bro_event *ev, PyObject *Py_UNUSED(ignored))
{
    return bro_op_sync(ev->st, BRO_SYNC_EVENT_WAIT, (PyObject *)ev, NULL);
}

static PyObject *event_repr(bro_event *ev)
{
    return PyUnicode_FromFormat("<broomio.Event %s waiters=%zd>", ev->flag ? "set" : "unset",
                                ev->lot.len);
}

/* The primitives without object references share one traverse and one dealloc shape. */
static int plain_traverse(PyObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    return 0;
}

static void event_dealloc(bro_event *ev)
{
    PyTypeObject *tp = Py_TYPE(ev);
    PyObject_GC_UnTrack(ev);
    bro_lot_detach_all(&ev->lot);
    tp->tp_free((PyObject *)ev);
    Py_DECREF(tp);
}

static PyMethodDef event_methods[] = {
    {"set", (PyCFunction)event_set, METH_NOARGS,
     "set()\n--\n\nSet the flag and wake every waiting task.  Idempotent."},
    {"is_set", (PyCFunction)event_is_set, METH_NOARGS,
     "is_set()\n--\n\nTrue once set() has been called."},
    {"wait", (PyCFunction)event_wait, METH_NOARGS,
     "wait()\n--\n\nAwaitable: wait until the event is set (returns at once if it is)."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot event_slots[] = {
    {Py_tp_doc, "Event()\n--\n\nA flag that starts unset; set() wakes every task waiting in "
                "wait().  Once set it stays set."},
    {Py_tp_new, event_new},
    {Py_tp_dealloc, event_dealloc},
    {Py_tp_traverse, plain_traverse},
    {Py_tp_repr, event_repr},
    {Py_tp_methods, event_methods},
    {0, NULL},
};

static PyType_Spec event_spec = {
    .name = "broomio.Event",
    .basicsize = sizeof(bro_event),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = event_slots,
};

/* ---- Lock ----------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD bro_state *st;
    bro_lot lot;
    bro_task *owner; /* strong; NULL when free */
} bro_lock;

static PyObject *lock_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    if (no_arguments("Lock", args, kwds) < 0)
        return NULL;
    bro_state *st = state_of_type(type);
    if (st == NULL)
        return NULL;
    bro_lock *lk = (bro_lock *)type->tp_alloc(type, 0);
    if (lk != NULL)
        lk->st = st;
    return (PyObject *)lk;
}

static int lock_reacquire_error(void)
{
    /* Waiting would deadlock: the owner would be waiting for itself. */
    PyErr_SetString(PyExc_RuntimeError,
                    "attempt to re-acquire a Lock that this task already holds (a Lock is "
                    "not reentrant)");
    return BRO_SYNC_ERROR;
}

static int lock_fresh(bro_lock *lk, bro_task *t, PyObject **res)
{
    if (lk->owner == t)
        return lock_reacquire_error();
    if (lk->owner == NULL) {
        if (bro_budget_spend(t->loop))
            return BRO_SYNC_BUDGET;
        lk->owner = (bro_task *)Py_NewRef(t);
        *res = Py_NewRef(Py_None);
        return BRO_SYNC_DONE;
    }
    if (check_park_loop(&lk->lot, t, "Lock") < 0)
        return BRO_SYNC_ERROR;
    bro_lot_append(&lk->lot, t);
    return BRO_SYNC_PARKED;
}

static PyObject *lock_acquire(bro_lock *lk, PyObject *Py_UNUSED(ignored))
{
    return bro_op_sync(lk->st, BRO_SYNC_LOCK_ACQUIRE, (PyObject *)lk, NULL);
}

static PyObject *lock_acquire_nowait(bro_lock *lk, PyObject *Py_UNUSED(ignored))
{
    bro_task *t = current_task_or_error("Lock.acquire_nowait()");
    if (t == NULL)
        return NULL;
    if (lk->owner == t) {
        lock_reacquire_error();
        return NULL;
    }
    if (lk->owner != NULL) {
        PyErr_SetString(lk->st->WouldBlock, "the Lock is held by another task");
        return NULL;
    }
    lk->owner = (bro_task *)Py_NewRef(t);
    Py_RETURN_NONE;
}

/* Releases the lock held by the current task, handing it to the first waiter. */
static int lock_release_impl(bro_lock *lk)
{
    bro_task *t = bro_current_task();
    if (lk->owner == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "release of a Lock that is not held");
        return -1;
    }
    if (lk->owner != t) {
        PyErr_SetString(PyExc_RuntimeError,
                        "release of a Lock held by another task (only the task that "
                        "acquired a Lock can release it)");
        return -1;
    }
    if (check_wake_loop(&lk->lot, "Lock") < 0)
        return -1;
    bro_task *old = lk->owner;
    bro_task *next = lk->lot.head;
    if (next != NULL) {
        bro_lot_unlink(next);
        lk->owner = (bro_task *)Py_NewRef(next);
        bro_task_wake(next, NULL, NULL);
    } else {
        lk->owner = NULL;
    }
    Py_DECREF(old);
    return 0;
}

static PyObject *lock_release(bro_lock *lk, PyObject *Py_UNUSED(ignored))
{
    if (lock_release_impl(lk) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *lock_locked(bro_lock *lk, PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(lk->owner != NULL);
}

static PyObject *lock_held(bro_lock *lk, PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(lk->owner != NULL && lk->owner == bro_current_task());
}

/* Condition.notify(): moves up to n tasks parked in `parking_lot` (a lowlevel.ParkingLot) to
 * the end of this lock's queue.  The caller holds the lock, so they are woken by its
 * hand-off, each one owning the lock when it runs. */
static PyObject *lock_adopt(bro_lock *lk, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t n;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "_adopt() takes exactly 2 arguments (lot, n)");
        return NULL;
    }
    if (!Py_IS_TYPE(args[0], lk->st->lot_type)) {
        PyErr_SetString(PyExc_TypeError, "_adopt() argument 1 must be a lowlevel.ParkingLot");
        return NULL;
    }
    if (parse_count(args[1], "_adopt() argument 'n'", &n) < 0)
        return NULL;
    bro_task *t = bro_current_task();
    if (lk->owner == NULL || lk->owner != t) {
        PyErr_SetString(PyExc_RuntimeError, "the Lock must be held by the current task");
        return NULL;
    }
    bro_lot *from = bro_lot_object_lot(args[0]);
    if (check_wake_loop(from, "Condition") < 0)
        return NULL;
    Py_ssize_t moved = 0;
    while (moved < n && from->head != NULL) {
        bro_task *w = from->head;
        bro_lot_unlink(w);
        bro_lot_append(&lk->lot, w);
        moved++;
    }
    return PyLong_FromSsize_t(moved);
}

static PyObject *lock_aexit(bro_lock *lk, PyObject *const *Py_UNUSED(args),
                            Py_ssize_t Py_UNUSED(nargs))
{
    if (lock_release_impl(lk) < 0)
        return NULL;
    return bro_op_return(lk->st);
}

static PyObject *lock_repr(bro_lock *lk)
{
    if (lk->owner == NULL)
        return PyUnicode_FromFormat("<broomio.Lock unlocked>");
    return PyUnicode_FromFormat("<broomio.Lock locked by %R waiters=%zd>", (PyObject *)lk->owner,
                                lk->lot.len);
}

static int lock_traverse(bro_lock *lk, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(lk));
    Py_VISIT(lk->owner);
    return 0;
}

static int lock_clear(bro_lock *lk)
{
    Py_CLEAR(lk->owner);
    return 0;
}

static void lock_dealloc(bro_lock *lk)
{
    PyTypeObject *tp = Py_TYPE(lk);
    PyObject_GC_UnTrack(lk);
    bro_lot_detach_all(&lk->lot);
    lock_clear(lk);
    tp->tp_free((PyObject *)lk);
    Py_DECREF(tp);
}

static PyMethodDef lock_methods[] = {
    {"acquire", (PyCFunction)lock_acquire, METH_NOARGS,
     "acquire()\n--\n\nAwaitable: wait (in FIFO order) until the lock is free and take it."},
    {"acquire_nowait", (PyCFunction)lock_acquire_nowait, METH_NOARGS,
     "acquire_nowait()\n--\n\nTake the lock if it is free, else raise WouldBlock."},
    {"release", (PyCFunction)lock_release, METH_NOARGS,
     "release()\n--\n\nRelease the lock (held by this task), handing it to the first waiter."},
    {"locked", (PyCFunction)lock_locked, METH_NOARGS,
     "locked()\n--\n\nTrue if some task holds the lock."},
    {"_held", (PyCFunction)lock_held, METH_NOARGS, "True if the current task holds the lock."},
    {"_adopt", (PyCFunction)(void (*)(void))lock_adopt, METH_FASTCALL,
     "_adopt(lot, n)\n--\n\nMove up to n tasks parked in lot into this lock's queue."},
    {"__aenter__", (PyCFunction)lock_acquire, METH_NOARGS, NULL},
    {"__aexit__", (PyCFunction)(void (*)(void))lock_aexit, METH_FASTCALL, NULL},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot lock_slots[] = {
    {Py_tp_doc, "Lock()\n--\n\nA mutual-exclusion lock owned by the task that acquired it; "
                "waiters get it in FIFO order.  `async with lock:` acquires and releases."},
    {Py_tp_new, lock_new},
    {Py_tp_dealloc, lock_dealloc},
    {Py_tp_traverse, lock_traverse},
    {Py_tp_clear, lock_clear},
    {Py_tp_repr, lock_repr},
    {Py_tp_methods, lock_methods},
    {0, NULL},
};

static PyType_Spec lock_spec = {
    .name = "broomio.Lock",
    .basicsize = sizeof(bro_lock),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = lock_slots,
};

/* ---- Semaphore ------------------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD bro_state *st;
    bro_lot lot;
    Py_ssize_t value;
    Py_ssize_t max_value; /* -1: no maximum */
} bro_sem;

static PyObject *sem_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"value", "max_value", NULL};
    PyObject *value_obj, *max_obj = Py_None;
    Py_ssize_t value, max_value = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|$O:Semaphore", kwlist, &value_obj, &max_obj))
        return NULL;
    if (parse_count(value_obj, "Semaphore() argument 'value'", &value) < 0)
        return NULL;
    if (max_obj != Py_None) {
        if (parse_count(max_obj, "Semaphore() argument 'max_value'", &max_value) < 0)
            return NULL;
        if (max_value < value) {
            PyErr_Format(PyExc_ValueError,
                         "Semaphore() max_value (%zd) must be at least the initial value (%zd)",
                         max_value, value);
            return NULL;
        }
    }
    bro_state *st = state_of_type(type);
    if (st == NULL)
        return NULL;
    bro_sem *sem = (bro_sem *)type->tp_alloc(type, 0);
    if (sem != NULL) {
        sem->st = st;
        sem->value = value;
        sem->max_value = max_value;
    }
    return (PyObject *)sem;
}

static int sem_fresh(bro_sem *sem, bro_task *t, PyObject **res)
{
    if (sem->value > 0) {
        if (bro_budget_spend(t->loop))
            return BRO_SYNC_BUDGET;
        sem->value--;
        *res = Py_NewRef(Py_None);
        return BRO_SYNC_DONE;
    }
    if (check_park_loop(&sem->lot, t, "Semaphore") < 0)
        return BRO_SYNC_ERROR;
    bro_lot_append(&sem->lot, t);
    return BRO_SYNC_PARKED;
}

static PyObject *sem_acquire(bro_sem *sem, PyObject *Py_UNUSED(ignored))
{
    return bro_op_sync(sem->st, BRO_SYNC_SEM_ACQUIRE, (PyObject *)sem, NULL);
}

static PyObject *sem_acquire_nowait(bro_sem *sem, PyObject *Py_UNUSED(ignored))
{
    if (sem->value == 0) {
        PyErr_SetString(sem->st->WouldBlock, "the Semaphore's value is 0");
        return NULL;
    }
    sem->value--;
    Py_RETURN_NONE;
}

static int sem_release_impl(bro_sem *sem)
{
    if (sem->max_value >= 0 && sem->value >= sem->max_value) {
        PyErr_Format(PyExc_ValueError,
                     "Semaphore released too many times (its value would exceed max_value=%zd)",
                     sem->max_value);
        return -1;
    }
    bro_task *next = sem->lot.head;
    if (next != NULL) {
        /* Hand the permit to the first waiter: the value stays 0. */
        if (check_wake_loop(&sem->lot, "Semaphore") < 0)
            return -1;
        bro_lot_unlink(next);
        bro_task_wake(next, NULL, NULL);
    } else {
        sem->value++;
    }
    return 0;
}

static PyObject *sem_release(bro_sem *sem, PyObject *Py_UNUSED(ignored))
{
    if (sem_release_impl(sem) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *sem_locked(bro_sem *sem, PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(sem->value == 0);
}

static PyObject *sem_aexit(bro_sem *sem, PyObject *const *Py_UNUSED(args),
                           Py_ssize_t Py_UNUSED(nargs))
{
    if (sem_release_impl(sem) < 0)
        return NULL;
    return bro_op_return(sem->st);
}

static PyObject *sem_get_value(bro_sem *sem, void *Py_UNUSED(closure))
{
    return PyLong_FromSsize_t(sem->value);
}

static PyObject *sem_get_max_value(bro_sem *sem, void *Py_UNUSED(closure))
{
    if (sem->max_value < 0)
        Py_RETURN_NONE;
    return PyLong_FromSsize_t(sem->max_value);
}

static PyObject *sem_repr(bro_sem *sem)
{
    if (sem->max_value < 0)
        return PyUnicode_FromFormat("<broomio.Semaphore value=%zd waiters=%zd>", sem->value,
                                    sem->lot.len);
    return PyUnicode_FromFormat("<broomio.Semaphore value=%zd max_value=%zd waiters=%zd>",
                                sem->value, sem->max_value, sem->lot.len);
}

static void sem_dealloc(bro_sem *sem)
{
    PyTypeObject *tp = Py_TYPE(sem);
    PyObject_GC_UnTrack(sem);
    bro_lot_detach_all(&sem->lot);
    tp->tp_free((PyObject *)sem);
    Py_DECREF(tp);
}

static PyMethodDef sem_methods[] = {
    {"acquire", (PyCFunction)sem_acquire, METH_NOARGS,
     "acquire()\n--\n\nAwaitable: take a permit, waiting (in FIFO order) while the value is 0."},
    {"acquire_nowait", (PyCFunction)sem_acquire_nowait, METH_NOARGS,
     "acquire_nowait()\n--\n\nTake a permit, or raise WouldBlock if the value is 0."},
    {"release", (PyCFunction)sem_release, METH_NOARGS,
     "release()\n--\n\nGive a permit back (to the first waiter, if any).  ValueError if the "
     "value would exceed max_value."},
    {"locked", (PyCFunction)sem_locked, METH_NOARGS,
     "locked()\n--\n\nTrue if acquire() would wait (the value is 0)."},
    {"__aenter__", (PyCFunction)sem_acquire, METH_NOARGS, NULL},
    {"__aexit__", (PyCFunction)(void (*)(void))sem_aexit, METH_FASTCALL, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef sem_getset[] = {
    {"value", (getter)sem_get_value, NULL, "The number of permits available now.", NULL},
    {"max_value", (getter)sem_get_max_value, NULL, "The maximum value, or None.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot sem_slots[] = {
    {Py_tp_doc, "Semaphore(value, *, max_value=None)\n--\n\nA counter of permits; acquire() "
                "takes one (waiting in FIFO order while there is none), release() gives one "
                "back.  With max_value, releasing above it raises ValueError."},
    {Py_tp_new, sem_new},
    {Py_tp_dealloc, sem_dealloc},
    {Py_tp_traverse, plain_traverse},
    {Py_tp_repr, sem_repr},
    {Py_tp_methods, sem_methods},
    {Py_tp_getset, sem_getset},
    {0, NULL},
};

static PyType_Spec sem_spec = {
    .name = "broomio.Semaphore",
    .basicsize = sizeof(bro_sem),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = sem_slots,
};

/* ---- CapacityLimiter ------------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD bro_state *st;
    bro_lot lot;         /* each waiter's borrower is in its task->wake */
    Py_ssize_t total;    /* TOKENS_INFINITE for math.inf */
    PyObject *borrowers; /* set: who holds a token */
} bro_limiter;

static int parse_total(PyObject *obj, Py_ssize_t *out)
{
    if (PyFloat_Check(obj)) {
        double d = PyFloat_AS_DOUBLE(obj);
        if (Py_IS_INFINITY(d) && d > 0) {
            *out = TOKENS_INFINITE;
            return 0;
        }
    } else if (PyLong_Check(obj) && !PyBool_Check(obj)) {
        int overflow;
        long long n = PyLong_AsLongLongAndOverflow(obj, &overflow);
        if (n == -1 && PyErr_Occurred())
            return -1;
        if (overflow > 0 || n >= (long long)TOKENS_INFINITE) {
            *out = TOKENS_INFINITE - 1;
            return 0;
        }
        if (overflow < 0 || n < 1) {
            PyErr_Format(PyExc_ValueError, "total_tokens must be >= 1, got %R", obj);
            return -1;
        }
        *out = (Py_ssize_t)n;
        return 0;
    }
    PyErr_Format(PyExc_TypeError, "total_tokens must be an int or math.inf, not %R", obj);
    return -1;
}

static PyObject *limiter_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"total_tokens", NULL};
    PyObject *total_obj;
    Py_ssize_t total;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O:CapacityLimiter", kwlist, &total_obj))
        return NULL;
    if (parse_total(total_obj, &total) < 0)
        return NULL;
    bro_state *st = state_of_type(type);
    if (st == NULL)
        return NULL;
    PyObject *borrowers = PySet_New(NULL);
    if (borrowers == NULL)
        return NULL;
    bro_limiter *lim = (bro_limiter *)type->tp_alloc(type, 0);
    if (lim == NULL) {
        Py_DECREF(borrowers);
        return NULL;
    }
    lim->st = st;
    lim->total = total;
    lim->borrowers = borrowers;
    return (PyObject *)lim;
}

static int limiter_has_room(bro_limiter *lim)
{
    return PySet_GET_SIZE(lim->borrowers) < lim->total;
}

static int limiter_already_borrowing(void)
{
    PyErr_SetString(PyExc_RuntimeError,
                    "this borrower is already holding one of this CapacityLimiter's tokens");
    return BRO_SYNC_ERROR;
}

static int limiter_fresh(bro_limiter *lim, PyObject *borrower, bro_task *t, PyObject **res)
{
    int has = PySet_Contains(lim->borrowers, borrower);
    if (has < 0)
        return BRO_SYNC_ERROR;
    if (has)
        return limiter_already_borrowing();
    if (t->cancel_pending) {
        /* The borrower's __hash__/__eq__ may have cancelled us since op.c checked: never
         * park (or take a token) in a task that is already cancelled. */
        bro_raise_cancelled(lim->st);
        return BRO_SYNC_ERROR;
    }
    if (limiter_has_room(lim) && lim->lot.head == NULL) {
        if (bro_budget_spend(t->loop))
            return BRO_SYNC_BUDGET;
        if (PySet_Add(lim->borrowers, borrower) < 0)
            return BRO_SYNC_ERROR;
        *res = Py_NewRef(Py_None);
        return BRO_SYNC_DONE;
    }
    if (check_park_loop(&lim->lot, t, "CapacityLimiter") < 0)
        return BRO_SYNC_ERROR;
    Py_XSETREF(t->wake, Py_NewRef(borrower));
    t->wake_failed = 0;
    bro_lot_append(&lim->lot, t);
    return BRO_SYNC_PARKED;
}

/* Gives free tokens to the waiters, oldest first; each waiter's borrower is in its wake
 * slot.  A waiter whose borrower got a token meanwhile (two tasks acquiring on behalf of the
 * same borrower) is woken with RuntimeError instead.
 *
 * The set operations run the borrowers' __hash__/__eq__, which may do anything, including
 * cancelling this very waiter (which drops the borrower from its wake slot).  So the
 * borrower and the task are held while that code runs, and the waiter is served only if it
 * is still the first one afterwards; otherwise the token goes back and the loop starts
 * over with the current first waiter. */
static int limiter_serve(bro_limiter *lim)
{
    if (limiter_has_room(lim) && check_wake_loop(&lim->lot, "CapacityLimiter") < 0)
        return -1;
    while (limiter_has_room(lim) && lim->lot.head != NULL) {
        bro_task *w = (bro_task *)Py_NewRef(lim->lot.head);
        PyObject *borrower = Py_NewRef(w->wake);
        int has = PySet_Contains(lim->borrowers, borrower);
        int added = has == 0 ? PySet_Add(lim->borrowers, borrower) : 0;
        int still_first = lim->lot.head == w;
        int r = 0;
        if (!still_first) {
            if (has == 0 && added == 0 && PySet_Discard(lim->borrowers, borrower) < 0)
                r = -1;
            if (PyErr_Occurred() && r == 0)
                r = -1;
        } else if (has < 0 || added < 0) {
            wake_with_current_error(w);
        } else if (has) {
            r = wake_with_new_error(w, PyExc_RuntimeError,
                                    "this borrower is already holding one of this "
                                    "CapacityLimiter's tokens");
        } else {
            /* The set now holds its own reference; the wake drops the waiter's. */
            bro_lot_unlink(w);
            bro_task_wake(w, NULL, NULL);
        }
        Py_DECREF(borrower);
        Py_DECREF(w);
        if (r < 0)
            return -1;
    }
    return 0;
}

static PyObject *limiter_acquire_on_behalf_of(bro_limiter *lim, PyObject *borrower)
{
    return bro_op_sync(lim->st, BRO_SYNC_LIMITER_ACQUIRE, (PyObject *)lim, borrower);
}

static PyObject *limiter_acquire(bro_limiter *lim, PyObject *Py_UNUSED(ignored))
{
    bro_task *t = current_task_or_error("CapacityLimiter.acquire()");
    if (t == NULL)
        return NULL;
    return limiter_acquire_on_behalf_of(lim, (PyObject *)t);
}

static PyObject *limiter_acquire_on_behalf_of_nowait(bro_limiter *lim, PyObject *borrower)
{
    int has = PySet_Contains(lim->borrowers, borrower);
    if (has < 0)
        return NULL;
    if (has) {
        limiter_already_borrowing();
        return NULL;
    }
    if (!limiter_has_room(lim) || lim->lot.head != NULL) {
        PyErr_SetString(lim->st->WouldBlock, "no CapacityLimiter token is available");
        return NULL;
    }
    if (PySet_Add(lim->borrowers, borrower) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *limiter_acquire_nowait(bro_limiter *lim, PyObject *Py_UNUSED(ignored))
{
    bro_task *t = current_task_or_error("CapacityLimiter.acquire_nowait()");
    if (t == NULL)
        return NULL;
    return limiter_acquire_on_behalf_of_nowait(lim, (PyObject *)t);
}

static int limiter_release_impl(bro_limiter *lim, PyObject *borrower)
{
    /* Checked before anything changes, so a refused release leaves the limiter intact. */
    if (check_wake_loop(&lim->lot, "CapacityLimiter") < 0)
        return -1;
    int r = PySet_Discard(lim->borrowers, borrower);
    if (r < 0)
        return -1;
    if (r == 0) {
        PyErr_SetString(PyExc_RuntimeError,
                        "this borrower is not holding any of this CapacityLimiter's tokens");
        return -1;
    }
    return limiter_serve(lim);
}

static PyObject *limiter_release_on_behalf_of(bro_limiter *lim, PyObject *borrower)
{
    if (limiter_release_impl(lim, borrower) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *limiter_release(bro_limiter *lim, PyObject *Py_UNUSED(ignored))
{
    bro_task *t = current_task_or_error("CapacityLimiter.release()");
    if (t == NULL)
        return NULL;
    return limiter_release_on_behalf_of(lim, (PyObject *)t);
}

static PyObject *limiter_aexit(bro_limiter *lim, PyObject *const *Py_UNUSED(args),
                               Py_ssize_t Py_UNUSED(nargs))
{
    bro_task *t = current_task_or_error("CapacityLimiter.__aexit__()");
    if (t == NULL || limiter_release_impl(lim, (PyObject *)t) < 0)
        return NULL;
    return bro_op_return(lim->st);
}

static PyObject *limiter_get_total(bro_limiter *lim, void *Py_UNUSED(closure))
{
    if (lim->total == TOKENS_INFINITE)
        return PyFloat_FromDouble(Py_HUGE_VAL);
    return PyLong_FromSsize_t(lim->total);
}

static int limiter_set_total(bro_limiter *lim, PyObject *value, void *Py_UNUSED(closure))
{
    Py_ssize_t total;
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete total_tokens");
        return -1;
    }
    if (parse_total(value, &total) < 0)
        return -1;
    if (total > lim->total && check_wake_loop(&lim->lot, "CapacityLimiter") < 0)
        return -1;
    lim->total = total;
    return limiter_serve(lim);
}

static PyObject *limiter_get_borrowed(bro_limiter *lim, void *Py_UNUSED(closure))
{
    return PyLong_FromSsize_t(PySet_GET_SIZE(lim->borrowers));
}

static PyObject *limiter_get_available(bro_limiter *lim, void *Py_UNUSED(closure))
{
    if (lim->total == TOKENS_INFINITE)
        return PyFloat_FromDouble(Py_HUGE_VAL);
    Py_ssize_t left = lim->total - PySet_GET_SIZE(lim->borrowers);
    return PyLong_FromSsize_t(left > 0 ? left : 0);
}

static PyObject *limiter_repr(bro_limiter *lim)
{
    PyObject *total = limiter_get_total(lim, NULL);
    if (total == NULL)
        return NULL;
    PyObject *r = PyUnicode_FromFormat("<broomio.CapacityLimiter %zd/%R borrowed waiters=%zd>",
                                       PySet_GET_SIZE(lim->borrowers), total, lim->lot.len);
    Py_DECREF(total);
    return r;
}

static int limiter_traverse(bro_limiter *lim, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(lim));
    Py_VISIT(lim->borrowers);
    return 0;
}

static int limiter_clear(bro_limiter *lim)
{
    Py_CLEAR(lim->borrowers);
    return 0;
}

static void limiter_dealloc(bro_limiter *lim)
{
    PyTypeObject *tp = Py_TYPE(lim);
    PyObject_GC_UnTrack(lim);
    bro_lot_detach_all(&lim->lot);
    limiter_clear(lim);
    tp->tp_free((PyObject *)lim);
    Py_DECREF(tp);
}

static PyMethodDef limiter_methods[] = {
    {"acquire", (PyCFunction)limiter_acquire, METH_NOARGS,
     "acquire()\n--\n\nAwaitable: borrow a token for the current task, waiting in FIFO order."},
    {"acquire_nowait", (PyCFunction)limiter_acquire_nowait, METH_NOARGS,
     "acquire_nowait()\n--\n\nBorrow a token for the current task or raise WouldBlock."},
    {"acquire_on_behalf_of", (PyCFunction)limiter_acquire_on_behalf_of, METH_O,
     "acquire_on_behalf_of(borrower)\n--\n\nAwaitable: borrow a token for borrower (any "
     "hashable object)."},
    {"acquire_on_behalf_of_nowait", (PyCFunction)limiter_acquire_on_behalf_of_nowait, METH_O,
     "acquire_on_behalf_of_nowait(borrower)\n--\n\nBorrow a token for borrower or raise "
     "WouldBlock."},
    {"release", (PyCFunction)limiter_release, METH_NOARGS,
     "release()\n--\n\nGive back the current task's token."},
    {"release_on_behalf_of", (PyCFunction)limiter_release_on_behalf_of, METH_O,
     "release_on_behalf_of(borrower)\n--\n\nGive back borrower's token."},
    {"__aenter__", (PyCFunction)limiter_acquire, METH_NOARGS, NULL},
    {"__aexit__", (PyCFunction)(void (*)(void))limiter_aexit, METH_FASTCALL, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef limiter_getset[] = {
    {"total_tokens", (getter)limiter_get_total, (setter)limiter_set_total,
     "How many tokens exist (an int >= 1, or math.inf).  Raising it wakes waiters.", NULL},
    {"borrowed_tokens", (getter)limiter_get_borrowed, NULL, "How many tokens are borrowed.", NULL},
    {"available_tokens", (getter)limiter_get_available, NULL,
     "How many tokens are free (total_tokens - borrowed_tokens, at least 0).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot limiter_slots[] = {
    {Py_tp_doc, "CapacityLimiter(total_tokens)\n--\n\nA semaphore whose tokens are borrowed "
                "by someone (the current task by default), who must give them back; each "
                "borrower holds at most one token."},
    {Py_tp_new, limiter_new},
    {Py_tp_dealloc, limiter_dealloc},
    {Py_tp_traverse, limiter_traverse},
    {Py_tp_clear, limiter_clear},
    {Py_tp_repr, limiter_repr},
    {Py_tp_methods, limiter_methods},
    {Py_tp_getset, limiter_getset},
    {0, NULL},
};

static PyType_Spec limiter_spec = {
    .name = "broomio.CapacityLimiter",
    .basicsize = sizeof(bro_limiter),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = limiter_slots,
};

/* ---- Queue ---------------------------------------------------------------------------- */

/* The buffer is a ring whose capacity is a power of two (or 0 before the first item). */
typedef struct {
    PyObject_HEAD bro_state *st;
    bro_lot getters; /* only while the buffer is empty */
    bro_lot putters; /* only while the buffer is full; each one's item is in its task->wake */
    PyObject **buf;
    Py_ssize_t cap, head, len;
    Py_ssize_t maxsize; /* 0: unbounded */
    uint8_t closed;
} bro_queue;

#define QUEUE_MIN_CAP 8
#define QUEUE_SHRINK_CAP 64

static int queue_resize(bro_queue *q, Py_ssize_t cap)
{
    if ((size_t)cap > PY_SSIZE_T_MAX / sizeof(PyObject *)) {
        PyErr_NoMemory();
        return -1;
    }
    PyObject **buf = PyMem_Malloc((size_t)cap * sizeof(PyObject *));
    if (buf == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < q->len; i++)
        buf[i] = q->buf[(q->head + i) & (q->cap - 1)];
    PyMem_Free(q->buf);
    q->buf = buf;
    q->cap = cap;
    q->head = 0;
    return 0;
}

/* Appends a new reference to item. */
static int queue_push(bro_queue *q, PyObject *item)
{
    if (q->len == q->cap && queue_resize(q, q->cap ? q->cap * 2 : QUEUE_MIN_CAP) < 0)
        return -1;
    q->buf[(q->head + q->len) & (q->cap - 1)] = Py_NewRef(item);
    q->len++;
    return 0;
}

/* Removes the oldest item and returns the buffer's reference to it. */
static PyObject *queue_pop(bro_queue *q)
{
    PyObject *item = q->buf[q->head];
    q->buf[q->head] = NULL;
    q->head = (q->head + 1) & (q->cap - 1);
    q->len--;
    return item;
}

/* A queue that once held many items gives the memory back as it drains.  Best effort: a
 * failed allocation just keeps the bigger ring. */
static void queue_maybe_shrink(bro_queue *q)
{
    if (q->cap > QUEUE_SHRINK_CAP && q->len <= q->cap / 4 && queue_resize(q, q->cap / 2) < 0)
        PyErr_Clear();
}

static int queue_full(bro_queue *q)
{
    return q->maxsize > 0 && q->len >= q->maxsize;
}

static PyObject *queue_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"maxsize", NULL};
    PyObject *max_obj = NULL;
    Py_ssize_t maxsize = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|O:Queue", kwlist, &max_obj))
        return NULL;
    if (max_obj != NULL && parse_count(max_obj, "Queue() argument 'maxsize'", &maxsize) < 0)
        return NULL;
    bro_state *st = state_of_type(type);
    if (st == NULL)
        return NULL;
    bro_queue *q = (bro_queue *)type->tp_alloc(type, 0);
    if (q != NULL) {
        q->st = st;
        q->maxsize = maxsize;
    }
    return (PyObject *)q;
}

static int queue_closed_error(bro_queue *q, const char *msg)
{
    PyErr_SetString(q->st->ClosedResourceError, msg);
    return BRO_SYNC_ERROR;
}

/* The non-waiting part of put(): hand the item to the first getter, or buffer it.  Returns
 * DONE, ERROR, or PARKED meaning "it would have to wait" (nothing was done). */
static int queue_try_put(bro_queue *q, PyObject *item, bro_task *t)
{
    if (q->closed)
        return queue_closed_error(q, "put() on a closed Queue");
    bro_task *getter = q->getters.head;
    if (getter != NULL) {
        /* Getters wait only on an empty buffer: the item goes straight to the oldest. */
        if (check_wake_loop(&q->getters, "Queue") < 0)
            return BRO_SYNC_ERROR;
        if (t != NULL && bro_budget_spend(t->loop))
            return BRO_SYNC_BUDGET;
        bro_lot_unlink(getter);
        bro_task_wake(getter, item, NULL);
        return BRO_SYNC_DONE;
    }
    if (!queue_full(q)) {
        if (t != NULL && bro_budget_spend(t->loop))
            return BRO_SYNC_BUDGET;
        return queue_push(q, item) < 0 ? BRO_SYNC_ERROR : BRO_SYNC_DONE;
    }
    return BRO_SYNC_PARKED;
}

static int queue_put_fresh(bro_queue *q, PyObject *item, bro_task *t, PyObject **res)
{
    int r = queue_try_put(q, item, t);
    if (r == BRO_SYNC_DONE)
        *res = Py_NewRef(Py_None);
    if (r != BRO_SYNC_PARKED)
        return r;
    if (check_park_loop(&q->putters, t, "Queue") < 0)
        return BRO_SYNC_ERROR;
    Py_XSETREF(t->wake, Py_NewRef(item));
    t->wake_failed = 0;
    bro_lot_append(&q->putters, t);
    return BRO_SYNC_PARKED;
}

/* The non-waiting part of get(): take the oldest item and refill the freed slot from the
 * oldest putter.  Returns DONE with *res, ERROR, or PARKED meaning "it would have to wait". */
static int queue_try_get(bro_queue *q, bro_task *t, int for_next, PyObject **res)
{
    if (q->len == 0) {
        if (!q->closed)
            return BRO_SYNC_PARKED;
        if (for_next) {
            PyErr_SetNone(PyExc_StopAsyncIteration);
            return BRO_SYNC_ERROR;
        }
        return queue_closed_error(q, "get() on a closed and empty Queue");
    }
    bro_task *putter = q->putters.head;
    if (putter != NULL && check_wake_loop(&q->putters, "Queue") < 0)
        return BRO_SYNC_ERROR;
    if (t != NULL && bro_budget_spend(t->loop))
        return BRO_SYNC_BUDGET;
    *res = queue_pop(q);
    if (putter != NULL) {
        /* Putters wait only on a full buffer, so the slot just freed is theirs, FIFO.  The
         * push cannot fail: the ring has room for the item that was just popped. */
        PyObject *item = putter->wake;
        putter->wake = NULL;
        q->buf[(q->head + q->len) & (q->cap - 1)] = item;
        q->len++;
        bro_lot_unlink(putter);
        bro_task_wake(putter, NULL, NULL);
    } else {
        queue_maybe_shrink(q);
    }
    return BRO_SYNC_DONE;
}

static int queue_get_fresh(bro_queue *q, bro_task *t, int for_next, PyObject **res)
{
    int r = queue_try_get(q, t, for_next, res);
    if (r != BRO_SYNC_PARKED)
        return r;
    if (check_park_loop(&q->getters, t, "Queue") < 0)
        return BRO_SYNC_ERROR;
    bro_lot_append(&q->getters, t);
    return BRO_SYNC_PARKED;
}

static PyObject *queue_put(bro_queue *q, PyObject *item)
{
    return bro_op_sync(q->st, BRO_SYNC_QUEUE_PUT, (PyObject *)q, item);
}

static PyObject *queue_get(bro_queue *q, PyObject *Py_UNUSED(ignored))
{
    return bro_op_sync(q->st, BRO_SYNC_QUEUE_GET, (PyObject *)q, NULL);
}

static PyObject *queue_anext(bro_queue *q)
{
    return bro_op_sync(q->st, BRO_SYNC_QUEUE_NEXT, (PyObject *)q, NULL);
}

static PyObject *queue_aiter(PyObject *self)
{
    return Py_NewRef(self);
}

static PyObject *queue_put_nowait(bro_queue *q, PyObject *item)
{
    int r = queue_try_put(q, item, NULL);
    if (r == BRO_SYNC_ERROR)
        return NULL;
    if (r == BRO_SYNC_PARKED) {
        PyErr_Format(q->st->WouldBlock, "the Queue is full (maxsize=%zd)", q->maxsize);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *queue_get_nowait(bro_queue *q, PyObject *Py_UNUSED(ignored))
{
    PyObject *item = NULL;
    int r = queue_try_get(q, NULL, 0, &item);
    if (r == BRO_SYNC_ERROR)
        return NULL;
    if (r == BRO_SYNC_PARKED) {
        PyErr_SetString(q->st->WouldBlock, "the Queue is empty");
        return NULL;
    }
    return item;
}

static PyObject *queue_close(bro_queue *q, PyObject *Py_UNUSED(ignored))
{
    if (q->closed)
        Py_RETURN_NONE;
    if (check_wake_loop(&q->putters, "Queue") < 0 || check_wake_loop(&q->getters, "Queue") < 0)
        return NULL;
    q->closed = 1;
    /* Waiting putters' items were never put: each put() raises.  Getters wait only while the
     * buffer is empty, so they are all drained already and their get() raises too. */
    while (q->putters.head != NULL) {
        if (wake_with_new_error(q->putters.head, q->st->ClosedResourceError,
                                "the Queue was closed while put() was waiting") < 0)
            return NULL;
    }
    while (q->getters.head != NULL) {
        if (wake_with_new_error(q->getters.head, q->st->ClosedResourceError,
                                "the Queue was closed while get() was waiting") < 0)
            return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *queue_qsize(bro_queue *q, PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromSsize_t(q->len);
}

static PyObject *queue_empty(bro_queue *q, PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(q->len == 0);
}

static PyObject *queue_full_method(bro_queue *q, PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(queue_full(q));
}

static PyObject *queue_get_maxsize(bro_queue *q, void *Py_UNUSED(closure))
{
    return PyLong_FromSsize_t(q->maxsize);
}

static PyObject *queue_get_closed(bro_queue *q, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(q->closed);
}

static PyObject *queue_repr(bro_queue *q)
{
    return PyUnicode_FromFormat("<broomio.Queue%s size=%zd maxsize=%zd getters=%zd putters=%zd>",
                                q->closed ? " closed" : "", q->len, q->maxsize, q->getters.len,
                                q->putters.len);
}

static int queue_traverse(bro_queue *q, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(q));
    for (Py_ssize_t i = 0; i < q->len; i++)
        Py_VISIT(q->buf[(q->head + i) & (q->cap - 1)]);
    return 0;
}

static int queue_clear(bro_queue *q)
{
    /* Detach the ring before releasing the items: an item's finalizer may run arbitrary
     * code, including code that uses this queue, and must find it consistent (empty). */
    while (q->buf != NULL) {
        PyObject **buf = q->buf;
        Py_ssize_t cap = q->cap, head = q->head, len = q->len;
        q->buf = NULL;
        q->cap = q->head = q->len = 0;
        for (Py_ssize_t i = 0; i < len; i++)
            Py_DECREF(buf[(head + i) & (cap - 1)]);
        PyMem_Free(buf);
    }
    return 0;
}

static void queue_dealloc(bro_queue *q)
{
    PyTypeObject *tp = Py_TYPE(q);
    PyObject_GC_UnTrack(q);
    bro_lot_detach_all(&q->getters);
    bro_lot_detach_all(&q->putters);
    queue_clear(q);
    tp->tp_free((PyObject *)q);
    Py_DECREF(tp);
}

static PyMethodDef queue_methods[] = {
    {"put", (PyCFunction)queue_put, METH_O,
     "put(item)\n--\n\nAwaitable: append item, waiting (in FIFO order) while the queue is "
     "full.  ClosedResourceError if the queue is (or gets) closed."},
    {"get", (PyCFunction)queue_get, METH_NOARGS,
     "get()\n--\n\nAwaitable: remove and return the oldest item, waiting (in FIFO order) "
     "while the queue is empty.  ClosedResourceError once closed and drained."},
    {"put_nowait", (PyCFunction)queue_put_nowait, METH_O,
     "put_nowait(item)\n--\n\nAppend item, or raise WouldBlock if the queue is full."},
    {"get_nowait", (PyCFunction)queue_get_nowait, METH_NOARGS,
     "get_nowait()\n--\n\nRemove and return the oldest item, or raise WouldBlock if empty."},
    {"qsize", (PyCFunction)queue_qsize, METH_NOARGS,
     "qsize()\n--\n\nThe number of buffered items."},
    {"empty", (PyCFunction)queue_empty, METH_NOARGS, "empty()\n--\n\nTrue if no item is buffered."},
    {"full", (PyCFunction)queue_full_method, METH_NOARGS,
     "full()\n--\n\nTrue if put() would wait (never for an unbounded queue)."},
    {"close", (PyCFunction)queue_close, METH_NOARGS,
     "close()\n--\n\nRefuse further puts; waiting putters get ClosedResourceError, getters get "
     "the remaining items and then ClosedResourceError (`async for` ends).  Idempotent."},
    {"__class_getitem__", Py_GenericAlias, METH_O | METH_CLASS,
     "See PEP 585: Queue[int] is a generic alias."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef queue_getset[] = {
    {"maxsize", (getter)queue_get_maxsize, NULL, "The capacity; 0 means unbounded.", NULL},
    {"closed", (getter)queue_get_closed, NULL, "True once close() has been called.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot queue_slots[] = {
    {Py_tp_doc, "Queue(maxsize=0)\n--\n\nA FIFO queue between tasks; maxsize=0 means "
                "unbounded.  Getters and putters are served in FIFO order; `async for item "
                "in queue` gets items until the queue is closed and drained."},
    {Py_tp_new, queue_new},
    {Py_tp_dealloc, queue_dealloc},
    {Py_tp_traverse, queue_traverse},
    {Py_tp_clear, queue_clear},
    {Py_tp_repr, queue_repr},
    {Py_tp_methods, queue_methods},
    {Py_tp_getset, queue_getset},
    {Py_am_aiter, queue_aiter},
    {Py_am_anext, queue_anext},
    {0, NULL},
};

static PyType_Spec queue_spec = {
    .name = "broomio.Queue",
    .basicsize = sizeof(bro_queue),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = queue_slots,
};

/* ---- the contract with op.c ----------------------------------------------------------- */

int bro_sync_fresh(int sub, PyObject *prim, PyObject *arg, bro_task *t, PyObject **res)
{
    switch (sub) {
    case BRO_SYNC_EVENT_WAIT:
        return event_fresh((bro_event *)prim, t, res);
    case BRO_SYNC_LOCK_ACQUIRE:
        return lock_fresh((bro_lock *)prim, t, res);
    case BRO_SYNC_SEM_ACQUIRE:
        return sem_fresh((bro_sem *)prim, t, res);
    case BRO_SYNC_LIMITER_ACQUIRE:
        return limiter_fresh((bro_limiter *)prim, arg, t, res);
    case BRO_SYNC_QUEUE_GET:
        return queue_get_fresh((bro_queue *)prim, t, 0, res);
    case BRO_SYNC_QUEUE_NEXT:
        return queue_get_fresh((bro_queue *)prim, t, 1, res);
    case BRO_SYNC_QUEUE_PUT:
        return queue_put_fresh((bro_queue *)prim, arg, t, res);
    }
    PyErr_SetString(PyExc_SystemError, "broomio: unknown synchronization operation");
    return BRO_SYNC_ERROR;
}

const char *bro_sync_name(int sub)
{
    static const char *names[] = {
        "Event.wait()", "Lock.acquire()",    "Semaphore.acquire()", "CapacityLimiter.acquire()",
        "Queue.get()",  "Queue.__anext__()", "Queue.put()",
    };
    if (sub < 0 || sub >= (int)(sizeof(names) / sizeof(names[0])))
        return "synchronization operation";
    return names[sub];
}

int bro_syncprims_init_types(PyObject *module, bro_state *st)
{
    if (bro_module_add_type(module, &event_spec, NULL, &st->event_type) < 0 ||
        bro_module_add_type(module, &lock_spec, NULL, &st->lock_type) < 0 ||
        bro_module_add_type(module, &sem_spec, NULL, &st->semaphore_type) < 0 ||
        bro_module_add_type(module, &limiter_spec, NULL, &st->limiter_type) < 0 ||
        bro_module_add_type(module, &queue_spec, NULL, &st->queue_type) < 0)
        return -1;
    return 0;
}
