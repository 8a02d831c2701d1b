"""DAX mmap: a file's extents mapped straight from the device into this process.

Theory of operation
-------------------
``map_file`` reserves one contiguous range of address space (daxfs.mm.vm),
then walks the file range with ``iomap_iter`` (flag FAULT) and maps each
extent from the device's file descriptor at its place inside the
reservation, with MAP_FIXED: loads and stores reach device memory directly,
no copy, no page cache.  A writable mapping first has every hole and
unwritten extent of its range allocated, zeroed and marked written, in one
transaction, so no hole ever sits behind a writable page.  A read-only
mapping shows holes as the zero page and picks up blocks that writes
allocate later (``refresh_file_range``).

``msync(offset, length)`` persists exactly that range: the device's flush
over the device bytes behind it (CLWB per line on the CPU path, msync of the
covering pages on the msync path), then a fence.  No metadata is needed,
since the blocks are written from the start; modification times are set
when a writable mapping is closed or the file is fsync'ed.  A writable
mapping's file range is remembered by the data path (daxfs.fs.writeback)
from its creation until a writeback after its close: fsync, fdatasync,
FileSystem.sync and unmount flush it, even once the mapping is gone.

Truncate, punch-hole and zero-range call ``detach_file_range`` as the last
step of the transaction that frees or changes the blocks under a mapping
(only its commit can fail after it): those pages are replaced at once
(MAP_FIXED) by private zero pages, so they can never reach freed blocks again;
reads see zeros, writes go nowhere, and msync over them raises.  If the
commit fails before its commit point, the function ``detach_file_range``
returned maps the pages back as they were: the blocks did not change.

The Mapping is a ``MappedBuffer`` (C): memoryview, numpy and slicing see the
memory, and every exported buffer is counted.  ``close()`` refuses while one
is alive, as Python's mmap does, so no view outlives its memory; a mapping
replaced by ``fixed="replace"`` (only allowed when it has no live buffer)
refuses everything afterwards, saying why.

State diagram::

    map_file() --> OPEN --close()--> CLOSED
                    |  '--fixed="replace" over it--> REPLACED (methods raise)
                    '--detach_file_range(): OPEN, some pages detached
"""

from __future__ import annotations

import bisect
import dataclasses
import errno
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from daxfs.errors import InvalidArgument, PermissionDenied, naming
from daxfs.fs.data import DataPath
from daxfs.fs.inode import Inode
from daxfs.iomap import Iomap, IomapFlags, IomapType, iomap_iter
from daxfs.lifecycle import Closeable
from daxfs.mm import _vm
from daxfs.mm.vm import (
    MAP_ANONYMOUS,
    MAP_FIXED,
    MAP_PRIVATE,
    PAGE_SIZE,
    PROT_READ,
    PROT_WRITE,
    REGISTRY,
    AddressSpace,
    page_up,
)

if TYPE_CHECKING:
    from daxfs.fs.file import File

MS_ASYNC = 1  # start write-back, do not wait (no fence)
MS_INVALIDATE = 2  # invalidate other mappings: DAX mappings are coherent, nothing to do
MS_SYNC = 4  # persist the range before returning
_MS_KNOWN = MS_ASYNC | MS_INVALIDATE | MS_SYNC

ACCESS = ("write", "read")
FIXED = (None, "noreplace", "replace")


@dataclasses.dataclass(slots=True)
class Piece:
    """Bytes ``[start, start+length)`` of the mapping: device bytes, or a zero page."""

    start: int
    length: int
    dev: int | None  # device byte offset of ``start``; None: zero page (hole) or detached
    detached: bool = False


