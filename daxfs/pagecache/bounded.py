"""BoundedBlockCache: a block-backed mount in bounded memory (``cache_size``).

Theory of operation
-------------------
``BlockCache`` (daxfs.block.cache) holds the whole device in a memfd, read
at open: a 100 GiB disk takes 100 GiB of DRAM and is read whole at mount.
This subclass keeps the memfd but fills it lazily, and sends file data that
only the copy methods touch through a page cache (daxfs.pagecache.cache)
instead.  Two pools: ``files`` (``cache_size`` bytes), where the
filesystem keeps an address space per regular file over the file's direct
I/O (daxfs.fs.filecache: buffered reads and writes of files), and the
device's own ``pages`` (a fixed DEVICE_POOL), for the file data of the
paths that still copy through this object (a mapped or pinned file, a
write the files' path declines, zeroing, a journaled overwrite applied).
Two pools, because the files' pool lock is taken before the journal lock
and this object's locks, which a commit's drain takes in the other order.

Each 4 KiB page of the device is in one of two modes, and only ever goes
from the first to the second:

    paged    (the start)   not in the memfd.  ``read``/``readinto``/``write``/
                           ``fill`` of it go through the page cache (READ and
                           WRITE bios of the block device; LRU eviction,
                           readahead); ``flush`` of it marks nothing: every
                           dirty page of the cache is written back by the
                           next ``drain``, before its FLUSH
    owned                  loaded into the memfd and never evicted: the
                           filesystem's metadata views, the journal, DAX
                           mappings and pins alias it, and C code reads it
                           without asking (the store's view, the journal's
                           committer)

``ensure(offset, length)`` makes a range owned: the page cache's pages of
it are written back and dropped (``invalidate``), then READ bios fill the
memfd from the device, then the pages are marked owned.  The filesystem
calls it before any access that does not go through the copy methods: the
lazy store's ``block``/``read`` (every metadata block, daxfs.fs.store),
the journal's region when the journal opens, DAX mmap and pins of a file
range (daxfs.mm).  The copy methods route each page by its mode.

So what a mount costs is what it touches: metadata and mapped ranges in
the memfd (never more than the device, never evicted), file data in at
most ``cache_size`` bytes.  The C read fast path (``native_region``) is off:
it would read file data and metadata from the memfd without ``ensure``;
the filesystem also turns off its other C readers of unloaded memory
(stat's miss path, the B+tree put) for a lazy store (``PmemStore.lazy``).

Durability is BlockCache's: ``drain`` first writes back every dirty page of
the page cache (WRITE bios), then the memfd's dirty runs, then FLUSHes --
so buffered file data is write-through at the filesystem's level (every
operation drains before it returns, as on pmem: docs/GUARANTEES.md).  A
page written back early (evicted to make room) is a store reaching media
before its fence, which the pmem model allows and the journal never relies
on against.

Invariants
  1. A page is owned only after its bytes in the memfd are the device's
     latest (the page cache's dirty copy written back first); an owned page
     is never punched or reloaded, so a view or mapping of it stays valid.
  2. The page cache never holds a dirty page of an owned page: the copy
     methods send owned pages to the memfd, and ``ensure`` invalidates the
     page cache range before it owns it (under ``_route_lock``, which every
     copy holds while it routes and copies).
  3. After ``drain`` returns, every byte written by a copy method before it
     was called, and every flushed owned byte, is durable (BlockCache's
     invariant 1 with the page cache's pages added before the FLUSH).
  4. A failed load (EIO, short) owns nothing and reaches the caller, naming
     the bytes; a failed page-cache write-back keeps its pages dirty.
"""

from __future__ import annotations

import contextlib
import mmap
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

from daxfs.block.bio import SECTOR_SHIFT, Bio, BioOp
from daxfs.block.cache import BlockCache, _merged, _named
from daxfs.block.device import BlockDevice
from daxfs.errors import InvalidArgument
from daxfs.pagecache.cache import (
    MIN_LIMIT,
    PAGE_SHIFT,
    PAGE_SIZE,
    AddressSpace,
    BlockBacking,
    PageCache,
)
from daxfs.pmem.device import check_range

if TYPE_CHECKING:
    from typing_extensions import Buffer

    from daxfs.pmem import _native

#: bytes of zeros ``fill`` writes through the page cache at a time
ZERO_CHUNK = 1 << 20
#: the device's own page cache (``BoundedBlockCache.pages``): a fixed size beside the
#: files' ``cache_size`` (the "fixed overhead" of the memory bound)
DEVICE_POOL = MIN_LIMIT


