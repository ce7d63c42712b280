/* Tokenizer's merge loop (Tokenizer._bpe) and its walk over the pre-token cache, compiled: the same
 * algorithms, step for step, on C arrays.
 *
 * Encoding text costs one regex match and one cache lookup per pre-token; only pre-tokens not seen before
 * run the merge loop. On fresh text those dominate, and in Python each costs a few microseconds of dict
 * lookups and list edits. Here the (left id, right id) -> (rank, merged id) table is an open-addressing
 * hash built once per tokenizer, a pre-token is merged in well under a microsecond, and the cache
 * lookups run without a Python call each. Pre-tokens over 64 bytes (long runs of one letter or of
 * whitespace) take a priority queue instead of a scan per merge, so they cost n log n, not n².
 *
 * The Python code in tokenizer.py stays the reference (and the fallback where no C compiler was available
 * at install time); tests check that both give the same ids.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define NO_MERGE UINT32_MAX /* the rank of a pair that is not a merge, and the mark of an empty slot */
#define SHORT 64            /* pre-tokens up to this many bytes: the scan, on stack buffers */

typedef struct {
    PyObject_HEAD
    uint64_t *pairs;   /* slot -> left << 32 | right */
    uint32_t *ranks;   /* slot -> rank (NO_MERGE: empty slot) */
    uint32_t *results; /* rank -> merged id */
    size_t mask;       /* slots - 1 (slots: a power of two, 2**bits) */
    int shift;         /* 64 - bits */
    uint32_t byte_ids[256];
} MergeTable;

/* Fibonacci hashing: the top bits of the product depend on every bit of both ids. */
static size_t slot_of(uint64_t pair, int shift) {
    return (size_t)((pair * 0x9E3779B97F4A7C15ull) >> shift);
}

static uint32_t rank_of(const MergeTable *table, uint32_t left, uint32_t right) {
    uint64_t pair = (uint64_t)left << 32 | right;
    for (size_t slot = slot_of(pair, table->shift);; slot = (slot + 1) & table->mask) {
        if (table->ranks[slot] == NO_MERGE || table->pairs[slot] == pair)
            return table->ranks[slot];
    }
}

static int as_id(PyObject *number, uint32_t *id) {
    long long value = PyLong_AsLongLong(number);
    if (value == -1 && PyErr_Occurred())
        return -1;
    if (value < 0 || value >= NO_MERGE) {
        PyErr_Format(PyExc_ValueError, "token id %lld is outside 0..%u", value, NO_MERGE - 1);
        return -1;
    }
    *id = (uint32_t)value;
    return 0;
}

static void free_buffers(MergeTable *table) {
    PyMem_Free(table->pairs);
    PyMem_Free(table->ranks);
    PyMem_Free(table->results);
    table->pairs = NULL, table->ranks = NULL, table->results = NULL;
}

/* Fill a table whose buffers are NULL from the constructor's arguments; -1 with an exception set (the
 * buffers allocated so far are left for the caller to free). */
