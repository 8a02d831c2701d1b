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
    /* the lean submit_read (set_submit): None of them until then */
    PyObject *dio;          /* a weak reference to the DirectIO (no cycle through it) */
    PyObject *bdev;         /* the FileBlockDevice */
    PyObject *aio;          /* its _uring.BioRing */
    PyObject *bio_type;     /* daxfs.block.bio.Bio */
    PyObject *future_type;  /* daxfs.block.future.LeanFuture */
    PyObject *op_read;      /* BioOp.READ */
    PyObject *flags_none;   /* BioFlags.NONE */
} LeanRead;

/* Module-wide, set once by setup_end() (daxfs.fs.direct at import): what lean_end
 * and submit's error path call, and LeanFuture's lock and states. */
static PyObject *g_end;         /* this module's lean_end: the bios' end_io */
static PyObject *g_future_lock; /* daxfs.block.future._LOCK */
static PyObject *g_py_end;      /* direct._lean_read_end: the reference end */
static PyObject *g_py_done;     /* direct._lean_read_done(state, exc) */
static PyObject *g_pending, *g_running, *g_finished; /* concurrent.futures' states */

static PyObject *s_lock, *s_layouts, *s_rec, *s_size, *s_xcache, *s_mappings, *s_ino, *s_flags,
    *s_lblk, *s_pblk, *s_length, *s_ranges, *s_exclusive, *s_queue, *s_waiters, *s_cond,
    *s_notify_all, *s_start, *s_end, *s_granted, *s_acquire, *s_release, *s_dirty,
    *s_drain_lock, *s_write_back, *s_read, *s_reads, *s_bios, *s_mapped_reads, *one,
    *s_op, *s_sector, *s_segments, *s_end_io, *s_private, *s_future_, *s_value, *s_status,
    *s_state_, *s_parent, *s_chain, *s_waiter, *s_new, *s_plugs, *s_submit, *s_submit_bio,
    *s_lean_submits, *s_is_owned, *s_cbs, *s_cond_, *s_w, *s_sleepers, *s_result_,
    *s_exception_, *s_set_result, *s_add, *s_discard, *s_size_, *s_empty;

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
         long long *length, long long *result, int write_back)
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
    int clean = write_back ? nothing_dirty(self, *addr, *addr + *length) : 1; /* (whole blocks) */
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
    int got =
        lean_map(self, args, nargs, "read", &lock, &token, &view, &addr, &length, &result, 1);
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

/* -- the lean submit_read (DirectIO.submit_read_lean's steps, in C) ---------------- */

/* The cache's dirty blocks of [addr, addr+length) written back (write_back's test
 * inline, as lean_map does): 0, or -1 with an exception. */
static int
write_back_range(LeanRead *self, long long addr, long long length)
{
    int clean = nothing_dirty(self, addr, addr + length);
    if (clean == 0) {
        PyObject *r = PyObject_CallMethod(self->cache, "write_back", "LL", addr, length);
        clean = r == NULL ? -1 : 1;
        Py_XDECREF(r);
    }
    return clean < 0 ? -1 : 0;
}

/* A READ Bio of ONE segment, as Bio(BioOp.READ, sector, [segment], end_io=,
 * private=) makes it after its checks (the caller made them: a writable,
 * one-dimensional, aligned segment); a new reference or NULL. */
static PyObject *
make_bio(LeanRead *self, long long sector, PyObject *segment, Py_ssize_t size,
         PyObject *private)
{
    PyTypeObject *type = (PyTypeObject *)self->bio_type;
    PyObject *bio = type->tp_new(type, s_empty, NULL);
    if (bio == NULL)
        return NULL;
    PyObject *segs = PyList_New(1), *sec = PyLong_FromLongLong(sector),
             *sz = PyLong_FromSsize_t(size), *zero = PyLong_FromLong(0);
    int ok = segs != NULL && sec != NULL && sz != NULL && zero != NULL;
    if (ok) {
        PyList_SET_ITEM(segs, 0, Py_NewRef(segment));
        ok = PyObject_SetAttr(bio, s_op, self->op_read) == 0 &&
             PyObject_SetAttr(bio, s_flags, self->flags_none) == 0 &&
             PyObject_SetAttr(bio, s_sector, sec) == 0 &&
             PyObject_SetAttr(bio, s_segments, segs) == 0 &&
             PyObject_SetAttr(bio, s_size_, sz) == 0 &&
             PyObject_SetAttr(bio, s_end_io, g_end) == 0 &&
             PyObject_SetAttr(bio, s_private, private) == 0 &&
             PyObject_SetAttr(bio, s_future_, Py_None) == 0 &&
             PyObject_SetAttr(bio, s_value, zero) == 0 &&
             PyObject_SetAttr(bio, s_status, Py_None) == 0 &&
             PyObject_SetAttr(bio, s_state_, s_new) == 0 &&
             PyObject_SetAttr(bio, s_parent, Py_None) == 0 &&
             PyObject_SetAttr(bio, s_chain, Py_None) == 0 &&
             PyObject_SetAttr(bio, s_waiter, Py_None) == 0;
    }
    Py_XDECREF(segs);
    Py_XDECREF(sec);
    Py_XDECREF(sz);
    Py_XDECREF(zero);
    if (!ok)
        Py_CLEAR(bio);
    return bio;
}

