/*
 * task.h -- the Task object and the wait protocol between tasks and awaitables.
 *
 * A task owns its coroutine, its contextvars.Context, its outcome, and at most one wait.
 * Who holds a task: its nursery (a strong reference from the moment it is spawned until it
 * finishes), the ready ring while it is runnable, the timer heap while it sleeps, and any
 * user handle.  Parking lots and the fd table hold borrowed pointers; the nursery's
 * reference keeps a parked task alive.
 *
 * The wait protocol: an engine awaitable that cannot complete registers exactly one wait on
 * the current task (bro_task_park_*), then yields the module's `parked` sentinel.  Whoever
 * completes the wait calls bro_task_wake() with the value or exception; the task goes to the
 * ready ring and is resumed with send(None); the awaitable, resumed in turn, reads the
 * outcome from task->wake (an exception if wake_failed).  Resuming always with None keeps one path
 * for every CPython: 3.11 calls am_send, 3.12+ call tp_iternext for a None send.
 *
 * Cancellation: task->cancel_pending is the level-triggered "every checkpoint must raise
 * Cancelled" flag, kept equal to cancel_requested || scope->effective by scope.c.  When it
 * becomes true while the task waits abortably, bro_task_deliver_cancel() aborts the wait and
 * wakes the task with a Cancelled exception.
 */
#ifndef BROOMIO_TASK_H
#define BROOMIO_TASK_H

#include "state.h"
#include "sync.h"

enum { BRO_TASK_READY = 1, BRO_TASK_RUNNING, BRO_TASK_WAITING, BRO_TASK_DONE };

enum {
    BRO_WAIT_NONE = 0,
    BRO_WAIT_READY,    /* rescheduled by a checkpoint: sits in the ready ring */
    BRO_WAIT_TIMER,    /* in the timer heap */
    BRO_WAIT_LOT,      /* parked in a bro_lot */
    BRO_WAIT_FD,       /* in the fd table */
    BRO_WAIT_CHILDREN, /* a nursery's parent waiting for its children (not abortable) */
    BRO_WAIT_EXTERNAL, /* woken by Python code via Loop.reschedule() */
    BRO_WAIT_FOREVER,  /* sleep_forever(): only cancellation ends it */
};

struct bro_task {
    PyObject_HEAD Py_ssize_t heap_index; /* bro_timed header */
    bro_loop *loop;                      /* strong */
    PyObject *coro;
    PyObject *context;
    PyObject *name;    /* NULL: computed from the coroutine on demand */
    PyObject *outcome; /* once done: the result, or the exception if `failed` */
    /* While waiting in suspend(): the abort function.  Once woken: the value to resume
     * with, or the exception to raise if `wake_failed`.  (One slot: the two never overlap,
     * and every task saved is 8 bytes times the number of sleeping tasks.) */
    PyObject *wake;

    bro_scope *scope; /* strong: innermost cancel scope */
    bro_task *scope_prev, *scope_next;

    bro_nursery *nursery; /* strong; the nursery's child list holds a strong ref back */
    bro_task *sib_prev, *sib_next;

    bro_task *all_prev, *all_next; /* the loop's list of live tasks (borrowed) */

    bro_lot *lot; /* the lot this task is parked in (borrowed) */
    bro_task *lot_prev, *lot_next;
    bro_lot *joiners; /* tasks waiting in join(); allocated by the first join */

    int fd;
    uint8_t state;
    uint8_t wait;
    uint8_t wait_dir;
    uint8_t gc_hidden; /* coro (1) / context (2) untracked while the task lives */
    /* One-bit flags, packed: every byte here is paid by every sleeping task. */
    unsigned failed : 1;
    unsigned wake_failed : 1;
    unsigned abortable : 1;
    unsigned cancel_requested : 1;
    unsigned cancel_pending : 1;
    unsigned started : 1;
    unsigned throw_pending : 1; /* resume with coro.throw(wake): a foreign yield */
    unsigned in_pending : 1;    /* its coroutine is in loop->pending_coros */
    unsigned in_ring : 1;       /* has an entry in the ready ring */
    unsigned close_on_exit : 1; /* has an entry in loop->exit_closers */
    PyObject *weakreflist;
};

#define BRO_TASK_CHECK(st, o) Py_IS_TYPE((o), (st)->task_type)
/* The exception a finished task ended with, or NULL. */
#define BRO_TASK_EXC(t) ((t)->failed ? (t)->outcome : NULL)

/* Creates a task for coro (a coroutine; reference stolen) in nursery; schedules it now, or
 * after delay seconds when delay > 0. */
bro_task *bro_task_spawn(bro_loop *loop, bro_nursery *nursery, PyObject *coro, PyObject *name,
                         double delay, int user_coro);
/* Turns fn_or_coro + args into a fresh coroutine, with clear errors. New reference. */
PyObject *bro_make_coro(bro_loop *loop, PyObject *fn_or_coro, PyObject *const *args,
                        Py_ssize_t nargs, int *user_coro);
/* Parses (fn_or_coro, *args, name=None) and spawns; shared by Loop and Nursery. */
PyObject *bro_spawn_from_args(bro_loop *loop, bro_nursery *nursery, double delay,
                              PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames);
/* Parses (delay, fn_or_coro, *args, name=None) and spawns after delay seconds. */
PyObject *bro_spawn_later_from_args(bro_loop *loop, bro_nursery *nursery, PyObject *const *args,
                                    Py_ssize_t nargs, PyObject *kwnames);
/* Fetches the raised exception as a normalized instance with its traceback. */
PyObject *bro_fetch_exception(void);

int bro_task_step(bro_task *t);
void bro_task_wake(bro_task *t, PyObject *value, PyObject *exc);
/* Removes the task's wait registration, whatever it is.  For external waits it calls the
 * abort function; returns 1 if the wait is gone, 0 if it must be left to complete, -1 on
 * error. */
int bro_task_abort_wait(bro_task *t);
int bro_task_deliver_cancel(bro_task *t);
void bro_task_update_cancel(bro_task *t, PyObject *deliver);
/* Closes an unfinished task's coroutine when its loop is closed. */
void bro_task_abandon(bro_task *t);
void bro_task_park(bro_task *t, int wait, int abortable);

int bro_task_finish(bro_task *t, PyObject *result, PyObject *exc);
/* Unlinks t from its lot, fd slot and the timer heap, whatever its state. */
void bro_task_drop_registration(bro_task *t);
/* A wait registered earlier in the current step whose `parked` sentinel never reached the
 * loop (an awaitable driven by hand, an async generator closed by its finalizer...) is void:
 * drop it, so that the task is registered in at most one place. */
void bro_task_void_stale_wait(bro_task *t);
/* Sets the error that result()/join() raise for a finished task; returns -1. */
int bro_task_raise_outcome(bro_task *t);

/* Engine awaitables (op.c); each returns a new reference. */
PyObject *bro_op_join(bro_task *target);
PyObject *bro_op_children(bro_nursery *n);
PyObject *bro_op_park(bro_state *st, PyObject *owner, bro_lot *lot);

#endif
