/*
 * daxfs.fs._create: the hot steps of a create, in C.
 *
 * Theory of operation
 * -------------------
 * The reference is Python, and stays the readable one: a create
 * (FileSystem._create) inserts the new name into its directory's B+tree
 * (BTree.put: a descent through verified nodes, a private copy of the leaf in
 * the transaction, the leaf insert, the seal), then packs the inode records
 * the transaction changed (InodeRecord.pack_into), and the commit diffs its
 * private block copies against the device in 64-byte lines
 * (Transaction._records).  Each of those is a few hundred nanoseconds of work
 * behind microseconds of interpreter; this module does the work:
 *
 *     tree_put(dirty, new, view, verified, seal, owner, kind, root, height,
 *              key, value) -> bool
 *         BTree.put's common case: descend from `root` (`height` levels)
 *         through the transaction's copies (`dirty`: block -> (bytearray,
 *         seal)) or device memory (`view`), every node checked as
 *         BTree._node checks it (the checksum unless its block is in
 *         `verified`, which a passing checksum joins, as _remember does);
 *         at the leaf, _leaf_put's in-place cases (overwrite a value that
 *         fits its old bytes; else a value taken from the heap, the keys and
 *         slots shifted for a new key); the leaf's private copy made as
 *         Transaction.write makes it (entered into `dirty` with `seal`);
 *         then the leaf sealed as seal_node seals it.
 *         False: nothing was changed or entered, and the reference must run:
 *         a node failed a check (the reference raises Corrupted naming it),
 *         the leaf is new in this transaction (written in place: `new`), its
 *         copy has no seal, or it has no room (compaction or a split).
 *     log_inodes(dirty, locations) -> [(offset, record)] | None
 *         InodeTable._log's loop: each dirty inode's record packed as
 *         InodeRecord.pack_into packs it (the fields, the inline area, the
 *         crc32c), placed through the inode file's cached locations; None
 *         (nothing done): a location not cached, or a field that is not an
 *         int that fits (the reference loop then places, packs, and raises
 *         Corrupted naming the field).
 *     block_records(dirty, view, seal, records) -> None
 *         Transaction._records' loop: each private copy sealed (seal_node in
 *         C, any other seal called), its changed 64-byte lines against the
 *         device appended to `records` as (offset, bytes).
 *     seal_super(sb, head, block) -> (counter lines, checksum line) | None
 *         SuperState._log's two records: the counters packed from the
 *         Superblock, the checksum of the block as it will be on the device
 *         (the geometry `head` as pack_fields packs it, the counters, the
 *         device's bytes after them); None: a counter does not fit.
 *     u64_position(keys, key) -> int
 *         DirIndex._position's bisect: the index of `key` in `keys`, an
 *         ascending array('Q'), or -1 (a key that is not a 64-bit unsigned
 *         int is in no such array); a binary search over the array's buffer
 *         instead of an int boxed per step.
 *     index_merge(keys, values, names, added, removed) -> (keys, values, names)
 *         DirIndex.merge's arrays (numpy there, the reference): the keys of
 *         `keys` (an ascending array('Q')) less those in `removed` or
 *         `added`, and `added`'s keys (a dict key -> (value, 16-byte name
 *         slot)), all in ascending order, with their values and name slots,
 *         as three bytes objects; one pass, no numpy call (a merge runs once
 *         per 1/16 of a directory's keys, too rarely to keep numpy warm).
 *     flip_bits(block, i, j, used) -> int | None
 *         daxfs.fs.alloc._flip: set (`used`) or clear bits [i, j) of a
 *         writable bitmap block (bit n is bit n % 8 of byte n // 8), or, if
 *         one of them is already so, change nothing and return the first
 *         such bit; byte by byte instead of an int of up to 32,704 bits
 *         built, changed and stored back.
 *
 * Invariants
 *   1. Every offset read from media or from a caller's buffer is checked
 *      against that buffer's length before a byte is read or copied; a
 *      value from media is used only after the node holding it passed its
 *      checks (checksum, magic, owner, kind, block number, level, count,
 *      heap).
 *   2. tree_put changes nothing unless it returns True: the descent only
 *      reads, and the copy of the leaf is made, entered and changed only
 *      after every check passed and the room is known.  (`verified` may
 *      grow: a checksum passed, as in the reference.)
 *   3. What each function leaves is byte for byte what its reference leaves
 *      for the same call (tests/fs/test_create_native.py compares them on
 *      random inputs, and whole workloads' device operations and images);
 *      log_inodes and seal_super refuse (None, nothing done) what the
 *      reference must raise for.
 *   4. The layout constants below are daxfs.fs.layout's (CONSTANTS and the
 *      field tables; tests compare them).
 *   5. Nothing here writes device memory: only private copies and new
 *      objects.  Every store, flush and fence stays in the commit
 *      (Committer.commit or the Python reference), which SimulatedPmem sees.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>

#include "../pmem/_pyutil.h"
#include "_media.h"

/* the format (daxfs/fs/layout.py) */
#define BLOCK_SHIFT 12
#define BLOCK_SIZE 4096
#define NODE_MAGIC 0x4E505442u
#define N_CRC 4
#define N_OWNER 8
#define N_BLOCKNO 16
#define N_LEVEL 24
#define N_COUNT 26
#define N_KIND 28
#define N_HEAP 30
#define NODE_KEYS 64
#define INTERNAL_CAP 252
#define INTERNAL_CHILDREN (NODE_KEYS + INTERNAL_CAP * 8)
#define LEAF_CAP 128
#define LEAF_SLOTS (NODE_KEYS + LEAF_CAP * 8)
#define LEAF_HEAP_MIN (LEAF_SLOTS + LEAF_CAP * 4)
#define MAX_VALUE (BLOCK_SIZE - LEAF_HEAP_MIN)
#define VERIFIED_LIMIT (1 << 16) /* daxfs.fs.store */
#define MAX_HEIGHT 16            /* deeper than any tree of 2^64 keys: refused */

