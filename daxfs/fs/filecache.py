"""Buffered I/O of regular files atop their direct I/O: an address space per file.

Theory of operation
-------------------
On a mount bounded by ``cache_size`` (``BoundedBlockCache``) the buffered
reads and writes of a regular file go through an ``AddressSpace`` of that
file (daxfs.pagecache), keyed by FILE offset, in the cache's pool of files'
pages (``BoundedBlockCache.files``).  The space's ``Backing`` is the file's
direct I/O (``FileBacking``); the page cache has no I/O path of its own:

    read_pages(off, views)   iomap_begin per extent (DataPath, under
                             inode.lock) -> READ bios into the page slots for
                             MAPPED extents; zeros for holes, UNWRITTEN
                             extents and bytes past the end of file
    submit_pages(off, views) the asynchronous readahead: the range locked
                             shared (without waiting: None if it cannot be),
                             mapped as read_pages, the READ bios submitted,
                             and back without waiting (``_Readahead``: the
                             last bio's end releases the range lock)
    write_pages([(off, v)])  DirectIO.write_out_of_place: NEW blocks, WRITE
                             bios (FUA, or a FLUSH after), and ONE transaction
                             that maps them, frees the old ones and sets size
                             and times -- atomic: a crash before its commit
                             leaves the old bytes, after it the new
    flush()                  nothing: every write_pages is durable on return

Data flow::

    File.pread/read  -> FileCache.reader (HitReader: every page cached and
                        settled, one C call) else FileCache.read ->
                        space.readinto (hit: copy; miss: read_pages, then
                        the next window by submit_pages, not waited for)
    File.pwrite/write-> FileCache.write -> range lock (exclusive), then
                        space.write_through: the pages take the bytes (a
                        partly covered page read first), then ONE
                        write_pages of the whole page range; the pages stay
                        cached, clean

So a buffered write keeps daxfs's promise (docs/GUARANTEES.md): atomic and
durable on return, whatever it overwrites -- the direct overwrite in place
is not atomic, the out-of-place write is.  Nothing in a space is dirty once
an operation returned, so a direct read has nothing to write back first.

Why out of place (the design, and the alternatives rejected): journaling the
data (the DAX path's small overwrites) would send it through the buffer cache
and the log, twice the bytes; a direct overwrite in place tears at block
boundaries on a crash.  Writing new blocks and swinging the map in one
transaction is what XFS does for atomic writes; it costs a free run as long
as the write (ENOSPC falls back, below) and moves the file's blocks (its
extents stay contiguous when the allocator finds the run at the goal).

Routing: ``FileCache.routed(inode)``: a regular file with no DAX mapping, no
pin and no range a closed writable mapping left to flush.  Otherwise, and for
writes the out-of-place path declines (ENOSPC: the old path journals in place
in pieces; a range or free space in more than BATCH_EXTENTS pieces; more than
BOUNCE_MAX bytes), the file goes the DataPath way (through the block device's
own page cache) and its space is emptied.

Coherence: a space remembers the inode's (record, size, mtime, ctime) after its
last own change (``_Entry.stamp``), and the inode points at that stamp, weakly
(``Inode.space_stamp``).  Every other change of the file -- whoever makes it:
a File with or without the page cache, ``direct=True``, a path operation --
calls ONE function, ``Inode.data_changed`` (daxfs/fs/inode.py lists the
callers: ``InodeTable.dirty`` for every transaction, ``Journal.overwrite``,
the direct writes' completion, the registration of a mapping or a pin), which
sets the stamp's ``rec`` to None: the hit reader's ``rec is self.rec`` misses,
and ``space`` empties the space before its next use.  That does not rest on
the clock (a frozen or stepped-back ``time_ns`` used to hide a change) nor on
who changed the file.  The space's own writes dirty the inode too, and restamp
after (``_restamp``, under the same ``inode.lock`` hold).  Truncate and
fallocate through a File also empty the range at once (``changed``).  A space
belongs to one Inode object: a new file that reuses the inode number is
another Inode, so another space.

Locks: ``inode.lock``, then the range lock (a write), then the files' pool
lock -- let go for the write-back's ``write_pages`` (``write_through``: the
pages busy meanwhile) -- then the journal lock (in ``write_out_of_place``),
then the block cache's route lock and its own pool's.  No dirty page outlives an operation,
so eviction never writes back (which would take another file's locks).

Readahead in flight and the file's changes: a window holds a shared range
lock from before its iomap_begin until its last bio ended, so truncate,
punch, zero-range, a buffered or direct write of the range and mmap's
preparation (exclusive range locks) wait for it: no block is freed while a
bio reads it.  Their change then empties the range (``changed``, the
stamp), and dropping a page of a window waits for its bio first.  A File's
close waits for the space's windows (``settle``).

Invariants
  1. A space holds no dirty page outside ``write_through`` (which holds
     ``inode.lock`` and the range lock): what it caches is what the media
     holds, or the operation's error dropped it.
  2. A space is used only while its stamp matches its inode and the inode is
     routed; otherwise it is emptied first.
  3. ``write_pages`` of one run is one transaction: all the run or none of it.
  4. Every change of a file's data, size or block map, and every mapping or pin
     of it, calls ``Inode.data_changed`` with ``inode.lock`` held, in the hold
     that makes the change visible (a direct write: after its data reached the
     device): a stamp is restored only by ``space`` (which then empties the
     space) or by the space's own write (``_restamp``, which holds
     ``inode.lock`` from the space's check to the restamp, so no other change
     falls between).  While the file is mapped or pinned nothing restamps
     (only routed I/O does), so the hit paths miss until then.
"""

