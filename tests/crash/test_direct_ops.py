"""Crash a direct write at every persist point of the simulated block device.

Direct I/O (daxfs/fs/direct.py) writes a file's data in bios around the
cache: iomap_begin allocates UNWRITTEN blocks for a hole in one transaction,
the data bios are made durable (FUA, or a FLUSH after several), and one
transaction at completion converts the blocks and sets the size.  Each crash
state must mount, pass fsck, and show every file's content, size and mode as
before or after the write; once the write returned, only after.  The block
count is not compared: a crash between the allocation and the completion
leaves blocks allocated for the write that read as zeros (UNWRITTEN), as
Linux leaves them; fsck accepts them and a truncate frees them.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from daxfs.block.bio import QueueLimits
from daxfs.fs.direct import aligned_buffer
from daxfs.fs.filesystem import FileSystem
from daxfs.fs.layout import BLOCK_SIZE
from daxfs.testing.blockcrash import check_fs_block_operation

Step = Callable[[FileSystem], object]


def data(n: int, seed: int) -> memoryview:
    buf = aligned_buffer(n)
    buf[:] = bytes((i * 13 + seed) & 0xFF for i in range(n))
    return memoryview(buf)


def direct_write(offset: int, n: int, seed: int = 1) -> Step:
    def op(fs: FileSystem) -> None:
        with fs.open("/f", "rb+", buffering=0, direct=True) as f:
            assert f.pwrite(data(n, seed), offset) == n

    return op


def setup_file(size: int, *, written: int = 0, fallocate: tuple[int, int] | None = None) -> Step:
    def setup(fs: FileSystem) -> None:
        with fs.open("/f", "wb", buffering=0) as f:
            if written:
                f.write(bytes(data(written, 7)))
            if fallocate is not None:
                f.fallocate(*fallocate)
            f.truncate(size)
        with fs.open("/other", "wb") as g:
            g.write(b"untouched" * 100)

    return setup


def async_write(fs: FileSystem) -> None:
    """A write by the asynchronous API, completed on the engine's worker, with a read
    in flight beside it (several writes in flight would allow any subset of them
    after a crash: each is its own operation)."""
    with fs.open("/f", "rb+", buffering=0, direct=True) as f:
        read = f.submit_read(0, aligned_buffer(BLOCK_SIZE))
        write = f.submit_write(2 * BLOCK_SIZE, data(3 * BLOCK_SIZE, 5))
        assert write.result(30) == 3 * BLOCK_SIZE
        assert read.result(30) == BLOCK_SIZE


OPERATIONS: dict[str, tuple[Step, Step]] = {
    # a hole inside the file: allocate UNWRITTEN, data, convert
    "into_hole": (setup_file(64 * 1024), direct_write(16 * 1024, 2 * BLOCK_SIZE)),
    # fallocated blocks: data, convert (no allocation)
    "into_unwritten": (
        setup_file(64 * 1024, fallocate=(0, 64 * 1024)),
        direct_write(8 * 1024, 3 * BLOCK_SIZE),
    ),
    # part of an unwritten block: zeros for the rest of it, so three bios and a FLUSH
    "partial_block_into_unwritten": (
        setup_file(8192, fallocate=(0, 8192)),
        direct_write(1024, 1024),
    ),
    # past an unaligned end: the old tail zeroed, blocks allocated, the size grown
    "extending_size": (setup_file(5000, written=5000), direct_write(8192, 3 * BLOCK_SIZE)),
    # appending at an aligned end
    "append": (setup_file(BLOCK_SIZE, written=BLOCK_SIZE), direct_write(BLOCK_SIZE, BLOCK_SIZE)),
    # an overwrite of written blocks in place (DirectIO._write_mapped: one FUA write,
    # no transaction; the times owed, committed at close): one logical block, which
    # the disk writes atomically -- a longer direct overwrite may tear between logical
    # blocks, as on Linux (docs/GUARANTEES.md)
    "overwrite": (setup_file(16384, written=16384), direct_write(4096, 512, seed=3)),
    # the asynchronous API, completing on the engine's worker, past the end
    "async_in_flight": (setup_file(BLOCK_SIZE, written=BLOCK_SIZE), async_write),
}


@pytest.mark.parametrize("name", sorted(OPERATIONS))
def test_direct_write_crash_at_every_flush(name: str) -> None:
    setup, op = OPERATIONS[name]
    report = check_fs_block_operation(setup, op, states_per_point=4, blocks=False)
    assert report.points >= 2, "allocation or data, and the completion, persist something"
    assert report.after_seen >= 1
    assert report.states >= report.points


@pytest.mark.parametrize(
    "name", ["into_hole", "extending_size", "partial_block_into_unwritten", "overwrite"]
)
def test_direct_write_crash_with_4k_sectors_and_small_requests(name: str) -> None:
    """4 KiB logical blocks, requests split at 8 KiB: a data bio tears between pieces."""
    setup, op = OPERATIONS[name]
    limits = QueueLimits(
        logical_block_size=4096, physical_block_size=4096, max_bytes=8192, max_segment_bytes=8192
    )
    if name == "partial_block_into_unwritten":  # 1024 bytes are not aligned to 4 KiB sectors
        op = direct_write(0, BLOCK_SIZE)
    if name == "overwrite":  # one 4 KiB sector
        op = direct_write(BLOCK_SIZE, BLOCK_SIZE, seed=3)
    report = check_fs_block_operation(
        setup, op, states_per_point=3, limits=limits, logical_block_size=4096, blocks=False
    )
    assert report.after_seen >= 1


@pytest.mark.parametrize("name", ["into_hole", "extending_size", "async_in_flight", "overwrite"])
def test_direct_write_crash_on_a_bounded_cache(name: str) -> None:
    setup, op = OPERATIONS[name]
    report = check_fs_block_operation(setup, op, states_per_point=2, cache_size="64K", blocks=False)
    assert report.after_seen >= 1


def test_the_check_catches_a_conversion_before_the_data_is_written(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Planted bug (invariant 3 of daxfs/fs/direct.py broken): the completion's
    transaction -- blocks marked written, the size grown -- committed before the data
    bios are submitted.  A crash between the two shows the new size over blocks that
    never got the data, which the check must catch."""
    from daxfs.fs import direct
    from daxfs.testing.blockcrash import BlockCrashCheckFailed

    real_submit = direct._Request._submit

    def submit_after_commit(self: direct._Request, pieces: list[object]) -> None:
        real_submit(self, pieces)  # type: ignore[arg-type]
        with self.inode.lock:
            self.engine.data.direct_write_end(self.inode, self.pos, self.length, self.convert)

    monkeypatch.setattr(direct._Request, "_submit", submit_after_commit)
    setup, op = OPERATIONS["extending_size"]
    with pytest.raises(BlockCrashCheckFailed, match="neither before nor after"):
        check_fs_block_operation(setup, op, states_per_point=4, blocks=False)
