"""Extent maps past five extents: every operation that splits an extent (issue 8).

An inline map holds five extents; an operation that splits one of them when
the map is full must turn the map into a B+tree, as ``BlockMaps.insert``
does.  Each case runs against a bytearray model, then checks the map kind,
fsck and a remount.  The reverse direction is checked too: a B+tree map that
shrinks back to a few extents stays a tree (there is no way back inline),
becomes empty when its last extent goes, and an empty map starts inline again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

import daxfs
from daxfs.fs.data import FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE
from daxfs.fs.fsck import fsck
from daxfs.fs.layout import INLINE_EXTENTS, MAP_BTREE, MAP_INLINE, MAP_NONE
from daxfs.testing import SimulatedPmem
from tests import helpers

BLOCK = 4096
PUNCH = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE


@pytest.fixture
def dev() -> Iterator[SimulatedPmem]:
    yield from helpers.fresh_device(16 << 20)


class Model:
    """A file on daxfs and the bytes it must hold."""

    def __init__(self, fs: daxfs.FileSystem, path: str, blocks: int) -> None:
        self.fs = fs
        self.path = path
        self.data = bytearray(bytes(range(1, 256)) * (blocks * BLOCK // 255 + 1))[: blocks * BLOCK]
        with fs.open(path, "wb", buffering=0) as f:
            f.write(self.data)

    def punch(self, block: int, count: int = 1, mode: int = PUNCH) -> None:
        with self.fs.open(self.path, "rb+", buffering=0) as f:
            f.fallocate(block * BLOCK, count * BLOCK, mode)
        self.data[block * BLOCK : (block + count) * BLOCK] = bytes(count * BLOCK)

    def write(self, offset: int, data: bytes) -> None:
        with self.fs.open(self.path, "rb+", buffering=0) as f:
            assert f.pwrite(data, offset) == len(data)
        end = offset + len(data)
        if end > len(self.data):
            self.data += bytes(end - len(self.data))
        self.data[offset:end] = data

    def map_kind(self) -> tuple[int, int]:
        rec = self.fs.itable.get(self.fs.stat(self.path).st_ino).rec
        return rec.map_kind, len(list(self.fs.maps.extents(self.fs.store, self.inode())))

    def inode(self) -> daxfs.fs.inode.Inode:
        return self.fs.itable.get(self.fs.stat(self.path).st_ino)

    def check(self, dev: SimulatedPmem) -> None:
        with self.fs.open(self.path, "rb") as f:
            assert f.read() == self.data
        self.fs.unmount()
        report = fsck(dev)
        assert report.clean, str(report)
        with daxfs.mount(dev) as again, again.open(self.path, "rb") as f:
            assert f.read() == self.data


def five_extents(fs: daxfs.FileSystem, blocks: int = 64) -> Model:
    """The issue's file: ``blocks`` blocks, one-block holes at blocks 1, 3, 5, 7."""
    model = Model(fs, "/f", blocks)
    for block in (1, 3, 5, 7):
        model.punch(block)
    assert model.map_kind() == (MAP_INLINE, INLINE_EXTENTS)
    return model


def test_punch_inside_an_extent_of_a_full_inline_map(dev: SimulatedPmem) -> None:
    """The smallest case of the issue: the sixth extent made by a punch."""
    fs = daxfs.mount(dev)
    model = five_extents(fs)
    model.punch(40)
    assert model.map_kind() == (MAP_BTREE, 6)
    model.check(dev)


def test_zero_range_inside_an_extent_of_a_full_inline_map(dev: SimulatedPmem) -> None:
    fs = daxfs.mount(dev)
    model = five_extents(fs)
    model.punch(40, 3, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE)
    assert model.map_kind() == (MAP_BTREE, 7)  # written, unwritten, written
    model.check(dev)


def test_write_into_the_middle_of_a_preallocated_extent(dev: SimulatedPmem) -> None:
    fs = daxfs.mount(dev)
    model = Model(fs, "/f", 8)
    for block in (1, 3, 5):
        model.punch(block)
    with fs.open("/f", "rb+", buffering=0) as f:
        f.fallocate(8 * BLOCK, 32 * BLOCK, 0)  # an unwritten extent after four written ones
    model.data += bytes(32 * BLOCK)
    assert model.map_kind() == (MAP_INLINE, INLINE_EXTENTS)
    model.write(20 * BLOCK + 100, b"W" * 5000)
    assert model.map_kind()[0] == MAP_BTREE
    model.check(dev)


def test_copy_on_write_overwrite_inside_an_extent(dev: SimulatedPmem) -> None:
    fs = daxfs.mount(dev)
    model = five_extents(fs, blocks=200)
    model.write(50 * BLOCK + 10, b"C" * (100 * BLOCK))  # 400 KiB: copy-on-write
    assert model.map_kind()[0] == MAP_BTREE
    model.check(dev)


def test_split_with_a_full_map_at_every_position(dev: SimulatedPmem) -> None:
    """Punch one block at each place of a full map: first, middle, last block of extents."""
    fs = daxfs.mount(dev)
    for i, block in enumerate((0, 8, 9, 30, 63, 2, 6)):
        model = Model(fs, f"/f{i}", 64)
        for hole in (1, 3, 5, 7):
            model.punch(hole)
        model.punch(block)
        with fs.open(model.path, "rb") as f:
            assert f.read() == model.data, block
    fs.unmount()
    assert fsck(dev).clean


def test_a_tree_map_never_goes_back_inline_until_empty(dev: SimulatedPmem) -> None:
    fs = daxfs.mount(dev)
    model = five_extents(fs)
    model.punch(40)
    for block in range(8, 64):  # punch almost everything: few extents are left
        if block != 40:
            model.punch(block)
    kind, count = model.map_kind()
    assert (kind, count) == (MAP_BTREE, 4)  # fewer than five, still a tree: both are valid
    model.write(3 * BLOCK, b"again")  # lookups and inserts work on a small tree
    model.punch(0, 64)
    assert model.map_kind() == (MAP_NONE, 0)  # the last extent gone: an empty map
    model.write(0, b"inline again")
    assert model.map_kind() == (MAP_INLINE, 1)
    model.check(dev)


@pytest.mark.parametrize("how", ["unlink", "truncate"])
def test_a_small_tree_map_is_freed_whole(dev: SimulatedPmem, how: str) -> None:
    """Deleting or truncating a tree-mapped file of few extents frees its tree nodes too."""
    fs = daxfs.mount(dev)
    fs.open("/keep", "wb").close()  # the root directory keeps its tree
    free = fs.statvfs().f_bfree
    model = five_extents(fs)
    model.punch(40)
    for block in range(10, 64):
        model.punch(block)
    assert model.map_kind()[0] == MAP_BTREE
    drop: Callable[[], None] = (
        (lambda: fs.unlink("/f")) if how == "unlink" else (lambda: fs.truncate("/f", 0))
    )
    drop()
    assert fs.statvfs().f_bfree == free  # every data block and tree node came back
    fs.unmount()
    assert fsck(dev).clean
