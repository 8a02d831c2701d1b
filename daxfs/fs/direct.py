"""Direct I/O: file data in bios, straight between the caller's buffer and the block device.

Theory of operation
-------------------
The 2014 proposal (../shared/CONTEXT.md, topic 6) was direct I/O rebuilt
around the bio, with no ``get_block()``; Linux did it with iomap.  daxfs's
engine is that path, for a filesystem mounted on a block device (through
``BlockCache``, daxfs.block.cache):

    DirectIO.submit(inode, pos, buffer, write)
      with inode.lock:
        range lock [pos, end)   shared for a read, exclusive for a write
                                (daxfs.fs.rangelock): held until completion
        write: pins broken (layout_timeout), the old last block's tail zeroed
               when writing past the end of file
        iomap_begin per extent  (DataPath.iomap_begin, IomapFlags.DIRECT; with
                                WRITE a hole gets UNWRITTEN blocks in a
                                transaction, as Linux's iomap does)
      without inode.lock:
        read:  MAPPED     -> the cache writes back dirty blocks of the extent
                             (BlockCache.write_back), then a READ bio into the
                             caller's buffer
               HOLE, UNWRITTEN -> zeros into the buffer, no I/O
        write: WRITE bios from the caller's buffer (no copy); where an UNWRITTEN
               extent is written in part of a block, WRITE bios of zeros for
               the rest of that block (Linux's iomap_dio_zero)
      completion (when the last bio ends; the caller's thread for a
      synchronous call, the engine's completion worker for a Future -- or,
      for a read, the thread that ended the bio if inode.lock is free at once):
        write: durable -- FUA when the request is one bio, else one FLUSH;
               the cache takes the written bytes (BlockCache.invalidate);
               with inode.lock: DataPath.direct_write_end, the iomap_end of the
               write: UNWRITTEN blocks converted, size and mtime, ONE transaction
               -- or, for an overwrite of written blocks inside the size (nothing
               to convert, no size change), no transaction: mtime and ctime set
               in memory and owed (``touch``; see "Times" below)
        read:  the count clamped to the end of file (bytes past it zeroed)
        range lock released; the result (bytes done) or the OSError

Fast paths: a synchronous read (``read``) whose aligned range lies in ONE
written (MAPPED) extent of a file without mappings skips the request object:
range lock and iomap_begin under one ``inode.lock``, the cache's write-back
of the extent, one ``BlockDevice.readinto`` (on io_uring the device's inline
read: one system call), the range released (``_read_mapped``).  ``read_many``
(``File.preadinto_many``) does the same for many items at once: their ranges
locked (shared, without waiting) and mapped under one ``inode.lock``, one
``BlockDevice.readinto_many`` for all; an item that is not so simple, or
whose range lock would wait, goes through ``read`` after the others are
released.  On a file device on io_uring the common synchronous read is one C
call (``_direct.LeanRead.read``: the same steps on the same objects; the
Python path stays the reference).  ``submit_read_lean`` (``File.submit_read``)
is the asynchronous form: the same lock and map, then ONE plain READ bio whose
``end_io`` releases the range and resolves a ``LeanFuture`` -- no request
object, no completion worker unless ``inode.lock`` is busy at the bio's end.
A synchronous write (``write``) that overwrites ONE written extent
below the end of file is ``_write_mapped``: range lock (exclusive), pins broken
and iomap_begin under one ``inode.lock``, ONE ``BlockDevice.write`` with FUA
(on io_uring the device's inline RWF_DSYNC write: one system call), the cache
told the bytes, the times owed, the range released.  Everything else is the
request path above.

Times.  A direct overwrite changes nothing that its data needs to be found
after a crash (the blocks were written already, the size stays), so it
commits no transaction: ``touch`` sets mtime and ctime in memory (stat shows
them at once) and owes their commit, which is made by fsync, fdatasync, close
of a direct File, ``FileSystem.sync``, unmount, any transaction of the inode
(its record is packed from memory), and the first overwrite LAZY_TIMES_SECONDS
after the first one owed (``sync_times``).  A crash before then keeps the data
and shows the times of the last commit -- as Linux's O_DIRECT|O_DSYNC
overwrite, which makes the data durable and leaves mtime to the journal's
next commit (fdatasync does not wait for it).  Why: that transaction was
three FLUSH/FUA round trips per write, 70% of a durable 1 MiB write's time.

There is no get_block and no page cache in this path: the only mapping
lookups are iomap_begin calls, one per extent, and the only copies are the
device's DMA (or a backend's bounce buffer).

Alignment is Linux's: the file offset, the length and the buffer's address
must be multiples of the device's logical block size (``alignment``), else
InvalidArgument (EINVAL) naming the alignment; open the file without
``direct=True`` for unaligned I/O (through the cache).  ``aligned_buffer``
makes a page-aligned buffer.

Why no I/O touches a freed block: the range lock is taken before the first
iomap_begin and released after completion; every operation that frees or
moves blocks of a file (truncate, punch-hole, zero-range, copy-on-write
writes, mmap preparation) first locks its range exclusively
(``DataPath.lock_range``), so it waits for the I/O, and new I/O waits for
it.  Why no stale data is exposed: blocks allocated for a direct write stay
UNWRITTEN (read as zeros) until the transaction at completion, which runs
only after the data is durable.

Lock order: range lock, then ``inode.lock`` (the range lock's waits release
it), then the journal lock.  Completions of Futures run on one worker thread
(as Linux runs unwritten-extent conversion from a workqueue, not the bio's
completion context): a bio's ``end_io`` may run on the device's completion
thread, which must never wait for ``inode.lock``, since a thread holding it may
be waiting for a bio that thread must complete.

Invariants
  1. A request holds its range lock from before its first iomap_begin until its
     completion has released everything; no bio of it is in flight after.
  2. A direct write returns (or resolves its Future) only after its data is
     durable on the device and its iomap_end transaction committed; an
     overwrite of written blocks inside the size has none (its times are owed,
     see "Times").
  3. No block becomes written (MAPPED) before the bios that fill it completed
     and were made durable; a failed request converts nothing and leaves the
     size alone (its UNWRITTEN blocks stay allocated, reading as zeros).
  4. After a write, the cache holds the bytes the device holds for the range;
     before a read, the cache's dirty blocks of the range are on the device.
  5. Errors of the I/O (EIO, a short completion, ENOSPC, EROFS) reach the
     caller (raised, or the Future's exception) as OSError with their errno;
     misuse of the call (alignment, bad arguments) raises at once.
  6. The fast paths keep 1, 4 and 5: the range lock is taken before the
     iomap_begin and released after the I/O ended (failed or not), the
     cache's dirty blocks of the extent are written back before a read and
     take the written bytes after a write, and a thread never waits for a
     range lock while it holds another.
  7. Owed times (``_owed``) only ever belong to an inode whose record in memory
     differs from the media in mtime and ctime alone -- or in nothing, once
     another transaction of the inode committed its record: such an entry is
     stale, dropped by ``sync_times`` without a transaction and owed anew by the
     next ``touch`` past the interval (``_committed``); they are committed before
     the inode can leave the inode cache (the last File's close) or the mount
     ends.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures._base import FINISHED, PENDING, RUNNING
from typing import TYPE_CHECKING

import numpy as np

from daxfs.block.bio import SECTOR_SHIFT, Bio, BioFlags, BioOp
from daxfs.block.cache import BlockCache
from daxfs.block.cache import _named as _saying
from daxfs.block.file import misaligned
from daxfs.block.future import _LOCK as _FUTURE_LOCK
from daxfs.block.future import FutureWaiter, LeanFuture
from daxfs.errors import FileTooLarge, InvalidArgument, WouldBlock, naming
from daxfs.fs.data import BATCH_EXTENTS, MAX_FILE_SIZE, MAX_IO, DataPath
from daxfs.fs.extmap import Extent
from daxfs.fs.inode import Inode, now_ns
from daxfs.fs.layout import BLOCK_SHIFT, BLOCK_SIZE, EXTENT_UNWRITTEN
from daxfs.fs.rangelock import RangeToken
from daxfs.iomap import IomapFlags, IomapType

try:  # the copier of a fast overwrite's cache copy (optional, as in daxfs.fs.data)
    from daxfs.fs import _copy
except ImportError:
    _copy = None  # type: ignore[assignment]

_FUTURE_STATES = (PENDING, RUNNING, FINISHED)

try:  # the lean synchronous read in C (optional: ``_lean`` and ``_read_mapped`` in Python)
    from daxfs.fs import _direct
except ImportError:
    _direct = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from typing_extensions import Buffer

    from daxfs.fs._copy import Copier
    from daxfs.fs.filecache import FileCache

_ZEROS = memoryview(bytes(BLOCK_SIZE))

#: A direct overwrite (written blocks only, the size unchanged) sets mtime and ctime in
#: memory and owes their commit (``DirectIO.touch``): the owed times are committed by
#: the first such write at least this many seconds after the first one owed, and by
#: fsync, fdatasync, close, sync and unmount (``DirectIO.sync_times``).  0: every
#: overwrite commits them (as before 2026-11-29; tests).
LAZY_TIMES_SECONDS = 1.0


class TooFragmented(Exception):
    """An out-of-place write whose range or free space is in too many pieces for one
    transaction (``DirectIO.write_out_of_place``); the caller writes another way."""


def _shown(what: str | bytes, inode: Inode) -> str:
    """The name of a request's file in messages: ``what`` (a File's name, decoded only
    here: the fast paths never need it), else the inode number."""
    return os.fsdecode(what) if what else f"inode {inode.ino}"


def aligned_buffer(size: int) -> mmap.mmap:
    """A writable buffer of ``size`` bytes at a page-aligned address (anonymous
    memory), good for direct I/O on any device: ``f.preadinto(aligned_buffer(n), off)``.

    Raises:
        InvalidArgument (EINVAL): ``size`` is not a positive integer.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise InvalidArgument(f"an aligned buffer needs a positive size, not {size!r}")
    return mmap.mmap(-1, size)


