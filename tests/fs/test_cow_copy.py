"""The copy of a copy-on-write overwrite on another core (daxfs.fs._copy, issue 9).

On a native device in a flush or fence mode, ``DataPath._cow_blocks`` starts
the copy into the new run in a C worker thread as soon as ``Allocator.move``
has marked the run, and the transaction joins it before the commit's first
fence (or at abort).  These tests run on image files in /dev/shm mounted
natively, and check that the async path (1) was taken, (2) leaves the image
the synchronous ``Device.write`` leaves, (3) is joined before anything is
committed, even when the worker is slow, (4) turns a copy error into an
OSError with nothing changed, (5) releases the buffers and joins on every
exit path.  Devices the crash simulator uses have no copier: every store
stays visible to SimulatedPmem (tests/crash/test_datapath_ops.py crashes the
copy-on-write path at every fence).
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import daxfs
from daxfs.block.cache import BlockCache
from daxfs.errors import InvalidArgument
from daxfs.fs import _copy, data
from daxfs.fs.alloc import Allocator
from daxfs.fs.fsck import fsck
from daxfs.fs.journal import Transaction
from daxfs.testing import SimulatedPmem, fsx
from daxfs.testing.simblock import SimulatedBlockDevice

BLOCK = 4096
SIZE = 48 << 20
PIECE = 128 * BLOCK  # 512 KiB: past log_data_max, so copy-on-write
BIG = 512 * BLOCK  # 2 MiB, as the bench's pieces


def pattern(n: int, salt: int) -> bytes:
    return bytes((i * 13 + salt) & 0xFF for i in range(256)) * (n // 256)


@pytest.fixture
def image(shm_path: Path) -> Path:
    daxfs.mkfs(str(shm_path), SIZE)
    return shm_path


def mount(path: Path, async_copy: bool = True) -> daxfs.FileSystem:
    data.ASYNC_COPY = async_copy
    try:
        fs = daxfs.mount(str(path), persist="cpu")
    finally:
        data.ASYNC_COPY = True
    if fs.data.copier is None and async_copy:
        fs.unmount()
        pytest.skip("no copier: this machine has no native flush mode")
    return fs


def jobs(fs: daxfs.FileSystem) -> int:
    copier = fs.data.copier
    return 0 if copier is None else int(copier.stats["jobs"])


def workload(fs: daxfs.FileSystem) -> None:
    """Copy-on-write overwrites of several sizes and places (inline and B+tree maps),
    between writes that take the other paths."""
    with fs.open("/f", "wb", buffering=0) as f:
        f.write(pattern(8 << 20, 1))
    with fs.open("/g", "wb", buffering=0) as f:
        f.write(pattern(2 << 20, 2))
        for block in (1, 3, 5, 7, 9, 11):  # a B+tree map
            f.fallocate(block * BLOCK, BLOCK, data.FALLOC_FL_PUNCH_HOLE | 1)
    with fs.open("/f", "rb+", buffering=0) as f:
        for i, off in enumerate(range(0, 8 << 20, BIG)):
            f.pwrite(pattern(BIG, 10 + i), off)
        f.pwrite(pattern(PIECE, 20), 3 * PIECE)
        f.pwrite(pattern(PIECE + BLOCK, 21), 5 * PIECE + BLOCK)
        f.pwrite(b"x" * 1000, 12345)  # journaled
        f.pwrite(pattern(PIECE, 22), (8 << 20) - PIECE)
    with fs.open("/g", "rb+", buffering=0) as f:
        f.pwrite(pattern(PIECE, 23), 256 * BLOCK)  # inside an extent of the B+tree map
        f.pwrite(pattern(3 * PIECE, 24), 128 * BLOCK)


@pytest.mark.usefixtures("frozen")
def test_async_copy_leaves_the_image_the_synchronous_copy_leaves(
    image: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    moves: list[int | None] = []
    move = Allocator.move

    def counting_move(alloc: Allocator, *args: object, **kwargs: object) -> int | None:
        got = move(alloc, *args, **kwargs)  # type: ignore[arg-type]
        moves.append(got)
        return got

    monkeypatch.setattr(Allocator, "move", counting_move)
    base = image.read_bytes()
    results = {}
    for async_copy in (True, False):
        image.write_bytes(base)
        moves.clear()
        fs = mount(image, async_copy)
        workload(fs)
        taken = jobs(fs)
        fs.unmount()
        assert len(moves) >= 7
        assert None not in moves
        if async_copy:
            assert taken == len(moves)  # each copied by the copier
        else:
            assert fs.data.copier is None
            assert taken == 0
        results[async_copy] = image.read_bytes()
    assert results[True] == results[False]
    assert results[True] != base
    dev = SimulatedPmem(SIZE, image=results[True])
    report = fsck(dev)
    assert report.clean, str(report)
    with daxfs.mount(dev) as fs, fs.open("/f", "rb") as f:
        assert f.read(12345 + 1000) == pattern(BIG, 10)[:12345] + b"x" * 1000
        f.seek(3 * PIECE)
        assert f.read(PIECE) == pattern(PIECE, 20)
    dev.close()


def test_the_commit_waits_for_a_slow_worker(image: Path) -> None:
    """The worker sleeps before copying and the joiner does not help: the write must
    still return with the new bytes in place (the join waited), and commit only after
    the join (the order of start, join and the C commit)."""
    fs = mount(image)
    events: list[str] = []
    real = fs.data.copier
    assert real is not None
    committer = fs.journal.committer
    assert committer is not None

    class Recorder:
        def start(self, offset: int, buf: object) -> None:
            events.append("start")
            assert real is not None
            real.start(offset, buf)  # type: ignore[arg-type]

        def join(self) -> None:
            events.append("join")
            assert real is not None
            assert real.pending
            real.join()
            assert not real.pending

    class CommitRecorder:
        def __getattr__(self, name: str) -> object:
            return getattr(committer, name)

        def commit(self, seq: int, records: list[tuple[int, object]]) -> bool:
            events.append("commit")
            assert committer is not None
            return committer.commit(seq, records)  # type: ignore[arg-type]

    with fs.open("/f", "wb", buffering=0) as f:
        f.write(pattern(BIG, 1))
        before = real.stats
        fs.data.copier = Recorder()  # type: ignore[assignment]
        fs.journal.committer = CommitRecorder()  # type: ignore[assignment]
        _copy.plant_worker_delay(30_000_000)  # 30 ms
        try:
            f.pwrite(pattern(BIG, 7), 0)
        finally:
            _copy.plant_worker_delay(0)
            fs.data.copier = real
            fs.journal.committer = committer
        after = real.stats
    assert events == ["start", "join", "commit"]
    assert after["jobs"] == before["jobs"] + 1
    assert after["joiner_pieces"] == before["joiner_pieces"]  # the worker copied it all
    assert after["worker_pieces"] == int(before["worker_pieces"]) + BIG // _copy.CHUNK
    with fs.open("/f", "rb") as f:
        assert f.read() == pattern(BIG, 7)
    fs.unmount()
    dev = SimulatedPmem(SIZE, image=image.read_bytes())
    with daxfs.mount(dev) as again, again.open("/f", "rb") as f:
        assert f.read() == pattern(BIG, 7)
    dev.close()


def test_a_copy_error_is_an_oserror_and_changes_nothing(image: Path) -> None:
    fs = mount(image)
    with fs.open("/f", "wb", buffering=0) as f:
        f.write(pattern(BIG, 1))
    free = fs.sup.sb.free_blocks
    ino = fs.stat("/f").st_ino
    extents = list(fs.maps.extents(fs.store, fs.itable.get(ino)))
    seq = fs.journal.seq
    src = bytearray(pattern(BIG, 2))
    _copy.plant_error(errno.EIO)
    try:
        with (
            fs.open("/f", "rb+", buffering=0) as f,
            pytest.raises(OSError, match="copy of") as info,
        ):
            f.pwrite(src, 0)
    finally:
        _copy.plant_error(0)
    assert info.value.errno == errno.EIO
    assert "copy of 2097152 bytes" in str(info.value)
    assert fs.journal.seq == seq  # nothing committed
    assert fs.journal.failed is None  # failed before the commit point: not read-only
    assert fs.data.copier is not None
    assert not fs.data.copier.pending
    src.extend(b"!")  # the source buffer was released (a held export refuses this)
    assert fs.sup.sb.free_blocks == free == fs.alloc.count_free(fs.store)
    assert list(fs.maps.extents(fs.store, fs.itable.get(ino))) == extents
    fs.alloc.check_index()
    with fs.open("/f", "rb+", buffering=0) as f:
        assert f.read() == pattern(BIG, 1)
        f.pwrite(pattern(BIG, 3), 0)  # the next write works, through the copier
    with fs.open("/f", "rb") as f:
        assert f.read() == pattern(BIG, 3)
    fs.unmount()
    report = fsck(SimulatedPmem(SIZE, image=image.read_bytes()))
    assert report.clean, str(report)


def failing(monkeypatch: pytest.MonkeyPatch, fs: daxfs.FileSystem) -> Callable[[], int]:
    """BlockMaps.replace fails (after the copy started); returns the count of calls."""
    calls = []

    def replace(*args: object, **kwargs: object) -> object:
        calls.append(1)
        assert fs.data.copier is not None
        assert fs.data.copier.pending
        raise RuntimeError("planted failure in the bookkeeping")

    monkeypatch.setattr(fs.maps, "replace", replace)
    return lambda: len(calls)


def test_a_failure_after_the_start_joins_and_releases_the_buffers(
    image: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fs = mount(image)
    with fs.open("/f", "wb", buffering=0) as f:
        f.write(pattern(BIG, 1))
    free = fs.sup.sb.free_blocks
    calls = failing(monkeypatch, fs)
    src = bytearray(pattern(BIG, 2))
    with fs.open("/f", "rb+", buffering=0) as f:
        with pytest.raises(RuntimeError, match="planted"):
            f.pwrite(src, 0)
        assert calls() == 1
        assert fs.data.copier is not None
        assert not fs.data.copier.pending
        src.extend(b"!")  # released
        monkeypatch.undo()
        assert f.read() == pattern(BIG, 1)
    assert fs.sup.sb.free_blocks == free == fs.alloc.count_free(fs.store)
    fs.alloc.check_index()
    fs.unmount()
    assert fsck(SimulatedPmem(SIZE, image=image.read_bytes())).clean


def test_an_abort_joins_before_its_callbacks(image: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Transaction.abort joins first: nothing of the transaction is undone (its run
    free again) while the copy into it may still run -- here a slow worker's."""
    fs = mount(image)
    copier = fs.data.copier
    assert copier is not None
    with fs.open("/f", "wb", buffering=0) as f:
        f.write(pattern(BIG, 1))
    seen: list[bool] = []

    def replace(tx: Transaction, *args: object) -> object:
        tx.on_abort(lambda: seen.append(copier.pending))
        raise RuntimeError("planted failure in the bookkeeping")

    monkeypatch.setattr(fs.maps, "replace", replace)
    before = copier.stats
    _copy.plant_worker_delay(20_000_000)  # 20 ms, and the joiner waits for the worker
    try:
        with fs.open("/f", "rb+", buffering=0) as f, pytest.raises(RuntimeError):
            f.pwrite(pattern(BIG, 2), 0)
    finally:
        _copy.plant_worker_delay(0)
    assert seen == [False]
    assert copier.stats["worker_pieces"] == int(before["worker_pieces"]) + BIG // _copy.CHUNK
    assert fs.journal.current() is None
    monkeypatch.undo()
    with fs.open("/f", "rb") as f:
        assert f.read() == pattern(BIG, 1)
    fs.unmount()


