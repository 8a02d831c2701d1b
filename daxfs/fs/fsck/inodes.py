"""Pass 2, inodes and maps: every slot of the inode table, every block an inode owns.

The pass reads the inode file's own map first (it says where the other
inodes are), then every slot the inode file holds -- never more: the
superblock's high-water mark is checked against the slots, not trusted to
bound the loop.  Each live inode's map is validated extent by extent and
node by node, and every block it owns is *claimed* in ``State.owner``.
Damaged records and damaged maps are not trusted, but what they seem to
point at is claimed *weakly* (``State.weak``): such blocks are never freed
nor reused by a repair, because the damaged structure may still own them.

Checks
  1. The inode file (inode 1) is intact, a regular file whose map starts
     at inode block 0, has no hole and no unwritten extent, and whose size
     is exactly what it maps.
  2. Each slot: an intact record naming its own number (or all zeros, which
     is a never-used slot: damage below the high-water mark).  A live
     record has a known file type, no mode bits beyond S_IFMT|07777, only
     the flags its type may carry (IFLAG_TRUNCATE: regular files;
     IFLAG_ORPHAN: any but the root and the inode file; IFLAG_DAX: regular
     files and directories, the root too), a size below the
     maximum (0 for a directory), and a map of a kind its type allows;
     whatever ``daxfs.fs.inode.record_problem`` (mount's check of a record
     it loads) finds is a problem too, so that fsck never calls clean a
     record that mount would refuse.
  3. Each extent: length > 0, only known flag bits, inside the data area,
     below the maximum file size, sorted and not overlapping its neighbours;
     extent B+trees and directory B+trees pass ``BTree.check``.
  4. No block is claimed twice (by two inodes, or by an inode and the
     static regions).
  5. ``blocks`` equals the data blocks plus tree nodes the inode owns.
  6. No written block past a regular file's size, unless a truncate is
     pending (IFLAG_TRUNCATE).
  7. Symbolic links: an inline target of 1..128 bytes is its size; a target
     in blocks is at most MAX_PATH bytes; neither holds NUL.  (A target is
     stored followed by zeros, so a wrong size is repaired to the first NUL.)
  8. Free records (mode 0) hold no links, blocks or orphan flag.
  9. Counters: ``inode_hwm`` is one past the highest slot in use (at least
     FIRST_FREE_INO); ``next_generation`` fits 32 bits.  (It is not compared
     with the inodes' generations: it wraps at 2**32 by design, after which a
     lower counter is no lie.)
  10. If any inode carries IFLAG_DAX, the superblock has INCOMPAT_DAX_FLAG
      (repair sets it).

Repairs: inode-file size, ``inode_hwm`` and ``next_generation`` set to what
was found; a regular file's size beyond the maximum set to the end of its
last extent (past it the file was a hole, so nothing it held is lost);
block counts, mode and flag bits, unknown extent flags cleared,
free-record leftovers cleared; a file with written blocks past its size gets
IFLAG_TRUNCATE (the lists pass puts it on the orphan list, and the next
mount frees the blocks).  A directory whose tree is damaged is *salvaged*:
its leaves give up the entries they still hold (every entry of an intact
leaf; of a damaged leaf, those that prove themselves against the keyed name
hash), and the namespace pass rebuilds the directory from them.  A root
whose record is unreadable, free or not a directory is made anew (its tree
salvaged if the old record still names one).  Other damaged records and
damaged extent maps are reported, never guessed at.
"""

from __future__ import annotations

import dataclasses
import itertools
import stat as st
import struct

import numpy as np

from daxfs.errors import Corrupted
from daxfs.fs.btree import BTree
from daxfs.fs.data import MAX_FILE_SIZE
from daxfs.fs.extmap import Extent, InodeNodes
from daxfs.fs.inode import record_problem
from daxfs.fs.layout import (
    BLOCK_SHIFT,
    BLOCK_SIZE,
    DT_DIR,
    DT_LNK,
    DT_REG,
    EXTENT,
    EXTENT_UNWRITTEN,
    EXTENT_VALUE,
    FIRST_FREE_INO,
    IFLAG_DAX,
    IFLAG_ORPHAN,
    IFLAG_TRUNCATE,
    INCOMPAT_DAX_FLAG,
    INLINE_AREA,
    INLINE_EXTENTS,
    INO_INODE_FILE,
    INO_ROOT,
    INODE_SIZE,
    INODES_PER_BLOCK,
    MAP_BTREE,
    MAP_INLINE,
    MAP_NONE,
    MAP_SYMLINK,
    TREE_DIRECTORY,
    TREE_EXTENTS,
    InodeRecord,
)
from daxfs.fs.namei import MAX_PATH

