"""One owner for "this inode changed": ``Inode.data_changed`` and the page cache of files.

Every change of a file's data, size or block map, and every mapping or pin of it,
clears the stamp of the file's page-cache space (daxfs/fs/filecache.py, invariant 4),
whoever makes it and whatever the clock says.  Here, with a clock that repeats one
value (so the stamp's times cannot tell a change):

- pins through a ``direct=True`` File: buffered reads show what the pin shows;
- threads: a buffered reader checks every byte of every page it reads against the
  writes (direct, synchronous and Futures) and truncates (through a path) that had
  returned before its read began, and that had started before it ended;
- a direct write that fails half done: buffered reads show what the device holds;
- a planted bug: each call of ``data_changed`` removed in turn (the call skipped from
  that one function) is caught by a scenario that then reads stale bytes -- and
  reads the new ones with the call in place.
"""

from __future__ import annotations

import errno
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

import daxfs
from daxfs.fs import _commit
from daxfs.fs.data import FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE
from daxfs.fs.direct import aligned_buffer
from daxfs.fs.filesystem import FileSystem
from daxfs.fs.inode import Inode
from daxfs.fs.layout import InodeRecord
from daxfs.fs.mount import mkfs, mount
from daxfs.testing import SimulatedPmem
from daxfs.testing.blockfaults import FaultyBlockDevice
from daxfs.testing.simblock import SimulatedBlockDevice
from tests.review.test_filecache_coherence import aligned, reads

PAGE = 4096
SIZE = 16 << 20
#: what a clock that repeats itself returns (tests/helpers.CLOCK)
CLOCK = 1_700_000_000_123_456_789


@pytest.fixture
def repeating_clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """``time.time_ns`` and the C commit's clock return one value (tests/fs's ``frozen``)."""
    monkeypatch.setattr(time, "time_ns", lambda: CLOCK)
    _commit.freeze_clock(CLOCK)
    yield
    _commit.freeze_clock(0)


@pytest.fixture
def fs(repeating_clock: None) -> Iterator[FileSystem]:
    disk = SimulatedBlockDevice(SIZE)
    mkfs(disk)
    with mount(disk, cache_size="256K", layout_timeout=5.0) as mounted:
        yield mounted


def hits(fs: FileSystem) -> int:
    return fs.device.files.stats.hits  # type: ignore[attr-defined,no-any-return]


def cached_file(fs: FileSystem, data: bytes, path: str = "/f") -> daxfs.File:
    """A buffered File of ``data`` whose pages are cached (a re-read is a hit)."""
    f: daxfs.File = fs.open(path, "wb+", buffering=0)  # type: ignore[assignment]
    f.write(data)
    assert f.pread(len(data), 0) == data
    before = hits(fs)
    assert f.pread(4, 0) == data[:4]
    assert hits(fs) == before + 1, "not a hit: the test tests nothing"
    return f


# -- pins -------------------------------------------------------------------------------


def test_a_pin_through_a_direct_file_stops_the_hits(fs: FileSystem) -> None:
    """Pinned blocks are device memory: buffered reads show what the pin shows, stores
    through its views included, and are no hits of the pages cached before."""
    f = cached_file(fs, b"a" * 2 * PAGE)
    with fs.open("/f", "rb+", buffering=0, direct=True) as d:
        sg = d.pin(0, 2 * PAGE)
        try:
            view = next(iter(sg.views()))
            before = hits(fs)
            view[0:4] = b"PINS"
            assert reads(f, 4, 0) == (b"PINS", b"PINS")
            assert bytes(view[PAGE : PAGE + 4]) == b"aaaa"
            assert reads(f, 4, PAGE) == (b"aaaa", b"aaaa")
            assert hits(fs) == before, "a hit of a page cached before the pin"
            del view
        finally:
            sg.unpin()
    f.close()


def test_a_direct_write_waiting_for_a_pin_is_seen_after_it(fs: FileSystem) -> None:
    """A direct write over a pinned range waits for the unpin (layouts broken), then
    buffered reads of the pages cached before show its bytes."""
    f = cached_file(fs, b"a" * 2 * PAGE)
    d = fs.open("/f", "rb+", buffering=0, direct=True)
    sg = f.pin(0, 2 * PAGE)  # (through the buffered File this time)
    wrote = threading.Event()

    def write() -> None:
        d.pwrite(aligned(b"d" * PAGE), PAGE)
        wrote.set()

    writer = threading.Thread(target=write)
    writer.start()
    try:
        assert not wrote.wait(0.2), "the write did not wait for the pin"
        assert reads(f, 4, PAGE) == (b"aaaa", b"aaaa")
    finally:
        sg.unpin()
        writer.join()
    assert wrote.is_set()
    assert reads(f, 4, PAGE) == (b"dddd", b"dddd")
    assert reads(f, 4, 0) == (b"aaaa", b"aaaa")
    d.close()
    f.close()


