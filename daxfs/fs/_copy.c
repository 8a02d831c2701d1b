/*
 * daxfs.fs._copy: the copy of a large copy-on-write overwrite, on another core.
 *
 * Theory of operation
 * -------------------
 * DataPath._cow_blocks (daxfs/fs/data.py) writes a large aligned overwrite into
 * newly allocated blocks, which nothing committed refers to until the commit
 * point, so the copy may run while the Python bookkeeping of the same
 * transaction (the map change, the inode record, the records' seal and line
 * diff) runs, as long as it has finished and is fenced before the commit's
 * first fence.  A Copier does that:
 *
 *   start(offset, data)  takes a Py_buffer of the device view and of `data`
 *                        (held until the join), cuts the copy into CHUNK-byte
 *                        pieces and hands them to a worker thread (a pthread
 *                        that never takes the GIL and never touches a Python
 *                        object), which copies them with the persist mode's
 *                        non-temporal stores and flushes (persist_copy);
 *   join()               releases the GIL, copies the pieces the worker has not
 *                        claimed yet itself, waits for the worker's pieces,
 *                        fences, releases both buffers, and raises OSError if a
 *                        piece failed.  Transaction.commit calls it before its
 *                        first device operation of the log; Transaction.abort
 *                        before it ends the transaction (daxfs/fs/journal.py).
 *
 * Pieces are claimed from one atomic word, (generation, count, next piece):
 * a claim is a compare-and-swap that succeeds only while the job is the one
 * whose fields the claimer read, so a late worker never copies for a job that
 * has been joined.  Each participant fences its own stores (the non-temporal
 * stores and flushes of one core are ordered by that core's fence) before it
 * adds its pieces to `done`; the joiner waits until `done` holds every piece,
 * so after join every byte is in the persistence domain.
 *
 * Because the joiner copies what is left, the worker is only ever a help: a
 * worker not scheduled (the other core busy), not started (pthread_create
 * failed), exited after a second idle, or absent (a forked child) leaves the
 * copy to join, which then does what Device.write would have done.  The worker
 * spins briefly after a job (a sequential writer's next piece comes soon), then
 * sleeps on a futex.
 *
 * Only native persist modes (clwb, clflushopt, clflush, none): the msync mode
 * and the crash simulator's devices keep the synchronous Device.write, so that
 * SimulatedPmem sees every store (DataPath makes no Copier for them).
 *
 * Invariants
 *   1. While a job is pending (start .. join), the Copier holds a buffer export
 *      of the device view and of the source: neither memory can be unmapped,
 *      resized or freed under the copy.
 *   2. Every store lies inside [0, len(view)): checked by start.
 *   3. join returns (or raises) only after every piece is copied, flushed and
 *      fenced by the core that stored it, and nothing of the job is left in use.
 *   4. One job at a time: start raises if a job is pending (the caller holds
 *      the journal lock from start to join).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <errno.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "../pmem/_persist.h"
#include "../pmem/_pyutil.h"

/* the piece a participant claims at a time (default; tune() changes it) */
#define CHUNK (64 * 1024)
/* claim word: generation (24 bits) | pieces (20 bits) | next piece (20 bits) */
#define IDX_BITS 20
#define IDX_MASK ((UINT64_C(1) << IDX_BITS) - 1)
#define GEN_SHIFT (2 * IDX_BITS)
/* how long the worker spins for the next job, and the joiner for the worker's
 * last pieces, before sleeping on a futex (nanoseconds) */
static long long worker_spin_ns = 200000, join_spin_ns = 20000;
static size_t chunk_size = CHUNK;
static int yield_spin = 1;
/* an idle worker exits after this long (nanoseconds); the next start makes one */
static long long idle_exit_ns = 1000000000LL;

/* test hooks: the next job's worker waits this long before it copies (ns), and
 * the joiner does not help (waits for the worker); 0: off */
static long long planted_worker_delay = 0;
/* test hook: the next job fails with this errno (after copying); 0: off */
static int planted_error = 0;

