"""B+trees of u64 keys and byte values: per-file extent maps and directories.

Theory of operation
-------------------
A tree is rooted in an inode, which stores its root block (0 = empty) and its
height (0 = empty, 1 = the root is a leaf).  ``BTree`` is a short-lived handle
on those two numbers: splits and collapses change ``root`` and ``height``, and
the caller writes them back into the inode in the same transaction (and puts
them back if the transaction aborts).  Every value lives in a leaf; all
leaves are at level 0 and the root is at level ``height - 1``.

*Search.*  In an internal node, ``key`` belongs to child ``i``, the last ``i``
with ``keys[i] <= key``, searching from ``i = 1``: key 0 acts as -infinity.
One ``bisect`` over ``memoryview.cast("Q")`` of the key array per level, no
Python loop.  Every node read is verified (checksum, magic, owner inode, tree
kind, its own block number, the expected level, ``1 <= count <= cap``) and a
failure raises ``Corrupted`` naming the inode, the block and the problem.  The
descent is bounded by ``height``, so a corrupt tree cannot loop.

*Separators are fences.*  A split sets ``keys[i]`` of the parent to the smallest
key of the new child ``i``; deletions do not propagate upward, so afterwards a
separator is only a bound: every key of child ``i`` is ``>= keys[i]`` and every
key of child ``i - 1`` is ``< keys[i]`` (layout.py's "smallest key in child i's
subtree" holds when the separator is made, and this weaker form always).
Nodes carry no sibling pointers: ``floor``/``ceiling`` that find nothing in
their leaf descend once more at the leaf's lower fence - 1 (or upper fence),
and ``items`` descends afresh for each leaf, so it stays correct if the tree
changes between two leaves.

*Writing.*  A node to change comes from ``tx.write(n, seal=seal_node)``, a
private copy that the journal commits; a new node from ``tx.new_block``, fully
encoded (it holds garbage).  Nodes are re-sealed as soon as they change, not
only at commit, because ``tx.read`` hands the uncommitted copies back to the
next descent, which verifies their checksums.  ``put`` changes a leaf in place
(memmove of keys and slots, value appended to the heap); when the heap is
short it compacts the leaf if the garbage makes room, else splits it: a leaf
that is the rightmost of the tree and gains a new largest key keeps its
entries and the new key starts a leaf of its own (sequential appends fill
leaves); otherwise the entries are cut where the two halves are equally full;
if no cut fits both halves (a large value between others), the new entry gets a
leaf of its own between the two.  The new children go into the parent, which
splits in halves when full, up to a new root.  Every node a split needs is
allocated before anything changes, so ``NoSpace`` leaves the tree unchanged;
the allocation goal is the block being split (then each block just allocated),
and 0, "no preference", for the first leaf of an empty tree.
``delete`` removes in place; an emptied node is freed and removed from its
parent (recursively), and a root with a single child is replaced by it.  There
is no rebalancing: nodes may be nearly empty, never empty.

Node format (the parts layout.py leaves open)
---------------------------------------------
* Header: ``reserved`` is 0; ``heap`` is 0 in internal nodes.
* Internal nodes: ``keys[0]`` is written as 0 and never read.
* Entries at and beyond ``count`` of the key, child and slot arrays are zero
  (not verified: nothing reads them).
* Leaves: slot ``i`` = (offset, length) of the value of ``keys[i]``.  A value
  of length 0 has an arbitrary offset, never read (new ones use BLOCK_SIZE).
  Replacing a value by one no longer overwrites it in place; a longer one, or a
  new key, takes ``length`` bytes below ``heap``; deleting the value at ``heap``
  gives its bytes back, any other deleted or replaced value stays as garbage.
  Compaction (and every split) rewrites the leaf: values packed downward from
  BLOCK_SIZE in key order, no garbage, unused key and slot entries zero.

Invariants (``check`` verifies all of them)
  1. ``root == 0`` iff ``height == 0``; otherwise the root is at level
     ``height - 1``, the children of a node at level L are at level L - 1, and
     leaves are at level 0.
  2. Every node has ``1 <= count <= cap`` (INTERNAL_CAP or LEAF_CAP): there are
     no empty nodes, and the empty tree has no root.  An internal root has at
     least two children.
  3. A node whose range is [lo, hi) (the whole key space for the root) has
     ``lo < keys[1] < ... < keys[count - 1] < hi`` (internal) or
     ``lo <= keys[0] < ... < keys[count - 1] < hi`` (leaf); child ``i`` has the
     range [keys[i], keys[i + 1]), with lo for i = 0 and hi for the last child.
  4. In a leaf ``LEAF_HEAP_MIN <= heap <= BLOCK_SIZE`` and every value of
     non-zero length lies in [heap, BLOCK_SIZE) without overlapping another.
  5. Every node has a valid checksum, magic, owner, kind and its own block
     number, even in the uncommitted copies of a transaction.
  6. Every node is reachable by exactly one path (a tree, not a DAG).
  7. Any value of at most MAX_VALUE bytes fits an empty leaf.

Caveats
  * One writer: the caller holds the journal (one transaction at a time).
  * ``Reader.read`` of a block number beyond the device raises Corrupted
    (PmemStore does); the tree re-raises it naming the node that pointed there.
  * The read path trusts a node whose checksum and header are right: sorted
    keys and sane slots are checked by ``check`` (fsck), not on every read, so
    a node that a bug wrote wrongly (but sealed) gives wrong answers, never an
    exception other than ``Corrupted`` and never a loop.
"""

