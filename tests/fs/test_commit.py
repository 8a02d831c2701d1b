"""The C commit of small overwrites (daxfs/fs/_commit.c) against the Python reference.

* the same operations through both paths leave byte-identical images, and on a
  recording device make the same device operations (write, flush, drain) with
  the same bytes, in the same order: the media is the same at every fence;
* the same holds in native mode (a PmemDevice, flushed by the C code itself);
* the C code agrees with layout.py on the format and with crc32c on checksums;
* bad arguments raise OSError (EINVAL) and write nothing; a committed record
  that does not match memory sends the write to the reference path.
"""

from __future__ import annotations

import errno
import gc
import os
import random
import struct
from collections.abc import Callable
from pathlib import Path

import crc32c
import pytest
from typing_extensions import Buffer

import daxfs
from daxfs.errors import InvalidArgument
from daxfs.fs import _commit, journal, layout
from daxfs.fs.filesystem import FileSystem
from daxfs.fs.journal import Journal
from daxfs.iomap import IomapFlags
from daxfs.testing import SimulatedPmem
from tests.helpers import CLOCK, SIZE, formatted

BLOCK = 4096


class RecordingPmem(SimulatedPmem):
    """A SimulatedPmem that records every write, flush and drain (with the bytes)."""

    def __init__(self, size: int, *, image: Buffer | None = None) -> None:
        super().__init__(size, image=image)
        self.log: list[tuple[object, ...]] | None = None

    def write(self, offset: int, data: Buffer, *, drain: bool = True) -> None:
        if self.log is not None:
            self.log.append(("write", offset, bytes(data), drain))
        super().write(offset, data, drain=drain)

    def flush(self, offset: int, length: int) -> None:
        if self.log is not None:
            self.log.append(("flush", offset, length))
        super().flush(offset, length)

    def drain(self) -> None:
        if self.log is not None:
            self.log.append(("drain",))
        super().drain()

    def fill(self, offset: int, length: int, byte: int = 0, *, drain: bool = True) -> None:
        if self.log is not None:
            self.log.append(("fill", offset, length, byte, drain))
        super().fill(offset, length, byte, drain=drain)


def populate(fs: FileSystem) -> None:
    with fs.open("/f", "wb", buffering=0) as f:
        f.write(bytes(range(256)) * 64 * 8)  # 128 KiB, one extent
    with fs.open("/g", "wb", buffering=0) as f:
        f.write(b"g" * 5000)


def overwrites(fs: FileSystem) -> None:
    """Fast-path overwrites: aligned, unaligned, across blocks, growing the size
    inside the last block, of bytes, bytearray and a memoryview of other items."""
    with fs.open("/f", "rb+", buffering=0) as f:
        f.pwrite(b"A" * BLOCK, 3 * BLOCK)
        f.pwrite(b"B" * 100, 4000)
        f.pwrite(bytearray(b"C" * 9000), 17 * BLOCK + 13)
        f.pwrite(memoryview(struct.pack("<4I", 1, 2, 3, 4)).cast("I"), 7)
        f.seek(BLOCK)
        f.write(b"D" * 77)
    with fs.open("/g", "rb+", buffering=0) as f:
        f.pwrite(b"E" * 3000, 4000)  # grows the file from 5000 to 7000 inside its block
        f.pwrite(b"F", 0)


def run(
    dev: SimulatedPmem | str,
    native: bool,
    steps: Callable[[FileSystem], None],
    persist: str = "cpu",
) -> Journal:
    """Mount ``dev`` (a device, or an image file natively with ``persist``) with the C
    commits on or off, run ``steps``, unmount; the journal, for its counts."""
    journal.NATIVE_COMMIT = native
    try:
        fs = (
            daxfs.mount(dev)
            if isinstance(dev, SimulatedPmem)
            else daxfs.mount(dev, persist=persist)
        )
    finally:
        journal.NATIVE_COMMIT = True
    committer = fs.journal.committer
    assert (committer is not None) == native
    if committer is not None and not isinstance(dev, SimulatedPmem):
        # flushed by the C code itself, or msync'ed
        native_modes = (
            ("msync",) if persist == "msync" else ("clwb", "clflushopt", "clflush", "none")
        )
        assert committer.mode in native_modes
    steps(fs)
    fs.unmount()
    return fs.journal


def c_commits(log: Journal) -> int:
    """Overwrites the C commit made (0 with the C commits off)."""
    return log.committer.commits if log.committer is not None else 0


