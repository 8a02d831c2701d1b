"""The waiting thread that leads (``_uring.BioRing``, invariants B4 and B5): a thread
waiting for a bio of the C path (``Bio.wait``, ``LeanFuture.result``) reaps for it
itself while the reaper steps aside; what it may not end (an ``end_io`` not declared
``end_anywhere``, a Future with done callbacks, a CQE that fell short) is left to
the reaper; no CQE is lost, no bio ended twice.  Threads with windows of Futures,
some failing, every byte checked; a Future given back to the bio path has no ring
as its waiter."""

from __future__ import annotations

import errno
import mmap
import os
import random
import threading
from collections import deque
from pathlib import Path
from typing import Any

import pytest

from daxfs.block import Bio, BioOp, open_block
from daxfs.block import uring as uring_mod
from daxfs.block.file import FileBlockDevice
from daxfs.block.future import LeanFuture
from daxfs.errors import IOFailure
from daxfs.testing.block_tests import pattern
from daxfs.testing.blockfaults import FaultyBlockDevice
from tests.block.regions import run_in_regions, submit_from, wait_for

WHY_NOT = uring_mod.availability()
pytestmark = pytest.mark.skipif(bool(WHY_NOT), reason=f"io_uring unavailable: {WHY_NOT}")
SIZE = 1 << 20
BS = 4096


def _device(tmp: Path, name: str = "d.img", **kw: Any) -> FileBlockDevice:
    dev = open_block(tmp / name, SIZE, create=True, engine="io_uring", **kw)
    assert dev._aio is not None
    if not dev._aio.lead:
        pytest.skip("the kernel takes no wait timeout (IORING_FEAT_EXT_ARG)")
    return dev


def _aligned(n: int, seed: int) -> mmap.mmap:
    buf = mmap.mmap(-1, n)
    buf[:] = pattern(n, seed)
    return buf


