"""Type stub for the C extension daxfs.fs._create (see _create.c)."""

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
