/*
 * task.c -- creating tasks, stepping their coroutines, waking and finishing them.
 *
 * Ownership (see task.h for the wait protocol):
 *   - bro_task_spawn() returns a new reference for the caller; besides that, the nursery's
 *     child list owns one reference until the task finishes, and the ready ring or the timer
 *     heap owns one while the task is queued there.
 *   - bro_task_step() is called with a reference owned by the caller (the ring's, which the
 *     loop releases after the step).
 *
 * Cancellation delivery: a task learns it is cancelled in two ways.  At its next checkpoint
 * the awaitable sees cancel_pending and raises Cancelled without waiting.  If it is already
 * waiting, bro_task_deliver_cancel() removes the wait (timer, lot, fd slot, or the external
 * abort function agrees) and wakes it with a Cancelled exception, which the awaitable raises
 * when the task resumes.  Waits that cannot be aborted (a nursery waiting for its children,
 * an external wait without abort function) complete normally and the next checkpoint raises.
 */
#include "task.h"
#include "heap.h"
#include "loop.h"
#include "poll.h"
#include "scope.h"
#include "structmember.h"

bro_task *bro_current_task(void)
{
    bro_loop *loop = bro_running_loop;
    return loop ? loop->current : NULL;
}

PyObject *bro_fetch_exception(void)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    if (type == NULL)
        return NULL;
    PyErr_NormalizeException(&type, &value, &tb);
    if (value == NULL) {
        /* Normalization failed in a way that left nothing to report: keep the type. */
        value = Py_NewRef(type);
    } else if (tb != NULL) {
        PyException_SetTraceback(value, tb);
    }
    Py_DECREF(type);
    Py_XDECREF(tb);
    return value;
}

int bro_raise_cancelled(bro_state *st)
{
    PyObject *exc = PyObject_CallNoArgs(st->Cancelled);
    if (exc != NULL) {
        PyErr_SetObject(st->Cancelled, exc);
        Py_DECREF(exc);
    }
    return -1;
}

/* ---- making coroutines ---------------------------------------------------------------- */

static int coro_like(PyObject *obj)
{
    if (PyCoro_CheckExact(obj))
        return 1;
    PyTypeObject *tp = Py_TYPE(obj);
    /* Coroutines of other implementations (Cython) are awaitable and have send/throw. */
    return tp->tp_as_async != NULL && tp->tp_as_async->am_await != NULL &&
           PyObject_HasAttrString(obj, "send") && PyObject_HasAttrString(obj, "throw") &&
           PyObject_HasAttrString(obj, "close");
}

static int coro_fresh(bro_state *st, PyObject *coro)
{
    PyObject *frame = PyObject_GetAttr(coro, st->str_cr_frame);
    if (frame == NULL)
        return -1;
    int fresh = frame != Py_None;
    Py_DECREF(frame);
    PyObject *names[2] = {st->str_cr_running, st->str_cr_suspended};
    for (int i = 0; fresh && i < 2; i++) {
        PyObject *flag = PyObject_GetAttr(coro, names[i]);
        if (flag == NULL)
            return -1;
        int on = PyObject_IsTrue(flag);
        Py_DECREF(flag);
        if (on < 0)
            return -1;
        fresh = !on;
    }
    return fresh;
}

PyObject *bro_make_coro(bro_loop *loop, PyObject *fn, PyObject *const *args, Py_ssize_t nargs,
                        int *user_coro)
{
    bro_state *st = loop->st;
    *user_coro = 0;
    if (PyCoro_CheckExact(fn)) {
        if (nargs > 0) {
            PyErr_SetString(PyExc_TypeError,
                            "got a coroutine object and extra positional arguments; pass the "
                            "async function and its arguments instead");
            return NULL;
        }
        int fresh = coro_fresh(st, fn);
        if (fresh < 0)
            return NULL;
        if (!fresh) {
            PyErr_Format(PyExc_RuntimeError,
                         "coroutine %R has already been started or has finished; every task "
                         "needs a new coroutine object",
                         fn);
            return NULL;
        }
        if (loop->pending_coros != NULL) {
            int dup = PySet_Contains(loop->pending_coros, fn);
            if (dup < 0)
                return NULL;
            if (dup) {
                PyErr_Format(PyExc_RuntimeError,
                             "coroutine %R was already given to start_soon(); every task "
                             "needs a new coroutine object",
                             fn);
                return NULL;
            }
        }
        *user_coro = 1;
        return Py_NewRef(fn);
    }
    if (!PyCallable_Check(fn)) {
        if (coro_like(fn)) {
            *user_coro = 1;
            return Py_NewRef(fn);
        }
        PyErr_Format(PyExc_TypeError,
                     "expected an async function or a coroutine object, got %.200s object %R",
                     Py_TYPE(fn)->tp_name, fn);
        return NULL;
    }
    PyObject *coro = PyObject_Vectorcall(fn, args, (size_t)nargs, NULL);
    if (coro == NULL)
        return NULL;
    if (PyCoro_CheckExact(coro) || coro_like(coro))
        return coro;
    PyErr_Format(PyExc_TypeError,
                 "expected an async function, but %R returned %.200s object instead of a "
                 "coroutine (is it defined with 'async def'?)",
                 fn, Py_TYPE(coro)->tp_name);
    Py_DECREF(coro);
    return NULL;
}

