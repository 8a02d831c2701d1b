"""The synchronous fast path of the io_uring engine: private rings (``Ring.rw``,
``Ring.rw_batch``), ``UringEngine.transfer`` / ``run`` / ``run_batch``, and
``FileBlockDevice``'s inline bios and ``readinto_many`` -- that they are taken,
agree with the reference paths, report errors and short transfers named, hold
buffers only while the kernel may use them, and survive threads and close."""

from __future__ import annotations

import errno
import mmap
import os
import random
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daxfs.block import Bio, BioFlags, BioOp, IoKind, IoOp, open_block
from daxfs.block import uring as uring_mod
from daxfs.block.engine import run_op
from daxfs.block.file import FileBlockDevice
from daxfs.block.uring import UringEngine
from daxfs.errors import ClosedFile, IOFailure
from daxfs.testing.block_tests import pattern
from tests.block.regions import run_in_regions, wait_for
from tests.block.test_uring import memory_grown

WHY_NOT = uring_mod.availability()
pytestmark = pytest.mark.skipif(bool(WHY_NOT), reason=f"io_uring unavailable: {WHY_NOT}")
SIZE = 1 << 20
BS = 4096


def _ring(entries: int = 4) -> Any:
    from daxfs.block import _uring

    return _uring.Ring(entries)


# -- the C private rings --------------------------------------------------------------------


def test_rw_and_rw_batch_reject_bad_input_before_any_sqe() -> None:
    from daxfs.block import _uring

    ring = _ring()
    r, w = os.pipe()
    try:
        buf = bytearray(16)
        bad_rw: list[tuple[Any, ...]] = [
            (_uring.NOP, r, 0, [buf], 0),  # not READV/WRITEV
            (99, r, 0, [buf], 0),
            (_uring.READV, -1, 0, [buf], 0),  # negative fd
            (_uring.READV, r, -1, [buf], 0),  # negative offset
            (_uring.READV, r, 0, [b"read-only"], 0),
            (_uring.READV, r, 0, [memoryview(bytearray(8))[::2]], 0),  # strided
            (_uring.WRITEV, w, 0, [object()], 0),
            (_uring.WRITEV, w, 0, 5, 0),
            (_uring.WRITEV, w, 0, [b"x"] * (_uring.IOV_MAX + 1), 0),
        ]
        for args in bad_rw:
            with pytest.raises((ValueError, TypeError, BufferError, OSError)):
                ring.rw(*args)
        bad_batch: list[tuple[Any, ...]] = [
            (_uring.FDATASYNC, r, [(0, buf)], 0, 4),
            (_uring.READV, -1, [(0, buf)], 0, 4),
            (_uring.READV, r, [(0, buf)], 0, 0),  # depth
            (_uring.READV, r, [(-1, buf)], 0, 4),
            (_uring.READV, r, [(0, buf), (0, b"read-only")], 0, 4),
            (_uring.READV, r, [(0, buf), [0, buf]], 0, 4),  # not a tuple
            (_uring.READV, r, [(0, buf, 1)], 0, 4),
            (_uring.READV, r, 7, 0, 4),
        ]
        for args in bad_batch:
            with pytest.raises((ValueError, TypeError, BufferError, OSError)):
                ring.rw_batch(*args)
        buf.extend(b"x")  # no buffer stayed exported
        assert ring.sync_calls == 0
        assert ring.private_rings == 0  # nothing reached a ring
    finally:
        ring.close()
        os.close(r)
        os.close(w)


