"""Crash-consistency checking of an operation on a SimulatedBlockDevice.

The block twin of ``daxfs.testing.crash``: ``check_block_operation(image, op,
observe)`` proves an operation atomic and durable at every persist point of a
disk with a volatile write cache:

    1. ``observe`` a device holding ``image``: the *before* state
    2. run ``op`` on a copy to completion, then FLUSH and ``observe`` it:
       the *after* state
    3. for n = 1, 2, ...: run ``op`` on a fresh copy with the power failing at
       its n-th persist point (a FLUSH, the flush of a PREFLUSH, or a FUA
       write); take seeded crash states of that moment (any subset of the
       unflushed writes, torn at block boundaries); ``observe`` each: it must
       be *before* or *after*
    4. stop when ``op`` returns before the scheduled point, after taking the
       crash states of a power failure just after it returned: those must all
       be *after* (it reported success, so its effect must be durable)

``observe`` is what recovery would show: mount and snapshot for a
filesystem, or a protocol's own recovery (tests/block/test_blockcrash.py runs
a redo journal, and shows that the check fails when its commit block is not
ordered after its log).  Everything is seeded by the persist point's number.

``check_fs_block_operation(setup, op)`` is ``daxfs.testing.crash.check_operation``
on a block device: the filesystem is made and mounted on a SimulatedBlockDevice
(through ``daxfs.block.cache.BlockCache``, as ``mount`` does for any block
device), ``op`` is crashed at each of its persist points, and every crash
state must mount (recovery runs), pass fsck, and show the tree before or
after ``op`` (``daxfs.testing.crash.snapshot``).  ``logical_block_size`` and
``limits`` choose how writes tear: 512-byte sectors tear a 4 KiB block into
eight pieces, small ``max_bytes`` split every write-back into many bios.

Invariants
  1. ``op`` runs on a fresh copy of ``image`` for every persist point; the
     crash states of point n depend only on ``image``, ``op`` and n.
  2. A returned ``op`` admits only *after*.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

from daxfs.testing.simblock import SimulatedBlockDevice
from daxfs.testing.simulated import PowerFailure

if TYPE_CHECKING:
    from typing_extensions import Buffer

    from daxfs.block.bio import QueueLimits
    from daxfs.fs.filesystem import FileSystem
    from daxfs.testing.crash import Snapshot


@dataclasses.dataclass
class BlockCrashReport:
    """What check_block_operation did."""

    points: int = 0  # persist points inside the operation
    states: int = 0  # crash states observed
    before_seen: int = 0
    after_seen: int = 0


class BlockCrashCheckFailed(AssertionError):
    """A crash state was neither before nor after (or not after, once ``op`` returned)."""


def check_block_operation(
    image: Buffer,
    op: Callable[[SimulatedBlockDevice], object],
    observe: Callable[[SimulatedBlockDevice], object],
    *,
    states_per_point: int = 16,
    limits: QueueLimits | None = None,
    max_points: int = 200,
) -> BlockCrashReport:
    """Crash ``op`` at every persist point; every state must be before or after.

    Raises:
        BlockCrashCheckFailed: naming the persist point, the seed and the states.
    """
    data = bytes(memoryview(image).cast("B"))

    def fresh() -> SimulatedBlockDevice:
        return SimulatedBlockDevice(len(data), image=data, limits=limits)

    before = observe(fresh())
    done = fresh()
    op(done)
    done.flush()
    after = observe(done)
    report = BlockCrashReport()
    for point in range(1, max_points + 1):
        dev = fresh()
        dev.schedule_power_failure(point)
        try:
            op(dev)
        except PowerFailure:
            returned = False
        else:
            returned = True
            report.points = point - 1
        for state in dev.crash_states(limit=states_per_point, seed=point):
            seen = observe(state)
            report.states += 1
            if seen == after:
                report.after_seen += 1
            elif seen == before and not returned:
                report.before_seen += 1
            else:
                what = "not after, once op returned" if returned else "neither before nor after"
                raise BlockCrashCheckFailed(
                    f"persist point {point} (seed {point}): the state is {what}\n"
                    f"  seen:   {seen!r:.300}\n  before: {before!r:.300}\n  after:  {after!r:.300}"
                )
        if returned:
            return report
    raise BlockCrashCheckFailed(f"operation still running after {max_points} persist points")


def check_fs_block_operation(
    setup: Callable[[FileSystem], object],
    op: Callable[[FileSystem], object],
    *,
    states_per_point: int = 4,
    size: int = 16 << 20,
    logical_block_size: int = 512,
    limits: QueueLimits | None = None,
    times: bool = False,
    max_points: int = 200,
    cache_size: int | str | None = None,
    blocks: bool = True,
) -> BlockCrashReport:
    """Crash filesystem operation ``op`` at every persist point of a block device.

    With ``cache_size`` every mount of the check (the operation's and the
    observations after each crash, recovery included) is bounded: a lazily
    loaded cache whose file data goes through a page cache of that size
    (daxfs.pagecache.bounded).  ``blocks=False`` compares the trees without
    st_blocks (``snapshot``'s ``blocks``): a direct write's crash may leave
    blocks allocated that read as zeros.

    Raises:
        BlockCrashCheckFailed: naming the persist point (the seed) and what was
            wrong: a mount or fsck failure, or a tree neither before nor after.
    """
    from daxfs.fs.mount import mkfs, mount

    def device(image: bytes | None = None) -> SimulatedBlockDevice:
        return SimulatedBlockDevice(
            size, image=image, logical_block_size=logical_block_size, limits=limits
        )

    base = device()
    mkfs(base)
    with mount(base) as fs:
        setup(fs)
    image = base.durable_image()
    before = _observe_fs(device(image), times, 0, cache_size, blocks)
    done = device(image)
    fs = mount(done, cache_size=cache_size)
    op(fs)
    fs.unmount()
    after = _observe_fs(done, times, 0, cache_size, blocks)
    report = BlockCrashReport()
    for point in range(1, max_points + 1):
        dev = device(image)
        fs = mount(dev, cache_size=cache_size)
        dev.schedule_power_failure(point)
        try:
            op(fs)
        except PowerFailure:
            returned = False
        else:
            returned = True
            report.points = point - 1
        if not returned:
            abandon(fs)
        for state in dev.crash_states(limit=states_per_point, seed=point):
            seen = _observe_fs(state, times, point, cache_size, blocks)
            report.states += 1
            if seen == after:
                report.after_seen += 1
            elif seen == before and not returned:
                report.before_seen += 1
            else:
                what = "not after, once op returned" if returned else "neither before nor after"
                allowed = (after,) if returned else (before, after)
                diff = sorted(
                    p
                    for p in set(seen) | set(before) | set(after)
                    if all(seen.get(p) != s.get(p) for s in allowed)
                )
                raise BlockCrashCheckFailed(
                    f"persist point {point} (seed {point}): the state is {what}; "
                    f"differing paths: {diff[:10]}\n"
                    f"  seen:   {[seen.get(p) for p in diff[:3]]}\n"
                    f"  before: {[before.get(p) for p in diff[:3]]}\n"
                    f"  after:  {[after.get(p) for p in diff[:3]]}"
                )
        if returned:
            dev.schedule_power_failure(None)
            fs.unmount()
            return report
    raise BlockCrashCheckFailed(f"operation still running after {max_points} persist points")


def abandon(fs: FileSystem) -> None:
    """Forget a mount whose (simulated) power failed: if it runs on a block cache, the
    cache's memory is given back now (``BlockCache.discard``).

    The mount's own objects hold no reference cycles (daxfs.lifecycle,
    tests/fs/test_no_cycles.py), so the simulated device is freed as soon as the
    harness drops its last reference: tests/crash/test_block_fs_ops.py peaks at 344 MiB
    RSS with or without a garbage collection here (1,840 MiB while mounts held cycles).
    """
    from daxfs.block.cache import BlockCache

    device = fs.device
    if isinstance(device, BlockCache):
        device.discard()


def _observe_fs(
    dev: SimulatedBlockDevice,
    times: bool,
    point: int,
    cache_size: int | str | None = None,
    blocks: bool = True,
) -> Snapshot:
    """Mount ``dev`` (recovery runs), snapshot the tree, unmount, fsck: the tree.

    Raises:
        BlockCrashCheckFailed: mount or fsck failed.
    """
    from daxfs.fs.fsck import fsck
    from daxfs.fs.mount import mount
    from daxfs.testing.crash import snapshot

    try:
        with mount(dev, cache_size=cache_size) as fs:
            seen = snapshot(fs, times=times, blocks=blocks)
    except Exception as exc:
        raise BlockCrashCheckFailed(
            f"persist point {point}: mount after the crash failed: {exc!r}"
        ) from exc
    report = fsck(dev)
    if not report.clean:
        raise BlockCrashCheckFailed(f"persist point {point}: fsck after the crash:\n{report}")
    return seen
