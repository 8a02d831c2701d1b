"""The on-media format of daxfs: the only module that knows where bytes go.

docs/FORMAT.md describes the same format byte by byte for humans; keep the two
true together.  Every integer is little-endian.  Blocks are 4 KiB and block
numbers are device byte offsets divided by 4096.

Geometry (mkfs decides the sizes, the superblock records them)::

    block 0                      primary superblock
    1 .. J                       journal: header block, then the log area
    J+1 .. J+B                   allocation bitmap (crc-protected blocks)
    J+B+1                        inode block 0 (inodes 0..15, holds the inode file)
    ...                          data, extent-tree and directory nodes, inode chunks
    block_count - 1              backup superblock

Checksums are crc32c (Castagnoli) over the structure with its own checksum
field taken as zero.  Fields changed outside the journal are not covered:
there are none in this version except ``JournalHeader.applied_seq``.
"""

from __future__ import annotations

import dataclasses
import struct
import uuid as uuid_mod
from collections.abc import Callable

import crc32c as _crc32c

from daxfs.errors import Corrupted

BLOCK_SIZE = 4096
BLOCK_SHIFT = 12
MIN_FS_SIZE = 16 << 20
#: the largest filesystem mkfs makes (1 EiB): beyond any device a process can map,
#: and every byte offset stays far inside a signed 64-bit file offset
MAX_FS_SIZE = 1 << 60
MAX_NAME = 255
#: the largest file size (the data path refuses to grow a file past it)
MAX_FILE_SIZE = 1 << 56
#: the longest symbolic-link target (a path: PATH_MAX - 1)
MAX_SYMLINK = 4095
INODE_SIZE = 256
INODES_PER_BLOCK = BLOCK_SIZE // INODE_SIZE
FORMAT_VERSION = 1

# Reserved inode numbers (all in inode block 0).
INO_NONE = 0  # never used: 0 terminates lists
INO_INODE_FILE = 1  # the file whose contents are the inode table
INO_ROOT = 2  # the root directory
FIRST_FREE_INO = 3


#: crc32c(data, value=0): crc32c of ``data``, continuing from ``value``.
crc32c: Callable[..., int] = _crc32c.crc32c
_ZERO4 = bytes(4)


def checksum_with_hole(buf: bytes | bytearray | memoryview, hole: int, size: int = 4) -> int:
    """crc32c of ``buf`` with ``size`` bytes at ``hole`` (its checksum field) taken as zero."""
    view = memoryview(buf)
    value = crc32c(view[:hole])
    value = crc32c(_ZERO4 if size == 4 else bytes(size), value)
    return crc32c(view[hole + size :], value)


# --------------------------------------------------------------------------- superblock

SB_MAGIC = b"DAXFS\x00SB"
SB_CRC_OFFSET = BLOCK_SIZE - 4

#: Feature bits.  A mount refuses an image with unknown incompat bits, and
#: mounts it read-only only with unknown ro_compat bits.
FEATURE_COMPAT = 0
#: some inode may carry IFLAG_DAX (the per-inode DAX flag, daxfs.fs.daxflag): set by
#: the first ``set_dax(path, True)`` of an image (in its transaction), never cleared.
#: Incompatible: a version without the flag refuses every inode carrying it.
INCOMPAT_DAX_FLAG = 0x1
#: the incompat bits this version knows (mkfs sets none of them)
FEATURE_INCOMPAT = INCOMPAT_DAX_FLAG
#: some inode may have extended attributes (an xattr block, "Extended attributes"
#: below): set by the first setxattr of an image (in its transaction), never cleared.
#: Read-only compatible: a version without xattrs reads such an image correctly, but
#: writing it would free inodes without their xattr blocks and rewrite block counts.
RO_COMPAT_XATTR = 0x1
#: some inode may keep extended attributes in its record (``xattr_bytes``, "Inline
#: extended attributes" below): set with RO_COMPAT_XATTR by the first setxattr that
#: stores a set inline (in its transaction), never cleared.  Read-only compatible: a
#: version without it reads the files' data correctly (the extents are where they
#: were), but would not see those attributes, and writing could overwrite them.
RO_COMPAT_XATTR_INLINE = 0x2
#: the ro_compat bits this version knows (mkfs sets none of them)
FEATURE_RO_COMPAT = RO_COMPAT_XATTR | RO_COMPAT_XATTR_INLINE

STATE_CLEAN = 0  # unmounted cleanly
STATE_MOUNTED = 1  # mounted read-write, or crashed while mounted

