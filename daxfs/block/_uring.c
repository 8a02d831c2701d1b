/*
 * daxfs.block._uring: one io_uring (liburing) shared by every thread of a
 * block device's engine (daxfs.block.uring.UringEngine is its only user).
 *
 * Theory of operation
 * -------------------
 * Ring(entries) sets up a submission and a completion queue of ``entries``
 * (the engine's queue depth).  Any thread may call submit(token, opcode, fd,
 * offset, buffers, length, flags): with the GIL held it takes a Py_buffer of
 * every buffer (writable for a read) and builds the iovecs; then, with the
 * GIL released and under the submission lock, it fills one SQE and calls
 * io_uring_submit.  One thread at a time calls reap(): with the GIL released
 * and under the completion lock it waits for at least one CQE and takes every
 * CQE ready (a batch); with the GIL back it releases the buffers of each and
 * returns [(token, result)], the result being the CQE's res (bytes moved, or
 * -errno).  The engine does the rest in Python (continuing short transfers,
 * FUA fallbacks, completions).
 *
 * Opcodes: NOP (0), READV (1), WRITEV (2; flags are the RWF_* rw_flags),
 * FDATASYNC (3), FALLOCATE (4; flags are the mode, length the bytes).
 *
 * Invariants
 *   1. Every argument is checked before any SQE is filled: fd >= 0, offset
 *      and length >= 0, at most IOV_MAX buffers (each contiguous, writable
 *      for READV), a known opcode.  Bad input raises; it never reaches the
 *      kernel half-built.
 *   2. A request's buffers (Py_buffer) and token (a reference) are held from
 *      submit until its CQE is reaped: the kernel never writes into memory
 *      Python has freed or resized.  Deallocating a ring with requests in
 *      flight first waits for their CQEs.
 *   3. ``inflight`` counts SQEs submitted and not yet reaped; close() refuses
 *      (EBUSY) while it is not zero or while a reap() waits.
 *   4. The GIL is never held across io_uring_submit or io_uring_wait_cqe, and
 *      no lock of this module is taken while holding the GIL and waiting on
 *      the other lock (each lock is taken with the GIL released).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <limits.h>
#include <liburing.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <string.h>
#include <sys/uio.h>

#ifndef IOV_MAX
#define IOV_MAX 1024
#endif
#define REAP_BATCH 256
#define MAX_ENTRIES 4096

enum { OP_NOP = 0, OP_READV = 1, OP_WRITEV = 2, OP_FDATASYNC = 3, OP_FALLOCATE = 4 };

typedef struct {
    PyObject *token;    /* returned with the result (a reference) */
    Py_ssize_t nbufs;   /* Py_buffers held */
    Py_buffer *bufs;
    struct iovec *iov;
} Req;

typedef struct {
    PyObject_HEAD
    struct io_uring ring;
    int ready;          /* io_uring_queue_init succeeded, not yet exited */
    int broken;         /* a submission failed after its SQE was published */
    unsigned entries;
    long inflight;      /* invariant 3; changed under sq_lock */
    int reaping;        /* a reap() is waiting (under cq_lock) */
    pthread_mutex_t sq_lock;
    pthread_mutex_t cq_lock;
} Ring;

static PyObject *
errno_error(int code, const char *text)
{
    PyObject *exc = PyObject_CallFunction(PyExc_OSError, "is", code, text);
    if (exc != NULL) {
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        Py_DECREF(exc);
    }
    return NULL;
}

static PyObject *
errno_errorf(int code, const char *what)
{
    char text[200];
    snprintf(text, sizeof text, "%s: %s", what, strerror(code));
    return errno_error(code, text);
}

static void
req_free(Req *req)
{
    /* GIL held */
    for (Py_ssize_t i = 0; i < req->nbufs; i++)
        PyBuffer_Release(&req->bufs[i]);
    Py_XDECREF(req->token);
    PyMem_Free(req);
}

