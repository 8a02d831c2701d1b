"""fsx (daxfs.testing.fsx): its model follows Linux, it is reproducible, it catches
planted bugs of every kind it checks, and bounded runs pass."""

from __future__ import annotations

import os
import re

import pytest

from daxfs.fs.data import DataPath
from daxfs.fs.layouts import Layouts
from daxfs.mm.mapping import Mapping
from daxfs.testing import fsx
from daxfs.testing.fsx import FALLOC_MODES, Fsx, FsxFailure, FsxOptions, Op
from tests.testing.known_bugs import FSX_WITHOUT, SLOW_SECONDS


def options(**weights: int) -> FsxOptions:
    """Only the given operations (weights), or the defaults without known bugs."""
    opts = FsxOptions()
    if weights:
        opts.weights = {k: 0 for k in opts.weights} | weights
    for kind in FSX_WITHOUT:
        opts.weights[kind] = 0
    return opts


# -- the model ----------------------------------------------------------------------------------


def test_ops_print_and_parse_back() -> None:
    ops = [
        Op("write", 0x1234, 0x10, seed=7),
        Op("fallocate", 4096, 8192, "zerokeep", 3),
        Op("crash", 10, 20, "fallocate/punch", 5, fence=3),
        Op("seek", 99, 0, "hole", 1),
        Op("powercut", seed=4),
    ]
    assert fsx.parse_ops(fsx.format_ops(ops)) == ops


@pytest.mark.parametrize("mode", sorted(FALLOC_MODES))
def test_fallocate_model_matches_linux(mode: str, tmp_path: os.PathLike[str]) -> None:
    """The model against the kernel (tmpfs has no ZERO_RANGE: those are checked by hand)."""
    model = bytearray(b"x" * 10_000)
    got = fsx._fallocated(model, 6000, 8000, FALLOC_MODES[mode])
    expect = {
        "alloc": b"x" * 10_000 + bytes(4000),
        "keep": b"x" * 10_000,
        "punch": b"x" * 6000 + bytes(4000),
        "zero": b"x" * 6000 + bytes(8000),
        "zerokeep": b"x" * 6000 + bytes(4000),
    }[mode]
    assert bytes(got) == expect
    if mode in ("alloc", "keep", "punch") and hasattr(os, "posix_fallocate"):
        import ctypes

        path = os.path.join(os.fspath(tmp_path), "f")
        with open(path, "wb") as f:
            f.write(b"x" * 10_000)
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(path, os.O_RDWR)
        try:
            rc = libc.fallocate(fd, FALLOC_MODES[mode], ctypes.c_long(6000), ctypes.c_long(8000))
            if rc != 0:
                pytest.skip(f"fallocate mode {mode} unsupported here")
        finally:
            os.close(fd)
        with open(path, "rb") as f:
            assert f.read() == expect


def test_same_seed_same_run() -> None:
    a, b = Fsx(11, options()), Fsx(11, options())
    a.run(ops=80)
    b.run(ops=80)
    assert a.ops == b.ops
    assert a.stats == b.stats
    assert a.model == b.model


# -- planted bugs are caught ------------------------------------------------------------------


def _fails(opts: FsxOptions, seeds: range = range(1, 6), ops: int = 150) -> FsxFailure:
    for seed in seeds:
        try:
            fsx.run(seed, ops=ops, options=opts)
        except FsxFailure as exc:
            return exc
    raise AssertionError("fsx did not notice the planted bug")


def test_catches_a_punch_that_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    real = DataPath.fallocate

    def lazy(
        self: DataPath, inode: object, offset: int, length: int, mode: int, nowait: bool = False
    ) -> None:
        if mode != FALLOC_MODES["punch"]:
            real(self, inode, offset, length, mode, nowait)  # type: ignore[arg-type]

    monkeypatch.setattr(DataPath, "fallocate", lazy)
    exc = _fails(options(write=5, fallocate=5, read=5))
    assert "fallocate punch" in fsx.format_ops(exc.ops)
    assert f"seed {exc.seed}, op #{exc.index}" in str(exc)
    # the failure replays alone and shrinks to a few operations
    small = fsx.shrink(exc, options=options(write=5, fallocate=5, read=5), budget=60)
    assert len(small) < len(exc.ops[: exc.index + 1]) or len(small) <= 3
    with pytest.raises(FsxFailure):
        fsx.replay(small, seed=exc.seed)


def test_catches_a_write_that_is_not_atomic(monkeypatch: pytest.MonkeyPatch) -> None:
    real = DataPath.write

    def two_halves(self: DataPath, inode: object, pos: int, data: object) -> int:
        view = memoryview(data).cast("B")  # type: ignore[arg-type]
        half = len(view) // 2
        if half == 0:
            return real(self, inode, pos, view)  # type: ignore[arg-type]
        real(self, inode, pos, view[:half])  # type: ignore[arg-type]
        return half + real(self, inode, pos + half, view[half:])  # type: ignore[arg-type]

    monkeypatch.setattr(DataPath, "write", two_halves)
    exc = _fails(options(write=5, crash=10, read=1), seeds=range(1, 20))
    assert "neither before nor after" in exc.message


