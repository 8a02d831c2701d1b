"""Asynchronous readahead of a file's pages (daxfs.pagecache.cache: ``_readahead``,
``_settle``; daxfs.fs.filecache: ``FileBacking.submit_pages``, ``_Readahead``).

A sequential reader's miss reads what it needs and submits the next window
without waiting, its first page marked (PG_readahead); a read that reaches the
mark submits the next one.  What must hold, each tested here on a simulated disk
whose readahead requests can be held in flight (``Gated``) or completed on
another thread (``Late``):

- the read returns with the window in flight; a reader of a page in flight
  waits for that window only, and gets the disk's bytes;
- pages in flight are cached pages: the pool's bound holds;
- EIO of a readahead bio caches nothing of its window, and the error reaches
  the reader of a page of it, not the reader of another page;
- truncate, punch and writes of the range wait for the window (its shared range
  lock): a freed block is never read into a page that is then served -- threads
  check every byte, with another file taking the freed blocks;
- a File's close waits for its readahead; nothing stays locked.
"""

from __future__ import annotations

import contextlib
import errno
import queue
import random
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from daxfs.block.bio import BioOp, Request
from daxfs.fs import filecache
from daxfs.fs.data import FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE
from daxfs.fs.filecache import FileCache, file_cache
from daxfs.fs.filesystem import FileSystem
from daxfs.fs.mount import mkfs, mount
from daxfs.iomap import IomapFlags, IomapType
from daxfs.pagecache.cache import PageCache
from daxfs.testing.blockfaults import FaultyBlockDevice
from daxfs.testing.simblock import SimulatedBlockDevice

PAGE = 4096
MIB = 1 << 20


class Gated(FaultyBlockDevice):
    """READ requests dispatched while ``holding`` wait in ``held`` until ``release``."""

    def __init__(self, inner: SimulatedBlockDevice) -> None:
        super().__init__(inner)
        self.holding = False
        #: whether ``hold_windows`` holds the next windows
        self.gating = True
        self.held: list[Request] = []
        #: the operations held
        self.ops = {BioOp.READ}
        self._gate = threading.Lock()

    def _dispatch(self, req: Request) -> None:
        with self._gate:
            if self.holding and req.op in self.ops:
                self.held.append(req)
                return
        super()._dispatch(req)

    def release(self) -> int:
        with self._gate:
            held, self.held = self.held, []
        for req in held:
            super()._dispatch(req)
        return len(held)


class Late(FaultyBlockDevice):
    """READ requests completed on a thread of their own, in a random order."""

    def __init__(self, inner: SimulatedBlockDevice, seed: int) -> None:
        super().__init__(inner)
        self._rng = random.Random(seed)
        self._queue: queue.Queue[Request | None] = queue.Queue()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _dispatch(self, req: Request) -> None:
        if req.op is BioOp.READ and self._rng.random() < 0.7:
            self._queue.put(req)
        else:
            super()._dispatch(req)

    def _serve(self) -> None:
        while (req := self._queue.get()) is not None:
            super()._dispatch(req)

    def _close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        super()._close()


@pytest.fixture
def submitting(monkeypatch: pytest.MonkeyPatch) -> Callable[[Callable[[], None]], None]:
    """``submitting(hook)``: ``hook()`` runs just before every readahead submission
    (``FileBacking.submit_pages``), and ``hook.after()`` -- if it has one -- after."""
    hooks: list[Any] = []
    real = filecache.FileBacking.submit_pages

    def submit(self: filecache.FileBacking, offset: int, views: list[memoryview]) -> Any:
        for hook in hooks:
            hook()
        try:
            return real(self, offset, views)
        finally:
            for hook in hooks:
                after = getattr(hook, "after", None)
                if after is not None:
                    after()

    monkeypatch.setattr(filecache.FileBacking, "submit_pages", submit)
    return hooks.append