/* The device's submit_bio(bio) (FileBlockDevice.submit_bio): the BioRing's submit
 * when no plug is held, else (or when it declines) the method itself, the
 * reference.  0, or -1 with an exception. */
static int
submit_bio(LeanRead *self, PyObject *bio)
{
    PyObject *plugs = PyObject_GetAttr(self->bdev, s_plugs);
    if (plugs == NULL)
        return -1;
    PyObject *held = PyObject_GetAttr(plugs, s_bios);
    Py_DECREF(plugs);
    if (held == NULL)
        return -1;
    int plugged = held != Py_None;
    Py_DECREF(held);
    if (!plugged) {
        PyObject *call[3] = {self->aio, self->fd, bio};
        PyObject *r =
            PyObject_VectorcallMethod(s_submit, call, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
        if (r == NULL)
            return -1;
        int taken = r == Py_True;
        Py_DECREF(r);
        if (taken)
            return 0;
    }
    PyObject *r = PyObject_CallMethodOneArg(self->bdev, s_submit_bio, bio);
    Py_XDECREF(r);
    return r == NULL ? -1 : 0;
}

/* guard held around set.add / set.discard of ``future``: 0 or -1. */
static int
guarded(PyObject *guard, PyObject *set, PyObject *future, int add)
{
    if (call_noargs(guard, s_acquire) < 0)
        return -1;
    int r = add ? PySet_Add(set, future) : PySet_Discard(set, future);
    if (call_noargs(guard, s_release) < 0)
        r = -1;
    return r < 0 ? -1 : 0;
}

static PyObject *
leanread_submit(LeanRead *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 6)
        return PyErr_Format(PyExc_TypeError,
                            "submit(inode, pos, buffer, path, inflight, guard) takes 6 arguments");
    if (self->aio == NULL || g_end == NULL) {
        PyErr_SetString(PyExc_ValueError, "LeanRead.submit is not set up (set_submit)");
        return NULL;
    }
    PyObject *dio = PyWeakref_GetObject(self->dio); /* (borrowed) */
    if (dio == NULL)
        return NULL;
    if (dio == Py_None)
        Py_RETURN_NONE; /* (the mount is going: the Python path) */
    PyObject *inode = args[0], *buffer = args[2], *path = args[3], *inflight = args[4],
             *guard = args[5];
    if (!PySet_Check(inflight))
        return PyErr_Format(PyExc_TypeError, "submit: inflight must be a set");
    PyObject *lock = NULL, *token = NULL;
    Py_buffer view;
    long long addr = 0, length = 0, result = 0;
    int got = lean_map(self, args, 3, "submit", &lock, &token, &view, &addr, &length, &result, 0);
    if (got <= 0) {
        if (got < 0)
            return NULL;
        Py_RETURN_NONE;
    }
    Py_ssize_t n = view.len;
    PyBuffer_Release(&view);
    /* the range is held (L1): from here every way out releases it or hands it on */
    PyObject *future = NULL, *mv = NULL, *seg = NULL, *state = NULL, *bio = NULL,
             *res_obj = NULL, *len_obj = NULL;
    if ((mv = PyMemoryView_FromObject(buffer)) == NULL ||
        (seg = length == n ? Py_NewRef(mv) : PySequence_GetSlice(mv, 0, length)) == NULL ||
        (future = PyObject_CallNoArgs(self->future_type)) == NULL ||
        (res_obj = PyLong_FromLongLong(result)) == NULL ||
        (len_obj = PyLong_FromLongLong(length)) == NULL ||
        stat_add(self->stats, s_lean_submits) < 0)
        goto unlock;
    if (guarded(guard, inflight, future, 1) < 0)
        goto unlock;
    state = PyTuple_Pack(10, dio, inode, token, future, mv, res_obj, len_obj, path,
                         inflight, guard);
    if (state == NULL) {
        guarded(guard, inflight, future, 0);
        goto unlock;
    }
    /* as the Python path's try: an error of the write-back or the submission is the
     * Future's (_lean_read_done: the range back, the error named) */
    int err = write_back_range(self, addr, length);
    if (err == 0) {
        bio = make_bio(self, addr >> 9, seg, (Py_ssize_t)length, state);
        err = bio == NULL ? -1 : submit_bio(self, bio);
    }
    if (err < 0) {
        if (!PyErr_ExceptionMatches(PyExc_Exception))
            goto out; /* (as ``except Exception``: a BaseException propagates) */
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        PyErr_NormalizeException(&type, &value, &tb);
        if (tb != NULL)
            PyException_SetTraceback(value, tb);
        PyObject *r = PyObject_CallFunctionObjArgs(g_py_done, state, value, NULL);
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(tb);
        if (r == NULL)
            goto out;
        Py_DECREF(r);
    } else { /* the ring that took the bio, if one did: result() reaps for it */
        PyObject *waiter = PyObject_GetAttr(bio, s_waiter);
        if (waiter == NULL || PyObject_SetAttr(future, s_waiter, waiter) < 0) {
            Py_XDECREF(waiter);
            goto out; /* (in flight: its end releases the range) */
        }
        Py_DECREF(waiter);
    }
    Py_DECREF(lock);
    Py_DECREF(token);
    Py_DECREF(mv);
    Py_DECREF(seg);
    Py_DECREF(state);
    Py_XDECREF(bio);
    Py_DECREF(res_obj);
    Py_DECREF(len_obj);
    return future;
unlock:
    unlock_range(lock, inode, token);
out:
    Py_XDECREF(lock);
    Py_XDECREF(token);
    Py_XDECREF(mv);
    Py_XDECREF(seg);
    Py_XDECREF(state);
    Py_XDECREF(bio);
    Py_XDECREF(res_obj);
    Py_XDECREF(len_obj);
    Py_XDECREF(future);
    return NULL;
}