from __future__ import annotations

import contextlib
import errno
import threading
import weakref
from typing import TYPE_CHECKING

from daxfs.block.bio import SECTOR_SHIFT, Bio, BioOp
from daxfs.block.cache import _named
from daxfs.errors import NoSpace, WouldBlock
from daxfs.fs.data import MAX_FILE_SIZE, MAX_IO, DataPath
from daxfs.fs.direct import DirectIO, TooFragmented
from daxfs.fs.inode import Inode
from daxfs.fs.layout import BLOCK_SIZE, InodeRecord
from daxfs.fs.rangelock import RangeToken
from daxfs.iomap import IomapFlags, IomapType
from daxfs.pagecache.cache import PAGE_SHIFT, PAGE_SIZE, AddressSpace, Folio, PageCache

try:  # the re-read in C (optional: HitReader below is the reference)
    from daxfs.pagecache import _hit
except ImportError:
    _hit = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from typing_extensions import Buffer

assert BLOCK_SIZE == PAGE_SIZE, "a page is a block"

#: the largest buffered write done out of place (through a bounce buffer when it is more
#: than a quarter of the pool); a longer one goes the DataPath way
BOUNCE_MAX = 16 << 20


class _Entry:
    """A file's space and the stamp of its last own change (invariant 2): the inode's
    record object, size, mtime and ctime then."""

    #: None once the inode changed another way (``Inode.data_changed``)
    rec: InodeRecord | None

    __slots__ = ("__weakref__", "ctime", "folios", "inode", "mtime", "rec", "size", "space")

    def __init__(self, inode: Inode, space: AddressSpace) -> None:
        self.inode = inode
        self.space = space
        #: the space's folios (the re-read fast path's one lookup)
        self.folios = space.folios
        self.stamp()
        inode.space_stamp = weakref.ref(self)  # what Inode.data_changed clears (invariant 4)

    def stamp(self) -> None:
        rec = self.rec = self.inode.rec
        self.size, self.mtime, self.ctime = rec.size, rec.mtime_ns, rec.ctime_ns

    def matches(self) -> bool:
        rec = self.inode.rec
        return (
            rec is self.rec
            and rec.ctime_ns == self.ctime
            and rec.size == self.size
            and rec.mtime_ns == self.mtime
        )


