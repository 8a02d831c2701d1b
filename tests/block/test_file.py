"""FileBlockDevice: O_DIRECT and its fallback, bounce buffers, kernel errors, open errors."""

from __future__ import annotations

import errno
import mmap
import os
from pathlib import Path
from typing import Any

import pytest

from daxfs.block import Bio, BioFlags, BioOp, IoEngine, IoKind, IoOp, open_block
from daxfs.block import engine as engine_mod
from daxfs.block import file as file_mod
from daxfs.block.engine import run_op
from daxfs.errors import InvalidArgument, IOFailure
from tests.block.loop import loop_device, needs_losetup

SIZE = 1 << 20


def test_o_direct_on_disk_and_bounce_for_unaligned_buffers(tmp_path: Path) -> None:
    with open_block(tmp_path / "d.img", SIZE, create=True) as dev:
        assert dev.direct
        assert dev.limits.dma_alignment == dev.limits.logical_block_size
        aligned = mmap.mmap(-1, 8192)
        aligned[:] = b"q" * 8192
        dev.write(0, aligned)
        assert dev.statistics()["bounced"] == 0
        unaligned = bytearray(b"r" * 8193)
        dev.write(8192, memoryview(unaligned)[1:])  # address off by one: copied
        assert dev.statistics()["bounced"] == 1
        out = bytearray(8193)
        dev.readinto(0, memoryview(out)[1:])
        assert out[1:] == b"q" * 8192
        assert dev.read(8192, 8192) == b"r" * 8192
    assert (tmp_path / "d.img").read_bytes()[:16384] == b"q" * 8192 + b"r" * 8192


def test_fallback_to_buffered_is_observable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = os.open

    def no_direct(path: Any, flags: int, mode: int = 0o777) -> int:
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, mode)

    monkeypatch.setattr(file_mod.os, "open", no_direct)
    with open_block(tmp_path / "d.img", SIZE, create=True) as dev:
        assert not dev.direct
        assert "buffered" in dev.engine
        assert "refuses O_DIRECT" in dev.engine_reason
        dev.write(0, b"x" * 512)
        assert dev.read(0, 512) == b"x" * 512
    with pytest.raises(InvalidArgument, match="refuses O_DIRECT"):
        open_block(tmp_path / "d.img", direct=True)


def test_fallback_when_the_probe_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(file_mod, "_probe_direct", lambda fd, length: None)
    with open_block(tmp_path / "d.img", SIZE, create=True) as dev:
        assert not dev.direct
        assert "every block size" in dev.engine_reason
    with pytest.raises(InvalidArgument, match="every block size"):
        open_block(tmp_path / "d.img", direct=True)


def test_engine_is_named_with_why() -> None:
    # io_uring and its fallback: tests/block/test_uring.py
    engine, why = engine_mod.choose_engine("threads", 4)
    assert engine.name == "threads"
    assert "engine='threads'" in why
    engine.close()
    with pytest.raises(InvalidArgument):
        engine_mod.choose_engine("aio", 4)
    with pytest.raises(InvalidArgument):
        engine_mod.ThreadPoolEngine(0)


class RecordingEngine(IoEngine):
    """Records the ops and runs them (or fails them with ``fail``)."""

    name = "recording"
    queue_depth = 1

    def __init__(self, fail: OSError | None = None) -> None:
        self.ops: list[IoOp] = []
        self.fail = fail

    def submit(self, op: IoOp, done: Any) -> None:
        self.ops.append(op)
        if self.fail is not None:
            done(self.fail)
        else:
            done(run_op(op))

    def close(self) -> None:
        pass