typedef struct {
    PyObject_HEAD
    PyObject *view; /* the device's view (memoryview) */
    int mode;
    int help; /* the joiner copies unclaimed pieces (always, but for tests and A/B) */
    /* the job: written by start before it publishes `claim`, read by claimers */
    char *dst;
    const char *src;
    size_t n, chunk;
    Py_buffer vbuf, sbuf;
    int pending;
    Py_ssize_t offset;
    long long delay; /* planted_worker_delay of this job */
    /* shared with the worker */
    _Atomic uint64_t claim;
    _Atomic uint32_t done;   /* pieces copied and fenced (futex word for the joiner) */
    _Atomic uint32_t wake;   /* bumped to wake a sleeping worker (futex word) */
    _Atomic int sleeping;    /* the worker sleeps (or is about to) on `wake` */
    _Atomic int joining;     /* the joiner sleeps (or is about to) on `done` */
    _Atomic int error;       /* errno of a failed piece, else 0 */
    _Atomic int quit;        /* dealloc: the worker must exit */
    _Atomic int alive;       /* the worker runs */
    _Atomic int spin_ok;     /* the worker spins for the next job (it was useful) */
    int offered;             /* the job was offered to the worker (not backing off) */
    int misses;              /* jobs in a row the worker copied under a quarter of */
    int backoff, backoff_len; /* jobs left, and the length, of a pause of the worker */
    int started;             /* `thread` is a thread to pthread_join */
    pid_t pid;               /* the process that started the worker */
    pthread_t thread;
    uint32_t gen;
    /* counters (for tests and the bench's analysis) */
    long long jobs, joiner_pieces;
    _Atomic long long worker_pieces;
} Copier;

static long
futex(_Atomic uint32_t *word, int op, uint32_t val, const struct timespec *timeout)
{
    return syscall(SYS_futex, (uint32_t *)word, op | FUTEX_PRIVATE_FLAG, val, timeout, NULL, 0);
}

static long long
now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static inline void
cpu_relax(void)
{
#if DAXFS_X86
    _mm_pause();
#endif
}

static inline uint32_t
claim_count(uint64_t v)
{
    return (uint32_t)((v >> IDX_BITS) & IDX_MASK);
}

static inline uint32_t
claim_next(uint64_t v)
{
    return (uint32_t)(v & IDX_MASK);
}

/* Claim and copy pieces of the current job until none is left; fence, then add
 * the count to `done`.  Returns the pieces copied.  Runs without the GIL. */
static uint32_t
copy_pieces(Copier *c, int worker)
{
    uint32_t mine = 0;
    uint64_t v = atomic_load(&c->claim);
    for (;;) {
        uint32_t count = claim_count(v), i = claim_next(v);
        if (i >= count)
            break;
        /* the job's fields, read before the claim: valid if the claim succeeds */
        char *dst = c->dst;
        const char *src = c->src;
        size_t n = c->n, chunk = c->chunk;
        if (!atomic_compare_exchange_weak(&c->claim, &v, v + 1))
            continue; /* v reloaded */
        size_t lo = (size_t)i * chunk, len = n - lo < chunk ? n - lo : chunk;
        if (persist_copy(c->mode, dst + lo, src + lo, len) < 0)
            atomic_store(&c->error, errno ? errno : EIO);
        mine++;
        v = atomic_load(&c->claim);
    }
    if (mine) {
        persist_drain(c->mode); /* this core's stores are durable before `done` says so */
        if (worker)
            atomic_fetch_add(&c->worker_pieces, mine); /* counted before the join sees it */
        uint32_t total = atomic_fetch_add(&c->done, mine) + mine;
        if (total == claim_count(v) && atomic_load(&c->joining))
            futex(&c->done, FUTEX_WAKE, INT32_MAX, NULL);
    }
    return mine;
}

static int
has_work(Copier *c)
{
    uint64_t v = atomic_load(&c->claim);
    return claim_next(v) < claim_count(v);
}

