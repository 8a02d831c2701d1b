"""Direct overwrites (daxfs/fs/direct.py, ``DirectIO._write_mapped`` and ``touch``).

A synchronous direct write inside ONE written extent, below the end of file,
is one FUA write and no transaction: its data is durable on return, its
mtime and ctime are set in memory (stat shows them) and owed, committed by
fsync, close, sync, any transaction of the inode, or the first overwrite
LAZY_TIMES_SECONDS after the first one owed.  These tests check each of
those, that a crash right after the call returned keeps the data (the times
may be the old ones: Linux's O_DIRECT|O_DSYNC overwrite does not commit
mtime either), that every other write still takes the request path and its
transaction, the range lock against truncate, and the errors.
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Iterator

import pytest

from daxfs.block.device import BlockDevice
from daxfs.fs import direct
from daxfs.fs.direct import DirectIO, aligned_buffer
from daxfs.fs.filesystem import FileSystem
from daxfs.fs.fsck import fsck
from daxfs.fs.layout import BLOCK_SIZE
from daxfs.fs.mount import mkfs, mount
from daxfs.testing.blockfaults import FaultyBlockDevice
from daxfs.testing.simblock import SimulatedBlockDevice

MIB = 1 << 20
SIZE = 16 * MIB


def pattern(n: int, seed: int = 1) -> memoryview:
    buf = aligned_buffer(n)
    buf[:] = bytes((i * 7 + seed) & 0xFF for i in range(n))
    return memoryview(buf)


@pytest.fixture
def disk() -> SimulatedBlockDevice:
    dev = SimulatedBlockDevice(SIZE)
    mkfs(dev)
    return dev


@pytest.fixture
def fs(disk: SimulatedBlockDevice) -> Iterator[FileSystem]:
    with mount(disk) as fs:
        yield fs


def engine(fs: FileSystem) -> DirectIO:
    assert fs.direct is not None
    return fs.direct


def written_file(fs: FileSystem, n: int = 4 * BLOCK_SIZE, seed: int = 1) -> None:
    with fs.open("/f", "wb", buffering=0, direct=True) as f:
        assert f.pwrite(pattern(n, seed), 0) == n


def after_crash(disk: SimulatedBlockDevice) -> Iterator[tuple[bytes, int]]:
    """(content of /f, its mtime) in every crash state of ``disk`` now."""
    for state in disk.crash_states(limit=16, seed=3):
        with mount(state) as fs2, fs2.open("/f", "rb") as g:
            yield g.read(), fs2.stat("/f").st_mtime_ns
        assert fsck(state).clean


def assert_durable_now(disk: SimulatedBlockDevice, expect: bytes) -> None:
    """Every crash state of ``disk`` now holds ``expect`` as /f's content."""
    for content, _ in after_crash(disk):
        assert content == expect, "a crash state lost data of a write that returned"


# -- the fast path and its times ----------------------------------------------------------


def test_an_overwrite_is_one_fua_write_and_no_transaction(
    fs: FileSystem, disk: SimulatedBlockDevice, monkeypatch: pytest.MonkeyPatch
) -> None:
    written_file(fs)
    dio = engine(fs)
    with fs.open("/f", "rb+", buffering=0, direct=True) as f:
        old = f.stat().st_mtime_ns
        assert fs.stat("/f").st_mtime_ns == fs.stat("/f").st_mtime_ns == old  # cached
        monkeypatch.setattr(direct, "now_ns", lambda: old + 12345)
        seq, fast = fs.journal.seq, dio.stats["mapped_writes"]
        new = pattern(2 * BLOCK_SIZE, 9)
        assert f.pwrite(new, BLOCK_SIZE) == 2 * BLOCK_SIZE
        assert fs.journal.seq == seq  # no transaction
        assert dio.stats["mapped_writes"] == fast + 1
        st = f.stat()
        assert (st.st_mtime_ns, st.st_ctime_ns) == (old + 12345, old + 12345)  # in memory
        assert fs.stat("/f").st_mtime_ns == old + 12345  # the path's stat (C) too
        expect = bytes(pattern(4 * BLOCK_SIZE))
        expect = expect[:BLOCK_SIZE] + bytes(new) + expect[3 * BLOCK_SIZE :]
        # durable on return; the times are owed: a crash now shows the old ones
        states = list(after_crash(disk))
        assert states
        assert all(content == expect for content, _ in states)
        assert all(mtime == old for _, mtime in states)
        f.fsync()  # commits them
        assert fs.journal.seq == seq + 1
        assert all(mtime == old + 12345 for _, mtime in after_crash(disk))
        f.fsync()  # nothing owed: no transaction
        assert fs.journal.seq == seq + 1
        assert f.pread(4 * BLOCK_SIZE, 0) == expect
        with fs.open("/f", "rb") as b:  # the cache holds the new bytes
            assert b.read() == expect


