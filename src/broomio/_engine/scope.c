/*
 * scope.c -- CancelScope: trio's level-triggered, shieldable cancellation.
 *
 * The tree.  Entering a scope makes it the task's innermost scope; its parent is the scope
 * that was innermost before.  A nursery's children start inside the nursery's scope.  Each
 * scope lists the tasks whose innermost scope it is (first_task, via task->scope_prev/next)
 * and its child scopes (first_child, via prev_sib/next_sib); both lists are borrowed, and
 * every member unlinks itself before it lets go of its strong reference to the scope.
 *
 * effective = cancel_called || (!shield && parent->effective).  It is recomputed eagerly
 * whenever cancel_called, shield or the parent's effective value changes, walking down the
 * subtree and stopping wherever nothing changes.  Tasks whose cancel_pending becomes true are
 * collected during the walk and only then delivered to, because delivering can run Python
 * code (an external abort function) which must not see a half-updated tree.
 *
 * Catching.  A Cancelled exception is swallowed by the outermost cancelled scope it can
 * reach: a scope whose cancel() was called catches it at __exit__ unless its parent is
 * effectively cancelled too and not shielded off, in which case it passes up (trio's rule).
 * Cancellation is level-triggered: while any enclosing scope is cancelled, every checkpoint
 * raises again.
 */
#include <math.h>

#include "heap.h"
#include "loop.h"
#include "scope.h"
#include "task.h"

void bro_scope_attach_task(bro_scope *s, bro_task *t)
{
    assert(t->scope == NULL);
    t->scope = (bro_scope *)Py_NewRef(s);
    t->scope_prev = NULL;
    t->scope_next = s->first_task;
    if (s->first_task)
        s->first_task->scope_prev = t;
    s->first_task = t;
    t->cancel_pending = (uint8_t)(s->effective || (t->cancel_requested && s->owner != t));
}

void bro_scope_detach_task(bro_task *t)
{
    bro_scope *s = t->scope;
    if (s == NULL)
        return;
    if (t->scope_prev)
        t->scope_prev->scope_next = t->scope_next;
    else if (s->first_task == t)
        s->first_task = t->scope_next;
    if (t->scope_next)
        t->scope_next->scope_prev = t->scope_prev;
    t->scope_prev = t->scope_next = NULL;
    t->scope = NULL;
    Py_DECREF(s);
}

static void scope_unlink_from_parent(bro_scope *s)
{
    bro_scope *p = s->parent;
    if (p == NULL)
        return;
    if (s->prev_sib)
        s->prev_sib->next_sib = s->next_sib;
    else if (p->first_child == s)
        p->first_child = s->next_sib;
    if (s->next_sib)
        s->next_sib->prev_sib = s->prev_sib;
    s->prev_sib = s->next_sib = NULL;
}

static int scope_live(bro_scope *s)
{
    return s->entered && !s->exited;
}

/* Does a cancellation from outside reach into s?  Either its parent is effectively
 * cancelled, or s is the outermost scope its owner task entered and that task was cancelled
 * with task.cancel() (which acts like a scope just around the task's body).  A shield stops
 * both. */
static int scope_outside_cancelled(bro_scope *s)
{
    if (s->shield)
        return 0;
    if (s->parent != NULL && s->parent->effective)
        return 1;
    return s->owner != NULL && s->owner->cancel_requested &&
           (s->parent == NULL || s->parent->owner != s->owner);
}

static void scope_recompute(bro_scope *s, PyObject *deliver)
{
    int effective = s->cancel_called || scope_outside_cancelled(s);
    if (effective == s->effective)
        return;
    s->effective = (uint8_t)effective;
    for (bro_task *t = s->first_task; t != NULL; t = t->scope_next)
        bro_task_update_cancel(t, deliver);
    for (bro_scope *c = s->first_child; c != NULL; c = c->next_sib)
        scope_recompute(c, deliver);
}

/* Recomputes s's subtree and delivers Cancelled to tasks that started waiting before. */
static int scope_propagate(bro_scope *s)
{
    PyObject *deliver = PyList_New(0);
    if (deliver == NULL)
        return -1;
    scope_recompute(s, deliver);
    int r = 0;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(deliver); i++) {
        if (bro_task_deliver_cancel((bro_task *)PyList_GET_ITEM(deliver, i)) < 0)
            r = -1;
    }
    Py_DECREF(deliver);
    return r;
}

