"""Fault injection (daxfs.testing.faults): the injector fires where asked, the loop
catches what it must, and the filesystem survives every fault of the crash suite's
operations (a representative subset by default, all of them in the slow run)."""

from __future__ import annotations

import contextlib
import errno

import pytest

import daxfs
from daxfs.errors import NoSpace
from daxfs.fs.filesystem import FileSystem
from daxfs.fs.fsck import fsck
from daxfs.testing.faults import (
    DEVICE_KINDS,
    KINDS,
    FaultCheckFailed,
    FaultyPmem,
    FlakyPmem,
    build_image,
    check_faults,
    check_mount_faults,
    failing_allocations,
    main,
    recovery_image,
)
from tests.crash.test_fs_ops import OPERATIONS, base

SIZE = 16 << 20


# -- the injector -----------------------------------------------------------------------


def call(dev: FaultyPmem, kind: str) -> None:
    if kind == "write":
        dev.write(0, b"x" * 100)
    elif kind == "fill":
        dev.fill(0, 100, 7)
    elif kind == "flush":
        dev.flush(0, 100)
    elif kind == "drain":
        dev.drain()
    else:
        dev.read(0, 10)


@pytest.mark.parametrize("kind", DEVICE_KINDS)
def test_transient_fault_fires_at_the_nth_operation_only(kind: str) -> None:
    dev = FaultyPmem(4096)
    fault = dev.arm(kind, 3)
    call(dev, kind)
    call(dev, kind)
    with pytest.raises(OSError, match=f"{kind} #3") as info:
        call(dev, kind)
    assert info.value.errno == errno.EIO
    call(dev, kind)  # transient: the 4th works
    assert (fault.seen, fault.fired) == (4, 1)


@pytest.mark.parametrize("kind", DEVICE_KINDS)
def test_persistent_fault_keeps_failing_until_disarmed(kind: str) -> None:
    dev = FaultyPmem(4096)
    dev.arm(kind, 1, persistent=True, error=errno.ENOSPC)
    for _ in range(3):
        with pytest.raises(OSError, match=f"{kind} #") as info:
            call(dev, kind)
        assert info.value.errno == errno.ENOSPC
    dev.disarm()
    call(dev, kind)


def test_a_failed_write_stores_nothing_and_its_own_fence_is_not_counted() -> None:
    dev = FaultyPmem(4096)
    fault = dev.arm("drain", 1)
    dev.write(0, b"abc")  # write = store + flush + fence: one write, no drain counted
    assert fault.seen == 0
    dev.arm("write", 1)
    with pytest.raises(OSError, match="write #1"):
        dev.write(64, b"zzz")
    assert dev.read(64, 3) == bytes(3)
    assert dev.read(0, 3) == b"abc"


def test_flaky_pmem_fails_the_next_fence_once() -> None:
    dev = FlakyPmem(4096)
    dev.fail_next = True
    assert dev.fail_next
    with pytest.raises(OSError, match="simulated device error at a fence"):
        dev.drain()
    assert not dev.fail_next
    dev.drain()


def test_failing_allocations_counts_blocks_and_inodes_and_restores() -> None:
    dev = FaultyPmem(SIZE)
    daxfs.mkfs(dev)
    with daxfs.mount(dev) as fs:
        with failing_allocations(fs, 2) as fault, pytest.raises(NoSpace, match="alloc #2"):
            fs.mkdir("/a")  # its inode, then the root directory's first leaf: fails
        assert (fault.seen, fault.fired) == (2, 1)
        assert "alloc" not in vars(fs.alloc)  # the real methods are back
        assert "allocate" not in vars(fs.itable)
        assert not fs.exists("/a")
        with failing_allocations(fs, 1000) as counter:
            fs.mkdir("/a")
            fs.mkdir("/b")  # an inode only: the leaf has room
        assert counter.seen == 3
        assert sorted(fs.listdir("/")) == ["a", "b"]


# -- the loop catches planted bugs --------------------------------------------------------


def test_loop_reports_a_non_oserror() -> None:
    def op(fs: FileSystem) -> None:
        try:
            fs.mkdir("/d/new")
        except OSError as exc:
            raise RuntimeError("an error path that replaces the error") from exc

    with pytest.raises(FaultCheckFailed, match="raised RuntimeError"):
        check_faults(base, op, "write")


def test_loop_reports_a_non_atomic_operation() -> None:
    def op(fs: FileSystem) -> None:
        fs.mkdir("/one")
        fs.mkdir("/two")

    with pytest.raises(FaultCheckFailed, match="neither before nor after"):
        check_faults(base, op, "drain")


def test_loop_reports_an_error_that_is_swallowed_and_lost() -> None:
    """An operation that reports success although its change did not happen."""

    def op(fs: FileSystem) -> None:
        with contextlib.suppress(OSError):
            fs.mkdir("/new")

    with pytest.raises(FaultCheckFailed, match="neither after"):
        check_faults(base, op, "drain")


def test_loop_ends_when_no_fault_fires() -> None:
    report = check_faults(base, lambda fs: fs.stat("/d/file"), "write")
    assert report.points == 0


# -- the filesystem survives ------------------------------------------------------------------

#: cheap and covering: a create, a data write into new blocks and a journaled one, a
#: shrink of a fragmented file, a punch (zeroing and freeing); all of them in the slow run
DEFAULT = ["create", "write extending", "truncate fragmented", "punch hole"]


def big_file(fs: FileSystem) -> None:
    base(fs)
    with fs.open("/big", "wb", buffering=0) as f:
        f.write(b"b" * (400 << 10))


