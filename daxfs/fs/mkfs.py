"""mkfs: write an empty daxfs onto a device.

Order of writes (mkfs is crash-safe): journal header, bitmap, inode block 0,
backup superblock, everything persisted; then the primary superblock, the
commit point of mkfs.  A crash before it leaves no mountable filesystem; a
crash after it leaves a complete one.
"""

from __future__ import annotations

import os
import secrets
import stat as st
import time
import uuid as uuid_mod
from collections.abc import Callable

import numpy as np

from daxfs.errors import Exists, FileTooLarge, InvalidArgument
from daxfs.fs.layout import (
    BITMAP_BYTES,
    BITS_PER_BITMAP_BLOCK,
    BLOCK_SHIFT,
    BLOCK_SIZE,
    EXTENT,
    FIRST_FREE_INO,
    INLINE_AREA,
    INO_INODE_FILE,
    INO_ROOT,
    INODE_SIZE,
    MAP_INLINE,
    MAX_FS_SIZE,
    MIN_FS_SIZE,
    SB_MAGIC,
    InodeRecord,
    Superblock,
    bitmap_blocks_for,
    seal_bitmap_block,
)
from daxfs.pmem.device import Device

Progress = Callable[[int, int], None]
MAX_LABEL = 63  # bytes, UTF-8


