/*
 * daxfs.pagecache._hit: the re-read of cached pages of a file in one C call.
 *
 * HitReader is the C form of daxfs.fs.filecache.HitReader (the reference, in
 * Python: the two give the same answer, tests/pagecache/test_hit.py), and
 * File's reader on a mount bounded by cache_size (File._reader: File.pread,
 * preadinto, read, readinto and readall call it first).  A call takes
 * inode.lock, finds the inode's space (FileCache._spaces[ino], an _Entry),
 * compares the space's stamp with the inode (the same Inode object, the same
 * record object, the same ctime: invariant 2 of filecache.py), clamps the
 * range to the size, takes the files' pool lock, and copies the range out of
 * the pool's arena when every page of it is a settled folio (no readahead in
 * flight, no readahead marker); then it counts the hits, touches each folio
 * (AddressSpace._touch: the first read clears fresh, later ones set
 * referenced), and notes the page after the range as the space's next
 * sequential page, as AddressSpace.readinto does.  At or past the end of file
 * the answer is b"" (0), when the stamp matches.
 *
 * Anything else is a miss: the call returns None and the caller takes the full
 * path (FileCache.read: the checks, the stamp, routing, misses, readahead).  A
 * miss has no effect: nothing counted, nothing copied, no exception left set.
 *
 * The objects it reads are daxfs's own classes with __slots__ (Inode,
 * InodeRecord, _Entry, Folio, Stats); the constructor finds each field's slot
 * once and every call checks the exact type of each object before reading a
 * slot, so a change of those classes makes the constructor refuse (TypeError:
 * the Python reference is used then), never read the wrong field.
 *
 * Invariants
 *   1. A copy happens only with inode.lock and the pool's lock held (taken
 *      through daxfs/pmem/_pyutil.h's lock_acquire, as `with lock` does), from
 *      slots of folios found in the space's folios under that lock, inside the
 *      open arena: every change of a folio's bytes holds one of the two locks
 *      (a write holds inode.lock; a fill, an eviction and a drop the pool's).
 *   2. A miss has no effect (above).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <string.h>

#include "../pmem/_pyutil.h"

#define PAGE_SHIFT 12
#define PAGE_SIZE (1 << PAGE_SHIFT)

static PyObject *str_arena, *str_ra_next;

typedef struct {
    PyObject_HEAD
    PyObject *spaces; /* dict: ino -> _Entry (FileCache._spaces) */
    PyObject *pool;   /* PageCache */
    PyObject *pool_lock;
    PyObject *stats;  /* pool.stats */
    PyObject *types;  /* the types below, kept alive */
    PyTypeObject *inode_type, *record_type, *entry_type, *folio_type, *stats_type;
    Py_ssize_t inode_ino, inode_rec, inode_lock;
    Py_ssize_t rec_size, rec_ctime;
    Py_ssize_t entry_inode, entry_rec, entry_ctime, entry_folios, entry_space;
    Py_ssize_t folio_slot, folio_referenced, folio_fresh, folio_io, folio_mark;
    Py_ssize_t stats_hits;
} HitReader;

/* An exact int in [0, PY_SSIZE_T_MAX]; -1 otherwise (no exception). */
static inline Py_ssize_t
as_index(PyObject *v)
{
    if (v == NULL || !PyLong_CheckExact(v))
        return -1;
    Py_ssize_t x = PyLong_AsSsize_t(v);
    if (x < 0) {
        PyErr_Clear();
        return -1;
    }
    return x;
}

/* Store `value` (a new reference, stolen) in a slot. */
static inline void
slot_set(PyObject *obj, Py_ssize_t offset, PyObject *value)
{
    PyObject **p = (PyObject **)((char *)obj + offset);
    PyObject *old = *p;
    *p = value;
    Py_XDECREF(old);
}

