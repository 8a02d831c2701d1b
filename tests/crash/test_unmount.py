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
            # state (check-only fsck leaves it to mount); anything else is a defect
            wrong = [p for p in report.problems if "not yet applied" not in p.message]
            assert wrong == [], f"fence {fence}:\n{report}"
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
