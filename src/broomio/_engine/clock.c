/*
 * clock.c -- custom clocks and the idle hook (wait_all_tasks_blocked, autojump).
 *
 * Clocks.  A loop reads the time in a handful of places: when a sleep or a delayed start
 * computes its deadline, when a cancel scope arms its deadline, once per iteration before
 * firing timers, for the poll timeout, and in current_time() / loop.time().  All of them go
 * through bro_loop_now() (loop.h).  With the default clock (loop->clock == NULL) that is an
 * inline CLOCK_MONOTONIC read behind one pointer test, so the default path costs what it
 * always cost.  With a custom clock (any object with start_clock(), current_time() and
 * deadline_to_sleep_time(), see broomio.Clock) the loop calls current_time() instead, and
 * asks deadline_to_sleep_time(next_deadline) how long to block in the poller: the clock's
 * time need not run at the speed of real time (a MockClock can stand still or jump).  The
 * loop keeps strong references to the clock and to its two bound methods (looked up once,
 * when the clock is set); errors raised by the clock propagate to whoever read the time.
 *
 * The idle hook.  wait_all_tasks_blocked(cushion) parks its task (lowlevel.suspend) after
 * registering it here, in an array sorted by (cushion, arrival).  The registration holds a
 * strong reference to the task; the Python side removes it in a finally block, so an entry
 * never outlives the wait it belongs to, and bro_idle_fire() only wakes a task that is still
 * suspended.  Idleness is detected where the loop is about to block in the poller with no
 * task runnable: bro_idle_prime() shortens the poll timeout to the smallest cushion (or, if
 * nobody waits, to the clock's autojump threshold when a deadline exists to jump to).  If
 * that wait ran out with no I/O event, no cross-thread wake-up, no timer fired and no task
 * became runnable, every task has been blocked for that long, and bro_idle_fire() wakes all
 * waiters with that cushion (trio's semantics) or jumps the clock to the next deadline.
 * Waiters take priority over the autojump: a task in wait_all_tasks_blocked() counts as
 * activity, so the clock never jumps while one exists.  The next iteration then sees the
 * deadline due (a zero timeout) and fires it as usual.  When nobody waits and no clock
 * autojumps, bro_idle_armed() is false and none of this runs.
 */
#include <math.h>

#include "heap.h"
#include "loop.h"
#include "task.h"

/* ---- reading a custom clock ----------------------------------------------------------- */

/* Converts what a clock method returned to a double, with errors naming the method. */
static int clock_result(PyObject *r, const char *method, double *out)
{
    if (r == NULL)
        return -1;
    if (PyBool_Check(r) || !PyNumber_Check(r)) {
        PyErr_Format(PyExc_TypeError, "clock.%s() must return a float, not %.200s", method,
                     Py_TYPE(r)->tp_name);
        Py_DECREF(r);
        return -1;
    }
    double v = PyFloat_AsDouble(r);
    Py_DECREF(r);
    if (v == -1.0 && PyErr_Occurred())
        return -1;
    if (isnan(v)) {
        PyErr_Format(PyExc_ValueError, "clock.%s() returned NaN", method);
        return -1;
    }
    *out = v;
    return 0;
}

int bro_clock_now(bro_loop *loop, double *now)
{
    return clock_result(PyObject_CallNoArgs(loop->clock_now), "current_time", now);
}

int bro_clock_sleep_time(bro_loop *loop, double deadline, double *out)
{
    PyObject *arg = PyFloat_FromDouble(deadline);
    if (arg == NULL)
        return -1;
    PyObject *r = PyObject_CallOneArg(loop->clock_sleep_time, arg);
    Py_DECREF(arg);
    if (clock_result(r, "deadline_to_sleep_time", out) < 0)
        return -1;
    if (*out < 0)
        *out = 0;
    return 0;
}

int bro_clock_start(bro_loop *loop)
{
    PyObject *r = PyObject_CallMethod(loop->clock, "start_clock", NULL);
    Py_XDECREF(r);
    return r == NULL ? -1 : 0;
}

/* ---- the clock as a loop attribute ---------------------------------------------------- */