from __future__ import annotations

import array
import struct
import sys
from bisect import bisect_left, bisect_right
from collections.abc import Iterator
from itertools import pairwise
from typing import Protocol

from daxfs.errors import Corrupted, InvalidArgument
from daxfs.fs import _create
from daxfs.fs.journal import Transaction
from daxfs.fs.layout import (
    BLOCK_SIZE,
    INTERNAL_CAP,
    INTERNAL_CHILDREN,
    LEAF_CAP,
    LEAF_HEAP_MIN,
    LEAF_SLOTS,
    MAX_VALUE,
    NODE_HEADER,
    NODE_KEYS,
    NODE_MAGIC,
    node_ok,
    seal_node,
)
from daxfs.fs.store import VERIFIED_LIMIT, Reader

# memoryview.cast("Q") reads native integers; the format is little-endian.
assert sys.byteorder == "little", "daxfs.fs.btree assumes a little-endian CPU"

KEY_LIMIT = 1 << 64  # keys are 0 <= key < KEY_LIMIT
_COUNT_AT = 26  # offsets of count and heap in NODE_HEADER
_HEAP_AT = 30
assert NODE_HEADER.unpack(struct.pack("<26xH2xH8x", 7, 9))[5::2] == (7, 9)
_U16 = struct.Struct("<H")
_U64 = struct.Struct("<Q")
_SLOT = struct.Struct("<HH")
_ZERO8 = bytes(8)
#: whether ``put`` tries the C in-place put first (``_create.tree_put``: the descent,
#: the private copy and the leaf change of the reference below, in one call); tests
#: turn it off to run the reference alone
NATIVE_PUT = True

Entry = tuple[int, bytes]
#: (block, view, index of the child taken, count) of each internal node on a descent
Path = list[tuple[int, memoryview, int, int]]


class NodeAllocator(Protocol):
    """Where nodes come from and go back to (the block allocator, in the same transaction)."""

    def alloc_node(self, tx: Transaction, goal: int) -> int:
        """A free block near ``goal`` (0: no preference), marked used.  Raises NoSpace."""
        ...

    def free_node(self, tx: Transaction, blockno: int) -> None: ...


def _check_key(key: int) -> None:
    if not 0 <= key < KEY_LIMIT:
        raise InvalidArgument(f"B+tree key {key} is not a u64")


def _keys(view: memoryview, count: int) -> memoryview:
    return view[NODE_KEYS : NODE_KEYS + 8 * count].cast("Q")


def _fits(entries: list[Entry]) -> bool:
    return len(entries) <= LEAF_CAP and sum(len(v) for _, v in entries) <= MAX_VALUE


def _bounds(path: Path) -> tuple[int, int]:
    """The range [lo, hi) of the leaf at the end of ``path`` (0 / KEY_LIMIT: unbounded)."""
    lo, hi = 0, KEY_LIMIT
    for _, view, idx, count in path:
        if idx > 0:
            (lo,) = _U64.unpack_from(view, NODE_KEYS + 8 * idx)
        if idx + 1 < count:
            (hi,) = _U64.unpack_from(view, NODE_KEYS + 8 * idx + 8)
    return lo, hi


