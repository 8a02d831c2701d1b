"""The copy-on-write fast path of large aligned overwrites (DataPath._cow_blocks, issue 9).

An overwrite of whole blocks inside one written extent, larger than
``log_data_max``, is one ``Allocator.move`` (the new run allocated, the old
run freed: the superblock's counters do not change), one copy and one map
change.  Each test checks that the fast path was (or was not) taken, and
that it leaves exactly what the general path (``write_in``) leaves: the same
bytes, extents, bitmap and counters, then fsck clean and a remount.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

import daxfs
from daxfs.errors import Corrupted, NoSpace
from daxfs.fs.alloc import BPB, Allocator
from daxfs.fs.data import FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, DataPath
from daxfs.fs.extmap import Extent
from daxfs.fs.fsck import fsck
from daxfs.fs.layout import MAP_BTREE
from daxfs.fs.super import SuperState
from daxfs.testing import SimulatedPmem
from tests import helpers

BLOCK = 4096
PIECE = 128 * BLOCK  # 512 KiB: past log_data_max (256 KiB), so copy-on-write
PUNCH = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE


@pytest.fixture
def dev() -> Iterator[SimulatedPmem]:
    yield from helpers.fresh_device(24 << 20)


class Moves:
    """Counts Allocator.move calls and what they returned; and superblock dirtying."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.results: list[int | None] = []
        self.super_dirtied = 0
        move = Allocator.move
        dirty = SuperState.dirty

        def counting_move(alloc: Allocator, *args: object, **kwargs: object) -> int | None:
            got = move(alloc, *args, **kwargs)  # type: ignore[arg-type]
            self.results.append(got)
            return got

        def counting_dirty(sup: SuperState, tx: object) -> object:
            self.super_dirtied += 1
            return dirty(sup, tx)  # type: ignore[arg-type]

        monkeypatch.setattr(Allocator, "move", counting_move)
        monkeypatch.setattr(SuperState, "dirty", counting_dirty)

    def reset(self) -> None:
        self.results.clear()
        self.super_dirtied = 0


