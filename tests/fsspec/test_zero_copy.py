"""Zero-copy reads through fsspec: ``cat_buffer`` and pyarrow's ``read_buffer`` as buffers
of pinned device memory, and their lifetime against writes, truncate, unlink, unmount and
exit."""

from __future__ import annotations

import errno
import gc
import os
import threading
from collections.abc import Iterator

import numpy as np
import pytest

import daxfs
from daxfs.errors import Busy, InvalidArgument
from daxfs.fs.file import FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, File
from daxfs.fsspec import DaxFileSystem, _files, _mounts, mounted

from .test_lifetime import run

pa = pytest.importorskip("pyarrow")

BIG = _files.ZERO_COPY_MIN + 12345  # read_buffer maps reads of this size
DATA = np.random.default_rng(5).integers(0, 256, 3 * BIG, dtype=np.uint8).tobytes()


@pytest.fixture
def copies(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The offsets File.preadinto and File.pread copied from, from now on."""
    calls: list[int] = []
    preadinto, pread = File.preadinto, File.pread

    def spy_into(self: File, buffer: object, offset: int) -> int:
        calls.append(offset)
        return preadinto(self, buffer, offset)  # type: ignore[arg-type]

    def spy(self: File, size: int, offset: int) -> bytes:
        calls.append(offset)
        return pread(self, size, offset)

    monkeypatch.setattr(File, "preadinto", spy_into)
    monkeypatch.setattr(File, "pread", spy)
    return calls


@pytest.fixture
def ro(image: str) -> Iterator[DaxFileSystem]:
    """The image, holding /f = DATA, mounted read-only (zero copy on by default)."""
    with daxfs.mount(image, persist="cpu") as fs, fs.open("/f", "wb") as f:
        f.write(DATA)
    fs_ro = DaxFileSystem(image, readonly=True)
    yield fs_ro
    fs_ro.unmount(force=True)


def test_cat_buffer_is_pinned_device_memory_that_writes_wait_for(
    image: str, copies: list[int]
) -> None:
    fs = DaxFileSystem(image, persist="cpu", layout_timeout=0.2)
    fs.pipe_file("/f", DATA)
    copies.clear()
    buf = fs.cat_buffer("/f", 100, -100)
    assert isinstance(buf, pa.Buffer)
    assert not buf.is_mutable
    assert buf.to_pybytes() == DATA[100:-100]
    assert copies == []  # nothing copied from the file
    view = np.frombuffer(buf, dtype=np.uint8)
    assert view.__array_interface__["data"][0] == buf.address
    for change in (
        lambda f: f.pwrite(b"\xff" * 8, 200),
        lambda f: f.truncate(5000),
        lambda f: f.fallocate(0, len(DATA), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE),
    ):
        with fs.filesystem.open("/f", "rb+", buffering=0) as f, pytest.raises(Busy) as info:
            change(f)
        assert info.value.filename == "/f"
    assert fs.cat_file("/f") == DATA  # nothing changed, in the file or under the buffer
    assert bytes(view) == DATA[100:-100]
    del buf, view
    with fs.filesystem.open("/f", "rb+", buffering=0) as f:  # the pin is gone: no wait
        f.truncate(5000)
    assert fs.cat_file("/f") == DATA[:5000]
    assert fs.cat_buffer("/f", 10, 5).size == 0
    assert fs.cat_buffer("/f", -3).to_pybytes() == DATA[4997:5000]
    fs.unmount()


def test_cat_buffer_copies_a_range_of_several_extents_or_holes(
    dfs: DaxFileSystem, copies: list[int]
) -> None:
    with dfs.open("/sparse", "wb") as f:
        f.seek(1 << 20)  # a hole, then data
        f.write(DATA[:5000])
    copies.clear()
    buf = dfs.cat_buffer("/sparse", 100)
    assert buf.to_pybytes() == bytes((1 << 20) - 100) + DATA[:5000]
    assert copies == [100]
    assert len(dfs.mount.views) == 0  # nothing pinned
    del buf


def test_a_live_buffer_refuses_the_unmount_until_it_dies(dfs: DaxFileSystem) -> None:
    dfs.pipe_file("/dir/f", DATA)
    buf = dfs.cat_buffer("/dir/f")
    sliced = buf.slice(10, 20)  # a slice keeps the mapping alive as well
    del buf
    for force in (False, True):
        with pytest.raises(Busy) as info:
            dfs.unmount(force=force)
        assert info.value.errno == errno.EBUSY
        assert "zero-copy" in str(info.value)
        assert "/dir/f" in str(info.value)
        assert info.value.filename == dfs.image
    assert dfs.image in mounted()
    assert sliced.to_pybytes() == DATA[10:30]
    del sliced
    dfs.unmount()
    assert dfs.image not in mounted()
    assert daxfs.fsck(dfs.image).clean


def test_an_unlinked_file_is_freed_when_its_last_buffer_dies(dfs: DaxFileSystem) -> None:
    dfs.pipe_file("/f", DATA)
    free = dfs.filesystem.statvfs("/").f_bfree
    buf = dfs.cat_buffer("/f")
    dfs.rm("/f")
    assert not dfs.exists("/f")
    assert buf.to_pybytes() == DATA  # the blocks are still the file's
    assert dfs.filesystem.statvfs("/").f_bfree < free + len(DATA) // 4096
    del buf
    dfs.unmount()  # settles: the worker's unpin was the last hold, the blocks are freed
    assert daxfs.fsck(dfs.image).clean
    again = DaxFileSystem(dfs.image, persist="cpu")
    assert again.filesystem.statvfs("/").f_bfree >= free + len(DATA) // 4096 - 1
    again.unmount()


def test_read_buffer_maps_on_read_only_mounts_and_copies_on_read_write_ones(
    image: str, copies: list[int]
) -> None:
    rw = DaxFileSystem(image, persist="cpu")
    rw.pipe_file("/f", DATA)
    for fs, mapped in ((rw, False), (DaxFileSystem(image, persist="cpu", zero_copy=True), True)):
        copies.clear()
        with fs.open("/f", "rb") as f:
            f.seek(3)
            buf = f.read_buffer(BIG)
            assert f.tell() == 3 + BIG
            small = f.read_buffer(100)  # below ZERO_COPY_MIN: always a copy
        assert buf.to_pybytes() == DATA[3 : 3 + BIG]
        assert small.to_pybytes() == DATA[3 + BIG : 3 + BIG + 100]
        assert copies == ([3 + BIG] if mapped else [3, 3 + BIG])
        assert len(fs.mount.views) == (1 if mapped else 0)
        del buf, small
    rw.unmount()
    for zero_copy, mapped in ((None, True), (False, False)):
        fs = DaxFileSystem(image, readonly=True, zero_copy=zero_copy)
        copies.clear()
        with fs.open("/f", "rb") as f:
            assert f.read_buffer(-1).to_pybytes() == DATA
        assert copies == ([] if mapped else [0])
        fs.unmount()


def test_bad_zero_copy_values_are_refused(image: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        DaxFileSystem(image, zero_copy="yes")
    assert info.value.errno == errno.EINVAL
    assert mounted() == []


def test_parquet_through_a_read_only_mount(ro: DaxFileSystem) -> None:
    pd = pytest.importorskip("pandas")
    pq = pytest.importorskip("pyarrow.parquet")
    image = ro.image
    ro.unmount()
    rng = np.random.default_rng(2)
    df = pd.DataFrame({"a": rng.random(200_000), "b": np.arange(200_000)})
    with DaxFileSystem(image, persist="cpu") as rw, rw.open("/t.parquet", "wb") as f:
        df.to_parquet(f, compression=None)
    fs = DaxFileSystem(image, readonly=True)
    calls: list[int] = []
    real = _files.pinned_buffer

    def spy(mount: object, raw: File, pos: int, n: int) -> object:
        calls.append(n)
        return real(mount, raw, pos, n)  # type: ignore[arg-type]

    _files.pinned_buffer = spy  # type: ignore[assignment]
    try:
        table = pq.read_table("/t.parquet", filesystem=fs)
        back = pd.read_parquet(
            "daxfs:///t.parquet", storage_options={"image": image, "readonly": True}
        )
    finally:
        _files.pinned_buffer = real
    assert calls  # the column chunks were pinned
    assert max(calls) >= _files.ZERO_COPY_MIN
    pd.testing.assert_frame_equal(table.to_pandas(), df)
    pd.testing.assert_frame_equal(back, df)
    del table, back
    fs.unmount(force=True)


def test_a_pin_is_released_by_the_worker_wherever_its_buffer_dies(ro: DaxFileSystem) -> None:
    buf = ro.cat_buffer("/f")
    assert ro.filesystem.itable.held()  # the pin holds the inode
    box = [buf]
    del buf
    worker = threading.Thread(target=box.clear)  # the last reference dies there
    worker.start()
    worker.join()
    assert _mounts.settle(5.0)
    assert len(ro.mount.views) == 0
    assert not ro.filesystem.itable.held()
    # in a reference cycle: the collector's finalizer only queues the pin
    cycle: list[object] = [ro.cat_buffer("/f", 0, BIG)]
    cycle.append(cycle)
    del cycle
    assert ro.filesystem.itable.held()
    gc.collect()
    assert _mounts.settle(5.0)
    assert not ro.filesystem.itable.held()


def test_exit_with_live_buffers(image: str) -> None:
    with daxfs.mount(image, persist="cpu") as fs, fs.open("/f", "wb") as f:
        f.write(DATA)
    quiet = run(
        f"""
        from daxfs.fsspec import DaxFileSystem
        buf = DaxFileSystem("{image}", readonly=True).cat_buffer("/f")
        print(buf.size)
        """
    )
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, f"{len(DATA)}\n", "")
    told = run(
        f"""
        from daxfs.fsspec import DaxFileSystem
        fs = DaxFileSystem("{image}", persist="cpu")
        fs.pipe_file("/g", b"written")
        buf = fs.cat_buffer("/f")
        """
    )
    assert told.returncode == 0
    assert told.stderr.startswith("daxfs.fsspec: 1 zero-copy buffer(s) of ")
    assert len(told.stderr.splitlines()) == 1
    assert "Traceback" not in told.stderr
    with daxfs.mount(image) as fs:  # the next mount recovers: nothing committed is lost
        assert fs.open("/g", "rb").read() == b"written"
        assert fs.open("/f", "rb").read() == DATA
    assert daxfs.fsck(image).clean


def test_buffers_are_device_memory_in_numpy_without_copies(ro: DaxFileSystem) -> None:
    buf = ro.cat_buffer("/f", 4096)
    array = np.frombuffer(buf, dtype=np.uint8)
    assert not array.flags.writeable
    assert array.__array_interface__["data"][0] == buf.address
    assert bytes(array[:16]) == DATA[4096 : 4096 + 16]
    with pytest.raises(ValueError, match="read-only"):
        array[0] = 1
    del buf, array


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_never_releases_its_parents_pins(ro: DaxFileSystem) -> None:
    buf = ro.cat_buffer("/f")
    pid = os.fork()
    if pid == 0:  # the child: exits with a code, never returns into pytest
        code = 1
        try:
            del buf  # inherited: its finalizer must drop the parent's pin, not queue it
            gc.collect()
            code = 0 if _mounts._UNPIN.empty() and _mounts._worker is None else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert ro.filesystem.itable.held()  # the parent's pin is the parent's
    assert buf.to_pybytes() == DATA
    del buf
    assert _mounts.settle(5.0)
    assert not ro.filesystem.itable.held()


def test_zero_copy_on_a_mount_through_the_page_cache(image: str) -> None:
    """dax="never": the image behind daxfs's page cache; a pin makes its range owned
    (written back, then loaded: daxfs.pagecache.bounded) before the buffer sees it."""
    fs = DaxFileSystem(image, dax="never", zero_copy=True)
    fs.pipe_file("/f", DATA)
    with fs.open("/f", "rb+") as f:  # through the page cache
        f.seek(5000)
        f.write(b"Z" * 100)
    expected = DATA[:5000] + b"Z" * 100 + DATA[5100:]
    buf = fs.cat_buffer("/f")
    with fs.open("/f", "rb") as f:
        read = f.read_buffer(-1)
    assert len(fs.mount.views) == 2
    assert buf.to_pybytes() == expected
    assert read.to_pybytes() == expected
    del buf, read
    fs.unmount()
    assert daxfs.fsck(image).clean
