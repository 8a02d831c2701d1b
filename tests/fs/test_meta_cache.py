"""The in-memory indexes and caches of the metadata path (docs/ARCHITECTURE.md, "Fast paths
and in-memory indexes"): stat's path cache, the directory indexes, the lazily made
inode lock.  Each must answer as the media does, after every kind of namespace change."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator

import pytest

import daxfs
from daxfs.fs.btree import BTree
from daxfs.fs.dir import MAYBE, DirIndex
from daxfs.fs.filesystem import FileSystem
from daxfs.fs.inode import Inode
from daxfs.fs.layout import INO_ROOT
from daxfs.testing import SimulatedPmem

SIZE = 32 << 20


@pytest.fixture
def fs() -> Iterator[FileSystem]:
    device = SimulatedPmem(SIZE)
    daxfs.mkfs(device)
    mounted = daxfs.mount(device)
    yield mounted
    if mounted.mounted:
        for f in mounted.open_files():
            f.close()
        mounted.unmount()


def touch(fs: FileSystem, path: str) -> None:
    fs.open(path, "xb", buffering=0).close()


def directory(fs: FileSystem, path: str) -> Inode:
    found, _ = fs._lookup(path)
    assert found.inode is not None
    assert found.inode.is_dir
    return found.inode


def tree_keys(fs: FileSystem, inode: Inode) -> set[int]:
    return set(fs.dirs._tree(inode).keys(fs.store))


def index_keys(index: DirIndex) -> set[int]:
    return (set(index.keys) - index.removed) | set(index.added)


def index_answers(fs: FileSystem, d: Inode) -> dict[bytes, tuple[int, int]]:
    """Every name of directory ``d`` the index answers for, checked against the tree."""
    index = fs.dirs._indexes[d.ino]
    out = {}
    for _, name, ino, dtype in fs.dirs.entries(fs.store, d):
        found = index.find(fs.dirs.hash(name), name)
        if found is not MAYBE:
            assert found == (ino, dtype), name
            out[name] = found
    return out


# -- stat's path cache ----------------------------------------------------------------


def test_repeated_stat_hits_the_path_cache(fs: FileSystem) -> None:
    fs.mkdir("/d")
    touch(fs, "/d/a")
    first = fs.stat("/d/a")
    hits, misses = fs.path_hits, fs.path_misses
    again = fs.stat("/d/a")
    assert (fs.path_hits, fs.path_misses) == (hits + 1, misses)
    assert again == first
    assert fs.stat(b"/d/a") == first  # bytes paths are cached apart, same answer
    assert fs.stat(b"/d/a") == first
    assert fs.path_hits == hits + 2


def test_path_cache_takes_only_str_and_bytes_and_needs_a_mount(fs: FileSystem) -> None:
    import pathlib

    touch(fs, "/f")
    ino = fs.stat("/f").st_ino
    misses = fs.path_misses
    assert fs.stat(pathlib.PurePosixPath("/f")).st_ino == ino  # resolved, not cached
    assert fs.stat(pathlib.PurePosixPath("/f")).st_ino == ino
    assert fs.path_misses == misses
    assert fs.lstat("/f").st_ino == ino  # lstat has its own entries
    assert fs.path_misses == misses + 1
    fs.unmount()
    with pytest.raises(daxfs.errors.InvalidArgument):
        fs.stat("/f")


def test_path_cache_sees_every_change_of_what_a_path_names(fs: FileSystem) -> None:
    fs.mkdir("/d")
    touch(fs, "/d/a")
    touch(fs, "/d/b")
    a, b = fs.stat("/d/a").st_ino, fs.stat("/d/b").st_ino
    fs.symlink("/d/a", "/l")
    assert fs.stat("/l").st_ino == a
    assert fs.lstat("/l").st_ino not in (a, b)
    fs.rename("/d/b", "/d/a")  # over a cached name: retarget
    assert fs.stat("/d/a").st_ino == b
    assert fs.stat("/l").st_ino == b
    with pytest.raises(FileNotFoundError):
        fs.stat("/d/b")
    fs.unlink("/l")  # a symbolic link replaced by another target
    touch(fs, "/c")
    fs.symlink("/c", "/l")
    assert fs.stat("/l").st_ino == fs.stat("/c").st_ino
    fs.rename("/d", "/e")  # a directory on the way moves
    with pytest.raises(FileNotFoundError):
        fs.stat("/d/a")
    assert fs.stat("/e/a").st_ino == b
    fs.unlink("/e/a")
    with pytest.raises(FileNotFoundError):
        fs.stat("/e/a")
    fs.rmdir("/e")
    with pytest.raises(FileNotFoundError):
        fs.stat("/e")
    fs.mkdir("/e")  # the same path, a new directory
    assert fs.stat("/e").st_nlink == 2
    fs.link("/c", "/e/c")
    assert fs.stat("/e/c").st_ino == fs.stat("/c").st_ino
    assert fs.stat("/e/c").st_nlink == 2


def test_path_cache_follows_attribute_changes(fs: FileSystem) -> None:
    touch(fs, "/f")
    assert fs.stat("/f").st_size == 0
    with fs.open("/f", "r+b", buffering=0) as f:
        f.write(b"12345")
    fs.chmod("/f", 0o600)
    st = fs.stat("/f")
    assert (st.st_size, st.st_mode & 0o777) == (5, 0o600)


def test_stat_result_fields(fs: FileSystem) -> None:
    fs.mkdir("/d")
    fs.utime("/d", ns=(1_500_000_000_123_456_789, 1_600_000_000_987_654_321))
    st = fs.stat("/d")
    assert st.st_atime_ns == 1_500_000_000_123_456_789
    assert st.st_mtime_ns == 1_600_000_000_987_654_321
    assert st[7] == st.st_atime_ns // 10**9
    assert st[8] == st.st_mtime_ns // 10**9
    assert st.st_mtime == 1_600_000_000_987_654_321 / 1e9
    assert st.st_blksize == 4096
    assert st.st_rdev == 0
    assert st.st_size == max(1, fs.itable.get(st.st_ino).rec.blocks) * 4096
    assert st.st_blocks == fs.itable.get(st.st_ino).rec.blocks * 8


# -- directory indexes---------------------------------------------------------------------


def test_index_answers_without_the_tree(fs: FileSystem) -> None:
    fs.mkdir("/d")
    for i in range(300):
        touch(fs, f"/d/f{i}")
    touch(fs, "/d/" + "long" * 10)  # past INLINE_NAME: the tree answers
    d = directory(fs, "/d")
    ino = fs.stat("/d/f7").st_ino
    fs.dirs._dcache.clear()
    before = fs.dirs.index_answers
    assert fs.dirs.lookup(fs.store, d, b"f7") == (ino, 8)
    assert fs.dirs.lookup(fs.store, d, b"nope") is None
    assert fs.dirs.index_answers == before + 2
    assert fs.dirs.lookup(fs.store, d, b"long" * 10) is not None
    assert fs.dirs.index_answers == before + 2
    index = fs.dirs._indexes[d.ino]
    assert index_keys(index) == tree_keys(fs, d)
    assert len(index_answers(fs, d)) == 300


def test_key_index_stays_equal_to_the_tree(fs: FileSystem) -> None:
    """Random creates, renames and unlinks (enough to merge the index several times)."""
    fs.mkdir("/d")
    fs.mkdir("/o")
    rng = random.Random(5)
    live: set[str] = set()
    touch(fs, "/d/seed")
    live.add("seed")
    fs.stat("/d/seed")  # builds the index
    for step in range(1500):
        op = rng.random()
        if op < 0.55 or not live:
            name = f"n{rng.randrange(4000)}"
            if name in live:
                with pytest.raises(FileExistsError):
                    touch(fs, f"/d/{name}")
            else:
                touch(fs, f"/d/{name}")
                live.add(name)
        elif op < 0.7:
            old = rng.choice(sorted(live))
            new = f"n{rng.randrange(4000)}"
            fs.rename(f"/d/{old}", f"/d/{new}")
            live.discard(old)
            live.add(new)
        elif op < 0.8:
            old = rng.choice(sorted(live))
            fs.rename(f"/d/{old}", f"/o/{old}{step}")  # out of the directory
            live.discard(old)
        else:
            old = rng.choice(sorted(live))
            fs.unlink(f"/d/{old}")
            live.discard(old)
    d = directory(fs, "/d")
    index = fs.dirs._indexes[d.ino]
    assert index_keys(index) == tree_keys(fs, d)
    assert len(index_answers(fs, d)) == len(live)
    # the count of keys held, by index and in total, never drifts (it once grew by
    # one for every create followed by an unlink, until indexes evicted each other)
    assert len(index) == len(tree_keys(fs, d))
    assert fs.dirs._indexed == sum(len(i) for i in fs.dirs._indexes.values())
    assert sorted(fs.listdir("/d")) == sorted(live)
    for i in range(4000):
        assert fs.exists(f"/d/n{i}") == (f"n{i}" in live)


def test_aborted_change_drops_the_key_index(fs: FileSystem) -> None:
    fs.mkdir("/d")
    touch(fs, "/d/a")
    d = directory(fs, "/d")
    assert fs.dirs.lookup(fs.store, d, b"a") is not None
    assert d.ino in fs.dirs._indexes

    class Boom(Exception):
        pass

    ino = fs.stat("/d/a").st_ino
    with pytest.raises(Boom), fs._lock, fs.journal.begin() as tx:
        fs.dirs.add(tx, d, b"ghost", ino, 8)
        assert fs.dirs.lookup(tx, d, b"ghost") == (ino, 8)  # the transaction sees it
        raise Boom
    assert d.ino not in fs.dirs._indexes
    assert fs.dirs.lookup(fs.store, d, b"ghost") is None
    assert not fs.exists("/d/ghost")
    touch(fs, "/d/ghost")
    assert fs.exists("/d/ghost")


def test_names_that_share_a_hash_are_told_apart(fs: FileSystem) -> None:
    """Every name collides: the index can only say "maybe"; the tree decides."""
    fs.dirs.hash = lambda name: 0x5EED  # type: ignore[method-assign]
    fs.mkdir("/d")
    touch(fs, "/d/a")
    touch(fs, "/d/b")
    a, b = fs.stat("/d/a").st_ino, fs.stat("/d/b").st_ino
    assert a != b
    d = directory(fs, "/d")
    assert d.ino in fs.dirs._indexes
    assert fs.dirs._indexes[d.ino].find(0x5EED, b"a") is MAYBE  # two names: the tree decides
    assert fs.dirs.lookup(fs.store, d, b"c") is None  # its key is in the index; the name is not
    assert not fs.exists("/d/c")
    touch(fs, "/d/c")
    fs.unlink("/d/a")
    assert not fs.exists("/d/a")
    assert fs.stat("/d/b").st_ino == b
    assert 0x5EED in fs.dirs._indexes[d.ino]  # b and c still hold the key
    fs.unlink("/d/b")
    # one name left: the index holds it, and answers for it alone
    assert fs.dirs._indexes[d.ino].find(0x5EED, b"b") is None
    assert fs.dirs.lookup(fs.store, d, b"c") == (fs.stat("/d/c").st_ino, 8)
    fs.unlink("/d/c")
    assert 0x5EED not in fs.dirs._indexes[d.ino]
    assert not fs.exists("/d/b")


def test_a_reused_directory_inode_gets_a_new_index(fs: FileSystem) -> None:
    fs.mkdir("/d")
    touch(fs, "/d/a")
    d = directory(fs, "/d")
    fs.stat("/d/a")
    ino = d.ino
    fs.unlink("/d/a")
    fs.rmdir("/d")
    assert ino not in fs.dirs._indexes
    fs.mkdir("/e")
    e = directory(fs, "/e")
    assert e.ino == ino  # the free list gives the inode back
    assert not fs.exists("/e/a")
    touch(fs, "/e/b")
    assert fs.exists("/e/b")


def test_index_merge_keeps_every_answer() -> None:
    import array

    index = DirIndex(array.array("Q"), array.array("Q"), b"", 1)
    for k in range(0, 600, 2):
        index.put(k, [(b"n%d" % k, 100 + k, 8)])  # merges at 256
    index.merge()
    index.put(3, [(b"x", 7, 4), (b"y", 8, 8)])  # a collision: the tree decides
    index.put(4, [(b"n4b", 9, 10)])  # changed
    index.discard(6)
    for _ in range(2):
        assert index.find(2, b"n2") == (102, 8)
        assert index.find(2, b"n3") is None
        assert index.find(3, b"x") is MAYBE
        assert index.find(4, b"n4b") == (9, 10)
        assert index.find(4, b"n4") is None
        assert index.find(6, b"n6") is None
        assert index.find(5, b"n5") is None
        index.merge()
    assert list(index.keys) == sorted({*range(0, 600, 2), 3} - {6})


def test_a_damaged_directory_is_read_through_its_tree(fs: FileSystem) -> None:
    """Keys out of order: no index (lookups use the tree, as before indexes)."""
    fs.mkdir("/d")
    for i in range(300):
        touch(fs, f"/d/f{i}")
    d = directory(fs, "/d")
    leaves = list(fs.dirs._tree(d).leaves(fs.store))
    swapped = [leaves[1], leaves[0], *leaves[2:]]
    assert DirIndex.build(iter(swapped), fs.sup.sb.inode_hwm, 1) is None
    assert DirIndex.build(iter(leaves), fs.sup.sb.inode_hwm, 1) is not None


def test_btree_keys_lists_every_key(fs: FileSystem) -> None:
    fs.mkdir("/d")
    for i in range(600):  # several leaves, two levels
        touch(fs, f"/d/{i}")
    d = directory(fs, "/d")
    assert d.rec.map_height >= 2
    tree: BTree = fs.dirs._tree(d)
    keys = list(tree.keys(fs.store))
    assert keys == sorted(keys)
    assert len(keys) == 600
    assert keys == [k for k, _ in tree.items(fs.store)]


# -- the lazily made inode lock -----------------------------------------------------------


def test_no_inode_lock_until_one_is_needed(fs: FileSystem) -> None:
    touch(fs, "/f")
    fs.stat("/f")
    inode = fs.itable.get(fs.stat("/f").st_ino)
    assert not inode.lock_made()
    with fs.open("/f", "r+b", buffering=0) as f:
        f.write(b"x")
    assert inode.lock_made()
    assert fs.itable.get(INO_ROOT) is not None


def test_inode_lock_is_made_once_under_a_race(fs: FileSystem) -> None:
    touch(fs, "/f")
    for _ in range(20):
        inode = fs.itable.get(fs.stat("/f").st_ino)
        if inode.lock_made():
            del inode.lock
        assert not inode.lock_made()
        barrier = threading.Barrier(8)
        seen: list[object] = []

        def take(
            node: Inode = inode, wait: threading.Barrier = barrier, out: list[object] = seen
        ) -> None:
            wait.wait()
            out.append(node.lock)

        threads = [threading.Thread(target=take) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len({id(lock) for lock in seen}) == 1
        assert seen[0] is inode.lock


def test_inode_record_decodes_every_field_to_its_place() -> None:
    """unpack_from builds the record positionally: each field must land where it was."""
    import dataclasses

    from daxfs.fs.layout import INLINE_AREA, InodeRecord

    values = {f.name: 100 + i for i, f in enumerate(dataclasses.fields(InodeRecord))}
    values.update(ino=5, mode=0o100644, map_kind=2, map_height=1, map_count=3)
    values["inline"] = bytes(range(INLINE_AREA))
    record = InodeRecord(**values)  # type: ignore[arg-type]
    buf = bytearray(4096)
    record.pack_into(buf, 256)
    assert InodeRecord.unpack_from(buf, 256, 5) == record
