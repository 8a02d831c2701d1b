"""The C path of ``submit_bio`` (``_uring.BioRing``, ``FileBlockDevice.submit_bio``):
plain bios are taken and others are not; it agrees with the bio path (the
reference: the same device with ``_aio`` off) on results, errors and bytes;
errors and short transfers reach the future and ``end_io`` named; ``end_io``
runs on the reaper and may submit more; buffers are held exactly while the
kernel may use them; threads, slot waits, close, and the fault harness."""

from __future__ import annotations

import errno
import gc
import logging
import mmap
import os
import random
import threading
import time
import weakref
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daxfs.block import Bio, BioFlags, BioOp, open_block
from daxfs.block import uring as uring_mod
from daxfs.block.file import FileBlockDevice
from daxfs.errors import ClosedFile, InvalidArgument, IOFailure
from daxfs.testing.block_tests import pattern
from daxfs.testing.blockfaults import FaultyBlockDevice
from tests.block.regions import run_in_regions, submit_from, wait_for
from tests.block.test_uring import memory_grown

WHY_NOT = uring_mod.availability()
pytestmark = pytest.mark.skipif(bool(WHY_NOT), reason=f"io_uring unavailable: {WHY_NOT}")
SIZE = 1 << 20
BS = 4096


def _device(tmp: Path, name: str = "d.img", *, aio: bool = True, **kw: Any) -> FileBlockDevice:
    dev = open_block(tmp / name, SIZE, create=True, engine="io_uring", **kw)
    if not aio:
        reference(dev)
    return dev


def reference(dev: FileBlockDevice) -> None:
    """Turn the C path off: every bio takes the bio path (the reference)."""
    aio = dev._aio
    assert aio is not None
    dev._aio = None
    aio.shutdown()
    aio.close()


def _aligned(n: int, seed: int) -> mmap.mmap:
    buf = mmap.mmap(-1, n)
    buf[:] = pattern(n, seed)
    return buf


def _reapers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "daxfs-bio"]


def test_plain_bios_take_the_c_path_and_end_io_runs_on_its_reaper(tmp_path: Path) -> None:
    """Nobody waits in the bio's device: its end_io runs on the reaper thread."""
    before = len(_reapers())
    with _device(tmp_path) as dev:
        assert dev._aio is not None
        dev.write(0, _aligned(BS, 1))  # a synchronous helper: inline, no reaper
        assert len(_reapers()) == before
        data = _aligned(BS, 2)
        seen: list[Any] = []
        ended = threading.Event()

        def end_io(bio: Bio) -> None:
            name = threading.current_thread().name
            seen.append((name, bio.status, bio.done, bytes(bio.segments[0][:8])))
            ended.set()

        w = Bio(BioOp.WRITE, 8, [data], flags=BioFlags.FUA, end_io=end_io)
        dev.submit_bio(w)
        assert ended.wait(30)  # (not w.wait(): that would reap in this thread)
        assert w.wait() == BS
        assert seen == [("daxfs-bio", None, True, pattern(BS, 2)[:8])]
        wait_for(lambda: w.segments == [])  # dropped after end_io: no view outlives its bio
        assert len(_reapers()) == before + 1
        back = mmap.mmap(-1, BS)
        r = Bio(BioOp.READ, 8, [back])
        dev.submit_bio(r)
        assert r.future.result(30) == BS
        assert bytes(back) == pattern(BS, 2)
        assert r.future.result() == BS
        assert r.wait() == BS
        stats = dev.statistics()
        assert stats["async"] == 2
        assert stats["inflight"] == 0
        assert stats["errors"] == 0
        with pytest.raises(InvalidArgument, match="submitted already"):
            dev.submit_bio(r)  # not new: the bio path says so
        assert dev.statistics()["async"] == 2
    assert len(_reapers()) == before  # joined by close
    assert dev._aio is not None
    assert dev._aio.closed


