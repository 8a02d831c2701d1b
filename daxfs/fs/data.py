"""The DAX data path of regular files: read, write, truncate, fallocate, seek.

Theory of operation
-------------------
There is no page cache.  A read asks iomap for the extent under the file
position and copies straight from device memory into the caller's buffer
(``Device.readinto``: one memcpy, no intermediate bytes).  A write is one
transaction, so it is atomic and durable on return (docs/GUARANTEES.md):

* into a hole: allocate blocks, copy the data straight into them
  (non-temporal stores), zero what the data does not cover, map them;
* into an UNWRITTEN extent: copy into its blocks, zero the rest, mark written;
* over written data: journal the new bytes (``Transaction.log_data``): the
  redo record *is* the data, applied in place after the commit point; or, for
  overwrites larger than ``log_data_max``, copy-on-write: new blocks get the
  data (and the untouched head and tail of the old blocks), the map swings to
  them and the old blocks are freed, all in one transaction.  On a native
  device the copy of a large aligned overwrite runs on another core
  (``copier``, daxfs.fs._copy) while this one does the bookkeeping; the
  commit joins it before its first fence.

Every case writes only blocks that nothing committed refers to before the
commit point, so a crash leaves the old contents or the new, never a mix, and
never the old contents of another file's freed blocks.

Large truncates and deletes free blocks in batches of ``BATCH_EXTENTS``
extents, one transaction each; the inode sits on the orphan list with the
TRUNCATE flag meanwhile, so recovery finishes the job if power fails.

Locking: callers hold ``inode.lock`` (data path and size changes); each
change takes the journal lock through its transaction.  On an inode that has
a range lock (``inode.layouts.ranges``: it has had direct I/O or a pin;
daxfs.fs.rangelock), truncate, punch-hole, zero-range, mmap preparation and
writes off the in-place fast path also lock their byte range exclusively,
first (before waiting for pins), so they wait for direct I/O in flight there
and new direct I/O waits for them: no I/O reads or writes a block they free.

Direct I/O (daxfs.fs.direct) uses two more entry points: ``iomap_begin`` with
``IomapFlags.WRITE | IomapFlags.DIRECT`` allocates UNWRITTEN extents for a
hole in a transaction (as Linux's iomap direct-write path does), and
``direct_write_end`` is its iomap_end at completion: the extents written are
converted and the size and times set in one transaction.
"""

from __future__ import annotations

import contextlib
import itertools
from typing import TYPE_CHECKING

from daxfs.block.cache import BlockCache
from daxfs.errors import FileTooLarge, InvalidArgument, NoSpace, NotSupported, WouldBlock
from daxfs.fs.alloc import Allocator
from daxfs.fs.extmap import NO_BLOCK, BlockMaps, Extent
from daxfs.fs.inode import Inode, InodeTable, now_ns
from daxfs.fs.journal import Journal, Transaction
from daxfs.fs.layout import (
    BLOCK_SHIFT,
    BLOCK_SIZE,
    EXTENT_UNWRITTEN,
    IFLAG_TRUNCATE,
    InodeRecord,
)
from daxfs.fs.layout import MAX_FILE_SIZE as _MAX_FILE_SIZE
from daxfs.fs.layouts import Layouts
from daxfs.fs.rangelock import TO_END, RangeToken
from daxfs.fs.store import PmemStore, Reader
from daxfs.fs.writeback import Writeback
from daxfs.iomap import (
    Iomap,
    IomapExtentFlags,
    IomapFlags,
    IomapType,
    iomap_read_bytes,
    iomap_read_into,
)
from daxfs.pmem.device import Device

try:
    from daxfs.fs import _copy
except ImportError:  # the extension is optional: Device.write copies then
    _copy = None  # type: ignore[assignment]
else:
    _copy.set_error_class(InvalidArgument)

if TYPE_CHECKING:
    from typing_extensions import Buffer

    from daxfs.fs._copy import Copier
    from daxfs.pmem._native import ExtentReader

MAX_FILE_SIZE = _MAX_FILE_SIZE  # the format's limit (layout.py)
#: Largest write done in one call (atomically); larger writes return short, as write(2) may.
MAX_IO = 256 << 20
#: mounts made from now on copy copy-on-write overwrites on another core (daxfs.fs._copy)
#: on a native device; tests turn it off to compare with the synchronous Device.write
ASYNC_COPY = True
#: Extents unmapped per transaction when truncating or deleting.
BATCH_EXTENTS = 256
#: Blocks a direct write's iomap_begin allocates (UNWRITTEN) in one transaction at most.
DIRECT_ALLOC_BLOCKS = 2048

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10
_FALLOC_KNOWN = FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE

_ZEROS = bytes(BLOCK_SIZE)

Plan = list[tuple[int, int, Extent | None]]  # (first file block, count, extent or hole)


class _TooManyPieces(Exception):
    """A write's range has more than BATCH_EXTENTS pieces: write it in pieces."""


