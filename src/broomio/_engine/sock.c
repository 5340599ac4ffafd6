/*
 * sock.c -- async sockets: SocketCore and its operation awaitables.
 *
 * SocketCore wraps a stdlib socket object (which owns the fd; it is switched to non-blocking
 * mode) and implements the hot operations -- recv, recv_into, send, send_all -- as raw
 * syscalls on the fd, plus a generic "call this stdlib method until it stops raising
 * BlockingIOError" operation for everything whose address handling the stdlib already does
 * well (accept, connect's completion, recvfrom, sendto, recvmsg, sendmsg, ...).
 *
 * An operation is a SockOp awaitable; its am_send is the state machine of op.c applied to I/O:
 *
 *   1. check cancellation (level-triggered) and the step's fairness budget;
 *   2. if the fd is registered and its readiness bit for this direction is clear, the last
 *      syscall saw EAGAIN (or a short transfer) and no edge has arrived since: park at once;
 *   3. otherwise try the syscall.  Success returns PYGEN_RETURN directly: no scheduler trip.
 *      EAGAIN clears the readiness bit and parks the task in the fd table;
 *   4. when epoll reports an edge, the loop sets the bit and wakes the task, which tries
 *      again.
 *
 * Why a short read may clear the bit: with EPOLLET the kernel reports an edge every time new
 * data is queued on the socket, whether or not the buffer was empty, so "we drained what was
 * there" is as good as EAGAIN and saves the EAGAIN syscall that would otherwise follow every
 * message.  This holds only for a short read of a *stream* that returned data, on a socket
 * that has not hung up: a datagram socket returns one datagram per call however many are
 * queued; an EOF or a pending error is permanent and brings no further edge (once epoll has
 * reported RDHUP/HUP/ERR the slot keeps BRO_HANGUP, and data queued before the FIN comes out
 * of a short read with the EOF still pending); MSG_PEEK leaves the data where it was.  In
 * those cases the bit stays set, or the next receive would wait for an edge that never comes.
 *
 * Writes clear the bit only on EAGAIN.  A short write does not prove the send buffer full
 * (gVisor, for one, returns short writes on a socket that stays writable and then sends no
 * edge), and it costs a single extra syscall per buffer-full episode of a large transfer.
 *
 * Registration: an fd is added to epoll (edge-triggered, both directions) the first time an
 * operation has to wait, in the running loop; the socket remembers that loop, and close()
 * goes through it (bro_fd_forget): waiters get ClosedResourceError, the epoll registration
 * and the fd slot are cleared before the fd number can be reused.
 *
 * Ownership: a SockOp holds strong references to its socket and its argument (data or
 * buffer object); a Py_buffer it acquired is released as soon as the operation completes or
 * the op is cleared.  A deallocated SockOp goes to a small free list in the module state
 * (state.h), so steady-state socket I/O allocates only the bytes objects it returns, however
 * many connections have an operation parked at the same time.
 *
 * Raw fd mode (SocketCore._from_fd): the same operations on a descriptor that is not a
 * socket -- a pipe to a subprocess, a tty -- use read()/write() instead of recv()/send(), and
 * the core owns the fd itself (there is no stdlib object): close() and deallocation close it.
 * Its type is 0, so a short read never clears the read bit: pipes have no datagrams, but
 * whether every write into a pipe brings a fresh edge has changed between kernel versions,
 * so a raw fd is only considered drained on EAGAIN.  Writes to a pipe whose reader is gone
 * fail with EPIPE (Python ignores SIGPIPE), which the stream layer reports as
 * BrokenResourceError.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sys/socket.h>
#include <unistd.h>

#include "loop.h"
#include "poll.h"
#include "structmember.h"
#include "task.h"

#define BRO_SCRATCH_SIZE 65536

/* Receives of at most BRO_SCRATCH_SIZE bytes normally land in the loop's scratch buffer and
 * are then copied into a bytes object of the exact size: one small copy instead of a
 * max_bytes-sized allocation per message.  Once a socket's last receive returned at least
 * BRO_DIRECT_READ_MIN bytes, the copy costs more than the allocation, so the next receive goes
 * straight into a fresh bytes object of the requested size that is then shrunk in place
 * (glibc's realloc splits a shrinking chunk without moving it).  The switch follows the
 * traffic: a small read moves the socket back to the scratch path. */
#define BRO_DIRECT_READ_MIN 4096

/* A direct receive does not allocate the whole request: it allocates what the socket's last
 * receive returned plus BRO_READ_SLACK bytes.  Servers read fixed-size messages far below
 * max_bytes, and with a close guess the final shrink is too small for glibc to split the chunk,
 * so the allocator does one cheap malloc and one free per message instead of also carving and
 * freeing the unused tail of a max_bytes-sized chunk.  The slack makes "the same size again"
 * distinguishable from "the guess was too small": only a receive that fills the guess exactly
 * may have left data queued.  That receive returns what it has (a short receive is always
 * allowed on a stream), is not reported as draining the socket, and resets the guess to the
 * full request, so a growing peer costs one extra short receive, never an extra wait.
 * Datagrams and MSG_PEEK/MSG_OOB receives always allocate the full request: a short buffer
 * would truncate a datagram. */
#define BRO_READ_SLACK 16

