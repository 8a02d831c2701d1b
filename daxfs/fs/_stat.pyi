"""Type stub for the C extension daxfs.fs._stat (see _stat.c)."""

import os
from typing import Any

from typing_extensions import Buffer

def set_error_class(cls: type[ValueError], /) -> None: ...

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
    ) -> None: ...
    def child(self, index: Any, name: bytes, hwm: int, follow: bool, /) -> os.stat_result | int: ...
    def inode(self, ino: int, hwm: int, /) -> os.stat_result | None: ...
    def hash(self, name: bytes, /) -> int: ...
    def release(self) -> None: ...