def test_a_copier_checks_its_arguments(shm_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="msync"):
        _copy.Copier(bytearray(BLOCK), "msync")
    with pytest.raises(InvalidArgument, match="unknown persist mode"):
        _copy.Copier(bytearray(BLOCK), "fast")
    mem = bytearray(4 * BLOCK)
    copier = _copy.Copier(mem, "none")
    with pytest.raises(InvalidArgument, match="outside the device"):
        copier.start(3 * BLOCK + 1, bytes(BLOCK))
    with pytest.raises(InvalidArgument, match="negative"):
        copier.start(-1, bytes(BLOCK))
    with pytest.raises(InvalidArgument, match="integer"):
        copier.start("0", bytes(BLOCK))  # type: ignore[arg-type]
    assert not copier.pending
    copier.join()  # nothing pending: nothing to do
    src = bytearray(pattern(3 * BLOCK, 5))
    copier.start(BLOCK, src)
    assert copier.pending
    with pytest.raises(RuntimeError, match="pending"):
        copier.start(0, bytes(BLOCK))
    with pytest.raises(BufferError):
        src.extend(b"!")  # held until joined
    with pytest.raises(BufferError):
        mem.extend(b"!")
    copier.join()
    assert not copier.pending
    assert mem == bytes(BLOCK) + pattern(3 * BLOCK, 5)
    src.extend(b"!")
    big = pattern(1 << 20, 6)  # several pieces
    copier.start(0, big[: 4 * BLOCK])
    copier.join()
    assert mem[: 4 * BLOCK] == big[: 4 * BLOCK]
    copier.close()
    copier.close()


