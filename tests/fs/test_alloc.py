"""The block allocator: bitmap and counter inside transactions, crash safety, a model check."""

from __future__ import annotations

import dataclasses
import errno
import functools
from collections.abc import Iterator

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from daxfs.errors import Corrupted, NoSpace
from daxfs.fs.alloc import Allocator
from daxfs.fs.journal import Journal, Transaction
from daxfs.fs.layout import (
    BITMAP_BYTES,
    BITS_PER_BITMAP_BLOCK,
    BLOCK_SIZE,
    Superblock,
    bitmap_blocks_for,
    seal_bitmap_block,
)
from daxfs.fs.store import PmemStore
from daxfs.fs.super import SuperState
from daxfs.testing import PowerFailure, SimulatedPmem

BPB = BITS_PER_BITMAP_BLOCK
JOURNAL_BLOCKS = 16
BIG = 100_000  # four bitmap blocks, the last one partly beyond the device


# --------------------------------------------------------------------------- helpers


@dataclasses.dataclass
class Fs:
    dev: SimulatedPmem
    store: PmemStore
    journal: Journal
    sup: SuperState
    alloc: Allocator

    @property
    def sb(self) -> Superblock:
        return self.sup.sb

    def close(self) -> None:
        self.store.close()


def format_image(blocks: int, busy: npt.NDArray[np.bool_] | None = None) -> bytes:
    """Superblock, empty journal and bitmap of a ``blocks``-block filesystem.

    The static regions are in use, and so are the blocks where ``busy`` (one
    bool per block) is True.
    """
    bitmap_start = 1 + JOURNAL_BLOCKS
    bitmap_blocks = bitmap_blocks_for(blocks)
    inode_block0 = bitmap_start + bitmap_blocks
    data_start = inode_block0 + 1
    used = np.zeros(bitmap_blocks * BPB, dtype=np.uint8)
    if busy is not None:
        used[:blocks] = busy
    used[:data_start] = 1
    used[blocks - 1 :] = 1  # the backup superblock and bits beyond the device
    head = bytearray(data_start * BLOCK_SIZE)
    for k in range(bitmap_blocks):
        block = memoryview(head)[(bitmap_start + k) * BLOCK_SIZE :][:BLOCK_SIZE]
        bits = np.packbits(used[k * BPB : (k + 1) * BPB], bitorder="little")
        block[:BITMAP_BYTES] = bits.tobytes()
        seal_bitmap_block(block)
    sb = Superblock(
        block_count=blocks,
        uuid=bytes(range(16)),
        label="alloc-test",
        journal_start=1,
        journal_blocks=JOURNAL_BLOCKS,
        bitmap_start=bitmap_start,
        bitmap_blocks=bitmap_blocks,
        inode_block0=inode_block0,
        created_ns=0,
        hash_key=bytes(16),
        free_blocks=blocks - int(used[:blocks].sum()),
        free_inodes=0,
        used_inodes=3,
        free_ino_head=0,
        orphan_head=0,
        next_generation=1,
    )
    head[:BLOCK_SIZE] = sb.to_block()
    return bytes(head)


def mount(dev: SimulatedPmem) -> Fs:
    """Recover the journal, then bind an allocator, as a mount would.

    The device holds exactly the filesystem and the journal is where
    format_image puts it, so recovery can run before the superblock is read
    (it may be torn until the journal is replayed).
    """
    store = PmemStore(dev)
    journal = Journal(store, 1, JOURNAL_BLOCKS)
    journal.recover()
    sup = SuperState(store, Superblock.unpack(store.block(0), "superblock"))
    assert sup.sb.block_count == store.block_count
    alloc = Allocator(store, sup)
    alloc.reserved = 0  # the bitmap tests count every block; the reserve has its own tests
    return Fs(dev, store, journal, sup, alloc)


def make_fs(blocks: int = 8192) -> Fs:
    """A fresh hand-made filesystem of ``blocks`` blocks on a SimulatedPmem."""
    dev = SimulatedPmem(blocks * BLOCK_SIZE)
    dev.write(0, format_image(blocks))
    return mount(dev)


@functools.cache
def _big_device() -> SimulatedPmem:
    return SimulatedPmem(BIG * BLOCK_SIZE)  # costly to create: shared, reformatted per use


def make_big_fs(busy: npt.NDArray[np.bool_] | None = None) -> Fs:
    """A fresh 100,000-block filesystem (several bitmap blocks) on a shared device."""
    dev = _big_device()
    dev.write(0, format_image(BIG, busy))
    return mount(dev)


@pytest.fixture
def fs() -> Iterator[Fs]:
    f = make_fs()
    yield f
    f.close()


@pytest.fixture
def big() -> Iterator[Fs]:
    f = make_big_fs()
    yield f
    f.close()


def blocks_of(runs: list[tuple[int, int]]) -> set[int]:
    out: set[int] = set()
    for start, length in runs:
        out.update(range(start, start + length))
    return out


