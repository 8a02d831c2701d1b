"""daxfs: a persistent-memory DAX storage stack in user space.

Layers, bottom up (docs/ARCHITECTURE.md): ``daxfs.pmem`` devices, the iomap
extent interface, the filesystem, mappings and pinning, block devices and the
page cache, and the front ends (API, CLI, FUSE).
"""

from daxfs import errors
from daxfs.pmem import Granularity, PmemDevice, open_device

__version__ = "0.1.0"

__all__ = ["Granularity", "PmemDevice", "__version__", "errors", "open_device"]
