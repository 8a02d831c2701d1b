/*
 * daxfs.pmem._native: what Python cannot do for persistent memory.
 *
 * Theory of operation
 * -------------------
 * A Region wraps a writable buffer (the device mapping) and holds an export
 * of it for its whole life, so the memory cannot be unmapped under it.  Every
 * method checks its range against the region before touching memory, so no
 * argument can make it read or write outside the mapping.
 *
 * A region persists in one of five modes, picked by the Python layer:
 *
 *   clwb        CLWB each 64-byte line, SFENCE to drain     (CACHE_LINE)
 *   clflushopt  CLFLUSHOPT each line, SFENCE to drain        (CACHE_LINE)
 *   clflush     CLFLUSH each line (serialising), SFENCE      (CACHE_LINE)
 *   none        no flush, SFENCE only: caches are persistent (BYTE, eADR)
 *   msync       msync(MS_SYNC) of the pages covering a range (PAGE)
 *
 * Copies of NT_THRESHOLD bytes or more use non-temporal stores (MOVNTDQ, or
 * VMOVNTDQ with AVX2) for the 64-byte-aligned middle part; such stores bypass
 * the cache and need only the fence.  The unaligned head and tail are copied
 * normally and flushed.  This is the scheme of PMDK's libpmem2.
 *
 * Work on LARGE bytes or more runs without the GIL.  While it runs, the
 * region's `busy` count is raised so that release() from another thread
 * refuses (BufferError) instead of unmapping memory in use.
 *
 * Invariants
 *   1. base..base+size is mapped while released == 0.
 *   2. Every memory access is inside [base, base+size) of the region and of
 *      the caller's buffer; checked before the access.
 *   3. A "persist" call returns only after the range is in the persistence
 *      domain for the region's mode (flushed and fenced, or msync'ed).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <errno.h>

#include "_persist.h"
#include "_pyutil.h"

#define LARGE (256 * 1024)


/* --------------------------------------------------------------- Region */

typedef struct {
    PyObject_HEAD
    Py_buffer view;
    char *base;
    Py_ssize_t size;
    int mode;
    int readonly;
    int released;
    int busy;
} Region;

static int
as_size(PyObject *o, const char *what, Py_ssize_t *out)
{
    if (!PyIndex_Check(o) || PyBool_Check(o)) {
        raise_invalid("%s must be an integer, not %.100s", what, Py_TYPE(o)->tp_name);
        return -1;
    }
    Py_ssize_t v = PyNumber_AsSsize_t(o, NULL);
    if (v == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        raise_invalid("%s %R is out of range", what, o);
        return -1;
    }
    if (v < 0) {
        raise_invalid("%s must not be negative, got %zd", what, v);
        return -1;
    }
    *out = v;
    return 0;
}

static int
check_open(Region *r)
{
    if (r->released) {
        PyErr_SetString(PyExc_ValueError, "I/O operation on closed device");
        return -1;
    }
    return 0;
}

static int
check_range(Region *r, Py_ssize_t off, Py_ssize_t len)
{
    if (off > r->size || len > r->size - off) {
        raise_invalid("range [%zd, %zd) is outside the device of %zd bytes", off,
                      off + len, r->size);
        return -1;
    }
    return 0;
}

static int
check_writable(Region *r)
{
    if (r->readonly) {
        PyErr_SetString(PyExc_TypeError, "device is mapped read-only");
        return -1;
    }
    return 0;
}

/* parse (offset, length) and check them; 0 on success */
static int
parse_range(Region *r, PyObject *const *args, Py_ssize_t nargs, Py_ssize_t *off,
            Py_ssize_t *len)
{
    if (check_open(r) < 0)
        return -1;
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "expected (offset, length), got %zd arguments", nargs);
        return -1;
    }
    if (as_size(args[0], "offset", off) < 0 || as_size(args[1], "length", len) < 0)
        return -1;
    return check_range(r, *off, *len);
}

