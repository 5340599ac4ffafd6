/*
 * module.c -- the broomio._engine extension module: multi-phase init, module state,
 * exception classes and the module-level functions.
 */
#include "loop.h"
#include "scope.h"
#include "task.h"

PyObject *bro_mod_sleep_until(PyObject *module, PyObject *arg);
PyObject *bro_mod_checkpoint(PyObject *module, PyObject *ignored);
PyObject *bro_mod_wait_readable(PyObject *module, PyObject *arg);
PyObject *bro_mod_notify_closing(PyObject *module, PyObject *arg);

int bro_module_add_type(PyObject *module, PyType_Spec *spec, PyObject *base, PyTypeObject **out)
{
    PyObject *type = PyType_FromModuleAndSpec(module, spec, base);
    if (type == NULL)
        return -1;
    const char *dot = strrchr(spec->name, '.');
    if (PyModule_AddObjectRef(module, dot ? dot + 1 : spec->name, type) < 0) {
        Py_DECREF(type);
        return -1;
    }
    *out = (PyTypeObject *)type;
    return 0;
}

static bro_loop *running_loop_or_error(void)
{
    bro_loop *loop = bro_running_loop;
    if (loop == NULL)
        PyErr_SetString(PyExc_RuntimeError, "no broomio loop is running in this thread");
    return loop;
}

static PyObject *mod_current_task(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(i))
{
    bro_loop *loop = running_loop_or_error();
    if (loop == NULL)
        return NULL;
    if (loop->current == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "not called from inside a broomio task");
        return NULL;
    }
    return Py_NewRef(loop->current);
}

static PyObject *mod_current_loop(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(i))
{
    bro_loop *loop = running_loop_or_error();
    return loop ? Py_NewRef(loop) : NULL;
}

static PyObject *mod_current_time(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(i))
{
    bro_loop *loop = running_loop_or_error();
    double now;
    if (loop == NULL || bro_loop_now(loop, &now) < 0)
        return NULL;
    return PyFloat_FromDouble(now);
}

/* _write_unraisable(exc, obj): report exc through sys.unraisablehook, as CPython does for
 * errors nobody can catch (used for async generator finalizers). */
static PyObject *mod_write_unraisable(PyObject *Py_UNUSED(m), PyObject *const *args,
                                      Py_ssize_t nargs)
{
    if (nargs != 2 || !PyExceptionInstance_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "_write_unraisable(exception, object)");
        return NULL;
    }
    PyErr_SetObject((PyObject *)Py_TYPE(args[0]), args[0]);
    PyErr_WriteUnraisable(args[1]);
    Py_RETURN_NONE;
}

static PyMethodDef module_functions[] = {
    {"_write_unraisable", (PyCFunction)(void (*)(void))mod_write_unraisable, METH_FASTCALL, NULL},
    {"aio_setup", (PyCFunction)(void (*)(void))bro_mod_aio_setup, METH_FASTCALL,
     "aio_setup(Handle, TimerHandle, Future, Task): asyncio's classes, for broomio.asyncio."},
    {"aio_make_transport_type", (PyCFunction)bro_mod_aio_make_transport_type, METH_O,
     "aio_make_transport_type(base): broomio.asyncio's C-accelerated socket transport class."},
    {"sleep", bro_mod_sleep, METH_O,
     "sleep(seconds)\n--\n\nAwaitable: sleep; 0 is a checkpoint that lets other tasks run."},
    {"sleep_until", bro_mod_sleep_until, METH_O,
     "sleep_until(deadline)\n--\n\nAwaitable: sleep until deadline on the loop's clock."},
    {"sleep_forever", bro_mod_sleep_forever, METH_NOARGS,
     "sleep_forever()\n--\n\nAwaitable: sleep until cancelled."},
    {"checkpoint", bro_mod_checkpoint, METH_NOARGS,
     "checkpoint()\n--\n\nAwaitable: let other tasks run; raise Cancelled if cancelled."},
    {"_optional_checkpoint", bro_mod_optional_checkpoint, METH_NOARGS, NULL},
    {"suspend", (PyCFunction)(void (*)(void))bro_mod_suspend, METH_FASTCALL,
     "suspend(abort_fn=None)\n--\n\nAwaitable: park the current task until "
     "loop.reschedule(task, ...).  abort_fn() is called on cancellation; a true result "
     "lets the task be cancelled."},
    {"wait_readable", bro_mod_wait_readable, METH_O,
     "wait_readable(fd)\n--\n\nAwaitable: wait until fd is readable."},
    {"wait_writable", bro_mod_wait_writable, METH_O,
     "wait_writable(fd)\n--\n\nAwaitable: wait until fd is writable."},
    {"notify_closing", bro_mod_notify_closing, METH_O,
     "notify_closing(fd)\n--\n\nWake fd's waiters with ClosedResourceError and forget fd."},
    {"current_effective_deadline", bro_mod_current_effective_deadline, METH_NOARGS,
     "The earliest deadline that applies to the current task (-inf if cancelled)."},
    {"current_task", mod_current_task, METH_NOARGS, "The running Task."},
    {"current_loop", mod_current_loop, METH_NOARGS, "The running Loop."},
    {"current_time", mod_current_time, METH_NOARGS, "The running loop's clock."},
    {NULL, NULL, 0, NULL},
};

