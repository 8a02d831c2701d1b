"""stat as one C call (``StatPath.stat``, daxfs/fs/_stat.c) against FileSystem.stat's
Python body (the reference: the path cache, the C miss path, the walk).

``StatPath.stat(path, follow)`` is the whole of ``FileSystem.stat`` for str and
bytes paths: it takes the filesystem lock without waiting, empties the path
caches when ``Directories.removals`` moved, answers a path cache hit (the inode
cached, else its record from media) or a miss through the C miss path, and
returns None for everything else, which the Python body then answers.  These
tests check that it answers only what the Python body answers, field for field,
never a stale path after a name is removed or moved, never while another thread
holds the lock (a transaction in flight), and never a damaged record.
"""

from __future__ import annotations

import array
import contextlib
import errno
import os
import stat
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import daxfs
from daxfs.errors import Corrupted
from daxfs.fs.filesystem import FileSystem
from daxfs.fs.fsck import fsck
from daxfs.fs.layout import DT_REG
from daxfs.testing import SimulatedPmem
from tests.fs import crafting
from tests.fs.test_stat_fast import (
    CHANGES,
    PATHS,
    damaged,
    fields,
    populate,
    reference,
    same,
    uncache,
)


@pytest.fixture
def dev() -> SimulatedPmem:
    return crafting.fresh(populate, size=64 << 20)


@pytest.fixture
def fs(dev: SimulatedPmem) -> Iterator[FileSystem]:
    mounted = daxfs.mount(dev)
    yield mounted
    if mounted.mounted:
        mounted.unmount()


def one_call(fs: FileSystem, path: Any, follow: bool) -> os.stat_result | None:
    assert fs._fast is not None
    return fs._fast.stat(path, follow)


@pytest.mark.parametrize("remember", [True, False])
@pytest.mark.parametrize("follow", [True, False])
@pytest.mark.parametrize("as_bytes", [False, True])
def test_the_one_call_answers_what_the_python_body_answers(
    fs: FileSystem, follow: bool, as_bytes: bool, remember: bool
) -> None:
    """Every path of test_stat_fast, a miss then hits, inodes cached or not: whatever
    the one call answers is the walk's answer, and fs.stat always is."""
    assert fs._fast is not None
    fs._fast.remember = remember
    paths = [os.fsencode(p) if as_bytes else p for p in PATHS]
    fs.stat("/d/f1")  # builds the index of /d
    answered = {"miss": 0, "hit": 0}
    for path in paths:
        want = reference(fs, path, follow)
        head = path.rpartition("/" if isinstance(path, str) else b"/")[0]
        if head:
            stat_or_error(fs, head, True)  # the directory remembered: the C miss path
        for round in range(3):
            if round != 1:
                uncache(fs)  # the record from media (round 1: cached by the walk)
            cache = (fs._paths if isinstance(path, str) else fs._bpaths)[follow]
            hit = path in cache
            got = one_call(fs, path, follow)
            if got is not None:
                same(got, want)
                answered["hit" if hit else "miss"] += 1
            same(stat_or_error(fs, path, follow), want)
    assert answered["miss"] >= 8  # short names in /d and at the top
    if remember:
        assert answered["hit"] >= 8


def stat_or_error(fs: FileSystem, path: Any, follow: bool) -> os.stat_result | OSError:
    try:
        return fs.stat(path, follow_symlinks=follow)
    except OSError as exc:
        return exc


def test_hits_and_misses_are_counted_and_remember_decides(fs: FileSystem) -> None:
    assert fs._fast is not None
    fs._fast.remember = True
    fs.stat("/d/f1")
    hits, misses = fs.path_hits, fs.path_misses
    first = one_call(fs, "/d/f2", True)
    assert first is not None
    assert (fs.path_hits, fs.path_misses) == (hits, misses + 1)
    again = one_call(fs, "/d/f2", True)
    assert again is not None
    assert fields(again) == fields(first)
    assert (fs.path_hits, fs.path_misses) == (hits + 1, misses + 1)
    fs._fast.remember = False
    assert one_call(fs, "/d/f3", True) is not None
    assert one_call(fs, "/d/f3", True) is not None  # answered, not remembered: a miss
    assert (fs.path_hits, fs.path_misses) == (hits + 1, misses + 3)
    fs._fast.remember = True
    fs._forget_paths()  # the answer table too
    remember_head(fs, "/d")
    hits, misses = fs.path_hits, fs.path_misses
    assert one_call(fs, "/d/f2", True) is not None  # forgotten: a miss
    assert (fs.path_hits, fs.path_misses) == (hits, misses + 1)


