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
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterator

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
        """(ino, type) of ``name`` in directory ``inode``, or None."""
        committed = reader is self.store
        if committed:
            hit = self._dcache.get((inode.ino, name))
            if hit is not None:
                return hit
        if inode.rec.map_kind == MAP_NONE:
            return None
        value = self._tree(inode).get(reader, self.hash(name))
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

    def add(self, tx: Transaction, inode: Inode, name: bytes, ino: int, dtype: int) -> None:
        """Add an entry. Caller must have checked that ``name`` is absent."""
        self._dcache.pop((inode.ino, name), None)
        tree = self._tree(inode)
        key = self.hash(name)
        old = tree.get(tx, key)
        entries = self._unpack(old, inode) if old else []
        assert all(n != name for n, _, _ in entries), f"{name!r} already present"
        entries.append((name, ino, dtype))
        value = pack_entries(entries)
        if len(value) > MAX_VALUE:  # pragma: no cover - needs ~9 names on one 64-bit hash
            raise Corrupted(f"directory inode {inode.ino}: too many hash collisions")
        tree.put(tx, key, value)
        self._store(tx, inode, tree, +1)

    def remove(self, tx: Transaction, inode: Inode, name: bytes) -> tuple[int, int]:
        """Remove ``name``; return its (ino, type). Caller must have checked it exists."""
        self._dcache.pop((inode.ino, name), None)
        tree = self._tree(inode)
        key = self.hash(name)
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
        self._store(tx, inode, tree, -1)
        return gone[0][1], gone[0][2]

    def retarget(self, tx: Transaction, inode: Inode, name: bytes, ino: int, dtype: int) -> None:
        """Point the existing entry ``name`` at another inode (rename over a target)."""
        self._dcache.pop((inode.ino, name), None)
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
        tree = self._tree(inode)
        if tree.root:
            tree.clear(tx)
        self._store(tx, inode, tree, 0)
