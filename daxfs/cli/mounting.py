"""``daxfs mount IMAGE MOUNTPOINT [-o OPTIONS] [--foreground]`` and ``daxfs umount MOUNTPOINT``.

mount serves the image through FUSE (daxfs.fuse).  Without --foreground it
returns once the mount is ready, the serving process detached; a failure
(no image, image busy, no FUSE, a bad mount point) is one line on stderr and
exit status 1.  A mount that works but not as well as it could says so in a
line "daxfs: note: ..." on stderr and exits 0 (the FUSE wire tap in Python
when its C extension is not built).  With --foreground it serves until
unmounted or interrupted (Ctrl-C, SIGTERM: a clean unmount) and exits 0.

umount unmounts (fusermount3 -u) and waits until the serving process has
released the image, so the image can be mounted or checked right after.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from daxfs.cli.common import add_parser
from daxfs.errors import NotSupported


def register(sub: Any) -> None:
    parser = add_parser(
        sub,
        "mount",
        "mount a daxfs image through FUSE",
        "Mount IMAGE on the directory MOUNTPOINT through FUSE, so that every program "
        "can use it. Returns once the mount is ready (unless --foreground).",
    )
    parser.add_argument("image", metavar="IMAGE", help="image file or /dev/daxN.M")
    parser.add_argument("mountpoint", metavar="MOUNTPOINT", help="an existing directory")
    parser.add_argument(
        "-o",
        dest="options",
        metavar="OPTIONS",
        default="",
        help="comma-separated: ro, dax=inode|never|always, persist=auto|cpu|msync, "
        "layout_timeout=SECONDS, allow_other, allow_root, auto_unmount, kernel_cache, "
        "auto_cache, direct_io, max_read=N, attr_timeout=S, entry_timeout=S",
    )
    parser.add_argument(
        "-f", "--foreground", action="store_true", help="serve in the foreground until unmounted"
    )
    parser.set_defaults(run=run_mount)
    parser = add_parser(
        sub,
        "umount",
        "unmount a daxfs FUSE mount",
        "Unmount MOUNTPOINT and wait until its image is released.",
    )
    parser.add_argument("mountpoint", metavar="MOUNTPOINT")
    parser.set_defaults(run=run_umount)


def _fuse() -> Any:
    import daxfs.fuse as fuse

    why = fuse.available()
    if why is not None:
        raise NotSupported(f"cannot mount through FUSE: {why}")
    return fuse


def run_mount(args: argparse.Namespace) -> int:
    fuse = _fuse()
    options = fuse.parse_options(args.options)
    if args.foreground:
        from daxfs.fuse._mount import run_foreground

        run_foreground(args.image, args.mountpoint, options)
        return 0
    pid, message = fuse.mount_background(args.image, args.mountpoint, options)
    if not pid:
        raise OSError(0, f"cannot mount {args.image} on {args.mountpoint}: {message}")
    if message:  # mounted, with a note (the wire tap's Python fallback)
        print(message, file=sys.stderr)
    return 0


def run_umount(args: argparse.Namespace) -> int:
    fuse = _fuse()
    fuse.unmount(args.mountpoint)
    return 0
