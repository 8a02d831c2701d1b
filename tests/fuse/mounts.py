"""Real FUSE mounts for tests: an image on /dev/shm mounted with ``daxfs mount``.

``FuseMount`` mounts through the CLI (a background mount, as a user would),
``close`` unmounts with ``daxfs umount`` and then checks the image with
``daxfs fsck``: every test that mounts also checks that what the programs did
left a consistent filesystem.  ``skip_reason`` says why a mount cannot work
here (no /dev/fuse, no fusermount3, no libfuse3).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

import daxfs
from daxfs.fuse import available, is_mounted

DAXFS = [sys.executable, "-m", "daxfs.cli"]


def skip_reason() -> str | None:
    why = available()
    if why is None and os.geteuid() != 0 and not os.access("/dev/fuse", os.R_OK | os.W_OK):
        why = "/dev/fuse is not accessible to this user"
    return why


def daxfs_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([*DAXFS, *args], capture_output=True, text=True, timeout=120)
    if check:
        assert done.returncode == 0, f"daxfs {' '.join(args)}: {done.stderr}"
    return done


class FuseMount:
    """A fresh image of ``size`` bytes, mounted on a temporary directory."""

    def __init__(self, size: int = 256 << 20, options: str = "allow_other") -> None:
        fd, self.image = tempfile.mkstemp(prefix="daxfs-fuse-", suffix=".img", dir="/dev/shm")
        os.close(fd)
        os.unlink(self.image)
        daxfs.mkfs(self.image, size)
        self.root = tempfile.mkdtemp(prefix="daxfs-mnt-")
        self.options = options
        self.mount()

    def mount(self) -> None:
        args = ["mount", self.image, self.root]
        if self.options:
            args += ["-o", self.options]
        daxfs_cli(*args)
        assert is_mounted(self.root)

    def unmount(self) -> None:
        daxfs_cli("umount", self.root)
        assert not is_mounted(self.root)

    def fsck(self) -> str:
        done = daxfs_cli("fsck", self.image, "--no-progress", check=False)
        assert done.returncode == 0, f"fsck after the mount: {done.stdout}{done.stderr}"
        return done.stdout

    def close(self) -> None:
        try:
            if is_mounted(self.root):
                self.unmount()
            self.fsck()
        finally:
            if is_mounted(self.root):
                subprocess.run(["fusermount3", "-u", "-z", self.root], check=False)
            shutil.rmtree(self.root, ignore_errors=True)
            os.unlink(self.image)

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)
