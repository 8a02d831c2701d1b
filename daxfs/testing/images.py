"""Base images for the fuzzer and where each of their structures lives.

Theory of operation
-------------------
``base_images()`` builds two small filesystems with every kind of structure
(inline and B+tree extent maps, unwritten extents and holes, a directory of
hundreds of entries in a B+tree, short and long symbolic links, hard links,
nested directories, inodes on the free list, extended attributes inline and in the xattr
block and in value blocks, on a file and a directory), deterministically (fixed uuid and
hash key): the *clean* image, unmounted, and the *journal* image, the same tree
with one more transaction committed but not applied (a crash right after the
commit point), so that recovery has something to replay.

``inventory()`` reads an image with the filesystem's own structures and
records where each structure lives (byte ranges) and which paths depend on
which ranges: a path's *footprint* is its inode record, its map or directory
nodes, its data blocks, and the same for every directory on its path and for
the inode file, and its extended attributes' blocks.  The footprint decides
whether a corruption "touched" a file.

Invariants
  1. ``base_images()`` gives the same trees, the same structures in the same
     blocks, every time (only times differ).
  2. A footprint covers everything a lookup and a read of that path go through,
     except the superblock, the journal and the bitmap.
"""

from __future__ import annotations

import dataclasses
import random
import stat as st
import struct
from typing import TYPE_CHECKING, cast

from daxfs.fs.layout import (
    BLOCK_SHIFT,
    BLOCK_SIZE,
    INO_INODE_FILE,
    INO_ROOT,
    INODE_SIZE,
    MAP_BTREE,
    MAP_INLINE,
    MAP_SYMLINK,
    SB_CRC_OFFSET,
    crc32c,
)
from daxfs.fs.mount import mkfs, mount
from daxfs.testing.crash import snapshot
from daxfs.testing.simulated import PowerFailure, SimulatedPmem

if TYPE_CHECKING:
    from daxfs.fs.file import File as DaxFile
    from daxfs.fs.filesystem import FileSystem

SIZE = 16 << 20
UUID = bytes(range(16))
HASH_KEY = b"daxfs-fuzz-hkey!"
Range = tuple[int, int]  # [start, end) byte offsets


def populate(fs: FileSystem) -> None:
    """The tree every fuzz case starts from (deterministic)."""
    raw = _raw
    fs.makedirs("/d/e/f")
    fs.mkdir("/empty")
    with fs.open("/small", "wb", buffering=0) as f:
        f.write(pattern(1, 10_000))
    with raw(fs.open("/frag", "wb", buffering=0)) as f:  # a B+tree of 300 extents
        for i in range(300):
            f.pwrite(pattern(i + 2, 100), 2 * i * BLOCK_SIZE)
    with raw(fs.open("/sparse", "wb", buffering=0)) as f:  # holes and unwritten extents, inline
        f.pwrite(pattern(3, 5000), 3 * BLOCK_SIZE)
        f.fallocate(8 * BLOCK_SIZE, 2 * BLOCK_SIZE, 0)
        f.pwrite(pattern(4, 100), 12 * BLOCK_SIZE)
    with fs.open("/d/e/f/deep", "wb", buffering=0) as f:
        f.write(pattern(5, 70_000))
    fs.symlink("/small", "/d/link")
    fs.symlink("t" * 300, "/d/longlink")  # its target is in a data block
    fs.link("/small", "/d/hard")
    fs.mkdir("/big")
    for i in range(300):  # a directory B+tree of several leaves
        name = f"/big/entry-{i:04d}-" + "n" * (i % 40)
        with fs.open(name, "wb", buffering=0) as f:
            if i % 7 == 0:
                f.write(pattern(i, 300 + i))
    fs.setxattr("/small", "user.short", pattern(40, 100))  # in the xattr block
    fs.setxattr("/small", "user.long", pattern(41, 6000))  # in two blocks of its own
    fs.setxattr("/d", "trusted.dir", pattern(42, 150))  # too long for the record: a block
    fs.setxattr("/d/e/f/deep", "user.in", pattern(43, 30))  # inline, beside an extent
    fs.setxattr("/d/e/f/deep", "user.in2", pattern(44, 20))
    fs.setxattr("/d/e", "user.dir", pattern(45, 60))  # inline on a directory
    for i in range(6):  # inodes on the free list
        fs.open(f"/gone{i}", "wb").close()
    for i in range(6):
        fs.unlink(f"/gone{i}")


