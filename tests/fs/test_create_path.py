"""The create+close fast path: what it skips must not change what it does.

- seal_node / node_ok / InodeRecord.pack_into sum in one call what
  checksum_with_hole sums in three: the same checksums;
- Directories.hash remembers the last name: a different name still gets its own key;
- InodeTable._check_never_used checks the rest of an inode-file block at once
  and remembers it: a record planted above the high-water mark is still refused;
- FileSystem._create (open "x" without generators) aborts and names the path
  as ``_begin`` does;
- crash at every fence of creates that take each branch (inode-file growth, a
  directory leaf split, an inode from the free list).
"""

from __future__ import annotations

import dataclasses
import os
import random
import struct

import numpy as np
import pytest

import daxfs
from daxfs.errors import Corrupted, NoSpace, ReadOnly
from daxfs.fs.dir import DirIndex, _u64_array, index_record
from daxfs.fs.filesystem import FileSystem
from daxfs.fs.layout import (
    DT_REG,
    INO_INODE_FILE,
    INODE_CRC_OFFSET,
    INODE_SIZE,
    INODES_PER_BLOCK,
    NODE_CRC_OFFSET,
    NODE_MAGIC,
    InodeRecord,
    checksum_with_hole,
    node_ok,
    seal_node,
)
from daxfs.testing import SimulatedPmem
from daxfs.testing.crash import check_operation
from tests.fs import crafting
from tests.fs.crafting import edit_superblock, fresh


def test_seal_node_and_node_ok_agree_with_checksum_with_hole() -> None:
    rng = random.Random(7)
    for _ in range(50):
        block = bytearray(rng.randbytes(4096))
        struct.pack_into("<I", block, 0, NODE_MAGIC)
        seal_node(block)
        (stored,) = struct.unpack_from("<I", block, NODE_CRC_OFFSET)
        assert stored == checksum_with_hole(block, NODE_CRC_OFFSET)
        assert node_ok(block)
        assert node_ok(memoryview(bytes(block)))
        flipped = bytearray(block)
        flipped[rng.randrange(8, 4096)] ^= 1 << rng.randrange(8)
        assert not node_ok(flipped)
        other_magic = bytearray(block)
        other_magic[0] ^= 1
        assert not node_ok(other_magic)


def test_inode_pack_checksum_is_the_hole_checksum() -> None:
    rec = InodeRecord(5, 0o100644, 1, 10, 20, 12345, 3, 1, 2, 3, 4, 99, inline=b"x" * 128)
    buf = bytearray(b"\xff" * (INODE_SIZE + 16))
    rec.pack_into(buf, 16)
    view = memoryview(buf)[16:]
    (stored,) = struct.unpack_from("<I", view, INODE_CRC_OFFSET)
    assert stored == checksum_with_hole(view, INODE_CRC_OFFSET)
    assert InodeRecord.unpack_from(buf, 16, 5) == rec


def test_hash_memo_gives_each_name_its_own_key() -> None:
    dev = SimulatedPmem(16 << 20)
    daxfs.mkfs(dev)
    with daxfs.mount(dev) as fs:
        dirs = fs.dirs
        fresh_keyed = type(dirs)(dirs.itable, dirs.alloc, dirs.hash_key)
        names = [b"a", b"b", b"a", b"a", b"x" * 255, b"b"]
        assert [dirs.hash(n) for n in names] == [fresh_keyed.hash(n) for n in names]
        assert len({dirs.hash(n) for n in (b"a", b"b", b"c")}) == 3


def three_files(fs: FileSystem) -> None:
    for name in ("a", "b", "c"):
        with fs.open(f"/{name}", "wb") as f:
            f.write(name.encode())