_SB = struct.Struct(
    "<8s"  # 0   magic
    "I"  # 8   version
    "I"  # 12  block_size
    "Q"  # 16  block_count
    "16s"  # 24  uuid
    "64s"  # 40  label, UTF-8, NUL padded
    "I"  # 104 feature_compat
    "I"  # 108 feature_incompat
    "I"  # 112 feature_ro_compat
    "I"  # 116 inode_size
    "Q"  # 120 journal_start (block)
    "Q"  # 128 journal_blocks
    "Q"  # 136 bitmap_start (block)
    "Q"  # 144 bitmap_blocks
    "Q"  # 152 inode_block0
    "Q"  # 160 root_ino
    "q"  # 168 created_ns
    "16s"  # 176 hash_key: key of the directory-name hash
    # -- bytes 192 and up change inside transactions; everything above only at mkfs
    "Q"  # 192 free_blocks
    "Q"  # 200 free_inodes: inodes on the free list
    "Q"  # 208 used_inodes
    "Q"  # 216 free_ino_head
    "Q"  # 224 orphan_head
    "Q"  # 232 next_generation
    "I"  # 240 state
    "I"  # 244 mount_count
    "q"  # 248 last_mount_ns
    "Q"  # 256 inode_hwm: inodes >= this have never been used (zero records)
)
SB_SIZE = _SB.size  # 264; the rest of the block is zero up to the crc
#: (attribute, struct format) of the packed fields after the magic, in order
_SB_FIELDS: tuple[tuple[str, str], ...] = (
    ("version", "I"),
    ("block_size", "I"),
    ("block_count", "Q"),
    ("uuid", "16s"),
    ("label", "64s"),
    ("feature_compat", "I"),
    ("feature_incompat", "I"),
    ("feature_ro_compat", "I"),
    ("inode_size", "I"),
    ("journal_start", "Q"),
    ("journal_blocks", "Q"),
    ("bitmap_start", "Q"),
    ("bitmap_blocks", "Q"),
    ("inode_block0", "Q"),
    ("root_ino", "Q"),
    ("created_ns", "q"),
    ("hash_key", "16s"),
    ("free_blocks", "Q"),
    ("free_inodes", "Q"),
    ("used_inodes", "Q"),
    ("free_ino_head", "Q"),
    ("orphan_head", "Q"),
    ("next_generation", "Q"),
    ("state", "I"),
    ("mount_count", "I"),
    ("last_mount_ns", "q"),
    ("inode_hwm", "Q"),
)
assert _SB.format == "<8s" + "".join(fmt for _, fmt in _SB_FIELDS)


def _misfit(obj: object, fields: tuple[tuple[str, str], ...]) -> str:
    """Which integer field of ``obj`` does not fit its struct format (for an error)."""
    for name, fmt in fields:
        value = getattr(obj, name)
        if fmt[-1] in "sp" or not isinstance(value, int):
            continue
        try:
            struct.pack("<" + fmt, value)
        except struct.error:
            return f"{name} {value} does not fit its {struct.calcsize(fmt)}-byte field"
    return "a field does not fit its format"


