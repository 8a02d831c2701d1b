"""Pinning: a file range as a scatter-gather list of device extents, for zero-copy I/O.

Theory of operation
-------------------
The 2014 proposal was ``get_user_sg()``: instead of one struct page per 4 KiB
(64 bytes each, which persistent memory does not have), describe a pinned
range as a list of physically contiguous extents.  ``pin_file`` walks the
range with ``iomap_iter`` (flag PIN), merges physically contiguous pieces,
and registers the file range with the inode's Layouts (daxfs.fs.layouts):
until ``unpin``, anything that would free, move or change those blocks
waits.  Memory is proportional to the number of extents: pinning 1 GiB in
one extent is one segment.

An SGList hands its bytes to consumers without copying them:

    write_to(fd or file, offset)   os.pwritev / os.writev from device memory
    send(sock)                     socket.sendmsg of the segment views
                                   (os.sendfile from the device's file with
                                   sendfile=True)
    update(hash or crc function)   hashlib objects: .update(view) per segment;
                                   zlib.crc32-style functions: folded
    bio_segments()                 (device offset, length) pairs: a bio is a
                                   container of such segments (daxfs.block)

Holes and unwritten extents in the range have no blocks to pin: they appear as
zero segments (device offset None) and read as zeros.

Stores through a pin.  The views of a pin made through a File open for
writing are writable: a READ bio from another device may fill them (issue 10
section 1), numpy may store into them.  Such stores land in device memory --
a CPU cache on pmem, the block cache's DRAM on a block mount -- and, as Linux
does for pinned pages (``unpin_user_pages_dirty_lock``: the pages are then
written back like any dirty page), they are written back by the one owner of
"file ranges stored to behind the filesystem", ``DataPath.mapped_ranges``
(daxfs.fs.writeback): a writable pin registers its file range there as a
writable mapping does, so

    fsync, fdatasync, FileSystem.sync while pinned   flush it (a live range;
                     unmount is refused, EBUSY, while a pin lives)
    unpin (close, with-exit)                                  flushes it and
                     drains (pmem: the store's persist of the range; a block
                     mount: the cache's write-back of the range + FLUSH),
                     *before* the layout is released

The guarantee: stores through a pin are durable once ``unpin`` returned, or
once an ``fsync``/``fdatasync``/``sync`` that began after them returned; not
before (a crash may keep or lose each, an aligned 8-byte word or a written-back
logical block whole).  A failed write-back at unpin (EIO) releases the pin all
the same and keeps the range remembered: the next fsync, sync or unmount tries
again.  ``unpin(dirty=False)`` says nothing was stored: no write-back.  Unpin
does not set the file's modification time (an fsync while a writable pin
lives does, as for a live writable mapping).

The views of a pin made through a File *not* open for writing are read-only
(``memoryview.toreadonly``): a store raises TypeError, a READ bio into the
SGList is EINVAL naming it (daxfs.block.bio), and nothing is registered.

State diagram::

    pin_file() --> PINNED --unpin() / close() / with-exit--> UNPINNED
      PINNED: segments, consumers; UNPINNED: every use raises ValueError
      unpin of a writable pin: write back + drain, then the layout goes

An unlinked file's blocks are freed at its last unpin (the pin counts as a
user of the inode, as an open file does).
"""

from __future__ import annotations

import dataclasses
import errno
import os
import socket
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from daxfs.block.engine import advance_views
from daxfs.errors import InvalidArgument, naming
from daxfs.fs.data import DataPath
from daxfs.fs.layouts import Layouts
from daxfs.iomap import Iomap, IomapFlags, IomapType, iomap_iter
from daxfs.lifecycle import Closeable, cleanup_after

if TYPE_CHECKING:
    from daxfs.fs.file import File

_ZEROS = bytes(1 << 16)
IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024


@dataclasses.dataclass(slots=True, frozen=True)
class Segment:
    """``length`` bytes at device offset ``dev`` (None: a hole, reads as zeros)."""

    dev: int | None
    length: int


class Hash(Protocol):
    def update(self, data: Any, /) -> None: ...


