"""Block devices: bios, queue limits, split and merge, and the backends that execute them.

The layer between devices (daxfs.pmem) and the filesystem (docs/ARCHITECTURE.md,
"Block devices: daxfs.block").  A ``Bio`` is one I/O request (bio.py); a
``BlockDevice`` validates, splits, merges and executes bios (device.py).
Backends: ``PmemBlockDevice`` (copies to and from a pmem device, pmem.py) and
``FileBlockDevice`` (``open_block``: a regular file or a block device,
O_DIRECT when allowed, preadv/pwritev on an engine's threads; file.py,
engine.py) and ``NbdBlockDevice`` (``open_nbd``: an NBD server; nbd.py).
The crash-simulating ``SimulatedBlockDevice`` lives in daxfs.testing.
"""

from daxfs.block.bio import (
    SECTOR_SIZE,
    Bio,
    BioFlags,
    BioOp,
    QueueLimits,
    Request,
    SegmentSource,
    check_bio,
    merge_bios,
    split_bio,
)
from daxfs.block.device import BlockDevice
from daxfs.block.engine import IoEngine, IoKind, IoOp, ThreadPoolEngine
from daxfs.block.file import FileBlockDevice, open_block
from daxfs.block.nbd import NbdBlockDevice, open_nbd
from daxfs.block.pmem import PmemBlockDevice

__all__ = [
    "SECTOR_SIZE",
    "Bio",
    "BioFlags",
    "BioOp",
    "BlockDevice",
    "FileBlockDevice",
    "IoEngine",
    "IoKind",
    "IoOp",
    "NbdBlockDevice",
    "PmemBlockDevice",
    "QueueLimits",
    "Request",
    "SegmentSource",
    "ThreadPoolEngine",
    "check_bio",
    "merge_bios",
    "open_block",
    "open_nbd",
    "split_bio",
]