def _split_entries(entries: list[Entry], new: int, rightmost: bool) -> list[list[Entry]]:
    """Cut an overfull leaf's entries into 2 or 3 leaves that fit; ``new`` = changed entry."""
    n = len(entries)
    if rightmost and new == n - 1 and _fits(entries[:-1]):
        return [entries[:-1], entries[-1:]]
    sizes = [len(v) for _, v in entries]
    total = sum(sizes)
    best: tuple[float, int] | None = None
    acc = 0
    for p in range(1, n):
        acc += sizes[p - 1]
        if p > LEAF_CAP or n - p > LEAF_CAP or acc > MAX_VALUE or total - acc > MAX_VALUE:
            continue
        left = max(p / LEAF_CAP, acc / MAX_VALUE)
        right = max((n - p) / LEAF_CAP, (total - acc) / MAX_VALUE)
        if best is None or abs(left - right) < best[0]:
            best = (abs(left - right), p)
    if best is not None:
        return [entries[: best[1]], entries[best[1] :]]
    parts = [entries[:new], entries[new : new + 1], entries[new + 1 :]]
    parts = [part for part in parts if part]
    assert all(_fits(part) for part in parts)
    return parts


def _leaf_entries(view: memoryview, count: int) -> list[Entry]:
    keys = _keys(view, count).tolist()
    slots = struct.unpack_from(f"<{2 * count}H", view, LEAF_SLOTS)
    return [
        (k, bytes(view[o : o + n])) for k, o, n in zip(keys, slots[::2], slots[1::2], strict=True)
    ]


def _leaf_put(view: memoryview, count: int, key: int, value: bytes) -> tuple[list[Entry], int]:
    """Insert or replace in place if the leaf has room; else return (entries, index) to rebuild.

    An empty list means done.
    """
    i = bisect_left(_keys(view, count), key)
    found = i < count and _U64.unpack_from(view, NODE_KEYS + 8 * i)[0] == key
    n = len(value)
    slot = LEAF_SLOTS + 4 * i
    if found:
        off, old = _SLOT.unpack_from(view, slot)
        if n <= old:  # overwrite; the tail of the old value becomes garbage
            view[off : off + n] = value
            _SLOT.pack_into(view, slot, off, n)
            return [], i
    (heap,) = _U16.unpack_from(view, _HEAP_AT)
    if (found or count < LEAF_CAP) and n <= heap - LEAF_HEAP_MIN:
        if n:
            heap -= n
            view[heap : heap + n] = value
            _U16.pack_into(view, _HEAP_AT, heap)
        if not found:
            end = NODE_KEYS + 8 * count
            view[NODE_KEYS + 8 * i + 8 : end + 8] = view[NODE_KEYS + 8 * i : end]
            end = LEAF_SLOTS + 4 * count
            view[slot + 4 : end + 4] = view[slot:end]
            _U64.pack_into(view, NODE_KEYS + 8 * i, key)
            _U16.pack_into(view, _COUNT_AT, count + 1)
        _SLOT.pack_into(view, slot, heap if n else BLOCK_SIZE, n)
        return [], i
    entries = _leaf_entries(view, count)
    if found:
        entries[i] = (key, bytes(value))
    else:
        entries.insert(i, (key, bytes(value)))
    return entries, i


def _leaf_remove(view: memoryview, count: int, i: int) -> None:
    off, n = _SLOT.unpack_from(view, LEAF_SLOTS + 4 * i)
    end = NODE_KEYS + 8 * count
    view[NODE_KEYS + 8 * i : end - 8] = view[NODE_KEYS + 8 * i + 8 : end]
    view[end - 8 : end] = _ZERO8
    end = LEAF_SLOTS + 4 * count
    view[LEAF_SLOTS + 4 * i : end - 4] = view[LEAF_SLOTS + 4 * i + 4 : end]
    view[end - 4 : end] = _ZERO8[:4]
    (heap,) = _U16.unpack_from(view, _HEAP_AT)
    if n and off == heap:  # the lowest value: give its bytes back to the heap
        _U16.pack_into(view, _HEAP_AT, heap + n)
    _U16.pack_into(view, _COUNT_AT, count - 1)


def _internal_insert(view: memoryview, count: int, at: int, pairs: list[tuple[int, int]]) -> None:
    """Insert (separator, child) pairs before entry ``at`` (>= 1) of a node with room."""
    k = len(pairs)
    for base in (NODE_KEYS, INTERNAL_CHILDREN):
        start, end = base + 8 * at, base + 8 * count
        view[start + 8 * k : end + 8 * k] = view[start:end]
    struct.pack_into(f"<{k}Q", view, NODE_KEYS + 8 * at, *(s for s, _ in pairs))
    struct.pack_into(f"<{k}Q", view, INTERNAL_CHILDREN + 8 * at, *(c for _, c in pairs))
    _U16.pack_into(view, _COUNT_AT, count + k)


