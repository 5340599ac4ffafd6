/*
 * aio_core.c -- AioCore, the C core of broomio.asyncio's event loop.
 *
 * broomio.asyncio.EventLoop is a Python class whose bases are AioCore (this file) and
 * asyncio's Unix selector loop.  AioCore comes first in the MRO, so its methods replace the
 * hot part of the Python loop -- call_soon / call_at / call_later / time, the ready queue,
 * the timer heap, add_reader / add_writer and the loop iteration (_run_once) -- while every
 * high-level feature (transports, servers, happy eyeballs, TLS, subprocesses, signals,
 * executors) stays asyncio's own code running on top of these primitives.  That keeps the
 * high-level behaviour identical to asyncio's by construction.
 *
 * Handles are asyncio's own Handle and TimerHandle objects, so isinstance() checks, cancel(),
 * cancelled(), when() and repr() are asyncio's.  Creating one through its Python __init__
 * costs a Python frame per call_soon, so outside debug mode this file allocates the object
 * directly and stores its __slots__ through the slot offsets, which it reads once from the
 * classes' member descriptors (aio_setup).  In debug mode handles are built by the Python
 * constructor, which records the creation traceback as asyncio does.
 *
 * The ready queue is a ring of strong references; the timer heap is a binary min-heap keyed
 * by (deadline, sequence), so equal deadlines fire in the order they were scheduled.
 * Cancelled timers stay in the heap and are dropped lazily, as asyncio does: when they reach
 * the top, or all at once when they are more than half of a heap of over 100 entries.
 *
 * I/O readiness is a level-triggered epoll set of its own (asyncio's add_reader callbacks
 * run for as long as the fd stays readable, unlike the native Loop's edge-triggered poller)
 * and a table indexed by fd holding the reader and writer handles.
 *
 * Everything here runs with the GIL held except epoll_wait; call_soon_threadsafe from
 * another thread pushes onto the ring under the GIL, which is what makes it safe.
 */
#include <errno.h>
#include <math.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

#include "aio.h"
#include "structmember.h"

/* The slot offsets of asyncio's Handle / TimerHandle, in the order of slot_names. */
enum {
    OFF_CALLBACK,
    OFF_ARGS,
    OFF_CANCELLED,
    OFF_LOOP,
    OFF_SOURCE_TB,
    OFF_REPR,
    OFF_CONTEXT,
    OFF_SCHEDULED,
    OFF_WHEN,
    OFF_COUNT
};
static const char *const slot_names[OFF_COUNT] = {
    "_callback", "_args",    "_cancelled", "_loop", "_source_traceback",
    "_repr",     "_context", "_scheduled", "_when"};

#define SLOT(obj, st, i) (*(PyObject **)((char *)(obj) + (st)->aio_off[i]))

/* asyncio's limits: the longest single wait, and when a sweep of cancelled timers pays. */
#define MAX_SELECT_TIMEOUT 86400.0
#define MIN_SCHEDULED_FOR_SWEEP 100
#define EVENT_BATCH 256

static inline double now_monotonic(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

char *bro_aio_scratch(bro_state *st, PyObject *loop, size_t size)
{
    if (!PyObject_TypeCheck(loop, st->aio_core_type)) {
        PyErr_SetString(PyExc_TypeError, "the transport's loop is not a broomio.asyncio loop");
        return NULL;
    }
    aio_core *c = (aio_core *)loop;
    if (c->scratch_size >= size)
        return c->scratch;
    {
        char *p = PyMem_Realloc(c->scratch, size);
        if (p == NULL) {
            PyErr_NoMemory();
            return NULL;
        }
        c->scratch = p;
        c->scratch_size = size;
    }
    return c->scratch;
}

static int check_setup(bro_state *st)
{
    if (st->aio_handle_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "broomio._engine.aio_setup() was not called");
        return -1;
    }
    return 0;
}

/* ---- the ready ring ------------------------------------------------------------------- */

/* Steals a reference to h. */
static int ring_push(aio_core *c, PyObject *h)
{
    if (c->ring_len == c->ring_cap) {
        Py_ssize_t ncap = c->ring_cap ? c->ring_cap * 2 : 64;
        PyObject **nr = PyMem_Malloc((size_t)ncap * sizeof(PyObject *));
        if (nr == NULL) {
            Py_DECREF(h);
            PyErr_NoMemory();
            return -1;
        }
        for (Py_ssize_t i = 0; i < c->ring_len; i++)
            nr[i] = c->ring[(c->ring_head + i) % c->ring_cap];
        PyMem_Free(c->ring);
        c->ring = nr;
        c->ring_cap = ncap;
        c->ring_head = 0;
    }
    Py_ssize_t tail = c->ring_head + c->ring_len;
    if (tail >= c->ring_cap)
        tail -= c->ring_cap;
    c->ring[tail] = h;
    c->ring_len++;
    return 0;
}

static PyObject *ring_pop(aio_core *c)
{
    PyObject *h = c->ring[c->ring_head];
    if (++c->ring_head == c->ring_cap)
        c->ring_head = 0;
    c->ring_len--;
    return h;
}

/* ---- the timer heap ------------------------------------------------------------------- */

static inline int timer_less(const aio_timer *a, const aio_timer *b)
{
    return a->when < b->when || (a->when == b->when && a->seq < b->seq);
}

static void heap_sift_up(aio_timer *items, Py_ssize_t i)
{
    aio_timer x = items[i];
    while (i > 0) {
        Py_ssize_t parent = (i - 1) / 2;
        if (!timer_less(&x, &items[parent]))
            break;
        items[i] = items[parent];
        i = parent;
    }
    items[i] = x;
}

static void heap_sift_down(aio_timer *items, Py_ssize_t len, Py_ssize_t i)
{
    aio_timer x = items[i];
    for (;;) {
        Py_ssize_t child = 2 * i + 1;
        if (child >= len)
            break;
        if (child + 1 < len && timer_less(&items[child + 1], &items[child]))
            child++;
        if (!timer_less(&items[child], &x))
            break;
        items[i] = items[child];
        i = child;
    }
    items[i] = x;
}

/* Steals a reference to h. */
static int heap_push(aio_core *c, double when, PyObject *h)
{
    if (c->heap_len == c->heap_cap) {
        Py_ssize_t ncap = c->heap_cap ? c->heap_cap * 2 : 64;
        aio_timer *ni = PyMem_Realloc(c->heap, (size_t)ncap * sizeof(aio_timer));
        if (ni == NULL) {
            Py_DECREF(h);
            PyErr_NoMemory();
            return -1;
        }
        c->heap = ni;
        c->heap_cap = ncap;
    }
    c->heap[c->heap_len] = (aio_timer){when, c->seq++, h};
    heap_sift_up(c->heap, c->heap_len);
    c->heap_len++;
    return 0;
}