from .context import STATIC, Apply, Context, Fix, Repairing, Stage, State
from .fixes import enable_feature, replace_record, set_fields, set_super
from .salvage import claim_record, new_root, salvage_dir, unverified
from .xattrs import check_feature, check_xattrs

KNOWN_FLAGS = IFLAG_ORPHAN | IFLAG_TRUNCATE | IFLAG_DAX
#: flags each file type may carry (the root: IFLAG_DAX only; the inode file: none)
_ALLOWED_FLAGS = {
    st.S_IFREG: KNOWN_FLAGS,
    st.S_IFDIR: IFLAG_ORPHAN | IFLAG_DAX,
    st.S_IFLNK: IFLAG_ORPHAN,
}
MODE_BITS = 0o170000 | 0o7777
GENERATION_MASK = 0xFFFFFFFF
MAX_FILE_BLOCKS = MAX_FILE_SIZE >> BLOCK_SHIFT
_TYPES = (st.S_IFDIR, st.S_IFREG, st.S_IFLNK)
_DTYPES = {st.S_IFDIR: DT_DIR, st.S_IFREG: DT_REG, st.S_IFLNK: DT_LNK}
_ZERO_RECORD = bytes(INODE_SIZE)


class _NoNodes:
    """The node allocator of trees fsck only reads."""

    def alloc_node(self, tx: object, goal: int) -> int:
        raise AssertionError("fsck does not grow a tree it checks")

    def free_node(self, tx: object, blockno: int) -> None:
        raise AssertionError("fsck does not shrink a tree it checks")


NO_NODES = _NoNodes()


def check_inodes(ctx: Context, s: State) -> bool:
    """Checks 1-10.  False if the inode file itself is unusable (the check stops)."""
    sb = s.sb
    s.owner = np.zeros(sb.block_count, dtype=np.uint32)
    s.owner[: sb.data_start] = STATIC
    s.owner[sb.block_count - 1] = STATIC
    s.weak = np.zeros(sb.block_count, dtype=np.uint16)
    size_fix = _inode_file(ctx, s)
    if size_fix is None:
        ctx.report.complete = False
        return False
    _slots(ctx, s)
    check_feature(ctx, s)
    _dax_feature(ctx, s)
    for ino, p in s.damaged_dirs:
        salvage_dir(ctx, s, ino, p)
    _counters(ctx, s)
    if size_fix.problems:
        ctx.fixes.remove(size_fix)  # after the high-water mark: it reads inode 1 through it
        ctx.fixes.append(size_fix)
    return True


# -- 1 the inode file -------------------------------------------------------------------