def test_the_answer_table_holds_what_the_walk_answers_through_collisions() -> None:
    """More names than the answer table has slots (4096), so that many share one: each
    stat, first or again, str or bytes, stat or lstat, is the walk's answer; names
    it does not keep (long, not ASCII) are answered by the miss path each time."""
    dev = crafting.fresh(size=64 << 20)
    with daxfs.mount(dev) as fs:
        fs.mkdir("/m")
        names = [f"n{i}" for i in range(5000)] + ["\u00e9t\u00e9", "x" * 14]
        for name in names:
            fs.open(f"/m/{name}", "xb").close()
        fs.symlink("/m/n1", "/m/lnk")
        long_dir = "/m/" + "d" * 40
        fs.mkdir(long_dir)
        fs.open(f"{long_dir}/f", "xb").close()
        want = {}
        for name in [*names, "lnk"]:
            for follow in (True, False):
                want[name, follow] = reference(fs, f"/m/{name}", follow)
        remember_head(fs, "/m")
        remember_head(fs, long_dir)
        hits = fs.path_hits
        for _ in range(2):
            for name in [*names, "lnk"]:
                for follow in (True, False):
                    for path in (f"/m/{name}", os.fsencode(f"/m/{name}")):
                        got = one_call(fs, path, follow)
                        if got is not None:
                            same(got, want[name, follow])
                        same(stat_or_error(fs, path, follow), want[name, follow])
        assert fs.path_hits - hits > 5000  # the second round hits where no name collided
        fs.stat(f"{long_dir}/f")  # its directory indexed
        want_long = reference(fs, f"{long_dir}/f", True)
        remember_head(fs, long_dir)
        misses = fs.path_misses
        for _ in range(2):
            got = one_call(fs, f"{long_dir}/f", True)  # 45 bytes: answered, not kept
            assert got is not None
            same(got, want_long)
        assert fs.path_misses == misses + 2


def test_a_removal_empties_the_caches_before_the_next_answer(fs: FileSystem) -> None:
    """unlink, rename over, rename of a directory on the way, rmdir: after each, what
    was remembered is not answered (the epoch moved), whichever side remembered it."""
    fs.mkdir("/d/x")
    crafting_touch(fs, "/d/x/a")
    crafting_touch(fs, "/d/x/b")
    for path in ("/d/x/a", "/d/x/b", b"/d/x/a", "/d/x"):
        assert one_call(fs, path, True) is not None or fs.stat(path) is not None
        assert one_call(fs, path, True) is not None  # remembered now
    b = fs.stat("/d/x/b").st_ino
    fs.rename("/d/x/b", "/d/x/a")  # over a remembered name
    got = one_call(fs, "/d/x/a", True)
    assert got is None or got.st_ino == b
    assert fs.stat("/d/x/a").st_ino == b
    assert one_call(fs, "/d/x/b", True) is None
    with pytest.raises(FileNotFoundError):
        fs.stat(b"/d/x/b")
    fs._fast, fast = None, fs._fast  # the Python body remembers ...
    assert fs.stat("/d/x/a").st_ino == b
    fs._fast = fast
    fs.rename("/d/x", "/d/y")  # ... a directory on the way moves
    assert one_call(fs, "/d/x/a", True) is None
    with pytest.raises(FileNotFoundError):
        fs.stat("/d/x/a")
    assert fs.stat("/d/y/a").st_ino == b
    fs.unlink("/d/y/a")
    assert one_call(fs, "/d/y/a", True) is None
    with pytest.raises(FileNotFoundError):
        fs.stat("/d/y/a")
    fs.rmdir("/d/y")
    assert one_call(fs, "/d/y", True) is None
    with pytest.raises(FileNotFoundError):
        fs.stat("/d/y")


