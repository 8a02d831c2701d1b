"""Mount lifetime across processes: interpreter exit, other processes, fork."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap

import pytest

import daxfs
from daxfs.fs.layout import STATE_CLEAN
from daxfs.fs.mount import read_superblock
from daxfs.fsspec import DaxFileSystem, mounted


def run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def state(image: str) -> int:
    with daxfs.open_device(image) as dev:
        return read_superblock(dev).state


def test_exit_flushes_open_files_and_unmounts_clean(image: str) -> None:
    done = run(
        f"""
        import fsspec
        f = fsspec.open("daxfs:///left/open::{image}", "wb", persist="cpu").open()
        f.write(b"still in the buffer")   # never closed: exit must flush it
        g = fsspec.open("daxfs:///done::{image}", "wb", persist="cpu").open()
        g.write(b"closed")
        g.close()
        print("wrote")
        """
    )
    assert done.returncode == 0, done.stderr
    assert (done.stdout, done.stderr) == ("wrote\n", "")
    assert state(image) == STATE_CLEAN  # unmounted, not just abandoned
    with daxfs.mount(image) as fs:
        assert fs.open("/left/open", "rb").read() == b"still in the buffer"
    assert daxfs.fsck(image).clean


def test_exit_reports_an_unmount_it_cannot_make_in_one_line(image: str) -> None:
    done = run(
        f"""
        from daxfs.fsspec import DaxFileSystem
        fs = DaxFileSystem("{image}", persist="cpu")
        fs.pipe_file("/f", b"x")
        m = fs.filesystem.open("/f", "rb", buffering=0).mmap(access="read")  # never closed
        """
    )
    assert done.returncode == 0
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"daxfs.fsspec: could not unmount {image} at exit")
    assert "Traceback" not in done.stderr
    with daxfs.mount(image) as fs:  # the next mount recovers
        assert fs.open("/f", "rb").read() == b"x"
    assert daxfs.fsck(image).clean


def test_a_read_write_mount_excludes_other_processes(dfs: DaxFileSystem) -> None:
    dfs.pipe_file("/f", b"x")
    probe = f"""
        import errno
        from daxfs.fsspec import DaxFileSystem
        try:
            DaxFileSystem("{dfs.image}", persist="cpu").cat_file("/f")
        except OSError as exc:
            print(errno.errorcode[exc.errno], exc.filename)
        else:
            print("mounted")
        """
    busy = run(probe)
    assert busy.stdout == f"EBUSY {dfs.image}\n", busy.stderr
    dfs.unmount()
    free = run(probe)
    assert free.stdout == "mounted\n", free.stderr


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_neither_uses_nor_flushes_the_parents_mount(dfs: DaxFileSystem) -> None:
    f = dfs.open("/log", "ab")
    f.write(b"parent")  # in the buffer when the child is forked
    pid = os.fork()
    if pid == 0:  # the child: exits with a code, never returns into pytest
        code = 1
        try:
            try:
                dfs.cat_file("/log")
            except OSError as exc:
                code = 0 if exc.errno == errno.EBUSY and mounted() == [] else 2
            del f  # inherited: dropping it must not flush "parent" a second time
            import gc

            gc.collect()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    f.close()
    assert dfs.cat_file("/log") == b"parent"
