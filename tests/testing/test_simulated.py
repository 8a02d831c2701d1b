"""SimulatedPmem: the crash model (ADR, 8-byte atomicity, reproducibility)."""

from __future__ import annotations

import pytest

from daxfs.errors import InvalidArgument
from daxfs.testing import PowerFailure, SimulatedPmem


def test_persisted_data_is_in_every_crash_state() -> None:
    dev = SimulatedPmem(4096)
    dev.write(0, b"A" * 64)  # copy + flush + drain
    dev.direct_access(128, 8)[:] = b"pending!"  # never flushed
    states = list(dev.crash_states())
    assert len(states) == 2
    for state in states:
        assert state.read(0, 64) == b"A" * 64


def test_unpersisted_data_is_missing_from_at_least_one_state() -> None:
    dev = SimulatedPmem(4096)
    view = dev.direct_access(0, 4096)
    view[200:216] = b"0123456789abcdef"
    values = {s.read(200, 16) for s in dev.crash_states()}
    assert bytes(16) in values
    assert b"0123456789abcdef" in values
    # two 8-byte pieces: all four combinations, and nothing else
    assert values == {
        bytes(16),
        b"01234567" + bytes(8),
        bytes(8) + b"89abcdef",
        b"0123456789abcdef",
    }
    view.release()


def test_flush_without_drain_is_not_yet_persistent() -> None:
    dev = SimulatedPmem(4096)
    dev.write(64, b"B" * 8, drain=False)
    assert dev.pending() == [(64, 8)]
    assert {s.read(64, 8) for s in dev.crash_states()} == {bytes(8), b"B" * 8}
    dev.drain()
    assert dev.pending() == []
    assert {s.read(64, 8) for s in dev.crash_states()} == {b"B" * 8}


def test_store_after_flush_before_drain_keeps_flushed_value() -> None:
    dev = SimulatedPmem(4096)
    view = dev.direct_access(0, 8)
    view[:] = b"first..."
    dev.flush(0, 8)
    view[:] = b"second.."
    # before the drain: old, flushed or newest value may survive
    assert {s.read(0, 8) for s in dev.crash_states()} == {bytes(8), b"first...", b"second.."}
    dev.drain()
    # the drain makes the flushed value certain; the newer store is pending again
    assert {s.read(0, 8) for s in dev.crash_states()} == {b"first...", b"second.."}
    view.release()


def test_large_unaligned_store_tears_at_8_byte_boundaries() -> None:
    dev = SimulatedPmem(4096)
    payload = bytes(range(1, 101))
    with dev.direct_access(3, 100) as view:
        view[:] = payload
    states = [s.read(3, 100) for s in dev.crash_states(limit=200, seed=7)]
    torn = [s for s in states if s not in (payload, bytes(100))]
    assert torn, "some state must hold part of the store"
    for state in torn:
        # every aligned 8-byte word (device offsets 0, 8, ...) is all-old or all-new
        image = bytes(3) + state + bytes(1)
        new = bytes(3) + payload + bytes(1)
        for w in range(0, len(image), 8):
            assert image[w : w + 8] in (bytes(8)[: len(image[w : w + 8])], new[w : w + 8])


def test_same_seed_same_states() -> None:
    def states(seed: int) -> list[bytes]:
        dev = SimulatedPmem(8192)
        with dev.direct_access(0, 8192) as view:
            view[:] = bytes(range(256)) * 32
        return [s.read(0, 8192) for s in dev.crash_states(limit=10, seed=seed)]

    assert states(1) == states(1)
    assert states(1) != states(2)
    dev = SimulatedPmem(8192)
    with dev.direct_access(0, 4096) as view:
        view[:] = b"x" * 4096
    assert dev.crash(seed=5).read(0, 4096) == dev.crash(seed=5).read(0, 4096)


def test_crash_states_are_distinct_and_bounded() -> None:
    dev = SimulatedPmem(4096)
    with dev.direct_access(0, 4096) as view:
        view[:] = b"y" * 4096
    states = [s.read(0, 4096) for s in dev.crash_states(limit=16)]
    assert len(states) == 16
    assert len(set(states)) == 16
    assert states[0] == bytes(4096)  # nothing survived
    assert states[1] == b"y" * 4096  # everything survived


def test_crash_result_has_nothing_pending() -> None:
    dev = SimulatedPmem(4096)
    with dev.direct_access(0, 64) as view:
        view[:] = b"z" * 64
    after = dev.crash(seed=3)
    assert after.pending() == []
    assert after.persisted_image() == after.read(0, 4096)


def test_scheduled_power_failure_at_nth_fence() -> None:
    dev = SimulatedPmem(4096)
    dev.schedule_power_failure(fence=2)
    dev.write(0, b"one.....")  # fence 1: completes
    with pytest.raises(PowerFailure):
        dev.write(8, b"two.....")  # fence 2: fails before taking effect
    assert dev.power_failed
    with pytest.raises(PowerFailure):
        dev.read(0, 8)
    outcomes = {s.read(0, 16) for s in dev.crash_states()}
    assert outcomes == {b"one....." + bytes(8), b"one.....two....."}


def test_counters() -> None:
    dev = SimulatedPmem(4096)
    dev.write(0, bytes(130))  # lines 0..2
    dev.persist(1000, 1)
    assert dev.flush_count == 4
    assert dev.fence_count == 2


def test_power_failure_is_not_an_exception() -> None:
    dev = SimulatedPmem(64)
    dev.schedule_power_failure(fence=1)
    with pytest.raises(PowerFailure):
        try:
            dev.drain()
        except Exception:  # pragma: no cover - must not happen
            pytest.fail("PowerFailure was caught as an Exception")


@pytest.mark.parametrize("size", [0, -8, 12, 1.5])
def test_bad_size(size: object) -> None:
    with pytest.raises(InvalidArgument):
        SimulatedPmem(size)  # type: ignore[arg-type]


def test_bad_schedule() -> None:
    dev = SimulatedPmem(64)
    with pytest.raises(InvalidArgument):
        dev.schedule_power_failure(0)
    with pytest.raises(InvalidArgument):
        dev.schedule_power_failure(-1)


def test_image_roundtrip() -> None:
    dev = SimulatedPmem(64, image=b"q" * 64)
    assert dev.read(0, 64) == b"q" * 64
    assert dev.pending() == []
    with pytest.raises(InvalidArgument):
        SimulatedPmem(64, image=b"short")
