/*
 * aio_transport.c -- the hot paths of broomio.asyncio's TCP and Unix socket transport.
 *
 * The transport class is built at run time (aio_make_transport_type) as a C subclass of
 * asyncio's own _SelectorSocketTransport.  Everything that is not per-message -- the
 * constructor, close/abort/connection_lost ordering, write_eof, flow-control bookkeeping,
 * pause/resume_reading, sendfile support, repr -- is inherited unchanged, so the transport
 * behaves as asyncio's by construction.  This file replaces the two calls every message
 * goes through:
 *
 *   _read_ready  recv() straight into the loop's scratch buffer and one exact-size bytes
 *                copy for data_received(); for a BufferedProtocol, get_buffer() and
 *                recv() into it, then buffer_updated().
 *   write        when nothing is queued, send() at once; only the unsent tail goes to the
 *                buffer (and the writer callback is armed), as asyncio does.
 *
 * State stays in the instance's attributes (_buffer, _conn_lost, _eof, ...), which the
 * inherited Python methods read and write; so the C code reads them through getattr too.
 * Anything unusual (a lost connection, a loop that is not a broomio loop) falls back to the
 * inherited Python method, which is the reference behaviour.
 */
#include <errno.h>
#include <sys/socket.h>

#include "aio.h"

#define SCRATCH_SIZE (256 * 1024)

enum {
    S_CONN_LOST,
    S_SOCK_FD,
    S_PROTOCOL,
    S_LOOP,
    S_BUFFER,
    S_EOF,
    S_EMPTY_WAITER,
    S_DATA_RECEIVED,
    S_GET_BUFFER,
    S_BUFFER_UPDATED,
    S_FATAL_ERROR,
    S_ON_EOF,
    S_ADD_WRITER,
    S_WRITE_READY,
    S_MAYBE_PAUSE,
    S_MAX_SIZE,
    S_BUFFERED,
    S_WRITE,
    S_COUNT
};
_Static_assert(S_COUNT == BRO_AIO_TR_STRS, "state.h's BRO_AIO_TR_STRS is out of date");
static const char *const str_names[S_COUNT] = {
    "_conn_lost",      "_sock_fd",          "_protocol",  "_loop",
    "_buffer",         "_eof",              "_empty_waiter", "data_received",
    "get_buffer",      "buffer_updated",    "_fatal_error", "_read_ready__on_eof",
    "_add_writer",     "_write_ready",      "_maybe_pause_protocol", "max_size",
    "_broomio_buffered", "write"};

static PyObject **strs(PyTypeObject *defining_class)
{
    bro_state *st = PyType_GetModuleState(defining_class);
    return st->aio_tr_str;
}

/* Calls self.<name>(*args) and drops the result; -1 on error. */
static int call_method(PyObject *self, PyObject *name, PyObject *a, PyObject *b)
{
    PyObject *args[3] = {self, a, b};
    size_t n = 1 + (a != NULL) + (b != NULL);
    PyObject *r = PyObject_VectorcallMethod(name, args, n | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* The current exception, normalized, with its traceback attached; clears it. */
static PyObject *take_exception(void)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb != NULL && value != NULL)
        PyException_SetTraceback(value, tb);
    Py_XDECREF(type);
    Py_XDECREF(tb);
    return value;
}

/* An exception from a protocol callback or the socket: SystemExit and KeyboardInterrupt
 * leave the loop; anything else goes to self._fatal_error(exc, message). */