/* LeanFuture.set_result(value) of a future nobody watches through wait(),
 * as_completed or callbacks (no _cond, _w, _cbs): the transition under _LOCK,
 * the sleepers' locks released (LeanFuture invariants 1, 2).  1 done, 0 not
 * such a future (nothing changed: call set_result), -1. */
static int
resolve_plain(PyObject *future, PyObject *value)
{
    if (call_noargs(g_future_lock, s_acquire) < 0)
        return -1;
    int out = 0;
    PyObject *sleepers = NULL;
    PyObject *cond = PyObject_GetAttr(future, s_cond_), *w = PyObject_GetAttr(future, s_w),
             *cbs = PyObject_GetAttr(future, s_cbs), *state = PyObject_GetAttr(future, s_state_);
    if (cond == NULL || w == NULL || cbs == NULL || state == NULL) {
        out = -1;
    } else if (cond == Py_None && w == Py_None && cbs == Py_None &&
               (state == g_pending || state == g_running)) {
        sleepers = PyObject_GetAttr(future, s_sleepers);
        if (sleepers == NULL || PyObject_SetAttr(future, s_result_, value) < 0 ||
            PyObject_SetAttr(future, s_exception_, Py_None) < 0 ||
            PyObject_SetAttr(future, s_state_, g_finished) < 0 ||
            PyObject_SetAttr(future, s_sleepers, Py_None) < 0)
            out = -1;
        else
            out = 1;
    }
    Py_XDECREF(cond);
    Py_XDECREF(w);
    Py_XDECREF(cbs);
    Py_XDECREF(state);
    if (call_noargs(g_future_lock, s_release) < 0)
        out = -1;
    if (out == 1 && sleepers != NULL && PyList_Check(sleepers)) {
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(sleepers); i++)
            if (call_noargs(PyList_GET_ITEM(sleepers, i), s_release) < 0)
                out = -1;
    }
    Py_XDECREF(sleepers);
    return out;
}

