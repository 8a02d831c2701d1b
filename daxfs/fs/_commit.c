/*
 * daxfs.fs._commit: the small-overwrite commit of the redo journal, in C.
 *
 * Theory of operation
 * -------------------
 * daxfs/fs/journal.py is the reference: it documents the redo journal, its
 * commit protocol and its invariants, and Journal.overwrite builds the
 * transaction this module commits, through Journal.begin and
 * Transaction.commit.  Committer.overwrite makes the same transaction (two
 * redo records: the file data, then the 256-byte inode record with its new
 * size, mtime and ctime) and issues the same device operations in the same
 * order, so the media holds the same bytes at every fence:
 *
 *     1. patch a copy of the inode record (size, mtime, ctime, crc32c)
 *     2. write(log_offset, JREC(data) data pad JREC(inode) record)
 *     3. drain                                              fence 1
 *     4. write(header_offset, header(seq, 2, log_bytes, log_crc))
 *     5. drain                          <- COMMIT POINT     fence 2
 *     6. write(data_offset, data); write(inode_offset, record)
 *     7. drain                                              fence 3
 *     8. write(header_offset + 64, seq)          (applied_seq, no drain)
 *
 * Every store, flush and fence goes through two operations of a Committer,
 * dev_writev (copy and flush, no fence) and dev_drain, in one of two modes:
 *
 *   native    the device's memory is written directly and flushed with the
 *             persist mode of its daxfs.pmem._native.Region (clwb,
 *             clflushopt, clflush, none, msync): persist_copy and
 *             persist_drain of daxfs/pmem/_persist.h, the code Region.memcpy
 *             and Region.drain run (non-temporal from NT_THRESHOLD bytes),
 *             except for lines every commit rewrites: the log is stored line
 *             by line (native_writev: each line once, whole lines streamed),
 *             the header and applied_seq with non-temporal 8-byte stores
 *             (nt_store_u64); a cached store into a line flushed by the last
 *             commit would first read it back from memory.
 *   callback  dev_writev calls the device's writer (the callable the
 *             PmemStore writes through: write(offset, data, drain=False)) and
 *             dev_drain its drain(): any other Device, notably SimulatedPmem
 *             and the fault-injecting FaultyPmem, which then see exactly the
 *             operations the Python reference makes.
 *
 * Both modes run the one sequence function (commit_overwrite), so the crash
 * tests on SimulatedPmem test the sequence the native mode runs; what only the
 * native mode does (the stores and the flush instructions) is checked by
 * comparing its image with the reference's, byte for byte.  A test hook
 * (plant_missing_flush) makes the n-th dev_write store without flushing, in
 * either mode (in callback mode: straight into the device's memory, which
 * SimulatedPmem then sees as a store never flushed); a crash test must catch
 * it.
 *
 * The inode record is not packed from the Python InodeRecord: it is the
 * committed record read from the media, checked (magic, inode number,
 * crc32c, and the size and mtime the caller holds in memory), with the
 * reserved u16 (bytes 110..111) zeroed as InodeRecord.pack_into writes it.  Outside a
 * transaction the media record is exactly the packed in-memory record
 * (daxfs.fs.inode, invariant 2), so the result is byte for byte what the
 * reference packs.  If any check fails, nothing is written and overwrite
 * returns -1: the caller takes the reference path.
 *
 * The record cache.  Reading the record back costs a memory round trip (the
 * last commit wrote it non-temporally, so it is in no cache): each overwrite
 * instead keeps the record it wrote (REC_CACHE entries, by inode slot), and an
 * overwrite takes its record from there when every transaction since that
 * record was written was an overwrite of this committer (invariant 4); the
 * checks against memory (magic, inode number, size, mtime) run on it as on the
 * media's.  Every commit takes the next sequence number, so "the transaction
 * before this one was my overwrite" is seq == last_seq + 1, and the overwrites
 * in an unbroken run of those are those from chain_start on.
 *
 * Committer.commit(seq, records) runs the same sequence (steps 2-8, with the
 * records in place of the two above) for any transaction whose records the
 * Python Transaction.commit gathered: see "the commit of any transaction"
 * below.
 *
 * Invariants
 *   1. Every offset and length is checked against the view before any byte
 *      is copied: the data and the inode record lie inside the filesystem and
 *      outside the journal, the log fits its area.  A bad argument raises the
 *      error class set by set_error_class (InvalidArgument, EINVAL) with
 *      nothing written.
 *   2. The device operations are those of Transaction.commit for the same
 *      records, in the same order, with the same bytes.
 *   3. On an exception from a device operation, `stage` says how far the
 *      commit got (STAGE_* below); the Python caller handles it as
 *      Transaction.commit does (abort, erase the header, or read-only).
 *   4. A record cache entry (off, seq, bytes) with seq >= chain_start, while
 *      the next transaction is last_seq + 1, holds the bytes at `off` on the
 *      media: an overwrite wrote them there in transaction seq, and every
 *      transaction since was an overwrite of this committer, each of which
 *      wrote only its own record (and updated that record's entry) besides
 *      file data and the journal.  Only journal transactions write committed
 *      inode records while mounted; a failed commit sets last_seq to -2,
 *      after which nothing chains until an overwrite commits.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "../pmem/_persist.h"
#include "../pmem/_pyutil.h"
#include "_media.h"

/* the format (daxfs/fs/layout.py; a test compares these with it) */
#define BLOCK_SHIFT 12
#define INODE_SIZE 256
#define INODE_MAGIC 0x444F4E49u
#define I_CRC 4
#define I_INO 8
#define I_SIZE 32
#define I_MTIME 56
#define I_CTIME 64
#define I_RESERVED 110 /* u16; 108 is xattr_bytes, kept as the media has it */
#define JREC_SIZE 16
#define JH_SIZE 32
#define JH_CRC 28
#define JH_APPLIED 64
static const char JOURNAL_MAGIC[8] = {'D', 'A', 'X', 'F', 'S', 'J', 'N', 'L'};
#define SEQ_LIMIT ((uint64_t)1 << 63)

/* how far a commit got (Committer.stage) */
#define STAGE_NONE 0      /* nothing written */
#define STAGE_LOG 1       /* the log is written: not committed */
#define STAGE_HEADER 2    /* the header is written, the commit fence not passed */
#define STAGE_COMMITTED 3 /* the commit point is passed */
#define STAGE_DONE 4      /* applied and applied_seq stored */

/* the persist modes of _persist.h, and one more: through the device's callables */
#define M_CALLBACK PERSIST_MODES
/* test hook: the n-th dev_write from now stores without flushing (0: off) */
static long planted_missing_flush = 0;
/* test hook: the time every overwrite stamps (0: the real clock) */
static int64_t frozen_clock = 0;


/* One record an overwrite of this committer wrote: its device offset, the
 * transaction that wrote it, its bytes. */
#define REC_CACHE 8
typedef struct {
    int64_t off, seq;
    unsigned char rec[INODE_SIZE];
} RecCache;

typedef struct {
    PyObject_HEAD
    PyObject *view;   /* the store's view of the whole filesystem */
    PyObject *write;  /* callback mode: writer(offset, data) */
    PyObject *drain;  /* callback mode: drain() */
    int mode;
    Py_ssize_t header_offset, log_offset, capacity;
    int stage;
    int64_t stamp;   /* the time the last overwrite stamped */
    int64_t commits; /* overwrites committed */
    /* during a call: the view's memory */
    char *base;
    /* during a pwrite: sets memory past the commit point, while the data drains
     * (0, or -1 with an exception); see commit_overwrite */
    int (*applying)(void *ctx, int64_t stamp);
    void *applying_ctx;
    Py_ssize_t size;
    /* the pwrite fast path (configure): the classes and their slot offsets */
    PyObject *types, *locations;
    PyTypeObject *inode_type, *extent_type, *record_type;
    Py_ssize_t o_rec, o_xcache, o_layouts, o_lock, o_lblk, o_pblk, o_length, o_flags;
    Py_ssize_t o_ino, o_size, o_mtime, o_ctime, max_bytes;
    /* the journal's class (bound at the first pwrite) and its slot offsets */
    PyTypeObject *journal_type;
    Py_ssize_t o_jlock, o_active, o_failed, o_seq, o_commits;
    /* the records this committer's own overwrites wrote (see "The record cache") */
    int64_t last_seq, chain_start;
    RecCache recs[REC_CACHE];
    int64_t rec_hits;
} Committer;

