/*
 * daxfs.fs._stat: the miss path of stat, in C.
 *
 * Theory of operation
 * -------------------
 * The reference is Python: FileSystem.stat walks the path (daxfs.fs.namei),
 * looks each name up in its directory (Directories.lookup: the dentry cache,
 * then the directory index DirIndex, then the B+tree), loads the inode
 * (InodeTable.get: decode, checksum, record_problem) and builds the
 * os.stat_result (FileSystem._stat_inode).  When a path's parent directory is
 * known (stat's path cache) and indexed, the last step -- one name in one
 * directory, then its inode -- is what a stat of a name not seen before costs,
 * and Python spends about 15 us on it.  StatPath does that step:
 *
 *     child(index, name, hwm, follow)
 *         1. key = BLAKE2b-64(hash_key, name)   (Directories.hash, byte for byte)
 *         2. probe the index: the pending changes (added, removed), else its
 *            sorted keys: through its bucket array (DirIndex.fence, built here,
 *            below) for 4096 keys or more, else an interpolation search; then
 *            a binary search; the slot's name compared byte for byte
 *            (DirIndex.find)
 *         3. the inode: cached in the inode table -> the result is built from
 *            the Inode's record in memory; else from media, below
 *     inode(ino, hwm)
 *         4. place the record through the inode table's location cache
 *            (InodeTable.places), prefetch it, copy its 256 bytes out of device
 *            memory, check them as InodeRecord.unpack_from, InodeTable.get and
 *            record_problem do (magic, crc32c, inode number, in use, mode,
 *            flags, size, map kind, inline counts); only then make the
 *            stat_result (a damaged record or a link to follow allocates nothing)
 *         5. build the os.stat_result as FileSystem._stat_inode does
 *
 *     stat(path, follow)
 *         the whole of FileSystem.stat for a str or bytes path, one call for a hit
 *         and a miss alike: take the filesystem lock without waiting (held by
 *         another thread: None, and Python waits for it), empty the path caches
 *         if Directories.removals moved since (the epoch), look the path up in
 *         its path cache (a hit: the inode's stat, cached or from media, 4-5),
 *         else path(path) -- child() of the path's HEAD from the path cache --
 *         and, if `remember`, put what it answered into the answer table
 *         (below; looked up before the path cache);
 *         release the lock.  Whatever else (the walk, an error) returns None,
 *         and FileSystem.stat's Python body, the reference, answers.
 *
 * Anything this module does not answer with certainty -- a key the index
 * keeps as "read the tree" (in its arrays or its pending changes), a name the
 * index lacks, a symbolic link to follow, an inode number or location it
 * cannot place, a record that fails a check -- returns -1 (or None), and the
 * caller takes the reference path, which then raises the error the reference
 * raises (with its errno and path).  So the fast path only ever answers what
 * the reference would answer, and never raises for media it dislikes.
 *
 * Invariants
 *   1. Only device memory and the caller's objects are read; nothing of the
 *      filesystem is written (5 says what is cached).
 *   2. The record is copied out of device memory before it is checked, and
 *      only the copy is used (media is untrusted, and may change under us).
 *   3. Every offset is checked against the view's length before a byte is
 *      read.
 *   4. The layout constants come from daxfs.fs.layout (the constructor's
 *      `constants`); none is written here.
 *   5. What is written: by stat(), the path caches (emptied at an epoch change,
 *      as FileSystem.stat does), its answer table and counters; by path(), LastHead
 *      (the last HEAD found in the path cache, kept while that dict is unchanged);
 *      by every probe
 *      (stat, path, child), a big index's bucket array (DirIndex.fence) and the
 *      merge of its pending changes (settle: DirIndex.merge, which changes no
 *      answer).  All under the filesystem lock (stat() holds it for the whole
 *      call, path and child are called under it): no other thread sees half of
 *      it, and it never sees another thread's operation half made.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>

#include "../pmem/_pyutil.h"
#include "_media.h"

/* STEP(i): with -DDAXFS_STAT_STEPS (bench/stat_steps.py builds it so; never the module
 * daxfs imports), the TSC cycles since the step before, added to step i, behind an
 * lfence each, so that a step's memory waits are its own; a step over STEP_OUTLIER
 * cycles (the thread preempted) is counted in STEP_DROPPED instead.  Else nothing. */
#ifdef DAXFS_STAT_STEPS
#include <x86intrin.h>
#define STEPS 16
#define STEP_DROPPED 15
#define STEP_OUTLIER 20000
static unsigned long long step_cycles[STEPS], step_count[STEPS], step_last;
#define STEP_START() (_mm_lfence(), step_last = __rdtsc())
#define STEP(i)                                                                              \
    do {                                                                                     \
        _mm_lfence();                                                                        \
        unsigned long long now_ = __rdtsc();                                                 \
        if (now_ - step_last < STEP_OUTLIER) {                                               \
            step_cycles[i] += now_ - step_last;                                              \
            step_count[i]++;                                                                 \
        } else                                                                               \
            step_count[STEP_DROPPED]++;                                                      \
        step_last = now_;                                                                    \
    } while (0)
#else
#define STEP_START() ((void)0)
#define STEP(i) ((void)0)
#endif

#define S_FMT 0170000u
#define S_REG 0100000u
#define S_DIR 0040000u
#define S_LNK 0120000u
#define RECORD 256
#define SLOT 16 /* DirIndex: a length byte and 15 name bytes */
#define STAT_FIELDS 19
#define INTERPOLATIONS 4 /* then a binary search of what is left */
#define FENCE_MIN 4096   /* keys from which an index gets a bucket array (fence) */
#define SETTLE_MIN 1024  /* probes of unchanged pending changes before settle() merges */
#define FENCE_KEYS 64    /* keys a bucket of the bucket array, at least (fence_of) */
#define GUESS_SPAN 8     /* keys either side of a bucket guess whose lines are fetched */
#define FAST_PATH_CHARS 1023 /* 4 bytes a character at most: under MAX_PATH (4095) */
#define LAST_HEAD 62         /* bytes of a HEAD path() remembers (LastHead) */

/* The version tag of a dict, which CPython moves at every change of it (PEP 509): the
 * same dict with an equal tag gives the same answer to a lookup.  Deprecated from 3.12:
 * there, path() looks HEAD up in the dict every time (no LastHead). */
#if PY_VERSION_HEX < 0x030C0000
#define DICT_VERSION(d) (((PyDictObject *)(d))->ma_version_tag)
#endif

/* ------------------------------------------------------------------ BLAKE2b (RFC 7693) */

static const uint64_t blake2b_iv[8] = {
    0x6A09E667F3BCC908ULL, 0xBB67AE8584CAA73BULL, 0x3C6EF372FE94F82BULL,
    0xA54FF53A5F1D36F1ULL, 0x510E527FADE682D1ULL, 0x9B05688C2B3E6C1FULL,
    0x1F83D9ABFB41BD6BULL, 0x5BE0CD19137E2179ULL};

static const uint8_t sigma[12][16] = {
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
    {11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4},
    {7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8},
    {9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13},
    {2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9},
    {12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11},
    {13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10},
    {6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5},
    {10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0},
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3}};

static inline uint64_t
rotr64(uint64_t x, int n)
{
    return (x >> n) | (x << (64 - n));
}

#define G(a, b, c, d, x, y)                                                                  \
    do {                                                                                     \
        v[a] = v[a] + v[b] + (x);                                                            \
        v[d] = rotr64(v[d] ^ v[a], 32);                                                      \
        v[c] = v[c] + v[d];                                                                  \
        v[b] = rotr64(v[b] ^ v[c], 24);                                                      \
        v[a] = v[a] + v[b] + (y);                                                            \
        v[d] = rotr64(v[d] ^ v[a], 16);                                                      \
        v[c] = v[c] + v[d];                                                                  \
        v[b] = rotr64(v[b] ^ v[c], 63);                                                      \
    } while (0)

/* compress one 128-byte block into h; t = bytes hashed so far, last: the final block */
static void
blake2b_compress(uint64_t h[8], const unsigned char *block, uint64_t t, int last)
{
    uint64_t v[16], m[16];
    for (int i = 0; i < 16; i++)
        m[i] = get_u64(block + 8 * i); /* little-endian: _media.h */
    for (int i = 0; i < 8; i++) {
        v[i] = h[i];
        v[i + 8] = blake2b_iv[i];
    }
    v[12] ^= t; /* the high half of the 128-bit counter stays 0: names are short */
    if (last)
        v[14] = ~v[14];
    for (int r = 0; r < 12; r++) {
        const uint8_t *s = sigma[r];
        G(0, 4, 8, 12, m[s[0]], m[s[1]]);
        G(1, 5, 9, 13, m[s[2]], m[s[3]]);
        G(2, 6, 10, 14, m[s[4]], m[s[5]]);
        G(3, 7, 11, 15, m[s[6]], m[s[7]]);
        G(0, 5, 10, 15, m[s[8]], m[s[9]]);
        G(1, 6, 11, 12, m[s[10]], m[s[11]]);
        G(2, 7, 8, 13, m[s[12]], m[s[13]]);
        G(3, 4, 9, 14, m[s[14]], m[s[15]]);
    }
    for (int i = 0; i < 8; i++)
        h[i] ^= v[i] ^ v[i + 8];
}

