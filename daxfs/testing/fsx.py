"""fsx: a seeded random workload on one file, checked against an in-memory model.

Theory of operation
-------------------
In the spirit of xfstests' fsx: one file is driven by random operations and
every result is compared with a model, a ``bytearray`` that holds what the
file must contain (its length is the file size).  The operations are those
of the data path:

    read        pread at any offset (past EOF too), compared with the model;
                then the same bytes again through preadinto and, inside one
                page, pread (on a bounded mount: re-reads of the pages just
                cached, ``FileCache.readinto_hit`` and ``pread_hit``)
    write       pwrite of random bytes: unaligned, large (copy-on-write past
                256 KiB), beyond EOF (a hole, then data)
    truncate    grow or shrink
    fallocate   modes 0, KEEP_SIZE, PUNCH_HOLE|KEEP_SIZE, ZERO_RANGE and
                ZERO_RANGE|KEEP_SIZE, each with its Linux meaning
    mapread     File.mmap(access="read") of a page-aligned range, compared
    mapwrite    File.mmap() of a range, stores through it, Mapping.msync of
                the stored range, close
    mapfsync    the same, but closed without msync and made durable by
                File.fsync (as Linux: fsync writes back dirty mapped ranges,
                even after munmap)
    pin         File.pin of a range: the SGList's bytes are compared; while
                it is pinned, truncate and punch-hole with nowait over it must
                fail with EAGAIN and change nothing
    seek        SEEK_DATA and SEEK_HOLE: the bytes they skip are zeros, a
                hole starts on a block boundary or at EOF, ENXIO only past
                the data (or EOF)
    dread       a direct read (``direct=True``: bios straight into an aligned
                buffer on a block device, daxfs.fs.direct; DAX itself on pmem)
                of a 512-byte-aligned range, past EOF too; then its last and
                first logical blocks again (their extents cached: the lean read)
    dwrite      a direct write of a 512-byte-aligned range (its first page read
                through the buffered File before and after: cached, on a
                bounded mount, and the write must be seen there): into holes,
                unwritten extents (zeros for the rest of a partly written
                block), past EOF; crashes are injected into it as into write
    aio         two to four direct writes of disjoint aligned pieces in flight
                at once (``submit_write``), then reads of them in flight
                (``submit_read``) and in one call (``preadinto_many``), compared

and those of the device and mount (``FsxOptions.uring``: the file system on
an image file opened through io_uring, so that direct reads take the C lean
read, ``_direct.LeanRead``, and ``submit_read`` the device's C path,
``_uring.BioRing``; a real file cannot lose power, so no crash or powercut
there):

    remount     close, unmount, fsck (must be clean), mount, reopen: the file
                and a neighbour file of known contents must be intact (every
                ``remount_every`` operations, as an operation of its own)
    crash       the next mutating operation runs with the power failing at a
                random fence (SimulatedPmem.schedule_power_failure); a seeded
                crash state is mounted, fsck'ed, and the file must hold the
                model *before* or *after* that operation (for stores through a
                mapping, each aligned 8-byte word is old or new: stores are
                not atomic together; for a direct write cut before its
                completion committed, each 512-byte block is old or new, at
                the old size); the model becomes what survived
    powercut    the power fails between operations: everything that
                returned is durable, the file equals the model exactly

Every random choice comes from ``random.Random(seed)``, so a run is
reproducible from its seed and its number of operations; each operation is
also a self-contained ``Op`` (its data is generated from its own seed), so a
failing sequence can be replayed alone (``run_ops``) and shrunk (``shrink``).

Invariants
  1. ``model`` equals the file after every operation that returned (checked
     at every read, map, pin, seek and remount).
  2. A failure is an ``FsxFailure`` naming the seed, the index of the
     operation and the operation; nothing else escapes ``Fsx.run``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import gc
import itertools
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, cast

from daxfs.block.device import BlockDevice
from daxfs.block.file import open_block
from daxfs.fs.data import FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE
from daxfs.fs.direct import aligned_buffer
from daxfs.fs.fsck import fsck
from daxfs.fs.mount import mkfs, mount
from daxfs.testing.blockcrash import abandon
from daxfs.testing.simblock import SimulatedBlockDevice
from daxfs.testing.simulated import SimulatedPmem

if TYPE_CHECKING:
    from daxfs.fs.file import File
    from daxfs.fs.filesystem import FileSystem
    from daxfs.pmem.device import Device

BLOCK = 4096
PAGE = 4096
SEEK_DATA = getattr(os, "SEEK_DATA", 3)
SEEK_HOLE = getattr(os, "SEEK_HOLE", 4)

FALLOC_MODES = {
    "alloc": 0,
    "keep": FALLOC_FL_KEEP_SIZE,
    "punch": FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
    "zero": FALLOC_FL_ZERO_RANGE,
    "zerokeep": FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE,
}
#: Operations that change the file (the ones a crash is injected into).
MUTATING = ("write", "truncate", "fallocate", "mapwrite", "mapfsync", "dwrite")
#: Default weights of the operations.
WEIGHTS = {
    "read": 10,
    "write": 14,
    "truncate": 4,
    "fallocate": 8,
    "mapread": 3,
    "mapwrite": 4,
    "mapfsync": 2,
    "pin": 3,
    "seek": 4,
    "dread": 3,
    "dwrite": 4,
    "aio": 2,
    "crash": 3,
    "powercut": 1,
}
PATH = "/fsx"
NEIGHBOUR = "/neighbour"
NEIGHBOUR_DATA = bytes(range(256)) * 48  # 12 KiB that must never change
#: alignment of the direct operations (a logical block of the simulated disk)
DIRECT_ALIGN = 512


@dataclasses.dataclass(frozen=True, slots=True)
class Op:
    """One operation, self-contained: ``seed`` generates its data and crash state."""

    kind: str
    offset: int = 0
    length: int = 0
    mode: str = ""  # fallocate mode name, seek whence ("data"/"hole"), crash: the inner op
    seed: int = 0
    fence: int = 0  # crash: the fence at which the power fails (1 = the next)

    def __str__(self) -> str:
        parts = [self.kind]
        if self.mode:
            parts.append(self.mode)
        parts.append(f"{self.offset:#x}+{self.length:#x}")
        if self.fence:
            parts.append(f"@{self.fence}")
        parts.append(f"s{self.seed}")
        return " ".join(parts)

    @classmethod
    def parse(cls, text: str) -> Op:
        """The Op that ``str()`` printed as ``text``."""
        words = text.split()
        kind, rest = words[0], words[1:]
        mode = rest.pop(0) if rest and "+" not in rest[0] else ""
        span = rest.pop(0)
        offset, length = (int(x, 16) for x in span.split("+"))
        fence = int(rest.pop(0)[1:]) if rest and rest[0].startswith("@") else 0
        seed = int(rest.pop(0)[1:]) if rest else 0
        return cls(kind, offset, length, mode, seed, fence)


def format_ops(ops: Sequence[Op]) -> str:
    return "; ".join(str(op) for op in ops)


def parse_ops(text: str) -> list[Op]:
    return [Op.parse(part) for part in text.split(";") if part.strip()]


class FsxFailure(AssertionError):
    """The file disagreed with the model, or an operation failed that must not."""

    def __init__(self, message: str, *, seed: int, index: int, ops: Sequence[Op]) -> None:
        self.message = message
        self.seed = seed
        self.index = index
        self.ops = list(ops)
        op = self.ops[index] if 0 <= index < len(self.ops) else None
        super().__init__(f"seed {seed}, op #{index} ({op}): {message}")


@dataclasses.dataclass
class FsxStats:
    """What a run did."""

    ops: int = 0
    by_kind: dict[str, int] = dataclasses.field(default_factory=dict)
    remounts: int = 0  # each with an fsck
    crashes: int = 0  # power failures inside an operation
    crash_before: int = 0  # ... after which the file held the state before it
    crash_after: int = 0
    crash_mixed: int = 0  # ... stores through a mapping, some words new (allowed)
    powercuts: int = 0  # power failures between operations
    bytes_written: int = 0

    def add(self, other: FsxStats) -> None:
        for f in dataclasses.fields(self):
            if f.name == "by_kind":
                for k, v in other.by_kind.items():
                    self.by_kind[k] = self.by_kind.get(k, 0) + v
            else:
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def summary(self) -> str:
        return (
            f"{self.ops} ops, {self.remounts} remounts with fsck, {self.crashes} crash states "
            f"inside an op ({self.crash_before} before, {self.crash_after} after, "
            f"{self.crash_mixed} mapped stores partly durable), {self.powercuts} power cuts "
            f"between ops, {self.bytes_written >> 20} MiB written"
        )


@dataclasses.dataclass
class FsxOptions:
    """Knobs of a run."""

    max_size: int = 3 << 19  # largest file offset an operation reaches (1.5 MiB)
    big_write: int = 320 << 10  # writes of up to this size happen (copy-on-write past 256 KiB)
    remount_every: int = 100  # ops between remount + fsck (0: never)
    device_size: int = 16 << 20  # small: a crash state copies the device
    weights: dict[str, int] = dataclasses.field(default_factory=lambda: dict(WEIGHTS))
    max_fence: int = 6  # a crash fails the power at fence 1..max_fence of its op
    #: run on a SimulatedBlockDevice (the filesystem through daxfs.block.cache.BlockCache;
    #: a crash fails the power at a FLUSH or FUA write) instead of a SimulatedPmem
    block: bool = False
    #: with ``block``: every mount bounded by this ``cache_size`` (a lazily loaded cache,
    #: file data through a page cache of that size: daxfs.pagecache.bounded)
    cache_size: str | None = None
    #: run on an image file (in /dev/shm, else the temporary directory) opened as a
    #: FileBlockDevice on io_uring (the C lean read with a whole-device cache; the
    #: BioRing; with ``cache_size``, the page cache over the file's direct I/O); no
    #: crashes or power cuts (a real file cannot lose power)
    uring: bool = False


#: the simulated devices fsx can crash
Crashable = SimulatedPmem | SimulatedBlockDevice


class Fsx:
    """One fsx run on a file of a filesystem (``device``: SimulatedPmem or
    SimulatedBlockDevice for crashes).

    ``Fsx(seed).run(ops=N)`` makes N random operations; ``run_ops(list)``
    replays explicit ones.  With a device that is not simulated the crash and
    powercut operations are skipped.
    """

    def __init__(
        self,
        seed: int,
        options: FsxOptions | None = None,
        *,
        device: Device | BlockDevice | str | None = None,
        directory: str = "",
    ) -> None:
        self.seed = seed
        self.options = options or FsxOptions()
        self.rng = random.Random(seed)
        #: the scratch directory of an image made for ``FsxOptions.uring`` (removed by
        #: ``dispose``), and its device
        self._scratch: str | None = None
        if device is None:
            size = self.options.device_size
            if self.options.uring:
                device = self._uring_device(size)
            else:
                device = SimulatedBlockDevice(size) if self.options.block else SimulatedPmem(size)
            mkfs(device)
        self.dev = device
        self.can_crash = isinstance(device, Crashable)
        self.path = directory + PATH
        self.neighbour = directory + NEIGHBOUR
        self.model = bytearray()
        self.stats = FsxStats()
        self.ops: list[Op] = []
        # the last block-aligned write of several blocks drawn: sometimes drawn again
        # whole, an aligned overwrite inside one written extent (the copy-on-write fast
        # path, DataPath._cow_blocks), which random ranges almost never are
        self._aligned: tuple[int, int] | None = None
        try:
            self.fs: FileSystem = self._mount(device)
            if directory and not self.fs.exists(directory):
                self.fs.mkdir(directory)
            with self.fs.open(self.neighbour, "wb", buffering=0) as g:
                g.write(NEIGHBOUR_DATA)
            self.f: File = cast("File", self.fs.open(self.path, "wb+", buffering=0))
        except BaseException:
            self.dispose()  # the scratch image of ``uring`` goes too
            raise

    # -- running --------------------------------------------------------------------------

    def run(self, ops: int | None = None, deadline: float | None = None) -> FsxStats:
        """Make random operations until ``ops`` are done or ``time.monotonic() >= deadline``.

        Raises:
            FsxFailure: with the seed and the sequence so far.
        """
        while (ops is None or len(self.ops) < ops) and (
            deadline is None or time.monotonic() < deadline
        ):
            self.step(self.generate())
        return self.stats

    def run_ops(self, ops: Sequence[Op]) -> FsxStats:
        """Replay explicit operations (a reproducer, or a shrunk sequence)."""
        for op in ops:
            self.step(op)
        return self.stats

    def close(self) -> None:
        """Close the file, unmount, require fsck clean.

        Raises:
            FsxFailure: fsck found problems.
        """
        with contextlib.suppress(ValueError):
            self.f.close()
        self.fs.unmount()
        report = fsck(self.dev)
        if not report.clean:
            raise self._failure(f"fsck at the end:\n{report}", len(self.ops) - 1)

    def _uring_device(self, size: int) -> BlockDevice:
        """An image file of ``size`` bytes in a scratch directory, opened on io_uring.

        Raises:
            NotSupported (EOPNOTSUPP): io_uring cannot be set up here.
        """
        root = "/dev/shm" if os.path.isdir("/dev/shm") else None
        self._scratch = tempfile.mkdtemp(prefix="daxfs-fsx-", dir=root)
        try:
            path = os.path.join(self._scratch, "image")
            return open_block(path, size, create=True, engine="io_uring")
        except BaseException:
            self.dispose()
            raise

    def dispose(self) -> None:
        """Give back what ``FsxOptions.uring`` made (after ``close``, or after a failure:
        then the mount is dropped first): the device closed, its directory removed."""
        if self._scratch is None:
            return
        fs = getattr(self, "fs", None)
        if fs is not None and fs.mounted:
            with contextlib.suppress(BaseException):
                for file in fs.open_files():
                    file.close()
                fs.unmount()
        with contextlib.suppress(BaseException):
            self.dev.close()  # type: ignore[union-attr]
        shutil.rmtree(self._scratch, ignore_errors=True)
        self._scratch = None

    def step(self, op: Op) -> None:
        """Run one operation and check it."""
        index = len(self.ops)
        self.ops.append(op)
        self.stats.ops += 1
        self.stats.by_kind[op.kind] = self.stats.by_kind.get(op.kind, 0) + 1
        try:
            self._execute(op)
        except FsxFailure:
            raise
        except _Mismatch as exc:
            raise self._failure(str(exc), index) from None
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                raise
            raise self._failure(f"{type(exc).__name__}: {exc}", index) from exc

    def _failure(self, message: str, index: int) -> FsxFailure:
        return FsxFailure(message, seed=self.seed, index=index, ops=self.ops)

    # -- generating -----------------------------------------------------------------------

    def generate(self) -> Op:
        """The next random operation (depends only on the generator, the file size and the
        last aligned write drawn)."""
        every = self.options.remount_every
        if every and len(self.ops) % (every + 1) == every:
            return Op("remount")  # explicit, so that a replayed sequence remounts too
        rng = self.rng
        weights = self.options.weights
        kinds = [k for k in weights if weights[k] > 0 and (self.can_crash or k not in _CRASHES)]
        kind = rng.choices(kinds, [weights[k] for k in kinds])[0]
        return self._draw(kind)

    def _draw(self, kind: str) -> Op:
        rng = self.rng
        size = len(self.model)
        seed = rng.randrange(1 << 31)
        top = self.options.max_size
        if kind == "crash":
            inner = rng.choice([k for k in MUTATING if self.options.weights.get(k, 0) > 0])
            base = self._draw(inner)
            fence = rng.randint(1, self.options.max_fence)
            return Op("crash", base.offset, base.length, f"{inner}/{base.mode}", base.seed, fence)
        if kind == "powercut":
            return Op(kind, seed=seed)
        if kind == "write" and self._aligned is not None and rng.random() < 0.2:
            offset, length = self._aligned
            return Op(kind, offset, length, seed=seed)
        if kind in ("read", "write"):
            offset = self._offset(size + (BLOCK if kind == "read" else top // 8))
            length = self._length(self.options.big_write if kind == "write" else 64 << 10)
            length = max(1, min(length, top - offset)) if kind == "write" else length
            offset = min(offset, top - 1)
            if kind == "write" and length >= 2 * BLOCK and not (offset | length) % BLOCK:
                self._aligned = (offset, length)
            return Op(kind, offset, length, seed=seed)
        if kind == "truncate":
            if rng.random() < 0.5 and size:
                return Op(kind, rng.randrange(size + 1), seed=seed)
            return Op(kind, rng.randrange(top), seed=seed)
        if kind == "fallocate":
            mode = rng.choice(list(FALLOC_MODES))
            offset = self._offset(size + top // 8)
            offset = min(offset, top - 1)
            length = max(1, min(self._length(256 << 10), top - offset))
            return Op(kind, offset, length, mode, seed)
        if kind in ("mapread", "mapwrite", "mapfsync", "pin"):
            if size == 0:
                return Op("read", 0, 1, seed=seed)
            if kind == "pin":
                offset = rng.randrange(size)
                return Op(kind, offset, rng.randint(1, min(size - offset, 128 << 10)), seed=seed)
            offset = rng.randrange(0, size, PAGE)
            length = rng.randint(1, min(size - offset, 256 << 10))
            return Op(kind, offset, length, seed=seed)
        if kind == "seek":
            whence = rng.choice(("data", "hole"))
            return Op(kind, self._offset(size + BLOCK), 0, whence, seed)
        if kind in ("dread", "dwrite", "aio"):
            reading = kind == "dread"
            offset = self._offset(size + (BLOCK if reading else top // 8))
            offset = min(offset, top - DIRECT_ALIGN) // DIRECT_ALIGN * DIRECT_ALIGN
            length = self._length(64 << 10 if reading else self.options.big_write)
            length = -(-length // DIRECT_ALIGN) * DIRECT_ALIGN
            if not reading:
                length = min(length, top - offset)
            return Op(kind, offset, length, seed=seed)
        raise AssertionError(f"unknown operation {kind!r}")

    def _offset(self, limit: int) -> int:
        """An offset below ``limit``: often block-aligned, often not."""
        rng = self.rng
        value = rng.randrange(max(1, limit))
        roll = rng.random()
        if roll < 0.3:
            return value & ~(BLOCK - 1)
        if roll < 0.4:
            return max(0, (value & ~(BLOCK - 1)) - 1)
        return value

    def _length(self, big: int) -> int:
        """A length: mostly small, sometimes a few blocks, sometimes ``big``."""
        rng = self.rng
        roll = rng.random()
        if roll < 0.5:
            return rng.randint(1, 3 * BLOCK)
        if roll < 0.85:
            return rng.randint(1, 32 * BLOCK)
        if roll < 0.95:
            return rng.randint(BLOCK, big)
        return rng.choice((BLOCK, 2 * BLOCK, 64 * BLOCK, big))

    # -- executing --------------------------------------------------------------------------

    def _execute(self, op: Op) -> None:
        kind = op.kind
        if kind == "crash":
            self._crash(op)
        elif kind == "powercut":
            self._powercut(op)
        elif kind == "remount":
            self._remount()
        else:
            new = self._mutate(op)
            if new is not None:
                self.model = new

    def _mutate(self, op: Op) -> bytearray | None:
        """Run a data-path operation; return the new model if it changes the file."""
        handler = getattr(self, f"_op_{op.kind}", None)
        if handler is None:
            raise AssertionError(f"unknown operation {op.kind!r}")
        result: bytearray | None = handler(op)
        return result

    def _op_read(self, op: Op) -> None:
        got = self.f.pread(op.length, op.offset)
        self._expect(got, op.offset, op.length, "pread")
        # again, from the pages the read just cached on a bounded mount (readinto_hit,
        # and pread_hit inside one page); the same checks on any other mount
        into = bytearray(op.length)
        n = self.f.preadinto(into, op.offset)
        self._expect(bytes(into[:n]), op.offset, op.length, "preadinto")
        if op.length and op.offset // PAGE == (op.offset + op.length - 1) // PAGE:
            self._expect(self.f.pread(op.length, op.offset), op.offset, op.length, "pread again")

    def _op_write(self, op: Op) -> bytearray:
        data = random.Random(op.seed).randbytes(op.length)
        n = self.f.pwrite(data, op.offset)
        if n != len(data):
            raise _Mismatch(f"pwrite wrote {n} of {len(data)} bytes")
        self.stats.bytes_written += n
        return _written(self.model, op.offset, data)

    def _direct(self) -> File:
        return cast("File", self.fs.open(self.path, "rb+", buffering=0, direct=True))

    def _op_dread(self, op: Op) -> None:
        buf = memoryview(aligned_buffer(max(op.length, 1)))[: op.length]
        with self._direct() as d:
            got = d.preadinto(buf, op.offset)
            self._expect(bytes(buf[:got]), op.offset, op.length, "direct read")
            # the last and the first logical block again: the extent the read looked up
            # is cached now, so on io_uring these take the C lean read (_direct.LeanRead)
            for at in (op.offset + op.length - DIRECT_ALIGN, op.offset):
                if op.length >= DIRECT_ALIGN and at < len(self.model):
                    one = memoryview(aligned_buffer(DIRECT_ALIGN))
                    got = d.preadinto(one, at)
                    self._expect(bytes(one[:got]), at, DIRECT_ALIGN, "direct re-read")

    def _op_dwrite(self, op: Op) -> bytearray:
        data = random.Random(op.seed).randbytes(op.length)
        buf = memoryview(aligned_buffer(op.length))
        buf[:] = data
        # the range's first page read through the buffered File before and after: on a
        # bounded mount it is cached, and only its space's stamp can tell the page
        # cache that the direct write changed it (daxfs.fs.filecache)
        head = min(op.length, PAGE - op.offset % PAGE)
        if head and op.offset < len(self.model):
            self._expect(self.f.pread(head, op.offset), op.offset, head, "pread before dwrite")
        with self._direct() as d:
            n = d.pwrite(buf, op.offset)
        if n != len(data):
            raise _Mismatch(f"direct pwrite wrote {n} of {len(data)} bytes")
        self.stats.bytes_written += n
        new = _written(self.model, op.offset, data)
        got, want = self.f.pread(head, op.offset), bytes(new[op.offset : op.offset + head])
        if got != want:
            raise _Mismatch(
                f"pread after dwrite of [{op.offset}, +{head}): {_diff(got, want, op.offset)}"
            )
        return new

    def _op_aio(self, op: Op) -> bytearray:
        pieces = _aio_pieces(op)
        model = self.model
        with self._direct() as d:
            futures = []
            for offset, data in pieces:
                buf = aligned_buffer(len(data))
                buf[:] = data
                futures.append((d.submit_write(offset, buf), len(data)))
            for future, n in futures:
                if future.result() != n:
                    raise _Mismatch(f"submit_write completed {future.result()} of {n} bytes")
            for offset, data in pieces:
                model = _written(model, offset, data)
            reads = []
            for offset, data in pieces:
                buf = aligned_buffer(len(data))
                reads.append((offset, buf, d.submit_read(offset, buf)))
            for offset, buf, future in reads:
                got = future.result()
                want = bytes(model[offset : offset + len(buf)])
                if buf[:got] != want:
                    raise _Mismatch(
                        f"submit_read of [{offset}, +{len(buf)}): {_diff(buf[:got], want, offset)}"
                    )
            # the same pieces in one call (File.preadinto_many: one batch of bios)
            items = [(offset, aligned_buffer(len(data))) for offset, data in pieces]
            for (offset, buf), got in zip(items, d.preadinto_many(items), strict=True):
                want = bytes(model[offset : offset + len(buf)])
                if buf[:got] != want:
                    raise _Mismatch(
                        f"preadinto_many of [{offset}, +{len(buf)}): "
                        f"{_diff(buf[:got], want, offset)}"
                    )
        self.stats.bytes_written += sum(len(data) for _, data in pieces)
        return model

    def _op_truncate(self, op: Op) -> bytearray:
        self.f.truncate(op.offset)
        return _resized(self.model, op.offset)

    def _op_fallocate(self, op: Op) -> bytearray:
        mode = FALLOC_MODES[op.mode]
        self.f.fallocate(op.offset, op.length, mode)
        return _fallocated(self.model, op.offset, op.length, mode)

    def _op_mapread(self, op: Op) -> None:
        if not self._mappable(op):
            return
        m = self.f.mmap(op.offset, op.length, access="read")
        try:
            got = bytes(m[0 : op.length])
        finally:
            m.close()
        self._expect(got, op.offset, op.length, "read mapping")

    def _op_mapwrite(self, op: Op) -> bytearray | None:
        return self._store_mapped(op, msync=True)

    def _op_mapfsync(self, op: Op) -> bytearray | None:
        return self._store_mapped(op, msync=False)

    def _store_mapped(self, op: Op, *, msync: bool) -> bytearray | None:
        if not self._mappable(op):
            return None
        rng = random.Random(op.seed)
        lo = rng.randrange(op.length)
        hi = rng.randint(lo + 1, op.length)
        data = rng.randbytes(hi - lo)
        m = self.f.mmap(op.offset, op.length)
        try:
            m[lo:hi] = data
            if msync:
                m.msync(lo, hi - lo)
        finally:
            m.close()
        if not msync:
            self.f.fsync()
        self.stats.bytes_written += hi - lo
        return _written(self.model, op.offset + lo, data)

    def _mappable(self, op: Op) -> bool:
        """A replayed sequence may ask for a range the file no longer has: skip it."""
        return op.length > 0 and op.offset % PAGE == 0 and op.offset + op.length <= len(self.model)

    def _op_pin(self, op: Op) -> None:
        if not (op.length > 0 and op.offset + op.length <= len(self.model)):
            return
        sg = self.f.pin(op.offset, op.length)
        try:
            got = b"".join(bytes(v) for v in sg.views())
            self._expect(got, op.offset, op.length, "pinned SGList")
            if sum(s.length for s in sg.segments) != op.length:
                raise _Mismatch(f"SGList segments cover {sum(s.length for s in sg.segments)} bytes")
            self._refused_while_pinned(op)
        finally:
            sg.unpin()

    def _refused_while_pinned(self, op: Op) -> None:
        """Truncate and punch over a pinned range, nowait: EAGAIN, nothing changed."""
        size = len(self.model)

        def truncate() -> None:
            self.f.truncate(op.offset, nowait=True)

        def punch() -> None:
            self.f.fallocate(op.offset, op.length, FALLOC_MODES["punch"], nowait=True)

        attempts: list[tuple[str, Callable[[], None]]] = [("truncate", truncate), ("punch", punch)]
        for what, attempt in attempts:
            try:
                attempt()
            except BlockingIOError as exc:
                if exc.errno != errno.EAGAIN:
                    raise _Mismatch(f"{what} over a pin: errno {exc.errno}, not EAGAIN") from None
            else:
                raise _Mismatch(f"{what} over pinned bytes succeeded (nowait)")
        if self.f.stat().st_size != size:
            raise _Mismatch(f"a refused truncate changed the size to {self.f.stat().st_size}")

    def _op_seek(self, op: Op) -> None:
        size = len(self.model)
        want_data = op.mode == "data"
        whence = SEEK_DATA if want_data else SEEK_HOLE
        try:
            found: int | None = self.f.seek(op.offset, whence)
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                raise
            found = None
        model = self.model
        what = "SEEK_DATA" if want_data else "SEEK_HOLE"
        if found is None:
            if op.offset < size and (not want_data or any(model[op.offset :])):
                raise _Mismatch(f"{what} at {op.offset} gave ENXIO; size {size}")
            return
        if not op.offset <= found <= size or (want_data and found == size):
            raise _Mismatch(f"{what} at {op.offset} gave {found}; size {size}")
        if want_data and any(model[op.offset : found]):
            first = next(i for i in range(op.offset, found) if model[i])
            raise _Mismatch(f"{what} at {op.offset} gave {found}, skipping data at {first}")
        if not want_data and any(model[found : min(size, (found // BLOCK + 1) * BLOCK)]):
            raise _Mismatch(f"{what} at {op.offset} gave {found}, where data is")
        if found not in (op.offset, size) and found % BLOCK:
            raise _Mismatch(f"{what} at {op.offset} gave {found}: not on a block boundary")

    def _expect(self, got: bytes, offset: int, length: int, what: str) -> None:
        want = bytes(self.model[offset : offset + length])
        if got != want:
            raise _Mismatch(f"{what} of [{offset}, +{length}): {_diff(got, want, offset)}")

    # -- remount, crashes ---------------------------------------------------------------------

    def _remount(self) -> None:
        self.f.close()
        self.fs.unmount()
        report = fsck(self.dev)
        if not report.clean:
            raise _Mismatch(f"fsck after unmount:\n{report}")
        self.stats.remounts += 1
        self._reopen(self.dev)

    def _reopen(self, dev: Device | BlockDevice | str) -> None:
        self.dev = dev
        self.fs = self._mount(dev)
        self.f = cast("File", self.fs.open(self.path, "rb+", buffering=0))
        self._check_all("after mount")

    def _check_all(self, when: str) -> None:
        got = self.f.pread(len(self.model) + 1, 0)
        if got != self.model:
            raise _Mismatch(f"{when}: file {_diff(got, bytes(self.model), 0)}")
        with self.fs.open(self.neighbour, "rb") as g:
            if g.read() != NEIGHBOUR_DATA:
                raise _Mismatch(f"{when}: the neighbour file changed")

    def _powercut(self, op: Op) -> None:
        """Power fails between operations: everything that returned is durable."""
        assert isinstance(self.dev, Crashable)
        state = self.dev.crash(op.seed)
        self._abandon()
        self.stats.powercuts += 1
        self._recover(state, "after a power cut between operations")

    def _crash(self, op: Op) -> None:
        """The power fails at fence ``op.fence`` of the inner operation."""
        dev = self.dev
        assert isinstance(dev, Crashable)
        inner_kind, _, mode = op.mode.partition("/")
        inner = Op(inner_kind, op.offset, op.length, mode, op.seed)
        old = bytes(self.model)
        dev.schedule_power_failure(op.fence)
        try:
            new = self._mutate(inner)
        except BaseException:
            if not dev.power_failed:
                dev.schedule_power_failure(None)
                raise
            new = None  # whatever happened after the power failed is moot
            failed = True
        else:
            failed = dev.power_failed
        if not failed:  # the operation completed before the fence
            dev.schedule_power_failure(None)
            if new is not None:
                self.model = new
            return
        after = _expected_after(old, inner, self.options)
        state = dev.crash(op.seed)
        self._abandon()
        self.stats.crashes += 1
        fs = self._mount_checked(state, f"after a crash at fence {op.fence}")
        try:
            with fs.open(self.path, "rb") as g:
                got = g.read()
        finally:
            fs.unmount()
        if got == old:
            self.stats.crash_before += 1
        elif got == after:
            self.stats.crash_after += 1
        elif inner_kind in ("mapwrite", "mapfsync") and _word_mix(got, old, after):
            self.stats.crash_mixed += 1
        elif inner_kind == "dwrite" and _sector_mix(got, old, after):
            self.stats.crash_mixed += 1  # a direct overwrite torn between logical blocks
        else:
            raise _Mismatch(
                f"after a crash at fence {op.fence} the file is neither before nor after: "
                f"vs before {_diff(got, old, 0)}; vs after {_diff(got, after, 0)}"
            )
        self.model = bytearray(got)
        self._reopen(state)

    def _recover(self, state: Crashable, when: str) -> None:
        fs = self._mount_checked(state, when)
        fs.unmount()
        self._reopen(state)

    def _mount_checked(self, state: Crashable, when: str) -> FileSystem:
        """Mount (recovery), unmount, fsck clean, mount again."""
        with self._mount(state):
            pass
        report = fsck(state)
        if not report.clean:
            raise _Mismatch(f"fsck {when}:\n{report}")
        return self._mount(state)

    def _mount(self, dev: Device | BlockDevice | str) -> FileSystem:
        bounded = self.options.cache_size if isinstance(dev, BlockDevice) else None
        return mount(dev, cache_size=bounded)

    def _abandon(self) -> None:
        """Forget the filesystem of a device whose power failed (its objects are moot)."""
        for obj in (self.f,):
            with contextlib.suppress(BaseException):
                obj.close()
        if self.fs is not None:
            abandon(self.fs)  # a block cache gives its memory back now
        self.fs = None  # type: ignore[assignment]
        self.f = None  # type: ignore[assignment]
        if self.stats.crashes % 16 == 0:
            gc.collect()  # mappings of dead devices hold their memory until collected


_CRASHES = ("crash", "powercut")


class _Mismatch(Exception):
    """A check failed (turned into an FsxFailure with the op sequence)."""


# --------------------------------------------------------------------------- the model


def _resized(model: bytearray, size: int) -> bytearray:
    out = bytearray(model[:size])
    out.extend(bytes(size - len(out)))
    return out


def _written(model: bytearray, offset: int, data: bytes) -> bytearray:
    out = bytearray(model)
    if offset > len(out):
        out.extend(bytes(offset - len(out)))
    out[offset : offset + len(data)] = data
    return out


def _fallocated(model: bytearray, offset: int, length: int, mode: int) -> bytearray:
    out = bytearray(model)
    end = offset + length
    size = len(out)
    if mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE):
        hi = min(end, size)
        if offset < hi:
            out[offset:hi] = bytes(hi - offset)
    if not mode & FALLOC_FL_KEEP_SIZE and end > size:
        out.extend(bytes(end - size))
    return out


def _aio_pieces(op: Op) -> list[tuple[int, bytes]]:
    """Two to four disjoint aligned pieces of ``[op.offset, op.offset+op.length)`` and
    their data, from the op's seed."""
    rng = random.Random(op.seed)
    units = op.length // DIRECT_ALIGN
    count = min(units, rng.randint(2, 4))
    cuts = sorted(rng.sample(range(1, units), count - 1)) if count > 1 else []
    bounds = [0, *cuts, units]
    return [
        (op.offset + a * DIRECT_ALIGN, rng.randbytes((b - a) * DIRECT_ALIGN))
        for a, b in itertools.pairwise(bounds)
    ]


