/*
 * daxfs.block._uring: one io_uring (liburing) shared by every thread of a
 * block device's engine (daxfs.block.uring.UringEngine is its only user).
 *
 * Theory of operation
 * -------------------
 * Ring(entries) sets up a submission and a completion queue of ``entries``
 * (the engine's queue depth).  Any thread may call submit(token, opcode, fd,
 * offset, buffers, length, flags[, defer]): with the GIL held it takes a
 * Py_buffer of every buffer (writable for a read) and builds the iovecs;
 * then, with the GIL released and under the submission lock, it fills one
 * SQE and calls io_uring_submit -- unless ``defer``: the SQE stays queued
 * until the next submit, flush() or reap() (which submits what is queued
 * before it waits), so that the leader's new SQEs of a batch of completions
 * cost one system call.  One thread at a time calls reap(): with the GIL released
 * and under the completion lock it waits for at least one CQE and takes every
 * CQE ready (a batch); with the GIL back it releases the buffers of each and
 * returns [(token, result)], the result being the CQE's res (bytes moved, or
 * -errno).  The engine does the rest in Python (continuing short transfers,
 * FUA fallbacks, completions).
 *
 * Private rings: the synchronous calls
 * ----------------------------------------
 * A thread that only waits for its own I/O needs none of the sharing above.
 * rw(opcode, fd, offset, buffers, flags) does one READV or WRITEV on a
 * *private* ring taken from the Ring's pool (made on first need, of the same
 * ``entries``): with the GIL released it fills one SQE and calls
 * io_uring_submit_and_wait (one system call for submission and completion),
 * takes the CQE and puts the ring back; it returns the CQE's res.
 * rw_batch(opcode, fd, [(offset, buffer), ...], flags, depth) does many on one
 * private ring, keeping up to ``depth`` (at most ``entries``) in flight, each
 * SQE submitted in its own system call (see batch_run), a wait only when the
 * queue is full, all with the GIL released; it
 * returns the res of each item, in order.  Continuing a short transfer and
 * naming errors is the caller's (daxfs.block.uring).  A private ring is used
 * by one thread at a time, so its CQEs are its own: no leader, no locks
 * around the kernel calls.
 *
 * Fast(ring, ...): a block device's plain reads and writes (and batches of
 * reads) checked and done on the Ring's private rings in one call; see its
 * comment below.
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
 *   5. A private ring is in the pool or in the hands of exactly one call;
 *      rw and rw_batch return only when every SQE they submitted has its
 *      CQE (the buffers are released after that), or, where an SQE could not
 *      be submitted, after the ring was discarded (an SQE never submitted is
 *      never executed).  close() refuses (EBUSY) while a private ring is out.
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
#include <time.h>
#include <unistd.h>

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
    struct Private *pool;   /* idle private rings (invariant 5), under pool_lock */
    long private_out;       /* private rings in use by rw / rw_batch */
    long private_made;      /* private rings set up and not yet freed */
    unsigned private_flags; /* the setup flags of the last private ring set up */
    pthread_mutex_t pool_lock;
} Ring;

/* A private ring (invariant 5). */
typedef struct Private {
    struct io_uring ring;
    struct Private *next;
} Private;

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

static int setup_ring(unsigned entries, struct io_uring *ring, unsigned flags);

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
    ret = setup_ring((unsigned)entries, &self->ring, 0);
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
    pthread_mutex_init(&self->pool_lock, NULL);
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

/* io_uring_submit of the SQEs queued on the shared ring (caller holds sq_lock, GIL
 * released); a failure marks the ring broken.  0 or -errno. */
static int
shared_flush(Ring *self)
{
    int ret = 0;
    for (int tries = 0;; tries++) {
        ret = io_uring_submit(&self->ring);
        if (ret >= 0 || !(ret == -EINTR || ret == -EAGAIN || ret == -EBUSY) || tries > 1000)
            break;
        sched_yield(); /* EAGAIN/EBUSY: the kernel is short of resources for a moment */
    }
    if (ret < 0)
        self->broken = 1;
    return ret < 0 ? ret : 0;
}

static PyObject *
ring_submit(Ring *self, PyObject *args)
{
    PyObject *token, *buffers;
    int opcode, fd;
    long long offset, length;
    unsigned int flags;
    int defer = 0;
    if (!PyArg_ParseTuple(args, "OiiLOLI|p:submit", &token, &opcode, &fd, &offset, &buffers,
                          &length, &flags, &defer))
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
        if (!defer)
            ret = shared_flush(self);
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
ring_flush(Ring *self, PyObject *Py_UNUSED(ignored))
{
    int ret = 0;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&self->sq_lock);
    if (self->ready && !self->broken && io_uring_sq_ready(&self->ring))
        ret = shared_flush(self);
    pthread_mutex_unlock(&self->sq_lock);
    Py_END_ALLOW_THREADS
    if (ret < 0)
        return errno_errorf(-ret, "io_uring_submit");
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
        pthread_mutex_lock(&self->sq_lock); /* deferred SQEs go before the wait for them */
        if (io_uring_sq_ready(&self->ring))
            ret = shared_flush(self);
        pthread_mutex_unlock(&self->sq_lock);
        if (ret == 0)
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

/* -- private rings: the synchronous calls (invariant 5) ------------------------------- */

/* The setup flags of a private ring, tried in order until io_uring_setup takes
 * one (a kernel that does not know a flag says EINVAL).  COOP_TASKRUN (5.19):
 * the completion work runs when the waiting thread enters the kernel, with no
 * interrupt to run it.  Not SINGLE_ISSUER / DEFER_TASKRUN (6.1), which fio
 * uses: a pooled private ring serves whichever thread takes it, and those
 * flags tie a ring to the thread that set it up (A/B in C, one process, 9
 * passes at load 5: the same figures within noise at QD1 and QD32). */
static const unsigned PRIVATE_FLAGS[] = {IORING_SETUP_COOP_TASKRUN, 0};

/* For tests: setup flags io_uring_setup is made to refuse with EINVAL, as a
 * kernel without them would (``_refuse_setup_flags``). */
static unsigned refused_flags;

static int
setup_ring(unsigned entries, struct io_uring *ring, unsigned flags)
{
    if (flags & refused_flags)
        return -EINVAL;
    return io_uring_queue_init(entries, ring, flags);
}

/* Take a private ring from the pool, or set one up (GIL released).  NULL with
 * *err set (EBADF: the Ring is closed; else io_uring_setup's errno). */
static Private *
private_get(Ring *self, int *err)
{
    pthread_mutex_lock(&self->pool_lock);
    if (!self->ready) {
        pthread_mutex_unlock(&self->pool_lock);
        *err = EBADF;
        return NULL;
    }
    Private *p = self->pool;
    if (p != NULL)
        self->pool = p->next;
    else
        self->private_made++;
    self->private_out++;
    pthread_mutex_unlock(&self->pool_lock);
    if (p != NULL)
        return p;
    p = calloc(1, sizeof *p);
    int ret = -ENOMEM;
    if (p != NULL) { /* the first set of flags this kernel takes (EINVAL: not known) */
        for (size_t i = 0; i < sizeof PRIVATE_FLAGS / sizeof PRIVATE_FLAGS[0]; i++) {
            ret = setup_ring(self->entries, &p->ring, PRIVATE_FLAGS[i]);
            if (ret != -EINVAL) {
                if (ret == 0)
                    self->private_flags = PRIVATE_FLAGS[i]; /* (a word: torn reads are fine) */
                break;
            }
        }
    }
    if (ret < 0) {
        free(p);
        pthread_mutex_lock(&self->pool_lock);
        self->private_out--;
        self->private_made--;
        pthread_mutex_unlock(&self->pool_lock);
        *err = -ret;
        return NULL;
    }
    return p;
}

/* Give a private ring back (GIL released).  ``discard``: an SQE may be left
 * unsubmitted in it, so it is freed instead of pooled (never executed then). */
static void
private_put(Ring *self, Private *p, int discard)
{
    if (discard) {
        io_uring_queue_exit(&p->ring);
        free(p);
    }
    pthread_mutex_lock(&self->pool_lock);
    self->private_out--;
    if (discard) {
        self->private_made--;
    } else {
        p->next = self->pool;
        self->pool = p;
    }
    pthread_mutex_unlock(&self->pool_lock);
}

/* Free the idle private rings (caller holds pool_lock, or is the deallocator). */
static void
private_free_pool(Ring *self)
{
    while (self->pool != NULL) {
        Private *p = self->pool;
        self->pool = p->next;
        io_uring_queue_exit(&p->ring);
        free(p);
        self->private_made--;
    }
}

/* Submit every SQE queued on ``p`` and wait for at least one CQE, in one system
 * call (GIL released; again while the kernel takes only part of them).  Returns 0
 * (none left queued) or -errno; after an error the SQEs still queued
 * (io_uring_sq_ready) were never submitted. */
static int private_submit_wait(Private *p, unsigned wait_nr);

static int
private_submit(Private *p)
{
    return private_submit_wait(p, 1);
}

/* private_submit, waiting for ``wait_nr`` CQEs (0: submit only). */
static int
private_submit_wait(Private *p, unsigned wait_nr)
{
    for (int tries = 0;; tries++) {
        int ret = io_uring_submit_and_wait(&p->ring, wait_nr);
        if (io_uring_sq_ready(&p->ring) == 0)
            return 0; /* all submitted (an interrupted wait is waited again by the caller) */
        if (ret >= 0)
            ret = -EAGAIN; /* the kernel took only some (short of memory, or an SQE it
                            * refused ended the submission): the rest again, so that
                            * the caller's count of requests in flight stays true */
        if (!(ret == -EINTR || ret == -EAGAIN || ret == -EBUSY) || tries > 1000)
            return ret;
        sched_yield();
    }
}

/* Wait for a CQE of ``p`` (GIL released); 0 or -errno (never EINTR). */
static int
private_wait(Private *p, struct io_uring_cqe **cqe)
{
    int ret;
    do {
        ret = io_uring_wait_cqe(&p->ring, cqe);
    } while (ret == -EINTR || ret == -EAGAIN);
    return ret;
}

/* One READ or WRITE SQE; a single buffer goes as IORING_OP_READ / WRITE (no iovec
 * for the kernel to copy in), several as READV / WRITEV. */
static void
prep_rw(struct io_uring_sqe *sqe, int opcode, int fd, const struct iovec *iov, unsigned n,
        long long offset, unsigned flags)
{
    if (n == 1) {
        if (opcode == OP_READV)
            io_uring_prep_read(sqe, fd, iov->iov_base, (unsigned)iov->iov_len, (__u64)offset);
        else
            io_uring_prep_write(sqe, fd, iov->iov_base, (unsigned)iov->iov_len, (__u64)offset);
        sqe->rw_flags = opcode == OP_READV ? 0 : (int)flags;
    } else if (opcode == OP_READV) {
        io_uring_prep_readv(sqe, fd, iov, n, (__u64)offset);
    } else {
        io_uring_prep_writev2(sqe, fd, iov, n, (__u64)offset, (int)flags);
    }
}

static int
check_rw(int opcode, int fd, long long offset)
{
    if (opcode != OP_READV && opcode != OP_WRITEV) {
        PyErr_Format(PyExc_ValueError, "rw takes READV or WRITEV, not opcode %d", opcode);
        return -1;
    }
    if (fd < 0) {
        errno_error(EBADF, "a negative file descriptor");
        return -1;
    }
    if (offset < 0) {
        PyErr_Format(PyExc_ValueError, "offset must be >= 0, not %lld", offset);
        return -1;
    }
    return 0;
}

/* The exception of a synchronous call that failed before its I/O (NULL). */
static PyObject *
private_error(int err, int no_ring)
{
    if (no_ring && err == EBADF)
        return errno_error(EBADF, "the io_uring is closed");
    return errno_errorf(err, no_ring ? "io_uring_setup (private ring)" : "io_uring_submit");
}

static PyObject *
ring_rw(Ring *self, PyObject *args)
{
    PyObject *buffers;
    int opcode, fd;
    long long offset;
    unsigned int flags;
    if (!PyArg_ParseTuple(args, "iiLOI:rw", &opcode, &fd, &offset, &buffers, &flags))
        return NULL;
    if (check_rw(opcode, fd, offset) < 0)
        return NULL;
    Req *req = req_build(Py_None, buffers, opcode == OP_READV);
    if (req == NULL)
        return NULL;
    int err = 0, res = 0, lost = 0;
    Private *p = NULL;
    Py_BEGIN_ALLOW_THREADS
    p = private_get(self, &err);
    if (p != NULL) {
        struct io_uring_sqe *sqe = io_uring_get_sqe(&p->ring); /* an idle ring has room */
        prep_rw(sqe, opcode, fd, req->iov, (unsigned)req->nbufs, offset, flags);
        int ret = private_submit(p);
        struct io_uring_cqe *cqe = NULL;
        if (ret == 0)
            ret = private_wait(p, &cqe);
        if (ret == 0) {
            res = cqe->res;
            io_uring_cqe_seen(&p->ring, cqe);
            private_put(self, p, 0);
        } else if (io_uring_sq_ready(&p->ring)) {
            err = -ret; /* never submitted: the ring goes, with it the SQE */
            private_put(self, p, 1);
        } else {
            err = -ret; /* in flight and cannot be waited for: never free its memory */
            lost = 1;
        }
    }
    Py_END_ALLOW_THREADS
    if (lost)
        return errno_errorf(err, "io_uring_wait_cqe (the request's buffers are kept)");
    req_free(req);
    if (err)
        return private_error(err, p == NULL);
    return PyLong_FromLong(res);
}

typedef struct {
    long long offset;
    Py_buffer buf;
    struct iovec iov;
    int res;
} Item;

static void
items_free(Item *items, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++)
        PyBuffer_Release(&items[i].buf);
    PyMem_Free(items);
}