/* While a task is alive, its coroutine and Context are reachable only through it (and the
 * task through its loop), so the cyclic collector could never free them; keeping them out of
 * the collector's lists makes every collection cheaper while many tasks are alive.  They are
 * handed back to the collector before the task lets go of them.  `gc_hidden` records which
 * of the two we untracked, so we never track an object CPython had not tracked. */
static void task_hide_from_gc(bro_task *t)
{
    if (t->coro != NULL && PyObject_GC_IsTracked(t->coro)) {
        PyObject_GC_UnTrack(t->coro);
        t->gc_hidden |= 1;
    }
    if (t->context != NULL && PyObject_GC_IsTracked(t->context)) {
        PyObject_GC_UnTrack(t->context);
        t->gc_hidden |= 2;
    }
}

static void task_show_to_gc(bro_task *t)
{
    if ((t->gc_hidden & 1) && t->coro != NULL && !PyObject_GC_IsTracked(t->coro))
        PyObject_GC_Track(t->coro);
    if ((t->gc_hidden & 2) && t->context != NULL && !PyObject_GC_IsTracked(t->context))
        PyObject_GC_Track(t->context);
    t->gc_hidden = 0;
}

/* ---- spawning ------------------------------------------------------------------------- */

bro_task *bro_task_spawn(bro_loop *loop, bro_nursery *nursery, PyObject *coro, PyObject *name,
                         double delay, int user_coro)
{
    bro_state *st = loop->st;
    if (name != NULL && name != Py_None && !PyUnicode_Check(name)) {
        PyErr_Format(PyExc_TypeError, "name must be a str or None, not %.200s",
                     Py_TYPE(name)->tp_name);
        Py_DECREF(coro);
        return NULL;
    }
    double when = 0.0;
    if (delay > 0) {
        if (bro_loop_now(loop, &when) < 0) {
            Py_DECREF(coro);
            return NULL;
        }
        when += delay;
    }
    PyObject *context = PyContext_CopyCurrent();
    if (context == NULL) {
        Py_DECREF(coro);
        return NULL;
    }
    if (user_coro) {
        if (loop->pending_coros == NULL && (loop->pending_coros = PySet_New(NULL)) == NULL) {
            Py_DECREF(context);
            Py_DECREF(coro);
            return NULL;
        }
        if (PySet_Add(loop->pending_coros, coro) < 0) {
            Py_DECREF(context);
            Py_DECREF(coro);
            return NULL;
        }
    }
    bro_task *t = PyObject_GC_New(bro_task, st->task_type);
    if (t == NULL) {
        if (user_coro)
            (void)PySet_Discard(loop->pending_coros, coro);
        Py_DECREF(context);
        Py_DECREF(coro);
        return NULL;
    }
    memset((char *)t + sizeof(PyObject), 0, sizeof(bro_task) - sizeof(PyObject));
    t->heap_index = -1;
    t->fd = -1;
    t->coro = coro;
    t->context = context;
    t->in_pending = (uint8_t)user_coro;
    if (name != NULL && name != Py_None)
        t->name = Py_NewRef(name);
    t->loop = (bro_loop *)Py_NewRef(loop);

    /* The loop's list of live tasks (borrowed links). */
    t->all_next = loop->all_tasks;
    if (loop->all_tasks)
        loop->all_tasks->all_prev = t;
    loop->all_tasks = t;
    loop->live_tasks++;

    bro_nursery_link_child(nursery, t);
    bro_scope_attach_task(nursery->scope, t);
    task_hide_from_gc(t);
    /* A live task is not GC-tracked: it is always reachable from its loop (the all_tasks
     * list, its nursery), so the collector has nothing to find in it, and skipping it makes
     * every collection cheaper while many tasks are alive.  loop.close() finishes every
     * live task, and bro_task_finish() starts tracking it, once cycles through its result
     * or traceback become possible. */
    bro_hook(loop, BRO_HOOK_TASK_SPAWNED, (PyObject *)t);

    if (delay > 0) {
        bro_task_park(t, BRO_WAIT_TIMER, 1);
        if (bro_heap_push(&loop->heap, when, (PyObject *)t) < 0)
            goto fail;
        if (t->cancel_pending && bro_task_deliver_cancel(t) < 0)
            PyErr_WriteUnraisable((PyObject *)t);
    } else {
        t->state = BRO_TASK_READY;
        if (bro_ready_push(loop, (PyObject *)t) < 0)
            goto fail;
    }
    return t;

fail:;
    /* Out of memory while queueing: the task ends at once with that error, so it is still
     * accounted for by its nursery. */
    PyObject *exc = bro_fetch_exception();
    t->state = BRO_TASK_RUNNING;
    t->wait = BRO_WAIT_NONE;
    PyObject *closed = PyObject_CallMethodNoArgs(t->coro, st->str_close);
    Py_XDECREF(closed);
    PyErr_Clear();
    bro_task_finish(t, NULL, exc);
    Py_XDECREF(exc);
    Py_DECREF(t);
    PyErr_NoMemory();
    return NULL;
}