def test_rw_waits_for_its_completion_and_close_refuses_meanwhile() -> None:
    """A read of a pipe blocks in the kernel: the buffer stays exported, close()
    refuses (EBUSY), the shared ring is not involved; the data arrives, all is released."""
    from daxfs.block import _uring

    ring = _ring()
    r, w = os.pipe()
    buf = bytearray(16)
    got: list[int] = []
    try:
        reader = threading.Thread(target=lambda: got.append(ring.rw(_uring.READV, r, 0, [buf], 0)))
        reader.start()
        wait_for(lambda: ring.sync_calls == 1)
        with pytest.raises(BufferError):
            buf.extend(b"x")
        with pytest.raises(OSError, match="synchronous call") as info:
            ring.close()
        assert info.value.errno == errno.EBUSY
        assert ring.inflight == 0  # not on the shared ring
        os.write(w, b"q" * 16)
        reader.join(30)
        assert got == [16]
        assert bytes(buf) == b"q" * 16
        buf.extend(b"x")
        assert ring.sync_calls == 0
        assert ring.private_rings == 1  # pooled for the next call
        ring.close()
        assert ring.private_rings == 0
        with pytest.raises(OSError, match="closed") as closed:
            ring.rw(_uring.READV, r, 0, [bytearray(4)], 0)
        assert closed.value.errno == errno.EBADF
        with pytest.raises(OSError, match="closed"):
            ring.rw_batch(_uring.READV, r, [(0, bytearray(4))], 0, 2)
    finally:
        ring.close()
        os.close(r)
        os.close(w)


def test_rw_batch_gives_each_items_result(tmp_path: Path) -> None:
    """Per item: the bytes, 0 past the end of file, -errno for an item the kernel
    refuses (O_DIRECT at an unaligned offset), in item order; more items than the
    depth are refilled from the completions."""
    from daxfs.block import _uring

    path = tmp_path / "f"
    data = pattern(64 * BS, 3)
    path.write_bytes(data)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    except OSError as exc:
        pytest.skip(f"no O_DIRECT here: {exc}")
    ring = _ring(4)
    try:
        bufs = [mmap.mmap(-1, BS) for _ in range(40)]
        items = [((i * 7 % 64) * BS, bufs[i]) for i in range(40)]
        items[5] = (64 * BS, bufs[5])  # at the end of file
        items[9] = (BS + 1, bufs[9])  # unaligned
        res = ring.rw_batch(_uring.READV, fd, items, 0, 8)
        assert res[5] == 0
        assert res[9] == -errno.EINVAL
        for i, (offset, buf) in enumerate(items):
            if i not in (5, 9):
                assert res[i] == BS
                assert bytes(buf) == data[offset : offset + BS]
        assert ring.rw_batch(_uring.READV, fd, [], 0, 8) == []
        assert ring.rw_batch(_uring.READV, fd, items[:3], 0, 1000) == [BS] * 3  # depth capped
    finally:
        ring.close()
        os.close(fd)


def test_private_rings_leave_no_buffer_or_memory_behind(tmp_path: Path) -> None:
    from daxfs.block import _uring

    path = tmp_path / "f"
    path.write_bytes(bytes(1 << 16))
    fd = os.open(path, os.O_RDWR)
    ring = _ring(4)
    try:
        buf = bytearray(4096)
        base = sys.getrefcount(buf)
        assert ring.rw(_uring.WRITEV, fd, 0, [buf], 0) == 4096
        assert ring.rw_batch(_uring.READV, fd, [(0, buf), (4096, buf)], 0, 4) == [4096] * 2
        assert sys.getrefcount(buf) == base
        buf.extend(b"x")

        def loop(n: int) -> None:
            for i in range(n):
                ring.rw(_uring.READV, fd, (i % 16) * 512, [bytearray(512)], 0)
            ring.rw_batch(_uring.READV, fd, [(i * 512, bytearray(512)) for i in range(n)], 0, 4)

        loop(100)
        grown = memory_grown(lambda: loop(3000))
        assert grown < 64 << 10, f"{grown} bytes left after 6000 ops"
        assert ring.private_rings == 1
    finally:
        ring.close()
        os.close(fd)


# -- the engine's synchronous calls agree with run_op ---------------------------------------


