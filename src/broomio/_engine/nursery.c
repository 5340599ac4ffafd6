/*
 * nursery.c -- the C core of nurseries: spawning children and counting them back in.
 *
 * The per-child work (spawn, child finished) is here because it is the hot path of
 * structured concurrency; the once-per-nursery policy (__aenter__/__aexit__, how errors are
 * grouped, start()) is Python, in broomio/_core.py, built on these methods.
 *
 * Ownership: the child list owns a reference to each live child; each child owns a
 * reference to its nursery (task->nursery) until it finishes.  A loop's root nursery has no
 * parent task and its scope is never entered; Loop.start_soon() spawns into it.
 *
 * When a child finishes with an exception other than Cancelled, the error is recorded and
 * the nursery's scope is cancelled, which cancels the siblings and the body.  Cancelled is
 * not an error here: a child only ends with Cancelled because this scope (or one around it)
 * was cancelled, or because someone called task.cancel() on it.
 */
#include "loop.h"
#include "scope.h"
#include "task.h"

void bro_nursery_link_child(bro_nursery *n, bro_task *t)
{
    t->nursery = (bro_nursery *)Py_NewRef(n);
    Py_INCREF(t); /* the list's reference */
    t->sib_next = NULL;
    t->sib_prev = n->last_child;
    if (n->last_child)
        n->last_child->sib_next = t;
    else
        n->first_child = t;
    n->last_child = t;
    n->nchildren++;
}

/* Unlinks t and drops the list's reference (the caller must hold its own). */
void bro_nursery_unlink_child(bro_nursery *n, bro_task *t)
{
    if (t->sib_prev)
        t->sib_prev->sib_next = t->sib_next;
    else if (n->first_child == t)
        n->first_child = t->sib_next;
    else
        return; /* not linked */
    if (t->sib_next)
        t->sib_next->sib_prev = t->sib_prev;
    else
        n->last_child = t->sib_prev;
    t->sib_prev = t->sib_next = NULL;
    n->nchildren--;
    Py_DECREF(t);
}

static int nursery_record(bro_nursery *n, PyObject *exc)
{
    if (n->errors == NULL && (n->errors = PyList_New(0)) == NULL)
        return -1;
    if (PyList_Append(n->errors, exc) < 0)
        return -1;
    return bro_scope_cancel(n->scope);
}

int bro_nursery_child_done(bro_nursery *n, bro_task *t)
{
    int r = 0;
    PyObject *exc = BRO_TASK_EXC(t);
    if (exc != NULL && !PyObject_TypeCheck(exc, (PyTypeObject *)n->loop->st->Cancelled))
        r = nursery_record(n, exc);
    bro_nursery_unlink_child(n, t);
    if (n->nchildren == 0 && n->parent_waiting) {
        n->parent_waiting = 0;
        bro_task *p = n->parent;
        if (p != NULL && p->state == BRO_TASK_WAITING && p->wait == BRO_WAIT_CHILDREN)
            bro_task_wake(p, NULL, NULL);
    }
    return r;
}

PyObject *bro_nursery_take_errors(bro_nursery *n)
{
    PyObject *errors = n->errors ? n->errors : PyList_New(0);
    n->errors = NULL;
    return errors;
}

bro_nursery *bro_nursery_new_root(bro_loop *loop)
{
    bro_nursery *n = PyObject_GC_New(bro_nursery, loop->st->nursery_type);
    if (n == NULL)
        return NULL;
    memset((char *)n + sizeof(PyObject), 0, sizeof(bro_nursery) - sizeof(PyObject));
    n->loop = (bro_loop *)Py_NewRef(loop);
    n->scope = bro_scope_new_root(loop);
    n->entered = 1;
    PyObject_GC_Track(n);
    if (n->scope == NULL) {
        Py_DECREF(n);
        return NULL;
    }
    return n;
}

/* ---- methods ------------------------------------------------------------------------- */

static int nursery_check_open(bro_nursery *n)
{
    if (!n->entered) {
        PyErr_SetString(PyExc_RuntimeError,
                        "this nursery is not open: use 'async with open_nursery() as n:' "
                        "before starting tasks in it");
        return -1;
    }
    if (n->closed) {
        PyErr_SetString(PyExc_RuntimeError,
                        "this nursery is closed to new tasks: its 'async with' block has exited");
        return -1;
    }
    return 0;
}

static PyObject *nursery_start_soon(bro_nursery *n, PyObject *const *args, Py_ssize_t nargs,
                                    PyObject *kwnames)
{
    if (nursery_check_open(n) < 0)
        return NULL;
    return bro_spawn_from_args(n->loop, n, 0.0, args, nargs, kwnames);
}

static PyObject *nursery_start_later(bro_nursery *n, PyObject *const *args, Py_ssize_t nargs,
                                     PyObject *kwnames)
{
    if (nursery_check_open(n) < 0)
        return NULL;
    return bro_spawn_later_from_args(n->loop, n, args, nargs, kwnames);
}

static PyObject *nursery_open(bro_nursery *n, PyObject *Py_UNUSED(ignored))
{
    bro_task *t = bro_current_task();
    if (t == NULL) {
        PyErr_SetString(PyExc_RuntimeError,
                        "a nursery must be opened inside a task run by a broomio loop");
        return NULL;
    }
    if (n->entered) {
        PyErr_SetString(PyExc_RuntimeError, "a nursery can only be opened once");
        return NULL;
    }
    PyObject *scope = PyObject_CallNoArgs((PyObject *)t->loop->st->scope_type);
    if (scope == NULL)
        return NULL;
    if (bro_scope_enter((bro_scope *)scope, t) < 0) {
        Py_DECREF(scope);
        return NULL;
    }
    n->scope = (bro_scope *)scope;
    n->loop = (bro_loop *)Py_NewRef(t->loop);
    n->parent = (bro_task *)Py_NewRef(t);
    n->entered = 1;
    Py_RETURN_NONE;
}

