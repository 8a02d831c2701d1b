"""Extended attributes inline in the inode (daxfs.fs.xattr, docs/FORMAT.md "Inline
extended attributes"): the placement rule, the room the extent map leaves, the map
turning into a tree beside them, the os semantics in both places, the feature bit,
the C paths that pack or check records, and crafted records (mount, getxattr, fsck)."""

from __future__ import annotations

import dataclasses
import errno
import os
import struct
from collections.abc import Callable

import pytest

import daxfs
from daxfs.errors import Corrupted, ReadOnly
from daxfs.fs import _create, inode
from daxfs.fs.fsck import fsck
from daxfs.fs.layout import (
    EXTENT,
    INLINE_XATTR,
    INLINE_XATTR_AREA,
    MAP_BTREE,
    MAP_INLINE,
    MAP_NONE,
    RO_COMPAT_XATTR,
    RO_COMPAT_XATTR_INLINE,
    XATTR_PTR,
    InodeRecord,
)
from daxfs.testing import SimulatedPmem
from tests import helpers
from tests.fs import crafting

BLOCK = 4096


def errno_of(call: Callable[[], object]) -> int:
    """The errno of the OSError ``call`` raises (fails if it raises none)."""
    try:
        call()
    except OSError as exc:
        return exc.errno or 0
    raise AssertionError("no error raised")


def rec_of(fs: daxfs.FileSystem, path: str) -> InodeRecord:
    return fs.itable.get(fs.stat(path, follow_symlinks=False).st_ino).rec


def extents(fs: daxfs.FileSystem, path: str, count: int) -> None:
    """Make ``path`` a file of ``count`` one-block extents (a hole between each)."""
    with fs.open(path, "wb", buffering=0) as f:
        for i in range(count):
            f.pwrite(bytes([65 + i]) * BLOCK, 2 * i * BLOCK)


def entry_bytes(name: str, value: bytes) -> int:
    return INLINE_XATTR.size + len(name) + len(value)


def clean(dev: SimulatedPmem) -> None:
    report = fsck(dev)
    assert report.clean, report.problems


# -- placement -------------------------------------------------------------------------------


def test_a_small_set_is_inline_takes_no_block_and_sets_both_feature_bits(
    fs: daxfs.FileSystem, dev: SimulatedPmem
) -> None:
    extents(fs, "/f", 1)
    free = fs.statvfs("/").f_bfree
    assert not fs.superblock.feature_ro_compat & (RO_COMPAT_XATTR | RO_COMPAT_XATTR_INLINE)
    fs.setxattr("/f", "user.b", b"2")
    fs.setxattr("/f", "user.a", b"one")
    rec = rec_of(fs, "/f")
    assert (rec.xattr, rec.xattr_bytes) == (
        0,
        entry_bytes("user.a", b"one") + entry_bytes("user.b", b"2"),
    )
    assert rec.inline[XATTR_PTR - rec.xattr_bytes : XATTR_PTR] == (
        b"\x06\x03user.aone\x06\x01user.b2"
    )
    assert fs.stat("/f").st_blocks == 8  # the data block only
    assert fs.statvfs("/").f_bfree == free
    sb = fs.superblock.feature_ro_compat
    assert sb & RO_COMPAT_XATTR
    assert sb & RO_COMPAT_XATTR_INLINE
    fs.unmount()
    with daxfs.mount(dev) as again:
        assert again.listxattr("/f") == ["user.a", "user.b"]
        assert again.getxattr("/f", "user.a") == b"one"
        with again.open("/f", "rb") as f:
            assert f.read(BLOCK) == b"A" * BLOCK
    clean(dev)


