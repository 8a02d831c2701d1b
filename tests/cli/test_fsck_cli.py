"""``daxfs fsck`` on crafted images: one line per problem, the summary, the exit status."""

from __future__ import annotations

from pathlib import Path

import pytest

import daxfs
from daxfs.cli import main
from tests.fs import crafting


def _image(tmp_path: Path) -> Path:
    """The sample filesystem as an image file: a directory with a newline in its
    name whose '..' names itself, and a wrong free-block count."""
    dev = crafting.sample()
    with daxfs.mount(dev) as fs:
        fs.rename("/empty", "/em\npty")
        bad = fs.stat("/em\npty").st_ino
    crafting.edit_inode(dev, bad, parent=bad)
    crafting.edit_superblock(dev, free_blocks=7)
    image = tmp_path / "fs.img"
    image.write_bytes(dev.read(0, dev.size))
    return image


def test_fsck_reports_then_repairs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = _image(tmp_path)
    assert main(["fsck", "--no-progress", str(image)]) == 1
    out, err = capsys.readouterr()
    assert err == ""
    lines = out.splitlines()
    assert lines[-1].startswith("NOT clean: ")
    assert "/em\\npty: '..' is inode" in out  # the newline is escaped: one line each
    assert "superblock: counts 7 free blocks" in out
    assert len(lines) == 3

    assert main(["fsck", "--no-progress", "--repair", str(image)]) == 0
    out, _ = capsys.readouterr()
    assert all(line.endswith(" [repaired]") for line in out.splitlines()[:-1])
    assert out.splitlines()[-1].startswith("clean: ")

    assert main(["fsck", "--no-progress", str(image)]) == 0
    assert capsys.readouterr().out.startswith("clean: ")
