"""Scale: thousands of files (the inode file grows into a B+tree map), big directories,
big fragmented files; everything survives a remount and fsck is clean."""

from __future__ import annotations

import os
import random

import pytest

import daxfs
from daxfs.fs.fsck import fsck
from daxfs.fs.layout import INO_INODE_FILE, MAP_BTREE
from daxfs.testing import SimulatedPmem

BLOCK = 4096


def test_many_files_grow_the_inode_file() -> None:
    dev = SimulatedPmem(64 << 20)
    daxfs.mkfs(dev)
    count = 3000
    with daxfs.mount(dev) as fs:
        fs.mkdir("/d")
        for i in range(count):
            with fs.open(f"/d/f{i}", "xb", buffering=0) as f:
                f.write(i.to_bytes(4, "little"))
        inode_file = fs.itable.get(INO_INODE_FILE)
        assert inode_file.rec.map_kind == MAP_BTREE  # more than 5 extents: a tree
    with daxfs.mount(dev) as fs:
        assert len(fs.listdir("/d")) == count
        for i in random.Random(1).sample(range(count), 200):
            with fs.open(f"/d/f{i}", "rb") as f:
                assert f.read() == i.to_bytes(4, "little")
        for i in range(0, count, 2):
            fs.unlink(f"/d/f{i}")
        assert fs.superblock.free_inodes == count // 2
        fs.open("/d/again", "xb").close()  # reuses a freed inode
        assert fs.superblock.free_inodes == count // 2 - 1
    report = fsck(dev)
    assert report.clean, str(report)
    assert report.files == count // 2 + 1


def test_fragmented_file_uses_a_btree_map() -> None:
    dev = SimulatedPmem(32 << 20)
    daxfs.mkfs(dev)
    with daxfs.mount(dev) as fs:
        with fs.open("/frag", "wb", buffering=0) as f:
            for i in range(600):  # every other block: 600 extents
                f.pwrite(i.to_bytes(2, "little") * (BLOCK // 2), 2 * i * BLOCK)
        inode = fs.itable.get(fs.stat("/frag").st_ino)
        assert inode.rec.map_kind == MAP_BTREE
        assert inode.rec.map_height >= 2
        with fs.open("/frag", "rb", buffering=0) as f:
            for i in random.Random(2).sample(range(600), 50):
                assert f.pread(2, 2 * i * BLOCK) == i.to_bytes(2, "little")
                assert f.pread(2, (2 * i + 1) * BLOCK) == bytes(2)
        fs.truncate("/frag", 100 * BLOCK)  # more than one batch of extents
        assert fs.stat("/frag").st_size == 100 * BLOCK
    assert fsck(dev).clean
    with daxfs.mount(dev) as fs:
        fs.unlink("/frag")
        assert fs.statvfs("/").f_bfree > (32 << 20) // BLOCK - 400
    assert fsck(dev).clean


@pytest.mark.slow
def test_a_million_entries() -> None:
    """The directory scale goal: 1,000,000 entries, lookups still work, fsck is clean."""
    path = f"/dev/shm/daxfs-scale-{os.getpid()}.img"
    try:
        daxfs.mkfs(path, 2 << 30)
        with daxfs.mount(path, persist="cpu") as fs:
            fs.mkdir("/big")
            for i in range(1_000_000):
                fs.open(f"/big/{i:07d}", "xb", buffering=0).close()
            for i in random.Random(3).sample(range(1_000_000), 1000):
                assert fs.stat(f"/big/{i:07d}").st_size == 0
        assert fsck(path).clean
    finally:
        if os.path.exists(path):
            os.unlink(path)


def test_inode_cache_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """The inode cache is trimmed between operations, in batches, never below open files."""
    from daxfs.fs import inode as inode_mod

    monkeypatch.setattr(inode_mod, "CACHE_LIMIT", 64)
    monkeypatch.setattr(inode_mod, "TRIM_SLACK", 16)
    dev = SimulatedPmem(32 << 20)
    daxfs.mkfs(dev)
    with daxfs.mount(dev) as fs:
        keep = fs.open("/kept-open", "wb", buffering=0)
        for i in range(400):
            fs.open(f"/f{i}", "xb", buffering=0).close()
            assert len(fs.itable._cache) <= 64 + 1
        assert fs.itable.cached(keep.inode.ino) is keep.inode  # in use: never evicted
        for i in range(0, 400, 7):
            assert fs.stat(f"/f{i}").st_size == 0  # evicted inodes load again
        keep.write(b"still works")
        keep.close()
    assert fsck(dev).clean


@pytest.mark.parametrize("batch", [8, 256])
def test_operations_over_many_extents_are_split(
    monkeypatch: pytest.MonkeyPatch, batch: int
) -> None:
    """Punch, zero-range, preallocate and writes across more extents than one batch."""
    from daxfs.fs import data as data_mod

    monkeypatch.setattr(data_mod, "BATCH_EXTENTS", batch)
    dev = SimulatedPmem(32 << 20)
    daxfs.mkfs(dev)
    blocks = 100
    with daxfs.mount(dev) as fs:
        with fs.open("/frag", "wb+", buffering=0) as f:
            for i in range(0, blocks, 2):  # 50 extents and 50 holes
                f.pwrite(bytes([i + 1]) * BLOCK, i * BLOCK)
            f.fallocate(0, blocks * BLOCK, data_mod.FALLOC_FL_KEEP_SIZE)  # fills the holes
            assert f.stat().st_blocks >= blocks * 8  # every block allocated (+ map nodes)
            f.pwrite(b"W" * (60 * BLOCK), 10 * BLOCK)  # a write across 60 pieces
            f.fallocate(5 * BLOCK, 20 * BLOCK, data_mod.FALLOC_FL_PUNCH_HOLE | 1)
            f.fallocate(40 * BLOCK, 30 * BLOCK, data_mod.FALLOC_FL_ZERO_RANGE)
            data = f.pread(blocks * BLOCK, 0)
        expected = bytearray()
        for i in range(blocks):
            expected += bytes([i + 1]) * BLOCK if i % 2 == 0 else bytes(BLOCK)
        expected[10 * BLOCK : 70 * BLOCK] = b"W" * (60 * BLOCK)
        expected[5 * BLOCK : 25 * BLOCK] = bytes(20 * BLOCK)
        expected[40 * BLOCK : 70 * BLOCK] = bytes(30 * BLOCK)
        assert data == bytes(expected[: len(data)])
    assert fsck(dev).clean
