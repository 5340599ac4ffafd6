/*
 * timers.c -- the indexed binary min-heap behind sleeps, start_later and scope deadlines.
 *
 * Entries are ordered by (when, seq); seq grows with every push, so timers with equal
 * deadlines fire in the order they were set.  Each entry's object records its own position
 * (bro_timed.heap_index), which every swap updates: that is what makes removal O(log n).
 */
#include "heap.h"

static inline int timer_less(const bro_timer *a, const bro_timer *b)
{
    return a->when < b->when || (a->when == b->when && a->seq < b->seq);
}

static inline void heap_set(bro_timer_heap *h, Py_ssize_t i, bro_timer item)
{
    h->items[i] = item;
    ((bro_timed *)item.obj)->heap_index = i;
}

static void sift_up(bro_timer_heap *h, Py_ssize_t i)
{
    bro_timer item = h->items[i];
    while (i > 0) {
        Py_ssize_t parent = (i - 1) / 2;
        if (!timer_less(&item, &h->items[parent]))
            break;
        heap_set(h, i, h->items[parent]);
        i = parent;
    }
    heap_set(h, i, item);
}

static void sift_down(bro_timer_heap *h, Py_ssize_t i)
{
    bro_timer item = h->items[i];
    for (;;) {
        Py_ssize_t child = 2 * i + 1;
        if (child >= h->len)
            break;
        if (child + 1 < h->len && timer_less(&h->items[child + 1], &h->items[child]))
            child++;
        if (!timer_less(&h->items[child], &item))
            break;
        heap_set(h, i, h->items[child]);
        i = child;
    }
    heap_set(h, i, item);
}

int bro_heap_push(bro_timer_heap *h, double when, PyObject *obj)
{
    assert(((bro_timed *)obj)->heap_index < 0);
    if (h->len == h->cap) {
        Py_ssize_t cap = h->cap ? h->cap * 2 : 64;
        bro_timer *items = PyMem_Realloc(h->items, (size_t)cap * sizeof(bro_timer));
        if (items == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        h->items = items;
        h->cap = cap;
    }
    bro_timer item = {when, h->next_seq++, Py_NewRef(obj)};
    h->items[h->len] = item;
    h->len++;
    sift_up(h, h->len - 1);
    return 0;
}

static PyObject *heap_take(bro_timer_heap *h, Py_ssize_t i)
{
    PyObject *obj = h->items[i].obj;
    ((bro_timed *)obj)->heap_index = -1;
    h->len--;
    if (i != h->len) {
        bro_timer last = h->items[h->len];
        heap_set(h, i, last);
        /* The moved entry may belong above or below its new position. */
        if (i > 0 && timer_less(&h->items[i], &h->items[(i - 1) / 2]))
            sift_up(h, i);
        else
            sift_down(h, i);
    }
    return obj;
}

PyObject *bro_heap_remove(bro_timer_heap *h, PyObject *obj)
{
    Py_ssize_t i = ((bro_timed *)obj)->heap_index;
    if (i < 0 || i >= h->len || h->items[i].obj != obj)
        return NULL;
    return heap_take(h, i);
}

PyObject *bro_heap_pop_due(bro_timer_heap *h, double now)
{
    if (h->len == 0 || h->items[0].when > now)
        return NULL;
    return heap_take(h, 0);
}

void bro_heap_clear(bro_timer_heap *h)
{
    while (h->len > 0) {
        PyObject *obj = heap_take(h, h->len - 1);
        Py_DECREF(obj);
    }
    PyMem_Free(h->items);
    h->items = NULL;
    h->cap = 0;
}

int bro_heap_traverse(bro_timer_heap *h, visitproc visit, void *arg)
{
    for (Py_ssize_t i = 0; i < h->len; i++)
        Py_VISIT(h->items[i].obj);
    return 0;
}