def _inode_file(ctx: Context, s: State) -> Fix | None:
    """Check 1: fill ``s.itable_map``; None if the inode file is unusable."""
    sb = s.sb
    where = "inode 1 (the inode file)"
    raw = bytes(s.store.block(sb.inode_block0)[INODE_SIZE : 2 * INODE_SIZE])
    try:
        try:
            rec = InodeRecord.unpack_from(raw, 0, INO_INODE_FILE)
        except Corrupted as exc:
            # its map may still hold: every later check of it applies
            found = unverified(raw, INO_INODE_FILE)
            if found is None:
                raise
            rec = found
            p = ctx.problem(where, f"{_text(exc).removeprefix('inode 1: ')}; its map holds")
            ctx.attach(p, Fix(Stage.BITMAP, replace_record(INO_INODE_FILE, rec)))
        if not st.S_ISREG(rec.mode) or rec.map_kind not in (MAP_INLINE, MAP_BTREE):
            raise Corrupted(f"mode {rec.mode:o} with map kind {rec.map_kind}")
        extents, nodes = _read_map(s, INO_INODE_FILE, rec, TREE_EXTENTS, lo=sb.inode_block0)
        if any(e.pblk == sb.inode_block0 and e.lblk for e in extents):
            raise Corrupted(f"maps inode block 0 ({sb.inode_block0}) past file block 0")
    except Corrupted as exc:
        ctx.problem(where, f"{_text(exc)}: no inode can be checked")
        return None
    pblks: list[int] = []
    for ext in extents:
        if ext.lblk != len(pblks) or ext.flags or len(pblks) > sb.block_count:
            break
        pblks.extend(range(ext.pblk, ext.pblk + ext.length))
    if not pblks or pblks[0] != sb.inode_block0:
        ctx.problem(where, f"file block 0 is not inode block 0 ({sb.inode_block0})")
        return None
    s.itable_map = pblks
    runs = [(e.pblk, e.length) for e in extents if e.pblk != sb.inode_block0] + [
        (e.pblk + 1, e.length - 1) for e in extents if e.pblk == sb.inode_block0
    ]
    owned = 1 + _claim(ctx, s, INO_INODE_FILE, runs) + _claim_nodes(ctx, s, INO_INODE_FILE, nodes)
    s.records[INO_INODE_FILE] = rec
    _check_blocks(ctx, s, INO_INODE_FILE, rec, owned)
    if rec.flags:
        flags = _Flags(ctx, s, INO_INODE_FILE, rec)
        flags.set(0, f"flag bits {rec.flags:#x} it cannot carry")
    size = len(pblks) << BLOCK_SHIFT
    beyond = [e for e in extents if e.lblk >= len(pblks)]
    fix = Fix(Stage.INODE_TABLE, _fit_inode_file(len(pblks), bool(beyond)))
    if beyond:
        first = beyond[0]
        gap = "an unwritten extent" if first.flags else f"a hole at file block {len(pblks)}"
        if _all_zero(s, beyond):
            ctx.problem(where, f"{gap}, then blocks that hold no inode (unmapped)", fix)
        else:
            ctx.problem(where, f"{gap}, then inodes: those beyond it are not checked")
            s.unknown_claims.add(INO_INODE_FILE)
            s.unscanned = True
            return fix
    if rec.size != size:
        ctx.problem(where, f"size {rec.size} but maps {len(pblks)} blocks", fix)
    return fix


def _all_zero(s: State, extents: list[Extent]) -> bool:
    """Whether the blocks of ``extents`` (at most the filesystem's) are all zero."""
    budget = s.sb.block_count
    for e in extents:
        for b in range(e.pblk, e.pblk + min(e.length, budget)):
            if np.frombuffer(s.store.block(b), dtype=np.uint64).any():
                return False
        budget -= e.length
        if budget <= 0:
            return False
    return True


# -- 2 the slots --------------------------------------------------------------------------


def _slots(ctx: Context, s: State) -> None:
    """Checks 2-8 for every slot the inode file holds (slot 0 is never used)."""
    total = s.slots
    for fblock, blockno in enumerate(s.itable_map):
        block = bytes(s.store.block(blockno))
        if fblock % 256 == 0:
            ctx.progress("inodes", fblock * INODES_PER_BLOCK, total)
        for slot in range(INODES_PER_BLOCK):
            ino = fblock * INODES_PER_BLOCK + slot
            raw = block[slot * INODE_SIZE : (slot + 1) * INODE_SIZE]
            if ino == INO_ROOT and raw == _ZERO_RECORD:  # never free, never blank
                new_root(ctx, s, ctx.problem("inode 2", "the root's record is all zeros"), None)
                continue
            if ino == 0 or raw == _ZERO_RECORD:
                continue
            s.top = ino + 1
            if ino == INO_INODE_FILE:
                continue
            try:
                rec = InodeRecord.unpack_from(raw, 0, ino)
            except Corrupted as exc:
                _damaged(ctx, s, ino, raw, _text(exc).removeprefix(f"inode {ino}: "))
                continue
            s.generation = max(s.generation, rec.generation)
            if rec.mode == 0 and ino == INO_ROOT:
                new_root(ctx, s, ctx.problem("inode 2", "the root's record is free"), None)
                continue
            if rec.mode == 0:
                _free_record(ctx, s, ino, rec)
                continue
            found = len(ctx.report.problems)
            _live(ctx, s, ino, rec)
            unusable = record_problem(rec)
            if unusable is not None and len(ctx.report.problems) == found:
                # mount refuses what fsck let pass: never call such an image clean
                ctx.problem(f"inode {ino}", unusable)
    ctx.progress("inodes", total, total)
    for ino in range(FIRST_FREE_INO, max(s.top, FIRST_FREE_INO)):
        if ino not in s.records and ino not in s.free and ino not in s.damaged:
            s.blank.add(ino)


