"""The create fast path (daxfs.fs.fastcreate) against the reference (FileSystem._create's
generic transaction).

Proved here:

* the same workload (creates in several directories, with leaf splits, inode
  file growth, the free list, setgid and DAX-flagged parents, unlinks and
  renames between) makes the same device operations with the same bytes in the
  same order, and the same image, with the fast path on and off; the fast path
  made most creates and refused the rest;
* every refusal runs the reference from a state the fast path left unchanged:
  a key the index holds (colliding names), a split, a C step that refuses
  after the put (the superblock seal, the inode records, a log too large);
* a device failure before the commit point leaves memory as it was (the
  superblock, the parent's record, the inode cache), as the reference's abort;
* crash at every fence of fast creates (in the root, in a two-level
  directory); a flush left out of the C commit fails a crash test run through
  the fast path.
"""

from __future__ import annotations

import dataclasses
import errno
import random
import stat
from collections.abc import Callable

import pytest

import daxfs
from daxfs.fs import fastcreate, journal
from daxfs.fs.filesystem import FileSystem
from daxfs.fs.inode import Inode
from daxfs.testing import SimulatedPmem
from daxfs.testing.crash import CrashCheckFailed, check_operation
from daxfs.testing.faults import FaultyPmem
from tests.fs.test_commit import RecordingPmem
from tests.helpers import SIZE, formatted, missing_flush