def test_the_last_head_answers_what_the_path_cache_holds_now(fs: FileSystem) -> None:
    """path() keeps the last HEAD it found in the path cache (LastHead in _stat.c) only
    while that dict is unchanged: two directories taken in turns, str and bytes HEADs
    of the same bytes, a HEAD's entry changed with no removal (the dict is the
    answer, not what path() saw before) and the dict emptied each answer as the
    dict says now."""
    assert fs._fast is not None
    fs.mkdir("/e")
    crafting_touch(fs, "/e/f1")
    want = {p: fs.stat(p).st_ino for p in ("/d/f1", "/d/f2", "/e/f1")}
    fs.stat("/e/f1")  # /e indexed
    d, e = fs.stat("/d").st_ino, fs.stat("/e").st_ino
    remember_head(fs, "/d")
    remember_head(fs, "/e")
    assert fs._resolve_parent(b"/d", fs._bpaths[True]) == d
    hwm = fs.sup.sb.inode_hwm

    def ino(path: Any) -> int:
        assert fs._fast is not None
        got = fs._fast.path(path, True, hwm)
        if isinstance(got, os.stat_result):
            return got.st_ino
        assert isinstance(got, int)
        return got  # -2: HEAD not in the path cache; else the cached inode's number

    for _ in range(2):
        for path in ("/d/f1", "/e/f1", "/d/f2", "/d/f2", "/e/f1"):
            assert ino(path) == want[path]
            assert ino(os.fsencode(path)) == (want[path] if path.startswith("/d") else -2)
    assert ino("/d/f1") == want["/d/f1"]  # /d is the last HEAD
    fs._paths[True]["/d"] = e  # changed in the dict, no removal: the dict answers
    assert ino("/d/f1") == want["/e/f1"]
    assert ino(b"/d/f1") == want["/d/f1"]  # bytes HEADs: their own dict
    fs._paths[True].clear()
    assert ino("/d/f1") == -2
    assert ino("/e/f1") == -2
    fs._paths[True]["/e"] = e
    assert ino("/e/f1") == want["/e/f1"]


def crafting_touch(fs: FileSystem, path: str) -> None:
    fs.open(path, "xb").close()


def test_a_lock_held_by_another_thread_leaves_stat_to_python(fs: FileSystem) -> None:
    """A thread inside an operation holds the filesystem lock, its changes half made
    (here: an inode record changed in memory, as a transaction in flight has it): the
    one call does not answer, and fs.stat waits for the lock, then answers."""
    first = fs.stat("/d/f5")
    assert one_call(fs, "/d/f5", True) is not None
    inode = fs.itable.get(first.st_ino)
    inside, leave = threading.Event(), threading.Event()

    def operation() -> None:
        with fs._lock:
            saved = inode.rec.uid
            inode.rec.uid = 4242  # uncommitted
            inside.set()
            leave.wait()
            inode.rec.uid = saved  # as an abort puts it back

    worker = threading.Thread(target=operation)
    worker.start()
    assert inside.wait(30)
    try:
        assert one_call(fs, "/d/f5", True) is None  # never the half-made state
        assert one_call(fs, "/d/f6", True) is None
        answers: list[os.stat_result] = []
        waiter = threading.Thread(target=lambda: answers.append(fs.stat("/d/f5")))
        waiter.start()
        waiter.join(0.2)
        assert not answers  # it waits for the lock (it cannot have answered meanwhile)
    finally:
        leave.set()
        worker.join()
    waiter.join()
    assert len(answers) == 1
    same(answers[0], first)
    got = one_call(fs, "/d/f5", True)  # the lock is free again
    assert got is not None
    same(got, first)