static int
os_error(int e, const char *what, Py_ssize_t off, Py_ssize_t len)
{
    PyObject *msg = PyUnicode_FromFormat("%s of range [%zd, %zd) failed: %s", what, off,
                                         off + len, strerror(e));
    if (msg == NULL)
        return -1;
    PyObject *exc = PyObject_CallFunction(PyExc_OSError, "iO", e, msg);
    Py_DECREF(msg);
    if (exc != NULL) {
        PyErr_SetObject(PyExc_OSError, exc);
        Py_DECREF(exc);
    }
    return -1;
}

/* A piece of a write: the bytes of one write may come from several buffers. */
typedef struct {
    const void *p;
    Py_ssize_t n;
} Piece;

/*
 * Natively: the pieces back to back at dst (64-byte aligned), flushed, no
 * fence, each cache line stored once: whole lines are streamed (non-temporal),
 * a line that straddles two pieces is assembled on the stack first, a last
 * partial line is stored and flushed.  Copying piece by piece would store the
 * lines where pieces meet twice, the second time into a line just flushed: on
 * this project's machines that costs a round trip to memory each (a 4 KiB
 * overwrite's log, five pieces: 1.2-1.9 us instead of 0.35-0.7 us).
 */
#if DAXFS_X86
static void
native_writev(int mode, char *dst, const Piece *v, int count)
{
    _Alignas(64) char line[LINE];
    size_t fill = 0;
    for (int i = 0; i < count; i++) {
        const char *s = v[i].p;
        size_t n = (size_t)v[i].n;
        while (n > 0) {
            if (fill == 0 && n >= LINE) {
                size_t whole = n & ~(size_t)(LINE - 1);
                if (have_avx2)
                    nt_copy_avx2(dst, s, whole);
                else
                    nt_copy_sse2(dst, s, whole);
                dst += whole;
                s += whole;
                n -= whole;
                continue;
            }
            size_t k = LINE - fill < n ? LINE - fill : n;
            memcpy(line + fill, s, k);
            fill += k;
            s += k;
            n -= k;
            if (fill == LINE) {
                nt_copy_sse2(dst, line, LINE);
                dst += LINE;
                fill = 0;
            }
        }
    }
    if (fill) {
        memcpy(dst, line, fill);
        persist_flush(mode, dst, fill);
    }
}
#endif

/* Copy the pieces, back to back, to device offset off and flush them (no
 * fence): the Store's write(off, b"".join(pieces)). */
