"""Pass 1, superblocks and journal: the ground every later pass stands on.

Order: the journal first (a crash while the journal applied counters leaves
the primary superblock's checksum stale until replay; its geometry, written
only by mkfs, is never torn), then the two superblocks, then the journal's
sequence numbers.  Repairs here are immediate, in place, and never allocate:
replay the journal, restore one superblock from the other, restart sequence
numbers that have run out.

Checks
  1. A committed transaction not yet applied (what a crash leaves between the
     commit point and the end of the apply) is replayed: onto the device
     (repair), or, checking only, onto a private copy of it (overlay.py), and
     the other passes check that copy: the image as the next mount, which
     replays it first, will see it.  The report says the replay awaits
     (``Report.replay_pending``); it is not a problem.  Where no private copy
     can be made (a device larger than overlay.COPY_LIMIT that cannot be
     mapped privately) it is reported and the other passes are skipped.  One
     that cannot be replayed is reported.
  2. Each superblock: magic, checksum, geometry (``Superblock.check_geometry``),
     zeros between its fields and its checksum (a journaled update of the
     counters packs zeros there, which would break a checksum over anything
     else); primary and backup describe the same filesystem (the primary may
     have ro_compat or incompat bits the backup lacks until the next clean
     unmount).
  3. Feature bits this version knows (else nothing more can be checked).
  4. What no checksum of the journal covers (``Journal.problems``): sequence
     numbers below ``daxfs.fs.journal.SEQ_LIMIT``, ``applied_seq`` never ahead
     of an intact header, a pending transaction whose records fit the log and
     the filesystem.  Repair resets the journal (no header, ``applied_seq``
     0), dropping a transaction that could not be replayed.
  5. The superblock's ``state`` is known (repaired to clean: fsck runs on an
     unmounted image).
"""

from __future__ import annotations

import dataclasses

from daxfs.errors import Corrupted
from daxfs.fs.journal import Journal
from daxfs.fs.layout import (
    BLOCK_SHIFT,
    BLOCK_SIZE,
    FEATURE_INCOMPAT,
    FEATURE_RO_COMPAT,
    JH_APPLIED_OFFSET,
    SB_CRC_OFFSET,
    SB_SIZE,
    STATE_CLEAN,
    STATE_MOUNTED,
    Superblock,
)
from daxfs.fs.mount import same_geometry
from daxfs.fs.store import PmemStore
from daxfs.fs.super import COUNTERS_START
from daxfs.pmem.device import Device

from .context import Context, Fix, Repairing, Stage
from .overlay import PrivateCopy

#: the superblock's bytes written only by mkfs (geometry, uuid, label, hash key)
FIXED = COUNTERS_START


def check_journal(ctx: Context, device: Device) -> bool:
    """Checks 1 and 4.  False if the check cannot go on.

    Raises:
        OSError: from the device only (the journal's own damage is reported).
    """
    try:
        geometry = Superblock.unpack(device.read(0, BLOCK_SIZE), "primary", verify=False)
        geometry.check_geometry(device.size, "primary superblock")
    except Corrupted:
        return True  # check_superblocks reports it
    store = PmemStore(device, geometry.block_count)
    try:
        journal = Journal(
            store, geometry.journal_start, geometry.journal_blocks, readonly=not ctx.repair
        )
        pending = journal.pending()
        damage = journal.problems()
        if damage:
            found = [ctx.problem("journal", text.removeprefix("journal: ")) for text in damage]
            if not ctx.repair:
                if pending is None:
                    return True  # nothing to replay: the rest can be checked
                ctx.report.complete = False
                return False
            if pending is not None:
                found[-1].message += f"; transaction {pending.seq} is dropped"
            reset_journal(store, geometry.journal_start)
            for p in found:
                p.repaired = True
            return True
        if pending is None:
            return True
        what = f"holds committed transaction {pending.seq} ({pending.nrecords} records)"
        if not ctx.repair:
            return replay_privately(ctx, device, geometry, what)
        journal.recover()
        ctx.report.journal_replayed = True
        ctx.problem("journal", f"{what}, now replayed").repaired = True
        return True
    finally:
        store.close()


def replay_privately(ctx: Context, device: Device, geometry: Superblock, what: str) -> bool:
    """Check 1 without repair: replay onto a private copy, which the later passes
    check (``ctx.device`` becomes it); False if no copy can be made."""
    copy = PrivateCopy.of(device)
    if copy is None:
        ctx.problem("journal", f"{what} not yet applied: mount or fsck --repair replays it")
        ctx.report.complete = False
        return False
    ctx.device = copy  # the driver closes it at the end of the run
    store = PmemStore(copy, geometry.block_count)
    try:
        Journal(store, geometry.journal_start, geometry.journal_blocks).recover()
    finally:
        store.close()
    ctx.report.replay_pending = f"journal: {what}, replayed at the next mount (checked as replayed)"
    return True