static PyObject *
Region_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"buffer", "mode", "readonly", NULL};
    PyObject *buf;
    const char *mode_name;
    int readonly = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "Os|p:Region", kwlist, &buf, &mode_name,
                                     &readonly))
        return NULL;
    int mode = parse_persist_mode(mode_name);
    if (mode < 0)
        return NULL;
    Region *r = (Region *)type->tp_alloc(type, 0);
    if (r == NULL)
        return NULL;
    if (PyObject_GetBuffer(buf, &r->view, readonly ? PyBUF_SIMPLE : PyBUF_WRITABLE) < 0) {
        r->released = 1;
        Py_DECREF(r);
        return NULL;
    }
    r->base = r->view.buf;
    r->size = r->view.len;
    r->mode = mode;
    r->readonly = readonly;
    if (mode == M_MSYNC && ((uintptr_t)r->base & (page_size - 1))) {
        PyBuffer_Release(&r->view);
        r->released = 1;
        Py_DECREF(r);
        return raise_invalid("msync mode needs a page-aligned mapping");
    }
    return (PyObject *)r;
}

static void
Region_dealloc(Region *r)
{
    if (!r->released)
        PyBuffer_Release(&r->view);
    Py_TYPE(r)->tp_free((PyObject *)r);
}

static PyObject *
msync_error(Region *r, Py_ssize_t off, Py_ssize_t len)
{
    int e = errno;
    PyObject *msg = PyUnicode_FromFormat("msync of range [%zd, %zd) failed: %s", off, off + len,
                                         strerror(e));
    if (msg == NULL)
        return NULL;
    PyObject *exc = PyObject_CallFunction(PyExc_OSError, "iO", e, msg);
    Py_DECREF(msg);
    if (exc != NULL) {
        PyErr_SetObject(PyExc_OSError, exc);
        Py_DECREF(exc);
    }
    return NULL;
}

#define WITHOUT_GIL_IF(cond, stmt)                                                            \
    do {                                                                                      \
        if (cond) {                                                                           \
            r->busy++;                                                                        \
            Py_BEGIN_ALLOW_THREADS stmt;                                                      \
            Py_END_ALLOW_THREADS r->busy--;                                                   \
        } else {                                                                              \
            stmt;                                                                             \
        }                                                                                     \
    } while (0)

static PyObject *
Region_flush(Region *r, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t off, len;
    int rc = 0;
    if (parse_range(r, args, nargs, &off, &len) < 0)
        return NULL;
    WITHOUT_GIL_IF(len >= LARGE || r->mode == M_MSYNC,
                   rc = persist_flush(r->mode, r->base + off, len));
    if (rc < 0)
        return msync_error(r, off, len);
    Py_RETURN_NONE;
}

static PyObject *
Region_drain(Region *r, PyObject *unused)
{
    if (check_open(r) < 0)
        return NULL;
    persist_drain(r->mode);
    Py_RETURN_NONE;
}

static PyObject *
Region_persist(Region *r, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t off, len;
    int rc = 0;
    if (parse_range(r, args, nargs, &off, &len) < 0)
        return NULL;
    WITHOUT_GIL_IF(len >= LARGE || r->mode == M_MSYNC,
                   rc = persist_flush(r->mode, r->base + off, len));
    if (rc < 0)
        return msync_error(r, off, len);
    persist_drain(r->mode);
    Py_RETURN_NONE;
}

/* memcpy(offset, data, drain=True) -> None: copy data to offset and persist it. */
static PyObject *
Region_memcpy(Region *r, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t off;
    Py_buffer src;
    int rc = 0, drain = 1;
    if (check_open(r) < 0 || check_writable(r) < 0)
        return NULL;
    if (nargs < 2 || nargs > 3) {
        PyErr_SetString(PyExc_TypeError, "memcpy(offset, data, drain=True)");
        return NULL;
    }
    if (as_size(args[0], "offset", &off) < 0)
        return NULL;
    if (nargs == 3 && (drain = PyObject_IsTrue(args[2])) < 0)
        return NULL;
    if (PyObject_GetBuffer(args[1], &src, PyBUF_SIMPLE) < 0)
        return NULL;
    if (check_range(r, off, src.len) < 0) {
        PyBuffer_Release(&src);
        return NULL;
    }
    Py_ssize_t n = src.len;
    WITHOUT_GIL_IF(n >= LARGE || r->mode == M_MSYNC,
                   rc = persist_copy(r->mode, r->base + off, src.buf, n));
    PyBuffer_Release(&src);
    if (rc < 0)
        return msync_error(r, off, n);
    if (drain)
        persist_drain(r->mode);
    Py_RETURN_NONE;
}

