"""BlockCache: the persistent-memory ``Device`` interface over a block device.

Theory of operation
-------------------
The filesystem (daxfs.fs) talks to a ``daxfs.pmem.Device``: views of device
memory (``direct_access``), copies (``write``, ``fill``) and the persistence
primitives ``flush(range)`` / ``drain()``.  On persistent memory a store is
durable once its line was flushed and a fence ran.  A block device with a
volatile write cache has a different contract: a write is durable once it
carried FUA or a later FLUSH completed (daxfs.block.device).  ``BlockCache``
maps the first onto the second exactly:

    memory      a cache of the whole device in DRAM: a memfd of ``size`` bytes,
                mapped shared, filled from READ bios when the cache opens
                (chunks of ``LOAD_CHUNK`` bytes, several in flight)
    store       a store into a view, ``write`` or ``fill``: the cache only
    flush(r)    records the logical blocks covering ``r`` as dirty (no I/O: the
                line "starts its write-back")
    drain()     writes every dirty run back in WRITE bios (plugged, so adjacent
                runs merge), waits for them, then issues one FLUSH; a drain of a
                single run writes it with FUA instead.  Nothing dirty: nothing
                to do (every earlier drain ended with its FLUSH or FUA).

So "stored + flushed + fenced = durable" holds, and the journal's fence
ordering (log, fence, header, fence, apply, fence) becomes FLUSH ordering:
the header's WRITE is submitted only after the FLUSH (or FUA) that made the
log durable completed.  Stores that no flush covered never reach the device
(on pmem they might, at any time: the filesystem never relies on either).

Atomicity.  The journal needs aligned 8-byte stores to be failure-atomic
(docs/GUARANTEES.md).  A write-back covers whole logical blocks holding the
cache's current bytes, and a device writes one logical block atomically
(a multi-block write may tear only at block boundaries: the model of
``daxfs.testing.SimulatedBlockDevice``); an aligned 8-byte word never crosses
a logical block, so every crash state of the block device is one the pmem
model allows.  tests/crash/test_block_fs_ops.py proves it for every
filesystem operation at every persist point.

Mapping.  ``fd`` is the memfd, so DAX mmap (daxfs.mm) maps the cache itself:
stores through a mapping reach the device when msync or fsync flushes their
range and drains, as a page-cache mmap does on Linux.  ``native_region`` is a
C engine over the cache for the filesystem's read fast path (reads only; every
store goes through this class, which tracks what is dirty).

Memory.  The cache holds the whole device: DRAM use is the device's size
(memfd pages are allocated as the load touches them), checked when the cache
opens against MemAvailable (ENOMEM naming both sizes).  ``load=False`` skips
the load and the check, for a subclass that fills the memfd itself:
daxfs.pagecache.bounded.BoundedBlockCache (``mount(..., cache_size=...)``)
loads pages as they are touched and keeps file data in a page cache of
``cache_size`` bytes, evicted LRU; its ``_drain_more`` hook writes that
cache back before ``drain``'s runs and FLUSH.

Invariants
  1. After ``drain()`` returns, every byte of every range flushed before it was
     called is on the device and durable (FLUSH completed, or FUA).
  2. Drains are serialized (``_drain_lock``): a drain that finds nothing dirty
     because another thread took its ranges waits for that thread's FLUSH.
  3. A failed write-back (EIO, a short completion) raises its OSError, naming
     the sector, from ``drain``; its ranges stay dirty, so nothing flushed is
     forgotten (the journal then turns read-only or invalidates its header).
  4. Every range is checked before use (``check_range``); the cache never
     touches memory outside ``[0, size)``.
  5. ``close()`` writes back what is dirty, then refuses (BufferError, device
     still open) while views from ``direct_access`` are alive.

Direct I/O (daxfs.fs.direct) moves file data between a caller's buffer and
``bdev`` around the cache; two methods keep the two coherent:
``write_back(offset, length)`` before a direct read (the dirty blocks of the
range reach the device, durable, the rest stays dirty), and
``invalidate(offset, length, data)`` after a direct write (the cache's bytes
of the range become the device's: ``data`` copied in, or read back).  Both
hold the drain lock, so no write-back of the same blocks runs meanwhile.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING

from daxfs.block.bio import SECTOR_SHIFT, Bio, BioFlags, BioOp
from daxfs.block.device import BlockDevice
from daxfs.errors import Busy, DaxfsError, InvalidArgument, ReadOnly
from daxfs.pmem import cpu
from daxfs.pmem.device import Device, Granularity, check_range

if TYPE_CHECKING:
    from typing_extensions import Buffer

    from daxfs.pmem import _native

#: bytes per READ bio while the cache loads, and how many are in flight at once
LOAD_CHUNK = 4 << 20
LOAD_DEPTH = 4


class BlockCache(Device):
    """A ``Device`` whose memory is a DRAM cache of ``bdev``; see the module docstring.

    ``own=True`` closes ``bdev`` when the cache closes.  ``readonly`` defaults to
    the block device's own.  ``memory_limit`` bounds the DRAM the cache may take
    (default: the MemAvailable of /proc/meminfo, no bound where it cannot be read).

    Raises (construction):
        InvalidArgument (EINVAL): the block device is closed or holds less than
            one 4 KiB page.
        OSError(ENOMEM): the device is larger than ``memory_limit``: the cache
            holds all of it (named, with both sizes).
        OSError: a READ bio of the load failed (EIO naming the sector).
    """

    persist_method = "bio"

    def __init__(
        self,
        bdev: BlockDevice,
        *,
        own: bool = False,
        readonly: bool | None = None,
        memory_limit: int | None = None,
        load: bool = True,
    ) -> None:
        if bdev.closed:
            raise InvalidArgument(f"block device {bdev.name} is closed")
        size = bdev.size
        if size < mmap.PAGESIZE:
            raise InvalidArgument(f"block device {bdev.name} of {size} bytes is too small")
        limit = memory_available() if memory_limit is None else memory_limit
        if load and limit is not None and size > limit:
            raise OSError(
                errno.ENOMEM,
                f"the block cache holds the whole device: {bdev.name} is {size} bytes, "
                f"more than the {limit} bytes of memory available (no bounded cache yet)",
                bdev.name,
            )
        self.bdev = bdev
        self.size = size
        self.path = bdev.name
        self.readonly = bool(bdev.readonly if readonly is None else readonly or bdev.readonly)
        lbs = bdev.limits.logical_block_size
        self.block_size = lbs
        self.granularity = Granularity.PAGE if lbs >= mmap.PAGESIZE else Granularity.CACHE_LINE
        self._own = own
        self._discarded = False
        self._dirty: list[tuple[int, int]] = []
        self._dirty_lock = threading.Lock()
        self._drain_lock = threading.RLock()
        #: set by drain (under its lock): _drain_more wrote, so end with a FLUSH, not FUA
        self._must_flush = False
        #: write-backs, WRITE bios, FLUSH bios and FUA writes issued (for tests and info)
        self.stats = {"drains": 0, "writes": 0, "flushes": 0, "fua": 0, "loaded": 0}
        self._fd = os.memfd_create("daxfs-block-cache", os.MFD_CLOEXEC)
        # a cache dropped unclosed (a mount abandoned after a power failure in a crash
        # test) must not keep its memfd: close it when collected
        self._fd_closer = weakref.finalize(self, os.close, self._fd)
        try:
            os.ftruncate(self._fd, size)
            self._map: mmap.mmap | None = mmap.mmap(self._fd, size, mmap.MAP_SHARED)
            try:
                if load:
                    self._load()
                if self.readonly:  # views of a read-only device are read-only
                    self._map.close()
                    self._map = mmap.mmap(self._fd, size, mmap.MAP_SHARED, mmap.PROT_READ)
                self._view, self._region = self._attach()
            except BaseException:
                self._map.close()
                raise
        except BaseException:
            self._fd_closer()
            raise

    def _attach(self) -> tuple[memoryview, _native.Region | None]:
        assert self._map is not None
        view = memoryview(self._map)
        try:
            native = cpu.make_region(self._map, view, "none", self.readonly)
        except InvalidArgument:  # no C extension: copies in Python
            return view, None
        except BaseException:
            view.release()  # else the caller's unmap fails (BufferError) over this error
            raise
        return view, native if cpu.is_native(native) else None

    def _load(self) -> None:
        """Fill the cache from the device: READ bios, ``LOAD_DEPTH`` chunks in flight."""
        assert self._map is not None
        with memoryview(self._map) as whole:
            inflight: list[Bio] = []
            try:
                for start in range(0, self.size, LOAD_CHUNK):
                    end = min(start + LOAD_CHUNK, self.size)
                    bio = Bio(BioOp.READ, start >> SECTOR_SHIFT, [whole[start:end]])
                    inflight.append(bio)
                    self.bdev.submit_bio(bio)
                    if len(inflight) >= LOAD_DEPTH:
                        inflight.pop(0).wait()
                while inflight:
                    inflight.pop(0).wait()
            except BaseException:
                for bio in inflight:  # the others still hold views of the mapping
                    with contextlib.suppress(BaseException):
                        bio.wait()
                raise
        self.stats["loaded"] += self.size

    # -- properties --------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._map is None or self._discarded

    @property
    def lost(self) -> str | None:
        return self.bdev.lost

    @property
    def fd(self) -> int:
        """The memfd of the cache: DAX mmap maps the cache (msync writes it back)."""
        self._check_open()
        return self._fd

    def native_region(self) -> _native.Region | None:
        """The C engine over the cache, for the read fast path (reads only)."""
        return self._region

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{self.size} bytes"
        return f"<BlockCache of {self.bdev.name} {state}>"

    # -- memory ------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._map is None or self._discarded:
            raise ValueError("I/O operation on closed device")

    def _check_writable(self) -> None:
        if self.readonly:
            raise ReadOnly(f"device {self.path} is open read-only", self.path)

    def direct_access(self, offset: int, length: int) -> memoryview:
        self._check_open()
        check_range(offset, length, self.size)
        return self._view[offset : offset + length]

    def read(self, offset: int, length: int) -> bytes:
        self._check_open()
        check_range(offset, length, self.size)
        return bytes(self._view[offset : offset + length])

    def readinto(self, offset: int, buffer: Buffer) -> int:
        self._check_open()
        with memoryview(buffer) as out, out.cast("B") as dst:
            check_range(offset, len(dst), self.size)
            dst[:] = self._view[offset : offset + len(dst)]
            return len(dst)

    def write(self, offset: int, data: Buffer, *, drain: bool = True) -> None:
        self._check_open()
        self._check_writable()
        with memoryview(data) as src, src.cast("B") as flat:
            n = len(flat)
            check_range(offset, n, self.size)
            self._view[offset : offset + n] = flat
        self._mark(offset, n)
        if drain:
            self.drain()

    def writer(self) -> Callable[[int, Buffer], None]:
        def write_nodrain(offset: int, data: Buffer) -> None:
            self.write(offset, data, drain=False)

        return write_nodrain

    def _check_fill(self, offset: int, length: int, byte: int) -> None:
        self._check_open()
        self._check_writable()
        check_range(offset, length, self.size)
        if not isinstance(byte, int) or not 0 <= byte <= 255:
            raise InvalidArgument(f"fill byte must be in [0, 255], not {byte!r}")

    def fill(self, offset: int, length: int, byte: int = 0, *, drain: bool = True) -> None:
        self._check_fill(offset, length, byte)
        if self._region is not None:
            self._region.memset(offset, length, byte, False)
        else:
            self._view[offset : offset + length] = bytes([byte]) * length
        self._mark(offset, length)
        if drain:
            self.drain()

    # -- persistence -------------------------------------------------------------------

    def _mark(self, offset: int, length: int) -> None:
        if length:
            bs = self.block_size
            start = offset - offset % bs
            end = min(-(-(offset + length) // bs) * bs, self.size)
            with self._dirty_lock:
                self._dirty.append((start, end))

    def flush(self, offset: int, length: int) -> None:
        self._check_open()
        check_range(offset, length, self.size)
        self._mark(offset, length)

    def pending(self) -> list[tuple[int, int]]:
        """Dirty byte ranges ``(start, end)``, sorted and merged: flushed, not drained."""
        with self._dirty_lock:
            return _merged(self._dirty)

    def drain(self) -> None:
        """Write the dirty blocks back and FLUSH (or write one run with FUA).

        Raises:
            OSError: a WRITE or the FLUSH failed (EIO, ENOSPC, ... naming the
                sector); the ranges stay dirty.
            ValueError: the cache is closed.
        """
        self._check_open()
        with self._drain_lock:
            wrote = self._drain_more()
            with self._dirty_lock:
                runs = _merged(self._dirty)
                self._dirty = []
            if not runs and not wrote:
                return
            self._must_flush = wrote  # what _drain_more wrote needs the FLUSH
            try:
                self._write_back(runs)
            except BaseException:
                with self._dirty_lock:
                    self._dirty.extend(runs)
                raise

    def _drain_more(self) -> bool:
        """Hook of ``drain`` (under the drain lock, before the cache's own runs): write
        back what a subclass holds elsewhere; True if it wrote anything (then the
        drain ends with a FLUSH, never a FUA write).  Nothing here."""
        return False

    def _write_back(self, runs: list[tuple[int, int]]) -> None:
        self.stats["drains"] += 1
        fua = len(runs) == 1 and not self._must_flush and not self.bdev.readonly
        flags = BioFlags.FUA if fua else BioFlags.NONE
        bios = []
        with self.bdev.plug():
            for start, end in runs:
                bio = Bio(BioOp.WRITE, start >> SECTOR_SHIFT, [self._view[start:end]], flags=flags)
                bios.append(bio)
                self.bdev.submit_bio(bio)
        self.stats["writes"] += len(bios)
        error: BaseException | None = None
        for bio, (start, end) in zip(bios, runs, strict=True):
            try:  # wait for all, even after an error: their views must be dropped
                bio.wait()
            except BaseException as exc:
                what = f"writing back bytes [{start}, {end}) of {self.path}"
                error = error or _named(exc, what)
        if error is not None:
            raise error
        if fua:
            self.stats["fua"] += 1
        else:
            try:
                self.bdev.flush()
            except OSError as exc:
                raise _named(exc, f"flushing {self.path}") from exc
            self.stats["flushes"] += 1

    def persist(self, offset: int, length: int) -> None:
        self.flush(offset, length)
        self.drain()

    # -- coherence with direct I/O (daxfs.fs.direct) -----------------------------------

    def write_back(self, offset: int, length: int) -> None:
        """Write the dirty blocks inside ``[offset, offset+length)`` back to the device
        (durable: FUA or a FLUSH, as ``drain``) before a direct read of the range;
        dirty blocks outside it stay dirty.  Nothing dirty there: no I/O.

        Raises:
            InvalidArgument (EINVAL): the range is outside the device.
            OSError: a WRITE or the FLUSH failed (naming the bytes); those blocks
                stay dirty.
            ValueError: the cache is closed.
        """
        self._check_open()
        check_range(offset, length, self.size)
        bs = self.block_size
        lo, hi = offset - offset % bs, min(-(-(offset + length) // bs) * bs, self.size)
        if self._nothing_dirty_in(lo, hi):  # the usual case (a direct read's)
            return
        with self._drain_lock:
            with self._dirty_lock:
                inside: list[tuple[int, int]] = []
                outside: list[tuple[int, int]] = []
                for start, end in _merged(self._dirty):
                    if start < hi and lo < end:
                        inside.append((max(start, lo), min(end, hi)))
                    pieces = ((start, min(end, lo)), (max(start, hi), end))
                    outside.extend((a, b) for a, b in pieces if a < b)
                if not inside:
                    return
                self._dirty = outside
            self._must_flush = False
            try:
                self._write_back(inside)
            except BaseException:
                with self._dirty_lock:
                    self._dirty.extend(inside)
                raise

    def _nothing_dirty_in(self, lo: int, hi: int) -> bool:
        """True when no dirty range meets ``[lo, hi)`` and no drain is writing ranges
        back (``_drain_lock`` free at once: a drain takes its ranges out of ``_dirty``
        before they are on the device): ``write_back`` then has nothing to wait for or
        write, and returns without the drain lock or a merge.  The journal header's
        sector is dirty between commits, so this walk (not an empty list) is the
        common case; a long list of repeated flushes is merged here to keep it short."""
        drain = self._drain_lock
        if not drain.acquire(False):  # a drain in progress: write_back waits for it
            return False
        try:
            with self._dirty_lock:
                dirty = self._dirty
                for start, end in dirty:
                    if start < hi and lo < end:
                        return False
                if len(dirty) > 8:
                    self._dirty = _merged(dirty)
                return True
        finally:
            drain.release()

    def invalidate(self, offset: int, length: int, data: Buffer | None = None) -> None:
        """Make the cache's bytes of ``[offset, offset+length)`` the device's, after a
        direct write went to the device around the cache: ``data`` (what the device
        now holds there) is copied in, or without it the range is read back from
        the device (after a failed write: the device may hold any of it).

        Raises:
            InvalidArgument (EINVAL): the range is outside the device, or ``data``
                is not ``length`` bytes.
            OSError: the read back failed (EIO naming the sector); the cache's
                bytes of the range are then unknown.
            ValueError: the cache is closed.
        """
        self._check_open()
        check_range(offset, length, self.size)
        with self._drain_lock:
            if data is not None:
                with memoryview(data) as src, src.cast("B") as flat:
                    if len(flat) != length:
                        raise InvalidArgument(
                            f"invalidate of {length} bytes at {offset} given {len(flat)} bytes"
                        )
                    self._view[offset : offset + length] = flat
                return
            bs = self.block_size
            lo, hi = offset - offset % bs, min(-(-(offset + length) // bs) * bs, self.size)
            bio = Bio(BioOp.READ, lo >> SECTOR_SHIFT, [self._view[lo:hi]])
            self.bdev.submit_bio(bio)
            try:
                bio.wait()
            except OSError as exc:
                raise _named(exc, f"reading back bytes [{lo}, {hi}) of {self.path}") from exc

    # -- claims ------------------------------------------------------------------------

    def claim(self, exclusive: bool, who: str) -> None:
        """As Device.claim, on the block device (two caches of one device share its
        claim), and across processes with flock(2) on its file if it has one."""
        self._check_open()
        inner = getattr(self.bdev, "device", None)
        if isinstance(inner, Device):  # a pmem block device: claim the pmem device
            inner.claim(exclusive, who)
            return
        holders = getattr(self.bdev, "_claims", 0)
        if holders < 0 or (exclusive and holders > 0):
            raise Busy(f"{self.path} is in use (already mounted): cannot give it to {who}")
        fd = getattr(self.bdev, "fd", None)
        if isinstance(fd, int) and holders == 0:
            try:
                fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
            except BlockingIOError:
                raise Busy(
                    f"{self.path} is in use by another process (already mounted)", self.path
                ) from None
        self.bdev._claims = -1 if exclusive else holders + 1  # type: ignore[attr-defined]

    def unclaim(self) -> None:
        inner = getattr(self.bdev, "device", None)
        if isinstance(inner, Device):
            inner.unclaim()
            return
        holders = getattr(self.bdev, "_claims", 0)
        left = 0 if holders <= 1 else holders - 1
        self.bdev._claims = left  # type: ignore[attr-defined]
        fd = getattr(self.bdev, "fd", None)
        if left == 0 and isinstance(fd, int) and not self.bdev.closed:
            fcntl.flock(fd, fcntl.LOCK_UN)

    # -- lifecycle ---------------------------------------------------------------------

    def discard(self) -> None:
        """Drop the cache without writing anything back, and give its memory back now.

        For a mount abandoned after a (simulated) power failure: the filesystem
        objects still hold views of the cache, so it cannot close, and they may
        live until the cyclic GC runs.  The memfd's pages are freed at once
        (MADV_REMOVE: views then read zeros, never fault); the cache is closed if
        no view is alive, else every method raises ValueError as on a closed
        device.  The block device is not touched (closed only if owned).
        """
        mapping = self._map
        if mapping is None or self._discarded:
            return
        self._discarded = True
        with self._dirty_lock:
            self._dirty = []
        if not self.readonly:
            mapping.madvise(mmap.MADV_REMOVE, 0, self.size)
        else:  # a read-only mapping cannot punch: the fd can (tmpfs: the same pages)
            with mmap.mmap(self._fd, self.size, mmap.MAP_SHARED) as rw:
                rw.madvise(mmap.MADV_REMOVE, 0, self.size)
        region = self._region
        if region is not None:
            region.release()
        self._view.release()
        try:
            mapping.close()
            self._map = None
        except BufferError:
            pass  # views alive: the empty mapping goes when they do
        self._fd_closer()
        if self._own:
            with contextlib.suppress(Exception):
                self.bdev.close()

    def close(self) -> None:
        """Write back what is dirty, release the cache, close ``bdev`` if owned.

        On a lost device (``lost``: a server that disconnected) nothing can be
        written back: the dirty ranges are dropped (the operation that met the
        loss raised EIO, and the filesystem turned read-only then).

        Raises:
            BufferError: views from direct_access are alive (still open).
            OSError: the write-back failed (still open, the ranges dirty).
        """
        mapping = self._map
        if mapping is None:
            return
        if self._discarded:  # its memory is gone already; unmap when no view is left
            with contextlib.suppress(BufferError):
                mapping.close()
                self._map = None
            return
        if self.pending() and not self.readonly and not self.bdev.closed and self.lost is None:
            self.drain()
        region = self._region
        if region is not None:
            region.release()
        self._view.release()
        try:
            mapping.close()
        except BufferError:
            self._view, self._region = self._attach()
            raise BufferError(
                f"cannot close the cache of {self.path}: views from direct_access are alive"
            ) from None
        self._map = None
        self._fd_closer()
        if self._own:
            self.bdev.close()


def memory_available() -> int | None:
    """MemAvailable of /proc/meminfo in bytes, or None where it cannot be read."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _named(exc: BaseException, what: str) -> BaseException:
    """``exc`` with ``what`` in its message if it does not say it already (errno, and
    the type of a daxfs error, kept; ``exc`` chained as the cause)."""
    if not isinstance(exc, OSError) or what in str(exc):
        return exc
    text = f"{exc.strerror or exc}: {what}"
    named = type(exc)(text) if isinstance(exc, DaxfsError) else OSError(exc.errno, text)
    named.__cause__ = exc
    return named


def _merged(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """``ranges`` sorted, with overlapping and adjacent ones joined."""
    out: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if out and start <= out[-1][1]:
            if end > out[-1][1]:
                out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out
