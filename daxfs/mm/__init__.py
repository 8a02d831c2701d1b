"""Mappings and pins (issues 4 and 5): DAX mmap, msync of a range, fixed placement,
scatter-gather lists.

``File.mmap`` and ``File.pin`` (daxfs.fs.file) create ``Mapping`` and
``SGList`` objects; the filesystem layer cannot import this layer, so
importing ``daxfs.mm`` installs the factories (``import daxfs`` does it).
"""

from daxfs.fs.file import File
from daxfs.mm.mapping import MS_ASYNC, MS_INVALIDATE, MS_SYNC, Mapping, map_file
from daxfs.mm.pin import Segment, SGList, pin_file

File.mapper = map_file
File.pinner = pin_file

__all__ = [
    "MS_ASYNC",
    "MS_INVALIDATE",
    "MS_SYNC",
    "Mapping",
    "SGList",
    "Segment",
    "map_file",
    "pin_file",
]
