"""The fsck driver: run the passes, apply the fixes in stage order, check again.

See the package docstring for the theory of operation.
"""

from __future__ import annotations

import os

from daxfs.block.device import BlockDevice
from daxfs.errors import Corrupted
from daxfs.fs.devices import open_target
from daxfs.fs.journal import Journal
from daxfs.fs.layout import Superblock
from daxfs.fs.mount import build_layers
from daxfs.fs.store import PmemStore
from daxfs.fs.super import SuperState
from daxfs.lifecycle import cleanup_after, run_all
from daxfs.pmem.device import Device

from .allocation import check_allocation
from .context import Context, Repairing, State
from .inodes import check_inodes
from .lists import check_lists
from .namespace import check_namespace
from .report import Problem, Progress, Report
from .superblocks import check_journal, check_superblocks, journal_problems


def fsck(
    target: str | os.PathLike[str] | Device | BlockDevice,
    *,
    repair: bool = False,
    progress: Progress | None = None,
    dax: str = "inode",
) -> Report:
    """Check (and with ``repair=True`` repair) the daxfs on ``target``.

    Returns a Report; ``report.clean`` is True when nothing is left wrong.
    With ``repair``, every fix is journaled and the image is checked again
    afterwards: ``clean`` then means that second check found nothing.

    ``target`` is a path, a pmem device or a block device; ``dax`` chooses the
    path to it as mount's does (daxfs.fs.devices).

    Raises:
        FileNotFoundError: no such path.
        Busy (EBUSY): the filesystem is mounted.
        InvalidArgument (EINVAL): dax="always" on a block device.
        OSError: the device failed (EIO); damage on the media is reported,
            never raised.
    """
    device, owned = open_target(target, dax=dax, readonly=not repair)
    if not owned:
        return _run(device, repair, progress)
    try:
        report = _run(device, repair, progress)
    except BaseException as exc:
        cleanup_after(exc, device.close)  # never replaces the error (daxfs.lifecycle)
        raise
    device.close()
    return report


def _run(device: Device, repair: bool, progress: Progress | None) -> Report:
    device.claim(True, "fsck")
    ctx = Context(device, repair, progress)

    def close_copy() -> None:  # the private copy of a check-only replay (overlay.py)
        if ctx.device is not device:
            ctx.device.close()

    try:
        _passes(ctx)
    except BaseException as exc:
        cleanup_after(exc, close_copy, device.unclaim)
        raise
    run_all([close_copy, device.unclaim])
    return ctx.report


def _passes(ctx: Context) -> None:
    if not check_journal(ctx, ctx.device):
        return
    sb = check_superblocks(ctx)
    if sb is None:
        return
    ctx.report.block_count = sb.block_count
    store = PmemStore(ctx.device, sb.block_count)
    try:
        _check_and_repair(ctx, store)
    except BaseException as exc:
        cleanup_after(exc, store.close)
        raise
    store.close()


def _check_and_repair(ctx: Context, store: PmemStore) -> None:
    sb = Superblock.unpack(store.block(0), "primary superblock")
    if _check(ctx, store, sb) is None or not ctx.repair or not ctx.fixes:
        return
    if _apply(ctx, store):
        _recheck(ctx, store)


def _check(ctx: Context, store: PmemStore, sb: Superblock) -> State | None:
    """Passes 2 to 5 (pass 1 is done): the State, or None if a pass had to stop."""
    s = State(store, sb, build_layers(store, SuperState(store, sb)))
    try:
        if not check_inodes(ctx, s):
            return None
        check_namespace(ctx, s)
        check_lists(ctx, s)
        check_allocation(ctx, s)
    except Corrupted as exc:  # a pass met damage it does not know: say where, stop
        ctx.problem("fsck", f"stopped: {exc.strerror or exc}")
        ctx.report.complete = False
        return None
    return s


def _apply(ctx: Context, store: PmemStore) -> bool:
    """Apply every fix in stage order; False if one failed (the rest are not tried)."""
    sb = Superblock.unpack(store.block(0), "primary superblock")
    journal = Journal(store, sb.journal_start, sb.journal_blocks)
    journal.recover()  # nothing to replay (pass 1 did it); numbers the next commit
    sup = SuperState(store, sb)
    layers = build_layers(store, sup)
    layers.alloc.reserved = 0  # repair runs alone on an unmounted image: the reserve is its too
    r = Repairing(store, journal, sup, layers)
    fixes = sorted(ctx.fixes, key=lambda f: f.stage)
    for i, fix in enumerate(fixes):
        ctx.progress("repair", i, len(fixes))
        try:
            fix.apply(r)
        except OSError as exc:
            what = "; ".join(str(p) for p in fix.problems[:2])
            ctx.problem("repair", f"stopped at '{what}': {exc.strerror or exc}")
            ctx.report.complete = False
            return False
        for p in fix.problems:
            p.repaired = True
    ctx.progress("repair", len(fixes), len(fixes))
    return True


def _recheck(ctx: Context, store: PmemStore) -> None:
    """Check the repaired image afresh; whatever it finds is not repaired.

    A problem found again is marked unrepaired; a new one is added.  The
    counts of the summary are those of the repaired image.
    """
    again = Context(ctx.device, False, None)
    again._progress = ctx._progress
    again.phase_prefix = "recheck "
    try:
        sb = Superblock.unpack(store.block(0), "primary superblock")
    except Corrupted as exc:
        ctx.problem("primary superblock", f"after repair: {exc.strerror}")
        ctx.report.complete = False
        return
    journal_problems(again, store, sb)
    _check(again, store, sb)
    found = {p.key: p for p in ctx.report.problems}
    for p in again.report.problems:
        before = found.get(p.key)
        if before is not None:
            before.repaired = False
        else:
            ctx.report.problems.append(Problem(p.structure, f"{p.message} (after repair)"))
    report, fresh = ctx.report, again.report
    report.complete = report.complete and fresh.complete
    report.files, report.directories, report.symlinks = (
        fresh.files,
        fresh.directories,
        fresh.symlinks,
    )
    report.blocks_used = fresh.blocks_used