typedef struct {
    PyObject_HEAD int fd;
    int family;
    int type;
    uint8_t raw_fd;    /* not a socket: read()/write(), and the core owns (closes) the fd */
    uint8_t big_reads; /* the last receive was large: read into the result directly */
    uint32_t read_hint; /* bytes the last direct receive returned (0: none yet) */
    PyObject *sock;    /* the stdlib socket object that owns the fd */
    bro_loop *loop;    /* the loop whose epoll has the fd registered, or NULL */
    PyObject *weakreflist;
} bro_socket;

enum { SOP_RECV, SOP_RECV_INTO, SOP_SEND, SOP_SEND_ALL, SOP_CALL, SOP_WAIT };
enum { SOP_FRESH, SOP_PARKED, SOP_DONE };

typedef struct {
    PyObject_HEAD uint8_t kind;
    uint8_t state;
    uint8_t dir;
    uint8_t has_view;
    uint8_t stream; /* SocketStream semantics: OSError -> BrokenResourceError */
    int flags;
    Py_ssize_t size;   /* recv: bufsize; recv_into: nbytes */
    Py_ssize_t offset; /* send_all: bytes sent so far */
    bro_socket *sock;  /* strong */
    PyObject *arg;     /* strong: the data/buffer object, or (fn, args) for SOP_CALL */
    PyObject *origin;  /* debug mode: where the op was created (instrument.c), else NULL */
    Py_buffer view;
} bro_sockop;

static const char *sop_names[] = {"recv",     "recv_into",   "send",
                                  "send_all", "socket call", "socket wait"};

/* ---- the awaitable ------------------------------------------------------------------- */

/* Drops the data/buffer as soon as the operation is over, so that an op its awaiter holds on
 * to never keeps a large buffer alive. */
static void sockop_release(bro_sockop *op)
{
    if (op->has_view) {
        PyBuffer_Release(&op->view);
        op->has_view = 0;
    }
    Py_CLEAR(op->arg);
}

static int sockop_clear(bro_sockop *op)
{
    sockop_release(op);
    Py_CLEAR(op->sock);
    Py_CLEAR(op->arg);
    return 0;
}

static int sockop_traverse(bro_sockop *op, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(op));
    Py_VISIT(op->sock);
    Py_VISIT(op->arg);
    return 0;
}

static void sockop_dealloc(bro_sockop *op)
{
    PyTypeObject *tp = Py_TYPE(op);
    PyObject_GC_UnTrack(op);
    if (op->origin != NULL) {
        char what[48];
        PyOS_snprintf(what, sizeof what, "socket %s", sop_names[op->kind]);
        if (op->state == SOP_FRESH)
            bro_debug_never_awaited((PyObject *)op, what, op->origin);
        Py_CLEAR(op->origin);
    }
    sockop_clear(op);
    /* Keep the memory for the next operation (the free list in state.h).  The running
     * loop's state is a cheaper way there than the type's module (if the module was ever
     * loaded twice, the other state's list holds the same layout). */
    bro_loop *loop = bro_running_loop;
    bro_state *st = loop != NULL ? loop->st : PyType_GetModuleState(tp);
    if (st == NULL || !bro_freelist_push(&st->sockop_free, (PyObject *)op))
        tp->tp_free((PyObject *)op);
    Py_DECREF(tp);
}

static bro_sockop *sockop_alloc(bro_socket *s, int kind, int dir)
{
    bro_loop *loop = bro_running_loop;
    bro_state *st;
    if (loop != NULL) {
        st = loop->st;
    } else {
        PyObject *module = PyType_GetModuleByDef(Py_TYPE(s), &bro_module_def);
        if (module == NULL)
            return NULL;
        st = PyModule_GetState(module);
    }
    /* Debug mode: the op remembers where it was created, to warn if it is dropped without
     * an await. */
    PyObject *origin = NULL;
    if (loop != NULL && loop->debug && (origin = bro_debug_origin()) == NULL)
        return NULL;
    bro_sockop *op = (bro_sockop *)bro_freelist_pop(&st->sockop_free, st->sockop_type);
    if (op == NULL && (op = PyObject_GC_New(bro_sockop, st->sockop_type)) == NULL) {
        Py_XDECREF(origin);
        return NULL;
    }
    op->arg = NULL;
    op->origin = origin;
    op->has_view = 0;
    op->kind = (uint8_t)kind;
    op->state = SOP_FRESH;
    op->dir = (uint8_t)dir;
    op->flags = 0;
    op->size = 0;
    op->offset = 0;
    op->stream = 0;
    op->sock = (bro_socket *)Py_NewRef(s);
    PyObject_GC_Track(op);
    return op;
}

/* Drops an op whose construction failed (bad arguments): it is done, not forgotten, so
 * debug mode must not report it as never awaited. */
static void sockop_discard(bro_sockop *op)
{
    op->state = SOP_DONE;
    Py_DECREF(op);
}

enum { TRY_DONE, TRY_AGAIN, TRY_ERROR };

/* The two transfer syscalls: recv/send on a socket, read/write on a raw fd (whose ops always
 * have flags 0, see check_raw_flags). */
static ssize_t sock_read(bro_socket *s, void *buf, size_t len, int flags)
{
    return s->raw_fd ? read(s->fd, buf, len) : recv(s->fd, buf, len, flags);
}

static ssize_t sock_write(bro_socket *s, const void *buf, size_t len, int flags)
{
    return s->raw_fd ? write(s->fd, buf, len) : send(s->fd, buf, len, flags | MSG_NOSIGNAL);
}