@pytest.fixture
def taken(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """How many creates the fast path made ("fast"), of them with the key the create's
    lookup found absent from the index ("keyed"), and how many it refused ("refused")."""
    counts = {"fast": 0, "refused": 0, "keyed": 0}
    real = fastcreate.create

    def counting(
        fs: FileSystem, parent: Inode, name: bytes, mode: int, key: int = -1
    ) -> Inode | None:
        inode = real(fs, parent, name, mode, key)
        counts["fast" if inode is not None else "refused"] += 1
        counts["keyed"] += inode is not None and key >= 0  # the lookup's key, no search
        return inode

    monkeypatch.setattr(fastcreate, "create", counting)
    return counts


def workload(seed: int) -> Callable[[FileSystem], None]:
    """Creates in three directories (a setgid one, a DAX-flagged one), with unlinks
    (the free list), renames and mkdir between; names of 1 to 40 bytes."""

    def steps(fs: FileSystem) -> None:
        rng = random.Random(seed)
        fs.mkdir("/a")
        fs.mkdir("/g")
        fs.chown("/g", 0, 4321)
        fs.chmod("/g", 0o2775)
        fs.mkdir("/x")
        fs.set_dax("/x", True)
        dirs = ["/", "/a", "/g", "/x"]
        names: list[str] = []
        for i in range(600):
            op = rng.random()
            if op < 0.85 or len(names) < 10:
                name = "".join(rng.choice("abcé_.9") for _ in range(rng.randint(1, 40)))
                path = f"{rng.choice(dirs).rstrip('/')}/{name}{i}"
                fs.open(path, "xb", buffering=0).close()
                names.append(path)
            elif op < 0.93:
                fs.unlink(names.pop(rng.randrange(len(names))))
            elif op < 0.98:
                old = names.pop(rng.randrange(len(names)))
                fs.rename(old, f"/a/r{i}")
                names.append(f"/a/r{i}")
            else:
                fs.mkdir(f"/a/d{i}")

    return steps


def run(
    step: Callable[[FileSystem], None], fast: bool, image: bytes
) -> tuple[list[tuple[object, ...]], bytes]:
    dev = RecordingPmem(SIZE, image=image)
    dev.log = []
    saved, fastcreate.FAST_CREATE = fastcreate.FAST_CREATE, fast
    try:
        with daxfs.mount(dev) as fs:
            step(fs)
    finally:
        fastcreate.FAST_CREATE = saved
    log, out = dev.log, dev.read(0, SIZE)
    dev.close()
    return log, out


def same_either_way(
    step: Callable[[FileSystem], None], taken: dict[str, int], *, fsck: bool = True
) -> dict[str, int]:
    """Run ``step`` with the fast path on and off; assert the same operations and image.
    What the fast path made and refused in the first run."""
    image = formatted().read(0, SIZE)
    log_fast, image_fast = run(step, True, image)
    counts = dict(taken)
    log_ref, image_ref = run(step, False, image)
    assert len(log_fast) == len(log_ref)
    assert log_fast == log_ref
    assert image_fast == image_ref
    if fsck:
        assert daxfs.fsck(SimulatedPmem(SIZE, image=image_fast)).clean
    return counts


@pytest.mark.usefixtures("frozen")
@pytest.mark.parametrize("seed", [1, 2])
def test_random_workload_same_operations_and_image(seed: int, taken: dict[str, int]) -> None:
    counts = same_either_way(workload(seed), taken)
    # the fast path made most creates, and refused some (splits, the free list, growth)
    assert counts["fast"] > 350
    assert counts["keyed"] > 300
    assert counts["refused"] > 20
    image = formatted().read(0, SIZE)
    with daxfs.mount(SimulatedPmem(SIZE, image=run(workload(seed), True, image)[1])) as fs:
        assert fs.stat("/g").st_gid == 4321
        assert all(fs.stat(f"/g/{n}").st_gid == 4321 for n in fs.listdir("/g"))
        assert all(fs.get_dax(f"/x/{n}").flag for n in fs.listdir("/x"))


def grown_dir(fs: FileSystem) -> None:
    fs.mkdir("/d")
    for i in range(300):  # a directory tree of two levels
        fs.open(f"/d/f{i:04d}", "xb", buffering=0).close()


@pytest.mark.usefixtures("frozen")
def test_colliding_names_are_left_to_the_reference(
    monkeypatch: pytest.MonkeyPatch, taken: dict[str, int]
) -> None:
    """Every name on one key: the index holds it after the first, so each later create
    is refused before anything changes, and the reference extends the key's value."""

    def step(fs: FileSystem) -> None:
        monkeypatch.setattr(fs.dirs, "hash", lambda name: 12345)
        fs.mkdir("/d")
        fs.open("/d/first", "xb").close()
        fs.listdir("/d")
        for i in range(5):
            fs.open(f"/d/n{i}", "xb").close()
        assert sorted(fs.listdir("/d")) == sorted(["first"] + [f"n{i}" for i in range(5)])

    counts = same_either_way(step, taken, fsck=False)  # (fsck: not the names' own hash)
    assert counts["refused"] >= 6


def refusing(what: str) -> Callable[[FileSystem], None]:
    """``grown_dir``, then creates through a fast path whose ``what`` step refuses after
    the C put (memory changed, undone by the abort) every other time."""

    def step(fs: FileSystem) -> None:
        grown_dir(fs)
        flip = iter(range(1 << 20))
        with pytest.MonkeyPatch.context() as mp:
            if what == "seal":
                real_seal = fs.sup.sealed_lines
                mp.setattr(fs.sup, "sealed_lines", lambda: None if next(flip) % 2 else real_seal())
            elif what == "inodes":
                real_log = fastcreate._create.log_inodes

                def log_inodes(dirty: object, places: object) -> object:
                    return None if next(flip) % 2 else real_log(dirty, places)  # type: ignore[arg-type]

                mp.setattr(fastcreate._create, "log_inodes", log_inodes)
            else:
                real_commit = journal.Transaction._commit_native

                def commit(tx: journal.Transaction, *args: object) -> bool:
                    if fastcreate.FAST_CREATE and not tx.scratch and next(flip) % 2:
                        return False  # as a log too large (the fast path's: no scratch)
                    return real_commit(tx, *args)  # type: ignore[arg-type]

                mp.setattr(journal.Transaction, "_commit_native", commit)
            for i in range(20):
                fs.open(f"/d/n{i:02d}", "xb").close()
                fs.open(f"/top{i:02d}", "xb").close()

    return step


@pytest.mark.usefixtures("frozen")
@pytest.mark.parametrize("what", ["seal", "inodes", "log"])
def test_a_refusal_after_the_put_undoes_it_and_the_reference_runs(
    what: str, taken: dict[str, int]
) -> None:
    image = formatted().read(0, SIZE)
    log_fast, image_fast = run(refusing(what), True, image)
    assert taken["fast"] >= 10
    assert taken["refused"] >= 10
    log_ref, image_ref = run(refusing(what), False, image)
    assert log_fast == log_ref
    assert image_fast == image_ref
    with daxfs.mount(SimulatedPmem(SIZE, image=image_fast)) as fs:
        assert len(fs.listdir("/d")) == 320
    assert daxfs.fsck(SimulatedPmem(SIZE, image=image_fast)).clean


def memory(fs: FileSystem, parent: str) -> tuple[object, ...]:
    ino = fs.stat(parent).st_ino
    inode = fs.itable.get(ino)
    return (
        dataclasses.replace(fs.sup.sb),
        dataclasses.replace(inode.rec),
        sorted(fs.itable.cache),
        fs.journal.seq,
    )


@pytest.mark.parametrize(("nth", "committed"), [(1, False), (2, False), (3, True)])
def test_a_device_failure_in_a_fast_create(
    nth: int, committed: bool, taken: dict[str, int]
) -> None:
    """The n-th fence of a fast create fails (EIO): before the commit point memory is
    as before (superblock, parent record, inode cache) and the next create works; after
    it, the filesystem turns read-only and the remounted image holds the file."""
    base = formatted()
    with daxfs.mount(base) as fs:
        grown_dir(fs)
    dev = FaultyPmem(SIZE, image=base.read(0, SIZE))
    fs = daxfs.mount(dev)
    fs.open("/d/warm", "xb").close()  # the index built, the slots checked
    fast, refused = taken["fast"], taken["refused"]
    before = memory(fs, "/d")
    dev.arm("drain", nth)
    with pytest.raises(OSError, match="/d/new") as info:
        fs.open("/d/new", "xb")
    dev.disarm()
    assert (taken["fast"], taken["refused"]) == (
        fast,
        refused,
    )  # raised in the fast path, no reference
    assert info.value.errno == errno.EIO
    assert fs.journal.active is None
    if committed:
        assert fs.journal.failed is not None
    else:
        assert fs.journal.failed is None
        assert memory(fs, "/d") == before
        assert not fs.exists("/d/new")
        fs.open("/d/other", "xb").close()
        assert (taken["fast"], taken["refused"]) == (
            fast + 1,
            refused,
        )  # (index dropped, built again)
    for file in fs.open_files():
        file.close()
    fs.unmount()
    again = SimulatedPmem(SIZE, image=dev.image())
    with daxfs.mount(again) as fs2:
        assert fs2.exists("/d/new") == committed
        assert fs2.exists("/d/other") == (not committed)
        assert len(fs2.listdir("/d")) == 302
    assert daxfs.fsck(again).clean
    dev.close()


# -- crash at every fence; a planted missing flush is caught ---------------------------


def fast_op(path: str) -> Callable[[FileSystem], None]:
    def op(fs: FileSystem) -> None:
        saved = fastcreate.create
        made: list[Inode | None] = []

        def watching(*args: object) -> Inode | None:
            made.append(saved(*args))  # type: ignore[arg-type]
            return made[-1]

        fastcreate.create = watching  # type: ignore[assignment]
        try:
            fs.open(path, "xb", buffering=0).close()
        finally:
            fastcreate.create = saved  # type: ignore[assignment]
        assert len(made) == 1
        assert made[0] is not None  # the fast path made this create

    return op


@pytest.mark.parametrize("path", ["/d/new", "/d/f0150x", "/top"])
def test_crash_at_every_fence_of_a_fast_create(path: str) -> None:
    report = check_operation(grown_dir, fast_op(path), states_per_fence=3)
    assert report.fences >= 3
    assert report.before_seen >= 1
    assert report.after_seen >= 1


def planted(n: int) -> Callable[[FileSystem], None]:
    return missing_flush(n, fast_op("/d/new"))


@pytest.mark.usefixtures("unplant")
@pytest.mark.parametrize("n", [1, 3])
def test_a_missing_flush_in_a_fast_create_fails_a_crash_test(n: int) -> None:
    """The log (n = 1) or the first applied record (n = 3) left unflushed: a crash test
    of the fast create sees it (the simulator sees every store the C commit makes)."""
    with pytest.raises(CrashCheckFailed):
        check_operation(grown_dir, planted(n), states_per_fence=16)


def test_the_planted_flush_is_what_fails() -> None:
    report = check_operation(grown_dir, planted(0), states_per_fence=16)
    assert report.after_seen >= 1


def test_the_reference_is_the_fallback_when_the_directory_is_empty(
    taken: dict[str, int],
) -> None:
    """An empty directory (no tree yet) and a directory without an index: refused."""
    with daxfs.mount(formatted()) as fs:
        fs.mkdir("/e")
        fs.open("/e/first", "xb").close()
        assert (taken["fast"], taken["refused"]) == (0, 1)
        fs.open("/e/second", "xb").close()
        assert taken["fast"] == 1
        assert stat.S_ISREG(fs.stat("/e/second").st_mode)
