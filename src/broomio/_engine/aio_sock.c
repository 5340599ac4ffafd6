/*
 * aio_sock.c -- the waiting half of broomio.asyncio's sock_recv, sock_recv_into and
 * sock_sendall.
 *
 * asyncio's versions (and the Python wrappers in broomio/asyncio/_loop.py, which keep their
 * argument checks and their first, non-waiting attempt) wait by registering a reader or
 * writer callback plus a done-callback on the future that unregisters it; per wait that is
 * four Python frames and a functools.partial.  Here the callback is an AioSockWaiter, a
 * small C callable:
 *
 *   - run by the loop when the fd is ready, it retries the operation; on EAGAIN it keeps
 *     waiting, otherwise it completes the future (result or exception) and unregisters
 *     itself at once;
 *   - it is also added as the future's done-callback, so a cancelled future unregisters it
 *     (only if the fd's current callback is still this waiter's handle: the fd may have been
 *     handed to somebody else since).
 *
 * A ready callback that finds the future already done does nothing, as asyncio's does.
 */
#include <errno.h>
#include <sys/socket.h>

#include "aio.h"
#include "structmember.h"

enum { OP_RECV, OP_RECV_INTO, OP_SENDALL };

typedef struct {
    PyObject_HEAD PyObject *loop; /* strong: the AioCore */
    PyObject *fut;                /* strong */
    PyObject *handle;             /* strong: the reader/writer handle, NULL once removed */
    PyObject *data;               /* strong: recv_into's buffer or sendall's data */
    Py_buffer view;               /* of data, while held */
    Py_ssize_t n;                 /* recv's size; sendall's bytes already sent */
    int fd, op, has_view;
    vectorcallfunc vectorcall;
} sock_waiter;

static void waiter_release(sock_waiter *w)
{
    if (w->has_view) {
        PyBuffer_Release(&w->view);
        w->has_view = 0;
    }
    Py_CLEAR(w->data);
}

/* Unregisters the waiter's callback if the fd still carries it. */
static int waiter_unregister(sock_waiter *w)
{
    PyObject *h = w->handle;
    if (h == NULL)
        return 0;
    w->handle = NULL;
    int r = bro_aio_remove_if(w->loop, w->fd, w->op == OP_SENDALL, h);
    Py_DECREF(h);
    return r;
}

static PyObject *fut_done(sock_waiter *w)
{
    return PyObject_CallMethod(w->fut, "done", NULL);
}

static int complete(sock_waiter *w, const char *method, PyObject *value)
{
    int r = waiter_unregister(w);
    waiter_release(w);
    PyObject *res = PyObject_CallMethod(w->fut, method, "O", value);
    if (res == NULL)
        return -1;
    Py_DECREF(res);
    return r;
}

/* Completes the future with the current exception (SystemExit / KeyboardInterrupt leave). */
static int complete_error(sock_waiter *w)
{
    if (PyErr_ExceptionMatches(PyExc_SystemExit) || PyErr_ExceptionMatches(PyExc_KeyboardInterrupt))
        return -1;
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb != NULL && value != NULL)
        PyException_SetTraceback(value, tb);
    Py_XDECREF(type);
    Py_XDECREF(tb);
    if (value == NULL)
        return 0;
    int r = complete(w, "set_exception", value);
    Py_DECREF(value);
    return r;
}

static inline int would_block(int err)
{
    return err == EAGAIN || err == EWOULDBLOCK || err == EINTR;
}

