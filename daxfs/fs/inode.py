"""Inodes: the inode table, the free and orphan lists, and the inode cache.

Theory of operation
-------------------
Inodes are 256-byte records in the *inode file* (inode 1), a file like any
other whose block ``ino // 16`` holds inode ``ino``; its block 0 is the fixed
``inode_block0``, the rest is found through its extent map (``locate``, given
by the layer above, which owns extent maps).  The inode file only grows, so a
block's location, once found, never changes and is cached.

Allocation pops the free list (``sb.free_ino_head``, linked through
``InodeRecord.next``), else takes ``sb.inode_hwm`` (records at and above it
were never used and are zero), growing the inode file by zero-filled blocks
when the high-water mark reaches its end.  Freeing pushes onto the free list.

An inode that loses its last link while open, mapped or pinned goes on the
orphan list (``sb.orphan_head``); so does a file whose truncate could not
free every block in one transaction.  Mount walks the list and finishes the
job (docs/GUARANTEES.md).

Changes to an inode are made on the in-memory ``Inode.rec`` inside a
transaction after ``InodeTable.dirty(tx, inode)``: at commit the record is
packed (with its checksum) into the transaction's copy of its block; on abort
it is re-read from the device.  ``dirty`` also tells the inode's page cache
(``Inode.data_changed``: the one owner of "this inode changed").

Lifetime (xv6's iget/iput): ``InodeTable.hold(inode)`` counts a holder that
must keep the inode alive even if its last name goes -- an open file, a
mapping, a pin, an operation that lets the filesystem lock go while it
waits; ``InodeTable.put(inode)`` drops it, and the last put of an unlinked
inode frees it (through ``InodeTable.reap``, installed by the filesystem,
which owns what freeing blocks and directory trees needs)::

    hold() ---> refs > 0 ---put(), last--> refs == 0 --nlink == 0--> reap(inode)
                   ^                          |
                   '--------- hold() ---------'   (nlink > 0: stays cached)

Invariants
  1. An ``Inode`` object is the only in-memory copy of its inode: the cache
     returns the same object while anyone may hold it, and entries are evicted
     only between operations (``trim``) and never while open.
  2. ``rec`` differs from the device only inside a transaction that has
     marked the inode dirty -- or in mtime and ctime alone, while direct
     overwrites owe their commit (daxfs.fs.direct, "Times"; the next
     transaction of the inode packs them, an abort's re-read drops them).
  3. Free-list inodes have mode 0 and the ORPHAN flag clear; orphan-list
     inodes have the ORPHAN flag set.
  4. ``Inode.refs`` changes only in ``hold`` and ``put``, under the table's
     ``refs_lock``; an inode with ``refs > 0`` is never freed nor evicted.
  5. ``Inode.lock`` is made on first use, once: the check-and-create runs under
     the module's ``_LOCK_MAKER`` (``Inode.__getattr__``), so every thread that
     asks gets the same lock object.

The lazily made lock
--------------------
Most cached inodes are never read or written through a File (a create and a
close, a stat), so an ``RLock`` per inode is made only when something first
reads ``inode.lock``: the slot is left unset, and reading an unset slot
calls ``Inode.__getattr__``, which makes the lock.  Why that is race-free:
under the GIL one slot load or store is atomic.  A thread that finds the slot
set uses that lock, and a lock, once stored, is never replaced (except by a
test).  A thread that finds it unset takes ``_LOCK_MAKER`` and reads the slot
again before storing a new lock, so of two threads that both found it unset
the second finds the first's lock and uses it.  Hence one lock per inode,
and every ``with inode.lock`` on it excludes every other.  After the first
read the slot is an ordinary one, read without a Python call (the C read
path reads it by offset, and takes an unset slot for a cache miss).  The
hold counts (``refs``, ``files``) do not need the inode's lock: ``hold``
and ``put`` count under ``InodeTable.refs_lock``, a short critical section
shared by all inodes.
"""

