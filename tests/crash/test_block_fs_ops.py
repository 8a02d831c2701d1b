"""Crash every filesystem operation on a block device at every persist point.

The operations of tests/crash/test_fs_ops.py and the data-path ones of
test_datapath_ops.py, run on a ``SimulatedBlockDevice`` through the buffer
cache (``daxfs.block.cache.BlockCache``): a volatile write cache, any subset
of unflushed writes surviving, multi-sector writes torn at every 512-byte
sector.  Each crash state must mount, pass fsck and show the tree before or
after the operation; once the operation returned, only after.
"""

from __future__ import annotations

import pytest

from daxfs.block.bio import QueueLimits
from daxfs.fs.filesystem import FileSystem
from daxfs.testing.blockcrash import (
    BlockCrashCheckFailed,
    BlockCrashReport,
    check_fs_block_operation,
)
from daxfs.testing.crash import check_operation
from tests.crash.test_datapath_ops import OPERATIONS as DATAPATH
from tests.crash.test_fs_ops import OPERATIONS, TIMED, base


def _check(name: str, states: int, **kw: object) -> BlockCrashReport:
    setup, op = {**OPERATIONS, **TIMED, **DATAPATH}[name]
    report = check_fs_block_operation(setup, op, states_per_point=states, **kw)  # type: ignore[arg-type]
    assert report.points >= 1, "the operation must persist something"
    assert report.states >= report.points
    assert report.after_seen >= 1
    return report


@pytest.mark.parametrize("name", sorted(OPERATIONS))
def test_crash_at_every_flush(name: str) -> None:
    _check(name, states=3)


@pytest.mark.parametrize("name", sorted(DATAPATH))
def test_data_path_crash_at_every_flush(name: str) -> None:
    """The data-path operations of issue 8 and 9 (extent splits into a B+tree, the
    copy-on-write paths, a tree map truncated into its first extent)."""
    _check(name, states=3)


#: a page cache of 16 pages: the data of most operations does not fit, so pages are
#: evicted (written back early) in the middle of the operation
BOUNDED = "64K"


@pytest.mark.parametrize("name", sorted({**OPERATIONS, **DATAPATH}))
def test_bounded_cache_crash_at_every_flush(name: str) -> None:
    """The same on a bounded, lazily loaded cache (mount's ``cache_size``): file data
    through the page cache, metadata loaded as touched; recovery runs bounded too."""
    _check(name, states=2, cache_size=BOUNDED)


def test_utime_crash_keeps_old_or_new_times() -> None:
    report = _check("utime", states=3, times=True)
    assert report.before_seen >= 1


SPLIT = ["overwrite across blocks", "rename over existing", "truncate fragmented"]


@pytest.mark.parametrize("name", SPLIT)
def test_crash_with_small_requests_and_4k_sectors(name: str) -> None:
    """4 KiB logical blocks, and requests of at most 8 KiB: every write-back is split."""
    limits = QueueLimits(logical_block_size=4096, physical_block_size=4096, max_bytes=8192)
    _check(name, states=3, limits=limits)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(OPERATIONS))
def test_crash_at_every_flush_many_states(name: str) -> None:
    _check(name, states=32)


PMEM_DRIVER = ["create", "overwrite across blocks", "rename over existing", "unlink fragmented"]


@pytest.mark.parametrize("name", PMEM_DRIVER)
def test_dax_never_on_pmem_crash_at_every_fence(name: str) -> None:
    """dax="never" on pmem: the cache writes back through the pmem block driver
    (PmemBlockDevice: copies persisted at completion, sectors tearing at 8 bytes);
    crashed at every fence of the simulated pmem, each state mounted by DAX."""
    setup, op = OPERATIONS[name]
    report = check_operation(setup, op, states_per_fence=3, dax="never")  # type: ignore[arg-type]
    assert report.fences >= 1
    assert report.after_seen >= 1


def test_harness_detects_a_non_atomic_operation() -> None:
    def two_steps(fs: FileSystem) -> None:
        fs.mkdir("/one")
        fs.mkdir("/two")

    with pytest.raises(BlockCrashCheckFailed, match="neither before nor after"):
        check_fs_block_operation(base, two_steps, states_per_point=2)


def test_harness_catches_a_cache_that_never_flushes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The planted bug: write-back without FLUSH or FUA (the writes stay in the device's
    volatile cache), so a commit can become durable without its log or not at all."""
    from daxfs.block.bio import SECTOR_SHIFT, Bio, BioOp
    from daxfs.block.cache import BlockCache

    def no_flush(self: BlockCache, runs: list[tuple[int, int]]) -> None:
        for start, end in runs:
            bio = Bio(BioOp.WRITE, start >> SECTOR_SHIFT, [self._view[start:end]])
            self.bdev.submit_bio(bio)
            bio.wait()

    monkeypatch.setattr(BlockCache, "_write_back", no_flush)
    with pytest.raises(BlockCrashCheckFailed):
        check_fs_block_operation(base, lambda fs: fs.mkdir("/d/sub/x"), states_per_point=8)


def test_harness_catches_a_cache_that_forgets_flushed_ranges(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The planted bug: while the operation runs, ``flush`` does not mark its range
    dirty (a missing flush), so the new directory block never reaches the device
    while the commit that points at it does."""
    from daxfs.block.cache import BlockCache

    planted = [False]
    flush = BlockCache.flush

    def forgetful(self: BlockCache, offset: int, length: int) -> None:
        if not planted[0]:
            flush(self, offset, length)

    def op(fs: FileSystem) -> None:
        planted[0] = True
        try:
            fs.mkdir("/d/sub/x")
        finally:
            planted[0] = False

    monkeypatch.setattr(BlockCache, "flush", forgetful)
    with pytest.raises(BlockCrashCheckFailed):
        check_fs_block_operation(base, op, states_per_point=8)