static const char *sock_noun(bro_socket *s)
{
    return s->raw_fd ? "file descriptor" : "socket";
}

/* Did a receive of n bytes (wanted: want) leave the socket's receive queue empty?  The
 * caller also checks the slot's BRO_HANGUP bit (see the top of this file). */
static int recv_drained(bro_sockop *op, ssize_t n, Py_ssize_t want)
{
    return n > 0 && n < want && (op->sock->type & 0xf) == SOCK_STREAM &&
           !(op->flags & (MSG_PEEK | MSG_OOB));
}

static int is_again(int err)
{
    return err == EAGAIN || err == EWOULDBLOCK;
}

/* One attempt at the operation.  TRY_DONE sets *res; `drained` reports a short transfer. */
static int sockop_try(bro_sockop *op, bro_loop *loop, PyObject **res, int *drained)
{
    *drained = 0;
    for (;;) {
        switch (op->kind) {
        case SOP_RECV: {
            Py_ssize_t want = op->size;
            if (want <= BRO_SCRATCH_SIZE && !op->sock->big_reads) {
                if (loop->scratch == NULL &&
                    (loop->scratch = PyMem_Malloc(BRO_SCRATCH_SIZE)) == NULL) {
                    PyErr_NoMemory();
                    return TRY_ERROR;
                }
                ssize_t n = sock_read(op->sock, loop->scratch, (size_t)want, op->flags);
                if (n < 0)
                    break;
                if (n > want) /* MSG_TRUNC reports the datagram's real length */
                    n = want;
                *drained = recv_drained(op, n, want);
                op->sock->big_reads = n >= BRO_DIRECT_READ_MIN;
                *res = PyBytes_FromStringAndSize(loop->scratch, n);
                return *res ? TRY_DONE : TRY_ERROR;
            }
            bro_socket *s = op->sock;
            Py_ssize_t alloc = want;
            int stream = (s->type & 0xf) == SOCK_STREAM && !(op->flags & (MSG_PEEK | MSG_OOB));
            if (stream && s->read_hint > 0 && (Py_ssize_t)s->read_hint + BRO_READ_SLACK < want)
                alloc = (Py_ssize_t)s->read_hint + BRO_READ_SLACK;
            PyObject *bytes = PyBytes_FromStringAndSize(NULL, alloc);
            if (bytes == NULL)
                return TRY_ERROR;
            ssize_t n = sock_read(s, PyBytes_AS_STRING(bytes), (size_t)alloc, op->flags);
            if (n < 0) {
                int err = errno;
                Py_DECREF(bytes);
                errno = err;
                break;
            }
            if (n > alloc)
                n = alloc;
            *drained = recv_drained(op, n, alloc);
            s->big_reads = n >= BRO_DIRECT_READ_MIN;
            /* A filled guess resets to the full request (see BRO_READ_SLACK). */
            s->read_hint = (n == alloc && alloc < want) || n > UINT32_MAX ? 0 : (uint32_t)n;
            if (n > 0 && alloc - n <= BRO_READ_SLACK) {
                /* The guess held: give back no memory, just end the object early.  A fresh
                 * bytes object that nothing else has seen may shrink its size in place; its
                 * hash is not computed yet. */
                Py_SET_SIZE(bytes, n);
                PyBytes_AS_STRING(bytes)[n] = '\0';
            }
            else if (n != alloc && _PyBytes_Resize(&bytes, n) < 0)
                return TRY_ERROR;
            *res = bytes;
            return TRY_DONE;
        }
        case SOP_RECV_INTO: {
            ssize_t n = sock_read(op->sock, op->view.buf, (size_t)op->size, op->flags);
            if (n < 0)
                break;
            if (n > op->size)
                n = op->size;
            *drained = recv_drained(op, n, op->size);
            *res = PyLong_FromSsize_t(n);
            return *res ? TRY_DONE : TRY_ERROR;
        }
        case SOP_SEND: {
            ssize_t n = sock_write(op->sock, op->view.buf, (size_t)op->view.len, op->flags);
            if (n < 0)
                break;
            *res = PyLong_FromSsize_t(n);
            return *res ? TRY_DONE : TRY_ERROR;
        }
        case SOP_SEND_ALL: {
            while (op->offset < op->view.len) {
                ssize_t n = sock_write(op->sock, (char *)op->view.buf + op->offset,
                                       (size_t)(op->view.len - op->offset), op->flags);
                if (n < 0)
                    goto failed;
                op->offset += n;
            }
            *res = Py_NewRef(Py_None);
            return TRY_DONE;
        }
        case SOP_CALL: {
            PyObject *fn = PyTuple_GET_ITEM(op->arg, 0);
            PyObject *args = PyTuple_GET_ITEM(op->arg, 1);
            PyObject *r = PyObject_Call(fn, args, NULL);
            if (r != NULL) {
                *res = r;
                return TRY_DONE;
            }
            if (PyErr_ExceptionMatches(PyExc_BlockingIOError)) {
                PyErr_Clear();
                return TRY_AGAIN;
            }
            if (PyErr_ExceptionMatches(PyExc_InterruptedError)) {
                PyErr_Clear();
                continue;
            }
            return TRY_ERROR;
        }
        case SOP_WAIT:
            /* Waits for an edge only: reached after a wake-up. */
            *res = Py_NewRef(Py_None);
            return TRY_DONE;
        }
    failed:
        if (errno == EINTR)
            continue;
        if (is_again(errno))
            return TRY_AGAIN;
        PyErr_SetFromErrno(PyExc_OSError);
        return TRY_ERROR;
    }
}

