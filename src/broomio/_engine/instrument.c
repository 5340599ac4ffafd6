/*
 * instrument.c -- Instrument hooks, the C half of debug mode, and loop introspection.
 *
 * Zero cost when unused.  The Python layer (broomio._core.Loop) turns the loop's list of
 * instruments -- plus the debug monitor while debug mode is on, which is an internal
 * instrument -- into one table: for each hook, a tuple of the bound methods that override
 * it, or NULL when no instrument does.  Every call site in the engine tests that one pointer
 * (bro_hook() in loop.h), and the per-step hooks are folded into loop->step_hooked, the one
 * flag the run loop tests before each step.  A loop without instruments and without debug
 * mode therefore runs exactly the code it ran before this file existed, plus a predictable
 * branch per step, per poll and per ready-ring push.
 *
 * Failure policy: an instrument that raises is not allowed to break the loop.  The error is
 * handed to Loop._instrument_failed(), which logs it and removes that instrument (as trio
 * does); the hook call itself never fails and keeps whatever exception was already set,
 * because hooks run at awkward moments (inside a ready-ring push, while a task finishes
 * with an error, from another thread's task.cancel()).
 *
 * Debug mode's C half: engine awaitables created while a debug loop runs remember where they
 * were created (bro_debug_origin, the first frame outside the broomio package) and warn when
 * they are deallocated without ever having been awaited -- the "forgot the await" mistake,
 * which CPython only reports for coroutines, not for C awaitables.  Everything else in debug
 * mode (slow steps, creation tracebacks, unclosed sockets) is Python, in broomio/_debug.py,
 * riding on the hooks.
 */
#include <math.h>

#include "heap.h"
#include "loop.h"
#include "poll.h"
#include "task.h"

/* ---- calling hooks -------------------------------------------------------------------- */

static void hook_failed(bro_loop *loop, PyObject *fn)
{
    PyObject *exc = bro_fetch_exception();
    if (exc == NULL)
        return;
    PyObject *r = PyObject_CallMethod((PyObject *)loop, "_instrument_failed", "OO", fn, exc);
    if (r == NULL)
        PyErr_WriteUnraisable(fn);
    Py_XDECREF(r);
    Py_DECREF(exc);
}

void bro_hook_call(bro_loop *loop, int which, PyObject *arg)
{
    PyObject *fns = loop->hooks[which];
    if (fns == NULL)
        return;
    /* Held across the calls: an instrument that fails (or removes itself) replaces the
     * table while we iterate over the old one. */
    Py_INCREF(fns);
    Py_INCREF(loop);
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(fns); i++) {
        PyObject *fn = PyTuple_GET_ITEM(fns, i);
        PyObject *r = arg != NULL ? PyObject_CallOneArg(fn, arg) : PyObject_CallNoArgs(fn);
        if (r == NULL)
            hook_failed(loop, fn);
        Py_XDECREF(r);
    }
    PyErr_Restore(type, value, tb);
    Py_DECREF(loop);
    Py_DECREF(fns);
}

void bro_hook_io_call(bro_loop *loop, int which, int timeout_ms)
{
    PyObject *timeout = PyFloat_FromDouble(timeout_ms < 0 ? INFINITY : timeout_ms / 1000.0);
    if (timeout == NULL) {
        PyErr_WriteUnraisable((PyObject *)loop);
        return;
    }
    bro_hook_call(loop, which, timeout);
    Py_DECREF(timeout);
}

int bro_task_step_hooked(bro_loop *loop, bro_task *t)
{
    bro_hook(loop, BRO_HOOK_BEFORE_TASK_STEP, (PyObject *)t);
    /* The hook ran Python code; the task is stepped only if it is still runnable. */
    if (t->state != BRO_TASK_READY)
        return 0;
    int r = bro_task_step(t);
    bro_hook(loop, BRO_HOOK_AFTER_TASK_STEP, (PyObject *)t);
    return r;
}

/* _set_hooks(debug_monitor, table): debug_monitor is None or the Python monitor object;
 * table holds BRO_NHOOKS tuples of callables. */
