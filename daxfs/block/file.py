"""FileBlockDevice: a regular file or a block device, reached with preadv/pwritev.

Theory of operation
-------------------
``open_block(path)`` opens a regular file (an image on ext4, tmpfs, ...) or a
block device (an SSD partition, a loop or NBD device) as a ``BlockDevice``:

    size            regular file: its size (``size`` and ``create`` grow it);
                    block device: the BLKGETSIZE64 ioctl
    block sizes     block device: BLKSSZGET / BLKPBSZGET; regular file with
                    O_DIRECT: the smallest of 512..4096 an aligned O_DIRECT read
                    accepts (Linux's dio alignment); buffered: 512
    O_DIRECT        tried first (``direct=None``): the data then moves between
                    the caller's buffers and the device with no page cache.
                    Fallback when the file system refuses it (open or the probe
                    fails with EINVAL): buffered I/O, which is as correct (FLUSH
                    is fdatasync either way) but goes through the page cache.
                    ``direct`` and ``engine_reason`` say which happened.
    alignment       O_DIRECT needs each buffer's address and length aligned to
                    the logical block size (``QueueLimits.dma_alignment``); a
                    request with any other segment goes through one
                    page-aligned bounce buffer (a copy), counted in
                    ``statistics()['bounced']``.

Each request becomes one ``IoOp`` of the engine (daxfs.block.engine): READ
preadv, WRITE pwritev (RWF_DSYNC for FUA), FLUSH fdatasync, WRITE_ZEROES
fallocate(ZERO_RANGE), DISCARD fallocate(PUNCH_HOLE|KEEP_SIZE) -- both read as
zeros afterwards, and fall back to writing zeros where fallocate is missing.
The engine is io_uring where it can be set up (daxfs.block.uring), else a
thread pool of preadv/pwritev (same interface); ``engine`` names it, with
"O_DIRECT" or "buffered", and ``engine_reason`` says why.

The synchronous fast path (io_uring only): ``readinto``, ``write`` and
``readinto_many`` of plain requests (no split, bounce buffer or plug; see
``_plain``, the Python reference of the checks) are one call of the C
extension's ``_uring.Fast`` (``self._fast``): the checks, then the I/O on
one of the engine's private rings (one io_uring_submit_and_wait; a batch
queue_depth deep, refilled and reaped in C), the GIL released while
waiting, no Request reaching the engine's shared ring.  A request it does
not take returns None before any I/O and goes the bio path; one that falls
short comes back to Python (``_fast_failed``: continued, or its error
named).  A synchronous bio (``_run``) that fits goes ``_inline``
(``UringEngine.transfer``, the same private rings).  They count in
``statistics()['inline']``.  Anything else takes the bio path, which stays
the reference (the thread-pool engine always takes it).

The asynchronous C path (io_uring only): ``submit_bio`` of a plain READ or
WRITE bio (one segment that ``_plain`` would take, FUA allowed; no PREFLUSH,
no plug) goes to ``_uring.BioRing`` (``self._aio``): checked and submitted in
C on a ring of its own, and ended in C by its reaper thread ("daxfs-bio",
started by the first bio it takes): status, Future, ``end_io`` called with no
Python in between.  A thread waiting for such a bio (``bio.wait()``,
``bio.future.result()``) reaps for it itself while the reaper steps aside
(``BioRing.lead``; ``end_io`` and done callbacks still run on the reaper).  A
CQE that falls short comes back to ``_aio_failed`` (continued, or its error
named as the bio path names it).  Counted in
``statistics()['async']``.  With ``_aio`` None every bio takes the bio path
(the reference the tests hold it to).

Invariants
  1. The file descriptor lives from open until ``close()``, which first waits
     for the engine to finish every op.
  2. A completed FUA write is durable (RWF_DSYNC, or pwritev + fdatasync); a
     completed FLUSH made every write completed before it durable (fdatasync
     flushes the page cache and the device's cache).
  3. The kernel's errors reach the bio with their errno (EIO, ENOSPC, ...),
     naming the operation, the sector and the path.
  4. The fast path gives what the bio path gives for the same call: the
     bytes, or the same error (named by ``_name_error``; a short transfer is
     IOFailure naming the sector where it stopped); it counts as a request in
     flight, so ``close()`` waits for it, and it is refused (EBADF) once the
     device is closing.
  5. So does the asynchronous C path, for the bio's status, Future and
     ``end_io``: ``close()`` first shuts it down (a later bio takes the bio
     path, which refuses it) and waits for every bio it took to end, then
     joins its reaper; ``close()`` from its ``end_io`` raises RuntimeError.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import mmap
import os
import stat as stat_mod
import struct
import threading
import weakref
from collections.abc import Sequence
from concurrent.futures._base import FINISHED, PENDING, RUNNING
from typing import TYPE_CHECKING

import numpy as np

from daxfs.block import bio as bio_module
from daxfs.block import future as future_module
from daxfs.block.bio import (
    SECTOR_SHIFT,
    Bio,
    BioFlags,
    BioOp,
    QueueLimits,
    Request,
    check_bio,
    short_error,
)
from daxfs.block.device import BlockDevice
from daxfs.block.engine import (
    DEFAULT_QUEUE_DEPTH,
    FALLOC_FL_KEEP_SIZE,
    FALLOC_FL_PUNCH_HOLE,
    FALLOC_FL_ZERO_RANGE,
    IoEngine,
    IoKind,
    IoOp,
    check_engine,
    choose_engine,
)
from daxfs.block.uring import UringEngine
from daxfs.errors import ClosedFile, InvalidArgument, IsADirectory, NotFound
from daxfs.lifecycle import weak_method
from daxfs.pmem.device import check_integer

if TYPE_CHECKING:
    from typing_extensions import Buffer

try:
    from daxfs.block import _uring
except ImportError:  # built without liburing: the reference in Python
    _uring = None  # type: ignore[assignment]
else:  # the BioRing resolves a bio's unwatched LeanFuture in C (its _move's steps)
    _uring.set_lean(future_module._LOCK, (PENDING, RUNNING, FINISHED))

LOG = logging.getLogger("daxfs.block")

BLKGETSIZE64 = 0x80081272
BLKSSZGET = 0x1268
BLKPBSZGET = 0x127B
IOV_MAX = os.sysconf("SC_IOV_MAX")


class FileBlockDevice(BlockDevice):
    """A block device over a file descriptor; create with ``open_block``."""

    write_cache = True
    fua = True

    def __init__(
        self,
        path: str,
        fd: int,
        nr_sectors: int,
        limits: QueueLimits,
        *,
        direct: bool,
        reason: str,
        engine: IoEngine,
        readonly: bool,
        blockdev: bool,
    ) -> None:
        super().__init__(path, nr_sectors, limits, readonly=readonly)
        self.path = path
        self.fd = fd
        self.direct = direct
        self.blockdev = blockdev
        self._reason = reason
        self._engine = engine
        self._stats["bounced"] = 0
        self._stats["inline"] = 0  # bios done by the synchronous fast path
        self._stats["async"] = 0  # bios done by the asynchronous C path (``_aio``)
        # the C fast path of readinto / write / readinto_many (io_uring only)
        self._fast = (
            engine.fast_path(
                limits.logical_block_size,
                min(limits.max_bytes, limits.max_segment_bytes),
                limits.dma_alignment if direct else 1,
                nr_sectors << SECTOR_SHIFT,
                readonly,
            )
            if isinstance(engine, UringEngine)
            else None
        )
        # the C path of submit_bio for plain bios (io_uring only), its reaper thread
        # started by the first bio it takes
        self._aio = self._bio_ring() if isinstance(engine, UringEngine) else None
        self._reaper: threading.Thread | None = None
        if self._aio is not None:
            # the BioRing calls back weakly (no cycle through it); a device dropped
            # unclosed shuts it down, so that its reaper thread ends (not at exit: a
            # bio that never completes would hold the interpreter's exit)
            weakref.finalize(self, self._aio.shutdown).atexit = False

    def _bio_ring(self) -> _uring.BioRing | None:
        """The C path of ``submit_bio`` (``_uring.BioRing``), or None where its ring
        cannot be set up (the bio path then takes every bio)."""
        limits = self.limits
        try:
            return _uring.BioRing(
                self._engine.queue_depth,
                limits.logical_block_size,
                min(limits.max_bytes, limits.max_segment_bytes),
                limits.dma_alignment if self.direct else 1,
                self.nr_sectors << SECTOR_SHIFT,
                self.readonly,
                Bio,
                BioOp.READ,
                BioOp.WRITE,
                bio_module._FUTURE_LOCK,
                weak_method(self._aio_failed),
                _report_end_io,
                weak_method(self._start_reaper),
                os.RWF_DSYNC,
                True,
            )
        except OSError as exc:
            LOG.warning("%s: no C path for bios (%s); the bio path takes them", self.name, exc)
            return None

    def _start_reaper(self) -> None:
        """Start the C path's reaper ("daxfs-bio"; ``BioRing.submit`` calls this once)."""
        aio = self._aio
        assert aio is not None
        thread = threading.Thread(target=aio.serve, name="daxfs-bio", daemon=True)
        thread.start()
        self._reaper = thread

    def submit_bio(self, bio: Bio) -> None:
        """``BlockDevice.submit_bio``; on io_uring a plain READ or WRITE bio (one
        segment that ``_plain`` would take; no PREFLUSH, no plug held; FUA allowed)
        goes the C path (``_uring.BioRing``): checked, submitted, and at completion
        ended and its ``end_io`` called, all in C on the reaper thread.  Any other
        bio takes the bio path, which stays the reference.

        Raises:
            As ``BlockDevice.submit_bio``.
        """
        aio = self._aio
        if aio is not None and self._plugs.bios is None and aio.submit(self.fd, bio):
            return
        super().submit_bio(bio)

    def _aio_failed(self, bio: Bio, res: int) -> None:
        """End a bio of the C path whose CQE gave ``res`` (a short transfer or
        -errno), as the bio path ends it: the rest continued (on a private ring, in
        the reaper), RWF_DSYNC refused done as a write and an fdatasync, an error
        named by ``_name_error``, a transfer that stopped short IOFailure naming the
        sector.  The BioRing counts the bio in flight until this returns."""
        engine = self._engine
        assert isinstance(engine, UringEngine)
        write = bio.op is BioOp.WRITE
        flags = os.RWF_DSYNC if write and bio.flags and bio.flags & BioFlags.FUA else 0
        req = Request.of(bio)
        result: int | BaseException
        try:
            result = engine.finish(write, self.fd, req.offset, bio.segments, bio.size, flags, res)
        except OSError as exc:
            result = exc
        if isinstance(result, BaseException) or result < req.size:
            self._add_stat("errors")
        self._complete_request(req, result)

    @property
    def engine(self) -> str:
        mode = "O_DIRECT" if self.direct else "buffered"
        calls = "preadv/pwritev" if self._engine.name == "threads" else "readv/writev SQEs"
        return f"{self._engine.name} ({calls}, {mode}, queue depth {self._engine.queue_depth})"

    @property
    def engine_reason(self) -> str:
        return self._reason

    def _run(self, bio: Bio) -> int:
        """Submit ``bio`` and wait.  On io_uring, a READ or WRITE that needs no
        split, bounce, PREFLUSH or plug goes inline (``_run_inline``); any other bio
        is submitted and the waiting thread reaps the completions itself (no handoff
        to the completion thread and back)."""
        engine = self._engine
        if not isinstance(engine, UringEngine):
            return super()._run(bio)
        op = bio.op
        if (
            (op is BioOp.READ or op is BioOp.WRITE)
            and not (bio.flags and bio.flags & BioFlags.PREFLUSH)
            and self._plugs.bios is None
            and self._fits(bio)
        ):
            return self._run_inline(engine, bio)
        engine.poll_begin()
        try:
            super().submit_bio(bio)  # the bio path: this thread reaps the engine's ring
            engine.poll_until(lambda: bio.done)
        finally:
            engine.poll_end()
        return bio.wait()

    def _fits(self, bio: Bio) -> bool:
        """Can ``bio`` go to the device as it is: valid, one request within the
        limits (``split_bio`` would return it alone), no bounce buffer?"""
        limits = self.limits
        segments = bio.segments
        return (
            check_bio(bio, limits, self.nr_sectors, self.name, self.readonly) is None
            and bio.size <= limits.max_bytes
            and len(segments) <= limits.max_segments
            and all(len(v) <= limits.max_segment_bytes for v in segments)
            and not (self.direct and misaligned(segments, limits.dma_alignment))
        )

    def _run_inline(self, engine: UringEngine, bio: Bio) -> int:
        """A bio that ``_fits``, done by ``_inline`` in this thread; the bio then
        completes with its result (end_io runs here).  Its life is the one
        ``submit_bio`` gives it: submitted once, counted, refused when closed."""
        bio._submitted()
        flags = bio.flags
        result: int | BaseException
        try:
            result = self._inline(
                engine,
                bio.op is BioOp.WRITE,
                bio.sector << SECTOR_SHIFT,
                bio.segments,
                bio.size,
                bool(flags and flags & BioFlags.FUA),
            )
        except OSError as exc:
            result = exc
        bio._complete(result)
        return bio.wait()

    def _inline(
        self,
        engine: UringEngine,
        write: bool,
        offset: int,
        views: list[memoryview],
        size: int,
        fua: bool = False,
    ) -> int:
        """The synchronous fast path: one valid request (aligned, in range, within
        the limits, no bounce buffer) executed in this thread on a private ring
        (``UringEngine.transfer``: one system call submits and waits), with the
        statistics, the count ``close`` waits for and the errors of a request that
        went through ``submit_bio`` (named by ``_name_error``; a short transfer is
        IOFailure naming the sector where it stopped).  Returns ``size``.

        Raises:
            ClosedFile (EBADF): the device is closed.
            OSError: the kernel's error, named; IOFailure (EIO) for a short transfer.
        """
        if not self._enter(bios=1, requests=1, inline=1):
            what = "write" if write else "read"
            raise ClosedFile(f"{what} at sector {offset >> SECTOR_SHIFT}: {self.name} is closed")
        error: BaseException | None = None
        try:
            flags = os.RWF_DSYNC if fua else 0
            done = engine.transfer(write, self.fd, offset, views, size, flags)
            if done == size:
                return done
            error = short_error(self._request_of(write, offset, size), done, self.name)
        except OSError as exc:
            error = self._name_error(self._request_of(write, offset, size), exc)
        finally:
            self._leave(errors=int(error is not None))
        assert error is not None
        raise error

    @staticmethod
    def _request_of(write: bool, offset: int, size: int) -> Request:
        """A Request describing an inline transfer (for its error's text)."""
        op = BioOp.WRITE if write else BioOp.READ
        return Request(op, BioFlags.NONE, offset >> SECTOR_SHIFT, size, [])

    def _plain(self, offset: object, view: memoryview, write: bool) -> bool:
        """Can ``readinto`` / ``write`` of ``view`` at ``offset`` go ``_inline``?"""
        limits = self.limits
        n = len(view)
        return (
            type(offset) is int
            and 0 < n <= limits.max_bytes
            and n <= limits.max_segment_bytes
            and offset >= 0
            and not (offset | n) & (limits.logical_block_size - 1)
            and offset + n <= self.nr_sectors << SECTOR_SHIFT
            and view.ndim == 1
            and view.format == "B"
            and (not view.readonly if not write else not self.readonly)
            and self._plugs.bios is None
            and not (self.direct and misaligned([view], limits.dma_alignment))
        )

    def readinto(self, offset: int, buffer: Buffer) -> int:
        """``BlockDevice.readinto``; on io_uring a plain read (see ``_plain``) goes
        the C fast path (``_uring.Fast.read``: checks and I/O in one call).

        Raises:
            As ``BlockDevice.readinto``.
        """
        fast = self._fast
        if fast is not None and self._plugs.bios is None:
            got = fast.read(self.fd, offset, buffer)
            if isinstance(got, int):
                return got
            if got is not None:
                return self._fast_failed(False, offset, buffer, got, 0)
        return super().readinto(offset, buffer)

    def write(self, offset: int, data: Buffer, *, fua: bool = False) -> int:
        """``BlockDevice.write``; on io_uring a plain write goes the C fast path.

        Raises:
            As ``BlockDevice.write``.
        """
        fast = self._fast
        if fast is not None and self._plugs.bios is None:
            flags = os.RWF_DSYNC if fua else 0
            got = fast.write(self.fd, offset, data, flags)
            if isinstance(got, int):
                return got
            if got is not None:
                return self._fast_failed(True, offset, data, got, flags)
        return super().write(offset, data, fua=fua)

    def _fast_failed(
        self, write: bool, offset: int, buffer: Buffer, got: tuple[int, int], flags: int
    ) -> int:
        """Finish a fast-path call whose transfer fell short (``got``: the kernel's
        res and the size) as ``_inline`` does: the rest continued, RWF_DSYNC
        refused turned into a write and an fdatasync, an error named; then the
        call ends (``Fast.release``)."""
        res, size = got
        fast = self._fast
        assert fast is not None
        assert isinstance(self._engine, UringEngine)
        try:
            try:
                view = memoryview(buffer).cast("B")
                done = self._engine.finish(write, self.fd, offset, [view], size, flags, res)
                if done == size:
                    return done
                error: BaseException = short_error(
                    self._request_of(write, offset, size), done, self.name
                )
            except OSError as exc:
                error = self._name_error(self._request_of(write, offset, size), exc)
            self._add_stat("errors")
            raise error
        finally:
            fast.release()

    def readinto_many(self, items: Sequence[tuple[int, Buffer]]) -> list[int]:
        """``BlockDevice.readinto_many`` on io_uring in one call of the C fast path
        (``_uring.Fast.read_many``): each item checked as ``_plain`` does, the reads
        on a private ring ``queue_depth`` deep, submitted and reaped in C with the
        GIL released, no Bio, Request or callback per item.  A batch with an item
        the fast path cannot take as it is (unaligned, out of range, past the
        request limit, a bounce buffer needed; not a list of tuples) goes the
        reference way, with its errors.

        Raises:
            As ``BlockDevice.readinto_many``.
        """
        fast = self._fast
        if fast is not None:
            got = fast.read_many(self.fd, items if type(items) is list else list(items))
            if isinstance(got, list):
                return got
            if got is not None:
                return self._fast_many_failed(items, got)
        return super().readinto_many(items)

    def _fast_many_failed(
        self, items: Sequence[tuple[int, Buffer]], results: tuple[int, ...]
    ) -> list[int]:
        """Finish a ``read_many`` where an item fell short: each such item continued
        or failed as ``UringEngine.run_batch`` does it, the first failure (in item
        order) raised named once all are done; then the call ends."""
        fast = self._fast
        engine = self._engine
        assert fast is not None
        assert isinstance(engine, UringEngine)
        try:
            batch = [(offset, memoryview(buffer).cast("B")) for offset, buffer in items]
            finished = engine.finish_batch(IoKind.READV, self.fd, batch, list(results))
            out: list[int] = []
            first: BaseException | None = None
            errors = 0
            for (offset, view), res in zip(batch, finished, strict=True):
                if type(res) is int and res == len(view):
                    out.append(res)
                    continue
                errors += 1
                out.append(0)
                if first is None:
                    req = Request(BioOp.READ, BioFlags.NONE, offset >> SECTOR_SHIFT, len(view), [])
                    first = (
                        self._name_error(req, res)
                        if isinstance(res, BaseException)
                        else short_error(req, res, self.name)
                    )
            self._add_stat("errors", errors)
        finally:
            fast.release()
        if first is not None:
            raise first
        return out

    def statistics(self) -> dict[str, int]:
        """``BlockDevice.statistics``, the C fast path's requests counted in
        ``bios``, ``requests`` and ``inline`` (and its calls in ``inflight``)."""
        stats = super().statistics()
        fast = self._fast
        if fast is not None:
            count = fast.count
            stats["bios"] += count
            stats["requests"] += count
            stats["inline"] += count
            stats["inflight"] += fast.busy
        aio = self._aio
        if aio is not None:
            count = aio.count
            stats["bios"] += count
            stats["requests"] += count
            stats["async"] += count
            stats["inflight"] += aio.inflight
        return stats

    def close(self) -> None:
        """``BlockDevice.close``, the C paths refused first (EBADF through the
        reference path), their calls and bios waited for, the reaper joined.

        Raises:
            RuntimeError: called from an ``end_io`` of the C path (it would wait
                for itself).
        """
        reaper = self._reaper
        aio = self._aio
        if (reaper is not None and reaper is threading.current_thread()) or (
            aio is not None and aio.ending
        ):
            raise RuntimeError(f"{self.name}: close() called from a completion (end_io)")
        if self._fast is not None:
            self._fast.shutdown()
        if aio is not None:
            aio.shutdown()
            reaper = self._reaper
            if reaper is not None:
                reaper.join()
            aio.close()
        super().close()

    def _dispatch(self, req: Request) -> None:
        op = req.op
        fd = self.fd
        if op is BioOp.FLUSH:
            self._engine.submit(IoOp(IoKind.FDATASYNC, fd), lambda r: self._end(req, r))
            return
        if op is BioOp.WRITE_ZEROES or op is BioOp.DISCARD:
            mode = (
                FALLOC_FL_ZERO_RANGE
                if op is BioOp.WRITE_ZEROES
                else FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
            )
            if self.blockdev and op is BioOp.WRITE_ZEROES:
                mode = FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE
            io = IoOp(
                IoKind.FALLOCATE,
                fd,
                req.offset,
                length=req.size,
                flags=mode,
                datasync_after=bool(req.flags & BioFlags.FUA),
            )
            self._engine.submit(io, lambda r: self._end(req, r))
            return
        views = req.segments
        if self.direct and misaligned(views, self.limits.dma_alignment):
            self._bounced(req, views)
            return
        kind = IoKind.READV if op is BioOp.READ else IoKind.WRITEV
        # (Flag & is slow: most requests carry no flags at all)
        flags = os.RWF_DSYNC if req.flags and req.flags & BioFlags.FUA else 0
        self._engine.submit(
            IoOp(kind, fd, req.offset, views, flags=flags), lambda r: self._end(req, r)
        )

    def _bounced(self, req: Request, views: list[memoryview]) -> None:
        """The request through one page-aligned buffer (a copy each way)."""
        self._add_stat("bounced")
        bounce = mmap.mmap(-1, req.size)
        if req.op is BioOp.WRITE:
            pos = 0
            for view in views:
                bounce[pos : pos + len(view)] = view
                pos += len(view)

        def done(result: int | BaseException) -> None:
            if req.op is BioOp.READ and not isinstance(result, BaseException):
                pos = 0
                for view in views:
                    view[:] = bounce[pos : pos + len(view)]
                    pos += len(view)
            self._end(req, result)  # the bounce buffer is freed with the op

        kind = IoKind.READV if req.op is BioOp.READ else IoKind.WRITEV
        flags = os.RWF_DSYNC if req.flags & BioFlags.FUA else 0
        self._engine.submit(
            IoOp(kind, self.fd, req.offset, [memoryview(bounce)], flags=flags), done
        )

    def _close(self) -> None:
        self._engine.close()
        os.close(self.fd)


