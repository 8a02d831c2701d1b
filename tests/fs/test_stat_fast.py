"""stat's C miss path (daxfs/fs/_stat.c) against the reference, the Python walk.

The C path (``StatPath.path``, called by ``FileSystem.stat``; its Python
reference ``_stat_fast_reference``) answers "HEAD/NAME" when HEAD resolves to
an indexed directory and the index holds NAME; the walk (``_existing`` and
``_stat_inode``) is the reference of every answer.  Every field of every answer must be the
reference's, every error the reference's error (class, errno, path), and a
record that fails a check must never be answered by the C path.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import random
from collections.abc import Iterator
from typing import Any

import pytest

import daxfs
from daxfs.errors import Corrupted
from daxfs.fs.dir import DirIndex
from daxfs.fs.filesystem import FileSystem
from daxfs.fs.layout import BLOCK_SHIFT, BLOCK_SIZE, INODES_PER_BLOCK, MAX_FILE_SIZE
from daxfs.testing import SimulatedPmem
from tests.fs import crafting

#: every field of os.stat_result, the sequence and the named ones
FIELDS = [
    "st_mode",
    "st_ino",
    "st_dev",
    "st_nlink",
    "st_uid",
    "st_gid",
    "st_size",
    "st_atime",
    "st_mtime",
    "st_ctime",
    "st_atime_ns",
    "st_mtime_ns",
    "st_ctime_ns",
    "st_blksize",
    "st_blocks",
    "st_rdev",
]


def fields(st: os.stat_result) -> tuple[Any, ...]:
    return (*tuple(st), *(getattr(st, f) for f in FIELDS))


def populate(fs: FileSystem) -> None:
    fs.mkdir("/d")
    fs.mkdir("/d/sub")
    for i in range(300):
        with fs.open(f"/d/f{i}", "xb", buffering=0) as f:
            f.write(b"x" * (i * 37))
    fs.open("/d/a-name-longer-than-fifteen", "xb").close()
    fs.open("/d/\u00e9t\u00e9", "xb").close()
    fs.symlink("/d/f1", "/d/lnk")
    fs.symlink("/d/sub", "/d/dirlnk")
    fs.symlink("/nowhere", "/d/dangling")
    fs.link("/d/f2", "/d/hard")
    fs.chmod("/d/f3", 0o4751)
    fs.utime("/d/f4", ns=(-1_500_000_001, 2_000_000_000_123_456_789))  # before 1970: floors
    fs.utime("/d/f5", ns=(-1, 0))
    fs.open("/top", "xb").close()


@pytest.fixture
def dev() -> SimulatedPmem:
    return crafting.fresh(populate, size=64 << 20)


@pytest.fixture
def fs(dev: SimulatedPmem) -> Iterator[FileSystem]:
    mounted = daxfs.mount(dev)
    yield mounted
    if mounted.mounted:
        mounted.unmount()


def reference(fs: FileSystem, path: Any, follow: bool) -> os.stat_result | OSError:
    """The walk's answer (the C path off, the path cache empty)."""
    fast, fs._fast = fs._fast, None
    fs._forget_paths()
    try:
        return fs.stat(path, follow_symlinks=follow)
    except OSError as exc:
        return exc
    finally:
        fs._fast = fast
        fs._forget_paths()


def answer(fs: FileSystem, path: Any, follow: bool) -> os.stat_result | OSError:
    fs._forget_paths()
    try:
        return fs.stat(path, follow_symlinks=follow)
    except OSError as exc:
        return exc


def same(got: os.stat_result | OSError, want: os.stat_result | OSError) -> None:
    if isinstance(want, OSError):
        assert isinstance(got, OSError), (got, want)
        assert type(got) is type(want)
        assert (got.errno, got.strerror, got.filename) == (want.errno, want.strerror, want.filename)
    else:
        assert isinstance(got, os.stat_result), got
        assert fields(got) == fields(want)