def test_run_and_transfer_agree_with_run_op(tmp_path: Path) -> None:
    """Random reads and writes (multi-segment, past the end, RWF_DSYNC) through
    ``run`` and ``transfer`` leave the same bytes and results as ``run_op``."""
    a, b = tmp_path / "a", tmp_path / "b"
    start = pattern(1 << 16, 1)
    a.write_bytes(start)
    b.write_bytes(start)
    fa, fb = os.open(a, os.O_RDWR), os.open(b, os.O_RDWR)
    engine = UringEngine(4)
    rng = random.Random(7)
    try:
        for i in range(300):
            write = rng.random() < 0.5
            offset = rng.randrange(0, (1 << 16) + 2048)
            n = rng.randrange(1, 5000)
            flags = os.RWF_DSYNC if write and rng.random() < 0.3 else 0
            if write:
                data = pattern(n, i)
                ours = engine.run(IoOp(IoKind.WRITEV, fa, offset, [memoryview(data)], flags=flags))
                ref = run_op(IoOp(IoKind.WRITEV, fb, offset, [memoryview(data)], flags=flags))
            else:
                x, y = bytearray(n), bytearray(n)
                cut = rng.randrange(0, n)
                views = [v for v in (memoryview(x)[:cut], memoryview(x)[cut:]) if len(v)]
                if rng.random() < 0.5:
                    ours = engine.run(IoOp(IoKind.READV, fa, offset, views))
                else:
                    ours = engine.transfer(False, fa, offset, views, n)
                ref = run_op(IoOp(IoKind.READV, fb, offset, [memoryview(y)]))
                assert x == y
            assert ours == ref
        assert a.read_bytes() == b.read_bytes()
        with pytest.raises(ValueError, match="READV or WRITEV"):
            engine.run(IoOp(IoKind.FDATASYNC, fa))
    finally:
        engine.close()
        os.close(fa)
        os.close(fb)


def test_transfer_continues_partial_reads_and_refused_flags() -> None:
    """A pipe hands the read only what was written: continued until all arrived;
    an RWF flag the kernel refuses: written again without it, then synced."""
    r, w = os.pipe()
    engine = UringEngine(2)
    try:
        buf = bytearray(300)
        got: list[int] = []
        t = threading.Thread(
            target=lambda: got.append(engine.transfer(False, r, 0, [memoryview(buf)], 300))
        )
        t.start()
        for chunk in (b"a" * 120, b"b" * 100, b"c" * 80):
            time.sleep(0.05)
            os.write(w, chunk)
        t.join(30)
        assert got == [300]
        assert bytes(buf) == b"a" * 120 + b"b" * 100 + b"c" * 80
    finally:
        engine.close()
        os.close(r)
        os.close(w)