/* memset(offset, length, byte=0, drain=True) -> None: fill and persist. */
static PyObject *
Region_memset(Region *r, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t off, len, c = 0;
    int rc = 0, drain = 1;
    if (check_open(r) < 0 || check_writable(r) < 0)
        return NULL;
    if (nargs < 2 || nargs > 4) {
        PyErr_SetString(PyExc_TypeError, "memset(offset, length, byte=0, drain=True)");
        return NULL;
    }
    if (as_size(args[0], "offset", &off) < 0 || as_size(args[1], "length", &len) < 0)
        return NULL;
    if (nargs >= 3) {
        if (as_size(args[2], "byte", &c) < 0)
            return NULL;
        if (c > 255)
            return raise_invalid("byte must be in range(256), got %zd", c);
    }
    if (nargs == 4 && (drain = PyObject_IsTrue(args[3])) < 0)
        return NULL;
    if (check_range(r, off, len) < 0)
        return NULL;
    WITHOUT_GIL_IF(len >= LARGE || r->mode == M_MSYNC,
                   rc = persist_fill(r->mode, r->base + off, (int)c, len));
    if (rc < 0)
        return msync_error(r, off, len);
    if (drain)
        persist_drain(r->mode);
    Py_RETURN_NONE;
}

/* read_into(offset, buffer) -> int: copy len(buffer) bytes out of the device. */
static PyObject *
Region_read_into(Region *r, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t off;
    Py_buffer dst;
    if (check_open(r) < 0)
        return NULL;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "read_into(offset, buffer)");
        return NULL;
    }
    if (as_size(args[0], "offset", &off) < 0)
        return NULL;
    if (PyObject_GetBuffer(args[1], &dst, PyBUF_WRITABLE) < 0)
        return NULL;
    if (check_range(r, off, dst.len) < 0) {
        PyBuffer_Release(&dst);
        return NULL;
    }
    WITHOUT_GIL_IF(dst.len >= LARGE, memcpy(dst.buf, r->base + off, dst.len));
    Py_ssize_t n = dst.len;
    PyBuffer_Release(&dst);
    return PyLong_FromSsize_t(n);
}

/* read(offset, length) -> bytes */
static PyObject *
Region_read(Region *r, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t off, len;
    if (parse_range(r, args, nargs, &off, &len) < 0)
        return NULL;
    PyObject *out = PyBytes_FromStringAndSize(NULL, len);
    if (out == NULL)
        return NULL;
    WITHOUT_GIL_IF(len >= LARGE, memcpy(PyBytes_AS_STRING(out), r->base + off, len));
    return out;
}

static PyObject *
Region_release(Region *r, PyObject *unused)
{
    if (r->released)
        Py_RETURN_NONE;
    if (r->busy) {
        PyErr_SetString(PyExc_BufferError, "cannot release a region while another thread uses it");
        return NULL;
    }
    r->released = 1;
    PyBuffer_Release(&r->view);
    Py_RETURN_NONE;
}

static PyObject *
Region_get_address(Region *r, void *closure)
{
    if (check_open(r) < 0)
        return NULL;
    return PyLong_FromVoidPtr(r->base);
}

static PyObject *
Region_get_size(Region *r, void *closure)
{
    return PyLong_FromSsize_t(r->size);
}

static PyObject *
Region_get_mode(Region *r, void *closure)
{
    return PyUnicode_FromString(persist_mode_names[r->mode]);
}

static PyObject *
Region_get_closed(Region *r, void *closure)
{
    return PyBool_FromLong(r->released);
}

