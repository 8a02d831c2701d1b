"""iomap: the extent interface between a filesystem and everything that moves data.

Modelled on Linux's iomap (include/linux/iomap.h, fs/iomap/iter.c): the
filesystem supplies two callbacks, and the core owns the loop.

* ``ops.iomap_begin(inode, pos, length, flags) -> Iomap`` returns one extent
  that covers at least the byte at ``pos`` (and at most ``length`` bytes from
  it): a HOLE, a MAPPED range of device bytes, or an UNWRITTEN (allocated,
  reads as zeros) range.  With ``IomapFlags.WRITE`` it may allocate.
* ``ops.iomap_end(inode, pos, length, written, flags, iomap)`` is told how
  many bytes the actor moved and commits or trims what begin reserved.

``iomap_iter`` calls begin, hands the extent to an actor (a copy for
read/write, a page-table update for DAX mmap, a segment for a pin or a bio),
calls end, and advances.  A short transfer returns the bytes done; an error
is raised only if nothing was done (as ``iomap_iter`` and ``read(2)`` do).

The same loop serves the DAX read/write path, DAX mmap, pinning, direct I/O
to block devices and the page cache, so each of those speaks extents, not
blocks.

Reads: ``iomap_read_into`` and ``iomap_read_bytes`` are ``iomap_iter`` with
the read actor: a MAPPED extent is copied out of device memory (one copy per
extent), a HOLE or UNWRITTEN extent reads as zeros.  Their single-extent case
-- the whole range inside the one written extent that ``iomap_begin`` would
return from the filesystem's extent cache -- is also compiled into one C call
(``daxfs.pmem._native.ExtentReader``, the read fast path of daxfs.fs.file):
begin is the cache comparison, the actor is the copy, end has nothing to do.
Whatever that call does not cover (a miss) comes here.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, TypeVar

if TYPE_CHECKING:
    from typing_extensions import Buffer

#: The ``addr`` of an extent with no device bytes behind it.
NULL_ADDR = -1


class IomapType(enum.Enum):
    """What backs an extent."""

    HOLE = "hole"  # no blocks: reads as zeros, a write must allocate
    MAPPED = "mapped"  # device bytes at addr hold the data
    UNWRITTEN = "unwritten"  # blocks at addr are allocated but read as zeros


class IomapFlags(enum.IntFlag):
    """What the caller of iomap_begin intends (Linux's IOMAP_* operation flags)."""

    NONE = 0
    WRITE = 0x1  # the range will be written: allocate holes, convert unwritten
    ZERO = 0x2  # the range will be zeroed
    REPORT = 0x4  # report only (SEEK_DATA/SEEK_HOLE, fiemap): never allocate
    FAULT = 0x8  # a DAX mapping is being built for the range
    DIRECT = 0x10  # direct I/O to a block device
    NOWAIT = 0x20  # do not wait for locks or layouts: fail with EAGAIN instead
    PIN = 0x40  # a pin (scatter-gather list) is being built for the range


class IomapExtentFlags(enum.IntFlag):
    """Facts about a returned extent (Linux's IOMAP_F_*)."""

    NONE = 0
    NEW = 0x1  # blocks were allocated by this begin: the actor must fill them whole
    DIRTY = 0x2  # metadata for this extent is not yet durable (needs a commit)


@dataclasses.dataclass(slots=True)
class Iomap:
    """One extent of a file: ``[offset, offset+length)`` of the file."""

    offset: int  # file byte offset of the extent's start
    length: int  # bytes
    type: IomapType
    addr: int = NULL_ADDR  # device byte offset of the extent's start, or NULL_ADDR
    flags: IomapExtentFlags = IomapExtentFlags.NONE

    @property
    def end(self) -> int:
        return self.offset + self.length

    def addr_of(self, pos: int) -> int:
        """Device byte offset that holds file byte ``pos`` (mapped or unwritten only)."""
        assert self.addr != NULL_ADDR
        assert self.offset <= pos < self.end
        return self.addr + (pos - self.offset)


InodeT = TypeVar("InodeT", contravariant=True)


class IomapOps(Protocol[InodeT]):
    """The two callbacks a filesystem supplies."""

    def iomap_begin(self, inode: InodeT, pos: int, length: int, flags: IomapFlags) -> Iomap: ...

    def iomap_end(
        self, inode: InodeT, pos: int, length: int, written: int, flags: IomapFlags, iomap: Iomap
    ) -> None: ...


#: An actor moves data for ``[pos, pos+length)`` inside ``iomap``; returns bytes done.
Actor = Callable[[Iomap, int, int], int]


def iomap_iter(
    ops: IomapOps[InodeT],
    inode: InodeT,
    pos: int,
    length: int,
    flags: IomapFlags,
    actor: Actor,
    *,
    short_ok: bool = True,
) -> int:
    """Walk ``[pos, pos+length)`` extent by extent; return the bytes the actor did.

    Raises:
        whatever begin, the actor or end raise, but only if no byte was done
        or ``short_ok`` is False (an all-or-nothing caller, such as an atomic
        write inside one transaction); otherwise the count so far is returned.
    """
    done = 0
    while length > 0:
        try:
            iomap = ops.iomap_begin(inode, pos, length, flags)
            assert iomap.offset <= pos < iomap.end, f"iomap {iomap} does not cover {pos}"
            n = min(length, iomap.end - pos)
            moved = actor(iomap, pos, n)
            ops.iomap_end(inode, pos, n, moved, flags, iomap)
        except Exception:
            if done and short_ok:
                return done
            raise
        if moved <= 0:
            break
        done += moved
        pos += moved
        length -= moved
        if moved < n:
            break
    return done


#: Zeros for the read actor's holes, a block at a time.
_ZEROS = bytes(1 << 16)


def _zero(buf: memoryview) -> None:
    """Fill ``buf`` (bytes) with zeros: a hole or an unwritten extent."""
    step = len(_ZEROS)
    for start in range(0, len(buf), step):
        piece = buf[start : start + step]
        piece[:] = _ZEROS[: len(piece)]


def iomap_read_into(
    ops: IomapOps[InodeT],
    inode: InodeT,
    pos: int,
    buf: memoryview,
    readinto: Callable[[int, Buffer], object],
) -> int:
    """Fill ``buf`` (a byte view) with file bytes ``[pos, pos+len(buf))``; return the count.

    The read actor: ``readinto(addr, view)`` copies a MAPPED extent's bytes
    out of the device; holes and unwritten extents read as zeros.  The caller
    clamps the range to the end of file and holds what ``ops`` needs held.

    Raises:
        what ``iomap_begin`` or ``readinto`` raise, if no byte was read;
        otherwise the count so far is returned (a short read).
    """

    def actor(iomap: Iomap, at: int, n: int) -> int:
        target = buf[at - pos : at - pos + n]
        if iomap.type is IomapType.MAPPED:
            readinto(iomap.addr_of(at), target)
        else:
            _zero(target)
        return n

    return iomap_iter(ops, inode, pos, len(buf), IomapFlags.NONE, actor)


def iomap_read_bytes(
    ops: IomapOps[InodeT],
    inode: InodeT,
    pos: int,
    n: int,
    read: Callable[[int, int], bytes],
) -> bytes:
    """File bytes ``[pos, pos+n)`` as one bytes object, as ``iomap_read_into``.

    ``read(addr, length)`` copies a MAPPED extent's bytes out of the device;
    when the range lies in one extent that copy is the result (no join).

    Raises:
        as ``iomap_read_into``; after a short read the bytes so far are returned.
    """
    pieces: list[bytes] = []

    def actor(iomap: Iomap, at: int, length: int) -> int:
        if iomap.type is IomapType.MAPPED:
            pieces.append(read(iomap.addr_of(at), length))
        else:
            pieces.append(bytes(length))
        return length

    iomap_iter(ops, inode, pos, n, IomapFlags.NONE, actor)
    return pieces[0] if len(pieces) == 1 else b"".join(pieces)
