/*
 * aio.h -- shared between the files of broomio.asyncio's C core: the AioCore object
 * (aio_core.c) and the socket transport's hot paths (aio_transport.c).
 */
#ifndef BROOMIO_AIO_H
#define BROOMIO_AIO_H

#include "state.h"

#define AIO_FREE_HANDLES 64

typedef struct {
    double when;
    uint64_t seq;
    PyObject *handle; /* strong TimerHandle */
} aio_timer;

typedef struct {
    PyObject *reader; /* strong Handle or NULL */
    PyObject *writer;
    uint32_t events; /* what epoll watches for this fd (0: not registered) */
} aio_fd;

typedef struct {
    PyObject_HEAD bro_state *st;
    PyObject *module; /* strong: keeps st alive */

    PyObject **ring;
    Py_ssize_t ring_cap, ring_head, ring_len;

    aio_timer *heap;
    Py_ssize_t heap_len, heap_cap;
    uint64_t seq;
    Py_ssize_t timer_cancelled_count;
    double clock_resolution;

    int epfd;
    aio_fd *fds;
    int fds_cap;

    int stopping, closed, debug;
    /* Plain Handles whose run finished while nobody else held them: their slots are
     * cleared and they are reused by the next call_soon (see recycle_handle). */
    PyObject *free_handles[AIO_FREE_HANDLES];
    int nfree;
    char *scratch; /* the transports' recv buffer, allocated on first use */
    size_t scratch_size;
    PyObject *future_kwargs; /* {"loop": self} for asyncio.Future's __init__, or NULL */
    PyObject *context_kw;    /* a non-interned "context" keyword seen before, or NULL */
} aio_core;

/* asyncio.Future(loop=loop) for an AioCore loop. */
PyObject *bro_aio_new_future(PyObject *loop);

/* The loop's scratch receive buffer (at least size bytes), or NULL with an exception if loop
 * is not an AioCore. */
char *bro_aio_scratch(bro_state *st, PyObject *loop, size_t size);

/* The loop's fd table, for aio_sock.c: register callback() for a direction of fd (returns
 * the handle), and unregister it if that direction still holds handle. */
PyObject *bro_aio_add_io(PyObject *loop, int fd, int writer, PyObject *callback);
int bro_aio_remove_if(PyObject *loop, int fd, int writer, PyObject *handle);

/* aio_sock.c */
PyObject *bro_aio_sock_wait(PyObject *loop, bro_state *st, PyObject *const *args,
                            Py_ssize_t nargs);
PyObject *bro_aio_sock_call(PyObject *loop, bro_state *st, PyObject *const *args,
                            Py_ssize_t nargs);
int bro_aio_sock_init_types(PyObject *module, bro_state *st);

#endif