def test_simulated_and_msync_devices_have_no_copier(shm_path: Path) -> None:
    """The crash simulator must see every store: its devices copy synchronously."""
    dev = SimulatedPmem(SIZE)
    daxfs.mkfs(dev)
    with daxfs.mount(dev) as fs:
        assert fs.data.copier is None
    dev.close()
    daxfs.mkfs(str(shm_path), SIZE)
    fs = daxfs.mount(str(shm_path), persist="msync")
    assert fs.data.copier is None
    fs.unmount()


def test_the_transaction_runs_each_join_once() -> None:
    dev = SimulatedPmem(SIZE)
    daxfs.mkfs(dev)
    fs = daxfs.mount(dev)
    calls: list[str] = []
    with fs.journal.begin() as tx:
        assert isinstance(tx, Transaction)
        tx.join_before_fence(lambda: calls.append("a"))
        tx.join_before_fence(lambda: calls.append("b"))
        fs.sup.dirty(tx)
    assert sorted(calls) == ["a", "b"]
    fs.unmount()
    dev.close()


def test_an_abort_runs_every_join_even_when_one_fails() -> None:
    """A join that fails at abort neither stops the other joins (their copies would
    run on into blocks the abort frees) nor hides the cause the abort handles."""
    dev = SimulatedPmem(SIZE)
    daxfs.mkfs(dev)
    fs = daxfs.mount(dev)
    calls: list[str] = []

    def failing() -> None:
        calls.append("failing")
        raise OSError(errno.EIO, "copy failed")

    cause = ValueError("the operation's own error")
    tx = fs.journal.begin()
    tx.join_before_fence(lambda: calls.append("first"))
    tx.join_before_fence(failing)  # joins run last-registered first
    tx.abort(cause)
    assert calls == ["failing", "first"]
    assert any("copy into new blocks also failed" in note for note in cause.__notes__)
    fs.unmount()
    dev.close()


