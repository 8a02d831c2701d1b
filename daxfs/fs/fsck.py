"""fsck: check every structure and cross-reference of a daxfs; repair what is safe.

Passes, in order (each problem is reported in words, naming the structure)::

    1 superblocks   primary and backup: magic, checksum, geometry
    2 journal       a committed transaction not yet applied is replayed
                    (repair) or reported (check only: the rest is then skipped,
                    since mount would change it)
    3 bitmap        checksum of every bitmap block
    4 inodes        every record of the inode table: checksum, type, flags;
                    extent maps and B+trees; blocks claimed by two owners
    5 namespace     walk from the root: entries point at live inodes of the
                    type they say, each directory reached once, ".." right
    6 links         link counts against the entries found; inodes no
                    directory reaches (lost)
    7 lists         free-inode list and orphan list: members, cycles, counts
    8 allocation    bitmap against the blocks actually owned; counters

Repairs (``repair=True``), each in its own journal transaction, only where the
right answer is certain: restore the primary superblock from the backup,
replay the journal, reseal damaged bitmap blocks, fix link counts, entry
counts and ".." pointers, rebuild the free-inode list, drop dangling
directory entries, mark owned blocks used and free unowned ones, recompute
counters.  Lost inodes are linked into /lost+found as "#<ino>".  Damaged
inodes and trees are reported, not guessed at.

Memory: one byte per block and four per inode (this tool only; the mounted
filesystem keeps nothing of that size).
"""

from __future__ import annotations

import dataclasses
import os
import stat as st
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from daxfs.errors import Corrupted
from daxfs.fs.alloc import Allocator
from daxfs.fs.btree import BTree
from daxfs.fs.dir import Directories
from daxfs.fs.extmap import BlockMaps
from daxfs.fs.inode import Inode, InodeTable
from daxfs.fs.journal import Journal
from daxfs.fs.layout import (
    BITMAP_BYTES,
    BITS_PER_BITMAP_BLOCK,
    BLOCK_SHIFT,
    BLOCK_SIZE,
    DT_DIR,
    DT_LNK,
    DT_REG,
    IFLAG_ORPHAN,
    IFLAG_TRUNCATE,
    INLINE_AREA,
    INO_INODE_FILE,
    INO_ROOT,
    INODES_PER_BLOCK,
    MAP_BTREE,
    MAP_INLINE,
    MAP_NONE,
    MAP_SYMLINK,
    TREE_EXTENTS,
    InodeRecord,
    Superblock,
    bitmap_block_ok,
    seal_bitmap_block,
)
from daxfs.fs.mount import build_layers, same_geometry
from daxfs.fs.store import PmemStore
from daxfs.fs.super import SuperState
from daxfs.pmem import open_device
from daxfs.pmem.device import Device

Progress = Callable[[str, int, int], None]
_DTYPES = {st.S_IFDIR: DT_DIR, st.S_IFREG: DT_REG, st.S_IFLNK: DT_LNK}


@dataclasses.dataclass
class Problem:
    """One thing fsck found wrong."""

    structure: str  # what is wrong: "inode 12", "bitmap block 3", "directory /a"
    message: str
    repaired: bool = False

    def __str__(self) -> str:
        tail = " [repaired]" if self.repaired else ""
        return f"{self.structure}: {self.message}{tail}"


@dataclasses.dataclass
class Report:
    """What fsck checked and found."""

    problems: list[Problem] = dataclasses.field(default_factory=list)
    files: int = 0
    directories: int = 0
    symlinks: int = 0
    blocks_used: int = 0
    block_count: int = 0
    journal_replayed: bool = False
    complete: bool = True  # False when a pass could not run (e.g. no superblock)

    @property
    def clean(self) -> bool:
        """No problem left unrepaired, and every pass ran."""
        return self.complete and all(p.repaired for p in self.problems)

    def __str__(self) -> str:
        lines = [str(p) for p in self.problems]
        summary = (
            f"{self.files} files, {self.directories} directories, {self.symlinks} symlinks, "
            f"{self.blocks_used}/{self.block_count} blocks used"
        )
        if not self.complete:
            lines.append("check incomplete: see the problems above")
        lines.append(("clean: " if self.clean else "NOT clean: ") + summary)
        return "\n".join(lines)


