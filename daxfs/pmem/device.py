"""The device interface every byte-addressable device of daxfs implements.

A device is a range of persistent memory, ``size`` bytes long, that the layers
above reach in two ways:

* ``direct_access(offset, length)`` returns a writable ``memoryview`` that
  aliases device memory (no copy), as the kernel's ``dax_direct_access()``
  returns a kernel address.  Stores through it are *not* durable until the
  range is persisted.
* ``read``/``readinto``/``write``/``fill`` copy between a caller's buffer and
  device memory; ``write`` and ``fill`` persist what they stored.

Durability follows the x86 model (docs/ARCHITECTURE.md, "Persistence"):
``flush(offset, length)`` starts write-back of the cache lines (or pages) of a
range, ``drain()`` waits for every flush so far, ``persist = flush + drain``.
How much a flush covers is the device's ``granularity``:

    BYTE        the CPU caches are inside the persistence domain (eADR):
                stores are durable once fenced, flush is a no-op
    CACHE_LINE  CPU cache-line flush (CLWB/CLFLUSHOPT/CLFLUSH) + SFENCE
    PAGE        msync(MS_SYNC) of the pages that cover the range

Implementations: ``daxfs.pmem.PmemDevice`` (device-DAX, files on a DAX
filesystem, emulated pmem on any file) and ``daxfs.testing.SimulatedPmem``
(in memory, models what survives a power failure).

Invariants
  1. No argument can make a device touch memory outside ``[0, size)``: every
     range is checked first, and a bad one raises ``InvalidArgument``
     (``OSError(EINVAL)`` and ``ValueError``) naming the range.
  2. After ``close()`` every operation raises ``ValueError`` as closed files
     do.  ``close()`` refuses (``BufferError``) while views from
     ``direct_access`` are alive, as ``mmap.close()`` does, so no view can
     outlive the memory it points at.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Callable
from typing import TYPE_CHECKING

from daxfs.errors import Busy, InvalidArgument, NotSupported
from daxfs.lifecycle import Closeable

if TYPE_CHECKING:
    from typing_extensions import Buffer

    from daxfs.pmem._native import Region

CACHE_LINE_SIZE = 64
PAGE_SIZE = 4096


class Granularity(enum.IntEnum):
    """The smallest unit a persist covers, ordered as PMDK's pmem2_granularity."""

    BYTE = 0  # caches persistent (eADR): a fence is enough
    CACHE_LINE = 1  # flush each 64-byte line, then fence
    PAGE = 2  # msync the 4 KiB pages covering the range

    @property
    def unit(self) -> int:
        """Bytes a single flush covers at this granularity."""
        return {Granularity.BYTE: 1, Granularity.CACHE_LINE: CACHE_LINE_SIZE}.get(self, PAGE_SIZE)


def check_range(offset: object, length: object, size: int, what: str = "device") -> None:
    """Raise InvalidArgument unless ``[offset, offset+length)`` lies in ``[0, size)``."""
    if (
        type(offset) is int
        and type(length) is int
        and offset >= 0
        and length >= 0
        and offset + length <= size
    ):
        return
    check_integer(offset, "offset")
    check_integer(length, "length")
    assert isinstance(offset, int)
    assert isinstance(length, int)
    raise InvalidArgument(
        f"range [{offset}, {offset + length}) is outside the {what} of {size} bytes"
    )


