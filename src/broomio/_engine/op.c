/*
 * op.c -- the engine's awaitable: sleep, checkpoints, parking, joins, fd waits, sync ops.
 *
 * One C type serves every engine wait; `kind` says which.  An op is its own iterator
 * (am_await returns self) and does its work in am_send, which CPython 3.11's SEND opcode
 * calls directly:
 *
 *   state FRESH   -> check cancellation (level-triggered: a cancelled task raises Cancelled
 *                    here without waiting), then either complete at once and return
 *                    PYGEN_RETURN (no StopIteration, no trip through the scheduler), or
 *                    register one wait on the current task and yield the `parked` sentinel.
 *   state PARKED  -> the task was woken; read the outcome the waker stored on the task
 *                    (task->wake, an exception if wake_failed) and return or raise it.
 *   state BUDGET  -> the op could have completed but the task's step budget ran out, so it
 *                    yielded once to let other tasks run; now it tries again.
 *
 * tp_iternext and send()/throw()/close() wrap the same logic for CPythons whose SEND opcode
 * does not call am_send (3.12+ call tp_iternext when sending None, which is all the engine
 * ever sends).
 *
 * Synchronization primitives (OP_SYNC, syncprims.c) use the same machinery: this file keeps
 * the protocol (cancellation check, budget yield, parking, resuming) and asks
 * bro_sync_fresh() whether the operation completes, parks or must yield first.  A put's item
 * or a limiter's borrower travels in `arg` until the operation completes or parks.
 *
 * Allocation: sleep(0) in a loop would allocate one op per call.  An op lives from the
 * start of an await to its end; a deallocated op goes to a free list in the module state
 * (state.h) and the next await takes it from there, so steady state allocates nothing
 * however many tasks are parked at once.  (A per-loop cache of idle ops, reused while the
 * cache held the only reference, was measured against it: about 100 instructions cheaper
 * per await for a lone task looping on sleep(0), but it covered only as many parked tasks
 * as it had slots, and at 100 connections the free list alone did 7% less work per echoed
 * message than the cache with the free list behind it.)  An op holds a strong reference to
 * its target (the task to join, the nursery, the lot's owner, the abort function) and none
 * to the task that awaits it.
 */
#include <math.h>

#include "heap.h"
#include "loop.h"
#include "poll.h"
#include "scope.h"
#include "sync.h"
#include "syncprims.h"
#include "task.h"

enum {
    OP_CHECKPOINT,
    OP_SLEEP,
    OP_LOT,
    OP_JOIN,
    OP_CHILDREN,
    OP_FD,
    OP_SUSPEND,
    OP_SYNC,   /* a synchronization primitive's operation (sub); see syncprims.c */
    OP_RETURN, /* returns None at once: what __aexit__ hands back after a release */
};

enum { OP_FRESH, OP_PARKED, OP_DONE, OP_BUDGET };

typedef struct {
    PyObject_HEAD uint8_t kind;
    uint8_t state;
    uint8_t absolute; /* OP_SLEEP: value is a deadline, not a duration */
    union {           /* one byte for two kinds: every sleeping task holds an op */
        uint8_t dir;  /* OP_FD: BRO_READABLE or BRO_WRITABLE */
        uint8_t sub;  /* OP_SYNC: which operation (BRO_SYNC_*) */
    };
    int fd;
    double value;
    PyObject *target;
    /* One slot for two kinds, because every sleeping task holds an op: OP_SYNC's argument
     * (the item to put, the borrower; strong, released once the op is done) or OP_LOT's lot
     * (borrowed, points into target).  op_release_extra() knows which. */
    union {
        PyObject *arg;
        bro_lot *lot;
    };
} bro_op;

static void op_release_extra(bro_op *op)
{
    if (op->kind == OP_SYNC)
        Py_CLEAR(op->arg);
    else
        op->lot = NULL;
}

static const char *op_names[] = {"checkpoint", "sleep",   "park",    "join",     "nursery wait",
                                 "fd wait",    "suspend", "sync op", "__aexit__"};