def _internal_remove(view: memoryview, count: int, at: int) -> None:
    for base in (NODE_KEYS, INTERNAL_CHILDREN):
        start, end = base + 8 * at, base + 8 * count
        view[start : end - 8] = view[start + 8 : end]
        view[end - 8 : end] = _ZERO8
    view[NODE_KEYS : NODE_KEYS + 8] = _ZERO8  # the new keys[0], if at == 0
    _U16.pack_into(view, _COUNT_AT, count - 1)


def _remember(verified: set[int], blockno: int) -> bool:
    """Record a node whose checksum just passed (bounded, as PmemStore.mark_verified)."""
    if len(verified) >= VERIFIED_LIMIT:
        verified.clear()
    verified.add(blockno)
    return True


class BTree:
    """A B+tree rooted in an inode: root block (0 = empty), height (0 = empty, 1 = a leaf).

    ``root`` and ``height`` change on splits and collapses; the caller stores
    them back in its inode, and restores them if the transaction aborts.
    """

    def __init__(self, owner: int, kind: int, root: int, height: int, nodes: NodeAllocator) -> None:
        self.owner = owner
        self.kind = kind
        self.root = root
        self.height = height
        self.allocator = nodes

    def __repr__(self) -> str:
        return f"<BTree of inode {self.owner} kind={self.kind} root={self.root} h={self.height}>"

    # -- verified node access -----------------------------------------------------------

    def _corrupt(self, blockno: int, problem: str) -> Corrupted:
        return Corrupted(f"B+tree of inode {self.owner}, node {blockno}: {problem}")

    def _problem(self, view: memoryview, blockno: int, level: int) -> str | None:
        """What is wrong with a node's header, or None."""
        if len(view) != BLOCK_SIZE:
            return "block number outside the filesystem"
        magic, _, owner, where, lvl, count, kind, heap, _ = NODE_HEADER.unpack_from(view)
        if magic != NODE_MAGIC:
            return f"bad magic {magic:#x}"
        if not node_ok(view):
            return "checksum mismatch"
        if owner != self.owner:
            return f"belongs to inode {owner}"
        if kind != self.kind:
            return f"tree kind {kind}, expected {self.kind}"
        if where != blockno:
            return f"header says it is block {where} (misdirected write?)"
        if lvl != level:
            return f"level {lvl}, expected {level}"
        if not 0 < count <= (INTERNAL_CAP if level else LEAF_CAP):
            return f"count {count} out of range"
        if level == 0 and not LEAF_HEAP_MIN <= heap <= BLOCK_SIZE:
            return f"heap offset {heap} out of range"
        return None

    def _node(self, reader: Reader, blockno: int, level: int) -> tuple[memoryview, int]:
        """Read and verify a node; return its view and count.  Raises Corrupted."""
        try:
            view = reader.read(blockno)
            magic, _, owner, where, lvl, count, kind, heap, _ = NODE_HEADER.unpack_from(view)
        except (Corrupted, struct.error) as exc:
            raise self._corrupt(blockno, "block number outside the filesystem") from exc
        verified = reader.verified
        if not (
            len(view) == BLOCK_SIZE
            and magic == NODE_MAGIC
            and (blockno in verified or (node_ok(view) and _remember(verified, blockno)))
            and owner == self.owner
            and where == blockno
            and kind == self.kind
            and lvl == level
            and 0 < count <= (INTERNAL_CAP if level else LEAF_CAP)
            and (level or LEAF_HEAP_MIN <= heap <= BLOCK_SIZE)
        ):
            raise self._corrupt(blockno, self._problem(view, blockno, level) or "bad header")
        return view, count

    def _empty(self) -> bool:
        if self.height == 0 or self.root == 0:
            if self.height or self.root:
                raise self._corrupt(self.root, f"root {self.root} with height {self.height}")
            return True
        return False

    def _descend(self, reader: Reader, key: int) -> tuple[Path, int, memoryview, int]:
        """Path of internal nodes to the leaf for ``key``, and the leaf (block, view, count)."""
        path: Path = []
        blockno = self.root
        for level in range(self.height - 1, 0, -1):
            view, count = self._node(reader, blockno, level)
            i = bisect_right(view[NODE_KEYS : NODE_KEYS + 8 * count].cast("Q"), key, 1) - 1
            path.append((blockno, view, i, count))
            (blockno,) = _U64.unpack_from(view, INTERNAL_CHILDREN + 8 * i)
        view, count = self._node(reader, blockno, 0)
        return path, blockno, view, count

    def _value(self, view: memoryview, blockno: int, i: int) -> bytes:
        off, n = _SLOT.unpack_from(view, LEAF_SLOTS + 4 * i)
        if n and not (off >= LEAF_HEAP_MIN and off + n <= BLOCK_SIZE):
            raise self._corrupt(blockno, f"slot {i} ({off}, {n}) outside the heap")
        return bytes(view[off : off + n])

    # -- read side ----------------------------------------------------------------------

    def get(self, reader: Reader, key: int) -> bytes | None:
        """The value of ``key``, or None.

        Raises:
            Corrupted (EUCLEAN): a node on the way failed verification.
        """
        if self._empty():
            return None
        _, blockno, view, count = self._descend(reader, key)
        keys = _keys(view, count)
        i = bisect_left(keys, key)
        if i < count and keys[i] == key:
            return self._value(view, blockno, i)
        return None

    def floor(self, reader: Reader, key: int) -> tuple[int, bytes] | None:
        """The entry with the greatest key <= ``key``, or None.

        Raises:
            Corrupted (EUCLEAN): a node on the way failed verification.
        """
        if self._empty():
            return None
        path, blockno, view, count = self._descend(reader, key)
        i = bisect_right(_keys(view, count), key) - 1
        if i < 0:  # nothing here: the answer is the last key of the previous leaf
            lo = _bounds(path)[0]
            if lo == 0:
                return None
            _, blockno, view, count = self._descend(reader, lo - 1)
            i = count - 1
        found = int(_keys(view, count)[i])
        if found > key:
            raise self._corrupt(blockno, f"key {found} disagrees with the separators above")
        return found, self._value(view, blockno, i)

    def ceiling(self, reader: Reader, key: int) -> tuple[int, bytes] | None:
        """The entry with the least key >= ``key``, or None.

        Raises:
            Corrupted (EUCLEAN): a node on the way failed verification.
        """
        if self._empty():
            return None
        path, blockno, view, count = self._descend(reader, key)
        i = bisect_left(_keys(view, count), key)
        if i == count:  # nothing here: the answer is the first key of the next leaf
            hi = _bounds(path)[1]
            if hi == KEY_LIMIT:
                return None
            _, blockno, view, count = self._descend(reader, hi)
            i = 0
        found = int(_keys(view, count)[i])
        if found < key:
            raise self._corrupt(blockno, f"key {found} disagrees with the separators above")
        return found, self._value(view, blockno, i)

    def items(
        self, reader: Reader, start: int = 0, end: int = KEY_LIMIT
    ) -> Iterator[tuple[int, bytes]]:
        """Entries with ``start <= key < end``, in ascending key order.

        Each leaf is read afresh from the root, so changing the tree between
        two steps is allowed: later steps see the change, from where they are.

        Raises:
            Corrupted (EUCLEAN): a node on the way failed verification.
        """
        end = min(end, KEY_LIMIT)
        while start < end and not self._empty():
            batch, start = self._leaf_items(reader, start, end)
            yield from batch

    def _leaf_items(self, reader: Reader, start: int, end: int) -> tuple[list[Entry], int]:
        """Entries of the leaf for ``start`` in [start, end), and where the next leaf starts."""
        path, blockno, view, count = self._descend(reader, start)
        keys = _keys(view, count)
        i, j = bisect_left(keys, start), bisect_left(keys, end)
        batch = [(int(keys[x]), self._value(view, blockno, x)) for x in range(i, j)]
        hi = _bounds(path)[1] if j == count else KEY_LIMIT
        if hi <= start:
            raise self._corrupt(blockno, f"separator {hi} does not advance past {start}")
        return batch, hi

    def nodes(self, reader: Reader) -> Iterator[int]:
        """Every node's block number, parents before children (each verified first).

        Raises:
            Corrupted (EUCLEAN): a node failed verification or is reachable twice.
        """
        for blockno, _, _, _ in self._walk(reader):
            yield blockno

    def leaves(self, reader: Reader) -> Iterator[tuple[int, memoryview, int]]:
        """Every leaf, left to right, as (block, view, count).

        Each node is verified as a descent verifies it, and the walk is
        bounded as ``nodes`` is (the same walk: a node reachable twice is
        damage).  The keys come out ascending in a sound tree; the caller
        checks that if it relies on it (node contents past the header are not
        verified on reads).

        Raises:
            Corrupted (EUCLEAN): a node failed verification or is reachable twice.
        """
        for blockno, level, view, count in self._walk(reader):
            if level == 0:
                yield blockno, view, count

    def _walk(self, reader: Reader) -> Iterator[tuple[int, int, memoryview, int]]:
        """Every node as (block, level, view, count), depth first, parents before
        children, children left to right; each node verified (``_node``) before it
        is yielded.  The one walk of ``nodes`` and ``leaves``.

        Raises:
            Corrupted (EUCLEAN): a node failed verification or is reachable twice.
        """
        if self._empty():
            return
        seen: set[int] = set()
        stack = [(self.root, self.height - 1)]
        while stack:
            blockno, level = stack.pop()
            if blockno in seen:
                raise self._corrupt(blockno, "reachable twice")
            seen.add(blockno)
            view, count = self._node(reader, blockno, level)
            if level:
                children = struct.unpack_from(f"<{count}Q", view, INTERNAL_CHILDREN)
                stack.extend((child, level - 1) for child in reversed(children))
            yield blockno, level, view, count

    def keys(self, reader: Reader) -> array.array[int]:
        """Every key, leaves left to right, as an array of u64 (see ``leaves``).

        Raises:
            Corrupted (EUCLEAN): a node failed verification or is reachable twice.
        """
        out: array.array[int] = array.array("Q")
        for _, view, count in self.leaves(reader):
            out.frombytes(view[NODE_KEYS : NODE_KEYS + 8 * count])
        return out

    def check(self, reader: Reader) -> list[str]:
        """Verify every node and invariant of the module docstring; describe each problem.

        Never raises on a corrupt tree; an empty list means the tree is sound.
        """
        problems: list[str] = []
        if (self.root == 0) != (self.height == 0):
            return [f"B+tree of inode {self.owner}: root {self.root} with height {self.height}"]
        seen: set[int] = set()
        stack = [(self.root, self.height - 1, 0, KEY_LIMIT)] if self.root else []
        while stack:
            blockno, level, lo, hi = stack.pop()
            if blockno in seen:
                problems.append(f"B+tree of inode {self.owner}, node {blockno}: reachable twice")
                continue
            seen.add(blockno)
            try:
                found, children = self._check_node(reader, blockno, level, lo, hi)
            except Exception as exc:
                found, children = [f"cannot check: {exc}"], []
            problems += [f"B+tree of inode {self.owner}, node {blockno}: {p}" for p in found]
            stack.extend(reversed(children))
        return problems

    def _check_node(
        self, reader: Reader, blockno: int, level: int, lo: int, hi: int
    ) -> tuple[list[str], list[tuple[int, int, int, int]]]:
        """Problems of one node whose range is [lo, hi), and its children to check."""
        try:
            view = reader.read(blockno)
        except Corrupted:
            return ["block number outside the filesystem"], []
        problem = self._problem(view, blockno, level)
        if problem is not None:
            return [problem], []
        _, _, _, _, _, count, _, heap, reserved = NODE_HEADER.unpack_from(view)
        problems = [f"reserved header field is {reserved:#x}"] if reserved else []
        keys = list(struct.unpack_from(f"<{count}Q", view, NODE_KEYS))
        if level == 0:
            return problems + self._check_leaf(view, keys, heap, lo, hi), []
        if heap:
            problems.append(f"heap field {heap} in an internal node")
        if keys[0]:
            problems.append(f"key 0 is {keys[0]}, not 0")
        if count == 1 and blockno == self.root:
            problems.append("the root has a single child")
        fences = [lo, *keys[1:], hi]
        if any(a >= b for a, b in pairwise(fences)):
            problems.append(f"separators {keys[1:]} not increasing within [{lo}, {hi})")
            return problems, []
        children = struct.unpack_from(f"<{count}Q", view, INTERNAL_CHILDREN)
        return problems, [(c, level - 1, fences[i], fences[i + 1]) for i, c in enumerate(children)]

    def _check_leaf(
        self, view: memoryview, keys: list[int], heap: int, lo: int, hi: int
    ) -> list[str]:
        problems = []
        if any(a >= b for a, b in pairwise(keys)):
            problems.append("keys not strictly increasing")
        if keys[0] < lo or keys[-1] >= hi:
            problems.append(f"keys {keys[0]}..{keys[-1]} outside the range [{lo}, {hi})")
        slots = struct.unpack_from(f"<{2 * len(keys)}H", view, LEAF_SLOTS)
        used = sorted((o, n) for o, n in zip(slots[::2], slots[1::2], strict=True) if n)
        bad = [(o, n) for o, n in used if o < heap or o + n > BLOCK_SIZE]
        if bad:
            problems.append(f"values {bad[:3]} outside the heap [{heap}, {BLOCK_SIZE})")
        if any(o + n > o2 for (o, n), (o2, _) in pairwise(used)):
            problems.append("values overlap")
        return problems

    # -- write side ---------------------------------------------------------------------

    def put(self, tx: Transaction, key: int, value: bytes) -> None:
        """Insert ``key`` or replace its value.

        Raises:
            InvalidArgument (EINVAL): ``key`` is not a u64 or ``value`` exceeds MAX_VALUE.
            Corrupted (EUCLEAN): a node on the way failed verification (tree unchanged).
            NoSpace (ENOSPC): no block for a split (tree unchanged).
        """
        _check_key(key)
        if len(value) > MAX_VALUE:
            raise InvalidArgument(f"B+tree value of {len(value)} bytes exceeds {MAX_VALUE}")
        if self._empty():
            blockno = self.allocator.alloc_node(tx, 0)
            self._write_new(tx, blockno, self._encode_leaf(blockno, [(key, bytes(value))]))
            self.root, self.height = blockno, 1
            return
        if (
            NATIVE_PUT
            and not tx.store.lazy
            and _create.tree_put(
                tx.blocks,
                tx.new_blocks,
                tx.store.view,
                tx.verified,
                seal_node,
                self.owner,
                self.kind,
                self.root,
                self.height,
                key,
                value,
            )
        ):
            return  # the leaf had room: what the code below does then, in C
        path, blockno, view, count = self._descend(tx, key)
        view = tx.write(blockno, seal=seal_node)
        entries, i = _leaf_put(view, count, key, value)
        if entries and _fits(entries):  # compaction makes room
            view[:] = self._encode_leaf(blockno, entries)
        elif entries:
            parts = _split_entries(entries, i, _bounds(path)[1] == KEY_LIMIT)
            spare = self._alloc_for_split(tx, path, len(parts) - 1, blockno)
            view[:] = self._encode_leaf(blockno, parts[0])
            pairs = []
            for part in parts[1:]:
                new = spare.pop()
                self._write_new(tx, new, self._encode_leaf(new, part))
                pairs.append((part[0][0], new))
            self._insert_up(tx, path, pairs, spare)
        seal_node(view)

    def _alloc_for_split(
        self, tx: Transaction, path: Path, new_leaves: int, goal: int
    ) -> list[int]:
        """Allocate every node a split will need, or none (NoSpace).  Pop order = use order."""
        needed, carry = new_leaves, new_leaves
        for _, _, _, count in reversed(path):
            if count + carry <= INTERNAL_CAP:
                carry = 0
                break
            needed, carry = needed + 1, 1
        needed += 1 if carry else 0  # a new root
        got: list[int] = []
        try:
            while len(got) < needed:
                got.append(self.allocator.alloc_node(tx, got[-1] if got else goal))
        except BaseException:
            for blockno in got:
                self.allocator.free_node(tx, blockno)
            raise
        got.reverse()
        return got

    def _insert_up(
        self, tx: Transaction, path: Path, pairs: list[tuple[int, int]], spare: list[int]
    ) -> None:
        """Insert (separator, child) pairs in the parents of a split node, splitting them too."""
        level = 1
        for blockno, _, idx, count in reversed(path):
            view = tx.write(blockno, seal=seal_node)
            if count + len(pairs) <= INTERNAL_CAP:
                _internal_insert(view, count, idx + 1, pairs)
                seal_node(view)
                return
            keys = list(struct.unpack_from(f"<{count}Q", view, NODE_KEYS))
            children = list(struct.unpack_from(f"<{count}Q", view, INTERNAL_CHILDREN))
            keys[idx + 1 : idx + 1] = [s for s, _ in pairs]
            children[idx + 1 : idx + 1] = [c for _, c in pairs]
            half = len(keys) // 2
            new = spare.pop()
            view[:] = self._encode_internal(blockno, level, keys[:half], children[:half])
            seal_node(view)
            self._write_new(
                tx, new, self._encode_internal(new, level, keys[half:], children[half:])
            )
            pairs = [(keys[half], new)]
            level += 1
        root = spare.pop()  # the root split: the tree grows a level
        keys = [0] + [s for s, _ in pairs]
        children = [self.root] + [c for _, c in pairs]
        self._write_new(tx, root, self._encode_internal(root, self.height, keys, children))
        self.root, self.height = root, self.height + 1
        assert not spare

    def delete(self, tx: Transaction, key: int) -> bool:
        """Remove ``key``; False if it was absent.

        Raises:
            Corrupted (EUCLEAN): a node on the way failed verification (tree unchanged).
        """
        if self._empty() or not 0 <= key < KEY_LIMIT:
            return False
        path, blockno, view, count = self._descend(tx, key)
        keys = _keys(view, count)
        i = bisect_left(keys, key)
        if i == count or keys[i] != key:
            return False
        if count > 1:
            view = tx.write(blockno, seal=seal_node)
            _leaf_remove(view, count, i)
            seal_node(view)
            return True
        self._free(tx, blockno)
        while path:  # remove the emptied node from its parent, up the path
            blockno, _, idx, count = path.pop()
            if count > 1:
                view = tx.write(blockno, seal=seal_node)
                _internal_remove(view, count, idx)
                seal_node(view)
                if not path:
                    self._collapse(tx)
                return True
            self._free(tx, blockno)
        self.root, self.height = 0, 0
        return True

    def _collapse(self, tx: Transaction) -> None:
        """Replace a root that has a single child by that child, while there is one."""
        while self.height > 1:
            view, count = self._node(tx, self.root, self.height - 1)
            if count > 1:
                return
            (child,) = _U64.unpack_from(view, INTERNAL_CHILDREN)
            self._free(tx, self.root)
            self.root, self.height = child, self.height - 1

    def clear(self, tx: Transaction) -> int:
        """Free every node; the tree becomes empty.  Return the number of nodes freed.

        Raises:
            Corrupted (EUCLEAN): a node failed verification (nothing freed).
        """
        blocks = list(self.nodes(tx))
        for blockno in blocks:
            self._free(tx, blockno)
        self.root, self.height = 0, 0
        return len(blocks)

    # -- node encoding ------------------------------------------------------------------

    def _free(self, tx: Transaction, blockno: int) -> None:
        tx.forget(blockno)
        self.allocator.free_node(tx, blockno)

    def _write_new(self, tx: Transaction, blockno: int, node: bytearray) -> None:
        view = tx.new_block(blockno, seal=seal_node)
        view[:] = node
        seal_node(view)

    def _header(self, buf: bytearray, blockno: int, level: int, count: int, heap: int) -> None:
        NODE_HEADER.pack_into(
            buf, 0, NODE_MAGIC, 0, self.owner, blockno, level, count, self.kind, heap, 0
        )

    def _encode_leaf(self, blockno: int, entries: list[Entry]) -> bytearray:
        """A whole leaf holding ``entries`` (sorted, fitting), values packed from the end."""
        buf = bytearray(BLOCK_SIZE)
        heap = BLOCK_SIZE
        slots: list[int] = []
        for _, value in entries:
            n = len(value)
            heap -= n
            buf[heap : heap + n] = value
            slots += (heap if n else BLOCK_SIZE, n)
        count = len(entries)
        struct.pack_into(f"<{count}Q", buf, NODE_KEYS, *(k for k, _ in entries))
        struct.pack_into(f"<{2 * count}H", buf, LEAF_SLOTS, *slots)
        self._header(buf, blockno, 0, count, heap)
        return buf

    def _encode_internal(
        self, blockno: int, level: int, keys: list[int], children: list[int]
    ) -> bytearray:
        """A whole internal node; ``keys[0]`` is stored as 0."""
        buf = bytearray(BLOCK_SIZE)
        count = len(keys)
        struct.pack_into(f"<{count}Q", buf, NODE_KEYS, 0, *keys[1:])
        struct.pack_into(f"<{count}Q", buf, INTERNAL_CHILDREN, *children)
        self._header(buf, blockno, level, count, 0)
        return buf
