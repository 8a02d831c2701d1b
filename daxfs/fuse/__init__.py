"""daxfs.fuse: the FUSE front end, a daxfs image mounted for every program.

Theory of operation.  ``daxfs mount IMAGE MOUNTPOINT`` mounts the image with
the Python API (``daxfs.mount``) and serves the kernel's FUSE requests on it
through mfusepy (ctypes over libfuse3's high-level, path-based API, run
multi-threaded).  Each request is one call of the API (``_ops``), so each is
atomic and durable when it returns, exactly as through the API; the kernel
sees the errno the API raised, translated once, at this boundary.
``default_permissions`` is always on: the kernel checks modes and owners
against the attributes daxfs returns, and new files belong to the calling
user (``FileSystem.as_caller``).

Data goes through the kernel's page cache, as on every FUSE filesystem: a
``read`` is one copy from device memory into libfuse's reply buffer
(``_binding``), then the kernel copies it into its page cache and the
program's buffer; ``mmap`` of a file on the mount maps page-cache pages, and
the kernel writes them back with FUSE WRITE requests (msync, munmap,
writeback).  That is why it is not DAX: a FUSE filesystem cannot hand the
kernel its own memory as file pages (no ``direct_access`` across the FUSE
protocol; virtiofs's DAX window exists only for virtual machines), so real
DAX mmap -- the program's loads and stores going to device memory, with
``msync`` of exactly a range -- is the Python API's ``File.mmap``.

Modules, bottom up: ``_wire`` (the wire tap: libfuse's reads and writes of
/dev/fuse, answering fstat, fchmod, fchown, futimens and the xattr calls of
an open file whose name is gone; its C half is ``_tap.c``), ``_binding``
(mfusepy's FUSE with renameat2 flags, lseek, UTIME_NOW/OMIT and one-copy
reads and writes), ``_ops`` (the callbacks), ``_mount`` (options, the
serving loop, background mounts, umount).  ``tap_engine`` says whether the
tap's read and writev are the C ones or the Python fallback (``daxfs info``
shows it; a mount with the fallback prints a note).

Invariants (the details are in each module):
1. Every request is one API call: atomic and durable on return.
2. The errno the kernel sees is the errno the API raised; anything else is EIO.
3. The image is mounted before the kernel mount exists and unmounted after it
   is gone; a signal (SIGINT, SIGTERM, SIGHUP) ends the loop and unmounts cleanly.
"""

from daxfs.fuse._binding import available
from daxfs.fuse._mount import (
    MountOptions,
    is_mounted,
    mount_background,
    parse_options,
    serve,
    unmount,
)
from daxfs.fuse._ops import DaxOperations
from daxfs.fuse._wire import tap_engine

__all__ = [
    "DaxOperations",
    "MountOptions",
    "available",
    "is_mounted",
    "mount_background",
    "parse_options",
    "serve",
    "tap_engine",
    "unmount",
]
