"""Crash at every persist point of every operation type: each state is before or after.

Each test builds a small tree (setup), then check_operation crashes the
operation at each of its fences, mounts several seeded crash states of each
(recovery runs), requires fsck to be clean and the tree to equal the state
before or after the operation.  The slow variants take more states per fence.
"""

from __future__ import annotations

import os

import pytest

from daxfs.fs.data import FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE
from daxfs.fs.filesystem import FileSystem
from daxfs.testing.crash import CrashReport, check_operation

BLOCK = 4096
DATA = bytes(range(256)) * 64  # 16 KiB, recognisable


def base(fs: FileSystem) -> None:
    fs.makedirs("/d/sub")
    fs.mkdir("/empty")
    with fs.open("/d/file", "wb") as f:
        f.write(DATA)
    with fs.open("/d/other", "wb") as f:
        f.write(b"other file\n")
    fs.symlink("/d/file", "/d/link")


def write_at(path: str, data: bytes, offset: int) -> object:
    def op(fs: FileSystem) -> None:
        with fs.open(path, "rb+", buffering=0) as f:
            f.pwrite(data, offset)

    return op


def with_dax(fs: FileSystem) -> None:
    """base, with the DAX flag on /d (inherited by what is made in it) and /d/other."""
    base(fs)
    fs.set_dax("/d", True)
    fs.set_dax("/d/other", True)


def fragmented(fs: FileSystem) -> None:
    """A file of 40 extents (every other block written, then holes filled later)."""
    base(fs)
    with fs.open("/frag", "wb", buffering=0) as f:
        for i in range(40):
            f.pwrite(bytes([i + 1]) * BLOCK, 2 * i * BLOCK)


def sparse(fs: FileSystem) -> None:
    base(fs)
    with fs.open("/sparse", "wb", buffering=0) as f:
        f.pwrite(b"s" * 100, 5 * BLOCK)  # a hole of 5 blocks, then data
        f.fallocate(7 * BLOCK, 2 * BLOCK, 0)  # and unwritten extents


def map_writable(fs: FileSystem) -> None:
    """A writable mapping allocates holes and converts unwritten extents, zeroed."""
    with fs.open("/sparse", "rb+", buffering=0) as f, f.mmap():
        pass


def open_unlinked(fs: FileSystem) -> None:
    f = fs.open("/d/file", "rb")
    fs.unlink("/d/file")
    f.close()


def fchmod_open(fs: FileSystem) -> None:
    with fs.open("/d/file", "rb", buffering=0) as f:
        f.chmod(0o600)


def fallocate(mode: int, offset: int, length: int) -> object:
    def op(fs: FileSystem) -> None:
        with fs.open("/d/file", "rb+", buffering=0) as f:
            f.fallocate(offset, length, mode)

    return op


def truncate(size: int) -> object:
    def op(fs: FileSystem) -> None:
        fs.truncate("/d/file", size)

    return op


def with_xattrs(fs: FileSystem) -> None:
    """base, and extended attributes: short ones, a value in blocks, on a directory."""
    base(fs)
    fs.setxattr("/d/file", "user.short", b"s" * 40)
    fs.setxattr("/d/file", "user.long", bytes(range(256)) * 40)  # 10 KiB: 3 blocks
    fs.setxattr("/d/other", "user.only", b"the only one")
    fs.setxattr("/d", "trusted.dir", b"on a directory")


def inline_beside_extents(fs: FileSystem) -> None:
    """base, and /two: two inline extents of 3 blocks and two inline attributes of 69
    bytes, which leave room for two extents only (a third turns the map into a tree)."""
    base(fs)
    with fs.open("/two", "wb", buffering=0) as f:
        f.pwrite(b"a" * 3 * BLOCK, 0)
        f.pwrite(b"b" * 3 * BLOCK, 4 * BLOCK)
    fs.setxattr("/two", "user.in", b"i" * 40)
    fs.setxattr("/two", "user.in2", b"j" * 10)


def punch_two(fs: FileSystem) -> None:
    """A hole inside /two's first extent: three extents, one more than fit."""
    with fs.open("/two", "rb+", buffering=0) as f:
        f.fallocate(BLOCK, BLOCK, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)


def open_unlinked_with_xattrs(fs: FileSystem) -> None:
    f = fs.open("/d/file", "rb")
    fs.unlink("/d/file")
    f.close()