/* SocketStream's contract: a failed transfer (reset, broken pipe...) is BrokenResourceError,
 * with the OSError as its __cause__.  Done here so the stream's hot path has no Python
 * frame of its own. */
static void sockop_translate(bro_sockop *op)
{
    if (!op->stream || !PyErr_ExceptionMatches(PyExc_OSError))
        return;
    bro_loop *loop = bro_running_loop;
    if (loop == NULL)
        return;
    PyObject *exc = bro_fetch_exception();
    PyObject *broken =
        PyObject_CallFunction(loop->st->BrokenResourceError, "s",
                              op->dir == BRO_READABLE ? "receive failed" : "send failed");
    if (broken == NULL) {
        Py_DECREF(exc);
        return;
    }
    PyException_SetCause(broken, exc); /* steals exc */
    PyErr_SetObject((PyObject *)Py_TYPE(broken), broken);
    Py_DECREF(broken);
}

static PySendResult sockop_fail(bro_sockop *op)
{
    sockop_translate(op);
    op->state = SOP_DONE;
    sockop_release(op);
    return PYGEN_ERROR;
}

static PySendResult sockop_park(bro_sockop *op, bro_task *t, bro_fd_slot *slot, PyObject **res)
{
    bro_loop *loop = t->loop;
    bro_socket *s = op->sock;
    bro_task **waiter = op->dir == BRO_READABLE ? &slot->reader : &slot->writer;
    if (*waiter != NULL && *waiter != t) {
        PyErr_Format(loop->st->BusyResourceError, "another task is already %s this %s",
                     op->dir == BRO_READABLE ? "receiving on" : "sending on", sock_noun(s));
        return sockop_fail(op);
    }
    if (t->cancel_pending) {
        bro_raise_cancelled(loop->st);
        return sockop_fail(op);
    }
    bro_task_void_stale_wait(t);
    if (!slot->registered || s->loop != loop) {
        int was_registered = slot->registered;
        if (s->loop != NULL && s->loop != loop) {
            /* Used by another loop before: its registration must not linger. */
            if (bro_fd_forget(s->loop, s->fd) < 0)
                return sockop_fail(op);
        }
        if (bro_poller_arm(loop->poller, s->fd, was_registered) < 0) {
            PyErr_SetFromErrno(PyExc_OSError);
            return sockop_fail(op);
        }
        slot->registered = 1;
        slot->ready = 0;
        Py_XSETREF(s->loop, (bro_loop *)Py_NewRef(loop));
    }
    *waiter = t;
    t->fd = s->fd;
    t->wait_dir = op->dir;
    bro_task_park(t, BRO_WAIT_FD, 1);
    op->state = SOP_PARKED;
    *res = Py_NewRef(loop->st->parked);
    return PYGEN_NEXT;
}

static PySendResult sockop_send(bro_sockop *op, PyObject *Py_UNUSED(arg), PyObject **res)
{
    *res = NULL;
    bro_loop *loop = bro_running_loop;
    bro_task *t = loop ? loop->current : NULL;
    if (op->state == SOP_DONE) {
        PyErr_Format(PyExc_RuntimeError, "cannot reuse an already awaited broomio %s",
                     sop_names[op->kind]);
        return PYGEN_ERROR;
    }
    if (t == NULL) {
        PyErr_Format(PyExc_RuntimeError,
                     "broomio's %s must be awaited inside a task run by a broomio loop",
                     sop_names[op->kind]);
        return sockop_fail(op);
    }
    bro_socket *s = op->sock;
    if (op->state == SOP_PARKED) {
        if (t->wake_failed) {
            PyObject *exc = t->wake;
            t->wake = NULL;
            t->wake_failed = 0;
            PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
            Py_DECREF(exc);
            return sockop_fail(op);
        }
        Py_CLEAR(t->wake);
        op->state = SOP_FRESH;
    } else {
        if (t->cancel_pending) {
            bro_raise_cancelled(loop->st);
            return sockop_fail(op);
        }
        if (--loop->budget < 0) {
            /* Out of budget: yield once before doing anything, so nothing is consumed. */
            if (bro_ready_push(loop, (PyObject *)t) < 0)
                return sockop_fail(op);
            t->state = BRO_TASK_READY;
            t->wait = BRO_WAIT_READY;
            op->state = SOP_PARKED;
            *res = Py_NewRef(loop->st->parked);
            return PYGEN_NEXT;
        }
    }
    if (s->fd < 0) {
        PyErr_Format(loop->st->ClosedResourceError, "the %s was closed", sock_noun(s));
        return sockop_fail(op);
    }
    bro_fd_slot *slot = bro_fd_slot_get(&loop->fds, s->fd);
    if (slot == NULL)
        return sockop_fail(op);
    if (op->kind == SOP_WAIT && op->state == SOP_FRESH && op->offset == 0) {
        op->offset = 1; /* the next resumption is the edge we wait for */
        return sockop_park(op, t, slot, res);
    }
    bro_task *other = op->dir == BRO_READABLE ? slot->reader : slot->writer;
    if (other != NULL && other != t) {
        /* Checked before any syscall: a second receiver must not take the data the first
         * one is waiting for. */
        PyErr_Format(loop->st->BusyResourceError, "another task is already %s this %s",
                     op->dir == BRO_READABLE ? "receiving on" : "sending on", sock_noun(s));
        return sockop_fail(op);
    }
    if (slot->registered && s->loop == loop && !(slot->ready & op->dir))
        return sockop_park(op, t, slot, res);
    int drained;
    int tried = sockop_try(op, loop, res, &drained);
    if (tried != TRY_ERROR) {
        if (s->fd < 0) {
            Py_CLEAR(*res);
            PyErr_Format(loop->st->ClosedResourceError, "the %s was closed", sock_noun(s));
            return sockop_fail(op);
        }
        if ((slot = bro_fd_slot_get(&loop->fds, s->fd)) == NULL) {
            Py_CLEAR(*res);
            return sockop_fail(op);
        }
    }
    switch (tried) {
    case TRY_DONE:
        if (drained && !(slot->ready & BRO_HANGUP))
            slot->ready &= (uint8_t)~op->dir;
        op->state = SOP_DONE;
        sockop_release(op);
        return PYGEN_RETURN;
    case TRY_AGAIN:
        slot->ready &= (uint8_t)~op->dir;
        return sockop_park(op, t, slot, res);
    default:
        return sockop_fail(op);
    }
}

