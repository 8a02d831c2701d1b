"""Pass 2, extended attributes: each live inode's xattr block and value blocks.

Called by the inodes pass for every live regular file and directory whose
record is sound (daxfs.fs.xattr has the format's invariants).

Checks
  1. The xattr block lies in the data area, passes
     ``layout.unpack_xattr_block`` (magic, checksum, owner, place, lengths,
     names sorted, unique and in a stored namespace, value kinds), and holds
     at least one entry.
  2. Each value in blocks names blocks in the data area, none twice, and its
     bytes match the entry's crc32c.
  3. Every block of 1 and 2 is claimed for the inode (no block owned twice),
     and counted in its ``blocks`` (the inodes pass compares the sum).
  4. If any inode has an xattr block, the superblock has RO_COMPAT_XATTR.

Repairs: a damaged xattr block is dropped (the inode's pointer cleared: its
attributes are lost; the block and whatever it named are left unclaimed, so
the bitmap pass frees them unless something sound owns them); an entry whose
value is damaged is removed from a sound block (its blocks likewise); the
feature bit is set.  Never guessed at: a damaged entry is never rewritten.
"""

from __future__ import annotations

import stat as st

from daxfs.errors import Corrupted
from daxfs.fs.layout import (
    BLOCK_SIZE,
    RO_COMPAT_XATTR,
    XATTR_TYPES,
    InodeRecord,
    XattrEntry,
    crc32c,
    pack_xattr_block,
    unpack_xattr_block,
)

from .context import Apply, Context, Fix, Repairing, Stage, State


def check_xattrs(ctx: Context, s: State, ino: int, rec: InodeRecord) -> list[int]:
    """Checks 1-2 of inode ``ino``; the blocks its attributes own once repaired
    (the caller claims and counts them)."""
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
        problem = _value_problem(s, e, seen, lo, hi)
        if problem is None:
            good.append(e)
            seen.update(e.blocks)
        else:
            ctx.problem(
                where,
                f"xattr {e.name!r}: {problem}: the attribute is removed",
                Fix(Stage.INODES, _keep(ino, blockno, [x.name for x in entries if x is not e])),
            )
    owned = [blockno, *(b for e in good for b in e.blocks)] if good else []
    s.xattr_owned[ino] = owned  # [] when every entry goes: the repair frees the block
    return owned


def _value_problem(s: State, e: XattrEntry, seen: set[int], lo: int, hi: int) -> str | None:
    if e.value is not None:
        return None
    for b in e.blocks:
        if not lo <= b < hi:
            return f"value block {b} is outside the data area [{lo}, {hi})"
        if b in seen:
            return f"value block {b} is named twice"
    data = b"".join(bytes(s.store.block(b)) for b in e.blocks)[: e.length]
    if crc32c(data) != e.crc:
        return "value checksum mismatch"
    return None


def check_feature(ctx: Context, s: State) -> None:
    """Check 4 (after every slot)."""
    if s.xattr_inodes and not s.sb.feature_ro_compat & RO_COMPAT_XATTR:
        ctx.problem(
            "superblock",
            f"{s.xattr_inodes} inodes have extended attributes, but the xattr feature is not set",
            Fix(Stage.INODES, _enable),
        )


def _enable(r: Repairing) -> None:
    with r.journal.begin() as tx:
        r.sup.enable(tx, RO_COMPAT_XATTR)


def _drop(ino: int) -> Apply:
    """Clear the xattr pointer of ``ino`` (the inodes pass recounts its blocks)."""

    def apply(r: Repairing) -> None:
        itable = r.layers.itable
        with r.journal.begin() as tx:
            itable.dirty(tx, itable.get(ino)).xattr = 0

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