static void scope_remove_timer(bro_scope *s)
{
    if (s->heap_index >= 0 && s->loop != NULL) {
        PyObject *ref = bro_heap_remove(&s->loop->heap, (PyObject *)s);
        Py_XDECREF(ref);
    }
}

int bro_scope_cancel(bro_scope *s)
{
    if (s->cancel_called)
        return 0;
    s->cancel_called = 1;
    scope_remove_timer(s);
    if (!scope_live(s))
        return 0;
    return scope_propagate(s);
}

int bro_task_cancel(bro_task *t)
{
    if (t->state == BRO_TASK_DONE || t->cancel_requested)
        return 0;
    t->cancel_requested = 1;
    /* The cancellation enters through the outermost scope the task itself entered, so that
     * it reaches the task's nurseries and respects its shields. */
    bro_scope *outer = NULL;
    for (bro_scope *s = t->scope; s != NULL && s->owner == t; s = s->parent)
        outer = s;
    if (outer != NULL && scope_propagate(outer) < 0)
        return -1;
    bro_task_update_cancel(t, NULL);
    return 0;
}

int bro_scope_fire(bro_scope *s)
{
    return bro_scope_cancel(s);
}

/* Arms the deadline timer of a live scope, or cancels at once if it already passed. */
static int scope_arm_deadline(bro_scope *s)
{
    scope_remove_timer(s);
    if (s->cancel_called || !scope_live(s) || (isinf(s->deadline) && s->deadline > 0))
        return 0;
    double now;
    if (bro_loop_now(s->loop, &now) < 0)
        return -1;
    if (s->deadline <= now)
        return bro_scope_cancel(s);
    return bro_heap_push(&s->loop->heap, s->deadline, (PyObject *)s);
}

bro_scope *bro_scope_new_root(bro_loop *loop)
{
    bro_scope *s = PyObject_GC_New(bro_scope, loop->st->scope_type);
    if (s == NULL)
        return NULL;
    memset((char *)s + sizeof(PyObject), 0, sizeof(bro_scope) - sizeof(PyObject));
    s->heap_index = -1;
    s->deadline = INFINITY;
    s->entered = 1;
    s->loop = (bro_loop *)Py_NewRef(loop);
    PyObject_GC_Track(s);
    return s;
}

/* Enters s in task t; shared by __enter__ and nurseries. */

int bro_scope_enter(bro_scope *s, bro_task *t)
{
    if (s->entered) {
        PyErr_SetString(PyExc_RuntimeError, "each CancelScope may only be entered once");
        return -1;
    }
    bro_scope *parent = t->scope;
    s->entered = 1;
    s->owner = t;
    Py_XSETREF(s->loop, (bro_loop *)Py_NewRef(t->loop));
    s->parent = (bro_scope *)Py_XNewRef(parent);
    if (parent != NULL) {
        s->next_sib = parent->first_child;
        if (parent->first_child)
            parent->first_child->prev_sib = s;
        parent->first_child = s;
    }
    s->effective = (uint8_t)(s->cancel_called || scope_outside_cancelled(s));
    bro_scope_detach_task(t);
    bro_scope_attach_task(s, t);
    return scope_arm_deadline(s);
}

static PyObject *scope_enter(bro_scope *s, PyObject *Py_UNUSED(ignored))
{
    bro_task *t = bro_current_task();
    if (t == NULL) {
        PyErr_SetString(PyExc_RuntimeError,
                        "a CancelScope must be entered inside a task run by a broomio loop");
        return NULL;
    }
    if (bro_scope_enter(s, t) < 0)
        return NULL;
    return Py_NewRef(s);
}

/* Leaves s in task t; the exception handling is the caller's. */

int bro_scope_leave(bro_scope *s, bro_task *t)
{
    if (!s->entered || s->exited) {
        PyErr_SetString(PyExc_RuntimeError, "this CancelScope is not active");
        return -1;
    }
    if (t != s->owner) {
        PyErr_SetString(PyExc_RuntimeError,
                        "a CancelScope must be exited in the task that entered it");
        return -1;
    }
    if (t->scope != s) {
        PyErr_SetString(PyExc_RuntimeError,
                        "cancel scopes exited out of order: this scope is not the innermost "
                        "active scope of its task");
        return -1;
    }
    s->exited = 1;
    scope_remove_timer(s);
    bro_scope *parent = s->parent;
    bro_scope_detach_task(t);
    if (parent != NULL)
        bro_scope_attach_task(parent, t);
    scope_unlink_from_parent(s);
    s->owner = NULL;
    return 0;
}