static int
ring_init(Ring *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"entries", NULL};
    int entries;
    if (self->ready)
        return errno_error(EBUSY, "the ring is already set up"), -1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "i:Ring", kwlist, &entries))
        return -1;
    if (entries < 1 || entries > MAX_ENTRIES) {
        PyErr_Format(PyExc_ValueError, "entries must be in 1..%d, not %d", MAX_ENTRIES, entries);
        return -1;
    }
    int ret;
    Py_BEGIN_ALLOW_THREADS
    ret = io_uring_queue_init((unsigned)entries, &self->ring, 0);
    Py_END_ALLOW_THREADS
    if (ret < 0)
        return errno_errorf(-ret, "io_uring_setup"), -1;
    self->ready = 1;
    self->entries = (unsigned)entries;
    return 0;
}

static PyObject *
ring_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    Ring *self = (Ring *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    pthread_mutex_init(&self->sq_lock, NULL);
    pthread_mutex_init(&self->cq_lock, NULL);
    return (PyObject *)self;
}

/* Take the buffers of ``seq`` into a new Req (GIL held). */
static Req *
req_build(PyObject *token, PyObject *seq, int writable)
{
    PyObject *fast = PySequence_Fast(seq, "buffers must be a sequence of buffers");
    if (fast == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    if (n > IOV_MAX) {
        Py_DECREF(fast);
        PyErr_Format(PyExc_ValueError, "at most %d buffers in one request, not %zd", IOV_MAX, n);
        return NULL;
    }
    size_t bytes = sizeof(Req) + (size_t)n * (sizeof(Py_buffer) + sizeof(struct iovec));
    Req *req = PyMem_Calloc(1, bytes);
    if (req == NULL) {
        Py_DECREF(fast);
        PyErr_NoMemory();
        return NULL;
    }
    req->bufs = (Py_buffer *)(req + 1);
    req->iov = (struct iovec *)(req->bufs + n);
    req->token = Py_NewRef(token);
    PyObject **items = PySequence_Fast_ITEMS(fast);
    size_t total = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        int flags = PyBUF_C_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0);
        if (PyObject_GetBuffer(items[i], &req->bufs[i], flags) < 0) {
            Py_DECREF(fast);
            req_free(req);
            return NULL;
        }
        req->nbufs = i + 1;
        req->iov[i].iov_base = req->bufs[i].buf;
        req->iov[i].iov_len = (size_t)req->bufs[i].len;
        total += (size_t)req->bufs[i].len;
        if (total > (size_t)SSIZE_MAX) {
            Py_DECREF(fast);
            req_free(req);
            PyErr_SetString(PyExc_ValueError, "the buffers of one request exceed SSIZE_MAX bytes");
            return NULL;
        }
    }
    Py_DECREF(fast);
    return req;
}

