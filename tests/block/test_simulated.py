"""SimulatedBlockDevice: the crash model of a volatile write cache (FLUSH, FUA, tearing)."""

from __future__ import annotations

import errno

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daxfs.block import Bio, BioFlags, BioOp, QueueLimits
from daxfs.errors import InvalidArgument
from daxfs.testing import PowerFailure
from daxfs.testing.simblock import SimulatedBlockDevice

BS = 512
A, B, C = b"A" * BS, b"B" * BS, b"C" * BS
Z = bytes(BS)


def blocks_of(dev: SimulatedBlockDevice, first: int, count: int) -> bytes:
    return dev.read(first * BS, count * BS)


def states(dev: SimulatedBlockDevice, first: int, count: int, limit: int = 64) -> set[bytes]:
    return {blocks_of(s, first, count) for s in dev.crash_states(limit)}


def test_unflushed_write_may_or_may_not_survive() -> None:
    dev = SimulatedBlockDevice(64 * BS)
    dev.write(0, A)
    assert dev.read(0, BS) == A  # reads see the cache
    assert dev.pending() == [(0, BS)]
    assert states(dev, 0, 1) == {Z, A}
    dev.flush()
    assert dev.pending() == []
    assert states(dev, 0, 1) == {A}
    assert dev.durable_image()[:BS] == A


def test_fua_write_is_durable_without_a_flush_but_not_earlier_writes() -> None:
    dev = SimulatedBlockDevice(64 * BS)
    dev.write(0, A)  # no FUA
    dev.write(BS, B, fua=True)
    assert states(dev, 0, 2) == {Z + B, A + B}
    assert dev.flush_count == 1


def test_fua_replaces_older_cached_values_of_its_block() -> None:
    dev = SimulatedBlockDevice(64 * BS)
    dev.write(0, A)
    dev.write(0, B, fua=True)
    assert states(dev, 0, 1) == {B}  # A can never be written back over B
    dev.write(0, C)
    assert states(dev, 0, 1) == {B, C}


def test_any_subset_of_writes_and_any_of_a_blocks_values() -> None:
    dev = SimulatedBlockDevice(64 * BS)
    dev.write(0, A)
    dev.write(0, B)
    dev.write(BS, C)
    assert states(dev, 0, 2) == {x + y for x in (Z, A, B) for y in (Z, C)}


def test_multi_block_write_tears_at_block_boundaries() -> None:
    dev = SimulatedBlockDevice(64 * BS)
    dev.write(0, A + B + C)
    seen = states(dev, 0, 3)
    assert len(seen) == 8  # every block old or new, independently
    assert Z + B + Z in seen  # a torn write
    for state in seen:
        for k, new in enumerate((A, B, C)):
            assert state[k * BS : (k + 1) * BS] in (Z, new)


def test_preflush_orders_the_commit_after_the_log() -> None:
    """The journal pattern: log, then a commit block with PREFLUSH|FUA."""
    for fail_at in (1, 2, None):
        dev = SimulatedBlockDevice(64 * BS)
        dev.write(0, A + A)  # the log, two blocks
        if fail_at is not None:
            dev.schedule_power_failure(flush=fail_at)
        commit = Bio(BioOp.WRITE, 8, [C], flags=BioFlags.PREFLUSH | BioFlags.FUA)
        try:
            dev.submit_bio(commit)
        except PowerFailure:
            assert fail_at is not None
            assert dev.power_failed
            with pytest.raises(PowerFailure):
                commit.wait()
        else:
            assert fail_at is None
            assert commit.wait() == BS
        outcomes = {(blocks_of(s, 0, 2), blocks_of(s, 8, 1)) for s in dev.crash_states(256)}
        for log, head in outcomes:
            assert head in (Z, C)
            if head == C:
                assert log == A + A, "a durable commit with its log missing"
        if fail_at == 1:  # the flush never happened: nothing of the commit was written
            assert {head for _, head in outcomes} == {Z}
        if fail_at == 2:  # the FUA write was in flight: it may have landed, or not
            assert {head for _, head in outcomes} == {Z, C}
        if fail_at is None:
            assert outcomes == {(A + A, C)}


def test_without_the_flush_the_commit_can_land_before_its_log() -> None:
    """The negative control: the simulator does show reordering."""
    dev = SimulatedBlockDevice(64 * BS)
    dev.write(0, A + A)
    dev.write(8 * BS, C, fua=True)  # FUA only: no PREFLUSH
    outcomes = {(blocks_of(s, 0, 2), blocks_of(s, 8, 1)) for s in dev.crash_states()}
    assert (Z + Z, C) in outcomes
    assert (A + Z, C) in outcomes


def test_power_failure_stops_the_world() -> None:
    dev = SimulatedBlockDevice(64 * BS)
    dev.schedule_power_failure(flush=2)
    dev.flush()
    dev.write(0, A)
    bio = Bio(BioOp.FLUSH)
    with pytest.raises(PowerFailure):
        dev.submit_bio(bio)
    assert isinstance(bio.status, PowerFailure)
    later = Bio(BioOp.READ, 0, [bytearray(BS)])
    with pytest.raises(PowerFailure):
        dev.submit_bio(later)
    with pytest.raises(PowerFailure):
        later.wait()
    assert states(dev, 0, 1) == {Z, A}  # the failed flush made nothing durable