/* Removes the top entry and returns its reference. */
static PyObject *heap_pop(aio_core *c)
{
    PyObject *h = c->heap[0].handle;
    c->heap_len--;
    if (c->heap_len > 0) {
        c->heap[0] = c->heap[c->heap_len];
        heap_sift_down(c->heap, c->heap_len, 0);
    }
    return h;
}

static inline int handle_cancelled(bro_state *st, PyObject *h)
{
    return SLOT(h, st, OFF_CANCELLED) == Py_True;
}

static void set_slot(PyObject *h, bro_state *st, int i, PyObject *v)
{
    PyObject **p = &SLOT(h, st, i);
    PyObject *old = *p;
    *p = Py_NewRef(v);
    Py_XDECREF(old);
}

/* Drops every cancelled timer (asyncio's sweep), marking each as no longer scheduled. */
static void heap_sweep(aio_core *c)
{
    bro_state *st = c->st;
    Py_ssize_t n = 0;
    for (Py_ssize_t i = 0; i < c->heap_len; i++) {
        PyObject *h = c->heap[i].handle;
        if (handle_cancelled(st, h)) {
            set_slot(h, st, OFF_SCHEDULED, Py_False);
            Py_DECREF(h);
        } else {
            c->heap[n++] = c->heap[i];
        }
    }
    c->heap_len = n;
    for (Py_ssize_t i = n / 2 - 1; i >= 0; i--)
        heap_sift_down(c->heap, n, i);
    c->timer_cancelled_count = 0;
}

/* ---- handles -------------------------------------------------------------------------- */

/* A new Handle (timer: a TimerHandle with _when = when_obj) for callback(*args) in context
 * (NULL: a copy of the current context).  Non-debug path: slots are written directly. */
static PyObject *new_handle(aio_core *c, PyObject *callback, PyObject *args, PyObject *context,
                            PyObject *when_obj)
{
    bro_state *st = c->st;
    PyTypeObject *tp = (PyTypeObject *)(when_obj ? st->aio_timer_type : st->aio_handle_type);
    PyObject *ctx = NULL;
    if (context == NULL || context == Py_None) {
        ctx = PyContext_CopyCurrent();
        if (ctx == NULL)
            return NULL;
    } else {
        ctx = Py_NewRef(context);
    }
    PyObject *h;
    if (when_obj == NULL && c->nfree > 0) {
        h = c->free_handles[--c->nfree];
    } else {
        h = tp->tp_alloc(tp, 0);
        if (h == NULL) {
            Py_DECREF(ctx);
            return NULL;
        }
    }
    SLOT(h, st, OFF_CALLBACK) = Py_NewRef(callback);
    SLOT(h, st, OFF_ARGS) = Py_NewRef(args);
    SLOT(h, st, OFF_CANCELLED) = Py_NewRef(Py_False);
    SLOT(h, st, OFF_LOOP) = Py_NewRef((PyObject *)c);
    SLOT(h, st, OFF_SOURCE_TB) = Py_NewRef(Py_None);
    SLOT(h, st, OFF_REPR) = Py_NewRef(Py_None);
    SLOT(h, st, OFF_CONTEXT) = ctx;
    if (when_obj) {
        SLOT(h, st, OFF_SCHEDULED) = Py_NewRef(Py_False);
        SLOT(h, st, OFF_WHEN) = Py_NewRef(when_obj);
    }
    return h;
}

/* Called instead of Py_DECREF once a queued handle has run: a plain Handle that nobody else
 * references (the usual case: a task step or a future callback) gets its slots cleared --
 * which releases the callback, its arguments and its context at once, as deallocation
 * would -- and goes back to the free list, sparing the next call_soon an allocation and
 * this one a deallocation. */
static void recycle_handle(aio_core *c, PyObject *h)
{
    bro_state *st = c->st;
    PyTypeObject *tp = Py_TYPE(h);
    if (Py_REFCNT(h) != 1 || (PyObject *)tp != st->aio_handle_type ||
        c->nfree == AIO_FREE_HANDLES ||
        (tp->tp_weaklistoffset > 0 && *(PyObject **)((char *)h + tp->tp_weaklistoffset) != NULL)) {
        Py_DECREF(h);
        return;
    }
    for (int i = OFF_CALLBACK; i <= OFF_CONTEXT; i++)
        Py_CLEAR(SLOT(h, st, i));
    if (c->nfree == AIO_FREE_HANDLES) { /* a destructor above re-entered and filled it */
        Py_DECREF(h);
        return;
    }
    c->free_handles[c->nfree++] = h;
}

/* Debug mode: the Python side checks the thread and the callback and builds the handle with
 * its creation traceback.  kind is "call_soon", "call_at", "threadsafe" (no checks: the
 * caller did them) or "io". */
static PyObject *debug_handle(aio_core *c, const char *kind, PyObject *callback, PyObject *args,
                              PyObject *context, PyObject *when_obj)
{
    PyObject *k = PyUnicode_FromString(kind);
    if (k == NULL)
        return NULL;
    PyObject *call[6] = {(PyObject *)c, k, when_obj ? when_obj : Py_None, callback, args,
                         context ? context : Py_None};
    PyObject *h =
        PyObject_VectorcallMethod(c->st->aio_str_debug_handle, call,
                                  6 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    Py_DECREF(k);
    return h;
}

static int check_open(aio_core *c)
{
    if (c->closed) {
        PyErr_SetString(PyExc_RuntimeError, "Event loop is closed");
        return -1;
    }
    return 0;
}

static PyObject *tuple_from(PyObject *const *items, Py_ssize_t n)
{
    PyObject *t = PyTuple_New(n);
    if (t == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++)
        PyTuple_SET_ITEM(t, i, Py_NewRef(items[i]));
    return t;
}

/* Parses (fixed positionals..., *args, context=None) from a vectorcall. */
static int parse_context(aio_core *c, PyObject *const *args, Py_ssize_t nargs,
                         PyObject *kwnames, PyObject **context, const char *fname)
{
    *context = NULL;
    if (kwnames == NULL)
        return 0;
    Py_ssize_t nk = PyTuple_GET_SIZE(kwnames);
    for (Py_ssize_t i = 0; i < nk; i++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, i);
        /* Keyword names are almost always interned: one pointer test.  _asyncio's futures
         * pass a "context" of their own that is not the interned one, on every callback
         * they schedule: the last such string is kept (a strong reference, so the address
         * cannot be reused) and recognised by its address too. */
        if (name != c->st->aio_str_context && name != c->context_kw) {
            if (!PyUnicode_Check(name) || PyUnicode_CompareWithASCIIString(name, "context") != 0) {
                PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument '%S'",
                             fname, name);
                return -1;
            }
            Py_XSETREF(c->context_kw, Py_NewRef(name));
        }
        *context = args[nargs + i];
    }
    return 0;
}