PyObject *bro_loop_set_hooks(bro_loop *loop, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyTuple_Check(args[1]) || PyTuple_GET_SIZE(args[1]) != BRO_NHOOKS) {
        PyErr_Format(PyExc_TypeError, "_set_hooks(debug_monitor, table of %d tuples)", BRO_NHOOKS);
        return NULL;
    }
    PyObject *table = args[1];
    for (int i = 0; i < BRO_NHOOKS; i++) {
        PyObject *fns = PyTuple_GET_ITEM(table, i);
        if (!PyTuple_Check(fns)) {
            PyErr_SetString(PyExc_TypeError, "_set_hooks(): each hook entry must be a tuple");
            return NULL;
        }
        for (Py_ssize_t j = 0; j < PyTuple_GET_SIZE(fns); j++) {
            if (!PyCallable_Check(PyTuple_GET_ITEM(fns, j))) {
                PyErr_SetString(PyExc_TypeError, "_set_hooks(): hooks must be callable");
                return NULL;
            }
        }
    }
    for (int i = 0; i < BRO_NHOOKS; i++) {
        PyObject *fns = PyTuple_GET_ITEM(table, i);
        Py_XSETREF(loop->hooks[i], PyTuple_GET_SIZE(fns) > 0 ? Py_NewRef(fns) : NULL);
    }
    loop->step_hooked = loop->hooks[BRO_HOOK_BEFORE_TASK_STEP] != NULL ||
                        loop->hooks[BRO_HOOK_AFTER_TASK_STEP] != NULL;
    PyObject *monitor = args[0] == Py_None ? NULL : args[0];
    Py_XSETREF(loop->debug_obj, Py_XNewRef(monitor));
    bro_loop_set_debug_flag(loop, monitor != NULL);
    Py_RETURN_NONE;
}

int bro_instrument_traverse(bro_loop *loop, visitproc visit, void *arg)
{
    for (int i = 0; i < BRO_NHOOKS; i++)
        Py_VISIT(loop->hooks[i]);
    Py_VISIT(loop->debug_obj);
    return 0;
}

void bro_instrument_clear(bro_loop *loop)
{
    for (int i = 0; i < BRO_NHOOKS; i++)
        Py_CLEAR(loop->hooks[i]);
    loop->step_hooked = 0;
    Py_CLEAR(loop->debug_obj);
}

/* ---- debug mode: never-awaited awaitables --------------------------------------------- */

/* A frame of the broomio package itself (its module name is broomio or broomio.*): the
 * origin of an awaitable is the user's line that called into broomio, not broomio's own. */
static int frame_is_internal(PyFrameObject *f)
{
    PyObject *globals = PyFrame_GetGlobals(f);
    if (globals == NULL) {
        PyErr_Clear();
        return 0;
    }
    int internal = 0;
    PyObject *name = PyDict_GetItemString(globals, "__name__"); /* borrowed */
    if (name != NULL && PyUnicode_Check(name)) {
        const char *s = PyUnicode_AsUTF8(name);
        if (s == NULL)
            PyErr_Clear();
        else
            internal = strncmp(s, "broomio", 7) == 0 && (s[7] == '\0' || s[7] == '.');
    }
    Py_DECREF(globals);
    return internal;
}

PyObject *bro_debug_origin(void)
{
    PyFrameObject *f = PyEval_GetFrame(); /* borrowed */
    if (f == NULL)
        Py_RETURN_NONE;
    Py_INCREF(f);
    PyFrameObject *innermost = (PyFrameObject *)Py_NewRef(f);
    while (f != NULL && frame_is_internal(f)) {
        PyFrameObject *back = PyFrame_GetBack(f); /* new reference or NULL */
        Py_DECREF(f);
        f = back;
    }
    if (f == NULL)
        f = (PyFrameObject *)Py_NewRef(innermost); /* all broomio: report where it was */
    Py_DECREF(innermost);
    PyCodeObject *code = PyFrame_GetCode(f);
    int line = PyFrame_GetLineNumber(f);
    Py_DECREF(f);
    PyObject *file = PyObject_GetAttrString((PyObject *)code, "co_filename");
    PyObject *func = file ? PyObject_GetAttrString((PyObject *)code, "co_qualname") : NULL;
    Py_DECREF(code);
    PyObject *r = func ? Py_BuildValue("(OiO)", file, line, func) : NULL;
    Py_XDECREF(file);
    Py_XDECREF(func);
    return r;
}