static int
dev_writev(Committer *c, Py_ssize_t off, const Piece *v, int count)
{
    int flush = 1;
    Py_ssize_t total = 0;
    if (planted_missing_flush > 0 && --planted_missing_flush == 0)
        flush = 0;
    if (c->mode != M_CALLBACK && flush) {
#if DAXFS_X86
        char *dst = c->base + off;
        if (count > 1 && c->mode != M_MSYNC && have_sse2 && ((uintptr_t)dst & (LINE - 1)) == 0) {
            native_writev(c->mode, dst, v, count);
            return 0;
        }
        /* the header and applied_seq: a few words in lines flushed at every commit */
        if (count == 1 && c->mode != M_MSYNC && have_sse2 && v[0].n < NT_THRESHOLD &&
            (((uintptr_t)dst | (uintptr_t)v[0].n) & 7) == 0) {
            nt_store_u64(dst, v[0].p, (size_t)v[0].n);
            return 0;
        }
#endif
        for (int i = 0; i < count; i++) {
            if (persist_copy(c->mode, c->base + off + total, v[i].p, (size_t)v[i].n) < 0)
                return os_error(errno, "msync", off + total, v[i].n);
            total += v[i].n;
        }
        return 0;
    }
    if (!flush) { /* the planted bug: stored, cached, never flushed (either mode) */
        for (int i = 0; i < count; i++) {
            memcpy(c->base + off + total, v[i].p, (size_t)v[i].n);
            total += v[i].n;
        }
        return 0;
    }
    for (int i = 0; i < count; i++)
        total += v[i].n;
    PyObject *data = PyBytes_FromStringAndSize(NULL, total);
    if (data == NULL)
        return -1;
    char *dst = PyBytes_AS_STRING(data);
    for (int i = 0; i < count; i++) {
        memcpy(dst, v[i].p, (size_t)v[i].n);
        dst += v[i].n;
    }
    PyObject *offset = PyLong_FromSsize_t(off);
    if (offset == NULL) {
        Py_DECREF(data);
        return -1;
    }
    PyObject *args[2] = {offset, data};
    PyObject *r = PyObject_Vectorcall(c->write, args, 2, NULL);
    Py_DECREF(offset);
    Py_DECREF(data);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

static int
dev_write(Committer *c, Py_ssize_t off, const void *src, Py_ssize_t n)
{
    Piece one = {src, n};
    return dev_writev(c, off, &one, 1);
}

/* The fence: every earlier dev_write is durable on return. */
static int
dev_drain(Committer *c)
{
    if (c->mode == M_CALLBACK) {
        PyObject *r = PyObject_CallNoArgs(c->drain);
        if (r == NULL)
            return -1;
        Py_DECREF(r);
        return 0;
    }
    persist_drain(c->mode);
    return 0;
}


/* crc32c of a 256-byte inode record with its checksum field taken as zero */
static uint32_t
inode_crc(const unsigned char *rec)
{
    return crc32c_with_hole(rec, INODE_SIZE, I_CRC);
}

static int
overlaps(Py_ssize_t a, Py_ssize_t alen, Py_ssize_t b, Py_ssize_t blen)
{
    return a < b + blen && b < a + alen;
}

static int
arg_u63(PyObject *o, const char *what, int64_t *out)
{
    if (!PyLong_Check(o)) {
        PyErr_Format(PyExc_TypeError, "%s must be an integer, not %.100s", what,
                     Py_TYPE(o)->tp_name);
        return -1;
    }
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (overflow || v < 0) {
        raise_invalid("%s %R is out of range", what, o);
        return -1;
    }
    *out = v;
    return 0;
}

/* crc32c of the pieces back to back */
static uint32_t
log_checksum(const Piece *log, int count)
{
    uint32_t crc = 0xFFFFFFFFu;
    for (int i = 0; i < count; i++)
        crc = crc_update(crc, log[i].p, (size_t)log[i].n);
    return ~crc;
}

/*
 * The commit sequence (the module docstring's steps 2-8), shared by both modes.
 * `log`: the pieces of the log payload; `rec`: the patched record.
 */
static int
commit_overwrite(Committer *c, uint64_t seq, Py_ssize_t data_off, const char *data,
                 Py_ssize_t n, Py_ssize_t inode_off, const unsigned char *rec, const Piece *log,
                 int log_pieces, Py_ssize_t log_bytes)
{
    unsigned char header[JH_SIZE];
    uint32_t log_crc = 0;
    c->stage = STAGE_NONE;
    /* The log's checksum is needed only by the header.  Natively it is computed
     * after the log's stores are issued: it then overlaps the drain of their
     * non-temporal stores instead of adding to it (the crc32 instruction and the
     * write-combining buffers work side by side until the fence); nothing else
     * runs meanwhile (the GIL is held), so the pieces are the bytes written.  In
     * callback mode the writer is Python code, during which another thread could
     * change a mutable buffer: the checksum is taken first, of the bytes the
     * writer is then given. */
    if (c->mode == M_CALLBACK)
        log_crc = log_checksum(log, log_pieces);
    if (dev_writev(c, c->log_offset, log, log_pieces) < 0)
        return -1;
    c->stage = STAGE_LOG;
    if (c->mode != M_CALLBACK)
        log_crc = log_checksum(log, log_pieces);
    /* fence 1: the log is durable before a header can point at it */
    if (dev_drain(c) < 0)
        return -1;
    memcpy(header, JOURNAL_MAGIC, 8);
    put_u64(header + 8, seq);
    put_u32(header + 16, 2);
    put_u32(header + 20, (uint32_t)log_bytes);
    put_u32(header + 24, log_crc);
    put_u32(header + JH_CRC, crc32c(header, JH_CRC));
    c->stage = STAGE_HEADER;
    if (dev_write(c, c->header_offset, header, JH_SIZE) < 0)
        return -1;
    if (dev_drain(c) < 0) /* COMMIT POINT: the transaction is durable */
        return -1;
    c->stage = STAGE_COMMITTED;
    if (dev_write(c, data_off, data, n) < 0 || dev_write(c, inode_off, rec, INODE_SIZE) < 0)
        return -1;
    /* Memory takes the committed values (Committer.pwrite's hook) while the stores
     * in place drain: it is no device operation, and it is done before the call
     * returns either way.  Its failure (no memory for an int) waits until the
     * transaction is applied: fence 3 and applied_seq come first. */
    PyObject *type = NULL, *value = NULL, *tb = NULL;
    if (c->applying != NULL && c->applying(c->applying_ctx, c->stamp) < 0)
        PyErr_Fetch(&type, &value, &tb);
    unsigned char applied[8];
    put_u64(applied, seq);
    if (dev_drain(c) < 0 || /* fence 3: applied in place */
        dev_write(c, c->header_offset + JH_APPLIED, applied, 8) < 0) {
        Py_XDECREF(type); /* the device's failure is the one to report */
        Py_XDECREF(value);
        Py_XDECREF(tb);
        return -1;
    }
    c->stage = STAGE_DONE;
    if (type != NULL) {
        PyErr_Restore(type, value, tb);
        return -1;
    }
    return 0;
}

/*
 * The whole small-overwrite commit: check, patch the record, build and commit
 * the log.  Returns 1 (committed; *stamp set), 0 (the committed record does
 * not match: nothing written) or -1 (an exception; c->stage says how far).
 */
static int
do_overwrite(Committer *c, int64_t seq, int64_t data_off, Py_buffer *data, int64_t inode_off,
             int64_t ino, int64_t size, int64_t mtime, int64_t end, int64_t *stamp)
{
    if ((uint64_t)seq >= SEQ_LIMIT || seq == 0) {
        raise_invalid("sequence number %lld is out of range", (long long)seq);
        return -1;
    }
    Py_buffer mem;
    if (PyObject_GetBuffer(c->view, &mem, PyBUF_WRITABLE) < 0)
        return -1;
    int rc = -1;
    Py_ssize_t n = data->len;
    Py_ssize_t jstart = c->header_offset, jlen = c->log_offset + c->capacity - c->header_offset;
    Py_ssize_t pad = -n & 7;
    c->stage = STAGE_NONE;
    /* invariant 1: every range checked before a byte moves */
    if (c->log_offset + c->capacity > mem.len || c->header_offset + JH_APPLIED + 8 > mem.len) {
        raise_invalid("the journal does not fit the view of %zd bytes", mem.len);
        goto done;
    }
    if (n <= 0 || n > c->capacity || data_off > mem.len - n) {
        raise_invalid("%zd bytes of data at device offset %lld are outside the filesystem",
                      n, (long long)data_off);
        goto done;
    }
    if (inode_off > mem.len - INODE_SIZE || (inode_off & (INODE_SIZE - 1))) {
        raise_invalid("inode %lld: record offset %lld is not in the filesystem", (long long)ino,
                      (long long)inode_off);
        goto done;
    }
    if (overlaps(data_off, n, jstart, jlen) || overlaps(inode_off, INODE_SIZE, jstart, jlen) ||
        overlaps(data_off, n, inode_off, INODE_SIZE)) {
        raise_invalid("overwrite of device offset %lld (inode %lld at %lld) targets the journal "
                      "or overlaps the inode record",
                      (long long)data_off, (long long)ino, (long long)inode_off);
        goto done;
    }
    Py_ssize_t log_bytes = JREC_SIZE + n + pad + JREC_SIZE + INODE_SIZE;
    if (log_bytes > c->capacity) {
        raise_invalid("a transaction of %zd bytes exceeds the %zd-byte log", log_bytes,
                      c->capacity);
        goto done;
    }
    /* the committed record (from the record cache, or read from the media and its
     * crc32c checked), checked against memory, patched */
    unsigned char rec[INODE_SIZE];
    RecCache *cached = &c->recs[(inode_off / INODE_SIZE) & (REC_CACHE - 1)];
    int chained = seq == c->last_seq + 1;
    if (chained && cached->off == inode_off && cached->seq >= c->chain_start) {
        memcpy(rec, cached->rec, INODE_SIZE);
        c->rec_hits++;
    } else {
        memcpy(rec, (char *)mem.buf + inode_off, INODE_SIZE);
        if (get_u32(rec + I_CRC) != inode_crc(rec)) {
            rc = 0;
            goto done;
        }
    }
    if (get_u32(rec) != INODE_MAGIC || get_u64(rec + I_INO) != (uint64_t)ino ||
        get_u64(rec + I_SIZE) != (uint64_t)size || get_u64(rec + I_MTIME) != (uint64_t)mtime) {
        rc = 0;
        goto done;
    }
    int64_t now = frozen_clock;
    if (now == 0) { /* time.time_ns(), as the reference stamps */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        now = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
    }
    c->stamp = now; /* before the commit: the applying hook and a failure read it */
    put_u64(rec + I_SIZE, (uint64_t)(end > size ? end : size));
    put_u64(rec + I_MTIME, (uint64_t)now);
    put_u64(rec + I_CTIME, (uint64_t)now);
    memset(rec + I_RESERVED, 0, 2);
    put_u32(rec + I_CRC, inode_crc(rec));
    /* the log payload, as journal._serialize lays it out, in pieces */
    static const unsigned char zeros[8];
    unsigned char jrec_data[JREC_SIZE], jrec_inode[JREC_SIZE];
    put_u64(jrec_data, (uint64_t)data_off);
    put_u32(jrec_data + 8, (uint32_t)n);
    put_u32(jrec_data + 12, 0);
    put_u64(jrec_inode, (uint64_t)inode_off);
    put_u32(jrec_inode + 8, INODE_SIZE);
    put_u32(jrec_inode + 12, 0);
    Piece log[5] = {{jrec_data, JREC_SIZE}, {data->buf, n}, {zeros, pad},
                    {jrec_inode, JREC_SIZE}, {rec, INODE_SIZE}};
    c->base = mem.buf;
    c->size = mem.len;
    if (commit_overwrite(c, (uint64_t)seq, data_off, data->buf, n, inode_off, rec, log, 5,
                         log_bytes) == 0) {
        c->commits++;
        *stamp = now;
        rc = 1;
        /* the media's record at inode_off is now `rec` (invariant 4) */
        if (!chained)
            c->chain_start = seq;
        c->last_seq = seq;
        cached->off = inode_off;
        cached->seq = seq;
        memcpy(cached->rec, rec, INODE_SIZE);
    } else {
        c->last_seq = -2; /* a failed commit ends the chain: nothing cached is trusted */
    }
    c->base = NULL;
done:
    PyBuffer_Release(&mem);
    return rc;
}

/*
 * overwrite(seq, data_offset, data, inode_offset, ino, size, mtime_ns, end) -> int
 *
 * Commit the transaction "data at data_offset; inode ino (at inode_offset,
 * whose size and mtime in memory are `size` and `mtime_ns`) gets size
 * max(size, end) and mtime = ctime = now" as transaction `seq`.  Returns the
 * time stamped (ns), or -1 if the committed record does not match (nothing
 * written: take the reference path).  The caller holds the journal lock.
 */
static PyObject *
Committer_overwrite(Committer *c, PyObject *const *args, Py_ssize_t nargs)
{
    int64_t seq, data_off, inode_off, ino, size, mtime, end, stamp = -1;
    if (nargs != 8) {
        PyErr_Format(PyExc_TypeError,
                     "overwrite(seq, data_offset, data, inode_offset, ino, size, mtime_ns, end)"
                     " takes 8 arguments, got %zd",
                     nargs);
        return NULL;
    }
    if (arg_u63(args[0], "seq", &seq) < 0 || arg_u63(args[1], "data_offset", &data_off) < 0 ||
        arg_u63(args[3], "inode_offset", &inode_off) < 0 || arg_u63(args[4], "ino", &ino) < 0 ||
        arg_u63(args[5], "size", &size) < 0 || arg_u63(args[6], "mtime_ns", &mtime) < 0 ||
        arg_u63(args[7], "end", &end) < 0)
        return NULL;
    Py_buffer data;
    if (PyObject_GetBuffer(args[2], &data, PyBUF_SIMPLE) < 0)
        return NULL;
    int rc = do_overwrite(c, seq, data_off, &data, inode_off, ino, size, mtime, end, &stamp);
    PyBuffer_Release(&data);
    if (rc < 0)
        return NULL;
    return PyLong_FromLongLong(rc ? stamp : -1);
}

/* ----------------------------------------------------------- the pwrite fast path
 *
 * File.pwrite's common case in one call: pwrite(journal, inode, data, pos)
 * does what File.pwrite -> DataPath.write -> Journal.overwrite do for an
 * overwrite inside the inode's cached written extent, with the same locks
 * (inode.lock, then the journal lock, each through its acquire/release
 * methods) and the same checks; anything else is a miss (None, nothing done,
 * no exception) and the caller takes the Python path.  The objects it reads
 * are the filesystem's own __slots__ classes: `configure` looks up each
 * field's slot offset once, every call checks the exact type of each object
 * before it reads a slot.  A device failure is handed, under both locks, to
 * journal._overwrite_failed (which may replace it with IOFailure), as the
 * Python path does.
 */

static PyObject *str_overwrite_failed;

/* store `x` (a new reference, stolen; NULL: failed) in a slot; -1 on failure */
static int
set_slot(PyObject *obj, Py_ssize_t offset, PyObject *x)
{
    if (x == NULL)
        return -1;
    PyObject **p = (PyObject **)((char *)obj + offset);
    Py_XSETREF(*p, x);
    return 0;
}

/* store a new int in a slot; -1 on failure */
static int
set_slot_int(PyObject *obj, Py_ssize_t offset, int64_t v)
{
    return set_slot(obj, offset, PyLong_FromLongLong(v));
}

/* an exact int in [0, 2^63); -1 otherwise (no exception) */
static inline int64_t
int_u63(PyObject *v)
{
    if (v == NULL || !PyLong_CheckExact(v))
        return -1;
    int overflow = 0;
    long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (overflow || x < 0) {
        PyErr_Clear();
        return -1;
    }
    return x;
}

/* a slot holding an exact int in [0, 2^63); -1 otherwise (no exception) */
static inline int64_t
slot_u63(PyObject *obj, Py_ssize_t offset)
{
    return int_u63(slot(obj, offset));
}

static PyObject *
Committer_configure(Committer *c, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"inode_type", "extent_type", "record_type", "locations",
                             "max_bytes", NULL};
    PyObject *it, *et, *rt, *loc;
    Py_ssize_t max_bytes;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!O!O!O!n:configure", kwlist, &PyType_Type,
                                     &it, &PyType_Type, &et, &PyType_Type, &rt, &PyDict_Type,
                                     &loc, &max_bytes))
        return NULL;
    if (max_bytes <= 0 || max_bytes > c->capacity)
        return raise_invalid("max_bytes %zd is out of range", max_bytes);
    Committer tmp = *c;
    if (slot_offset((PyTypeObject *)it, "rec", &tmp.o_rec) < 0 ||
        slot_offset((PyTypeObject *)it, "xcache", &tmp.o_xcache) < 0 ||
        slot_offset((PyTypeObject *)it, "layouts", &tmp.o_layouts) < 0 ||
        slot_offset((PyTypeObject *)et, "lblk", &tmp.o_lblk) < 0 ||
        slot_offset((PyTypeObject *)et, "pblk", &tmp.o_pblk) < 0 ||
        slot_offset((PyTypeObject *)et, "length", &tmp.o_length) < 0 ||
        slot_offset((PyTypeObject *)et, "flags", &tmp.o_flags) < 0 ||
        slot_offset((PyTypeObject *)rt, "ino", &tmp.o_ino) < 0 ||
        slot_offset((PyTypeObject *)rt, "size", &tmp.o_size) < 0 ||
        slot_offset((PyTypeObject *)rt, "mtime_ns", &tmp.o_mtime) < 0 ||
        slot_offset((PyTypeObject *)rt, "ctime_ns", &tmp.o_ctime) < 0)
        return NULL;
    if (slot_offset((PyTypeObject *)it, "lock", &tmp.o_lock) < 0) {
        PyErr_Clear(); /* a property (a lock made on demand): read it by name */
        tmp.o_lock = -1;
    }
    PyObject *types = PyTuple_Pack(3, it, et, rt);
    if (types == NULL)
        return NULL;
    c->o_rec = tmp.o_rec;
    c->o_xcache = tmp.o_xcache;
    c->o_layouts = tmp.o_layouts;
    c->o_lock = tmp.o_lock;
    c->o_lblk = tmp.o_lblk;
    c->o_pblk = tmp.o_pblk;
    c->o_length = tmp.o_length;
    c->o_flags = tmp.o_flags;
    c->o_ino = tmp.o_ino;
    c->o_size = tmp.o_size;
    c->o_mtime = tmp.o_mtime;
    c->o_ctime = tmp.o_ctime;
    c->max_bytes = max_bytes;
    c->inode_type = (PyTypeObject *)it;
    c->extent_type = (PyTypeObject *)et;
    c->record_type = (PyTypeObject *)rt;
    Py_XSETREF(c->types, types);
    Py_XSETREF(c->locations, Py_NewRef(loc));
    Py_RETURN_NONE;
}