def _window(dev: FileBlockDevice, count: int, depth: int) -> None:
    """``count`` reads of known blocks, ``depth`` in flight, waited for oldest first
    (the benchmark's Futures row); every byte checked."""
    data = pattern(SIZE, 5)
    rng = random.Random(3)
    window: deque[tuple[Bio, int, mmap.mmap]] = deque()
    for i in range(count + depth):
        if len(window) == depth or i >= count:
            bio, block, buf = window.popleft()
            assert (bio.future.result() if i % 2 else bio.wait()) == BS
            assert bytes(buf) == data[block * BS : (block + 1) * BS]
        if i < count:
            block = rng.randrange(SIZE // BS)
            buf = mmap.mmap(-1, BS)
            bio = Bio(BioOp.READ, block * BS >> 9, [buf])
            dev.submit_bio(bio)
            window.append((bio, block, buf))


def test_the_waiting_thread_reaps_for_its_future(tmp_path: Path) -> None:
    """A window of 32 reads waited for oldest first: the waiting thread leads (it
    ends bios itself), every byte right; with ``lead`` off the reaper ends them all
    (the reference) and the bytes are the same."""
    with _device(tmp_path, queue_depth=32) as dev:
        dev.write(0, _aligned(SIZE, 5))
        aio = dev._aio
        assert aio is not None
        _window(dev, 1500, 32)
        assert aio.leads > 0
        assert 0 < aio.caller_ends <= aio.count
        stats = dev.statistics()
        assert stats["inflight"] == 0
        assert stats["async"] == 1500
        aio.lead = False
        leads, ends = aio.leads, aio.caller_ends
        _window(dev, 300, 32)
        assert (aio.leads, aio.caller_ends) == (leads, ends)
        assert dev.statistics()["async"] == 1800


def test_what_a_waiting_leader_may_not_end_goes_to_the_reaper(tmp_path: Path) -> None:
    """While a thread leads (the reaper kept aside by a long ``lead_us``), bios with an
    ``end_io`` and Futures with done callbacks still end on the reaper thread; an
    ``end_io`` declared with ``end_anywhere`` may run on the waiting thread."""
    with _device(tmp_path) as dev:
        dev.write(0, _aligned(SIZE, 5))
        aio = dev._aio
        assert aio is not None
        aio.lead_us = 200_000
        where: list[tuple[str, str]] = []

        def end_io(bio: Bio) -> None:
            where.append(("end_io", threading.current_thread().name))

        def anywhere(bio: Bio) -> None:
            where.append(("anywhere", threading.current_thread().name))

        aio.end_anywhere(anywhere)
        aio.end_anywhere(anywhere)  # (once)
        assert aio.anywhere == (anywhere,)
        for k in range(40):
            bios = [Bio(BioOp.READ, (k * 6 + i) % 256 * 8, [mmap.mmap(-1, BS)]) for i in range(6)]
            bios[0].end_io = end_io
            bios[1].end_io = anywhere
            bios[2].future.add_done_callback(
                lambda f: where.append(("callback", threading.current_thread().name))
            )
            for bio in bios:
                dev.submit_bio(bio)
            for bio in reversed(bios):
                assert bio.future.result() == BS
        wait_for(lambda: len(where) == 120)
        assert {name for what, name in where if what != "anywhere"} == {"daxfs-bio"}
        assert aio.leads > 0
        wait_for(lambda: dev.statistics()["inflight"] == 0)  # (counted out after end_io)


def test_threads_with_windows_of_futures_some_failing_every_byte_checked(
    tmp_path: Path,
) -> None:
    """Four threads each keep a window of 8 bios of their own region in flight (writes
    and reads, waited for by Future or ``wait``, oldest first; no two in flight on one
    block), and also read past the end of the file, which the test cut short under
    the device (short completions: IOFailure naming the sector, ended by the reaper);
    a fifth thread's bios go through the fault harness, whose every third read fails
    (EIO) and whose forwarded bios carry an ``end_io``.  Every byte is checked against
    the models; then the device closes under them (EBADF or whole)."""
    path = tmp_path / "d.img"
    dev = _device(tmp_path)
    tail = SIZE - 8 * BS
    os.truncate(path, tail)  # reads in the last 8 blocks complete short (0 bytes)
    faulty = FaultyBlockDevice(dev)
    region = tail // 8
    failed = [0]  # reads the harness failed
    shorts = [0]  # reads past the end of the file

    def harness(base: int, stop: threading.Event) -> None:
        """Reads through the fault harness: every third fails with EIO."""
        faulty.write(base, _aligned(BS, 7))
        for n in range(1_000_000):
            if stop.is_set() and n > 20:
                return
            if n % 3 == 0:
                faulty.arm("read", 1)
            buf = mmap.mmap(-1, BS)
            bio = Bio(BioOp.READ, base >> 9, [buf])
            try:
                faulty.submit_bio(bio)
                got = bio.future.result()
            except OSError as exc:
                if exc.errno == errno.EBADF and stop.is_set():
                    return
                if exc.errno != errno.EIO or n % 3:  # only the armed reads fail
                    raise
                failed[0] += 1
                continue
            assert got == BS
            assert bytes(buf) == pattern(BS, 7)

    def work(k: int, base: int, model: bytearray, stop: threading.Event) -> None:
        if k == 4:
            harness(base, stop)
            return
        rng = random.Random(k)
        blocks = len(model) // BS
        window: deque[tuple[Bio, int, mmap.mmap, bool]] = deque()
        busy: set[int] = set()  # blocks of this window's bios (none twice in flight)
        try:
            for i in range(1_000_000):
                if stop.is_set() and i > 50:
                    break
                if len(window) == 8:
                    bio, block, buf, write = window.popleft()
                    busy.discard(block)
                    try:
                        done = bio.future.result() if i % 3 else bio.wait()
                    except IOFailure as exc:
                        # only past the end of the file, short
                        if block >= 0 or f"short read: 0 of {BS} bytes" not in str(exc):
                            raise
                        shorts[0] += 1
                        continue
                    assert done == BS
                    assert block >= 0
                    if write:
                        model[block * BS : (block + 1) * BS] = buf
                    else:
                        assert bytes(buf) == model[block * BS : (block + 1) * BS]
                if rng.random() < 0.05:
                    block, offset, write = -1, tail + rng.randrange(8) * BS, False
                else:
                    block = rng.choice([b for b in range(blocks) if b not in busy])
                    offset, write = base + block * BS, rng.random() < 0.5
                    busy.add(block)
                buf = _aligned(BS, k * 1_000_000 + i) if write else mmap.mmap(-1, BS)
                bio = Bio(BioOp.WRITE if write else BioOp.READ, offset >> 9, [buf])
                dev.submit_bio(bio)
                window.append((bio, block, buf, write))
        except OSError as exc:  # the device closed under the thread
            if exc.errno != errno.EBADF or not stop.is_set():
                raise
        for bio, _block, _buf, _write in window:  # (ended whole, short, or EBADF)
            try:
                bio.wait()
            except OSError as exc:
                if exc.errno not in (errno.EBADF, errno.EIO):
                    raise

    aio = dev._aio
    assert aio is not None

    def reached() -> bool:  # (whether a waiting thread finds the ring leaderless is up to
        # the scheduler: run until every path below was taken, within wait_for's bound)
        counts = (aio.leads, aio.caller_ends, failed[0], shorts[0])
        return dev.statistics()["async"] > 4000 and min(counts) > 0

    run_in_regions(work, 5, region, until=reached, close=dev.close)
    assert aio.leads > 0
    assert aio.caller_ends > 0
    assert failed[0] > 0
    assert shorts[0] > 0
    assert dev.statistics()["inflight"] == 0
    assert aio.inflight == 0


def test_a_future_given_back_to_the_bio_path_has_no_ring_waiter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bio whose Future was made before its submission, given back by the C path
    (its reaper thread could not start): the bio path ends it, and neither the bio
    nor its Future names the ring as its waiter (a result() would ask a ring that
    never had it)."""
    real = threading.Thread

    class NoReaper(real):  # type: ignore[misc,valid-type]
        def start(self) -> None:
            if self.name == "daxfs-bio":
                raise RuntimeError("can't start new thread (test)")
            super().start()

    with _device(tmp_path) as dev:
        dev.write(0, _aligned(SIZE, 5))
        monkeypatch.setattr(threading, "Thread", NoReaper)
        buf = mmap.mmap(-1, BS)
        bio = Bio(BioOp.READ, 8, [buf])
        future = bio.future
        assert isinstance(future, LeanFuture)
        dev.submit_bio(bio)
        assert bio._waiter is None
        assert future._waiter is None
        assert future.result(30) == BS
        assert bytes(buf) == pattern(SIZE, 5)[BS : 2 * BS]
        assert dev.statistics()["async"] == 0
        monkeypatch.setattr(threading, "Thread", real)
        bio = Bio(BioOp.READ, 8, [mmap.mmap(-1, BS)])
        future = bio.future
        dev.submit_bio(bio)  # the C path now (its reaper starts)
        assert future._waiter is dev._aio
        assert future.result() == BS
        assert dev.statistics()["async"] == 1


@pytest.mark.parametrize("how", ["parked", "wait", "callback"])
def test_a_bio_future_resolved_in_c_wakes_whoever_waits(tmp_path: Path, how: str) -> None:
    """A read of a pipe holds the bio in flight; a thread parks in ``result(timeout)``
    (no lead: it sleeps on the Future's lock), or waits in ``concurrent.futures.wait``
    (the Future's Condition), or a done callback is added; the pipe is written: the
    BioRing resolves the LeanFuture (in C when nobody watches it, else through
    ``set_result``), and each is told, once, with the bytes."""
    import concurrent.futures

    r, w = os.pipe()
    with _device(tmp_path) as dev:
        buf = mmap.mmap(-1, BS)
        bio = Bio(BioOp.READ, 0, [buf])
        submit_from(dev, r, bio)
        future = bio.future
        got: list[object] = []
        if how == "callback":
            future.add_done_callback(lambda f: got.append(f.result()))
            waiter = None
        else:

            def wait() -> None:
                if how == "parked":  # (a timeout: no lead, it parks on its lock)
                    got.append(future.result(3600))
                else:
                    done, _ = concurrent.futures.wait([future], timeout=30)
                    got.append(future.result() if done else None)

            waiter = threading.Thread(target=wait, daemon=True)
            waiter.start()
            wait_for(
                lambda: bool(future._sleepers) if how == "parked" else future._cond is not None
            )
        os.write(w, b"p" * BS)
        if waiter is not None:
            waiter.join(30)
            assert not waiter.is_alive(), "the waiting thread was never woken"
        wait_for(lambda: bool(got))
        assert got == [BS]
        assert bytes(buf) == b"p" * BS
        assert future._sleepers is None
    os.close(r)
    os.close(w)
