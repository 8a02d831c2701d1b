"""A leaf's rebuild (split, compaction) against the loops it replaced: ``_split_entries``
over numpy arrays, ``_encode_leaf`` by one join, ``_leaf_entries`` by slices of one
copy.  The references below are the former code, kept as the specification: random
leaves (small values, a few near MAX_VALUE, empty ones) give the same cut and the
same bytes."""

from __future__ import annotations

import random
import struct

import pytest

from daxfs.fs import btree
from daxfs.fs.btree import _fits
from daxfs.fs.layout import BLOCK_SIZE, LEAF_CAP, LEAF_SLOTS, MAX_VALUE, NODE_KEYS

Entry = tuple[int, bytes]


def split_reference(entries: list[Entry], new: int, rightmost: bool) -> list[list[Entry]]:
    n = len(entries)
    if rightmost and new == n - 1 and _fits(entries[:-1]):
        return [entries[:-1], entries[-1:]]
    sizes = [len(v) for _, v in entries]
    total = sum(sizes)
    best: tuple[float, int] | None = None
    acc = 0
    for p in range(1, n):
        acc += sizes[p - 1]
        if p > LEAF_CAP or n - p > LEAF_CAP or acc > MAX_VALUE or total - acc > MAX_VALUE:
            continue
        left = max(p / LEAF_CAP, acc / MAX_VALUE)
        right = max((n - p) / LEAF_CAP, (total - acc) / MAX_VALUE)
        if best is None or abs(left - right) < best[0]:
            best = (abs(left - right), p)
    if best is not None:
        return [entries[: best[1]], entries[best[1] :]]
    parts = [entries[:new], entries[new : new + 1], entries[new + 1 :]]
    return [part for part in parts if part]


def encode_reference(tree: btree.BTree, blockno: int, entries: list[Entry]) -> bytearray:
    buf = bytearray(BLOCK_SIZE)
    heap = BLOCK_SIZE
    slots: list[int] = []
    for _, value in entries:
        n = len(value)
        heap -= n
        buf[heap : heap + n] = value
        slots += (heap if n else BLOCK_SIZE, n)
    count = len(entries)
    struct.pack_into(f"<{count}Q", buf, NODE_KEYS, *(k for k, _ in entries))
    struct.pack_into(f"<{2 * count}H", buf, LEAF_SLOTS, *slots)
    tree._header(buf, blockno, 0, count, heap)
    return buf


def random_entries(rng: random.Random) -> list[Entry]:
    n = rng.randint(1, LEAF_CAP + 1)
    big = rng.random() < 0.3
    keys = sorted({rng.getrandbits(64) for _ in range(n)})

    def size() -> int:
        return rng.randint(0, 2400) if big and rng.random() < 0.05 else rng.randint(0, 40)

    return [(k, rng.randbytes(size())) for k in keys]


@pytest.mark.parametrize("seed", range(4))
def test_split_cuts_where_the_loop_cut(seed: int) -> None:
    rng = random.Random(seed)
    cuts = set()
    for _ in range(1500):
        entries = random_entries(rng)
        new = rng.randrange(len(entries))
        for rightmost in (False, True):
            try:
                expected = split_reference(entries, new, rightmost)
            except AssertionError:  # pragma: no cover - the reference's own check
                continue
            if not all(_fits(part) for part in expected):
                continue  # not a leaf a put can make (the new code asserts)
            got = btree._split_entries(entries, new, rightmost)
            assert got == expected
            cuts.add(len(got))
    assert 2 in cuts
    # no cut fits both halves: the new (middle) entry gets a leaf of its own
    three = [(1, b"a" * 1200), (2, b"b" * 2400), (3, b"c" * 1200)]
    assert btree._split_entries(three, 1, False) == split_reference(three, 1, False)
    assert len(btree._split_entries(three, 1, False)) == 3


@pytest.mark.parametrize("seed", range(4))
def test_encode_and_decode_are_the_loops(seed: int) -> None:
    rng = random.Random(seed)
    tree = btree.BTree(5, 2, 100, 1, None)  # type: ignore[arg-type]
    empty = 0
    for _ in range(800):
        entries = random_entries(rng)
        if not _fits(entries):
            continue
        empty += any(not v for _, v in entries)
        block = tree._encode_leaf(77, entries)
        assert block == encode_reference(tree, 77, entries)
        assert btree._leaf_entries(memoryview(block), len(entries)) == entries
    assert empty > 10  # empty values (offset BLOCK_SIZE) were among them
