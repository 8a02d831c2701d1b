"""One file's extent map against a bytearray model (Hypothesis state machine).

Writes (journaled, into holes, into preallocated extents, copy-on-write over
256 KiB), punch-hole, zero-range, preallocation and truncate, on block
boundaries or not, drive a file's map across the inline/B+tree boundary in
both directions (issue 8: a sixth extent made by a split raised ValueError).
After every step the file reads as the model; at the end fsck is clean and a
remount reads the same bytes.
"""

from __future__ import annotations

import gc

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

import daxfs
from daxfs.fs.data import FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE
from daxfs.fs.fsck import fsck
from daxfs.testing import SimulatedPmem

BLOCK = 4096
SPAN = 96 * BLOCK  # offsets stay below this: a few dozen extents at most
PUNCH = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE

# offsets on block boundaries, near them, or anywhere
offsets = st.one_of(
    st.integers(0, SPAN // BLOCK).map(lambda b: b * BLOCK),
    st.integers(0, SPAN // BLOCK).flatmap(lambda b: st.integers(b * BLOCK - 3, b * BLOCK + 3)),
    st.integers(0, SPAN),
).map(lambda o: max(0, o))
lengths = st.one_of(
    st.integers(1, 3).map(lambda b: b * BLOCK), st.integers(1, 3 * BLOCK), st.just(BLOCK)
)


class ExtentMap(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dev = SimulatedPmem(16 << 20)
        daxfs.mkfs(self.dev)
        self.fs = daxfs.mount(self.dev)
        self.f = self.fs.open("/f", "wb+", buffering=0)
        self.model = bytearray()
        self.fill = 0

    def _pattern(self, n: int) -> bytes:
        self.fill = self.fill % 250 + 1
        return bytes([self.fill]) * n

    def _resize(self, size: int) -> None:
        if size > len(self.model):
            self.model += bytes(size - len(self.model))
        else:
            del self.model[size:]

    @rule(offset=offsets, length=lengths)
    def pwrite(self, offset: int, length: int) -> None:
        data = self._pattern(length)
        assert self.f.pwrite(data, offset) == length
        self._resize(max(len(self.model), offset + length))
        self.model[offset : offset + length] = data

    @rule(block=st.integers(0, 20))
    def copy_on_write(self, block: int) -> None:
        """An overwrite of more than 256 KiB of the file (copy-on-write where written)."""
        offset, length = block * BLOCK + 5, 65 * BLOCK
        self.pwrite(offset, length)

    @rule(offset=offsets, length=lengths)
    def punch(self, offset: int, length: int) -> None:
        self.f.fallocate(offset, length, PUNCH)
        end = min(offset + length, len(self.model))
        if offset < end:
            self.model[offset:end] = bytes(end - offset)

    @rule(offset=offsets, length=lengths, keep=st.booleans())
    def zero_range(self, offset: int, length: int, keep: bool) -> None:
        mode = FALLOC_FL_ZERO_RANGE | (FALLOC_FL_KEEP_SIZE if keep else 0)
        self.f.fallocate(offset, length, mode)
        if not keep:
            self._resize(max(len(self.model), offset + length))
        end = min(offset + length, len(self.model))
        if offset < end:
            self.model[offset:end] = bytes(end - offset)

    @rule(offset=offsets, length=lengths, keep=st.booleans())
    def preallocate(self, offset: int, length: int, keep: bool) -> None:
        self.f.fallocate(offset, length, FALLOC_FL_KEEP_SIZE if keep else 0)
        if not keep:
            self._resize(max(len(self.model), offset + length))

    @rule(size=offsets)
    def truncate(self, size: int) -> None:
        self.f.truncate(size)
        self._resize(size)

    @invariant()
    def reads_as_the_model(self) -> None:
        assert self.f.pread(len(self.model) + 10, 0) == self.model

    def teardown(self) -> None:
        self.f.close()
        self.fs.unmount()
        report = fsck(self.dev)
        assert report.clean, str(report)
        with daxfs.mount(self.dev) as fs, fs.open("/f", "rb") as f:
            assert f.read() == self.model
        self.dev.close()
        gc.collect()


TestExtentMap = ExtentMap.TestCase
TestExtentMap.settings = settings(
    max_examples=25,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
