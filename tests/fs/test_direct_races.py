"""Threads racing direct I/O against truncate, punch-hole, zero-range and buffered I/O,
checking every byte.

The device completes each request late, on a thread of its own, in any order
(``LateBlockDevice``), as an io_uring completion thread would.  A file of
``SLOTS`` blocks; block ``i`` only ever holds zeros or a pattern naming slot
``i`` and a version.  Writers (synchronous and asynchronous direct writes,
buffered writes), a puncher (punch-hole and zero-range), a truncater (the
tail cut and grown back) and a churner (another file written and deleted,
so freed blocks are reused at once) run together; readers (direct and
buffered) read without any lock of the test's and check that every block
they see is whole: all zeros, or one version of its own slot.  A read of a
freed block would show another file's bytes or another slot's, a read
racing a write inside a block a mix.  Writers and removers of one slot
serialize on the test's per-slot lock, so at the end every slot must hold
exactly what its last operation left.
"""

from __future__ import annotations

import contextlib
import random
import struct
import threading
from collections.abc import Callable, Iterator

import pytest

from daxfs.block.bio import Request
from daxfs.fs.data import FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE
from daxfs.fs.direct import aligned_buffer
from daxfs.fs.filesystem import FileSystem
from daxfs.fs.fsck import fsck
from daxfs.fs.layout import BLOCK_SIZE
from daxfs.fs.mount import mkfs, mount
from daxfs.testing.simblock import SimulatedBlockDevice
from tests.fs.direct_devices import Inspected, LateBlockDevice

mmap_t = type(aligned_buffer(1))
SLOTS = 48
TAIL = 40  # slots [TAIL, SLOTS) are cut and grown back by the truncater
OPS = 60  # operations per worker thread


