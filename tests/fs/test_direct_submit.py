"""The lean asynchronous direct read (``File.submit_read`` -> ``DirectIO.submit_read_lean``):
one plain bio, no request object, its Future a ``LeanFuture`` resolved by the bio's
``end_io``.  Held to the request path (the reference: ``submit_read_lean`` turned
off) on random reads; every fallback taken where it must be; the range lock held
until completion (truncate waits, EAGAIN/EBUSY by the pins' rules); errors (EIO, a
short completion) reach the Future named, the range released; close waits for it;
on a real io_uring image it takes the device's C path (``_uring.BioRing``)."""

from __future__ import annotations

import errno
import os
import random
import re
import threading
from collections.abc import Iterator
from concurrent.futures import Future

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daxfs.block.future import LeanFuture
from daxfs.fs.direct import DirectIO, aligned_buffer
from daxfs.fs.filesystem import FileSystem
from daxfs.fs.layout import BLOCK_SIZE
from daxfs.fs.mount import mkfs, mount
from daxfs.testing.blockfaults import FaultyBlockDevice
from daxfs.testing.simblock import SimulatedBlockDevice

SIZE = 16 << 20
FILE_BLOCKS = 24
#: the size _file_with_data leaves: the end of file 100 bytes into the last block
FILE_SIZE = (FILE_BLOCKS - 1) * BLOCK_SIZE + 100


def pattern(n: int, seed: int) -> bytes:
    return bytes((i * 13 + seed) & 0xFF for i in range(n))


@pytest.fixture
def fs() -> Iterator[FileSystem]:
    disk = SimulatedBlockDevice(SIZE)
    mkfs(disk)
    with mount(disk, layout_timeout=0.2) as fs:
        yield fs


def _file_with_data(fs: FileSystem, path: str = "/f") -> tuple[object, bytes]:
    """A direct File of FILE_BLOCKS written blocks (one extent) + 100 bytes, its
    extent in the extent cache (a direct read done), and the file's bytes."""
    f = fs.open(path, "wb+", buffering=0, direct=True)
    data = pattern(FILE_BLOCKS * BLOCK_SIZE, 3)
    buf = aligned_buffer(len(data))
    buf[:] = data
    f.pwrite(buf, 0)
    f.truncate(FILE_SIZE)  # the end of file inside the last block
    # garbage on the disk past the end of file (media is untrusted: reads zero it)
    ext = next(iter(fs.maps.extents(fs.store, f.inode, 0)))  # type: ignore[attr-defined]
    last = (ext.pblk + FILE_BLOCKS - 1) * BLOCK_SIZE
    block = aligned_buffer(BLOCK_SIZE)
    bdev = fs.direct.bdev  # type: ignore[union-attr]
    bdev.readinto(last, block)
    block[100:] = b"\xab" * (BLOCK_SIZE - 100)
    bdev.write(last, block)
    f.preadinto(aligned_buffer(BLOCK_SIZE), 0)
    return f, data[: len(data) - BLOCK_SIZE + 100]