/* the inode record (InodeRecord._pack: "<IIQIIIIQQQQQQIIQQBBHHHQQ", then the inline area) */
#define INODE_SIZE 256
#define INODE_MAGIC 0x444F4E49u
#define I_CRC 4
#define INLINE_OFFSET 128
#define INLINE_AREA (INODE_SIZE - INLINE_OFFSET)

/* ------------------------------------------------------------------ tree_put */

/* The 4 KiB of block `blockno` as the transaction sees it: its copy in `dirty`
 * (*entry set to the (bytearray, seal) tuple), else device memory.  NULL: out
 * of the view, or a copy that is not a 4 KiB bytearray (the reference decides). */
static unsigned char *
block_at(PyObject *dirty, const Py_buffer *view, uint64_t blockno, PyObject **entry)
{
    *entry = NULL;
    if (blockno >= (uint64_t)view->len >> BLOCK_SHIFT)
        return NULL;
    PyObject *key = PyLong_FromUnsignedLongLong(blockno);
    if (key == NULL)
        return NULL;
    PyObject *found = PyDict_GetItemWithError(dirty, key); /* borrowed */
    Py_DECREF(key);
    if (found == NULL)
        return PyErr_Occurred() ? NULL : (unsigned char *)view->buf + (blockno << BLOCK_SHIFT);
    if (!PyTuple_CheckExact(found) || PyTuple_GET_SIZE(found) != 2)
        return NULL;
    PyObject *copy = PyTuple_GET_ITEM(found, 0);
    if (!PyByteArray_CheckExact(copy) || PyByteArray_GET_SIZE(copy) != BLOCK_SIZE)
        return NULL;
    *entry = found;
    return (unsigned char *)PyByteArray_AS_STRING(copy);
}

/* 1: in the set; 0: not; -1: error */
static int
set_has(PyObject *set, uint64_t blockno)
{
    PyObject *key = PyLong_FromUnsignedLongLong(blockno);
    if (key == NULL)
        return -1;
    int r = PySet_Contains(set, key);
    Py_DECREF(key);
    return r;
}

/* _remember: a checksum passed (the set bounded as PmemStore.mark_verified). */
static int
remember(PyObject *verified, uint64_t blockno)
{
    if (PySet_GET_SIZE(verified) >= VERIFIED_LIMIT && PySet_Clear(verified) < 0)
        return -1;
    PyObject *key = PyLong_FromUnsignedLongLong(blockno);
    if (key == NULL)
        return -1;
    int r = PySet_Add(verified, key);
    Py_DECREF(key);
    return r;
}

/* BTree._node's checks.  1: good; 0: not (the reference raises); -1: error. */
static int
node_good(const unsigned char *p, uint64_t blockno, unsigned level, uint64_t owner,
          unsigned kind, PyObject *verified)
{
    if (get_u32(p) != NODE_MAGIC)
        return 0;
    int known = set_has(verified, blockno);
    if (known < 0)
        return -1;
    if (!known) {
        if (crc32c_with_hole(p, BLOCK_SIZE, N_CRC) != get_u32(p + N_CRC))
            return 0;
        if (remember(verified, blockno) < 0)
            return -1;
    }
    unsigned count = get_u16(p + N_COUNT), heap = get_u16(p + N_HEAP);
    return get_u64(p + N_OWNER) == owner && get_u64(p + N_BLOCKNO) == blockno &&
           get_u16(p + N_KIND) == kind && get_u16(p + N_LEVEL) == level && count > 0 &&
           count <= (level ? INTERNAL_CAP : LEAF_CAP) &&
           (level || (LEAF_HEAP_MIN <= heap && heap <= BLOCK_SIZE));
}

