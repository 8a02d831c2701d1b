"""Extent maps: which device blocks hold which blocks of a file.

Theory of operation
-------------------
A file's blocks are mapped by extents ``(lblk, pblk, length, flags)``: file
blocks ``[lblk, lblk+length)`` live in device blocks ``[pblk, pblk+length)``;
flag UNWRITTEN means allocated but reading as zeros (fallocate).  Up to five
extents live in the inode itself (MAP_INLINE); more move into a B+tree keyed
by ``lblk`` (MAP_BTREE), whose root block and height the inode records, so
lookups stay O(log n) for huge fragmented files.

Only three changes exist, all inside a transaction:

* ``insert`` maps an unmapped range, merging with contiguous neighbours;
* ``punch`` unmaps a range, splitting extents at its edges, and returns the
  physical runs it unmapped (the caller frees them, or defers that while
  they are pinned);
* ``convert`` turns an UNWRITTEN range into written (punch + insert).

*Inline to tree.*  ``insert`` and ``punch`` can each leave one extent more
than before (a punch inside an extent leaves two parts of it).  When an
inline map would hold more than fit the inode (INLINE_EXTENTS, fewer when
inline extended attributes take the end of the area: ``rec.extent_room``,
docs/FORMAT.md "Inline extended attributes"), both store it as a new
B+tree (``_store_list``), which needs one node: NoSpace then leaves the map
unchanged (the transaction aborts).  A B+tree map never goes back inline,
however few extents it keeps; it becomes MAP_NONE when its last extent goes
(``BTree.delete`` frees the last node), and the next insert starts inline.

*Shrinking needs no block.*  ``punch`` on a tree rewrites the kept left part
of the first extent in place (same key, same value size), deletes, and only
then inserts the one new key a punch can make (the right part of the last
extent, keyed at the end of the range).  So a punch that reaches past the
last extent (truncate, deleting a file) never allocates: no leaf empties
only to be made again.  A punch inside an extent may need nodes for the new
key (at most ``height + 1``), which the allocator's reserve provides to
operations that free space (daxfs.fs.alloc).

``lookup`` answers "what maps file block b" with the extent or the hole up to
the next extent; ``Inode.xcache`` keeps the last extent found, and every
change clears it.

*Decoded inline maps.*  An inline map is decoded and validated from the
record's inline bytes; ``BlockMaps`` remembers the result per inode, keyed
by the identity of that bytes object (immutable, and kept alive by the
cache, so an equal identity means equal bytes).  A record re-read from
media or rewritten by ``_store_inline`` holds a new object, so the cache
can never answer for bytes it did not check; it holds at most
INLINE_CACHE inodes and is emptied when full.

Invariants
  1. Extents of a file never overlap, are sorted by lblk, and have length > 0.
  2. ``rec.blocks`` counts data blocks plus B+tree nodes owned by the inode.
  3. An inline map has at most ``rec.extent_room`` entries (INLINE_EXTENTS less
     the room the inline xattrs take), and storing it never touches the
     inline xattrs' bytes nor the xattr block pointer; a B+tree map may hold
     any number, even fewer than that (it never goes back inline), but never
     none (an empty map is MAP_NONE).
"""

from __future__ import annotations

import dataclasses
import itertools
import struct
from collections.abc import Callable, Iterator, Sequence

from daxfs.errors import Corrupted
from daxfs.fs.alloc import Allocator
from daxfs.fs.btree import BTree
from daxfs.fs.inode import Inode, InodeTable
from daxfs.fs.journal import Transaction
from daxfs.fs.layout import (
    EXTENT,
    EXTENT_UNWRITTEN,
    EXTENT_VALUE,
    INO_INODE_FILE,
    MAP_BTREE,
    MAP_INLINE,
    MAP_NONE,
    MAX_EXTENT_BLOCKS,
    TREE_EXTENTS,
    XATTR_PTR,
    InodeRecord,
)
from daxfs.fs.store import Reader

NO_BLOCK = 1 << 64  # "no next extent": a hole reaches to the end of the address space
#: inodes whose decoded inline map BlockMaps remembers at most
INLINE_CACHE = 4096


