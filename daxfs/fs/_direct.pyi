"""Stub of the lean direct read in C (daxfs/fs/_direct.c)."""

from collections.abc import Callable
from typing import Any

class LeanRead:
    def __init__(
        self,
        extent_type: type,
        token_type: type,
        entries: dict[int, Any],
        cache: Any,
        fast: Any,
        fd: int,
        stats: dict[str, int],
        alignment: int,
        block_shift: int,
        unwritten: int,
    ) -> None: ...
    def read(self, inode: Any, pos: object, buffer: object, /) -> Any: ...
    def submit(
        self, inode: Any, pos: object, buffer: object, path: str, inflight: Any, guard: Any, /
    ) -> Any: ...
    def set_submit(
        self,
        dio: Any,
        bdev: Any,
        aio: Any,
        bio_type: type,
        future_type: type,
        op_read: object,
        flags_none: object,
    ) -> None: ...

def lean_end(bio: Any, /) -> None: ...
def setup_end(
    future_lock: Any,
    py_end: Callable[[Any], None],
    py_done: Callable[[Any, Any], None],
    states: tuple[str, str, str],
    /,
) -> Callable[[Any], None]: ...