static PyObject *schedule_soon(aio_core *c, PyObject *callback, PyObject *args,
                               PyObject *context, const char *kind)
{
    if (check_open(c) < 0)
        return NULL;
    PyObject *h = c->debug ? debug_handle(c, kind, callback, args, context, NULL)
                           : new_handle(c, callback, args, context, NULL);
    if (h == NULL)
        return NULL;
    if (ring_push(c, Py_NewRef(h)) < 0) {
        Py_DECREF(h);
        return NULL;
    }
    return h;
}

static PyObject *core_call_soon(aio_core *c, PyObject *const *args, Py_ssize_t nargs,
                                PyObject *kwnames)
{
    PyObject *context;
    if (parse_context(c, args, nargs, kwnames, &context, "call_soon") < 0)
        return NULL;
    if (nargs < 1) {
        PyErr_SetString(PyExc_TypeError, "call_soon() missing required argument 'callback'");
        return NULL;
    }
    PyObject *t = tuple_from(args + 1, nargs - 1);
    if (t == NULL)
        return NULL;
    PyObject *h = schedule_soon(c, args[0], t, context, "call_soon");
    Py_DECREF(t);
    return h;
}

/* _call_soon(callback, args, context): asyncio's internal form (call_soon_threadsafe). */
static PyObject *core__call_soon(aio_core *c, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "_call_soon() takes 3 arguments");
        return NULL;
    }
    if (!PyTuple_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "_call_soon(): args must be a tuple");
        return NULL;
    }
    return schedule_soon(c, args[0], args[1], args[2], "threadsafe");
}

static PyObject *schedule_at(aio_core *c, PyObject *when_obj, double when, PyObject *callback,
                             PyObject *args, PyObject *context)
{
    if (check_open(c) < 0)
        return NULL;
    if (isnan(when)) {
        PyErr_SetString(PyExc_ValueError, "when must not be NaN");
        return NULL;
    }
    PyObject *h = c->debug ? debug_handle(c, "call_at", callback, args, context, when_obj)
                           : new_handle(c, callback, args, context, when_obj);
    if (h == NULL)
        return NULL;
    if (heap_push(c, when, Py_NewRef(h)) < 0) {
        Py_DECREF(h);
        return NULL;
    }
    set_slot(h, c->st, OFF_SCHEDULED, Py_True);
    return h;
}

static PyObject *core_call_at(aio_core *c, PyObject *const *args, Py_ssize_t nargs,
                              PyObject *kwnames)
{
    PyObject *context;
    if (parse_context(c, args, nargs, kwnames, &context, "call_at") < 0)
        return NULL;
    if (nargs < 2) {
        PyErr_SetString(PyExc_TypeError, "call_at() missing required arguments");
        return NULL;
    }
    if (args[0] == Py_None) {
        PyErr_SetString(PyExc_TypeError, "when cannot be None");
        return NULL;
    }
    double when = PyFloat_AsDouble(args[0]);
    if (when == -1.0 && PyErr_Occurred())
        return NULL;
    PyObject *t = tuple_from(args + 2, nargs - 2);
    if (t == NULL)
        return NULL;
    PyObject *h = schedule_at(c, args[0], when, args[1], t, context);
    Py_DECREF(t);
    return h;
}

static PyObject *core_call_later(aio_core *c, PyObject *const *args, Py_ssize_t nargs,
                                 PyObject *kwnames)
{
    PyObject *context;
    if (parse_context(c, args, nargs, kwnames, &context, "call_later") < 0)
        return NULL;
    if (nargs < 2) {
        PyErr_SetString(PyExc_TypeError, "call_later() missing required arguments");
        return NULL;
    }
    if (args[0] == Py_None) {
        PyErr_SetString(PyExc_TypeError, "delay must not be None");
        return NULL;
    }
    double delay = PyFloat_AsDouble(args[0]);
    if (delay == -1.0 && PyErr_Occurred())
        return NULL;
    double when = now_monotonic() + delay;
    PyObject *when_obj = PyFloat_FromDouble(when);
    if (when_obj == NULL)
        return NULL;
    PyObject *t = tuple_from(args + 2, nargs - 2);
    if (t == NULL) {
        Py_DECREF(when_obj);
        return NULL;
    }
    PyObject *h = schedule_at(c, when_obj, when, args[1], t, context);
    Py_DECREF(t);
    Py_DECREF(when_obj);
    return h;
}

static PyObject *core_get_debug(aio_core *c, PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(c->debug);
}

/* asyncio.Future(loop=loop).  asyncio's C Future has no vectorcall entry, so calling the
 * class builds a {"loop": loop} dictionary for its __init__ on every call; this does what
 * type.__call__ does (tp_new, then tp_init) with one dictionary kept per loop. */
PyObject *bro_aio_new_future(PyObject *loop)
{
    aio_core *c = (aio_core *)loop;
    bro_state *st = c->st;
    if (check_setup(st) < 0)
        return NULL;
    PyTypeObject *tp = (PyTypeObject *)st->aio_future_type;
    if (c->future_kwargs == NULL) {
        c->future_kwargs = PyDict_New();
        if (c->future_kwargs == NULL)
            return NULL;
        if (PyDict_SetItemString(c->future_kwargs, "loop", loop) < 0) {
            Py_CLEAR(c->future_kwargs);
            return NULL;
        }
    }
    if (!PyType_Check(tp) || tp->tp_new == NULL || tp->tp_init == NULL) {
        PyObject *args[2] = {NULL, loop};
        return PyObject_Vectorcall((PyObject *)tp, args + 1, 0 | PY_VECTORCALL_ARGUMENTS_OFFSET,
                                   st->aio_kw_loop);
    }
    PyObject *empty = PyTuple_New(0);
    if (empty == NULL)
        return NULL;
    /* The dictionary is handed over as a new reference: __init__ must not be able to make
     * it go away under us. */
    PyObject *kw = Py_NewRef(c->future_kwargs);
    PyObject *fut = tp->tp_new(tp, empty, kw);
    if (fut != NULL && PyObject_TypeCheck(fut, tp) && tp->tp_init(fut, empty, kw) < 0)
        Py_CLEAR(fut);
    Py_DECREF(kw);
    Py_DECREF(empty);
    return fut;
}