def _expected_after(old: bytes, op: Op, options: FsxOptions) -> bytes:
    """The file after ``op`` completes, from the model (for the crash check)."""
    model = bytearray(old)
    if op.kind in ("write", "dwrite"):
        return bytes(_written(model, op.offset, random.Random(op.seed).randbytes(op.length)))
    if op.kind == "truncate":
        return bytes(_resized(model, op.offset))
    if op.kind == "fallocate":
        return bytes(_fallocated(model, op.offset, op.length, FALLOC_MODES[op.mode]))
    if op.kind in ("mapwrite", "mapfsync"):
        if not (op.length > 0 and op.offset % PAGE == 0 and op.offset + op.length <= len(old)):
            return old
        rng = random.Random(op.seed)
        lo = rng.randrange(op.length)
        hi = rng.randint(lo + 1, op.length)
        return bytes(_written(model, op.offset + lo, rng.randbytes(hi - lo)))
    raise AssertionError(f"{op.kind} is not a mutating operation")


def _sector_mix(got: bytes, old: bytes, new: bytes) -> bool:
    """A direct write cut by a crash before its completion committed: the size is the
    old one and every logical block (DIRECT_ALIGN bytes) is old or new -- an overwrite
    in place is not atomic as a whole (docs/GUARANTEES.md), and blocks it allocated
    read as zeros, as before."""
    if len(got) != len(old) or len(new) < len(got):
        return False
    step = DIRECT_ALIGN
    return all(
        got[i : i + step] in (old[i : i + step], new[i : i + step])
        for i in range(0, len(got), step)
    )


