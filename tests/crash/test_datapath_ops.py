"""Crash at every fence of the data-path operations of issue 8: each state is before or after.

* an extent split that turns a full inline map (five extents) into a B+tree:
  punch-hole, zero-range, a write into a preallocated extent, a
  copy-on-write overwrite;
* copy-on-write overwrites of aligned pieces and of a whole extent, which
  change the map once (``BlockMaps.replace``, issue 9), in an inline map and
  in a B+tree map: the fast path of aligned overwrites (``Allocator.move``:
  no superblock change; checked to be the path taken);
* shrinking a B+tree-mapped file into its first extent (the left part of the
  extent is rewritten in place in the tree's leaf).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from daxfs.fs.alloc import Allocator
from daxfs.fs.data import FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE
from daxfs.fs.filesystem import FileSystem
from daxfs.fs.mount import mkfs, mount
from daxfs.testing import SimulatedPmem
from daxfs.testing.crash import DEFAULT_SIZE, check_operation

BLOCK = 4096
PUNCH = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE


def five_extents(fs: FileSystem, blocks: int = 64) -> None:
    """/f: ``blocks`` blocks of data with one-block holes at blocks 1, 3, 5, 7."""
    fs.mkdir("/d")
    with fs.open("/d/other", "wb") as f:
        f.write(b"other file\n")
    with fs.open("/f", "wb", buffering=0) as f:
        f.write(bytes(range(1, 256)) * (blocks * BLOCK // 255 + 1))
        for block in (1, 3, 5, 7):
            f.fallocate(block * BLOCK, BLOCK, PUNCH)


def five_with_unwritten(fs: FileSystem) -> None:
    """/f: four written extents, then a preallocated (unwritten) one: five."""
    fs.mkdir("/d")
    with fs.open("/f", "wb", buffering=0) as f:
        f.write(b"w" * 8 * BLOCK)
        for block in (1, 3, 5):
            f.fallocate(block * BLOCK, BLOCK, PUNCH)
        f.fallocate(8 * BLOCK, 32 * BLOCK, 0)


def contiguous(blocks: int) -> Callable[[FileSystem], None]:
    def setup(fs: FileSystem) -> None:
        """/f: ``blocks`` blocks of data in one extent."""
        with fs.open("/f", "wb", buffering=0) as f:
            f.write(bytes(range(1, 256)) * (blocks * BLOCK // 255 + 1))

    return setup


def tree_mapped(fs: FileSystem) -> None:
    """/f: a B+tree map whose first extent is 30 blocks long."""
    five_extents(fs)
    with fs.open("/f", "rb+", buffering=0) as f:
        f.fallocate(40 * BLOCK, BLOCK, PUNCH)
        f.fallocate(50 * BLOCK, BLOCK, PUNCH)


def tree_mapped_long(fs: FileSystem) -> None:
    """/f: 512 blocks whose map is a B+tree of seven extents, the last 500 blocks long."""
    contiguous(512)(fs)
    with fs.open("/f", "rb+", buffering=0) as f:
        for block in (1, 3, 5, 7, 9, 11):
            f.fallocate(block * BLOCK, BLOCK, PUNCH)


def fallocate(mode: int, block: int, count: int) -> object:
    def op(fs: FileSystem) -> None:
        with fs.open("/f", "rb+", buffering=0) as f:
            f.fallocate(block * BLOCK, count * BLOCK, mode)

    return op


def pwrite(offset: int, data: bytes) -> object:
    def op(fs: FileSystem) -> None:
        with fs.open("/f", "rb+", buffering=0) as f:
            f.pwrite(data, offset)

    return op


OPERATIONS = {
    "punch makes a sixth extent": (five_extents, fallocate(PUNCH, 40, 1)),
    "zero range makes a sixth extent": (
        five_extents,
        fallocate(FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, 40, 2),
    ),
    "write into a preallocated extent": (five_with_unwritten, pwrite(20 * BLOCK + 7, b"W" * 5000)),
    "copy-on-write inside an extent": (
        lambda fs: five_extents(fs, 200),
        pwrite(50 * BLOCK + 10, b"C" * (100 * BLOCK)),
    ),
    # BlockMaps.replace (issue 9): the old blocks out, the new in, one map change
    "copy-on-write of aligned pieces, as a sequential overwrite": (
        contiguous(512),
        pwrite(128 * BLOCK, b"S" * (256 * BLOCK)),
    ),
    "copy-on-write of a whole extent of a full inline map": (
        lambda fs: five_extents(fs, 200),
        pwrite(8 * BLOCK, b"E" * (192 * BLOCK)),
    ),
    # the fast path of these (DataPath._cow_blocks, Allocator.move), in a B+tree map
    "copy-on-write of aligned pieces in a B+tree map": (
        tree_mapped_long,
        pwrite(200 * BLOCK, b"T" * (128 * BLOCK)),
    ),
    "truncate a tree map into its first extent": (
        tree_mapped,
        lambda fs: fs.truncate("/f", 20 * BLOCK + 5),
    ),
}


@pytest.mark.parametrize("name", sorted(OPERATIONS))
def test_crash_at_every_fence(name: str) -> None:
    setup, op = OPERATIONS[name]
    report = check_operation(setup, op, states_per_fence=3)  # type: ignore[arg-type]
    assert report.fences >= 1, "the operation must persist something"
    assert report.after_seen >= 1


FAST_PATH = [
    "copy-on-write of aligned pieces, as a sequential overwrite",
    "copy-on-write of a whole extent of a full inline map",
    "copy-on-write of aligned pieces in a B+tree map",
]


@pytest.mark.parametrize("name", FAST_PATH)
def test_the_aligned_overwrites_take_the_fast_path(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The crash tests above of aligned copy-on-write overwrites test the fast path:
    the overwrite is one Allocator.move that found its run."""
    setup, op = OPERATIONS[name]
    dev = SimulatedPmem(DEFAULT_SIZE)
    mkfs(dev)
    with mount(dev) as fs:
        setup(fs)  # type: ignore[operator]
    moved: list[int | None] = []
    move = Allocator.move

    def counting(alloc: Allocator, *args: int) -> int | None:
        moved.append(move(alloc, *args))
        return moved[-1]

    monkeypatch.setattr(Allocator, "move", counting)
    fs = mount(dev)
    op(fs)  # type: ignore[operator]
    fs.unmount()
    assert len(moved) == 1
    assert moved[0] is not None
    dev.close()


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(OPERATIONS))
def test_crash_at_every_fence_many_states(name: str) -> None:
    setup, op = OPERATIONS[name]
    check_operation(setup, op, states_per_fence=32)  # type: ignore[arg-type]
