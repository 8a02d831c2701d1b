"""Mode strings and io wrapping, as ``builtins.open`` does them."""

from __future__ import annotations

import dataclasses
import io
import warnings
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
    mode: str  # the mode string given to open (a text wrapper reports it)


def parse(
    mode: str,
    buffering: int,
    encoding: str | None,
    errors: str | None,
    newline: str | None,
    name: str = "",
) -> ModeSpec:
    """Check a mode string and the other open() arguments, as builtins.open.

    ``name`` is the path being opened, for the messages.

    Raises:
        TypeError: ``mode`` not a str or ``buffering`` not an int (as open).
        InvalidArgument (EINVAL, also ValueError): anything else open() rejects.
    """

    def bad(why: str) -> InvalidArgument:
        return InvalidArgument(f"{why} (opening {name})", name)

    if not isinstance(mode, str):
        raise TypeError(f"open() argument 'mode' must be str, not {type(mode).__name__}")
    if not isinstance(buffering, int) or isinstance(buffering, bool):
        raise TypeError(f"buffering must be an integer, not {type(buffering).__name__}")
    chars = set(mode)
    if len(chars) != len(mode) or chars - set("rwxab+t"):
        raise bad(f"invalid mode: {mode!r}")
    kinds = chars & set("rwxa")
    if len(kinds) != 1:
        raise bad(f"invalid mode {mode!r}: must have exactly one of create/read/write/append mode")
    binary = "b" in chars
    if binary and "t" in chars:
        raise bad("can't have text and binary mode at once")
    if binary and (encoding is not None or errors is not None or newline is not None):
        raise bad("binary mode doesn't take an encoding, errors or newline argument")
    if buffering == 0 and not binary:
        raise bad("can't have unbuffered text I/O")
    kind = kinds.pop()
    plus = "+" in chars
    # FileIO's names: "w+" opens as O_RDWR|O_CREAT|O_TRUNC, which it reports as "rb+"
    raw = {"r": "rb", "w": "wb", "x": "xb", "a": "ab"}[kind]
    if plus:
        raw = {"r": "rb+", "w": "rb+", "x": "xb+", "a": "ab+"}[kind]
    return ModeSpec(
        reading=kind == "r" or plus,
        writing=kind != "r" or plus,
        append=kind == "a",
        create=kind != "r",
        exclusive=kind == "x",
        truncate=kind == "w",
        binary=binary,
        raw_mode=raw,
        mode=mode,
    )


def wrap(
    raw: io.RawIOBase,
    spec: ModeSpec,
    buffering: int,
    encoding: str | None,
    errors: str | None,
    newline: str | None,
) -> IO[Any]:
    """Wrap a raw file as builtins.open would (buffered and/or text layers).

    If wrapping fails (an unknown encoding: LookupError), the raw file is closed.
    """
    try:
        if buffering == 0:
            return raw  # type: ignore[return-value]
        line_buffering = buffering == 1
        if line_buffering and spec.binary:
            warnings.warn(
                "line buffering (buffering=1) isn't supported in binary mode, "
                "the default buffer size will be used",
                RuntimeWarning,
                stacklevel=3,
            )
        # as open: 1 and any negative value mean the default size
        size = io.DEFAULT_BUFFER_SIZE if buffering < 0 or buffering == 1 else buffering
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
        text.mode = spec.mode  # type: ignore[misc]
        return text
    except BaseException:
        raw.close()
        raise
