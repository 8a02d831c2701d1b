"""The File object of every open and create: its fields in slots, the filesystem's weak
registry of open files, and close.

* a File keeps every field in a slot: open, I/O and close leave io's instance
  __dict__ unmade (what a create's open+close costs depends on it);
* ``FileSystem.open_files`` lists the open Files and no other: a File closed,
  or dropped unclosed (its __del__ closes it), is out of the registry, which
  does not grow with files opened and closed; unmount refuses while one is
  open and the context manager closes them;
* close waits for the File's requests in flight, and is idempotent.
"""

from __future__ import annotations

import gc

import pytest

import daxfs
from daxfs.errors import Busy, ClosedFile
from daxfs.fs.file import File
from daxfs.testing import SimulatedPmem
from tests.helpers import SIZE, formatted


def test_a_file_keeps_its_fields_in_slots() -> None:
    dev = formatted()
    with daxfs.mount(dev) as fs:
        f = fs.open("/a", "xb+", buffering=0)
        assert isinstance(f, File)
        f.pwrite(b"data", 0)
        assert f.pread(4, 0) == b"data"
        f.seek(2)
        assert f.read() == b"ta"
        f.close()
        assert f.closed
        assert not hasattr(f, "__dict__") or not f.__dict__  # io's dict never made
        with pytest.raises(ClosedFile):
            f.pread(1, 0)
        f.close()  # again: nothing
    dev.close()


def test_the_registry_holds_the_open_files_only() -> None:
    dev = formatted()
    fs = daxfs.mount(dev)
    a = fs.open("/a", "xb", buffering=0)
    b = fs.open("/b", "xb", buffering=0)
    c = fs.open("/c", "xb", buffering=0)
    assert set(map(id, fs.open_files())) == {id(a), id(b), id(c)}
    b.close()
    assert set(map(id, fs.open_files())) == {id(a), id(c)}
    del c  # dropped unclosed: its __del__ closes it
    gc.collect()
    assert fs.open_files() == [a]
    with pytest.raises(Busy, match="/a"):
        fs.unmount()
    a.close()
    for i in range(1000):
        fs.open(f"/f{i}", "xb", buffering=0).close()
        with fs.open(f"/f{i}", "rb") as f:
            f.read()
    assert fs.open_files() == []
    assert len(fs._files) == 0  # closed Files leave nothing behind
    fs.unmount()
    dev.close()


def test_the_context_manager_closes_open_files_at_unmount() -> None:
    dev = formatted()
    with daxfs.mount(dev) as fs:
        kept = [fs.open(f"/k{i}", "xb", buffering=0) for i in range(3)]
        kept[1].close()
    assert all(f.closed for f in kept)
    with daxfs.mount(SimulatedPmem(SIZE, image=dev.read(0, SIZE))) as again:
        assert sorted(again.listdir("/")) == ["k0", "k1", "k2"]
    dev.close()


def test_close_waits_for_requests_in_flight() -> None:
    dev = formatted()
    with daxfs.mount(dev) as fs:
        f = fs.open("/a", "xb+", buffering=0)
        futures = [f.submit_write(i * 4096, bytes([i]) * 4096) for i in range(4)]
        f.close()
        assert [fut.result() for fut in futures] == [4096] * 4
        with fs.open("/a", "rb", buffering=0) as g:
            assert g.pread(1, 3 * 4096) == b"\x03"
    dev.close()