/* Take the (offset, buffer) pairs of ``seq`` (GIL held); NULL with an exception. */
static Item *
items_build(PyObject *seq, int writable, Py_ssize_t *count)
{
    PyObject *fast = PySequence_Fast(seq, "items must be a sequence of (offset, buffer)");
    if (fast == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    Item *items = PyMem_Calloc(n ? (size_t)n : 1, sizeof(Item));
    if (items == NULL) {
        Py_DECREF(fast);
        PyErr_NoMemory();
        return NULL;
    }
    PyObject **objs = PySequence_Fast_ITEMS(fast);
    Py_ssize_t held = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *buffer;
        if (!PyTuple_Check(objs[i]) ||
            !PyArg_ParseTuple(objs[i], "LO:an item of rw_batch", &items[i].offset, &buffer)) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_TypeError, "items must be (offset, buffer) tuples");
            goto fail;
        }
        if (items[i].offset < 0) {
            PyErr_Format(PyExc_ValueError, "offset must be >= 0, not %lld", items[i].offset);
            goto fail;
        }
        int flags = PyBUF_C_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0);
        if (PyObject_GetBuffer(buffer, &items[i].buf, flags) < 0)
            goto fail;
        held = i + 1;
        items[i].iov.iov_base = items[i].buf.buf;
        items[i].iov.iov_len = (size_t)items[i].buf.len;
    }
    Py_DECREF(fast);
    *count = n;
    return items;
fail:
    Py_DECREF(fast);
    items_free(items, held);
    return NULL;
}

/* Run the ``n`` items on a private ring, up to ``depth`` in flight, each refill and
 * reap in one io_uring_submit_and_wait; each item's res is set (GIL released).
 * Returns the ring used (already given back, unless *lost), or NULL when none
 * could be had (*err: private_get's).  *lost: a wait failed with SQEs in flight
 * (their buffers must stay held; the ring is kept out of the pool). */
static Private *
batch_run(Ring *self, int opcode, int fd, Item *items, Py_ssize_t n, unsigned flags, int depth,
          int *err_out, int *lost_out)
{
    int err = 0, discard = 0;
    Private *p = private_get(self, &err);
    if (p == NULL) {
        *err_out = err;
        return NULL;
    }
    Py_ssize_t next = 0, done = 0;
    long inflight = 0;
    while (done < n) {
        /* each SQE in its own io_uring_enter, as fio does: submitted together, the
         * block layer plugs them and the device gets them in bursts (a virtio disk
         * here: 0.82x of fio for batches of 256 submitted by refill, 1.00x one by
         * one, in C, A/B against fio in one run) */
        while (!err && next < n && inflight < depth) {
            struct io_uring_sqe *sqe = io_uring_get_sqe(&p->ring);
            if (sqe == NULL)
                break;
            prep_rw(sqe, opcode, fd, &items[next].iov, 1, items[next].offset, flags);
            io_uring_sqe_set_data64(sqe, (__u64)next);
            next++;
            int ret = private_submit_wait(p, 0);
            if (ret < 0) {
                /* this SQE was never submitted, so never executed (the ring is
                 * discarded): it and the items not yet queued fail with the error */
                err = -ret;
                discard = 1;
                for (Py_ssize_t i = next - 1; i < n; i++)
                    items[i].res = -err;
                done += n - (next - 1);
                next = n;
                break;
            }
            inflight++;
        }
        if (inflight == 0)
            continue;
        struct io_uring_cqe *cqe;
        int ret = private_wait(p, &cqe);
        if (ret < 0) {
            *err_out = -ret;
            *lost_out = 1;
            return p;
        }
        struct io_uring_cqe *cqes[REAP_BATCH];
        unsigned got = io_uring_peek_batch_cqe(&p->ring, cqes, REAP_BATCH);
        for (unsigned i = 0; i < got; i++)
            items[io_uring_cqe_get_data64(cqes[i])].res = cqes[i]->res;
        io_uring_cq_advance(&p->ring, got);
        inflight -= (long)got;
        done += got;
    }
    private_put(self, p, discard);
    return p;
}

static PyObject *
ring_rw_batch(Ring *self, PyObject *args)
{
    PyObject *seq;
    int opcode, fd, depth;
    unsigned int flags;
    if (!PyArg_ParseTuple(args, "iiOIi:rw_batch", &opcode, &fd, &seq, &flags, &depth))
        return NULL;
    if (check_rw(opcode, fd, 0) < 0)
        return NULL;
    if (depth < 1)
        return PyErr_Format(PyExc_ValueError, "depth must be >= 1, not %d", depth);
    if ((unsigned)depth > self->entries)
        depth = (int)self->entries;
    Py_ssize_t n = 0;
    Item *items = items_build(seq, opcode == OP_READV, &n);
    if (items == NULL)
        return NULL;
    int err = 0, lost = 0;
    Private *p = NULL;
    Py_BEGIN_ALLOW_THREADS
    p = n ? batch_run(self, opcode, fd, items, n, flags, depth, &err, &lost) : NULL;
    Py_END_ALLOW_THREADS
    if (lost)
        return errno_errorf(err, "io_uring_wait_cqe (the requests' buffers are kept)");
    PyObject *out = NULL;
    if (n == 0 || p != NULL) {
        out = PyList_New(n);
        for (Py_ssize_t i = 0; out != NULL && i < n; i++) {
            PyObject *res = PyLong_FromLong(items[i].res);
            if (res == NULL)
                Py_CLEAR(out);
            else
                PyList_SET_ITEM(out, i, res);
        }
    } else {
        private_error(err, 1);
    }
    items_free(items, n);
    return out;
}

/* Wait for every request in flight and free it (GIL held; used by close on dealloc). */
static void
ring_drain(Ring *self)
{
    while (self->inflight > 0) {
        struct io_uring_cqe *cqe;
        int ret = 0;
        Py_BEGIN_ALLOW_THREADS
        if (io_uring_sq_ready(&self->ring))
            ret = shared_flush(self); /* deferred SQEs: submitted, so that they complete */
        if (ret == 0)
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
        pthread_mutex_lock(&self->pool_lock);
        busy = self->inflight != 0 || self->reaping || self->private_out != 0;
        if (!busy) {
            io_uring_queue_exit(&self->ring);
            self->ready = 0;
            private_free_pool(self);
        }
        pthread_mutex_unlock(&self->pool_lock);
        pthread_mutex_unlock(&self->sq_lock);
        pthread_mutex_unlock(&self->cq_lock);
    }
    Py_END_ALLOW_THREADS
    if (busy)
        return errno_error(EBUSY, "the io_uring has requests in flight, a waiting reap() or "
                                  "a synchronous call (rw, rw_batch) running");
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
        {IORING_OP_READ, "READ"},
        {IORING_OP_WRITE, "WRITE"},
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
    private_free_pool(self); /* none is out: each call holds a reference to the Ring */
    pthread_mutex_destroy(&self->sq_lock);
    pthread_mutex_destroy(&self->cq_lock);
    pthread_mutex_destroy(&self->pool_lock);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef ring_methods[] = {
    {"submit", (PyCFunction)ring_submit, METH_VARARGS,
     "submit(token, opcode, fd, offset, buffers, length, flags, defer=False): start one "
     "request (deferred: queued, submitted by the next submit or reap)"},
    {"flush", (PyCFunction)ring_flush, METH_NOARGS,
     "flush(): submit the deferred requests (GIL released)"},
    {"reap", (PyCFunction)ring_reap, METH_NOARGS,
     "reap() -> [(token, res)]: wait for at least one completion (GIL released)"},
    {"rw", (PyCFunction)ring_rw, METH_VARARGS,
     "rw(opcode, fd, offset, buffers, flags) -> res: one READV/WRITEV on a private ring, "
     "submitted and waited for in one system call (GIL released)"},
    {"rw_batch", (PyCFunction)ring_rw_batch, METH_VARARGS,
     "rw_batch(opcode, fd, [(offset, buffer), ...], flags, depth) -> [res]: many on a "
     "private ring, up to depth in flight (GIL released)"},
    {"close", (PyCFunction)ring_close, METH_NOARGS, "release the ring (EBUSY if in use)"},
    {"unsupported", (PyCFunction)ring_unsupported, METH_NOARGS,
     "the opcodes daxfs needs that this kernel's io_uring lacks"},
    {NULL, NULL, 0, NULL},
};

static PyObject *
ring_get_private(Ring *self, void *closure)
{
    long made;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&self->pool_lock);
    made = self->private_made;
    pthread_mutex_unlock(&self->pool_lock);
    Py_END_ALLOW_THREADS
    return PyLong_FromLong(made);
}

static PyObject *
ring_get_sync_calls(Ring *self, void *closure)
{
    long out;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&self->pool_lock);
    out = self->private_out;
    pthread_mutex_unlock(&self->pool_lock);
    Py_END_ALLOW_THREADS
    return PyLong_FromLong(out);
}

static PyObject *
ring_get_private_flags(Ring *self, void *closure)
{
    return PyLong_FromUnsignedLong(self->private_flags);
}

