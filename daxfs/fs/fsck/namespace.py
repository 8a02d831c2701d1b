"""Pass 3, namespace: every directory entry, every name, every link count.

The walk is breadth first from the root, over directories whose tree the
inodes pass found sound or salvaged; each directory is read once, so cycles end the
walk instead of running it forever.  Entries are decoded tolerantly (an
entry record is parsed as far as it goes), judged one by one, and the pass
plans what each directory will hold after repair: the link counts it checks
are those of that planned namespace, so that counts and entries agree once
every fix is made.

Checks
  1. Each entry record decodes; each name is 1..255 bytes, holds neither
     "/" nor NUL, and is not "." or "..".
  2. Each name is stored under the hash of its name (else lookups miss it:
     listdir shows it and stat says ENOENT), and appears once per directory.
  3. Each entry points at a live inode of the table other than the inode
     file and the root, of the type the entry says.
  4. A directory has one name: a second entry for a directory that is
     already named elsewhere is dropped (so a directory cannot contain its
     own ancestor: no cycle survives), and ".." (``parent``) is the
     directory holding that one name.
  5. ``entries`` is the number of entries a directory holds.
  6. ``nlink`` is 2 plus the subdirectories for a directory, the names for
     any other inode.  While some directory cannot be read, counts are only
     raised, never lowered (a name may hide in the damaged directory).
  7. Every live inode is reached from the root, except orphans waiting to be
     freed (IFLAG_ORPHAN with no link).  The rest is *lost*: linked into
     /lost+found as "#<ino>" -- the topmost lost inodes only, whose lost
     subtrees come along; a cycle of lost directories is broken at its
     lowest inode.

Repairs: drop bad entries (their inodes, if no other name reaches them, go
to /lost+found), move entries to the key of their hash, fix entry types,
"..", entry and link counts; rebuild a salvaged directory (one whose tree
was damaged) from the entries its leaves still hold, in a new tree, freeing
the old tree's blocks that nothing else claims; link lost inodes into
/lost+found (creating it).  Only these two allocate.  Entries that point at
damaged inodes are kept and reported.
"""

from __future__ import annotations

import dataclasses
import os
import stat as st
from collections import deque

from daxfs.fs.btree import BTree
from daxfs.fs.dir import pack_entries
from daxfs.fs.extmap import InodeNodes
from daxfs.fs.inode import Inode
from daxfs.fs.journal import Transaction
from daxfs.fs.layout import (
    DT_DIR,
    DT_LNK,
    DT_REG,
    IFLAG_ORPHAN,
    INO_INODE_FILE,
    INO_ROOT,
    MAP_BTREE,
    MAP_NONE,
    MAX_VALUE,
    TREE_DIRECTORY,
)

from .context import Apply, Context, Fix, Repairing, Salvage, Stage, State
from .entries import Entry, bad_name, parse_entries
from .fixes import set_fields
from .inodes import NO_NODES

LOST_FOUND = b"lost+found"
_DTYPES = {st.S_IFDIR: DT_DIR, st.S_IFREG: DT_REG, st.S_IFLNK: DT_LNK}
#: keys of a directory rewritten per transaction
KEYS_PER_TX = 32


@dataclasses.dataclass
class _Dir:
    """What one directory will hold after repair."""

    ino: int
    path: str
    #: the entries of every key, as planned
    values: dict[int, list[Entry]] = dataclasses.field(default_factory=dict)
    #: keys whose value changes
    changed: set[int] = dataclasses.field(default_factory=set)
    subdirs: int = 0

    @property
    def count(self) -> int:
        return sum(len(v) for v in self.values.values())


