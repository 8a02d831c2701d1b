/* The lean synchronous direct read in C (daxfs.fs.direct, DirectIO._read_mapped).
 *
 * A 4 KiB direct read at QD1 spent more time in the Python of its lean path (the
 * argument checks, inode.lock twice, the extent cache, the range lock's token,
 * the cache's write-back check, the statistics) than in the kernel: about 20 us
 * of thread CPU with the caches cold after each wait, against the device's own
 * 37.  LeanRead.read(inode, pos, buffer) does the same steps in one call, on the
 * same Python objects, so that the Python path (DirectIO._lean and
 * _read_mapped, the reference) and this one are interchangeable at every step:
 *
 *   checks      pos an int >= 0; the buffer one-dimensional, writable, contiguous
 *               bytes, non-empty; pos, length and address aligned (DirectIO._plain)
 *   with inode.lock (its acquire/release, an RLock):
 *     inode.layouts not None, pos < inode.rec.size, inode.xcache an Extent,
 *     written, covering [pos, pos+length); no mapping (inode.mappings empty, the
 *     inode not in data.mapped_ranges._entries); the range lock's queue holds no
 *     exclusive request (RangeLock._exclusive == 0: a shared request conflicts
 *     with nothing) -> a RangeToken(start, end, shared, granted) put in its
 *     _queue, the statistics counted (reads, bios, mapped_reads)
 *     anything else -> None, nothing held or counted: the Python path decides
 *   the cache's dirty blocks: none meet the range and no drain is in progress
 *     (BlockCache._nothing_dirty_in's test), else cache.write_back(addr, length)
 *   the I/O: fast.read(fd, addr, view) -- the device's C fast path (_uring.Fast)
 *   whole -> with inode.lock: the token out of _queue, granted False, the waiters
 *     woken when there are any (RangeLock.unlock); bytes past the end of file
 *     zeroed; -> the bytes read (an int)
 *   else  -> (token, got, addr, length, result) with the range STILL held: got is
 *     Fast's (res, size) of a short or failed transfer, or None (Fast declined);
 *     Python finishes the read (DirectIO._lean_finish) and releases the range
 *
 * An exception raised by a step after the range was locked releases it first.
 *
 * Invariants (those of daxfs.fs.direct: 1, 4, 5, 6)
 *   L1. The range lock is taken before the extent is used and released only
 *       after the I/O ended (or handed to Python with it still held).
 *   L2. Only the Python objects' own fields are read and written, each step as
 *       the Python path does it, with the GIL held and no Python code run between
 *       a test and the change it allows (so no other thread sees half of it).
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    PyObject_HEAD
    PyObject *extent_type;  /* daxfs.fs.extmap.Extent */
    PyObject *token_type;   /* daxfs.fs.rangelock.RangeToken */
    PyObject *entries;      /* data.mapped_ranges._entries (a dict by inode number) */
    PyObject *cache;        /* the BlockCache */
    PyObject *fast;         /* the device's _uring.Fast */
    PyObject *fd;           /* the device's file descriptor (an int) */
    PyObject *stats;        /* DirectIO.stats */
    long long align;        /* the logical block size */
    int block_shift;        /* the filesystem block size's log2 */
    long unwritten;         /* EXTENT_UNWRITTEN */
} LeanRead;

static PyObject *s_lock, *s_layouts, *s_rec, *s_size, *s_xcache, *s_mappings, *s_ino, *s_flags,
    *s_lblk, *s_pblk, *s_length, *s_ranges, *s_exclusive, *s_queue, *s_waiters, *s_cond,
    *s_notify_all, *s_start, *s_end, *s_granted, *s_acquire, *s_release, *s_dirty,
    *s_drain_lock, *s_write_back, *s_read, *s_reads, *s_bios, *s_mapped_reads, *one;