@dataclasses.dataclass(slots=True, frozen=True, init=False)
class Extent:
    """File blocks ``[lblk, lblk+length)`` in device blocks ``[pblk, pblk+length)``."""

    lblk: int
    pblk: int
    length: int
    flags: int = 0

    def __init__(self, lblk: int, pblk: int, length: int, flags: int = 0) -> None:
        # what the frozen dataclass's own __init__ does, through the slots' descriptors
        # instead of four object.__setattr__ calls: half the time (a copy-on-write
        # overwrite makes two to four extents)
        _SET_LBLK(self, lblk)
        _SET_PBLK(self, pblk)
        _SET_LENGTH(self, length)
        _SET_FLAGS(self, flags)

    @property
    def end(self) -> int:
        return self.lblk + self.length

    @property
    def unwritten(self) -> bool:
        return bool(self.flags & EXTENT_UNWRITTEN)

    def slice(self, lblk: int, end: int) -> Extent:
        """The part of this extent covering file blocks ``[lblk, end)``."""
        lo, hi = max(lblk, self.lblk), min(end, self.end)
        return Extent(lo, self.pblk + (lo - self.lblk), hi - lo, self.flags)


_SlotSet = Callable[[Extent, int], None]
_SET_LBLK: _SlotSet = Extent.__dict__["lblk"].__set__
_SET_PBLK: _SlotSet = Extent.__dict__["pblk"].__set__
_SET_LENGTH: _SlotSet = Extent.__dict__["length"].__set__
_SET_FLAGS: _SlotSet = Extent.__dict__["flags"].__set__


class InodeNodes:
    """Allocates B+tree nodes for one inode, counting them in ``rec.blocks``."""

    def __init__(self, alloc: Allocator, itable: InodeTable, inode: Inode) -> None:
        self.alloc = alloc
        self.itable = itable
        self.inode = inode

    def alloc_node(self, tx: Transaction, goal: int) -> int:
        blockno = self.alloc.alloc_one(tx, goal)
        self.itable.dirty(tx, self.inode).blocks += 1
        return blockno

    def free_node(self, tx: Transaction, blockno: int) -> None:
        self.alloc.free(tx, blockno, 1)
        self.itable.dirty(tx, self.inode).blocks -= 1


