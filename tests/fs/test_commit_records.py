"""The C commit of any transaction's records (``Committer.commit``) against the reference.

Transaction.commit gathers its records in Python (seals, changed lines, inode
records, superblock counters) and hands steps 2-7 to C.  Proved here:

* the same namespace and data workload through both paths makes the same device
  operations (write, flush, drain) with the same bytes in the same order, and
  the same image, on a recording device and in native mode on a PmemDevice;
* bad records raise EINVAL and write nothing; a log too large returns False
  (the reference raises TransactionTooLarge);
* a device failure at each fence is handled as the reference handles it;
* crash at every fence of creates, mkdir, unlink and rename through the C path
  and through the reference; a flush left out of the C path on purpose fails a
  crash test (the simulator sees every store the C path makes).
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from pathlib import Path

import pytest

import daxfs
from daxfs.errors import InvalidArgument, IOFailure, ReadOnly
from daxfs.fs import journal
from daxfs.fs.filesystem import FileSystem
from daxfs.fs.journal import TransactionTooLarge
from daxfs.testing import SimulatedPmem
from daxfs.testing.crash import CrashCheckFailed, check_operation
from daxfs.testing.faults import FaultyPmem
from tests.fs.test_commit import RecordingPmem, run
from tests.helpers import SIZE, formatted, missing_flush


def workload(fs: FileSystem) -> None:
    """Creates (many: leaf splits), mkdir, writes into new blocks, overwrites,
    unlink, rename, symlink, truncate: transactions of every shape."""
    fs.makedirs("/a/b")
    for i in range(300):
        fs.open(f"/a/f{i:03d}", "xb").close()
    with fs.open("/a/data", "wb", buffering=0) as f:
        f.write(b"d" * 50_000)
        f.pwrite(b"o" * 100, 10)
    for i in range(0, 300, 7):
        fs.unlink(f"/a/f{i:03d}")
    fs.rename("/a/f001", "/a/b/moved")
    fs.symlink("/a/data", "/a/ln")
    fs.truncate("/a/data", 5000)
    fs.open("/a/b/x", "xb").close()


@pytest.mark.usefixtures("frozen")
def test_both_paths_make_the_same_device_operations_and_image() -> None:
    image = formatted().read(0, SIZE)
    logs: dict[bool, list[tuple[object, ...]]] = {}
    images: dict[bool, bytes] = {}
    commits: dict[bool, int] = {}
    for native in (True, False):
        dev = RecordingPmem(SIZE, image=image)
        dev.log = []
        commits[native] = run(dev, native, workload).native_commits
        logs[native] = dev.log
        images[native] = dev.read(0, SIZE)
        dev.close()
    assert commits[True] > 300
    assert commits[False] == 0
    assert len(logs[True]) > 300 * 7
    assert logs[True] == logs[False]
    assert images[True] == images[False]
    assert daxfs.fsck(SimulatedPmem(SIZE, image=images[True])).clean


@pytest.mark.usefixtures("frozen")
@pytest.mark.parametrize("persist", ["cpu", "msync"])
def test_native_mode_writes_the_image_the_reference_writes(shm_path: Path, persist: str) -> None:
    """Flushed by the C code itself (clwb, ...), or msync'ed (the log in one msync,
    as the reference's one write of it): the image the reference writes."""
    image = formatted().read(0, SIZE)
    results = {}
    for native in (True, False):
        shm_path.write_bytes(image)
        commits = run(str(shm_path), native, workload, persist).native_commits
        assert (commits > 300) if native else commits == 0
        results[native] = shm_path.read_bytes()
    assert results[True] == results[False]
    with daxfs.mount(SimulatedPmem(SIZE, image=results[True])) as fs:
        assert fs.readlink("/a/ln") == "/a/data"
        assert fs.exists("/a/b/moved")


def test_bad_records_raise_einval_and_write_nothing() -> None:
    dev = formatted()
    fs = daxfs.mount(dev)
    try:
        committer = fs.journal.committer
        assert committer is not None
        jstart = fs.journal.header_offset
        jend = fs.journal.log_offset + fs.journal.capacity
        seq = fs.journal.seq + 1
        native_before = fs.journal.native_commits
        before = dev.read(0, SIZE)
        good = jend + (64 << 12)  # past the journal, inside the filesystem
        assert good + fs.journal.capacity < SIZE
        for seq_, records in [
            (0, [(good, b"x")]),  # seq 0
            (1 << 63, [(good, b"x")]),  # seq at the limit
            (seq, [(good, b"x"), (SIZE, b"x")]),  # past the end
            (seq, [(SIZE - 1, b"xy")]),  # straddling the end
            (seq, [(jstart + 64, b"x")]),  # into the journal
            (seq, [(jend - 1, b"xy")]),  # the journal's last byte
            (seq, [(jstart - 1, b"xy")]),  # the journal's first byte
            (seq, [(-1, b"x")]),  # negative
            (seq, [(1 << 70, b"x")]),  # does not fit
        ]:
            with pytest.raises(InvalidArgument) as info:
                committer.commit(seq_, records)
            assert info.value.errno == errno.EINVAL
        for records in [[(good, 5)], [(good,)], [[good, b"x"]], ((good, b"x"),), [("1", b"x")]]:
            with pytest.raises(TypeError):
                committer.commit(seq, records)  # type: ignore[arg-type]
        # too large for the log, and no records: False, nothing written
        quarter = fs.journal.capacity // 4
        big = [(good + i * quarter, bytes(quarter)) for i in range(4)]
        assert committer.commit(seq, big) is False
        assert committer.commit(seq, []) is False
        many = [(good + 8 * i, b"x") for i in range(4097)]  # more than MAX_RECORDS ...
        assert fs.journal.capacity >= 4097 * 24  # ... in a log that would fit
        assert committer.commit(seq, many) is False
        assert dev.read(0, SIZE) == before
        assert fs.journal.seq == seq - 1
        # the reference raises for the transaction too large
        with pytest.raises(TransactionTooLarge), fs.journal.begin() as tx:
            for offset, data in big:
                tx.log_data(offset, data)
        assert dev.read(0, SIZE) == before
        fs.open("/after", "xb").close()  # the journal goes on
        assert fs.journal.native_commits == native_before + 1
    finally:
        fs.unmount()
        dev.close()