def bitmap_bytes(fs: Fs, reader: PmemStore | Transaction | None = None) -> bytes:
    reader = reader or fs.store
    return b"".join(
        bytes(reader.read(fs.sb.bitmap_start + k)[:BITMAP_BYTES])
        for k in range(fs.sb.bitmap_blocks)
    )


def check_runs(fs: Fs, runs: list[tuple[int, int]], count: int) -> set[int]:
    """Runs are disjoint, inside the data area, and hold exactly ``count`` blocks."""
    got = blocks_of(runs)
    assert sum(length for _, length in runs) == count == len(got)
    assert all(length > 0 for _, length in runs)
    assert min(got) >= fs.sb.data_start
    assert max(got) < fs.sb.block_count - 1
    return got


def check_counter(fs: Fs, tx: Transaction | None = None) -> None:
    reader = tx if tx is not None else fs.store
    assert fs.alloc.count_free(reader) == fs.sb.free_blocks


def fill(fs: Fs, keep_free: list[tuple[int, int]]) -> None:
    """Allocate every block, then free ``keep_free`` (committed)."""
    with fs.journal.begin() as tx:
        fs.alloc.alloc(tx, fs.sb.free_blocks)
    with fs.journal.begin() as tx:
        for start, length in keep_free:
            fs.alloc.free(tx, start, length)
    check_counter(fs)


# --------------------------------------------------------------------------- basics


def test_fresh_filesystem(fs: Fs) -> None:
    sb = fs.sb
    assert fs.alloc.count_free(fs.store) == sb.free_blocks == sb.block_count - sb.data_start - 1
    used = fs.alloc.used_map(fs.store)
    assert used.shape == (sb.block_count,)
    assert used[: sb.data_start].all()
    assert used[-1]
    assert not used[sb.data_start : -1].any()
    assert fs.alloc.is_allocated(fs.store, 0)
    assert not fs.alloc.is_allocated(fs.store, sb.data_start)
    with pytest.raises(Corrupted, match="outside"):
        fs.alloc.is_allocated(fs.store, sb.block_count)


def test_alloc_returns_disjoint_runs_in_the_data_area(fs: Fs) -> None:
    seen: set[int] = set()
    with fs.journal.begin() as tx:
        for count in (1, 7, 64, 65, 200, 1):
            got = check_runs(fs, fs.alloc.alloc(tx, count), count)
            assert not got & seen
            seen |= got
            check_counter(fs, tx)
        assert all(fs.alloc.is_allocated(tx, b) for b in seen)
        assert not any(fs.alloc.is_allocated(fs.store, b) for b in seen)  # not yet committed
    assert all(fs.alloc.is_allocated(fs.store, b) for b in seen)
    check_counter(fs)
    with fs.journal.begin() as tx:
        assert fs.alloc.alloc(tx, 0) == []


def test_single_run_at_goal_and_next_fit(fs: Fs) -> None:
    with fs.journal.begin() as tx:
        assert fs.alloc.alloc(tx, 100, goal=3000) == [(3000, 100)]
        assert fs.alloc.alloc_one(tx) == 3100  # the cursor follows the last allocation
        assert fs.alloc.alloc(tx, 10, goal=3050) == [(3101, 10)]  # at or after the goal
        assert fs.alloc.alloc_one(tx, goal=2999) == 2999
        # a goal outside the data area falls back to its start
        assert fs.alloc.alloc_one(tx, goal=0) == fs.sb.data_start
        assert fs.alloc.alloc_one(tx, goal=10**9) == fs.sb.data_start + 1


def test_wraps_round_to_the_start(fs: Fs) -> None:
    last = fs.sb.block_count - 1  # the backup superblock
    with fs.journal.begin() as tx:
        assert fs.alloc.alloc(tx, 10, goal=last - 10) == [(last - 10, 10)]
        assert fs.alloc.alloc(tx, 5, goal=last - 3) == [(fs.sb.data_start, 5)]
        assert fs.alloc.alloc_one(tx, goal=last - 1) == fs.sb.data_start + 5


def test_free_then_reallocate(fs: Fs) -> None:
    with fs.journal.begin() as tx:
        runs = fs.alloc.alloc(tx, 300, goal=1000)
    assert runs == [(1000, 300)]
    with fs.journal.begin() as tx:
        fs.alloc.free(tx, 1100, 50)
        check_counter(fs, tx)
    check_counter(fs)
    assert not fs.alloc.is_allocated(fs.store, 1100)
    with fs.journal.begin() as tx:
        assert fs.alloc.alloc(tx, 50, goal=1000) == [(1100, 50)]
    check_counter(fs)


def test_block_freed_in_a_transaction_is_not_reused_by_it(fs: Fs) -> None:
    with fs.journal.begin() as tx:
        fs.alloc.alloc(tx, 100, goal=2000)
    with fs.journal.begin() as tx:
        fs.alloc.free(tx, 2000, 100)
        got = blocks_of(fs.alloc.alloc(tx, 100, goal=2000))
        assert not got & set(range(2000, 2100))
        assert fs.alloc.alloc_one(tx, goal=2050) not in range(2000, 2100)
        check_counter(fs, tx)
    with fs.journal.begin() as tx:  # committed: now reusable
        assert fs.alloc.alloc(tx, 100, goal=2000) == [(2000, 100)]