/* the state after the key block of BLAKE2b with an 8-byte digest and `key` */
static void
blake2b_keyed_init(uint64_t h[8], const unsigned char *key, size_t keylen)
{
    unsigned char block[128] = {0};
    memcpy(h, blake2b_iv, sizeof blake2b_iv);
    h[0] ^= 0x01010000ULL ^ ((uint64_t)keylen << 8) ^ 8u;
    memcpy(block, key, keylen);
    blake2b_compress(h, block, 128, 0); /* never the last block: names are not empty */
}

/* the 8-byte digest, as int.from_bytes(digest, "little"), of a name of 1..MAX bytes */
static uint64_t
blake2b_name(const uint64_t h0[8], const unsigned char *name, size_t n)
{
    uint64_t h[8];
    unsigned char block[128];
    uint64_t t = 128;
    memcpy(h, h0, sizeof h);
    while (n > 128) {
        t += 128;
        blake2b_compress(h, name, t, 0);
        name += 128;
        n -= 128;
    }
    memset(block, 0, sizeof block);
    memcpy(block, name, n);
    blake2b_compress(h, block, t + n, 1);
    return h[0];
}

/* ------------------------------------------------------------------ the StatPath object */

typedef struct {
    PyObject_HEAD
    uint64_t h0[8];        /* BLAKE2b after the key block */
    PyObject *view;        /* the store's view of the whole filesystem */
    PyObject *places;      /* array('Q'): inode-file block -> device block, 0: not known */
    PyObject *cache;       /* dict (an OrderedDict): ino -> Inode */
    PyObject *stat_type;   /* os.stat_result */
    PyObject *dev;         /* st_dev */
    PyTypeObject *index_type;
    Py_ssize_t o_keys, o_values, o_names, o_added, o_removed, o_generation, o_fence;
    /* path(): stat's path caches of directories (str, bytes; follow=True), the
     * directory indexes by ino, and the Inode and InodeRecord fields read */
    PyObject *heads, *bheads, *indexes;
    PyTypeObject *inode_type, *record_type;
    Py_ssize_t o_rec, o_mode, o_rgeneration;
    Py_ssize_t o_f[10]; /* InodeRecord: ino mode nlink uid gid size blocks a/m/ctime_ns */
    PyObject *root;
    /* path(): the last HEAD it found in heads or bheads (see LastHead) */
    PyObject *last_parent; /* its ino (a reference), or NULL */
    uint64_t last_version; /* the dict's version tag then */
    uint8_t last_kind;     /* 1 + bytes */
    uint8_t last_len;
    char last_head[LAST_HEAD];
    /* stat(): the whole of FileSystem.stat for str and bytes paths (see stat_call) */
    PyObject *paths[2][2];   /* [bytes?][follow?]: stat's path caches (ino by path) */
    PyObject *acquire, *release; /* the filesystem lock's bound methods */
    PyObject *dirs;          /* Directories: its `removals` is the path caches' epoch */
    PyObject *sb;            /* the Superblock (slots): inode_hwm */
    Py_ssize_t o_hwm;
    long long epoch;         /* removals when the path caches were last emptied here */
    Py_ssize_t limit;        /* PATH_CACHE_LIMIT */
    unsigned long long hits, misses; /* answered from the path cache / not */
    char remember;           /* a miss stat() answers goes into the answer table */
    struct Answer *answers;  /* the answer table (ANSWERS slots), or NULL */
    /* settle(): the index last probed with pending changes (compared, never read),
     * their number then, and the probes since that saw that number */
    uintptr_t settle_index;
    Py_ssize_t settle_seen, settle_reads;
    unsigned long long merges; /* DirIndex.merge calls settle() made */
    unsigned long long fences; /* bucket arrays fence_of() built */
    Py_ssize_t fence_min;      /* keys from which an index gets one (FENCE_MIN; tests lower it) */
    uint64_t token;          /* what a current slot holds; moved by an epoch and forget() */
    /* the layout (daxfs.fs.layout) */
    uint32_t magic;
    uint64_t max_file_size, max_symlink, inline_xattr_area, extent_size, inline_area;
    uint32_t flag_orphan, flag_truncate, flag_dax;
    unsigned map_none, map_inline, map_btree, map_symlink;
    uint64_t block_size, inodes_per_block, ino_limit;
    unsigned block_shift, ipb_shift; /* both are powers of two (checked): no divisions */
} StatPath;

/* The answer table: stat()'s own cache of the paths the C miss path answered, path ->
 * ino, beside the path caches (Python dicts, which the walk fills).  Direct-mapped by
 * the path's Python hash, ANSWERS slots of one cache line each, the path's bytes kept
 * in the slot (no reference to the path object): a lookup reads one line, an insert
 * overwrites it, and nothing grows, is resized or is emptied one by one.  A slot is
 * current while its token is the table's, which moves whenever the path caches are
 * emptied (an epoch change: a name removed or retargeted; forget()), so it answers
 * exactly what the path caches would.  Only compact ASCII str paths and bytes paths of
 * at most ANSWER_PATH bytes are kept; the rest are answered by the miss path each time. */
#define ANSWERS 4096
#define ANSWER_PATH 38
typedef struct Answer {
    uint64_t hash;  /* the path's hash(), as Python computes it */
    uint64_t ino;
    uint64_t token; /* StatPath.token when answered */
    uint8_t kind;   /* 1 + bytes + 2 * follow */
    uint8_t len;
    char path[ANSWER_PATH];
} Answer;

/* the path's bytes for the table (compact ASCII str, or bytes), else NULL */
static const char *
answer_key(PyObject *path, int bytes, Py_ssize_t *len)
{
    if (bytes) {
        *len = PyBytes_GET_SIZE(path);
        return *len <= ANSWER_PATH ? PyBytes_AS_STRING(path) : NULL;
    }
    if (!PyUnicode_IS_COMPACT_ASCII(path))
        return NULL;
    *len = PyUnicode_GET_LENGTH(path);
    return *len <= ANSWER_PATH ? (const char *)PyUnicode_DATA(path) : NULL;
}

/* crc32c of a record with its checksum field (bytes 4..8) taken as zero */
static uint32_t
record_crc(const unsigned char *rec)
{
    return crc32c_with_hole(rec, RECORD, 4);
}

/* ------------------------------------------------------------------ the record */

/* record_problem of daxfs.fs.inode, plus unpack_from's and get's checks: 1 if usable */
static int
record_ok(StatPath *s, const unsigned char *rec, uint64_t ino)
{
    if (get_u32(rec) != s->magic || get_u32(rec + 4) != record_crc(rec) ||
        get_u64(rec + 8) != ino)
        return 0;
    uint32_t mode = get_u32(rec + 16), flags = get_u32(rec + 84);
    uint64_t size = get_u64(rec + 32);
    unsigned kind = rec[104];
    unsigned count = get_u16(rec + 106);
    unsigned xattr_bytes = get_u16(rec + 108); /* inline xattrs, at the end of the extents' room */
    uint32_t fmt = mode & S_FMT;
    if (mode == 0 || (mode & ~(fmt | 07777u)))
        return 0;
    int kind_ok;
    if (fmt == S_REG)
        kind_ok = kind == s->map_none || kind == s->map_inline || kind == s->map_btree;
    else if (fmt == S_DIR)
        kind_ok = kind == s->map_none || kind == s->map_btree;
    else if (fmt == S_LNK)
        kind_ok = kind == s->map_none || kind == s->map_inline || kind == s->map_btree ||
                  kind == s->map_symlink;
    else
        return 0;
    if (!kind_ok)
        return 0;
    if (flags & ~(s->flag_orphan | (fmt == S_REG ? s->flag_truncate : 0) |
                  (fmt != S_LNK ? s->flag_dax : 0)))
        return 0;
    if (size > (fmt == S_LNK ? s->max_symlink : s->max_file_size))
        return 0;
    if (xattr_bytes && ((fmt != S_REG && fmt != S_DIR) || xattr_bytes > s->inline_xattr_area))
        return 0;
    if (kind == s->map_inline && count > (s->inline_xattr_area - xattr_bytes) / s->extent_size)
        return 0;
    if (kind == s->map_symlink && !(0 < size && size == count && count <= s->inline_area))
        return 0;
    return 1;
}

static int
set_item(PyObject *result, Py_ssize_t i, PyObject *value)
{
    if (value == NULL)
        return -1;
    PyStructSequence_SET_ITEM(result, i, value);
    return 0;
}

/* the fields of a record stat reports */
typedef struct {
    uint64_t ino, size, blocks;
    uint32_t mode, nlink, uid, gid;
    int64_t times[3]; /* atime, mtime, ctime (ns) */
} Fields;

static void
fields_of_record(Fields *f, const unsigned char *rec)
{
    f->ino = get_u64(rec + 8);
    f->mode = get_u32(rec + 16);
    f->nlink = get_u32(rec + 20);
    f->uid = get_u32(rec + 24);
    f->gid = get_u32(rec + 28);
    f->size = get_u64(rec + 32);
    f->blocks = get_u64(rec + 40);
    memcpy(&f->times[0], rec + 48, 8);
    memcpy(&f->times[1], rec + 56, 8);
    memcpy(&f->times[2], rec + 64, 8);
}

