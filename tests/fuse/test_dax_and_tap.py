"""The mount's ``-o dax=`` and its wire tap's fallback, through ``daxfs mount``.

``-o dax=`` is the data path of the daxfs mount the serving process makes
(``daxfs.mount(dax=...)``, docs/ARCHITECTURE.md "The per-inode DAX flag"):
by DAX (the image mapped into the serving process) or through daxfs.block and
a DRAM cache.  Programs see a FUSE filesystem either way (the page cache).
The per-inode flag itself (chattr +x) is not reachable through the mount.

Without the C extension daxfs.fuse._tap the mount uses the same tap in
Python: ``daxfs mount`` says so in one note on stderr, ``daxfs info`` in its
"FUSE mount" row, and the tap still answers (fstat of an unlinked open file).
The subprocesses here block the extension's import (``sys.modules`` entry
None), as an install without a C compiler would be.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat as st
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import daxfs
from daxfs.fuse import is_mounted, parse_options, tap_engine
from daxfs.fuse._mount import _read_pid
from tests.block.loop import loop_device, needs_losetup
from tests.fuse.mounts import daxfs_cli, skip_reason

pytestmark = pytest.mark.skipif(skip_reason() is not None, reason=f"no FUSE: {skip_reason()}")

#: the CLI in a process where daxfs.fuse._tap cannot be imported (not built)
WITHOUT_C_TAP = (
    "import sys; sys.modules['daxfs.fuse._tap'] = None\n"
    "from daxfs.cli import main; sys.exit(main(sys.argv[1:]))"
)
FS_IOC_FSGETXATTR = 0x801C581F  # _IOR('X', 31, struct fsxattr): what chattr +x reads first


def cli_without_c_tap(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_C_TAP, *args], capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def image(shm_path: Path) -> str:
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


def maps_of_server(mountpoint: str) -> str:
    """/proc/PID/maps of the process serving ``mountpoint``."""
    pid = _read_pid(mountpoint)
    assert pid is not None, "no pid file for the mount"
    with open(f"/proc/{pid}/maps") as f:
        return f.read()


def one_line_error(done: subprocess.CompletedProcess[str], *words: str) -> str:
    assert done.returncode == 1, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("daxfs: "), done.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


# -- -o dax= ------------------------------------------------------------------------------


@pytest.mark.parametrize("dax", ["inode", "always", "never"])
def test_dax_option_picks_the_serving_data_path(image: str, mountpoint: str, dax: str) -> None:
    daxfs_cli("mount", image, mountpoint, "-o", f"dax={dax}")
    try:
        mapped = image in maps_of_server(mountpoint)
        # inode (the default) and always: the image is mapped, its files run by DAX in
        # the serving process; never: daxfs.block and a DRAM cache, the image not mapped
        assert mapped == (dax != "never"), maps_of_server(mountpoint)
        with open(os.path.join(mountpoint, "f"), "wb") as f:
            f.write(b"x" * 10_000)
        with open(os.path.join(mountpoint, "f"), "rb") as f:
            assert f.read() == b"x" * 10_000
    finally:
        daxfs_cli("umount", mountpoint)
    with daxfs.mount(image, readonly=True) as fs:
        assert fs.open("/f", "rb").read() == b"x" * 10_000


def test_a_bad_dax_value_is_einval_in_one_line(image: str, mountpoint: str) -> None:
    with pytest.raises(OSError, match="dax=sometimes") as info:
        parse_options("ro,dax=sometimes")
    assert info.value.errno == errno.EINVAL
    for bad in ("dax=sometimes", "dax=", "dax"):
        line = one_line_error(daxfs_cli("mount", image, mountpoint, "-o", bad, check=False), bad)
        assert "dax=always|inode|never" in line
    assert not is_mounted(mountpoint)


@needs_losetup
def test_dax_always_on_a_block_device_fails_naming_why(tmp_path: Path, mountpoint: str) -> None:
    backing = tmp_path / "loop.img"
    backing.write_bytes(bytes(16 << 20))
    with loop_device(backing) as loop:
        daxfs.mkfs(loop)
        done = daxfs_cli("mount", loop, mountpoint, "-o", "dax=always", check=False)
        one_line_error(done, "dax=always", loop, "cannot do DAX", "dax='never' or 'inode'")
        assert not is_mounted(mountpoint)
        daxfs_cli("mount", loop, mountpoint)  # inode: through the block cache
        try:
            assert loop not in maps_of_server(mountpoint)
            with open(os.path.join(mountpoint, "f"), "wb") as f:
                f.write(b"on a loop device")
        finally:
            daxfs_cli("umount", mountpoint)
        with daxfs.mount(loop, readonly=True) as fs:
            assert fs.open("/f", "rb").read() == b"on a loop device"


def test_the_per_inode_flag_is_not_reachable_through_the_mount(image: str, mountpoint: str) -> None:
    with daxfs.mount(image) as fs:
        fs.open("/flagged", "wb").close()
        fs.set_dax("/flagged", True)
    daxfs_cli("mount", image, mountpoint)
    try:
        fd = os.open(os.path.join(mountpoint, "flagged"), os.O_RDONLY)
        try:
            with pytest.raises(OSError, match="Inappropriate ioctl") as info:  # chattr, lsattr
                fcntl.ioctl(fd, FS_IOC_FSGETXATTR, bytes(28))
            assert info.value.errno == errno.ENOTTY, info.value
        finally:
            os.close(fd)
    finally:
        daxfs_cli("umount", mountpoint)
    with daxfs.mount(image, readonly=True) as fs:
        assert fs.get_dax("/flagged").flag  # stored, untouched by the mount


# -- the wire tap: C, or the Python fallback, said ------------------------------------


def test_the_mount_and_info_name_the_tap_in_use(image: str, mountpoint: str) -> None:
    """As installed (the C tap where setup.py could build it, as make's bootstrap
    lets it): no note with the C tap, the fallback's note without it."""
    kind, _ = tap_engine()
    done = daxfs_cli("mount", image, mountpoint)
    try:
        if kind == "C":
            assert done.stderr == ""  # nothing to say
        else:
            assert done.stderr.startswith("daxfs: note: the FUSE wire tap runs in Python")
    finally:
        daxfs_cli("umount", mountpoint)
    tap = "wire tap in C" if kind == "C" else "wire tap in Python (fallback)"
    assert f"FUSE mount:        daxfs mount works, {tap}\n" in daxfs_cli("info", image).stdout


