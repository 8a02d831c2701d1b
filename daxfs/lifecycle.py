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
"""

from __future__ import annotations

import abc
import gc
import traceback
from collections.abc import Callable
from types import TracebackType
from typing import Self


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
