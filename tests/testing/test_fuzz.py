"""The corrupted-image fuzzer (daxfs.testing.corrupt, daxfs.testing.fuzz): its field
tables match the format, its mutations are deterministic and accounted for, and it
classifies planted failures correctly."""

from __future__ import annotations

import os
import signal
import struct
import time
from collections.abc import Iterator
from typing import Any

import pytest

import daxfs
import daxfs.testing.fuzz as fuzz_mod
from daxfs.fs import btree
from daxfs.fs.dir import Directories
from daxfs.fs.layout import (
    INODE_SIZE,
    NODE_HEADER,
    InodeRecord,
    JournalHeader,
    Superblock,
)
from daxfs.testing import corrupt, images
from daxfs.testing.child import disk_usage, run_in_child
from daxfs.testing.fuzz import Fuzzer
from tests.testing.known_bugs import FUZZ_KINDS, SLOW_SECONDS

# -- the field tables are the format ---------------------------------------------------------


def _distinct(names: list[str]) -> dict[str, int]:
    return {name: 0x11 * (i + 1) for i, name in enumerate(names)}


def _check_table(
    raw: bytes, table: tuple[tuple[str, int, int], ...], values: dict[str, int]
) -> None:
    for name, offset, size in table:
        if name in values:
            got = int.from_bytes(raw[offset : offset + size], "little")
            assert got == values[name], f"{name} at {offset}: {got:#x} != {values[name]:#x}"


def test_superblock_fields_match_the_layout() -> None:
    ints = [n for n, _, size in corrupt.SUPERBLOCK_FIELDS if size in (4, 8)]
    ints = [n for n in ints if n != "magic"]
    values = _distinct(ints)
    sb = Superblock(
        uuid=bytes(16), label="", hash_key=bytes(16), **{n: v for n, v in values.items()}
    )
    _check_table(sb.to_block(), corrupt.SUPERBLOCK_FIELDS, values)


def test_inode_fields_match_the_layout() -> None:
    names = [n for n, _, _ in corrupt.INODE_FIELDS if n not in ("magic", "ino", "reserved")]
    values = {n: v % 200 + 1 for n, v in _distinct(names).items()}
    values["ino"] = 77
    rec = InodeRecord(**values)
    buf = bytearray(INODE_SIZE)
    rec.pack_into(buf, 0)
    _check_table(bytes(buf), corrupt.INODE_FIELDS, values)


def test_node_and_journal_fields_match_the_layout() -> None:
    raw = NODE_HEADER.pack(1, 2, 3, 4, 5, 6, 7, 8, 9)
    values = {"magic": 1, "owner": 3, "blockno": 4, "level": 5, "count": 6, "kind": 7, "heap": 8}
    _check_table(raw, corrupt.NODE_FIELDS, values)
    header = JournalHeader(seq=0x1234, nrecords=5, log_bytes=600, log_crc=0xABCD)
    _check_table(
        header.pack(),
        corrupt.JOURNAL_FIELDS,
        {"seq": 0x1234, "nrecords": 5, "log_bytes": 600, "log_crc": 0xABCD},
    )


# -- mutations -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bases() -> tuple[images.Base, images.Base, images.Inventory]:
    return fuzz_mod._bases()


def test_base_images_are_deterministic_and_hold_every_structure(
    bases: tuple[images.Base, images.Base, images.Inventory],
) -> None:
    _, journal, inv = bases
    assert {n.kind for n in inv.nodes} == {"extents", "directory"}
    assert {n.level for n in inv.nodes} == {0, 1}  # leaves and internal nodes
    assert any(count > 1 for _, count in inv.inline)
    assert len(inv.free_inodes) == 6
    # extended attributes: a block with a value in two blocks of its own, and a directory's
    assert sorted(len(values) for _, _, values in inv.xattrs) == [0, 2]
    # and inline ones: a file's two beside its extent, a directory's one
    assert sorted(size for _, size in inv.inline_xattrs) == [2 * 2 + 7 + 30 + 8 + 20, 2 + 8 + 60]
    assert journal.allowed[0] != journal.allowed[1]  # replaying changes something
    again, _ = images.base_images()
    assert images.inventory(again.image) == inv