static PyObject *
HitReader_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"spaces", "pool", "inode_type", "record_type", "entry_type",
                             "folio_type", NULL};
    PyObject *spaces, *pool, *it, *rt, *et, *ft;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!OO!O!O!O!:HitReader", kwlist, &PyDict_Type,
                                     &spaces, &pool, &PyType_Type, &it, &PyType_Type, &rt,
                                     &PyType_Type, &et, &PyType_Type, &ft))
        return NULL;
    HitReader *self = (HitReader *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->spaces = Py_NewRef(spaces);
    self->pool = Py_NewRef(pool);
    if ((self->pool_lock = PyObject_GetAttrString(pool, "lock")) == NULL ||
        (self->stats = PyObject_GetAttrString(pool, "stats")) == NULL)
        goto fail;
    PyObject *st = (PyObject *)Py_TYPE(self->stats);
    if ((self->types = PyTuple_Pack(5, it, rt, et, ft, st)) == NULL)
        goto fail;
    self->inode_type = (PyTypeObject *)it;
    self->record_type = (PyTypeObject *)rt;
    self->entry_type = (PyTypeObject *)et;
    self->folio_type = (PyTypeObject *)ft;
    self->stats_type = (PyTypeObject *)st;
    if (slot_offset(self->inode_type, "ino", &self->inode_ino) < 0 ||
        slot_offset(self->inode_type, "rec", &self->inode_rec) < 0 ||
        slot_offset(self->inode_type, "lock", &self->inode_lock) < 0 ||
        slot_offset(self->record_type, "size", &self->rec_size) < 0 ||
        slot_offset(self->record_type, "ctime_ns", &self->rec_ctime) < 0 ||
        slot_offset(self->entry_type, "inode", &self->entry_inode) < 0 ||
        slot_offset(self->entry_type, "rec", &self->entry_rec) < 0 ||
        slot_offset(self->entry_type, "ctime", &self->entry_ctime) < 0 ||
        slot_offset(self->entry_type, "folios", &self->entry_folios) < 0 ||
        slot_offset(self->entry_type, "space", &self->entry_space) < 0 ||
        slot_offset(self->folio_type, "slot", &self->folio_slot) < 0 ||
        slot_offset(self->folio_type, "referenced", &self->folio_referenced) < 0 ||
        slot_offset(self->folio_type, "fresh", &self->folio_fresh) < 0 ||
        slot_offset(self->folio_type, "io", &self->folio_io) < 0 ||
        slot_offset(self->folio_type, "mark", &self->folio_mark) < 0 ||
        slot_offset(self->stats_type, "hits", &self->stats_hits) < 0)
        goto fail;
    return (PyObject *)self;
fail:
    Py_DECREF(self);
    return NULL;
}

