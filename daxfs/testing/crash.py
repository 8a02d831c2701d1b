"""Crash-consistency checking of filesystem operations on SimulatedPmem.

``check_operation(setup, op)`` proves an operation atomic and durable the way
SQLite's crash tests and CrashMonkey do, but at every persist point:

    1. build a filesystem, run ``setup``, unmount: the *before* image
    2. run ``op`` on a copy to completion: the *after* state
    3. for n = 1, 2, ...: run ``op`` on a fresh copy with the power failing
       at its n-th fence; take several crash states of that moment (seeded
       subsets of the pending 8-byte pieces); mount each (recovery runs),
       require fsck to be clean and the tree to equal *before* or *after*
    4. stop when ``op`` completes before the scheduled fence, after taking the
       crash states of a power failure just after it returned: those must all
       be *after* (it reported success, so its effect is durable)

A ``Snapshot`` is what the test compares: by default every path with its
type, mode, link count, size and contents (or link target), extended
attributes and the DAX flag; times are left
out unless asked for, since a crash may legitimately keep either time.

Everything is reproducible: the crash states are seeded by the fence number.
"""

from __future__ import annotations

import dataclasses
import hashlib
import stat as st
from collections.abc import Callable
from typing import TYPE_CHECKING

from daxfs.fs.fsck import fsck
from daxfs.fs.mount import mkfs, mount
from daxfs.testing.blockcrash import abandon
from daxfs.testing.simulated import PowerFailure, SimulatedPmem

if TYPE_CHECKING:
    from daxfs.fs.filesystem import FileSystem

Snapshot = dict[str, tuple[object, ...]]
Step = Callable[["FileSystem"], object]

DEFAULT_SIZE = 16 << 20


def snapshot(fs: FileSystem, *, times: bool = False, blocks: bool = True) -> Snapshot:
    """Every path under / with what a user can observe of it (st_blocks and extended
    attributes too).  ``blocks=False`` leaves st_blocks out: for a direct write,
    whose crash may leave blocks allocated that read as zeros (daxfs.fs.direct)."""
    out: Snapshot = {}
    stack = ["/"]
    while stack:
        path = stack.pop()
        s = fs.lstat(path)
        facts: tuple[object, ...] = (st.S_IFMT(s.st_mode), st.S_IMODE(s.st_mode), s.st_nlink)
        if st.S_ISDIR(s.st_mode):
            names = sorted(fs.listdir(path))
            facts += (tuple(names),)
            stack.extend(path.rstrip("/") + "/" + n for n in names)
        elif st.S_ISLNK(s.st_mode):
            facts += (fs.readlink(path),)
        else:
            with fs.open(path, "rb") as f:
                data = f.read()
            facts += (
                s.st_size,
                s.st_blocks if blocks else None,
                hashlib.sha256(data).hexdigest()[:16],
            )
        if not st.S_ISLNK(s.st_mode):  # extended attributes: names and values; DAX flag
            names = sorted(fs.listxattr(path))
            facts += (tuple((n, _digest(fs.getxattr(path, n))) for n in names),)
            facts += (fs.get_dax(path).flag,)
        if times:
            facts += (s.st_mtime_ns, s.st_atime_ns)
        out[path] = facts
    return out


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


@dataclasses.dataclass
class CrashReport:
    """What check_operation did."""

    fences: int = 0  # persist points inside the operation
    states: int = 0  # crash states mounted and checked
    before_seen: int = 0
    after_seen: int = 0


class CrashCheckFailed(AssertionError):
    """A crash state was neither before nor after, or failed fsck or mount."""


def check_operation(
    setup: Step,
    op: Step,
    *,
    states_per_fence: int = 4,
    size: int = DEFAULT_SIZE,
    times: bool = False,
    max_fences: int = 200,
    dax: str = "inode",
) -> CrashReport:
    """Crash ``op`` at every fence; every state must be all-before or all-after.

    ``dax="never"`` runs ``op`` through the pmem block driver and the block cache
    (daxfs.block.cache); crash states are still mounted by DAX.

    Raises:
        CrashCheckFailed: with the fence, the seed and what was wrong.
    """
    base = SimulatedPmem(size)
    mkfs(base)
    with mount(base) as fs:
        setup(fs)
    image = base.read(0, size)
    before = _observe(SimulatedPmem(size, image=image), times)
    after_dev = SimulatedPmem(size, image=image)
    fs = mount(after_dev, dax=dax)
    op(fs)
    fs.unmount()
    after = _observe(after_dev, times)
    report = CrashReport()
    for fence in range(1, max_fences + 1):
        dev = SimulatedPmem(size, image=image)
        fs = mount(dev, dax=dax)
        dev.schedule_power_failure(fence)
        try:
            op(fs)
        except PowerFailure:
            returned = False
        else:
            returned = True
            report.fences = fence - 1
        abandon(fs)  # dax="never": the block cache gives its memory back now
        # the power fails at this fence, or (returned) just after op returned: then
        # only *after* will do, since op reported success
        for state in dev.crash_states(limit=states_per_fence, seed=fence):
            seen = _check_state(state, None if returned else before, after, times, fence)
            report.states += 1
            report.before_seen += seen == "before"
            report.after_seen += seen == "after"
        if returned:
            return report
    raise CrashCheckFailed(f"operation still running after {max_fences} fences")


def _observe(dev: SimulatedPmem, times: bool) -> Snapshot:
    with mount(dev) as fs:
        return snapshot(fs, times=times)


def _check_state(
    state: SimulatedPmem, before: Snapshot | None, after: Snapshot, times: bool, fence: int
) -> str:
    """Mount and fsck a crash state; "before" or "after" (``before`` None: only after)."""
    try:
        with mount(state) as fs:
            seen = snapshot(fs, times=times)
    except Exception as exc:
        raise CrashCheckFailed(f"fence {fence}: mount after the crash failed: {exc!r}") from exc
    report = fsck(state)
    if not report.clean:
        raise CrashCheckFailed(f"fence {fence}: fsck after the crash:\n{report}")
    if before is not None and seen == before:
        return "before"
    if seen == after:
        return "after"
    diff = sorted(
        p
        for p in set(seen) | set(before or {}) | set(after)
        if seen.get(p) not in ((before or {}).get(p), after.get(p))
    )
    what = "neither before nor after" if before is not None else "not after, once returned"
    raise CrashCheckFailed(
        f"fence {fence}: state is {what}; differing paths: {diff[:10]}\n"
        f"  seen:   {[seen.get(p) for p in diff[:3]]}\n"
        f"  before: {[(before or {}).get(p) for p in diff[:3]]}\n"
        f"  after:  {[after.get(p) for p in diff[:3]]}"
    )
