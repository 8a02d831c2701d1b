"""Byte-addressable persistent-memory devices: direct access, persist, flush, drain.

The lowest layer of daxfs (docs/ARCHITECTURE.md).  ``open_device(path)`` maps
device-DAX, a file on a DAX filesystem, or any file as emulated pmem, and
picks how to persist as PMDK's libpmem2 does.  Every device implements
``Device``; ``daxfs.testing.SimulatedPmem`` is the in-memory one that models
power failure.
"""

from daxfs.pmem.cpu import cpu_features, flush_instruction, native_available
from daxfs.pmem.detect import Backend, Detection
from daxfs.pmem.device import CACHE_LINE_SIZE, PAGE_SIZE, Device, Granularity
from daxfs.pmem.platform import Platform
from daxfs.pmem.pmem_device import PmemDevice, open_device

__all__ = [
    "CACHE_LINE_SIZE",
    "PAGE_SIZE",
    "Backend",
    "Detection",
    "Device",
    "Granularity",
    "Platform",
    "PmemDevice",
    "cpu_features",
    "flush_instruction",
    "native_available",
    "open_device",
]
