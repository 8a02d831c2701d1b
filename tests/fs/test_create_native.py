"""The hot steps of a create in C (daxfs/fs/_create.c) against their Python references.

Proved here:

* ``tree_put`` (BTree.put's in-place case), ``pack_inode`` (InodeRecord.pack_into)
  and ``block_records`` (Transaction._records' loop) leave what the reference
  leaves: random workloads make the same device operations with the same bytes
  and the same image with the C steps on and off, and each function against
  its reference on random inputs;
* they refuse what the reference refuses: a damaged node, a field that does
  not fit, a bad entry (nothing changed; the reference raises what it raises);
* they never write device memory (only private copies): every device
  operation stays in the commit, which the simulator sees;
* crash at every fence of creates through the C steps.
"""

from __future__ import annotations

import errno
import random
import struct
from collections.abc import Callable, Iterator

import pytest

import daxfs
from daxfs.errors import Corrupted, InvalidArgument
from daxfs.fs import _create, btree, inode, journal, layout
from daxfs.fs import super as super_mod
from daxfs.fs.filesystem import FileSystem
from daxfs.fs.layout import BLOCK_SIZE, INODE_SIZE, SB_SIZE, InodeRecord, seal_node
from daxfs.testing import SimulatedPmem
from daxfs.testing.crash import check_operation
from tests.fs.test_commit import RecordingPmem
from tests.helpers import SIZE, formatted

SWITCHES = (
    (btree, "NATIVE_PUT"),
    (inode, "NATIVE_PACK"),
    (journal, "NATIVE_RECORDS"),
    (super_mod, "NATIVE_SEAL"),
)


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """How often tree_put was called and how often it did the put (True)."""
    counts = {"calls": 0, "done": 0}
    real = _create.tree_put

    def counting(*args: object) -> bool:
        done = real(*args)  # type: ignore[arg-type]
        counts["calls"] += 1
        counts["done"] += done
        return done

    monkeypatch.setattr(_create, "tree_put", counting)
    return counts


def switched(on: bool) -> Iterator[None]:
    saved = [getattr(m, name) for m, name in SWITCHES]
    for m, name in SWITCHES:
        setattr(m, name, on)
    try:
        yield
    finally:
        for (m, name), value in zip(SWITCHES, saved, strict=True):
            setattr(m, name, value)


def test_constants_are_the_layouts() -> None:
    c = _create.CONSTANTS
    assert c["BLOCK_SIZE"] == layout.BLOCK_SIZE
    assert c["NODE_MAGIC"] == layout.NODE_MAGIC
    assert c["NODE_KEYS"] == layout.NODE_KEYS
    assert c["INTERNAL_CAP"] == layout.INTERNAL_CAP
    assert c["LEAF_CAP"] == layout.LEAF_CAP
    assert c["LEAF_HEAP_MIN"] == layout.LEAF_HEAP_MIN
    assert c["INODE_SIZE"] == layout.INODE_SIZE
    assert c["INODE_MAGIC"] == layout.INODE_MAGIC
    from daxfs.fs.store import VERIFIED_LIMIT

    assert c["VERIFIED_LIMIT"] == VERIFIED_LIMIT


# -- random workloads: the same device operations and image, C steps on and off -------


def workload(seed: int) -> Callable[[FileSystem], None]:
    """Creates (hundreds in two directories: leaf splits, puts into a leaf the same
    transaction already copied), mkdir, unlinks, renames in and across
    directories, rename over, small writes; names of 1 to 60 bytes."""

    def steps(fs: FileSystem) -> None:
        rng = random.Random(seed)
        dirs = ["/a", "/b", "/a/c"]
        for d in dirs:
            fs.mkdir(d)
        names: list[str] = []
        for i in range(700):
            op = rng.random()
            if op < 0.7 or len(names) < 10:
                name = "".join(rng.choice("xyzé_-.0") for _ in range(rng.randint(1, 60)))
                path = f"{rng.choice(dirs)}/{name}{i}"
                fs.open(path, "xb").close()
                names.append(path)
            elif op < 0.8:
                fs.unlink(names.pop(rng.randrange(len(names))))
            elif op < 0.9:
                old = names.pop(rng.randrange(len(names)))
                new = f"{rng.choice(dirs)}/r{i}"
                fs.rename(old, new)
                names.append(new)
            elif op < 0.95:
                fs.rename(names.pop(rng.randrange(len(names))), rng.choice(names))
            else:
                with fs.open(rng.choice(names), "r+b", buffering=0) as f:
                    f.pwrite(b"w" * rng.randint(1, 9000), rng.randint(0, 5000))

    return steps


