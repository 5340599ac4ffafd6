/*
 * stream.c -- the C half of SocketStream, and the detector of conflicting stream users.
 *
 * Why this file exists.  An echo-style handler spends its life in two calls,
 * `await stream.receive_some(n)` and `await stream.send_all(data)`.  The socket operations
 * behind them are already C awaitables (sock.c, "stream mode").  When receive_some and
 * send_all were Python methods that only checked a few flags before returning those
 * awaitables, the two extra Python frames per message were ~8% of a 16 KiB echo server's
 * user-space instructions (callgrind: 21.8k vs 20.1k per message), enough to lose to
 * uvloop's protocol server at that size.  So StreamCore, the base class of SocketStream,
 * implements exactly these two methods in C; everything else stays in Python
 * (_streams.py).
 *
 * What the fast path may skip, and why it is still correct:
 *
 *   receive_some(max_bytes=None) -- SocketStream keeps a read-ahead buffer for read_until /
 *   read_exactly / read_line, and those helpers hold the stream's receive ConflictDetector
 *   while they run.  When the buffer is empty and no helper is running, a receive is just a
 *   stream-mode recv operation: a second concurrent receiver is caught by the fd table
 *   (BusyResourceError before any syscall), a closed socket raises ClosedResourceError, an
 *   OSError becomes BrokenResourceError.  Otherwise it delegates to the Python coroutine
 *   `self._receive_buffered(max_bytes)`, which serves the buffer under the detector.
 *
 *   send_all(data) -- send_eof() holds the send detector while it shuts the socket down; a
 *   send_all issued meanwhile must get BusyResourceError, so the fast path checks it.
 *
 * Ownership: a StreamCore holds strong references to its socket, its read-ahead bytearray
 * and its two detectors.  `_buffer` is writable from Python (`self._buffer += chunk`
 * rebinds it), but only to a bytearray, so the fast path can read its size directly.
 */
#include "state.h"
#include "structmember.h"

#define BRO_DEFAULT_RECEIVE_SIZE 65536

/* ---- ConflictDetector ----------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD uint8_t busy;
    PyObject *message; /* str: the BusyResourceError message */
} bro_conflict;

static PyObject *busy_error_type(PyObject *self)
{
    PyObject *module = PyType_GetModuleByDef(Py_TYPE(self), &bro_module_def);
    if (module == NULL)
        return NULL;
    bro_state *st = PyModule_GetState(module);
    return st->BusyResourceError;
}

static PyObject *raise_busy(PyObject *owner, PyObject *message)
{
    PyObject *exc = busy_error_type(owner);
    if (exc != NULL)
        PyErr_SetObject(exc, message);
    return NULL;
}

static int conflict_init(bro_conflict *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"message", NULL};
    PyObject *message;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "U:ConflictDetector", kwlist, &message))
        return -1;
    Py_XSETREF(self->message, Py_NewRef(message));
    self->busy = 0;
    return 0;
}

static PyObject *conflict_enter(bro_conflict *self, PyObject *Py_UNUSED(ignored))
{
    if (self->busy)
        return raise_busy((PyObject *)self, self->message);
    self->busy = 1;
    Py_RETURN_NONE;
}

static PyObject *conflict_exit(bro_conflict *self, PyObject *const *Py_UNUSED(args),
                               Py_ssize_t Py_UNUSED(nargs))
{
    self->busy = 0;
    Py_RETURN_FALSE;
}

static int conflict_traverse(bro_conflict *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    return 0;
}

