"""DaxOperations with a handle and no path (libfuse's ``nullpath_ok``), without a mount.

The kernel gives a handle to setattr only from ftruncate (and the mode change
that comes with it), so through a real mount these branches are rare; here the
callbacks are called as libfuse calls them for a file whose name is gone.
"""

from __future__ import annotations

import errno
import os
import stat as st
from collections.abc import Iterator

import pytest

from daxfs.fs.filesystem import FileSystem
from daxfs.fs.mount import mkfs, mount
from daxfs.fuse._ops import DaxOperations
from daxfs.testing import SimulatedPmem


@pytest.fixture
def ops(monkeypatch: pytest.MonkeyPatch) -> Iterator[DaxOperations]:
    dev = SimulatedPmem(16 << 20)
    mkfs(dev)
    fs: FileSystem = mount(dev)
    o = DaxOperations(fs)
    # no FUSE request is being served: the caller is this process
    monkeypatch.setattr(DaxOperations, "_caller", staticmethod(lambda: (os.getuid(), os.getgid())))
    yield o
    o.close_all()
    fs.unmount()
    dev.close()


def test_attributes_of_an_unlinked_file_through_its_handle(ops: DaxOperations) -> None:
    fh = ops.create("/f", 0o644, os.O_RDWR)
    ops.write(None, b"hello", 0, fh)
    ops.unlink("/f")
    assert ops.chmod(None, st.S_IFREG | 0o4751, fh) == 0
    assert ops.chown(None, 1234, -1, fh) == 0
    mtime = ops.stat(None, fh).st_mtime_ns
    assert ops.utimens(None, (1_000, None), fh) == 0  # mtime omitted: kept
    assert ops.stat(None, fh).st_mtime_ns == mtime
    assert ops.utimens(None, (None, 7_000), fh) == 0  # atime omitted: kept
    result = ops.stat(None, fh)
    assert (result.st_atime_ns, result.st_mtime_ns) == (1_000, 7_000)
    assert st.S_IMODE(result.st_mode) == 0o4751
    assert (result.st_uid, result.st_gid, result.st_nlink) == (1234, os.getgid(), 0)
    assert ops.truncate(None, 2, fh) == 0
    assert ops.stat(None, fh).st_size == 2
    assert ops.fs.listdir("/") == []


def test_times_through_a_handle_now(ops: DaxOperations) -> None:
    fh = ops.create("/f", 0o644, os.O_RDWR)
    ops.utimens(None, (5, 6), fh)
    ops.utimens(None, None, fh)  # both now
    result = ops.stat(None, fh)
    assert result.st_atime_ns > 6
    assert result.st_mtime_ns > 6


def test_no_path_and_no_handle_is_enoent(ops: DaxOperations) -> None:
    with pytest.raises(FileNotFoundError) as caught:
        ops.chmod(None, 0o600, None)
    assert caught.value.errno == errno.ENOENT
    with pytest.raises(OSError, match="no open file") as bad:
        ops.chown(None, 1, 1, 99)
    assert bad.value.errno == errno.EBADF
