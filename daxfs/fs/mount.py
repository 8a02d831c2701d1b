"""mkfs, mount and unmount: from a path or device to a FileSystem and back.

Mount, step by step (each failure is an error naming the structure)::

    open the device (a path) or take the given one; claim it (EBUSY if mounted)
    read and check the primary superblock (EUCLEAN if damaged; the error says
        whether the backup is intact and fsck --repair can restore it)
    replay the journal (recovery: the last committed transaction)
    build the layers: allocator, inode table, extent maps, directories, data
    reap the orphan list: unlinked inodes are freed, batched truncates finished
    mark the superblock mounted (state, count, time)

Unmount marks it clean, rewrites the backup superblock if (and only if) it is
damaged or describes another geometry (SuperState.update_backup: a rewrite
could tear), and releases the device.  A read-only mount replays nothing and
changes nothing; it refuses an image whose journal holds a transaction to
replay.
"""

from __future__ import annotations

import dataclasses
import os
import stat
import weakref
from collections.abc import Callable

from daxfs.block.device import BlockDevice
from daxfs.errors import Corrupted, InvalidArgument, ReadOnly, naming
from daxfs.fs.alloc import Allocator
from daxfs.fs.data import DataPath
from daxfs.fs.devices import Target, open_target
from daxfs.fs.dir import Directories
from daxfs.fs.extmap import BlockMaps, Extent
from daxfs.fs.filesystem import FileSystem
from daxfs.fs.inode import InodeTable, now_ns
from daxfs.fs.journal import Journal, Transaction
from daxfs.fs.layout import (
    BLOCK_SHIFT,
    BLOCK_SIZE,
    FEATURE_INCOMPAT,
    FEATURE_RO_COMPAT,
    INO_INODE_FILE,
    INO_ROOT,
    INODES_PER_BLOCK,
    MAP_BTREE,
    MAP_INLINE,
    STATE_CLEAN,
    STATE_MOUNTED,
    Superblock,
)
from daxfs.fs.mkfs import Progress, check_mkfs_args, format_device
from daxfs.fs.store import LazyStore, PmemStore, Reader
from daxfs.fs.super import SuperState
from daxfs.lifecycle import cleanup_after
from daxfs.pagecache.bounded import BoundedBlockCache
from daxfs.pmem.device import Device


def mkfs(
    target: Target,
    size: int | None = None,
    *,
    label: str = "",
    force: bool = False,
    progress: Progress | None = None,
    dax: str = "inode",
) -> Superblock:
    """Create an empty daxfs on ``target``: a path (created or grown to ``size``), a
    device or a block device (``dax`` chooses the path to it: daxfs.fs.devices).

    Raises:
        Exists (EEXIST): the target already holds a daxfs, or data mkfs does
            not recognise, and ``force`` is False.
        InvalidArgument: size below 16 MiB or above the device; bad label.
        FileTooLarge (EFBIG): size above 1 EiB (layout.MAX_FS_SIZE).
        Busy: the target is mounted.
        InvalidArgument: dax="always" on a block device.
    """
    if isinstance(target, Device | BlockDevice):
        device, owned = open_target(target, dax=dax)
        try:
            device.claim(True, "mkfs")
            try:
                return format_device(device, size, label=label, force=force, progress=progress)
            finally:
                device.unclaim()
        finally:
            if owned:
                device.close()
    name = os.fsdecode(os.fspath(target))
    check_mkfs_args(size, label, name)
    existed = os.path.lexists(name)
    try:
        device, _ = open_target(target, dax=dax, size=size, create=size is not None)
        with device:
            device.claim(True, "mkfs")
            try:
                return format_device(
                    device, size, label=label, force=force, name=name, progress=progress
                )
            finally:
                device.unclaim()
    except BaseException:
        if not existed and os.path.isfile(name):
            os.unlink(name)  # mkfs created it: leave nothing behind
        raise


def read_superblock(device: Device) -> Superblock:
    """The primary superblock, checked (without recovery: for reports such as info).

    Raises:
        Corrupted (EUCLEAN): missing or damaged, saying what the backup holds.
    """
    try:
        sb = Superblock.unpack(device.read(0, BLOCK_SIZE), "primary superblock")
    except Corrupted as exc:
        if _backup(device, device.size - device.size % BLOCK_SIZE) is None:
            raise
        raise Corrupted(
            f"{exc.strerror}; the backup superblock is intact: run `daxfs fsck --repair`"
        ) from None
    sb.check_geometry(device.size, "primary superblock")
    return sb