/* The slow path's exception handling, under both locks: journal._overwrite_failed. */
static void
hand_failure(Committer *c, PyObject *journal, int64_t seq, PyObject *rec, int64_t end)
{
    PyObject *type, *exc, *tb;
    PyErr_Fetch(&type, &exc, &tb);
    PyErr_NormalizeException(&type, &exc, &tb);
    if (tb != NULL)
        PyException_SetTraceback(exc, tb);
    PyObject *s = PyLong_FromLongLong(seq), *e = PyLong_FromLongLong(end);
    if (s == NULL || e == NULL) {
        Py_XDECREF(s);
        Py_XDECREF(e);
        PyErr_Restore(type, exc, tb);
        return;
    }
    PyObject *stack[6] = {journal, (PyObject *)c, exc, s, rec, e};
    PyObject *r = PyObject_VectorcallMethod(str_overwrite_failed, stack,
                                            6 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    Py_DECREF(s);
    Py_DECREF(e);
    if (r == NULL) { /* it raised in place of exc (IOFailure from exc) */
        Py_XDECREF(type);
        Py_XDECREF(exc);
        Py_XDECREF(tb);
        return;
    }
    Py_DECREF(r);
    PyErr_Restore(type, exc, tb);
}

/* Bind the journal's class: the offsets of the slots pwrite reads and sets.  0, or -1
 * (no exception) if it lacks one: pwrite then misses, the Python path runs. */
static int
bind_journal(Committer *c, PyTypeObject *type)
{
    Py_ssize_t o[5];
    if (slot_offset(type, "lock", &o[0]) < 0 || slot_offset(type, "active", &o[1]) < 0 ||
        slot_offset(type, "failed", &o[2]) < 0 || slot_offset(type, "seq", &o[3]) < 0 ||
        slot_offset(type, "commits", &o[4]) < 0) {
        PyErr_Clear();
        return -1;
    }
    c->o_jlock = o[0];
    c->o_active = o[1];
    c->o_failed = o[2];
    c->o_seq = o[3];
    c->o_commits = o[4];
    Py_INCREF(type);
    Py_XSETREF(c->journal_type, type);
    return 0;
}

/* An overwrite the fast path takes: read under inode.lock (plan_write). */
typedef struct {
    PyObject *rec; /* inode.rec, a new reference (NULL unless planned) */
    int64_t n, end, addr, inode_off, ino, size, mtime;
} Plan;

/*
 * Under inode.lock: is this DataPath.write's overwrite case (inside the cached
 * written extent, no pins, at or below the size, at most max_bytes), and where
 * do the data and the inode record go?  1 (planned, *w filled), 0 (a miss, no
 * exception) or -1 (an exception).
 */
static int
plan_write(Committer *c, PyObject *inode, int64_t n, int64_t pos, Plan *w)
{
    /* block numbers up to 2^49: every byte offset below stays under 2^62, no overflow */
    int64_t blocks = ((int64_t)1 << (62 - BLOCK_SHIFT - 1));
    w->rec = NULL;
    PyObject *rec = slot(inode, c->o_rec), *ext = slot(inode, c->o_xcache);
    PyObject *layouts = slot(inode, c->o_layouts);
    if (rec == NULL || Py_TYPE(rec) != c->record_type || ext == NULL ||
        Py_TYPE(ext) != c->extent_type || (layouts != NULL && layouts != Py_None))
        return 0;
    int64_t flags = slot_u63(ext, c->o_flags), lblk = slot_u63(ext, c->o_lblk);
    int64_t pblk = slot_u63(ext, c->o_pblk), length = slot_u63(ext, c->o_length);
    int64_t size = slot_u63(rec, c->o_size), mtime = slot_u63(rec, c->o_mtime);
    int64_t ino = slot_u63(rec, c->o_ino);
    if (flags != 0 || lblk < 0 || lblk > blocks || pblk < 0 || pblk > blocks || length < 0 ||
        length > blocks || size < 0 || mtime < 0 || ino <= 0)
        return 0;
    int64_t lo = lblk << BLOCK_SHIFT, hi = (lblk + length) << BLOCK_SHIFT;
    if (n <= 0 || n > c->max_bytes || pos < lo || pos > size || pos > hi - n)
        return 0;
    /* the inode record's place: a location the inode table has cached */
    PyObject *key = PyLong_FromLongLong(ino >> 4);
    PyObject *where = key != NULL ? PyDict_GetItemWithError(c->locations, key) : NULL;
    Py_XDECREF(key);
    int64_t blockno = where != NULL && PyLong_CheckExact(where) ? int_u63(where) : -1;
    if (blockno < 0 || blockno > blocks)
        return PyErr_Occurred() ? -1 : 0;
    w->rec = Py_NewRef(rec);
    w->n = n;
    w->end = pos + n; /* <= hi: checked above without overflowing */
    w->addr = (pblk << BLOCK_SHIFT) + (pos - lo);
    w->inode_off = (blockno << BLOCK_SHIFT) + (ino & 15) * INODE_SIZE;
    w->ino = ino;
    w->size = size;
    w->mtime = mtime;
    return 1;
}

/* What set_memory needs: the commit's journal, plan and sequence number. */
typedef struct {
    Committer *c;
    PyObject *journal;
    Plan *w;
    int64_t seq;
} Applying;

/* Past the commit point, memory takes what the media holds (as Journal.overwrite
 * does): journal.seq, and the record's size, mtime and ctime.  0, or -1 with an
 * exception (then Journal._overwrite_failed sets them). */
static int
set_memory(void *ctx, int64_t stamp)
{
    Applying *a = ctx;
    Committer *c = a->c;
    PyObject *t = PyLong_FromLongLong(stamp);
    if (t == NULL || set_slot_int(a->journal, c->o_seq, a->seq) < 0 ||
        (a->w->end > a->w->size && set_slot_int(a->w->rec, c->o_size, a->w->end) < 0)) {
        Py_XDECREF(t);
        return -1;
    }
    set_slot(a->w->rec, c->o_mtime, Py_NewRef(t)); /* rec.mtime_ns = rec.ctime_ns = stamp */
    set_slot(a->w->rec, c->o_ctime, t);
    return 0;
}

/* Under both locks: Journal.overwrite's C case.  The bytes written (an int), None
 * (a miss: nothing written), or NULL with an exception (from _overwrite_failed). */
static PyObject *
commit_planned(Committer *c, PyObject *journal, Py_buffer *data, Plan *w)
{
    int usable = slot(journal, c->o_active) == Py_None && slot(journal, c->o_failed) == Py_None;
    int64_t seq = usable ? int_u63(slot(journal, c->o_seq)) : -1;
    if (seq < 0 || seq + 1 >= (int64_t)(SEQ_LIMIT - 1))
        Py_RETURN_NONE;
    seq += 1;
    int64_t stamp = -1;
    Applying a = {c, journal, w, seq};
    c->applying = set_memory;
    c->applying_ctx = &a;
    int rc = do_overwrite(c, seq, w->addr, data, w->inode_off, w->ino, w->size, w->mtime, w->end,
                          &stamp);
    c->applying = NULL;
    c->applying_ctx = NULL;
    if (rc == 0)
        Py_RETURN_NONE;
    if (rc < 0) { /* Journal._overwrite_failed: past the commit point it sets memory */
        hand_failure(c, journal, seq, w->rec, w->end);
        return NULL;
    }
    /* journal.commits is a statistic: a failure to count it is not the write's */
    int64_t count = int_u63(slot(journal, c->o_commits));
    if (count >= 0 && set_slot_int(journal, c->o_commits, count + 1) < 0)
        PyErr_Clear();
    return PyLong_FromLongLong(w->n);
}

/* Under inode.lock: commit_planned under the journal lock (its slot: bind_journal),
 * taken as Journal.overwrite takes it. */
static PyObject *
pwrite_journal(Committer *c, PyObject *journal, Py_buffer *data, Plan *w)
{
    PyObject *jlock = slot(journal, c->o_jlock), *result = NULL;
    if (jlock == NULL)
        Py_RETURN_NONE;
    Py_INCREF(jlock);
    if (lock_acquire(jlock) == 0) {
        result = commit_planned(c, journal, data, w);
        if (lock_release(jlock) < 0)
            Py_CLEAR(result);
    }
    Py_DECREF(jlock);
    return result;
}

/* The pwrite fast path: the bytes written (an int), None (a miss: nothing done, no
 * exception) or NULL with an exception. */
static PyObject *
committer_pwrite(Committer *c, PyObject *journal, PyObject *inode, PyObject *buf, PyObject *off)
{
    if (c->types == NULL || Py_TYPE(inode) != c->inode_type || !PyLong_CheckExact(off))
        Py_RETURN_NONE;
    if (Py_TYPE(journal) != c->journal_type && bind_journal(c, Py_TYPE(journal)) < 0)
        Py_RETURN_NONE;
    int overflow = 0;
    long long pos = PyLong_AsLongLongAndOverflow(off, &overflow);
    if (overflow || pos < 0) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    Py_buffer data;
    if (PyObject_GetBuffer(buf, &data, PyBUF_SIMPLE) < 0) {
        PyErr_Clear(); /* the Python path raises what memoryview(data) raises */
        Py_RETURN_NONE;
    }
    PyObject *lock;
    if (c->o_lock >= 0) {
        lock = slot(inode, c->o_lock);
        Py_XINCREF(lock);
    } else {
        lock = PyObject_GetAttr(inode, str_lock);
    }
    if (lock == NULL || lock_acquire(lock) < 0) {
        Py_XDECREF(lock);
        PyBuffer_Release(&data);
        if (PyErr_Occurred())
            return NULL;
        Py_RETURN_NONE;
    }
    /* with inode.lock: the case of DataPath.write's fast path */
    Plan w;
    int rc = plan_write(c, inode, data.len, pos, &w);
    PyObject *result = rc < 0    ? NULL
                       : rc == 0 ? Py_NewRef(Py_None)
                                 : pwrite_journal(c, journal, &data, &w);
    Py_XDECREF(w.rec);
    if (lock_release(lock) < 0)
        Py_CLEAR(result);
    Py_DECREF(lock);
    PyBuffer_Release(&data);
    return result;
}

/* pwrite(journal, inode, data, pos) -> int | None */
static PyObject *
Committer_pwrite(Committer *c, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "pwrite(journal, inode, data, pos)");
        return NULL;
    }
    return committer_pwrite(c, args[0], args[1], args[2], args[3]);
}

