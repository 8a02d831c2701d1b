"""The C RLock's uncontended acquire and release without the method call
(daxfs/pmem/_pyutil.h: rlock_fast_acquire, rlock_fast_release), as the pwrite and
pread fast paths take inode.lock and the journal lock.

* on CPython 3.11 and 3.12 the layout check passes and the fast case is on;
* a lock this thread holds is taken again (the count) and left held after;
* a lock another thread holds makes the call wait (the method: the GIL
  released) and the write lands after that thread lets go;
* after every call the locks are free and usable from Python as before.
"""

from __future__ import annotations

import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import daxfs
from daxfs.fs import _commit
from tests.helpers import formatted

BLOCK = 4096


@pytest.mark.skipif(sys.version_info >= (3, 13), reason="the RLock layout of 3.11-3.12")
def test_the_fast_case_is_on() -> None:
    assert _commit.rlock_fast()


def _free(lock: threading.RLock) -> bool:
    if not lock.acquire(blocking=False):
        return False
    lock.release()
    return not lock._is_owned()  # type: ignore[attr-defined]


def test_locks_held_by_this_thread_are_taken_again_and_kept(shm_path: Path) -> None:
    daxfs.mkfs(shm_path, 64 << 20)
    with daxfs.mount(shm_path, persist="cpu") as fs:  # native: the pread fast path too
        assert fs.data.reader is not None
        with fs.open("/f", "xb+", buffering=0) as f:
            f.pwrite(bytes(BLOCK), 0)
            f.pread(1, 0)  # caches the extent
            committer = fs.journal.committer
            assert committer is not None
            before = committer.commits
            with f.inode.lock, fs.journal.lock:
                assert f.pwrite(b"held", 0) == 4
                assert f.pread(4, 0) == b"held"
                assert f.inode.lock._is_owned()  # type: ignore[attr-defined]
                assert fs.journal.lock._is_owned()  # type: ignore[attr-defined]
            assert committer.commits == before + 1
            assert _free(f.inode.lock)
            assert _free(fs.journal.lock)


@pytest.mark.parametrize("which", ["inode", "journal"])
def test_a_lock_another_thread_holds_makes_the_write_wait(which: str) -> None:
    dev = formatted()
    with daxfs.mount(dev) as fs, fs.open("/f", "xb+", buffering=0) as f:
        f.pwrite(bytes(BLOCK), 0)
        f.pread(1, 0)
        lock = f.inode.lock if which == "inode" else fs.journal.lock
        held, go = threading.Event(), threading.Event()
        order: list[str] = []

        def holder() -> None:
            with lock:
                held.set()
                go.wait(10)
                time.sleep(0.05)
                order.append("released")

        t = threading.Thread(target=holder)
        t.start()
        assert held.wait(10)
        go.set()
        assert f.pwrite(b"after", 0) == 5  # waits for the holder
        order.append("written")
        t.join()
        assert order == ["released", "written"]
        assert f.pread(5, 0) == b"after"
        assert _free(f.inode.lock)
        assert _free(fs.journal.lock)
    dev.close()


def test_threads_writing_and_reading_one_file_see_whole_writes(shm_path: Path) -> None:
    """Four threads overwrite and read one block through the fast paths: every read
    sees one whole write (the lock keeps a read atomic against a write)."""
    daxfs.mkfs(shm_path, 64 << 20)
    with daxfs.mount(shm_path, persist="cpu") as fs, fs.open("/f", "xb+", buffering=0) as f:
        f.pwrite(bytes(BLOCK), 0)
        f.pread(1, 0)
        patterns = [bytes([i]) * BLOCK for i in range(1, 5)]
        torn: list[bytes] = []

        def work(i: int) -> None:
            for _ in range(300):
                f.pwrite(patterns[i], 0)
                got = f.pread(BLOCK, 0)
                if got.count(got[:1]) != BLOCK:
                    torn.append(got)

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(work, range(4)))  # list: a thread's exception raised here
        assert torn == []
        assert f.pread(BLOCK, 0) in patterns
        assert _free(f.inode.lock)
        assert _free(fs.journal.lock)