static void *
worker_main(void *arg)
{
    Copier *c = arg;
    for (;;) {
        /* spin a little: a sequential writer's next piece comes soon */
        long long until = atomic_load(&c->spin_ok) ? now_ns() + worker_spin_ns : 0;
        while (!has_work(c) && !atomic_load(&c->quit) && now_ns() < until) {
            if (yield_spin)
                sched_yield(); /* a thread waiting for this core gets it */
            else
                for (int k = 0; k < 64; k++)
                    cpu_relax();
        }
        if (atomic_load(&c->quit))
            break;
        if (!has_work(c)) {
            uint32_t w = atomic_load(&c->wake);
            atomic_store(&c->sleeping, 1);
            if (!has_work(c) && !atomic_load(&c->quit)) {
                struct timespec idle = {idle_exit_ns / 1000000000LL, idle_exit_ns % 1000000000LL};
                long rc = futex(&c->wake, FUTEX_WAIT, w, &idle);
                if (rc < 0 && errno == ETIMEDOUT && !has_work(c) && !atomic_load(&c->quit) &&
                    !planted_worker_delay) {
                    atomic_store(&c->sleeping, 0);
                    break; /* idle: exit (a job published meanwhile is joined by its joiner) */
                }
            }
            atomic_store(&c->sleeping, 0);
            continue;
        }
        long long delay = c->delay;
        if (delay > 0) {
            struct timespec ts = {delay / 1000000000LL, delay % 1000000000LL};
            while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
                ;
        }
        copy_pieces(c, 1);
    }
    atomic_store(&c->alive, 0);
    return NULL;
}

/* Make sure a worker runs (best effort: without one, join copies everything). */
static void
ensure_worker(Copier *c)
{
    pid_t pid = getpid();
    if (c->started && c->pid != pid) {
        c->started = 0; /* a forked child: the parent's worker is not here */
        atomic_store(&c->alive, 0);
        atomic_store(&c->sleeping, 0);
    }
    if (atomic_load(&c->alive))
        return;
    if (c->started) {
        pthread_join(c->thread, NULL); /* it exited, idle */
        c->started = 0;
    }
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old); /* signals go to the Python threads */
    atomic_store(&c->alive, 1);
    atomic_store(&c->quit, 0);
    if (pthread_create(&c->thread, NULL, worker_main, c) == 0) {
        c->started = 1;
        c->pid = pid;
    } else {
        atomic_store(&c->alive, 0);
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
}

static void
stop_worker(Copier *c)
{
    if (!c->started || c->pid != getpid())
        return;
    atomic_store(&c->quit, 1);
    atomic_fetch_add(&c->wake, 1);
    futex(&c->wake, FUTEX_WAKE, 1, NULL);
    Py_BEGIN_ALLOW_THREADS pthread_join(c->thread, NULL);
    Py_END_ALLOW_THREADS c->started = 0;
}

/* Copier(view, mode, help=True) */
static PyObject *
Copier_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"view", "mode", "help", NULL};
    PyObject *view;
    const char *mode_name;
    int help = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "Os|p:Copier", kwlist, &view, &mode_name,
                                     &help))
        return NULL;
    int mode = parse_persist_mode(mode_name);
    if (mode < 0)
        return NULL;
    if (mode == M_MSYNC)
        return raise_invalid("the copier needs a native persist mode, not msync");
    if (!PyObject_CheckBuffer(view))
        return raise_invalid("view must be a writable buffer, not %.100s", Py_TYPE(view)->tp_name);
    Copier *c = (Copier *)type->tp_alloc(type, 0);
    if (c == NULL)
        return NULL;
    c->view = Py_NewRef(view);
    c->mode = mode;
    c->help = help;
    atomic_store(&c->spin_ok, 1);
    return (PyObject *)c;
}

/* Wait for the job, release its buffers; 0, or -1 with OSError if a piece failed.
 * The GIL is released while copying and waiting. */