@dataclasses.dataclass(slots=True)
class Superblock:
    """The superblock: geometry (fixed at mkfs) and counters (journaled)."""

    block_count: int
    uuid: bytes
    label: str
    journal_start: int
    journal_blocks: int
    bitmap_start: int
    bitmap_blocks: int
    inode_block0: int
    created_ns: int
    hash_key: bytes
    free_blocks: int
    free_inodes: int
    used_inodes: int
    free_ino_head: int
    orphan_head: int
    next_generation: int
    state: int = STATE_CLEAN
    mount_count: int = 0
    last_mount_ns: int = 0
    inode_hwm: int = FIRST_FREE_INO
    root_ino: int = INO_ROOT
    version: int = FORMAT_VERSION
    block_size: int = BLOCK_SIZE
    inode_size: int = INODE_SIZE
    feature_compat: int = FEATURE_COMPAT
    feature_incompat: int = 0  # mkfs sets no incompat bit
    feature_ro_compat: int = 0

    @property
    def uuid_str(self) -> str:
        return str(uuid_mod.UUID(bytes=self.uuid))

    @property
    def data_start(self) -> int:
        """First block after the static regions."""
        return self.inode_block0 + 1

    def pack_into(self, block: bytearray | memoryview) -> None:
        """Write the superblock and its checksum into a 4 KiB block buffer.

        Raises:
            Corrupted (EUCLEAN): a counter no longer fits its field (it was
                damaged on media before it was changed); names the field.
        """
        self.pack_fields(block)
        block[SB_SIZE:SB_CRC_OFFSET] = bytes(SB_CRC_OFFSET - SB_SIZE)
        struct.pack_into("<I", block, SB_CRC_OFFSET, crc32c(memoryview(block)[:SB_CRC_OFFSET]))

    def pack_fields(self, block: bytearray | memoryview) -> None:
        """Write the fields into bytes 0..SB_SIZE of ``block`` (no checksum: the bytes
        after the fields are the caller's, as SuperState._log seals the device's block).

        Raises:
            Corrupted (EUCLEAN): as ``pack_into``; names the field.
        """
        try:
            self._pack(block)
        except struct.error:
            raise Corrupted(f"superblock: {_misfit(self, _SB_FIELDS)}") from None

    def _pack(self, block: bytearray | memoryview) -> None:
        _SB.pack_into(
            block,
            0,
            SB_MAGIC,
            self.version,
            self.block_size,
            self.block_count,
            self.uuid,
            self.label.encode("utf-8"),
            self.feature_compat,
            self.feature_incompat,
            self.feature_ro_compat,
            self.inode_size,
            self.journal_start,
            self.journal_blocks,
            self.bitmap_start,
            self.bitmap_blocks,
            self.inode_block0,
            self.root_ino,
            self.created_ns,
            self.hash_key,
            self.free_blocks,
            self.free_inodes,
            self.used_inodes,
            self.free_ino_head,
            self.orphan_head,
            self.next_generation,
            self.state,
            self.mount_count,
            self.last_mount_ns,
            self.inode_hwm,
        )

    def to_block(self) -> bytes:
        block = bytearray(BLOCK_SIZE)
        self.pack_into(block)
        return bytes(block)

    @classmethod
    def unpack(
        cls, block: bytes | bytearray | memoryview, where: str, *, verify: bool = True
    ) -> Superblock:
        """Decode and check a superblock; ``where`` names it in errors.

        ``verify=False`` skips the checksum: recovery reads the geometry that
        way, since a crash while the journal applied counters (bytes 192 and
        up) can leave the checksum stale until replay; the geometry (bytes
        0..191) is written only by mkfs, so it cannot be torn.

        Raises:
            Corrupted (EUCLEAN): bad magic or checksum.
        """
        if len(block) < BLOCK_SIZE:
            raise Corrupted(f"{where}: device too small to hold a superblock")
        if bytes(block[:8]) != SB_MAGIC:
            raise Corrupted(f"{where}: no daxfs superblock (bad magic)")
        (stored,) = struct.unpack_from("<I", block, SB_CRC_OFFSET)
        if verify and crc32c(memoryview(block)[:SB_CRC_OFFSET]) != stored:
            raise Corrupted(f"{where}: superblock checksum mismatch")
        f = _SB.unpack_from(block, 0)
        try:
            label = f[5].rstrip(b"\x00").decode("utf-8")
        except UnicodeDecodeError:
            raise Corrupted(f"{where}: superblock label is not UTF-8") from None
        return cls(
            version=f[1],
            block_size=f[2],
            block_count=f[3],
            uuid=f[4],
            label=label,
            feature_compat=f[6],
            feature_incompat=f[7],
            feature_ro_compat=f[8],
            inode_size=f[9],
            journal_start=f[10],
            journal_blocks=f[11],
            bitmap_start=f[12],
            bitmap_blocks=f[13],
            inode_block0=f[14],
            root_ino=f[15],
            created_ns=f[16],
            hash_key=f[17],
            free_blocks=f[18],
            free_inodes=f[19],
            used_inodes=f[20],
            free_ino_head=f[21],
            orphan_head=f[22],
            next_generation=f[23],
            state=f[24],
            mount_count=f[25],
            last_mount_ns=f[26],
            inode_hwm=f[27],
        )

    def check_geometry(self, device_size: int, where: str) -> None:
        """Raise Corrupted unless the regions fit the device and each other."""
        problems = []
        if self.version != FORMAT_VERSION:
            problems.append(f"unknown format version {self.version}")
        if self.block_size != BLOCK_SIZE or self.inode_size != INODE_SIZE:
            problems.append(f"block size {self.block_size} / inode size {self.inode_size}")
        if self.block_count * BLOCK_SIZE > device_size:
            problems.append(f"{self.block_count} blocks do not fit a device of {device_size} bytes")
        expected_bitmap = bitmap_blocks_for(self.block_count)
        if not (
            self.journal_start == 1
            and self.journal_blocks >= 2
            and self.bitmap_start == self.journal_start + self.journal_blocks
            and self.bitmap_blocks == expected_bitmap
            and self.inode_block0 == self.bitmap_start + self.bitmap_blocks
            and self.inode_block0 < self.block_count - 1
        ):
            problems.append("region layout is inconsistent")
        if self.root_ino != INO_ROOT:
            problems.append(f"root inode {self.root_ino}")
        if self.free_blocks > self.block_count:
            problems.append(f"free_blocks {self.free_blocks} > {self.block_count} blocks")
        if problems:
            raise Corrupted(f"{where}: " + "; ".join(problems))

    def counter_problems(self) -> list[str]:
        """What is wrong with the counters and list heads, judged against the geometry.

        Call after ``check_geometry``.  The checks need nothing but the
        superblock (mount checks them; so can fsck); each problem names the
        field.  Never raises.

        Invariants checked (each kept by every transaction):
          1. ``free_blocks`` <= the blocks of the data area.
          2. ``FIRST_FREE_INO <= inode_hwm`` and the inode file, which holds
             ``inode_hwm`` slots, fits the data area and inode block 0.
          3. ``used_inodes + free_inodes <= inode_hwm - 1`` (inode 0 is never
             used): every allocation raises ``inode_hwm`` or pops the free list.
          4. ``free_ino_head`` and ``orphan_head`` are 0 or a number that can
             be used: ``FIRST_FREE_INO <= head < inode_hwm``.
          5. The free list is empty iff ``free_inodes`` is 0.
          6. ``next_generation`` fits an inode's 32-bit generation; ``state``
             is known.
        """
        out = []
        data_blocks = self.block_count - 1 - self.data_start
        if self.free_blocks > data_blocks:
            out.append(
                f"free_blocks {self.free_blocks} > the {data_blocks} blocks of the data area"
            )
        slots = (data_blocks + 1) * INODES_PER_BLOCK
        if not FIRST_FREE_INO <= self.inode_hwm <= slots:
            out.append(
                f"inode_hwm {self.inode_hwm} is outside [{FIRST_FREE_INO}, {slots}] "
                "(what an inode file can hold)"
            )
        elif self.used_inodes + self.free_inodes > self.inode_hwm - 1:
            out.append(
                f"used_inodes {self.used_inodes} + free_inodes {self.free_inodes} > "
                f"the {self.inode_hwm - 1} inodes below inode_hwm"
            )
        for name in ("free_ino_head", "orphan_head"):
            head = getattr(self, name)
            if head and not FIRST_FREE_INO <= head < self.inode_hwm:
                out.append(f"{name} {head} is not an inode in [{FIRST_FREE_INO}, {self.inode_hwm})")
        if (self.free_ino_head == 0) != (self.free_inodes == 0):
            out.append(f"free_inodes {self.free_inodes} with free_ino_head {self.free_ino_head}")
        if self.next_generation > 0xFFFFFFFF:
            out.append(f"next_generation {self.next_generation} does not fit 32 bits")
        if self.state not in (STATE_CLEAN, STATE_MOUNTED):
            out.append(f"unknown state {self.state}")
        return out


