"""No reference cycles on the hot paths: each operation's objects are freed by reference
counting, not left for the cyclic garbage collector (whose passes cost 6-11% with it on).

Run with the collector off: after a warm-up, a loop of operations leaves what
``gc.collect()`` then finds.  Other paths may add cases to ``OPERATIONS``.
"""

from __future__ import annotations

import gc
from collections import Counter
from collections.abc import Callable, Iterator

import pytest

import daxfs
from daxfs.fs.filesystem import FileSystem
from daxfs.testing import SimulatedPmem

ROUNDS = 100
#: objects a round may leave for the collector (none today; a little slack for the
#: interpreter's own caches)
SLACK_PER_ROUND = 0.05


def _file_round(fs: FileSystem, i: int) -> None:
    path = f"/d/f{i}"
    with fs.open(path, "xb+", buffering=0) as f:
        f.write(b"x" * 100)
        f.pwrite(b"y" * 10, 5)
        assert f.pread(10, 0) == b"xxxxxyyyyy"
    fs.stat(path)
    fs.rename(path, path + "r")
    fs.unlink(path + "r")


def _namespace_round(fs: FileSystem, i: int) -> None:
    fs.mkdir(f"/d/dir{i}")
    fs.symlink(f"/d/dir{i}", f"/d/link{i}")
    fs.stat(f"/d/link{i}")
    fs.lstat(f"/d/link{i}")
    fs.unlink(f"/d/link{i}")
    fs.rmdir(f"/d/dir{i}")


def _create_round(fs: FileSystem, i: int) -> None:
    fs.open(f"/d/c{i}", "xb", buffering=0).close()
    fs.stat(f"/d/c{i}")


OPERATIONS: dict[str, Callable[[FileSystem, int], None]] = {
    "create, write, pwrite, pread, stat, rename, unlink": _file_round,
    "mkdir, symlink, stat, lstat, unlink, rmdir": _namespace_round,
    "create+close, stat": _create_round,
}


@pytest.fixture
def fs() -> Iterator[FileSystem]:
    device = SimulatedPmem(16 << 20)
    daxfs.mkfs(device)
    mounted = daxfs.mount(device)
    mounted.mkdir("/d")
    yield mounted
    mounted.unmount()


@pytest.mark.parametrize("name", sorted(OPERATIONS))
def test_hot_paths_leave_no_cycles(fs: FileSystem, name: str) -> None:
    op = OPERATIONS[name]
    for i in range(20):  # warm-up: caches, lazily built indexes
        op(fs, i)
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for i in range(20, 20 + ROUNDS):
            op(fs, i)
        found = gc.collect()
        kinds = Counter(type(o).__name__ for o in gc.garbage).most_common(8)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        if was_enabled:
            gc.enable()
    assert found <= SLACK_PER_ROUND * ROUNDS, (
        f"{found / ROUNDS:.1f} objects per round left in cycles: {kinds}"
    )
