/*
 * loop.c -- the Loop object and its run loop.
 *
 * One iteration (see docs/architecture.md):
 *   1. step the tasks that were ready when the iteration began (tasks readied during it wait
 *      for the next one, so a busy task cannot starve I/O or timers);
 *   2. poll, with timeout 0 if anything is ready, else until the next deadline, else forever
 *      (an idle loop sits in epoll_wait with the GIL released: it never spins);
 *   3. hand readiness to the fd table's waiters, and drain the cross-thread inbox if a
 *      thread woke us;
 *   4. fire due timers (sleeps, delayed starts, cancel-scope deadlines);
 *   5. run Python's signal handlers.  A KeyboardInterrupt cancels every task (the root
 *      nursery's scope), cleanup runs, and run() raises it once no task is left.  A second
 *      one while cleanup is running stops the loop at once;
 *   6. if the poll was an idle wait (wait_all_tasks_blocked, a clock's autojump) that ran
 *      out with nothing happening since, run the idle hook (clock.c).
 * The loop ends when no task is left.
 *
 * Ownership: the ring and the heap own references to what they hold; the loop owns its root
 * nursery.  bro_running_loop (thread-local) points to the loop running in this thread.
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <time.h>
#include <unistd.h>

#include "heap.h"
#include "loop.h"
#include "poll.h"
#include "scope.h"
#include "task.h"
#include "structmember.h"

_Thread_local bro_loop *bro_running_loop BRO_TLS_MODEL = NULL;

double bro_monotonic(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ---- the ready ring ------------------------------------------------------------------- */

static int ring_grow(bro_loop *loop)
{
    Py_ssize_t cap = loop->ring_cap ? loop->ring_cap * 2 : 256;
    PyObject **ring = PyMem_Malloc((size_t)cap * sizeof(PyObject *));
    if (ring == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < loop->ring_len; i++)
        ring[i] = loop->ring[(loop->ring_head + i) % loop->ring_cap];
    PyMem_Free(loop->ring);
    loop->ring = ring;
    loop->ring_cap = cap;
    loop->ring_head = 0;
    return 0;
}

int bro_ready_push(bro_loop *loop, PyObject *obj)
{
    bro_task *t = (bro_task *)obj;
    if (t->in_ring)
        return 0; /* already queued: that entry will step it */
    if (loop->ring_len == loop->ring_cap && ring_grow(loop) < 0)
        return -1;
    t->in_ring = 1;
    Py_ssize_t tail = loop->ring_head + loop->ring_len;
    if (tail >= loop->ring_cap)
        tail -= loop->ring_cap;
    loop->ring[tail] = Py_NewRef(obj);
    loop->ring_len++;
    bro_hook(loop, BRO_HOOK_TASK_SCHEDULED, obj);
    /* Pushed from another thread (task.cancel(), lot.unpark() ...) while the loop may be
     * sleeping in epoll_wait: wake it.  The GIL serializes the ring itself. */
    if (loop->running && bro_running_loop != loop && loop->poller != NULL)
        bro_poller_wake(loop->poller);
    return 0;
}

static PyObject *ready_pop(bro_loop *loop)
{
    PyObject *obj = loop->ring[loop->ring_head];
    loop->ring_head++;
    if (loop->ring_head == loop->ring_cap)
        loop->ring_head = 0;
    loop->ring_len--;
    ((bro_task *)obj)->in_ring = 0;
    return obj;
}

static void ring_clear(bro_loop *loop)
{
    while (loop->ring_len > 0) {
        PyObject *obj = ready_pop(loop);
        Py_DECREF(obj);
    }
    PyMem_Free(loop->ring);
    loop->ring = NULL;
    loop->ring_cap = loop->ring_head = 0;
}

/* ---- tasks bookkeeping ---------------------------------------------------------------- */