def base_image(size: int = SIZE) -> bytes:
    dev = formatted(size)
    with daxfs.mount(dev) as fs:
        populate(fs)
    image = dev.read(0, size)
    dev.close()
    return image


@pytest.mark.usefixtures("frozen")
def test_both_paths_make_the_same_device_operations_and_image() -> None:
    image = base_image()
    logs: dict[bool, list[tuple[object, ...]]] = {}
    images: dict[bool, bytes] = {}
    for native in (True, False):
        dev = RecordingPmem(SIZE, image=image)
        dev.log = []
        commits = c_commits(run(dev, native, overwrites))
        logs[native] = dev.log
        images[native] = dev.read(0, SIZE)
        dev.close()
        if native:
            assert commits == 7, "every overwrite took the C path"
    assert len(logs[True]) > 7 * 8
    assert logs[True] == logs[False]
    assert images[True] == images[False]
    assert images[True] != image


def random_overwrites(seed: int, count: int) -> Callable[[FileSystem], None]:
    """Seeded overwrites inside /f of every length from 1 byte to 3 blocks, at any
    offset and alignment: the log's pieces meet anywhere in a cache line."""

    def steps(fs: FileSystem) -> None:
        rng = random.Random(seed)
        with fs.open("/f", "rb+", buffering=0) as f:
            size = f.seek(0, os.SEEK_END)
            for _ in range(count):
                n = rng.choice([rng.randint(1, 300), rng.randint(1, 3 * BLOCK)])
                f.pwrite(rng.randbytes(n), rng.randint(0, size - n))

    return steps


@pytest.mark.usefixtures("frozen")
def test_native_mode_writes_the_images_of_random_overwrites(shm_path: Path) -> None:
    """The native stores (the log line by line, the header words non-temporal) leave
    the bytes the reference leaves, whatever the lengths and alignments."""
    image = base_image()
    results = {}
    for native in (True, False):
        shm_path.write_bytes(image)
        commits = c_commits(run(str(shm_path), native, random_overwrites(seed=9, count=150)))
        assert commits == (150 if native else 0)
        results[native] = shm_path.read_bytes()
    assert results[True] == results[False]
    assert results[True] != image


@pytest.mark.usefixtures("frozen")
def test_native_mode_writes_the_image_the_reference_writes(shm_path: Path) -> None:
    image = base_image()
    results = {}
    for native in (True, False):
        shm_path.write_bytes(image)
        commits = c_commits(run(str(shm_path), native, overwrites))  # native: not msync
        assert commits == (7 if native else 0)
        results[native] = shm_path.read_bytes()
    assert results[True] == results[False]
    with daxfs.mount(SimulatedPmem(SIZE, image=results[True])) as fs:
        with fs.open("/g", "rb") as f:
            assert f.read() == b"F" + b"g" * 3999 + b"E" * 3000
        assert fs.stat("/g").st_mtime_ns == CLOCK


def test_crc32c_is_the_checksum_of_the_format() -> None:
    for n in (0, 1, 7, 8, 9, 63, 64, 65, 255, 4096, 4103, 70000):
        data = os.urandom(n)
        for value in (0, 1, 0xDEADBEEF, 0xFFFFFFFF):
            assert _commit.crc32c(data, value) == crc32c.crc32c(data, value)
    assert _commit.crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value


def test_compiled_layout_matches_layout_py() -> None:
    got = _commit.layout()
    fmt = "<II"
    offsets = {}
    for name, code in layout._INODE_FIELDS:
        offsets[name] = struct.calcsize(fmt)
        fmt += code + ("H" if name == "xattr_bytes" else "")  # the reserved u16 after it
    assert got["ino"] == offsets["ino"]
    assert got["size"] == offsets["size"]
    assert got["mtime_ns"] == offsets["mtime_ns"]
    assert got["ctime_ns"] == offsets["ctime_ns"]
    assert got["reserved"] == offsets["xattr_bytes"] + 2
    assert got["INODE_SIZE"] == layout.INODE_SIZE
    assert got["INODE_MAGIC"] == layout.INODE_MAGIC
    assert got["INODE_CRC_OFFSET"] == layout.INODE_CRC_OFFSET
    assert got["BLOCK_SHIFT"] == layout.BLOCK_SHIFT
    assert got["JREC_SIZE"] == layout.JREC.size
    assert got["JH_CRC_OFFSET"] == layout.JH_CRC_OFFSET
    assert got["JH_APPLIED_OFFSET"] == layout.JH_APPLIED_OFFSET
    assert got["JOURNAL_MAGIC"] == layout.JOURNAL_MAGIC


