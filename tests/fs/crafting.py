"""Crafting damaged and lying images: change on-media fields of an unmounted image.

A checksum proves a block intact, not true: unless told otherwise these
helpers recompute the checksum of what they change (through
daxfs.fs.layout), so that the image holds exactly what a crafted image (or a
bug of ours) could hold, every checksum valid, and the tests show what mount,
the API and fsck do with lies rather than with torn bytes.  ``sample`` is a
filesystem with every kind of structure; ``observe`` is what a user gets from
an image: mount, a walk that reads every file, a write.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import stat
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import daxfs
from daxfs.fs.btree import BTree, _leaf_entries
from daxfs.fs.dir import pack_entries, unpack_entries
from daxfs.fs.journal import Journal
from daxfs.fs.layout import (
    BLOCK_SHIFT,
    BLOCK_SIZE,
    DIRENT,
    JH_APPLIED_OFFSET,
    JREC,
    LEAF_SLOTS,
    NODE_HEADER,
    SB_CRC_OFFSET,
    TREE_DIRECTORY,
    XATTR_CRC_OFFSET,
    InodeRecord,
    JournalHeader,
    Superblock,
    XattrEntry,
    crc32c,
    pack_xattr_block,
    seal_node,
    unpack_xattr_block,
)
from daxfs.fs.mount import build_layers
from daxfs.fs.store import PmemStore
from daxfs.fs.super import SuperState
from daxfs.pmem.device import Device
from daxfs.testing import SimulatedPmem
from tests import helpers

SIZE = helpers.SIZE


def fresh(populate: Any = None, size: int = SIZE) -> SimulatedPmem:
    """A new filesystem on a SimulatedPmem, ``populate(fs)`` run on it, unmounted."""
    dev = helpers.formatted(size)
    if populate is not None:
        with daxfs.mount(dev) as fs:
            populate(fs)
    return dev


def to_file(dev: SimulatedPmem, path: Path) -> Path:
    """Write the device's bytes to an image file (mounting a path owns the device)."""
    path.write_bytes(dev.read(0, dev.size))
    return path


def remove(path: Path) -> None:
    if os.path.lexists(path):
        path.unlink()


# -- superblock ----------------------------------------------------------------------------


def superblock(dev: Device, *, verify: bool = False) -> Superblock:
    """The primary superblock (its checksum verified only with ``verify``: it may be crafted)."""
    return Superblock.unpack(dev.read(0, BLOCK_SIZE), "sb", verify=verify)


def edit_superblock(dev: Device, *, backup: bool = False, **changes: int) -> Superblock:
    """Change fields of the primary (and with ``backup`` the backup) superblock, resealed."""
    sb = dataclasses.replace(superblock(dev), **changes)
    dev.write(0, sb.to_block())
    if backup:
        dev.write((sb.block_count - 1) << BLOCK_SHIFT, sb.to_block())
    return sb


def write_raw_sb(dev: Device, block: bytearray) -> None:
    """Write a primary superblock block as given, its checksum recomputed."""
    struct.pack_into("<I", block, SB_CRC_OFFSET, crc32c(memoryview(block)[:SB_CRC_OFFSET]))
    dev.write(0, block)


# -- inodes --------------------------------------------------------------------------------


def ino_of(dev: Device, path: str) -> int:
    with daxfs.mount(dev) as fs:
        return fs.stat(path, follow_symlinks=False).st_ino


def inode_address(dev: Device, ino: int) -> tuple[int, int]:
    """(device block, offset in it) of inode ``ino``."""
    store = PmemStore(dev)
    try:
        sup = SuperState(store, superblock(dev))
        sup.sb.inode_hwm = max(sup.sb.inode_hwm, ino + 1)
        layers = build_layers(store, sup)  # kept while the table is used: it holds the maps
        return layers.itable.address(store, ino)
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


def write_inode_bytes(dev: Device, ino: int, at: int, data: bytes) -> None:
    """Overwrite bytes of inode ``ino``'s record (checksum left as it was)."""
    blockno, offset = inode_address(dev, ino)
    dev.write((blockno << BLOCK_SHIFT) + offset + at, data)


def flip_inode_byte(dev: Device, ino: int, at: int) -> None:
    """Change byte ``at`` of inode ``ino``'s record (its low bit flipped: whatever it held,
    the checksum is then wrong)."""
    blockno, offset = inode_address(dev, ino)
    where = (blockno << BLOCK_SHIFT) + offset + at
    dev.write(where, bytes([dev.read(where, 1)[0] ^ 1]))


# -- extended attributes --------------------------------------------------------------------------


