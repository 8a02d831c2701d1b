"""``daxfs fsck IMAGE [--repair]``: check a filesystem, print the report.

Output: one line per problem (names escaped, so a line is a line), each
ending "[repaired]" if --repair fixed it, then one summary line starting
"clean: " or "NOT clean: " (docs/GUARANTEES.md, "What fsck checks, and what
repair promises").  An image a crash left with a committed transaction the
next mount replays is checked as replayed, and says so in a first line
("journal: holds committed transaction N ..., replayed at the next mount");
that is not a problem.

Exit status, in e2fsck's spirit: 0 when the filesystem is clean (with
--repair: when every problem found was repaired and a fresh check of the
repaired image found nothing), 1 when problems remain or the check could not
finish.  An image that cannot be checked at all -- no such file, no daxfs
superblock (primary and backup), mounted (EBUSY) -- is one error line on
stderr and exit status 1, not a report.
"""

from __future__ import annotations

import argparse
from typing import Any

from daxfs.block import open_block
from daxfs.cli.common import (
    ProgressBar,
    add_dax_option,
    add_parser,
    add_progress_option,
    progress_wanted,
)
from daxfs.errors import Corrupted
from daxfs.fs.devices import is_block_special
from daxfs.fs.fsck import fsck
from daxfs.fs.layout import BLOCK_SIZE, SB_MAGIC
from daxfs.pmem import open_device


def register(sub: Any) -> None:
    parser = add_parser(
        sub,
        "fsck",
        "check (and repair) a daxfs filesystem",
        "Check every structure of the daxfs on IMAGE and print what is wrong, one line "
        "per problem, then a summary. Exit 0 if clean (with --repair: if everything "
        "found was repaired and a recheck found nothing), 1 otherwise.",
    )
    parser.add_argument("image", metavar="IMAGE", help="image file or /dev/daxN.M")
    parser.add_argument(
        "-r", "--repair", action="store_true", help="repair what is certain, then check again"
    )
    add_dax_option(parser)
    add_progress_option(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    image: str = args.image
    _check_is_daxfs(image, args.dax)
    with ProgressBar(progress_wanted(args)) as bar:
        report = fsck(image, repair=args.repair, progress=bar.phases(), dax=args.dax)
    print(report)
    return 0 if report.clean else 1


def _check_is_daxfs(image: str, dax: str = "inode") -> None:
    """Refuse an image where neither superblock has the daxfs magic.

    Raises:
        FileNotFoundError and the other errors of open_device and open_block.
        Corrupted (EUCLEAN): no daxfs superblock, primary or backup.
    """
    if dax == "never" or is_block_special(image):  # two blocks by bios, no cache
        with open_block(image, readonly=True) as bdev:
            size = bdev.size - bdev.size % BLOCK_SIZE
            found = size >= 2 * BLOCK_SIZE and SB_MAGIC in (
                bdev.read(0, BLOCK_SIZE)[: len(SB_MAGIC)],
                bdev.read(size - BLOCK_SIZE, BLOCK_SIZE)[: len(SB_MAGIC)],
            )
    else:
        _check_pmem(image)
        return
    if not found:
        raise Corrupted(
            f"not a daxfs filesystem (no superblock, primary or backup): {image}", image
        )


def _check_pmem(image: str) -> None:
    with open_device(image, readonly=True) as dev:
        last = (dev.size - dev.size % BLOCK_SIZE) - BLOCK_SIZE
        if dev.size < 2 * BLOCK_SIZE:
            found = False
        else:
            found = SB_MAGIC in (dev.read(0, len(SB_MAGIC)), dev.read(last, len(SB_MAGIC)))
    if not found:
        raise Corrupted(
            f"not a daxfs filesystem (no superblock, primary or backup): {image}", image
        )
