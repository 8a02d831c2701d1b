"""The per-inode DAX flag: Linux's FS_XFLAG_DAX (``chattr +x``) and STATX_ATTR_DAX.

Linux decides per mount (``-o dax=always|never|inode``) and, under
``dax=inode``, per inode: a regular file whose FS_XFLAG_DAX is set uses DAX,
one without it goes through the page cache; a directory's flag is copied to
the files and directories created in it; ``statx`` reports what a file
actually does (STATX_ATTR_DAX).  ``dax=always`` and ``dax=never`` override
the flag, which stays stored.

daxfs stores the flag as ``IFLAG_DAX`` in the inode's flags field
(docs/FORMAT.md) and keeps Linux's rules for it:

    fs.set_dax(path, True|False)   one transaction: the flag, ctime; the first
                                   set of an image also sets INCOMPAT_DAX_FLAG
    create in a flagged directory  the new regular file or directory has it
                                   (FileSystem._new_inode, same transaction);
                                   a symbolic link never does
    fs.get_dax(path)               DaxState(flag, active)

What a file does (``active``, STATX_ATTR_DAX: regular files only, as Linux)::

    mount            dax="always"        dax="inode"             dax="never"
    pmem (DAX)       DAX                 DAX, flag or not (*)    --
    block / never    --  (EINVAL)        block cache             block cache

``--`` cannot happen: ``dax="never"`` mounts pmem through the pmem block
driver and a cache (daxfs.fs.devices), and ``dax="always"`` refuses a device
without DAX.  (*) is where daxfs differs from Linux: an unflagged file on a
DAX mount under ``dax="inode"`` would take the page cache on Linux; daxfs
has no per-file block path on a pmem mount (the data path of a mount is one
Device, daxfs.fs.data), so it is DAX too, and ``active`` says so: it
reports the data path the file really takes, never Linux's rule.  The flag
is stored, inherited and reported either way, so a later per-file path can
honour it with no format change.  Linux makes a flag change effective at
the next load of the inode; here nothing changes at once either (``active``
does not depend on the flag yet).

Invariants
  1. Only regular files and directories (the root too) carry IFLAG_DAX;
     a symbolic link never does (record_problem, fsck check 2).
  2. An image any of whose inodes carries IFLAG_DAX has INCOMPAT_DAX_FLAG
     (set in the transaction of the first ``set_dax(path, True)``; an inode
     inherits the flag only from a flagged directory, so the bit is already
     set; fsck check 10).
  3. ``set_dax`` and the inheritance change on-media state only inside one
     journal transaction: a crash leaves the flag (and the feature bit) as
     before or as after.
"""

from __future__ import annotations

import dataclasses

from daxfs.fs.inode import Inode, InodeTable, now_ns
from daxfs.fs.journal import Transaction
from daxfs.fs.layout import IFLAG_DAX, INCOMPAT_DAX_FLAG
from daxfs.fs.super import SuperState


@dataclasses.dataclass(frozen=True)
class DaxState:
    """What ``FileSystem.get_dax`` reports of one file."""

    #: FS_XFLAG_DAX: the inode carries IFLAG_DAX (set_dax, or inherited at create)
    flag: bool
    #: STATX_ATTR_DAX: the file's data is read and written by DAX (regular files
    #: on a DAX mount; the module docstring has the table)
    active: bool


def state(inode: Inode, dax_mount: bool) -> DaxState:
    """The flag of ``inode`` and whether its data goes by DAX on a mount that is
    DAX (``dax_mount``) or block-backed."""
    return DaxState(bool(inode.rec.flags & IFLAG_DAX), dax_mount and inode.is_reg)


def set_flag(
    tx: Transaction, itable: InodeTable, sup: SuperState, inode: Inode, enabled: bool
) -> None:
    """Set or clear IFLAG_DAX of ``inode`` (a regular file or a directory) in ``tx``,
    with its ctime; setting it sets INCOMPAT_DAX_FLAG too (invariant 2)."""
    assert inode.is_reg or inode.is_dir, f"DAX flag on {inode}"
    rec = itable.dirty(tx, inode)
    if enabled:
        sup.enable(tx, incompat=INCOMPAT_DAX_FLAG)
        rec.flags |= IFLAG_DAX
    else:
        rec.flags &= ~IFLAG_DAX
    rec.ctime_ns = now_ns()


def inherit(parent: Inode, child: Inode) -> None:
    """Give a new regular file or directory its parent's flag (its record is dirty
    in the creating transaction already)."""
    if parent.rec.flags & IFLAG_DAX and (child.is_reg or child.is_dir):
        child.rec.flags |= IFLAG_DAX