def fast(fs: FileSystem, path: Any, follow: bool = True) -> os.stat_result | None:
    """The C miss path (``StatPath.path``, as ``stat`` calls it) and its Python
    reference (``_stat_fast_reference``): the same answer, or both None."""
    assert fs._fast is not None
    kind = type(path)
    want = fs._stat_fast_reference(path, kind, follow)
    found = fs._fast.path(path, follow, fs.sup.sb.inode_hwm)
    got = fs._stat_fast_rest(path, kind, follow, found) if isinstance(found, int) else found
    assert (got is None) == (want is None), (path, got, want)
    if got is not None and want is not None:
        assert fields(got) == fields(want)
    return got


def uncache(fs: FileSystem) -> None:
    """Forget every inode but the root and the directories on the way, so that the C
    path reads records from media (and indexes stay built)."""
    keep = {fs.stat(p).st_ino for p in ("/", "/d", "/d/sub")} | {1}
    for ino in list(fs.itable.cache):
        if ino not in keep:
            fs.itable.forget(ino)


PATHS = [
    "/d/f0",
    "/d/f7",
    "/d/f299",
    "/d/sub",
    "/d/hard",
    "/d/f3",
    "/d/f4",
    "/d/f5",
    "/d/lnk",
    "/d/dirlnk",
    "/d/dangling",
    "/d/a-name-longer-than-fifteen",
    "/d/\u00e9t\u00e9",
    "/top",
    "/d",
    "/",
    "/d/missing",
    "/d/f0/x",
    "/d/f0/",
    "/d//f6",
    "d/f6",
    "/d/./f6",
    "/d/sub/../f6",
    "/d/.",
    "/d/..",
    "/d/dirlnk/..",
    "/nowhere/f1",
    "/top/f1",
    "/d/f\0",
    "/d/" + "n" * 256,
    "/" + "d/" * 2100 + "f1",
    "/d/lnk/x",
]


@pytest.mark.parametrize("follow", [True, False])
@pytest.mark.parametrize("as_bytes", [False, True])
def test_every_field_and_error_agrees_with_the_walk(
    fs: FileSystem, follow: bool, as_bytes: bool
) -> None:
    paths = [os.fsencode(p) if as_bytes else p for p in PATHS]
    fs.stat("/d/f1")  # builds the index of /d
    answered = 0
    for path in paths:
        uncache(fs)
        got = answer(fs, path, follow)
        same(got, reference(fs, path, follow))
        uncache(fs)
        fs._forget_paths()
        early = fast(fs, path, follow)  # the C path and its reference agree ...
        if early is not None:
            answered += 1
            same(early, got)  # ... and with the walk
    assert answered >= 8  # short names in /d and at the top, str and bytes alike


def test_the_c_path_answers_from_media_what_the_walk_answers(fs: FileSystem) -> None:
    fs.stat("/d/f1")
    for i in range(300):  # the walk places the inode-file blocks (InodeTable.places)
        reference(fs, f"/d/f{i}", True)
    answered = 0
    for i in range(300):
        uncache(fs)
        fs._forget_paths()
        got = fast(fs, f"/d/f{i}")
        assert got is not None, i  # a short name, the index built: the C path answers
        assert fs.itable.cached(got.st_ino) is None  # ... from media, caching nothing
        same(got, reference(fs, f"/d/f{i}", True))
        answered += 1
    assert answered == 300
    # a cached inode is answered from memory: the same fields
    fs.itable.get(fs.stat("/d/f9").st_ino)
    fs._forget_paths()
    same(fast(fs, "/d/f9"), reference(fs, "/d/f9", True))  # type: ignore[arg-type]


def test_the_c_path_leaves_links_absent_and_long_names_to_the_walk(fs: FileSystem) -> None:
    fs.stat("/d/f1")
    reference(fs, "/d/lnk", False)  # places the link's inode-file block
    uncache(fs)
    for path in ("/d/lnk", "/d/dirlnk", "/d/missing", "/d/a-name-longer-than-fifteen", "/d/."):
        assert fast(fs, path) is None, path
    assert fast(fs, "/d/lnk", False) is not None  # lstat of a link: from media
    assert fast(fs, "/d/f1/") is None  # trailing slash
    assert fast(fs, "nohead") is None