static PyObject *sockop_iternext(bro_sockop *op)
{
    return bro_aw_iternext((PyObject *)op, (sendfunc)sockop_send);
}

static PyObject *sockop_send_method(bro_sockop *op, PyObject *arg)
{
    return bro_aw_send((PyObject *)op, arg, (sendfunc)sockop_send);
}

static PyObject *sockop_throw(bro_sockop *op, PyObject *const *args, Py_ssize_t nargs)
{
    op->state = SOP_DONE;
    sockop_release(op);
    return bro_aw_throw(args, nargs);
}

static PyObject *sockop_close(bro_sockop *op, PyObject *Py_UNUSED(ignored))
{
    op->state = SOP_DONE;
    sockop_release(op);
    Py_RETURN_NONE;
}

static PyObject *sockop_await(PyObject *self)
{
    return Py_NewRef(self);
}

static PyObject *sockop_repr(bro_sockop *op)
{
    return PyUnicode_FromFormat("<broomio socket %s awaitable>", sop_names[op->kind]);
}

static PyMethodDef sockop_methods[] = {
    {"send", (PyCFunction)sockop_send_method, METH_O, NULL},
    {"throw", (PyCFunction)(void (*)(void))sockop_throw, METH_FASTCALL, NULL},
    {"close", (PyCFunction)sockop_close, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot sockop_slots[] = {
    {Py_tp_doc, "An async socket operation."},
    {Py_am_await, sockop_await},
    {Py_am_send, sockop_send},
    {Py_tp_iter, sockop_await},
    {Py_tp_iternext, sockop_iternext},
    {Py_tp_methods, sockop_methods},
    {Py_tp_dealloc, sockop_dealloc},
    {Py_tp_traverse, sockop_traverse},
    {Py_tp_clear, sockop_clear},
    {Py_tp_repr, sockop_repr},
    {0, NULL},
};

static PyType_Spec sockop_spec = {
    .name = "broomio._engine.SocketOperation",
    .basicsize = sizeof(bro_sockop),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE |
             Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = sockop_slots,
};

/* ---- SocketCore ---------------------------------------------------------------------- */

static int as_int(PyObject *obj, int *out)
{
    long v = PyLong_AsLong(obj);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (v < INT_MIN || v > INT_MAX) {
        PyErr_SetString(PyExc_OverflowError, "value does not fit in a C int");
        return -1;
    }
    *out = (int)v;
    return 0;
}

static int sock_check_open(bro_socket *s)
{
    if (s->fd >= 0)
        return 0;
    PyObject *module = PyType_GetModuleByDef(Py_TYPE(s), &bro_module_def);
    if (module == NULL)
        return -1;
    bro_state *st = PyModule_GetState(module);
    PyErr_Format(st->ClosedResourceError, "the %s is closed", sock_noun(s));
    return -1;
}

/* read()/write() take no flags: a raw fd refuses them rather than silently ignoring them. */
static int check_raw_flags(bro_socket *s, int flags)
{
    if (s->raw_fd && flags != 0) {
        PyErr_SetString(PyExc_ValueError, "flags are only supported on sockets, not on a "
                                          "raw file descriptor");
        return -1;
    }
    return 0;
}

static int parse_flags(bro_socket *s, PyObject *const *args, Py_ssize_t nargs, Py_ssize_t i,
                       int *flags)
{
    *flags = 0;
    if (nargs <= i)
        return 0;
    if (as_int(args[i], flags) < 0)
        return -1;
    return check_raw_flags(s, *flags);
}

static PyObject *sock_recv(bro_socket *s, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "recv(bufsize, flags=0)");
        return NULL;
    }
    if (sock_check_open(s) < 0)
        return NULL;
    if (!PyLong_Check(args[0])) {
        PyErr_Format(PyExc_TypeError, "recv() argument 'bufsize' must be int, not %.200s",
                     Py_TYPE(args[0])->tp_name);
        return NULL;
    }
    Py_ssize_t size = PyLong_AsSsize_t(args[0]);
    if (size == -1 && PyErr_Occurred())
        return NULL;
    if (size < 0) {
        PyErr_SetString(PyExc_ValueError, "negative buffersize in recv");
        return NULL;
    }
    int flags;
    if (parse_flags(s, args, nargs, 1, &flags) < 0)
        return NULL;
    bro_sockop *op = sockop_alloc(s, SOP_RECV, BRO_READABLE);
    if (op == NULL)
        return NULL;
    op->size = size;
    op->flags = flags;
    return (PyObject *)op;
}

