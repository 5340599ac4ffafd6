/*
 * loop.h -- the Loop object: ready ring, timer heap, poller, fd table, inbox.
 */
#ifndef BROOMIO_LOOP_H
#define BROOMIO_LOOP_H

#include <pthread.h>
#include <stdatomic.h>

#include "heap.h"
#include "poll.h"
#include "state.h"

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

    int signal_rfd, signal_wfd; /* signal.set_wakeup_fd() pipe while running */
    PyObject *old_wakeup_fd;

    double now;
    double slow_callback_duration;
    Py_ssize_t live_tasks;
    bro_task *all_tasks; /* borrowed list of unfinished tasks */
    bro_task *current;   /* borrowed: the task being stepped */
    int budget;
    bro_nursery *root;         /* strong */
    PyObject *pending_coros;   /* set: coroutine objects spawned but not yet started */
    PyObject *interrupt;       /* a KeyboardInterrupt waiting for cleanup to finish */
    PyObject *op_cache[4];     /* reusable awaitables; see op.c */
    PyObject *sockop_cache[4]; /* reusable socket awaitables; see sock.c */
    char *scratch;             /* recv buffer: reads land here, then one exact-size copy */
    uint8_t running, closed, debug;
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

#endif