/* one field of an InodeRecord in memory, if it fits the media's width: 1, else 0 */
static int
record_field(PyObject *rec, Py_ssize_t offset, int is_signed, uint64_t limit, uint64_t *out)
{
    PyObject *v = slot(rec, offset);
    if (v == NULL || !PyLong_CheckExact(v))
        return 0;
    if (is_signed) {
        long long x = PyLong_AsLongLong(v);
        if (x == -1 && PyErr_Occurred()) {
            PyErr_Clear();
            return 0;
        }
        *out = (uint64_t)x;
        return 1;
    }
    unsigned long long x = PyLong_AsUnsignedLongLong(v);
    if (x == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    *out = x;
    return x <= limit;
}

/* the fields of a cached Inode's record (the in-memory truth): 1, or 0 if one does not
 * fit its width on media (the caller lets _stat_inode, in Python, answer) */
static int
fields_of_inode(StatPath *s, Fields *f, PyObject *inode)
{
    if (Py_TYPE(inode) != s->inode_type)
        return 0;
    PyObject *rec = slot(inode, s->o_rec);
    if (rec == NULL || Py_TYPE(rec) != s->record_type)
        return 0;
    uint64_t v[10];
    const uint64_t U32 = 0xFFFFFFFFu, U64 = UINT64_MAX;
    if (!record_field(rec, s->o_f[0], 0, U64, &v[0]) ||
        !record_field(rec, s->o_f[1], 0, U32, &v[1]) ||
        !record_field(rec, s->o_f[2], 0, U32, &v[2]) ||
        !record_field(rec, s->o_f[3], 0, U32, &v[3]) ||
        !record_field(rec, s->o_f[4], 0, U32, &v[4]) ||
        !record_field(rec, s->o_f[5], 0, U64, &v[5]) ||
        !record_field(rec, s->o_f[6], 0, U64, &v[6]) ||
        !record_field(rec, s->o_f[7], 1, 0, &v[7]) || !record_field(rec, s->o_f[8], 1, 0, &v[8]) ||
        !record_field(rec, s->o_f[9], 1, 0, &v[9]))
        return 0;
    f->ino = v[0];
    f->mode = (uint32_t)v[1];
    f->nlink = (uint32_t)v[2];
    f->uid = (uint32_t)v[3];
    f->gid = (uint32_t)v[4];
    f->size = v[5];
    f->blocks = v[6];
    for (int i = 0; i < 3; i++)
        f->times[i] = (int64_t)v[7 + i];
    return 1;
}

/* an os.stat_result with the fields that depend on no inode filled in (st_dev,
 * st_blksize, st_rdev), for finish_stat: made while a record is on its way from memory */
static PyObject *
start_stat(StatPath *s)
{
    PyObject *r = PyStructSequence_New((PyTypeObject *)s->stat_type);
    if (r == NULL)
        return NULL;
    if (set_item(r, 2, Py_NewRef(s->dev)) ||
        set_item(r, 16, PyLong_FromUnsignedLongLong(s->block_size)) ||
        set_item(r, 18, PyLong_FromLong(0))) {
        Py_DECREF(r); /* structseq_dealloc skips the fields still NULL */
        return NULL;
    }
    return r;
}

/* os.stat_result of the fields, as FileSystem._stat_inode builds it, in `r` (from
 * start_stat; its reference is taken); None if Python's integers must answer (a
 * directory's size past 64 bits) */
static PyObject *
finish_stat(StatPath *s, PyObject *r, const Fields *f)
{
    uint64_t blocks = f->blocks;
    if (blocks > UINT64_MAX / s->block_size) {
        Py_DECREF(r);
        return Py_NewRef(Py_None);
    }
    uint64_t size = (f->mode & S_FMT) == S_DIR ? (blocks > 1 ? blocks : 1) * s->block_size
                                                : f->size;
    int bad = set_item(r, 0, PyLong_FromUnsignedLong(f->mode)) ||
              set_item(r, 1, PyLong_FromUnsignedLongLong(f->ino)) ||
              set_item(r, 3, PyLong_FromUnsignedLong(f->nlink)) ||
              set_item(r, 4, PyLong_FromUnsignedLong(f->uid)) ||
              set_item(r, 5, PyLong_FromUnsignedLong(f->gid)) ||
              set_item(r, 6, PyLong_FromUnsignedLongLong(size));
    for (int i = 0; i < 3 && !bad; i++) {
        /* Python's floor division and true division of the ns time */
        int64_t t = f->times[i], sec = t / 1000000000, rem = t % 1000000000;
        if (rem < 0)
            sec -= 1;
        bad = set_item(r, 7 + i, PyLong_FromLongLong(sec)) ||
              set_item(r, 10 + i, PyFloat_FromDouble((double)t / 1e9)) ||
              set_item(r, 13 + i, PyLong_FromLongLong(t));
    }
    if (!bad)
        bad = set_item(r, 17, PyLong_FromUnsignedLongLong(blocks * (s->block_size / 512)));
    if (bad) {
        Py_DECREF(r);
        return NULL;
    }
    return r;
}

/* os.stat_result of the fields (finish_stat of a new start_stat) */
static PyObject *
build_stat(StatPath *s, const Fields *f)
{
    PyObject *r = start_stat(s);
    return r == NULL ? NULL : finish_stat(s, r, f);
}

/* the device block holding inode `ino` (InodeTable.places) in *blockno, 0: not known;
 * -1 with an exception if the array cannot be read (every value of it is a block
 * number, to be checked against the view: none is taken for an error) */
static int
place(StatPath *s, uint64_t ino, uint64_t *blockno)
{
    Py_buffer pb;
    if (PyObject_GetBuffer(s->places, &pb, PyBUF_SIMPLE) < 0)
        return -1;
    uint64_t fblock = ino >> s->ipb_shift;
    *blockno = 0;
    if (fblock < (uint64_t)pb.len / 8)
        *blockno = get_u64((const unsigned char *)pb.buf + 8 * fblock);
    PyBuffer_Release(&pb);
    return 0;
}

/* stat_result of inode `ino` from device memory; None if the reference must answer.
 * `cached`: first look the inode up in the inode cache, and if it is there return its
 * number (the caller answers from the Inode in memory, the truth inside a transaction) */
static PyObject *
stat_from_media(StatPath *s, uint64_t ino, uint64_t hwm, int refuse_link, int cached)
{
    if (ino == 0 || ino >= hwm || ino >= s->ino_limit)
        Py_RETURN_NONE;
    uint64_t blockno;
    if (place(s, ino, &blockno) < 0)
        return NULL;
    Py_buffer mem;
    if (PyObject_GetBuffer(s->view, &mem, PyBUF_SIMPLE) < 0)
        return NULL;
    uint64_t offset = 0;
    int placed = blockno != 0 && blockno < (uint64_t)mem.len >> s->block_shift;
    if (placed) {
        offset = (blockno << s->block_shift) + (ino & (s->inodes_per_block - 1)) * RECORD;
        placed = offset + RECORD <= (uint64_t)mem.len; /* invariant 3 */
    }
    STEP(7);
    if (placed) /* fetch the record while the cache is searched */
        for (int i = 0; i < RECORD; i += 64)
            __builtin_prefetch((const char *)mem.buf + offset + i);
    if (cached) {
        PyObject *pino = PyLong_FromUnsignedLongLong(ino);
        PyObject *inode = pino != NULL ? PyDict_GetItemWithError(s->cache, pino) : NULL;
        if (inode != NULL || pino == NULL || PyErr_Occurred()) {
            PyBuffer_Release(&mem);
            if (inode == NULL) {
                Py_XDECREF(pino);
                return NULL;
            }
            /* in memory (the truth inside a transaction): built from the Inode */
            Fields f;
            if (!fields_of_inode(s, &f, inode) || (refuse_link && (f.mode & S_FMT) == S_LNK))
                return pino; /* the caller answers from the Inode (or walks, for a link) */
            PyObject *r = build_stat(s, &f);
            if (r == Py_None) {
                Py_DECREF(r);
                return pino;
            }
            Py_DECREF(pino);
            return r;
        }
        Py_DECREF(pino);
    }
    if (!placed) {
        PyBuffer_Release(&mem);
        Py_RETURN_NONE; /* not placed yet: the reference finds it */
    }
    STEP(8);
    unsigned char rec[RECORD];
    memcpy(rec, (const char *)mem.buf + offset, RECORD); /* invariant 2 */
    STEP(9);
    PyBuffer_Release(&mem);
    if (!record_ok(s, rec, ino) ||
        (refuse_link && (get_u32(rec + 16) & S_FMT) == S_LNK))
        /* damaged (the reference raises), or a symbolic link to follow (the walk does) */
        Py_RETURN_NONE;
    STEP(10);
    Fields f;
    fields_of_record(&f, rec);
    STEP(11);
    PyObject *r = build_stat(s, &f); /* after the checks: nothing made for a refusal */
    STEP(12);
    return r;
}

/* an entry of DirIndex.added, (value, 16-byte slot), for `name`: as probe() */
static int
pending(PyObject *record, const char *name, Py_ssize_t n, uint64_t *value)
{
    if (!PyTuple_CheckExact(record) || PyTuple_GET_SIZE(record) != 2)
        return -1;
    PyObject *pv = PyTuple_GET_ITEM(record, 0), *ps = PyTuple_GET_ITEM(record, 1);
    if (!PyLong_CheckExact(pv) || !PyBytes_CheckExact(ps) || PyBytes_GET_SIZE(ps) != SLOT)
        return -1;
    uint64_t v = PyLong_AsUnsignedLongLong(pv);
    if (v == (uint64_t)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        return -1;
    }
    if (v == 0)
        return -1; /* _TREE: read the tree */
    const unsigned char *slotp = (const unsigned char *)PyBytes_AS_STRING(ps);
    if (slotp[0] != n || memcmp(slotp + 1, name, (size_t)n) != 0)
        return 0; /* the key's single entry has another name */
    *value = v;
    return 1;
}

/* ------------------------------------------------------------------ the bucket array */

/* DirIndex.fence: where each 2^bits-th of the key space starts in `keys`.  The keys
 * are keyed hashes, spread evenly: 2^bits is the power of two at or under the keys /
 * FENCE_KEYS, about 64-128 keys a bucket, so the array is small enough to stay in the
 * cache (64 KiB for a million keys: 1/16-1/32 byte a key).  A probe reads the key's
 * bucket's bounds, guesses its place in the bucket from the key's own bits (the key
 * is about that far into its bucket, within a few keys: GUESS_SPAN), fetches the
 * lines of keys, values and names around the guess at once, and gallops from the
 * guess: where a bucket of 4-8 keys (a 1 MiB array for a million keys) cost one
 * cache miss for the bucket's bounds and then another for its keys, and the three or
 * four scattered lines of an interpolation search each one more.  Stored in the
 * index's `fence` slot as (keys, bytes): the bytes hold the count of keys it was
 * built for, bits, then start[2^bits + 1] (uint32 each); it is used only while
 * `keys` is that very array with that count, else rebuilt.  A stale or damaged one
 * could only make a key look absent (positions are clamped to the keys; a key
 * found is compared whole, and its value and name read at its own position), and
 * absent sends the stat to the walk: it can slow an answer, never change it. */
typedef struct {
    uint32_t count, bits;
    uint32_t start[];
} Fence;

/* the fence of `index` for its `keys` (count keys at k): borrowed, or NULL if there
 * is none (too few keys, or no memory: the search does without) */
static const Fence *
fence_of(StatPath *s, PyObject *index, PyObject *keys, const unsigned char *k, Py_ssize_t count)
{
    if (count < s->fence_min || count > UINT32_MAX - 1)
        return NULL;
    PyObject **where = (PyObject **)((char *)index + s->o_fence);
    PyObject *f = *where;
    if (f != NULL && PyTuple_CheckExact(f) && PyTuple_GET_SIZE(f) == 2 &&
        PyTuple_GET_ITEM(f, 0) == keys && PyBytes_CheckExact(PyTuple_GET_ITEM(f, 1))) {
        PyObject *b = PyTuple_GET_ITEM(f, 1);
        const Fence *fence = (const Fence *)PyBytes_AS_STRING(b);
        if (PyBytes_GET_SIZE(b) >= (Py_ssize_t)sizeof(Fence) && fence->count == count &&
            fence->bits >= 1 && fence->bits < 32 &&
            PyBytes_GET_SIZE(b) ==
                (Py_ssize_t)(sizeof(Fence) + 4 * (((size_t)1 << fence->bits) + 1)))
            return fence;
    }
    unsigned bits = 1;
    while (((Py_ssize_t)1 << (bits + 1)) <= count / FENCE_KEYS)
        bits++;
    size_t buckets = (size_t)1 << bits;
    PyObject *b = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(sizeof(Fence) + 4 * (buckets + 1)));
    if (b == NULL) {
        PyErr_Clear();
        return NULL;
    }
    Fence *fence = (Fence *)PyBytes_AS_STRING(b);
    fence->count = (uint32_t)count;
    fence->bits = bits;
    Py_ssize_t at = 0;
    for (size_t i = 0; i < buckets; i++) {
        uint64_t first = (uint64_t)i << (64 - bits); /* the smallest key of bucket i */
        while (at < count && get_u64(k + 8 * at) < first)
            at++;
        fence->start[i] = (uint32_t)at;
    }
    fence->start[buckets] = (uint32_t)count;
    PyObject *pair = PyTuple_Pack(2, keys, b);
    Py_DECREF(b);
    if (pair == NULL) {
        PyErr_Clear();
        return NULL;
    }
    Py_XSETREF(*where, pair);
    s->fences++;
    return (const Fence *)PyBytes_AS_STRING(PyTuple_GET_ITEM(pair, 1));
}

