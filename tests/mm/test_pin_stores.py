"""Stores through a pin (issue 10, R3): read-only pins refuse them; writable pins are
written back at fsync while pinned and at unpin, through ``DataPath.mapped_ranges``."""

from __future__ import annotations

import errno
import threading
import time

import pytest

import daxfs
from daxfs.block.bio import Bio, BioOp
from daxfs.block.pmem import PmemBlockDevice
from daxfs.fs.fsck import fsck
from daxfs.testing import SimulatedPmem
from daxfs.testing.simblock import SimulatedBlockDevice
from tests.mm.conftest import put

BLOCK = 4096
SIZE = 16 << 20


@pytest.fixture
def dev() -> SimulatedPmem:
    device = SimulatedPmem(SIZE)
    daxfs.mkfs(device)
    return device


def survives_every_crash(dev: SimulatedPmem, want: bytes, at: int, limit: int = 8) -> bool:
    """Whether every crash state of ``dev`` (mounted, fsck clean) holds ``want`` at ``at``."""
    states = list(dev.crash_states(limit=limit, seed=3))
    assert states
    ok = True
    for state in states:
        with daxfs.mount(state) as after, after.open("/f", "rb", buffering=0) as f:
            ok = ok and f.pread(len(want), at) == want
        assert fsck(state).clean
    return ok


# -- read-only pins -------------------------------------------------------------------------


def test_a_pin_through_a_file_not_open_for_writing_has_read_only_views(
    fs: daxfs.FileSystem,
) -> None:
    put(fs, "/f", b"r" * 2 * BLOCK)
    with fs.open("/f", "rb", buffering=0) as f, f.pin(0, 2 * BLOCK) as sg:
        assert not sg.writable
        assert "read-only" in repr(sg)
        views = list(sg.views())
        assert views
        assert all(v.readonly for v in views)
        with pytest.raises(TypeError):
            views[0][0:1] = b"X"
        for v in views:
            v.release()
        assert fs.data.mapped_ranges.ranges(f.inode.ino) == []  # nothing to write back
    with fs.open("/f", "rb+", buffering=0) as w, w.pin(0, BLOCK) as sg:
        assert sg.writable
        assert not any(v.readonly for v in sg.views())
    assert fs.open("/f", "rb").read() == b"r" * 2 * BLOCK


def test_a_read_bio_into_a_read_only_pin_is_einval_naming_the_path(
    fs: daxfs.FileSystem,
) -> None:
    put(fs, "/data.bin", b"r" * BLOCK)
    with fs.open("/data.bin", "rb", buffering=0) as f, f.pin(0, BLOCK) as sg:
        with pytest.raises(OSError, match=r"/data\.bin") as info:
            Bio(BioOp.READ, 0, sg)
        assert info.value.errno == errno.EINVAL
        Bio(BioOp.WRITE, 0, sg)  # the pin may still be the source of a write
    assert fs.open("/data.bin", "rb").read() == b"r" * BLOCK


# -- writable pins --------------------------------------------------------------------------


def test_a_read_bio_into_a_writable_pin_is_durable_after_unpin(dev: SimulatedPmem) -> None:
    """Issue 10 section 1: another device READs straight into the pinned pmem."""
    source = SimulatedPmem(1 << 20)
    source.write(0, b"from the other device".ljust(BLOCK, b"."))
    other = PmemBlockDevice(source)
    fs = daxfs.mount(dev)
    put(fs, "/f", b"o" * 2 * BLOCK)
    f = fs.open("/f", "rb+", buffering=0)
    sg = f.pin(BLOCK, BLOCK)
    assert fs.data.mapped_ranges.ranges(f.inode.ino) == [(BLOCK, 2 * BLOCK)]
    bio = Bio(BioOp.READ, 0, sg)
    other.submit_bio(bio)
    bio.wait()
    del bio  # its segments alias the pin
    assert f.pread(21, BLOCK) == b"from the other device"
    sg.unpin()
    assert fs.data.mapped_ranges.ranges(f.inode.ino) == []  # written back and forgotten
    assert survives_every_crash(dev, b"from the other device", BLOCK)
    f.close()
    fs.unmount()
    other.close()
    source.close()


def test_before_unpin_a_crash_may_lose_the_stores(dev: SimulatedPmem) -> None:
    """The control: while pinned and before any fsync nothing persisted the store, so
    some crash state loses it (the checks of these tests can fail)."""
    fs = daxfs.mount(dev)
    put(fs, "/f", b"o" * BLOCK)
    f = fs.open("/f", "rb+", buffering=0)
    sg = f.pin(0, BLOCK)
    next(sg.views())[0:8] = b"STORED!!"
    assert not survives_every_crash(dev, b"STORED!!", 0)
    sg.unpin()
    assert survives_every_crash(dev, b"STORED!!", 0)
    f.close()
    fs.unmount()