static int
leanread_init(LeanRead *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"extent_type", "token_type", "entries", "cache", "fast", "fd",
                             "stats", "alignment", "block_shift", "unwritten", NULL};
    PyObject *extent_type, *token_type, *entries, *cache, *fast, *fd, *stats;
    long long align;
    int shift;
    long unwritten;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!O!O!OOO!O!Lil:LeanRead", kwlist,
                                     &PyType_Type, &extent_type, &PyType_Type, &token_type,
                                     &PyDict_Type, &entries, &cache, &fast, &PyLong_Type, &fd,
                                     &PyDict_Type, &stats, &align, &shift, &unwritten))
        return -1;
    if (align < 1 || (align & (align - 1)) || shift < 9 || shift > 30) {
        PyErr_SetString(PyExc_ValueError, "LeanRead: alignment a power of two, block_shift 9..30");
        return -1;
    }
    Py_XSETREF(self->extent_type, Py_NewRef(extent_type));
    Py_XSETREF(self->token_type, Py_NewRef(token_type));
    Py_XSETREF(self->entries, Py_NewRef(entries));
    Py_XSETREF(self->cache, Py_NewRef(cache));
    Py_XSETREF(self->fast, Py_NewRef(fast));
    Py_XSETREF(self->fd, Py_NewRef(fd));
    Py_XSETREF(self->stats, Py_NewRef(stats));
    self->align = align;
    self->block_shift = shift;
    self->unwritten = unwritten;
    return 0;
}

/* An int attribute of ``obj`` as a long long (-1 with an exception set, or *ok 0 when
 * it is not an int: the caller declines). */
static long long
int_attr(PyObject *obj, PyObject *name, int *ok)
{
    PyObject *v = PyObject_GetAttr(obj, name);
    if (v == NULL) {
        *ok = -1;
        return -1;
    }
    long long out = -1;
    if (PyLong_CheckExact(v)) {
        int overflow = 0;
        out = PyLong_AsLongLongAndOverflow(v, &overflow);
        if (overflow)
            *ok = 0;
    } else {
        *ok = 0;
    }
    Py_DECREF(v);
    return out;
}