def test_the_whole_set_moves_to_a_block_and_back(fs: daxfs.FileSystem, dev: SimulatedPmem) -> None:
    extents(fs, "/f", 1)
    fs.setxattr("/f", "user.small", b"s" * 10)
    free = fs.statvfs("/").f_bfree
    fs.setxattr("/f", "user.mid", b"m" * 90)  # 2+8+90 + 2+10+10 = 122 > 96: both move
    rec = rec_of(fs, "/f")
    assert (rec.xattr_bytes, rec.xattr != 0) == (0, True)
    assert rec.inline[:XATTR_PTR] == rec.inline[: EXTENT.size] + bytes(XATTR_PTR - EXTENT.size)
    assert fs.statvfs("/").f_bfree == free - 1
    assert fs.listxattr("/f") == ["user.mid", "user.small"]
    fs.setxattr("/f", "user.mid", b"m" * 70)  # 102 > 96: stays in the block
    assert rec_of(fs, "/f").xattr != 0
    fs.setxattr("/f", "user.mid", b"m" * 60)  # 92 <= 96: back inline, the block freed
    rec = rec_of(fs, "/f")
    assert (rec.xattr, rec.xattr_bytes) == (0, 92)
    assert fs.statvfs("/").f_bfree == free
    assert fs.getxattr("/f", "user.mid") == b"m" * 60
    fs.removexattr("/f", "user.mid")
    fs.removexattr("/f", "user.small")
    rec = rec_of(fs, "/f")
    assert (rec.xattr, rec.xattr_bytes) == (0, 0)
    assert rec.inline[EXTENT.size : XATTR_PTR] == bytes(XATTR_PTR - EXTENT.size)
    fs.unmount()
    clean(dev)


@pytest.mark.parametrize("count", range(6))
def test_the_room_is_what_the_inline_extents_leave(fs: daxfs.FileSystem, count: int) -> None:
    """With ``count`` inline extents the set fits in 120 - 24 * count bytes: a set of
    exactly that size is inline, one byte more goes to the block."""
    extents(fs, "/f", count)
    room = INLINE_XATTR_AREA - count * EXTENT.size
    name = "user.x"
    fits = room - INLINE_XATTR.size - len(name)
    if fits >= 0:
        fs.setxattr("/f", name, b"v" * fits)
        assert rec_of(fs, "/f").xattr_bytes == room
        assert rec_of(fs, "/f").map_count == count
    fs.setxattr("/f", name, b"v" * (fits + 1))
    rec = rec_of(fs, "/f")
    assert (rec.xattr_bytes, rec.xattr != 0) == (0, True)
    with fs.open("/f", "rb") as f:
        data = f.read()
    assert [data[2 * i * BLOCK] for i in range(count)] == [65 + i for i in range(count)]


def test_a_map_outgrowing_the_room_becomes_a_tree_and_starts_inline_again(
    fs: daxfs.FileSystem, dev: SimulatedPmem
) -> None:
    fs.open("/f", "wb").close()
    value = b"v" * (INLINE_XATTR_AREA - 2 * EXTENT.size - INLINE_XATTR.size - len("user.x"))
    fs.setxattr("/f", "user.x", value)  # room for two extents: 120 - 72 = 48
    extents(fs, "/f", 2)
    rec = rec_of(fs, "/f")
    assert (rec.map_kind, rec.map_count, rec.extent_room) == (MAP_INLINE, 2, 2)
    with fs.open("/f", "rb+", buffering=0) as f:
        f.pwrite(b"C" * BLOCK, 4 * BLOCK)  # a third extent
    rec = rec_of(fs, "/f")
    assert rec.map_kind == MAP_BTREE
    assert rec.inline[: XATTR_PTR - rec.xattr_bytes] == bytes(XATTR_PTR - rec.xattr_bytes)
    assert fs.getxattr("/f", "user.x") == value
    assert fs.stat("/f").st_blocks == (3 + 1) * 8  # three data blocks and the tree's node
    fs.truncate("/f", 0)  # the tree goes: an empty map
    assert rec_of(fs, "/f").map_kind == MAP_NONE
    with fs.open("/f", "rb+", buffering=0) as f:
        f.pwrite(b"D" * BLOCK, 0)
    rec = rec_of(fs, "/f")
    assert (rec.map_kind, rec.map_count) == (MAP_INLINE, 1)
    assert fs.getxattr("/f", "user.x") == value
    fs.unmount()
    clean(dev)
    with daxfs.mount(dev) as again:
        assert again.getxattr("/f", "user.x") == value
        with again.open("/f", "rb") as f:
            assert f.read() == b"D" * BLOCK


