"""The page cache: folios in bounded DRAM, filled and written back by direct I/O.

Theory of operation
-------------------
Linux's buffered I/O has an I/O path of its own (``->readpage``,
``->writepage``); the 2014 discussion (topic 6 of ../shared/CONTEXT.md) asked
whether buffered I/O could instead live atop direct I/O, so that a filesystem
needs one data path, not two.  Here it does: the cache holds pages and
decides *what* to read or write, and a ``Backing`` -- the direct-I/O path of
the object cached -- does every transfer:

    PageCache        the pool: an arena of ``limit`` bytes (an anonymous
                     mapping, cut into 4 KiB slots), one LRU list of every
                     cached folio of every address space, the statistics
    AddressSpace     the cached pages of one object (a block device, a file):
                     folios by page index, the readahead state, and the
                     object's ``Backing``
    Backing          ``read_pages(offset, views)`` and ``write_pages(offset,
                     views)`` move whole pages by direct I/O (bios built over
                     the slots themselves: no copy, no bounce); ``flush()``
                     makes written pages durable (FLUSH); ``size`` bounds the
                     object.  ``BlockBacking`` is the one for a block device:
                     READ and WRITE bios, plugged, and a FLUSH bio;
                     ``FileBacking`` (daxfs.fs.filecache) a regular file's:
                     its direct reads, and an out-of-place direct write whose
                     one run is one transaction

A folio here is one page (4 KiB): its slot, its index, and whether it is
dirty.  Memory is the arena: at most ``limit`` bytes, whatever is read, plus
a fixed Python overhead per folio (a small object and a dict entry).

Data flow::

    read(off, n)  --hit--> copy from the folio (LRU: move to the tail)
                  --miss--> a run of missing pages, grown by readahead
                            -> slots (evicting) -> Backing.read_pages (READ
                            bios into the slots) -> folios -> copy out
    write(off, d) --> slots for the missing pages (a page the write covers
                      only partly is read first) -> copy in -> dirty
    write_back(r) --> dirty runs of r -> Backing.write_pages (WRITE bios
                      from the slots, plugged) -> clean
    sync(r)/fsync --> write_back, then Backing.flush (FLUSH)
    write_through --> write, then ONE write_pages run of the whole page
                      range (a bounce buffer past a quarter of the pool);
                      on an error the range's pages are dropped
    invalidate(r) --> write_back(r), then drop the folios of r (a direct
                      write of r follows: nothing stale stays cached)
    truncate(n)   --> drop the folios past n, zero the tail of the last page

Eviction takes the least recently used clean folio, LRU approximated as
Linux does: a hit only sets the folio's ``referenced`` bit, and eviction gives
a referenced folio a second chance (bit cleared, moved to the tail) instead
of taking it (CLOCK; moving a folio on every hit cost a third of a re-read).
When every folio is dirty, the oldest dirty ones are written back first (WRITE bios, no FLUSH:
durability is ``sync``'s job, as on Linux).  A folio's first read after it
was filled only clears its ``fresh`` bit; later reads set ``referenced``
(use-once: a sequential reader's pages, read once, go before the readahead
it has not read yet).

Readahead (Linux's ondemand readahead).  A miss at the page after the
previous read of the space, at the end of the last window, or at page 0 is
sequential.  With a backing that can only wait (``BlockBacking``) the run
read grows to a window that doubles per sequential miss (``RA_MIN`` pages up
to ``RA_MAX``).  With a backing that can submit without waiting
(``submit_pages``: a file's, daxfs.fs.filecache) it is asynchronous:

    sequential miss  read the pages needed (and waited for), then submit the
                     next window (``_readahead``: slots taken, folios inserted
                     with ``io`` set, its first page ``mark``-ed -- Linux's
                     PG_readahead) and return without waiting for it
    read of a page   wait for that window only (``_settle``); on its error the
      with ``io``    window's folios are dropped and the reader -- the one that
                     needs the page -- gets the error
    read of a page   the next window is submitted (from the end of the last,
      with ``mark``  the window doubling up to ``RA_ASYNC_MAX``), not waited for

A window stops at a cached page and the object's end; it is at most an
eighth of the pool, and the windows in flight at most a quarter
(``_pending``).  A folio with ``io`` is a cached page (the pool's bound
counts it) that nothing serves before it is settled, that eviction skips
while its bio is in flight, and whose drop (discard, truncate, a write over
it) waits for its bio first, so no slot is reused while a bio fills it.
``settle`` (a File's close) and ``PageCache.close`` wait for every window.

Durability.  The page cache itself is write-back: ``write`` returns with
the data in DRAM only, and ``sync``/``fsync`` make it durable.  A caller
that promises durable-on-return (the filesystem's promise, docs/GUARANTEES.md)
calls ``sync`` of its range before it returns, which makes its buffered
writes write-through; ``write(..., sync=True)`` does that.

Coherence with direct I/O of the same object: before a direct write of a
range the caller calls ``invalidate`` of it (dirty pages written back --
a partly covered page keeps its other bytes -- then dropped); before a
direct read, ``write_back`` of it.  Truncation calls ``truncate``.

Concurrency: one lock per pool, held across the I/O it issues and waits for
(an operation is atomic with respect to every other cache operation; simple,
and the re-read of cached data stays a dict lookup and a copy).  An
asynchronous window's bios end without it: their end only marks the window
ended (daxfs.fs.filecache's ``_Readahead``).

Invariants
  1. Resident folios never exceed ``limit // PAGE_SIZE``: a slot is taken
     from the free list only, and eviction is the only way one returns.
  2. A dirty folio is never dropped except by ``truncate`` past it, by
     ``discard``, or by a failed ``write_through`` (whose backing wrote none
     of the run: the caller's write failed whole): eviction writes it back
     first, and a failed write-back leaves it dirty and cached (the error
     reaches the caller whose operation needed the slot).
  3. A folio is served only after its bytes are valid: a synchronous READ
     that fails (EIO, a short completion) inserts nothing and its error,
     naming the byte range and the object, reaches the reader; a folio of an
     asynchronous window (``io`` set) is served by nobody until ``_settle``
     found its window ended well, and a failed window's folios are dropped,
     its error raised to the reader that needed one of them.
  4. Bytes past ``backing.size`` in the last page read as zeros and are
     never written (the views given to the backing stop at the size).
  5. Every folio is in exactly one space's ``folios`` and in the pool's LRU,
     or in neither (a space that was collected leaves its folios in the LRU
     only, dropped by eviction); the slot of a folio belongs to no other
     folio.  The pool refers to its spaces weakly, so no reference cycle
     keeps the arena alive after the last user let go.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import re
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from daxfs.block.bio import SECTOR_SHIFT, Bio, BioOp
from daxfs.block.cache import _named, memory_available
from daxfs.block.device import BlockDevice
from daxfs.errors import InvalidArgument, ReadOnly

if TYPE_CHECKING:
    from collections.abc import Iterator

    from typing_extensions import Buffer

PAGE_SIZE = 4096
PAGE_SHIFT = 12
#: readahead window: pages read on a sequential miss, doubling from RA_MIN to RA_MAX
RA_MIN = 4
RA_MAX = 64
#: the largest asynchronous readahead window (pages: 2 MiB), for a backing that can
#: submit reads without waiting (``Backing.submit_pages``); also at most an eighth of
#: the pool, and the windows in flight of a pool at most a quarter of it
RA_ASYNC_MAX = 512
#: the smallest cache (a readahead run and a write piece are each at most a quarter)
MIN_LIMIT = 16 * PAGE_SIZE


class Pending(Protocol):
    """An asynchronous read of pages in flight (what ``submit_pages`` returns)."""

    def done(self) -> bool:
        """Whether every bio of it has ended (``wait`` would not wait)."""

    def wait(self) -> None:
        """Wait for its end; the first time, also finish it (bytes past the end of
        file zeroed, the slots' views let go).  Raise its OSError, every time."""


class _Busy:
    """The ``io`` of a folio under ``write_through``'s write-back, done without the
    pool's lock (``AddressSpace._write_folios``): never done, never waited for --
    eviction skips it, and its space's users wait for the file's lock instead."""

    def done(self) -> bool:
        return False

    def wait(self) -> None:
        raise AssertionError("a folio under write-back was waited for as a readahead")


_BUSY = _Busy()


class Backing(Protocol):
    """The direct-I/O path of a cached object: whole pages, at page-aligned offsets.

    A backing may also have ``submit_pages(offset, views) -> Pending | None``:
    start reading ``views`` and return without waiting (None: not now, e.g. the
    range is locked); the page cache then reads ahead asynchronously."""

    name: str

    @property
    def size(self) -> int: ...

    @property
    def readonly(self) -> bool: ...

    def read_pages(self, offset: int, views: list[memoryview]) -> None:
        """Fill ``views`` (consecutive, from ``offset``) from the object; raise OSError."""

    def write_pages(self, runs: list[tuple[int, list[memoryview]]]) -> None:
        """Write each run ``(offset, views)``; raise the first OSError after all ended."""

    def flush(self) -> None:
        """Make every completed write durable (FLUSH); raise OSError."""


class BlockBacking:
    """A block device's direct I/O as a page cache's backing: READ/WRITE/FLUSH bios."""

    def __init__(self, bdev: BlockDevice) -> None:
        if bdev.limits.logical_block_size > PAGE_SIZE:
            raise InvalidArgument(
                f"block device {bdev.name}: logical blocks of "
                f"{bdev.limits.logical_block_size} bytes exceed the page ({PAGE_SIZE})"
            )
        self.bdev = bdev
        self.name = bdev.name
        #: a block device's size is fixed: a plain attribute (the re-read path reads it)
        self.size = bdev.size

    @property
    def readonly(self) -> bool:
        return self.bdev.readonly

    def read_pages(self, offset: int, views: list[memoryview]) -> None:
        bio = Bio(BioOp.READ, offset >> SECTOR_SHIFT, views)
        self.bdev.submit_bio(bio)
        bio.wait()

    def write_pages(self, runs: list[tuple[int, list[memoryview]]]) -> None:
        bios = []
        with self.bdev.plug():
            for offset, views in runs:
                bio = Bio(BioOp.WRITE, offset >> SECTOR_SHIFT, views)
                bios.append(bio)
                self.bdev.submit_bio(bio)
        error: BaseException | None = None
        for bio in bios:  # wait for all, even after an error: they hold the slots' views
            try:
                bio.wait()
            except BaseException as exc:
                error = error or exc
        if error is not None:
            raise error

    def flush(self) -> None:
        self.bdev.flush()


@dataclass(eq=False, slots=True)
class Folio:
    """One cached page: ``slot`` in the arena, ``index`` in its space (``space_id``: the
    pool knows its spaces weakly, so folios and spaces make no reference cycle).
    (``__slots__``: the C re-read, daxfs.pagecache._hit, reads them.)"""

    space_id: int
    index: int
    slot: int
    dirty: bool = False
    #: hit since it was last considered for eviction (its second chance)
    referenced: bool = False
    #: read from the backing and not read by anyone yet: the first read only clears
    #: this, the next ones set ``referenced`` (use-once, as Linux's two steps from
    #: PG_referenced to the active list): a page a sequential reader reads once
    #: stays unreferenced, so eviction takes it before the readahead not read yet
    fresh: bool = False
    #: the asynchronous readahead that fills the slot (a ``Backing.submit_pages``
    #: handle), until a reader or a drop settles it (``AddressSpace._settle``): while
    #: set, the folio's bytes are not valid yet and nothing serves them
    io: Pending | None = None
    #: Linux's PG_readahead: the first page of an asynchronous readahead window; a
    #: read that reaches it submits the next window (``AddressSpace._readahead``)
    mark: bool = False


@dataclass(slots=True)
class Stats:
    """Counters of a pool (pages unless named otherwise)."""

    hits: int = 0
    misses: int = 0
    readahead: int = 0
    evictions: int = 0
    writeback: int = 0
    read_calls: int = 0
    write_calls: int = 0
    flushes: int = 0
    peak: int = 0
    extra: dict[str, int] = field(default_factory=dict)


def parse_size(text: str | int, what: str = "cache_size") -> int:
    """Bytes from ``text``: an int, or digits with an optional K, M, G or T suffix
    (powers of 1024; an optional trailing "iB" or "B").

    Raises:
        InvalidArgument (EINVAL): anything else, or a size of zero, naming ``what``.
    """
    if isinstance(text, bool):
        raise InvalidArgument(f"{what} must be a size, not {text!r}")
    if isinstance(text, int):
        value = text
    else:
        m = re.fullmatch(r"\s*(\d+)\s*([kKmMgGtT]?)(?:i?B)?\s*", str(text))
        if m is None:
            raise InvalidArgument(f"{what}={text!r} is not a size (like 65536, 64M or 1G)")
        value = int(m.group(1)) << (10 * " KMGT".index(m.group(2).upper() or " "))
    if value <= 0:
        raise InvalidArgument(f"{what} must be positive, not {text!r}")
    return value


def check_cache_size(
    limit: int | str, *, memory_limit: int | None = None, what: str = "cache_size"
) -> int:
    """``limit`` in bytes, if a pool of that size may be made here: ``PageCache``'s checks,
    which mount makes before it opens anything (daxfs.fs.devices).  ``memory_limit``
    stands for MemAvailable (read from /proc/meminfo; no bound where it cannot be).

    Raises:
        InvalidArgument (EINVAL): not a size, or below MIN_LIMIT (both named).
        OSError(ENOMEM): above MemAvailable (both sizes named).
    """
    size = parse_size(limit, what)
    if size < MIN_LIMIT:
        raise InvalidArgument(f"{what} of {size} bytes is below the minimum {MIN_LIMIT}")
    available = memory_available() if memory_limit is None else memory_limit
    if available is not None and size > available:
        raise OSError(
            errno.ENOMEM,
            f"{what} of {size} bytes is more than the {available} bytes of memory available",
        )
    return size


class PageCache:
    """A pool of at most ``limit`` bytes of pages shared by address spaces.

    Raises (construction):
        InvalidArgument (EINVAL): ``limit`` is not a size or is below MIN_LIMIT.
        OSError(ENOMEM): ``limit`` exceeds MemAvailable (both sizes named).
    """

    def __init__(self, limit: int | str, *, memory_limit: int | None = None) -> None:
        size = check_cache_size(limit, memory_limit=memory_limit)
        self.limit = size - size % PAGE_SIZE
        self.nslots = self.limit >> PAGE_SHIFT
        self._arena: mmap.mmap | None = mmap.mmap(-1, self.limit)
        self._mem = memoryview(self._arena)
        self._free = list(range(self.nslots - 1, -1, -1))
        #: every folio, least recently used first
        self._lru: OrderedDict[tuple[int, int], Folio] = OrderedDict()
        self.lock = threading.RLock()
        self.stats = Stats()
        #: the spaces by id, weakly: a space holds the pool, never the other way round
        self._spaces: weakref.WeakValueDictionary[int, AddressSpace] = weakref.WeakValueDictionary()
        self._next_space = 0
        #: asynchronous readahead windows not yet finished (``AddressSpace._finish``):
        #: their Pending -> (space id, first page, pages); ``_pending`` pages in all
        self._windows: dict[Pending, tuple[int, int, int]] = {}
        self._pending = 0

    # -- pool --------------------------------------------------------------------------

    @property
    def resident(self) -> int:
        """Bytes of cached pages now (the cache's own count, not RSS)."""
        return len(self._lru) << PAGE_SHIFT

    @property
    def dirty(self) -> int:
        """Bytes of dirty pages now."""
        return sum(PAGE_SIZE for f in self._lru.values() if f.dirty)

    def space(self, backing: Backing) -> AddressSpace:
        """A new address space of this pool over ``backing``."""
        self._check_open()
        self._next_space += 1
        space = AddressSpace(self, backing, self._next_space)
        self._spaces[space.ident] = space
        return space

    def slot_view(self, slot: int) -> memoryview:
        start = slot << PAGE_SHIFT
        return self._mem[start : start + PAGE_SIZE]

    def _check_open(self) -> None:
        if self._arena is None:
            raise ValueError("I/O operation on a closed page cache")

    def _take(self, n: int, keep: frozenset[tuple[int, int]] = frozenset()) -> list[int]:
        """``n`` free slots, evicting least recently used folios (not those in ``keep``).

        Caller must hold the lock.

        Raises:
            OSError: writing back dirty folios to make room failed (they stay dirty).
        """
        assert n <= self.nslots - len(keep), f"{n} slots asked of {self.nslots}"
        if len(self._free) < n:
            self._evict(n - len(self._free), keep)
        free = self._free
        slots = free[len(free) - n :]
        del free[len(free) - n :]
        slots.sort()  # consecutive slots: a run of pages is one view (``_run_views``)
        return slots

    def _victims(
        self, want: int, keep: frozenset[tuple[int, int]]
    ) -> tuple[list[Folio], list[Folio]]:
        """Clean and dirty candidates for eviction, least recently used first.  A hit
        only sets a folio's ``referenced`` bit (cheaper than moving it in the list on
        every re-read); here a referenced folio gets its second chance instead --
        its bit cleared, moved to the tail -- as Linux's PG_referenced (CLOCK)."""
        clean: list[Folio] = []
        dirty: list[Folio] = []
        for _ in range(2):  # a second pass when every old folio was referenced
            clean, dirty, second = [], [], []
            for key, folio in self._lru.items():
                if key in keep or (folio.io is not None and not folio.io.done()):
                    continue  # (a slot a readahead bio is filling is not free to take)
                if folio.referenced:
                    second.append(key)
                    continue
                (dirty if folio.dirty else clean).append(folio)
                if len(clean) >= want:
                    break
            for key in second:
                self._lru[key].referenced = False
                self._lru.move_to_end(key)
            if len(clean) + len(dirty) >= want:
                break
        return clean, dirty

    def _evict(self, want: int, keep: frozenset[tuple[int, int]]) -> None:
        clean, dirty = self._victims(want, keep)
        if len(clean) + len(dirty) < want and self._windows:
            for io in list(self._windows):  # the rest is in flight: wait for it, then again
                with contextlib.suppress(OSError):
                    io.wait()
            clean, dirty = self._victims(want, keep)
        if len(clean) < want:  # write back the oldest dirty folios, then evict them too
            need = dirty[: want - len(clean)]
            by_space: dict[int, list[Folio]] = {}
            for folio in need:
                by_space.setdefault(folio.space_id, []).append(folio)
            for ident, folios in by_space.items():
                space = self._spaces.get(ident)
                if space is not None:  # else the space is gone: nobody can read them
                    space._write_folios(folios)
            clean.extend(need)
        for folio in clean[:want]:
            space = self._spaces.get(folio.space_id)
            if space is not None:
                space._drop(folio)
            else:
                if folio.io is not None:  # (done: _victims takes no folio in flight)
                    self._forget_window(folio.io)
                del self._lru[(folio.space_id, folio.index)]
                self._free.append(folio.slot)
        self.stats.evictions += min(want, len(clean))

    def _forget_window(self, io: Pending) -> tuple[int, int, int] | None:
        """Take ``io``'s window out of the windows in flight (after its end). Caller
        must hold the lock."""
        window = self._windows.pop(io, None)
        if window is not None:
            self._pending -= window[2]
        return window

    def close(self) -> None:
        """Release the arena; dirty pages not written back are lost (call sync first)."""
        with self.lock:
            if self._arena is None:
                return
            for io in list(self._windows):  # no bio may fill a slot of a closed arena
                with contextlib.suppress(OSError):
                    io.wait()
            self._windows.clear()
            self._lru.clear()
            self._mem.release()
            self._arena.close()
            self._arena = None


class AddressSpace:
    """The cached pages of one object, read and written through its ``Backing``.

    Offsets are bytes of the object; any offset and length (buffered I/O has
    no alignment rule); reads stop at ``backing.size``.
    """

    def __init__(self, pool: PageCache, backing: Backing, ident: int) -> None:
        self.pool = pool
        self.backing = backing
        self.ident = ident
        self.folios: dict[int, Folio] = {}
        #: the readahead state (Linux's file_ra_state): the page after the last read
        #: (a miss there is sequential), the window's size in pages, and the page
        #: after the last window read or submitted (a miss there is sequential too)
        self._ra_next = -1
        self._ra_window = RA_MIN
        self._ra_end = -1

    # -- folios (caller holds the pool's lock) --------------------------------------------

    def _insert(self, index: int, slot: int, dirty: bool = False) -> Folio:
        folio = Folio(self.ident, index, slot, dirty)
        self.folios[index] = folio
        pool = self.pool
        pool._lru[(self.ident, index)] = folio
        if len(pool._lru) > pool.stats.peak:
            pool.stats.peak = len(pool._lru)
        return folio

    def _drop(self, folio: Folio) -> None:
        if folio.io is not None:  # its bio ends first: then the slot is free to take
            self._finish(folio.io)
        if self.folios.get(folio.index) is not folio:
            return  # dropped already (a failed readahead's window goes whole)
        del self.folios[folio.index]
        del self.pool._lru[(self.ident, folio.index)]
        self.pool._free.append(folio.slot)

    # -- asynchronous readahead (caller holds the pool's lock) ---------------------------

    def _finish(self, io: Pending) -> OSError | None:
        """Wait for the readahead ``io`` to end and settle its window: its folios' bytes
        are valid (``io`` cleared), or -- it failed -- every folio of it is dropped
        (invariant 3: nothing of a failed read stays cached).  Its error, or None."""
        try:
            io.wait()
            error = None
        except OSError as exc:
            error = exc
        window = self.pool._forget_window(io)
        if window is not None:
            _, first, count = window
            for index in range(first, first + count):
                folio = self.folios.get(index)
                if folio is None or folio.io is not io:
                    continue
                folio.io = None
                if error is not None:
                    folio.mark = False
                    self._drop(folio)
        return error

    def _settle(self, folio: Folio) -> None:
        """A reader needs ``folio``, whose readahead may be in flight: wait for that bio
        only.

        Raises:
            OSError: the readahead failed (EIO naming the bytes): the reader that
                needs the page gets the error; nothing of the window stays cached.
        """
        io = folio.io
        assert io is not None
        window = self.pool._windows.get(io)
        error = self._finish(io)
        if error is not None:
            first, count = (window[1], window[2]) if window is not None else (folio.index, 1)
            start = first << PAGE_SHIFT
            end = min((first + count) << PAGE_SHIFT, max(self.backing.size, start))
            raise _named(error, "reading ahead " + self._what(start, end)) from error

    def _settle_range(self, first: int, stop: int) -> None:
        """Finish the readahead of every folio of pages ``[first, stop)`` (a failed
        one's pages dropped, its error not raised): before a change of their bytes."""
        if not self.pool._windows:
            return
        for index in range(first, stop):
            folio = self.folios.get(index)
            if folio is not None and folio.io is not None:
                self._finish(folio.io)

    def _readahead(self, index: int, keep: frozenset[tuple[int, int]] = frozenset()) -> None:
        """Submit the asynchronous readahead window from page ``index`` (Linux's
        page_cache_async_ra), its first page marked (PG_readahead: a read that
        reaches it submits the next window), and return without waiting.  The
        window stops at a cached page, the object's end, and the pool's bounds
        (a window at most an eighth of the pool, the windows in flight at most a
        quarter), and evicts none of ``keep`` (the pages the caller reads now).
        Best effort: a backing that declines (the range locked) or fails to
        submit leaves the pages uncached, for the reader's own miss."""
        submit = getattr(self.backing, "submit_pages", None)
        pool = self.pool
        if submit is None or index < 0:
            return
        last = (self.backing.size - 1) >> PAGE_SHIFT
        room = min(
            self._ra_window, RA_ASYNC_MAX, pool.nslots // 8, pool.nslots // 4 - pool._pending
        )
        count = 0
        while count < room and index + count <= last and index + count not in self.folios:
            count += 1
        if count <= 0:
            return
        slots = pool._take(count, keep)
        views = self._run_views(index, slots)
        try:
            io = submit(index << PAGE_SHIFT, views)
        except OSError:
            io = None
        if io is None:
            for v in views:
                v.release()
            pool._free.extend(slots)
            return
        for i, slot in enumerate(slots):
            folio = self._insert(index + i, slot)
            folio.io, folio.fresh = io, True
        self.folios[index].mark = True
        pool._windows[io] = (self.ident, index, count)
        pool._pending += count
        pool.stats.readahead += count
        self._ra_end = index + count

    def settle(self) -> None:
        """Wait for every readahead of this space in flight (close, unmount)."""
        with self.pool.lock:
            for io, (ident, _, _) in list(self.pool._windows.items()):
                if ident == self.ident:
                    self._finish(io)

    def _touch(self, folio: Folio) -> None:
        """A read of ``folio``: its second chance at eviction (``PageCache._victims``),
        from its second read on (``Folio.fresh``)."""
        if folio.fresh:
            folio.fresh = False
        else:
            folio.referenced = True

    def _views(self, first: int, slots: list[int]) -> list[memoryview]:
        """The slots' views for pages ``first..``, the last cut at the object's size."""
        size = self.backing.size
        views = []
        for i, slot in enumerate(slots):
            start = (first + i) << PAGE_SHIFT
            n = min(PAGE_SIZE, size - start)
            views.append(self.pool.slot_view(slot)[:n])
        return views

    def _run_views(self, first: int, slots: list[int]) -> list[memoryview]:
        """The slots of pages ``first..`` as views for a read: one view per run of
        consecutive slots (fewer segments for the bios), the last cut at the
        object's size."""
        size = self.backing.size
        mem = self.pool._mem
        views = []
        i, count = 0, len(slots)
        while i < count:
            j = i + 1
            while j < count and slots[j] == slots[j - 1] + 1:
                j += 1
            start = (first + i) << PAGE_SHIFT
            base = slots[i] << PAGE_SHIFT
            views.append(mem[base : base + min((j - i) << PAGE_SHIFT, size - start)])
            i = j
        return views

    def _what(self, start: int, end: int) -> str:
        return f"bytes [{start}, {end}) of {self.backing.name} through the page cache"

    def _fill(self, first: int, count: int, keep: frozenset[tuple[int, int]] = frozenset()) -> None:
        """Read pages ``first .. first+count`` (none cached) into new folios (evicting
        none of ``keep``).

        Raises:
            OSError: the read failed (nothing inserted), naming the range.
        """
        pool = self.pool
        slots = pool._take(count, keep)
        try:
            views = self._run_views(first, slots)
            pool.stats.read_calls += 1
            try:
                self.backing.read_pages(first << PAGE_SHIFT, views)
            except OSError as exc:
                start = first << PAGE_SHIFT
                end = start + sum(len(v) for v in views)
                raise _named(exc, "reading " + self._what(start, end)) from exc
            finally:
                for v in views:
                    v.release()
        except BaseException:
            pool._free.extend(slots)
            raise
        for i, slot in enumerate(slots):
            self._insert(first + i, slot).fresh = True

    def _write_folios(self, folios: list[Folio], *, unlocked: bool = False) -> None:
        """Write dirty ``folios`` back (runs of consecutive pages, one bio each).

        ``unlocked`` (``write_through``): the pool's lock is let go for the
        backing's write (a file's: a transaction and its FLUSH or FUA), so that
        readers and writers of other objects do not wait for it; meanwhile the
        folios are busy (``io`` is ``_BUSY``: eviction skips them, no hit serves
        them), and the caller must keep this space's own users out (a file's
        ``inode.lock``).

        Raises:
            OSError: a write failed; every folio of the call stays dirty.
        """
        folios = sorted(folios, key=lambda f: f.index)
        runs: list[list[Folio]] = []
        for folio in folios:
            if runs and runs[-1][-1].index + 1 == folio.index:
                runs[-1].append(folio)
            else:
                runs.append([folio])
        pieces = [
            (run[0].index << PAGE_SHIFT, self._views(run[0].index, [f.slot for f in run]))
            for run in runs
        ]
        pool = self.pool
        try:
            pool.stats.write_calls += len(pieces)
            if unlocked:
                for folio in folios:
                    assert folio.io is None, f"{folio} is busy already"
                    folio.io = _BUSY
                try:
                    with self._unlocked():
                        self.backing.write_pages(pieces)
                finally:
                    for folio in folios:
                        folio.io = None
            else:
                self.backing.write_pages(pieces)
        except OSError as exc:
            start = folios[0].index << PAGE_SHIFT
            end = (folios[-1].index + 1) << PAGE_SHIFT
            raise _named(exc, "writing back " + self._what(start, end)) from exc
        finally:
            for _, views in pieces:
                for v in views:
                    v.release()
        for folio in folios:
            folio.dirty = False
        pool.stats.writeback += len(folios)

    @contextlib.contextmanager
    def _unlocked(self) -> Iterator[None]:
        """The pool's lock let go inside the block (every level this thread holds), and
        taken back after it, as ``threading.Condition.wait`` does."""
        lock = self.pool.lock
        state = lock._release_save()  # type: ignore[attr-defined]
        try:
            yield
        finally:
            lock._acquire_restore(state)  # type: ignore[attr-defined]

    # -- reads ---------------------------------------------------------------------------

    def read(self, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes at ``offset`` (fewer at the object's end).

        Raises:
            InvalidArgument (EINVAL): a negative offset or length.
            OSError: a miss failed to read (EIO naming the bytes); nothing cached.
        """
        pool = self.pool
        if type(offset) is int and type(length) is int and offset >= 0:
            # the common re-read: one cached page, one lookup, one copy (kept short: it
            # is most of the cost of a re-read, bench/pagecache.py)
            index = offset >> PAGE_SHIFT
            end = offset + length
            if length > 0 and (end - 1) >> PAGE_SHIFT == index and end <= self.backing.size:
                with pool.lock:
                    folio = self.folios.get(index)
                    arena = pool._arena
                    if (
                        folio is not None
                        and arena is not None
                        and folio.io is None
                        and not folio.mark
                    ):
                        pool.stats.hits += 1
                        self._touch(folio)
                        self._ra_next = index + 1
                        base = (folio.slot - index) << PAGE_SHIFT
                        return arena[base + offset : base + end]  # one copy, to bytes
        _check(offset, length)
        buf = bytearray(max(0, min(length, self.backing.size - offset)))
        n = self.readinto(offset, buf)
        return bytes(buf[:n])

    def readinto(self, offset: int, buffer: Buffer) -> int:
        """Fill ``buffer`` from ``offset``; the bytes read (short at the object's end).

        Raises:
            As ``read``.
        """
        with memoryview(buffer) as out, out.cast("B") as dst:
            _check(offset, len(dst))
            pool = self.pool
            with pool.lock:
                pool._check_open()
                end = min(offset + len(dst), self.backing.size)
                pos = offset
                while pos < end:
                    index = pos >> PAGE_SHIFT
                    folio = self.folios.get(index)
                    if folio is not None and (folio.io is not None or folio.mark):
                        if folio.io is not None:
                            self._settle(folio)  # its bio only; raises its error
                        if folio.mark:  # PG_readahead: the next window, not waited for
                            folio.mark = False
                            self._ra_window = min(self._ra_window * 2, RA_ASYNC_MAX)
                            self._readahead(
                                max(self._ra_end, index + 1), frozenset([(self.ident, index)])
                            )
                    if folio is None:
                        self._miss(index, end)
                        folio = self.folios[index]
                    else:
                        pool.stats.hits += 1
                    self._touch(folio)
                    # the run of settled folios in consecutive slots from here: one copy
                    slot, stop = folio.slot, index + 1
                    last = (end - 1) >> PAGE_SHIFT
                    while stop <= last:
                        nxt = self.folios.get(stop)
                        if nxt is None or nxt.io is not None or nxt.mark:
                            break
                        if nxt.slot != slot + stop - index:
                            break
                        self._touch(nxt)
                        stop += 1
                    pool.stats.hits += stop - index - 1
                    lo = pos - (index << PAGE_SHIFT)
                    n = min((stop - index) * PAGE_SIZE - lo, end - pos)
                    src = slot << PAGE_SHIFT
                    dst[pos - offset : pos - offset + n] = pool._mem[src + lo : src + lo + n]
                    pos += n
                if end > offset:
                    self._ra_next = (end - 1 >> PAGE_SHIFT) + 1
                return max(0, end - offset)

    def _miss(self, index: int, end: int) -> None:
        """Read the run of missing pages from ``index`` to the read's ``end``, grown by
        readahead. Caller must hold the lock."""
        pool = self.pool
        last = (self.backing.size - 1) >> PAGE_SHIFT  # the object's last page
        want = ((end - 1) >> PAGE_SHIFT) - index + 1  # pages the read itself needs
        sequential = index in (self._ra_next, self._ra_end) or index == 0
        if not hasattr(self.backing, "submit_pages") or not sequential:
            # synchronous readahead: the run read grows with the window (Linux's
            # page_cache_sync_ra of a backing that cannot read asynchronously)
            if sequential and index:
                self._ra_window = min(self._ra_window * 2, RA_MAX)
            else:
                self._ra_window = RA_MIN
            count = max(want, self._ra_window)
        else:  # the pages needed now, then the next window asynchronously
            self._ra_window = min(max(self._ra_window * 2, 2 * want), RA_ASYNC_MAX)
            count = max(want, RA_MIN)
        count = min(count, last - index + 1, max(1, pool.nslots // 4))
        n = 1
        while n < count and index + n not in self.folios:
            n += 1
        pool.stats.misses += min(n, want)
        pool.stats.readahead += max(0, n - want)
        self._fill(index, n)
        self._ra_end = index + n
        if sequential and index + n <= last and index + n not in self.folios:
            self._readahead(index + n, frozenset((self.ident, i) for i in range(index, index + n)))

    # -- writes --------------------------------------------------------------------------

    def write(self, offset: int, data: Buffer, *, sync: bool = False) -> int:
        """Copy ``data`` to ``offset`` in the cache (dirty); with ``sync`` also write it
        back and FLUSH before returning.  A write past the object's end is cut there.

        A write of more than a quarter of the cache is done in pieces; if a piece
        fails, the pieces before it stay written (dirty in the cache) and the
        error is raised.

        Raises:
            InvalidArgument (EINVAL): a negative offset; ReadOnly (EROFS).
            OSError: reading a partly written page, writing back to make room, or
                the sync failed (EIO naming the bytes).
        """
        with self._writing(offset, data) as (flat, end):
            pool = self.pool
            piece = max(PAGE_SIZE, (pool.nslots // 4) << PAGE_SHIFT)
            pos = offset
            while pos < end:
                stop = min(end, (pos // piece + 1) * piece)
                self._write_piece(pos, flat[pos - offset : stop - offset])
                pos = stop
            done = max(0, end - offset)
            if sync and done:
                self.sync(offset, done)
            return done

    @contextlib.contextmanager
    def _writing(self, offset: int, data: Buffer) -> Iterator[tuple[memoryview, int]]:
        """The start of every write (``write``, ``write_through``): EROFS if the backing
        is read-only, ``data`` as bytes and ``offset`` checked, then -- with the
        pool's lock held and the pool open -- the bytes and the end the object's
        size cuts them at.

        Raises:
            InvalidArgument (EINVAL): a negative offset; ReadOnly (EROFS).
        """
        if self.backing.readonly:
            raise ReadOnly(f"{self.backing.name} is read-only", self.backing.name)
        with memoryview(data) as src, src.cast("B") as flat:
            _check(offset, len(flat))
            pool = self.pool
            with pool.lock:
                pool._check_open()
                yield flat, min(offset + len(flat), self.backing.size)

    def _write_piece(self, offset: int, data: memoryview) -> None:
        """Caller must hold the lock; nothing changes if this raises."""
        pool = self.pool
        end = offset + len(data)
        first, last = offset >> PAGE_SHIFT, (end - 1) >> PAGE_SHIFT
        self._settle_range(first, last + 1)
        cached = frozenset((self.ident, i) for i in range(first, last + 1) if i in self.folios)
        # the partly covered, uncached edge pages must be read first (with all else kept)
        partial = []
        for index in {first, last}:
            start = index << PAGE_SHIFT
            whole = offset <= start and end >= min(start + PAGE_SIZE, self.backing.size)
            if index not in self.folios and not whole:
                partial.append(index)
        keep = set(cached)
        for index in sorted(partial):
            self._fill(index, 1, frozenset(keep))
            keep.add((self.ident, index))
        missing = [i for i in range(first, last + 1) if i not in self.folios]
        slots = pool._take(len(missing), frozenset(keep))
        for index, slot in zip(missing, slots, strict=True):
            self._insert(index, slot)
        for index in range(first, last + 1):
            folio = self.folios[index]
            start = index << PAGE_SHIFT
            lo, hi = max(offset, start), min(end, start + PAGE_SIZE)
            base = (folio.slot << PAGE_SHIFT) - start
            pool._mem[base + lo : base + hi] = data[lo - offset : hi - offset]
            folio.dirty = True
            self._touch(folio)

    def write_through(self, offset: int, data: Buffer) -> int:
        """Write ``data`` at ``offset`` and write it back before returning, as ONE run
        of ``Backing.write_pages``: for a backing whose ``write_pages`` of one run is
        atomic and durable (a file's: daxfs.fs.filecache), the write is too.  The
        pages of the range take the bytes (a page covered only in part is read
        first), go to ``write_pages`` together and stay cached, clean.  A range of
        more than a quarter of the pool is staged in a bounce buffer instead (its
        cached pages dropped first): still one run.  A write past the object's
        end is cut there (the caller sizes the backing first).

        Nothing of the space is dirty when this returns: if anything fails, every
        page of the range is dropped (dirty or not) and the error raised -- the
        next read gets what the backing holds.

        Raises:
            InvalidArgument (EINVAL): a negative offset; ReadOnly (EROFS).
            OSError: reading a partly covered page, or the write-back, failed
                (naming the bytes); what the backing raises.
        """
        with self._writing(offset, data) as (flat, end):
            if end <= offset:
                return 0
            pool = self.pool
            first, last = offset >> PAGE_SHIFT, (end - 1) >> PAGE_SHIFT
            try:
                self._settle_range(first, last + 1)
                if last - first < max(1, pool.nslots // 4):
                    self._write_piece(offset, flat[: end - offset])
                    self._write_folios(
                        [self.folios[i] for i in range(first, last + 1)], unlocked=True
                    )
                else:
                    self._write_bounced(offset, flat[: end - offset])
            except BaseException:
                self._forget_pages(first, last + 1)
                raise
            pool.stats.extra["write_through"] = pool.stats.extra.get("write_through", 0) + 1
            return end - offset

    def _write_bounced(self, offset: int, data: memoryview) -> None:
        """``write_through`` of a range too large for the pool: the edge pages (cached
        bytes, else read) and ``data`` in an anonymous bounce buffer, written back as
        one run; the range's cached pages dropped.  Caller must hold the lock."""
        size = self.backing.size
        end = offset + len(data)
        first, last = offset >> PAGE_SHIFT, (end - 1) >> PAGE_SHIFT
        start = first << PAGE_SHIFT
        stop = min((last + 1) << PAGE_SHIFT, size)
        bounce = mmap.mmap(-1, stop - start)
        buf = memoryview(bounce)
        try:
            for index in sorted({first, last}):
                at = index << PAGE_SHIFT
                n = min(PAGE_SIZE, size - at)
                if offset <= at and end >= at + n:
                    continue  # covered whole
                folio = self.folios.get(index)
                piece = buf[at - start : at - start + n]
                if folio is not None:
                    piece[:] = self.pool.slot_view(folio.slot)[:n]
                else:
                    try:
                        self.backing.read_pages(at, [piece])
                    except OSError as exc:
                        raise _named(exc, "reading " + self._what(at, at + n)) from exc
                piece.release()
            buf[offset - start : end - start] = data
            self._forget_pages(first, last + 1)
            whole = buf[: stop - start]
            try:
                self.pool.stats.write_calls += 1
                with self._unlocked():  # (nothing of the range is cached now)
                    self.backing.write_pages([(start, [whole])])
            except OSError as exc:
                raise _named(exc, "writing back " + self._what(start, stop)) from exc
            finally:
                whole.release()
        finally:
            buf.release()
            with contextlib.suppress(BufferError):  # a view the backing kept: GC closes it
                bounce.close()

    def _forget_pages(self, first: int, stop: int) -> int:
        """Drop every folio of pages ``[first, stop)``, dirty or not, with no I/O; the
        count dropped.  Caller must hold the lock."""
        if stop - first > len(self.folios):
            victims = [f for f in self.folios.values() if first <= f.index < stop]
        else:
            victims = [f for i in range(first, stop) if (f := self.folios.get(i)) is not None]
        for folio in victims:
            self._drop(folio)
        return len(victims)

    def discard(self, offset: int = 0, length: int | None = None) -> int:
        """Drop every page of the range (all by default), dirty or not, with no I/O;
        the pages dropped.  For a space whose object changed behind it (a file
        written another way) or went away: what it cached must never be read."""
        with self.pool.lock:
            if self.pool._arena is None:
                return 0
            if length is None:
                first, stop = offset >> PAGE_SHIFT, 1 << 62
            else:
                _check(offset, length)
                first = offset >> PAGE_SHIFT
                stop = (offset + length + PAGE_SIZE - 1) >> PAGE_SHIFT
            if self._ra_next >= first:
                self._ra_next = -1
            if self._ra_end >= first:
                self._ra_end = -1
            return self._forget_pages(first, stop)

    # -- write-back, coherence -----------------------------------------------------------

    def _dirty_in(self, offset: int, length: int) -> list[Folio]:
        first, end = offset >> PAGE_SHIFT, (offset + length + PAGE_SIZE - 1) >> PAGE_SHIFT
        if end - first > len(self.folios):
            return [f for f in self.folios.values() if f.dirty and first <= f.index < end]
        return [f for i in range(first, end) if (f := self.folios.get(i)) and f.dirty]

    def write_back(self, offset: int = 0, length: int | None = None) -> int:
        """Write the dirty pages of the range back (no FLUSH); the pages written.

        Before a direct read of the range.

        Raises:
            OSError: a write failed (EIO naming the bytes); the pages stay dirty.
        """
        with self.pool.lock:
            self.pool._check_open()
            length = self.backing.size - offset if length is None else length
            _check(offset, length)
            dirty = self._dirty_in(offset, length)
            if dirty:
                self._write_folios(dirty)
            return len(dirty)

    def sync(self, offset: int = 0, length: int | None = None) -> None:
        """``write_back`` of the range, then FLUSH: durable on return (fsync/fdatasync).

        Raises:
            OSError: a write or the FLUSH failed (EIO); written pages stay cached.
        """
        with self.pool.lock:
            self.write_back(offset, length)
            try:
                self.backing.flush()
            except OSError as exc:
                raise _named(exc, f"flushing {self.backing.name}") from exc
            self.pool.stats.flushes += 1

    def invalidate(self, offset: int = 0, length: int | None = None) -> int:
        """Write back, then drop, every cached page of the range; the pages dropped.

        Before a direct write of the range: afterwards nothing of it is cached.

        Raises:
            OSError: the write-back failed; nothing was dropped.
        """
        with self.pool.lock:
            self.pool._check_open()
            length = self.backing.size - offset if length is None else length
            self.write_back(offset, length)
            first, end = offset >> PAGE_SHIFT, (offset + length + PAGE_SIZE - 1) >> PAGE_SHIFT
            victims = [f for f in list(self.folios.values()) if first <= f.index < end]
            for folio in victims:
                self._drop(folio)
            return len(victims)

    def forget(self, offset: int, length: int, data: Buffer | None = None) -> int:
        """After a direct write of ``[offset, offset+length)``: nothing cached may show
        the range's old bytes.  A page wholly inside is dropped (dirty or not: the
        device has newer bytes); a page partly inside is dropped if clean, and if
        dirty keeps its bytes outside the range and takes the device's inside --
        ``data`` (what was written), or read back from the device without it.
        Returns the pages dropped.  Never writes a stale page back over the range.

        Raises:
            InvalidArgument (EINVAL): a bad range, or ``data`` not ``length`` bytes.
            OSError: the read back failed (EIO naming the bytes); that page is
                dropped (its dirty bytes outside the range are lost, and named).
        """
        _check(offset, length)
        with self.pool.lock, contextlib.ExitStack() as stack:
            src = None
            if data is not None:
                src = stack.enter_context(memoryview(data)).cast("B")
                stack.callback(src.release)
                if len(src) != length:
                    raise InvalidArgument(f"forget of {length} bytes given {len(src)} bytes")
            end = offset + length
            first, stop = offset >> PAGE_SHIFT, (end + PAGE_SIZE - 1) >> PAGE_SHIFT
            dropped = 0
            for folio in [f for f in list(self.folios.values()) if first <= f.index < stop]:
                start = folio.index << PAGE_SHIFT
                inside = offset <= start and end >= start + PAGE_SIZE
                if inside or not folio.dirty:
                    self._drop(folio)
                    dropped += 1
                    continue
                lo, hi = max(offset, start), min(end, start + PAGE_SIZE)
                base = (folio.slot << PAGE_SHIFT) - start
                part = self.pool._mem[base + lo : base + hi]
                if src is not None:
                    part[:] = src[lo - offset : hi - offset]
                    continue
                try:
                    self._read_part(lo, part)
                except OSError:
                    self._drop(folio)
                    raise
            return dropped

    def _read_part(self, offset: int, part: memoryview) -> None:
        """Read device bytes ``[offset, offset+len(part))`` into ``part`` through a
        bounce page (the backing reads whole pages)."""
        index = offset >> PAGE_SHIFT
        bounce = memoryview(mmap.mmap(-1, PAGE_SIZE))
        try:
            size = min(PAGE_SIZE, self.backing.size - (index << PAGE_SHIFT))
            what = self._what(index << PAGE_SHIFT, (index << PAGE_SHIFT) + size)
            try:
                self.backing.read_pages(index << PAGE_SHIFT, [bounce[:size]])
            except OSError as exc:
                raise _named(exc, "reading back " + what) from exc
            lo = offset - (index << PAGE_SHIFT)
            part[:] = bounce[lo : lo + len(part)]
        finally:
            bounce.release()

    def truncate(self, size: int) -> None:
        """The object is now ``size`` bytes: drop the pages past it (dirty or not) and
        zero the cached tail of the last page. Never raises for size >= 0."""
        _check(size, 0)
        with self.pool.lock:
            keep = (size + PAGE_SIZE - 1) >> PAGE_SHIFT
            for folio in [f for f in self.folios.values() if f.index >= keep]:
                self._drop(folio)
            self._settle_range(size >> PAGE_SHIFT, (size >> PAGE_SHIFT) + 1)
            tail = self.folios.get(size >> PAGE_SHIFT)
            if tail is not None and size % PAGE_SIZE:
                base = tail.slot << PAGE_SHIFT
                self.pool._mem[base + size % PAGE_SIZE : base + PAGE_SIZE] = bytes(
                    PAGE_SIZE - size % PAGE_SIZE
                )
            if self._ra_next > keep:
                self._ra_next = -1
            if self._ra_end > keep:
                self._ra_end = -1

    def dirty_ranges(self) -> list[tuple[int, int]]:
        """Byte ranges ``(start, end)`` of the dirty pages, sorted (not merged)."""
        with self.pool.lock:
            size = self.backing.size
            return [
                (i << PAGE_SHIFT, min((i + 1) << PAGE_SHIFT, size))
                for i in sorted(i for i, f in self.folios.items() if f.dirty)
            ]

    def cached(self, offset: int = 0, length: int | None = None) -> int:
        """Bytes of the range now cached (whole pages)."""
        with self.pool.lock:
            length = self.backing.size - offset if length is None else length
            first, end = offset >> PAGE_SHIFT, (offset + length + PAGE_SIZE - 1) >> PAGE_SHIFT
            return sum(PAGE_SIZE for i in self.folios if first <= i < end)

    def drop(self) -> None:
        """Forget every clean page (``invalidate`` of everything, without I/O for clean
        pages; dirty ones are written back first).

        Raises:
            OSError: the write-back failed; nothing was dropped.
        """
        self.invalidate(0, None)


def _check(offset: int, length: int) -> None:
    if not isinstance(offset, int) or not isinstance(length, int) or offset < 0 or length < 0:
        raise InvalidArgument(f"bad range: offset {offset!r}, length {length!r}")