def test_bad_arguments_raise_einval_and_write_nothing() -> None:
    dev = formatted()
    fs = daxfs.mount(dev)
    try:
        populate(fs)
        committer = fs.journal.committer
        assert committer is not None
        inode = fs.itable.get(_ino(fs, "/f"))
        where = fs.data.iomap_begin(inode, 0, 1, IomapFlags.NONE).addr  # /f's first byte
        blockno, offset = fs.itable.address(fs.store, inode.ino)
        ioff = (blockno << layout.BLOCK_SHIFT) + offset
        rec = inode.rec
        journal_start = fs.journal.header_offset
        journal_end = fs.journal.log_offset + fs.journal.capacity
        before = dev.read(0, SIZE)
        seq = fs.journal.seq + 1
        good = (seq, where, b"x", ioff, rec.ino, rec.size, rec.mtime_ns, 1)
        bad = [
            (0, *good[1:]),  # seq 0
            (1 << 63, *good[1:]),  # seq at the limit
            (seq, SIZE, *good[2:]),  # data past the end
            (seq, SIZE - 1, b"xy", *good[3:]),  # data straddling the end
            (seq, -1, *good[2:]),  # negative offset
            (seq, 1 << 70, *good[2:]),  # does not fit
            (seq, journal_start + 100, *good[2:]),  # into the journal
            (seq, journal_end - 1, b"xy", *good[3:]),  # the journal's last byte
            (seq, where, b"", *good[3:]),  # nothing to write
            (seq, where, bytes(fs.journal.capacity), *good[3:]),  # larger than the log
            (seq, where, b"x", SIZE, *good[4:]),  # record past the end
            (seq, where, b"x", ioff + 8, *good[4:]),  # record not aligned
            (seq, where, b"x", journal_start, *good[4:]),  # record in the journal
            (seq, ioff + 10, b"x", *good[3:]),  # data over the record
            (seq, where, b"x", ioff, rec.ino, rec.size, rec.mtime_ns, -5),  # negative end
        ]
        for args in bad:
            with pytest.raises(InvalidArgument) as info:
                committer.overwrite(*args)
            assert info.value.errno == errno.EINVAL
        for args in [(seq, "1", *good[2:]), (seq, where, 5, *good[3:]), good[:5]]:
            with pytest.raises(TypeError):
                committer.overwrite(*args)
        assert dev.read(0, SIZE) == before
        # a record whose size or mtime is not what memory holds: -1, nothing written
        assert committer.overwrite(seq, *good[1:5], rec.size + 1, rec.mtime_ns, 1) == -1
        assert committer.overwrite(seq, *good[1:6], rec.mtime_ns + 1, 1) == -1
        assert committer.overwrite(seq, *good[1:4], rec.ino + 1, *good[5:]) == -1
        assert dev.read(0, SIZE) == before
        assert committer.commits == 0
    finally:
        fs.unmount()
        dev.close()


def _ino(fs: FileSystem, path: str) -> int:
    return fs.stat(path).st_ino


def test_a_stale_record_falls_back_to_the_reference() -> None:
    """Memory says a size the media does not (as inside a transaction): the reference
    path runs and writes what memory holds."""
    dev = formatted()
    fs = daxfs.mount(dev)
    try:
        populate(fs)
        inode = fs.itable.get(_ino(fs, "/g"))
        committer = fs.journal.committer
        assert committer is not None
        inode.rec.mtime_ns += 1  # as if changed in memory by a transaction not yet sealed
        with fs.open("/g", "rb+", buffering=0) as f:
            f.pwrite(b"z", 0)
        assert committer.commits == 0
        assert fs.itable.read_record(fs.store, inode.ino).size == 5000
        with fs.open("/g", "rb+", buffering=0) as f:
            f.pwrite(b"y", 1)
        assert committer.commits == 1
    finally:
        fs.unmount()
        dev.close()


