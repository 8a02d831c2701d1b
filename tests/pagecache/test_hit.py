"""The re-read of cached pages (daxfs.fs.filecache.HitReader and its C form,
daxfs/pagecache/_hit.c): the same answer from both, the model's bytes, and the
File methods that take it (pread, preadinto, read, read(n), readinto, readall).

A Hypothesis run drives a file on a bounded mount through writes, truncates,
punches and reads, and after each step asks both readers the same question at
random offsets: both answer (the same bytes, the model's) or both miss, and a
miss leaves the pool's counters as they were.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import daxfs
from daxfs.fs.data import FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE
from daxfs.fs.filecache import FileCache, HitReader, file_cache, hit_reader
from daxfs.fs.filesystem import FileSystem
from daxfs.fs.mount import mkfs, mount
from daxfs.pagecache.cache import PageCache
from daxfs.testing.simblock import SimulatedBlockDevice

PAGE = 4096
MIB = 1 << 20

_hit = pytest.importorskip("daxfs.pagecache._hit")


@pytest.fixture
def fs() -> Iterator[FileSystem]:
    disk = SimulatedBlockDevice(16 * MIB)
    mkfs(disk)
    with mount(disk, cache_size="256K") as mounted:
        yield mounted


def files_of(fs: FileSystem) -> FileCache:
    fc = file_cache(fs.data, fs.direct)  # (made by the first File otherwise)
    assert fc is not None
    return fc


def pool_of(fs: FileSystem) -> PageCache:
    return files_of(fs).pool


def counters(pool: PageCache) -> tuple[int, int, int]:
    return pool.stats.hits, pool.stats.misses, pool.stats.read_calls


def test_the_mount_uses_the_c_reader(fs: FileSystem) -> None:
    fc = files_of(fs)
    assert isinstance(fc.reader, _hit.HitReader)
    with fs.open("/f", "wb+", buffering=0) as f:
        assert f._reader is fc.reader
    with fs.open("/f", "wb", buffering=0) as f:
        assert f._reader is None  # not readable


def test_the_c_reader_refuses_classes_without_slots(fs: FileSystem) -> None:
    class Loose:
        pass

    fc = files_of(fs)
    with pytest.raises(TypeError, match="__slots__"):
        _hit.HitReader({}, fc.pool, Loose, Loose, Loose, Loose)


def both(fs: FileSystem) -> tuple[Any, HitReader]:
    fc = files_of(fs)
    py = hit_reader(fc._spaces, fc.pool, native=False)
    assert type(py) is HitReader
    return fc.reader, py


def ask(fs: FileSystem, f: daxfs.File, model: bytes, pos: int, n: int) -> None:
    """Both readers, pread and preadinto, at ``pos`` for ``n``: the same answer."""
    c, py = both(fs)
    pool = pool_of(fs)
    inode = f.inode
    before = counters(pool)
    a = c.pread(inode, n, pos)
    after_c = counters(pool)
    b = py.pread(inode, n, pos)
    after_py = counters(pool)
    assert a == b
    if a is None:
        assert before == after_c == after_py, "a miss changed the counters"
    else:
        assert a == model[pos : pos + n]
        assert after_c[0] - before[0] == after_py[0] - after_c[0]  # the same hits counted
    ba, bb = bytearray(n), bytearray(n)
    ga, gb = c.preadinto(inode, ba, pos), py.preadinto(inode, bb, pos)
    assert ga == gb
    if ga is not None:
        want = model[pos : pos + n]
        assert ga == len(want)
        assert ba[:ga] == want
        assert bb[:gb] == want


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(["write", "truncate", "punch", "read", "ask"]),
            st.integers(0, 12 * PAGE),
            st.integers(0, 3 * PAGE),
        ),
        min_size=1,
        max_size=25,
    ),
    probes=st.lists(st.tuples(st.integers(0, 13 * PAGE), st.integers(0, 3 * PAGE)), max_size=8),
)
def test_the_c_reader_answers_as_the_python_reference(
    steps: list[tuple[str, int, int]], probes: list[tuple[int, int]]
) -> None:
    disk = SimulatedBlockDevice(16 * MIB)
    mkfs(disk)
    with mount(disk, cache_size="64K") as fs, fs.open("/f", "wb+", buffering=0) as f:
        model = bytearray()
        for i, (op, pos, n) in enumerate(steps):
            if op == "write":
                data = bytes([i % 251 + 1]) * n
                f.pwrite(data, pos)
                if pos > len(model):
                    model.extend(bytes(pos - len(model)))
                model[pos : pos + n] = data
            elif op == "truncate":
                f.truncate(pos)
                del model[pos:]
                model.extend(bytes(pos - len(model)))
            elif op == "punch" and n:
                f.fallocate(pos, n, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)
                end = min(pos + n, len(model))
                if pos < end:
                    model[pos:end] = bytes(end - pos)
            elif op == "read":  # the full path caches what it reads
                assert f.pread(n, pos) == model[pos : pos + n]
            ask(fs, f, bytes(model), pos, n)
        for pos, n in probes:
            ask(fs, f, bytes(model), pos, n)


def test_a_folio_in_flight_or_marked_is_a_miss_for_both(fs: FileSystem) -> None:
    with fs.open("/f", "wb+", buffering=0) as f:
        f.write(b"x" * 3 * PAGE)
        c, py = both(fs)
        assert c.pread(f.inode, 10, PAGE) == py.pread(f.inode, 10, PAGE) == b"x" * 10
        space = files_of(fs)._spaces[f.inode.ino].space
        folio = space.folios[1]
        folio.mark = True
        assert c.pread(f.inode, 10, PAGE) is None
        assert py.pread(f.inode, 10, PAGE) is None
        assert c.pread(f.inode, 10, 0) == b"x" * 10  # another page: a hit
        folio.mark = False
        folio.io = object()
        assert c.preadinto(f.inode, bytearray(10), PAGE) is None
        assert py.preadinto(f.inode, bytearray(10), PAGE) is None
        folio.io = None
        assert c.pread(f.inode, 2 * PAGE, 100) == b"x" * 2 * PAGE


def test_arguments_the_full_path_judges_are_misses(fs: FileSystem) -> None:
    with fs.open("/f", "wb+", buffering=0) as f:
        f.write(b"y" * PAGE)
        for reader in both(fs):
            assert reader.pread(f.inode, -1, 0) is None
            assert reader.pread(f.inode, 1, -1) is None
            assert reader.pread(f.inode, 1.0, 0) is None
            assert reader.pread(f.inode, True, 0) is None
            assert reader.pread(object(), 1, 0) is None
            assert reader.preadinto(f.inode, b"read-only", 0) is None
            assert reader.preadinto(f.inode, "not a buffer", 0) is None
            assert reader.pread(f.inode, 10, PAGE) == b""  # at the end of file
            assert reader.pread(f.inode, 10, 2 * PAGE) == b""  # past it
            assert reader.preadinto(f.inode, bytearray(4), 5 * PAGE) == 0
        with pytest.raises(ValueError, match="negative"):
            f.pread(-1, 0)  # the full path raises


class Spy:
    """A reader that counts its answers (not None)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.answers = 0

    def pread(self, inode: object, n: object, pos: object) -> bytes | None:
        got = self.inner.pread(inode, n, pos)
        self.answers += got is not None
        return got  # type: ignore[no-any-return]

    def preadinto(self, inode: object, buffer: object, pos: object) -> int | None:
        got = self.inner.preadinto(inode, buffer, pos)
        self.answers += got is not None
        return got  # type: ignore[no-any-return]


