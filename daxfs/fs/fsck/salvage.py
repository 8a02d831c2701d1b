"""Damaged structures: what they may still own, and what can be saved from them.

A record whose checksum failed, or a tree that failed ``BTree.check``, is not
trusted -- but what it points at may still be its own.  ``claim_record``
claims those blocks *weakly* (``State.weak``): no repair frees or reuses
them.  Directories are more: their entries prove themselves against the
keyed name hash, so ``salvage_dir`` gathers the entries a damaged tree still
holds, and the namespace pass rebuilds the directory from them.  The root
is never given up: a root whose record cannot be read is made anew
(``new_root``).

Invariants
  1. Weak claims only keep blocks: they never mark a free block used (a
     damaged extent may claim half the disk) and never report a conflict
     with a sound owner.
  2. Walks of damaged trees are bounded by the blocks of the filesystem
     (each block visited once) and by the node capacities.
"""

from __future__ import annotations

import contextlib
import stat as st
import struct
from collections.abc import Callable, Iterator

from daxfs.errors import Corrupted
from daxfs.fs.layout import (
    BLOCK_SIZE,
    DT_DIR,
    DT_LNK,
    DT_REG,
    EXTENT,
    EXTENT_VALUE,
    INLINE_EXTENTS,
    INO_INODE_FILE,
    INO_ROOT,
    INODE_CRC_OFFSET,
    INODE_MAGIC,
    INTERNAL_CAP,
    INTERNAL_CHILDREN,
    LEAF_CAP,
    LEAF_HEAP_MIN,
    LEAF_SLOTS,
    MAP_BTREE,
    MAP_INLINE,
    MAP_NONE,
    NODE_HEADER,
    NODE_KEYS,
    NODE_MAGIC,
    TREE_DIRECTORY,
    TREE_EXTENTS,
    XATTR_TYPES,
    InodeRecord,
    checksum_with_hole,
    node_ok,
    unpack_xattr_block,
)

from .context import Context, Fix, Salvage, Stage, State
from .entries import bad_name, parse_entries
from .fixes import replace_record
from .report import Problem

_DTYPES = {st.S_IFDIR: DT_DIR, st.S_IFREG: DT_REG, st.S_IFLNK: DT_LNK}


def unverified(raw: bytes, ino: int) -> InodeRecord | None:
    """Decode a record whose checksum failed, if its magic and number still hold."""
    (magic,) = struct.unpack_from("<I", raw, 0)
    (number,) = struct.unpack_from("<Q", raw, 8)
    if magic != INODE_MAGIC or number != ino:
        return None
    fixed = bytearray(raw)
    struct.pack_into("<I", fixed, INODE_CRC_OFFSET, checksum_with_hole(fixed, INODE_CRC_OFFSET))
    return InodeRecord.unpack_from(fixed, 0, ino)


def claim_record(s: State, ino: int, rec: InodeRecord) -> None:
    """Claim weakly every block a record that cannot be trusted seems to own."""
    if rec.map_kind == MAP_INLINE:
        # all the area could hold, inline attributes or not: an untrusted xattr_bytes
        # must not shrink what is kept from reuse (claiming too much is the safe side)
        raw = rec.inline[: min(rec.map_count, INLINE_EXTENTS) * EXTENT.size]
        for _, pblk, length, _ in struct.iter_unpack(EXTENT.format, raw):
            s.claim_weak(ino, pblk, length)
    elif rec.map_kind == MAP_BTREE:
        for pblk, length in _salvage_tree(s, rec.map_root):
            s.claim_weak(ino, pblk, length)
    if st.S_IFMT(rec.mode) in XATTR_TYPES and rec.xattr:  # its xattr block, and values
        s.claim_weak(ino, rec.xattr, 1)
        if s.sb.data_start <= rec.xattr < s.sb.block_count - 1:
            with contextlib.suppress(Corrupted):
                for e in unpack_xattr_block(s.store.block(rec.xattr), ino, rec.xattr):
                    for b in e.blocks:
                        s.claim_weak(ino, b, 1)


def _salvage_tree(s: State, root: int) -> Iterator[tuple[int, int]]:
    """Runs a tree that failed its check may own: every node reachable through
    nodes whose magic and self-reference hold, and the extents of such leaves."""
    lo, hi = s.sb.data_start, s.sb.block_count - 1
    seen: set[int] = set()
    stack = [root]
    while stack:
        blockno = stack.pop()
        if blockno in seen or not lo <= blockno < hi:
            continue
        seen.add(blockno)
        yield blockno, 1
        view = s.store.block(blockno)
        magic, _, _, where, level, count, kind, _, _ = NODE_HEADER.unpack_from(view)
        if magic != NODE_MAGIC or where != blockno:
            continue
        if level:
            count = min(count, INTERNAL_CAP)
            stack.extend(struct.unpack_from(f"<{count}Q", view, INTERNAL_CHILDREN))
        elif kind == TREE_EXTENTS:
            count = min(count, LEAF_CAP)
            slots = struct.unpack_from(f"<{2 * count}H", view, LEAF_SLOTS)
            for off, n in zip(slots[::2], slots[1::2], strict=True):
                if n == EXTENT_VALUE.size and off + n <= BLOCK_SIZE:
                    pblk, length, _ = EXTENT_VALUE.unpack_from(view, off)
                    yield pblk, length