static PyObject *
ring_submit(Ring *self, PyObject *args)
{
    PyObject *token, *buffers;
    int opcode, fd;
    long long offset, length;
    unsigned int flags;
    if (!PyArg_ParseTuple(args, "OiiLOLI:submit", &token, &opcode, &fd, &offset, &buffers,
                          &length, &flags))
        return NULL;
    if (opcode < OP_NOP || opcode > OP_FALLOCATE)
        return PyErr_Format(PyExc_ValueError, "unknown opcode %d", opcode);
    if (opcode != OP_NOP && fd < 0)
        return errno_error(EBADF, "a negative file descriptor");
    if (offset < 0 || length < 0)
        return PyErr_Format(PyExc_ValueError, "offset (%lld) and length (%lld) must be >= 0",
                            offset, length);
    if (!self->ready)
        return errno_error(EBADF, "the io_uring is closed");
    if (self->broken)
        return errno_error(EIO, "the io_uring is broken (a submission failed)");
    int rw = opcode == OP_READV || opcode == OP_WRITEV;
    if (!rw && PyObject_Length(buffers) != 0) {
        if (!PyErr_Occurred())
            PyErr_Format(PyExc_ValueError, "opcode %d takes no buffers", opcode);
        return NULL;
    }
    Req *req = req_build(token, buffers, opcode == OP_READV);
    if (req == NULL)
        return NULL;

    int ret = 0, published = 0;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&self->sq_lock);
    struct io_uring_sqe *sqe = io_uring_get_sqe(&self->ring);
    if (sqe == NULL) { /* left behind by a failed submit: push it, then retry */
        io_uring_submit(&self->ring);
        sqe = io_uring_get_sqe(&self->ring);
    }
    if (sqe == NULL) {
        ret = -EBUSY;
    } else {
        switch (opcode) {
        case OP_NOP:
            io_uring_prep_nop(sqe);
            break;
        case OP_READV:
            io_uring_prep_readv(sqe, fd, req->iov, (unsigned)req->nbufs, (__u64)offset);
            break;
        case OP_WRITEV:
            io_uring_prep_writev2(sqe, fd, req->iov, (unsigned)req->nbufs, (__u64)offset,
                                  (int)flags);
            break;
        case OP_FDATASYNC:
            io_uring_prep_fsync(sqe, fd, IORING_FSYNC_DATASYNC);
            break;
        default:
            io_uring_prep_fallocate(sqe, fd, (int)flags, (off_t)offset, (off_t)length);
            break;
        }
        io_uring_sqe_set_data(sqe, req);
        published = 1;
        self->inflight++;
        for (int tries = 0;; tries++) {
            ret = io_uring_submit(&self->ring);
            if (ret >= 0 || !(ret == -EINTR || ret == -EAGAIN || ret == -EBUSY) || tries > 1000)
                break;
            sched_yield(); /* EAGAIN/EBUSY: the kernel is short of resources for a moment */
        }
        if (ret < 0)
            self->broken = 1;
    }
    pthread_mutex_unlock(&self->sq_lock);
    Py_END_ALLOW_THREADS
    if (ret < 0) {
        if (!published)
            req_free(req);
        /* else: the SQE is in the ring and may still be executed; its buffers stay held */
        return errno_errorf(-ret, "io_uring_submit");
    }
    Py_RETURN_NONE;
}

static PyObject *
ring_reap(Ring *self, PyObject *Py_UNUSED(ignored))
{
    struct { Req *req; int res; } got[REAP_BATCH];
    unsigned n = 0;
    int ret = 0, closed = 0;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&self->cq_lock);
    if (!self->ready) {
        closed = 1;
    } else {
        self->reaping = 1;
        struct io_uring_cqe *cqe;
        ret = io_uring_wait_cqe(&self->ring, &cqe);
        if (ret == 0) {
            struct io_uring_cqe *cqes[REAP_BATCH];
            n = io_uring_peek_batch_cqe(&self->ring, cqes, REAP_BATCH);
            for (unsigned i = 0; i < n; i++) {
                got[i].req = io_uring_cqe_get_data(cqes[i]);
                got[i].res = cqes[i]->res;
            }
            io_uring_cq_advance(&self->ring, n);
        }
        self->reaping = 0;
    }
    pthread_mutex_unlock(&self->cq_lock);
    if (n) {
        pthread_mutex_lock(&self->sq_lock);
        self->inflight -= n;
        pthread_mutex_unlock(&self->sq_lock);
    }
    Py_END_ALLOW_THREADS
    if (closed)
        return errno_error(EBADF, "the io_uring is closed");
    PyObject *out = PyList_New(0);
    for (unsigned i = 0; i < n; i++) {
        Req *req = got[i].req;
        if (out != NULL) {
            PyObject *pair = Py_BuildValue("(Oi)", req->token, got[i].res);
            if (pair == NULL || PyList_Append(out, pair) < 0)
                Py_CLEAR(out);
            Py_XDECREF(pair);
        }
        req_free(req); /* even on error: the kernel is done with the buffers */
    }
    if (out != NULL && ret < 0 && ret != -EINTR && ret != -EAGAIN && ret != -ETIME) {
        Py_DECREF(out);
        return errno_errorf(-ret, "io_uring_wait_cqe");
    }
    if (ret == -EINTR && PyErr_CheckSignals() < 0) {
        Py_XDECREF(out);
        return NULL;
    }
    return out;
}

