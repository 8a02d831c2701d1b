"""Stub of the io_uring extension (daxfs/block/_uring.c)."""

from collections.abc import Callable, Sequence
from typing import Any

NOP: int
READV: int
WRITEV: int
FDATASYNC: int
FALLOCATE: int
IOV_MAX: int
MAX_ENTRIES: int
SETUP_COOP_TASKRUN: int

def _refuse_setup_flags(mask: int, /) -> int: ...
def misaligned(buffers: Sequence[Any], align: int, /) -> bool: ...

class Ring:
    def __init__(self, entries: int) -> None: ...
    def submit(
        self,
        token: object,
        opcode: int,
        fd: int,
        offset: int,
        buffers: Sequence[Any],
        length: int,
        flags: int,
        defer: bool = False,
        /,
    ) -> None: ...
    def flush(self) -> None: ...
    def reap(self) -> list[tuple[Any, int]]: ...
    def rw(
        self, opcode: int, fd: int, offset: int, buffers: Sequence[Any], flags: int, /
    ) -> int: ...
    def rw_batch(
        self,
        opcode: int,
        fd: int,
        items: Sequence[tuple[int, Any]],
        flags: int,
        depth: int,
        /,
    ) -> list[int]: ...
    def close(self) -> None: ...
    def unsupported(self) -> list[str]: ...
    @property
    def inflight(self) -> int: ...
    @property
    def entries(self) -> int: ...
    @property
    def closed(self) -> bool: ...
    @property
    def private_rings(self) -> int: ...
    @property
    def sync_calls(self) -> int: ...
    @property
    def private_flags(self) -> int: ...

class Fast:
    def __init__(
        self,
        ring: Ring,
        logical_block_size: int,
        max_bytes: int,
        dma_alignment: int,
        size: int,
        readonly: bool,
        depth: int,
    ) -> None: ...
    def read(self, fd: int, offset: object, buffer: object, /) -> int | tuple[int, int] | None: ...
    def write(
        self, fd: int, offset: object, data: object, rw_flags: int, /
    ) -> int | tuple[int, int] | None: ...
    def read_many(self, fd: int, items: list[Any], /) -> list[int] | tuple[int, ...] | None: ...
    def release(self) -> None: ...
    def shutdown(self) -> None: ...
    @property
    def busy(self) -> int: ...
    @property
    def count(self) -> int: ...
    @property
    def closed(self) -> bool: ...

class BioRing:
    def __init__(
        self,
        entries: int,
        logical_block_size: int,
        max_bytes: int,
        dma_alignment: int,
        size: int,
        readonly: bool,
        bio_type: type,
        op_read: object,
        op_write: object,
        future_lock: Any,
        failed: Callable[[Any, int], object],
        report: Callable[[Any, BaseException | None], object],
        start: Callable[[], object],
        rwf_dsync: int,
        defer: bool,
    ) -> None: ...
    def submit(self, fd: int, bio: object, /) -> bool | None: ...
    def serve(self) -> None: ...
    def shutdown(self) -> None: ...
    def close(self) -> None: ...
    @property
    def inflight(self) -> int: ...
    @property
    def count(self) -> int: ...
    @property
    def closed(self) -> bool: ...
    defer: bool
    defer_others: bool
    batch: int
    def wait(self, bio: object, /) -> None: ...
