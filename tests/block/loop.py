"""A loop device over an image file, for the tests that need a block special file."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

#: skip unless losetup can be run (root, and the tool)
needs_losetup = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("losetup") is None, reason="needs root and losetup"
)


@contextlib.contextmanager
def loop_device(image: Path) -> Iterator[str]:
    """``image`` attached to a free loop device (its path), detached on leaving; the
    test is skipped if losetup fails."""
    try:
        loop = subprocess.run(
            ["losetup", "--find", "--show", str(image)], capture_output=True, text=True, check=True
        ).stdout.strip()
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"losetup failed: {exc.stderr.strip()}")
    try:
        yield loop
    finally:
        subprocess.run(["losetup", "-d", loop], check=False)
