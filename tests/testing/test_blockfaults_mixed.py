"""The block fault harness (``blockfaults.check_fs_block_faults``) on a bounded mount, with
buffered and ``direct=True`` Files of one file mixed in each operation.

Each operation caches the file's pages through a buffered File first, then makes ONE
change (a direct write over the cached pages; a buffered write -- out of place --
after a direct read), so that the harness's live look after the fault (which reads
through the same mount's page cache) sees any page the change should have emptied.
Every request of each kind fails in turn (EIO, then short); the disk must then hold
the state before or after, and what the live mount showed must be what a remount shows.
Planted bugs the harness must catch: a space whose stamp always matches (a direct
write never empties it), and a buffered write whose failure keeps its new pages.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from daxfs.fs.direct import aligned_buffer
from daxfs.pagecache.cache import AddressSpace
from daxfs.testing.blockfaults import check_fs_block_faults
from daxfs.testing.faults import FaultCheckFailed

PAGE = 4096


def setup(fs: Any) -> None:
    with fs.open("/f", "wb", buffering=0) as f:
        f.write(bytes(range(256)) * 64)  # 16 KiB
    with fs.open("/g", "wb", buffering=0) as f:
        f.write(b"g" * 5000)


def direct_write_over_cached_pages(fs: Any) -> None:
    with fs.open("/f", "rb", buffering=0) as f:
        f.pread(4 * PAGE, 0)  # the pages cached
        f.pread(10, PAGE)  # and one re-read (a hit)
    buf = aligned_buffer(2 * PAGE)
    buf[:] = b"D" * (2 * PAGE)
    with fs.open("/f", "rb+", buffering=0, direct=True) as d:
        d.pwrite(buf, PAGE)


def buffered_write_after_a_direct_read(fs: Any) -> None:
    with fs.open("/f", "rb+", buffering=0) as f:
        f.pread(4 * PAGE, 0)
        with fs.open("/f", "rb", buffering=0, direct=True) as d:
            d.preadinto(aligned_buffer(2 * PAGE), 0)
        f.pwrite(b"b" * 6000, 3000)  # partial edge pages: read first, then out of place


OPS = {
    "direct write": direct_write_over_cached_pages,
    "buffered write": buffered_write_after_a_direct_read,
}


#: (operation, request kind, short).  Not ("direct write", "write", short): a direct
#: overwrite cut short tears between logical blocks by design (docs/GUARANTEES.md,
#: "What direct=True promises"), which before-or-after would call wrong.
CASES = [
    (name, kind, short)
    for name in sorted(OPS)
    for kind, short in (("write", False), ("read", False), ("flush", False), ("write", True))
    if not (name == "direct write" and short)
]


@pytest.mark.parametrize(("name", "kind", "short"), CASES)
def test_faults_on_a_bounded_mount_with_direct_and_buffered_files(
    name: str, kind: str, short: bool
) -> None:
    report = check_fs_block_faults(setup, OPS[name], kind, short=short, cache_size="64K")
    assert report.points >= 1, (name, kind)
    assert report.states >= report.points


def test_the_harness_catches_a_stamp_that_always_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    from daxfs.fs import filecache

    monkeypatch.setattr(filecache._Entry, "matches", lambda self: True)
    # (the operation's own "after", looked at through the stale pages, is wrong: the
    # first state checked against it is "neither before nor after")
    with pytest.raises(FaultCheckFailed, match=r"neither before nor after|live"):
        check_fs_block_faults(setup, direct_write_over_cached_pages, "write", cache_size="64K")


def test_the_harness_catches_a_failed_write_that_keeps_its_pages(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Planted: ``write_through``'s error path forgets nothing (the new bytes stay
    cached, clean, though the write failed and the disk has the old ones)."""
    real_write_through = AddressSpace.write_through
    real_forget = AddressSpace._forget_pages
    inside = threading.local()

    def write_through(self: AddressSpace, *args: Any, **kwargs: Any) -> int:
        inside.on = True
        try:
            return real_write_through(self, *args, **kwargs)
        finally:
            inside.on = False

    def forget(self: AddressSpace, first: int, last: int) -> None:
        if not getattr(inside, "on", False):
            real_forget(self, first, last)

    monkeypatch.setattr(AddressSpace, "write_through", write_through)
    monkeypatch.setattr(AddressSpace, "_forget_pages", forget)
    with pytest.raises(FaultCheckFailed, match="live"):
        check_fs_block_faults(setup, buffered_write_after_a_direct_read, "write", cache_size="64K")
