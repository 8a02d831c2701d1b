"""Shared readers: many read-only mounts of one image at once, in several processes;
a read-write mount excludes them all, and they exclude it (EBUSY either way).

The exclusion is flock(2) on the image (``PmemDevice.claim``: LOCK_SH for a
read-only mount, LOCK_EX for a read-write one, never waiting), so it holds
between processes and between two mounts of one process alike.  Readers run
in processes of their own (multiprocessing, spawned), mount, read and DAX-map
the same files at the same time (a barrier holds them all mounted), while the
parent tries to mount read-write.
"""

from __future__ import annotations

import errno
import hashlib
import multiprocessing
import os
from pathlib import Path
from typing import Any

import pytest

import daxfs
from daxfs.errors import Busy, ReadOnly
from daxfs.testing.simulated import PowerFailure
from tests import helpers

READERS = 3
FILES = {f"/data/f{i}": os.urandom(4096 * (i + 1) + 123) for i in range(4)}
#: seconds a child waits for its peers or the parent (never reached in a passing run)
WAIT = 60.0


def _digests(files: dict[str, bytes]) -> dict[str, str]:
    return {p: hashlib.sha256(d).hexdigest() for p, d in files.items()}


def _reader(path: str, mounted: Any, release: Any, out: Any) -> None:
    """A reader process: mount read-only, read and map every file, report, wait."""
    try:
        with daxfs.mount(path, readonly=True) as fs:
            seen: dict[str, tuple[str, str, bytes]] = {}
            for name in sorted(fs.listdir("/data")):
                p = f"/data/{name}"
                with fs.open(p, "rb", buffering=0) as f:
                    data = f.read()
                    size = f.stat().st_size
                    m = f.mmap(0, size, access="read")
                    mapped = bytes(memoryview(m)[:size])
                    m.close()
                seen[p] = (
                    hashlib.sha256(data).hexdigest(),
                    hashlib.sha256(mapped).hexdigest(),
                    fs.getxattr(p, "user.origin"),
                )
            mounted.wait(WAIT)  # every reader holds its mount now
            release.wait(WAIT)  # while the parent tries a writer
        out.put(("ok", seen))
    except BaseException as exc:  # reported to the parent, which fails the test
        out.put(("error", f"{type(exc).__name__}: {exc}"))


def _try_mount(path: str, readonly: bool, out: Any) -> None:
    """Report the errno of a mount attempt (0 if it mounted)."""
    try:
        with daxfs.mount(path, readonly=readonly):
            out.put(0)
    except OSError as exc:
        out.put(exc.errno)


@pytest.fixture
def image(shm_path: Path) -> str:
    path = str(shm_path)
    daxfs.mkfs(path, 16 << 20)
    with daxfs.mount(path) as fs:
        fs.mkdir("/data")
        for p, data in FILES.items():
            with fs.open(p, "wb") as f:
                f.write(data)
            fs.setxattr(p, "user.origin", p.encode())
    return path


def test_readers_in_processes_share_the_image_and_exclude_a_writer(image: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    mounted = ctx.Barrier(READERS + 1)
    release = ctx.Barrier(READERS + 1)
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_reader, args=(image, mounted, release, out)) for _ in range(READERS)
    ]
    for p in procs:
        p.start()
    try:
        mounted.wait(WAIT)
        # every reader is mounted: a writer is refused, another reader is not
        with pytest.raises(Busy) as info:
            daxfs.mount(image)
        assert info.value.errno == errno.EBUSY
        with daxfs.mount(image, readonly=True) as fs:
            assert sorted(fs.listdir("/data")) == sorted(n.rsplit("/", 1)[1] for n in FILES)
        release.wait(WAIT)
        results = [out.get(timeout=WAIT) for _ in procs]
    finally:
        for p in procs:
            p.join(WAIT)
            if p.is_alive():
                p.kill()
    expected = _digests(FILES)
    for status, seen in results:
        assert status == "ok", seen
        assert {p: s[0] for p, s in seen.items()} == expected  # read
        assert {p: s[1] for p, s in seen.items()} == expected  # DAX-mapped
        assert all(s[2] == p.encode() for p, s in seen.items())
    # all readers gone: a writer mounts
    with daxfs.mount(image) as fs:
        fs.setxattr("/data/f0", "user.after", b"1")


def test_a_writer_excludes_readers_in_other_processes(image: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    with daxfs.mount(image):
        for readonly in (True, False):
            p = ctx.Process(target=_try_mount, args=(image, readonly, out))
            p.start()
            p.join(WAIT)
            assert out.get(timeout=WAIT) == errno.EBUSY
    p = ctx.Process(target=_try_mount, args=(image, True, out))
    p.start()
    p.join(WAIT)
    assert out.get(timeout=WAIT) == 0  # the writer is gone


@pytest.mark.parametrize("dax", ["inode", "never"])
def test_mounts_of_one_process_follow_the_same_rules(image: str, dax: str) -> None:
    """Through pmem, and through the block layer (dax="never": each mount its own
    BlockCache of the file, flock on its own descriptor)."""
    with (
        daxfs.mount(image, readonly=True, dax=dax) as a,
        daxfs.mount(image, readonly=True, dax=dax) as b,
    ):
        assert a.getxattr("/data/f1", "user.origin") == b.getxattr("/data/f1", "user.origin")
        with a.open("/data/f2", "rb") as f, b.open("/data/f2", "rb") as g:
            assert f.read() == g.read()
        with pytest.raises(Busy):
            daxfs.mount(image, dax=dax)
    with daxfs.mount(image, dax=dax), pytest.raises(Busy):
        daxfs.mount(image, readonly=True, dax=dax)


def test_readers_cannot_mount_an_image_that_needs_recovery() -> None:
    """A writer that crashed after its commit point left a transaction to replay,
    which a reader may not do: EROFS until a read-write mount recovers the image
    (docs/GUARANTEES.md)."""
    dev = helpers.formatted()
    with daxfs.mount(dev) as fs:
        fs.open("/f", "wb").close()
    fs = daxfs.mount(dev)
    dev.schedule_power_failure(3)  # after the commit point (fence 2), before the apply ends
    with pytest.raises(PowerFailure):
        fs.setxattr("/f", "user.pending", b"1")
    crashed = dev.crash(seed=1)
    with pytest.raises(ReadOnly, match=r"recovery|replay"):
        daxfs.mount(crashed, readonly=True)
    with daxfs.mount(crashed) as again:
        assert again.getxattr("/f", "user.pending") == b"1"
    with daxfs.mount(crashed, readonly=True) as ro:
        assert ro.getxattr("/f", "user.pending") == b"1"
