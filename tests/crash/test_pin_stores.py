"""Stores through a pin, then unpin, crashed at every persist point (issue 10, R3).

A writable pin's views alias device memory: pmem (stores sit in CPU caches until
flushed) or the block cache's DRAM (they reach the disk only when written back).
``SGList.unpin`` writes the pinned range back and persists it before it releases
the layout (daxfs/mm/pin.py).  Each check stores one aligned 8-byte word through
the views (failure-atomic on both models, so a crash state is all before or all
after), unpins, and crashes at every persist point: every state must be before
or after, and once ``unpin`` returned only after.  The planted bug skips the
write-back at unpin; the same checks must then fail.
"""

from __future__ import annotations

import pytest

from daxfs.fs.filesystem import FileSystem
from daxfs.mm.pin import SGList
from daxfs.testing.blockcrash import BlockCrashCheckFailed, check_fs_block_operation
from daxfs.testing.crash import CrashCheckFailed, check_operation

BLOCK = 4096
WORD = b"PINNED!!"  # 8 bytes, stored at an 8-byte aligned offset: kept or lost whole
AT = 2 * BLOCK + 64


def setup(fs: FileSystem) -> None:
    with fs.open("/f", "wb", buffering=0) as f:
        f.write(b"o" * 4 * BLOCK)
    fs.mkdir("/d")


def store_through_a_pin(fs: FileSystem) -> None:
    """Pin blocks 1-3, store WORD through the views (as a READ bio would), unpin."""
    with fs.open("/f", "rb+", buffering=0) as f:
        sg = f.pin(BLOCK, 3 * BLOCK)
        pos = BLOCK
        for view in sg.views():
            if pos <= AT < pos + len(view):
                view[AT - pos : AT - pos + len(WORD)] = WORD
            pos += len(view)
            view.release()
        assert pos == 4 * BLOCK
        sg.unpin()


def store_with_a_with_block(fs: FileSystem) -> None:
    """The same, the pin released by the with-block's exit (SGList.close)."""
    with fs.open("/f", "rb+", buffering=0) as f, f.pin(AT, len(WORD)) as sg:
        for view in sg.views():
            view[:] = WORD
            view.release()


OPS = {"unpin": store_through_a_pin, "with-exit": store_with_a_with_block}


@pytest.mark.parametrize("name", sorted(OPS))
def test_pmem_crash_at_every_fence(name: str) -> None:
    report = check_operation(setup, OPS[name], states_per_fence=6)
    assert report.fences >= 1, "unpin must persist something"
    assert report.after_seen >= 1


def test_dax_never_on_pmem_crash_at_every_fence() -> None:
    """dax="never" on pmem: the pin aliases the block cache; unpin writes it back
    through the pmem block driver."""
    report = check_operation(setup, store_through_a_pin, states_per_fence=4, dax="never")
    assert report.fences >= 1
    assert report.after_seen >= 1


@pytest.mark.parametrize("cache_size", [None, "64K"])
@pytest.mark.parametrize("name", sorted(OPS))
def test_block_crash_at_every_flush(name: str, cache_size: str | None) -> None:
    report = check_fs_block_operation(setup, OPS[name], states_per_point=4, cache_size=cache_size)
    assert report.points >= 1, "unpin must write something back"
    assert report.after_seen >= 1


@pytest.fixture
def no_write_back_at_unpin(monkeypatch: pytest.MonkeyPatch) -> None:
    """The planted bug: unpin releases the layout without writing the range back."""
    monkeypatch.setattr(SGList, "_write_back", lambda self, dirty: None)


@pytest.mark.usefixtures("no_write_back_at_unpin")
def test_planted_bug_is_caught_on_pmem() -> None:
    with pytest.raises(CrashCheckFailed, match="not after, once returned"):
        check_operation(setup, store_through_a_pin, states_per_fence=6)


@pytest.mark.usefixtures("no_write_back_at_unpin")
@pytest.mark.parametrize("cache_size", [None, "64K"])
def test_planted_bug_is_caught_on_a_block_device(cache_size: str | None) -> None:
    with pytest.raises(BlockCrashCheckFailed, match="not after, once op returned"):
        check_fs_block_operation(
            setup, store_through_a_pin, states_per_point=4, cache_size=cache_size
        )
