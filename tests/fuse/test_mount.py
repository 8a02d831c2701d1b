"""The FUSE mount's own behaviour: flags, errnos, ownership, mmap, signals, the CLI.

Each errno is the one the daxfs API raises for the same mistake (the oracle
conformance suite, tests/fuse/test_conformance.py, checks the rest against
the host filesystem).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import mmap
import os
import shutil
import signal
import stat as st
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import pytest

import daxfs
from daxfs.errors import Busy, InvalidArgument
from daxfs.fuse import is_mounted, parse_options
from tests.fuse.mounts import DAXFS, daxfs_cli, skip_reason

pytestmark = pytest.mark.skipif(skip_reason() is not None, reason=f"no FUSE: {skip_reason()}")

libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2
FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE = 1, 2, 0x10


def renameat2(old: str, new: str, flags: int) -> int:
    r = libc.renameat2(AT_FDCWD, old.encode(), AT_FDCWD, new.encode(), flags)
    return 0 if r == 0 else ctypes.get_errno()


def fallocate(fd: int, mode: int, offset: int, length: int) -> int:
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
    r = libc.fallocate(fd, mode, offset, length)
    return 0 if r == 0 else ctypes.get_errno()


def errno_of(call: object, *args: object) -> int:
    with pytest.raises(OSError) as caught:  # noqa: PT011 (any errno: returned)
        call(*args)  # type: ignore[operator]
    assert caught.value.errno is not None
    return caught.value.errno


MOUNT_SIZE = 64 << 20  # the module's mount (tests/fuse/conftest.py)


@pytest.fixture
def d(work: str) -> str:
    """The test's own directory on the mount (conftest's ``work``)."""
    return work


def test_open_flags(d: str) -> None:
    p = os.path.join(d, "f")
    fd = os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o640)
    os.write(fd, b"abc")
    os.close(fd)
    assert os.stat(p).st_mode & 0o777 == 0o640
    assert errno_of(os.open, p, os.O_CREAT | os.O_EXCL | os.O_WRONLY) == errno.EEXIST
    fd = os.open(p, os.O_WRONLY | os.O_APPEND)
    os.write(fd, b"def")
    os.pwrite(fd, b"g", 0)  # O_APPEND: to the end, as Linux's pwrite
    os.close(fd)
    with open(p, "rb") as f:
        assert f.read() == b"abcdefg"
    before = os.stat(p).st_mtime_ns
    time.sleep(0.01)
    os.close(os.open(p, os.O_WRONLY | os.O_TRUNC))
    assert os.stat(p).st_size == 0
    assert os.stat(p).st_mtime_ns > before
    assert errno_of(os.open, os.path.join(d, "nope"), os.O_RDONLY) == errno.ENOENT
    assert errno_of(os.open, d, os.O_WRONLY) == errno.EISDIR
    # umask applies (the kernel's), the mode asked for is kept exactly
    fd = os.open(os.path.join(d, "x"), os.O_CREAT | os.O_WRONLY, 0o755)
    os.close(fd)
    assert os.stat(os.path.join(d, "x")).st_mode & 0o777 == 0o755 & ~_umask()


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


def test_read_write_truncate_and_holes(d: str) -> None:
    p = os.path.join(d, "f")
    fd = os.open(p, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        data = os.urandom(3 << 20)
        assert os.pwrite(fd, data, 0) == len(data)
        assert os.pread(fd, len(data), 0) == data
        os.ftruncate(fd, 8 << 20)
        assert os.fstat(fd).st_size == 8 << 20
        assert os.pread(fd, 16, 5 << 20) == bytes(16)
        # SEEK_DATA / SEEK_HOLE through the filesystem's lseek
        assert os.lseek(fd, 0, os.SEEK_DATA) == 0
        assert os.lseek(fd, 0, os.SEEK_HOLE) == 3 << 20
        assert errno_of(os.lseek, fd, 9 << 20, os.SEEK_DATA) == errno.ENXIO
        # fallocate modes: punch a hole, zero a range, keep size
        assert fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 1 << 20, 1 << 20) == 0
        assert os.pread(fd, 1 << 20, 1 << 20) == bytes(1 << 20)
        assert os.lseek(fd, 1 << 20, os.SEEK_HOLE) == 1 << 20
        assert os.lseek(fd, 1 << 20, os.SEEK_DATA) == 2 << 20
        assert fallocate(fd, FALLOC_FL_ZERO_RANGE, 0, 4096) == 0
        assert os.pread(fd, 4096, 0) == bytes(4096)
        assert fallocate(fd, FALLOC_FL_KEEP_SIZE, 8 << 20, 1 << 20) == 0
        assert os.fstat(fd).st_size == 8 << 20
        assert fallocate(fd, 0, 8 << 20, 4096) == 0
        assert os.fstat(fd).st_size == (8 << 20) + 4096
        # the API's EOPNOTSUPP for PUNCH_HOLE without KEEP_SIZE reaches the program
        assert fallocate(fd, FALLOC_FL_PUNCH_HOLE, 0, 4096) == errno.EOPNOTSUPP
        os.fsync(fd)
        os.fdatasync(fd)
        os.truncate(p, 10)
        assert os.pread(fd, 100, 0) == bytes(10)
    finally:
        os.close(fd)


def test_rename_flags(d: str) -> None:
    a, b, c = (os.path.join(d, n) for n in "abc")
    for p in (a, b):
        with open(p, "w") as f:
            f.write(p)
    assert renameat2(a, b, RENAME_NOREPLACE) == errno.EEXIST
    assert renameat2(a, c, RENAME_NOREPLACE) == 0
    assert not os.path.exists(a)
    with open(c) as f:
        assert f.read() == a
    assert renameat2(c, b, RENAME_EXCHANGE) == 0  # swapped, both still there
    with open(b) as f:
        assert f.read() == a
    with open(c) as f:
        assert f.read() == b
    os.mkdir(os.path.join(d, "sub"))
    assert renameat2(c, os.path.join(d, "sub"), RENAME_EXCHANGE) == 0  # a file with a directory
    assert os.path.isdir(c)
    assert os.path.isfile(os.path.join(d, "sub"))
    assert renameat2(c, os.path.join(d, "nope"), RENAME_EXCHANGE) == errno.ENOENT
    assert renameat2(c, b, RENAME_EXCHANGE | RENAME_NOREPLACE) == errno.EINVAL
    assert renameat2(d, os.path.join(c, "x"), RENAME_EXCHANGE) == errno.ENOENT
    os.mkdir(os.path.join(c, "in"))
    assert renameat2(c, os.path.join(c, "in"), RENAME_EXCHANGE) == errno.EINVAL  # into itself
    assert renameat2(os.path.join(c, "in"), c, RENAME_EXCHANGE) == errno.EINVAL
    os.rmdir(os.path.join(c, "in"))
    os.rmdir(c)
    assert renameat2(os.path.join(d, "sub"), c, 0) == 0
    assert sorted(os.listdir(d)) == ["b", "c"]


def test_links_and_attributes(d: str) -> None:
    f = os.path.join(d, "f")
    with open(f, "w") as out:
        out.write("x")
    os.link(f, os.path.join(d, "h"))
    assert os.stat(f).st_nlink == 2
    assert os.stat(f).st_ino == os.stat(os.path.join(d, "h")).st_ino
    os.symlink("f", os.path.join(d, "s"))
    assert os.readlink(os.path.join(d, "s")) == "f"
    assert os.stat(os.path.join(d, "s")).st_ino == os.stat(f).st_ino
    os.chmod(f, 0o600)
    assert os.stat(f).st_mode & 0o7777 == 0o600
    os.chown(f, 1234, 5678)
    assert (os.stat(f).st_uid, os.stat(f).st_gid) == (1234, 5678)
    os.utime(f, ns=(1_000_000_001, 2_000_000_002))
    assert (os.stat(f).st_atime_ns, os.stat(f).st_mtime_ns) == (1_000_000_001, 2_000_000_002)
    os.utime(f)  # now
    assert abs(os.stat(f).st_mtime_ns - time.time_ns()) < 60 * 10**9
    with open(f, "r+") as fh:  # the fd forms: fchmod, futimens, ftruncate
        os.fchmod(fh.fileno(), 0o640)
        os.ftruncate(fh.fileno(), 0)
        os.utime(fh.fileno(), ns=(5, 6))
    assert os.stat(f).st_mode & 0o7777 == 0o640
    assert os.stat(f).st_mtime_ns == 6
    v = os.statvfs(d)
    assert (v.f_bsize, v.f_namemax) == (4096, 255)
    assert 0 < v.f_bfree <= v.f_blocks
    assert errno_of(os.mkdir, f) == errno.EEXIST
    assert errno_of(os.rmdir, d) == errno.ENOTEMPTY
    assert errno_of(os.mknod, os.path.join(d, "fifo"), 0o600 | 0o010000) == errno.EPERM


def test_extended_attributes(d: str) -> None:
    f = os.path.join(d, "f")
    with open(f, "w") as out:
        out.write("x")
    os.setxattr(f, "user.color", b"blue")
    os.setxattr(f, "user.big", bytes(range(256)) * 64)  # past the inline space
    assert os.getxattr(f, "user.color") == b"blue"
    assert os.getxattr(f, "user.big") == bytes(range(256)) * 64
    assert sorted(os.listxattr(f)) == ["user.big", "user.color"]
    assert errno_of(os.setxattr, f, "user.color", b"x", os.XATTR_CREATE) == errno.EEXIST
    assert errno_of(os.setxattr, f, "user.nope", b"x", os.XATTR_REPLACE) == errno.ENODATA
    assert errno_of(os.getxattr, f, "user.nope") == errno.ENODATA
    os.removexattr(f, "user.color")
    assert os.listxattr(f) == ["user.big"]
    assert errno_of(os.removexattr, f, "user.color") == errno.ENODATA
    os.symlink("f", os.path.join(d, "s"))  # through a link: the file's, unless told not to
    assert os.getxattr(os.path.join(d, "s"), "user.big") == bytes(range(256)) * 64
    assert os.listxattr(os.path.join(d, "s"), follow_symlinks=False) == []


def xattr_probes(f: str) -> list[object]:
    """What libc's xattr calls return on ``f`` (a value or an errno), with the
    buffers a program passes: a size query, a buffer too small, the limits."""
    libc.getxattr.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t]
    libc.listxattr.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t]
    libc.getxattr.restype = libc.listxattr.restype = ctypes.c_ssize_t
    path = f.encode()
    buf = ctypes.create_string_buffer(1 << 16)
    out: list[object] = []

    def result(n: int) -> object:
        return n if n >= 0 else f"errno {errno.errorcode[ctypes.get_errno()]}"

    def probe(call: object) -> object:
        try:
            return call()  # type: ignore[operator]
        except OSError as exc:
            return f"errno {errno.errorcode[exc.errno or 0]}"

    os.setxattr(f, "user.v", b"0123456789")
    out.append(result(libc.getxattr(path, b"user.v", None, 0)))  # the size
    out.append(result(libc.getxattr(path, b"user.v", buf, 4)))  # too small: ERANGE
    out.append(result(libc.getxattr(path, b"user.v", buf, 10)))
    out.append(result(libc.listxattr(path, None, 0)))
    out.append(result(libc.listxattr(path, buf, 3)))
    out.append(probe(lambda: os.setxattr(f, "user." + "n" * 251, b"x")))  # 256 bytes
    out.append(probe(lambda: os.setxattr(f, "user." + "n" * 250, b"x")))  # 255 bytes
    out.append(probe(lambda: os.setxattr(f, "user.big", bytes(65537))))
    out.append(probe(lambda: os.setxattr(f, "nonamespace", b"x")))
    out.append(probe(lambda: os.getxattr(f, "user.")))
    out.append(sorted(os.listxattr(f)))
    return out


def test_xattr_buffers_and_limits_as_linux(d: str) -> None:
    """Size queries, short buffers (ERANGE), name and value limits (ERANGE, E2BIG),
    an unknown namespace: the same on the mount as on /dev/shm (tmpfs)."""
    host = tempfile.mkdtemp(prefix="daxfs-xattr-host-", dir="/dev/shm")
    try:
        seen = []
        for top in (d, host):
            f = os.path.join(top, "f")
            with open(f, "w") as out:
                out.write("x")
            seen.append(xattr_probes(f))
    finally:
        shutil.rmtree(host)
    assert seen[0] == seen[1], f"mount {seen[0]}\nhost  {seen[1]}"
    assert seen[0][1] == "errno ERANGE"


XATTRS_AS_ANOTHER_USER = """
import os, sys
os.setgid(4321); os.setuid(1234)
f = sys.argv[1]
def probe(call):
    try:
        return repr(call())
    except OSError as e:
        return f"errno {e.errno}"
