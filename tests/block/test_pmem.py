"""PmemBlockDevice: the same image through DAX and through bios; persist at completion;
a pinned pmem range as the source of a bio with no copy."""

from __future__ import annotations

import errno
from pathlib import Path

import numpy as np
import pytest

import daxfs
from daxfs.block import Bio, BioFlags, BioOp, PmemBlockDevice, open_block
from daxfs.testing import PowerFailure, SimulatedPmem

SIZE = 1 << 20


def test_same_image_through_dax_and_bios(shm_path: Path) -> None:
    dev = daxfs.open_device(shm_path, SIZE, create=True, persist="msync")
    with PmemBlockDevice(dev) as blk:
        blk.write(4096, b"bio!" * 128)
        with dev.direct_access(4096, 512) as view:  # DAX sees the bio's bytes in place
            assert bytes(view) == b"bio!" * 128
        with dev.direct_access(8192, 512) as view:
            view[:] = b"dax." * 128
        dev.persist(8192, 512)
        assert blk.read(8192, 512) == b"dax." * 128
    dev.close()
    # and the file itself holds both: the same image, nothing converted
    with open_block(shm_path) as fileblk:
        assert fileblk.read(4096, 8192)[:512] == b"bio!" * 128
        assert fileblk.read(8192, 512) == b"dax." * 128


def test_a_completed_write_is_durable() -> None:
    pmem = SimulatedPmem(SIZE)
    blk = PmemBlockDevice(pmem)
    assert not blk.write_cache
    blk.write(0, b"d" * 4096)
    assert pmem.pending() == []
    assert pmem.persisted_image()[:4096] == b"d" * 4096
    blk.write_zeroes(0, 1024)
    assert pmem.pending() == []
    assert pmem.persisted_image()[:1024] == bytes(1024)


def test_power_failure_in_the_pmem_device_ends_the_bio() -> None:
    pmem = SimulatedPmem(SIZE)
    blk = PmemBlockDevice(pmem)
    pmem.schedule_power_failure(fence=1)
    bio = Bio(BioOp.WRITE, 0, [b"p" * 1024], flags=BioFlags.FUA)
    with pytest.raises(PowerFailure):
        blk.submit_bio(bio)
    assert isinstance(bio.status, PowerFailure)
    # the copies were flushed but not fenced: each 8-byte word old or new
    outcomes = {s.read(0, 16) for s in pmem.crash_states(limit=16)}
    assert bytes(16) in outcomes
    assert b"p" * 16 in outcomes


def test_sector_size_and_bad_device() -> None:
    blk = PmemBlockDevice(SimulatedPmem(SIZE + 1024), logical_block_size=4096)
    assert blk.size == SIZE
    bio = Bio(BioOp.READ, 1, [bytearray(4096)])
    blk.submit_bio(bio)
    with pytest.raises(ValueError, match="4096"):
        bio.wait()
    with pytest.raises(ValueError, match="holds no"):
        PmemBlockDevice(SimulatedPmem(256), logical_block_size=512)


def test_pinned_pmem_is_a_bio_source_with_no_copy(shm_path: Path, tmp_path: Path) -> None:
    daxfs.mkfs(shm_path, 32 << 20)
    data = np.arange(64 * 1024, dtype=np.uint8).tobytes() * 2
    with daxfs.mount(shm_path, persist="cpu") as fs:
        with fs.open("/f", "wb", buffering=0) as f:
            f.write(data)
        with (
            fs.open("/f", "rb", buffering=0) as f,
            f.pin(0, len(data)) as sg,
            open_block(tmp_path / "out.img", 1 << 20, create=True) as out,
        ):
            bio = Bio(BioOp.WRITE, 0, sg, flags=BioFlags.FUA)
            # the bio's segments are views of the device memory the pin holds
            pinned = [np.frombuffer(v, np.uint8).ctypes.data for v in sg.views()]
            assert [np.frombuffer(v, np.uint8).ctypes.data for v in bio.segments] == pinned
            out.submit_bio(bio)
            assert bio.wait() == len(data)
            assert out.read(0, len(data)) == data


def test_readonly_pmem_device_gives_erofs(shm_path: Path) -> None:
    daxfs.open_device(shm_path, SIZE, create=True).close()
    dev = daxfs.open_device(shm_path, readonly=True)
    with PmemBlockDevice(dev, own=True) as blk:
        assert blk.readonly
        assert blk.read(0, 512) == bytes(512)
        with pytest.raises(OSError, match="read-only") as info:
            blk.write(0, bytes(512))
        assert info.value.errno == errno.EROFS