/* A big index's pending changes (DirIndex.added, .removed: creates and unlinks since
 * its arrays were made, up to a sixteenth of them) are looked up by every probe first:
 * an int made and a dict of up to tens of thousands of keys missed, each stat.  When
 * only stats read the index -- as many probes as there are pending changes (and at
 * least SETTLE_MIN) have found their number unchanged -- fold them into the arrays
 * (DirIndex.merge, as the next change would once they reach a sixteenth): one O(n)
 * merge instead of as many lookups.  Caller holds the filesystem lock (merge runs
 * Python code; another thread cannot take the lock meanwhile).  A failed merge changes
 * nothing (merge replaces the arrays at its end) and is not retried before as many
 * probes again.  1 merged, 0 not, -1 error. */
static int
settle(StatPath *s, PyObject *index, Py_ssize_t count)
{
    PyObject *added = slot(index, s->o_added), *removed = slot(index, s->o_removed);
    if (count < FENCE_MIN || added == NULL || removed == NULL || !PyDict_Check(added) ||
        !PyAnySet_Check(removed))
        return 0;
    Py_ssize_t pending = PyDict_GET_SIZE(added) + PySet_GET_SIZE(removed);
    if (pending == 0)
        return 0;
    if (s->settle_index != (uintptr_t)index || s->settle_seen != pending) {
        s->settle_index = (uintptr_t)index;
        s->settle_seen = pending;
        s->settle_reads = 0;
    }
    if (++s->settle_reads < (pending > SETTLE_MIN ? pending : SETTLE_MIN))
        return 0;
    s->settle_reads = 0;
    Py_INCREF(index);
    PyObject *done = PyObject_CallMethod(index, "merge", NULL);
    Py_DECREF(index);
    if (done == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_Exception))
            return -1; /* KeyboardInterrupt and the like go on */
        PyErr_Clear(); /* the index is as it was: the probe reads the pending changes */
        return 0;
    }
    Py_DECREF(done);
    s->merges++;
    return 1;
}

/* DirIndex.find for `key`, `name`: 1 found (ino, type set), 0 absent, -1 ask the tree,
 * -2 error */