print(sorted(os.listxattr(f)))
print(probe(lambda: os.getxattr(f, "trusted.t")))
print(probe(lambda: os.setxattr(f, "trusted.t", b"x")))
print(probe(lambda: os.setxattr(f, "security.s", b"x")))
print(probe(lambda: os.removexattr(f, "security.s")))
print(probe(lambda: os.getxattr(f, "security.s")))
print(probe(lambda: os.setxattr(f, "user.v", b"v")))
fd = os.open(f, os.O_RDONLY)
os.unlink(f)  # by descriptor now: the wire tap answers on the mount
print(sorted(os.listxattr(fd)))
print(probe(lambda: os.getxattr(fd, "trusted.t")))
"""


def test_trusted_and_security_names_as_linux_allows_them(d: str, tmp_path: object) -> None:
    """Root sets user., trusted. and security. names; another user then lists, reads
    and writes them, by path and by descriptor, through the mount and on the host's
    /dev/shm (tmpfs): the same results (trusted. hidden and refused, security.
    readable but not writable)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to act as another user")
    seen = []
    host = tempfile.mkdtemp(prefix="daxfs-xattr-host-", dir="/dev/shm")
    try:
        for top in (d, host):
            os.chmod(top, 0o777)
            f = os.path.join(top, "f")
            with open(f, "w") as out:
                out.write("x")
            os.chmod(f, 0o666)
            for name in ("user.u", "trusted.t", "security.s"):
                os.setxattr(f, name, name.encode())
            assert sorted(os.listxattr(f)) == ["security.s", "trusted.t", "user.u"]
            done = subprocess.run(
                [sys.executable, "-c", XATTRS_AS_ANOTHER_USER, f],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert done.returncode == 0, done.stderr
            seen.append(done.stdout)
    finally:
        shutil.rmtree(host)
    assert seen[0] == seen[1], f"mount:\n{seen[0]}\nhost:\n{seen[1]}"
    assert "trusted" not in seen[0].splitlines()[0]


def test_unlinked_open_file_keeps_working(d: str) -> None:
    p = os.path.join(d, "f")
    fd = os.open(p, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.write(fd, b"still here")
        os.unlink(p)
        assert os.listdir(d) == []  # no .fuse_hidden file (hard_remove)
        assert os.pread(fd, 100, 0) == b"still here"
        os.pwrite(fd, b"S", 0)
        # fstat, fchmod and futimens come by node id alone; libfuse has no path for
        # the node any more (ESTALE), the wire tap answers from the open File
        assert os.fstat(fd).st_size == 10
        assert os.fstat(fd).st_nlink == 0
        os.fchmod(fd, 0o600)
        os.utime(fd, ns=(5_000_000_007, 6_000_000_008))
        s = os.fstat(fd)
        assert (st.S_IMODE(s.st_mode), s.st_atime_ns, s.st_mtime_ns) == (
            0o600,
            5_000_000_007,
            6_000_000_008,
        )
        # extended attributes by descriptor come by node id alone too
        os.setxattr(fd, "user.x", b"kept")
        assert os.getxattr(fd, "user.x") == b"kept"
        assert os.listxattr(fd) == ["user.x"]
        assert errno_of(os.setxattr, fd, "user.x", b"v", os.XATTR_CREATE) == errno.EEXIST
        os.removexattr(fd, "user.x")
        assert errno_of(os.getxattr, fd, "user.x") == errno.ENODATA
        # what the tap does not answer: opening the file again (OPEN of a node
        # libfuse has no path for)
        assert errno_of(os.open, f"/proc/self/fd/{fd}", os.O_RDONLY) == errno.ESTALE
        os.ftruncate(fd, 5)
        assert os.pread(fd, 100, 0) == b"Still"
    finally:
        os.close(fd)
    os.rmdir(d)


def test_reopening_through_proc(d: str) -> None:
    """/proc/self/fd/N of an open file whose name is gone does not reopen: ESTALE
    (an OPEN of a node libfuse has no path for; on ext4 or tmpfs it would
    reopen).  Its descriptor keeps working; a renamed file, which still has a
    name, reopens (docs/ARCHITECTURE.md, "The FUSE front end", Limits)."""

    def reopen(fd: int, flags: int) -> bytes:
        again = os.open(f"/proc/self/fd/{fd}", flags)
        try:
            return os.pread(again, 100, 0)
        finally:
            os.close(again)

    def gone(case: str, p: str) -> None:
        if case == "unlinked":
            os.unlink(p)
        elif case == "unlinked, another name left":
            os.link(p, p + ".other")
            os.unlink(p)
        else:  # replaced by a rename over it
            with open(p + ".new", "wb") as f:
                f.write(b"new")
            os.rename(p + ".new", p)

    p = os.path.join(d, "f")
    for case in ("unlinked", "unlinked, another name left", "renamed over"):
        with open(p, "wb") as f:
            f.write(b"old")
        fd = os.open(p, os.O_RDWR)
        try:
            gone(case, p)
            for flags in (os.O_RDONLY, os.O_RDWR):
                assert errno_of(reopen, fd, flags) == errno.ESTALE, case
            assert os.pread(fd, 100, 0) == b"old", case
            assert os.fstat(fd).st_size == 3, case
        finally:
            os.close(fd)
    with open(p, "wb") as f:
        f.write(b"kept")
    fd = os.open(p, os.O_RDWR)
    try:
        os.rename(p, p + ".moved")
        assert reopen(fd, os.O_RDONLY) == b"kept"
    finally:
        os.close(fd)


def test_unlinked_file_with_two_handles_answers_through_the_one_left(d: str) -> None:
    p = os.path.join(d, "f")
    first = os.open(p, os.O_CREAT | os.O_RDWR, 0o644)
    second = os.open(p, os.O_RDONLY)
    try:
        os.unlink(p)
        os.close(first)  # its RELEASE drops that handle from the node
        first = -1
        os.fchmod(second, 0o604)
        assert st.S_IMODE(os.fstat(second).st_mode) == 0o604
    finally:
        for fd in (first, second):
            if fd >= 0:
                os.close(fd)
    with pytest.raises(FileNotFoundError):
        os.stat(p)
    os.rmdir(d)


def test_mmap_through_the_page_cache(d: str) -> None:
    p = os.path.join(d, "m")
    with open(p, "wb") as f:
        f.truncate(1 << 16)
    with open(p, "r+b") as f, mmap.mmap(f.fileno(), 1 << 16) as m:
        m[100:105] = b"hello"
        m.flush()
    with open(p, "rb") as f:
        assert f.read()[100:105] == b"hello"


def test_ownership_and_default_permissions(d: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to act as another user")
    os.chmod(d, 0o777)
    mine = os.path.join(d, "root-only")
    with open(mine, "w") as f:
        f.write("x")
    os.chmod(mine, 0o644)
    code = (
        "import os, sys, errno\n"
        "os.setgid(4321); os.setuid(1234)\n"
        "p = sys.argv[1]\n"
        "fd = os.open(p + '/theirs', os.O_CREAT | os.O_WRONLY, 0o600); os.close(fd)\n"
        "os.mkdir(p + '/dir', 0o700)\n"
        "try:\n"
        "    open(p + '/root-only', 'w')\n"
        "except PermissionError as e:\n"
        "    print(e.errno)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, d], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(errno.EACCES)
    for name in ("theirs", "dir"):
        info = os.stat(os.path.join(d, name))
        assert (info.st_uid, info.st_gid) == (1234, 4321), name
    assert os.stat(os.path.join(d, "theirs")).st_mode & 0o777 == 0o600


def test_threads_write_and_read_at_once(d: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def work(i: int) -> bytes:
        p = os.path.join(d, f"t{i}")
        data = bytes([i]) * (256 << 10)
        with open(p, "wb") as f:
            f.write(data)
        with open(p, "rb") as f:
            return f.read()

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(work, range(16)))
    assert all(r == bytes([i]) * (256 << 10) for i, r in enumerate(results))


def test_the_mount_serves_requests_on_several_threads(image: str, mountpoint: str) -> None:
    """libfuse's multi-threaded loop: a fresh mount starts one worker thread and
    starts more while requests wait (8 clients at once here)."""
    from concurrent.futures import ThreadPoolExecutor

    from daxfs.fuse._mount import _read_pid

    daxfs_cli("mount", image, mountpoint)
    try:
        pid = _read_pid(mountpoint)
        before = len(os.listdir(f"/proc/{pid}/task"))

        def work(i: int) -> None:
            p = os.path.join(mountpoint, f"t{i}")
            with open(p, "wb") as f:
                f.write(os.urandom(1 << 20))
            for _ in range(10):
                with open(p, "rb") as f:
                    f.read()

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(work, range(8)))
        after = len(os.listdir(f"/proc/{pid}/task"))
        assert after > before, (before, after)
    finally:
        daxfs_cli("umount", mountpoint)


def test_options() -> None:
    o = parse_options("ro,dax=never,layout_timeout=2.5,allow_other,max_read=65536")
    assert (o.readonly, o.dax, o.layout_timeout) == (True, "never", 2.5)
    assert o.fuse == {"allow_other": True, "max_read": "65536"}
    with pytest.raises(InvalidArgument, match="bogus"):
        parse_options("bogus")
    with pytest.raises(InvalidArgument, match="dax=sometimes"):
        parse_options("dax=sometimes")


# -- the CLI and the lifecycle ----------------------------------------------------------


@pytest.fixture
def image(shm_path: object) -> str:
    path = str(shm_path)
    daxfs.mkfs(path, 32 << 20)
    return path


@pytest.fixture
def mountpoint() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="daxfs-mnt-")
    yield path
    if is_mounted(path):
        subprocess.run(["fusermount3", "-u", "-z", path], check=False)
    os.rmdir(path)


def one_line_error(done: subprocess.CompletedProcess[str], *words: str) -> None:
    assert done.returncode == 1, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("daxfs: "), done.stderr
    assert "Traceback" not in done.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])


