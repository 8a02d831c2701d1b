"""BlockMaps.replace (the copy-on-write map change) against a model, and the inline cache.

``replace(lblk, count, new)`` must leave the map (the same extents) that
``punch`` then ``insert`` of each new extent leave (both are checked against the same block-by-block
model) and return the pieces unmapped;
on inline maps it decodes and stores once.  The maps are made by real writes
and punches on a filesystem, inline (few extents) or B+tree (many).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import daxfs
from daxfs.fs.data import FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE
from daxfs.fs.extmap import Extent, _merge_into
from daxfs.fs.fsck import fsck
from daxfs.fs.inode import Inode
from daxfs.fs.journal import Transaction
from daxfs.fs.layout import MAP_BTREE, MAP_INLINE
from daxfs.testing import SimulatedPmem
from tests import helpers

BLOCK = 4096
BLOCKS = 48
PUNCH = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE


@pytest.fixture(scope="module")
def dev() -> Iterator[SimulatedPmem]:
    yield from helpers.fresh_device(16 << 20)


def blockmap(fs: daxfs.FileSystem, tx: Transaction, inode: Inode) -> dict[int, tuple[int, int]]:
    """file block -> (device block, flags), as the map says in ``tx``."""
    out = {}
    for e in fs.maps.extents(tx, inode):
        for i in range(e.length):
            out[e.lblk + i] = (e.pblk + i, e.flags)
    return out


class Abort(Exception):
    pass


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    holes=st.lists(st.integers(0, BLOCKS - 1), max_size=12),
    lo=st.integers(0, BLOCKS - 1),
    count=st.integers(1, BLOCKS),
    cuts=st.lists(st.integers(1, BLOCKS), max_size=3),
)
def test_replace_equals_punch_then_insert(
    dev: SimulatedPmem, holes: list[int], lo: int, count: int, cuts: list[int]
) -> None:
    count = min(count, BLOCKS - lo)
    fs = daxfs.mount(dev)
    try:
        with fs.open("/f", "wb", buffering=0) as f:
            f.write(bytes(range(256)) * (BLOCKS * BLOCK // 256))
            for h in holes:  # holes split the extent: few stay inline, many make a tree
                f.fallocate(h * BLOCK, BLOCK, PUNCH)
        inode = fs.itable.get(fs.stat("/f").st_ino)
        kind = inode.rec.map_kind
        assert kind in (MAP_INLINE, MAP_BTREE) or len(set(holes)) == BLOCKS
        extents: dict[bool, list[Extent]] = {}
        cursor = fs.alloc._cursor
        for use_replace in (True, False):
            fs.alloc._cursor = cursor  # both take the same blocks
            with pytest.raises(Abort), fs.journal.begin() as tx:
                before = blockmap(fs, tx, inode)
                runs = fs.alloc.alloc(tx, count)
                bounds = sorted({0, count, *(c for c in cuts if c < count)})
                targets = [b for s, n in runs for b in range(s, s + n)]
                new = [  # pieces of the range in the new blocks, cut where ``cuts`` say
                    Extent(lo + a, targets[a], b - a)
                    for a, b in itertools.pairwise(bounds)
                    if all(targets[i] + 1 == targets[i + 1] for i in range(a, b - 1))
                ]
                if use_replace:
                    pieces = fs.maps.replace(tx, inode, lo, count, new)
                else:
                    pieces = fs.maps.punch(tx, inode, lo, count)
                    for ext in new:
                        fs.maps.insert(tx, inode, ext)
                after = blockmap(fs, tx, inode)
                extents[use_replace] = list(fs.maps.extents(tx, inode))
                want = {b: v for b, v in before.items() if not lo <= b < lo + count}
                for e in new:
                    for i in range(e.length):
                        want[e.lblk + i] = (e.pblk + i, 0)
                assert after == want
                unmapped = {
                    e.lblk + i: (e.pblk + i, e.flags) for e in pieces for i in range(e.length)
                }
                assert unmapped == {b: v for b, v in before.items() if lo <= b < lo + count}
                raise Abort
        # the same extents, not only the same blocks: contiguous neighbours joined alike
        # (replace's one-extent case, _replace_inside, builds the list its own way)
        assert extents[True] == extents[False]
        fs.unlink("/f")
    finally:
        fs.unmount()
    assert fsck(dev).clean


def test_inline_cache_answers_only_for_the_bytes_it_decoded(dev: SimulatedPmem) -> None:
    """A record whose inline bytes change (a new object) is decoded again."""
    fs = daxfs.mount(dev)
    try:
        with fs.open("/g", "wb", buffering=0) as f:
            f.write(b"x" * 4 * BLOCK)
            f.fallocate(BLOCK, BLOCK, PUNCH)
        inode = fs.itable.get(fs.stat("/g").st_ino)
        first = fs.maps._inline(inode)
        assert fs.maps._inline(inode) is first  # remembered
        assert [(e.lblk, e.length) for e in first] == [(0, 1), (2, 2)]
        with fs.open("/g", "rb+", buffering=0) as f:
            f.fallocate(2 * BLOCK, BLOCK, PUNCH)
        again = fs.maps._inline(inode)
        assert [(e.lblk, e.length) for e in again] == [(0, 1), (3, 1)]
        fs.unlink("/g")
    finally:
        fs.unmount()


def test_replace_inside_one_inline_extent_joins_as_the_general_path(dev: SimulatedPmem) -> None:
    """The copy-on-write case (one new extent, the range inside one inline extent) takes
    ``_replace_inside``: its extents equal the general loop's (``_merge_into`` over the
    pieces kept), for a range at an extent's head, middle, tail and the whole of it,
    with a new extent that joins its left neighbour and one that joins nothing."""
    fs = daxfs.mount(dev)
    try:
        with fs.open("/h", "wb", buffering=0) as f:
            f.write(b"y" * 160 * BLOCK)
            f.pwrite(b"z" * 80 * BLOCK, 80 * BLOCK)  # copy-on-write: [0, 80) and [80, 160)
        inode = fs.itable.get(fs.stat("/h").st_ino)
        exts = fs.maps._inline(inode)
        assert [(e.lblk, e.length) for e in exts] == [(0, 80), (80, 80)]
        assert exts[0].pblk + 80 != exts[1].pblk
        joined = 0
        for lo, count in ((80, 80), (80, 70), (90, 70), (100, 20), (0, 80), (0, 30), (10, 70)):
            for joins in (True, False):
                with pytest.raises(Abort), fs.journal.begin() as tx:
                    holder = next(e for e in exts if e.lblk <= lo and lo + count <= e.end)
                    left = [e for e in exts if e.end == lo]
                    # the blocks right after the left neighbour's are free (moved away)
                    goal = left[0].pblk + left[0].length if joins and left else None
                    (start, n), *_ = fs.alloc.alloc(tx, count, goal)
                    assert n == count
                    new = Extent(lo, start, count)
                    rest = [e for e in exts if e is not holder]
                    if holder.lblk < lo:
                        rest.append(holder.slice(holder.lblk, lo))
                    if holder.end > lo + count:
                        rest.append(holder.slice(lo + count, holder.end))
                    want = _merge_into(sorted(rest, key=lambda e: e.lblk), new)
                    joined += len(want) < len(rest) + 1
                    real = fs.maps._replace_inside
                    seen: list[int] = []

                    def spy(*args: Any, real: Any = real, seen: list[int] = seen) -> Any:
                        seen.append(1)
                        return real(*args)

                    fs.maps._replace_inside = spy  # type: ignore[method-assign]
                    try:
                        pieces = fs.maps.replace(tx, inode, lo, count, [new])
                    finally:
                        del fs.maps._replace_inside
                    assert seen == [1]
                    assert pieces == [holder.slice(lo, lo + count)]
                    assert list(fs.maps.extents(tx, inode)) == want
                    raise Abort
        assert joined >= 2  # the new extent joined its left neighbour (80, 80), (80, 70)
        fs.unlink("/h")
    finally:
        fs.unmount()
    assert fsck(dev).clean
