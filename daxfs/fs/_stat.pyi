"""Type stub for the C extension daxfs.fs._stat (see _stat.c)."""

import os
from typing import Any

from typing_extensions import Buffer

class StatPath:
    def __init__(
        self,
        *,
        key: bytes,
        view: Buffer,
        places: Buffer,
        cache: dict[int, Any],
        stat_type: type[os.stat_result],
        index_type: type,
        dev: int,
        constants: dict[str, int],
        heads: dict[str, int],
        bheads: dict[bytes, int],
        indexes: dict[int, Any],
        inode_type: type,
        record_type: type,
        root: int,
        paths: tuple[dict[str, int], dict[str, int]] = ...,
        bpaths: tuple[dict[bytes, int], dict[bytes, int]] = ...,
        lock: Any = ...,
        sb: Any = ...,
        dirs: Any = ...,
        limit: int = ...,
    ) -> None: ...
    @property
    def hits(self) -> int: ...
    @property
    def misses(self) -> int: ...
    @property
    def merges(self) -> int: ...
    @property
    def fences(self) -> int: ...
    fence_min: int
    remember: bool
    def stat(self, path: object, follow: bool, /) -> os.stat_result | None: ...
    def path(self, path: str | bytes, follow: bool, hwm: int, /) -> os.stat_result | int: ...
    def child(self, index: Any, name: bytes, hwm: int, follow: bool, /) -> os.stat_result | int: ...
    def inode(self, ino: int, hwm: int, /) -> os.stat_result | None: ...
    def hash(self, name: bytes, /) -> int: ...
    def forget(self) -> None: ...
    def release(self) -> None: ...