static int fill(MergeTable *table, PyObject *byte_ids, PyObject *ranks, PyObject *results) {
    if (PyList_GET_SIZE(byte_ids) != 256) {
        PyErr_SetString(PyExc_ValueError, "byte_ids must list 256 ids");
        return -1;
    }
    for (int byte = 0; byte < 256; byte++)
        if (as_id(PyList_GET_ITEM(byte_ids, byte), &table->byte_ids[byte]) < 0)
            return -1;

    Py_ssize_t count = PyList_GET_SIZE(results);
    size_t slots = 16;
    int bits = 4;
    for (; slots < 2 * (size_t)PyDict_GET_SIZE(ranks) + 16; bits++)
        slots *= 2;
    table->pairs = PyMem_Calloc(slots, sizeof(uint64_t));
    table->ranks = PyMem_Malloc(slots * sizeof(uint32_t));
    table->results = PyMem_Calloc(count ? count : 1, sizeof(uint32_t));
    if (!table->pairs || !table->ranks || !table->results) {
        PyErr_NoMemory();
        return -1;
    }
    memset(table->ranks, 0xFF, slots * sizeof(uint32_t)); /* every slot empty */
    table->mask = slots - 1;
    table->shift = 64 - bits;
    for (Py_ssize_t rank = 0; rank < count; rank++)
        if (as_id(PyList_GET_ITEM(results, rank), &table->results[rank]) < 0)
            return -1;

    PyObject *key, *value;
    Py_ssize_t position = 0;
    while (PyDict_Next(ranks, &position, &key, &value)) {
        uint32_t left, right, rank;
        if (!PyTuple_Check(key) || PyTuple_GET_SIZE(key) != 2) {
            PyErr_SetString(PyExc_TypeError, "ranks keys must be (left id, right id) tuples");
            return -1;
        }
        if (as_id(PyTuple_GET_ITEM(key, 0), &left) < 0 || as_id(PyTuple_GET_ITEM(key, 1), &right) < 0 ||
            as_id(value, &rank) < 0)
            return -1;
        if (rank >= (uint32_t)count) {
            PyErr_SetString(PyExc_ValueError, "a rank has no entry in results");
            return -1;
        }
        uint64_t pair = (uint64_t)left << 32 | right;
        size_t slot = slot_of(pair, table->shift);
        while (table->ranks[slot] != NO_MERGE && table->pairs[slot] != pair)
            slot = (slot + 1) & table->mask;
        table->pairs[slot] = pair;
        table->ranks[slot] = rank;
    }
    return 0;
}

/* MergeTable(byte_ids, ranks, results): byte_ids lists the id of each byte value 0..255, ranks maps
 * (left id, right id) to the rank of that merge, results[rank] is the id the merge makes. The table is
 * built aside and swapped in whole, so a failed call leaves the object as it was. */
static int MergeTable_init(MergeTable *self, PyObject *args, PyObject *kwargs) {
    PyObject *byte_ids, *ranks, *results;
    static char *names[] = {"byte_ids", "ranks", "results", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!O!O!", names, &PyList_Type, &byte_ids, &PyDict_Type,
                                     &ranks, &PyList_Type, &results))
        return -1;
    MergeTable built;
    memset(&built, 0, sizeof(built));
    if (fill(&built, byte_ids, ranks, results) < 0) {
        free_buffers(&built);
        return -1;
    }
    free_buffers(self);
    self->pairs = built.pairs, self->ranks = built.ranks, self->results = built.results;
    self->mask = built.mask, self->shift = built.shift;
    memcpy(self->byte_ids, built.byte_ids, sizeof(built.byte_ids));
    return 0;
}

/* Tokenizer._bpe's loop, for short pre-tokens (nearly all of them): ranks[i] is the rank of the pair
 * (ids[i], ids[i + 1]); each round joins the leftmost pair of the lowest rank and updates its neighbours.
 * Merges ids[0..n) in place and returns how many are left. */
static Py_ssize_t merge_short(const MergeTable *table, uint32_t *ids, Py_ssize_t n) {
    uint32_t ranks[SHORT];
    for (Py_ssize_t i = 0; i + 1 < n; i++)
        ranks[i] = rank_of(table, ids[i], ids[i + 1]);
    while (n > 1) {
        Py_ssize_t at = 0;
        for (Py_ssize_t i = 1; i + 1 < n; i++)
            if (ranks[i] < ranks[at])
                at = i;
        uint32_t rank = ranks[at];
        if (rank == NO_MERGE)
            break;
        ids[at] = table->results[rank];
        memmove(ids + at + 1, ids + at + 2, (n - at - 2) * sizeof(uint32_t));
        memmove(ranks + at, ranks + at + 1, (n - at - 2) * sizeof(uint32_t));
        n--;
        if (at > 0)
            ranks[at - 1] = rank_of(table, ids[at - 1], ids[at]);
        if (at + 1 < n)
            ranks[at] = rank_of(table, ids[at], ids[at + 1]);
    }
    return n;
}

/* A binary min-heap of (rank << 32 | position) keys. */
static void heap_push(uint64_t *heap, size_t *size, uint64_t key) {
    size_t child = (*size)++;
    for (; child > 0 && heap[(child - 1) / 2] > key; child = (child - 1) / 2)
        heap[child] = heap[(child - 1) / 2];
    heap[child] = key;
}

