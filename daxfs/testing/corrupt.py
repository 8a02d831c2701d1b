"""Corrupting daxfs images on purpose, one structure at a time.

Theory of operation
-------------------
The images and the map of their structures come from daxfs.testing.images.
A mutator corrupts one structure of an image, structure-aware (a named field
set to an interesting value: 0, 1, all ones, 2^63, 2^32, off by one, a value
from elsewhere) or at random (bytes flipped), and then either leaves its
checksum broken or recomputes it with the layout's own sealing functions
(``checksum_with_hole``, ``seal_node``, ``seal_bitmap_block``,
``JournalHeader.pack``): a checksum proves a structure intact, not true, and
a crafted image has valid checksums.  It returns a ``Mutation``: structure,
field, description, the byte ranges it changed, and whether the corruption
is one the checksums must catch.

Invariants
  1. A mutation is a pure function of (base image, inventory, seed): the same
     seed corrupts the same bytes the same way.
  2. ``Mutation.touched`` covers every byte the mutator changed (for a forged
     journal, also every byte its records would write).
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import stat as st
import struct
from collections.abc import Callable

from daxfs.fs.dir import unpack_entries
from daxfs.fs.layout import (
    BITMAP_BYTES,
    BLOCK_SHIFT,
    BLOCK_SIZE,
    DIRENT,
    EXTENT,
    EXTENT_VALUE,
    INLINE_OFFSET,
    INLINE_XATTR,
    INLINE_XATTR_AREA,
    INO_INODE_FILE,
    INO_ROOT,
    INODE_CRC_OFFSET,
    INODE_SIZE,
    INTERNAL_CHILDREN,
    JH_APPLIED_OFFSET,
    JREC,
    LEAF_SLOTS,
    NODE_KEYS,
    SB_CRC_OFFSET,
    XATTR_CRC_OFFSET,
    XATTR_ENTRIES,
    XATTR_ENTRY,
    XATTR_PTR,
    JournalHeader,
    checksum_with_hole,
    crc32c,
    seal_bitmap_block,
    seal_node,
    unpack_xattr_block,
)
from daxfs.testing.images import Inventory, Range, pattern

# Field tables: (name, byte offset, size).  tests/testing/test_fuzz.py checks them
# against layout.py by packing records with distinct values.
# fmt: off
SUPERBLOCK_FIELDS = (
    ("magic", 0, 8), ("version", 8, 4), ("block_size", 12, 4), ("block_count", 16, 8),
    ("uuid", 24, 16), ("label", 40, 64), ("feature_compat", 104, 4),
    ("feature_incompat", 108, 4), ("feature_ro_compat", 112, 4), ("inode_size", 116, 4),
    ("journal_start", 120, 8), ("journal_blocks", 128, 8), ("bitmap_start", 136, 8),
    ("bitmap_blocks", 144, 8), ("inode_block0", 152, 8), ("root_ino", 160, 8),
    ("created_ns", 168, 8), ("hash_key", 176, 16), ("free_blocks", 192, 8),
    ("free_inodes", 200, 8), ("used_inodes", 208, 8), ("free_ino_head", 216, 8),
    ("orphan_head", 224, 8), ("next_generation", 232, 8), ("state", 240, 4),
    ("mount_count", 244, 4), ("last_mount_ns", 248, 8), ("inode_hwm", 256, 8),
)
INODE_FIELDS = (
    ("magic", 0, 4), ("ino", 8, 8), ("mode", 16, 4), ("nlink", 20, 4), ("uid", 24, 4),
    ("gid", 28, 4), ("size", 32, 8), ("blocks", 40, 8), ("atime_ns", 48, 8),
    ("mtime_ns", 56, 8), ("generation", 80, 4), ("flags", 84, 4), ("next", 88, 8),
    ("parent", 96, 8), ("map_kind", 104, 1), ("map_height", 105, 1), ("map_count", 106, 2),
    ("xattr_bytes", 108, 2), ("reserved", 110, 2), ("map_root", 112, 8), ("entries", 120, 8),
)
EXTENT_FIELDS = (("lblk", 0, 8), ("pblk", 8, 8), ("length", 16, 4), ("flags", 20, 4))
NODE_FIELDS = (
    ("magic", 0, 4), ("owner", 8, 8), ("blockno", 16, 8), ("level", 24, 2), ("count", 26, 2),
    ("kind", 28, 2), ("heap", 30, 2), ("reserved", 32, 8),
)
XATTR_FIELDS = (
    ("magic", 0, 4), ("owner", 8, 8), ("blockno", 16, 8), ("count", 24, 2), ("used", 26, 2),
    ("reserved", 28, 4),
)
XATTR_ENTRY_FIELDS = (("name_len", 0, 1), ("kind", 1, 1), ("reserved", 2, 2), ("value_len", 4, 4))
INLINE_XATTR_FIELDS = (("name_len", 0, 1), ("value_len", 1, 1))
_XATTR_BYTES_AT = next(offset for name, offset, _ in INODE_FIELDS if name == "xattr_bytes")
JOURNAL_FIELDS = (
    ("magic", 0, 8), ("seq", 8, 8), ("nrecords", 16, 4), ("log_bytes", 20, 4),
    ("log_crc", 24, 4), ("header_crc", 28, 4), ("applied_seq", JH_APPLIED_OFFSET, 8),
)
# fmt: on


# --------------------------------------------------------------------------- mutations


@dataclasses.dataclass
class Mutation:
    """One corruption of an image."""

    structure: str  # superblock, journal, bitmap, inode, extent, node, dirent, random, data
    field: str
    detail: str  # what exactly was done, for the reproducer
    sealed: bool  # checksums recomputed (a lie with valid checksums)
    touched: list[Range]
    #: every path may legitimately change (a crafted superblock or journal can do anything)
    global_effect: bool = False


STRUCTURES = (
    "superblock",
    "journal",
    "bitmap",
    "inode",
    "extent",
    "node",
    "dirent",
    "xattr",
    "random",
)


def interesting(rng: random.Random, old: int, size: int) -> int:
    """A value a bug would not survive, for a field of ``size`` bytes that holds ``old``
    (never ``old`` itself)."""
    top = (1 << (8 * size)) - 1
    choices = [0, 1, top, top - 1, old + 1, old - 1, old * 2, rng.randrange(top + 1)]
    if size >= 8:
        choices += [1 << 63, 1 << 32, (1 << 32) - 1, 1 << 40]
    if size >= 4:
        choices += [1 << 31, 1 << 16]
    for _ in range(20):
        value = rng.choice(choices) & top
        if value != old:
            return value
    return old ^ 1


def _set(image: bytearray, offset: int, size: int, value: int) -> Range:
    image[offset : offset + size] = value.to_bytes(size, "little")
    return offset, offset + size


def _flip(rng: random.Random, image: bytearray, start: int, end: int, count: int) -> list[Range]:
    out = []
    for _ in range(count):
        at = rng.randrange(start, end)
        image[at] ^= 1 << rng.randrange(8)
        out.append((at, at + 1))
    return out


def _reseal_inode(image: bytearray, offset: int) -> None:
    view = memoryview(image)[offset : offset + INODE_SIZE]
    struct.pack_into("<I", view, INODE_CRC_OFFSET, checksum_with_hole(view, INODE_CRC_OFFSET))


def _reseal_superblock(image: bytearray, offset: int) -> None:
    block = memoryview(image)[offset : offset + BLOCK_SIZE]
    struct.pack_into("<I", block, SB_CRC_OFFSET, crc32c(block[:SB_CRC_OFFSET]))


def _reseal_node(image: bytearray, block: int) -> None:
    seal_node(memoryview(image)[block << BLOCK_SHIFT : (block + 1) << BLOCK_SHIFT])


def _field(rng: random.Random, table: tuple[tuple[str, int, int], ...]) -> tuple[str, int, int]:
    return rng.choice(table)


def mutate_superblock(rng: random.Random, img: bytearray, inv: Inventory, seal: bool) -> Mutation:
    which = rng.choice(("primary", "primary", "backup", "both"))
    name, offset, size = _field(rng, SUPERBLOCK_FIELDS)
    bases = {"primary": [0], "backup": [len(img) - BLOCK_SIZE], "both": [0, len(img) - BLOCK_SIZE]}
    old = int.from_bytes(img[offset : offset + min(size, 8)], "little")
    width = min(size, 8)
    value = interesting(rng, old, width)
    touched = []
    for base in bases[which]:
        touched.append(_set(img, base + offset, width, value))
        if seal:
            _reseal_superblock(img, base)
    return Mutation(
        "superblock", name, f"{which} {name}: {old:#x} -> {value:#x}", seal, touched, True
    )


def mutate_journal(rng: random.Random, img: bytearray, inv: Inventory, seal: bool) -> Mutation:
    start = inv.journal[0] << BLOCK_SHIFT
    log = start + BLOCK_SIZE
    roll = rng.random()
    if seal and roll < 0.45:
        return _forge_journal(rng, img, inv)
    if roll < 0.75:
        name, offset, size = _field(rng, JOURNAL_FIELDS)
        old = int.from_bytes(img[start + offset : start + offset + size], "little")
        value = interesting(rng, old, size)
        touched = [_set(img, start + offset, size, value)]
        if seal and name not in ("header_crc", "applied_seq"):
            raw = bytearray(img[start : start + 32])
            struct.pack_into("<I", raw, 28, crc32c(bytes(raw[:28])))
            img[start : start + 32] = raw
        return Mutation(
            "journal", name, f"header {name}: {old:#x} -> {value:#x}", seal, touched, seal
        )
    # a record of the log: its offset or length, or bytes of its payload
    header = JournalHeader.unpack(bytes(img[start : start + 32]))
    nrec = header.nrecords if header is not None else 0
    pos = 0
    records = []
    for _ in range(min(nrec, 1000)):
        offset, length, _ = JREC.unpack_from(img, log + pos)
        records.append((pos, offset, length))
        pos += JREC.size + ((length + 7) & ~7)
        if pos > inv.journal[1] << BLOCK_SHIFT:
            break
    if not records:
        touched = _flip(rng, img, log, log + 4096, rng.randint(1, 8))
        return Mutation(
            "journal", "log bytes", f"flipped {len(touched)} bits of the log", seal, touched
        )
    pos, offset, length = rng.choice(records)
    what = rng.choice(("offset", "length", "payload"))
    if what == "offset":
        value = interesting(rng, offset, 8)
        touched = [_set(img, log + pos, 8, value)]
        detail = f"record at log+{pos}: offset {offset:#x} -> {value:#x}"
    elif what == "length":
        value = interesting(rng, length, 4)
        touched = [_set(img, log + pos + 8, 4, value)]
        detail = f"record at log+{pos}: length {length} -> {value}"
    else:
        touched = _flip(rng, img, log + pos + JREC.size, log + pos + JREC.size + max(1, length), 2)
        detail = f"record at log+{pos}: payload bits flipped"
    if seal and header is not None:
        payload = bytes(img[log : log + header.log_bytes])
        fixed = JournalHeader(header.seq, header.nrecords, header.log_bytes, crc32c(payload))
        img[start : start + 32] = fixed.pack()
        touched.append((start, start + 32))
    touched.append((offset, offset + length))  # what the record would have written
    return Mutation("journal", f"record {what}", detail, seal, touched, seal)


def _forge_journal(rng: random.Random, img: bytearray, inv: Inventory) -> Mutation:
    """A committed transaction, valid checksums, whose records aim where they must not."""
    start = inv.journal[0] << BLOCK_SHIFT
    log = start + BLOCK_SIZE
    limit = inv.block_count << BLOCK_SHIFT
    applied = struct.unpack_from("<Q", img, start + JH_APPLIED_OFFSET)[0]
    header = JournalHeader.unpack(bytes(img[start : start + 32]))
    seq = max(applied, header.seq if header else 0) + 1
    target = rng.choice(
        (
            "log",
            "past end",
            "2^64-1",
            "huge length",
            "superblock",
            "bitmap",
            "inode block",
            "random block",
            "many records",
        )
    )
    length = 64
    payload = pattern(rng.randrange(1 << 30), length)
    if target == "log":
        offset = log + rng.randrange(4096)
    elif target == "past end":
        offset = limit + rng.randrange(1 << 20)
    elif target == "2^64-1":
        offset = (1 << 64) - 1
    elif target == "huge length":
        offset, length = rng.randrange(limit), (1 << 32) - 1
    elif target == "superblock":
        offset = rng.randrange(0, 4096 - 64, 8)
    elif target == "bitmap":
        offset = (inv.bitmap[0] << BLOCK_SHIFT) + rng.randrange(0, BITMAP_BYTES - 64, 8)
    elif target == "inode block":
        offset = (inv.inode_block0 << BLOCK_SHIFT) + rng.randrange(0, 4096 - 64, 8)
    else:
        offset = rng.randrange(inv.journal[1] << BLOCK_SHIFT, limit - 64)
    count = 1 if target != "many records" else 1 << 20
    body = JREC.pack(offset, length, 0) + payload if length == 64 else JREC.pack(offset, length, 0)
    if target == "many records":
        body = JREC.pack(offset, 64, 0) + payload
    room = (inv.journal[1] - inv.journal[0] - 1) << BLOCK_SHIFT
    body = body[:room]
    img[log : log + len(body)] = body
    jh = JournalHeader(seq, count, len(body), crc32c(body))
    img[start : start + 32] = jh.pack()
    touched = [(start, start + 32), (log, log + len(body))]
    if offset < limit:
        touched.append((offset, min(limit, offset + length)))
    return Mutation(
        "journal",
        f"forged {target}",
        f"committed seq {seq}: {count} record(s) at {offset:#x} length {length:#x}",
        True,
        touched,
        True,
    )


def mutate_bitmap(rng: random.Random, img: bytearray, inv: Inventory, seal: bool) -> Mutation:
    block = rng.randrange(*inv.bitmap)
    base = block << BLOCK_SHIFT
    used_bytes = min(BITMAP_BYTES, -(-inv.block_count // 8))
    if rng.random() < 0.5:  # flip bits of blocks in use (the start of the device)
        touched = _flip(rng, img, base, base + min(used_bytes, 512), rng.randint(1, 8))
        what = "bits of used blocks"
    else:
        touched = _flip(rng, img, base, base + used_bytes, rng.randint(1, 8))
        what = "random bits"
    if seal:
        seal_bitmap_block(memoryview(img)[base : base + BLOCK_SIZE])
    return Mutation("bitmap", what, f"block {block}: {len(touched)} bits flipped", seal, touched)


def _pick_inode(rng: random.Random, inv: Inventory) -> tuple[int, int, str]:
    """An inode, each kind equally likely (else the 300 entries of /big would dominate)."""
    groups: dict[str, list[int]] = {}
    for ino, (_, what) in inv.inodes.items():
        kind = what.split(" ")[0] if ino > INO_ROOT else what
        if "/big/" in what:
            kind = "big entry"
        groups.setdefault(kind, []).append(ino)
    kind = rng.choice(sorted(groups))
    ino = rng.choice(sorted(groups[kind]))
    offset, what = inv.inodes[ino]
    return ino, offset, what


def mutate_inode(rng: random.Random, img: bytearray, inv: Inventory, seal: bool) -> Mutation:
    ino, base, what = _pick_inode(rng, inv)
    name, offset, size = _field(rng, INODE_FIELDS)
    old = int.from_bytes(img[base + offset : base + offset + size], "little")
    if name == "ino" or (name in ("next", "parent") and rng.random() < 0.5):
        options = [ino, ino + 1, INO_ROOT, INO_INODE_FILE, *inv.free_inodes[:2], 1 << 32]
    elif name == "mode" and rng.random() < 0.5:
        options = [0, st.S_IFDIR | 0o755, st.S_IFREG | 0o644, st.S_IFLNK | 0o777, 0o10644, 0o644]
    else:
        options = [interesting(rng, old, size)]
    value = rng.choice([v for v in options if v != old] or [old ^ 1])
    touched = [_set(img, base + offset, size, value)]
    if seal:
        _reseal_inode(img, base)
    detail = f"inode {ino} ({what}) {name}: {old:#x} -> {value:#x}"
    return Mutation("inode", name, detail, seal, touched)


def mutate_extent(rng: random.Random, img: bytearray, inv: Inventory, seal: bool) -> Mutation:
    if not inv.inline:
        return mutate_inode(rng, img, inv, seal)
    multi = [x for x in inv.inline if x[1] > 1 or x[0] == INO_INODE_FILE]
    ino, count = rng.choice(multi if multi and rng.random() < 0.5 else inv.inline)
    base = inv.inodes[ino][0]
    i = rng.randrange(max(1, count) + (1 if rng.random() < 0.2 else 0))  # sometimes past count
    name, offset, size = _field(rng, EXTENT_FIELDS)
    at = base + INLINE_OFFSET + i * EXTENT.size + offset
    if at + size > base + INODE_SIZE:
        at = base + INLINE_OFFSET + offset
    old = int.from_bytes(img[at : at + size], "little")
    value = interesting(rng, old, size)
    if name == "flags" and rng.random() < 0.5:
        value = rng.choice([2, 4, 0x80000000, 3])
    touched = [_set(img, at, size, value)]
    if seal:
        _reseal_inode(img, base)
    detail = f"inode {ino} inline extent {i} {name}: {old:#x} -> {value:#x}"
    return Mutation("extent", name, detail, seal, touched)


def mutate_node(rng: random.Random, img: bytearray, inv: Inventory, seal: bool) -> Mutation:
    node = rng.choice(inv.nodes)
    base = node.block << BLOCK_SHIFT
    roll = rng.random()
    if roll < 0.4:
        name, offset, size = _field(rng, NODE_FIELDS)
        at = base + offset
    elif roll < 0.65 and node.count:
        i = rng.randrange(node.count + 1)
        name, at, size = f"key[{i}]", base + NODE_KEYS + 8 * i, 8
    elif node.level and node.count:
        i = rng.randrange(node.count)
        name, at, size = f"child[{i}]", base + INTERNAL_CHILDREN + 8 * i, 8
    elif node.count:
        i = rng.randrange(node.count)
        part = rng.choice(("offset", "length", "value"))
        slot = base + LEAF_SLOTS + 4 * i
        if part == "value":
            voff, vlen = struct.unpack_from("<HH", img, slot)
            if node.kind == "extents" and vlen == EXTENT_VALUE.size and voff + vlen <= BLOCK_SIZE:
                which = rng.choice((("pblk", 0, 8), ("length", 8, 4), ("flags", 12, 4)))
                name, at, size = f"value[{i}].{which[0]}", base + voff + which[1], which[2]
            else:
                name, at, size = f"value[{i}] byte", base + min(voff, BLOCK_SIZE - 1), 1
        else:
            name, at, size = f"slot[{i}].{part}", slot + (0 if part == "offset" else 2), 2
    else:
        name, at, size = "count", base + 26, 2
    old = int.from_bytes(img[at : at + size], "little")
    value = interesting(rng, old, size)
    touched = [_set(img, at, size, value)]
    if seal:
        _reseal_node(img, node.block)
    detail = (
        f"{node.kind} node {node.block} of inode {node.owner} (level {node.level}, "
        f"count {node.count}) {name}: {old:#x} -> {value:#x}"
    )
    return Mutation("node", f"{node.kind} {name.split('[')[0]}", detail, seal, touched)


def mutate_dirent(rng: random.Random, img: bytearray, inv: Inventory, seal: bool) -> Mutation:
    block, owner, count = rng.choice(inv.leaves)
    base = block << BLOCK_SHIFT
    i = rng.randrange(count)
    slot = base + LEAF_SLOTS + 4 * i
    voff, vlen = struct.unpack_from("<HH", img, slot)
    value = bytes(img[base + voff : base + voff + vlen])
    entries = unpack_entries(value, "fuzz", 1 << 63)
    j = rng.randrange(len(entries))
    name, ino, dtype = entries[j]
    what = rng.choice(("ino", "ino", "type", "name", "name", "name", "namelen"))
    if what == "ino":
        new_ino = rng.choice(
            [
                0,
                owner,
                INO_ROOT,
                INO_INODE_FILE,
                ino + 1,
                1 << 40,
                (1 << 64) - 1,
                *inv.free_inodes[:2],
            ]
        )
        entries[j] = (name, new_ino, dtype)
        detail = f"ino {ino} -> {new_ino}"
    elif what == "type":
        new_type = rng.choice([0, 1, 4, 8, 10, 255])
        entries[j] = (name, ino, new_type)
        detail = f"type {dtype} -> {new_type}"
    elif what == "name":
        # ".", "..", "/" and NUL are never names; a shorter or longer name keeps the key
        # of the old one (the key is then not the hash of the name)
        options = [b".", b"..", b"a/b", b"x\0y", name[:-1] or b"z", name + b"X", b"other"]
        new_name = rng.choice(options)
        entries[j] = (new_name, ino, dtype)
        detail = f"name {name!r} -> {new_name!r}"
    else:
        entries[j] = (name, ino, dtype)
        detail = "namelen"
    packed = b"".join(
        DIRENT.pack(e_ino & ((1 << 64) - 1), e_type, len(e_name)) + e_name
        for e_name, e_ino, e_type in entries
    )
    if what == "namelen":
        pos = sum(DIRENT.size + len(e[0]) for e in entries[:j])
        new_len = rng.choice([0, 255, len(name) + 1, len(name) - 1])
        packed = packed[: pos + 9] + bytes([max(0, new_len) & 0xFF]) + packed[pos + 10 :]
        detail = f"namelen {len(name)} -> {new_len}"
    if len(packed) > vlen:  # longer: cut to the old length (a truncated entry)
        packed = packed[:vlen]
    img[base + voff : base + voff + len(packed)] = packed
    struct.pack_into("<HH", img, slot, voff, len(packed))
    touched = [(base + voff, base + voff + vlen), (slot, slot + 4)]
    if seal:
        _reseal_node(img, block)
    detail = f"directory {owner} leaf {block} slot {i} entry {j} ({name!r}): {detail}"
    return Mutation("dirent", what, detail, seal, touched)


def _reseal_xattr(image: bytearray, block: int) -> None:
    view = memoryview(image)[block << BLOCK_SHIFT : (block + 1) << BLOCK_SHIFT]
    struct.pack_into("<I", view, XATTR_CRC_OFFSET, checksum_with_hole(view, XATTR_CRC_OFFSET))


def mutate_xattr(rng: random.Random, img: bytearray, inv: Inventory, seal: bool) -> Mutation:
    """A field of an xattr block's header or of one of its entries, a byte of a value
    in blocks (sealed: the entry's crc32c recomputed for the new bytes), or the
    inode's pointer to its xattr block."""
    if inv.inline_xattrs and (not inv.xattrs or rng.random() < 0.4):
        return _mutate_inline_xattr(rng, img, inv, seal)
    if not inv.xattrs:
        return mutate_inode(rng, img, inv, seal)
    block, owner, values = rng.choice(inv.xattrs)
    base = block << BLOCK_SHIFT
    entries = unpack_xattr_block(img[base : base + BLOCK_SIZE], owner, block)
    roll = rng.random()
    touched: list[Range] = []
    if roll < 0.3 or not entries:
        name, offset, size = _field(rng, XATTR_FIELDS)
        at = base + offset
    elif roll < 0.65:
        i = rng.randrange(len(entries))
        pos = base + XATTR_ENTRIES + sum(e.size for e in entries[:i])
        e = entries[i]
        choices = [
            *XATTR_ENTRY_FIELDS,
            ("name byte", XATTR_ENTRY.size + rng.randrange(len(e.name)), 1),
        ]
        if e.blocks:
            ref = XATTR_ENTRY.size + len(e.name)
            choices += [("value crc", ref, 4), ("nblocks", ref + 4, 4)]
            choices += [("value block", ref + 8 + 8 * rng.randrange(len(e.blocks)), 8)]
        name, offset, size = rng.choice(choices)
        name = f"entry {e.name.decode(errors='replace')} {name}"
        at = pos + offset
    elif roll < 0.85 and values:
        vblock = rng.choice(values)
        at = (vblock << BLOCK_SHIFT) + rng.randrange(BLOCK_SIZE)
        old = img[at]
        img[at] = old ^ (1 << rng.randrange(8))
        touched.append((at, at + 1))
        if seal:  # a lie: the entry's crc32c made to match the new bytes
            pos = base + XATTR_ENTRIES
            for e in entries:
                if vblock in e.blocks:
                    data = b"".join(
                        bytes(img[b << BLOCK_SHIFT : (b + 1) << BLOCK_SHIFT]) for b in e.blocks
                    )[: e.length]
                    ref = pos + XATTR_ENTRY.size + len(e.name)
                    struct.pack_into("<I", img, ref, crc32c(data))
                    touched.append((ref, ref + 4))
                pos += e.size
            _reseal_xattr(img, block)
        detail = f"xattr value block {vblock} of inode {owner}: byte {at % BLOCK_SIZE} flipped"
        return Mutation("xattr", "value", detail, seal, touched)
    else:  # the inode's pointer to its xattr block
        record = inv.inodes[owner][0]
        at, size, name = record + INLINE_OFFSET + XATTR_PTR, 8, "pointer"
    old = int.from_bytes(img[at : at + size], "little")
    value = interesting(rng, old, size)
    touched.append(_set(img, at, size, value))
    if seal and name == "pointer":
        _reseal_inode(img, record)
    elif seal:
        _reseal_xattr(img, block)
    where = f"inode {owner} xattr" if name == "pointer" else f"xattr block {block} of inode {owner}"
    detail = f"{where} {name}: {old:#x} -> {value:#x}"
    return Mutation("xattr", name.split(" ")[-1], detail, seal, touched)


def _mutate_inline_xattr(
    rng: random.Random, img: bytearray, inv: Inventory, seal: bool
) -> Mutation:
    """A field of an inode's inline attributes: their byte count (``xattr_bytes``), an
    entry's name or value length, a byte of a name or of a value (sealed: the inode's
    checksum recomputed, a lie the record's checksum cannot catch)."""
    ino, size = rng.choice(inv.inline_xattrs)
    record = inv.inodes[ino][0]
    area = record + INLINE_OFFSET + INLINE_XATTR_AREA - size  # the first entry
    roll = rng.random()
    if roll < 0.3:
        name, at, width = "xattr_bytes", record + _XATTR_BYTES_AT, 2
    else:
        pos, starts = 0, []
        while pos + INLINE_XATTR.size <= size:  # the entries as the clean image has them
            nlen, vlen = INLINE_XATTR.unpack_from(img, area + pos)
            starts.append((pos, nlen, vlen))
            pos += INLINE_XATTR.size + nlen + vlen
        pos, nlen, vlen = rng.choice(starts)
        choices = [*INLINE_XATTR_FIELDS, ("name byte", 2 + rng.randrange(nlen), 1)]
        if vlen:
            choices.append(("value byte", 2 + nlen + rng.randrange(vlen), 1))
        name, offset, width = rng.choice(choices)
        at = area + pos + offset
    old = int.from_bytes(img[at : at + width], "little")
    value = interesting(rng, old, width)
    if name == "name byte" and rng.random() < 0.5:
        value = rng.choice([0, ord("."), ord("a") if old != ord("a") else ord("b")])
    touched = [_set(img, at, width, value)]
    if seal:
        _reseal_inode(img, record)
    detail = f"inode {ino} inline xattr {name}: {old:#x} -> {value:#x}"
    return Mutation("xattr", f"inline {name}", detail, seal, touched)


def mutate_random(rng: random.Random, img: bytearray, inv: Inventory, seal: bool) -> Mutation:
    """Bits flipped in a random metadata block, resealed as that kind of block."""
    choices: list[tuple[str, int]] = [("superblock", 0), ("journal header", inv.journal[0])]
    choices += [("bitmap", b) for b in range(*inv.bitmap)]
    choices += [("inode", inv.inodes[i][0] >> BLOCK_SHIFT) for i in inv.inodes]
    choices += [("node", n.block) for n in inv.nodes]
    kinds = sorted({k for k, _ in choices})
    kind = rng.choice(kinds)
    kind, block = rng.choice([c for c in choices if c[0] == kind])
    base = block << BLOCK_SHIFT
    if kind == "inode":
        ino = rng.choice([i for i, (off, _) in inv.inodes.items() if off >> BLOCK_SHIFT == block])
        start = inv.inodes[ino][0]
        touched = _flip(rng, img, start, start + INODE_SIZE, rng.randint(1, 6))
        if seal:
            _reseal_inode(img, start)
        detail = f"inode {ino}: {len(touched)} bits flipped"
    else:
        touched = _flip(rng, img, base, base + BLOCK_SIZE, rng.randint(1, 6))
        if seal:
            if kind == "superblock":
                _reseal_superblock(img, 0)
            elif kind == "bitmap":
                seal_bitmap_block(memoryview(img)[base : base + BLOCK_SIZE])
            elif kind == "node":
                _reseal_node(img, block)
        detail = f"{kind} block {block}: {len(touched)} bits flipped"
    return Mutation("random", kind, detail, seal, touched, seal and kind == "superblock")


MUTATORS: dict[str, Callable[[random.Random, bytearray, Inventory, bool], Mutation]] = {
    "superblock": mutate_superblock,
    "journal": mutate_journal,
    "bitmap": mutate_bitmap,
    "inode": mutate_inode,
    "extent": mutate_extent,
    "node": mutate_node,
    "dirent": mutate_dirent,
    "xattr": mutate_xattr,
    "random": mutate_random,
}


def corrupt(
    structure: str, seed: int, base: bytes, inv: Inventory, seal: bool
) -> tuple[bytes, Mutation]:
    """The image ``base`` with one ``structure`` corrupted (deterministic in ``seed``)."""
    rng = random.Random(hashlib.sha256(f"{structure}:{seed}:{seal}".encode()).digest())
    img = bytearray(base)
    mutation = MUTATORS[structure](rng, img, inv, seal)
    return bytes(img), mutation