from __future__ import annotations

import array
import dataclasses
import stat
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

from daxfs.errors import Corrupted, NoSpace
from daxfs.fs import _create
from daxfs.fs.journal import Transaction
from daxfs.fs.layout import (
    BLOCK_SHIFT,
    FIRST_FREE_INO,
    IFLAG_DAX,
    IFLAG_ORPHAN,
    IFLAG_TRUNCATE,
    INLINE_AREA,
    INLINE_XATTR_AREA,
    INO_INODE_FILE,
    INODE_SIZE,
    INODES_PER_BLOCK,
    MAP_BTREE,
    MAP_INLINE,
    MAP_NONE,
    MAP_SYMLINK,
    MAX_FILE_SIZE,
    MAX_SYMLINK,
    XATTR_TYPES,
    InodeRecord,
    Superblock,
)
from daxfs.fs.layouts import Layouts
from daxfs.fs.store import PmemStore, Reader
from daxfs.fs.super import SuperState

MAX_INO = (1 << 63) - 1
CACHE_LIMIT = 1 << 17
#: how far below the limit a trim goes, so that it runs once per that many new inodes
TRIM_SLACK = 1024
#: inode-file blocks whose location is remembered (a block holds 16 inodes)
LOCATION_CACHE = 1 << 18

#: (reader, inode-file block) -> the extent holding it (first inode-file block, first
#: device block, blocks), or None if unmapped
Locator = Callable[[Reader, int], tuple[int, int, int] | None]
#: (tx, first new inode-file block, block count) -> None: grow the inode file
Grower = Callable[[Transaction, int, int], None]


class SpaceStamp(Protocol):
    """What an inode's page cache keeps of it (daxfs.fs.filecache's entry): the record
    object its cached pages were read or written under, None once they may be stale."""

    rec: InodeRecord | None


class FileMapping(Protocol):
    """What the filesystem needs from a live mapping of a file (daxfs.mm.Mapping)."""

    def detach_file_range(self, start: int, end: int) -> Callable[[], None]:
        """Stop mapping file bytes [start, end): their blocks are about to change.

        Returns a function that maps them back (the change was abandoned).
        """

    def refresh_file_range(self, start: int, end: int) -> None:
        """File bytes [start, end) that were holes now have blocks: map them."""


_S_IFMT = 0o170000
#: ``InodeTable._log`` places and packs records in C (``_create.log_inodes``, configured
#: with the classes below); tests turn it off to run its Python loop, the reference
NATIVE_PACK = True
_ZERO_BLOCK = bytes(INODE_SIZE * INODES_PER_BLOCK)
#: serialises the first creation of each inode's lock (see "The lazily made lock")
_LOCK_MAKER = threading.Lock()


