"""The lean direct reads (daxfs/fs/direct.py): ``DirectIO._read_mapped``'s common case
(the extent cache's written extent, the range lock granted at once) and
``read_many``'s per-batch steps (one alignment check, one write-back of the
span).  Each is checked against the general path it shortcuts, and each
fallback is exercised: a cold inode, an extent-cache miss, unwritten blocks,
a range a write holds, the end of file.
"""

from __future__ import annotations

import errno
import random
from collections.abc import Callable, Iterator
from types import SimpleNamespace

import pytest

from daxfs.fs.direct import DirectIO, aligned_buffer
from daxfs.fs.filesystem import FileSystem
from daxfs.fs.layout import BLOCK_SIZE
from daxfs.fs.mount import mkfs, mount
from daxfs.testing.simblock import SimulatedBlockDevice

SIZE = 16 << 20


@pytest.fixture
def fs() -> Iterator[FileSystem]:
    disk = SimulatedBlockDevice(SIZE)
    mkfs(disk)
    with mount(disk) as fs:
        yield fs


def recording(name: str, real: Callable[..., object], calls: list[object]) -> SimpleNamespace:
    """A stand-in whose method ``name`` calls ``real`` and records what it returned."""

    def call(*args: object) -> object:
        got = real(*args)
        calls.append(got)
        return got

    return SimpleNamespace(**{name: call})


def pattern(n: int, seed: int) -> bytes:
    return bytes((i * 11 + seed) & 0xFF for i in range(n))


def write(f: object, data: bytes, pos: int) -> None:
    buf = aligned_buffer(len(data))
    buf[:] = data
    assert f.pwrite(buf, pos) == len(data)  # type: ignore[attr-defined]