void bro_loop_unlink_task(bro_loop *loop, bro_task *t)
{
    if (t->all_prev)
        t->all_prev->all_next = t->all_next;
    else if (loop->all_tasks == t)
        loop->all_tasks = t->all_next;
    else
        return; /* not linked */
    if (t->all_next)
        t->all_next->all_prev = t->all_prev;
    t->all_prev = t->all_next = NULL;
    loop->live_tasks--;
}

int bro_loop_check_usable(bro_loop *loop)
{
    if (loop->closed) {
        PyErr_SetString(PyExc_RuntimeError, "this loop is closed");
        return -1;
    }
    if (loop->running && bro_running_loop != loop) {
        PyErr_SetString(PyExc_RuntimeError, "this loop is running in another thread; use "
                                            "loop.call_soon_threadsafe() to reach it");
        return -1;
    }
    return 0;
}

/* ---- the inbox ------------------------------------------------------------------------ */

static int inbox_drain(bro_loop *loop)
{
    atomic_store(&loop->inbox_pending, 0);
    PyObject *fresh = PyList_New(0);
    if (fresh == NULL)
        return -1;
    pthread_mutex_lock(&loop->inbox_lock);
    PyObject *items = loop->inbox;
    loop->inbox = fresh;
    pthread_mutex_unlock(&loop->inbox_lock);
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(items); i++) {
        PyObject *item = PyList_GET_ITEM(items, i);
        PyObject *fn = PyTuple_GET_ITEM(item, 0);
        PyObject *r = PyObject_Call(fn, PyTuple_GET_ITEM(item, 1), NULL);
        if (r == NULL) {
            if (PyErr_ExceptionMatches(PyExc_KeyboardInterrupt) ||
                PyErr_ExceptionMatches(PyExc_SystemExit)) {
                /* Let the caller treat it like a signal: cancel everything, then raise. */
                Py_DECREF(items);
                return -1;
            }
            PyErr_WriteUnraisable(fn);
        }
        Py_XDECREF(r);
    }
    Py_DECREF(items);
    return 0;
}

static PyObject *loop_call_soon_threadsafe(bro_loop *loop, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || !PyCallable_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError,
                        "call_soon_threadsafe() expects a callable and its arguments");
        return NULL;
    }
    if (loop->closed) {
        PyErr_SetString(PyExc_RuntimeError, "this loop is closed");
        return NULL;
    }
    PyObject *rest = PyTuple_New(nargs - 1);
    if (rest == NULL)
        return NULL;
    for (Py_ssize_t i = 1; i < nargs; i++)
        PyTuple_SET_ITEM(rest, i - 1, Py_NewRef(args[i]));
    PyObject *item = PyTuple_Pack(2, args[0], rest);
    Py_DECREF(rest);
    if (item == NULL)
        return NULL;
    pthread_mutex_lock(&loop->inbox_lock);
    int r = PyList_Append(loop->inbox, item);
    pthread_mutex_unlock(&loop->inbox_lock);
    Py_DECREF(item);
    if (r < 0)
        return NULL;
    if (!atomic_exchange(&loop->inbox_pending, 1))
        bro_poller_wake(loop->poller);
    Py_RETURN_NONE;
}

/* ---- signals -------------------------------------------------------------------------- */

/* Points Python's C signal handler at our pipe while the loop runs in the main thread, so a
 * signal that lands just before epoll_wait still wakes it (nothing is lost in that gap). */
static int signals_install(bro_loop *loop)
{
    if (loop->signal_rfd < 0) {
        int fds[2];
        if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) < 0) {
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
        loop->signal_rfd = fds[0];
        loop->signal_wfd = fds[1];
        bro_fd_slot *slot = bro_fd_slot_get(&loop->fds, fds[0]);
        if (slot == NULL)
            return -1;
        if (bro_poller_arm(loop->poller, fds[0], 0) < 0) {
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
        slot->registered = 1;
    }
    PyObject *signal = PyImport_ImportModule("signal");
    if (signal == NULL)
        return -1;
    PyObject *fn = PyObject_GetAttrString(signal, "set_wakeup_fd");
    Py_DECREF(signal);
    if (fn == NULL)
        return -1;
    PyObject *args = Py_BuildValue("(i)", loop->signal_wfd);
    PyObject *kwargs = Py_BuildValue("{s:O}", "warn_on_full_buffer", Py_False);
    PyObject *old = (args && kwargs) ? PyObject_Call(fn, args, kwargs) : NULL;
    Py_XDECREF(args);
    Py_XDECREF(kwargs);
    Py_DECREF(fn);
    if (old == NULL) {
        /* Not the main thread: signals are not ours to handle. */
        if (PyErr_ExceptionMatches(PyExc_ValueError)) {
            PyErr_Clear();
            return 0;
        }
        return -1;
    }
    loop->old_wakeup_fd = old;
    return 0;
}