static int add_exception(PyObject *module, const char *name, PyObject *base, const char *doc,
                         PyObject **out)
{
    PyObject *exc = PyErr_NewExceptionWithDoc(name, doc, base, NULL);
    if (exc == NULL)
        return -1;
    const char *dot = strrchr(name, '.');
    if (PyModule_AddObjectRef(module, dot + 1, exc) < 0) {
        Py_DECREF(exc);
        return -1;
    }
    *out = exc;
    return 0;
}

static int intern(PyObject **out, const char *s)
{
    *out = PyUnicode_InternFromString(s);
    return *out ? 0 : -1;
}

static int module_exec(PyObject *module)
{
    bro_state *st = PyModule_GetState(module);
    if (add_exception(module, "broomio.Cancelled", PyExc_BaseException,
                      "Raised at a checkpoint of a task inside a cancelled scope.  A "
                      "BaseException, so 'except Exception' does not swallow it.",
                      &st->Cancelled) < 0 ||
        add_exception(module, "broomio.TaskCancelled", PyExc_Exception,
                      "Raised by Task.result() / join() for a task that was cancelled.",
                      &st->TaskCancelled) < 0 ||
        add_exception(module, "broomio.BusyResourceError", PyExc_Exception,
                      "Another task is already waiting on this resource in this direction.",
                      &st->BusyResourceError) < 0 ||
        add_exception(module, "broomio.ClosedResourceError", PyExc_Exception,
                      "The resource was closed (possibly while you were waiting on it).",
                      &st->ClosedResourceError) < 0 ||
        add_exception(module, "broomio.BrokenResourceError", PyExc_Exception,
                      "The peer broke the stream (reset, broken pipe).",
                      &st->BrokenResourceError) < 0 ||
        add_exception(module, "broomio.WouldBlock", PyExc_Exception,
                      "A *_nowait operation could not proceed without waiting.",
                      &st->WouldBlock) < 0 ||
        add_exception(module, "broomio.IncompleteReadError", PyExc_EOFError,
                      "The stream ended before the requested data arrived.",
                      &st->IncompleteReadError) < 0)
        return -1;
    st->parked = PyObject_CallNoArgs((PyObject *)&PyBaseObject_Type);
    if (st->parked == NULL)
        return -1;
    if (intern(&st->str_qualname, "__qualname__") < 0 || intern(&st->str_close, "close") < 0 ||
        intern(&st->str_throw, "throw") < 0 || intern(&st->str_split, "split") < 0 ||
        intern(&st->str_cr_frame, "cr_frame") < 0 ||
        intern(&st->str_cr_running, "cr_running") < 0 ||
        intern(&st->str_cr_suspended, "cr_suspended") < 0)
        return -1;
    if (bro_task_init_types(module, st) < 0 || bro_op_init_types(module, st) < 0 ||
        bro_scope_init_types(module, st) < 0 || bro_nursery_init_types(module, st) < 0 ||
        bro_lot_init_types(module, st) < 0 || bro_syncprims_init_types(module, st) < 0 ||
        bro_loop_init_types(module, st) < 0 || bro_sock_init_types(module, st) < 0 ||
        bro_stream_init_types(module, st) < 0 || bro_aio_init_types(module, st) < 0)
        return -1;
    if (PyModule_AddIntConstant(module, "BUDGET", BRO_BUDGET) < 0)
        return -1;
    return 0;
}

