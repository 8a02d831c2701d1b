"""DirIndex's key search in C (``_create.u64_position``) against the bisect it replaces.

* random ascending arrays and keys (present, absent, below and above all,
  the ends of the 64-bit range, negative and too large): the same index or -1;
* what is not an array('Q') is refused (TypeError), a key that is not an int too;
* a directory's index answers the same lookups with the search in C and off.
"""

from __future__ import annotations

import array
import random
from bisect import bisect_left

import pytest

import daxfs
from daxfs.fs import _create
from daxfs.fs import dir as dirmod
from tests.helpers import formatted


def reference(keys: array.array[int], key: int) -> int:
    i = bisect_left(keys, key)
    return i if i < len(keys) and keys[i] == key else -1


@pytest.mark.parametrize("seed", range(5))
def test_u64_position_is_the_bisect(seed: int) -> None:
    rng = random.Random(seed)
    for n in (0, 1, 2, 3, 7, 64, 1000):
        values = sorted(
            {rng.getrandbits(64) for _ in range(n)} | ({0, 2**64 - 1} if n > 5 else set())
        )
        keys = array.array("Q", values)
        probes = [*values, -1, 2**64, 2**70, 0, 1, 2**64 - 1, 2**63]
        probes += [rng.getrandbits(64) for _ in range(50)]
        probes += [v + 1 for v in values[:20]] + [v - 1 for v in values[:20]]
        for key in probes:
            assert _create.u64_position(keys, key) == reference(keys, key), (n, key)


def test_u64_position_refuses_what_is_not_its_arguments() -> None:
    with pytest.raises(TypeError):
        _create.u64_position(array.array("q", [1]), 1)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        _create.u64_position(b"\0" * 8, 0)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        _create.u64_position(array.array("Q", [1]), "1")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        _create.u64_position(array.array("Q", [1]))  # type: ignore[call-arg]


def test_a_directory_index_answers_alike_with_the_search_in_c_and_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dev = formatted()
    with daxfs.mount(dev) as fs:
        fs.mkdir("/d")
        for i in range(600):
            fs.open(f"/d/f{i}", "xb", buffering=0).close()
        for i in range(0, 600, 7):
            fs.unlink(f"/d/f{i}")
        answers = {}
        for native in (True, False):
            monkeypatch.setattr(dirmod, "NATIVE_SEARCH", native)
            fs.dirs._dcache.clear()
            parent = fs.itable.get(fs.stat("/d").st_ino)
            answers[native] = [
                fs.dirs.lookup(fs.store, parent, f"f{i}".encode()) for i in range(-5, 605)
            ]
            index = fs.dirs.ready_index(parent)
            assert index is not None
            assert len(index) == 600 - len(range(0, 600, 7))
        assert answers[True] == answers[False]
        assert sum(a is not None for a in answers[True]) == 600 - len(range(0, 600, 7))
    dev.close()
