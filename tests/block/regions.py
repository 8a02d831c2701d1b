"""Threads that each own a region of a device, for the thread tests of the io_uring
paths (test_uring.py, test_uring_inline.py, test_uring_async.py): one home for
their scaffolding -- a model per region, a stop flag, failures collected, the
device closed under the threads, every thread joined."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

#: ``work(k, base, model, stop)``: thread ``k`` owns device bytes
#: ``[base, base + len(model))``; ``model`` holds what they should read back;
#: ``stop`` is set when the device is about to close (EBADF may follow)
Work = Callable[[int, int, bytearray, threading.Event], None]


def wait_for(check: Callable[[], bool], timeout: float = 30.0) -> None:
    """Poll ``check`` until it is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def run_in_regions(
    work: Work,
    threads: int,
    region: int,
    *,
    until: Callable[[], bool] | None = None,
    close: Callable[[], object] | None = None,
) -> None:
    """Run ``work`` on ``threads`` threads, thread ``k`` owning the region at
    ``k * region`` with a zeroed model of ``region`` bytes.  With ``until``: once
    it holds (or a thread failed), ``stop`` is set and ``close()`` called while the
    threads still run.  Every thread is joined; the first failure is raised."""
    failures: list[BaseException] = []
    stop = threading.Event()

    def run(k: int) -> None:
        try:
            work(k, k * region, bytearray(region), stop)
        except BaseException as exc:
            failures.append(exc)

    workers = [threading.Thread(target=run, args=(k,)) for k in range(threads)]
    for t in workers:
        t.start()
    if until is not None:
        wait_for(lambda: until() or bool(failures))
        stop.set()
        if close is not None:
            close()
    for t in workers:
        t.join(60)
        assert not t.is_alive(), "a thread did not end"
    if failures:
        raise failures[0]


def submit_from(dev: Any, fd: int, bio: Any) -> None:
    """``dev.submit_bio(bio)`` with the device's descriptor swapped for ``fd`` for the
    submission alone: with a pipe's read end, the bio blocks in the kernel until the
    pipe is written (a bio held in flight)."""
    good_fd, dev.fd = dev.fd, fd
    try:
        dev.submit_bio(bio)
    finally:
        dev.fd = good_fd