class _Readahead:
    """One asynchronous readahead window of a file in flight (``Pending``): its READ
    bios, the shared range lock that keeps its blocks from being freed, and the
    slots' views.  The last bio's ``end_io`` (any thread: on io_uring the device's
    reaper, which must never wait for ``inode.lock``) releases the range lock at
    once if ``inode.lock`` is free, else on the engine's completion worker (as a
    lean direct read ends, daxfs.fs.direct), then marks the window ended.
    ``wait`` (the page cache, under its pool lock) waits for that, and the first
    time zeroes the bytes past the end of file and lets the views go."""

    def __init__(
        self,
        engine: DirectIO,
        inode: Inode,
        token: RangeToken | None,
        views: list[memoryview],
        offset: int,
        size: int,
        name: str,
    ) -> None:
        self._engine = engine
        self._inode = inode
        self._token = token
        self._views = views
        self._offset = offset
        #: the size when submitted: bytes past it read as zeros (as ``read_pages``)
        self._size = size
        self._name = name
        self._bios: list[Bio] = []
        self._left = 0
        self._lock = threading.Lock()
        self._ended = threading.Event()
        self._finished = False
        self.error: OSError | None = None

    def start(self, bios: list[Bio]) -> None:
        """Submit ``bios`` (none: the window is holes; ended at once). Caller must
        hold ``inode.lock``."""
        self._bios = bios
        if not bios:
            self._unlock()
            self._ended.set()
            return
        self._left = len(bios)
        bdev = self._engine.bdev
        with bdev.plug():
            for k, bio in enumerate(bios):
                bio.end_io = self._bio_done
                try:
                    bdev.submit_bio(bio)
                except OSError as exc:  # this one and the rest never start
                    self._failed(exc)
                    for _ in bios[k:]:
                        self._one_ended()
                    self._bios = bios[:k]
                    return

    def _failed(self, error: BaseException) -> None:
        with self._lock:
            if self.error is None:
                self.error = error if isinstance(error, OSError) else OSError(errno.EIO, str(error))

    def _bio_done(self, bio: Bio) -> None:
        if bio.status is not None:
            self._failed(bio.status)
        self._one_ended()

    def _one_ended(self) -> None:
        with self._lock:
            self._left -= 1
            last = self._left == 0
        if not last:
            return
        lock = self._inode.lock
        if lock.acquire(blocking=False):
            try:
                self._unlock()
            finally:
                lock.release()
        else:
            self._engine._worker_run(self._unlock_locked)
        self._ended.set()

    def _unlock_locked(self) -> None:
        with self._inode.lock:
            self._unlock()

    def _unlock(self) -> None:
        """Release the range lock. Caller must hold ``inode.lock``."""
        token, self._token = self._token, None
        self._engine.data.unlock_range(self._inode, token)

    def done(self) -> bool:
        return self._ended.is_set()

    def wait(self) -> None:
        if not self._finished:
            for bio in self._bios:  # (on io_uring: reaps in this thread, nested)
                with contextlib.suppress(OSError):
                    bio.wait()
            self._ended.wait()
            self._finished = True
            if self.error is None:
                at = self._offset
                for v in self._views:  # the last page's bytes past the end of file
                    if at < self._size < at + len(v):
                        v[self._size - at :] = bytes(at + len(v) - self._size)
                    at += len(v)
            for v in self._views:
                v.release()
            self._views = []
            self._bios = []
        if self.error is not None:
            raise _named(self.error, f"reading ahead {self._name}") from self.error


