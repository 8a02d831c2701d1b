"""The in-memory free-extent index: the committed bitmap's free runs, built lazily.

Theory of operation
-------------------
The allocation bitmap (daxfs.fs.alloc) is the on-media truth; this index is a
cache of what it says, so that an allocation finds a free run without
scanning bits (NOVA keeps its free lists in DRAM the same way).

*Groups.*  The data area is cut into groups, one per bitmap block (BPB
blocks, 127.5 MiB).  A group is *built* the first time a search reaches it:
one numpy pass over its committed bitmap block lists its free runs, cut at
the group's edges, as two sorted ``array('q')`` (starts, ends): the index by
start, searched with ``bisect``.  Nothing is built at mount.

*Index by size.*  ``longest[k]`` is, for a built group, an upper bound of its
longest run (exact after a build, or after a search of the whole group that
found nothing), and -1 for a group not built; ``edge[k]`` says that group k's
last run reaches its top edge (and may go on in group k + 1).  A search
skips every group known to hold no run long enough and no edge run with one
numpy comparison over all groups.

*Runs across edges.*  A free run that crosses a group edge is indexed as two
runs; a search that meets a group's edge run follows it into the next groups
(``_reach``), so it finds exactly what a first fit over the bitmap finds:
the lowest start of ``count`` free blocks.

*Coherence.*  The index shows the *committed* bitmap.  The allocator changes
only a transaction's bitmap; it keeps that transaction's allocations and
frees aside and applies them here (``remove``, ``add``) in the transaction's
on-commit callback, after its records reached media.  An abort leaves the
index as it was.  A search on behalf of a transaction skips the runs that
transaction allocated (``taken``, see ``fit``); the runs it freed are not
here until it commits, so it never hands them out (the "two views" rule of
daxfs.fs.alloc).  A group built while a transaction is open reads the
committed bitmap, which that transaction has not changed yet: its changes
are applied to the group when it commits, like to any other.

*Memory bound.*  At most ``max_runs`` runs are indexed (16 bytes each in the
arrays), plus 8 bytes per group for ``longest``; past it the least recently
used groups are dropped (``longest`` -1), to be built again when needed.

Invariants
  1. For every built group k, (starts, ends) are the maximal free runs of the
     committed bitmap within group k's part of the data area, ascending.
  2. ``longest[k]`` >= the longest of those runs for a built group; -1 for a
     group not built.  ``edge[k]``: group k is built and its last run ends at
     its top, below the end of the data area.
  3. ``runs`` is the number of indexed runs; it exceeds ``max_runs`` only
     while the group last built holds more on its own.
"""

from __future__ import annotations

from array import array
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from daxfs.fs.layout import BITS_PER_BITMAP_BLOCK

BPB = BITS_PER_BITMAP_BLOCK
#: Runs indexed at most (two 8-byte entries each): 16 MiB of arrays.
MAX_RUNS = 1 << 20

Words = npt.NDArray[np.uint64]
#: (start, end) runs of blocks
Runs = list[tuple[int, int]]


class _Group:
    """The free runs of one group, ascending."""

    __slots__ = ("ends", "starts")

    def __init__(self, starts: array[int], ends: array[int]) -> None:
        self.starts = starts
        self.ends = ends


