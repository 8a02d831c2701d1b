"""fsck: detects what is wrong, in words; repairs what it safely can."""

from __future__ import annotations

import errno
import struct

import pytest

import daxfs
from daxfs.fs.fsck import fsck
from daxfs.fs.layout import (
    BLOCK_SHIFT,
    BLOCK_SIZE,
    INO_ROOT,
    INODE_SIZE,
    Superblock,
    seal_bitmap_block,
)
from daxfs.pmem.device import Device
from daxfs.testing import PowerFailure
from tests.fs.crafting import edit_inode, fresh, ino_of, inode_address, sample, superblock

SIZE = 16 << 20


@pytest.fixture
def dev() -> Device:
    """tests/fs/crafting.py's sample: every kind of structure."""
    return sample()


def inode_offset(dev: Device, ino: int) -> int:
    blockno, offset = inode_address(dev, ino)
    return (blockno << BLOCK_SHIFT) + offset


def flip_bitmap_bit(dev: Device, blockno: int) -> None:
    sb = superblock(dev)
    where = sb.bitmap_start << BLOCK_SHIFT
    block = bytearray(dev.read(where, BLOCK_SIZE))
    block[blockno // 8] ^= 1 << (blockno % 8)
    seal_bitmap_block(block)
    dev.write(where, block)


def assert_repairs(dev: Device, *words: str) -> None:
    report = fsck(dev)
    assert not report.clean
    text = str(report)
    for word in words:
        assert word in text, text
    fixed = fsck(dev, repair=True)
    assert all(p.repaired for p in fixed.problems), str(fixed)
    after = fsck(dev)
    assert after.clean, str(after)
    assert after.problems == []


def test_clean_filesystem(dev: Device) -> None:
    report = fsck(dev)
    assert report.clean, str(report)
    assert report.problems == []
    # /, /a, /a/b, /a/b/c, /empty, /big; /a/file, /a/b/small, /frag, /prealloc, /big/n*
    assert (report.directories, report.files, report.symlinks) == (6, 204, 2)
    assert "clean" in str(report)


def test_fresh_mkfs_is_clean() -> None:
    assert fsck(fresh()).clean


def test_inode_checksum_mismatch_is_reported(dev: Device) -> None:
    ino = ino_of(dev, "/a/b/small")
    offset = inode_offset(dev, ino)
    dev.write(offset + 32, b"\xff")  # size field, checksum now wrong
    report = fsck(dev)
    assert not report.clean
    assert f"inode {ino}: checksum mismatch" in str(report)
    with daxfs.mount(dev) as fs, pytest.raises(OSError, match="checksum") as info:
        fs.stat("/a/b/small")
    assert info.value.errno == errno.EUCLEAN


def test_primary_superblock_restored_from_backup(dev: Device) -> None:
    dev.write(100, b"garbage!")
    with pytest.raises(OSError, match="backup superblock is intact") as info:
        daxfs.mount(dev)
    assert info.value.errno == errno.EUCLEAN
    assert "primary superblock" in str(fsck(dev))
    repaired = fsck(dev, repair=True)
    assert repaired.problems[0].repaired
    assert fsck(dev).clean
    with daxfs.mount(dev) as fs, fs.open("/a/file", "rb") as f:
        assert f.read() == b"x" * 10000


def test_both_superblocks_gone(dev: Device) -> None:
    dev.fill(0, BLOCK_SIZE)
    dev.fill(SIZE - BLOCK_SIZE, BLOCK_SIZE)
    report = fsck(dev, repair=True)
    assert not report.clean
    assert not report.complete
    with pytest.raises(OSError, match="no daxfs superblock"):
        daxfs.mount(dev)


def test_leaked_block(dev: Device) -> None:
    flip_bitmap_bit(dev, (SIZE >> BLOCK_SHIFT) - 100)  # a free block, marked used
    assert_repairs(dev, "marked used but nothing owns them")


def test_block_in_use_marked_free(dev: Device) -> None:
    with daxfs.mount(dev) as fs, fs.open("/a/b/small", "rb", buffering=0) as f:
        addr = fs.data.iomap_begin(f.inode, 0, 1, 0).addr  # type: ignore[arg-type]
    flip_bitmap_bit(dev, addr >> BLOCK_SHIFT)
    assert_repairs(dev, "in use are marked free")
    with daxfs.mount(dev) as fs, fs.open("/a/b/small", "rb") as f:
        assert f.read() == b"small"


def test_wrong_link_count(dev: Device) -> None:
    ino = ino_of(dev, "/a/file")
    edit_inode(dev, ino, nlink=5)
    assert_repairs(dev, "link count 5, should be 2")


def test_wrong_block_count(dev: Device) -> None:
    ino = ino_of(dev, "/frag")
    edit_inode(dev, ino, blocks=1)
    assert_repairs(dev, f"inode {ino}: counts 1 blocks")


def test_dangling_entry_removed(dev: Device) -> None:
    ino = ino_of(dev, "/a/b/small")
    edit_inode(dev, ino, mode=0, nlink=0)
    assert_repairs(dev, "entry points at a free inode")
    with daxfs.mount(dev) as fs:
        assert fs.listdir("/a/b") == ["c"]


def test_lost_inode_goes_to_lost_found(dev: Device) -> None:
    with daxfs.mount(dev) as fs:
        ino = fs.stat("/a/b/small").st_ino
        with fs.journal.begin() as tx:  # drop the entry but not the inode
            fs.dirs.remove(tx, fs.itable.get(fs.stat("/a/b").st_ino), b"small")
    assert_repairs(dev, "is in no directory")
    with daxfs.mount(dev) as fs, fs.open(f"/lost+found/#{ino}", "rb") as f:
        assert f.read() == b"small"


def test_journal_pending_is_replayed_by_repair(dev: Device) -> None:
    fs = daxfs.mount(dev)
    dev.schedule_power_failure(3)  # after the commit point (fence 2), before the apply ends
    with pytest.raises(PowerFailure):
        fs.mkdir("/newdir")
    crashed = dev.crash(seed=1)
    image = crashed.read(0, crashed.size)
    report = fsck(crashed)
    # a crash's state, not damage: checked as the next mount will see it
    assert report.clean, str(report)
    assert report.replay_pending is not None
    assert "replayed at the next mount" in str(report).splitlines()[0]
    assert report.directories == 7  # the sample's 6 and the new /newdir
    assert crashed.read(0, crashed.size) == image  # check-only: nothing written
    repaired = fsck(crashed, repair=True)
    assert repaired.journal_replayed
    assert repaired.replay_pending is None
    assert repaired.clean, str(repaired)
    with daxfs.mount(crashed) as fs:
        assert fs.isdir("/newdir")
    assert fsck(crashed).replay_pending is None


def test_journal_pending_with_damage_under_it_is_reported(dev: Device) -> None:
    """The private copy is checked as thoroughly as the device: damage the replay
    does not touch is found (and the device is still not written)."""
    ino = ino_of(dev, "/big/n150")  # an inode block the mkdir does not write
    fs = daxfs.mount(dev)
    dev.schedule_power_failure(3)
    with pytest.raises(PowerFailure):
        fs.mkdir("/newdir")
    crashed = dev.crash(seed=1)
    edit_inode(crashed, ino, blocks=5)
    image = crashed.read(0, crashed.size)
    report = fsck(crashed)
    assert not report.clean
    assert report.replay_pending is not None
    assert any(f"inode {ino}: counts 5 blocks" in str(p) for p in report.problems), str(report)
    assert crashed.read(0, crashed.size) == image


def test_bitmap_checksum(dev: Device) -> None:
    sb = superblock(dev)
    dev.write((sb.bitmap_start << BLOCK_SHIFT) + 4000, b"\x01")
    assert_repairs(dev, "bitmap block 0: checksum mismatch")


def test_extent_tree_node_damage_reported(dev: Device) -> None:
    ino = ino_of(dev, "/frag")
    with daxfs.mount(dev) as fs:
        root = fs.itable.get(ino).rec.map_root
    assert root
    dev.write((root << BLOCK_SHIFT) + 100, b"\xee\xee")
    report = fsck(dev)
    assert not report.clean
    assert f"inode {ino}" in str(report)
    assert "checksum" in str(report)


def test_free_list_rebuilt(dev: Device) -> None:
    with daxfs.mount(dev) as fs:
        fs.unlink("/a/b/small")  # puts its inode on the free list
    sb = superblock(dev)
    assert sb.free_ino_head
    raw = bytearray(dev.read(0, BLOCK_SIZE))
    struct.pack_into("<Q", raw, 216, 0)  # lose the list head
    sb2 = Superblock.unpack(raw, "sb", verify=False)
    dev.write(0, sb2.to_block())
    assert_repairs(dev, "free inode list")


def test_fsck_refuses_a_mounted_filesystem(dev: Device) -> None:
    with daxfs.mount(dev):
        with pytest.raises(OSError, match="in use") as info:
            fsck(dev)
        assert info.value.errno == errno.EBUSY


def test_root_is_checked(dev: Device) -> None:
    edit_inode(dev, INO_ROOT, mode=0o100644)
    report = fsck(dev)
    assert not report.clean
    assert "inode 2: the root is not a directory (100644); the root is made anew" in str(report)
    assert fsck(dev, repair=True).clean
    with daxfs.mount(dev) as fs:
        assert fs.isdir("/")


def test_path_image(tmp_path: object) -> None:
    import pathlib

    image = pathlib.Path(str(tmp_path)) / "fs.img"
    daxfs.mkfs(image, SIZE)
    with daxfs.mount(image) as fs:
        fs.mkdir("/x")
    assert fsck(image).clean
    assert INODE_SIZE == 256


def test_free_list_rebuilt_in_batches(dev: Device, monkeypatch: pytest.MonkeyPatch) -> None:
    from daxfs.fs.fsck import lists as fsck_mod

    monkeypatch.setattr(fsck_mod, "REBUILD_BATCH", 8)
    with daxfs.mount(dev) as fs:
        for i in range(40):
            fs.open(f"/t{i}", "xb").close()
        for i in range(40):
            fs.unlink(f"/t{i}")
        assert fs.superblock.free_inodes >= 40
    raw = bytearray(dev.read(0, BLOCK_SIZE))
    struct.pack_into("<Q", raw, 216, 0)  # lose the list head
    dev.write(0, Superblock.unpack(raw, "sb", verify=False).to_block())
    assert_repairs(dev, "free inode list")
    with daxfs.mount(dev) as fs:
        for i in range(45):  # reuses the rebuilt list, then grows
            fs.open(f"/u{i}", "xb").close()
    assert fsck(dev).clean
