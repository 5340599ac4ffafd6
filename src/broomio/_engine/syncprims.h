/*
 * syncprims.h -- the contract between the engine awaitable (op.c) and the synchronization
 * primitives (syncprims.c: Event, Lock, Semaphore, CapacityLimiter, Queue).
 *
 * op.c owns the awaitable protocol (am_send, budget yields, resuming, send/throw/close);
 * syncprims.c decides, for one operation on one primitive, whether it completes now, parks
 * the task, or must first yield because the step's budget is spent.  op.c checks
 * cancellation before it asks, so an operation never starts in a cancelled task.
 */
#ifndef BROOMIO_SYNCPRIMS_H
#define BROOMIO_SYNCPRIMS_H

#include "state.h"

/* The operations an OP_SYNC awaitable can perform (op->sub). */
enum {
    BRO_SYNC_EVENT_WAIT,
    BRO_SYNC_LOCK_ACQUIRE,
    BRO_SYNC_SEM_ACQUIRE,
    BRO_SYNC_LIMITER_ACQUIRE, /* arg: the borrower */
    BRO_SYNC_QUEUE_GET,
    BRO_SYNC_QUEUE_NEXT, /* get() for `async for`: closed and drained ends the loop */
    BRO_SYNC_QUEUE_PUT,  /* arg: the item */
};

/* What bro_sync_fresh() did. */
enum {
    BRO_SYNC_ERROR = -1, /* an exception is set */
    BRO_SYNC_DONE,       /* completed without waiting; *res holds the result */
    BRO_SYNC_PARKED,     /* t was appended to one of the primitive's lots */
    BRO_SYNC_BUDGET,     /* it could complete, but the step's budget is spent: yield first */
};

/* Tries operation `sub` on primitive `prim` (the awaitable's target) for the current task t.
 * On BRO_SYNC_PARKED the caller must park t in BRO_WAIT_LOT, abortable. */
int bro_sync_fresh(int sub, PyObject *prim, PyObject *arg, bro_task *t, PyObject **res);
/* A name for error messages ("Lock.acquire()"). */
const char *bro_sync_name(int sub);

/* Awaitables (op.c); each returns a new reference. */
PyObject *bro_op_sync(bro_state *st, int sub, PyObject *prim, PyObject *arg);
/* An awaitable that returns None at once: no checkpoint, no cancellation check.  It is what
 * __aexit__ returns after releasing synchronously. */
PyObject *bro_op_return(bro_state *st);

#endif
