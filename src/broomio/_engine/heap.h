/*
 * heap.h -- the timer heap: an indexed binary min-heap keyed by (deadline, sequence).
 *
 * The sequence number makes equal deadlines fire in FIFO order.  Every object that can sit
 * in the heap starts with the bro_timed header, whose heap_index the heap keeps up to date,
 * so removing an entry (a cancelled sleep, an exited cancel scope) is O(log n): most
 * timeouts are cancelled before they fire.  The heap owns a strong reference to every
 * object in it.
 */
#ifndef BROOMIO_HEAP_H
#define BROOMIO_HEAP_H

#include "state.h"

typedef struct {
    PyObject_HEAD Py_ssize_t heap_index; /* -1 when not in the heap */
} bro_timed;

typedef struct {
    double when;
    uint64_t seq;
    PyObject *obj; /* strong; starts with bro_timed */
} bro_timer;

typedef struct {
    bro_timer *items;
    Py_ssize_t len;
    Py_ssize_t cap;
    uint64_t next_seq;
} bro_timer_heap;

int bro_heap_push(bro_timer_heap *h, double when, PyObject *obj);
/* Removes obj if it is in the heap; returns the heap's reference (or NULL). */
PyObject *bro_heap_remove(bro_timer_heap *h, PyObject *obj);
/* Pops the earliest entry if its deadline is <= now; returns the heap's reference. */
PyObject *bro_heap_pop_due(bro_timer_heap *h, double now);
/* The earliest deadline; only meaningful when h->len > 0 (deadlines may be -inf). */
static inline double bro_heap_next_deadline(const bro_timer_heap *h)
{
    return h->items[0].when;
}
void bro_heap_clear(bro_timer_heap *h);
int bro_heap_traverse(bro_timer_heap *h, visitproc visit, void *arg);

#endif
