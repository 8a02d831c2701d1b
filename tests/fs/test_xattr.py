"""Extended attributes (daxfs.fs.xattr): the os-module API, its errnos against the
host's (Linux on /dev/shm), the storage (blocks counted and freed, values in
blocks, the feature bit), and fsck of what they store."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import daxfs
from daxfs.errors import (
    BadFileDescriptor,
    Corrupted,
    InvalidArgument,
    NoSpace,
    NotPermitted,
    NotSupported,
    ReadOnly,
)
from daxfs.fs import xattr
from daxfs.fs.fsck import fsck
from daxfs.fs.layout import (
    BLOCK_SHIFT,
    RO_COMPAT_XATTR,
    XATTR_AREA,
    XATTR_INLINE_MAX,
    XattrEntry,
)
from daxfs.testing import SimulatedPmem
from tests import helpers

XATTR_CREATE = os.XATTR_CREATE
XATTR_REPLACE = os.XATTR_REPLACE


def put(fs: daxfs.FileSystem, path: str, data: bytes = b"") -> None:
    with fs.open(path, "wb", buffering=0) as f:
        f.write(data)


def clean(dev: SimulatedPmem) -> None:
    report = fsck(dev)
    assert report.clean, report.problems


# -- the API ------------------------------------------------------------------------------


def test_set_get_list_remove_round_trip(fs: daxfs.FileSystem, dev: SimulatedPmem) -> None:
    put(fs, "/f", b"data")
    fs.mkdir("/d")
    fs.setxattr("/f", "user.b", b"2")
    fs.setxattr("/f", b"user.a", bytearray(b"1"))
    fs.setxattr("/f", "user.empty", b"")
    fs.setxattr("/d", "user.dir", memoryview(b"on a directory"))
    assert fs.listxattr("/f") == ["user.a", "user.b", "user.empty"]
    assert fs.getxattr("/f", "user.a") == b"1"
    assert fs.getxattr("/f", b"user.b") == b"2"
    assert fs.getxattr("/f", "user.empty") == b""
    assert fs.getxattr("/d", "user.dir") == b"on a directory"
    fs.setxattr("/f", "user.a", b"one")  # replace
    assert fs.getxattr("/f", "user.a") == b"one"
    fs.removexattr("/f", "user.b")
    assert fs.listxattr("/f") == ["user.a", "user.empty"]
    fs.unmount()
    with daxfs.mount(dev) as again:
        assert again.listxattr("/f") == ["user.a", "user.empty"]
        assert again.getxattr("/f", "user.a") == b"one"
        assert again.getxattr("/d", "user.dir") == b"on a directory"
        with again.open("/f", "rb") as f:
            assert f.read() == b"data"
    clean(dev)


def test_every_value_length_class_round_trips(fs: daxfs.FileSystem, dev: SimulatedPmem) -> None:
    """In the block up to XATTR_INLINE_MAX, in blocks beyond, 64 KiB at most."""
    put(fs, "/f")
    lengths = [XATTR_INLINE_MAX, XATTR_INLINE_MAX + 1, 4096, 4097, 65536]
    values = {f"user.v{n}": os.urandom(n) for n in lengths}
    for name, value in values.items():
        fs.setxattr("/f", name, value)
    fs.unmount()
    with daxfs.mount(dev) as again:
        for name, value in values.items():
            assert again.getxattr("/f", name) == value
    clean(dev)


def test_blocks_are_counted_and_freed(fs: daxfs.FileSystem, dev: SimulatedPmem) -> None:
    empty = fs.statvfs("/").f_bfree
    put(fs, "/f", b"x" * 4096)
    free0 = fs.statvfs("/").f_bfree
    fs.setxattr("/f", "user.small", b"s")
    assert fs.stat("/f").st_blocks == 8  # inline in the inode: no block
    fs.setxattr("/f", "user.big", bytes(65536))  # both move to an xattr block
    assert fs.stat("/f").st_blocks == (2 + 16) * 8
    assert fs.statvfs("/").f_bfree == free0 - 17
    fs.setxattr("/f", "user.big", b"short now")  # its 16 blocks go, and both fit inline:
    assert fs.stat("/f").st_blocks == 8  # the xattr block goes too
    assert fs.statvfs("/").f_bfree == free0
    fs.setxattr("/f", "user.mid", bytes(200))  # too long for the record: a block again
    assert fs.stat("/f").st_blocks == 2 * 8
    fs.removexattr("/f", "user.mid")  # the rest fits inline: the block goes
    assert fs.stat("/f").st_blocks == 8
    fs.removexattr("/f", "user.big")
    fs.removexattr("/f", "user.small")
    assert fs.stat("/f").st_blocks == 8
    assert fs.listxattr("/f") == []
    assert fs.statvfs("/").f_bfree == free0
    fs.setxattr("/f", "user.big", bytes(65536))
    fs.unlink("/f")  # small and unused: freed in the unlink's transaction
    assert fs.statvfs("/").f_bfree == empty
    fs.unmount()
    clean(dev)


def test_rmdir_and_rename_over_free_a_directorys_attributes(
    fs: daxfs.FileSystem, dev: SimulatedPmem
) -> None:
    empty = fs.statvfs("/").f_bfree
    fs.mkdir("/d")
    fs.mkdir("/e")
    fs.setxattr("/d", "user.big", bytes(20000))
    fs.setxattr("/e", "user.big", bytes(20000))
    fs.rmdir("/d")
    fs.mkdir("/f")
    fs.rename("/f", "/e")  # replaces the empty /e, which had attributes
    assert fs.listxattr("/e") == []
    fs.rmdir("/e")
    assert fs.statvfs("/").f_bfree == empty
    fs.unmount()
    clean(dev)


def test_unlinked_open_file_keeps_them_until_closed(
    fs: daxfs.FileSystem, dev: SimulatedPmem
) -> None:
    empty = fs.statvfs("/").f_bfree
    put(fs, "/f")
    with fs.open("/f", "rb", buffering=0) as f:
        fs.setxattr("/f", "user.big", b"v" * 10000)
        fs.unlink("/f")
        f.setxattr("user.later", b"set through the open file")  # fsetxattr
        assert f.getxattr("user.big") == b"v" * 10000
        assert f.listxattr() == ["user.big", "user.later"]
        f.removexattr("user.big")
        assert f.listxattr() == ["user.later"]
    assert fs.statvfs("/").f_bfree == empty
    fs.unmount()
    clean(dev)


def test_xattrs_survive_the_map_going_to_a_tree(fs: daxfs.FileSystem, dev: SimulatedPmem) -> None:
    """The pointer shares the inline area with the extents: the map growing past five
    extents (a B+tree) and back must keep it."""
    put(fs, "/f")
    fs.setxattr("/f", "user.k", b"kept")
    with fs.open("/f", "rb+", buffering=0) as f:
        for i in range(12):  # sparse: one extent each
            f.pwrite(b"d", 2 * i * 4096)
        assert fs.getxattr("/f", "user.k") == b"kept"
        f.truncate(0)
        f.pwrite(b"e", 0)
    assert fs.getxattr("/f", "user.k") == b"kept"
    fs.unmount()
    clean(dev)
    with daxfs.mount(dev) as again:
        assert again.getxattr("/f", "user.k") == b"kept"


def test_file_methods_and_closed_file(fs: daxfs.FileSystem) -> None:
    put(fs, "/f")
    f = fs.open("/f", "rb", buffering=0)
    f.setxattr("user.a", b"1", XATTR_CREATE)
    assert fs.getxattr("/f", "user.a") == b"1"
    f.close()
    for call in (
        lambda: f.getxattr("user.a"),
        lambda: f.setxattr("user.a", b"2"),
        lambda: f.listxattr(),
        lambda: f.removexattr("user.a"),
    ):
        with pytest.raises(BadFileDescriptor) as info:
            call()
        assert info.value.errno == errno.EBADF


def test_feature_bit_set_by_the_first_xattr(fs: daxfs.FileSystem, dev: SimulatedPmem) -> None:
    assert not fs.superblock.feature_ro_compat & RO_COMPAT_XATTR
    put(fs, "/f")
    fs.setxattr("/f", "user.a", b"1")
    assert fs.superblock.feature_ro_compat & RO_COMPAT_XATTR
    fs.removexattr("/f", "user.a")  # never cleared
    fs.unmount()
    with daxfs.mount(dev) as again:
        assert again.superblock.feature_ro_compat & RO_COMPAT_XATTR
    clean(dev)


def test_unknown_ro_compat_bits_mount_read_only_only(dev: SimulatedPmem) -> None:
    """What an older version does with an image that has xattrs, told by a bit this
    version does not know."""
    with daxfs.mount(dev) as fs, fs.journal.begin() as tx:
        fs.sup.enable(tx, 0x80)
    with pytest.raises(ReadOnly) as info:
        daxfs.mount(dev)
    assert info.value.errno == errno.EROFS
    with daxfs.mount(dev, readonly=True) as ro:
        assert ro.listdir("/") == []


def test_read_only_mount(dev: SimulatedPmem) -> None:
    with daxfs.mount(dev) as fs:
        put(fs, "/f")
        fs.setxattr("/f", "user.a", b"1")
    with daxfs.mount(dev, readonly=True) as ro:
        assert ro.getxattr("/f", "user.a") == b"1"
        assert ro.listxattr("/f") == ["user.a"]
        for call in (
            lambda: ro.setxattr("/f", "user.b", b"2"),
            lambda: ro.removexattr("/f", "user.a"),
            lambda: ro.setxattr("/f", "bogus.b", b"2"),  # EROFS first, as Linux
        ):
            with pytest.raises(ReadOnly) as info:
                call()
            assert info.value.errno == errno.EROFS
            assert info.value.filename == "/f"


def test_block_full_is_enospc_and_changes_nothing(fs: daxfs.FileSystem) -> None:
    put(fs, "/f")
    value = b"v" * XATTR_INLINE_MAX
    entry = XattrEntry(b"user.n00", len(value), value).size
    count = XATTR_AREA // entry
    for i in range(count):
        fs.setxattr("/f", f"user.n{i:02}", value)
    before = (fs.stat("/f"), fs.statvfs("/").f_bfree)
    with pytest.raises(NoSpace) as info:
        fs.setxattr("/f", "user.over", value)
    assert info.value.errno == errno.ENOSPC
    assert info.value.filename == "/f"
    assert (fs.stat("/f"), fs.statvfs("/").f_bfree) == before
    assert len(fs.listxattr("/f")) == count


def test_no_space_for_value_blocks_changes_nothing(fs: daxfs.FileSystem) -> None:
    put(fs, "/f")
    fs.setxattr("/f", "user.a", b"kept")
    helpers.fill(fs, leave=3)
    with pytest.raises(NoSpace) as info:
        fs.setxattr("/f", "user.big", bytes(65536))
    assert info.value.errno == errno.ENOSPC
    assert fs.listxattr("/f") == ["user.a"]
    assert fs.getxattr("/f", "user.a") == b"kept"


# -- errnos, against the host ----------------------------------------------------------------

#: (label, operation on (setxattr, getxattr, removexattr, listxattr, path)) whose errno
#: (or result) daxfs must share with Linux
_CASES: list[tuple[str, Callable[..., Any]]] = [
    ("name too long", lambda s, g, r, ls, p: s(p, "user." + "a" * 251, b"v")),
    ("name of 255", lambda s, g, r, ls, p: s(p, "user." + "a" * 250, b"v")),
    ("empty name", lambda s, g, r, ls, p: s(p, "", b"v")),
    ("unknown namespace", lambda s, g, r, ls, p: s(p, "foo.bar", b"v")),
    ("prefix alone", lambda s, g, r, ls, p: s(p, "user.", b"v")),
    ("value too long", lambda s, g, r, ls, p: s(p, "user.a", bytes(65537))),
    ("value of 64 KiB", lambda s, g, r, ls, p: s(p, "user.a", bytes(65536))),
    ("bad flags", lambda s, g, r, ls, p: s(p, "user.a", b"v", 4)),
    ("create, exists", lambda s, g, r, ls, p: (s(p, "user.c", b"1"), s(p, "user.c", b"2", 1))),
    ("replace, absent", lambda s, g, r, ls, p: s(p, "user.none", b"v", XATTR_REPLACE)),
    ("both flags, absent", lambda s, g, r, ls, p: s(p, "user.none", b"v", 3)),
    ("both flags, exists", lambda s, g, r, ls, p: (s(p, "user.c", b"1"), s(p, "user.c", b"", 3))),
    ("get absent", lambda s, g, r, ls, p: g(p, "user.none")),
    ("get unknown namespace", lambda s, g, r, ls, p: g(p, "foo.none")),
    ("get name too long", lambda s, g, r, ls, p: g(p, "user." + "a" * 251)),
    ("remove absent", lambda s, g, r, ls, p: r(p, "user.none")),
    ("remove unknown namespace", lambda s, g, r, ls, p: r(p, "foo.none")),
    ("missing file", lambda s, g, r, ls, p: s(p + "-missing", "user.a", b"v")),
    ("list missing file", lambda s, g, r, ls, p: ls(p + "-missing")),
    ("set then list", lambda s, g, r, ls, p: (s(p, "user.z", b""), s(p, "user.y", b"1"), ls(p))),
    ("set then get", lambda s, g, r, ls, p: (s(p, "user.z", b"zz"), g(p, "user.z"))),
]


def _outcome(call: Callable[[], Any]) -> Any:
    try:
        result = call()
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, exc.errno)
    if isinstance(result, tuple):
        result = result[-1]
    return sorted(result) if isinstance(result, list) else result


def _host_supports_user_xattrs(path: Path) -> bool:
    try:
        os.setxattr(path, "user.probe", b"1")
        os.removexattr(path, "user.probe")
    except OSError:
        return False
    return True


@pytest.mark.parametrize(("label", "case"), _CASES, ids=[c[0] for c in _CASES])
def test_errnos_match_linux(
    fs: daxfs.FileSystem, shm_path: Path, label: str, case: Callable[..., Any]
) -> None:
    shm_path.write_bytes(b"")
    if not _host_supports_user_xattrs(shm_path):
        pytest.skip("the host's /dev/shm stores no user xattrs")
    put(fs, "/f")
    host = _outcome(
        lambda: case(os.setxattr, os.getxattr, os.removexattr, os.listxattr, str(shm_path))
    )
    ours = _outcome(lambda: case(fs.setxattr, fs.getxattr, fs.removexattr, fs.listxattr, "/f"))
    assert ours == host, label


def test_symbolic_links(fs: daxfs.FileSystem, shm_path: Path) -> None:
    """As Linux on tmpfs for ``user.`` (EPERM to change, ENODATA to read); daxfs stores
    no other namespace on a link itself (EOPNOTSUPP where Linux would store it)."""
    put(fs, "/f")
    fs.symlink("f", "/l")
    fs.setxattr("/l", "user.through", b"1")  # follows: the target's
    assert fs.getxattr("/f", "user.through") == b"1"
    host_link = Path(str(shm_path) + ".link")
    shm_path.write_bytes(b"")
    host_link.symlink_to(shm_path)
    try:
        for call in (
            lambda s, g, r, ls, p: s(p, "user.x", b"1", follow_symlinks=False),
            lambda s, g, r, ls, p: g(p, "user.x", follow_symlinks=False),
            lambda s, g, r, ls, p: r(p, "user.x", follow_symlinks=False),
            lambda s, g, r, ls, p: ls(p, follow_symlinks=False),
        ):
            host = _outcome(
                lambda c=call: c(
                    os.setxattr, os.getxattr, os.removexattr, os.listxattr, str(host_link)
                )
            )
            ours = _outcome(
                lambda c=call: c(fs.setxattr, fs.getxattr, fs.removexattr, fs.listxattr, "/l")
            )
            assert ours == host
    finally:
        host_link.unlink()
    with pytest.raises(NotSupported) as info:
        fs.setxattr("/l", "trusted.x", b"1", follow_symlinks=False)
    assert info.value.errno == errno.EOPNOTSUPP
    assert info.value.filename == "/l"


def test_privileged_namespaces(fs: daxfs.FileSystem, monkeypatch: pytest.MonkeyPatch) -> None:
    put(fs, "/f")
    fs.setxattr("/f", "trusted.t", b"t")
    fs.setxattr("/f", "security.s", b"s")
    fs.setxattr("/f", "user.u", b"u")
    monkeypatch.setattr(xattr, "privileged", lambda: False)
    assert fs.listxattr("/f") == ["security.s", "user.u"]  # trusted. hidden
    assert fs.getxattr("/f", "security.s") == b"s"  # anyone reads security.
    for call in (
        lambda: fs.getxattr("/f", "trusted.t"),
        lambda: fs.setxattr("/f", "trusted.t", b"x"),
        lambda: fs.removexattr("/f", "trusted.t"),
        lambda: fs.setxattr("/f", "security.s", b"x"),
        lambda: fs.removexattr("/f", "security.s"),
    ):
        with pytest.raises(NotPermitted) as info:
            call()
        assert info.value.errno == errno.EPERM
    fs.setxattr("/f", "user.u", b"still")


def test_system_namespace_is_not_supported(fs: daxfs.FileSystem) -> None:
    """No POSIX ACLs: ``system.`` is EOPNOTSUPP, as Linux on a filesystem without them
    (tmpfs has them, and would answer EINVAL for this value)."""
    put(fs, "/f")
    for call in (
        lambda: fs.setxattr("/f", "system.posix_acl_access", b"v"),
        lambda: fs.getxattr("/f", "system.posix_acl_access"),
        lambda: fs.removexattr("/f", "system.posix_acl_access"),
    ):
        with pytest.raises(NotSupported) as info:
            call()
        assert info.value.errno == errno.EOPNOTSUPP


def test_bad_arguments_are_type_errors(fs: daxfs.FileSystem) -> None:
    put(fs, "/f")
    with pytest.raises(TypeError):
        fs.setxattr("/f", 5, b"v")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        fs.setxattr("/f", "user.a", "text")
    with pytest.raises(TypeError):
        fs.setxattr("/f", "user.a", b"v", "0")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument) as info:
        fs.getxattr("/f", "user.a\0b")
    assert info.value.errno == errno.EINVAL
    assert fs.listxattr("/f") == []


# -- what is read from media ------------------------------------------------------------------


def _xattr_block(fs: daxfs.FileSystem, path: str) -> int:
    inode, _ = fs._existing(path)
    return inode.rec.xattr


@pytest.mark.parametrize(
    ("offset", "what"),
    [(0, "bad magic"), (100, "checksum mismatch"), (8, "checksum mismatch")],
)
def test_damaged_block_is_euclean_and_fsck_drops_it(
    dev: SimulatedPmem, offset: int, what: str
) -> None:
    with daxfs.mount(dev) as fs:
        put(fs, "/f", b"data")
        fs.setxattr("/f", "user.a", b"1")
        fs.setxattr("/f", "user.big", bytes(5000))
        blockno = _xattr_block(fs, "/f")
    raw = bytearray(dev.read(blockno << BLOCK_SHIFT, 4096))
    raw[offset] ^= 0xFF
    dev.write(blockno << BLOCK_SHIFT, bytes(raw))
    with daxfs.mount(dev) as fs:
        with pytest.raises(Corrupted, match=what) as info:
            fs.getxattr("/f", "user.a")
        assert info.value.filename == "/f"
        with pytest.raises(Corrupted):
            fs.listxattr("/f")
    report = fsck(dev)
    assert not report.clean
    assert any("extended attributes are dropped" in str(p) for p in report.problems)
    fsck(dev, repair=True)
    clean(dev)
    with daxfs.mount(dev) as fs:
        assert fs.listxattr("/f") == []
        with fs.open("/f", "rb") as f:
            assert f.read() == b"data"


def test_damaged_value_is_euclean_and_fsck_removes_it(dev: SimulatedPmem) -> None:
    with daxfs.mount(dev) as fs:
        put(fs, "/f")
        fs.setxattr("/f", "user.a", b"1")
        fs.setxattr("/f", "user.big", bytes(5000))
        fs.setxattr("/f", "user.c", bytes(9000))
        entries = fs.xattrs.entries(fs.store, fs._existing("/f")[0])
        value_block = next(e for e in entries if e.name == b"user.big").blocks[1]
    dev.write((value_block << BLOCK_SHIFT) + 10, b"\x01")
    with daxfs.mount(dev) as fs:
        with pytest.raises(Corrupted, match="value checksum"):
            fs.getxattr("/f", "user.big")
        assert fs.getxattr("/f", "user.a") == b"1"
    fsck(dev, repair=True)
    clean(dev)
    with daxfs.mount(dev) as fs:
        assert fs.listxattr("/f") == ["user.a", "user.c"]
        assert fs.getxattr("/f", "user.c") == bytes(9000)


def test_fsck_sets_a_missing_feature_bit(dev: SimulatedPmem) -> None:
    with daxfs.mount(dev) as fs:
        put(fs, "/f")
        fs.setxattr("/f", "user.a", b"1")
        fs.sup.sb.feature_ro_compat = 0  # as a backup restored by an older fsck
        with fs.journal.begin() as tx:
            fs.sup.dirty(tx)
            fs.sup._features_in = tx
            fs.sup._head = None
    report = fsck(dev)
    assert any("xattr feature is not set" in str(p) for p in report.problems)
    fsck(dev, repair=True)
    clean(dev)
    with daxfs.mount(dev) as fs:
        assert fs.superblock.feature_ro_compat & RO_COMPAT_XATTR
