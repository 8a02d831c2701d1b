"""File: an open regular file, an ``io.RawIOBase`` over the DAX data path.

``FileSystem.open`` wraps a File in ``io.BufferedReader``/``BufferedWriter``/
``BufferedRandom``/``TextIOWrapper`` exactly as ``builtins.open`` wraps a
``FileIO``; ``buffering=0`` returns the File itself.  Note the buffered
wrappers hold written bytes in memory until ``flush()``; a raw File's
``write`` and ``pwrite`` are durable when they return.

State diagram::

    FileSystem.open() --> OPEN --close()--> CLOSED
      OPEN: read/write/seek/...; CLOSED: every method raises ClosedFile
      (EBADF, also ValueError as io raises); an open File holds its inode
      (InodeTable.hold), close() puts it, and the last put of an unlinked
      inode frees it.  Mappings and pins hold the inode too, each until it
      is closed or unpinned.

Errors from the layers below name this file's path (``daxfs.errors.naming``).

Direct I/O and the asynchronous API
-----------------------------------
``FileSystem.open(path, mode, buffering=0, direct=True)`` is O_DIRECT.  On a
mount over a block device the File then has ``_dio``, the mount's engine
(daxfs.fs.direct): read, readinto, readall, write, pread, preadinto and
pwrite move the data in bios between the caller's buffer and the device,
with Linux's alignment rules (offset, length and buffer address multiples of
the logical block size, ``direct_alignment``; EINVAL otherwise), and the fast
paths below are off.  On a DAX mount (persistent memory) ``direct=True`` is
accepted and changes nothing: DAX has no page cache to bypass, as Linux
ignores O_DIRECT's bypass on a DAX filesystem; no alignment is required.

``submit_read(offset, buffer)`` / ``submit_write(offset, data)`` return a
``concurrent.futures.Future`` of the bytes done, so one thread can keep many
requests in flight; ``await aread(...)`` / ``await awrite(...)`` are the same
for asyncio.  On a direct File they are the engine's requests; otherwise
(DAX, or a File through the cache) the operation runs at once and the Future
is already resolved.  A submit may wait for the range lock (a conflicting
write in flight, a truncate of the range) before it returns.  Misuse (closed,
wrong mode, bad offset, unaligned)
raises from the call; an I/O error (EIO, a short completion, ENOSPC) is the
Future's exception, an OSError with its errno naming the file.  ``close``
waits for the File's requests in flight.

The pwrite fast path
--------------------
``pwrite`` first makes one call into C, ``Committer.pwrite``
(daxfs/fs/_commit.c), through ``self._writer``: the journal's committer if
the file is open for writing and not in append mode, else None (``close``
clears it first; a journal made without a committer, read-only or on the
reference path, gives None).  That call is DataPath.write's overwrite case and
Journal.overwrite in one: under ``inode.lock`` and the journal lock it checks
what they check (the cached written extent, the size, no pins, the journal
neither in a transaction nor failed) and commits.  Anything else, a bad
offset or buffer included, is a miss (None): the method then runs its checks,
which raise what they always raised, and the Python path.

The read fast path
------------------
``pread``, ``preadinto``, ``read`` and ``readinto`` first make one call into C,
``ExtentReader.pread``/``preadinto`` (daxfs/pmem/_native.c), through
``self._reader``, which is None unless the file is open for reading (the one
open check: ``close`` clears it first) and the device has a native region.
That call is the single-extent case of the iomap read
(``daxfs.iomap.iomap_read_into``): under ``inode.lock`` it clamps the range
to the size, compares it with the inode's cached extent (``Inode.xcache``,
one comparison) and copies it out of device memory (one memcpy).  Anything
else is a miss (None) and the method goes the full way: its checks, in the
order and with the errors they always had (EBADF, TypeError, EINVAL), then
``DataPath.read_into``/``read_bytes`` through ``iomap_iter``, which also
refills the extent cache.  The answer is the same either way
(tests/fs/test_read_fast_path.py compares them).

Why a fast read cannot touch a freed block: the copy happens with
``inode.lock`` held, the lock every change of the file's blocks or size holds
(write, truncate, fallocate, delete: DataPath's "caller must hold
inode.lock"), and the cached extent is only trusted while it is still
``inode.xcache``, which every change of the extent map clears before any
block is freed (daxfs.fs.extmap).  So during the copy the extent maps the
file's blocks and nothing can free them.  The lock also keeps a read atomic
with respect to a write of the same bytes, as the slow path does.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import io
import os
import threading
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, ClassVar, NoReturn, Protocol

from daxfs.errors import ClosedFile, InvalidArgument, NotSupported, UnsupportedIO, naming
from daxfs.fs import _commit, xattr
from daxfs.fs.data import (
    FALLOC_FL_KEEP_SIZE,
    FALLOC_FL_PUNCH_HOLE,
    FALLOC_FL_ZERO_RANGE,
    DataPath,
)
from daxfs.fs.filecache import FileCache, file_cache
from daxfs.fs.inode import Inode, InodeTable
from daxfs.lifecycle import cleanup_after, run_all

if TYPE_CHECKING:
    from typing_extensions import Buffer

    from daxfs.fs.direct import DirectIO

SEEK_DATA = getattr(os, "SEEK_DATA", 3)
SEEK_HOLE = getattr(os, "SEEK_HOLE", 4)


def _writable_bytes(buffer: Buffer) -> memoryview:
    """``buffer`` as a writable byte view.

    Raises:
        TypeError: not a writable, contiguous buffer (as io's readinto).
    """
    view = memoryview(buffer)
    if view.readonly:
        raise TypeError(f"readinto() needs a writable buffer, not {type(buffer).__name__}")
    return view.cast("B")


class FastReader(Protocol):
    """The read fast path (``File._reader``): ``ExtentReader`` on DAX (daxfs/pmem/_native.c),
    the page cache's ``HitReader`` on a bounded mount (daxfs.fs.filecache); None is a
    miss (the full path then)."""

    def pread(self, inode: object, n: object, offset: object, /) -> bytes | None: ...

    def preadinto(self, inode: object, buffer: object, offset: object, /) -> int | None: ...


class Owner(Protocol):
    """What a File needs from its filesystem."""

    data: DataPath
    itable: InodeTable
    #: the open Files by id (a File takes itself out at close)
    _files: dict[int, weakref.ref[File]]
    #: the direct-I/O engine on a block device; None on DAX (daxfs.fs.direct)
    direct: DirectIO | None

    def _touch_modified(self, inode: Inode) -> None: ...

    def _stat_inode(self, inode: Inode) -> os.stat_result: ...

    def _check_writable(self, path: str) -> None: ...

    def _getxattr(self, inode: Inode, shown: str, name: bytes) -> bytes: ...

    def _setxattr(self, inode: Inode, shown: str, name: bytes, data: bytes, flags: int) -> None: ...

    def _listxattr(self, inode: Inode, shown: str) -> list[str]: ...

    def _removexattr(self, inode: Inode, shown: str, name: bytes) -> None: ...

    def _fchmod(self, inode: Inode, shown: str, mode: int) -> None: ...

    def _fchown(self, inode: Inode, shown: str, uid: int, gid: int) -> None: ...

    def _futime(
        self,
        inode: Inode,
        shown: str,
        times: tuple[float, float] | None,
        ns: tuple[int, int] | None,
    ) -> None: ...


class File(io.RawIOBase):
    """An open regular file of a daxfs filesystem (raw, unbuffered)."""

    # Every field a File sets is a slot (beside io's __dict__, which then stays empty):
    # File.pwrite in C reads _writer, _journal and inode by offset (_commit.file_pwrite),
    # and an open+close, which sets them all, is part of every create.
    __slots__ = (
        "_append",
        "_data",
        "_dio",
        "_fcache",
        "_inflight",
        "_itable",
        "_journal",
        "_open",
        "_owner",
        "_pos",
        "_readable",
        "_reader",
        "_writable",
        "_writer",
        "direct",
        "inode",
        "mode",
        "name",
    )

    #: guards every File's ``_inflight`` set (held for a set operation only)
    _inflight_lock: ClassVar[threading.Lock] = threading.Lock()

    #: Mapping and pin factories, installed by daxfs.mm (the layer above; fs cannot import it)
    mapper: ClassVar[Callable[..., Any] | None] = None
    pinner: ClassVar[Callable[..., Any] | None] = None

    def __init__(
        self,
        owner: Owner,
        inode: Inode,
        name: str | bytes,
        mode: str,
        *,
        readable: bool,
        writable: bool,
        append: bool,
        direct: bool = False,
    ) -> None:
        # (io.RawIOBase's __init__ is object's: nothing to call)
        self._owner = owner
        self._data = owner.data
        self._itable = owner.itable
        self.inode = inode
        self.name = name
        self.mode = mode
        self._readable = readable
        self._writable = writable
        self._append = append
        # as FileIO: append mode starts at the end of the file (tell, read of "a+")
        self._pos = inode.rec.size if append else 0
        self._open = True
        #: the read fast path while the file is open for reading (None: closed, not
        #: readable, or no C reader for the device); see "The read fast path" above
        self._reader: FastReader | None = owner.data.reader if readable else None
        journal = owner.data.journal
        #: the pwrite fast path (Committer.pwrite) while the file is open for writing,
        #: not in append mode (None: closed, or no C commit); see "The pwrite fast path"
        self._writer = journal.committer if writable and not append else None
        self._journal = journal
        #: opened with direct=True (O_DIRECT)
        self.direct = direct
        #: the direct-I/O engine when direct on a block device (then no fast paths)
        self._dio = owner.direct if direct else None
        if self._dio is not None:
            self._reader = self._writer = None
        #: the mount's page cache of files (a mount bounded by cache_size): buffered I/O
        #: of this file goes through the file's address space (daxfs.fs.filecache)
        self._fcache = None if direct else file_cache(owner.data, owner.direct)
        if self._fcache is not None:  # the reader: the re-read of the space's cached pages
            self._reader = self._fcache.reader if readable else None
            self._writer = None
        #: this File's asynchronous requests in flight (close waits for them); None
        #: until the first (made under _inflight_lock)
        self._inflight: set[Future[int]] | None = None

    def __repr__(self) -> str:
        state = "closed" if not self._open else f"pos={self._pos}"
        return f"<daxfs.File name={self.name!r} mode={self.mode!r} {state}>"

    @property
    def path(self) -> str:
        return os.fsdecode(self.name)

    # -- checks -----------------------------------------------------------------------

    def _check_open(self) -> None:
        if not self._open:
            raise ClosedFile(f"I/O operation on closed file {self.path}", self.path)

    def _check_read(self) -> None:
        self._check_open()
        if not self._readable:
            raise UnsupportedIO(f"file {self.path} is not open for reading", self.path)

    def _check_write(self) -> None:
        self._check_open()
        if not self._writable:
            raise UnsupportedIO(f"file {self.path} is not open for writing", self.path)
        self._owner._check_writable(self.path)

    def _offset(self, value: object, what: str = "offset") -> int:
        """``value`` if it is a non-negative int.

        Raises:
            TypeError: not an int (as io and os do).
            InvalidArgument (EINVAL): negative.
        """
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{what} must be an integer, not {type(value).__name__}")
        if value < 0:
            raise InvalidArgument(f"negative {what} {value} for {self.path}", self.path)
        return value

    # -- io.RawIOBase -----------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return not self._open

    def readable(self) -> bool:
        self._check_open()
        return self._readable

    def writable(self) -> bool:
        self._check_open()
        return self._writable

    def seekable(self) -> bool:
        self._check_open()
        return True

    def fileno(self) -> int:
        raise io.UnsupportedOperation("daxfs files have no OS file descriptor")

    def readinto(self, buffer: Buffer) -> int:
        """Copy bytes at the position straight from device memory into ``buffer``.

        Raises:
            ClosedFile, UnsupportedIO (EBADF): closed, or not open for reading.
            TypeError: ``buffer`` is not a writable contiguous buffer.
        """
        reader = self._reader
        inode = self.inode
        if reader is not None:
            with inode.lock:  # the position moves under the lock (an RLock: the reader nests)
                got = reader.preadinto(inode, buffer, self._pos)
                if got is not None:
                    self._pos += got
                    return got
        self._check_read()
        view = _writable_bytes(buffer)
        if self._dio is not None:
            n = self._direct_read(view, self._pos)
            self._pos += n
            return n
        with naming(self.path), inode.lock:
            fc = self._routed()
            if fc is not None:
                n = fc.read(inode, self._pos, view)
            else:
                n = self._data.read_into(inode, self._pos, view)
            self._pos += n
        return n

    def read(self, size: int | None = -1) -> bytes:
        """Up to ``size`` bytes at the position (all to EOF if ``size`` is -1 or None).

        Raises:
            ClosedFile, UnsupportedIO (EBADF): closed, or not open for reading.
            TypeError: ``size`` is not an int or None.
        """
        reader = self._reader
        if self._dio is not None and type(size) is int and size >= 0:
            self._check_read()
            got = self._direct_bytes(size, self._pos)
            self._pos += len(got)
            return got
        if reader is not None and type(size) is int and size >= 0:
            inode = self.inode
            with inode.lock:
                data = reader.pread(inode, size, self._pos)
                if data is not None:
                    self._pos += len(data)
                    return data
        out = super().read(-1 if size is None else size)  # readall(), or readinto()
        assert out is not None  # a File never blocks
        return out

    def readall(self) -> bytes:
        """The bytes from the position to the end of file.

        Raises:
            ClosedFile, UnsupportedIO (EBADF): closed, or not open for reading.
        """
        self._check_read()
        inode = self.inode
        reader = self._reader
        if reader is not None:  # the fast path, as read(n) (the size read under the lock)
            with inode.lock:
                data = reader.pread(inode, max(0, inode.rec.size - self._pos), self._pos)
                if data is not None:
                    self._pos += len(data)
                    return data
        if self._dio is not None:  # up to the end of file, in a length the alignment allows
            align = self._dio.alignment
            data = self._direct_bytes(
                -(-max(0, inode.rec.size - self._pos) // align) * align, self._pos
            )
            self._pos += len(data)
            return data
        with naming(self.path), inode.lock:
            fc = self._routed()
            if fc is not None:
                data = fc.read_bytes(inode, self._pos, inode.rec.size - self._pos)
            else:
                data = self._data.read_bytes(inode, self._pos, inode.rec.size - self._pos)
            self._pos += len(data)
        return data

    def write(self, data: Buffer) -> int:
        """Write at the position (at the end in append mode); durable on return."""
        journal = self._data.journal
        if not (self._open and self._writable and not journal.readonly and not journal.failed):
            self._check_write()  # raises; the conditions are _check_write's, inlined
        inode = self.inode
        if self._dio is not None:
            n = self._direct_write(data, self._pos, self._append)
            self._pos = inode.rec.size if self._append else self._pos + n  # after it: the end
            return n
        try:
            with inode.lock:
                if self._append:
                    self._pos = inode.rec.size
                fc = self._routed()
                if fc is not None:
                    n = fc.write(inode, self._pos, data)
                else:
                    n = self._data.write(inode, self._pos, data)
                self._pos += n
        except BaseException:
            with naming(self.path):  # errors name the file (no context manager per call)
                raise
        return n

    def pread(self, n: int, offset: int) -> bytes:
        """Up to ``n`` bytes at ``offset``; the position does not move.

        Raises:
            ClosedFile, UnsupportedIO (EBADF): closed, or not open for reading.
            TypeError: ``n`` or ``offset`` is not an int.
            InvalidArgument (EINVAL): ``n`` or ``offset`` is negative.
        """
        reader = self._reader
        if reader is not None:  # the fast path: one C call (see the module docstring)
            data = reader.pread(self.inode, n, offset)
            if data is not None:
                return data
        self._check_read()
        self._offset(n, "length")
        self._offset(offset)
        if self._dio is not None:
            return self._direct_bytes(n, offset)
        with naming(self.path), self.inode.lock:
            fc = self._routed()
            if fc is not None:
                return fc.read_bytes(self.inode, offset, n)
            return self._data.read_bytes(self.inode, offset, n)

    def preadinto(self, buffer: Buffer, offset: int) -> int:
        """Fill ``buffer`` from ``offset`` (zero-copy from device memory); return bytes read.

        Raises:
            as ``pread``; TypeError: ``buffer`` is not a writable contiguous buffer.
        """
        reader = self._reader
        if reader is not None:
            got = reader.preadinto(self.inode, buffer, offset)
            if got is not None:
                return got
        dio = self._dio
        if dio is not None and self._readable and self._open:
            try:  # the direct read's fast path first: it takes only what the checks
                # below let through (an int offset >= 0, a writable byte buffer)
                done = dio.read_fast(self.inode, offset, buffer)
            except BaseException:
                with naming(self.path):
                    raise
            if done is not None:
                return done
        self._check_read()
        self._offset(offset)
        view = _writable_bytes(buffer)
        if dio is not None:  # (the fast path declined above, or the file is closed)
            return self._direct_read(view, offset, fast=False)
        with naming(self.path), self.inode.lock:
            fc = self._routed()
            if fc is not None:
                return fc.read(self.inode, offset, view)
            return self._data.read_into(self.inode, offset, view)

    def pwrite(self, data: Buffer, offset: int) -> int:
        """Write ``data`` at ``offset``, atomically and durably; the position does not move.

        In append mode the data goes to the end of file, as Linux's pwrite does
        with O_APPEND.  (The reference of File.pwrite in C, ``_commit.file_pwrite``,
        installed in its place by ``native_pwrite(True)``: the same two steps.)
        """
        writer = self._writer
        if writer is not None:
            # the overwrite case of DataPath.write in one C call (None: a miss, and the
            # checks below raise whatever the arguments or the journal call for)
            try:
                done = writer.pwrite(self._journal, self.inode, data, offset)
            except BaseException as exc:
                self._pwrite_failed(exc)
            if done is not None:
                return done
        return self._pwrite_slow(data, offset)

    def _pwrite_failed(self, exc: BaseException) -> NoReturn:
        """Raise ``exc``, from the pwrite fast path, naming the file.

        Raises:
            OSError: ``exc`` named as ``naming`` names it (no context manager per call).
        """
        with naming(self.path):
            raise exc

    def _pwrite_slow(self, data: Buffer, offset: int) -> int:
        """pwrite past its fast path: the checks, then DataPath.write under inode.lock.

        Raises:
            ClosedFile (EBADF), UnsupportedIO: closed, or not open for writing.
            TypeError, InvalidArgument (EINVAL): a bad offset or buffer.
            OSError: from the write, naming the file (ENOSPC, EIO, EROFS, ...).
        """
        journal = self._data.journal
        if not (self._open and self._writable and not journal.readonly and not journal.failed):
            self._check_write()  # raises; the conditions are _check_write's, inlined
        if type(offset) is not int or offset < 0:
            self._offset(offset)  # raises
        inode = self.inode
        if self._dio is not None:
            return self._direct_write(data, offset, self._append)
        try:
            with inode.lock:
                if self._append:
                    offset = inode.rec.size
                fc = self._routed()
                if fc is not None:
                    return fc.write(inode, offset, data)
                return self._data.write(inode, offset, data)
        except BaseException:
            with naming(self.path):  # errors name the file (no context manager per call)
                raise

    def _routed(self) -> FileCache | None:
        """The page cache of files when this file's buffered I/O goes through its
        address space now (daxfs.fs.filecache), else None -- and then the space, if
        any, is emptied: a mapped or pinned file goes the DataPath way.  Caller
        must hold ``inode.lock``."""
        fc = self._fcache
        if fc is None:
            return None
        if fc.routed(self.inode):
            return fc
        fc.forget(self.inode)
        return None

    # -- direct I/O (daxfs.fs.direct) ---------------------------------------------------

    @property
    def direct_alignment(self) -> int:
        """What offsets, lengths and buffer addresses of I/O on this File must be
        multiples of: the device's logical block size for direct I/O on a block
        device, else 1."""
        return self._dio.alignment if self._dio is not None else 1

    def _direct_read(self, view: memoryview, offset: int, fast: bool = True) -> int:
        assert self._dio is not None
        try:
            return self._dio.read(self.inode, offset, view, what=self.name, fast=fast)
        except BaseException:
            with naming(self.path):  # errors name the file (no context manager per call)
                raise

    def preadinto_many(self, items: Sequence[tuple[int, Buffer]]) -> list[int]:
        """Fill each ``buffer`` of ``items`` (``(offset, buffer)`` pairs) from its
        offset, as ``preadinto`` would; return the bytes read of each.  With
        ``direct=True`` on a block device the reads inside written extents go to the
        device together (``DirectIO.read_many``: on io_uring, the queue depth in
        flight from one call): the call a Python program makes to keep QD32 busy
        from one thread without a Future per read.  Otherwise one ``preadinto``
        per item.

        Raises:
            as ``preadinto``, for the first item that fails (EINVAL for an unaligned
            direct item, before any I/O).
        """
        self._check_read()
        checked = [(self._offset(offset), _writable_bytes(buffer)) for offset, buffer in items]
        if self._dio is None:
            return [self.preadinto(view, offset) for offset, view in checked]
        try:
            return self._dio.read_many(self.inode, checked, what=self.name)
        except BaseException:
            with naming(self.path):  # errors name the file (no context manager per call)
                raise

    def _direct_bytes(self, n: int, offset: int) -> bytes:
        """Up to ``n`` bytes at ``offset`` by direct I/O into an aligned buffer."""
        if n == 0:
            return b""
        from daxfs.fs.direct import aligned_buffer

        buf = aligned_buffer(n)  # not closed here: an error's traceback may hold a view
        got = self._direct_read(memoryview(buf), offset)
        return buf[:got]

    def _direct_write(self, data: Buffer, offset: int, append: bool) -> int:
        """A direct write at ``offset``, or at the end of file (``append``: taken by the
        engine under the inode lock, so appenders never share an offset)."""
        assert self._dio is not None
        with naming(self.path):
            return self._dio.write(self.inode, offset, data, append=append, what=self.name)

    # -- the asynchronous API -------------------------------------------------------------

    def submit_read(self, offset: int, buffer: Buffer) -> Future[int]:
        """Start reading into ``buffer`` at ``offset``; a Future of the bytes read
        (0 at or past the end of file).  Do not touch ``buffer`` until it is done.

        Raises:
            ClosedFile, UnsupportedIO (EBADF): closed, or not open for reading.
            TypeError: ``offset`` not an int, ``buffer`` not a writable buffer.
            InvalidArgument (EINVAL): negative ``offset``; unaligned direct I/O.
            I/O errors (EIO, a short completion) are the Future's exception.
        """
        dio = self._dio
        if dio is not None and self._readable and self._open:
            # the lean read first (daxfs.fs.direct: one plain bio, no request object);
            # it takes only what the checks below let through
            future = dio.submit_read_lean(
                self.inode, offset, buffer, self.path, self._inflight_set(), self._inflight_lock
            )
            if future is not None:
                return future
        self._check_read()
        self._offset(offset)
        view = _writable_bytes(buffer)
        if self._dio is None:
            return self._now(lambda: self.preadinto(view, offset))
        with naming(self.path):
            future = self._dio.submit(self.inode, offset, view, write=False, what=self.name)
        return self._track(future)

    def submit_write(self, offset: int, data: Buffer) -> Future[int]:
        """Start writing ``data`` at ``offset`` (at the end of file in append mode);
        a Future of the bytes written, resolved once they are durable (and, for
        direct I/O, the size and times committed).  Do not change ``data`` until
        it is done.

        Raises:
            ClosedFile, UnsupportedIO (EBADF), ReadOnly (EROFS): closed, not open
                for writing, read-only filesystem.
            TypeError: ``offset`` not an int.
            InvalidArgument (EINVAL): negative ``offset``; unaligned direct I/O.
            I/O errors (EIO, a short completion, ENOSPC, EFBIG) are the Future's
            exception.
        """
        self._check_write()
        self._offset(offset)
        if self._dio is None:
            return self._now(lambda: self.pwrite(data, offset))
        with naming(self.path):
            future = self._dio.submit(
                self.inode, offset, data, write=True, append=self._append, what=self.name
            )
        return self._track(future)

    async def aread(self, offset: int, buffer: Buffer) -> int:
        """``submit_read`` for asyncio: ``n = await f.aread(offset, buffer)``.

        Raises:
            as ``submit_read``, the Future's errors included.
        """
        return await asyncio.wrap_future(self.submit_read(offset, buffer))

    async def awrite(self, offset: int, data: Buffer) -> int:
        """``submit_write`` for asyncio: ``n = await f.awrite(offset, data)``.

        Raises:
            as ``submit_write``, the Future's errors included.
        """
        return await asyncio.wrap_future(self.submit_write(offset, data))

    @staticmethod
    def _now(operation: Callable[[], int]) -> Future[int]:
        """A Future resolved with what ``operation`` returns or raises (an OSError)."""
        future: Future[int] = Future()
        try:
            future.set_result(operation())
        except Exception as exc:
            future.set_exception(exc)
        return future

    def _inflight_set(self) -> set[Future[int]]:
        """The set of this File's requests in flight (made on first use)."""
        inflight = self._inflight
        if inflight is None:
            with self._inflight_lock:
                if self._inflight is None:
                    self._inflight = set()
                inflight = self._inflight
        return inflight

    def _track(self, future: Future[int]) -> Future[int]:
        """Count ``future`` in flight until it is done; errors get this file's path."""
        path = self.path
        inflight = self._inflight_set()
        with self._inflight_lock:
            inflight.add(future)

        def done(f: Future[int]) -> None:
            with self._inflight_lock:
                inflight.discard(f)

        future.add_done_callback(done)
        return _Named(future, path)

    def _wait_inflight(self) -> None:
        if self._inflight is None:  # never had a request (set under the lock, never unset)
            return
        with self._inflight_lock:
            pending = list(self._inflight)
        if pending:
            concurrent.futures.wait(pending)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        """Move the position; SEEK_DATA and SEEK_HOLE as on Linux (ENXIO past the end)."""
        self._check_open()
        if isinstance(offset, bool) or not isinstance(offset, int):
            raise TypeError(f"offset must be an integer, not {type(offset).__name__}")
        with self.inode.lock:
            if whence == os.SEEK_SET:
                pos = offset
            elif whence == os.SEEK_CUR:
                pos = self._pos + offset
            elif whence == os.SEEK_END:
                pos = self.inode.rec.size + offset
            elif whence in (SEEK_DATA, SEEK_HOLE):
                pos = self._seek_data(offset, whence == SEEK_DATA)
            else:
                raise InvalidArgument(f"invalid whence {whence!r} for {self.path}", self.path)
            if pos < 0:
                raise InvalidArgument(f"negative seek position {pos} in {self.path}", self.path)
            self._pos = pos
        return pos

    def _seek_data(self, offset: int, want_data: bool) -> int:
        if offset < 0:  # Linux: ENXIO (EINVAL is for an unknown whence)
            raise OSError(errno.ENXIO, f"negative offset {offset} in {self.path}", self.path)
        with naming(self.path):
            found = self._data.seek_data(self.inode, offset, want_data)
        if found is None:
            what = "data" if want_data else "hole"
            raise OSError(errno.ENXIO, f"no {what} at or after offset {offset}", self.path)
        return found

    def tell(self) -> int:
        self._check_open()
        return self._pos

    def truncate(self, size: int | None = None, *, nowait: bool = False) -> int:
        """Set the file size (default: the position); the position does not move.

        Waits for pins on the bytes removed (``nowait``: BlockingIOError instead).
        """
        self._check_write()
        if size is None:
            size = self._pos
        self._offset(size, "size")
        with naming(self.path), self.inode.lock:
            try:
                self._data.truncate(self.inode, size, nowait)
            finally:
                if self._fcache is not None:  # (the changed ctime would empty it too)
                    self._fcache.changed(self.inode, size)
        return size

    def fallocate(self, offset: int, length: int, mode: int = 0, *, nowait: bool = False) -> None:
        """Allocate (0, KEEP_SIZE), PUNCH_HOLE|KEEP_SIZE or ZERO_RANGE (|KEEP_SIZE), as Linux.

        The arguments are checked here, in the order and with the errnos of
        Linux's vfs_fallocate.

        Raises:
            ClosedFile, UnsupportedIO (EBADF): closed, or not open for writing.
            InvalidArgument (EINVAL): negative offset, length <= 0.
            NotSupported (EOPNOTSUPP): an unknown mode bit, PUNCH_HOLE with
                ZERO_RANGE, or PUNCH_HOLE without KEEP_SIZE.
            FileTooLarge (EFBIG), NoSpace (ENOSPC), ReadOnly (EROFS).
        """
        self._check_write()
        for value, what in ((offset, "offset"), (length, "length"), (mode, "mode")):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{what} must be an integer, not {type(value).__name__}")
        if offset < 0 or length <= 0:
            raise InvalidArgument(
                f"fallocate of {self.path}: invalid range offset={offset} length={length}",
                self.path,
            )
        known = FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE
        punch = bool(mode & FALLOC_FL_PUNCH_HOLE)
        if (
            mode & ~known
            or (punch and mode & FALLOC_FL_ZERO_RANGE)
            or (punch and not mode & FALLOC_FL_KEEP_SIZE)
        ):
            raise NotSupported(f"fallocate of {self.path}: mode {mode:#x} not supported", self.path)
        with naming(self.path), self.inode.lock:
            try:
                self._data.fallocate(self.inode, offset, length, mode, nowait)
            finally:
                if self._fcache is not None:  # (the changed ctime would empty it too)
                    self._fcache.changed(self.inode, offset, length)

    def fsync(self) -> None:
        """Persist stores made through writable mappings of the file, live or closed
        (as Linux writes back dirty DAX pages at fsync, even after munmap);
        everything else is durable already.

        A live writable mapping also sets the modification time here.  With
        ``direct=True`` on a block device, the times that direct overwrites left
        owed are committed (``DirectIO.sync_times``).

        Raises:
            ClosedFile (EBADF): the file is closed.
            IOFailure (EIO): the device failed to flush; a later fsync tries again.
            ReadOnly (EROFS): owed times after a journal failure.
        """
        self._check_open()
        inode = self.inode
        with naming(self.path):
            with inode.lock:
                mapped = self._data.writeback(inode)
                if self._dio is not None:
                    self._dio.sync_times(inode)
            if mapped:
                self._owner._touch_modified(inode)

    def fdatasync(self) -> None:
        """As fsync (metadata needed to read the data back is always durable)."""
        self.fsync()

    # -- DAX mmap and pins (daxfs.mm) ---------------------------------------------------

    def mmap(
        self,
        offset: int = 0,
        length: int | None = None,
        *,
        access: str = "write",
        address: int | None = None,
        fixed: str | None = None,
    ) -> Any:
        """Map ``[offset, offset+length)`` of the file straight from the device.

        Returns a ``daxfs.mm.Mapping``: buffer protocol (memoryview, slicing,
        numpy via ``asarray``), ``msync(offset, length)`` of exactly a range,
        ``close()``.  ``fixed="noreplace"`` maps exactly at ``address`` or fails
        with FileExistsError (MAP_WEAK); ``fixed="replace"`` replaces what is
        there, but only daxfs mappings (MAP_FIXED, made safe).  See
        daxfs/mm/mapping.py.

        Raises:
            InvalidArgument (EINVAL): offset not page aligned, range beyond the
                end of file, bad access/fixed/address.
            PermissionDenied (EACCES): writable mapping of a file not open for writing.
            FileExistsError (EEXIST): the fixed address range is taken.
            NoSpace: a writable mapping needs blocks for holes.
        """
        self._check_open()
        if File.mapper is None:
            raise NotSupported("DAX mmap needs daxfs.mm (import daxfs)")
        inode = self.inode
        # what must run without the inode lock: closing the mappings fixed="replace"
        # replaced (the last hold on an unlinked file frees it, under the filesystem lock)
        after_unlock: list[Callable[[], object]] = []
        self._itable.hold(inode)  # first: a racing close must not reap the inode under us
        try:
            with naming(self.path), inode.lock:
                if self._fcache is not None:  # a mapped file goes the DataPath way
                    self._fcache.forget(inode)
                mapping = File.mapper(
                    self, self._data, offset, length, access, address, fixed, after_unlock
                )
                inode.mappings.append(mapping)
        except BaseException as exc:
            cleanup_after(exc, *after_unlock, lambda: self._itable.put(inode))
            raise
        try:
            run_all(after_unlock)
        except BaseException as exc:  # the mapping is made: close it, never leak it
            cleanup_after(exc, mapping.close)
            raise
        return mapping

    def _mapping_closed(self, mapping: Any, touched: bool) -> None:
        """Called by a Mapping when it is closed or replaced."""
        inode = self.inode
        with inode.lock:
            held = mapping in inode.mappings
            if held:
                inode.mappings.remove(mapping)
        with naming(self.path):
            try:
                if touched:
                    self._owner._touch_modified(inode)
            except BaseException as exc:  # the hold still goes, without hiding the error
                cleanup_after(exc, lambda: self._itable.put(inode) if held else None)
                raise
            if held:
                self._itable.put(inode)

    def pin(self, offset: int, length: int) -> Any:
        """Pin ``[offset, offset+length)``: a ``daxfs.mm.SGList`` of device extents.

        Until it is unpinned, the blocks hold this file's data: operations that
        would change or free them wait (break layouts).

        Raises:
            InvalidArgument: bad or out-of-range values.
            WouldBlock (EAGAIN): a truncate waits on the range.
        """
        self._check_open()
        if File.pinner is None:
            raise NotSupported("pinning needs daxfs.mm (import daxfs)")
        inode = self.inode
        self._itable.hold(inode)  # first: a racing close must not reap the inode under us
        try:
            with naming(self.path), inode.lock:
                if self._fcache is not None:  # a pinned file goes the DataPath way
                    self._fcache.forget(inode)
                sg = File.pinner(self, self._data, offset, length)
        except BaseException as exc:
            cleanup_after(exc, lambda: self._itable.put(inode))
            raise
        return sg

    def _unpin(self, token: int) -> None:
        """Called by SGList.unpin."""
        inode = self.inode
        with inode.lock:
            assert inode.layouts is not None
            inode.layouts.unpin(token)
        with naming(self.path):
            self._itable.put(inode)

    def flush(self) -> None:
        if self._open:
            super().flush()

    def stat(self) -> os.stat_result:
        self._check_open()
        return self._owner._stat_inode(self.inode)

    # -- attributes of the open file (os.fchmod, os.fchown, os.utime of an fd) ---------

    def chmod(self, mode: int) -> None:
        """os.fchmod: FileSystem.chmod on this file, whatever mode it was opened in and
        also after its last name is gone.

        Raises:
            ClosedFile (EBADF), ReadOnly (EROFS).
        """
        self._check_open()
        self._owner._fchmod(self.inode, self.path, mode)

    def chown(self, uid: int, gid: int) -> None:
        """os.fchown: FileSystem.chown on this file (-1 keeps one), also unlinked.

        Raises:
            ClosedFile (EBADF), and what FileSystem.chown raises for the ids
            (TypeError, OutOfRange), ReadOnly (EROFS).
        """
        self._check_open()
        self._owner._fchown(self.inode, self.path, uid, gid)

    def utime(
        self, times: tuple[float, float] | None = None, *, ns: tuple[int, int] | None = None
    ) -> None:
        """os.utime of the file's descriptor (futimens): FileSystem.utime on this file,
        also unlinked; no times: now.

        Raises:
            ClosedFile (EBADF), and what FileSystem.utime raises for the times
            (TypeError, ValueError, OutOfRange, InvalidArgument), ReadOnly (EROFS).
        """
        self._check_open()
        self._owner._futime(self.inode, self.path, times, ns)

    # -- extended attributes of the open file (os.getxattr and the others on an fd) -----

    def getxattr(self, attribute: str | bytes) -> bytes:
        """FileSystem.getxattr on this file (also after its last name is gone).

        Raises:
            ClosedFile (EBADF), and what FileSystem.getxattr raises.
        """
        self._check_open()
        name = xattr.attribute_name(attribute, self.path)
        return self._owner._getxattr(self.inode, self.path, name)

    def setxattr(self, attribute: str | bytes, value: Buffer, flags: int = 0) -> None:
        """FileSystem.setxattr on this file, whatever mode it was opened in (as fsetxattr).

        Raises:
            ClosedFile (EBADF), and what FileSystem.setxattr raises.
        """
        self._check_open()
        name = xattr.attribute_name(attribute, self.path)
        data = xattr.check_set(value, flags, self.path)
        self._owner._setxattr(self.inode, self.path, name, data, flags)

    def listxattr(self) -> list[str]:
        """FileSystem.listxattr on this file.

        Raises:
            ClosedFile (EBADF), and what FileSystem.listxattr raises.
        """
        self._check_open()
        return self._owner._listxattr(self.inode, self.path)

    def removexattr(self, attribute: str | bytes) -> None:
        """FileSystem.removexattr on this file.

        Raises:
            ClosedFile (EBADF), and what FileSystem.removexattr raises.
        """
        self._check_open()
        name = xattr.attribute_name(attribute, self.path)
        self._owner._removexattr(self.inode, self.path, name)

    def close(self) -> None:
        """Close; the last holder of an unlinked file frees it.

        With ``direct=True`` on a block device, the times that direct overwrites
        left owed are committed (``DirectIO.sync_times``).

        Raises:
            IOFailure (EIO): the device failed while freeing the file (it stays
                on the orphan list: the next mount frees it), or committing the
                owed times; closed all the same.
            ReadOnly (EROFS): the owed times could not be committed after a
                journal failure; closed all the same.
        """
        if not self._open:
            return
        self._wait_inflight()  # requests in flight use the inode: they end first
        if self._fcache is not None:  # and the readahead of its pages in flight
            self._fcache.settle(self.inode)
        self._reader = self._writer = None  # first: the fast paths check nothing else
        self._open = False
        # (no io.IOBase.close: it would call flush, a no-op once closed, and set a flag of
        # its own that nothing reads, since ``closed`` is this class's)
        files = self._owner._files
        # ``ref()`` is None when the cyclic collector closes this File: it clears weak
        # references before it runs ``__del__``; the entry is this File's all the same
        if (ref := files.get(id(self))) is not None and ref() in (self, None):
            del files[id(self)]
        owed: OSError | None = None
        if self._dio is not None:  # the times of direct overwrites (DirectIO.touch)
            try:
                with self.inode.lock:
                    self._dio.sync_times(self.inode)
            except OSError as exc:  # closed all the same; raised after
                owed = exc
        try:
            self._itable.put(self.inode, file=True)
        except BaseException:
            with naming(self.path):  # the path decoded only for an error
                raise
        if owed is not None:
            with naming(self.path):
                raise owed

    def __del__(self) -> None:
        if getattr(self, "_open", False):
            with contextlib.suppress(Exception):
                self.close()

    def __getstate__(self) -> Any:
        raise TypeError("daxfs files cannot be pickled")


#: the Python File.pwrite (the reference of the C method, which has no frame of its own)
PYTHON_PWRITE = File.pwrite


def native_pwrite(on: bool) -> None:
    """Make File.pwrite the C method (``_commit.file_pwrite``, the default) or, off, the
    Python method ``PYTHON_PWRITE``; every File, open or not, takes the change."""
    File.pwrite = _commit.file_pwrite(File) if on else PYTHON_PWRITE  # type: ignore[method-assign]


native_pwrite(True)


class _Named(Future[int]):
    """A Future that follows ``inner`` and names ``path`` in its OSError (as the
    synchronous calls do, through ``daxfs.errors.naming``)."""

    def __init__(self, inner: Future[int], path: str) -> None:
        super().__init__()
        self._path = path
        inner.add_done_callback(self._copy)

    def _copy(self, inner: Future[int]) -> None:
        exc = inner.exception()
        if exc is None:
            self.set_result(inner.result())
            return
        try:
            with naming(self._path):
                raise exc
        except BaseException as named:
            self.set_exception(named)