static PyObject *sock_recv_into(bro_socket *s, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"buffer", "nbytes", "flags", NULL};
    PyObject *buffer;
    Py_ssize_t nbytes = 0;
    int flags = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|ni:recv_into", kwlist, &buffer, &nbytes,
                                     &flags))
        return NULL;
    if (sock_check_open(s) < 0)
        return NULL;
    if (nbytes < 0) {
        PyErr_SetString(PyExc_ValueError, "negative buffersize in recv_into");
        return NULL;
    }
    if (check_raw_flags(s, flags) < 0)
        return NULL;
    bro_sockop *op = sockop_alloc(s, SOP_RECV_INTO, BRO_READABLE);
    if (op == NULL)
        return NULL;
    if (PyObject_GetBuffer(buffer, &op->view, PyBUF_WRITABLE) < 0) {
        sockop_discard(op);
        return NULL;
    }
    op->has_view = 1;
    if (nbytes == 0)
        nbytes = op->view.len;
    if (nbytes > op->view.len) {
        PyErr_SetString(PyExc_ValueError, "buffer too small for requested bytes");
        sockop_discard(op);
        return NULL;
    }
    op->size = nbytes;
    op->flags = flags;
    op->arg = Py_NewRef(buffer);
    return (PyObject *)op;
}

static PyObject *sock_send_common(bro_socket *s, PyObject *const *args, Py_ssize_t nargs, int kind,
                                  const char *name)
{
    if (nargs < 1 || nargs > 2) {
        PyErr_Format(PyExc_TypeError, "%s(data, flags=0)", name);
        return NULL;
    }
    if (sock_check_open(s) < 0)
        return NULL;
    int flags;
    if (parse_flags(s, args, nargs, 1, &flags) < 0)
        return NULL;
    bro_sockop *op = sockop_alloc(s, kind, BRO_WRITABLE);
    if (op == NULL)
        return NULL;
    if (PyBytes_CheckExact(args[0])) {
        /* Bytes are immutable and never move, so the op reads them through its strong
         * reference in arg; filling and releasing a Py_buffer (about 100 instructions per
         * send) is left to the other buffer types. */
        op->view.buf = PyBytes_AS_STRING(args[0]);
        op->view.len = PyBytes_GET_SIZE(args[0]);
    } else {
        if (PyObject_GetBuffer(args[0], &op->view, PyBUF_SIMPLE) < 0) {
            sockop_discard(op);
            return NULL;
        }
        op->has_view = 1;
    }
    op->flags = flags;
    op->arg = Py_NewRef(args[0]);
    return (PyObject *)op;
}

static PyObject *sock_send(bro_socket *s, PyObject *const *args, Py_ssize_t nargs)
{
    return sock_send_common(s, args, nargs, SOP_SEND, "send");
}

static PyObject *sock_send_all(bro_socket *s, PyObject *const *args, Py_ssize_t nargs)
{
    return sock_send_common(s, args, nargs, SOP_SEND_ALL, "send_all");
}

/* The SocketStream hot paths (stream.c): recv / send_all with stream error semantics.  The
 * caller has already checked that sock is a SocketCore and that size is positive. */
PyObject *bro_sock_stream_recv(PyObject *sock, Py_ssize_t size)
{
    bro_socket *s = (bro_socket *)sock;
    if (sock_check_open(s) < 0)
        return NULL;
    bro_sockop *op = sockop_alloc(s, SOP_RECV, BRO_READABLE);
    if (op == NULL)
        return NULL;
    op->size = size;
    op->stream = 1;
    return (PyObject *)op;
}

PyObject *bro_sock_stream_send_all(PyObject *sock, PyObject *data)
{
    bro_sockop *op = (bro_sockop *)sock_send_all((bro_socket *)sock, &data, 1);
    if (op != NULL)
        op->stream = 1;
    return (PyObject *)op;
}

/* _io(direction, fn, *args): awaitable calling fn(*args) until it does not raise
 * BlockingIOError, waiting for the socket to become readable (0) or writable (1) between
 * attempts. */
static PyObject *sock_io(bro_socket *s, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 2 || !PyLong_Check(args[0]) || !PyCallable_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "_io(direction, fn, *args)");
        return NULL;
    }
    if (sock_check_open(s) < 0)
        return NULL;
    long dir = PyLong_AsLong(args[0]);
    if (dir == -1 && PyErr_Occurred())
        return NULL;
    PyObject *rest = PyTuple_New(nargs - 2);
    if (rest == NULL)
        return NULL;
    for (Py_ssize_t i = 2; i < nargs; i++)
        PyTuple_SET_ITEM(rest, i - 2, Py_NewRef(args[i]));
    PyObject *call = PyTuple_Pack(2, args[1], rest);
    Py_DECREF(rest);
    if (call == NULL)
        return NULL;
    bro_sockop *op = sockop_alloc(s, SOP_CALL, dir ? BRO_WRITABLE : BRO_READABLE);
    if (op == NULL) {
        Py_DECREF(call);
        return NULL;
    }
    op->arg = call;
    return (PyObject *)op;
}