static void signals_restore(bro_loop *loop)
{
    if (loop->old_wakeup_fd == NULL)
        return;
    PyObject *exc = bro_fetch_exception();
    PyObject *signal = PyImport_ImportModule("signal");
    PyObject *r =
        signal ? PyObject_CallMethod(signal, "set_wakeup_fd", "O", loop->old_wakeup_fd) : NULL;
    if (r == NULL)
        PyErr_WriteUnraisable((PyObject *)loop);
    Py_XDECREF(r);
    Py_XDECREF(signal);
    Py_CLEAR(loop->old_wakeup_fd);
    if (exc != NULL)
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
    Py_XDECREF(exc);
}

static void signals_drain(bro_loop *loop)
{
    char buf[64];
    while (read(loop->signal_rfd, buf, sizeof buf) > 0) {
    }
}

/* An exception from a signal handler (or a thread callback): cancel everything once. */
static int loop_interrupted(bro_loop *loop)
{
    PyObject *exc = bro_fetch_exception();
    if (exc == NULL)
        return 0;
    if (loop->interrupt != NULL) {
        /* A second interrupt while the first one's cleanup runs: stop now. */
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        Py_DECREF(exc);
        return -1;
    }
    loop->interrupt = exc;
    if (loop->root != NULL && bro_scope_cancel(loop->root->scope) < 0)
        return -1;
    return 0;
}

/* ---- the run loop --------------------------------------------------------------------- */

static int dispatch_events(bro_loop *loop, bro_poll_event *events, int n)
{
    for (int i = 0; i < n; i++) {
        int fd = events[i].fd;
        if (fd == loop->signal_rfd) {
            signals_drain(loop);
            continue;
        }
        if (fd < 0 || fd >= loop->fds.cap)
            continue;
        bro_fd_slot *slot = &loop->fds.slots[fd];
        slot->ready |= (uint8_t)events[i].bits;
        if ((events[i].bits & BRO_READABLE) && slot->reader != NULL) {
            bro_task *t = slot->reader;
            slot->reader = NULL;
            t->fd = -1;
            bro_task_wake(t, NULL, NULL);
        }
        if ((events[i].bits & BRO_WRITABLE) && slot->writer != NULL) {
            bro_task *t = slot->writer;
            slot->writer = NULL;
            t->fd = -1;
            bro_task_wake(t, NULL, NULL);
        }
    }
    return 0;
}

/* Fires the due timers; returns how many fired, or -1. */
static int fire_timers(bro_loop *loop)
{
    bro_state *st = loop->st;
    PyObject *obj;
    int r = 0, fired = 0;
    while ((obj = bro_heap_pop_due(&loop->heap, loop->now)) != NULL) {
        fired = 1;
        if (Py_IS_TYPE(obj, st->task_type)) {
            bro_task *t = (bro_task *)obj;
            if (t->state == BRO_TASK_WAITING && t->wait == BRO_WAIT_TIMER)
                bro_task_wake(t, NULL, NULL);
        } else if (Py_IS_TYPE(obj, st->scope_type)) {
            if (bro_scope_fire((bro_scope *)obj) < 0)
                r = -1;
        }
        Py_DECREF(obj);
        if (r < 0)
            return -1;
    }
    return fired;
}