static PyGetSetDef ring_getset[] = {
    {"private_flags", (getter)ring_get_private_flags, NULL,
     "the io_uring_setup flags of the last private ring set up (0 before any)", NULL},
    {"sync_calls", (getter)ring_get_sync_calls, NULL,
     "rw / rw_batch calls holding a private ring now", NULL},
    {"private_rings", (getter)ring_get_private, NULL,
     "private rings set up (pooled or in use by rw / rw_batch)", NULL},
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

/* -- Fast: the block device's synchronous fast path, checks and I/O in one call ------ */

/* A FileBlockDevice's plain requests (daxfs.block.file): the checks its Python
 * ``_plain`` makes (an int offset, a 1-D byte buffer, C-contiguous, writable for
 * a read; length and offset multiples of the logical block size, 0 < length <=
 * max_bytes, within the device; address and length multiples of dma_alignment)
 * and the I/O on one of the Ring's private rings, in one call with the GIL
 * released while waiting.  Anything else returns None before any I/O: the
 * caller takes its reference path, which raises the right error.
 *
 *   read(fd, offset, buffer) / write(fd, offset, data, rw_flags)
 *       -> int (all the bytes) | None | (res, size)
 *   read_many(fd, [(offset, buffer), ...])
 *       -> [int] (all the bytes of each) | None | (res, res, ...)
 *
 * A tuple means the I/O ran and something fell short (res < size: a short
 * transfer, or -errno): the call still counts as busy until the caller has
 * finished it (continued, named the error) and called release().  ``count``
 * is the requests the fast path took; ``busy`` the calls between their checks
 * and their end; shutdown() refuses new calls (None: the caller's path says
 * EBADF) and waits for ``busy`` to reach 0.  Both change with the GIL held. */
typedef struct {
    PyObject_HEAD
    Ring *ring;
    long long lbs_mask;   /* logical block size - 1 */
    long long max_bytes;
    long long dma_mask;   /* dma alignment - 1; 0 without O_DIRECT */
    long long size;       /* the device's bytes */
    int readonly;
    int depth;            /* reads in flight for read_many */
    int closed;
    long busy;
    unsigned long long count;
} Fast;

static int
fast_init(Fast *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"ring", "logical_block_size", "max_bytes", "dma_alignment",
                             "size", "readonly", "depth", NULL};
    PyObject *ring;
    long long lbs, max_bytes, dma, size;
    int readonly, depth;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!LLLLpi:Fast", kwlist, &RingType, &ring,
                                     &lbs, &max_bytes, &dma, &size, &readonly, &depth))
        return -1;
    if (lbs < 1 || (lbs & (lbs - 1)) || dma < 1 || (dma & (dma - 1)) || max_bytes < lbs ||
        size < 0 || depth < 1) {
        PyErr_SetString(PyExc_ValueError,
                        "Fast: block size and alignment powers of two, max_bytes >= the "
                        "block size, size >= 0, depth >= 1");
        return -1;
    }
    Py_XSETREF(self->ring, (Ring *)Py_NewRef(ring));
    self->lbs_mask = lbs - 1;
    self->max_bytes = max_bytes > (long long)INT_MAX ? (long long)INT_MAX : max_bytes;
    self->dma_mask = dma - 1;
    self->size = size;
    self->readonly = readonly;
    self->depth = depth > (int)((Ring *)ring)->entries ? (int)((Ring *)ring)->entries : depth;
    return 0;
}

static void
fast_dealloc(Fast *self)
{
    Py_XDECREF(self->ring);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Take ``buffer`` as a plain request at ``offset`` (GIL held): 1 and the view
 * held, or 0 (not plain: nothing held, no exception). */
static int
fast_take(Fast *self, PyObject *offset_obj, PyObject *buffer, int write, long long *offset,
          Py_buffer *view)
{
    if (!PyLong_CheckExact(offset_obj))
        return 0;
    int overflow = 0;
    *offset = PyLong_AsLongLongAndOverflow(offset_obj, &overflow);
    if (overflow || *offset < 0)
        return 0;
    if (PyObject_GetBuffer(buffer, view, write ? PyBUF_RECORDS_RO : PyBUF_RECORDS) < 0) {
        PyErr_Clear(); /* the reference path raises the right error */
        return 0;
    }
    long long n = (long long)view->len;
    if (view->ndim != 1 || (view->format != NULL && strcmp(view->format, "B") != 0) ||
        !PyBuffer_IsContiguous(view, 'C') || n <= 0 || n > self->max_bytes ||
        ((*offset | n) & self->lbs_mask) || *offset > self->size - n ||
        (((uintptr_t)view->buf | (uintptr_t)n) & (uintptr_t)self->dma_mask)) {
        PyBuffer_Release(view);
        return 0;
    }
    return 1;
}

/* One READ or WRITE of ``view`` on a private ring (GIL released): the CQE's res,
 * or -errno when no ring could be had or the SQE could not be submitted.  *lost:
 * in flight and cannot be waited for (the buffer must stay held). */
static int
fast_one(Ring *ring, int opcode, int fd, void *buf, size_t len, long long offset,
         unsigned flags, int *lost)
{
    int err = 0;
    Private *p = private_get(ring, &err);
    if (p == NULL)
        return -err;
    struct iovec iov = {buf, len};
    struct io_uring_sqe *sqe = io_uring_get_sqe(&p->ring); /* an idle ring has room */
    prep_rw(sqe, opcode, fd, &iov, 1, offset, flags);
    int ret = private_submit(p);
    if (ret < 0) {
        if (io_uring_sq_ready(&p->ring)) {
            private_put(ring, p, 1); /* never submitted: the ring goes, with it the SQE */
            return ret;
        }
        *lost = 1;
        return ret;
    }
    struct io_uring_cqe *cqe = NULL;
    ret = private_wait(p, &cqe);
    if (ret < 0) {
        *lost = 1; /* in flight and cannot be waited for: never free its memory */
        return ret;
    }
    int res = cqe->res;
    io_uring_cqe_seen(&p->ring, cqe);
    private_put(ring, p, 0);
    return res;
}

/* A file descriptor argument: an int in int's range (-1 with an exception). */
static int
fd_of(PyObject *obj)
{
    long fd = PyLong_AsLong(obj);
    if (fd == -1 && PyErr_Occurred())
        return -1;
    if (fd < INT_MIN || fd > INT_MAX) {
        PyErr_SetString(PyExc_OverflowError, "fd out of range");
        return -1;
    }
    return (int)fd;
}

static PyObject *
fast_rw(Fast *self, int write, int fd, PyObject *offset_obj, PyObject *buffer, unsigned flags)
{
    long long offset;
    Py_buffer view;
    if (self->closed || fd < 0 || (write && self->readonly) ||
        !fast_take(self, offset_obj, buffer, write, &offset, &view))
        Py_RETURN_NONE;
    self->busy++;
    self->count++;
    int lost = 0, res;
    Ring *ring = self->ring;
    Py_BEGIN_ALLOW_THREADS
    res = fast_one(ring, write ? OP_WRITEV : OP_READV, fd, view.buf, (size_t)view.len, offset,
                   flags, &lost);
    Py_END_ALLOW_THREADS
    if (lost) {
        self->busy--;
        return errno_errorf(-res, "io_uring_wait_cqe (the request's buffer is kept)");
    }
    Py_ssize_t size = view.len;
    PyBuffer_Release(&view);
    if (res == size) {
        self->busy--;
        return PyLong_FromSsize_t(size);
    }
    PyObject *out = Py_BuildValue("(in)", res, size);
    if (out == NULL)
        self->busy--;
    return out;
}

static PyObject *
fast_read(Fast *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3)
        return PyErr_Format(PyExc_TypeError, "read(fd, offset, buffer) takes 3 arguments");
    int fd = fd_of(args[0]);
    if (fd == -1 && PyErr_Occurred())
        return NULL;
    return fast_rw(self, 0, fd, args[1], args[2], 0);
}

static PyObject *
fast_write(Fast *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4)
        return PyErr_Format(PyExc_TypeError,
                            "write(fd, offset, data, rw_flags) takes 4 arguments");
    int fd = fd_of(args[0]);
    if (fd == -1 && PyErr_Occurred())
        return NULL;
    unsigned long flags = PyLong_AsUnsignedLong(args[3]);
    if (flags == (unsigned long)-1 && PyErr_Occurred())
        return NULL;
    return fast_rw(self, 1, fd, args[1], args[2], (unsigned)flags);
}

static PyObject *
fast_read_many(Fast *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2)
        return PyErr_Format(PyExc_TypeError, "read_many(fd, items) takes 2 arguments");
    int fd = fd_of(args[0]);
    if (fd == -1 && PyErr_Occurred())
        return NULL;
    if (self->closed || fd < 0 || !PyList_CheckExact(args[1]))
        Py_RETURN_NONE;
    PyObject *seq = args[1];
    Py_ssize_t n = PyList_GET_SIZE(seq);
    if (n == 0)
        Py_RETURN_NONE;
    Item *items = PyMem_Calloc((size_t)n, sizeof(Item));
    if (items == NULL)
        return PyErr_NoMemory();
    Py_ssize_t held = 0;
    for (; held < n; held++) {
        PyObject *pair = PyList_GET_ITEM(seq, held);
        if (!PyTuple_CheckExact(pair) || PyTuple_GET_SIZE(pair) != 2 ||
            !fast_take(self, PyTuple_GET_ITEM(pair, 0), PyTuple_GET_ITEM(pair, 1), 0,
                       &items[held].offset, &items[held].buf))
            break;
        items[held].iov.iov_base = items[held].buf.buf;
        items[held].iov.iov_len = (size_t)items[held].buf.len;
    }
    if (held < n) {
        items_free(items, held);
        Py_RETURN_NONE;
    }
    self->busy++;
    self->count += (unsigned long long)n;
    int err = 0, lost = 0;
    Private *p;
    Ring *ring = self->ring;
    int depth = self->depth;
    Py_BEGIN_ALLOW_THREADS
    p = batch_run(ring, OP_READV, fd, items, n, 0, depth, &err, &lost);
    Py_END_ALLOW_THREADS
    if (lost) {
        self->busy--;
        return errno_errorf(err, "io_uring_wait_cqe (the requests' buffers are kept)");
    }
    int full = 1;
    if (p == NULL) { /* no private ring: every item fails with the error */
        for (Py_ssize_t i = 0; i < n; i++)
            items[i].res = -err;
    }
    for (Py_ssize_t i = 0; i < n && full; i++)
        full = items[i].res == (int)items[i].buf.len;
    PyObject *out = full ? PyList_New(n) : PyTuple_New(n);
    for (Py_ssize_t i = 0; out != NULL && i < n; i++) {
        PyObject *res = PyLong_FromLong(items[i].res);
        if (res == NULL)
            Py_CLEAR(out);
        else if (full)
            PyList_SET_ITEM(out, i, res);
        else
            PyTuple_SET_ITEM(out, i, res);
    }
    items_free(items, n);
    if (full || out == NULL)
        self->busy--;
    return out;
}

static PyObject *
fast_release(Fast *self, PyObject *Py_UNUSED(ignored))
{
    if (self->busy <= 0) {
        PyErr_SetString(PyExc_RuntimeError, "release() without a call to finish");
        return NULL;
    }
    self->busy--;
    Py_RETURN_NONE;
}

