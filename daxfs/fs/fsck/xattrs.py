"""Pass 2, extended attributes: each live inode's inline attributes, xattr block and
value blocks.

Called by the inodes pass for every live record whose type it knows (daxfs.fs.xattr
has the format's invariants; the checks below use the same functions of
daxfs.fs.layout as the filesystem's reads: ``unpack_inline_xattrs``,
``unpack_xattr_block``, ``xattr_blocks_problem``, ``xattr_value``).

Checks
  1. Inline attributes (``xattr_bytes`` > 0) only on regular files and
     directories, within the extent area and beside the inline extents the
     map holds, and passing ``layout.unpack_inline_xattrs`` (every length,
     names valid, sorted and unique).
  2. Not both inline attributes and an xattr block.
  3. The xattr block lies in the data area, passes
     ``layout.unpack_xattr_block`` (magic, checksum, owner, place, lengths,
     names sorted, unique and in a stored namespace, value kinds), and holds
     at least one entry.
  4. Each value in blocks names blocks in the data area, none twice, and its
     bytes match the entry's crc32c.
  5. Every block of 3 and 4 is claimed for the inode (no block owned twice),
     and counted in its ``blocks`` (the inodes pass compares the sum).
  6. If any inode has attributes, the superblock has RO_COMPAT_XATTR; if any
     has them inline, also RO_COMPAT_XATTR_INLINE.

Repairs: damaged inline attributes are dropped (``xattr_bytes`` cleared and
their bytes zeroed; on a type that carries none only the count is cleared:
the area is the map's or the symlink target's); with both inline attributes
and a block, the inline ones are dropped (the block is checked on its own); a
damaged xattr block is dropped (the inode's pointer cleared: its attributes
are lost; the block and whatever it named are left unclaimed, so the bitmap
pass frees them unless something sound owns them); an entry whose value is
damaged is removed from a sound block (its blocks likewise); the feature bits
are set.  Never guessed at: a damaged entry is never rewritten.
"""

from __future__ import annotations

import stat as st

from daxfs.errors import Corrupted
from daxfs.fs.layout import (
    BLOCK_SIZE,
    EXTENT,
    INLINE_EXTENTS,
    INLINE_XATTR_AREA,
    MAP_INLINE,
    RO_COMPAT_XATTR,
    RO_COMPAT_XATTR_INLINE,
    XATTR_TYPES,
    InodeRecord,
    XattrEntry,
    pack_xattr_block,
    unpack_inline_xattrs,
    unpack_xattr_block,
    xattr_blocks_problem,
    xattr_value,
)

from .context import Apply, Context, Fix, Repairing, Stage, State
from .fixes import enable_feature


def check_xattrs(ctx: Context, s: State, ino: int, rec: InodeRecord) -> list[int]:
    """Checks 1-4 of inode ``ino``; the blocks its attributes own once repaired
    (the caller claims and counts them)."""
    _check_inline(ctx, s, ino, rec)
    if st.S_IFMT(rec.mode) not in XATTR_TYPES or rec.xattr == 0:
        return []
    where = f"inode {ino}"
    blockno = rec.xattr
    lo, hi = s.sb.data_start, s.sb.block_count - 1
    try:
        if not lo <= blockno < hi:
            raise Corrupted(f"xattr block {blockno} is outside the data area [{lo}, {hi})")
        entries = unpack_xattr_block(s.store.block(blockno), ino, blockno)
    except Corrupted as exc:
        why = str(exc.strerror or exc).removeprefix(f"{where}: ")
        ctx.problem(
            where, f"{why}: its extended attributes are dropped", Fix(Stage.INODES, _drop(ino))
        )
        return []
    if not entries:  # invariant 1: a block only while there is an attribute
        ctx.problem(where, f"xattr block {blockno} holds no entry", Fix(Stage.INODES, _drop(ino)))
        return []
    s.xattr_inodes += 1
    seen = {blockno}
    good: list[XattrEntry] = []
    for e in entries:
        problem = xattr_blocks_problem(e, seen, lo, hi)
        if problem is None and xattr_value(e, s.store.block) is None:
            problem = "value checksum mismatch"
        if problem is None:
            good.append(e)
        else:
            ctx.problem(
                where,
                f"xattr {e.name!r}: {problem}: the attribute is removed",
                Fix(Stage.INODES, _keep(ino, blockno, [x.name for x in entries if x is not e])),
            )
    owned = [blockno, *(b for e in good for b in e.blocks)] if good else []
    s.xattr_owned[ino] = owned  # [] when every entry goes: the repair frees the block
    return owned


