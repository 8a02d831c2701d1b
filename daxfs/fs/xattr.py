"""Extended attributes: inline in the inode when small, else in one xattr block.

Theory of operation
-------------------
Where attributes live.  An inode's attributes are in one of two places,
never both (docs/FORMAT.md, "Inline extended attributes", "Extended
attributes"):

* *inline*, in its record: packed at the end of the 120-byte extent area of
  the inline area, ``xattr_bytes`` (inode bytes 108..109) of them, each a
  name length, a value length, the name and the value; the inline extents
  of a MAP_INLINE map keep the start of the area, so the map then holds at
  most ``rec.extent_room`` = (120 - xattr_bytes) // 24 extents;
* in its *xattr block*, whose number is the last 8 bytes of the inline area
  (``InodeRecord.xattr``, 0: none).  The block holds every entry, sorted by
  full name (``user.x``): the name, and the value itself when it is short
  (at most ``XATTR_INLINE_MAX`` bytes), else the list of the blocks that
  hold it and its crc32c (at most 16 for the 64 KiB Linux allows).  All
  entries share the block's 4032 bytes: an attribute that does not fit is
  ENOSPC, as on ext4 without ``ea_inode``.

The placement rule, applied at every change (``set``, ``remove``): the
whole set of attributes the change leaves is stored inline if it fits the
room the map leaves (120 bytes, less 24 per inline extent), else all of it
in the xattr block.  So a set that outgrows the record moves every inline
entry into a new block, and a removal that makes the set fit again moves
the block's entries inline and frees the block, each in the change's own
transaction.  The map has the first claim on the area: when an inline map
grows past ``extent_room`` it becomes a B+tree (daxfs.fs.extmap), leaving
the attributes where they are; an attribute change never moves extents.

Every change is one transaction of the caller's (``set``, ``remove``,
``free_all``): the inode record (inline attributes, ``xattr_bytes``, the
block pointer, ``blocks``) is journaled whole; the xattr block is changed
through ``Transaction.write`` (its changed lines are journaled) or, when
new, allocated and written in place; a long value is written into new
blocks (in place, flushed before the commit point), and the blocks of the
value it replaces are freed in the same transaction.  So a crash leaves the
old set of attributes or the new one, never a mix.  The inode counts the
xattr block and the value blocks in ``blocks`` (st_blocks), as ext4 counts
its xattr block; inline attributes take no block.  The first attribute of
an image also sets ``RO_COMPAT_XATTR`` in the superblock, and the first
stored inline ``RO_COMPAT_XATTR_INLINE``, in the same transaction
(``SuperState.enable``).

Reads decode the committed block once: ``XattrStore`` remembers an inode's
checked entries with the block's stored checksum, and reuses them while that
field is unchanged (every change rewrites it), as the inode cache remembers
records it verified; a block damaged after that is seen at the next mount.
Inline entries are remembered by the identity of the record's inline bytes
(as extmap's decoded inline maps).  A long value is read and its crc32c
checked at every get.

What is read from the media is checked before use: the inline bytes
(``layout.unpack_inline_xattrs``: the type, the count against the area and
the inline extents, every length, names valid, sorted, unique), the block
(``layout.unpack_xattr_block``: magic, checksum, owner, place, every length,
name and count), every value block number (``layout.xattr_blocks_problem``:
inside the data area, none twice), and a long value's crc32c
(``layout.xattr_value``); fsck checks with the same functions.  A failure is
EUCLEAN naming the inode.

Which names, on which files (as Linux allows them, fs/xattr.c and
security/commoncap.c):

* ``user.``: regular files and directories only; anything else is EPERM to
  change and has none to read (ENODATA), as Linux's ``xattr_permission``.
* ``trusted.``: read and written only with CAP_SYS_ADMIN, which daxfs
  takes to be an effective uid of 0 (``privileged``); without it a
  ``trusted.`` name is EPERM and ``listxattr`` leaves such names out.
* ``security.``: anyone reads, only CAP_SYS_ADMIN writes (commoncap's rule
  with no security module to decide otherwise).
* ``system.`` (POSIX ACLs) and every other prefix: EOPNOTSUPP, as Linux for
  a filesystem without the handler; a known prefix with nothing after it
  (``user.``) is EINVAL; an empty name or one past 255 bytes is ERANGE; a
  value past 64 KiB is E2BIG.
* A symbolic link itself (``follow_symlinks=False``) carries none: its
  inline area may be its whole target.  Changing one is EPERM for ``user.``
  (as Linux) and EOPNOTSUPP for the others (Linux would store them).

Invariants
  1. An inode's attributes are all inline (``xattr_bytes`` > 0, no xattr
     block) or all in its xattr block (``xattr_bytes`` == 0), and it has
     either only while it has at least one attribute; entries are sorted by
     name, names unique and valid (``xattr_name_ok``), and their sizes fit
     (inline: beside the inline extents, ``xattr_bytes`` <= 120 - 24 *
     map_count; in the block: its 4032 bytes).
  2. After a change, the attributes are inline iff they fit there (the
     placement rule); an extent insert may later shrink the room below them,
     which turns the map into a B+tree, never the attributes into a block.
  3. Every block the block or its entries name is allocated in the bitmap
     and owned by that inode alone; ``blocks`` counts them.
  4. A value of at most XATTR_INLINE_MAX bytes is in its entry, a longer one
     in exactly ``value_blocks(length)`` blocks whose crc32c the entry holds.
  5. Only regular files and directories have an xattr block or inline
     attributes.
  6. An image any of whose inodes has an attribute has RO_COMPAT_XATTR, and
     one with inline attributes also RO_COMPAT_XATTR_INLINE.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable

from daxfs.errors import (
    BadRange,
    Corrupted,
    Exists,
    InvalidArgument,
    NoData,
    NoSpace,
    NotPermitted,
    NotSupported,
    TooBig,
)
from daxfs.fs.alloc import Allocator
from daxfs.fs.inode import Inode, InodeTable
from daxfs.fs.journal import Transaction
from daxfs.fs.layout import (
    BLOCK_SIZE,
    INLINE_XATTR_AREA,
    RO_COMPAT_XATTR,
    RO_COMPAT_XATTR_INLINE,
    XATTR_AREA,
    XATTR_CRC_OFFSET,
    XATTR_NAME_MAX,
    XATTR_PREFIXES,
    XATTR_SIZE_MAX,
    XATTR_TYPES,
    XattrEntry,
    crc32c,
    inline_xattr_size,
    pack_inline_xattrs,
    pack_xattr_block,
    unpack_inline_xattrs,
    unpack_xattr_block,
    value_blocks,
    xattr_blocks_problem,
    xattr_value,
)
from daxfs.fs.store import Reader
from daxfs.fs.super import SuperState

#: inodes whose decoded attributes ``XattrStore`` remembers at most (then it starts over)
DECODED_LIMIT = 4096
_CRC = struct.Struct("<I")

#: os.setxattr's flags: fail if the attribute exists / does not exist
XATTR_CREATE = getattr(os, "XATTR_CREATE", 1)
XATTR_REPLACE = getattr(os, "XATTR_REPLACE", 2)


def _is_root() -> bool:
    return os.geteuid() == 0


#: whether the caller has what Linux asks of trusted. and of writes to security.
#: (CAP_SYS_ADMIN): an effective uid of 0; tests replace it
privileged: Callable[[], bool] = _is_root


def attribute_name(attribute: object, shown: str) -> bytes:
    """The name ``attribute`` (str or bytes, as os takes it) as bytes.

    Raises:
        TypeError: not str or bytes.
        BadRange (ERANGE): empty, or longer than 255 bytes (as Linux).
        InvalidArgument (EINVAL): it holds a NUL byte.
    """
    if isinstance(attribute, str):
        name = os.fsencode(attribute)
    elif isinstance(attribute, bytes):
        name = attribute
    else:
        raise TypeError(f"attribute name must be str or bytes, not {type(attribute).__name__}")
    if not 0 < len(name) <= XATTR_NAME_MAX:
        raise BadRange(f"xattr name of {len(name)} bytes (1 to {XATTR_NAME_MAX}): {shown}", shown)
    if b"\0" in name:
        raise InvalidArgument(f"xattr name holds a NUL byte: {shown}", shown)
    return name


def check_set(value: object, flags: object, shown: str) -> bytes:
    """The value to store, after os.setxattr's checks of ``value`` and ``flags``.

    Raises:
        TypeError: ``value`` is not bytes-like, ``flags`` not an int.
        InvalidArgument (EINVAL): unknown flag bits.
        TooBig (E2BIG): the value is longer than 64 KiB.
    """
    if not isinstance(flags, int) or isinstance(flags, bool):
        raise TypeError(f"flags must be an int, not {type(flags).__name__}")
    if flags & ~(XATTR_CREATE | XATTR_REPLACE):
        raise InvalidArgument(f"unknown setxattr flags {flags:#x}: {shown}", shown)
    try:
        data = bytes(memoryview(value))  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"xattr value must be bytes-like, not {type(value).__name__}") from None
    if len(data) > XATTR_SIZE_MAX:
        raise TooBig(f"xattr value of {len(data)} bytes (at most {XATTR_SIZE_MAX}): {shown}", shown)
    return data


def _namespace(name: bytes, shown: str) -> bytes:
    """The prefix of ``name`` (``b"user."``, ...).

    Raises:
        NotSupported (EOPNOTSUPP): a namespace daxfs does not store.
        InvalidArgument (EINVAL): the prefix alone.
    """
    for prefix in XATTR_PREFIXES:
        if name.startswith(prefix):
            if len(name) == len(prefix):
                raise InvalidArgument(f"xattr name {name!r} has nothing after its prefix", shown)
            return prefix
    raise NotSupported(f"xattr namespace of {name[:40]!r} is not supported: {shown}", shown)


def check_access(inode: Inode, name: bytes, write: bool, shown: str) -> bool:
    """Check that ``name`` may be read (or changed: ``write``) on ``inode``.

    Returns False when a read must find nothing (ENODATA) without looking:
    ``user.`` on a file type that carries none.

    Raises:
        NotSupported (EOPNOTSUPP), InvalidArgument (EINVAL): the namespace.
        NotPermitted (EPERM): ``trusted.`` without privilege, a write to
            ``security.`` without it, a write of ``user.`` on a type other than
            a regular file or a directory.
        NotSupported (EOPNOTSUPP): a write to a symbolic link itself.
    """
    prefix = _namespace(name, shown)
    if (prefix == b"trusted." or (write and prefix == b"security.")) and not privileged():
        raise NotPermitted(f"{prefix.decode()} xattrs need CAP_SYS_ADMIN: {shown}", shown)
    if inode.fmt in XATTR_TYPES:
        return True
    if write and prefix == b"user.":
        raise NotPermitted(f"user xattrs only on regular files and directories: {shown}", shown)
    if write:
        raise NotSupported(f"daxfs stores no xattrs on a symbolic link: {shown}", shown)
    return False


def visible(name: bytes) -> bool:
    """Whether listxattr shows ``name`` to this caller (``trusted.`` needs privilege)."""
    return not name.startswith(b"trusted.") or privileged()


class XattrStore:
    """Reads and changes the xattr blocks of inodes (module docstring)."""

    def __init__(
        self, store: Reader, alloc: Allocator, itable: InodeTable, sup: SuperState
    ) -> None:
        self.store = store
        self.alloc = alloc
        self.itable = itable
        self.sup = sup
        #: ino -> (xattr block, its stored crc32c, its checked entries): what ``entries``
        #: decoded from the committed block, reused while the block's checksum field is
        #: the same (a change rewrites it; the entries were checked when decoded)
        self._decoded: dict[int, tuple[int, int, list[XattrEntry]]] = {}
        #: ino -> (inline bytes object, (xattr_bytes, map_kind, map_count), entries):
        #: what ``_inline`` decoded from a record's inline bytes
        self._inline_decoded: dict[int, tuple[bytes, tuple[int, int, int], list[XattrEntry]]] = {}

    # -- reading ----------------------------------------------------------------------

    def entries(self, reader: Reader, inode: Inode) -> list[XattrEntry]:
        """The attributes of ``inode`` as ``reader`` sees them, checked (none: []):
        the inline ones, or those of the xattr block (never both: invariant 1).

        Raises:
            Corrupted (EUCLEAN): the inline bytes, the block or a block number it
                names is bad, or the inode has both.
        """
        rec = inode.rec
        blockno = rec.xattr
        if rec.xattr_bytes:
            inline = self._inline(inode)
            if blockno:
                raise Corrupted(
                    f"inode {inode.ino}: xattrs both inline and in xattr block {blockno}"
                )
            return inline
        if blockno == 0:
            return []
        self._check_block(inode.ino, blockno, "its xattr block")
        block = reader.read(blockno)
        committed = reader is self.store
        if committed:
            hit = self._decoded.get(inode.ino)
            crc = _CRC.unpack_from(block, XATTR_CRC_OFFSET)[0]
            if hit is not None and hit[0] == blockno and hit[1] == crc:
                return hit[2]
        entries = unpack_xattr_block(block, inode.ino, blockno)
        sb = self.sup.sb
        seen = {blockno}
        for e in entries:
            problem = xattr_blocks_problem(e, seen, sb.data_start, sb.block_count - 1)
            if problem is not None:
                raise Corrupted(f"inode {inode.ino}: xattr {e.name!r}: {problem}")
        if committed:
            if len(self._decoded) >= DECODED_LIMIT:
                self._decoded.clear()
            self._decoded[inode.ino] = (blockno, crc, entries)
        return entries

    def _inline(self, inode: Inode) -> list[XattrEntry]:
        """The inline attributes of ``inode``, checked; remembered by the identity of
        the record's inline bytes (immutable: equal identity, equal bytes, as
        daxfs.fs.extmap's decoded inline maps) and the count.

        Raises:
            Corrupted (EUCLEAN): as ``layout.unpack_inline_xattrs``.
        """
        rec = inode.rec
        hit = self._inline_decoded.get(inode.ino)
        if (
            hit is not None
            and hit[0] is rec.inline
            and hit[1] == (rec.xattr_bytes, rec.map_kind, rec.map_count)
        ):
            return hit[2]
        entries = unpack_inline_xattrs(rec)
        if len(self._inline_decoded) >= DECODED_LIMIT:
            self._inline_decoded.clear()
        self._inline_decoded[inode.ino] = (
            rec.inline,
            (rec.xattr_bytes, rec.map_kind, rec.map_count),
            entries,
        )
        return entries

    def _check_block(self, ino: int, blockno: int, what: str) -> None:
        sb = self.sup.sb
        if not sb.data_start <= blockno < sb.block_count - 1:
            raise Corrupted(f"inode {ino}: {what} is block {blockno}, outside the data area")

    def value(self, reader: Reader, inode: Inode, entry: XattrEntry) -> bytes:
        """The value of ``entry`` (an entry of ``inode``'s, from ``entries``).

        Raises:
            Corrupted (EUCLEAN): a value in blocks fails its crc32c.
        """
        data = xattr_value(entry, reader.read)
        if data is None:
            raise Corrupted(f"inode {inode.ino}: xattr {entry.name!r}: value checksum mismatch")
        return data

    def get(self, reader: Reader, inode: Inode, name: bytes, shown: str) -> bytes:
        """The value of attribute ``name``.

        Raises:
            NoData (ENODATA): no such attribute; Corrupted (EUCLEAN).
        """
        for e in self.entries(reader, inode):
            if e.name == name:
                return self.value(reader, inode, e)
        raise NoData(f"no xattr {os.fsdecode(name)!r}: {shown}", shown)

    def owned(self, reader: Reader, inode: Inode) -> list[int]:
        """Every block the attributes of ``inode`` own: the xattr block, value blocks
        (inline attributes own none).

        Raises:
            Corrupted (EUCLEAN): as ``entries``.
        """
        entries = self.entries(reader, inode)
        if inode.rec.xattr == 0:
            return []
        return [inode.rec.xattr, *(b for e in entries for b in e.blocks)]

    # -- changes (caller holds the transaction, the filesystem and inode locks) ----------

    def set(
        self, tx: Transaction, inode: Inode, name: bytes, value: bytes, flags: int, shown: str
    ) -> None:
        """Set attribute ``name`` of ``inode`` to ``value`` in ``tx``.

        Raises:
            Exists (EEXIST): XATTR_CREATE and it exists.
            NoData (ENODATA): XATTR_REPLACE and it does not.
            NoSpace (ENOSPC): the entries would not fit the xattr block, or no
                blocks are free.
            Corrupted (EUCLEAN): the attributes on media are damaged.
            On an error the caller's transaction aborts: nothing changed.
        """
        entries = self.entries(tx, inode)
        old = next((e for e in entries if e.name == name), None)
        if old is not None and flags & XATTR_CREATE:
            raise Exists(f"xattr {os.fsdecode(name)!r} exists: {shown}", shown)
        if old is None and flags & XATTR_REPLACE:
            raise NoData(f"no xattr {os.fsdecode(name)!r}: {shown}", shown)
        n = value_blocks(len(value))
        new = XattrEntry(name, len(value), value if n == 0 else None, crc32c(value), (0,) * n)
        rest = [e for e in entries if e.name != name]
        after = sorted([*rest, new], key=lambda e: e.name)
        if self._fits_inline(inode, after):
            if old is not None:
                self._free_value(tx, inode, old)
            self._store_inline(tx, inode, after)
            self.sup.enable(tx, RO_COMPAT_XATTR | RO_COMPAT_XATTR_INLINE)
            return
        if sum(e.size for e in after) > XATTR_AREA:
            raise NoSpace(
                f"xattrs of this file would not fit its {BLOCK_SIZE}-byte xattr block: {shown}",
                shown,
            )
        rec = self.itable.dirty(tx, inode)
        if n:
            blocks = [
                b for start, length in self.alloc.alloc(tx, n) for b in range(start, start + length)
            ]
            for i, b in enumerate(blocks):
                piece = value[i * BLOCK_SIZE : (i + 1) * BLOCK_SIZE]
                block = tx.new_block(b)
                block[: len(piece)] = piece
                block[len(piece) :] = bytes(BLOCK_SIZE - len(piece))
            rec.blocks += n
            new = XattrEntry(name, len(value), None, new.crc, tuple(blocks))
        if old is not None:
            self._free_value(tx, inode, old)
        self._store(tx, inode, sorted([*rest, new], key=lambda e: e.name))
        self.sup.enable(tx, RO_COMPAT_XATTR)

    def remove(self, tx: Transaction, inode: Inode, name: bytes, shown: str) -> None:
        """Remove attribute ``name`` of ``inode`` in ``tx``.

        Raises:
            NoData (ENODATA): no such attribute; Corrupted (EUCLEAN).
        """
        entries = self.entries(tx, inode)
        old = next((e for e in entries if e.name == name), None)
        if old is None:
            raise NoData(f"no xattr {os.fsdecode(name)!r}: {shown}", shown)
        self._free_value(tx, inode, old)
        rest = [e for e in entries if e.name != name]
        if rest and self._fits_inline(inode, rest):
            self._store_inline(tx, inode, rest)
            self.sup.enable(tx, RO_COMPAT_XATTR | RO_COMPAT_XATTR_INLINE)
        else:
            self._store(tx, inode, rest)

    def free_all(self, tx: Transaction, inode: Inode) -> None:
        """Free every block the attributes of ``inode`` own (it is being freed), and
        clear its inline attributes.

        Raises:
            Corrupted (EUCLEAN): the attributes on media are damaged: nothing is
                freed, and the caller's transaction aborts (the unlink, rmdir or
                rename-over fails with EUCLEAN; fsck repairs the attributes).
        """
        if inode.rec.xattr == 0 and inode.rec.xattr_bytes == 0:
            return
        for e in self.entries(tx, inode):
            self._free_value(tx, inode, e)
        self._store(tx, inode, [])

    @staticmethod
    def _fits_inline(inode: Inode, entries: list[XattrEntry]) -> bool:
        """Whether ``entries`` fit the inode's record beside its inline extents (the
        placement rule: the module docstring, "Where attributes live")."""
        return inline_xattr_size(entries) <= INLINE_XATTR_AREA - inode.rec.inline_map_bytes

    def _free_value(self, tx: Transaction, inode: Inode, entry: XattrEntry) -> None:
        if not entry.blocks:
            return
        for start, length in _runs(entry.blocks):  # one free per run of blocks, not per block
            for b in range(start, start + length):
                tx.forget(b)
            self.alloc.free(tx, start, length)
        self.itable.dirty(tx, inode).blocks -= len(entry.blocks)

    def _set_inline(self, tx: Transaction, inode: Inode, raw: bytes) -> None:
        """Make ``raw`` the inline attribute bytes of ``inode`` (b"": none); the bytes
        between the inline extents and them are zero."""
        rec = self.itable.dirty(tx, inode)
        if not raw and rec.xattr_bytes == 0:
            return
        start = INLINE_XATTR_AREA - max(rec.xattr_bytes, len(raw))
        gap = INLINE_XATTR_AREA - len(raw) - start
        rec.inline = rec.inline[:start] + bytes(gap) + raw + rec.inline[INLINE_XATTR_AREA:]
        rec.xattr_bytes = len(raw)

    def _store_inline(self, tx: Transaction, inode: Inode, entries: list[XattrEntry]) -> None:
        """Store ``entries`` (which fit) inline, freeing the xattr block if any."""
        self._store(tx, inode, [])
        self._set_inline(tx, inode, pack_inline_xattrs(entries))

    def _store(self, tx: Transaction, inode: Inode, entries: list[XattrEntry]) -> None:
        """Write ``entries`` as the xattr block of ``inode`` (none: free the block);
        the inline attributes are cleared."""
        self._set_inline(tx, inode, b"")
        rec = self.itable.dirty(tx, inode)
        blockno = rec.xattr
        if not entries:
            if blockno:
                tx.forget(blockno)
                self.alloc.free(tx, blockno, 1)
                rec.blocks -= 1
                rec.xattr = 0
            return
        if blockno == 0:
            blockno = self.alloc.alloc_one(tx)
            view = tx.new_block(blockno)
            rec.blocks += 1
            rec.xattr = blockno
        else:
            view = tx.write(blockno)
        view[:] = pack_xattr_block(inode.ino, blockno, entries)


def _runs(blocks: tuple[int, ...]) -> list[tuple[int, int]]:
    """``blocks`` as (start, length) runs of consecutive numbers, in order."""
    out: list[tuple[int, int]] = []
    for b in blocks:
        if out and out[-1][0] + out[-1][1] == b:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((b, 1))
    return out