class FreeIndex:
    """Free runs of the committed bitmap, by group, built on first use."""

    def __init__(
        self, lo: int, hi: int, groups: int, load: Callable[[int], Words], max_runs: int = MAX_RUNS
    ) -> None:
        """Index the data area ``[lo, hi)`` of ``groups`` bitmap blocks.

        ``load(k)``: the committed words of bitmap block k (crc checked), a copy.
        """
        self.lo = lo
        self.hi = hi
        self._load = load
        self.max_runs = max_runs
        # ``longest`` and ``edge`` are numpy views of an array and a bytearray: a search
        # compares all groups at once through numpy, the changes of one group (add,
        # remove: every commit) go through the plain Python objects, which is faster
        self._longest = array("q", [-1]) * groups
        self._edge = bytearray(groups)
        #: upper bound of the longest run of each built group; -1: not built
        self.longest: npt.NDArray[np.int64] = np.frombuffer(self._longest, dtype=np.int64)
        #: whether each built group's last run reaches its top edge
        self.edge: npt.NDArray[np.bool_] = np.frombuffer(self._edge, dtype=np.bool_)
        self._groups: OrderedDict[int, _Group] = OrderedDict()  # least recently used first
        self.runs = 0
        #: commits whose changes the index did not hold as it should (it was dropped)
        self.disagreements = 0

    # -- building ----------------------------------------------------------------------

    def _bounds(self, k: int) -> tuple[int, int]:
        return max(self.lo, k * BPB), min(self.hi, (k + 1) * BPB)

    def _group(self, k: int) -> _Group:
        """Group k, built from the committed bitmap if it is not.

        Raises:
            Corrupted (EUCLEAN): its bitmap block fails its checksum (from ``load``).
        """
        g = self._groups.get(k)
        if g is not None:
            self._groups.move_to_end(k)
            return g
        starts, ends = self._scan(k)
        g = _Group(array("q", starts.tobytes()), array("q", ends.tobytes()))
        self._groups[k] = g
        self.runs += len(g.starts)
        self._longest[k] = int((ends - starts).max()) if len(starts) else 0
        self._set_edge(k, g)
        while self.runs > self.max_runs and len(self._groups) > 1:
            old, dropped = self._groups.popitem(last=False)
            self.runs -= len(dropped.starts)
            self._longest[old] = -1
            self._edge[old] = False
        return g

    def _set_edge(self, k: int, g: _Group) -> None:
        top = (k + 1) * BPB  # the group's top, unless the data area ends first
        ends = g.ends
        self._edge[k] = top < self.hi and bool(ends) and ends[-1] == top

    def _scan(self, k: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """The free runs of group k in the committed bitmap (numpy, one pass)."""
        glo, ghi = self._bounds(k)
        words = self._load(k)
        bits = np.unpackbits(words.view(np.uint8), bitorder="little")[glo - k * BPB : ghi - k * BPB]
        edges = np.diff(bits.astype(np.int8), prepend=np.int8(1), append=np.int8(1))
        starts = np.flatnonzero(edges == -1).astype(np.int64) + glo
        ends = np.flatnonzero(edges == 1).astype(np.int64) + glo
        return starts, ends

    def invalidate(self) -> None:
        """Drop every group (the bitmap changed behind the allocator, as fsck repairs it)."""
        self._groups.clear()
        self.longest[:] = -1
        self.edge[:] = False
        self.runs = 0

    # -- searching ---------------------------------------------------------------------

    def find(self, pos: int, end: int, count: int, taken: Runs) -> int | None:
        """The lowest b >= ``pos`` with ``[b, b + count)`` inside ``[pos, end)``, inside one
        indexed run (runs stop at group edges) and clear of every run in ``taken``.

        Raises:
            Corrupted (EUCLEAN): a bitmap block it builds fails its checksum.
        """
        pos, end = max(pos, self.lo), min(end, self.hi)
        if end - pos < count or count > BPB:
            return None
        k0, k1 = pos // BPB, (end - 1) // BPB
        found = self._find_in(k0, pos, end, count, taken)  # the common case: no numpy
        if found is not None or k0 == k1:
            return found
        longest = self.longest[k0 + 1 : k1 + 1]
        maybe = (longest >= count) | (longest < 0) | self.edge[k0 + 1 : k1 + 1]
        for k in (np.flatnonzero(maybe) + k0 + 1).tolist():
            found = self._find_in(k, pos, end, count, taken)
            if found is not None:
                return found
        return None

    def _find_in(self, k: int, pos: int, end: int, count: int, taken: Runs) -> int | None:
        g = self._group(k)
        starts, ends = g.starts, g.ends
        i = bisect_right(ends, pos)  # the first run ending after pos
        n = len(starts)
        best = 0
        glo, top = self._bounds(k)
        while i < n:
            s, e = starts[i], ends[i]
            if s >= end:
                break
            best = max(best, e - s)
            b, e = max(s, pos), min(e, end)
            if e == top and e - b < count:  # the run may go on in the next group
                e = self._reach(k, e, end)
            if e - b >= count:
                found = fit(b, e, count, taken) if taken else b
                if found is not None:
                    return found
            i += 1
        if pos <= glo and end >= top and not taken and k in self._groups:
            # the whole group was searched: exact (unless _reach's builds dropped it)
            self._longest[k] = best
        return None

    def _reach(self, k: int, e: int, end: int) -> int:
        """Where a free run that reaches group k's top edge at ``e`` ends, up to ``end``."""
        while e < end and k + 1 < len(self._longest) and e == (k + 1) * BPB:
            k += 1
            g = self._group(k)
            if not g.starts or g.starts[0] != e:
                break
            e = g.ends[0]
        return min(e, end)

    # -- changes, applied when a transaction commits -----------------------------------

    def _pieces(self, start: int, end: int) -> list[tuple[_Group, int, int, int]]:
        """(built group, k, first, end) of the parts of ``[start, end)`` in built groups."""
        out = []
        while start < end:
            k = start // BPB
            stop = min(end, (k + 1) * BPB)
            g = self._groups.get(k)
            if g is not None:
                out.append((g, k, start, stop))
            start = stop
        return out

    def remove(self, start: int, end: int) -> bool:
        """Blocks ``[start, end)`` were allocated (committed): cut them out of their runs.

        False, with the index left for ``invalidate``, if the index does not hold
        them as free (it disagrees with the bitmap: a bug, and only a cache's).
        """
        k = start // BPB
        if end <= (k + 1) * BPB:  # one group (the common case), without _pieces' list
            g = self._groups.get(k)
            return g is None or self._remove_in(g, k, start, end)
        return all(self._remove_in(g, k, s, e) for g, k, s, e in self._pieces(start, end))

    def _remove_in(self, g: _Group, k: int, s: int, e: int) -> bool:
        """``remove`` of ``[s, e)``, inside group k."""
        starts, ends = g.starts, g.ends
        i = bisect_right(starts, s) - 1
        if i < 0 or ends[i] < e:
            return False
        rs, re = starts[i], ends[i]
        if rs == s and e == re:  # the whole run
            del starts[i], ends[i]
            self.runs -= 1
        elif rs == s:  # its head (the common case: allocations go to a run's start)
            starts[i] = e
        elif e == re:  # its tail
            ends[i] = s
        else:  # its middle: two runs
            ends[i] = s
            starts.insert(i + 1, e)
            ends.insert(i + 1, re)
            self.runs += 1
        self._set_edge(k, g)
        return True

    def add(self, start: int, end: int) -> bool:
        """Blocks ``[start, end)`` were freed (committed): insert them, joining neighbours.

        False, as ``remove``, if the index already holds some of them as free.
        """
        k = start // BPB
        if end <= (k + 1) * BPB:  # one group (the common case), without _pieces' list
            g = self._groups.get(k)
            return g is None or self._add_in(g, k, start, end)
        return all(self._add_in(g, k, s, e) for g, k, s, e in self._pieces(start, end))

    def _add_in(self, g: _Group, k: int, s: int, e: int) -> bool:
        """``add`` of ``[s, e)``, inside group k."""
        starts, ends = g.starts, g.ends
        i = bisect_right(starts, s)
        n = len(starts)
        if (i > 0 and ends[i - 1] > s) or (i < n and starts[i] < e):
            return False
        join_left = i > 0 and ends[i - 1] == s
        join_right = i < n and starts[i] == e
        if join_left and join_right:
            ends[i - 1] = ends[i]
            del starts[i], ends[i]
            self.runs -= 1
            s, e = starts[i - 1], ends[i - 1]
        elif join_left:
            ends[i - 1] = e
            s = starts[i - 1]
        elif join_right:
            starts[i] = s
            e = ends[i]
        else:
            starts.insert(i, s)
            ends.insert(i, e)
            self.runs += 1
        if e - s > self._longest[k]:
            self._longest[k] = e - s
        self._set_edge(k, g)
        return True

    # -- checking ----------------------------------------------------------------------

    def check(self) -> None:
        """Assert that every built group equals what the committed bitmap says now
        (invariants 1-3); for tests and debugging, not the hot path.

        Raises:
            AssertionError: naming the first group that differs.
            Corrupted (EUCLEAN): a bitmap block fails its checksum.
        """
        assert self.disagreements == 0, f"{self.disagreements} commits disagreed with the index"
        total = 0
        for k in range(len(self.longest)):
            g = self._groups.get(k)
            if g is None:
                assert self.longest[k] == -1, f"group {k} is not built but has a longest run"
                assert not self.edge[k], f"group {k} is not built but has an edge run"
                continue
            starts, ends = self._scan(k)
            got = (list(g.starts), list(g.ends))
            assert got == (starts.tolist(), ends.tolist()), (
                f"group {k}: the index holds runs {list(zip(*got, strict=True))[:8]}..., "
                f"the bitmap {list(zip(starts.tolist(), ends.tolist(), strict=True))[:8]}..."
            )
            real = int((ends - starts).max()) if len(starts) else 0
            assert self.longest[k] >= real, f"group {k}: longest {self.longest[k]} < {real}"
            top = self._bounds(k)[1]
            want = bool(len(ends)) and int(ends[-1]) == top and top < self.hi
            assert self.edge[k] == want, f"group {k}: edge {self.edge[k]}, bitmap says {want}"
            total += len(starts)
        assert self.runs == total, f"{self.runs} runs counted, {total} indexed"

    @property
    def built(self) -> list[int]:
        """The groups built, least recently used first."""
        return list(self._groups)


def fit(b: int, e: int, count: int, taken: Runs) -> int | None:
    """The lowest x >= b with ``[x, x + count)`` inside ``[b, e)`` and clear of ``taken``."""
    moved = True
    while moved and e - b >= count:
        moved = False
        for ts, te in taken:
            if ts < b + count and te > b:
                b = te
                moved = True
    return b if e - b >= count else None
