"""daxfs: a persistent-memory DAX storage stack in user space.

Layers, bottom up (docs/ARCHITECTURE.md): ``daxfs.pmem`` devices, the iomap
extent interface, the filesystem (``daxfs.fs``), mappings and pinning, block
devices and the page cache, and the front ends (this API, the CLI, FUSE).

    import daxfs
    daxfs.mkfs("/dev/shm/fs.img", 64 << 20)
    with daxfs.mount("/dev/shm/fs.img", persist="cpu") as fs:
        with fs.open("/hello.txt", "w") as f:
            f.write("durable on return\\n")
"""

from daxfs import errors
from daxfs.fs.file import File
from daxfs.fs.filesystem import FileSystem
from daxfs.fs.fsck import fsck
from daxfs.fs.mount import mkfs, mount
from daxfs.mm import MS_ASYNC, MS_INVALIDATE, MS_SYNC, Mapping, SGList
from daxfs.pmem import Granularity, PmemDevice, open_device

__version__ = "0.1.0"

__all__ = [
    "MS_ASYNC",
    "MS_INVALIDATE",
    "MS_SYNC",
    "File",
    "FileSystem",
    "Granularity",
    "Mapping",
    "PmemDevice",
    "SGList",
    "__version__",
    "errors",
    "fsck",
    "mkfs",
    "mount",
    "open_device",
]