static int module_traverse(PyObject *module, visitproc visit, void *arg)
{
    bro_state *st = PyModule_GetState(module);
    Py_VISIT(st->loop_type);
    Py_VISIT(st->task_type);
    Py_VISIT(st->op_type);
    Py_VISIT(st->op_debug_type);
    Py_VISIT(st->scope_type);
    Py_VISIT(st->nursery_type);
    Py_VISIT(st->lot_type);
    Py_VISIT(st->socket_type);
    Py_VISIT(st->sockop_type);
    Py_VISIT(st->event_type);
    Py_VISIT(st->lock_type);
    Py_VISIT(st->semaphore_type);
    Py_VISIT(st->limiter_type);
    Py_VISIT(st->queue_type);
    Py_VISIT(st->conflict_type);
    Py_VISIT(st->stream_type);
    Py_VISIT(st->aio_core_type);
    Py_VISIT(st->aio_sock_waiter_type);
    Py_VISIT(st->aio_handle_type);
    Py_VISIT(st->aio_timer_type);
    Py_VISIT(st->aio_future_type);
    Py_VISIT(st->aio_task_type);
    for (int i = 0; i < BRO_AIO_TR_STRS; i++)
        Py_VISIT(st->aio_tr_str[i]);
    Py_VISIT(st->aio_streams);
    Py_VISIT(st->Cancelled);
    Py_VISIT(st->TaskCancelled);
    Py_VISIT(st->BusyResourceError);
    Py_VISIT(st->ClosedResourceError);
    Py_VISIT(st->BrokenResourceError);
    Py_VISIT(st->WouldBlock);
    Py_VISIT(st->IncompleteReadError);
    Py_VISIT(st->parked);
    return 0;
}

static int module_clear(PyObject *module)
{
    bro_state *st = PyModule_GetState(module);
    bro_freelist_close(&st->op_free);
    bro_freelist_close(&st->sockop_free);
    Py_CLEAR(st->loop_type);
    Py_CLEAR(st->task_type);
    Py_CLEAR(st->op_type);
    Py_CLEAR(st->op_debug_type);
    Py_CLEAR(st->scope_type);
    Py_CLEAR(st->nursery_type);
    Py_CLEAR(st->lot_type);
    Py_CLEAR(st->socket_type);
    Py_CLEAR(st->sockop_type);
    Py_CLEAR(st->event_type);
    Py_CLEAR(st->lock_type);
    Py_CLEAR(st->semaphore_type);
    Py_CLEAR(st->limiter_type);
    Py_CLEAR(st->queue_type);
    Py_CLEAR(st->conflict_type);
    Py_CLEAR(st->stream_type);
    Py_CLEAR(st->aio_core_type);
    Py_CLEAR(st->aio_sock_waiter_type);
    Py_CLEAR(st->aio_handle_type);
    Py_CLEAR(st->aio_timer_type);
    Py_CLEAR(st->aio_future_type);
    Py_CLEAR(st->aio_kw_loop);
    Py_CLEAR(st->aio_task_type);
    Py_CLEAR(st->aio_kw_task);
    Py_CLEAR(st->aio_str_task_factory);
    Py_CLEAR(st->aio_str_py_create_task);
    Py_CLEAR(st->aio_str_debug_handle);
    Py_CLEAR(st->aio_str_run_debug);
    Py_CLEAR(st->aio_str_callback_error);
    Py_CLEAR(st->aio_str_context);
    for (int i = 0; i < BRO_AIO_TR_STRS; i++)
        Py_CLEAR(st->aio_tr_str[i]);
    Py_CLEAR(st->aio_streams);
    Py_CLEAR(st->Cancelled);
    Py_CLEAR(st->TaskCancelled);
    Py_CLEAR(st->BusyResourceError);
    Py_CLEAR(st->ClosedResourceError);
    Py_CLEAR(st->BrokenResourceError);
    Py_CLEAR(st->WouldBlock);
    Py_CLEAR(st->IncompleteReadError);
    Py_CLEAR(st->parked);
    Py_CLEAR(st->str_qualname);
    Py_CLEAR(st->str_close);
    Py_CLEAR(st->str_throw);
    Py_CLEAR(st->str_split);
    Py_CLEAR(st->str_cr_frame);
    Py_CLEAR(st->str_cr_running);
    Py_CLEAR(st->str_cr_suspended);
    return 0;
}

static void module_free(void *module)
{
    module_clear((PyObject *)module);
}

static PyModuleDef_Slot module_slots[] = {
    {Py_mod_exec, module_exec},
#if PY_VERSION_HEX >= 0x030C0000
    /* bro_running_loop is per thread, not per interpreter. */
    {Py_mod_multiple_interpreters, Py_MOD_MULTIPLE_INTERPRETERS_NOT_SUPPORTED},
#endif
    {0, NULL},
};

PyModuleDef bro_module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "broomio._engine",
    .m_doc = "broomio's C engine: loop, tasks, timers, poller, cancel scopes, nurseries, "
             "synchronization primitives.",
    .m_size = sizeof(bro_state),
    .m_methods = module_functions,
    .m_slots = module_slots,
    .m_traverse = module_traverse,
    .m_clear = module_clear,
    .m_free = module_free,
};

PyMODINIT_FUNC PyInit__engine(void)
{
    return PyModuleDef_Init(&bro_module_def);
}