static uint64_t heap_pop(uint64_t *heap, size_t *size) {
    uint64_t top = heap[0], last = heap[--(*size)];
    size_t parent = 0;
    for (size_t child = 1; child < *size; parent = child, child = 2 * child + 1) {
        if (child + 1 < *size && heap[child + 1] < heap[child])
            child++;
        if (heap[child] >= last)
            break;
        heap[parent] = heap[child];
    }
    heap[parent] = last;
    return top;
}

/* The same merges in the same order for long pre-tokens (a run of one letter, a stretch of whitespace),
 * where a scan per merge would cost time growing with the square of the length. The tokens form a linked
 * list; a heap holds (rank, position of the pair's left token), whose minimum is the lowest rank, leftmost
 * first: the pair the scan picks. A heap entry is stale once its position's pair has changed, which
 * rank_at[] (the current pair's rank at each position) tells. Returns the count left in ids, or -1 when
 * out of memory. */
static Py_ssize_t merge_long(const MergeTable *table, uint32_t *ids, Py_ssize_t n) {
    Py_ssize_t *next = PyMem_Malloc(n * sizeof(Py_ssize_t)), *prev = PyMem_Malloc(n * sizeof(Py_ssize_t));
    uint32_t *rank_at = PyMem_Malloc(n * sizeof(uint32_t));
    uint64_t *heap = PyMem_Malloc(3 * n * sizeof(uint64_t)); /* n - 1 pairs, then 2 new ones per merge */
    Py_ssize_t count = -1;
    if (!next || !prev || !rank_at || !heap)
        goto done;
    size_t size = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        next[i] = i + 1, prev[i] = i - 1;
        rank_at[i] = i + 1 < n ? rank_of(table, ids[i], ids[i + 1]) : NO_MERGE;
        if (rank_at[i] != NO_MERGE)
            heap_push(heap, &size, (uint64_t)rank_at[i] << 32 | (uint64_t)i);
    }
    while (size > 0) {
        uint64_t key = heap_pop(heap, &size);
        uint32_t rank = (uint32_t)(key >> 32);
        Py_ssize_t at = (Py_ssize_t)(key & 0xFFFFFFFFu), right = next[at];
        if (rank_at[at] != rank)
            continue; /* stale */
        ids[at] = table->results[rank];
        rank_at[right] = NO_MERGE; /* the right token is gone */
        next[at] = next[right];
        if (next[at] < n)
            prev[next[at]] = at;
        if (prev[at] >= 0) {
            Py_ssize_t left = prev[at];
            rank_at[left] = rank_of(table, ids[left], ids[at]);
            if (rank_at[left] != NO_MERGE)
                heap_push(heap, &size, (uint64_t)rank_at[left] << 32 | (uint64_t)left);
        }
        rank_at[at] = next[at] < n ? rank_of(table, ids[at], ids[next[at]]) : NO_MERGE;
        if (rank_at[at] != NO_MERGE)
            heap_push(heap, &size, (uint64_t)rank_at[at] << 32 | (uint64_t)at);
    }
    count = 0;
    for (Py_ssize_t i = 0; i < n; i = next[i])
        ids[count++] = ids[i];
done:
    PyMem_Free(next);
    PyMem_Free(prev);
    PyMem_Free(rank_at);
    PyMem_Free(heap);
    return count;
}