class Mapping(_vm.MappedBuffer, Closeable):
    """A DAX mapping of a file range.  Create with ``File.mmap``."""

    _file: File
    _data: DataPath
    _inode: Inode
    _space: AddressSpace
    _offset: int
    _span_len: int
    _writable: bool
    _pieces: list[Piece]
    _starts: list[int]
    _state: str
    _why: str
    _lock: threading.RLock
    _persist: Callable[[int, int], None]
    _len: int
    _fast_dev: int | None
    _writeback: int | None

    # -- creation -----------------------------------------------------------------------

    @classmethod
    def _create(
        cls,
        file: File,
        data: DataPath,
        addr: int,
        length: int,
        offset: int,
        writable: bool,
        space: AddressSpace,
    ) -> Mapping:
        self = cls(addr, length, not writable)
        self._file = file
        self._data = data
        self._inode = file.inode
        self._space = space
        self._offset = offset
        self._span_len = page_up(length)
        self._writable = writable
        self._pieces = []
        self._starts = []
        self._state = "open"
        self._why = ""
        self._lock = threading.RLock()
        self._persist = data.device.persister()
        self._len = length
        self._fast_dev = None  # device offset of byte 0 if one mapped extent
        self._writeback = None  # token of the range remembered for fsync (writable)
        return self

    def __repr__(self) -> str:
        where = f"{self.address:#x}" if self._state == "open" else self._state
        return (
            f"<daxfs.Mapping {self._file.path}[{self._offset}:{self._offset + self.length}] "
            f"{'write' if self._writable else 'read'} at {where}>"
        )

    # -- properties ---------------------------------------------------------------------

    @property
    def offset(self) -> int:
        """File offset of byte 0 of the mapping."""
        return self._offset

    @property
    def access(self) -> str:
        return "write" if self._writable else "read"

    @property
    def closed(self) -> bool:
        return self._state != "open"

    @property
    def span(self) -> tuple[int, int]:
        """Virtual address range the mapping owns (page-rounded)."""
        return self.address, self.address + self._span_len

    def _check(self) -> None:
        if self._state != "open":
            raise ValueError(f"mapping of {self._file.path} is {self._state}{self._why}")

    def __len__(self) -> int:
        return int(self.length)

    def __getitem__(self, index: Any) -> Any:
        self._check()
        with memoryview(self) as view:
            item = view[index]
            return bytes(item) if isinstance(item, memoryview) else item

    def __setitem__(self, index: Any, value: Any) -> None:
        self._check()
        if not self._writable:
            raise TypeError("cannot modify read-only memory (mapping opened with access='read')")
        with memoryview(self) as view:
            view[index] = value

    # -- numpy --------------------------------------------------------------------------

    def asarray(
        self, dtype: npt.DTypeLike, shape: int | tuple[int, ...] | None = None, offset: int = 0
    ) -> npt.NDArray[Any]:
        """A zero-copy numpy array over the mapping (its buffer counts as an export).

        Raises:
            InvalidArgument: dtype, shape or offset do not fit in the mapping.
        """
        self._check()
        try:
            kind = np.dtype(dtype)
        except TypeError as exc:
            raise InvalidArgument(f"bad dtype {dtype!r}: {exc}") from None
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise InvalidArgument(f"offset must be a non-negative integer, not {offset!r}")
        room = self.length - offset
        if room < 0:
            raise InvalidArgument(f"offset {offset} is beyond the mapping of {self.length} bytes")
        if shape is None:
            if kind.itemsize == 0 or room % kind.itemsize:
                raise InvalidArgument(
                    f"{room} bytes after offset {offset} are not a whole number of {kind}"
                )
            count = room // kind.itemsize
            dims: tuple[int, ...] = (count,)
        else:
            dims = (shape,) if isinstance(shape, int) else tuple(shape)
            if any(not isinstance(d, int) or d < 0 for d in dims):
                raise InvalidArgument(f"bad shape {shape!r}")
            count = int(np.prod(dims, dtype=np.int64))
            if count * kind.itemsize > room:
                raise InvalidArgument(
                    f"shape {dims} of {kind} needs {count * kind.itemsize} bytes, "
                    f"{room} are mapped after offset {offset}"
                )
        array: npt.NDArray[Any] = np.frombuffer(
            memoryview(self), dtype=kind, count=count, offset=offset
        )
        return array.reshape(dims)

    # -- msync --------------------------------------------------------------------------

    def msync(self, offset: int = 0, length: int | None = None, *, flags: int = MS_SYNC) -> None:
        """Make exactly ``[offset, offset+length)`` of the mapping durable.

        Cache-line granular on the CPU path, page granular on the msync path;
        never the whole file, never other files.  ``length=None`` means to the
        end; ``length=0`` does nothing, as msync(2).

        Raises:
            InvalidArgument (EINVAL): unknown flags, MS_SYNC with MS_ASYNC, or a
                range outside the mapping.
            OSError (ENOMEM): part of the range was detached by a truncate or
                punch-hole of the file.
            IOFailure (EIO): the device failed to flush (naming the file).
        """
        dev = self._fast_dev
        if (
            dev is not None
            and flags == MS_SYNC
            and type(offset) is int
            and type(length) is int
            and offset >= 0
            and length > 0
            and offset + length <= self._len
        ):  # the whole mapping is one extent: straight to the device
            try:
                self._persist(dev + offset, length)
            except OSError:
                with naming(self._file.path):
                    raise
            return
        if (
            not isinstance(flags, int)
            or flags & ~_MS_KNOWN
            or (flags & MS_SYNC and flags & MS_ASYNC)
        ):
            raise InvalidArgument(f"msync: invalid flags {flags!r}")
        self._check()
        if length is None:
            length = self.length - offset if isinstance(offset, int) else -1
        start, end = self._range(offset, length, "msync")
        if start == end:
            return
        device = self._data.device
        detached: tuple[int, int] | None = None
        with naming(self._file.path):
            for piece in self._covering(start, end):
                lo = max(start, piece.start)
                hi = min(end, piece.start + piece.length)
                if piece.detached:  # as Linux: the rest is still written back, then ENOMEM
                    detached = detached or (lo, hi)
                elif piece.dev is not None:  # (None: the zero page of a hole, read-only)
                    device.flush(piece.dev + lo - piece.start, hi - lo)
            if not flags & MS_ASYNC:
                device.drain()
        if detached is not None:
            raise OSError(
                errno.ENOMEM,
                f"msync: bytes [{detached[0]}, {detached[1]}) of the mapping of "
                f"{self._file.path} were detached by a truncate or hole punch",
                self._file.path,
            )

    def _range(self, offset: object, length: object, op: str) -> tuple[int, int]:
        for value, what in ((offset, "offset"), (length, "length")):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InvalidArgument(f"{op}: {what} must be a non-negative integer, not {value!r}")
        assert isinstance(offset, int)
        assert isinstance(length, int)
        if offset + length > self.length:
            raise InvalidArgument(
                f"{op}: range [{offset}, {offset + length}) is outside the mapping of "
                f"{self.length} bytes"
            )
        return offset, offset + length

    def _covering(self, start: int, end: int) -> list[Piece]:
        pieces = self._pieces
        if len(pieces) == 1:
            return pieces
        i = max(0, bisect.bisect_right(self._starts, start) - 1)
        out = []
        while i < len(pieces) and pieces[i].start < end:
            out.append(pieces[i])
            i += 1
        return out

    # -- changes from the filesystem ------------------------------------------------------

    def _file_window(self, start: int, end: int) -> tuple[int, int] | None:
        """Mapping-relative page range covering file bytes [start, end), if any."""
        lo = max(start, self._offset) - self._offset
        hi = min(end, self._offset + self._span_len) - self._offset
        if lo >= hi:
            return None
        return lo - lo % PAGE_SIZE, page_up(hi)

    def detach_file_range(self, start: int, end: int) -> Callable[[], None]:
        """Replace the pages over file bytes [start, end) by private zero pages.

        Called by the filesystem, with the inode locked, in the transaction
        that frees or zeroes the blocks under them, once only its commit can
        fail.  Whole pages only: ``start`` is page aligned by the caller
        (truncate keeps a partly used last page mapped).  Returns a function
        that maps the pages back as they were, for a transaction that aborts.
        """
        with self._lock:
            window = self._file_window(start, end)
            if window is None or self._state != "open":
                return _nothing
            lo, hi = window
            before = [_clip(p, lo, hi) for p in self._covering(lo, hi)]
            self._zero_pages(lo, hi)
            self._split(lo, hi, None, detached=True)
        return lambda: self._reattach(before)

    def _reattach(self, pieces: list[Piece]) -> None:
        """Map pieces back as ``detach_file_range`` found them (their blocks never changed)."""
        with self._lock:
            if self._state != "open":
                return
            for piece in pieces:
                if not piece.detached:  # detached before: stays so
                    self._map_piece(piece.start, piece.length, piece.dev)

    def refresh_file_range(self, start: int, end: int) -> None:
        """Map device blocks that writes gave to holes under [start, end) (read mappings)."""
        with self._lock:
            window = self._file_window(start, end)
            if window is None or self._state != "open":
                return
            lo, hi = window
            if any(p.dev is None and not p.detached for p in self._covering(lo, hi)):
                self._map_range(lo, hi)

    def _zero_pages(self, lo: int, hi: int) -> None:
        prot = PROT_READ | (PROT_WRITE if self._writable else 0)
        flags = MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS
        self._space.kernel.mmap(self.address + lo, hi - lo, prot, flags, -1, 0)

    def _map_piece(self, at: int, length: int, dev: int | None) -> None:
        """Map mapping bytes [at, at+length) (whole pages) to device offset ``dev``,
        or to the zero page (a hole, read-only)."""
        kernel = self._space.kernel
        if dev is not None:
            device = self._data.device
            self._data.store.ensure(dev, length)  # a lazily filled device loads it first
            prot = PROT_READ | (PROT_WRITE if self._writable else 0)
            kernel.mmap(
                self.address + at, length, prot, MAP_FIXED | device.map_flags, device.fd, dev
            )
        else:
            flags = MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS
            kernel.mmap(self.address + at, length, PROT_READ, flags, -1, 0)
        self._split(at, at + length, dev)

    def _map_range(self, lo: int, hi: int) -> None:
        """Map mapping bytes [lo, hi) (page aligned) from the file's current extents."""

        def actor(iomap: Iomap, pos: int, n: int) -> int:
            # extents are whole blocks, blocks are pages
            dev = iomap.addr_of(pos) if iomap.type is IomapType.MAPPED else None
            self._map_piece(pos - self._offset, n, dev)
            return n

        iomap_iter(
            self._data,
            self._inode,
            self._offset + lo,
            hi - lo,
            IomapFlags.FAULT,
            actor,
            short_ok=False,
        )

    def _split(self, lo: int, hi: int, dev: int | None, detached: bool = False) -> None:
        """Record that mapping bytes [lo, hi) are now ``dev`` (or a zero page)."""
        pieces = self._pieces
        if not pieces or pieces[-1].start + pieces[-1].length <= lo:  # mapping in order
            pieces.append(Piece(lo, hi - lo, dev, detached))
            self._starts.append(lo)
            self._update_fast()
            return
        out: list[Piece] = []
        for p in self._pieces:
            p_end = p.start + p.length
            if p_end <= lo or p.start >= hi:
                out.append(p)
                continue
            if p.start < lo:
                out.append(Piece(p.start, lo - p.start, p.dev, p.detached))
            if p_end > hi:
                shift = hi - p.start
                out.append(
                    Piece(hi, p_end - hi, None if p.dev is None else p.dev + shift, p.detached)
                )
        out.append(Piece(lo, hi - lo, dev, detached))
        out.sort(key=lambda p: p.start)
        self._pieces = out
        self._starts = [p.start for p in out]
        self._update_fast()

    def _update_fast(self) -> None:
        """Keep the msync fast path's device offset in step with the pieces and state."""
        pieces = self._pieces
        one = len(pieces) == 1 and self._state == "open"
        self._fast_dev = pieces[0].dev if one and not pieces[0].detached else None

    # -- pins ---------------------------------------------------------------------------

    def pin(self, offset: int, length: int) -> Any:
        """Pin ``[offset, offset+length)`` of the mapping: an SGList of its device extents.

        Raises:
            InvalidArgument: the range is outside the mapping, or bad values.
        """
        self._check()
        start, end = self._range(offset, length, "pin")
        return self._file.pin(self._offset + start, end - start)

    # -- lifecycle ------------------------------------------------------------------------

    def busy(self) -> bool:
        """True while buffers (memoryview, numpy) of the mapping are alive."""
        return int(self.exports) > 0

    def replaced(self, by: tuple[int, int]) -> None:
        """fixed='replace' mapped over us: unmap what is left, refuse everything after.

        Called with the registry locked, after ``release()`` succeeded; the
        rest (registry, file) happens in ``after_replaced``, which the new
        mapping's ``File.mmap`` calls once it holds no lock (daxfs.mm.vm).
        """
        with self._lock:
            lo, hi = self.span
            for a, b in ((lo, min(hi, by[0])), (max(lo, by[1]), hi)):
                if a < b:
                    self._space.kernel.munmap(a, b - a)
            self._state = "replaced"
            self._fast_dev = None
            self._why = f" by a fixed='replace' mapping at {by[0]:#x}"

    def after_replaced(self) -> None:
        """Let go of the file (its last hold may free it: caller holds no inode lock)."""
        self._detached_from_owners(touched=False)

    def close(self) -> None:
        """Unmap.  A writable mapping sets the file's modification time.

        Raises:
            BufferError: buffers of the mapping (memoryview, numpy) are alive;
                the mapping stays open.
        """
        with self._lock:  # against detach/refresh from a truncate in another thread
            if self._state != "open":
                return
            self.release()
            self._state = "closing"
            self._fast_dev = None
            self._space.kernel.munmap(self.address, self._span_len)
            self._state = "closed"
        self._detached_from_owners(touched=self._writable)

    def _detached_from_owners(self, touched: bool) -> None:
        REGISTRY.remove(self)
        if self._writeback is not None:  # stores may be in caches: fsync flushes them
            self._data.mapped_ranges.unmap(self._inode.ino, self._writeback)
            self._writeback = None
        self._file._mapping_closed(self, touched)


