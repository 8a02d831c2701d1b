"""The test tools reach the new paths (daxfs.testing.reach), and catch a bug planted there.

What each tool reached before this file (``python /tmp``-style audit with
``reaching()`` around 300-400 operations of each; docs/GUARANTEES.md, testing):
fsx, nsstress and the block fault harness on simulated devices never reached the
C lean read (``_direct.LeanRead``) nor the device's C path (``_uring.BioRing``):
both exist only on a file device on io_uring; none of the tools re-read cached
pages, so ``FileCache.pread_hit``/``readinto_hit`` were never taken.  fsx's
``FsxOptions.uring`` (an image file through io_uring) and its re-reads close that.
"""

from __future__ import annotations

from typing import Any

import pytest

from daxfs.block.uring import availability
from daxfs.fs import filecache
from daxfs.fs.direct import DirectIO
from daxfs.testing import fsx
from daxfs.testing.reach import COUNTERS, reaching

needs_uring = pytest.mark.skipif(bool(availability()), reason=f"io_uring: {availability()}")

OPS = 400


def run_fsx(seed: int, **options: Any) -> None:
    fsx.run(seed, ops=OPS, options=fsx.FsxOptions(**options))


def test_reaching_restores_what_it_patched() -> None:
    before = (DirectIO._make_lean_read, filecache.hit_reader, DirectIO.write_out_of_place)
    with reaching() as reached:
        assert filecache.hit_reader is not before[1]
    assert (DirectIO._make_lean_read, filecache.hit_reader, DirectIO.write_out_of_place) == before
    assert reached.missing() == list(COUNTERS)


@needs_uring
def test_fsx_on_io_uring_reaches_the_c_lean_read_and_the_bioring() -> None:
    with reaching() as reached:
        run_fsx(1, uring=True)
    assert reached.missing(("lean_c", "bioring")) == [], reached.summary()


@needs_uring
def test_fsx_on_io_uring_bounded_reaches_the_page_cache_of_files() -> None:
    with reaching() as reached:
        run_fsx(1, uring=True, cache_size="64K")
    names = ("bioring", "cache_hits", "cache_reads", "cache_misses", "out_of_place")
    assert reached.missing(names) == [], reached.summary()


def test_fsx_bounded_on_the_simulator_reaches_the_page_cache_hits() -> None:
    with reaching() as reached:
        run_fsx(1, block=True, cache_size="64K")
    assert reached.missing(("cache_hits", "cache_misses", "out_of_place")) == []


# -- planted bugs: each must make fsx fail ----------------------------------------------


class _Corrupting:
    """A LeanRead whose reads that it served return one wrong byte (a planted C bug)."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def read(self, inode: Any, pos: int, buffer: Any) -> Any:
        got = self.real.read(inode, pos, buffer)
        if type(got) is int and got:
            view = memoryview(buffer).cast("B")
            view[0] ^= 0xFF
        return got

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


@pytest.fixture
def planted_lean_c(monkeypatch: pytest.MonkeyPatch) -> None:
    real = DirectIO._make_lean_read

    def make(self: DirectIO) -> Any:
        lean = real(self)
        return None if lean is None else _Corrupting(lean)

    monkeypatch.setattr(DirectIO, "_make_lean_read", make)


@needs_uring
def test_fsx_on_io_uring_catches_a_wrong_byte_of_the_c_lean_read(planted_lean_c: None) -> None:
    with pytest.raises(fsx.FsxFailure, match=r"direct (re-)?read"):
        run_fsx(1, uring=True)


class _WrongSector:
    """A LeanRead whose lean submit_read (``LeanRead.submit``: one bio on the BioRing,
    ended in C) reads one logical block further than asked (a planted C bug)."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def submit(self, inode: Any, pos: int, buffer: Any, *rest: Any) -> Any:
        return self.real.submit(inode, pos + 512, buffer, *rest)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


@pytest.fixture
def planted_lean_submit(monkeypatch: pytest.MonkeyPatch) -> None:
    real = DirectIO._make_lean_read

    def make(self: DirectIO) -> Any:
        lean = real(self)
        return None if lean is None else _WrongSector(lean)

    monkeypatch.setattr(DirectIO, "_make_lean_read", make)


@needs_uring
def test_fsx_on_io_uring_catches_a_wrong_sector_of_a_bioring_read(
    planted_lean_submit: None,
) -> None:
    with reaching() as reached, pytest.raises(fsx.FsxFailure, match="submit_read"):
        run_fsx(1, uring=True)
    assert reached.bioring > 0


@pytest.fixture
def planted_stamp(monkeypatch: pytest.MonkeyPatch) -> None:
    """A space's stamp always matches: a change another way never empties it."""
    monkeypatch.setattr(filecache._Entry, "matches", lambda self: True)


def test_fsx_bounded_catches_a_stamp_that_always_matches(planted_stamp: None) -> None:
    """(Before fsx read a direct write's range through the buffered File, seeds 1-5 of
    400 operations passed with this bug: no operation left a page cached over a
    direct write.)"""
    with pytest.raises(fsx.FsxFailure, match="pread after dwrite"):
        run_fsx(1, block=True, cache_size="64K")


@pytest.fixture
def planted_hit(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hit reader's ``pread`` answers one byte wrong."""
    real = filecache.hit_reader

    class Wrong:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def pread(self, inode: Any, n: Any, pos: Any) -> bytes | None:
            got: bytes | None = self.inner.pread(inode, n, pos)
            return got if not got else bytes([got[0] ^ 0xFF]) + got[1:]

        def preadinto(self, inode: Any, buffer: Any, pos: Any) -> int | None:
            got: int | None = self.inner.preadinto(inode, buffer, pos)
            return got

    monkeypatch.setattr(filecache, "hit_reader", lambda *a, **k: Wrong(real(*a, **k)))


def test_fsx_bounded_catches_a_wrong_cache_hit(planted_hit: None) -> None:
    with pytest.raises(fsx.FsxFailure, match="pread"):
        run_fsx(1, block=True, cache_size="64K")
