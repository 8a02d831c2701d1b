"""Store: how the filesystem reaches its blocks (metadata and the journal).

The filesystem never touches a device directly for metadata; it asks a Store
for a block and writes through it.  On persistent memory (``PmemStore``) a
block is a view straight into device memory (direct access, no copy), writes
are device writes, and ``drain`` is the fence.  On a block device the device
is a ``daxfs.block.cache.BlockCache``: the views are of a DRAM cache of the
device's blocks, ``flush`` marks blocks dirty and ``drain`` writes them back
in bios and FLUSHes (or FUA-writes), so the journal and the structures above,
which use only these verbs, run unchanged:

    block(n)            committed contents of block n (treat as read-only)
    write(off, data)    copy + flush, no fence
    flush(off, len)     start write-back
    drain()             every earlier write/flush is durable on return

File *data* on pmem does not go through the Store: the DAX data path copies
between the caller's buffer and device memory (daxfs.fs.file).

Invariant: ``block(n)`` views are valid until ``close()``; close releases them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from daxfs.errors import Corrupted
from daxfs.fs.layout import BLOCK_SHIFT, BLOCK_SIZE
from daxfs.pmem.device import Device

if TYPE_CHECKING:
    from typing_extensions import Buffer

    from daxfs.pagecache.bounded import BoundedBlockCache


VERIFIED_LIMIT = 1 << 16


class Reader(Protocol):
    """Anything that can show a block: the store (committed) or a transaction."""

    #: blocks whose checksum was verified in this mount (or that we wrote ourselves)
    verified: set[int]

    def read(self, blockno: int) -> memoryview: ...


class PmemStore:
    """Blocks of a byte-addressable device, reached by direct access."""

    def __init__(self, device: Device, block_count: int | None = None) -> None:
        self.device = device
        usable = device.size >> BLOCK_SHIFT
        self.block_count = usable if block_count is None else block_count
        if self.block_count > usable:
            raise Corrupted(
                f"filesystem of {self.block_count} blocks does not fit the device "
                f"of {device.size} bytes"
            )
        self._view: memoryview | None = self._open_view(device, self.block_count << BLOCK_SHIFT)
        #: structures verify a block's checksum the first time they read it in a
        #: mount and record it here (bounded: cleared when it reaches VERIFIED_LIMIT)
        self.verified: set[int] = set()
        #: the device's copy-and-flush without fence (hot: the journal calls it per record)
        self._write = device.writer()

    #: True for a store whose device fills lazily (LazyStore): C code that reads
    #: ``view`` without asking (stat's miss path, the B+tree put) must not run
    lazy = False

    def _open_view(self, device: Device, length: int) -> memoryview:
        return device.direct_access(0, length)

    def ensure(self, offset: int, length: int) -> None:
        """Make device bytes ``[offset, offset+length)`` readable through ``view``
        (and by DAX mmap and pins); nothing to do on pmem."""

    def mark_verified(self, blockno: int) -> None:
        if len(self.verified) >= VERIFIED_LIMIT:
            self.verified.clear()
        self.verified.add(blockno)

    @property
    def view(self) -> memoryview:
        """The whole filesystem as one view of device memory."""
        assert self._view is not None, "store is closed"
        return self._view

    def block(self, blockno: int) -> memoryview:
        """Device memory of block ``blockno``.

        Raises:
            Corrupted: the number is outside the filesystem (it came from media).
        """
        if not 0 <= blockno < self.block_count:
            raise Corrupted(f"block {blockno} is outside the filesystem of {self.block_count}")
        start = blockno << BLOCK_SHIFT
        return self.view[start : start + BLOCK_SIZE]

    def read(self, blockno: int) -> memoryview:
        """Same as block(): a store is a reader of the committed state."""
        return self.block(blockno)

    def write(self, offset: int, data: Buffer) -> None:
        """Copy ``data`` to byte ``offset`` and flush it; durable after the next drain."""
        self._write(offset, data)

    def fill(self, offset: int, length: int, byte: int = 0) -> None:
        self.device.fill(offset, length, byte, drain=False)

    def flush(self, offset: int, length: int) -> None:
        self.device.flush(offset, length)

    def drain(self) -> None:
        self.device.drain()

    def close(self) -> None:
        """Release the view; every block view handed out must be released first."""
        if self._view is not None:
            self._view.release()
            self._view = None


class LazyStore(PmemStore):
    """A store over a lazily filled block cache (daxfs.pagecache.bounded): ``block``
    and ``read`` load the block before they return its view; ``view`` loads nothing
    (the journal ensures its region when it opens)."""

    lazy = True

    def __init__(self, device: BoundedBlockCache, block_count: int | None = None) -> None:
        self._cache = device
        super().__init__(device, block_count)

    def _open_view(self, device: Device, length: int) -> memoryview:
        return self._cache.raw_view()[:length]

    def ensure(self, offset: int, length: int) -> None:
        """Load device bytes ``[offset, offset+length)`` into the cache's memory.

        Raises:
            OSError: the device failed (EIO naming the bytes).
        """
        self._cache.ensure(offset, length)

    def block(self, blockno: int) -> memoryview:
        view = super().block(blockno)
        self._cache.ensure(blockno << BLOCK_SHIFT, BLOCK_SIZE)
        return view

    def read(self, blockno: int) -> memoryview:
        return self.block(blockno)
