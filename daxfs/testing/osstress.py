"""nsstress through a FUSE mount: the same threads, models and checks, over os.*.

``daxfs.testing.nsstress`` drives a ``FileSystem`` from several threads and
checks every result against its models.  Here the same ``Stress`` drives
``OsFileSystem``: the ``FileSystem`` methods nsstress calls, each made with
os.* on a ``daxfs mount`` of the image (so the threads' operations reach the
multi-threaded FUSE daemon concurrently, and every errno comes back through
the kernel).  The end of a run is the same: every check, then unmount (``daxfs
umount``), fsck of the image, mount again and every check again.  Mounting
and unmounting are the caller's (``mount``, ``unmount``: daxfs.testing sits
below daxfs.fuse; tests/fuse/test_stress.py passes daxfs.fuse's).

What does not pass through the mount is not drawn: the per-inode DAX flag
(``skip`` "dax": FUSE has no call for it; ``get_dax`` then answers "not set",
which is what the model holds).

Invariants:
1. Each ``FileSystem`` method is the os.* call with the same semantics (links
   followed or not as the API's defaults; rename flags through renameat2).
2. ``open_files`` is the files opened through it and not yet closed.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import threading
from collections.abc import Callable
from typing import Any

from daxfs.errors import NotSupported
from daxfs.fs.mount import mkfs
from daxfs.testing.nsstress import Stress, StressOptions, StressStats
from daxfs.testing.osfsx import OsFile
from daxfs.testing.posix import renameat2

_MODES = {
    "rb": os.O_RDONLY,
    "rb+": os.O_RDWR,
    "wb": os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
    "xb": os.O_WRONLY | os.O_CREAT | os.O_EXCL,
}


@dataclasses.dataclass
class _NoDax:
    flag: bool = False


class StressFile(OsFile):
    """OsFile with the calls nsstress adds (write at the position, read to the end)."""

    def __init__(self, path: str, flags: int, owner: OsFileSystem) -> None:
        super().__init__(path, flags)
        self._owner = owner
        owner._opened(self)

    def write(self, data: Any) -> int:
        return os.write(self.fd, data)

    def read(self) -> bytes:
        chunks = []
        while chunk := os.read(self.fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
            self._owner._closed(self)


class OsFileSystem:
    """The FileSystem methods nsstress calls, made with os.* below ``root``."""

    _fast = None  # no C stat path to probe

    def __init__(self, root: str, unmount: Callable[[str], None]) -> None:
        self.root = root.rstrip("/")
        self._unmount = unmount
        self._files: set[StressFile] = set()
        self._lock = threading.Lock()

    def _p(self, path: str) -> str:
        return self.root + "/" + path.lstrip("/")

    def _opened(self, f: StressFile) -> None:
        with self._lock:
            self._files.add(f)

    def _closed(self, f: StressFile) -> None:
        with self._lock:
            self._files.discard(f)

    def open_files(self) -> list[StressFile]:
        with self._lock:
            return list(self._files)

    def open(self, path: str, mode: str = "rb", buffering: int = -1) -> StressFile:
        return StressFile(self._p(path), _MODES[mode], self)

    def lstat(self, path: str) -> os.stat_result:
        return os.lstat(self._p(path))

    def stat(self, path: str) -> os.stat_result:
        return os.stat(self._p(path))

    def rename(
        self, src: str, dst: str, *, noreplace: bool = False, exchange: bool = False
    ) -> None:
        if noreplace or exchange:
            renameat2(self._p(src), self._p(dst), noreplace=noreplace, exchange=exchange)
        else:
            os.rename(self._p(src), self._p(dst))

    def mkdir(self, path: str, mode: int = 0o777) -> None:
        os.mkdir(self._p(path), mode)

    def makedirs(self, path: str, mode: int = 0o777, exist_ok: bool = False) -> None:
        os.makedirs(self._p(path), mode, exist_ok)

    def unlink(self, path: str) -> None:
        os.unlink(self._p(path))

    def rmdir(self, path: str) -> None:
        os.rmdir(self._p(path))

    def truncate(self, path: str, length: int) -> None:
        os.truncate(self._p(path), length)

    def symlink(self, target: str, path: str) -> None:
        os.symlink(target, self._p(path))

    def readlink(self, path: str) -> str:
        return os.readlink(self._p(path))

    def link(self, src: str, dst: str) -> None:
        os.link(self._p(src), self._p(dst))

    def listdir(self, path: str) -> list[str]:
        return os.listdir(self._p(path))

    def statvfs(self, path: str) -> os.statvfs_result:
        return os.statvfs(self._p(path))

    def getxattr(self, path: str, name: str) -> bytes:
        return os.getxattr(self._p(path), name)

    def setxattr(self, path: str, name: str, value: bytes, flags: int = 0) -> None:
        os.setxattr(self._p(path), name, value, flags)

    def listxattr(self, path: str) -> list[str]:
        return os.listxattr(self._p(path))

    def removexattr(self, path: str, name: str) -> None:
        os.removexattr(self._p(path), name)

    def get_dax(self, path: str) -> _NoDax:
        os.lstat(self._p(path))  # what the API raises for a missing path
        return _NoDax()

    def set_dax(self, path: str, on: bool) -> None:
        raise NotSupported(f"the DAX flag does not pass through a FUSE mount: {path}", path)

    def unmount(self) -> None:
        """Unmount (``daxfs umount``): the image is released (and clean) on return."""
        self._unmount(self.root)


#: mount(image) -> the directory it is mounted on; unmount(that directory)
Mount = Callable[[str], str]
Unmount = Callable[[str], None]


class MountedStress(Stress):
    """nsstress over ``OsFileSystem`` on mounts of an image file."""

    def __init__(
        self,
        seed: int,
        image: str,
        options: StressOptions | None = None,
        *,
        mount: Mount,
        unmount: Unmount,
    ) -> None:
        self._mount_image = mount
        self._unmount_root = unmount
        self._roots: list[str] = []
        opts = dataclasses.replace(options or StressOptions(), skip=frozenset({"dax"}))
        super().__init__(seed, opts, device=image)

    def _mount(self, device: Any) -> Any:
        root = self._mount_image(str(device))
        self._roots.append(root)
        return OsFileSystem(root, self._unmount_root)

    def run(self, ops: int | None = None, seconds: float | None = None) -> StressStats:
        try:
            return super().run(ops, seconds)
        finally:
            for root in set(self._roots):
                if os.path.ismount(root):
                    self._unmount_root(root)


def run_mounted(
    seed: int,
    *,
    mount: Mount,
    unmount: Unmount,
    ops: int | None = None,
    seconds: float | None = None,
    options: StressOptions | None = None,
    size: int | None = None,
) -> StressStats:
    """One nsstress run through mounts of a fresh image on /dev/shm.

    Raises:
        StressFailure: one line per failure, with the seeds.
    """
    opts = options or StressOptions()
    fd, image = tempfile.mkstemp(prefix="daxfs-stress-", suffix=".img", dir="/dev/shm")
    os.close(fd)
    os.unlink(image)
    try:
        mkfs(image, size or opts.device_size)
        return MountedStress(seed, image, opts, mount=mount, unmount=unmount).run(ops, seconds)
    finally:
        if os.path.exists(image):
            os.unlink(image)
