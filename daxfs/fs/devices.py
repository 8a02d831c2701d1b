"""Which device a filesystem runs on: pmem by DAX, or a block device through a cache.

The filesystem runs on a ``daxfs.pmem.Device`` either way; the format on the
media is the same.  ``open_target`` picks it from what mkfs, mount or fsck
were given and from the ``dax`` option, Linux's ``-o dax=``:

    target                 dax="always"       "inode" (default)   "never"
    a pmem Device          the device (DAX)   the device (DAX)    cache(PmemBlockDevice)
    a path: file, devdax   open_device (DAX)  open_device (DAX)   cache(open_block(path))
    a block special file   EINVAL (no DAX)    cache(open_block(path))
    a BlockDevice object   EINVAL (no DAX)    cache(the block device)

where cache(b) is ``BlockCache(b)``, or with ``cache_size`` given
``BoundedBlockCache(b, cache_size)`` (daxfs.pagecache.bounded: loaded lazily,
file data in a page cache of ``cache_size`` bytes).  ``cache_size`` for a
mount by DAX is EINVAL.  ``queue_depth`` is the I/O requests in flight of a
block device opened here from a path (``open_block``; EINVAL for any other
target, which has its own queue or none).

Limits, checked at mount (errno-exact, naming the value and the limit):

    cache_size    EINVAL: not a size, or below MIN_LIMIT (64 KiB)      before anything
                  ENOMEM: above MemAvailable                           is opened
    queue_depth   EINVAL: not an integer from 1 to MAX_QUEUE_DEPTH (4096)
    whole-device  ENOMEM: a BlockCache (no cache_size) holds the whole device: a device
    cache           above MemAvailable (BlockCache, once the device's size is known)

``dax="inode"`` is Linux's per-inode choice (FS_XFLAG_DAX): daxfs stores,
inherits and reports the flag (daxfs.fs.daxflag), but a mount has one data
path, so under "inode" every regular file uses DAX where the device can do
it, flagged or not, and none does where it cannot; "always" and "never"
override the flag, as on Linux.  ``BlockCache`` (daxfs.block.cache) caches the
device in DRAM and maps flush/drain onto WRITE bios and FLUSH/FUA, so the
journal's fences become FLUSH ordering (docs/ARCHITECTURE.md, "The filesystem
on a block device").

Invariants
  1. ``open_target`` returns ``(device, owned)``: ``owned`` devices were made
     here and the caller closes them (closing a BlockCache made here closes the
     block device only if it was opened here too).  A target object passed in
     is never closed.
  2. On an error nothing opened here stays open.
"""

from __future__ import annotations

import os
import stat as stat_mod

from daxfs.block.cache import BlockCache
from daxfs.block.device import BlockDevice
from daxfs.block.engine import DEFAULT_QUEUE_DEPTH, check_queue_depth
from daxfs.block.file import open_block
from daxfs.block.pmem import PmemBlockDevice
from daxfs.errors import InvalidArgument
from daxfs.lifecycle import cleanup_after
from daxfs.pagecache.bounded import BoundedBlockCache
from daxfs.pagecache.cache import check_cache_size
from daxfs.pmem import open_device
from daxfs.pmem.device import Device

Target = str | os.PathLike[str] | Device | BlockDevice

DAX_MODES = ("always", "inode", "never")


def check_dax(dax: object) -> str:
    """``dax`` if it is one of DAX_MODES.

    Raises:
        InvalidArgument (EINVAL): anything else.
    """
    if not isinstance(dax, str) or dax not in DAX_MODES:
        raise InvalidArgument(f"dax must be 'always', 'inode' or 'never', not {dax!r}")
    return dax


def _no_dax(what: str, why: str) -> InvalidArgument:
    return InvalidArgument(
        f"dax=always: {what} cannot do DAX ({why}); mount it with dax='never' or 'inode'"
    )