def test_block_allocated_and_freed_in_one_transaction_may_be_reused(fs: Fs) -> None:
    with fs.journal.begin() as tx:
        assert fs.alloc.alloc(tx, 10, goal=500) == [(500, 10)]
        fs.alloc.free(tx, 500, 10)
        assert fs.alloc.alloc(tx, 10, goal=500) == [(500, 10)]
        check_counter(fs, tx)


def test_freed_blocks_do_not_count_as_space_in_their_transaction(fs: Fs) -> None:
    fill(fs, keep_free=[(3000, 5)])
    with fs.journal.begin() as tx:
        fs.alloc.free(tx, 4000, 20)
        assert fs.sb.free_blocks == 25
        before = bitmap_bytes(fs, tx)
        with pytest.raises(NoSpace):
            fs.alloc.alloc(tx, 6)
        assert bitmap_bytes(fs, tx) == before
        assert fs.sb.free_blocks == 25
        assert fs.alloc.alloc(tx, 5) == [(3000, 5)]


def test_nospace_leaves_the_transaction_unchanged(fs: Fs) -> None:
    with fs.journal.begin() as tx:
        fs.alloc.alloc(tx, 100)
        before, free = bitmap_bytes(fs, tx), fs.sb.free_blocks
        with pytest.raises(NoSpace) as info:
            fs.alloc.alloc(tx, free + 1)
        assert info.value.errno == errno.ENOSPC
        assert (bitmap_bytes(fs, tx), fs.sb.free_blocks) == (before, free)
        assert check_runs(fs, fs.alloc.alloc(tx, free), free)  # exactly everything fits
        assert fs.sb.free_blocks == 0
        with pytest.raises(NoSpace):
            fs.alloc.alloc_one(tx)
        check_counter(fs, tx)
    assert fs.alloc.count_free(fs.store) == 0


def test_abort_restores_bits_and_counter(fs: Fs) -> None:
    with fs.journal.begin() as tx:
        fs.alloc.alloc(tx, 500, goal=1000)
    before, free = bitmap_bytes(fs), fs.sb.free_blocks
    with pytest.raises(RuntimeError), fs.journal.begin() as tx:
        fs.alloc.alloc(tx, 77)
        fs.alloc.free(tx, 1200, 100)
        fs.alloc.alloc(tx, 3, goal=1000)
        raise RuntimeError("abandon")
    assert (bitmap_bytes(fs), fs.sb.free_blocks) == (before, free)
    check_counter(fs)


# --------------------------------------------------------------------------- corruption


def test_double_free_is_corruption_naming_the_block(fs: Fs) -> None:
    with fs.journal.begin() as tx:
        fs.alloc.alloc(tx, 100, goal=1000)
    with fs.journal.begin() as tx:
        fs.alloc.free(tx, 1000, 10)
        with pytest.raises(Corrupted, match="block 1005") as info:
            fs.alloc.free(tx, 1005, 10)  # 1005..1009 were freed just above
        assert info.value.errno == errno.EUCLEAN
        with pytest.raises(Corrupted, match="block 1100"):
            fs.alloc.free(tx, 1090, 20)  # runs past the end of what was allocated
        check_counter(fs, tx)  # the failed frees changed nothing
        assert fs.alloc.is_allocated(tx, 1090)
    with fs.journal.begin() as tx, pytest.raises(Corrupted, match="block 1000"):
        fs.alloc.free(tx, 1000, 1)  # freed by a committed transaction


def test_freeing_static_or_out_of_range_blocks_is_corruption(fs: Fs) -> None:
    sb = fs.sb
    with fs.journal.begin() as tx:
        for start, length, bad in [
            (0, 1, 0),
            (sb.bitmap_start, 1, sb.bitmap_start),
            (sb.inode_block0, 2, sb.inode_block0),
            (sb.block_count - 1, 1, sb.block_count - 1),
            (sb.block_count - 5, 10, sb.block_count - 1),
            (sb.block_count + 10, 1, sb.block_count + 10),
        ]:
            with pytest.raises(Corrupted, match=f"block {bad}:"):
                fs.alloc.free(tx, start, length)
        check_counter(fs, tx)


def test_bitmap_checksum_mismatch_is_detected() -> None:
    fs = make_fs()
    bitmap = fs.sb.bitmap_start
    fs.close()
    fs.dev.write(bitmap * BLOCK_SIZE + 100, b"\x01")  # flip a bit, crc untouched
    fs = mount(fs.dev)
    with fs.journal.begin() as tx:
        with pytest.raises(Corrupted, match="allocation bitmap block 0: checksum mismatch"):
            fs.alloc.alloc(tx, 1)
        with pytest.raises(Corrupted, match="checksum mismatch"):
            fs.alloc.free(tx, 2000, 1)
        assert fs.sb.free_blocks == fs.sb.block_count - fs.sb.data_start - 1
    for query in (fs.alloc.count_free, fs.alloc.used_map):
        with pytest.raises(Corrupted, match="checksum mismatch"):
            query(fs.store)
    with pytest.raises(Corrupted, match="checksum mismatch"):
        fs.alloc.is_allocated(fs.store, 2000)
    fs.close()