def files_of(fs: FileSystem) -> FileCache:
    fc = file_cache(fs.data, fs.direct)
    assert fc is not None
    return fc


def pool_of(fs: FileSystem) -> PageCache:
    return files_of(fs).pool


def pattern(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


@contextlib.contextmanager
def released(dev: Gated) -> Iterator[None]:
    """On the way out (a failed assertion too): nothing held any more, so that the
    closes and the unmount that follow do not wait for ever."""
    try:
        yield
    finally:
        dev.gating = False
        dev.release()


@pytest.fixture
def gated() -> tuple[Gated, SimulatedBlockDevice]:
    inner = SimulatedBlockDevice(32 * MIB)
    mkfs(inner)
    return Gated(inner), inner


def written(fs: FileSystem, path: str, data: bytes) -> None:
    """``data`` in ``path``, then the file's space emptied (a cold read follows)."""
    with fs.open(path, "wb", buffering=0) as f:
        f.write(data)
        files_of(fs).forget(f.inode)


def hold_windows(dev: Gated) -> Any:
    """A ``submitting`` hook that holds the requests of every readahead window."""

    def hook() -> None:
        dev.holding = dev.gating

    def after() -> None:
        dev.holding = False

    hook.after = after  # type: ignore[attr-defined]
    return hook


def test_a_sequential_read_returns_with_the_next_window_in_flight(
    gated: tuple[Gated, SimulatedBlockDevice], submitting: Any
) -> None:
    dev, _ = gated
    data = pattern(64 * PAGE)
    with mount(dev, cache_size="128K") as fs, released(dev):
        written(fs, "/f", data)
        submitting(hold_windows(dev))
        with fs.open("/f", "rb", buffering=0) as f:
            assert f.read(4 * PAGE) == data[: 4 * PAGE]  # returns: the window is held
            assert dev.held, "no readahead window was submitted"
            pool = pool_of(fs)
            space = files_of(fs)._spaces[f.inode.ino].space
            in_flight = sorted(i for i, fo in space.folios.items() if fo.io is not None)
            assert in_flight
            assert in_flight[0] == 4
            assert space.folios[4].mark  # PG_readahead on its first page
            assert pool.resident <= pool.limit  # pages in flight are cached pages
            assert pool._pending == len(in_flight)
            misses = pool.stats.misses
            got: list[bytes] = []
            reader = threading.Thread(target=lambda: got.append(f.read(4 * PAGE)))
            reader.start()
            reader.join(0.05)
            dev.release()  # (the reader waits for the window, whatever the timing)
            reader.join()
            assert got == [data[4 * PAGE : 8 * PAGE]]
            assert pool.stats.misses == misses  # served by the window
            dev.gating = False
            dev.release()  # the window the mark submitted
            assert f.read() == data[8 * PAGE :]
            assert pool.stats.readahead > 0
        assert not pool._windows  # close waited for and settled every window


def test_the_pool_bound_holds_with_windows_in_flight(
    gated: tuple[Gated, SimulatedBlockDevice], submitting: Any
) -> None:
    dev, _ = gated
    data = pattern(256 * PAGE, 1)
    with mount(dev, cache_size="64K") as fs:
        written(fs, "/f", data)
        pool = pool_of(fs)
        peak_seen = 0

        def hook() -> None:
            nonlocal peak_seen
            peak_seen = max(peak_seen, pool.resident)
            dev.release()  # the previous window lands before the next is submitted

        submitting(hook)
        with fs.open("/f", "rb", buffering=0) as f:
            out = bytearray()
            while chunk := f.read(3 * PAGE):
                out += chunk
                assert pool.resident <= pool.limit
            dev.release()
        assert bytes(out) == data
        assert pool.stats.peak * PAGE <= pool.limit
        assert pool.stats.readahead > 0


def test_eio_of_a_window_reaches_the_reader_of_its_pages_only(
    gated: tuple[Gated, SimulatedBlockDevice], submitting: Any
) -> None:
    dev, _ = gated
    data = pattern(64 * PAGE, 2)
    with mount(dev, cache_size="128K") as fs:
        written(fs, "/f", data)
        armed = []

        def hook() -> None:
            if not armed:
                armed.append(dev.arm("read", 1))  # the window's first request fails

        submitting(hook)
        with fs.open("/f", "rb", buffering=0) as f:
            assert f.read(4 * PAGE) == data[: 4 * PAGE]
            assert armed
            assert armed[0].fired
            space = files_of(fs)._spaces[f.inode.ino].space
            window = [i for i, fo in space.folios.items() if fo.io is not None]
            assert window
            assert f.pread(100, 0) == data[:100]  # a reader of another page: no error
            with pytest.raises(OSError, match="reading ahead") as info:
                f.pread(10, window[-1] * PAGE)
            assert info.value.errno == errno.EIO
            assert not any(i in space.folios for i in window), "a failed window stayed"
            dev.disarm()
            at = window[0] * PAGE
            assert f.pread(3 * PAGE, at) == data[at : at + 3 * PAGE]  # read again, right


def test_changes_of_the_range_wait_for_the_window(
    gated: tuple[Gated, SimulatedBlockDevice], submitting: Any
) -> None:
    dev, _ = gated
    data = pattern(64 * PAGE, 3)
    with mount(dev, cache_size="128K") as fs, released(dev):
        written(fs, "/f", data)
        submitting(hold_windows(dev))
        f = fs.open("/f", "rb", buffering=0)
        g = fs.open("/f", "rb+", buffering=0)
        assert f.read(4 * PAGE) == data[: 4 * PAGE]
        assert dev.held
        ranges = f.inode.layouts.ranges  # type: ignore[union-attr]
        assert any(not excl for _, _, excl in ranges.held()), "the window holds no range"
        done = threading.Event()

        def change() -> None:
            g.fallocate(0, 64 * PAGE, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)
            g.truncate(8 * PAGE)
            done.set()

        t = threading.Thread(target=change)
        t.start()
        t.join(0.05)
        assert not done.is_set(), "the punch did not wait for the window in flight"
        dev.gating = False
        dev.release()
        t.join()
        assert f.pread(8 * PAGE, 0) == bytes(8 * PAGE)  # no old byte served
        assert f.read() == bytes(4 * PAGE)
        assert not ranges.held()
        g.close()
        f.close()


def test_close_waits_for_the_window_and_unlocks(
    gated: tuple[Gated, SimulatedBlockDevice], submitting: Any
) -> None:
    dev, _ = gated
    with mount(dev, cache_size="128K") as fs, released(dev):
        written(fs, "/f", pattern(64 * PAGE, 4))
        submitting(hold_windows(dev))
        f = fs.open("/f", "rb", buffering=0)
        f.read(4 * PAGE)
        assert dev.held
        closed = threading.Event()

        def close() -> None:
            f.close()
            closed.set()

        t = threading.Thread(target=close)
        t.start()
        t.join(0.05)
        assert not closed.is_set(), "close did not wait for the readahead in flight"
        dev.release()
        t.join()
        assert not pool_of(fs)._windows
        assert not f.inode.layouts.ranges.held()  # type: ignore[union-attr]


@pytest.mark.parametrize("seed", range(3))
def test_threads_never_see_a_freed_block_through_readahead(seed: int) -> None:
    """Readers stream file A (bytes 1..100 per page, zeros after a punch or truncate)
    while a thread rewrites, punches and truncates it and another writes file B (bytes
    200..250) into the blocks A frees: a page of A that shows B's bytes, or a page
    not of one value, is a block read after it was freed."""
    inner = SimulatedBlockDevice(16 * MIB)
    mkfs(inner)
    dev = Late(inner, seed)
    pages = 48
    with mount(dev, cache_size="128K") as fs:
        written(fs, "/a", b"".join(bytes([1 + i % 100]) * PAGE for i in range(pages)))
        stop = threading.Event()
        errors: list[BaseException] = []

        def guard(fn: Callable[[], None]) -> Callable[[], None]:
            def run() -> None:
                try:
                    fn()
                except BaseException as exc:
                    errors.append(exc)
                    stop.set()

            return run

        def reader() -> None:
            with fs.open("/a", "rb", buffering=0) as f:
                while not stop.is_set():
                    f.seek(0)
                    while chunk := f.read(3 * PAGE):
                        for k in range(0, len(chunk), PAGE):
                            page = chunk[k : k + PAGE]
                            v = page[0]
                            assert page.count(v) == len(page), "a torn page"
                            assert v <= 100, f"file B's byte {v} in file A"

        def changer() -> None:
            rng = random.Random(seed)
            with fs.open("/a", "rb+", buffering=0) as g:
                for _ in range(60):
                    at = rng.randrange(pages) * PAGE
                    n = rng.randrange(1, 8) * PAGE
                    op = rng.random()
                    if op < 0.4:
                        g.pwrite(bytes([rng.randrange(1, 101)]) * n, at)
                    elif op < 0.7:
                        g.fallocate(at, n, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)
                    else:
                        g.truncate(at)
                        g.pwrite(bytes([rng.randrange(1, 101)]) * PAGE * 4, at)
            stop.set()

        def other() -> None:
            rng = random.Random(seed + 1)
            with fs.open("/b", "wb+", buffering=0) as b:
                while not stop.is_set():
                    b.pwrite(bytes([rng.randrange(200, 251)]) * 8 * PAGE, 0)
                    b.truncate(0)

        threads = [threading.Thread(target=guard(fn)) for fn in (reader, reader, changer, other)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors[0]
        assert pool_of(fs).stats.readahead > 0, "no readahead: the test tests nothing"
        assert not pool_of(fs)._windows


def test_a_random_reader_submits_no_window(
    gated: tuple[Gated, SimulatedBlockDevice], submitting: Any
) -> None:
    dev, _ = gated
    data = pattern(64 * PAGE, 5)
    with mount(dev, cache_size="128K") as fs:
        written(fs, "/f", data)
        calls = []
        submitting(lambda: calls.append(1))
        with fs.open("/f", "rb", buffering=0) as f:
            for page in (40, 17, 33, 9):
                assert f.pread(10, page * PAGE) == data[page * PAGE : page * PAGE + 10]
        assert not calls


def test_the_memory_bound_with_a_real_stream(tmp_path: Any) -> None:
    """A 4 MiB file read in 64 KiB pieces through a 256 KiB cache on the simulated disk
    (no gate): the bytes, windows submitted, the pool's peak within the limit."""
    inner = SimulatedBlockDevice(16 * MIB)
    mkfs(inner)
    data = pattern(4 * MIB, 6)
    with mount(inner, cache_size="256K") as fs:
        written(fs, "/f", data)
        with fs.open("/f", "rb", buffering=0) as f:
            out = bytearray()
            buf = bytearray(64 * 1024)
            while n := f.readinto(buf):
                out += buf[:n]
        pool = pool_of(fs)
        assert bytes(out) == data
        assert pool.stats.readahead > 0
        assert pool.stats.peak * PAGE <= pool.limit
        assert pool.stats.misses < 4 * MIB // PAGE // 4, pool.stats  # mostly read ahead


def test_buffered_files_of_daxfs_read_whole(tmp_path: Any) -> None:
    """daxfs.File through io.BufferedReader (the default buffering): the same bytes."""
    inner = SimulatedBlockDevice(16 * MIB)
    mkfs(inner)
    data = pattern(1 * MIB + 123, 7)
    with mount(inner, cache_size="128K") as fs:
        written(fs, "/f", data)
        with fs.open("/f", "rb") as f:
            assert f.read() == data
        with fs.open("/f", "rb") as f:
            got = b"".join(iter(lambda: f.read(10_000), b""))
        assert got == data


def test_a_run_of_pages_across_extents_is_cut_at_each_extent() -> None:
    """A file in several extents (another file's blocks between them), read cold in
    one piece: each run of consecutive slots is one view, cut where an extent ends
    (``FileBacking._map``); every byte right, a hole reads as zeros."""
    inner = SimulatedBlockDevice(16 * MIB)
    mkfs(inner)
    with mount(inner, cache_size="256K") as fs:
        parts = [pattern(5 * PAGE, 10 + k) for k in range(4)]
        with fs.open("/f", "wb", buffering=0) as f, fs.open("/g", "wb", buffering=0) as g:
            for k, part in enumerate(parts):
                f.write(part)
                g.write(pattern(3 * PAGE, 20 + k))  # the blocks after f's, taken
            f.truncate(26 * PAGE)  # and a hole at the end
            files_of(fs).forget(f.inode)
        want = b"".join(parts) + bytes(6 * PAGE)
        cuts: list[int] = []
        real = filecache.FileBacking._map

        def spy(self: filecache.FileBacking, offset: int, views: list[memoryview]) -> Any:
            bios = real(self, offset, views)
            cuts.append(sum(len(bio.segments) for bio in bios) - len(views))
            return bios

        filecache.FileBacking._map = spy  # type: ignore[method-assign]
        try:
            with fs.open("/f", "rb", buffering=0) as f:
                buf = bytearray(len(want))
                assert f.readinto(buf) == len(want)
                assert bytes(buf) == want
                with f.inode.lock:  # the file is in four extents and a hole
                    pos, kinds = 0, []
                    while pos < 26 * PAGE:
                        iomap = fs.data.iomap_begin(f.inode, pos, 26 * PAGE - pos, IomapFlags.NONE)
                        kinds.append(iomap.type)
                        pos = iomap.end
                assert kinds.count(IomapType.MAPPED) >= 4, kinds
        finally:
            filecache.FileBacking._map = real  # type: ignore[method-assign]
        assert any(c > 0 for c in cuts), f"no run was cut at an extent's end: {cuts}"


def test_a_reader_of_another_file_does_not_wait_for_a_write_back(
    gated: tuple[Gated, SimulatedBlockDevice],
) -> None:
    """The write-back of a buffered write of file A (its WRITE bios held) does not hold
    the files' pool lock: a re-read of file B's cached pages, and a read of A's pages
    outside the write, from another thread, finish meanwhile; A's pages under the
    write-back are not served by anyone."""
    dev, _ = gated
    with mount(dev, cache_size="128K") as fs, released(dev):
        a = fs.open("/a", "wb+", buffering=0)
        b = fs.open("/b", "wb+", buffering=0)
        a.write(b"a" * 4 * PAGE)
        b.write(b"b" * 4 * PAGE)
        dev.ops = {BioOp.WRITE}
        dev.holding = True
        wrote = threading.Event()

        def write() -> None:
            a.pwrite(b"A" * PAGE, PAGE)
            wrote.set()

        w = threading.Thread(target=write)
        w.start()
        while not dev.held and w.is_alive():  # the write-back's bio is held
            w.join(0.01)
        assert dev.held, "the write's bios were not held: the test tests nothing"
        got: list[bytes] = []
        r = threading.Thread(target=lambda: got.append(b.pread(PAGE, 2 * PAGE)))
        r.start()
        r.join(10)
        assert got == [b"b" * PAGE], "a reader of another file waited for the write-back"
        space = files_of(fs)._spaces[a.inode.ino].space
        assert space.folios[1].io is not None  # busy: no hit serves it
        assert not wrote.is_set()
        dev.holding = False
        dev.release()
        w.join()
        assert a.pread(3 * PAGE, 0) == b"a" * PAGE + b"A" * PAGE + b"a" * PAGE
        assert space.folios[1].io is None
        a.close()
        b.close()
