"""fsck: check every structure and cross-reference of a daxfs; repair what is certain.

Theory of operation
-------------------
A checksum proves that a structure is intact, not that it is true: a crafted
image, or a bug of ours, can carry consistent checksums around structures
that lie.  So fsck trusts nothing it reads.  It checks each structure by
itself (checksums, ranges, known bits), then every cross-reference against
what the structures actually hold: counters and high-water marks are
recounted, never used as loop bounds; every walk is bounded by what exists
(the slots of the inode file, the members a list can have, the nodes a tree
reaches, the directories the namespace holds), so no image makes it hang.

The work is split into passes, each the only owner of one structure and of
what ``State`` records about it::

    1 superblocks and journal   superblocks.py  replay, primary vs backup,
                                                features, sequence numbers
    2 inodes and maps           inodes.py       the inode file, every slot,
                                                every extent and tree node:
                                                who claims which block
    3 namespace                 namespace.py    every entry and name, one
                                                name per directory, '..',
                                                entry and link counts, lost
                                                inodes
    4 lists                     lists.py        free-inode list, orphan list,
                                                inode counters
    5 bitmap and allocation     allocation.py   the bitmap against the claims,
                                                free_blocks

Helpers the passes share: ``context.py`` (the run, the State the passes
fill, Fix and Stage), ``salvage.py`` (what damaged structures may own, and
the directories that can be rebuilt from them), ``entries.py`` (directory
entries decoded as far as they go), ``fixes.py`` (one-record repairs),
``report.py`` (Problem, Report), ``overlay.py`` (the private copy a
check-only run replays a committed transaction onto, then checks).

Pass 1 repairs on the spot (nothing can be read before it); checking only,
it replays a committed transaction onto a private copy, which the later
passes check: the image as the next mount will see it.  Passes 2 to 5
only *look*: each problem they find may carry a ``Fix``, and the driver
(driver.py) applies the fixes after every pass has looked, in ``Stage``
order: bitmap, inode table, inodes, entries, lists, lost+found.  Then it
checks the image again from scratch; what that second check finds is what
remains, and the report says so, problem by problem.

Invariants
  1. Passes 2 to 5 never write.  A pass reads the structures it owns and the
     State the passes before it wrote; it never changes another pass's facts.
  2. Every block that any structure claims -- sound or damaged, through a
     checksum-valid node or one whose checksum failed -- is known before any
     repair runs.  The first repair stage marks every block a sound
     structure owns used, and frees no block a damaged one may own; so no
     repair can allocate a block that something owns (the allocator hands
     out only blocks marked free).
  3. Likewise every inode: the free-inode list is rebuilt from the slots that
     are free (intact mode-0 records, never-written slots), never from
     slots that are damaged or in use, before lost+found may take one.
  4. Nothing is freed on a guess: blocks marked used that no sound structure
     owns are freed only if no damaged structure might own them.
  5. Every fix is one or more journal transactions, each leaving an image
     that fsck --repair can finish after a crash.
  6. A repaired report is clean only if the recheck of the repaired image
     found nothing: "clean after repair" is a check, not a promise.

What repair promises
  * It never makes an image worse: a later fsck finds nothing the first did
    not, files that were readable keep their data and stay readable, and an
    image that mounted still mounts and accepts writes.
  * After a repair that reports clean, fsck is clean, and the image mounts,
    every file reads, and writes succeed.
  * A directory whose tree is damaged is rebuilt from the entries its leaves
    still hold (entries of damaged leaves only if they prove themselves
    against the keyed name hash); what it lost goes to /lost+found.
  * Damaged inode records, damaged extent maps and cross-linked blocks are
    reported, not guessed at: their blocks are kept, entries naming them are
    kept.  What could not be repaired is listed, one line each.

Memory: six bytes per block (owner and weak-claim maps) and the decoded
records of live inodes (this tool only; a mounted filesystem keeps nothing
of that size).
"""

from daxfs.fs.fsck.driver import fsck
from daxfs.fs.fsck.lists import REBUILD_BATCH
from daxfs.fs.fsck.report import Problem, Progress, Report

__all__ = ["REBUILD_BATCH", "Problem", "Progress", "Report", "fsck"]