static PyObject *
fast_shutdown(Fast *self, PyObject *Py_UNUSED(ignored))
{
    self->closed = 1;
    while (self->busy > 0) { /* each ends in microseconds: poll, the GIL released */
        Py_BEGIN_ALLOW_THREADS
        usleep(200);
        Py_END_ALLOW_THREADS
    }
    Py_RETURN_NONE;
}

static PyObject *
fast_get_busy(Fast *self, void *closure)
{
    return PyLong_FromLong(self->busy);
}

static PyObject *
fast_get_count(Fast *self, void *closure)
{
    return PyLong_FromUnsignedLongLong(self->count);
}

static PyObject *
fast_get_closed(Fast *self, void *closure)
{
    return PyBool_FromLong(self->closed);
}

static PyMethodDef fast_methods[] = {
    {"read", (PyCFunction)(void (*)(void))fast_read, METH_FASTCALL,
     "read(fd, offset, buffer) -> int | None | (res, size)"},
    {"write", (PyCFunction)(void (*)(void))fast_write, METH_FASTCALL,
     "write(fd, offset, data, rw_flags) -> int | None | (res, size)"},
    {"read_many", (PyCFunction)(void (*)(void))fast_read_many, METH_FASTCALL,
     "read_many(fd, [(offset, buffer), ...]) -> [int] | None | (res, ...)"},
    {"release", (PyCFunction)fast_release, METH_NOARGS,
     "end a call that returned a tuple, once the caller finished it"},
    {"shutdown", (PyCFunction)fast_shutdown, METH_NOARGS,
     "refuse new calls (None) and wait for the busy ones"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef fast_getset[] = {
    {"busy", (getter)fast_get_busy, NULL, "calls not yet ended", NULL},
    {"count", (getter)fast_get_count, NULL, "requests the fast path took", NULL},
    {"closed", (getter)fast_get_closed, NULL, "shutdown() was called", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject FastType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "daxfs.block._uring.Fast",
    .tp_basicsize = sizeof(Fast),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A block device's synchronous fast path (see the comment in _uring.c).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)fast_init,
    .tp_dealloc = (destructor)fast_dealloc,
    .tp_methods = fast_methods,
    .tp_getset = fast_getset,
};

/* -- BioRing: a block device's asynchronous plain bios, submitted and completed in C -- */

/* The per-bio path of a FileBlockDevice (daxfs.block.file) for the common case:
 * ``submit_bio(bio)`` of a new READ or WRITE bio with one segment that needs no
 * split, bounce buffer, PREFLUSH or plug (the checks ``_plain`` makes, as Fast
 * does), and completion with no Python between the CQE and ``end_io``.
 *
 *   submit(fd, bio) -> True (taken: the bio completes later) | None (not plain,
 *       or closed: nothing done; the caller takes the reference path, which
 *       raises or fails the bio with the right error)
 *   serve()          the reaper: run by one thread ("daxfs-bio") until shutdown()
 *   shutdown()       refuse new bios (None), wait for those in flight
 *
 * A BioRing owns its own io_uring (``entries`` SQEs, 4x the CQEs) and its
 * reaper, apart from the engine's shared ring, so that none of the engine's
 * Python (slots, leader, tasks) runs per bio.  submit() takes a reference to
 * the bio and a Py_buffer of its segment, fills one READ or WRITE SQE
 * (RWF_DSYNC for FUA) and submits it -- with the GIL held: the GIL is the
 * lock of the submission queue and of every counter here (invariant B1).  The
 * reaper waits for CQEs with the GIL released, then, the GIL taken, ends each
 * bio: a whole transfer in C, as Bio._complete does (status None, the bytes,
 * state "done" under daxfs.block.bio's _FUTURE_LOCK, the Future resolved if
 * one was made, ``end_io(bio)`` called directly, the segments dropped);
 * anything else (short, -errno) by the device's Python ``failed(bio, res)``,
 * which continues or names the error as the bio path does.  Submissions are
 * batched when it is safe (``defer``): a bio that ``end_io`` submits on the
 * reaper is queued and submitted with the reaper's next wait; another
 * thread's is queued only while half of ``entries`` are submitted and in
 * flight (a CQE will soon wake the reaper, which submits before it waits),
 * else submitted at once; the reaper also submits what it queued every
 * ``batch`` (entries/8) bios it ends, so that the device is not left short
 * while a long batch of CQEs is ended.  One system call and one doorbell of
 * the device for several SQEs: on this VM a doorbell (a VM exit) is the
 * largest cost of a submission.  The reaper never waits for a slot (it alone frees them: the
 * CQ ring, 4x the entries, holds the overflow); any other thread waits (GIL
 * released) while ``entries`` bios are in flight.
 *
 * Invariants
 *   B1. SQEs are filled and submitted, and ``inflight`` / ``closed`` change,
 *       only with the GIL held (and ``inflight`` / ``closed`` also under
 *       ``lock``, which the waits use with the GIL released).
 *   B2. A taken bio's reference and its segment's Py_buffer are held from
 *       submit until its CQE is reaped and the bio ended: the kernel never
 *       writes into memory Python has freed or resized.
 *   B3. Each taken bio is ended exactly once, by the leader that reaped its
 *       CQE (or by the reaper, B5), before ``inflight`` counts it out;
 *       shutdown() returns only when ``inflight`` is 0, so a device closes
 *       after every bio of this path has ended.
 *   B4. At most one thread reaps the CQ at a time: the leader (``leader``,
 *       taken and given up under ``lock``).  The reaper leads unless a thread
 *       waits for a bio of the ring (wait(): Bio.wait, LeanFuture.result
 *       without a timeout): that thread leads itself -- it sleeps in the kernel
 *       for its CQE, one sleep and wake-up per wait as fio's loop, where the
 *       reaper's wake-up and then the waiter's cost two -- and the reaper steps
 *       aside: after its batch when a thread waits for it (``want``), and it
 *       takes the lead again only once no thread has waited for ``lead_us``, or
 *       at once when work is left to it, a thread waits for a slot, SQEs are
 *       queued with no leader, or the ring closes.  A waiting leader waits in the
 *       kernel at most ``lead_us`` at a time (what it waits for may be ended
 *       elsewhere: by the bio path, by the fs worker) and steps down once what
 *       it waits for is done; others wait for its batches (``led``).  Needs a
 *       wait's timeout without an SQE (IORING_FEAT_EXT_ARG: B1); without it,
 *       ``lead`` is off and the reaper ends every bio.
 *   B5. A waiting leader ends only what runs none of its callers' code in its
 *       thread: a whole transfer whose end_io is None or declared with
 *       end_anywhere() (which must neither wait for a bio nor block on a lock),
 *       and whose Future has no done callback.  Anything else (an end_io, a
 *       callback, a CQE that fell short: ``failed``) goes on ``pending`` for the
 *       reaper, still counted in ``inflight``, and the waiter steps down and
 *       wakes the reaper; so end_io and done callbacks run on the reaper, as
 *       before, and a nested wait in them reaps nested there.
 */

/* The bits of daxfs.block.bio.BioFlags this path knows (FUA is taken by writes;
 * any other flag goes the reference path). */
#define BIO_FUA 0x1

typedef struct BioReq {
    PyObject *bio;      /* a reference (invariant B2) */
    Py_buffer view;     /* its one segment */
    int res;            /* the CQE's res, once reaped and left to the reaper (B5) */
    struct BioReq *next; /* the list of those */
} BioReq;

typedef struct {
    PyObject_HEAD
    struct io_uring ring;
    int ready;              /* io_uring set up, not yet exited */
    unsigned entries;
    long long lbs_mask, max_bytes, dma_mask, size;
    int readonly;
    int defer;              /* the reaper's own submissions wait for its next wait */
    int defer_others;       /* other threads' too, while half the entries are in flight */
    unsigned batch;         /* the reaper submits what is queued once it holds this many */
    unsigned rwf_dsync;     /* the rw_flags of a FUA write */
    PyObject *bio_type;     /* daxfs.block.bio.Bio */
    PyObject *op_read, *op_write;
    PyObject *future_lock;  /* daxfs.block.bio._FUTURE_LOCK */
    PyObject *failed;       /* failed(bio, res): Python ends a bio whose CQE fell short */
    PyObject *report;       /* report(bio, exc): end_io (or Bio._complete) raised */
    PyObject *start;        /* start(): starts the reaper thread (called once) */
    int started;
    /* under the GIL and ``lock`` (invariant B1) */
    long inflight;
    int closed;
    int idle_waiters;       /* threads in a wait on ``idle`` (a slot, or shutdown) */
    int reaper_sleeps;      /* the reaper waits on ``work`` */
    unsigned long leader;   /* PyThread ident of the reaper while it reaps, else 0 */
    unsigned long reaper;   /* PyThread ident of the reaper, 0 before serve() */
    unsigned long long count;
    /* the waiters that lead (B4, B5): under the GIL and ``lock`` */
    int lead;               /* a thread waiting for a bio of this ring may reap for it */
    int ext_arg;            /* the kernel takes a wait's timeout without an SQE */
    long lead_us;           /* a leading waiter looks again after this long in the kernel;
                             * the reaper takes the lead after this long with none */
    int want;               /* waiting threads that wait for the leader's next batch */
    unsigned long long batches;       /* batches ended (and leaders stepped down) */
    unsigned long long caller_leads;  /* leads taken by waiting threads */
    unsigned long long caller_waits;  /* waits of those threads for a bio not done */
    unsigned long long caller_ends;   /* bios ended by waiting threads */
    BioReq *pending, *pending_tail;   /* CQEs a waiting leader left to the reaper (B5) */
    long npending;
    PyObject *anywhere;     /* a tuple of the end_io callables any leader may call */
    pthread_mutex_t lock;
    pthread_cond_t work;    /* the reaper: a bio in flight, work left to it, or shutdown */
    pthread_cond_t idle;    /* a slot freed, or nothing left in flight */
    pthread_cond_t led;     /* a leader ended a batch, or stepped down */
} BioRing;

static PyObject *str_op, *str_flags, *str_sector, *str_segments, *str_state, *str_future,
    *str_value, *str_status, *str_end_io, *str_set_result, *str_new, *str_submitted,
    *str_done, *str_acquire, *str_release, *str_waiter, *str_finished, *str_cancelled,
    *str_cancelled_notified, *str_cbs;

static int
bioring_init(BioRing *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"entries", "logical_block_size", "max_bytes", "dma_alignment",
                             "size", "readonly", "bio_type", "op_read", "op_write",
                             "future_lock", "failed", "report", "start", "rwf_dsync",
                             "defer", NULL};
    int entries, readonly, defer;
    long long lbs, max_bytes, dma, size;
    PyObject *bio_type, *op_read, *op_write, *future_lock, *failed, *report, *start;
    unsigned int rwf_dsync;
    if (self->ready)
        return errno_error(EBUSY, "the BioRing is already set up"), -1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iLLLLpO!OOOOOOIp:BioRing", kwlist, &entries,
                                     &lbs, &max_bytes, &dma, &size, &readonly, &PyType_Type,
                                     &bio_type, &op_read, &op_write, &future_lock, &failed,
                                     &report, &start, &rwf_dsync, &defer))
        return -1;
    if (entries < 1 || entries > MAX_ENTRIES || lbs < 1 || (lbs & (lbs - 1)) || dma < 1 ||
        (dma & (dma - 1)) || max_bytes < lbs || size < 0) {
        PyErr_SetString(PyExc_ValueError,
                        "BioRing: entries in 1..MAX_ENTRIES, block size and alignment powers "
                        "of two, max_bytes >= the block size, size >= 0");
        return -1;
    }
    if (!PyCallable_Check(failed) || !PyCallable_Check(report) || !PyCallable_Check(start)) {
        PyErr_SetString(PyExc_TypeError, "BioRing: failed, report and start must be callable");
        return -1;
    }
    struct io_uring_params params;
    memset(&params, 0, sizeof params);
    params.flags = IORING_SETUP_CQSIZE; /* room for the reaper's own submissions */
    params.cq_entries = 4 * (unsigned)entries;
    int ret;
    Py_BEGIN_ALLOW_THREADS
    ret = (params.flags & refused_flags) ? -EINVAL
                                         : io_uring_queue_init_params((unsigned)entries,
                                                                      &self->ring, &params);
    Py_END_ALLOW_THREADS
    if (ret < 0)
        return errno_errorf(-ret, "io_uring_setup"), -1;
    self->ready = 1;
    self->ext_arg = (self->ring.features & IORING_FEAT_EXT_ARG) != 0;
    self->lead = self->ext_arg; /* (without it a timed wait would need an SQE: B1) */
    self->lead_us = 1000;
    self->anywhere = PyTuple_New(0);
    if (self->anywhere == NULL)
        return -1;
    self->entries = (unsigned)entries;
    self->lbs_mask = lbs - 1;
    self->max_bytes = max_bytes > (long long)INT_MAX ? (long long)INT_MAX : max_bytes;
    self->dma_mask = dma - 1;
    self->size = size;
    self->readonly = readonly;
    self->defer = defer;
    self->defer_others = defer;
    /* a flush every entries/8 ended bios: A/B on this VM, QD32 end_io chain (9 passes
     * interleaved): against one flush per batch of CQEs 1.38x (every 2), 1.44x (every
     * 4), 1.37x (every bio, no deferral); 0.91-0.93x of fio for 2..4 */
    self->batch = entries >= 16 ? (unsigned)entries / 8 : 1;
    self->rwf_dsync = rwf_dsync;
    self->bio_type = Py_NewRef(bio_type);
    self->op_read = Py_NewRef(op_read);
    self->op_write = Py_NewRef(op_write);
    self->future_lock = Py_NewRef(future_lock);
    self->failed = Py_NewRef(failed);
    self->report = Py_NewRef(report);
    self->start = Py_NewRef(start);
    return 0;
}