def test_catches_a_bug_in_the_copy_on_write_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """fsx reaches DataPath._cow_blocks (an aligned overwrite inside one written extent):
    a fast path that writes its last byte wrong is caught."""
    real = DataPath._cow_blocks

    def last_byte_wrong(self: DataPath, tx: object, inode: object, pos: int, src: object) -> bool:
        data = bytearray(memoryview(src).cast("B"))  # type: ignore[arg-type]
        data[-1] ^= 0xFF
        return real(self, tx, inode, pos, memoryview(data))  # type: ignore[arg-type]

    monkeypatch.setattr(DataPath, "_cow_blocks", last_byte_wrong)
    exc = _fails(options(write=10, read=5))
    # the first wrong byte is the last of a block: the planted one
    found = re.search(r"first difference at (\d+)", exc.message)
    assert found is not None, exc.message
    assert int(found.group(1)) % 4096 == 4095


def test_catches_an_msync_that_persists_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Mapping, "msync", lambda self, offset=0, length=None, *, flags=4: None)
    exc = _fails(options(write=3, mapwrite=10, powercut=5, read=1), seeds=range(1, 20))
    assert "after mount" in exc.message
    assert exc.ops[exc.index].kind == "powercut"


def test_catches_a_truncate_that_ignores_pins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Layouts, "break_layouts", lambda *args, **kwargs: None)
    exc = _fails(options(write=5, pin=5))
    assert "over pinned bytes succeeded" in exc.message


def test_catches_a_wrong_seek_hole(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(DataPath, "seek_data", lambda self, inode, pos, want: pos)
    exc = _fails(options(write=5, seek=5, truncate=1))
    assert "SEEK_" in exc.message


def test_catches_damage_to_another_file(monkeypatch: pytest.MonkeyPatch) -> None:
    """A remount checks the neighbour file: plant a write that also hits it."""
    f = Fsx(3, options(write=1, read=1))
    f.run(ops=10)
    with f.fs.open(f.neighbour, "rb+", buffering=0) as g:
        g.write(b"!")
    with pytest.raises(FsxFailure, match="neighbour file changed"):
        f.step(Op("remount"))


def _block(**weights: int) -> FsxOptions:
    opts = options(**weights)
    opts.block = True
    return opts


def test_direct_ops_run_on_a_block_device() -> None:
    """dread, dwrite and aio go through the direct-I/O engine (bios) on a block device,
    with crashes injected into dwrite."""
    stats = fsx.run(3, ops=120, options=_block(dread=4, dwrite=5, aio=3, read=2, crash=3))
    assert stats.by_kind.get("dwrite", 0) > 0
    assert stats.by_kind.get("aio", 0) > 0
    assert stats.by_kind.get("dread", 0) > 0
    assert stats.crashes > 0


def test_catches_a_direct_write_that_converts_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """A completion that forgets to mark the blocks it filled written: they read as
    zeros afterwards."""
    real = DataPath.direct_write_end

    def forgetful(
        self: DataPath, inode: object, pos: int, written: int, convert: list[tuple[int, int]]
    ) -> None:
        real(self, inode, pos, written, [])  # type: ignore[arg-type]

    monkeypatch.setattr(DataPath, "direct_write_end", forgetful)
    exc = _fails(_block(dwrite=5, dread=3, read=3))
    assert "read" in exc.message


def test_catches_a_cache_left_stale_by_a_direct_write(monkeypatch: pytest.MonkeyPatch) -> None:
    """BlockCache.invalidate planted to do nothing: buffered reads after a direct
    overwrite see the cache's old bytes."""
    from daxfs.block.cache import BlockCache

    monkeypatch.setattr(BlockCache, "invalidate", lambda self, offset, length, data=None: None)
    exc = _fails(_block(write=3, dwrite=5, read=4))
    assert "pread" in exc.message


# -- bounded runs -------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2])
def test_bounded_run(seed: int) -> None:
    stats = fsx.run(seed, ops=250, options=options())
    assert stats.ops == 250
    assert stats.remounts == 2
    assert stats.crashes + stats.powercuts > 0


@pytest.mark.slow
@pytest.mark.timeout(SLOW_SECONDS * 2 + 300)
def test_long_run() -> None:
    """fsx for SLOW_SECONDS (DAXFS_SLOW_SECONDS), seed after seed."""
    import time

    deadline = time.monotonic() + SLOW_SECONDS
    seed = 1000
    total = fsx.FsxStats()
    while time.monotonic() < deadline:
        total.add(fsx.run(seed, ops=2000, options=options()))
        seed += 1
    print(f"fsx long run: seeds 1000..{seed - 1}: {total.summary()}")
    assert total.crashes > 0
