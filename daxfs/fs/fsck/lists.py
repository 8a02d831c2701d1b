"""Pass 4, lists: the free-inode list, the orphan list, and the inode counters.

Both lists are linked through ``InodeRecord.next`` from a head in the
superblock.  Walks are bounded by the members that can exist (the free
slots, the live inodes), so a cycle or a crafted link ends them.

Checks
  1. The free list holds exactly the free slots (intact mode-0 records and
     never-written slots below the high-water mark), each once, and
     ``free_inodes`` is its length.
  2. The orphan list holds exactly the inodes that must wait for mount:
     live, with IFLAG_ORPHAN, and either no link (in the namespace as the
     namespace pass plans it) or a truncate pending (IFLAG_TRUNCATE, also
     set by the inodes pass on a file with written blocks past its size).
     Nothing else carries IFLAG_ORPHAN.
  3. ``used_inodes`` counts the live and damaged slots.
  4. An orphan with no link whose map is damaged (mount, which would free
     it, cannot read its map) is freed by repair, with every block only its
     map claims.

Repairs rebuild a list from scratch, REBUILD_BATCH inodes per transaction;
the list is valid after each transaction (members not yet linked are simply
not on it), so a crash leaves an image that fsck --repair finishes.
"""

from __future__ import annotations

from daxfs.fs.layout import IFLAG_ORPHAN, IFLAG_TRUNCATE, InodeRecord

from .context import Apply, Context, Fix, Repairing, Stage, State

#: inodes linked per transaction when a list is rebuilt (256 KiB of log)
REBUILD_BATCH = 1024


def check_lists(ctx: Context, s: State) -> None:
    """Checks 1-3."""
    _free_list(ctx, s)
    _orphan_list(ctx, s)
    used = len(s.records) + len(s.damaged)
    if s.sb.used_inodes != used:
        ctx.problem(
            "superblock",
            f"counts {s.sb.used_inodes} inodes in use, found {used}",
            Fix(Stage.LISTS, _set_used(used)),
        )
    _reap_damaged(ctx, s)  # last: it pushes onto the lists and counters fixed above


def _walk(s: State, head: int, members: set[int], flag: int) -> tuple[list[int], str]:
    """The list from ``head`` while it stays in ``members``; what broke it, if anything."""
    seen: list[int] = []
    visited: set[int] = set()
    ino = head
    while ino:
        if ino in visited:
            return seen, f"has a cycle at inode {ino}"
        if ino not in members:
            return seen, f"holds inode {ino}, which does not belong on it"
        rec = s.free.get(ino) or s.records[ino]
        if flag and not rec.flags & flag:
            return seen, f"holds inode {ino}, which lacks the orphan flag"
        visited.add(ino)
        seen.append(ino)
        ino = rec.next
    return seen, ""


def _free_list(ctx: Context, s: State) -> None:
    """Check 1."""
    want = set(s.free) | s.blank
    seen, broken = _walk(s, s.sb.free_ino_head, set(s.free), 0)
    missing = want - set(seen)
    if broken or missing:
        detail = broken or f"misses {len(missing)} free inodes (first {min(missing)})"
        ctx.problem("free inode list", detail, Fix(Stage.LISTS, _rebuild_free(s, sorted(want))))
    elif s.sb.free_inodes != len(seen):
        ctx.problem(
            "superblock",
            f"counts {s.sb.free_inodes} free inodes, the free list holds {len(seen)}",
            Fix(Stage.LISTS, _set_free_count(len(seen))),
        )


def _orphan_list(ctx: Context, s: State) -> None:
    """Check 2, and check 4's reaping of orphans whose map is damaged."""
    flagged = {ino for ino, rec in s.records.items() if rec.flags & IFLAG_ORPHAN}
    unlinked = {ino for ino in flagged if s.nlink.get(ino, s.records[ino].nlink) == 0}
    truncating = {ino for ino in flagged if s.records[ino].flags & IFLAG_TRUNCATE}
    s.reaped = {ino for ino in unlinked if ino in s.bad_map and ino not in s.names}
    want = (unlinked | truncating | s.truncate) - set(s.bad_map)
    seen, broken = _walk(s, s.sb.orphan_head, set(s.records), IFLAG_ORPHAN)
    extra = flagged - want
    if not broken and set(seen) == want and not extra:
        return
    linked = extra - s.reaped
    if broken:
        detail = broken
    elif linked:
        detail = (
            f"inode {min(linked)} ({len(linked)} in all) is flagged an orphan but has links "
            "and no truncate pending"
        )
    else:
        detail = f"holds {len(seen)} inodes, should hold {len(want)}"
    ctx.problem("orphan list", detail, Fix(Stage.LISTS, _rebuild_orphans(sorted(want), extra)))