static void
HitReader_dealloc(HitReader *self)
{
    Py_XDECREF(self->spaces);
    Py_XDECREF(self->pool);
    Py_XDECREF(self->pool_lock);
    Py_XDECREF(self->stats);
    Py_XDECREF(self->types);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* The most pages one call copies (a longer read takes the full path). */
#define MAX_PAGES 256

/* What a call found, with both locks held: the pages' slots, the range's end. */
typedef struct {
    PyObject *entry;
    PyObject *folios[MAX_PAGES]; /* borrowed: the locks keep them in the space */
    Py_ssize_t count, first, end;
} Found;

/* With inode.lock held: the space's entry if its stamp matches `inode`, and the end
 * of [pos, pos+n) clamped to the size; 0 on a miss (no exception).  *end <= pos:
 * at or past the end of file. */
static int
stamped(HitReader *self, PyObject *inode, Py_ssize_t pos, Py_ssize_t n, Found *f)
{
    PyObject *rec = slot(inode, self->inode_rec);
    PyObject *ino = slot(inode, self->inode_ino);
    if (rec == NULL || ino == NULL || Py_TYPE(rec) != self->record_type)
        return 0;
    PyObject *entry = PyDict_GetItemWithError(self->spaces, ino);
    if (entry == NULL) {
        PyErr_Clear();
        return 0;
    }
    if (Py_TYPE(entry) != self->entry_type || slot(entry, self->entry_inode) != inode ||
        slot(entry, self->entry_rec) != rec)
        return 0;
    PyObject *a = slot(entry, self->entry_ctime), *b = slot(rec, self->rec_ctime);
    if (a == NULL || b == NULL || !PyLong_CheckExact(a) || !PyLong_CheckExact(b))
        return 0;
    int eq = PyObject_RichCompareBool(a, b, Py_EQ);
    if (eq != 1) {
        PyErr_Clear();
        return 0;
    }
    Py_ssize_t size = as_index(slot(rec, self->rec_size));
    if (size < 0)
        return 0;
    f->entry = entry;
    f->end = n > size - pos ? size : pos + n;
    return 1;
}

/* With both locks held: every page of [pos, f->end) a settled folio of the entry's
 * space; 0 on a miss (no exception). */
static int
find_pages(HitReader *self, Py_ssize_t pos, Found *f)
{
    PyObject *folios = slot(f->entry, self->entry_folios);
    if (folios == NULL || !PyDict_CheckExact(folios))
        return 0;
    f->first = pos >> PAGE_SHIFT;
    f->count = ((f->end - 1) >> PAGE_SHIFT) - f->first + 1;
    if (f->count > MAX_PAGES)
        return 0;
    for (Py_ssize_t i = 0; i < f->count; i++) {
        PyObject *key = PyLong_FromSsize_t(f->first + i);
        if (key == NULL) {
            PyErr_Clear();
            return 0;
        }
        PyObject *folio = PyDict_GetItemWithError(folios, key);
        Py_DECREF(key);
        if (folio == NULL) {
            PyErr_Clear();
            return 0;
        }
        if (Py_TYPE(folio) != self->folio_type || slot(folio, self->folio_io) != Py_None ||
            slot(folio, self->folio_mark) != Py_False || as_index(slot(folio, self->folio_slot)) < 0)
            return 0;
        f->folios[i] = folio;
    }
    return 1;
}

/* Copy [pos, f->end) from the arena into `dst`; count the hits, set the referenced
 * bits, note the next sequential page.  -1 with an exception (the arena's buffer). */
static int
copy_out(HitReader *self, PyObject *arena, Py_ssize_t pos, Found *f, char *dst)
{
    Py_buffer src;
    if (PyObject_GetBuffer(arena, &src, PyBUF_SIMPLE) < 0)
        return -1;
    Py_ssize_t at = pos;
    for (Py_ssize_t i = 0; i < f->count; i++) {
        PyObject *folio = f->folios[i];
        Py_ssize_t page = (f->first + i) << PAGE_SHIFT;
        Py_ssize_t lo = at - page;
        Py_ssize_t k = PAGE_SIZE - lo < f->end - at ? PAGE_SIZE - lo : f->end - at;
        Py_ssize_t from = (as_index(slot(folio, self->folio_slot)) << PAGE_SHIFT) + lo;
        if (from + k > src.len) {
            PyBuffer_Release(&src);
            PyErr_SetString(PyExc_AssertionError, "a folio's slot lies outside the arena");
            return -1;
        }
        memcpy(dst + (at - pos), (char *)src.buf + from, k);
        /* AddressSpace._touch: the first read clears fresh, the next set referenced */
        if (slot(folio, self->folio_fresh) == Py_True)
            slot_set(folio, self->folio_fresh, Py_NewRef(Py_False));
        else if (slot(folio, self->folio_referenced) != Py_True)
            slot_set(folio, self->folio_referenced, Py_NewRef(Py_True));
        at += k;
    }
    PyBuffer_Release(&src);
    /* the statistics and the readahead state, as AddressSpace.readinto keeps them */
    if (Py_TYPE(self->stats) == self->stats_type) {
        Py_ssize_t hits = as_index(slot(self->stats, self->stats_hits));
        PyObject *v = hits >= 0 ? PyLong_FromSsize_t(hits + f->count) : NULL;
        if (v == NULL)
            return -1;
        slot_set(self->stats, self->stats_hits, v);
    }
    PyObject *space = slot(f->entry, self->entry_space);
    PyObject *next = PyLong_FromSsize_t(f->first + f->count);
    if (space == NULL || next == NULL) {
        Py_XDECREF(next);
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_AssertionError, "an entry without its space");
        return -1;
    }
    int r = PyObject_SetAttr(space, str_ra_next, next);
    Py_DECREF(next);
    return r;
}

/* The locks: inode.lock (a new reference, acquired) or NULL; then the pool's. */
static PyObject *
lock_inode(HitReader *self, PyObject *inode)
{
    if (Py_TYPE(inode) != self->inode_type)
        return NULL;
    PyObject *lock = slot(inode, self->inode_lock);
    if (lock == NULL) /* never made: nothing of this inode is cached yet */
        return NULL;
    Py_INCREF(lock);
    if (lock_acquire(lock) < 0) {
        Py_DECREF(lock);
        return NULL;
    }
    return lock;
}

enum { MISS = 0, HIT = 1, EMPTY = 2, FAILED = -1 };

/* The whole call but the copy, for `n` bytes at `pos`: with both locks held on
 * HIT (the arena in *arena, a new reference), none otherwise. */
