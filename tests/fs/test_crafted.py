"""Damaged and crafted images: every failure is a clean OSError, never another exception.

Each test crafts an image with ``tests/fs/crafting.py`` (checksums recomputed
where the lie must pass them) and checks what mount and the API make of it.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

import daxfs
from daxfs.errors import Corrupted
from daxfs.fs.fsck import fsck
from daxfs.fs.layout import BLOCK_SHIFT, BLOCK_SIZE
from daxfs.testing import SimulatedPmem
from tests.fs import crafting
from tests.fs.crafting import SIZE, edit_superblock, fresh, superblock


@pytest.fixture
def image(shm_path: Path) -> Iterator[Path]:
    yield shm_path
    crafting.remove(shm_path)


def fragmented(fs: daxfs.FileSystem) -> None:
    """/frag: 12 one-block extents, so its map is a B+tree."""
    with fs.open("/frag", "wb", buffering=0) as f:
        for i in range(12):
            f.pwrite(b"f" * BLOCK_SIZE, 2 * i * BLOCK_SIZE)


def corrupted(match: str) -> pytest.RaisesContext[Corrupted]:
    """pytest.raises of EUCLEAN whose message matches ``match`` (any other exception fails)."""
    return pytest.raises(Corrupted, match=match)


# -- error paths never replace the error ---------------------------------------------------


@pytest.mark.parametrize(
    ("where", "words"),
    [
        ("log", "targets the log"),
        ("beyond", "out of range"),
        ("max", "out of range"),
    ],
)
def test_forged_journal_is_refused_not_buffer_error(image: Path, where: str, words: str) -> None:
    dev = fresh()
    sb = superblock(dev)
    target = {
        "log": (sb.journal_start + 1) << BLOCK_SHIFT,
        "beyond": sb.block_count << BLOCK_SHIFT,
        "max": (1 << 64) - 1,
    }[where]
    crafting.forge_journal(dev, [(target, b"x" * 8)])
    crafting.to_file(dev, image)
    with corrupted(words):
        daxfs.mount(image)
    # the image was released: it can be opened again and fsck says what is wrong
    report = fsck(image)
    assert not report.clean
    assert "journal" in str(report)


def test_error_in_a_with_block_is_not_replaced(image: Path) -> None:
    dev = fresh(fragmented)
    root = crafting.read_inode(dev, crafting.ino_of(dev, "/frag")).map_root
    dev.write((root << BLOCK_SHIFT) + 100, b"\xff")  # node checksum now wrong
    crafting.to_file(dev, image)
    with corrupted("checksum"), daxfs.mount(image) as fs:
        fs.open("/frag", "rb").read()
    with daxfs.mount(image) as fs:  # released: mounts again
        assert fs.exists("/frag")


def test_device_with_block_keeps_the_error() -> None:
    with pytest.raises(Corrupted, match="the real error") as info, SimulatedPmem(SIZE) as dev:
        daxfs.mkfs(dev)
        view = dev.direct_access(0, 64)  # alive when the with block exits
        raise Corrupted("the real error")
    assert any("cleanup" in note for note in info.value.__notes__)
    assert view.nbytes == 64  # alive all along: the close failed and said so in a note


# -- journal ---------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [(1 << 64) - 1, 1 << 63])
def test_applied_seq_out_of_range_is_refused_at_mount(value: int) -> None:
    dev = fresh()
    crafting.set_applied_seq(dev, value)
    with corrupted("applied_seq"):
        daxfs.mount(dev)


def test_applied_seq_ahead_of_the_header_is_refused() -> None:
    dev = fresh(lambda fs: fs.mkdir("/d"))
    crafting.set_applied_seq(dev, 1000)  # the header says a much lower seq
    with corrupted("ahead of the last committed transaction"):
        daxfs.mount(dev)


def test_header_seq_out_of_range_is_refused_at_mount() -> None:
    dev = fresh()
    sb = superblock(dev)
    crafting.forge_journal(dev, [(16, sb.to_block()[16:24])], seq=(1 << 64) - 1)
    with corrupted("header seq"):
        daxfs.mount(dev)


@pytest.mark.parametrize(
    ("nrecords", "words"), [(0xFFFFFFFF, "cannot fit"), (0, "after its last record")]
)
def test_journal_record_count_is_checked(nrecords: int, words: str) -> None:
    dev = fresh()
    sb = superblock(dev)
    crafting.forge_journal(dev, [(16, sb.to_block()[16:24])], nrecords=nrecords)
    with corrupted(words):
        daxfs.mount(dev)


def test_record_length_beyond_the_log_is_refused() -> None:
    dev = fresh()
    sb = superblock(dev)
    crafting.forge_journal(dev, [(16, sb.to_block()[16:24])])
    log = (sb.journal_start + 1) << BLOCK_SHIFT
    dev.write(log + 8, (0xFFFFFFFF).to_bytes(4, "little"))  # length field; reseal the log crc
    payload = dev.read(log, 32)
    crafting.forge_raw_header(dev, seq=5, nrecords=1, payload=payload)
    with corrupted("out of range"):
        daxfs.mount(dev)


def test_journal_problems_are_exposed_without_raising() -> None:
    from daxfs.fs.journal import Journal
    from daxfs.fs.store import PmemStore

    dev = fresh()
    crafting.set_applied_seq(dev, (1 << 64) - 1)
    sb = superblock(dev)
    store = PmemStore(dev, sb.block_count)
    try:
        problems = Journal(store, sb.journal_start, sb.journal_blocks).problems()
    finally:
        store.close()
    assert len(problems) == 1
    assert "applied_seq" in problems[0]


# -- superblock counters (valid checksums) ---------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("used_inodes", (1 << 64) - 1),
        ("inode_hwm", 1 << 32),
        ("inode_hwm", 0),
        ("inode_hwm", 2),
        ("free_blocks", (1 << 64) - 1),
        ("free_inodes", 1 << 40),
        ("free_ino_head", 1),
        ("free_ino_head", (1 << 64) - 1),
        ("orphan_head", 2),
        ("orphan_head", 1 << 40),
        ("next_generation", 1 << 32),
        ("state", 7),
    ],
)
def test_superblock_counter_out_of_range_is_refused_at_mount(field: str, value: int) -> None:
    dev = fresh(lambda fs: fs.mkdir("/d"))
    edit_superblock(dev, **{field: value})
    with corrupted(field):
        daxfs.mount(dev)


def test_free_blocks_must_match_the_bitmap() -> None:
    dev = fresh()
    edit_superblock(dev, free_blocks=superblock(dev).free_blocks - 1)
    with corrupted("free_blocks .* but the allocation bitmap"):
        daxfs.mount(dev)


def test_mount_count_wraps() -> None:
    dev = fresh()
    edit_superblock(dev, mount_count=0xFFFFFFFF)
    with daxfs.mount(dev) as fs:
        assert fs.superblock.mount_count == 0


def test_a_counter_that_overflows_at_runtime_is_euclean() -> None:
    """The safety net: a field that no longer fits is named, not a struct.error."""
    from daxfs.fs.layout import InodeRecord

    with corrupted("inode 9: blocks -1 does not fit"):
        InodeRecord(ino=9, blocks=-1).pack_into(bytearray(256), 0)
    with corrupted("superblock: used_inodes 18446744073709551616"):
        sb = superblock(fresh())
        sb.used_inodes = 1 << 64
        sb.to_block()


# -- inodes: never hand out a live one -------------------------------------------------------


def three_files(fs: daxfs.FileSystem) -> None:
    for name in ("a", "b", "c"):
        with fs.open(f"/{name}", "wb") as f:
            f.write(name.encode() * 100)


def test_lowered_inode_hwm_never_takes_over_a_live_inode() -> None:
    dev = fresh(three_files)
    a = crafting.ino_of(dev, "/a")
    sb = superblock(dev)
    # a consistent lie: hwm and the counters lowered as if /a's inode were never used
    edit_superblock(dev, inode_hwm=a, used_inodes=a - 1, free_inodes=0, free_ino_head=0)
    with daxfs.mount(dev) as fs:
        with corrupted(f"inode_hwm {a} .* inode {a} holds a record"):
            fs.open("/new", "wb").close()
        assert not fs.exists("/new")
    assert crafting.read_inode(dev, a).mode  # untouched
    assert sb.inode_hwm > a


def test_free_list_head_on_a_live_inode_is_refused() -> None:
    dev = fresh(three_files)
    b = crafting.ino_of(dev, "/b")
    edit_superblock(
        dev, free_ino_head=b, free_inodes=1, used_inodes=superblock(dev).used_inodes - 1
    )
    with daxfs.mount(dev) as fs:
        with corrupted(f"free inode list: inode {b} is in use"):
            fs.mkdir("/new")
        with fs.open("/b", "rb") as f:
            assert f.read() == b"b" * 100


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"size": 0}, "size 0 is not a positive number of blocks"),
        ({"size": 100}, "size 100"),
        ({"size": 1 << 40}, "maps 1 of its"),
        ({"mode": 0o40755}, "mode"),
    ],
)
def test_damaged_inode_file_is_refused_at_mount(changes: dict[str, int], words: str) -> None:
    dev = fresh()
    crafting.edit_inode(dev, 1, **changes)
    with corrupted(words):
        daxfs.mount(dev)


def test_inode_hwm_beyond_the_inode_file_is_refused() -> None:
    dev = fresh()
    edit_superblock(dev, inode_hwm=17)  # the inode file has one block: 16 slots
    with corrupted("inode_hwm 17 beyond its 16 slots"):
        daxfs.mount(dev)


def test_root_that_is_not_a_directory_is_refused() -> None:
    dev = fresh()
    crafting.edit_inode(dev, 2, mode=0o100644)
    with corrupted("root inode 2 is not a directory"):
        daxfs.mount(dev)


def test_unlink_of_a_named_inode_with_link_count_zero_is_euclean() -> None:
    dev = fresh(three_files)
    crafting.edit_inode(dev, crafting.ino_of(dev, "/a"), nlink=0)
    with daxfs.mount(dev) as fs:
        with corrupted("link count 0"):
            fs.unlink("/a")
        assert fs.exists("/a")


# -- directories: cycles and names -----------------------------------------------------------


@pytest.mark.parametrize("loop", ["self", "child"])
def test_rename_into_a_directory_whose_parent_chain_loops(loop: str) -> None:
    def tree(fs: daxfs.FileSystem) -> None:
        fs.makedirs("/d/e")
        fs.mkdir("/x")

    dev = fresh(tree)
    d, e = crafting.ino_of(dev, "/d"), crafting.ino_of(dev, "/d/e")
    crafting.edit_inode(dev, d, parent=d if loop == "self" else e)
    with daxfs.mount(dev) as fs:
        with corrupted("'..' chain loops"):
            fs.rename("/x", "/d/e/x")
        assert fs.isdir("/x")


def test_parent_that_is_not_a_directory_is_euclean() -> None:
    def tree(fs: daxfs.FileSystem) -> None:
        fs.mkdir("/d")
        three_files(fs)

    dev = fresh(tree)
    crafting.edit_inode(dev, crafting.ino_of(dev, "/d"), parent=crafting.ino_of(dev, "/a"))
    with daxfs.mount(dev) as fs, corrupted("'..' is inode"):
        fs.stat("/d/..")


@pytest.mark.parametrize(
    ("new_name", "words"),
    [
        (b"..", "malformed directory entry name b'..'"),
        (b"a/", "malformed"),
        (b"a\0", "malformed"),
    ],
)
def test_entry_names_from_media_are_validated(new_name: bytes, words: str) -> None:
    def tree(fs: daxfs.FileSystem) -> None:
        fs.mkdir("/ab")

    dev = fresh(tree)
    crafting.edit_entry(dev, 2, b"ab", new_name=new_name)
    with daxfs.mount(dev) as fs, corrupted(words):
        fs.listdir("/")


def test_entry_named_dot_is_corruption() -> None:
    dev = fresh(lambda fs: fs.mkdir("/a"))
    crafting.edit_entry(dev, 2, b"a", new_name=b".")
    with daxfs.mount(dev) as fs, corrupted("malformed directory entry name b'.'"):
        fs.listdir("/")


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("dtype", 1, "unknown file type 1"),
        ("ino", 0, "names inode 0"),
        ("ino", 2, "names inode 2"),
        ("ino", 1 << 40, "names inode 1099511627776"),
    ],
)
def test_entry_type_and_inode_from_media_are_validated(field: str, value: int, words: str) -> None:
    dev = fresh(lambda fs: fs.mkdir("/a"))
    crafting.edit_entry(dev, 2, b"a", **{field: value})
    with daxfs.mount(dev) as fs:
        with corrupted(words):
            fs.listdir("/")
        with corrupted(words):
            fs.stat("/a")


# -- orphans ---------------------------------------------------------------------------------


@pytest.mark.parametrize("blocks", [1000, 0])
def test_orphan_with_a_wrong_block_count_is_reaped(blocks: int) -> None:
    dev = fresh()
    fs = daxfs.mount(dev)
    with fs.open("/big", "wb") as f:
        f.write(b"x" * 10 * BLOCK_SIZE)
    ino = fs.stat("/big").st_ino
    f = fs.open("/big", "rb")
    fs.unlink("/big")  # open: on the orphan list
    crashed = SimulatedPmem(dev.size, image=dev.persisted_image())
    f.close()
    fs.unmount()
    crafting.settle_journal(crashed)
    crafting.edit_inode(crashed, ino, blocks=blocks)
    free_before = superblock(crashed).free_blocks
    with daxfs.mount(crashed) as fs2:  # reaps the orphan
        assert fs2.statvfs().f_bfree == free_before + 10
    assert fsck(crashed).clean


# -- extents from media ----------------------------------------------------------------------


def one_extent_file(fs: daxfs.FileSystem) -> None:
    with fs.open("/f", "wb") as f:
        f.write(b"d" * 3 * BLOCK_SIZE)


def set_inline_extent(dev: SimulatedPmem, ino: int, index: int, **fields: int) -> None:
    from daxfs.fs.layout import EXTENT

    rec = crafting.read_inode(dev, ino)
    inline = bytearray(rec.inline)
    lblk, pblk, length, flags = EXTENT.unpack_from(inline, index * EXTENT.size)
    values = {"lblk": lblk, "pblk": pblk, "length": length, "flags": flags, **fields}
    EXTENT.pack_into(inline, index * EXTENT.size, *values.values())
    crafting.edit_inode(dev, ino, inline=bytes(inline))


@pytest.mark.parametrize(
    "fields",
    [
        {"pblk": 1 << 63},
        {"pblk": 0},  # the primary superblock
        {"pblk": 1},  # the journal
        {"length": 0},
        {"length": 0xFFFFFFFF},
        {"flags": 0x80},
        {"lblk": (1 << 64) - 2},
    ],
)
def test_extent_from_media_is_validated(fields: dict[str, int]) -> None:
    dev = fresh(one_extent_file)
    ino = crafting.ino_of(dev, "/f")
    set_inline_extent(dev, ino, 0, **fields)
    with daxfs.mount(dev) as fs:
        with corrupted(f"inode {ino}: extent at file block .* is not a valid extent"):
            fs.open("/f", "rb").read()
        with corrupted("not a valid extent"), fs.open("/f", "r+b") as f:
            f.write(b"overwrite")
    assert dev.read(0, 8) == b"DAXFS\x00SB"


def test_overlapping_inline_extents_are_euclean() -> None:
    def two(fs: daxfs.FileSystem) -> None:
        with fs.open("/f", "wb", buffering=0) as f:
            f.pwrite(b"a" * BLOCK_SIZE, 0)
            f.pwrite(b"b" * BLOCK_SIZE, 4 * BLOCK_SIZE)

    dev = fresh(two)
    ino = crafting.ino_of(dev, "/f")
    set_inline_extent(dev, ino, 0, length=5)
    with daxfs.mount(dev) as fs, corrupted("overlaps"):
        fs.open("/f", "rb").read()


def test_extent_in_a_btree_with_a_huge_pblk_is_euclean() -> None:
    from daxfs.fs.layout import LEAF_SLOTS

    dev = fresh(fragmented)
    rec = crafting.read_inode(dev, crafting.ino_of(dev, "/frag"))
    leaf = dev.read(rec.map_root << BLOCK_SHIFT, BLOCK_SIZE)
    off = int.from_bytes(leaf[LEAF_SLOTS : LEAF_SLOTS + 2], "little")
    crafting.edit_node(dev, rec.map_root, lambda b: struct.pack_into("<Q", b, off, 1 << 63))
    with daxfs.mount(dev) as fs, corrupted("not a valid extent"):
        fs.open("/frag", "rb").read()


# -- inode records that lie (valid checksums) ------------------------------------------------


def files_and_links(fs: daxfs.FileSystem) -> None:
    three_files(fs)
    fs.symlink("/a", "/sym")
    fs.symlink("/" + "L" * 200, "/longsym")  # too long for the inode: in a data block


@pytest.mark.parametrize(
    ("path", "changes", "words"),
    [
        ("/a", {"size": (1 << 64) - 1}, "past the maximum"),
        ("/a", {"mode": 0o10644}, "unknown file type"),
        ("/a", {"mode": 0o1100644}, "mode bits"),
        ("/a", {"flags": 0x80}, "flags 0x80 that mode 100644 cannot carry"),
        ("/sym", {"flags": 0x2}, "flags 0x2 that mode 120777 cannot carry"),
        ("/a", {"map_kind": 3}, "map kind 3"),
        ("/a", {"map_count": 6}, "6 inline extents"),
        ("/sym", {"size": 1000}, "inline symlink target"),
        ("/longsym", {"size": 1 << 31}, "past the maximum"),
    ],
)
def test_inode_record_that_lies_is_euclean_when_loaded(
    path: str, changes: dict[str, int], words: str
) -> None:
    dev = fresh(files_and_links)
    ino = crafting.ino_of(dev, path)
    crafting.edit_inode(dev, ino, **changes)
    with daxfs.mount(dev) as fs:
        with corrupted(f"inode {ino}: .*{words}") as info:
            fs.lstat(path)
        assert info.value.filename == path
        assert fs.listdir("/")  # the rest of the filesystem works


def test_orphan_flag_of_an_inode_not_on_the_list_is_euclean_at_unlink() -> None:
    dev = fresh(files_and_links)
    ino = crafting.ino_of(dev, "/sym")
    crafting.edit_inode(dev, ino, flags=1)  # ORPHAN, but the orphan list is empty
    with daxfs.mount(dev) as fs:
        with corrupted("orphan flag, but the orphan list is empty"):
            fs.unlink("/sym")
        assert fs.islink("/sym")  # nothing changed


# -- found by the corrupted-image fuzzer (daxfs.testing.fuzz) --------------------------------


def test_an_api_error_holds_no_device_views(image: Path) -> None:
    """A caller that keeps the error, or unmounts in ``finally``, can still close the image."""
    dev = fresh(fragmented)
    root = crafting.read_inode(dev, crafting.ino_of(dev, "/frag")).map_root
    dev.write((root << BLOCK_SHIFT) + 100, b"\xff")  # node checksum now wrong
    crafting.to_file(dev, image)
    kept: list[OSError] = []
    fs = daxfs.mount(image)
    try:
        with corrupted("checksum"), fs.open("/frag", "rb") as f:
            try:
                f.read()
            except OSError as exc:
                kept.append(exc)
                raise
    finally:
        fs.unmount()  # closes the device: no view may be alive
    assert kept[0].filename == "/frag"


def test_superblock_bytes_after_its_fields_stay_covered_by_its_checksum() -> None:
    dev = fresh()
    block = bytearray(dev.read(0, BLOCK_SIZE))
    block[1000] = 0x5A  # past the fields, zero as mkfs writes it: resealed
    crafting.write_raw_sb(dev, block)
    with daxfs.mount(dev) as fs:
        fs.mkdir("/d")  # a transaction journals the counters and the checksum
    superblock(dev, verify=True)  # the primary's checksum is still right
    report = fsck(dev)  # which reports the bytes, not a checksum mismatch
    assert [p.message for p in report.problems] == ["bytes past its fields are not zero"]


def test_an_entry_stored_under_another_key_is_euclean_when_listed() -> None:
    dev = fresh(lambda fs: fs.mkdir("/ab"))
    crafting.edit_entry(dev, 2, b"ab", new_name=b"xy")  # a legal name, another name's key
    with daxfs.mount(dev) as fs:
        with corrupted("not under the hash of its name"):
            fs.listdir("/")
        with corrupted("not under the hash of its name"):
            list(fs.scandir("/"))


def test_no_path_climbs_above_the_root_whatever_its_record_says() -> None:
    def tree(fs: daxfs.FileSystem) -> None:
        fs.makedirs("/d/inner")

    dev = fresh(tree)
    crafting.edit_inode(dev, 2, parent=crafting.ino_of(dev, "/d"))
    with daxfs.mount(dev) as fs:
        assert fs.stat("/..").st_ino == 2
        assert fs.listdir("/../..") == ["d"]
        assert not fs.exists("/../inner")