def test_without_the_c_tap_the_mount_says_so_and_the_tap_still_answers(
    image: str, mountpoint: str
) -> None:
    done = cli_without_c_tap("mount", image, mountpoint)
    assert done.returncode == 0, done.stderr
    try:
        notes = done.stderr.strip().splitlines()
        assert len(notes) == 1, done.stderr
        assert notes[0].startswith("daxfs: note: the FUSE wire tap runs in Python: fallback: ")
        assert "daxfs.fuse._tap is not built" in notes[0]
        # the Python tap answers what libfuse refuses: fstat and fchmod of an unlinked file
        p = os.path.join(mountpoint, "gone")
        fd = os.open(p, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            os.write(fd, b"still here")
            os.unlink(p)
            os.fchmod(fd, 0o600)
            s = os.fstat(fd)
            assert (s.st_size, s.st_nlink, st.S_IMODE(s.st_mode)) == (10, 0, 0o600)
        finally:
            os.close(fd)
    finally:
        daxfs_cli("umount", mountpoint)
    info = cli_without_c_tap("info", image)
    assert info.returncode == 0, info.stderr
    assert "FUSE mount:        daxfs mount works, wire tap in Python (fallback)\n" in info.stdout
    assert "daxfs.fuse._tap is not built" in info.stdout


def test_without_the_c_tap_the_mount_is_single_threaded_and_unmounts(
    image: str, mountpoint: str
) -> None:
    """The Python tap runs on libfuse's single-threaded loop (daxfs.fuse._binding: the
    multi-threaded one cancelled a worker waiting for the GIL and hung about 2 in 5
    unmounts): one thread under 8 clients at once, and each unmount returns."""
    from concurrent.futures import ThreadPoolExecutor

    def work(i: int) -> None:
        p = os.path.join(mountpoint, f"t{i}")
        with open(p, "wb") as f:
            f.write(os.urandom(1 << 18))
        for _ in range(5):
            with open(p, "rb") as f:
                f.read()

    for _ in range(4):
        done = cli_without_c_tap("mount", image, mountpoint)
        assert done.returncode == 0, done.stderr
        try:
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(work, range(8)))
            pid = _read_pid(mountpoint)
            assert len(os.listdir(f"/proc/{pid}/task")) == 1
        finally:
            daxfs_cli("umount", mountpoint)  # raises if the server does not exit


def test_without_the_c_tap_a_foreground_mount_says_so(image: str, mountpoint: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", WITHOUT_C_TAP, "mount", "-f", image, mountpoint],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        said = []
        for line in proc.stderr:
            said.append(line)
            if "mounted on" in line:
                break
        assert any(s.startswith("daxfs: note: the FUSE wire tap runs in Python") for s in said)
    finally:
        if is_mounted(mountpoint):
            daxfs_cli("umount", mountpoint)
        assert proc.wait(60) == 0