@pytest.mark.parametrize(
    "persist",
    [
        lambda fs, f: f.fsync(),
        lambda fs, f: f.fdatasync(),
        lambda fs, f: fs.sync(),
    ],
    ids=["fsync", "fdatasync", "sync"],
)
def test_fsync_while_pinned_persists_the_stores(dev: SimulatedPmem, persist: object) -> None:
    fs = daxfs.mount(dev)
    put(fs, "/f", b"o" * BLOCK)
    f = fs.open("/f", "rb+", buffering=0)
    sg = f.pin(0, BLOCK)
    next(sg.views())[8:16] = b"FSYNCED!"
    persist(fs, f)  # type: ignore[operator]
    assert sg.pinned
    assert fs.data.mapped_ranges.ranges(f.inode.ino) == [(0, BLOCK)]  # live: still remembered
    assert survives_every_crash(dev, b"FSYNCED!", 8)
    sg.unpin()
    f.close()
    fs.unmount()


def test_sync_while_pinned_writes_back_on_a_block_mount() -> None:
    """FileSystem.sync with the File closed (the pin keeps the inode); unmount is
    refused while the pin lives."""
    disk = SimulatedBlockDevice(SIZE)
    daxfs.mkfs(disk)
    fs = daxfs.mount(disk)
    put(fs, "/f", b"o" * BLOCK)
    f = fs.open("/f", "rb+", buffering=0)
    sg = f.pin(0, BLOCK)
    next(sg.views())[0:4] = b"SYNC"
    f.close()
    with pytest.raises(OSError, match="pins") as info:
        fs.unmount()
    assert info.value.errno == errno.EBUSY
    assert b"SYNC" not in disk.durable_image()  # (the check below can fail)
    fs.sync()
    assert b"SYNC" in disk.durable_image()
    sg.unpin()
    fs.unmount()


def test_truncate_waits_for_the_unpin_and_its_write_back(fs: daxfs.FileSystem) -> None:
    put(fs, "/f", b"t" * 8 * BLOCK)
    f = fs.open("/f", "rb+", buffering=0)
    sg = f.pin(0, 4 * BLOCK)
    next(sg.views())[0:4] = b"KEPT"
    done = threading.Event()
    order: list[str] = []
    writeback = fs.data.writeback

    def spy(inode: object) -> bool:
        order.append("write-back")
        return writeback(inode)  # type: ignore[arg-type]

    fs.data.writeback = spy  # type: ignore[method-assign]

    def truncate() -> None:
        fs.truncate("/f", BLOCK)
        order.append("truncated")
        done.set()

    worker = threading.Thread(target=truncate)
    worker.start()
    time.sleep(0.3)
    assert not done.is_set()  # waiting for the pin
    sg.unpin()
    worker.join()
    assert order == ["write-back", "truncated"]
    assert fs.stat("/f").st_size == BLOCK
    assert f.pread(4, 0) == b"KEPT"
    f.close()


def test_a_failed_write_back_at_unpin_releases_the_pin_and_keeps_the_range(
    fs: daxfs.FileSystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    put(fs, "/f", b"e" * 2 * BLOCK)
    f = fs.open("/f", "rb+", buffering=0)
    sg = f.pin(0, 2 * BLOCK)

    def failing_drain() -> None:
        raise OSError(errno.EIO, "the device failed to drain")

    monkeypatch.setattr(fs.data.device, "drain", failing_drain)
    with pytest.raises(OSError, match="/f") as info:
        sg.unpin()
    assert info.value.errno == errno.EIO
    assert not sg.pinned
    assert fs.data.mapped_ranges.ranges(f.inode.ino) == [(0, 2 * BLOCK)]  # for a later fsync
    monkeypatch.undo()
    f.truncate(0)  # the layout was released: nothing waits
    f.fsync()
    assert fs.data.mapped_ranges.ranges(f.inode.ino) == []
    f.close()


def test_unpin_not_dirty_forgets_the_range_without_a_write_back(
    fs: daxfs.FileSystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    put(fs, "/f", b"n" * 2 * BLOCK)
    f = fs.open("/f", "rb+", buffering=0)
    calls: list[object] = []
    writeback = fs.data.writeback
    monkeypatch.setattr(fs.data, "writeback", lambda inode: calls.append(inode) or writeback(inode))
    with f.mmap(0, BLOCK):  # a writable mapping's range is not the pin's to forget
        sg = f.pin(0, 2 * BLOCK)
        assert fs.data.mapped_ranges.ranges(f.inode.ino) == [(0, 2 * BLOCK)]
        sg.unpin(dirty=False)
        assert calls == []
        assert fs.data.mapped_ranges.ranges(f.inode.ino) == [(0, BLOCK)]
    f.fsync()
    assert len(calls) == 1
    assert fs.data.mapped_ranges.ranges(f.inode.ino) == []
    f.close()


def test_fsync_while_a_writable_pin_lives_sets_the_modification_time(
    fs: daxfs.FileSystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As for a live writable mapping; unpin itself does not."""
    put(fs, "/f", b"m" * BLOCK)
    touched: list[object] = []
    touch = fs._touch_modified
    monkeypatch.setattr(fs, "_touch_modified", lambda inode: touched.append(inode) or touch(inode))
    with fs.open("/f", "rb+", buffering=0) as f:
        sg = f.pin(0, BLOCK)
        sg.unpin()
        assert touched == []
        sg = f.pin(0, BLOCK)
        f.fsync()
        assert touched == [f.inode]
        sg.unpin()
        with fs.open("/f", "rb", buffering=0) as r, r.pin(0, BLOCK):
            f.fsync()  # a read-only pin is not a writer
        assert touched == [f.inode]