def check_integer(value: object, what: str) -> int:
    """Return ``value`` if it is a non-negative int (not bool), else raise InvalidArgument."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"{what} must be an integer, not {type(value).__name__}")
    if value < 0:
        raise InvalidArgument(f"{what} must not be negative, got {value}")
    return value


class Device(Closeable):
    """Byte-addressable persistent memory: direct access plus persist primitives."""

    #: Length of the device in bytes.
    size: int
    #: What a flush covers (see the module docstring).
    granularity: Granularity
    #: "cpu" (cache flushes and fences) or "msync".
    persist_method: str
    #: Whether C fast paths may store into the device's memory themselves (through
    #: its view, with the persist primitives of its mode) instead of calling
    #: ``write``: False for a device that must see every store (the simulator, fault
    #: injection) or that tracks what ``write`` stores (``BlockCache`` marks it dirty
    #: for write-back).  The one answer the filesystem's C writers ask
    #: (``daxfs.fs.journal._committer``, ``daxfs.fs.data.copier_for``).
    native_stores: bool = False

    @property
    def lost(self) -> str | None:
        """Why the device is gone for good (a block device whose NBD server
        disconnected), or None.  An operation that fails on a lost device turns
        the filesystem read-only until remount (daxfs.fs.journal, invariant 4):
        every later write would fail the same way."""
        return None

    @property
    @abc.abstractmethod
    def closed(self) -> bool:
        """True once close() has run."""

    @abc.abstractmethod
    def direct_access(self, offset: int, length: int) -> memoryview:
        """Return a view aliasing device memory ``[offset, offset+length)``; no copy.

        Raises:
            InvalidArgument: the range is outside the device.
            ValueError: the device is closed.
        """

    @abc.abstractmethod
    def read(self, offset: int, length: int) -> bytes:
        """Copy ``length`` bytes at ``offset`` out of the device."""

    @abc.abstractmethod
    def readinto(self, offset: int, buffer: Buffer) -> int:
        """Copy ``len(buffer)`` bytes at ``offset`` into ``buffer``; return the count."""

    def native_region(self) -> Region | None:
        """The C engine over the device's memory (``daxfs.pmem._native.Region``), for C
        fast paths that copy out of it themselves (the filesystem's extent reader);
        None if the device has none: then every copy goes through ``read``/``readinto``
        (the simulator, whose every access must pass through its methods).  For reads
        only: a device may track its writes (``daxfs.block.cache.BlockCache`` marks
        what ``write`` stores as dirty), so a store made through the region could
        never reach the media."""
        return None

    @abc.abstractmethod
    def write(self, offset: int, data: Buffer, *, drain: bool = True) -> None:
        """Copy ``data`` to ``offset`` and flush it; fence too unless ``drain=False``.

        Copies of 256 bytes and more use non-temporal stores on the CPU path.
        With ``drain=False`` the caller must call ``drain()`` before relying on
        durability (PMDK's PMEM2_F_MEM_NODRAIN).
        """

    def writer(self) -> Callable[[int, Buffer], None]:
        """A callable ``(offset, data)`` doing ``write(offset, data, drain=False)``.

        Callers on hot paths keep it to save the keyword call; devices may
        return their engine's method directly.
        """

        def write_nodrain(offset: int, data: Buffer) -> None:
            self.write(offset, data, drain=False)

        return write_nodrain

    def persister(self) -> Callable[[int, int], None]:
        """A callable ``(offset, length)`` doing ``persist``, for hot paths (msync).

        The device must stay open while it is used.
        """
        return self.persist

    @abc.abstractmethod
    def fill(self, offset: int, length: int, byte: int = 0, *, drain: bool = True) -> None:
        """Set ``length`` bytes at ``offset`` to ``byte`` and persist them (as write)."""

    @abc.abstractmethod
    def flush(self, offset: int, length: int) -> None:
        """Start write-back of the range (lines or pages covering it)."""

    @abc.abstractmethod
    def drain(self) -> None:
        """Wait until every earlier flush has reached the persistence domain."""

    @abc.abstractmethod
    def persist(self, offset: int, length: int) -> None:
        """flush(offset, length) then drain(): the range is durable on return."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the device.  Idempotent.

        Raises:
            BufferError: views returned by direct_access are still alive; the
                device stays open and usable.
        """

    @property
    def fd(self) -> int:
        """A file descriptor whose offset N is device byte N, for mapping extents.

        Raises:
            NotSupported (EOPNOTSUPP): this device cannot be mapped piecewise.
        """
        raise NotSupported(f"{type(self).__name__} has no file descriptor to map extents from")

    #: mmap flags for mappings of the device (MAP_SHARED_VALIDATE|MAP_SYNC on fsdax)
    map_flags: int = 0x01  # MAP_SHARED

    def claim(self, exclusive: bool, who: str) -> None:
        """Take the device for ``who``: exclusive (a read-write mount) or shared.

        Raises:
            Busy (EBUSY): another holder has it exclusively, or ``exclusive``
                is asked while anyone holds it.
        """
        holders = getattr(self, "_claims", 0)
        if holders < 0 or (exclusive and holders > 0):
            raise Busy(f"device is in use (already mounted): cannot give it to {who}")
        self._claims = -1 if exclusive else holders + 1

    def unclaim(self) -> None:
        """Release a claim taken with claim()."""
        holders = getattr(self, "_claims", 0)
        self._claims = 0 if holders <= 1 else holders - 1
