"""docs/FORMAT.md stays true: its field tables match the structs of layout.py."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest

from daxfs.fs import layout

DOC = Path(__file__).resolve().parents[2] / "docs" / "FORMAT.md"


def table(heading: str) -> list[tuple[int, int, str]]:
    """(offset, size, field) rows of the first table after ``heading``."""
    text = DOC.read_text()
    start = text.index(heading)
    rows = []
    for line in text[start:].splitlines()[1:]:
        if line.startswith("#"):
            break
        m = re.match(r"\|\s*(\d+)\s*\|\s*(\d+)\s*\|\s*([a-z_0-9]+)", line)
        if m:
            rows.append((int(m.group(1)), int(m.group(2)), m.group(3)))
        elif rows and not line.startswith("|"):
            break
    return rows


def offsets(fmt: str) -> list[tuple[int, int]]:
    """(offset, size) of each field of a struct format."""
    out = []
    pos = 0
    for count, code in re.findall(r"(\d*)([a-zA-Z])", fmt.lstrip("<")):
        size = struct.calcsize("<" + (count or "") + code)
        out.append((pos, size))
        pos += size
    return out


@pytest.mark.parametrize(
    ("heading", "fmt"),
    [
        ("## Superblock", layout._SB.format),
        ("## Inodes", layout._INODE.format),
        ("### Header (block", layout._JH.format),
        ("### Xattr block", layout.XATTR_HEADER.format),
        ("### Xattr entry", layout.XATTR_ENTRY.format),
        ("### Inline extended attributes", layout.INLINE_XATTR.format),
    ],
)
def test_struct_fields_match_the_document(heading: str, fmt: str) -> None:
    documented = [(o, s) for o, s, _ in table(heading)]
    fields = offsets(fmt)
    assert documented[: len(fields)] == fields


def test_node_header_and_arrays() -> None:
    documented = {name: (o, s) for o, s, name in table("## B+tree nodes")}
    assert documented["magic"] == (0, 4)
    assert documented["reserved"][0] == 32
    assert documented["heap"] == (30, 2)
    text = DOC.read_text()
    assert f"| {layout.NODE_KEYS} | ... | keys |" in text
    assert (
        f"`children[{layout.INTERNAL_CAP}]` (u64 block numbers) at {layout.INTERNAL_CHILDREN}"
        in text
    )
    assert f"`slots[{layout.LEAF_CAP}]` at {layout.LEAF_SLOTS}" in text
    assert f"A value is at most {layout.MAX_VALUE} bytes" in text


def test_constants_quoted_in_the_document() -> None:
    text = DOC.read_text()
    assert f"{layout.BITS_PER_BITMAP_BLOCK} blocks per" in text
    assert f"| {layout.BITMAP_CRC_OFFSET} | 4 | crc32c" in text
    assert f"`{layout.INODE_MAGIC:#x}`" in text.replace("0x444F4E49", "0x444f4e49")
    assert f"`{layout.NODE_MAGIC:#x}`" in text.replace("0x4E505442", "0x4e505442")
    assert layout.SB_MAGIC == b"DAXFS\x00SB"
    assert "`DAXFS\\0SB`" in text
    assert layout.JOURNAL_MAGIC.decode() in text
    assert f"| {layout.JH_APPLIED_OFFSET} | 8 | applied_seq" in text