def _damaged(ctx: Context, s: State, ino: int, raw: bytes, why: str) -> None:
    """An unreadable record: report it, claim weakly what it seems to own."""
    p = ctx.problem(f"inode {ino}", why)
    rec = unverified(raw, ino)
    if ino == INO_ROOT:
        new_root(ctx, s, p, rec)
        return
    s.damaged[ino] = why
    s.unknown_claims.add(ino)
    if rec is not None:
        claim_record(s, ino, rec)


def _free_record(ctx: Context, s: State, ino: int, rec: InodeRecord) -> None:
    s.free[ino] = rec
    if rec.nlink or rec.blocks or rec.flags:
        clean = InodeRecord(ino=ino, generation=rec.generation, next=rec.next)
        ctx.problem(
            f"inode {ino}",
            f"free, but holds {rec.nlink} links, {rec.blocks} blocks, flags {rec.flags:#x}",
            Fix(Stage.INODES, replace_record(ino, clean)),
        )
        s.free[ino] = clean


def _live(ctx: Context, s: State, ino: int, rec: InodeRecord) -> None:
    """Checks 2-7 of a live record."""
    fmt = st.S_IFMT(rec.mode)
    where = f"inode {ino}"
    if ino == INO_ROOT and fmt != st.S_IFDIR:
        new_root(ctx, s, ctx.problem(where, f"the root is not a directory ({rec.mode:o})"), None)
        return
    if fmt not in _TYPES:
        ctx.problem(where, f"unknown file type {rec.mode:o}")
        s.damaged[ino] = "unknown file type"
        s.unknown_claims.add(ino)
        claim_record(s, ino, rec)
        return
    s.records[ino] = rec
    report = ctx.report
    report.directories += fmt == st.S_IFDIR
    report.files += fmt == st.S_IFREG
    report.symlinks += fmt == st.S_IFLNK
    if rec.mode & ~MODE_BITS:
        ctx.problem(
            where,
            f"mode {rec.mode:o} has unknown bits",
            Fix(Stage.INODES, set_fields(ino, mode=rec.mode & MODE_BITS)),
        )
    flags = _Flags(ctx, s, ino, rec)
    allowed = _ALLOWED_FLAGS.get(fmt, 0) if ino != INO_ROOT else IFLAG_DAX
    if rec.flags & ~allowed:
        flags.set(rec.flags & allowed, f"flag bits {rec.flags & ~allowed:#x} it cannot carry")
    s.dax_inodes += bool(rec.flags & allowed & IFLAG_DAX)
    if fmt == st.S_IFLNK and rec.map_kind == MAP_SYMLINK:
        check_xattrs(ctx, s, ino, rec)  # none may be there: owns no block
        _inline_symlink(ctx, s, ino, rec)
        return
    kind = TREE_DIRECTORY if fmt == st.S_IFDIR else TREE_EXTENTS
    kinds = (MAP_NONE, MAP_BTREE) if fmt == st.S_IFDIR else (MAP_NONE, MAP_INLINE, MAP_BTREE)
    try:
        if rec.map_kind not in kinds:
            raise Corrupted(f"map kind {rec.map_kind} for a file of type {fmt:o}")
        extents, nodes = _read_map(s, ino, rec, kind)
    except Corrupted as exc:
        p = ctx.problem(where, _text(exc).removeprefix(f"{where}: "))
        s.bad_map[ino] = p
        _claim(ctx, s, ino, [(b, 1) for b in check_xattrs(ctx, s, ino, rec)])
        if fmt == st.S_IFDIR:
            s.damaged_dirs.append((ino, p))  # salvaged once every record is known
        else:
            s.unknown_claims.add(ino)
            claim_record(s, ino, rec)
        return
    flagged = [e for e in extents if e.flags & ~EXTENT_UNWRITTEN]
    if flagged:
        ctx.problem(
            where,
            f"{len(flagged)} extents with unknown flag bits (first at file block "
            f"{flagged[0].lblk}: {flagged[0].flags:#x})",
            Fix(Stage.INODES, _clear_extent_flags(ino)),
        )
    owned = _claim(ctx, s, ino, [(e.pblk, e.length) for e in extents])
    owned += _claim_nodes(ctx, s, ino, nodes)
    owned += _claim(ctx, s, ino, [(b, 1) for b in check_xattrs(ctx, s, ino, rec)])
    _check_blocks(ctx, s, ino, rec, owned)
    if fmt == st.S_IFDIR:
        if rec.size:  # a directory's size is its blocks (st_size), never stored
            ctx.problem(
                where,
                f"directory of size {rec.size}",
                Fix(Stage.INODES, set_fields(ino, size=0)),
            )
        return
    if fmt == st.S_IFLNK:
        _block_symlink(ctx, s, ino, rec, extents)
        return
    size = rec.size
    if size > MAX_FILE_SIZE:
        # past its last extent the file was a hole: ending it there loses nothing, where
        # the maximum would leave a 64 PiB sparse file for every tool to read or copy
        size = min(max((e.end for e in extents), default=0), MAX_FILE_BLOCKS) << BLOCK_SHIFT
        ctx.problem(
            where,
            f"size {rec.size} beyond the maximum file size {MAX_FILE_SIZE} "
            f"(repair: {size}, the end of its last extent)",
            Fix(Stage.INODES, set_fields(ino, size=size)),
        )
    keep = (size + BLOCK_SIZE - 1) >> BLOCK_SHIFT
    written = [e for e in extents if not e.flags & EXTENT_UNWRITTEN and e.end > keep]
    if written and not s.records[ino].flags & IFLAG_TRUNCATE:
        # unwritten extents past the size are fallocate(KEEP_SIZE): legitimate
        s.truncate.add(ino)
        flags.set(
            s.records[ino].flags | IFLAG_TRUNCATE,
            f"maps written blocks up to {written[-1].end} past its size {rec.size}",
        )