def _check_inline(ctx: Context, s: State, ino: int, rec: InodeRecord) -> None:
    """Checks 1-2."""
    if rec.xattr_bytes == 0:
        return
    where = f"inode {ino}"
    try:
        unpack_inline_xattrs(rec)
    except Corrupted as exc:
        why = str(exc.strerror or exc).removeprefix(f"{where}: ")
        ctx.problem(where, f"{why}: they are dropped", Fix(Stage.INODES, _drop_inline(ino)))
        return
    if rec.xattr:
        ctx.problem(
            where,
            f"inline xattrs and xattr block {rec.xattr} both: the inline ones are dropped",
            Fix(Stage.INODES, _drop_inline(ino)),
        )
        return
    s.xattr_inodes += 1
    s.xattr_inline_inodes += 1


def check_feature(ctx: Context, s: State) -> None:
    """Check 6 (after every slot)."""
    for count, bit, what in (
        (s.xattr_inodes, RO_COMPAT_XATTR, "extended attributes"),
        (s.xattr_inline_inodes, RO_COMPAT_XATTR_INLINE, "inline extended attributes"),
    ):
        if count and not s.sb.feature_ro_compat & bit:
            ctx.problem(
                "superblock",
                f"{count} inodes have {what}, but the {_FEATURES[bit]} feature is not set",
                Fix(Stage.INODES, enable_feature(ro_compat=bit)),
            )


_FEATURES = {RO_COMPAT_XATTR: "xattr", RO_COMPAT_XATTR_INLINE: "inline xattr"}


def _drop(ino: int) -> Apply:
    """Clear the xattr pointer of ``ino`` (the inodes pass recounts its blocks)."""

    def apply(r: Repairing) -> None:
        itable = r.layers.itable
        with r.journal.begin() as tx:
            itable.dirty(tx, itable.get(ino)).xattr = 0

    return apply


def _drop_inline(ino: int) -> Apply:
    """Clear the inline attributes of ``ino``: the count, and on a type that carries
    them their bytes after the inline extents (the map's bytes are left as they are)."""

    def apply(r: Repairing) -> None:
        itable = r.layers.itable
        with r.journal.begin() as tx:
            rec = itable.dirty(tx, itable.get(ino))
            if st.S_IFMT(rec.mode) in XATTR_TYPES:
                count = min(rec.map_count, INLINE_EXTENTS) if rec.map_kind == MAP_INLINE else 0
                start = count * EXTENT.size
                rec.inline = (
                    rec.inline[:start]
                    + bytes(INLINE_XATTR_AREA - start)
                    + rec.inline[INLINE_XATTR_AREA:]
                )
            rec.xattr_bytes = 0

    return apply


def _keep(ino: int, blockno: int, names: list[bytes]) -> Apply:
    """Rewrite the xattr block of ``ino`` with the entries named ``names`` only (as
    they are on media then: every fix of one block runs against the same block)."""

    def apply(r: Repairing) -> None:
        itable = r.layers.itable
        with r.journal.begin() as tx:
            inode = itable.get(ino)
            if inode.rec.xattr != blockno:  # dropped by another fix
                return
            kept = [
                e for e in unpack_xattr_block(tx.read(blockno), ino, blockno) if e.name in names
            ]
            if kept:
                tx.write(blockno)[:BLOCK_SIZE] = pack_xattr_block(ino, blockno, kept)
            else:
                itable.dirty(tx, inode).xattr = 0

    return apply