def test_cli_mount_failures_are_one_line(image: str, mountpoint: str) -> None:
    one_line_error(daxfs_cli("mount", image + ".missing", mountpoint, check=False), "missing")
    one_line_error(daxfs_cli("mount", image, mountpoint + "/nope", check=False), "nope")
    one_line_error(daxfs_cli("mount", image, image, check=False), "not a directory")
    one_line_error(daxfs_cli("mount", image, mountpoint, "-o", "bogus", check=False), "bogus")
    one_line_error(daxfs_cli("umount", mountpoint, check=False), "not a daxfs mount point")
    assert not is_mounted(mountpoint)
    daxfs_cli("mount", image, mountpoint)
    try:
        # the image is busy: the background child's error reaches the caller
        other = tempfile.mkdtemp(prefix="daxfs-mnt-")
        try:
            one_line_error(daxfs_cli("mount", image, other, check=False), "in use")
        finally:
            os.rmdir(other)
        # files open: umount refuses (EBUSY), the mount stays
        fd = os.open(mountpoint, os.O_RDONLY)
        try:
            one_line_error(daxfs_cli("umount", mountpoint, check=False), "busy")
        finally:
            os.close(fd)
        assert is_mounted(mountpoint)
    finally:
        daxfs_cli("umount", mountpoint)
    with daxfs.mount(image) as fs:  # released on return: mountable at once
        assert fs.listdir("/") == []