/* The fd is ready: retry the operation.  0 done or still waiting, -1 error to propagate. */
static int waiter_ready(sock_waiter *w)
{
    PyObject *d = fut_done(w);
    if (d == NULL)
        return -1;
    int done = PyObject_IsTrue(d);
    Py_DECREF(d);
    if (done != 0)
        return done < 0 ? -1 : 0;
    switch (w->op) {
    case OP_RECV: {
        PyObject *buf = PyBytes_FromStringAndSize(NULL, w->n);
        if (buf == NULL)
            return complete_error(w);
        ssize_t got = recv(w->fd, PyBytes_AS_STRING(buf), (size_t)w->n, 0);
        if (got < 0) {
            int err = errno;
            Py_DECREF(buf);
            if (would_block(err))
                return 0;
            errno = err;
            PyErr_SetFromErrno(PyExc_OSError);
            return complete_error(w);
        }
        if (got != w->n && _PyBytes_Resize(&buf, got) < 0)
            return complete_error(w);
        int r = complete(w, "set_result", buf);
        Py_DECREF(buf);
        return r;
    }
    case OP_RECV_INTO: {
        ssize_t got = recv(w->fd, w->view.buf, (size_t)w->view.len, 0);
        if (got < 0) {
            if (would_block(errno))
                return 0;
            PyErr_SetFromErrno(PyExc_OSError);
            return complete_error(w);
        }
        PyObject *nb = PyLong_FromSsize_t(got);
        if (nb == NULL)
            return complete_error(w);
        int r = complete(w, "set_result", nb);
        Py_DECREF(nb);
        return r;
    }
    default: {
        while (w->n < w->view.len) {
            ssize_t sent = send(w->fd, (char *)w->view.buf + w->n, (size_t)(w->view.len - w->n),
                                MSG_NOSIGNAL);
            if (sent < 0) {
                if (would_block(errno))
                    return 0;
                PyErr_SetFromErrno(PyExc_OSError);
                return complete_error(w);
            }
            w->n += sent;
        }
        return complete(w, "set_result", Py_None);
    }
    }
}

/* Called with no argument by the loop (fd ready) or with the future as its done-callback. */
static PyObject *waiter_vectorcall(PyObject *self, PyObject *const *args, size_t nargsf,
                                   PyObject *kwnames)
{
    sock_waiter *w = (sock_waiter *)self;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (kwnames != NULL || nargs > 1) {
        PyErr_SetString(PyExc_TypeError, "AioSockWaiter takes at most one argument");
        return NULL;
    }
    Py_INCREF(self); /* unregistering may drop the loop's references to us */
    int r;
    if (nargs == 1) {
        (void)args;
        r = waiter_unregister(w); /* the future is done (cancelled, or completed by us) */
        waiter_release(w);
    } else {
        r = waiter_ready(w);
    }
    Py_DECREF(self);
    if (r < 0)
        return NULL;
    Py_RETURN_NONE;
}

static int waiter_traverse(sock_waiter *w, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(w));
    Py_VISIT(w->loop);
    Py_VISIT(w->fut);
    Py_VISIT(w->handle);
    Py_VISIT(w->data);
    return 0;
}

static int waiter_clear(sock_waiter *w)
{
    waiter_release(w);
    Py_CLEAR(w->loop);
    Py_CLEAR(w->fut);
    Py_CLEAR(w->handle);
    return 0;
}

static void waiter_dealloc(sock_waiter *w)
{
    PyTypeObject *tp = Py_TYPE(w);
    PyObject_GC_UnTrack(w);
    waiter_clear(w);
    tp->tp_free(w);
    Py_DECREF(tp);
}

static PyMemberDef waiter_members[] = {
    {"__vectorcalloffset__", T_PYSSIZET, offsetof(sock_waiter, vectorcall), READONLY, NULL},
    {NULL},
};

static PyType_Slot waiter_slots[] = {
    {Py_tp_doc, "The reader/writer callback of a waiting sock_recv / sock_recv_into / "
                "sock_sendall (broomio.asyncio)."},
    {Py_tp_call, PyVectorcall_Call},
    {Py_tp_traverse, waiter_traverse},
    {Py_tp_clear, waiter_clear},
    {Py_tp_dealloc, waiter_dealloc},
    {Py_tp_members, waiter_members},
    {0, NULL},
};

static PyType_Spec waiter_spec = {
    .name = "broomio._engine.AioSockWaiter",
    .basicsize = sizeof(sock_waiter),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL |
             Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = waiter_slots,
};

