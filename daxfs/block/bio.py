"""The bio: one block I/O request, its queue limits, and how it is split and merged.

Theory of operation
-------------------
Linux rebuilt direct I/O around ``struct bio``: a container of memory
segments, an operation, flags, a start sector and a completion, with no
``get_block()`` anywhere.  daxfs's ``Bio`` is the same object in Python:

    op        READ, WRITE, FLUSH, DISCARD, WRITE_ZEROES (``BioOp``)
    flags     FUA, PREFLUSH (``BioFlags``)
    sector    where it starts, in 512-byte sectors (``SECTOR_SIZE``) whatever
              the device's logical block size, as in the kernel
    segments  memoryviews (any buffer, or an object with ``views()`` such as
              daxfs.mm's ``SGList``: pinned pmem is then the source or the
              target of the I/O with no copy; its holes are read-only zero
              views, so a READ into a pin with holes is EINVAL); READ and
              WRITE only
    size      bytes: the segments' total, or given for DISCARD/WRITE_ZEROES
    future    a ``concurrent.futures.Future``: the bytes done, or an OSError;
              made the first time it is asked for (resolved already if the bio
              is done): most bios are waited for by ``wait()``, a poller or
              ``end_io``, and a Future costs a third of a bio's own Python work
    end_io    an optional callback ``end_io(bio)``, run once at completion
              after ``status`` (and the future, if made) are set (as ``bi_end_io``)

A device executes bios within its ``QueueLimits`` (block sizes, maximum
segments, bytes per segment and per request, discard and write-zeroes
limits).  ``split_bio`` cuts a bio that exceeds them into children at
logical-block boundaries (Linux's ``bio_split_to_limits``); the parent
completes when the last child does, with the total or the first error
(``bio_chain``).  ``merge_bios`` joins adjacent bios that follow each other
on the device (a back merge of a plug, ``blk_attempt_plug_merge``) into one
``Request``, the unit a backend executes; a request's completion completes
each of its bios.

``check_bio`` is the validation every device applies before anything runs
(``submit_bio_noacct``, ``bio_check_eod``): an unaligned sector or length is
EINVAL naming the alignment, a range past the device's end is EINVAL naming
the sectors (Linux fails those bios with EIO; daxfs calls them bad arguments,
as its pmem devices do), an operation the device lacks is EOPNOTSUPP, a write
to a read-only device EROFS.

State diagram (``Bio``)::

    Bio(...) --> NEW --BlockDevice.submit_bio--> SUBMITTED --_complete--> DONE
      NEW:       fields may be inspected; submit_bio takes it once
      SUBMITTED: the device owns the segments (do not touch the buffers)
      DONE:      status set (and the future resolved), end_io called; done is True;
                 segments dropped (a view of device memory must not outlive
                 its bio: the device could not close)

Invariants
  1. A bio completes exactly once: ``_complete`` sets ``status`` (and the
     future, if one was made), calls ``end_io``, then drops its segments; a
     second completion is an AssertionError.  A future made after that is
     made resolved (``_FUTURE_LOCK`` orders the two).
  2. ``size`` equals the total length of ``segments`` for READ and WRITE,
     and a READ has only writable segments (checked at construction).
  3. ``split_bio`` yields children that lie within the limits, cover the
     parent's bytes exactly and in order, start and end on logical-block
     boundaries, and carry the parent's FUA; only the device honours
     PREFLUSH, once, before the first child (``BlockDevice`` does it).
  4. ``merge_bios`` keeps submission order, merges only bios with the same
     operation and flags (never PREFLUSH) that are contiguous on the device,
     and never builds a request beyond the limits.
  5. The result of a successful bio is its ``size``; a shorter transfer is
     an error (``IOFailure``, naming the sector where it stopped) for every
     bio not wholly inside what was done.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from daxfs.block.future import LeanFuture
from daxfs.errors import InvalidArgument, IOFailure, NotSupported, ReadOnly
from daxfs.lifecycle import drop_frame_locals

if TYPE_CHECKING:
    from typing_extensions import Buffer

LOG = logging.getLogger("daxfs.block")

SECTOR_SHIFT = 9
#: Bytes of a sector, the unit of ``Bio.sector`` (whatever the logical block size).
SECTOR_SIZE = 1 << SECTOR_SHIFT


class BioOp(enum.Enum):
    """What a bio does (Linux's REQ_OP_*)."""

    READ = "read"  # device -> segments
    WRITE = "write"  # segments -> device
    FLUSH = "flush"  # make every completed write durable (empty: no sector, no data)
    DISCARD = "discard"  # the range is unused; daxfs's backends read it as zeros afterwards
    WRITE_ZEROES = "write_zeroes"  # the range reads as zeros (no data buffers)

    @property
    def has_data(self) -> bool:
        """True for READ and WRITE, the operations that carry segments."""
        return self is BioOp.READ or self is BioOp.WRITE

    @property
    def writes(self) -> bool:
        """True for the operations that change the media (not READ or FLUSH)."""
        return self is BioOp.WRITE or self is BioOp.DISCARD or self is BioOp.WRITE_ZEROES


class BioFlags(enum.IntFlag):
    """Modifiers of a bio (Linux's REQ_* flags)."""

    NONE = 0
    # Forced unit access: this write is durable when it completes (earlier
    # writes still need a FLUSH). WRITE and WRITE_ZEROES only.
    FUA = 0x1
    # Flush the volatile write cache first: every write completed before this
    # bio was submitted is durable before any of its data is written. Any
    # writing operation (a FLUSH bio is one by definition).
    PREFLUSH = 0x2


@runtime_checkable
class SegmentSource(Protocol):
    """Something that describes memory as views, in order (daxfs.mm's SGList)."""

    def views(self) -> Iterable[memoryview]: ...


@dataclasses.dataclass(frozen=True, slots=True)
class QueueLimits:
    """What a device accepts in one request (Linux's struct queue_limits).

    Raises (construction):
        InvalidArgument (EINVAL): a size that is not a power of two, a
            physical block smaller than the logical one, a byte limit that is
            not a multiple of the logical block size, a limit below one.
    """

    #: The unit of addressing and of transfer: sectors and lengths must be multiples.
    logical_block_size: int = SECTOR_SIZE
    #: The unit the media writes atomically (>= logical_block_size).
    physical_block_size: int = SECTOR_SIZE
    #: Segments per request (IOV_MAX bounds the file backend).
    max_segments: int = 128
    #: Bytes per segment; a longer one is cut.
    max_segment_bytes: int = 1 << 20
    #: Bytes per READ or WRITE request.
    max_bytes: int = 1 << 20
    #: Bytes per DISCARD request (0: the device has no DISCARD).
    max_discard_bytes: int = 1 << 30
    #: Bytes per WRITE_ZEROES request (0: the device has no WRITE_ZEROES).
    max_write_zeroes_bytes: int = 1 << 30
    #: Memory alignment (address and length) a segment needs to be used in
    #: place; a backend copies other segments through an aligned bounce buffer.
    dma_alignment: int = 1

    def __post_init__(self) -> None:
        lbs = self.logical_block_size
        for name in ("logical_block_size", "physical_block_size", "dma_alignment"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidArgument(f"queue limit {name} must be a positive integer: {value!r}")
            if value & (value - 1):
                raise InvalidArgument(f"queue limit {name} must be a power of two, not {value}")
        if not SECTOR_SIZE <= lbs <= 1 << 16:
            raise InvalidArgument(f"logical_block_size must be in [512, 65536], not {lbs}")
        if self.physical_block_size < lbs:
            raise InvalidArgument(
                f"physical_block_size {self.physical_block_size} is smaller than the "
                f"logical block size {lbs}"
            )
        for name in ("max_segments", "max_segment_bytes", "max_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidArgument(f"queue limit {name} must be a positive integer: {value!r}")
        for name in ("max_bytes", "max_discard_bytes", "max_write_zeroes_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0 or value % lbs:
                raise InvalidArgument(
                    f"queue limit {name} must be a multiple of the logical block size "
                    f"{lbs}, not {value!r}"
                )

    def max_bytes_for(self, op: BioOp) -> int:
        """The request size limit of ``op`` (0: not supported)."""
        if op is BioOp.DISCARD:
            return self.max_discard_bytes
        if op is BioOp.WRITE_ZEROES:
            return self.max_write_zeroes_bytes
        return self.max_bytes


def _as_views(segments: Iterable[Buffer] | SegmentSource) -> list[memoryview]:
    source: Iterable[object]
    if isinstance(segments, (list, tuple)):  # first: isinstance of a runtime Protocol is slow
        source = segments
    elif isinstance(segments, SegmentSource):
        source = segments.views()
    else:
        source = segments
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = [source]  # one buffer given alone
    views = []
    for i, seg in enumerate(source):
        try:
            view = memoryview(seg)
        except TypeError:
            raise InvalidArgument(
                f"bio segment {i} is not a buffer: {type(seg).__name__}"
            ) from None
        if view.format != "B" or view.ndim != 1:
            try:
                view = view.cast("B")
            except TypeError:
                raise InvalidArgument(f"bio segment {i} is not C-contiguous memory") from None
        views.append(view)
    return views


class _Chain:
    """The state of a bio split into children (``split_bio``): it completes when
    the last child does, with the bytes of all or the first error (``bio_chain``)."""

    __slots__ = ("done", "error", "left", "lock")

    def __init__(self, children: int) -> None:
        self.lock = threading.Lock()
        self.left = children
        self.done = 0
        self.error: BaseException | None = None


class Bio:
    """One block I/O request: see the module docstring.

    Raises (construction):
        InvalidArgument (EINVAL): op or flags of the wrong type; a negative or
            non-integer sector or size; a segment that is not a buffer; a READ
            segment that is read-only; segments on an operation without data,
            or a size that disagrees with them.
    """

    __slots__ = (
        "_chain",
        "_future",
        "_parent",
        "_state",
        "_value",
        "_waiter",
        "end_io",
        "flags",
        "op",
        "private",
        "sector",
        "segments",
        "size",
        "status",
    )

    def __init__(
        self,
        op: BioOp,
        sector: int = 0,
        segments: Iterable[Buffer] | SegmentSource = (),
        *,
        size: int | None = None,
        flags: BioFlags = BioFlags.NONE,
        end_io: Callable[[Bio], object] | None = None,
        private: object = None,
    ) -> None:
        if (  # the common bio (one plain byte buffer, READ or WRITE, no flags) at once:
            # what the checks below would make of it (test_bio.py holds them equal)
            type(segments) is list
            and len(segments) == 1
            and (op is BioOp.READ or op is BioOp.WRITE)
            and flags is BioFlags.NONE
            and size is None
            and type(sector) is int
            and sector >= 0
        ):
            seg = segments[0]
            try:
                view = seg if type(seg) is memoryview else memoryview(seg)
            except TypeError:  # not a buffer: the checks below say so
                view = None
            if (
                view is not None
                and view.ndim == 1
                and view.format == "B"
                and not (op is BioOp.READ and view.readonly)
            ):
                self.op: BioOp = op
                self.flags: BioFlags = flags
                self.sector = sector
                self.segments = [view]
                self.size: int = len(view)
                self.end_io = end_io
                self.private = private
                self._future: Future[int] | None = None
                self._value = 0
                self.status: BaseException | None = None
                self._state = "new"
                self._parent: Bio | None = None
                self._chain: _Chain | None = None
                self._waiter: _Waiter | None = None
                return
        if not isinstance(op, BioOp):
            raise InvalidArgument(f"bio op must be a BioOp, not {op!r}")
        if not isinstance(flags, BioFlags):
            raise InvalidArgument(f"bio flags must be BioFlags, not {flags!r}")
        if isinstance(sector, bool) or not isinstance(sector, int) or sector < 0:
            raise InvalidArgument(f"bio sector must be a non-negative integer, not {sector!r}")
        views = _as_views(segments)
        if op is BioOp.READ or op is BioOp.WRITE:  # (op.has_data, without a property call)
            total = 0
            for i, v in enumerate(views):
                total += len(v)
                if v.readonly and op is BioOp.READ:
                    of = f" of {segments!r}" if hasattr(segments, "views") else ""
                    raise InvalidArgument(
                        f"read bio at sector {sector}: segment {i}{of} is read-only memory"
                    )
            if size is not None and size != total:
                raise InvalidArgument(f"bio size {size} is not its segments' total {total}")
            size = total
        else:
            if views:
                raise InvalidArgument(f"a {op.value} bio carries no segments")
            if op is BioOp.FLUSH:
                size = 0 if size is None else size
                if size != 0:
                    raise InvalidArgument(f"a flush bio has no length, not {size}")
            elif isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise InvalidArgument(
                    f"a {op.value} bio needs a non-negative integer size, not {size!r}"
                )
        self.op = op
        self.flags = flags
        self.sector = sector
        self.segments = views
        self.size = size
        self.end_io = end_io
        self.private = private
        self._future = None  # made when asked for (``future``)
        self._value = 0  # the bytes done, once done without an error
        #: None until done; then None (success) or the error
        self.status = None
        self._state = "new"
        self._parent = None
        self._chain = None  # set by split_bio
        #: set by a device that ends bios on a thread of its own (the file device's C
        #: path, ``_uring.BioRing``): ``wait()`` calls ``_waiter.wait(bio)`` first, which
        #: on that thread (an end_io waiting for another bio) reaps nested, or that
        #: thread reaps for it (its waiting leader)
        self._waiter = None

    def __repr__(self) -> str:
        flags = f" {self.flags!r}" if self.flags else ""
        return (
            f"<Bio {self.op.value}{flags} sector {self.sector} +{self.size} bytes "
            f"{len(self.segments)} segments {self._state}>"
        )

    @property
    def end_sector(self) -> int:
        """The sector just past the bio."""
        return self.sector + (self.size >> SECTOR_SHIFT)

    @property
    def done(self) -> bool:
        return self._state == "done"

    @property
    def future(self) -> Future[int]:
        """The bio's outcome as a ``concurrent.futures.Future`` (made on first use)."""
        future = self._future
        if future is None:
            with _FUTURE_LOCK:
                future = self._future
                if future is None:
                    future = LeanFuture(self._waiter)
                    if self._state == "done":
                        _resolve(future, self.status, self._value)
                    self._future = future
        return future

    def wait(self, timeout: float | None = None) -> int:
        """Wait for completion; return the bytes done.

        Raises:
            OSError: the bio failed (its status), with the errno of the failure.
            TimeoutError: not done within ``timeout`` seconds.
        """
        waiter = self._waiter
        if waiter is not None and timeout is None and self._state != "done":
            waiter.wait(self)  # in an end_io on the device's reaper: reaps nested
        if self._state == "done":  # no future needed
            status = self.status
            if status is not None:
                try:
                    raise status
                finally:  # the traceback holds this frame: no cycle back to the bio
                    self = None  # type: ignore[assignment]
                    status = None
            return self._value
        return self.future.result(timeout)

    # -- completion (the device's side) ----------------------------------------------

    def _submitted(self) -> None:
        if self._state != "new":
            raise InvalidArgument(f"{self!r} was submitted already")
        self._state = "submitted"

    def _complete(self, result: int | BaseException) -> None:
        """End the bio with the bytes done or an error (invariant 1)."""
        error, value = (result, 0) if isinstance(result, BaseException) else (None, result)
        if error is not None:
            # the frames that raised it are done: their locals (requests, segments:
            # views of a cache's memory) must not live on with the status
            drop_frame_locals(error)
        with _FUTURE_LOCK:  # against ``future`` making one now
            assert self._state != "done", f"{self!r} completed twice"
            self._value = value
            self.status = error
            self._state = "done"
            future = self._future
        if future is not None:
            _resolve(future, error, value)
        if self.end_io is not None:
            try:
                self.end_io(self)
            except Exception:
                LOG.exception("end_io of %r raised", self)
        self.segments = []  # the bio no longer holds the caller's memory (bio_put)
        parent = self._parent
        if parent is not None:
            self._parent = None
            parent._child_done(result)

    def _child_done(self, result: int | BaseException) -> None:
        chain = self._chain
        assert chain is not None
        with chain.lock:
            if isinstance(result, BaseException):
                if chain.error is None:
                    chain.error = result
            else:
                chain.done += result
            chain.left -= 1
            last = chain.left == 0
        if last:
            self._complete(chain.error if chain.error is not None else chain.done)

    def _child(self, sector: int, segments: list[memoryview], size: int, flags: BioFlags) -> Bio:
        child = Bio.__new__(Bio)
        child.op = self.op
        child.flags = flags
        child.sector = sector
        child.segments = segments
        child.size = size
        child.end_io = None
        child.private = None
        child._future = None
        child._value = 0
        child.status = None
        child._state = "submitted"
        child._parent = self
        child._chain = None
        child._waiter = None
        return child


#: orders a bio's completion against the making of its future (held for a few stores)
_FUTURE_LOCK = threading.Lock()


class _Waiter(Protocol):
    """A device's reaper of bios (``_uring.BioRing``): ``wait(bio)`` reaps until
    ``bio`` is done when called on the reaper itself, else returns."""

    def wait(self, bio: Bio, /) -> None: ...


def _resolve(future: Future[int], error: BaseException | None, value: int) -> None:
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


def check_bio(
    bio: Bio, limits: QueueLimits, nr_sectors: int, name: str, readonly: bool = False
) -> OSError | None:
    """The error ``bio`` must fail with on a device of ``nr_sectors``, or None if valid."""
    op = bio.op
    if op.writes and readonly:
        return ReadOnly(f"{op.value} at sector {bio.sector}: {name} is read-only")
    if op is BioOp.FLUSH:
        if bio.flags & BioFlags.FUA:
            return InvalidArgument(f"FUA applies to writes, not to a flush of {name}")
        return None
    flags = bio.flags
    if flags:  # (most bios have none; Flag's & is slow)
        if flags & BioFlags.FUA and op not in (BioOp.WRITE, BioOp.WRITE_ZEROES):
            return InvalidArgument(f"FUA applies to writes, not to a {op.value} of {name}")
        if flags & BioFlags.PREFLUSH and not op.writes:
            return InvalidArgument(f"PREFLUSH applies to writes, not to a {op.value} of {name}")
    if limits.max_bytes_for(op) == 0:
        return NotSupported(f"{name} does not support {op.value} (sector {bio.sector})")
    lbs = limits.logical_block_size
    if (bio.sector << SECTOR_SHIFT) % lbs:
        return InvalidArgument(
            f"{op.value} at sector {bio.sector}: not aligned to the logical block size "
            f"of {name} ({lbs} bytes)"
        )
    if bio.size % lbs:
        return InvalidArgument(
            f"{op.value} of {bio.size} bytes at sector {bio.sector}: the length is not a "
            f"multiple of the logical block size of {name} ({lbs} bytes)"
        )
    if bio.end_sector > nr_sectors:
        return InvalidArgument(
            f"{op.value} of sectors [{bio.sector}, {bio.end_sector}) is beyond the end of "
            f"{name} ({nr_sectors} sectors)"
        )
    return None


def split_bio(bio: Bio, limits: QueueLimits) -> list[Bio]:
    """Cut ``bio`` into children within ``limits`` (invariant 3); ``[bio]`` if it fits.

    The bio must have passed ``check_bio``. Children are chained to ``bio``:
    it completes when the last of them does.  PREFLUSH is dropped from the
    children (the device flushes once, before dispatching them).

    Raises:
        InvalidArgument (EINVAL): the segments are so small that
            ``max_segments`` of them hold less than one logical block.
    """
    child_flags = bio.flags & ~BioFlags.PREFLUSH if bio.flags else bio.flags
    if bio.op is BioOp.FLUSH:
        return [bio]
    limit = limits.max_bytes_for(bio.op)
    if not bio.op.has_data:
        if bio.size <= limit:
            return [bio]
        no_data: list[memoryview] = []
        pieces = [
            (bio.sector + (off >> SECTOR_SHIFT), no_data, min(limit, bio.size - off))
            for off in range(0, bio.size, limit)
        ]
        return _chain(bio, pieces, child_flags)
    if (
        bio.size <= limit
        and len(bio.segments) <= limits.max_segments
        and all(len(v) <= limits.max_segment_bytes for v in bio.segments)
    ):
        return [bio]
    return _chain(bio, _cut(bio, limits), child_flags)


def _cut(bio: Bio, limits: QueueLimits) -> list[tuple[int, list[memoryview], int]]:
    """Greedy: each child takes the longest pieces it can (at most ``max_segments``, each
    at most ``max_segment_bytes``), then gives back what passes its last whole block;
    a piece given back is joined again to the rest of its segment."""
    lbs = limits.logical_block_size
    segs = bio.segments
    # pieces still to place: [segment index, start, end] within that segment
    queue = collections.deque([i, 0, len(v)] for i, v in enumerate(segs) if len(v))
    pieces: list[tuple[int, list[memoryview], int]] = []
    sector = bio.sector
    while queue:
        cur: list[list[int]] = []
        cur_bytes = 0
        while queue and cur_bytes < limits.max_bytes and len(cur) < limits.max_segments:
            i, start, end = queue.popleft()
            take = min(end - start, limits.max_segment_bytes, limits.max_bytes - cur_bytes)
            cur.append([i, start, start + take])
            cur_bytes += take
            if start + take < end:
                queue.appendleft([i, start + take, end])
        excess = cur_bytes % lbs
        if excess == cur_bytes:
            raise InvalidArgument(
                f"{bio.op.value} at sector {bio.sector}: {limits.max_segments} segments "
                f"hold less than one logical block ({lbs} bytes); use larger buffers"
            )
        while excess:  # give the part past the last whole block back to the queue
            i, start, end = cur.pop()
            back = min(excess, end - start)
            if back < end - start:
                cur.append([i, start, end - back])
            if queue and queue[0][0] == i and queue[0][1] == end:
                queue[0][1] = end - back  # joined again to the rest of its segment
            else:
                queue.appendleft([i, end - back, end])
            excess -= back
        size = cur_bytes - cur_bytes % lbs
        pieces.append((sector, [segs[i][a:b] for i, a, b in cur], size))
        sector += size >> SECTOR_SHIFT
    assert sector == bio.end_sector
    return pieces


def _chain(bio: Bio, pieces: list[tuple[int, list[memoryview], int]], flags: BioFlags) -> list[Bio]:
    bio._chain = _Chain(len(pieces))
    return [bio._child(sector, segs, size, flags) for sector, segs, size in pieces]


@dataclasses.dataclass(slots=True)
class Request:
    """Bios contiguous on the device, executed as one I/O by a backend."""

    op: BioOp
    flags: BioFlags
    sector: int
    size: int
    bios: list[Bio]
    #: set once the request has completed (a backend ends it exactly once)
    ended: bool = False
    #: called with the result after the bios completed (the data of a PREFLUSH bio)
    then: Callable[[int | BaseException], None] | None = None

    @property
    def offset(self) -> int:
        """Device byte offset of the request."""
        return self.sector << SECTOR_SHIFT

    @property
    def segments(self) -> list[memoryview]:
        """Every bio's segments, in order (READ and WRITE)."""
        if len(self.bios) == 1:
            return self.bios[0].segments
        return [v for bio in self.bios for v in bio.segments]

    @property
    def nr_segments(self) -> int:
        return sum(len(b.segments) for b in self.bios)

    @classmethod
    def of(cls, bio: Bio) -> Request:
        return cls(bio.op, bio.flags, bio.sector, bio.size, [bio])


def merge_bios(bios: Sequence[Bio], limits: QueueLimits) -> list[Request]:
    """Requests of ``bios`` in order, each bio merged into the previous request when
    it follows it on the device with the same op and flags, within limits (invariant 4).
    The bios must already lie within the limits (``split_bio``)."""
    requests: list[Request] = []
    for bio in bios:
        last = requests[-1] if requests else None
        if (
            last is not None
            and bio.op is last.op
            and bio.op is not BioOp.FLUSH
            and bio.flags == last.flags
            and not bio.flags & BioFlags.PREFLUSH
            and bio.sector == last.sector + (last.size >> SECTOR_SHIFT)
            and last.size + bio.size <= limits.max_bytes_for(bio.op)
            and last.nr_segments + len(bio.segments) <= limits.max_segments
        ):
            last.bios.append(bio)
            last.size += bio.size
        else:
            requests.append(Request.of(bio))
    return requests


def short_error(req: Request, done: int, name: str) -> IOFailure:
    """The error of a request that moved only ``done`` of its bytes (invariant 5)."""
    return IOFailure(
        f"short {req.op.value}: {done} of {req.size} bytes at sector {req.sector} of {name} "
        f"(stopped at sector {req.sector + (done >> SECTOR_SHIFT)})"
    )


__all__ = [
    "SECTOR_SIZE",
    "Bio",
    "BioFlags",
    "BioOp",
    "QueueLimits",
    "Request",
    "SegmentSource",
    "check_bio",
    "merge_bios",
    "split_bio",
]
