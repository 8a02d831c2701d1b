"""The in-memory superblock and how a transaction changes it.

``SuperState.sb`` is the decoded superblock; its counters (free blocks, free
inodes, list heads) change inside transactions.  ``dirty(tx)`` puts block 0 in
the transaction's write set with a seal that packs ``sb`` into it just before
commit, and arranges for ``sb`` to be re-read from the device if the
transaction aborts, so memory never runs ahead of the media.
"""

from __future__ import annotations

import dataclasses

from daxfs.fs.journal import Transaction
from daxfs.fs.layout import Superblock
from daxfs.fs.store import PmemStore

SUPER_BLOCK = 0


class SuperState:
    """The mounted filesystem's superblock (primary copy, block 0)."""

    def __init__(self, store: PmemStore, sb: Superblock) -> None:
        self.store = store
        self.sb = sb
        self._dirty_in: Transaction | None = None

    def dirty(self, tx: Transaction) -> Superblock:
        """Mark the superblock changed in ``tx``; return it for modification."""
        if self._dirty_in is not tx:
            self._dirty_in = tx
            tx.write(SUPER_BLOCK, seal=self._seal)
            tx.on_abort(self.reload)
        return self.sb

    def _seal(self, view: memoryview) -> None:
        self.sb.pack_into(view)

    def reload(self) -> None:
        """Forget uncommitted changes: copy the device's superblock into ``sb``."""
        fresh = Superblock.unpack(self.store.block(SUPER_BLOCK), "superblock")
        for field in dataclasses.fields(Superblock):
            setattr(self.sb, field.name, getattr(fresh, field.name))
        self._dirty_in = None