PyObject *bro_spawn_later_from_args(bro_loop *loop, bro_nursery *nursery, PyObject *const *args,
                                    Py_ssize_t nargs, PyObject *kwnames)
{
    if (nargs < 1) {
        PyErr_SetString(PyExc_TypeError, "start_later() missing required argument 'delay'");
        return NULL;
    }
    double delay;
    if (bro_parse_seconds(args[0], "start_later", "delay", &delay) < 0)
        return NULL;
    if (delay < 0) {
        PyErr_Format(PyExc_ValueError,
                     "start_later() argument 'delay' must be non-negative, got %R", args[0]);
        return NULL;
    }
    return bro_spawn_from_args(loop, nursery, delay, args + 1, nargs - 1, kwnames);
}

PyObject *bro_spawn_from_args(bro_loop *loop, bro_nursery *nursery, double delay,
                              PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *name = NULL;
    if (kwnames != NULL) {
        Py_ssize_t nkw = PyTuple_GET_SIZE(kwnames);
        for (Py_ssize_t i = 0; i < nkw; i++) {
            PyObject *key = PyTuple_GET_ITEM(kwnames, i);
            if (PyUnicode_CompareWithASCIIString(key, "name") == 0) {
                name = args[nargs + i];
            } else {
                PyErr_Format(PyExc_TypeError, "start_soon() got an unexpected keyword argument %R",
                             key);
                return NULL;
            }
        }
    }
    if (nargs < 1) {
        PyErr_SetString(PyExc_TypeError,
                        "start_soon() missing required argument: an async function or coroutine");
        return NULL;
    }
    if (bro_loop_check_usable(loop) < 0)
        return NULL;
    int user_coro;
    /* Creating the coroutine runs Python code (and maybe the GC), which could close the
     * loop or the nursery: hold the nursery and check again before linking into it. */
    Py_INCREF(nursery);
    PyObject *coro = bro_make_coro(loop, args[0], args + 1, nargs - 1, &user_coro);
    PyObject *task = NULL;
    if (coro != NULL) {
        if (loop->closed || nursery->closed || nursery->scope == NULL) {
            const char *what = loop->closed ? "this loop is closed" : "this nursery is closed";
            PyObject *r = PyObject_CallMethodNoArgs(coro, loop->st->str_close);
            Py_XDECREF(r);
            Py_DECREF(coro);
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_RuntimeError, what);
        } else {
            task = (PyObject *)bro_task_spawn(loop, nursery, coro, name, delay, user_coro);
        }
    }
    Py_DECREF(nursery);
    return task;
}

/* ---- waking, aborting, cancelling ----------------------------------------------------- */

void bro_task_park(bro_task *t, int wait, int abortable)
{
    t->state = BRO_TASK_WAITING;
    t->wait = (uint8_t)wait;
    t->abortable = (uint8_t)abortable;
}