def _nothing() -> None:
    """The undo of a detach that detached nothing."""


def _clip(piece: Piece, lo: int, hi: int) -> Piece:
    """The part of ``piece`` inside mapping bytes [lo, hi)."""
    start = max(lo, piece.start)
    end = min(hi, piece.start + piece.length)
    dev = None if piece.dev is None else piece.dev + start - piece.start
    return Piece(start, end - start, dev, piece.detached)


def map_file(
    file: File,
    data: DataPath,
    offset: int,
    length: int | None,
    access: str,
    address: int | None,
    fixed: str | None,
    after_unlock: list[Callable[[], object]],
    space: AddressSpace | None = None,
) -> Mapping:
    """Map ``[offset, offset+length)`` of an open file; see File.mmap for the rules.

    Caller holds ``file.inode.lock``, and runs what is appended to
    ``after_unlock`` once it no longer does, whether this returns or raises:
    finishing the mappings a ``fixed="replace"`` one replaced (daxfs.mm.vm).
    """
    assert file.inode.lock._is_owned(), "caller must hold the inode lock"  # type: ignore[attr-defined]
    # stores through the mapping change the file behind its page cache, whichever File
    # maps it (daxfs.fs.filecache, invariant 4): the cached pages' stamp goes first
    file.inode.data_changed()
    space = space or AddressSpace()
    size = file.inode.rec.size
    offset, length, writable = _check(file, size, offset, length, access, address, fixed)
    if writable:
        data.prepare_map(file.inode, offset, offset + length)
    span = page_up(length)
    first = data.iomap_begin(file.inode, offset, length, IomapFlags.FAULT)
    align = first.addr_of(offset) if first.type is IomapType.MAPPED else None
    replaced: list[Any] = []
    addr = space.reserve(span, address, fixed, align, replaced=replaced)
    after_unlock.extend(victim.after_replaced for victim in replaced)
    mapping = Mapping._create(file, data, addr, length, offset, writable, space)
    try:
        mapping._map_range(0, span)
    except BaseException:
        mapping.release()
        space.kernel.munmap(addr, span)
        raise
    REGISTRY.add(mapping)
    if writable:
        inode = file.inode
        mapping._writeback = data.mapped_ranges.map(
            inode.ino, inode.rec.generation, offset, offset + length
        )
    return mapping