static const char *op_name(bro_op *op)
{
    return op->kind == OP_SYNC ? bro_sync_name(op->sub) : op_names[op->kind];
}

/* Debug mode: an op that remembers where it was created, so that dropping it without an
 * await can be reported (instrument.c).  A type of its own, so that ordinary ops do not pay
 * for the field; debug ops bypass the free list and die when their last user lets go. */
typedef struct {
    bro_op op;
    PyObject *origin; /* (filename, lineno, function), None if unknown, NULL: untracked */
} bro_op_debug;

static void op_init(bro_op *op, int kind)
{
    op->kind = (uint8_t)kind;
    op->state = OP_FRESH;
    op->absolute = 0;
    op->dir = 0;
    op->sub = 0;
    op->fd = -1;
    op->value = 0;
    op->target = NULL;
    op->arg = NULL;
    op->lot = NULL;
}

static PyObject *op_alloc_debug(bro_state *st, int kind)
{
    PyObject *origin = bro_debug_origin();
    if (origin == NULL)
        return NULL;
    bro_op_debug *d = PyObject_GC_New(bro_op_debug, st->op_debug_type);
    if (d == NULL) {
        Py_DECREF(origin);
        return NULL;
    }
    op_init(&d->op, kind);
    d->origin = origin;
    PyObject_GC_Track(d);
    return (PyObject *)d;
}

static PyObject *op_alloc(bro_state *st, int kind)
{
    bro_loop *loop = bro_running_loop;
    if (loop != NULL && loop->debug)
        return op_alloc_debug(st, kind);
    bro_op *op = (bro_op *)bro_freelist_pop(&st->op_free, st->op_type);
    if (op == NULL && (op = PyObject_GC_New(bro_op, st->op_type)) == NULL)
        return NULL;
    op_init(op, kind);
    PyObject_GC_Track(op);
    return (PyObject *)op;
}

/* Yield once to the scheduler (the task goes to the back of the ready ring). */
static PySendResult op_reschedule(bro_op *op, bro_task *t, int next_state, PyObject **res)
{
    if (bro_ready_push(t->loop, (PyObject *)t) < 0)
        return PYGEN_ERROR;
    t->state = BRO_TASK_READY;
    t->wait = BRO_WAIT_READY;
    op->state = (uint8_t)next_state;
    *res = Py_NewRef(t->loop->st->parked);
    return PYGEN_NEXT;
}

static PySendResult op_park(bro_op *op, bro_task *t, int wait, int abortable, PyObject **res)
{
    bro_task_park(t, wait, abortable);
    op->state = OP_PARKED;
    *res = Py_NewRef(t->loop->st->parked);
    return PYGEN_NEXT;
}

/* A fast-path completion spends one unit of the step's budget; when it runs out the op
 * yields first, so a task whose operations always succeed cannot starve the others. */
static inline int op_budget_spent(bro_loop *loop)
{
    return bro_budget_spend(loop);
}

static PySendResult op_join_outcome(bro_task *target, PyObject **res)
{
    if (target->failed) {
        bro_task_raise_outcome(target);
        return PYGEN_ERROR;
    }
    *res = Py_NewRef(target->outcome);
    return PYGEN_RETURN;
}

static PySendResult op_fd_fresh(bro_op *op, bro_task *t, PyObject **res)
{
    bro_loop *loop = t->loop;
    bro_fd_slot *slot = bro_fd_slot_get(&loop->fds, op->fd);
    /* Failures end the op (it was awaited: debug mode must not call it forgotten). */
    if (slot == NULL) {
        op->state = OP_DONE;
        return PYGEN_ERROR;
    }
    bro_task **waiter = op->dir == BRO_READABLE ? &slot->reader : &slot->writer;
    if (*waiter != NULL) {
        op->state = OP_DONE;
        PyErr_Format(loop->st->BusyResourceError,
                     "another task is already waiting for fd %d to become %s", op->fd,
                     op->dir == BRO_READABLE ? "readable" : "writable");
        return PYGEN_ERROR;
    }
    /* A generic wait cannot know whether the caller drained the fd, so it re-arms the fd:
     * epoll reports a fresh edge at once if the fd is ready now.  (Socket operations, which
     * try the syscall first, keep the readiness bits instead and need no epoll_ctl.) */
    if (bro_poller_arm(loop->poller, op->fd, slot->registered) < 0) {
        op->state = OP_DONE;
        PyErr_SetFromErrno(PyExc_OSError);
        return PYGEN_ERROR;
    }
    slot->registered = 1;
    slot->ready &= (uint8_t)~op->dir;
    *waiter = t;
    t->fd = op->fd;
    t->wait_dir = op->dir;
    return op_park(op, t, BRO_WAIT_FD, 1, res);
}