# -- threads ----------------------------------------------------------------------------

PAGES = 6
ROUNDS = 12


def page_of(index: int, version: int) -> bytes:
    """Page ``index`` as version ``version`` (> 0) writes it: the version in its first
    4 bytes, then a pattern of both; version 0 is zeros (truncated)."""
    if version == 0:
        return bytes(PAGE)
    head = version.to_bytes(4, "little")
    body = bytes((version * 31 + index * 7 + i) & 0xFF for i in range(251))
    return (head + body * (PAGE // len(body) + 1))[:PAGE]


def version_of(index: int, page: bytes) -> int:
    """The version whose bytes ``page`` is, every byte checked (AssertionError if none)."""
    version = int.from_bytes(page[:4], "little")
    assert page == page_of(index, version), f"page {index}: torn or foreign bytes {page[:8]!r}"
    return version


@dataclass
class History:
    """Per page: the newest version whose change had returned (``done``) and had
    started (``begun``); a truncate to zero gives version 0 to every page, so a page's
    versions are the writes' and the truncates' in one sequence (``seq``)."""

    done: list[int]
    begun: list[int]
    #: the seqs of each version of each page, appended when its change begins: one for
    #: a write, one per truncate or punch for zeros (version 0)
    seq: dict[tuple[int, int], list[int]]
    #: the reader's full passes over the pages, and its end (set when it stops)
    passes: int = 0
    stopped: threading.Event = field(default_factory=threading.Event)

    @classmethod
    def new(cls) -> History:
        return cls([0] * PAGES, [0] * PAGES, {})

    def settle(self) -> None:
        """Wait until the reader has made a whole pass begun after this call (so it
        saw what is done now), or stopped: every state of the file is read."""
        until = self.passes + 2
        deadline = time.monotonic() + 10
        while self.passes < until and not self.stopped.is_set():
            assert time.monotonic() < deadline, "the reader made no pass in 10 s"
            time.sleep(0.0002)


def check_reader(f: daxfs.File, history: History, stop: threading.Event) -> int:
    """Read every page over and over (pread and preadinto alternately), each read's
    version no older than what had returned before it began, and no newer than what
    had begun before it ended.  Returns the reads checked."""
    checked = 0
    into = bytearray(PAGE)
    while not stop.is_set():
        for index in range(PAGES):
            floor = history.done[index]
            if checked % 2:
                got = f.preadinto(into, index * PAGE)
                page = bytes(into[:got])
            else:
                page = f.pread(PAGE, index * PAGE)
            ceiling = history.begun[index]
            if len(page) < PAGE:  # the size was cut: what it reads is zeros' version
                assert page == bytes(len(page)), f"page {index}: short read of data"
                version = 0
            else:
                version = version_of(index, page)
            seqs = list(history.seq.get((index, version), ()))
            assert seqs, f"page {index}: version {version} never written"
            assert any(floor <= seq <= ceiling for seq in seqs), (
                f"page {index}: read version {version} (seqs {seqs}) "
                f"outside [{floor}, {ceiling}]: a stale page"
            )
            checked += 1
        history.passes += 1
    return checked


def run_against_reader(fs: FileSystem, change: Callable[[History, daxfs.File], None]) -> int:
    """``change`` (given a ``direct=True`` File of it) on this thread while a buffered
    reader checks on another."""
    history = History.new()
    f = cached_file(fs, b"".join(page_of(i, 1) for i in range(PAGES)))
    d: daxfs.File = fs.open("/f", "rb+", buffering=0, direct=True)  # type: ignore[assignment]
    for i in range(PAGES):
        history.seq[i, 1] = [1]
        history.done[i] = history.begun[i] = 1
    stop = threading.Event()
    outcome: list[Any] = []

    def reader() -> None:
        try:
            outcome.append(check_reader(f, history, stop))
        except BaseException as exc:
            outcome.append(exc)
            stop.set()
        finally:
            history.stopped.set()

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        change(history, d)
    finally:
        stop.set()
        thread.join()
        d.close()
        f.close()
    (result,) = outcome
    if isinstance(result, BaseException):
        raise result
    assert result > 0, "the reader checked nothing"
    return int(result)


def test_a_buffered_reader_sees_every_direct_write(fs: FileSystem) -> None:
    """Direct overwrites, synchronous (the fast path) and Futures (the request path),
    one page at a time, while a buffered reader checks every byte."""

    def change(history: History, d: daxfs.File) -> None:
        seq = 1
        for version in range(2, ROUNDS + 2):
            for index in range(PAGES):
                seq += 1
                history.seq[index, version] = [seq]
                history.begun[index] = seq
                data = aligned(page_of(index, version))
                if (version + index) % 2:
                    assert d.pwrite(data, index * PAGE) == PAGE
                else:
                    assert d.submit_write(index * PAGE, data).result() == PAGE
                history.done[index] = seq
                history.settle()

    assert run_against_reader(fs, change) > 0


def test_a_buffered_reader_sees_every_truncate_and_punch(fs: FileSystem) -> None:
    """A path truncate to 0 and back to the same size, then the pages written again
    through a direct File, and holes punched through it: every change (size, map and
    data alike) seen by a buffered reader, every byte checked."""

    def change(history: History, d: daxfs.File) -> None:
        seq = 1
        for version in range(2, ROUNDS + 2):
            seq += 1
            for index in range(PAGES):  # zeros from now on may be this truncate's
                history.seq.setdefault((index, 0), []).append(seq)
                history.begun[index] = seq
            fs.truncate("/f", 0)
            fs.truncate("/f", PAGES * PAGE)
            for index in range(PAGES):
                history.done[index] = seq
            history.settle()
            for index in range(PAGES):
                seq += 1
                history.seq[index, version] = [seq]
                history.begun[index] = seq
                assert d.pwrite(aligned(page_of(index, version)), index * PAGE) == PAGE
                history.done[index] = seq
                history.settle()
            index = version % PAGES
            seq += 1
            history.seq[index, 0].append(seq)
            history.begun[index] = seq
            d.fallocate(index * PAGE, PAGE, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)
            history.done[index] = seq
            history.settle()

    assert run_against_reader(fs, change) > 0


# -- a planted bug: one call of data_changed removed ------------------------------------


def plant(monkeypatch: pytest.MonkeyPatch, site: str) -> None:
    """``Inode.data_changed`` does nothing when called from the function ``site``: the
    call removed from that one change point."""
    real = Inode.data_changed

    def planted(self: Inode) -> None:
        if sys._getframe(1).f_code.co_name != site:
            real(self)

    monkeypatch.setattr(Inode, "data_changed", planted)


def truncated_back(fs: FileSystem, path: str) -> tuple[bytes, bytes]:
    f = cached_file(fs, b"a" * 2 * PAGE, path)
    fs.truncate(path, 10)
    fs.truncate(path, 2 * PAGE)
    got = reads(f, 4, PAGE)
    f.close()
    return got


def overwritten_directly(fs: FileSystem, path: str) -> tuple[bytes, bytes]:
    f = cached_file(fs, b"a" * 2 * PAGE, path)
    with fs.open(path, "rb+", buffering=0, direct=True) as d:  # (its close commits times)
        d.pwrite(aligned(b"\0" * PAGE), PAGE)
        got = reads(f, 4, PAGE)
    f.close()
    return got


def submitted_directly(fs: FileSystem, path: str) -> tuple[bytes, bytes]:
    f = cached_file(fs, b"a" * 2 * PAGE, path)
    with fs.open(path, "rb+", buffering=0, direct=True) as d:
        assert d.submit_write(PAGE, aligned(b"\0" * PAGE)).result() == PAGE
        got = reads(f, 4, PAGE)
    f.close()
    return got


def mapped_directly(fs: FileSystem, path: str) -> tuple[bytes, bytes]:
    f = cached_file(fs, b"a" * 2 * PAGE, path)
    d = fs.open(path, "rb+", buffering=0, direct=True)
    m = d.mmap(0, 2 * PAGE)
    try:
        m[PAGE : PAGE + 4] = bytes(4)
        m.msync(PAGE, PAGE)
        return reads(f, 4, PAGE)
    finally:
        m.close()
        d.close()
        f.close()


def pinned_directly(fs: FileSystem, path: str) -> tuple[bytes, bytes]:
    f = cached_file(fs, b"a" * 2 * PAGE, path)
    d = fs.open(path, "rb+", buffering=0, direct=True)
    sg = d.pin(PAGE, PAGE)
    try:
        view = next(iter(sg.views()))
        view[0:4] = bytes(4)
        del view
        return reads(f, 4, PAGE)
    finally:
        sg.unpin()
        d.close()
        f.close()


SITES: dict[str, Callable[[FileSystem, str], tuple[bytes, bytes]]] = {
    "dirty": truncated_back,  # InodeTable.dirty: every transaction of the inode
    "_write_mapped": overwritten_directly,  # DirectIO's synchronous overwrite
    "_unlock": submitted_directly,  # the end of a direct write's request (Futures)
    "map_file": mapped_directly,  # daxfs.mm.mapping: a mapping registered
    "pin_file": pinned_directly,  # daxfs.mm.pin: a pin registered
}


@pytest.mark.parametrize("site", sorted(SITES))
def test_each_call_of_data_changed_is_needed(
    fs: FileSystem, monkeypatch: pytest.MonkeyPatch, site: str
) -> None:
    """With the call in place the buffered reads show the change (zeros over the
    a's); planted out of ``site`` alone, the same scenario reads the stale a's."""
    scenario = SITES[site]
    assert scenario(fs, "/f") == (bytes(4), bytes(4))
    plant(monkeypatch, site)
    assert scenario(fs, "/g") == (b"aaaa", b"aaaa"), f"the plant at {site} was not caught"


class _Stamp:
    """What Inode.data_changed clears (a space's stamp), standing alone."""

    def __init__(self, rec: InodeRecord) -> None:
        self.rec: InodeRecord | None = rec


@pytest.mark.parametrize("planted", [False, True])
def test_the_c_overwrite_commit_clears_the_stamp(
    fs: FileSystem, monkeypatch: pytest.MonkeyPatch, planted: bool
) -> None:
    """Journal.overwrite's C commit dirties no inode (no ``InodeTable.dirty``): its own
    call clears the stamp.  (On a bounded mount only Files without the page cache reach
    DataPath.write, and they have emptied or invalidated the space already; the call
    keeps the rule from resting on that.)"""
    if planted:
        plant(monkeypatch, "overwrite")
    journal = fs.data.journal
    if journal.committer is None:
        pytest.skip("no C commit (the extension is not built)")
    with fs.open("/f", "wb+", buffering=0) as f:
        f.write(b"a" * PAGE)
        inode = f.inode
        with inode.lock:
            stamp = _Stamp(inode.rec)
            was, inode.space_stamp = inode.space_stamp, weakref.ref(stamp)  # type: ignore[assignment]
            commits = journal.commits
            try:
                assert fs.data.write(inode, 0, b"bbbb") == 4
            finally:
                inode.space_stamp = was
            assert journal.commits == commits + 1
        assert stamp.rec is (inode.rec if planted else None)


# -- a failed direct write --------------------------------------------------------------


@pytest.mark.parametrize("how", ["pwrite", "submit_write"])
def test_a_short_direct_write_leaves_buffered_reads_as_the_device(
    repeating_clock: None, how: str
) -> None:
    """A direct overwrite of two pages that completes short (the first page moved, the
    second not) raises and commits nothing, touches no time -- and the pages cached
    before still go: buffered reads show what the device holds, as direct reads do."""
    base = SimulatedBlockDevice(SIZE)
    mkfs(base)
    disk = FaultyBlockDevice(base)
    with mount(disk, cache_size="256K") as fs:
        f = cached_file(fs, b"a" * 2 * PAGE)
        d = fs.open("/f", "rb+", buffering=0, direct=True)
        disk.arm("write", 1, short=True)
        with pytest.raises(OSError, match="sector") as info:
            if how == "pwrite":
                d.pwrite(aligned(b"d" * 2 * PAGE), 0)
            else:
                d.submit_write(0, aligned(b"d" * 2 * PAGE)).result()
        disk.disarm()
        assert info.value.errno == errno.EIO
        device = aligned_buffer(2 * PAGE)
        assert d.preadinto(device, 0) == 2 * PAGE
        assert bytes(device) == b"d" * PAGE + b"a" * PAGE, "not the short write planned"
        assert reads(f, 2 * PAGE, 0) == (bytes(device), bytes(device))
        d.close()
        f.close()


def test_no_file_of_a_mount_with_spaces_has_the_c_pwrite(fs: FileSystem) -> None:
    """``Committer.pwrite`` (File.pwrite's C fast path) calls no ``data_changed``: it
    must never run where spaces exist.  Every File of a bounded mount -- buffered in
    each writable mode, or direct -- has no writer, so File.pwrite takes its Python
    path (the space's write, or DataPath.write, whose commit clears the stamp)."""
    assert fs.data.journal.committer is not None, "no C commit: the test tests nothing"
    fs.open("/f", "wb", buffering=0).close()
    for mode, direct in [("rb+", False), ("wb", False), ("r+b", True), ("wb+", True)]:
        with fs.open("/f", mode, buffering=0, direct=direct) as f:
            assert f._writer is None, (mode, direct)  # type: ignore[attr-defined]
    pmem = SimulatedPmem(SIZE)  # the check can fail: a DAX mount's File has the writer
    mkfs(pmem)
    with mount(pmem) as dax, dax.open("/f", "wb", buffering=0) as f:
        assert f._writer is not None  # type: ignore[attr-defined]