static PyObject *
bioring_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    BioRing *self = (BioRing *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    pthread_mutex_init(&self->lock, NULL);
    pthread_condattr_t attr; /* the reaper's timed waits: on the monotonic clock */
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&self->work, &attr);
    pthread_condattr_destroy(&attr);
    pthread_cond_init(&self->idle, NULL);
    pthread_cond_init(&self->led, NULL);
    return (PyObject *)self;
}

/* Is the current thread the reaper, reaping (it frees slots: it never waits for one;
 * its end_io's submissions are deferred)?  (GIL held) */
static int
bioring_on_reaper(BioRing *self)
{
    return self->leader != 0 && self->leader == PyThread_get_thread_ident();
}

/* May the SQE just queued wait for the reaper's next wait (one system call, one
 * doorbell of the device, for a batch)?  On the reaper with ``defer``, always: it
 * submits before it waits.  On another thread with ``defer_others``, only while at
 * least half of ``entries`` are submitted and in flight: a CQE will come soon and
 * wake the reaper, which submits before it waits again (GIL held). */
static int
bioring_defers(BioRing *self)
{
    if (bioring_on_reaper(self))
        return self->defer;
    /* no leader, and the reaper idle: no one would submit it soon (with the reaper
     * looking again within lead_us, waiting threads leading meanwhile, one will) */
    if (!self->defer_others || (self->leader == 0 && self->reaper_sleeps != 2))
        return 0;
    long submitted = self->inflight - (long)io_uring_sq_ready(&self->ring);
    return 2 * submitted >= (long)self->entries;
}

/* Submit what is queued (GIL held: invariant B1); 0 or -errno.  An SQE the kernel
 * did not take stays queued: the next submission or the reaper's wait takes it. */
static int
bioring_flush(BioRing *self)
{
    int ret = 0;
    for (int tries = 0; io_uring_sq_ready(&self->ring) && tries <= 1000; tries++) {
        ret = io_uring_submit(&self->ring);
        if (ret >= 0 && io_uring_sq_ready(&self->ring) == 0)
            return 0;
        if (ret < 0 && !(ret == -EINTR || ret == -EAGAIN || ret == -EBUSY))
            return ret;
        sched_yield(); /* the kernel is short of resources for a moment */
    }
    return ret < 0 ? ret : 0;
}

/* The plain-request checks of Fast (fast_take) on a bio's fields (GIL held): 1 with
 * the segment's view held and *offset, *write, *rw_flags set, or 0 (not plain:
 * nothing held, no exception), or -1 (an exception). */
static int
bioring_take(BioRing *self, PyObject *bio, long long *offset, int *write, unsigned *rw_flags,
             Py_buffer *view)
{
    if (!PyObject_TypeCheck(bio, (PyTypeObject *)self->bio_type))
        return 0;
    int ok = 0;
    PyObject *state = NULL, *op = NULL, *flags = NULL, *sector = NULL, *segs = NULL;
    if ((state = PyObject_GetAttr(bio, str_state)) == NULL)
        goto error;
    if (state != str_new && !(PyUnicode_Check(state) && PyUnicode_Compare(state, str_new) == 0))
        goto done; /* submitted before: the reference path raises */
    if ((op = PyObject_GetAttr(bio, str_op)) == NULL)
        goto error;
    if (op == self->op_read)
        *write = 0;
    else if (op == self->op_write)
        *write = 1;
    else
        goto done;
    if (*write && self->readonly)
        goto done;
    if ((flags = PyObject_GetAttr(bio, str_flags)) == NULL)
        goto error;
    long f = PyLong_Check(flags) ? PyLong_AsLong(flags) : -1;
    if (f == -1 && PyErr_Occurred())
        PyErr_Clear();
    if (f == 0)
        *rw_flags = 0;
    else if (f == BIO_FUA && *write)
        *rw_flags = self->rwf_dsync;
    else
        goto done;
    if ((sector = PyObject_GetAttr(bio, str_sector)) == NULL)
        goto error;
    if (!PyLong_CheckExact(sector))
        goto done;
    int overflow = 0;
    long long s = PyLong_AsLongLongAndOverflow(sector, &overflow);
    if (overflow || s < 0 || s > (LLONG_MAX >> 9))
        goto done;
    *offset = s << 9;
    if ((segs = PyObject_GetAttr(bio, str_segments)) == NULL)
        goto error;
    if (!PyList_CheckExact(segs) || PyList_GET_SIZE(segs) != 1)
        goto done;
    if (PyObject_GetBuffer(PyList_GET_ITEM(segs, 0), view,
                           *write ? PyBUF_RECORDS_RO : PyBUF_RECORDS) < 0) {
        PyErr_Clear(); /* the reference path raises the right error */
        goto done;
    }
    long long n = (long long)view->len;
    if (view->ndim != 1 || (view->format != NULL && strcmp(view->format, "B") != 0) ||
        !PyBuffer_IsContiguous(view, 'C') || n <= 0 || n > self->max_bytes ||
        ((*offset | n) & self->lbs_mask) || *offset > self->size - n ||
        (((uintptr_t)view->buf | (uintptr_t)n) & (uintptr_t)self->dma_mask)) {
        PyBuffer_Release(view);
        goto done;
    }
    ok = 1;
    goto done;
error:
    ok = -1;
done:
    Py_XDECREF(state);
    Py_XDECREF(op);
    Py_XDECREF(flags);
    Py_XDECREF(sector);
    Py_XDECREF(segs);
    return ok;
}

static PyObject *
bioring_submit(BioRing *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2)
        return PyErr_Format(PyExc_TypeError, "submit(fd, bio) takes 2 arguments");
    int fd = fd_of(args[0]);
    if (fd == -1 && PyErr_Occurred())
        return NULL;
    PyObject *bio = args[1];
    if (self->closed || !self->ready || fd < 0)
        Py_RETURN_NONE;
    long long offset;
    int write;
    unsigned rw_flags;
    Py_buffer view;
    int took = bioring_take(self, bio, &offset, &write, &rw_flags, &view);
    if (took <= 0) {
        if (took < 0)
            return NULL;
        Py_RETURN_NONE;
    }
    /* the bio is ours from here: NEW -> SUBMITTED, as Bio._submitted() (first: the
     * waits below run other threads, which must see it submitted); given back
     * (NEW, and None returned) if it cannot go this way after all */
    if (PyObject_SetAttr(bio, str_state, str_submitted) < 0) {
        PyBuffer_Release(&view);
        return NULL;
    }
    /* bio.wait() from an end_io (on the reaper) reaps nested: BioRing.wait */
    if (PyObject_SetAttr(bio, str_waiter, (PyObject *)self) < 0) {
        PyErr_Clear(); /* (a Bio without the slot: its waits sleep instead) */
    } else { /* a Future made before the submission reaps nested too (its result()) */
        PyObject *future = PyObject_GetAttr(bio, str_future);
        if (future == NULL || (future != Py_None &&
                               PyObject_SetAttr(future, str_waiter, (PyObject *)self) < 0))
            PyErr_Clear(); /* (not a LeanFuture: its result() sleeps) */
        Py_XDECREF(future);
    }
    if (!self->started) { /* the reaper, the first time a bio needs one */
        self->started = 1;    /* (first: start() runs Python, another thread may come) */
        PyObject *r = PyObject_CallNoArgs(self->start);
        if (r == NULL) { /* no thread (resources): the bio path takes the bio */
            self->started = 0;
            PyErr_Clear();
            goto give_back;
        }
        Py_DECREF(r);
    }
    /* a slot: every thread but the reaper waits while ``entries`` are in flight */
    while (self->inflight >= (long)self->entries && !self->closed && !bioring_on_reaper(self)) {
        Py_BEGIN_ALLOW_THREADS
        pthread_mutex_lock(&self->lock);
        self->idle_waiters++;
        pthread_cond_signal(&self->work); /* someone must reap while this thread waits */
        while (self->inflight >= (long)self->entries && !self->closed)
            pthread_cond_wait(&self->idle, &self->lock);
        self->idle_waiters--;
        pthread_mutex_unlock(&self->lock);
        Py_END_ALLOW_THREADS
    }
    if (self->closed) /* closed while waiting: the reference path says EBADF */
        goto give_back;
    BioReq *req = PyMem_Malloc(sizeof *req);
    if (req == NULL)
        goto give_back; /* the bio path takes it (and may have the memory) */
    req->bio = Py_NewRef(bio);
    req->view = view;
    /* no Python runs from here to the submission: the GIL keeps the SQ ours (B1) */
    struct io_uring_sqe *sqe = io_uring_get_sqe(&self->ring);
    if (sqe == NULL) { /* full of deferred SQEs: submit them first */
        bioring_flush(self);
        sqe = io_uring_get_sqe(&self->ring);
    }
    if (sqe == NULL) { /* cannot happen while the kernel takes SQEs: the bio path */
        Py_DECREF(req->bio);
        PyMem_Free(req);
        goto give_back;
    }
    struct iovec iov = {view.buf, (size_t)view.len};
    prep_rw(sqe, write ? OP_WRITEV : OP_READV, fd, &iov, 1, offset, rw_flags);
    io_uring_sqe_set_data(sqe, req);
    pthread_mutex_lock(&self->lock);
    if (self->reaper_sleeps == 1) /* idle (else it looks again soon, or a waiter leads) */
        pthread_cond_signal(&self->work);
    self->inflight++;
    self->count++;
    pthread_mutex_unlock(&self->lock);
    if (!bioring_defers(self))
        bioring_flush(self); /* a failure leaves it queued for the reaper's wait */
    Py_RETURN_TRUE;