def test_a_record_above_the_high_water_mark_is_refused() -> None:
    """A record planted in a slot above inode_hwm (in the same inode-file block) is
    damage: the first create checks the rest of the block and refuses."""
    dev = fresh(three_files)
    c = crafting.ino_of(dev, "/c")
    hwm = crafting.superblock(dev).inode_hwm
    assert hwm == c + 1
    assert (hwm + 2) // INODES_PER_BLOCK == hwm // INODES_PER_BLOCK, "same block"
    # copy /c's record two slots above the high-water mark (a valid record, wrong place)
    rec = crafting.read_inode(dev, c)
    crafting.write_inode(dev, dataclasses.replace(rec, ino=hwm + 2))
    with daxfs.mount(dev) as fs:
        with pytest.raises(Corrupted, match=f"inode {hwm + 2} holds a record"):
            fs.open("/new", "xb").close()
        assert not fs.exists("/new")


def test_checked_slots_are_remembered_and_forgotten_on_growth() -> None:
    dev = SimulatedPmem(16 << 20)
    daxfs.mkfs(dev)
    with daxfs.mount(dev) as fs:
        itable = fs.itable

        def inode_file_size() -> int:
            return itable.get(INO_INODE_FILE).rec.size

        size = inode_file_size()
        growths = 0
        for i in range(300):  # the inode file grows twice on the way (at 14 and 270)
            fs.open(f"/f{i}", "xb").close()
            hwm = itable.sup.sb.inode_hwm
            if inode_file_size() != size:
                size = inode_file_size()
                growths += 1
                assert itable._zero_to == 0, "a growth forgets the checked slots"
            else:  # remembered: to the end of the high-water mark's inode-file block
                assert itable._zero_to == -(-hwm // INODES_PER_BLOCK) * INODES_PER_BLOCK
        assert growths == 2
        assert len(fs.listdir("/")) == 300


def test_lowered_hwm_inside_a_checked_block_is_refused_after_remount() -> None:
    """What _zero_to remembers is per mount: a lie planted while unmounted is caught."""
    dev = fresh(three_files)
    a = crafting.ino_of(dev, "/a")
    edit_superblock(dev, inode_hwm=a, used_inodes=a - 1, free_inodes=0, free_ino_head=0)
    with (
        daxfs.mount(dev) as fs,
        pytest.raises(Corrupted, match=f"inode_hwm {a} .*inode {a} holds a record"),
    ):
        fs.open("/new", "xb").close()


def test_create_failure_aborts_and_names_the_path() -> None:
    dev = SimulatedPmem(16 << 20)
    daxfs.mkfs(dev)
    with daxfs.mount(dev) as fs:
        fs.mkdir("/d")
        before = fs.itable.sup.sb.inode_hwm

        def no_inode(*args: object) -> object:
            raise NoSpace("no inode numbers left")

        fs.itable.allocate = no_inode  # type: ignore[method-assign]
        with pytest.raises(NoSpace) as info:
            fs.open("/d/new", "xb")
        assert info.value.filename == "/d/new"
        assert "/d/new" in str(info.value)
        del fs.itable.allocate
        assert fs.journal.active is None
        assert fs.itable.sup.sb.inode_hwm == before
        fs.open("/d/new", "xb").close()  # the journal lock was released
        assert fs.listdir("/d") == ["new"]
        with pytest.raises(FileExistsError) as exists:
            fs.open("/d/new", "xb")
        assert exists.value.filename == "/d/new"
    assert daxfs.fsck(dev).clean


def test_create_in_a_read_only_filesystem_names_the_path() -> None:
    dev = SimulatedPmem(16 << 20)
    daxfs.mkfs(dev)
    with daxfs.mount(dev, readonly=True) as fs:
        with pytest.raises(ReadOnly) as info:
            fs.open("/x", "xb")
        assert info.value.filename == "/x"


# -- crash at every fence of creates that take each branch ---------------------------------


def many(count: int) -> object:
    def setup(fs: FileSystem) -> None:
        fs.mkdir("/d")
        for i in range(count):
            fs.open(f"/d/f{i:04d}", "xb").close()

    return setup


def at_block_end(fs: FileSystem) -> None:
    """Inodes up to the last slot of the inode file: the next create grows it."""
    fs.mkdir("/d")
    i = 0
    blocks = fs.itable._inode_file_blocks(fs.store)
    while fs.itable.sup.sb.inode_hwm < blocks * INODES_PER_BLOCK:
        fs.open(f"/d/g{i}", "xb").close()
        i += 1


def with_free_inode(fs: FileSystem) -> None:
    many(20)(fs)  # type: ignore[operator]
    fs.unlink("/d/f0007")
    assert fs.itable.sup.sb.free_ino_head


CREATES = {
    "create in a directory of 300 (leaves split)": (many(300), "/d/new"),
    "create that grows the inode file": (at_block_end, "/d/new"),
    "create from the free inode list": (with_free_inode, "/d/new"),
    "create at an inode-file block boundary": (many(INODES_PER_BLOCK - 3), "/d/new"),
}


@pytest.mark.parametrize("name", sorted(CREATES))
def test_crash_at_every_fence_of_create(name: str) -> None:
    setup, path = CREATES[name]

    def op(fs: FileSystem) -> None:
        fs.open(path, "xb", buffering=0).close()

    report = check_operation(setup, op, states_per_fence=2)  # type: ignore[arg-type]
    assert report.fences >= 3
    assert report.after_seen >= 1
    assert report.before_seen >= 1


def test_many_creates_stay_consistent() -> None:
    """Creates across several inode-file blocks and leaf splits, then a remount: every
    name there, fsck clean (the remembered zero slots never hid a record)."""
    dev = SimulatedPmem(32 << 20)
    daxfs.mkfs(dev)
    names = [f"n{i:05d}" for i in range(700)]
    with daxfs.mount(dev) as fs:
        fs.mkdir("/d")
        for n in names:
            fs.open(f"/d/{n}", "xb").close()
        for n in names[::3]:
            fs.unlink(f"/d/{n}")
        for n in names[::3]:
            fs.open(f"/d/{n}", "xb").close()
    assert daxfs.fsck(dev).clean
    with daxfs.mount(dev) as fs:
        assert sorted(fs.listdir("/d")) == names
        assert os.path.basename(names[0]) in fs.listdir("/d")


def test_index_merge_by_insertion_matches_a_model() -> None:
    """DirIndex.merge deletes and inserts at searchsorted positions (no full sort):
    after random adds, replacements and removals across many merges, the arrays are
    strictly increasing, count is exact, and every key answers as a dict model does."""
    rng = random.Random(11)
    keys = np.unique(np.array([rng.getrandbits(63) for _ in range(5000)], dtype=np.uint64))
    model: dict[int, tuple[bytes, int, int]] = {}
    slots = []
    for k in keys.tolist():
        entry = (b"n%d" % (k % 10**9), 1000 + k % 10**6, DT_REG)
        model[k] = entry
        slots.append(index_record([entry])[1])
    values = _u64_array(np.array([index_record([model[k]])[0] for k in keys.tolist()]))
    index = DirIndex(_u64_array(keys), values, b"".join(slots), generation=1)
    merges = 0
    for step in range(6000):
        roll = rng.random()
        if roll < 0.5 or not model:
            k = rng.getrandbits(63)
            new = k not in model
            entry = (b"a%d" % step, 2000 + step, DT_REG)
            index.put(k, [entry], new if rng.random() < 0.5 else None)
            model[k] = entry
        elif roll < 0.75:
            k = rng.choice(list(model))
            entry = (b"r%d" % step, 3000 + step, DT_REG)
            index.put(k, [entry], False)
            model[k] = entry
        else:
            k = rng.choice(list(model))
            index.discard(k)
            del model[k]
        if not index.added and not index.removed:
            merges += 1
    index.merge()
    assert merges >= 5
    held = np.frombuffer(index.keys, dtype=np.uint64)
    assert bool(np.all(held[1:] > held[:-1]))
    assert len(held) == index.count == len(model)
    for k, (name, ino, dtype) in model.items():
        assert index.find(k, name) == (ino, dtype)
        assert index.find(k, name + b"x") is None