void bro_task_wake(bro_task *t, PyObject *value, PyObject *exc)
{
    assert(t->state == BRO_TASK_WAITING);
    t->wait = BRO_WAIT_NONE;
    t->abortable = 0;
    t->wake_failed = exc != NULL;
    Py_XSETREF(t->wake, Py_XNewRef(exc ? exc : value)); /* also releases an abort function */
    t->state = BRO_TASK_READY;
    if (bro_ready_push(t->loop, (PyObject *)t) < 0) {
        /* The ring could not grow: the loop cannot make progress; report and keep going. */
        PyErr_WriteUnraisable((PyObject *)t);
    }
}

int bro_task_abort_wait(bro_task *t)
{
    bro_loop *loop = t->loop;
    switch (t->wait) {
    case BRO_WAIT_TIMER: {
        PyObject *ref = loop ? bro_heap_remove(&loop->heap, (PyObject *)t) : NULL;
        Py_XDECREF(ref);
        return 1;
    }
    case BRO_WAIT_LOT:
        bro_lot_unlink(t);
        return 1;
    case BRO_WAIT_FD:
        if (loop != NULL && t->fd >= 0 && t->fd < loop->fds.cap) {
            bro_fd_slot *slot = &loop->fds.slots[t->fd];
            if (slot->reader == t)
                slot->reader = NULL;
            if (slot->writer == t)
                slot->writer = NULL;
        }
        t->fd = -1;
        return 1;
    case BRO_WAIT_FOREVER:
        return 1;
    case BRO_WAIT_EXTERNAL: {
        if (t->wake == NULL || t->wake == Py_None)
            return 0;
        PyObject *fn = Py_NewRef(t->wake);
        PyObject *r = PyObject_CallNoArgs(fn);
        Py_DECREF(fn);
        if (r == NULL)
            return -1;
        int ok = PyObject_IsTrue(r);
        Py_DECREF(r);
        return ok;
    }
    default:
        return 0;
    }
}

int bro_task_deliver_cancel(bro_task *t)
{
    if (t->state != BRO_TASK_WAITING || !t->abortable || !t->cancel_pending)
        return 0;
    Py_INCREF(t);
    int r = bro_task_abort_wait(t);
    /* An external abort function may have rescheduled the task itself. */
    if (r == 1 && t->state == BRO_TASK_WAITING) {
        PyObject *exc = PyObject_CallNoArgs(t->loop->st->Cancelled);
        if (exc == NULL) {
            r = -1;
        } else {
            bro_task_wake(t, NULL, exc);
            Py_DECREF(exc);
        }
    }
    Py_DECREF(t);
    return r < 0 ? -1 : 0;
}

void bro_task_update_cancel(bro_task *t, PyObject *deliver)
{
    /* Once the task has entered a scope of its own, task.cancel() reaches it through that
     * scope (see scope.c), so a shield inside the task can hold it off. */
    bro_scope *s = t->scope;
    int pending =
        (s != NULL && s->effective) || (t->cancel_requested && (s == NULL || s->owner != t));
    int was = t->cancel_pending;
    t->cancel_pending = (uint8_t)pending;
    if (pending && !was && t->state == BRO_TASK_WAITING && t->abortable) {
        if (deliver != NULL) {
            if (PyList_Append(deliver, (PyObject *)t) < 0)
                PyErr_WriteUnraisable((PyObject *)t);
        } else if (bro_task_deliver_cancel(t) < 0) {
            PyErr_WriteUnraisable((PyObject *)t);
        }
    }
}

/* ---- finishing ------------------------------------------------------------------------ */

void bro_task_drop_registration(bro_task *t)
{
    bro_loop *loop = t->loop;
    if (t->lot != NULL)
        bro_lot_unlink(t);
    if (t->fd >= 0 && loop != NULL && t->fd < loop->fds.cap) {
        bro_fd_slot *slot = &loop->fds.slots[t->fd];
        if (slot->reader == t)
            slot->reader = NULL;
        if (slot->writer == t)
            slot->writer = NULL;
    }
    t->fd = -1;
    if (t->heap_index >= 0 && loop != NULL) {
        PyObject *ref = bro_heap_remove(&loop->heap, (PyObject *)t);
        Py_XDECREF(ref); /* the caller holds a reference */
    }
}