static int is_cancelled(bro_state *st, PyObject *exc)
{
    return exc != NULL && PyObject_TypeCheck(exc, (PyTypeObject *)st->Cancelled);
}

static PyObject *scope_exit(bro_scope *s, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "__exit__() takes exactly 3 arguments");
        return NULL;
    }
    PyObject *exc = args[1];
    bro_task *t = bro_current_task();
    if (t == NULL) {
        PyErr_SetString(PyExc_RuntimeError,
                        "a CancelScope must be exited inside a task run by a broomio loop");
        return NULL;
    }
    /* A Cancelled belongs to the outermost cancelled scope it can see: if the parent's
     * cancellation reaches through this scope (no shield), let the exception go up to it,
     * as trio does.  Decide before leaving, while the tree is intact. */
    int catches = s->cancel_called && !scope_outside_cancelled(s);
    if (bro_scope_leave(s, t) < 0)
        return NULL;
    bro_state *st = t->loop->st;
    if (exc == Py_None || !catches)
        Py_RETURN_FALSE;
    if (is_cancelled(st, exc)) {
        s->caught = 1;
        Py_RETURN_TRUE;
    }
    if (PyObject_TypeCheck(exc, (PyTypeObject *)PyExc_BaseExceptionGroup)) {
        /* Strip the Cancelled leaves this scope is responsible for. */
        PyObject *parts = PyObject_CallMethodOneArg(exc, st->str_split, st->Cancelled);
        if (parts == NULL)
            return NULL;
        if (!PyTuple_Check(parts) || PyTuple_GET_SIZE(parts) != 2) {
            Py_DECREF(parts);
            PyErr_SetString(PyExc_TypeError, "ExceptionGroup.split() returned a bad value");
            return NULL;
        }
        PyObject *matched = PyTuple_GET_ITEM(parts, 0);
        PyObject *rest = PyTuple_GET_ITEM(parts, 1);
        if (matched == Py_None) {
            Py_DECREF(parts);
            Py_RETURN_FALSE;
        }
        s->caught = 1;
        if (rest == Py_None) {
            Py_DECREF(parts);
            Py_RETURN_TRUE;
        }
        PyErr_SetObject((PyObject *)Py_TYPE(rest), rest);
        Py_DECREF(parts);
        return NULL;
    }
    Py_RETURN_FALSE;
}

static PyObject *scope_cancel(bro_scope *s, PyObject *Py_UNUSED(ignored))
{
    if (bro_scope_cancel(s) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static int parse_deadline(PyObject *v, double *out)
{
    return bro_parse_seconds(v, "CancelScope", "deadline", out);
}

static int scope_init(bro_scope *s, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"deadline", "shield", NULL};
    PyObject *deadline = NULL;
    int shield = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|$Op:CancelScope", kwlist, &deadline, &shield))
        return -1;
    if (s->entered) {
        PyErr_SetString(PyExc_RuntimeError, "cannot re-initialize a CancelScope in use");
        return -1;
    }
    s->deadline = INFINITY;
    if (deadline != NULL && parse_deadline(deadline, &s->deadline) < 0)
        return -1;
    s->shield = (uint8_t)shield;
    return 0;
}

static PyObject *scope_new(PyTypeObject *type, PyObject *Py_UNUSED(args), PyObject *Py_UNUSED(kwds))
{
    bro_scope *s = (bro_scope *)type->tp_alloc(type, 0);
    if (s == NULL)
        return NULL;
    s->heap_index = -1;
    s->deadline = INFINITY;
    return (PyObject *)s;
}

static PyObject *scope_get_deadline(bro_scope *s, void *Py_UNUSED(c))
{
    return PyFloat_FromDouble(s->deadline);
}

static int scope_set_deadline(bro_scope *s, PyObject *v, void *Py_UNUSED(c))
{
    if (v == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete the deadline");
        return -1;
    }
    double d;
    if (parse_deadline(v, &d) < 0)
        return -1;
    s->deadline = d;
    return scope_arm_deadline(s);
}

static PyObject *scope_get_shield(bro_scope *s, void *Py_UNUSED(c))
{
    return PyBool_FromLong(s->shield);
}

static int scope_set_shield(bro_scope *s, PyObject *v, void *Py_UNUSED(c))
{
    if (v == NULL || !PyBool_Check(v)) {
        PyErr_SetString(PyExc_TypeError, "shield must be True or False");
        return -1;
    }
    s->shield = (uint8_t)(v == Py_True);
    if (!scope_live(s))
        return 0;
    return scope_propagate(s);
}

static PyObject *scope_get_cancel_called(bro_scope *s, void *Py_UNUSED(c))
{
    return PyBool_FromLong(s->cancel_called);
}

static PyObject *scope_get_caught(bro_scope *s, void *Py_UNUSED(c))
{
    return PyBool_FromLong(s->caught);
}

static PyObject *scope_repr(bro_scope *s)
{
    const char *state = !s->entered ? "unbound" : s->exited ? "exited" : "active";
    PyObject *d = PyFloat_FromDouble(s->deadline);
    if (d == NULL)
        return NULL;
    PyObject *r =
        PyUnicode_FromFormat("<CancelScope %s%s%s deadline=%R>", state,
                             s->cancel_called ? " cancelled" : "", s->shield ? " shielded" : "", d);
    Py_DECREF(d);
    return r;
}

static int scope_traverse(bro_scope *s, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(s));
    Py_VISIT(s->parent);
    Py_VISIT(s->loop);
    return 0;
}