def test_read_only_mount(image: str, mountpoint: str) -> None:
    with daxfs.mount(image) as fs, fs.open("/f", "w") as f:
        f.write("data")
    daxfs_cli("mount", image, mountpoint, "-o", "ro")
    try:
        with open(os.path.join(mountpoint, "f")) as f:
            assert f.read() == "data"
        assert errno_of(os.mkdir, os.path.join(mountpoint, "d")) == errno.EROFS
        assert errno_of(os.open, os.path.join(mountpoint, "f"), os.O_WRONLY) == errno.EROFS
        assert os.statvfs(mountpoint).f_flag & os.ST_RDONLY
    finally:
        daxfs_cli("umount", mountpoint)


SHARED = {f"f{i}": os.urandom(20_000 * (i + 1) + 17) for i in range(3)}


def _read_through(paths: list[str], out: object) -> None:
    """A reader process: every file through read() and through a shared mmap."""
    import hashlib

    seen = []
    for p in paths:
        with open(p, "rb") as f:
            data = f.read()
            with mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
                mapped = bytes(m)
        seen.append((p, hashlib.sha256(data).hexdigest(), hashlib.sha256(mapped).hexdigest()))
    out.put(seen)  # type: ignore[attr-defined]


def test_read_only_mounts_share_the_image(image: str, mountpoint: str) -> None:
    """Two read-only FUSE mounts and an API reader of one image at once, read by
    processes through both mounts; a read-write mount (FUSE or API) is EBUSY
    meanwhile, and mounts once they are gone (docs/GUARANTEES.md)."""
    import hashlib
    import multiprocessing

    with daxfs.mount(image) as fs:
        for name, data in SHARED.items():
            with fs.open(f"/{name}", "wb") as f:
                f.write(data)
    second = tempfile.mkdtemp(prefix="daxfs-mnt-")
    try:
        daxfs_cli("mount", image, mountpoint, "-o", "ro")
        daxfs_cli("mount", image, second, "-o", "ro")
        try:
            with daxfs.mount(image, readonly=True) as fs:  # a third reader, in this process
                assert sorted(fs.listdir("/")) == sorted(SHARED)
                with pytest.raises(Busy) as busy:
                    daxfs.mount(image)
                assert busy.value.errno == errno.EBUSY
                other = tempfile.mkdtemp(prefix="daxfs-mnt-")
                try:
                    done = daxfs_cli("mount", image, other, check=False)
                    assert done.returncode == 1, done.stderr
                    assert "in use" in done.stderr, done.stderr
                finally:
                    os.rmdir(other)
                ctx = multiprocessing.get_context("spawn")
                out = ctx.Queue()
                procs = [
                    ctx.Process(
                        target=_read_through,
                        args=([os.path.join(root, n) for n in sorted(SHARED)], out),
                    )
                    for root in (mountpoint, second, mountpoint, second)
                ]
                for p in procs:
                    p.start()
                results = [out.get(timeout=120) for _ in procs]
                for p in procs:
                    p.join(60)
                    assert p.exitcode == 0
        finally:
            for root in (mountpoint, second):
                if is_mounted(root):
                    daxfs_cli("umount", root)
    finally:
        os.rmdir(second)
    expected = {n: hashlib.sha256(d).hexdigest() for n, d in SHARED.items()}
    for seen in results:
        assert len(seen) == len(SHARED)
        for path, read, mapped in seen:
            assert read == mapped == expected[os.path.basename(path)], path
    with daxfs.mount(image) as fs:  # the readers gone: a writer mounts
        fs.unlink("/f0")