def block(slot: int, version: int) -> bytes:
    return struct.pack("<4sII4x", b"SLOT", slot, version) * (BLOCK_SIZE // 16)


def check_block(data: bytes, slot: int, what: str) -> None:
    if data == bytes(BLOCK_SIZE):
        return
    head = data[:16]
    magic, got, _ = struct.unpack("<4sII4x", head)
    if magic != b"SLOT" or got != slot or data != head * (BLOCK_SIZE // 16):
        raise AssertionError(f"{what}: block {slot} is neither zeros nor whole slot {slot}")


def watch_freed_blocks(fs: FileSystem, dev: Inspected, buffers: set[int]) -> None:
    """Make ``dev`` check, as each request whose memory is one of ``buffers`` (ids of
    the test's direct-I/O buffers, and the engine's zeros) reaches the media, that
    every block it touches is allocated: no direct I/O reads or writes a freed block."""
    from daxfs.fs import direct

    buffers.add(id(direct._ZEROS.obj))

    def inspect(req: Request) -> None:
        if not any(id(seg.obj) in buffers for seg in req.segments):
            return
        first = req.offset // BLOCK_SIZE
        last = (req.offset + req.size - 1) // BLOCK_SIZE
        for blockno in range(first, last + 1):
            if not fs.alloc.is_allocated(fs.store, blockno):
                raise AssertionError(f"{req.op.value} of free block {blockno}")

    dev.inspect = inspect


class Race:
    def __init__(self, fs: FileSystem, seed: int) -> None:
        self.fs = fs
        self.seed = seed
        self.locks = [threading.Lock() for _ in range(SLOTS)]
        self.model: list[int | None] = [0] * SLOTS  # version, None for zeros
        self.errors: list[BaseException] = []
        self.stop = threading.Event()
        self.reads = 0
        #: ids of the direct-I/O buffers (watch_freed_blocks)
        self.buffers: set[int] = set()

    def buffer(self, n: int) -> mmap_t:
        buf = aligned_buffer(n)
        self.buffers.add(id(buf))
        return buf

    def run(self, workers: list[Callable[[random.Random], None]], readers: int) -> None:
        threads = [
            threading.Thread(target=self._guard, args=(w, random.Random(self.seed * 100 + i)))
            for i, w in enumerate(workers)
        ]
        reading = [
            threading.Thread(target=self._guard, args=(self.reader, random.Random(self.seed + i)))
            for i in range(readers)
        ]
        for t in threads + reading:
            t.start()
        for t in threads:
            t.join(120)
        self.stop.set()
        for t in reading:
            t.join(120)
        if self.errors:
            raise self.errors[0]

    def _guard(self, work: Callable[[random.Random], None], rng: random.Random) -> None:
        try:
            work(rng)
        except BaseException as exc:
            self.errors.append(exc)
            self.stop.set()

    # -- workers --------------------------------------------------------------------------

    def direct_writer(self, rng: random.Random, direct: bool = True) -> None:
        """Versions of random slots: direct (pwrite and submit_write) or buffered."""
        with self.fs.open("/f", "rb+", buffering=0, direct=direct) as f:
            buf = self.buffer(BLOCK_SIZE)
            for n in range(OPS):
                if self.stop.is_set():
                    return
                slot = rng.randrange(SLOTS)
                version = rng.randrange(1, 1 << 30)
                with self.locks[slot]:
                    buf[:] = block(slot, version)
                    if n % 2 or not direct:
                        assert f.pwrite(buf, slot * BLOCK_SIZE) == BLOCK_SIZE
                    else:
                        assert f.submit_write(slot * BLOCK_SIZE, buf).result(60) == BLOCK_SIZE
                    self.model[slot] = version

    def buffered_writer(self, rng: random.Random) -> None:
        self.direct_writer(rng, direct=False)

    def puncher(self, rng: random.Random) -> None:
        with self.fs.open("/f", "rb+", buffering=0) as f:
            for _ in range(OPS // 2):
                if self.stop.is_set():
                    return
                lo = rng.randrange(TAIL)
                hi = min(TAIL, lo + rng.randint(1, 4))
                mode = rng.choice(
                    [FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, FALLOC_FL_ZERO_RANGE]
                )
                with self._clearing(lo, hi):
                    f.fallocate(lo * BLOCK_SIZE, (hi - lo) * BLOCK_SIZE, mode)

    def truncater(self, rng: random.Random) -> None:
        with self.fs.open("/f", "rb+", buffering=0) as f:
            for _ in range(OPS // 3):
                if self.stop.is_set():
                    return
                cut = rng.randrange(TAIL, SLOTS)
                with self._clearing(cut, SLOTS):
                    f.truncate(cut * BLOCK_SIZE)
                    f.truncate(SLOTS * BLOCK_SIZE)

    @contextlib.contextmanager
    def _clearing(self, lo: int, hi: int) -> Iterator[None]:
        """Slots ``[lo, hi)`` locked while the body zeroes them (the model follows);
        then another file takes the blocks just freed at once: a read still in
        flight on them would see its bytes."""
        for s in range(lo, hi):
            self.locks[s].acquire()
        try:
            yield
            for s in range(lo, hi):
                self.model[s] = None
        finally:
            for s in range(lo, hi):
                self.locks[s].release()
        with self.fs.open("/reuse", "wb", buffering=0) as g:
            g.write(b"\xee" * ((hi - lo) * BLOCK_SIZE))

    def churner(self, rng: random.Random) -> None:
        """Another file written and removed: freed blocks get other bytes at once."""
        for i in range(OPS // 2):
            if self.stop.is_set():
                return
            path = f"/churn{i % 3}"
            with self.fs.open(path, "wb", buffering=0) as g:
                g.write(b"\xee" * (rng.randint(1, 8) * BLOCK_SIZE))
            if i % 2:
                self.fs.unlink(path)

    def reader(self, rng: random.Random) -> None:
        with (
            self.fs.open("/f", "rb", buffering=0, direct=True) as d,
            self.fs.open("/f", "rb", buffering=0) as b,
        ):
            buf = self.buffer(8 * BLOCK_SIZE)
            while not self.stop.is_set():
                first = rng.randrange(SLOTS)
                count = rng.randint(1, min(8, SLOTS - first))
                if rng.random() < 0.7:
                    view = memoryview(buf)[: count * BLOCK_SIZE]
                    got = d.preadinto(view, first * BLOCK_SIZE)
                    data = bytes(view[:got])
                    what = "direct read"
                else:
                    data = b.pread(count * BLOCK_SIZE, first * BLOCK_SIZE)
                    what = "buffered read"
                for i in range(len(data) // BLOCK_SIZE):
                    piece = data[i * BLOCK_SIZE : (i + 1) * BLOCK_SIZE]
                    check_block(piece, first + i, what)
                self.reads += 1

    def final_check(self) -> None:
        with self.fs.open("/f", "rb", buffering=0, direct=True) as d:
            buf = aligned_buffer(SLOTS * BLOCK_SIZE)
            assert d.preadinto(buf, 0) == SLOTS * BLOCK_SIZE
        with self.fs.open("/f", "rb") as b:
            cached = b.read()
        assert cached == buf[:], "the cache and the disk differ"
        for slot in range(SLOTS):
            version = self.model[slot]
            want = bytes(BLOCK_SIZE) if version is None else block(slot, version)
            got = buf[slot * BLOCK_SIZE : (slot + 1) * BLOCK_SIZE]
            assert got == want, f"slot {slot}: not what its last operation left"


@pytest.mark.parametrize(
    ("seed", "cache_size", "late_only_direct"),
    [(1, None, True), (2, None, False), (3, "256K", True), (4, "256K", False)],
)
def test_direct_io_races_truncate_punch_and_buffered_io(
    seed: int, cache_size: str | None, late_only_direct: bool
) -> None:
    disk = SimulatedBlockDevice(16 << 20)
    mkfs(disk)
    # requests complete up to 4 ms late: reads are in flight while the others run
    dev = LateBlockDevice(disk, seed, delay=0.004)
    with mount(dev, cache_size=cache_size) as fs:
        with fs.open("/f", "wb", buffering=0) as f:
            f.write(b"".join(block(s, 0) for s in range(SLOTS)))
        race = Race(fs, seed)
        watch_freed_blocks(fs, dev, race.buffers)
        if late_only_direct:  # the commits are quick, the direct I/O late
            dev.late = lambda req: any(id(seg.obj) in race.buffers for seg in req.segments)
        race.run(
            [
                race.direct_writer,
                race.direct_writer,
                race.buffered_writer,
                race.puncher,
                race.truncater,
                race.churner,
            ],
            readers=2,
        )
        assert race.reads > 0
        assert dev.problems == []
        race.final_check()
    assert fsck(disk).clean


def test_planted_bug_a_punch_without_the_range_lock_frees_blocks_under_a_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The freed-block watch of the race test works: with the range lock taken out
    of punch-hole (planted), a punch during a held direct read frees its block, and
    the read reaches the media on a free block.  With the lock, the punch waits
    (here: nowait, EAGAIN)."""
    from daxfs.errors import WouldBlock
    from daxfs.fs import data
    from tests.fs.direct_devices import HeldBlockDevice

    def run() -> list[BaseException]:
        disk = SimulatedBlockDevice(16 << 20)
        mkfs(disk)
        dev = HeldBlockDevice(disk)
        with mount(dev) as fs:
            with fs.open("/f", "wb", buffering=0) as f:
                f.write(block(0, 1))
            with fs.open("/f", "rb+", buffering=0, direct=True) as d:
                buf = aligned_buffer(BLOCK_SIZE)
                watch_freed_blocks(fs, dev, {id(buf)})
                dev.hold(buf)
                fut = d.submit_read(0, buf)
                dev.wait_held(1)
                try:
                    mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
                    d.fallocate(0, BLOCK_SIZE, mode, nowait=True)
                finally:
                    dev.release()
                fut.result(10)
                return dev.problems

    with pytest.raises(WouldBlock):
        run()
    real = data.DataPath.lock_range

    def planted(self: data.DataPath, *args: object, create: bool = False, **kw: object) -> object:
        return real(self, *args, create=True, **kw) if create else None  # type: ignore[arg-type]

    monkeypatch.setattr(data.DataPath, "lock_range", planted)
    problems = run()
    assert len(problems) == 1
    assert "read of free block" in str(problems[0])