class DataPath:
    """Data operations on regular files; also the filesystem's iomap ops."""

    def __init__(
        self,
        device: Device,
        journal: Journal,
        alloc: Allocator,
        itable: InodeTable,
        maps: BlockMaps,
    ) -> None:
        self.device = device
        self.journal = journal
        self.store = journal.store
        self.alloc = alloc
        self.itable = itable
        self.maps = maps
        self.log_data_max = min(256 << 10, journal.capacity // 4)
        #: direct I/O holds a range lock across its bios only on a block-backed mount
        #: (daxfs.fs.direct; on DAX direct=True is DAX, under inode.lock): only there
        #: does a buffered write lock its range (``_write``)
        self.direct_io = isinstance(device, BlockCache)
        #: seconds an operation waits for pins on the blocks it changes (mount option)
        self.layout_timeout = 10.0
        #: file ranges that writable mappings may have left in CPU caches (fsync, sync)
        self.mapped_ranges = Writeback()
        #: the read fast path (C), or None when the device has no native region
        self.reader = extent_reader(device)
        #: the copy of a copy-on-write overwrite on another core (C), or None: the
        #: device has no native region in a flush or fence mode (the simulator, msync)
        self.copier = copier_for(device, self.store) if ASYNC_COPY else None
        if journal.committer is not None:
            # File.pwrite's fast path (Committer.pwrite): this method's overwrite case in C.
            # Unconfigured (a class lost a __slots__ field the C code reads), it misses
            # every time and File.pwrite takes this method, as extent_reader does for reads.
            with contextlib.suppress(TypeError):
                journal.committer.configure(
                    Inode, Extent, InodeRecord, itable.locations, self.log_data_max
                )

    # -- iomap ------------------------------------------------------------------------

    def iomap_begin(self, inode: Inode, pos: int, length: int, flags: IomapFlags) -> Iomap:
        """The extent under byte ``pos`` (see daxfs.iomap).

        With ``WRITE | DIRECT`` (a direct write), a hole under ``pos`` gets
        UNWRITTEN blocks first, in one transaction, for at most ``length``
        bytes (and DIRECT_ALLOC_BLOCKS blocks): the extent returned is then
        UNWRITTEN with the NEW flag.  The direct-I/O engine's completion
        converts what it wrote (``direct_write_end``).  Caller must hold
        ``inode.lock`` (and, for a direct write, the range lock of the range).

        Raises:
            NoSpace (ENOSPC): a direct write into a hole and no free blocks;
                nothing changed.
            Corrupted (EUCLEAN): the extent map failed verification.
        """
        if flags & IomapFlags.DIRECT and flags & IomapFlags.WRITE:
            return self._begin_direct_write(inode, pos, length)
        lblk = pos >> BLOCK_SHIFT
        ext = inode.xcache
        if not (isinstance(ext, Extent) and ext.lblk <= lblk < ext.end):
            found, nxt = self._lookup(inode, lblk)
            if found is None:
                end = min(nxt, MAX_FILE_SIZE >> BLOCK_SHIFT)
                return Iomap(lblk << BLOCK_SHIFT, (end - lblk) << BLOCK_SHIFT, IomapType.HOLE)
            ext = found
        kind = IomapType.UNWRITTEN if ext.flags & EXTENT_UNWRITTEN else IomapType.MAPPED
        return Iomap(
            ext.lblk << BLOCK_SHIFT, ext.length << BLOCK_SHIFT, kind, ext.pblk << BLOCK_SHIFT
        )

    def _begin_direct_write(self, inode: Inode, pos: int, length: int) -> Iomap:
        found = self.iomap_begin(inode, pos, length, IomapFlags.NONE)
        if found.type is not IomapType.HOLE:
            return found
        first = pos >> BLOCK_SHIFT
        stop = min(found.end >> BLOCK_SHIFT, _blocks_up(pos + length), first + DIRECT_ALLOC_BLOCKS)
        with self.journal.begin() as tx:
            self._preallocate(tx, inode, first, stop)
        iomap = self.iomap_begin(inode, pos, length, IomapFlags.NONE)
        assert iomap.type is IomapType.UNWRITTEN, f"inode {inode.ino}: {iomap} after allocation"
        iomap.flags |= IomapExtentFlags.NEW
        return iomap

    def direct_write_end(
        self, inode: Inode, pos: int, written: int, convert: list[tuple[int, int]]
    ) -> None:
        """The iomap_end of a direct write, at its completion: one transaction that
        marks file blocks ``convert`` (``(first, count)`` pairs, UNWRITTEN when the
        write began and now holding its data and zeros) written, grows the size
        to ``pos + written`` and sets mtime and ctime.  Caller must hold
        ``inode.lock`` and the write's range lock, and the data must be durable.

        Raises:
            NoSpace (ENOSPC): an extent split needs a map block that is not there.
            OSError (EIO): the commit failed (the journal turns read-only).
            Nothing changed in either case: the blocks stay UNWRITTEN (zeros).
        """
        with self.journal.begin() as tx:
            rec = self.itable.dirty(tx, inode)
            for lblk, count in convert:
                self.maps.convert(tx, inode, lblk, count)
            end = pos + written
            if end > rec.size:
                rec.size = end
            rec.mtime_ns = rec.ctime_ns = now_ns()

    def zero_past_eof(self, inode: Inode, pos: int) -> None:
        """Before a write at ``pos`` beyond the end of file: zero the old last block
        past the size (journaled, one transaction; nothing when the size is block
        aligned).  Caller must hold ``inode.lock`` and a range lock covering the
        old last block.

        Raises:
            OSError: the commit failed; nothing changed.
        """
        size = inode.rec.size
        if pos > size and size & (BLOCK_SIZE - 1):
            with self.journal.begin() as tx:
                self._zero_past_eof(tx, inode, size, pos)

    # -- range locks (daxfs.fs.rangelock) ---------------------------------------------

    @staticmethod
    def layouts_of(inode: Inode) -> Layouts:
        """The inode's Layouts (pins and range lock), made if it has none.  Caller must
        hold ``inode.lock``."""
        layouts = inode.layouts
        if layouts is None:
            layouts = inode.layouts = Layouts(inode.lock)
        return layouts

    def lock_range(
        self,
        inode: Inode,
        pos: int,
        end: int,
        *,
        exclusive: bool = True,
        timeout: float | None = None,
        nowait: bool = False,
        create: bool = False,
    ) -> RangeToken | None:
        """Lock file bytes ``[pos, end)`` in the inode's range lock, widened to whole
        blocks, and down to the block holding the size when ``pos`` is past it
        (a write there zeroes that block's tail first).  None (nothing locked)
        when the inode has no range lock and ``create`` is False: no direct I/O
        can be in flight then, and none can start while the caller holds
        ``inode.lock``.  Caller must hold ``inode.lock``; waiting releases it.

        Raises:
            Busy (EBUSY), WouldBlock (EAGAIN): as RangeLock.lock; nothing locked.
        """
        layouts = self.layouts_of(inode) if create else inode.layouts
        if layouts is None:
            return None
        ranges = layouts.ranges
        while True:
            lo = min(pos, inode.rec.size) >> BLOCK_SHIFT << BLOCK_SHIFT
            hi = TO_END if end >= TO_END else max(_blocks_up(end) << BLOCK_SHIFT, lo + 1)
            token = ranges.lock(lo, hi, exclusive, timeout=timeout, nowait=nowait)
            if min(pos, inode.rec.size) >= lo:  # the size did not shrink below it meanwhile
                return token
            ranges.unlock(token)

    @staticmethod
    def unlock_range(inode: Inode, token: RangeToken | None) -> None:
        """Release what ``lock_range`` locked. Caller must hold ``inode.lock``."""
        if token is not None:
            assert inode.layouts is not None
            inode.layouts.ranges.unlock(token)

    def _lookup(self, inode: Inode, lblk: int) -> tuple[Extent | None, int]:
        """``BlockMaps.lookup`` of ``lblk`` as the open transaction (else the store) sees
        it; the extent found becomes ``inode.xcache``."""
        found, nxt = self.maps.lookup(self.journal.current() or self.store, inode, lblk)
        if found is not None:
            inode.xcache = found
        return found, nxt

    def iomap_end(
        self, inode: Inode, pos: int, length: int, written: int, flags: IomapFlags, iomap: Iomap
    ) -> None:
        """Nothing to trim: the DAX path reserves nothing in begin."""

    # -- read -------------------------------------------------------------------------

    def read_into(self, inode: Inode, pos: int, buf: memoryview) -> int:
        """Copy file bytes at ``pos`` into ``buf`` (a byte view); return the count (0 at
        EOF).  The single-extent case is one C call (``self.reader``); the rest goes
        through ``iomap_read_into``.  Caller must hold ``inode.lock``.

        Raises:
            Corrupted (EUCLEAN): the extent map failed verification; OSError from the
                device.  Only if no byte was read: otherwise the read is short.
        """
        reader = self.reader
        if reader is not None:
            got = reader.preadinto(inode, buf, pos)
            if got is not None:
                return got
        n = min(len(buf), inode.rec.size - pos)
        if n <= 0:
            return 0
        return iomap_read_into(self, inode, pos, buf[:n], self.device.readinto)

    def read_bytes(self, inode: Inode, pos: int, n: int) -> bytes:
        """Up to ``n`` file bytes at ``pos`` as a new bytes object (one copy when the
        range lies in one extent).  Caller must hold ``inode.lock``.

        Raises:
            as ``read_into``.
        """
        reader = self.reader
        if reader is not None:
            data = reader.pread(inode, n, pos)
            if data is not None:
                return data
        n = min(n, inode.rec.size - pos)
        if n <= 0:
            return b""
        return iomap_read_bytes(self, inode, pos, n, self.device.read)

    # -- write ------------------------------------------------------------------------

    def write(self, inode: Inode, pos: int, data: Buffer) -> int:
        """Write ``data`` at ``pos`` atomically and durably; return bytes written.

        Caller must hold ``inode.lock``.  Writes longer than MAX_IO are short.

        Raises:
            FileTooLarge (EFBIG): ``pos`` at or beyond the maximum file size.
            NoSpace (ENOSPC): not enough free blocks; nothing was written.
        """
        ext = inode.xcache
        if type(ext) is not Extent or not (
            ext.lblk << BLOCK_SHIFT <= pos < (ext.lblk + ext.length) << BLOCK_SHIFT
        ):
            if not 0 <= pos < MAX_FILE_SIZE:
                return self._write(inode, pos, data)
            # the extent under pos, cached as iomap_begin caches it (no Iomap needed)
            found, _ = self._lookup(inode, pos >> BLOCK_SHIFT)
            if found is None:
                return self._write(inode, pos, data)
            ext = found
        if not ext.flags and not inode.layouts:
            # fast path: an overwrite inside one written extent, with no pin to
            # break, is one transaction of two redo records (Journal.overwrite)
            n = len(data) if type(data) is bytes else memoryview(data).nbytes
            start = ext.lblk << BLOCK_SHIFT
            end = pos + n
            if (
                start <= pos <= inode.rec.size
                and end <= (ext.lblk + ext.length) << BLOCK_SHIFT
                and 0 < n <= self.log_data_max
            ):
                self.journal.overwrite(
                    self.itable, inode, (ext.pblk << BLOCK_SHIFT) + pos - start, data, end
                )
                return n
            if n <= MAX_IO and end <= MAX_FILE_SIZE and not self.direct_io:
                # a larger write from inside the extent (copy-on-write, _cow_blocks, if it
                # is aligned): _write_locked without _write's checks, which it passes
                return self._write_locked(inode, pos, memoryview(data).cast("B"), n)
        return self._write(inode, pos, data)

    def _write(self, inode: Inode, pos: int, data: Buffer) -> int:
        """``write`` outside the fast path: holes, unwritten extents, copy-on-write."""
        src = memoryview(data).cast("B")
        if pos >= MAX_FILE_SIZE:
            raise FileTooLarge(f"offset {pos} is beyond the maximum file size {MAX_FILE_SIZE}")
        n = min(len(src), MAX_IO, MAX_FILE_SIZE - pos)
        # direct I/O in flight on the range: only on a block-backed mount (and None unless
        # direct I/O or pins were here)
        token = self.lock_range(inode, pos, pos + n) if self.direct_io else None
        try:
            return self._write_locked(inode, pos, src, n)
        finally:
            self.unlock_range(inode, token)

    def _write_locked(self, inode: Inode, pos: int, src: memoryview, n: int) -> int:
        self._break(inode, pos, pos + n, nowait=False)
        if inode.mappings:
            # blocks under a mapping never move (no copy-on-write), so a write is
            # journaled, at most log_data_max bytes per call (a short write)
            n = min(n, self.log_data_max)
        if n == 0:
            return 0
        try:
            with self.journal.begin() as tx:
                if not self._cow_blocks(tx, inode, pos, src[:n]):
                    filled = self.write_in(tx, inode, pos, src[:n])
                else:
                    filled = []
        except NoSpace:
            if n <= self.log_data_max:
                raise
            # too full for copy-on-write: overwrite in place, journaled piece by piece
            n, filled = self._write_in_pieces(inode, pos, src[:n])
        except _TooManyPieces:
            # the range crosses more extents and holes than one transaction should hold
            n, filled = self._write_in_pieces(inode, pos, src[:n])
        if filled and inode.mappings:
            for mapping in list(inode.mappings):
                for lo, hi in filled:
                    mapping.refresh_file_range(lo, hi)
        return n

    def _cow_blocks(self, tx: Transaction, inode: Inode, pos: int, src: memoryview) -> bool:
        """``write_in``'s copy-on-write of whole blocks inside one written extent, lean:
        the fast path of a large aligned overwrite (a sequential writer's pieces).

        When ``src`` covers whole blocks ``[first, first+count)``, all inside the
        extent ``inode.xcache`` (written, as ``write`` leaves it) and past
        ``log_data_max`` bytes, with no mapping and ``pos`` within the file: one
        ``Allocator.move`` (the new run allocated, the old freed, no superblock
        change), one copy into the new blocks (non-temporal), one map change
        (``BlockMaps.replace``), the record's times and size.  The same
        transaction as ``write_in`` makes for it, but for the superblock record
        (its counters do not change: ``move`` frees what it allocates) and the
        allocation goal (``_goal``, the same).  Returns False, with nothing done,
        when the case does not apply or no single free run is long enough: then
        ``write_in`` does the write in the same transaction.

        Raises:
            NoSpace, Corrupted: as ``write_in`` (the transaction aborts).
        """
        n = len(src)
        ext = inode.xcache
        if (
            n <= self.log_data_max
            or (pos | n) & (BLOCK_SIZE - 1)
            or type(ext) is not Extent
            or ext.flags
            or inode.mappings
        ):
            return False
        first = pos >> BLOCK_SHIFT
        count = n >> BLOCK_SHIFT
        rec = inode.rec
        if not (ext.lblk <= first and first + count <= ext.lblk + ext.length and pos <= rec.size):
            return False
        old = ext.pblk + first - ext.lblk
        copier = self.copier
        if copier is None:
            new = self.alloc.move(tx, old, count, self._goal(tx, inode, first))
            if new is None:
                return False
            self.device.write(new << BLOCK_SHIFT, src, drain=False)
        else:
            # the copy runs on another core from the moment move has chosen (and
            # marked) the new run, while this one does the bookkeeping below and the
            # commit's first steps; the commit joins it before its first fence (an
            # abort joins it too), and a copy error aborts the transaction
            tx.join_before_fence(copier.join)
            new = self.alloc.move(
                tx,
                old,
                count,
                self._goal(tx, inode, first),
                lambda run: copier.start(run << BLOCK_SHIFT, src),
            )
            if new is None:
                return False
        rec = self.itable.dirty(tx, inode)
        unmapped = self.maps.replace(tx, inode, first, count, [Extent(first, new, count)])
        gone = unmapped[0] if len(unmapped) == 1 else None
        want = (first, old, count, 0)  # xcache is the map's (extmap.py): what it said
        if gone is None or (gone.lblk, gone.pblk, gone.length, gone.flags) != want:
            raise AssertionError(f"inode {inode.ino}: unmapped {unmapped}, freed {old}+{count}")
        end = pos + n
        if end > rec.size:
            rec.size = end
        rec.mtime_ns = rec.ctime_ns = now_ns()
        # no more allocation or free in tx: the index learns its runs now, while the
        # copy runs, not after the commit (an abort drops the index instead)
        self.alloc.settle(tx)
        # the map's extent after these blocks becomes xcache (replace cleared it): a
        # sequential writer's next piece finds it there instead of looking it up before
        # its copy can start; an abort's record reload clears it again
        self._lookup(inode, first + count)
        return True

    def _write_in_pieces(
        self, inode: Inode, pos: int, src: memoryview
    ) -> tuple[int, list[tuple[int, int]]]:
        """Write in pieces of ``log_data_max`` bytes, each its own transaction.

        Used when the filesystem is too full for a copy-on-write overwrite, or
        the range crosses too many extents for one transaction: each piece is
        atomic, the whole call is not (docs/GUARANTEES.md).  Returns the bytes
        written (short if space ran out after the first piece) and the ranges
        that were holes.

        Raises:
            NoSpace: the first piece needs blocks that are not there.
        """
        filled: list[tuple[int, int]] = []
        done = 0
        step = self.log_data_max
        while done < len(src):
            try:
                with self.journal.begin() as tx:
                    piece = src[done : done + step]
                    filled += self.write_in(tx, inode, pos + done, piece, cow_ok=False)
            except NoSpace:
                if not done:
                    raise
                break  # a short write: what was written stays
            done += len(piece)
        return done, filled

    def write_in(
        self, tx: Transaction, inode: Inode, pos: int, src: memoryview, *, cow_ok: bool = True
    ) -> list[tuple[int, int]]:
        """The body of ``write``, inside the caller's transaction.

        Returns the file byte ranges that were holes and now have blocks.
        """
        n = len(src)
        end = pos + n
        first, stop = pos >> BLOCK_SHIFT, ((end - 1) >> BLOCK_SHIFT) + 1
        rec = self.itable.dirty(tx, inode)
        if pos > rec.size:
            self._zero_past_eof(tx, inode, rec.size, pos)
        plan = self._plan(tx, inode, first, stop)
        if len(plan) > BATCH_EXTENTS and cow_ok:
            raise _TooManyPieces  # DataPath.write then goes piece by piece (at most 65 each)
        overwrite = sum(c for _, c, e in plan if e is not None and not e.unwritten)
        cow = cow_ok and overwrite << BLOCK_SHIFT > self.log_data_max and not inode.mappings
        filled: list[tuple[int, int]] = []
        for lblk, count, ext in plan:
            lo = max(pos, lblk << BLOCK_SHIFT)
            hi = min(end, (lblk + count) << BLOCK_SHIFT)
            chunk = src[lo - pos : hi - pos]
            if ext is not None and not ext.unwritten and not cow:
                tx.log_data((ext.pblk << BLOCK_SHIFT) + lo - (lblk << BLOCK_SHIFT), chunk)
            elif ext is not None and ext.unwritten:
                self._fill(ext.pblk, lblk, count, lo, hi, chunk, None)
                self.maps.convert(tx, inode, lblk, count)
                filled.append((lblk << BLOCK_SHIFT, (lblk + count) << BLOCK_SHIFT))
            else:
                self._write_new(tx, inode, lblk, count, lo, hi, chunk, ext)
                if ext is None:
                    filled.append((lblk << BLOCK_SHIFT, (lblk + count) << BLOCK_SHIFT))
        rec.size = max(rec.size, end)
        rec.mtime_ns = rec.ctime_ns = now_ns()
        return filled

    def _plan(self, reader: Reader, inode: Inode, start: int, stop: int) -> Plan:
        """Split file blocks ``[start, stop)`` into holes and pieces of extents."""
        out: Plan = []
        cur = start
        for ext in list(self._extents_in(reader, inode, start, stop)):
            if ext.lblk > cur:
                out.append((cur, ext.lblk - cur, None))
                cur = ext.lblk
            piece = ext.slice(cur, stop)
            out.append((piece.lblk, piece.length, piece))
            cur = piece.end
        if cur < stop:
            out.append((cur, stop - cur, None))
        return out

    def _extents_in(self, reader: Reader, inode: Inode, start: int, stop: int) -> list[Extent]:
        out = []
        for ext in self.maps.extents(reader, inode, start):
            if ext.lblk >= stop:
                break
            out.append(ext)
        return out

    def _write_new(
        self,
        tx: Transaction,
        inode: Inode,
        lblk: int,
        count: int,
        lo: int,
        hi: int,
        chunk: memoryview,
        old: Extent | None,
    ) -> None:
        """Put file blocks ``[lblk, lblk+count)`` in new blocks (hole fill or copy-on-write)."""
        rec = self.itable.dirty(tx, inode)
        runs = self.alloc.alloc(tx, count, goal=self._goal(tx, inode, lblk))
        new: list[Extent] = []
        cur = lblk
        for start, length in runs:
            a = max(lo, cur << BLOCK_SHIFT)
            b = min(hi, (cur + length) << BLOCK_SHIFT)
            whole = a == cur << BLOCK_SHIFT and b == (cur + length) << BLOCK_SHIFT
            piece_old = old.slice(cur, cur + length) if old is not None and not whole else None
            self._fill(start, cur, length, a, b, chunk[a - lo : b - lo], piece_old)
            new.append(Extent(cur, start, length))
            cur += length
        if old is not None:  # one map change: the old blocks out, the new in
            for piece in self.maps.replace(tx, inode, lblk, count, new):
                self.alloc.free(tx, piece.pblk, piece.length)
                rec.blocks -= piece.length
        else:
            for ext in new:
                self.maps.insert(tx, inode, ext)
        rec.blocks += count

    def _goal(self, reader: Reader, inode: Inode, lblk: int) -> int | None:
        """Allocation goal: right after the extent before ``lblk`` (the one holding
        ``lblk - 1``, or the cached one ending before ``lblk``, plus the gap)."""
        ext = inode.xcache
        if isinstance(ext, Extent) and ext.lblk < lblk:
            return ext.pblk + ext.length + max(0, lblk - ext.end)
        found, _ = self.maps.lookup(reader, inode, lblk - 1) if lblk else (None, 0)
        return found.pblk + found.length if found is not None else None

    def _fill(
        self,
        pblk: int,
        lblk: int,
        count: int,
        lo: int,
        hi: int,
        chunk: Buffer,
        old: Extent | None,
    ) -> None:
        """Fill device blocks holding file blocks ``[lblk, lblk+count)`` whole.

        File bytes ``[lo, hi)`` come from ``chunk``; the rest of the blocks
        come from ``old`` (copy-on-write) or are zeroed.
        """
        base = lblk << BLOCK_SHIFT
        addr = pblk << BLOCK_SHIFT
        span = count << BLOCK_SHIFT
        if lo > base:
            self._copy_or_zero(addr, lo - base, old, 0)
        if hi > lo:
            self.device.write(addr + lo - base, chunk, drain=False)
        if hi < base + span:
            self._copy_or_zero(addr + hi - base, base + span - hi, old, hi - base)

    def _copy_or_zero(self, addr: int, length: int, old: Extent | None, skip: int) -> None:
        if old is None:
            self.device.fill(addr, length, 0, drain=False)
        else:
            source = (old.pblk << BLOCK_SHIFT) + skip
            self.device.write(addr, self.device.read(source, length), drain=False)

    # -- truncate and fallocate -------------------------------------------------------

    def truncate(self, inode: Inode, size: int, nowait: bool = False) -> None:
        """Set the file size; blocks past it are freed, the tail of the last block zeroed.

        Caller must hold ``inode.lock``.  Waits for pins past ``size`` (break layouts).

        Raises:
            FileTooLarge: size beyond the maximum file size.
            Busy (EBUSY): pins past ``size`` outlived layout_timeout; nothing changed.
            WouldBlock (EAGAIN): ``nowait`` and pins past ``size``; nothing changed.
        """
        if size > MAX_FILE_SIZE:
            raise FileTooLarge(f"size {size} is beyond the maximum file size {MAX_FILE_SIZE}")
        token = self.lock_range(
            inode, size, TO_END, timeout=self.layout_timeout, nowait=nowait
        )  # waits for direct I/O past the new size (and past the old, when growing)
        try:
            self._truncate_locked(inode, size, nowait)
        finally:
            self.unlock_range(inode, token)

    def _truncate_locked(self, inode: Inode, size: int, nowait: bool) -> None:
        if size < inode.rec.size:
            # to the end of the address space: while it waits (inode lock released) the
            # file may grow and be pinned past the size it had
            self._break(inode, size, NO_BLOCK << BLOCK_SHIFT, nowait)
        elif size > inode.rec.size:
            with self.journal.begin() as tx:
                self._zero_past_eof(tx, inode, inode.rec.size, size)
                rec = self.itable.dirty(tx, inode)
                rec.size = size
                rec.mtime_ns = rec.ctime_ns = now_ns()
            return
        keep = (size + BLOCK_SIZE - 1) >> BLOCK_SHIFT
        with self.journal.begin() as tx:
            rec = self.itable.dirty(tx, inode)
            if size < rec.size:
                self._zero_tail(tx, inode, size)
            rec.size = size
            rec.mtime_ns = rec.ctime_ns = now_ns()
            if not self._free_beyond(tx, inode, keep, BATCH_EXTENTS):
                rec.flags |= IFLAG_TRUNCATE
                self.itable.add_orphan(tx, inode)
            self._detach(tx, inode, keep << BLOCK_SHIFT, NO_BLOCK << BLOCK_SHIFT)
        self.finish_truncate(inode)  # past the new size: no mapping shows those blocks

    def finish_truncate(self, inode: Inode) -> None:
        """Free what a batched truncate left past the size (also run by recovery)."""
        if not inode.rec.flags & IFLAG_TRUNCATE:
            return
        keep = (inode.rec.size + BLOCK_SIZE - 1) >> BLOCK_SHIFT
        done = False
        while not done:
            with self.journal.begin() as tx:
                done = self._free_beyond(tx, inode, keep, BATCH_EXTENTS)
                if done:
                    rec = self.itable.dirty(tx, inode)
                    rec.flags &= ~IFLAG_TRUNCATE
                    if rec.nlink:  # unlinked (and open) inodes stay on the list for reaping
                        self.itable.remove_orphan(tx, inode)

    def _free_beyond(self, tx: Transaction, inode: Inode, keep: int, batch: int) -> bool:
        """Unmap and free up to ``batch`` extents past block ``keep``, last first.

        Returns True when nothing is left past ``keep``.
        """
        extents = list(self.maps.extents(tx, inode, keep))
        victims = extents[-batch:]
        if not victims:
            return True
        start = max(keep, victims[0].lblk)
        rec = self.itable.dirty(tx, inode)
        for piece in self.maps.punch(tx, inode, start, victims[-1].end - start):
            self.alloc.free(tx, piece.pblk, piece.length)
            rec.blocks -= piece.length
        if len(extents) <= batch:
            if keep == 0:
                self.maps.clear_tree(tx, inode)
            return True
        return False

    def _zero_past_eof(self, tx: Transaction, inode: Inode, size: int, new_end: int) -> None:
        """Before a file grows from ``size``: zero ``[size, end of its block)`` up to
        ``new_end``.  Stores through a mapping may have left bytes there (the
        last page stays mapped past EOF); growing must not expose them."""
        if size & (BLOCK_SIZE - 1):
            self._zero_bytes(tx, inode, size, min(new_end, _blocks_up(size) << BLOCK_SHIFT))

    def _zero_tail(self, tx: Transaction, inode: Inode, size: int) -> None:
        """Zero ``[size, end of its block)`` if written data is there (journaled)."""
        offset = size & (BLOCK_SIZE - 1)
        if not offset:
            return
        found, _ = self.maps.lookup(tx, inode, size >> BLOCK_SHIFT)
        if found is not None and not found.unwritten:
            addr = ((found.pblk + (size >> BLOCK_SHIFT) - found.lblk) << BLOCK_SHIFT) + offset
            tx.log_data(addr, _ZEROS[offset:])

    def fallocate(
        self, inode: Inode, offset: int, length: int, mode: int, nowait: bool = False
    ) -> None:
        """Allocate, punch or zero ``[offset, offset+length)`` (Linux's fallocate modes).

        Caller must hold ``inode.lock``.

        Raises:
            InvalidArgument: length <= 0, negative offset, unknown or invalid mode.
            NotSupported (EOPNOTSUPP): PUNCH_HOLE without KEEP_SIZE.
            FileTooLarge, NoSpace.
            Busy, WouldBlock: as truncate, for PUNCH_HOLE and ZERO_RANGE over pins.
        """
        if offset < 0 or length <= 0:
            raise InvalidArgument(f"fallocate range offset={offset} length={length} is invalid")
        if mode & ~_FALLOC_KNOWN or (mode & FALLOC_FL_PUNCH_HOLE and mode & FALLOC_FL_ZERO_RANGE):
            raise InvalidArgument(f"fallocate mode {mode:#x} is not supported")
        if mode & FALLOC_FL_PUNCH_HOLE and not mode & FALLOC_FL_KEEP_SIZE:
            raise NotSupported("PUNCH_HOLE must be combined with KEEP_SIZE")
        end = offset + length
        if end > MAX_FILE_SIZE:
            raise FileTooLarge(f"range end {end} is beyond the maximum file size")
        if mode & FALLOC_FL_PUNCH_HOLE and end >= inode.rec.size:
            end = max(end, _blocks_up(inode.rec.size) << BLOCK_SHIFT)  # no byte left in the file
        token = self.lock_range(inode, offset, end, timeout=self.layout_timeout, nowait=nowait)
        try:
            self._fallocate_locked(inode, offset, end, mode, nowait)
        finally:
            self.unlock_range(inode, token)

    def _fallocate_locked(
        self, inode: Inode, offset: int, end: int, mode: int, nowait: bool
    ) -> None:
        if mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE):
            self._break(inode, offset, end, nowait)
        pieces = self._batches(inode, offset, end)
        for i, (lo, hi) in enumerate(pieces):  # one transaction per batch of extents
            last = i == len(pieces) - 1
            with self.journal.begin() as tx:
                if mode & FALLOC_FL_PUNCH_HOLE:
                    self.alloc.use_reserve(tx)  # frees space, even on a full filesystem
                rec = self.itable.dirty(tx, inode)
                changed = None
                if mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE):
                    unmap = bool(mode & FALLOC_FL_PUNCH_HOLE)
                    changed = self._zero_range(tx, inode, lo, hi, unmap)
                else:
                    self._preallocate(tx, inode, lo >> BLOCK_SHIFT, _blocks_up(hi))
                if last and not mode & FALLOC_FL_KEEP_SIZE and end > rec.size:
                    self._zero_past_eof(tx, inode, rec.size, end)
                    rec.size = end
                rec.ctime_ns = now_ns()
                if mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE):
                    rec.mtime_ns = rec.ctime_ns
                if changed is not None:
                    self._detach(tx, inode, *changed)

    def _batches(self, inode: Inode, start: int, end: int) -> list[tuple[int, int]]:
        """Split bytes [start, end) so that each part holds at most BATCH_EXTENTS pieces
        (extents or holes): the transaction of each part stays well inside the log."""
        plan = self._plan(self.store, inode, start >> BLOCK_SHIFT, _blocks_up(end))
        if len(plan) <= BATCH_EXTENTS:
            return [(start, end)]
        cuts = [plan[i][0] << BLOCK_SHIFT for i in range(BATCH_EXTENTS, len(plan), BATCH_EXTENTS)]
        bounds = [start, *(c for c in cuts if start < c < end), end]
        return list(itertools.pairwise(bounds))

    def _preallocate(self, tx: Transaction, inode: Inode, start: int, stop: int) -> None:
        rec = self.itable.dirty(tx, inode)
        for lblk, count, ext in self._plan(tx, inode, start, stop):
            if ext is not None:
                continue
            cur = lblk
            for pblk, length in self.alloc.alloc(tx, count, self._goal(tx, inode, lblk)):
                self.maps.insert(tx, inode, Extent(cur, pblk, length, EXTENT_UNWRITTEN))
                cur += length
            rec.blocks += count

    def _zero_range(
        self, tx: Transaction, inode: Inode, start: int, end: int, unmap: bool
    ) -> tuple[int, int] | None:
        """Zero bytes ``[start, end)``: whole blocks unmapped (punch) or made unwritten.

        Returns the bytes of the whole blocks whose mapping changed (to detach
        from mappings), or None.
        """
        first_full = _blocks_up(start)
        last_full = end >> BLOCK_SHIFT  # whole blocks: [first_full, last_full)
        if first_full > last_full:  # start and end inside one block
            self._zero_bytes(tx, inode, start, end)
            return None
        if start < first_full << BLOCK_SHIFT:
            self._zero_bytes(tx, inode, start, first_full << BLOCK_SHIFT)
        if last_full << BLOCK_SHIFT < end:
            self._zero_bytes(tx, inode, last_full << BLOCK_SHIFT, end)
        if first_full == last_full:
            return None
        rec = self.itable.dirty(tx, inode)
        for piece in self.maps.punch(tx, inode, first_full, last_full - first_full):
            if unmap:
                self.alloc.free(tx, piece.pblk, piece.length)
                rec.blocks -= piece.length
            else:
                unwritten = Extent(piece.lblk, piece.pblk, piece.length, EXTENT_UNWRITTEN)
                self.maps.insert(tx, inode, unwritten)
        if not unmap:  # zero range: whole blocks end up allocated and unwritten, as on Linux
            self._preallocate(tx, inode, first_full, last_full)
        return first_full << BLOCK_SHIFT, last_full << BLOCK_SHIFT

    def _zero_bytes(self, tx: Transaction, inode: Inode, lo: int, hi: int) -> None:
        """Journal zeros over ``[lo, hi)`` (inside one block) where written data is."""
        found, _ = self.maps.lookup(tx, inode, lo >> BLOCK_SHIFT)
        if found is None or found.unwritten:
            return
        addr = ((found.pblk + (lo >> BLOCK_SHIFT) - found.lblk) << BLOCK_SHIFT) + (
            lo & (BLOCK_SIZE - 1)
        )
        tx.log_data(addr, _ZEROS[: hi - lo])

    # -- DAX mmap support -------------------------------------------------------------

    def prepare_map(self, inode: Inode, start: int, end: int) -> None:
        """Give file bytes [start, end) written, zeroed blocks, for a writable mapping.

        Holes are allocated and unwritten extents converted, with their blocks
        zeroed first, in one transaction; nothing changes where blocks are
        already written.  Read mappings showing the zero page pick them up.
        Caller must hold ``inode.lock``.

        Raises:
            NoSpace: not enough free blocks; nothing changed.
        """
        first, stop = start >> BLOCK_SHIFT, _blocks_up(end)
        plan = self._unmapped(inode, first, stop)
        if not plan:
            return
        try:  # a direct write may be filling them: its range lock
            token = self.lock_range(inode, start, end, nowait=True)
        except WouldBlock:
            token = self.lock_range(inode, start, end)
            plan = self._unmapped(inode, first, stop)  # inode.lock was released: again
        try:
            if plan:
                self._prepare_map_locked(inode, plan)
        finally:
            self.unlock_range(inode, token)

    def _unmapped(self, inode: Inode, first: int, stop: int) -> Plan:
        """The holes and unwritten pieces of file blocks ``[first, stop)``."""
        return [
            p for p in self._plan(self.store, inode, first, stop) if p[2] is None or p[2].unwritten
        ]

    def _prepare_map_locked(self, inode: Inode, plan: Plan) -> None:
        with self.journal.begin() as tx:
            rec = self.itable.dirty(tx, inode)
            for lblk, count, ext in plan:
                if ext is not None:  # unwritten: its blocks hold garbage until zeroed
                    self.device.fill(ext.pblk << BLOCK_SHIFT, count << BLOCK_SHIFT, drain=False)
                    self.maps.convert(tx, inode, lblk, count)
                    continue
                cur = lblk
                for pblk, length in self.alloc.alloc(tx, count, self._goal(tx, inode, lblk)):
                    self.device.fill(pblk << BLOCK_SHIFT, length << BLOCK_SHIFT, drain=False)
                    self.maps.insert(tx, inode, Extent(cur, pblk, length))
                    cur += length
                rec.blocks += count
        for mapping in list(inode.mappings):
            for lblk, count, _ in plan:
                mapping.refresh_file_range(lblk << BLOCK_SHIFT, (lblk + count) << BLOCK_SHIFT)

    def _break(self, inode: Inode, start: int, end: int, nowait: bool) -> None:
        """Wait until no pin overlaps file bytes [start, end) (break layouts).

        Raises:
            Busy, WouldBlock: naming the range, not the file (the caller names it).
        """
        layouts = inode.layouts
        if layouts:
            layouts.break_layouts(start, end, self.layout_timeout, nowait)

    @staticmethod
    def _detach(tx: Transaction, inode: Inode, start: int, end: int) -> None:
        """Take file bytes [start, end) out of every mapping: their blocks are freed or
        changed in ``tx``.

        Call it as the last step of the transaction, when only the commit can
        fail: if the commit fails before its commit point the blocks did not
        change, and the pages are mapped back as they were.
        """
        undo = [mapping.detach_file_range(start, end) for mapping in list(inode.mappings)]
        for reattach in undo:  # on_abort runs them in reverse order
            tx.on_abort(reattach)

    # -- seek -------------------------------------------------------------------------

    def seek_data(self, inode: Inode, pos: int, want_data: bool) -> int | None:
        """First offset >= ``pos`` in data (or in a hole); None if there is none.

        UNWRITTEN extents read as zeros and count as holes.  The end of file
        is a hole.
        """
        size = inode.rec.size
        if pos >= size:
            return None
        cur = pos >> BLOCK_SHIFT
        for ext in self.maps.extents(self.store, inode, cur):
            is_data = not ext.unwritten
            if ext.lblk > cur:  # a hole before this extent
                if not want_data:
                    return max(pos, cur << BLOCK_SHIFT)
                cur = ext.lblk
            if is_data == want_data:
                found = max(pos, ext.lblk << BLOCK_SHIFT)
                return found if found < size else (None if want_data else size)
            cur = ext.end
            if cur << BLOCK_SHIFT >= size:
                break
        if want_data:
            return None
        return min(max(pos, cur << BLOCK_SHIFT), size)

    def free_all(self, inode: Inode) -> None:
        """Unmap and free every block of a file, in batches (for deletion)."""
        self.mapped_ranges.forget(inode.ino)
        done = False
        while not done:
            with self.journal.begin() as tx:
                done = self._free_beyond(tx, inode, 0, BATCH_EXTENTS)

    # -- writeback of mapped stores (daxfs.fs.writeback) ------------------------------

    def writeback(self, inode: Inode) -> bool:
        """Flush what writable mappings of the file, live or closed, may have left in
        CPU caches, then fence (fsync, fdatasync).  Caller must hold ``inode.lock``.

        Returns whether a writable mapping of the file is live.

        Raises:
            OSError (EIO): the device failed to flush; the ranges stay remembered.
        """
        generation = inode.rec.generation
        ranges, live = self.mapped_ranges.take(inode.ino, generation)
        if not ranges:
            return live
        try:
            for start, end in ranges:
                self._flush_file_range(inode, start, min(end, inode.rec.size))
            self.device.drain()
        except BaseException:
            self.mapped_ranges.leave(inode.ino, generation, ranges)
            raise
        return live

    def _flush_file_range(self, inode: Inode, start: int, end: int) -> None:
        """Start write-back of the device bytes behind written file bytes [start, end)."""
        if start >= end:
            return
        for ext in self._extents_in(self.store, inode, start >> BLOCK_SHIFT, _blocks_up(end)):
            if ext.unwritten:
                continue
            lo = max(start, ext.lblk << BLOCK_SHIFT)
            hi = min(end, ext.end << BLOCK_SHIFT)
            self.device.flush((ext.pblk << BLOCK_SHIFT) + lo - (ext.lblk << BLOCK_SHIFT), hi - lo)

    def sync_all(self) -> None:
        """``writeback`` of every inode with remembered ranges (FileSystem.sync, unmount).

        Caller must hold the filesystem lock (inodes are looked up).

        Raises:
            OSError (EIO): the device failed to flush.
            Corrupted (EUCLEAN): a remembered inode's record is damaged.
        """
        for ino, generation in self.mapped_ranges.inodes():
            inode = self.itable.cached(ino)
            if inode is None:
                rec = self.itable.read_record(self.store, ino)
                if rec.mode == 0 or rec.generation != generation:
                    self.mapped_ranges.forget(ino)  # freed since, perhaps reused
                    continue
                inode = self.itable.get(ino)
            with inode.lock:
                self.writeback(inode)


