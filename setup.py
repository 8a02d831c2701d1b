"""Build the C extensions; everything else is in pyproject.toml."""

from setuptools import Extension, setup

FLAGS = [
    "-O2",
    "-Wall",
    "-Wextra",
    "-Wno-unused-parameter",
    "-Wno-missing-field-initializers",
    "-Wno-cast-function-type",
]

# the headers both persisting extensions share: flush, fence and non-temporal copy;
# the error class and __slots__ access
PERSIST = ["daxfs/pmem/_persist.h", "daxfs/pmem/_pyutil.h"]

setup(
    ext_modules=[
        # cache flush, fence, non-temporal copy (optional: devices fall back to msync)
        Extension(
            "daxfs.pmem._native",
            sources=["daxfs/pmem/_native.c"],
            depends=PERSIST,
            extra_compile_args=FLAGS,
            optional=True,
        ),
        # fixed-address mmap and export-counted buffers (DAX mmap needs it)
        Extension("daxfs.mm._vm", sources=["daxfs/mm/_vm.c"], extra_compile_args=FLAGS),
        # the FUSE wire tap's read and writev (optional: daxfs.fuse._wire falls back to the
        # same tap in Python, and daxfs mount and daxfs info say so)
        Extension(
            "daxfs.fuse._tap",
            sources=["daxfs/fuse/_tap.c"],
            extra_compile_args=FLAGS,
            optional=True,
        ),
        # the journal's commit in C (daxfs.fs.journal: Journal.overwrite, Transaction commit)
        Extension(
            "daxfs.fs._commit",
            sources=["daxfs/fs/_commit.c"],
            depends=[*PERSIST, "daxfs/fs/_media.h"],
            extra_compile_args=FLAGS,
        ),
        # the hot steps of a create (daxfs.fs.btree.BTree.put, InodeRecord packing)
        Extension(
            "daxfs.fs._create",
            sources=["daxfs/fs/_create.c"],
            depends=[*PERSIST, "daxfs/fs/_media.h"],
            extra_compile_args=FLAGS,
        ),
        # the copy of a large copy-on-write overwrite on another core (DataPath._cow_blocks)
        Extension(
            "daxfs.fs._copy",
            sources=["daxfs/fs/_copy.c"],
            depends=PERSIST,
            extra_compile_args=FLAGS,
            optional=True,
        ),
        # the miss path of stat (daxfs.fs.filesystem.FileSystem.stat)
        Extension(
            "daxfs.fs._stat",
            sources=["daxfs/fs/_stat.c"],
            depends=[*PERSIST, "daxfs/fs/_media.h"],
            extra_compile_args=FLAGS,
        ),
        # the lean synchronous direct read (daxfs.fs.direct; optional: the Python path)
        Extension(
            "daxfs.fs._direct",
            sources=["daxfs/fs/_direct.c"],
            extra_compile_args=FLAGS,
            optional=True,
        ),
        # the re-read of a file's cached pages (daxfs.fs.filecache; optional: the Python
        # reference, filecache.HitReader)
        Extension(
            "daxfs.pagecache._hit",
            sources=["daxfs/pagecache/_hit.c"],
            depends=["daxfs/pmem/_pyutil.h", "daxfs/pmem/_persist.h"],
            extra_compile_args=FLAGS,
            optional=True,
        ),
        # the io_uring engine of the file block device (daxfs.block.uring); optional: without
        # liburing (Debian liburing-dev) it is not built and the engine reports unavailable
        Extension(
            "daxfs.block._uring",
            sources=["daxfs/block/_uring.c"],
            libraries=["uring"],
            extra_compile_args=FLAGS,
            optional=True,
        ),
    ]
)