@pytest.mark.usefixtures("frozen")
@pytest.mark.parametrize("seed", [1, 2])
def test_random_workload_same_operations_and_image(seed: int, calls: dict[str, int]) -> None:
    image = formatted().read(0, SIZE)
    logs, images = {}, {}
    for on in (True, False):
        dev = RecordingPmem(SIZE, image=image)
        dev.log = []
        with contextlib_switched(on), daxfs.mount(dev) as fs:
            workload(seed)(fs)
        logs[on], images[on] = dev.log, dev.read(0, SIZE)
        dev.close()
        if on:
            assert calls["done"] > 400  # the C put did most puts ...
            assert calls["done"] < calls["calls"]  # ... and refused some (splits)
            took = dict(calls)
    assert calls == took  # the reference run never called it
    assert logs[True] == logs[False]
    assert images[True] == images[False]
    assert daxfs.fsck(SimulatedPmem(SIZE, image=images[True])).clean


def contextlib_switched(on: bool) -> object:
    import contextlib

    return contextlib.contextmanager(switched)(on)


# -- tree_put --------------------------------------------------------------------------


def dir_tree(fs: FileSystem, path: str) -> btree.BTree:
    return fs.dirs._tree(fs.itable.get(fs.stat(path).st_ino))


def populated() -> tuple[SimulatedPmem, FileSystem]:
    dev = formatted()
    fs = daxfs.mount(dev)
    fs.mkdir("/d")
    for i in range(400):  # a tree of two levels
        fs.open(f"/d/f{i:04d}", "xb").close()
    return dev, fs


def put_args(tx: journal.Transaction, tree: btree.BTree, key: int, value: bytes) -> list[object]:
    return [
        tx.blocks,
        tx.new_blocks,
        tx.store.view,
        tx.verified,
        seal_node,
        tree.owner,
        tree.kind,
        tree.root,
        tree.height,
        key,
        value,
    ]


def test_tree_put_equals_the_reference_on_random_keys() -> None:
    """Random puts (new keys, replacements shorter and longer, empty values) into a
    tree of two levels: after each, the C put's private leaf equals the reference's."""
    dev, fs = populated()
    try:
        tree = dir_tree(fs, "/d")
        assert tree.height == 2
        rng = random.Random(5)
        keys = list(tree.keys(fs.store))
        done = 0
        for _ in range(300):
            key = rng.choice(keys) if rng.random() < 0.3 else rng.randrange(1 << 64)
            value = rng.randbytes(rng.choice([0, 1, 10, 30, 200]))
            results = []
            for native in (True, False):
                with fs.journal.begin() as tx:
                    if native:
                        ok = _create.tree_put(*put_args(tx, tree, key, value))  # type: ignore[arg-type]
                        done += ok
                        if not ok:
                            btree.BTree.put(tree, tx, key, value)  # what put then does
                    else:
                        saved, btree.NATIVE_PUT = btree.NATIVE_PUT, False
                        try:
                            tree.put(tx, key, value)
                        finally:
                            btree.NATIVE_PUT = saved
                    results.append({b: bytes(c) for b, (c, _) in tx.blocks.items()})
                    tx.abort()
                tree = dir_tree(fs, "/d")
            assert results[0] == results[1]
        assert done > 200
    finally:
        fs.unmount()
        dev.close()


