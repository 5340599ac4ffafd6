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
 *   _read_ready  recv() into the loop's scratch buffer and one exact-size bytes copy for
 *                data_received(), or, for large chunks, straight into the bytes object (see
 *                DIRECT_READ_MIN below); for a BufferedProtocol, get_buffer() and recv()
 *                into it, then buffer_updated(); for asyncio's own StreamReaderProtocol,
 *                appended to its StreamReader's buffer (see "the asyncio streams path").
 *   write        when nothing is queued, send() at once; only the unsent tail goes to the
 *                buffer (and the writer callback is armed), as asyncio does.
 *   _write_ready the writer callback: one send() of the whole queued bytearray (asyncio
 *                3.11 queues into one bytearray, so this is what writev would do), then the
 *                same bookkeeping as asyncio's (resume the protocol, finish a close or a
 *                write_eof once the buffer is empty, fatal error on a failed send).
 *   is_closing   asked by every StreamWriter.drain().
 *
 * State stays in the instance's attributes (_buffer, _conn_lost, _eof, ...), which the
 * inherited Python methods read and write; the hot ones are C members (see tr_fields).
 * Anything unusual (a lost connection, a loop that is not a broomio loop) falls back to the
 * inherited Python method, which is the reference behaviour.
 */
#include <errno.h>
#include <sys/socket.h>

#include "aio.h"
#include "structmember.h"

/* A receive asks for max_size bytes: asyncio's _SelectorTransport.max_size (256 KiB) unless
 * the class or the instance says otherwise (see resolve_max_size and the max_size property).
 *
 * Receives normally land in the loop's scratch buffer and are then copied into a bytes object
 * of the exact size: one small copy instead of a max_size allocation per message.  Once a
 * transport's last receive returned between DIRECT_READ_MIN and DIRECT_READ_MAX bytes, the
 * copy costs more than the allocation, so the next receive goes straight into a fresh bytes
 * object of DIRECT_READ_MAX bytes that is then shrunk in place (glibc's realloc splits a shrinking
 * chunk without moving it).
 *
 * DIRECT_READ_MAX stays under glibc's mmap threshold (128 KiB): a 256 KiB block would be
 * mmap()ed, shrunk with mremap() and munmap()ed -- three system calls and page faults per
 * message, and a block freed after shrinking never raises glibc's adaptive threshold.  If
 * the direct part fills up, the rest (up to max_size in all) is received into the scratch
 * buffer and appended, so one data_received() still gets what one recv(max_size) would
 * have returned, and the transport goes back to the scratch path: bulk transfers copy once
 * from a warm buffer instead of allocating large blocks.  The switch follows the traffic,
 * per transport. */
#define DIRECT_READ_MIN 4096
#define DIRECT_READ_MAX (64 * 1024)

/* A direct receive asks for what the transport's last one returned plus READ_SLACK bytes, not
 * for DIRECT_READ_MAX: a protocol fed fixed-size messages then costs glibc one malloc and one
 * free per message, and the final shrink is too small to split the chunk, where a full-size
 * block also had its unused tail carved off and freed.  Only a receive that fills the guess
 * exactly may have left data queued; it takes the rest through the scratch buffer exactly as
 * a filled DIRECT_READ_MAX block does, so data_received() still gets everything one
 * recv(max_size) would have returned. */
#define READ_SLACK 16

/* The hot attributes live in C, after the Python base's layout, as member descriptors: the
 * inherited Python methods read and write them as ordinary attributes, and the C methods
 * read them without a dictionary lookup.  Their offset is known only at run time (it
 * depends on the base's size), so it is kept in the module state. */
typedef struct {
    PyObject *protocol;
    PyObject *loop;
    PyObject *buffer;
    PyObject *empty_waiter;
    PyObject *max_size_obj; /* what was assigned to max_size, or NULL: the class's value */
    Py_ssize_t conn_lost;
    Py_ssize_t max_size; /* 0: not known yet (resolve_max_size) */
    int sock_fd;
    char eof;
    char buffered;
    char closing;
    char big_reads;  /* the last receive was large: read into the result directly */
    char stream;     /* the protocol is exactly asyncio.StreamReaderProtocol */
    int pending_err; /* errno of a failed second recv(), reported by the next _read_ready */
    Py_ssize_t read_hint; /* bytes the last direct receive returned (0: none yet) */
} tr_fields;

static inline tr_fields *F(PyObject *self, bro_state *st)
{
    return (tr_fields *)((char *)self + st->aio_tr_off);
}