def test_the_planted_bug_of_a_write_without_fua_is_caught(
    fs: FileSystem, disk: SimulatedBlockDevice, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check above is not vacuous: the fast path's data write without FUA (nor a
    FLUSH after it) leaves crash states without the data of a write that returned."""
    written_file(fs)
    real = BlockDevice.write

    def no_fua(self: BlockDevice, offset: int, data: object, *, fua: bool = False) -> int:
        return real(self, offset, data, fua=False)  # type: ignore[arg-type]

    monkeypatch.setattr(BlockDevice, "write", no_fua)
    with fs.open("/f", "rb+", buffering=0, direct=True) as f:
        new = pattern(BLOCK_SIZE, 4)
        f.pwrite(new, 0)
        expect = bytes(new) + bytes(pattern(4 * BLOCK_SIZE))[BLOCK_SIZE:]
        with pytest.raises(AssertionError, match="lost data"):
            assert_durable_now(disk, expect)


def test_close_sync_and_a_transaction_of_the_inode_commit_the_owed_times(
    fs: FileSystem, disk: SimulatedBlockDevice, monkeypatch: pytest.MonkeyPatch
) -> None:
    written_file(fs)
    stamps = iter(range(10**18, 10**18 + 100))
    monkeypatch.setattr(direct, "now_ns", lambda: next(stamps))
    # close
    with fs.open("/f", "rb+", buffering=0, direct=True) as f:
        f.pwrite(pattern(BLOCK_SIZE, 2), 0)
        seq = fs.journal.seq
    assert fs.journal.seq == seq + 1
    assert {m for _, m in after_crash(disk)} == {10**18}
    # FileSystem.sync
    with fs.open("/f", "rb+", buffering=0, direct=True) as f:
        f.pwrite(pattern(BLOCK_SIZE, 3), 0)
        fs.sync()
        assert {m for _, m in after_crash(disk)} == {10**18 + 1}
    # any transaction of the inode packs its record from memory: chmod
    with fs.open("/f", "rb+", buffering=0, direct=True) as f:
        f.pwrite(pattern(BLOCK_SIZE, 4), 0)
        fs.chmod("/f", 0o600)
        assert {m for _, m in after_crash(disk)} == {10**18 + 2}
        seq = fs.journal.seq
    # close then commits nothing: the chmod committed the times owed
    assert {m for _, m in after_crash(disk)} == {10**18 + 2}
    assert fs.journal.seq == seq


def test_owed_times_are_committed_by_the_first_overwrite_after_the_interval(
    fs: FileSystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    written_file(fs)
    dio = engine(fs)
    clock = [100.0]
    monkeypatch.setattr(direct.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(direct, "LAZY_TIMES_SECONDS", 1.0)
    with fs.open("/f", "rb+", buffering=0, direct=True) as f:
        seq, commits = fs.journal.seq, dio.stats["times_commits"]
        for step in (0.0, 0.4, 0.4):  # 100.0, 100.4, 100.8: owed since 100.0
            clock[0] += step
            f.pwrite(pattern(BLOCK_SIZE, 5), 0)
        assert fs.journal.seq == seq
        clock[0] += 0.2  # 101.0: one second since the first owed
        f.pwrite(pattern(BLOCK_SIZE, 6), 0)
        assert fs.journal.seq == seq + 1
        assert dio.stats["times_commits"] == commits + 1
        f.pwrite(pattern(BLOCK_SIZE, 7), 0)  # owed again, from 101.0
        assert fs.journal.seq == seq + 1
        monkeypatch.setattr(direct, "LAZY_TIMES_SECONDS", 0.0)  # every overwrite commits
        f.pwrite(pattern(BLOCK_SIZE, 8), 0)
        f.pwrite(pattern(BLOCK_SIZE, 9), 0)
        assert fs.journal.seq == seq + 3


def test_the_request_path_overwrite_owes_its_times_too(fs: FileSystem) -> None:
    """An overwrite across two extents (two bios, a FLUSH) or through the asynchronous
    API completes without a transaction as well."""
    with fs.open("/f", "wb+", buffering=0, direct=True) as f:
        f.pwrite(pattern(BLOCK_SIZE), 0)
        f.pwrite(pattern(BLOCK_SIZE), 2 * BLOCK_SIZE)
        f.pwrite(pattern(BLOCK_SIZE), BLOCK_SIZE)  # three extents (allocated apart)
        if len(list(fs.maps.extents(fs.store, f.inode, 0))) < 2:
            pytest.skip("the allocator merged the extents")
        dio = engine(fs)
        seq, fast = fs.journal.seq, dio.stats["mapped_writes"]
        assert f.pwrite(pattern(3 * BLOCK_SIZE, 3), 0) == 3 * BLOCK_SIZE
        assert f.submit_write(0, pattern(BLOCK_SIZE, 4)).result(10) == BLOCK_SIZE
        assert dio.stats["mapped_writes"] == fast + 0  # neither took the fast path
        assert fs.journal.seq == seq
        expect = bytes(pattern(BLOCK_SIZE, 4)) + bytes(pattern(3 * BLOCK_SIZE, 3))[BLOCK_SIZE:]
        assert f.pread(3 * BLOCK_SIZE, 0) == expect


@pytest.mark.parametrize("case", ["hole", "unwritten", "past_eof", "append", "unaligned_end"])
def test_every_other_write_takes_the_request_path_and_commits(fs: FileSystem, case: str) -> None:
    with fs.open("/f", "wb+", buffering=0, direct=True) as f:
        f.pwrite(pattern(2 * BLOCK_SIZE), 0)
        if case == "hole":
            f.truncate(8 * BLOCK_SIZE)
        if case == "unwritten":
            f.fallocate(2 * BLOCK_SIZE, 2 * BLOCK_SIZE, 0)
        if case == "unaligned_end":
            f.truncate(BLOCK_SIZE + 512)
        dio = engine(fs)
        seq, fast = fs.journal.seq, dio.stats["mapped_writes"]
        pos = {"hole": 4, "unwritten": 2, "past_eof": 2, "append": 0, "unaligned_end": 1}[case]
        if case == "append":
            with fs.open("/f", "ab", buffering=0, direct=True) as a:
                assert a.write(pattern(BLOCK_SIZE, 5)) == BLOCK_SIZE
            pos = 2
        else:
            assert f.pwrite(pattern(BLOCK_SIZE, 5), pos * BLOCK_SIZE) == BLOCK_SIZE
        assert dio.stats["mapped_writes"] == fast
        assert fs.journal.seq > seq  # the completion's transaction (conversion or size)
        assert f.pread(BLOCK_SIZE, pos * BLOCK_SIZE) == bytes(pattern(BLOCK_SIZE, 5))
        assert f.stat().st_size >= (pos + 1) * BLOCK_SIZE


# -- the range lock and errors ------------------------------------------------------------


def test_truncate_waits_for_a_fast_overwrite_in_flight() -> None:
    """A fast overwrite held in the device holds its range exclusively: a truncate
    fails with EAGAIN (nowait) and EBUSY (layout_timeout), a direct read of the range
    waits; once released, the write completes and both go."""
    from tests.fs.direct_devices import HeldBlockDevice

    disk = SimulatedBlockDevice(SIZE)
    mkfs(disk)
    dev = HeldBlockDevice(disk)
    with mount(dev, layout_timeout=0.2) as fs, fs.open("/f", "wb+", buffering=0, direct=True) as f:
        f.pwrite(pattern(4 * BLOCK_SIZE, 6), 0)
        new = pattern(2 * BLOCK_SIZE, 8)
        dev.hold(new.obj)
        done: list[int] = []
        writer = threading.Thread(target=lambda: done.append(f.pwrite(new, BLOCK_SIZE)))
        writer.start()
        dev.wait_held(1)
        with pytest.raises(OSError, match="in progress") as again:
            f.truncate(BLOCK_SIZE, nowait=True)
        assert again.value.errno == errno.EAGAIN
        with pytest.raises(OSError, match="in progress") as busy:
            f.truncate(2 * BLOCK_SIZE)
        assert busy.value.errno == errno.EBUSY
        read: list[bytes] = []
        reader = threading.Thread(target=lambda: read.append(f.pread(BLOCK_SIZE, BLOCK_SIZE)))
        reader.start()
        reader.join(0.2)
        assert reader.is_alive()  # waits for the write's range
        dev.release()
        writer.join(10)
        reader.join(10)
        assert done == [2 * BLOCK_SIZE]
        assert read == [bytes(new[:BLOCK_SIZE])]
        assert engine(fs).stats["mapped_writes"] >= 1
        f.truncate(BLOCK_SIZE)
        assert f.stat().st_size == BLOCK_SIZE
    assert not dev.problems


@pytest.mark.parametrize("short", [False, True])
def test_a_failed_fast_overwrite_reaches_the_caller_and_touches_nothing(short: bool) -> None:
    disk = SimulatedBlockDevice(SIZE)
    mkfs(disk)
    faulty = FaultyBlockDevice(disk)
    with (
        mount(faulty, layout_timeout=0.2) as fs,
        fs.open("/f", "wb+", buffering=0, direct=True) as f,
    ):
        f.pwrite(pattern(4 * BLOCK_SIZE, 1), 0)
        f.fsync()
        dio = engine(fs)
        mtime = f.stat().st_mtime_ns
        fast, failed, seq = dio.stats["mapped_writes"], dio.stats["failed"], fs.journal.seq
        faulty.arm("write", 1, short=short)
        with pytest.raises(OSError, match=r"rror|short") as info:
            f.pwrite(pattern(4 * BLOCK_SIZE, 2), 0)
        faulty.disarm()
        assert info.value.errno == errno.EIO
        assert "/f" in str(info.value)
        assert dio.stats["mapped_writes"] == fast + 1
        assert dio.stats["failed"] == failed + 1
        assert f.stat().st_mtime_ns == mtime  # not touched
        f.fsync()
        assert fs.journal.seq == seq  # nothing owed
        with fs.open("/f", "rb") as b:  # the cache re-read what the disk holds
            assert f.pread(4 * BLOCK_SIZE, 0) == b.read()
        f.truncate(BLOCK_SIZE, nowait=True)  # the range lock is free again
    assert fsck(disk).clean


def test_a_journal_failure_refuses_overwrites_before_any_io(
    fs: FileSystem, disk: SimulatedBlockDevice, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a journal failure an overwrite fails with EROFS and writes nothing, though
    it would need no transaction."""
    written_file(fs)
    with fs.open("/f", "rb+", buffering=0, direct=True) as f:
        monkeypatch.setattr(fs.journal, "failed", "planted")
        with pytest.raises(OSError, match="read-only") as info:
            f.pwrite(pattern(BLOCK_SIZE, 2), 0)
        assert info.value.errno == errno.EROFS
        assert "/f" in str(info.value)
        assert engine(fs).stats["mapped_writes"] == 0
        monkeypatch.setattr(fs.journal, "failed", None)
        assert f.pread(4 * BLOCK_SIZE, 0) == bytes(pattern(4 * BLOCK_SIZE))