class _Checker:
    def __init__(self, device: Device, repair: bool, progress: Progress | None) -> None:
        self.device = device
        self.repair = repair
        self.progress = progress
        self.report = Report()
        #: a rescan after repairs: problems already reported are not repeated
        self.quiet = False

    def problem(self, structure: str, message: str, repaired: bool = False) -> Problem:
        p = Problem(structure, message, repaired)
        if not self.quiet:
            self.report.problems.append(p)
        return p

    # -- 1 superblocks ------------------------------------------------------------------

    def superblocks(self) -> Superblock | None:
        dev = self.device
        size = dev.size - dev.size % BLOCK_SIZE
        primary = backup = None
        try:
            primary = Superblock.unpack(dev.read(0, BLOCK_SIZE), "primary superblock")
            primary.check_geometry(dev.size, "primary superblock")
        except Corrupted as exc:
            self.problem("primary superblock", _detail(exc, "primary superblock"))
            primary = None
        blocks = primary.block_count if primary else size >> BLOCK_SHIFT
        try:
            backup = Superblock.unpack(
                dev.read((blocks - 1) << BLOCK_SHIFT, BLOCK_SIZE), "backup superblock"
            )
            backup.check_geometry(dev.size, "backup superblock")
        except Corrupted as exc:
            backup = None
            fixed = self.repair and primary is not None
            if fixed:
                assert primary is not None
                dev.write((blocks - 1) << BLOCK_SHIFT, primary.to_block())
            self.problem("backup superblock", _detail(exc, "backup superblock"), fixed)
        if primary is None:
            if backup is None:
                self.report.complete = False
                return None
            if self.repair:
                dev.write(0, backup.to_block())
                self.report.problems[0].repaired = True
            else:
                self.report.complete = False
                return None
            primary = backup
        elif backup is not None and (
            primary.uuid != backup.uuid or not same_geometry(primary, backup)
        ):
            if self.repair:
                dev.write((blocks - 1) << BLOCK_SHIFT, primary.to_block())
            self.problem("backup superblock", "differs from the primary", self.repair)
        return primary

    # -- 2 journal, 3 bitmap ---------------------------------------------------------------

    def journal(self, store: PmemStore, sb: Superblock) -> bool:
        """False if a committed transaction awaits replay and repair is off."""
        journal = Journal(store, sb.journal_start, sb.journal_blocks, readonly=not self.repair)
        pending = journal.pending()
        if pending is None:
            return True
        try:
            journal.records(pending)
        except Corrupted as exc:
            self.problem("journal", f"{exc.strerror}; the transaction cannot be replayed")
            self.report.complete = False
            return False
        what = f"holds committed transaction {pending.seq} ({pending.nrecords} records)"
        if not self.repair:
            self.problem("journal", f"{what} not yet applied: mount or fsck --repair replays it")
            self.report.complete = False
            return False
        journal.recover()
        self.report.journal_replayed = True
        self.problem("journal", f"{what}, now replayed", repaired=True)
        return True

    def bitmap(self, store: PmemStore, sb: Superblock) -> list[int]:
        bad = []
        for k in range(sb.bitmap_blocks):
            if not bitmap_block_ok(store.block(sb.bitmap_start + k)):
                bad.append(k)
                self.problem(
                    f"bitmap block {k}", "checksum mismatch (rebuilt from owners)", self.repair
                )
        return bad

    # -- 4 inodes -----------------------------------------------------------------------

    def inodes(self, fs: _Fs) -> None:
        sb = fs.sup.sb
        hwm = sb.inode_hwm
        capacity = (fs.itable.get(INO_INODE_FILE).rec.size >> BLOCK_SHIFT) * INODES_PER_BLOCK
        if hwm > capacity:
            self.problem(
                "superblock",
                f"inode high-water mark {hwm} beyond the inode table ({capacity} slots)",
            )
            hwm = capacity
        fs.hwm = hwm
        for ino in range(1, hwm):
            if self.progress is not None and ino % 4096 == 0:
                self.progress("inodes", ino, hwm)
            try:
                rec = fs.itable.read_record(fs.store, ino)
            except Corrupted as exc:
                self.problem(f"inode {ino}", exc.strerror or str(exc))
                fs.bad.add(ino)
                continue
            if rec.mode == 0:
                fs.free.add(ino)
                continue
            fs.used[ino] = rec
            self.inode_map(fs, ino, rec)

    def inode_map(self, fs: _Fs, ino: int, rec: InodeRecord) -> None:
        fmt = st.S_IFMT(rec.mode)
        where = f"inode {ino}"
        if fmt not in _DTYPES:
            self.problem(where, f"unknown file type {rec.mode:o}")
            fs.bad.add(ino)
            return
        inode = Inode(rec)
        owned = 0
        try:
            if fmt == st.S_IFDIR:
                self.report.directories += 1
                if rec.map_kind not in (MAP_NONE, MAP_BTREE):
                    raise Corrupted(f"directory with map kind {rec.map_kind}")
                for msg in fs.dirs.check(fs.store, inode):
                    self.problem(where, f"directory tree: {msg}")
                    fs.bad.add(ino)
                nodes = list(fs.dirs.tree_nodes(fs.store, inode)) if ino not in fs.bad else []
                owned += self.claim(fs, ino, [(b, 1) for b in nodes])
            elif fmt == st.S_IFLNK and rec.map_kind == MAP_SYMLINK:
                self.report.symlinks += 1
                if rec.map_count != rec.size or rec.size > INLINE_AREA:
                    raise Corrupted(f"inline symlink of {rec.map_count} bytes, size {rec.size}")
            else:
                self.report.symlinks += fmt == st.S_IFLNK
                self.report.files += fmt == st.S_IFREG and ino != INO_INODE_FILE
                owned += self.file_map(fs, ino, inode)
        except Corrupted as exc:
            self.problem(where, exc.strerror or str(exc))
            fs.bad.add(ino)
            return
        if owned != rec.blocks and ino not in fs.bad:
            fixed = self.repair
            if fixed:
                with fs.journal.begin() as tx:
                    fs.itable.dirty(tx, fs.itable.get(ino)).blocks = owned
            self.problem(where, f"counts {rec.blocks} blocks but owns {owned}", fixed)

    def file_map(self, fs: _Fs, ino: int, inode: Inode) -> int:
        rec = inode.rec
        if rec.map_kind not in (MAP_NONE, MAP_INLINE, MAP_BTREE):
            raise Corrupted(f"map kind {rec.map_kind}")
        if rec.map_kind == MAP_BTREE:
            tree = BTree(ino, TREE_EXTENTS, rec.map_root, rec.map_height, _NoNodes())
            problems = tree.check(fs.store)
            if problems:
                raise Corrupted("extent tree: " + "; ".join(problems[:3]))
        runs = []
        end = written_end = -1
        static = 0
        for ext in fs.maps.extents(fs.store, inode):
            if ext.lblk < end:
                raise Corrupted(f"extent at file block {ext.lblk} overlaps the one before")
            end = ext.end
            if not ext.unwritten:
                written_end = ext.end
            if ino == INO_INODE_FILE and ext.lblk == 0:  # inode block 0 is static
                if ext.pblk != fs.sup.sb.inode_block0:
                    raise Corrupted(f"inode file block 0 is at {ext.pblk}, not inode block 0")
                static += 1
                ext = ext.slice(1, ext.end)
                if not ext.length:
                    continue
            runs.append((ext.pblk, ext.length))
        keep = (rec.size + BLOCK_SIZE - 1) >> BLOCK_SHIFT
        if written_end > keep and not rec.flags & IFLAG_TRUNCATE and ino != INO_INODE_FILE:
            # unwritten extents past the size are fallocate(KEEP_SIZE): legitimate
            self.problem(
                f"inode {ino}", f"maps written blocks up to {written_end} past its size {rec.size}"
            )
        owned = static + self.claim(fs, ino, runs)
        return owned + self.claim(fs, ino, [(b, 1) for b in fs.maps.tree_nodes(fs.store, inode)])

    def claim(self, fs: _Fs, ino: int, runs: list[tuple[int, int]]) -> int:
        """Record that ``ino`` owns the blocks of ``runs``; report conflicts."""
        total = 0
        lo, hi = fs.sup.sb.data_start, fs.sup.sb.block_count - 1
        for start, length in runs:
            if start < lo or start + length > hi or length <= 0:
                raise Corrupted(f"blocks [{start}, {start + length}) are outside the data area")
            owners = fs.owner[start : start + length]
            taken = np.flatnonzero(owners)
            if len(taken):
                other = int(owners[taken[0]])
                self.problem(
                    f"inode {ino}",
                    f"block {start + int(taken[0])} is also owned by "
                    f"{'the filesystem' if other == _STATIC else f'inode {other}'}",
                )
                fs.bad.add(ino)
            owners[owners == 0] = ino
            total += length
        return total

    # -- 5 namespace, 6 links -----------------------------------------------------------

    def namespace(self, fs: _Fs) -> None:
        """Walk every directory from the root, counting links."""
        root = fs.used.get(INO_ROOT)
        if root is None or not st.S_ISDIR(root.mode):
            self.problem("root directory", "inode 2 is not a live directory")
            self.report.complete = False
            return
        queue = [(INO_ROOT, "/")]
        fs.reached[INO_ROOT] = "/"
        while queue:
            ino, path = queue.pop()
            if ino in fs.bad:
                continue
            queue.extend(self.directory(fs, ino, path))

    def directory(self, fs: _Fs, ino: int, path: str) -> list[tuple[int, str]]:
        inode = fs.itable.get(ino)
        where = f"directory {path}"
        found = subdirs = 0
        children = []
        try:
            entries = list(fs.dirs.entries(fs.store, inode))
        except Corrupted as exc:
            self.problem(where, exc.strerror or str(exc))
            return []
        for _, name, child, dtype in entries:
            shown = os.path.join(path, os.fsdecode(name))
            rec = fs.used.get(child)
            if rec is None:
                state = "a damaged" if child in fs.bad else "a free"
                if child in fs.bad:
                    self.problem(shown, f"entry points at {state} inode {child}")
                    continue
                self.problem(shown, f"entry points at {state} inode {child}", self.repair)
                if self.repair:
                    with fs.journal.begin() as tx:
                        fs.dirs.remove(tx, inode, name)
                continue
            found += 1
            fs.links[child] = fs.links.get(child, 0) + 1
            want = _DTYPES.get(st.S_IFMT(rec.mode))
            if dtype != want and want is not None:
                self.problem(
                    shown, f"entry says type {dtype}, inode {child} is type {want}", self.repair
                )
                if self.repair:
                    with fs.journal.begin() as tx:
                        fs.dirs.retarget(tx, inode, name, child, want)
            if st.S_ISDIR(rec.mode):
                if child in fs.reached:
                    self.problem(
                        shown,
                        f"directory inode {child} is also at "
                        f"{fs.reached[child]}: a directory may have one name",
                    )
                    continue
                subdirs += 1
                fs.reached[child] = shown
                if rec.parent != ino:
                    self.problem(shown, f"'..' is inode {rec.parent}, should be {ino}", self.repair)
                    if self.repair:
                        with fs.journal.begin() as tx:
                            fs.itable.dirty(tx, fs.itable.get(child)).parent = ino
                children.append((child, shown))
            else:
                fs.reached.setdefault(child, shown)
        fs.subdirs[ino] = subdirs
        if inode.rec.entries != found and found == len(entries):
            self.problem(where, f"counts {inode.rec.entries} entries, holds {found}", self.repair)
            if self.repair:
                with fs.journal.begin() as tx:
                    fs.itable.dirty(tx, inode).entries = found
        return children

    def links(self, fs: _Fs) -> None:
        orphans = set(self.orphan_list(fs))
        for ino, rec in sorted(fs.used.items()):
            if ino == INO_INODE_FILE or ino in fs.bad:
                continue
            if ino not in fs.reached:
                if ino in orphans and rec.nlink == 0:
                    continue  # unlinked while open: mount frees it
                self.lost(fs, ino)
                continue
            want = 2 + fs.subdirs.get(ino, 0) if st.S_ISDIR(rec.mode) else fs.links.get(ino, 0)
            if rec.nlink != want:
                self.problem(
                    f"inode {ino} ({fs.reached[ino]})",
                    f"link count {rec.nlink}, should be {want}",
                    self.repair,
                )
                if self.repair:
                    with fs.journal.begin() as tx:
                        fs.itable.dirty(tx, fs.itable.get(ino)).nlink = want

    def lost(self, fs: _Fs, ino: int) -> None:
        """An inode no directory reaches: link it into /lost+found."""
        self.problem(f"inode {ino}", "is in no directory (lost)", self.repair)
        if not self.repair:
            return
        root = fs.itable.get(INO_ROOT)
        name = f"#{ino}".encode()
        with fs.journal.begin() as tx:
            found = fs.dirs.lookup(tx, root, b"lost+found")
            if found is None:
                lf = fs.itable.allocate(tx, st.S_IFDIR | 0o700, 0, 0)
                rec = fs.itable.dirty(tx, lf)
                rec.nlink, rec.parent = 2, INO_ROOT
                fs.dirs.add(tx, root, b"lost+found", lf.ino, DT_DIR)
                fs.itable.dirty(tx, root).nlink += 1
            else:
                lf = fs.itable.get(found[0])
            inode = fs.itable.get(ino)
            fs.dirs.add(tx, lf, name, ino, _DTYPES[inode.fmt])
            rec = fs.itable.dirty(tx, inode)
            if inode.is_dir:
                rec.parent = lf.ino
                rec.nlink = 2 + fs.subdirs.get(ino, 0)
                fs.itable.dirty(tx, lf).nlink += 1
            else:
                rec.nlink = 1
            if rec.flags & IFLAG_ORPHAN:
                fs.itable.remove_orphan(tx, inode)

    # -- 7 lists ------------------------------------------------------------------------

    def orphan_list(self, fs: _Fs) -> list[int]:
        try:
            return fs.itable.orphans()
        except Corrupted as exc:
            self.problem("orphan list", exc.strerror or str(exc))
            return []

    def free_list(self, fs: _Fs) -> None:
        sb = fs.sup.sb
        seen: list[int] = []
        ino = sb.free_ino_head
        broken = ""
        while ino:
            if ino not in fs.free:
                broken = f"holds inode {ino}, which is not free"
                break
            if len(seen) > len(fs.free):
                broken = "has a cycle"
                break
            seen.append(ino)
            ino = fs.itable.read_record(fs.store, ino).next
        missing = fs.free - set(seen)
        if broken or missing or sb.free_inodes != len(seen):
            detail = broken or (
                f"misses {len(missing)} free inodes"
                if missing
                else f"counter says {sb.free_inodes}, list holds {len(seen)}"
            )
            self.problem("free inode list", detail, self.repair)
            if self.repair:
                self.rebuild_free_list(fs)

    def rebuild_free_list(self, fs: _Fs) -> None:
        """Link every free inode, highest first, in transactions of REBUILD_BATCH inodes
        (the list is valid after each one; fsck can simply run again after a crash)."""
        order = sorted(fs.free, reverse=True)
        head = 0
        with fs.journal.begin() as tx:  # start from an empty list
            sb = fs.sup.dirty(tx)
            sb.free_ino_head, sb.free_inodes = 0, 0
        for first in range(0, len(order), REBUILD_BATCH):
            batch = order[first : first + REBUILD_BATCH]
            with fs.journal.begin() as tx:
                for ino in batch:
                    blockno, offset = fs.itable.address(tx, ino)
                    InodeRecord(ino=ino, next=head).pack_into(tx.write(blockno), offset)
                    head = ino
                sb = fs.sup.dirty(tx)
                sb.free_ino_head = head
                sb.free_inodes += len(batch)

    # -- 8 allocation -------------------------------------------------------------------

    def allocation(self, fs: _Fs, bad_bitmap: list[int]) -> None:
        sb = fs.sup.sb
        owned = fs.owner != 0
        marked = _bitmap_bits(fs.store, sb)
        unmarked = int(np.count_nonzero(owned & ~marked))
        leaked = int(np.count_nonzero(marked & ~owned))
        fix = self.repair and (unmarked or leaked or bad_bitmap)
        if unmarked:
            self.problem("bitmap", f"{unmarked} blocks in use are marked free", self.repair)
        if leaked:
            self.problem(
                "bitmap",
                f"{leaked} blocks are marked used but nothing owns them (leaked)",
                self.repair,
            )
        if fix:
            self.rewrite_bitmap(fs, owned)
        free = sb.block_count - int(np.count_nonzero(owned))
        self.report.blocks_used = sb.block_count - free
        used_inodes = len(fs.used) + len(fs.bad)
        if (sb.free_blocks, sb.used_inodes) != (free, used_inodes):
            self.problem(
                "superblock",
                f"counters say {sb.free_blocks} free blocks and "
                f"{sb.used_inodes} inodes in use; found {free} and {used_inodes}",
                self.repair,
            )
            if self.repair:
                with fs.journal.begin() as tx:
                    s = fs.sup.dirty(tx)
                    s.free_blocks, s.used_inodes = free, used_inodes

    def rewrite_bitmap(self, fs: _Fs, owned: npt.NDArray[np.bool_]) -> None:
        sb = fs.sup.sb
        bits = np.ones(sb.bitmap_blocks * BITS_PER_BITMAP_BLOCK, dtype=np.uint8)
        bits[: sb.block_count] = owned
        for k in range(sb.bitmap_blocks):
            chunk = bits[k * BITS_PER_BITMAP_BLOCK : (k + 1) * BITS_PER_BITMAP_BLOCK]
            with fs.journal.begin() as tx:
                view = tx.write(sb.bitmap_start + k, seal=seal_bitmap_block)
                view[:BITMAP_BYTES] = np.packbits(chunk, bitorder="little").tobytes()