/* Sets *timeout_ms (-1: none) and *idle: whether the wait doubles as an idle wait
 * (wait_all_tasks_blocked, autojump; see clock.c). */
static int poll_timeout_ms(bro_loop *loop, int *timeout_ms, int *idle)
{
    *idle = 0;
    *timeout_ms = 0;
    if (loop->ring_len > 0)
        return 0;
    double delay = INFINITY;
    if (loop->heap.len > 0) {
        double deadline = bro_heap_next_deadline(&loop->heap);
        if (loop->clock == NULL)
            delay = deadline - bro_monotonic();
        else if (bro_clock_sleep_time(loop, deadline, &delay) < 0)
            return -1;
    }
    if (bro_idle_armed(loop))
        *idle = bro_idle_prime(loop, &delay);
    if (delay <= 0)
        return 0;
    if (isinf(delay)) {
        *timeout_ms = -1;
        return 0;
    }
    /* Round up: waking a little late is fine, waking early would spin. */
    double ms = ceil(delay * 1000.0);
    *timeout_ms = ms > 86400000.0 ? 86400000 : (int)ms;
    return 0;
}

/* Waits for I/O (without the GIL) and dispatches what is ready; sets *woken if another
 * thread woke the loop, and *idle if the wait was an idle wait that ran out. */
