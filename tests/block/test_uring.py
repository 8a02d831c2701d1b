"""The io_uring engine: conformance, agreement with run_op, threads, errors, buffers,
close, the fallback to the thread pool and what `daxfs info` says about it."""

from __future__ import annotations

import errno
import functools
import gc
import itertools
import mmap
import os
import random
import sys
import threading
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from daxfs.block import Bio, BioOp, BlockDevice, IoKind, IoOp, open_block
from daxfs.block import engine as engine_mod
from daxfs.block import uring as uring_mod
from daxfs.block.engine import (
    FALLOC_FL_KEEP_SIZE,
    FALLOC_FL_PUNCH_HOLE,
    FALLOC_FL_ZERO_RANGE,
    ThreadPoolEngine,
    run_op,
)
from daxfs.block.uring import UringEngine
from daxfs.cli import main
from daxfs.errors import ClosedFile, InvalidArgument, NotSupported
from daxfs.testing.block_tests import BlockDeviceTests
from daxfs.testing.blockfaults import FaultyBlockDevice
from tests.block.regions import run_in_regions
from tests.block.test_faults import attempt

WHY_NOT = uring_mod.availability()
needs_uring = pytest.mark.skipif(bool(WHY_NOT), reason=f"io_uring unavailable: {WHY_NOT}")
SIZE = 2 << 20


def _close(dev: BlockDevice) -> None:
    if not dev.closed:
        dev.close()


def _uring_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "daxfs-uring"]


def test_auto_picks_io_uring_where_it_can_be_set_up(tmp_path: Path) -> None:
    """This machine (kernel, build) must have it: bootstrap installs liburing-dev."""
    assert WHY_NOT == "", WHY_NOT
    with open_block(tmp_path / "d.img", SIZE, create=True) as dev:
        assert dev.engine.startswith("io_uring (readv/writev SQEs, O_DIRECT, queue depth 8)")
        assert "io_uring: one ring shared by all threads" in dev.engine_reason
    with open_block(tmp_path / "d.img", engine="threads") as dev:
        assert dev.engine.startswith("threads (preadv/pwritev")


# -- conformance --------------------------------------------------------------------------


@needs_uring
class TestUringOnDisk(BlockDeviceTests):
    """O_DIRECT on the host's disk (ext4) through io_uring."""

    @pytest.fixture
    def block_device(self, tmp_path: Path) -> Iterator[BlockDevice]:
        dev = open_block(tmp_path / "disk.img", SIZE, create=True, engine="io_uring")
        assert dev.direct, dev.engine_reason
        assert dev.engine.startswith("io_uring")
        yield dev
        _close(dev)


@needs_uring
class TestUringBioPathReference(BlockDeviceTests):
    """The same device with its C path of submit_bio off (``_aio``): every bio takes
    the bio path, the reference the C path is held to."""

    @pytest.fixture
    def block_device(self, tmp_path: Path) -> Iterator[BlockDevice]:
        from tests.block.test_uring_async import reference

        dev = open_block(tmp_path / "disk.img", SIZE, create=True, engine="io_uring")
        reference(dev)
        yield dev
        assert dev.statistics()["async"] == 0
        _close(dev)


@needs_uring
class TestUringQueueDepthOne(BlockDeviceTests):
    """One slot: submitters wait for it, and a completion's follow-up (a PREFLUSH's
    data, an emulated FUA) is started from the completion thread without waiting."""

    @pytest.fixture
    def block_device(self, tmp_path: Path) -> Iterator[BlockDevice]:
        dev = open_block(tmp_path / "disk.img", SIZE, create=True, engine="io_uring", queue_depth=1)
        yield dev
        _close(dev)


@needs_uring
class TestUringBuffered(BlockDeviceTests):
    @pytest.fixture
    def block_device(self, tmp_path: Path) -> Iterator[BlockDevice]:
        dev = open_block(tmp_path / "disk.img", SIZE, create=True, engine="io_uring", direct=False)
        assert "buffered" in dev.engine
        yield dev
        _close(dev)


class TestThreadPoolOnDisk(BlockDeviceTests):
    """The fallback engine keeps its own conformance run now that "auto" picks io_uring."""

    @pytest.fixture
    def block_device(self, tmp_path: Path) -> Iterator[BlockDevice]:
        dev = open_block(tmp_path / "disk.img", SIZE, create=True, engine="threads")
        assert dev.engine.startswith("threads")
        yield dev
        _close(dev)


@needs_uring
class TestFaultyOverUring(BlockDeviceTests):
    @pytest.fixture
    def block_device(self, tmp_path: Path) -> Iterator[BlockDevice]:
        inner = open_block(tmp_path / "disk.img", SIZE, create=True, engine="io_uring")
        dev = FaultyBlockDevice(inner)
        yield dev
        _close(dev)