/* bisect_left over keys[0:count] */
static unsigned
leaf_position(const unsigned char *p, unsigned count, uint64_t key)
{
    unsigned lo = 0, hi = count;
    while (lo < hi) {
        unsigned mid = (lo + hi) / 2;
        if (get_u64(p + NODE_KEYS + 8 * mid) < key)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* The child an internal node sends `key` to: bisect_right(keys, key, 1) - 1. */
static unsigned
child_index(const unsigned char *p, unsigned count, uint64_t key)
{
    unsigned lo = 1, hi = count;
    while (lo < hi) {
        unsigned mid = (lo + hi) / 2;
        if (key < get_u64(p + NODE_KEYS + 8 * mid))
            hi = mid;
        else
            lo = mid + 1;
    }
    return lo - 1;
}

/* How _leaf_put changes a leaf in place: 1 overwrite, 2 from the heap, 0 no room. */
static int
leaf_plan(const unsigned char *p, unsigned count, uint64_t key, size_t n, unsigned *at,
          int *found)
{
    unsigned i = leaf_position(p, count, key);
    *at = i;
    *found = i < count && get_u64(p + NODE_KEYS + 8 * i) == key;
    if (*found && n <= get_u16(p + LEAF_SLOTS + 4 * i + 2))
        return 1;
    unsigned heap = get_u16(p + N_HEAP);
    if ((*found || count < LEAF_CAP) && n <= heap - LEAF_HEAP_MIN)
        return 2;
    return 0;
}

static void
put_u16(unsigned char *p, uint16_t v)
{
    memcpy(p, &v, 2);
}

/* _leaf_put's in-place change, planned by leaf_plan on the same bytes. */
static void
leaf_apply(unsigned char *p, unsigned count, unsigned i, int found, int how, uint64_t key,
           const unsigned char *value, size_t n)
{
    unsigned char *slot = p + LEAF_SLOTS + 4 * i;
    if (how == 1) {
        unsigned off = get_u16(slot);
        /* the slot's old bytes lie in the heap: checked by the caller (heap_ok) */
        memcpy(p + off, value, n);
        put_u16(slot + 2, (uint16_t)n);
        return;
    }
    unsigned heap = get_u16(p + N_HEAP);
    if (n) {
        heap -= (unsigned)n;
        memcpy(p + heap, value, n);
        put_u16(p + N_HEAP, (uint16_t)heap);
    }
    if (!found) {
        memmove(p + NODE_KEYS + 8 * i + 8, p + NODE_KEYS + 8 * i, 8 * (count - i));
        memmove(slot + 4, slot, 4 * (count - i));
        put_u64(p + NODE_KEYS + 8 * i, key);
        put_u16(p + N_COUNT, (uint16_t)(count + 1));
    }
    put_u16(slot, (uint16_t)(n ? heap : BLOCK_SIZE));
    put_u16(slot + 2, (uint16_t)n);
}

static void
seal_node(unsigned char *p)
{
    put_u32(p + N_CRC, 0);
    put_u32(p + N_CRC, crc32c(p, BLOCK_SIZE));
}

/* an argument that must be a non-negative int below 2^64; 0 with no error: it is not */
static int
u64_arg(PyObject *obj, uint64_t *out)
{
    if (!PyLong_CheckExact(obj))
        return 0;
    unsigned long long v = PyLong_AsUnsignedLongLong(obj);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    *out = v;
    return 1;
}

/* the descent and the in-place put; 1 done, 0 the reference must run, -1 error */
static int
tree_put_impl(PyObject *const *args, const Py_buffer *view, const Py_buffer *value)
{
    PyObject *dirty = args[0], *new = args[1], *verified = args[3], *seal = args[4];
    uint64_t owner, kind, blockno, height, key;
    if (!PyDict_CheckExact(dirty) || !PyDict_CheckExact(new) || !PySet_CheckExact(verified) ||
        !u64_arg(args[5], &owner) || !u64_arg(args[6], &kind) || !u64_arg(args[7], &blockno) ||
        !u64_arg(args[8], &height) || !u64_arg(args[9], &key) || height == 0 ||
        height > MAX_HEIGHT || blockno == 0 || value->len > MAX_VALUE)
        return 0;
    PyObject *entry;
    for (unsigned level = (unsigned)height - 1; level > 0; level--) {
        const unsigned char *p = block_at(dirty, view, blockno, &entry);
        if (p == NULL)
            return PyErr_Occurred() ? -1 : 0;
        int good = node_good(p, blockno, level, owner, (unsigned)kind, verified);
        if (good <= 0)
            return good;
        unsigned count = get_u16(p + N_COUNT);
        blockno = get_u64(p + INTERNAL_CHILDREN + 8 * child_index(p, count, key));
    }
    unsigned char *p = block_at(dirty, view, blockno, &entry);
    if (p == NULL)
        return PyErr_Occurred() ? -1 : 0;
    int good = node_good(p, blockno, 0, owner, (unsigned)kind, verified);
    if (good <= 0)
        return good;
    if (entry != NULL && PyTuple_GET_ITEM(entry, 1) != seal)
        return 0; /* a copy without this seal: Transaction.write's other cases */
    PyObject *bno = PyLong_FromUnsignedLongLong(blockno);
    if (bno == NULL)
        return -1;
    int is_new = PyDict_Contains(new, bno);
    if (is_new != 0) { /* written in place (or an error) */
        Py_DECREF(bno);
        return is_new < 0 ? -1 : 0;
    }
    unsigned count = get_u16(p + N_COUNT), i;
    int found;
    int how = leaf_plan(p, count, key, (size_t)value->len, &i, &found);
    if (how == 1) { /* the old value's bytes must lie in the heap (the reference:
                       a slot outside the block raises in the slice assignment) */
        unsigned off = get_u16(p + LEAF_SLOTS + 4 * i), old = get_u16(p + LEAF_SLOTS + 4 * i + 2);
        if (off + old > BLOCK_SIZE || (old && off < LEAF_HEAP_MIN))
            how = 0;
    }
    if (how == 0) {
        Py_DECREF(bno);
        return 0;
    }
    if (entry == NULL) { /* Transaction.write: the private copy, entered with its seal */
        PyObject *copy = PyByteArray_FromStringAndSize((const char *)p, BLOCK_SIZE);
        if (copy == NULL) {
            Py_DECREF(bno);
            return -1;
        }
        PyObject *pair = PyTuple_Pack(2, copy, seal);
        Py_DECREF(copy);
        if (pair == NULL || PyDict_SetItem(dirty, bno, pair) < 0) {
            Py_XDECREF(pair);
            Py_DECREF(bno);
            return -1;
        }
        p = (unsigned char *)PyByteArray_AS_STRING(copy); /* alive: held by the dict */
        Py_DECREF(pair);
    }
    Py_DECREF(bno);
    leaf_apply(p, count, i, found, how, key, value->buf, (size_t)value->len);
    seal_node(p);
    return 1;
}

static PyObject *
tree_put(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 11) {
        PyErr_SetString(PyExc_TypeError, "tree_put takes 11 arguments");
        return NULL;
    }
    Py_buffer view, value;
    if (PyObject_GetBuffer(args[2], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    if (PyObject_GetBuffer(args[10], &value, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&view);
        return NULL;
    }
    int r = tree_put_impl(args, &view, &value);
    PyBuffer_Release(&value);
    PyBuffer_Release(&view);
    if (r < 0)
        return NULL;
    return PyBool_FromLong(r);
}

/* ------------------------------------------------------------------ log_inodes */

/* InodeRecord's fields in _INODE's order after magic and crc (layout._INODE_FIELDS:
 * a test compares), each with its format; `reserved` (offset 110) is written as 0. */
static const struct {
    const char *name;
    char format; /* Q q I H B */
    unsigned offset;
} inode_fields[] = {
    {"ino", 'Q', 8},        {"mode", 'I', 16},      {"nlink", 'I', 20},
    {"uid", 'I', 24},       {"gid", 'I', 28},       {"size", 'Q', 32},
    {"blocks", 'Q', 40},    {"atime_ns", 'q', 48},  {"mtime_ns", 'q', 56},
    {"ctime_ns", 'q', 64},  {"btime_ns", 'q', 72},  {"generation", 'I', 80},
    {"flags", 'I', 84},     {"next", 'Q', 88},      {"parent", 'Q', 96},
    {"map_kind", 'B', 104}, {"map_height", 'B', 105}, {"map_count", 'H', 106},
    {"xattr_bytes", 'H', 108}, {"map_root", 'Q', 112}, {"entries", 'Q', 120},
};
#define INODE_FIELDS (sizeof inode_fields / sizeof inode_fields[0])
#define I_RESERVED 110
static PyTypeObject *record_type = NULL; /* InodeRecord, set by configure */
static Py_ssize_t field_slot[INODE_FIELDS], inline_slot;

/* the field's value packed at p; 0 (no exception): not an int that fits (the
 * reference raises Corrupted naming it) */
static int
pack_field(unsigned char *p, PyObject *v, char format)
{
    if (v == NULL || !PyLong_CheckExact(v))
        return 0;
    int overflow;
    long long s = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (format == 'q') {
        if (overflow || (s == -1 && PyErr_Occurred())) {
            PyErr_Clear();
            return 0;
        }
        put_u64(p, (uint64_t)s);
        return 1;
    }
    unsigned long long u;
    if (overflow > 0) { /* above 2^63 - 1: only a Q may hold it */
        u = PyLong_AsUnsignedLongLong(v);
        if (u == (unsigned long long)-1 && PyErr_Occurred()) {
            PyErr_Clear();
            return 0;
        }
        if (format != 'Q')
            return 0;
    } else {
        if (overflow < 0 || s < 0)
            return 0;
        u = (unsigned long long)s;
    }
    switch (format) {
    case 'Q':
        put_u64(p, u);
        return 1;
    case 'I':
        if (u > 0xFFFFFFFFull)
            return 0;
        put_u32(p, (uint32_t)u);
        return 1;
    case 'H':
        if (u > 0xFFFFull)
            return 0;
        put_u16(p, (uint16_t)u);
        return 1;
    default: /* 'B' */
        if (u > 0xFFull)
            return 0;
        *p = (unsigned char)u;
        return 1;
    }
}

/* The 256 bytes InodeRecord.pack_into writes for `rec` (an InodeRecord); 0: a field is
 * not an int that fits, or the inline area is not 128 bytes. */
static int
pack_record(PyObject *rec, unsigned char *out)
{
    memset(out, 0, INLINE_OFFSET);
    put_u32(out, INODE_MAGIC);
    for (size_t f = 0; f < INODE_FIELDS; f++)
        if (!pack_field(out + inode_fields[f].offset, slot(rec, field_slot[f]),
                        inode_fields[f].format))
            return 0;
    PyObject *inl = slot(rec, inline_slot);
    if (inl == NULL || !PyBytes_CheckExact(inl) || PyBytes_GET_SIZE(inl) != INLINE_AREA)
        return 0;
    memcpy(out + INLINE_OFFSET, PyBytes_AS_STRING(inl), INLINE_AREA);
    put_u32(out + I_CRC, crc32c(out, INODE_SIZE)); /* the field is 0: the hole */
    return 1;
}

/* log_inodes(dirty, locations) -> [(offset, record)] | None: InodeTable._log's loop:
 * for each (ino, Inode) of `dirty`, the device offset of its record (the inode
 * file's block from `locations`, InodeTable.locations) and the record packed.
 * None (nothing done): a block not in `locations`, or a record that does not
 * pack -- the reference loop then places (InodeTable.address) and packs (and
 * raises). */
#define INODES_PER_BLOCK (BLOCK_SIZE / INODE_SIZE)
static PyTypeObject *inode_type = NULL; /* Inode, set by configure */
static Py_ssize_t rec_slot;

static PyObject *
log_inodes(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyDict_CheckExact(args[0]) || !PyDict_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError, "log_inodes(dirty: dict, locations: dict)");
        return NULL;
    }
    if (inode_type == NULL) {
        PyErr_SetString(PyExc_TypeError, "log_inodes: not configured");
        return NULL;
    }
    PyObject *out = PyList_New(0);
    if (out == NULL)
        return NULL;
    Py_ssize_t pos = 0;
    PyObject *key, *node;
    while (PyDict_Next(args[0], &pos, &key, &node)) {
        uint64_t ino, blockno;
        if (!u64_arg(key, &ino) || Py_TYPE(node) != inode_type)
            goto refuse;
        PyObject *rec = slot(node, rec_slot);
        if (rec == NULL || Py_TYPE(rec) != record_type)
            goto refuse;
        PyObject *fblock = PyLong_FromUnsignedLongLong(ino / INODES_PER_BLOCK);
        if (fblock == NULL)
            goto error;
        PyObject *where = PyDict_GetItemWithError(args[1], fblock); /* borrowed */
        Py_DECREF(fblock);
        if (where == NULL) {
            if (PyErr_Occurred())
                goto error;
            goto refuse;
        }
        if (!u64_arg(where, &blockno) || blockno >= ((uint64_t)1 << (64 - BLOCK_SHIFT)))
            goto refuse;
        unsigned char record[INODE_SIZE];
        if (!pack_record(rec, record))
            goto refuse;
        uint64_t offset = (blockno << BLOCK_SHIFT) + (ino % INODES_PER_BLOCK) * INODE_SIZE;
        PyObject *item = Py_BuildValue("(Ky#)", (unsigned long long)offset, (const char *)record,
                                       (Py_ssize_t)INODE_SIZE);
        if (item == NULL || PyList_Append(out, item) < 0) {
            Py_XDECREF(item);
            goto error;
        }
        Py_DECREF(item);
    }
    return out;
refuse:
    Py_DECREF(out);
    Py_RETURN_NONE;
error:
    Py_DECREF(out);
    return NULL;
}

/* configure(InodeRecord, Superblock, Inode): the classes pack_record, seal_super and
 * log_inodes read (their __slots__ offsets, found once). */
static int configure_super(PyObject *type);

static PyObject *
configure(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyType_Check(args[0]) || !PyType_Check(args[1]) ||
        !PyType_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "configure(InodeRecord, Superblock, Inode)");
        return NULL;
    }
    PyObject *type = args[0];
    Py_ssize_t rec_at;
    if (configure_super(args[1]) < 0 || slot_offset((PyTypeObject *)args[2], "rec", &rec_at) < 0)
        return NULL;
    Py_ssize_t slots[INODE_FIELDS], inl;
    for (size_t f = 0; f < INODE_FIELDS; f++)
        if (slot_offset((PyTypeObject *)type, inode_fields[f].name, &slots[f]) < 0)
            return NULL;
    if (slot_offset((PyTypeObject *)type, "inline", &inl) < 0)
        return NULL;
    memcpy(field_slot, slots, sizeof slots);
    inline_slot = inl;
    Py_XSETREF(record_type, (PyTypeObject *)Py_NewRef(type));
    rec_slot = rec_at;
    Py_XSETREF(inode_type, (PyTypeObject *)Py_NewRef(args[2]));
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------ seal_super */