static int poll_io(bro_loop *loop, bro_poll_event *events, int max_events, int *woken, int *idle)
{
    int timeout;
    if (poll_timeout_ms(loop, &timeout, idle) < 0)
        return -1;
    int count, err;
    bro_hook_io(loop, BRO_HOOK_BEFORE_IO_WAIT, timeout);
    loop->io_waits++;
    Py_BEGIN_ALLOW_THREADS count =
        bro_poller_wait(loop->poller, timeout, events, max_events, woken);
    err = errno;
    Py_END_ALLOW_THREADS if (count < 0)
    {
        if (err != EINTR) {
            errno = err;
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
        count = 0;
        *idle = 0; /* interrupted before the idle wait ran out */
    }
    bro_hook_io(loop, BRO_HOOK_AFTER_IO_WAIT, timeout);
    if (count > 0 || *woken)
        *idle = 0;
    if (bro_loop_now(loop, &loop->now) < 0)
        return -1;
    return dispatch_events(loop, events, count);
}

/* While tasks are runnable the poll has timeout 0 and usually finds nothing, yet it costs a
 * system call and a GIL hand-off: with one or two runnable tasks (a producer and a consumer,
 * a lock handed from task to task) it was most of the cost of every task switch.  So a busy
 * loop polls once at least BRO_POLL_STEPS task steps have run since the last poll; an I/O
 * event waits at most that many steps longer.  Timers, the cross-thread inbox and signals are
 * still checked every iteration (a clock read and two flag loads), and an idle loop polls
 * (and blocks) at once. */
#define BRO_POLL_STEPS 64

/* Steps the n tasks at the front of the ring.  Inlined twice with `hooked` constant, so
 * that the loop without per-step instruments tests loop->step_hooked once per batch, not once
 * per step. */
static inline __attribute__((always_inline)) int run_ready(bro_loop *loop, Py_ssize_t n, int hooked)
{
    while (n-- > 0) {
        bro_task *t = (bro_task *)ready_pop(loop);
        int r = 0;
        if (t->state == BRO_TASK_READY)
            r = hooked ? bro_task_step_hooked(loop, t) : bro_task_step(t);
        Py_DECREF(t);
        if (r < 0)
            return -1;
    }
    return 0;
}

static int run_iterations(bro_loop *loop)
{
    bro_poll_event events[256];
    Py_ssize_t steps_since_poll = 0;
    while (loop->live_tasks > 0) {
        Py_ssize_t n = loop->ring_len;
        steps_since_poll += n;
        if ((loop->step_hooked ? run_ready(loop, n, 1) : run_ready(loop, n, 0)) < 0)
            return -1;
        if (loop->live_tasks == 0)
            break;

        int woken = 0, idle = 0;
        if (loop->ring_len == 0 || steps_since_poll >= BRO_POLL_STEPS) {
            steps_since_poll = 0;
            if (poll_io(loop, events, 256, &woken, &idle) < 0)
                return -1;
        } else if (loop->heap.len > 0) {
            /* only fire_timers() reads it */
            if (bro_loop_now(loop, &loop->now) < 0)
                return -1;
        }
        if (woken || atomic_load(&loop->inbox_pending)) {
            if (inbox_drain(loop) < 0 && loop_interrupted(loop) < 0)
                return -1;
        }
        int fired = fire_timers(loop);
        if (fired < 0)
            return -1;
        if (PyErr_CheckSignals() < 0 && loop_interrupted(loop) < 0)
            return -1;
        /* The idle wait ran out and nothing happened: every task is blocked (clock.c). */
        if (idle && !fired && loop->ring_len == 0 && bro_idle_fire(loop, idle) < 0)
            return -1;
    }
    return 0;
}

static PyObject *loop_run(bro_loop *loop, PyObject *Py_UNUSED(ignored))
{
    if (loop->closed) {
        PyErr_SetString(PyExc_RuntimeError, "this loop is closed");
        return NULL;
    }
    if (loop->running) {
        PyErr_SetString(PyExc_RuntimeError, "this loop is already running");
        return NULL;
    }
    if (bro_running_loop != NULL) {
        PyErr_SetString(PyExc_RuntimeError,
                        "another broomio loop is already running in this thread");
        return NULL;
    }
    loop->running = 1;
    bro_running_loop = loop;
    int r = loop->clock != NULL ? bro_clock_start(loop) : 0;
    if (r == 0)
        r = bro_loop_now(loop, &loop->now);
    if (r == 0)
        r = signals_install(loop);
    if (r == 0) {
        bro_hook(loop, BRO_HOOK_BEFORE_RUN, NULL);
        r = run_iterations(loop);
        bro_hook(loop, BRO_HOOK_AFTER_RUN, NULL);
    }
    signals_restore(loop);
    bro_running_loop = NULL;
    loop->running = 0;
    if (r < 0)
        return NULL;
    if (loop->interrupt != NULL) {
        PyObject *exc = loop->interrupt;
        loop->interrupt = NULL;
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        Py_DECREF(exc);
        return NULL;
    }
    Py_RETURN_NONE;
}

/* Returns the root nursery's errors and gives the loop a fresh root for its next run. */
static PyObject *loop_take_root_errors(bro_loop *loop, PyObject *Py_UNUSED(ignored))
{
    if (loop->root == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "this loop is closed");
        return NULL;
    }
    PyObject *errors = bro_nursery_take_errors(loop->root);
    if (errors == NULL)
        return NULL;
    if (loop->root->nchildren == 0 && loop->root->scope->cancel_called) {
        bro_nursery *fresh = bro_nursery_new_root(loop);
        if (fresh == NULL) {
            Py_DECREF(errors);
            return NULL;
        }
        Py_SETREF(loop->root, fresh);
    }
    return errors;
}

/* ---- closing -------------------------------------------------------------------------- */

static int loop_do_close(bro_loop *loop)
{
    if (loop->closed)
        return 0;
    loop->closed = 1;
    /* Unfinished tasks: close their coroutines (running their finally blocks) and mark them
     * cancelled, so nothing is left pointing at a dead loop. */
    while (loop->all_tasks != NULL)
        bro_task_abandon(loop->all_tasks);
    ring_clear(loop);
    bro_heap_clear(&loop->heap);
    bro_idle_clear(loop);
    Py_CLEAR(loop->root);
    Py_CLEAR(loop->pending_coros);
    Py_CLEAR(loop->interrupt);
    PyMem_Free(loop->scratch);
    loop->scratch = NULL;
    pthread_mutex_lock(&loop->inbox_lock);
    PyObject *inbox = loop->inbox;
    loop->inbox = NULL;
    pthread_mutex_unlock(&loop->inbox_lock);
    Py_XDECREF(inbox);
    bro_fdtable_free(&loop->fds);
    bro_poller_free(loop->poller);
    loop->poller = NULL;
    if (loop->signal_rfd >= 0) {
        close(loop->signal_rfd);
        close(loop->signal_wfd);
        loop->signal_rfd = loop->signal_wfd = -1;
    }
    return 0;
}