static void conflict_dealloc(bro_conflict *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    Py_CLEAR(self->message);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyMethodDef conflict_methods[] = {
    {"__enter__", (PyCFunction)conflict_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)(void (*)(void))conflict_exit, METH_FASTCALL, NULL},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef conflict_members[] = {
    {"_busy", T_BOOL, offsetof(bro_conflict, busy), READONLY,
     "True while the direction is in use."},
    {"_message", T_OBJECT, offsetof(bro_conflict, message), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot conflict_slots[] = {
    {Py_tp_doc, "ConflictDetector(message)\n--\n\n"
                "A context manager that raises BusyResourceError(message) when entered while "
                "it is already entered: two tasks using one direction of a stream at once."},
    {Py_tp_init, conflict_init},
    {Py_tp_dealloc, conflict_dealloc},
    {Py_tp_traverse, conflict_traverse},
    {Py_tp_methods, conflict_methods},
    {Py_tp_members, conflict_members},
    {0, NULL},
};

static PyType_Spec conflict_spec = {
    .name = "broomio._engine.ConflictDetector",
    .basicsize = sizeof(bro_conflict),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .slots = conflict_slots,
};

/* ---- StreamCore ----------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD PyObject *socket; /* strong: a SocketCore */
    PyObject *buffer;               /* strong: read-ahead bytes (a bytearray, normally) */
    bro_conflict *recv_conflict;    /* strong */
    bro_conflict *send_conflict;    /* strong */
} bro_stream;

static bro_state *stream_state(PyObject *self)
{
    PyObject *module = PyType_GetModuleByDef(Py_TYPE(self), &bro_module_def);
    return module ? PyModule_GetState(module) : NULL;
}

static bro_conflict *new_conflict(bro_state *st, const char *message)
{
    PyObject *msg = PyUnicode_FromString(message);
    if (msg == NULL)
        return NULL;
    PyObject *c = PyObject_CallOneArg((PyObject *)st->conflict_type, msg);
    Py_DECREF(msg);
    return (bro_conflict *)c;
}

static int stream_init(bro_stream *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"socket", NULL};
    PyObject *socket;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O:StreamCore", kwlist, &socket))
        return -1;
    bro_state *st = stream_state((PyObject *)self);
    if (st == NULL)
        return -1;
    if (!PyObject_TypeCheck(socket, st->socket_type)) {
        PyErr_Format(PyExc_TypeError, "a stream needs a broomio socket, got %.200s",
                     Py_TYPE(socket)->tp_name);
        return -1;
    }
    PyObject *buffer = PyByteArray_FromStringAndSize(NULL, 0);
    if (buffer == NULL)
        return -1;
    bro_conflict *rc = new_conflict(st, "another task is already receiving on this stream");
    bro_conflict *sc =
        rc ? new_conflict(st, "another task is already sending on this stream") : NULL;
    if (sc == NULL) {
        Py_XDECREF(rc);
        Py_DECREF(buffer);
        return -1;
    }
    Py_XSETREF(self->socket, Py_NewRef(socket));
    Py_XSETREF(self->buffer, buffer);
    Py_XSETREF(self->recv_conflict, rc);
    Py_XSETREF(self->send_conflict, sc);
    return 0;
}

static int stream_uninitialized(bro_stream *self)
{
    if (self->socket != NULL)
        return 0;
    PyErr_SetString(PyExc_RuntimeError, "StreamCore.__init__ was not called");
    return 1;
}

/* max_bytes as a positive size: None means the default.  Errors name the argument. */
static Py_ssize_t parse_max_bytes(PyObject *arg)
{
    if (arg == NULL || arg == Py_None)
        return BRO_DEFAULT_RECEIVE_SIZE;
    if (PyBool_Check(arg) || !PyLong_Check(arg)) {
        PyErr_Format(PyExc_TypeError, "max_bytes must be an int or None, not %.200s",
                     Py_TYPE(arg)->tp_name);
        return -1;
    }
    Py_ssize_t n = PyLong_AsSsize_t(arg);
    if (n == -1 && PyErr_Occurred())
        return -1;
    if (n < 1) {
        PyErr_Format(PyExc_ValueError, "max_bytes must be >= 1, got %zd", n);
        return -1;
    }
    return n;
}

static PyObject *stream_receive_some(bro_stream *self, PyObject *const *args, Py_ssize_t nargs,
                                     PyObject *kwnames)
{
    PyObject *arg = nargs > 0 ? args[0] : NULL;
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    if (nargs + nkw > 1) {
        PyErr_SetString(PyExc_TypeError, "receive_some(max_bytes=None) takes one argument");
        return NULL;
    }
    if (nkw == 1) {
        if (!PyUnicode_Check(PyTuple_GET_ITEM(kwnames, 0)) ||
            PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, 0), "max_bytes") != 0) {
            PyErr_Format(PyExc_TypeError, "receive_some() got an unexpected keyword argument %R",
                         PyTuple_GET_ITEM(kwnames, 0));
            return NULL;
        }
        arg = args[0];
    }
    if (stream_uninitialized(self))
        return NULL;
    Py_ssize_t size = parse_max_bytes(arg);
    if (size < 0)
        return NULL;
    if (PyByteArray_GET_SIZE(self->buffer) == 0 && !self->recv_conflict->busy)
        return bro_sock_stream_recv(self->socket, size);
    PyObject *n = PyLong_FromSsize_t(size);
    if (n == NULL)
        return NULL;
    PyObject *name = PyUnicode_InternFromString("_receive_buffered");
    PyObject *res = name ? PyObject_CallMethodOneArg((PyObject *)self, name, n) : NULL;
    Py_XDECREF(name);
    Py_DECREF(n);
    return res;
}

