"""Crafting damaged and lying images for fsck tests: edit structures in place.

Each helper changes one structure of an unmounted image on a device and, unless
told otherwise, recomputes its checksum through daxfs.fs.layout, so that the
image lies with valid checksums (what a crafted image or a bug of ours makes).
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import daxfs
from daxfs.fs.btree import BTree, _leaf_entries
from daxfs.fs.dir import pack_entries, unpack_entries
from daxfs.fs.layout import (
    BLOCK_SHIFT,
    BLOCK_SIZE,
    JH_APPLIED_OFFSET,
    NODE_HEADER,
    TREE_DIRECTORY,
    InodeRecord,
    JournalHeader,
    Superblock,
    seal_node,
)
from daxfs.fs.mount import build_layers
from daxfs.fs.store import PmemStore
from daxfs.fs.super import SuperState
from daxfs.pmem.device import Device


def superblock(dev: Device) -> Superblock:
    return Superblock.unpack(dev.read(0, BLOCK_SIZE), "sb", verify=False)


def edit_superblock(dev: Device, *, backup: bool = False, **changes: int) -> None:
    """Change counters or fields of the primary (and with ``backup`` the backup) superblock."""
    sb = superblock(dev)
    for name, value in changes.items():
        assert hasattr(sb, name), name
        setattr(sb, name, value)
    dev.write(0, sb.to_block())
    if backup:
        dev.write((sb.block_count - 1) << BLOCK_SHIFT, sb.to_block())


def inode_address(dev: Device, ino: int) -> tuple[int, int]:
    """(device block, byte offset) of inode ``ino``."""
    store = PmemStore(dev)
    try:
        layers = build_layers(store, SuperState(store, superblock(dev)))
        return layers.itable.address(store, ino)
    finally:
        store.close()


def read_inode(dev: Device, ino: int) -> InodeRecord:
    blockno, offset = inode_address(dev, ino)
    return InodeRecord.unpack_from(dev.read(blockno << BLOCK_SHIFT, BLOCK_SIZE), offset, ino)


def edit_inode(dev: Device, ino: int, **changes: object) -> None:
    """Change fields of inode ``ino`` and reseal it."""
    blockno, offset = inode_address(dev, ino)
    block = bytearray(dev.read(blockno << BLOCK_SHIFT, BLOCK_SIZE))
    rec = InodeRecord.unpack_from(block, offset, ino)
    for name, value in changes.items():
        assert hasattr(rec, name), name
        setattr(rec, name, value)
    rec.pack_into(block, offset)
    dev.write(blockno << BLOCK_SHIFT, block)


def write_inode_bytes(dev: Device, ino: int, at: int, data: bytes) -> None:
    """Overwrite bytes of inode ``ino``'s record (checksum left as it was)."""
    blockno, offset = inode_address(dev, ino)
    dev.write((blockno << BLOCK_SHIFT) + offset + at, data)


def edit_node(dev: Device, blockno: int, change: Callable[[bytearray], None]) -> None:
    """Apply ``change`` to B+tree node ``blockno`` and reseal it."""
    block = bytearray(dev.read(blockno << BLOCK_SHIFT, BLOCK_SIZE))
    change(block)
    seal_node(block)
    dev.write(blockno << BLOCK_SHIFT, block)


def node_header(dev: Device, blockno: int) -> tuple[int, ...]:
    return NODE_HEADER.unpack_from(dev.read(blockno << BLOCK_SHIFT, BLOCK_SIZE))


def dir_leaf_entries(dev: Device, dir_ino: int) -> list[tuple[int, list[tuple[bytes, int, int]]]]:
    """(key, entries) of a directory whose tree is a single leaf."""
    rec = read_inode(dev, dir_ino)
    assert rec.map_height == 1, "helper handles one-leaf directories"
    view = memoryview(bytearray(dev.read(rec.map_root << BLOCK_SHIFT, BLOCK_SIZE)))
    (count,) = struct.unpack_from("<H", view, 26)
    return [(k, unpack_entries(v, "dir")) for k, v in _leaf_entries(view, count)]


def write_dir_leaf(
    dev: Device, dir_ino: int, items: list[tuple[int, list[tuple[bytes, int, int]]]]
) -> None:
    """Replace the entries of a one-leaf directory (keys sorted here, leaf resealed)."""
    rec = read_inode(dev, dir_ino)
    tree = BTree(dir_ino, TREE_DIRECTORY, rec.map_root, 1, None)  # type: ignore[arg-type]
    entries = sorted((k, pack_entries(e)) for k, e in items)
    block = tree._encode_leaf(rec.map_root, entries)
    seal_node(block)
    dev.write(rec.map_root << BLOCK_SHIFT, block)


def journal_header(dev: Device) -> JournalHeader | None:
    sb = superblock(dev)
    return JournalHeader.unpack(dev.read(sb.journal_start << BLOCK_SHIFT, 64))


def set_applied_seq(dev: Device, seq: int) -> None:
    sb = superblock(dev)
    dev.write((sb.journal_start << BLOCK_SHIFT) + JH_APPLIED_OFFSET, struct.pack("<Q", seq))


def write_journal_header(dev: Device, header: JournalHeader) -> None:
    sb = superblock(dev)
    dev.write(sb.journal_start << BLOCK_SHIFT, header.pack())


def ino_of(dev: Device, path: str) -> int:
    with daxfs.mount(dev) as fs:
        return int(fs.stat(path, follow_symlinks=False).st_ino)
