"""No reference cycles on the hot paths: each operation's objects are freed by reference
counting, not left for the cyclic garbage collector (whose passes cost 6-11% with it on).

Run with the collector off: after a warm-up, a loop of operations leaves what
``gc.collect()`` then finds.  Other paths may add cases to ``OPERATIONS``.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import daxfs
from daxfs.block import Bio, BioOp
from daxfs.fs.filesystem import FileSystem
from daxfs.lifecycle import weak_method
from daxfs.testing import SimulatedBlockDevice, SimulatedPmem
from daxfs.testing.blockfaults import FaultyBlockDevice

ROUNDS = 100
#: objects a round may leave for the collector (none today; a little slack for the
#: interpreter's own caches)
SLACK_PER_ROUND = 0.05


@contextlib.contextmanager
def left_in_cycles() -> Iterator[list[Any]]:
    """Run the block with the collector off; then ``[found, kinds]``: how many objects the
    block left in reference cycles (``gc.collect()``) and the commonest types among them."""
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    result: list[Any] = []
    try:
        yield result
        gc.collect()
        counted = _not_of_other_threads(gc.garbage)
        result.append(len(counted))
        result.append(Counter(type(o).__name__ for o in counted).most_common(8))
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        if was_enabled:
            gc.enable()


def _not_of_other_threads(garbage: list[Any]) -> list[Any]:
    """The garbage less what hangs off a ``threading.Thread`` other than this one.

    The operations measured here run on this thread and start none; a thread that an
    earlier test left behind (a pool or reaper winding down) can end during the block
    and leave its Thread, Condition, Event and deque in a cycle, which is not the hot
    path's doing (seen in long runs).  Those objects, and whatever of the garbage they
    reach, are left out; everything else counts."""
    current = threading.current_thread()
    ids = {id(o) for o in garbage}
    seen: set[int] = set()
    stack = [o for o in garbage if isinstance(o, threading.Thread) and o is not current]
    while stack:
        o = stack.pop()
        if id(o) in seen:
            continue
        seen.add(id(o))
        stack.extend(r for r in gc.get_referents(o) if id(r) in ids and id(r) not in seen)
    return [o for o in garbage if id(o) not in seen]


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
    with left_in_cycles() as left:
        for i in range(20, 20 + ROUNDS):
            op(fs, i)
    found, kinds = left
    assert found <= SLACK_PER_ROUND * ROUNDS, (
        f"{found / ROUNDS:.1f} objects per round left in cycles: {kinds}"
    )


def _use(fs: FileSystem) -> None:
    """A little of everything a mount builds: directories, files, links, a mapping."""
    fs.mkdir("/u")
    with fs.open("/u/f", "wb") as f:
        f.write(b"x" * 50_000)
    fs.symlink("/u/f", "/u/l")
    fs.stat("/u/l")
    fs.rename("/u/f", "/u/g")
    with fs.open("/u/m", "wb+", buffering=0) as f:
        f.truncate(8192)
        mapping = f.mmap(0, 8192)
        mapping[0:5] = b"hello"
        mapping.close()
    fs.unlink("/u/g")


@pytest.mark.parametrize("dax", ["inode", "never", "never, cache_size=64K"])
@pytest.mark.parametrize("unmount", [True, False], ids=["unmounted", "dropped"])
def test_a_mount_leaves_no_cycles(dax: str, unmount: bool) -> None:
    """Mount, use and unmount -- or drop without unmounting, as the crash harnesses do --
    leave nothing for the cyclic collector: the layers call back into each other weakly
    (daxfs.lifecycle.weak_method), so the device and its views go with the last
    reference, not at the next collection."""
    with left_in_cycles() as left:
        for _ in range(3):
            device = SimulatedPmem(16 << 20)
            daxfs.mkfs(device)
            bounded = "64K" if "cache_size" in dax else None  # daxfs.pagecache.bounded
            fs = daxfs.mount(device, dax=dax.split(",")[0], cache_size=bounded)
            _use(fs)
            if unmount:
                fs.unmount()
            del fs, device
    found, kinds = left
    assert found == 0, f"{found} objects left in cycles: {kinds}"


def test_a_callback_outliving_its_object_is_an_invariant_failure() -> None:
    """weak_method's callback does not keep its object; a call after the object went is a
    broken invariant (AssertionError), not a silent no-op."""

    class Owner:
        def answer(self, x: int) -> int:
            return x + 1

    owner = Owner()
    call = weak_method(owner.answer)
    assert call(41) == 42
    del owner
    with pytest.raises(AssertionError, match="freed"):
        call(1)


def test_a_failed_bio_leaves_no_cycles() -> None:
    """A bio whose device failed keeps its error (``status``), and ``wait`` raises it: the
    error's traceback must not lead back to the bio, whose segments are views of the
    caller's memory -- a block cache could not close while a cycle held them (an NBD
    mount whose server disconnected could not unmount)."""
    faulty = FaultyBlockDevice(SimulatedBlockDevice(1 << 20))
    faulty.arm("write", 1, persistent=True)
    buffer = bytearray(4096)
    with left_in_cycles() as left:
        for _ in range(3):
            bio = Bio(BioOp.WRITE, 8, [memoryview(buffer)])
            faulty.submit_bio(bio)
            with pytest.raises(OSError, match="simulated Input/output error"):
                bio.wait()
            del bio
    found, kinds = left
    assert found == 0, f"{found} objects left in cycles: {kinds}"
    buffer.extend(b"x")  # no view of it is alive: a bytearray with exports cannot grow
    faulty.close()


def test_the_count_leaves_out_other_threads_but_not_the_block_s_own_cycles() -> None:
    """left_in_cycles itself: a cycle the block makes counts; a thread of someone else
    that ends in a cycle during the block does not (the long runs' false failure)."""

    class Node:
        me: object

    started = threading.Event()
    release = threading.Event()

    def wait() -> None:
        started.set()
        release.wait()

    other = threading.Thread(target=wait)
    other.start()
    started.wait()
    with left_in_cycles() as left:
        node = Node()
        node.me = node  # the block's own cycle
        del node
        other.me = other  # type: ignore[attr-defined]  # the other thread's cycle
        release.set()
        other.join()
        del other
    found, kinds = left
    assert found >= 1
    assert dict(kinds).get("Node") == 1
    assert "Thread" not in dict(kinds)
