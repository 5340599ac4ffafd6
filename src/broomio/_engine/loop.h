/*
 * loop.h -- the Loop object: ready ring, timer heap, poller, fd table, inbox.
 */
#ifndef BROOMIO_LOOP_H
#define BROOMIO_LOOP_H

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>

#include "heap.h"
#include "poll.h"
#include "state.h"

/* The Instrument hooks, in the order of broomio._instruments.HOOKS. */
enum {
    BRO_HOOK_BEFORE_RUN,
    BRO_HOOK_AFTER_RUN,
    BRO_HOOK_TASK_SPAWNED,
    BRO_HOOK_TASK_SCHEDULED,
    BRO_HOOK_BEFORE_TASK_STEP,
    BRO_HOOK_AFTER_TASK_STEP,
    BRO_HOOK_TASK_EXITED,
    BRO_HOOK_BEFORE_IO_WAIT,
    BRO_HOOK_AFTER_IO_WAIT,
    BRO_NHOOKS
};

typedef struct {
    double cushion;
    uint64_t seq;
    PyObject *task; /* strong */
} bro_idle_waiter;

struct bro_loop {
    PyObject_HEAD bro_state *st;
    PyObject *module; /* strong: keeps st alive */

    /* The ready ring: a circular array of strong references to runnable tasks. */
    PyObject **ring;
    Py_ssize_t ring_cap, ring_head, ring_len;

    bro_timer_heap heap;
    bro_poller *poller;
    bro_fdtable fds;

    /* Cross-thread inbox: (fn, args) tuples pushed by any thread, run by the loop. */
    pthread_mutex_t inbox_lock;
    PyObject *inbox;          /* list, guarded by inbox_lock */
    atomic_int inbox_pending; /* a wake-up is already on its way */

    /* Task._close_on_exit(): {task: SocketCore} to close when the task finishes (its
     * close_on_exit bit says it has an entry), created by the first use. */
    PyObject *exit_closers;

    int signal_rfd, signal_wfd; /* signal.set_wakeup_fd() pipe while running */
    PyObject *old_wakeup_fd;

    double now;
    /* A custom clock (clock.c): NULL means CLOCK_MONOTONIC, read inline; otherwise the
     * clock object and its bound current_time / deadline_to_sleep_time methods. */
    PyObject *clock, *clock_now, *clock_sleep_time;
    /* wait_all_tasks_blocked() waiters (sorted by cushion, then arrival) and the clock's
     * autojump threshold (INFINITY: off); see clock.c. */
    bro_idle_waiter *idle;
    Py_ssize_t idle_len, idle_cap;
    uint64_t idle_seq;
    double autojump_threshold;
    double slow_callback_duration;
    Py_ssize_t live_tasks;
    bro_task *all_tasks; /* borrowed list of unfinished tasks */
    bro_task *current;   /* borrowed: the task being stepped */
    int budget;
    bro_nursery *root;       /* strong */
    PyObject *pending_coros; /* set: coroutine objects spawned but not yet started */
    PyObject *interrupt;     /* a KeyboardInterrupt waiting for cleanup to finish */
    char *scratch;           /* recv buffer: reads land here, then one exact-size copy */
    uint8_t running, closed, debug;
    /* Instruments and debug mode (instrument.c).  hooks[i] is a tuple of the callables to
     * run for hook i, or NULL when nobody listens: each call site pays one pointer test.
     * step_hooked folds the two per-step hooks into the one flag the run loop tests.
     * debug_obj is the Python debug monitor (broomio._debug) while debug mode is on. */
    uint8_t step_hooked;
    uint64_t io_waits; /* polls for I/O so far (statistics; one increment per poll) */
    PyObject *hooks[BRO_NHOOKS];
    PyObject *debug_obj;
    PyObject *weakreflist;
};

int bro_ready_push(bro_loop *loop, PyObject *obj);

/* A fast-path completion (an await that finishes without waiting) spends one unit of the
 * step's budget; once it is spent the awaitable yields first, so a task whose operations
 * always succeed cannot starve the others.  True when the caller must yield. */
static inline int bro_budget_spend(bro_loop *loop)
{
    return --loop->budget < 0;
}
int bro_loop_check_usable(bro_loop *loop);
/* Wakes fd's waiters with ClosedResourceError, drops its epoll registration and clears its
 * slot, so the next file with the same number starts clean (fdtable.c). */
int bro_fd_forget(bro_loop *loop, int fd);
void bro_loop_unlink_task(bro_loop *loop, bro_task *t);

/* ---- clocks and the idle hook (clock.c) ---- */

