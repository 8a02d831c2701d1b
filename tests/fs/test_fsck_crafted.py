"""fsck on crafted images: structures that lie with valid checksums, and repairs
that must never make an image worse (issue 8, section 2).

Each test crafts an image by editing bytes of the sample filesystem (with
checksums recomputed through daxfs.fs.layout unless the test says otherwise),
checks that fsck finds the lie, and that repair leaves an image that fsck
calls clean and that mounts, walks, and takes writes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import struct
from pathlib import Path

import pytest

import daxfs
from daxfs.fs.fsck import fsck
from daxfs.fs.layout import (
    BLOCK_SHIFT,
    BLOCK_SIZE,
    DT_DIR,
    DT_REG,
    EXTENT,
    INO_ROOT,
    INODE_SIZE,
    LEAF_SLOTS,
    InodeRecord,
    JournalHeader,
)
from daxfs.pmem.device import Device

from . import crafting


def ino(dev: Device, path: str) -> int:
    return crafting.ino_of(dev, path)


def key_of(dev: Device, name: bytes) -> int:
    with daxfs.mount(dev) as fs:
        return fs.dirs.hash(name)


def found(dev: Device, *words: str) -> str:
    """fsck finds the damage; each word is in its report."""
    report = fsck(dev)
    text = str(report)
    assert not report.clean, text
    for word in words:
        assert word in text, text
    return text


def repaired(dev: Device) -> str:
    """Repair says clean, fsck agrees, and the image mounts, walks and takes writes."""
    report = fsck(dev, repair=True)
    assert report.clean, str(report)
    again = fsck(dev)
    assert again.clean, str(again)
    assert again.problems == [], str(again)
    seen = crafting.observe(dev)
    assert seen.walked, seen.error
    assert seen.wrote, seen.error
    assert fsck(dev).clean
    return str(report)


def read(dev: Device, path: str) -> bytes:
    with daxfs.mount(dev) as fs, fs.open(path, "rb") as f:
        return f.read()


# -- valid checksums, lying structures ---------------------------------------------------


def test_entry_under_a_key_that_is_not_its_hash() -> None:
    dev = crafting.sample()
    a = ino(dev, "/a")
    items = crafting.dir_leaf_entries(dev, a)
    (k, entries), *rest = items
    crafting.write_dir_leaf(dev, a, [(k ^ 0x5A5A, entries), *rest])
    name = entries[0][0].decode()
    with daxfs.mount(dev) as fs:  # the listing refuses it (it would list what lookup misses)
        assert not fs.exists(f"/a/{name}")
        with pytest.raises(OSError, match="not under the hash of its name"):
            fs.listdir("/a")
    found(dev, f"/a/{name}: stored under hash")
    repaired(dev)
    with daxfs.mount(dev) as fs:
        assert fs.exists(f"/a/{name}")
        assert sorted(fs.listdir("/a")) == ["b", "file", "hard"]


def test_unknown_extent_flag_bits() -> None:
    dev = crafting.sample()
    f = ino(dev, "/a/file")
    rec = crafting.read_inode(dev, f)
    inline = bytearray(rec.inline)
    lblk, pblk, length, _ = EXTENT.unpack_from(inline, 0)
    EXTENT.pack_into(inline, 0, lblk, pblk, length, 0x4)
    crafting.edit_inode(dev, f, inline=bytes(inline))
    found(dev, f"inode {f}: 1 extents with unknown flag bits")
    repaired(dev)
    assert read(dev, "/a/file") == b"x" * 10000


def test_unknown_extent_flag_bits_in_a_tree() -> None:
    dev = crafting.sample()
    f = ino(dev, "/frag")
    root = crafting.read_inode(dev, f).map_root

    def flag(block: bytearray) -> None:
        off, _ = struct.unpack_from("<HH", block, LEAF_SLOTS)
        pblk, length, flags = struct.unpack_from("<QII", block, off)
        struct.pack_into("<QII", block, off, pblk, length, flags | 0x80)

    crafting.edit_node(dev, root, flag)
    found(dev, f"inode {f}: 1 extents with unknown flag bits")
    repaired(dev)
    assert read(dev, "/frag")[:BLOCK_SIZE] == b"A" * BLOCK_SIZE


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("free_blocks", 5, "counts 5 free blocks"),
        ("free_blocks", 0, "counts 0 free blocks"),
        ("free_inodes", 7, "counts 7 free inodes"),
        ("used_inodes", 2**64 - 1, f"counts {2**64 - 1} inodes in use"),
        ("used_inodes", 0, "counts 0 inodes in use"),
        ("inode_hwm", 4, "inode high-water mark 4"),
        ("inode_hwm", 0, "inode high-water mark 0"),
        ("inode_hwm", 2**32, f"inode high-water mark {2**32}"),
        ("inode_hwm", 2**64 - 1, f"inode high-water mark {2**64 - 1}"),
        ("next_generation", 2**40, f"next generation {2**40}"),
        ("free_ino_head", 2**64 - 1, "free inode list"),
        ("free_ino_head", 3, "free inode list"),
        ("orphan_head", 3, "orphan list"),
        ("orphan_head", 2**40, "orphan list"),
    ],
)
def test_superblock_counters_that_contradict_the_structures(
    field: str, value: int, words: str
) -> None:
    dev = crafting.sample()
    crafting.edit_superblock(dev, **{field: value})
    found(dev, words)
    repaired(dev)
    with daxfs.mount(dev) as fs:  # the counters work again: a create and a write
        for i in range(20):
            with fs.open(f"/new{i}", "wb") as f:
                f.write(b"n" * 5000)
    assert fsck(dev).clean


def test_lowered_high_water_mark_is_raised_not_trusted() -> None:
    """Before: repair took the inodes above the mark for free and dropped their names."""
    dev = crafting.sample()
    crafting.edit_superblock(dev, inode_hwm=4)
    text = repaired(dev)
    assert "entry points at" not in text
    assert read(dev, "/a/file") == b"x" * 10000
    assert read(dev, "/big/n199") == b"199"


def test_huge_high_water_mark_does_not_hang() -> None:
    """A valid superblock with inode_hwm 2**32: fsck walks the slots the inode file
    holds, not 4.3 billion (pytest-timeout would end a hang)."""
    dev = crafting.sample()
    crafting.edit_superblock(dev, inode_hwm=2**32)
    report = fsck(dev)
    assert "inode high-water mark 4294967296" in str(report)


def test_inode_file_mapping_far_past_a_hole_does_not_hang() -> None:
    """inode_hwm 2**32 and an inode file that maps a block at file block 2**28 (what
    one create made of such a superblock): before, fsck walked 4.3 billion slots."""
    dev = crafting.sample()
    sb = crafting.superblock(dev)
    rec = crafting.read_inode(dev, 1)
    far = sb.block_count - 100
    dev.fill(far << BLOCK_SHIFT, 16 * BLOCK_SIZE)
    inline = bytearray(rec.inline)
    EXTENT.pack_into(inline, rec.map_count * EXTENT.size, 2**28, far, 16, 0)
    crafting.edit_inode(
        dev,
        1,
        inline=bytes(inline),
        map_count=rec.map_count + 1,
        size=(2**28 + 16) << BLOCK_SHIFT,
        blocks=rec.blocks + 16,
    )
    crafting.edit_superblock(dev, inode_hwm=2**32 + 1)
    found(dev, "a hole at file block", "hold no inode")
    repaired(dev)
    assert crafting.read_inode(dev, 1).size == rec.size


def test_inode_file_size_against_its_map() -> None:
    dev = crafting.sample()
    crafting.edit_inode(dev, 1, size=0)
    found(dev, "inode 1 (the inode file): size 0 but maps")
    repaired(dev)
    crafting.edit_inode(dev, 1, size=2**50)
    found(dev, f"size {2**50} but maps")
    repaired(dev)


@pytest.mark.parametrize("seq", ["applied", "header", "ahead"])
def test_journal_sequence_at_its_limit(seq: str) -> None:
    """Before: fsck called it clean, and the first commit raised struct.error."""
    dev = crafting.sample()
    if seq == "applied":
        crafting.set_applied_seq(dev, 2**64 - 1)
    elif seq == "ahead":  # applied_seq ahead of the intact header: also outside any crc
        header = crafting.journal_header(dev)
        assert header is not None
        crafting.set_applied_seq(dev, header.seq + 2**62)
    else:  # a valid header, already applied, whose next commit cannot be numbered
        crafting.write_journal_header(dev, JournalHeader(2**64 - 1, 0, 0, 0))
        crafting.set_applied_seq(dev, 2**64 - 1)
    found(dev, "journal: ", "out of range" if seq != "ahead" else "is ahead of")
    repaired(dev)


@pytest.mark.parametrize("where", ["log", "past"])
def test_forged_journal_transaction_is_dropped(where: str) -> None:
    """A committed transaction whose record targets the log, or lies past the
    filesystem: mount refuses it; repair drops it and the image mounts again."""
    from .crafting import forge_journal

    dev = crafting.sample()
    sb = crafting.superblock(dev)
    offset = (sb.journal_start + 2) << BLOCK_SHIFT if where == "log" else 2**64 - 4096
    forge_journal(dev, [(offset, b"z" * 64)], seq=crafting.journal_header(dev).seq + 1)  # type: ignore[union-attr]
    with pytest.raises(OSError, match="journal"):
        daxfs.mount(dev)
    found(dev, "journal: ")
    text = repaired(dev)
    assert "is dropped [repaired]" in text


def test_entry_count_and_block_count() -> None:
    dev = crafting.sample()
    big = ino(dev, "/big")
    crafting.edit_inode(dev, big, entries=7, blocks=1)
    found(dev, "directory /big: counts 7 entries, holds 200", f"inode {big}: counts 1 blocks")
    repaired(dev)


def test_directory_with_two_names() -> None:
    dev = crafting.sample()
    b = ino(dev, "/a/b")
    root = crafting.dir_leaf_entries(dev, INO_ROOT)
    root.append((key_of(dev, b"twin"), [(b"twin", b, DT_DIR)]))
    crafting.write_dir_leaf(dev, INO_ROOT, root)
    crafting.edit_inode(dev, INO_ROOT, entries=len(root), nlink=2 + 5)
    found(dev, "a directory has one name")
    repaired(dev)
    with daxfs.mount(dev) as fs:
        assert fs.stat("/twin").st_ino == b
        assert not fs.exists("/a/b")
        assert fs.stat("/twin").st_nlink == 3  # c below it


@pytest.mark.parametrize("target", ["itself", "child"])
def test_dotdot_pointing_at_itself_or_a_child(target: str) -> None:
    dev = crafting.sample()
    a, b = ino(dev, "/a"), ino(dev, "/a/b")
    crafting.edit_inode(dev, a, parent=a if target == "itself" else b)
    found(dev, f"/a: '..' is inode {a if target == 'itself' else b}, should be 2")
    repaired(dev)
    with daxfs.mount(dev) as fs:  # the rename that looped before
        fs.rename("/empty", "/a/b/c/empty")
        assert fs.listdir("/a/b/c") == ["empty"]


def test_directory_cycle_through_entries() -> None:
    """/a/b/c holds an entry for /a: a cycle the walk must cut, not follow."""
    dev = crafting.sample()
    a, c = ino(dev, "/a"), ino(dev, "/a/b/c")
    crafting.edit_inode(dev, c, map_kind=0)  # empty so far: give it a one-entry leaf
    with daxfs.mount(dev) as fs:
        with fs.open("/a/b/c/x", "wb"):
            pass
        fs.unlink("/a/b/c/x")
        fs.mkdir("/a/b/c/y")
    items = crafting.dir_leaf_entries(dev, c)
    items.append((key_of(dev, b"loop"), [(b"loop", a, DT_DIR)]))
    crafting.write_dir_leaf(dev, c, items)
    crafting.edit_inode(dev, c, entries=2, nlink=4)
    found(dev, "/a/b/c/loop: directory inode", "a directory has one name")
    repaired(dev)
    with daxfs.mount(dev) as fs:
        assert fs.listdir("/a/b/c") == ["y"]


@pytest.mark.parametrize(
    "name", [b".", b"..", b"a/b", b"nul\0", b""], ids=["dot", "dotdot", "slash", "nul", "empty"]
)
def test_invalid_names(name: bytes) -> None:
    """Before: '.', '..' were path components, '/', NUL and empty names made the whole
    directory unreadable.  Now the entry is dropped and its inode goes to lost+found."""
    dev = crafting.sample()
    a, small = ino(dev, "/a"), ino(dev, "/a/b/small")
    with daxfs.mount(dev) as fs, fs.journal.begin() as tx:  # drop the name, keep the inode
        fs.dirs.remove(tx, fs.itable.get(fs.stat("/a/b").st_ino), b"small")
    items = crafting.dir_leaf_entries(dev, a)
    key = key_of(dev, name) if name else 12345
    items.append((key, [(name, small, DT_REG)]))
    crafting.write_dir_leaf(dev, a, items)
    crafting.edit_inode(dev, a, entries=len(items))
    found(dev, f"entry {name!r} (inode {small})")
    repaired(dev)
    assert read(dev, f"/lost+found/#{small}") == b"small"
    with daxfs.mount(dev) as fs:
        assert sorted(fs.listdir("/a")) == ["b", "file", "hard"]


def test_entry_pointing_at_an_inode_beyond_the_table() -> None:
    dev = crafting.sample()
    root = crafting.dir_leaf_entries(dev, INO_ROOT)
    root.append((key_of(dev, b"far"), [(b"far", 2**40, DT_REG)]))
    crafting.write_dir_leaf(dev, INO_ROOT, root)
    crafting.edit_inode(dev, INO_ROOT, entries=len(root))
    found(dev, "/far: entry points at an inode beyond the table")
    repaired(dev)


# -- repair never makes an image worse -----------------------------------------------------


def test_repair_with_a_damaged_root_leaf_slot_and_a_free_inode() -> None:
    """Before: AssertionError "block ... is both live and new" (the root's leaf, freed
    as leaked, was handed to lost+found).  Now the root is rebuilt from the entries
    its leaf still holds; the one behind the damaged slot goes to /lost+found."""
    dev = crafting.sample()
    before = crafting.observe(dev, write=False).data
    with daxfs.mount(dev) as fs:
        names = sorted(fs.listdir("/"))
    root = crafting.read_inode(dev, INO_ROOT).map_root
    crafting.edit_node(dev, root, lambda b: struct.pack_into("<HH", b, LEAF_SLOTS, 5000, 10))
    found(dev, "values [(5000, 10)] outside the heap", "rebuilt from the 6 entries")
    text = repaired(dev)
    assert "is in no directory (lost): goes to /lost+found/#" in text
    with daxfs.mount(dev) as fs:
        now = sorted(fs.listdir("/"))
        assert len(fs.listdir("/lost+found")) == 1
    assert len(now) == len(names)  # one name went, lost+found came
    assert set(now) - {"lost+found"} < set(names)
    assert crafting.observe(dev, write=False).data == before  # every file, same data


def test_damaged_root_leaf_checksum_keeps_the_entries_that_prove_themselves() -> None:
    """A root leaf whose checksum failed: entries whose key is the keyed hash of
    their name and that name a live inode of their type are kept by name."""
    dev = crafting.sample()
    before = crafting.observe(dev, write=False).data
    root = crafting.read_inode(dev, INO_ROOT).map_root
    with daxfs.mount(dev) as fs:
        names = sorted(fs.listdir("/"))
    dev.write((root << BLOCK_SHIFT) + 3000, b"\xee")  # in the value heap, not a key
    found(dev, f"node {root}: checksum mismatch; rebuilt from the")
    repaired(dev)
    with daxfs.mount(dev) as fs:
        kept = set(fs.listdir("/")) - {"lost+found"}
        lost = fs.listdir("/lost+found") if fs.exists("/lost+found") else []
    assert kept <= set(names)
    assert len(kept) + len(lost) == len(names)
    assert len(lost) <= 1  # at most the entry whose bytes the flip hit
    assert crafting.observe(dev, write=False).data == before


def test_lost_found_inode_is_not_put_back_on_the_free_list() -> None:
    """Before: the free-list rebuild freed the inode repair had just given to
    /lost+found, and the next fsck found /lost+found pointing at a free inode."""
    dev = crafting.sample()
    with daxfs.mount(dev) as fs:
        small = fs.stat("/a/b/small").st_ino
        with fs.journal.begin() as tx:
            fs.dirs.remove(tx, fs.itable.get(fs.stat("/a/b").st_ino), b"small")
    assert crafting.superblock(dev).free_ino_head  # lost+found will take it
    found(dev, f"inode {small}: is in no directory")
    repaired(dev)
    assert read(dev, f"/lost+found/#{small}") == b"small"


def test_damaged_tree_nodes_are_kept_and_not_reused() -> None:
    """Before: repair freed the nodes of a damaged tree as "leaked", and the new
    lost+found took one of them."""
    dev = crafting.sample()
    frag = ino(dev, "/frag")
    root = crafting.read_inode(dev, frag).map_root
    with daxfs.mount(dev) as fs:
        small = fs.stat("/a/b/small").st_ino
        with fs.journal.begin() as tx:
            fs.dirs.remove(tx, fs.itable.get(fs.stat("/a/b").st_ino), b"small")
    dev.write((root << BLOCK_SHIFT) + 100, b"\xee\xee")  # checksum broken
    report = fsck(dev, repair=True)
    text = str(report)
    assert f"inode {frag}: B+tree of inode {frag}, node {root}: checksum mismatch" in text
    assert not report.clean
    assert "leaked" not in text
    lf = crafting.read_inode(dev, ino(dev, "/lost+found"))
    assert lf.map_root != root
    # every block the damaged file maps is still marked used
    sb = crafting.superblock(dev)
    bitmap = dev.read(sb.bitmap_start << BLOCK_SHIFT, BLOCK_SIZE)
    raw = dev.read(root << BLOCK_SHIFT, BLOCK_SIZE)
    count = struct.unpack_from("<H", raw, 26)[0]
    for i in range(count):
        off, _ = struct.unpack_from("<HH", raw, LEAF_SLOTS + 4 * i)
        pblk, length, _ = struct.unpack_from("<QII", raw, off)
        for b in range(pblk, pblk + length):
            assert bitmap[b >> 3] >> (b & 7) & 1, b
    assert read(dev, f"/lost+found/#{small}") == b"small"
    second = fsck(dev)
    assert [p.key for p in second.problems] == [p.key for p in report.problems if not p.repaired], (
        str(second)
    )


def test_repair_of_a_damaged_root_on_a_path_image(tmp_path: Path) -> None:
    """Before: fsck --repair meeting a damaged root ended in BufferError (views from
    direct_access still alive when the image was closed), masking the real error."""
    image = tmp_path / "fs.img"
    image.write_bytes(crafting.sample().read(0, crafting.SIZE))
    with daxfs.mount(image) as fs:
        root = fs.itable.get(INO_ROOT).rec.map_root
    with open(image, "r+b") as f:
        f.seek((root << BLOCK_SHIFT) + 100)
        f.write(b"\xee\xee")
    report = fsck(image, repair=True)
    assert f"node {root}: checksum mismatch; rebuilt from" in str(report)
    assert report.clean, str(report)
    assert fsck(image).clean


def test_an_error_inside_fsck_is_not_replaced_by_the_cleanup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure while views of the image are alive reaches the caller as itself."""
    from daxfs.fs.fsck import driver

    image = tmp_path / "fs.img"
    image.write_bytes(crafting.sample().read(0, crafting.SIZE))

    def boom(ctx: object, s: object) -> None:
        view = s.store.block(0)  # type: ignore[attr-defined]  # alive in this frame
        raise RuntimeError(f"boom with {len(view)} bytes in view")

    monkeypatch.setattr(driver, "check_lists", boom)
    with pytest.raises(RuntimeError, match="boom"):
        fsck(image, repair=True)
    monkeypatch.undo()
    assert fsck(image).clean  # and the image was closed: it opens again


