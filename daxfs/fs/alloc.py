"""The block allocator: the allocation bitmap, read and changed inside transactions.

Theory of operation
-------------------
One bit per filesystem block, 1 = in use (``layout``: bit i of bitmap block k,
least significant bit first, is block ``k * BITS_PER_BITMAP_BLOCK + i``).  The
allocator reads the bitmap as little-endian 64-bit words, 511 per bitmap block,
so the words of consecutive bitmap blocks form one bit string.

*Two views.*  A transaction sees its own bitmap (``tx.read``) while the device
still holds the committed one (``store.read``).  A block is *available* to a
transaction T when its bit is zero in both:

* zero in T's view: nobody, T included, holds it;
* zero in the committed view: nothing that a crash would fall back to points at
  it, so T may write it in place before its commit point (``new_block``).

A block that T freed is zero in T's view but one in the committed view, so T
never hands it out again; once T commits, later transactions can.  A block that
T both allocated and freed is zero in both views and may be reused by T, which
is safe: nothing committed refers to it.

*Search* (``alloc``), from a start position: the caller's goal, else the
next-fit cursor (the end of the previous allocation)::

    1. first fit in the free-extent index: the lowest position at or after
       the start where one free run of the committed bitmap, less the runs
       T allocated, holds ``count`` blocks, then from the start of the data
       area (wrapping round)                    FreeIndex.find (freeindex.py)
    2. instead of 1 for a request longer than a bitmap block (the index
       holds no run that long): the same over the bitmap itself  _first_fit
       (the index's search is exact, so a scan after it found nothing could
       only find nothing too: none is made)
    3. otherwise several runs, longest first (see "Fewest runs")   _gather
    4. mark the runs in T's bitmap, then the superblock counter   _take

*The free-extent index* (daxfs.fs.freeindex) is a cache of the committed
bitmap's free runs, built lazily one bitmap block at a time.  ``alloc`` and
``free`` note T's runs (``_Pending``); T's on-commit callback applies them to
the index, and an abort drops them (invariant 7).  A transaction that makes no
more allocation or free may apply them before it commits (``settle``: the
copy-on-write path does, while its copy runs); an abort then drops the index.

Search never loops over bits in Python.  The combined (T | committed) words of a
chunk of bitmap blocks (one block, then twice as many each step, up to
CHUNK_BLOCKS) are analysed with numpy:

* *long runs*, holding at least one whole free word, come from the groups of
  consecutive zero words, extended by the free high bits of the word before
  (count of leading zeros) and the free low bits of the word after (count of
  trailing zeros).  Every free run of more than SHORT_MAX blocks is one.
* *short runs* (no whole free word, so at most two words) are found, when the
  request is short enough, by comparing each word boundary's free high bits
  plus the next word's free low bits with the request, and, for requests of
  at most 64, by a shift-and within each word.
* runs that reach a chunk edge are joined with the next chunk (``_Stitch``).

*The reserve* (ext4's reserved clusters).  An operation that frees space
can still need a block: a punch inside an extent leaves two parts of it, and
the extent map may need a B+tree node for the second (daxfs.fs.extmap).  So
ordinary allocations leave ``reserved`` blocks free (``reserve_blocks``:
1/1024 of the filesystem, 32 to 1024 blocks), and only a transaction that
called ``use_reserve`` (punch-hole) may take them.  statvfs reports them in
``f_bfree`` but not in ``f_bavail``.  Nothing on media records the reserve.
Blocks a transaction freed do not count as available to it (they are not,
see "Two views"), so the reserve is never taken by a transaction that only
seems to have room because it freed blocks.

*Fewest runs.*  If no single run fits, one pass over the data area sums the
long runs by power-of-two length class.  If they hold enough blocks, all runs
of the classes above a threshold class are taken whole and runs of the
threshold class fill the rest (the last one in part): at most twice the fewest
runs possible.  If they do not, every long run is taken and short runs fill
the rest in address order from the start (a bit-level pass, which stops when
it has enough).

Invariants
  1. After every public method returns, ``sb.free_blocks`` equals the zero
     bits below ``block_count`` in the transaction's view of the bitmap: bits
     and counter change together, in the same transaction.
  2. ``alloc`` hands out only blocks in the data area,
     ``[sb.data_start, sb.block_count - 1)``, whatever the bitmap says, and
     only blocks zero in both views.
  3. A method that raises changes nothing: ``alloc`` finds every run before it
     marks any, ``free`` checks the whole range before it clears any bit.
  4. A committed bitmap block's crc is checked before its bits are used (once
     per mount, then remembered in a bounded cache); every bitmap block written
     goes through ``tx.write(n, seal=seal_bitmap_block)``.
  5. An ordinary allocation succeeds only if ``reserved`` blocks stay
     available to its transaction afterwards; one in a transaction that
     called ``use_reserve`` may take every available block.
  6. Memory: the cursor, the cache, and per-call arrays of at most
     CHUNK_BLOCKS bitmap blocks; only the returned runs and ``used_map``'s
     result grow with the device.  The free-extent index holds at most
     ``freeindex.MAX_RUNS`` runs, plus 9 bytes per bitmap block.
  7. Between transactions the free-extent index equals the committed bitmap
     (``check_index``); a transaction's allocations and frees reach it only
     when it commits, or (``settle``) once it makes no more, and then an abort
     drops the whole index.

Caveats
  - The allocator is the only writer of bitmap blocks.
  - Callers serialise through the journal: every method that takes a
    transaction needs it open (asserted), which holds the journal lock.
  - A large allocation or free changes many bitmap blocks (one per 128 MiB of
    blocks): it can make a transaction exceed the log (TransactionTooLarge),
    so callers split huge requests.
  - Little-endian hosts only (asserted at import).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator

import numpy as np
import numpy.typing as npt

from daxfs.errors import Corrupted, NoSpace
from daxfs.fs import _create
from daxfs.fs.freeindex import FreeIndex, Runs
from daxfs.fs.journal import Transaction
from daxfs.fs.layout import (
    BITMAP_BYTES,
    BITS_PER_BITMAP_BLOCK,
    bitmap_block_ok,
    seal_bitmap_block,
)
from daxfs.fs.store import PmemStore, Reader
from daxfs.fs.super import SuperState
from daxfs.lifecycle import weak_method

assert sys.byteorder == "little", "the bitmap is read as little-endian 64-bit words"

BPB = BITS_PER_BITMAP_BLOCK
WORDS = BITMAP_BYTES // 8  # 64-bit words of bits in a bitmap block
assert WORDS * 64 == BPB
#: Bitmap blocks analysed per numpy step at most (1 MiB of bitmap, 32 GiB of blocks).
CHUNK_BLOCKS = 256
#: Bitmap block numbers remembered as crc-verified; the set is emptied when full.
VERIFIED_CACHE = 4096
#: The longest free run that holds no whole free word (63 + 63 bits).
SHORT_MAX = 126
#: Runs whose length falls in the same power-of-two class are equally good.
CLASSES = 64
#: Above this many runs, _take marks them with numpy, one bitmap block at a time.
MANY_RUNS = 16

MASK64 = (1 << 64) - 1
_ALL = np.uint64(MASK64)
_ONE = np.uint64(1)
_SHIFTS = tuple(np.uint64(s) for s in (1, 2, 4, 8, 16, 32))
_POP8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.int64)

#: tx.scratch keys of this module: blocks freed in the transaction; may it use the reserve;
#: its runs allocated and freed, for the free-extent index (_Pending)
#: ``move`` flips bitmap bits in C (``_create.flip_bits``); tests turn it off to run
#: ``_flip``, the reference
NATIVE_FLIP = True

_FREED = "alloc.freed"
_RESERVE = "alloc.reserve"
_PENDING = "alloc.pending"

Words = npt.NDArray[np.uint64]
Ints = npt.NDArray[np.int64]
_EMPTY: Ints = np.zeros(0, dtype=np.int64)


def reserve_blocks(block_count: int) -> int:
    """Blocks kept for operations that free space: 1/1024 of the filesystem, 32 to 1024.

    Enough for the B+tree nodes of many extent splits (a punch needs at most
    the tree's height + 1, a handful even for huge files); ext4 keeps 2% of
    the filesystem, up to 4096 clusters, for the same purpose.
    """
    return min(1024, max(32, block_count // 1024))


class Allocator:
    """Allocates and frees blocks in the bitmap of a mounted filesystem.

    Stateless between calls except for the next-fit cursor and the cache of
    verified bitmap blocks; every change happens in the caller's transaction.
    """

    def __init__(self, store: PmemStore, sup: SuperState) -> None:
        """Bind to a mounted filesystem (journal already recovered).

        Raises:
            Corrupted (EUCLEAN): the bitmap is too small for the block count.
        """
        sb = sup.sb
        if sb.bitmap_blocks * BPB < sb.block_count:
            raise Corrupted(
                f"allocation bitmap of {sb.bitmap_blocks} blocks cannot describe "
                f"{sb.block_count} blocks"
            )
        self.store = store
        self.sup = sup
        self.block_count = sb.block_count
        self._bm0 = sb.bitmap_start
        self._nbm = sb.bitmap_blocks
        self._lo = sb.data_start  # the data area is [_lo, _hi)
        self._hi = sb.block_count - 1  # the backup superblock is the last block
        self._cursor = self._lo
        self._verified: set[int] = set()
        #: blocks that only transactions allowed by use_reserve may take (invariant 5)
        self.reserved = reserve_blocks(sb.block_count)
        #: the committed bitmap's free runs, built lazily (daxfs.fs.freeindex)
        self.index = FreeIndex(self._lo, self._hi, self._nbm, weak_method(self._load_committed))

    # -- allocation -----------------------------------------------------------------------

    def _check_available(self, tx: Transaction, count: int) -> None:
        """Raise NoSpace unless ``count`` blocks are available to ``tx``."""
        available = self.available(tx)
        if count > available:
            reserve = "" if tx.scratch.get(_RESERVE) else f", {self.reserved} reserved"
            raise NoSpace(
                f"cannot allocate {count} blocks: {available} available "
                f"({self.sup.sb.free_blocks} free{reserve})"
            )

    def _start(self, goal: int | None) -> int:
        """Where a search for free blocks begins: ``goal``, else the next-fit cursor;
        the start of the data area if that is outside it."""
        start = self._cursor if goal is None else goal
        return start if self._lo <= start < self._hi else self._lo

    def _indexed_run(self, start: int, count: int, taken: Runs) -> int | None:
        """The first of ``count`` (at most BPB) free blocks in one run at or after
        ``start``, wrapping round, less ``taken``, as the index finds it; or None."""
        lo, hi = self._lo, self._hi
        first = self.index.find(start, hi, count, taken)
        if first is None and start > lo:
            first = self.index.find(lo, min(hi, start + count - 1), count, taken)
        return first

    def _check_freeable(self, tx: Transaction, start: int, end: int) -> None:
        """Raise Corrupted unless blocks ``[start, end)`` lie in the data area and are
        all in use in ``tx`` (``free``'s check); the message names the first bad block.

        Raises:
            Corrupted (EUCLEAN): as said, or a bitmap block fails its checksum.
        """
        self._check_range(start, end)
        for k, i, j in _segments(start, end):
            self._verify(k, k + 1)
            bit = _mismatch(tx.read(self._bm0 + k), i, j, used=True)
            if bit is not None:
                raise Corrupted(f"freeing block {k * BPB + bit}, which is already free")

    def alloc(self, tx: Transaction, count: int, goal: int | None = None) -> list[tuple[int, int]]:
        """Allocate exactly ``count`` blocks in ``tx``; return them as (start, length) runs.

        One run at or after ``goal`` (else after the next-fit cursor) if any
        run is long enough, wrapping round; otherwise as few runs as the
        module docstring's "Fewest runs" finds, in the order found.  Caller
        must hold ``tx`` open.

        Raises:
            NoSpace (ENOSPC): fewer than ``count`` blocks are available to
                ``tx`` (blocks it freed do not count, nor the reserve unless
                ``tx`` may use it); nothing changed.
            Corrupted (EUCLEAN): a bitmap block fails its checksum; nothing changed.
        """
        assert tx.state == "open", "caller must hold an open transaction"
        assert count >= 0, f"cannot allocate {count} blocks"
        if count == 0:
            return []
        self._check_available(tx, count)
        lo, hi = self._lo, self._hi
        start = self._start(goal)
        pending = self._pending(tx)
        if count <= BPB:
            # the index finds exactly what _first_fit would (it follows runs across
            # group edges): when it finds nothing, no scan of the bitmap can
            first = self._indexed_run(start, count, pending.taken)
        else:  # longer than a group: the index holds no such run, the bitmap is the truth
            first = self._first_fit(tx, start, hi, count)
            if first is None and start > lo:
                first = self._first_fit(tx, lo, min(hi, start + count - 1), count)
        runs = [(first, count)] if first is not None else self._gather(tx, start, count)
        self._take(tx, runs)
        pending.taken += ((s, s + n) for s, n in runs)
        return runs

    def move(
        self,
        tx: Transaction,
        start: int,
        count: int,
        goal: int | None = None,
        found: Callable[[int], object] | None = None,
    ) -> int | None:
        """Copy-on-write's allocation: free the ``count`` blocks at ``start`` (in use) and
        allocate ``count`` others as one run, at or after ``goal`` as ``alloc`` finds it;
        return the new run's start.  Caller must hold ``tx`` open.

        The same bitmap as ``alloc(tx, count, goal)`` then ``free(tx, start, count)``
        when ``alloc`` finds one run, with the same rules (the freed blocks do not
        count as available to ``tx``, the reserve stays); but the free-block count
        does not change, so the superblock is not dirtied (invariant 1 holds).

        Returns None, with nothing changed, when no single run of ``count`` blocks
        is available (or ``count`` exceeds a group): then ``alloc`` (several runs)
        and ``free`` are the way.  ``found(first)``, if given, is called as soon as
        the new run is chosen and marked in use in ``tx``'s bitmap (checked free
        there), before the old run is checked and freed and before the free
        space is checked: the copy-on-write path starts its copy into the run
        there, so that the copy runs on another core while this one does the
        rest (those checks included).  If a check fails, the new run is unmarked
        again before Corrupted or NoSpace is raised; the caller's transaction
        then aborts, which joins the copy (a copy into blocks that are free in
        both views harms nothing).

        Raises:
            NoSpace (ENOSPC): fewer than ``count`` blocks are available to ``tx``;
                nothing changed.
            Corrupted (EUCLEAN): as ``free`` (a block of the old run is free or
                outside the data area), or a bitmap block fails its checksum;
                nothing changed.
        """
        assert tx.state == "open", "caller must hold an open transaction"
        assert count > 0, f"cannot move {count} blocks"
        end = start + count
        pending = self._pending(tx)
        first = None
        if count <= BPB:
            first = self._indexed_run(self._start(goal), count, pending.taken)  # as alloc
        if first is None:
            self._check_range(start, end)  # what these raise, move raises too
            self._check_available(tx, count)
            self._check_freeable(tx, start, end)
            return None
        new_end = first + count
        bm0 = self._bm0
        flip = _create.flip_bits if NATIVE_FLIP else _flip
        k, i = divmod(first, BPB)
        if i + count <= BPB:  # one bitmap block (the common case): _segments' one step
            hit = flip(tx.write(bm0 + k, seal=seal_bitmap_block), i, i + count, True)
            assert hit is None, f"moving to block {k * BPB + hit}, which is in use"
        else:
            for k, i, j in _segments(first, new_end):
                hit = flip(tx.write(bm0 + k, seal=seal_bitmap_block), i, j, True)
                assert hit is None, f"moving to block {k * BPB + hit}, which is in use"
        if found is not None:
            found(first)  # the run is free in the bitmap (checked), and now taken
        # the checks that the copy need not wait for: the old run, the space (NoSpace
        # after the copy started leaves it into blocks free in both views, as Corrupted)
        try:
            self._check_range(start, end)
            self._check_available(tx, count)
            self._clear_in_use(tx, start, end)  # checks each bit as it clears it
        except (Corrupted, NoSpace):
            for k, i, j in _segments(first, new_end):  # invariant 3: nothing changed
                flip(tx.write(bm0 + k), i, j, False)
            raise
        pending.release(start, end)
        pending.taken.append((first, new_end))
        tx.scratch[_FREED] = tx.scratch.get(_FREED, 0) + count
        self._cursor = new_end if new_end < self._hi else self._lo
        return first

    def _check_range(self, start: int, end: int) -> None:
        """Raise Corrupted unless blocks ``[start, end)`` lie in the data area."""
        if start < self._lo or end > self._hi:
            bad = start if not self._lo <= start < self._hi else self._hi
            raise Corrupted(f"freeing block {bad}: outside the data area [{self._lo}, {self._hi})")

    def _clear_in_use(self, tx: Transaction, start: int, end: int) -> None:
        """Clear the bits of blocks ``[start, end)`` (in the data area) in ``tx``'s
        bitmap, checking that each was set: ``_check_freeable`` and ``_mark(used=False)``
        in one pass.  On a bit already clear (or a bitmap block whose checksum
        fails), the bits cleared so far are set again.

        Raises:
            Corrupted (EUCLEAN): a block is already free (named), or a bitmap block
                fails its checksum; nothing changed.
        """
        bm0 = self._bm0
        flip = _create.flip_bits if NATIVE_FLIP else _flip
        k, i = divmod(start, BPB)
        if i + end - start <= BPB:  # one bitmap block (the common case): nothing to undo
            if k not in self._verified:
                self._verify(k, k + 1)
            hit = flip(tx.write(bm0 + k, seal=seal_bitmap_block), i, i + end - start, False)
            if hit is not None:
                raise Corrupted(f"freeing block {k * BPB + hit}, which is already free")
            return
        done: list[tuple[int, int, int]] = []
        try:
            for k, i, j in _segments(start, end):
                self._verify(k, k + 1)
                hit = flip(tx.write(bm0 + k, seal=seal_bitmap_block), i, j, False)
                if hit is not None:
                    raise Corrupted(f"freeing block {k * BPB + hit}, which is already free")
                done.append((k, i, j))
        except Corrupted:
            for dk, di, dj in done:
                flip(tx.write(bm0 + dk), di, dj, True)
            raise

    def alloc_one(self, tx: Transaction, goal: int | None = None) -> int:
        """Allocate one block in ``tx``, at or after ``goal`` if possible.

        Raises:
            NoSpace (ENOSPC): no block is available to ``tx``; nothing changed.
            Corrupted (EUCLEAN): a bitmap block fails its checksum; nothing changed.
        """
        return self.alloc(tx, 1, goal)[0][0]

    def available(self, tx: Transaction) -> int:
        """Blocks ``tx`` may still allocate: free ones it did not free itself, less the
        reserve unless it may use it (a bound: runs are found by the search)."""
        freed: int = tx.scratch.get(_FREED, 0)
        free = self.sup.sb.free_blocks - freed
        if not tx.scratch.get(_RESERVE):
            free -= self.reserved
        return max(0, free)

    def unreserved(self) -> int:
        """Committed free blocks that ordinary allocations may take: all but the reserve
        (statvfs ``f_bavail``, and what a create may grow the inode file by)."""
        return max(0, self.sup.sb.free_blocks - self.reserved)

    def use_reserve(self, tx: Transaction) -> None:
        """Let ``tx`` take the reserved blocks: it frees space (module docstring)."""
        tx.scratch[_RESERVE] = True

    def free(self, tx: Transaction, start: int, length: int) -> None:
        """Free blocks ``[start, start + length)`` in ``tx``.  Caller must hold ``tx`` open.

        The blocks become available to later transactions once ``tx`` commits.

        Raises:
            Corrupted (EUCLEAN): a block in the range is outside the data area or
                already free (the metadata that pointed at it is corrupt), or a
                bitmap block fails its checksum; the message names the block.
                Nothing changed.
        """
        assert tx.state == "open", "caller must hold an open transaction"
        assert length >= 0, f"cannot free {length} blocks"
        if length == 0:
            return
        end = start + length
        self._check_freeable(tx, start, end)
        self._mark(tx, start, end, used=False)
        self._pending(tx).release(start, end)
        tx.scratch[_FREED] = tx.scratch.get(_FREED, 0) + length
        sb = self.sup.dirty(tx)
        sb.free_blocks += length
        assert sb.free_blocks <= self.block_count

    # -- the free-extent index -------------------------------------------------------------

    def _pending(self, tx: Transaction) -> _Pending:
        """The transaction's runs for the index; the first call hooks its commit."""
        pending: _Pending | None = tx.scratch.get(_PENDING)
        if pending is None:
            pending = tx.scratch[_PENDING] = _Pending()
            tx.on_commit(lambda: pending.apply(self.index))
        assert not pending.settled, "an allocation or free after settle()"
        return pending

    def settle(self, tx: Transaction) -> None:
        """Apply ``tx``'s runs to the free-extent index now instead of when it commits.

        For a caller whose transaction makes no more allocation or free (asserted)
        and then commits at once: the copy-on-write path (DataPath._cow_blocks)
        settles while its copy still runs on another core, so that the index work
        is not left for after the copy.  Nothing in ``tx`` searches the index
        after this, so the runs it freed cannot be handed out by it (the "two
        views" rule).  If ``tx`` aborts instead, the index, which now shows what
        the commit would have made, is dropped (``FreeIndex.invalidate``: rebuilt
        from the committed bitmap group by group on the next searches), so that
        between transactions it still equals the committed bitmap (invariant 7).
        """
        pending = self._pending(tx)
        pending.apply(self.index)
        pending.taken = []
        pending.freed = []
        pending.settled = True
        tx.on_abort(self.index.invalidate)

    def _load_committed(self, k: int) -> Words:
        """The committed words of bitmap block k, crc checked (for the index)."""
        return self._load(self.store, k, k + 1)

    def check_index(self) -> None:
        """Assert that the free-extent index equals the committed bitmap (for tests).

        Call it between transactions.

        Raises:
            AssertionError: naming the first group of blocks that differs.
            Corrupted (EUCLEAN): a bitmap block fails its checksum.
        """
        self.index.check()

    def invalidate_index(self) -> None:
        """Forget the index: the bitmap was changed other than by this allocator (fsck)."""
        self.index.invalidate()

    # -- queries --------------------------------------------------------------------------

    def is_allocated(self, reader: Reader, blockno: int) -> bool:
        """Whether ``blockno`` is in use as ``reader`` (a transaction or the store) sees it.

        Raises:
            Corrupted (EUCLEAN): ``blockno`` is outside the filesystem, or its
                bitmap block fails its checksum.
        """
        if not 0 <= blockno < self.block_count:
            raise Corrupted(f"block {blockno} is outside the filesystem of {self.block_count}")
        k, i = divmod(blockno, BPB)
        self._verify(k, k + 1)
        return bool(reader.read(self._bm0 + k)[i >> 3] >> (i & 7) & 1)

    def count_free(self, reader: Reader) -> int:
        """Zero bits below ``block_count`` as ``reader`` sees the bitmap (mount checks, fsck).

        Raises:
            Corrupted (EUCLEAN): a bitmap block fails its checksum.
        """
        free = 0
        for k0 in range(0, self._nbm, CHUNK_BLOCKS):
            words = self._load(reader, k0, min(k0 + CHUNK_BLOCKS, self._nbm))
            base = k0 * BPB
            _mask_outside(words, base, base, self.block_count)
            free += 64 * len(words) - int(_popcount(words).sum())
        return free

    def used_map(self, reader: Reader) -> npt.NDArray[np.bool_]:
        """One bool per block, True where ``reader``'s bitmap says in use (for fsck).

        Memory is one byte per block: meant for fsck, not for a mounted filesystem.

        Raises:
            Corrupted (EUCLEAN): a bitmap block fails its checksum.
        """
        out = np.empty(self.block_count, dtype=np.bool_)
        for k0 in range(0, self._nbm, CHUNK_BLOCKS):
            words = self._load(reader, k0, min(k0 + CHUNK_BLOCKS, self._nbm))
            base = k0 * BPB
            bits = np.unpackbits(words.view(np.uint8), bitorder="little").view(np.bool_)
            n = min(len(bits), self.block_count - base)
            out[base : base + n] = bits[:n]
        return out

    # -- reading the bitmap ---------------------------------------------------------------

    def _verify(self, k0: int, k1: int) -> None:
        """Check the committed crc of bitmap blocks [k0, k1) not checked yet in this mount."""
        for k in range(k0, k1):
            if k in self._verified:
                continue
            if not bitmap_block_ok(self.store.read(self._bm0 + k)):
                raise Corrupted(
                    f"allocation bitmap block {k}: checksum mismatch (block {self._bm0 + k})"
                )
            if len(self._verified) >= VERIFIED_CACHE:
                self._verified.clear()
            self._verified.add(k)

    def _load(self, reader: Reader, k0: int, k1: int) -> Words:
        """A copy of the words of bitmap blocks [k0, k1) as ``reader`` sees them."""
        self._verify(k0, k1)
        parts = [
            np.frombuffer(reader.read(self._bm0 + k), dtype=np.uint64, count=WORDS)
            for k in range(k0, k1)
        ]
        return np.concatenate(parts)

    def _chunks(self, tx: Transaction, lo: int, hi: int) -> Iterator[tuple[int, Words]]:
        """(first block, combined words) of growing chunks covering blocks [lo, hi).

        Combined: a bit is 1 where either view has it, or outside [lo, hi).
        """
        k, last = lo // BPB, (hi - 1) // BPB
        size = 1
        while k <= last:
            k1 = min(k + size, last + 1)
            words = self._load(tx, k, k1) | self._load(self.store, k, k1)
            base = k * BPB
            _mask_outside(words, base, lo, hi)
            yield base, words
            k = k1
            size = min(2 * size, CHUNK_BLOCKS)

    # -- searching ------------------------------------------------------------------------

    def _first_fit(self, tx: Transaction, lo: int, hi: int, count: int) -> int | None:
        """The lowest block b in [lo, hi) with [b, b + count) available to ``tx``, if any."""
        if hi - lo < count:
            return None
        stitch = _Stitch()
        for base, words in self._chunks(tx, lo, hi):
            if count == 1:
                nonfull = words != _ALL
                j = int(np.argmax(nonfull))
                if nonfull[j]:
                    return base + 64 * j + _ctz1(~int(words[j]) & MASK64)
                continue
            starts, ends = stitch.feed(base, base + 64 * len(words), *_long_runs(base, words))
            found = [int(starts[i]) for i in np.flatnonzero(ends - starts >= count)[:1]]
            if stitch.open is not None and stitch.top - stitch.open >= count:
                found.append(stitch.open)
            if count <= SHORT_MAX:
                found += _short_fits(base, words, count)
            if found:
                return min(found)
        return None

    def _runs(self, tx: Transaction, start: int, *, long: bool) -> Iterator[tuple[Ints, Ints]]:
        """Free runs (starts, ends) in [start, hi) then [lo, start): the long ones, or all."""
        regions = (
            [(start, self._hi), (self._lo, start)] if start > self._lo else [(start, self._hi)]
        )
        for lo, hi in regions:
            stitch = _Stitch()
            for base, words in self._chunks(tx, lo, hi):
                found = _long_runs(base, words) if long else _all_runs(base, words)
                yield _only_long(*stitch.feed(base, base + 64 * len(words), *found), long)
            yield _only_long(*stitch.close(), long)

    def _gather(self, tx: Transaction, start: int, count: int) -> list[tuple[int, int]]:
        """Several runs totalling ``count`` blocks (see "Fewest runs"); nothing changed.

        Raises:
            NoSpace (ENOSPC): fewer than ``count`` blocks are available to ``tx``.
        """
        sums = np.zeros(CLASSES, dtype=np.int64)
        every_long: list[tuple[int, int]] = []  # kept only while they hold < count blocks
        for starts, ends in self._runs(tx, start, long=True):
            lengths = ends - starts
            sums += np.bincount(_log2(lengths), weights=lengths, minlength=CLASSES).astype(np.int64)
            if int(sums.sum()) < count:
                every_long += zip(starts.tolist(), lengths.tolist(), strict=True)
        above = np.cumsum(sums[::-1])[::-1]  # above[c]: blocks in long runs of class >= c
        if int(above[0]) >= count:
            threshold = int(np.flatnonzero(above >= count)[-1])
            need = count - (int(above[threshold + 1]) if threshold + 1 < CLASSES else 0)
            return self._take_classes(tx, start, threshold, need)
        runs = every_long
        need = count - int(above[0])
        for starts, ends in self._runs(tx, start, long=False):
            lengths = ends - starts
            before = np.cumsum(lengths) - lengths
            pick = np.flatnonzero(before < need)
            taken = np.minimum(lengths[pick], need - before[pick])
            runs += zip(starts[pick].tolist(), taken.tolist(), strict=True)
            need -= int(taken.sum())
            if need == 0:
                return runs
        raise NoSpace(
            f"cannot allocate {count} blocks: {count - need} are available to this transaction "
            f"({self.sup.sb.free_blocks} free, counting blocks it freed)"
        )

    def _take_classes(
        self, tx: Transaction, start: int, threshold: int, need: int
    ) -> list[tuple[int, int]]:
        """Every long run of class > threshold, then class-threshold runs for ``need`` blocks."""
        runs: list[tuple[int, int]] = []
        for starts, ends in self._runs(tx, start, long=True):
            lengths = ends - starts
            classes = _log2(lengths)
            at = classes == threshold
            at_lengths = np.where(at, lengths, 0)
            before = np.cumsum(at_lengths) - at_lengths  # class-threshold blocks before each
            give = np.where(at, np.clip(need - before, 0, at_lengths), 0)
            give = np.where(classes > threshold, lengths, give)
            pick = np.flatnonzero(give)
            runs += zip(starts[pick].tolist(), give[pick].tolist(), strict=True)
            need -= int(give[at].sum())
        assert need == 0, f"{need} blocks short of the histogram"
        return runs

    # -- changing the bitmap --------------------------------------------------------------

    def _take(self, tx: Transaction, runs: list[tuple[int, int]]) -> None:
        """Mark the runs in use in ``tx``, then the counter; move the cursor past the last.

        Precondition: the runs are disjoint, in the data area, and free in ``tx``.
        """
        if len(runs) > MANY_RUNS:
            self._mark_many(tx, runs)
        else:
            for start, length in runs:
                assert self._lo <= start, (start, length)
                assert start + length <= self._hi, (start, length)
                for k, i, j in _segments(start, start + length):
                    block = tx.write(self._bm0 + k, seal=seal_bitmap_block)
                    assert _mismatch(block, i, j, used=False) is None, (start, length)
                    _fill(block, i, j, used=True)
        total = sum(length for _, length in runs)
        sb = self.sup.dirty(tx)
        assert sb.free_blocks >= total
        sb.free_blocks -= total
        end = runs[-1][0] + runs[-1][1]
        self._cursor = end if end < self._hi else self._lo

    def _mark(self, tx: Transaction, start: int, end: int, *, used: bool) -> None:
        for k, i, j in _segments(start, end):
            _fill(tx.write(self._bm0 + k, seal=seal_bitmap_block), i, j, used=used)

    def _mark_many(self, tx: Transaction, runs: list[tuple[int, int]]) -> None:
        """Mark many runs in use: one numpy pass per bitmap block they touch."""
        starts = np.fromiter((start for start, _ in runs), dtype=np.int64, count=len(runs))
        lengths = np.fromiter((length for _, length in runs), dtype=np.int64, count=len(runs))
        order = np.argsort(starts)
        starts = starts[order]
        ends = starts + lengths[order]
        assert starts[0] >= self._lo, "run before the data area"
        assert ends[-1] <= self._hi, "run past the data area"
        assert (starts[1:] >= ends[:-1]).all(), "overlapping runs"
        first, last = starts // BPB, (ends - 1) // BPB
        spans = last - first + 1
        offsets = np.arange(int(spans.sum())) - np.repeat(np.cumsum(spans) - spans, spans)
        for k in np.unique(np.repeat(first, spans) + offsets).tolist():
            base = k * BPB
            a = int(np.searchsorted(ends, base, side="right"))
            b = int(np.searchsorted(starts, base + BPB, side="left"))
            edges = np.zeros(BPB + 1, dtype=np.int8)
            edges[np.maximum(starts[a:b] - base, 0)] += 1  # starts are distinct, so are ends
            edges[np.minimum(ends[a:b] - base, BPB)] -= 1
            inside = np.cumsum(edges[:BPB], dtype=np.int8).astype(np.uint8)
            mask = np.packbits(inside, bitorder="little")
            block = np.frombuffer(
                tx.write(self._bm0 + k, seal=seal_bitmap_block), dtype=np.uint8, count=BITMAP_BYTES
            )
            assert not (block & mask).any(), f"allocating a block in use in bitmap block {k}"
            block |= mask


class _Pending:
    """What one transaction did to the bitmap, to apply to the index when it commits.

    ``taken``: runs it allocated and still holds (zero in the committed
    bitmap, one in its own); ``freed``: runs it freed that the committed
    bitmap has in use.  The two are disjoint: a transaction never allocates
    a block it freed (module docstring, "Two views").
    """

    __slots__ = ("freed", "settled", "taken")

    def __init__(self) -> None:
        self.taken: Runs = []
        self.freed: Runs = []
        #: applied to the index before the commit (Allocator.settle): no more changes
        self.settled = False

    def release(self, start: int, end: int) -> None:
        """Blocks ``[start, end)`` were freed in the transaction."""
        if not self.taken:  # the common case: nothing of its own to give back
            self.freed.append((start, end))
            return
        keep: Runs = []
        mine: Runs = []  # parts the transaction itself allocated: they just go back
        for ts, te in self.taken:
            if te <= start or ts >= end:
                keep.append((ts, te))
                continue
            if ts < start:
                keep.append((ts, start))
            if te > end:
                keep.append((end, te))
            mine.append((max(ts, start), min(te, end)))
        self.taken = keep
        cur = start
        for ms, me in sorted(mine):
            if ms > cur:
                self.freed.append((cur, ms))
            cur = me
        if cur < end:
            self.freed.append((cur, end))

    def apply(self, index: FreeIndex) -> None:
        """The transaction committed: its changes reach the index.

        An index that disagrees with them is dropped (rebuilt from the bitmap on
        the next search), never raised over a transaction that is durable already;
        ``Allocator.check_index`` is how tests catch such a disagreement.
        """
        for start, end in self.taken:
            if not index.remove(start, end):
                break
        else:
            for start, end in self.freed:
                if not index.add(start, end):
                    break
            else:
                return
        index.disagreements += 1
        index.invalidate()


# --------------------------------------------------------------------------- run finding


class _Stitch:
    """Joins free runs cut at chunk edges; feed chunks in address order.

    ``feed`` returns the finished runs of a chunk and holds back the one that
    reaches its end (``open``, up to ``top``) until the next chunk shows
    whether it goes on; ``close`` returns it when there is no next chunk.
    """

    def __init__(self) -> None:
        self.open: int | None = None
        self.top = 0

    def feed(self, lo: int, top: int, starts: Ints, ends: Ints) -> tuple[Ints, Ints]:
        if self.open is not None:
            if len(starts) and starts[0] == lo:
                starts = starts.copy()
                starts[0] = self.open
            else:
                starts = np.concatenate(([self.open], starts))
                ends = np.concatenate(([lo], ends))
            self.open = None
        self.top = top
        if len(ends) and ends[-1] == top:
            self.open = int(starts[-1])
            starts, ends = starts[:-1], ends[:-1]
        return starts, ends

    def close(self) -> tuple[Ints, Ints]:
        if self.open is None:
            return _EMPTY, _EMPTY
        run = np.array([self.open], dtype=np.int64), np.array([self.top], dtype=np.int64)
        self.open = None
        return run


def _long_runs(base: int, words: Words) -> tuple[Ints, Ints]:
    """Free runs of a chunk that hold a whole free word or reach a chunk edge, ascending."""
    n = len(words)
    zero = np.flatnonzero(words == 0)
    if len(zero):
        breaks = np.flatnonzero(np.diff(zero) != 1)
        g0 = zero[np.concatenate(([0], breaks + 1))]  # first zero word of each group
        g1 = zero[np.concatenate((breaks, [len(zero) - 1]))] + 1  # one past its last
        left = np.zeros(len(g0), dtype=np.int64)
        inside = g0 > 0
        left[inside] = _clz(words[g0[inside] - 1])
        right = np.zeros(len(g1), dtype=np.int64)
        inside = g1 < n
        right[inside] = _ctz(words[g1[inside]])
        starts = (base + 64 * g0 - left).astype(np.int64)
        ends = (base + 64 * g1 + right).astype(np.int64)
    else:
        starts = ends = _EMPTY
    first, last = int(words[0]), int(words[-1])
    if first and first & 1 == 0:  # a partly used first word with free low bits
        starts = np.concatenate(([base], starts))
        ends = np.concatenate(([base + _ctz1(first)], ends))
    if last and not last >> 63:  # a partly used last word with free high bits
        top = base + 64 * n
        starts = np.concatenate((starts, [top - (64 - last.bit_length())]))
        ends = np.concatenate((ends, [top]))
    return starts, ends


def _short_fits(base: int, words: Words, count: int) -> list[int]:
    """Lowest starts of ``count`` free blocks within a word or across one word boundary."""
    found: list[int] = []
    if len(words) > 1:
        high = _clz(words[:-1])  # free bits at the top of each word
        low = _ctz(words[1:])  # free bits at the bottom of the next
        across = np.flatnonzero(high + low >= count)[:1]
        found += [base + 64 * (int(j) + 1) - int(high[j]) for j in across]
    if count <= 64:
        fits = ~words  # bit i of fits: blocks i .. i + width - 1 of the word are free
        width = 1
        while width < count:
            shift = min(width, count - width)
            fits &= fits >> np.uint64(shift)
            width += shift
        hit = np.flatnonzero(fits)[:1]
        found += [base + 64 * int(j) + _ctz1(int(fits[j])) for j in hit]
    return found


def _all_runs(base: int, words: Words) -> tuple[Ints, Ints]:
    """Every free run of a chunk, bit by bit (numpy): the costly path, for short runs."""
    bits = np.unpackbits(words.view(np.uint8), bitorder="little").astype(np.int8)
    edges = np.diff(bits, prepend=np.int8(1), append=np.int8(1))
    starts = np.flatnonzero(edges == -1).astype(np.int64) + base
    ends = np.flatnonzero(edges == 1).astype(np.int64) + base
    return starts, ends


def _only_long(starts: Ints, ends: Ints, long: bool) -> tuple[Ints, Ints]:
    """Keep the runs that hold a whole aligned free word if ``long``, else those that do not."""
    holds = ((starts + 63) & ~63) + 64 <= ends
    keep = holds if long else ~holds
    return starts[keep], ends[keep]


def _mask_outside(words: Words, base: int, lo: int, hi: int) -> None:
    """Set the bits of blocks outside [lo, hi) in words starting at block ``base`` <= lo."""
    top = base + 64 * len(words)
    if lo > base:
        q, r = divmod(lo - base, 64)
        words[:q] = _ALL
        if r:
            words[q] |= np.uint64((1 << r) - 1)
    if hi < top:
        q, r = divmod(hi - base, 64)
        if r:
            words[q] |= np.uint64(MASK64 ^ ((1 << r) - 1))
            q += 1
        words[q:] = _ALL


# --------------------------------------------------------------------------- bit helpers


def _popcount(words: Words) -> Ints:
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(words).astype(np.int64)
    counts: Ints = _POP8[words.view(np.uint8)].reshape(-1, 8).sum(axis=1)
    return counts


def _ctz(words: Words) -> Ints:
    """Trailing zero bits of each word (64 for 0): its free blocks at the low end."""
    return _popcount(~words & (words - _ONE))


def _clz(words: Words) -> Ints:
    """Leading zero bits of each word (64 for 0): its free blocks at the high end."""
    smear = words.copy()
    for shift in _SHIFTS:
        smear |= smear >> shift
    return 64 - _popcount(smear)


def _ctz1(value: int) -> int:
    """Trailing zero bits of a nonzero int."""
    return (value & -value).bit_length() - 1


def _log2(lengths: Ints) -> Ints:
    """floor(log2(n)) of positive lengths (exact: lengths are far below 2**53)."""
    return (np.frexp(lengths.astype(np.float64))[1] - 1).astype(np.int64)


def _segments(start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(bitmap block k, first bit, end bit) of each bitmap block that [start, end) touches."""
    while start < end:
        k, i = divmod(start, BPB)
        j = min(end - k * BPB, BPB)
        yield k, i, j
        start = k * BPB + j


def _span(i: int, j: int) -> tuple[int, int, int]:
    """First byte, end byte and the mask (as an int over those bytes) of bits [i, j)."""
    b0, b1 = i >> 3, ((j - 1) >> 3) + 1
    return b0, b1, ((1 << (j - i)) - 1) << (i & 7)


def _fill(block: memoryview, i: int, j: int, *, used: bool) -> None:
    """Set (``used``) or clear bits [i, j) of a writable bitmap block."""
    b0, b1, mask = _span(i, j)
    bits = int.from_bytes(block[b0:b1], "little")
    bits = bits | mask if used else bits & ~mask
    block[b0:b1] = bits.to_bytes(b1 - b0, "little")


def _flip(block: memoryview, i: int, j: int, used: bool, /) -> int | None:
    """``_fill`` after ``_mismatch(..., used=not used)``, in one read: set (``used``) or
    clear bits [i, j); return the first bit that was already so (then nothing changed)."""
    b0, b1, mask = _span(i, j)
    bits = int.from_bytes(block[b0:b1], "little")
    bad = (mask & bits) if used else (mask & ~bits)
    if bad:
        return b0 * 8 + _ctz1(bad)
    block[b0:b1] = (bits ^ mask).to_bytes(b1 - b0, "little")
    return None


def _mismatch(block: memoryview, i: int, j: int, *, used: bool) -> int | None:
    """The first bit in [i, j) of a bitmap block that is not ``used``, or None."""
    b0, b1, mask = _span(i, j)
    bits = int.from_bytes(block[b0:b1], "little")
    bad = (mask & ~bits) if used else (mask & bits)
    return b0 * 8 + _ctz1(bad) if bad else None