/* loop._sock_wait(fd, fut, op, n_or_data): registers the waiter (op 0: recv(n), 1:
 * recv_into(buffer), 2: sendall(data) with n = bytes already sent, passed as a tuple
 * (data, n)). */
PyObject *bro_aio_sock_wait(PyObject *loop, bro_state *st, PyObject *const *args,
                            Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "_sock_wait(fd, fut, op, arg) takes 4 arguments");
        return NULL;
    }
    int fd = PyObject_AsFileDescriptor(args[0]);
    if (fd < 0)
        return NULL;
    long op = PyLong_AsLong(args[2]);
    if (op == -1 && PyErr_Occurred())
        return NULL;
    if (op < OP_RECV || op > OP_SENDALL) {
        PyErr_SetString(PyExc_ValueError, "_sock_wait(): unknown operation");
        return NULL;
    }
    sock_waiter *w = PyObject_GC_New(sock_waiter, st->aio_sock_waiter_type);
    if (w == NULL)
        return NULL;
    w->loop = Py_NewRef(loop);
    w->fut = Py_NewRef(args[1]);
    w->handle = NULL;
    w->data = NULL;
    w->has_view = 0;
    w->n = 0;
    w->fd = fd;
    w->op = (int)op;
    w->vectorcall = waiter_vectorcall;
    PyObject_GC_Track(w);
    PyObject *result = NULL;
    if (op == OP_RECV) {
        w->n = PyLong_AsSsize_t(args[3]);
        if (w->n == -1 && PyErr_Occurred())
            goto done;
        if (w->n < 0) {
            PyErr_SetString(PyExc_ValueError, "negative buffersize in recv");
            goto done;
        }
    } else {
        PyObject *data = args[3];
        if (op == OP_SENDALL) {
            if (!PyTuple_Check(data) || PyTuple_GET_SIZE(data) != 2) {
                PyErr_SetString(PyExc_TypeError, "_sock_wait(): sendall needs (data, sent)");
                goto done;
            }
            w->n = PyLong_AsSsize_t(PyTuple_GET_ITEM(data, 1));
            if (w->n == -1 && PyErr_Occurred())
                goto done;
            data = PyTuple_GET_ITEM(data, 0);
        }
        if (PyObject_GetBuffer(data, &w->view, op == OP_RECV_INTO ? PyBUF_WRITABLE : PyBUF_SIMPLE) <
            0)
            goto done;
        w->has_view = 1;
        w->data = Py_NewRef(data);
    }
    w->handle = bro_aio_add_io(loop, fd, op == OP_SENDALL, (PyObject *)w);
    if (w->handle == NULL)
        goto done;
    result = PyObject_CallMethod(w->fut, "add_done_callback", "O", (PyObject *)w);
    if (result == NULL) {
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        (void)waiter_unregister(w);
        PyErr_Restore(type, value, tb);
    }
done:
    if (result == NULL)
        waiter_release(w);
    Py_DECREF(w);
    return result;
}

/* One non-blocking attempt.  Returns the operation's result, NULL with an exception, or
 * NULL without one when it would block (sendall: *sent is how far it got). */
static PyObject *try_now(int fd, int op, Py_ssize_t n, Py_buffer *view, Py_ssize_t *sent)
{
    /* Like socket.recv / recv_into, asking for nothing returns at once without a syscall
     * (recv(2) of 0 bytes would report EAGAIN on an empty socket). */
    if (op == OP_RECV && n == 0)
        return PyBytes_FromStringAndSize(NULL, 0);
    if (op == OP_RECV_INTO && view->len == 0)
        return PyLong_FromLong(0);
    if (op == OP_RECV) {
        PyObject *buf = PyBytes_FromStringAndSize(NULL, n);
        if (buf == NULL)
            return NULL;
        ssize_t got = recv(fd, PyBytes_AS_STRING(buf), (size_t)n, 0);
        if (got < 0) {
            int err = errno;
            Py_DECREF(buf);
            if (!would_block(err)) {
                errno = err;
                PyErr_SetFromErrno(PyExc_OSError);
            }
            return NULL;
        }
        if (got != n && _PyBytes_Resize(&buf, got) < 0)
            return NULL;
        return buf;
    }
    if (op == OP_RECV_INTO) {
        ssize_t got = recv(fd, view->buf, (size_t)view->len, 0);
        if (got < 0) {
            if (!would_block(errno))
                PyErr_SetFromErrno(PyExc_OSError);
            return NULL;
        }
        return PyLong_FromSsize_t(got);
    }
    while (*sent < view->len) {
        ssize_t r = send(fd, (char *)view->buf + *sent, (size_t)(view->len - *sent), MSG_NOSIGNAL);
        if (r < 0) {
            if (!would_block(errno))
                PyErr_SetFromErrno(PyExc_OSError);
            return NULL;
        }
        *sent += r;
    }
    Py_RETURN_NONE;
}

