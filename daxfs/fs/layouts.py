"""Layouts: pins on a file's blocks, and operations that must wait for them.

Persistent memory has no per-page structure to pin (2014: get_user_pages
needs a struct page), so daxfs pins *file ranges*: while a range is pinned,
the blocks behind it hold that file's data and nothing else.  An operation
that would free, move or change those blocks - truncate, punch-hole,
zero-range, an overwrite, a delete - first calls ``break_layouts`` for the
range, as Linux's ``dax_break_layout()`` does:

    break_layouts(start, end)
        no pin overlaps            -> return at once
        pins overlap               -> mark the range as breaking (no new pins
                                      there: pin() fails with EAGAIN), wait
                                      on the inode's condition until the last
                                      overlapping pin is released, unmark
        nowait                     -> BlockingIOError (EAGAIN) at once
        timeout (mount option      -> Busy (EBUSY); nothing was changed
          layout_timeout)

The wait releases the inode lock (the condition is built on it), so the
holder of a pin can take the lock to unpin.

``ranges`` is the inode's range lock (daxfs.fs.rangelock) on the same
condition: direct I/O holds its range there, and truncate, punch-hole,
zero-range and block-moving writes take theirs exclusively.  An inode gets a
Layouts on its first pin or its first direct I/O; while it has one, the C
pwrite fast path misses (it checks ``inode.layouts is None``) and writes take
the Python path, which honours the range locks.  Pins are volatile: a crash drops
them, and recovery frees what a completed truncate or unlink freed.

Invariants
  1. Caller holds ``inode.lock`` for every method.
  2. A pin never overlaps a range that is breaking.
"""

from __future__ import annotations

import itertools
import threading
import time

from daxfs.errors import Busy, WouldBlock
from daxfs.fs.rangelock import RangeLock

Range = tuple[int, int]


class Layouts:
    """The pins and range locks of one inode (created on the first pin or direct I/O)."""

    def __init__(self, lock: threading.RLock) -> None:
        self._cond = threading.Condition(lock)
        self._pins: dict[int, Range] = {}
        self._breaking: list[Range] = []
        self._ids = itertools.count(1)
        #: the inode's range lock (direct I/O against truncate), on the same condition
        self.ranges = RangeLock(self._cond)

    def __bool__(self) -> bool:
        """True while a pin or a range lock is held or waited for."""
        return bool(self._pins) or bool(self.ranges)

    def pinned(self, start: int, end: int) -> bool:
        return any(lo < end and start < hi for lo, hi in self._pins.values())

    def pin(self, start: int, end: int, where: str) -> int:
        """Pin file bytes [start, end); return a token for unpin.

        Raises:
            WouldBlock (EAGAIN): a truncate or other layout break waits on the range.
        """
        if any(lo < end and start < hi for lo, hi in self._breaking):
            raise WouldBlock(
                f"{where}: bytes [{start}, {end}) are being truncated or rewritten; "
                "no new pins until that finishes",
                where,
            )
        token = next(self._ids)
        self._pins[token] = (start, end)
        return token

    def unpin(self, token: int) -> None:
        del self._pins[token]
        self._cond.notify_all()

    def break_layouts(self, start: int, end: int, timeout: float, nowait: bool) -> None:
        """Wait until no pin overlaps [start, end); see the module docstring.

        Raises:
            WouldBlock (EAGAIN): ``nowait`` and a pin overlaps.
            Busy (EBUSY): pins still overlap after ``timeout`` seconds.
            Both name the pinned bytes and no path: the caller adds the path
            (daxfs.fs.namei.named).
        """
        if not self.pinned(start, end):
            return
        overlap = [(lo, hi) for lo, hi in self._pins.values() if lo < end and start < hi]
        first = max(start, min(lo for lo, _ in overlap))
        last = min(end, max(hi for _, hi in overlap))
        what = f"bytes [{first}, {last}) are pinned"
        if nowait:
            raise WouldBlock(f"{what}; not waiting (nowait)")
        span = (start, end)
        self._breaking.append(span)
        try:
            deadline = time.monotonic() + timeout
            while self.pinned(start, end):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Busy(f"{what}; gave up after {timeout:g} s (layout_timeout)")
                self._cond.wait(left)
        finally:
            self._breaking.remove(span)
            self._cond.notify_all()