def test_fsx_on_a_native_image_through_the_copier(
    shm_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fsx (random writes, among them aligned multi-block overwrites, truncates,
    fallocate, mappings, pins and remounts, checked against a model) on an image
    mounted natively, so that its copy-on-write overwrites go through the copier."""
    made: list[_copy.Copier] = []
    copier_for = data.copier_for

    def recording(*args: object) -> _copy.Copier | None:
        copier = copier_for(*args)  # type: ignore[arg-type]
        if copier is not None:
            made.append(copier)
        return copier

    real_mount = fsx.mount

    def native_mount(dev: object, *args: object, **kwargs: object) -> daxfs.FileSystem:
        if isinstance(dev, str):
            kwargs["persist"] = "cpu"
        return real_mount(dev, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(data, "copier_for", recording)
    monkeypatch.setattr(fsx, "mount", native_mount)
    daxfs.mkfs(str(shm_path), 16 << 20)
    for seed in range(3):
        fsx.run(seed, ops=600, device=str(shm_path))
    if not made:
        pytest.skip("no copier: this machine has no native flush mode")
    assert sum(int(c.stats["jobs"]) for c in made) > 0


def test_a_block_cache_has_no_copier_and_its_overwrites_reach_the_disk() -> None:
    """BlockCache (the filesystem on a block device) has a native region for reads,
    but its writes must go through BlockCache.write, which marks the blocks dirty
    for write-back: a copier writing its memory behind its back would lose them."""
    disk = SimulatedBlockDevice(SIZE)
    with BlockCache(disk) as cache:
        # readable natively, but not a device C may store into (Device.native_stores)
        assert cache.native_region() is not None
        assert not cache.native_stores
        daxfs.mkfs(cache)
        with daxfs.mount(cache) as fs:
            assert fs.data.copier is None
            with fs.open("/f", "wb", buffering=0) as f:
                f.write(pattern(BIG, 1))
                f.pwrite(pattern(BIG, 2), 0)  # copy-on-write
    with BlockCache(disk) as again, daxfs.mount(again) as fs, fs.open("/f", "rb") as f:
        assert f.read() == pattern(BIG, 2)


def test_an_idle_worker_exits_and_the_next_copy_makes_another() -> None:
    """After idle_exit_ns without a job the worker exits; the next start joins the old
    thread and starts a new one (and a job published as it exits is the joiner's)."""
    mem = bytearray(4 << 20)
    before = _copy.tune(0, 0, _copy.CHUNK, True, 1_000_000)  # exit after 1 ms idle
    try:
        copier = _copy.Copier(mem, "none")
        for round_ in range(3):
            src = pattern(2 << 20, round_)
            copier.start(round_ * BLOCK, src)
            copier.join()
            assert mem[round_ * BLOCK : round_ * BLOCK + len(src)] == src
            for _ in range(1000):  # until the worker has gone (1 ms idle): bounded
                if not copier.stats["worker_alive"]:
                    break
                time.sleep(0.005)
            assert not copier.stats["worker_alive"]
        assert copier.stats["jobs"] == 3
        copier.close()
    finally:
        _copy.tune(*before)