/* create_future(): asyncio.Future(loop=self), called without a Python frame. */
static PyObject *core_create_future(aio_core *c, PyObject *Py_UNUSED(ignored))
{
    return bro_aio_new_future((PyObject *)c);
}

/* create_task(coro, *, name=None, context=None).  The common case -- no task factory, not
 * in debug mode -- calls asyncio.Task directly; the rest is asyncio's own code
 * (BaseEventLoop.create_task through _broomio_create_task). */
static PyObject *core_create_task(aio_core *c, PyObject *const *args, Py_ssize_t nargs,
                                  PyObject *kwnames)
{
    bro_state *st = c->st;
    if (check_setup(st) < 0)
        return NULL;
    PyObject *name = Py_None, *context = Py_None;
    Py_ssize_t nk = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    int fast = nargs == 1 && !c->debug;
    for (Py_ssize_t i = 0; i < nk && fast; i++) {
        PyObject *k = PyTuple_GET_ITEM(kwnames, i);
        if (k == st->aio_str_context)
            context = args[nargs + i];
        else if (PyUnicode_Check(k) && PyUnicode_CompareWithASCIIString(k, "name") == 0)
            name = args[nargs + i];
        else
            fast = 0;
    }
    if (fast) {
        if (check_open(c) < 0)
            return NULL;
        PyObject *factory = PyObject_GetAttr((PyObject *)c, st->aio_str_task_factory);
        if (factory == NULL)
            return NULL;
        Py_DECREF(factory);
        fast = factory == Py_None;
    }
    if (!fast) {
        PyObject *m = PyObject_GetAttr((PyObject *)c, st->aio_str_py_create_task);
        if (m == NULL)
            return NULL;
        PyObject *r = PyObject_Vectorcall(m, args, (size_t)nargs, kwnames);
        Py_DECREF(m);
        return r;
    }
    PyObject *targs[5] = {NULL, args[0], (PyObject *)c, name, context};
    return PyObject_Vectorcall(st->aio_task_type, targs + 1, 1 | PY_VECTORCALL_ARGUMENTS_OFFSET,
                               st->aio_kw_task);
}

static PyObject *core_time(aio_core *Py_UNUSED(c), PyObject *Py_UNUSED(ignored))
{
    return PyFloat_FromDouble(now_monotonic());
}

static PyObject *core_timer_handle_cancelled(aio_core *c, PyObject *h)
{
    if (check_setup(c->st) < 0)
        return NULL;
    if (!PyObject_TypeCheck(h, (PyTypeObject *)c->st->aio_timer_type)) {
        PyErr_SetString(PyExc_TypeError, "_timer_handle_cancelled() expects a TimerHandle");
        return NULL;
    }
    if (SLOT(h, c->st, OFF_SCHEDULED) == Py_True)
        c->timer_cancelled_count++;
    Py_RETURN_NONE;
}