def _check(
    file: File,
    size: int,
    offset: object,
    length: object,
    access: object,
    address: object,
    fixed: object,
) -> tuple[int, int, bool]:
    where = file.path
    if access not in ACCESS:
        raise InvalidArgument(f"mmap access must be 'write' or 'read', not {access!r}", where)
    if fixed not in FIXED:
        raise InvalidArgument(f"fixed must be None, 'noreplace' or 'replace', not {fixed!r}")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise InvalidArgument(f"mmap offset must be a non-negative integer, not {offset!r}", where)
    if offset % PAGE_SIZE:
        raise InvalidArgument(f"mmap offset {offset} is not a multiple of {PAGE_SIZE}", where)
    if length is None:
        length = size - offset
    if isinstance(length, bool) or not isinstance(length, int) or length <= 0:
        raise InvalidArgument(f"mmap length must be a positive integer, not {length!r}", where)
    if offset + length > size:
        raise InvalidArgument(
            f"mmap of [{offset}, {offset + length}) is beyond the end of {where} ({size} bytes)",
            where,
        )
    if address is not None and (
        isinstance(address, bool)
        or not isinstance(address, int)
        or address <= 0
        or address % PAGE_SIZE
    ):
        raise InvalidArgument(f"address must be a positive multiple of {PAGE_SIZE}: {address!r}")
    if fixed is not None and address is None:
        raise InvalidArgument(f"fixed={fixed!r} needs an address")
    writable = access == "write"
    if writable and not file.writable():
        raise PermissionDenied(f"writable mapping of {where}, which is not open for writing", where)
    if not file.readable() and not writable:
        raise PermissionDenied(f"mapping of {where}, which is not open for reading", where)
    return offset, length, writable