static int
probe(StatPath *s, PyObject *index, uint64_t key, const char *name, Py_ssize_t n,
      uint64_t *value)
{
    PyObject *keys = slot(index, s->o_keys), *values = slot(index, s->o_values);
    PyObject *names = slot(index, s->o_names), *added = slot(index, s->o_added);
    PyObject *removed = slot(index, s->o_removed);
    if (!keys || !values || !names || !added || !removed || !PyBytes_Check(names) ||
        !PyDict_Check(added) || !PyAnySet_Check(removed))
        return -1;
    if (PyDict_GET_SIZE(added) || PySet_GET_SIZE(removed)) {
        int merged = settle(s, index, PyBytes_GET_SIZE(names) / SLOT);
        if (merged < 0)
            return -2;
        if (merged) /* new arrays, nothing pending: read the index again */
            return probe(s, index, key, name, n, value);
    }
    if (PyDict_GET_SIZE(added) || PySet_GET_SIZE(removed)) {
        /* the changes since the arrays were made: DirIndex.find reads them first */
        PyObject *pkey = PyLong_FromUnsignedLongLong(key);
        if (pkey == NULL)
            return -2;
        PyObject *record = PyDict_GetItemWithError(added, pkey);
        if (record != NULL) {
            Py_DECREF(pkey);
            return pending(record, name, n, value);
        }
        int gone = PyErr_Occurred() ? -1 : PySet_Contains(removed, pkey);
        Py_DECREF(pkey);
        if (gone < 0)
            return -2;
        if (gone)
            return 0; /* removed since */
    }
    Py_buffer kb, vb;
    if (PyObject_GetBuffer(keys, &kb, PyBUF_SIMPLE) < 0)
        return -2;
    if (PyObject_GetBuffer(values, &vb, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&kb);
        return -2;
    }
    Py_ssize_t count = kb.len / 8;
    int rc = 0;
    if (vb.len != kb.len || PyBytes_GET_SIZE(names) != count * SLOT) {
        rc = -1;
        goto done;
    }
    const unsigned char *k = kb.buf;
    Py_ssize_t lo = 0, hi = count;
    const Fence *fence = fence_of(s, index, keys, k, count);
    if (fence != NULL) { /* the key's bucket: keys[lo-1] < key <= keys[hi] if current */
        size_t bucket = key >> (64 - fence->bits);
        lo = fence->start[bucket];
        hi = fence->start[bucket + 1];
        if (hi > count)
            hi = count;
        if (lo > hi)
            lo = hi;
        STEP(5);
        if (hi > lo) {
            /* the key's place in its bucket: its next 32 bits, scaled to the bucket */
            uint64_t within = (key << fence->bits) >> 32;
            Py_ssize_t g = lo + (Py_ssize_t)((within * (uint64_t)(hi - lo)) >> 32);
            if (g >= hi)
                g = hi - 1;
            /* its lines of keys, values and names, fetched at once (a prefetch never
             * faults; the addresses stay inside the arrays) */
            Py_ssize_t first = g >= lo + GUESS_SPAN ? g - GUESS_SPAN : lo;
            Py_ssize_t last = g + GUESS_SPAN < hi ? g + GUESS_SPAN : hi - 1;
            for (Py_ssize_t i = first; i <= last + 7; i += 8) {
                Py_ssize_t at = i < last ? i : last;
                __builtin_prefetch(k + 8 * at);
                __builtin_prefetch((const char *)vb.buf + 8 * at);
            }
            for (Py_ssize_t i = first; i <= last + 3; i += 4)
                __builtin_prefetch(PyBytes_AS_STRING(names) + SLOT * (i < last ? i : last));
            /* gallop from the guess to keys[lo-1] < key <= keys[hi] (each step keeps it) */
            if (get_u64(k + 8 * g) < key) {
                Py_ssize_t step = 1;
                lo = g + 1;
                while (lo + step - 1 < hi && get_u64(k + 8 * (lo + step - 1)) < key) {
                    lo += step;
                    step <<= 1;
                }
                if (lo + step - 1 < hi)
                    hi = lo + step - 1;
            } else {
                Py_ssize_t step = 1, top = g;
                while (top - step >= lo && get_u64(k + 8 * (top - step)) >= key) {
                    top -= step;
                    step <<= 1;
                }
                if (top - step + 1 > lo)
                    lo = top - step + 1;
                hi = top;
            }
        }
    }
    /* keys are keyed hashes, spread evenly: a few interpolation steps get within a
     * cache line or two of the key (each step keeps keys[lo-1] < key <= keys[hi]) */
    uint64_t klo = 0, khi = UINT64_MAX;
    for (int step = 0; fence == NULL && step < INTERPOLATIONS && hi - lo > 8; step++) {
        unsigned __int128 num = (unsigned __int128)(key - klo) * (uint64_t)(hi - lo);
        Py_ssize_t mid = lo + (Py_ssize_t)(num / ((unsigned __int128)(khi - klo) + 1));
        if (mid >= hi)
            mid = hi - 1;
        uint64_t km = get_u64(k + 8 * mid);
        if (km < key) {
            lo = mid + 1;
            klo = km;
        } else {
            hi = mid;
            khi = km;
        }
    }
    while (lo < hi) {
        Py_ssize_t mid = lo + (hi - lo) / 2;
        if (get_u64(k + 8 * mid) < key)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == count || get_u64(k + 8 * lo) != key)
        goto done; /* absent */
    const unsigned char *slotp = (const unsigned char *)PyBytes_AS_STRING(names) + SLOT * lo;
    __builtin_prefetch(slotp);
    uint64_t v = get_u64((const unsigned char *)vb.buf + 8 * lo);
    if (v == 0) {
        rc = -1; /* _TREE: read the tree */
        goto done;
    }
    if (n < SLOT && slotp[0] == n && memcmp(slotp + 1, name, (size_t)n) == 0) {
        *value = v;
        rc = 1;
    }
done:
    PyBuffer_Release(&vb);
    PyBuffer_Release(&kb);
    return rc;
}

/* the stat of `name` (n bytes) in the directory indexed by `index`: a stat_result, an
 * int ino (cached: the caller builds from the Inode), or -1 (the walk answers) */
static PyObject *
child_stat(StatPath *s, PyObject *index, const char *p, Py_ssize_t n, uint64_t hwm, int follow)
{
    if (n == 0 || n >= SLOT)
        return PyLong_FromLong(-1); /* the index holds no such name */
    uint64_t value;
    uint64_t key = blake2b_name(s->h0, (const unsigned char *)p, (size_t)n);
    STEP(4);
    int found = probe(s, index, key, p, n, &value);
    STEP(6);
    if (found == -2)
        return NULL;
    if (found != 1)
        return PyLong_FromLong(-1);
    uint64_t ino = value & ((1ULL << 56) - 1);
    unsigned dtype = (unsigned)(value >> 56);
    if (follow && dtype == 10 /* DT_LNK */)
        return PyLong_FromLong(-1);
    PyObject *r = stat_from_media(s, ino, hwm, follow, 1);
    if (r == Py_None) {
        Py_DECREF(r);
        return PyLong_FromLong(-1);
    }
    return r;
}

static PyObject *
StatPath_child(StatPath *s, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "child(index, name, hwm, follow)");
        return NULL;
    }
    PyObject *index = args[0], *name = args[1];
    if (Py_TYPE(index) != s->index_type || !PyBytes_Check(name)) {
        PyErr_SetString(PyExc_TypeError, "child: expected a DirIndex and a bytes name");
        return NULL;
    }
    uint64_t hwm = PyLong_AsUnsignedLongLong(args[2]);
    if (hwm == (uint64_t)-1 && PyErr_Occurred())
        return NULL;
    int follow = PyObject_IsTrue(args[3]);
    if (follow < 0)
        return NULL;
    return child_stat(s, index, PyBytes_AS_STRING(name), PyBytes_GET_SIZE(name), hwm, follow);
}

/* the current index of the cached directory `ino` (borrowed), or NULL (no error) */
static PyObject *
directory_index(StatPath *s, PyObject *ino)
{
    PyObject *inode = PyDict_GetItemWithError(s->cache, ino);
    if (inode == NULL || Py_TYPE(inode) != s->inode_type)
        return NULL;
    PyObject *rec = slot(inode, s->o_rec);
    if (rec == NULL || Py_TYPE(rec) != s->record_type)
        return NULL;
    PyObject *mode = slot(rec, s->o_mode), *generation = slot(rec, s->o_rgeneration);
    if (mode == NULL || generation == NULL || !PyLong_CheckExact(mode))
        return NULL;
    long m = PyLong_AsLong(mode);
    if (m == -1 && PyErr_Occurred())
        return NULL;
    if (((unsigned long)m & S_FMT) != S_DIR)
        return NULL;
    PyObject *index = PyDict_GetItemWithError(s->indexes, ino);
    if (index == NULL || Py_TYPE(index) != s->index_type)
        return NULL;
    PyObject *built = slot(index, s->o_generation);
    if (built == NULL)
        return NULL;
    int same = PyObject_RichCompareBool(built, generation, Py_EQ);
    if (same <= 0)
        return NULL; /* another life of the inode number (or an error, left set) */
    return index;
}

/* LastHead: the last HEAD path() found in the path cache of directories (heads, or
 * bheads for bytes paths), its bytes and what it resolved to, kept while that dict is
 * unchanged (its version tag: DICT_VERSION).  A stat of many names in one directory
 * then neither makes HEAD's str (or bytes) nor hashes it nor looks it up: the same
 * dict, unchanged, would answer the same ino.  Only ASCII str and bytes HEADs of at
 * most LAST_HEAD bytes; anything else is looked up as before. */

/* the ino `heads` holds for HEAD hb[0:cut] if LastHead knows it (borrowed), else NULL */
static PyObject *
last_head(StatPath *s, PyObject *heads, int bytes, const char *hb, Py_ssize_t cut)
{
#ifdef DICT_VERSION
    if (hb != NULL && s->last_parent != NULL && s->last_kind == 1 + bytes &&
        s->last_len == cut && s->last_version == DICT_VERSION(heads) &&
        memcmp(s->last_head, hb, (size_t)cut) == 0)
        return s->last_parent;
#endif
    return NULL;
}

/* remember that `heads` holds `parent` for HEAD hb[0:cut] (if LastHead can keep it) */
static void
remember_head(StatPath *s, PyObject *heads, int bytes, const char *hb, Py_ssize_t cut,
              PyObject *parent)
{
#ifdef DICT_VERSION
    if (hb == NULL || cut > LAST_HEAD)
        return;
    Py_XSETREF(s->last_parent, Py_NewRef(parent));
    s->last_version = DICT_VERSION(heads);
    s->last_kind = (uint8_t)(1 + bytes);
    s->last_len = (uint8_t)cut;
    memcpy(s->last_head, hb, (size_t)cut);
#endif
}

/* FileSystem._stat_fast_reference in C: a stat_result, an int (-1: the walk answers;
 * -2: HEAD is not in the path cache, resolve it, remember it, call again; an ino >= 0:
 * cached, build from the Inode), or NULL with an exception */
