"""Real programs on a real FUSE mount: cp, diff, tar, rsync, git, sqlite3, compileall.

One mount for the module (mounting costs a process start); each test works in
its own directory; the fixture's teardown unmounts and runs fsck, so the
image every program left behind is checked too.
"""

from __future__ import annotations

import filecmp
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import daxfs
from tests.fuse.mounts import skip_reason

pytestmark = pytest.mark.skipif(skip_reason() is not None, reason=f"no FUSE: {skip_reason()}")

SOURCE = Path(daxfs.__file__).parent  # a source tree to copy: the daxfs package


def run(*args: str, cwd: str | None = None, **kwargs: object) -> str:
    done = subprocess.run(args, capture_output=True, text=True, cwd=cwd, timeout=300, **kwargs)  # type: ignore[call-overload]
    assert done.returncode == 0, f"{' '.join(args)} failed ({done.returncode}): {done.stderr}"
    return str(done.stdout)


def need(program: str) -> None:
    if shutil.which(program) is None:
        pytest.skip(f"{program} is not installed (scripts/bootstrap.sh installs it)")


def same_trees(a: str, b: str) -> None:
    run("diff", "-r", "--no-dereference", a, b)
    cmp = filecmp.dircmp(a, b, ignore=[])
    assert not cmp.left_only
    assert not cmp.right_only


def test_cp_a_and_diff_r(work: str) -> None:
    dest = os.path.join(work, "daxfs")
    run("cp", "-a", str(SOURCE), dest)
    same_trees(str(SOURCE), dest)
    # cp -a kept modes and times
    for name in ("__init__.py", "fs/layout.py"):
        a, b = os.stat(SOURCE / name), os.stat(os.path.join(dest, name))
        assert (a.st_mode, a.st_mtime_ns) == (b.st_mode, b.st_mtime_ns)


def test_tar_c_pipe_tar_x(work: str) -> None:
    tar = subprocess.Popen(
        ["tar", "c", "-C", str(SOURCE.parent), SOURCE.name], stdout=subprocess.PIPE
    )
    run("tar", "x", "-C", work, stdin=tar.stdout)
    assert tar.wait() == 0
    same_trees(str(SOURCE), os.path.join(work, SOURCE.name))
    # and back out of the mount into a tar file on the mount, listed again
    run("tar", "cf", os.path.join(work, "copy.tar"), "-C", work, SOURCE.name)
    listed = run("tar", "tf", os.path.join(work, "copy.tar")).split()
    assert f"{SOURCE.name}/fs/layout.py" in listed


def test_rsync_a(work: str, tmp_path: Path) -> None:
    need("rsync")
    dest = os.path.join(work, "r")
    run("rsync", "-a", f"{SOURCE}/", dest)
    same_trees(str(SOURCE), dest)
    # a second run finds nothing to do; a change is carried over, and back out
    (Path(dest) / "extra.txt").write_text("new\n")
    back = tmp_path / "back"
    run("rsync", "-a", f"{dest}/", str(back))
    assert (back / "extra.txt").read_text() == "new\n"
    same_trees(dest, str(back))


def test_git_init_add_commit(work: str) -> None:
    need("git")
    repo = os.path.join(work, "repo")
    shutil.copytree(SOURCE / "fs", repo)
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.org",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.org",
        "GIT_CONFIG_NOSYSTEM": "1",
        "HOME": work,
    }
    run("git", "init", "-q", repo, env=env)
    run("git", "add", "-A", cwd=repo, env=env)
    run("git", "commit", "-qm", "first", cwd=repo, env=env)
    Path(repo, "layout.py").write_text("changed\n")
    run("git", "commit", "-qam", "second", cwd=repo, env=env)
    assert run("git", "log", "--format=%s", cwd=repo, env=env).split() == ["second", "first"]
    run("git", "fsck", "--strict", cwd=repo, env=env)
    assert run("git", "status", "--porcelain", cwd=repo, env=env) == ""
    run("git", "checkout", "-q", "HEAD~1", "--", "layout.py", cwd=repo, env=env)
    assert Path(repo, "layout.py").read_bytes() == (SOURCE / "fs" / "layout.py").read_bytes()


def test_sqlite3_wal(work: str) -> None:
    path = os.path.join(work, "db.sqlite")
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode=WAL").fetchone() == ("wal",)
    db.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
    with db:
        db.executemany("INSERT INTO t VALUES (?, ?)", ((i, f"v{i}" * 20) for i in range(5000)))
    assert os.path.exists(path + "-wal")
    assert os.path.exists(path + "-shm")
    # a second connection reads through the WAL and the shared-memory index (mmap)
    other = sqlite3.connect(path)
    assert other.execute("SELECT count(*), sum(k) FROM t").fetchone() == (5000, 4999 * 5000 // 2)
    with db:
        db.execute("DELETE FROM t WHERE k % 2 = 0")
    assert other.execute("SELECT count(*) FROM t").fetchone() == (2500,)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    other.close()
    db.close()
    if shutil.which("sqlite3"):  # and the sqlite3 program agrees
        assert run("sqlite3", path, "SELECT count(*) FROM t;").strip() == "2500"


def test_python_compileall(work: str) -> None:
    dest = os.path.join(work, "pkg")
    shutil.copytree(SOURCE / "fs", dest, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    run(sys.executable, "-m", "compileall", "-q", dest)
    cached = os.listdir(os.path.join(dest, "__pycache__"))
    assert any(name.startswith("layout.") and name.endswith(".pyc") for name in cached)
    # the byte code loads: compile again is a no-op, import checks the .pyc against the source
    run(
        sys.executable,
        "-c",
        "import importlib.util as u, sys; sys.path.insert(0, sys.argv[1]);import layouts",
        dest,
    )
