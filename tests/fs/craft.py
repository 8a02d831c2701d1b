"""Crafting damaged and lying images for fsck tests (more of tests/fs/crafting.py).

Each helper changes one structure of an unmounted image on a device and, unless
told otherwise, recomputes its checksum through daxfs.fs.layout, so that the
image lies with valid checksums (what a crafted image or a bug of ours makes).
``sample`` is a filesystem with every kind of structure; ``observe`` is what a
user gets from it: mount, a walk that reads every file, a write.
"""

from __future__ import annotations

import dataclasses
import hashlib
import stat
import struct
from collections.abc import Callable

import daxfs
from daxfs.fs.btree import BTree, _leaf_entries
from daxfs.fs.dir import pack_entries, unpack_entries
from daxfs.fs.layout import (
    BLOCK_SHIFT,
    BLOCK_SIZE,
    NODE_HEADER,
    TREE_DIRECTORY,
    JournalHeader,
    Superblock,
    seal_node,
)
from daxfs.pmem.device import Device

from .crafting import edit_inode, ino_of, inode_address, read_inode, set_applied_seq

__all__ = [
    "edit_inode",
    "ino_of",
    "inode_address",
    "read_inode",
    "set_applied_seq",
]


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


def journal_header(dev: Device) -> JournalHeader | None:
    sb = superblock(dev)
    return JournalHeader.unpack(dev.read(sb.journal_start << BLOCK_SHIFT, 64))


def write_journal_header(dev: Device, header: JournalHeader) -> None:
    sb = superblock(dev)
    dev.write(sb.journal_start << BLOCK_SHIFT, header.pack())


# -- a sample filesystem and what a user sees of it ------------------------------------

SIZE = 16 << 20
_TEMPLATE: dict[int, bytes] = {}


def sample(size: int = SIZE) -> Device:
    """A filesystem holding every kind of structure (built once, copied per call):
    nested directories, a 200-entry directory (a two-level tree), inline and
    B+tree extent maps, unwritten extents, hard links, inline and block symlinks,
    a free inode on the free list."""
    from daxfs.testing import SimulatedPmem

    if size not in _TEMPLATE:
        dev = SimulatedPmem(size)
        daxfs.mkfs(dev)
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
        _TEMPLATE[size] = dev.read(0, size)
    return SimulatedPmem(size, image=_TEMPLATE[size])


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