static PyObject *core_add_callback(aio_core *c, PyObject *h)
{
    if (check_setup(c->st) < 0)
        return NULL;
    if (!PyObject_TypeCheck(h, (PyTypeObject *)c->st->aio_handle_type)) {
        PyErr_SetString(PyExc_TypeError, "_add_callback() expects a Handle");
        return NULL;
    }
    if (!handle_cancelled(c->st, h) && ring_push(c, Py_NewRef(h)) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* ---- I/O readiness -------------------------------------------------------------------- */

static aio_fd *fd_slot(aio_core *c, int fd, int grow)
{
    if (fd < c->fds_cap)
        return &c->fds[fd];
    if (!grow)
        return NULL;
    int ncap = c->fds_cap ? c->fds_cap : 64;
    while (ncap <= fd)
        ncap *= 2;
    aio_fd *nf = PyMem_Realloc(c->fds, (size_t)ncap * sizeof(aio_fd));
    if (nf == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    memset(nf + c->fds_cap, 0, (size_t)(ncap - c->fds_cap) * sizeof(aio_fd));
    c->fds = nf;
    c->fds_cap = ncap;
    return &c->fds[fd];
}

/* Makes epoll watch exactly `events` for fd.  A stale registration (the fd was closed and its
 * number reused without a remove) is repaired by falling back between ADD and MOD. */
static int fd_update(aio_core *c, int fd, aio_fd *s, uint32_t events)
{
    if (events == s->events)
        return 0;
    struct epoll_event ev = {.events = events, .data.fd = fd};
    int r;
    if (events == 0) {
        r = epoll_ctl(c->epfd, EPOLL_CTL_DEL, fd, &ev);
        /* The fd may already be closed (epoll dropped it then): nothing left to undo. */
        s->events = 0;
        (void)r;
        return 0;
    }
    if (s->events == 0) {
        r = epoll_ctl(c->epfd, EPOLL_CTL_ADD, fd, &ev);
        if (r < 0 && errno == EEXIST)
            r = epoll_ctl(c->epfd, EPOLL_CTL_MOD, fd, &ev);
    } else {
        r = epoll_ctl(c->epfd, EPOLL_CTL_MOD, fd, &ev);
        if (r < 0 && errno == ENOENT)
            r = epoll_ctl(c->epfd, EPOLL_CTL_ADD, fd, &ev);
    }
    if (r < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    s->events = events;
    return 0;
}

/* handle.cancel().  A plain Handle outside debug mode is cancelled here, as Handle.cancel()
 * does it (flag set, callback and arguments dropped); anything else runs its own cancel(). */
static int cancel_handle(aio_core *c, PyObject *h)
{
    bro_state *st = c->st;
    if (!c->debug && (PyObject *)Py_TYPE(h) == st->aio_handle_type) {
        if (SLOT(h, st, OFF_CANCELLED) != Py_True) {
            set_slot(h, st, OFF_CANCELLED, Py_True);
            set_slot(h, st, OFF_CALLBACK, Py_None);
            set_slot(h, st, OFF_ARGS, Py_None);
        }
        return 0;
    }
    PyObject *r = PyObject_CallMethod(h, "cancel", NULL);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* Registers callback(*args) for one direction of fd, replacing (and cancelling) what was
 * there; returns the new handle. */
static PyObject *add_io_handle(aio_core *c, int fd, int writer, PyObject *callback, PyObject *t)
{
    if (check_open(c) < 0)
        return NULL;
    PyObject *h = c->debug ? debug_handle(c, "io", callback, t, NULL, NULL)
                           : new_handle(c, callback, t, NULL, NULL);
    if (h == NULL)
        return NULL;
    aio_fd *s = fd_slot(c, fd, 1);
    if (s == NULL || fd_update(c, fd, s, s->events | (writer ? EPOLLOUT : EPOLLIN)) < 0) {
        Py_DECREF(h);
        return NULL;
    }
    PyObject **slot = writer ? &s->writer : &s->reader;
    PyObject *old = *slot;
    *slot = Py_NewRef(h);
    if (old != NULL) {
        int r = cancel_handle(c, old);
        Py_DECREF(old);
        if (r < 0) {
            Py_DECREF(h);
            return NULL;
        }
    }
    return h;
}

static PyObject *add_io(aio_core *c, PyObject *const *args, Py_ssize_t nargs, int writer)
{
    const char *fname = writer ? "_add_writer" : "_add_reader";
    if (nargs < 2) {
        PyErr_Format(PyExc_TypeError, "%s() takes at least 2 arguments", fname);
        return NULL;
    }
    if (check_open(c) < 0)
        return NULL;
    int fd = PyObject_AsFileDescriptor(args[0]);
    if (fd < 0)
        return NULL;
    PyObject *t = tuple_from(args + 2, nargs - 2);
    if (t == NULL)
        return NULL;
    PyObject *h = add_io_handle(c, fd, writer, args[1], t);
    Py_DECREF(t);
    return h;
}

PyObject *bro_aio_add_io(PyObject *loop, int fd, int writer, PyObject *callback)
{
    PyObject *t = PyTuple_New(0);
    if (t == NULL)
        return NULL;
    PyObject *h = add_io_handle((aio_core *)loop, fd, writer, callback, t);
    Py_DECREF(t);
    return h;
}

static PyObject *core_add_reader(aio_core *c, PyObject *const *args, Py_ssize_t nargs)
{
    return add_io(c, args, nargs, 0);
}

static PyObject *core_add_writer(aio_core *c, PyObject *const *args, Py_ssize_t nargs)
{
    return add_io(c, args, nargs, 1);
}

/* 1 if there was a callback (now cancelled), 0 if not, -1 on error. */
static int remove_io(aio_core *c, int fd, int writer)
{
    aio_fd *s = fd_slot(c, fd, 0);
    if (s == NULL)
        return 0;
    PyObject **slot = writer ? &s->writer : &s->reader;
    PyObject *old = *slot;
    *slot = NULL;
    uint32_t events = s->events & ~(uint32_t)(writer ? EPOLLOUT : EPOLLIN);
    if (s->reader == NULL && s->writer == NULL)
        events = 0;
    if (fd_update(c, fd, s, events) < 0)
        PyErr_Clear(); /* asyncio's selector ignores a failing unregister/modify as well */
    if (old == NULL)
        return 0;
    int r = cancel_handle(c, old);
    Py_DECREF(old);
    return r < 0 ? -1 : 1;
}

int bro_aio_remove_if(PyObject *loop, int fd, int writer, PyObject *handle)
{
    aio_core *c = (aio_core *)loop;
    aio_fd *s = fd_slot(c, fd, 0);
    if (s == NULL || (writer ? s->writer : s->reader) != handle)
        return 0;
    return remove_io(c, fd, writer) < 0 ? -1 : 0;
}

static PyObject *core_sock_call(aio_core *c, PyObject *const *args, Py_ssize_t nargs)
{
    if (check_setup(c->st) < 0)
        return NULL;
    return bro_aio_sock_call((PyObject *)c, c->st, args, nargs);
}

static PyObject *core_sock_wait(aio_core *c, PyObject *const *args, Py_ssize_t nargs)
{
    return bro_aio_sock_wait((PyObject *)c, c->st, args, nargs);
}

static PyObject *remove_io_py(aio_core *c, PyObject *fdobj, int writer)
{
    if (c->closed)
        Py_RETURN_FALSE;
    int fd = PyObject_AsFileDescriptor(fdobj);
    if (fd < 0)
        return NULL;
    int r = remove_io(c, fd, writer);
    if (r < 0)
        return NULL;
    return PyBool_FromLong(r);
}

static PyObject *core_remove_reader(aio_core *c, PyObject *fd)
{
    return remove_io_py(c, fd, 0);
}

static PyObject *core_remove_writer(aio_core *c, PyObject *fd)
{
    return remove_io_py(c, fd, 1);
}

/* _fd_key(fd) -> (events, reader, writer) in selectors' terms, or None if not watched. */
static PyObject *core_fd_key(aio_core *c, PyObject *fdobj)
{
    int fd = PyObject_AsFileDescriptor(fdobj);
    if (fd < 0)
        return NULL;
    aio_fd *s = fd_slot(c, fd, 0);
    if (s == NULL || (s->reader == NULL && s->writer == NULL))
        Py_RETURN_NONE;
    long events = (s->reader ? 1 : 0) | (s->writer ? 2 : 0);
    return Py_BuildValue("(lOO)", events, s->reader ? s->reader : Py_None,
                         s->writer ? s->writer : Py_None);
}

static PyObject *core_fd_list(aio_core *c, PyObject *Py_UNUSED(ignored))
{
    PyObject *l = PyList_New(0);
    if (l == NULL)
        return NULL;
    for (int fd = 0; fd < c->fds_cap; fd++) {
        if (c->fds[fd].reader == NULL && c->fds[fd].writer == NULL)
            continue;
        PyObject *v = PyLong_FromLong(fd);
        if (v == NULL || PyList_Append(l, v) < 0) {
            Py_XDECREF(v);
            Py_DECREF(l);
            return NULL;
        }
        Py_DECREF(v);
    }
    return l;
}

/* Queues the callback for one direction of a ready fd (asyncio's _process_events). */
static int io_ready(aio_core *c, int fd, int writer)
{
    aio_fd *s = fd_slot(c, fd, 0);
    if (s == NULL)
        return 0;
    PyObject *h = writer ? s->writer : s->reader;
    if (h == NULL)
        return 0;
    if (handle_cancelled(c->st, h))
        return remove_io(c, fd, writer) < 0 ? -1 : 0;
    return ring_push(c, Py_NewRef(h));
}

static int poll_io(aio_core *c, double timeout)
{
    struct epoll_event evs[EVENT_BATCH];
    int ms;
    if (timeout < 0)
        ms = -1;
    else
        ms = (int)ceil(timeout * 1e3);
    int n;
    if (ms == 0) {
        n = epoll_wait(c->epfd, evs, EVENT_BATCH, 0);
    } else {
        Py_BEGIN_ALLOW_THREADS n = epoll_wait(c->epfd, evs, EVENT_BATCH, ms);
        Py_END_ALLOW_THREADS
    }
    if (n < 0) {
        if (errno == EINTR)
            return PyErr_CheckSignals();
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    for (int i = 0; i < n; i++) {
        int fd = evs[i].data.fd;
        uint32_t e = evs[i].events;
        aio_fd *s = fd_slot(c, fd, 0);
        if (s == NULL)
            continue;
        uint32_t watched = s->events;
        /* Errors and hang-ups wake both directions, as in selectors.EpollSelector. */
        if ((e & ~(uint32_t)EPOLLOUT) && (watched & EPOLLIN) && io_ready(c, fd, 0) < 0)
            return -1;
        if ((e & ~(uint32_t)EPOLLIN) && (watched & EPOLLOUT) && io_ready(c, fd, 1) < 0)
            return -1;
    }
    return 0;
}

/* ---- running handles ------------------------------------------------------------------ */

/* Runs one handle as Handle._run() does.  -1 only for what must leave the loop
 * (SystemExit, KeyboardInterrupt, or a failing exception handler). */
static int run_handle(aio_core *c, PyObject *h)
{
    bro_state *st = c->st;
    if (c->debug) {
        PyObject *call[2] = {(PyObject *)c, h};
        PyObject *r = PyObject_VectorcallMethod(st->aio_str_run_debug, call,
                                                2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
        if (r == NULL)
            return -1;
        Py_DECREF(r);
        return 0;
    }
    PyObject *ctx = SLOT(h, st, OFF_CONTEXT);
    PyObject *cb = SLOT(h, st, OFF_CALLBACK);
    PyObject *args = SLOT(h, st, OFF_ARGS);
    PyObject *res;
    if (ctx != NULL && PyContext_CheckExact(ctx) && cb != NULL && args != NULL &&
        PyTuple_CheckExact(args)) {
        Py_INCREF(ctx);
        Py_INCREF(cb);
        Py_INCREF(args);
        if (PyContext_Enter(ctx) < 0) {
            res = NULL;
        } else {
            res = PyObject_Vectorcall(cb, &PyTuple_GET_ITEM(args, 0),
                                      (size_t)PyTuple_GET_SIZE(args), NULL);
            if (PyContext_Exit(ctx) < 0)
                Py_CLEAR(res);
        }
        Py_DECREF(ctx);
        Py_DECREF(cb);
        Py_DECREF(args);
    } else {
        /* Something unusual (a context that is not a Context): asyncio's own _run. */
        res = PyObject_CallMethod(h, "_run", NULL);
        if (res == NULL)
            return -1;
    }
    if (res != NULL) {
        Py_DECREF(res);
        return 0;
    }
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
        value = Py_NewRef(Py_None);
    PyObject *call[3] = {(PyObject *)c, h, value};
    PyObject *r = PyObject_VectorcallMethod(st->aio_str_callback_error, call,
                                            3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    Py_DECREF(value);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* One iteration, as BaseEventLoop._run_once: poll (timeout 0 if anything is ready or the loop
 * is stopping, else until the next timer), queue I/O callbacks and due timers, then run the
 * callbacks that were queued when this phase began. */
static int run_once(aio_core *c)
{
    bro_state *st = c->st;
    if (c->heap_len > MIN_SCHEDULED_FOR_SWEEP &&
        (double)c->timer_cancelled_count / (double)c->heap_len > 0.5) {
        heap_sweep(c);
    } else {
        while (c->heap_len > 0 && handle_cancelled(st, c->heap[0].handle)) {
            c->timer_cancelled_count--;
            PyObject *h = heap_pop(c);
            set_slot(h, st, OFF_SCHEDULED, Py_False);
            Py_DECREF(h);
        }
    }
    double timeout = -1.0;
    if (c->ring_len > 0 || c->stopping) {
        timeout = 0.0;
    } else if (c->heap_len > 0) {
        timeout = c->heap[0].when - now_monotonic();
        if (timeout < 0)
            timeout = 0;
        if (timeout > MAX_SELECT_TIMEOUT)
            timeout = MAX_SELECT_TIMEOUT;
    }
    if (poll_io(c, timeout) < 0)
        return -1;

    double end = now_monotonic() + c->clock_resolution;
    while (c->heap_len > 0 && c->heap[0].when < end) {
        PyObject *h = heap_pop(c);
        set_slot(h, st, OFF_SCHEDULED, Py_False);
        if (ring_push(c, h) < 0)
            return -1;
    }

    Py_ssize_t ntodo = c->ring_len;
    for (Py_ssize_t i = 0; i < ntodo && c->ring_len > 0; i++) {
        PyObject *h = ring_pop(c);
        if (handle_cancelled(st, h)) {
            Py_DECREF(h);
            continue;
        }
        int r = run_handle(c, h);
        recycle_handle(c, h);
        if (r < 0)
            return -1;
    }
    return 0;
}

static PyObject *core_run_once(aio_core *c, PyObject *Py_UNUSED(ignored))
{
    if (check_setup(c->st) < 0 || run_once(c) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* _run_until_stopped(): iterations until stop() is called; clears the stopping flag. */
static PyObject *core_run_until_stopped(aio_core *c, PyObject *Py_UNUSED(ignored))
{
    if (check_setup(c->st) < 0)
        return NULL;
    for (;;) {
        if (run_once(c) < 0)
            return NULL;
        if (c->stopping)
            break;
    }
    c->stopping = 0;
    Py_RETURN_NONE;
}

/* Drops every queued callback, timer and watched fd and closes the epoll set. */
static void core_clear_all(aio_core *c)
{
    while (c->ring_len > 0) {
        PyObject *h = ring_pop(c);
        Py_DECREF(h);
    }
    while (c->heap_len > 0) {
        c->heap_len--;
        Py_DECREF(c->heap[c->heap_len].handle);
    }
    while (c->nfree > 0) {
        PyObject *h = c->free_handles[--c->nfree];
        Py_DECREF(h);
    }
    for (int fd = 0; fd < c->fds_cap; fd++) {
        Py_CLEAR(c->fds[fd].reader);
        Py_CLEAR(c->fds[fd].writer);
        c->fds[fd].events = 0;
    }
}

static PyObject *core_close_core(aio_core *c, PyObject *Py_UNUSED(ignored))
{
    core_clear_all(c);
    if (c->epfd >= 0) {
        close(c->epfd);
        c->epfd = -1;
    }
    Py_RETURN_NONE;
}

/* ---- attributes ----------------------------------------------------------------------- */

static int set_flag(int *flag, PyObject *v, const char *name)
{
    if (v == NULL) {
        PyErr_Format(PyExc_AttributeError, "cannot delete %s", name);
        return -1;
    }
    int b = PyObject_IsTrue(v);
    if (b < 0)
        return -1;
    *flag = b;
    return 0;
}

static PyObject *get_stopping(aio_core *c, void *Py_UNUSED(x))
{
    return PyBool_FromLong(c->stopping);
}
static int set_stopping(aio_core *c, PyObject *v, void *Py_UNUSED(x))
{
    return set_flag(&c->stopping, v, "_stopping");
}
static PyObject *get_closed(aio_core *c, void *Py_UNUSED(x))
{
    return PyBool_FromLong(c->closed);
}
static int set_closed(aio_core *c, PyObject *v, void *Py_UNUSED(x))
{
    return set_flag(&c->closed, v, "_closed");
}
static PyObject *get_debug(aio_core *c, void *Py_UNUSED(x))
{
    return PyBool_FromLong(c->debug);
}
static int set_debug(aio_core *c, PyObject *v, void *Py_UNUSED(x))
{
    return set_flag(&c->debug, v, "_debug");
}

/* _ready and _scheduled: read-only snapshots (asyncio's base class assigns an empty
 * container to each in __init__, which is accepted and ignored). */
static PyObject *get_ready(aio_core *c, void *Py_UNUSED(x))
{
    PyObject *l = PyList_New(c->ring_len);
    if (l == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < c->ring_len; i++)
        PyList_SET_ITEM(l, i, Py_NewRef(c->ring[(c->ring_head + i) % c->ring_cap]));
    return l;
}
static PyObject *get_scheduled(aio_core *c, void *Py_UNUSED(x))
{
    PyObject *l = PyList_New(c->heap_len);
    if (l == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < c->heap_len; i++)
        PyList_SET_ITEM(l, i, Py_NewRef(c->heap[i].handle));
    return l;
}
static int set_empty_only(PyObject *v, const char *name)
{
    Py_ssize_t n = v ? PyObject_Length(v) : -1;
    if (n < 0 && PyErr_Occurred())
        return -1;
    if (n != 0) {
        PyErr_Format(PyExc_AttributeError, "%s is managed by the C core", name);
        return -1;
    }
    return 0;
}
static int set_ready(aio_core *Py_UNUSED(c), PyObject *v, void *Py_UNUSED(x))
{
    return set_empty_only(v, "_ready");
}
static int set_scheduled(aio_core *Py_UNUSED(c), PyObject *v, void *Py_UNUSED(x))
{
    return set_empty_only(v, "_scheduled");
}

static PyGetSetDef core_getset[] = {
    {"_stopping", (getter)get_stopping, (setter)set_stopping, NULL, NULL},
    {"_closed", (getter)get_closed, (setter)set_closed, NULL, NULL},
    {"_debug", (getter)get_debug, (setter)set_debug, NULL, NULL},
    {"_ready", (getter)get_ready, (setter)set_ready, NULL, NULL},
    {"_scheduled", (getter)get_scheduled, (setter)set_scheduled, NULL, NULL},
    {NULL},
};

static PyMemberDef core_members[] = {
    {"_timer_cancelled_count", T_PYSSIZET, offsetof(aio_core, timer_cancelled_count), 0, NULL},
    {"_clock_resolution", T_DOUBLE, offsetof(aio_core, clock_resolution), 0, NULL},
    {NULL},
};

static PyMethodDef core_methods[] = {
    {"call_soon", (PyCFunction)(void (*)(void))core_call_soon, METH_FASTCALL | METH_KEYWORDS,
     "call_soon(callback, *args, context=None) -> Handle"},
    {"_call_soon", (PyCFunction)(void (*)(void))core__call_soon, METH_FASTCALL, NULL},
    {"call_at", (PyCFunction)(void (*)(void))core_call_at, METH_FASTCALL | METH_KEYWORDS,
     "call_at(when, callback, *args, context=None) -> TimerHandle"},
    {"call_later", (PyCFunction)(void (*)(void))core_call_later, METH_FASTCALL | METH_KEYWORDS,
     "call_later(delay, callback, *args, context=None) -> TimerHandle"},
    {"time", (PyCFunction)core_time, METH_NOARGS, "The loop's clock (time.monotonic())."},
    {"get_debug", (PyCFunction)core_get_debug, METH_NOARGS, "True in debug mode."},
    {"create_task", (PyCFunction)(void (*)(void))core_create_task, METH_FASTCALL | METH_KEYWORDS,
     "create_task(coro, *, name=None, context=None) -> Task"},
    {"create_future", (PyCFunction)core_create_future, METH_NOARGS,
     "A new asyncio.Future attached to this loop."},
    {"_timer_handle_cancelled", (PyCFunction)core_timer_handle_cancelled, METH_O, NULL},
    {"_add_callback", (PyCFunction)core_add_callback, METH_O, NULL},
    {"_add_reader", (PyCFunction)(void (*)(void))core_add_reader, METH_FASTCALL, NULL},
    {"_add_writer", (PyCFunction)(void (*)(void))core_add_writer, METH_FASTCALL, NULL},
    {"_remove_reader", (PyCFunction)core_remove_reader, METH_O, NULL},
    {"_remove_writer", (PyCFunction)core_remove_writer, METH_O, NULL},
    {"_fd_key", (PyCFunction)core_fd_key, METH_O, NULL},
    {"_sock_wait", (PyCFunction)(void (*)(void))core_sock_wait, METH_FASTCALL, NULL},
    {"_sock_call", (PyCFunction)(void (*)(void))core_sock_call, METH_FASTCALL, NULL},
    {"_fd_list", (PyCFunction)core_fd_list, METH_NOARGS, NULL},
    {"_run_once", (PyCFunction)core_run_once, METH_NOARGS, NULL},
    {"_run_until_stopped", (PyCFunction)core_run_until_stopped, METH_NOARGS, NULL},
    {"_close_core", (PyCFunction)core_close_core, METH_NOARGS, NULL},
    {NULL},
};

/* ---- type ----------------------------------------------------------------------------- */

static PyObject *core_new(PyTypeObject *type, PyObject *Py_UNUSED(args),
                          PyObject *Py_UNUSED(kwds))
{
    PyObject *module = PyType_GetModuleByDef(type, &bro_module_def);
    if (module == NULL)
        return NULL;
    bro_state *st = PyModule_GetState(module);
    if (check_setup(st) < 0)
        return NULL;
    aio_core *c = (aio_core *)type->tp_alloc(type, 0);
    if (c == NULL)
        return NULL;
    c->st = st;
    c->module = Py_NewRef(module);
    c->clock_resolution = 1e-9;
    c->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (c->epfd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        Py_DECREF(c);
        return NULL;
    }
    return (PyObject *)c;
}

static int core_traverse(aio_core *c, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(c));
    Py_VISIT(c->module);
    for (Py_ssize_t i = 0; i < c->ring_len; i++)
        Py_VISIT(c->ring[(c->ring_head + i) % c->ring_cap]);
    for (Py_ssize_t i = 0; i < c->heap_len; i++)
        Py_VISIT(c->heap[i].handle);
    for (int i = 0; i < c->nfree; i++)
        Py_VISIT(c->free_handles[i]);
    Py_VISIT(c->future_kwargs);
    for (int fd = 0; fd < c->fds_cap; fd++) {
        Py_VISIT(c->fds[fd].reader);
        Py_VISIT(c->fds[fd].writer);
    }
    return 0;
}

static int core_clear(aio_core *c)
{
    core_clear_all(c);
    Py_CLEAR(c->future_kwargs);
    return 0;
}

static void core_dealloc(aio_core *c)
{
    PyTypeObject *tp = Py_TYPE(c);
    PyObject_GC_UnTrack(c);
    core_clear_all(c);
    if (c->epfd >= 0)
        close(c->epfd);
    PyMem_Free(c->ring);
    PyMem_Free(c->heap);
    PyMem_Free(c->fds);
    PyMem_Free(c->scratch);
    Py_CLEAR(c->future_kwargs);
    Py_CLEAR(c->context_kw);
    Py_CLEAR(c->module);
    tp->tp_free(c);
    Py_DECREF(tp);
}

static PyType_Slot core_slots[] = {
    {Py_tp_doc, "The C core of broomio.asyncio.EventLoop: ready queue, timer heap, epoll "
                "readiness and the loop iteration."},
    {Py_tp_new, core_new},
    {Py_tp_dealloc, core_dealloc},
    {Py_tp_traverse, core_traverse},
    {Py_tp_clear, core_clear},
    {Py_tp_methods, core_methods},
    {Py_tp_getset, core_getset},
    {Py_tp_members, core_members},
    {0, NULL},
};

static PyType_Spec core_spec = {
    .name = "broomio._engine.AioCore",
    .basicsize = sizeof(aio_core),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = core_slots,
};

/* aio_setup(Handle, TimerHandle, Future, Task): records asyncio's handle classes and their
 * slot offsets, and the Future and Task classes create_future() / create_task() make.
 * Called once by broomio.asyncio at import. */
PyObject *bro_mod_aio_setup(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    bro_state *st = PyModule_GetState(module);
    if (nargs != 4 || !PyType_Check(args[0]) || !PyType_Check(args[1]) ||
        !PyType_IsSubtype((PyTypeObject *)args[1], (PyTypeObject *)args[0]) ||
        !PyCallable_Check(args[2]) || !PyCallable_Check(args[3])) {
        PyErr_SetString(PyExc_TypeError,
                        "aio_setup(Handle, TimerHandle, Future, Task) expects four classes");
        return NULL;
    }
    Py_ssize_t off[OFF_COUNT];
    for (int i = 0; i < OFF_COUNT; i++) {
        PyObject *cls = i >= OFF_SCHEDULED ? args[1] : args[0];
        PyObject *d = PyObject_GetAttrString(cls, slot_names[i]);
        if (d == NULL)
            return NULL;
        int ok = Py_IS_TYPE(d, &PyMemberDescr_Type) &&
                 ((PyMemberDescrObject *)d)->d_member->type == T_OBJECT_EX;
        if (ok)
            off[i] = ((PyMemberDescrObject *)d)->d_member->offset;
        Py_DECREF(d);
        if (!ok) {
            PyErr_Format(PyExc_TypeError, "%R.%s is not a __slots__ member", cls,
                         slot_names[i]);
            return NULL;
        }
    }
    memcpy(st->aio_off, off, sizeof(off));
    Py_XSETREF(st->aio_handle_type, Py_NewRef(args[0]));
    Py_XSETREF(st->aio_timer_type, Py_NewRef(args[1]));
    Py_XSETREF(st->aio_future_type, Py_NewRef(args[2]));
    Py_XSETREF(st->aio_task_type, Py_NewRef(args[3]));
    if (st->aio_kw_loop == NULL) {
        st->aio_kw_loop = Py_BuildValue("(s)", "loop");
        st->aio_kw_task = Py_BuildValue("(sss)", "loop", "name", "context");
        st->aio_str_task_factory = PyUnicode_InternFromString("_task_factory");
        st->aio_str_py_create_task = PyUnicode_InternFromString("_broomio_create_task");
        if (st->aio_kw_loop == NULL || st->aio_kw_task == NULL ||
            st->aio_str_task_factory == NULL || st->aio_str_py_create_task == NULL)
            return NULL;
    }
    if (st->aio_str_debug_handle == NULL) {
        st->aio_str_debug_handle = PyUnicode_InternFromString("_broomio_debug_handle");
        st->aio_str_run_debug = PyUnicode_InternFromString("_broomio_run_debug");
        st->aio_str_callback_error = PyUnicode_InternFromString("_broomio_callback_error");
        st->aio_str_context = PyUnicode_InternFromString("context");
        if (st->aio_str_debug_handle == NULL || st->aio_str_run_debug == NULL ||
            st->aio_str_callback_error == NULL || st->aio_str_context == NULL)
            return NULL;
    }
    Py_RETURN_NONE;
}

int bro_aio_init_types(PyObject *module, bro_state *st)
{
    if (bro_aio_sock_init_types(module, st) < 0)
        return -1;
    return bro_module_add_type(module, &core_spec, NULL, &st->aio_core_type);
}