@pytest.mark.parametrize("structure", corrupt.STRUCTURES)
@pytest.mark.parametrize("sealed", [False, True])
def test_mutations_are_deterministic_and_accounted_for(
    bases: tuple[images.Base, images.Base, images.Inventory], structure: str, sealed: bool
) -> None:
    clean, journal, inv = bases
    base = journal if structure == "journal" else clean
    for seed in range(3):
        image, m = corrupt.corrupt(structure, seed, base.image, inv, sealed)
        again, _ = corrupt.corrupt(structure, seed, base.image, inv, sealed)
        assert image == again
        changed = [
            i for i in range(0, len(image), 4096) if image[i : i + 4096] != base.image[i : i + 4096]
        ]
        assert changed, f"{m.detail}: nothing changed"
        for block in changed:
            lo = block
            diff = [lo + j for j in range(4096) if image[lo + j] != base.image[lo + j]]
            outside = [d for d in diff if not any(a <= d < b for a, b in m.touched)]
            # a resealed checksum is the only change outside what the mutation names
            assert (len(outside) <= 4) if sealed else not outside, (m.detail, outside[:8])


# -- the child runner ------------------------------------------------------------------------


def test_child_results_errors_hangs_and_crashes() -> None:
    ok = run_in_child("x", lambda: {"value": 42}, 10)
    assert (ok.status, ok.data["value"]) == ("ok", 42)

    def raises() -> dict[str, Any]:
        raise KeyError("boom")

    err = run_in_child("x", raises, 10)
    assert err.status == "error"
    assert err.data["type"] == "KeyError"
    assert not err.data["oserror"]

    def hangs() -> dict[str, Any]:
        time.sleep(60)
        return {}

    start = time.monotonic()
    hung = run_in_child("x", hangs, 0.5)
    assert hung.status == "hang"
    assert time.monotonic() - start < 10

    def dies() -> dict[str, Any]:
        os.kill(os.getpid(), signal.SIGSEGV)
        return {}

    crashed = run_in_child("x", dies, 10)
    assert crashed.status == "crash"
    assert "SIGSEGV" in crashed.describe()


def test_child_stopped_by_its_watch_and_disk_usage_counts_blocks(tmp_path: Any) -> None:
    def sleeps() -> dict[str, Any]:
        time.sleep(60)
        return {}

    calls = []

    def watch() -> str | None:
        calls.append(1)
        return "runs away" if len(calls) > 2 else None

    r = run_in_child("x", sleeps, 30, watch)
    assert (r.status, r.describe()) == ("hang", "runs away")
    sparse = tmp_path / "sparse"
    with open(sparse, "wb") as f:
        f.truncate(1 << 40)  # a terabyte of holes takes no disk
        f.write(b"x" * 8192)
    assert disk_usage(str(tmp_path)) < 1 << 20


# -- classification of planted failures ---------------------------------------------------------


@pytest.fixture(scope="module")
def fuzzer() -> Iterator[Fuzzer]:
    f = Fuzzer(1, timeout=5)
    yield f
    f.close()


def _rename_sparse(f: Fuzzer, sealed: bool) -> tuple[bytes, corrupt.Mutation]:
    """Rename /sparse to /spars in the root's leaf, keeping its key (a lie)."""
    inv = f.inventory
    block, _, count = next(leaf for leaf in inv.leaves if leaf[1] == 2)
    img = bytearray(f.clean.image)
    base = block << 12
    rel = bytes(img[base : base + 4096]).index(b"sparse")  # DIRENT: ino, type, namelen, name
    at = base + rel
    img[at - 1] = 5  # namelen 6 -> 5: the entry reads "spars"
    slots = [base + 64 + 128 * 8 + 4 * i for i in range(count)]
    slot = next(s for s in slots if 0 <= rel - 10 - struct.unpack_from("<H", img, s)[0] < 16)
    off, length = struct.unpack_from("<HH", img, slot)
    struct.pack_into("<HH", img, slot, off, length - 1)
    if sealed:
        corrupt._reseal_node(img, block)
    m = corrupt.Mutation("dirent", "name", "planted: sparse -> spars", sealed, [(at - 1, at + 6)])
    return bytes(img), m


def test_an_intact_image_is_fine(fuzzer: Fuzzer) -> None:
    m = corrupt.Mutation("random", "none", "planted: nothing", False, [(0, 0)])
    case = fuzzer.run_image(1000, fuzzer.clean.image, m, fuzzer.clean)
    assert case.outcome == "fine", case.findings