class _Walk:
    """The breadth-first walk and its plan."""

    def __init__(self, ctx: Context, s: State) -> None:
        self.ctx = ctx
        self.s = s
        self.hash = s.layers.dirs.hash
        self.dirs: dict[int, _Dir] = {}
        #: names (kept entries) of each non-directory inode
        self.links: dict[int, int] = {}
        #: the directory holding each directory's one name
        self.parent: dict[int, int] = {}
        self.queue: deque[int] = deque()
        self._fixes: dict[int, Fix] = {}

    # -- reading --------------------------------------------------------------------

    def readable(self, ino: int) -> bool:
        """A directory whose entries are known: its tree is sound, or was salvaged."""
        s = self.s
        rec = s.records.get(ino)
        sound = ino not in s.bad_map or ino in s.salvaged
        return rec is not None and st.S_ISDIR(rec.mode) and sound

    def raw_entries(self, ino: int) -> list[tuple[int, list[Entry], str | None]]:
        """(key, entries, what is wrong with the record) of a readable directory."""
        salvage = self.s.salvaged.get(ino)
        if salvage is not None:
            return [(key, entries, None) for key, entries in salvage.items]
        rec = self.s.records[ino]
        if rec.map_kind == MAP_NONE:
            return []
        tree = BTree(ino, TREE_DIRECTORY, rec.map_root, rec.map_height, NO_NODES)
        return [(key, *parse_entries(value)) for key, value in tree.items(self.s.store)]

    # -- walking --------------------------------------------------------------------

    def walk(self, top: int, path: str, parent: int) -> None:
        """Name ``top`` (a directory or not) at ``path`` and walk what it reaches."""
        s = self.s
        s.names[top] = path
        if not self.readable(top):
            if top in s.records and st.S_ISDIR(s.records[top].mode):
                s.namespace_complete = False  # a damaged tree: its names are unknown
            return
        self.parent[top] = parent
        self.queue.append(top)
        done = 0
        while self.queue:
            ino = self.queue.popleft()
            self.directory(ino)
            done += 1
            if done % 256 == 0:
                self.ctx.progress("directories", len(self.dirs), self.ctx.report.directories)

    def directory(self, ino: int) -> None:
        """Judge every entry of directory ``ino`` (checks 1-4) and plan its contents."""
        s, ctx = self.s, self.ctx
        d = self.dirs[ino] = _Dir(ino, s.names[ino])
        where = f"directory {d.path}"
        found = self.raw_entries(ino)
        salvage = s.salvaged.get(ino)
        if salvage is not None:  # rebuilt whole: planned below like any directory
            salvage.fix.apply = _rebuild(s, d, salvage)
            self._fixes[ino] = salvage.fix
        ordered: list[tuple[bool, int, int, Entry]] = []
        for key, entries, problem in found:
            d.values[key] = []
            if problem is not None:
                d.changed.add(key)
                ctx.problem(where, f"entry record at hash {key:#x}: {problem}", self.fix(ino))
            for index, entry in enumerate(entries):
                ordered.append((self.hash(entry[0]) != key, key, index, entry))
        ordered.sort(key=lambda t: t[:3])  # entries under their right key first
        seen: set[bytes] = set()
        for misplaced, key, _, (name, child, dtype) in ordered:
            shown = _join(d.path, name)
            keep = self.judge(d, shown, name, child, dtype, seen)
            if keep is None or misplaced or keep[2] != dtype:
                d.changed.add(key)
            if keep is None:
                continue
            target = key
            if misplaced:
                target = self.hash(name)
                ctx.problem(shown, f"stored under hash {key:#x}, not its own", self.fix(ino))
                d.changed.add(target)
            d.values.setdefault(target, []).append(keep)
            seen.add(name)
        if s.records[ino].entries != d.count and salvage is None:
            ctx.problem(
                where, f"counts {s.records[ino].entries} entries, holds {d.count}", self.fix(ino)
            )

    def judge(
        self, d: _Dir, shown: str, name: bytes, child: int, dtype: int, seen: set[bytes]
    ) -> Entry | None:
        """The entry to keep (perhaps retyped), or None to drop it."""
        s, ctx = self.s, self.ctx
        fix = self.fix(d.ino)
        bad = bad_name(name)
        if bad is not None:
            ctx.problem(f"directory {d.path}", f"entry {name!r} (inode {child}): {bad}", fix)
            return None
        if name in seen:
            ctx.problem(shown, f"a second entry of this name (inode {child})", fix)
            return None
        if child in s.damaged:
            ctx.problem(shown, f"entry points at damaged inode {child}")
            s.namespace_complete = False
            return name, child, dtype
        rec = s.records.get(child)
        if rec is None or child in (INO_INODE_FILE, INO_ROOT):
            what = {INO_INODE_FILE: "the inode file", INO_ROOT: "the root"}.get(child)
            if what is None:
                what = "a free inode" if child < s.slots else "an inode beyond the table"
            ctx.problem(shown, f"entry points at {what} ({child})", fix)
            return None
        want = _DTYPES[st.S_IFMT(rec.mode)]
        if st.S_ISDIR(rec.mode):
            if child in s.names:
                ctx.problem(
                    shown,
                    f"directory inode {child} is also at {s.names[child]}: "
                    "a directory has one name",
                    fix,
                )
                return None
            s.names[child] = shown
            self.parent[child] = d.ino
            d.subdirs += 1
            if self.readable(child):
                self.queue.append(child)
            else:
                s.namespace_complete = False
        else:
            self.links[child] = self.links.get(child, 0) + 1
            s.names.setdefault(child, shown)
        if dtype != want:
            ctx.problem(shown, f"entry says type {dtype}, inode {child} is type {want}", fix)
        return name, child, want

    # -- repairs --------------------------------------------------------------------

    def fix(self, ino: int) -> Fix:
        """The one fix that rewrites directory ``ino`` as planned (made on first use)."""
        d = self.dirs[ino]
        found = self._fixes.get(ino)
        if found is None:
            found = self._fixes[ino] = Fix(Stage.ENTRIES, _rewrite(d))
        return found