static int scope_clear(bro_scope *s)
{
    scope_remove_timer(s);
    scope_unlink_from_parent(s);
    /* Children and tasks hold strong references to us, so during a collection they are
     * being cleared too; cut their links to us so no one follows a dangling pointer. */
    for (bro_scope *c = s->first_child; c != NULL;) {
        bro_scope *next = c->next_sib;
        c->prev_sib = c->next_sib = NULL;
        c = next;
    }
    s->first_child = NULL;
    for (bro_task *t = s->first_task; t != NULL;) {
        bro_task *next = t->scope_next;
        t->scope_prev = t->scope_next = NULL;
        t = next;
    }
    s->first_task = NULL;
    Py_CLEAR(s->parent);
    Py_CLEAR(s->loop);
    return 0;
}

static void scope_dealloc(bro_scope *s)
{
    PyTypeObject *tp = Py_TYPE(s);
    PyObject_GC_UnTrack(s);
    scope_clear(s);
    tp->tp_free((PyObject *)s);
    Py_DECREF(tp);
}

static PyMethodDef scope_methods[] = {
    {"__enter__", (PyCFunction)scope_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)(void (*)(void))scope_exit, METH_FASTCALL, NULL},
    {"cancel", (PyCFunction)scope_cancel, METH_NOARGS,
     "Cancel everything inside this scope (idempotent)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef scope_getset[] = {
    {"deadline", (getter)scope_get_deadline, (setter)scope_set_deadline,
     "Absolute deadline on the loop's clock (inf: none).", NULL},
    {"shield", (getter)scope_get_shield, (setter)scope_set_shield,
     "Protect the body from the cancellation of enclosing scopes.", NULL},
    {"cancel_called", (getter)scope_get_cancel_called, NULL,
     "True once cancel() was called or the deadline passed.", NULL},
    {"cancelled_caught", (getter)scope_get_caught, NULL,
     "True if this scope swallowed a Cancelled exception at exit.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot scope_slots[] = {
    {Py_tp_doc, "CancelScope(*, deadline=inf, shield=False)\n--\n\n"
                "A region of code that can be cancelled as a unit."},
    {Py_tp_new, scope_new},
    {Py_tp_init, scope_init},
    {Py_tp_dealloc, scope_dealloc},
    {Py_tp_traverse, scope_traverse},
    {Py_tp_clear, scope_clear},
    {Py_tp_repr, scope_repr},
    {Py_tp_methods, scope_methods},
    {Py_tp_getset, scope_getset},
    {0, NULL},
};

static PyType_Spec scope_spec = {
    .name = "broomio.CancelScope",
    .basicsize = sizeof(bro_scope),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = scope_slots,
};

int bro_scope_init_types(PyObject *module, bro_state *st)
{
    return bro_module_add_type(module, &scope_spec, NULL, &st->scope_type);
}

PyObject *bro_mod_current_effective_deadline(PyObject *Py_UNUSED(module),
                                             PyObject *Py_UNUSED(ignored))
{
    bro_task *t = bro_current_task();
    if (t == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "must be called from a task run by a broomio loop");
        return NULL;
    }
    if (t->cancel_pending)
        return PyFloat_FromDouble(-INFINITY);
    double d = INFINITY;
    for (bro_scope *s = t->scope; s != NULL; s = s->parent) {
        if (s->deadline < d)
            d = s->deadline;
        if (s->shield)
            break;
    }
    return PyFloat_FromDouble(d);
}