def test_power_failure_inside_a_split_bio_fails_every_child() -> None:
    dev = SimulatedBlockDevice(64 * BS, limits=QueueLimits(max_bytes=BS))
    dev.schedule_power_failure(flush=2)
    bio = Bio(BioOp.WRITE, 0, [A + B + C], flags=BioFlags.FUA)
    with pytest.raises(PowerFailure):
        dev.submit_bio(bio)
    assert isinstance(bio.status, PowerFailure)
    # the first child was durable, the second in flight, the third never started
    assert states(dev, 0, 3) == {A + Z + Z, A + B + Z}


def test_crash_is_reproducible_and_settled() -> None:
    dev = SimulatedBlockDevice(256 * BS)
    for i in range(32):
        dev.write(i * BS, bytes([i + 1]) * BS)
    assert dev.crash(seed=5).image() == dev.crash(seed=5).image()
    assert {dev.crash(seed=s).image() for s in range(8)} != {dev.crash(seed=0).image()}
    after = dev.crash(seed=3)
    assert after.pending() == []
    assert after.durable_image() == after.image()
    sample = [s.image() for s in dev.crash_states(limit=10, seed=1)]
    assert sample == [s.image() for s in dev.crash_states(limit=10, seed=1)]
    assert len(set(sample)) == 10
    assert sample[0] == bytes(256 * BS)  # nothing survived
    assert sample[1] == dev.image()  # everything survived


def test_limits_and_bad_arguments() -> None:
    dev = SimulatedBlockDevice(64 * 4096, logical_block_size=4096)
    bio = Bio(BioOp.WRITE, 1, [bytes(4096)])
    dev.submit_bio(bio)
    with pytest.raises(OSError, match=r"sector 1: not aligned .*\(4096 bytes\)") as info:
        bio.wait()
    assert info.value.errno == errno.EINVAL
    for size in (0, 1000, -512):
        with pytest.raises(InvalidArgument):
            SimulatedBlockDevice(size)
    with pytest.raises(InvalidArgument):
        SimulatedBlockDevice(1024, image=b"short")
    with pytest.raises(InvalidArgument):
        dev.schedule_power_failure(0)


@settings(max_examples=60, deadline=None)
@given(
    ops=st.lists(
        st.tuples(
            st.sampled_from(["write", "fua", "flush", "zeroes"]),
            st.integers(0, 7),  # first block
            st.integers(1, 3),  # blocks
        ),
        max_size=12,
    ),
    fail_at=st.one_of(st.none(), st.integers(1, 6)),
)
def test_every_crash_state_is_allowed(ops: list[tuple[str, int, int]], fail_at: int | None) -> None:
    """Against a model: per block, the durable value or a value written to it since;
    and every such combination of two blocks shows up when states are few."""
    dev = SimulatedBlockDevice(16 * BS)
    durable = [Z] * 16
    since: list[list[bytes]] = [[] for _ in range(16)]
    if fail_at is not None:
        dev.schedule_power_failure(flush=fail_at)
    points = 0
    for n, (kind, first, count) in enumerate(ops):
        count = min(count, 16 - first)
        values = [bytes([n * 3 + k + 1]) * BS for k in range(count)]
        persist_point = kind in ("fua", "flush")
        failing = persist_point and fail_at is not None and points + 1 == fail_at
        try:
            if kind == "flush":
                dev.flush()
            elif kind == "zeroes":
                dev.write_zeroes(first * BS, count * BS)
            else:
                dev.write(first * BS, b"".join(values), fua=kind == "fua")
        except PowerFailure:
            assert failing
            if kind == "fua":  # in flight: may have landed
                for k in range(count):
                    since[first + k].append(values[k])
            break
        assert not failing
        points += persist_point
        if kind == "flush":
            for b in range(16):
                if since[b]:
                    durable[b] = since[b][-1]
                since[b] = []
        elif kind == "zeroes":
            for k in range(count):
                since[first + k].append(Z)
        elif kind == "fua":
            for k in range(count):
                durable[first + k] = values[k]
                since[first + k] = []
        else:
            for k in range(count):
                since[first + k].append(values[k])
    allowed = [{durable[b], *since[b]} for b in range(16)]
    seen = list(dev.crash_states(limit=64, seed=len(ops)))
    assert seen
    for state in seen:
        for b in range(16):
            assert blocks_of(state, b, 1) in allowed[b]
    total = 1
    for choices in allowed:
        total *= len(choices)
    if total <= 64:
        assert len(seen) == total


def test_fua_emulated_by_a_flush_on_a_device_without_it() -> None:
    dev = SimulatedBlockDevice(64 * BS)
    dev.fua = False  # a disk (or NBD server) that has no FUA
    dev.write(2 * BS, B)  # unflushed: the emulated FUA's flush makes it durable too
    dev.write(0, A + A, fua=True)
    assert dev.flush_count == 1
    assert dev.statistics()["flushes"] == 1
    assert states(dev, 0, 2) == {A + A}
    assert states(dev, 2, 1) == {B}
    # a power failure at that flush: the data was written, not yet durable
    dev = SimulatedBlockDevice(64 * BS)
    dev.fua = False
    dev.schedule_power_failure(flush=1)
    bio = Bio(BioOp.WRITE, 0, [C], flags=BioFlags.FUA)
    with pytest.raises(PowerFailure):
        dev.submit_bio(bio)
    assert isinstance(bio.status, PowerFailure)
    assert states(dev, 0, 1) == {Z, C}
