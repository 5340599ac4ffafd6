/*
 * state.h -- the module state and the forward declarations every engine file shares.
 *
 * The engine keeps no global mutable state: exception classes, heap types and interned
 * strings live in the module state, reached through the loop (each Loop keeps a strong
 * reference to its module, so the state outlives every object that points into it).
 *
 * The one exception is bro_running_loop, a thread-local pointer to the loop that is running
 * in the current thread.  It describes the thread's execution, like CPython's own thread
 * state, and is what lets an awaitable find its task in O(1) without a dictionary or
 * context-variable lookup on the hot path.  It is set by Loop.run() on entry and cleared on
 * exit, so a thread runs at most one broomio loop at a time.
 */
#ifndef BROOMIO_STATE_H
#define BROOMIO_STATE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

typedef struct bro_loop bro_loop;
typedef struct bro_task bro_task;
typedef struct bro_scope bro_scope;
typedef struct bro_nursery bro_nursery;

/* A free list of deallocated awaitables of one type.  An awaitable lives from the start of
 * an await to its end, so allocations and deallocations alternate and a few slots absorb
 * the churn of any number of tasks, however many of them are parked at once.  The objects
 * kept here are untracked, hold no references (not even to their type) and have a
 * reference count of zero.  n is -1 once the module state has been cleared: from then on
 * objects are freed at once. */
#define BRO_FREELIST_SIZE 32
typedef struct {
    int n;
    Py_ssize_t size; /* the objects' tp_basicsize */
    PyObject *items[BRO_FREELIST_SIZE];
} bro_freelist;

/* Under AddressSanitizer an object on a free list is poisoned, so that a use after free is
 * still reported although the memory is recycled. */
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define BRO_FREELIST_POISON(p, n) ASAN_POISON_MEMORY_REGION((p), (size_t)(n))
#define BRO_FREELIST_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (size_t)(n))
#else
#define BRO_FREELIST_POISON(p, n) ((void)0)
#define BRO_FREELIST_UNPOISON(p, n) ((void)0)
#endif

/* Takes a GC object that tp_dealloc has untracked and cleared, and returns 1; or returns 0
 * when the list is full or closed, and the caller frees the object. */
static inline int bro_freelist_push(bro_freelist *fl, PyObject *op)
{
    if (fl->n < 0 || fl->n >= BRO_FREELIST_SIZE)
        return 0;
    fl->size = Py_TYPE(op)->tp_basicsize;
    BRO_FREELIST_POISON(op, fl->size);
    fl->items[fl->n++] = op;
    return 1;
}

/* An object of type tp with one reference (and a new reference to tp), its other fields
 * left as they were; or NULL, without an exception set, when the list is empty.  The
 * caller initializes the fields, then tracks the object. */
static inline PyObject *bro_freelist_pop(bro_freelist *fl, PyTypeObject *tp)
{
    if (fl->n <= 0)
        return NULL;
    PyObject *op = fl->items[--fl->n];
    BRO_FREELIST_UNPOISON(op, fl->size);
    return PyObject_Init(op, tp);
}

/* Frees what the list holds and closes it (module_clear). */
static inline void bro_freelist_close(bro_freelist *fl)
{
    for (int i = 0; i < fl->n; i++) {
        BRO_FREELIST_UNPOISON(fl->items[i], fl->size);
        PyObject_GC_Del(fl->items[i]);
    }
    fl->n = -1;
}

typedef struct {
    PyTypeObject *loop_type;
    PyTypeObject *task_type;
    PyTypeObject *op_type;
    PyTypeObject *op_debug_type; /* op.c: an op that remembers its origin (debug mode) */
    PyTypeObject *scope_type;
    PyTypeObject *nursery_type;
    PyTypeObject *lot_type;
    PyTypeObject *socket_type;
    PyTypeObject *sockop_type;
    PyTypeObject *event_type;
    PyTypeObject *lock_type;
    PyTypeObject *semaphore_type;
    PyTypeObject *limiter_type;
    PyTypeObject *queue_type;
    PyTypeObject *conflict_type;
    PyTypeObject *stream_type;
    PyTypeObject *aio_core_type;
    PyTypeObject *aio_sock_waiter_type;

    /* broomio.asyncio (aio_core.c): asyncio's Handle and TimerHandle classes, set by
     * aio_setup(), and the offsets of their __slots__. */
    PyObject *aio_handle_type;
    PyObject *aio_timer_type;
    PyObject *aio_future_type;
    PyObject *aio_task_type;
    PyObject *aio_kw_task; /* ("loop", "name", "context") */
    PyObject *aio_str_task_factory;
    PyObject *aio_str_py_create_task;
    PyObject *aio_kw_loop; /* ("loop",): create_future()'s keyword names */
    Py_ssize_t aio_off[9];
    PyObject *aio_str_debug_handle;
    PyObject *aio_str_run_debug;
    PyObject *aio_str_callback_error;
    PyObject *aio_str_context;
    /* Attribute names used by the socket transport's C methods (aio_transport.c). */
#define BRO_AIO_TR_STRS 26
    PyObject *aio_tr_str[BRO_AIO_TR_STRS];
    Py_ssize_t aio_tr_off;         /* where the transport's C fields start */
    Py_ssize_t aio_tr_max_default; /* asyncio's class-level max_size */
    PyObject *aio_streams; /* (StreamReader, StreamReaderProtocol.data_received, feed_data) */

    PyObject *Cancelled;
    PyObject *TaskCancelled;
    PyObject *BusyResourceError;
    PyObject *ClosedResourceError;
    PyObject *BrokenResourceError;
    PyObject *WouldBlock;
    PyObject *IncompleteReadError;

    /* Yielded by a task whose awaitable has already registered its wait. */
    PyObject *parked;

    PyObject *str_qualname;
    PyObject *str_close;
    PyObject *str_throw;
    PyObject *str_split;
    PyObject *str_cr_frame;
    PyObject *str_cr_running;
    PyObject *str_cr_suspended;

    /* Free lists of the two awaitables every await creates (see bro_freelist above). */
    bro_freelist op_free;     /* op.c, ordinary ops (not debug ones) */
    bro_freelist sockop_free; /* sock.c */
} bro_state;

