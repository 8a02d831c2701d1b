"""Directories: names to inode numbers, in a hashed B+tree per directory.

Theory of operation
-------------------
A directory's entries live in a B+tree (kind TREE_DIRECTORY) keyed by a
64-bit keyed hash of the name (BLAKE2b with the filesystem's ``hash_key``,
so names chosen to collide on one filesystem do not collide on another).
The value under a key is every entry whose name has that hash, packed as
``DIRENT`` headers followed by the name; two names share a key only on a
hash collision, which is rare, so lookup is one tree descent: O(log n), and
the tree is at most three levels deep for millions of entries.

An empty directory has no tree (map_kind MAP_NONE).  ``rec.entries`` counts
entries; "." and ".." are not stored: "." is the directory and ".." is
``rec.parent``.

Listing walks the tree in key order.  A listing position is (key, index
within the value), so a listing that resumes after changes neither repeats
nor skips entries that stayed.

Invariants
  1. Names are unique in a directory, non-empty, at most 255 bytes, hold
     neither NUL nor "/", and are neither "." nor "..".  Every entry read
     from media is checked for this (and for its type and inode number)
     before use: a name from a crafted image never becomes a path component.
  2. ``rec.entries`` equals the number of entries in the tree (fsck checks;
     the code trusts it only as far as ``rmdir``'s emptiness test, which
     also requires that no tree exists).
  3. A directory's index, while it exists, holds exactly the keys of its
     tree as the current reader sees them, and for each key what its value
     says: the committed tree, plus the changes of the open transaction
     (``add``, ``remove`` and ``retarget`` change the index in the same call
     that changes the tree; an abort drops the index).
  4. The index answers with an inode only for a name it holds byte for
     byte; a key shared by several names, or a name longer than
     INLINE_NAME, is answered by the tree.

In-memory indexes
-----------------
*Directory index* (``DirIndex``, one per directory, NOVA's DRAM radix tree
in spirit): built on a directory's first lookup from its committed B+tree
(``BTree.leaves``: every node verified as a descent verifies it; keys
checked ascending, else no index), it holds, sorted by key, each key and,
when the key's value is a single entry with a name of at most 15 bytes, the
entry's inode, type and name: 8 + 8 + 16 = 32 bytes a key, in three flat
arrays, with the changes since in a small dict and set, merged into the
arrays when they outgrow a sixteenth of them.  Entries are checked at build
as ``unpack_entries`` checks them; one that fails, like a key shared by two
names (a 64-bit hash collision) or a long name, is kept as "read the tree",
so the tree's checks still see it.  A lookup then costs a hash, a bisect and
a byte comparison of the name: a key the index lacks is in no leaf (absent),
a held name answers with its inode, a key held for another name is absent
too, and only "read the tree" keys descend.  Creates skip two of their
three descents (the lookup, and the read of the old value before the
insert).  Indexes are kept for the directories used last, up to INDEX_LIMIT
keys in all; one whose directory inode was freed and reused is recognised
by its generation and rebuilt.

*Dentry cache* (``_dcache``): (directory, name) -> (ino, type) of committed
entries found, bounded (a hit costs no hash); every change to a name pops it.

``removals`` counts the changes that can make a path resolve differently
(a name removed or pointed elsewhere, a directory emptied); the
filesystem's path cache of stat starts again when it moves.
"""

from __future__ import annotations

import array
import hashlib
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Iterator

import numpy as np

from daxfs.errors import Corrupted
from daxfs.fs import _create
from daxfs.fs.alloc import Allocator
from daxfs.fs.btree import BTree
from daxfs.fs.extmap import InodeNodes
from daxfs.fs.inode import Inode, InodeTable
from daxfs.fs.journal import Transaction
from daxfs.fs.layout import (
    BLOCK_SIZE,
    DIRENT,
    DT_DIR,
    DT_LNK,
    DT_REG,
    FIRST_FREE_INO,
    LEAF_HEAP_MIN,
    LEAF_SLOTS,
    MAP_BTREE,
    MAP_NONE,
    MAX_VALUE,
    NODE_KEYS,
    TREE_DIRECTORY,
)
from daxfs.fs.store import Reader