static PySendResult op_sync_fresh(bro_op *op, bro_task *t, PyObject **res)
{
    switch (bro_sync_fresh(op->sub, op->target, op->arg, t, res)) {
    case BRO_SYNC_DONE:
        op->state = OP_DONE;
        Py_CLEAR(op->arg);
        return PYGEN_RETURN;
    case BRO_SYNC_PARKED:
        /* Whatever the waiter brings (a putter's item, a borrower) now sits in t->wake. */
        Py_CLEAR(op->arg);
        return op_park(op, t, BRO_WAIT_LOT, 1, res);
    case BRO_SYNC_BUDGET:
        /* Keep the argument: the operation is tried again after the yield. */
        return op_reschedule(op, t, OP_BUDGET, res);
    default:
        op->state = OP_DONE;
        Py_CLEAR(op->arg);
        return PYGEN_ERROR;
    }
}

static PySendResult op_fresh(bro_op *op, bro_task *t, PyObject **res)
{
    bro_loop *loop = t->loop;
    bro_state *st = loop->st;
    bro_task_void_stale_wait(t);
    if (op->kind != OP_CHILDREN && op->kind != OP_RETURN && t->cancel_pending) {
        op->state = OP_DONE;
        op_release_extra(op);
        bro_raise_cancelled(st);
        return PYGEN_ERROR;
    }
    switch (op->kind) {
    case OP_CHECKPOINT:
        return op_reschedule(op, t, OP_PARKED, res);
    case OP_SLEEP: {
        double deadline = op->value;
        if (!op->absolute) {
            double now;
            if (bro_loop_now(loop, &now) < 0) {
                op->state = OP_DONE;
                return PYGEN_ERROR;
            }
            deadline += now;
        }
        if (isinf(deadline) && deadline > 0)
            return op_park(op, t, BRO_WAIT_FOREVER, 1, res);
        if (bro_heap_push(&loop->heap, deadline, (PyObject *)t) < 0) {
            op->state = OP_DONE;
            return PYGEN_ERROR;
        }
        return op_park(op, t, BRO_WAIT_TIMER, 1, res);
    }
    case OP_LOT:
        bro_lot_append(op->lot, t);
        return op_park(op, t, BRO_WAIT_LOT, 1, res);
    case OP_JOIN: {
        bro_task *target = (bro_task *)op->target;
        if (target == t) {
            op->state = OP_DONE;
            PyErr_SetString(PyExc_RuntimeError, "a task cannot join itself");
            return PYGEN_ERROR;
        }
        if (target->state == BRO_TASK_DONE) {
            if (op_budget_spent(loop))
                return op_reschedule(op, t, OP_BUDGET, res);
            op->state = OP_DONE;
            return op_join_outcome(target, res);
        }
        if (target->joiners == NULL &&
            (target->joiners = PyMem_Calloc(1, sizeof(bro_lot))) == NULL) {
            PyErr_NoMemory();
            return PYGEN_ERROR;
        }
        bro_lot_append(target->joiners, t);
        return op_park(op, t, BRO_WAIT_LOT, 1, res);
    }
    case OP_CHILDREN: {
        bro_nursery *n = (bro_nursery *)op->target;
        if (n->nchildren == 0) {
            /* Exiting a nursery is a checkpoint: once the children are done, a cancelled
             * task gets its Cancelled here, for the enclosing scope to catch. */
            op->state = OP_DONE;
            if (t->cancel_pending)
                return bro_raise_cancelled(st), PYGEN_ERROR;
            *res = Py_NewRef(Py_None);
            return PYGEN_RETURN;
        }
        n->parent_waiting = 1;
        return op_park(op, t, BRO_WAIT_CHILDREN, 0, res);
    }
    case OP_FD:
        return op_fd_fresh(op, t, res);
    case OP_SUSPEND: {
        int abortable = op->target != NULL && op->target != Py_None;
        Py_XSETREF(t->wake, Py_XNewRef(op->target));
        t->wake_failed = 0;
        return op_park(op, t, BRO_WAIT_EXTERNAL, abortable, res);
    }
    case OP_SYNC:
        return op_sync_fresh(op, t, res);
    case OP_RETURN:
        op->state = OP_DONE;
        *res = Py_NewRef(Py_None);
        return PYGEN_RETURN;
    }
    PyErr_SetString(PyExc_SystemError, "broomio: unknown awaitable kind");
    return PYGEN_ERROR;
}