# --------------------------------------------------------------------------- several runs


def test_several_runs_take_the_longest_first(fs: Fs) -> None:
    fill(fs, keep_free=[(1000, 5), (1500, 300), (2500, 1000), (4000, 7), (5000, 2000)])
    with fs.journal.begin() as tx:
        runs = fs.alloc.alloc(tx, 2500, goal=1000)
        check_runs(fs, runs, 2500)
        assert sorted(runs) == [(2500, 500), (5000, 2000)]
        check_counter(fs, tx)


def test_several_runs_fall_back_to_short_runs(fs: Fs) -> None:
    short = [(1000 + 10 * i, 3) for i in range(40)]  # 120 blocks in runs of 3
    fill(fs, keep_free=[(6000, 200), *short])
    with fs.journal.begin() as tx:
        runs = fs.alloc.alloc(tx, 250, goal=fs.sb.data_start)
        check_runs(fs, runs, 250)
        assert (6000, 200) in runs
        assert len(runs) == 1 + 17  # 50 blocks from runs of 3: 16 whole, one in part
        check_counter(fs, tx)
        before = bitmap_bytes(fs, tx)
        with pytest.raises(NoSpace):
            fs.alloc.alloc(tx, 71)  # 70 are left
        assert bitmap_bytes(fs, tx) == before
        assert check_runs(fs, fs.alloc.alloc(tx, 70), 70)


# --------------------------------------------------------------------------- several bitmap blocks


def test_multi_block_bitmap(big: Fs) -> None:
    fs = big
    sb = fs.sb
    assert sb.bitmap_blocks == 4
    assert fs.alloc.count_free(fs.store) == sb.free_blocks == BIG - sb.data_start - 1
    with fs.journal.begin() as tx:
        # a run across the first bitmap-block boundary, found from a goal just before it
        assert fs.alloc.alloc(tx, 100, goal=BPB - 30) == [(BPB - 30, 100)]
        # a run longer than a whole bitmap block
        assert fs.alloc.alloc(tx, BPB + 10, goal=BPB + 70) == [(BPB + 70, BPB + 10)]
        # one block in the partial last bitmap block, then wrap-around at the end
        assert fs.alloc.alloc(tx, 2, goal=BIG - 3) == [(BIG - 3, 2)]
        assert fs.alloc.alloc_one(tx, goal=BIG - 2) == sb.data_start
        check_counter(fs, tx)
    check_counter(fs)
    with fs.journal.begin() as tx:
        fs.alloc.free(tx, BPB - 10, 20)  # across the boundary
        fs.alloc.free(tx, 2 * BPB - 5, 10)
        check_counter(fs, tx)
    used = fs.alloc.used_map(fs.store)
    assert not used[BPB - 10 : BPB + 10].any()
    assert used[BPB + 10 : BPB + 70].all()
    assert not used[2 * BPB - 5 : 2 * BPB + 5].any()
    assert used[BIG - 3 : BIG - 1].all()
    assert int((~used).sum()) == fs.alloc.count_free(fs.store) == sb.free_blocks


def test_multi_block_bitmap_several_runs_and_full(big: Fs) -> None:
    fs = big
    fill(fs, keep_free=[(BPB - 100, 200), (3 * BPB - 1, 2), (50_048, 128)])
    with fs.journal.begin() as tx:
        assert fs.alloc.alloc_one(tx, goal=3 * BPB) == 3 * BPB
        runs = fs.alloc.alloc(tx, 300, goal=60_000)  # two runs of 128..255 blocks
        check_runs(fs, runs, 300)
        assert runs == [(BPB - 100, 200), (50_048, 100)]
        assert fs.alloc.alloc(tx, 29) == [(50_148, 28), (3 * BPB - 1, 1)]
        assert fs.sb.free_blocks == 0
        with pytest.raises(NoSpace):
            fs.alloc.alloc_one(tx)
        check_counter(fs, tx)