def test_hash_agrees_with_directories_hash(fs: FileSystem) -> None:
    assert fs._fast is not None
    rng = random.Random(5)
    for n in [*range(1, 260), 128, 256]:
        name = bytes(rng.randrange(1, 256) for _ in range(n))
        assert fs._fast.hash(name) == fs.dirs.hash(name)


def merged_index(fs: FileSystem, path: str, names: list[str]) -> DirIndex:
    """A new directory of empty files, its index built (a stat of the first name) and
    merged: every name in the sorted arrays, none pending."""
    fs.mkdir(path)
    for name in names:
        fs.open(f"{path}/{name}", "xb").close()
    fs.stat(f"{path}/{names[0]}")
    index = fs.dirs.ready_index(fs.itable.get(fs.stat(path).st_ino))
    assert index is not None
    index.merge()
    return index


def test_a_big_directory_is_searched_right(tmp_path: Any) -> None:
    dev = crafting.fresh(size=64 << 20)
    with daxfs.mount(dev) as fs:
        merged_index(fs, "/big", [f"{i:x}" for i in range(4000)])  # the interpolation search
        uncache_all = [ino for ino in fs.itable.cache if ino > 2]
        for ino in uncache_all:
            if not fs.itable.get(ino).is_dir:
                fs.itable.forget(ino)
        for i in range(0, 4000, 7):
            got = fast(fs, f"/big/{i:x}")
            assert got is not None
            same(got, reference(fs, f"/big/{i:x}", True))
        for i in range(4000, 4100):
            assert fast(fs, f"/big/{i:x}") is None  # absent: the walk says so
            assert isinstance(answer(fs, f"/big/{i:x}", True), FileNotFoundError)


def damaged(dev: SimulatedPmem, change: str) -> tuple[SimulatedPmem, int]:
    ino = crafting.ino_of(dev, "/d/f8")
    if change == "crc":
        crafting.write_inode_bytes(dev, ino, 40, b"\xff")  # blocks, checksum left stale
    elif change == "magic":
        crafting.write_inode_bytes(dev, ino, 0, b"XXXX")
    elif change == "ino":
        rec = dataclasses.replace(crafting.read_inode(dev, ino), ino=ino + 1)  # resealed
        blockno, offset = crafting.inode_address(dev, ino)
        block = bytearray(dev.read(blockno << BLOCK_SHIFT, BLOCK_SIZE))
        rec.pack_into(block, offset)
        dev.write(blockno << BLOCK_SHIFT, block)
    elif change == "mode":
        crafting.edit_inode(dev, ino, mode=0o170644)
    elif change == "mode-bits":
        crafting.edit_inode(dev, ino, mode=0o1100644)
    elif change == "free":
        crafting.edit_inode(dev, ino, mode=0)
    elif change == "flags":
        crafting.edit_inode(dev, ino, flags=0x80)
    elif change == "size":
        crafting.edit_inode(dev, ino, size=MAX_FILE_SIZE + 1)
    elif change == "map-kind":
        crafting.edit_inode(dev, ino, map_kind=3)  # a symlink's inline target, on a file
    elif change == "inline-count":
        crafting.edit_inode(dev, ino, map_kind=1, map_count=6)
    return dev, ino


CHANGES = [
    "crc",
    "magic",
    "ino",
    "mode",
    "mode-bits",
    "free",
    "flags",
    "size",
    "map-kind",
    "inline-count",
]


