"""Type stub for the C extension daxfs.fs._create (see _create.c)."""

import array
from collections.abc import Callable
from typing import Any

from typing_extensions import Buffer

CONSTANTS: dict[str, int]

def tree_put(
    dirty: dict[int, tuple[bytearray, Any]],
    new: dict[int, Any],
    view: Buffer,
    verified: set[int],
    seal: Callable[[memoryview], None],
    owner: int,
    kind: int,
    root: int,
    height: int,
    key: int,
    value: Buffer,
    /,
) -> bool: ...
def block_records(
    dirty: dict[int, tuple[bytearray, Any]],
    view: Buffer,
    seal: Callable[[memoryview], None],
    records: list[tuple[int, Any]],
    /,
) -> None: ...
def seal_super(sb: Any, head: bytes, block: Buffer, /) -> tuple[bytes, bytes] | None: ...
def log_inodes(
    dirty: dict[int, Any], locations: dict[int, int], /
) -> list[tuple[int, bytes]] | None: ...
def configure(record_type: type, super_type: type, inode_type: type, /) -> None: ...
def set_error_class(cls: type[ValueError], /) -> None: ...
def index_merge(
    keys: array.array[int],
    values: array.array[int],
    names: bytes,
    added: dict[int, tuple[int, bytes]],
    removed: set[int],
    /,
) -> tuple[bytes, bytes, bytes]: ...
def u64_position(keys: array.array[int], key: int, /) -> int: ...
def flip_bits(block: Buffer, i: int, j: int, used: bool, /) -> int | None: ...