static PySendResult op_resume(bro_op *op, bro_task *t, PyObject **res)
{
    op->state = OP_DONE;
    if (t->wake_failed) {
        PyObject *exc = t->wake;
        t->wake = NULL;
        t->wake_failed = 0;
        if (op->kind == OP_SYNC && op->sub == BRO_SYNC_QUEUE_NEXT &&
            PyObject_TypeCheck(exc, (PyTypeObject *)t->loop->st->ClosedResourceError)) {
            /* The queue was closed while `async for` waited on it empty: the loop ends. */
            Py_DECREF(exc);
            PyErr_SetNone(PyExc_StopAsyncIteration);
            return PYGEN_ERROR;
        }
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        Py_DECREF(exc);
        return PYGEN_ERROR;
    }
    if (op->kind == OP_JOIN)
        return op_join_outcome((bro_task *)op->target, res);
    if (op->kind == OP_CHILDREN && t->cancel_pending) {
        Py_CLEAR(t->wake);
        bro_raise_cancelled(t->loop->st);
        return PYGEN_ERROR;
    }
    PyObject *value = t->wake;
    t->wake = NULL;
    *res = value ? value : Py_NewRef(Py_None);
    return PYGEN_RETURN;
}

static PySendResult op_step(bro_op *op, PyObject *Py_UNUSED(arg), PyObject **res)
{
    *res = NULL;
    bro_loop *loop = bro_running_loop;
    bro_task *t = loop ? loop->current : NULL;
    if (op->state == OP_DONE) {
        PyErr_Format(PyExc_RuntimeError, "cannot reuse an already awaited broomio %s", op_name(op));
        return PYGEN_ERROR;
    }
    if (t == NULL) {
        op->state = OP_DONE;
        PyErr_Format(PyExc_RuntimeError,
                     "broomio's %s must be awaited inside a task run by a broomio loop (is "
                     "another event loop, such as asyncio, running this coroutine?)",
                     op_name(op));
        return PYGEN_ERROR;
    }
    switch (op->state) {
    case OP_PARKED:
        return op_resume(op, t, res);
    case OP_BUDGET:
        op->state = OP_FRESH;
        return op_fresh(op, t, res);
    default:
        return op_fresh(op, t, res);
    }
}

static PySendResult op_send(bro_op *op, PyObject *arg, PyObject **res)
{
    PySendResult r = op_step(op, arg, res);
    /* A finished op must not keep its target (a joined task and its traceback, a nursery)
     * alive for as long as its awaiter holds on to it. */
    if (op->state == OP_DONE) {
        Py_CLEAR(op->target);
        op_release_extra(op);
    }
    return r;
}

/* ---- the iterator protocol, shared with sock.c --------------------------------------- */

static PyObject *finish_send(PySendResult r, PyObject *res, int none_is_exhausted)
{
    if (r == PYGEN_NEXT)
        return res;
    if (r == PYGEN_RETURN) {
        if (none_is_exhausted && res == Py_None) {
            Py_DECREF(res);
            return NULL; /* exhausted, no exception: the await returns None */
        }
        PyObject *stop = PyObject_CallOneArg(PyExc_StopIteration, res);
        Py_DECREF(res);
        if (stop != NULL) {
            PyErr_SetObject(PyExc_StopIteration, stop);
            Py_DECREF(stop);
        }
    }
    return NULL;
}

