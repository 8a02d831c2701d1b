"""The repairs that change one record or one superblock field, shared by the passes.

Each returns an ``Apply`` for a ``Fix``: one journal transaction when run.
"""

from __future__ import annotations

from daxfs.fs.layout import InodeRecord

from .context import Apply, Repairing


def set_super(field: str, value: int) -> Apply:
    """Set a superblock counter."""

    def apply(r: Repairing) -> None:
        with r.journal.begin() as tx:
            setattr(r.sup.dirty(tx), field, value)

    return apply


def enable_feature(*, ro_compat: int = 0, incompat: int = 0) -> Apply:
    """Set superblock feature bits (SuperState.enable: the feature line journaled)."""

    def apply(r: Repairing) -> None:
        with r.journal.begin() as tx:
            r.sup.enable(tx, ro_compat, incompat=incompat)

    return apply


def set_fields(ino: int, **values: int) -> Apply:
    """Set fields of the (readable) record of inode ``ino``."""

    def apply(r: Repairing) -> None:
        itable = r.layers.itable
        with r.journal.begin() as tx:
            rec = itable.dirty(tx, itable.get(ino))
            for field, value in values.items():
                setattr(rec, field, value)

    return apply


def replace_record(ino: int, rec: InodeRecord) -> Apply:
    """Write ``rec`` as the record of inode ``ino`` (readable or not)."""

    def apply(r: Repairing) -> None:
        itable = r.layers.itable
        with r.journal.begin() as tx:
            blockno, offset = itable.address(tx, ino)
            rec.pack_into(tx.write(blockno), offset)
        itable.forget(ino)

    return apply
