"""The B+tree: a model-checked state machine, bulk loads, corruption, crash at every fence."""

from __future__ import annotations

import contextlib
import random
import struct
from bisect import bisect_left, bisect_right

import pytest
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from daxfs.errors import Corrupted, InvalidArgument, NoSpace
from daxfs.fs.btree import KEY_LIMIT, BTree
from daxfs.fs.journal import Journal, Transaction
from daxfs.fs.layout import (
    BLOCK_SIZE,
    INTERNAL_CAP,
    INTERNAL_CHILDREN,
    LEAF_CAP,
    MAX_VALUE,
    NODE_HEADER,
    TREE_DIRECTORY,
    TREE_EXTENTS,
    seal_node,
)
from daxfs.fs.store import PmemStore
from daxfs.testing import PowerFailure, SimulatedPmem

JSTART, JBLOCKS = 1, 512  # journal: blocks 1..512
META = JSTART + JBLOCKS  # the tree's (root, height), as its inode would hold them
FIRST_NODE = META + 1
OWNER = 12
_META = struct.Struct("<QQ")


class Blocks:
    """A NodeAllocator over a range of blocks; a block freed in a transaction is reusable
    only after the commit (as jbd2 does), and an abort undoes allocations and frees."""

    def __init__(self, first: int, end: int) -> None:
        self.free = list(range(end - 1, first - 1, -1))  # pop() hands out the lowest
        self.used: set[int] = set()

    def alloc_node(self, tx: Transaction, goal: int) -> int:
        if not self.free:
            raise NoSpace("test allocator: no free block")
        blockno = self.free.pop()
        self.used.add(blockno)

        def undo() -> None:
            self.used.discard(blockno)
            self.free.append(blockno)

        tx.on_abort(undo)
        return blockno

    def free_node(self, tx: Transaction, blockno: int) -> None:
        assert blockno in self.used, f"double free of block {blockno}"
        self.used.remove(blockno)
        tx.on_commit(lambda: self.free.append(blockno))
        tx.on_abort(lambda: self.used.add(blockno))


class Fs:
    """A device, store, journal, allocator and one tree whose root lives in block META."""

    def __init__(self, blocks: int = 4096, dev: SimulatedPmem | None = None) -> None:
        self.dev = dev or SimulatedPmem(blocks * BLOCK_SIZE)
        self.store = PmemStore(self.dev)
        self.journal = Journal(self.store, JSTART, JBLOCKS)
        self.journal.recover()
        self.alloc = Blocks(FIRST_NODE, self.store.block_count)
        root, height = _META.unpack_from(self.store.block(META))
        self.tree = BTree(OWNER, TREE_DIRECTORY, root, height, self.alloc)

    def save(self, tx: Transaction) -> None:
        _META.pack_into(tx.write(META), 0, self.tree.root, self.tree.height)

    def put_all(self, entries: dict[int, bytes], batch: int = 1000) -> None:
        items = list(entries.items())
        for i in range(0, len(items), batch):
            with self.journal.begin() as tx:
                for key, value in items[i : i + batch]:
                    self.tree.put(tx, key, value)
                self.save(tx)

    def assert_sound(self, model: dict[int, bytes]) -> None:
        assert self.tree.check(self.store) == []
        assert list(self.tree.items(self.store)) == sorted(model.items())
        assert set(self.tree.nodes(self.store)) == self.alloc.used