static PyObject *
path_stat(StatPath *s, PyObject *path, int follow, uint64_t hwm)
{
    PyObject *head = NULL, *encoded = NULL, *result = NULL;
    const char *name, *hb = NULL; /* hb: HEAD's bytes, if LastHead may hold it */
    Py_ssize_t n, cut;
    PyObject *heads;
    int bytes = 0;
    if (PyUnicode_CheckExact(path)) {
        Py_ssize_t len = PyUnicode_GET_LENGTH(path);
        if (len > FAST_PATH_CHARS)
            return PyLong_FromLong(-1);
        cut = PyUnicode_FindChar(path, '/', 0, len, -1);
        if (cut == -2)
            return NULL;
        if (cut < 0 || cut == len - 1)
            return PyLong_FromLong(-1); /* no "/", or a trailing one */
        if (PyUnicode_IS_ASCII(path)) {
            hb = (const char *)PyUnicode_DATA(path);
            name = hb + cut + 1;
            n = len - cut - 1;
        } else { /* os.fsencode of the name: UTF-8, surrogateescape */
            PyObject *tail = PyUnicode_Substring(path, cut + 1, len);
            if (tail == NULL)
                return NULL;
            encoded = PyUnicode_AsEncodedString(tail, "utf-8", "surrogateescape");
            Py_DECREF(tail);
            if (encoded == NULL) {
                PyErr_Clear(); /* not encodable: the walk raises */
                return PyLong_FromLong(-1);
            }
            name = PyBytes_AS_STRING(encoded);
            n = PyBytes_GET_SIZE(encoded);
        }
        heads = s->heads;
    } else if (PyBytes_CheckExact(path)) {
        Py_ssize_t len = PyBytes_GET_SIZE(path);
        if (len > FAST_PATH_CHARS)
            return PyLong_FromLong(-1);
        const char *p = PyBytes_AS_STRING(path);
        const char *slash = memrchr(p, '/', (size_t)len);
        if (slash == NULL || slash == p + len - 1)
            return PyLong_FromLong(-1);
        cut = slash - p;
        name = slash + 1;
        n = len - cut - 1;
        heads = s->bheads;
        hb = p;
        bytes = 1;
    } else {
        return PyLong_FromLong(-1);
    }
    PyObject *parent = s->root;
    if (cut > 0) {
        parent = last_head(s, heads, bytes, hb, cut);
        if (parent == NULL) {
            head = bytes ? PyBytes_FromStringAndSize(hb, cut) : PyUnicode_Substring(path, 0, cut);
            if (head == NULL)
                goto done;
            parent = PyDict_GetItemWithError(heads, head);
            if (parent == NULL) {
                result = PyErr_Occurred() ? NULL : PyLong_FromLong(-2);
                goto done;
            }
            remember_head(s, heads, bytes, hb, cut, parent);
        }
    }
    STEP(2);
    PyObject *index = directory_index(s, parent);
    STEP(3);
    if (index == NULL)
        result = PyErr_Occurred() ? NULL : PyLong_FromLong(-1);
    else
        result = child_stat(s, index, name, n, hwm, follow);
done:
    Py_XDECREF(head);
    Py_XDECREF(encoded);
    return result;
}

/* path(path, follow, hwm): path_stat, as Python's reference is called */
static PyObject *
StatPath_path(StatPath *s, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "path(path, follow, hwm)");
        return NULL;
    }
    if (s->view == NULL || s->heads == NULL)
        return PyLong_FromLong(-1);
    int follow = PyObject_IsTrue(args[1]);
    if (follow < 0)
        return NULL;
    uint64_t hwm = PyLong_AsUnsignedLongLong(args[2]);
    if (hwm == (uint64_t)-1 && PyErr_Occurred())
        return NULL;
    return path_stat(s, args[0], follow, hwm);
}

/* ------------------------------------------------------------------ the whole stat */

static PyObject *str_removals; /* "removals", interned */

/* the filesystem lock without waiting: 1 taken, 0 another thread holds it, -1 error */
static int
lock_take(StatPath *s)
{
    PyObject *arg = Py_False;
    PyObject *got = PyObject_Vectorcall(s->acquire, &arg, 1, NULL);
    if (got == NULL)
        return -1;
    int taken = got == Py_True;
    Py_DECREF(got);
    return taken;
}

/* release the lock taken by lock_take; `result` is returned, or NULL if releasing failed */
static PyObject *
lock_drop(StatPath *s, PyObject *result)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb); /* stat's own error, if any, survives the release */
    PyObject *done = PyObject_CallNoArgs(s->release);
    if (done == NULL) {
        Py_XDECREF(result);
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(tb);
        return NULL;
    }
    Py_DECREF(done);
    PyErr_Restore(type, value, tb);
    return result;
}

/* FileSystem.stat of a str or bytes path, caller holding the filesystem lock: a
 * stat_result, or None (FileSystem.stat's Python body answers: the walk, an error, a
 * cached inode whose fields do not fit their media width) */
static PyObject *
stat_locked(StatPath *s, PyObject *path, int follow)
{
    int bytes;
    if (PyUnicode_CheckExact(path))
        bytes = 0;
    else if (PyBytes_CheckExact(path))
        bytes = 1;
    else
        Py_RETURN_NONE;
    if (s->view == NULL || s->sb == NULL)
        Py_RETURN_NONE; /* unmounted: Python raises */
    STEP_START();
    /* the answer slot's line, fetched while the epoch and the high-water mark are read
     * (a str caches its hash, unless this is its first; bytes paths do without) */
    Py_hash_t early = bytes ? -1 : ((PyASCIIObject *)path)->hash;
    if (early != -1 && s->answers != NULL) {
        uint64_t eh = (uint64_t)early;
        __builtin_prefetch(&s->answers[(eh ^ (eh >> 17)) & (ANSWERS - 1)]);
    }
    /* the path caches' epoch, as FileSystem.stat checks it */
    PyObject *moved = PyObject_GetAttr(s->dirs, str_removals);
    if (moved == NULL)
        return NULL;
    long long removals = PyLong_AsLongLong(moved);
    Py_DECREF(moved);
    if (removals == -1 && PyErr_Occurred())
        return NULL;
    if (removals != s->epoch) {
        for (int b = 0; b < 2; b++)
            for (int f = 0; f < 2; f++)
                PyDict_Clear(s->paths[b][f]);
        s->epoch = removals;
        s->token++; /* and the answer table */
    }
    PyObject *hwmo = slot(s->sb, s->o_hwm);
    if (hwmo == NULL || !PyLong_CheckExact(hwmo))
        Py_RETURN_NONE;
    uint64_t hwm = PyLong_AsUnsignedLongLong(hwmo);
    if (hwm == (uint64_t)-1 && PyErr_Occurred())
        return NULL;
    STEP(0);
    /* the answer table first (one line), then the path cache (the walk's answers) */
    Answer *slotp = NULL;
    Py_ssize_t len = 0;
    const char *key = s->answers != NULL ? answer_key(path, bytes, &len) : NULL;
    uint64_t hash = 0;
    uint64_t n = 0;
    int hit = 0;
    if (key != NULL) {
        Py_hash_t h = PyObject_Hash(path); /* cached in the object after the first */
        if (h == -1)
            return NULL;
        hash = (uint64_t)h;
        slotp = &s->answers[(hash ^ (hash >> 17)) & (ANSWERS - 1)];
        hit = slotp->token == s->token && slotp->hash == hash &&
              slotp->kind == 1 + bytes + 2 * follow && slotp->len == len &&
              memcmp(slotp->path, key, (size_t)len) == 0;
        n = slotp->ino;
    }
    PyObject *paths = s->paths[bytes][follow];
    PyObject *ino = hit ? NULL : PyDict_GetItemWithError(paths, path);
    PyObject *r;
    STEP(1);
    if (ino != NULL) {
        n = PyLong_AsUnsignedLongLong(ino);
        if (n == (uint64_t)-1 && PyErr_Occurred())
            return NULL;
        hit = 1;
    }
    if (hit) { /* a path cache hit: the inode, cached or from media */
        r = stat_from_media(s, n, hwm, 0, 1);
        if (r == NULL || Py_TYPE(r) == (PyTypeObject *)s->stat_type) {
            s->hits += r != NULL;
            return r;
        }
        Py_DECREF(r); /* an ino (fields too wide) or None: Python answers */
        Py_RETURN_NONE;
    }
    if (PyErr_Occurred())
        return NULL;
    r = path_stat(s, path, follow, hwm);
    STEP(13);
    if (r == NULL || Py_TYPE(r) == (PyTypeObject *)s->stat_type) {
        if (r != NULL)
            s->misses++;
        if (r != NULL && s->remember && slotp != NULL) {
            uint64_t got = PyLong_AsUnsignedLongLong(PyStructSequence_GET_ITEM(r, 1));
            if (got == (uint64_t)-1 && PyErr_Occurred()) {
                Py_CLEAR(r);
                return NULL;
            }
            slotp->hash = hash;
            slotp->ino = got;
            slotp->token = s->token;
            slotp->kind = (uint8_t)(1 + bytes + 2 * follow);
            slotp->len = (uint8_t)len;
            memcpy(slotp->path, key, (size_t)len);
        }
        STEP(14);
        return r;
    }
    Py_DECREF(r); /* -1, -2 or an ino: Python answers */
    Py_RETURN_NONE;
}