static PyObject *nursery_wait_children(bro_nursery *n, PyObject *Py_UNUSED(ignored))
{
    if (!n->entered || n->loop == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "this nursery was never opened");
        return NULL;
    }
    return bro_op_children(n);
}

static PyObject *nursery_finish(bro_nursery *n, PyObject *Py_UNUSED(ignored))
{
    n->closed = 1;
    return bro_nursery_take_errors(n);
}

static PyObject *nursery_record_error(bro_nursery *n, PyObject *exc)
{
    if (!PyExceptionInstance_Check(exc)) {
        PyErr_SetString(PyExc_TypeError, "_record_error() expects an exception instance");
        return NULL;
    }
    if (n->scope == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "this nursery was never opened");
        return NULL;
    }
    if (nursery_record(n, exc) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *nursery_cancel(bro_nursery *n, PyObject *Py_UNUSED(ignored))
{
    if (n->scope != NULL && bro_scope_cancel(n->scope) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *nursery_get_scope(bro_nursery *n, void *Py_UNUSED(c))
{
    return Py_NewRef(n->scope ? (PyObject *)n->scope : Py_None);
}

static PyObject *nursery_get_children(bro_nursery *n, void *Py_UNUSED(c))
{
    /* A list first: allocating can run finalizers that change the child list. */
    PyObject *list = PyList_New(0);
    if (list == NULL)
        return NULL;
    for (bro_task *t = n->first_child; t != NULL; t = t->sib_next) {
        if (PyList_Append(list, (PyObject *)t) < 0) {
            Py_DECREF(list);
            return NULL;
        }
    }
    PyObject *tuple = PyList_AsTuple(list);
    Py_DECREF(list);
    return tuple;
}

static PyObject *nursery_get_parent(bro_nursery *n, void *Py_UNUSED(c))
{
    return Py_NewRef(n->parent ? (PyObject *)n->parent : Py_None);
}

static PyObject *nursery_get_closed(bro_nursery *n, void *Py_UNUSED(c))
{
    return PyBool_FromLong(n->closed);
}

static int nursery_traverse(bro_nursery *n, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(n));
    Py_VISIT(n->loop);
    Py_VISIT(n->scope);
    Py_VISIT(n->parent);
    Py_VISIT(n->errors);
    for (bro_task *t = n->first_child; t != NULL; t = t->sib_next)
        Py_VISIT(t);
    return 0;
}

static int nursery_clear(bro_nursery *n)
{
    while (n->first_child != NULL) {
        bro_task *t = n->first_child;
        Py_INCREF(t);
        bro_nursery_unlink_child(n, t);
        if (t->nursery == n) {
            t->nursery = NULL;
            Py_DECREF(n); /* cannot free n: our caller holds a reference */
        }
        Py_DECREF(t);
    }
    Py_CLEAR(n->scope);
    Py_CLEAR(n->parent);
    Py_CLEAR(n->errors);
    Py_CLEAR(n->loop);
    return 0;
}

static void nursery_dealloc(bro_nursery *n)
{
    /* Every live child holds a reference to its nursery, so a nursery being deallocated
     * has no children left and nursery_clear() only drops plain references. */
    PyTypeObject *tp = Py_TYPE(n);
    PyObject_GC_UnTrack(n);
    nursery_clear(n);
    tp->tp_free((PyObject *)n);
    Py_DECREF(tp);
}

static PyMethodDef nursery_methods[] = {
    {"start_soon", (PyCFunction)(void (*)(void))nursery_start_soon, METH_FASTCALL | METH_KEYWORDS,
     "start_soon(fn_or_coro, *args, name=None) -> Task\n--\n\nStart a child task."},
    {"start_later", (PyCFunction)(void (*)(void))nursery_start_later, METH_FASTCALL | METH_KEYWORDS,
     "start_later(delay, fn_or_coro, *args, name=None) -> Task\n--\n\n"
     "Start a child task after delay seconds."},
    {"cancel", (PyCFunction)nursery_cancel, METH_NOARGS,
     "Cancel the nursery's scope: its body and every child."},
    {"_open", (PyCFunction)nursery_open, METH_NOARGS, NULL},
    {"_wait_children", (PyCFunction)nursery_wait_children, METH_NOARGS, NULL},
    {"_finish", (PyCFunction)nursery_finish, METH_NOARGS, NULL},
    {"_record_error", (PyCFunction)nursery_record_error, METH_O, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef nursery_getset[] = {
    {"cancel_scope", (getter)nursery_get_scope, NULL, "The nursery's CancelScope.", NULL},
    {"child_tasks", (getter)nursery_get_children, NULL, "The live child tasks (a tuple).", NULL},
    {"parent_task", (getter)nursery_get_parent, NULL, "The task that opened the nursery.", NULL},
    {"closed", (getter)nursery_get_closed, NULL, "True once the block has exited.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot nursery_slots[] = {
    {Py_tp_doc, "The C core of a nursery; use broomio.open_nursery()."},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_dealloc, nursery_dealloc},
    {Py_tp_traverse, nursery_traverse},
    {Py_tp_clear, nursery_clear},
    {Py_tp_methods, nursery_methods},
    {Py_tp_getset, nursery_getset},
    {0, NULL},
};

static PyType_Spec nursery_spec = {
    .name = "broomio._engine.NurseryCore",
    .basicsize = sizeof(bro_nursery),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE,
    .slots = nursery_slots,
};

int bro_nursery_init_types(PyObject *module, bro_state *st)
{
    return bro_module_add_type(module, &nursery_spec, NULL, &st->nursery_type);
}
