"""Closeable, and cleanup on error paths that never replaces the error.

Shared by every layer, like daxfs.errors.

Why an error path needs care here
---------------------------------
A device refuses to close while views from ``direct_access`` are alive
(``BufferError``, as ``mmap.close()``), so that no view outlives the memory it
points at.  An exception keeps alive the frames it unwound through, and with
them their local variables -- views of device memory among them.  A cleanup
that closes the device while that exception propagates would then fail with
``BufferError`` and replace the real error (EUCLEAN from a damaged image, say).

``cleanup_after(exc, ...)`` is the one way error paths clean up:

    1. clear the locals of the finished frames that ``exc`` (and every
       exception chained to it) unwound through -- the traceback itself,
       files, lines and functions, stays -- so the views they held are gone
    2. run each cleanup step; a step that fails (after one garbage collection
       and retry for BufferError, views caught in reference cycles) is
       recorded as a note on ``exc`` and the next steps still run
    3. never raise: the caller re-raises ``exc``

Invariant: an error path never replaces the error it is cleaning up after.

Back-references without cycles
-------------------------------
A mounted filesystem's layers call back into each other (the inode table into
the filesystem to free an unlinked inode, the free-extent index into the
allocator, the path walker into the filesystem).  A bound method or a closure
kept as such a callback is a strong reference, and the layers would form
reference cycles: an unmounted filesystem -- or one a crash harness dropped
without unmounting -- and the device views it holds would live until the
cyclic garbage collector ran (which counts objects, not bytes: a harness's
dropped devices reached 1.5 GB).  ``weak_method(obj.method)`` is the callback
that does not keep ``obj`` alive; whoever owns ``obj`` keeps it.
tests/fs/test_no_cycles.py checks that mount, use and unmount (or a drop
without unmount) leave nothing for the collector.
"""

from __future__ import annotations

import abc
import gc
import traceback
import weakref
from collections.abc import Callable
from types import TracebackType
from typing import ParamSpec, Self, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


class Closeable(abc.ABC):
    """A resource released by ``close()``; a context manager that closes on exit.

    On exit by an exception, closing follows ``cleanup_after``: a close that
    fails then is a note on the exception, never a replacement for it.
    """

    @abc.abstractmethod
    def close(self) -> None:
        """Release the resource (idempotent)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.close()
        else:
            cleanup_after(exc, self.close)


def drop_frame_locals(exc: BaseException) -> None:
    """Clear the locals of the finished frames ``exc`` and its chained exceptions unwound.

    Frames still executing (the handler's own, and its callers) are left
    alone.  Views of device memory held by those locals are released, so a
    device can close while ``exc`` is alive.
    """
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        traceback.clear_frames(e.__traceback__)
        stack += (e.__cause__, e.__context__)
        if isinstance(e, BaseExceptionGroup):
            stack += e.exceptions


def run_all(steps: list[Callable[[], object]]) -> None:
    """Run every step, in order, even after one fails; raise the first failure (the
    later ones become notes on it, as ``cleanup_after`` records them)."""
    for i, step in enumerate(steps):
        try:
            step()
        except BaseException as exc:
            cleanup_after(exc, *steps[i + 1 :])
            raise


def cleanup_after(exc: BaseException, *steps: Callable[[], object] | None) -> None:
    """Run cleanup ``steps`` (None entries skipped) on the error path of ``exc``.

    See the module docstring.  Never raises (a step's own Exception becomes a
    note on ``exc``); the caller re-raises ``exc``.
    """
    drop_frame_locals(exc)
    for step in steps:
        if step is None:
            continue
        try:
            try:
                step()
            except BufferError:
                gc.collect()  # views kept only by reference cycles
                step()
        except Exception as again:
            exc.add_note(f"(cleanup after this error also failed: {again!r})")


def weak_method(method: Callable[P, R]) -> Callable[P, R]:
    """A callback calling bound ``method`` without keeping its object alive.

    Calling it after the object was freed is a broken invariant (its owner
    dropped it while a layer it owns still called back): AssertionError.
    """
    ref = weakref.WeakMethod(method)

    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        bound = ref()
        assert bound is not None, "callback called after its object was freed"
        return bound(*args, **kwargs)

    return call