static int
do_join(Copier *c)
{
    if (!c->pending)
        return 0;
    long long helped = 0;
    int help = c->help && c->delay == 0;
    Py_BEGIN_ALLOW_THREADS
    uint32_t count = claim_count(atomic_load(&c->claim));
    if (help)
        helped = copy_pieces(c, 0);
    long long until = now_ns() + join_spin_ns;
    for (;;) {
        uint32_t d = atomic_load(&c->done);
        if (d >= count)
            break;
        if (now_ns() < until) {
            for (int k = 0; k < 64; k++)
                cpu_relax();
            continue;
        }
        /* the worker is slow (preempted, or a planted delay): sleep until it adds
         * its pieces; every 10 ms, copy what it left if it went away idle */
        atomic_store(&c->joining, 1);
        if (atomic_load(&c->done) == d) {
            struct timespec tick = {0, 10000000};
            futex(&c->done, FUTEX_WAIT, d, &tick);
            if (!atomic_load(&c->alive) && has_work(c))
                helped += copy_pieces(c, 0);
        }
        atomic_store(&c->joining, 0);
    }
    persist_drain(c->mode);
    Py_END_ALLOW_THREADS
    c->joiner_pieces += helped;
    if (c->offered) {
        /* Was the worker a help?  A worker without a core of its own (the machine
         * busy) copies little, and its spinning takes CPU from this thread: after
         * two such jobs in a row, leave it asleep for a pause that doubles (8 to
         * 1024 jobs) while it stays no help, and ends at its first good job. */
        uint32_t count = claim_count(atomic_load(&c->claim));
        if ((uint64_t)(count - (uint32_t)helped) * 4 < count) {
            if (++c->misses >= 2) {
                c->misses = 0;
                c->backoff_len = c->backoff_len ? (c->backoff_len < 1024 ? 2 * c->backoff_len : 1024) : 8;
                c->backoff = c->backoff_len;
                atomic_store(&c->spin_ok, 0);
            }
        } else {
            c->misses = 0;
            c->backoff_len = 0;
            atomic_store(&c->spin_ok, 1);
        }
    }
    c->pending = 0;
    c->delay = 0;
    PyBuffer_Release(&c->sbuf);
    PyBuffer_Release(&c->vbuf);
    int e = atomic_exchange(&c->error, 0);
    if (e) {
        PyObject *msg = PyUnicode_FromFormat(
            "copy of %zu bytes to device range [%zd, %zd) failed: %s", c->n, c->offset,
            c->offset + (Py_ssize_t)c->n, strerror(e));
        if (msg != NULL) {
            PyObject *exc = PyObject_CallFunction(PyExc_OSError, "iO", e, msg);
            Py_DECREF(msg);
            if (exc != NULL) {
                PyErr_SetObject(PyExc_OSError, exc);
                Py_DECREF(exc);
            }
        }
        return -1;
    }
    return 0;
}

static void
Copier_dealloc(Copier *c)
{
    if (c->pending) {
        /* a job never joined (cannot happen through Transaction): finish it first */
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        if (do_join(c) < 0)
            PyErr_WriteUnraisable(NULL); /* not c: a hook keeping it would resurrect it */
        PyErr_Restore(type, value, tb);
    }
    stop_worker(c);
    Py_XDECREF(c->view);
    Py_TYPE(c)->tp_free((PyObject *)c);
}