PyObject *bro_aw_iternext(PyObject *self, sendfunc send)
{
    PyObject *res = NULL;
    PySendResult r = send(self, Py_None, &res);
    return finish_send(r, res, 1);
}

PyObject *bro_aw_send(PyObject *self, PyObject *arg, sendfunc send)
{
    PyObject *res = NULL;
    PySendResult r = send(self, arg, &res);
    return finish_send(r, res, 0);
}

PyObject *bro_aw_throw(PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 3) {
        PyErr_SetString(PyExc_TypeError, "throw() takes 1 to 3 arguments");
        return NULL;
    }
    PyObject *typ = args[0];
    PyObject *val = nargs > 1 ? args[1] : Py_None;
    PyObject *tb = nargs > 2 ? args[2] : Py_None;
    if (PyExceptionInstance_Check(typ)) {
        if (val != Py_None) {
            PyErr_SetString(PyExc_TypeError, "instance exception may not have a separate value");
            return NULL;
        }
        PyErr_SetObject((PyObject *)Py_TYPE(typ), typ);
    } else if (PyExceptionClass_Check(typ)) {
        PyErr_SetObject(typ, val == Py_None ? NULL : val);
    } else {
        PyErr_SetString(PyExc_TypeError, "exceptions must be classes or instances deriving "
                                         "from BaseException");
        return NULL;
    }
    if (tb != Py_None) {
        PyObject *t, *v, *old_tb;
        PyErr_Fetch(&t, &v, &old_tb);
        PyErr_NormalizeException(&t, &v, &old_tb);
        Py_XDECREF(old_tb);
        PyErr_Restore(t, v, Py_NewRef(tb));
    }
    return NULL;
}

static PyObject *op_iternext(bro_op *op)
{
    return bro_aw_iternext((PyObject *)op, (sendfunc)op_send);
}

static PyObject *op_send_method(bro_op *op, PyObject *arg)
{
    return bro_aw_send((PyObject *)op, arg, (sendfunc)op_send);
}

static PyObject *op_throw(bro_op *op, PyObject *const *args, Py_ssize_t nargs)
{
    op->state = OP_DONE;
    return bro_aw_throw(args, nargs);
}

static PyObject *op_close(bro_op *op, PyObject *Py_UNUSED(ignored))
{
    op->state = OP_DONE;
    op_release_extra(op);
    Py_RETURN_NONE;
}

static PyObject *op_await(PyObject *self)
{
    return Py_NewRef(self);
}

static int op_traverse(bro_op *op, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(op));
    Py_VISIT(op->target);
    if (op->kind == OP_SYNC)
        Py_VISIT(op->arg);
    return 0;
}

static int op_clear(bro_op *op)
{
    Py_CLEAR(op->target);
    op_release_extra(op);
    return 0;
}

static void op_dealloc(bro_op *op)
{
    PyTypeObject *tp = Py_TYPE(op);
    PyObject_GC_UnTrack(op);
    op_clear(op);
    /* An ordinary op goes to the free list for the next await (state.h); a debug op, which
     * is larger, is freed. */
    /* The running loop's state is a cheaper way to a free list than the type's module (if
     * the module was ever loaded twice, the other state's list holds the same layout). */
    bro_loop *loop = bro_running_loop;
    bro_state *st = loop != NULL ? loop->st : PyType_GetModuleState(tp);
    if (st == NULL || tp != st->op_type || !bro_freelist_push(&st->op_free, (PyObject *)op))
        tp->tp_free((PyObject *)op);
    Py_DECREF(tp);
}

/* A debug op that dies without having been awaited is the "forgot the await" mistake. */
static void op_debug_dealloc(bro_op_debug *d)
{
    PyObject_GC_UnTrack(d);
    if (d->op.state == OP_FRESH && d->origin != NULL)
        bro_debug_never_awaited((PyObject *)d, op_name(&d->op), d->origin);
    Py_CLEAR(d->origin);
    op_dealloc(&d->op);
}