def test_a_broken_checksum_is_a_clean_refusal(fuzzer: Fuzzer) -> None:
    image, m = _rename_sparse(fuzzer, sealed=False)
    case = fuzzer.run_image(1001, image, m, fuzzer.clean)
    assert "silent" not in {o for o, _ in case.findings}
    assert any(o == "refused" for o, _ in case.findings)


def test_a_checksum_that_is_not_checked_is_silently_wrong(
    fuzzer: Fuzzer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Plant the bug: B+tree nodes no longer verify their checksum (nor listings their keys)."""
    monkeypatch.setattr(btree, "node_ok", lambda view: True)
    monkeypatch.setattr(Directories, "_check_key", lambda self, inode, key, name: None)
    image, m = _rename_sparse(fuzzer, sealed=False)
    case = fuzzer.run_image(1002, image, m, fuzzer.clean)
    assert "silent" in {o for o, _ in case.findings}, case.findings


def test_planted_wrong_exception_hang_and_crash(
    fuzzer: Fuzzer, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = corrupt.Mutation("random", "none", "planted", False, [(0, 0)])

    def bad_fsck(image: str, repair: bool = False, dax: str = "inode") -> dict[str, Any]:
        if repair:
            time.sleep(60)  # a hang
        raise KeyError("not an OSError")

    def bad_mount(image: str, dax: str = "inode", cache_size: str | None = None) -> dict[str, Any]:
        os.kill(os.getpid(), signal.SIGBUS)
        return {}

    monkeypatch.setattr(fuzz_mod, "step_fsck", bad_fsck)
    monkeypatch.setattr(fuzz_mod, "step_mount", bad_mount)
    fuzzer.timeout = 1
    try:
        case = fuzzer.run_image(1003, fuzzer.clean.image, m, fuzzer.clean)
    finally:
        fuzzer.timeout = 5
    found = {o for o, _ in case.findings}
    assert {"wrong", "hang", "crash"} <= found
    assert case.outcome == "crash"
    assert case.steps["repair"].status == "hang"


def test_planted_repair_that_damages_a_good_file_is_worse(
    fuzzer: Fuzzer, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = fuzz_mod.step_fsck

    def evil_repair(image: str, repair: bool = False, dax: str = "inode") -> dict[str, Any]:
        if repair:
            from daxfs.fs.mount import mount

            with mount(image) as fs, fs.open("/d/e/f/deep", "rb+", buffering=0) as f:
                f.write(b"oops")
        return real(image, repair, dax)

    monkeypatch.setattr(fuzz_mod, "step_fsck", evil_repair)
    m = corrupt.Mutation("random", "none", "planted", False, [(0, 0)])
    case = fuzzer.run_image(1004, fuzzer.clean.image, m, fuzzer.clean)
    assert case.outcome == "worse", case.findings
    assert "/d/e/f/deep" in " ".join(why for _, why in case.findings)


def test_planted_escape_from_the_destination(
    fuzzer: Fuzzer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import daxfs.cli

    real = daxfs.cli.main

    def evil_main(argv: list[str]) -> int:
        if argv[0] == "cp":
            dest = argv[-1]
            with open(os.path.join(os.path.dirname(os.path.dirname(dest)), "pwn"), "w") as f:
                f.write("outside")
        return real(argv)

    monkeypatch.setattr(daxfs.cli, "main", evil_main)
    m = corrupt.Mutation("random", "none", "planted", False, [(0, 0)])
    case = fuzzer.run_image(1005, fuzzer.clean.image, m, fuzzer.clean)
    assert case.outcome == "escape", case.findings


def test_table_and_reproducer(fuzzer: Fuzzer) -> None:
    table = fuzz_mod.Table()
    m = corrupt.Mutation("inode", "size", "planted", True, [(0, 0)])
    case = fuzz_mod.Case(7, m, "clean", findings=[("worse", "why")])
    table.add(case)
    table.add(fuzz_mod.Case(8, m, "clean", findings=[("fine", "")]))
    text = table.render()
    assert "inode        resealed" in text
    assert table.totals() == {"worse": 1, "fine": 1}
    assert "--seed 3 --case 7 --never 0" in fuzz_mod.reproducer(3, case)
    case.dax = "never"
    table.add(case)
    assert "1 of the 3 images through the block layer" in table.render()
    assert "dax=never" in fuzz_mod.reproducer(3, case)
    assert "--seed 3 --case 7 --never 1" in fuzz_mod.reproducer(3, case)


def test_a_share_of_the_cases_runs_through_the_block_layer() -> None:
    """The dax of each case is deterministic in (seed, number) and follows ``never``."""
    f = Fuzzer(1, never=fuzz_mod.NEVER_SHARE)
    try:
        chosen = [f.dax(n) for n in range(400)]
        assert chosen == [f.dax(n) for n in range(400)]
        assert 50 < chosen.count("never") < 150  # a quarter of 400
        f.never = 0.0
        assert {f.dax(n) for n in range(100)} == {"inode"}
        f.never = 1.0
        assert {f.dax(n) for n in range(100)} == {"never"}
    finally:
        f.close()


def test_dax_never_cases_reach_the_block_cache(
    fuzzer: Fuzzer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Plant a bug in BlockCache (a read raising a non-OSError): a case run with
    dax="never" is wrong; the same case with DAX never meets it."""
    from daxfs.block.cache import BlockCache

    def broken(self: BlockCache, offset: int, length: int) -> memoryview:
        raise KeyError("planted in BlockCache.direct_access")

    monkeypatch.setattr(BlockCache, "direct_access", broken)
    m = corrupt.Mutation("random", "none", "planted: nothing", False, [(0, 0)])
    case = fuzzer.run_image(1006, fuzzer.clean.image, m, fuzzer.clean, "inode")
    assert case.outcome == "fine", case.findings
    case = fuzzer.run_image(1007, fuzzer.clean.image, m, fuzzer.clean, "never")
    assert case.outcome == "wrong", case.findings
    assert "planted in BlockCache" in " ".join(why for _, why in case.findings)


# -- bounded runs -------------------------------------------------------------------------------


def test_bounded_fuzz_run_finds_nothing_bad() -> None:
    table = fuzz_mod.fuzz(7, cases=len(FUZZ_KINDS), timeout=30, kinds=FUZZ_KINDS)
    assert table.cases == len(FUZZ_KINDS)
    assert not table.bad, "\n".join(fuzz_mod.reproducer(7, c) for c in table.bad)


def test_bounded_fuzz_run_through_the_block_layer_finds_nothing_bad() -> None:
    """Every kind of damage once more, every step with dax="never" (BlockCache)."""
    table = fuzz_mod.fuzz(9, cases=len(FUZZ_KINDS), timeout=30, kinds=FUZZ_KINDS, never=1.0)
    assert table.never == table.cases == len(FUZZ_KINDS)
    assert not table.bad, "\n".join(fuzz_mod.reproducer(9, c) for c in table.bad)


def test_bounded_fuzz_run_with_cache_size_finds_nothing_bad() -> None:
    """Every kind of damage once more, mounted with cache_size (daxfs.pagecache.bounded:
    the lazily loaded cache, loads following offsets read from the damaged image)."""
    table = fuzz_mod.fuzz(
        11, cases=len(FUZZ_KINDS), timeout=30, kinds=FUZZ_KINDS, never=1.0, bounded=1.0
    )
    assert table.bounded == table.never == table.cases == len(FUZZ_KINDS)
    assert not table.bad, "\n".join(fuzz_mod.reproducer(11, c) for c in table.bad)


def test_bounded_cases_reach_the_bounded_cache(
    fuzzer: Fuzzer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Plant a bug in BoundedBlockCache.ensure (a non-OSError): a case mounted with
    cache_size is wrong, and says so in its reproducer; without cache_size it is fine."""
    from daxfs.pagecache.bounded import BoundedBlockCache

    def broken(self: BoundedBlockCache, offset: int, length: int) -> None:
        raise KeyError("planted in BoundedBlockCache.ensure")

    monkeypatch.setattr(BoundedBlockCache, "ensure", broken)
    m = corrupt.Mutation("random", "none", "planted: nothing", False, [(0, 0)])
    case = fuzzer.run_image(1008, fuzzer.clean.image, m, fuzzer.clean, "never")
    assert case.outcome == "fine", case.findings
    case = fuzzer.run_image(1009, fuzzer.clean.image, m, fuzzer.clean, "never", "64K")
    assert case.outcome == "wrong", case.findings
    assert "planted in BoundedBlockCache" in " ".join(why for _, why in case.findings)
    assert "--never 1 --bounded 1" in fuzz_mod.reproducer(3, case)


@pytest.mark.slow
@pytest.mark.timeout(SLOW_SECONDS * 2 + 300)
def test_long_fuzz_run() -> None:
    """The fuzzer for SLOW_SECONDS (DAXFS_SLOW_SECONDS) over the kinds with no open bug."""
    table = fuzz_mod.fuzz(
        8, seconds=SLOW_SECONDS, timeout=30, kinds=FUZZ_KINDS, at_least=len(FUZZ_KINDS)
    )
    print(f"fuzz seed 8: {table.cases} images\n{table.render()}")
    tried = {(structure, mode == "resealed") for structure, mode in table.counts}
    assert tried == set(FUZZ_KINDS)
    assert not table.bad, "\n".join(fuzz_mod.reproducer(8, c) for c in table.bad)


# -- the walk checks stat's C path against the walk ------------------------------------------


class _WrongSize:
    """A StatPath whose whole-path answers say one byte more than they should."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def path(self, *args: Any) -> Any:
        found = self.real.path(*args)
        if isinstance(found, os.stat_result):
            fields = list(found)
            fields[6] += 1  # st_size
            return os.stat_result(fields)
        return found

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def test_walk_compares_the_c_stat_path_with_the_walk(tmp_path: Any) -> None:
    image = os.path.join(os.fspath(tmp_path), "img")
    daxfs.mkfs(image, 32 << 20)
    fs = daxfs.mount(image)
    try:
        fs.makedirs("/d/e")
        for i in range(20):
            with fs.open(f"/d/e/f{i}", "wb") as f:
                f.write(b"x" * i)
    finally:
        fs.unmount()
    fs = daxfs.mount(image)
    try:
        assert fs._fast is not None, "no C stat path on this image"
        facts, errors = fuzz_mod.walk(fs)
        assert len(facts) == 23
        assert errors == []
        fs._fast = _WrongSize(fs._fast)  # type: ignore[assignment]
        fs._forget_paths()
        _, errors = fuzz_mod.walk(fs)
        wrong = [e for e in errors if e["errno"] is None and "the walk" in e["message"]]
        assert wrong, errors  # the C path answered some of the names, wrongly
        assert {e["path"] for e in wrong} <= {f"/d/e/f{i}" for i in range(20)} | {"/d", "/d/e"}
    finally:
        fs._fast = getattr(fs._fast, "real", fs._fast)
        fs.unmount()


def test_walk_probes_every_index_through_a_bucket_array_too(tmp_path: Any) -> None:
    """The walk's second pass lowers StatPath.fence_min, so that the image's small
    directories (built from whatever leaves the image holds) are probed through a
    bucket array (daxfs/fs/_stat.c's fence_of), which only directories of 4096 names
    or more get otherwise; and it restores fence_min."""
    image = os.path.join(os.fspath(tmp_path), "img")
    daxfs.mkfs(image, 32 << 20)
    with daxfs.mount(image) as fs:
        fs.makedirs("/d/e")
        for i in range(20):
            with fs.open(f"/d/e/f{i}", "wb") as f:
                f.write(b"x" * i)
    with daxfs.mount(image) as fs:
        fast = fs._fast
        assert fast is not None, "no C stat path on this image"
        default = fast.fence_min
        assert default > 20
        facts, errors = fuzz_mod.walk(fs)
        assert len(facts) == 23
        assert errors == []
        assert fast.fences >= 3  # /, /d and /d/e: each index probed through one
        assert fast.fence_min == default


def test_reuse_step_takes_the_copy_on_write_fast_path(
    bases: tuple[images.Base, images.Base, images.Inventory],
    tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """reuse's aligned overwrite goes through Allocator.move (DataPath._cow_blocks), so
    damaged bitmaps meet move's checks too; and the step reads back what it wrote."""
    from daxfs.fs.alloc import Allocator

    clean, _, _ = bases
    image = os.path.join(os.fspath(tmp_path), "img")
    with open(image, "wb") as f:
        f.write(clean.image)
    moves: list[int] = []
    real = Allocator.move

    def counted(self: Allocator, *args: Any, **kwargs: Any) -> Any:
        moves.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Allocator, "move", counted)
    result = fuzz_mod.step_reuse(image)
    assert moves, "the aligned overwrite did not reach Allocator.move"
    assert result["errors"] == []
    assert result["fsck"]["clean"]
