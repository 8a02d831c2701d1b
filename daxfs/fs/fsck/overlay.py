"""A private copy of the device, for a check-only fsck of an image whose journal
holds a committed transaction.

Such an image is what a crash (a kill -9 of a mount, a power failure) leaves
between the journal's commit point and the end of its apply: consistent, and
made whole by the replay every mount does first.  A check-only fsck must not
write, and checking the image as it lies would check a state no mount ever
sees.  So it replays the transaction onto a private copy and checks that: what
the next mount will see (superblocks.check_journal).

The copy is a private mapping of the device (MAP_PRIVATE: the kernel copies a
page the first time it is written, the device is never written), or, for a
device that cannot be mapped so (no file descriptor, device DAX), a copy in
anonymous memory up to COPY_LIMIT bytes.

Invariants:
1. Nothing written to a PrivateCopy reaches the device it copies.
2. Until written, every byte of the copy is the device's byte.
"""

from __future__ import annotations

import mmap
from typing import TYPE_CHECKING

from daxfs.pmem.device import Device, check_range

if TYPE_CHECKING:
    from typing_extensions import Buffer

#: the largest device copied into anonymous memory when it cannot be mapped privately
COPY_LIMIT = 1 << 30
_CHUNK = 1 << 24


class PrivateCopy(Device):
    """Device bytes in private memory: reads see the device, writes stay here."""

    persist_method = "private copy"

    def __init__(self, memory: mmap.mmap, base: Device) -> None:
        self._memory: mmap.mmap | None = memory
        self._view = memoryview(memory)
        self.size = base.size
        self.granularity = base.granularity

    @classmethod
    def of(cls, base: Device) -> PrivateCopy | None:
        """A private copy of ``base``, or None (it cannot be mapped privately and is
        larger than COPY_LIMIT).

        Raises:
            OSError: the device failed while it was copied.
        """
        prot = mmap.PROT_READ | mmap.PROT_WRITE
        try:
            fd = base.fd
        except OSError:
            fd = -1
        if fd >= 0:
            try:
                return cls(mmap.mmap(fd, base.size, flags=mmap.MAP_PRIVATE, prot=prot), base)
            except (OSError, ValueError):
                pass  # device DAX has no private mappings: copy it
        if base.size > COPY_LIMIT:
            return None
        memory = mmap.mmap(-1, base.size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, prot=prot)
        for at in range(0, base.size, _CHUNK):
            n = min(_CHUNK, base.size - at)
            base.readinto(at, memoryview(memory)[at : at + n])
        return cls(memory, base)

    @property
    def closed(self) -> bool:
        return self._memory is None

    def _range(self, offset: int, length: int) -> memoryview:
        if self._memory is None:
            raise ValueError("private copy is closed")
        check_range(offset, length, self.size)
        return self._view[offset : offset + length]

    def direct_access(self, offset: int, length: int) -> memoryview:
        return self._range(offset, length)

    def read(self, offset: int, length: int) -> bytes:
        return bytes(self._range(offset, length))

    def readinto(self, offset: int, buffer: Buffer) -> int:
        out = memoryview(buffer).cast("B")
        out[:] = self._range(offset, len(out))
        return len(out)

    def write(self, offset: int, data: Buffer, *, drain: bool = True) -> None:
        src = memoryview(data).cast("B")
        self._range(offset, len(src))[:] = src

    def fill(self, offset: int, length: int, byte: int = 0, *, drain: bool = True) -> None:
        self._range(offset, length)[:] = bytes([byte]) * length

    def flush(self, offset: int, length: int) -> None:
        """Nothing to write back: the copy is private."""

    def drain(self) -> None:
        """Nothing to wait for."""

    def persist(self, offset: int, length: int) -> None:
        """Nothing to persist: the copy is private (invariant 1)."""

    def close(self) -> None:
        if self._memory is None:
            return
        self._view.release()  # BufferError while a view of it lives: stays open
        self._memory.close()
        self._memory = None