static int
begin(HitReader *self, PyObject *inode, Py_ssize_t pos, Py_ssize_t n, Found *f,
      PyObject **lock, PyObject **arena)
{
    *lock = lock_inode(self, inode);
    if (*lock == NULL)
        return PyErr_Occurred() ? FAILED : MISS;
    if (!stamped(self, inode, pos, n, f))
        goto miss;
    if (f->end <= pos) {
        if (lock_release(*lock) < 0) {
            Py_CLEAR(*lock);
            return FAILED;
        }
        Py_CLEAR(*lock);
        return EMPTY;
    }
    if (lock_acquire(self->pool_lock) < 0)
        goto failed;
    *arena = PyObject_GetAttr(self->pool, str_arena);
    if (*arena == NULL)
        goto failed_pool;
    if (*arena != Py_None && find_pages(self, pos, f))
        return HIT;
    Py_CLEAR(*arena);
    if (lock_release(self->pool_lock) < 0)
        goto failed;
miss:
    if (lock_release(*lock) < 0) {
        Py_CLEAR(*lock);
        return FAILED;
    }
    Py_CLEAR(*lock);
    return MISS;
failed_pool:
    lock_release(self->pool_lock);
failed:
    lock_release(*lock);
    Py_CLEAR(*lock);
    return FAILED;
}

/* Release both locks (after a HIT); `result` returned, or NULL if a release failed. */
static PyObject *
end(HitReader *self, PyObject *lock, PyObject *arena, PyObject *result)
{
    Py_XDECREF(arena);
    if (lock_release(self->pool_lock) < 0)
        Py_CLEAR(result);
    if (lock_release(lock) < 0)
        Py_CLEAR(result);
    Py_DECREF(lock);
    return result;
}

/* pread(inode, n, offset) -> bytes | None */
static PyObject *
HitReader_pread(HitReader *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "pread(inode, n, offset)");
        return NULL;
    }
    Py_ssize_t n = as_index(args[1]), pos = as_index(args[2]);
    if (n < 0 || pos < 0)
        Py_RETURN_NONE;
    Found f;
    PyObject *lock, *arena = NULL;
    switch (begin(self, args[0], pos, n, &f, &lock, &arena)) {
    case MISS:
        Py_RETURN_NONE;
    case EMPTY:
        return PyBytes_FromStringAndSize(NULL, 0);
    case FAILED:
        return NULL;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, f.end - pos);
    if (out != NULL && copy_out(self, arena, pos, &f, PyBytes_AS_STRING(out)) < 0)
        Py_CLEAR(out);
    return end(self, lock, arena, out);
}

/* preadinto(inode, buffer, offset) -> int | None */
static PyObject *
HitReader_preadinto(HitReader *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "preadinto(inode, buffer, offset)");
        return NULL;
    }
    Py_ssize_t pos = as_index(args[2]);
    if (pos < 0)
        Py_RETURN_NONE;
    Py_buffer dst;
    if (PyObject_GetBuffer(args[1], &dst, PyBUF_WRITABLE) < 0) {
        PyErr_Clear(); /* the full path raises what memoryview(buffer) raises */
        Py_RETURN_NONE;
    }
    Found f;
    PyObject *lock, *arena = NULL, *out = NULL;
    switch (begin(self, args[0], pos, dst.len, &f, &lock, &arena)) {
    case MISS:
        out = Py_NewRef(Py_None);
        break;
    case EMPTY:
        out = PyLong_FromLong(0);
        break;
    case FAILED:
        break;
    default:
        if (copy_out(self, arena, pos, &f, dst.buf) == 0)
            out = PyLong_FromSsize_t(f.end - pos);
        out = end(self, lock, arena, out);
    }
    PyBuffer_Release(&dst);
    return out;
}

static PyMethodDef HitReader_methods[] = {
    {"pread", (PyCFunction)(void (*)(void))HitReader_pread, METH_FASTCALL,
     "pread(inode, n, offset) -> bytes, or None on a miss (take the full path)."},
    {"preadinto", (PyCFunction)(void (*)(void))HitReader_preadinto, METH_FASTCALL,
     "preadinto(inode, buffer, offset) -> int, or None on a miss (take the full path)."},
    {NULL}};

static PyTypeObject HitReaderType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "daxfs.pagecache._hit.HitReader",
    .tp_basicsize = sizeof(HitReader),
    .tp_dealloc = (destructor)HitReader_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "HitReader(spaces, pool, inode_type, record_type, entry_type, folio_type): "
              "the re-read of a file's cached pages (see _hit.c).",
    .tp_methods = HitReader_methods,
    .tp_new = HitReader_new,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "daxfs.pagecache._hit",
    .m_doc = "The re-read of a file's cached pages in one call (see _hit.c).",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__hit(void)
{
    if (pyutil_init() < 0 || (str_arena = PyUnicode_InternFromString("_arena")) == NULL ||
        (str_ra_next = PyUnicode_InternFromString("_ra_next")) == NULL)
        return NULL;
    if (PyType_Ready(&HitReaderType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&HitReaderType);
    if (PyModule_AddObject(m, "HitReader", (PyObject *)&HitReaderType) < 0) {
        Py_DECREF(&HitReaderType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
