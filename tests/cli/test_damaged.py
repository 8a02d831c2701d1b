"""Every command on damaged images: exit 0 or 1, and an error is one line, never exit 70.

Each case damages one structure of tests/fs/crafting.py's sample filesystem
(torn bytes with the checksum left broken, or a lie with checksums recomputed),
writes it to an image file, and runs every command on it in-process, then
``fsck --repair`` and the commands again.  A command may succeed (the damage is
elsewhere) or fail with ``daxfs: <one line>`` and exit 1; a traceback, exit 70
("internal error") or a second line is a bug.  ``cat`` of a file whose
size lies is left out: a file that says it is 8 EiB long is read as that many
zeros (fsck reports the size; see test_hostile for what cp must not do).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pytest

from daxfs.cli import main
from daxfs.fs.layout import BLOCK_SHIFT, BLOCK_SIZE
from daxfs.pmem.device import Device
from tests.fs.crafting import (
    edit_inode,
    edit_superblock,
    ino_of,
    inode_address,
    read_inode,
    sample,
)

Damage = Callable[[Device], None]


def _garbage(dev: Device, blockno: int, seed: int) -> None:
    dev.write(blockno << BLOCK_SHIFT, random.Random(seed).randbytes(BLOCK_SIZE))


def _map_root(dev: Device, path: str) -> int:
    return read_inode(dev, ino_of(dev, path)).map_root


def _torn_inode(dev: Device, path: str) -> None:
    blockno, offset = inode_address(dev, ino_of(dev, path))
    dev.write((blockno << BLOCK_SHIFT) + offset + 20, b"\xff\xff")


def _zero_superblocks(dev: Device) -> None:
    dev.write(0, bytes(BLOCK_SIZE))
    dev.write(dev.size - BLOCK_SIZE, bytes(BLOCK_SIZE))


def _set_inode(path: str, **changes: int) -> Damage:
    def damage(dev: Device) -> None:
        edit_inode(dev, ino_of(dev, path), **changes)

    return damage


def _set_superblock(**changes: int) -> Damage:
    def damage(dev: Device) -> None:
        edit_superblock(dev, **changes)

    return damage


DAMAGE: dict[str, Damage] = {
    "zeroed primary superblock": lambda dev: dev.write(0, bytes(BLOCK_SIZE)),
    "both superblocks zeroed": _zero_superblocks,
    "garbage root directory node": lambda dev: _garbage(dev, _map_root(dev, "/"), 1),
    "garbage directory node": lambda dev: _garbage(dev, _map_root(dev, "/big"), 2),
    "garbage extent tree node": lambda dev: _garbage(dev, _map_root(dev, "/frag"), 3),
    "torn directory inode": lambda dev: _torn_inode(dev, "/a"),
    "torn file inode": lambda dev: _torn_inode(dev, "/a/file"),
    "sealed inode of unknown type": _set_inode("/a/file", mode=0o170644),
    "sealed directory that says it is a file": _set_inode("/a/b", mode=0o100644),
    "sealed directory with no links": _set_inode("/a", nlink=0),
    "sealed superblock counters at their maximum": _set_superblock(
        used_inodes=2**64 - 1, free_blocks=2**64 - 1
    ),
    "sealed superblock root inode out of range": _set_superblock(root_ino=12345),
}


def commands(image: Path, out: Path) -> list[list[str]]:
    i = str(image)
    return [
        ["ls", i],
        ["ls", "-la", f"{i}:/a"],
        ["tree", "-a", i],
        ["stat", f"{i}:/a/file"],
        ["df", i],
        ["df", "-i", i],
        ["cat", f"{i}:/a/b/small"],
        ["cat", f"{i}:/frag"],
        ["cp", "-r", f"{i}:/", str(out / "all")],
        ["cp", __file__, f"{i}:/a/new"],
        ["mkdir", "-p", f"{i}:/x/y"],
        ["mv", f"{i}:/a/hard", f"{i}:/a/b/hard"],
        ["rm", f"{i}:/a/b/small"],
        ["rm", "-r", f"{i}:/big"],
        ["info", i],
        ["mkfs", i],
        ["fsck", i],
    ]


@pytest.mark.parametrize("damage", DAMAGE)
def test_every_command_on_a_damaged_image_ends_in_one_line(
    shm_dir: Path, capsys: pytest.CaptureFixture[str], damage: str
) -> None:
    dev = sample()
    DAMAGE[damage](dev)
    image = shm_dir / "damaged.img"
    image.write_bytes(dev.read(0, dev.size))
    bad = []
    for phase in ("damaged", "repaired"):
        out = shm_dir / phase
        out.mkdir()
        for argv in commands(image, out):
            status = main(argv)
            _, err = capsys.readouterr()
            fine = status == 0 and err == ""
            failed = status == 1 and err.startswith("daxfs: ") and err.count("\n") <= 1
            fsck_report = argv[0] == "fsck" and status == 1 and err == ""  # problems: a report
            if not (fine or failed or fsck_report):
                bad.append(f"{phase}: daxfs {' '.join(argv)} -> {status}: {err.strip()}")
        if phase == "damaged":
            main(["fsck", "--repair", str(image)])
            capsys.readouterr()
    assert not bad, "\n".join(bad)