def _reference(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(DirectIO, "submit_read_lean", lambda self, *a, **k: None)


def test_the_lean_submit_read_is_taken_and_agrees_with_a_model(fs: FileSystem) -> None:
    f, model = _file_with_data(fs)
    stats = fs.direct.stats  # type: ignore[union-attr]
    lean = stats["lean_submits"]
    rng = random.Random(7)
    futures: list[tuple[Future[int], object, int, int]] = []
    for _ in range(200):
        n = rng.choice([512, BLOCK_SIZE, 3 * BLOCK_SIZE])
        pos = rng.randrange(0, len(model) - 1) // 512 * 512
        out = aligned_buffer(n)
        out[:] = b"\xee" * n
        futures.append((f.submit_read(pos, out), out, pos, n))  # type: ignore[attr-defined]
    for future, out, pos, n in futures:
        assert isinstance(future, LeanFuture)
        assert isinstance(future, Future)
        want = model[pos : pos + n]
        assert future.result(10) == len(want)
        assert bytes(out[: len(want)]) == want  # type: ignore[index]
        assert bytes(out[len(want) : -(-len(want) // 512) * 512]) == bytes(  # type: ignore[index]
            -(-len(want) // 512) * 512 - len(want)
        )  # zeroed past the end of file, to the sector
    assert stats["lean_submits"] == lean + 200
    assert not f.inode.layouts.ranges  # type: ignore[attr-defined]
    f.close()  # type: ignore[attr-defined]


def test_fallbacks_of_the_lean_submit_read_give_the_reference_answers(
    fs: FileSystem,
) -> None:
    """A cold inode, a hole, unwritten blocks, at or past the end of file, an
    unaligned offset or buffer, a read-only buffer: the request path, with its
    results and errors."""
    with fs.open("/g", "wb+", buffering=0) as b:  # buffered: no range lock made
        b.write(pattern(2 * BLOCK_SIZE, 4))
    with fs.open("/g", "rb+", buffering=0, direct=True) as f:
        stats = fs.direct.stats  # type: ignore[union-attr]
        lean = stats["lean_submits"]
        out = aligned_buffer(BLOCK_SIZE)
        assert f.submit_read(0, out).result(10) == BLOCK_SIZE  # cold
        assert bytes(out) == pattern(2 * BLOCK_SIZE, 4)[:BLOCK_SIZE]
        f.fallocate(8 * BLOCK_SIZE, BLOCK_SIZE, 0)
        f.truncate(10 * BLOCK_SIZE)
        for pos, want in [
            (4 * BLOCK_SIZE, bytes(BLOCK_SIZE)),  # a hole
            (8 * BLOCK_SIZE, bytes(BLOCK_SIZE)),  # unwritten
            (10 * BLOCK_SIZE, b""),  # at the end of file
            (64 * BLOCK_SIZE, b""),  # past it
        ]:
            out[:] = b"\xee" * BLOCK_SIZE
            assert f.submit_read(pos, out).result(10) == len(want)
            assert bytes(out[: len(want)]) == want
        assert stats["lean_submits"] == lean
        f.preadinto(out, BLOCK_SIZE)  # the extent cache holds block 1's extent again
        assert f.submit_read(BLOCK_SIZE, out).result(10) == BLOCK_SIZE  # now lean
        assert stats["lean_submits"] == lean + 1
        with pytest.raises(OSError, match="offset 100") as bad:
            f.submit_read(100, out)
        assert bad.value.errno == errno.EINVAL
        with pytest.raises(OSError, match="buffer address") as bad:
            f.submit_read(0, memoryview(out)[1:513])
        assert bad.value.errno == errno.EINVAL
        with pytest.raises(TypeError):
            f.submit_read(0, bytes(BLOCK_SIZE))
        with pytest.raises(TypeError):
            f.submit_read("0", out)  # type: ignore[arg-type]
        with pytest.raises(OSError, match="negative") as neg:
            f.submit_read(-512, out)
        assert neg.value.errno == errno.EINVAL
        assert stats["lean_submits"] == lean + 1
    with (
        fs.open("/g", "wb", buffering=0, direct=True) as w,
        pytest.raises(OSError, match="reading") as wo,
    ):
        w.submit_read(0, aligned_buffer(BLOCK_SIZE))
    assert wo.value.errno == errno.EBADF


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    reads=st.lists(
        st.tuples(
            st.integers(0, FILE_BLOCKS * 8 + 8),  # in sectors
            st.sampled_from([512, 1024, BLOCK_SIZE, 2 * BLOCK_SIZE, 3 * BLOCK_SIZE, 100]),
            st.integers(0, 3),  # buffer offset (0: aligned)
        ),
        min_size=1,
        max_size=12,
    )
)
def test_lean_and_reference_submit_read_agree(
    fs: FileSystem, monkeypatch: pytest.MonkeyPatch, reads: list[tuple[int, int, int]]
) -> None:
    """The same reads through the lean path and through the request path (the
    reference) give the same results, errors and bytes."""
    if not fs.exists("/h"):
        f, _ = _file_with_data(fs, "/h")
        f.close()  # type: ignore[attr-defined]
    outcomes = []
    for lean in (True, False):
        with monkeypatch.context() as m:
            if not lean:
                _reference(m)
            with fs.open("/h", "rb", buffering=0, direct=True) as f:
                f.preadinto(aligned_buffer(BLOCK_SIZE), 0)  # the extent cache
                stats = fs.direct.stats  # type: ignore[union-attr]
                lean_before = stats["lean_submits"]
                got = []
                for sector, n, shift in reads:
                    raw = aligned_buffer(n + BLOCK_SIZE)
                    raw[:] = b"\xee" * len(raw)
                    view = memoryview(raw)[shift * 256 : shift * 256 + n]
                    try:
                        got.append(("ok", f.submit_read(sector * 512, view).result(10)))
                    except OSError as exc:
                        text = re.sub(r"0x[0-9a-f]+", "ADDRESS", str(exc))
                        got.append(("error", exc.errno, text))
                    got.append(("bytes", bytes(raw)))
                    view.release()
                outcomes.append(got)
                taken = stats["lean_submits"] - lean_before
                if not lean:
                    assert taken == 0
                elif reads[0][2] == 0 and reads[0][1] % 512 == 0 and reads[0][0] * 512 < FILE_SIZE:
                    assert taken >= 1  # (the first read, aligned, starting before EOF: lean)
    assert outcomes[0] == outcomes[1]


@pytest.mark.parametrize("short", [False, True])
def test_a_failed_lean_read_reaches_the_future_named_and_releases_its_range(
    short: bool,
) -> None:
    disk = SimulatedBlockDevice(SIZE)
    mkfs(disk)
    faulty = FaultyBlockDevice(disk)
    with mount(faulty, layout_timeout=0.2) as fs:
        f, model = _file_with_data(fs)
        stats = fs.direct.stats  # type: ignore[union-attr]
        lean, failed = stats["lean_submits"], stats["failed"]
        faulty.arm("read", 1, short=short)
        future = f.submit_read(0, aligned_buffer(3 * BLOCK_SIZE))  # type: ignore[attr-defined]
        with pytest.raises(OSError, match="/f") as info:
            future.result(10)
        assert info.value.errno == errno.EIO
        assert stats["lean_submits"] == lean + 1
        assert stats["failed"] == failed + 1
        faulty.disarm()
        assert not f.inode.layouts.ranges  # type: ignore[attr-defined]
        out = aligned_buffer(BLOCK_SIZE)
        assert f.submit_read(BLOCK_SIZE, out).result(10) == BLOCK_SIZE  # type: ignore[attr-defined]
        assert bytes(out) == model[BLOCK_SIZE : 2 * BLOCK_SIZE]
        f.truncate(BLOCK_SIZE, nowait=True)  # type: ignore[attr-defined]
        f.close()  # type: ignore[attr-defined]


def test_a_lean_read_in_flight_holds_its_range_and_close_waits_for_it() -> None:
    """Held in the device: a truncate of its range fails with EAGAIN (nowait) and
    EBUSY (layout_timeout), close waits; once released the read has every byte,
    then the truncate goes."""
    from tests.fs.direct_devices import HeldBlockDevice

    disk = SimulatedBlockDevice(SIZE)
    mkfs(disk)
    dev = HeldBlockDevice(disk)
    with mount(dev, layout_timeout=0.2) as fs:
        f, model = _file_with_data(fs)
        out = aligned_buffer(2 * BLOCK_SIZE)
        dev.hold(out)
        future = f.submit_read(BLOCK_SIZE, out)  # type: ignore[attr-defined]
        dev.wait_held(1)
        assert not future.done()
        assert fs.direct.stats["lean_submits"] >= 1  # type: ignore[union-attr]
        with pytest.raises(OSError, match="in progress") as again:
            f.truncate(BLOCK_SIZE, nowait=True)  # type: ignore[attr-defined]
        assert again.value.errno == errno.EAGAIN
        with pytest.raises(OSError, match="in progress") as busy:
            f.truncate(2 * BLOCK_SIZE)  # type: ignore[attr-defined]
        assert busy.value.errno == errno.EBUSY
        closer = threading.Thread(target=f.close)  # type: ignore[attr-defined]
        closer.start()
        closer.join(0.2)
        assert closer.is_alive()  # close waits for the read in flight
        dev.release()
        closer.join(10)
        assert not closer.is_alive()
        assert future.result(0) == 2 * BLOCK_SIZE
        assert bytes(out) == model[BLOCK_SIZE : 3 * BLOCK_SIZE]
        with fs.open("/f", "rb+", buffering=0, direct=True) as g:
            g.truncate(BLOCK_SIZE, nowait=True)
            assert g.stat().st_size == BLOCK_SIZE


def test_lean_reads_on_an_io_uring_image_take_the_c_path(tmp_path: os.PathLike[str]) -> None:
    """On a real io_uring device the lean read's bio goes ``_uring.BioRing`` (counted
    in ``statistics()['async']``), its Future may be waited for in another bio's
    ``end_io`` (on the reaper: reaps nested), and a read past a file cut short under
    the mount fails with EIO naming the file, its range released."""
    from daxfs.block import open_block
    from daxfs.block.uring import availability

    if availability():
        pytest.skip(f"io_uring unavailable: {availability()}")
    path = os.path.join(os.fspath(tmp_path), "img")
    mkfs(path, size=SIZE, dax="never")
    with open_block(path, engine="io_uring") as bdev, mount(bdev) as fs:
        f, model = _file_with_data(fs)
        before = bdev.statistics()["async"]
        bufs = [aligned_buffer(BLOCK_SIZE) for _ in range(16)]
        futures = [f.submit_read(k * BLOCK_SIZE, bufs[k]) for k in range(16)]  # type: ignore[attr-defined]
        assert [x.result(10) for x in futures] == [BLOCK_SIZE] * 16
        for k in range(16):
            assert bytes(bufs[k]) == model[k * BLOCK_SIZE : (k + 1) * BLOCK_SIZE]
        assert bdev.statistics()["async"] >= before + 16
        ext = next(iter(fs.maps.extents(fs.store, f.inode, 0)))  # type: ignore[attr-defined]
        os.truncate(path, ext.pblk * BLOCK_SIZE + BLOCK_SIZE)  # blocks 1.. of the file gone
        bad = f.submit_read(BLOCK_SIZE, aligned_buffer(2 * BLOCK_SIZE))  # type: ignore[attr-defined]
        with pytest.raises(OSError, match="/f") as info:
            bad.result(10)
        assert info.value.errno == errno.EIO
        assert not f.inode.layouts.ranges  # type: ignore[attr-defined]
        f.close()  # type: ignore[attr-defined]


def _uring_image(tmp_path: os.PathLike[str]) -> str:
    from daxfs.block.uring import availability

    if availability():
        pytest.skip(f"io_uring unavailable: {availability()}")
    path = os.path.join(os.fspath(tmp_path), "img")
    mkfs(path, size=SIZE, dax="never")
    return path


def test_a_waiting_thread_ends_lean_reads_itself_never_inside_its_inode_lock(
    tmp_path: os.PathLike[str],
) -> None:
    """On a real io_uring device a thread waiting for a lean read's Future reaps for
    it (the BioRing's waiting leader: the lean read's end is declared
    ``end_anywhere``), every byte right.  A thread that holds the inode's lock and
    waits for another bio ends a lean read of that inode without running its end
    inside the lock: the end goes to the worker, and the Future is resolved only
    once the lock is free (planted: an end run under the reentered lock is caught)."""
    import time

    from daxfs.block import Bio, BioOp, open_block

    path = _uring_image(tmp_path)
    with open_block(path, engine="io_uring", queue_depth=32) as bdev, mount(bdev) as fs:
        aio = bdev._aio
        assert aio is not None
        if not aio.lead:
            pytest.skip("the kernel takes no wait timeout (IORING_FEAT_EXT_ARG)")
        f, model = _file_with_data(fs)
        ends = aio.caller_ends
        bufs = [aligned_buffer(BLOCK_SIZE) for _ in range(FILE_BLOCKS)]
        for _ in range(5):
            futures = [f.submit_read(k * BLOCK_SIZE, bufs[k]) for k in range(FILE_BLOCKS)]  # type: ignore[attr-defined]
            for k, future in enumerate(futures):
                assert future._waiter is aio
                assert future.result() == min(BLOCK_SIZE, FILE_SIZE - k * BLOCK_SIZE)
                assert (
                    bytes(bufs[k][: future.result()])
                    == model[k * BLOCK_SIZE : (k + 1) * BLOCK_SIZE]
                )
        assert aio.caller_ends > ends
        stats = fs.direct.stats  # type: ignore[union-attr]
        aio.lead_us = 200_000  # the reaper keeps aside for that long once a waiter led
        leads = aio.leads
        while aio.leads == leads:
            first = Bio(BioOp.READ, 0, [aligned_buffer(BLOCK_SIZE)])
            bdev.submit_bio(first)
            first.wait()
        posted, ends = stats["lean_posted"], aio.caller_ends
        with f.inode.lock:  # type: ignore[attr-defined]
            lean = f.submit_read(0, bufs[0])  # type: ignore[attr-defined]
            time.sleep(0.02)  # its CQE is in the ring, unreaped
            other = Bio(BioOp.READ, 8, [aligned_buffer(BLOCK_SIZE)])
            bdev.submit_bio(other)
            other.wait()  # this thread leads: it reaps the lean read's CQE too
            assert aio.caller_ends >= ends + 2
            time.sleep(0.02)
            assert not lean.done()  # its end waits for the lock, on the worker
        assert lean.result(10) == BLOCK_SIZE
        assert stats["lean_posted"] == posted + 1
        f.close()  # type: ignore[attr-defined]


def test_a_lean_read_whose_bio_goes_the_bio_path_has_no_ring_waiter(
    tmp_path: os.PathLike[str],
) -> None:
    """A lean read whose bio the device's C path does not take (a plug is held: the
    bio path) is ended by the bio path; its Future does not name the ring as its
    waiter (its result() would reap a ring that never had its bio), and resolves
    with the bytes.  One the C path takes names it."""
    from daxfs.block import open_block

    path = _uring_image(tmp_path)
    with open_block(path, engine="io_uring") as bdev, mount(bdev) as fs:
        f, model = _file_with_data(fs)
        buf = aligned_buffer(BLOCK_SIZE)
        before = bdev.statistics()["async"]
        with bdev.plug():
            future = f.submit_read(BLOCK_SIZE, buf)  # type: ignore[attr-defined]
        assert isinstance(future, LeanFuture)
        assert future._waiter is None
        assert future.result() == BLOCK_SIZE
        assert bytes(buf) == model[BLOCK_SIZE : 2 * BLOCK_SIZE]
        assert bdev.statistics()["async"] == before
        future = f.submit_read(2 * BLOCK_SIZE, buf)  # type: ignore[attr-defined]
        assert future._waiter is bdev._aio
        assert future.result() == BLOCK_SIZE
        assert bytes(buf) == model[2 * BLOCK_SIZE : 3 * BLOCK_SIZE]
        assert bdev.statistics()["async"] == before + 1
        f.close()  # type: ignore[attr-defined]


def test_lean_reads_in_flight_race_truncate_and_reuse_of_blocks_every_byte_checked(
    tmp_path: os.PathLike[str],
) -> None:
    """On a real io_uring device (the lean submit_read in C, ended by ``lean_end`` or by
    the waiting thread): two threads keep windows of 16 reads of /f in flight while a
    third truncates /f to 8 blocks, fills the freed blocks with another file's bytes,
    removes it and writes /f back.  A read never sees the other file's bytes (no I/O
    to a freed block: the range lock holds truncate off until the read ended); each
    gives /f's bytes up to what it returned."""
    from collections import deque

    from daxfs.block import open_block

    path = _uring_image(tmp_path)
    blocks = 64
    data = pattern(blocks * BLOCK_SIZE, 1)
    with open_block(path, engine="io_uring", queue_depth=32) as bdev, mount(bdev) as fs:
        f = fs.open("/f", "wb+", buffering=0, direct=True)
        whole = aligned_buffer(len(data))
        whole[:] = data
        f.pwrite(whole, 0)
        f.preadinto(aligned_buffer(BLOCK_SIZE), 0)
        other = aligned_buffer((blocks - 8) * BLOCK_SIZE)
        other[:] = pattern(len(other), 2)
        stop = threading.Event()
        failures: list[BaseException] = []
        counts = [0, 0]

        def reader(k: int) -> None:
            rng = random.Random(k)
            window: deque[tuple[Future[int], int, bytearray]] = deque()
            try:
                while not stop.is_set() or window:
                    if len(window) == 16 or (stop.is_set() and window):
                        future, pos, buf = window.popleft()
                        got = future.result()
                        assert bytes(buf[:got]) == data[pos : pos + got]
                        counts[k] += 1
                        continue
                    pos = rng.randrange(blocks) * BLOCK_SIZE
                    buf = aligned_buffer(BLOCK_SIZE)
                    buf[:] = b"\xee" * BLOCK_SIZE
                    window.append((f.submit_read(pos, buf), pos, buf))
            except BaseException as exc:
                failures.append(exc)
                stop.set()

        lean = fs.direct.stats["lean_submits"]  # type: ignore[union-attr]
        threads = [threading.Thread(target=reader, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        try:
            for _ in range(15):
                if failures:
                    break
                f.truncate(8 * BLOCK_SIZE)
                with fs.open("/g", "wb", buffering=0, direct=True) as g:
                    g.pwrite(other, 0)
                fs.remove("/g")
                f.pwrite(memoryview(whole)[8 * BLOCK_SIZE :], 8 * BLOCK_SIZE)
        finally:
            stop.set()
            for t in threads:
                t.join(60)
        if failures:
            raise failures[0]
        assert all(t.is_alive() is False for t in threads)
        assert min(counts) > 0
        assert fs.direct.stats["lean_submits"] > lean  # type: ignore[union-attr]
        assert not f.inode.layouts.ranges
        f.close()
