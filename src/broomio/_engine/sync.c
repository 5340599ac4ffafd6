/*
 * sync.c -- parking lots, and the ParkingLot type built on them.
 *
 * A lot is a FIFO of parked tasks threaded through the tasks themselves (lot_prev,
 * lot_next), so parking, waking the first waiter and removing a cancelled waiter are all
 * O(1) and allocate nothing.  The lot's pointers are borrowed: a parked task is kept alive
 * by its nursery.  The synchronization primitives (Event, Lock, Semaphore, Queue, ...) are
 * built on this core.
 *
 * Cancellation safety: a waiter that is cancelled is unlinked by bro_task_abort_wait()
 * before it is woken with Cancelled; a waiter that was already unparked is no longer in the
 * lot and is not WAITING, so it keeps what it was given and sees the cancellation at its
 * next checkpoint.  Nothing handed over is ever lost.
 */
#include "loop.h"
#include "sync.h"
#include "task.h"

void bro_lot_append(bro_lot *lot, bro_task *t)
{
    t->lot = lot;
    t->lot_next = NULL;
    t->lot_prev = lot->tail;
    if (lot->tail)
        lot->tail->lot_next = t;
    else
        lot->head = t;
    lot->tail = t;
    lot->len++;
}

void bro_lot_unlink(bro_task *t)
{
    bro_lot *lot = t->lot;
    if (lot == NULL)
        return;
    if (t->lot_prev)
        t->lot_prev->lot_next = t->lot_next;
    else
        lot->head = t->lot_next;
    if (t->lot_next)
        t->lot_next->lot_prev = t->lot_prev;
    else
        lot->tail = t->lot_prev;
    t->lot_prev = t->lot_next = NULL;
    t->lot = NULL;
    lot->len--;
}

Py_ssize_t bro_lot_unpark(bro_lot *lot, Py_ssize_t n, PyObject *value)
{
    Py_ssize_t woken = 0;
    while (woken < n && lot->head != NULL) {
        bro_task *t = lot->head;
        bro_lot_unlink(t);
        bro_task_wake(t, value, NULL);
        woken++;
    }
    return woken;
}

void bro_lot_detach_all(bro_lot *lot)
{
    while (lot->head != NULL)
        bro_lot_unlink(lot->head);
}

/* ---- ParkingLot ------------------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD bro_lot lot;
} bro_lot_object;

bro_lot *bro_lot_object_lot(PyObject *parking_lot)
{
    return &((bro_lot_object *)parking_lot)->lot;
}

static PyObject *lotobj_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    if (PyTuple_GET_SIZE(args) != 0 || (kwds != NULL && PyDict_GET_SIZE(kwds) != 0)) {
        PyErr_SetString(PyExc_TypeError, "ParkingLot() takes no arguments");
        return NULL;
    }
    return type->tp_alloc(type, 0);
}

static PyObject *lotobj_park(bro_lot_object *self, PyObject *Py_UNUSED(ignored))
{
    bro_loop *loop = bro_running_loop;
    if (loop == NULL) {
        PyErr_SetString(PyExc_RuntimeError,
                        "ParkingLot.park() must be awaited in a task run by a broomio loop");
        return NULL;
    }
    return bro_op_park(loop->st, (PyObject *)self, &self->lot);
}

static PyObject *lotobj_unpark(bro_lot_object *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"n", "value", NULL};
    PyObject *count = NULL, *value = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|OO:unpark", kwlist, &count, &value))
        return NULL;
    Py_ssize_t n = 1;
    if (count != NULL) {
        if (!PyLong_Check(count) || PyBool_Check(count)) {
            PyErr_SetString(PyExc_TypeError, "unpark() argument 'n' must be an int");
            return NULL;
        }
        n = PyLong_AsSsize_t(count);
        if (n == -1 && PyErr_Occurred())
            return NULL;
        if (n < 0) {
            PyErr_SetString(PyExc_ValueError, "unpark() argument 'n' must be non-negative");
            return NULL;
        }
    }
    return PyLong_FromSsize_t(bro_lot_unpark(&self->lot, n, value));
}

static PyObject *lotobj_unpark_all(bro_lot_object *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"value", NULL};
    PyObject *value = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|O:unpark_all", kwlist, &value))
        return NULL;
    return PyLong_FromSsize_t(bro_lot_unpark(&self->lot, PY_SSIZE_T_MAX, value));
}

static Py_ssize_t lotobj_len(bro_lot_object *self)
{
    return self->lot.len;
}

static PyObject *lotobj_repr(bro_lot_object *self)
{
    return PyUnicode_FromFormat("<broomio.lowlevel.ParkingLot waiters=%zd>", self->lot.len);
}

static int lotobj_traverse(bro_lot_object *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    return 0;
}

static void lotobj_dealloc(bro_lot_object *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    bro_lot_detach_all(&self->lot);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyMethodDef lotobj_methods[] = {
    {"park", (PyCFunction)lotobj_park, METH_NOARGS,
     "Awaitable: wait in FIFO order until unparked; returns the value given to unpark()."},
    {"unpark", (PyCFunction)(void (*)(void))lotobj_unpark, METH_VARARGS | METH_KEYWORDS,
     "unpark(n=1, value=None) -> int\n--\n\nWake up to n parked tasks, oldest first."},
    {"unpark_all", (PyCFunction)(void (*)(void))lotobj_unpark_all, METH_VARARGS | METH_KEYWORDS,
     "unpark_all(value=None) -> int\n--\n\nWake every parked task."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot lotobj_slots[] = {
    {Py_tp_doc, "A FIFO queue of parked tasks: the building block of synchronization."},
    {Py_tp_new, lotobj_new},
    {Py_tp_dealloc, lotobj_dealloc},
    {Py_tp_traverse, lotobj_traverse},
    {Py_tp_repr, lotobj_repr},
    {Py_tp_methods, lotobj_methods},
    {Py_sq_length, lotobj_len},
    {0, NULL},
};

static PyType_Spec lotobj_spec = {
    .name = "broomio.lowlevel.ParkingLot",
    .basicsize = sizeof(bro_lot_object),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = lotobj_slots,
};

int bro_lot_init_types(PyObject *module, bro_state *st)
{
    return bro_module_add_type(module, &lotobj_spec, NULL, &st->lot_type);
}
