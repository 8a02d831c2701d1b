"""FaultyBlockDevice: a failed or short request reaches the bios' futures, nothing else."""

from __future__ import annotations

import errno
import functools
from collections.abc import Callable

import pytest

from daxfs.block import Bio, BioFlags, BioOp, BlockDevice, QueueLimits
from daxfs.errors import InvalidArgument, IOFailure
from daxfs.testing.blockfaults import FaultyBlockDevice
from daxfs.testing.simblock import SimulatedBlockDevice

BS = 512


def faulty(limits: QueueLimits | None = None) -> tuple[FaultyBlockDevice, SimulatedBlockDevice]:
    inner = SimulatedBlockDevice(128 * BS, limits=limits)
    return FaultyBlockDevice(inner), inner


def test_nth_write_fails_with_eio_and_changes_nothing() -> None:
    dev, inner = faulty()
    fault = dev.arm("write", 2)
    dev.write(0, b"a" * BS)
    bio = Bio(BioOp.WRITE, 1, [b"b" * BS])
    dev.submit_bio(bio)  # returns: the error goes to the future
    with pytest.raises(IOFailure, match=r"simulated .*write #2") as info:
        bio.wait()
    assert info.value.errno == errno.EIO
    assert fault.fired == 1
    assert inner.image()[BS : 2 * BS] == bytes(BS)  # the failed write stored nothing
    dev.write(2 * BS, b"c" * BS)  # transient: the next one works
    assert dev.read(0, 3 * BS) == b"a" * BS + bytes(BS) + b"c" * BS


def test_persistent_fault_with_another_errno() -> None:
    dev, _ = faulty()
    dev.arm("read", 1, persistent=True, error=errno.ENOSPC)
    for _ in range(3):
        with pytest.raises(OSError, match="simulated") as info:
            dev.read(0, BS)
        assert info.value.errno == errno.ENOSPC
    dev.disarm()
    assert dev.read(0, BS) == bytes(BS)


def test_short_read_fails_the_bios_not_wholly_done() -> None:
    dev, _ = faulty()
    dev.write(0, bytes(range(256)) * 16)
    dev.arm("read", 1, short=True)
    bufs = [bytearray(BS) for _ in range(4)]
    bios = [Bio(BioOp.READ, i, [bufs[i]]) for i in range(4)]
    with dev.plug():  # merged into one request of 4 blocks; half of it is done
        for bio in bios:
            dev.submit_bio(bio)
    assert dev.shorts == 1
    assert bios[0].wait() == BS
    assert bios[1].wait() == BS
    for bio in bios[2:]:
        with pytest.raises(IOFailure, match=r"short read: 1024 of 2048 bytes at sector 0"):
            bio.wait()
    assert bytes(bufs[1]) == (bytes(range(256)) * 16)[BS : 2 * BS]


def test_short_write_of_one_block_moves_nothing() -> None:
    dev, inner = faulty()
    dev.arm("write", 1, short=True)
    bio = Bio(BioOp.WRITE, 0, [b"x" * BS])
    dev.submit_bio(bio)
    with pytest.raises(IOFailure, match="short write: 0 of 512"):
        bio.wait()
    assert inner.image()[:BS] == bytes(BS)


def test_failed_preflush_writes_no_data() -> None:
    dev, inner = faulty()
    dev.arm("flush", 1)
    bio = Bio(BioOp.WRITE, 0, [b"y" * BS], flags=BioFlags.PREFLUSH | BioFlags.FUA)
    dev.submit_bio(bio)
    with pytest.raises(IOFailure, match="flush"):
        bio.wait()
    assert inner.image()[:BS] == bytes(BS)


def test_error_in_one_child_of_a_split_bio_fails_the_bio() -> None:
    dev, inner = faulty(QueueLimits(max_bytes=BS))
    dev.arm("write", 3)
    bio = Bio(BioOp.WRITE, 0, [b"z" * (4 * BS)])
    dev.submit_bio(bio)
    with pytest.raises(IOFailure, match="write #3"):
        bio.wait()
    image = inner.image()
    assert image[: 2 * BS] == b"z" * (2 * BS)
    assert image[2 * BS : 3 * BS] == bytes(BS)
    assert dev.statistics()["errors"] >= 1


def test_arm_checks_its_arguments() -> None:
    dev, _ = faulty()
    for call in (
        lambda: dev.arm("fsync", 1),
        lambda: dev.arm("write", 0),
        lambda: dev.arm("flush", 1, short=True),
    ):
        with pytest.raises(InvalidArgument):
            call()


def attempt(call: Callable[[], object]) -> int | None:
    """Run ``call``: None if it succeeded, the errno of its OSError if not (always EIO)."""
    try:
        call()
    except OSError as exc:
        failed: int | None = exc.errno
    else:
        failed = None
    assert failed in (None, errno.EIO)
    return failed


def fault_loop(make: Callable[[], tuple[FaultyBlockDevice, BlockDevice]], kind: str) -> int:
    """SQLite's loop: fail the n-th request for n = 1, 2, ... until none fires. Every
    operation either succeeds (its data then reads back) or fails with an OSError."""
    for n in range(1, 200):
        dev, _ = make()
        fault = dev.arm(kind, n, short=(n % 2 == 0 and kind in ("read", "write")))
        done: dict[int, bytes] = {}
        for i in range(6):
            data = bytes([i + 1]) * (2 * BS)
            write = functools.partial(dev.write, i * 4 * BS, data, fua=i % 3 == 0)
            if attempt(write) is None:
                done[i] = data
            assert attempt(dev.flush) in (None, errno.EIO)
        dev.disarm()
        for i, data in done.items():
            assert dev.read(i * 4 * BS, 2 * BS) == data
        dev.close()
        if not fault.fired:
            return n
    raise AssertionError("the fault loop did not end")


@pytest.mark.parametrize("kind", ["write", "flush", "any"])
def test_fault_loop_reaches_every_request(kind: str) -> None:
    n = fault_loop(faulty, kind)
    assert n == {"write": 7, "flush": 7, "any": 13}[kind]
