"""DirIndex.merge in C (_create.index_merge) against its numpy reference (NATIVE_MERGE
off): random indexes with pending adds (new keys, keys the arrays hold: a record
replaced), removals (and keys removed then added again) give the same arrays; bad
arguments raise TypeError or ValueError with the index unchanged."""

from __future__ import annotations

import array
import random
from collections.abc import Iterator

import pytest

from daxfs.fs import _create
from daxfs.fs import dir as dir_mod
from daxfs.fs.dir import DirIndex


@pytest.fixture
def reference() -> Iterator[None]:
    saved = dir_mod.NATIVE_MERGE
    yield
    dir_mod.NATIVE_MERGE = saved


def random_index(rng: random.Random) -> DirIndex:
    n = rng.choice([0, 1, 5, 300, 3000])
    keys = sorted({rng.getrandbits(64) for _ in range(n)})
    names = b"".join(rng.randbytes(16) for _ in keys)
    values = array.array("Q", [rng.getrandbits(64) for _ in keys])
    index = DirIndex(array.array("Q", keys), values, names, 7)
    for _ in range(rng.randint(0, 400)):
        op = rng.random()
        if op < 0.5 or not keys:  # a new key (or, rarely, the largest or smallest u64)
            key = rng.choice([rng.getrandbits(64), 0, (1 << 64) - 1])
            new = key not in index
            index.count += new
            index.added[key] = (rng.getrandbits(64), rng.randbytes(16))
            index.removed.discard(key)
        elif op < 0.75:  # a held key's record replaced
            key = rng.choice(keys)
            index.count += key not in index
            index.added[key] = (rng.getrandbits(64), rng.randbytes(16))
            index.removed.discard(key)
        else:  # a key removed
            key = rng.choice(keys)
            if key in index:
                index.count -= 1
            index.added.pop(key, None)
            index.removed.add(key)
    return index


def copy(index: DirIndex) -> DirIndex:
    twin = DirIndex(array.array("Q", index.keys), array.array("Q", index.values), index.names, 7)
    twin.added, twin.removed, twin.count = dict(index.added), set(index.removed), index.count
    return twin


@pytest.mark.usefixtures("reference")
@pytest.mark.parametrize("seed", range(6))
def test_the_c_merge_makes_the_numpy_arrays(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(40):
        native = random_index(rng)
        numpy = copy(native)
        dir_mod.NATIVE_MERGE = True
        native.merge()
        dir_mod.NATIVE_MERGE = False
        numpy.merge()
        assert native.keys.tolist() == numpy.keys.tolist()
        assert native.values.tolist() == numpy.values.tolist()
        assert native.names == numpy.names
        assert (native.added, native.removed) == ({}, set())
        assert len(native) == len(native.keys)  # (merge asserts the count too)


def test_bad_arguments_raise_and_change_nothing() -> None:
    keys = array.array("Q", [1, 5])
    values = array.array("Q", [10, 50])
    names = bytes(32)
    good = {3: (30, bytes(16))}
    with pytest.raises(TypeError):
        _create.index_merge(array.array("q", [1, 5]), values, names, good, set())
    with pytest.raises(ValueError, match="lengths"):
        _create.index_merge(keys, values, bytes(16), good, set())
    with pytest.raises(TypeError, match="name slot"):
        _create.index_merge(keys, values, names, {3: (30, bytes(15))}, set())
    with pytest.raises(OverflowError):
        _create.index_merge(keys, values, names, {-3: (30, bytes(16))}, set())
    with pytest.raises(TypeError):
        _create.index_merge(keys, values, names, good, {"x"})
    assert keys.tolist() == [1, 5]
    assert _create.index_merge(keys, values, names, good, {5}) == (
        array.array("Q", [1, 3]).tobytes(),
        array.array("Q", [10, 30]).tobytes(),
        bytes(32),
    )