void bro_task_void_stale_wait(bro_task *t)
{
    if (t->state == BRO_TASK_RUNNING)
        return;
    if (t->state == BRO_TASK_WAITING) {
        bro_task_drop_registration(t);
        if (t->wait == BRO_WAIT_EXTERNAL)
            Py_CLEAR(t->wake); /* the abort function */
    }
    /* A READY task may still have an entry in the ready ring; in_ring makes sure it is
     * never queued twice, and the loop skips the entry unless the task is READY again. */
    t->state = BRO_TASK_RUNNING;
    t->wait = BRO_WAIT_NONE;
}

/* Closes the socket Task._close_on_exit() gave this task: first thing when it finishes, as
 * a `finally:` around its coroutine would, but without a frame that every resumption of
 * the task would pass through (about 9% of serve_tcp's work per message at 64 B).  Returns
 * what the close raised (a KeyboardInterrupt from a signal handler, say), or NULL: like an
 * exception raised in a `finally:`, it becomes the task's outcome. */
static PyObject *task_close_on_exit(bro_task *t)
{
    t->close_on_exit = 0;
    PyObject *closers = t->loop->exit_closers;
    PyObject *sock = closers ? PyDict_GetItemWithError(closers, (PyObject *)t) : NULL;
    if (sock == NULL)
        return PyErr_Occurred() ? bro_fetch_exception() : NULL;
    Py_INCREF(sock);
    int r = PyDict_DelItem(closers, (PyObject *)t);
    if (r == 0)
        r = bro_sock_close(sock);
    Py_DECREF(sock);
    return r < 0 ? bro_fetch_exception() : NULL;
}

int bro_task_finish(bro_task *t, PyObject *result, PyObject *exc)
{
    bro_loop *loop = t->loop;
    bro_task_drop_registration(t);
    PyObject *close_exc = t->close_on_exit ? task_close_on_exit(t) : NULL;
    if (close_exc != NULL) {
        if (exc != NULL)
            PyException_SetContext(close_exc, Py_NewRef(exc));
        exc = close_exc;
        result = NULL;
    }
    for (bro_scope *s = t->scope; s != NULL && s->owner == t; s = s->parent)
        s->owner = NULL;
    t->state = BRO_TASK_DONE;
    t->wait = BRO_WAIT_NONE;
    t->failed = exc != NULL;
    Py_XSETREF(t->outcome, Py_NewRef(exc ? exc : result ? result : Py_None));
    if (t->in_pending && loop->pending_coros != NULL) {
        if (PySet_Discard(loop->pending_coros, t->coro) < 0)
            PyErr_Clear();
        t->in_pending = 0;
    }
    bro_scope_detach_task(t);
    task_show_to_gc(t);
    Py_CLEAR(t->context);
    Py_CLEAR(t->wake);
    if (t->joiners != NULL)
        bro_lot_unpark(t->joiners, PY_SSIZE_T_MAX, NULL);
    bro_loop_unlink_task(loop, t);
    if (!PyObject_GC_IsTracked((PyObject *)t))
        PyObject_GC_Track(t);
    int r = 0;
    bro_nursery *n = t->nursery;
    if (n != NULL) {
        t->nursery = NULL;
        r = bro_nursery_child_done(n, t);
        Py_DECREF(n);
    }
    /* Last, as trio does: joiners and a waiting parent are already scheduled.  (A debug
     * monitor adds the creation traceback to the error here; nobody has reported it yet,
     * they only run later.)  The caller holds a reference to t. */
    bro_hook(loop, BRO_HOOK_TASK_EXITED, (PyObject *)t);
    Py_XDECREF(close_exc);
    return r;
}

/* ---- stepping ------------------------------------------------------------------------- */

static PySendResult task_throw(bro_task *t, PyObject **presult)
{
    PyObject *exc = t->wake;
    t->wake = NULL;
    t->wake_failed = 0;
    t->throw_pending = 0;
    PyObject *r = PyObject_CallMethodOneArg(t->coro, t->loop->st->str_throw, exc);
    Py_DECREF(exc);
    if (r != NULL) {
        *presult = r;
        return PYGEN_NEXT;
    }
    if (PyErr_ExceptionMatches(PyExc_StopIteration)) {
        PyObject *stop = bro_fetch_exception();
        PyObject *value = PyObject_GetAttrString(stop, "value");
        Py_DECREF(stop);
        if (value == NULL)
            return PYGEN_ERROR;
        *presult = value;
        return PYGEN_RETURN;
    }
    *presult = NULL;
    return PYGEN_ERROR;
}