static PyMethodDef Region_methods[] = {
    {"flush", (PyCFunction)(void (*)(void))Region_flush, METH_FASTCALL,
     "flush(offset, length): start write-back of the lines (or msync the pages)."},
    {"drain", (PyCFunction)Region_drain, METH_NOARGS, "drain(): wait for flushes (SFENCE)."},
    {"persist", (PyCFunction)(void (*)(void))Region_persist, METH_FASTCALL,
     "persist(offset, length): flush + drain."},
    {"memcpy", (PyCFunction)(void (*)(void))Region_memcpy, METH_FASTCALL,
     "memcpy(offset, data, drain=True): copy data in and persist it."},
    {"memset", (PyCFunction)(void (*)(void))Region_memset, METH_FASTCALL,
     "memset(offset, length, byte=0, drain=True): fill and persist."},
    {"read_into", (PyCFunction)(void (*)(void))Region_read_into, METH_FASTCALL,
     "read_into(offset, buffer) -> int: copy out of the region."},
    {"read", (PyCFunction)(void (*)(void))Region_read, METH_FASTCALL,
     "read(offset, length) -> bytes."},
    {"release", (PyCFunction)Region_release, METH_NOARGS,
     "release(): drop the export of the buffer; later calls raise ValueError."},
    {NULL}};

static PyGetSetDef Region_getset[] = {
    {"address", (getter)Region_get_address, NULL, "virtual address of byte 0", NULL},
    {"size", (getter)Region_get_size, NULL, "length in bytes", NULL},
    {"mode", (getter)Region_get_mode, NULL, "persist mode", NULL},
    {"closed", (getter)Region_get_closed, NULL, "True once released", NULL},
    {NULL}};

static PyTypeObject RegionType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "daxfs.pmem._native.Region",
    .tp_basicsize = sizeof(Region),
    .tp_dealloc = (destructor)Region_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Region(buffer, mode, readonly=False): persistent-memory range ops.",
    .tp_methods = Region_methods,
    .tp_getset = Region_getset,
    .tp_new = Region_new,
};

/* --------------------------------------------------------- ExtentReader
 *
 * The read fast path of the filesystem (daxfs/fs/file.py: File.pread,
 * File.preadinto): the single-extent case of the iomap read actor
 * (daxfs.iomap.iomap_read) in one C call.  It takes the inode's lock, finds
 * the requested range inside the inode's cached extent (Inode.xcache, a
 * written extent; the range first clamped to the size), copies it out of the
 * region and releases the lock.  Anything else -- an argument that is not a
 * plain non-negative int, a hole, an unwritten extent, a range crossing the
 * extent's end, no cached extent, a range outside the region, a released
 * region -- is a miss: the call returns None and the caller takes the full
 * iomap path, which raises the right error or reads it and refills the cache.
 *
 * The objects it reads are the filesystem's own classes, whose fields are
 * __slots__: the constructor looks up each field's slot offset once, and
 * every call checks the exact type of each object before reading a slot, so
 * a change of those classes makes the constructor refuse (TypeError), never
 * read the wrong field.
 *
 * Invariants
 *   4. A copy happens only with inode.lock held (acquired through its own
 *      acquire/release methods, as `with inode.lock` does), and only from a
 *      range [addr, addr+n) checked inside the open region: every change of
 *      a file's blocks or size holds that lock (daxfs/fs/data.py), and every
 *      change of its map clears xcache first (daxfs/fs/extmap.py), so the
 *      copied blocks belong to the file for the whole copy.
 *   5. A miss has no effect: no exception is left set, nothing is copied.
 */

typedef struct {
    PyObject_HEAD
    Region *region;
    PyObject *types; /* (inode, extent, record) types, kept alive */
    PyTypeObject *inode_type, *extent_type, *record_type;
    Py_ssize_t inode_rec, inode_xcache, inode_lock; /* inode_lock < 0: by getattr */
    Py_ssize_t ext_lblk, ext_pblk, ext_length, ext_flags;
    Py_ssize_t rec_size;
    int shift;
} ExtentReader;


/* A slot holding an exact int that fits in [0, limit]; -1 otherwise (no exception). */
static inline Py_ssize_t
slot_index(PyObject *obj, Py_ssize_t offset, Py_ssize_t limit)
{
    PyObject *v = slot(obj, offset);
    if (v == NULL || !PyLong_CheckExact(v))
        return -1;
    Py_ssize_t x = PyLong_AsSsize_t(v);
    if (x < 0 || x > limit) {
        PyErr_Clear();
        return -1;
    }
    return x;
}