def _detail(exc: OSError, where: str) -> str:
    """The message of ``exc`` without a leading "where: " (the problem names it)."""
    return (exc.strerror or str(exc)).removeprefix(f"{where}: ")


class _NoNodes:
    """A node allocator for read-only trees (fsck never grows a tree it checks)."""

    def alloc_node(self, tx: object, goal: int) -> int:
        raise AssertionError("fsck does not allocate")

    def free_node(self, tx: object, blockno: int) -> None:
        raise AssertionError("fsck does not free")


_STATIC = 0xFFFFFFFF
#: inodes linked per transaction when the free list is rebuilt (256 KiB of log)
REBUILD_BATCH = 1024


def _bitmap_bits(store: PmemStore, sb: Superblock) -> npt.NDArray[np.bool_]:
    """The bitmap as one bool per block (checksums not required)."""
    parts = [
        np.frombuffer(store.block(sb.bitmap_start + k)[:BITMAP_BYTES], dtype=np.uint8)
        for k in range(sb.bitmap_blocks)
    ]
    bits = np.unpackbits(np.concatenate(parts), bitorder="little")
    return bits[: sb.block_count].astype(bool)


@dataclasses.dataclass
class _Fs:
    """The open structures and what the passes learned."""

    store: PmemStore
    journal: Journal
    sup: SuperState
    alloc: Allocator
    itable: InodeTable
    maps: BlockMaps
    dirs: Directories
    owner: npt.NDArray[np.uint32]
    hwm: int = 0
    used: dict[int, InodeRecord] = dataclasses.field(default_factory=dict)
    free: set[int] = dataclasses.field(default_factory=set)
    bad: set[int] = dataclasses.field(default_factory=set)
    links: dict[int, int] = dataclasses.field(default_factory=dict)
    subdirs: dict[int, int] = dataclasses.field(default_factory=dict)
    reached: dict[int, str] = dataclasses.field(default_factory=dict)