def recover(device: Device, readonly: bool) -> tuple[PmemStore, Journal, Superblock]:
    """Replay the journal, then read and check the primary superblock.

    The geometry comes from the primary superblock without its checksum
    (layout.Superblock.unpack explains why that is safe), cross-checked with
    the backup when the primary's checksum fails.

    Raises:
        Corrupted: no daxfs here, or the superblock is damaged beyond the journal.
        ReadOnly: a read-only mount needs a replay.
    """
    raw = device.read(0, BLOCK_SIZE)
    geometry = Superblock.unpack(raw, "primary superblock", verify=False)
    geometry.check_geometry(device.size, "primary superblock")
    store = (
        LazyStore(device, geometry.block_count)
        if isinstance(device, BoundedBlockCache)
        else PmemStore(device, geometry.block_count)
    )
    try:
        journal = Journal(store, geometry.journal_start, geometry.journal_blocks, readonly)
        try:
            Superblock.unpack(raw, "primary superblock")
        except Corrupted:
            backup = _backup(device, geometry.block_count << BLOCK_SHIFT)
            replayable = backup is not None and same_geometry(backup, geometry)
            if journal.pending() is None or not replayable:
                read_superblock(device)  # raises, with advice about the backup
                raise
        journal.recover()
        sb = read_superblock(device)
        return store, journal, sb
    except BaseException as exc:
        cleanup_after(exc, store.close)
        raise


def same_geometry(a: Superblock, b: Superblock) -> bool:
    """True if two superblocks describe the same filesystem layout."""
    fields = ("uuid", "block_count", "journal_start", "journal_blocks", "bitmap_start")
    return all(getattr(a, f) == getattr(b, f) for f in fields)


def _backup(device: Device, size: int) -> Superblock | None:
    """The backup superblock in the device's last block, if intact."""
    if size < 2 * BLOCK_SIZE:
        return None
    try:
        return Superblock.unpack(device.read(size - BLOCK_SIZE, BLOCK_SIZE), "backup superblock")
    except Corrupted:
        return None


def mount(
    target: Target,
    *,
    readonly: bool = False,
    persist: str = "auto",
    layout_timeout: float = 10.0,
    dax: str = "inode",
    cache_size: int | str | None = None,
    queue_depth: int | None = None,
) -> FileSystem:
    """Mount the daxfs on ``target``: a path, a pmem device or a block device.

    ``dax`` is Linux's ``-o dax=``: "inode" (the default: DAX where the device
    can; the per-inode flag is stored and reported, daxfs.fs.daxflag), "always"
    (an error where it cannot), "never" (through the block layer and a DRAM
    cache of blocks, even on pmem); daxfs.fs.devices has the table.  On a
    block device every write reaches the media through bios, a commit is
    ordered by FLUSH and FUA, and mmap maps the cache (msync and fsync write
    it back).

    ``cache_size`` (a block-backed mount only: a size such as 65536, "64M" or
    "1G") bounds the DRAM of file data: the device is then loaded lazily, what
    metadata the mount touches is kept, and file data goes through a page
    cache of that many bytes with LRU eviction (daxfs.pagecache.bounded);
    without it the cache holds the whole device.

    ``queue_depth`` (a path daxfs opens as a block device: ``dax="never"`` or a
    block special file) is how many I/O requests it keeps in flight, 1 to 4096
    (default 8; daxfs.block.engine).  The limits are checked before anything is
    opened (daxfs.fs.devices, "Limits").

    ``layout_timeout`` is how long, in seconds, an operation that would change
    or free pinned blocks (truncate, punch-hole, a write) waits for the pins
    before failing with EBUSY.

    Raises:
        FileNotFoundError: no such path.
        Busy (EBUSY): already mounted (by this or another process).
        Corrupted (EUCLEAN): not a daxfs, or a structure failed its checks.
        ReadOnly (EROFS): read-only mount of an image that needs recovery.
        NotSupported: the image uses features this version does not know.
        IOFailure (EIO): the device failed.
        InvalidArgument (EINVAL): a bad ``dax``, or "always" on a device that
            cannot do DAX (the message says why); a bad ``cache_size`` (not a
            size, below 64 KiB), or one given for a DAX mount; ``queue_depth``
            outside 1..4096, or given for a target not opened as a block device.
        OSError(ENOMEM): ``cache_size`` above MemAvailable; without it, a
            block-backed image larger than MemAvailable (both sizes named).
        Each names the image (``device_name``) as its filename.
    """
    if (
        isinstance(layout_timeout, bool)
        or not isinstance(layout_timeout, int | float)
        or not (layout_timeout >= 0)
    ):
        raise InvalidArgument(
            f"layout_timeout must be a number of seconds >= 0: {layout_timeout!r}"
        )
    source = device_name(target)
    with naming(source):
        # a path's errors name it already (ENOENT, EACCES, ENODEV: not I/O errors)
        device, owned = open_target(
            target,
            dax=dax,
            readonly=readonly,
            persist=persist,
            cache_size=cache_size,
            queue_depth=queue_depth,
        )
        try:
            device.claim(not readonly, "mount")
        except BaseException as exc:
            cleanup_after(exc, device.close if owned else None)
            raise
        try:
            fs = _mount(device, readonly, owned, source)
        except BaseException as exc:
            cleanup_after(exc, device.unclaim, device.close if owned else None)
            raise
    fs.data.layout_timeout = float(layout_timeout)
    return fs