def test_a_directory_keeps_its_inline_set_as_it_grows(
    fs: daxfs.FileSystem, dev: SimulatedPmem
) -> None:
    fs.mkdir("/d")
    fs.setxattr("/d", "user.dir", b"d" * 100)
    for i in range(300):
        fs.open(f"/d/n{i:03d}-" + "x" * 30, "wb").close()
    rec = rec_of(fs, "/d")
    assert (rec.map_kind, rec.xattr_bytes) == (MAP_BTREE, entry_bytes("user.dir", b"d" * 100))
    assert fs.getxattr("/d", "user.dir") == b"d" * 100
    fs.unmount()
    clean(dev)


# -- the os semantics, in both places ---------------------------------------------------------

#: a placement: what makes /f keep its attributes inline or in a block
PLACES: dict[str, Callable[[daxfs.FileSystem], None]] = {
    "inline": lambda fs: None,
    "block": lambda fs: fs.setxattr("/f", "user.zpad", b"p" * 200),
}


@pytest.mark.parametrize("place", sorted(PLACES))
def test_os_semantics_are_the_same_inline_and_in_a_block(fs: daxfs.FileSystem, place: str) -> None:
    fs.open("/f", "wb").close()
    PLACES[place](fs)
    extra = ["user.zpad"] if place == "block" else []
    fs.setxattr("/f", "user.b", b"2", os.XATTR_CREATE)
    fs.setxattr("/f", "user.a", b"1")
    assert (rec_of(fs, "/f").xattr_bytes > 0) == (place == "inline")
    assert errno_of(lambda: fs.setxattr("/f", "user.a", b"x", os.XATTR_CREATE)) == errno.EEXIST
    assert errno_of(lambda: fs.setxattr("/f", "user.c", b"x", os.XATTR_REPLACE)) == errno.ENODATA
    assert errno_of(lambda: fs.getxattr("/f", "user.c")) == errno.ENODATA
    assert errno_of(lambda: fs.removexattr("/f", "user.c")) == errno.ENODATA
    assert errno_of(lambda: fs.setxattr("/f", "user." + "n" * 251, b"x")) == errno.ERANGE
    assert errno_of(lambda: fs.setxattr("/f", "user.a", bytes(65537))) == errno.E2BIG
    fs.setxattr("/f", "user.a", b"one", os.XATTR_REPLACE)
    assert fs.listxattr("/f") == ["user.a", "user.b", *extra]
    assert fs.getxattr("/f", "user.a") == b"one"
    assert (rec_of(fs, "/f").xattr_bytes > 0) == (place == "inline")


def test_a_failed_set_leaves_the_inline_set_as_it_was(fs: daxfs.FileSystem) -> None:
    fs.open("/f", "wb").close()
    fs.setxattr("/f", "user.a", b"1")
    before = rec_of(fs, "/f").inline
    assert errno_of(lambda: fs.setxattr("/f", "user.a", b"x", os.XATTR_CREATE)) == errno.EEXIST
    assert rec_of(fs, "/f").inline == before

    def fill() -> None:  # more than the block holds: ENOSPC at the eighth
        for i in range(10):
            fs.setxattr("/f", f"user.big{i}", b"b" * 500)

    assert errno_of(fill) == errno.ENOSPC
    assert fs.getxattr("/f", "user.a") == b"1"


# -- the C paths ------------------------------------------------------------------------------