static PyObject *op_repr(bro_op *op)
{
    return PyUnicode_FromFormat("<broomio %s awaitable>", op_name(op));
}

static PyMethodDef op_methods[] = {
    {"send", (PyCFunction)op_send_method, METH_O, NULL},
    {"throw", (PyCFunction)(void (*)(void))op_throw, METH_FASTCALL, NULL},
    {"close", (PyCFunction)op_close, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot op_slots[] = {
    {Py_tp_doc, "An engine awaitable (sleep, checkpoint, park, join, fd wait)."},
    {Py_am_await, op_await},
    {Py_am_send, op_send},
    {Py_tp_iter, op_await},
    {Py_tp_iternext, op_iternext},
    {Py_tp_methods, op_methods},
    {Py_tp_dealloc, op_dealloc},
    {Py_tp_traverse, op_traverse},
    {Py_tp_clear, op_clear},
    {Py_tp_repr, op_repr},
    {0, NULL},
};

static PyType_Spec op_spec = {
    .name = "broomio._engine.Awaitable",
    .basicsize = sizeof(bro_op),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE |
             Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = op_slots,
};

static PyType_Slot op_debug_slots[] = {
    {Py_tp_doc, "An engine awaitable created in debug mode: it knows where it was created."},
    {Py_am_await, op_await},
    {Py_am_send, op_send},
    {Py_tp_iter, op_await},
    {Py_tp_iternext, op_iternext},
    {Py_tp_methods, op_methods},
    {Py_tp_dealloc, op_debug_dealloc},
    {Py_tp_traverse, op_traverse},
    {Py_tp_clear, op_clear},
    {Py_tp_repr, op_repr},
    {0, NULL},
};

static PyType_Spec op_debug_spec = {
    .name = "broomio._engine.DebugAwaitable",
    .basicsize = sizeof(bro_op_debug),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE |
             Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = op_debug_slots,
};

int bro_op_init_types(PyObject *module, bro_state *st)
{
    if (bro_module_add_type(module, &op_spec, NULL, &st->op_type) < 0)
        return -1;
    return bro_module_add_type(module, &op_debug_spec, NULL, &st->op_debug_type);
}

/* ---- constructors used by the module functions and the types ------------------------- */

static bro_state *state_of(PyObject *module)
{
    return (bro_state *)PyModule_GetState(module);
}

int bro_parse_seconds(PyObject *arg, const char *fname, const char *argname, double *out)
{
    double d;
    if (PyFloat_CheckExact(arg)) {
        d = PyFloat_AS_DOUBLE(arg);
    } else if (PyLong_CheckExact(arg)) {
        d = PyLong_AsDouble(arg);
        if (d == -1.0 && PyErr_Occurred())
            return -1;
    } else if (PyBool_Check(arg) || PyUnicode_Check(arg) || PyBytes_Check(arg) ||
               !PyNumber_Check(arg)) {
        PyErr_Format(PyExc_TypeError, "%s() argument '%s' must be a real number, not %.200s", fname,
                     argname, Py_TYPE(arg)->tp_name);
        return -1;
    } else {
        d = PyFloat_AsDouble(arg);
        if (d == -1.0 && PyErr_Occurred())
            return -1;
    }
    if (isnan(d)) {
        PyErr_Format(PyExc_ValueError, "%s() argument '%s' must not be NaN", fname, argname);
        return -1;
    }
    *out = d;
    return 0;
}

PyObject *bro_mod_sleep(PyObject *module, PyObject *arg)
{
    double d;
    if (bro_parse_seconds(arg, "sleep", "seconds", &d) < 0)
        return NULL;
    if (d < 0) {
        PyErr_Format(PyExc_ValueError, "sleep() argument 'seconds' must be non-negative, got %R",
                     arg);
        return NULL;
    }
    bro_op *op = (bro_op *)op_alloc(state_of(module), d == 0 ? OP_CHECKPOINT : OP_SLEEP);
    if (op != NULL)
        op->value = d;
    return (PyObject *)op;
}

PyObject *bro_mod_sleep_until(PyObject *module, PyObject *arg)
{
    double d;
    if (bro_parse_seconds(arg, "sleep_until", "deadline", &d) < 0)
        return NULL;
    bro_op *op = (bro_op *)op_alloc(state_of(module), OP_SLEEP);
    if (op != NULL) {
        op->value = d;
        op->absolute = 1;
    }
    return (PyObject *)op;
}

PyObject *bro_mod_sleep_forever(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    bro_op *op = (bro_op *)op_alloc(state_of(module), OP_SLEEP);
    if (op != NULL) {
        op->value = INFINITY;
        op->absolute = 1;
    }
    return (PyObject *)op;
}

PyObject *bro_mod_checkpoint(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    return op_alloc(state_of(module), OP_CHECKPOINT);
}

/* A checkpoint that the caller may await or drop (socket.shutdown() returns one): debug mode
 * does not report it as forgotten. */
PyObject *bro_mod_optional_checkpoint(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    bro_state *st = state_of(module);
    PyObject *op = op_alloc(st, OP_CHECKPOINT);
    if (op != NULL && Py_IS_TYPE(op, st->op_debug_type))
        Py_CLEAR(((bro_op_debug *)op)->origin); /* untracked: dropping it is fine */
    return op;
}

PyObject *bro_mod_suspend(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs > 1) {
        PyErr_SetString(PyExc_TypeError, "suspend() takes at most one argument (abort_fn)");
        return NULL;
    }
    PyObject *abort_fn = nargs ? args[0] : Py_None;
    if (abort_fn != Py_None && !PyCallable_Check(abort_fn)) {
        PyErr_SetString(PyExc_TypeError, "suspend() argument 'abort_fn' must be callable or None");
        return NULL;
    }
    bro_op *op = (bro_op *)op_alloc(state_of(module), OP_SUSPEND);
    if (op != NULL)
        op->target = Py_NewRef(abort_fn);
    return (PyObject *)op;
}

static PyObject *fd_wait(PyObject *module, PyObject *arg, int dir)
{
    int fd = PyObject_AsFileDescriptor(arg);
    if (fd < 0)
        return NULL;
    bro_op *op = (bro_op *)op_alloc(state_of(module), OP_FD);
    if (op != NULL) {
        op->fd = fd;
        op->dir = (uint8_t)dir;
    }
    return (PyObject *)op;
}

PyObject *bro_mod_wait_writable(PyObject *module, PyObject *arg);

PyObject *bro_mod_wait_readable(PyObject *module, PyObject *arg)
{
    return fd_wait(module, arg, BRO_READABLE);
}

PyObject *bro_mod_wait_writable(PyObject *module, PyObject *arg)
{
    return fd_wait(module, arg, BRO_WRITABLE);
}

PyObject *bro_op_join(bro_task *target)
{
    bro_op *op = (bro_op *)op_alloc(target->loop->st, OP_JOIN);
    if (op != NULL)
        op->target = Py_NewRef(target);
    return (PyObject *)op;
}

PyObject *bro_op_children(bro_nursery *n)
{
    bro_op *op = (bro_op *)op_alloc(n->loop->st, OP_CHILDREN);
    if (op != NULL)
        op->target = Py_NewRef(n);
    return (PyObject *)op;
}

PyObject *bro_op_park(bro_state *st, PyObject *owner, bro_lot *lot)
{
    bro_op *op = (bro_op *)op_alloc(st, OP_LOT);
    if (op != NULL) {
        op->target = Py_NewRef(owner);
        op->lot = lot;
    }
    return (PyObject *)op;
}

PyObject *bro_op_sync(bro_state *st, int sub, PyObject *prim, PyObject *arg)
{
    bro_op *op = (bro_op *)op_alloc(st, OP_SYNC);
    if (op != NULL) {
        op->sub = (uint8_t)sub;
        op->target = Py_NewRef(prim);
        op->arg = Py_XNewRef(arg);
    }
    return (PyObject *)op;
}

PyObject *bro_op_return(bro_state *st)
{
    return op_alloc(st, OP_RETURN);
}