OPERATIONS = {
    "create": (base, lambda fs: fs.open("/d/new", "xb").close()),
    "open with truncate": (base, lambda fs: fs.open("/d/file", "wb").close()),
    "mkdir": (base, lambda fs: fs.mkdir("/d/sub/newdir")),
    "write extending": (base, write_at("/d/file", b"E" * 10000, len(DATA) - 100)),
    "write into hole": (base, write_at("/d/other", b"H" * 5000, 3 * BLOCK + 7)),
    "overwrite small": (base, write_at("/d/file", b"O" * 100, 4000)),
    "overwrite across blocks": (base, write_at("/d/file", b"X" * 9000, 1000)),
    "overwrite across extents": (fragmented, write_at("/frag", b"A" * 6000, BLOCK - 100)),
    "overwrite copy-on-write": (fragmented, write_at("/frag", b"C" * (300 << 10), 0)),
    "truncate shrink": (base, truncate(5000)),
    "truncate to zero": (base, truncate(0)),
    "truncate grow": (base, truncate(100_000)),
    "truncate fragmented": (fragmented, lambda fs: fs.truncate("/frag", 3 * BLOCK + 5)),
    "fallocate": (base, fallocate(0, 20000, 50000)),
    "fallocate keep size": (base, fallocate(FALLOC_FL_KEEP_SIZE, 20000, 50000)),
    "punch hole": (base, fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 1000, 9000)),
    "zero range": (base, fallocate(FALLOC_FL_ZERO_RANGE, 1000, 12000)),
    "unlink": (base, lambda fs: fs.unlink("/d/file")),
    "unlink fragmented": (fragmented, lambda fs: fs.unlink("/frag")),
    "unlink open file": (base, open_unlinked),
    "rmdir": (base, lambda fs: fs.rmdir("/empty")),
    "rename file": (base, lambda fs: fs.rename("/d/file", "/moved")),
    "rename over existing": (base, lambda fs: fs.rename("/d/other", "/d/file")),
    "rename directory": (base, lambda fs: fs.rename("/d/sub", "/empty/sub2")),
    "rename dir over empty dir": (base, lambda fs: fs.rename("/d/sub", "/empty")),
    "rename noreplace": (base, lambda fs: fs.rename("/d/file", "/moved", noreplace=True)),
    "exchange files": (base, lambda fs: fs.rename("/d/file", "/d/other", exchange=True)),
    "exchange file with a directory elsewhere": (
        base,
        lambda fs: fs.rename("/d/file", "/empty", exchange=True),
    ),
    "exchange directories across parents": (
        base,
        lambda fs: fs.rename("/d/sub", "/empty", exchange=True),
    ),
    "link": (base, lambda fs: fs.link("/d/file", "/hard")),
    "symlink": (base, lambda fs: fs.symlink("/d/other", "/d/sub/ln")),
    "long symlink": (base, lambda fs: fs.symlink("t" * 300, "/d/sub/ln")),
    "chmod": (base, lambda fs: fs.chmod("/d/file", 0o600)),
    "fchmod of an open file": (base, fchmod_open),
    "writable mmap of a sparse file": (sparse, map_writable),
    # extended attributes (the first of an image also sets the superblock's feature bit)
    "setxattr first": (base, lambda fs: fs.setxattr("/d/file", "user.a", b"first")),
    "setxattr long value first": (base, lambda fs: fs.setxattr("/d/file", "user.a", bytes(9000))),
    "setxattr add": (with_xattrs, lambda fs: fs.setxattr("/d/file", "user.b", b"added")),
    "setxattr replace short": (
        with_xattrs,
        lambda fs: fs.setxattr("/d/file", "user.short", b"new", os.XATTR_REPLACE),
    ),
    "setxattr replace long by long": (
        with_xattrs,
        lambda fs: fs.setxattr("/d/file", "user.long", b"L" * 65536),
    ),
    "setxattr replace long by short": (
        with_xattrs,
        lambda fs: fs.setxattr("/d/file", "user.long", b"now short"),
    ),
    "setxattr on a directory": (with_xattrs, lambda fs: fs.setxattr("/d/sub", "user.x", b"x")),
    # the per-inode DAX flag (the first set of an image also sets the feature bit)
    "set_dax first": (base, lambda fs: fs.set_dax("/d/file", True)),
    "set_dax on a directory": (base, lambda fs: fs.set_dax("/d", True)),
    "set_dax cleared": (with_dax, lambda fs: fs.set_dax("/d/other", False)),
    "create in a DAX directory": (with_dax, lambda fs: fs.open("/d/new", "xb").close()),
    "mkdir in a DAX directory": (with_dax, lambda fs: fs.mkdir("/d/newdir")),
    "removexattr": (with_xattrs, lambda fs: fs.removexattr("/d/file", "user.long")),
    "removexattr the last": (with_xattrs, lambda fs: fs.removexattr("/d/other", "user.only")),
    # inline in the inode (/d/other's and /d's are; /d/file's are in a block, and
    # "removexattr" above moves what is left inline, freeing the block)
    "setxattr inline add": (with_xattrs, lambda fs: fs.setxattr("/d/other", "user.b", b"two")),
    "setxattr inline replace": (
        with_xattrs,
        lambda fs: fs.setxattr("/d/other", "user.only", b"replaced", os.XATTR_REPLACE),
    ),
    "setxattr inline spills to a block": (
        with_xattrs,
        lambda fs: fs.setxattr("/d/other", "user.big", b"B" * 100),
    ),
    "removexattr inline, one left": (
        inline_beside_extents,
        lambda fs: fs.removexattr("/two", "user.in"),
    ),
    "write converts the map beside inline xattrs": (
        inline_beside_extents,
        write_at("/two", b"W" * 100, 9 * BLOCK),
    ),
    "punch converts the map beside inline xattrs": (
        inline_beside_extents,
        punch_two,
    ),
    "unlink with inline xattrs": (inline_beside_extents, lambda fs: fs.unlink("/two")),
    "unlink with xattrs": (with_xattrs, lambda fs: fs.unlink("/d/file")),
    "unlink open file with xattrs": (with_xattrs, open_unlinked_with_xattrs),
    "rename over a file with xattrs": (with_xattrs, lambda fs: fs.rename("/d/other", "/d/file")),
}

