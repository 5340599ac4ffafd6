/*
 * sync.h -- the parking lot: a FIFO queue of parked tasks with O(1) removal.
 *
 * A lot is embedded in whatever owns it (a ParkingLot object, a Task's joiners, later the
 * Event/Lock/Queue cores).  The links live in the task (lot_prev/lot_next), because a task
 * waits on at most one thing at a time; the lot holds borrowed pointers, since a parked task
 * is kept alive by its nursery.  A lot that dies with tasks still parked unlinks them first.
 */
#ifndef BROOMIO_SYNC_H
#define BROOMIO_SYNC_H

#include "state.h"

typedef struct {
    bro_task *head;
    bro_task *tail;
    Py_ssize_t len;
} bro_lot;

void bro_lot_append(bro_lot *lot, bro_task *t);
void bro_lot_unlink(bro_task *t);
/* Wakes up to n tasks (FIFO) with value (borrowed, may be NULL for None). */
Py_ssize_t bro_lot_unpark(bro_lot *lot, Py_ssize_t n, PyObject *value);
/* Detaches every task without waking it (the owner is being destroyed). */
void bro_lot_detach_all(bro_lot *lot);
/* The lot inside a lowlevel.ParkingLot object (the caller has checked its type). */
bro_lot *bro_lot_object_lot(PyObject *parking_lot);

#endif