def test_run_with_refused_rw_flags_falls_back(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(bytes(4096))
    fd = os.open(path, os.O_RDWR)
    engine = UringEngine(2)
    try:
        assert engine.run(IoOp(IoKind.WRITEV, fd, 10, [memoryview(b"hello")], flags=1 << 30)) == 5
        got = engine.run_batch(IoKind.WRITEV, fd, [(20, memoryview(b"world"))], 1 << 30)
        assert got == [5]
        assert path.read_bytes()[10:25] == b"hello" + bytes(5) + b"world"
        ro = os.open(path, os.O_RDONLY)
        try:
            with pytest.raises(OSError, match=r"pwritev at offset 8") as info:
                engine.transfer(True, ro, 8, [memoryview(b"x")], 1)
            assert info.value.errno == errno.EBADF
            bad = engine.run_batch(IoKind.WRITEV, ro, [(0, memoryview(b"x"))])
            assert isinstance(bad[0], OSError)
            assert bad[0].errno == errno.EBADF
        finally:
            os.close(ro)
    finally:
        engine.close()
        os.close(fd)
    with pytest.raises(ClosedFile):
        engine.transfer(False, 0, 0, [memoryview(bytearray(1))], 1)
    with pytest.raises(ClosedFile):
        engine.run_batch(IoKind.READV, 0, [])


# -- the block device: the fast path is taken, and agrees with the reference -------------


def _device(tmp_path: Path, engine: str = "io_uring", name: str = "d.img") -> FileBlockDevice:
    return open_block(tmp_path / name, SIZE, create=True, engine=engine, queue_depth=8)


def test_the_fast_path_is_taken_only_where_it_applies(tmp_path: Path) -> None:
    with _device(tmp_path) as dev:
        aligned = mmap.mmap(-1, BS)
        aligned[:] = pattern(BS, 1)

        def inline() -> int:
            return dev.statistics()["inline"]

        dev.write(0, aligned)
        dev.write(BS, aligned, fua=True)
        back = mmap.mmap(-1, BS)
        assert dev.readinto(BS, back) == BS
        assert bytes(back) == bytes(aligned)
        assert inline() == 3
        before = inline()
        bio = Bio(BioOp.READ, 0, [mmap.mmap(-1, BS)])
        assert dev._run(bio) == BS  # a synchronous bio that fits
        assert inline() == before + 1
        before = inline()
        dev.submit_bio(Bio(BioOp.WRITE, 8, [aligned]))  # asynchronous: the engine
        dev.write(0, aligned)  # waits for nothing; ordering is the caller's
        preflush = Bio(BioOp.WRITE, 16, [aligned], flags=BioFlags.PREFLUSH)
        assert dev._run(preflush) == BS
        with dev.plug():
            dev.submit_bio(Bio(BioOp.WRITE, 24, [aligned]))
        assert inline() == before + 1  # only the plain write
        if dev.direct:
            before = inline()
            unaligned = bytearray(BS + 1)
            dev.readinto(0, memoryview(unaligned)[1:])  # a bounce buffer: the engine
            assert dev.statistics()["bounced"] >= 1
            assert inline() == before
        before = inline()
        assert dev.readinto_many([(0, mmap.mmap(-1, BS)), (BS, mmap.mmap(-1, BS))]) == [BS] * 2
        assert inline() == before + 2
    with open_block(tmp_path / "big.img", 24 << 20, create=True, engine="io_uring") as big:
        assert big.readinto(0, mmap.mmap(-1, big.limits.max_bytes * 2)) == 16 << 20
        stats = big.statistics()
        assert stats["inline"] == 0  # split: the engine
        assert stats["splits"] == 1
    with _device(tmp_path, "threads") as threads:
        threads.write(0, aligned)
        assert threads.statistics()["inline"] == 0


OPS = st.lists(
    st.tuples(
        st.sampled_from(["read", "write", "write_fua", "many", "bio"]),
        st.integers(0, SIZE // 512 + 2),  # sector (past the end included)
        st.integers(0, 12),  # blocks of 512
        st.booleans(),  # aligned buffer
        st.integers(0, 4),
    ),
    min_size=1,
    max_size=25,
)


def _buffer(n: int, aligned: bool, seed: int) -> Any:
    if aligned and n:
        buf = mmap.mmap(-1, n)
        buf[:] = pattern(n, seed)
        return buf
    return bytearray(pattern(n, seed))


def _apply(
    dev: FileBlockDevice, i: int, op: str, sector: int, n: int, aligned: bool, extra: int
) -> tuple[Any, bytes]:
    """One op of the random test: its outcome (result or error type and errno) and
    the bytes it read."""
    offset = sector * 512
    bufs = [_buffer(n, aligned, 0) for _ in range(extra + 1 if op == "many" else 1)]
    try:
        if op == "read":
            got: Any = dev.readinto(offset, bufs[0])
        elif op in ("write", "write_fua"):
            got = dev.write(offset, _buffer(n, aligned, i), fua=op == "write_fua")
            bufs = []
        elif op == "many":
            got = dev.readinto_many([((sector + k * 3) * 512, b) for k, b in enumerate(bufs)])
        else:
            got = dev._run(Bio(BioOp.READ, sector, [bufs[0]]))
        outcome: Any = ("ok", got)
    except OSError as exc:
        outcome = (type(exc).__name__, exc.errno)
    return outcome, b"".join(bytes(b) for b in bufs)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS)
def test_inline_paths_agree_with_the_thread_pool(
    ops: list[tuple[str, int, int, bool, int]],
) -> None:
    """Random reads, writes (FUA or not), batches and synchronous bios, aligned or
    not, in range or not: the io_uring device (fast paths) and the thread-pool
    device (the reference bios) give the same results and errors and the same bytes."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        with _device(d, "io_uring", "u.img") as ours, _device(d, "threads", "t.img") as ref:
            for i, (op, sector, blocks, aligned, extra) in enumerate(ops):
                args = (i, op, sector, blocks * 512, aligned, extra)
                assert _apply(ours, *args) == _apply(ref, *args), args
            assert ours.statistics()["errors"] == ref.statistics()["errors"]
            assert ours.read(0, SIZE) == ref.read(0, SIZE)


def test_short_transfers_and_kernel_errors_are_named(tmp_path: Path) -> None:
    """The file shrinks under the device: an inline read and a batch item past its
    new end fail with IOFailure naming the sector, as the bio path says it; a kernel
    error (the descriptor swapped for a read-only one) keeps its errno, named."""
    path = tmp_path / "d.img"
    with open_block(path, SIZE, create=True, engine="io_uring") as dev:
        dev.write(0, pattern(SIZE, 2))
        os.truncate(path, SIZE // 2)
        sector = SIZE // 2 // 512 + 8
        with pytest.raises(
            IOFailure, match=rf"short read: 0 of 4096 bytes at sector {sector} "
        ) as a:
            dev.readinto(sector * 512, mmap.mmap(-1, BS))
        bio = Bio(BioOp.READ, sector, [bytearray(BS)])  # the reference way
        dev.submit_bio(bio)
        with pytest.raises(IOFailure) as b:
            bio.wait()
        assert str(a.value) == str(b.value)
        good = mmap.mmap(-1, BS)
        with pytest.raises(IOFailure, match=rf"at sector {sector} "):
            dev.readinto_many([(0, good), (sector * 512, mmap.mmap(-1, BS))])
        assert bytes(good) == pattern(SIZE, 2)[:BS]
        errors = dev.statistics()["errors"]
        ro = os.open(path, os.O_RDONLY)
        good_fd, dev.fd = dev.fd, ro
        try:
            with pytest.raises(OSError, match=r"write of 4096 bytes at sector 8 of .*d\.img") as c:
                dev.write(8 * 512, mmap.mmap(-1, BS))
            assert c.value.errno == errno.EBADF
            assert dev.statistics()["errors"] == errors + 1
        finally:
            dev.fd = good_fd
            os.close(ro)
        wo = os.open(path, os.O_WRONLY)
        good_fd, dev.fd = dev.fd, wo
        try:
            with pytest.raises(OSError, match=r"read of 4096 bytes at sector 16 of .*d\.img") as e:
                dev.readinto_many([(16 * 512, mmap.mmap(-1, BS))])
            assert e.value.errno == errno.EBADF
        finally:
            dev.fd = good_fd
            os.close(wo)
    with pytest.raises(ClosedFile, match=r"read at sector 0: .*closed"):
        dev.readinto(0, mmap.mmap(-1, BS))
    with pytest.raises(ClosedFile):
        dev.readinto_many([(0, mmap.mmap(-1, BS))])


def test_threads_on_the_fast_paths_every_byte_checked_and_close(tmp_path: Path) -> None:
    """6 threads, each owning a region: inline writes (FUA or not), inline reads,
    batches and asynchronous bios at once, every byte read back checked; then the
    device closes while they run: each call returns whole or fails with EBADF."""
    dev = _device(tmp_path)

    def work(k: int, base: int, model: bytearray, stop: threading.Event) -> None:
        rng = random.Random(k)
        region = len(model)
        for i in range(10_000):
            if stop.is_set() and i > 200:
                return
            block = rng.randrange(region // BS)
            offset = base + block * BS
            choice = rng.random()
            try:
                if choice < 0.35:
                    data = _buffer(BS, True, k * 100_000 + i)
                    dev.write(offset, data, fua=rng.random() < 0.2)
                    model[block * BS : (block + 1) * BS] = data
                elif choice < 0.6:
                    buf = mmap.mmap(-1, BS)
                    dev.readinto(offset, buf)
                    assert bytes(buf) == model[block * BS : (block + 1) * BS]
                elif choice < 0.8:
                    blocks = [rng.randrange(region // BS) for _ in range(8)]
                    items = [(base + b * BS, mmap.mmap(-1, BS)) for b in blocks]
                    dev.readinto_many(items)
                    for b, (_, buf) in zip(blocks, items, strict=True):
                        assert bytes(buf) == model[b * BS : (b + 1) * BS]
                else:
                    buf = mmap.mmap(-1, BS)
                    bio = Bio(BioOp.READ, offset >> 9, [buf])
                    dev.submit_bio(bio)
                    bio.future.result(30)
                    assert bytes(buf) == model[block * BS : (block + 1) * BS]
            except OSError as exc:
                if exc.errno != errno.EBADF or not stop.is_set():
                    raise
                return

    run_in_regions(
        work, 6, SIZE // 8, until=lambda: dev.statistics()["inline"] > 600, close=dev.close
    )
    assert dev.statistics()["inflight"] == 0
    engine = dev._engine
    assert isinstance(engine, UringEngine)
    assert engine._ring.closed


# -- the C fast path of the device (_uring.Fast) and the private rings' setup flags -------


def test_private_ring_setup_flags_fall_back_when_refused(tmp_path: Path) -> None:
    """A kernel without COOP_TASKRUN refuses it (EINVAL from io_uring_setup, faked
    here): the private ring is set up without it and the I/O is the same."""
    from daxfs.block import _uring

    path = tmp_path / "f"
    data = pattern(2 * BS, 5)
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        for refused, expected in ((0, _uring.SETUP_COOP_TASKRUN), (_uring.SETUP_COOP_TASKRUN, 0)):
            old = _uring._refuse_setup_flags(refused)
            try:
                ring = _ring(4)
                buf = bytearray(BS)
                assert ring.rw(_uring.READV, fd, BS, [buf], 0) == BS
                assert bytes(buf) == data[BS:]
                assert ring.private_flags == expected
                bufs = [bytearray(BS) for _ in range(2)]
                items = [(0, bufs[0]), (BS, bufs[1])]
                assert ring.rw_batch(_uring.READV, fd, items, 0, 2) == [BS, BS]
                assert b"".join(bufs) == data
                ring.close()
            finally:
                _uring._refuse_setup_flags(old)
        # a refusal of every flag set a private ring tries is never faked for 0: the
        # shared ring (no flags) is set up whatever is refused
        old = _uring._refuse_setup_flags(0xFFFFFFFF)
        try:
            with open_block(tmp_path / "d.img", SIZE, create=True, engine="io_uring") as dev:
                dev.write(0, _buffer(BS, True, 3))
                back = mmap.mmap(-1, BS)
                assert dev.readinto(0, back) == BS
                assert bytes(back) == pattern(BS, 3)
                assert dev._engine._ring.private_flags == 0  # type: ignore[attr-defined]
        finally:
            _uring._refuse_setup_flags(old)
    finally:
        os.close(fd)


CASES = st.tuples(
    st.one_of(
        st.integers(-2, SIZE // 512 + 3).map(lambda s: s * 512),
        st.integers(-10, SIZE + 10),
        st.sampled_from([True, 0.0, None]),
    ),
    st.sampled_from(["mmap", "bytearray", "bytes", "words", "strided", "2d", "offset1"]),
    st.integers(0, 10).map(lambda b: b * 512),
    st.booleans(),  # write
)


def _case_buffer(kind: str, n: int) -> Any:
    if kind == "mmap":
        return mmap.mmap(-1, n) if n else bytearray()
    if kind == "bytearray":
        return bytearray(n)
    if kind == "bytes":
        return bytes(n)
    if kind == "words":
        return memoryview(mmap.mmap(-1, max(n, 4))).cast("I")
    if kind == "strided":
        return memoryview(bytearray(2 * n))[::2]
    if kind == "2d":
        return memoryview(mmap.mmap(-1, max(n, 2))).cast("B", (2, max(n, 2) // 2))
    return memoryview(mmap.mmap(-1, n + BS))[1 : n + 1]


@settings(max_examples=300, deadline=None)
@given(case=CASES)
def test_fast_path_checks_agree_with_plain(case: tuple[Any, str, int, bool]) -> None:
    """``_uring.Fast`` takes exactly the requests the Python reference ``_plain``
    calls plain (None for the others, before any I/O), and gives all their bytes."""
    import tempfile

    offset, kind, n, write = case
    with (
        tempfile.TemporaryDirectory() as tmp,
        open_block(Path(tmp) / "d.img", SIZE, create=True, engine="io_uring") as dev,
    ):
        fast = dev._fast
        assert fast is not None
        buf = _case_buffer(kind, n)
        try:
            plain = dev._plain(offset, memoryview(buf), write)
        except TypeError:
            plain = False
        before = fast.count
        got = fast.write(dev.fd, offset, buf, 0) if write else fast.read(dev.fd, offset, buf)
        if plain:
            assert got == len(memoryview(buf).cast("B"))
            assert fast.count == before + 1
        else:
            assert got is None
            assert fast.count == before
        batch = fast.read_many(dev.fd, [(offset, buf)])
        if plain and not write:
            assert batch == [got]
        elif not write:
            assert batch is None
        assert fast.busy == 0


def test_fast_path_kernel_eio_and_short_reads_reach_the_caller(tmp_path: Path) -> None:
    """An EIO from the kernel (the descriptor swapped for /proc/self/mem, whose page
    0 is never mapped) fails readinto and readinto_many with EIO naming the sector
    and the path, counted once; a short read (the file shrunk) is IOFailure; the
    fast path's calls all ended (busy 0) and the device still works."""
    path = tmp_path / "d.img"
    with open_block(path, SIZE, create=True, engine="io_uring") as dev:
        fast = dev._fast
        assert fast is not None
        dev.write(0, _buffer(BS, True, 9))
        mem = os.open("/proc/self/mem", os.O_RDONLY)
        good_fd, dev.fd = dev.fd, mem
        try:
            errors = dev.statistics()["errors"]
            with pytest.raises(OSError, match=r"read of 4096 bytes at sector 0 of .*d\.img") as a:
                dev.readinto(0, mmap.mmap(-1, BS))
            assert a.value.errno == errno.EIO
            assert dev.statistics()["errors"] == errors + 1
            with pytest.raises(OSError, match=r"at sector 8 of .*d\.img") as b:
                dev.readinto_many([(8 * 512, mmap.mmap(-1, BS)), (0, mmap.mmap(-1, BS))])
            assert b.value.errno == errno.EIO
            assert dev.statistics()["errors"] == errors + 3
        finally:
            dev.fd = good_fd
            os.close(mem)
        assert fast.busy == 0
        os.truncate(path, SIZE - BS // 2)
        with pytest.raises(IOFailure, match=r"short read: 2048 of 4096 bytes"):
            dev.readinto(SIZE - BS, mmap.mmap(-1, BS))
        back = mmap.mmap(-1, BS)
        assert dev.readinto_many([(0, back)]) == [BS]
        assert bytes(back) == pattern(BS, 9)
        assert fast.busy == 0
        assert dev.statistics()["inflight"] == 0
    assert fast.closed
    with pytest.raises(RuntimeError):
        fast.release()  # nothing to end
    assert fast.read(good_fd, 0, mmap.mmap(-1, BS)) is None  # shut down: the caller's path


def test_close_waits_for_a_fast_path_call(tmp_path: Path) -> None:
    """close() shuts the fast path down and waits for a call blocked in the kernel
    (a pipe's read); the call returns its bytes, later ones fail EBADF."""
    r, w = os.pipe()
    dev = open_block(tmp_path / "d.img", SIZE, create=True, engine="io_uring")
    fast = dev._fast
    assert fast is not None
    got: list[Any] = []
    buf = mmap.mmap(-1, BS)
    reader = threading.Thread(target=lambda: got.append(fast.read(r, 0, buf)))
    reader.start()
    wait_for(lambda: fast.busy == 1)
    closer = threading.Thread(target=dev.close)
    closer.start()
    wait_for(lambda: fast.closed)
    assert closer.is_alive()  # waiting for the read
    os.write(w, b"z" * BS)
    reader.join(30)
    closer.join(30)
    assert not closer.is_alive()
    assert got == [BS]
    assert bytes(buf) == b"z" * BS
    assert dev.closed
    with pytest.raises(ClosedFile):
        dev.readinto(0, buf)
    os.close(r)
    os.close(w)
