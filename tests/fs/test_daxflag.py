"""The per-inode DAX flag (daxfs.fs.daxflag): set_dax/get_dax, inheritance, the
feature bit, what each dax= mount reports, fsck, and the C stat path's record check."""

from __future__ import annotations

import errno
import time

import pytest

import daxfs
from daxfs.errors import Corrupted, ReadOnly
from daxfs.fs import daxflag
from daxfs.fs import mount as mount_mod
from daxfs.fs.daxflag import DaxState
from daxfs.fs.fsck import fsck
from daxfs.fs.layout import IFLAG_DAX, INCOMPAT_DAX_FLAG
from daxfs.testing import SimulatedPmem


def put(fs: daxfs.FileSystem, path: str) -> None:
    with fs.open(path, "wb", buffering=0) as f:
        f.write(b"data")


def clean(dev: SimulatedPmem) -> None:
    report = fsck(dev)
    assert report.clean, report.problems


def flag(fs: daxfs.FileSystem, path: str) -> bool:
    return fs.get_dax(path, follow_symlinks=False).flag


def test_set_and_clear(fs: daxfs.FileSystem, dev: SimulatedPmem) -> None:
    put(fs, "/f")
    fs.mkdir("/d")
    assert not flag(fs, "/f")
    assert not flag(fs, "/d")
    assert not flag(fs, "/")
    fs.set_dax("/f", True)
    fs.set_dax("/d", True)
    fs.set_dax("/", True)  # the root may carry it (xfs_io -c 'chattr +x' /mnt)
    assert flag(fs, "/f")
    assert flag(fs, "/d")
    assert flag(fs, "/")
    fs.set_dax("/f", False)
    assert not flag(fs, "/f")
    assert flag(fs, "/d")
    fs.unmount()
    with daxfs.mount(dev) as again:
        assert not flag(again, "/f")
        assert flag(again, "/d")
        assert flag(again, "/")
    clean(dev)


def test_set_follows_symbolic_links_and_changes_ctime(fs: daxfs.FileSystem) -> None:
    put(fs, "/f")
    fs.symlink("/f", "/l")
    before = fs.stat("/f").st_ctime_ns
    time.sleep(0.002)
    fs.set_dax("/l", True)
    assert flag(fs, "/f")
    assert not flag(fs, "/l")  # the link itself carries nothing
    assert fs.get_dax("/l").flag  # followed
    assert fs.stat("/f").st_ctime_ns > before


def test_inherited_by_files_and_directories_made_in_a_flagged_directory(
    fs: daxfs.FileSystem, dev: SimulatedPmem
) -> None:
    fs.mkdir("/d")
    fs.set_dax("/d", True)
    put(fs, "/d/f")
    fs.open("/d/x", "xb").close()
    fs.mkdir("/d/sub")
    fs.makedirs("/d/sub/a/b")
    put(fs, "/d/sub/a/b/f")
    fs.symlink("/d/f", "/d/link")
    assert all(flag(fs, p) for p in ("/d/f", "/d/x", "/d/sub", "/d/sub/a/b", "/d/sub/a/b/f"))
    assert not flag(fs, "/d/link")  # symbolic links never carry it
    # what exists keeps its flag when the directory's is cleared, and moves keep it
    fs.set_dax("/d", False)
    put(fs, "/d/after")
    assert not flag(fs, "/d/after")
    assert flag(fs, "/d/f")
    fs.rename("/d/f", "/moved")
    fs.link("/moved", "/hard")
    assert flag(fs, "/moved")
    assert flag(fs, "/hard")
    # a file made outside and moved in does not take it
    fs.set_dax("/d", True)
    put(fs, "/outside")
    fs.rename("/outside", "/d/inside")
    assert not flag(fs, "/d/inside")
    fs.unmount()
    clean(dev)


def test_feature_bit_set_by_the_first_set_and_never_cleared(
    fs: daxfs.FileSystem, dev: SimulatedPmem
) -> None:
    put(fs, "/f")
    assert fs.superblock.feature_incompat == 0  # mkfs sets no incompat bit
    fs.set_dax("/f", False)  # clearing sets nothing
    assert fs.superblock.feature_incompat == 0
    fs.set_dax("/f", True)
    assert fs.superblock.feature_incompat == INCOMPAT_DAX_FLAG
    fs.set_dax("/f", False)
    fs.unlink("/f")
    fs.unmount()
    with daxfs.mount(dev) as again:
        assert again.superblock.feature_incompat == INCOMPAT_DAX_FLAG
    clean(dev)  # the backup took the bit at the clean unmount


def test_a_version_without_the_flag_refuses_the_image(
    dev: SimulatedPmem, monkeypatch: pytest.MonkeyPatch
) -> None:
    with daxfs.mount(dev) as fs:
        fs.mkdir("/d")
        fs.set_dax("/d", True)
    monkeypatch.setattr(mount_mod, "FEATURE_INCOMPAT", 0)  # what an older version knows
    with pytest.raises(Corrupted, match="unknown incompatible features 0x1") as info:
        daxfs.mount(dev)
    assert info.value.errno == errno.EUCLEAN