class Inode:
    """An inode in memory: its record plus runtime state (locks, users)."""

    __slots__ = (
        "files",
        "ino",
        "layouts",
        "lock",
        "mappings",
        "rec",
        "refs",
        "space_stamp",
        "xcache",
    )

    #: held for the data path and size changes of this inode; a slot left unset until
    #: first read, when ``__getattr__`` makes it (see "The lazily made lock")
    lock: threading.RLock

    def __init__(self, rec: InodeRecord) -> None:
        self.ino = rec.ino
        self.rec = rec
        #: holders that keep it alive if unlinked (InodeTable.hold/put only) ...
        self.refs = 0
        #: ... of which open files (the rest: mappings, pins, operations in progress)
        self.files = 0
        #: the last extent looked up (daxfs.fs.extmap); None after any map change
        self.xcache: object = None
        #: live DAX mappings of this inode (daxfs.mm); told before blocks under them change
        self.mappings: list[FileMapping] = []
        #: pins of file ranges (daxfs.fs.layouts), created on the first pin
        self.layouts: Layouts | None = None
        #: the stamp of this inode's page-cache space (daxfs.fs.filecache), weakly,
        #: while it has one: what ``data_changed`` clears
        self.space_stamp: weakref.ref[SpaceStamp] | None = None

    def data_changed(self) -> None:
        """THE one owner of "this inode changed" (Linux's i_version, and the page
        cache's invalidation in the data path): the stamp of the inode's page-cache
        space, if it has one, is cleared (its ``rec`` set to None), so the space's hit
        paths (``rec is self.rec``) miss and its next use empties it first
        (daxfs.fs.filecache, invariants 2 and 4).  No clock, no counter: it cannot
        repeat.

        Called by every change of the inode's data, size or block map, and by what
        lets bytes change behind the space: ``InodeTable.dirty`` (every transaction
        of the inode: writes, truncate, fallocate, punch, zero, direct writes'
        iomap_end, mapping preparation), ``Journal.overwrite`` (the C commit of a
        small overwrite, which dirties nothing), the direct writes' completion
        (daxfs.fs.direct: the overwrite in place has no transaction), and the
        registration of a DAX mapping or a pin (daxfs.mm: stores through them).
        (``Committer.pwrite``, File.pwrite's C fast path, runs only for a File with
        no page cache and not direct, which a mount that has spaces never opens.)
        A data change calls it with ``inode.lock`` held, in the same hold as the
        change (or after the data reached the device), so a reader under the lock
        sees either the old stamp and the old bytes or no stamp.
        """
        ref = self.space_stamp
        if ref is not None:
            stamp = ref()
            if stamp is not None:
                stamp.rec = None

    def __getattr__(self, name: str) -> threading.RLock:
        """Make ``lock`` on its first read (called only while the slot is unset)."""
        if name != "lock":
            raise AttributeError(f"'Inode' object has no attribute {name!r}")
        with _LOCK_MAKER:
            try:  # made by another thread since this one found the slot empty
                lock: threading.RLock = object.__getattribute__(self, "lock")
            except AttributeError:
                lock = self.lock = threading.RLock()
        return lock

    def lock_made(self) -> bool:
        """Whether ``lock`` exists yet (without making it)."""
        try:
            object.__getattribute__(self, "lock")
        except AttributeError:
            return False
        return True

    def __repr__(self) -> str:
        return f"<Inode {self.ino} mode={self.rec.mode:o} size={self.rec.size}>"

    @property
    def fmt(self) -> int:
        return self.rec.mode & _S_IFMT

    @property
    def is_dir(self) -> bool:
        return self.rec.mode & _S_IFMT == stat.S_IFDIR

    @property
    def is_reg(self) -> bool:
        return self.rec.mode & _S_IFMT == stat.S_IFREG

    @property
    def is_lnk(self) -> bool:
        return self.rec.mode & _S_IFMT == stat.S_IFLNK

    @property
    def in_use(self) -> bool:
        """Held (open, mapped, pinned, ...): an unlinked inode must wait for the last put."""
        return self.refs > 0


def now_ns() -> int:
    return time.time_ns()


_MAP_KINDS = {
    stat.S_IFREG: (MAP_NONE, MAP_INLINE, MAP_BTREE),
    stat.S_IFDIR: (MAP_NONE, MAP_BTREE),
    stat.S_IFLNK: (MAP_NONE, MAP_INLINE, MAP_BTREE, MAP_SYMLINK),
}


#: the flags a record of each type may carry (fsck also keeps IFLAG_ORPHAN off the root)
_FLAGS_OF = {
    stat.S_IFREG: IFLAG_ORPHAN | IFLAG_TRUNCATE | IFLAG_DAX,
    stat.S_IFDIR: IFLAG_ORPHAN | IFLAG_DAX,
    stat.S_IFLNK: IFLAG_ORPHAN,
}