@pytest.fixture
def general_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Positions of the reads that fell back to ``_read_mapped_general``."""
    calls: list[int] = []
    real = DirectIO._read_mapped_general

    def counted(self: DirectIO, inode: object, pos: int, buffer: object) -> int | None:
        calls.append(pos)
        return real(self, inode, pos, buffer)  # type: ignore[arg-type]

    monkeypatch.setattr(DirectIO, "_read_mapped_general", counted)
    return calls


def test_the_lean_read_is_taken_and_agrees_with_a_model(
    fs: FileSystem, general_calls: list[int]
) -> None:
    model = bytearray()
    with fs.open("/f", "wb+", buffering=0, direct=True) as f:
        data = pattern(16 * BLOCK_SIZE, 1)
        write(f, data, 0)
        model[:] = data
        first = aligned_buffer(BLOCK_SIZE)
        f.preadinto(first, 0)  # the extent cache now holds the file's extent
        general_calls.clear()
        rng = random.Random(5)
        for _ in range(200):
            n = rng.choice([512, BLOCK_SIZE, 3 * BLOCK_SIZE])
            pos = rng.randrange(0, len(model) - n + 1) // 512 * 512
            out = aligned_buffer(n)
            assert f.preadinto(out, pos) == n
            assert bytes(out) == bytes(model[pos : pos + n])
        assert general_calls == []  # every one the lean way


def test_the_lean_read_at_the_end_of_file_clamps_and_zeroes(
    fs: FileSystem, general_calls: list[int]
) -> None:
    with fs.open("/f", "wb+", buffering=0, direct=True) as f:
        data = pattern(4 * BLOCK_SIZE, 2)
        write(f, data, 0)
        f.truncate(3 * BLOCK_SIZE + 100)
        f.preadinto(aligned_buffer(BLOCK_SIZE), 0)
        general_calls.clear()
        out = aligned_buffer(2 * BLOCK_SIZE)
        out[:] = b"\xee" * len(out)
        assert f.preadinto(out, 2 * BLOCK_SIZE) == BLOCK_SIZE + 100
        assert bytes(out[: BLOCK_SIZE + 100]) == data[2 * BLOCK_SIZE : 3 * BLOCK_SIZE + 100]
        assert bytes(out[BLOCK_SIZE + 100 : BLOCK_SIZE + 512]) == bytes(412)  # the sector
        assert general_calls == []
        assert f.preadinto(out, 4 * BLOCK_SIZE) == 0  # past the end: the general path
        assert general_calls == [4 * BLOCK_SIZE]


def test_every_fallback_of_the_lean_read_gives_the_same_bytes(
    fs: FileSystem, general_calls: list[int]
) -> None:
    """A cold inode (no range lock yet), an extent-cache miss (another extent),
    unwritten blocks, a hole: each goes ``_read_mapped_general`` (and from there,
    where it must, the request path) with the right bytes."""
    with fs.open("/f", "wb+", buffering=0) as b:  # buffered: no range lock made
        b.write(pattern(2 * BLOCK_SIZE, 3))
    with fs.open("/f", "rb+", buffering=0, direct=True) as f:
        out = aligned_buffer(BLOCK_SIZE)
        assert f.preadinto(out, 0) == BLOCK_SIZE  # cold: the general path
        assert bytes(out) == pattern(2 * BLOCK_SIZE, 3)[:BLOCK_SIZE]
        assert general_calls == [0]
        write(f, pattern(BLOCK_SIZE, 4), 6 * BLOCK_SIZE)  # another extent, a hole between
        f.fallocate(8 * BLOCK_SIZE, BLOCK_SIZE, 0)
        f.truncate(10 * BLOCK_SIZE)
        cases = [
            (6 * BLOCK_SIZE, pattern(BLOCK_SIZE, 4)),  # a miss (the cache held block 0's)
            (BLOCK_SIZE, pattern(2 * BLOCK_SIZE, 3)[BLOCK_SIZE:]),  # a miss back
            (4 * BLOCK_SIZE, bytes(BLOCK_SIZE)),  # a hole
            (8 * BLOCK_SIZE, bytes(BLOCK_SIZE)),  # unwritten
        ]
        for pos, expect in cases:
            general_calls.clear()
            out[:] = b"\xee" * BLOCK_SIZE
            assert f.preadinto(out, pos) == BLOCK_SIZE
            assert bytes(out) == expect
            assert general_calls == [pos]
        general_calls.clear()
        assert f.preadinto(out, 0) == BLOCK_SIZE  # a miss (the cache held the unwritten)
        assert f.preadinto(out, 0) == BLOCK_SIZE  # a hit once cached again
        assert general_calls == [0]


def test_read_many_names_the_first_unaligned_item_before_any_io(fs: FileSystem) -> None:
    with fs.open("/f", "wb+", buffering=0, direct=True) as f:
        write(f, pattern(4 * BLOCK_SIZE, 5), 0)
        reads = fs.direct.stats["reads"]  # type: ignore[union-attr]
        odd = memoryview(aligned_buffer(2 * BLOCK_SIZE))[1 : 1 + BLOCK_SIZE]
        good = aligned_buffer(BLOCK_SIZE)
        for items, what in (
            ([(0, good), (100, aligned_buffer(BLOCK_SIZE))], "offset 100"),
            ([(0, good), (BLOCK_SIZE, aligned_buffer(100))], "length 100"),
            ([(0, good), (BLOCK_SIZE, odd)], "buffer address"),
        ):
            with pytest.raises(OSError, match=what) as info:
                f.preadinto_many(items)
            assert info.value.errno == errno.EINVAL
            assert "/f" in str(info.value)
        assert fs.direct.stats["reads"] == reads  # type: ignore[union-attr]
        got = f.preadinto_many([(BLOCK_SIZE, good), (3 * BLOCK_SIZE, aligned_buffer(512))])
        assert got == [BLOCK_SIZE, 512]
        assert bytes(good) == pattern(4 * BLOCK_SIZE, 5)[BLOCK_SIZE : 2 * BLOCK_SIZE]


def test_a_lean_read_in_flight_holds_its_range_against_truncate(
    general_calls: list[int],
) -> None:
    import threading

    from tests.fs.direct_devices import HeldBlockDevice

    disk = SimulatedBlockDevice(SIZE)
    mkfs(disk)
    dev = HeldBlockDevice(disk)
    with mount(dev, layout_timeout=0.2) as fs, fs.open("/f", "wb+", buffering=0, direct=True) as f:
        write(f, pattern(4 * BLOCK_SIZE, 6), 0)
        f.preadinto(aligned_buffer(BLOCK_SIZE), 0)
        general_calls.clear()
        out = aligned_buffer(2 * BLOCK_SIZE)
        dev.hold(out)
        got: list[int] = []
        reader = threading.Thread(target=lambda: got.append(f.preadinto(out, BLOCK_SIZE)))
        reader.start()
        dev.wait_held(1)
        with pytest.raises(OSError, match="in progress") as again:
            f.truncate(2 * BLOCK_SIZE, nowait=True)
        assert again.value.errno == errno.EAGAIN
        with pytest.raises(OSError, match="in progress") as busy:
            f.truncate(2 * BLOCK_SIZE)
        assert busy.value.errno == errno.EBUSY
        f.truncate(4 * BLOCK_SIZE, nowait=True)  # from the old end on: no overlap
        dev.release()
        reader.join(10)
        assert got == [2 * BLOCK_SIZE]
        assert bytes(out) == pattern(4 * BLOCK_SIZE, 6)[BLOCK_SIZE : 3 * BLOCK_SIZE]
        assert general_calls == []  # it was the lean read
        f.truncate(2 * BLOCK_SIZE, nowait=True)
    assert not dev.problems


def test_a_fallback_read_in_flight_does_not_hold_the_inode_lock(
    general_calls: list[int],
) -> None:
    """A read the lean path hands to the general path (here: the extent cache holds
    another extent) does its I/O without ``inode.lock``: a truncate of its range
    answers EAGAIN at once instead of waiting for the lock (found by
    test_direct.py's truncate test when the fallback ran inside the lock)."""
    import threading

    from tests.fs.direct_devices import HeldBlockDevice

    disk = SimulatedBlockDevice(SIZE)
    mkfs(disk)
    dev = HeldBlockDevice(disk)
    with mount(dev, layout_timeout=0.2) as fs, fs.open("/f", "wb+", buffering=0, direct=True) as f:
        write(f, pattern(2 * BLOCK_SIZE, 7), 0)
        write(f, pattern(BLOCK_SIZE, 8), 4 * BLOCK_SIZE)  # a second extent after a hole
        f.preadinto(aligned_buffer(BLOCK_SIZE), 4 * BLOCK_SIZE)  # the cache: the second
        general_calls.clear()
        out = aligned_buffer(BLOCK_SIZE)
        dev.hold(out)
        got: list[int] = []
        reader = threading.Thread(target=lambda: got.append(f.preadinto(out, 0)))
        reader.start()
        dev.wait_held(1)
        errors: list[BaseException] = []

        def truncate() -> None:
            try:
                f.truncate(0, nowait=True)
            except OSError as exc:
                errors.append(exc)

        truncater = threading.Thread(target=truncate)
        truncater.start()
        truncater.join(5)
        blocked = truncater.is_alive()  # waiting for inode.lock, which the read holds
        dev.release()
        reader.join(10)
        truncater.join(10)
        assert not blocked, "the read held inode.lock during its I/O"
        assert len(errors) == 1
        assert errors[0].errno == errno.EAGAIN  # type: ignore[attr-defined]
        assert got == [BLOCK_SIZE]
        assert bytes(out) == pattern(2 * BLOCK_SIZE, 7)[:BLOCK_SIZE]
        assert general_calls == [0]
    assert not dev.problems


def test_preadinto_raises_what_its_checks_say_after_the_fast_path_declines(
    fs: FileSystem,
) -> None:
    """File.preadinto tries the direct fast path before its own checks; bad arguments
    and a closed or write-only file still raise as before (the fast path declines)."""
    with fs.open("/f", "wb+", buffering=0, direct=True) as f:
        write(f, pattern(2 * BLOCK_SIZE, 9), 0)
        buf = aligned_buffer(BLOCK_SIZE)
        with pytest.raises(TypeError, match="writable"):
            f.preadinto(b"\0" * BLOCK_SIZE, 0)
        with pytest.raises(TypeError):
            f.preadinto(123, 0)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="integer"):
            f.preadinto(buf, "0")  # type: ignore[arg-type]
        with pytest.raises(OSError, match="negative") as neg:
            f.preadinto(buf, -BLOCK_SIZE)
        assert neg.value.errno == errno.EINVAL
        with pytest.raises(OSError, match="offset 100") as odd:
            f.preadinto(buf, 100)
        assert odd.value.errno == errno.EINVAL
        assert f.preadinto(buf, BLOCK_SIZE) == BLOCK_SIZE
    with pytest.raises(OSError, match="closed") as closed:
        f.preadinto(buf, 0)
    assert closed.value.errno == errno.EBADF
    with (
        fs.open("/f", "wb", buffering=0, direct=True) as w,
        pytest.raises(OSError, match="not open for reading") as wo,
    ):
        w.preadinto(buf, 0)
    assert wo.value.errno == errno.EBADF