def check_namespace(ctx: Context, s: State) -> None:
    """Checks 1-7; plans ``s.nlink`` and ``s.lost``."""
    walk = _Walk(ctx, s)
    if not walk.readable(INO_ROOT):
        what = "is damaged" if INO_ROOT in s.bad_map or INO_ROOT in s.damaged else "is not live"
        ctx.problem("root directory", f"inode {INO_ROOT} {what}: the namespace cannot be checked")
        ctx.report.complete = False
        return
    walk.walk(INO_ROOT, "/", INO_ROOT)
    _lost(ctx, s, walk)
    _parents(ctx, s, walk)
    _link_counts(ctx, s, walk)
    s.namespace_ran = True
    ctx.progress("directories", len(walk.dirs), len(walk.dirs))


def _parents(ctx: Context, s: State, walk: _Walk) -> None:
    """Check 4: '..' of every directory reached."""
    for child, parent in walk.parent.items():
        rec = s.records[child]
        if rec.parent != parent and child not in s.lost:
            ctx.problem(
                s.names[child],
                f"'..' is inode {rec.parent}, should be {parent}",
                Fix(Stage.ENTRIES, set_fields(child, parent=parent)),
            )


def _link_counts(ctx: Context, s: State, walk: _Walk) -> None:
    """Check 6, for every inode named, as the planned namespace will hold it."""
    lost = set(s.lost)
    for ino in sorted(s.names):
        rec = s.records.get(ino)
        if rec is None:
            continue
        if st.S_ISDIR(rec.mode):
            d = walk.dirs.get(ino)
            if d is None:
                continue  # unreadable: its subdirectories are unknown
            want = 2 + d.subdirs
        else:
            want = walk.links.get(ino, 0) + (ino in lost)
        s.nlink[ino] = want
        if ino in lost or rec.nlink == want:
            continue
        if rec.nlink > want and not s.namespace_complete:
            continue  # a name may hide in a directory that cannot be read
        ctx.problem(
            f"inode {ino} ({s.names[ino]})",
            f"link count {rec.nlink}, should be {want}",
            Fix(Stage.ENTRIES, set_fields(ino, nlink=want)),
        )


def _lost(ctx: Context, s: State, walk: _Walk) -> None:
    """Check 7: name the topmost unreached inodes /lost+found/#<ino> and walk them."""
    target, why = _lost_found(s, walk)
    for _ in range(len(s.records) + 1):
        unreached = sorted(
            ino
            for ino, rec in s.records.items()
            if ino not in s.names
            and ino != INO_INODE_FILE
            and not (rec.flags & IFLAG_ORPHAN and rec.nlink == 0)
        )
        if not unreached:
            return
        inside: set[int] = set()
        for ino in unreached:
            if walk.readable(ino):
                for _, entries, _ in walk.raw_entries(ino):
                    inside.update(child for name, child, _ in entries if bad_name(name) is None)
        roots = [ino for ino in unreached if ino not in inside]
        if not roots:  # a cycle of lost directories: break it at its lowest inode
            roots = [next(ino for ino in unreached if walk.readable(ino))]
        if target is None:
            for ino in unreached:
                ctx.problem(f"inode {ino}", f"is in no directory (lost), and {why}")
            return
        for ino in roots:
            if ino in s.names:
                continue
            name = f"#{ino}"
            fix = Fix(Stage.LOST, _link_lost(walk, ino, name.encode()))
            ctx.problem(
                f"inode {ino}", f"is in no directory (lost): goes to /lost+found/{name}", fix
            )
            s.lost.append(ino)
            walk.walk(ino, f"/lost+found/{name}", target)
    raise AssertionError("the lost-inode walk did not end")


def _lost_found(s: State, walk: _Walk) -> tuple[int | None, str]:
    """The inode /lost+found is or will be (0: to create), or None and why not."""
    root = walk.dirs[INO_ROOT]
    for entries in root.values.values():
        for name, child, _ in entries:
            if name == LOST_FOUND:
                if walk.readable(child):
                    return child, ""
                return None, "/lost+found is not a directory that can be read"
    return 0, ""


def _join(path: str, name: bytes) -> str:
    return os.path.join(path, os.fsdecode(name))


# -- repairs ------------------------------------------------------------------------------