give_back:
    PyBuffer_Release(&view);
    if (PyObject_SetAttr(bio, str_state, str_new) < 0 ||
        PyObject_SetAttr(bio, str_waiter, Py_None) < 0)
        return NULL;
    { /* nor is this ring the waiter of a Future made before: the bio path ends it */
        PyObject *future = PyObject_GetAttr(bio, str_future);
        if (future == NULL)
            return NULL;
        int err = future != Py_None && PyObject_SetAttr(future, str_waiter, Py_None) < 0;
        Py_DECREF(future);
        if (err)
            PyErr_Clear(); /* (not a LeanFuture: it had no waiter) */
    }
    Py_RETURN_NONE;
}

/* ``report(bio, exc)`` of the exception raised (GIL held; clears it). */
static void
bioring_report(BioRing *self, PyObject *bio)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (value != NULL && tb != NULL)
        PyException_SetTraceback(value, tb);
    PyObject *r = PyObject_CallFunctionObjArgs(self->report, bio, value ? value : Py_None, NULL);
    if (r == NULL)
        PyErr_WriteUnraisable(self->report);
    Py_XDECREF(r);
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
}

/* LeanFuture (daxfs.block.future) resolved in C: set once by set_lean(). */
static PyObject *g_lean_lock, *g_lean_pending, *g_lean_running, *g_lean_finished;
static PyObject *str_cond_, *str_w_, *str_sleepers_, *str_result_, *str_exception_;

/* LeanFuture.set_result(value) of a future nobody watches through wait(),
 * as_completed or callbacks (no _cond, _w, _cbs): the transition under its _LOCK, the
 * sleepers' locks released (LeanFuture invariants 1 and 2), as _move/_set do.  1 done,
 * 0 not such a future or set_lean() not called (nothing changed: call set_result), -1. */
static int
lean_resolve(PyObject *future, PyObject *value)
{
    if (g_lean_lock == NULL)
        return 0;
    PyObject *r = PyObject_CallMethodNoArgs(g_lean_lock, str_acquire);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    int out = 0;
    PyObject *sleepers = NULL;
    PyObject *cond = PyObject_GetAttr(future, str_cond_), *w = PyObject_GetAttr(future, str_w_),
             *cbs = PyObject_GetAttr(future, str_cbs),
             *state = PyObject_GetAttr(future, str_state);
    if (cond == NULL || w == NULL || cbs == NULL || state == NULL) {
        PyErr_Clear(); /* (not a LeanFuture: the method) */
    } else if (cond == Py_None && w == Py_None && cbs == Py_None &&
               (state == g_lean_pending || state == g_lean_running)) {
        sleepers = PyObject_GetAttr(future, str_sleepers_);
        if (sleepers == NULL || PyObject_SetAttr(future, str_result_, value) < 0 ||
            PyObject_SetAttr(future, str_exception_, Py_None) < 0 ||
            PyObject_SetAttr(future, str_state, g_lean_finished) < 0 ||
            PyObject_SetAttr(future, str_sleepers_, Py_None) < 0)
            out = -1;
        else
            out = 1;
    }
    Py_XDECREF(cond);
    Py_XDECREF(w);
    Py_XDECREF(cbs);
    Py_XDECREF(state);
    r = PyObject_CallMethodNoArgs(g_lean_lock, str_release);
    if (r == NULL)
        out = -1;
    Py_XDECREF(r);
    if (out == 1 && sleepers != NULL && PyList_Check(sleepers)) {
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(sleepers); i++) {
            r = PyObject_CallMethodNoArgs(PyList_GET_ITEM(sleepers, i), str_release);
            if (r == NULL)
                out = -1;
            Py_XDECREF(r);
        }
    }
    Py_XDECREF(sleepers);
    return out;
}

/* set_lean(lock, (PENDING, RUNNING, FINISHED)): LeanFuture's _LOCK and the states, so
 * that the BioRing resolves a bio's LeanFuture in C (daxfs.block.file, at import). */
static PyObject *
uring_set_lean(PyObject *module, PyObject *args)
{
    PyObject *lock, *pending, *running, *finished;
    if (!PyArg_ParseTuple(args, "O(OOO):set_lean", &lock, &pending, &running, &finished))
        return NULL;
    Py_XSETREF(g_lean_pending, Py_NewRef(pending));
    Py_XSETREF(g_lean_running, Py_NewRef(running));
    Py_XSETREF(g_lean_finished, Py_NewRef(finished));
    Py_XSETREF(g_lean_lock, Py_NewRef(lock)); /* (last: lean_resolve tests it) */
    Py_RETURN_NONE;
}

/* End ``bio`` with ``size`` bytes done, as Bio._complete does (GIL held): status,
 * value and state under _FUTURE_LOCK (against ``Bio.future`` making one now), the
 * Future resolved if one was made, end_io called, the segments dropped. */
static void
bioring_end_whole(BioRing *self, PyObject *bio, Py_ssize_t size)
{
    PyObject *value = PyLong_FromSsize_t(size);
    if (value == NULL) {
        bioring_report(self, bio);
        return;
    }
    PyObject *r = PyObject_CallMethodNoArgs(self->future_lock, str_acquire);
    if (r == NULL) {
        Py_DECREF(value);
        bioring_report(self, bio);
        return;
    }
    Py_DECREF(r);
    PyObject *future = PyObject_GetAttr(bio, str_future);
    int ok = future != NULL && PyObject_SetAttr(bio, str_value, value) == 0 &&
             PyObject_SetAttr(bio, str_status, Py_None) == 0 &&
             PyObject_SetAttr(bio, str_state, str_done) == 0;
    r = PyObject_CallMethodNoArgs(self->future_lock, str_release);
    Py_XDECREF(r);
    if (!ok || r == NULL) {
        Py_XDECREF(future);
        Py_DECREF(value);
        bioring_report(self, bio);
        return;
    }
    if (future != Py_None) {
        int done = lean_resolve(future, value);
        if (done == 0) { /* watched, cancelled, or not a LeanFuture: the method */
            r = PyObject_CallMethodOneArg(future, str_set_result, value);
            done = r == NULL ? -1 : 1;
            Py_XDECREF(r);
        }
        if (done < 0)
            bioring_report(self, bio); /* (a Future cancelled by its caller) */
    }
    Py_DECREF(future);
    Py_DECREF(value);
    PyObject *end_io = PyObject_GetAttr(bio, str_end_io);
    if (end_io == NULL) {
        bioring_report(self, bio);
    } else {
        if (end_io != Py_None) {
            r = PyObject_CallOneArg(end_io, bio);
            if (r == NULL)
                bioring_report(self, bio);
            Py_XDECREF(r);
        }
        Py_DECREF(end_io);
    }
    PyObject *empty = PyList_New(0); /* the bio no longer holds the caller's memory */
    if (empty == NULL || PyObject_SetAttr(bio, str_segments, empty) < 0)
        bioring_report(self, bio);
    Py_XDECREF(empty);
}

/* End the request of one CQE and count it out (GIL held; invariant B3). */
static void
bioring_end(BioRing *self, BioReq *req, int res)
{
    Py_ssize_t size = req->view.len;
    PyBuffer_Release(&req->view);
    if (res == size) {
        bioring_end_whole(self, req->bio, size);
    } else { /* short or failed: the device's Python continues it or names the error */
        PyObject *r = PyObject_CallFunction(self->failed, "Oi", req->bio, res);
        if (r == NULL)
            bioring_report(self, req->bio);
        Py_XDECREF(r);
    }
    Py_DECREF(req->bio);
    PyMem_Free(req);
    pthread_mutex_lock(&self->lock);
    self->inflight--;
    if (self->idle_waiters)
        pthread_cond_broadcast(&self->idle);
    pthread_mutex_unlock(&self->lock);
}

/* May a waiting thread that leads end ``bio`` itself (B5; GIL held)?  Only when none of
 * its caller's code would run there: no end_io, or one of ``anywhere``; no done
 * callback on its Future.  Anything else is left to the reaper. */
static int
bioring_endable(BioRing *self, PyObject *bio)
{
    PyObject *end_io = PyObject_GetAttr(bio, str_end_io);
    if (end_io == NULL) {
        PyErr_Clear();
        return 0;
    }
    int ok = end_io == Py_None;
    for (Py_ssize_t i = 0; !ok && i < PyTuple_GET_SIZE(self->anywhere); i++)
        ok = PyTuple_GET_ITEM(self->anywhere, i) == end_io;
    Py_DECREF(end_io);
    if (!ok)
        return 0;
    PyObject *future = PyObject_GetAttr(bio, str_future);
    if (future == NULL) {
        PyErr_Clear();
        return 0;
    }
    if (future != Py_None) {
        PyObject *cbs = PyObject_GetAttr(future, str_cbs); /* a LeanFuture's callbacks */
        if (cbs == NULL)
            PyErr_Clear(); /* (not a LeanFuture) */
        ok = cbs != NULL && (cbs == Py_None || (PyList_Check(cbs) && PyList_GET_SIZE(cbs) == 0));
        Py_XDECREF(cbs);
    }
    Py_DECREF(future);
    return ok;
}

/* One batch as the leader (GIL held on entry and on return, released while waiting
 * in the kernel): submit what is queued, wait for CQEs, end each bio.  The reaper
 * (``caller`` 0) waits as long as it takes and ends every bio; a waiting thread
 * (``caller`` 1) looks again after ``lead_us`` (what it waits for may be ended
 * elsewhere) and leaves to the reaper what it may not end (bioring_endable, or a
 * CQE that fell short: B5).  Returns the number it left. */
static long
bioring_reap(BioRing *self, int caller)
{
    struct { BioReq *req; int res; } got[REAP_BATCH];
    int ret = bioring_flush(self); /* deferred SQEs: before the wait for them */
    unsigned n = 0;
    long left = 0;
    long lead_us = self->lead_us;
    Py_BEGIN_ALLOW_THREADS
    struct io_uring_cqe *cqe;
    if (ret == 0 && caller) {
        struct __kernel_timespec ts = {lead_us / 1000000, (lead_us % 1000000) * 1000};
        ret = io_uring_wait_cqes(&self->ring, &cqe, 1, &ts, NULL); /* (EXT_ARG: no SQE) */
    } else if (ret == 0) {
        ret = io_uring_wait_cqe(&self->ring, &cqe);
    }
    if (ret == 0) {
        struct io_uring_cqe *cqes[REAP_BATCH];
        n = io_uring_peek_batch_cqe(&self->ring, cqes, REAP_BATCH);
        for (unsigned i = 0; i < n; i++) {
            got[i].req = io_uring_cqe_get_data(cqes[i]);
            got[i].res = cqes[i]->res;
        }
        io_uring_cq_advance(&self->ring, n);
    } else if (ret != -EINTR && ret != -EAGAIN && ret != -ETIME) {
        usleep(1000); /* the kernel refused for now: again, never giving up a request */
    }
    Py_END_ALLOW_THREADS
    for (unsigned i = 0; i < n; i++) {
        BioReq *req = got[i].req;
        if (caller && (got[i].res != req->view.len || !bioring_endable(self, req->bio))) {
            req->res = got[i].res; /* the reaper's (B5) */
            req->next = NULL;
            pthread_mutex_lock(&self->lock);
            if (self->pending_tail != NULL)
                self->pending_tail->next = req;
            else
                self->pending = req;
            self->pending_tail = req;
            self->npending++;
            pthread_mutex_unlock(&self->lock);
            left++;
            continue;
        }
        if (caller)
            self->caller_ends++;
        bioring_end(self, req, got[i].res);
        if (io_uring_sq_ready(&self->ring) >= self->batch)
            bioring_flush(self); /* keep the device fed while the batch is ended */
    }
    return left;
}