def _with_engine(path: Path, engine: IoEngine, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(file_mod, "choose_engine", lambda name, qd: (engine, "test engine"))
    return open_block(path, SIZE, create=True)


def test_ops_map_to_system_calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = RecordingEngine()
    with _with_engine(tmp_path / "d.img", engine, monkeypatch) as dev:
        dev.write(0, b"a" * 512, fua=True)
        dev.flush()
        dev.write_zeroes(0, 4096, fua=True)
        dev.discard(4096, 4096)
        dev.read(0, 512)
    kinds = [(op.kind, op.flags, op.datasync_after) for op in engine.ops]
    assert kinds == [
        (IoKind.WRITEV, os.RWF_DSYNC, False),
        (IoKind.FDATASYNC, 0, False),
        (IoKind.FALLOCATE, engine_mod.FALLOC_FL_ZERO_RANGE, True),
        (IoKind.FALLOCATE, engine_mod.FALLOC_FL_PUNCH_HOLE | engine_mod.FALLOC_FL_KEEP_SIZE, False),
        (IoKind.READV, 0, False),
    ]


def test_kernel_error_reaches_the_future_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = RecordingEngine(fail=OSError(errno.EIO, "Input/output error"))
    with _with_engine(tmp_path / "d.img", engine, monkeypatch) as dev:
        bio = Bio(BioOp.WRITE, 16, [bytes(1024)])
        dev.submit_bio(bio)
        with pytest.raises(
            IOFailure, match=r"write of 1024 bytes at sector 16 of .*d\.img"
        ) as info:
            bio.wait()
        assert isinstance(info.value.__cause__, OSError)
        engine.fail = OSError(errno.ENOSPC, "No space left on device")
        with pytest.raises(OSError, match="No space") as info:
            dev.write(0, bytes(512))
        assert info.value.errno == errno.ENOSPC


def test_fallocate_missing_writes_zeros(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_fallocate(fd: int, mode: int, offset: int, length: int) -> None:
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(engine_mod, "fallocate", no_fallocate)
    with open_block(tmp_path / "d.img", SIZE, create=True) as dev:
        dev.write(0, b"w" * 8192)
        dev.write_zeroes(0, 4096)
        dev.discard(4096, 2048)
        assert dev.read(0, 8192) == bytes(6144) + b"w" * 2048


def test_short_read_at_end_of_a_shrunk_file(tmp_path: Path) -> None:
    path = tmp_path / "d.img"
    with open_block(path, SIZE, create=True) as dev:
        os.truncate(path, SIZE - 4096)  # the file shrank under the device
        bio = Bio(BioOp.READ, (SIZE - 8192) // 512, [mmap.mmap(-1, 8192)])
        dev.submit_bio(bio)
        with pytest.raises(IOFailure, match="short read: 4096 of 8192 bytes"):
            bio.wait()


def test_readonly(tmp_path: Path) -> None:
    path = tmp_path / "d.img"
    open_block(path, SIZE, create=True).close()
    with open_block(path, readonly=True) as dev:
        assert dev.read(0, 512) == bytes(512)
        bio = Bio(BioOp.WRITE, 0, [bytes(512)], flags=BioFlags.FUA)
        dev.submit_bio(bio)
        with pytest.raises(OSError, match="read-only") as info:
            bio.wait()
        assert info.value.errno == errno.EROFS


def test_open_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        open_block(tmp_path / "missing.img")
    with pytest.raises(IsADirectoryError):
        open_block(tmp_path)
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(OSError, match="neither") as info:
        open_block(tmp_path / "fifo")
    assert info.value.errno == errno.ENODEV
    (tmp_path / "odd.img").write_bytes(bytes(1000))
    with pytest.raises(InvalidArgument, match="multiple of the logical block size"):
        open_block(tmp_path / "odd.img")
    with pytest.raises(InvalidArgument, match="fewer than"):
        open_block(tmp_path / "odd.img", 4096)
    with pytest.raises(InvalidArgument, match="size is required"):
        open_block(tmp_path / "new.img", create=True)
    with pytest.raises(InvalidArgument, match="read-only"):
        open_block(tmp_path / "new.img", 4096, create=True, readonly=True)
    with pytest.raises(InvalidArgument, match="engine must be"):
        open_block(tmp_path / "odd.img", engine="aio")


def test_open_errors_leak_no_descriptor(tmp_path: Path) -> None:
    (tmp_path / "odd.img").write_bytes(bytes(1000))
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(5):
        with pytest.raises(InvalidArgument, match="multiple"):
            open_block(tmp_path / "odd.img")
        with pytest.raises(InvalidArgument, match="fewer than"):
            open_block(tmp_path / "odd.img", 4096)
    assert len(os.listdir("/proc/self/fd")) == before


@needs_losetup
def test_loop_block_device(tmp_path: Path) -> None:
    image = tmp_path / "loop.img"
    image.write_bytes(bytes(SIZE))
    with loop_device(image) as loop, open_block(loop) as dev:
        assert dev.blockdev
        assert dev.size == SIZE
        assert dev.limits.logical_block_size == 512
        dev.write(4096, b"L" * 4096, fua=True)
        dev.write_zeroes(0, 1024)
        dev.flush()
        assert dev.read(4096, 4096) == b"L" * 4096
    assert image.read_bytes()[4096:8192] == b"L" * 4096