def extent_reader(device: Device) -> ExtentReader | None:
    """The read fast path over ``device``'s memory (``DataPath.reader``), or None when
    the device has no native region (the simulator, the msync fallback) or when
    Inode, Extent or InodeRecord no longer keep in ``__slots__`` a field the C reader
    reads (it refuses them): then every read goes through ``iomap_read_into`` and
    ``iomap_read_bytes``, slower but the same (tests/fs/test_read_fast_path.py
    checks that the fast path is on for a pmem device).
    """
    region = device.native_region()
    if region is None:
        return None
    from daxfs.pmem._native import ExtentReader

    try:
        return ExtentReader(region, Inode, Extent, InodeRecord, BLOCK_SHIFT)
    except TypeError:
        return None


def copier_for(device: Device, store: PmemStore) -> Copier | None:
    """The copier of ``DataPath._cow_blocks`` (daxfs.fs._copy): for a writable device
    that allows native stores (``Device.native_stores``: a PmemDevice) in a flush or
    fence mode, over the store's view; None for any other device -- SimulatedPmem and
    FaultyPmem, which must see every store; BlockCache, whose writes must mark blocks
    dirty for write-back -- for the msync mode, or without the C extension: then
    ``Device.write`` copies."""
    if not device.native_stores or _copy is None:
        return None
    region = device.native_region()
    if region is None or store.view.readonly or region.mode == "msync":
        return None
    return _copy.Copier(store.view, region.mode)


def _blocks_up(offset: int) -> int:
    return (offset + BLOCK_SIZE - 1) >> BLOCK_SHIFT


assert NO_BLOCK > MAX_FILE_SIZE >> BLOCK_SHIFT
