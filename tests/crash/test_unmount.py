"""Unmount under power failure: every crash state passes fsck, the backup superblock too.

check_operation mounts each crash state before fsck, and mounting rewrote
the backup superblock, hiding a torn one: here fsck runs on each state first.
"""

from __future__ import annotations

import daxfs
from daxfs.fs.fsck import fsck
from daxfs.fs.layout import BLOCK_SIZE
from daxfs.testing import PowerFailure, SimulatedPmem
from tests.fs.crafting import fresh

SIZE = 16 << 20
STATES = 32


def populate(fs: daxfs.FileSystem) -> None:
    fs.makedirs("/d/e")
    with fs.open("/d/f", "wb") as f:
        f.write(b"x" * 3 * BLOCK_SIZE)


def base_image() -> bytes:
    return fresh(populate, SIZE).read(0, SIZE)


def test_every_crash_state_of_unmount_passes_fsck() -> None:
    image = base_image()
    fences = 0
    for fence in range(1, 50):
        dev = SimulatedPmem(SIZE, image=image)
        fs = daxfs.mount(dev)
        dev.schedule_power_failure(fence)
        try:
            fs.unmount()
        except PowerFailure:
            fences += 1
        else:
            break
        for state in dev.crash_states(limit=STATES, seed=fence):
            report = fsck(state)
            # a committed transaction awaiting replay is every operation's crash
            # state: check-only fsck checks the image with it replayed (clean)
            assert report.clean, f"fence {fence}:\n{report}"
            with daxfs.mount(state) as again:
                assert again.isdir("/d/e")
            after = fsck(state)
            assert after.clean, f"fence {fence}, after mount:\n{after}"
    assert fences >= 3  # the state commit and its apply, at least


def backup_of(dev: SimulatedPmem) -> bytes:
    return dev.read(SIZE - BLOCK_SIZE, BLOCK_SIZE)


def test_an_intact_backup_is_never_rewritten() -> None:
    dev = SimulatedPmem(SIZE, image=base_image())
    before = backup_of(dev)
    with daxfs.mount(dev) as fs:
        fs.mkdir("/more")  # the counters change; the backup keeps mkfs's
    assert backup_of(dev) == before


def test_a_damaged_backup_is_rewritten_at_unmount() -> None:
    dev = SimulatedPmem(SIZE, image=base_image())
    dev.write(SIZE - BLOCK_SIZE + 300, b"garbage")
    assert not fsck(dev).clean
    with daxfs.mount(dev):
        pass
    assert fsck(dev).clean
    assert backup_of(dev)[:192] == dev.read(0, 192)  # the geometry, from the primary


def test_a_crash_between_commit_and_apply_checks_clean_without_writing() -> None:
    """What a kill -9 of a mount can leave (tests/fuse/test_mount.py's kill test):
    the journal's commit point reached, the apply or ``applied_seq`` not.  Crash
    a create, a write, a rename and an unlink at every fence: every crash state
    is clean to a check-only fsck, which writes nothing (it checks a private
    copy with the transaction replayed); some states are in that window."""
    image = base_image()

    def ops(fs: daxfs.FileSystem) -> None:
        with fs.open("/d/new", "wb") as f:
            f.write(b"y" * 5000)
        fs.rename("/d/new", "/d/e/moved")
        fs.unlink("/d/f")

    pending = 0
    for fence in range(1, 200):
        dev = SimulatedPmem(SIZE, image=image)
        fs = daxfs.mount(dev)
        dev.schedule_power_failure(fence)
        try:
            ops(fs)
            fs.unmount()
        except PowerFailure:
            pass
        else:
            break
        for state in dev.crash_states(limit=4, seed=fence):
            before = state.read(0, SIZE)
            report = fsck(state)
            assert report.clean, f"fence {fence}:\n{report}"
            assert state.read(0, SIZE) == before, f"fence {fence}: check-only fsck wrote"
            pending += report.replay_pending is not None
            with daxfs.mount(state):
                pass  # the replay the report announced
            assert fsck(state).replay_pending is None
    else:
        raise AssertionError("the operations never finished")
    assert pending > 0  # the window was reached