def wait_mounted(proc: subprocess.Popen[str]) -> None:
    """Read the foreground mount's stderr up to its "mounted on" line."""
    assert proc.stderr is not None
    for line in proc.stderr:
        if "mounted on" in line:
            return
    raise AssertionError(f"the mount ended without mounting: {proc.wait()}")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_unmounts_cleanly(image: str, mountpoint: str, sig: int) -> None:
    proc = subprocess.Popen(
        [*DAXFS, "mount", "--foreground", image, mountpoint],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_mounted(proc)
        with open(os.path.join(mountpoint, "f"), "wb") as f:
            f.write(b"x" * 100_000)
        keep = os.open(os.path.join(mountpoint, "f"), os.O_RDONLY)  # open at the signal
        proc.send_signal(sig)
        assert proc.wait(60) == 0
        with contextlib.suppress(OSError):  # ENOTCONN: the mount is gone
            os.close(keep)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not is_mounted(mountpoint)
    done = daxfs_cli("fsck", image, "--no-progress", check=False)
    assert done.returncode == 0, done.stdout
    with daxfs.mount(image, readonly=True) as fs:
        assert fs.stat("/f").st_size == 100_000


def test_kill_9_leaves_a_recoverable_image(image: str, mountpoint: str) -> None:
    proc = subprocess.Popen(
        [*DAXFS, "mount", "-f", image, mountpoint], stderr=subprocess.PIPE, text=True
    )
    wait_mounted(proc)
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os, sys\n"
            "for i in range(100000):\n"
            "    with open(os.path.join(sys.argv[1], f'f{i % 50}'), 'wb') as f:\n"
            "        f.write(os.urandom(i % 9000))\n",
            mountpoint,
        ],
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)
    proc.kill()
    proc.wait(60)
    writer.wait(60)
    subprocess.run(["fusermount3", "-u", "-z", mountpoint], check=False)
    done = daxfs_cli("fsck", image, "--no-progress", check=False)
    # clean, also when the kill fell between the journal's commit point and its apply:
    # fsck checks the image with that transaction replayed, as the next mount replays
    # it (tests/crash/test_unmount.py reaches that window deterministically)
    assert done.returncode == 0, done.stdout
    with daxfs.mount(image) as fs:
        assert len(fs.listdir("/")) > 0
