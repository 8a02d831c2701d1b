"""``daxfs fsck`` on crafted images: one line per problem, the summary, the exit status."""

from __future__ import annotations

from pathlib import Path

import pytest

import daxfs
from daxfs.cli import main
from daxfs.testing import PowerFailure
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


def test_fsck_of_a_crash_awaiting_replay_is_clean_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A committed transaction not yet applied (a kill -9 of a mount can leave it):
    checked on a private mapping of the image file with it replayed."""
    dev = crafting.sample()
    fs = daxfs.mount(dev)
    dev.schedule_power_failure(3)  # after the commit point, before the apply ends
    with pytest.raises(PowerFailure):
        fs.mkdir("/newdir")
    image = tmp_path / "fs.img"
    image.write_bytes(dev.crash(seed=1).read(0, dev.size))
    before = image.read_bytes()
    assert main(["fsck", "--no-progress", str(image)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    lines = out.splitlines()
    assert lines[0].startswith("journal: holds committed transaction ")
    assert lines[0].endswith("replayed at the next mount (checked as replayed)")
    assert lines[-1].startswith("clean: 204 files, 7 directories")  # /newdir counted
    assert len(lines) == 2
    assert image.read_bytes() == before
    with daxfs.mount(str(image)) as again:
        assert again.isdir("/newdir")
    assert main(["fsck", "--no-progress", str(image)]) == 0
    assert capsys.readouterr().out.startswith("clean: ")