def unaligned_cow(fs: FileSystem) -> None:
    """Copy-on-write of 300 KiB at byte 100: the head of the first block is copied (read)."""
    with fs.open("/big", "rb+", buffering=0) as f:
        f.pwrite(b"U" * (300 << 10), 100)


EXTRA = {"unaligned copy-on-write": (big_file, unaligned_cow)}


@pytest.mark.parametrize("kind", ["read", "fill", "alloc"])
def test_every_fault_point_of_a_copy_on_write(kind: str) -> None:
    setup, op = EXTRA["unaligned copy-on-write"]
    report = check_faults(setup, op, kind, states=1)
    assert report.raised + report.completed == report.points


@pytest.mark.parametrize("name", DEFAULT)
@pytest.mark.parametrize("kind", KINDS)
def test_every_fault_point_leaves_a_good_image(name: str, kind: str) -> None:
    setup, op = OPERATIONS[name]
    report = check_faults(setup, op, kind, states=1)
    assert report.raised + report.completed == report.points


@pytest.mark.parametrize(
    ("kind", "name"), [("write", "rename over existing"), ("drain", "create"), ("alloc", "create")]
)
def test_persistent_faults_leave_a_good_image(kind: str, name: str) -> None:
    setup, op = OPERATIONS[name]
    report = check_faults(setup, op, kind, persistent=True, states=1)
    assert report.points >= 1


@pytest.mark.parametrize(
    ("kind", "name"),
    [
        ("write", "create"),
        ("fill", "write extending"),  # zeroing the tail of a new block
        ("drain", "create"),
        ("read", "unaligned copy-on-write"),  # copying the untouched head of a block
        ("alloc", "create"),
    ],
)
def test_the_default_subset_is_not_vacuous(kind: str, name: str) -> None:
    """Each kind of fault fires inside the operations the default run uses."""
    setup, op = EXTRA.get(name) or OPERATIONS[name]
    dev = FaultyPmem(SIZE, image=build_image(setup))
    with daxfs.mount(dev) as fs:
        if kind == "alloc":
            with failing_allocations(fs, 1) as fault, pytest.raises(OSError, match="alloc #1"):
                op(fs)
        else:
            fault = dev.arm(kind, 1)
            with pytest.raises(OSError, match=f"{kind} #1"):
                op(fs)
            dev.disarm()
    assert fault.fired == 1


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(OPERATIONS))
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("persistent", [False, True])
def test_every_fault_point_of_every_operation(name: str, kind: str, persistent: bool) -> None:
    setup, op = OPERATIONS[name]
    report = check_faults(setup, op, kind, persistent=persistent)
    assert report.raised + report.completed == report.points


def test_command_line_prints_the_figures(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--only", "mkdir", "--kinds", "drain", "--modes", "transient", "--no-mount"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "$ python -m daxfs.testing.faults --only mkdir" in out
    assert "fault points tried: 3 (3 raised an OSError" in out


# -- faults inside a mount that recovers ------------------------------------------------------


@pytest.fixture(scope="module")
def recovering() -> bytes:
    return recovery_image()


def test_recovery_image_has_work_for_mount(recovering: bytes) -> None:
    """A transaction to replay, an orphan to reap, a batched truncate to finish."""
    dev = FaultyPmem(len(recovering), image=recovering)
    fault = dev.arm("drain", 10**9)
    with daxfs.mount(dev) as fs:
        assert sorted(fs.listdir("/")) == ["a", "frag"]
        assert fs.stat("/frag").st_blocks < 100  # the truncate finished (it held 2432)
    assert fault.seen > 3
    assert fsck(dev).clean


@pytest.mark.parametrize("kind", ["drain", "read"])  # write too, in the slow run
def test_every_fault_point_of_a_recovering_mount(recovering: bytes, kind: str) -> None:
    report = check_mount_faults(kind, image=recovering, states=1)
    assert report.points >= 1
    assert report.raised + report.completed == report.points


def test_mount_loop_reports_a_non_oserror(
    recovering: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    from daxfs.fs.journal import Journal

    real = Journal.recover

    def recover(self: Journal) -> int:
        try:
            return real(self)
        except OSError as exc:
            raise RuntimeError("recovery replaced the error") from exc

    monkeypatch.setattr(Journal, "recover", recover)
    with pytest.raises(FaultCheckFailed, match="raised RuntimeError"):
        check_mount_faults("write", image=recovering, states=1)


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("persistent", [False, True])
def test_every_fault_point_of_a_recovering_mount_slow(kind: str, persistent: bool) -> None:
    report = check_mount_faults(kind, persistent=persistent)
    assert report.raised + report.completed == report.points


@pytest.mark.parametrize(
    "name",
    [
        "setxattr long value first",
        "setxattr replace long by long",
        "unlink with xattrs",
        "setxattr inline spills to a block",
        "removexattr",  # what is left moves inline, the block is freed
        "write converts the map beside inline xattrs",
    ],
)
@pytest.mark.parametrize("kind", KINDS)
def test_every_fault_point_of_xattr_operations(name: str, kind: str) -> None:
    """Extended attributes: a failed device operation or allocation inside setxattr
    (value blocks, the xattr block, the feature bit) or an unlink that frees them."""
    setup, op = OPERATIONS[name]
    report = check_faults(setup, op, kind, states=1)
    assert report.raised + report.completed == report.points
    allocates = name.startswith(("setxattr", "write"))  # an unlink or a removal only frees
    if kind in ("write", "drain") or (kind == "alloc" and allocates):
        assert report.raised >= 1
