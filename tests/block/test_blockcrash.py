"""check_block_operation: a redo journal on the simulated disk passes at every persist point,
and the harness catches the same journal with its ordering broken."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable

import pytest

from daxfs.block import Bio, BioFlags, BioOp, BlockDevice, QueueLimits
from daxfs.testing.blockcrash import BlockCrashCheckFailed, check_block_operation
from daxfs.testing.simblock import SimulatedBlockDevice

BS = 512
COMMIT = 0  # block 0: the commit record
LOG = 1  # blocks 1..4: the log (a copy of the new home blocks)
HOME = 8  # blocks 8..11: the data the transaction changes
N = 4
SIZE = 16 * BS


def commit_record(seq: int, payload: bytes) -> bytes:
    head = struct.pack("<QI", seq, zlib.crc32(payload))
    return head + bytes(BS - len(head))


def transaction(
    seq: int, new: bytes, *, preflush: bool = True, final_flush: bool = True
) -> Callable[[BlockDevice], None]:
    """Write the log, commit it (PREFLUSH|FUA: the commit point), write home, flush."""

    def op(dev: BlockDevice) -> None:
        log = Bio(BioOp.WRITE, LOG, [new])
        dev.submit_bio(log)
        log.wait()
        flags = BioFlags.FUA | (BioFlags.PREFLUSH if preflush else BioFlags.NONE)
        commit = Bio(BioOp.WRITE, COMMIT, [commit_record(seq, new)], flags=flags)
        dev.submit_bio(commit)
        commit.wait()  # the commit point: durable from here
        dev.write(HOME * BS, new)  # in place, unflushed: recovery redoes it from the log
        if final_flush:
            dev.flush()

    return op


def recover(dev: SimulatedBlockDevice) -> bytes:
    """What the home blocks hold after recovery: a valid commit record replays the log."""
    seq, crc = struct.unpack_from("<QI", dev.read(COMMIT * BS, BS))
    log = dev.read(LOG * BS, N * BS)
    if seq and zlib.crc32(log) == crc:
        return log
    return dev.read(HOME * BS, N * BS)


def initial_image() -> bytes:
    dev = SimulatedBlockDevice(SIZE)
    dev.write(HOME * BS, b"o" * (N * BS), fua=True)
    return dev.durable_image()


NEW = bytes(range(256)) * (N * BS // 256)


def test_journal_is_atomic_and_durable_at_every_persist_point() -> None:
    report = check_block_operation(initial_image(), transaction(1, NEW), recover)
    assert report.points == 3  # the PREFLUSH, the FUA commit, the final FLUSH
    assert report.before_seen > 0
    assert report.after_seen > 0


def test_split_requests_keep_the_guarantee() -> None:
    limits = QueueLimits(max_bytes=1024, max_segments=2)
    report = check_block_operation(initial_image(), transaction(1, NEW), recover, limits=limits)
    assert report.points >= 3  # the commit (one block) stays one FUA write


def test_without_the_preflush_the_harness_finds_a_commit_without_its_log() -> None:
    with pytest.raises(BlockCrashCheckFailed, match="neither before nor after"):
        check_block_operation(initial_image(), transaction(1, NEW, preflush=False), recover)


def test_the_commit_point_is_enough_to_return() -> None:
    # without the final flush the home blocks may be lost, but recovery redoes them
    report = check_block_operation(initial_image(), transaction(1, NEW, final_flush=False), recover)
    assert report.points == 2


def test_returning_before_durable_is_caught() -> None:
    """An operation that returns with its commit record only in the cache is not durable."""

    def lazy(dev: BlockDevice) -> None:
        dev.write(LOG * BS, NEW)
        dev.write(COMMIT * BS, commit_record(1, NEW))  # no FUA, no flush

    with pytest.raises(BlockCrashCheckFailed, match="not after, once op returned"):
        check_block_operation(initial_image(), lazy, recover)
