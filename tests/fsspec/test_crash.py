"""What a power failure leaves of the front end's multi-step operations, at every fence.

daxfs's own operations are each atomic (tests/crash/); a few fsspec calls are
several of them, and promise only what daxfs.fsspec documents:

- a file written inside ``fs.transaction`` holds its old bytes until the one
  rename of the commit, then the new ones (a temporary name may be left);
- ``pipe_file`` is an O_TRUNC open and one write: old, empty, or new;
- ``cp_file`` makes the copy and writes it chunk by chunk: no copy, or a prefix
  of the source ending at a chunk boundary, or all of it.

Each runs on a SimulatedPmem whose power fails at its n-th fence, for every n;
each crash state (seeded) must mount, pass fsck and hold one of those; once the
call returned, only the final state will do.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import pytest

import daxfs
from daxfs.fs.filesystem import FileSystem
from daxfs.fsspec import DaxFileSystem, _filesystem, _mounts
from daxfs.fsspec._files import TMP_SUFFIX
from daxfs.testing import SimulatedPmem
from daxfs.testing.blockcrash import abandon
from daxfs.testing.simulated import PowerFailure

SIZE = 16 << 20
OLD = b"old " * 3000  # 12,000 bytes: three blocks
NEW = bytes(range(251)) * 80  # 20,080 bytes: five blocks
STATES = 3
_serial = itertools.count()


@pytest.fixture
def over(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[FileSystem], DaxFileSystem]]:
    """A DaxFileSystem over an already mounted FileSystem (a simulated device's)."""
    made: list[str] = []

    def make(fs: FileSystem) -> DaxFileSystem:
        monkeypatch.setattr(_mounts, "mount", lambda *args, **kwargs: fs)
        image = f"/nonexistent/simulated-{next(_serial)}.img"
        made.append(_mounts.image_key(image))
        return DaxFileSystem(image, skip_instance_cache=True)

    yield make
    for key in made:  # their devices failed: drop the entries, unmount nothing
        _mounts._TABLE.pop(key, None)


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


def test_a_transaction_replaces_the_file_in_its_commit(
    over: Callable[[FileSystem], DaxFileSystem],
) -> None:
    def setup(fs: FileSystem) -> None:
        fs.makedirs("/d")
        with fs.open("/d/f", "wb") as f:
            f.write(OLD)

    def op(dfs: DaxFileSystem) -> None:
        with dfs.transaction, dfs.open("/d/f", "wb") as f:
            f.write(NEW)

    def check(fs: FileSystem, returned: bool) -> None:
        assert content(fs, "/d/f") in ((NEW,) if returned else (OLD, NEW))
        others = [n for n in fs.listdir("/d") if n != "f"]
        assert all(n.startswith(".f.") and n.endswith(TMP_SUFFIX) for n in others), others
        assert not (returned and others)  # committed: the temporary is the file now

    fences = crash_everywhere(build(setup), over, op, check)
    assert fences >= 3  # create, write, rename: each at least one commit


def test_pipe_file_leaves_old_empty_or_new(
    over: Callable[[FileSystem], DaxFileSystem],
) -> None:
    def setup(fs: FileSystem) -> None:
        with fs.open("/f", "wb") as f:
            f.write(OLD)

    def check(fs: FileSystem, returned: bool) -> None:
        assert content(fs, "/f") in ((NEW,) if returned else (OLD, b"", NEW))

    crash_everywhere(build(setup), over, lambda dfs: dfs.pipe_file("/f", NEW), check)


def test_cp_file_leaves_no_copy_or_a_chunk_prefix(
    over: Callable[[FileSystem], DaxFileSystem], monkeypatch: pytest.MonkeyPatch
) -> None:
    chunk = 2 * 4096
    monkeypatch.setattr(_filesystem, "CHUNK", chunk)

    def setup(fs: FileSystem) -> None:
        with fs.open("/src", "wb") as f:
            f.write(NEW)

    prefixes = [NEW[:n] for n in range(0, len(NEW), chunk)]
    seen: set[int] = set()

    def check(fs: FileSystem, returned: bool) -> None:
        assert content(fs, "/src") == NEW
        copy = content(fs, "/dst")
        assert copy in ((NEW,) if returned else (None, NEW, *prefixes))
        seen.add(-1 if copy is None else len(copy))

    crash_everywhere(build(setup), over, lambda dfs: dfs.cp_file("/src", "/dst"), check)
    assert {-1, 0, chunk, len(NEW)} <= seen  # the states in between were reached