def device_name(target: Target) -> str:
    """How errors name what is mounted: its path, or the device object's class and size."""
    if isinstance(target, BlockDevice):
        return target.name
    if not isinstance(target, Device):
        return os.fsdecode(os.fspath(target))
    path = getattr(target, "path", None)
    if isinstance(path, str | bytes):
        return os.fsdecode(path)
    return f"<{type(target).__name__} of {target.size} bytes>"


def _mount(device: Device, readonly: bool, owned: bool, source: str) -> FileSystem:
    store, journal, sb = recover(device, readonly)
    try:
        if sb.feature_incompat & ~FEATURE_INCOMPAT:
            raise Corrupted(f"superblock: unknown incompatible features {sb.feature_incompat:#x}")
        if sb.feature_ro_compat & ~FEATURE_RO_COMPAT and not readonly:
            raise ReadOnly("image has features this version can only mount read-only")
        problems = sb.counter_problems()
        if problems:
            raise Corrupted("superblock: " + "; ".join(problems) + " (run daxfs fsck)")
        sup = SuperState(store, sb)
        fs = _assemble(device, store, journal, sup, readonly, owned, source)
        check_structures(fs.itable, fs.maps, fs.alloc, store)
        if not readonly:
            _reap_orphans(fs)
            with journal.begin() as tx:
                s = sup.dirty(tx)
                s.state = STATE_MOUNTED
                s.mount_count = (s.mount_count + 1) & 0xFFFFFFFF
                s.last_mount_ns = now_ns()
        return fs
    except BaseException as exc:
        cleanup_after(exc, store.close)
        raise


@dataclasses.dataclass
class Layers:
    """The structures of a filesystem above its journal (shared by mount and fsck)."""

    alloc: Allocator
    itable: InodeTable
    maps: BlockMaps
    dirs: Directories


def build_layers(store: PmemStore, sup: SuperState) -> Layers:
    """Allocator, inode table (wired to the inode file's map), extent maps, directories.

    The inode table reaches the extent maps weakly: keep the returned Layers (or
    its maps) alive while the table is used.
    """
    alloc = Allocator(store, sup)
    itable = InodeTable(store, sup)
    maps = BlockMaps(itable, alloc)
    # the inode table reaches the maps and itself weakly: the maps hold the table
    # (daxfs.lifecycle: no reference cycles, so a dropped mount is freed at once)
    maps_ref = weakref.ref(maps)
    itable_ref = weakref.ref(itable)

    def layers() -> tuple[BlockMaps, InodeTable]:
        maps, itable = maps_ref(), itable_ref()
        assert maps is not None, "inode table used after its Layers were dropped"
        assert itable is not None, "inode table used after its Layers were dropped"
        return maps, itable

    def locate(reader: Reader, fblock: int) -> tuple[int, int, int] | None:
        maps, itable = layers()
        ext, _ = maps.lookup(reader, itable.get(INO_INODE_FILE), fblock)
        return (ext.lblk, ext.pblk, ext.length) if ext is not None else None

    def grow(tx: Transaction, first: int, count: int) -> None:
        maps, itable = layers()
        inode_file = itable.get(INO_INODE_FILE)
        rec = itable.dirty(tx, inode_file)
        before = maps.lookup(tx, inode_file, first - 1)[0]
        goal = before.pblk + before.length if before is not None else None
        cur = first
        for start, length in alloc.alloc(tx, count, goal):
            for b in range(start, start + length):
                tx.new_block(b)
            store.fill(start << BLOCK_SHIFT, length << BLOCK_SHIFT)
            maps.insert(tx, inode_file, Extent(cur, start, length))
            cur += length
        rec.size = (first + count) << BLOCK_SHIFT
        rec.blocks += count

    itable.locate = locate
    itable.grow = grow
    return Layers(alloc, itable, maps, Directories(itable, alloc, sup.sb.hash_key))