/* The superblock's counters (layout._SB from byte 192 to SB_SIZE, each with its
 * format; a test compares) and the lines SuperState._log journals. */
static const struct {
    const char *name;
    char format;
    unsigned offset;
} super_fields[] = {
    {"free_blocks", 'Q', 192},   {"free_inodes", 'Q', 200},     {"used_inodes", 'Q', 208},
    {"free_ino_head", 'Q', 216}, {"orphan_head", 'Q', 224},     {"next_generation", 'Q', 232},
    {"state", 'I', 240},         {"mount_count", 'I', 244},     {"last_mount_ns", 'q', 248},
    {"inode_hwm", 'Q', 256},
};
#define SUPER_FIELDS (sizeof super_fields / sizeof super_fields[0])
#define SB_HEAD 192       /* the geometry: bytes 0..191, written by mkfs only */
#define SB_SIZE 264       /* _SB.size */
#define COUNTERS_END 320  /* super.COUNTERS_END: the counters in whole lines */
#define SB_CRC_OFFSET (BLOCK_SIZE - 4)
#define SB_CRC_LINE (SB_CRC_OFFSET / 64 * 64)
static PyTypeObject *super_type = NULL; /* Superblock, set by configure */
static Py_ssize_t super_slot[SUPER_FIELDS];