static PyObject *clock_method(PyObject *clock, const char *name)
{
    PyObject *m = PyObject_GetAttrString(clock, name);
    if (m == NULL || !PyCallable_Check(m)) {
        Py_XDECREF(m);
        PyErr_Format(PyExc_TypeError,
                     "Loop() argument 'clock' must be a broomio.Clock (an object with "
                     "start_clock(), current_time() and deadline_to_sleep_time()), not %.200s",
                     Py_TYPE(clock)->tp_name);
        return NULL;
    }
    return m;
}

/* _set_clock(clock): used by Loop.__init__; None restores CLOCK_MONOTONIC.  Refused while
 * the loop runs or has timers: their deadlines were computed on the old clock. */
PyObject *bro_loop_set_clock(bro_loop *loop, PyObject *clock)
{
    if (loop->running || loop->heap.len > 0) {
        PyErr_SetString(PyExc_RuntimeError,
                        "a loop's clock can only be changed while it is not running and has "
                        "no pending timers");
        return NULL;
    }
    PyObject *now = NULL, *sleep_time = NULL;
    if (PyType_Check(clock)) {
        PyErr_Format(PyExc_TypeError,
                     "Loop() argument 'clock' must be a clock instance, not the class %.200s",
                     ((PyTypeObject *)clock)->tp_name);
        return NULL;
    }
    if (clock != Py_None) {
        PyObject *start = clock_method(clock, "start_clock");
        if (start == NULL)
            return NULL;
        Py_DECREF(start);
        if ((now = clock_method(clock, "current_time")) == NULL)
            return NULL;
        if ((sleep_time = clock_method(clock, "deadline_to_sleep_time")) == NULL) {
            Py_DECREF(now);
            return NULL;
        }
    }
    /* The threshold belonged to the old clock; a MockClock sets its own in start_clock(). */
    loop->autojump_threshold = INFINITY;
    PyObject *old[3] = {loop->clock, loop->clock_now, loop->clock_sleep_time};
    loop->clock = clock == Py_None ? NULL : Py_NewRef(clock);
    loop->clock_now = now;
    loop->clock_sleep_time = sleep_time;
    /* Released only once the loop is consistent: a finalizer may read the loop's time. */
    for (int i = 0; i < 3; i++)
        Py_XDECREF(old[i]);
    Py_RETURN_NONE;
}

PyObject *bro_loop_get_clock(bro_loop *loop, void *Py_UNUSED(closure))
{
    return Py_NewRef(loop->clock ? loop->clock : Py_None);
}

PyObject *bro_loop_get_autojump(bro_loop *loop, void *Py_UNUSED(closure))
{
    return PyFloat_FromDouble(loop->autojump_threshold);
}

/* Set by MockClock (on the loop it drives) when its autojump_threshold changes. */
int bro_loop_set_autojump(bro_loop *loop, PyObject *v, void *Py_UNUSED(closure))
{
    double d;
    if (v == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete _autojump_threshold");
        return -1;
    }
    if (bro_parse_seconds(v, "_autojump_threshold", "value", &d) < 0)
        return -1;
    if (d < 0) {
        PyErr_SetString(PyExc_ValueError, "_autojump_threshold must be >= 0");
        return -1;
    }
    if (loop->clock == NULL && d < INFINITY) {
        PyErr_SetString(PyExc_RuntimeError, "autojump needs a clock that can jump "
                                            "(Loop(clock=broomio.testing.MockClock(...)))");
        return -1;
    }
    loop->autojump_threshold = d;
    return 0;
}

/* ---- wait_all_tasks_blocked() waiters ------------------------------------------------- */

/* _idle_add(cushion, task): register task (about to suspend) as an idle waiter. */
PyObject *bro_loop_idle_add(bro_loop *loop, PyObject *const *args, Py_ssize_t nargs)
{
    double cushion;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "_idle_add(cushion, task)");
        return NULL;
    }
    if (bro_parse_seconds(args[0], "wait_all_tasks_blocked", "cushion", &cushion) < 0)
        return NULL;
    if (cushion < 0) {
        PyErr_SetString(PyExc_ValueError,
                        "wait_all_tasks_blocked() argument 'cushion' must be >= 0");
        return NULL;
    }
    if (!Py_IS_TYPE(args[1], loop->st->task_type) || ((bro_task *)args[1])->loop != loop) {
        PyErr_SetString(PyExc_TypeError, "_idle_add() expects a task of this loop");
        return NULL;
    }
    if (loop->idle_len == loop->idle_cap) {
        Py_ssize_t cap = loop->idle_cap ? loop->idle_cap * 2 : 8;
        bro_idle_waiter *w = PyMem_Realloc(loop->idle, (size_t)cap * sizeof(bro_idle_waiter));
        if (w == NULL)
            return PyErr_NoMemory();
        loop->idle = w;
        loop->idle_cap = cap;
    }
    /* Sorted insertion: a handful of waiters at most, and equal cushions stay FIFO. */
    Py_ssize_t i = loop->idle_len;
    while (i > 0 && loop->idle[i - 1].cushion > cushion) {
        loop->idle[i] = loop->idle[i - 1];
        i--;
    }
    loop->idle[i].cushion = cushion;
    loop->idle[i].seq = loop->idle_seq++;
    loop->idle[i].task = Py_NewRef(args[1]);
    loop->idle_len++;
    Py_RETURN_NONE;
}