def buffer_address(view: memoryview) -> int:
    """The address of the first byte of a non-empty contiguous byte view."""
    address: int = np.frombuffer(view, dtype=np.uint8).__array_interface__["data"][0]
    return address


class DirectIO:
    """The direct-I/O engine of one mount on a block device; see the module docstring.

    Entry points (for ``File`` and for the page cache's misses and writeback):

    ``submit(inode, pos, buffer, write=..., range_held=...) -> Future[int]``
        starts the I/O and returns once its bios are submitted; the Future
        resolves to the bytes done, or to an OSError.  It may wait in the
        caller's thread first, for the range lock: a conflicting request in
        flight (an overlapping write), or a truncate of the range.
    ``read(inode, pos, buffer) -> int`` / ``write(inode, pos, data) -> int``
        the same, synchronous: the completion runs in the caller's thread.

    Arguments: ``pos``, ``len(buffer)`` and the buffer's address aligned to
    ``alignment`` (``check`` raises EINVAL otherwise; ``submit``, ``read`` and
    ``write`` call it).  A read fills ``buffer`` (a writable buffer) and
    returns the bytes before the end of file; a write takes ``data`` (any
    buffer, which must not change until the I/O completes) and returns the
    bytes written (fewer only if space ran out after the first extent).

    Locks: the caller must NOT hold ``inode.lock`` for ``submit`` (a
    completion worker takes it) -- ``read`` and ``write`` allow it (an RLock;
    their completion runs in the caller).  With ``range_held=True`` the caller
    already holds a range lock covering the request (exclusive for a write),
    e.g. the page cache writing back under a truncate's lock: the engine then
    takes no range lock of its own.
    """

    def __init__(self, data: DataPath, cache: BlockCache) -> None:
        self.data = data
        self.cache = cache
        self.bdev = cache.bdev
        #: the reaper of the device's asynchronous C path, if any (the file device's
        #: ``_uring.BioRing``): a lean read's Future waited for on it reaps nested
        aio = getattr(self.bdev, "_aio", None)
        self._waiter: FutureWaiter | None = aio
        if aio is not None:
            # a thread waiting for a bio of the ring may end a lean read itself
            # (``_lean_read_end`` neither waits nor blocks: BioRing, invariant B5)
            aio.end_anywhere(_lean_read_end)
        #: the alignment of offsets, lengths and buffer addresses (logical block size)
        self.alignment = self.bdev.limits.logical_block_size
        self._worker: ThreadPoolExecutor | None = None
        self._worker_lock = threading.Lock()
        #: requests started, completed, and bios submitted (tests, info)
        self.stats = {
            "reads": 0,
            "writes": 0,
            "bios": 0,
            "zero_bios": 0,
            "failed": 0,
            "mapped_reads": 0,  # reads done by ``_read_mapped`` or ``submit_read_lean``
            "lean_submits": 0,  # of them, ``submit_read_lean``'s (Futures)
            "mapped_writes": 0,  # synchronous overwrites done by ``_write_mapped``
            "times_owed": 0,  # writes that left mtime/ctime owed, not committed
            "times_commits": 0,  # transactions that committed owed times alone
            "lean_posted": 0,  # lean reads whose end went to the worker (inode.lock busy)
            "cow_writes": 0,  # out-of-place writes (the page cache's write-back)
        }
        #: inodes whose mtime/ctime in memory are newer than on the media (a direct
        #: overwrite set them; ``sync_times`` commits them): ino -> (Inode, since
        #: when, time.monotonic()).  An entry changes under its inode's lock.
        self._owed: dict[int, tuple[Inode, float]] = {}
        #: copies a fast overwrite's bytes into the cache on another core while the
        #: device writes them (``_cache_copy``); made on first use, one job at a time
        self._copier: Copier | None = None
        self._copier_lock = threading.Lock()
        self._copier_tried = False
        #: the page cache of this mount's files over this engine (daxfs.fs.filecache),
        #: made by the first File that needs it; None until then, or on a mount that
        #: caches whole (a BlockCache)
        self.files: FileCache | None = None
        #: the lean read in C (``_direct.LeanRead``), or None: the Python path
        self._lean_c = self._make_lean_read()
        #: the same, set up for the lean ``submit_read`` too (the device's BioRing and
        #: the C end ``_direct.lean_end``), or None: its steps in Python, the reference
        self._lean_submit = self._make_lean_submit(aio)

    # -- checks -------------------------------------------------------------------------

    def check(self, pos: int, view: memoryview, what: str) -> None:
        """Raise EINVAL unless ``pos``, ``len(view)`` and ``view``'s address are aligned.

        Raises:
            InvalidArgument (EINVAL): naming ``what`` (the path), the value and
                the alignment, and the fallback.
        """
        align = self.alignment
        n = len(view)
        bad = None
        if pos % align:
            bad = f"offset {pos}"
        elif n % align:
            bad = f"length {n}"
        elif n and buffer_address(view) % align:
            bad = f"buffer address {buffer_address(view):#x}"
        if bad is not None:
            raise InvalidArgument(
                f"direct I/O on {what}: {bad} is not a multiple of the device's logical "
                f"block size ({align} bytes); open it without direct=True for unaligned I/O"
            )

    def _plain(self, pos: int, buffer: Buffer, *, into: bool) -> memoryview | None:
        """The fast paths' test of their arguments: ``buffer`` as a memoryview when
        ``pos`` is a non-negative int and the buffer a non-empty, one-dimensional
        byte buffer whose address, length and ``pos`` are aligned (and, ``into``: a
        read's target, writable); else None -- the request path then checks and
        raises what the arguments call for."""
        if type(pos) is not int or pos < 0:
            return None
        if type(buffer) is memoryview:
            view = buffer
        else:
            try:
                view = memoryview(buffer)
            except TypeError:  # not a buffer: the caller's checks say so
                return None
        n = len(view)
        align = self.alignment
        if (
            not n
            or (pos | n) & (align - 1)
            or (into and view.readonly)
            or view.ndim != 1
            or view.format != "B"
            or misaligned([view], align)
        ):
            return None
        return view

    # -- entry points -------------------------------------------------------------------

    def submit(
        self,
        inode: Inode,
        pos: int,
        buffer: Buffer,
        *,
        write: bool,
        range_held: bool = False,
        append: bool = False,
        what: str | bytes = "",
    ) -> Future[int]:
        """Start a direct read into (or write from) ``buffer`` at file byte ``pos``.

        Caller must not hold ``inode.lock``.  See the class docstring.

        Raises:
            InvalidArgument (EINVAL): unaligned (checked first), or a read into a
                read-only buffer.
            Everything else (EIO, ENOSPC, EFBIG, EBUSY, ...) is the Future's exception.
        """
        req = self._request(inode, pos, buffer, write, range_held, what, append)
        future: Future[int] = Future()
        req.future = future
        try:
            req.start()
        except BaseException as exc:
            if not isinstance(exc, Exception):
                raise
            future.set_exception(exc)
            return future
        req.arm(self._post)
        return future

    def read(
        self, inode: Inode, pos: int, buffer: Buffer, *, what: str | bytes = "", fast: bool = True
    ) -> int:
        """Direct read, synchronous; see the class docstring.  ``fast=False``: the
        caller tried ``read_fast`` already (it returned None).

        Raises:
            InvalidArgument (EINVAL): unaligned; OSError of the device (EIO naming
                the sector), IOFailure for a short completion.
        """
        if fast:
            got = self._read_mapped(inode, pos, buffer)
            if got is not None:
                return got
        return self._run(self._request(inode, pos, buffer, False, False, what))

    def _make_lean_read(self) -> _direct.LeanRead | None:
        """The C lean read for this mount, where it can serve: the extension built,
        the device's C fast path (``_uring.Fast``: a file device on io_uring), and
        a cache whose write-back test is ``BlockCache``'s own (the C call does it
        inline); else None (the Python path, ``_read_mapped``'s reference)."""
        fast = getattr(self.bdev, "_fast", None)
        cache_type = type(self.cache)
        if (
            _direct is None
            or fast is None
            or cache_type.write_back is not BlockCache.write_back
            or cache_type._nothing_dirty_in is not BlockCache._nothing_dirty_in
        ):
            return None
        return _direct.LeanRead(
            Extent,
            RangeToken,
            self.data.mapped_ranges._entries,
            self.cache,
            fast,
            self.bdev.fd,  # type: ignore[attr-defined]
            self.stats,
            self.alignment,
            BLOCK_SHIFT,
            EXTENT_UNWRITTEN,
        )

    def _make_lean_submit(self, aio: object) -> _direct.LeanRead | None:
        """The C lean read set up for ``submit_read_lean`` (``LeanRead.submit``, its
        bios ended by ``_direct.lean_end``) where the C lean read serves and the
        device has a BioRing; else None."""
        lean = self._lean_c
        set_submit = getattr(lean, "set_submit", None)  # (a stand-in may have none)
        if (
            set_submit is None
            or aio is None
            or _LEAN_END is None
            or _lean_read_end is not _LEAN_PY_END  # (replaced: its steps then run)
        ):
            return None
        set_submit(self, self.bdev, aio, Bio, LeanFuture, BioOp.READ, BioFlags.NONE)
        aio.end_anywhere(_LEAN_END)  # type: ignore[attr-defined]
        return lean

    def _read_mapped(self, inode: Inode, pos: int, buffer: Buffer) -> int | None:
        """``_read_mapped_general``'s common case in fewer steps (a QD1 4 KiB read
        spent more time here than in the device): ``_lean`` locks and maps it under
        ONE ``inode.lock``; the same I/O and release as ``_read_mapped_general``,
        which takes every other case.  With the C lean read (``_lean_c``, on a file
        device on io_uring) all of it is one call of ``LeanRead.read``, which does
        these steps on the same objects and declines (None, nothing held) where
        ``_lean`` might decline; one that fell short comes back with its range held
        (``_lean_finish``).

        Raises:
            as ``_read_mapped_general``.
        """
        lean_c = self._lean_c
        if lean_c is not None:
            got = lean_c.read(inode, pos, buffer)
            if type(got) is int:
                return got
            if got is not None:
                return self._lean_finish(inode, buffer, *got)
        view = self._plain(pos, buffer, into=True)
        if view is None:
            return None
        lean = self._lean(inode, pos, view)
        if lean is None:
            return self._read_mapped_general(inode, pos, view)
        token, addr, length, result = lean
        n = len(view)
        error: OSError | None = None
        try:
            self.cache.write_back(addr, length)
            self.bdev.readinto(addr, view if length == n else view[:length])
        except OSError as exc:
            error = exc
        return self._lean_end(inode, token, view, error, length, result)

    def _lean_finish(
        self,
        inode: Inode,
        buffer: Buffer,
        token: RangeToken,
        got: tuple[int, int] | None,
        addr: int,
        length: int,
        result: int,
    ) -> int:
        """End a C lean read whose I/O fell short or failed (``got``: the device fast
        path's (res, size)) or was declined by the device (None): finished as the
        device finishes it (``_fast_failed``: the rest continued, or the error
        named) or read by ``bdev.readinto``, with the range still held; then the
        range released.

        Raises:
            OSError of the device (EIO naming the sector), IOFailure (short).
        """
        view = memoryview(buffer).cast("B")
        target = view if length == len(view) else view[:length]
        error: OSError | None = None
        try:
            if got is None:
                self.bdev.readinto(addr, target)
            else:
                self.bdev._fast_failed(False, addr, target, got, 0)  # type: ignore[attr-defined]
        except OSError as exc:
            error = exc
        return self._lean_end(inode, token, view, error, length, result)

    def _lean_end(
        self,
        inode: Inode,
        token: RangeToken,
        view: memoryview,
        error: OSError | None,
        length: int,
        result: int,
    ) -> int:
        """The end of a lean read, after its I/O: the range released, then the I/O's
        ``error`` raised, or the bytes past the end of file (``result`` up to
        ``length``) zeroed and ``result`` returned."""
        with inode.lock:
            inode.layouts.ranges.unlock(token)  # type: ignore[union-attr]
        if error is not None:
            self.stats["failed"] += 1
            raise error
        if result < length:
            view[result:length] = bytes(length - result)
        return result

    def _lean(
        self, inode: Inode, pos: int, view: memoryview
    ) -> tuple[RangeToken, int, int, int] | None:
        """The lean reads' lock and map (``_read_mapped``, ``submit_read``): when the
        inode has had direct I/O (its range lock exists), the aligned range starts
        before the end of file and lies in the extent cache's written extent
        (``inode.xcache``: what ``DataPath.iomap_begin`` would return), no mapping
        covers the file, and the shared range lock is granted at once -- then,
        under ONE ``inode.lock``, that lock straight from the RangeLock (the range
        ``DataPath.lock_range`` would lock: whole blocks, ``pos`` below the size),
        no Iomap object: (token, device address, bytes to read, bytes before the
        end of file), the read counted.  Else None, nothing held (the caller takes
        a general path, which waits for a held range)."""
        n = len(view)
        align = self.alignment
        end = pos + n
        token = None
        with inode.lock:  # (every fallback after it is released: the general paths
            # wait, and do their I/O, without holding inode.lock)
            layouts = inode.layouts
            size = inode.rec.size
            ext = inode.xcache
            if layouts is None or pos >= size or type(ext) is not Extent:
                return None
            result = n if end <= size else size - pos
            length = n if end <= size else -(-result // align) * align
            if (
                ext.flags & EXTENT_UNWRITTEN
                or not ext.lblk <= pos >> BLOCK_SHIFT
                or (pos + length - 1) >> BLOCK_SHIFT >= ext.lblk + ext.length
                or inode.mappings
                or self.data.mapped_ranges.ranges(inode.ino)
            ):
                return None
            # DataPath.lock_range's range for pos < size, without waiting: a write or
            # truncate that holds or waits for it -> the general path
            try:
                token = layouts.ranges.lock(
                    pos & -BLOCK_SIZE, (end + BLOCK_SIZE - 1) & -BLOCK_SIZE, False, nowait=True
                )
            except WouldBlock:
                return None
            stats = self.stats
            stats["reads"] += 1
            stats["bios"] += 1
            stats["mapped_reads"] += 1
        return token, ((ext.pblk - ext.lblk) << BLOCK_SHIFT) + pos, length, result

    def submit_read_lean(
        self,
        inode: Inode,
        pos: int,
        buffer: Buffer,
        path: str,
        inflight: set[Future[int]],
        guard: threading.Lock,
    ) -> Future[int] | None:
        """``submit``'s common read (``File.submit_read`` calls it before its own
        checks) without a request object: what ``_lean`` takes (the inode's range
        lock granted at once, ONE written extent from the extent cache), the
        cache's dirty blocks of the range written back, then ONE plain READ bio
        into the caller's buffer -- on io_uring the device's C path
        (``_uring.BioRing``: submitted and ended in C) -- whose ``end_io``
        (``_lean_read_end``) releases the range lock and resolves the Future
        (``LeanFuture``: no Condition of its own); errors named with ``path`` as
        ``File``'s futures name them.  The Future is in ``inflight`` (the File's,
        which ``close`` waits for; ``guard`` is its lock) until it is resolved.
        None when the read is anything else (then call ``submit``: the request
        path, the reference).

        With the C lean read on an io_uring device (``_lean_submit``) all of it is
        one call of ``LeanRead.submit``: the same steps on the same objects, the
        bio's end ``_direct.lean_end`` (``_lean_read_end``'s common case in C);
        these Python steps are its reference.

        Raises:
            nothing: the device's errors, and a write-back's, are the Future's.
        """
        lean_c = self._lean_submit
        if lean_c is not None:
            return lean_c.submit(inode, pos, buffer, path, inflight, guard)  # type: ignore[no-any-return]
        view = self._plain(pos, buffer, into=True)
        if view is None:
            return None
        lean = self._lean(inode, pos, view)
        if lean is None:
            return None
        token, addr, length, result = lean
        self.stats["lean_submits"] += 1
        future: LeanFuture[int] = LeanFuture()
        with guard:
            inflight.add(future)
        state = (self, inode, token, future, view, result, length, path, inflight, guard)
        try:
            self.cache.write_back(addr, length)
            bio = Bio(
                BioOp.READ,
                addr >> SECTOR_SHIFT,
                [view if length == len(view) else view[:length]],
                end_io=_lean_read_end,
                private=state,
            )
            self.bdev.submit_bio(bio)
        except Exception as exc:  # nothing in flight: the range back, the error named
            _lean_read_done(state, exc)
        else:
            # the ring that took the bio, if one did (BioRing sets the bio's waiter): its
            # result() reaps for it; a bio that went the bio path has none to ask
            future._waiter = bio._waiter
        return future

    def read_fast(self, inode: Inode, pos: int, buffer: Buffer) -> int | None:
        """``read``'s fast path alone (``File.preadinto`` calls it before its own
        checks): the bytes read, or None when the read is not a fast one -- then
        call ``read``, which raises what the arguments call for.

        Raises:
            as ``read``, for a read the fast path does.
        """
        return self._read_mapped(inode, pos, buffer)

    def _read_mapped_general(self, inode: Inode, pos: int, buffer: Buffer) -> int | None:
        """The fast path of a synchronous read: an aligned range that lies in ONE
        written (MAPPED) extent of a file with no mapping.  The range lock taken
        (shared) and the extent looked up (iomap_begin: the extent cache) under one
        ``inode.lock``; then, without it, the cache's dirty blocks of the extent
        written back and ONE ``BlockDevice.readinto`` (on io_uring: the device's
        inline read, one system call, no Bio); the range lock released.  The same
        guarantees as the request path (invariants 1, 4, 5): no block of the range
        can be freed while it is read, the cache's dirty data reaches the disk
        first, and the device's errors reach the caller named.  None when the
        request is anything else (a hole, unwritten or several extents, a mapping,
        unaligned or misused arguments): the request path does it, with its errors.

        Raises:
            OSError of the device (EIO naming the sector), IOFailure (short), Busy /
            WouldBlock never (a shared lock waits, as the request path's).
        """
        view = memoryview(buffer)
        n = len(view)
        align = self.alignment
        if (
            type(pos) is not int
            or pos < 0
            or not n
            or (pos | n) & (align - 1)
            or view.readonly
            or view.ndim != 1
            or view.format != "B"
            or misaligned([view], align)
        ):
            return None
        data = self.data
        with inode.lock:
            token = data.lock_range(inode, pos, pos + n, exclusive=False, create=True)
            size = inode.rec.size
            result = min(n, size - pos)
            length = min(n, -(-result // align) * align)
            iomap = None
            if result > 0 and not inode.mappings and not data.mapped_ranges.ranges(inode.ino):
                try:
                    iomap = data.iomap_begin(inode, pos, length, IomapFlags.DIRECT)
                except BaseException:  # a damaged map (EUCLEAN), EIO: the range goes back
                    data.unlock_range(inode, token)
                    raise
            if iomap is None or iomap.type is not IomapType.MAPPED or iomap.end < pos + length:
                data.unlock_range(inode, token)
                return None
            stats = self.stats
            stats["reads"] += 1
            stats["bios"] += 1
            stats["mapped_reads"] += 1
        addr = iomap.addr_of(pos)
        error: OSError | None = None
        try:
            self.cache.write_back(addr, length)
            self.bdev.readinto(addr, view[:length] if length < n else view)
        except OSError as exc:
            error = exc
        with inode.lock:
            data.unlock_range(inode, token)
        if error is not None:
            self.stats["failed"] += 1
            raise error
        if result < length:
            view[result:length] = bytes(length - result)
        return result

    def read_many(
        self, inode: Inode, items: list[tuple[int, memoryview]], *, what: str | bytes = ""
    ) -> list[int]:
        """Many synchronous direct reads in one call (``File.preadinto_many``): the
        bytes read of each ``(pos, view)``.  Those inside one written extent are
        locked and mapped under one ``inode.lock`` -- ONE shared range lock over
        all of them, or, when a write or truncate holds part of that span, one per
        item (never waiting: an item whose range is held goes alone, later) --
        read in ONE ``BlockDevice.readinto_many``
        (on io_uring: the device's queue depth in flight, submitted and reaped in
        C), and unlocked together; every other item, after those, as ``read``.

        Raises:
            InvalidArgument (EINVAL): an unaligned item (before any I/O).
            OSError of the device (the first failed item's, named), IOFailure
            (short); items not yet read when it is raised stay unread.
        """
        mask = self.alignment - 1
        if any(pos & mask for pos, _ in items) or misaligned([v for _, v in items], mask + 1):
            shown = _shown(what, inode)
            for pos, view in items:  # the first bad item, named
                self.check(pos, view, shown)
        data = self.data
        results: list[int] = [0] * len(items)
        rest: list[int] = []
        plan: list[tuple[int, int, int, int]] = []
        tokens: list[RangeToken | None] = []
        with inode.lock:
            simple: list[int] = []
            mapped_file = bool(inode.mappings or data.mapped_ranges.ranges(inode.ino))
            for i, (_, view) in enumerate(items):
                (rest if mapped_file or not len(view) or view.readonly else simple).append(i)
            try:
                plan = self._plan_mapped(inode, items, simple, rest, tokens)
            except BaseException:  # a damaged map (EUCLEAN), EIO: every range goes back
                for token in tokens:
                    data.unlock_range(inode, token)
                raise
            stats = self.stats
            stats["reads"] += len(plan)
            stats["bios"] += len(plan)
            stats["mapped_reads"] += len(plan)
        rest.sort()
        try:
            if plan:  # ONE write-back of the span (dirty blocks between items go too:
                # a write-back of flushed blocks is never early, as on pmem)
                lo = min(addr for _, addr, _, _ in plan)
                hi = max(addr + length for _, addr, length, _ in plan)
                self.cache.write_back(lo, hi - lo)
            self.bdev.readinto_many(
                [
                    (addr, view if length == len(view) else view[:length])
                    for i, addr, length, _ in plan
                    for view in (items[i][1],)
                ]
            )
        except OSError:
            self.stats["failed"] += 1
            raise
        finally:
            with inode.lock:
                for token in tokens:
                    data.unlock_range(inode, token)
        for i, _, length, result in plan:
            if result < length:
                items[i][1][result:length] = bytes(length - result)
            results[i] = result
        for i in rest:
            pos, view = items[i]
            results[i] = self.read(inode, pos, view, what=what)
        return results

    def _plan_mapped(
        self,
        inode: Inode,
        items: list[tuple[int, memoryview]],
        simple: list[int],
        rest: list[int],
        tokens: list[RangeToken | None],
    ) -> list[tuple[int, int, int, int]]:
        """``read_many``'s plan of the ``simple`` items inside written extents:
        (index, device offset, bytes to read, bytes before the end of file) each;
        the range locks it takes are appended to ``tokens``, and items it cannot
        plan (held range, hole, past the end) to ``rest``.  Caller must hold
        ``inode.lock``, and releases ``tokens`` also when this raises."""
        assert inode.lock._is_owned()  # type: ignore[attr-defined]
        data = self.data
        align = self.alignment
        plan: list[tuple[int, int, int, int]] = []
        span: RangeToken | None = None
        if simple:  # the cheap form: ONE shared lock over every item
            lo = min(items[i][0] for i in simple)
            hi = max(items[i][0] + len(items[i][1]) for i in simple)
            with contextlib.suppress(OSError):  # a write or truncate inside: per item
                span = data.lock_range(inode, lo, hi, exclusive=False, create=True, nowait=True)
                tokens.append(span)
        # the last MAPPED extent looked up: the map cannot change while inode.lock is
        # held (no lock here waits), so items inside it need no lookup of their own
        lo_ext = hi_ext = base = 0
        size = inode.rec.size
        for i in simple:
            pos, view = items[i]
            n = len(view)
            if span is None:
                try:
                    token = data.lock_range(
                        inode, pos, pos + n, exclusive=False, create=True, nowait=True
                    )
                except OSError:  # a write or truncate waits for the range: alone, later
                    rest.append(i)
                    continue
                tokens.append(token)
            if pos + n <= size:  # the usual case: all before the end of file
                result = length = n
            else:
                result = size - pos
                if result <= 0:  # at or past the end of file
                    rest.append(i)
                    continue
                length = min(n, -(-result // align) * align)
            if not (lo_ext <= pos and pos + length <= hi_ext):  # not the last extent's
                iomap = data.iomap_begin(inode, pos, length, IomapFlags.DIRECT)
                if iomap.type is not IomapType.MAPPED:
                    rest.append(i)  # (its own lock, if any, goes with the others)
                    continue
                lo_ext, hi_ext, base = iomap.offset, iomap.end, iomap.addr
                if pos + length > hi_ext:
                    rest.append(i)
                    continue
            plan.append((i, base + (pos - lo_ext), length, result))
        return plan

    def write(
        self,
        inode: Inode,
        pos: int,
        data: Buffer,
        *,
        append: bool = False,
        what: str | bytes = "",
    ) -> int:
        """Direct write, synchronous: returns when the data is durable and the
        iomap_end committed.  ``append`` (O_APPEND): at the end of file, taken under
        the inode lock when the range is locked (``pos`` is ignored).

        Raises:
            InvalidArgument (EINVAL): unaligned.  FileTooLarge (EFBIG): ``pos`` at
            or past the maximum file size.  NoSpace (ENOSPC): no block for the
            first extent (nothing written).  Busy (EBUSY): pins outlived
            layout_timeout.  OSError of the device (EIO), IOFailure (short).
            ReadOnly (EROFS) after a journal failure.
        """
        if not append:
            done = self._write_mapped(inode, pos, data)
            if done is not None:
                return done
        return self._run(self._request(inode, pos, data, True, False, what, append))

    def _write_mapped(self, inode: Inode, pos: int, data: Buffer) -> int | None:
        """The fast path of a synchronous write: an aligned overwrite inside ONE
        written (MAPPED) extent, below the end of file.  Under one ``inode.lock``:
        the range lock (exclusive), the pins broken, the size checked and the
        extent looked up (iomap_begin: the extent cache); then, without it, ONE
        ``BlockDevice.write`` with FUA (on io_uring: the device's inline write,
        RWF_DSYNC, one system call, no Bio) and the cache told the new bytes
        (``BlockCache.invalidate``); under ``inode.lock`` again mtime and ctime
        set (``touch``: owed, committed lazily -- nothing else of the inode
        changes, so no transaction is needed for the data to be found after a
        crash, as Linux's O_DIRECT|O_DSYNC overwrite commits nothing) and the
        range released.  None when the request is anything else (a hole,
        unwritten or several extents, past the end of file, unaligned or misused
        arguments, a failed journal): the request path does it, with its errors.

        Raises:
            OSError of the device (EIO naming the sector), IOFailure (short): the
            range may hold any mix of old and new logical blocks (re-read into
            the cache), and the times are not touched.  Busy (EBUSY): pins
            outlived layout_timeout.  OSError of a commit of owed times (EIO,
            EROFS): the data is durable.
        """
        view = self._plain(pos, data, into=False)
        if view is None or len(view) > MAX_IO:
            return None
        n = len(view)
        engine_data = self.data
        end = pos + n
        with inode.lock:
            if end > inode.rec.size or engine_data.journal.failed is not None:
                return None
            token = engine_data.lock_range(inode, pos, end, exclusive=True, create=True)
            try:
                engine_data._break(inode, pos, end, nowait=False)
                iomap = None
                if end <= inode.rec.size:  # (the size may have changed while it waited)
                    iomap = engine_data.iomap_begin(inode, pos, n, IomapFlags.DIRECT)
            except BaseException:  # Busy, a damaged map (EUCLEAN): the range goes back
                engine_data.unlock_range(inode, token)
                raise
            if iomap is None or iomap.type is not IomapType.MAPPED or iomap.end < end:
                engine_data.unlock_range(inode, token)
                return None
            stats = self.stats
            stats["writes"] += 1
            stats["bios"] += 1
            stats["mapped_writes"] += 1
        addr = iomap.addr_of(pos)
        cache = self.cache
        error: OSError | None = None
        copier = self._cache_copy(addr, view)
        try:
            self.bdev.write(addr, view, fua=True)  # invariant 2: durable on return
        except OSError as exc:
            error = exc
        finally:
            copied = copier is not None and self._cache_copied(copier)
        try:
            if error is None and not copied:
                cache.invalidate(addr, n, view)  # invariant 4
        except OSError as exc:
            error = exc
        if error is not None:
            with contextlib.suppress(OSError):  # the disk may hold some of it: re-read
                cache.invalidate(addr, n)
        with inode.lock:
            inode.data_changed()  # the bytes are on the device (or some): the page cache's
            try:  # stamp goes (daxfs.fs.filecache, invariant 4), failed or not
                if error is None:
                    self.touch(inode)
            finally:
                engine_data.unlock_range(inode, token)
        if error is not None:
            self.stats["failed"] += 1
            raise error
        return n

    def _cache_copy(self, addr: int, view: memoryview) -> Copier | None:
        """Start copying ``view`` into the cache at device byte ``addr`` on another core
        (daxfs.fs._copy: a C worker thread, no GIL) while this thread waits for the
        device: what ``BlockCache.invalidate(addr, n, view)`` does after the write,
        taken off the write's critical path (it was 25% of a 1 MiB overwrite).  The
        Copier, to be given to ``_cache_copied``; None (copy afterwards with
        ``invalidate``) when the cache is not a plain ``BlockCache`` (a bounded one
        keeps file data in its page cache), without the extension, or while another
        thread's copy is pending.

        Why a store into the cache's memory is enough: it is ``invalidate``'s copy,
        through the Device interface's ``direct_access`` view (the store's), not
        flushed, so never written back -- the disk gets the same bytes from the
        write; the caller holds the range exclusively, so no buffered write, direct
        I/O or block move of the range runs meanwhile.  Readers of the cache may
        see the new bytes before the write completes (as a read concurrent with a
        write may); after a failed write the range is read back from the disk.
        """
        copier = self._copier
        if copier is None:
            if self._copier_tried:
                return None
            copier = self._make_copier()
            if copier is None:
                return None
        if not self._copier_lock.acquire(blocking=False):
            return None
        try:
            copier.start(addr, view)
        except BaseException:
            self._copier_lock.release()
            raise
        return copier

    def _make_copier(self) -> Copier | None:
        with self._copier_lock:
            if not self._copier_tried:
                self._copier_tried = True
                view = self.data.store.view
                plain = type(self.cache) is BlockCache and not view.readonly
                if plain and _copy is not None:
                    self._copier = _copy.Copier(view, "none")
            return self._copier

    def _cache_copied(self, copier: Copier) -> bool:
        """Join ``_cache_copy``'s copy; False if it failed (copy again, synchronously)."""
        try:
            copier.join()
        except OSError:
            return False
        finally:
            self._copier_lock.release()
        return True

    # -- the times of direct overwrites --------------------------------------------------

    def touch(self, inode: Inode) -> None:
        """A direct overwrite of ``inode`` completed (its data durable, its blocks
        written, the size unchanged): set mtime and ctime to now, in memory, and owe
        their commit -- made here when the first time owed is LAZY_TIMES_SECONDS old,
        else by ``sync_times``.  Caller must hold ``inode.lock``.

        Why owing is enough: nothing the data needs to be found again changes (the
        blocks were written, the size stays), so a crash loses only the new times, as
        after Linux's O_DIRECT|O_DSYNC overwrite (fdatasync does not commit mtime);
        stat shows them at once; every transaction of the inode (its record is
        packed from memory) commits them too.

        Raises:
            OSError of the commit (EIO, EROFS), when it commits.
        """
        assert inode.lock._is_owned()  # type: ignore[attr-defined]
        now = time.monotonic()
        owed = self._owed.get(inode.ino)
        if owed is not None and now - owed[1] >= LAZY_TIMES_SECONDS and self._committed(inode):
            owed = None  # another transaction committed them: owed anew, from now
        rec = inode.rec
        rec.mtime_ns = rec.ctime_ns = now_ns()
        if owed is None:
            owed = self._owed[inode.ino] = (inode, now)
        if now - owed[1] >= LAZY_TIMES_SECONDS:
            self.sync_times(inode)
        else:
            self.stats["times_owed"] += 1

    def sync_times(self, inode: Inode) -> None:
        """Commit the times ``touch`` left owed for ``inode`` (one transaction of its
        record as memory holds it); nothing when none are owed, or when the inode
        has no link left (it is freed at its last close).  Caller must hold
        ``inode.lock``.

        Nothing either when another transaction of the inode committed them since
        (``_committed``): the entry is dropped.

        Raises:
            OSError of the commit (EIO; EROFS after a journal failure): the times
            stay owed in memory (an aborted transaction re-reads the record: then
            the media's times, those of the last commit, come back).
        """
        if inode.ino not in self._owed:
            return
        if inode.rec.nlink == 0 or self._committed(inode):
            self._owed.pop(inode.ino, None)
            return
        data = self.data
        with data.journal.begin() as tx:
            data.itable.dirty(tx, inode)
        self._owed.pop(inode.ino, None)
        self.stats["times_commits"] += 1

    def _committed(self, inode: Inode) -> bool:
        """Are ``inode``'s mtime and ctime on the media as in memory?  Every transaction
        of the inode packs its record from memory, so one that committed since a
        ``touch`` (chmod, a write through the request path, ...) committed the times
        it owed: an entry of ``_owed`` is then stale -- committing it again would cost
        a transaction for nothing, and its ``since`` would make the next overwrite
        commit at once.  (False when the record cannot be read: the commit then says
        why.)  Caller holds ``inode.lock``."""
        itable = self.data.itable
        try:
            media = itable.read_record(itable.store, inode.ino)
        except OSError:
            return False
        rec = inode.rec
        return media.mtime_ns == rec.mtime_ns and media.ctime_ns == rec.ctime_ns

    def sync_all_times(self) -> None:
        """``sync_times`` of every inode that owes times (FileSystem.sync, unmount).

        Raises:
            OSError of a commit: the first; the others are still tried.
        """
        error: OSError | None = None
        for inode, _ in list(self._owed.values()):
            try:
                with inode.lock:
                    self.sync_times(inode)
            except OSError as exc:
                error = error or exc
        if error is not None:
            raise error

    # -- the out-of-place write: the page cache's write-back (daxfs.fs.filecache) --------

    def write_out_of_place(
        self, inode: Inode, pos: int, views: list[memoryview], size: int, *, what: str = ""
    ) -> None:
        """Write ``views`` (consecutive file bytes from ``pos``) to NEW blocks and swing
        the file's map to them, atomically: the buffered write's write-back (Linux
        XFS's out-of-place atomic write).  In ONE transaction:

            alloc       ``count`` new blocks (free on the media: nothing committed
                        points at them, so writing them changes nothing yet)
            bios        WRITE bios from ``views`` to them -- one bio: FUA; more:
                        a FLUSH after all ended -- then the cache told the bytes
                        (``BlockCache.invalidate``: a stale copy of those blocks,
                        metadata once, never shows)
            map         ``BlockMaps.replace`` of file blocks ``[pos, pos+n)``:
                        holes, UNWRITTEN and written extents alike; the old
                        blocks freed; size = max(size, ``size``); mtime, ctime
            commit      -- COMMIT POINT: before it a crash leaves the file as it
                        was (the new blocks free again), after it as written

        ``pos`` and the total length must be multiples of the block size, and the
        views' addresses and lengths of the logical block size (the page cache's
        slots are).  Caller must hold ``inode.lock`` and an exclusive range lock
        covering the blocks (``DataPath.lock_range``); the file must have no
        mapping and no pin (the page cache routes such a file elsewhere).

        Raises:
            NoSpace (ENOSPC): fewer than ``count`` free blocks (the write needs them
                all, even over written blocks); nothing changed.
            TooFragmented: the range or the free space is in more than
                BATCH_EXTENTS pieces (one transaction must stay small); nothing
                changed.
            OSError: a bio or the FLUSH failed (EIO, short: named), or the commit
                (EIO; the journal turns read-only); nothing committed.
            ReadOnly (EROFS): the journal failed before.
        """
        data = self.data
        n = sum(len(v) for v in views)
        assert n, f"an empty out-of-place write at {pos}"
        assert not (pos | n) & (BLOCK_SIZE - 1), f"out-of-place write {pos}+{n}: not blocks"
        assert not inode.mappings, f"inode {inode.ino}: out-of-place write under a mapping"
        first, count = pos >> BLOCK_SHIFT, n >> BLOCK_SHIFT
        with data.journal.begin() as tx:
            if len(data._plan(tx, inode, first, first + count)) > BATCH_EXTENTS:
                raise TooFragmented(f"{_shown(what, inode)}: {count} blocks at {first}")
            runs = data.alloc.alloc(tx, count, goal=data._goal(tx, inode, first))
            if len(runs) > BATCH_EXTENTS:
                raise TooFragmented(f"{_shown(what, inode)}: free space in {len(runs)} runs")
            self._write_runs(runs, views, _shown(what, inode))
            rec = data.itable.dirty(tx, inode)
            new: list[Extent] = []
            lblk = first
            for start, length in runs:
                new.append(Extent(lblk, start, length))
                lblk += length
            for piece in data.maps.replace(tx, inode, first, count, new):
                data.alloc.free(tx, piece.pblk, piece.length)
                rec.blocks -= piece.length
            rec.blocks += count
            rec.size = max(rec.size, size)
            rec.mtime_ns = rec.ctime_ns = now_ns()
            self.stats["cow_writes"] += 1
        # COMMIT POINT passed (the with block's commit); its record packed the times
        self._owed.pop(inode.ino, None)

    def _write_runs(self, runs: list[tuple[int, int]], views: list[memoryview], shown: str) -> None:
        """WRITE bios of ``views`` into block runs ``runs`` (in order), durable when this
        returns (FUA for one bio, else one FLUSH), and the cache told the bytes.

        Raises:
            OSError: a bio or the FLUSH failed, naming ``shown`` and the blocks.
        """
        bios: list[Bio] = []
        placed: list[tuple[int, memoryview]] = []
        it = iter(views)
        cur = memoryview(b"")
        for start, length in runs:
            addr = start << BLOCK_SHIFT
            want = length << BLOCK_SHIFT
            segments: list[memoryview] = []
            while want:
                if not len(cur):
                    cur = next(it)
                take = min(want, len(cur))
                segments.append(cur[:take])
                placed.append((addr + (length << BLOCK_SHIFT) - want, cur[:take]))
                cur = cur[take:]
                want -= take
            bios.append(Bio(BioOp.WRITE, addr >> SECTOR_SHIFT, segments))
        if len(bios) == 1:
            bios[0].flags = BioFlags.FUA
        bdev = self.bdev
        try:
            with bdev.plug():
                for bio in bios:
                    bdev.submit_bio(bio)
            error: OSError | None = None
            for bio in bios:  # all of them, even after an error: they hold the views
                try:
                    bio.wait()
                except OSError as exc:
                    error = error or exc
            if error is not None:
                raise error
            if len(bios) > 1:
                bdev.flush()
        except OSError as exc:
            what = f"writing {sum(n for _, n in runs)} new blocks of {shown}"
            raise _saying(exc, what) from exc
        self.stats["bios"] += len(bios)
        for addr, view in placed:
            self.cache.invalidate(addr, len(view), view)

    def close(self) -> None:
        """Wait for the completion worker's work and stop it, then commit the times
        still owed (at unmount: every File closed, so normally none are).

        Raises:
            OSError of a commit of owed times (the worker is stopped all the same).
        """
        with self._worker_lock:
            worker, self._worker = self._worker, None
        if worker is not None:
            worker.shutdown(wait=True)
        with self._copier_lock:
            copier, self._copier = self._copier, None
            self._copier_tried = True
        if copier is not None:
            copier.close()
        self.sync_all_times()

    # -- internals ----------------------------------------------------------------------

    def _request(
        self,
        inode: Inode,
        pos: int,
        buffer: Buffer,
        write: bool,
        held: bool,
        what: str | bytes,
        append: bool = False,
    ) -> _Request:
        view = memoryview(buffer)
        if view.ndim != 1 or view.format != "B":
            view = view.cast("B")
        shown = _shown(what, inode)
        if not write and view.readonly:
            raise InvalidArgument(f"direct read on {shown}: the buffer is read-only")
        self.check(0 if append else pos, view, shown)  # an append's end is checked at start
        req = _Request(self, inode, pos, view, write, held)
        req.append, req.what = append, shown
        return req

    def _run(self, req: _Request) -> int:
        req.start()
        done = threading.Event()
        req.arm(lambda _req: done.set(), poll=True)
        done.wait()
        return req.complete()

    def _post(self, req: _Request) -> None:
        """The last bio of ``req`` ended (any thread): complete it on the worker -- or
        here, for a read whose inode lock is free at once (a read's completion only
        releases its range lock; this thread may be the device's completion thread,
        which must never wait for ``inode.lock``)."""
        lock = req.inode.lock
        if not req.write and lock.acquire(blocking=False):
            try:
                req.complete_future()
            finally:
                lock.release()
            return
        self._worker_run(req.complete_future)

    def _worker_run(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` on the completion worker (made on first need)."""
        with self._worker_lock:
            if self._worker is None:
                self._worker = ThreadPoolExecutor(1, thread_name_prefix="daxfs-dio")
            worker = self._worker
        worker.submit(fn)


_LeanState = tuple[
    DirectIO,
    Inode,
    RangeToken,
    "LeanFuture[int]",
    memoryview,
    int,
    int,
    str,
    "set[Future[int]]",
    threading.Lock,
]


def _lean_read_end(bio: Bio) -> None:
    """The ``end_io`` of a lean read's bio (any thread; on io_uring the device's
    reaper, or a thread that waits for a bio of the device and reaps for it: neither
    may wait for ``inode.lock``): ``_lean_read_done`` here when ``inode.lock`` is free
    at once, else on the engine's worker.  Also on the worker: on a thread that
    holds ``inode.lock`` already (a waiting thread, in its own critical section),
    and a Future with done callbacks anywhere but on the reaper (its caller's code
    runs where a Future is resolved, never inside another thread's wait)."""
    state: _LeanState = bio.private  # type: ignore[assignment]
    bio.private = None
    status = bio.status
    lock = state[1].lock
    if (
        not lock._is_owned()  # type: ignore[attr-defined]
        and (
            not state[3]._cbs
            or threading.current_thread() is getattr(state[0].bdev, "_reaper", None)
        )
        and lock.acquire(False)
    ):
        try:
            _lean_read_done(state, status)
        finally:
            lock.release()
        return
    engine = state[0]
    engine.stats["lean_posted"] += 1
    engine._worker_run(lambda: _lean_read_done(state, status))


def _lean_read_done(state: _LeanState, status: BaseException | None) -> None:
    """End a lean read (``inode.lock`` is held, or free to take: an RLock): the range
    lock released, bytes past the end of file zeroed, then the Future resolved --
    with ``status`` named with the path -- and taken out of its File's set."""
    engine, inode, token, future, view, result, length, path, inflight, guard = state
    with inode.lock:
        inode.layouts.ranges.unlock(token)  # type: ignore[union-attr]
    if status is None:
        if result < length:
            view[result:length] = bytes(length - result)
        future.set_result(result)
    else:
        engine.stats["failed"] += 1
        future.set_exception(_named(status, path))
    with guard:
        inflight.discard(future)


def _named(exc: BaseException, path: str) -> BaseException:
    """``exc`` as ``daxfs.errors.naming(path)`` raises it (the path in an OSError)."""
    try:
        with naming(path):
            raise exc
    except BaseException as named:
        return named
    raise AssertionError("unreachable")


class _Request:
    """One direct read or write in flight (Linux's struct iomap_dio)."""

    def __init__(
        self, engine: DirectIO, inode: Inode, pos: int, view: memoryview, write: bool, held: bool
    ) -> None:
        self.engine = engine
        self.inode = inode
        self.pos = pos
        self.view = view
        self.write = write
        self.held = held
        self.future: Future[int] | None = None
        #: O_APPEND: ``pos`` is the end of file, taken in ``start`` under the inode lock
        self.append = False
        self.what = ""
        self.token: RangeToken | None = None
        #: bytes the request covers once mapped (a write may be cut short by ENOSPC)
        self.length = 0
        #: a read's result: the bytes before the end of file
        self.result = 0
        #: (device offset, view of the data) of every WRITE bio, for the cache
        self.written: list[tuple[int, memoryview]] = []
        #: (first block, count) of UNWRITTEN blocks this write fills
        self.convert: list[tuple[int, int]] = []
        self.bios: list[Bio] = []
        self._lock = threading.Lock()
        self._left = 0
        self._error: BaseException | None = None
        self._on_done: object = None

    # -- start: lock, map, build bios ----------------------------------------------------

    def start(self) -> None:
        """Lock the range, map it (iomap_begin per extent) and submit the bios.

        Raises:
            what the mapping raises, with nothing locked and nothing in flight.
        """
        engine = self.engine
        data = engine.data
        inode = self.inode
        with inode.lock:
            while True:
                if self.append:  # under the lock: two appenders never share an offset
                    self.pos = inode.rec.size
                    engine.check(self.pos, self.view, self.what)
                n = len(self.view)
                if self.write:
                    if self.pos >= MAX_FILE_SIZE:
                        raise FileTooLarge(
                            f"offset {self.pos} is beyond the maximum file size {MAX_FILE_SIZE}"
                        )
                    n = min(n, MAX_IO, MAX_FILE_SIZE - self.pos)
                end = self.pos + n
                if n and not self.held:
                    self.token = data.lock_range(
                        inode, self.pos, end, exclusive=self.write, create=True
                    )
                    if self.append and inode.rec.size != self.pos:  # it grew while we waited
                        self._unlock()
                        continue
                break
            try:
                pieces = self._map(n)
            except BaseException:
                self._unlock()
                raise
        try:
            self._submit(pieces)
        except BaseException:
            with inode.lock:
                self._unlock()
            raise

    def _map(self, n: int) -> list[tuple[int, int, IomapType, int]]:
        """The extents of the request, ``(file pos, bytes, type, device offset)``.
        Caller holds ``inode.lock`` and the range lock."""
        data = self.engine.data
        inode = self.inode
        pos = self.pos
        flags = IomapFlags.DIRECT
        if self.write:
            engine = self.engine
            engine.stats["writes"] += 1
            flags |= IomapFlags.WRITE
            if n:
                data._break(inode, pos, pos + n, nowait=False)
                data.zero_past_eof(inode, pos)
        else:
            self.engine.stats["reads"] += 1
            size = inode.rec.size
            if pos >= size:
                n = 0
            else:
                align = self.engine.alignment
                self.result = min(n, size - pos)
                n = min(n, -(-self.result // align) * align)
        pieces: list[tuple[int, int, IomapType, int]] = []
        done = 0
        while done < n:
            at = pos + done
            try:
                iomap = data.iomap_begin(inode, at, n - done, flags)
            except Exception:
                if not done:
                    raise
                break  # a short write: what is mapped goes
            length = min(n - done, iomap.end - at)
            addr = iomap.addr_of(at) if iomap.type is not IomapType.HOLE else -1
            pieces.append((at, length, iomap.type, addr))
            done += length
        self.length = done
        return pieces

    def _submit(self, pieces: list[tuple[int, int, IomapType, int]]) -> None:
        cache = self.engine.cache
        inode = self.inode
        bios: list[Bio] = []
        mapped = bool(self.engine.data.mapped_ranges.ranges(inode.ino)) and not self.write
        for at, length, kind, addr in pieces:
            buf = self.view[at - self.pos : at - self.pos + length]
            if not self.write:
                if kind is IomapType.MAPPED:
                    if inode.mappings or mapped:  # stores through a mapping: to the disk too
                        cache.flush(addr, length)
                    cache.write_back(addr, length)
                    bios.append(Bio(BioOp.READ, addr >> SECTOR_SHIFT, [buf]))
                else:
                    buf[:] = bytes(length)  # a hole or an unwritten extent reads as zeros
                continue
            if kind is IomapType.UNWRITTEN:
                bios.extend(self._zero_edges(at, length, addr))
                first = at >> BLOCK_SHIFT
                self.convert.append((first, ((at + length - 1) >> BLOCK_SHIFT) + 1 - first))
            self.written.append((addr, buf))
            bios.append(Bio(BioOp.WRITE, addr >> SECTOR_SHIFT, [buf]))
        self.bios = bios
        self.engine.stats["bios"] += len(bios)

    def _zero_edges(self, at: int, length: int, addr: int) -> list[Bio]:
        """WRITE bios of zeros for the parts of the first and last block of
        ``[at, at+length)`` that the write does not cover (an UNWRITTEN block
        becomes written whole)."""
        out = []
        head = at & (BLOCK_SIZE - 1)
        if head:
            out.append((addr - head, head))
        tail = (at + length) & (BLOCK_SIZE - 1)
        if tail:
            out.append((addr + length, BLOCK_SIZE - tail))
        bios = []
        for dev, n in out:
            zeros = _ZEROS[:n]
            self.written.append((dev, zeros))
            bios.append(Bio(BioOp.WRITE, dev >> SECTOR_SHIFT, [zeros]))
            self.engine.stats["zero_bios"] += 1
        return bios

    def arm(self, on_done: object, *, poll: bool = False) -> None:
        """Submit the bios; ``on_done(self)`` runs once the last has ended.

        ``poll`` (a synchronous caller): the last bio is submitted with the
        device's ``_run``, which waits for it -- on io_uring by reaping the
        completions in this thread (no handoff to the completion thread and
        back: 270 -> 45 us a 4 KiB read on a loaded machine); its outcome still
        reaches ``_bio_done`` through ``end_io``.
        """
        self._on_done = on_done
        bios = self.bios
        if self.write and len(bios) == 1:
            bios[0].flags = BioFlags.FUA  # durable at completion: no FLUSH needed
        self._left = len(bios) + 1  # + the submitter's own count, dropped below
        bdev = self.engine.bdev
        try:
            for i, bio in enumerate(bios):
                bio.end_io = self._bio_done
                if poll and i == len(bios) - 1:
                    with contextlib.suppress(OSError):  # _bio_done records it
                        bdev._run(bio)
                else:
                    bdev.submit_bio(bio)
        finally:
            self._drop()

    def _bio_done(self, bio: Bio) -> None:
        if bio.status is not None:
            with self._lock:
                if self._error is None:
                    self._error = bio.status
        self._drop()

    def _drop(self) -> None:
        with self._lock:
            self._left -= 1
            last = self._left == 0
        if last:
            on_done = self._on_done
            assert callable(on_done)
            on_done(self)

    # -- completion ---------------------------------------------------------------------

    def complete(self) -> int:
        """End the request (every bio has ended): durability, the cache, iomap_end,
        the range lock.  Returns the bytes done.

        Raises:
            the first bio's error, or the FLUSH's, or the iomap_end commit's.
        """
        engine = self.engine
        inode = self.inode
        try:
            error = self._error
            if error is None and self.write and self.length:
                if len(self.bios) > 1:
                    engine.bdev.flush()  # invariant 2: durable before the commit
                for dev, view in self.written:
                    engine.cache.invalidate(dev, len(view), view)
                with inode.lock:
                    if self.convert or self.pos + self.length > inode.rec.size:
                        engine.data.direct_write_end(
                            inode, self.pos, self.length, self.convert
                        )  # its transaction packs the record: the times owed go with it
                        engine._owed.pop(inode.ino, None)
                    else:  # an overwrite of written blocks: no transaction needed
                        engine.touch(inode)
            elif error is not None and self.write:
                for dev, view in self.written:  # the disk may hold some of it: re-read
                    try:
                        engine.cache.invalidate(dev, len(view))
                    except OSError:
                        break
            if error is not None:
                raise error
        except BaseException:
            engine.stats["failed"] += 1
            with inode.lock:
                self._unlock()
            raise
        with inode.lock:
            self._unlock()
            if not self.write and self.result < self.length:
                self.view[self.result : self.length] = bytes(self.length - self.result)
        return self.length if self.write else self.result

    def complete_future(self) -> None:
        """``complete`` on the worker thread, its outcome into the Future."""
        future = self.future
        assert future is not None
        try:
            result = self.complete()
        except BaseException as exc:
            future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        future.set_result(result)

    def _unlock(self) -> None:
        """Release the range lock (caller holds ``inode.lock``); drop the buffers.  A
        write's bios have ended (or none was submitted): the page cache's stamp goes
        (``Inode.data_changed``; daxfs.fs.filecache, invariant 4), failed or not."""
        if self.write:
            self.inode.data_changed()
        if self.token is not None:
            self.engine.data.unlock_range(self.inode, self.token)
            self.token = None
        self.written = []
        self.bios = []


#: the Python end the C end falls back to (a mount whose ``_lean_read_end`` is not
#: this one takes the Python steps: whatever replaced it runs)
_LEAN_PY_END = _lean_read_end
#: the C end of the lean ``submit_read``'s bios (``LeanRead.submit``), or None
_LEAN_END = (
    None
    if _direct is None
    else _direct.setup_end(_FUTURE_LOCK, _LEAN_PY_END, _lean_read_done, _FUTURE_STATES)
)