static PyObject *loop_close(bro_loop *loop, PyObject *Py_UNUSED(ignored))
{
    if (loop->running) {
        PyErr_SetString(PyExc_RuntimeError, "cannot close a running loop");
        return NULL;
    }
    loop_do_close(loop);
    if (PyErr_Occurred())
        return NULL;
    Py_RETURN_NONE;
}

/* ---- other methods -------------------------------------------------------------------- */

static PyObject *loop_start_soon(bro_loop *loop, PyObject *const *args, Py_ssize_t nargs,
                                 PyObject *kwnames)
{
    if (bro_loop_check_usable(loop) < 0)
        return NULL;
    return bro_spawn_from_args(loop, loop->root, 0.0, args, nargs, kwnames);
}

static PyObject *loop_start_later(bro_loop *loop, PyObject *const *args, Py_ssize_t nargs,
                                  PyObject *kwnames)
{
    if (bro_loop_check_usable(loop) < 0)
        return NULL;
    return bro_spawn_later_from_args(loop, loop->root, args, nargs, kwnames);
}

static PyObject *loop_time(bro_loop *loop, PyObject *Py_UNUSED(ignored))
{
    double now;
    if (bro_loop_now(loop, &now) < 0)
        return NULL;
    return PyFloat_FromDouble(now);
}

static PyObject *loop_reschedule(bro_loop *loop, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"task", "value", "exception", NULL};
    PyObject *task, *value = NULL, *exc = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!|O$O:reschedule", kwlist, loop->st->task_type,
                                     &task, &value, &exc))
        return NULL;
    bro_task *t = (bro_task *)task;
    if (t->loop != loop) {
        PyErr_SetString(PyExc_ValueError, "that task belongs to another loop");
        return NULL;
    }
    if (t->state != BRO_TASK_WAITING || t->wait != BRO_WAIT_EXTERNAL) {
        PyErr_Format(PyExc_RuntimeError, "task %R is not suspended in broomio.lowlevel.suspend()",
                     task);
        return NULL;
    }
    if (exc == Py_None)
        exc = NULL;
    if (exc != NULL && !PyExceptionInstance_Check(exc)) {
        PyErr_SetString(PyExc_TypeError, "reschedule() argument 'exception' must be an "
                                         "exception instance");
        return NULL;
    }
    bro_task_wake(t, exc ? NULL : value, exc);
    Py_RETURN_NONE;
}

static PyObject *loop_get_running(bro_loop *loop, void *Py_UNUSED(c))
{
    return PyBool_FromLong(loop->running);
}

static PyObject *loop_get_closed(bro_loop *loop, void *Py_UNUSED(c))
{
    return PyBool_FromLong(loop->closed);
}

static PyObject *loop_get_debug(bro_loop *loop, void *Py_UNUSED(c))
{
    return PyBool_FromLong(loop->debug);
}

void bro_loop_set_debug_flag(bro_loop *loop, int on)
{
    /* Awaitables read the flag each time one is made, so it takes effect at the next
     * await. */
    loop->debug = (uint8_t)(on != 0);
}

static int loop_set_debug(bro_loop *loop, PyObject *v, void *Py_UNUSED(c))
{
    int on = v ? PyObject_IsTrue(v) : 0;
    if (on < 0)
        return -1;
    bro_loop_set_debug_flag(loop, on);
    return 0;
}

static PyObject *loop_get_slow(bro_loop *loop, void *Py_UNUSED(c))
{
    return PyFloat_FromDouble(loop->slow_callback_duration);
}