/* end(bio): the end_io of a lean read's bio (direct._lean_read_end's common case in
 * C: a whole read, ``inode.lock`` free at once and not held by this thread, a
 * Future with no done callback): the range released, the bytes past the end of
 * file zeroed, the Future resolved, out of the File's set.  Anything else: the
 * Python end, the reference (the worker, the errors named). */
static PyObject *
lean_end(PyObject *module, PyObject *bio)
{
    PyObject *state = PyObject_GetAttr(bio, s_private);
    if (state == NULL)
        return NULL;
    PyObject *status = PyObject_GetAttr(bio, s_status), *lock = NULL, *owned = NULL,
             *cbs = NULL, *got = NULL, *out = NULL;
    if (status == NULL)
        goto done;
    if (status != Py_None || !PyTuple_CheckExact(state) || PyTuple_GET_SIZE(state) != 10)
        goto python;
    PyObject *inode = PyTuple_GET_ITEM(state, 1), *token = PyTuple_GET_ITEM(state, 2),
             *future = PyTuple_GET_ITEM(state, 3), *mv = PyTuple_GET_ITEM(state, 4),
             *inflight = PyTuple_GET_ITEM(state, 8), *guard = PyTuple_GET_ITEM(state, 9);
    long long result = PyLong_AsLongLong(PyTuple_GET_ITEM(state, 5));
    long long length = PyLong_AsLongLong(PyTuple_GET_ITEM(state, 6));
    if (PyErr_Occurred())
        goto done;
    if ((cbs = PyObject_GetAttr(future, s_cbs)) == NULL)
        goto done;
    if (cbs != Py_None)
        goto python;
    if ((lock = PyObject_GetAttr(inode, s_lock)) == NULL ||
        (owned = PyObject_CallMethodNoArgs(lock, s_is_owned)) == NULL)
        goto done;
    if (owned != Py_False)
        goto python;
    if ((got = PyObject_CallMethodOneArg(lock, s_acquire, Py_False)) == NULL)
        goto done;
    if (got != Py_True)
        goto python; /* busy: the worker ends it */
    if (PyObject_SetAttr(bio, s_private, Py_None) < 0) {
        call_noargs(lock, s_release);
        goto done;
    }
    int ok = range_unlock(inode, token) == 0;
    if (ok && result < length) {
        Py_buffer v;
        ok = PyObject_GetBuffer(mv, &v, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) == 0;
        if (ok) {
            if (length <= v.len)
                memset((char *)v.buf + result, 0, (size_t)(length - result));
            PyBuffer_Release(&v);
        }
    }
    int r = 0;
    if (ok) {
        PyObject *value = PyTuple_GET_ITEM(state, 5);
        r = resolve_plain(future, value);
        if (r == 0) { /* watched: the method, which tells them */
            PyObject *x = PyObject_CallMethodOneArg(future, s_set_result, value);
            r = x == NULL ? -1 : 1;
            Py_XDECREF(x);
        }
        ok = r > 0 && guarded(guard, inflight, future, 0) == 0;
    }
    if (call_noargs(lock, s_release) < 0)
        ok = 0;
    if (ok)
        out = Py_NewRef(Py_None);
    goto done;
python:
    out = PyObject_CallOneArg(g_py_end, bio);
done:
    Py_XDECREF(state);
    Py_XDECREF(status);
    Py_XDECREF(lock);
    Py_XDECREF(owned);
    Py_XDECREF(cbs);
    Py_XDECREF(got);
    return out;
}

/* set_submit(dio, bdev, aio, bio_type, future_type, op_read, flags_none): what
 * submit() needs (see the struct's fields). */
static PyObject *
leanread_set_submit(LeanRead *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"dio", "bdev", "aio", "bio_type", "future_type", "op_read",
                             "flags_none", NULL};
    PyObject *dio, *bdev, *aio, *bio_type, *future_type, *op_read, *flags_none;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOO!O!OO:set_submit", kwlist, &dio, &bdev,
                                     &aio, &PyType_Type, &bio_type, &PyType_Type, &future_type,
                                     &op_read, &flags_none))
        return NULL;
    PyObject *ref = PyWeakref_NewRef(dio, NULL);
    if (ref == NULL)
        return NULL;
    Py_XSETREF(self->dio, ref);
    Py_XSETREF(self->bdev, Py_NewRef(bdev));
    Py_XSETREF(self->aio, Py_NewRef(aio));
    Py_XSETREF(self->bio_type, Py_NewRef(bio_type));
    Py_XSETREF(self->future_type, Py_NewRef(future_type));
    Py_XSETREF(self->op_read, Py_NewRef(op_read));
    Py_XSETREF(self->flags_none, Py_NewRef(flags_none));
    Py_RETURN_NONE;
}

