"""A Hypothesis state machine: a block device mounted with a small ``cache_size``, and on
each of two files a buffered File and a ``direct=True`` File open at once, against a
bytes model.

Rules: pwrite, pread and preadinto through either handle (direct ones aligned to the
logical block), submit_write then submit_read on the direct handle, truncate and
fallocate (every mode) through either, a DAX mapping through either (stores, msync,
reads through every handle, close), close and reopen a handle, remount (unmount, fsck
clean, mount).  Every read is compared with the model; at the end fsck must be clean.
The 64 KiB pool of files' pages (16 pages) is smaller than the files, so eviction,
misses, hits and the out-of-place write-back all happen inside the steps
(``daxfs.testing.reach`` counts them: tests below assert that they did).

Buffered reads while a mapping made through the direct handle is still open were left
out while R1 (tests/review/test_filecache_coherence.py) was open: with them, this
machine found R1 (fixed by d76185c, Inode.data_changed).
"""

from __future__ import annotations

from typing import Any

import hypothesis.strategies as stx
import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import RuleBasedStateMachine, rule

from daxfs.fs.direct import aligned_buffer
from daxfs.fs.fsck import fsck
from daxfs.fs.mount import mkfs, mount
from daxfs.testing.fsx import FALLOC_MODES, _fallocated, _resized, _written
from daxfs.testing.reach import reaching
from daxfs.testing.simblock import SimulatedBlockDevice

SIZE = 16 << 20
PAGE = 4096
ALIGN = 512  # the simulated disk's logical block
TOP = 40 << 10  # no offset or size past this: two files of up to 10 pages, a pool of 16
PATHS = ("/a", "/b")