void bro_debug_never_awaited(PyObject *Py_UNUSED(self), const char *what, PyObject *origin)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    int r;
    if (origin != NULL && PyTuple_Check(origin) && PyTuple_GET_SIZE(origin) == 3) {
        PyObject *file = PyTuple_GET_ITEM(origin, 0);
        PyObject *line = PyTuple_GET_ITEM(origin, 1);
        PyObject *func = PyTuple_GET_ITEM(origin, 2);
        PyObject *msg = PyUnicode_FromFormat("broomio %s awaitable created at %U:%S (in %U) was "
                                             "never awaited; is an 'await' missing?",
                                             what, file, line, func);
        long lineno = PyLong_AsLong(line);
        r = msg == NULL || lineno < 0 ? -1
                                      : PyErr_WarnExplicitObject(PyExc_RuntimeWarning, msg, file,
                                                                 (int)lineno, NULL, NULL);
        Py_XDECREF(msg);
    } else {
        r = PyErr_WarnFormat(PyExc_RuntimeWarning, 1,
                             "broomio %s awaitable was never awaited; is an 'await' missing?",
                             what);
    }
    /* The object is being deallocated: it cannot be handed to the unraisable hook. */
    if (r < 0)
        PyErr_WriteUnraisable(NULL);
    PyErr_Restore(type, value, tb);
}

/* ---- introspection -------------------------------------------------------------------- */

/* _statistics() -> (tasks_living, tasks_runnable, timers_pending, seconds_to_next_deadline,
 *                   io_fds_registered, io_tasks_waiting, threadsafe_queue_size, io_waits) */
PyObject *bro_loop_statistics(bro_loop *loop, PyObject *Py_UNUSED(ignored))
{
    if (loop->closed) {
        PyErr_SetString(PyExc_RuntimeError, "this loop is closed");
        return NULL;
    }
    Py_ssize_t runnable = 0;
    for (Py_ssize_t i = 0; i < loop->ring_len; i++) {
        bro_task *t = (bro_task *)loop->ring[(loop->ring_head + i) % loop->ring_cap];
        runnable += t->state == BRO_TASK_READY;
    }
    double next = INFINITY;
    if (loop->heap.len > 0) {
        double now;
        if (bro_loop_now(loop, &now) < 0)
            return NULL;
        next = bro_heap_next_deadline(&loop->heap) - now;
        if (next < 0)
            next = 0;
    }
    Py_ssize_t fds = 0, waiting = 0;
    for (int fd = 0; fd < loop->fds.cap; fd++) {
        bro_fd_slot *slot = &loop->fds.slots[fd];
        /* The loop's own signal pipe is machinery, not the program's I/O. */
        if (slot->registered && fd != loop->signal_rfd)
            fds++;
        waiting += (slot->reader != NULL) + (slot->writer != NULL);
    }
    pthread_mutex_lock(&loop->inbox_lock);
    Py_ssize_t inbox = loop->inbox != NULL ? PyList_GET_SIZE(loop->inbox) : 0;
    pthread_mutex_unlock(&loop->inbox_lock);
    return Py_BuildValue("(nnndnnnK)", loop->live_tasks, runnable, loop->heap.len, next, fds,
                         waiting, inbox, (unsigned long long)loop->io_waits);
}

/* _all_tasks() -> tuple of the unfinished tasks, oldest first. */
PyObject *bro_loop_all_tasks(bro_loop *loop, PyObject *Py_UNUSED(ignored))
{
    PyObject *tasks = PyTuple_New(loop->live_tasks);
    if (tasks == NULL)
        return NULL;
    /* all_tasks is newest first (spawning prepends): fill the tuple from the end. */
    Py_ssize_t i = loop->live_tasks;
    for (bro_task *t = loop->all_tasks; t != NULL && i > 0; t = t->all_next)
        PyTuple_SET_ITEM(tasks, --i, Py_NewRef((PyObject *)t));
    if (i != 0) {
        /* The count and the list disagree: never expected, but do not return holes. */
        Py_DECREF(tasks);
        PyErr_SetString(PyExc_SystemError, "broomio: live task count out of sync");
        return NULL;
    }
    return tasks;
}
