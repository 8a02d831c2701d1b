"""Pass 1, superblocks and journal: the ground every later pass stands on.

Order: the journal first (a crash while the journal applied counters leaves
the primary superblock's checksum stale until replay; its geometry, written
only by mkfs, is never torn), then the two superblocks, then the journal's
sequence numbers.  Repairs here are immediate, in place, and never allocate:
replay the journal, restore one superblock from the other, restart sequence
numbers that have run out.

Checks
  1. A committed transaction not yet applied is replayed (repair) or
     reported (check only: the other passes are then skipped, since mount
     would change what they look at); one that cannot be replayed is reported.
  2. Each superblock: magic, checksum, geometry (``Superblock.check_geometry``);
     primary and backup describe the same filesystem.
  3. Feature bits this version knows (else nothing more can be checked).
  4. The journal sequence (max of the header's ``seq`` and ``applied_seq``) is
     below ``SEQ_LIMIT``, so that the next commit can number its transaction.
"""

from __future__ import annotations

import struct

from daxfs.errors import Corrupted
from daxfs.fs.journal import Journal
from daxfs.fs.layout import (
    BLOCK_SHIFT,
    BLOCK_SIZE,
    FEATURE_INCOMPAT,
    FEATURE_RO_COMPAT,
    JH_APPLIED_OFFSET,
    JournalHeader,
    Superblock,
)
from daxfs.fs.mount import same_geometry
from daxfs.fs.store import PmemStore
from daxfs.pmem.device import Device

from .context import Context

#: A journal sequence number at or above this is damage: no filesystem commits
#: 2**63 transactions (29,000 years at ten million a second), and the next
#: commit must be able to number its transaction within 64 bits.
SEQ_LIMIT = 1 << 63


def check_journal(ctx: Context, device: Device) -> bool:
    """Check 1.  False if the check cannot go on (a transaction awaits replay).

    Raises:
        Corrupted: from the device only (the journal's own damage is reported).
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
        if pending is None:
            return True
        try:
            journal.records(pending)
        except Corrupted as exc:
            ctx.problem("journal", f"{_text(exc)}; the transaction cannot be replayed")
            ctx.report.complete = False
            return False
        what = f"holds committed transaction {pending.seq} ({pending.nrecords} records)"
        if not ctx.repair:
            ctx.problem("journal", f"{what} not yet applied: mount or fsck --repair replays it")
            ctx.report.complete = False
            return False
        journal.recover()
        ctx.report.journal_replayed = True
        ctx.problem("journal", f"{what}, now replayed").repaired = True
        return True
    finally:
        store.close()


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
    elif backup is not None and (primary.uuid != backup.uuid or not same_geometry(primary, backup)):
        p = ctx.problem("backup superblock", "differs from the primary")
        if ctx.repair:
            dev.write(last, primary.to_block())
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
    return primary


def check_sequence(ctx: Context, store: PmemStore, sb: Superblock) -> None:
    """Check 4.  Repair: unwrite the header, then restart ``applied_seq`` at 0.

    In that order, a crash in between leaves no header to replay; the other
    order would leave an applied transaction that looks unapplied.
    """
    header_at = sb.journal_start << BLOCK_SHIFT
    header = JournalHeader.unpack(store.block(sb.journal_start))
    (applied,) = struct.unpack_from("<Q", store.block(sb.journal_start), JH_APPLIED_OFFSET)
    seq = max(applied, header.seq if header is not None else 0)
    if seq < SEQ_LIMIT:
        return
    p = ctx.problem(
        "journal", f"sequence number {seq} (applied {applied}) leaves no room for a commit"
    )
    if ctx.repair:
        store.write(header_at, bytes(32))
        store.drain()
        store.write(header_at + JH_APPLIED_OFFSET, bytes(8))
        store.drain()
        p.repaired = True


def _text(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _detail(exc: OSError, where: str) -> str:
    """The message of ``exc`` without a leading "where: " (the problem names it)."""
    return _text(exc).removeprefix(f"{where}: ")