# -- the lean read in C (daxfs/fs/_direct.c, DirectIO._lean_c) ------------------------------


@pytest.fixture
def uring_fs(tmp_path: object) -> Iterator[FileSystem]:
    """A mount of an image file through io_uring (the device's C fast path: the
    C lean read serves it)."""
    import os

    from daxfs.block import open_block
    from daxfs.block.uring import availability

    if availability():
        pytest.skip(f"io_uring unavailable: {availability()}")
    path = os.path.join(os.fspath(tmp_path), "img")  # type: ignore[call-overload]
    mkfs(path, size=SIZE, dax="never")
    with open_block(path, engine="io_uring") as bdev, mount(bdev, layout_timeout=0.2) as fs:
        if fs.direct._lean_c is None:  # type: ignore[union-attr]
            pytest.skip("daxfs.fs._direct not built")
        yield fs


def _prepared(fs: FileSystem) -> tuple[object, bytes]:
    """/f: 24 written blocks then the end of file 100 bytes into block 23, with
    garbage on the disk past it; the extent of block 0 cached."""
    f = fs.open("/f", "wb+", buffering=0, direct=True)
    data = pattern(24 * BLOCK_SIZE, 9)
    write(f, data, 0)
    f.truncate(23 * BLOCK_SIZE + 100)
    ext = next(iter(fs.maps.extents(fs.store, f.inode, 0)))  # type: ignore[attr-defined]
    cache = fs.direct.cache  # type: ignore[union-attr]
    block = aligned_buffer(BLOCK_SIZE)
    cache.readinto((ext.pblk + 23) * BLOCK_SIZE, block)
    block[100:] = b"\xab" * (BLOCK_SIZE - 100)
    cache.write((ext.pblk + 23) * BLOCK_SIZE, block)  # the cache and the disk
    f.preadinto(aligned_buffer(BLOCK_SIZE), 0)  # type: ignore[attr-defined]
    return f, data[: 23 * BLOCK_SIZE + 100]