def _dax_feature(ctx: Context, s: State) -> None:
    """Check 10 (after every slot): an image with a DAX-flagged inode has the feature
    bit (a primary restored from an older backup may lack it)."""
    if s.dax_inodes and not s.sb.feature_incompat & INCOMPAT_DAX_FLAG:
        ctx.problem(
            "superblock",
            f"{s.dax_inodes} inodes carry the DAX flag, but the DAX-flag feature is not set",
            Fix(Stage.INODES, enable_feature(incompat=INCOMPAT_DAX_FLAG)),
        )


class _Flags:
    """The flags an inode will have once repaired: one fix, however many reasons.

    ``State.records`` holds the planned flags (the lists pass plans the
    orphan list from them).
    """

    def __init__(self, ctx: Context, s: State, ino: int, rec: InodeRecord) -> None:
        self.ctx, self.s, self.ino = ctx, s, ino
        self.fix: Fix | None = None

    def set(self, flags: int, why: str) -> None:
        rec = self.s.records[self.ino]
        self.s.records[self.ino] = dataclasses.replace(rec, flags=flags)
        if self.fix is None:
            self.fix = Fix(Stage.INODES, self._apply)
        self.ctx.problem(f"inode {self.ino}", why, self.fix)

    def _apply(self, r: Repairing) -> None:
        set_fields(self.ino, flags=self.s.records[self.ino].flags)(r)


def _inline_symlink(ctx: Context, s: State, ino: int, rec: InodeRecord) -> None:
    target = rec.inline[: rec.map_count]
    if not (0 < rec.map_count <= INLINE_AREA and rec.size == rec.map_count):
        end = rec.inline.find(b"\0")
        length = INLINE_AREA if end < 0 else end
        fix = None
        if length > 0:  # the target is followed by zeros: its length is known
            fix = Fix(Stage.INODES, set_fields(ino, size=length, map_count=length))
        ctx.problem(
            f"inode {ino}", f"inline symlink of {rec.map_count} bytes, size {rec.size}", fix
        )
    elif b"\0" in target:
        ctx.problem(f"inode {ino}", "symlink target holds NUL")
    if rec.blocks:
        ctx.problem(
            f"inode {ino}",
            f"inline symlink counts {rec.blocks} blocks",
            Fix(Stage.INODES, set_fields(ino, blocks=0)),
        )


