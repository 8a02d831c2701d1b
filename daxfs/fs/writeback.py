"""Writeback of stores made through DAX mappings and pins: fsync after munmap, as on Linux.

Theory of operation
-------------------
A store through a writable DAX mapping (daxfs.mm) reaches device memory at
once but may sit in a CPU cache until its line is flushed; ``Mapping.msync``
flushes a range.  Linux tags a file's DAX entries dirty when they are
written through a mapping and writes them back at fsync, fdatasync, sync and
unmount, even after munmap.  daxfs sees no page faults, so it cannot know
which pages were stored to: it remembers the file ranges that writable
mappings cover, and flushes all of them.

    File.mmap (writable)       -> map(ino, generation, start, end): a live range
    Mapping.close, replaced    -> unmap(ino, token): the range is left behind
    File.pin (File writable)   -> map: stores through the SGList's views (a READ
                                  bio into it) are the same as a mapping's
    SGList.unpin               -> unmap, then DataPath.writeback(inode) at once
                                  (daxfs.mm.pin: durable when unpin returns);
                                  unpin(dirty=False): unmap(keep=False), no I/O
    File.fsync, fdatasync      -> DataPath.writeback(inode): flush the live and
                                  left ranges of the file, fence; the left
                                  ones are forgotten
    FileSystem.sync, unmount   -> DataPath.sync_all(): the same for every inode
    the inode is freed         -> forget(ino) (and a generation that no longer
                                  matches drops the entry)

The ranges are file ranges, flushed through the file's extents *at the time
of the flush*.  That is right even when the file changed after the mapping
went: a copy-on-write overwrite copied the stored bytes into new blocks with
flushed writes; bytes past a truncate or in a punched hole are no longer the
file's, and holes and unwritten extents have nothing to flush.  An extra
flush is never harmful: it only makes bytes durable sooner.

Invariants
  1. Every file range a writable mapping covered since the last writeback of
     its inode is remembered until a writeback flushes it (live ranges stay
     remembered while their mapping lives).
  2. An entry is for one life of an inode (its generation): an inode that
     was freed and reused never inherits ranges.
  3. This object's lock is taken last and held only for its own state (no
     I/O under it).
"""

from __future__ import annotations

import dataclasses
import itertools
import threading

Range = tuple[int, int]


@dataclasses.dataclass(slots=True)
class _Entry:
    generation: int
    live: dict[int, Range] = dataclasses.field(default_factory=dict)
    left: list[Range] = dataclasses.field(default_factory=list)


class Writeback:
    """The file ranges that writable mappings may have left in CPU caches, per inode."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[int, _Entry] = {}
        self._tokens = itertools.count(1)

    def map(self, ino: int, generation: int, start: int, end: int) -> int:
        """A writable mapping of file bytes [start, end) exists; return a token for unmap."""
        with self._lock:
            entry = self._entries.get(ino)
            if entry is None or entry.generation != generation:
                entry = self._entries[ino] = _Entry(generation)
            token = next(self._tokens)
            entry.live[token] = (start, end)
            return token

    def unmap(self, ino: int, token: int, *, keep: bool = True) -> None:
        """The mapping of ``token`` is gone; its range stays until the next writeback
        (``keep=False``: it is forgotten, nothing was stored through it)."""
        with self._lock:
            entry = self._entries.get(ino)
            if entry is not None and token in entry.live:
                rng = entry.live.pop(token)
                if keep:
                    entry.left = _union([*entry.left, rng])
                elif not entry.live and not entry.left:
                    del self._entries[ino]

    def take(self, ino: int, generation: int) -> tuple[list[Range], bool]:
        """The ranges to flush for a writeback of ``ino``, and whether a mapping is live.

        The left ranges are forgotten: give them back with ``leave`` if the
        flush fails.
        """
        with self._lock:
            entry = self._entries.get(ino)
            if entry is None or entry.generation != generation:
                self._entries.pop(ino, None)
                return [], False
            ranges = _union([*entry.left, *entry.live.values()])
            entry.left = []
            if not entry.live:
                del self._entries[ino]
            return ranges, bool(entry.live)

    def leave(self, ino: int, generation: int, ranges: list[Range]) -> None:
        """Remember ``ranges`` again (a writeback that failed)."""
        with self._lock:
            entry = self._entries.get(ino)
            if entry is None or entry.generation != generation:
                entry = self._entries[ino] = _Entry(generation)
            entry.left = _union([*entry.left, *ranges])

    def inodes(self) -> list[tuple[int, int]]:
        """(ino, generation) of every inode with ranges to flush."""
        with self._lock:
            return [(ino, e.generation) for ino, e in self._entries.items()]

    def ranges(self, ino: int) -> list[Range]:
        """What a writeback of ``ino`` would flush now (for tests and reports)."""
        with self._lock:
            entry = self._entries.get(ino)
            return [] if entry is None else _union([*entry.left, *entry.live.values()])

    def forget(self, ino: int) -> None:
        """The inode was freed: nothing of it is left to flush."""
        with self._lock:
            self._entries.pop(ino, None)


def _union(ranges: list[Range]) -> list[Range]:
    """Sorted, disjoint, merged ranges covering the same bytes."""
    out: list[Range] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out