static PyObject *fatal(PyObject *self, PyObject **s, const char *message)
{
    if (PyErr_ExceptionMatches(PyExc_SystemExit) || PyErr_ExceptionMatches(PyExc_KeyboardInterrupt))
        return NULL;
    PyObject *exc = take_exception();
    if (exc == NULL)
        Py_RETURN_NONE;
    PyObject *msg = PyUnicode_FromString(message);
    if (msg == NULL) {
        Py_DECREF(exc);
        return NULL;
    }
    int r = call_method(self, s[S_FATAL_ERROR], exc, msg);
    Py_DECREF(exc);
    Py_DECREF(msg);
    if (r < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* Reads an int attribute; -1 with an exception on failure. */
static long get_long(PyObject *self, PyObject *name)
{
    PyObject *v = PyObject_GetAttr(self, name);
    if (v == NULL)
        return -1;
    long r = PyLong_AsLong(v);
    Py_DECREF(v);
    return r;
}

/* 1 if attribute name is truthy, 0 if not, -1 on error. */
static int get_truth(PyObject *self, PyObject *name)
{
    PyObject *v = PyObject_GetAttr(self, name);
    if (v == NULL)
        return -1;
    int r = PyObject_IsTrue(v);
    Py_DECREF(v);
    return r;
}

static PyObject *read_buffered(PyObject *self, PyObject **s, int fd, PyObject *protocol)
{
    PyObject *args[2] = {protocol, NULL};
    PyObject *hint = PyLong_FromLong(-1);
    if (hint == NULL)
        return NULL;
    args[1] = hint;
    PyObject *buf = PyObject_VectorcallMethod(s[S_GET_BUFFER], args,
                                              2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    Py_DECREF(hint);
    if (buf == NULL)
        return fatal(self, s, "Fatal error: protocol.get_buffer() call failed.");
    Py_buffer view;
    if (PyObject_GetBuffer(buf, &view, PyBUF_WRITABLE) < 0) {
        Py_DECREF(buf);
        return fatal(self, s, "Fatal error: protocol.get_buffer() call failed.");
    }
    if (view.len == 0) {
        PyBuffer_Release(&view);
        Py_DECREF(buf);
        PyErr_SetString(PyExc_RuntimeError, "get_buffer() returned an empty buffer");
        return fatal(self, s, "Fatal error: protocol.get_buffer() call failed.");
    }
    ssize_t n = recv(fd, view.buf, (size_t)view.len, 0);
    int err = errno;
    PyBuffer_Release(&view);
    Py_DECREF(buf);
    if (n < 0) {
        if (err == EAGAIN || err == EWOULDBLOCK || err == EINTR)
            Py_RETURN_NONE;
        errno = err;
        PyErr_SetFromErrno(PyExc_OSError);
        return fatal(self, s, "Fatal read error on socket transport");
    }
    if (n == 0) {
        if (call_method(self, s[S_ON_EOF], NULL, NULL) < 0)
            return NULL;
        Py_RETURN_NONE;
    }
    PyObject *nb = PyLong_FromSsize_t(n);
    if (nb == NULL)
        return NULL;
    args[1] = nb;
    PyObject *r = PyObject_VectorcallMethod(s[S_BUFFER_UPDATED], args,
                                            2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    Py_DECREF(nb);
    if (r == NULL)
        return fatal(self, s, "Fatal error: protocol.buffer_updated() call failed.");
    Py_DECREF(r);
    Py_RETURN_NONE;
}

/* _read_ready(): the reader callback. */
static PyObject *tr_read_ready(PyObject *self, PyTypeObject *cls, PyObject *const *Py_UNUSED(a),
                               Py_ssize_t nargs, PyObject *kwnames)
{
    if (nargs != 0 || kwnames != NULL) {
        PyErr_SetString(PyExc_TypeError, "_read_ready() takes no arguments");
        return NULL;
    }
    PyObject **s = strs(cls);
    int lost = get_truth(self, s[S_CONN_LOST]);
    if (lost < 0)
        return NULL;
    if (lost)
        Py_RETURN_NONE;
    long fd = get_long(self, s[S_SOCK_FD]);
    if (fd == -1 && PyErr_Occurred())
        return NULL;
    PyObject *protocol = PyObject_GetAttr(self, s[S_PROTOCOL]);
    if (protocol == NULL)
        return NULL;
    PyObject *result = NULL;
    int buffered = get_truth(self, s[S_BUFFERED]);
    if (buffered < 0)
        goto done;
    if (buffered) {
        result = read_buffered(self, s, (int)fd, protocol);
        goto done;
    }
    PyObject *loop = PyObject_GetAttr(self, s[S_LOOP]);
    if (loop == NULL)
        goto done;
    char *scratch = bro_aio_scratch(loop, SCRATCH_SIZE);
    Py_DECREF(loop);
    if (scratch == NULL)
        goto done;
    long size = get_long(self, s[S_MAX_SIZE]);
    if (size == -1 && PyErr_Occurred())
        goto done;
    if (size <= 0 || size > SCRATCH_SIZE)
        size = SCRATCH_SIZE;
    ssize_t n = recv((int)fd, scratch, (size_t)size, 0);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
            result = Py_NewRef(Py_None);
            goto done;
        }
        PyErr_SetFromErrno(PyExc_OSError);
        result = fatal(self, s, "Fatal read error on socket transport");
        goto done;
    }
    if (n == 0) {
        if (call_method(self, s[S_ON_EOF], NULL, NULL) == 0)
            result = Py_NewRef(Py_None);
        goto done;
    }
    PyObject *data = PyBytes_FromStringAndSize(scratch, n);
    if (data == NULL)
        goto done;
    PyObject *args[2] = {protocol, data};
    PyObject *r = PyObject_VectorcallMethod(s[S_DATA_RECEIVED], args,
                                            2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    Py_DECREF(data);
    if (r == NULL) {
        result = fatal(self, s, "Fatal error: protocol.data_received() call failed.");
        goto done;
    }
    Py_DECREF(r);
    result = Py_NewRef(Py_None);
done:
    Py_DECREF(protocol);
    return result;
}

/* The inherited Python write(): the reference path for every unusual case. */
static PyObject *write_fallback(PyObject *self, PyTypeObject *cls, PyObject *data)
{
    PyObject *s = PyObject_GetAttr((PyObject *)cls->tp_base, strs(cls)[S_WRITE]);
    if (s == NULL)
        return NULL;
    PyObject *r = PyObject_CallFunctionObjArgs(s, self, data, NULL);
    Py_DECREF(s);
    return r;
}

static int append_bytes(PyObject *buffer, const char *p, Py_ssize_t n)
{
    Py_ssize_t old = PyByteArray_GET_SIZE(buffer);
    if (PyByteArray_Resize(buffer, old + n) < 0)
        return -1;
    memcpy(PyByteArray_AS_STRING(buffer) + old, p, (size_t)n);
    return 0;
}

/* write(data) */
static PyObject *tr_write(PyObject *self, PyTypeObject *cls, PyObject *const *args,
                          Py_ssize_t nargs, PyObject *kwnames)
{
    if (nargs != 1 || kwnames != NULL) {
        PyErr_SetString(PyExc_TypeError, "write() takes exactly one argument");
        return NULL;
    }
    PyObject *data = args[0];
    if (!PyBytes_Check(data) && !PyByteArray_Check(data) && !PyMemoryView_Check(data)) {
        PyErr_Format(PyExc_TypeError,
                     "data argument must be a bytes-like object, not '%.200s'",
                     Py_TYPE(data)->tp_name);
        return NULL;
    }
    PyObject **s = strs(cls);
    int eof = get_truth(self, s[S_EOF]);
    if (eof < 0)
        return NULL;
    if (eof) {
        PyErr_SetString(PyExc_RuntimeError, "Cannot call write() after write_eof()");
        return NULL;
    }
    PyObject *waiter = PyObject_GetAttr(self, s[S_EMPTY_WAITER]);
    if (waiter == NULL)
        return NULL;
    Py_DECREF(waiter);
    if (waiter != Py_None) {
        PyErr_SetString(PyExc_RuntimeError, "unable to write; sendfile is in progress");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) {
        PyErr_Clear();
        return write_fallback(self, cls, data); /* non-contiguous memoryview */
    }
    PyObject *result = NULL, *buffer = NULL;
    if (view.len == 0) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    int lost = get_truth(self, s[S_CONN_LOST]);
    if (lost < 0)
        goto done;
    buffer = PyObject_GetAttr(self, s[S_BUFFER]);
    if (buffer == NULL)
        goto done;
    if (lost || !PyByteArray_CheckExact(buffer)) {
        PyBuffer_Release(&view);
        Py_DECREF(buffer);
        return write_fallback(self, cls, data);
    }
    const char *p = view.buf;
    Py_ssize_t len = view.len;
    if (PyByteArray_GET_SIZE(buffer) == 0) {
        long fd = get_long(self, s[S_SOCK_FD]);
        if (fd == -1 && PyErr_Occurred())
            goto done;
        ssize_t n = send((int)fd, p, (size_t)len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                PyErr_SetFromErrno(PyExc_OSError);
                result = fatal(self, s, "Fatal write error on socket transport");
                goto done;
            }
            n = 0;
        }
        if (n == len) {
            result = Py_NewRef(Py_None);
            goto done;
        }
        p += n;
        len -= n;
        /* Not all of it went: the writer callback sends the rest when the socket drains. */
        PyObject *loop = PyObject_GetAttr(self, s[S_LOOP]);
        if (loop == NULL)
            goto done;
        PyObject *cb = PyObject_GetAttr(self, s[S_WRITE_READY]);
        if (cb == NULL) {
            Py_DECREF(loop);
            goto done;
        }
        PyObject *fdo = PyLong_FromLong(fd);
        int r = -1;
        if (fdo != NULL) {
            PyObject *a[3] = {loop, fdo, cb};
            PyObject *h = PyObject_VectorcallMethod(s[S_ADD_WRITER], a,
                                                    3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
            if (h != NULL) {
                Py_DECREF(h);
                r = 0;
            }
            Py_DECREF(fdo);
        }
        Py_DECREF(cb);
        Py_DECREF(loop);
        if (r < 0)
            goto done;
    }
    if (append_bytes(buffer, p, len) < 0)
        goto done;
    if (call_method(self, s[S_MAYBE_PAUSE], NULL, NULL) < 0)
        goto done;
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&view);
    Py_XDECREF(buffer);
    return result;
}

static PyMethodDef tr_methods[] = {
    {"_read_ready", (PyCFunction)(void (*)(void))tr_read_ready,
     METH_METHOD | METH_FASTCALL | METH_KEYWORDS, "The reader callback (C)."},
    {"write", (PyCFunction)(void (*)(void))tr_write, METH_METHOD | METH_FASTCALL | METH_KEYWORDS,
     "write(data): send now if nothing is queued, else queue (C)."},
    {NULL},
};

static PyType_Slot tr_slots[] = {
    {Py_tp_methods, tr_methods},
    {0, NULL},
};

static PyType_Spec tr_spec = {
    .name = "broomio._engine.AioSocketTransport",
    .basicsize = 0,
    /* No Py_TPFLAGS_HAVE_GC here: the type inherits the flag and the traversal from its
     * Python base, which owns the whole layout (instance dict included). */
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .slots = tr_slots,
};

/* aio_make_transport_type(base): the C-accelerated subclass of asyncio's socket transport. */
PyObject *bro_mod_aio_make_transport_type(PyObject *module, PyObject *base)
{
    if (!PyType_Check(base)) {
        PyErr_SetString(PyExc_TypeError, "aio_make_transport_type() expects a class");
        return NULL;
    }
    bro_state *st = PyModule_GetState(module);
    for (int i = 0; i < S_COUNT; i++) {
        if (st->aio_tr_str[i] == NULL) {
            st->aio_tr_str[i] = PyUnicode_InternFromString(str_names[i]);
            if (st->aio_tr_str[i] == NULL)
                return NULL;
        }
    }
    return PyType_FromModuleAndSpec(module, &tr_spec, base);
}