static int
call_noargs(PyObject *obj, PyObject *name)
{
    PyObject *r = PyObject_CallMethodNoArgs(obj, name);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

static int
stat_add(PyObject *stats, PyObject *key)
{
    PyObject *v = PyDict_GetItemWithError(stats, key);
    if (v == NULL)
        return PyErr_Occurred() ? -1 : 0;
    PyObject *n = PyNumber_Add(v, one);
    if (n == NULL)
        return -1;
    int r = PyDict_SetItem(stats, key, n);
    Py_DECREF(n);
    return r;
}

/* Under inode.lock (held by the caller): the lean tests and the shared range lock.
 * 1 with *token (a new reference) and *addr, *length, *result set; 0: not lean; -1. */
static int
lean_lock(LeanRead *self, PyObject *inode, long long pos, long long n, PyObject **token,
          long long *addr, long long *length, long long *result)
{
    int ok = 1, out = 0;
    PyObject *layouts = NULL, *rec = NULL, *ext = NULL, *mappings = NULL, *ranges = NULL,
             *queue = NULL, *ino = NULL, *tok = NULL;
    if ((layouts = PyObject_GetAttr(inode, s_layouts)) == NULL)
        goto error;
    if (layouts == Py_None)
        goto done;
    if ((rec = PyObject_GetAttr(inode, s_rec)) == NULL)
        goto error;
    long long size = int_attr(rec, s_size, &ok);
    if (ok <= 0 || pos >= size)
        goto check;
    if ((ext = PyObject_GetAttr(inode, s_xcache)) == NULL)
        goto error;
    if (Py_TYPE(ext) != (PyTypeObject *)self->extent_type)
        goto done;
    long long end = pos + n;
    *result = end <= size ? n : size - pos;
    *length = end <= size ? n : ((*result + self->align - 1) / self->align) * self->align;
    long long flags = int_attr(ext, s_flags, &ok);
    long long lblk = ok > 0 ? int_attr(ext, s_lblk, &ok) : 0;
    long long elen = ok > 0 ? int_attr(ext, s_length, &ok) : 0;
    long long pblk = ok > 0 ? int_attr(ext, s_pblk, &ok) : 0;
    if (ok <= 0)
        goto check;
    int shift = self->block_shift;
    if ((flags & self->unwritten) || lblk > (pos >> shift) ||
        ((pos + *length - 1) >> shift) >= lblk + elen)
        goto done;
    if ((mappings = PyObject_GetAttr(inode, s_mappings)) == NULL)
        goto error;
    int mapped = PyObject_IsTrue(mappings);
    if (mapped != 0) {
        if (mapped < 0)
            goto error;
        goto done;
    }
    if ((ino = PyObject_GetAttr(inode, s_ino)) == NULL)
        goto error;
    int tracked = PyDict_Contains(self->entries, ino);
    if (tracked != 0) {
        if (tracked < 0)
            goto error;
        goto done; /* a mapping was written through: the Python path flushes it */
    }
    if ((ranges = PyObject_GetAttr(layouts, s_ranges)) == NULL)
        goto error;
    long long exclusive = int_attr(ranges, s_exclusive, &ok);
    if (ok <= 0 || exclusive != 0)
        goto check; /* a write or truncate may hold or wait: the Python path decides */
    if ((queue = PyObject_GetAttr(ranges, s_queue)) == NULL)
        goto error;
    if (!PyDict_CheckExact(queue))
        goto done;
    /* RangeLock.lock(start, end, False, nowait=True) with no exclusive request queued:
     * granted at once (DataPath.lock_range's range: whole blocks) */
    long long bmask = (1LL << shift) - 1;
    tok = PyObject_CallFunction(self->token_type, "LLO", pos & ~bmask, (end + bmask) & ~bmask,
                                Py_False);
    if (tok == NULL)
        goto error;
    if (PyObject_SetAttr(tok, s_granted, Py_True) < 0 || PyDict_SetItem(queue, tok, Py_None) < 0)
        goto error;
    if (stat_add(self->stats, s_reads) < 0 || stat_add(self->stats, s_bios) < 0 ||
        stat_add(self->stats, s_mapped_reads) < 0) {
        PyDict_DelItem(queue, tok); /* (the token never left this call) */
        goto error;
    }
    *addr = ((pblk - lblk) << shift) + pos;
    *token = tok;
    tok = NULL;
    out = 1;
    goto done;
check:
    if (ok < 0)
        goto error;
    goto done;
error:
    out = -1;
done:
    Py_XDECREF(layouts);
    Py_XDECREF(rec);
    Py_XDECREF(ext);
    Py_XDECREF(mappings);
    Py_XDECREF(ranges);
    Py_XDECREF(queue);
    Py_XDECREF(ino);
    Py_XDECREF(tok);
    return out;
}

/* RangeLock.unlock(token) (caller holds inode.lock): 0 or -1. */
static int
range_unlock(PyObject *inode, PyObject *token)
{
    int out = -1;
    PyObject *layouts = NULL, *ranges = NULL, *queue = NULL, *waiters = NULL;
    if ((layouts = PyObject_GetAttr(inode, s_layouts)) == NULL ||
        (ranges = PyObject_GetAttr(layouts, s_ranges)) == NULL ||
        (queue = PyObject_GetAttr(ranges, s_queue)) == NULL)
        goto done;
    if (PyDict_DelItem(queue, token) < 0 || PyObject_SetAttr(token, s_granted, Py_False) < 0)
        goto done;
    if ((waiters = PyObject_GetAttr(ranges, s_waiters)) == NULL)
        goto done;
    int any = PyObject_IsTrue(waiters);
    if (any < 0)
        goto done;
    if (any) { /* RangeLock's invariant 4 */
        PyObject *cond = PyObject_GetAttr(ranges, s_cond);
        if (cond == NULL)
            goto done;
        int r = call_noargs(cond, s_notify_all);
        Py_DECREF(cond);
        if (r < 0)
            goto done;
    }
    out = 0;
done:
    Py_XDECREF(layouts);
    Py_XDECREF(ranges);
    Py_XDECREF(queue);
    Py_XDECREF(waiters);
    return out;
}

/* inode.lock held around range_unlock; an exception pending on entry is kept (the
 * unlock's own error then is written as unraisable). */
static int
unlock_range(PyObject *lock, PyObject *inode, PyObject *token)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    int r = call_noargs(lock, s_acquire);
    if (r == 0) {
        r = range_unlock(inode, token);
        if (call_noargs(lock, s_release) < 0)
            r = -1;
    }
    if (type != NULL) {
        if (r < 0)
            PyErr_WriteUnraisable(token);
        PyErr_Restore(type, value, tb);
        return -1;
    }
    return r;
}

/* BlockCache._nothing_dirty_in(lo, hi) (GIL held, no Python code run during the walk):
 * 1 nothing to write back, 0 call write_back, -1. */
