"""PmemBlockDevice: bios served by copies to and from persistent memory.

Theory of operation
-------------------
Linux's pmem driver (drivers/nvdimm/pmem.c) turns a persistent-memory
namespace into a block device: ``pmem_submit_bio`` copies each segment to or
from the memory (``memcpy_flushcache`` for writes) and the bio completes when
the copy is durable.  ``PmemBlockDevice`` does the same over any
``daxfs.pmem.Device`` (a ``PmemDevice`` or the ``SimulatedPmem``):

    READ           Device.readinto per segment
    WRITE          Device.write(drain=False) per segment, then one drain
    WRITE_ZEROES,  Device.fill with zeros (drain=False), then one drain
    DISCARD
    FLUSH          Device.drain (nothing is left to flush: see invariant 1)

Every bio runs synchronously in the submitting thread (as the pmem driver
does in ``submit_bio``), so its future is resolved when ``submit_bio``
returns.  The same bytes are the device's: an image written through bios is
read through ``direct_access`` (DAX) and the other way round, with nothing
to convert (tests/block/test_pmem.py).  The block device does not claim the
pmem device; whoever mounts either one claims it.

Invariants
  1. A completed write is durable: its copy was flushed and fenced before it
     completed (``write_cache`` is False, FUA and FLUSH need nothing more).
  2. As on Linux's raw pmem namespaces (no BTT), a sector is not written
     atomically: a power failure during a write may leave any mix of old and
     new aligned 8-byte words (the SimulatedPmem model).  Software that needs
     sector atomicity must not rely on this backend for it.
  3. The device's own errors (an OSError from a copy, a flush or a fence) reach
     the bio; ``PowerFailure`` of the simulator ends the bio and stops the caller.
"""

from __future__ import annotations

from daxfs.block.bio import SECTOR_SHIFT, BioOp, QueueLimits, Request
from daxfs.block.device import BlockDevice
from daxfs.errors import InvalidArgument
from daxfs.pmem.device import Device


class PmemBlockDevice(BlockDevice):
    """A block device over a persistent-memory ``Device``.

    ``own=True`` closes the pmem device when the block device closes;
    ``readonly`` defaults to the device's own (writes then fail with EROFS).

    Raises (construction):
        InvalidArgument (EINVAL): a bad logical block size, or a device smaller
            than one logical block.
    """

    write_cache = False
    fua = True

    def __init__(
        self,
        device: Device,
        *,
        logical_block_size: int = 512,
        name: str | None = None,
        own: bool = False,
        readonly: bool | None = None,
    ) -> None:
        limits = QueueLimits(
            logical_block_size=logical_block_size,
            physical_block_size=max(logical_block_size, 4096),
            max_segments=1 << 16,
            max_segment_bytes=1 << 30,
            max_bytes=1 << 30,
        )
        usable = device.size - device.size % logical_block_size
        if usable == 0:
            raise InvalidArgument(
                f"pmem device of {device.size} bytes holds no {logical_block_size}-byte block"
            )
        label = name or f"pmem:{getattr(device, 'path', type(device).__name__)}"
        if readonly is None:  # as the device was opened
            readonly = bool(getattr(device, "readonly", False))
        super().__init__(label, usable >> SECTOR_SHIFT, limits, readonly=readonly)
        self.device = device
        self._own = own

    @property
    def engine(self) -> str:
        return f"pmem copy (persist by {self.device.persist_method}, synchronous)"

    @property
    def engine_reason(self) -> str:
        return "a persistent-memory device: bios are copies, as Linux's pmem driver does"

    def _execute(self, req: Request) -> int:
        dev = self.device
        op = req.op
        offset = req.offset
        if op is BioOp.READ:
            for view in req.segments:
                dev.readinto(offset, view)
                offset += len(view)
        elif op is BioOp.WRITE:
            for view in req.segments:
                dev.write(offset, view, drain=False)
                offset += len(view)
            dev.drain()
        elif op is BioOp.FLUSH:
            dev.drain()
        else:  # DISCARD, WRITE_ZEROES: the range reads as zeros
            dev.fill(offset, req.size, 0, drain=False)
            dev.drain()
        return req.size

    def _close(self) -> None:
        if self._own:
            self.device.close()