def test_the_bitmap_is_scanned_only_for_runs_longer_than_a_group(
    big: Fs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request the free-extent index cannot fit with one run goes straight to the
    several-runs search: no first-fit scan of the bitmap (it could find nothing the
    index missed).  Only a request longer than a bitmap block's worth scans it."""
    fs = big
    fill(fs, keep_free=[(1000 + 300 * i, 200) for i in range(10)])
    scans: list[int] = []
    first_fit = fs.alloc._first_fit

    def counting(tx: Transaction, lo: int, hi: int, count: int) -> int | None:
        scans.append(count)
        return first_fit(tx, lo, hi, count)

    monkeypatch.setattr(fs.alloc, "_first_fit", counting)
    with fs.journal.begin() as tx:
        assert fs.alloc.alloc(tx, 150, goal=2000) == [(2200, 150)]  # the index's first fit
        runs = fs.alloc.alloc(tx, 350, goal=1000)  # no run holds 350: several runs
        check_runs(fs, runs, 350)
        assert len(runs) > 1
        assert scans == []
    with fs.journal.begin() as tx:
        fs.alloc.free(tx, BPB + 500, BPB + 100)
    with fs.journal.begin() as tx:
        runs = fs.alloc.alloc(tx, BPB + 10, goal=fs.sb.data_start)  # longer than a group
        assert runs == [(BPB + 500, BPB + 10)]
        assert scans == [BPB + 10]
        check_counter(fs, tx)


@pytest.mark.parametrize(
    ("before", "after"),
    [(3, 2), (1, 4), (60, 70), (64, 64), (130, 1)],
)
def test_first_fit_joins_runs_across_bitmap_blocks(before: int, after: int) -> None:
    """A run cut by a bitmap-block edge is found whole, ahead of a later fit."""
    busy = np.ones(BIG, dtype=np.bool_)
    busy[BPB - before : BPB + after] = False
    busy[50_000 : 50_000 + before + after] = False  # a later fit of the same size
    fs = make_big_fs(busy)
    with fs.journal.begin() as tx:
        assert fs.alloc.alloc(tx, before + after) == [(BPB - before, before + after)]
    fs.close()


def first_fit(free: npt.NDArray[np.bool_], lo: int, hi: int, count: int) -> int | None:
    """The reference: lowest b in [lo, hi - count] with free[b : b + count] all True."""
    if hi - lo < count:
        return None
    window = np.concatenate(([0], np.cumsum(free[lo:hi], dtype=np.int64)))
    hits = np.flatnonzero(window[count:] - window[:-count] == count)
    return lo + int(hits[0]) if len(hits) else None


@st.composite
def bitmaps(draw: st.DrawFn) -> npt.NDArray[np.bool_]:
    """Busy blocks of the big filesystem: alternating runs, short and long, anywhere."""
    busy = np.full(BIG, draw(st.booleans()), dtype=np.bool_)
    lengths = st.one_of(st.integers(1, 8), st.integers(50, 140), st.integers(1000, 40_000))
    pos = draw(st.sampled_from([0, BPB - 200, 2 * BPB - 100, BIG - 30_000]))
    value = draw(st.booleans())
    while pos < BIG:
        n = draw(lengths)
        busy[pos : pos + n] = value
        value = not value
        pos += n
        if draw(st.integers(0, 9)) == 0:
            busy[pos:] = draw(st.booleans())
            break
    if draw(st.booleans()):  # a random sprinkle over one bitmap-block boundary
        k = draw(st.integers(1, 3)) * BPB
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        busy[k - 300 : k + 300] = rng.random(600) < draw(st.floats(0.1, 0.9))
    return busy


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    busy=bitmaps(),
    count=st.one_of(st.integers(1, 70), st.integers(60, 300), st.integers(1000, 40_000)),
    goal=st.one_of(st.none(), st.integers(0, BIG)),
)
def test_alloc_agrees_with_a_reference_first_fit(
    busy: npt.NDArray[np.bool_], count: int, goal: int | None
) -> None:
    fs = make_big_fs(busy)
    try:
        lo, hi = fs.sb.data_start, BIG - 1
        free = ~fs.alloc.used_map(fs.store)
        assert int(free.sum()) == fs.sb.free_blocks
        start = goal if goal is not None and lo <= goal < hi else lo
        expected = first_fit(free, start, hi, count)
        if expected is None:
            expected = first_fit(free, lo, min(hi, start + count - 1), count)
        with fs.journal.begin() as tx:
            if count > fs.sb.free_blocks:
                with pytest.raises(NoSpace):
                    fs.alloc.alloc(tx, count, goal)
                return
            runs = fs.alloc.alloc(tx, count, goal)
            got = check_runs(fs, runs, count)
            assert free[sorted(got)].all()
            if expected is not None:
                assert runs == [(expected, count)]
            else:
                assert len(runs) > 1
            check_counter(fs, tx)
    finally:
        fs.close()


# --------------------------------------------------------------------------- model check