def journal_step(fs: FileSystem) -> None:
    """The transaction left committed but unapplied in the journal image."""
    with _raw(fs.open("/small", "rb+", buffering=0)) as f:
        f.pwrite(b"J" * 3000, 1000)


def _raw(f: object) -> DaxFile:
    return cast("DaxFile", f)


def pattern(seed: int, length: int) -> bytes:
    """``length`` bytes from a seeded generator."""
    return random.Random(seed).randbytes(length)


@dataclasses.dataclass
class Base:
    """A base image and what a walk of it shows."""

    name: str  # "clean" or "journal"
    image: bytes
    #: observations a walk may make of an uncorrupted image (journal: replayed, or not)
    allowed: list[dict[str, tuple[object, ...]]]


def _fix_identity(dev: SimulatedPmem) -> None:
    """Give a fresh filesystem a fixed uuid and hash key (primary and backup)."""
    last = dev.size - BLOCK_SIZE
    for offset in (0, last):
        block = bytearray(dev.read(offset, BLOCK_SIZE))
        block[24:40] = UUID
        block[176:192] = HASH_KEY
        block[168:176] = bytes(8)  # created_ns
        struct.pack_into("<I", block, SB_CRC_OFFSET, crc32c(memoryview(block)[:SB_CRC_OFFSET]))
        dev.write(offset, bytes(block))


def base_images() -> tuple[Base, Base]:
    """The clean image and the journal image (see the module docstring)."""
    dev = SimulatedPmem(SIZE)
    mkfs(dev)
    _fix_identity(dev)
    with mount(dev) as fs:
        populate(fs)
    clean = dev.read(0, SIZE)
    with mount(SimulatedPmem(SIZE, image=clean)) as fs:
        before = snapshot(fs)
    # the journal image: a crash right after the commit point of journal_step, when
    # replaying the journal changes the tree (not the mount's own transaction, whose
    # applied_seq is only flushed lazily)
    journal: bytes | None = None
    after: dict[str, tuple[object, ...]] = {}
    for fence in range(1, 20):
        jdev = SimulatedPmem(SIZE, image=clean)
        fs = mount(jdev)
        jdev.schedule_power_failure(fence)
        try:
            journal_step(fs)
        except PowerFailure:
            state = jdev.persisted_image()
            with mount(SimulatedPmem(SIZE, image=state)) as replayed:
                after = snapshot(replayed)
            if after != before:
                journal = state
                break
        else:
            break
    assert journal is not None, "no crash state leaves journal_step to replay"
    return Base("clean", clean, [before]), Base("journal", journal, [after, before])


# --------------------------------------------------------------------------- inventory


@dataclasses.dataclass
class Node:
    """A B+tree node: block, owner inode, kind ("extents"/"directory"), level, count."""

    block: int
    owner: int
    kind: str
    level: int
    count: int


@dataclasses.dataclass
class Inventory:
    """Where each structure of an image lives, and what each path depends on."""

    block_count: int
    journal: Range  # blocks [start, end) of the journal (header first)
    bitmap: Range  # blocks of the bitmap
    inode_block0: int
    inodes: dict[int, tuple[int, str]]  # ino -> (byte offset of its record, what it is)
    free_inodes: list[int]
    nodes: list[Node]
    inline: list[tuple[int, int]]  # (ino, extent count) of inline maps
    leaves: list[tuple[int, int, int]]  # directory leaves: (block, owner, count)
    xattrs: list[tuple[int, int, list[int]]]  # (xattr block, owner, its value blocks)
    inline_xattrs: list[tuple[int, int]]  # (ino, xattr_bytes) of inline attributes
    data: dict[str, list[Range]]  # path -> its data blocks (byte ranges)
    footprint: dict[str, list[Range]]  # path -> every range it depends on

    def touched(self, path: str, ranges: list[Range]) -> bool:
        return _overlaps(self.footprint.get(path, []), ranges)

    def data_touched(self, path: str, ranges: list[Range]) -> bool:
        return _overlaps(self.data.get(path, []), ranges)


def _overlaps(a: list[Range], b: list[Range]) -> bool:
    return any(x0 < y1 and y0 < x1 for x0, x1 in a for y0, y1 in b)