enum {
    S_DATA_RECEIVED,
    S_GET_BUFFER,
    S_BUFFER_UPDATED,
    S_FATAL_ERROR,
    S_ON_EOF,
    S_ADD_WRITER,
    S_WRITE_READY,
    S_MAYBE_PAUSE,
    S_WRITE,
    S_REMOVE_WRITER,
    S_MAYBE_RESUME,
    S_CALL_CONN_LOST,
    S_SET_RESULT,
    S_SET_EXCEPTION,
    S_MAX_SIZE,
    S_READ_READY,
    S_STREAM_READER_WR,
    S_FEED_DATA,
    S_EOF,
    S_BUFFER,
    S_WAITER,
    S_TRANSPORT,
    S_PAUSED,
    S_LIMIT,
    S_PAUSE_READING,
    S_CANCELLED,
    S_COUNT
};
_Static_assert(S_COUNT == BRO_AIO_TR_STRS, "state.h's BRO_AIO_TR_STRS is out of date");
static const char *const str_names[S_COUNT] = {"data_received",
                                               "get_buffer",
                                               "buffer_updated",
                                               "_fatal_error",
                                               "_read_ready__on_eof",
                                               "_add_writer",
                                               "_write_ready",
                                               "_maybe_pause_protocol",
                                               "write",
                                               "_remove_writer",
                                               "_maybe_resume_protocol",
                                               "_call_connection_lost",
                                               "set_result",
                                               "set_exception",
                                               "max_size",
                                               "_read_ready",
                                               "_stream_reader_wr",
                                               "feed_data",
                                               "_eof",
                                               "_buffer",
                                               "_waiter",
                                               "_transport",
                                               "_paused",
                                               "_limit",
                                               "pause_reading",
                                               "cancelled"};

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