static void idle_remove_at(bro_loop *loop, Py_ssize_t i)
{
    PyObject *task = loop->idle[i].task;
    loop->idle_len--;
    for (; i < loop->idle_len; i++)
        loop->idle[i] = loop->idle[i + 1];
    Py_DECREF(task);
}

/* _idle_discard(task): forget task's registration, if any (its wait ended). */
PyObject *bro_loop_idle_discard(bro_loop *loop, PyObject *task)
{
    for (Py_ssize_t i = 0; i < loop->idle_len; i++) {
        if (loop->idle[i].task == task) {
            idle_remove_at(loop, i);
            break;
        }
    }
    Py_RETURN_NONE;
}

void bro_idle_clear(bro_loop *loop)
{
    while (loop->idle_len > 0)
        idle_remove_at(loop, loop->idle_len - 1);
    PyMem_Free(loop->idle);
    loop->idle = NULL;
    loop->idle_cap = 0;
}

int bro_clock_traverse(bro_loop *loop, visitproc visit, void *arg)
{
    Py_VISIT(loop->clock);
    Py_VISIT(loop->clock_now);
    Py_VISIT(loop->clock_sleep_time);
    for (Py_ssize_t i = 0; i < loop->idle_len; i++)
        Py_VISIT(loop->idle[i].task);
    return 0;
}

/* ---- the idle hook -------------------------------------------------------------------- */

int bro_idle_prime(bro_loop *loop, double *timeout)
{
    if (loop->idle_len > 0) {
        /* Waiters exist: they wake without the clock moving, so no autojump (trio's rule). */
        if (loop->idle[0].cushion < *timeout) {
            *timeout = loop->idle[0].cushion;
            return BRO_IDLE_WAITERS;
        }
        return 0;
    }
    /* Only jump when there is a deadline to jump to: otherwise a zero threshold would make
     * a loop whose tasks all wait for I/O spin instead of blocking. */
    if (loop->clock != NULL && loop->heap.len > 0 && loop->autojump_threshold < *timeout) {
        *timeout = loop->autojump_threshold;
        return BRO_IDLE_AUTOJUMP;
    }
    return 0;
}

int bro_idle_fire(bro_loop *loop, int primed)
{
    if (primed == BRO_IDLE_WAITERS) {
        if (loop->idle_len == 0)
            return 0;
        double cushion = loop->idle[0].cushion;
        while (loop->idle_len > 0 && loop->idle[0].cushion == cushion) {
            bro_task *t = (bro_task *)Py_NewRef(loop->idle[0].task);
            idle_remove_at(loop, 0);
            /* Still suspended in wait_all_tasks_blocked() (a cancelled waiter is already
             * READY and removes itself when it resumes). */
            if (t->state == BRO_TASK_WAITING && t->wait == BRO_WAIT_EXTERNAL)
                bro_task_wake(t, NULL, NULL);
            Py_DECREF(t);
        }
        return 0;
    }
    if (primed == BRO_IDLE_AUTOJUMP && loop->clock != NULL && loop->heap.len > 0) {
        double now;
        if (bro_clock_now(loop, &now) < 0)
            return -1;
        double jump = bro_heap_next_deadline(&loop->heap) - now;
        if (jump > 0 && jump < INFINITY) {
            PyObject *r = PyObject_CallMethod(loop->clock, "jump", "d", jump);
            if (r == NULL)
                return -1;
            Py_DECREF(r);
        }
    }
    return 0;
}