static int
nothing_dirty(LeanRead *self, long long lo, long long hi)
{
    PyObject *drain = PyObject_GetAttr(self->cache, s_drain_lock);
    if (drain == NULL)
        return -1;
    PyObject *got = PyObject_CallMethodOneArg(drain, s_acquire, Py_False);
    if (got == NULL) {
        Py_DECREF(drain);
        return -1;
    }
    int free_now = got == Py_True;
    Py_DECREF(got);
    int out = 0;
    if (free_now) {
        PyObject *dirty = PyObject_GetAttr(self->cache, s_dirty);
        if (dirty == NULL) {
            out = -1;
        } else if (PyList_CheckExact(dirty)) {
            out = 1;
            for (Py_ssize_t i = 0; i < PyList_GET_SIZE(dirty) && out == 1; i++) {
                PyObject *run = PyList_GET_ITEM(dirty, i);
                if (!PyTuple_CheckExact(run) || PyTuple_GET_SIZE(run) != 2) {
                    out = 0;
                    break;
                }
                long long start = PyLong_AsLongLong(PyTuple_GET_ITEM(run, 0));
                long long end = PyLong_AsLongLong(PyTuple_GET_ITEM(run, 1));
                if (PyErr_Occurred()) {
                    PyErr_Clear();
                    out = 0;
                } else if (start < hi && lo < end) {
                    out = 0;
                }
            }
        }
        Py_XDECREF(dirty);
        if (call_noargs(drain, s_release) < 0)
            out = -1;
    }
    Py_DECREF(drain);
    return out;
}

/* The steps before the I/O: the checks, the lean lock
 * and map under inode.lock, the cache's dirty blocks of the range written back.
 * 1: *token (new reference), *lock (new reference), *view (held) and the numbers
 * set, the range held; 0: not lean, nothing held; -1: an exception, nothing held. */
static int
lean_map(LeanRead *self, PyObject *const *args, Py_ssize_t nargs, const char *what,
         PyObject **lock_out, PyObject **token_out, Py_buffer *view, long long *addr,
         long long *length, long long *result)
{
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError, "%s(inode, pos, buffer) takes 3 arguments", what);
        return -1;
    }
    if (self->fast == NULL) {
        PyErr_SetString(PyExc_ValueError, "LeanRead is not set up");
        return -1;
    }
    PyObject *inode = args[0], *pos_obj = args[1], *buffer = args[2];
    if (!PyLong_CheckExact(pos_obj))
        return 0;
    int overflow = 0;
    long long pos = PyLong_AsLongLongAndOverflow(pos_obj, &overflow);
    if (overflow || pos < 0)
        return 0;
    if (PyObject_GetBuffer(buffer, view, PyBUF_RECORDS) < 0) { /* writable */
        PyErr_Clear(); /* the Python path raises what the arguments call for */
        return 0;
    }
    long long n = (long long)view->len, mask = self->align - 1;
    if (view->ndim != 1 || (view->format != NULL && strcmp(view->format, "B") != 0) ||
        !PyBuffer_IsContiguous(view, 'C') || n <= 0 || ((pos | n) & mask) ||
        ((uintptr_t)view->buf & (uintptr_t)mask)) {
        PyBuffer_Release(view);
        return 0;
    }
    PyObject *lock = PyObject_GetAttr(inode, s_lock), *token = NULL;
    if (lock == NULL || call_noargs(lock, s_acquire) < 0)
        goto fail;
    int got = lean_lock(self, inode, pos, n, &token, addr, length, result);
    if (call_noargs(lock, s_release) < 0) {
        if (got == 1)
            unlock_range(lock, inode, token);
        goto fail;
    }
    if (got <= 0) {
        if (got < 0)
            goto fail;
        Py_DECREF(lock);
        PyBuffer_Release(view);
        return 0;
    }
    /* the range is ours (L1): every way out below releases it or hands it on */
    int clean = nothing_dirty(self, *addr, *addr + *length); /* (dirty runs: whole blocks) */
    if (clean == 0) {
        PyObject *r = PyObject_CallMethod(self->cache, "write_back", "LL", *addr, *length);
        clean = r == NULL ? -1 : 1;
        Py_XDECREF(r);
    }
    if (clean < 0) {
        unlock_range(lock, inode, token);
        goto fail;
    }
    *lock_out = lock;
    *token_out = token;
    return 1;
fail:
    Py_XDECREF(token);
    Py_XDECREF(lock);
    PyBuffer_Release(view);
    return -1;
}