/* setup_end(future_lock, py_end, py_done, (PENDING, RUNNING, FINISHED)) -> lean_end:
 * once, by daxfs.fs.direct. */
static PyObject *
direct_setup_end(PyObject *module, PyObject *args)
{
    PyObject *future_lock, *py_end, *py_done, *pending, *running, *finished;
    if (!PyArg_ParseTuple(args, "OOO(OOO):setup_end", &future_lock, &py_end, &py_done,
                          &pending, &running, &finished))
        return NULL;
    PyObject *end = PyObject_GetAttrString(module, "lean_end");
    if (end == NULL)
        return NULL;
    Py_XSETREF(g_end, end);
    Py_XSETREF(g_future_lock, Py_NewRef(future_lock));
    Py_XSETREF(g_py_end, Py_NewRef(py_end));
    Py_XSETREF(g_py_done, Py_NewRef(py_done));
    Py_XSETREF(g_pending, Py_NewRef(pending));
    Py_XSETREF(g_running, Py_NewRef(running));
    Py_XSETREF(g_finished, Py_NewRef(finished));
    return Py_NewRef(end);
}

static PyMethodDef direct_functions[] = {
    {"lean_end", (PyCFunction)lean_end, METH_O,
     "lean_end(bio): the end_io of LeanRead.submit's bios (_lean_read_end's common case)"},
    {"setup_end", (PyCFunction)direct_setup_end, METH_VARARGS,
     "setup_end(future_lock, py_end, py_done, (PENDING, RUNNING, FINISHED)) -> lean_end"},
    {NULL, NULL, 0, NULL},
};

static int
leanread_traverse(LeanRead *self, visitproc visit, void *arg)
{
    Py_VISIT(self->entries);
    Py_VISIT(self->cache);
    Py_VISIT(self->fast);
    Py_VISIT(self->stats);
    Py_VISIT(self->dio);
    Py_VISIT(self->bdev);
    Py_VISIT(self->aio);
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
    Py_CLEAR(self->dio);
    Py_CLEAR(self->bdev);
    Py_CLEAR(self->aio);
    Py_CLEAR(self->bio_type);
    Py_CLEAR(self->future_type);
    Py_CLEAR(self->op_read);
    Py_CLEAR(self->flags_none);
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
    {"submit", (PyCFunction)(void (*)(void))leanread_submit, METH_FASTCALL,
     "submit(inode, pos, buffer, path, inflight, guard) -> LeanFuture | None (not lean: "
     "nothing held): DirectIO.submit_read_lean in one call"},
    {"set_submit", (PyCFunction)(void (*)(void))leanread_set_submit,
     METH_VARARGS | METH_KEYWORDS,
     "set_submit(dio, bdev, aio, bio_type, future_type, op_read, flags_none): set up submit()"},
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
    .m_methods = direct_functions,
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
        {&s_op, "op"}, {&s_sector, "sector"}, {&s_segments, "segments"},
        {&s_end_io, "end_io"}, {&s_private, "private"}, {&s_future_, "_future"},
        {&s_value, "_value"}, {&s_status, "status"}, {&s_state_, "_state"},
        {&s_parent, "_parent"}, {&s_chain, "_chain"}, {&s_waiter, "_waiter"},
        {&s_new, "new"}, {&s_plugs, "_plugs"}, {&s_submit, "submit"},
        {&s_submit_bio, "submit_bio"}, {&s_lean_submits, "lean_submits"},
        {&s_is_owned, "_is_owned"}, {&s_cbs, "_cbs"}, {&s_cond_, "_cond"}, {&s_w, "_w"},
        {&s_sleepers, "_sleepers"}, {&s_result_, "_result"}, {&s_exception_, "_exception"},
        {&s_set_result, "set_result"}, {&s_add, "add"}, {&s_discard, "discard"},
        {&s_size_, "size"},
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if ((*names[i].p = PyUnicode_InternFromString(names[i].s)) == NULL)
            return NULL;
    if ((one = PyLong_FromLong(1)) == NULL || (s_empty = PyTuple_New(0)) == NULL ||
        PyType_Ready(&LeanReadType) < 0)
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