def journal_blocks_for(block_count: int) -> int:
    """1/128 of the filesystem, at least 1 MiB, at most 16 MiB."""
    return max(256, min(4096, block_count // 128))


def geometry(block_count: int) -> tuple[int, int, int, int]:
    """(journal_blocks, bitmap_start, bitmap_blocks, inode_block0) for a size."""
    jblocks = journal_blocks_for(block_count)
    bstart = 1 + jblocks
    bblocks = bitmap_blocks_for(block_count)
    return jblocks, bstart, bblocks, bstart + bblocks


def check_target(device: Device, size: int, force: bool, name: str) -> None:
    """Refuse to overwrite a daxfs or data mkfs does not recognise, unless forced.

    Raises:
        Exists (EEXIST): a daxfs superblock, or non-zero bytes, where mkfs writes.
    """
    if force:
        return
    head = device.read(0, min(size, 1 << 20))
    tail = device.read(size - BLOCK_SIZE, BLOCK_SIZE)
    if head[:8] == SB_MAGIC or tail[:8] == SB_MAGIC:
        raise Exists(f"{name} already holds a daxfs filesystem (use force=True to overwrite)", name)
    if np.frombuffer(head, dtype=np.uint64).any() or np.frombuffer(tail, dtype=np.uint64).any():
        raise Exists(
            f"{name} holds data that is not a daxfs filesystem (use force=True to overwrite)",
            name,
        )


def check_mkfs_args(size: int | None, label: str, name: str) -> None:
    """Refuse a size below the minimum or a bad label before anything is written.

    Raises:
        InvalidArgument: size not an integer or below 16 MiB; label too long or with NUL.
        FileTooLarge (EFBIG): size above MAX_FS_SIZE.
    """
    if size is not None:
        if isinstance(size, bool) or not isinstance(size, int):
            raise InvalidArgument(f"{name}: size must be an integer, not {size!r}", name)
        if size < MIN_FS_SIZE:
            raise InvalidArgument(
                f"{name}: a daxfs needs at least {MIN_FS_SIZE >> 20} MiB, got {size} bytes", name
            )
        if size > MAX_FS_SIZE:
            raise FileTooLarge(
                f"{name}: a daxfs holds at most {MAX_FS_SIZE >> 60} EiB, not {size} bytes", name
            )
    if not isinstance(label, str) or len(label.encode("utf-8")) > MAX_LABEL or "\0" in label:
        raise InvalidArgument(f"label must be at most {MAX_LABEL} UTF-8 bytes without NUL")


def format_device(
    device: Device,
    size: int | None = None,
    *,
    label: str = "",
    force: bool = False,
    name: str = "device",
    progress: Progress | None = None,
) -> Superblock:
    """Write an empty filesystem of ``size`` bytes (default: the device) on ``device``.

    Raises:
        InvalidArgument: size too small or larger than the device, label too long.
        Exists: the device holds a filesystem or other data and force is False.
    """
    check_mkfs_args(size, label, name)
    size = device.size if size is None else size
    if size > device.size:
        raise InvalidArgument(
            f"{name}: size {size} exceeds the device of {device.size} bytes", name
        )
    block_count = size >> BLOCK_SHIFT
    if block_count << BLOCK_SHIFT < MIN_FS_SIZE:
        raise InvalidArgument(
            f"{name}: a daxfs needs at least {MIN_FS_SIZE >> 20} MiB, got {size} bytes", name
        )
    size = block_count << BLOCK_SHIFT
    check_target(device, size, force, name)
    jblocks, bstart, bblocks, iblock0 = geometry(block_count)

    device.fill(0, BLOCK_SIZE, drain=False)  # no superblock until the end
    device.fill(BLOCK_SIZE, BLOCK_SIZE, drain=False)  # empty journal header
    used = _write_bitmap(device, block_count, bstart, bblocks, iblock0, progress)
    _write_inode_block0(device, iblock0)
    t = _now()
    sb = Superblock(
        block_count=block_count,
        uuid=uuid_mod.uuid4().bytes,
        label=label,
        journal_start=1,
        journal_blocks=jblocks,
        bitmap_start=bstart,
        bitmap_blocks=bblocks,
        inode_block0=iblock0,
        created_ns=t,
        hash_key=secrets.token_bytes(16),
        free_blocks=block_count - used,
        free_inodes=0,
        used_inodes=2,
        free_ino_head=0,
        orphan_head=0,
        next_generation=1,
        inode_hwm=FIRST_FREE_INO,
    )
    device.write((block_count - 1) << BLOCK_SHIFT, sb.to_block(), drain=False)
    device.drain()
    device.write(0, sb.to_block())  # COMMIT POINT of mkfs
    return sb


def _now() -> int:
    return time.time_ns()


def _write_bitmap(
    device: Device,
    block_count: int,
    bstart: int,
    bblocks: int,
    iblock0: int,
    progress: Progress | None,
) -> int:
    """Write the bitmap with the static blocks used; return how many are used."""
    static = [(0, iblock0 + 1), (block_count - 1, block_count)]
    used = iblock0 + 2
    for k in range(bblocks):
        first = k * BITS_PER_BITMAP_BLOCK
        bits = np.zeros(BITS_PER_BITMAP_BLOCK, dtype=np.uint8)
        for lo, hi in static:
            a, b = max(lo, first), min(hi, first + BITS_PER_BITMAP_BLOCK)
            if a < b:
                bits[a - first : b - first] = 1
        beyond = block_count - first
        if beyond < BITS_PER_BITMAP_BLOCK:
            bits[max(beyond, 0) :] = 1
        block = bytearray(BLOCK_SIZE)
        block[:BITMAP_BYTES] = np.packbits(bits, bitorder="little").tobytes()
        seal_bitmap_block(block)
        device.write((bstart + k) << BLOCK_SHIFT, block, drain=False)
        if progress is not None:
            progress(k + 1, bblocks)
    return used


def _write_inode_block0(device: Device, iblock0: int) -> None:
    t = _now()
    block = bytearray(BLOCK_SIZE)
    inline = EXTENT.pack(0, iblock0, 1, 0)
    inode_file = InodeRecord(
        ino=INO_INODE_FILE,
        mode=st.S_IFREG | 0o600,
        nlink=1,
        size=BLOCK_SIZE,
        blocks=1,
        atime_ns=t,
        mtime_ns=t,
        ctime_ns=t,
        btime_ns=t,
        map_kind=MAP_INLINE,
        map_count=1,
        inline=inline + bytes(INLINE_AREA - len(inline)),
    )
    root = InodeRecord(
        ino=INO_ROOT,
        mode=st.S_IFDIR | 0o755,
        nlink=2,
        uid=os.getuid(),
        gid=os.getgid(),
        atime_ns=t,
        mtime_ns=t,
        ctime_ns=t,
        btime_ns=t,
        parent=INO_ROOT,
    )
    inode_file.pack_into(block, INO_INODE_FILE * INODE_SIZE)
    root.pack_into(block, INO_ROOT * INODE_SIZE)
    device.write(iblock0 << BLOCK_SHIFT, block, drain=False)