static int loop_set_slow(bro_loop *loop, PyObject *v, void *Py_UNUSED(c))
{
    double d;
    if (v == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete slow_callback_duration");
        return -1;
    }
    if (bro_parse_seconds(v, "slow_callback_duration", "value", &d) < 0)
        return -1;
    if (!(d > 0) || isinf(d)) {
        PyErr_SetString(PyExc_ValueError, "slow_callback_duration must be a positive number");
        return -1;
    }
    loop->slow_callback_duration = d;
    return 0;
}

static PyObject *loop_get_live(bro_loop *loop, void *Py_UNUSED(c))
{
    return PyLong_FromSsize_t(loop->live_tasks);
}

static PyObject *loop_get_root(bro_loop *loop, void *Py_UNUSED(c))
{
    return Py_NewRef(loop->root ? (PyObject *)loop->root : Py_None);
}

/* ---- the type ------------------------------------------------------------------------- */

static int bro_loop_setup(bro_loop *loop, PyObject *module, bro_state *st)
{
    loop->module = Py_NewRef(module);
    loop->st = st;
    loop->poller = bro_poller_new();
    if (loop->poller == NULL) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    loop->inbox = PyList_New(0);
    if (loop->inbox == NULL)
        return -1;
    loop->root = bro_nursery_new_root(loop);
    if (loop->root == NULL)
        return -1;
    loop->now = bro_monotonic();
    return 0;
}

static PyObject *loop_new(PyTypeObject *type, PyObject *Py_UNUSED(args), PyObject *Py_UNUSED(kwds))
{
    PyObject *module = PyType_GetModuleByDef(type, &bro_module_def);
    if (module == NULL)
        return NULL;
    bro_loop *loop = (bro_loop *)type->tp_alloc(type, 0);
    if (loop == NULL)
        return NULL;
    loop->signal_rfd = loop->signal_wfd = -1;
    loop->slow_callback_duration = 0.1;
    loop->autojump_threshold = INFINITY;
    pthread_mutex_init(&loop->inbox_lock, NULL);
    atomic_init(&loop->inbox_pending, 0);
    if (bro_loop_setup(loop, module, (bro_state *)PyModule_GetState(module)) < 0) {
        Py_DECREF(loop);
        return NULL;
    }
    return (PyObject *)loop;
}

static int loop_traverse(bro_loop *loop, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(loop));
    Py_VISIT(loop->module);
    for (Py_ssize_t i = 0; i < loop->ring_len; i++)
        Py_VISIT(loop->ring[(loop->ring_head + i) % loop->ring_cap]);
    if (bro_heap_traverse(&loop->heap, visit, arg))
        return -1;
    Py_VISIT(loop->root);
    Py_VISIT(loop->pending_coros);
    Py_VISIT(loop->interrupt);
    Py_VISIT(loop->inbox);
    Py_VISIT(loop->old_wakeup_fd);
    Py_VISIT(loop->exit_closers);
    if (bro_instrument_traverse(loop, visit, arg))
        return -1;
    return bro_clock_traverse(loop, visit, arg);
}

static int loop_clear(bro_loop *loop)
{
    /* No instrument may run while the loop is being torn down by the collector or its
     * deallocator: a hook could resurrect it half-cleared. */
    bro_instrument_clear(loop);
    if (!loop->running)
        loop_do_close(loop);
    if (PyErr_Occurred())
        PyErr_WriteUnraisable((PyObject *)loop);
    Py_CLEAR(loop->old_wakeup_fd);
    Py_CLEAR(loop->exit_closers);
    Py_CLEAR(loop->clock);
    Py_CLEAR(loop->clock_now);
    Py_CLEAR(loop->clock_sleep_time);
    Py_CLEAR(loop->module);
    return 0;
}

static void loop_dealloc(bro_loop *loop)
{
    PyTypeObject *tp = Py_TYPE(loop);
    PyObject_GC_UnTrack(loop);
    if (loop->weakreflist != NULL)
        PyObject_ClearWeakRefs((PyObject *)loop);
    loop_clear(loop);
    pthread_mutex_destroy(&loop->inbox_lock);
    tp->tp_free((PyObject *)loop);
    Py_DECREF(tp);
}