@needs_uring
class TestFaultyOverUringBuffered(BlockDeviceTests):
    """Buffered, any buffer is plain: the bios the fault wrapper forwards take the
    inner device's C path of submit_bio (11 of these 16 tests send it some)."""

    @pytest.fixture
    def block_device(self, tmp_path: Path) -> Iterator[BlockDevice]:
        inner = open_block(
            tmp_path / "disk.img", SIZE, create=True, engine="io_uring", direct=False
        )
        dev = FaultyBlockDevice(inner)
        yield dev
        _close(dev)


# -- agreement with run_op (the reference) ---------------------------------------------------


def _run_on(engine: engine_mod.IoEngine, op: IoOp) -> int | BaseException:
    got: list[int | BaseException] = []
    event = threading.Event()

    def done(result: int | BaseException) -> None:
        got.append(result)
        event.set()

    engine.submit(op, done)
    assert event.wait(60), "the op never completed"
    assert len(got) == 1
    return got[0]


def _reference(op: IoOp) -> int | BaseException:
    try:
        return run_op(op)
    except OSError as exc:
        return exc


def _same(a: int | BaseException, b: int | BaseException) -> None:
    if isinstance(a, BaseException) or isinstance(b, BaseException):
        assert isinstance(a, OSError), a
        assert isinstance(b, OSError), b
        assert a.errno == b.errno
    else:
        assert a == b


@needs_uring
def test_random_ops_agree_with_run_op(tmp_path: Path) -> None:
    """The same random ops (buffered files: any offset and length, reads past the end,
    fallocate modes a file system refuses) leave the same bytes and results."""
    rng = random.Random(7)
    length = 256 << 10
    paths = [tmp_path / "ref.img", tmp_path / "uring.img"]
    fds = []
    for path in paths:
        path.write_bytes(bytes(length))
        fds.append(os.open(path, os.O_RDWR))
    engine = UringEngine(4)
    try:
        for step in range(300):
            kind = rng.choice(["read", "write", "write", "sync", "falloc"])
            offset = rng.randrange(0, length + 8192)
            size = rng.randrange(0, 40000)
            rw_flags = rng.choice([0, os.RWF_DSYNC])
            mode = rng.choice(
                [
                    FALLOC_FL_ZERO_RANGE,
                    FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                    FALLOC_FL_PUNCH_HOLE,  # refused (EOPNOTSUPP): zeros written instead
                ]
            )
            data = rng.randbytes(size)
            results = []
            for fd in fds:
                if kind == "read":
                    bufs = [memoryview(bytearray(b - a)) for a, b in _cuts(size, step)]
                    op = IoOp(IoKind.READV, fd, offset, bufs)
                elif kind == "write":
                    bufs = [memoryview(data)[a:b] for a, b in _cuts(size, step)]
                    op = IoOp(IoKind.WRITEV, fd, offset, bufs, flags=rw_flags)
                elif kind == "sync":
                    op = IoOp(IoKind.FDATASYNC, fd)
                else:
                    op = IoOp(IoKind.FALLOCATE, fd, offset, length=size or 1, flags=mode)
                op.datasync_after = step % 5 == 0
                result = _reference(op) if fd == fds[0] else _run_on(engine, op)
                if kind == "read" and not isinstance(result, BaseException):
                    results.append((result, b"".join(bytes(b) for b in bufs)))
                else:
                    results.append((result, b""))
            _same(results[0][0], results[1][0])
            assert results[0][1] == results[1][1], f"step {step}: reads differ"
        assert paths[0].read_bytes() == paths[1].read_bytes()
    finally:
        engine.close()
        for fd in fds:
            os.close(fd)


def _cuts(size: int, seed: int) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    points = sorted({0, size, *(rng.randrange(size + 1) for _ in range(rng.randrange(4)))})
    return list(itertools.pairwise(points))


@needs_uring
def test_partial_transfers_are_continued() -> None:
    """A pipe hands readv only what was written so far: the engine continues the
    op from where it stopped (invariant 2 of run_op) until every byte arrived."""
    r, w = os.pipe()
    engine = UringEngine(2)
    try:
        buf = bytearray(300)
        got: list[int | BaseException] = []
        event = threading.Event()

        def done(result: int | BaseException) -> None:
            got.append(result)
            event.set()

        engine.submit(
            IoOp(IoKind.READV, r, 0, [memoryview(buf)[:100], memoryview(buf)[100:]]), done
        )
        os.write(w, b"a" * 120)
        assert not event.wait(0.2)  # 120 of 300 bytes: not done
        os.write(w, b"b" * 100)
        assert not event.wait(0.2)
        os.write(w, b"c" * 80)
        assert event.wait(60)
        assert got == [300]
        assert bytes(buf) == b"a" * 120 + b"b" * 100 + b"c" * 80
        # end of file after some bytes: short, as run_op
        os.write(w, b"d" * 10)
        os.close(w)
        w = -1
        assert _run_on(engine, IoOp(IoKind.READV, r, 0, [memoryview(bytearray(64))])) == 10
        assert _run_on(engine, IoOp(IoKind.READV, r, 0, [memoryview(bytearray(64))])) == 0
    finally:
        engine.close()
        os.close(r)
        if w >= 0:
            os.close(w)