def test_pwrite_leaves_no_garbage_for_the_cyclic_gc() -> None:
    dev = formatted()
    fs = daxfs.mount(dev)
    try:
        populate(fs)
        for native in (True, False):
            committer = fs.journal.committer
            if not native:
                fs.journal.committer = None  # files opened from now on take the reference
            with fs.open("/f", "rb+", buffering=0) as f:
                assert (f._writer is not None) is native
                f.pwrite(b"w" * 100, 0)  # warm
                gc.collect()
                gc.disable()
                try:
                    for i in range(50):
                        f.pwrite(b"w" * 100, i * 997)
                        f.write(b"v" * 10)
                    found = gc.collect()
                finally:
                    gc.enable()
                fs.journal.committer = committer
                assert found == 0, f"native={native}: {found} objects in reference cycles"
    finally:
        fs.unmount()
        dev.close()


def test_the_pwrite_fast_path_takes_its_case_and_leaves_the_rest() -> None:
    """Committer.pwrite commits an overwrite inside the cached written extent, and
    returns None, having done nothing, for everything else."""
    dev = formatted()
    fs = daxfs.mount(dev)
    try:
        populate(fs)
        committer = fs.journal.committer
        assert committer is not None
        with fs.open("/g", "rb+", buffering=0) as f:
            f.pread(1, 0)  # caches the extent
            inode = f.inode
            assert committer.pwrite(fs.journal, inode, b"hello", 10) == 5
            assert committer.commits == 1
            size = inode.rec.size
            before = dev.read(0, SIZE)
            misses = [
                (inode, b"x", -1),  # negative offset
                (inode, b"x", True),  # not an int
                (inode, b"x", 1 << 80),  # does not fit
                (inode, b"x", (1 << 63) - 1),  # past the end of file, at the largest offset
                (inode, b"x", size + 1),  # past the end of file: a hole to zero
                (inode, b"x" * BLOCK, size - 1),  # past the extent's end: needs a block
                (inode, b"", 0),  # nothing to write
                (inode, 5, 0),  # not a buffer: the Python path raises
                (inode, bytes(fs.data.log_data_max + 1), 0),  # too large to journal
                (object(), b"x", 0),  # not an inode
            ]
            for inode_arg, data, pos in misses:
                assert committer.pwrite(fs.journal, inode_arg, data, pos) is None
            cached = inode.xcache
            inode.xcache = None
            assert committer.pwrite(fs.journal, inode, b"x", 0) is None  # no cached extent
            inode.xcache = cached
            fs.journal.failed = "a test"
            assert committer.pwrite(fs.journal, inode, b"x", 0) is None  # read-only
            fs.journal.failed = None
            assert dev.read(0, SIZE) == before
            assert committer.commits == 1
            with f.pin(0, BLOCK):  # a pin: break_layouts is the Python path's
                assert committer.pwrite(fs.journal, inode, b"x", 4500) is None
                f.pwrite(b"y", 4500)  # DataPath.write's general path (pins to break)
            assert committer.commits == 1
            assert f.pread(6, 9) == b"ghello"
            assert f.pread(2, 4499) == b"gy"
    finally:
        fs.unmount()
        dev.close()


@pytest.mark.parametrize(("nth", "committed"), [(1, False), (2, False), (3, True)])
def test_a_device_failure_in_the_c_commit_is_handled_as_in_the_reference(
    nth: int, committed: bool
) -> None:
    """The n-th fence of the C commit fails (EIO): before the commit point the write
    fails and nothing changes (the header is erased); after it the write fails, the
    filesystem turns read-only, and the remounted image holds the write."""
    from daxfs.errors import IOFailure, ReadOnly
    from daxfs.testing.faults import FaultyPmem

    image = base_image()
    dev = FaultyPmem(SIZE, image=image)
    fs = daxfs.mount(dev)
    committer = fs.journal.committer
    assert committer is not None
    with fs.open("/g", "rb+", buffering=0) as f:
        f.pread(1, 0)
        dev.arm("drain", nth)
        with pytest.raises(OSError, match="/g") as info:
            f.pwrite(b"NEW", 0)
        assert info.value.errno == errno.EIO
        assert info.value.filename == "/g"
        dev.disarm()
        if committed:
            assert isinstance(info.value, IOFailure)
            assert fs.journal.failed is not None
            with pytest.raises(ReadOnly):
                f.pwrite(b"more", 0)
        else:
            assert fs.journal.failed is None
            assert f.pread(3, 0) == b"ggg"
            f.pwrite(b"ok", 100)  # the filesystem goes on
    fs.unmount()
    with (
        daxfs.mount(SimulatedPmem(SIZE, image=dev.image())) as again,
        again.open("/g", "rb") as f,
    ):
        assert f.read(3) == (b"NEW" if committed else b"ggg")
    dev.close()