static PyObject *read_buffered(PyObject *self, PyObject **s, int fd, PyObject *protocol)
{
    PyObject *args[2] = {protocol, NULL};
    PyObject *hint = PyLong_FromLong(-1);
    if (hint == NULL)
        return NULL;
    args[1] = hint;
    PyObject *buf =
        PyObject_VectorcallMethod(s[S_GET_BUFFER], args, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
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

/* A member that must be set (T_OBJECT_EX semantics): AttributeError if it is not. */
static PyObject *need(PyObject *v, const char *name)
{
    if (v == NULL)
        PyErr_Format(PyExc_AttributeError, "transport has no attribute '%s'", name);
    return v;
}

/* The argument check of the METH_METHOD methods below (they take that calling convention
 * only to reach the module state through their defining class). */
static int no_args(const char *name, Py_ssize_t nargs, PyObject *kwnames)
{
    if (nargs == 0 && kwnames == NULL)
        return 0;
    PyErr_Format(PyExc_TypeError, "%s() takes no arguments", name);
    return -1;
}

/* Calls the inherited Python method `name` (asyncio's own, the reference path for anything
 * unusual) with self and, if arg is not NULL, arg. */
static PyObject *call_inherited(PyObject *self, PyTypeObject *cls, PyObject *name, PyObject *arg)
{
    PyObject *m = PyObject_GetAttr((PyObject *)cls->tp_base, name);
    if (m == NULL)
        return NULL;
    PyObject *r =
        arg ? PyObject_CallFunctionObjArgs(m, self, arg, NULL) : PyObject_CallOneArg(m, self);
    Py_DECREF(m);
    return r;
}

/* The transport's max_size, looked up once as asyncio's recv(self.max_size) would find it
 * (an instance's own value, a subclass's class attribute, or asyncio's default) and kept in
 * f->max_size; the max_size property's setter keeps it current.  Returns the size, 0 if it
 * is not a positive size (the caller falls back to asyncio's method), -1 on error. */
static Py_ssize_t resolve_max_size(PyObject *self, PyObject **s, tr_fields *f)
{
    if (f->max_size_obj != NULL)
        return 0; /* assigned, and not a positive size (see max_size_set) */
    PyObject *v = PyObject_GetAttr(self, s[S_MAX_SIZE]);
    if (v == NULL)
        return -1;
    Py_ssize_t n = PyLong_Check(v) ? PyLong_AsSsize_t(v) : 0;
    Py_DECREF(v);
    if (n == -1 && PyErr_Occurred()) {
        PyErr_Clear(); /* too large for a size: asyncio's recv() reports it */
        n = 0;
    }
    if (n <= 0)
        return 0;
    f->max_size = n;
    return n;
}

/* recv() returned n <= 0 (errno err): end of stream, nothing yet, or a failed socket. */
static PyObject *read_nothing(PyObject *self, PyObject **s, ssize_t n, int err)
{
    if (n == 0) {
        if (call_method(self, s[S_ON_EOF], NULL, NULL) < 0)
            return NULL;
        Py_RETURN_NONE;
    }
    if (err == EAGAIN || err == EWOULDBLOCK || err == EINTR)
        Py_RETURN_NONE;
    errno = err;
    PyErr_SetFromErrno(PyExc_OSError);
    return fatal(self, s, "Fatal read error on socket transport");
}

/* ---- the asyncio streams path ----------------------------------------------------------
 *
 * asyncio.start_server() and open_connection() put an asyncio.StreamReaderProtocol on the
 * transport; each received chunk then runs four Python frames (data_received, the
 * _stream_reader property, StreamReader.feed_data and _wakeup_waiter) whose whole job is to
 * append the bytes to the reader's bytearray and wake the task waiting in read().  When the
 * protocol and the reader are exactly asyncio's classes with their own methods (nothing
 * overridden on the class or the instance), the transport does the same steps here, in the
 * same order and through the same attributes: it appends the received bytes to the
 * reader's _buffer (no bytes object is made), then runs _wakeup_waiter's and feed_data's
 * flow-control logic.  Anything that does not fit -- another protocol, a subclass, a dead reader, a
 * reader at EOF (where feed_data asserts), a buffer with exported views -- takes the
 * ordinary data_received() path, which is asyncio's code. */

static int append_bytes(PyObject *buffer, const char *p, Py_ssize_t n);

/* 1 if obj.name resolves to the class attribute `func` (no instance or subclass override). */
static int is_own_method(PyObject *obj, PyObject *name, PyObject *func)
{
    PyObject *m = NULL;
#if PY_VERSION_HEX < 0x030D0000
    /* Looks the name up without making a bound method (declared in 3.11 and 3.12's
     * cpython/object.h; internal from 3.13 on). */
    int unbound = _PyObject_GetMethod(obj, name, &m);
    int ok = m != NULL && unbound && m == func;
#else
    m = PyObject_GetAttr(obj, name);
    int ok = m != NULL && PyMethod_Check(m) && PyMethod_GET_FUNCTION(m) == func &&
             PyMethod_GET_SELF(m) == obj;
#endif
    if (m == NULL)
        PyErr_Clear();
    Py_XDECREF(m);
    return ok;
}

/* The reader (new reference) and its bytearray buffer (new reference) if the C streams path
 * applies to this protocol: 1, or 0 (with nothing set) if not. */
static int stream_target(bro_state *st, PyObject *protocol, PyObject **reader_out,
                         PyObject **buffer_out)
{
    PyObject **s = st->aio_tr_str;
    PyObject *streams = st->aio_streams; /* (StreamReader, data_received, feed_data) */
    if (streams == NULL ||
        !is_own_method(protocol, s[S_DATA_RECEIVED], PyTuple_GET_ITEM(streams, 1)))
        return 0;
    PyObject *wr = PyObject_GetAttr(protocol, s[S_STREAM_READER_WR]);
    if (wr == NULL) {
        PyErr_Clear();
        return 0;
    }
    PyObject *reader = NULL;
    if (PyWeakref_CheckRef(wr)) {
#if PY_VERSION_HEX < 0x030D0000
        reader = Py_XNewRef(PyWeakref_GetObject(wr));
#else
        if (PyWeakref_GetRef(wr, &reader) < 0)
            reader = NULL;
#endif
    }
    Py_DECREF(wr);
    if (reader == NULL || (PyObject *)Py_TYPE(reader) != PyTuple_GET_ITEM(streams, 0)) {
        PyErr_Clear();
        Py_XDECREF(reader);
        return 0;
    }
    if (!is_own_method(reader, s[S_FEED_DATA], PyTuple_GET_ITEM(streams, 2)))
        goto no;
    PyObject *eof = PyObject_GetAttr(reader, s[S_EOF]);
    if (eof == NULL)
        goto no;
    Py_DECREF(eof);
    if (eof != Py_False)
        goto no;
    PyObject *buffer = PyObject_GetAttr(reader, s[S_BUFFER]);
    if (buffer == NULL)
        goto no;
    if (!PyByteArray_CheckExact(buffer) || ((PyByteArrayObject *)buffer)->ob_exports > 0) {
        Py_DECREF(buffer);
        goto no;
    }
    *reader_out = reader;
    *buffer_out = buffer;
    return 1;
no:
    PyErr_Clear();
    Py_DECREF(reader);
    return 0;
}

/* StreamReader._wakeup_waiter() and the rest of feed_data() after the buffer grew. */
static int stream_fed(PyObject **s, PyObject *reader, PyObject *buffer)
{
    PyObject *waiter = PyObject_GetAttr(reader, s[S_WAITER]);
    if (waiter == NULL)
        return -1;
    if (waiter != Py_None) {
        if (PyObject_SetAttr(reader, s[S_WAITER], Py_None) < 0) {
            Py_DECREF(waiter);
            return -1;
        }
        PyObject *c = PyObject_CallMethodNoArgs(waiter, s[S_CANCELLED]);
        int cancelled = c == NULL ? -1 : PyObject_IsTrue(c);
        Py_XDECREF(c);
        if (cancelled < 0 ||
            (!cancelled && call_method(waiter, s[S_SET_RESULT], Py_None, NULL) < 0)) {
            Py_DECREF(waiter);
            return -1;
        }
    }
    Py_DECREF(waiter);

    PyObject *transport = PyObject_GetAttr(reader, s[S_TRANSPORT]);
    if (transport == NULL)
        return -1;
    int r = 0;
    if (transport != Py_None) {
        PyObject *paused = PyObject_GetAttr(reader, s[S_PAUSED]);
        int is_paused = paused == NULL ? -1 : PyObject_IsTrue(paused);
        Py_XDECREF(paused);
        PyObject *limit = is_paused == 0 ? PyObject_GetAttr(reader, s[S_LIMIT]) : NULL;
        int over = 0;
        if (is_paused < 0) {
            over = -1;
        } else if (limit == NULL) {
            over = is_paused ? 0 : -1;
        } else {
            Py_ssize_t lim = PyLong_CheckExact(limit) ? PyLong_AsSsize_t(limit) : -1;
            if (lim >= 0 && lim < PY_SSIZE_T_MAX / 2) {
                over = PyByteArray_GET_SIZE(buffer) > 2 * lim;
            } else {
                /* len(self._buffer) > 2 * self._limit, in Python's arithmetic. */
                PyErr_Clear();
                PyObject *two = PyLong_FromLong(2);
                PyObject *twice = two ? PyNumber_Multiply(two, limit) : NULL;
                PyObject *len = twice ? PyLong_FromSsize_t(PyByteArray_GET_SIZE(buffer)) : NULL;
                over = len ? PyObject_RichCompareBool(len, twice, Py_GT) : -1;
                Py_XDECREF(two);
                Py_XDECREF(twice);
                Py_XDECREF(len);
            }
            Py_DECREF(limit);
        }
        if (over < 0) {
            r = -1;
        } else if (over) {
            PyObject *res = PyObject_CallMethodNoArgs(transport, s[S_PAUSE_READING]);
            if (res != NULL) {
                Py_DECREF(res);
                r = PyObject_SetAttr(reader, s[S_PAUSED], Py_True);
            } else if (PyErr_ExceptionMatches(PyExc_NotImplementedError)) {
                PyErr_Clear();
                r = PyObject_SetAttr(reader, s[S_TRANSPORT], Py_None);
            } else {
                r = -1;
            }
        }
    }
    Py_DECREF(transport);
    return r;
}

/* The rest of a receive whose direct part filled up: up to `room` more bytes into the
 * scratch buffer.  What one recv(max_size) would have returned is split over two calls here;
 * a failure of the second one is kept in f->pending_err and reported by the next
 * _read_ready, after the data received before it -- where asyncio's next recv() would have
 * reported it.  (An end of stream needs no keeping: recv() keeps returning 0.) */
static ssize_t recv_rest(tr_fields *f, char *scratch, Py_ssize_t room)
{
    ssize_t m = recv(f->sock_fd, scratch, (size_t)room, 0);
    if (m < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            f->pending_err = errno;
        return 0;
    }
    return m;
}

/* The streams path of _read_ready: 1 if it ran (*result set), 0 if it does not apply. */
static int read_stream(PyObject *self, bro_state *st, tr_fields *f, char *scratch,
                       PyObject *protocol, Py_ssize_t max_size, PyObject **result)
{
    PyObject **s = st->aio_tr_str;
    PyObject *reader, *buffer;
    if (!stream_target(st, protocol, &reader, &buffer))
        return 0;
    *result = NULL;
    /* Always through the scratch buffer: the bytearray then grows by exactly what arrived.
     * Receiving into it directly (grow by DIRECT_READ_MAX, trim) saves that copy but leaves
     * a freed tail per message next to the two copies StreamReader.read() makes; measured
     * with 100 echo streams at 16 KiB, the heap top then kept being trimmed and regrown
     * (brk() every ten messages, a page fault almost every message), which cost far more
     * system time than the copy. */
    ssize_t n = recv(f->sock_fd, scratch, (size_t)max_size, 0);
    int err = errno;
    if (n > 0 && append_bytes(buffer, scratch, n) < 0)
        goto out;
    if (n <= 0) {
        *result = read_nothing(self, s, n, err);
        goto out;
    }
    if (stream_fed(s, reader, buffer) < 0)
        *result = fatal(self, s, "Fatal error: protocol.data_received() call failed.");
    else
        *result = Py_NewRef(Py_None);
out:
    Py_DECREF(reader);
    Py_DECREF(buffer);
    return 1;
}

/* _read_ready(): the reader callback. */
static PyObject *tr_read_ready(PyObject *self, PyTypeObject *cls, PyObject *const *Py_UNUSED(a),
                               Py_ssize_t nargs, PyObject *kwnames)
{
    if (no_args("_read_ready", nargs, kwnames) < 0)
        return NULL;
    bro_state *st = PyType_GetModuleState(cls);
    PyObject **s = st->aio_tr_str;
    tr_fields *f = F(self, st);
    if (f->conn_lost)
        Py_RETURN_NONE;
    PyObject *protocol = need(f->protocol, "_protocol");
    PyObject *loop = need(f->loop, "_loop");
    if (protocol == NULL || loop == NULL)
        return NULL;
    Py_INCREF(protocol);
    PyObject *result = NULL;
    if (f->buffered) {
        result = read_buffered(self, s, f->sock_fd, protocol);
        goto done;
    }
    Py_ssize_t max_size = f->max_size ? f->max_size : resolve_max_size(self, s, f);
    if (max_size <= 0) {
        /* An error, or a max_size that is not a positive size: asyncio's own method shows
         * what such a recv() does. */
        if (max_size == 0)
            result = call_inherited(self, cls, s[S_READ_READY], NULL);
        goto done;
    }
    if (f->pending_err) {
        int err = f->pending_err;
        f->pending_err = 0;
        result = read_nothing(self, s, -1, err);
        goto done;
    }
    char *scratch = bro_aio_scratch(st, loop, (size_t)max_size);
    if (scratch == NULL)
        goto done;
    if (f->stream && read_stream(self, st, f, scratch, protocol, max_size, &result))
        goto done;
    PyObject *data = NULL;
    ssize_t n;
    if (f->big_reads) {
        Py_ssize_t want = max_size < DIRECT_READ_MAX ? max_size : DIRECT_READ_MAX;
        if (f->read_hint > 0 && f->read_hint + READ_SLACK < want)
            want = f->read_hint + READ_SLACK; /* see READ_SLACK */
        data = PyBytes_FromStringAndSize(NULL, want);
        if (data == NULL)
            goto done;
        n = recv(f->sock_fd, PyBytes_AS_STRING(data), (size_t)want, 0);
        if (n == want && want < max_size) {
            ssize_t m = recv_rest(f, scratch, max_size - want);
            if (m > 0) {
                if (_PyBytes_Resize(&data, n + m) < 0)
                    goto done;
                memcpy(PyBytes_AS_STRING(data) + n, scratch, (size_t)m);
                n += m;
            }
        }
    } else {
        n = recv(f->sock_fd, scratch, (size_t)max_size, 0);
        if (n > 0) {
            data = PyBytes_FromStringAndSize(scratch, n);
            if (data == NULL)
                goto done;
        }
    }
    if (n <= 0) {
        int err = errno;
        Py_XDECREF(data);
        result = read_nothing(self, s, n, err);
        goto done;
    }
    f->big_reads = n >= DIRECT_READ_MIN && n < DIRECT_READ_MAX;
    f->read_hint = f->big_reads ? n : 0;
    if (PyBytes_GET_SIZE(data) - n <= READ_SLACK) {
        /* The guess held (or the read filled the object): no memory to give back, so end the
         * fresh, unhashed, unshared object early instead of calling realloc. */
        Py_SET_SIZE(data, n);
        PyBytes_AS_STRING(data)[n] = '\0';
    }
    else if (_PyBytes_Resize(&data, n) < 0)
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

static int append_bytes(PyObject *buffer, const char *p, Py_ssize_t n)
{
    Py_ssize_t old = PyByteArray_GET_SIZE(buffer);
    if (PyByteArray_Resize(buffer, old + n) < 0)
        return -1;
    memcpy(PyByteArray_AS_STRING(buffer) + old, p, (size_t)n);
    return 0;
}

/* Arms loop._add_writer(fd, self._write_ready): the socket is full. */
static int arm_writer(PyObject *self, PyObject **s, tr_fields *f)
{
    PyObject *loop = need(f->loop, "_loop");
    if (loop == NULL)
        return -1;
    Py_INCREF(loop);
    PyObject *cb = PyObject_GetAttr(self, s[S_WRITE_READY]);
    PyObject *fdo = PyLong_FromLong(f->sock_fd);
    int r = -1;
    if (cb != NULL && fdo != NULL) {
        PyObject *a[3] = {loop, fdo, cb};
        PyObject *h =
            PyObject_VectorcallMethod(s[S_ADD_WRITER], a, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
        if (h != NULL) {
            Py_DECREF(h);
            r = 0;
        }
    }
    Py_XDECREF(cb);
    Py_XDECREF(fdo);
    Py_DECREF(loop);
    return r;
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
        PyErr_Format(PyExc_TypeError, "data argument must be a bytes-like object, not '%.200s'",
                     Py_TYPE(data)->tp_name);
        return NULL;
    }
    bro_state *st = PyType_GetModuleState(cls);
    PyObject **s = st->aio_tr_str;
    tr_fields *f = F(self, st);
    if (f->eof) {
        PyErr_SetString(PyExc_RuntimeError, "Cannot call write() after write_eof()");
        return NULL;
    }
    if (f->empty_waiter != NULL && f->empty_waiter != Py_None) {
        PyErr_SetString(PyExc_RuntimeError, "unable to write; sendfile is in progress");
        return NULL;
    }
    PyObject *buffer = f->buffer;
    if (f->conn_lost || buffer == NULL || !PyByteArray_CheckExact(buffer))
        return call_inherited(self, cls, s[S_WRITE], data);
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) {
        PyErr_Clear();
        return call_inherited(self, cls, s[S_WRITE], data); /* non-contiguous memoryview */
    }
    Py_INCREF(buffer);
    PyObject *result = NULL;
    const char *p = view.buf;
    Py_ssize_t len = view.len;
    if (len == 0) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    if (PyByteArray_GET_SIZE(buffer) == 0) {
        ssize_t n = send(f->sock_fd, p, (size_t)len, MSG_NOSIGNAL);
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
        if (arm_writer(self, s, f) < 0)
            goto done;
    }
    if (append_bytes(buffer, p, len) < 0)
        goto done;
    if (call_method(self, s[S_MAYBE_PAUSE], NULL, NULL) < 0)
        goto done;
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&view);
    Py_DECREF(buffer);
    return result;
}

/* loop._remove_writer(fd) */
static int remove_writer(PyObject **s, tr_fields *f)
{
    PyObject *loop = need(f->loop, "_loop");
    if (loop == NULL)
        return -1;
    PyObject *fdo = PyLong_FromLong(f->sock_fd);
    if (fdo == NULL)
        return -1;
    Py_INCREF(loop);
    int r = call_method(loop, s[S_REMOVE_WRITER], fdo, NULL);
    Py_DECREF(loop);
    Py_DECREF(fdo);
    return r;
}

/* _write_ready(): the writer callback -- sends what is queued, as asyncio's does. */
static PyObject *tr_write_ready(PyObject *self, PyTypeObject *cls, PyObject *const *Py_UNUSED(a),
                                Py_ssize_t nargs, PyObject *kwnames)
{
    if (no_args("_write_ready", nargs, kwnames) < 0)
        return NULL;
    bro_state *st = PyType_GetModuleState(cls);
    PyObject **s = st->aio_tr_str;
    tr_fields *f = F(self, st);
    if (f->conn_lost)
        Py_RETURN_NONE;
    PyObject *buffer = need(f->buffer, "_buffer");
    if (buffer == NULL)
        return NULL;
    if (!PyByteArray_CheckExact(buffer)) {
        /* Not the bytearray of asyncio 3.11 (3.12 queues a deque): asyncio's own method. */
        return call_inherited(self, cls, s[S_WRITE_READY], NULL);
    }
    Py_INCREF(buffer);
    PyObject *result = NULL;
    ssize_t n = send(f->sock_fd, PyByteArray_AS_STRING(buffer),
                     (size_t)PyByteArray_GET_SIZE(buffer), MSG_NOSIGNAL);
    if (n < 0 && !(errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
        PyErr_SetFromErrno(PyExc_OSError);
        PyObject *exc = take_exception();
        if (exc == NULL)
            goto done;
        PyObject *msg = NULL;
        if (remove_writer(s, f) == 0 && PyByteArray_Resize(buffer, 0) == 0 &&
            (msg = PyUnicode_FromString("Fatal write error on socket transport")) != NULL &&
            call_method(self, s[S_FATAL_ERROR], exc, msg) == 0) {
            PyObject *w = f->empty_waiter;
            if (w == NULL || w == Py_None ||
                call_method(Py_NewRef(w), s[S_SET_EXCEPTION], exc, NULL) == 0)
                result = Py_NewRef(Py_None);
            if (w != NULL && w != Py_None)
                Py_DECREF(w);
        }
        Py_XDECREF(msg);
        Py_DECREF(exc);
        goto done;
    }
    if (n > 0 && PySequence_DelSlice(buffer, 0, n) < 0)
        goto done;
    if (call_method(self, s[S_MAYBE_RESUME], NULL, NULL) < 0) /* may append to the buffer */
        goto done;
    if (PyByteArray_GET_SIZE(buffer) == 0) {
        if (remove_writer(s, f) < 0)
            goto done;
        PyObject *w = f->empty_waiter;
        if (w != NULL && w != Py_None) {
            Py_INCREF(w);
            int r = call_method(w, s[S_SET_RESULT], Py_None, NULL);
            Py_DECREF(w);
            if (r < 0)
                goto done;
        }
        if (f->closing) {
            if (call_method(self, s[S_CALL_CONN_LOST], Py_None, NULL) < 0)
                goto done;
        } else if (f->eof && shutdown(f->sock_fd, SHUT_WR) < 0) {
            PyErr_SetFromErrno(PyExc_OSError);
            goto done;
        }
    }
    result = Py_NewRef(Py_None);
done:
    Py_DECREF(buffer);
    return result;
}

/* is_closing(): asyncio's streams ask it on every drain(). */
static PyObject *tr_is_closing(PyObject *self, PyTypeObject *cls, PyObject *const *Py_UNUSED(a),
                               Py_ssize_t nargs, PyObject *kwnames)
{
    if (no_args("is_closing", nargs, kwnames) < 0)
        return NULL;
    bro_state *st = PyType_GetModuleState(cls);
    return PyBool_FromLong(F(self, st)->closing);
}

/* The max_size property: asyncio's class attribute until one is assigned.  A positive size
 * goes to f->max_size for the C reader; anything else is kept as assigned and the reader falls
 * back to asyncio's method, which does with it whatever asyncio does. */
static bro_state *state_of(PyObject *self)
{
    PyObject *module = PyType_GetModuleByDef(Py_TYPE(self), &bro_module_def);
    return module ? PyModule_GetState(module) : NULL;
}

static PyObject *max_size_get(PyObject *self, void *Py_UNUSED(closure))
{
    bro_state *st = state_of(self);
    if (st == NULL)
        return NULL;
    PyObject *v = F(self, st)->max_size_obj;
    return v ? Py_NewRef(v) : PyLong_FromSsize_t(st->aio_tr_max_default);
}

static int max_size_set(PyObject *self, PyObject *v, void *Py_UNUSED(closure))
{
    bro_state *st = state_of(self);
    if (st == NULL)
        return -1;
    tr_fields *f = F(self, st);
    Py_ssize_t n = 0;
    if (v != NULL && PyLong_Check(v)) {
        n = PyLong_AsSsize_t(v);
        if (n == -1 && PyErr_Occurred()) {
            PyErr_Clear();
            n = 0;
        }
    }
    /* Deleting it restores the class's value, which the next read looks up again. */
    f->max_size = n > 0 ? n : 0;
    Py_XSETREF(f->max_size_obj, Py_XNewRef(v));
    return 0;
}

static PyGetSetDef tr_getset[] = {
    {"max_size", max_size_get, max_size_set, "The most one recv() asks for.", NULL},
    {NULL},
};

static PyMethodDef tr_methods[] = {
    {"_write_ready", (PyCFunction)(void (*)(void))tr_write_ready,
     METH_METHOD | METH_FASTCALL | METH_KEYWORDS, "The writer callback (C)."},
    {"is_closing", (PyCFunction)(void (*)(void))tr_is_closing,
     METH_METHOD | METH_FASTCALL | METH_KEYWORDS, "True if the transport is closing or closed."},
    {"_read_ready", (PyCFunction)(void (*)(void))tr_read_ready,
     METH_METHOD | METH_FASTCALL | METH_KEYWORDS, "The reader callback (C)."},
    {"write", (PyCFunction)(void (*)(void))tr_write, METH_METHOD | METH_FASTCALL | METH_KEYWORDS,
     "write(data): send now if nothing is queued, else queue (C)."},
    {NULL},
};

/* aio_make_transport_type(base): the C-accelerated subclass of asyncio's socket transport.
 * The layout extends the base's, so the spec is filled in here (on the stack: the type
 * object keeps copies of what it needs). */
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
    PyObject *dflt = PyObject_GetAttr(base, st->aio_tr_str[S_MAX_SIZE]);
    if (dflt == NULL)
        return NULL;
    Py_ssize_t max_default = PyLong_Check(dflt) ? PyLong_AsSsize_t(dflt) : 0;
    Py_DECREF(dflt);
    if (max_default <= 0) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError,
                            "aio_make_transport_type(): base.max_size is not a size");
        return NULL;
    }
    st->aio_tr_max_default = max_default;
    if (st->aio_streams == NULL) {
        /* What the streams path recognises (see stream_target): asyncio's own classes and
         * methods, looked up once. */
        PyObject *m = PyImport_ImportModule("asyncio.streams");
        if (m == NULL)
            return NULL;
        PyObject *sr = PyObject_GetAttrString(m, "StreamReader");
        PyObject *srp = PyObject_GetAttrString(m, "StreamReaderProtocol");
        Py_DECREF(m);
        PyObject *dr = srp ? PyObject_GetAttr(srp, st->aio_tr_str[S_DATA_RECEIVED]) : NULL;
        PyObject *fd = sr ? PyObject_GetAttr(sr, st->aio_tr_str[S_FEED_DATA]) : NULL;
        if (sr != NULL && dr != NULL && fd != NULL)
            st->aio_streams = PyTuple_Pack(3, sr, dr, fd);
        Py_XDECREF(sr);
        Py_XDECREF(srp);
        Py_XDECREF(dr);
        Py_XDECREF(fd);
        if (st->aio_streams == NULL)
            return NULL;
    }
    Py_ssize_t off = ((PyTypeObject *)base)->tp_basicsize;
    off = (off + (Py_ssize_t) _Alignof(tr_fields) - 1) & ~((Py_ssize_t) _Alignof(tr_fields) - 1);
    if (st->aio_tr_off != 0 && st->aio_tr_off != off) {
        PyErr_SetString(PyExc_RuntimeError, "aio_make_transport_type(): layout changed");
        return NULL;
    }