@needs_uring
def test_rw_flags_refused_fall_back_to_fdatasync(tmp_path: Path) -> None:
    """A write whose RWF flags the kernel refuses (EOPNOTSUPP) is done again without
    them and followed by an fdatasync, as run_op does."""
    path = tmp_path / "f"
    path.write_bytes(bytes(4096))
    fd = os.open(path, os.O_RDWR)
    engine = UringEngine(2)
    try:
        with pytest.raises(OSError, match="Operation not supported") as info:
            os.pwritev(fd, [b"x"], 0, 1 << 30)  # a flag no kernel defines
        assert info.value.errno == errno.EOPNOTSUPP
        op = IoOp(IoKind.WRITEV, fd, 10, [memoryview(b"hello")], flags=1 << 30)
        assert _run_on(engine, op) == 5
        assert not op.datasync_after  # the engine keeps its own state
        assert path.read_bytes()[10:15] == b"hello"
    finally:
        engine.close()
        os.close(fd)


# -- many threads ---------------------------------------------------------------------------


@needs_uring
def test_many_threads_submit_at_once_every_byte_checked(tmp_path: Path) -> None:
    """8 threads x 60 batches of bios in flight on a queue depth of 4 (submitters
    wait for slots); each thread owns a region, checks every byte it reads back,
    and the file holds what the model says."""
    threads = 8
    region = 64 << 10
    model = bytearray(threads * region)
    with open_block(
        tmp_path / "d.img", len(model), create=True, engine="io_uring", queue_depth=4
    ) as dev:

        def work(k: int, base: int, mine: bytearray, stop: threading.Event) -> None:
            rng = random.Random(k)
            for _ in range(60):
                # writes in flight together on disjoint 8 KiB slots, then reads
                slots = rng.sample(range(region // 8192), rng.randrange(1, 5))
                writes = []
                for slot in slots:
                    start = slot * 8192 + rng.randrange(0, 8) * 512
                    n = rng.randrange(1, 9) * 512
                    n = min(n, (slot + 1) * 8192 - start)
                    data = rng.randbytes(n)
                    mine[start : start + n] = data
                    bio = Bio(BioOp.WRITE, (base + start) // 512, [data])
                    dev.submit_bio(bio)
                    writes.append((bio, n))
                for bio, n in writes:
                    assert bio.wait() == n
                reads = []
                for _ in range(rng.randrange(1, 6)):
                    start = rng.randrange(0, region // 512) * 512
                    n = min(rng.randrange(1, 17) * 512, region - start)
                    buf = mmap.mmap(-1, n)
                    bio = Bio(BioOp.READ, (base + start) // 512, [buf])
                    dev.submit_bio(bio)
                    reads.append((bio, buf, start, n))
                for bio, buf, off, n in reads:
                    assert bio.wait() == n
                    assert buf[:] == mine[off : off + n], f"thread {k}: bytes at {base + off}"
            model[base : base + region] = mine

        run_in_regions(work, threads, region)
        assert dev.read(0, len(model)) == bytes(model)
    assert (tmp_path / "d.img").read_bytes() == bytes(model)


# -- errors ---------------------------------------------------------------------------------


@needs_uring
def test_errors_from_a_read_only_file(tmp_path: Path) -> None:
    """The kernel's errno reaches done as an OSError naming the call and offset, the
    same errno as run_op; a device opened read-only refuses writes before any I/O."""
    path = tmp_path / "ro.img"
    path.write_bytes(bytes(8192))
    fd = os.open(path, os.O_RDONLY)
    engine = UringEngine(2)
    try:
        ops = [
            IoOp(IoKind.WRITEV, fd, 4096, [memoryview(b"x" * 512)]),
            IoOp(IoKind.FALLOCATE, fd, 0, length=4096, flags=FALLOC_FL_ZERO_RANGE),
        ]
        for op in ops:
            got = _run_on(engine, op)
            assert isinstance(got, OSError)
            assert got.errno == errno.EBADF
            assert "at offset" in str(got)
            _same(got, _reference(op))
        assert _run_on(engine, IoOp(IoKind.READV, fd, 0, [memoryview(bytearray(512))])) == 512
    finally:
        engine.close()
        os.close(fd)
    with open_block(path, readonly=True, engine="io_uring") as dev:
        with pytest.raises(OSError, match="read-only") as info:
            dev.write(0, bytes(512))
        assert info.value.errno == errno.EROFS
        assert dev.read(0, 512) == bytes(512)
    assert path.read_bytes() == bytes(8192)


@needs_uring
def test_kernel_error_reaches_the_bio_named(tmp_path: Path) -> None:
    """An error of the ring (here EBADF: the descriptor swapped for a read-only one)
    reaches the bio's future named by the device: operation, sector, path."""
    path = tmp_path / "d.img"
    with open_block(path, 1 << 20, create=True, engine="io_uring") as dev:
        ro = os.open(path, os.O_RDONLY)
        good = dev.fd
        dev.fd = ro
        try:
            bio = Bio(BioOp.WRITE, 8, [mmap.mmap(-1, 4096)])
            dev.submit_bio(bio)
            with pytest.raises(OSError, match=r"write of 4096 bytes at sector 8 of .*d\.img"):
                bio.wait()
            assert bio.status is not None
        finally:
            dev.fd = good
            os.close(ro)


@needs_uring
def test_bad_input_to_the_ring_raises() -> None:
    """Checked in C before any SQE is filled: nothing reaches the kernel half-built."""
    from daxfs.block import _uring

    with pytest.raises(ValueError, match="entries"):
        _uring.Ring(0)
    with pytest.raises(ValueError, match="entries"):
        _uring.Ring(_uring.MAX_ENTRIES + 1)
    with pytest.raises(TypeError):
        _uring.Ring("8")  # type: ignore[arg-type]
    ring = _uring.Ring(2)
    r, w = os.pipe()
    try:
        buf = bytearray(16)
        bad: list[tuple[Any, ...]] = [
            (None, 99, r, 0, [buf], 0, 0),  # unknown opcode
            (None, _uring.READV, -1, 0, [buf], 0, 0),  # negative fd
            (None, _uring.READV, r, -1, [buf], 0, 0),  # negative offset
            (None, _uring.FALLOCATE, r, 0, (), -5, 0),  # negative length
            (None, _uring.READV, r, 0, [b"read-only"], 0, 0),  # not writable
            (None, _uring.READV, r, 0, [memoryview(bytearray(8))[::2]], 0, 0),  # strided
            (None, _uring.WRITEV, w, 0, [object()], 0, 0),  # not a buffer
            (None, _uring.WRITEV, w, 0, 5, 0, 0),  # not a sequence
            (None, _uring.WRITEV, w, 0, [b"x"] * (_uring.IOV_MAX + 1), 0, 0),
            (None, _uring.FDATASYNC, w, 0, [b"x"], 0, 0),  # buffers where none are taken
            (None, _uring.READV, r, 0, [buf]),  # too few arguments
        ]
        for args in bad:
            with pytest.raises((ValueError, TypeError, BufferError, OSError)):
                ring.submit(*args)
        assert ring.inflight == 0
        held = [bytearray(8), bytearray(8)]
        with pytest.raises(TypeError):  # the second item is not a buffer
            ring.submit(None, _uring.WRITEV, w, 0, [held[0], 3], 0, 0)
        held[0].extend(b"x")  # the first one's buffer was released: it can resize
        # a request in flight: close refuses, the buffer stays exported until reaped
        ring.submit("tok", _uring.READV, r, 0, [buf], 0, 0)
        with pytest.raises(BufferError):
            buf.extend(b"x")
        with pytest.raises(OSError, match="in flight") as info:
            ring.close()
        assert info.value.errno == errno.EBUSY
        os.write(w, b"z" * 16)
        assert ring.reap() == [("tok", 16)]
        buf.extend(b"x")  # released
        assert bytes(buf[:16]) == b"z" * 16
    finally:
        ring.close()
        os.close(r)
        os.close(w)
    assert ring.closed
    with pytest.raises(OSError, match="closed") as info:
        ring.submit(None, _uring.NOP, -1, 0, (), 0, 0)
    assert info.value.errno == errno.EBADF
    with pytest.raises(OSError, match="closed"):
        ring.reap()
    ring.close()  # idempotent


@needs_uring
def test_a_ring_dropped_with_requests_in_flight_waits_for_them() -> None:
    """Deallocation waits for the kernel to finish with the buffers (invariant 2)."""
    from daxfs.block import _uring

    r, w = os.pipe()
    try:
        ring = _uring.Ring(2)
        buf = bytearray(4)
        ring.submit(None, _uring.READV, r, 0, [buf], 0, 0)
        os.write(w, b"done")
        del ring
        gc.collect()
        assert bytes(buf) == b"done"
        buf.extend(b"!")  # no export left
    finally:
        os.close(r)
        os.close(w)


# -- close ----------------------------------------------------------------------------------


@needs_uring
def test_closed_engine_refuses_and_stops_its_thread() -> None:
    before = len(_uring_threads())
    engine = UringEngine(3)
    assert len(_uring_threads()) == before  # started when first needed
    got: list[int | BaseException] = []
    engine.poll_begin()
    try:
        engine.submit(IoOp(IoKind.READV, 0, 0, []), got.append)  # nothing to move: a NOP
        engine.poll_until(lambda: bool(got))
    finally:
        engine.poll_end()
    assert got == [0]
    assert len(_uring_threads()) == before  # the polling thread reaped: none started
    assert _run_on(engine, IoOp(IoKind.READV, 0, 0, [])) == 0  # nobody polls: it starts
    assert len(_uring_threads()) == before + 1
    assert engine.inflight == 0
    engine.close()
    engine.close()  # idempotent
    assert len(_uring_threads()) == before
    with pytest.raises(ClosedFile) as info:
        engine.submit(IoOp(IoKind.FDATASYNC, 0), lambda r: None)
    assert info.value.errno == errno.EBADF
    with pytest.raises(InvalidArgument):
        UringEngine(0)
    with pytest.raises(InvalidArgument):
        UringEngine(1 << 20)


@needs_uring
def test_close_waits_for_ops_in_flight_and_waiting_submitters_fail() -> None:
    """close() waits for the op in flight; a thread waiting for a slot gets EBADF."""
    r, w = os.pipe()
    engine = UringEngine(1)
    results: list[int | BaseException] = []
    refused: list[BaseException] = []
    buf = bytearray(4)
    engine.submit(IoOp(IoKind.READV, r, 0, [memoryview(buf)]), results.append)

    def second() -> None:
        try:
            engine.submit(IoOp(IoKind.READV, r, 0, [memoryview(bytearray(4))]), results.append)
        except ClosedFile as exc:
            refused.append(exc)

    waiter = threading.Thread(target=second)
    waiter.start()
    closer = threading.Thread(target=engine.close)
    closer.start()
    closer.join(0.3)
    assert closer.is_alive()  # the read is still in flight
    os.write(w, b"data")
    closer.join(60)
    waiter.join(60)
    assert not closer.is_alive()
    assert results == [4]
    assert len(refused) == 1
    assert bytes(buf) == b"data"
    os.close(r)
    os.close(w)


@needs_uring
def test_device_closed_while_io_in_flight(tmp_path: Path) -> None:
    """Threads keep submitting while the device closes: every bio either completed
    (and its data is right) or failed with EBADF; the completion thread is gone."""
    before = len(_uring_threads())
    dev = open_block(tmp_path / "d.img", SIZE, create=True, engine="io_uring", queue_depth=2)
    data = bytes(range(256)) * 16
    outcomes: list[str] = []
    errors: list[BaseException] = []
    started = threading.Barrier(5)

    def work(k: int) -> None:
        started.wait()
        try:
            for i in range(400):
                off = ((k * 400 + i) % (SIZE // 4096)) * 4096
                bio = Bio(BioOp.WRITE, off // 512, [data])
                dev.submit_bio(bio)
                try:
                    bio.wait()
                    outcomes.append("ok")
                except ClosedFile:
                    outcomes.append("closed")
                    return
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in workers:
        t.start()
    started.wait()
    dev.close()
    for t in workers:
        t.join()
    assert not errors, errors[0]
    assert len(outcomes) >= 4  # every worker saw its bios end
    assert len(_uring_threads()) == before
    with pytest.raises(ClosedFile):
        dev.read(0, 512)
    image = (tmp_path / "d.img").read_bytes()
    for off in range(0, SIZE, 4096):  # each block: never written, or written whole
        assert image[off : off + 4096] in (bytes(4096), data), f"block at {off}"


# -- buffers --------------------------------------------------------------------------------


@needs_uring
def test_buffers_are_released_no_leak(tmp_path: Path) -> None:
    """After completion no buffer stays exported or referenced, and 3000 ops leave no
    memory behind (tracemalloc)."""
    path = tmp_path / "f"
    path.write_bytes(bytes(1 << 16))
    fd = os.open(path, os.O_RDWR)
    engine = UringEngine(4)
    try:
        buf = bytearray(4096)
        base = sys.getrefcount(buf)
        view = memoryview(buf)
        for kind in (IoKind.WRITEV, IoKind.READV):
            assert _run_on(engine, IoOp(kind, fd, 0, [view[:1000], view[1000:]])) == 4096
        view.release()
        assert sys.getrefcount(buf) == base
        buf.extend(b"x")  # no export left

        def batch(n: int) -> None:
            event = threading.Event()
            left = [n]
            lock = threading.Lock()

            def done(result: int | BaseException) -> None:
                assert result == 512
                with lock:
                    left[0] -= 1
                    if not left[0]:
                        event.set()

            for i in range(n):
                b = bytearray(512)
                engine.submit(IoOp(IoKind.READV, fd, (i % 64) * 512, [memoryview(b)]), done)
            assert event.wait(60)

        batch(200)  # warm up (the pool of tasks, the zeros)
        grown = memory_grown(lambda: batch(3000))
        assert grown < 64 << 10, f"{grown} bytes left after 3000 ops"
    finally:
        engine.close()
        os.close(fd)


def memory_grown(work: Callable[[], object]) -> int:
    """Bytes of Python memory ``work()`` left behind (tracemalloc, after gc)."""
    gc.collect()
    tracemalloc.start()
    try:
        start = tracemalloc.take_snapshot()
        work()
        gc.collect()
        return sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(start, "filename"))
    finally:
        tracemalloc.stop()


# -- the fallback ---------------------------------------------------------------------------


def _refuse(code: int) -> Any:
    def ring(entries: int) -> None:
        raise OSError(code, os.strerror(code))

    return ring


@pytest.mark.parametrize("code", [errno.EPERM, errno.ENOSYS])
def test_setup_refused_falls_back_to_threads_and_info_says_so(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    code: int,
) -> None:
    if uring_mod._uring is None:
        pytest.skip("the extension is not built: the fallback is the normal path")
    monkeypatch.setattr(uring_mod._uring, "Ring", _refuse(code))
    image = tmp_path / "b.img"
    with open_block(image, SIZE, create=True) as dev:
        assert dev.engine.startswith("threads (preadv/pwritev")
        assert f"fallback: io_uring unavailable ({os.strerror(code)}" in dev.engine_reason
        assert "a thread pool of preadv/pwritev" in dev.engine_reason
        dev.write(0, b"k" * 512)
        assert dev.read(0, 512) == b"k" * 512
    with pytest.raises(NotSupported, match="io_uring engine is not available") as info:
        open_block(image, engine="io_uring")
    assert info.value.errno == errno.EOPNOTSUPP
    assert main(["info", str(image)]) == 0
    out = capsys.readouterr().out
    assert "block I/O:         threads (preadv/pwritev" in out
    assert f"why: O_DIRECT; fallback: io_uring unavailable ({os.strerror(code)}" in out
    assert uring_mod.availability() == os.strerror(code)


def test_fallback_names_the_sysctl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if uring_mod._uring is None:
        pytest.skip("the extension is not built")
    sysctl = tmp_path / "io_uring_disabled"
    sysctl.write_text("2\n")
    monkeypatch.setattr(uring_mod, "IO_URING_DISABLED", str(sysctl))
    monkeypatch.setattr(uring_mod._uring, "Ring", _refuse(errno.EPERM))
    engine, why = engine_mod.choose_engine("auto", 4)
    try:
        assert isinstance(engine, ThreadPoolEngine)
        assert "kernel.io_uring_disabled=2" in why
    finally:
        engine.close()


def test_extension_missing_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(uring_mod, "_uring", None)
    monkeypatch.setattr(uring_mod, "_IMPORT_ERROR", "No module named 'daxfs.block._uring'")
    engine, why = engine_mod.choose_engine("auto", 2)
    try:
        assert engine.name == "threads"
        assert "the io_uring extension is not built" in why
    finally:
        engine.close()
    with pytest.raises(NotSupported, match="not built"):
        engine_mod.choose_engine("io_uring", 2)


@needs_uring
def test_missing_opcode_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    real = uring_mod._uring.Ring

    class OldKernel:
        def __init__(self, entries: int) -> None:
            self.ring = real(entries)

        def unsupported(self) -> list[str]:
            return ["FALLOCATE"]

        def close(self) -> None:
            self.ring.close()

    monkeypatch.setattr(uring_mod._uring, "Ring", OldKernel)
    engine, why = engine_mod.choose_engine("auto", 2)
    try:
        assert engine.name == "threads"
        assert "lacks FALLOCATE" in why
    finally:
        engine.close()


# -- faults ---------------------------------------------------------------------------------


@needs_uring
@pytest.mark.parametrize("kind", ["write", "flush", "read", "any"])
def test_fault_loop_over_uring(tmp_path: Path, kind: str) -> None:
    """SQLite's loop over an io_uring device: the n-th request fails or is cut short;
    every operation succeeds (its data reads back) or fails with EIO."""
    bs = 512
    for n in range(1, 200):
        dev = FaultyBlockDevice(
            open_block(tmp_path / f"f{n}.img", 64 * bs, create=True, engine="io_uring")
        )
        fault = dev.arm(kind, n, short=(n % 2 == 0 and kind in ("read", "write", "any")))
        done: dict[int, bytes] = {}
        for i in range(6):
            data = bytes([i + 1]) * (2 * bs)
            write = functools.partial(dev.write, i * 4 * bs, data, fua=i % 3 == 0)
            if attempt(write) is None:
                done[i] = data
            assert attempt(dev.flush) in (None, errno.EIO)
            if kind in ("read", "any"):
                attempt(functools.partial(dev.read, i * 4 * bs, 2 * bs))
        dev.disarm()
        for i, data in done.items():
            assert dev.read(i * 4 * bs, 2 * bs) == data
        dev.close()
        if not fault.fired:
            assert n > 6
            return
    raise AssertionError("the fault loop did not end")


# -- whoever waits reaps --------------------------------------------------------------------


@needs_uring
def test_a_polling_thread_reaps_its_own_completion(tmp_path: Path) -> None:
    """With poll_begin/poll_until the waiting thread runs the completion itself (no
    handoff); without them the completion thread does."""
    path = tmp_path / "f"
    path.write_bytes(bytes(4096))
    fd = os.open(path, os.O_RDWR)
    engine = UringEngine(2)
    try:
        ran_on: list[str] = []
        op = IoOp(IoKind.READV, fd, 0, [memoryview(bytearray(512))])
        engine.poll_begin()
        try:
            engine.submit(op, lambda r: ran_on.append(threading.current_thread().name))
            engine.poll_until(lambda: bool(ran_on))
        finally:
            engine.poll_end()
        assert ran_on == [threading.current_thread().name]
        ran_on.clear()
        assert _run_on(engine, op) == 512  # waits on an Event: the completion thread
        _run_on(engine, IoOp(IoKind.READV, fd, 0, [memoryview(bytearray(512))]))
        event = threading.Event()
        engine.submit(op, lambda r: (ran_on.append(threading.current_thread().name), event.set()))
        assert event.wait(60)
        assert ran_on == ["daxfs-uring"]
    finally:
        engine.close()
        os.close(fd)


@needs_uring
def test_a_poller_waiting_for_a_slot_is_not_left_without_a_reaper() -> None:
    """Queue depth 1: an asynchronous op (nobody polls for it) holds the slot while a
    thread that means to poll waits for it: the completion thread must reap."""
    r, w = os.pipe()
    engine = UringEngine(1)
    try:
        first = threading.Event()
        engine.submit(IoOp(IoKind.READV, r, 0, [memoryview(bytearray(4))]), lambda _: first.set())
        got: list[int | BaseException] = []

        def poller() -> None:
            engine.poll_begin()
            try:
                op = IoOp(IoKind.READV, r, 0, [memoryview(bytearray(4))])
                engine.submit(op, got.append)  # waits for the slot
                engine.poll_until(lambda: bool(got))
            finally:
                engine.poll_end()

        t = threading.Thread(target=poller)
        t.start()
        os.write(w, b"abcd")
        assert first.wait(60)
        os.write(w, b"efgh")
        t.join(60)
        assert not t.is_alive()
        assert got == [4]
    finally:
        engine.close()
        os.close(r)
        os.close(w)


@needs_uring
def test_end_io_may_wait_for_another_bio_on_the_same_device(tmp_path: Path) -> None:
    """A synchronous read inside an end_io (on the thread that leads the reaping, so
    nested) completes instead of waiting for itself."""
    with open_block(tmp_path / "d.img", 1 << 20, create=True, engine="io_uring") as dev:
        dev.write(4096, b"n" * 4096)
        seen: list[bytes] = []

        def end_io(bio: Bio) -> None:
            seen.append(dev.read(4096, 512))

        bio = Bio(BioOp.WRITE, 0, [mmap.mmap(-1, 4096)], end_io=end_io)
        dev.submit_bio(bio)
        bio.wait()
        dev.read(0, 512)  # polls: end_io may run here, nested, or on the completion thread
        for _ in range(1000):
            if seen:
                break
            threading.Event().wait(0.01)
        assert seen == [b"n" * 512]
        # the same from a polling thread: the write's end_io runs in the poller, nested
        seen.clear()
        engine = dev._engine
        assert isinstance(engine, UringEngine)
        bio = Bio(BioOp.WRITE, 0, [mmap.mmap(-1, 4096)], end_io=end_io)
        assert dev._run(bio) == 4096  # FileBlockDevice's poll: submit, then reap here
        assert seen == [b"n" * 512]


def test_misaligned_in_c_agrees_with_python() -> None:
    from daxfs.block import file as file_mod

    if file_mod._uring is None:
        pytest.skip("the extension is not built")
    rng = random.Random(3)
    area = mmap.mmap(-1, 1 << 16)
    whole = memoryview(area)
    for _ in range(500):
        views = []
        for _ in range(rng.randrange(0, 4)):
            start = rng.choice([0, 512, 4096, rng.randrange(1 << 15)])
            length = rng.choice([0, 512, 4096, rng.randrange(1, 8192)])
            views.append(whole[start : start + length])
        for align in (1, 512, 4096):
            expect = file_mod._misaligned_py(views, align) if align > 1 else False
            assert file_mod.misaligned(views, align) is expect
    assert file_mod._uring.misaligned([memoryview(bytearray(1024))[::2]], 512)  # strided
    with pytest.raises(ValueError, match="power of two"):
        file_mod._uring.misaligned([], 3)
    with pytest.raises(TypeError):
        file_mod._uring.misaligned([object()], 512)
    for view in views:
        view.release()
    whole.release()
    area.close()


@needs_uring
def test_a_completion_waiting_for_an_op_reaped_in_the_same_batch() -> None:
    """Two ops complete in one batch; the first one's done waits for the second: the
    nested reap completes the rest of the batch instead of waiting in the kernel for a
    CQE already taken (which would never come)."""
    r, w = os.pipe()
    engine = UringEngine(4)
    try:
        os.write(w, b"12345678")  # both reads complete at submission: one batch
        order: list[str] = []
        second_done = threading.Event()

        def first(result: int | BaseException) -> None:
            engine.poll_until(second_done.is_set)  # nested, on the leader
            order.append("first")

        def second(result: int | BaseException) -> None:
            order.append("second")
            second_done.set()

        engine.poll_begin()
        try:
            engine.submit(IoOp(IoKind.READV, r, 0, [memoryview(bytearray(4))]), first)
            engine.submit(IoOp(IoKind.READV, r, 0, [memoryview(bytearray(4))]), second)
            engine.poll_until(lambda: len(order) == 2)
        finally:
            engine.poll_end()
        assert order == ["second", "first"]
    finally:
        engine.close()
        os.close(r)
        os.close(w)


@needs_uring
def test_deferred_submissions_go_before_a_wait_a_flush_or_a_drop() -> None:
    """``submit(..., defer=True)`` only queues the SQE: reap() submits it before it
    waits (no reaper waits forever for a request the kernel never saw), flush()
    submits it, and a ring dropped with one queued submits it and waits for it."""
    from daxfs.block import _uring

    r, w = os.pipe()
    try:
        ring = _uring.Ring(4)
        buf = bytearray(4)
        os.write(w, b"abcd")
        ring.submit("a", _uring.READV, r, 0, [buf], 0, 0, True)
        assert ring.inflight == 1
        assert ring.reap() == [("a", 4)]
        assert bytes(buf) == b"abcd"
        ring.submit("b", _uring.NOP, -1, 0, (), 0, 0, True)
        ring.submit("c", _uring.NOP, -1, 0, (), 0, 0, True)
        ring.flush()
        got: list[tuple[Any, int]] = []
        while len(got) < 2:
            got.extend(ring.reap())
        assert sorted(got) == [("b", 0), ("c", 0)]
        ring.submit(None, _uring.READV, r, 0, [buf], 0, 0, True)
        os.write(w, b"wxyz")
        del ring
        gc.collect()
        assert bytes(buf) == b"wxyz"
        buf.extend(b"!")  # no export left
    finally:
        os.close(r)
        os.close(w)


@needs_uring
def test_end_io_chains_keep_their_depth_with_deferred_submission(tmp_path: Path) -> None:
    """Each read's end_io submits the next (on the leader: deferred, flushed when
    the batch is done): 400 reads at depth 8 all complete with the right bytes,
    and a synchronous read between them (a polling leader) still returns."""
    path = tmp_path / "d.img"
    size = 1 << 20
    data = random.Random(7).randbytes(size)
    path.write_bytes(data)
    with open_block(path, engine="io_uring", queue_depth=8) as dev:
        rng = random.Random(3)
        lock = threading.Lock()
        left = [400]
        bad: list[str] = []
        finished = threading.Event()

        def start() -> None:
            offset = rng.randrange(size // 4096) * 4096
            buf = mmap.mmap(-1, 4096)
            dev.submit_bio(Bio(BioOp.READ, offset >> 9, [buf], end_io=end_io, private=offset))

        def end_io(bio: Bio) -> None:
            offset = bio.private
            assert isinstance(offset, int)
            if bio.status is not None or bytes(bio.segments[0]) != data[offset : offset + 4096]:
                bad.append(f"offset {offset}: {bio.status}")
            with lock:
                left[0] -= 1
                more = left[0] >= 8 and bio.status is None
                if left[0] == 0:
                    finished.set()
            if more:
                start()

        for _ in range(8):
            start()
        probe = bytearray(4097)
        bounced = Bio(BioOp.READ, 0, [memoryview(probe)[1:]])  # misaligned: not inline
        assert dev._run(bounced) == 4096  # polled by this thread while the chain runs
        assert bytes(probe[1:]) == data[:4096]
        assert finished.wait(60)
        assert not bad, bad[:3]
        for _ in range(3000):  # the last bio is counted out after its end_io returned
            if dev.statistics()["inflight"] == 0:
                break
            threading.Event().wait(0.01)
        assert dev.statistics()["inflight"] == 0