static PyObject *
Committer_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"view", "header_offset", "log_offset", "capacity", "mode",
                             "write", "drain", NULL};
    PyObject *view, *write = Py_None, *drain = Py_None;
    Py_ssize_t header_offset, log_offset, capacity;
    const char *mode_name;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "Onnns|OO:Committer", kwlist, &view,
                                     &header_offset, &log_offset, &capacity, &mode_name, &write,
                                     &drain))
        return NULL;
    int mode = strcmp(mode_name, "callback") == 0 ? M_CALLBACK : parse_persist_mode(mode_name);
    if (mode < 0)
        return NULL;
    if (mode == M_CALLBACK && (!PyCallable_Check(write) || !PyCallable_Check(drain)))
        return raise_invalid("callback mode needs write and drain callables");
    if (header_offset < 0 || log_offset <= header_offset || capacity <= 0 ||
        log_offset - header_offset < JH_APPLIED + 8)
        return raise_invalid("journal geometry header=%zd log=%zd capacity=%zd is invalid",
                             header_offset, log_offset, capacity);
    Committer *c = (Committer *)type->tp_alloc(type, 0);
    if (c == NULL)
        return NULL;
    c->view = Py_NewRef(view);
    c->write = Py_NewRef(write);
    c->drain = Py_NewRef(drain);
    c->mode = mode;
    c->header_offset = header_offset;
    c->log_offset = log_offset;
    c->capacity = capacity;
    c->last_seq = -2; /* no commit of its own yet: no sequence number follows it */
    for (int i = 0; i < REC_CACHE; i++)
        c->recs[i].off = -1;
    return (PyObject *)c;
}