/* seal_super(sb, head, block) -> (counter lines, checksum line) | None:
 * SuperState._log's two records: `head` is the geometry as Superblock.pack_fields
 * packs it (bytes 0..191, never changed after mkfs), the counters are packed from
 * `sb`, the bytes after them up to the checksum are the device block's; the
 * checksum covers bytes 0..4091 of that.  None: a counter is not an int that fits
 * (nothing done: the reference raises Corrupted naming it). */
static PyObject *
seal_super(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "seal_super takes 3 arguments");
        return NULL;
    }
    PyObject *sb = args[0], *head = args[1];
    if (super_type == NULL || Py_TYPE(sb) != super_type || !PyBytes_CheckExact(head) ||
        PyBytes_GET_SIZE(head) != SB_HEAD) {
        PyErr_SetString(PyExc_TypeError,
                        "seal_super(Superblock, head: 192 bytes, block) (or not configured)");
        return NULL;
    }
    Py_buffer block;
    if (PyObject_GetBuffer(args[2], &block, PyBUF_SIMPLE) < 0)
        return NULL;
    if (block.len != BLOCK_SIZE) {
        PyBuffer_Release(&block);
        return raise_invalid("seal_super: the block is %zd bytes, not 4096", block.len);
    }
    unsigned char fields[COUNTERS_END - SB_HEAD];
    const unsigned char *dev = block.buf;
    memcpy(fields, dev + SB_HEAD, sizeof fields);
    int ok = 1;
    for (size_t f = 0; ok && f < SUPER_FIELDS; f++)
        ok = pack_field(fields + super_fields[f].offset - SB_HEAD, slot(sb, super_slot[f]),
                        super_fields[f].format);
    PyObject *out = NULL;
    if (ok) {
        uint32_t c = crc_update(0xFFFFFFFFu, PyBytes_AS_STRING(head), SB_HEAD);
        c = crc_update(c, fields, sizeof fields);
        c = ~crc_update(c, dev + COUNTERS_END, SB_CRC_OFFSET - COUNTERS_END);
        unsigned char line[BLOCK_SIZE - SB_CRC_LINE];
        memcpy(line, dev + SB_CRC_LINE, sizeof line);
        put_u32(line + SB_CRC_OFFSET - SB_CRC_LINE, c);
        out = Py_BuildValue("(y#y#)", (const char *)fields, (Py_ssize_t)sizeof fields,
                            (const char *)line, (Py_ssize_t)sizeof line);
    } else {
        out = Py_NewRef(Py_None);
    }
    PyBuffer_Release(&block);
    return out;
}