def fsck(
    target: str | os.PathLike[str] | Device,
    *,
    repair: bool = False,
    progress: Progress | None = None,
) -> Report:
    """Check (and with ``repair=True`` repair) the daxfs on ``target``.

    Returns a Report; ``report.clean`` is True when nothing is left wrong.

    Raises:
        FileNotFoundError: no such path.
        Busy (EBUSY): the filesystem is mounted.
    """
    if isinstance(target, Device):
        return _run(target, repair, progress)
    with open_device(target, readonly=not repair) as device:
        return _run(device, repair, progress)


def _run(device: Device, repair: bool, progress: Progress | None) -> Report:
    device.claim(True, "fsck")
    try:
        checker = _Checker(device, repair, progress)
        report = checker.report
        if not _journal_first(checker, device):
            return report
        sb = checker.superblocks()
        if sb is None:
            return report
        report.block_count = sb.block_count
        store = PmemStore(device, sb.block_count)
        try:
            _passes(checker, store)
        finally:
            store.close()
        return report
    finally:
        device.unclaim()


def _journal_first(checker: _Checker, device: Device) -> bool:
    """Check (and with repair, replay) the journal before trusting the superblock.

    A crash while the journal applied counters leaves the primary superblock's
    checksum stale until replay; its geometry is never torn.
    """
    try:
        geometry = Superblock.unpack(device.read(0, BLOCK_SIZE), "primary", verify=False)
        geometry.check_geometry(device.size, "primary superblock")
    except Corrupted:
        return True  # superblocks() reports it
    store = PmemStore(device, geometry.block_count)
    try:
        return checker.journal(store, geometry)
    finally:
        store.close()