static void
Committer_dealloc(Committer *c)
{
    Py_XDECREF(c->view);
    Py_XDECREF(c->write);
    Py_XDECREF(c->drain);
    Py_XDECREF(c->types);
    Py_XDECREF(c->locations);
    Py_XDECREF(c->journal_type);
    Py_TYPE(c)->tp_free((PyObject *)c);
}

static PyObject *
Committer_get_stage(Committer *c, void *unused)
{
    return PyLong_FromLong(c->stage);
}

static PyObject *
Committer_get_stamp(Committer *c, void *unused)
{
    return PyLong_FromLongLong(c->stamp);
}

static PyObject *
Committer_get_commits(Committer *c, void *unused)
{
    return PyLong_FromLongLong(c->commits);
}

static PyObject *
Committer_get_record_hits(Committer *c, void *unused)
{
    return PyLong_FromLongLong(c->rec_hits);
}

static PyObject *
Committer_get_mode(Committer *c, void *unused)
{
    return PyUnicode_FromString(c->mode == M_CALLBACK ? "callback" : persist_mode_names[c->mode]);
}

/* ------------------------------------------------- the commit of any transaction
 *
 * commit(seq, records) -> bool: Transaction.commit's steps 2-7 (journal.py)
 * for records (offset, buffer) the Python side gathered (sealed blocks' changed
 * lines, inode records, superblock counters, logged data): the log as
 * journal._serialize lays it out (a JREC header, the bytes, zero padding to 8,
 * per record), fence, the header (seq, nrecords, log_bytes, crc32c of the log),
 * fence (COMMIT POINT), every record copied to its place, fence, applied_seq;
 * the same device operations, in the same order, with the same bytes as the
 * reference, through dev_writev/dev_drain (so SimulatedPmem sees each one, and
 * plant_missing_flush reaches them).  Checked before a byte moves: every record
 * inside the view and outside the journal (EINVAL otherwise, nothing written).
 * Returns False, nothing written, when the log would not fit its area or there
 * are more than MAX_RECORDS records: the reference then runs (and raises
 * TransactionTooLarge).  `stage` says how far a failed commit got.  The caller
 * holds the journal lock.
 */
#define MAX_RECORDS 4096