def _report_end_io(bio: Bio, exc: BaseException | None) -> None:
    """What ``Bio._complete`` does when ``end_io`` raises, for the C path: log it."""
    LOG.error("end_io of %r raised", bio, exc_info=exc)


def misaligned(views: list[memoryview], align: int) -> bool:
    """Is any view's address or length not a multiple of ``align``?"""
    if align <= 1:
        return False
    if _uring is not None:  # the same test in C (numpy's address lookup is slow)
        return _uring.misaligned(views, align)
    return _misaligned_py(views, align)


def _misaligned_py(views: list[memoryview], align: int) -> bool:
    """The reference of ``misaligned`` (without the extension)."""
    mask = align - 1
    for view in views:
        if len(view) & mask:
            return True
        if len(view) and np.frombuffer(view, dtype=np.uint8).ctypes.data & mask:
            return True
    return False


def open_block(
    path: str | os.PathLike[str],
    size: int | None = None,
    *,
    create: bool = False,
    direct: bool | None = None,
    readonly: bool = False,
    engine: str = "auto",
    queue_depth: int = DEFAULT_QUEUE_DEPTH,
) -> FileBlockDevice:
    """Open a regular file or a block device as a ``FileBlockDevice``.

    ``size`` (regular files) is the bytes to use; with ``create=True`` a
    missing file is created and a shorter one grown (sparse).  ``direct``:
    None tries O_DIRECT and falls back to buffered I/O, True requires it,
    False never uses it.  ``engine``: "auto" (io_uring when it exists, else
    threads, naming why in ``engine_reason``), "threads", or "io_uring";
    ``queue_depth`` ops in flight at once.

    Raises:
        FileNotFoundError (ENOENT): no such path and create is False.
        IsADirectoryError (EISDIR): a directory.
        OSError(ENODEV): neither a regular file nor a block device.
        InvalidArgument (EINVAL): bad size (not a positive multiple of the
            logical block size, or larger than the file without create), bad
            engine or queue depth; direct=True where O_DIRECT is refused.
        NotSupported (EOPNOTSUPP): engine="io_uring" where it cannot be set up.
        PermissionError (EACCES): the path cannot be opened.
    """
    name = os.fsdecode(os.fspath(path))
    if size is not None:
        check_integer(size, "size")
    if readonly and create:
        raise InvalidArgument(f"cannot create {name} read-only", name)
    check_engine(engine, queue_depth)
    flags = os.O_RDONLY if readonly else os.O_RDWR
    flags |= os.O_CLOEXEC
    try:
        st = os.stat(name)
    except FileNotFoundError:
        if not create:
            raise NotFound(f"no such file or block device: {name}", name) from None
        if size is None:
            raise InvalidArgument(f"size is required to create {name}", name) from None
        flags |= os.O_CREAT
        st = None
    if st is not None and stat_mod.S_ISDIR(st.st_mode):
        raise IsADirectory(f"{name} is a directory, not a file or block device", name)
    if st is not None and not (stat_mod.S_ISREG(st.st_mode) or stat_mod.S_ISBLK(st.st_mode)):
        raise OSError(errno.ENODEV, f"{name} is neither a regular file nor a block device", name)
    fd, is_direct, reason = _open(name, flags, direct)
    try:
        lbs = None
        if is_direct and not stat_mod.S_ISBLK(os.fstat(fd).st_mode):
            lbs = _probe_direct(fd, _grow(name, fd, size, create))
            if lbs is None:
                if direct:
                    raise InvalidArgument(f"{name}: O_DIRECT reads fail at every block size", name)
                os.close(fd)
                fd = -1
                fd = os.open(name, flags & ~os.O_CREAT)
                is_direct = False
                reason = "buffered: O_DIRECT reads fail with EINVAL at every block size to 4096"
        return _make(name, fd, size, create, is_direct, reason, readonly, engine, queue_depth, lbs)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        raise


