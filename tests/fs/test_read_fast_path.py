"""The read fast path (daxfs/fs/file.py, "The read fast path"; ExtentReader in
daxfs/pmem/_native.c): the single-extent case of the iomap read in one C call.

It must answer exactly what the iomap path answers (the readable reference),
keep every error of the File API, take the inode's lock around its copy, and
miss -- never guess -- on anything but a range inside the cached written
extent.  These tests run on an image in /dev/shm (a PmemDevice: the simulator
has no native region, so the fast path is off there).
"""

from __future__ import annotations

import array
import dataclasses
import errno
import random
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest

import daxfs
from daxfs.errors import ClosedFile, InvalidArgument, UnsupportedIO
from daxfs.fs import data as data_module
from daxfs.fs.data import FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, DataPath
from daxfs.fs.extmap import Extent
from daxfs.fs.file import File
from daxfs.fs.inode import Inode
from daxfs.fs.layout import BLOCK_SHIFT, InodeRecord
from daxfs.pmem import cpu
from daxfs.testing import fsx

BLOCK = 4096

pytestmark = pytest.mark.skipif(not cpu.native_available(), reason="needs the C extension")


class CountingReader:
    """Wraps an ExtentReader: counts hits and misses of each call."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.hits = 0
        self.misses = 0

    def _count(self, result: Any) -> Any:
        if result is None:
            self.misses += 1
        else:
            self.hits += 1
        return result

    def pread(self, inode: Any, n: Any, offset: Any) -> bytes | None:
        return cast("bytes | None", self._count(self.real.pread(inode, n, offset)))

    def preadinto(self, inode: Any, buffer: Any, offset: Any) -> int | None:
        return cast("int | None", self._count(self.real.preadinto(inode, buffer, offset)))


@pytest.fixture
def counting(monkeypatch: pytest.MonkeyPatch) -> list[CountingReader]:
    """Every DataPath made meanwhile gets a CountingReader (listed here)."""
    made: list[CountingReader] = []
    real = data_module.extent_reader

    def wrapped(device: Any) -> Any:
        reader = real(device)
        if reader is None:
            return None
        made.append(CountingReader(reader))
        return made[-1]

    monkeypatch.setattr(data_module, "extent_reader", wrapped)
    return made


@pytest.fixture
def fs(shm_path: Path) -> Iterator[daxfs.FileSystem]:
    daxfs.mkfs(shm_path, 32 << 20)
    with daxfs.mount(shm_path, persist="cpu") as mounted:
        yield mounted


def raw(fs: daxfs.FileSystem, path: str, mode: str = "rb+") -> File:
    return cast(File, fs.open(path, mode, buffering=0))


def pattern(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


def test_the_fast_path_is_on_for_a_pmem_device(fs: daxfs.FileSystem) -> None:
    assert fs.data.reader is not None
    with raw(fs, "/f", "xb+") as f:
        assert f._reader is fs.data.reader
    with raw(fs, "/f", "wb") as f:
        assert f._reader is None  # not readable: the fast path is off for this file


def test_a_hit_does_not_touch_iomap(fs: daxfs.FileSystem, monkeypatch: pytest.MonkeyPatch) -> None:
    body = pattern(8 * BLOCK)
    with raw(fs, "/f", "xb+") as f:
        f.write(body)
        assert f.pread(10, 0) == body[:10]  # fills the extent cache (iomap_begin)

        def no_iomap(*args: object) -> None:
            raise AssertionError("a read inside the cached extent went through iomap")

        monkeypatch.setattr(DataPath, "iomap_begin", no_iomap)
        assert f.pread(BLOCK, 3 * BLOCK + 5) == body[3 * BLOCK + 5 : 4 * BLOCK + 5]
        buf = bytearray(100)
        assert f.preadinto(buf, 7) == 100
        assert buf == body[7:107]
        f.seek(BLOCK)
        assert f.read(3) == body[BLOCK : BLOCK + 3]
        assert f.readinto(buf) == 100
        assert buf == body[BLOCK + 3 : BLOCK + 103]
        assert f.tell() == BLOCK + 103
        assert f.pread(100, len(body) - 10) == body[-10:]  # clamped to the size
        assert f.pread(100, len(body) + 10) == b""  # past EOF
        assert f.preadinto(buf, len(body)) == 0


def test_errors_are_the_file_apis_own(fs: daxfs.FileSystem) -> None:
    with raw(fs, "/f", "xb+") as f:
        f.write(pattern(2 * BLOCK))
        assert f.pread(1, 0)  # the extent is cached: every call below reaches the C path
        with pytest.raises(TypeError):
            f.pread(1.0, 0)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            f.pread(1, 0.0)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            f.pread(True, 0)
        with pytest.raises(TypeError):
            f.pread(1, "0")  # type: ignore[arg-type]
        for n, offset in ((1, -1), (-1, 0)):
            with pytest.raises(InvalidArgument) as info:
                f.pread(n, offset)
            assert info.value.errno == errno.EINVAL
            assert "/f" in str(info.value)
        with pytest.raises(InvalidArgument):
            f.preadinto(bytearray(1), -1)
        with pytest.raises(TypeError):
            f.preadinto(b"read-only", 0)
        with pytest.raises(TypeError):
            f.preadinto(memoryview(bytearray(8))[::2], 0)  # not contiguous
        with pytest.raises(TypeError):
            f.read(1.5)  # type: ignore[arg-type]
        assert f.pread(1 << 70, 0) == f.pread(2 * BLOCK, 0)  # a huge n is clamped
    with pytest.raises(ClosedFile) as closed:
        f.pread(1, 0)
    assert closed.value.errno == errno.EBADF
    with pytest.raises(ClosedFile):
        f.preadinto(bytearray(1), 0)
    with pytest.raises(ClosedFile):
        f.read(1)
    with pytest.raises(ClosedFile):
        f.readinto(bytearray(1))
    with raw(fs, "/f", "ab") as g:
        with pytest.raises(UnsupportedIO) as info:
            g.pread(1, 0)
        assert info.value.errno == errno.EBADF
        with pytest.raises(UnsupportedIO):
            g.read(1)


def test_itemsize_buffers_count_bytes(fs: daxfs.FileSystem) -> None:
    body = pattern(BLOCK)
    with raw(fs, "/f", "xb+") as f:
        f.write(body)
        f.pread(1, 0)
        words = array.array("i", bytes(64))
        assert f.preadinto(words, 0) == 64
        assert words.tobytes() == body[:64]


def test_holes_and_unwritten_extents_read_as_zeros(fs: daxfs.FileSystem) -> None:
    with raw(fs, "/f", "xb+") as f:
        f.pwrite(b"x" * BLOCK, 0)
        f.pwrite(b"y" * BLOCK, 4 * BLOCK)  # a hole of 3 blocks between
        f.fallocate(8 * BLOCK, 2 * BLOCK)  # unwritten, inside the size
        f.pwrite(b"z", 12 * BLOCK)
        assert f.pread(BLOCK, BLOCK) == bytes(BLOCK)
        assert f.pread(BLOCK, 8 * BLOCK) == bytes(BLOCK)  # the unwritten extent is cached now
        assert f.pread(BLOCK, 8 * BLOCK) == bytes(BLOCK)  # ... and still reads as zeros
        assert f.pread(2 * BLOCK, BLOCK // 2) == b"x" * (BLOCK // 2) + bytes(BLOCK + BLOCK // 2)
        f.fallocate(0, BLOCK, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)
        assert f.pread(BLOCK, 0) == bytes(BLOCK)


def test_a_truncate_drops_what_the_fast_path_would_read(fs: daxfs.FileSystem) -> None:
    with raw(fs, "/f", "xb+") as f:
        f.write(b"a" * 4 * BLOCK)
        assert f.pread(BLOCK, 2 * BLOCK) == b"a" * BLOCK
        f.truncate(BLOCK + 10)
        assert f.pread(BLOCK, 2 * BLOCK) == b""
        assert f.pread(BLOCK, BLOCK) == b"a" * 10
        f.truncate(4 * BLOCK)
        assert f.pread(BLOCK, 2 * BLOCK) == bytes(BLOCK)  # the blocks went; a hole now


def test_a_lying_cached_extent_is_refused_not_copied(fs: daxfs.FileSystem) -> None:
    """An extent outside the device (a damaged map) is a miss; the iomap path reports
    it as an error naming the file, and nothing outside the mapping is read."""
    with raw(fs, "/f", "xb+") as f:
        f.write(pattern(BLOCK))
        f.inode.xcache = Extent(0, (fs.device.size >> BLOCK_SHIFT) + 5, 1)
        assert fs.data.reader is not None
        assert fs.data.reader.pread(f.inode, 10, 0) is None
        with pytest.raises(InvalidArgument, match="/f"):
            f.pread(10, 0)
        f.inode.xcache = None
        assert f.pread(BLOCK, 0) == pattern(BLOCK)


def test_the_reader_refuses_classes_without_slots() -> None:
    from daxfs.pmem import _native

    class Loose:
        pass

    region = _native.Region(bytearray(BLOCK), "none")
    with pytest.raises(TypeError, match="slots"):
        _native.ExtentReader(region, Loose, Extent, InodeRecord, BLOCK_SHIFT)
    with pytest.raises(TypeError, match="slots"):
        _native.ExtentReader(region, Inode, Loose, InodeRecord, BLOCK_SHIFT)
    reader = _native.ExtentReader(region, Inode, Extent, InodeRecord, BLOCK_SHIFT)
    assert reader.pread(Loose(), 1, 0) is None  # not an Inode: a miss
    region.release()
    inode = Inode(InodeRecord(ino=5, size=BLOCK))
    inode.xcache = Extent(0, 0, 1)
    assert reader.pread(inode, 1, 0) is None  # a released region: a miss


class RecordingLock:
    """Stands in for inode.lock: records acquire/release; ``on_acquire`` runs inside."""

    def __init__(self, inner: Any, on_acquire: Callable[[], None] = lambda: None) -> None:
        self.inner = inner
        self.on_acquire = on_acquire
        self.events: list[str] = []

    def acquire(self) -> bool:
        self.inner.acquire()
        self.events.append("acquire")
        self.on_acquire()
        return True

    def release(self) -> None:
        self.events.append("release")
        self.inner.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def test_the_copy_happens_under_the_inode_lock(fs: daxfs.FileSystem) -> None:
    """The cache is read after the lock is taken: a change made by whoever held the
    lock before (here: the cached extent dropped, as a truncate drops it) is seen."""
    body = pattern(2 * BLOCK)
    with raw(fs, "/f", "xb+") as f:
        f.write(body)
        f.pread(1, 0)
        inode = f.inode
        reader = fs.data.reader
        assert reader is not None
        real = inode.lock
        lock = RecordingLock(real)
        inode.lock = lock  # type: ignore[assignment]
        try:
            assert reader.pread(inode, 5, 0) == body[:5]
            assert lock.events == ["acquire", "release"]

            def drop_cache() -> None:
                inode.xcache = None

            lock.on_acquire = drop_cache
            lock.events.clear()
            assert reader.pread(inode, 5, 0) is None  # a miss, decided under the lock
            assert reader.preadinto(inode, bytearray(5), 0) is None
            assert lock.events == ["acquire", "release"] * 2
        finally:
            inode.lock = real


def test_a_read_waits_for_a_writer_holding_the_lock(fs: daxfs.FileSystem) -> None:
    body = pattern(2 * BLOCK)
    with raw(fs, "/f", "xb+") as f:
        f.write(body)
        f.pread(1, 0)
        got: list[bytes] = []
        with f.inode.lock:  # as a write or truncate would hold it
            reader = threading.Thread(target=lambda: got.append(f.pread(BLOCK, 0)))
            reader.start()
            reader.join(0.2)
            assert not got  # it waits (if it were done here, it did not take the lock)
            f.inode.xcache = None
            f.truncate(10)  # what the read sees is after the holder's change
        reader.join()
        assert got == [body[:10]]


def test_reads_race_truncates_and_reuse_of_their_blocks(fs: daxfs.FileSystem) -> None:
    """One thread reads a file of b"A" while another truncates it and rewrites it, and
    a third fills another file with b"B" (reusing the freed blocks).  A read must
    return only A bytes or zeros (a rewrite in progress is never seen: the lock)."""
    stop = threading.Event()
    errors: list[BaseException] = []
    size = 16 * BLOCK

    def guard(body: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                while not stop.is_set():
                    body()
            except BaseException as exc:
                errors.append(exc)
                stop.set()

        return run

    with raw(fs, "/a", "xb+") as a, raw(fs, "/b", "xb+") as b:
        a.write(b"A" * size)
        rng = random.Random(5)
        reads = [0]

        def read() -> None:
            offset = rng.randrange(0, size, 512)
            data = a.pread(BLOCK, offset)
            if data.strip(b"A") not in (b"", bytes(len(data.strip(b"A")))):
                raise AssertionError(f"read {data[:16]!r}... at {offset}: not the file's")
            reads[0] += 1

        def churn_a() -> None:
            a.truncate(0)
            a.pwrite(b"A" * size, 0)

        def churn_b() -> None:
            b.truncate(0)
            b.pwrite(b"B" * size, 0)

        threads = [threading.Thread(target=guard(t)) for t in (read, churn_a, churn_b)]
        for t in threads:
            t.start()
        while reads[0] < 2000 and not stop.is_set():
            stop.wait(0.01)
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors[0]


def model_reads(f: File, model: bytes, rng: random.Random, count: int) -> None:
    """Random preads/preadintos of ``f`` compared with ``model``, with and without the fast
    path (``f._reader`` None: the iomap path alone)."""
    fast = f._reader
    for _ in range(count):
        offset = rng.choice((rng.randrange(len(model) + 2 * BLOCK), rng.randrange(64) * BLOCK))
        n = rng.choice((rng.randrange(3 * BLOCK), BLOCK, 1, 0))
        want = model[offset : offset + n]
        buf = bytearray(n)
        f._reader = None
        slow = f.pread(n, offset)
        slow_n = f.preadinto(buf, offset)
        f._reader = fast
        assert slow == want, (offset, n)
        assert slow_n == len(want), (offset, n)
        assert bytes(buf[:slow_n]) == want, (offset, n)
        assert f.pread(n, offset) == want, (offset, n)
        buf[:] = bytes(n)
        assert f.preadinto(buf, offset) == len(want), (offset, n)
        assert bytes(buf[: len(want)]) == want, (offset, n)


@pytest.mark.parametrize("seed", range(4))
def test_fast_and_iomap_paths_agree_with_a_model(
    counting: list[CountingReader], fs: daxfs.FileSystem, seed: int
) -> None:
    rng = random.Random(seed)
    assert [fs.data.reader] == counting  # the mount came after the fixture: counted
    with raw(fs, "/f", "xb+") as f:
        model = bytearray()
        for _ in range(40):
            op = rng.choice(("write", "write", "truncate", "punch", "fallocate"))
            offset = rng.randrange(48) * BLOCK + rng.choice((0, rng.randrange(BLOCK)))
            length = rng.choice((rng.randrange(1, 3 * BLOCK), rng.randrange(1, 64 * BLOCK)))
            if op == "write":
                chunk = rng.randbytes(length)
                f.pwrite(chunk, offset)
                model.extend(bytes(max(0, offset + length - len(model))))
                model[offset : offset + length] = chunk
            elif op == "truncate":
                f.truncate(offset)
                model = model[:offset] + bytes(max(0, offset - len(model)))
            elif op == "punch":
                f.fallocate(offset, length, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)
                end = min(offset + length, len(model))
                if offset < end:
                    model[offset:end] = bytes(end - offset)
            else:
                f.fallocate(offset, length)
                model.extend(bytes(max(0, offset + length - len(model))))
            model_reads(f, bytes(model), rng, 20)
    assert counting[0].hits > 0
    assert counting[0].misses > 0


def test_the_fast_path_hits_in_fsx_on_an_image(
    shm_path: Path, counting: list[CountingReader]
) -> None:
    """fsx (random reads, writes, truncates, fallocate, mappings, pins, remounts checked
    against a model) on an image, where reads take the fast path when they can."""
    daxfs.mkfs(shm_path, 16 << 20)
    for seed in range(3):
        fsx.run(seed, ops=300, device=str(shm_path))
    assert counting, "no reader was made"
    hits = sum(r.hits for r in counting)
    misses = sum(r.misses for r in counting)
    assert hits > 0, (hits, misses)
    assert misses > 0, (hits, misses)


def test_without_slots_the_fast_path_is_off_and_reads_still_work(
    shm_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refactor that drops a slot the C reader reads turns the fast path off (the
    test above then fails), never mount or reads."""

    @dataclasses.dataclass
    class LooseRecord:
        size: int = 0

    monkeypatch.setattr(data_module, "InodeRecord", LooseRecord)
    daxfs.mkfs(shm_path, 16 << 20)
    with daxfs.mount(shm_path, persist="cpu") as fs:
        assert fs.data.reader is None
        with raw(fs, "/f", "xb+") as f:
            f.write(b"abc" * 2000)
            assert f._reader is None
            assert f.pread(4, 2) == b"cabc"
