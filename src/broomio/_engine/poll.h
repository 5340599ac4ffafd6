/*
 * poll.h -- the poller backend contract, and the engine's fd table.
 *
 * A backend is five calls, like redis' aeApi*: init, add an fd, remove an fd, wait with a
 * timeout, and wake a waiting poller from another thread.  epoll is the first backend
 * (poll_epoll.c); io_uring can follow behind the same calls.
 *
 * The fd table (fdtable.c) is backend-independent.  It is an array indexed by fd, grown on
 * demand, holding per fd: the readiness bits reported by the poller and not yet consumed,
 * and at most one waiting reader and one waiting writer (borrowed pointers: a waiting task
 * is kept alive by its nursery).  Each fd is registered once, edge-triggered, the first time
 * it is waited on, and unregistered by bro_fd_forget() when it is closed.  Readiness bits are
 * cleared only by an operation that saw EAGAIN (edge-triggered correctness rule).
 */
#ifndef BROOMIO_POLL_H
#define BROOMIO_POLL_H

#include "state.h"

#define BRO_READABLE 1u
#define BRO_WRITABLE 2u
/* Sticky in a slot's readiness bits: the peer hung up or the socket has an error (epoll's
 * RDHUP/HUP/ERR).  No further edge will come for it, so a short read no longer proves that
 * the receive queue is drained (sock.c). */
#define BRO_HANGUP 4u

typedef struct bro_poller bro_poller;

typedef struct {
    int fd;
    unsigned bits; /* BRO_READABLE | BRO_WRITABLE (errors and hang-ups count as both), plus
                      BRO_HANGUP for a hang-up or an error */
} bro_poll_event;

/* All return -1 with errno set on failure (no Python exception). */
bro_poller *bro_poller_new(void);
void bro_poller_free(bro_poller *p);
int bro_poller_add(bro_poller *p, int fd);
/* Adds fd, or re-arms it if already registered: epoll then reports its current readiness as
 * a fresh edge. */
int bro_poller_arm(bro_poller *p, int fd, int registered);
int bro_poller_remove(bro_poller *p, int fd);
/* Waits up to timeout_ms (-1: forever).  Fills out[] with at most max events and sets
 * *woken if bro_poller_wake() was called.  Must be called without the GIL. */
int bro_poller_wait(bro_poller *p, int timeout_ms, bro_poll_event *out, int max, int *woken);
/* Async-signal- and thread-safe. */
void bro_poller_wake(bro_poller *p);

typedef struct {
    bro_task *reader;
    bro_task *writer;
    uint8_t registered;
    uint8_t ready;
} bro_fd_slot;

typedef struct {
    bro_fd_slot *slots;
    int cap;
} bro_fdtable;

/* Grows the table to cover fd; NULL + ValueError/OSError/MemoryError. */
bro_fd_slot *bro_fd_slot_grow(bro_fdtable *t, int fd);

/* fd's slot.  Every socket operation asks for it once or twice, so the common case (the
 * table already covers fd) is inline. */
static inline bro_fd_slot *bro_fd_slot_get(bro_fdtable *t, int fd)
{
    if (fd >= 0 && fd < t->cap)
        return &t->slots[fd];
    return bro_fd_slot_grow(t, fd);
}
void bro_fdtable_free(bro_fdtable *t);

#endif
