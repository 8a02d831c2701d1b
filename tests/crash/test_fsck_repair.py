"""Crash tests of fsck --repair: the power fails at every fence of a repair.

Every fix is journaled; a crash in the middle of a repair must leave an image
that a second ``fsck --repair`` makes clean, that then mounts, walks and
takes writes, and whose undamaged files kept their data.
"""

from __future__ import annotations

import pytest

import daxfs
from daxfs.fs.fsck import fsck
from daxfs.fs.layout import DT_REG
from daxfs.pmem.device import Device
from daxfs.testing import PowerFailure, SimulatedPmem
from tests.fs import crafting


def _damage(dev: Device) -> None:
    """Problems for every repair stage: bitmap counter, inode table counter, inode
    fields (a block count; a size past the maximum, cut to the end of the last
    extent, /frag's true size), entries (a misplaced key, a wrong count), the free
    list, and a lost inode (which creates /lost+found)."""
    a, small = crafting.ino_of(dev, "/a"), crafting.ino_of(dev, "/a/b/small")
    with daxfs.mount(dev) as fs, fs.journal.begin() as tx:
        fs.dirs.remove(tx, fs.itable.get(fs.stat("/a/b").st_ino), b"small")
    items = crafting.dir_leaf_entries(dev, a)
    (k, entries), *rest = items
    crafting.write_dir_leaf(dev, a, [(k ^ 0x77, entries), *rest, (99, [(b"x/y", small, DT_REG)])])
    crafting.edit_inode(dev, crafting.ino_of(dev, "/frag"), blocks=3, size=2**60)
    crafting.edit_superblock(dev, free_blocks=17, next_generation=2**33, free_ino_head=0)


def _repair_with_crashes(states_per_fence: int, every: int) -> int:
    base = crafting.sample()
    pristine = crafting.observe(crafting.sample(), write=False).data
    _damage(base)
    image = base.read(0, base.size)
    assert not fsck(SimulatedPmem(base.size, image=image)).clean
    states = 0
    for fence in range(1, 400):
        dev = SimulatedPmem(base.size, image=image)
        dev.schedule_power_failure(fence)
        try:
            fsck(dev, repair=True)
        except PowerFailure:
            pass
        else:
            assert fence > 10, "the repair should take many fences"
            return states
        if fence % every:
            continue
        for state in dev.crash_states(limit=states_per_fence, seed=fence):
            states += 1
            report = fsck(state, repair=True)
            assert report.clean, f"fence {fence}:\n{report}"
            assert fsck(state).clean, f"fence {fence}"
            seen = crafting.observe(state)
            assert seen.walked, f"fence {fence}: {seen.error}"
            assert seen.wrote, f"fence {fence}: {seen.error}"
            for ino, digest in pristine.items():
                assert seen.data.get(ino) == digest, f"fence {fence}: inode {ino}"
    raise AssertionError("the repair never ended")


def test_a_crash_at_any_fence_of_a_repair_is_repaired() -> None:
    assert _repair_with_crashes(states_per_fence=1, every=5) >= 4


@pytest.mark.slow
def test_a_crash_at_every_fence_of_a_repair_is_repaired() -> None:
    assert _repair_with_crashes(states_per_fence=4, every=1) > 20


def test_a_crash_in_an_xattr_repair_is_repaired() -> None:
    """fsck's two xattr fixes write to media: dropping a damaged xattr block (the inode's
    pointer cleared) and rewriting a block without a damaged value (its entry dropped).
    The power fails at every fence of that repair; each crash state is repaired clean by
    a second fsck, and the sound attribute survives."""
    base = crafting.sample()
    d, f = crafting.ino_of(base, "/a"), crafting.ino_of(base, "/a/file")
    d_block = crafting.read_inode(base, d).xattr
    base.write((d_block << 12) + 0, b"\xee\xee\xee\xee")  # magic broken: the block dropped
    _, entries = crafting.xattr_entries(base, f)
    (long,) = [e for e in entries if e.name == b"user.long"]
    base.write((long.blocks[0] << 12) + 7, b"\xee")  # the value's crc fails: entry dropped
    image = base.read(0, base.size)
    assert not fsck(SimulatedPmem(base.size, image=image)).clean
    states = 0
    for fence in range(1, 200):
        dev = SimulatedPmem(base.size, image=image)
        dev.schedule_power_failure(fence)
        try:
            fsck(dev, repair=True)
        except PowerFailure:
            pass
        else:
            break
        for state in dev.crash_states(limit=2, seed=fence):
            states += 1
            assert fsck(state, repair=True).complete, f"fence {fence}"
            assert fsck(state).clean, f"fence {fence}"
            with daxfs.mount(state) as fs:
                assert fs.getxattr("/a/file", "user.short") == b"short value", f"fence {fence}"
                assert fs.listxattr("/a/file") == ["user.short"], f"fence {fence}"
    else:
        raise AssertionError("the repair never ended")
    assert fence > 1, "the repair should write"
    assert states >= 2