/* Wait for every request in flight and free it (GIL held; used by close on dealloc). */
static void
ring_drain(Ring *self)
{
    while (self->inflight > 0) {
        struct io_uring_cqe *cqe;
        int ret;
        Py_BEGIN_ALLOW_THREADS
        ret = io_uring_wait_cqe(&self->ring, &cqe);
        Py_END_ALLOW_THREADS
        if (ret == -EINTR)
            continue;
        if (ret < 0)
            return; /* cannot wait: the buffers stay held (leaked), never freed under I/O */
        Req *req = io_uring_cqe_get_data(cqe);
        io_uring_cqe_seen(&self->ring, cqe);
        self->inflight--;
        req_free(req);
    }
}

static PyObject *
ring_close(Ring *self, PyObject *Py_UNUSED(ignored))
{
    int busy = 0;
    if (!self->ready)
        Py_RETURN_NONE;
    Py_BEGIN_ALLOW_THREADS
    if (pthread_mutex_trylock(&self->cq_lock) != 0) {
        busy = 1;
    } else {
        pthread_mutex_lock(&self->sq_lock);
        busy = self->inflight != 0 || self->reaping;
        if (!busy) {
            io_uring_queue_exit(&self->ring);
            self->ready = 0;
        }
        pthread_mutex_unlock(&self->sq_lock);
        pthread_mutex_unlock(&self->cq_lock);
    }
    Py_END_ALLOW_THREADS
    if (busy)
        return errno_error(EBUSY, "the io_uring has requests in flight or a waiting reap()");
    Py_RETURN_NONE;
}

static PyObject *
ring_unsupported(Ring *self, PyObject *Py_UNUSED(ignored))
{
    static const struct { int op; const char *name; } needed[] = {
        {IORING_OP_NOP, "NOP"},
        {IORING_OP_READV, "READV"},
        {IORING_OP_WRITEV, "WRITEV"},
        {IORING_OP_FSYNC, "FSYNC"},
        {IORING_OP_FALLOCATE, "FALLOCATE"},
    };
    if (!self->ready)
        return errno_error(EBADF, "the io_uring is closed");
    struct io_uring_probe *probe = io_uring_get_probe_ring(&self->ring);
    PyObject *out = PyList_New(0);
    if (out == NULL) {
        if (probe)
            io_uring_free_probe(probe);
        return NULL;
    }
    for (size_t i = 0; i < sizeof needed / sizeof needed[0]; i++) {
        if (probe != NULL && io_uring_opcode_supported(probe, needed[i].op))
            continue;
        PyObject *name = PyUnicode_FromString(needed[i].name);
        if (name == NULL || PyList_Append(out, name) < 0) {
            Py_XDECREF(name);
            Py_CLEAR(out);
            break;
        }
        Py_DECREF(name);
    }
    if (probe)
        io_uring_free_probe(probe);
    return out;
}

static PyObject *
ring_get_inflight(Ring *self, void *closure)
{
    return PyLong_FromLong(self->inflight);
}

static PyObject *
ring_get_entries(Ring *self, void *closure)
{
    return PyLong_FromUnsignedLong(self->entries);
}

static PyObject *
ring_get_closed(Ring *self, void *closure)
{
    return PyBool_FromLong(!self->ready);
}