def record_problem(rec: InodeRecord) -> str | None:
    """What makes an in-use record unusable, checked when it is loaded; or None.

    A record whose checksum is right can still lie: a type daxfs does not
    make, unknown mode or flag bits, a size past the maximum (or, for a
    symbolic link, past a path's length), a map kind its type cannot have,
    more inline extents than fit beside the inline xattrs, inline xattrs on a
    type that carries none or past the area.  Each would reach code that trusts it.
    """
    fmt = stat.S_IFMT(rec.mode)
    kinds = _MAP_KINDS.get(fmt)
    if kinds is None or rec.mode & ~(stat.S_IFMT(rec.mode) | 0o7777):
        return f"unknown file type or mode bits {rec.mode:o}"
    if rec.flags & ~_FLAGS_OF[fmt]:
        return f"flags {rec.flags:#x} that mode {rec.mode:o} cannot carry"
    if rec.map_kind not in kinds:
        return f"map kind {rec.map_kind} for mode {rec.mode:o}"
    if rec.size > (MAX_SYMLINK if fmt == stat.S_IFLNK else MAX_FILE_SIZE):
        return f"size {rec.size} is past the maximum"
    if rec.xattr_bytes and (fmt not in XATTR_TYPES or rec.xattr_bytes > INLINE_XATTR_AREA):
        return f"{rec.xattr_bytes} bytes of inline xattrs for mode {rec.mode:o}"
    if rec.map_kind == MAP_INLINE and rec.map_count > rec.extent_room:
        return (
            f"{rec.map_count} inline extents (at most {rec.extent_room} beside "
            f"{rec.xattr_bytes} bytes of inline xattrs)"
        )
    if rec.map_kind == MAP_SYMLINK and not 0 < rec.size == rec.map_count <= INLINE_AREA:
        return f"inline symlink target of {rec.map_count} bytes, size {rec.size}"
    return None


# the classes daxfs/fs/_create.c reads by __slots__ offset (InodeTable._log, SuperState._log)
_create.configure(InodeRecord, Superblock, Inode)