class BoundedBlockCache(BlockCache):
    """A ``BlockCache`` filled lazily, whose file data lives in a page cache of
    ``cache_size`` bytes; see the module docstring.

    Raises (construction):
        InvalidArgument (EINVAL): as BlockCache; ``cache_size`` not a size or
            below the page cache's minimum; logical blocks above 4 KiB.
        OSError(ENOMEM): ``cache_size`` above MemAvailable (both sizes named).
    """

    lazy = True

    def __init__(
        self,
        bdev: BlockDevice,
        cache_size: int | str,
        *,
        own: bool = False,
        readonly: bool | None = None,
        memory_limit: int | None = None,
    ) -> None:
        #: the pool of files' pages (daxfs.fs.filecache: an address space per file, over
        #: the file's direct I/O): ``cache_size`` bytes
        self.files = PageCache(cache_size, memory_limit=memory_limit)
        #: the pool of the block device's own address space (``pages``): device pages
        #: copied by ``read``/``write``/``fill`` -- file data of the paths that do not go
        #: through a file's space (a mapped or pinned file, a write too large or too
        #: fragmented for one out-of-place write, the zeroing of truncate and fallocate,
        #: a journaled overwrite applied in place) -- a fixed DEVICE_POOL bytes
        pool = PageCache(min(DEVICE_POOL, self.files.limit), memory_limit=memory_limit)
        try:
            self.pages: AddressSpace = pool.space(BlockBacking(bdev))
            super().__init__(bdev, own=own, readonly=readonly, load=False)
        except BaseException:
            pool.close()
            self.files.close()
            raise
        self.cache_size = self.files.limit
        npages = (self.size + PAGE_SIZE - 1) >> PAGE_SHIFT
        #: 1 for an owned page (loaded into the memfd), 0 for a paged one
        self._owned = bytearray(npages)
        self._route_lock = threading.RLock()
        # loads write the memfd even when the cache's own mapping is read-only
        self._loader = mmap.mmap(self._fd, self.size, mmap.MAP_SHARED)

    # -- modes ---------------------------------------------------------------------------

    @property
    def owned_bytes(self) -> int:
        """Bytes of the device loaded into the memfd (metadata, mapped ranges)."""
        return self._owned.count(1) << PAGE_SHIFT

    def native_region(self) -> _native.Region | None:
        """None: the C readers would read pages that were never loaded."""
        return None

    def raw_view(self) -> memoryview:
        """The whole memfd as one view, loading nothing: the lazy store's view, whose
        every access is preceded by ``ensure`` of its range (daxfs.fs.store)."""
        self._check_open()
        return self._view[:]

    def direct_access(self, offset: int, length: int) -> memoryview:
        self.ensure(offset, length)
        return super().direct_access(offset, length)

    def ensure(self, offset: int, length: int) -> None:
        """Make ``[offset, offset+length)`` owned: loaded into the memfd from the
        device (after the page cache's copy of it was written back and dropped).

        Raises:
            OSError: a READ bio or the page cache's write-back failed (EIO naming
                the bytes); nothing of the failing run is owned.
            InvalidArgument (EINVAL): a range outside the device.
            ValueError: the cache is closed.
        """
        self._check_open()
        check_range(offset, length, self.size)
        if not length:
            return
        first, last = offset >> PAGE_SHIFT, (offset + length - 1) >> PAGE_SHIFT
        owned = self._owned
        if owned.find(0, first, last + 1) < 0:
            return
        with self._route_lock:
            for lo, hi, is_owned in list(self._runs(first, last + 1)):
                if not is_owned:
                    self._load_pages(lo, hi)

    def _load_pages(self, lo: int, hi: int) -> None:
        """Own pages ``[lo, hi)``. Caller must hold the route lock."""
        start, end = lo << PAGE_SHIFT, min(hi << PAGE_SHIFT, self.size)
        self.pages.invalidate(start, end - start)
        with memoryview(self._loader) as whole:
            bio = Bio(BioOp.READ, start >> SECTOR_SHIFT, [whole[start:end]])
            try:
                self.bdev.submit_bio(bio)
                bio.wait()
            except OSError as exc:
                raise _named(exc, f"loading bytes [{start}, {end}) of {self.path}") from exc
            finally:
                del bio
        self._owned[lo:hi] = b"\1" * (hi - lo)
        self.stats["loaded"] += end - start

    def _runs(self, first: int, end: int) -> Iterator[tuple[int, int, bool]]:
        """Runs ``(lo, hi, owned)`` of pages of one mode covering ``[first, end)``."""
        owned = self._owned
        lo = first
        while lo < end:
            mode = owned[lo]
            hi = owned.find(1 - mode, lo, end)
            hi = end if hi < 0 else hi
            yield lo, hi, bool(mode)
            lo = hi

    def _pieces(self, offset: int, length: int) -> Iterator[tuple[int, int, bool]]:
        """Byte pieces ``(start, end, owned)`` of ``[offset, offset+length)``."""
        first, last = offset >> PAGE_SHIFT, (offset + length - 1) >> PAGE_SHIFT
        for lo, hi, is_owned in self._runs(first, last + 1):
            yield max(offset, lo << PAGE_SHIFT), min(offset + length, hi << PAGE_SHIFT), is_owned

    # -- copies, routed by mode ----------------------------------------------------------

    def read(self, offset: int, length: int) -> bytes:
        self._check_open()
        check_range(offset, length, self.size)
        if length:
            first, last = offset >> PAGE_SHIFT, (offset + length - 1) >> PAGE_SHIFT
            with self._route_lock:
                if self._owned.find(1, first, last + 1) < 0:  # all paged: one call
                    return self.pages.read(offset, length)
        buf = bytearray(length)
        self.readinto(offset, buf)
        return bytes(buf)

    def readinto(self, offset: int, buffer: Buffer) -> int:
        self._check_open()
        with memoryview(buffer) as out, out.cast("B") as dst:
            n = len(dst)
            check_range(offset, n, self.size)
            if not n:
                return 0
            with self._route_lock:
                for start, end, is_owned in list(self._pieces(offset, n)):
                    part = dst[start - offset : end - offset]
                    if is_owned:
                        part[:] = self._view[start:end]
                    else:
                        self.pages.readinto(start, part)
            return n

    def write(self, offset: int, data: Buffer, *, drain: bool = True) -> None:
        self._check_open()
        self._check_writable()
        with memoryview(data) as src, src.cast("B") as flat:
            n = len(flat)
            check_range(offset, n, self.size)
            if n:
                with self._route_lock:
                    for start, end, is_owned in list(self._pieces(offset, n)):
                        part = flat[start - offset : end - offset]
                        if is_owned:
                            self._view[start:end] = part
                            self._mark(start, end - start)
                        else:
                            self.pages.write(start, part)
        if drain:
            self.drain()

    def fill(self, offset: int, length: int, byte: int = 0, *, drain: bool = True) -> None:
        self._check_fill(offset, length, byte)
        if length:
            pattern = bytes([byte]) * min(length, ZERO_CHUNK)
            with self._route_lock:
                for start, end, is_owned in list(self._pieces(offset, length)):
                    if is_owned:
                        self._view[start:end] = bytes([byte]) * (end - start)
                        self._mark(start, end - start)
                        continue
                    for pos in range(start, end, ZERO_CHUNK):
                        self.pages.write(pos, pattern[: min(ZERO_CHUNK, end - pos)])
        if drain:
            self.drain()

    def flush(self, offset: int, length: int) -> None:
        self._check_open()
        check_range(offset, length, self.size)
        if not length:
            return
        with self._route_lock:  # paged bytes: the next drain writes every dirty page
            for start, end, is_owned in list(self._pieces(offset, length)):
                if is_owned:
                    self._mark(start, end - start)

    # -- coherence with direct I/O (BlockCache.write_back / invalidate) --------------------

    def write_back(self, offset: int, length: int) -> None:
        """Before a direct read: the page cache's dirty pages of the range, and the
        owned bytes' dirty runs (as BlockCache), reach the device.

        Raises:
            as BlockCache.write_back.
        """
        self._check_open()
        check_range(offset, length, self.size)
        if length:
            with self._route_lock:
                self.pages.write_back(offset, length)
        super().write_back(offset, length)

    def invalidate(self, offset: int, length: int, data: Buffer | None = None) -> None:
        """After a direct write: owned bytes take the device's (as BlockCache); the
        page cache forgets paged bytes (``AddressSpace.forget``: its pages of the
        range are dropped, so the next read misses to the device -- the range lock
        of the write keeps buffered writes out -- and a dirty page only partly in
        the range takes the written bytes and keeps its own: nothing stale is ever
        written back over the direct write).

        Raises:
            as BlockCache.invalidate.
        """
        self._check_open()
        check_range(offset, length, self.size)
        if not length:
            return
        with self._route_lock, contextlib.ExitStack() as stack:
            flat = None
            if data is not None:
                flat = stack.enter_context(memoryview(data)).cast("B")
                stack.callback(flat.release)
                if len(flat) != length:
                    raise InvalidArgument(
                        f"invalidate of {length} bytes at {offset} given {len(flat)} bytes"
                    )
            for start, end, is_owned in list(self._pieces(offset, length)):
                part = None if flat is None else flat[start - offset : end - offset]
                if not is_owned:
                    self.pages.forget(start, end - start, part)
                else:
                    super().invalidate(start, end - start, part)

    # -- persistence ---------------------------------------------------------------------

    def _drain_more(self) -> bool:
        return self.pages.write_back() > 0

    def pending(self) -> list[tuple[int, int]]:
        """Dirty byte ranges: the memfd's flushed runs and the page cache's dirty pages."""
        return _merged(super().pending() + self.pages.dirty_ranges())

    # -- lifecycle -----------------------------------------------------------------------

    def discard(self) -> None:
        if not self.closed:
            self.pages.pool.close()
            self.files.close()
            with contextlib.suppress(BufferError):
                self._loader.close()
        super().discard()

    def close(self) -> None:
        if self._map is None:
            return
        super().close()  # drains (the page cache too); raises if views are alive
        self.pages.pool.close()
        self.files.close()
        self._loader.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{self.size} bytes, cache_size {self.cache_size}"
        return f"<BoundedBlockCache of {self.bdev.name} {state}>"