def test_the_lock_is_free_after_every_answer(fs: FileSystem) -> None:
    """The one call releases what it takes, on answers, on None and on errors."""
    for path in ("/d/f1", "/d/f1", "/d/missing", b"/d/f2", "/d/lnk", 42, "/d/" + "n" * 300):
        with contextlib.suppress(OSError):
            one_call(fs, path, True)
        got: list[bool] = []
        other = threading.Thread(target=take, args=(fs, got))  # this thread would re-enter
        other.start()
        other.join()
        assert got == [True], path


def take(fs: FileSystem, got: list[bool]) -> None:
    """Try the filesystem lock without waiting; release it if taken."""
    got.append(fs._lock.acquire(blocking=False))
    if got[-1]:
        fs._lock.release()


@pytest.mark.parametrize("change", CHANGES)
def test_a_hit_on_a_damaged_record_is_left_to_python_which_raises(
    dev: SimulatedPmem, change: str
) -> None:
    """The path was remembered before the record went bad (media changes under a
    mount): the hit reads the record again, refuses it, and the walk raises."""
    with daxfs.mount(dev) as fs:
        fs.stat("/d/f1")
        assert one_call(fs, "/d/f8", True) is not None  # remembered
    _, ino = damaged(dev, change)
    with daxfs.mount(dev) as fs:
        fs.stat("/d/f1")
        fs.stat("/d/f9")
        paths = fs._paths[True]
        paths["/d/f8"] = ino  # as remembered before the damage
        uncache(fs)
        paths["/d/f8"] = ino
        assert one_call(fs, "/d/f8", True) is None
        with pytest.raises(Corrupted) as raised:
            fs.stat("/d/f8")
        assert raised.value.errno == errno.EUCLEAN
        same(stat_or_error(fs, "/d/f9", True), reference(fs, "/d/f9", True))


def test_after_unmount_the_one_call_answers_nothing(fs: FileSystem) -> None:
    fs.stat("/d/f1")
    fast = fs._fast
    assert fast is not None
    assert fast.stat("/d/f1", True) is not None
    fs.unmount()
    assert fast.stat("/d/f1", True) is None
    with pytest.raises(daxfs.errors.InvalidArgument):
        fs.stat("/d/f1")


def test_threads_stat_while_names_change(fs: FileSystem) -> None:
    """Four threads stat names that a fifth creates, renames and unlinks: every answer
    is an inode the name had at some point (or ENOENT), never another name's."""
    for i in range(20):
        crafting_touch(fs, f"/d/t{i}")
    inos = {f"/d/t{i}": {fs.stat(f"/d/t{i}").st_ino} for i in range(20)}
    stop = threading.Event()
    wrong: list[str] = []

    def reader(k: int) -> None:
        while not stop.is_set():
            for i in range(20):
                path = f"/d/t{(i + k) % 20}"
                try:
                    st = fs.stat(path)
                except FileNotFoundError:
                    continue
                if st.st_ino not in inos[path]:
                    wrong.append(f"{path}: {st.st_ino} not in {inos[path]}")

    readers = [threading.Thread(target=reader, args=(k,)) for k in range(4)]
    for r in readers:
        r.start()
    try:
        for round in range(30):
            i = round % 20
            path = f"/d/t{i}"
            fs.unlink(path)
            crafting_touch(fs, "/d/tmp")
            inos[path].add(fs.stat("/d/tmp").st_ino)  # before it takes the name
            fs.rename("/d/tmp", path)
    finally:
        stop.set()
        for r in readers:
            r.join()
    assert not wrong, wrong[:5]


# -- the bucket array (DirIndex.fence) -------------------------------------------------


def remember_head(fs: FileSystem, head: str) -> None:
    """Put the directory ``head`` into the path cache (as the walk of a first stat in
    it does): the stats of names in it then take the C miss path."""
    fs.stat("/")  # a removal since the last stat empties the caches here, not later
    assert fs._resolve_parent(head, fs._paths[True]) is not None


