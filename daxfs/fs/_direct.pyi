"""Stub of the lean direct read in C (daxfs/fs/_direct.c)."""

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