def _reads(
    fs: FileSystem, f: object, reads: list[tuple[int, int, int]], submit: bool = False
) -> list[object]:
    """Each read's outcome (and the whole buffer after it), through ``preadinto`` or
    (``submit``) ``submit_read``."""
    import re

    out: list[object] = []
    for sector, n, shift in reads:
        raw = aligned_buffer(n + BLOCK_SIZE)
        raw[:] = b"\xee" * len(raw)
        view = memoryview(raw)[shift * 256 : shift * 256 + n]
        try:
            if submit:
                got = f.submit_read(sector * 512, view).result(10)  # type: ignore[attr-defined]
            else:
                got = f.preadinto(view, sector * 512)  # type: ignore[attr-defined]
            out.append(("ok", got))
        except (OSError, TypeError) as exc:
            out.append(("error", type(exc).__name__, re.sub(r"0x[0-9a-f]+", "ADDR", str(exc))))
        out.append(bytes(raw))
        view.release()
    return out


def test_the_c_lean_read_and_the_python_path_agree(uring_fs: FileSystem) -> None:
    """The same reads -- aligned or not, inside the file, across and past its end
    (garbage on the disk there) -- through the C lean read and with it off (the
    Python path, the reference): the same results, errors and bytes; the C one was
    taken for the plain reads and leaves no range locked."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    fs = uring_fs
    f, _ = _prepared(fs)
    dio = fs.direct
    assert dio is not None
    lean_c = dio._lean_c

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        st.lists(
            st.tuples(
                st.integers(0, 34 * 8),
                st.sampled_from([512, 1024, BLOCK_SIZE, 3 * BLOCK_SIZE, 100]),
                st.integers(0, 2),
            ),
            min_size=1,
            max_size=10,
        )
    )
    def check(reads: list[tuple[int, int, int]]) -> None:
        f.preadinto(aligned_buffer(BLOCK_SIZE), 0)  # type: ignore[attr-defined]
        dio._lean_c = lean_c
        with_c = _reads(fs, f, reads)
        f.preadinto(aligned_buffer(BLOCK_SIZE), 0)  # type: ignore[attr-defined]
        dio._lean_c = None
        try:
            reference = _reads(fs, f, reads)
        finally:
            dio._lean_c = lean_c
        assert with_c == reference
        assert not f.inode.layouts.ranges  # type: ignore[attr-defined]

    check()
    before = dio.stats["mapped_reads"]
    calls: list[object] = []
    real = lean_c.read  # type: ignore[union-attr]

    dio._lean_c = recording("read", real, calls)  # type: ignore[assignment]
    try:
        assert _reads(fs, f, [(8, BLOCK_SIZE, 0)])[0] == ("ok", BLOCK_SIZE)
    finally:
        dio._lean_c = lean_c
    assert calls == [BLOCK_SIZE]  # answered by C (an int), counted
    assert dio.stats["mapped_reads"] == before + 1
    submits = dio.stats["lean_submits"]
    assert _reads(fs, f, [(8, BLOCK_SIZE, 0)], submit=True)[0] == ("ok", BLOCK_SIZE)
    assert dio.stats["lean_submits"] == submits + 1  # the lean submit_read on io_uring
    f.close()  # type: ignore[attr-defined]


def test_the_c_lean_read_writes_back_dirty_cache_blocks_first(uring_fs: FileSystem) -> None:
    """Bytes only in the cache (flushed, not drained) of the read's range reach the
    disk before the C read: it reads them; a range held by a writer makes it decline
    (the Python path waits, or fails with the pins' rules)."""
    fs = uring_fs
    f, model = _prepared(fs)
    ext = next(iter(fs.maps.extents(fs.store, f.inode, 0)))  # type: ignore[attr-defined]
    cache = fs.direct.cache  # type: ignore[union-attr]
    addr = (ext.pblk + 5) * BLOCK_SIZE
    cache.write(addr, b"\x5a" * BLOCK_SIZE, drain=False)  # in the cache only, dirty
    assert any(s <= addr < e for s, e in cache.pending())
    out = aligned_buffer(2 * BLOCK_SIZE)
    assert f.preadinto(out, 4 * BLOCK_SIZE) == 2 * BLOCK_SIZE  # type: ignore[attr-defined]
    assert bytes(out) == model[4 * BLOCK_SIZE : 5 * BLOCK_SIZE] + b"\x5a" * BLOCK_SIZE
    assert not any(s <= addr < e for s, e in cache.pending())  # written back
    inode = f.inode  # type: ignore[attr-defined]
    with inode.lock:
        token = inode.layouts.ranges.lock(0, 8 * BLOCK_SIZE, True)  # a writer's range
    try:
        assert fs.direct._lean_c.read(inode, 0, aligned_buffer(BLOCK_SIZE)) is None  # type: ignore[union-attr]
        with pytest.raises(OSError, match="in progress"):
            f.truncate(0, nowait=True)  # type: ignore[attr-defined]
    finally:
        with inode.lock:
            inode.layouts.ranges.unlock(token)
    assert f.preadinto(out, 0) == 2 * BLOCK_SIZE  # type: ignore[attr-defined]
    assert bytes(out) == model[: 2 * BLOCK_SIZE]
    f.close()  # type: ignore[attr-defined]


def _submitted(fs: FileSystem, f: object, reads: list[tuple[int, int, int]]) -> list[object]:
    """The reads all submitted (``submit_read``) before any is waited for (without a
    timeout: the waiting thread leads on the BioRing); each outcome and buffer."""
    import re

    raws, views, futures = [], [], []
    for sector, n, shift in reads:
        raw = aligned_buffer(n + BLOCK_SIZE)
        raw[:] = b"\xee" * len(raw)
        view = memoryview(raw)[shift * 256 : shift * 256 + n]
        raws.append(raw)
        views.append(view)
        try:
            futures.append(f.submit_read(sector * 512, view))  # type: ignore[attr-defined]
        except (OSError, TypeError) as exc:
            futures.append(exc)
    out: list[object] = []
    for raw, view, future in zip(raws, views, futures, strict=True):
        try:
            if isinstance(future, BaseException):
                raise future
            out.append(("ok", future.result()))
        except (OSError, TypeError) as exc:
            out.append(("error", type(exc).__name__, re.sub(r"0x[0-9a-f]+", "ADDR", str(exc))))
        out.append(bytes(raw))
        view.release()
    return out


def test_the_c_lean_submit_read_and_the_python_steps_agree(uring_fs: FileSystem) -> None:
    """Windows of ``submit_read`` in flight together -- aligned or not, inside the
    file, across and past its end (garbage on the disk there), some blocks dirty in
    the cache -- through ``LeanRead.submit`` (its bios ended by ``_direct.lean_end``)
    and with it off (``submit_read_lean``'s Python steps, the reference): the same
    results, errors and bytes, no range left locked, no Future left in flight; the
    C one was taken for the plain reads."""
    from hypothesis import HealthCheck, example, given, settings
    from hypothesis import strategies as st

    fs = uring_fs
    f, _ = _prepared(fs)
    dio = fs.direct
    assert dio is not None
    lean = dio._lean_submit
    if lean is None:
        pytest.skip("no BioRing on this device")
    ext = next(iter(fs.maps.extents(fs.store, f.inode, 0)))  # type: ignore[attr-defined]

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        st.lists(
            st.tuples(
                st.integers(0, 34 * 8),
                st.sampled_from([512, 1024, BLOCK_SIZE, 3 * BLOCK_SIZE, 100]),
                st.integers(0, 2),
            ),
            min_size=1,
            max_size=12,
        ),
        st.integers(0, 23),
        st.integers(0, 255),
    )
    # (the end of file inside a read: the bytes after it on the disk are garbage)
    @example([(184, BLOCK_SIZE, 0), (176, 3 * BLOCK_SIZE, 2), (8, 512, 0)], 23, 0)
    def check(reads: list[tuple[int, int, int]], dirty: int, byte: int) -> None:
        f.preadinto(aligned_buffer(BLOCK_SIZE), 0)  # type: ignore[attr-defined]
        outcomes = []
        for side in (lean, None):
            # a block of the file changed in the cache only (flushed, not drained): a
            # read of it must write it back first
            block = bytes([byte]) * BLOCK_SIZE if dirty < 23 else None
            if block is not None:
                dio.cache.write((ext.pblk + dirty) * BLOCK_SIZE, block, drain=False)
            dio._lean_submit = side
            try:
                outcomes.append(_submitted(fs, f, reads))
            finally:
                dio._lean_submit = lean
        assert outcomes[0] == outcomes[1]
        assert not f.inode.layouts.ranges  # type: ignore[attr-defined]
        assert not f._inflight  # type: ignore[attr-defined]

    check()
    submits = dio.stats["lean_submits"]
    calls: list[object] = []
    real = lean.submit

    dio._lean_submit = recording("submit", real, calls)  # type: ignore[assignment]
    try:
        assert _submitted(fs, f, [(8, BLOCK_SIZE, 0)])[0] == ("ok", BLOCK_SIZE)
    finally:
        dio._lean_submit = lean
    assert len(calls) == 1
    assert calls[0] is not None  # answered by C (a Future)
    assert dio.stats["lean_submits"] == submits + 1
    f.close()  # type: ignore[attr-defined]