@pytest.mark.parametrize(("nth", "committed"), [(1, False), (2, False), (3, True)])
def test_a_device_failure_in_the_c_commit_is_handled_as_in_the_reference(
    nth: int, committed: bool
) -> None:
    """The n-th fence of a create's C commit fails (EIO): before the commit point the
    create fails and nothing changes; after it, it fails, the filesystem turns
    read-only, and the remounted image holds the file."""
    base = formatted()
    with daxfs.mount(base) as fs:
        fs.mkdir("/d")
    dev = FaultyPmem(SIZE, image=base.read(0, SIZE))
    fs = daxfs.mount(dev)
    assert fs.journal.committer is not None
    fs.stat("/d")
    dev.arm("drain", nth)
    with pytest.raises(OSError, match="/d/new") as info:
        fs.open("/d/new", "xb")
    dev.disarm()
    assert info.value.errno == errno.EIO
    assert info.value.filename == "/d/new"
    assert fs.journal.active is None
    if committed:
        assert isinstance(info.value, IOFailure)
        assert fs.journal.failed is not None
        with pytest.raises(ReadOnly):
            fs.mkdir("/e")
    else:
        assert fs.journal.failed is None
        assert not fs.exists("/d/new")
        fs.open("/d/other", "xb").close()  # the filesystem goes on
    for file in fs.open_files():
        file.close()
    fs.unmount()
    again = SimulatedPmem(SIZE, image=dev.image())
    with daxfs.mount(again) as fs2:
        assert fs2.exists("/d/new") == committed
        assert fs2.exists("/d/other") == (not committed)
    assert daxfs.fsck(again).clean
    dev.close()


# -- crash at every fence, both paths; a planted missing flush is caught ----------------


def base(fs: FileSystem) -> None:
    fs.mkdir("/d")
    for i in range(40):
        fs.open(f"/d/f{i:02d}", "xb").close()
    with fs.open("/d/file", "wb") as f:
        f.write(b"x" * 9000)


OPS: dict[str, Callable[[FileSystem], None]] = {
    "create": lambda fs: fs.open("/d/new", "xb").close(),
    "mkdir": lambda fs: fs.mkdir("/d/sub"),
    "unlink": lambda fs: fs.unlink("/d/f07"),
    "rename": lambda fs: fs.rename("/d/f03", "/moved"),
}


@pytest.fixture(params=[True, False], ids=["C", "reference"])
def native(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    monkeypatch.setattr(journal, "NATIVE_COMMIT", request.param)
    return bool(request.param)


def counted(op: Callable[[FileSystem], None], native: bool) -> Callable[[FileSystem], None]:
    def run_op(fs: FileSystem) -> None:
        before = fs.journal.native_commits
        op(fs)
        assert (fs.journal.native_commits > before) == native

    return run_op


@pytest.mark.parametrize("name", sorted(OPS))
def test_crash_at_every_fence(name: str, native: bool) -> None:
    report = check_operation(base, counted(OPS[name], native), states_per_fence=4)
    assert report.fences >= 3
    assert report.before_seen >= 1
    assert report.after_seen >= 1


def planted(n: int) -> Callable[[FileSystem], None]:
    """A create whose C commit leaves its n-th device write unflushed."""

    def op(fs: FileSystem) -> None:
        assert fs.journal.committer is not None
        fs.open("/d/new", "xb").close()

    return missing_flush(n, op)


@pytest.mark.usefixtures("unplant")
def test_a_missing_flush_of_the_log_fails_a_crash_test() -> None:
    """The log left in the CPU cache: at the commit fence the header is durable and
    its log is not; a crash then tears the transaction."""
    with pytest.raises(CrashCheckFailed):
        check_operation(base, planted(1), states_per_fence=16)


@pytest.mark.usefixtures("unplant")
def test_a_missing_flush_of_an_applied_record_fails_a_crash_test() -> None:
    """The first record applied in place but not flushed (the third write): applied_seq
    may reach the media without it; recovery skips the transaction, and a create
    that returned is lost (or half there)."""
    with pytest.raises(CrashCheckFailed):
        check_operation(base, planted(3), states_per_fence=16)


def test_the_planted_flush_is_what_fails() -> None:
    report = check_operation(base, planted(0), states_per_fence=16)
    assert report.after_seen >= 1