int bro_task_step(bro_task *t)
{
    bro_loop *loop = t->loop;
    bro_state *st = loop->st;
    int was_started = t->started;
    t->state = BRO_TASK_RUNNING;
    t->wait = BRO_WAIT_NONE;
    t->started = 1;
    if (t->in_pending) {
        if (PySet_Discard(loop->pending_coros, t->coro) < 0)
            return -1;
        t->in_pending = 0;
    }
    if (PyContext_Enter(t->context) < 0)
        return -1;
    loop->current = t;
    loop->budget = BRO_BUDGET;

    PyObject *res = NULL;
    PySendResult status;
    if (t->throw_pending || (t->wake_failed && t->wake != NULL && !was_started))
        status = task_throw(t, &res);
    else
        status = PyIter_Send(t->coro, Py_None, &res);

    loop->current = NULL;
    if (!(status == PYGEN_NEXT && res == st->parked))
        bro_task_void_stale_wait(t);
    if (status == PYGEN_ERROR) {
        PyObject *exc = bro_fetch_exception();
        if (PyContext_Exit(t->context) < 0) {
            Py_XDECREF(exc);
            return -1;
        }
        int r = bro_task_finish(t, NULL, exc);
        Py_XDECREF(exc);
        return r;
    }
    if (PyContext_Exit(t->context) < 0) {
        Py_XDECREF(res);
        return -1;
    }
    if (status == PYGEN_RETURN) {
        int r = bro_task_finish(t, res, NULL);
        Py_DECREF(res);
        return r;
    }
    if (res == st->parked && t->state != BRO_TASK_RUNNING) {
        /* The awaitable registered a wait (or rescheduled the task) before yielding. */
        Py_DECREF(res);
        return 0;
    }
    /* Something other than a broomio awaitable suspended the coroutine.  Throw a TypeError
     * into it at that await, so the error points at the offending line. */
    PyObject *msg = PyUnicode_FromFormat(
        "broomio tasks can only await broomio awaitables, but this task awaited something "
        "that yielded %.200R to the event loop (asyncio futures and other libraries' "
        "awaitables need their own event loop)",
        res);
    Py_DECREF(res);
    if (msg == NULL)
        return -1;
    PyObject *exc = PyObject_CallOneArg(PyExc_TypeError, msg);
    Py_DECREF(msg);
    if (exc == NULL)
        return -1;
    Py_XSETREF(t->wake, exc);
    t->wake_failed = 1;
    t->throw_pending = 1;
    t->state = BRO_TASK_READY;
    return bro_ready_push(loop, (PyObject *)t);
}

void bro_task_abandon(bro_task *t)
{
    if (t->state == BRO_TASK_DONE)
        return;
    Py_INCREF(t);
    if (t->state == BRO_TASK_WAITING && bro_task_abort_wait(t) < 0)
        PyErr_WriteUnraisable((PyObject *)t);
    t->state = BRO_TASK_RUNNING;
    t->wait = BRO_WAIT_NONE;
    if (t->coro != NULL) {
        PyObject *r = PyObject_CallMethodNoArgs(t->coro, t->loop->st->str_close);
        if (r == NULL)
            PyErr_WriteUnraisable(t->coro);
        Py_XDECREF(r);
    }
    PyObject *exc = PyObject_CallNoArgs(t->loop->st->Cancelled);
    if (exc == NULL) {
        PyErr_WriteUnraisable((PyObject *)t);
        exc = Py_NewRef(Py_None);
    }
    if (bro_task_finish(t, NULL, exc) < 0)
        PyErr_WriteUnraisable((PyObject *)t);
    Py_DECREF(exc);
    Py_DECREF(t);
}

/* ---- the Task type -------------------------------------------------------------------- */

static int task_is_cancelled(bro_task *t)
{
    return t->state == BRO_TASK_DONE && t->failed &&
           PyObject_TypeCheck(t->outcome, (PyTypeObject *)t->loop->st->Cancelled);
}

/* Sets the error result() must raise for a finished task; -1 always. */

int bro_task_raise_outcome(bro_task *t)
{
    if (task_is_cancelled(t)) {
        PyErr_Format(t->loop->st->TaskCancelled, "task %R was cancelled", (PyObject *)t);
        return -1;
    }
    PyErr_SetObject((PyObject *)Py_TYPE(t->outcome), t->outcome);
    return -1;
}

static PyObject *task_done(bro_task *t, PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(t->state == BRO_TASK_DONE);
}