/* ------------------------------------------------------------------ block_records */

/* block_records(dirty, view, seal, records): Transaction._records' loop over the
 * private copies: each copy sealed (in C when its seal is `seal`, seal_node; else
 * its seal called), then its changed 64-byte lines against the device, merged
 * when adjacent, appended to `records` as (device offset, bytes).  Raises (with
 * nothing appended for that block) for a copy that is not a 4 KiB bytearray or
 * a block outside the view. */
static PyObject *
block_records(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4 || !PyDict_CheckExact(args[0]) || !PyList_CheckExact(args[3])) {
        PyErr_SetString(PyExc_TypeError, "block_records(dirty: dict, view, seal, records: list)");
        return NULL;
    }
    PyObject *dirty = args[0], *seal = args[2], *records = args[3];
    Py_buffer view;
    if (PyObject_GetBuffer(args[1], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    Py_ssize_t pos = 0;
    PyObject *key, *entry;
    while (PyDict_Next(dirty, &pos, &key, &entry)) {
        uint64_t blockno;
        if (!u64_arg(key, &blockno) || blockno >= (uint64_t)view.len >> BLOCK_SHIFT ||
            !PyTuple_CheckExact(entry) || PyTuple_GET_SIZE(entry) != 2 ||
            !PyByteArray_CheckExact(PyTuple_GET_ITEM(entry, 0)) ||
            PyByteArray_GET_SIZE(PyTuple_GET_ITEM(entry, 0)) != BLOCK_SIZE) {
            PyBuffer_Release(&view);
            return raise_invalid("block_records: a bad entry for block %R", key);
        }
        PyObject *copy = PyTuple_GET_ITEM(entry, 0), *fn = PyTuple_GET_ITEM(entry, 1);
        Py_INCREF(copy);
        if (fn == seal) {
            seal_node((unsigned char *)PyByteArray_AS_STRING(copy));
        } else if (fn != Py_None) {
            PyObject *mv = PyMemoryView_FromObject(copy), *r = NULL;
            if (mv != NULL) {
                r = PyObject_CallOneArg(fn, mv); /* as the reference: seal(memoryview(copy)) */
                Py_DECREF(mv);
            }
            if (r == NULL || PyByteArray_GET_SIZE(copy) != BLOCK_SIZE) {
                Py_XDECREF(r);
                Py_DECREF(copy);
                PyBuffer_Release(&view);
                return r == NULL ? NULL : raise_invalid("block_records: a seal resized its block");
            }
            Py_DECREF(r);
        }
        const unsigned char *a = (const unsigned char *)PyByteArray_AS_STRING(copy);
        const unsigned char *b = (const unsigned char *)view.buf + (blockno << BLOCK_SHIFT);
        uint64_t base = blockno << BLOCK_SHIFT;
        size_t start = 0, end;
        while ((start = diff_run(a, b, BLOCK_SIZE, LINE, start, &end)) < BLOCK_SIZE) {
            PyObject *rec = Py_BuildValue("(Ky#)", (unsigned long long)(base + start),
                                          (const char *)a + start, (Py_ssize_t)(end - start));
            if (rec == NULL || PyList_Append(records, rec) < 0) {
                Py_XDECREF(rec);
                Py_DECREF(copy);
                PyBuffer_Release(&view);
                return NULL;
            }
            Py_DECREF(rec);
            start = end;
        }
        Py_DECREF(copy);
    }
    PyBuffer_Release(&view);
    Py_RETURN_NONE;
}

static int
configure_super(PyObject *type)
{
    Py_ssize_t slots[SUPER_FIELDS];
    for (size_t f = 0; f < SUPER_FIELDS; f++)
        if (slot_offset((PyTypeObject *)type, super_fields[f].name, &slots[f]) < 0)
            return -1;
    memcpy(super_slot, slots, sizeof slots);
    Py_XSETREF(super_type, (PyTypeObject *)Py_NewRef(type));
    return 0;
}

/* ------------------------------------------------------------------ u64_position */

static PyObject *
u64_position(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "u64_position(keys, key)");
        return NULL;
    }
    if (!PyLong_Check(args[1])) {
        PyErr_Format(PyExc_TypeError, "key must be an int, not %.100s", Py_TYPE(args[1])->tp_name);
        return NULL;
    }
    unsigned long long key = PyLong_AsUnsignedLongLong(args[1]);
    if (key == (unsigned long long)-1 && PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError))
            return NULL;
        PyErr_Clear(); /* negative, or over 64 bits: in no array('Q') */
        return PyLong_FromLong(-1);
    }
    Py_buffer b;
    if (PyObject_GetBuffer(args[0], &b, PyBUF_FORMAT) < 0)
        return NULL;
    if (b.itemsize != 8 || b.format == NULL || strcmp(b.format, "Q") != 0 || b.len % 8) {
        PyBuffer_Release(&b);
        PyErr_SetString(PyExc_TypeError, "keys must be an array('Q')");
        return NULL;
    }
    const uint64_t *keys = b.buf;
    Py_ssize_t lo = 0, hi = b.len / 8;
    while (lo < hi) { /* bisect_left */
        Py_ssize_t mid = lo + (hi - lo) / 2;
        if (keys[mid] < key)
            lo = mid + 1;
        else
            hi = mid;
    }
    Py_ssize_t at = lo < b.len / 8 && keys[lo] == key ? lo : -1;
    PyBuffer_Release(&b);
    return PyLong_FromSsize_t(at);
}