def _word_mix(got: bytes, old: bytes, new: bytes) -> bool:
    """Every aligned 8-byte word of ``got`` is that of ``old`` or of ``new`` (same size)."""
    if not len(got) == len(old) == len(new):
        return False
    for i in range(0, len(got), 8):
        word = got[i : i + 8]
        if word != old[i : i + 8] and word != new[i : i + 8]:
            return False
    return True


def _diff(got: bytes, want: bytes, base: int) -> str:
    """Where two byte strings first differ, in words."""
    prefix = f"length {len(got)}, expected {len(want)}" if len(got) != len(want) else "same length"
    for i, (a, b) in enumerate(zip(got, want, strict=False)):
        if a != b:
            first = f"{got[i : i + 8]!r} vs {want[i : i + 8]!r}"
            return f"{prefix}; first difference at {base + i}: {first}"
    return prefix


# --------------------------------------------------------------------------- driving


def run(
    seed: int,
    *,
    ops: int | None = None,
    seconds: float | None = None,
    options: FsxOptions | None = None,
    device: Device | BlockDevice | str | None = None,
    directory: str = "",
) -> FsxStats:
    """One fsx run; the file is checked and fsck'ed at the end.

    Raises:
        FsxFailure: naming the seed, the op and the sequence that led there.
    """
    deadline = None if seconds is None else time.monotonic() + seconds
    fsx = Fsx(seed, options, device=device, directory=directory)
    try:
        try:
            stats = fsx.run(ops, deadline)
            fsx._check_all("at the end")
        except _Mismatch as exc:
            raise fsx._failure(str(exc), len(fsx.ops) - 1) from None
        fsx.close()
    finally:
        fsx.dispose()
    return stats