Entry = tuple[bytes, int, int]  # name, ino, DT_* type
DCACHE_LIMIT = 1 << 16
#: keys held by all directory indexes together (32 bytes each) before the oldest go
INDEX_LIMIT = 1 << 22
#: an index merges its pending changes when they reach 1/MERGE_SHARE of its arrays
MERGE_SHARE = 16
#: DirIndex's key search in C (_create.u64_position); off: the bisect (the reference)
NATIVE_SEARCH = True
#: DirIndex.merge's arrays in C (_create.index_merge, one pass); off: numpy (the reference)
NATIVE_MERGE = True


def pack_entries(entries: list[Entry]) -> bytes:
    return b"".join(DIRENT.pack(ino, dtype, len(name)) + name for name, ino, dtype in entries)


#: the file types an entry may say (daxfs makes no other kind of file)
DTYPES = frozenset({DT_REG, DT_DIR, DT_LNK})


def unpack_entries(value: bytes, where: str, hwm: int) -> list[Entry]:
    """Decode a value into entries; ``where`` names the directory in errors.

    Every entry is validated before it can become a path component: a name
    of 1 to 255 bytes, without NUL or "/", neither "." nor ".."; a known
    file type; an inode number that can be a file's (not 0, 1 or the root,
    below the high-water mark ``hwm``).

    Raises:
        Corrupted (EUCLEAN): naming the directory and what is wrong.
    """
    out: list[Entry] = []
    pos = 0
    while pos < len(value):
        if pos + DIRENT.size > len(value):
            raise Corrupted(f"{where}: truncated directory entry")
        ino, dtype, namelen = DIRENT.unpack_from(value, pos)
        pos += DIRENT.size
        name = value[pos : pos + namelen]
        if (
            namelen == 0
            or len(name) != namelen
            or name in (b".", b"..")
            or b"/" in name
            or b"\0" in name
        ):
            raise Corrupted(f"{where}: malformed directory entry name {name!r}")
        if dtype not in DTYPES:
            raise Corrupted(f"{where}: entry {name!r} has unknown file type {dtype}")
        if not FIRST_FREE_INO <= ino < hwm:
            raise Corrupted(f"{where}: entry {name!r} names inode {ino}, which no file can be")
        if any(name == other for other, _, _ in out):
            raise Corrupted(f"{where}: entry {name!r} appears twice")
        out.append((name, ino, dtype))
        pos += namelen
    if not out:
        raise Corrupted(f"{where}: empty directory entry record")
    return out


#: what an index entry may say about a key
Found = tuple[int, int] | None


class _Maybe:
    """The index cannot answer for this key: read the tree."""

    def __repr__(self) -> str:
        return "MAYBE"


MAYBE = _Maybe()
#: names of at most this many bytes are kept in the index (with their length: 16 bytes)
INLINE_NAME = 15
_SLOT = INLINE_NAME + 1
#: inode numbers the index holds (the top byte of a value is the entry's type)
_INO_LIMIT = 1 << 56
#: a value that says "read the tree" (several names share the key, a long name, ...)
_TREE = 0
_LEN = [bytes([n]) for n in range(256)]
_CHUNK = 512  # leaves decoded at once by build


def index_record(entries: list[Entry]) -> tuple[int, bytes]:
    """What the index keeps for a key whose value holds ``entries``: (value, name slot).

    One entry with a short name: (ino | type << 56, length byte + name, zero-padded);
    anything else (a collision, a long name, a huge inode number): (_TREE, zeros).
    """
    if len(entries) == 1:
        name, ino, dtype = entries[0]
        if len(name) <= INLINE_NAME and ino < _INO_LIMIT:
            return ino | dtype << 56, (_LEN[len(name)] + name).ljust(_SLOT, b"\0")
    return _TREE, bytes(_SLOT)