/* ------------------------------------------------------------------ index_merge */

#define NAME_SLOT 16

struct added_entry {
    uint64_t key, value;
    unsigned char name[NAME_SLOT];
};

static int
cmp_added(const void *a, const void *b)
{
    uint64_t x = ((const struct added_entry *)a)->key, y = ((const struct added_entry *)b)->key;
    return x < y ? -1 : x > y;
}

static int
cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* a u64 from an int, or -1 with TypeError/OverflowError set */
static int
as_u64(PyObject *o, uint64_t *out)
{
    if (!PyLong_Check(o)) {
        PyErr_Format(PyExc_TypeError, "index keys and values must be ints, not %.100s",
                     Py_TYPE(o)->tp_name);
        return -1;
    }
    unsigned long long v = PyLong_AsUnsignedLongLong(o);
    if (v == (unsigned long long)-1 && PyErr_Occurred())
        return -1;
    *out = v;
    return 0;
}

static int
u64_array_buffer(PyObject *o, Py_buffer *b, const char *what)
{
    if (PyObject_GetBuffer(o, b, PyBUF_FORMAT) < 0)
        return -1;
    if (b->itemsize != 8 || b->format == NULL || strcmp(b->format, "Q") != 0 || b->len % 8) {
        PyBuffer_Release(b);
        PyErr_Format(PyExc_TypeError, "%s must be an array('Q')", what);
        return -1;
    }
    return 0;
}

static PyObject *
index_merge(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5 || !PyBytes_Check(args[2]) || !PyDict_Check(args[3]) ||
        !PyAnySet_Check(args[4])) {
        PyErr_SetString(PyExc_TypeError,
                        "index_merge(keys, values, names: bytes, added: dict, removed: set)");
        return NULL;
    }
    Py_buffer kb, vb;
    if (u64_array_buffer(args[0], &kb, "keys") < 0)
        return NULL;
    if (u64_array_buffer(args[1], &vb, "values") < 0) {
        PyBuffer_Release(&kb);
        return NULL;
    }
    PyObject *result = NULL, *out_k = NULL, *out_v = NULL, *out_n = NULL;
    struct added_entry *add = NULL;
    uint64_t *gone = NULL;
    Py_ssize_t n = kb.len / 8;
    const uint64_t *keys = kb.buf, *values = vb.buf;
    const unsigned char *names = (const unsigned char *)PyBytes_AS_STRING(args[2]);
    if (vb.len != kb.len || PyBytes_GET_SIZE(args[2]) != n * NAME_SLOT) {
        PyErr_SetString(PyExc_ValueError, "index arrays of different lengths");
        goto done;
    }
    Py_ssize_t n_add = PyDict_GET_SIZE(args[3]), n_gone = PySet_GET_SIZE(args[4]);
    add = PyMem_Malloc((size_t)(n_add ? n_add : 1) * sizeof *add);
    gone = PyMem_Malloc((size_t)(n_gone ? n_gone : 1) * sizeof *gone);
    if (add == NULL || gone == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t pos = 0, a = 0;
    PyObject *key, *rec;
    while (PyDict_Next(args[3], &pos, &key, &rec)) {
        if (!PyTuple_Check(rec) || PyTuple_GET_SIZE(rec) != 2 ||
            !PyBytes_Check(PyTuple_GET_ITEM(rec, 1)) ||
            PyBytes_GET_SIZE(PyTuple_GET_ITEM(rec, 1)) != NAME_SLOT) {
            PyErr_SetString(PyExc_TypeError, "added values must be (int, 16-byte name slot)");
            goto done;
        }
        if (as_u64(key, &add[a].key) < 0 || as_u64(PyTuple_GET_ITEM(rec, 0), &add[a].value) < 0)
            goto done;
        memcpy(add[a].name, PyBytes_AS_STRING(PyTuple_GET_ITEM(rec, 1)), NAME_SLOT);
        a++;
    }
    pos = 0;
    Py_ssize_t g = 0;
    Py_hash_t hash;
    while (_PySet_NextEntry(args[4], &pos, &key, &hash)) {
        if (as_u64(key, &gone[g]) < 0)
            goto done;
        g++;
    }
    qsort(add, (size_t)n_add, sizeof *add, cmp_added);
    qsort(gone, (size_t)n_gone, sizeof *gone, cmp_u64);
    Py_ssize_t most = n + n_add;
    out_k = PyBytes_FromStringAndSize(NULL, most * 8);
    out_v = PyBytes_FromStringAndSize(NULL, most * 8);
    out_n = PyBytes_FromStringAndSize(NULL, most * NAME_SLOT);
    if (out_k == NULL || out_v == NULL || out_n == NULL)
        goto done;
    uint64_t *ok = (uint64_t *)PyBytes_AS_STRING(out_k), *ov = (uint64_t *)PyBytes_AS_STRING(out_v);
    unsigned char *on = (unsigned char *)PyBytes_AS_STRING(out_n);
    Py_ssize_t i = 0, j = 0, r = 0, m = 0;
    while (i < n || j < n_add) {
        if (j < n_add && (i == n || add[j].key <= keys[i])) {
            if (i < n && keys[i] == add[j].key)
                i++; /* the added record replaces the array's */
            ok[m] = add[j].key;
            ov[m] = add[j].value;
            memcpy(on + m * NAME_SLOT, add[j].name, NAME_SLOT);
            m++, j++;
            continue;
        }
        while (r < n_gone && gone[r] < keys[i])
            r++;
        if (!(r < n_gone && gone[r] == keys[i])) {
            ok[m] = keys[i];
            ov[m] = values[i];
            memcpy(on + m * NAME_SLOT, names + i * NAME_SLOT, NAME_SLOT);
            m++;
        }
        i++;
    }
    if (_PyBytes_Resize(&out_k, m * 8) < 0 || _PyBytes_Resize(&out_v, m * 8) < 0 ||
        _PyBytes_Resize(&out_n, m * NAME_SLOT) < 0)
        goto done;
    result = PyTuple_Pack(3, out_k, out_v, out_n);
done:
    Py_XDECREF(out_k);
    Py_XDECREF(out_v);
    Py_XDECREF(out_n);
    PyMem_Free(add);
    PyMem_Free(gone);
    PyBuffer_Release(&kb);
    PyBuffer_Release(&vb);
    return result;
}