def value_for(key: int, size: int, salt: int = 0) -> bytes:
    stamp = struct.pack("<QI", key, salt)
    return (stamp * (size // len(stamp) + 1))[:size]


def node_levels(fs: Fs) -> dict[int, int]:
    return {b: NODE_HEADER.unpack_from(fs.store.block(b))[4] for b in fs.tree.nodes(fs.store)}


# -------------------------------------------------------------------------- state machine

KEYS = st.one_of(st.integers(0, 300), st.integers(0, KEY_LIMIT - 1))
SIZES = st.one_of(st.integers(0, 24), st.integers(0, MAX_VALUE))
OPS = st.lists(st.tuples(st.sampled_from(["put", "put", "delete"]), KEYS, SIZES), max_size=25)


class Abort(Exception):
    pass


class BTreeMachine(RuleBasedStateMachine):
    """The tree against a dict, one transaction of several operations per step."""

    def __init__(self) -> None:
        super().__init__()
        self.fs = Fs(blocks=1536)
        self.model: dict[int, bytes] = {}
        self.salt = 0

    def _sorted(self) -> list[int]:
        return sorted(self.model)

    @rule(ops=OPS, abort=st.integers(0, 7))
    def transaction(self, ops: list[tuple[str, int, int]], abort: int) -> None:
        tree, model = self.fs.tree, dict(self.model)
        saved = (tree.root, tree.height)
        try:
            with self.fs.journal.begin() as tx:
                for name, key, size in ops:
                    if name == "put":
                        self.salt += 1
                        model[key] = value_for(key, size, self.salt)
                        tree.put(tx, key, model[key])
                    else:
                        assert tree.delete(tx, key) == (model.pop(key, None) is not None)
                    assert tree.get(tx, key) == model.get(key)  # through the dirty copies
                self.fs.save(tx)
                if abort == 0:
                    raise Abort
        except Abort:
            tree.root, tree.height = saved  # what the caller does with its inode
        else:
            self.model = model

    @precondition(lambda self: len(self.model) < 400)
    @rule(seed=st.integers(0, 2**32))
    def grow(self, seed: int) -> None:
        rng = random.Random(seed)
        new = {rng.randrange(KEY_LIMIT): b"" for _ in range(150)}
        for key in new:
            new[key] = value_for(key, rng.choice([0, 8, 100, 900, 1700, MAX_VALUE]))
        self.fs.put_all(new)
        self.model.update(new)

    @rule(key=KEYS)
    def query(self, key: int) -> None:
        keys = self._sorted()
        tree, store = self.fs.tree, self.fs.store
        assert tree.get(store, key) == self.model.get(key)
        i = bisect_right(keys, key)
        assert tree.floor(store, key) == ((keys[i - 1], self.model[keys[i - 1]]) if i else None)
        i = bisect_left(keys, key)
        expect = (keys[i], self.model[keys[i]]) if i < len(keys) else None
        assert tree.ceiling(store, key) == expect

    @rule(start=KEYS, end=KEYS)
    def scan(self, start: int, end: int) -> None:
        expect = [(k, self.model[k]) for k in self._sorted() if start <= k < end]
        assert list(self.fs.tree.items(self.fs.store, start, end)) == expect

    @rule()
    def delete_every_other(self) -> None:
        with self.fs.journal.begin() as tx:
            for key in self._sorted()[::2]:
                assert self.fs.tree.delete(tx, key)
                del self.model[key]
            self.fs.save(tx)

    @precondition(lambda self: len(self.model) > 50)
    @rule()
    def clear(self) -> None:
        used = len(self.fs.alloc.used)
        with self.fs.journal.begin() as tx:
            assert self.fs.tree.clear(tx) == used
            self.fs.save(tx)
        assert self.fs.alloc.used == set()
        assert (self.fs.tree.root, self.fs.tree.height) == (0, 0)
        self.model = {}

    @invariant()
    def sound(self) -> None:
        self.fs.assert_sound(self.model)
        event(f"height {self.fs.tree.height}")

    def teardown(self) -> None:
        self.fs.store.close()


BTreeMachine.TestCase.settings = settings(
    max_examples=100, stateful_step_count=25, deadline=None, derandomize=True
)
TestBTreeMachine = BTreeMachine.TestCase


# -------------------------------------------------------------------------- deterministic


def test_bulk_sequential_then_random_then_delete_all() -> None:
    fs = Fs()
    model = {k: value_for(k, 16) for k in range(20_000)}  # an extent map being appended
    fs.put_all(model)
    fs.assert_sound(model)
    leaves = sum(1 for level in node_levels(fs).values() if level == 0)
    assert leaves == -(-20_000 // LEAF_CAP)  # appends fill every leaf
    used = len(fs.alloc.used)
    with fs.journal.begin() as tx:
        assert fs.tree.clear(tx) == used
        fs.save(tx)
    assert fs.alloc.used == set()
    rng = random.Random(1)
    model = {rng.randrange(KEY_LIMIT): b"" for _ in range(20_000)}
    model = {k: value_for(k, rng.randrange(200)) for k in model}  # a directory
    fs.put_all(model)
    fs.assert_sound(model)
    assert fs.tree.height == 3
    keys = sorted(model)
    for probe in rng.sample(keys, 200):
        assert fs.tree.get(fs.store, probe) == model[probe]
        i = bisect_left(keys, probe)
        assert fs.tree.floor(fs.store, probe - 1) == (
            (keys[i - 1], model[keys[i - 1]]) if i else None
        )
        assert fs.tree.ceiling(fs.store, probe + 1) == (
            (keys[i + 1], model[keys[i + 1]]) if i + 1 < len(keys) else None
        )
    rng.shuffle(keys)
    for i in range(0, len(keys), 2000):
        with fs.journal.begin() as tx:
            for key in keys[i : i + 2000]:
                assert fs.tree.delete(tx, key)
                del model[key]
            fs.save(tx)
        assert fs.tree.check(fs.store) == []
    fs.assert_sound({})
    assert (fs.tree.root, fs.tree.height, fs.alloc.used) == (0, 0, set())


def test_deleted_leaf_minimum_keeps_floor_and_ceiling_right() -> None:
    fs = Fs()
    model = {k: value_for(k, 16) for k in range(0, 3000, 3)}
    fs.put_all(model)
    with fs.journal.begin() as tx:  # empty the middle of the key space: whole leaves go
        for key in range(600, 2400, 3):
            assert fs.tree.delete(tx, key)
            del model[key]
        fs.save(tx)
    fs.assert_sound(model)
    assert fs.tree.floor(fs.store, 2000) == (597, model[597])
    assert fs.tree.ceiling(fs.store, 598) == (2400, model[2400])
    assert list(fs.tree.items(fs.store, 590, 2410)) == [
        (k, model[k]) for k in (591, 594, 597, 2400, 2403, 2406, 2409)
    ]


def test_values_of_every_size_and_compaction() -> None:
    fs = Fs()
    with fs.journal.begin() as tx:
        fs.tree.put(tx, 7, bytes(MAX_VALUE))  # fits an empty leaf
        fs.tree.put(tx, 6, b"")  # so does an empty one beside it
        fs.tree.put(tx, 8, b"x")
        with pytest.raises(InvalidArgument):
            fs.tree.put(tx, 9, bytes(MAX_VALUE + 1))
        with pytest.raises(InvalidArgument):
            fs.tree.put(tx, KEY_LIMIT, b"x")
        fs.save(tx)
    assert fs.tree.height == 2  # the large value took a leaf of its own
    assert fs.tree.get(fs.store, 6) == b""
    with fs.journal.begin() as tx:
        assert fs.tree.clear(tx) == 3
        assert (fs.tree.root, fs.tree.height) == (0, 0)
        for k in range(10):  # ten values of 200 bytes, then each grown: garbage, compaction
            fs.tree.put(tx, k, bytes([k]) * 200)
        for size in (210, 220, 240):
            for k in range(10):
                fs.tree.put(tx, k, bytes([k]) * size)
        fs.save(tx)
    fs.assert_sound({k: bytes([k]) * 240 for k in range(10)})
    assert fs.tree.height == 1


def test_three_way_split_into_a_full_parent_grows_the_tree() -> None:
    fs = Fs()
    model = {k: value_for(k, 1300) for k in range(0, 10 * INTERNAL_CAP, 10)}  # one per leaf
    fs.put_all(model)
    assert fs.tree.height == 2
    assert len(fs.alloc.used) == INTERNAL_CAP + 1  # the root is full
    model[15] = value_for(15, MAX_VALUE - 1300)
    model[12] = value_for(12, MAX_VALUE)  # fits neither beside 10 nor beside 15
    fs.put_all({15: model[15]})
    fs.put_all({12: model[12]})
    fs.assert_sound(model)
    assert fs.tree.height == 3


def test_no_space_leaves_the_tree_unchanged() -> None:
    fs = Fs()
    fs.alloc.free = fs.alloc.free[-20:]  # 20 free blocks
    model: dict[int, bytes] = {}
    with fs.journal.begin() as tx:
        with pytest.raises(NoSpace):
            for key in range(1000):
                fs.tree.put(tx, key, value_for(key, 1000))
                model[key] = value_for(key, 1000)
        fs.save(tx)
    fs.assert_sound(model)
    assert len(model) > 20


def test_aborted_transaction_changes_nothing() -> None:
    fs = Fs()
    model = {k: value_for(k, 40) for k in range(500)}
    fs.put_all(model)
    saved = (fs.tree.root, fs.tree.height)
    with pytest.raises(Abort), fs.journal.begin() as tx:
        for k in range(500, 3000):
            fs.tree.put(tx, k, b"new")
        for k in range(0, 500, 2):
            fs.tree.delete(tx, k)
        raise Abort
    fs.tree.root, fs.tree.height = saved
    fs.assert_sound(model)


@pytest.mark.slow
def test_a_million_directory_entries() -> None:
    fs = Fs(blocks=40_000)
    rng = random.Random(3)
    model = {rng.getrandbits(64): b"" for _ in range(1_000_000)}
    model = {k: value_for(k, 28) for k in model}  # one 16-byte name per hash
    fs.put_all(model, batch=400)
    fs.assert_sound(model)
    assert fs.tree.height == 3
    for key in rng.sample(list(model), 2000):
        assert fs.tree.get(fs.store, key) == model[key]
    used = len(fs.alloc.used)
    with fs.journal.begin() as tx:
        assert fs.tree.clear(tx) == used
    assert fs.alloc.used == set()


# -------------------------------------------------------------------------- corruption


def corrupt_fixture() -> tuple[Fs, dict[int, bytes], int, int]:
    """A two-level tree, a leaf of it and a key in that leaf."""
    fs = Fs(blocks=1024)
    model = {k: value_for(k, 30) for k in range(0, 5000, 5)}
    fs.put_all(model)
    leaf = max(b for b, level in node_levels(fs).items() if level == 0)
    (key,) = struct.unpack_from("<Q", fs.store.block(leaf), 64)
    return fs, model, leaf, key


def test_flipped_byte_is_reported_with_its_block() -> None:
    fs, _, leaf, key = corrupt_fixture()
    fs.store.view[leaf * BLOCK_SIZE + 3000] ^= 0x40
    fs.store.verified.clear()  # checksums are checked on the first read in a mount
    with pytest.raises(Corrupted, match=f"inode {OWNER}, node {leaf}: checksum mismatch"):
        fs.tree.get(fs.store, key)
    with pytest.raises(Corrupted, match=f"node {leaf}"):
        list(fs.tree.items(fs.store))
    problems = fs.tree.check(fs.store)
    assert problems == [f"B+tree of inode {OWNER}, node {leaf}: checksum mismatch"]
    fs.store.view[fs.tree.root * BLOCK_SIZE + 70] ^= 1  # the root: every lookup fails
    fs.store.verified.clear()
    with pytest.raises(Corrupted, match=f"node {fs.tree.root}"):
        fs.tree.floor(fs.store, 0)


def test_verified_nodes_are_not_rechecked_in_a_mount() -> None:
    fs, _, leaf, key = corrupt_fixture()
    assert fs.tree.get(fs.store, key) is not None
    assert leaf in fs.store.verified
    fs.store.view[leaf * BLOCK_SIZE + 3000] ^= 0x40  # damage after the first read
    assert fs.tree.get(fs.store, key) is not None  # trusted until the next mount
    fs.store.verified.clear()
    with pytest.raises(Corrupted, match="checksum mismatch"):
        fs.tree.get(fs.store, key)


def test_misdirected_foreign_and_wrong_level_nodes() -> None:
    fs, _, leaf, key = corrupt_fixture()
    other = min(b for b, level in node_levels(fs).items() if level == 0)
    saved = bytes(fs.store.block(leaf))
    fs.store.view[leaf * BLOCK_SIZE : (leaf + 1) * BLOCK_SIZE] = fs.store.block(other)
    with pytest.raises(Corrupted, match=f"node {leaf}: header says it is block {other}"):
        fs.tree.get(fs.store, key)
    assert len(fs.tree.check(fs.store)) == 1
    fs.store.view[leaf * BLOCK_SIZE : (leaf + 1) * BLOCK_SIZE] = saved
    for tree, match in [
        (BTree(OWNER + 1, TREE_DIRECTORY, fs.tree.root, 2, fs.alloc), "belongs to inode 12"),
        (BTree(OWNER, TREE_EXTENTS, fs.tree.root, 2, fs.alloc), "tree kind 2, expected 1"),
        (BTree(OWNER, TREE_DIRECTORY, fs.tree.root, 3, fs.alloc), "level 1, expected 2"),
        (BTree(OWNER, TREE_DIRECTORY, leaf, 2, fs.alloc), "level 0, expected 1"),
        (BTree(OWNER, TREE_DIRECTORY, 0, 2, fs.alloc), "root 0 with height 2"),
        (BTree(OWNER, TREE_DIRECTORY, 10**9, 2, fs.alloc), "outside the filesystem"),
    ]:
        with pytest.raises(Corrupted, match=match):
            tree.get(fs.store, key)
        problems = tree.check(fs.store)
        assert len(problems) == 1
        assert match in problems[0]


def reseal(fs: Fs, blockno: int, offset: int, fmt: str, *values: int) -> None:
    """Change a node and give it a valid checksum: damage that only structure checks see."""
    view = fs.store.block(blockno)
    struct.pack_into(fmt, view, offset, *values)
    seal_node(view)


def test_bad_child_pointers_with_valid_checksums() -> None:
    fs, _, _, _ = corrupt_fixture()
    root = fs.tree.root
    children = struct.unpack_from("<2Q", fs.store.block(root), INTERNAL_CHILDREN)
    reseal(fs, root, INTERNAL_CHILDREN + 8, "<Q", 10**12)  # outside the device
    with pytest.raises(Corrupted, match="outside the filesystem"):
        list(fs.tree.items(fs.store))
    assert any("outside the filesystem" in p for p in fs.tree.check(fs.store))
    reseal(fs, root, INTERNAL_CHILDREN + 8, "<Q", children[0])  # a DAG
    with pytest.raises(Corrupted, match="reachable twice"):
        list(fs.tree.nodes(fs.store))
    assert any("reachable twice" in p for p in fs.tree.check(fs.store))
    reseal(fs, root, INTERNAL_CHILDREN + 8, "<Q", root)  # a cycle
    with pytest.raises(Corrupted, match="level 1, expected 0"):
        list(fs.tree.items(fs.store))
    assert fs.tree.check(fs.store)


def test_leaves_and_nodes_are_one_walk() -> None:
    """``leaves`` is ``nodes`` restricted to level 0, in the same order, with the same
    checks: the leaves' keys are every key in order, and damage that stops one walk
    (a node reachable twice, a node failing its checksum) stops the other too."""
    fs, model, leaf, _ = corrupt_fixture()
    levels = node_levels(fs)
    assert max(levels.values()) >= 1, "the fixture must have internal nodes"
    leaves = list(fs.tree.leaves(fs.store))
    assert [b for b, _, _ in leaves] == [b for b in fs.tree.nodes(fs.store) if levels[b] == 0]
    keys = [k for _, view, count in leaves for k in struct.unpack_from(f"<{count}Q", view, 64)]
    assert keys == sorted(model) == list(fs.tree.keys(fs.store))
    root = fs.tree.root
    children = struct.unpack_from("<2Q", fs.store.block(root), INTERNAL_CHILDREN)
    reseal(fs, root, INTERNAL_CHILDREN + 8, "<Q", children[0])  # a DAG
    for walk in (fs.tree.nodes, fs.tree.leaves):
        with pytest.raises(Corrupted, match="reachable twice"):
            list(walk(fs.store))
    reseal(fs, root, INTERNAL_CHILDREN + 8, "<Q", children[1])  # mended
    assert list(fs.tree.leaves(fs.store)) == leaves
    fs.store.view[leaf * BLOCK_SIZE + 3000] ^= 0x40  # a leaf fails its checksum
    fs.store.verified.clear()
    for walk in (fs.tree.nodes, fs.tree.leaves):
        with pytest.raises(Corrupted, match=f"node {leaf}: checksum mismatch"):
            list(walk(fs.store))


def test_random_damage_with_valid_checksums_never_crashes() -> None:
    fs, model, _, _ = corrupt_fixture()
    blocks = sorted(fs.tree.nodes(fs.store))
    rng = random.Random(5)
    for _ in range(300):
        blockno = rng.choice(blocks)
        clean = bytes(fs.store.block(blockno))
        for _ in range(rng.randrange(1, 4)):  # header, keys, children or slots
            offset = rng.choice([24, 26, 30, 32, rng.randrange(64, 2200)])
            reseal(fs, blockno, offset, "<H", rng.choice([0, 1, 0xFFFF, rng.randrange(1 << 16)]))
        probe = rng.choice(list(model))
        tree, store = fs.tree, fs.store
        with contextlib.suppress(Corrupted):
            tree.get(store, probe)
        with contextlib.suppress(Corrupted):
            tree.floor(store, probe)
        with contextlib.suppress(Corrupted):
            tree.ceiling(store, probe + 1)
        with contextlib.suppress(Corrupted):
            list(tree.items(store, probe))
        with contextlib.suppress(Corrupted):
            list(tree.nodes(store))
        assert isinstance(fs.tree.check(fs.store), list)
        fs.store.block(blockno)[:] = clean


# -------------------------------------------------------------------------- crash


@pytest.mark.parametrize("keys", [LEAF_CAP, 400], ids=["root-leaf", "two-levels"])
def test_crash_at_every_fence_of_a_splitting_put(keys: int) -> None:
    before = {k * 2: value_for(k, 16) for k in range(keys)}
    new_key = 2 * min(keys, LEAF_CAP) - 3  # inside a full leaf
    after = {**before, new_key: b"split!"}
    fences = 0
    while True:
        fences += 1
        fs = Fs(blocks=1024)
        fs.put_all(before, batch=LEAF_CAP)  # appends leave full leaves
        nodes = len(fs.alloc.used)
        fs.dev.schedule_power_failure(fence=fences)
        try:
            with fs.journal.begin() as tx:
                fs.tree.put(tx, new_key, b"split!")
                fs.save(tx)
            assert len(fs.alloc.used) > nodes  # it did split
            completed = True
        except PowerFailure:
            completed = False
        fs.store.close()
        seen = set()
        for state in fs.dev.crash_states(limit=32, seed=fences):
            crashed = Fs(dev=state)
            assert crashed.tree.check(crashed.store) == []
            content = dict(crashed.tree.items(crashed.store))
            assert content in (before, after), fences
            seen.add(content == after)
            crashed.store.close()
        if completed:
            assert seen == {True}
            assert fences >= 3
            return