def xattr_entries(dev: Device, ino: int) -> tuple[int, list[XattrEntry]]:
    """(xattr block, its entries) of inode ``ino``."""
    blockno = read_inode(dev, ino).xattr
    return blockno, unpack_xattr_block(dev.read(blockno << BLOCK_SHIFT, BLOCK_SIZE), ino, blockno)


def write_xattr_block(
    dev: Device,
    ino: int,
    entries: list[XattrEntry],
    *,
    owner: int | None = None,
    blockno: int | None = None,
) -> None:
    """Write ``entries`` (in the order given) as the xattr block of ``ino``, sealed;
    ``owner`` and ``blockno`` lie about whose and where it is."""
    at = read_inode(dev, ino).xattr
    raw = pack_xattr_block(
        ino if owner is None else owner, at if blockno is None else blockno, entries
    )
    dev.write(at << BLOCK_SHIFT, raw)


def edit_xattr_block(dev: Device, ino: int, change: Callable[[bytearray], None]) -> None:
    """Apply ``change`` to the xattr block of ``ino`` and reseal it."""
    at = read_inode(dev, ino).xattr
    block = bytearray(dev.read(at << BLOCK_SHIFT, BLOCK_SIZE))
    change(block)
    struct.pack_into("<I", block, XATTR_CRC_OFFSET, 0)
    struct.pack_into("<I", block, XATTR_CRC_OFFSET, crc32c(block))
    dev.write(at << BLOCK_SHIFT, block)


# -- B+tree nodes and directories --------------------------------------------------------------


def edit_node(dev: Device, blockno: int, change: Callable[[bytearray], None]) -> None:
    """Apply ``change`` to B+tree node ``blockno`` and reseal it."""
    block = bytearray(dev.read(blockno << BLOCK_SHIFT, BLOCK_SIZE))
    change(block)
    seal_node(block)
    dev.write(blockno << BLOCK_SHIFT, block)


def node_header(dev: Device, blockno: int) -> tuple[int, ...]:
    return NODE_HEADER.unpack_from(dev.read(blockno << BLOCK_SHIFT, BLOCK_SIZE))


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


def dir_leaf_entries(dev: Device, dir_ino: int) -> list[tuple[int, list[tuple[bytes, int, int]]]]:
    """(key, entries) of a directory whose tree is a single leaf."""
    rec = read_inode(dev, dir_ino)
    assert rec.map_height == 1, "helper handles one-leaf directories"
    view = memoryview(bytearray(dev.read(rec.map_root << BLOCK_SHIFT, BLOCK_SIZE)))
    (count,) = struct.unpack_from("<H", view, 26)
    return [(k, unpack_entries(v, "dir", 1 << 63)) for k, v in _leaf_entries(view, count)]


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


# -- journal -------------------------------------------------------------------------------


def journal_header(dev: Device) -> JournalHeader | None:
    sb = superblock(dev)
    return JournalHeader.unpack(dev.read(sb.journal_start << BLOCK_SHIFT, 64))


def write_journal_header(dev: Device, header: JournalHeader) -> None:
    sb = superblock(dev)
    dev.write(sb.journal_start << BLOCK_SHIFT, header.pack())


def forge_journal(
    dev: Device, records: list[tuple[int, bytes]], *, seq: int = 5, nrecords: int | None = None
) -> None:
    """A committed, unapplied transaction of ``records`` (offset, data), checksums valid."""
    sb = superblock(dev)
    header = sb.journal_start << BLOCK_SHIFT
    payload = b"".join(
        JREC.pack(off, len(data), 0) + data + bytes(-len(data) & 7) for off, data in records
    )
    count = len(records) if nrecords is None else nrecords
    dev.write(header + BLOCK_SIZE, payload)
    dev.write(header, JournalHeader(seq, count, len(payload), crc32c(payload)).pack())


def forge_raw_header(dev: Device, *, seq: int, nrecords: int, payload: bytes) -> None:
    """A journal header over the log's first ``len(payload)`` bytes, checksums valid."""
    sb = superblock(dev)
    header = sb.journal_start << BLOCK_SHIFT
    dev.write(header, JournalHeader(seq, nrecords, len(payload), crc32c(payload)).pack())


def set_applied_seq(dev: Device, value: int) -> None:
    sb = superblock(dev)
    dev.write((sb.journal_start << BLOCK_SHIFT) + JH_APPLIED_OFFSET, value.to_bytes(8, "little"))


def settle_journal(dev: Device) -> None:
    """Replay the journal's pending transaction, so that edits are not undone by recovery."""
    sb = Superblock.unpack(dev.read(0, BLOCK_SIZE), "sb", verify=False)
    store = PmemStore(dev, sb.block_count)
    try:
        Journal(store, sb.journal_start, sb.journal_blocks).recover()
    finally:
        store.close()


