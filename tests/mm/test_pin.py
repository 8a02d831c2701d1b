"""Pinning: scatter-gather lists of device extents; truncate never frees a pinned block."""

from __future__ import annotations

import errno
import hashlib
import os
import random
import socket
import threading
import time
import tracemalloc
import zlib
from pathlib import Path

import pytest

import daxfs
from daxfs.fs.fsck import fsck
from daxfs.mm import SGList
from daxfs.testing import SimulatedPmem
from tests.mm.conftest import PATIENCE, put

BLOCK = 4096


@pytest.fixture
def dev() -> SimulatedPmem:
    device = SimulatedPmem(32 << 20)
    daxfs.mkfs(device)
    return device


def fragmented(fs: daxfs.FileSystem, path: str, blocks: int) -> bytes:
    with fs.open(path, "wb", buffering=0) as f:
        for i in [*range(0, blocks, 2), *range(1, blocks, 2)]:
            f.pwrite(bytes([i % 250 + 1]) * BLOCK, i * BLOCK)
    with fs.open(path, "rb") as f:
        return f.read()


def drain(sock: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = sock.recv(min(1 << 20, n - len(out)))
        assert chunk
        out += chunk
    return bytes(out)


# -- segments -------------------------------------------------------------------------------


def test_contiguous_file_is_one_segment(fs: daxfs.FileSystem) -> None:
    data = os.urandom(64 * BLOCK)
    put(fs, "/f", data)
    with fs.open("/f", "rb", buffering=0) as f, f.pin(0, len(data)) as sg:
        assert isinstance(sg, SGList)
        assert len(sg.segments) == 1
        assert sg.length == len(data)
        assert b"".join(bytes(v) for v in sg.views()) == data


def test_fragmented_file_gives_one_segment_per_extent(fs: daxfs.FileSystem) -> None:
    data = fragmented(fs, "/frag", 40)
    with fs.open("/frag", "rb", buffering=0) as f:
        inode = f.inode
        extents = list(fs.maps.extents(fs.store, inode))
        with f.pin(0, len(data)) as sg:
            assert len(sg.segments) == len(extents) > 1
            assert b"".join(bytes(v) for v in sg.views()) == data
        with f.pin(BLOCK + 100, 3 * BLOCK) as sg:  # a range inside, unaligned
            assert sum(s.length for s in sg.segments) == 3 * BLOCK
            assert b"".join(bytes(v) for v in sg.views()) == data[BLOCK + 100 : 4 * BLOCK + 100]


def test_holes_are_zero_segments(fs: daxfs.FileSystem) -> None:
    with fs.open("/sparse", "wb+", buffering=0) as f:
        f.pwrite(b"x" * BLOCK, 3 * BLOCK)
        with f.pin(0, 4 * BLOCK) as sg:
            assert [s.dev is None for s in sg.segments] == [True, False]
            assert b"".join(bytes(v) for v in sg.views()) == bytes(3 * BLOCK) + b"x" * BLOCK
            assert sg.bio_segments()[0] == (None, 3 * BLOCK)


def test_pin_memory_does_not_grow_with_the_range(tmp_path: Path) -> None:
    image = Path("/dev/shm") / f"daxfs-pin-{os.getpid()}.img"
    try:
        daxfs.mkfs(image, 320 << 20)
        with daxfs.mount(image, persist="cpu") as fs:
            with fs.open("/big", "wb", buffering=0) as f:
                f.write(bytes(256 << 20))  # one extent
            with fs.open("/big", "rb", buffering=0) as f:
                sizes = {}
                for length in (BLOCK, 256 << 20):
                    tracemalloc.start()
                    sg = f.pin(0, length)
                    sizes[length] = tracemalloc.get_traced_memory()[0]
                    tracemalloc.stop()
                    assert len(sg.segments) == 1
                    sg.unpin()
        # 256 MiB of pages would cost 4 MiB at 64 bytes a page; a pin costs a few hundred bytes
        assert sizes[256 << 20] < 2048
        assert sizes[256 << 20] <= sizes[BLOCK] + 256
    finally:
        image.unlink(missing_ok=True)


# -- consumers ----------------------------------------------------------------------------


def test_write_to_fd_and_file_objects(fs: daxfs.FileSystem, tmp_path: Path) -> None:
    data = fragmented(fs, "/frag", 12)
    out = tmp_path / "out"
    with fs.open("/frag", "rb", buffering=0) as f, f.pin(0, len(data)) as sg:
        fd = os.open(out, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
        try:
            assert sg.write_to(fd) == len(data)
            assert sg.write_to(fd, offset=len(data) + 10) == len(data)
        finally:
            os.close(fd)
        with open(out, "ab") as host:
            assert sg.write_to(host) == len(data)
        with fs.open("/copy", "wb+", buffering=0) as copy:
            assert sg.write_to(copy, offset=0) == len(data)
            assert copy.pread(len(data), 0) == data
    written = out.read_bytes()
    assert written[: len(data)] == data
    assert written[len(data) : len(data) + 10] == bytes(10)
    assert written[len(data) + 10 : 2 * len(data) + 10] == data
    assert written[2 * len(data) + 10 :] == data


def test_send_over_a_socket(fs: daxfs.FileSystem) -> None:
    data = fragmented(fs, "/frag", 20)
    a, b = socket.socketpair()
    with a, b, fs.open("/frag", "rb", buffering=0) as f, f.pin(100, len(data) - 200) as sg:
        got: list[bytes] = []
        reader = threading.Thread(target=lambda: got.append(drain(b, sg.length)))
        reader.start()
        assert sg.send(a) == len(data) - 200
        reader.join()
        assert got[0] == data[100:-100]
        reader = threading.Thread(target=lambda: got.append(drain(b, sg.length)))
        reader.start()
        assert sg.send(a, sendfile=True) == len(data) - 200  # from the device's memfd
        reader.join()
        assert got[1] == data[100:-100]


def test_update_hashes_and_crcs(fs: daxfs.FileSystem) -> None:
    data = fragmented(fs, "/frag", 10)
    with fs.open("/frag", "rb", buffering=0) as f, f.pin(0, len(data)) as sg:
        assert sg.update(hashlib.sha256()).hexdigest() == hashlib.sha256(data).hexdigest()
        assert sg.update(zlib.crc32) == zlib.crc32(data)
        assert sg.update(zlib.adler32, 1) == zlib.adler32(data, 1)
        with pytest.raises(ValueError, match="hash object or a crc function"):
            sg.update(42)  # type: ignore[arg-type]


def test_pin_through_a_mapping(fs: daxfs.FileSystem) -> None:
    put(fs, "/f", b"m" * 4 * BLOCK)
    with fs.open("/f", "rb+", buffering=0) as f, f.mmap() as m:
        m[BLOCK : BLOCK + 4] = b"pinn"
        with m.pin(BLOCK, 8) as sg:
            assert b"".join(bytes(v) for v in sg.views()) == b"pinnmmmm"
        with pytest.raises(ValueError, match="pin: range"):
            m.pin(4 * BLOCK - 1, 2)


# -- truncate and friends against pins ------------------------------------------------------


def test_truncate_waits_for_the_unpin(fs: daxfs.FileSystem) -> None:
    put(fs, "/f", b"t" * 8 * BLOCK)
    f = fs.open("/f", "rb+", buffering=0)
    sg = f.pin(4 * BLOCK, 2 * BLOCK)
    done = threading.Event()

    def truncate() -> None:
        fs.truncate("/f", BLOCK)
        done.set()

    worker = threading.Thread(target=truncate)
    worker.start()
    time.sleep(0.3)
    assert not done.is_set()  # waiting: the pinned blocks are still the file's
    assert bytes(next(sg.views())[:1]) == b"t"
    with pytest.raises(BlockingIOError) as info:  # no new pins on the breaking range
        f.pin(4 * BLOCK, BLOCK)
    assert info.value.errno == errno.EAGAIN
    sg.unpin()
    worker.join()
    assert done.is_set()
    assert fs.stat("/f").st_size == BLOCK
    f.close()


def test_truncate_gives_up_after_the_layout_timeout(dev: SimulatedPmem) -> None:
    with daxfs.mount(dev, layout_timeout=0.2) as fs:
        put(fs, "/f", b"x" * 4 * BLOCK)
        with fs.open("/f", "rb+", buffering=0) as f, f.pin(0, BLOCK) as sg:
            started = time.monotonic()
            with pytest.raises(OSError, match="pinned") as info:
                f.truncate(0)
            assert info.value.errno == errno.EBUSY
            assert time.monotonic() - started >= 0.2
            assert fs.stat("/f").st_size == 4 * BLOCK  # nothing changed
            with pytest.raises(BlockingIOError):
                f.truncate(0, nowait=True)
            with pytest.raises(BlockingIOError):
                f.fallocate(0, BLOCK, 0x02 | 0x01, nowait=True)  # punch hole
            with pytest.raises(OSError, match="pinned"):
                f.pwrite(b"y", 10)  # a rewrite of pinned bytes waits too
            assert f.pread(4, 0) == b"xxxx"
            assert sg.pinned
            f.pwrite(b"beyond", 3 * BLOCK)  # bytes nobody pinned: no wait
    assert fsck(dev).clean


def test_unlink_with_pins_frees_at_the_last_unpin(dev: SimulatedPmem) -> None:
    with daxfs.mount(dev) as fs:
        put(fs, "/keep", b"k")
        put(fs, "/f", b"u" * 8 * BLOCK)
        with fs.open("/f", "rb", buffering=0) as f:
            sg = f.pin(0, 8 * BLOCK)
        free = fs.statvfs("/").f_bfree
        fs.unlink("/f")
        assert fs.statvfs("/").f_bfree == free  # still pinned: not freed
        assert bytes(next(sg.views())[:1]) == b"u"
        sg.unpin()
        assert fs.statvfs("/").f_bfree == free + 8
    assert fsck(dev).clean


def test_a_crash_while_pinned(dev: SimulatedPmem) -> None:
    fs = daxfs.mount(dev)
    put(fs, "/f", b"c" * 8 * BLOCK)
    f = fs.open("/f", "rb", buffering=0)
    sg = f.pin(0, 8 * BLOCK)
    fs.unlink("/f")  # the inode waits on the orphan list for the pin
    assert sg.pinned
    for state in dev.crash_states(limit=4):
        with daxfs.mount(state) as after:  # pins are volatile: recovery frees the file
            assert after.listdir("/") == []
        report = fsck(state)
        assert report.clean, str(report)


# -- bad input ------------------------------------------------------------------------------


def test_bad_arguments(fs: daxfs.FileSystem) -> None:
    put(fs, "/f", b"x" * BLOCK)
    with fs.open("/f", "rb", buffering=0) as f:
        for offset, length in ((0, BLOCK + 1), (BLOCK, 1), (-1, 4), (0, -1), (1.5, 2), (0, None)):
            with pytest.raises(ValueError, match="pin") as info:
                f.pin(offset, length)  # type: ignore[arg-type]
            assert info.value.errno == errno.EINVAL  # type: ignore[attr-defined]
        sg = f.pin(0, 10)
        sg.unpin()
        with pytest.raises(ValueError, match="already unpinned"):
            sg.unpin()
        with pytest.raises(ValueError, match="unpinned SGList"):
            list(sg.views())
        with pytest.raises(ValueError, match="unpinned SGList"):
            sg.send(socket.socket())
        sg.close()  # harmless
    with pytest.raises(ValueError, match="closed file"):
        f.pin(0, 1)


# -- races ----------------------------------------------------------------------------------


def try_pin(f: daxfs.File, off: int, n: int) -> SGList | None:
    """Pin, or None if the range is being truncated or the file shrank since stat."""
    try:
        sg: SGList = f.pin(off, n)
    except BlockingIOError:
        return None  # a truncate is breaking this range
    except ValueError as exc:
        if "beyond the end" not in str(exc):
            raise
        return None
    return sg


def send_through(sg: SGList, a: socket.socket, b: socket.socket) -> bytes:
    out: list[bytes] = []
    reader = threading.Thread(target=lambda: out.append(drain(b, sg.length)))
    reader.start()
    sg.send(a)
    reader.join()
    return out[0]


def test_races_pins_against_truncate_punch_extend_rewrite(dev: SimulatedPmem) -> None:
    """Bounded stress: bytes that leave through an SGList equal the file at pin time."""
    names = [f"/r{i}" for i in range(3)]
    with daxfs.mount(dev, layout_timeout=PATIENCE) as fs:
        for name in names:
            put(fs, name, os.urandom(32 * BLOCK))
        stop = time.monotonic() + 3.0
        errors: list[BaseException] = []
        sent = [0]

        def pinner(seed: int) -> None:
            rng = random.Random(seed)
            a, b = socket.socketpair()
            try:
                while time.monotonic() < stop:
                    with fs.open(rng.choice(names), "rb", buffering=0) as f:
                        size = f.stat().st_size
                        if size < 2:
                            continue
                        off = rng.randrange(size - 1)
                        n = rng.randrange(1, min(size - off, 16 * BLOCK) + 1)
                        sg = try_pin(f, off, n)
                        if sg is None:
                            continue
                        with sg:
                            expected = f.pread(n, off)  # frozen while pinned
                            assert send_through(sg, a, b) == expected
                            digest = sg.update(hashlib.md5()).digest()
                            assert digest == hashlib.md5(expected).digest()
                            sent[0] += n
            except BaseException as exc:
                errors.append(exc)
            finally:
                a.close()
                b.close()

        def changer(seed: int) -> None:
            rng = random.Random(seed)
            try:
                while time.monotonic() < stop:
                    name = rng.choice(names)
                    with fs.open(name, "rb+", buffering=0) as f:
                        size = f.stat().st_size
                        what = rng.randrange(4)
                        if what == 0:
                            f.truncate(rng.randrange(size + 1))
                        elif what == 1 and size > BLOCK:
                            f.fallocate(rng.randrange(size - BLOCK), BLOCK, 0x03)
                        elif what == 2:
                            f.pwrite(os.urandom(rng.randrange(1, 3 * BLOCK)), size)
                        else:
                            f.pwrite(
                                os.urandom(rng.randrange(1, 2 * BLOCK)), rng.randrange(size + 1)
                            )
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=pinner, args=(i,)) for i in range(3)]
        threads += [threading.Thread(target=changer, args=(100 + i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors[:3]
        assert sent[0] > 0
    report = fsck(dev)
    assert report.clean, str(report)
