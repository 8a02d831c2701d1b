"""The in-memory superblock and how a transaction changes it.

``SuperState.sb`` is the decoded superblock; its counters (free blocks, free
inodes, list heads) change inside transactions.  ``dirty(tx)`` puts block 0 in
the transaction's write set with a seal that packs ``sb`` into it just before
commit, and arranges for ``sb`` to be re-read from the device if the
transaction aborts, so memory never runs ahead of the media.

The geometry (bytes 0..191) is written by mkfs and not journaled, with one
exception: ``enable(tx, bits)`` sets feature bits (the first extended
attribute of an image sets ``RO_COMPAT_XATTR``, the first per-inode DAX flag
``INCOMPAT_DAX_FLAG``); that transaction
also journals the line holding the feature fields (bytes 64..127), so the
checksum it seals covers the bytes the device will hold.  Recovery reads the
geometry without the checksum and replays before it checks (mount.recover),
so a crash in that transaction's apply leaves the bit either clear or set
with a valid block after replay.
"""

from __future__ import annotations

import dataclasses
import struct

from daxfs.errors import Corrupted
from daxfs.fs import _create
from daxfs.fs.journal import Transaction
from daxfs.fs.layout import (
    BLOCK_SHIFT,
    SB_CRC_OFFSET,
    SB_SIZE,
    Superblock,
    crc32c,
)
from daxfs.fs.store import PmemStore

SUPER_BLOCK = 0
#: the part of the superblock that transactions change, in whole 64-byte lines
COUNTERS_START = 192
COUNTERS_END = (SB_SIZE + 63) // 64 * 64
SB_CRC_LINE = SB_CRC_OFFSET // 64 * 64
#: the line holding feature_compat, _incompat, _ro_compat (bytes 104..115)
FEATURES_LINE = 64
#: ``SuperState._log`` makes its two records in C (``_create.seal_super``); tests turn
#: it off to run the Python code, the reference
NATIVE_SEAL = True


class SuperState:
    """The mounted filesystem's superblock (primary copy, block 0)."""

    def __init__(self, store: PmemStore, sb: Superblock) -> None:
        self.store = store
        self.sb = sb
        self._dirty_in: Transaction | None = None
        #: bytes 0..191 (the geometry, never changed after mkfs) as ``pack_fields``
        #: packs ``sb``: made at the first ``_log``, forgotten when ``reload`` changes sb
        self._head: bytes | None = None
        #: the transaction that changed a feature bit (its ``_log`` journals that line)
        self._features_in: Transaction | None = None

    def dirty(self, tx: Transaction) -> Superblock:
        """Mark the superblock changed in ``tx``; return it for modification.

        At commit the counters (bytes 192 and up) and the checksum line are
        journaled; the geometry above them never changes after mkfs.
        """
        if self._dirty_in is not tx:
            self._dirty_in = tx
            tx.on_seal(lambda: self._log(tx))
            tx.on_abort(self.reload)
        return self.sb

    def enable(self, tx: Transaction, ro_compat: int = 0, *, incompat: int = 0) -> None:
        """Set the feature bits ``ro_compat`` and ``incompat`` in ``tx`` (nothing if set).

        The bits are never cleared: a version that does not know one may then
        mount the image read-only only (ro_compat), or not at all (incompat:
        mount, docs/FORMAT.md).
        """
        sb = self.sb
        if sb.feature_ro_compat & ro_compat == ro_compat and (
            sb.feature_incompat & incompat == incompat
        ):
            return
        self.dirty(tx)
        sb.feature_ro_compat |= ro_compat
        sb.feature_incompat |= incompat
        self._head = None  # the geometry's bytes changed: pack them again
        self._features_in = tx

    def _log(self, tx: Transaction) -> None:
        """Journal the counters and a checksum over the block as it will be on the device.

        The checksum covers the whole block, the bytes after the fields too
        (zero as mkfs writes them, but media is not trusted): it is computed
        over the device's block with the new counters in place, so that the
        block stays valid whatever those bytes hold.
        """
        if self._features_in is tx:  # enable(): the feature fields' line too
            self._features_in = None
            packed = bytearray(COUNTERS_START + SB_SIZE)
            self.sb.pack_fields(packed)
            tx.log_meta(FEATURES_LINE, packed[FEATURES_LINE : FEATURES_LINE + 64])
        if NATIVE_SEAL:  # the code below in C: the geometry packed once, the counters
            lines = self.sealed_lines()
            if lines is not None:  # else a counter does not fit: the code below raises
                tx.log_meta(COUNTERS_START, lines[0])
                tx.log_meta(SB_CRC_LINE, lines[1])
                return
        block = bytearray(self.store.block(SUPER_BLOCK))
        self.sb.pack_fields(block)  # raises Corrupted if a counter left its field
        struct.pack_into("<I", block, SB_CRC_OFFSET, crc32c(memoryview(block)[:SB_CRC_OFFSET]))
        tx.log_meta(COUNTERS_START, block[COUNTERS_START:COUNTERS_END])
        tx.log_meta(SB_CRC_LINE, block[SB_CRC_LINE:])

    def sealed_lines(self) -> tuple[bytes, bytes] | None:
        """The two records ``_log`` journals (the counters' lines at COUNTERS_START, the
        checksum's line at SB_CRC_LINE), made in C (``_create.seal_super``: the
        geometry packed once); None if a counter does not fit its field (the Python
        code of ``_log`` then raises Corrupted naming it)."""
        head = self._head
        if head is None:
            packed = bytearray(COUNTERS_START + SB_SIZE)
            self.sb.pack_fields(packed)
            head = self._head = bytes(packed[:COUNTERS_START])
        return _create.seal_super(self.sb, head, self.store.block(SUPER_BLOCK))

    def update_backup(self) -> bool:
        """Make the backup superblock (the last block) match this one, if it does not.

        The backup exists to restore the geometry (bytes 0..191, written only
        by mkfs); its counters are those of when it was written, and fsck
        recomputes counters anyway.  So it is rewritten only when it is
        damaged or its bytes 0..191 differ: rewriting is a 4 KiB store that a
        power failure can tear, and an intact backup must never be put at
        that risk (unmount used to rewrite it every time; a crash then left a
        torn backup that fsck reported).  Returns True if it wrote (durably).
        """
        last = self.sb.block_count - 1
        block = self.sb.to_block()
        current = bytes(self.store.block(last))
        if current[:COUNTERS_START] == block[:COUNTERS_START]:
            try:
                Superblock.unpack(current, "backup superblock")
                return False
            except Corrupted:
                pass
        self.store.write(last << BLOCK_SHIFT, block)
        self.store.drain()
        return True

    def reload(self) -> None:
        """Forget uncommitted changes: copy the device's superblock into ``sb``."""
        fresh = Superblock.unpack(self.store.block(SUPER_BLOCK), "superblock")
        for field in dataclasses.fields(Superblock):
            setattr(self.sb, field.name, getattr(fresh, field.name))
        self._dirty_in = None
        self._head = None
        self._features_in = None