paths = stx.sampled_from(PATHS)
kinds = stx.sampled_from(("buffered", "direct"))
offsets = stx.one_of(stx.integers(0, TOP), stx.integers(0, TOP // PAGE).map(lambda i: i * PAGE))
lengths = stx.one_of(stx.integers(1, 2 * PAGE), stx.integers(1, 4).map(lambda i: i * PAGE))


def aligned_copy(data: bytes) -> memoryview:
    buf = aligned_buffer(max(len(data), 1))
    view = memoryview(buf)[: len(data)]
    view[:] = data
    return view


def down(n: int) -> int:
    return n // ALIGN * ALIGN


def up(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


class BoundedMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dev = SimulatedBlockDevice(SIZE)
        mkfs(self.dev)
        self.fs: Any = mount(self.dev, cache_size="64K")
        self.model: dict[str, bytearray] = {p: bytearray() for p in PATHS}
        self.handles: dict[tuple[str, str], Any] = {}
        for path in PATHS:
            self.fs.open(path, "wb", buffering=0).close()
            for kind in ("buffered", "direct"):
                self._open(path, kind)

    def _open(self, path: str, kind: str) -> None:
        self.handles[path, kind] = self.fs.open(path, "rb+", buffering=0, direct=kind == "direct")

    def _check(self, got: bytes, path: str, offset: int, length: int, what: str) -> None:
        want = bytes(self.model[path][offset : offset + length])
        assert got == want, f"{what} of {path} [{offset}, +{length}): {len(got)} bytes differ"

    def _read_all_ways(self, path: str, offset: int, length: int) -> None:
        # the hit paths first (a full-path read may empty the space)
        f = self.handles[path, "buffered"]
        into = bytearray(length)
        n = f.preadinto(into, offset)
        self._check(bytes(into[:n]), path, offset, length, "preadinto")
        head = min(length, PAGE - offset % PAGE)
        self._check(f.pread(head, offset), path, offset, head, "pread of a page")
        self._check(f.pread(length, offset), path, offset, length, "pread")
        d = self.handles[path, "direct"]
        lo, hi = down(offset), up(offset + length)
        buf = memoryview(aligned_buffer(max(hi - lo, ALIGN)))[: hi - lo]
        n = d.preadinto(buf, lo)
        self._check(bytes(buf[:n]), path, lo, hi - lo, "direct preadinto")

    # -- data ---------------------------------------------------------------------------

    @rule(path=paths, kind=kinds, offset=offsets, length=lengths, seed=stx.integers(0, 255))
    def pwrite(self, path: str, kind: str, offset: int, length: int, seed: int) -> None:
        if kind == "direct":
            offset, length = down(offset), up(length)
        data = bytes((seed + i * 7) & 0xFF for i in range(length))
        f = self.handles[path, kind]
        n = f.pwrite(aligned_copy(data) if kind == "direct" else data, offset)
        assert n == length
        self.model[path] = _written(self.model[path], offset, data)

    @rule(path=paths, offset=offsets, length=lengths)
    def pread(self, path: str, offset: int, length: int) -> None:
        self._read_all_ways(path, offset, length)

    @rule(path=paths, offset=offsets, length=lengths)
    def reread_cached(self, path: str, offset: int, length: int) -> None:
        """A range read twice through the buffered handle: the second read hits."""
        f = self.handles[path, "buffered"]
        for what in ("pread", "pread again"):
            self._check(f.pread(length, offset), path, offset, length, what)

    @rule(path=paths, offset=offsets, length=lengths, seed=stx.integers(0, 255))
    def submit(self, path: str, offset: int, length: int, seed: int) -> None:
        offset, length = down(offset), up(length)
        data = bytes((seed * 3 + i) & 0xFF for i in range(length))
        d = self.handles[path, "direct"]
        assert d.submit_write(offset, aligned_copy(data)).result(10) == length
        self.model[path] = _written(self.model[path], offset, data)
        buf = memoryview(aligned_buffer(length))
        n = d.submit_read(offset, buf).result(10)
        self._check(bytes(buf[:n]), path, offset, length, "submit_read")

    @rule(path=paths, kind=kinds, size=offsets)
    def truncate(self, path: str, kind: str, size: int) -> None:
        self.handles[path, kind].truncate(size)
        self.model[path] = _resized(self.model[path], size)

    @rule(
        path=paths,
        kind=kinds,
        mode=stx.sampled_from(sorted(FALLOC_MODES)),
        offset=offsets,
        length=lengths,
    )
    def fallocate(self, path: str, kind: str, mode: str, offset: int, length: int) -> None:
        flags = FALLOC_MODES[mode]
        self.handles[path, kind].fallocate(offset, length, flags)
        self.model[path] = _fallocated(self.model[path], offset, length, flags)

    @rule(path=paths, kind=kinds, page=stx.integers(0, 8), seed=stx.integers(0, 255))
    def mmap_store(self, path: str, kind: str, page: int, seed: int) -> None:
        size = len(self.model[path])
        if not size:
            return
        offset = min(page, (size - 1) // PAGE) * PAGE
        length = min(size - offset, 2 * PAGE)
        self._read_all_ways(path, offset, length)  # its pages cached before it is mapped
        m = self.handles[path, kind].mmap(offset, length)
        try:
            data = bytes((seed + 5 * i) & 0xFF for i in range(length))
            m[0:length] = data
            m.msync(0, length)
            self.model[path] = _written(self.model[path], offset, data)
            self._read_all_ways(path, offset, length)
        finally:
            m.close()
        self._read_all_ways(path, offset, length)

    # -- handles, mounts -------------------------------------------------------------------

    @rule(path=paths, kind=kinds)
    def reopen(self, path: str, kind: str) -> None:
        self.handles[path, kind].close()
        self._open(path, kind)

    @rule()
    def remount(self) -> None:
        for f in self.handles.values():
            f.close()
        self.fs.unmount()
        report = fsck(self.dev)
        assert report.clean, str(report)
        self.fs = mount(self.dev, cache_size="64K")
        for path, kind in list(self.handles):
            self._open(path, kind)
        for path in PATHS:
            self._read_all_ways(path, 0, len(self.model[path]) + 1)

    def teardown(self) -> None:
        for path in PATHS:
            assert self.fs.stat(path).st_size == len(self.model[path])
            self._read_all_ways(path, 0, len(self.model[path]))
        for f in self.handles.values():
            f.close()
        self.fs.unmount()
        report = fsck(self.dev)
        assert report.clean, str(report)


BoundedMachine.TestCase.settings = settings(
    max_examples=25,
    stateful_step_count=30,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
TestBoundedModel = BoundedMachine.TestCase


def test_the_machine_reaches_the_page_cache_of_files() -> None:
    """The rules above take the paths they are meant to test (a run of 8 examples)."""
    from hypothesis.stateful import run_state_machine_as_test

    with reaching() as reached:
        run_state_machine_as_test(
            BoundedMachine,
            settings=settings(
                max_examples=8, stateful_step_count=30, deadline=None, derandomize=True
            ),
        )
    names = ("cache_hits", "cache_reads", "cache_misses", "cache_writes", "out_of_place")
    assert reached.missing(names) == [], reached.summary()


def _run(examples: int) -> None:
    from hypothesis.stateful import run_state_machine_as_test

    run_state_machine_as_test(
        BoundedMachine,
        settings=settings(
            max_examples=examples,
            stateful_step_count=30,
            deadline=None,
            derandomize=True,
            print_blob=False,
            database=None,
            phases=[Phase.explicit, Phase.generate],  # no shrinking: the failure is enough
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


def test_the_machine_catches_a_stamp_that_always_matches(monkeypatch: Any) -> None:
    """Planted: a space's stamp always matches (a direct write, or a truncate through the
    direct handle, never empties the buffered handle's cached pages)."""
    from daxfs.fs import filecache

    monkeypatch.setattr(filecache._Entry, "matches", lambda self: True)
    with pytest.raises(AssertionError, match="bytes differ"):
        _run(40)


@pytest.mark.slow
def test_the_machine_long() -> None:
    """Batches of 50 random examples (not derandomized) until DAXFS_SLOW_SECONDS pass."""
    import time

    from hypothesis.stateful import run_state_machine_as_test

    from tests.testing.known_bugs import SLOW_SECONDS

    deadline = time.monotonic() + SLOW_SECONDS
    batch = 0
    while time.monotonic() < deadline:
        run_state_machine_as_test(
            BoundedMachine,
            settings=settings(
                max_examples=50,
                stateful_step_count=40,
                deadline=None,
                database=None,
                suppress_health_check=[HealthCheck.too_slow],
            ),
        )
        batch += 1
    print(f"bounded model: {batch} batches of 50 examples")