static PyMethodDef loop_methods[] = {
    {"start_soon", (PyCFunction)(void (*)(void))loop_start_soon, METH_FASTCALL | METH_KEYWORDS,
     "start_soon(fn_or_coro, *args, name=None) -> Task\n--\n\nStart a root task."},
    {"start_later", (PyCFunction)(void (*)(void))loop_start_later, METH_FASTCALL | METH_KEYWORDS,
     "start_later(delay, fn_or_coro, *args, name=None) -> Task\n--\n\n"
     "Start a root task after delay seconds."},
    {"_run", (PyCFunction)loop_run, METH_NOARGS, NULL},
    {"_take_root_errors", (PyCFunction)loop_take_root_errors, METH_NOARGS, NULL},
    {"time", (PyCFunction)loop_time, METH_NOARGS, "The loop's clock, in seconds."},
    {"_set_clock", (PyCFunction)bro_loop_set_clock, METH_O, NULL},
    {"_idle_add", (PyCFunction)(void (*)(void))bro_loop_idle_add, METH_FASTCALL, NULL},
    {"_idle_discard", (PyCFunction)bro_loop_idle_discard, METH_O, NULL},
    {"_set_hooks", (PyCFunction)(void (*)(void))bro_loop_set_hooks, METH_FASTCALL, NULL},
    {"_statistics", (PyCFunction)bro_loop_statistics, METH_NOARGS, NULL},
    {"_all_tasks", (PyCFunction)bro_loop_all_tasks, METH_NOARGS, NULL},
    {"close", (PyCFunction)loop_close, METH_NOARGS,
     "Release the loop's resources; unfinished tasks are closed."},
    {"call_soon_threadsafe", (PyCFunction)(void (*)(void))loop_call_soon_threadsafe, METH_FASTCALL,
     "call_soon_threadsafe(fn, *args)\n--\n\nFrom any thread: run fn(*args) in the loop's "
     "thread soon."},
    {"reschedule", (PyCFunction)(void (*)(void))loop_reschedule, METH_VARARGS | METH_KEYWORDS,
     "reschedule(task, value=None, *, exception=None)\n--\n\n"
     "Wake a task suspended in broomio.lowlevel.suspend()."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef loop_getset[] = {
    {"running", (getter)loop_get_running, NULL, "True while run() is running.", NULL},
    {"closed", (getter)loop_get_closed, NULL, "True once close() was called.", NULL},
    {"debug", (getter)loop_get_debug, (setter)loop_set_debug, "Debug mode.", NULL},
    {"slow_callback_duration", (getter)loop_get_slow, (setter)loop_set_slow,
     "Debug mode warns about task steps longer than this (seconds).", NULL},
    {"_live_tasks", (getter)loop_get_live, NULL, NULL, NULL},
    {"clock", (getter)bro_loop_get_clock, NULL,
     "The loop's clock object, or None for the default (CLOCK_MONOTONIC) clock.", NULL},
    {"_autojump_threshold", (getter)bro_loop_get_autojump, (setter)bro_loop_set_autojump, NULL,
     NULL},
    {"_root_nursery", (getter)loop_get_root, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef loop_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(bro_loop, weakreflist), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot loop_slots[] = {
    {Py_tp_doc, "The C core of broomio.Loop."},
    {Py_tp_new, loop_new},
    {Py_tp_dealloc, loop_dealloc},
    {Py_tp_traverse, loop_traverse},
    {Py_tp_clear, loop_clear},
    {Py_tp_methods, loop_methods},
    {Py_tp_getset, loop_getset},
    {Py_tp_members, loop_members},
    {0, NULL},
};

static PyType_Spec loop_spec = {
    .name = "broomio._engine.LoopCore",
    .basicsize = sizeof(bro_loop),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE,
    .slots = loop_slots,
};

int bro_loop_init_types(PyObject *module, bro_state *st)
{
    return bro_module_add_type(module, &loop_spec, NULL, &st->loop_type);
}
