"""Crash at every fence of small overwrites, through the C commit and the Python reference.

The C commit (daxfs/fs/_commit.c) runs on SimulatedPmem in callback mode:
every store, flush and fence it makes goes through the device, so the crash
tests see all of them.  Proof that nothing escapes: a flush left out of the C
path on purpose (``_commit.plant_missing_flush``) makes a crash test fail.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from daxfs.fs import journal
from daxfs.fs.filesystem import FileSystem
from daxfs.testing.crash import CrashCheckFailed, CrashReport, check_operation
from tests.helpers import missing_flush

BLOCK = 4096
DATA = (bytes(range(256)) * 64)[:15000]  # ends inside its fourth block


def base(fs: FileSystem) -> None:
    fs.mkdir("/d")
    with fs.open("/d/file", "wb") as f:
        f.write(DATA)
    with fs.open("/d/other", "wb") as f:
        f.write(b"other file\n")


Step = Callable[[FileSystem], None]


def pwrites(*writes: tuple[bytes, int], native: bool) -> Step:
    """Overwrites of /d/file; with the C commit on, each must have taken it."""

    def op(fs: FileSystem) -> None:
        committer = fs.journal.committer
        assert (committer is not None) == native
        with fs.open("/d/file", "rb+", buffering=0) as f:
            for data, offset in writes:
                f.pwrite(data, offset)
        if committer is not None:
            assert committer.commits == len(writes), "an overwrite missed the C commit"

    return op


CASES: dict[str, tuple[tuple[bytes, int], ...]] = {
    "small": ((b"O" * 100, 4000),),
    "one block": ((b"B" * BLOCK, BLOCK),),
    "across blocks": ((b"X" * 9000, 1000),),
    "growing in the last block": ((b"G" * 300, len(DATA) - 100),),
}


@pytest.fixture(params=[True, False], ids=["C", "reference"])
def native(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    monkeypatch.setattr(journal, "NATIVE_COMMIT", request.param)
    return bool(request.param)


@pytest.mark.parametrize("name", sorted(CASES))
def test_crash_at_every_fence_of_an_overwrite(name: str, native: bool) -> None:
    report: CrashReport = check_operation(
        base, pwrites(*CASES[name], native=native), states_per_fence=6
    )
    assert report.fences == 3
    assert report.before_seen >= 1
    assert report.after_seen >= 1


def planted_op(n: int, writes: tuple[tuple[bytes, int], ...]) -> Step:
    """The overwrites, with the n-th device write of the C commit left unflushed."""
    return missing_flush(n, pwrites(*writes, native=True))


@pytest.mark.usefixtures("unplant")
def test_a_missing_flush_of_the_log_fails_a_crash_test() -> None:
    """The log (the C commit's first write) left in the CPU cache: at the commit
    fence the header is durable and its log is not; a crash then tears the
    transaction."""
    with pytest.raises(CrashCheckFailed):
        check_operation(base, planted_op(1, CASES["across blocks"]), states_per_fence=16)


@pytest.mark.usefixtures("unplant")
def test_a_missing_flush_of_applied_data_fails_a_crash_test() -> None:
    """The data applied in place but not flushed (the third write): applied_seq,
    flushed after it, may reach the media without the data; recovery then
    skips the transaction, and a write that returned is lost."""
    with pytest.raises(CrashCheckFailed, match="once returned"):
        check_operation(base, planted_op(3, CASES["across blocks"]), states_per_fence=16)


def test_the_planted_flush_is_what_fails() -> None:
    """The same check passes with nothing planted (so the failures above are the hook's)."""
    report = check_operation(base, planted_op(0, CASES["across blocks"]), states_per_fence=16)
    assert report.after_seen >= 1


def test_crash_at_every_fence_of_overwrites_that_take_the_record_cache() -> None:
    """Three overwrites of one file in a row: the second and third take the inode record
    the one before wrote (the record cache), not the media's; crash at each of the nine
    fences.  The first two write the bytes already there (so every state between is
    *before*, times aside), the third grows the file inside its last block: a record
    that was not the media's would show in its size or checksum."""
    end = len(DATA)
    writes = ((DATA[:100], 0), (DATA[4000:4100], 4000), (b"3" * 10, end - 5))

    def op(fs: FileSystem) -> None:
        pwrites(*writes, native=True)(fs)
        assert fs.journal.committer is not None
        assert fs.journal.committer.record_hits == 2

    report = check_operation(base, op, states_per_fence=6)
    assert report.fences == 9
    assert report.after_seen >= 1