/* start(offset, data) -> None: begin copying data to device byte offset. */
static PyObject *
Copier_start(Copier *c, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "start(offset, data)");
        return NULL;
    }
    if (c->pending) {
        PyErr_SetString(PyExc_RuntimeError, "a copy is pending: join it first");
        return NULL;
    }
    if (!PyLong_Check(args[0]))
        return raise_invalid("offset must be an integer, not %.100s", Py_TYPE(args[0])->tp_name);
    Py_ssize_t off = PyLong_AsSsize_t(args[0]);
    if (off == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return raise_invalid("offset %R is out of range", args[0]);
    }
    if (off < 0)
        return raise_invalid("offset must not be negative, got %zd", off);
    if (PyObject_GetBuffer(c->view, &c->vbuf, PyBUF_WRITABLE) < 0)
        return NULL;
    if (PyObject_GetBuffer(args[1], &c->sbuf, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&c->vbuf);
        return NULL;
    }
    Py_ssize_t n = c->sbuf.len;
    if (off > c->vbuf.len || n > c->vbuf.len - off) {
        PyBuffer_Release(&c->sbuf);
        PyBuffer_Release(&c->vbuf);
        return raise_invalid("range [%zd, %zd) is outside the device of %zd bytes", off, off + n,
                             c->vbuf.len);
    }
    size_t chunk = chunk_size;
    while ((size_t)n / chunk >= IDX_MASK)
        chunk *= 2;
    uint32_t count = (uint32_t)(((size_t)n + chunk - 1) / chunk);
    c->dst = (char *)c->vbuf.buf + off;
    c->src = c->sbuf.buf;
    c->n = (size_t)n;
    c->chunk = chunk;
    c->offset = off;
    c->pending = 1;
    c->jobs++;
    c->delay = planted_worker_delay;
    planted_worker_delay = 0;
    if (planted_error) {
        atomic_store(&c->error, planted_error);
        planted_error = 0;
    }
    atomic_store(&c->done, 0);
    c->gen = (c->gen + 1) & ((1u << (64 - GEN_SHIFT)) - 1);
    /* publish: the fields above are written before the claim word (seq_cst) */
    atomic_store(&c->claim, ((uint64_t)c->gen << GEN_SHIFT) | ((uint64_t)count << IDX_BITS));
    c->offered = 0;
    if (c->backoff > 0 && !c->delay) {
        c->backoff--; /* the worker was no help lately (no core for it): join copies */
    } else if (count > 1 || c->delay) {
        c->offered = 1;
        ensure_worker(c);
        if (atomic_load(&c->sleeping)) {
            atomic_fetch_add(&c->wake, 1);
            futex(&c->wake, FUTEX_WAKE, 1, NULL);
        }
    }
    Py_RETURN_NONE;
}