def _passes(checker: _Checker, store: PmemStore) -> None:
    """Passes 3 to 8.  Allocation is checked (and fixed) before the namespace,
    since namespace repairs allocate and free through the bitmap; if they
    changed anything, ownership is scanned again and allocation rechecked."""
    sb = Superblock.unpack(store.block(0), "primary superblock")
    sup = SuperState(store, sb)
    journal = Journal(store, sb.journal_start, sb.journal_blocks, readonly=not checker.repair)
    bad_bitmap = checker.bitmap(store, sb)
    fs = _scan(checker, store, journal, sup)
    if fs is None:
        return
    checker.allocation(fs, bad_bitmap)
    commits = journal.commits
    checker.namespace(fs)
    if not checker.report.complete:
        return
    checker.links(fs)
    checker.free_list(fs)
    if journal.commits != commits:
        checker.quiet = True
        try:
            fs = _scan(checker, store, journal, sup)
        finally:
            checker.quiet = False
        if fs is not None:
            checker.allocation(fs, [])


def _scan(checker: _Checker, store: PmemStore, journal: Journal, sup: SuperState) -> _Fs | None:
    """Pass 4: every inode and the blocks it owns."""
    sb = sup.sb
    layers = build_layers(store, sup)
    owner = np.zeros(sb.block_count, dtype=np.uint32)
    owner[: sb.data_start] = _STATIC
    owner[sb.block_count - 1] = _STATIC
    fs = _Fs(store, journal, sup, layers.alloc, layers.itable, layers.maps, layers.dirs, owner)
    try:
        fs.itable.get(INO_INODE_FILE)
    except Corrupted as exc:
        checker.problem("inode table", exc.strerror or str(exc))
        checker.report.complete = False
        return None
    checker.inodes(fs)
    return fs