def salvage_dir(ctx: Context, s: State, ino: int, p: Problem) -> None:
    """A directory whose tree failed its check: gather the entries its leaves still
    hold, for the namespace pass to rebuild the directory from (check 3's repair).

    The walk follows every node whose header names this directory's tree and
    itself, whatever its checksum.  An intact leaf gives every entry it holds;
    a damaged one only the entries that prove themselves: a valid name whose
    keyed hash is the key, naming a live inode of the type the entry says
    (a 64-bit keyed hash does not match by chance).
    """
    rec = s.records[ino]
    lo, hi = s.sb.data_start, s.sb.block_count - 1
    found: dict[int, list[tuple[bytes, int, int]]] = {}
    reached: set[int] = set()
    stack = [rec.map_root] if rec.map_kind == MAP_BTREE else []
    hash_name = s.layers.dirs.hash
    while stack:
        blockno = stack.pop()
        if blockno in reached or not lo <= blockno < hi:
            continue
        reached.add(blockno)
        view = s.store.block(blockno)
        magic, _, owner, where, level, count, kind, _, _ = NODE_HEADER.unpack_from(view)
        if (magic, owner, where, kind) != (NODE_MAGIC, ino, blockno, TREE_DIRECTORY):
            continue
        if level:
            count = min(count, INTERNAL_CAP)
            stack.extend(struct.unpack_from(f"<{count}Q", view, INTERNAL_CHILDREN))
            continue
        intact = node_ok(view)
        count = min(count, LEAF_CAP)
        keys = struct.unpack_from(f"<{count}Q", view, NODE_KEYS)
        slots = struct.unpack_from(f"<{2 * count}H", view, LEAF_SLOTS)
        for key, off, n in zip(keys, slots[::2], slots[1::2], strict=True):
            if not n or off < LEAF_HEAP_MIN or off + n > BLOCK_SIZE:
                continue
            entries, _ = parse_entries(bytes(view[off : off + n]))
            if not intact:
                entries = [e for e in entries if _proves_itself(s, hash_name, key, e)]
            if entries:
                found.setdefault(key, []).extend(entries)
    for blockno in reached:
        s.claim_weak(ino, blockno, 1)
    items = sorted(found.items())
    fix = Fix(Stage.ENTRIES, lambda r: None)  # planned by the namespace pass
    s.salvaged[ino] = Salvage(items, reached, fix)
    count = sum(len(e) for _, e in items)
    p.message += f"; rebuilt from the {count} entries its leaves still hold"
    ctx.attach(p, fix)


def _proves_itself(
    s: State, hash_name: Callable[[bytes], int], key: int, entry: tuple[bytes, int, int]
) -> bool:
    name, child, dtype = entry
    rec = s.records.get(child)
    return (
        bad_name(name) is None
        and hash_name(name) == key
        and rec is not None
        and child not in (INO_INODE_FILE, INO_ROOT)
        and _DTYPES.get(st.S_IFMT(rec.mode)) == dtype
    )


def new_root(ctx: Context, s: State, p: Problem, old: InodeRecord | None) -> None:
    """The root's record cannot be read: plan a new one, a directory whose tree is
    salvaged from the old record's (if it still names one) like any damaged
    directory's; whatever that does not name goes to /lost+found."""
    tree = old is not None and st.S_ISDIR(old.mode) and old.map_kind == MAP_BTREE
    rec = InodeRecord(
        ino=INO_ROOT,
        mode=st.S_IFDIR | 0o755,
        nlink=2,
        parent=INO_ROOT,
        generation=old.generation if old is not None else 0,
        map_kind=MAP_BTREE if tree else MAP_NONE,
        map_root=old.map_root if tree and old is not None else 0,
        map_height=old.map_height if tree and old is not None else 0,
    )
    s.records[INO_ROOT] = rec
    s.bad_map[INO_ROOT] = p
    s.damaged_dirs.append((INO_ROOT, p))
    ctx.report.directories += 1
    p.message += "; the root is made anew"
    ctx.attach(p, Fix(Stage.INODES, replace_record(INO_ROOT, rec)))
