"""What a power failure leaves of the front end's multi-step operations, at every fence.

daxfs's own operations are each atomic (tests/crash/); a few fsspec calls are
several of them, and promise only what daxfs.fsspec documents:

- a file written inside ``fs.transaction`` holds its old bytes until the one
  rename of the commit, then the new ones (a temporary name may be left);
- ``pipe_file`` is an O_TRUNC open and one write: old, empty, or new;
- ``cp_file`` makes the copy and writes it chunk by chunk: no copy, or a prefix
  of the source ending at a chunk boundary, or all of it;
- ``rm(recursive=True)`` removes one name per transaction: what is left of the
  tree is intact; ``mv`` of a tree is one rename: here or there, whole.

Each runs on a SimulatedPmem whose power fails at its n-th fence, for every n;
each crash state (seeded) must mount, pass fsck and hold one of those; once the
call returned, only the final state will do.  tests/fsspec/test_faults.py runs
the same scenarios with device faults and failed allocations instead.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

import daxfs
from daxfs.fs.filesystem import FileSystem
from daxfs.fsspec import DaxFileSystem, _filesystem
from daxfs.fsspec._files import TMP_SUFFIX
from daxfs.testing import SimulatedPmem
from daxfs.testing.blockcrash import abandon
from daxfs.testing.simulated import PowerFailure

SIZE = 16 << 20
OLD = b"old " * 3000  # 12,000 bytes: three blocks
NEW = bytes(range(251)) * 80  # 20,080 bytes: five blocks
STATES = 3


def build(setup: Callable[[FileSystem], object]) -> bytes:
    base = SimulatedPmem(SIZE)
    daxfs.mkfs(base)
    with daxfs.mount(base) as fs:
        setup(fs)
    return base.read(0, SIZE)


def crash_everywhere(
    image: bytes,
    over: Callable[[FileSystem], DaxFileSystem],
    op: Callable[[DaxFileSystem], object],
    check: Callable[[FileSystem, bool], None],
) -> int:
    """Run ``op`` with the power failing at fence 1, 2, ...; ``check(fs, returned)`` each
    crash state, mounted; return how many fences ``op`` issues."""
    for fence in range(1, 500):
        dev = SimulatedPmem(SIZE, image=image)
        fs = daxfs.mount(dev)
        dfs = over(fs)
        dev.schedule_power_failure(fence)
        try:
            op(dfs)
        except PowerFailure:
            returned = False
        else:
            returned = True
        abandon(fs)
        for state in dev.crash_states(limit=STATES, seed=fence):
            with daxfs.mount(state) as seen:  # recovery replays the journal
                check(seen, returned)
            report = daxfs.fsck(state)
            assert report.clean, f"fence {fence}: {report}"
        if returned:
            return fence - 1
    raise AssertionError("still running after 500 fences")


def content(fs: FileSystem, path: str) -> bytes | None:
    try:
        with fs.open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


# -- the scenarios: (setup, op, check), shared with tests/fsspec/test_faults.py -----------


def transaction_setup(fs: FileSystem) -> None:
    fs.makedirs("/d")
    with fs.open("/d/f", "wb") as f:
        f.write(OLD)


def transaction_op(dfs: DaxFileSystem) -> None:
    with dfs.transaction, dfs.open("/d/f", "wb") as f:
        f.write(NEW)


def transaction_check(fs: FileSystem, returned: bool) -> None:
    assert content(fs, "/d/f") in ((NEW,) if returned else (OLD, NEW))
    others = [n for n in fs.listdir("/d") if n != "f"]
    assert all(n.startswith(".f.") and n.endswith(TMP_SUFFIX) for n in others), others
    assert not (returned and others)  # committed: the temporary is the file now


def pipe_setup(fs: FileSystem) -> None:
    with fs.open("/f", "wb") as f:
        f.write(OLD)


def pipe_op(dfs: DaxFileSystem) -> None:
    dfs.pipe_file("/f", NEW)


def pipe_check(fs: FileSystem, returned: bool) -> None:
    assert content(fs, "/f") in ((NEW,) if returned else (OLD, b"", NEW))


#: cp_file's chunk in these scenarios (monkeypatched over _filesystem.CHUNK)
CP_CHUNK = 2 * 4096
CP_PREFIXES = [NEW[:n] for n in range(0, len(NEW), CP_CHUNK)]


def cp_setup(fs: FileSystem) -> None:
    with fs.open("/src", "wb") as f:
        f.write(NEW)


def cp_op(dfs: DaxFileSystem) -> None:
    dfs.cp_file("/src", "/dst")


def cp_check(seen: set[int]) -> Callable[[FileSystem, bool], None]:
    """cp_file's check, adding the length of each copy it finds to ``seen`` (-1: none)."""

    def check(fs: FileSystem, returned: bool) -> None:
        assert content(fs, "/src") == NEW
        copy = content(fs, "/dst")
        assert copy in ((NEW,) if returned else (None, NEW, *CP_PREFIXES))
        seen.add(-1 if copy is None else len(copy))

    return check


TREE = {"/t/a": OLD, "/t/b/c": NEW, "/t/b/d": b"d", "/t/e/f": b""}


def tree_setup(fs: FileSystem) -> None:
    for path, data in TREE.items():
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        with fs.open(path, "wb") as f:
            f.write(data)


def rm_tree_op(dfs: DaxFileSystem) -> None:
    dfs.rm("/t", recursive=True)


def rm_tree_check(fs: FileSystem, returned: bool) -> None:
    """Each removal is its own transaction: what is left of the tree is intact."""
    if returned:
        assert not fs.exists("/t")
    for path, data in TREE.items():
        assert content(fs, path) in (None, data)


def mv_tree_op(dfs: DaxFileSystem) -> None:
    dfs.mv("/t", "/moved/t")  # makes /moved (auto_mkdir), then one rename


def mv_tree_check(fs: FileSystem, returned: bool) -> None:
    here, there = fs.exists("/t"), fs.exists("/moved/t")
    assert here != there
    assert not (returned and here)
    root = "/t" if here else "/moved/t"
    for path, data in TREE.items():
        assert content(fs, root + path[2:]) == data


def test_a_transaction_replaces_the_file_in_its_commit(
    over: Callable[[FileSystem], DaxFileSystem],
) -> None:
    fences = crash_everywhere(build(transaction_setup), over, transaction_op, transaction_check)
    assert fences >= 3  # create, write, rename: each at least one commit


def test_pipe_file_leaves_old_empty_or_new(
    over: Callable[[FileSystem], DaxFileSystem],
) -> None:
    crash_everywhere(build(pipe_setup), over, pipe_op, pipe_check)


def test_cp_file_leaves_no_copy_or_a_chunk_prefix(
    over: Callable[[FileSystem], DaxFileSystem], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_filesystem, "CHUNK", CP_CHUNK)
    seen: set[int] = set()
    crash_everywhere(build(cp_setup), over, cp_op, cp_check(seen))
    assert {-1, 0, CP_CHUNK, len(NEW)} <= seen  # the states in between were reached


def test_rm_of_a_tree_leaves_what_it_has_not_removed_intact(
    over: Callable[[FileSystem], DaxFileSystem],
) -> None:
    fences = crash_everywhere(build(tree_setup), over, rm_tree_op, rm_tree_check)
    assert fences >= len(TREE)  # one transaction per file at least


def test_mv_of_a_tree_is_one_rename(over: Callable[[FileSystem], DaxFileSystem]) -> None:
    crash_everywhere(build(tree_setup), over, mv_tree_op, mv_tree_check)
