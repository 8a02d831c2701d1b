"""The redo journal: atomic commit, recovery, crash at every persist point."""

from __future__ import annotations

import pytest

from daxfs.fs.journal import Journal, TransactionTooLarge, changed_ranges
from daxfs.fs.layout import BLOCK_SIZE
from daxfs.fs.store import PmemStore
from daxfs.testing import PowerFailure, SimulatedPmem

BLOCKS = 64
JSTART, JBLOCKS = 1, 8  # journal: blocks 1..8


def make(dev: SimulatedPmem | None = None) -> tuple[SimulatedPmem, PmemStore, Journal]:
    dev = dev or SimulatedPmem(BLOCKS * BLOCK_SIZE)
    store = PmemStore(dev)
    journal = Journal(store, JSTART, JBLOCKS)
    journal.recover()
    return dev, store, journal


def test_changed_ranges_are_whole_lines() -> None:
    old = bytes(BLOCK_SIZE)
    new = bytearray(old)
    new[0] = 1
    new[100] = 1
    new[127] = 1
    new[128] = 1
    new[4095] = 1
    assert changed_ranges(new, old) == [(0, 192), (4032, 4096)]  # adjacent lines merge
    assert changed_ranges(old, old) == []


def test_commit_applies_in_place_and_reads_see_own_writes() -> None:
    _, store, journal = make()
    with journal.begin() as tx:
        view = tx.write(20)
        view[0:5] = b"hello"
        assert bytes(tx.read(20)[:5]) == b"hello"
        assert bytes(store.block(20)[:5]) == bytes(5)  # not yet visible outside
    assert bytes(store.block(20)[:5]) == b"hello"
    assert journal.pending() is None


def test_abort_changes_nothing_and_runs_callbacks() -> None:
    _, store, journal = make()
    undone = []
    with pytest.raises(RuntimeError), journal.begin() as tx:
        tx.write(20)[0:3] = b"abc"
        tx.on_abort(lambda: undone.append(1))
        raise RuntimeError("boom")
    assert bytes(store.block(20)[:3]) == bytes(3)
    assert undone == [1]
    with journal.begin() as tx:  # the lock was released
        tx.write(21)[0:1] = b"x"


def test_seal_runs_before_commit() -> None:
    _, store, journal = make()

    def seal(view: memoryview) -> None:
        view[4095] = 0xAA

    with journal.begin() as tx:
        tx.write(30, seal=seal)[0] = 1
    assert store.block(30)[4095] == 0xAA


def test_new_block_is_written_in_place() -> None:
    _, store, journal = make()
    with journal.begin() as tx:
        view = tx.new_block(40)
        view[0:3] = b"new"
        assert bytes(store.block(40)[:3]) == b"new"
        assert tx.write(40) == view  # writes to a new block stay in place


def test_log_data_is_atomic() -> None:
    _, store, journal = make()
    with journal.begin() as tx:
        tx.log_data(50 * BLOCK_SIZE + 7, b"data!")
        assert bytes(store.block(50)[7:12]) == bytes(5)
    assert bytes(store.block(50)[7:12]) == b"data!"


def test_too_large_transaction_is_refused_whole() -> None:
    _, store, journal = make()
    with pytest.raises(TransactionTooLarge), journal.begin() as tx:
        for b in range(20, 30):
            tx.write(b)[:] = b"\xff" * BLOCK_SIZE
    assert bytes(store.block(20)) == bytes(BLOCK_SIZE)


def test_replay_after_crash_between_commit_and_apply() -> None:
    dev, store, journal = make()
    # fence 1: log durable; fence 2: header (the commit point); fence 3 ends the apply
    dev.schedule_power_failure(fence=3)
    with pytest.raises(PowerFailure), journal.begin() as tx:
        tx.write(20)[0:4] = b"redo"
        tx.write(25)[100:104] = b"both"
    store.close()
    for state in dev.crash_states(limit=32):
        _, store2, journal2 = make(state)
        assert bytes(store2.block(20)[0:4]) == b"redo"
        assert bytes(store2.block(25)[100:104]) == b"both"
        assert journal2.pending() is None
        store2.close()


def _run_crash_at_every_fence(seq_of_changes: list[tuple[int, bytes]]) -> int:
    """Crash a two-block transaction at each fence; every state is all-old or all-new."""
    fences = 0
    while True:
        fences += 1
        dev, store, journal = make()
        with journal.begin() as tx:  # some earlier committed state
            tx.write(20)[0:4] = b"old!"
            tx.write(30)[0:4] = b"old!"
        dev.schedule_power_failure(fence=fences)
        try:
            with journal.begin() as tx:
                for blockno, data in seq_of_changes:
                    tx.write(blockno)[0 : len(data)] = data
            completed = True
        except PowerFailure:
            completed = False
        store.close()
        seen = set()
        for state in dev.crash_states(limit=64, seed=fences):
            _, s2, _ = make(state)
            seen.add((bytes(s2.block(20)[0:4]), bytes(s2.block(30)[0:4])))
            s2.close()
        assert seen <= {(b"old!", b"old!"), (b"new!", b"new!")}, (fences, seen)
        if completed:
            assert seen == {(b"new!", b"new!")}
            return fences


def test_crash_at_every_persist_point_is_all_or_nothing() -> None:
    fences = _run_crash_at_every_fence([(20, b"new!"), (30, b"new!")])
    assert fences >= 4  # log, commit point, apply, and the lazily persisted applied_seq


def test_a_failing_undo_does_not_replace_the_error() -> None:
    """An on_abort callback that fails: every other one still runs, the error is kept
    (with a note), and the filesystem turns read-only (memory may differ from media)."""
    import daxfs
    from daxfs.errors import Corrupted, NoSpace, ReadOnly
    from daxfs.testing import SimulatedPmem

    dev = SimulatedPmem(16 << 20)
    daxfs.mkfs(dev)
    fs = daxfs.mount(dev)
    ran: list[str] = []

    def undo_fails() -> None:
        raise Corrupted("cannot re-read the superblock")

    with pytest.raises(NoSpace, match="the real error") as info, fs.journal.begin() as tx:
        tx.on_abort(lambda: ran.append("first registered"))
        tx.on_abort(undo_fails)
        raise NoSpace("the real error")
    assert ran == ["first registered"]
    assert any("cannot re-read the superblock" in note for note in info.value.__notes__)
    assert "undoing a transaction in memory failed" in str(fs.journal.failed)
    with pytest.raises(ReadOnly, match="read-only after a journal failure"):
        fs.mkdir("/d")
    fs.unmount()