def test_native_record_packing_writes_xattr_bytes() -> None:
    """log_inodes (daxfs/fs/_create.c) packs a record as InodeRecord.pack_into does,
    xattr_bytes included (the reserved u16 after it stays 0)."""
    rec = InodeRecord(ino=5, mode=0o100644, nlink=1, map_kind=MAP_INLINE, map_count=1)
    rec.inline = bytes(range(24)) + bytes(XATTR_PTR - 24 - 10) + b"\x06\x02user.axy" + bytes(8)
    rec.xattr_bytes = 10
    want = bytearray(256)
    rec.pack_into(want, 0)
    assert struct.unpack_from("<HH", want, 108) == (10, 0)
    node = inode.Inode(rec)
    places = {0: 7}
    got = _create.log_inodes({5: node}, places)
    assert got is not None
    ((offset, data),) = got
    assert offset == (7 << 12) + 5 * 256
    assert bytes(data) == bytes(want)


def test_overwrites_and_stat_keep_and_accept_inline_xattrs(
    fs: daxfs.FileSystem, dev: SimulatedPmem
) -> None:
    """The native overwrite commit (daxfs/fs/_commit.c) rewrites the committed record
    with a new size and times: it keeps xattr_bytes; the C stat path accepts it."""
    with fs.open("/f", "wb", buffering=0) as f:
        f.write(b"x" * BLOCK)
    fs.setxattr("/f", "user.a", b"kept")
    with fs.open("/f", "rb+", buffering=0) as f:
        for i in range(20):
            f.pwrite(b"y" * 100, i * 100)
    assert fs.getxattr("/f", "user.a") == b"kept"
    assert fs.stat("/f").st_size == BLOCK
    fs.unmount()
    with daxfs.mount(dev) as again:
        assert again.stat("/f").st_blocks == 8
        assert again.getxattr("/f", "user.a") == b"kept"
    clean(dev)


# -- crafted records --------------------------------------------------------------------------


def _lie(rec: InodeRecord, lie: str) -> dict[str, object]:
    """Changes to ``rec`` (a file with one inline extent and inline attributes) that
    make its inline attributes a lie, resealed (the record's checksum cannot catch it)."""
    size = rec.xattr_bytes
    area = bytearray(rec.inline)
    start = XATTR_PTR - size
    if lie == "count past the area":
        return {"xattr_bytes": INLINE_XATTR_AREA + 1}
    if lie == "count over the extents":
        return {"xattr_bytes": INLINE_XATTR_AREA - EXTENT.size + 8}
    if lie == "count cuts an entry":  # the area begins inside the first entry
        return {"xattr_bytes": size - 1}
    if lie == "name length past the count":
        area[start] = 200
    elif lie == "value length past the count":
        area[start + 1] = 200
    elif lie == "empty name":
        area[start] = 0
    elif lie == "bad namespace":
        area[start + 2 : start + 7] = b"usex."
    elif lie == "unsorted":
        first = 2 + area[start] + area[start + 1]
        area[start:XATTR_PTR] = bytes(area[start + first : XATTR_PTR]) + bytes(
            area[start : start + first]
        )
    elif lie == "repeated":
        first = 2 + area[start] + area[start + 1]
        area[start + first : start + 2 * first] = area[start : start + first]
    elif lie == "inline and a block":
        area[XATTR_PTR:] = struct.pack("<Q", 100)
    else:
        raise AssertionError(lie)
    return {"inline": bytes(area)}


LIES = [
    "count past the area",
    "count over the extents",
    "count cuts an entry",
    "name length past the count",
    "value length past the count",
    "empty name",
    "bad namespace",
    "unsorted",
    "repeated",
    "inline and a block",
]


def _sample() -> tuple[SimulatedPmem, int]:
    dev = helpers.formatted(16 << 20)
    with daxfs.mount(dev) as fs:
        with fs.open("/f", "wb") as f:
            f.write(b"data" * 1000)
        fs.setxattr("/f", "user.aa", b"1111")  # two entries of 13 bytes
        fs.setxattr("/f", "user.bb", b"2222")
        fs.open("/other", "wb").close()
        fs.setxattr("/other", "user.x", b"sound")
        ino = fs.stat("/f").st_ino
    return dev, ino