static PyObject *
Copier_join(Copier *c, PyObject *unused)
{
    if (do_join(c) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
Copier_close(Copier *c, PyObject *unused)
{
    if (do_join(c) < 0)
        return NULL;
    stop_worker(c);
    Py_RETURN_NONE;
}

static PyObject *
Copier_get_pending(Copier *c, void *unused)
{
    return PyBool_FromLong(c->pending);
}

static PyObject *
Copier_get_stats(Copier *c, void *unused)
{
    return Py_BuildValue("{s:L,s:L,s:L,s:O,s:i}", "jobs", c->jobs, "worker_pieces",
                         (long long)atomic_load(&c->worker_pieces), "joiner_pieces",
                         c->joiner_pieces, "worker_alive",
                         atomic_load(&c->alive) ? Py_True : Py_False, "backoff", c->backoff);
}

static PyObject *
Copier_get_mode(Copier *c, void *unused)
{
    return PyUnicode_FromString(persist_mode_names[c->mode]);
}

static PyMethodDef Copier_methods[] = {
    {"start", (PyCFunction)(void (*)(void))Copier_start, METH_FASTCALL,
     "start(offset, data): begin copying data to device byte offset (non-temporal, "
     "flushed); the buffers are held until join"},
    {"join", (PyCFunction)Copier_join, METH_NOARGS,
     "join(): finish the pending copy (if any), fenced; OSError if it failed"},
    {"close", (PyCFunction)Copier_close, METH_NOARGS, "close(): join, stop the worker thread"},
    {NULL}};

static PyGetSetDef Copier_getset[] = {
    {"pending", (getter)Copier_get_pending, NULL, "a copy is started and not joined", NULL},
    {"stats", (getter)Copier_get_stats, NULL,
     "jobs, pieces the worker and the joiner copied, whether the worker runs", NULL},
    {"mode", (getter)Copier_get_mode, NULL, "the persist mode", NULL},
    {NULL}};

static PyTypeObject CopierType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "daxfs.fs._copy.Copier",
    .tp_basicsize = sizeof(Copier),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Copier(view, mode, help=True): a device copy on another core, joined later",
    .tp_new = Copier_new,
    .tp_dealloc = (destructor)Copier_dealloc,
    .tp_methods = Copier_methods,
    .tp_getset = Copier_getset,
};

/* ------------------------------------------------------------------ module */

static PyObject *
plant_worker_delay(PyObject *self, PyObject *arg)
{
    long long ns = PyLong_AsLongLong(arg);
    if (ns == -1 && PyErr_Occurred())
        return NULL;
    if (ns < 0)
        return raise_invalid("plant_worker_delay: ns must be >= 0, got %lld", ns);
    planted_worker_delay = ns;
    Py_RETURN_NONE;
}

static PyObject *
plant_error(PyObject *self, PyObject *arg)
{
    long e = PyLong_AsLong(arg);
    if (e == -1 && PyErr_Occurred())
        return NULL;
    if (e < 0 || e > 4095)
        return raise_invalid("plant_error: errno must be in [0, 4096), got %ld", e);
    planted_error = (int)e;
    Py_RETURN_NONE;
}

/* tune(worker_spin_ns, join_spin_ns, chunk, yield_spin=.., idle_exit_ns=..) -> previous:
 * for the bench's A/B runs and the tests */
static PyObject *
tune(PyObject *self, PyObject *args)
{
    long long ws, js, idle = idle_exit_ns;
    Py_ssize_t ch;
    int y = yield_spin;
    if (!PyArg_ParseTuple(args, "LLn|pL:tune", &ws, &js, &ch, &y, &idle))
        return NULL;
    if (ws < 0 || js < 0 || ch < LINE || ch % LINE || idle <= 0)
        return raise_invalid("tune: spins must be >= 0, chunk a positive multiple of 64 and "
                             "idle_exit_ns positive");
    PyObject *before =
        Py_BuildValue("(LLnOL)", worker_spin_ns, join_spin_ns, (Py_ssize_t)chunk_size,
                      yield_spin ? Py_True : Py_False, idle_exit_ns);
    worker_spin_ns = ws;
    join_spin_ns = js;
    chunk_size = (size_t)ch;
    yield_spin = y;
    idle_exit_ns = idle;
    return before;
}

static PyMethodDef module_methods[] = {
    {"tune", tune, METH_VARARGS,
     "tune(worker_spin_ns, join_spin_ns, chunk, yield_spin=True, idle_exit_ns=10**9) -> "
     "previous values (for benchmarks and tests)"},
    {"plant_worker_delay", plant_worker_delay, METH_O,
     "plant_worker_delay(ns): the next copy's worker waits ns first and its joiner does not "
     "help (a test hook; 0 disarms)"},
    {"plant_error", plant_error, METH_O,
     "plant_error(errno): the next copy fails with errno at its join (a test hook; 0 disarms)"},
    {"set_error_class", set_error_class, METH_O,
     "set_error_class(cls): raise cls(message) for bad arguments"},
    {NULL}};

static struct PyModuleDef moduledef = {PyModuleDef_HEAD_INIT, "daxfs.fs._copy",
                                       "The copy of a copy-on-write overwrite on another core.",
                                       -1, module_methods};

PyMODINIT_FUNC
PyInit__copy(void)
{
    detect_cpu();
    if (PyType_Ready(&CopierType) < 0 || pyutil_init() < 0)
        return NULL;
    PyObject *m = PyModule_Create(&moduledef);
    if (m == NULL)
        return NULL;
    Py_INCREF(&CopierType);
    if (PyModule_AddObject(m, "Copier", (PyObject *)&CopierType) < 0 ||
        PyModule_AddIntConstant(m, "CHUNK", CHUNK) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