def _block_symlink(ctx: Context, s: State, ino: int, rec: InodeRecord, exts: list[Extent]) -> None:
    if 0 < rec.size <= MAX_PATH:
        if b"\0" in _read(s, exts, rec.size):
            ctx.problem(f"inode {ino}", "symlink target holds NUL")
        return
    data = _read(s, exts, MAX_PATH + 1)  # the target is followed by zeros
    end = data.find(b"\0")
    fix = None
    if end > 0:
        fix = Fix(Stage.INODES, set_fields(ino, size=end))
    ctx.problem(f"inode {ino}", f"symlink target of {rec.size} bytes (at most {MAX_PATH})", fix)


def _read(s: State, exts: list[Extent], size: int) -> bytes:
    """The first ``size`` bytes of a file (holes and unwritten extents read as zeros)."""
    out = bytearray(size)
    for e in exts:
        lo, hi = e.lblk << BLOCK_SHIFT, min(e.end << BLOCK_SHIFT, size)
        if lo < hi and not e.flags & EXTENT_UNWRITTEN:
            start = e.pblk << BLOCK_SHIFT
            out[lo:hi] = s.store.view[start : start + hi - lo]
    return bytes(out)


# -- 3 maps -------------------------------------------------------------------------------


def _read_map(
    s: State, ino: int, rec: InodeRecord, kind: int, lo: int | None = None
) -> tuple[list[Extent], list[int]]:
    """Check 3: the extents (none for directories) and tree nodes of a map;
    extents must lie in [``lo``, the backup superblock) (default: the data area).

    Raises:
        Corrupted: anything wrong but unknown extent flag bits (returned as they are).
    """
    if rec.map_kind == MAP_NONE:
        if rec.map_count or rec.map_root or rec.map_height:
            raise Corrupted(
                f"empty map with count {rec.map_count}, root {rec.map_root}, "
                f"height {rec.map_height}"
            )
        return [], []
    if rec.map_kind == MAP_INLINE:
        if rec.map_count > INLINE_EXTENTS or rec.map_root or rec.map_height:
            raise Corrupted(f"inline map of {rec.map_count} extents")
        raw = rec.inline[: rec.map_count * EXTENT.size]
        found = [Extent(*f) for f in struct.iter_unpack(EXTENT.format, raw)]
        return _valid_extents(s, found, lo), []
    if rec.map_kind != MAP_BTREE:
        raise Corrupted(f"unknown map kind {rec.map_kind}")
    tree = BTree(ino, kind, rec.map_root, rec.map_height, NO_NODES)
    if rec.map_root == 0 or rec.map_height == 0:
        raise Corrupted(f"B+tree map with root {rec.map_root}, height {rec.map_height}")
    problems = tree.check(s.store)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise Corrupted(problems[0] + more)
    nodes = list(tree.nodes(s.store))
    if kind == TREE_DIRECTORY:
        return [], nodes
    extents = []
    for key, value in tree.items(s.store):
        if len(value) != EXTENT_VALUE.size:
            raise Corrupted(f"extent at file block {key} has a record of {len(value)} bytes")
        extents.append(Extent(key, *EXTENT_VALUE.unpack(value)))
    return _valid_extents(s, extents, lo), nodes


def _valid_extents(s: State, extents: list[Extent], lo: int | None) -> list[Extent]:
    lo, hi = s.sb.data_start if lo is None else lo, s.sb.block_count - 1
    end = 0
    for e in extents:
        if e.length == 0:
            raise Corrupted(f"empty extent at file block {e.lblk}")
        if e.lblk < end:
            raise Corrupted(f"extent at file block {e.lblk} overlaps the one before")
        if e.end > MAX_FILE_BLOCKS:
            raise Corrupted(f"extent at file block {e.lblk} ends past the maximum file size")
        if not lo <= e.pblk or e.pblk + e.length > hi:
            raise Corrupted(
                f"extent at file block {e.lblk} maps blocks [{e.pblk}, {e.pblk + e.length}) "
                f"outside the data area [{lo}, {hi})"
            )
        end = e.end
    return extents


# -- 4, 5 claims --------------------------------------------------------------------------