def _tree(r: Repairing, inode: Inode) -> BTree:
    rec = inode.rec
    nodes = InodeNodes(r.layers.alloc, r.layers.itable, inode)
    return BTree(inode.ino, TREE_DIRECTORY, rec.map_root, rec.map_height, nodes)


def _store_tree(r: Repairing, tx: Transaction, inode: Inode, tree: BTree) -> None:
    """Point ``inode`` at ``tree``, which the repair changed outside Directories:
    the directory's in-memory index (dir.DirIndex), if a lookup built one, is
    dropped so that the next lookup rebuilds it from the repaired tree."""
    r.layers.dirs.drop_index(inode.ino)
    rec = r.layers.itable.dirty(tx, inode)
    rec.map_root, rec.map_height = tree.root, tree.height
    rec.map_kind = MAP_BTREE if tree.root else MAP_NONE


def _rewrite(d: _Dir) -> Apply:
    """Write the planned value of every changed key, KEYS_PER_TX per transaction;
    the last transaction sets the entry count."""

    def apply(r: Repairing) -> None:
        itable = r.layers.itable
        inode = itable.get(d.ino)
        keys = sorted(d.changed)
        for first in range(0, max(len(keys), 1), KEYS_PER_TX):
            with r.journal.begin() as tx:
                tree = _tree(r, inode)
                for key in keys[first : first + KEYS_PER_TX]:
                    entries = d.values.get(key)
                    if entries:
                        value = pack_entries(entries)
                        if len(value) > MAX_VALUE:  # pragma: no cover - ~9 names on one hash
                            raise AssertionError(f"directory {d.path}: value too large")
                        tree.put(tx, key, value)
                    else:
                        tree.delete(tx, key)
                _store_tree(r, tx, inode, tree)
                if first + KEYS_PER_TX >= len(keys):
                    itable.dirty(tx, inode).entries = d.count

    return apply


def _rebuild(s: State, d: _Dir, salvage: Salvage) -> Apply:
    """Build a new tree for directory ``d`` from its planned entries, in one
    transaction (new nodes are written in place, so only the bitmap and the
    inode are logged), and free the old tree's blocks that nothing else claims."""

    def apply(r: Repairing) -> None:
        itable, alloc = r.layers.itable, r.layers.alloc
        inode = itable.get(d.ino)
        with r.journal.begin() as tx:
            rec = itable.dirty(tx, inode)
            rec.blocks = len(s.xattr_owned.get(d.ino, []))  # its attributes' blocks stay
            tree = BTree(d.ino, TREE_DIRECTORY, 0, 0, InodeNodes(alloc, itable, inode))
            for key in sorted(d.values):
                if d.values[key]:
                    tree.put(tx, key, pack_entries(d.values[key]))
            _store_tree(r, tx, inode, tree)
            rec.entries = d.count
            for blockno in sorted(salvage.reached):
                only = s.owner[blockno] == 0 and s.weak[blockno] == 1
                if only and alloc.is_allocated(tx, blockno):
                    alloc.free(tx, blockno, 1)

    return apply


def _link_lost(walk: _Walk, ino: int, name: bytes) -> Apply:
    """Link ``ino`` into /lost+found (created if absent) as ``name``, in one transaction.

    Its link count becomes what the planned namespace gives it plus this name:
    1 for a file (nothing else names a topmost lost inode), 2 plus its
    subdirectories for a directory (whose '..' becomes /lost+found).
    """

    def apply(r: Repairing) -> None:
        itable, dirs = r.layers.itable, r.layers.dirs
        dtype = _DTYPES[st.S_IFMT(walk.s.records[ino].mode)]
        with r.journal.begin() as tx:
            root = itable.get(INO_ROOT)
            found = dirs.lookup(tx, root, LOST_FOUND)
            if found is None:
                lf = itable.allocate(tx, st.S_IFDIR | 0o700, 0, 0)
                rec = itable.dirty(tx, lf)
                rec.nlink, rec.parent = 2, INO_ROOT
                dirs.add(tx, root, LOST_FOUND, lf.ino, DT_DIR)
                itable.dirty(tx, root).nlink += 1
            else:
                lf = itable.get(found[0])
            unique = name
            for n in range(1, 1000):
                if dirs.lookup(tx, lf, unique) is None:
                    break
                unique = name + f".{n}".encode()
            dirs.add(tx, lf, unique, ino, dtype)
            inode = itable.get(ino)
            rec = itable.dirty(tx, inode)
            if dtype == DT_DIR:
                rec.parent = lf.ino
                if ino in walk.dirs:  # else unreadable: its count is not known
                    rec.nlink = 2 + walk.dirs[ino].subdirs
                itable.dirty(tx, lf).nlink += 1
            else:
                rec.nlink = 1

    return apply
