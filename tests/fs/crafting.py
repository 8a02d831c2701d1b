"""Helpers to craft damaged images: change on-media fields and recompute their checksums.

A checksum proves a block intact, not true: these helpers write exactly what a
crafted image (or a bug of ours) could hold, with every checksum valid, so the
tests show what mount and the API do with lies rather than with torn bytes.
"""

from __future__ import annotations

import dataclasses
import os
import struct
from pathlib import Path
from typing import Any

import daxfs
from daxfs.fs.journal import Journal
from daxfs.fs.layout import (
    BLOCK_SHIFT,
    BLOCK_SIZE,
    DIRENT,
    JH_APPLIED_OFFSET,
    JREC,
    LEAF_SLOTS,
    SB_CRC_OFFSET,
    InodeRecord,
    JournalHeader,
    Superblock,
    crc32c,
    seal_node,
)
from daxfs.fs.mount import build_layers
from daxfs.fs.store import PmemStore
from daxfs.fs.super import SuperState
from daxfs.pmem.device import Device
from daxfs.testing import SimulatedPmem

SIZE = 16 << 20


def fresh(populate: Any = None, size: int = SIZE) -> SimulatedPmem:
    """A new filesystem on a SimulatedPmem, ``populate(fs)`` run on it, unmounted."""
    dev = SimulatedPmem(size)
    daxfs.mkfs(dev)
    if populate is not None:
        with daxfs.mount(dev) as fs:
            populate(fs)
    return dev


def to_file(dev: SimulatedPmem, path: Path) -> Path:
    """Write the device's bytes to an image file (mounting a path owns the device)."""
    path.write_bytes(dev.read(0, dev.size))
    return path


def sb_of(dev: Device) -> Superblock:
    return Superblock.unpack(dev.read(0, BLOCK_SIZE), "sb")


def edit_sb(dev: Device, *, backup: bool = False, **changes: int) -> Superblock:
    """Change superblock fields and reseal it (the backup too with ``backup``)."""
    sb = dataclasses.replace(sb_of(dev), **changes)
    dev.write(0, sb.to_block())
    if backup:
        dev.write((sb.block_count - 1) << BLOCK_SHIFT, sb.to_block())
    return sb


def ino_of(dev: Device, path: str) -> int:
    with daxfs.mount(dev) as fs:
        return fs.stat(path, follow_symlinks=False).st_ino


def inode_address(dev: Device, ino: int) -> tuple[int, int]:
    """(device block, offset in it) of inode ``ino``."""
    store = PmemStore(dev)
    try:
        sup = SuperState(store, sb_of(dev))
        sup.sb.inode_hwm = max(sup.sb.inode_hwm, ino + 1)
        return build_layers(store, sup).itable.address(store, ino)
    finally:
        store.close()


def read_inode(dev: Device, ino: int) -> InodeRecord:
    blockno, offset = inode_address(dev, ino)
    return InodeRecord.unpack_from(dev.read(blockno << BLOCK_SHIFT, BLOCK_SIZE), offset, ino)


def write_inode(dev: Device, rec: InodeRecord) -> None:
    blockno, offset = inode_address(dev, rec.ino)
    block = bytearray(dev.read(blockno << BLOCK_SHIFT, BLOCK_SIZE))
    rec.pack_into(block, offset)
    dev.write(blockno << BLOCK_SHIFT, block)


def edit_inode(dev: Device, ino: int, **changes: Any) -> InodeRecord:
    """Change fields of an inode record and reseal it."""
    rec = dataclasses.replace(read_inode(dev, ino), **changes)
    write_inode(dev, rec)
    return rec


def edit_node(dev: Device, blockno: int, offset: int, data: bytes) -> None:
    """Overwrite bytes of a B+tree node and reseal it."""
    block = bytearray(dev.read(blockno << BLOCK_SHIFT, BLOCK_SIZE))
    block[offset : offset + len(data)] = data
    seal_node(block)
    dev.write(blockno << BLOCK_SHIFT, block)


def forge_journal(
    dev: Device, records: list[tuple[int, bytes]], *, seq: int = 5, nrecords: int | None = None
) -> None:
    """A committed, unapplied transaction of ``records`` (offset, data), checksums valid."""
    sb = sb_of(dev)
    header = sb.journal_start << BLOCK_SHIFT
    payload = b"".join(
        JREC.pack(off, len(data), 0) + data + bytes(-len(data) & 7) for off, data in records
    )
    count = len(records) if nrecords is None else nrecords
    dev.write(header + BLOCK_SIZE, payload)
    dev.write(header, JournalHeader(seq, count, len(payload), crc32c(payload)).pack())


def set_applied_seq(dev: Device, value: int) -> None:
    sb = sb_of(dev)
    dev.write((sb.journal_start << BLOCK_SHIFT) + JH_APPLIED_OFFSET, value.to_bytes(8, "little"))


def remove(path: Path) -> None:
    if os.path.lexists(path):
        path.unlink()


def forge_raw_header(dev: Device, *, seq: int, nrecords: int, payload: bytes) -> None:
    """A journal header over the log's first ``len(payload)`` bytes, checksums valid."""
    sb = sb_of(dev)
    header = sb.journal_start << BLOCK_SHIFT
    dev.write(header, JournalHeader(seq, nrecords, len(payload), crc32c(payload)).pack())


def edit_entry(
    dev: Device,
    dir_ino: int,
    name: bytes,
    *,
    new_name: bytes | None = None,
    ino: int | None = None,
    dtype: int | None = None,
) -> None:
    """Patch directory entry ``name`` in place in a one-leaf directory tree, resealed.

    ``new_name`` must have the length of ``name`` (the value keeps its size and
    its key, which is then no longer the hash of the name).
    """
    rec = read_inode(dev, dir_ino)
    assert rec.map_height == 1, "one-leaf directories only"
    leaf = bytearray(dev.read(rec.map_root << BLOCK_SHIFT, BLOCK_SIZE))
    count = struct.unpack_from("<H", leaf, 26)[0]
    for i in range(count):
        off, n = struct.unpack_from("<HH", leaf, LEAF_SLOTS + 4 * i)
        pos = off
        while pos < off + n:
            e_ino, e_type, e_len = DIRENT.unpack_from(leaf, pos)
            e_name = bytes(leaf[pos + DIRENT.size : pos + DIRENT.size + e_len])
            if e_name == name:
                if new_name is not None:
                    assert len(new_name) == len(name)
                    leaf[pos + DIRENT.size : pos + DIRENT.size + e_len] = new_name
                DIRENT.pack_into(
                    leaf,
                    pos,
                    e_ino if ino is None else ino,
                    e_type if dtype is None else dtype,
                    e_len,
                )
                seal_node(leaf)
                dev.write(rec.map_root << BLOCK_SHIFT, leaf)
                return
            pos += DIRENT.size + e_len
    raise AssertionError(f"no entry {name!r} in directory inode {dir_ino}")


def settle_journal(dev: Device) -> None:
    """Replay the journal's pending transaction, so that edits are not undone by recovery."""
    sb = Superblock.unpack(dev.read(0, BLOCK_SIZE), "sb", verify=False)
    store = PmemStore(dev, sb.block_count)
    try:
        Journal(store, sb.journal_start, sb.journal_blocks).recover()
    finally:
        store.close()


def write_raw_sb(dev: Device, block: bytearray) -> None:
    """Write a primary superblock block as given, its checksum recomputed."""
    struct.pack_into("<I", block, SB_CRC_OFFSET, crc32c(memoryview(block)[:SB_CRC_OFFSET]))
    dev.write(0, block)