def test_tree_put_refuses_and_changes_nothing() -> None:
    """Bad arguments or a node that fails a check: False, nothing entered, nothing
    written; a damaged leaf then makes the create raise Corrupted (the reference)."""
    dev, fs = populated()
    try:
        tree = dir_tree(fs, "/d")
        before = dev.read(0, SIZE)
        with fs.journal.begin() as tx:
            good = put_args(tx, tree, 12345, b"v")
            for at, bad in [
                (0, {}.items()),  # not a dict
                (3, frozenset()),  # not a set
                (7, 0),  # root 0
                (7, SIZE // BLOCK_SIZE + 5),  # root outside the filesystem
                (7, tree.root + 1),  # not the root: fails the block-number check
                (8, 0),  # height 0
                (8, 3),  # height wrong: level check
                (8, 99),  # height absurd
                (5, tree.owner + 1),  # another owner
                (6, tree.kind + 1),  # another kind
                (9, -1),  # not a u64
                (9, 1 << 64),
                (10, bytes(layout.MAX_VALUE + 1)),
            ]:
                args = list(good)
                args[at] = bad
                assert _create.tree_put(*args) is False, at  # type: ignore[arg-type]
            assert tx.blocks == {}
            # a leaf copy already there with another seal: Transaction.write's case
            leaf, view, _ = next(iter(tree.leaves(fs.store)))
            (key,) = struct.unpack_from("<Q", view, layout.NODE_KEYS)
            view.release()
            tx.blocks[leaf] = (bytearray(fs.store.block(leaf)), None)
            assert _create.tree_put(*put_args(tx, tree, key, b"x")) is False
            tx.blocks[leaf] = (bytearray(10), seal_node)  # not a 4 KiB block
            assert _create.tree_put(*put_args(tx, tree, key, b"x")) is False
            tx.blocks.clear()
            tx.new_blocks[leaf] = None  # new in the transaction: written in place
            assert _create.tree_put(*put_args(tx, tree, key, b"x")) is False
            tx.new_blocks.clear()
            tx.abort()
        assert dev.read(0, SIZE) == before
        # damage a leaf on media: the C put refuses, the reference raises Corrupted
        leaf, view, _ = list(tree.leaves(fs.store))[1]
        (first,) = struct.unpack_from("<Q", view, layout.NODE_KEYS)
        view.release()
        fs.store.verified.discard(leaf)
        raw = bytearray(dev.read(leaf * BLOCK_SIZE, BLOCK_SIZE))
        raw[3000] ^= 0xFF
        dev.write(leaf * BLOCK_SIZE, bytes(raw))
        with fs.journal.begin() as tx:
            assert _create.tree_put(*put_args(tx, tree, first, b"y")) is False
            assert tx.blocks == {}
            with pytest.raises(Corrupted) as info:
                tree.put(tx, first, b"y")
            assert info.value.errno == errno.EUCLEAN
            assert f"node {leaf}" in str(info.value)
            tx.abort()
    finally:
        fs.unmount()  # the device is left to the collector: the leaves' views hold it


def test_tree_put_writes_no_device_memory() -> None:
    """Only the private copy changes: the device's bytes and its operation log stay as
    they were until the commit (which the simulator sees)."""
    dev = RecordingPmem(SIZE, image=formatted().read(0, SIZE))
    fs = daxfs.mount(dev)
    try:
        fs.mkdir("/d")
        for i in range(50):
            fs.open(f"/d/f{i}", "xb").close()
        tree = dir_tree(fs, "/d")
        before = dev.read(0, SIZE)
        dev.log = []
        with fs.journal.begin() as tx:
            assert _create.tree_put(*put_args(tx, tree, 777, b"value")) is True
            assert len(tx.blocks) == 1
            assert dev.log == []
            assert dev.read(0, SIZE) == before
            tx.abort()
        dev.log = None
    finally:
        fs.unmount()
        dev.close()


# -- pack_inode ------------------------------------------------------------------------

FIELDS = [f.name for f in InodeRecord.__dataclass_fields__.values() if f.name != "inline"]
LIMITS = {"Q": (0, (1 << 64) - 1), "q": (-(1 << 63), (1 << 63) - 1), "I": (0, (1 << 32) - 1)}
LIMITS |= {"H": (0, 0xFFFF), "B": (0, 0xFF)}


def logged(rec: InodeRecord, block: int = 77) -> list[tuple[int, bytes]] | None:
    """log_inodes of one inode whose inode-file block is at device block ``block``."""
    return _create.log_inodes({rec.ino: inode.Inode(rec)}, {rec.ino // 16: block})


def test_log_inodes_packs_as_pack_into_on_random_records() -> None:
    rng = random.Random(9)
    formats = dict(layout._INODE_FIELDS)
    for _ in range(2000):
        values = {}
        for name in FIELDS:
            lo, hi = LIMITS[formats[name]]
            values[name] = rng.choice([lo, hi, rng.randint(lo, hi), 0, 1])
        rec = InodeRecord(**values, inline=rng.randbytes(128))
        ref = bytearray(INODE_SIZE)
        rec.pack_into(ref, 0)
        assert logged(rec) == [((77 << 12) + rec.ino % 16 * INODE_SIZE, bytes(ref))]
    # several inodes, in the dict's order
    recs = [InodeRecord(ino=n, mode=0o100644, nlink=1) for n in (40, 3, 17)]
    got = _create.log_inodes({r.ino: inode.Inode(r) for r in recs}, {0: 5, 1: 9, 2: 11})
    assert got is not None
    assert [o for o, _ in got] == [(11 << 12) + 8 * 256, (5 << 12) + 3 * 256, (9 << 12) + 256]


def test_log_inodes_refuses_what_the_reference_must_do() -> None:
    formats = dict(layout._INODE_FIELDS)
    for name in FIELDS:
        lo, hi = LIMITS[formats[name]]
        for bad in (lo - 1, hi + 1, 1.0, True, None):
            rec = InodeRecord(ino=5)
            setattr(rec, name, bad)
            if name == "ino":
                assert _create.log_inodes({5: inode.Inode(rec)}, {0: 77}) is None
            else:
                assert logged(rec) is None, (name, bad)
    assert logged(InodeRecord(ino=5, inline=b"short")) is None
    rec = InodeRecord(ino=5)
    assert _create.log_inodes({5: inode.Inode(rec)}, {1: 77}) is None  # not cached
    assert _create.log_inodes({5: inode.Inode(rec)}, {0: -1}) is None
    assert _create.log_inodes({5: inode.Inode(rec)}, {0: 1 << 60}) is None
    assert _create.log_inodes({5: rec}, {0: 77}) is None  # not an Inode
    assert _create.log_inodes({-5: inode.Inode(rec)}, {0: 77}) is None
    assert _create.log_inodes({}, {}) == []
    with pytest.raises(TypeError):
        _create.log_inodes([], {})  # type: ignore[arg-type]


def test_a_record_that_does_not_fit_raises_corrupted_through_the_reference() -> None:
    dev = formatted()
    with daxfs.mount(dev) as fs:
        fs.open("/f", "xb").close()
        node = fs.itable.get(fs.stat("/f").st_ino)
        node.rec.nlink = 1 << 40  # a counter past its field
        with pytest.raises(Corrupted, match="nlink"):
            fs.utime("/f", ns=(1, 1))
    dev.close()


# -- block_records ---------------------------------------------------------------------


def reference_records(
    dirty: dict[int, tuple[bytearray, object]], view: memoryview
) -> list[tuple[int, bytes]]:
    out = []
    for blockno, (copy, seal) in dirty.items():
        if seal is not None:
            seal(memoryview(copy))  # type: ignore[operator]
        base = blockno * BLOCK_SIZE
        for start, end in journal.changed_ranges(copy, view[base : base + BLOCK_SIZE]):
            out.append((base + start, bytes(copy[start:end])))
    return out


def test_block_records_equal_the_reference_on_random_changes() -> None:
    rng = random.Random(3)
    device = bytearray(rng.randbytes(BLOCK_SIZE * 8))
    view = memoryview(device)
    sealed: list[int] = []

    def other_seal(block: memoryview) -> None:
        sealed.append(len(block))
        block[100] = 0xAB

    for _ in range(300):
        dirty: dict[int, tuple[bytearray, object]] = {}
        for blockno in rng.sample(range(8), rng.randint(0, 4)):
            copy = bytearray(view[blockno * BLOCK_SIZE : (blockno + 1) * BLOCK_SIZE])
            for _ in range(rng.choice([0, 1, 3, 40])):
                copy[rng.randrange(BLOCK_SIZE)] ^= 1 << rng.randrange(8)
            dirty[blockno] = (copy, rng.choice([None, seal_node, other_seal]))
        twin = {b: (bytearray(c), s) for b, (c, s) in dirty.items()}
        got: list[tuple[int, bytes]] = []
        _create.block_records(dirty, view, seal_node, got)  # type: ignore[arg-type]
        assert got == reference_records(twin, view)
        assert {b: bytes(c) for b, (c, _) in dirty.items()} == {
            b: bytes(c) for b, (c, _) in twin.items()
        }
    assert sealed


def test_block_records_refuses_bad_entries() -> None:
    view = memoryview(bytearray(BLOCK_SIZE * 2))
    for dirty in (
        {2: (bytearray(BLOCK_SIZE), None)},  # outside the view
        {-1: (bytearray(BLOCK_SIZE), None)},
        {0: (bytearray(10), None)},  # not a block
        {0: (bytes(BLOCK_SIZE), None)},  # not a bytearray
        {0: [bytearray(BLOCK_SIZE), None]},  # not a tuple
    ):
        out: list[tuple[int, bytes]] = []
        with pytest.raises(InvalidArgument):
            _create.block_records(dirty, view, seal_node, out)  # type: ignore[arg-type]
        assert out == []

    def failing(block: memoryview) -> None:
        raise RuntimeError("seal failed")

    with pytest.raises(RuntimeError, match="seal failed"):
        _create.block_records({0: (bytearray(BLOCK_SIZE), failing)}, view, seal_node, [])


# -- crash at every fence through the C steps ------------------------------------------


def setup_300(fs: FileSystem) -> None:
    fs.mkdir("/d")
    for i in range(300):
        fs.open(f"/d/f{i:04d}", "xb").close()


@pytest.mark.parametrize("path", ["/d/new", "/d/f0150x", "/top"])
def test_crash_at_every_fence_of_a_create_through_the_c_put(
    path: str, calls: dict[str, int]
) -> None:
    def op(fs: FileSystem) -> None:
        before = calls["done"]
        fs.open(path, "xb", buffering=0).close()
        assert calls["done"] == before + 1  # the C put did this create's insert

    report = check_operation(setup_300, op, states_per_fence=3)
    assert report.fences >= 3
    assert report.before_seen >= 1
    assert report.after_seen >= 1


# -- the create's parent lookup through stat's path cache (FileSystem._lookup_new) ----


def test_create_lookup_through_the_path_cache_answers_as_the_walk() -> None:
    dev = formatted()
    with daxfs.mount(dev) as fs:
        fs.mkdir("/d")
        fs.open("/d/x", "xb").close()  # "/d" now in the path cache
        assert fs._paths[True].get("/d") == fs.stat("/d").st_ino
        fs.rename("/d", "/e")  # a removal: the cache is emptied
        fs.mkdir("/d")
        fs.open("/d/y", "xb").close()
        assert sorted(fs.listdir("/d")) == ["y"]
        assert sorted(fs.listdir("/e")) == ["x"]
        fs.symlink("/e", "/l")
        fs.open("/l/z", "xb").close()  # HEAD through a link
        assert sorted(fs.listdir("/e")) == ["x", "z"]
        with pytest.raises(FileExistsError):
            fs.open("/l/z", "xb")
        with pytest.raises(FileExistsError):
            fs.open("/e/.", "xb")
        fs.open("/f", "xb").close()
        with pytest.raises(NotADirectoryError):
            fs.open("/f/x", "xb")
        with pytest.raises(FileNotFoundError):
            fs.open("/missing/x", "xb")
        with pytest.raises(IsADirectoryError):
            fs.open("/e/new/", "xb")
        with pytest.raises(OSError, match="longer than 255") as info:
            fs.open("/e/" + "n" * 256, "xb")
        assert info.value.errno == errno.ENAMETOOLONG
        with pytest.raises(InvalidArgument):
            fs.open("/e/a\0b", "xb")
        fs.open("/e/l2", "wb").close()  # "w" on a new name: created
        fs.symlink("/e/target", "/e/dangling")
        fs.open("/e/dangling", "wb").close()  # O_CREAT follows a dangling link
        assert fs.exists("/e/target")
        fs.open("e/rel", "xb").close()  # relative: the walk
        assert fs.exists("/e/rel")
    assert daxfs.fsck(dev).clean
    dev.close()


# -- seal_super ------------------------------------------------------------------------


class Logged:
    """What SuperState._log hands a transaction: (offset, bytes) of each log_meta."""

    def __init__(self) -> None:
        self.records: list[tuple[int, bytes]] = []

    def log_meta(self, offset: int, data: bytes) -> None:
        self.records.append((offset, bytes(data)))


COUNTERS = {
    "free_blocks": "Q",
    "free_inodes": "Q",
    "used_inodes": "Q",
    "free_ino_head": "Q",
    "orphan_head": "Q",
    "next_generation": "Q",
    "state": "I",
    "mount_count": "I",
    "last_mount_ns": "q",
    "inode_hwm": "Q",
}


def super_records(sup: super_mod.SuperState, native: bool) -> list[tuple[int, bytes]] | None:
    saved, super_mod.NATIVE_SEAL = super_mod.NATIVE_SEAL, native
    try:
        logged = Logged()
        sup._log(logged)  # type: ignore[arg-type]
        return logged.records
    except Corrupted:
        return None
    finally:
        super_mod.NATIVE_SEAL = saved


def test_seal_super_equals_the_reference_on_random_counters() -> None:
    """Random counters (boundary values, misfits too), bytes after the fields that
    are not zero on the device: the same two records, or the same Corrupted."""
    assert {name: f for name, f in layout._SB_FIELDS if name in COUNTERS} == COUNTERS
    dev = formatted()
    rng = random.Random(11)
    with daxfs.mount(dev) as fs:
        sup = fs.sup
        saved = {name: getattr(sup.sb, name) for name in COUNTERS}
        tail = bytearray(dev.read(SB_SIZE, 64))
        tail[5] = 0x7F  # media is not trusted: the bytes after the fields count
        dev.write(SB_SIZE, bytes(tail))
        refused = 0
        for _ in range(500):
            for name, f in COUNTERS.items():
                lo, hi = LIMITS[f]
                value = rng.choice([lo, hi, rng.randint(lo, hi), 0, 1])
                if rng.random() < 0.02:
                    value = rng.choice([lo - 1, hi + 1])
                setattr(sup.sb, name, value)
            got = super_records(sup, True)
            assert got == super_records(sup, False)
            refused += got is None
            if got is not None:
                assert [o for o, _ in got] == [super_mod.COUNTERS_START, super_mod.SB_CRC_LINE]
        assert 0 < refused < 500
        for name, value in saved.items():
            setattr(sup.sb, name, value)
        with pytest.raises(TypeError):
            _create.seal_super(sup.sb, b"short", fs.store.block(0))
        with pytest.raises(TypeError):
            _create.seal_super(object(), bytes(192), fs.store.block(0))  # type: ignore[arg-type]
        with pytest.raises(InvalidArgument):
            _create.seal_super(sup.sb, bytes(192), bytes(100))
        tail[5] = 0
        dev.write(SB_SIZE, bytes(tail))
    dev.close()


def test_the_geometry_packed_once_is_forgotten_on_reload() -> None:
    dev = formatted()
    with daxfs.mount(dev) as fs:
        fs.open("/a", "xb").close()
        head = fs.sup._head
        assert head is not None
        assert head == bytes(fs.store.block(0)[:192])
        fs.sup.reload()
        assert fs.sup._head is None
        fs.open("/b", "xb").close()
        assert fs.sup._head == head
    assert daxfs.fsck(dev).clean
    dev.close()
