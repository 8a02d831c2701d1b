"""BlockDevice: the interface of every block device, and the submission path they share.

Theory of operation
-------------------
``submit_bio(bio)`` is the only way in, as in Linux.  It validates the bio
against the device (``check_bio``: closed device, alignment, range, supported
operation, read-only), splits it to the queue limits (``split_bio``), and
hands the pieces, as ``Request`` objects, to the backend's ``_dispatch``.
Inside ``with dev.plug():`` the pieces are held instead and, when the block
ends, adjacent ones are merged (``merge_bios``) before dispatch, as a task's
plug does in Linux.  A PREFLUSH bio first dispatches what is plugged, then a
FLUSH request, and only when that has completed its data.  On a device
without FUA (``fua`` False) a FUA bio is written without it and completes
after a FLUSH that follows its data.

Backends implement ``_execute(req) -> bytes done`` (synchronous: pmem, the
simulator) or override ``_dispatch(req)`` and call ``_end(req, result)``
later from any thread (the file backend's engine).  ``_end`` completes the
request's bios: all with the error, or each with its size, or -- on a short
transfer -- those wholly done with their size and the rest with
``IOFailure`` naming the sector where the transfer stopped.

``readinto_many(items)`` reads many ``(offset, buffer)`` items in one call:
the reference submits a bio per item and waits for all; a backend may do it
faster (the file backend on io_uring does them from C, its queue depth in
flight).

What a caller may rely on, as in Linux: nothing orders two bios that are in
flight at the same time.  A write is *done* when its bio completes; it is
*durable* when it carried FUA, or when a FLUSH (or PREFLUSH) submitted after
it completed has completed -- on a device with a volatile write cache
(``write_cache`` True).  Without one, every completed write is durable.

State diagram::

    BlockDevice(...) --> OPEN --close()--> CLOSING --in-flight requests end--> CLOSED
      OPEN:    submit_bio dispatches
      CLOSING: new bios fail with ClosedFile (EBADF, also ValueError); those
               in flight complete
      CLOSED:  the backend is released; every bio fails with ClosedFile

Invariants
  1. submit_bio raises only for a misused Bio object (not a Bio, submitted
     twice) and for ``PowerFailure`` of the simulator (a BaseException that
     stops the simulated world); every other error, the backend's included,
     reaches the bio's future and ``end_io``.
  2. Every dispatched request is ended exactly once, and a bio completes once
     (bio.py, invariant 1): a backend that raises from ``_execute`` or before
     handing a request off has it ended with that error.
  3. A bio with PREFLUSH writes no data before the flush it asked for has
     completed successfully; if that flush fails, the bio fails with its error.
  4. ``close()`` returns only when no request is in flight and no
     ``submit_bio`` or unplug is between its check and its dispatch (each
     holds a count while it runs); backends release their resources then
     (``_close``), once.  That count and the statistics live in one place:
     ``_enter`` (refused once closing) and ``_leave``.
  5. Errors that name nothing get the operation, the sector and the device
     (``_name_error``): an ``OSError`` from the kernel keeps its errno.
"""

from __future__ import annotations

import contextlib
import errno as errno_mod
import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from daxfs.block.bio import (
    SECTOR_SHIFT,
    SECTOR_SIZE,
    Bio,
    BioFlags,
    BioOp,
    QueueLimits,
    Request,
    check_bio,
    merge_bios,
    short_error,
    split_bio,
)
from daxfs.errors import ClosedFile, DaxfsError, InvalidArgument, IOFailure, NoSpace
from daxfs.lifecycle import Closeable
from daxfs.pmem.device import check_integer

if TYPE_CHECKING:
    from typing_extensions import Buffer

Result = int | BaseException


class _Plugs(threading.local):
    """Each thread's plugged bios (``BlockDevice.plug``), None outside a plug.  The
    class default makes an unplugged thread's lookup a plain attribute read:
    ``getattr(threading.local(), "bios", None)`` raises and catches an
    AttributeError inside, about 2 us per bio here."""

    bios: list[Bio] | None = None