def _reap_damaged(ctx: Context, s: State) -> None:
    """Check 4: free the orphans that wait for mount but whose map mount cannot read.

    Mount would free them (they have no link), but fails on the damaged map;
    repair frees them instead: the record, and every block that only their
    damaged map claims (with the other claims complete, nothing else owns it).
    """
    for ino in sorted(s.reaped):
        ctx.attach(s.bad_map[ino], Fix(Stage.LISTS, _reap(s, ino)))
        s.bad_map[ino].message += "; an orphan with no link: freed, as mount would"


# -- repairs ------------------------------------------------------------------------------


def _set_used(used: int) -> Apply:
    def apply(r: Repairing) -> None:
        with r.journal.begin() as tx:
            r.sup.dirty(tx).used_inodes = used

    return apply


def _set_free_count(count: int) -> Apply:
    def apply(r: Repairing) -> None:
        with r.journal.begin() as tx:
            r.sup.dirty(tx).free_inodes = count

    return apply


def _rebuild_free(s: State, free: list[int]) -> Apply:
    """Link every free slot, lowest first at the head (each keeps its generation)."""
    generations = {ino: rec.generation for ino, rec in s.free.items()}

    def apply(r: Repairing) -> None:
        itable = r.layers.itable
        with r.journal.begin() as tx:  # start from an empty list
            sb = r.sup.dirty(tx)
            sb.free_ino_head, sb.free_inodes = 0, 0
        head = 0
        order = free[::-1]
        for first in range(0, len(order), REBUILD_BATCH):
            batch = order[first : first + REBUILD_BATCH]
            with r.journal.begin() as tx:
                for ino in batch:
                    blockno, offset = itable.address(tx, ino)
                    rec = InodeRecord(ino=ino, generation=generations.get(ino, 0), next=head)
                    rec.pack_into(tx.write(blockno), offset)
                    itable.forget(ino)
                    head = ino
                sb = r.sup.dirty(tx)
                sb.free_ino_head = head
                sb.free_inodes += len(batch)

    return apply


def _reap(s: State, ino: int) -> Apply:
    def apply(r: Repairing) -> None:
        itable, alloc = r.layers.itable, r.layers.alloc
        inode = itable.get(ino)
        with r.journal.begin() as tx:
            rec = itable.dirty(tx, inode)
            if rec.flags & IFLAG_ORPHAN:
                itable.remove_orphan(tx, inode)
            rec.flags = 0
            if s.claims_complete:
                for start, length in s.weak_runs.get(ino, []):
                    for blockno in range(start, start + length):
                        only = s.owner[blockno] == 0 and s.weak[blockno] == 1
                        if only and alloc.is_allocated(tx, blockno):
                            alloc.free(tx, blockno, 1)
            for blockno in s.xattr_owned.get(ino, []):  # its attributes (sound, its own)
                if alloc.is_allocated(tx, blockno):
                    alloc.free(tx, blockno, 1)
            rec.blocks = 0
            itable.free(tx, inode)

    return apply


def _rebuild_orphans(want: list[int], extra: set[int]) -> Apply:
    """Empty the list, clear the flag of inodes that must leave it, link the rest."""

    def apply(r: Repairing) -> None:
        itable = r.layers.itable
        with r.journal.begin() as tx:
            r.sup.dirty(tx).orphan_head = 0
        leaving = sorted(extra)
        for first in range(0, len(leaving), REBUILD_BATCH):
            with r.journal.begin() as tx:
                for ino in leaving[first : first + REBUILD_BATCH]:
                    rec = itable.dirty(tx, itable.get(ino))
                    rec.flags &= ~IFLAG_ORPHAN
                    rec.next = 0
        head = 0
        for first in range(0, len(want), REBUILD_BATCH):
            with r.journal.begin() as tx:
                for ino in want[first : first + REBUILD_BATCH]:
                    rec = itable.dirty(tx, itable.get(ino))
                    rec.flags |= IFLAG_ORPHAN
                    rec.next = head
                    head = ino
                r.sup.dirty(tx).orphan_head = head

    return apply