class AllocatorMachine(RuleBasedStateMachine):
    """Allocations and frees, one transaction each, against a model of the blocks in use."""

    fs: Fs

    @initialize()
    def start(self) -> None:
        self.fs = make_big_fs()
        self.lo, self.hi = self.fs.sb.data_start, BIG - 1  # the data area
        self.held: list[tuple[int, int]] = []  # runs allocated and not yet freed
        self.model = np.zeros(BIG, dtype=np.bool_)  # blocks of the data area in use

    def teardown(self) -> None:
        if hasattr(self, "fs"):
            self.fs.close()

    def _alloc(self, tx: Transaction, count: int, goal: int | None) -> list[tuple[int, int]]:
        """Allocate in ``tx`` and check the result against the model (not updated)."""
        available = self.hi - self.lo - int(self.model.sum())
        if count > available:
            before = bitmap_bytes(self.fs, tx), self.fs.sb.free_blocks
            with pytest.raises(NoSpace):
                self.fs.alloc.alloc(tx, count, goal)
            assert (bitmap_bytes(self.fs, tx), self.fs.sb.free_blocks) == before
            return []
        runs = self.fs.alloc.alloc(tx, count, goal)
        got = check_runs(self.fs, runs, count)
        assert not self.model[sorted(got)].any()
        fits_at_goal = (
            goal is not None
            and self.lo <= goal
            and goal + count <= self.hi
            and not self.model[goal : goal + count].any()
        )
        if fits_at_goal:
            assert runs == [(goal, count)]  # the goal itself when it fits
        return runs

    def _take(self, runs: list[tuple[int, int]]) -> None:
        self.held += runs
        for start, length in runs:
            self.model[start : start + length] = True

    goals = st.one_of(
        st.none(),
        st.integers(0, BIG + 10),
        st.sampled_from([BPB, 2 * BPB, 3 * BPB, BIG - 2]).flatmap(
            lambda g: st.integers(g - 70, g + 70)
        ),
    )
    counts = st.one_of(st.integers(1, 70), st.integers(1, 300), st.sampled_from([BPB, 60_000]))

    @rule(count=counts, goal=goals)
    def alloc(self, count: int, goal: int | None) -> None:
        with self.fs.journal.begin() as tx:
            runs = self._alloc(tx, count, goal)
        self._take(runs)

    @rule(spare=st.integers(0, 400), goal=goals)
    def fill_up(self, spare: int, goal: int | None) -> None:
        count = self.hi - self.lo - int(self.model.sum()) - spare
        if count > 0:
            with self.fs.journal.begin() as tx:
                runs = self._alloc(tx, count, goal)
            self._take(runs)

    @precondition(lambda self: self.held)
    @rule(data=st.data(), hole=st.integers(1, 70), gap=st.integers(1, 5))
    def punch_holes(self, data: st.DataObject, hole: int, gap: int) -> None:
        """Free every other piece of a run: many short free runs."""
        start, length = self.held.pop(data.draw(st.integers(0, len(self.held) - 1)))
        with self.fs.journal.begin() as tx:
            for at in range(start, start + min(length, 40 * (hole + gap)), hole + gap):
                n = min(hole, start + length - at)
                self.fs.alloc.free(tx, at, n)
                self.model[at : at + n] = False
                if at + n < start + length:
                    self.held.append((at + n, min(gap, start + length - at - n)))
            end = start + min(length, 40 * (hole + gap))
            if end < start + length:
                self.held.append((end, start + length - end))

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def free(self, data: st.DataObject) -> None:
        start, length = self.held.pop(data.draw(st.integers(0, len(self.held) - 1)))
        head = data.draw(st.integers(1, length))  # free a head part, keep the rest
        with self.fs.journal.begin() as tx:
            self.fs.alloc.free(tx, start, head)
        if head < length:
            self.held.append((start + head, length - head))
        self.model[start : start + head] = False

    @precondition(lambda self: self.held)
    @rule(data=st.data(), count=st.integers(1, 200))
    def free_then_alloc_in_one_transaction(self, data: st.DataObject, count: int) -> None:
        start, length = self.held.pop(data.draw(st.integers(0, len(self.held) - 1)))
        with self.fs.journal.begin() as tx:
            self.fs.alloc.free(tx, start, length)
            # the freed run stays in use in the model: this transaction cannot reuse it
            runs = self._alloc(tx, count, start)
        self.model[start : start + length] = False
        self._take(runs)

    @rule(count=counts, goal=goals)
    def alloc_and_free_then_abort(self, count: int, goal: int | None) -> None:
        before = bitmap_bytes(self.fs), self.fs.sb.free_blocks
        with pytest.raises(RuntimeError), self.fs.journal.begin() as tx:
            self._alloc(tx, count, goal)
            if self.held:
                self.fs.alloc.free(tx, *self.held[0])
            raise RuntimeError("abort")
        assert (bitmap_bytes(self.fs), self.fs.sb.free_blocks) == before

    @precondition(lambda self: self.held)
    @rule(data=st.data(), counts=st.lists(st.integers(1, 300), min_size=1, max_size=4))
    def several_allocs_and_frees_in_one_transaction(
        self, data: st.DataObject, counts: list[int]
    ) -> None:
        """Allocations, a free of part of one of them and of a committed run, in one
        transaction: what it allocated and freed again it may reuse, not what it freed."""
        start, length = self.held.pop(data.draw(st.integers(0, len(self.held) - 1)))
        mine: list[tuple[int, int]] = []
        with self.fs.journal.begin() as tx:
            self.fs.alloc.free(tx, start, length)  # stays in use in the model until commit
            for count in counts:
                if count > self.fs.alloc.available(tx):
                    continue
                runs = self.fs.alloc.alloc(tx, count, data.draw(self.goals))
                got = check_runs(self.fs, runs, count)
                assert not self.model[sorted(got)].any()
                assert not got & set(range(start, start + length)), "reused a run it freed"
                self._take(runs)
                mine += runs
                if data.draw(st.booleans()):  # give back the head of one of them
                    s, n = mine.pop(data.draw(st.integers(0, len(mine) - 1)))
                    head = data.draw(st.integers(1, n))
                    self.fs.alloc.free(tx, s, head)
                    self.model[s : s + head] = False
                    self.held.remove((s, n))
                    if head < n:
                        self.held.append((s + head, n - head))
                        mine.append((s + head, n - head))
        self.model[start : start + length] = False

    @rule(counts=st.lists(counts, min_size=1, max_size=3), goal=goals)
    def allocs_then_abort(self, counts: list[int], goal: int | None) -> None:
        """An abort after several allocations leaves bitmap, counter and index as they were."""
        before = bitmap_bytes(self.fs), self.fs.sb.free_blocks
        with pytest.raises(RuntimeError), self.fs.journal.begin() as tx:
            seen: set[int] = set()
            for count in counts:
                runs = self.fs.alloc.alloc(tx, count, goal) if count <= self._left(seen) else []
                got = blocks_of(runs)
                assert not got & seen
                assert not self.model[sorted(got)].any()
                seen |= got
            raise RuntimeError("abort")
        assert (bitmap_bytes(self.fs), self.fs.sb.free_blocks) == before

    def _left(self, seen: set[int]) -> int:
        return self.hi - self.lo - int(self.model.sum()) - len(seen)

    @invariant()
    def index_matches_bitmap(self) -> None:
        self.fs.alloc.check_index()

    @invariant()
    def counter_matches_bitmap(self) -> None:
        fs = self.fs
        assert fs.sb.free_blocks == fs.alloc.count_free(fs.store)

    @invariant()
    def bitmap_matches_model(self) -> None:
        used = self.fs.alloc.used_map(self.fs.store)
        assert used[: self.lo].all()
        assert used[self.hi :].all()
        assert (used[self.lo : self.hi] == self.model[self.lo : self.hi]).all()


