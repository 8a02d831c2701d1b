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
  3. A directory's key index, while it exists, holds exactly the keys of its
     tree as the current reader sees them: the committed tree, plus the
     changes of the open transaction (``add`` and ``remove`` change the index
     in the same call that changes the tree; an abort drops the index).

In-memory indexes
-----------------
*Key index* (``KeyIndex``, one per directory, built on first lookup from the
committed tree by ``BTree.keys``): the set of the tree's keys, as a sorted
array of u64 (8 bytes a key) plus two small sets of keys added and removed
since, merged into the array when they outgrow a sixteenth of it.  A key the
index does not hold is in no leaf, so the name is absent: a create's lookup
and its insert skip two tree descents.  A key it holds proves nothing about
the *name* (two names may share a 64-bit hash): the entry is then read from
the tree and its name compared, exactly as without the index, so the index
never answers with an inode, only with "absent".  Indexes are kept for the
directories used last, up to INDEX_LIMIT keys in all; one whose directory
inode was freed and reused is recognised by the generation and rebuilt.

*Dentry cache* (``_dcache``): (directory, name) -> (ino, type) of committed
entries, bounded; every change to a name pops it.

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
from daxfs.fs.alloc import Allocator
from daxfs.fs.btree import BTree
from daxfs.fs.extmap import InodeNodes
from daxfs.fs.inode import Inode, InodeTable
from daxfs.fs.journal import Transaction
from daxfs.fs.layout import (
    DIRENT,
    DT_DIR,
    DT_LNK,
    DT_REG,
    FIRST_FREE_INO,
    MAP_BTREE,
    MAP_NONE,
    MAX_VALUE,
    TREE_DIRECTORY,
)
from daxfs.fs.store import Reader

Entry = tuple[bytes, int, int]  # name, ino, DT_* type
DCACHE_LIMIT = 1 << 16
#: keys held by all key indexes together (8 bytes each) before the oldest go
INDEX_LIMIT = 1 << 23
#: a key index merges its pending changes when they reach 1/MERGE_SHARE of its array
MERGE_SHARE = 16


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