def test_read_to_the_end_takes_the_lean_path_with_the_same_bytes(fs: FileSystem) -> None:
    data = bytes(range(256)) * 40  # 10,240 bytes: three pages, the last in part
    with fs.open("/f", "wb+", buffering=0) as f:
        f.write(data)
        f.seek(0)
        assert f.readall() == data  # cached by the write; the lean path
        spy = Spy(f._reader)
        f._reader = spy
        pool = pool_of(fs)
        misses = pool.stats.misses
        for pos in (0, 1, 4095, 4096, 10_000, 10_239, 10_240, 20_000):
            f.seek(pos)
            assert f.readall() == data[pos:], pos
            assert f.tell() == max(pos, len(data))
            f.seek(pos)
            assert f.read() == data[pos:]
            f.seek(pos)
            assert f.read(None) == data[pos:]
            f.seek(pos)
            assert f.read(5000) == data[pos : pos + 5000]
            assert f.tell() == pos + len(data[pos : pos + 5000])
            f.seek(pos)
            buf = bytearray(3000)
            assert f.readinto(buf) == len(data[pos : pos + 3000])
            assert buf[: len(data[pos : pos + 3000])] == data[pos : pos + 3000]
        assert spy.answers == 8 * 5, "a read at the position took the full path"
        assert pool.stats.misses == misses
        # after a truncate: the stamp differs, the full path empties the space, then lean
        f.truncate(5000)
        answers = spy.answers
        f.seek(0)
        assert f.readall() == data[:5000]
        f.seek(4000)
        assert f.readall() == data[4000:5000]
        f.seek(6000)
        assert f.readall() == b""
        assert f.read(10) == b""
        assert spy.answers == answers + 3  # the first read after the truncate went full
        f.truncate(8192)  # grown: zeros past 5000
        f.seek(0)
        assert f.readall() == data[:5000] + bytes(3192)
        f.seek(0)
        assert f.readall() == data[:5000] + bytes(3192)


def test_read_of_a_file_open_for_reading_only_is_lean(fs: FileSystem) -> None:
    with fs.open("/f", "wb", buffering=0) as w:
        w.write(b"z" * 5 * PAGE)
    with fs.open("/f", "rb", buffering=0) as f:
        assert f.read() == b"z" * 5 * PAGE  # a miss, read and cached
        spy = Spy(f._reader)
        f._reader = spy
        f.seek(0)
        assert f.read() == b"z" * 5 * PAGE
        assert f.pread(3, 5 * PAGE - 1) == b"z"
        assert spy.answers == 2
    with fs.open("/f", "rb") as g:  # buffered (io.BufferedReader): the same bytes
        assert g.read() == b"z" * 5 * PAGE