class InodeTable:
    """Locate, load, allocate, free and cache inodes."""

    def __init__(self, store: PmemStore, sup: SuperState) -> None:
        self.store = store
        self.sup = sup
        self._cache: OrderedDict[int, Inode] = OrderedDict()
        self._blocks: dict[int, int] = {0: sup.sb.inode_block0}
        #: the same, as an array indexed by inode-file block (0: not known), for the C
        #: stat path (daxfs/fs/_stat.c): one memory access instead of a dict's four
        self._places: array.array[int] = array.array("Q", [sup.sb.inode_block0])
        self.locate: Locator | None = None
        self.grow: Grower | None = None
        #: frees an unlinked inode after its last put (installed by the filesystem);
        #: takes the filesystem lock, so put() must not be called under an inode lock
        self.reap: Callable[[Inode], None] | None = None
        #: a transaction is growing the inode file: do not cache locations
        self.growing = False
        #: get() refuses records that record_problem() finds (a mount sets it; fsck,
        #: which must load such records to repair them, leaves it off)
        self.check_records = False
        #: guards every inode's hold counts (``refs``, ``files``): hold and put only
        self.refs_lock = threading.Lock()
        #: the slots from ``inode_hwm`` up to this inode number are known to be zero
        #: (``_check_never_used`` checked them; only ``allocate`` writes there)
        self._zero_to = 0

    # -- location -------------------------------------------------------------------

    @property
    def locations(self) -> dict[int, int]:
        """Inode-file block -> device block, as ``address`` caches them: an entry, once
        there, never changes (the inode file only grows).  The journal's C overwrite
        reads it to place an inode's record (daxfs/fs/_commit.c)."""
        return self._blocks

    def address(self, reader: Reader, ino: int) -> tuple[int, int]:
        """(device block, byte offset in it) of inode ``ino``.

        Raises:
            Corrupted: the inode file has no block for it.
        """
        fblock, slot = divmod(ino, INODES_PER_BLOCK)
        blockno = self._blocks.get(fblock)
        if blockno is None:
            assert self.locate is not None
            found = self.locate(reader, fblock)
            if found is None:
                raise Corrupted(f"inode {ino}: the inode file has no block {fblock}")
            first, start, count = found
            blockno = start + fblock - first
            room = LOCATION_CACHE - len(self._blocks)
            if not self.growing and room > 0:
                # the inode file's map changes only while it grows; any other time what
                # a reader (store or transaction) finds is committed and stable forever:
                # remember the whole extent (a stat of random names then rarely descends)
                lo = max(first, fblock - room // 2)
                hi = min(first + count, lo + room)
                for b in range(lo, hi):
                    self._blocks[b] = start + b - first
                places = self._places
                top = min(hi, LOCATION_CACHE)  # the array stays under 8 * LOCATION_CACHE bytes
                if len(places) < top:
                    places.frombytes(bytes(8 * (top - len(places))))
                for b in range(lo, top):
                    places[b] = start + b - first
        return blockno, slot * INODE_SIZE

    def read_record(self, reader: Reader, ino: int) -> InodeRecord:
        """Decode inode ``ino`` as ``reader`` (a transaction or the store) sees it."""
        if not 0 < ino < self.sup.sb.inode_hwm:
            raise Corrupted(
                f"inode {ino} is beyond the inode table (in use below {self.sup.sb.inode_hwm})"
            )
        if isinstance(reader, Transaction):
            dirty = reader.scratch.get("inodes")
            if dirty is not None and ino in dirty:
                rec: InodeRecord = dataclasses.replace(dirty[ino].rec)
                return rec
        blockno, offset = self.address(reader, ino)
        block = reader.read(blockno)
        return InodeRecord.unpack_from(block, offset, ino)

    # -- cache ------------------------------------------------------------------------

    def get(self, ino: int) -> Inode:
        """The in-use inode ``ino`` (cached).

        Raises:
            Corrupted: the record is damaged, the inode is free, or (with
                ``check_records``) the record is not one daxfs could write.
        """
        inode = self._cache.get(ino)
        if inode is not None:
            self._cache.move_to_end(ino)
            return inode
        rec = self.read_record(self.store, ino)
        if rec.mode == 0:
            raise Corrupted(f"inode {ino} is free but something refers to it")
        problem = record_problem(rec) if self.check_records else None
        if problem is not None:
            raise Corrupted(f"inode {ino}: {problem}")
        inode = Inode(rec)
        self._cache[ino] = inode
        return inode

    def held(self) -> list[Inode]:
        """Cached inodes held by something other than an open file (a mapping, a pin, an
        operation in progress): they keep the filesystem busy (open files are
        counted by the filesystem, which knows their names)."""
        return [i for i in self._cache.values() if i.refs > i.files]

    # -- lifetime ---------------------------------------------------------------------

    def hold(self, inode: Inode, *, file: bool = False) -> None:
        """Keep ``inode`` alive (iget): until the matching put, it is not freed even
        if its last name goes.  ``file``: the holder is an open file."""
        with self.refs_lock:
            inode.refs += 1
            inode.files += file

    def put(self, inode: Inode, *, file: bool = False) -> None:
        """Drop a hold (iput); the last put of an unlinked inode frees it.

        Caller must hold no inode lock: freeing takes the filesystem lock,
        which comes first in the lock order.  (A fixed="replace" mapping, made
        under the lock of the inode it maps, lets go of the mappings it
        replaced only after that lock: File.mmap.)

        Raises:
            what freeing raises (an I/O error); the hold is dropped regardless.
        """
        with self.refs_lock:
            assert inode.refs > 0, f"put of {inode} without a hold"
            assert inode.files >= file, f"file put of {inode} without a file hold"
            inode.refs -= 1
            inode.files -= file
            last = inode.refs == 0 and inode.rec.nlink == 0
        if last and self.reap is not None:
            self.reap(inode)

    def forget(self, ino: int) -> None:
        """Drop ``ino`` from the cache (it was freed)."""
        self._cache.pop(ino, None)

    def cached(self, ino: int) -> Inode | None:
        return self._cache.get(ino)

    @property
    def places(self) -> array.array[int]:
        """``locations`` as an array indexed by inode-file block, 0 where not known
        (block 0 of a filesystem is the superblock, never an inode-file block); the
        first LOCATION_CACHE blocks of the inode file only (16 inodes a block)."""
        return self._places

    @property
    def cache(self) -> dict[int, Inode]:
        """The cache itself, ino -> Inode, for the C stat path (daxfs/fs/_stat.c), which
        only reads it: an inode found there is answered from memory, not from media."""
        return self._cache

    def trim(self) -> None:
        """Evict unused inodes beyond the cache limit. Call between operations only.

        Cheap when under the limit; over it, evicts the least recently used
        unused inodes down to ``CACHE_LIMIT - TRIM_SLACK`` at once, so the work is
        amortised over many operations (inodes in use move to the back).
        """
        cache = self._cache
        if len(cache) <= CACHE_LIMIT:
            return
        target = CACHE_LIMIT - TRIM_SLACK
        for _ in range(len(cache)):
            if len(cache) <= target:
                break
            ino, inode = next(iter(cache.items()))
            if inode.in_use or ino == INO_INODE_FILE:
                cache.move_to_end(ino)
            else:
                del cache[ino]

    # -- changes ----------------------------------------------------------------------

    def dirty(self, tx: Transaction, inode: Inode) -> InodeRecord:
        """Mark ``inode`` changed in ``tx``; return its record for modification.

        At commit the whole 256-byte record is journaled from memory (no copy
        of its block); until then ``read_record`` through ``tx`` returns it.
        """
        inode.data_changed()  # the page cache's stamp (it may change data, size or map)
        dirty: dict[int, Inode] | None = tx.scratch.get("inodes")
        if dirty is None:
            dirty = tx.scratch["inodes"] = {}
            tx.on_seal(lambda: self._log(tx, dirty))
        if inode.ino not in dirty:
            dirty[inode.ino] = inode
            tx.on_abort(lambda: self._reload(inode))
        return inode.rec

    def _log(self, tx: Transaction, dirty: dict[int, Inode]) -> None:
        if NATIVE_PACK:  # the loop below in C, unless a location is not cached or a
            records = _create.log_inodes(dirty, self._blocks)  # record misfits
            if records is not None:
                for offset, data in records:
                    tx.log_meta(offset, data)
                return
        record = bytearray(INODE_SIZE)
        for ino, inode in dirty.items():
            blockno, offset = self.address(tx, ino)
            inode.rec.pack_into(record, 0)
            tx.log_meta((blockno << BLOCK_SHIFT) + offset, bytes(record))

    @property
    def zero_to(self) -> int:
        """Slots from ``sb.inode_hwm`` up to this inode number are known to be zero
        records (``_check_never_used``), so ``allocate`` may take them unchecked."""
        return self._zero_to

    def reload(self, inode: Inode) -> None:
        """Forget uncommitted changes to ``inode``: its record re-read from the device
        (a record never committed, of an inode allocated in the aborted transaction,
        makes it free: dropped from the cache).  What an abort does for a dirty inode."""
        self._reload(inode)

    def _reload(self, inode: Inode) -> None:
        inode.xcache = None  # first: it may map blocks of the aborted tx, even if this fails
        try:
            rec = self.read_record(self.store, inode.ino)
        except Corrupted:
            rec = InodeRecord(ino=inode.ino)  # never used: was allocated in the aborted tx
        inode.rec = rec
        if rec.mode == 0:
            self._cache.pop(inode.ino, None)

    def allocate(self, tx: Transaction, mode: int, uid: int, gid: int) -> Inode:
        """A new inode with ``mode``, one link, times now.

        Raises:
            NoSpace: no inode can be had (the inode file cannot grow).
        """
        sb = self.sup.dirty(tx)
        if sb.free_ino_head:
            ino = sb.free_ino_head
            old = self.read_record(tx, ino)
            if old.mode != 0 or old.flags & IFLAG_ORPHAN or ino in self._cache:
                raise Corrupted(f"free inode list: inode {ino} is in use (mode {old.mode:o})")
            if old.next and not FIRST_FREE_INO <= old.next < sb.inode_hwm:
                raise Corrupted(f"free inode list: inode {ino} links to inode {old.next}")
            sb.free_ino_head = old.next
            sb.free_inodes -= 1
        else:
            ino = sb.inode_hwm
            if ino >= MAX_INO:
                raise NoSpace("no inode numbers left")
            fblock = ino // INODES_PER_BLOCK
            if self._inode_file_blocks(tx) <= fblock:
                assert self.grow is not None
                # the inode file's map in memory runs ahead of the device until commit
                self.growing = True
                tx.on_commit(self._grown)
                tx.on_abort(self._grown)
                self.grow(tx, fblock, self._growth(fblock))
            self.check_never_used(tx, ino)
            sb.inode_hwm = ino + 1
        sb.used_inodes += 1
        sb.next_generation = (sb.next_generation + 1) & 0xFFFFFFFF
        t = now_ns()
        # positional (a third of the keyword call's cost): ino, mode, nlink, uid, gid,
        # size, blocks, atime, mtime, ctime, btime, generation
        rec = InodeRecord(ino, mode, 1, uid, gid, 0, 0, t, t, t, t, sb.next_generation)
        inode = Inode(rec)
        self._cache[ino] = inode
        self.dirty(tx, inode)
        return inode

    def available(self, blocks: int) -> int:
        """Inodes creates can still get when ``blocks`` blocks may be allocated (statvfs
        ``f_ffree``): the free list, the unused slots of the inode file, and the slots of
        every growth step that fits in ``blocks`` (``allocate`` grows the inode file by
        ``_growth`` blocks at once, or not at all).  Committed state; a directory that
        must grow for the new name needs a block of its own, not counted here.
        """
        sb = self.sup.sb
        size = self._inode_file_blocks(self.store)
        count = sb.free_inodes + max(0, size * INODES_PER_BLOCK - sb.inode_hwm)
        while blocks > 0:
            step = self._growth(size)
            if step == self._growth(MAX_INO):  # the largest step: all later ones are too
                count += blocks // step * step * INODES_PER_BLOCK
                break
            if step > blocks:
                break
            blocks -= step
            size += step
            count += step * INODES_PER_BLOCK
        return min(count, sb.free_inodes + max(0, MAX_INO - sb.inode_hwm))

    def check_never_used(self, tx: Transaction, ino: int) -> None:
        """Raise unless the slot of ``ino`` (at the high-water mark) holds a zero record.

        Slots at and above ``inode_hwm`` were never used, so they are zero; a
        record there means ``inode_hwm`` was lowered under live inodes, and
        taking the slot would take over one of them.  The slots from ``ino`` to
        the end of its inode-file block are checked at once and remembered
        (``_zero_to``): only ``allocate`` writes there, one slot per committed
        transaction, each time the one at the high-water mark, so the slots
        above it stay checked (a growth of the inode file, which an abort may
        take back, forgets them).
        """
        bad = ino if ino in self._cache else None
        if bad is None and ino >= self._zero_to:
            blockno, offset = self.address(tx, ino)
            end = (ino // INODES_PER_BLOCK + 1) * INODES_PER_BLOCK
            slots = tx.read(blockno)[offset : offset + (end - ino) * INODE_SIZE].tobytes()
            if slots != _ZERO_BLOCK[: len(slots)]:
                first = next(i for i, byte in enumerate(slots) if byte)
                bad = ino + first // INODE_SIZE
            else:
                self._zero_to = end
        if bad is not None:
            raise Corrupted(
                f"superblock: inode_hwm {ino} is not the high-water mark: "
                f"inode {bad} holds a record"
            )

    def _grown(self) -> None:
        self.growing = False
        self._zero_to = 0  # the slots checked may be in blocks an abort took back

    def _inode_file_blocks(self, reader: Reader) -> int:
        return self.get(INO_INODE_FILE).rec.size >> BLOCK_SHIFT

    def inode_file_blocks(self) -> int:
        """Blocks of the inode file (its size, as this mount holds it)."""
        return self.get(INO_INODE_FILE).rec.size >> BLOCK_SHIFT

    @staticmethod
    def _growth(current_blocks: int) -> int:
        """Blocks to add to an inode file of ``current_blocks``: 1/8 more, 16 to 256."""
        return max(16, min(256, current_blocks // 8))

    def free(self, tx: Transaction, inode: Inode) -> None:
        """Return an inode to the free list; caller has unlinked it and freed its map.

        Its ``blocks`` counter and map fields are media, not trusted: the
        record is rewritten as a free one whatever they say (blocks that a
        damaged map still held are leaked, for fsck to find, never reused).
        """
        rec = self.dirty(tx, inode)
        assert rec.nlink == 0, f"freeing linked inode {inode}"
        if rec.flags & IFLAG_ORPHAN:  # callers remove it; a flag from media may still say so
            self.remove_orphan(tx, inode)
        sb = self.sup.dirty(tx)
        ino = inode.ino
        generation = rec.generation
        inode.rec = InodeRecord(ino=ino, generation=generation, next=sb.free_ino_head)
        sb.free_ino_head = ino
        sb.free_inodes += 1
        sb.used_inodes -= 1
        tx.on_commit(lambda: self.forget(ino))

    # -- orphans ----------------------------------------------------------------------

    def add_orphan(self, tx: Transaction, inode: Inode) -> None:
        rec = self.dirty(tx, inode)
        if rec.flags & IFLAG_ORPHAN:
            return
        sb = self.sup.dirty(tx)
        rec.flags |= IFLAG_ORPHAN
        rec.next = sb.orphan_head
        sb.orphan_head = inode.ino

    def remove_orphan(self, tx: Transaction, inode: Inode) -> None:
        rec = self.dirty(tx, inode)
        if not rec.flags & IFLAG_ORPHAN:
            return
        sb = self.sup.dirty(tx)
        if sb.orphan_head == inode.ino:
            sb.orphan_head = rec.next
        elif sb.orphan_head == 0:
            raise Corrupted(f"inode {inode.ino} has the orphan flag, but the orphan list is empty")
        else:
            prev = self.get(sb.orphan_head)
            for _ in range(sb.used_inodes + 1):
                if prev.rec.next == inode.ino:
                    break
                if prev.rec.next == 0:
                    raise Corrupted(f"orphan list does not reach inode {inode.ino}")
                prev = self.get(prev.rec.next)
            else:
                raise Corrupted("orphan list has a cycle")
            self.dirty(tx, prev).next = rec.next
        rec.flags &= ~IFLAG_ORPHAN
        rec.next = 0

    def orphans(self) -> list[int]:
        """Inode numbers on the orphan list, head first.

        Raises:
            Corrupted: the list has a cycle or a member without the ORPHAN flag.
        """
        out: list[int] = []
        ino = self.sup.sb.orphan_head
        seen: set[int] = set()
        while ino:
            if ino in seen:
                raise Corrupted(f"orphan list has a cycle at inode {ino}")
            seen.add(ino)
            rec = self.read_record(self.store, ino)
            if not rec.flags & IFLAG_ORPHAN:
                raise Corrupted(f"orphan list: inode {ino} lacks the orphan flag")
            out.append(ino)
            ino = rec.next
        return out