@pytest.mark.parametrize("change", CHANGES)
def test_a_damaged_record_is_left_to_the_walk_which_raises(dev: SimulatedPmem, change: str) -> None:
    _, ino = damaged(dev, change)
    with daxfs.mount(dev) as fs:
        fs.stat("/d/f1")
        uncache(fs)
        assert fs.itable.places[ino // INODES_PER_BLOCK]  # placed: the record itself is refused
        assert fast(fs, "/d/f9") is not None  # its neighbour is answered
        uncache(fs)
        assert fast(fs, "/d/f8") is None
        want = reference(fs, "/d/f8", True)
        assert isinstance(want, Corrupted), want
        assert want.errno == errno.EUCLEAN
        uncache(fs)
        same(answer(fs, "/d/f8", True), want)
        same(answer(fs, "/d/f9", True), reference(fs, "/d/f9", True))  # the rest still answers


def test_a_path_cache_hit_of_an_uncached_inode_reads_media_as_the_walk(fs: FileSystem) -> None:
    fs.stat("/d/f1")
    first = fs.stat("/d/f10")
    uncache(fs)
    hits = fs.path_hits
    again = fs.stat("/d/f10")  # path cache hit, inode not cached: the C inode() answers
    assert fs.path_hits == hits + 1
    assert fs.itable.cached(first.st_ino) is None
    same(again, first)


def test_any_location_in_the_cache_is_checked_not_taken_for_an_error(fs: FileSystem) -> None:
    """Every value of the location array is a block number, checked against the view:
    the largest one (once the C path's error value) is refused, and the walk answers."""
    first = fs.stat("/d/f10")
    uncache(fs)
    places = fs.itable.places
    fblock = first.st_ino // INODES_PER_BLOCK
    assert places[fblock] != 0
    places[fblock] = (1 << 64) - 1
    assert fs._fast is not None
    assert fs._fast.inode(first.st_ino, fs.sup.sb.inode_hwm) is None
    same(fs.stat("/d/f10"), first)  # the walk places it (InodeTable.address)


def test_unmount_releases_the_c_path(fs: FileSystem) -> None:
    fs.stat("/d/f1")
    fast = fs._fast
    assert fast is not None
    fs.unmount()
    assert fast.inode(2, 10) is None  # released: nothing to read
    with pytest.raises(daxfs.errors.InvalidArgument):
        fs.stat("/d/f1")


def test_a_cached_inode_is_answered_from_memory_not_media(fs: FileSystem) -> None:
    """The in-memory record is the truth inside a transaction (daxfs.fs.inode, invariant
    2): the C path answers a cached inode from it, field for field as _stat_inode."""
    fs.stat("/d/f1")
    reference(fs, "/d/f20", True)
    inode = fs.itable.get(fs.stat("/d/f20").st_ino)
    saved = inode.rec.uid, inode.rec.mtime_ns
    inode.rec.uid, inode.rec.mtime_ns = 4242, -7  # as a transaction in flight would have it
    try:
        fs._forget_paths()
        got = fast(fs, "/d/f20")
        assert got is not None
        assert (got.st_uid, got.st_mtime_ns, got[8], got.st_mtime) == (4242, -7, -1, -7e-9)
        same(got, fs._stat_inode(inode))
        inode.rec.size = 1 << 64  # wider than media: the Python _stat_inode answers
        fs._forget_paths()
        same(fast(fs, "/d/f20"), fs._stat_inode(inode))  # type: ignore[arg-type]
    finally:
        inode.rec.uid, inode.rec.mtime_ns = saved
        inode.rec.size = 20 * 37


def test_pending_index_changes_are_read_as_find_reads_them() -> None:
    """Creates and unlinks after the index is built sit in its ``added`` and ``removed``
    until a merge: the C path reads them first, as DirIndex.find does."""
    dev = crafting.fresh(size=64 << 20)
    with daxfs.mount(dev) as fs:
        index = merged_index(fs, "/p", [f"old{i}" for i in range(400)])
        for i in range(100):
            fs.open(f"/p/new{i}", "xb").close()
        for i in range(0, 400, 5):
            fs.unlink(f"/p/old{i}")
        assert index.added  # pending, not merged
        assert index.removed
        answered = 0
        for name in [*(f"old{i}" for i in range(400)), *(f"new{i}" for i in range(100))]:
            path = f"/p/{name}"
            fs._forget_paths()
            got = fast(fs, path)  # C and reference agree ...
            want = reference(fs, path, True)
            if got is not None:
                answered += 1
                same(got, want)  # ... and with the walk
            else:
                assert isinstance(want, FileNotFoundError), path  # only the unlinked ones
        assert answered == 400 - 80 + 100
