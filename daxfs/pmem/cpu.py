"""CPU persistence primitives: the native extension, or msync when it is missing.

``daxfs.pmem._native`` (C) provides cache-line flush, store fence and
non-temporal copy.  The flush instruction is picked at run time from CPUID,
best first: CLWB (writes back, keeps the line cached), CLFLUSHOPT (weakly
ordered, evicts), CLFLUSH (serialising, evicts).  ``DAXFS_FLUSH=clflushopt``
(or ``clflush``) forces a weaker one, for tests and comparisons;
``DAXFS_NO_NATIVE=1`` pretends the extension is missing.

Without the extension, or on a CPU without any flush instruction, devices
persist through ``msync`` (``FallbackRegion``), which is correct on any file
but page granular and slow; ``daxfs info`` says so.
"""

from __future__ import annotations

import mmap
import os
from typing import TYPE_CHECKING, Protocol, TypeGuard

import numpy as np

from daxfs.errors import InvalidArgument
from daxfs.pmem.device import PAGE_SIZE, check_range

if TYPE_CHECKING:
    from typing_extensions import Buffer

try:
    if os.environ.get("DAXFS_NO_NATIVE"):
        raise ImportError("DAXFS_NO_NATIVE is set")
    from daxfs.pmem import _native

    _native.set_error_class(InvalidArgument)
    NATIVE_ERROR: str | None = None
except ImportError as exc:  # pragma: no cover - exercised with DAXFS_NO_NATIVE
    _native = None  # type: ignore[assignment]
    NATIVE_ERROR = str(exc)

FLUSH_INSTRUCTIONS = ("clwb", "clflushopt", "clflush")


class Region(Protocol):
    """What a device needs from its persistence engine (see _native.c)."""

    @property
    def mode(self) -> str: ...
    @property
    def address(self) -> int: ...
    def flush(self, offset: int, length: int, /) -> None: ...
    def drain(self) -> None: ...
    def persist(self, offset: int, length: int, /) -> None: ...
    def memcpy(self, offset: int, data: Buffer, drain: bool = ..., /) -> None: ...
    def memset(self, offset: int, length: int, byte: int = ..., drain: bool = ..., /) -> None: ...
    def read_into(self, offset: int, buffer: Buffer, /) -> int: ...
    def read(self, offset: int, length: int, /) -> bytes: ...
    def release(self) -> None: ...


def native_available() -> bool:
    """True if the C extension is loaded (CPU flushes and fences are possible)."""
    return _native is not None


def cpu_features() -> dict[str, bool]:
    """CPUID answers relevant to persistence (all False without the extension)."""
    if _native is None:
        return dict.fromkeys(("x86", *FLUSH_INSTRUCTIONS, "sse2", "avx2", "avx512f"), False)
    return _native.cpu_features()


def flush_instruction() -> tuple[str | None, str]:
    """The cache flush instruction to use, and why; (None, why) if there is none."""
    if _native is None:
        return None, f"native extension unavailable ({NATIVE_ERROR})"
    features = _native.cpu_features()
    forced = os.environ.get("DAXFS_FLUSH")
    if forced:
        if forced not in FLUSH_INSTRUCTIONS:
            raise InvalidArgument(f"DAXFS_FLUSH={forced!r}: expected one of {FLUSH_INSTRUCTIONS}")
        if not features[forced]:
            raise InvalidArgument(f"DAXFS_FLUSH={forced!r}: this CPU has no {forced}")
        return forced, f"forced by DAXFS_FLUSH={forced}"
    for name in FLUSH_INSTRUCTIONS:
        if features[name]:
            return name, f"best flush instruction this CPU has (CPUID: {_cpuid_summary(features)})"
    return None, "this CPU has no cache flush instruction"


def _cpuid_summary(features: dict[str, bool]) -> str:
    return ", ".join(name for name in FLUSH_INSTRUCTIONS if features[name]) or "none"


