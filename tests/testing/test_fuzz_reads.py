"""The fuzzer's walk on a block mount reads every file every other way
(``fuzz._check_other_reads``): the page cache's hit reader, the C lean read, the
BioRing -- and a bug planted in any of them makes a case ``wrong``.

Before: the walk read each file once with ``read()``; on ``dax="never"`` images it
reached the BioRing only through the mount's own bios, never the C lean read
(``lean_c`` 0) nor a cached re-read (``cache_hits`` 0).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from daxfs.block.uring import availability
from daxfs.fs.direct import DirectIO
from daxfs.fs.mount import mount
from daxfs.testing import fuzz
from daxfs.testing.corrupt import Mutation
from daxfs.testing.reach import reaching
from tests.testing.test_reach import _Corrupting, _WrongSector

needs_uring = pytest.mark.skipif(bool(availability()), reason=f"io_uring: {availability()}")
UNCHANGED = Mutation("data", "none", "the image unchanged", False, [])


@pytest.fixture(scope="module")
def fuzzer() -> Iterator[fuzz.Fuzzer]:
    fz = fuzz.Fuzzer(1)
    yield fz
    fz.close()


@pytest.fixture
def image(fuzzer: fuzz.Fuzzer, shm_path: Any) -> str:
    path = str(shm_path)
    with open(path, "wb") as f:
        f.write(fuzzer.clean.image)
    return path


def walk(image: str, cache_size: str | None) -> list[dict[str, Any]]:
    fs = mount(image, dax="never", cache_size=cache_size)
    try:
        return fuzz.walk(fs)[1]
    finally:
        fs.unmount()


@needs_uring
def test_the_walk_reaches_the_c_lean_read_and_the_bioring(image: str) -> None:
    with reaching() as reached:
        assert walk(image, None) == []
    assert reached.missing(("lean_c", "bioring")) == [], reached.summary()


@needs_uring
def test_the_walk_on_a_bounded_mount_reaches_the_hit_reader(image: str) -> None:
    with reaching() as reached:
        assert walk(image, "64K") == []
    assert reached.missing(("cache_hits", "cache_misses", "bioring")) == [], reached.summary()


def _plant_lean(monkeypatch: pytest.MonkeyPatch, proxy: type) -> None:
    real = DirectIO._make_lean_read

    def make(self: DirectIO) -> Any:
        lean = real(self)
        return None if lean is None else proxy(lean)

    monkeypatch.setattr(DirectIO, "_make_lean_read", make)


def _wrong(errors: list[dict[str, Any]], how: str) -> bool:
    return any(e["errno"] is None and how in e["message"] for e in errors)


@needs_uring
def test_the_walk_catches_a_wrong_byte_of_the_c_lean_read(
    image: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _plant_lean(monkeypatch, _Corrupting)
    assert _wrong(walk(image, None), "direct")


@needs_uring
def test_the_walk_catches_a_wrong_sector_of_a_bioring_read(
    image: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _plant_lean(monkeypatch, _WrongSector)
    assert _wrong(walk(image, None), "direct submit_read")


def test_the_walk_catches_a_wrong_byte_of_the_hit_reader(
    image: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from daxfs.fs import filecache

    real = filecache.hit_reader

    class Wrong:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def pread(self, inode: Any, n: Any, pos: Any) -> bytes | None:
            got: bytes | None = self.inner.pread(inode, n, pos)
            return got

        def preadinto(self, inode: Any, buffer: Any, pos: Any) -> int | None:
            got: int | None = self.inner.preadinto(inode, buffer, pos)
            if got:
                memoryview(buffer).cast("B")[got - 1] ^= 0xFF
            return got

    monkeypatch.setattr(filecache, "hit_reader", lambda *a, **k: Wrong(real(*a, **k)))
    assert _wrong(walk(image, "64K"), "buffered preadinto")


@needs_uring
def test_a_case_with_a_planted_c_lean_read_bug_is_wrong(
    fuzzer: fuzz.Fuzzer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole case (its steps in forked children, then the verdict): ``fine`` on the
    unchanged image, ``wrong`` with the planted bug (the children inherit it)."""
    clean = fuzzer.run_image(0, fuzzer.clean.image, UNCHANGED, fuzzer.clean, "never")
    assert clean.outcome == "fine", clean.findings
    _plant_lean(monkeypatch, _Corrupting)
    case = fuzzer.run_image(1, fuzzer.clean.image, UNCHANGED, fuzzer.clean, "never")
    assert case.outcome == "wrong", case.findings
    assert any("direct" in why for _, why in case.findings), case.findings