TIMED = {"utime": (base, lambda fs: fs.utime("/d/file", ns=(10**18, 2 * 10**18)))}


def _check(setup: object, op: object, states: int, times: bool = False) -> CrashReport:
    report = check_operation(setup, op, states_per_fence=states, times=times)  # type: ignore[arg-type]
    assert report.fences >= 1, "the operation must persist something"
    assert report.states >= report.fences
    return report


@pytest.mark.parametrize("name", sorted(OPERATIONS))
def test_crash_at_every_fence(name: str) -> None:
    setup, op = OPERATIONS[name]
    report = _check(setup, op, states=3)
    # the operation's effect is durable before it returns: the last fences end in "after"
    assert report.after_seen >= 1


def test_utime_crash_keeps_old_or_new_times() -> None:
    setup, op = TIMED["utime"]
    report = _check(setup, op, states=3, times=True)
    assert report.before_seen >= 1
    assert report.after_seen >= 1


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(OPERATIONS))
def test_crash_at_every_fence_many_states(name: str) -> None:
    setup, op = OPERATIONS[name]
    _check(setup, op, states=32)


def test_harness_detects_a_non_atomic_operation() -> None:
    """Two separate operations are not atomic together: the checker must say so."""

    def two_steps(fs: FileSystem) -> None:
        fs.mkdir("/one")
        fs.mkdir("/two")

    with pytest.raises(AssertionError, match="neither before nor after"):
        check_operation(base, two_steps, states_per_fence=2)


assert os.sep == "/"


def test_harness_catches_an_xattr_block_rewritten_in_place(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A planted bug: the live xattr block written in place, outside the journal, so a
    crash before the commit point shows the new attributes with the old block count.
    The crash check must catch it (it would pass if snapshots ignored xattrs)."""
    from daxfs.fs import xattr
    from daxfs.fs.layout import pack_xattr_block

    real = xattr.XattrStore._store

    def in_place(self: xattr.XattrStore, tx: object, inode: object, entries: list) -> None:  # type: ignore[type-arg]
        blockno = inode.rec.xattr  # type: ignore[attr-defined]
        if blockno and entries:
            self.store.block(blockno)[:] = pack_xattr_block(inode.ino, blockno, entries)  # type: ignore[attr-defined]
            return
        real(self, tx, inode, entries)  # type: ignore[arg-type]

    monkeypatch.setattr(xattr.XattrStore, "_store", in_place)
    setup, _ = OPERATIONS["setxattr add"]
    with pytest.raises(
        AssertionError,
        match=r"fence \d+: (mount after the crash failed|.*neither before nor after|.*fsck)",
    ):
        check_operation(
            setup, lambda fs: fs.setxattr("/d/file", "user.b", b"added"), states_per_fence=3
        )