@pytest.mark.parametrize("lie", LIES)
def test_a_lying_inline_set_is_euclean_and_fsck_repairs_it(lie: str) -> None:
    dev, ino = _sample()
    rec = crafting.read_inode(dev, ino)
    assert rec.xattr_bytes == 26
    crafting.edit_inode(dev, ino, **_lie(rec, lie))
    with daxfs.mount(dev) as fs:  # the mount itself stands; the inode is refused
        with pytest.raises(Corrupted, match=f"inode {ino}"):
            fs.stat("/f")
            for name in fs.listxattr("/f"):
                fs.getxattr("/f", name)
        assert fs.getxattr("/other", "user.x") == b"sound"
    report = fsck(dev)
    assert not report.clean
    assert any(f"inode {ino}" in str(p) for p in report.problems), report.problems
    fsck(dev, repair=True)
    clean(dev)
    with daxfs.mount(dev) as fs:
        with fs.open("/f", "rb") as f:
            assert f.read() == b"data" * 1000
        assert fs.getxattr("/other", "user.x") == b"sound"
        fs.setxattr("/f", "user.after", b"repair")  # and it takes attributes again
        assert "user.after" in fs.listxattr("/f")


def test_inline_bytes_on_a_symlink_are_refused_and_cleared() -> None:
    """A symbolic link carries no attributes: xattr_bytes there is a lie, and the
    repair clears the count only (the area is the link's target)."""
    dev = helpers.formatted(16 << 20)
    with daxfs.mount(dev) as fs:
        fs.symlink("/some/where", "/ln")
        ino = fs.stat("/ln", follow_symlinks=False).st_ino
    crafting.edit_inode(dev, ino, xattr_bytes=12)
    with daxfs.mount(dev) as fs, pytest.raises(Corrupted, match=f"inode {ino}"):
        fs.readlink("/ln")
    assert not fsck(dev).clean
    fsck(dev, repair=True)
    clean(dev)
    with daxfs.mount(dev) as fs:
        assert fs.readlink("/ln") == "/some/where"


def test_fsck_sets_a_missing_inline_feature_bit(dev: SimulatedPmem) -> None:
    with daxfs.mount(dev) as fs:
        fs.open("/f", "wb").close()
        fs.setxattr("/f", "user.a", b"1")
    sb = crafting.superblock(dev)
    crafting.edit_superblock(dev, feature_ro_compat=sb.feature_ro_compat & ~RO_COMPAT_XATTR_INLINE)
    report = fsck(dev)
    assert any("inline xattr feature is not set" in str(p) for p in report.problems)
    fsck(dev, repair=True)
    clean(dev)
    assert crafting.superblock(dev).feature_ro_compat & RO_COMPAT_XATTR_INLINE


def test_a_version_without_the_inline_bit_mounts_read_only(
    dev: SimulatedPmem, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As a version that knows only RO_COMPAT_XATTR sees such an image: read-only."""
    from daxfs.fs import mount as mount_mod

    with daxfs.mount(dev) as fs:
        fs.open("/f", "wb").close()
        fs.setxattr("/f", "user.a", b"1")
    monkeypatch.setattr(mount_mod, "FEATURE_RO_COMPAT", RO_COMPAT_XATTR)
    with pytest.raises(ReadOnly):
        daxfs.mount(dev)
    with daxfs.mount(dev, readonly=True) as fs:
        assert fs.listxattr("/f") == ["user.a"]


def test_record_problem_names_the_room(dev: SimulatedPmem) -> None:
    rec = InodeRecord(ino=9, mode=0o100644, nlink=1, map_kind=MAP_INLINE, map_count=5)
    assert inode.record_problem(rec) is None
    rec = dataclasses.replace(rec, xattr_bytes=1)
    assert inode.record_problem(rec) == (
        "5 inline extents (at most 4 beside 1 bytes of inline xattrs)"
    )
    rec = dataclasses.replace(rec, map_count=0, xattr_bytes=INLINE_XATTR_AREA + 1)
    assert "bytes of inline xattrs for mode" in (inode.record_problem(rec) or "")
