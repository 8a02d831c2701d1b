"""Type stub for the C extension daxfs.fs._commit (see _commit.c)."""

from collections.abc import Callable
from typing import Any

from typing_extensions import Buffer

STAGE_NONE: int
STAGE_LOG: int
STAGE_HEADER: int
STAGE_COMMITTED: int
STAGE_DONE: int

def crc32c(data: Buffer, value: int = ..., /) -> int: ...
def plant_missing_flush(n: int, /) -> int: ...
def freeze_clock(ns: int, /) -> None: ...
def set_error_class(cls: type[ValueError], /) -> None: ...
def layout() -> dict[str, int | bytes]: ...
def file_pwrite(cls: type, /) -> Any: ...
def rlock_fast() -> bool: ...

class Committer:
    def __new__(
        cls,
        view: Buffer,
        header_offset: int,
        log_offset: int,
        capacity: int,
        mode: str,
        write: Callable[[int, Buffer], None] | None = ...,
        drain: Callable[[], None] | None = ...,
    ) -> Committer: ...
    @property
    def stage(self) -> int: ...
    @property
    def stamp(self) -> int: ...
    @property
    def commits(self) -> int: ...
    @property
    def mode(self) -> str: ...
    @property
    def record_hits(self) -> int: ...
    def configure(
        self,
        inode_type: type,
        extent_type: type,
        record_type: type,
        locations: dict[int, int],
        max_bytes: int,
    ) -> None: ...
    def commit(self, seq: int, records: list[tuple[int, Buffer]], /) -> bool: ...
    def pwrite(self, journal: object, inode: object, data: Buffer, pos: int, /) -> int | None: ...
    def overwrite(
        self,
        seq: int,
        data_offset: int,
        data: Buffer,
        inode_offset: int,
        ino: int,
        size: int,
        mtime_ns: int,
        end: int,
        /,
    ) -> int: ...