class BlockDevice(Closeable):
    """A device of ``nr_sectors`` 512-byte sectors that executes bios.

    Subclasses set ``engine``, ``write_cache`` and ``fua`` and implement
    ``_execute`` (or ``_dispatch``) and ``_close``.
    """

    #: True if completed writes may sit in a volatile cache until a FLUSH.
    write_cache: bool = True
    #: True if FUA is done by the device itself; else the base emulates it: the
    #: write without FUA, then a FLUSH, then the completion.
    fua: bool = True

    def __init__(
        self, name: str, nr_sectors: int, limits: QueueLimits, *, readonly: bool = False
    ) -> None:
        check_integer(nr_sectors, "nr_sectors")
        lbs_sectors = limits.logical_block_size >> SECTOR_SHIFT
        if nr_sectors % lbs_sectors:
            raise InvalidArgument(
                f"{name}: {nr_sectors} sectors is not a whole number of "
                f"{limits.logical_block_size}-byte logical blocks"
            )
        self.name = name
        self.nr_sectors = nr_sectors
        self.limits = limits
        self.readonly = readonly
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._inflight = 0
        self._state = "open"
        self._plugs = _Plugs()
        self._stats = {
            "bios": 0,
            "requests": 0,
            "splits": 0,
            "merges": 0,
            "flushes": 0,
            "errors": 0,
        }

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.name!r} {self.size} bytes {self.engine} {self._state}>"
        )

    # -- properties --------------------------------------------------------------------

    @property
    def size(self) -> int:
        """Bytes of the device."""
        return self.nr_sectors << SECTOR_SHIFT

    @property
    def closed(self) -> bool:
        return self._state != "open"

    @property
    def lost(self) -> str | None:
        """Why the device is gone for good (a disconnected server), or None
        (``daxfs.pmem.Device.lost`` says what the filesystem makes of it)."""
        return None

    @property
    def engine(self) -> str:
        """How bios are executed, in a few words (for ``daxfs info``)."""
        return "synchronous"

    @property
    def engine_reason(self) -> str:
        """Why that engine was chosen (a fallback says what was missing)."""
        return ""

    def statistics(self) -> dict[str, int]:
        """Counters: bios submitted, requests dispatched, splits, merges, flushes, errors."""
        with self._lock:
            return dict(self._stats, inflight=self._inflight)

    # -- submission --------------------------------------------------------------------

    def submit_bio(self, bio: Bio) -> None:
        """Start ``bio``; its future and end_io report the outcome (invariant 1).

        Raises:
            InvalidArgument (EINVAL): ``bio`` is not a Bio, or was submitted before.
            PowerFailure: only on the simulated device, when the power fails.
        """
        if not isinstance(bio, Bio):
            raise InvalidArgument(f"submit_bio takes a Bio, not {type(bio).__name__}")
        bio._submitted()
        if not self._enter(bios=1):
            bio._complete(self._closed_error(bio))
            return
        try:
            self._submit(bio)
        finally:
            self._leave()

    # -- the bookkeeping of work in flight: its one home (invariant 4) ---------------------

    def _enter(
        self,
        *,
        bios: int = 0,
        requests: int = 0,
        flushes: int = 0,
        inline: int = 0,
        refuse_closed: bool = True,
    ) -> bool:
        """Count work entering the device -- a submission between its check and its
        dispatch, a request dispatched, a synchronous call -- which ``close()``
        waits for to ``_leave``, and its statistics.  With ``refuse_closed`` a
        closing or closed device takes nothing: False, the refused bios counted
        as errors.  (A request dispatched by a submission already counted is
        never refused: ``refuse_closed=False``.)"""
        with self._lock:
            stats = self._stats
            if bios:
                stats["bios"] += bios
            if refuse_closed and self._state != "open":
                stats["errors"] += bios
                return False
            self._inflight += 1
            if requests:
                stats["requests"] += requests
            if flushes:
                stats["flushes"] += flushes
            if inline:
                stats["inline"] += inline
            return True

    def _leave(self, errors: int = 0) -> None:
        """The end of what ``_enter`` counted, with the errors it ended with."""
        with self._lock:
            if errors:
                self._stats["errors"] += errors
            self._inflight -= 1
            if self._inflight == 0 and self._state != "open":  # only close() waits
                self._idle.notify_all()

    def _add_stat(self, name: str, n: int = 1) -> None:
        """Add ``n`` to the statistic ``name`` (errors, splits, merges, bounced, ...)."""
        with self._lock:
            self._stats[name] += n

    def _closed_error(self, bio: Bio) -> ClosedFile:
        return ClosedFile(f"{bio.op.value} at sector {bio.sector}: {self.name} is closed")

    def _submit(self, bio: Bio) -> None:
        error = check_bio(bio, self.limits, self.nr_sectors, self.name, self.readonly)
        flags = bio.flags  # (tested for truth first: most have none, and Flag's & is slow)
        if error is None and flags and flags & BioFlags.FUA and not self.fua:
            self._emulate_fua(bio)
            return
        if error is None:
            try:
                children = split_bio(bio, self.limits)
            except OSError as exc:
                error = exc
        if error is not None:
            self._add_stat("errors")
            bio._complete(error)
            return
        if len(children) > 1:
            self._add_stat("splits")
        plugged: list[Bio] | None = self._plugs.bios
        ordered = bio.op is BioOp.FLUSH or bool(flags and flags & BioFlags.PREFLUSH)
        if plugged is not None and not ordered:
            plugged.extend(children)
            return
        if plugged:
            self._unplug(plugged)
        if ordered and bio.op is not BioOp.FLUSH:
            self._preflush(children)
        else:
            self._dispatch_all([Request.of(child) for child in children])

    def _emulate_fua(self, bio: Bio) -> None:
        """FUA on a device without it: the write without FUA, then a FLUSH, then the bio
        completes (Linux's blk-flush does the same)."""

        def data_done(inner: Bio) -> None:
            if inner.status is not None:
                bio._complete(inner.status)
                return

            def flushed(result: Result) -> None:
                bio._complete(result if isinstance(result, BaseException) else inner.size)

            self._dispatch_all([Request(BioOp.FLUSH, BioFlags.NONE, 0, 0, [], then=flushed)])

        inner = Bio(
            bio.op,
            bio.sector,
            bio.segments,
            size=None if bio.op.has_data else bio.size,
            flags=bio.flags & ~BioFlags.FUA,
            end_io=data_done,
        )
        inner._submitted()
        self._submit(inner)

    def _preflush(self, children: list[Bio]) -> None:
        """A FLUSH request first; the data when it has completed (invariant 3)."""

        def then(result: Result) -> None:
            if isinstance(result, BaseException):
                for child in children:
                    child._complete(result)
            else:
                self._dispatch_all([Request.of(child) for child in children])

        self._dispatch_all([Request(BioOp.FLUSH, BioFlags.NONE, 0, 0, [], then=then)])

    @contextlib.contextmanager
    def plug(self) -> Iterator[None]:
        """Hold this thread's bios until the block ends, then merge adjacent ones and
        dispatch them (a FLUSH or PREFLUSH bio dispatches what is held first).
        Nested plugs join the outer one."""
        if self._plugs.bios is not None:
            yield
            return
        self._plugs.bios = []
        try:
            yield
        finally:
            bios = self._plugs.bios
            self._plugs.bios = None
            if bios:
                self._unplug(bios)

    def _unplug(self, bios: list[Bio]) -> None:
        held = list(bios)
        bios.clear()
        if not self._enter():  # closed while they were held
            for bio in held:
                error = self._closed_error(bio)
                bio._complete(error)  # a child completes its parent
            return
        try:
            requests = merge_bios(held, self.limits)
            self._add_stat("merges", len(held) - len(requests))
            self._dispatch_all(requests)
        finally:
            self._leave()

    def _dispatch_all(self, requests: list[Request]) -> None:
        for i, req in enumerate(requests):
            try:
                self._dispatch_request(req)
            except BaseException as exc:  # PowerFailure: the rest fail with it too
                for rest in requests[i + 1 :]:
                    self._begin(rest)
                    self._end(rest, exc)
                raise

    def _begin(self, req: Request) -> None:
        self._enter(requests=1, flushes=int(req.op is BioOp.FLUSH), refuse_closed=False)

    def _dispatch_request(self, req: Request) -> None:
        self._begin(req)
        try:
            self._dispatch(req)
        except BaseException as exc:
            if not req.ended:
                self._end(req, exc)
            if not isinstance(exc, Exception):
                raise

    # -- the backend's side ------------------------------------------------------------

    def _dispatch(self, req: Request) -> None:
        """Execute ``req`` and call ``_end`` once, now or later from any thread.

        May raise only before handing the request off (the base then ends it).
        """
        self._end(req, self._execute(req))

    def _execute(self, req: Request) -> int:
        """Do ``req`` synchronously; return the bytes done (``req.size`` unless short)."""
        raise NotImplementedError

    def _close(self) -> None:
        """Release the backend (called once, with nothing in flight)."""

    def _end(self, req: Request, result: Result) -> None:
        """Complete ``req`` with the bytes done or an error (invariant 2); what
        ``_begin`` counted leaves."""
        failed = isinstance(result, BaseException) or result < req.size
        try:
            self._complete_request(req, result)
        finally:
            self._leave(errors=int(failed))

    def _complete_request(self, req: Request, result: Result) -> None:
        """Complete each bio of ``req``: all with the error (named), each with its
        size, or -- short -- as ``_end_short``; then ``req.then``."""
        assert not req.ended, f"request at sector {req.sector} ended twice"
        req.ended = True
        if isinstance(result, BaseException):
            result = self._name_error(req, result)
            for bio in req.bios:
                bio._complete(result)
        elif result >= req.size:
            for bio in req.bios:
                bio._complete(bio.size)
        else:
            self._end_short(req, result)
        if req.then is not None:
            req.then(result)

    def _end_short(self, req: Request, done: int) -> None:
        error = short_error(req, done, self.name)
        left = done
        for bio in req.bios:
            if bio.size <= left:
                bio._complete(bio.size)
                left -= bio.size
            else:
                left = 0
                bio._complete(error)

    def _name_error(self, req: Request, exc: BaseException) -> BaseException:
        """An OSError that names nothing gets the operation, sector and device (inv. 5)."""
        if not isinstance(exc, OSError) or isinstance(exc, DaxfsError):
            return exc
        what = f"{req.op.value} of {req.size} bytes at sector {req.sector} of {self.name}"
        if req.op is BioOp.FLUSH:
            what = f"flush of {self.name}"
        text = f"{exc.strerror or exc}: {what}"
        named: OSError
        if exc.errno == errno_mod.EIO:
            named = IOFailure(text)
        elif exc.errno == errno_mod.ENOSPC:
            named = NoSpace(text)
        else:
            named = OSError(exc.errno, text)
        named.__cause__ = exc
        return named

    # -- synchronous helpers (byte offsets) ------------------------------------------------

    def _sector(self, offset: int) -> int:
        check_integer(offset, "offset")
        if offset % SECTOR_SIZE:
            raise InvalidArgument(
                f"offset {offset} of {self.name} is not a multiple of the sector size "
                f"({SECTOR_SIZE} bytes)"
            )
        return offset >> SECTOR_SHIFT

    def _run(self, bio: Bio) -> int:
        self.submit_bio(bio)
        return bio.wait()

    def readinto(self, offset: int, buffer: Buffer) -> int:
        """Read ``len(buffer)`` bytes at byte ``offset`` into ``buffer``; wait.

        Raises:
            InvalidArgument (EINVAL): unaligned offset or length, a range past the
                end (both naming the sector and the alignment or the device's size).
            OSError: the device failed (EIO naming the sector), or is closed (EBADF).
        """
        return self._run(Bio(BioOp.READ, self._sector(offset), [buffer]))

    def readinto_many(self, items: Sequence[tuple[int, Buffer]]) -> list[int]:
        """Read each ``(offset, buffer)`` of ``items`` as ``readinto`` does, many in
        flight at once (the device's queue depth), and wait for all: the batch a
        Python caller keeps at QD32 with one call instead of a bio each.  Returns
        the bytes read of each item.  This is the reference (a bio per item, all
        submitted, then waited for); a backend may do it faster.

        Raises:
            InvalidArgument (EINVAL): a buffer that is not writable memory (before
                any I/O); an unaligned or out-of-range item (its bio's error).
            OSError: the first failed item's error, in item order (EIO naming the
                sector, IOFailure for a short read), raised once every item has
                finished; the other items' buffers hold what they read.
        """
        bios = [Bio(BioOp.READ, self._sector(offset), [buffer]) for offset, buffer in items]
        for bio in bios:
            self.submit_bio(bio)
        return _wait_all(bios)

    def read(self, offset: int, length: int) -> bytes:
        """Read ``length`` bytes at byte ``offset``; raises as ``readinto``."""
        buf = bytearray(check_integer(length, "length"))
        self.readinto(offset, buf)
        return bytes(buf)

    def write(self, offset: int, data: Buffer, *, fua: bool = False) -> int:
        """Write ``data`` at byte ``offset``; wait. With ``fua`` it is durable on return.

        Raises:
            As ``readinto``; ReadOnly (EROFS) on a read-only device.
        """
        flags = BioFlags.FUA if fua else BioFlags.NONE
        return self._run(Bio(BioOp.WRITE, self._sector(offset), [data], flags=flags))

    def write_zeroes(self, offset: int, length: int, *, fua: bool = False) -> int:
        """Make ``length`` bytes at ``offset`` read as zeros; raises as ``write``."""
        flags = BioFlags.FUA if fua else BioFlags.NONE
        bio = Bio(BioOp.WRITE_ZEROES, self._sector(offset), size=length, flags=flags)
        return self._run(bio)

    def discard(self, offset: int, length: int) -> int:
        """Tell the device ``length`` bytes at ``offset`` are unused; raises as ``write``,
        and NotSupported (EOPNOTSUPP) on a device without DISCARD."""
        return self._run(Bio(BioOp.DISCARD, self._sector(offset), size=length))

    def flush(self) -> None:
        """Make every completed write durable; wait.

        Raises:
            OSError: the device failed (EIO) or is closed (EBADF).
        """
        self._run(Bio(BioOp.FLUSH))

    # -- lifecycle ---------------------------------------------------------------------

    def close(self) -> None:
        """Wait for the bios in flight, then release the device (idempotent).

        Must not be called from an ``end_io`` callback (it would wait for itself).
        """
        with self._lock:
            if self._state == "closed":
                return
            self._state = "closing"
            while self._inflight:
                self._idle.wait()
            if self._state == "closed":
                return
            self._state = "closed"
        self._close()


def _wait_all(bios: Sequence[Bio]) -> list[int]:
    """Wait for every bio; their sizes, or the first one's error once all ended."""
    results: list[int] = []
    first: OSError | None = None
    for bio in bios:
        try:
            results.append(bio.wait())
        except OSError as exc:
            if first is None:
                first = exc
            results.append(0)
    if first is not None:
        raise first
    return results