static int
do_commit_records(Committer *c, int64_t seq, Py_buffer *bufs, Py_ssize_t *offs, Py_ssize_t n,
                  Py_buffer *mem)
{
    Py_ssize_t jstart = c->header_offset, jlen = c->log_offset + c->capacity - c->header_offset;
    Py_ssize_t log_bytes = 0;
    if (c->log_offset + c->capacity > mem->len || c->header_offset + JH_APPLIED + 8 > mem->len) {
        raise_invalid("the journal does not fit the view of %zd bytes", mem->len);
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t len = bufs[i].len;
        if (offs[i] > mem->len - len || overlaps(offs[i], len, jstart, jlen)) {
            raise_invalid("record %zd (%zd bytes at device offset %zd) is outside the "
                          "filesystem or targets the journal",
                          i, len, offs[i]);
            return -1;
        }
        log_bytes += JREC_SIZE + len + (-len & 7);
        if (log_bytes > c->capacity)
            return 0;
    }
    static const unsigned char zeros[8];
    unsigned char *jrecs = PyMem_Malloc((size_t)n * JREC_SIZE);
    Piece *log = PyMem_Malloc((size_t)n * 3 * sizeof(Piece));
    int rc = -1;
    if (jrecs == NULL || log == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    int pieces = 0;
    uint32_t crc = 0xFFFFFFFFu;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char *h = jrecs + i * JREC_SIZE;
        Py_ssize_t len = bufs[i].len;
        put_u64(h, (uint64_t)offs[i]);
        put_u32(h + 8, (uint32_t)len);
        put_u32(h + 12, 0);
        log[pieces++] = (Piece){h, JREC_SIZE};
        log[pieces++] = (Piece){bufs[i].buf, len};
        if (len & 7)
            log[pieces++] = (Piece){zeros, -len & 7};
    }
    for (int i = 0; i < pieces; i++)
        crc = crc_update(crc, log[i].p, (size_t)log[i].n);
    c->base = mem->buf;
    c->size = mem->len;
    c->stage = STAGE_NONE;
    if (c->mode == M_MSYNC) {
        /* one msync for the log, as the reference's one write of it (dev_writev
         * would msync each piece: three a record) */
        unsigned char *joined = PyMem_Malloc((size_t)log_bytes);
        if (joined == NULL) {
            PyErr_NoMemory();
            goto done;
        }
        Py_ssize_t at = 0;
        for (int i = 0; i < pieces; i++) {
            memcpy(joined + at, log[i].p, (size_t)log[i].n);
            at += log[i].n;
        }
        int failed = dev_write(c, c->log_offset, joined, log_bytes) < 0;
        PyMem_Free(joined);
        if (failed)
            goto done;
    } else if (dev_writev(c, c->log_offset, log, pieces) < 0)
        goto done;
    c->stage = STAGE_LOG;
    /* fence 1: the log (and every block written in place) is durable before a
     * header can point at it */
    if (dev_drain(c) < 0)
        goto done;
    unsigned char header[JH_SIZE];
    memcpy(header, JOURNAL_MAGIC, 8);
    put_u64(header + 8, (uint64_t)seq);
    put_u32(header + 16, (uint32_t)n);
    put_u32(header + 20, (uint32_t)log_bytes);
    put_u32(header + 24, ~crc);
    put_u32(header + JH_CRC, crc32c(header, JH_CRC));
    c->stage = STAGE_HEADER;
    if (dev_write(c, c->header_offset, header, JH_SIZE) < 0)
        goto done;
    if (dev_drain(c) < 0) /* COMMIT POINT: the transaction is durable */
        goto done;
    c->stage = STAGE_COMMITTED;
    for (Py_ssize_t i = 0; i < n; i++)
        if (dev_write(c, offs[i], bufs[i].buf, bufs[i].len) < 0)
            goto done;
    if (dev_drain(c) < 0) /* fence 3: applied in place */
        goto done;
    unsigned char applied[8];
    put_u64(applied, (uint64_t)seq);
    if (dev_write(c, c->header_offset + JH_APPLIED, applied, 8) < 0)
        goto done;
    c->stage = STAGE_DONE;
    rc = 1;
done:
    c->base = NULL;
    PyMem_Free(jrecs);
    PyMem_Free(log);
    return rc;
}

static PyObject *
Committer_commit(Committer *c, PyObject *const *args, Py_ssize_t nargs)
{
    int64_t seq;
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "commit(seq, records) takes 2 arguments, got %zd", nargs);
        return NULL;
    }
    if (arg_u63(args[0], "seq", &seq) < 0)
        return NULL;
    if ((uint64_t)seq >= SEQ_LIMIT || seq == 0) {
        raise_invalid("sequence number %lld is out of range", (long long)seq);
        return NULL;
    }
    PyObject *records = args[1];
    if (!PyList_CheckExact(records)) {
        PyErr_Format(PyExc_TypeError, "records must be a list, not %.100s",
                     Py_TYPE(records)->tp_name);
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(records);
    if (n == 0 || n > MAX_RECORDS)
        Py_RETURN_FALSE;
    c->stage = STAGE_NONE;
    Py_buffer *bufs = PyMem_Calloc((size_t)n, sizeof(Py_buffer));
    Py_ssize_t *offs = PyMem_Malloc((size_t)n * sizeof(Py_ssize_t));
    Py_ssize_t got = 0;
    int rc = -1;
    if (bufs == NULL || offs == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    /* the list is the caller's and is not touched by anything this call runs
     * before every buffer is held: the items are read once, here */
    for (; got < n; got++) {
        PyObject *item = PyList_GET_ITEM(records, got);
        int64_t off;
        if (!PyTuple_CheckExact(item) || PyTuple_GET_SIZE(item) != 2) {
            PyErr_SetString(PyExc_TypeError, "a record must be a tuple (offset, data)");
            goto done;
        }
        if (arg_u63(PyTuple_GET_ITEM(item, 0), "record offset", &off) < 0)
            goto done;
        if (PyObject_GetBuffer(PyTuple_GET_ITEM(item, 1), &bufs[got], PyBUF_SIMPLE) < 0)
            goto done;
        offs[got] = (Py_ssize_t)off;
    }
    Py_buffer mem;
    if (PyObject_GetBuffer(c->view, &mem, PyBUF_WRITABLE) < 0)
        goto done;
    rc = do_commit_records(c, seq, bufs, offs, n, &mem);
    PyBuffer_Release(&mem);
done:
    for (Py_ssize_t i = 0; i < got; i++)
        PyBuffer_Release(&bufs[i]);
    PyMem_Free(bufs);
    PyMem_Free(offs);
    if (rc < 0)
        return NULL;
    return PyBool_FromLong(rc);
}

static PyMethodDef Committer_methods[] = {
    {"overwrite", (PyCFunction)(void (*)(void))Committer_overwrite, METH_FASTCALL,
     "overwrite(seq, data_offset, data, inode_offset, ino, size, mtime_ns, end) -> int"},
    {"commit", (PyCFunction)(void (*)(void))Committer_commit, METH_FASTCALL,
     "commit(seq, records) -> bool: Transaction.commit's device operations for the "
     "records [(offset, data)]; False: nothing done, take the reference"},
    {"pwrite", (PyCFunction)(void (*)(void))Committer_pwrite, METH_FASTCALL,
     "pwrite(journal, inode, data, pos) -> int | None: File.pwrite's fast path"},
    {"configure", (PyCFunction)(void (*)(void))Committer_configure,
     METH_VARARGS | METH_KEYWORDS,
     "configure(inode_type, extent_type, record_type, locations, max_bytes): the pwrite "
     "fast path's classes"},
    {NULL}};

static PyGetSetDef Committer_getset[] = {
    {"stage", (getter)Committer_get_stage, NULL, "how far the last commit got (STAGE_*)", NULL},
    {"stamp", (getter)Committer_get_stamp, NULL, "mtime the last overwrite stamped (ns)", NULL},
    {"commits", (getter)Committer_get_commits, NULL, "overwrites committed", NULL},
    {"record_hits", (getter)Committer_get_record_hits, NULL,
     "overwrites that took the inode record from the record cache", NULL},
    {"mode", (getter)Committer_get_mode, NULL, "native persist mode, or callback", NULL},
    {NULL}};

static PyTypeObject CommitterType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "daxfs.fs._commit.Committer",
    .tp_basicsize = sizeof(Committer),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Committer(view, header_offset, log_offset, capacity, mode, write=None, "
              "drain=None): the journal's small-overwrite commit",
    .tp_new = Committer_new,
    .tp_dealloc = (destructor)Committer_dealloc,
    .tp_methods = Committer_methods,
    .tp_getset = Committer_getset,
};

/* ------------------------------------------------------------ File.pwrite, in C
 *
 * file_pwrite(File) -> a method descriptor to install as File.pwrite: the
 * Python method without its frame.  A call pwrite(data, offset) reads the
 * File's __slots__ _writer, _journal and inode (offsets found here, once; the
 * descriptor checks that self is a File) and, if _writer is a Committer, makes
 * the fast path's call (committer_pwrite, as Committer.pwrite); a miss, any
 * other call form, or a File without a writer (closed, read-only, appending,
 * direct) calls the Python method self._pwrite_slow with the arguments as
 * given, which raises what File.pwrite always raised.  An exception from the
 * commit is handed to self._pwrite_failed, which names the file.
 */

static Py_ssize_t f_writer = -1, f_journal = -1, f_inode = -1;
static PyObject *str_pwrite_slow, *str_pwrite_failed;

/* self._pwrite_failed(exc), which raises exc naming the file; NULL */
static PyObject *
file_pwrite_failed(PyObject *self)
{
    PyObject *type, *exc, *tb;
    PyErr_Fetch(&type, &exc, &tb);
    PyErr_NormalizeException(&type, &exc, &tb);
    if (tb != NULL)
        PyException_SetTraceback(exc, tb);
    Py_XDECREF(type);
    Py_XDECREF(tb);
    if (exc == NULL)
        return NULL;
    PyObject *r = PyObject_CallMethodOneArg(self, str_pwrite_failed, exc);
    Py_DECREF(exc);
    Py_XDECREF(r);
    if (r != NULL && !PyErr_Occurred())
        PyErr_SetString(PyExc_SystemError, "File._pwrite_failed returned");
    return NULL;
}

static PyObject *
file_pwrite(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *writer = nargs == 2 && kwnames == NULL ? slot(self, f_writer) : NULL;
    if (writer != NULL && Py_TYPE(writer) == &CommitterType) {
        PyObject *journal = slot(self, f_journal), *inode = slot(self, f_inode);
        if (journal != NULL && inode != NULL) {
            /* held for the call: the locks may let another thread run */
            Py_INCREF(writer);
            Py_INCREF(journal);
            Py_INCREF(inode);
            PyObject *r = committer_pwrite((Committer *)writer, journal, inode, args[0], args[1]);
            Py_DECREF(writer);
            Py_DECREF(journal);
            Py_DECREF(inode);
            if (r == NULL)
                return file_pwrite_failed(self);
            if (r != Py_None)
                return r;
            Py_DECREF(r);
        }
    }
    PyObject *slow = PyObject_GetAttr(self, str_pwrite_slow);
    if (slow == NULL)
        return NULL;
    PyObject *r = PyObject_Vectorcall(slow, args, nargs, kwnames);
    Py_DECREF(slow);
    return r;
}

static PyMethodDef file_pwrite_def = {
    "pwrite", (PyCFunction)(void (*)(void))file_pwrite, METH_FASTCALL | METH_KEYWORDS,
    "pwrite(data, offset) -> int: write data at offset, atomically and durably (File.pwrite; "
    "the fast path in C, else File._pwrite_slow)"};

static PyObject *
mod_rlock_fast(PyObject *mod, PyObject *unused)
{
    return PyBool_FromLong(rlock_fast);
}

static PyObject *
mod_file_pwrite(PyObject *mod, PyObject *cls)
{
    Py_ssize_t w, j, i;
    if (!PyType_Check(cls)) {
        PyErr_SetString(PyExc_TypeError, "file_pwrite(cls): a class");
        return NULL;
    }
    PyTypeObject *type = (PyTypeObject *)cls;
    if (slot_offset(type, "_writer", &w) < 0 || slot_offset(type, "_journal", &j) < 0 ||
        slot_offset(type, "inode", &i) < 0)
        return NULL;
    f_writer = w;
    f_journal = j;
    f_inode = i;
    return PyDescr_NewMethod(type, &file_pwrite_def);
}

/* ------------------------------------------------------------------ module */

static PyObject *
mod_crc32c(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer b;
    unsigned long value = 0;
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "crc32c(data, value=0)");
        return NULL;
    }
    if (nargs == 2) {
        value = PyLong_AsUnsignedLong(args[1]);
        if (value == (unsigned long)-1 && PyErr_Occurred())
            return NULL;
        if (value > 0xFFFFFFFFul)
            return raise_invalid("crc value %lu does not fit 32 bits", value);
    }
    if (PyObject_GetBuffer(args[0], &b, PyBUF_SIMPLE) < 0)
        return NULL;
    uint32_t crc = ~crc_update(~(uint32_t)value, b.buf, (size_t)b.len);
    PyBuffer_Release(&b);
    return PyLong_FromUnsignedLong(crc);
}