static PyObject *stream_send_all(bro_stream *self, PyObject *data)
{
    if (stream_uninitialized(self))
        return NULL;
    if (self->send_conflict->busy)
        return raise_busy((PyObject *)self, self->send_conflict->message);
    return bro_sock_stream_send_all(self->socket, data);
}

static int stream_traverse(bro_stream *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->socket);
    Py_VISIT(self->buffer);
    Py_VISIT(self->recv_conflict);
    Py_VISIT(self->send_conflict);
    return 0;
}

static int stream_clear(bro_stream *self)
{
    Py_CLEAR(self->socket);
    Py_CLEAR(self->buffer);
    Py_CLEAR(self->recv_conflict);
    Py_CLEAR(self->send_conflict);
    return 0;
}

static void stream_dealloc(bro_stream *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    stream_clear(self);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyMethodDef stream_methods[] = {
    {"receive_some", (PyCFunction)(void (*)(void))stream_receive_some,
     METH_FASTCALL | METH_KEYWORDS,
     "receive_some(max_bytes=None)\n--\n\n"
     "Awaitable: up to max_bytes bytes (at least one); b'' once the peer has closed."},
    {"send_all", (PyCFunction)stream_send_all, METH_O,
     "send_all(data)\n--\n\nAwaitable: send every byte of data."},
    {NULL, NULL, 0, NULL},
};

/* `self._buffer += chunk` rebinds the attribute, so it is writable, but only to a bytearray:
 * the fast path reads its size without further checks. */
static PyObject *stream_get_buffer(bro_stream *self, void *Py_UNUSED(closure))
{
    if (stream_uninitialized(self))
        return NULL;
    return Py_NewRef(self->buffer);
}

static int stream_set_buffer(bro_stream *self, PyObject *value, void *Py_UNUSED(closure))
{
    if (value == NULL || !PyByteArray_Check(value)) {
        PyErr_SetString(PyExc_TypeError, "_buffer must be a bytearray");
        return -1;
    }
    Py_XSETREF(self->buffer, Py_NewRef(value));
    return 0;
}

static PyGetSetDef stream_getset[] = {
    {"_buffer", (getter)stream_get_buffer, (setter)stream_set_buffer, "Read-ahead bytes.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef stream_members[] = {
    {"socket", T_OBJECT, offsetof(bro_stream, socket), READONLY, "The underlying socket."},
    {"_receive_conflict", T_OBJECT, offsetof(bro_stream, recv_conflict), READONLY, NULL},
    {"_send_conflict", T_OBJECT, offsetof(bro_stream, send_conflict), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot stream_slots[] = {
    {Py_tp_doc, "StreamCore(socket)\n--\n\nThe C base of SocketStream: its per-message "
                "receive_some / send_all."},
    {Py_tp_init, stream_init},
    {Py_tp_dealloc, stream_dealloc},
    {Py_tp_traverse, stream_traverse},
    {Py_tp_clear, stream_clear},
    {Py_tp_methods, stream_methods},
    {Py_tp_members, stream_members},
    {Py_tp_getset, stream_getset},
    {0, NULL},
};

static PyType_Spec stream_spec = {
    .name = "broomio._engine.StreamCore",
    .basicsize = sizeof(bro_stream),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE,
    .slots = stream_slots,
};

int bro_stream_init_types(PyObject *module, bro_state *st)
{
    if (bro_module_add_type(module, &conflict_spec, NULL, &st->conflict_type) < 0)
        return -1;
    return bro_module_add_type(module, &stream_spec, NULL, &st->stream_type);
}