/* _wait(direction): awaitable that waits for the next readiness edge (used by connect). */
static PyObject *sock_wait(bro_socket *s, PyObject *arg)
{
    long dir = PyLong_AsLong(arg);
    if (dir == -1 && PyErr_Occurred())
        return NULL;
    if (sock_check_open(s) < 0)
        return NULL;
    return (PyObject *)sockop_alloc(s, SOP_WAIT, dir ? BRO_WRITABLE : BRO_READABLE);
}

static int sock_forget(bro_socket *s)
{
    int r = 0;
    if (s->loop != NULL && s->fd >= 0)
        r = bro_fd_forget(s->loop, s->fd);
    Py_CLEAR(s->loop);
    return r;
}

/* Closes a raw fd the core owns.  EINTR still closed it (Linux), so it is not an error. */
static int sock_close_raw(bro_socket *s)
{
    int fd = s->fd;
    s->fd = -1;
    if (close(fd) < 0 && errno != EINTR) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    return 0;
}

static PyObject *sock_close(bro_socket *s, PyObject *Py_UNUSED(ignored))
{
    if (s->fd < 0)
        Py_RETURN_NONE;
    int r = sock_forget(s);
    if (s->raw_fd) {
        if (sock_close_raw(s) < 0 || r < 0)
            return NULL;
        Py_RETURN_NONE;
    }
    s->fd = -1;
    PyObject *res = s->sock ? PyObject_CallMethod(s->sock, "close", NULL) : Py_NewRef(Py_None);
    if (res == NULL || r < 0) {
        Py_XDECREF(res);
        return NULL;
    }
    Py_DECREF(res);
    Py_RETURN_NONE;
}

int bro_sock_close(PyObject *sock)
{
    PyObject *r = sock_close((bro_socket *)sock, NULL);
    Py_XDECREF(r);
    return r == NULL ? -1 : 0;
}

static PyObject *sock_detach(bro_socket *s, PyObject *Py_UNUSED(ignored))
{
    if (sock_forget(s) < 0)
        return NULL;
    if (s->raw_fd) {
        int fd = s->fd;
        s->fd = -1;
        return PyLong_FromLong(fd);
    }
    s->fd = -1;
    if (s->sock == NULL) {
        PyErr_SetString(PyExc_ValueError, "this socket was never initialized");
        return NULL;
    }
    return PyObject_CallMethod(s->sock, "detach", NULL);
}

static PyObject *sock_fileno(bro_socket *s, PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromLong(s->fd);
}

static int sock_init(bro_socket *s, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"sock", NULL};
    PyObject *sock;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O:SocketCore", kwlist, &sock))
        return -1;
    /* PyObject_AsFileDescriptor also accepts a bare int, but a core wraps a socket object
     * (it calls its methods below): reject ints up front with a clear TypeError instead of
     * an AttributeError about int.setblocking (SocketCore._from_fd is the raw-fd path). */
    if (PyLong_Check(sock)) {
        PyErr_Format(PyExc_TypeError, "SocketCore requires a socket object, not %.100s",
                     Py_TYPE(sock)->tp_name);
        return -1;
    }
    int fd = PyObject_AsFileDescriptor(sock);
    if (fd < 0)
        return -1;
    PyObject *r = PyObject_CallMethod(sock, "setblocking", "O", Py_False);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    PyObject *family = PyObject_GetAttrString(sock, "family");
    PyObject *type = family ? PyObject_GetAttrString(sock, "type") : NULL;
    if (type == NULL) {
        Py_XDECREF(family);
        return -1;
    }
    int ok = as_int(family, &s->family) == 0 && as_int(type, &s->type) == 0;
    Py_DECREF(family);
    Py_DECREF(type);
    if (!ok)
        return -1;
    if (s->raw_fd) {
        PyErr_SetString(PyExc_TypeError, "this SocketCore already owns a raw file descriptor");
        return -1;
    }
    if (sock_forget(s) < 0)
        return -1;
    Py_XSETREF(s->sock, Py_NewRef(sock));
    s->fd = fd;
    /* Debug mode: the monitor remembers the socket, to report it if it is still open when
     * the loop closes (a ResourceWarning). */
    bro_loop *loop = bro_running_loop;
    if (loop != NULL && loop->debug_obj != NULL) {
        PyObject *r = PyObject_CallMethod(loop->debug_obj, "track_socket", "O", (PyObject *)s);
        if (r == NULL)
            return -1;
        Py_DECREF(r);
    }
    return 0;
}

/* SocketCore._from_fd(fd): a core in raw fd mode.  It takes ownership of fd (closing it on
 * close() or when collected) and makes it non-blocking; the fd must be open. */
static PyObject *sock_from_fd(PyTypeObject *type, PyObject *arg)
{
    if (!PyLong_Check(arg)) {
        PyErr_Format(PyExc_TypeError, "_from_fd() argument 'fd' must be int, not %.200s",
                     Py_TYPE(arg)->tp_name);
        return NULL;
    }
    int fd;
    if (as_int(arg, &fd) < 0)
        return NULL;
    if (fd < 0) {
        PyErr_SetString(PyExc_ValueError, "_from_fd() argument 'fd' must be >= 0");
        return NULL;
    }
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || (!(fl & O_NONBLOCK) && fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)) {
        PyErr_SetFromErrno(PyExc_OSError);
        return NULL;
    }
    bro_socket *s = (bro_socket *)type->tp_alloc(type, 0);
    if (s == NULL)
        return NULL;
    s->fd = fd;
    s->raw_fd = 1;
    s->family = -1;
    s->type = 0;
    return (PyObject *)s;
}