# -- a sample filesystem and what a user sees of it ------------------------------------

_TEMPLATE: dict[int, bytes] = {}


def sample(size: int = SIZE) -> Device:
    """A filesystem holding every kind of structure (built once, copied per call):
    nested directories, a 200-entry directory (a two-level tree), inline and
    B+tree extent maps, unwritten extents, hard links, inline and block symlinks,
    a free inode on the free list, extended attributes (in the block and in blocks
    of their own, on a file and a directory)."""
    if size not in _TEMPLATE:
        dev = helpers.formatted(size)
        with daxfs.mount(dev) as fs:
            fs.makedirs("/a/b/c")
            fs.mkdir("/empty")
            with fs.open("/a/file", "wb") as f:
                f.write(b"x" * 10000)
            with fs.open("/a/b/small", "wb") as f:
                f.write(b"small")
            fs.link("/a/file", "/a/hard")
            fs.symlink("/a/file", "/sym")
            fs.symlink("/" + "t" * 300, "/longsym")
            with fs.open("/frag", "wb", buffering=0) as f:  # 12 extents: a B+tree map
                for i in range(12):
                    f.pwrite(bytes([65 + i]) * BLOCK_SIZE, 2 * i * BLOCK_SIZE)
            with fs.open("/prealloc", "wb", buffering=0) as f:
                f.write(b"p" * 5000)
                f.fallocate(0, 3 * BLOCK_SIZE, 1)  # FALLOC_FL_KEEP_SIZE: unwritten past EOF
            fs.mkdir("/big")
            for i in range(200):
                with fs.open(f"/big/n{i:03d}", "wb") as f:
                    f.write(str(i).encode())
            fs.open("/gone", "wb").close()
            fs.unlink("/gone")  # its inode is on the free list
            fs.setxattr("/a/file", "user.short", b"short value")
            fs.setxattr("/a/file", "user.long", bytes(range(256)) * 24)  # 6 KiB: 2 blocks
            fs.setxattr("/a", "trusted.dir", DIR_XATTR)  # too long for the record: a block
            fs.setxattr("/a/b/small", "user.in", b"inline value")  # inline, beside an extent
            fs.setxattr("/a/b", "user.d", b"inline on a directory")
        _TEMPLATE[size] = dev.read(0, size)
    return SimulatedPmem(size, image=_TEMPLATE[size])


#: the sample's attribute of /a, too long to be inline: it is in an xattr block
DIR_XATTR = b"on a directory " * 14


@dataclasses.dataclass
class Seen:
    """What mount, a walk that reads everything, and a write gave."""

    mounted: bool = False
    walked: bool = False
    wrote: bool = False
    #: content hash of every file read, by inode number
    data: dict[int, str] = dataclasses.field(default_factory=dict)
    error: str = ""


def observe(dev: Device, *, write: bool = True, limit: int = 10_000) -> Seen:
    """Mount, walk from the root reading every file (bounded: each inode once),
    then create and write a file; record how far it got."""
    seen = Seen()
    try:
        fs = daxfs.mount(dev)
    except Exception as exc:
        seen.error = f"mount: {exc!r}"
        return seen
    seen.mounted = True
    try:
        try:
            visited: set[int] = set()
            stack = ["/"]
            while stack and len(visited) < limit:
                path = stack.pop()
                s = fs.lstat(path)
                if s.st_ino in visited:
                    continue
                visited.add(s.st_ino)
                if stat.S_ISDIR(s.st_mode):
                    stack.extend(path.rstrip("/") + "/" + n for n in fs.listdir(path))
                elif stat.S_ISLNK(s.st_mode):
                    fs.readlink(path)
                else:
                    with fs.open(path, "rb") as f:  # the first MiB: sizes may lie
                        seen.data[s.st_ino] = hashlib.sha256(f.read(1 << 20)).hexdigest()
                if not stat.S_ISLNK(s.st_mode):  # extended attributes: names and values
                    for name in fs.listxattr(path, follow_symlinks=False):
                        fs.getxattr(path, name, follow_symlinks=False)
            seen.walked = True
        except Exception as exc:  # not only OSError: an API bug must show as a failed walk
            seen.error = f"walk: {exc!r}"
        if write:
            try:
                with fs.open("/__probe", "wb") as f:
                    f.write(b"probe" * 3000)
                with fs.open("/__probe", "rb") as f:
                    assert f.read() == b"probe" * 3000
                fs.unlink("/__probe")
                seen.wrote = True
            except Exception as exc:
                seen.error += f" write: {exc!r}"
    finally:
        try:
            fs.unmount()
        except OSError as exc:
            seen.error += f" unmount: {exc!r}"
    return seen
