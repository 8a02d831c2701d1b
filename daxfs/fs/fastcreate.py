"""The create fast path: the whole transaction of open(path, "x") in one lean call.

Theory of operation
-------------------
``FileSystem._create`` runs the generic transaction (the reference): allocate
the inode (``InodeTable.allocate``), insert the name (``Directories.add``),
stamp the parent (``_touch_dir``), commit (``Transaction.commit``: the on-seal
callbacks log the superblock and the inode records, the block records are
gathered, ``Committer.commit`` writes them).  Each layer marks what it changed
(``dirty``, ``on_seal``, ``on_abort``), so a create runs some 170 Python calls
for a few hundred nanoseconds of work in C.

``create`` makes the same transaction for the common case -- an inode taken at
the high-water mark in a slot already checked to be zero, a name whose key the
directory's index lacks, a leaf with room -- with none of that bookkeeping:
the C put into the leaf (``_create.tree_put``), the counters, the new record,
the parent's, then the records in the order the reference gathers them (the
leaf's changed lines, the superblock's two lines, the new inode's record, the
parent's) and the C commit (``Transaction._commit_native``).  Every device
operation is the reference's, with the same bytes in the same order
(tests/fs/test_fast_create.py).  It returns None, having changed nothing,
whenever the reference must run: the free list is not empty, the slot is not
known to be zero, the directory has no current index or its index holds the
key (another name on it), the put must split or compact, a location is not
cached, a field does not fit.

Invariants
  1. Nothing in memory changes before the C put succeeded; after it, a failure
     (of the commit or before it) undoes exactly what the reference's abort
     undoes: the superblock and the parent re-read from the device, the new
     inode dropped from the cache, the directory's index dropped.
  2. Only ``Committer.commit`` writes device memory (the simulator sees it).
"""

from __future__ import annotations

import stat as st
from typing import TYPE_CHECKING, Any

from daxfs.fs import _create, btree
from daxfs.fs import inode as inode_mod
from daxfs.fs import journal as journal_mod
from daxfs.fs import super as super_mod
from daxfs.fs.inode import Inode
from daxfs.fs.layout import (
    DIRENT,
    DT_REG,
    IFLAG_DAX,
    INODES_PER_BLOCK,
    MAP_BTREE,
    TREE_DIRECTORY,
    InodeRecord,
    seal_node,
)
from daxfs.fs.super import COUNTERS_START, SB_CRC_LINE

if TYPE_CHECKING:
    from daxfs.fs.filesystem import FileSystem

#: run ``create``; tests turn it off to run the reference alone (it is off too while any
#: of the C steps it is made of is: btree.NATIVE_PUT, inode.NATIVE_PACK,
#: journal.NATIVE_RECORDS, super.NATIVE_SEAL; and without a C committer)
FAST_CREATE = True


def create(fs: FileSystem, parent: Inode, name: bytes, mode: int, key: int = -1) -> Inode | None:
    """The new regular file ``parent``/``name`` with ``mode``, created and committed;
    None (nothing changed) if the reference must do it.  Caller holds the
    filesystem lock and has checked the name (absent, not too long) and that the
    filesystem is writable.  ``key``: the name's key, if the caller found the
    parent's current index without it under the same hold of the lock
    (``Directories.absent_key``), else -1.

    Raises:
        ReadOnly (EROFS) from ``Journal.begin``; what ``Committer.commit`` raises
        (OSError of the device; IOFailure after the commit point), handled as the
        reference handles it (``Transaction._commit_native``).
    """
    itable = fs.itable
    sup = itable.sup
    sb = sup.sb
    prec = parent.rec
    ino = sb.inode_hwm
    journal = fs.journal
    committer = journal.committer
    store = fs.store
    places = itable.locations
    if (
        not FAST_CREATE
        or not btree.NATIVE_PUT
        or not inode_mod.NATIVE_PACK
        or not journal_mod.NATIVE_RECORDS
        or not super_mod.NATIVE_SEAL
        or sb.free_ino_head
        or ino in itable.cache
        or ino >= inode_mod.MAX_INO
        or prec.map_kind != MAP_BTREE
        or committer is None
        or store.lazy
        or parent.ino // INODES_PER_BLOCK not in places
    ):
        return None
    # slots below zero_to were checked in a block the inode file had (it only grows);
    # above it, the slot's block must be in the file (else the file must grow)
    fresh = ino >= itable.zero_to
    if fresh and ino // INODES_PER_BLOCK >= itable.inode_file_blocks():
        return None
    dirs = fs.dirs
    index = dirs.ready_index(parent)
    if index is None:
        return None
    if key < 0:
        key = dirs.hash(name)
        if key in index:  # another name on the key: the reference extends its value
            return None
    tx = journal.begin()
    try:
        if fresh:  # the slots of its inode-file block: zero, or Corrupted
            itable.check_never_used(tx, ino)  # (and its location cached, unless growing)
        if ino // INODES_PER_BLOCK not in places:
            tx.abort()
            return None
        if not _create.tree_put(
            tx.blocks,
            tx.new_blocks,
            store.view,
            tx.verified,
            seal_node,
            parent.ino,
            TREE_DIRECTORY,
            prec.map_root,
            prec.map_height,
            key,
            DIRENT.pack(ino, DT_REG, len(name)) + name,
        ):
            tx.abort()  # nothing changed: the reference splits, compacts or raises
            return None
        tx.on_abort(lambda: _undo(fs, parent, ino))
        # InodeTable.allocate at the high-water mark
        sb.inode_hwm = ino + 1
        sb.used_inodes += 1
        generation = sb.next_generation = (sb.next_generation + 1) & 0xFFFFFFFF
        gid = prec.gid if prec.mode & st.S_ISGID else fs.gid
        t = inode_mod.now_ns()  # (one clock read: the parent's mtime and ctime too)
        rec = InodeRecord(ino, mode, 1, fs.uid, gid, 0, 0, t, t, t, t, generation)
        if prec.flags & IFLAG_DAX:  # daxflag.inherit
            rec.flags |= IFLAG_DAX
        inode = Inode(rec)
        itable.cache[ino] = inode
        # the rest of Directories.add, and FileSystem._touch_dir
        dirs.added(index, parent.ino, name, key, ino)
        prec.entries += 1
        prec.mtime_ns = prec.ctime_ns = t
        # the records in the order Transaction.commit gathers the reference's: the
        # blocks' changed lines, then what the on-seal callbacks log (the superblock's
        # two lines, the records of the inodes in the order they were made dirty)
        lines = sup.sealed_lines()
        inodes = _create.log_inodes({ino: inode, parent.ino: parent}, places)
        if lines is None or inodes is None:
            tx.abort()  # a field does not fit: the reference raises Corrupted naming it
            return None
        records: list[tuple[int, Any]] = []
        _create.block_records(tx.blocks, store.view, seal_node, records)
        records.append((COUNTERS_START, lines[0]))
        records.append((SB_CRC_LINE, lines[1]))
        records.extend(inodes)
        if not tx._commit_native(committer, journal.seq + 1, records):
            tx.abort()  # the log would not fit: the reference raises TransactionTooLarge
            return None
    except BaseException as exc:
        tx.abort(exc)  # (nothing if _commit_native ended it)
        raise
    return inode


def _undo(fs: FileSystem, parent: Inode, ino: int) -> None:
    """What the reference's abort undoes (its on_abort callbacks, in their order)."""
    itable = fs.itable
    itable.reload(parent)
    fs.dirs.drop_index(parent.ino)
    itable.forget(ino)
    fs.sup.reload()
