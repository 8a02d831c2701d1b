"""RangeLock: a per-inode lock of file byte ranges, shared or exclusive.

Theory of operation
-------------------
The 2014 discussion (../shared/CONTEXT.md, topic 6) asked for "block-layer
locking" that keeps truncate from freeing blocks under in-flight direct I/O;
Linux answers with ``inode_dio_wait`` (a count of direct I/O in flight on the
whole inode) and XFS's i_mmaplock.  daxfs locks *ranges* instead, so that a
truncate at the end of a file does not wait for direct I/O at its start:

    direct read          lock(range, shared)     from iomap_begin to completion
    direct write         lock(range, exclusive)  from iomap_begin to completion
    truncate, punch-hole, zero-range, a buffered write that may move blocks
                         lock(range, exclusive)  for the whole change
                         (only on an inode that has a RangeLock: one that has
                         had direct I/O or a pin; ``Layouts.ranges``)

Two requests conflict when their ranges overlap and one is exclusive.
Requests are granted in arrival order: a request waits for every earlier
conflicting one, granted *or waiting*.  So a truncate waiting for in-flight
direct I/O holds back new direct I/O to its range (it cannot be starved),
and that new I/O runs after the truncate, on what the truncate left.

Waiting releases the inode lock (the condition is built on it, as the pins'
``Layouts`` is: they share one condition), so the holders can take it to
unlock.  A waiter with a ``timeout`` gives up with Busy (EBUSY) and one with
``nowait`` at once with WouldBlock (EAGAIN): the layout-break rules of pins
(``layout_timeout``, ``nowait``) apply to truncate waiting for direct I/O.

State diagram (one request)::

    lock() --> WAITING --no earlier conflict--> GRANTED --unlock()--> gone
                 |--timeout: Busy / nowait: WouldBlock--> gone (others woken)

Invariants
  1. Caller holds the condition's lock (``inode.lock``) for every method.
  2. No two granted requests conflict.
  3. A request is granted only when no earlier request (granted or waiting)
     conflicts with it: FIFO among overlapping requests, no starvation.
  4. Every removal (unlock, a waiter giving up) wakes the waiters (when there
     are any: ``_waiters`` counts them).
"""

from __future__ import annotations

import threading
import time

from daxfs.errors import Busy, WouldBlock

#: The end of the address space: ``lock(start, TO_END, ...)`` covers all from start on.
TO_END = 1 << 63


class RangeToken:
    """One request of a RangeLock (returned by ``lock``, given to ``unlock``)."""

    __slots__ = ("end", "exclusive", "granted", "start")

    def __init__(self, start: int, end: int, exclusive: bool) -> None:
        self.start = start
        self.end = end
        self.exclusive = exclusive
        self.granted = False

    def conflicts(self, other: RangeToken) -> bool:
        return (
            (self.exclusive or other.exclusive)
            and self.start < other.end
            and other.start < self.end
        )

    def __repr__(self) -> str:
        kind = "exclusive" if self.exclusive else "shared"
        state = "granted" if self.granted else "waiting"
        return f"<RangeToken [{self.start}, {self.end}) {kind} {state}>"


class RangeLock:
    """The range locks of one inode; see the module docstring."""

    def __init__(self, cond: threading.Condition) -> None:
        self._cond = cond
        #: requests in arrival order, granted and waiting (a dict used as an ordered
        #: set: an unlock is O(1) with many shared readers in flight)
        self._queue: dict[RangeToken, None] = {}
        #: exclusive requests in ``_queue``: while 0, a shared request conflicts with
        #: nothing and is granted without a scan (32 reads in flight: no O(n) walk)
        self._exclusive = 0
        #: requests waiting in ``_wait`` (no one to wake while 0: the condition's other
        #: waiters, the pins' layout breaks, wait for pins only)
        self._waiters = 0

    def __bool__(self) -> bool:
        """True while any request is granted or waiting."""
        return bool(self._queue)

    def held(self) -> list[tuple[int, int, bool]]:
        """Granted ranges ``(start, end, exclusive)`` (for tests and messages)."""
        return [(t.start, t.end, t.exclusive) for t in self._queue if t.granted]

    def _blocked(self, token: RangeToken) -> bool:
        for other in self._queue:
            if other is token:
                return False
            if other.conflicts(token):
                return True
        raise AssertionError(f"{token!r} is not queued")

    def lock(
        self,
        start: int,
        end: int,
        exclusive: bool,
        *,
        timeout: float | None = None,
        nowait: bool = False,
    ) -> RangeToken:
        """Lock file bytes ``[start, end)``; wait for earlier conflicting requests.

        Caller must hold the condition's lock (invariant 1); it is released
        while waiting.

        Raises:
            WouldBlock (EAGAIN): ``nowait`` and a conflicting request is there.
            Busy (EBUSY): still blocked after ``timeout`` seconds.
            Both name the busy bytes, not the file (the caller adds the path),
            and leave nothing locked.
        """
        assert 0 <= start < end, f"bad range [{start}, {end})"
        token = RangeToken(start, end, exclusive)
        queue = self._queue
        queue[token] = None
        if exclusive:
            self._exclusive += 1
        # alone, or shared among shared requests only: nothing blocks
        if len(queue) > 1 and (exclusive or self._exclusive) and self._blocked(token):
            try:
                self._waiters += 1
                try:
                    self._wait(token, timeout, nowait)
                finally:
                    self._waiters -= 1
            except BaseException:
                del queue[token]
                if exclusive:
                    self._exclusive -= 1
                if self._waiters:
                    self._cond.notify_all()  # invariant 4: a later request may go now
                raise
        token.granted = True
        return token

    def _wait(self, token: RangeToken, timeout: float | None, nowait: bool) -> None:
        def what() -> str:
            busy = [t for t in self._queue if t is not token and t.conflicts(token)]
            lo = max(token.start, min(t.start for t in busy))
            hi = min(token.end, max(t.end for t in busy))
            return f"bytes [{lo}, {hi}) have direct I/O or a truncate in progress"

        if nowait:
            raise WouldBlock(f"{what()}; not waiting (nowait)")
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._blocked(token):
            if deadline is None:
                self._cond.wait()
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                raise Busy(f"{what()}; gave up after {timeout:g} s (layout_timeout)")
            self._cond.wait(left)

    def unlock(self, token: RangeToken) -> None:
        """Release a granted request. Caller must hold the condition's lock."""
        assert token.granted, f"{token!r} is not granted"
        del self._queue[token]
        if token.exclusive:
            self._exclusive -= 1
        token.granted = False
        if self._waiters:  # invariant 4 (a notify_all with no waiter costs ~1 us a call)
            self._cond.notify_all()
