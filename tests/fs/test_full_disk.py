"""Operations that free space succeed on a full filesystem (issue 8).

Each scenario fills the filesystem by writing until ENOSPC (halving the write
down to one block), with free space contiguous or fragmented, then runs one
freeing operation, checks that it succeeded and gave blocks back, refills,
and goes on to the next.  At the end every file holds what the model says and
fsck is clean.

Truncate, unlink, rmdir and rename need no block at all: the strict variant
sets the allocator's reserve to 0 and fills to the last block first.  A punch
inside an extent may need a B+tree node, which the reserve provides; without
a reserve it fails with ENOSPC and changes nothing.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterator

import pytest

import daxfs
from daxfs.errors import NoSpace
from daxfs.fs.data import FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE
from daxfs.fs.fsck import fsck
from daxfs.fs.layout import MAP_BTREE, MAP_INLINE
from daxfs.testing import SimulatedPmem
from tests import helpers

BLOCK = 4096
SIZE = 16 << 20  # the smallest filesystem
PUNCH = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
Files = dict[str, bytes]


@pytest.fixture
def dev() -> Iterator[SimulatedPmem]:
    yield from helpers.fresh_device(SIZE)


def pattern(seed: int, n: int) -> bytes:
    return bytes((seed * 7 + i) % 251 + 1 for i in range(256)) * (n // 256) + bytes(n % 256)


def pwrite(fs: daxfs.FileSystem, files: Files, path: str, data: bytes, offset: int) -> None:
    with fs.open(path, "rb+" if path in files else "wb", buffering=0) as f:
        f.pwrite(data, offset)
    old = bytearray(files.get(path, b""))
    old[len(old) :] = bytes(max(0, offset + len(data) - len(old)))
    old[offset : offset + len(data)] = data
    files[path] = bytes(old)


def build(fs: daxfs.FileSystem, fragmented: bool) -> Files:
    """The files the operations free space from; with ``fragmented``, free space is
    made of one-block holes before the disk is filled (and so is /frag)."""
    files: Files = {}
    # /tree: a B+tree map whose first extent is 40 blocks long, then 7 one-block extents
    pwrite(fs, files, "/tree", pattern(1, 40 * BLOCK), 0)
    for block in range(41, 55, 2):
        pwrite(fs, files, "/tree", pattern(block, BLOCK), block * BLOCK)
    # /inline: five inline extents; /inline2: another, to split in the punch step
    for path in ("/inline", "/inline2"):
        pwrite(fs, files, path, pattern(2, 64 * BLOCK), 0)
        with fs.open(path, "rb+", buffering=0) as f:
            for block in (1, 3, 5, 7):
                f.fallocate(block * BLOCK, BLOCK, PUNCH)
                files[path] = punched(files[path], block, 1)
    # /frag, /frag2: more than BATCH_EXTENTS extents (batched truncate and unlink)
    for path in ("/frag", "/frag2"):
        for i in range(300):
            pwrite(fs, files, path, pattern(i, BLOCK), 2 * i * BLOCK)
            if fragmented:  # a block of /spacer between each: deleted below
                pwrite(fs, files, "/spacer", b"s" * BLOCK, (2 * i + 1) * BLOCK)
        if fragmented:
            fs.unlink("/spacer")
            del files["/spacer"]
    # a directory of many entries (a multi-level tree), and files to rename over
    fs.mkdir("/big")
    fs.mkdir("/big/sub")
    for i in range(400):
        pwrite(fs, files, f"/big/e{i:04}", pattern(i, 10), 0)
    pwrite(fs, files, "/victim", pattern(3, 40 * BLOCK), 0)
    for block in range(0, 40, 3):  # a tree-mapped file with holes, renamed over later
        pwrite(fs, files, "/tree-victim", pattern(block, BLOCK), block * BLOCK)
    pwrite(fs, files, "/mover2", pattern(7, BLOCK), 0)
    pwrite(fs, files, "/mover", pattern(4, 3 * BLOCK), 0)
    pwrite(fs, files, "/big/victim", pattern(5, 2 * BLOCK), 0)
    pwrite(fs, files, "/big/mover", pattern(6, 2 * BLOCK), 0)
    return files


def punched(data: bytes, block: int, count: int) -> bytes:
    out = bytearray(data)
    out[block * BLOCK : (block + count) * BLOCK] = bytes(count * BLOCK)
    return bytes(out)


def truncated(data: bytes, size: int) -> bytes:
    return data[:size] + bytes(max(0, size - len(data)))


def kind_of(fs: daxfs.FileSystem, path: str) -> int:
    return int(fs.itable.get(fs.stat(path).st_ino).rec.map_kind)


def unmount_and_check(fs: daxfs.FileSystem, dev: SimulatedPmem, files: Files) -> None:
    """Every file holds what the model says; unmounted, fsck finds nothing."""
    for path, data in files.items():
        with fs.open(path, "rb") as f:
            assert f.read() == data, path
    fs.unmount()
    report = fsck(dev)
    assert report.clean, str(report)


Step = tuple[str, Callable[[daxfs.FileSystem, Files], None]]


def truncate_step(path: str, size: int) -> Callable[[daxfs.FileSystem, Files], None]:
    def op(fs: daxfs.FileSystem, files: Files) -> None:
        fs.truncate(path, size)
        files[path] = truncated(files[path], size)

    return op


def punch_step(path: str, block: int, count: int) -> Callable[[daxfs.FileSystem, Files], None]:
    def op(fs: daxfs.FileSystem, files: Files) -> None:
        with fs.open(path, "rb+", buffering=0) as f:
            f.fallocate(block * BLOCK, count * BLOCK, PUNCH)
        files[path] = punched(files[path], block, count)

    return op


def unlink_open(fs: daxfs.FileSystem, files: Files) -> None:
    f = fs.open("/frag2", "rb")
    fs.unlink("/frag2")
    f.close()  # the last close reaps it, in batches
    del files["/frag2"]


def unlink_step(path: str) -> Callable[[daxfs.FileSystem, Files], None]:
    def op(fs: daxfs.FileSystem, files: Files) -> None:
        fs.unlink(path)
        del files[path]

    return op


def rename_step(src: str, dst: str) -> Callable[[daxfs.FileSystem, Files], None]:
    def op(fs: daxfs.FileSystem, files: Files) -> None:
        fs.rename(src, dst)
        files[dst] = files.pop(src)

    return op


def rmdir(fs: daxfs.FileSystem, files: Files) -> None:
    fs.rmdir("/big/sub")


#: every freeing operation, in an order where each finds its file as it expects
NEED_NO_BLOCK: list[Step] = [
    ("truncate into the first extent of a tree map", truncate_step("/tree", 20 * BLOCK + 5)),
    ("truncate inside an extent of a full inline map", truncate_step("/inline", 30 * BLOCK + 1)),
    ("truncate of a batched file into its first extent", truncate_step("/frag", 100)),
    ("truncate at an extent boundary", truncate_step("/victim", 10 * BLOCK)),
    ("truncate into a hole", truncate_step("/tree-victim", 20 * BLOCK - 7)),
    ("truncate to zero", truncate_step("/tree", 0)),
    ("unlink a fragmented file", unlink_step("/frag")),
    ("unlink an open fragmented file", unlink_open),
    ("unlink in a big directory", unlink_step("/big/e0123")),
    ("rmdir in a big directory", rmdir),
    ("rename over an existing file", rename_step("/mover", "/victim")),
    ("rename over an existing file in a big directory", rename_step("/big/mover", "/big/victim")),
    ("rename over a tree-mapped file", rename_step("/mover2", "/tree-victim")),
    ("punch whole extents", punch_step("/inline", 0, 8)),
]
#: a punch inside an extent: may need a B+tree node for the part after the hole
NEED_A_NODE: list[Step] = [
    ("punch inside an extent of a full inline map", punch_step("/inline2", 40, 1)),
]


@pytest.mark.parametrize("fragmented", [False, True], ids=["contiguous", "fragmented"])
def test_freeing_operations_on_a_full_filesystem(dev: SimulatedPmem, fragmented: bool) -> None:
    fs = daxfs.mount(dev)
    files = build(fs, fragmented)
    assert kind_of(fs, "/tree") == MAP_BTREE
    assert kind_of(fs, "/inline2") == MAP_INLINE
    for name, op in NEED_NO_BLOCK + NEED_A_NODE:
        helpers.fill(fs)
        free = fs.statvfs().f_bfree
        try:
            op(fs, files)
        except OSError as exc:
            pytest.fail(f"{name} on a full filesystem: {exc!r}")
        if name.startswith("rmdir"):  # an empty directory owns no block, only its inode
            assert not fs.exists("/big/sub")
        elif (name, op) in NEED_A_NODE:  # one block freed, one node for the new extent
            assert fs.statvfs().f_bfree >= free, f"{name} took more than it freed"
        else:
            assert fs.statvfs().f_bfree > free, f"{name} freed nothing"
    assert kind_of(fs, "/inline2") == MAP_BTREE
    unmount_and_check(fs, dev, files)


def test_operations_that_free_space_need_no_block_at_all(dev: SimulatedPmem) -> None:
    """No reserve, not one block free: truncate, unlink, rmdir and rename still work."""
    fs = daxfs.mount(dev)
    files = build(fs, fragmented=True)
    fs.alloc.reserved = 0
    for name, op in NEED_NO_BLOCK:
        helpers.fill(fs)
        assert fs.statvfs().f_bfree == 0
        try:
            op(fs, files)
        except OSError as exc:
            pytest.fail(f"{name} with no block free: {exc!r}")
    unmount_and_check(fs, dev, files)


def test_a_punch_that_needs_a_node_fails_cleanly_without_one(dev: SimulatedPmem) -> None:
    fs = daxfs.mount(dev)
    files = build(fs, fragmented=False)
    fs.alloc.reserved = 0
    helpers.fill(fs)  # not one block left
    with pytest.raises(OSError, match="/inline2") as info:
        punch_step("/inline2", 40, 1)(fs, files)
    assert info.value.errno == errno.ENOSPC
    assert kind_of(fs, "/inline2") == MAP_INLINE
    with fs.open("/inline2", "rb") as f:
        assert f.read() == files["/inline2"]  # unchanged


def test_statvfs_reports_the_reserve_as_free_but_not_available(dev: SimulatedPmem) -> None:
    with daxfs.mount(dev) as fs:
        v = fs.statvfs()
        assert v.f_bavail == v.f_bfree - fs.alloc.reserved > 0
        helpers.fill(fs)
        v = fs.statvfs()
        assert v.f_bavail == 0
        assert v.f_bfree == fs.alloc.reserved


def test_repair_on_a_full_filesystem_can_make_lost_found(dev: SimulatedPmem) -> None:
    """fsck --repair may take the reserve: /lost+found needs a block when writes get none."""
    from daxfs.fs.layout import INO_ROOT

    fs = daxfs.mount(dev)
    for i in range(200):  # the root directory's tree holds room for the next entry
        pwrite(fs, {}, f"/f{i}", b"x", 0)
    helpers.fill(fs)
    with fs.journal.begin() as tx:  # lose /f7: its entry goes, its link stays
        fs.dirs.remove(tx, fs.itable.get(INO_ROOT), b"f7")
    fs.unmount()
    report = fsck(dev, repair=True)
    assert report.complete, str(report)
    assert fsck(dev).clean
    with daxfs.mount(dev) as fs:
        (name,) = fs.listdir("/lost+found")
        with fs.open(f"/lost+found/{name}", "rb") as f:
            assert f.read() == b"x"


def create_until_enospc(fs: daxfs.FileSystem, dirs: list[str], prefix: str) -> int:
    """Create empty files, round robin in ``dirs`` (which have room for the names), until
    ENOSPC; return how many were made."""
    n = 0
    while True:
        try:
            fs.open(f"{dirs[n % len(dirs)]}/{prefix}{n}", "xb").close()
        except NoSpace:
            return n
        n += 1


@pytest.mark.parametrize("leave", [0, 20], ids=["full", "one-growth-left"])
def test_statvfs_free_inodes_are_what_creates_get(dev: SimulatedPmem, leave: int) -> None:
    """f_ffree and f_favail count the inodes creates can get: the free list, the inode
    table's unused slots, and the table's growth (16 blocks at a time here) out of the
    blocks outside the reserve -- not out of the reserve."""
    with daxfs.mount(dev) as fs:
        dirs = [f"/d{i}" for i in range(3)]
        for d in dirs:  # each gets a directory leaf with room for 128 names
            fs.mkdir(d)
            fs.open(f"{d}/first", "wb").close()
        helpers.fill(fs, leave)
        v = fs.statvfs()
        assert v.f_ffree == v.f_favail == create_until_enospc(fs, dirs, "a") > 0
        v = fs.statvfs()
        assert v.f_ffree == v.f_favail == 0
        assert v.f_files == fs.sup.sb.used_inodes
        for i in range(5):  # freed inodes go on the free list: creates get them back
            fs.unlink(f"{dirs[i % 3]}/a{i}")
        assert fs.statvfs().f_ffree == 5 == create_until_enospc(fs, dirs, "b")
    assert fsck(dev).clean