# --------------------------------------------------------------------------- journal

JOURNAL_MAGIC = b"DAXFSJNL"
_JH = struct.Struct(
    "<8s"  # 0  magic
    "Q"  # 8  seq: sequence number of the transaction in the log
    "I"  # 16 nrecords
    "I"  # 20 log_bytes: bytes of records in the log area
    "I"  # 24 log_crc: crc32c of the log area [0, log_bytes)
    "I"  # 28 header_crc: crc32c of bytes [0, 32) with this field zero
)
JH_CRC_OFFSET = 28
#: Byte offset of applied_seq in the header block: an 8-byte atomic store,
#: outside header_crc, in a cache line of its own.
JH_APPLIED_OFFSET = 64
#: Log record header: device byte offset, length, reserved.
JREC = struct.Struct("<QII")


@dataclasses.dataclass(slots=True, frozen=True)
class JournalHeader:
    seq: int
    nrecords: int
    log_bytes: int
    log_crc: int

    def pack(self) -> bytes:
        raw = bytearray(
            _JH.pack(JOURNAL_MAGIC, self.seq, self.nrecords, self.log_bytes, self.log_crc, 0)
        )
        struct.pack_into("<I", raw, JH_CRC_OFFSET, crc32c(raw[:JH_CRC_OFFSET]))
        return bytes(raw)

    @classmethod
    def unpack(cls, block: bytes | bytearray | memoryview) -> JournalHeader | None:
        """The header if it is intact, else None (never written or torn)."""
        raw = bytes(block[: _JH.size])
        magic, seq, nrecords, log_bytes, log_crc, stored = _JH.unpack(raw)
        if magic != JOURNAL_MAGIC or crc32c(raw[:JH_CRC_OFFSET]) != stored:
            return None
        return cls(seq, nrecords, log_bytes, log_crc)


# --------------------------------------------------------------------------- bitmap

#: Each bitmap block holds this many bits, then a crc32c and 4 zero bytes.
BITMAP_BYTES = BLOCK_SIZE - 8
BITS_PER_BITMAP_BLOCK = BITMAP_BYTES * 8
BITMAP_CRC_OFFSET = BITMAP_BYTES