/* A request argument: an exact, non-negative int; -1 otherwise (no exception). */
static inline Py_ssize_t
request_index(PyObject *v)
{
    if (!PyLong_CheckExact(v))
        return -1;
    Py_ssize_t x = PyLong_AsSsize_t(v);
    if (x < 0) {
        PyErr_Clear();
        return -1;
    }
    return x;
}

static PyObject *
ExtentReader_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"region", "inode_type", "extent_type", "record_type",
                             "block_shift", NULL};
    PyObject *region, *it, *et, *rt;
    int shift;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!O!O!O!i:ExtentReader", kwlist, &RegionType,
                                     &region, &PyType_Type, &it, &PyType_Type, &et,
                                     &PyType_Type, &rt, &shift))
        return NULL;
    if (shift < 9 || shift > 30)
        return raise_invalid("block_shift %d is out of range", shift);
    ExtentReader *self = (ExtentReader *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->region = (Region *)Py_NewRef(region);
    self->types = PyTuple_Pack(3, it, et, rt);
    if (self->types == NULL)
        goto fail;
    self->inode_type = (PyTypeObject *)it;
    self->extent_type = (PyTypeObject *)et;
    self->record_type = (PyTypeObject *)rt;
    self->shift = shift;
    if (slot_offset(self->inode_type, "rec", &self->inode_rec) < 0 ||
        slot_offset(self->inode_type, "xcache", &self->inode_xcache) < 0 ||
        slot_offset(self->extent_type, "lblk", &self->ext_lblk) < 0 ||
        slot_offset(self->extent_type, "pblk", &self->ext_pblk) < 0 ||
        slot_offset(self->extent_type, "length", &self->ext_length) < 0 ||
        slot_offset(self->extent_type, "flags", &self->ext_flags) < 0 ||
        slot_offset(self->record_type, "size", &self->rec_size) < 0)
        goto fail;
    if (slot_offset(self->inode_type, "lock", &self->inode_lock) < 0) {
        PyErr_Clear(); /* a property (a lock made on demand): read it by name */
        self->inode_lock = -1;
    }
    return (PyObject *)self;
fail:
    Py_DECREF(self);
    return NULL;
}

