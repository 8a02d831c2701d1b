"""The examples in README.md run as written (paths moved to a temporary directory): the
Python ones, and the shell one of the FUSE mount (from the repository's root, with the
venv's daxfs and python first on PATH; skipped where FUSE cannot mount)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
SHELL = re.findall(r"```sh\n(.*?)```", README.read_text(), re.S)


def test_readme_has_examples() -> None:
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index: int, shm_path: Path) -> None:
    folder = shm_path.parent / f"{shm_path.name}.d"
    folder.mkdir()
    try:
        code = BLOCKS[index].replace("/dev/shm/", f"{folder}/")
        exec(compile(code, f"README.md example {index + 1}", "exec"), {})
    finally:
        for child in folder.iterdir():
            child.unlink()
        folder.rmdir()


def test_readme_fuse_mount_example_runs(shm_path: Path) -> None:
    from tests.fuse.mounts import skip_reason

    if skip_reason() is not None:
        pytest.skip(f"no FUSE: {skip_reason()}")
    for program in ("git", "sqlite3", "diff"):
        if shutil.which(program) is None:
            pytest.skip(f"{program} is not installed (scripts/bootstrap.sh installs it)")
    (block,) = [b for b in SHELL if "daxfs mount" in b]
    folder = shm_path.parent / f"{shm_path.name}.d"
    folder.mkdir()
    mnt = tempfile.mkdtemp(prefix="daxfs-readme-mnt-")
    script = block.replace("/dev/shm/", f"{folder}/").replace("/tmp/mnt", mnt)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    try:
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=README.parent,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
        assert done.stdout.strip().splitlines()[-1].startswith("clean: "), done.stdout  # fsck
    finally:
        if os.path.ismount(mnt):
            subprocess.run(["fusermount3", "-u", "-z", mnt], check=False)
        os.rmdir(mnt)
        for child in folder.iterdir():
            child.unlink()
        folder.rmdir()