class FileBacking:
    """A regular file's direct I/O as its address space's ``Backing``."""

    def __init__(self, data: DataPath, engine: weakref.ref[DirectIO], inode: Inode) -> None:
        self.data = data
        #: the engine, weakly (it holds the FileCache that holds this backing)
        self._engine = engine
        self.inode = inode
        self.name = f"inode {inode.ino}"
        #: the end of the write in progress (its new size), 0 between writes
        self.grow = 0

    @property
    def size(self) -> int:
        """The file's size, or the end of the write in progress, rounded up to a page:
        pages are read and written whole (bytes past the end of file are zeros)."""
        end = max(self.inode.rec.size, self.grow)
        return (end + PAGE_SIZE - 1) & -PAGE_SIZE

    @property
    def readonly(self) -> bool:
        return self.data.journal.readonly

    @property
    def engine(self) -> DirectIO:
        engine = self._engine()
        if engine is None:
            raise ValueError("I/O through the page cache of an unmounted filesystem")
        return engine

    def read_pages(self, offset: int, views: list[memoryview]) -> None:
        """Fill ``views`` (consecutive pages from ``offset``) from the file: READ bios of
        the MAPPED extents (iomap_begin per extent), zeros elsewhere and past the end
        of file.  Caller must hold ``inode.lock`` (no block of the file can be freed
        meanwhile).

        Raises:
            OSError: a bio failed (EIO, short), naming the device bytes; Corrupted
                (EUCLEAN): the extent map failed verification.
        """
        size = self.inode.rec.size
        bios = self._map(offset, views)
        bdev = self.engine.bdev
        with bdev.plug():
            for bio in bios:
                bdev.submit_bio(bio)
        error: OSError | None = None
        for bio in bios:
            try:
                bio.wait()
            except OSError as exc:
                error = error or exc
        if error is not None:
            raise _named(error, f"reading {self.name}") from error
        at = offset
        for v in views:  # the bytes of the last page past the end of file read as zeros
            if at < size < at + len(v):
                v[size - at :] = bytes(at + len(v) - size)
            at += len(v)

    def _map(self, offset: int, views: list[memoryview]) -> list[Bio]:
        """READ bios of ``views`` (consecutive bytes from ``offset``, page-aligned, each
        view one page or a run of them) for the MAPPED extents, iomap_begin per
        extent (a view across an extent's end is cut there); zeros written into the
        views elsewhere and past the end of file.  Caller must hold ``inode.lock``.

        Raises:
            Corrupted (EUCLEAN): the extent map failed verification.
        """
        inode = self.inode
        data = self.data
        engine = self.engine
        size = inode.rec.size
        views = list(views)
        bios: list[Bio] = []
        pos, i = offset, 0
        total = sum(len(v) for v in views)
        while i < len(views):
            if pos >= size:
                for v in views[i:]:
                    v[:] = bytes(len(v))
                break
            iomap = data.iomap_begin(inode, pos, offset + total - pos, IomapFlags.NONE)
            start, group = pos, []
            while i < len(views) and pos < size and pos < iomap.end:
                v = views[i]
                if pos + len(v) > iomap.end:  # a run of pages across the extent's end
                    cut = iomap.end - pos
                    views[i : i + 1] = [v[:cut], v[cut:]]
                    v = views[i]
                group.append(v)
                pos += len(v)
                i += 1
            assert group, f"inode {inode.ino}: {iomap} does not cover a page at {pos}"
            if iomap.type is IomapType.MAPPED:
                addr = iomap.addr_of(start)
                engine.cache.write_back(addr, pos - start)
                bios.append(Bio(BioOp.READ, addr >> SECTOR_SHIFT, group))
            else:
                for v in group:
                    v[:] = bytes(len(v))
        return bios

    def submit_pages(self, offset: int, views: list[memoryview]) -> _Readahead | None:
        """Start reading ``views`` (consecutive pages from ``offset``) from the file and
        return without waiting: the asynchronous readahead (``AddressSpace._readahead``).
        The range is locked shared first (``DataPath.lock_range``, without waiting:
        None if it is locked exclusively -- a truncate, punch or write in flight --
        or past the end of file), then mapped as ``read_pages`` maps it: READ bios
        of the MAPPED extents, submitted, zeros elsewhere.  The range lock is held
        until the last bio ended, so no block of the range can be freed (and
        reused) while a bio reads it.  Caller must hold ``inode.lock``.

        Raises:
            Corrupted (EUCLEAN): the extent map failed verification (nothing in
                flight, nothing locked).
        """
        inode = self.inode
        data = self.data
        engine = self.engine
        size = inode.rec.size
        total = sum(len(v) for v in views)
        if offset >= size or not total:
            return None
        try:
            token = data.lock_range(
                inode, offset, offset + total, exclusive=False, nowait=True, create=True
            )
        except WouldBlock:
            return None
        try:
            bios = self._map(offset, views)
        except BaseException:
            data.unlock_range(inode, token)
            raise
        io = _Readahead(engine, inode, token, views, offset, size, self.name)
        io.start(bios)
        return io

    def write_pages(self, runs: list[tuple[int, list[memoryview]]]) -> None:
        """Each run out of place (``DirectIO.write_out_of_place``), the size growing to
        the write in progress's end: one transaction a run.  Caller must hold
        ``inode.lock`` and the range lock of the runs.

        Raises:
            as ``DirectIO.write_out_of_place``.
        """
        inode = self.inode
        size = max(inode.rec.size, self.grow)
        for offset, views in runs:
            self.engine.write_out_of_place(inode, offset, views, size)

    def flush(self) -> None:
        """Nothing: every ``write_pages`` was durable when it returned."""