extern PyModuleDef bro_module_def;

/* Defined in loop.c; see the essay above.  Every await reads it, several times per
 * message in a socket server, so it uses the initial-exec TLS model: one load relative to
 * the thread pointer instead of a __tls_get_addr() call each time (about 30 instructions).
 * glibc reserves static TLS space for libraries loaded with dlopen() that do this. */
#if defined(__GLIBC__) && defined(__GNUC__)
#define BRO_TLS_MODEL __attribute__((tls_model("initial-exec")))
#else
#define BRO_TLS_MODEL
#endif
extern _Thread_local bro_loop *bro_running_loop BRO_TLS_MODEL;

/* The task being stepped in this thread, or NULL. */
bro_task *bro_current_task(void);

/* module.c */
int bro_module_add_type(PyObject *module, PyType_Spec *spec, PyObject *base, PyTypeObject **out);

/* Type registration, one per file. */
int bro_loop_init_types(PyObject *module, bro_state *st);
int bro_task_init_types(PyObject *module, bro_state *st);
int bro_op_init_types(PyObject *module, bro_state *st);
int bro_scope_init_types(PyObject *module, bro_state *st);
int bro_nursery_init_types(PyObject *module, bro_state *st);
int bro_lot_init_types(PyObject *module, bro_state *st);
int bro_sock_init_types(PyObject *module, bro_state *st);
int bro_syncprims_init_types(PyObject *module, bro_state *st);
int bro_stream_init_types(PyObject *module, bro_state *st);
int bro_aio_init_types(PyObject *module, bro_state *st);
PyObject *bro_mod_aio_setup(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
PyObject *bro_mod_aio_make_transport_type(PyObject *module, PyObject *base);

/* sock.c: SocketStream's hot operations in stream mode (OSError -> BrokenResourceError).
 * sock must be a SocketCore and size positive; stream.c checks both. */
PyObject *bro_sock_stream_recv(PyObject *sock, Py_ssize_t size);
PyObject *bro_sock_stream_send_all(PyObject *sock, PyObject *data);
/* SocketCore.close(); -1 with an exception set on failure. */
int bro_sock_close(PyObject *sock);

/* Parses a number of seconds (int or float, not NaN) with errors naming fname/argname. */
int bro_parse_seconds(PyObject *arg, const char *fname, const char *argname, double *out);

/* Sets a new Cancelled exception as the current error; always returns -1. */
int bro_raise_cancelled(bro_state *st);

/* The monotonic clock, in seconds. */
double bro_monotonic(void);

/* Module-level functions (the methods table is in module.c). */
PyObject *bro_mod_sleep(PyObject *module, PyObject *arg);
PyObject *bro_mod_sleep_until(PyObject *module, PyObject *arg);
PyObject *bro_mod_sleep_forever(PyObject *module, PyObject *ignored);
PyObject *bro_mod_checkpoint(PyObject *module, PyObject *ignored);
PyObject *bro_mod_optional_checkpoint(PyObject *module, PyObject *ignored);
PyObject *bro_mod_suspend(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
PyObject *bro_mod_wait_readable(PyObject *module, PyObject *arg);
PyObject *bro_mod_wait_writable(PyObject *module, PyObject *arg);
PyObject *bro_mod_notify_closing(PyObject *module, PyObject *arg);
PyObject *bro_mod_current_effective_deadline(PyObject *module, PyObject *ignored);

/* The iterator protocol of engine awaitables, around their am_send (op.c). */
PyObject *bro_aw_iternext(PyObject *self, sendfunc send);
PyObject *bro_aw_send(PyObject *self, PyObject *arg, sendfunc send);
/* throw(): raises the given exception (the awaitable marks itself done first). */
PyObject *bro_aw_throw(PyObject *const *args, Py_ssize_t nargs);

#define BRO_BUDGET 64

#endif