def test_written_blocks_past_the_size_are_freed_through_the_orphan_list() -> None:
    dev = crafting.sample()
    f = ino(dev, "/frag")
    crafting.edit_inode(dev, f, size=BLOCK_SIZE)
    found(dev, f"inode {f}: maps written blocks up to 23 past its size 4096")
    repaired(dev)
    assert read(dev, "/frag") == b"A" * BLOCK_SIZE
    with daxfs.mount(dev) as fs:
        assert fs.stat("/frag").st_blocks <= 2 * (BLOCK_SIZE // 512)
        fs.truncate("/frag", 3 * BLOCK_SIZE)
        with fs.open("/frag", "rb") as fh:  # no stale data shows through
            assert fh.read() == b"A" * BLOCK_SIZE + bytes(2 * BLOCK_SIZE)


def test_a_never_written_slot_below_the_mark_becomes_free() -> None:
    dev = crafting.sample()
    gone = ino(dev, "/a/b/small")
    with daxfs.mount(dev) as fs:
        fs.unlink("/a/b/small")
    blockno, offset = crafting.inode_address(dev, gone)
    dev.write((blockno << BLOCK_SHIFT) + offset, bytes(INODE_SIZE))
    crafting.edit_superblock(dev, free_ino_head=0, free_inodes=0)
    found(dev, "free inode list")
    repaired(dev)
    rec = InodeRecord.unpack_from(dev.read(blockno << BLOCK_SHIFT, BLOCK_SIZE), offset, gone)
    assert rec.mode == 0


def test_unchanged_files_keep_their_data_through_repairs() -> None:
    dev = crafting.sample()
    before = crafting.observe(dev, write=False).data
    big = ino(dev, "/big")
    crafting.edit_superblock(dev, free_blocks=1, used_inodes=1, inode_hwm=3)
    crafting.edit_inode(dev, big, entries=1)
    repaired(dev)
    after = crafting.observe(dev, write=False).data
    assert after == before
    assert hashlib.sha256(read(dev, "/a/hard")).hexdigest() == before[ino(dev, "/a/file")]


def test_each_problem_is_one_printable_line() -> None:
    """A name holding a newline, an escape or bytes that are not UTF-8 is escaped in
    the report, so ``daxfs fsck`` prints one line per problem on any terminal."""
    dev = crafting.sample()
    with daxfs.mount(dev) as fs:
        for name in ["/new\nline", "/esc\x1b[2J", "/bad\udcff"]:
            fs.mkdir(name)
        bad = [fs.stat(n).st_ino for n in ["/new\nline", "/esc\x1b[2J", "/bad\udcff"]]
    for i in bad:
        crafting.edit_inode(dev, i, parent=i)
    report = fsck(dev)
    lines = str(report).splitlines()
    assert len(lines) == len(report.problems) + 1
    assert any(line.startswith("/new\\nline: '..' is inode") for line in lines), lines
    assert any(line.startswith("/bad\\udcff: ") for line in lines), lines
    for line in lines:
        line.encode("utf-8")  # printable anywhere: no lone surrogate
        assert "\x1b" not in line


def test_damaged_internal_node_of_a_directory_loses_no_name() -> None:
    """The root node of /big (two levels, 200 entries) fails its checksum: the
    leaves are intact, so the rebuilt directory holds every name."""
    dev = crafting.sample()
    big = ino(dev, "/big")
    node = crafting.read_inode(dev, big).map_root
    assert crafting.node_header(dev, node)[4] == 1  # an internal node
    dev.write((node << BLOCK_SHIFT) + 3000, b"\xee")  # past the children: a checksum flip
    found(dev, f"node {node}: checksum mismatch; rebuilt from the 200 entries")
    repaired(dev)
    with daxfs.mount(dev) as fs:
        assert sorted(fs.listdir("/big")) == [f"n{i:03d}" for i in range(200)]
        assert not fs.exists("/lost+found")
        with fs.open("/big/n123", "rb") as f:
            assert f.read() == b"123"


def test_progress_reports_every_pass_and_the_repair() -> None:
    dev = crafting.sample()
    crafting.edit_superblock(dev, free_blocks=3)
    seen: dict[str, list[tuple[int, int]]] = {}
    fsck(
        dev,
        repair=True,
        progress=lambda phase, done, total: seen.setdefault(phase, []).append((done, total)),
    )
    for phase in ("inodes", "directories", "bitmap", "repair", "recheck inodes"):
        calls = seen[phase]
        assert all(0 <= done <= total for done, total in calls), (phase, calls)
        assert calls[-1][0] == calls[-1][1], (phase, calls)  # each ends complete


def test_superblock_bytes_past_the_fields() -> None:
    """Non-zero bytes between the superblock's fields and its checksum, checksum valid:
    the first journaled update packs zeros there and breaks the checksum (the image
    mounted once, then never again).  fsck finds them; repair zeroes them."""
    from daxfs.fs.layout import SB_CRC_OFFSET, crc32c

    dev = crafting.sample()
    raw = bytearray(dev.read(0, BLOCK_SIZE))
    raw[1000] = 0x5A
    struct.pack_into("<I", raw, SB_CRC_OFFSET, crc32c(bytes(raw[:SB_CRC_OFFSET])))
    dev.write(0, bytes(raw))
    found(dev, "primary superblock: bytes past its fields are not zero")
    repaired(dev)
    for _ in range(2):  # mounts, changes, and mounts again
        with daxfs.mount(dev) as fs:
            fs.mkdir(f"/m{_}")
    assert fsck(dev).clean


def test_backup_superblock_with_another_hash_key() -> None:
    """A backup that differs from the primary in a field fixed at mkfs (here the
    directory hash key), both checksums valid: restoring from it would make every
    name unreachable.  fsck reports it; repair rewrites the backup."""
    dev = crafting.sample()
    sb = crafting.superblock(dev)
    backup = dataclasses.replace(sb, hash_key=bytes(16))
    dev.write((sb.block_count - 1) << BLOCK_SHIFT, backup.to_block())
    found(dev, "backup superblock: fields fixed at mkfs differ from the primary's")
    repaired(dev)
    raw = dev.read((sb.block_count - 1) << BLOCK_SHIFT, BLOCK_SIZE)
    assert raw[:192] == dev.read(0, 192)


def test_an_orphan_whose_map_is_damaged_is_freed() -> None:
    """A file unlinked while open, then a crash: it waits on the orphan list for mount
    to free it.  With its extent tree damaged, mount failed on it (before and after
    repair); repair now frees it as mount would, and every other file is intact."""
    dev = crafting.sample()
    fs = daxfs.mount(dev)
    frag = fs.stat("/frag").st_ino
    held = fs.open("/frag", "rb")  # open while unlinked: an orphan
    root = fs.itable.get(frag).rec.map_root
    fs.unlink("/frag")
    crashed = dev.crash(seed=1)
    assert not held.closed
    assert fsck(crashed).clean  # an orphan waiting for mount is no problem
    before = crafting.observe(crafting.sample(), write=False).data
    crashed.write((root << BLOCK_SHIFT) + 100, b"\xee\xee")
    with pytest.raises(OSError, match="checksum mismatch"):
        daxfs.mount(crashed)
    found(crashed, f"inode {frag}: B+tree of inode {frag}, node {root}: checksum mismatch")
    text = repaired(crashed)
    assert "an orphan with no link: freed, as mount would [repaired]" in text
    after = crafting.observe(crashed, write=False).data
    assert after == {i: d for i, d in before.items() if i != frag}


@pytest.mark.parametrize("damage", ["checksum", "zeroed", "free", "a file"])
def test_a_root_whose_record_cannot_be_read_is_made_anew(damage: str) -> None:
    """Before: 'root directory: inode 2 is damaged', and the image never mounted.
    Now the root is made anew; its tree is salvaged if the old record still names
    it (checksum), else every top-level inode goes to /lost+found (zeroed)."""
    dev = crafting.sample()
    before = crafting.observe(dev, write=False).data
    with daxfs.mount(dev) as fs:
        names = sorted(fs.listdir("/"))
    if damage == "checksum":
        crafting.flip_inode_byte(dev, INO_ROOT, 48)  # atime: checksum now wrong
    elif damage == "zeroed":
        crafting.write_inode_bytes(dev, INO_ROOT, 0, bytes(INODE_SIZE))
    else:
        crafting.edit_inode(dev, INO_ROOT, mode=0 if damage == "free" else 0o100644)
    with pytest.raises(OSError, match="inode 2"), daxfs.mount(dev) as fs:
        fs.listdir("/")
    found(dev, "inode 2: ", "the root is made anew")
    repaired(dev)
    with daxfs.mount(dev) as fs:
        if damage == "checksum":
            assert sorted(fs.listdir("/")) == names
        else:
            assert fs.listdir("/") == ["lost+found"]
            assert len(fs.listdir("/lost+found")) == len(names)
    assert crafting.observe(dev, write=False).data == before


def test_inode_file_record_with_a_bad_checksum_whose_map_holds() -> None:
    """Before: 'no inode can be checked', and the image never mounted again."""
    dev = crafting.sample()
    before = crafting.observe(dev, write=False).data
    crafting.flip_inode_byte(dev, 1, 48)  # atime: the checksum is now wrong
    with pytest.raises(OSError, match="inode 1"):
        daxfs.mount(dev)
    found(dev, "inode 1 (the inode file): checksum mismatch; its map holds")
    repaired(dev)
    assert crafting.observe(dev, write=False).data == before


def test_generation_counter_that_wrapped_is_no_problem() -> None:
    """next_generation wraps at 2**32 by design: an inode with a higher generation
    than the counter is history, not a lie (the tools' fuzzer, seed 2 case 379: a
    repair set the counter to 0xfffffffe, creates wrapped it, and fsck complained)."""
    dev = crafting.sample()
    crafting.edit_inode(dev, ino(dev, "/a/file"), generation=0xFFFFFFFE)
    crafting.edit_superblock(dev, next_generation=0xFFFFFFFD)
    assert fsck(dev).clean
    with daxfs.mount(dev) as fs:
        for i in range(4):
            fs.mkdir(f"/g{i}")
        assert fs.superblock.next_generation < 0xFFFFFFFD  # wrapped
    assert fsck(dev).clean


@pytest.mark.parametrize(
    ("path", "end"),
    [
        ("/frag", 23 * BLOCK_SIZE),  # last extent: file block 22
        ("/prealloc", 3 * BLOCK_SIZE),  # an unwritten extent past the old size ends it
        ("/a/b/small", BLOCK_SIZE),
    ],
)
def test_a_size_past_the_maximum_is_cut_to_the_end_of_the_last_extent(path: str, end: int) -> None:
    """Not to the maximum (2^56): a 64 PiB sparse file that every tool would then read or
    copy.  Past its last extent the file was a hole: nothing it held is lost."""
    dev = crafting.sample()
    before = read(dev, path)
    f = ino(dev, path)
    crafting.edit_inode(dev, f, size=2**60)
    found(dev, f"inode {f}: size {2**60} beyond the maximum", f"(repair: {end},")
    repaired(dev)
    assert crafting.read_inode(dev, f).size == end
    after = read(dev, path)
    assert after[: len(before)] == before
    assert not any(after[len(before) :])  # what was past the old size: zeros (a hole)


def test_a_file_with_no_extent_and_a_size_past_the_maximum_becomes_empty() -> None:
    dev = crafting.sample()
    with daxfs.mount(dev) as fs:
        fs.open("/empty/e", "wb").close()
    f = ino(dev, "/empty/e")
    crafting.edit_inode(dev, f, size=2**57)
    repaired(dev)
    assert crafting.read_inode(dev, f).size == 0


# -- extended attributes ----------------------------------------------------------------------


def _xattr_lie(dev: Device, lie: str) -> str:
    """Make the xattr block of /a/file lie (checksum valid); the words fsck reports."""
    f = ino(dev, "/a/file")
    blockno, entries = crafting.xattr_entries(dev, f)
    sb = crafting.superblock(dev)
    long = next(e for e in entries if e.blocks)
    other = crafting.read_inode(dev, ino(dev, "/frag"))
    if lie == "owner":
        crafting.write_xattr_block(dev, f, entries, owner=f + 1)
        return f"xattr block {blockno}: says it is block {blockno} of inode {f + 1}"
    if lie == "place":
        crafting.write_xattr_block(dev, f, entries, blockno=blockno + 1)
        return "says it is block"
    if lie == "order":
        crafting.write_xattr_block(dev, f, entries[::-1])
        return "out of order or repeated"
    if lie == "namespace":
        bad = dataclasses.replace(entries[-1], name=b"bogus.name")
        crafting.write_xattr_block(dev, f, [*entries[:-1], bad])
        return "bad name"
    if lie == "count":
        crafting.edit_xattr_block(dev, f, lambda b: struct.pack_into("<H", b, 24, 7))
        return "runs past"
    if lie == "used":
        crafting.edit_xattr_block(dev, f, lambda b: struct.pack_into("<H", b, 26, 4040))
        return "header"
    if lie == "value block outside":
        bad = dataclasses.replace(long, blocks=(long.blocks[0], sb.block_count + 5))
        crafting.write_xattr_block(dev, f, [bad if e is long else e for e in entries])
        return "outside the data area"
    if lie == "value block of another file":
        # /frag's map is a B+tree: its root node, read as a value, fails the crc
        bad = dataclasses.replace(long, blocks=(long.blocks[0], other.map_root))
        crafting.write_xattr_block(dev, f, [bad if e is long else e for e in entries])
        return "value checksum mismatch"
    if lie == "pointer outside":
        rec = crafting.read_inode(dev, f)
        crafting.edit_inode(dev, f, inline=rec.inline[:120] + struct.pack("<Q", 3))
        return "outside the data area"
    if lie == "pointer at a data block":
        rec = crafting.read_inode(dev, f)
        crafting.edit_inode(dev, f, inline=rec.inline[:120] + struct.pack("<Q", other.map_root))
        return "bad magic"
    raise AssertionError(lie)


@pytest.mark.parametrize(
    "lie",
    [
        "owner",
        "place",
        "order",
        "namespace",
        "count",
        "used",
        "value block outside",
        "value block of another file",
        "pointer outside",
        "pointer at a data block",
    ],
)
def test_lying_xattr_block_is_found_and_repaired(lie: str) -> None:
    dev = crafting.sample()
    words = _xattr_lie(dev, lie)
    with daxfs.mount(dev) as fs:  # the API refuses it as EUCLEAN, nothing else
        with pytest.raises(OSError, match="inode") as info:
            for name in fs.listxattr("/a/file"):
                fs.getxattr("/a/file", name)
        assert info.value.errno == 117
    found(dev, words)
    repaired(dev)
    assert read(dev, "/a/file") == b"x" * 10000
    assert read(dev, "/frag")[:1] == b"A"
    with daxfs.mount(dev) as fs:  # what survived is readable; the directory's are intact
        for name in fs.listxattr("/a/file"):
            fs.getxattr("/a/file", name)
        assert fs.getxattr("/a", "trusted.dir") == crafting.DIR_XATTR
        fs.setxattr("/a/file", "user.after", b"repair")


def test_xattr_block_claimed_by_two_inodes() -> None:
    """Another inode's pointer at /a/file's xattr block (a valid block, but its owner
    field names /a/file): fsck must not let both keep it."""
    dev = crafting.sample()
    f = ino(dev, "/a/file")
    small = ino(dev, "/a/b/small")
    block = crafting.read_inode(dev, f).xattr
    rec = crafting.read_inode(dev, small)
    crafting.edit_inode(dev, small, inline=rec.inline[:120] + struct.pack("<Q", block))
    found(dev, f"inode {small}", f"of inode {f}")
    repaired(dev)
    with daxfs.mount(dev) as fs:
        assert fs.getxattr("/a/file", "user.short") == b"short value"
        assert fs.listxattr("/a/b/small") == []


def test_reaped_orphan_frees_its_xattr_blocks() -> None:
    """An orphan (unlinked while open, then a crash) whose map is damaged is freed by
    repair, as mount would: its sound attributes' blocks go with it."""

    def populate(fs: daxfs.FileSystem) -> None:
        with fs.open("/o", "wb", buffering=0) as f:  # 12 extents: a B+tree map
            for i in range(12):
                f.pwrite(b"o" * BLOCK_SIZE, 2 * i * BLOCK_SIZE)
        fs.setxattr("/o", "user.long", bytes(9000))

    dev = crafting.fresh(populate)
    o = ino(dev, "/o")
    fs = daxfs.mount(dev)
    held = fs.open("/o", "rb")
    fs.unlink("/o")
    crashed = dev.crash(seed=0)  # the power fails while /o is open: it stays an orphan
    held.close()
    fs.unmount()
    root = crafting.read_inode(crashed, o).map_root
    crafting.edit_node(crashed, root, lambda b: struct.pack_into("<H", b, 26, 0))
    found(crashed, f"inode {o}", "an orphan with no link")
    repaired(crashed)