class HitReader:
    """The re-read of a file's cached pages in one call: ``File``'s reader on a bounded
    mount (``File._reader``: ``pread``, ``preadinto``, ``read``, ``readinto`` and
    ``readall`` call it first), the reference of its C form ``_hit.HitReader``
    (daxfs/pagecache/_hit.c; tests/pagecache/test_hit.py holds the two to the same
    answer).

    A call answers when the inode's space's stamp matches (invariant 2) and every
    page of the range, clamped to the end of file, is a settled folio (no
    readahead in flight, no readahead marker): the bytes (the count), the hits
    counted, the folios referenced, the space's next sequential page noted -- as
    ``AddressSpace.readinto`` does; at or past the end of file b"" (0).  Anything
    else is a miss, None, with no effect: the caller takes the full path
    (``FileCache.read``), which raises what the arguments call for.  No I/O.

    Why the routing need not be checked here: mapping or pinning a file, through any
    File, clears the stamp (``Inode.data_changed``, invariant 4), as every other
    change of the file does, and nothing restamps until the file is routed again
    (the full path checks).
    """

    #: the most pages one call copies (as _hit.c's MAX_PAGES)
    MAX_PAGES = 256

    def __init__(self, spaces: dict[int, _Entry], pool: PageCache) -> None:
        self._spaces = spaces
        self.pool = pool

    def _found(self, inode: Inode, pos: int, n: int) -> tuple[_Entry, int] | None:
        """With ``inode.lock`` held: the entry whose stamp matches, and the range's end
        clamped to the size; None on a miss."""
        rec = inode.rec
        entry = self._spaces.get(inode.ino)
        if entry is None or entry.inode is not inode or entry.rec is not rec:
            return None
        if entry.ctime != rec.ctime_ns:  # (every change of size or mtime changes ctime too)
            return None
        return entry, min(pos + n, rec.size)

    def _copy(self, entry: _Entry, pos: int, end: int, dst: memoryview) -> bool:
        """Copy ``[pos, end)`` into ``dst`` if every page of it is settled and cached;
        with ``inode.lock`` held.  False on a miss (nothing copied)."""
        pool = self.pool
        first, last = pos >> PAGE_SHIFT, (end - 1) >> PAGE_SHIFT
        if last - first >= self.MAX_PAGES:
            return False
        with pool.lock:
            if pool._arena is None:
                return False
            folios = entry.folios
            found = [folios.get(i) for i in range(first, last + 1)]
            for folio in found:
                if folio is None or folio.io is not None or folio.mark:
                    return False
            mem = pool._mem
            at = pos
            for folio in found:
                assert folio is not None
                lo = at - (folio.index << PAGE_SHIFT)
                k = min(PAGE_SIZE - lo, end - at)
                src = (folio.slot << PAGE_SHIFT) + lo
                dst[at - pos : at - pos + k] = mem[src : src + k]
                if folio.fresh:  # (AddressSpace._touch)
                    folio.fresh = False
                else:
                    folio.referenced = True
                at += k
            pool.stats.hits += len(found)
            entry.space._ra_next = last + 1
            return True

    def pread(self, inode: object, n: object, pos: object, /) -> bytes | None:
        """Up to ``n`` bytes at ``pos``, or None on a miss."""
        if type(inode) is not Inode or type(n) is not int or type(pos) is not int:
            return None
        if n < 0 or pos < 0 or not inode.lock_made():
            return None
        with inode.lock:
            found = self._found(inode, pos, n)
            if found is None:
                return None
            entry, end = found
            if end <= pos:
                return b""
            index = pos >> PAGE_SHIFT
            if (end - 1) >> PAGE_SHIFT == index:  # one page: sliced straight to bytes
                pool = self.pool
                with pool.lock:
                    folio = entry.folios.get(index)
                    arena = pool._arena
                    if folio is None or folio.io is not None or folio.mark or arena is None:
                        return None
                    pool.stats.hits += 1
                    if folio.fresh:  # (AddressSpace._touch)
                        folio.fresh = False
                    else:
                        folio.referenced = True
                    entry.space._ra_next = index + 1
                    base = (folio.slot - index) << PAGE_SHIFT
                    return arena[base + pos : base + end]
            out = bytearray(end - pos)
            return bytes(out) if self._copy(entry, pos, end, memoryview(out)) else None

    def preadinto(self, inode: object, buffer: object, pos: object, /) -> int | None:
        """Fill ``buffer`` (a writable contiguous buffer) from ``pos``: the bytes copied,
        or None on a miss."""
        if type(inode) is not Inode or type(pos) is not int or pos < 0:
            return None
        try:
            view = memoryview(buffer)  # type: ignore[arg-type]
        except TypeError:
            return None
        with view:
            if view.readonly or not view.c_contiguous or not inode.lock_made():
                return None
            with view.cast("B") as dst, inode.lock:
                found = self._found(inode, pos, len(dst))
                if found is None:
                    return None
                entry, end = found
                if end <= pos:
                    return 0
                return end - pos if self._copy(entry, pos, end, dst) else None