def _claim(ctx: Context, s: State, ino: int, runs: list[tuple[int, int]]) -> int:
    """Check 4: record that ``ino`` owns the blocks of ``runs`` (inside the data area)."""
    total = 0
    mark = min(ino, STATIC - 1)
    for start, length in runs:
        if length <= 0:
            continue
        owners = s.owner[start : start + length]
        taken = np.flatnonzero(owners)
        if len(taken):
            other = int(owners[taken[0]])
            ctx.problem(
                f"inode {ino}",
                f"block {start + int(taken[0])} ({len(taken)} in all) is also owned by "
                f"{'the filesystem' if other == STATIC else f'inode {other}'}",
            )
            owners[owners == 0] = mark
        else:
            owners[:] = mark
        total += length
    return total


def _claim_nodes(ctx: Context, s: State, ino: int, nodes: list[int]) -> int:
    return _claim(ctx, s, ino, [(b, 1) for b in nodes])


def _check_blocks(ctx: Context, s: State, ino: int, rec: InodeRecord, owned: int) -> None:
    """Check 5."""
    if rec.blocks != owned:
        ctx.problem(
            f"inode {ino}",
            f"counts {rec.blocks} blocks but owns {owned}",
            Fix(Stage.INODES, set_fields(ino, blocks=owned)),
        )


# -- 9 counters ---------------------------------------------------------------------------


def _counters(ctx: Context, s: State) -> None:
    sb = s.sb
    hwm = max(s.top, FIRST_FREE_INO)
    if sb.inode_hwm != hwm and not s.unscanned:
        ctx.problem(
            "superblock",
            f"inode high-water mark {sb.inode_hwm}, but the highest inode in use is "
            f"{s.top - 1} (of {s.slots} slots)",
            Fix(Stage.INODE_TABLE, set_super("inode_hwm", hwm)),
        )
    generation = s.generation
    if sb.next_generation > GENERATION_MASK:
        ctx.problem(
            "superblock",
            f"next generation {sb.next_generation} does not fit 32 bits "
            f"(inodes have reached {generation})",
            Fix(Stage.INODE_TABLE, set_super("next_generation", generation)),
        )


# -- repairs ------------------------------------------------------------------------------


def _fit_inode_file(blocks: int, trim: bool) -> Apply:
    """Unmap what the inode file maps past ``blocks`` (freeing it, 64 extents per
    transaction), then set its size to ``blocks``."""

    def apply(r: Repairing) -> None:
        itable, maps, alloc = r.layers.itable, r.layers.maps, r.layers.alloc
        inode = itable.get(INO_INODE_FILE)
        more = trim
        while more:
            with r.journal.begin() as tx:
                extents = list(itertools.islice(maps.extents(tx, inode, blocks), 64))
                rec = itable.dirty(tx, inode)
                for e in extents:
                    for piece in maps.punch(tx, inode, e.lblk, e.length):
                        alloc.free(tx, piece.pblk, piece.length)
                        rec.blocks -= piece.length
            more = len(extents) == 64
        with r.journal.begin() as tx:
            itable.dirty(tx, inode).size = blocks << BLOCK_SHIFT

    return apply


def _clear_extent_flags(ino: int) -> Apply:
    def apply(r: Repairing) -> None:
        itable = r.layers.itable
        inode = itable.get(ino)
        with r.journal.begin() as tx:
            rec = itable.dirty(tx, inode)
            if rec.map_kind == MAP_INLINE:
                raw = bytearray(rec.inline)
                for i in range(rec.map_count):
                    lblk, pblk, length, flags = EXTENT.unpack_from(raw, i * EXTENT.size)
                    EXTENT.pack_into(
                        raw, i * EXTENT.size, lblk, pblk, length, flags & EXTENT_UNWRITTEN
                    )
                rec.inline = bytes(raw)
            else:  # raw values: the map layer refuses unknown flags
                nodes = InodeNodes(r.layers.alloc, itable, inode)
                tree = BTree(ino, TREE_EXTENTS, rec.map_root, rec.map_height, nodes)
                for key, value in list(tree.items(tx)):
                    pblk, length, flags = EXTENT_VALUE.unpack(value)
                    if flags & ~EXTENT_UNWRITTEN:
                        tree.put(tx, key, EXTENT_VALUE.pack(pblk, length, flags & EXTENT_UNWRITTEN))
            inode.xcache = None

    return apply


def _text(exc: OSError) -> str:
    return exc.strerror or str(exc)