def is_block_special(path: str | os.PathLike[str]) -> bool:
    """True if ``path`` names a block-device special file (False if it does not exist)."""
    try:
        return stat_mod.S_ISBLK(os.stat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return False


def open_target(
    target: Target,
    *,
    dax: str = "inode",
    readonly: bool = False,
    persist: str = "auto",
    size: int | None = None,
    create: bool = False,
    cache_size: int | str | None = None,
    queue_depth: int | None = None,
) -> tuple[Device, bool]:
    """The device to run the filesystem on, and whether the caller must close it.

    ``size`` and ``create`` are for mkfs (a missing image file is created).

    Raises:
        InvalidArgument (EINVAL): a bad ``dax``; ``dax="always"`` on something
            that cannot do DAX (a block device), naming why; ``cache_size`` for
            a DAX device or a BlockCache passed in, not a size, or below the
            minimum; ``queue_depth`` outside 1..4096, or for a target not
            opened here as a block device.
        OSError(ENOMEM): ``cache_size`` above MemAvailable; without it, a
            block device larger than MemAvailable (both sizes named).
        The errors of ``open_device``, ``open_block`` (ENOENT, EACCES, ENODEV, ...)
        and of the cache's first read (EIO naming the sector).
    """
    check_dax(dax)
    if cache_size is not None:
        if _mounts_dax(target, dax):  # EINVAL whatever the size: none is of use here
            _no_cache_size(cache_size, _name(target))
        check_cache_size(cache_size)
    if queue_depth is not None:
        check_queue_depth(queue_depth)
    if queue_depth is not None and not _opens_block(target, dax):
        raise InvalidArgument(
            f"queue_depth is for an image opened as a block device (dax='never', or a "
            f"block special file): {_name(target)} has no queue of daxfs's"
        )
    if isinstance(target, BlockCache):
        if dax == "always":
            raise _no_dax(target.path, "a block device behind a DRAM cache")
        if cache_size is not None:
            raise InvalidArgument(f"cache_size: {target.path} is a cache made already")
        return target, False
    if isinstance(target, BlockDevice):
        if dax == "always":
            raise _no_dax(target.name, f"a block device ({target.engine}) has no direct_access")
        return _cached(target, readonly, cache_size, own=False), True
    if isinstance(target, Device):
        if dax != "never":  # (a cache_size refused above)
            return target, False
        bdev: BlockDevice = PmemBlockDevice(target, readonly=readonly or None)
        return _cached(bdev, readonly, cache_size), True
    name = os.fsdecode(os.fspath(target))
    block_special = is_block_special(name)
    if block_special and dax == "always":
        raise _no_dax(name, "a block-device special file has no direct_access here")
    if block_special or dax == "never":
        depth = DEFAULT_QUEUE_DEPTH if queue_depth is None else queue_depth
        bdev = open_block(name, size, create=create, readonly=readonly, queue_depth=depth)
        return _cached(bdev, readonly, cache_size), True
    return open_device(target, size, create=create, persist=persist, readonly=readonly), True


def _opens_block(target: Target, dax: str) -> bool:
    """Whether ``open_target`` opens ``target`` itself as a block device (open_block)."""
    if isinstance(target, Device | BlockDevice):
        return False
    return dax == "never" or is_block_special(target)


def _mounts_dax(target: Target, dax: str) -> bool:
    """Whether ``open_target`` gives ``target`` to the filesystem as a DAX device."""
    if isinstance(target, BlockCache | BlockDevice):
        return False
    if isinstance(target, Device):
        return dax != "never"
    return dax != "never" and not is_block_special(target)


def _name(target: Target) -> str:
    if isinstance(target, BlockDevice):
        return target.name
    if isinstance(target, Device):
        return str(getattr(target, "path", None) or f"a {type(target).__name__}")
    return os.fsdecode(os.fspath(target))


def _no_cache_size(cache_size: object, name: str) -> None:
    if cache_size is not None:
        raise InvalidArgument(
            f"cache_size is for a block-backed mount; {name} is mounted by DAX "
            "(no page cache): mount it with dax='never'"
        )


def _cached(
    bdev: BlockDevice, readonly: bool, cache_size: int | str | None, *, own: bool = True
) -> BlockCache:
    """A cache of ``bdev`` (owning it if ``own``: closed if the cache cannot be made);
    bounded by ``cache_size`` if given."""
    try:
        if cache_size is None:
            return BlockCache(bdev, own=own, readonly=readonly or None)
        return BoundedBlockCache(bdev, cache_size, own=own, readonly=readonly or None)
    except BaseException as exc:
        if own:
            cleanup_after(exc, bdev.close)
        raise