#define M(name, type, field) {name, type, off + (Py_ssize_t)offsetof(tr_fields, field), 0, NULL}
    PyMemberDef members[] = {
        M("_protocol", T_OBJECT_EX, protocol),
        M("_loop", T_OBJECT_EX, loop),
        M("_buffer", T_OBJECT_EX, buffer),
        M("_empty_waiter", T_OBJECT_EX, empty_waiter),
        M("_broomio_max_size", T_OBJECT_EX, max_size_obj),
        M("_conn_lost", T_PYSSIZET, conn_lost),
        M("_sock_fd", T_INT, sock_fd),
        M("_eof", T_BOOL, eof),
        M("_broomio_buffered", T_BOOL, buffered),
        M("_closing", T_BOOL, closing),
        M("_broomio_stream", T_BOOL, stream),
        M("_broomio_big_reads", T_BOOL, big_reads),
        {NULL},
    };
#undef M
    PyType_Slot slots[] = {
        {Py_tp_methods, tr_methods},
        {Py_tp_members, members},
        {Py_tp_getset, tr_getset},
        {Py_tp_doc, "asyncio's socket transport with its per-message paths in C."},
        {0, NULL},
    };
    PyType_Spec spec = {
        .name = "broomio._engine.AioSocketTransport",
        .basicsize = (int)(off + (Py_ssize_t)sizeof(tr_fields)),
        /* No Py_TPFLAGS_HAVE_GC here: the type inherits the flag and the traversal from its
         * Python base; that traversal also visits the object members above, as it does a
         * class's __slots__. */
        .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
        .slots = slots,
    };
    st->aio_tr_off = off;
    return PyType_FromModuleAndSpec(module, &spec, base);
}
