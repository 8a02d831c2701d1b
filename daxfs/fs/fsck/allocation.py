"""Pass 5, bitmap and allocation: the bitmap against what the other passes claimed.

Runs last among the checks: it needs every claim (``State.owner``, sound
structures, and ``State.weak``, what damaged structures may own).  Its
repair runs first (``Stage.BITMAP``): once every owned block is marked used
and no weakly claimed block is freed, the allocator hands out only blocks
that nothing sound owns and that the bitmap already called free, so the
repairs after it may allocate.

Checks
  1. Every bitmap block's checksum.
  2. Every block a sound structure owns is marked used.
  3. Every block marked used is owned (else it leaked).  A block that a
     damaged structure may own (claimed weakly) is never freed; but it is
     not marked used either if the bitmap says free (a damaged extent may
     claim half the disk: that must not fill it).  Leaked blocks are freed
     only when the claims are complete: while a damaged structure may own
     blocks fsck could not enumerate, they are kept, and the report says so.
  4. ``free_blocks`` is the number of blocks the bitmap (as repaired) marks free.

Repair: each bitmap block that changes (or whose checksum is bad) is
rewritten and resealed in its own transaction, which also moves
``free_blocks`` by the change, so the counter agrees with the bitmap after
every transaction.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from daxfs.fs.layout import (
    BITMAP_BYTES,
    BITS_PER_BITMAP_BLOCK,
    bitmap_block_ok,
    seal_bitmap_block,
)

from .context import Apply, Context, Fix, Repairing, Stage, State

Bits = npt.NDArray[np.bool_]


def check_allocation(ctx: Context, s: State) -> None:
    """Checks 1-4."""
    sb = s.sb
    fix = Fix(Stage.BITMAP, lambda r: None)
    bad = [
        k
        for k in range(sb.bitmap_blocks)
        if not bitmap_block_ok(s.store.block(sb.bitmap_start + k))
    ]
    for k in bad:
        ctx.problem(f"bitmap block {k}", "checksum mismatch (rebuilt from the claims)", fix)
    ctx.progress("bitmap", 0, 1)
    marked = _bitmap_bits(s)
    owned = s.owner != 0
    kept = marked & (s.weak != 0)  # a damaged structure may own it: never freed
    unmarked = owned & ~marked
    leaked = marked & ~owned & ~kept
    if unmarked.any():
        ctx.problem(
            "bitmap",
            f"{int(unmarked.sum())} blocks in use are marked free "
            f"(first {int(np.argmax(unmarked))})",
            fix,
        )
    want = owned | kept if s.claims_complete else owned | marked
    if leaked.any():
        n, first = int(leaked.sum()), int(np.argmax(leaked))
        if s.claims_complete:
            ctx.problem(
                "bitmap",
                f"{n} blocks are marked used but nothing owns them (leaked)",
                fix,
            )
        else:
            ctx.problem(
                "bitmap",
                f"{n} blocks are marked used and no sound structure owns them (first {first}): "
                "kept, since the damaged structures above may own them",
            )
    free = sb.block_count - int(want.sum())
    ctx.report.blocks_used = sb.block_count - free
    if sb.free_blocks != free:
        ctx.problem("superblock", f"counts {sb.free_blocks} free blocks, found {free}", fix)
    if fix.problems:
        fix.apply = _rewrite(want, set(bad), free)
    ctx.progress("bitmap", 1, 1)


def _bitmap_bits(s: State) -> Bits:
    """The bitmap as one bool per block (checksums not required)."""
    sb = s.sb
    parts = [
        np.frombuffer(bytes(s.store.block(sb.bitmap_start + k)[:BITMAP_BYTES]), dtype=np.uint8)
        for k in range(sb.bitmap_blocks)
    ]
    bits = np.unpackbits(np.concatenate(parts), bitorder="little")
    return bits[: sb.block_count].astype(np.bool_)


def _rewrite(want: Bits, bad: set[int], free: int) -> Apply:
    def apply(r: Repairing) -> None:
        sb = r.sup.sb
        bits = np.ones(sb.bitmap_blocks * BITS_PER_BITMAP_BLOCK, dtype=np.uint8)
        bits[: sb.block_count] = want
        for k in range(sb.bitmap_blocks):
            chunk = bits[k * BITS_PER_BITMAP_BLOCK : (k + 1) * BITS_PER_BITMAP_BLOCK]
            packed = np.packbits(chunk, bitorder="little").tobytes()
            blockno = sb.bitmap_start + k
            old = bytes(r.store.block(blockno)[:BITMAP_BYTES])
            if old == packed and k not in bad:
                continue
            before = _zeros(old, k, sb.block_count)
            after = _zeros(packed, k, sb.block_count)
            with r.journal.begin() as tx:
                tx.on_commit(r.layers.alloc.invalidate_index)  # its free-extent index is stale
                view = tx.write(blockno, seal=seal_bitmap_block)
                view[:BITMAP_BYTES] = packed
                counters = r.sup.dirty(tx)
                counters.free_blocks = min(
                    sb.block_count, max(0, counters.free_blocks + after - before)
                )
        if sb.free_blocks != free:
            with r.journal.begin() as tx:
                r.sup.dirty(tx).free_blocks = free

    return apply


def _zeros(packed: bytes, k: int, block_count: int) -> int:
    """Free blocks (zero bits below ``block_count``) in bitmap block ``k``."""
    bits = np.unpackbits(np.frombuffer(packed, dtype=np.uint8), bitorder="little")
    n = min(BITS_PER_BITMAP_BLOCK, block_count - k * BITS_PER_BITMAP_BLOCK)
    return int(n - bits[:n].sum())