def reset_journal(store: PmemStore, journal_start: int) -> None:
    """Unwrite the header, then restart ``applied_seq`` at 0 (check 4's repair).

    In that order, a crash in between leaves no header to replay; the other
    order would leave an applied transaction that looks unapplied.
    """
    header_at = journal_start << BLOCK_SHIFT
    store.write(header_at, bytes(32))
    store.drain()
    store.write(header_at + JH_APPLIED_OFFSET, bytes(8))
    store.drain()


def journal_problems(ctx: Context, store: PmemStore, sb: Superblock) -> None:
    """Check 4 without repair (the recheck after repairs)."""
    for text in Journal(store, sb.journal_start, sb.journal_blocks, readonly=True).problems():
        ctx.problem("journal", text.removeprefix("journal: "))


def check_superblocks(ctx: Context) -> Superblock | None:
    """Checks 2 and 3: the primary superblock to trust, or None (the check stops)."""
    dev = ctx.device
    size = dev.size - dev.size % BLOCK_SIZE
    primary = backup = None
    try:
        primary = Superblock.unpack(dev.read(0, BLOCK_SIZE), "primary superblock")
        primary.check_geometry(dev.size, "primary superblock")
    except Corrupted as exc:
        bad_primary = ctx.problem("primary superblock", _detail(exc, "primary superblock"))
        primary = None
    blocks = primary.block_count if primary else size >> BLOCK_SHIFT
    last = (blocks - 1) << BLOCK_SHIFT
    try:
        backup = Superblock.unpack(dev.read(last, BLOCK_SIZE), "backup superblock")
        backup.check_geometry(dev.size, "backup superblock")
    except Corrupted as exc:
        backup = None
        p = ctx.problem("backup superblock", _detail(exc, "backup superblock"))
        if ctx.repair and primary is not None:
            dev.write(last, primary.to_block())
            p.repaired = True
    if primary is None:
        if backup is None or not ctx.repair:
            ctx.report.complete = False
            return None
        dev.write(0, backup.to_block())
        bad_primary.repaired = True
        primary = backup
    elif (
        backup is not None
        and dev.read(0, FIXED) != dev.read(last, FIXED)
        and not _features_added(primary, backup)
    ):
        what = "geometry" if not same_geometry(primary, backup) else "fields fixed at mkfs"
        p = ctx.problem("backup superblock", f"{what} differ from the primary's")
        if ctx.repair:
            dev.write(last, primary.to_block())
            p.repaired = True
    for where, offset in (("primary superblock", 0), ("backup superblock", last)):
        if any(dev.read(offset + SB_SIZE, SB_CRC_OFFSET - SB_SIZE)):
            # a journaled update packs zeros there: the checksum would break
            p = ctx.problem(where, "bytes past its fields are not zero")
            if ctx.repair:
                dev.write(offset, primary.to_block())
                p.repaired = True
    unknown = (
        primary.feature_incompat & ~FEATURE_INCOMPAT,
        primary.feature_ro_compat & ~FEATURE_RO_COMPAT,
    )
    if any(unknown):
        ctx.problem(
            "superblock",
            f"unknown feature bits (incompat {unknown[0]:#x}, ro_compat {unknown[1]:#x}): "
            "this version cannot check the filesystem",
        )
        ctx.report.complete = False
        return None
    if primary.state not in (STATE_CLEAN, STATE_MOUNTED):
        ctx.problem(
            "superblock", f"unknown state {primary.state}", Fix(Stage.INODE_TABLE, _clean_state)
        )
    return primary


def _features_added(primary: Superblock, backup: Superblock) -> bool:
    """Whether the primary differs from the backup only by ro_compat or incompat bits
    it added: a transaction set them (``SuperState.enable``), and the backup takes them
    at the next clean unmount (``SuperState.update_backup``); until then that is no
    damage."""
    if backup.feature_ro_compat & ~primary.feature_ro_compat:
        return False
    if backup.feature_incompat & ~primary.feature_incompat:
        return False
    caught_up = dataclasses.replace(
        backup,
        feature_ro_compat=primary.feature_ro_compat,
        feature_incompat=primary.feature_incompat,
    )
    return caught_up.to_block()[:FIXED] == primary.to_block()[:FIXED]


def _clean_state(r: Repairing) -> None:
    with r.journal.begin() as tx:
        r.sup.dirty(tx).state = STATE_CLEAN


def _text(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _detail(exc: OSError, where: str) -> str:
    """The message of ``exc`` without a leading "where: " (the problem names it)."""
    return _text(exc).removeprefix(f"{where}: ")
