"""Directory entries as fsck reads them: decoded as far as they go, judged one by one.

``daxfs.fs.dir.unpack_entries`` refuses a whole record at its first bad entry
(right for a mounted filesystem); fsck needs every entry it can get, and the
reason for each one it cannot use.
"""

from __future__ import annotations

from daxfs.fs.layout import DIRENT, MAX_NAME

Entry = tuple[bytes, int, int]  # name, ino, DT_* type


def parse_entries(value: bytes) -> tuple[list[Entry], str | None]:
    """The entries of a record, as far as it decodes, and what stopped it."""
    out: list[Entry] = []
    pos = 0
    while pos < len(value):
        if pos + DIRENT.size > len(value):
            return out, f"truncated entry header at byte {pos}"
        ino, dtype, n = DIRENT.unpack_from(value, pos)
        pos += DIRENT.size
        if pos + n > len(value):
            return out, f"truncated name at byte {pos}"
        out.append((value[pos : pos + n], ino, dtype))
        pos += n
    return out, None if out else "empty record"


def bad_name(name: bytes) -> str | None:
    """What makes ``name`` unfit for a directory entry (invariant 1 of daxfs.fs.dir)."""
    if not name:
        return "empty name"
    if name in (b".", b".."):
        return "a name that is '.' or '..'"
    if b"/" in name:
        return "a name holding '/'"
    if b"\0" in name:
        return "a name holding NUL"
    if len(name) > MAX_NAME:
        return f"a name of {len(name)} bytes"
    return None