def hit_reader(spaces: dict[int, _Entry], pool: PageCache, *, native: bool = True) -> HitReader:
    """The C ``_hit.HitReader`` over ``spaces`` and ``pool`` when it is built and takes
    these classes (else TypeError: a field it reads is no longer a ``__slots__``
    field), otherwise the Python ``HitReader``; ``native=False``: the Python one."""
    if native and _hit is not None:
        try:
            return _hit.HitReader(spaces, pool, Inode, InodeRecord, _Entry, Folio)  # type: ignore[return-value]
        except TypeError:
            pass
    return HitReader(spaces, pool)


class FileCache:
    """The address spaces of one mount's regular files; see the module docstring."""

    def __init__(self, data: DataPath, engine: DirectIO, pool: PageCache) -> None:
        self.data = data
        #: weakly: the engine holds this cache (``DirectIO.files``)
        self._engine = weakref.ref(engine)
        self.pool = pool
        #: ino -> the Inode's space and stamp
        self._spaces: dict[int, _Entry] = {}
        self._lock = threading.Lock()
        self._prune_at = 64
        #: the re-read of cached pages in one call (``File._reader``)
        self.reader = hit_reader(self._spaces, pool)
        #: writes that went the DataPath way, and why (tests, info)
        self.stats = {"fallback_nospace": 0, "fallback_fragmented": 0, "fallback_large": 0}

    # -- spaces ----------------------------------------------------------------------------

    def routed(self, inode: Inode) -> bool:
        """Whether ``inode``'s buffered I/O goes through its space (module docstring).
        Caller must hold ``inode.lock``."""
        layouts = inode.layouts
        return not (
            inode.mappings
            or (layouts is not None and layouts.pinned(0, MAX_FILE_SIZE))
            or self.data.mapped_ranges.ranges(inode.ino)
        )

    def space(self, inode: Inode) -> AddressSpace:
        """``inode``'s space, emptied first if the file changed behind it (invariant 2).
        Caller must hold ``inode.lock``."""
        with self._lock:
            entry = self._spaces.get(inode.ino)
            if entry is not None and entry.inode is inode:
                if entry.matches():
                    return entry.space
                entry.stamp()
            else:
                if entry is not None:  # the number was reused: the old file's pages go
                    entry.space.discard()
                space = self.pool.space(FileBacking(self.data, self._engine, inode))
                entry = self._spaces[inode.ino] = _Entry(inode, space)
                if len(self._spaces) >= self._prune_at:
                    self._prune()
        entry.space.discard()
        return entry.space

    def _prune(self) -> None:
        """Forget the spaces whose inode left the inode cache. Caller holds ``_lock``."""
        itable = self.data.itable
        for ino, entry in list(self._spaces.items()):
            if itable.cached(ino) is not entry.inode:
                entry.space.discard()
                del self._spaces[ino]
        self._prune_at = max(64, 2 * len(self._spaces))

    def _restamp(self, inode: Inode) -> None:
        with self._lock:
            entry = self._spaces.get(inode.ino)
            if entry is not None and entry.inode is inode:
                entry.stamp()

    def changed(self, inode: Inode, offset: int = 0, length: int | None = None) -> None:
        """The file's bytes in the range changed another way: its cached pages there
        go.  Caller must hold ``inode.lock``."""
        with self._lock:
            entry = self._spaces.get(inode.ino)
        if entry is not None and entry.inode is inode:
            entry.space.discard(offset, length)

    def forget(self, inode: Inode) -> None:
        """Empty ``inode``'s space (it is being mapped or pinned, or went away)."""
        self.changed(inode)

    def settle(self, inode: Inode) -> None:
        """Wait for the readahead of ``inode``'s space in flight (a File's close)."""
        with self._lock:
            entry = self._spaces.get(inode.ino)
        if entry is not None and entry.inode is inode:
            entry.space.settle()

    # -- I/O ---------------------------------------------------------------------------

    def read(self, inode: Inode, pos: int, view: memoryview) -> int:
        """Buffered read of ``view``'s length at ``pos`` (short at the end of file).
        Caller must hold ``inode.lock``; the inode is routed.

        Raises:
            OSError: a miss failed to read (EIO naming the bytes); nothing cached.
        """
        n = min(len(view), inode.rec.size - pos)
        if n <= 0:
            return 0
        return self.space(inode).readinto(pos, view[:n] if n < len(view) else view)

    def read_bytes(self, inode: Inode, pos: int, n: int) -> bytes:
        """``read`` into new bytes (up to ``n``).  Caller must hold ``inode.lock``.

        Raises:
            as ``read``.
        """
        n = min(n, inode.rec.size - pos)
        if n <= 0:
            return b""
        return self.space(inode).read(pos, n)

    def write(self, inode: Inode, pos: int, data: Buffer) -> int:
        """Buffered write, atomic and durable on return; the bytes written.  Caller must
        hold ``inode.lock``; the inode is routed.

        Raises:
            FileTooLarge (EFBIG), NoSpace (ENOSPC), OSError (EIO, EROFS): as
            DataPath.write; nothing written.
        """
        src = memoryview(data).cast("B")
        n = min(len(src), MAX_IO, max(0, MAX_FILE_SIZE - pos))
        if n == 0 or n > BOUNCE_MAX:
            if n:
                self.stats["fallback_large"] += 1
            return self._write_other_way(inode, pos, src)
        data_path = self.data
        end = pos + n
        # direct I/O in flight on the range waits (none can be without a range lock, and
        # none starts while inode.lock is held: DataPath.lock_range)
        token = data_path.lock_range(inode, pos, end)
        declined: str | None = None
        try:
            space = self.space(inode)
            if pos > inode.rec.size and (inode.rec.size >> PAGE_SHIFT) < (pos >> PAGE_SHIFT):
                # the old last block's tail (stores of a mapping once) must read as zeros
                data_path.zero_past_eof(inode, pos)
                self._restamp(inode)
            backing = space.backing
            assert isinstance(backing, FileBacking)
            backing.grow = end
            try:
                done = space.write_through(pos, src[:n])
            except NoSpace:
                declined = "fallback_nospace"
            except TooFragmented:
                declined = "fallback_fragmented"
            finally:
                backing.grow = 0
            if declined is None:
                self._restamp(inode)
                return done
        finally:
            data_path.unlock_range(inode, token)
        self.stats[declined] += 1  # nothing was written: the other way, in pieces if need be
        return self._write_other_way(inode, pos, src)

    def _write_other_way(self, inode: Inode, pos: int, src: memoryview) -> int:
        """DataPath.write (journaled or copy-on-write through the block device's own
        cache), the file's cached pages of the range dropped."""
        try:
            return self.data.write(inode, pos, src)
        finally:
            self.changed(inode, pos, len(src))


_MAKE_LOCK = threading.Lock()


def file_cache(data: DataPath, engine: DirectIO | None) -> FileCache | None:
    """The mount's FileCache (made on first use), or None: a DAX mount (no engine) or a
    block cache that holds the whole device (no pool of files' pages)."""
    if engine is None:
        return None
    cache = engine.files
    if cache is None:
        pool = getattr(data.device, "files", None)
        if not isinstance(pool, PageCache):
            return None
        with _MAKE_LOCK:
            cache = engine.files
            if cache is None:
                cache = engine.files = FileCache(data, engine, pool)
    return cache
