"""The DAX filesystem (issue 3): a crash-consistent filesystem on persistent memory.

Layers of the filesystem, bottom up (as xv6's fs.c, one module each)::

    layout    the on-media format: superblock, journal header, bitmap, inode,
              B+tree node, directory entry (the only module that knows it)
    store     blocks of the device: direct views on pmem, a buffer cache on
              block devices
    journal   redo transactions: private write set, commit, recovery
    super     the in-memory superblock, changed inside transactions
    freeindex the allocator's in-memory free-extent index (a cache of the bitmap)
    alloc     the block allocation bitmap
    btree     B+trees of u64 keys: extent maps and directories
"""
