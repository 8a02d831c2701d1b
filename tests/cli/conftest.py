"""Fixtures of the CLI tests."""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from daxfs.cli import main

SHM = Path("/dev/shm")


class Run:
    """main() with captured output: ``status, out, err = run("ls", ...)``."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys

    def __call__(self, *argv: str | Path) -> tuple[int, str, str]:
        status = main([str(a) for a in argv])
        out, err = self.capsys.readouterr()
        return status, out, err

    def ok(self, *argv: str | Path) -> str:
        """Run a command that must succeed silently on stderr; return its output."""
        status, out, err = self(*argv)
        assert (status, err) == (0, ""), err
        return out

    def fails(self, *argv: str | Path) -> str:
        """Run a command that must fail with one error line; return the line."""
        status, _, err = self(*argv)
        assert status == 1, err
        assert err.startswith("daxfs: "), err
        assert err.count("\n") == 1, err
        return err.strip()


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Run:
    return Run(capsys)


@pytest.fixture
def shm_dir(tmp_path: Path) -> Iterator[Path]:
    """A scratch directory on /dev/shm (DRAM: images there cost no disk writeback),
    removed afterwards (by rm -rf: shutil.rmtree recurses, and some trees here
    are deeper than Python's recursion limit); tmp_path where there is no /dev/shm."""
    if not SHM.is_dir():
        yield tmp_path
        return
    path = Path(tempfile.mkdtemp(prefix="daxfs-cli-", dir=SHM))
    try:
        yield path
    finally:
        subprocess.run(["rm", "-rf", "--", str(path)], check=False)
