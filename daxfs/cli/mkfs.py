"""``daxfs mkfs IMAGE [--size SIZE]``: create an empty filesystem, then summarise it.

A missing image file is created at ``--size``; an existing file or device is
used whole unless ``--size`` says less (a smaller file is grown).  mkfs
refuses to overwrite a filesystem or data it does not recognise unless
``--force``.  If mkfs created the file and then failed, the file is removed,
so a failed mkfs leaves nothing behind.  ``--dax never`` writes through the
block layer (the file backend, O_DIRECT where allowed) instead of mapping the
file; the image is the same either way.  A size no file can have (past
MAX_SIZE, the largest offset of a host file) is refused before anything is
touched; every error names the image.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from typing import Any

from daxfs.cli.common import (
    ProgressBar,
    add_dax_option,
    add_parser,
    add_progress_option,
    human,
    parse_size,
    progress_wanted,
    with_context,
)
from daxfs.errors import Exists, InvalidArgument, NotFound
from daxfs.fs.layout import BLOCK_SIZE, MIN_FS_SIZE
from daxfs.fs.mkfs import MAX_LABEL
from daxfs.fs.mount import mkfs

MAX_SIZE = (1 << 63) - 1  # off_t: no host file is larger


def register(sub: Any) -> None:
    parser = add_parser(
        sub,
        "mkfs",
        "create a daxfs filesystem on an image file or device",
        "Create an empty daxfs on IMAGE (created if missing, with --size).",
    )
    parser.add_argument("image", metavar="IMAGE", help="image file or /dev/daxN.M")
    parser.add_argument(
        "-s",
        "--size",
        help="filesystem size: bytes, or with a K, M, G or T suffix (1G = 1 GiB); "
        "default: the whole existing file or device",
    )
    parser.add_argument("-L", "--label", default="", help="volume label (at most 63 bytes)")
    parser.add_argument(
        "-f", "--force", action="store_true", help="overwrite a filesystem or other data"
    )
    add_dax_option(parser)
    add_progress_option(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    image: str = args.image
    size = parse_size(args.size) if args.size is not None else None
    _check_arguments(image, size, args.label)
    created = not os.path.lexists(image)
    try:
        with ProgressBar(progress_wanted(args)) as bar:
            sb = mkfs(
                image,
                size,
                label=args.label,
                force=args.force,
                progress=bar.callback("mkfs: writing the bitmap"),
                dax=args.dax,
            )
    except BaseException as exc:
        if created:
            with contextlib.suppress(OSError):
                os.unlink(image)
        if isinstance(exc, FileExistsError) and exc.strerror:
            raise Exists(exc.strerror.replace("force=True", "--force"), image) from None
        if isinstance(exc, OSError) and not _names(exc, image):
            raise with_context(exc, f"cannot make a daxfs on {image}") from None
        raise
    size_bytes = sb.block_count * BLOCK_SIZE
    print(f"created a daxfs filesystem on {image}")
    print(f"  uuid:     {sb.uuid_str}")
    print(f"  label:    {sb.label or '(none)'}")
    print(f"  size:     {human(size_bytes)} ({sb.block_count} blocks of {BLOCK_SIZE} bytes)")
    print(f"  journal:  {human(sb.journal_blocks * BLOCK_SIZE)} ({sb.journal_blocks} blocks)")
    print(f"  free:     {human(sb.free_blocks * BLOCK_SIZE)}")
    return 0


def _check_arguments(image: str, size: int | None, label: str) -> None:
    """What can be refused before anything is created.

    Raises:
        NotFound: no such image and no --size to create it.
        InvalidArgument: size below the minimum or above MAX_SIZE, label too long.
    """
    if size is None and not os.path.exists(image):
        raise NotFound(f"no such file or device: {image} (give --size to create it)", image)
    if size is not None and size < MIN_FS_SIZE:
        raise InvalidArgument(
            f"{image}: a daxfs needs at least {MIN_FS_SIZE >> 20} MiB, got {size} bytes", image
        )
    if size is not None and size > MAX_SIZE:
        raise InvalidArgument(
            f"{image}: a size of {size} bytes is larger than any file can be "
            f"({human(MAX_SIZE + 1)})",
            image,
        )
    encoded = label.encode("utf-8", "surrogateescape")
    if len(encoded) > MAX_LABEL or "\0" in label:
        raise InvalidArgument(f"label must be at most {MAX_LABEL} UTF-8 bytes: {label!r}")


def _names(exc: OSError, image: str) -> bool:
    """Whether the error already says which image it is about."""
    if exc.filename is not None:
        return True
    return bool(exc.strerror) and image in str(exc.strerror)