static PyObject *sock_new(PyTypeObject *type, PyObject *Py_UNUSED(a), PyObject *Py_UNUSED(k))
{
    bro_socket *s = (bro_socket *)type->tp_alloc(type, 0);
    if (s != NULL)
        s->fd = -1;
    return (PyObject *)s;
}

static int sock_traverse(bro_socket *s, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(s));
    Py_VISIT(s->sock);
    Py_VISIT(s->loop);
    return 0;
}

static int sock_clear(bro_socket *s)
{
    if (sock_forget(s) < 0)
        PyErr_WriteUnraisable((PyObject *)s);
    if (s->raw_fd && s->fd >= 0 && sock_close_raw(s) < 0)
        PyErr_WriteUnraisable((PyObject *)s);
    Py_CLEAR(s->sock);
    return 0;
}

static void sock_dealloc(bro_socket *s)
{
    PyTypeObject *tp = Py_TYPE(s);
    PyObject_GC_UnTrack(s);
    if (s->weakreflist != NULL)
        PyObject_ClearWeakRefs((PyObject *)s);
    sock_clear(s);
    tp->tp_free((PyObject *)s);
    Py_DECREF(tp);
}

static PyObject *sock_get_sock(bro_socket *s, void *Py_UNUSED(c))
{
    return Py_NewRef(s->sock ? s->sock : Py_None);
}

static PyObject *sock_get_family(bro_socket *s, void *Py_UNUSED(c))
{
    return s->sock ? PyObject_GetAttrString(s->sock, "family") : PyLong_FromLong(s->family);
}

static PyObject *sock_get_type(bro_socket *s, void *Py_UNUSED(c))
{
    return s->sock ? PyObject_GetAttrString(s->sock, "type") : PyLong_FromLong(s->type);
}

static PyMethodDef sock_methods[] = {
    {"recv", (PyCFunction)(void (*)(void))sock_recv, METH_FASTCALL,
     "recv(bufsize, flags=0)\n--\n\nAwaitable: receive up to bufsize bytes (b'' at EOF)."},
    {"receive", (PyCFunction)(void (*)(void))sock_recv, METH_FASTCALL,
     "receive(bufsize, flags=0)\n--\n\nAlias of recv()."},
    {"recv_into", (PyCFunction)(void (*)(void))sock_recv_into, METH_VARARGS | METH_KEYWORDS,
     "recv_into(buffer, nbytes=0, flags=0)\n--\n\nAwaitable: receive into buffer; returns "
     "the number of bytes received."},
    {"send", (PyCFunction)(void (*)(void))sock_send, METH_FASTCALL,
     "send(data, flags=0)\n--\n\nAwaitable: send some of data; returns how much was sent."},
    {"send_all", (PyCFunction)(void (*)(void))sock_send_all, METH_FASTCALL,
     "send_all(data, flags=0)\n--\n\nAwaitable: send every byte of data."},
    {"sendall", (PyCFunction)(void (*)(void))sock_send_all, METH_FASTCALL,
     "sendall(data, flags=0)\n--\n\nAlias of send_all()."},
    {"_io", (PyCFunction)(void (*)(void))sock_io, METH_FASTCALL, NULL},
    {"_wait", (PyCFunction)sock_wait, METH_O, NULL},
    {"close", (PyCFunction)sock_close, METH_NOARGS,
     "Close the socket; tasks waiting on it get ClosedResourceError."},
    {"detach", (PyCFunction)sock_detach, METH_NOARGS,
     "Forget the fd without closing it; returns it."},
    {"fileno", (PyCFunction)sock_fileno, METH_NOARGS, "The fd (-1 once closed)."},
    {"_from_fd", (PyCFunction)sock_from_fd, METH_O | METH_CLASS,
     "_from_fd(fd)\n--\n\nA core owning the non-socket fd (read()/write(); closes it)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef sock_getset[] = {
    {"_sock", (getter)sock_get_sock, NULL, "The wrapped stdlib socket.", NULL},
    {"family", (getter)sock_get_family, NULL, "The address family.", NULL},
    {"type", (getter)sock_get_type, NULL, "The socket type.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef sock_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(bro_socket, weakreflist), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot sock_slots[] = {
    {Py_tp_doc, "The C core of broomio.socket.socket: async operations on a stdlib socket."},
    {Py_tp_new, sock_new},
    {Py_tp_init, sock_init},
    {Py_tp_dealloc, sock_dealloc},
    {Py_tp_traverse, sock_traverse},
    {Py_tp_clear, sock_clear},
    {Py_tp_methods, sock_methods},
    {Py_tp_getset, sock_getset},
    {Py_tp_members, sock_members},
    {0, NULL},
};

static PyType_Spec sock_spec = {
    .name = "broomio._engine.SocketCore",
    .basicsize = sizeof(bro_socket),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE,
    .slots = sock_slots,
};

int bro_sock_init_types(PyObject *module, bro_state *st)
{
    if (bro_module_add_type(module, &sockop_spec, NULL, &st->sockop_type) < 0)
        return -1;
    return bro_module_add_type(module, &sock_spec, NULL, &st->socket_type);
}