/* loop._sock_call(fd, op, arg): the operation at once if it does not block (its result, or
 * its OSError), else a Future that the waiter completes (after asyncio's check that no
 * transport owns the fd).  op 0: recv(arg bytes), 1: recv_into(arg), 2: sendall(arg). */
PyObject *bro_aio_sock_call(PyObject *loop, bro_state *st, PyObject *const *args,
                            Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "_sock_call(fd, op, arg) takes 3 arguments");
        return NULL;
    }
    int fd = PyObject_AsFileDescriptor(args[0]);
    if (fd < 0)
        return NULL;
    long op = PyLong_AsLong(args[1]);
    if (op == -1 && PyErr_Occurred())
        return NULL;
    if (op < OP_RECV || op > OP_SENDALL) {
        PyErr_SetString(PyExc_ValueError, "_sock_call(): unknown operation");
        return NULL;
    }
    Py_ssize_t n = 0, sent = 0;
    Py_buffer view;
    int has_view = 0;
    if (op == OP_RECV) {
        n = PyLong_AsSsize_t(args[2]);
        if (n == -1 && PyErr_Occurred())
            return NULL;
        if (n < 0) {
            PyErr_SetString(PyExc_ValueError, "negative buffersize in recv");
            return NULL;
        }
    } else {
        if (PyObject_GetBuffer(args[2], &view, op == OP_RECV_INTO ? PyBUF_WRITABLE : PyBUF_SIMPLE) <
            0)
            return NULL;
        has_view = 1;
    }
    PyObject *r = try_now(fd, (int)op, n, &view, &sent);
    if (has_view)
        PyBuffer_Release(&view);
    if (r != NULL || PyErr_Occurred())
        return r;
    /* It would block: wait, as asyncio does, unless a transport owns the fd. */
    PyObject *fdo = PyLong_FromLong(fd);
    if (fdo == NULL)
        return NULL;
    PyObject *chk = PyObject_CallMethod(loop, "_ensure_fd_no_transport", "O", fdo);
    if (chk == NULL) {
        Py_DECREF(fdo);
        return NULL;
    }
    Py_DECREF(chk);
    PyObject *fut = bro_aio_new_future(loop);
    if (fut == NULL) {
        Py_DECREF(fdo);
        return NULL;
    }
    PyObject *opo = PyLong_FromLong(op);
    PyObject *arg = NULL;
    if (opo != NULL)
        arg = op == OP_SENDALL ? Py_BuildValue("(On)", args[2], sent) : Py_NewRef(args[2]);
    PyObject *w = NULL;
    if (arg != NULL) {
        PyObject *wargs[4] = {fdo, fut, opo, arg};
        w = bro_aio_sock_wait(loop, st, wargs, 4);
    }
    Py_XDECREF(arg);
    Py_XDECREF(opo);
    Py_DECREF(fdo);
    if (w == NULL) {
        Py_DECREF(fut);
        return NULL;
    }
    Py_DECREF(w);
    return fut;
}

int bro_aio_sock_init_types(PyObject *module, bro_state *st)
{
    PyObject *t = PyType_FromModuleAndSpec(module, &waiter_spec, NULL);
    if (t == NULL)
        return -1;
    st->aio_sock_waiter_type = (PyTypeObject *)t;
    return 0;
}