static void
ExtentReader_dealloc(ExtentReader *self)
{
    Py_XDECREF(self->region);
    Py_XDECREF(self->types);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Take inode.lock; return it (a new reference), NULL with an exception set, or
 * NULL without one if the inode is not of the expected type. */
static PyObject *
lock_inode(ExtentReader *self, PyObject *inode)
{
    if (Py_TYPE(inode) != self->inode_type)
        return NULL;
    PyObject *lock;
    if (self->inode_lock >= 0) {
        lock = slot(inode, self->inode_lock);
        if (lock == NULL)
            return NULL;
        Py_INCREF(lock);
    } else if ((lock = PyObject_GetAttr(inode, str_lock)) == NULL) {
        return NULL;
    }
    if (lock_acquire(lock) < 0) {
        Py_DECREF(lock);
        return NULL;
    }
    return lock;
}

/* Release what lock_inode took; `result` is returned, or NULL if the release failed. */
static PyObject *
unlock_inode(PyObject *lock, PyObject *result)
{
    if (lock_release(lock) < 0)
        Py_CLEAR(result);
    Py_DECREF(lock);
    return result;
}

/* With inode.lock held: the device address of file bytes [pos, pos+*n) after
 * clamping *n to the size, if they lie in the cached written extent and in the
 * region; -1 on a miss (no exception).  *n == 0: at or past the end of file. */
static Py_ssize_t
lookup_locked(ExtentReader *self, PyObject *inode, Py_ssize_t pos, Py_ssize_t *n)
{
    Region *r = self->region;
    PyObject *rec = slot(inode, self->inode_rec);
    if (rec == NULL || Py_TYPE(rec) != self->record_type || r->released)
        return -1;
    Py_ssize_t size = slot_index(rec, self->rec_size, PY_SSIZE_T_MAX);
    if (size < 0)
        return -1;
    if (pos >= size || *n == 0) {
        *n = 0;
        return 0;
    }
    if (*n > size - pos)
        *n = size - pos;
    PyObject *ext = slot(inode, self->inode_xcache);
    if (ext == NULL || Py_TYPE(ext) != self->extent_type)
        return -1;
    Py_ssize_t blocks = PY_SSIZE_T_MAX >> (self->shift + 1);
    Py_ssize_t flags = slot_index(ext, self->ext_flags, 0); /* written extents only */
    Py_ssize_t lblk = slot_index(ext, self->ext_lblk, blocks);
    Py_ssize_t pblk = slot_index(ext, self->ext_pblk, blocks);
    Py_ssize_t length = slot_index(ext, self->ext_length, blocks);
    if (flags != 0 || lblk < 0 || pblk < 0 || length < 0)
        return -1;
    Py_ssize_t lo = lblk << self->shift, hi = (lblk + length) << self->shift;
    if (pos < lo || pos > hi || *n > hi - pos)
        return -1;
    Py_ssize_t addr = (pblk << self->shift) + (pos - lo);
    if (addr > r->size || *n > r->size - addr)
        return -1; /* outside the device: the iomap path reports it */
    return addr;
}

/* pread(inode, n, offset) -> bytes | None */
static PyObject *
ExtentReader_pread(ExtentReader *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "pread(inode, n, offset)");
        return NULL;
    }
    Py_ssize_t n = request_index(args[1]), pos = request_index(args[2]);
    if (n < 0 || pos < 0)
        Py_RETURN_NONE;
    PyObject *lock = lock_inode(self, args[0]);
    if (lock == NULL) {
        if (PyErr_Occurred())
            return NULL;
        Py_RETURN_NONE;
    }
    Py_ssize_t addr = lookup_locked(self, args[0], pos, &n);
    PyObject *out;
    if (addr < 0) {
        out = Py_NewRef(Py_None);
    } else if ((out = PyBytes_FromStringAndSize(NULL, n)) != NULL) {
        Region *r = self->region;
        WITHOUT_GIL_IF(n >= LARGE, memcpy(PyBytes_AS_STRING(out), r->base + addr, n));
    }
    return unlock_inode(lock, out);
}

/* preadinto(inode, buffer, offset) -> int | None */
static PyObject *
ExtentReader_preadinto(ExtentReader *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "preadinto(inode, buffer, offset)");
        return NULL;
    }
    Py_ssize_t pos = request_index(args[2]);
    if (pos < 0)
        Py_RETURN_NONE;
    Py_buffer dst;
    if (PyObject_GetBuffer(args[1], &dst, PyBUF_WRITABLE) < 0) {
        PyErr_Clear(); /* the iomap path raises what memoryview(buffer) raises */
        Py_RETURN_NONE;
    }
    PyObject *out = NULL;
    PyObject *lock = lock_inode(self, args[0]);
    if (lock == NULL) {
        if (!PyErr_Occurred())
            out = Py_NewRef(Py_None);
        PyBuffer_Release(&dst);
        return out;
    }
    Py_ssize_t n = dst.len;
    Py_ssize_t addr = lookup_locked(self, args[0], pos, &n);
    if (addr < 0) {
        out = Py_NewRef(Py_None);
    } else {
        Region *r = self->region;
        WITHOUT_GIL_IF(n >= LARGE, memcpy(dst.buf, r->base + addr, n));
        out = PyLong_FromSsize_t(n);
    }
    out = unlock_inode(lock, out);
    PyBuffer_Release(&dst);
    return out;
}

static PyMethodDef ExtentReader_methods[] = {
    {"pread", (PyCFunction)(void (*)(void))ExtentReader_pread, METH_FASTCALL,
     "pread(inode, n, offset) -> bytes, or None on a miss (take the iomap path)."},
    {"preadinto", (PyCFunction)(void (*)(void))ExtentReader_preadinto, METH_FASTCALL,
     "preadinto(inode, buffer, offset) -> int, or None on a miss (take the iomap path)."},
    {NULL}};