/* ------------------------------------------------------------------ flip_bits */

static PyObject *
flip_bits(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "flip_bits(block, i, j, used)");
        return NULL;
    }
    Py_ssize_t i = PyLong_AsSsize_t(args[1]), j = PyLong_AsSsize_t(args[2]);
    if ((i == -1 || j == -1) && PyErr_Occurred())
        return NULL;
    int used = PyObject_IsTrue(args[3]);
    if (used < 0)
        return NULL;
    Py_buffer b;
    if (PyObject_GetBuffer(args[0], &b, PyBUF_WRITABLE) < 0)
        return NULL;
    if (i < 0 || j <= i || j > b.len * 8) {
        Py_ssize_t len = b.len;
        PyBuffer_Release(&b);
        return raise_invalid("flip_bits: bits [%zd, %zd) are not a range of a %zd-byte block",
                             i, j, len);
    }
    unsigned char *p = b.buf;
    Py_ssize_t b0 = i >> 3, b1 = ((j - 1) >> 3) + 1;
    for (Py_ssize_t k = b0; k < b1; k++) { /* check every bit first: nothing changes */
        unsigned lo = k == b0 ? (unsigned)(i & 7) : 0, hi = k == b1 - 1 ? (unsigned)(j - 8 * k) : 8;
        unsigned mask = ((1u << hi) - 1) & ~((1u << lo) - 1);
        unsigned bad = (used ? p[k] : ~p[k]) & mask;
        if (bad) {
            PyBuffer_Release(&b);
            return PyLong_FromSsize_t(8 * k + __builtin_ctz(bad));
        }
    }
    for (Py_ssize_t k = b0; k < b1; k++) {
        unsigned lo = k == b0 ? (unsigned)(i & 7) : 0, hi = k == b1 - 1 ? (unsigned)(j - 8 * k) : 8;
        p[k] ^= (unsigned char)(((1u << hi) - 1) & ~((1u << lo) - 1));
    }
    PyBuffer_Release(&b);
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------ the module */

static PyMethodDef methods[] = {
    {"index_merge", (PyCFunction)(void (*)(void))index_merge, METH_FASTCALL,
     "index_merge(keys, values, names, added, removed) -> (keys, values, names) bytes:\n"
     "DirIndex.merge's arrays in one pass."},
    {"tree_put", (PyCFunction)(void (*)(void))tree_put, METH_FASTCALL,
     "tree_put(dirty, new, view, verified, seal, owner, kind, root, height, key, value)\n"
     "-> bool: BTree.put's in-place case (see the module docstring); False: nothing\n"
     "changed, the reference must run."},
    {"block_records", (PyCFunction)(void (*)(void))block_records, METH_FASTCALL,
     "block_records(dirty, view, seal, records) -> None: Transaction._records' loop\n"
     "over the private block copies, in C."},
    {"seal_super", (PyCFunction)(void (*)(void))seal_super, METH_FASTCALL,
     "seal_super(sb, head, block) -> (counter lines, checksum line) | None: the records\n"
     "of SuperState._log; None: a counter does not fit (the reference raises)."},
    {"log_inodes", (PyCFunction)(void (*)(void))log_inodes, METH_FASTCALL,
     "log_inodes(dirty, locations) -> [(offset, record)] | None: InodeTable._log's loop\n"
     "in C; None: a location not cached or a record that does not pack (the reference)."},
    {"u64_position", (PyCFunction)(void (*)(void))u64_position, METH_FASTCALL,
     "u64_position(keys, key) -> int: the index of key in keys (an ascending array('Q'))\n"
     "or -1: DirIndex._position's bisect in C."},
    {"configure", (PyCFunction)(void (*)(void))configure, METH_FASTCALL,
     "configure(InodeRecord, Superblock, Inode): the classes the packers read."},
    {"flip_bits", (PyCFunction)(void (*)(void))flip_bits, METH_FASTCALL,
     "flip_bits(block, i, j, used) -> first bit already so, or None (all flipped)"},
    {"set_error_class", set_error_class, METH_O,
     "set_error_class(cls): the class raised for bad arguments (InvalidArgument)."},
    {NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "daxfs.fs._create",
                                    "The hot steps of a create (see _create.c).", -1, methods};

PyMODINIT_FUNC
PyInit__create(void)
{
    detect_cpu();
    crc_init();
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    PyObject *constants = Py_BuildValue(
        "{sIsIsIsIsIsIsIsIsI}", "BLOCK_SIZE", BLOCK_SIZE, "NODE_MAGIC", NODE_MAGIC, "NODE_KEYS",
        NODE_KEYS, "INTERNAL_CAP", INTERNAL_CAP, "LEAF_CAP", LEAF_CAP, "LEAF_HEAP_MIN",
        LEAF_HEAP_MIN, "VERIFIED_LIMIT", VERIFIED_LIMIT, "INODE_SIZE", INODE_SIZE,
        "INODE_MAGIC", INODE_MAGIC);
    if (constants == NULL || PyModule_AddObject(m, "CONSTANTS", constants) < 0) {
        Py_XDECREF(constants);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