def diff_lines(a: Buffer, b: Buffer, line: int = 64) -> list[tuple[int, int]]:
    """Byte ranges, in whole ``line``-byte lines, where two equal-length buffers differ.

    Adjacent differing lines merge into one range.  C when the extension is
    loaded, numpy otherwise.
    """
    if _native is not None:
        return _native.diff_lines(a, b, line)
    x = np.frombuffer(a, dtype=np.uint8)
    y = np.frombuffer(b, dtype=np.uint8)
    if len(x) != len(y):
        raise InvalidArgument(f"buffers differ in length: {len(x)} and {len(y)}")
    pad = -len(x) % line
    x = np.concatenate([x, np.zeros(pad, np.uint8)]).reshape(-1, line)
    y = np.concatenate([y, np.zeros(pad, np.uint8)]).reshape(-1, line)
    ranges: list[tuple[int, int]] = []
    for index in np.flatnonzero((x != y).any(axis=1)).tolist():
        start, end = index * line, min((index + 1) * line, len(a))
        if ranges and ranges[-1][1] == start:
            ranges[-1] = (ranges[-1][0], end)
        else:
            ranges.append((start, end))
    return ranges


def is_native(region: Region) -> TypeGuard[_native.Region]:
    """True if ``region`` is the C engine (not the msync fallback)."""
    return _native is not None and isinstance(region, _native.Region)


def make_region(mapping: mmap.mmap, view: memoryview, mode: str, readonly: bool) -> Region:
    """A persistence engine over ``view`` (a prefix of ``mapping``) for ``mode``.

    ``mode`` is a flush instruction, "none" (fences only) or "msync".
    """
    if _native is not None:
        return _native.Region(view, mode, readonly)
    if mode != "msync":
        raise InvalidArgument(f"persist mode {mode!r} needs the native extension ({NATIVE_ERROR})")
    return FallbackRegion(mapping, len(view), readonly)


class FallbackRegion:
    """msync-only persistence in pure Python, for when the extension is missing."""

    mode = "msync"

    def __init__(self, mapping: mmap.mmap, size: int, readonly: bool) -> None:
        self._map: mmap.mmap | None = mapping
        with memoryview(mapping) as whole:
            self._view = whole[:size]
        self._size = size
        self._readonly = readonly

    def _live(self) -> mmap.mmap:
        if self._map is None:
            raise ValueError("I/O operation on closed device")
        return self._map

    @property
    def address(self) -> int:
        raise InvalidArgument("addresses need the native extension")

    def flush(self, offset: int, length: int, /) -> None:
        mapping = self._live()
        check_range(offset, length, self._size)
        if length == 0:
            return
        start = offset - offset % PAGE_SIZE
        mapping.flush(start, min(offset + length, self._size) - start)

    def drain(self) -> None:
        self._live()

    def persist(self, offset: int, length: int, /) -> None:
        self.flush(offset, length)

    def memcpy(self, offset: int, data: Buffer, drain: bool = True, /) -> None:
        self._live()
        src = memoryview(data).cast("B")
        check_range(offset, len(src), self._size)
        self._writable()
        self._view[offset : offset + len(src)] = src
        self.flush(offset, len(src))

    def memset(self, offset: int, length: int, byte: int = 0, drain: bool = True, /) -> None:
        self._live()
        check_range(offset, length, self._size)
        if not 0 <= byte <= 255:
            raise InvalidArgument(f"byte must be in range(256), got {byte}")
        self._writable()
        chunk = bytes([byte]) * min(length, 1 << 20)
        for pos in range(offset, offset + length, len(chunk) or 1):
            n = min(len(chunk), offset + length - pos)
            self._view[pos : pos + n] = chunk[:n]
        self.flush(offset, length)

    def read_into(self, offset: int, buffer: Buffer, /) -> int:
        self._live()
        dst = memoryview(buffer).cast("B")
        check_range(offset, len(dst), self._size)
        dst[:] = self._view[offset : offset + len(dst)]
        return len(dst)

    def read(self, offset: int, length: int, /) -> bytes:
        self._live()
        check_range(offset, length, self._size)
        return bytes(self._view[offset : offset + length])

    def release(self) -> None:
        self._view.release()
        self._map = None

    def _writable(self) -> None:
        if self._readonly:
            raise TypeError("device is mapped read-only")