class SGList(Closeable):
    """A pinned file range as device extents.  Create with File.pin or Mapping.pin."""

    def __init__(
        self,
        file: File,
        data: DataPath,
        offset: int,
        segments: list[Segment],
        token: int,
        writeback: int | None = None,
        *,
        writable: bool = False,
    ) -> None:
        self._file = file
        self._data = data
        self.offset = offset
        self.length = sum(s.length for s in segments)
        self._segments: list[Segment] | None = segments
        self._token = token
        #: the token of the range registered in ``data.mapped_ranges`` (a writable
        #: pin), None for a read-only pin or once written back at unpin
        self._writeback = writeback
        #: views are writable (the pin was made through a File open for writing)
        self.writable = writable

    def __repr__(self) -> str:
        state = "unpinned" if self._segments is None else f"{len(self._segments)} segments"
        mode = "" if self.writable else ", read-only"
        return (
            f"<SGList {self._file.path}[{self.offset}:{self.offset + self.length}] {state}{mode}>"
        )

    @property
    def pinned(self) -> bool:
        return self._segments is not None

    @property
    def segments(self) -> list[Segment]:
        """The extents, physically contiguous pieces merged."""
        if self._segments is None:
            raise ValueError(f"use of an unpinned SGList of {self._file.path}")
        return self._segments

    def views(self) -> Iterator[memoryview]:
        """A memoryview of each segment, aliasing device memory (zeros for holes).

        Read-only unless the pin was made through a File open for writing;
        stores through writable views are written back at unpin or fsync
        (module docstring).
        """
        store = self._data.store
        writable = self.writable
        for seg in self.segments:
            if seg.dev is None:
                yield from _zero_views(seg.length)
            elif writable:
                yield store.view[seg.dev : seg.dev + seg.length]
            else:
                yield store.view[seg.dev : seg.dev + seg.length].toreadonly()

    def bio_segments(self) -> list[tuple[int | None, int]]:
        """(device offset, length) pairs, for a bio (device offset None: zeros)."""
        return [(s.dev, s.length) for s in self.segments]

    # -- consumers --------------------------------------------------------------------

    def write_to(self, target: int | Any, offset: int | None = None) -> int:
        """Write the pinned bytes to a file descriptor or file object; return bytes written.

        With ``offset`` the bytes go there (os.pwritev) and the file position
        does not move; without it, at the current position (os.writev).
        """
        views = list(self.views())
        fd = target if isinstance(target, int) else _fileno(target)
        if fd is None:
            return self._write_object(target, views, offset)
        done = 0
        while views:
            batch = views[:IOV_MAX]
            n = os.pwritev(fd, batch, offset + done) if offset is not None else os.writev(fd, batch)
            if n <= 0:
                raise OSError(f"write_to: wrote nothing after {done} bytes")
            done += n
            views = advance_views(views, n)
        return done

    @staticmethod
    def _write_object(target: Any, views: list[memoryview], offset: int | None) -> int:
        done = 0
        for view in views:
            n = target.pwrite(view, offset + done) if offset is not None else target.write(view)
            done += n
        return done

    def send(self, sock: socket.socket, *, sendfile: bool = False) -> int:
        """Send the pinned bytes on a socket; return bytes sent.

        By default socket.sendmsg of the segments' views: the kernel copies
        straight from device memory into the socket, no copy in Python.  With
        ``sendfile=True``, os.sendfile from the device's file instead (for a
        file-backed device; measured slower than sendmsg on loopback here, see
        bench/pin.py).
        """
        fd = -1
        if sendfile and sock.type == socket.SOCK_STREAM:
            try:
                fd = self._data.device.fd
            except OSError:
                fd = -1
        done = 0
        for seg in self.segments:
            if seg.dev is not None and fd >= 0:
                try:
                    done += _sendfile(sock, fd, seg.dev, seg.length)
                    continue
                except OSError as exc:
                    if exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                        raise
                    fd = -1  # this device cannot sendfile (device-DAX): send its memory
            views = (
                list(_zero_views(seg.length))
                if seg.dev is None
                else [self._data.store.view[seg.dev : seg.dev + seg.length]]
            )
            done += _sendmsg(sock, views)
        return done

    def update(self, target: Hash | Callable[..., int], value: int | None = None) -> Any:
        """Feed the bytes to a hash object (returned) or a crc function (value returned).

        ``target`` is a hashlib-style object with ``update``, or a function
        like ``zlib.crc32(data, value)``; ``value`` is its starting value.
        """
        if hasattr(target, "update"):
            for view in self.views():
                target.update(view)
            return target
        if not callable(target):
            raise InvalidArgument(f"update needs a hash object or a crc function, not {target!r}")
        acc = value
        for view in self.views():
            acc = target(view) if acc is None else target(view, acc)
        return acc

    # -- lifecycle ----------------------------------------------------------------------

    def unpin(self, *, dirty: bool = True) -> None:
        """Release the pin; waiting truncates proceed.  A writable pin first writes
        back and persists its range (stores through its views are durable when
        this returns), then releases the layout.

        ``dirty=False`` says nothing was stored through the views (Linux's
        ``unpin_user_pages_dirty_lock`` with ``make_dirty`` false): the range is
        forgotten, with no write-back.  Stores made all the same may then be
        lost in a crash (those an fsync while pinned flushed excepted).

        Raises:
            ValueError: already unpinned.
            IOFailure (EIO): the write-back failed, naming the path; the pin is
                released all the same and the range stays remembered for the
                next fsync, sync or unmount.
        """
        if self._segments is None:
            raise ValueError(f"SGList of {self._file.path} is already unpinned")
        self._segments = None
        try:
            self._write_back(dirty)
        except BaseException as exc:  # the pin goes all the same, without hiding the error
            cleanup_after(exc, lambda: self._file._unpin(self._token))
            raise
        self._file._unpin(self._token)

    def _write_back(self, dirty: bool) -> None:
        """A writable pin's range leaves ``mapped_ranges``'s live ranges and is flushed
        with the file's other remembered ranges, then drained (DataPath.writeback);
        not ``dirty``: it is forgotten."""
        token = self._writeback
        if token is None:
            return
        self._writeback = None
        inode = self._file.inode
        if not dirty:
            self._data.mapped_ranges.unmap(inode.ino, token, keep=False)
            return
        with naming(self._file.path), inode.lock:
            self._data.mapped_ranges.unmap(inode.ino, token)
            self._data.writeback(inode)

    def close(self) -> None:
        """unpin() if still pinned (idempotent, for with-blocks)."""
        if self._segments is not None:
            self.unpin()


