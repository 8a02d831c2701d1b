"""Crash buffered writes through the files' page cache at every persist point.

On a mount bounded by ``cache_size`` a buffered write goes through the file's
address space and is written back out of place (daxfs.fs.filecache,
``DirectIO.write_out_of_place``): new blocks, FUA or a FLUSH, then one
transaction.  Every crash state of the simulated disk must mount, pass fsck
and show the whole write or none of it; once the write returned, all of it.
Each operation checks that it took that path (``cow_writes``).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from daxfs.block.bio import QueueLimits
from daxfs.fs.filesystem import FileSystem
from daxfs.testing.blockcrash import (
    BlockCrashCheckFailed,
    BlockCrashReport,
    check_fs_block_operation,
)
from tests.crash.test_fs_ops import BLOCK, base, fragmented, sparse

#: 16 pages: a write of more than 4 pages goes through a bounce buffer
BOUNDED = "64K"


def cow_write(path: str, data: bytes, offset: int | None, mode: str = "rb+") -> Callable[..., None]:
    """``pwrite`` (``offset`` None: ``write`` at the position, e.g. appending) through
    a raw File, asserting that it was written out of place."""

    def op(fs: FileSystem) -> None:
        engine = fs.direct
        assert engine is not None
        before = engine.stats["cow_writes"]
        with fs.open(path, mode, buffering=0) as f:
            if offset is None:
                f.write(data)
            else:
                f.pwrite(data, offset)
        assert engine.stats["cow_writes"] > before, "the write did not go out of place"

    return op


def read_then_write(fs: FileSystem) -> None:
    """The pages cached by a read first (clean), then partly overwritten."""
    with fs.open("/d/file", "rb") as f:
        f.read()
    cow_write("/d/file", b"R" * 5000, 3000)(fs)


OPERATIONS: dict[str, tuple[Callable[[FileSystem], None], Callable[[FileSystem], None]]] = {
    "inside a page": (base, cow_write("/d/file", b"O" * 100, 4000)),
    "across pages": (base, cow_write("/d/file", b"X" * 9000, 1000)),
    "whole pages": (base, cow_write("/d/file", b"W" * 2 * BLOCK, BLOCK)),
    "extending": (base, cow_write("/d/file", b"E" * 3000, 15000)),
    "past the end": (base, cow_write("/d/other", b"P" * 100, 3 * BLOCK + 7)),
    "appending": (base, cow_write("/d/other", b"A" * 5000, None, "ab")),
    "into holes and unwritten": (sparse, cow_write("/sparse", b"H" * 6 * BLOCK, 2 * BLOCK + 5)),
    "across extents": (fragmented, cow_write("/frag", b"F" * 6000, BLOCK - 100)),
    "bounced": (base, cow_write("/d/file", b"B" * 40000, 3000)),
    "cached pages": (base, read_then_write),
}


def _check(name: str, states: int = 3, **kw: object) -> BlockCrashReport:
    setup, op = OPERATIONS[name]
    report = check_fs_block_operation(
        setup,
        op,
        states_per_point=states,
        cache_size=BOUNDED,
        **kw,  # type: ignore[arg-type]
    )
    assert report.points >= 1
    assert report.after_seen >= 1
    return report


@pytest.mark.parametrize("name", sorted(OPERATIONS))
def test_buffered_write_crash_at_every_flush(name: str) -> None:
    report = _check(name)
    assert report.before_seen >= 1  # a crash before the commit keeps the old bytes


@pytest.mark.parametrize("name", ["across pages", "bounced"])
def test_with_4k_sectors_and_small_requests(name: str) -> None:
    """4 KiB logical blocks and requests of at most 8 KiB: the write's bio is split."""
    limits = QueueLimits(logical_block_size=4096, physical_block_size=4096, max_bytes=8192)
    _check(name, limits=limits, logical_block_size=4096)


def test_several_runs_flush_after_their_bios(monkeypatch: pytest.MonkeyPatch) -> None:
    """New blocks in two runs: two bios, then one FLUSH (not FUA) before the commit."""
    from daxfs.fs.alloc import Allocator

    alloc = Allocator.alloc

    def in_two(self: Allocator, tx: object, count: int, goal: int | None = None) -> object:
        if count < 2:
            return alloc(self, tx, count, goal)  # type: ignore[arg-type]
        half = count // 2
        return alloc(self, tx, half, goal) + alloc(self, tx, count - half, None)  # type: ignore[arg-type]

    monkeypatch.setattr(Allocator, "alloc", in_two)
    _check("bounced")
    _check("across pages")


def test_harness_catches_a_write_back_in_place(monkeypatch: pytest.MonkeyPatch) -> None:
    """The planted bug: the write-back overwrites the file's blocks in place (the plain
    direct write: durable, not atomic), so a crash can tear it at a sector."""
    from daxfs.fs.direct import DirectIO, aligned_buffer
    from daxfs.fs.inode import Inode

    def in_place(
        self: DirectIO, inode: Inode, pos: int, views: list[memoryview], size: int, **kw: object
    ) -> None:
        buf = aligned_buffer(sum(len(v) for v in views))
        at = 0
        for v in views:
            buf[at : at + len(v)] = v
            at += len(v)
        self._run(self._request(inode, pos, buf, True, True, ""))  # (the range is held)
        self.stats["cow_writes"] += 1

    monkeypatch.setattr(DirectIO, "write_out_of_place", in_place)
    with pytest.raises(BlockCrashCheckFailed, match="neither before nor after"):
        _check("across pages", states=16)