static PyObject *
StatPath_stat(StatPath *s, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "stat(path, follow)");
        return NULL;
    }
    if (s->acquire == NULL)
        Py_RETURN_NONE; /* released, or made without stat()'s arguments */
    int follow = PyObject_IsTrue(args[1]);
    if (follow < 0)
        return NULL;
    int taken = lock_take(s);
    if (taken <= 0)
        return taken < 0 ? NULL : Py_NewRef(Py_None); /* held: Python waits for it */
    return lock_drop(s, stat_locked(s, args[0], follow));
}

static PyObject *
StatPath_inode(StatPath *s, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "inode(ino, hwm)");
        return NULL;
    }
    uint64_t ino = PyLong_AsUnsignedLongLong(args[0]);
    if (ino == (uint64_t)-1 && PyErr_Occurred())
        return NULL;
    uint64_t hwm = PyLong_AsUnsignedLongLong(args[1]);
    if (hwm == (uint64_t)-1 && PyErr_Occurred())
        return NULL;
    return stat_from_media(s, ino, hwm, 0, 0);
}

static PyObject *
StatPath_hash(StatPath *s, PyObject *name)
{
    if (!PyBytes_Check(name) || PyBytes_GET_SIZE(name) == 0) {
        PyErr_SetString(PyExc_TypeError, "hash: expected a non-empty bytes name");
        return NULL;
    }
    return PyLong_FromUnsignedLongLong(blake2b_name(
        s->h0, (const unsigned char *)PyBytes_AS_STRING(name), (size_t)PyBytes_GET_SIZE(name)));
}

static int
get_const(PyObject *constants, const char *name, uint64_t *out)
{
    PyObject *v = PyDict_GetItemString(constants, name);
    if (v == NULL) {
        PyErr_Format(PyExc_KeyError, "constant %s missing", name);
        return -1;
    }
    *out = PyLong_AsUnsignedLongLong(v);
    return (*out == (uint64_t)-1 && PyErr_Occurred()) ? -1 : 0;
}

static int
StatPath_init(StatPath *s, PyObject *args, PyObject *kwds)
{
    PyObject *view, *places, *cache, *stat_type, *index_type, *dev, *constants;
    PyObject *heads, *bheads, *indexes, *inode_type, *record_type, *root;
    PyObject *paths = NULL, *bpaths = NULL, *lock = NULL, *sb = NULL, *dirs = NULL;
    Py_ssize_t limit = 0;
    Py_buffer key;
    static char *kw[] = {"key",     "view",       "places",      "cache",   "stat_type",
                         "index_type", "dev",     "constants",   "heads",   "bheads",
                         "indexes", "inode_type", "record_type", "root",    "paths",
                         "bpaths",  "lock",       "sb",          "dirs",    "limit",
                         NULL};
    if (!PyArg_ParseTupleAndKeywords(
            args, kwds, "y*OOO!O!O!O!O!O!O!O!O!O!O!|$O!O!OOOn", kw, &key, &view, &places,
            &PyDict_Type, &cache, &PyType_Type, &stat_type, &PyType_Type, &index_type,
            &PyLong_Type, &dev, &PyDict_Type, &constants, &PyDict_Type, &heads, &PyDict_Type,
            &bheads, &PyDict_Type, &indexes, &PyType_Type, &inode_type, &PyType_Type,
            &record_type, &PyLong_Type, &root, &PyTuple_Type, &paths, &PyTuple_Type, &bpaths,
            &lock, &sb, &dirs, &limit))
        return -1;
    /* cache may be an OrderedDict: O! with PyDict_Type accepts subclasses */
    if (key.len < 1 || key.len > 64) {
        PyBuffer_Release(&key);
        PyErr_SetString(PyExc_ValueError, "a BLAKE2b key is 1 to 64 bytes");
        return -1;
    }
    blake2b_keyed_init(s->h0, key.buf, (size_t)key.len);
    PyBuffer_Release(&key);
    uint64_t c[16];
    static const char *names[] = {"INODE_MAGIC",   "MAX_FILE_SIZE", "MAX_SYMLINK",
                                  "INLINE_XATTR_AREA", "INLINE_AREA",  "IFLAG_ORPHAN",
                                  "IFLAG_TRUNCATE", "MAP_NONE",     "MAP_INLINE",
                                  "MAP_BTREE",     "MAP_SYMLINK",   "BLOCK_SIZE",
                                  "INODES_PER_BLOCK", "INODE_SIZE", "IFLAG_DAX",
                                  "EXTENT_SIZE"};
    for (int i = 0; i < 16; i++)
        if (get_const(constants, names[i], &c[i]) < 0)
            return -1;
    if (c[13] != RECORD || c[11] == 0 || c[12] == 0 || c[11] % 512 || c[15] == 0 ||
        c[3] > c[4]) {
        PyErr_SetString(PyExc_ValueError, "unexpected layout constants");
        return -1;
    }
    s->magic = (uint32_t)c[0];
    s->max_file_size = c[1];
    s->max_symlink = c[2];
    s->inline_xattr_area = c[3];
    s->extent_size = c[15];
    s->inline_area = c[4];
    s->flag_orphan = (uint32_t)c[5];
    s->flag_truncate = (uint32_t)c[6];
    s->flag_dax = (uint32_t)c[14];
    s->map_none = (unsigned)c[7];
    s->map_inline = (unsigned)c[8];
    s->map_btree = (unsigned)c[9];
    s->map_symlink = (unsigned)c[10];
    if ((c[11] & (c[11] - 1)) || (c[12] & (c[12] - 1))) {
        PyErr_SetString(PyExc_ValueError, "unexpected layout constants");
        return -1;
    }
    s->block_size = c[11];
    s->inodes_per_block = c[12];
    s->block_shift = (unsigned)__builtin_ctzll(c[11]);
    s->ipb_shift = (unsigned)__builtin_ctzll(c[12]);
    s->ino_limit = 1ULL << 63;
    PyTypeObject *it = (PyTypeObject *)index_type;
    if (slot_offset(it, "keys", &s->o_keys) < 0 || slot_offset(it, "values", &s->o_values) < 0 ||
        slot_offset(it, "names", &s->o_names) < 0 || slot_offset(it, "added", &s->o_added) < 0 ||
        slot_offset(it, "removed", &s->o_removed) < 0 ||
        slot_offset(it, "generation", &s->o_generation) < 0 ||
        slot_offset(it, "fence", &s->o_fence) < 0 ||
        slot_offset((PyTypeObject *)inode_type, "rec", &s->o_rec) < 0 ||
        slot_offset((PyTypeObject *)record_type, "mode", &s->o_mode) < 0 ||
        slot_offset((PyTypeObject *)record_type, "generation", &s->o_rgeneration) < 0)
        return -1;
    static const char *rfields[10] = {"ino",  "mode",   "nlink",    "uid",      "gid",
                                      "size", "blocks", "atime_ns", "mtime_ns", "ctime_ns"};
    for (int i = 0; i < 10; i++)
        if (slot_offset((PyTypeObject *)record_type, rfields[i], &s->o_f[i]) < 0)
            return -1;
    /* stat() needs all of paths, bpaths (each the caches for follow False, True), the
     * lock, the Superblock and Directories; without them it answers None */
    PyObject *caches[2][2] = {{NULL, NULL}, {NULL, NULL}};
    PyObject *acquire = NULL, *release = NULL;
    Py_ssize_t o_hwm = 0;
    if (paths != NULL || bpaths != NULL || lock != NULL || sb != NULL || dirs != NULL) {
        PyObject *both[2] = {paths, bpaths};
        for (int b = 0; b < 2; b++) {
            if (both[b] == NULL || PyTuple_GET_SIZE(both[b]) != 2) {
                PyErr_SetString(PyExc_TypeError, "paths and bpaths: two dicts each");
                return -1;
            }
            for (int f = 0; f < 2; f++) {
                caches[b][f] = PyTuple_GET_ITEM(both[b], f);
                if (!PyDict_CheckExact(caches[b][f])) {
                    PyErr_SetString(PyExc_TypeError, "paths and bpaths: two dicts each");
                    return -1;
                }
            }
        }
        if (lock == NULL || sb == NULL || dirs == NULL || limit < 1 ||
            slot_offset(Py_TYPE(sb), "inode_hwm", &o_hwm) < 0) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_TypeError, "stat() needs lock, sb, dirs and limit");
            return -1;
        }
        acquire = PyObject_GetAttrString(lock, "acquire");
        release = acquire != NULL ? PyObject_GetAttrString(lock, "release") : NULL;
        if (release == NULL) {
            Py_XDECREF(acquire);
            return -1;
        }
    }
    for (int b = 0; b < 2; b++)
        for (int f = 0; f < 2; f++)
            Py_XSETREF(s->paths[b][f], Py_XNewRef(caches[b][f]));
    Py_XSETREF(s->acquire, acquire);
    Py_XSETREF(s->release, release);
    Py_XSETREF(s->sb, Py_XNewRef(sb));
    Py_XSETREF(s->dirs, Py_XNewRef(dirs));
    s->o_hwm = o_hwm;
    s->limit = limit;
    s->epoch = -1; /* emptied at the first stat() */
    s->remember = 1;
    s->fence_min = FENCE_MIN;
    if (acquire != NULL && s->answers == NULL) {
        s->answers = PyMem_Calloc(ANSWERS, sizeof(Answer));
        if (s->answers == NULL) {
            PyErr_NoMemory();
            return -1;
        }
    }
    s->token++; /* whatever a slot held before is not current */
    Py_XSETREF(s->heads, Py_NewRef(heads));
    Py_XSETREF(s->bheads, Py_NewRef(bheads));
    Py_XSETREF(s->indexes, Py_NewRef(indexes));
    Py_XSETREF(s->inode_type, (PyTypeObject *)Py_NewRef(inode_type));
    Py_XSETREF(s->record_type, (PyTypeObject *)Py_NewRef(record_type));
    Py_XSETREF(s->root, Py_NewRef(root));
    Py_CLEAR(s->last_parent); /* LastHead: of the dicts given before, if any */
    Py_XSETREF(s->view, Py_NewRef(view));
    Py_XSETREF(s->places, Py_NewRef(places));
    Py_XSETREF(s->cache, Py_NewRef(cache));
    Py_XSETREF(s->stat_type, Py_NewRef(stat_type));
    Py_XSETREF(s->dev, Py_NewRef(dev));
    Py_XSETREF(s->index_type, (PyTypeObject *)Py_NewRef(index_type));
    return 0;
}