class KeyIndex:
    """The keys of one directory's tree, in memory (see "In-memory indexes").

    Present keys are those in ``added``, or in ``base`` and not in ``removed``;
    ``added`` and ``base`` are disjoint, and ``removed`` is a subset of ``base``.
    """

    __slots__ = ("added", "base", "generation", "removed")

    def __init__(self, base: array.array[int], generation: int) -> None:
        #: sorted, strictly increasing
        self.base = base
        self.added: set[int] = set()
        self.removed: set[int] = set()
        #: the directory inode's generation when built (an ino freed and reused differs)
        self.generation = generation

    def __len__(self) -> int:
        return len(self.base) + len(self.added) - len(self.removed)

    def _in_base(self, key: int) -> bool:
        base = self.base
        i = bisect_left(base, key)
        return i < len(base) and base[i] == key

    def __contains__(self, key: int) -> bool:
        if key in self.added:
            return True
        return key not in self.removed and self._in_base(key)

    def add(self, key: int) -> None:
        if self._in_base(key):
            self.removed.discard(key)
        else:
            self.added.add(key)
        self._maybe_merge()

    def discard(self, key: int) -> None:
        if key in self.added:
            self.added.discard(key)
        elif self._in_base(key):
            self.removed.add(key)
        self._maybe_merge()

    def _maybe_merge(self) -> None:
        if len(self.added) + len(self.removed) >= max(256, len(self.base) // MERGE_SHARE):
            self.merge()

    def merge(self) -> None:
        """Fold ``added`` and ``removed`` into ``base``."""
        keys = np.frombuffer(self.base, dtype=np.uint64) if len(self.base) else _NO_KEYS
        if self.removed:
            gone = np.fromiter(self.removed, dtype=np.uint64, count=len(self.removed))
            keys = keys[~np.isin(keys, gone)]
        if self.added:
            new = np.fromiter(self.added, dtype=np.uint64, count=len(self.added))
            keys = np.union1d(keys, new)
        base: array.array[int] = array.array("Q")
        base.frombytes(keys.astype(np.uint64).tobytes())
        self.base, self.added, self.removed = base, set(), set()

    @classmethod
    def build(cls, keys: array.array[int], generation: int) -> KeyIndex | None:
        """An index of ``keys`` (a tree's, leaves left to right), or None if they are
        not strictly increasing (a damaged tree: lookups then use the tree alone)."""
        if len(keys) > 1:
            view = np.frombuffer(keys, dtype=np.uint64)
            if not bool(np.all(view[1:] > view[:-1])):
                return None
        return cls(keys, generation)


_NO_KEYS = np.zeros(0, dtype=np.uint64)


class Directories:
    """Directory operations for every directory of a filesystem."""

    def __init__(self, itable: InodeTable, alloc: Allocator, hash_key: bytes) -> None:
        self.itable = itable
        self.alloc = alloc
        self.hash_key = hash_key
        self._keyed = hashlib.blake2b(digest_size=8, key=hash_key)
        self.store = itable.store
        #: dentry cache: (directory ino, name) -> (ino, type), committed entries only;
        #: bounded; every change to a name pops it (an aborted change then only costs a miss)
        self._dcache: OrderedDict[tuple[int, bytes], tuple[int, int]] = OrderedDict()
        #: key indexes by directory ino, oldest first (see "In-memory indexes")
        self._indexes: dict[int, KeyIndex] = {}
        #: keys they hold, as counted when each was built or grew
        self._indexed = 0
        #: names removed or retargeted so far (the path cache's epoch)
        self.removals = 0
        self.index_builds = 0
        #: lookups the key index answered "absent" without a tree descent
        self.index_negatives = 0

    def hash(self, name: bytes) -> int:
        h = self._keyed.copy()  # the key block is absorbed once, in __init__
        h.update(name)
        return int.from_bytes(h.digest(), "little")

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
        if index is not None and key not in index:
            self.index_negatives += 1
            return None
        value = self._tree(inode).get(reader, key)
        if value is None:
            return None
        for entry_name, ino, dtype in self._unpack(value, inode):
            if entry_name == name:
                if committed:
                    if len(self._dcache) >= DCACHE_LIMIT:
                        self._dcache.popitem(last=False)
                    self._dcache[inode.ino, name] = (ino, dtype)
                return ino, dtype
        return None

    def _index(self, inode: Inode, build: bool) -> KeyIndex | None:
        """The key index of directory ``inode``; made from the committed tree if
        ``build`` (the reader is the store: no transaction has changed the tree)."""
        index = self._indexes.get(inode.ino)
        if index is not None and index.generation == inode.rec.generation:
            return index
        if not build:
            return None
        self.drop_index(inode.ino)
        index = KeyIndex.build(self._tree(inode).keys(self.store), inode.rec.generation)
        if index is None:
            return None
        self.index_builds += 1
        self._indexed += len(index)
        while self._indexed > INDEX_LIMIT and self._indexes:
            self.drop_index(next(iter(self._indexes)))
        self._indexes[inode.ino] = index
        return index

    def drop_index(self, ino: int) -> None:
        """Forget the key index of directory ``ino`` (rebuilt on its next lookup)."""
        index = self._indexes.pop(ino, None)
        if index is not None:
            self._indexed -= len(index)

    def _changing(self, tx: Transaction, inode: Inode) -> KeyIndex | None:
        """The key index of ``inode``, which ``tx`` changes: dropped if it aborts."""
        index = self._indexes.get(inode.ino)
        if index is None or index.generation != inode.rec.generation:
            return None
        watched: set[int] | None = tx.scratch.get("dir-index")
        if watched is None:
            watched = tx.scratch["dir-index"] = set()
            tx.on_abort(lambda: self._aborted(watched))
        watched.add(inode.ino)
        return index

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
        old = tree.get(tx, key) if index is None or key in index else None
        entries = self._unpack(old, inode) if old else []
        assert all(n != name for n, _, _ in entries), f"{name!r} already present"
        entries.append((name, ino, dtype))
        value = pack_entries(entries)
        if len(value) > MAX_VALUE:  # pragma: no cover - needs ~9 names on one 64-bit hash
            raise Corrupted(f"directory inode {inode.ino}: too many hash collisions")
        tree.put(tx, key, value)
        self._store(tx, inode, tree, +1)
        if index is not None:
            index.add(key)
            self._indexed += 1

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
        else:
            tree.delete(tx, key)
            if index is not None:
                index.discard(key)
        self._store(tx, inode, tree, -1)
        return gone[0][1], gone[0][2]

    def retarget(self, tx: Transaction, inode: Inode, name: bytes, ino: int, dtype: int) -> None:
        """Point the existing entry ``name`` at another inode (rename over a target)."""
        self._dcache.pop((inode.ino, name), None)
        self.removals += 1
        tree = self._tree(inode)
        key = self.hash(name)
        old = tree.get(tx, key)
        assert old is not None
        entries = [
            (n, ino, dtype) if n == name else (n, i, t) for n, i, t in self._unpack(old, inode)
        ]
        tree.put(tx, key, pack_entries(entries))
        self._store(tx, inode, tree, 0)

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