static PyTypeObject ExtentReaderType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "daxfs.pmem._native.ExtentReader",
    .tp_basicsize = sizeof(ExtentReader),
    .tp_dealloc = (destructor)ExtentReader_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "ExtentReader(region, inode_type, extent_type, record_type, block_shift): "
              "the single-extent read of daxfs files (see _native.c).",
    .tp_methods = ExtentReader_methods,
    .tp_new = ExtentReader_new,
};

/* --------------------------------------------------------------- module */

static PyObject *
cpu_features(PyObject *self, PyObject *unused)
{
    return Py_BuildValue("{s:O,s:O,s:O,s:O,s:O,s:O,s:O}", "x86", DAXFS_X86 ? Py_True : Py_False,
                         "clflush", have_clflush ? Py_True : Py_False, "clflushopt",
                         have_clflushopt ? Py_True : Py_False, "clwb",
                         have_clwb ? Py_True : Py_False, "sse2", have_sse2 ? Py_True : Py_False,
                         "avx2", have_avx2 ? Py_True : Py_False, "avx512f",
                         have_avx512f ? Py_True : Py_False);
}

/* diff_lines(a, b, line=64) -> list of (start, end): the byte ranges, in whole
 * lines, where two buffers of equal length differ; adjacent lines merge.  Used
 * by the filesystem journal to log only what a transaction changed. */
static PyObject *
diff_lines(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer a, b;
    Py_ssize_t line = LINE;
    if (nargs < 2 || nargs > 3) {
        PyErr_SetString(PyExc_TypeError, "diff_lines(a, b, line=64)");
        return NULL;
    }
    if (nargs == 3 && (line = PyLong_AsSsize_t(args[2])) <= 0) {
        if (!PyErr_Occurred())
            raise_invalid("line must be positive");
        return NULL;
    }
    if (PyObject_GetBuffer(args[0], &a, PyBUF_SIMPLE) < 0)
        return NULL;
    if (PyObject_GetBuffer(args[1], &b, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&a);
        return NULL;
    }
    PyObject *out = NULL;
    if (a.len != b.len) {
        raise_invalid("buffers differ in length: %zd and %zd", a.len, b.len);
        goto done;
    }
    out = PyList_New(0);
    if (out == NULL)
        goto done;
    size_t len = (size_t)a.len, end;
    for (size_t start = 0; (start = diff_run(a.buf, b.buf, len, (size_t)line, start, &end)) < len;
         start = end) {
        PyObject *t = Py_BuildValue("(nn)", (Py_ssize_t)start, (Py_ssize_t)end);
        if (t == NULL || PyList_Append(out, t) < 0) {
            Py_XDECREF(t);
            Py_CLEAR(out);
            goto done;
        }
        Py_DECREF(t);
    }
done:
    PyBuffer_Release(&a);
    PyBuffer_Release(&b);
    return out;
}

static PyMethodDef module_methods[] = {
    {"cpu_features", cpu_features, METH_NOARGS, "cpu_features() -> dict of bool"},
    {"diff_lines", (PyCFunction)(void (*)(void))diff_lines, METH_FASTCALL,
     "diff_lines(a, b, line=64) -> [(start, end)]: differing whole-line ranges"},
    {"set_error_class", set_error_class, METH_O,
     "set_error_class(cls): raise cls(message) for bad arguments"},
    {NULL}};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "daxfs.pmem._native",
    "Cache flush, fence and non-temporal copy for persistent memory.", -1, module_methods};

PyMODINIT_FUNC
PyInit__native(void)
{
    detect_cpu();
    if (PyType_Ready(&RegionType) < 0 || PyType_Ready(&ExtentReaderType) < 0 ||
        pyutil_init() < 0)
        return NULL;
    PyObject *m = PyModule_Create(&moduledef);
    if (m == NULL)
        return NULL;
    Py_INCREF(&RegionType);
    Py_INCREF(&ExtentReaderType);
    if (PyModule_AddObject(m, "Region", (PyObject *)&RegionType) < 0 ||
        PyModule_AddObject(m, "ExtentReader", (PyObject *)&ExtentReaderType) < 0 ||
        PyModule_AddIntConstant(m, "NT_THRESHOLD", NT_THRESHOLD) < 0 ||
        PyModule_AddIntConstant(m, "LINE", LINE) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