def big_index(fs: FileSystem, count: int) -> Any:
    """/big with ``count`` empty files f0..., its index built and merged."""
    fs.mkdir("/big")
    for i in range(count):
        fs.open(f"/big/f{i}", "xb").close()
    fs.stat("/big/f0")
    index = fs.dirs.ready_index(fs.itable.get(fs.stat("/big").st_ino))
    assert index is not None
    index.merge()
    return index


def test_a_big_index_gets_a_bucket_array_that_answers_every_name() -> None:
    dev = crafting.fresh(size=64 << 20)
    with daxfs.mount(dev) as fs:
        index = big_index(fs, 5000)
        assert index.fence is None
        fs._forget_paths()
        remember_head(fs, "/big")  # the head remembered
        want = {i: fs.stat(f"/big/f{i}") for i in range(0, 5000, 3)}
        fs._forget_paths()
        remember_head(fs, "/big")
        for i, st in want.items():
            got = one_call(fs, f"/big/f{i}", True)
            assert got is not None, i
            same(got, st)
        assert isinstance(index.fence, tuple)
        assert index.fence[0] is index.keys  # built for these keys
        for i in range(5000, 5200):
            assert one_call(fs, f"/big/f{i}", True) is None  # absent: the walk says so
            with pytest.raises(FileNotFoundError):
                fs.stat(f"/big/f{i}")
        fs.unlink("/big/f3")  # pending: read before the arrays
        fs.open("/big/new", "xb").close()
        remember_head(fs, "/big")
        assert one_call(fs, "/big/f3", True) is None
        assert one_call(fs, "/big/new", True) is not None
        index.merge()  # new arrays: the fence is dropped, then rebuilt for them
        assert index.fence is None
        remember_head(fs, "/big")
        same(one_call(fs, "/big/f6", True), want[6])  # type: ignore[arg-type]
        assert index.fence[0] is index.keys


@pytest.mark.parametrize("kind", ["zeros", "shifted", "short", "other-keys", "garbage"])
def test_a_wrong_bucket_array_never_changes_an_answer(kind: str) -> None:
    """A fence that does not fit its keys (stale, damaged, of another array) only makes
    names look absent (the walk answers them) or is rebuilt: never a wrong answer."""
    import random
    import struct

    dev = crafting.fresh(size=64 << 20)
    with daxfs.mount(dev) as fs:
        index = big_index(fs, 5000)
        remember_head(fs, "/big")
        assert one_call(fs, "/big/f1", True) is not None
        count, bits = struct.unpack_from("<II", index.fence[1])
        buckets = (1 << bits) + 1
        rng = random.Random(7)
        if kind == "zeros":
            body = struct.pack("<II", count, bits) + bytes(4 * buckets)
        elif kind == "shifted":  # every bucket one bucket off
            starts = struct.unpack_from(f"<{buckets}I", index.fence[1], 8)
            body = struct.pack(f"<II{buckets}I", count, bits, *starts[1:], count)
        elif kind == "short":
            body = index.fence[1][:-4]
        elif kind == "other-keys":
            body = index.fence[1]
        else:
            body = struct.pack("<II", count, bits) + bytes(
                rng.randrange(256) for _ in range(4 * buckets)
            )
        keys = index.keys if kind != "other-keys" else array.array("Q", index.keys)
        index.fence = (keys, body)
        answered = 0
        for i in range(0, 5000, 7):
            path = f"/big/f{i}"
            fs._forget_paths()
            remember_head(fs, "/big")  # the head remembered, the name not: the miss path
            got = one_call(fs, path, True)
            want = reference(fs, path, True)
            if got is not None:
                answered += 1
                same(got, want)
            same(stat_or_error(fs, path, True), want)
        if kind == "zeros":  # every bucket empty: only the first key is found (at 0)
            first = sum(fs.dirs.hash(b"f%d" % i) == index.keys[0] for i in range(0, 5000, 7))
            assert answered == first  # the C path reads the fence
        if kind in ("short", "other-keys"):
            assert answered == len(range(0, 5000, 7))  # rebuilt
            assert index.fence[0] is index.keys