def check_structures(itable: InodeTable, maps: BlockMaps, alloc: Allocator, store: Reader) -> None:
    """The cheap cross-checks of mount, beyond the superblock's own (docs/GUARANTEES.md).

    The inode file maps exactly its size, contiguously from inode block 0, and
    holds ``inode_hwm`` slots; the root is a directory; the free-block counter
    equals the bitmap.  (Everything else that can be wrong is found where it
    is used, as EUCLEAN, or by fsck.)

    Raises:
        Corrupted (EUCLEAN): naming the structure and the fact that failed.
    """
    problems = inode_file_problems(itable, maps, store)
    if problems:
        raise Corrupted("inode file: " + "; ".join(problems) + " (run daxfs fsck)")
    root = itable.get(INO_ROOT)
    if not root.is_dir:
        raise Corrupted(f"root inode {INO_ROOT} is not a directory (mode {root.rec.mode:o})")
    sb = itable.sup.sb
    free = alloc.count_free(store)
    if free != sb.free_blocks:
        raise Corrupted(
            f"superblock: free_blocks {sb.free_blocks} but the allocation bitmap has "
            f"{free} free blocks (run daxfs fsck)"
        )


def inode_file_problems(itable: InodeTable, maps: BlockMaps, reader: Reader) -> list[str]:
    """What is wrong with the inode file (inode 1) and ``inode_hwm``; never raises on damage.

    Invariants checked: a regular file whose size is a non-zero multiple of
    the block size; its extents written, in order, without holes, mapping file
    block 0 to ``inode_block0`` and ending exactly at its size; room for
    ``inode_hwm`` inodes.
    """
    sb = itable.sup.sb
    try:
        rec = itable.get(INO_INODE_FILE).rec
    except Corrupted as exc:
        return [str(exc.strerror)]
    if not stat.S_ISREG(rec.mode) or rec.map_kind not in (MAP_INLINE, MAP_BTREE):
        return [f"mode {rec.mode:o} with map kind {rec.map_kind}"]
    blocks = rec.size >> BLOCK_SHIFT
    if rec.size % BLOCK_SIZE or blocks == 0:
        return [f"size {rec.size} is not a positive number of blocks"]
    out = []
    if sb.inode_hwm > blocks * INODES_PER_BLOCK:
        out.append(f"inode_hwm {sb.inode_hwm} beyond its {blocks * INODES_PER_BLOCK} slots")
    end = 0
    try:
        for ext in maps.extents(reader, itable.get(INO_INODE_FILE)):
            if ext.lblk != end or ext.unwritten or ext.end > blocks:
                out.append(f"extent {ext} breaks the map of blocks [0, {blocks})")
                break
            if end == 0 and ext.pblk != sb.inode_block0:
                out.append(f"block 0 is at {ext.pblk}, not inode block 0 ({sb.inode_block0})")
            end = ext.end
        else:
            if end != blocks:
                out.append(f"maps {end} of its {blocks} blocks")
    except Corrupted as exc:
        out.append(str(exc.strerror))
    return out


def _assemble(
    device: Device,
    store: PmemStore,
    journal: Journal,
    sup: SuperState,
    readonly: bool,
    owned: bool,
    source: str,
) -> FileSystem:
    layers = build_layers(store, sup)
    layers.itable.check_records = True  # the API trusts nothing fsck would not
    data = DataPath(device, journal, layers.alloc, layers.itable, layers.maps)
    return FileSystem(
        device=device,
        store=store,
        journal=journal,
        sup=sup,
        alloc=layers.alloc,
        itable=layers.itable,
        maps=layers.maps,
        dirs=layers.dirs,
        data=data,
        readonly=readonly,
        on_unmount=_unmounter(owned),
        source=source,
    )


def _reap_orphans(fs: FileSystem) -> None:
    """Finish what the orphan list records (after a crash, or unlinked open files)."""
    for ino in fs.itable.orphans():
        inode = fs.itable.get(ino)
        if inode.rec.nlink == 0:
            fs._reap(inode)
        else:
            with inode.lock:
                fs.data.finish_truncate(inode)


def _unmounter(owned: bool) -> Callable[[FileSystem], None]:
    def unmount(fs: FileSystem) -> None:
        release = (fs.store.close, fs.device.unclaim, fs.device.close if owned else None)
        try:
            if not fs.readonly and not fs.journal.failed:
                with fs.journal.begin() as tx:
                    fs.sup.dirty(tx).state = STATE_CLEAN
                fs.sup.update_backup()
        except BaseException as exc:
            cleanup_after(exc, *release)
            raise
        for step in release:
            if step is not None:
                step()

    return unmount