static PyObject *
leanread_read(LeanRead *self, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *lock = NULL, *token = NULL, *out = NULL, *inode = nargs == 3 ? args[0] : NULL;
    Py_buffer view;
    long long addr = 0, length = 0, result = 0;
    int got = lean_map(self, args, nargs, "read", &lock, &token, &view, &addr, &length, &result);
    if (got <= 0) {
        if (got < 0)
            return NULL;
        Py_RETURN_NONE;
    }
    PyObject *target = PyMemoryView_FromMemory(view.buf, (Py_ssize_t)length, PyBUF_WRITE);
    if (target == NULL) {
        unlock_range(lock, inode, token);
        goto release;
    }
    PyObject *addr_obj = PyLong_FromLongLong(addr);
    PyObject *res = NULL;
    if (addr_obj != NULL) {
        PyObject *call[4] = {self->fast, self->fd, addr_obj, target};
        res = PyObject_VectorcallMethod(s_read, call, 4 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    }
    if (res == NULL) {
        Py_XDECREF(addr_obj);
        Py_DECREF(target);
        unlock_range(lock, inode, token);
        goto release;
    }
    if (PyLong_CheckExact(res) && PyLong_AsLongLong(res) == length) {
        Py_DECREF(res);
        Py_DECREF(addr_obj);
        Py_DECREF(target);
        if (unlock_range(lock, inode, token) < 0)
            goto release;
        if (result < length)
            memset((char *)view.buf + result, 0, (size_t)(length - result));
        out = PyLong_FromLongLong(result);
        goto release;
    }
    /* short, failed, or declined by Fast: Python finishes it, the range still held */
    out = Py_BuildValue("(OONLL)", token, res, addr_obj, length, result);
    Py_DECREF(res);
    Py_DECREF(target);
    if (out == NULL)
        unlock_range(lock, inode, token);
release:
    Py_XDECREF(token);
    Py_XDECREF(lock);
    PyBuffer_Release(&view);
    return out;
}

static int
leanread_traverse(LeanRead *self, visitproc visit, void *arg)
{
    Py_VISIT(self->entries);
    Py_VISIT(self->cache);
    Py_VISIT(self->fast);
    Py_VISIT(self->stats);
    return 0;
}

static int
leanread_clear(LeanRead *self)
{
    Py_CLEAR(self->extent_type);
    Py_CLEAR(self->token_type);
    Py_CLEAR(self->entries);
    Py_CLEAR(self->cache);
    Py_CLEAR(self->fast);
    Py_CLEAR(self->fd);
    Py_CLEAR(self->stats);
    return 0;
}

static void
leanread_dealloc(LeanRead *self)
{
    PyObject_GC_UnTrack(self);
    leanread_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef leanread_methods[] = {
    {"read", (PyCFunction)(void (*)(void))leanread_read, METH_FASTCALL,
     "read(inode, pos, buffer) -> bytes read | None (not lean: nothing held) | "
     "(token, got, addr, length, result) (the range held: Python finishes)"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject LeanReadType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "daxfs.fs._direct.LeanRead",
    .tp_basicsize = sizeof(LeanRead),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The lean synchronous direct read (see the comment in _direct.c).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)leanread_init,
    .tp_dealloc = (destructor)leanread_dealloc,
    .tp_traverse = (traverseproc)leanread_traverse,
    .tp_clear = (inquiry)leanread_clear,
    .tp_methods = leanread_methods,
};

static struct PyModuleDef direct_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "daxfs.fs._direct",
    .m_doc = "The lean direct read of daxfs.fs.direct in C.",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__direct(void)
{
    static const struct { PyObject **p; const char *s; } names[] = {
        {&s_lock, "lock"}, {&s_layouts, "layouts"}, {&s_rec, "rec"}, {&s_size, "size"},
        {&s_xcache, "xcache"}, {&s_mappings, "mappings"}, {&s_ino, "ino"},
        {&s_flags, "flags"}, {&s_lblk, "lblk"}, {&s_pblk, "pblk"}, {&s_length, "length"},
        {&s_ranges, "ranges"}, {&s_exclusive, "_exclusive"}, {&s_queue, "_queue"},
        {&s_waiters, "_waiters"}, {&s_cond, "_cond"}, {&s_notify_all, "notify_all"},
        {&s_start, "start"}, {&s_end, "end"}, {&s_granted, "granted"},
        {&s_acquire, "acquire"}, {&s_release, "release"}, {&s_dirty, "_dirty"},
        {&s_drain_lock, "_drain_lock"}, {&s_write_back, "write_back"}, {&s_read, "read"},
        {&s_reads, "reads"}, {&s_bios, "bios"}, {&s_mapped_reads, "mapped_reads"},
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if ((*names[i].p = PyUnicode_InternFromString(names[i].s)) == NULL)
            return NULL;
    if ((one = PyLong_FromLong(1)) == NULL || PyType_Ready(&LeanReadType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&direct_module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&LeanReadType);
    if (PyModule_AddObject(m, "LeanRead", (PyObject *)&LeanReadType) < 0) {
        Py_DECREF(&LeanReadType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