def pattern(n: int, salt: int) -> bytes:
    return bytes((i * 7 + salt) & 0xFF for i in range(256)) * (n // 256)


State = tuple[bytes, list[Extent], object, int, int]


def state(fs: daxfs.FileSystem, path: str) -> State:
    """What both paths must leave: the file's bytes and extents, the bitmap, counters."""
    with fs.open(path, "rb") as f:
        data = f.read()
    inode = fs.itable.get(fs.stat(path).st_ino)
    extents = list(fs.maps.extents(fs.store, inode))
    used = fs.alloc.used_map(fs.store).tobytes()
    return data, extents, used, fs.sup.sb.free_blocks, inode.rec.blocks


def run(
    dev: SimulatedPmem, setup: Callable[[daxfs.FileSystem], None], off: int, data: bytes
) -> State:
    """Mount ``dev``, run ``setup``, overwrite ``data`` at ``off`` in /f; the state after."""
    fs = daxfs.mount(dev)
    try:
        setup(fs)
        with fs.open("/f", "rb+", buffering=0) as f:
            assert f.pwrite(data, off) == len(data)
        fs.alloc.check_index()
        return state(fs, "/f")
    finally:
        fs.unmount()


def contiguous(blocks: int) -> Callable[[daxfs.FileSystem], None]:
    def setup(fs: daxfs.FileSystem) -> None:
        with fs.open("/f", "wb", buffering=0) as f:
            f.write(pattern(blocks * BLOCK, 1))

    return setup


def tree_mapped(fs: daxfs.FileSystem) -> None:
    """/f: 512 blocks whose map is a B+tree (seven extents)."""
    contiguous(512)(fs)
    with fs.open("/f", "rb+", buffering=0) as f:
        for block in (1, 3, 5, 7, 9, 11):
            f.fallocate(block * BLOCK, BLOCK, PUNCH)
    inode = fs.itable.get(fs.stat("/f").st_ino)
    assert inode.rec.map_kind == MAP_BTREE


CASES = {
    "aligned piece inside an extent": (contiguous(512), 128 * BLOCK, PIECE),
    "the head of an extent": (contiguous(512), 0, PIECE),
    "the tail of an extent, growing nothing": (contiguous(512), 384 * BLOCK, PIECE),
    "a whole extent": (contiguous(128), 0, PIECE),
    "inside an extent of a B+tree map": (tree_mapped, 200 * BLOCK, PIECE),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_fast_path_leaves_what_the_general_path_leaves(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    setup, off, n = CASES[name]
    data = pattern(n, 99)
    got: dict[bool, State] = {}
    for fast in (True, False):
        dev = SimulatedPmem(24 << 20)
        daxfs.mkfs(dev)
        with monkeypatch.context() as m:
            moves = Moves(m)
            if not fast:
                m.setattr(DataPath, "_cow_blocks", lambda *args: False)
            got[fast] = run(dev, setup, off, data)
            # setup fills holes (no move): the overwrite's is the only call
            if fast:
                assert len(moves.results) == 1
                assert moves.results[0] is not None
            else:
                assert moves.results == []
        report = fsck(dev)
        assert report.clean, str(report)
        with daxfs.mount(dev) as again, again.open("/f", "rb") as f:
            assert f.read() == got[fast][0]
        dev.close()
    assert got[True] == got[False]
    assert got[True][0][off : off + n] == data


def test_fast_path_does_not_dirty_the_superblock(
    dev: SimulatedPmem, monkeypatch: pytest.MonkeyPatch
) -> None:
    fs = daxfs.mount(dev)
    contiguous(512)(fs)
    free, blocks = fs.sup.sb.free_blocks, fs.itable.get(fs.stat("/f").st_ino).rec.blocks
    moves = Moves(monkeypatch)
    with fs.open("/f", "rb+", buffering=0) as f:
        for i in range(4):  # a sequential pass of pieces
            f.pwrite(pattern(PIECE, i), i * PIECE)
    assert len(moves.results) == 4
    assert None not in moves.results
    assert moves.super_dirtied == 0
    assert fs.sup.sb.free_blocks == free == fs.alloc.count_free(fs.store)
    assert fs.itable.get(fs.stat("/f").st_ino).rec.blocks == blocks
    fs.alloc.check_index()
    fs.unmount()
    assert fsck(dev).clean


@pytest.mark.parametrize(
    ("off", "n", "why"),
    [
        (128 * BLOCK + 1, PIECE, "unaligned offset"),
        (128 * BLOCK, PIECE - 1, "unaligned length"),
        (448 * BLOCK, PIECE, "past the extent"),
        (128 * BLOCK, 32 * BLOCK, "small: journaled, not copied"),
    ],
)
def test_cases_outside_the_fast_path(
    dev: SimulatedPmem, monkeypatch: pytest.MonkeyPatch, off: int, n: int, why: str
) -> None:
    fs = daxfs.mount(dev)
    contiguous(512)(fs)
    moves = Moves(monkeypatch)
    data = pattern(n + 255, 5)[:n]
    with fs.open("/f", "rb+", buffering=0) as f:
        assert f.pwrite(data, off) == n
    assert moves.results == [], why
    with fs.open("/f", "rb") as f:
        assert f.read()[off : off + n] == data
    fs.unmount()
    assert fsck(dev).clean


def test_no_single_free_run_falls_back_to_several(
    dev: SimulatedPmem, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No free run holds the piece: move changes nothing, write_in takes several runs."""
    fs = daxfs.mount(dev)
    contiguous(128)(fs)
    free = fs.alloc.unreserved()
    with fs.open("/g", "wb", buffering=0) as g:  # fill, then free every other 64 blocks
        g.write(bytes(free * BLOCK))
        assert fs.alloc.unreserved() == 0
        for block in range(0, free - 64, 128):
            g.fallocate(block * BLOCK, 64 * BLOCK, PUNCH)
    moves = Moves(monkeypatch)
    data = pattern(PIECE, 3)
    with fs.open("/f", "rb+", buffering=0) as f:
        assert f.pwrite(data, 0) == PIECE
    assert moves.results == [None]
    inode = fs.itable.get(fs.stat("/f").st_ino)
    assert len(list(fs.maps.extents(fs.store, inode))) > 1
    with fs.open("/f", "rb") as f:
        assert f.read(PIECE) == data
    fs.alloc.check_index()
    fs.unmount()
    assert fsck(dev).clean


# ------------------------------------------------------------------ Allocator.move


def test_move_is_alloc_then_free_without_the_counter(dev: SimulatedPmem) -> None:
    fs = daxfs.mount(dev)
    alloc = fs.alloc
    with fs.journal.begin() as tx:
        ((old, count),) = alloc.alloc(tx, 100)
    free = fs.sup.sb.free_blocks
    with fs.journal.begin() as tx:
        new = alloc.move(tx, old, count, goal=old)
        assert new is not None
        assert not (old < new + count and new < old + count)
        assert alloc.is_allocated(tx, new)
        assert not alloc.is_allocated(tx, old)
        assert alloc.count_free(tx) == fs.sup.sb.free_blocks == free
        with pytest.raises(Corrupted, match="already free"):  # the old run again
            alloc.move(tx, old, count)
        assert alloc.count_free(tx) == fs.sup.sb.free_blocks == free  # nothing changed
        again = alloc.alloc(tx, count, goal=old)  # the blocks freed in tx are not reused
        assert not any(s < old + count and old < s + n for s, n in again)
    assert alloc.count_free(fs.store) == fs.sup.sb.free_blocks == free - count
    assert alloc.is_allocated(fs.store, new)
    assert not alloc.is_allocated(fs.store, old)
    alloc.check_index()
    with fs.journal.begin() as tx:
        big, length = max(alloc.alloc(tx, alloc.unreserved() - 50), key=lambda r: r[1])
    assert length >= 100
    free = fs.sup.sb.free_blocks
    with pytest.raises(NoSpace), fs.journal.begin() as tx:
        alloc.move(tx, big, 100)  # 50 available
    assert alloc.count_free(fs.store) == fs.sup.sb.free_blocks == free
    assert alloc.is_allocated(fs.store, big)
    assert alloc.is_allocated(fs.store, big + 99)
    alloc.check_index()
    fs.unmount()  # (fsck would call the raw allocations leaks: no file owns them)


def test_goal_from_the_cached_extent_is_the_goal_from_the_map(dev: SimulatedPmem) -> None:
    """DataPath._goal answers from inode.xcache when it holds the block before ``lblk``
    or ``lblk`` itself (a write's case: xcache is the extent under the write): the same
    block as the map lookup of the extent before (xcache empty) gives."""
    fs = daxfs.mount(dev)
    tree_mapped(fs)  # seven extents, holes between the first six
    inode = fs.itable.get(fs.stat("/f").st_ino)
    extents = list(fs.maps.extents(fs.store, inode))
    checked = 0
    for lblk in range(520):
        inode.xcache = None
        want = fs.data._goal(fs.store, inode, lblk)
        for ext in extents:
            if ext.lblk <= lblk - 1 < ext.end or ext.lblk <= lblk < ext.end:
                inode.xcache = ext
                assert fs.data._goal(fs.store, inode, lblk) == want, (lblk, ext)
                checked += 1
    assert checked >= 512
    fs.unmount()


def test_move_starts_the_copy_before_it_checks_the_old_run(dev: SimulatedPmem) -> None:
    """``found`` runs once the new run is marked, before the old run is checked: when
    that check fails, the new run is unmarked again and nothing has changed."""
    fs = daxfs.mount(dev)
    alloc = fs.alloc
    with fs.journal.begin() as tx:
        ((old, count),) = alloc.alloc(tx, 100)
    with fs.journal.begin() as tx:
        alloc.free(tx, old + 40, 10)  # a hole in the middle of the old run
        free = alloc.count_free(tx)
        started: list[tuple[int, bool]] = []
        with pytest.raises(Corrupted, match=f"freeing block {old + 40}, which is already free"):
            alloc.move(
                tx, old, count, found=lambda b: started.append((b, alloc.is_allocated(tx, b)))
            )
        assert len(started) == 1
        new, marked = started[0]
        assert marked  # the run was taken when the copy would start
        assert not alloc.is_allocated(tx, new)  # and given back
        assert alloc.count_free(tx) == free
        assert alloc.is_allocated(tx, old)  # unchanged
        assert alloc.is_allocated(tx, old + 39)
        assert alloc.is_allocated(tx, old + 50)
        tx.abort()
    alloc.check_index()
    fs.unmount()


def test_the_index_learns_a_copy_on_write_before_the_commit(
    dev: SimulatedPmem, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DataPath._cow_blocks settles the allocator's runs into the free-extent index
    before the commit (Allocator.settle): after the commit the index holds the old run
    free and the new one taken, without a rebuild; an abort after the settle drops
    the index instead, and it is rebuilt right from the committed bitmap."""
    fs = daxfs.mount(dev)
    contiguous(512)(fs)
    inode = fs.itable.get(fs.stat("/f").st_ino)
    settled: list[bool] = []
    settle = Allocator.settle

    def watched(alloc: Allocator, tx: object) -> None:
        settle(alloc, tx)  # type: ignore[arg-type]
        settled.append(tx is fs.journal.current())

    monkeypatch.setattr(Allocator, "settle", watched)
    with fs.open("/f", "rb+", buffering=0) as f:
        f.pwrite(pattern(PIECE, 1), 0)
    assert settled == [True]
    index = fs.alloc.index
    built = index.built
    assert built  # kept, not dropped
    (old,) = [e for e in fs.maps.extents(fs.store, inode) if e.lblk == 0]
    fs.alloc.check_index()
    assert index.disagreements == 0
    # an abort after the settle (the commit fails before its commit point)
    seq = fs.journal.seq

    def failing_commit(*args: object) -> bool:
        raise OSError(5, "planted failure before the commit point")

    committer = fs.journal.committer
    assert committer is not None
    with monkeypatch.context() as m:
        m.setattr(fs.journal, "committer", None)
        m.setattr(fs.store, "drain", failing_commit)
        with fs.open("/f", "rb+", buffering=0) as f, pytest.raises(OSError, match="planted"):
            f.pwrite(pattern(PIECE, 2), 0)
    assert fs.journal.seq == seq
    assert len(settled) == 2
    assert index.built == []  # dropped by the abort
    fs.alloc.check_index()
    with fs.open("/f", "rb+", buffering=0) as f:
        assert f.read(PIECE) == pattern(PIECE, 1)
        f.pwrite(pattern(PIECE, 3), 0)  # the index is rebuilt from the bitmap
    assert [e for e in fs.maps.extents(fs.store, inode) if e.lblk == 0] != [old]
    fs.alloc.check_index()
    fs.unmount()
    assert fsck(dev).clean


def test_no_allocation_after_settle(dev: SimulatedPmem) -> None:
    fs = daxfs.mount(dev)
    alloc = fs.alloc
    with fs.journal.begin() as tx:
        alloc.alloc(tx, 10)
        alloc.settle(tx)
        with pytest.raises(AssertionError, match="after settle"):
            alloc.alloc(tx, 10)
        tx.abort()
    alloc.check_index()
    fs.unmount()


def test_a_move_failing_in_its_second_bitmap_block_changes_nothing() -> None:
    """The old run crosses a bitmap block edge: a bit already free, or a checksum
    failure, in the second block puts back what move changed in the first (its part of
    the old run, and the new run) before Corrupted is raised."""
    gen = helpers.fresh_device(140 << 20)  # two bitmap blocks' worth of data area
    dev = next(gen)
    try:
        fs = daxfs.mount(dev)
        alloc = fs.alloc
        edge = BPB  # the first block of the second bitmap block
        bm0 = fs.sup.sb.bitmap_start
        with fs.journal.begin() as tx:
            assert alloc.alloc(tx, 100, goal=edge - 50) == [(edge - 50, 100)]
        lo = fs.sup.sb.data_start
        with fs.journal.begin() as tx:
            alloc.free(tx, edge + 10, 5)
            before = [bytes(tx.read(bm0 + k)) for k in (0, 1)]
            with pytest.raises(Corrupted, match=f"freeing block {edge + 10}, which is already"):
                alloc.move(tx, edge - 50, 100, goal=lo)
            assert [bytes(tx.read(bm0 + k)) for k in (0, 1)] == before
            tx.abort()
        # the second bitmap block's checksum fails (not verified yet in this mount)
        flipped = fs.store.block(bm0 + 1)[100] ^ 0x80  # a bit far from the run
        dev.write((bm0 + 1) * BLOCK + 100, bytes([flipped]))
        alloc._verified.discard(1)
        with fs.journal.begin() as tx:
            before = [bytes(tx.read(bm0 + k)) for k in (0, 1)]
            with pytest.raises(Corrupted, match="checksum"):
                alloc.move(tx, edge - 50, 100, goal=lo)
            assert [bytes(tx.read(bm0 + k)) for k in (0, 1)] == before
            tx.abort()
        fs.unmount()
    finally:
        gen.close()


def test_xcache_after_a_copy_on_write_is_the_next_extent_of_the_map(
    dev: SimulatedPmem, monkeypatch: pytest.MonkeyPatch
) -> None:
    """_cow_blocks leaves in inode.xcache the map's extent after the blocks it wrote
    (a sequential writer's next piece), as a lookup finds it after the commit; after
    the last piece, or an abort, none."""
    fs = daxfs.mount(dev)
    contiguous(512)(fs)
    inode = fs.itable.get(fs.stat("/f").st_ino)
    moves = Moves(monkeypatch)
    with fs.open("/f", "rb+", buffering=0) as f:
        for i in range(4):
            f.pwrite(pattern(PIECE, i), i * PIECE)
            assert moves.results[-1] is not None  # the fast path
            want, _ = fs.maps.lookup(fs.store, inode, (i + 1) * (PIECE // BLOCK))
            assert inode.xcache == want
            assert (want is None) == (i == 3), i  # the file has four pieces
        f.pwrite(pattern(PIECE, 9), PIECE)  # not at the cached extent: looked up
        assert inode.xcache == fs.maps.lookup(fs.store, inode, 2 * (PIECE // BLOCK))[0]

        def failing_drain() -> None:
            raise OSError(5, "planted failure before the commit point")

        with monkeypatch.context() as m:  # the commit fails after _cow_blocks's lookup
            m.setattr(fs.journal, "committer", None)
            m.setattr(fs.store, "drain", failing_drain)
            with pytest.raises(OSError, match="planted"):
                f.pwrite(pattern(PIECE, 10), 2 * PIECE)
        assert moves.results[-1] is not None
        assert inode.xcache is None  # the abort's record reload cleared it
        assert f.pread(4 * PIECE, 0) == (
            pattern(PIECE, 0) + pattern(PIECE, 9) + pattern(PIECE, 2) + pattern(PIECE, 3)
        )
    fs.unmount()
    assert fsck(dev).clean
