/*
 * fdtable.c -- the per-fd slots (readiness bits and waiters), grown on demand.
 *
 * The table is never sized to RLIMIT_NOFILE up front: it doubles to cover the largest fd
 * seen so far, so a process with ten sockets pays for ten-ish slots.
 */
#include <fcntl.h>
#include <limits.h>
#include <string.h>

#include "loop.h"
#include "poll.h"
#include "task.h"

bro_fd_slot *bro_fd_slot_grow(bro_fdtable *t, int fd)
{
    if (fd < 0) {
        PyErr_SetString(PyExc_ValueError, "file descriptor cannot be a negative integer");
        return NULL;
    }
    if (fd >= t->cap) {
        if (fcntl(fd, F_GETFD) < 0) { /* never size the table for an fd that is not open */
            PyErr_SetFromErrno(PyExc_OSError);
            return NULL;
        }
        long long cap = t->cap ? t->cap : 64;
        while (cap <= fd)
            cap *= 2;
        if (cap > INT_MAX)
            cap = (long long)fd + 1;
        bro_fd_slot *slots = PyMem_Realloc(t->slots, (size_t)cap * sizeof(bro_fd_slot));
        if (slots == NULL) {
            PyErr_NoMemory();
            return NULL;
        }
        memset(slots + t->cap, 0, (size_t)(cap - t->cap) * sizeof(bro_fd_slot));
        t->slots = slots;
        t->cap = (int)cap;
    }
    return &t->slots[fd];
}

void bro_fdtable_free(bro_fdtable *t)
{
    PyMem_Free(t->slots);
    t->slots = NULL;
    t->cap = 0;
}

/* notify_closing(fd): wake the fd's waiters with ClosedResourceError and forget the fd, so
 * that the next file opened with the same number starts from a clean slot.  Call it before
 * closing an fd that tasks may be waiting on. */

int bro_fd_forget(bro_loop *loop, int fd)
{
    if (fd < 0 || fd >= loop->fds.cap)
        return 0;
    bro_fd_slot *slot = &loop->fds.slots[fd];
    bro_task *waiters[2] = {slot->reader, slot->writer};
    slot->reader = slot->writer = NULL;
    int r = 0;
    for (int i = 0; i < 2; i++) {
        bro_task *t = waiters[i];
        if (t == NULL)
            continue;
        t->fd = -1;
        PyObject *exc = PyObject_CallFunction(loop->st->ClosedResourceError, "s",
                                              "the file descriptor was closed while a task "
                                              "was waiting on it");
        if (exc == NULL) {
            r = -1;
            continue;
        }
        bro_task_wake(t, NULL, exc);
        Py_DECREF(exc);
    }
    if (slot->registered && loop->poller != NULL) {
        /* EBADF/ENOENT just mean it is already gone; nothing else can fail here. */
        (void)bro_poller_remove(loop->poller, fd);
    }
    slot->registered = 0;
    slot->ready = 0;
    return r;
}

PyObject *bro_mod_notify_closing(PyObject *Py_UNUSED(module), PyObject *arg)
{
    bro_loop *loop = bro_running_loop;
    if (loop == NULL) {
        PyErr_SetString(PyExc_RuntimeError,
                        "notify_closing() must be called from a task run by a broomio loop");
        return NULL;
    }
    int fd = PyObject_AsFileDescriptor(arg);
    if (fd < 0)
        return NULL;
    if (bro_fd_forget(loop, fd) < 0)
        return NULL;
    Py_RETURN_NONE;
}