/* The reaper ends what waiting leaders left to it (GIL held, on the reaper as leader). */
static void
bioring_end_pending(BioRing *self)
{
    while (self->pending != NULL) {
        pthread_mutex_lock(&self->lock);
        BioReq *req = self->pending;
        self->pending = req->next;
        if (self->pending == NULL)
            self->pending_tail = NULL;
        pthread_mutex_unlock(&self->lock);
        int res = req->res;
        bioring_end(self, req, res); /* (frees req) */
        pthread_mutex_lock(&self->lock);
        self->npending--;
        pthread_mutex_unlock(&self->lock);
    }
}

/* The reaper between leads (GIL held on entry and return, released inside): 1 when it
 * is to lead (``leader`` set to it), 0 when it is to stop (shut down, nothing in
 * flight).  It leads at once when work is left to it, when closed, when a thread
 * waits for a slot, or when no waiting thread took the lead since it last looked;
 * else it looks again every ``lead_us`` (``grace``: it just stepped aside for a
 * waiting thread, so it looks only after that long). */
static int
bioring_reaper_sleep(BioRing *self, int grace)
{
    unsigned long me = self->reaper;
    int lead = 0;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&self->lock);
    unsigned long long seen = self->caller_waits;
    for (;;) {
        if (self->closed && self->inflight == 0)
            break;
        int urgent = self->npending > 0 || self->closed || self->idle_waiters > 0;
        /* (SQEs queued with no leader: a waiting thread deferred them, the leader it
         * counted on stepped down; read without the GIL, a hint: looked at again) */
        if (self->leader == 0 && self->inflight > 0 &&
            (urgent ||
             (!grace && (seen == self->caller_waits || io_uring_sq_ready(&self->ring) > 0)))) {
            self->leader = me;
            lead = 1;
            break;
        }
        if (!grace && self->inflight == 0 && seen == self->caller_waits) {
            self->reaper_sleeps = 1; /* idle: the next submission wakes it */
            pthread_cond_wait(&self->work, &self->lock);
        } else {
            seen = self->caller_waits;
            grace = 0;
            self->reaper_sleeps = 2;
            long lead_us = self->lead_us;
            struct timespec until;
            clock_gettime(CLOCK_MONOTONIC, &until);
            until.tv_nsec += (lead_us % 1000000) * 1000;
            until.tv_sec += lead_us / 1000000 + until.tv_nsec / 1000000000;
            until.tv_nsec %= 1000000000;
            pthread_cond_timedwait(&self->work, &self->lock, &until);
        }
        self->reaper_sleeps = 0;
    }
    pthread_mutex_unlock(&self->lock);
    Py_END_ALLOW_THREADS
    return lead;
}

/* The reaper: ends bios as their CQEs come (and what waiting leaders left to it),
 * stepping aside while a thread waits for a bio of the ring (B4), until shutdown()
 * and nothing in flight. */
static PyObject *
bioring_serve(BioRing *self, PyObject *Py_UNUSED(ignored))
{
    if (self->reaper != 0)
        return PyErr_Format(PyExc_RuntimeError, "BioRing.serve() runs in one thread only");
    self->reaper = PyThread_get_thread_ident();
    int grace = 0;
    while (bioring_reaper_sleep(self, grace)) {
        for (;;) {
            bioring_end_pending(self);
            if (self->inflight > self->npending)
                bioring_reap(self, 0);
            pthread_mutex_lock(&self->lock);
            self->batches++;
            int yield = self->want > 0; /* a waiting thread leads next (B4) */
            int stop = yield || self->inflight == 0;
            if (stop)
                self->leader = 0;
            if (self->want > 0)
                pthread_cond_broadcast(&self->led);
            pthread_mutex_unlock(&self->lock);
            if (stop) {
                grace = yield;
                break;
            }
        }
    }
    self->reaper = 0;
    Py_RETURN_NONE;
}

/* 1 if ``bio`` is done, 0 if not, -1 with an exception (GIL held). */
static int
bioring_bio_done(PyObject *bio)
{
    PyObject *state = PyObject_GetAttr(bio, str_state);
    if (state == NULL)
        return -1;
    int done = 0;
    if (state == str_done || state == str_finished)
        done = 1;
    else if (PyUnicode_Check(state))
        done = PyUnicode_Compare(state, str_done) == 0 ||
               PyUnicode_Compare(state, str_finished) == 0 ||
               PyUnicode_Compare(state, str_cancelled) == 0 ||
               PyUnicode_Compare(state, str_cancelled_notified) == 0;
    Py_DECREF(state);
    return done;
}

/* A waiting thread's lead (B4; GIL held, not the leader): until ``obj`` is done,
 * reap for it while no one else leads, else wait for the leader's next batch; it
 * steps down as soon as ``obj`` is done, when nothing is left in the kernel, or
 * once it left a bio to the reaper (which it then wakes).  0, or -1 with an
 * exception.  The caller (Bio.wait, LeanFuture.result) sleeps afterwards if ``obj``
 * is still not done. */
static int
bioring_lead_for(BioRing *self, PyObject *obj)
{
    unsigned long me = PyThread_get_thread_ident();
    int done;
    for (;;) {
        if ((done = bioring_bio_done(obj)) != 0)
            return done < 0 ? -1 : 0;
        pthread_mutex_lock(&self->lock);
        self->caller_waits++; /* (the reaper keeps aside while this goes on) */
        if (self->leader == 0) {
            int take = self->inflight > self->npending;
            if (take) {
                self->leader = me;
                self->caller_leads++;
            }
            pthread_mutex_unlock(&self->lock);
            if (!take)
                return 0; /* nothing in the kernel: what it waits for is ended elsewhere */
            break;
        }
        unsigned long long batch = self->batches;
        self->want++;
        Py_BEGIN_ALLOW_THREADS /* (the GIL is never waited for with ``lock`` held) */
        while (self->leader != 0 && self->batches == batch)
            pthread_cond_wait(&self->led, &self->lock);
        self->want--;
        pthread_mutex_unlock(&self->lock);
        Py_END_ALLOW_THREADS
    }
    while ((done = bioring_bio_done(obj)) == 0 && self->inflight > self->npending)
        if (bioring_reap(self, 1) > 0)
            break; /* left to the reaper: this thread sleeps until it ends it */
    pthread_mutex_lock(&self->lock);
    self->leader = 0;
    self->batches++;
    if (self->want > 0)
        pthread_cond_broadcast(&self->led);
    if (self->npending > 0 || self->closed || self->idle_waiters > 0)
        pthread_cond_signal(&self->work); /* the reaper's turn */
    pthread_mutex_unlock(&self->lock);
    return done < 0 ? -1 : 0;
}

/* wait(obj): called by Bio.wait() of a bio this ring took, or by the result() of a
 * LeanFuture (daxfs.block.future) whose waiter this ring is -- ``obj`` is then the
 * future, done once its _state is FINISHED or cancelled.  On the leader (an end_io
 * waiting for another bio of the ring) it reaps nested until ``obj`` is done,
 * instead of waiting for itself.  On any other thread it leads (B4): it reaps for
 * ``obj`` in the kernel itself, one sleep and wake-up per wait as fio's loop has,
 * instead of two (the reaper's in the kernel, then its own on the Future's lock);
 * the reaper steps aside meanwhile.  (A leader in Python, the engine's
 * leader/follower, was tried before and measured no faster: docs/ARCHITECTURE.md.)
 * With ``lead`` off it returns at once there (the caller then sleeps until the
 * reaper ends the bio). */
static PyObject *
bioring_wait(BioRing *self, PyObject *obj)
{
    unsigned long me = PyThread_get_thread_ident();
    int done = 0;
    if (self->leader != 0 && self->leader == me) { /* nested, in an end_io */
        int caller = me != self->reaper;
        while ((done = bioring_bio_done(obj)) == 0) {
            if (!caller && self->pending != NULL) {
                bioring_end_pending(self);
                continue;
            }
            if (self->inflight <= self->npending)
                break;
            if (bioring_reap(self, caller) > 0 && caller)
                break;
        }
    } else if (self->lead && me != self->reaper && self->ready) {
        done = bioring_lead_for(self, obj);
    }
    if (done < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
bioring_shutdown(BioRing *self, PyObject *Py_UNUSED(ignored))
{
    pthread_mutex_lock(&self->lock);
    self->closed = 1;
    pthread_cond_broadcast(&self->work);
    pthread_cond_broadcast(&self->idle);
    pthread_mutex_unlock(&self->lock);
    if (self->reaper != 0 && self->reaper == PyThread_get_thread_ident())
        Py_RETURN_NONE; /* on the reaper (a device dropped in an end_io): it stops
                         * once nothing is in flight; it cannot wait for itself */
    if (bioring_on_reaper(self))
        Py_RETURN_NONE; /* a waiting thread leading (in an end_io): the reaper ends the rest */
    while (self->inflight > 0) {
        Py_BEGIN_ALLOW_THREADS
        pthread_mutex_lock(&self->lock);
        self->idle_waiters++;
        pthread_cond_signal(&self->work); /* the reaper leads at once while closed */
        while (self->inflight > 0)
            pthread_cond_wait(&self->idle, &self->lock);
        self->idle_waiters--;
        pthread_mutex_unlock(&self->lock);
        Py_END_ALLOW_THREADS
    }
    Py_RETURN_NONE;
}

/* Free the ring once nothing is in flight and no reaper serves (GIL held). */
static PyObject *
bioring_close(BioRing *self, PyObject *Py_UNUSED(ignored))
{
    if (!self->ready)
        Py_RETURN_NONE;
    if (!self->closed || self->inflight > 0 || self->reaper != 0)
        return errno_error(EBUSY, "the BioRing is serving: shutdown() and join its reaper first");
    io_uring_queue_exit(&self->ring);
    self->ready = 0;
    Py_RETURN_NONE;
}

static int
bioring_traverse(BioRing *self, visitproc visit, void *arg)
{
    Py_VISIT(self->failed);
    Py_VISIT(self->report);
    Py_VISIT(self->start);
    Py_VISIT(self->anywhere);
    return 0;
}

static int
bioring_clear(BioRing *self)
{
    Py_CLEAR(self->failed);
    Py_CLEAR(self->report);
    Py_CLEAR(self->start);
    Py_CLEAR(self->anywhere);
    return 0;
}

static void
bioring_dealloc(BioRing *self)
{
    PyObject_GC_UnTrack(self);
    if (self->ready && self->inflight == 0) /* else never freed under I/O (B2): leaked */
        io_uring_queue_exit(&self->ring);
    bioring_clear(self);
    Py_XDECREF(self->bio_type);
    Py_XDECREF(self->op_read);
    Py_XDECREF(self->op_write);
    Py_XDECREF(self->future_lock);
    pthread_mutex_destroy(&self->lock);
    pthread_cond_destroy(&self->work);
    pthread_cond_destroy(&self->idle);
    pthread_cond_destroy(&self->led);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
bioring_get_inflight(BioRing *self, void *closure)
{
    return PyLong_FromLong(self->inflight);
}

static PyObject *
bioring_get_count(BioRing *self, void *closure)
{
    return PyLong_FromUnsignedLongLong(self->count);
}

static PyObject *
bioring_get_closed(BioRing *self, void *closure)
{
    return PyBool_FromLong(self->closed);
}

static PyObject *
bioring_get_defer(BioRing *self, void *closure)
{
    return PyBool_FromLong(self->defer);
}

/* Set a boolean attribute `name` (*flag) from `value`; deleting it is a TypeError. */
static int
bioring_set_flag(int *flag, PyObject *value, const char *name)
{
    int v = value == NULL ? -1 : PyObject_IsTrue(value);
    if (v < 0) {
        if (!PyErr_Occurred())
            PyErr_Format(PyExc_TypeError, "%s cannot be deleted", name);
        return -1;
    }
    *flag = v;
    return 0;
}

static int
bioring_set_defer(BioRing *self, PyObject *value, void *closure)
{
    return bioring_set_flag(&self->defer, value, "defer");
}

static PyObject *
bioring_get_defer_others(BioRing *self, void *closure)
{
    return PyBool_FromLong(self->defer_others);
}

static int
bioring_set_defer_others(BioRing *self, PyObject *value, void *closure)
{
    return bioring_set_flag(&self->defer_others, value, "defer_others");
}

static PyObject *
bioring_get_batch(BioRing *self, void *closure)
{
    return PyLong_FromUnsignedLong(self->batch);
}

static int
bioring_set_batch(BioRing *self, PyObject *value, void *closure)
{
    long v = value == NULL ? -1 : PyLong_AsLong(value);
    if (v < 1) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "batch must be >= 1");
        return -1;
    }
    self->batch = v > (long)UINT_MAX ? UINT_MAX : (unsigned)v;
    return 0;
}

static PyObject *
bioring_get_lead(BioRing *self, void *closure)
{
    return PyBool_FromLong(self->lead);
}

static int
bioring_set_lead(BioRing *self, PyObject *value, void *closure)
{
    int v = self->lead;
    if (bioring_set_flag(&v, value, "lead") < 0)
        return -1;
    if (v && !self->ext_arg) {
        PyErr_SetString(PyExc_ValueError,
                        "lead needs a kernel that takes a wait's timeout (IORING_FEAT_EXT_ARG)");
        return -1;
    }
    self->lead = v;
    return 0;
}

static PyObject *
bioring_get_lead_us(BioRing *self, void *closure)
{
    return PyLong_FromLong(self->lead_us);
}

static int
bioring_set_lead_us(BioRing *self, PyObject *value, void *closure)
{
    long v = value == NULL ? -1 : PyLong_AsLong(value);
    if (v < 1 || v > 1000000) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "lead_us must be in 1..1000000");
        return -1;
    }
    self->lead_us = v;
    return 0;
}

