"""The state one run of fsck shares between its passes, and how repairs are queued.

``Context`` is the run: the device, the options, the report.  ``State`` is
what the check passes learned about one image (every pass adds to it, and
only the pass that owns a fact writes it: see the package docstring).
``Fix`` is a repair a pass asks for; the driver applies the fixes of all
passes in ``Stage`` order once every pass has looked, so that nothing is
allocated before every claimed block and inode is known.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from daxfs.fs.journal import Journal
from daxfs.fs.layout import InodeRecord, Superblock
from daxfs.fs.mount import Layers
from daxfs.fs.store import PmemStore
from daxfs.fs.super import SuperState
from daxfs.pmem.device import Device

from .report import Problem, Progress, Report

#: owner of the blocks of the static regions (superblocks, journal, bitmap, inode block 0)
STATIC = 0xFFFFFFFF


class Stage(enum.IntEnum):
    """The order in which repairs run (each stage may rely on every earlier one)."""

    #: every claimed block marked used, leaked blocks freed, free_blocks recounted
    BITMAP = 1
    #: the inode file's size, the inode high-water mark, the generation counter
    INODE_TABLE = 2
    #: fields of single inodes: block counts, flags, mode bits, free-record leftovers
    INODES = 3
    #: directory entries (drop, move to their hash, retype), '..', entry and link counts
    ENTRIES = 4
    #: the free-inode list and the orphan list rebuilt, inode counters
    LISTS = 5
    #: lost inodes linked into /lost+found (the only stage that allocates inodes)
    LOST = 6


@dataclasses.dataclass
class Repairing:
    """The image's structures opened for writing, for the fixes (after the check)."""

    store: PmemStore
    journal: Journal
    sup: SuperState
    layers: Layers


Apply = Callable[[Repairing], None]


@dataclasses.dataclass
class Fix:
    """A repair asked for by a pass; ``apply`` runs its own transactions."""

    stage: Stage
    apply: Apply
    problems: list[Problem] = dataclasses.field(default_factory=list)


class Context:
    """One run of fsck: device, options, the report, and the queued fixes."""

    def __init__(self, device: Device, repair: bool, progress: Progress | None) -> None:
        self.device = device
        self.repair = repair
        self._progress = progress
        self.report = Report()
        self.fixes: list[Fix] = []
        #: a phase-name prefix for the progress callback ("recheck " after repairs)
        self.phase_prefix = ""

    def problem(self, structure: str, message: str, fix: Fix | None = None) -> Problem:
        """Record a problem; ``fix`` (queued once, shared by several problems) repairs it."""
        p = Problem(structure, message)
        self.report.problems.append(p)
        if fix is not None:
            self.attach(p, fix)
        return p

    def attach(self, p: Problem, fix: Fix) -> None:
        """``fix`` repairs ``p`` too."""
        if not fix.problems:
            self.fixes.append(fix)
        fix.problems.append(p)

    def progress(self, phase: str, done: int, total: int) -> None:
        if self._progress is not None:
            self._progress(self.phase_prefix + phase, done, total)