TestAllocatorMachine = AllocatorMachine.TestCase
TestAllocatorMachine.settings = settings(
    max_examples=100,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def test_a_search_that_follows_a_run_into_a_group_that_drops_its_own() -> None:
    """An index that holds one group: following a run across a group edge builds the
    next group and drops the one searched, which must stay unbuilt (longest -1)."""
    busy = np.ones(BIG, dtype=np.bool_)
    busy[BPB - 40 : BPB + 30] = False  # 70 free blocks across the first group edge
    busy[2 * BPB : 2 * BPB + 400 : 2] = False  # and 200 single free blocks
    fs = make_big_fs(busy)
    try:
        fs.alloc.index.max_runs = 1
        with fs.journal.begin() as tx:
            runs = fs.alloc.alloc(tx, 100, goal=fs.sb.data_start)
        assert (BPB - 40, 70) in runs  # no single run fits: the longest first
        assert sum(n for _, n in runs) == 100
        fs.alloc.check_index()
    finally:
        fs.close()


class SmallIndexMachine(AllocatorMachine):
    """The same, with an index that holds few runs: groups are dropped and rebuilt."""

    @initialize()
    def start(self) -> None:
        super().start()
        self.fs.alloc.index.max_runs = 8


TestSmallIndexMachine = SmallIndexMachine.TestCase
TestSmallIndexMachine.settings = settings(
    max_examples=50,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# --------------------------------------------------------------------------- crash safety


def _state(fs: Fs) -> tuple[bytes, int]:
    return bitmap_bytes(fs), fs.sb.free_blocks


def _crash_setup() -> Fs:
    fs = make_fs(2048)
    with fs.journal.begin() as tx:  # an earlier committed state to fall back to
        for start, length in [(200, 30), (300, 3), (1000, 500)]:
            assert fs.alloc.alloc(tx, length, goal=start) == [(start, length)]
    return fs


def _crash_transaction(fs: Fs) -> None:
    with fs.journal.begin() as tx:
        fs.alloc.alloc(tx, 40, goal=190)  # 190..199, then the 30 after 229
        fs.alloc.free(tx, 1000, 500)
        fs.alloc.alloc(tx, 600, goal=1700)  # wraps round: 1700..2046 is too short
        fs.alloc.alloc_one(tx, goal=300)


def test_crash_at_every_fence_of_an_alloc_transaction() -> None:
    """Every crash state of an alloc + free transaction is all-before or all-after."""
    fs = _crash_setup()
    before = _state(fs)
    _crash_transaction(fs)
    after = _state(fs)
    assert after != before
    assert after[1] == before[1] + 500 - 40 - 600 - 1
    fs.close()
    fence = 0
    while True:
        fence += 1
        fs = _crash_setup()
        fs.dev.schedule_power_failure(fence=fence)
        try:
            _crash_transaction(fs)
            completed = True
        except PowerFailure:
            completed = False
        fs.close()
        seen = set()
        for state in fs.dev.crash_states(limit=24, seed=fence):
            crashed = mount(state)
            check_counter(crashed)  # also checks every bitmap block's crc
            seen.add(_state(crashed))
            crashed.close()
        assert seen <= {before, after}, fence
        if completed:
            assert seen == {after}
            assert fence >= 3  # commit point, apply, and the lazy applied_seq
            return


# --------------------------------------------------------------------------- the reserve


def test_reserve_size_follows_the_filesystem() -> None:
    from daxfs.fs.alloc import reserve_blocks

    assert reserve_blocks(4096) == 32  # 16 MiB: the floor
    assert reserve_blocks(1 << 18) == 256  # 1 GiB: 1/1024
    assert reserve_blocks(1 << 30) == 1024  # 4 TiB: the ceiling


def test_ordinary_allocations_leave_the_reserve(fs: Fs) -> None:
    fill(fs, keep_free=[(3000, 20)])
    fs.alloc.reserved = 8
    with fs.journal.begin() as tx:
        with pytest.raises(NoSpace, match="8 reserved") as info:
            fs.alloc.alloc(tx, 13)
        assert info.value.errno == errno.ENOSPC
        assert fs.alloc.available(tx) == 12
        assert fs.alloc.alloc(tx, 12) == [(3000, 12)]
        with pytest.raises(NoSpace):
            fs.alloc.alloc_one(tx)
        fs.alloc.use_reserve(tx)  # an operation that frees space
        assert fs.alloc.available(tx) == 8
        assert fs.alloc.alloc(tx, 8) == [(3012, 8)]
        check_counter(fs, tx)
    with fs.journal.begin() as tx:  # the permission ends with its transaction
        assert fs.alloc.available(tx) == 0


def test_blocks_a_transaction_freed_never_open_the_reserve_to_it(fs: Fs) -> None:
    """The counter counts blocks freed in T, which T cannot reuse: the check must not."""
    fill(fs, keep_free=[(3000, 8)])
    fs.alloc.reserved = 8  # only the reserve is free
    with fs.journal.begin() as tx:
        fs.alloc.free(tx, 4000, 20)
        assert fs.sb.free_blocks == 28
        assert fs.alloc.available(tx) == 0
        with pytest.raises(NoSpace):
            fs.alloc.alloc_one(tx)  # would take a reserved block
    with fs.journal.begin() as tx:  # committed: the freed blocks are ordinary free space
        assert fs.alloc.available(tx) == 20


def test_a_commit_the_index_disagrees_with_drops_the_index_not_the_commit() -> None:
    """The index is a cache: a committed change it does not hold as it should (a bug)
    drops it, counted for check_index; the durable transaction still succeeds."""
    busy = np.ones(BIG, dtype=np.bool_)
    busy[BPB + 100 : BPB + 200] = False
    fs = make_big_fs(busy)
    try:
        with fs.journal.begin() as tx:
            assert fs.alloc.alloc(tx, 10, goal=BPB + 100) == [(BPB + 100, 10)]
        index = fs.alloc.index
        assert index.add(BPB + 100, BPB + 110)  # a planted bug: the index calls them free
        with fs.journal.begin() as tx:  # no exception: the commit is durable
            fs.alloc.free(tx, BPB + 100, 10)
        assert index.disagreements == 1
        with pytest.raises(AssertionError, match="disagreed"):
            fs.alloc.check_index()
        index.disagreements = 0
        fs.alloc.check_index()  # dropped, so equal to the bitmap again
        with fs.journal.begin() as tx:
            assert fs.alloc.alloc(tx, 100, goal=BPB + 100) == [(BPB + 100, 100)]
    finally:
        fs.close()


# ------------------------------------------------------------------ flip_bits (C) vs _flip


@settings(max_examples=400, deadline=None)
@given(
    seed=st.binary(min_size=BITMAP_BYTES // 64, max_size=BITMAP_BYTES // 64),
    fill=st.sampled_from([0x00, 0xFF, None]),
    i=st.integers(0, BITMAP_BYTES * 8 - 1),
    n=st.integers(1, 2048),
    used=st.booleans(),
)
def test_flip_bits_in_c_is_the_reference(
    seed: bytes, fill: int | None, i: int, n: int, used: bool
) -> None:
    """``_create.flip_bits`` (what ``move`` calls) returns what ``alloc._flip`` returns
    and leaves the block it leaves: every bit flipped, or the first bit already so and
    nothing changed."""
    from daxfs.fs import _create, alloc

    j = min(i + n, BITMAP_BYTES * 8)
    raw = bytes([fill]) * BITMAP_BYTES if fill is not None else (seed * 65)[:BITMAP_BYTES]
    ref, nat = bytearray(raw), bytearray(raw)
    want = alloc._flip(memoryview(ref), i, j, used)
    assert _create.flip_bits(nat, i, j, used) == want
    assert nat == ref
    if want is None:
        assert nat != bytearray(raw)
    else:
        assert i <= want < j
        assert nat == bytearray(raw)


def test_flip_bits_refuses_a_range_outside_the_block() -> None:
    from daxfs.errors import InvalidArgument
    from daxfs.fs import _create

    block = bytearray(16)
    for i, j in ((-1, 4), (4, 4), (5, 4), (0, 129)):
        with pytest.raises(InvalidArgument, match="not a range of a 16-byte block"):
            _create.flip_bits(block, i, j, True)
    with pytest.raises(BufferError):
        _create.flip_bits(bytes(16), 0, 8, True)  # not writable
    assert block == bytearray(16)