static PyObject *
bioring_get_leads(BioRing *self, void *closure)
{
    return PyLong_FromUnsignedLongLong(self->caller_leads);
}

static PyObject *
bioring_get_caller_ends(BioRing *self, void *closure)
{
    return PyLong_FromUnsignedLongLong(self->caller_ends);
}

static PyObject *
bioring_get_ending(BioRing *self, void *closure)
{
    return PyBool_FromLong(bioring_on_reaper(self));
}

static PyObject *
bioring_get_anywhere(BioRing *self, void *closure)
{
    return Py_NewRef(self->anywhere);
}

/* end_anywhere(fn): a waiting thread that leads may call ``fn`` as an end_io (B5). */
static PyObject *
bioring_end_anywhere(BioRing *self, PyObject *fn)
{
    if (!PyCallable_Check(fn))
        return PyErr_Format(PyExc_TypeError, "end_anywhere: %R is not callable", fn);
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(self->anywhere); i++)
        if (PyTuple_GET_ITEM(self->anywhere, i) == fn)
            Py_RETURN_NONE;
    PyObject *one = PyTuple_Pack(1, fn);
    if (one == NULL)
        return NULL;
    PyObject *all = PySequence_Concat(self->anywhere, one);
    Py_DECREF(one);
    if (all == NULL)
        return NULL;
    Py_SETREF(self->anywhere, all);
    Py_RETURN_NONE;
}

static PyMethodDef bioring_methods[] = {
    {"end_anywhere", (PyCFunction)bioring_end_anywhere, METH_O,
     "end_anywhere(fn): a waiting thread that leads may call fn as an end_io; fn must "
     "not wait for a bio and must not wait for a lock its caller may hold"},
    {"submit", (PyCFunction)(void (*)(void))bioring_submit, METH_FASTCALL,
     "submit(fd, bio) -> True (taken) | None (not plain, or closed: nothing done)"},
    {"wait", (PyCFunction)bioring_wait, METH_O,
     "wait(bio): on the reaper (an end_io), reap until bio is done; else return"},
    {"serve", (PyCFunction)bioring_serve, METH_NOARGS,
     "the reaper: end bios as their CQEs come, until shutdown() and nothing in flight"},
    {"shutdown", (PyCFunction)bioring_shutdown, METH_NOARGS,
     "refuse new bios (None) and wait for those in flight to end (on the reaper: "
     "no wait; it stops once they have)"},
    {"close", (PyCFunction)bioring_close, METH_NOARGS,
     "free the ring (EBUSY before shutdown() and the reaper's end)"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef bioring_getset[] = {
    {"inflight", (getter)bioring_get_inflight, NULL, "bios taken and not yet ended", NULL},
    {"count", (getter)bioring_get_count, NULL, "bios taken", NULL},
    {"closed", (getter)bioring_get_closed, NULL, "shutdown() was called", NULL},
    {"defer", (getter)bioring_get_defer, (setter)bioring_set_defer,
     "the reaper's own submissions (end_io's) wait for its next wait", NULL},
    {"batch", (getter)bioring_get_batch, (setter)bioring_set_batch,
     "the reaper submits its queued SQEs once it holds this many (default entries/8)", NULL},
    {"defer_others", (getter)bioring_get_defer_others, (setter)bioring_set_defer_others,
     "other threads' submissions wait for the reaper's next wait while half the entries "
     "are in flight", NULL},
    {"lead", (getter)bioring_get_lead, (setter)bioring_set_lead,
     "a thread waiting for a bio of the ring (wait) reaps for it itself", NULL},
    {"lead_us", (getter)bioring_get_lead_us, (setter)bioring_set_lead_us,
     "a leading waiter looks again after this many microseconds in the kernel; the "
     "reaper takes the lead after this long without one", NULL},
    {"leads", (getter)bioring_get_leads, NULL, "leads taken by waiting threads", NULL},
    {"caller_ends", (getter)bioring_get_caller_ends, NULL, "bios ended by waiting threads",
     NULL},
    {"ending", (getter)bioring_get_ending, NULL,
     "the current thread is the leader (it ends bios: in an end_io)", NULL},
    {"anywhere", (getter)bioring_get_anywhere, NULL,
     "the end_io callables a waiting leader may call (end_anywhere)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject BioRingType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "daxfs.block._uring.BioRing",
    .tp_basicsize = sizeof(BioRing),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "A block device's asynchronous plain bios (see the comment in _uring.c).",
    .tp_new = bioring_new,
    .tp_init = (initproc)bioring_init,
    .tp_dealloc = (destructor)bioring_dealloc,
    .tp_traverse = (traverseproc)bioring_traverse,
    .tp_clear = (inquiry)bioring_clear,
    .tp_methods = bioring_methods,
    .tp_getset = bioring_getset,
};

static int
intern_names(void)
{
    static const struct { PyObject **p; const char *s; } names[] = {
        {&str_op, "op"}, {&str_flags, "flags"}, {&str_sector, "sector"},
        {&str_segments, "segments"}, {&str_state, "_state"}, {&str_future, "_future"},
        {&str_value, "_value"}, {&str_status, "status"}, {&str_end_io, "end_io"},
        {&str_set_result, "set_result"}, {&str_new, "new"}, {&str_submitted, "submitted"},
        {&str_done, "done"}, {&str_acquire, "acquire"}, {&str_release, "release"}, {&str_waiter, "_waiter"},
        {&str_finished, "FINISHED"}, {&str_cancelled, "CANCELLED"},
        {&str_cancelled_notified, "CANCELLED_AND_NOTIFIED"}, {&str_cbs, "_cbs"},
        {&str_cond_, "_cond"}, {&str_w_, "_w"}, {&str_sleepers_, "_sleepers"},
        {&str_result_, "_result"}, {&str_exception_, "_exception"},
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if ((*names[i].p = PyUnicode_InternFromString(names[i].s)) == NULL)
            return -1;
    return 0;
}

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

/* _refuse_setup_flags(mask) -> the previous mask (tests only). */
static PyObject *
uring_refuse_setup_flags(PyObject *module, PyObject *arg)
{
    unsigned long mask = PyLong_AsUnsignedLong(arg);
    if (mask == (unsigned long)-1 && PyErr_Occurred())
        return NULL;
    unsigned old = refused_flags;
    refused_flags = (unsigned)mask;
    return PyLong_FromUnsignedLong(old);
}

static PyMethodDef module_methods[] = {
    {"_refuse_setup_flags", uring_refuse_setup_flags, METH_O,
     "_refuse_setup_flags(mask) -> previous: make io_uring_setup refuse (EINVAL) those "
     "flags, as a kernel without them does (for tests)"},
    {"misaligned", uring_misaligned, METH_VARARGS,
     "misaligned(buffers, align) -> bool: an address or length not a multiple of align"},
    {"set_lean", uring_set_lean, METH_VARARGS,
     "set_lean(lock, (PENDING, RUNNING, FINISHED)): LeanFuture's lock and states, so that "
     "a BioRing resolves an unwatched LeanFuture in C"},
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
    if (PyType_Ready(&RingType) < 0 || PyType_Ready(&FastType) < 0 ||
        PyType_Ready(&BioRingType) < 0 || intern_names() < 0)
        return NULL;
    PyObject *m = PyModule_Create(&uring_module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&RingType);
    Py_INCREF(&FastType);
    Py_INCREF(&BioRingType);
    if (PyModule_AddObject(m, "Ring", (PyObject *)&RingType) < 0 ||
        PyModule_AddObject(m, "Fast", (PyObject *)&FastType) < 0 ||
        PyModule_AddObject(m, "BioRing", (PyObject *)&BioRingType) < 0 ||
        PyModule_AddIntConstant(m, "NOP", OP_NOP) < 0 ||
        PyModule_AddIntConstant(m, "READV", OP_READV) < 0 ||
        PyModule_AddIntConstant(m, "WRITEV", OP_WRITEV) < 0 ||
        PyModule_AddIntConstant(m, "FDATASYNC", OP_FDATASYNC) < 0 ||
        PyModule_AddIntConstant(m, "FALLOCATE", OP_FALLOCATE) < 0 ||
        PyModule_AddIntConstant(m, "IOV_MAX", IOV_MAX) < 0 ||
        PyModule_AddIntConstant(m, "MAX_ENTRIES", MAX_ENTRIES) < 0 ||
        PyModule_AddIntConstant(m, "SETUP_COOP_TASKRUN", IORING_SETUP_COOP_TASKRUN) < 0) {
        Py_DECREF(&RingType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
