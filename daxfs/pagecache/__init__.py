"""Buffered I/O built on direct I/O: a bounded page cache (docs/ARCHITECTURE.md,
"The page cache: buffered I/O atop direct I/O").

``PageCache`` is a pool of at most ``cache_size`` bytes of 4 KiB pages with
one LRU list; an ``AddressSpace`` caches one object through its ``Backing``,
the object's direct-I/O path (``BlockBacking``: READ, WRITE and FLUSH bios of
a block device; daxfs.fs.filecache's ``FileBacking``: a regular file's direct
reads and out-of-place direct writes).  The cache has no I/O path of its own (cache.py).
"""

from daxfs.pagecache.cache import (
    MIN_LIMIT,
    PAGE_SIZE,
    RA_MAX,
    RA_MIN,
    AddressSpace,
    Backing,
    BlockBacking,
    PageCache,
    parse_size,
)

__all__ = [
    "MIN_LIMIT",
    "PAGE_SIZE",
    "RA_MAX",
    "RA_MIN",
    "AddressSpace",
    "Backing",
    "BlockBacking",
    "PageCache",
    "parse_size",
]
