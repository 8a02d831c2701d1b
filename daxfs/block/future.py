"""LeanFuture: a ``concurrent.futures.Future`` without a Condition of its own.

Theory of operation
-------------------
``concurrent.futures.Future()`` builds a ``threading.Condition`` (an RLock, a
deque, bound methods: about 2 us in Python) and every method takes it; a bio's
Future is made, resolved and waited for once, so at 40,000 bios a second that
Condition was a tenth of a core.  A ``LeanFuture`` IS a
``concurrent.futures.Future`` (``isinstance`` holds, ``asyncio.wrap_future``,
``concurrent.futures.wait`` and ``as_completed`` take it), but:

    state     one module-wide lock (``_LOCK``, an RLock) orders every LeanFuture's
              transitions: PENDING -> FINISHED (``set_result`` /
              ``set_exception``) or -> CANCELLED (``cancel``), as the base class
    result()  done: no lock at all; else the waiting thread parks on a lock of
              its own (``_sleepers``), which the transition releases
    wait()    ``concurrent.futures.wait`` and ``as_completed`` take
              ``f._condition``: a property that makes a per-future Condition on
              first use; a transition after that also takes it, so a waiter
              installed under it is never missed
    waiter    an optional reaper (``daxfs.block.bio._Waiter``, the file device's
              ``_uring.BioRing``): ``result()`` without a timeout calls
              ``waiter.wait(self)`` first, which reaps for it in the calling thread
              (the BioRing's waiting leader: one wake-up instead of two), and
              nested when it runs on the reaper itself -- a Future waited for in an
              ``end_io`` does not wait for the thread that must resolve it

Invariants
  1. A transition out of PENDING (or RUNNING) happens once, under ``_LOCK`` (and
     under the future's Condition when one was made); a second ``set_result`` /
     ``set_exception`` raises InvalidStateError, as the base class.
  2. Every thread parked in ``result``/``exception`` is woken by the transition
     (its lock released) or by its own timeout, never both lost: it removes its
     lock under ``_LOCK`` after a timeout, and a transition takes the list under it.
  3. Done callbacks run once, after the transition, outside every lock, in the
     order added; one added after the transition runs at once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import CancelledError, Future, InvalidStateError
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures._base import (
    CANCELLED,
    CANCELLED_AND_NOTIFIED,
    FINISHED,
    LOGGER,
    PENDING,
    RUNNING,
)
from typing import Any, Protocol, TypeVar

_T = TypeVar("_T")

#: orders the transitions of every LeanFuture (invariant 1): held for a few stores
_LOCK = threading.RLock()
_allocate_lock = threading.Lock
_DONE = frozenset((CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED))
_CANCELLED = frozenset((CANCELLED, CANCELLED_AND_NOTIFIED))


class FutureWaiter(Protocol):
    """A reaper that must not wait for itself (``_uring.BioRing``): ``wait(obj)``
    reaps until ``obj`` is done when called on the reaper thread, else returns."""

    def wait(self, obj: Any, /) -> None: ...


class LeanFuture(Future[_T]):
    """A ``concurrent.futures.Future`` without a Condition of its own; see the module
    docstring.  ``waiter``: the reaper whose thread resolves it (optional)."""

    __slots__ = ("_cbs", "_cond", "_exception", "_result", "_sleepers", "_state", "_w", "_waiter")

    def __init__(self, waiter: FutureWaiter | None = None) -> None:  # no Condition
        self._state = PENDING
        self._result: Any = None
        self._exception: BaseException | None = None
        self._cbs: list[Callable[[Future[_T]], object]] | None = None
        self._w: list[Any] | None = None  # concurrent.futures.wait's waiters
        self._cond: threading.Condition | None = None
        self._sleepers: list[Any] | None = None
        self._waiter = waiter

    # -- what the base class's helpers (wait, as_completed, __repr__) reach --------------

    @property
    def _condition(self) -> threading.Condition:  # type: ignore[override]
        """A Condition of this future, made on first use (only ``wait``,
        ``as_completed`` and ``repr`` take it)."""
        cond = self._cond
        if cond is None:
            with _LOCK:
                cond = self._cond
                if cond is None:
                    cond = self._cond = threading.Condition()
        return cond

    @property
    def _waiters(self) -> list[Any]:  # type: ignore[override]
        waiters = self._w
        if waiters is None:
            with _LOCK:
                waiters = self._w
                if waiters is None:
                    waiters = self._w = []
        return waiters

    @property
    def _done_callbacks(self) -> list[Callable[[Future[_T]], object]]:
        return self._cbs or []

    # -- queries ---------------------------------------------------------------------------

    def done(self) -> bool:
        return self._state in _DONE

    def cancelled(self) -> bool:
        return self._state in _CANCELLED

    def running(self) -> bool:
        return self._state == RUNNING

    def result(self, timeout: float | None = None) -> _T:
        if self._state != FINISHED:
            self._sleep(timeout)
        exc = self._exception
        if exc is not None:
            try:
                raise exc
            finally:  # no cycle through the traceback
                self = None  # type: ignore[assignment]
                exc = None
        result: _T = self._result
        return result

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if self._state != FINISHED:
            self._sleep(timeout)
        return self._exception

    def _sleep(self, timeout: float | None) -> None:
        """Wait until finished (return), cancelled (CancelledError) or ``timeout``
        seconds passed (TimeoutError)."""
        waiter = self._waiter
        if waiter is not None and timeout is None:
            waiter.wait(self)  # reaps for it (nested on the reaper): done, mostly
            if self._state == FINISHED:
                return
        with _LOCK:
            state = self._state
            if state == FINISHED:
                return
            if state in _CANCELLED:
                raise CancelledError()
            lock = _allocate_lock()
            lock.acquire()
            sleepers = self._sleepers
            if sleepers is None:
                self._sleepers = [lock]
            else:
                sleepers.append(lock)
        if timeout is None:
            lock.acquire()
        elif not lock.acquire(True, max(timeout, 0.0)):
            with _LOCK:  # invariant 2: out of the list, unless a transition took it
                sleepers = self._sleepers
                if sleepers is not None and lock in sleepers:
                    sleepers.remove(lock)
        state = self._state
        if state == FINISHED:
            return
        if state in _CANCELLED:
            raise CancelledError()
        raise FutureTimeout()

    # -- transitions -----------------------------------------------------------------------

    def _move(self, state: str, result: Any, exc: BaseException | None, note: str) -> None:
        """PENDING/RUNNING -> ``state`` (invariant 1), the sleepers and ``wait``'s
        waiters told (``note``: the waiter method), then the callbacks."""
        cond = self._cond
        if cond is None:
            with _LOCK:
                cond = self._cond
                if cond is None:
                    self._set(state, result, exc, note)
        if cond is not None:  # someone in wait()/as_completed may be installing a waiter
            with cond, _LOCK:
                self._set(state, result, exc, note)
        if self._cbs:
            self._invoke_callbacks()

    def _set(self, state: str, result: Any, exc: BaseException | None, note: str) -> None:
        """The transition itself (caller holds ``_LOCK``)."""
        if self._state in _DONE:
            raise InvalidStateError(f"{self._state}: {self!r}")
        self._result = result
        self._exception = exc
        self._state = state
        sleepers, self._sleepers = self._sleepers, None
        if sleepers:
            for lock in sleepers:
                lock.release()
        if self._w and note:
            for waiter in self._w:
                getattr(waiter, note)(self)

    def set_result(self, result: _T) -> None:
        self._move(FINISHED, result, None, "add_result")

    def set_exception(self, exception: BaseException | None) -> None:
        self._move(FINISHED, None, exception, "add_exception")

    def cancel(self) -> bool:
        with _LOCK:
            state = self._state
            if state in (RUNNING, FINISHED):
                return False
            if state in _CANCELLED:
                return True
        try:
            self._move(CANCELLED, None, None, "")
        except InvalidStateError:  # finished meanwhile
            return self._state in _CANCELLED
        return True

    def set_running_or_notify_cancel(self) -> bool:
        with self._condition, _LOCK:
            if self._state == CANCELLED:
                self._state = CANCELLED_AND_NOTIFIED
                for waiter in self._w or ():
                    waiter.add_cancelled(self)
                return False
            if self._state == PENDING:
                self._state = RUNNING
                return True
            raise RuntimeError(f"Future in unexpected state: {self._state}")

    def add_done_callback(self, fn: Callable[[Future[_T]], object]) -> None:
        with _LOCK:
            if self._state not in _DONE:
                cbs = self._cbs
                if cbs is None:
                    self._cbs = [fn]
                else:
                    cbs.append(fn)
                return
        try:
            fn(self)
        except Exception:
            LOGGER.exception("exception calling callback for %r", self)

    def _invoke_callbacks(self) -> None:
        for callback in self._cbs or ():
            try:
                callback(self)
            except Exception:
                LOGGER.exception("exception calling callback for %r", self)


__all__ = ["FutureWaiter", "LeanFuture"]