def bitmap_blocks_for(block_count: int) -> int:
    return -(-block_count // BITS_PER_BITMAP_BLOCK)


def seal_bitmap_block(block: bytearray | memoryview) -> None:
    struct.pack_into("<II", block, BITMAP_CRC_OFFSET, crc32c(memoryview(block)[:BITMAP_BYTES]), 0)


def bitmap_block_ok(block: bytes | bytearray | memoryview) -> bool:
    (stored,) = struct.unpack_from("<I", block, BITMAP_CRC_OFFSET)
    return crc32c(memoryview(block)[:BITMAP_BYTES]) == int(stored)


# --------------------------------------------------------------------------- inodes

INODE_MAGIC = 0x444F4E49  # "INOD"
INODE_CRC_OFFSET = 4

# inode.flags bits
IFLAG_ORPHAN = 0x1  # on the orphan list: freed (nlink 0) or truncated at recovery
IFLAG_TRUNCATE = 0x2  # a truncate to `size` may still have blocks beyond it to free
#: FS_XFLAG_DAX (regular files and directories, the root too): the file asks for DAX
#: under dax="inode"; a directory's is copied to the files and directories made in it
IFLAG_DAX = 0x4

# inode.map_kind: how the inline area (bytes 128..255) is used
MAP_NONE = 0  # nothing mapped (empty file, empty directory, free inode)
MAP_INLINE = 1  # up to INLINE_EXTENTS extents in the inline area
MAP_BTREE = 2  # map_root is the root block of a B+tree, map_height its height
MAP_SYMLINK = 3  # inline area holds the symlink target (map_count bytes)

INLINE_AREA = 128
INLINE_OFFSET = 128
#: Regular files and directories: the last 8 bytes of the inline area hold the block of
#: the inode's extended attributes (0: none); the extents of MAP_INLINE use the first
#: INLINE_EXTENTS * 24 = 120 bytes at most, MAP_NONE and MAP_BTREE none; inline
#: xattrs (``xattr_bytes`` of them) end at byte 120, so the extents get what they leave
#: (``InodeRecord.extent_room``).  Symbolic links carry no xattrs: an inline target
#: (MAP_SYMLINK) may fill the whole area.
XATTR_PTR = INLINE_AREA - 8
XATTR_TYPES = (0o100000, 0o040000)  # S_IFREG, S_IFDIR
_U64 = struct.Struct("<Q")

_INODE = struct.Struct(
    "<I"  # 0   magic
    "I"  # 4   crc32c
    "Q"  # 8   ino
    "I"  # 16  mode
    "I"  # 20  nlink
    "I"  # 24  uid
    "I"  # 28  gid
    "Q"  # 32  size
    "Q"  # 40  blocks: 4 KiB blocks owned (data and map nodes)
    "q"  # 48  atime_ns
    "q"  # 56  mtime_ns
    "q"  # 64  ctime_ns
    "q"  # 72  btime_ns
    "I"  # 80  generation
    "I"  # 84  flags
    "Q"  # 88  next: free-list or orphan-list link
    "Q"  # 96  parent: directories: the parent's ino
    "B"  # 104 map_kind
    "B"  # 105 map_height
    "H"  # 106 map_count
    "H"  # 108 xattr_bytes: inline extended attributes, at the end of the extent area
    "H"  # 110 reserved
    "Q"  # 112 map_root
    "Q"  # 120 entries: directories: number of entries
)
assert _INODE.size == INLINE_OFFSET
_INODE_FIELDS: tuple[tuple[str, str], ...] = (
    ("ino", "Q"),
    ("mode", "I"),
    ("nlink", "I"),
    ("uid", "I"),
    ("gid", "I"),
    ("size", "Q"),
    ("blocks", "Q"),
    ("atime_ns", "q"),
    ("mtime_ns", "q"),
    ("ctime_ns", "q"),
    ("btime_ns", "q"),
    ("generation", "I"),
    ("flags", "I"),
    ("next", "Q"),
    ("parent", "Q"),
    ("map_kind", "B"),
    ("map_height", "B"),
    ("map_count", "H"),
    ("xattr_bytes", "H"),
    ("map_root", "Q"),
    ("entries", "Q"),
)
assert _INODE.format.replace("BBHHH", "BBHH") == "<II" + "".join(f for _, f in _INODE_FIELDS)


@dataclasses.dataclass(slots=True)
class InodeRecord:
    """One 256-byte inode, decoded."""

    ino: int
    mode: int = 0
    nlink: int = 0
    uid: int = 0
    gid: int = 0
    size: int = 0
    blocks: int = 0
    atime_ns: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0
    btime_ns: int = 0
    generation: int = 0
    flags: int = 0
    next: int = 0
    parent: int = 0
    map_kind: int = MAP_NONE
    map_height: int = 0
    map_count: int = 0
    map_root: int = 0
    entries: int = 0
    inline: bytes = bytes(INLINE_AREA)
    #: bytes of inline extended attributes: ``inline[XATTR_PTR - xattr_bytes:XATTR_PTR]``
    xattr_bytes: int = 0

    @property
    def inline_map_bytes(self) -> int:
        """Bytes of the inline area the inline extents take (0 for another map kind)."""
        return self.map_count * EXTENT.size if self.map_kind == MAP_INLINE else 0

    @property
    def extent_room(self) -> int:
        """How many inline extents fit beside the inline extended attributes."""
        return max(0, XATTR_PTR - self.xattr_bytes) // EXTENT.size

    @property
    def xattr(self) -> int:
        """The block of the inode's extended attributes, 0 if none (or if its type
        carries none: the bytes then belong to the map, see XATTR_PTR)."""
        if self.mode & 0o170000 not in XATTR_TYPES:
            return 0
        value: int = _U64.unpack_from(self.inline, XATTR_PTR)[0]
        return value

    @xattr.setter
    def xattr(self, blockno: int) -> None:
        assert self.mode & 0o170000 in XATTR_TYPES, f"inode {self.ino}: no xattrs on its type"
        self.inline = self.inline[:XATTR_PTR] + _U64.pack(blockno)

    def pack_into(self, buf: bytearray | memoryview, offset: int) -> None:
        """Write the record and its checksum at ``offset`` of ``buf``.

        Raises:
            Corrupted (EUCLEAN): a counter no longer fits its field (a damaged
                ``blocks`` or ``nlink`` counted past 0 or the maximum); names it.
        """
        view = memoryview(buf)[offset : offset + INODE_SIZE]
        try:
            self._pack(view)
        except struct.error:
            raise Corrupted(f"inode {self.ino}: {_misfit(self, _INODE_FIELDS)}") from None
        assert len(self.inline) == INLINE_AREA
        view[INLINE_OFFSET:] = self.inline
        # _pack wrote 0 in the checksum field: the sum of the whole record is the sum
        # with that field as a hole (checksum_with_hole), in one call
        struct.pack_into("<I", view, INODE_CRC_OFFSET, crc32c(view))

    def _pack(self, view: memoryview) -> None:
        _INODE.pack_into(
            view,
            0,
            INODE_MAGIC,
            0,
            self.ino,
            self.mode,
            self.nlink,
            self.uid,
            self.gid,
            self.size,
            self.blocks,
            self.atime_ns,
            self.mtime_ns,
            self.ctime_ns,
            self.btime_ns,
            self.generation,
            self.flags,
            self.next,
            self.parent,
            self.map_kind,
            self.map_height,
            self.map_count,
            self.xattr_bytes,
            0,
            self.map_root,
            self.entries,
        )

    @classmethod
    def unpack_from(cls, buf: bytes | bytearray | memoryview, offset: int, ino: int) -> InodeRecord:
        """Decode the inode ``ino`` stored at ``offset``.

        Raises:
            Corrupted (EUCLEAN): bad magic, checksum or inode number.
        """
        view = memoryview(buf)[offset : offset + INODE_SIZE]
        f = _INODE.unpack_from(view, 0)
        if f[0] != INODE_MAGIC:
            raise Corrupted(f"inode {ino}: bad magic {f[0]:#x}")
        if checksum_with_hole(view, INODE_CRC_OFFSET) != f[1]:
            raise Corrupted(f"inode {ino}: checksum mismatch")
        if f[2] != ino:
            raise Corrupted(f"inode {ino}: record says it is inode {f[2]}")
        # positional (a third of the cost of keywords), in field order: mode .. map_count
        # are f[3] .. f[19]; f[20] is xattr_bytes, f[21] reserved; then map_root, entries,
        # inline, xattr_bytes
        return cls(
            ino, f[3], f[4], f[5], f[6], f[7], f[8], f[9], f[10], f[11], f[12], f[13], f[14],
            f[15], f[16], f[17], f[18], f[19], f[22], f[23], bytes(view[INLINE_OFFSET:]), f[20],
        )  # fmt: skip


# --------------------------------------------------------------------------- extents

EXTENT_UNWRITTEN = 0x1  # allocated, reads as zeros (fallocate)
MAX_EXTENT_BLOCKS = 0xFFFFFFFF
#: An extent in the inline area: logical block, physical block, length, flags.
EXTENT = struct.Struct("<QQII")
EXTENT_SIZE = EXTENT.size
INLINE_EXTENTS = INLINE_AREA // EXTENT.size  # 5
assert INLINE_EXTENTS * EXTENT.size <= XATTR_PTR  # the xattr block pointer fits after them
#: An extent as a B+tree value (the key is the logical block).
EXTENT_VALUE = struct.Struct("<QII")


# --------------------------------------------------------------------------- B+tree nodes

NODE_MAGIC = 0x4E505442  # "BTPN"
NODE_CRC_OFFSET = 4
#: Node header; keys start at NODE_KEYS.
NODE_HEADER = struct.Struct(
    "<I"  # 0  magic
    "I"  # 4  crc32c of the block with this field zero
    "Q"  # 8  owner: ino of the inode whose tree this is
    "Q"  # 16 blockno: where this node lives (catches misdirected writes)
    "H"  # 24 level: 0 for leaves
    "H"  # 26 count: keys in use
    "H"  # 28 kind: TREE_EXTENTS or TREE_DIRECTORY
    "H"  # 30 heap: leaves: offset of the lowest byte of the value heap
    "Q"  # 32 reserved
)
NODE_KEYS = 64
TREE_EXTENTS = 1
TREE_DIRECTORY = 2
#: Internal nodes: keys u64[INTERNAL_CAP] at NODE_KEYS, children u64[INTERNAL_CAP] after.
INTERNAL_CAP = (BLOCK_SIZE - NODE_KEYS) // 16  # 252
INTERNAL_CHILDREN = NODE_KEYS + INTERNAL_CAP * 8
#: Leaves: keys u64[LEAF_CAP], then slots (u16 offset, u16 length)[LEAF_CAP], then the
#: value heap, which grows down from the end of the block.
LEAF_CAP = 128
LEAF_SLOTS = NODE_KEYS + LEAF_CAP * 8
LEAF_HEAP_MIN = LEAF_SLOTS + LEAF_CAP * 4  # 1600
MAX_VALUE = BLOCK_SIZE - LEAF_HEAP_MIN  # a single value always fits an empty leaf


_U32 = struct.Struct("<I")
assert NODE_CRC_OFFSET == 4  # the field follows the magic (what _NODE_HEAD_CRC sums)
#: crc32c of a node's first 8 bytes with its checksum field as zero: the magic, then 0
_NODE_HEAD_CRC = crc32c(struct.pack("<II", NODE_MAGIC, 0))


def seal_node(block: bytearray | memoryview) -> None:
    """Store the checksum of a B+tree node (``checksum_with_hole`` at NODE_CRC_OFFSET:
    the field is zeroed, the block summed in one call, the sum stored)."""
    _U32.pack_into(block, NODE_CRC_OFFSET, 0)
    _U32.pack_into(block, NODE_CRC_OFFSET, crc32c(block))


def node_ok(block: bytes | bytearray | memoryview) -> bool:
    """Whether the node's magic and checksum are right (the checksum over the magic and
    a zero field is a constant: one crc32c call over the rest)."""
    magic, stored = struct.unpack_from("<II", block, 0)
    return bool(
        magic == NODE_MAGIC
        and crc32c(memoryview(block)[NODE_CRC_OFFSET + 4 :], _NODE_HEAD_CRC) == stored
    )


# --------------------------------------------------------------------------- directories

#: A directory entry inside a B+tree value: ino, file type (DT_*), name length, name.
#: A value holds every entry whose name hashes to the key (collisions are rare).
DIRENT = struct.Struct("<QBB")
DT_UNKNOWN, DT_FIFO, DT_CHR, DT_DIR, DT_BLK, DT_REG, DT_LNK, DT_SOCK = 0, 1, 2, 4, 6, 8, 10, 12


# --------------------------------------------------------------------------- extended attributes

XATTR_MAGIC = 0x52544158  # "XATR"
XATTR_CRC_OFFSET = 4
#: Xattr block header; entries start at XATTR_ENTRIES.
XATTR_HEADER = struct.Struct(
    "<I"  # 0  magic
    "I"  # 4  crc32c of the block with this field zero
    "Q"  # 8  owner: ino of the inode whose attributes these are
    "Q"  # 16 blockno: where this block lives (catches misdirected writes)
    "H"  # 24 count: entries
    "H"  # 26 used: bytes of the entry area in use
    "I"  # 28 reserved, 0
)
XATTR_ENTRIES = 64
XATTR_AREA = BLOCK_SIZE - XATTR_ENTRIES  # 4032
#: An entry: name length, kind, reserved, value length; then the full name (with its
#: namespace prefix), then the value (XV_INLINE) or its blocks (XV_BLOCKS); 8-aligned.
XATTR_ENTRY = struct.Struct("<BBHI")
XV_INLINE = 0  # the value follows the name
XV_BLOCKS = 1  # XATTR_BLOCKS_REF, then the u64 block numbers of the value
#: a value in blocks: crc32c of the value, number of blocks
XATTR_BLOCKS_REF = struct.Struct("<II")
#: values up to this length are stored in the xattr block, longer ones in blocks of their own
XATTR_INLINE_MAX = 512
#: Linux's limits (XATTR_NAME_MAX, XATTR_SIZE_MAX): a full name, a value
XATTR_NAME_MAX = 255
XATTR_SIZE_MAX = 65536
#: the namespaces daxfs stores (a name is one of them and a non-empty rest)
XATTR_PREFIXES = (b"user.", b"trusted.", b"security.")


_XATTR_PREFIX_SET = frozenset(XATTR_PREFIXES)


def xattr_name_ok(name: bytes) -> bool:
    """Whether ``name`` may be stored: a known namespace, a non-empty rest, no NUL, at
    most XATTR_NAME_MAX bytes."""
    dot = name.find(b".")  # every prefix ends at its first dot
    return (
        0 < dot < len(name) - 1
        and len(name) <= XATTR_NAME_MAX
        and name[: dot + 1] in _XATTR_PREFIX_SET
        and b"\0" not in name
    )


@dataclasses.dataclass(slots=True, frozen=True)
class XattrEntry:
    """One extended attribute as stored: the value itself, or the blocks that hold it."""

    name: bytes
    length: int
    value: bytes | None = None  # XV_INLINE
    crc: int = 0  # XV_BLOCKS: crc32c of the value
    blocks: tuple[int, ...] = ()  # XV_BLOCKS: its blocks, in order

    @property
    def size(self) -> int:
        """Bytes the entry takes in the block (8-aligned)."""
        body = (
            self.length if self.value is not None else XATTR_BLOCKS_REF.size + 8 * len(self.blocks)
        )
        return -(-(XATTR_ENTRY.size + len(self.name) + body) // 8) * 8


def value_blocks(length: int) -> int:
    """Blocks a value of ``length`` bytes needs when stored outside the xattr block."""
    return -(-length // BLOCK_SIZE) if length > XATTR_INLINE_MAX else 0


def pack_xattr_block(owner: int, blockno: int, entries: list[XattrEntry]) -> bytes:
    """The xattr block holding ``entries`` (sorted by name by the caller), sealed.

    Caller has checked that they fit (``sum(e.size) <= XATTR_AREA``).
    """
    block = bytearray(BLOCK_SIZE)
    pos = XATTR_ENTRIES
    for e in entries:
        kind = XV_INLINE if e.value is not None else XV_BLOCKS
        XATTR_ENTRY.pack_into(block, pos, len(e.name), kind, 0, e.length)
        at = pos + XATTR_ENTRY.size
        block[at : at + len(e.name)] = e.name
        at += len(e.name)
        if e.value is not None:
            block[at : at + e.length] = e.value
        else:
            XATTR_BLOCKS_REF.pack_into(block, at, e.crc, len(e.blocks))
            at += XATTR_BLOCKS_REF.size
            struct.pack_into(f"<{len(e.blocks)}Q", block, at, *e.blocks)
        pos += e.size
    assert pos <= BLOCK_SIZE, f"xattr entries overflow the block: {pos}"
    XATTR_HEADER.pack_into(
        block, 0, XATTR_MAGIC, 0, owner, blockno, len(entries), pos - XATTR_ENTRIES, 0
    )
    struct.pack_into("<I", block, XATTR_CRC_OFFSET, crc32c(block))
    return bytes(block)


def xattr_blocks_problem(entry: XattrEntry, seen: set[int], lo: int, hi: int) -> str | None:
    """What is wrong with the value blocks ``entry`` names, or None: each must lie in
    [``lo``, ``hi``) (the data area) and be named once (``seen``: the blocks named so
    far by the inode's attributes; a sound entry's blocks are added to it).  Shared by
    ``XattrStore`` and fsck (one rule for both)."""
    mine: set[int] = set()
    for b in entry.blocks:
        if not lo <= b < hi:
            return f"value block {b} is outside the data area [{lo}, {hi})"
        if b in seen or b in mine:
            return f"value block {b} is named twice"
        mine.add(b)
    seen |= mine
    return None


def xattr_value(
    entry: XattrEntry, read: Callable[[int], bytes | bytearray | memoryview]
) -> bytes | None:
    """The value of ``entry``, its blocks read through ``read`` (block number -> its
    bytes); None if a value in blocks fails its crc32c.  Shared by ``XattrStore`` and
    fsck."""
    if entry.value is not None:
        return entry.value
    data = b"".join(bytes(read(b)) for b in entry.blocks)[: entry.length]
    return data if crc32c(data) == entry.crc else None


# --------------------------------------------------------------------------- inline xattrs

#: An inline entry: name length, value length; then the full name, then the value.
#: Entries are packed without padding, sorted by name, at the end of the extent area.
INLINE_XATTR = struct.Struct("<BB")
#: the bytes inline attributes may take at most: the extent area (inline[0:120])
INLINE_XATTR_AREA = XATTR_PTR


def inline_xattr_size(entries: list[XattrEntry]) -> int:
    """Bytes ``entries`` take inline, or INLINE_XATTR_AREA + 1 when one cannot be
    inline at all (a value in blocks, or a length past a byte)."""
    total = 0
    for e in entries:
        if e.value is None or e.length > 0xFF:
            return INLINE_XATTR_AREA + 1
        total += INLINE_XATTR.size + len(e.name) + e.length
    return total


def pack_inline_xattrs(entries: list[XattrEntry]) -> bytes:
    """The inline bytes of ``entries`` (sorted by name by the caller, each of which
    fits: ``inline_xattr_size`` <= INLINE_XATTR_AREA)."""
    out = bytearray()
    for e in entries:
        assert e.value is not None
        out += INLINE_XATTR.pack(len(e.name), e.length) + e.name + e.value
    assert len(out) <= INLINE_XATTR_AREA, f"inline xattrs of {len(out)} bytes"
    return bytes(out)


def unpack_inline_xattrs(rec: InodeRecord) -> list[XattrEntry]:
    """Decode and check the inline extended attributes of ``rec`` (none: []).

    Checks everything a reader relies on: the type carries attributes, the
    byte count fits the extent area and leaves room for the inline extents the
    map holds, every entry's lengths stay inside the count, and names are
    valid (``xattr_name_ok``), sorted and unique.

    Raises:
        Corrupted (EUCLEAN): names the inode and what is wrong.
    """
    size = rec.xattr_bytes
    if size == 0:
        return []
    where = f"inode {rec.ino}: inline xattrs"
    if rec.mode & 0o170000 not in XATTR_TYPES:
        raise Corrupted(f"{where}: {size} bytes on mode {rec.mode:o}, which carries none")
    used = rec.inline_map_bytes
    if size > INLINE_XATTR_AREA - used:
        raise Corrupted(
            f"{where}: {size} bytes do not fit beside {used} bytes of inline extents "
            f"in the {INLINE_XATTR_AREA}-byte area"
        )
    raw = rec.inline[INLINE_XATTR_AREA - size : INLINE_XATTR_AREA]
    out: list[XattrEntry] = []
    pos = 0
    while pos < size:
        if pos + INLINE_XATTR.size > size:
            raise Corrupted(f"{where}: entry {len(out)} runs past the {size} bytes")
        nlen, vlen = INLINE_XATTR.unpack_from(raw, pos)
        at = pos + INLINE_XATTR.size
        pos = at + nlen + vlen
        if pos > size:
            raise Corrupted(f"{where}: entry {len(out)} runs past the {size} bytes")
        name = raw[at : at + nlen]
        if not xattr_name_ok(name):
            raise Corrupted(f"{where}: entry {len(out)} has a bad name {name[:32]!r}")
        if out and name <= out[-1].name:
            raise Corrupted(f"{where}: entry {name!r} is out of order or repeated")
        out.append(XattrEntry(name, vlen, raw[at + nlen : pos]))
    return out


def unpack_xattr_block(
    block: bytes | bytearray | memoryview, owner: int, blockno: int
) -> list[XattrEntry]:
    """Decode and check the xattr block ``blockno`` of inode ``owner``.

    Checks everything a reader relies on: magic, checksum, owner, place, the
    entry area's size, every entry's lengths and kind, names (a known-looking,
    non-empty name of at most XATTR_NAME_MAX bytes without NUL, sorted and
    unique), the value kind its length calls for, and that a value's block
    count fits its length.  Block numbers are not checked against the
    geometry here (the caller knows it: ``XattrStore``, fsck).

    Raises:
        Corrupted (EUCLEAN): names the inode, the block and what is wrong.
    """
    where = f"inode {owner}: xattr block {blockno}"
    view = memoryview(block)
    magic, stored, own, place, count, used, reserved = XATTR_HEADER.unpack_from(view, 0)
    if magic != XATTR_MAGIC:
        raise Corrupted(f"{where}: bad magic {magic:#x}")
    if checksum_with_hole(view, XATTR_CRC_OFFSET) != stored:
        raise Corrupted(f"{where}: checksum mismatch")
    if own != owner or place != blockno:
        raise Corrupted(f"{where}: says it is block {place} of inode {own}")
    if reserved or used > XATTR_AREA or used % 8 or not count <= used // 8:
        raise Corrupted(f"{where}: header (count {count}, used {used}, reserved {reserved})")
    out: list[XattrEntry] = []
    pos, end = XATTR_ENTRIES, XATTR_ENTRIES + used
    for i in range(count):
        if pos + XATTR_ENTRY.size > end:
            raise Corrupted(f"{where}: entry {i} runs past the {used} bytes in use")
        nlen, kind, res, length = XATTR_ENTRY.unpack_from(view, pos)
        at = pos + XATTR_ENTRY.size
        name = bytes(view[at : at + nlen])
        at += nlen
        if res or not xattr_name_ok(name):
            raise Corrupted(f"{where}: entry {i} has a bad name {name[:32]!r} (reserved {res})")
        if out and name <= out[-1].name:
            raise Corrupted(f"{where}: entry {name!r} is out of order or repeated")
        if length > XATTR_SIZE_MAX or kind != (XV_BLOCKS if value_blocks(length) else XV_INLINE):
            raise Corrupted(f"{where}: entry {name!r}: value of {length} bytes, kind {kind}")
        if kind == XV_INLINE:
            entry = XattrEntry(name, length, bytes(view[at : at + length]))
        else:
            if at + XATTR_BLOCKS_REF.size > end:
                raise Corrupted(f"{where}: entry {name!r} runs past the bytes in use")
            crc, nblocks = XATTR_BLOCKS_REF.unpack_from(view, at)
            at += XATTR_BLOCKS_REF.size
            if nblocks != value_blocks(length) or at + 8 * nblocks > end:
                raise Corrupted(f"{where}: entry {name!r}: {nblocks} blocks for {length} bytes")
            blocks = struct.unpack_from(f"<{nblocks}Q", view, at)
            entry = XattrEntry(name, length, None, crc, blocks)
        pos += entry.size
        if pos > end:
            raise Corrupted(f"{where}: entry {name!r} runs past the {used} bytes in use")
        out.append(entry)
    if pos != end:
        raise Corrupted(f"{where}: {count} entries take {pos - XATTR_ENTRIES} bytes, not {used}")
    return out
