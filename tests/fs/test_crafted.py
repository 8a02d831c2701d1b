"""Damaged and crafted images: every failure is a clean OSError, never another exception.

Each test crafts an image with ``tests/fs/crafting.py`` (checksums recomputed
where the lie must pass them) and checks what mount and the API make of it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import daxfs
from daxfs.errors import Corrupted
from daxfs.fs.fsck import fsck
from daxfs.fs.layout import BLOCK_SHIFT, BLOCK_SIZE
from daxfs.testing import SimulatedPmem
from tests.fs import crafting
from tests.fs.crafting import SIZE, fresh, sb_of


@pytest.fixture
def image(shm_path: Path) -> Iterator[Path]:
    yield shm_path
    crafting.remove(shm_path)


def fragmented(fs: daxfs.FileSystem) -> None:
    """/frag: 12 one-block extents, so its map is a B+tree."""
    with fs.open("/frag", "wb", buffering=0) as f:
        for i in range(12):
            f.pwrite(b"f" * BLOCK_SIZE, 2 * i * BLOCK_SIZE)


def corrupted(match: str) -> pytest.RaisesContext[Corrupted]:
    """pytest.raises of EUCLEAN whose message matches ``match`` (any other exception fails)."""
    return pytest.raises(Corrupted, match=match)


# -- error paths never replace the error ---------------------------------------------------


@pytest.mark.parametrize(
    ("where", "words"),
    [
        ("log", "targets the log"),
        ("beyond", "out of range"),
        ("max", "out of range"),
    ],
)
def test_forged_journal_is_refused_not_buffer_error(image: Path, where: str, words: str) -> None:
    dev = fresh()
    sb = sb_of(dev)
    target = {
        "log": (sb.journal_start + 1) << BLOCK_SHIFT,
        "beyond": sb.block_count << BLOCK_SHIFT,
        "max": (1 << 64) - 1,
    }[where]
    crafting.forge_journal(dev, [(target, b"x" * 8)])
    crafting.to_file(dev, image)
    with corrupted(words):
        daxfs.mount(image)
    # the image was released: it can be opened again and fsck says what is wrong
    report = fsck(image)
    assert not report.clean
    assert "journal" in str(report)


def test_error_in_a_with_block_is_not_replaced(image: Path) -> None:
    dev = fresh(fragmented)
    root = crafting.read_inode(dev, crafting.ino_of(dev, "/frag")).map_root
    dev.write((root << BLOCK_SHIFT) + 100, b"\xff")  # node checksum now wrong
    crafting.to_file(dev, image)
    with corrupted("checksum"), daxfs.mount(image) as fs:
        fs.open("/frag", "rb").read()
    with daxfs.mount(image) as fs:  # released: mounts again
        assert fs.exists("/frag")


def test_device_with_block_keeps_the_error() -> None:
    with pytest.raises(Corrupted, match="the real error") as info, SimulatedPmem(SIZE) as dev:
        daxfs.mkfs(dev)
        view = dev.direct_access(0, 64)  # alive when the with block exits
        raise Corrupted("the real error")
    assert any("cleanup" in note for note in info.value.__notes__)
    assert view.nbytes == 64  # alive all along: the close failed and said so in a note