def _grow(name: str, fd: int, size: int | None, create: bool) -> int:
    """The bytes of the regular file to use, grown to ``size`` if ``create``."""
    st_size = os.fstat(fd).st_size
    length = size if size is not None else st_size
    if st_size < length:
        if not create:
            raise InvalidArgument(
                f"{name} holds {st_size} bytes, fewer than the {length} asked for "
                "(use create=True to grow it)",
                name,
            )
        os.ftruncate(fd, length)
    return length


def _open(name: str, flags: int, direct: bool | None) -> tuple[int, bool, str]:
    if direct is False:
        return os.open(name, flags, 0o644), False, "buffered: direct=False asked"
    try:
        return os.open(name, flags | os.O_DIRECT, 0o644), True, "O_DIRECT"
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        if direct:
            raise InvalidArgument(f"{name}: the file system refuses O_DIRECT", name) from None
        why = "buffered: the file system refuses O_DIRECT (open: EINVAL)"
        return os.open(name, flags, 0o644), False, why


def _make(
    name: str,
    fd: int,
    size: int | None,
    create: bool,
    direct: bool,
    reason: str,
    readonly: bool,
    engine: str,
    queue_depth: int,
    probed: int | None,
) -> FileBlockDevice:
    st = os.fstat(fd)
    blockdev = stat_mod.S_ISBLK(st.st_mode)
    if blockdev:
        length = struct.unpack("Q", fcntl.ioctl(fd, BLKGETSIZE64, b"\0" * 8))[0]
        lbs = struct.unpack("i", fcntl.ioctl(fd, BLKSSZGET, b"\0" * 4))[0]
        pbs = struct.unpack("i", fcntl.ioctl(fd, BLKPBSZGET, b"\0" * 4))[0]
        if size is not None:
            if size > length:
                raise InvalidArgument(f"{name} holds {length} bytes, fewer than {size}", name)
            length = size
    else:
        length = _grow(name, fd, size, create)
        lbs = probed or 512
        pbs = max(lbs, 4096)
    if length == 0 or length % lbs:
        raise InvalidArgument(
            f"{name}: {length} bytes is not a positive multiple of the logical block size "
            f"({lbs} bytes)",
            name,
        )
    limits = QueueLimits(
        logical_block_size=lbs,
        physical_block_size=pbs,
        max_segments=min(IOV_MAX, 1024),
        max_segment_bytes=1 << 30,
        max_bytes=8 << 20,
        dma_alignment=lbs if direct else 1,
    )
    io_engine, why = choose_engine(engine, queue_depth)
    return FileBlockDevice(
        name,
        fd,
        length >> SECTOR_SHIFT,
        limits,
        direct=direct,
        reason=f"{reason}; {why}",
        engine=io_engine,
        readonly=readonly,
        blockdev=blockdev,
    )


def _probe_direct(fd: int, length: int) -> int | None:
    """The smallest block size an aligned O_DIRECT read accepts, or None."""
    buf = mmap.mmap(-1, 4096)
    try:
        view = memoryview(buf)
        try:
            for lbs in (512, 1024, 2048, 4096):
                if lbs > length:
                    break
                try:
                    os.preadv(fd, [view[:lbs]], 0)
                    return lbs
                except OSError as exc:
                    if exc.errno != errno.EINVAL:
                        raise
            return None
        finally:
            view.release()
    finally:
        buf.close()


__all__ = ["FileBlockDevice", "misaligned", "open_block"]
