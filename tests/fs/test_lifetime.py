"""Inode lifetime (InodeTable.hold/put), O_TRUNC outside the filesystem lock, paths in errors."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest

import daxfs
from daxfs.errors import Busy, Corrupted, NoSpace
from daxfs.fs.layout import BLOCK_SHIFT, BLOCK_SIZE
from daxfs.testing import SimulatedPmem
from tests.fs import crafting

SIZE = 16 << 20
#: a bound for waits that must end long before it (never asserted as a duration)
PATIENCE = 60.0


@pytest.fixture
def dev() -> SimulatedPmem:
    device = SimulatedPmem(SIZE)
    daxfs.mkfs(device)
    return device


def wait_until(cond: Callable[[], bool]) -> None:
    """Poll ``cond`` until it holds (fails the test after PATIENCE seconds)."""
    deadline = time.monotonic() + PATIENCE
    while not cond():
        assert time.monotonic() < deadline, "condition never came true"
        time.sleep(0.005)


@pytest.fixture
def pinned(dev: SimulatedPmem) -> Iterator[tuple[daxfs.FileSystem, object, object]]:
    """A filesystem with /a (2 blocks), its first block pinned: (fs, file, pin)."""
    fs = daxfs.mount(dev, layout_timeout=PATIENCE)
    with fs.open("/a", "wb") as f:
        f.write(b"a" * 2 * BLOCK_SIZE)
    f = fs.open("/a", "rb", buffering=0)
    pin = f.pin(0, BLOCK_SIZE)
    yield fs, f, pin
    if pin.pinned:
        pin.unpin()
    f.close()
    if fs.mounted:
        fs.unmount()


def test_o_trunc_waits_for_pins_without_stalling_the_filesystem(
    pinned: tuple[daxfs.FileSystem, object, object],
) -> None:
    fs, f, pin = pinned
    inode = f.inode  # type: ignore[attr-defined]
    done: list[object] = []

    def truncating_open() -> None:
        with fs.open("/a", "wb") as g:
            done.append(g.tell())

    opener = threading.Thread(target=truncating_open)
    opener.start()
    wait_until(lambda: bool(inode.layouts._breaking))  # the open waits for the pin
    other_ops: list[object] = []

    def unrelated() -> None:
        other_ops.append(fs.stat("/").st_ino)
        fs.mkdir("/other")
        other_ops.append(fs.isdir("/other"))

    worker = threading.Thread(target=unrelated)
    worker.start()
    worker.join(PATIENCE)
    # the unrelated operations finished while the open still waits for the pin
    assert other_ops == [2, True]
    assert opener.is_alive()
    assert done == []
    pin.unpin()  # type: ignore[attr-defined]
    opener.join(PATIENCE)
    assert done == [0]
    assert fs.stat("/a").st_size == 0


def test_o_trunc_gives_up_with_ebusy_naming_the_path(dev: SimulatedPmem) -> None:
    fs = daxfs.mount(dev, layout_timeout=0.01)
    with fs.open("/a", "wb") as f:
        f.write(b"a" * 2 * BLOCK_SIZE)
    f = fs.open("/a", "rb", buffering=0)
    pin = f.pin(0, BLOCK_SIZE)
    with pytest.raises(Busy, match="pinned") as info:
        fs.open("/a", "wb")
    assert info.value.filename == "/a"
    assert "/a" in str(info.value)
    assert len(fs.open_files()) == 1  # the failed open left nothing open
    assert fs.stat("/a").st_size == 2 * BLOCK_SIZE  # and changed nothing
    pin.unpin()
    f.close()
    fs.unmount()


# -- hold and put ---------------------------------------------------------------------------


def test_unlinked_inode_lives_until_its_last_holder_goes(dev: SimulatedPmem) -> None:
    fs = daxfs.mount(dev)
    with fs.open("/f", "wb") as w:
        w.write(b"z" * 4 * BLOCK_SIZE)
    f = fs.open("/f", "rb", buffering=0)
    m = f.mmap(access="read")
    pin = f.pin(0, BLOCK_SIZE)
    inode = f.inode
    assert (inode.refs, inode.files) == (3, 1)
    fs.unlink("/f")
    free_before = fs.statvfs().f_bfree
    f.close()
    assert bytes(m[:4]) == b"zzzz"
    with pytest.raises(Busy, match="mappings or pins"):
        fs.unmount()
    m.close()
    assert fs.statvfs().f_bfree == free_before  # the pin still holds it
    pin.unpin()
    assert inode.refs == 0
    assert fs.statvfs().f_bfree == free_before + 4  # the last put freed it
    fs.unmount()


def test_truncate_holds_the_inode_while_it_waits(dev: SimulatedPmem) -> None:
    """FileSystem.truncate lets the filesystem lock go while it waits: it holds the inode."""
    fs = daxfs.mount(dev, layout_timeout=PATIENCE)
    with fs.open("/t", "wb") as w:
        w.write(b"t" * 2 * BLOCK_SIZE)
    f = fs.open("/t", "rb", buffering=0)
    pin = f.pin(0, BLOCK_SIZE)
    inode = f.inode
    truncater = threading.Thread(target=fs.truncate, args=("/t", 0))
    truncater.start()
    wait_until(lambda: bool(inode.layouts._breaking))
    assert inode.refs == 3  # the file, the pin, the waiting truncate
    fs.unlink("/t")
    f.close()
    pin.unpin()
    truncater.join(PATIENCE)
    assert inode.refs == 0
    assert inode.rec.mode == 0  # freed by the truncate's put, the last
    fs.unmount()


# -- errors name the path ------------------------------------------------------------------


def test_errors_from_below_name_the_path(dev: SimulatedPmem) -> None:
    with daxfs.mount(dev) as fs:
        with fs.open("/frag", "wb", buffering=0) as f:
            for i in range(12):
                f.pwrite(b"f" * BLOCK_SIZE, 2 * i * BLOCK_SIZE)
        with pytest.raises(NoSpace) as info, fs.open("/big", "wb", buffering=0) as f:
            f.fallocate(0, SIZE)
        assert info.value.filename == "/big"
        assert "/big" in str(info.value)
    root = crafting.read_inode(dev, crafting.ino_of(dev, "/frag")).map_root
    dev.write((root << BLOCK_SHIFT) + 100, b"\xff")  # the node fails its checksum
    with daxfs.mount(dev) as fs:
        with pytest.raises(Corrupted, match="checksum") as info2, fs.open("/frag", "rb") as f:
            f.read()
        assert info2.value.filename == "/frag"
        with pytest.raises(Corrupted, match="checksum") as info3:
            fs.truncate("/frag", 0)
        assert info3.value.filename == "/frag"
