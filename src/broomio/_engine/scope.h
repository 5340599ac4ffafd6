/*
 * scope.h -- cancel scopes and nurseries.
 *
 * Cancel scopes form a tree: a scope's parent is the innermost scope of the task that entered
 * it, and a child task's first scope is its nursery's scope.  Each scope lists (borrowed) its
 * child scopes and the tasks whose innermost scope it is; children hold strong references to
 * their parent.  `effective` = cancel_called || (!shield && parent->effective) is kept up to
 * date eagerly, so a task's "am I cancelled?" check is one load.
 */
#ifndef BROOMIO_SCOPE_H
#define BROOMIO_SCOPE_H

#include "state.h"

struct bro_scope {
    PyObject_HEAD Py_ssize_t heap_index; /* bro_timed header: deadline timer */
    bro_loop *loop;                      /* strong, once entered */
    bro_scope *parent;                   /* strong */
    bro_scope *first_child, *prev_sib, *next_sib;
    bro_task *first_task;
    bro_task *owner; /* borrowed: the task that entered it */
    double deadline;
    uint8_t shield;
    uint8_t cancel_called;
    uint8_t effective;
    uint8_t caught;
    uint8_t entered;
    uint8_t exited;
};

struct bro_nursery {
    PyObject_HEAD bro_loop *loop;       /* strong */
    bro_scope *scope;                   /* strong */
    bro_task *parent;                   /* strong; NULL for a loop's root nursery */
    bro_task *first_child, *last_child; /* the list owns a reference to each */
    Py_ssize_t nchildren;
    PyObject *errors; /* list, created on the first error */
    uint8_t entered;
    uint8_t closed;
    uint8_t parent_waiting;
};

bro_scope *bro_scope_new_root(bro_loop *loop);
void bro_scope_attach_task(bro_scope *s, bro_task *t);
void bro_scope_detach_task(bro_task *t);
int bro_scope_cancel(bro_scope *s);
int bro_scope_fire(bro_scope *s); /* its deadline passed */
/* task.cancel(): cancel t's whole body, nurseries included, shields respected. */
int bro_task_cancel(bro_task *t);

bro_nursery *bro_nursery_new_root(bro_loop *loop);
void bro_nursery_link_child(bro_nursery *n, bro_task *t);
/* A child finished: record its error, unlink it, wake a waiting parent. */
int bro_nursery_child_done(bro_nursery *n, bro_task *t);
PyObject *bro_nursery_take_errors(bro_nursery *n);

int bro_scope_enter(bro_scope *s, bro_task *t);
int bro_scope_leave(bro_scope *s, bro_task *t);
/* Unlinks t from n's children and drops the list's reference (the caller holds its own). */
void bro_nursery_unlink_child(bro_nursery *n, bro_task *t);

#endif