static int
StatPath_traverse(StatPath *s, visitproc visit, void *arg)
{
    Py_VISIT(s->view);
    Py_VISIT(s->places);
    Py_VISIT(s->cache);
    Py_VISIT(s->stat_type);
    Py_VISIT(s->dev);
    Py_VISIT(s->index_type);
    Py_VISIT(s->heads);
    Py_VISIT(s->bheads);
    Py_VISIT(s->indexes);
    Py_VISIT(s->inode_type);
    Py_VISIT(s->record_type);
    Py_VISIT(s->root);
    Py_VISIT(s->last_parent);
    for (int b = 0; b < 2; b++)
        for (int f = 0; f < 2; f++)
            Py_VISIT(s->paths[b][f]);
    Py_VISIT(s->acquire);
    Py_VISIT(s->release);
    Py_VISIT(s->sb);
    Py_VISIT(s->dirs);
    return 0;
}

static int
StatPath_clear(StatPath *s)
{
    Py_CLEAR(s->view);
    Py_CLEAR(s->places);
    Py_CLEAR(s->cache);
    Py_CLEAR(s->stat_type);
    Py_CLEAR(s->dev);
    Py_CLEAR(s->index_type);
    Py_CLEAR(s->heads);
    Py_CLEAR(s->bheads);
    Py_CLEAR(s->indexes);
    Py_CLEAR(s->inode_type);
    Py_CLEAR(s->record_type);
    Py_CLEAR(s->root);
    Py_CLEAR(s->last_parent);
    for (int b = 0; b < 2; b++)
        for (int f = 0; f < 2; f++)
            Py_CLEAR(s->paths[b][f]);
    Py_CLEAR(s->acquire);
    Py_CLEAR(s->release);
    Py_CLEAR(s->sb);
    Py_CLEAR(s->dirs);
    return 0;
}

static void
StatPath_dealloc(StatPath *s)
{
    PyObject_GC_UnTrack(s);
    StatPath_clear(s);
    PyMem_Free(s->answers);
    s->answers = NULL;
    Py_TYPE(s)->tp_free((PyObject *)s);
}

static PyObject *
StatPath_release(StatPath *s, PyObject *unused)
{
    StatPath_clear(s); /* unmount: the view must go before the store releases it */
    Py_RETURN_NONE;
}

static PyObject *
StatPath_forget(StatPath *s, PyObject *unused)
{
    s->token++; /* every slot of the answer table stops being current */
    Py_RETURN_NONE;
}

static PyObject *
StatPath_child_checked(StatPath *s, PyObject *const *args, Py_ssize_t nargs)
{
    if (s->view == NULL)
        return PyLong_FromLong(-1);
    return StatPath_child(s, args, nargs);
}

static PyObject *
StatPath_inode_checked(StatPath *s, PyObject *const *args, Py_ssize_t nargs)
{
    if (s->view == NULL)
        Py_RETURN_NONE;
    return StatPath_inode(s, args, nargs);
}

#ifdef DAXFS_STAT_STEPS
/* steps() -> [(cycles, count)] * STEPS, then the counters zeroed; tsc() -> the TSC */
static PyObject *
StatPath_steps(StatPath *s, PyObject *unused)
{
    PyObject *list = PyList_New(STEPS);
    for (int i = 0; list != NULL && i < STEPS; i++) {
        PyObject *pair = Py_BuildValue("(KK)", step_cycles[i], step_count[i]);
        if (pair == NULL) {
            Py_CLEAR(list);
            break;
        }
        PyList_SET_ITEM(list, i, pair);
    }
    memset(step_cycles, 0, sizeof step_cycles);
    memset(step_count, 0, sizeof step_count);
    return list;
}

static PyObject *
StatPath_tsc(StatPath *s, PyObject *unused)
{
    return PyLong_FromUnsignedLongLong(__rdtsc());
}
#endif

static PyMethodDef StatPath_methods[] = {
#ifdef DAXFS_STAT_STEPS
    {"steps", (PyCFunction)StatPath_steps, METH_NOARGS,
     "steps() -> [(cycles, count)]: each step's TSC cycles and count since the last call"},
    {"tsc", (PyCFunction)StatPath_tsc, METH_NOARGS, "tsc() -> the time-stamp counter"},
#endif
    {"stat", (PyCFunction)(void (*)(void))StatPath_stat, METH_FASTCALL,
     "stat(path, follow) -> os.stat_result | None: FileSystem.stat of a str or bytes\n"
     "path, whole: the filesystem lock taken without waiting, the path caches' epoch,\n"
     "a path cache hit (the inode cached, else from media), else path(); None: the\n"
     "lock is held elsewhere, or FileSystem.stat's Python body must answer."},
    {"child", (PyCFunction)(void (*)(void))StatPath_child_checked, METH_FASTCALL,
     "child(index, name, hwm, follow) -> os.stat_result | int: the stat of `name` in the\n"
     "directory indexed by `index`; an int >= 0: the inode is cached (build from it);\n"
     "-1: the reference path must answer."},
    {"path", (PyCFunction)(void (*)(void))StatPath_path, METH_FASTCALL,
     "path(path, follow, hwm) -> os.stat_result | int: FileSystem._stat_fast in C: as\n"
     "child(), and -2: the path's HEAD is not in the path cache (resolve it, call again)."},
    {"inode", (PyCFunction)(void (*)(void))StatPath_inode_checked, METH_FASTCALL,
     "inode(ino, hwm) -> os.stat_result | None: the stat of inode `ino` from device\n"
     "memory; None: the reference path must answer."},
    {"hash", (PyCFunction)StatPath_hash, METH_O,
     "hash(name) -> int: Directories.hash(name), in C."},
    {"forget", (PyCFunction)StatPath_forget, METH_NOARGS,
     "Forget every answer of the answer table (the path caches were emptied)."},
    {"release", (PyCFunction)StatPath_release, METH_NOARGS,
     "Drop every reference (the view first); later calls answer -1 / None."},
    {NULL}};

static PyMemberDef StatPath_members[] = {
    {"hits", T_ULONGLONG, offsetof(StatPath, hits), READONLY,
     "stats stat() answered from the path cache"},
    {"misses", T_ULONGLONG, offsetof(StatPath, misses), READONLY,
     "stats stat() answered without it (path(): the C miss path)"},
    {"merges", T_ULONGLONG, offsetof(StatPath, merges), READONLY,
     "DirIndex.merge calls made by stats that found pending changes unchanged"},
    {"fences", T_ULONGLONG, offsetof(StatPath, fences), READONLY,
     "bucket arrays built (an index's first probe with fence_min keys or more)"},
    {"fence_min", T_PYSSIZET, offsetof(StatPath, fence_min), 0,
     "keys from which an index gets a bucket array (FENCE_MIN; the image fuzzer lowers "
     "it, so that indexes built from damaged leaves are probed through one)"},
    {"remember", T_BOOL, offsetof(StatPath, remember), 0,
     "whether stat() puts what the miss path answered into its answer table"},
    {NULL}};

static PyTypeObject StatPathType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "daxfs.fs._stat.StatPath",
    .tp_basicsize = sizeof(StatPath),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The miss path of stat (see the module docstring).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)StatPath_init,
    .tp_dealloc = (destructor)StatPath_dealloc,
    .tp_traverse = (traverseproc)StatPath_traverse,
    .tp_clear = (inquiry)StatPath_clear,
    .tp_methods = StatPath_methods,
    .tp_members = StatPath_members,
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "daxfs.fs._stat",
                                     "The miss path of stat (see _stat.c).", -1, NULL};

PyMODINIT_FUNC
PyInit__stat(void)
{
    detect_cpu();
    crc_init();
    str_removals = PyUnicode_InternFromString("removals");
    if (str_removals == NULL)
        return NULL;
    if (PyType_Ready(&StatPathType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "StatPath", (PyObject *)&StatPathType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