static PyObject *
plant_missing_flush(PyObject *self, PyObject *arg)
{
    long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    if (n < 0)
        return raise_invalid("plant_missing_flush: n must be >= 0, got %ld", n);
    long before = planted_missing_flush;
    planted_missing_flush = n;
    return PyLong_FromLong(before);
}

static PyObject *
freeze_clock(PyObject *self, PyObject *arg)
{
    long long t = PyLong_AsLongLong(arg);
    if (t == -1 && PyErr_Occurred())
        return NULL;
    if (t < 0)
        return raise_invalid("freeze_clock: time must be >= 0, got %lld", t);
    frozen_clock = t;
    Py_RETURN_NONE;
}

static PyObject *
layout(PyObject *self, PyObject *unused)
{
    return Py_BuildValue("{s:i,s:i,s:I,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:y#}", "BLOCK_SHIFT",
                         BLOCK_SHIFT, "INODE_SIZE", INODE_SIZE, "INODE_MAGIC", INODE_MAGIC,
                         "INODE_CRC_OFFSET", I_CRC, "ino", I_INO, "size", I_SIZE, "mtime_ns",
                         I_MTIME, "ctime_ns", I_CTIME, "reserved", I_RESERVED, "JREC_SIZE",
                         JREC_SIZE, "JH_CRC_OFFSET", JH_CRC, "JH_APPLIED_OFFSET", JH_APPLIED,
                         "JOURNAL_MAGIC", JOURNAL_MAGIC, (Py_ssize_t)8);
}

static PyMethodDef module_methods[] = {
    {"crc32c", (PyCFunction)(void (*)(void))mod_crc32c, METH_FASTCALL,
     "crc32c(data, value=0) -> int: the checksum the journal computes (for tests)"},
    {"plant_missing_flush", plant_missing_flush, METH_O,
     "plant_missing_flush(n) -> previous: the n-th device write from now is not flushed "
     "(a test hook; 0 disarms)"},
    {"freeze_clock", freeze_clock, METH_O,
     "freeze_clock(ns): every overwrite stamps ns (a test hook; 0: the real clock)"},
    {"set_error_class", set_error_class, METH_O,
     "set_error_class(cls): raise cls(message) for bad arguments"},
    {"layout", layout, METH_NOARGS, "layout() -> the format constants compiled in"},
    {"rlock_fast", mod_rlock_fast, METH_NOARGS,
     "rlock_fast() -> bool: whether the C RLock's uncontended acquire and release skip "
     "the method call (the layout check of daxfs/pmem/_pyutil.h passed)"},
    {"file_pwrite", mod_file_pwrite, METH_O,
     "file_pwrite(File) -> File.pwrite as a method descriptor in C (its misses call "
     "File._pwrite_slow)"},
    {NULL}};

static struct PyModuleDef moduledef = {PyModuleDef_HEAD_INIT, "daxfs.fs._commit",
                                       "The journal's small-overwrite commit, in C.", -1,
                                       module_methods};

PyMODINIT_FUNC
PyInit__commit(void)
{
    detect_cpu();
    crc_init();
    if (PyType_Ready(&CommitterType) < 0 || pyutil_init() < 0)
        return NULL;
    if ((str_overwrite_failed = PyUnicode_InternFromString("_overwrite_failed")) == NULL ||
        (str_pwrite_slow = PyUnicode_InternFromString("_pwrite_slow")) == NULL ||
        (str_pwrite_failed = PyUnicode_InternFromString("_pwrite_failed")) == NULL)
        return NULL;
    PyObject *m = PyModule_Create(&moduledef);
    if (m == NULL)
        return NULL;
    Py_INCREF(&CommitterType);
    if (PyModule_AddObject(m, "Committer", (PyObject *)&CommitterType) < 0 ||
        PyModule_AddIntConstant(m, "STAGE_NONE", STAGE_NONE) < 0 ||
        PyModule_AddIntConstant(m, "STAGE_LOG", STAGE_LOG) < 0 ||
        PyModule_AddIntConstant(m, "STAGE_HEADER", STAGE_HEADER) < 0 ||
        PyModule_AddIntConstant(m, "STAGE_COMMITTED", STAGE_COMMITTED) < 0 ||
        PyModule_AddIntConstant(m, "STAGE_DONE", STAGE_DONE) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