@dataclasses.dataclass
class State:
    """What the check passes learned about one image.

    Owners, by pass: superblocks (``sb``), inodes and maps (the inode file,
    the slots, the records, block claims, ``generation``), namespace
    (``names``, ``links``, ``subdirs``, ``parent_of``, ``nlink``, ``lost``),
    lists (``orphans``).
    """

    store: PmemStore
    sb: Superblock
    layers: Layers
    # -- inodes and maps
    #: device block of each inode-file block, in file order (the mapped prefix)
    itable_map: list[int] = dataclasses.field(default_factory=list)
    #: live inodes whose record is intact and sane
    records: dict[int, InodeRecord] = dataclasses.field(default_factory=dict)
    #: free records (mode 0), intact
    free: dict[int, InodeRecord] = dataclasses.field(default_factory=dict)
    #: all-zero slots below the high-water mark (never written: free in all but name)
    blank: set[int] = dataclasses.field(default_factory=set)
    #: slots whose record cannot be trusted, with the reason
    damaged: dict[int, str] = dataclasses.field(default_factory=dict)
    #: live inodes whose map (extents or directory tree) cannot be trusted
    bad_map: dict[int, Problem] = dataclasses.field(default_factory=dict)
    #: one more than the highest slot that is not all zero
    top: int = 0
    #: the inode file maps blocks past a hole that hold inodes (not checked)
    unscanned: bool = False
    #: the highest inode generation found
    generation: int = 0
    #: owner of each block by a sound structure (0: none, STATIC: the static regions)
    owner: npt.NDArray[np.uint32] = dataclasses.field(
        default_factory=lambda: np.zeros(0, dtype=np.uint32)
    )
    #: how many damaged structures may own each block (such blocks are never
    #: reused, and freed only by the repair that rebuilds their one claimant)
    weak: npt.NDArray[np.uint16] = dataclasses.field(
        default_factory=lambda: np.zeros(0, dtype=np.uint16)
    )
    #: damaged directories, rebuilt from what their leaves still hold
    salvaged: dict[int, Salvage] = dataclasses.field(default_factory=dict)
    #: the inodes pass's list of damaged directories, salvaged after the slots
    damaged_dirs: list[tuple[int, Problem]] = dataclasses.field(default_factory=list)
    #: damaged structures that may own blocks fsck could not enumerate (inode
    #: numbers; 1 also for blocks past a hole of the inode file)
    unknown_claims: set[int] = dataclasses.field(default_factory=set)
    #: what each damaged inode claims weakly: (start, length) runs, in the data area
    weak_runs: dict[int, list[tuple[int, int]]] = dataclasses.field(default_factory=dict)
    #: live inodes with a sound xattr block (daxfs.fs.fsck.xattrs)
    xattr_inodes: int = 0
    #: live inodes keeping IFLAG_DAX (check 10 of daxfs.fs.fsck.inodes)
    dax_inodes: int = 0
    #: live inodes with sound inline attributes (daxfs.fs.fsck.xattrs)
    xattr_inline_inodes: int = 0
    #: blocks the attributes of each such inode own once repaired (a rebuilt
    #: directory counts them with its new tree; a reaped orphan frees them)
    xattr_owned: dict[int, list[int]] = dataclasses.field(default_factory=dict)
    #: orphans with no link whose map is damaged: repair frees them (mount would)
    reaped: set[int] = dataclasses.field(default_factory=set)
    #: written blocks past the size: a truncate to finish (through the orphan list)
    truncate: set[int] = dataclasses.field(default_factory=set)
    # -- namespace
    #: a path of every inode reached from the root (or planned for /lost+found)
    names: dict[int, str] = dataclasses.field(default_factory=dict)
    #: link count each reached inode should have once the planned fixes are made
    nlink: dict[int, int] = dataclasses.field(default_factory=dict)
    #: inodes no directory reaches, to be linked into /lost+found (in order)
    lost: list[int] = dataclasses.field(default_factory=list)
    #: False when a directory could not be read: link counts only checked from below
    namespace_complete: bool = True
    #: the namespace pass ran to the end (root readable)
    namespace_ran: bool = False

    @property
    def claims_complete(self) -> bool:
        """Every block anything may own is known (the orphans repair frees aside:
        whatever they hid goes with them)."""
        return not self.unknown_claims - self.reaped

    @property
    def slots(self) -> int:
        """Inode slots the inode file holds."""
        return len(self.itable_map) * 16

    def claim_weak(self, ino: int, start: int, length: int) -> None:
        """Damaged inode ``ino`` may own ``[start, start+length)``: keep it from reuse."""
        lo, hi = self.sb.data_start, self.sb.block_count - 1
        a, b = max(start, lo), min(start + length, hi)
        if a < b:
            part = self.weak[a:b]
            part[part < np.iinfo(np.uint16).max] += 1
            self.weak_runs.setdefault(ino, []).append((a, b - a))


@dataclasses.dataclass
class Salvage:
    """A directory whose tree failed its check, and what its nodes still hold."""

    #: (key, entries) found in leaves: every entry of an intact leaf, and the
    #: entries of a damaged leaf that prove themselves (key is the hash of the
    #: name, the inode is live and of the type the entry says)
    items: list[tuple[int, list[tuple[bytes, int, int]]]]
    #: every block the walk of the damaged tree reached (claimed weakly)
    reached: set[int]
    #: the rebuild; the namespace pass plans what it writes
    fix: Fix