/* The loop's current time.  With the default clock this is an inline CLOCK_MONOTONIC read
 * (one pointer test on the way); a custom clock's current_time() may raise: -1 then. */
int bro_clock_now(bro_loop *loop, double *now);
static inline int bro_loop_now(bro_loop *loop, double *now)
{
    if (loop->clock == NULL) {
        *now = bro_monotonic();
        return 0;
    }
    return bro_clock_now(loop, now);
}
/* Custom clock only: the real seconds to sleep until deadline (clock time), >= 0. */
int bro_clock_sleep_time(bro_loop *loop, double deadline, double *out);
/* Custom clock only: clock.start_clock(), called each time the loop starts running. */
int bro_clock_start(bro_loop *loop);

/* True when the loop must look for idleness before it blocks: somebody waits in
 * wait_all_tasks_blocked() or the clock autojumps.  Nothing else costs anything. */
static inline int bro_idle_armed(const bro_loop *loop)
{
    return loop->idle_len > 0 || loop->autojump_threshold < INFINITY;
}
/* Before blocking with nothing runnable: shortens *timeout (seconds, INFINITY for none) to
 * the first waiter's cushion or to the autojump threshold.  Returns what the wait primes:
 * 0 nothing, BRO_IDLE_WAITERS or BRO_IDLE_AUTOJUMP. */
#define BRO_IDLE_WAITERS 1
#define BRO_IDLE_AUTOJUMP 2
int bro_idle_prime(bro_loop *loop, double *timeout);
/* Called when the primed wait ran out and nothing happened since: wakes the waiters with
 * the smallest cushion, or jumps the clock to the next deadline. */
int bro_idle_fire(bro_loop *loop, int primed);
void bro_idle_clear(bro_loop *loop);
int bro_clock_traverse(bro_loop *loop, visitproc visit, void *arg);

/* Loop methods and attributes implemented in clock.c. */
PyObject *bro_loop_set_clock(bro_loop *loop, PyObject *clock);
PyObject *bro_loop_get_clock(bro_loop *loop, void *closure);
PyObject *bro_loop_get_autojump(bro_loop *loop, void *closure);
int bro_loop_set_autojump(bro_loop *loop, PyObject *v, void *closure);
PyObject *bro_loop_idle_add(bro_loop *loop, PyObject *const *args, Py_ssize_t nargs);
PyObject *bro_loop_idle_discard(bro_loop *loop, PyObject *task);

/* ---- instruments, debug mode, introspection (instrument.c) ---- */

/* Calls every callable of hook `which` with arg (NULL: no argument).  Never fails: the
 * current exception, if any, is kept; an instrument that raises is handed to
 * Loop._instrument_failed(), which logs the error and removes it. */
void bro_hook_call(bro_loop *loop, int which, PyObject *arg);
static inline void bro_hook(bro_loop *loop, int which, PyObject *arg)
{
    if (loop->hooks[which] != NULL)
        bro_hook_call(loop, which, arg);
}
/* before_io_wait / after_io_wait with the poll's timeout (-1 ms: forever). */
void bro_hook_io_call(bro_loop *loop, int which, int timeout_ms);
static inline void bro_hook_io(bro_loop *loop, int which, int timeout_ms)
{
    if (loop->hooks[which] != NULL)
        bro_hook_io_call(loop, which, timeout_ms);
}
/* A step with before_task_step / after_task_step around it. */
int bro_task_step_hooked(bro_loop *loop, bro_task *t);
/* Debug mode: where the awaitable being created was created, as a (filename, lineno,
 * function) tuple for the first frame outside broomio; None if there is none.  NULL on
 * error. */
PyObject *bro_debug_origin(void);
/* Debug mode: warns (RuntimeWarning) that an awaitable created at origin was never awaited.
 * Safe in a deallocator: keeps the current exception, reports failures as unraisable. */
void bro_debug_never_awaited(PyObject *self, const char *what, PyObject *origin);
int bro_instrument_traverse(bro_loop *loop, visitproc visit, void *arg);
/* Sets loop->debug; awaitables made from then on remember where they were made. */
void bro_loop_set_debug_flag(bro_loop *loop, int on);
void bro_instrument_clear(bro_loop *loop);

/* Loop methods implemented in instrument.c. */
PyObject *bro_loop_set_hooks(bro_loop *loop, PyObject *const *args, Py_ssize_t nargs);
PyObject *bro_loop_statistics(bro_loop *loop, PyObject *ignored);
PyObject *bro_loop_all_tasks(bro_loop *loop, PyObject *ignored);

#endif
