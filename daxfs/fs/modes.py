"""Mode strings and io wrapping, as ``builtins.open`` does them."""

from __future__ import annotations

import dataclasses
import io
from typing import IO, Any

from daxfs.errors import InvalidArgument


@dataclasses.dataclass(frozen=True, slots=True)
class ModeSpec:
    reading: bool
    writing: bool
    append: bool
    create: bool
    exclusive: bool
    truncate: bool
    binary: bool
    raw_mode: str  # the mode of the raw File, as FileIO reports it


def parse(
    mode: str,
    buffering: int,
    encoding: str | None,
    errors: str | None,
    newline: str | None,
) -> ModeSpec:
    """Check a mode string and the other open() arguments, as builtins.open.

    Raises:
        InvalidArgument (EINVAL, also ValueError): anything open() rejects.
    """
    if not isinstance(mode, str):
        raise InvalidArgument(f"invalid mode: {mode!r}")
    chars = set(mode)
    if len(chars) != len(mode) or chars - set("rwxab+t"):
        raise InvalidArgument(f"invalid mode: {mode!r}")
    kinds = chars & set("rwxa")
    if len(kinds) != 1:
        raise InvalidArgument(
            f"invalid mode {mode!r}: must have exactly one of create/read/write/append mode"
        )
    binary = "b" in chars
    if binary and "t" in chars:
        raise InvalidArgument("can't have text and binary mode at once")
    if binary and (encoding is not None or errors is not None or newline is not None):
        raise InvalidArgument("binary mode doesn't take an encoding, errors or newline argument")
    if not isinstance(buffering, int) or isinstance(buffering, bool):
        raise InvalidArgument(f"buffering must be an integer, not {type(buffering).__name__}")
    if buffering == 0 and not binary:
        raise InvalidArgument("can't have unbuffered text I/O")
    kind = kinds.pop()
    plus = "+" in chars
    raw = {"r": "rb", "w": "wb", "x": "xb", "a": "ab"}[kind]
    if plus:
        raw = raw[0] + "b+" if kind != "r" else "rb+"
    return ModeSpec(
        reading=kind == "r" or plus,
        writing=kind != "r" or plus,
        append=kind == "a",
        create=kind != "r",
        exclusive=kind == "x",
        truncate=kind == "w",
        binary=binary,
        raw_mode=raw,
    )


def wrap(
    raw: io.RawIOBase,
    spec: ModeSpec,
    buffering: int,
    encoding: str | None,
    errors: str | None,
    newline: str | None,
) -> IO[Any]:
    """Wrap a raw file as builtins.open would (buffered and/or text layers)."""
    try:
        if buffering == 0:
            return raw  # type: ignore[return-value]
        line_buffering = buffering == 1
        size = io.DEFAULT_BUFFER_SIZE if buffering in (-1, 1) else buffering
        if size < 0:
            raise InvalidArgument(f"invalid buffering size {buffering}")
        buffered: io.BufferedIOBase
        if spec.reading and spec.writing:
            buffered = io.BufferedRandom(raw, size)
        elif spec.writing:
            buffered = io.BufferedWriter(raw, size)
        else:
            buffered = io.BufferedReader(raw, size)
        if spec.binary:
            return buffered
        text = io.TextIOWrapper(
            buffered,
            encoding=encoding or "utf-8",
            errors=errors,
            newline=newline,
            line_buffering=line_buffering,
        )
        text.mode = spec.raw_mode.replace("b", "")  # type: ignore[misc]
        return text
    except BaseException:
        raw.close()
        raise