# -- the cache's copy beside the write (DirectIO._cache_copy) -----------------------------


def test_the_cache_copy_runs_beside_the_write_and_falls_back(
    fs: FileSystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    from daxfs.fs import _copy

    written_file(fs)
    dio = engine(fs)
    cache = dio.cache
    slow: list[int] = []  # invalidate calls with the data: the copy after the write
    real = cache.invalidate

    def invalidate(offset: int, length: int, data: object = None) -> None:
        if data is not None:
            slow.append(length)
        real(offset, length, data)  # type: ignore[arg-type]

    monkeypatch.setattr(cache, "invalidate", invalidate)

    def overwrite_and_check(seed: int) -> None:
        new = pattern(4 * BLOCK_SIZE, seed)
        with fs.open("/f", "rb+", buffering=0, direct=True) as f:
            assert f.pwrite(new, 0) == 4 * BLOCK_SIZE
        with fs.open("/f", "rb") as b:  # through the cache
            assert b.read() == bytes(new)

    overwrite_and_check(2)
    copier = dio._copier
    assert copier is not None
    jobs = copier.stats["jobs"]
    overwrite_and_check(3)
    assert copier.stats["jobs"] == jobs + 1
    assert slow == []
    _copy.plant_error(errno.EIO)  # the copy fails: the cache is copied the slow way
    overwrite_and_check(4)
    assert not copier.pending
    assert slow == [4 * BLOCK_SIZE]
    with dio._copier_lock:  # another thread's copy pending: the slow way too
        overwrite_and_check(5)
    assert slow == [4 * BLOCK_SIZE] * 2
    assert copier.stats["jobs"] == jobs + 2


def test_a_bounded_cache_takes_the_written_bytes_without_the_copier(
    disk: SimulatedBlockDevice,
) -> None:
    with mount(disk, cache_size="64K") as fs:
        written_file(fs, 32 * BLOCK_SIZE)
        with fs.open("/f", "rb") as b:
            b.read()  # the file's pages in the page cache
        new = pattern(8 * BLOCK_SIZE, 6)
        with fs.open("/f", "rb+", buffering=0, direct=True) as f:
            assert f.pwrite(new, 4 * BLOCK_SIZE) == 8 * BLOCK_SIZE
        assert engine(fs)._copier is None
        assert engine(fs).stats["mapped_writes"] >= 1
        with fs.open("/f", "rb") as b:
            b.seek(4 * BLOCK_SIZE)
            assert b.read(8 * BLOCK_SIZE) == bytes(new)


def test_times_another_transaction_committed_are_owed_no_more(
    fs: FileSystem, disk: SimulatedBlockDevice, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An overwrite owes its times; a chmod of the inode commits them (its record is
    packed from memory).  The owed entry is then stale: fsync, sync and close commit
    nothing more (no transaction, the entry dropped), and the first overwrite after
    the interval owes its times anew instead of committing at once (the interval
    counts from it, not from the times the chmod committed).  After a crash at each
    step the media has the times last committed, never older ones."""
    written_file(fs)
    dio = engine(fs)
    clock = [100.0]
    monkeypatch.setattr(direct.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(direct, "LAZY_TIMES_SECONDS", 1.0)
    stamps = iter(range(10**18, 10**18 + 100))
    monkeypatch.setattr(direct, "now_ns", lambda: next(stamps))
    with fs.open("/f", "rb+", buffering=0, direct=True) as f:
        ino = f.inode.ino  # type: ignore[attr-defined]
        f.pwrite(pattern(BLOCK_SIZE, 2), 0)  # owed since 100.0, mtime 10**18
        assert ino in dio._owed
        clock[0] = 100.5
        fs.chmod("/f", 0o600)  # commits the record: the times with it
        assert {m for _, m in after_crash(disk)} == {10**18}
        seq, commits = fs.journal.seq, dio.stats["times_commits"]
        f.fsync()
        assert (fs.journal.seq, dio.stats["times_commits"]) == (seq, commits)
        assert ino not in dio._owed
        clock[0] = 101.2  # past the interval counted from the stale entry's 100.0
        f.pwrite(pattern(BLOCK_SIZE, 3), 0)  # mtime 10**18 + 1, owed anew from 101.2
        assert ino in dio._owed
        assert fs.journal.seq == seq
        fs.chmod("/f", 0o640)  # commits 10**18 + 1
        clock[0] = 102.3  # the entry of 101.2 is stale and old: owed anew, no commit
        f.pwrite(pattern(BLOCK_SIZE, 4), 0)  # mtime 10**18 + 2
        seq = fs.journal.seq
        assert dio._owed[ino][1] == 102.3
        assert {m for _, m in after_crash(disk)} == {10**18 + 1}
        clock[0] = 103.3  # one second since 102.3: this overwrite commits
        f.pwrite(pattern(BLOCK_SIZE, 5), 0)  # mtime 10**18 + 3
        assert fs.journal.seq == seq + 1
        assert {m for _, m in after_crash(disk)} == {10**18 + 3}
        fs.sync()  # nothing owed: no transaction
        assert fs.journal.seq == seq + 1
    assert fs.journal.seq == seq + 1  # close: nothing owed either
    assert ino not in dio._owed