def test_errors(fs: daxfs.FileSystem, dev: SimulatedPmem) -> None:
    put(fs, "/f")
    fs.symlink("/missing", "/dangling")
    with pytest.raises(FileNotFoundError) as nf:
        fs.set_dax("/nope", True)
    assert nf.value.filename == "/nope"
    with pytest.raises(FileNotFoundError):
        fs.set_dax("/dangling", True)
    with pytest.raises(NotADirectoryError):
        fs.set_dax("/f/x", True)
    with pytest.raises(FileNotFoundError):
        fs.get_dax("/nope")
    for bad in (1, None, "yes"):
        with pytest.raises(TypeError, match="must be a bool"):
            fs.set_dax("/f", bad)  # type: ignore[arg-type]
    assert not flag(fs, "/f")
    fs.unmount()
    with daxfs.mount(dev, readonly=True) as ro:
        with pytest.raises(ReadOnly) as info:
            ro.set_dax("/f", True)
        assert info.value.errno == errno.EROFS
        assert info.value.filename == "/f"
        assert not flag(ro, "/f")


def test_active_reports_the_data_path(dev: SimulatedPmem) -> None:
    with daxfs.mount(dev) as fs:
        put(fs, "/plain")
        put(fs, "/flagged")
        fs.set_dax("/flagged", True)
        fs.mkdir("/d")
        fs.set_dax("/d", True)
        fs.symlink("/flagged", "/l")
        # dax="inode" on pmem: every regular file is DAX, flagged or not (daxflag's (*))
        assert fs.get_dax("/plain") == DaxState(flag=False, active=True)
        assert fs.get_dax("/flagged") == DaxState(flag=True, active=True)
        assert fs.get_dax("/d") == DaxState(flag=True, active=False)  # regular files only
        assert fs.get_dax("/l", follow_symlinks=False) == DaxState(False, False)
    with daxfs.mount(dev, dax="always") as fs:
        assert fs.get_dax("/plain") == DaxState(flag=False, active=True)
    with daxfs.mount(dev, dax="never") as fs:  # the pmem block driver and a cache
        assert fs.get_dax("/flagged") == DaxState(flag=True, active=False)
        assert fs.get_dax("/plain") == DaxState(flag=False, active=False)
        fs.set_dax("/plain", True)  # stored and reported, overridden by the mount
        assert fs.get_dax("/plain") == DaxState(flag=True, active=False)
    clean(dev)


def test_c_stat_path_accepts_flagged_records(dev: SimulatedPmem) -> None:
    """_stat.c checks a record's flags as record_problem does: a flagged file and
    directory are answered from device memory, not refused."""
    with daxfs.mount(dev) as fs:
        fs.mkdir("/d")
        fs.set_dax("/d", True)
        put(fs, "/d/f")
    with daxfs.mount(dev) as fs:
        fast = fs._fast
        assert fast is not None
        hwm = fs.superblock.inode_hwm
        for path in ("/d", "/d/f"):
            ino = fs.lstat(path).st_ino
            fs.itable.forget(ino)  # answered from media, not from the cached Inode
            found = fast.inode(ino, hwm)
            assert found is not None, path
            assert found.st_ino == ino


def _plant(fs: daxfs.FileSystem, path: str, flags: int) -> None:
    """Write ``flags`` into the record of ``path`` (not followed) behind the API."""
    inode, _ = fs._existing(path, False)
    with fs.journal.begin() as tx:
        fs.itable.dirty(tx, inode).flags = flags


def test_fsck_clears_the_flag_of_a_symbolic_link(dev: SimulatedPmem) -> None:
    with daxfs.mount(dev) as fs:
        put(fs, "/f")
        fs.symlink("/f", "/l")
        fs.set_dax("/f", True)
        _plant(fs, "/l", IFLAG_DAX)
    report = fsck(dev)
    assert any("flag bits 0x4 it cannot carry" in str(p) for p in report.problems)
    with daxfs.mount(dev) as fs:
        assert fs._fast is not None  # the C record check refuses it too
        assert fs._fast.inode(fs.lstat("/f").st_ino + 1, fs.superblock.inode_hwm) is None
        with pytest.raises(Corrupted) as info:
            fs.lstat("/l")  # mount's record check refuses it as fsck does
    assert info.value.errno == errno.EUCLEAN
    fsck(dev, repair=True)
    clean(dev)
    with daxfs.mount(dev) as fs:
        assert not flag(fs, "/l")
        assert flag(fs, "/f")


def test_fsck_sets_a_missing_feature_bit(dev: SimulatedPmem) -> None:
    with daxfs.mount(dev) as fs:
        put(fs, "/f")
        _plant(fs, "/f", IFLAG_DAX)  # a flag without the bit: a primary from an old backup
    report = fsck(dev)
    assert any("DAX-flag feature is not set" in str(p) for p in report.problems)
    fsck(dev, repair=True)
    clean(dev)
    with daxfs.mount(dev) as fs:
        assert fs.superblock.feature_incompat & INCOMPAT_DAX_FLAG
        assert flag(fs, "/f")


def test_crash_harness_catches_a_flag_without_its_feature_bit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A planted bug: set_dax that forgets the feature bit leaves images fsck refuses."""
    from daxfs.testing.crash import CrashCheckFailed, check_operation

    def forgetful(tx: object, itable: object, sup: object, inode: object, on: bool) -> None:
        rec = itable.dirty(tx, inode)  # type: ignore[attr-defined]
        rec.flags = rec.flags | IFLAG_DAX if on else rec.flags & ~IFLAG_DAX

    monkeypatch.setattr(daxflag, "set_flag", forgetful)
    with pytest.raises(CrashCheckFailed, match="DAX-flag feature is not set"):
        check_operation(lambda fs: put(fs, "/f"), lambda fs: fs.set_dax("/f", True))