def test_an_end_io_may_wait_for_a_bio_of_the_c_path(tmp_path: Path) -> None:
    """An end_io (on the reaper) that waits (``bio.wait()``) for another bio of the C
    path reaps nested instead of waiting for itself; another thread's wait sleeps
    until the reaper ends its bio (end_io on the reaper)."""
    with _device(tmp_path) as dev:
        dev.write(BS, _aligned(BS, 6))
        seen: list[bytes] = []
        ended = threading.Event()

        def end_io(bio: Bio) -> None:
            back = mmap.mmap(-1, BS)
            inner = Bio(BioOp.READ, BS >> 9, [back])
            dev.submit_bio(inner)
            inner.wait()
            seen.append(bytes(back))
            ended.set()

        outer = Bio(BioOp.READ, 0, [mmap.mmap(-1, BS)], end_io=end_io)
        dev.submit_bio(outer)
        assert outer.wait() == BS
        assert ended.wait(30)
        assert seen == [pattern(BS, 6)]
        assert dev.statistics()["async"] == 2
        ran_on: list[str] = []
        bio = Bio(
            BioOp.READ,
            0,
            [mmap.mmap(-1, BS)],
            end_io=lambda b: ran_on.append(threading.current_thread().name),
        )
        dev.submit_bio(bio)
        assert bio.wait() == BS
        wait_for(lambda: bool(ran_on))
        assert ran_on == ["daxfs-bio"]


@pytest.mark.parametrize("made", ["before", "after"])
def test_an_end_io_may_wait_for_a_future_of_the_c_path(tmp_path: Path, made: str) -> None:
    """An end_io (on the reaper) that waits on another bio's Future -- made before or
    after that bio's submission -- reaps nested (the Future's waiter is the BioRing)
    instead of waiting for itself, the thread that must resolve it (it hung forever
    with concurrent.futures.Future)."""
    with _device(tmp_path) as dev:
        dev.write(BS, _aligned(BS, 7))
        seen: list[Any] = []
        ended = threading.Event()

        def end_io(bio: Bio) -> None:
            back = mmap.mmap(-1, BS)
            inner = Bio(BioOp.READ, BS >> 9, [back])
            future = inner.future if made == "before" else None
            dev.submit_bio(inner)
            future = future or inner.future
            seen.append((future.result(), bytes(back), future.done()))
            ended.set()

        outer = Bio(BioOp.READ, 0, [mmap.mmap(-1, BS)], end_io=end_io)
        dev.submit_bio(outer)
        assert ended.wait(30), "the end_io waited for itself"
        assert outer.future.result(30) == BS
        assert seen == [(BS, pattern(BS, 7), True)]
        assert dev.statistics()["async"] == 2