def pin_file(file: File, data: DataPath, offset: int, length: int) -> SGList:
    """Pin ``[offset, offset+length)`` of an open file.  Caller holds ``file.inode.lock``.

    Raises:
        InvalidArgument: negative or non-integer values, or a range past the end of file.
        WouldBlock (EAGAIN): a truncate waits on the range.
    """
    inode = file.inode
    for value, what in ((offset, "offset"), (length, "length")):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidArgument(f"pin {what} must be a non-negative integer, not {value!r}")
    size = inode.rec.size
    if offset + length > size:
        raise InvalidArgument(
            f"pin of [{offset}, {offset + length}) is beyond the end of {file.path} ({size} bytes)",
            file.path,
        )
    # the pinned blocks are device memory that stores may change behind the file's page
    # cache, whichever File pins it (daxfs.fs.filecache, invariant 4): its stamp goes
    inode.data_changed()
    if inode.layouts is None:
        inode.layouts = Layouts(inode.lock)
    token = inode.layouts.pin(offset, offset + length, file.path)
    segments: list[Segment] = []

    def actor(iomap: Iomap, pos: int, n: int) -> int:
        dev = iomap.addr_of(pos) if iomap.type is IomapType.MAPPED else None
        last = segments[-1] if segments else None
        if last is not None and (
            (dev is None and last.dev is None)
            or (dev is not None and last.dev is not None and last.dev + last.length == dev)
        ):
            segments[-1] = Segment(last.dev, last.length + n)
        else:
            segments.append(Segment(dev, n))
        return n

    try:
        if length:
            iomap_iter(data, inode, offset, length, IomapFlags.PIN, actor, short_ok=False)
        for seg in segments:  # a lazily filled device loads what the pin aliases
            if seg.dev is not None:
                data.store.ensure(seg.dev, seg.length)
    except BaseException:
        inode.layouts.unpin(token)
        raise
    writable = file.writable()
    writeback = None
    if writable and length:  # stores through its views: written back at fsync and unpin
        writeback = data.mapped_ranges.map(inode.ino, inode.rec.generation, offset, offset + length)
    return SGList(file, data, offset, segments, token, writeback, writable=writable)


def _zero_views(length: int) -> Iterator[memoryview]:
    zeros = memoryview(_ZEROS)
    while length > 0:
        n = min(length, len(_ZEROS))
        yield zeros[:n]
        length -= n


def _fileno(target: Any) -> int | None:
    try:
        fd = target.fileno()
    except (AttributeError, OSError, ValueError):
        return None
    return fd if isinstance(fd, int) else None


def _sendfile(sock: socket.socket, fd: int, offset: int, length: int) -> int:
    done = 0
    while done < length:
        sent = os.sendfile(sock.fileno(), fd, offset + done, length - done)
        if sent == 0:
            raise OSError(f"sendfile: the peer stopped accepting after {done} bytes")
        done += sent
    return done


def _sendmsg(sock: socket.socket, views: list[memoryview]) -> int:
    done = 0
    total = sum(len(v) for v in views)
    while views:
        sent = sock.sendmsg(views)
        done += sent
        views = advance_views(views, sent)
    assert done == total
    return done