class BlockMaps:
    """Extent-map operations for every inode of a filesystem."""

    def __init__(self, itable: InodeTable, alloc: Allocator) -> None:
        self.itable = itable
        self.alloc = alloc
        #: ino -> (inline bytes object, map_count, its extents): see "Decoded inline maps"
        self._decoded: dict[int, tuple[bytes, int, tuple[Extent, ...]]] = {}

    # -- representation ---------------------------------------------------------------

    def _tree(self, inode: Inode) -> BTree:
        rec = inode.rec
        return BTree(
            inode.ino,
            TREE_EXTENTS,
            rec.map_root,
            rec.map_height,
            InodeNodes(self.alloc, self.itable, inode),
        )

    def _inline(self, inode: Inode) -> tuple[Extent, ...]:
        """The inline extents of ``inode``, validated (remembered: "Decoded inline maps").

        Raises:
            Corrupted (EUCLEAN): too many, invalid, or overlapping extents.
        """
        rec = inode.rec
        hit = self._decoded.get(inode.ino)
        if hit is not None and hit[0] is rec.inline and hit[1] == rec.map_count:
            return hit[2]
        if rec.map_count > rec.extent_room:
            raise Corrupted(
                f"inode {inode.ino}: {rec.map_count} inline extents (room for "
                f"{rec.extent_room} beside {rec.xattr_bytes} bytes of inline xattrs)"
            )
        out = tuple(
            self._valid(Extent(*fields), inode.ino)
            for fields in struct.iter_unpack(
                EXTENT.format, rec.inline[: rec.map_count * EXTENT.size]
            )
        )
        for a, b in itertools.pairwise(out):
            if a.end > b.lblk:
                raise Corrupted(f"inode {inode.ino}: inline extent {b} overlaps or precedes {a}")
        self._remember(inode.ino, rec.inline, rec.map_count, out)
        return out

    def _remember(self, ino: int, raw: bytes, count: int, extents: tuple[Extent, ...]) -> None:
        if len(self._decoded) >= INLINE_CACHE:
            self._decoded.clear()
        self._decoded[ino] = (raw, count, extents)

    def _valid(self, ext: Extent, ino: int) -> Extent:
        """``ext`` (read from media) if it is non-empty, has only known flags, and
        lies in the data area (the inode file also starts at inode block 0).

        Raises:
            Corrupted (EUCLEAN): naming the inode and the extent.
        """
        sb = self.alloc.sup.sb
        lo = sb.inode_block0 if ino == INO_INODE_FILE else sb.data_start
        if (
            ext.length == 0
            or ext.flags & ~EXTENT_UNWRITTEN
            or ext.pblk < lo
            or ext.pblk + ext.length > sb.block_count - 1
            or ext.end > NO_BLOCK
        ):
            raise Corrupted(
                f"inode {ino}: extent at file block {ext.lblk} (device blocks [{ext.pblk}, "
                f"{ext.pblk + ext.length}), flags {ext.flags:#x}) is not a valid extent"
            )
        return ext

    def _store_inline(self, tx: Transaction, inode: Inode, extents: list[Extent]) -> None:
        rec = self.itable.dirty(tx, inode)
        assert len(extents) <= rec.extent_room, f"{len(extents)} extents inline"
        pack = EXTENT.pack
        raw = b"".join([pack(e.lblk, e.pblk, e.length, e.flags) for e in extents])
        # the inline xattrs (at the end of the extent area) and the xattr block (the
        # area's last 8 bytes, layout.XATTR_PTR) are kept
        at = self._xattrs_at(rec)
        rec.inline = raw + bytes(at - len(raw)) + rec.inline[at:]
        rec.map_count = len(extents)
        rec.map_kind = MAP_INLINE if extents else MAP_NONE
        self._remember(inode.ino, rec.inline, rec.map_count, tuple(extents))

    def _store_list(self, tx: Transaction, inode: Inode, extents: list[Extent]) -> None:
        """Store the whole map of an inline or empty map: inline while it fits, else
        as a new B+tree.

        Raises:
            NoSpace (ENOSPC): no block for the tree's node (the caller's
                transaction aborts, which restores the record).
        """
        if len(extents) <= inode.rec.extent_room:
            self._store_inline(tx, inode, extents)
            return
        tree = BTree(inode.ino, TREE_EXTENTS, 0, 0, InodeNodes(self.alloc, self.itable, inode))
        for e in extents:
            tree.put(tx, e.lblk, EXTENT_VALUE.pack(e.pblk, e.length, e.flags))
        rec = self.itable.dirty(tx, inode)
        rec.map_kind = MAP_BTREE
        rec.map_count = 0
        at = self._xattrs_at(rec)  # the inline xattrs and the xattr block stay
        rec.inline = bytes(at) + rec.inline[at:]
        self._store_tree(tx, inode, tree)

    @staticmethod
    def _xattrs_at(rec: InodeRecord) -> int:
        """Where the inline xattrs begin in the inline area (the end of the room the
        extents may use)."""
        return XATTR_PTR - rec.xattr_bytes

    def _store_tree(self, tx: Transaction, inode: Inode, tree: BTree) -> None:
        rec = self.itable.dirty(tx, inode)
        rec.map_root, rec.map_height = tree.root, tree.height
        if tree.root == 0:
            rec.map_kind = MAP_NONE
            rec.map_count = 0

    def _decode(self, key: int, value: bytes, ino: int) -> Extent:
        if len(value) != EXTENT_VALUE.size:
            raise Corrupted(f"inode {ino}: extent at file block {key} has a bad record")
        return self._valid(Extent(key, *EXTENT_VALUE.unpack(value)), ino)

    # -- reading ----------------------------------------------------------------------

    def lookup(self, reader: Reader, inode: Inode, lblk: int) -> tuple[Extent | None, int]:
        """The extent holding file block ``lblk``, or None and the next mapped block."""
        rec = inode.rec
        if rec.map_kind == MAP_INLINE:
            nxt = NO_BLOCK
            for ext in self._inline(inode):
                if ext.lblk <= lblk < ext.end:
                    return ext, ext.end
                if ext.lblk > lblk:
                    nxt = min(nxt, ext.lblk)
            return None, nxt
        if rec.map_kind == MAP_NONE:
            return None, NO_BLOCK
        self._check_kind(inode)
        tree = self._tree(inode)
        found = tree.floor(reader, lblk)
        if found is not None:
            ext = self._decode(found[0], found[1], inode.ino)
            if lblk < ext.end:
                return ext, ext.end
        after = tree.ceiling(reader, lblk + 1)
        return None, after[0] if after is not None else NO_BLOCK

    def extents(self, reader: Reader, inode: Inode, start: int = 0) -> Iterator[Extent]:
        """Extents in file order, starting with the one holding ``start`` if any."""
        rec = inode.rec
        if rec.map_kind == MAP_INLINE:
            yield from (e for e in self._inline(inode) if e.end > start)
            return
        if rec.map_kind == MAP_NONE:
            return
        self._check_kind(inode)
        tree = self._tree(inode)
        first = tree.floor(reader, start)
        begin = first[0] if first is not None else 0
        for key, value in tree.items(reader, begin):
            ext = self._decode(key, value, inode.ino)
            if ext.end > start:
                yield ext

    def _check_kind(self, inode: Inode) -> None:
        if inode.rec.map_kind != MAP_BTREE:
            raise Corrupted(f"inode {inode.ino}: unknown map kind {inode.rec.map_kind}")

    def tree_nodes(self, reader: Reader, inode: Inode) -> Iterator[int]:
        """Blocks of the B+tree of the map (none when inline)."""
        if inode.rec.map_kind == MAP_BTREE:
            yield from self._tree(inode).nodes(reader)

    # -- changing ---------------------------------------------------------------------

    def insert(self, tx: Transaction, inode: Inode, ext: Extent) -> None:
        """Map an unmapped range, merging with contiguous neighbours of the same kind."""
        assert ext.length > 0
        inode.xcache = None
        rec = inode.rec
        if rec.map_kind in (MAP_NONE, MAP_INLINE):
            self._store_list(tx, inode, _merge_into(self._inline(inode), ext))
            return
        self._check_kind(inode)
        tree = self._tree(inode)
        left = tree.floor(tx, ext.lblk)
        if left is not None:
            prev = self._decode(left[0], left[1], inode.ino)
            assert prev.end <= ext.lblk, f"insert {ext} overlaps {prev}"
            if _joinable(prev, ext):
                tree.delete(tx, prev.lblk)
                ext = Extent(prev.lblk, prev.pblk, prev.length + ext.length, ext.flags)
        right = tree.ceiling(tx, ext.lblk + 1)
        if right is not None:
            nxt = self._decode(right[0], right[1], inode.ino)
            assert nxt.lblk >= ext.end, f"insert {ext} overlaps {nxt}"
            if _joinable(ext, nxt):
                tree.delete(tx, nxt.lblk)
                ext = Extent(ext.lblk, ext.pblk, ext.length + nxt.length, ext.flags)
        tree.put(tx, ext.lblk, EXTENT_VALUE.pack(ext.pblk, ext.length, ext.flags))
        self._store_tree(tx, inode, tree)

    def punch(self, tx: Transaction, inode: Inode, lblk: int, count: int) -> list[Extent]:
        """Unmap file blocks ``[lblk, lblk+count)``; return the pieces unmapped, in order.

        The caller owns the returned physical blocks: free them (or defer that).
        Needs no block unless the range ends inside an extent (see "Shrinking
        needs no block" above).

        Raises:
            NoSpace (ENOSPC): the map needs a node and none is available; the
                caller's transaction must abort.
            Corrupted (EUCLEAN): a node of the map failed verification.
        """
        end = lblk + count
        inode.xcache = None
        # materialised before the map changes (extents() is lazy over the tree)
        removed = list(itertools.takewhile(lambda e: e.lblk < end, self.extents(tx, inode, lblk)))
        if not removed:
            return []
        pieces = [e.slice(lblk, end) for e in removed]
        first, last = removed[0], removed[-1]
        left = first.slice(first.lblk, lblk) if first.lblk < lblk else None
        right = last.slice(end, last.end) if last.end > end else None
        kept = [e for e in (left, right) if e is not None]
        if inode.rec.map_kind == MAP_INLINE:
            gone = {e.lblk for e in removed}
            rest = [e for e in self._inline(inode) if e.lblk not in gone] + kept
            self._store_list(tx, inode, sorted(rest, key=lambda e: e.lblk))
            return pieces
        tree = self._tree(inode)
        if left is not None:  # same key, same size: rewritten in place, no leaf empties
            tree.put(tx, left.lblk, EXTENT_VALUE.pack(left.pblk, left.length, left.flags))
        for e in removed:
            if left is None or e.lblk != left.lblk:
                tree.delete(tx, e.lblk)
        if right is not None:  # the only new key, inserted once the deletes made room
            tree.put(tx, right.lblk, EXTENT_VALUE.pack(right.pblk, right.length, right.flags))
        self._store_tree(tx, inode, tree)
        return pieces

    def replace(
        self, tx: Transaction, inode: Inode, lblk: int, count: int, new: list[Extent]
    ) -> list[Extent]:
        """Unmap file blocks ``[lblk, lblk+count)`` and map ``new`` there (copy-on-write).

        The same map as ``punch`` then ``insert`` of each of ``new``, but an
        inline map is decoded and stored once.  ``new`` must lie inside the
        range.  Returns the pieces unmapped, as ``punch`` does.

        Raises:
            NoSpace (ENOSPC): the map needs a node and none is available; the
                caller's transaction must abort.
            Corrupted (EUCLEAN): a node of the map failed verification.
        """
        end = lblk + count
        if inode.rec.map_kind != MAP_INLINE:
            unmapped = self.punch(tx, inode, lblk, count)
            for ext in new:
                self.insert(tx, inode, ext)
            return unmapped
        inode.xcache = None
        extents = self._inline(inode)
        if len(new) == 1:
            # the copy-on-write overwrite's case (DataPath._cow_blocks): the range lies
            # inside one extent; the same map as the loop below, built directly
            for i, e in enumerate(extents):
                first, stop = e.lblk, e.lblk + e.length
                if first <= lblk and end <= stop:
                    return self._replace_inside(tx, inode, extents, i, lblk, end, new[0])
        pieces: list[Extent] = []
        rest: list[Extent] = []
        for e in extents:
            first, stop = e.lblk, e.lblk + e.length
            if stop <= lblk or first >= end:
                rest.append(e)
                continue
            if first >= lblk and stop <= end:
                pieces.append(e)  # all of it (extents are immutable)
                continue
            pieces.append(e.slice(lblk, end))
            if first < lblk:
                rest.append(e.slice(first, lblk))
            if stop > end:
                rest.append(e.slice(end, stop))
        for ext in new:
            rest = _merge_into(rest, ext)
        self._store_list(tx, inode, rest)
        return pieces

    def _replace_inside(
        self,
        tx: Transaction,
        inode: Inode,
        extents: tuple[Extent, ...],
        i: int,
        lblk: int,
        end: int,
        ext: Extent,
    ) -> list[Extent]:
        """``replace`` of ``[lblk, end)`` by ``ext`` in an inline map whose extent
        ``extents[i]`` holds the whole range: what the general loop makes (the
        extent's parts outside the range kept, ``ext`` between, contiguous
        neighbours joined), without its lists of pieces."""
        e = extents[i]
        first, stop, pblk, flags = e.lblk, e.lblk + e.length, e.pblk, e.flags
        whole = first == lblk and stop == end
        gone = e if whole else Extent(lblk, pblk + lblk - first, end - lblk, flags)
        rest = list(extents[:i])
        if first < lblk:
            rest.append(Extent(first, pblk, lblk - first, flags))
        rest.append(ext)
        if stop > end:
            rest.append(Extent(end, pblk + end - first, stop - end, flags))
        rest += extents[i + 1 :]
        self._store_list(tx, inode, _join_contiguous(rest))
        return [gone]

    def convert(self, tx: Transaction, inode: Inode, lblk: int, count: int) -> None:
        """Mark the UNWRITTEN parts of ``[lblk, lblk+count)`` written."""
        pieces = [e for e in self.punch(tx, inode, lblk, count)]
        for e in pieces:
            self.insert(tx, inode, Extent(e.lblk, e.pblk, e.length, e.flags & ~EXTENT_UNWRITTEN))

    def clear_tree(self, tx: Transaction, inode: Inode) -> None:
        """Free the B+tree nodes of an empty map (after every extent was punched)."""
        if inode.rec.map_kind == MAP_BTREE:
            tree = self._tree(inode)
            tree.clear(tx)
            self._store_tree(tx, inode, tree)


def _joinable(a: Extent, b: Extent) -> bool:
    return (
        a.lblk + a.length == b.lblk
        and a.pblk + a.length == b.pblk
        and a.flags == b.flags
        and a.length + b.length <= MAX_EXTENT_BLOCKS
    )


def _merge_into(extents: Sequence[Extent], ext: Extent) -> list[Extent]:
    """Insert ``ext`` into a sorted, disjoint list, joining contiguous neighbours."""
    out: list[Extent] = []
    placed = False
    for e in extents:
        if not placed and e.lblk > ext.lblk:
            out.append(ext)
            placed = True
        out.append(e)
    if not placed:
        out.append(ext)
    return _join_contiguous(out)


def _join_contiguous(extents: list[Extent]) -> list[Extent]:
    """A sorted, disjoint list with contiguous neighbours joined (as far as they may)."""
    merged: list[Extent] = []
    for e in extents:
        if merged:
            last = merged[-1]
            assert last.lblk + last.length <= e.lblk, f"extent {e} overlaps {last}"
            if _joinable(last, e):
                merged[-1] = Extent(last.lblk, last.pblk, last.length + e.length, e.flags)
                continue
        merged.append(e)
    return merged