/* merge(pretoken: str) -> tuple of ids: apply the merges in rank order to the pre-token's UTF-8 bytes. */
static PyObject *MergeTable_merge(MergeTable *self, PyObject *pretoken) {
    if (self->ranks == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "MergeTable was not initialized");
        return NULL;
    }
    Py_ssize_t n;
    const char *text = PyUnicode_AsUTF8AndSize(pretoken, &n);
    if (text == NULL)
        return NULL;
    if (n >= (Py_ssize_t)NO_MERGE) {
        PyErr_SetString(PyExc_ValueError, "a pre-token of 4 GiB or more");
        return NULL;
    }
    uint32_t stack_ids[SHORT];
    uint32_t *ids = n <= SHORT ? stack_ids : PyMem_Malloc(n * sizeof(uint32_t));
    if (ids == NULL)
        return PyErr_NoMemory();
    for (Py_ssize_t i = 0; i < n; i++)
        ids[i] = self->byte_ids[(unsigned char)text[i]];
    Py_ssize_t count = n <= SHORT ? merge_short(self, ids, n) : merge_long(self, ids, n);
    PyObject *result = count < 0 ? PyErr_NoMemory() : PyTuple_New(count);
    for (Py_ssize_t i = 0; result != NULL && i < count; i++) {
        PyObject *id = PyLong_FromUnsignedLong(ids[i]);
        if (id == NULL)
            Py_CLEAR(result);
        else
            PyTuple_SET_ITEM(result, i, id);
    }
    if (ids != stack_ids)
        PyMem_Free(ids);
    return result;
}

/* extend(ids, pretokens, cache, max_entries): append the ids of each pre-token (a list of str) to ids,
 * taking them from cache (a dict: pre-token -> tuple of ids) or merging and caching them, the cache
 * emptied first when it holds max_entries. Tokenizer._encode_ordinary's Python path does the same. */
static PyObject *MergeTable_extend(MergeTable *self, PyObject *args) {
    PyObject *ids, *pretokens, *cache;
    Py_ssize_t max_entries;
    if (!PyArg_ParseTuple(args, "O!O!O!n", &PyList_Type, &ids, &PyList_Type, &pretokens, &PyDict_Type, &cache,
                          &max_entries))
        return NULL;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(pretokens); i++) {
        PyObject *pretoken = PyList_GET_ITEM(pretokens, i);
        PyObject *merged = PyDict_GetItemWithError(cache, pretoken); /* borrowed */
        if (merged == NULL && PyErr_Occurred())
            return NULL;
        if (merged == NULL || !PyTuple_CheckExact(merged)) { /* a miss (or a foreign entry: replaced) */
            merged = MergeTable_merge(self, pretoken);
            if (merged == NULL)
                return NULL;
            if (PyDict_GET_SIZE(cache) >= max_entries)
                PyDict_Clear(cache);
            int stored = PyDict_SetItem(cache, pretoken, merged);
            Py_DECREF(merged); /* the cache holds it now */
            if (stored < 0)
                return NULL;
        }
        for (Py_ssize_t j = 0; j < PyTuple_GET_SIZE(merged); j++)
            if (PyList_Append(ids, PyTuple_GET_ITEM(merged, j)) < 0)
                return NULL;
    }
    Py_RETURN_NONE;
}

static void MergeTable_dealloc(MergeTable *self) {
    free_buffers(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef MergeTable_methods[] = {
    {"merge", (PyCFunction)MergeTable_merge, METH_O,
     "merge(pretoken) -> tuple of ids: apply the merges in rank order to the pre-token's UTF-8 bytes."},
    {"extend", (PyCFunction)MergeTable_extend, METH_VARARGS,
     "extend(ids, pretokens, cache, max_entries): append the pre-tokens' ids, through the cache."},
    {NULL},
};

static PyTypeObject MergeTableType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "lmproject.tokenizer._merge.MergeTable",
    .tp_basicsize = sizeof(MergeTable),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "MergeTable(byte_ids, ranks, results): a tokenizer's merges, for the compiled merge loop.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)MergeTable_init,
    .tp_dealloc = (destructor)MergeTable_dealloc,
    .tp_methods = MergeTable_methods,
};

static struct PyModuleDef merge_module = {
    PyModuleDef_HEAD_INIT, .m_name = "lmproject.tokenizer._merge",
    .m_doc = "The BPE merge loop of Tokenizer._bpe, compiled.", .m_size = -1,
};

PyMODINIT_FUNC PyInit__merge(void) {
    if (PyType_Ready(&MergeTableType) < 0)
        return NULL;
    PyObject *module = PyModule_Create(&merge_module);
    if (module == NULL)
        return NULL;
    Py_INCREF(&MergeTableType);
    if (PyModule_AddObject(module, "MergeTable", (PyObject *)&MergeTableType) < 0) {
        Py_DECREF(&MergeTableType);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