static void
ring_dealloc(Ring *self)
{
    if (self->ready) {
        ring_drain(self);
        if (self->inflight == 0)
            io_uring_queue_exit(&self->ring);
        /* else: never freed while the kernel may write (invariant 2) */
        self->ready = 0;
    }
    pthread_mutex_destroy(&self->sq_lock);
    pthread_mutex_destroy(&self->cq_lock);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef ring_methods[] = {
    {"submit", (PyCFunction)ring_submit, METH_VARARGS,
     "submit(token, opcode, fd, offset, buffers, length, flags): start one request"},
    {"reap", (PyCFunction)ring_reap, METH_NOARGS,
     "reap() -> [(token, res)]: wait for at least one completion (GIL released)"},
    {"close", (PyCFunction)ring_close, METH_NOARGS, "release the ring (EBUSY if in use)"},
    {"unsupported", (PyCFunction)ring_unsupported, METH_NOARGS,
     "the opcodes daxfs needs that this kernel's io_uring lacks"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef ring_getset[] = {
    {"inflight", (getter)ring_get_inflight, NULL, "requests submitted, not yet reaped", NULL},
    {"entries", (getter)ring_get_entries, NULL, "the submission queue's size", NULL},
    {"closed", (getter)ring_get_closed, NULL, "close() was called", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject RingType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "daxfs.block._uring.Ring",
    .tp_basicsize = sizeof(Ring),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "One io_uring shared by all threads (see the module docstring).",
    .tp_new = ring_new,
    .tp_init = (initproc)ring_init,
    .tp_dealloc = (destructor)ring_dealloc,
    .tp_methods = ring_methods,
    .tp_getset = ring_getset,
};

/* misaligned(buffers, align) -> bool: is any buffer's address or length not a multiple
 * of align (a power of two), or not contiguous?  (O_DIRECT's rule; file.py bounces.) */
static PyObject *
uring_misaligned(PyObject *module, PyObject *args)
{
    PyObject *seq;
    Py_ssize_t align;
    if (!PyArg_ParseTuple(args, "On:misaligned", &seq, &align))
        return NULL;
    if (align < 1 || (align & (align - 1)))
        return PyErr_Format(PyExc_ValueError, "align must be a power of two, not %zd", align);
    PyObject *fast = PySequence_Fast(seq, "buffers must be a sequence of buffers");
    if (fast == NULL)
        return NULL;
    uintptr_t mask = (uintptr_t)align - 1;
    int bad = 0;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    PyObject **items = PySequence_Fast_ITEMS(fast);
    for (Py_ssize_t i = 0; i < n && !bad; i++) {
        Py_buffer view;
        if (PyObject_GetBuffer(items[i], &view, PyBUF_C_CONTIGUOUS) < 0) {
            if (!PyErr_ExceptionMatches(PyExc_BufferError)) {
                Py_DECREF(fast);
                return NULL;
            }
            PyErr_Clear(); /* not contiguous: cannot go to the kernel as one iovec */
            bad = 1;
            break;
        }
        if (view.len && (((uintptr_t)view.buf & mask) || ((uintptr_t)view.len & mask)))
            bad = 1;
        PyBuffer_Release(&view);
    }
    Py_DECREF(fast);
    return PyBool_FromLong(bad);
}

static PyMethodDef module_methods[] = {
    {"misaligned", uring_misaligned, METH_VARARGS,
     "misaligned(buffers, align) -> bool: an address or length not a multiple of align"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef uring_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "daxfs.block._uring",
    .m_doc = "io_uring through liburing for daxfs.block (see daxfs/block/uring.py).",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC
PyInit__uring(void)
{
    if (PyType_Ready(&RingType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&uring_module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&RingType);
    if (PyModule_AddObject(m, "Ring", (PyObject *)&RingType) < 0 ||
        PyModule_AddIntConstant(m, "NOP", OP_NOP) < 0 ||
        PyModule_AddIntConstant(m, "READV", OP_READV) < 0 ||
        PyModule_AddIntConstant(m, "WRITEV", OP_WRITEV) < 0 ||
        PyModule_AddIntConstant(m, "FDATASYNC", OP_FDATASYNC) < 0 ||
        PyModule_AddIntConstant(m, "FALLOCATE", OP_FALLOCATE) < 0 ||
        PyModule_AddIntConstant(m, "IOV_MAX", IOV_MAX) < 0 ||
        PyModule_AddIntConstant(m, "MAX_ENTRIES", MAX_ENTRIES) < 0) {
        Py_DECREF(&RingType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
