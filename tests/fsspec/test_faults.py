"""Fault injection through fsspec: a failing device or allocation at every point of the
front end's calls (daxfs.testing.faults' FaultyPmem and failing_allocations).

For each scenario of tests/fsspec/test_crash.py, and for reads, the n-th
operation of one kind fails (EIO for the device's write, fill, flush, drain and
read; ENOSPC for an allocation of blocks or an inode), for n = 1, 2, ... until
the call runs without reaching it.  Each time:

- the call completes, or raises an OSError with that errno (EROFS once the
  journal failed past its commit point) naming the path inside the image;
- the system goes on (the fault was transient, or the device is replaced): the
  live filesystem is looked at, used once more and unmounted
  (faults.look_and_unmount), and the image mounts, passes fsck and holds one of
  the scenario's allowed states (only the final one if the call returned);
- nothing committed before is lost: a file the call does not touch is intact.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Callable

import pytest

import daxfs
from daxfs.fs.filesystem import FileSystem
from daxfs.fsspec import DaxFileSystem, _filesystem
from daxfs.testing import SimulatedPmem
from daxfs.testing.faults import KINDS, Fault, FaultyPmem, failing_allocations, look_and_unmount

from .test_crash import (
    CP_CHUNK,
    OLD,
    SIZE,
    build,
    content,
    cp_check,
    cp_op,
    cp_setup,
    mv_tree_check,
    mv_tree_op,
    pipe_check,
    pipe_op,
    pipe_setup,
    rm_tree_check,
    rm_tree_op,
    transaction_check,
    transaction_op,
    transaction_setup,
    tree_setup,
)

KEEP = b"committed before the call " * 200  # /keep: no scenario touches it

Setup = Callable[[FileSystem], object]
Op = Callable[[DaxFileSystem], object]
Check = Callable[[FileSystem, bool], None]


def with_keep(setup: Setup) -> Setup:
    def both(fs: FileSystem) -> None:
        setup(fs)
        with fs.open("/keep", "wb") as f:
            f.write(KEEP)

    return both


def fault_everywhere(
    image: bytes,
    over: Callable[[FileSystem], DaxFileSystem],
    op: Op,
    check: Check,
    kind: str,
    *,
    persistent: bool = False,
) -> tuple[int, int]:
    """Fail the n-th ``kind`` operation of ``op`` for n = 1, 2, ... (module docstring);
    return (fault points, how many of them ``op`` raised at)."""
    code = errno.ENOSPC if kind == "alloc" else errno.EIO
    raised = 0
    for n in range(1, 2000):
        where = f"{kind} fault #{n} ({'persistent' if persistent else 'transient'})"
        dev = FaultyPmem(SIZE, image=image)
        fs = daxfs.mount(dev)
        dfs = over(fs)
        armed: contextlib.AbstractContextManager[Fault]
        if kind == "alloc":
            armed = failing_allocations(fs, n, persistent=persistent, error=code)
        else:
            armed = contextlib.nullcontext(dev.arm(kind, n, persistent=persistent, error=code))
        error: OSError | None = None
        with armed as fault:
            try:
                op(dfs)
            except OSError as exc:
                error = exc
            if not persistent:
                dev.disarm()
        returned = error is None
        if error is not None:
            assert error.errno in (code, errno.EROFS), f"{where}: {error!r}"
            assert isinstance(error.filename, str), f"{where}: {error!r} names no path"
            assert error.filename.startswith("/"), f"{where}: {error!r}"
        if not fault.fired:
            dev.disarm()
            fs.unmount()
            return n - 1, raised
        raised += not returned
        look_and_unmount(fs, where)  # the system goes on: look, use, unmount
        dev.disarm()
        state = SimulatedPmem(SIZE, image=dev.image())
        with daxfs.mount(state) as seen:
            check(seen, returned)
            assert content(seen, "/keep") == KEEP, f"{where}: /keep changed"
        report = daxfs.fsck(state)
        assert report.clean, f"{where}: {report}"
    raise AssertionError(f"{kind}: faults still firing after 2000 points")


@pytest.fixture
def cp_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_filesystem, "CHUNK", CP_CHUNK)


SCENARIOS: dict[str, tuple[Setup, Op, Callable[[], Check]]] = {
    "transaction": (transaction_setup, transaction_op, lambda: transaction_check),
    "pipe_file": (pipe_setup, pipe_op, lambda: pipe_check),
    "cp_file": (cp_setup, cp_op, lambda: cp_check(set())),
    "rm_tree": (tree_setup, rm_tree_op, lambda: rm_tree_check),
    "mv_tree": (tree_setup, mv_tree_op, lambda: mv_tree_check),
}


#: the longest loops (many device writes), run by make test-slow only
SLOW = {("cp_file", "write"), ("rm_tree", "write"), ("mv_tree", "write")}


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        pytest.param(name, kind, marks=[pytest.mark.slow] if (name, kind) in SLOW else [])
        for name in sorted(SCENARIOS)
        for kind in KINDS
    ],
)
def test_every_fault_point_of_a_multi_step_call(
    name: str, kind: str, over: Callable[[FileSystem], DaxFileSystem], cp_chunk: None
) -> None:
    setup, op, make_check = SCENARIOS[name]
    points, raised = fault_everywhere(build(with_keep(setup)), over, op, make_check(), kind)
    # every scenario writes and commits; all but rm allocate
    if kind in ("write", "drain") or (kind == "alloc" and name != "rm_tree"):
        assert points >= 1
        assert raised >= 1  # the error reached the caller at least once


@pytest.mark.parametrize("kind", [pytest.param("write", marks=pytest.mark.slow), "drain", "alloc"])
def test_persistent_faults_of_a_transaction(
    kind: str, over: Callable[[FileSystem], DaxFileSystem]
) -> None:
    setup, op, make_check = SCENARIOS["transaction"]
    points, raised = fault_everywhere(
        build(with_keep(setup)), over, op, make_check(), kind, persistent=True
    )
    assert points == raised  # a device that stays broken: the call never succeeds


def reads(dfs: DaxFileSystem) -> None:
    """Every way fsspec reads a file: each reaches file data through the device."""
    assert dfs.cat_file("/f", 100, 5000) == OLD[100:5000]
    with dfs.open("/f", "rb") as f:
        f.seek(7)
        assert f.read(3000) == OLD[7:3007]
        buf = bytearray(2000)
        assert f.readinto(buf) == 2000
    assert dfs.cat_file("/keep") == KEEP


def test_read_faults_reach_the_caller_with_the_path(
    over: Callable[[FileSystem], DaxFileSystem],
) -> None:
    def check(fs: FileSystem, returned: bool) -> None:
        assert content(fs, "/f") == OLD  # a read changes nothing

    points, raised = fault_everywhere(build(with_keep(pipe_setup)), over, reads, check, "read")
    assert points >= 3
    assert raised == points  # every failed read raised: none returned wrong bytes


def test_a_read_eio_names_the_file(over: Callable[[FileSystem], DaxFileSystem]) -> None:
    """Every read that copies file data through the device.  (get_file, cp_file and
    cat_buffer reach it through pinned views of device memory: loads, which the fault
    model never fails, as a DAX load does not return an error either.)"""
    pa = pytest.importorskip("pyarrow")
    dev = FaultyPmem(SIZE, image=build(with_keep(pipe_setup)))
    dfs = over(daxfs.mount(dev))
    dev.arm("read", 1, persistent=True)
    for call in (
        lambda: dfs.cat_file("/f"),
        lambda: dfs.cat_file("/f", 10, 20),
        lambda: dfs.open("/f", "rb").read(),
        lambda: dfs.open("/f", "rb", block_size=10).readinto(bytearray(4000)),
        lambda: dfs.open("/f", "rb").read_buffer(-1),
        lambda: pa.PythonFile(dfs.open("/f", "rb")).read(),
    ):
        with pytest.raises(OSError, match="/f") as info:
            call()
        assert info.value.errno == errno.EIO
        assert info.value.filename == "/f"
    dev.disarm()
    assert dfs.cat_file("/f") == OLD
    for file in dfs.filesystem.open_files():
        file.close()
    dfs.filesystem.unmount()