def test_stats_fold_a_big_index_pending_changes_once_they_stop_changing() -> None:
    """Creates and unlinks after a big index was merged stay pending (up to a sixteenth
    of it), and every probe looks them up first: once as many C probes as there are
    changes (at least 1024) found them unchanged, the stat merges them (DirIndex.merge);
    every answer before and after is the walk's."""
    dev = crafting.fresh(size=64 << 20)
    with daxfs.mount(dev) as fs:
        index = big_index(fs, 5000)
        for i in range(5000, 5200):
            fs.open(f"/big/f{i}", "xb").close()
        for i in range(0, 100):
            fs.unlink(f"/big/f{i}")
        assert len(index.added) + len(index.removed) == 300  # pending, under merge_at
        assert fs._fast is not None
        fs._fast.remember = False  # every stat a probe
        want = {i: reference(fs, f"/big/f{i}", True) for i in range(0, 5200, 13)}
        remember_head(fs, "/big")
        merges = fs._fast.merges
        probes = 0
        picks = list(want.items())
        while index.added and probes < 2000:
            i, st = picks[probes % len(picks)]
            path = f"/big/f{i}"
            got = one_call(fs, path, True)
            probes += 1
            if got is not None:
                same(got, st)
            else:  # unlinked: the walk answers (the probe still counts)
                assert isinstance(st, FileNotFoundError), path
        assert not index.added  # merged by a stat ...
        assert not index.removed
        assert fs._fast.merges == merges + 1
        assert probes == 1024  # ... at the 1024th probe of the same changes
        for i, st in want.items():
            same(stat_or_error(fs, f"/big/f{i}", True), st)
        fs.open("/big/later", "xb").close()  # a change after the merge: pending again
        assert index.added


def test_stats_between_changes_leave_the_merging_to_the_changes() -> None:
    """A create between stats changes the pending count: no stat merges."""
    dev = crafting.fresh(size=64 << 20)
    with daxfs.mount(dev) as fs:
        big_index(fs, 5000)
        assert fs._fast is not None
        fs._fast.remember = False
        merges = fs._fast.merges
        for i in range(300):
            fs.open(f"/big/g{i}", "xb").close()
            remember_head(fs, "/big")
            for j in range(0, 5000, 500):
                assert one_call(fs, f"/big/f{j}", True) is not None
        assert fs._fast.merges == merges


def test_a_merge_by_stats_inside_an_open_transaction_is_undone_by_its_abort() -> None:
    """A stat runs inside an open transaction only on the thread that holds the
    filesystem lock (re-entrant): a merge it makes (settle) then folds the
    transaction's own new name into the index's arrays, and the abort drops the
    index (Directories._aborted), so that name is gone and every answer after it is
    the walk's of the committed tree."""
    dev = crafting.fresh(size=64 << 20)
    with daxfs.mount(dev) as fs:
        index = big_index(fs, 5000)
        for i in range(5000, 5100):
            fs.open(f"/big/f{i}", "xb").close()
        assert fs._fast is not None
        fs._fast.remember = False  # every stat a probe
        want = {i: reference(fs, f"/big/f{i}", True) for i in range(0, 5100, 17)}
        remember_head(fs, "/big")
        big = fs.itable.get(fs.stat("/big").st_ino)
        merges = fs._fast.merges
        picks = list(want.items())
        with fs._lock:
            tx = fs.journal.begin()
            fs._new_inode(tx, big, b"inside", stat.S_IFREG | 0o644, DT_REG)
            assert fs.dirs.hash(b"inside") in index.added
            for probe in range(1100):
                i, st = picks[probe % len(picks)]
                got = one_call(fs, f"/big/f{i}", True)
                if got is not None:
                    same(got, st)
            assert fs._fast.merges == merges + 1  # a stat merged, the transaction open
            assert not index.added
            tx.abort()
        assert fs.dirs.indexes.get(big.ino) is not index  # dropped by the abort
        with pytest.raises(FileNotFoundError):
            fs.stat("/big/inside")
        for i, st in want.items():
            same(stat_or_error(fs, f"/big/f{i}", True), st)
    assert fsck(dev).clean