def inventory(image: bytes) -> Inventory:
    """Read ``image`` (a clean, unmounted filesystem) and map its structures."""
    dev = SimulatedPmem(len(image), image=image)
    fs = mount(dev, readonly=True)
    try:
        return _inventory(fs)
    finally:
        fs.unmount()


def _inventory(fs: FileSystem) -> Inventory:
    sb = fs.superblock
    store = fs.store
    inv = Inventory(
        block_count=sb.block_count,
        journal=(sb.journal_start, sb.journal_start + sb.journal_blocks),
        bitmap=(sb.bitmap_start, sb.bitmap_start + sb.bitmap_blocks),
        inode_block0=sb.inode_block0,
        inodes={},
        free_inodes=[],
        nodes=[],
        inline=[],
        leaves=[],
        xattrs=[],
        inline_xattrs=[],
        data={},
        footprint={},
    )

    def record(ino: int) -> Range:
        block, offset = fs.itable.address(store, ino)
        start = (block << BLOCK_SHIFT) + offset
        return start, start + INODE_SIZE

    def own(ino: int, what: str) -> list[Range]:
        """The inode's record and map/directory nodes; its data blocks go to ``data``."""
        inode = fs.itable.get(ino)
        inv.inodes[ino] = (record(ino)[0], what)
        ranges = [record(ino)]
        if inode.rec.map_kind == MAP_INLINE:
            inv.inline.append((ino, inode.rec.map_count))
        if inode.is_dir:
            for block in fs.dirs.tree_nodes(store, inode):
                ranges.append(_block_range(block))
                view = store.block(block)
                level, count = struct.unpack_from("<HH", view, 24)
                inv.nodes.append(Node(block, ino, "directory", level, count))
                if level == 0:
                    inv.leaves.append((block, ino, count))
        elif inode.rec.map_kind == MAP_BTREE:
            for block in fs.maps.tree_nodes(store, inode):
                ranges.append(_block_range(block))
                level, count = struct.unpack_from("<HH", store.block(block), 24)
                inv.nodes.append(Node(block, ino, "extents", level, count))
        if inode.rec.xattr_bytes:
            inv.inline_xattrs.append((ino, inode.rec.xattr_bytes))
        owned = fs.xattrs.owned(store, inode)
        if owned:
            inv.xattrs.append((owned[0], ino, owned[1:]))
            ranges.extend(_block_range(b) for b in owned)
        return ranges

    def data_of(ino: int) -> list[Range]:
        inode = fs.itable.get(ino)
        if inode.is_dir or inode.rec.map_kind == MAP_SYMLINK:
            return []
        return [
            (e.pblk << BLOCK_SHIFT, (e.pblk + e.length) << BLOCK_SHIFT)
            for e in fs.maps.extents(store, inode)
        ]

    common = own(INO_INODE_FILE, "inode file")
    seen: dict[int, list[Range]] = {}
    stack: list[tuple[str, int, list[Range]]] = [("/", INO_ROOT, common)]
    while stack:
        path, ino, above = stack.pop()
        if ino not in seen:
            kind = _kind(fs, ino)
            seen[ino] = own(ino, f"{kind} {path}")
        mine = above + seen[ino]
        inv.footprint[path] = mine
        inode = fs.itable.get(ino)
        if inode.is_dir:
            for _, name, child, _ in fs.dirs.entries(store, inode):
                child_path = path.rstrip("/") + "/" + name.decode()
                stack.append((child_path, child, mine))
        else:
            inv.data[path] = data_of(ino)
            inv.footprint[path] = mine + inv.data[path]
    ino = sb.free_ino_head
    while ino and len(inv.free_inodes) < 64:
        inv.free_inodes.append(ino)
        inv.inodes.setdefault(ino, (record(ino)[0], "free inode"))
        rec = fs.itable.read_record(store, ino)
        ino = rec.next
    return inv


def _kind(fs: FileSystem, ino: int) -> str:
    mode = fs.itable.get(ino).rec.mode
    return "directory" if st.S_ISDIR(mode) else "symlink" if st.S_ISLNK(mode) else "file"


def _block_range(block: int) -> Range:
    return block << BLOCK_SHIFT, (block + 1) << BLOCK_SHIFT