def test_bios_the_c_path_does_not_take_go_the_bio_path(tmp_path: Path) -> None:
    """PREFLUSH, a plug, a bounce buffer, two segments, a split, no data, a bio
    past the end or unaligned, a write to a read-only device: the bio path, with
    its results and errors."""
    with _device(tmp_path) as dev:
        data = _aligned(BS, 3)

        def through(bio: Bio) -> Any:
            count = dev.statistics()["async"]
            dev.submit_bio(bio)
            try:
                result: Any = bio.wait()
            except OSError as exc:
                result = exc.errno
            assert dev.statistics()["async"] == count, bio
            return result

        assert through(Bio(BioOp.WRITE, 0, [data], flags=BioFlags.PREFLUSH)) == BS
        assert through(Bio(BioOp.WRITE, 8, [data[: BS // 2], data[BS // 2 :]])) == BS
        unaligned = bytearray(BS + 1)
        assert through(Bio(BioOp.READ, 0, [memoryview(unaligned)[1:]])) == BS
        assert bytes(unaligned[1:]) == pattern(BS, 3)
        assert through(Bio(BioOp.FLUSH)) == 0
        assert through(Bio(BioOp.WRITE_ZEROES, 16, size=BS)) == BS
        assert through(Bio(BioOp.READ, SIZE // 512, [mmap.mmap(-1, BS)])) == errno.EINVAL
        assert through(Bio(BioOp.READ, 0, [memoryview(mmap.mmap(-1, BS))[:100]])) == errno.EINVAL
        big = mmap.mmap(-1, 2 * dev.limits.max_bytes)
        with open_block(tmp_path / "big.img", 24 << 20, create=True, engine="io_uring") as b2:
            count = b2.statistics()["async"]
            bio = Bio(BioOp.READ, 0, [big])
            b2.submit_bio(bio)
            assert bio.wait() == len(big)
            assert b2.statistics()["async"] == count
            assert b2.statistics()["splits"] == 1
        with dev.plug():
            held = Bio(BioOp.WRITE, 24, [data])
            dev.submit_bio(held)
        assert held.wait() == BS
        assert dev.statistics()["async"] == 0
        assert dev.read(24 * 512, BS) == pattern(BS, 3)
    with open_block(tmp_path / "d.img", readonly=True, engine="io_uring") as ro:
        bio = Bio(BioOp.WRITE, 0, [data])
        ro.submit_bio(bio)
        with pytest.raises(OSError, match="read-only") as info:
            bio.wait()
        assert info.value.errno == errno.EROFS
        assert ro.statistics()["async"] == 0


ASYNC_OPS = st.lists(
    st.tuples(
        st.sampled_from(["read", "write", "write_fua", "write_preflush", "read2"]),
        st.integers(0, SIZE // 512 + 2),  # sector (past the end included)
        st.integers(0, 12),  # blocks of 512
        st.booleans(),  # aligned buffer
        st.sampled_from(["wait", "future", "end_io"]),
    ),
    min_size=1,
    max_size=25,
)


def _apply(
    dev: FileBlockDevice, i: int, op: str, sector: int, n: int, aligned: bool, how: str
) -> Any:
    """One bio of the random test: how it ended (bytes or error type, errno, text
    without the path) and what it read."""
    if op.startswith("read"):
        bufs = [(_aligned(n, 0) if aligned and n else bytearray(n))]
        if op == "read2" and n:
            bufs = [bytearray(1), *bufs]
        segments: list[Any] = bufs
    else:
        segments = [_aligned(n, i) if aligned and n else bytearray(pattern(n, i))]
        bufs = []
    flags = {"write_fua": BioFlags.FUA, "write_preflush": BioFlags.PREFLUSH}.get(op, BioFlags.NONE)
    op_ = BioOp.READ if op.startswith("read") else BioOp.WRITE
    ended: list[Any] = []
    done = threading.Event()

    def end_io(bio: Bio) -> None:
        ended.append(bio.status)
        done.set()

    bio = Bio(op_, sector, segments, flags=flags, end_io=end_io if how == "end_io" else None)
    dev.submit_bio(bio)
    try:
        if how == "future":
            got: Any = ("ok", bio.future.result(30))
        elif how == "end_io":
            assert done.wait(30)
            got = ("ok", bio.wait())
        else:
            got = ("ok", bio.wait(30))
    except OSError as exc:
        got = (type(exc).__name__, exc.errno, str(exc).replace(dev.name, "DEV"))
    if how == "end_io":
        assert len(ended) == 1
        assert (ended[0] is None) == (got[0] == "ok")
    return got, b"".join(bytes(b) for b in bufs)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=ASYNC_OPS)
def test_the_c_path_agrees_with_the_bio_path(ops: list[tuple[str, int, int, bool, str]]) -> None:
    """Random bios (reads of one or two segments, writes with FUA, PREFLUSH or
    neither, aligned or not, in range or not, waited for by ``wait``, a Future or
    ``end_io``): the device with the C path and the same device with it off give
    the same outcomes (error texts included) and bytes, and count the same errors."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        with _device(d, "c.img") as ours, _device(d, "r.img", aio=False) as ref:
            for i, args in enumerate(ops):
                assert _apply(ours, i, *args) == _apply(ref, i, *args), args
            assert ours.statistics()["errors"] == ref.statistics()["errors"]
            assert ours.read(0, SIZE) == ref.read(0, SIZE)


def _outcome(dev: FileBlockDevice, bio: Bio) -> Any:
    ended = threading.Event()
    statuses: list[Any] = []

    def end_io(b: Bio) -> None:
        statuses.append(b.status)
        ended.set()

    bio.end_io = end_io
    dev.submit_bio(bio)
    assert ended.wait(30)
    with pytest.raises(OSError, match=r".") as info:
        bio.future.result(30)
    assert statuses == [info.value]
    return info.value


@pytest.mark.parametrize("aio", [True, False], ids=["c_path", "bio_path"])
def test_kernel_errors_and_short_transfers_reach_future_and_end_io_named(
    tmp_path: Path, aio: bool
) -> None:
    """EIO from the kernel (the descriptor swapped for /proc/self/mem, whose page 0
    is never mapped), a read past the end of a shrunk file (short: IOFailure naming
    the sector), a read cut in the middle of a block (continued, then short): the
    same errors through the C path and the bio path, counted once each."""
    path = tmp_path / "d.img"
    with _device(tmp_path, aio=aio) as dev:
        dev.write(0, _aligned(SIZE, 4))
        errors = dev.statistics()["errors"]
        mem = os.open("/proc/self/mem", os.O_RDONLY)
        good_fd, dev.fd = dev.fd, mem
        try:
            exc = _outcome(dev, Bio(BioOp.READ, 0, [mmap.mmap(-1, BS)]))
        finally:
            dev.fd = good_fd
            os.close(mem)
        assert exc.errno == errno.EIO
        assert isinstance(exc, IOFailure)
        assert f"read of 4096 bytes at sector 0 of {path}" in str(exc)
        assert "preadv at offset 0" in str(exc.__cause__)
        os.truncate(path, SIZE // 2)
        sector = SIZE // 2 // 512 + 8
        exc = _outcome(dev, Bio(BioOp.READ, sector, [mmap.mmap(-1, BS)]))
        assert isinstance(exc, IOFailure)
        assert f"short read: 0 of 4096 bytes at sector {sector} of {path}" in str(exc)
        os.truncate(path, SIZE // 2 - BS // 2)
        back = mmap.mmap(-1, BS)
        exc = _outcome(dev, Bio(BioOp.READ, SIZE // 2 // 512 - 8, [back]))
        assert "short read: 2048 of 4096 bytes" in str(exc)
        assert bytes(back[: BS // 2]) == pattern(SIZE, 4)[SIZE // 2 - BS : SIZE // 2 - BS // 2]
        stats = dev.statistics()
        assert stats["errors"] == errors + 3
        assert stats["inflight"] == 0
        assert stats["async"] == (3 if aio else 0)
        assert dev.read(0, BS) == pattern(SIZE, 4)[:BS]  # the device still works


def test_an_end_io_that_raises_is_logged_and_the_device_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with _device(tmp_path) as dev:

        def end_io(bio: Bio) -> None:
            raise ValueError("a bug in the caller's end_io")

        bio = Bio(BioOp.WRITE, 0, [_aligned(BS, 5)], end_io=end_io)
        with caplog.at_level(logging.ERROR, logger="daxfs.block"):
            dev.submit_bio(bio)
            assert bio.future.result(30) == BS
            wait_for(lambda: bool(caplog.records))
        assert "end_io of <Bio write sector 0" in caplog.records[0].getMessage()
        assert caplog.records[0].exc_info is not None
        assert caplog.records[0].exc_info[0] is ValueError
        assert dev.read(0, BS) == pattern(BS, 5)
        assert dev.statistics()["inflight"] == 0


def _chain(path: Path, data: bytes, defer: bool) -> None:
    with open_block(path, engine="io_uring", queue_depth=8) as dev:
        assert dev._aio is not None
        dev._aio.defer = defer
        rng = random.Random(3)
        lock = threading.Lock()
        left = [600]
        bad: list[str] = []
        finished = threading.Event()

        def start() -> None:
            offset = rng.randrange(SIZE // BS) * BS
            buf = mmap.mmap(-1, BS)
            dev.submit_bio(Bio(BioOp.READ, offset >> 9, [buf], end_io=end_io, private=offset))

        def end_io(bio: Bio) -> None:
            offset = bio.private
            assert isinstance(offset, int)
            ok = bio.status is None and bytes(bio.segments[0]) == data[offset : offset + BS]
            if not ok or threading.current_thread().name != "daxfs-bio":
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
        assert dev.read(BS, BS) == data[BS : 2 * BS]
        assert finished.wait(60)
        assert not bad, bad[:3]
        wait_for(lambda: dev.statistics()["inflight"] == 0)  # counted out after end_io
        assert dev.statistics()["async"] == 600


@pytest.mark.parametrize("defer", [True, False], ids=["deferred", "at_once"])
def test_end_io_chains_run_on_the_reaper_every_byte_checked(tmp_path: Path, defer: bool) -> None:
    """Each read's end_io submits the next (queued on the reaper and submitted with
    its next wait, or at once with ``defer`` off): 600 reads at depth 8, every byte
    checked, a synchronous read from this thread between them."""
    path = tmp_path / "d.img"
    data = random.Random(7).randbytes(SIZE)
    path.write_bytes(data)
    _chain(path, data, defer)


def test_buffers_are_held_while_in_flight_and_released_after(tmp_path: Path) -> None:
    """A bio in flight (a read of a pipe) keeps its bytearray exported: it cannot be
    resized under the kernel; once ended it can; 3000 bios leave no memory."""
    r, w = os.pipe()
    with _device(tmp_path, direct=False) as dev:  # buffered: a bytearray is plain
        buf = bytearray(BS)
        bio = Bio(BioOp.READ, 0, [buf])
        submit_from(dev, r, bio)
        assert dev.statistics()["async"] == 1
        del bio.segments  # the caller drops its own reference: the ring still holds it
        bio.segments = []
        with pytest.raises(BufferError):
            buf.extend(b"x")
        os.write(w, b"p" * BS)
        assert bio.wait(30) == BS
        assert bytes(buf) == b"p" * BS
        buf.extend(b"x")  # released

        def many(n: int) -> None:
            bios = [Bio(BioOp.READ, (i % 64) * 8, [bytearray(BS)]) for i in range(n)]
            for b in bios:
                dev.submit_bio(b)
            for b in bios:
                assert b.wait(30) == BS

        many(200)
        grown = memory_grown(lambda: many(3000))
        assert grown < 64 << 10, f"{grown} bytes left after 3000 bios"
    os.close(r)
    os.close(w)


def test_close_waits_for_bios_in_flight_then_refuses(tmp_path: Path) -> None:
    """close() refuses new bios on the C path and waits for one blocked in the
    kernel (a pipe's read); the bio ends whole, the reaper is joined, later bios
    fail with EBADF through their futures."""
    r, w = os.pipe()
    dev = _device(tmp_path)
    buf = mmap.mmap(-1, BS)
    bio = Bio(BioOp.READ, 0, [buf])
    submit_from(dev, r, bio)
    aio = dev._aio
    assert aio is not None
    assert aio.inflight == 1
    closer = threading.Thread(target=dev.close)
    closer.start()
    wait_for(lambda: aio.closed)
    time.sleep(0.05)
    assert closer.is_alive()  # waiting for the read
    assert not bio.done
    os.write(w, b"q" * BS)
    closer.join(30)
    assert not closer.is_alive()
    assert bio.wait() == BS
    assert bytes(buf) == b"q" * BS
    assert dev.closed
    assert aio.inflight == 0
    assert not _reapers()
    late = Bio(BioOp.READ, 0, [buf])
    dev.submit_bio(late)
    with pytest.raises(ClosedFile):
        late.future.result(30)
    aio.serve()  # a closed BioRing serves no more: returns at once
    os.close(r)
    os.close(w)


def test_a_bio_waiting_for_a_slot_is_already_submitted(tmp_path: Path) -> None:
    """Queue depth 1, its slot held by a read of a pipe: a bio submitted by another
    thread waits for the slot, and is submitted already while it waits (the same bio
    submitted again is refused, not run twice); then both end whole."""
    r, w = os.pipe()
    with _device(tmp_path, queue_depth=1) as dev:
        first = Bio(BioOp.READ, 0, [mmap.mmap(-1, BS)])
        submit_from(dev, r, first)
        second = Bio(BioOp.READ, 8, [mmap.mmap(-1, BS)])
        submitter = threading.Thread(target=dev.submit_bio, args=(second,))
        submitter.start()
        wait_for(lambda: second._state == "submitted")
        time.sleep(0.05)
        assert submitter.is_alive()  # waiting for the slot
        with pytest.raises(InvalidArgument, match="submitted already"):
            dev.submit_bio(second)
        os.write(w, b"s" * BS)
        submitter.join(30)
        assert first.wait(30) == BS
        assert second.wait(30) == BS
        assert dev.statistics()["async"] == 2
    os.close(r)
    os.close(w)


def test_a_device_dropped_unclosed_goes_with_its_last_reference(tmp_path: Path) -> None:
    """The BioRing calls the device back weakly: a device dropped without close() is
    freed by reference counting (no cycle through its C path), and its reaper ends."""
    before = len(_reapers())
    dev = _device(tmp_path)
    bio = Bio(BioOp.READ, 0, [mmap.mmap(-1, BS)])
    dev.submit_bio(bio)
    assert bio.wait() == BS
    assert len(_reapers()) == before + 1
    fd = dev.fd
    ref = weakref.ref(dev)
    gc.disable()
    try:
        del dev
        assert ref() is None
    finally:
        gc.enable()
    wait_for(lambda: len(_reapers()) == before)
    os.close(fd)  # (a device dropped unclosed keeps its descriptor, as before)


def test_close_from_end_io_is_refused(tmp_path: Path) -> None:
    with _device(tmp_path) as dev:
        got: list[BaseException] = []
        done = threading.Event()

        def end_io(bio: Bio) -> None:
            try:
                dev.close()
            except RuntimeError as exc:
                got.append(exc)
            done.set()

        dev.submit_bio(Bio(BioOp.READ, 0, [mmap.mmap(-1, BS)], end_io=end_io))
        assert done.wait(30)
        assert "from a completion" in str(got[0])


def test_threads_with_slot_waits_every_byte_checked_then_close(tmp_path: Path) -> None:
    """Six threads on a queue depth of 2 (they wait for slots), each writing and
    reading its own region by bios (end_io, futures, wait), every byte checked;
    then the device closes under them: each bio ends whole or with EBADF."""
    dev = _device(tmp_path, queue_depth=2)

    def work(k: int, base: int, model: bytearray, stop: threading.Event) -> None:
        rng = random.Random(k)
        for i in range(100_000):
            if stop.is_set() and i > 50:
                return
            block = rng.randrange(len(model) // BS)
            offset = base + block * BS
            write = rng.random() < 0.5
            buf = _aligned(BS, k * 1_000_000 + i) if write else mmap.mmap(-1, BS)
            flags = BioFlags.FUA if write and i % 5 == 0 else BioFlags.NONE
            bio = Bio(BioOp.WRITE if write else BioOp.READ, offset >> 9, [buf], flags=flags)
            dev.submit_bio(bio)
            try:
                if i % 2:
                    bio.future.result(30)
                else:
                    bio.wait(30)
            except OSError as exc:
                if exc.errno != errno.EBADF or not stop.is_set():
                    raise
                return
            if write:
                model[block * BS : (block + 1) * BS] = buf
            else:
                assert bytes(buf) == model[block * BS : (block + 1) * BS]

    run_in_regions(
        work, 6, SIZE // 8, until=lambda: dev.statistics()["async"] > 1500, close=dev.close
    )
    assert dev.statistics()["inflight"] == 0
    assert not _reapers()


def _ended(dev: FaultyBlockDevice, bio: Bio) -> int:
    """0 if ``bio`` succeeded, else its errno; its end_io saw the same status."""
    ended = threading.Event()
    statuses: list[Any] = []

    def end_io(b: Bio) -> None:
        statuses.append(b.status)
        ended.set()

    bio.end_io = end_io
    dev.submit_bio(bio)
    assert ended.wait(30)
    if statuses == [None]:
        assert bio.future.result(30) == bio.size
        return 0
    with pytest.raises(OSError, match=r".") as info:
        bio.future.result(30)
    assert statuses == [info.value]
    return info.value.errno or -1


@pytest.mark.parametrize("kind", ["write", "read"])
@pytest.mark.parametrize("short", [False, True], ids=["eio", "short"])
def test_the_fault_harness_runs_on_the_c_path(tmp_path: Path, kind: str, short: bool) -> None:
    """FaultyBlockDevice over an io_uring device forwards each request as a plain
    bio, which the inner device takes on the C path: the n-th request fails (EIO)
    or is cut short, the error reaches the outer bio's future and end_io, and
    nothing else changes (a short write wrote exactly its first half)."""
    home = 16 * BS  # where the bios of the test write
    for n in (1, 2, 3):
        inner = _device(tmp_path, f"f{n}.img")
        dev = FaultyBlockDevice(inner)
        for i in range(3):
            dev.write(i * 2 * BS, _aligned(2 * BS, 10 * n + i))
        async_before = inner.statistics()["async"]
        dev.arm(kind, n, short=short)
        outcomes = []
        for i in range(3):
            if kind == "write":
                bio = Bio(BioOp.WRITE, (home + i * 2 * BS) >> 9, [_aligned(2 * BS, 99)])
            else:
                bio = Bio(BioOp.READ, i * 2 * BS >> 9, [mmap.mmap(-1, 2 * BS)])
            outcomes.append(_ended(dev, bio))
        assert outcomes == [errno.EIO if i == n - 1 else 0 for i in range(3)]
        assert inner.statistics()["async"] - async_before == 2 + short
        dev.disarm()
        for i in range(3):
            assert dev.read(i * 2 * BS, 2 * BS) == pattern(2 * BS, 10 * n + i)
            if kind == "write":
                got = dev.read(home + i * 2 * BS, 2 * BS)
                if i != n - 1:
                    assert got == pattern(2 * BS, 99)
                elif short:
                    assert got == pattern(2 * BS, 99)[:BS] + bytes(BS)
                else:
                    assert got == bytes(2 * BS)
        dev.close()