class DirIndex:
    """One directory's entries in memory, by key (see "In-memory indexes").

    ``keys`` (sorted, strictly increasing), ``values`` and ``names`` (16 bytes a
    key) are parallel; ``added`` overrides them (a key added or changed since),
    ``removed`` hides keys of ``keys``.  32 bytes a key, plus the pending
    changes, merged into the arrays when they outgrow a sixteenth of them.
    """

    __slots__ = (
        "added",
        "count",
        "fence",
        "generation",
        "keys",
        "merge_at",
        "names",
        "removed",
        "values",
    )

    def __init__(
        self, keys: array.array[int], values: array.array[int], names: bytes, generation: int
    ) -> None:
        self.keys = keys
        self.values = values
        self.names = names
        self.added: dict[int, tuple[int, bytes]] = {}
        self.removed: set[int] = set()
        #: the directory inode's generation when built (an ino freed and reused differs)
        self.generation = generation
        #: keys held: those of ``keys`` not removed, and those added that it lacks
        self.count = len(keys)
        #: pending changes (``added`` and ``removed``) at which ``merge`` runs
        self.merge_at = max(256, len(keys) // MERGE_SHARE)
        #: the C stat path's bucket array over ``keys`` (daxfs/fs/_stat.c builds it on
        #: first use, and tells it is for this ``keys`` by identity): a cache of where
        #: each 2^k-th of the key space starts, never read here
        self.fence: object = None

    def __len__(self) -> int:
        return self.count

    def _position(self, key: int) -> int:
        """Index of ``key`` in ``keys``, or -1 (with ``NATIVE_SEARCH``, the bisect
        below in C: ``_create.u64_position``)."""
        if NATIVE_SEARCH:
            return _create.u64_position(self.keys, key)
        keys = self.keys
        i = bisect_left(keys, key)
        return i if i < len(keys) and keys[i] == key else -1

    def __contains__(self, key: int) -> bool:
        if key in self.added:
            return True
        return key not in self.removed and self._position(key) >= 0

    def find(self, key: int, name: bytes) -> Found | _Maybe:
        """(ino, type) of ``name`` (whose hash is ``key``), None if absent, or MAYBE.

        The stored name is compared with ``name`` byte for byte: a key shared
        with another name never answers for this one.
        """
        probe = _LEN[len(name)] + name
        record = self.added.get(key)
        if record is not None:
            value, slot = record
            if value == _TREE:
                return MAYBE
            return (value & (_INO_LIMIT - 1), value >> 56) if slot.startswith(probe) else None
        if key in self.removed:
            return None
        i = self._position(key)
        if i < 0:
            return None
        value = self.values[i]
        if value == _TREE:
            return MAYBE
        if self.names.startswith(probe, _SLOT * i):
            return value & (_INO_LIMIT - 1), value >> 56
        return None  # the key's single entry has another name

    def put(self, key: int, entries: list[Entry], new: bool | None = None) -> None:
        """The key's value now holds ``entries`` (at least one).  ``new``: whether the
        index lacked the key, if the caller knows (else it is looked up)."""
        if key not in self if new is None else new:
            self.count += 1
        self.added[key] = index_record(entries)
        self.removed.discard(key)
        if len(self.added) + len(self.removed) >= self.merge_at:
            self.merge()

    def discard(self, key: int) -> None:
        """The key's value is gone."""
        in_keys = self._position(key) >= 0  # one search (``in`` would make a second)
        held = in_keys and key not in self.removed
        if self.added.pop(key, None) is not None or held:
            self.count -= 1
        if in_keys:
            self.removed.add(key)
        self._maybe_merge()

    def _maybe_merge(self) -> None:
        if len(self.added) + len(self.removed) >= self.merge_at:
            self.merge()

    def merge(self) -> None:
        """Fold ``added`` and ``removed`` into the arrays.

        O(n) copies, no sort of the whole index: removed keys (and added keys the
        arrays hold, whose records change) are found by ``searchsorted`` and
        deleted, the added keys sorted among themselves and inserted at their
        ``searchsorted`` positions.
        """
        if NATIVE_MERGE:  # the numpy code below in one C pass
            merged = _create.index_merge(
                self.keys, self.values, self.names, self.added, self.removed
            )
            self.keys = array.array("Q")
            self.keys.frombytes(merged[0])
            self.values = array.array("Q")
            self.values.frombytes(merged[1])
            self.names = merged[2]
            self._merged()
            return
        keys = np.frombuffer(self.keys, dtype=np.uint64) if len(self.keys) else _NO_KEYS
        values = np.frombuffer(self.values, dtype=np.uint64) if len(self.keys) else _NO_KEYS
        names = np.frombuffer(self.names, dtype=np.uint8).reshape(-1, _SLOT)
        drop = self.removed | self.added.keys()
        if drop and len(keys):
            gone = np.fromiter(drop, dtype=np.uint64, count=len(drop))
            at = np.searchsorted(keys, gone)
            held = at < len(keys)
            at = at[held]
            at = at[keys[at] == gone[held]]
            if len(at):
                keys, values = np.delete(keys, at), np.delete(values, at)
                names = np.delete(names, at, axis=0)
        added = self.added
        if added:
            k = len(added)
            new_keys = np.fromiter(added.keys(), dtype=np.uint64, count=k)
            records = added.values()
            new_values = np.fromiter((v for v, _ in records), dtype=np.uint64, count=k)
            extra = np.frombuffer(b"".join([n for _, n in records]), dtype=np.uint8)
            order = np.argsort(new_keys)
            new_keys, new_values = new_keys[order], new_values[order]
            at = np.searchsorted(keys, new_keys)
            keys, values = np.insert(keys, at, new_keys), np.insert(values, at, new_values)
            names = np.insert(names, at, extra.reshape(-1, _SLOT)[order], axis=0)
        self.keys = _u64_array(keys)
        self.values = _u64_array(values)
        self.names = names.tobytes()
        self._merged()

    def _merged(self) -> None:
        """After the arrays took the pending changes: forget them (and the bucket array)."""
        self.added, self.removed = {}, set()
        self.fence = None  # of the arrays replaced (C would tell, by identity)
        self.merge_at = max(256, len(self.keys) // MERGE_SHARE)
        assert len(self.keys) == self.count, f"index count {self.count} != {len(self.keys)} keys"

    @classmethod
    def build(
        cls, leaves: Iterator[tuple[int, memoryview, int]], hwm: int, generation: int
    ) -> DirIndex | None:
        """An index of a directory tree's leaves (``BTree.leaves``, left to right), or
        None if their keys are not strictly increasing (a damaged tree: lookups then
        use the tree alone).

        Entries are checked as ``unpack_entries`` checks them; one that fails (or
        shares its key, or has a long name) is kept as "read the tree", so that
        the tree's checks still raise on it.
        """
        keys: list[np.ndarray] = []
        values: list[np.ndarray] = []
        names: list[np.ndarray] = []
        chunk: list[tuple[memoryview, int]] = []
        for _, view, count in leaves:
            chunk.append((view, count))
            if len(chunk) == _CHUNK:
                _decode_leaves(chunk, hwm, keys, values, names)
                chunk = []
        if chunk:
            _decode_leaves(chunk, hwm, keys, values, names)
        all_keys = np.concatenate(keys) if keys else _NO_KEYS
        if len(all_keys) > 1 and not bool(np.all(all_keys[1:] > all_keys[:-1])):
            return None
        all_values = np.concatenate(values) if values else _NO_KEYS
        all_names = np.concatenate(names) if names else np.zeros((0, _SLOT), np.uint8)
        return cls(_u64_array(all_keys), _u64_array(all_values), all_names.tobytes(), generation)


def _u64_array(values: np.ndarray) -> array.array[int]:
    out: array.array[int] = array.array("Q")
    out.frombytes(values.astype(np.uint64).tobytes())
    return out


_NO_KEYS = np.zeros(0, dtype=np.uint64)
_DTYPE_CODES = np.array(sorted({DT_REG, DT_DIR, DT_LNK}), dtype=np.uint8)
_SLASH, _DOT = ord("/"), ord(".")


def _gather(buf: np.ndarray, pos: np.ndarray, width: int) -> np.ndarray:
    """``width`` bytes at each of ``pos`` in ``buf``: an (n, width) array (a copy)."""
    return buf[pos[:, None] + np.arange(width)]


def _decode_leaves(
    chunk: list[tuple[memoryview, int]],
    hwm: int,
    keys: list[np.ndarray],
    values: list[np.ndarray],
    names: list[np.ndarray],
) -> None:
    """Decode verified leaves (copied out of device memory) into index arrays."""
    raw = bytearray(len(chunk) * BLOCK_SIZE + 32)  # slack: gathers past a block's end
    for i, (view, _) in enumerate(chunk):
        raw[i * BLOCK_SIZE : (i + 1) * BLOCK_SIZE] = view
    buf = np.frombuffer(raw, dtype=np.uint8)
    counts = np.array([count for _, count in chunk], dtype=np.int64)
    base = np.repeat(np.arange(len(chunk), dtype=np.int64) * BLOCK_SIZE, counts)
    j = np.arange(len(base), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    keys.append(_gather(buf, base + NODE_KEYS + 8 * j, 8).view("<u8").ravel())
    slots = _gather(buf, base + LEAF_SLOTS + 4 * j, 4).view("<u2")
    off = slots[:, 0].astype(np.int64)
    size = slots[:, 1].astype(np.int64)
    ok = (off >= LEAF_HEAP_MIN) & (off + size <= BLOCK_SIZE) & (size > DIRENT.size)
    at = base + np.where(ok, off, LEAF_HEAP_MIN)
    head = _gather(buf, at, DIRENT.size)
    ino = np.ascontiguousarray(head[:, :8]).view("<u8").ravel()
    dtype = head[:, 8]
    namelen = head[:, 9].astype(np.int64)
    ok &= (size == DIRENT.size + namelen) & (namelen <= INLINE_NAME)
    ok &= (ino >= FIRST_FREE_INO) & (ino < min(hwm, _INO_LIMIT)) & np.isin(dtype, _DTYPE_CODES)
    name = _gather(buf, at + DIRENT.size, INLINE_NAME)
    inside = np.arange(INLINE_NAME) < namelen[:, None]
    # unpack_entries' name checks (invariant 1): no NUL or "/", neither "." nor ".."
    ok &= ~(((name == 0) | (name == _SLASH)) & inside).any(axis=1)
    dots = name[:, 0] == _DOT
    ok &= ~(dots & ((namelen == 1) | ((namelen == 2) & (name[:, 1] == _DOT))))
    name[~inside] = 0
    slot = np.concatenate([namelen.astype(np.uint8)[:, None], name], axis=1)
    slot[~ok] = 0
    values.append(np.where(ok, ino | dtype.astype(np.uint64) << np.uint64(56), np.uint64(_TREE)))
    names.append(slot)


class Directories:
    """Directory operations for every directory of a filesystem."""

    def __init__(self, itable: InodeTable, alloc: Allocator, hash_key: bytes) -> None:
        self.itable = itable
        self.alloc = alloc
        self.hash_key = hash_key
        self._keyed = hashlib.blake2b(digest_size=8, key=hash_key)
        #: the last name hashed and its key (``hash``)
        self._last: tuple[bytes, int] = (b"", int.from_bytes(self._keyed.digest(), "little"))
        self.store = itable.store
        #: dentry cache: (directory ino, name) -> (ino, type), committed entries only;
        #: bounded; every change to a name pops it (an aborted change then only costs a miss)
        self._dcache: OrderedDict[tuple[int, bytes], tuple[int, int]] = OrderedDict()
        #: indexes by directory ino, oldest first (see "In-memory indexes")
        self._indexes: dict[int, DirIndex] = {}
        #: keys they hold, as counted when each was built or grew
        self._indexed = 0
        #: names removed or retargeted so far (the path cache's epoch)
        self.removals = 0
        self.index_builds = 0
        #: lookups the index answered, with an inode or "absent", without the tree
        self.index_answers = 0

    def hash(self, name: bytes) -> int:
        """The key of ``name``; the last one is remembered (a create hashes its name
        in the lookup that finds it absent, then in ``add``)."""
        last = self._last  # one tuple: threads see a name with its own key
        if name == last[0]:
            return last[1]
        h = self._keyed.copy()  # the key block is absorbed once, in __init__
        h.update(name)
        key = int.from_bytes(h.digest(), "little")
        self._last = (name, key)
        return key

    def _unpack(self, value: bytes, inode: Inode) -> list[Entry]:
        return unpack_entries(value, f"directory inode {inode.ino}", self.itable.sup.sb.inode_hwm)

    def _tree(self, inode: Inode) -> BTree:
        rec = inode.rec
        if rec.map_kind not in (MAP_NONE, MAP_BTREE):
            raise Corrupted(f"directory inode {inode.ino}: bad map kind {rec.map_kind}")
        return BTree(
            inode.ino,
            TREE_DIRECTORY,
            rec.map_root,
            rec.map_height,
            InodeNodes(self.alloc, self.itable, inode),
        )

    def _store(self, tx: Transaction, inode: Inode, tree: BTree, delta: int) -> None:
        rec = self.itable.dirty(tx, inode)
        rec.map_root, rec.map_height = tree.root, tree.height
        rec.map_kind = MAP_BTREE if tree.root else MAP_NONE
        rec.entries += delta

    def lookup(self, reader: Reader, inode: Inode, name: bytes) -> tuple[int, int] | None:
        """(ino, type) of ``name`` in directory ``inode``, or None.

        Raises:
            Corrupted (EUCLEAN): a node or the entry read failed its checks.
        """
        committed = reader is self.store
        if committed:
            hit = self._dcache.get((inode.ino, name))
            if hit is not None:
                return hit
        if inode.rec.map_kind == MAP_NONE:
            return None
        key = self.hash(name)
        index = self._index(inode, committed)
        if index is not None:
            found = index.find(key, name)
            if found is not MAYBE:
                self.index_answers += 1
                if committed and found is not None:
                    self._remember(inode.ino, name, found)  # type: ignore[arg-type]
                return found  # type: ignore[return-value]
        value = self._tree(inode).get(reader, key)
        if value is None:
            return None
        for entry_name, ino, dtype in self._unpack(value, inode):
            if entry_name == name:
                if committed:
                    self._remember(inode.ino, name, (ino, dtype))
                return ino, dtype
        return None

    def absent_key(self, inode: Inode, name: bytes) -> int:
        """The key of ``name`` if the current index of directory ``inode`` lacks that
        key (then the name is absent: committed state, no transaction open), else -1
        (no index built, or the key is held: ``lookup`` must answer)."""
        index = self._indexes.get(inode.ino)
        if index is None or index.generation != inode.rec.generation:
            return -1
        key = self.hash(name)
        if key in index:
            return -1
        self.index_answers += 1
        return key

    def _remember(self, parent: int, name: bytes, found: tuple[int, int]) -> None:
        """Put a committed entry in the dentry cache (LRU, bounded)."""
        if len(self._dcache) >= DCACHE_LIMIT:
            self._dcache.popitem(last=False)
        self._dcache[parent, name] = found

    def _index(self, inode: Inode, build: bool) -> DirIndex | None:
        """The index of directory ``inode``; made from the committed tree if
        ``build`` (the reader is the store: no transaction has changed the tree)."""
        index = self._indexes.get(inode.ino)
        if index is not None and index.generation == inode.rec.generation:
            return index
        if not build:
            return None
        self.drop_index(inode.ino)
        hwm = self.itable.sup.sb.inode_hwm
        index = DirIndex.build(self._tree(inode).leaves(self.store), hwm, inode.rec.generation)
        if index is None:
            return None
        self.index_builds += 1
        self._indexed += len(index)
        while self._indexed > INDEX_LIMIT and self._indexes:
            self.drop_index(next(iter(self._indexes)))
        self._indexes[inode.ino] = index
        return index

    @property
    def indexes(self) -> dict[int, DirIndex]:
        """The indexes by directory ino, for the C stat path (daxfs/fs/_stat.c), which
        only reads them (and checks each one's generation, as ``ready_index``)."""
        return self._indexes

    def ready_index(self, inode: Inode) -> DirIndex | None:
        """The index of directory ``inode`` if one is built and current (no build)."""
        index = self._indexes.get(inode.ino)
        if index is not None and index.generation == inode.rec.generation:
            return index
        return None

    def drop_index(self, ino: int) -> None:
        """Forget the index of directory ``ino`` (rebuilt on its next lookup)."""
        index = self._indexes.pop(ino, None)
        if index is not None:
            self._indexed -= len(index)

    def _changing(self, tx: Transaction, inode: Inode) -> DirIndex | None:
        """The index of ``inode``, which ``tx`` changes: dropped if it aborts."""
        index = self._indexes.get(inode.ino)
        if index is None or index.generation != inode.rec.generation:
            return None
        watched: set[int] | None = tx.scratch.get("dir-index")
        if watched is None:
            watched = tx.scratch["dir-index"] = set()
            tx.on_abort(lambda: self._aborted(watched))
        watched.add(inode.ino)
        return index

    def added(self, index: DirIndex, parent: int, name: bytes, key: int, ino: int) -> None:
        """What ``add`` does beyond the tree for a new key (``key not in index``) and a
        regular file: ``name`` out of the dentry cache, the entry into ``index``.  For
        the create fast path (daxfs.fs.fastcreate), which made the put itself."""
        self._dcache.pop((parent, name), None)
        # DirIndex.put(key, [(name, ino, DT_REG)], True) and its index_record, inline
        if len(name) <= INLINE_NAME and ino < _INO_LIMIT:
            record = (ino | DT_REG << 56, (_LEN[len(name)] + name).ljust(_SLOT, b"\0"))
        else:
            record = (_TREE, bytes(_SLOT))
        index.count += 1
        index.added[key] = record
        index.removed.discard(key)
        if len(index.added) + len(index.removed) >= index.merge_at:
            index.merge()
        self._indexed += 1

    def _aborted(self, inos: set[int]) -> None:
        for ino in inos:
            self.drop_index(ino)

    def add(self, tx: Transaction, inode: Inode, name: bytes, ino: int, dtype: int) -> None:
        """Add an entry. Caller must have checked that ``name`` is absent."""
        self._dcache.pop((inode.ino, name), None)
        tree = self._tree(inode)
        key = self.hash(name)
        index = self._changing(tx, inode)
        # a key the index lacks has no value to extend: skip the descent of get
        held = index is None or key in index
        old = tree.get(tx, key) if held else None
        if old:
            entries = self._unpack(old, inode)
            assert all(n != name for n, _, _ in entries), f"{name!r} already present"
            entries.append((name, ino, dtype))
            value = pack_entries(entries)
        else:  # the common case: a new key (pack_entries of one entry)
            entries = [(name, ino, dtype)]
            value = DIRENT.pack(ino, dtype, len(name)) + name
        if len(value) > MAX_VALUE:  # pragma: no cover - needs ~9 names on one 64-bit hash
            raise Corrupted(f"directory inode {inode.ino}: too many hash collisions")
        tree.put(tx, key, value)
        self._store(tx, inode, tree, +1)
        if index is not None:
            index.put(key, entries, not held)  # a new key, or another name on a key it holds
            self._indexed += not held

    def remove(self, tx: Transaction, inode: Inode, name: bytes) -> tuple[int, int]:
        """Remove ``name``; return its (ino, type). Caller must have checked it exists."""
        self._dcache.pop((inode.ino, name), None)
        self.removals += 1
        tree = self._tree(inode)
        key = self.hash(name)
        index = self._changing(tx, inode)
        old = tree.get(tx, key)
        assert old is not None, f"{name!r} not in directory {inode.ino}"
        entries = self._unpack(old, inode)
        keep = [e for e in entries if e[0] != name]
        gone = [e for e in entries if e[0] == name]
        assert len(gone) == 1
        if keep:
            tree.put(tx, key, pack_entries(keep))
            if index is not None:
                index.put(key, keep)
        else:
            tree.delete(tx, key)
            if index is not None:
                before = len(index)
                index.discard(key)
                self._indexed += len(index) - before
        self._store(tx, inode, tree, -1)
        return gone[0][1], gone[0][2]

    def retarget(self, tx: Transaction, inode: Inode, name: bytes, ino: int, dtype: int) -> None:
        """Point the existing entry ``name`` at another inode (rename over a target)."""
        self._dcache.pop((inode.ino, name), None)
        self.removals += 1
        tree = self._tree(inode)
        key = self.hash(name)
        index = self._changing(tx, inode)
        old = tree.get(tx, key)
        assert old is not None
        entries = [
            (n, ino, dtype) if n == name else (n, i, t) for n, i, t in self._unpack(old, inode)
        ]
        tree.put(tx, key, pack_entries(entries))
        self._store(tx, inode, tree, 0)
        if index is not None:
            index.put(key, entries)

    def entries(
        self, reader: Reader, inode: Inode, after: tuple[int, int] | None = None
    ) -> Iterator[tuple[tuple[int, int], bytes, int, int]]:
        """Entries in listing order as (position, name, ino, type), after ``after``.

        Each name is checked to be stored under its hash, so that whatever is
        listed can be looked up.

        Raises:
            Corrupted (EUCLEAN): a node, an entry, or an entry's key is wrong.
        """
        if inode.rec.map_kind == MAP_NONE:
            return
        start_key, start_index = after if after is not None else (0, -1)
        for key, value in self._tree(inode).items(reader, start_key):
            for index, (name, ino, dtype) in enumerate(self._unpack(value, inode)):
                if key == start_key and index <= start_index and after is not None:
                    continue
                self._check_key(inode, key, name)
                yield (key, index), name, ino, dtype

    def _check_key(self, inode: Inode, key: int, name: bytes) -> None:
        """Raise unless ``name`` is stored under its hash (else listed, yet not found)."""
        if self.hash(name) != key:
            raise Corrupted(
                f"directory inode {inode.ino}: entry {name!r} is stored under key "
                f"{key:#x}, not under the hash of its name"
            )

    def tree_nodes(self, reader: Reader, inode: Inode) -> Iterator[int]:
        if inode.rec.map_kind == MAP_BTREE:
            yield from self._tree(inode).nodes(reader)

    def check(self, reader: Reader, inode: Inode) -> list[str]:
        """Structural problems of the directory's tree (for fsck)."""
        if inode.rec.map_kind == MAP_NONE:
            return []
        return self._tree(inode).check(reader)

    def clear(self, tx: Transaction, inode: Inode) -> None:
        """Free the tree of an empty directory."""
        self.removals += 1
        self.drop_index(inode.ino)
        tree = self._tree(inode)
        if tree.root:
            tree.clear(tx)
        self._store(tx, inode, tree, 0)