def replay(ops: Sequence[Op], *, seed: int = 0, options: FsxOptions | None = None) -> FsxStats:
    """Run explicit operations on a fresh simulated device (a reproducer).

    Raises:
        FsxFailure.
    """
    fsx = Fsx(seed, options)
    try:
        stats = fsx.run_ops(ops)
        fsx.close()
    finally:
        fsx.dispose()
    return stats


def shrink(
    failure: FsxFailure, *, options: FsxOptions | None = None, budget: float = 30.0
) -> list[Op]:
    """A shorter sequence that still fails the same way (same kind of op), by
    removing chunks of operations while the failure persists (ddmin, bounded by
    ``budget`` seconds).  Returns the shortest sequence found."""
    ops = failure.ops[: failure.index + 1]
    target = ops[-1].kind
    deadline = time.monotonic() + budget

    def fails(candidate: list[Op]) -> bool:
        if not candidate or candidate[-1].kind != target:
            return False
        try:
            replay(candidate, seed=failure.seed, options=options)
        except FsxFailure:
            return True
        return False

    chunk = max(1, len(ops) // 2)
    while chunk >= 1 and time.monotonic() < deadline:
        i = 0
        removed = False
        while i < len(ops) - 1 and time.monotonic() < deadline:
            candidate = ops[:i] + ops[i + chunk :]
            if fails(candidate):
                ops = candidate
                removed = True
            else:
                i += chunk
        if not removed:
            chunk //= 2
    return ops


def _iter_seeds(seed: int) -> Iterator[int]:
    rng = random.Random(seed)
    while True:
        yield rng.randrange(1 << 31)


def main(argv: list[str] | None = None) -> int:
    """``python -m daxfs.testing.fsx``: run, replay or shrink; exit 1 on a failure."""
    import argparse
    import shlex
    import sys

    parser = argparse.ArgumentParser(prog="python -m daxfs.testing.fsx", description=__doc__)
    parser.add_argument("--seed", type=int, default=None, help="default: random, printed")
    parser.add_argument("--ops", type=int, default=None, help="operations per run")
    parser.add_argument("--seconds", type=float, default=None, help="time budget")
    parser.add_argument("--replay", default=None, help="an op sequence printed by a failure")
    parser.add_argument("--shrink", action="store_true", help="shrink a failing sequence")
    parser.add_argument(
        "--weight",
        action="append",
        default=[],
        metavar="KIND=N",
        help=f"weight of an operation (0 disables it); kinds: {', '.join(WEIGHTS)}",
    )
    parser.add_argument(
        "--block",
        action="store_true",
        help="run on a simulated block device (the filesystem through its buffer cache)",
    )
    parser.add_argument(
        "--uring",
        action="store_true",
        help="run on an image file through io_uring (the C read paths; no crashes)",
    )
    parser.add_argument(
        "--cache-size",
        default=None,
        help="with --block or --uring: mount bounded by this cache_size (the page cache)",
    )
    args = parser.parse_args(argv)
    options = FsxOptions(block=args.block, uring=args.uring, cache_size=args.cache_size)
    for item in args.weight:
        kind, _, value = item.partition("=")
        if kind not in WEIGHTS or not value.isdigit():
            parser.error(f"--weight {item}: expected KIND=N with KIND one of {', '.join(WEIGHTS)}")
        options.weights[kind] = int(value)
    seed = args.seed if args.seed is not None else random.randrange(1 << 31)
    shown = list(argv if argv is not None else sys.argv[1:])
    if args.seed is None:
        shown += ["--seed", str(seed)]
    print(f"$ python -m daxfs.testing.fsx {shlex.join(shown)}", flush=True)
    try:
        if args.replay is not None:
            stats = replay(parse_ops(args.replay), seed=seed, options=options)
        else:
            ops = args.ops if args.ops is not None or args.seconds else 1000
            stats = run(seed, ops=ops, seconds=args.seconds, options=options)
    except FsxFailure as exc:
        print(f"FAIL fsx {exc}".splitlines()[0])
        ops_ = exc.ops[: exc.index + 1]
        if args.shrink:
            ops_ = shrink(exc, options=options)
        print(
            f"  reproduce: python -m daxfs.testing.fsx --seed {exc.seed} "
            f"--replay '{format_ops(ops_)}'"
        )
        return 1
    print(f"fsx seed {seed}: {stats.summary()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