static PyObject *task_cancelled(bro_task *t, PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(task_is_cancelled(t));
}

static PyObject *task_result(bro_task *t, PyObject *Py_UNUSED(ignored))
{
    if (t->state != BRO_TASK_DONE) {
        PyErr_Format(PyExc_RuntimeError, "task %R has not finished yet", (PyObject *)t);
        return NULL;
    }
    if (t->failed) {
        bro_task_raise_outcome(t);
        return NULL;
    }
    return Py_NewRef(t->outcome);
}

static PyObject *task_exception(bro_task *t, PyObject *Py_UNUSED(ignored))
{
    if (t->state != BRO_TASK_DONE) {
        PyErr_Format(PyExc_RuntimeError, "task %R has not finished yet", (PyObject *)t);
        return NULL;
    }
    if (task_is_cancelled(t)) {
        bro_task_raise_outcome(t);
        return NULL;
    }
    return Py_NewRef(t->failed ? t->outcome : Py_None);
}

static PyObject *task_cancel(bro_task *t, PyObject *Py_UNUSED(ignored))
{
    if (bro_task_cancel(t) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *task_join(bro_task *t, PyObject *Py_UNUSED(ignored))
{
    return bro_op_join(t);
}

static PyObject *task_set_close_on_exit(bro_task *t, PyObject *sock)
{
    bro_state *st = t->loop->st;
    if (!PyObject_TypeCheck(sock, st->socket_type)) {
        PyErr_Format(PyExc_TypeError, "_close_on_exit() takes a broomio socket, not %.200s",
                     Py_TYPE(sock)->tp_name);
        return NULL;
    }
    if (t->state == BRO_TASK_DONE) {
        if (bro_sock_close(sock) < 0)
            return NULL;
        Py_RETURN_NONE;
    }
    if (t->loop->exit_closers == NULL && (t->loop->exit_closers = PyDict_New()) == NULL)
        return NULL;
    if (PyDict_SetItem(t->loop->exit_closers, (PyObject *)t, sock) < 0)
        return NULL;
    t->close_on_exit = 1;
    Py_RETURN_NONE;
}

static PyObject *task_get_name(bro_task *t, void *Py_UNUSED(closure))
{
    if (t->name == NULL) {
        if (t->coro == NULL)
            return PyUnicode_FromString("<task>");
        PyObject *name = PyObject_GetAttr(t->coro, t->loop->st->str_qualname);
        if (name == NULL) {
            PyErr_Clear();
            name = PyObject_Repr(t->coro);
            if (name == NULL)
                return NULL;
        }
        t->name = name;
    }
    return Py_NewRef(t->name);
}

static int task_set_name(bro_task *t, PyObject *value, void *Py_UNUSED(closure))
{
    if (value == NULL || !PyUnicode_Check(value)) {
        PyErr_SetString(PyExc_TypeError, "task name must be a str");
        return -1;
    }
    Py_XSETREF(t->name, Py_NewRef(value));
    return 0;
}

static PyObject *task_get_coro(bro_task *t, void *Py_UNUSED(closure))
{
    return Py_NewRef(t->coro ? t->coro : Py_None);
}

static PyObject *task_get_loop(bro_task *t, void *Py_UNUSED(closure))
{
    return Py_NewRef(t->loop ? (PyObject *)t->loop : Py_None);
}

static PyObject *task_get_nursery(bro_task *t, void *Py_UNUSED(closure))
{
    return Py_NewRef(t->nursery ? (PyObject *)t->nursery : Py_None);
}

static PyObject *task_repr(bro_task *t)
{
    static const char *states[] = {"new", "ready", "running", "waiting", "done"};
    PyObject *name = task_get_name(t, NULL);
    if (name == NULL)
        return NULL;
    const char *state = states[t->state <= BRO_TASK_DONE ? t->state : 0];
    PyObject *r;
    if (t->state == BRO_TASK_DONE && task_is_cancelled(t))
        state = "cancelled";
    else if (t->state == BRO_TASK_DONE && t->failed)
        state = "failed";
    r = PyUnicode_FromFormat("<broomio.Task %R %s>", name, state);
    Py_DECREF(name);
    return r;
}

static void task_unlink_all(bro_task *t)
{
    if (t->state != BRO_TASK_DONE && t->state != 0) {
        if (t->wait == BRO_WAIT_LOT)
            bro_lot_unlink(t);
        else if (t->wait == BRO_WAIT_FD && t->loop != NULL && t->fd >= 0 &&
                 t->fd < t->loop->fds.cap) {
            bro_fd_slot *slot = &t->loop->fds.slots[t->fd];
            if (slot->reader == t)
                slot->reader = NULL;
            if (slot->writer == t)
                slot->writer = NULL;
        }
        if (t->loop != NULL)
            bro_loop_unlink_task(t->loop, t);
    }
    bro_scope_detach_task(t);
    if (t->joiners != NULL) {
        bro_lot_detach_all(t->joiners);
        PyMem_Free(t->joiners);
        t->joiners = NULL;
    }
    if (t->nursery != NULL) {
        bro_nursery *n = t->nursery;
        bro_nursery_unlink_child(n, t);
        t->nursery = NULL;
        Py_DECREF(n);
    }
}

static int task_clear(bro_task *t)
{
    task_unlink_all(t);
    task_show_to_gc(t);
    Py_CLEAR(t->coro);
    Py_CLEAR(t->context);
    Py_CLEAR(t->name);
    Py_CLEAR(t->outcome);
    Py_CLEAR(t->wake);
    Py_CLEAR(t->loop);
    return 0;
}

static int task_traverse(bro_task *t, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(t));
    Py_VISIT(t->coro);
    Py_VISIT(t->context);
    Py_VISIT(t->name);
    Py_VISIT(t->outcome);
    Py_VISIT(t->wake);
    Py_VISIT(t->scope);
    Py_VISIT(t->nursery);
    Py_VISIT(t->loop);
    return 0;
}

static void task_dealloc(bro_task *t)
{
    PyTypeObject *tp = Py_TYPE(t);
    PyObject_GC_UnTrack(t);
    if (t->weakreflist != NULL)
        PyObject_ClearWeakRefs((PyObject *)t);
    task_clear(t);
    tp->tp_free((PyObject *)t);
    Py_DECREF(tp);
}

static PyObject *task_new(PyTypeObject *Py_UNUSED(type), PyObject *Py_UNUSED(args),
                          PyObject *Py_UNUSED(kwds))
{
    PyErr_SetString(PyExc_TypeError,
                    "Task objects are created by start_soon(), not instantiated directly");
    return NULL;
}

static PyMethodDef task_methods[] = {
    {"done", (PyCFunction)task_done, METH_NOARGS, "True once the task has finished."},
    {"cancelled", (PyCFunction)task_cancelled, METH_NOARGS,
     "True if the task finished by being cancelled."},
    {"result", (PyCFunction)task_result, METH_NOARGS,
     "The return value; raises the task's exception, or TaskCancelled."},
    {"exception", (PyCFunction)task_exception, METH_NOARGS,
     "The task's exception or None; raises TaskCancelled if it was cancelled."},
    {"cancel", (PyCFunction)task_cancel, METH_NOARGS,
     "Cancel this task: its checkpoints raise Cancelled until it finishes."},
    {"join", (PyCFunction)task_join, METH_NOARGS,
     "Awaitable: wait for the task to finish and return result()."},
    {"_close_on_exit", (PyCFunction)task_set_close_on_exit, METH_O,
     "Close this broomio socket when the task finishes (serve_tcp's handler tasks)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef task_getset[] = {
    {"name", (getter)task_get_name, (setter)task_set_name, "The task's name.", NULL},
    {"coro", (getter)task_get_coro, NULL, "The task's coroutine.", NULL},
    {"loop", (getter)task_get_loop, NULL, "The loop the task runs on.", NULL},
    {"nursery", (getter)task_get_nursery, NULL, "The nursery that owns the task (None once done).",
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef task_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(bro_task, weakreflist), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot task_slots[] = {
    {Py_tp_doc, "A handle to a running or finished broomio task."},
    {Py_tp_new, task_new},
    {Py_tp_dealloc, task_dealloc},
    {Py_tp_traverse, task_traverse},
    {Py_tp_clear, task_clear},
    {Py_tp_repr, task_repr},
    {Py_tp_methods, task_methods},
    {Py_tp_getset, task_getset},
    {Py_tp_members, task_members},
    {0, NULL},
};

static PyType_Spec task_spec = {
    .name = "broomio.Task",
    .basicsize = sizeof(bro_task),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = task_slots,
};

int bro_task_init_types(PyObject *module, bro_state *st)
{
    return bro_module_add_type(module, &task_spec, NULL, &st->task_type);
}
