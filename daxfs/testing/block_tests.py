"""BlockDeviceTests: the conformance suite for ``daxfs.block.BlockDevice`` backends.

Subclass it in a test module and provide a ``block_device`` fixture that
yields an open device of at least 1 MiB, zero-filled, with a logical block
size of 512; pytest collects the subclass.  Every backend runs the same
checks (zarr's ``StoreTests`` pattern), among them a Hypothesis test of random
batches of bios against a bytearray model.
"""

from __future__ import annotations

import errno
import itertools
import mmap
import random
import threading
from collections.abc import Iterable
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daxfs.block import SECTOR_SIZE, Bio, BioFlags, BioOp, BlockDevice, merge_bios

KIB = 1024
#: blocks of the region the random test works in
NBLOCKS = 64


class _Views:
    """A segment source as daxfs.mm's SGList is one: memory described by views()."""

    def __init__(self, views: list[memoryview]) -> None:
        self._views = views

    def views(self) -> Iterable[memoryview]:
        return iter(self._views)


def pattern(n: int, seed: int) -> bytes:
    """``n`` bytes that differ from other seeds' (never all zero)."""
    return (
        ((np.arange(n, dtype=np.uint32) * 7 + seed * 13 + 1) % 251 + 1).astype(np.uint8).tobytes()
    )


def cut(buf: memoryview, pieces: int, rng: random.Random) -> list[memoryview]:
    """``buf`` as ``pieces`` consecutive views (cut at arbitrary bytes)."""
    if pieces <= 1 or len(buf) < 2:
        return [buf]
    points = sorted(rng.sample(range(1, len(buf)), min(pieces - 1, len(buf) - 1)))
    edges = [0, *points, len(buf)]
    return [buf[a:b] for a, b in itertools.pairwise(edges)]


OPS = ["read", "write", "write_fua", "write_preflush", "zeroes", "discard", "flush"]
op_strategy = st.tuples(
    st.sampled_from(OPS), st.integers(0, NBLOCKS - 1), st.integers(1, 16), st.integers(1, 4)
)


class BlockDeviceTests:
    """Behaviour every block device must show; needs a ``block_device`` fixture."""

    def test_properties(self, block_device: BlockDevice) -> None:
        dev = block_device
        assert dev.size >= 1 << 20
        assert dev.size == dev.nr_sectors * SECTOR_SIZE
        assert dev.limits.logical_block_size == 512
        assert isinstance(dev.engine, str)
        assert dev.engine
        assert not dev.closed
        assert isinstance(dev.write_cache, bool)

    def test_write_then_read(self, block_device: BlockDevice) -> None:
        dev = block_device
        data = pattern(3 * 512, 1)
        assert dev.write(1024, data) == len(data)
        assert dev.read(1024, len(data)) == data
        buf = bytearray(512)
        assert dev.readinto(1536, buf) == 512
        assert bytes(buf) == data[512:1024]
        assert dev.read(0, 1024) == bytes(1024)

    def test_multi_segment_bio_and_segment_source(self, block_device: BlockDevice) -> None:
        dev = block_device
        data = bytearray(pattern(8 * KIB, 2))
        segs = cut(memoryview(data), 5, random.Random(3))
        write = Bio(BioOp.WRITE, 16, _Views(segs), flags=BioFlags.FUA)
        dev.submit_bio(write)
        assert write.wait() == len(data)
        target = bytearray(len(data))
        read = Bio(BioOp.READ, 16, cut(memoryview(target), 7, random.Random(4)))
        dev.submit_bio(read)
        assert read.wait() == len(data)
        assert target == data

    @settings(
        max_examples=25,
        deadline=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.differing_executors,  # each backend subclass runs it: intended
        ],
    )
    @given(
        batches=st.lists(st.lists(op_strategy, min_size=1, max_size=6), min_size=1, max_size=5),
        base_block=st.integers(0, 16),
    )
    def test_random_bios_match_a_model(
        self,
        block_device: BlockDevice,
        batches: list[list[tuple[str, int, int, int]]],
        base_block: int,
    ) -> None:
        """Batches of bios in flight together (disjoint ranges), against a bytearray."""
        dev = block_device
        bs = 512
        base = base_block * 16 * bs
        region = NBLOCKS * bs
        dev.write_zeroes(base, region + 16 * bs)
        model = bytearray(region + 16 * bs)
        rng = random.Random(len(batches))
        for b, batch in enumerate(batches):
            taken: list[tuple[int, int]] = []
            pending: list[tuple[Bio, bytearray | None, int]] = []
            for i, (kind, block, count, pieces) in enumerate(batch):
                start, end = block * bs, (block + count) * bs
                if kind != "flush":
                    if any(s < end and start < e for s, e in taken):
                        continue  # bios in flight together must not overlap: nothing orders them
                    taken.append((start, end))
                sector = (base + start) // SECTOR_SIZE
                target: bytearray | None = None
                if kind == "read":
                    target = bytearray(end - start)
                    bio = Bio(BioOp.READ, sector, cut(memoryview(target), pieces, rng))
                elif kind.startswith("write"):
                    data = pattern(end - start, b * 10 + i)
                    flags = {
                        "write": BioFlags.NONE,
                        "write_fua": BioFlags.FUA,
                        "write_preflush": BioFlags.PREFLUSH,
                    }[kind]
                    bio = Bio(BioOp.WRITE, sector, cut(memoryview(data), pieces, rng), flags=flags)
                    model[start:end] = data
                elif kind == "flush":
                    bio = Bio(BioOp.FLUSH)
                else:
                    op = BioOp.WRITE_ZEROES if kind == "zeroes" else BioOp.DISCARD
                    bio = Bio(op, sector, size=end - start)
                    model[start:end] = bytes(end - start)
                dev.submit_bio(bio)
                pending.append((bio, target, start))
            for bio, target, start in pending:
                assert bio.wait(timeout=30) == bio.size
                if target is not None:  # disjoint from the batch's writes: the model holds it
                    assert target == model[start : start + len(target)]
        assert dev.read(base, len(model)) == bytes(model)

    def test_errors_reach_the_future(self, block_device: BlockDevice) -> None:
        dev = block_device
        unaligned = Bio(BioOp.WRITE, 8, [b"x" * 100])
        dev.submit_bio(unaligned)
        exc = unaligned.future.exception()
        assert isinstance(exc, OSError)
        assert exc.errno == errno.EINVAL
        assert "logical block size" in str(exc)
        assert "512" in str(exc)
        assert unaligned.status is exc
        end = dev.nr_sectors
        beyond = Bio(BioOp.READ, end - 1, [bytearray(1024)])
        dev.submit_bio(beyond)
        with pytest.raises(OSError, match=rf"sectors \[{end - 1}, {end + 1}\)") as info:
            beyond.wait()
        assert info.value.errno == errno.EINVAL
        with pytest.raises(ValueError, match="sector size"):
            dev.read(100, 512)

    def test_bio_misuse_raises_at_once(self, block_device: BlockDevice) -> None:
        dev = block_device
        bio = Bio(BioOp.WRITE, 0, [bytes(512)])
        dev.submit_bio(bio)
        bio.wait()
        with pytest.raises(ValueError, match="submitted already") as info:
            dev.submit_bio(bio)
        assert getattr(info.value, "errno", None) == errno.EINVAL
        with pytest.raises(ValueError, match="read-only"):
            Bio(BioOp.READ, 0, [bytes(512)])
        with pytest.raises(ValueError, match="takes a Bio"):
            dev.submit_bio("not a bio")  # type: ignore[arg-type]

    def test_end_io_runs_once_after_the_future(self, block_device: BlockDevice) -> None:
        dev = block_device
        seen: list[tuple[bool, BaseException | None]] = []
        called = threading.Event()

        def end_io(bio: Bio) -> None:
            seen.append((bio.future.done(), bio.status))
            called.set()

        ok = Bio(BioOp.WRITE, 0, [bytes(1024)], end_io=end_io)
        dev.submit_bio(ok)
        assert called.wait(30)
        ok.wait()
        called.clear()
        bad = Bio(BioOp.WRITE, 1, [bytes(100)], end_io=end_io)
        dev.submit_bio(bad)
        assert called.wait(30)
        assert seen[0] == (True, None)
        assert seen[1][0] is True
        assert isinstance(seen[1][1], OSError)
        assert len(seen) == 2

    def test_zeroes_and_discard_read_as_zeros(self, block_device: BlockDevice) -> None:
        dev = block_device
        dev.write(0, pattern(16 * KIB, 5))
        dev.write_zeroes(1024, 2048, fua=True)
        dev.discard(8192, 4096)
        data = dev.read(0, 16 * KIB)
        expect = bytearray(pattern(16 * KIB, 5))
        expect[1024:3072] = bytes(2048)
        expect[8192:12288] = bytes(4096)
        assert data == bytes(expect)

    def test_flush_and_fua(self, block_device: BlockDevice) -> None:
        dev = block_device
        dev.write(0, pattern(512, 6), fua=True)
        dev.flush()
        bio = Bio(BioOp.WRITE, 1, [pattern(512, 7)], flags=BioFlags.PREFLUSH | BioFlags.FUA)
        dev.submit_bio(bio)
        assert bio.wait() == 512
        assert dev.read(0, 1024) == pattern(512, 6) + pattern(512, 7)
        fua_read = Bio(BioOp.READ, 0, [bytearray(512)], flags=BioFlags.FUA)
        dev.submit_bio(fua_read)
        with pytest.raises(ValueError, match="FUA applies to writes"):
            fua_read.wait()

    def test_large_bio_is_split(self, block_device: BlockDevice) -> None:
        dev = block_device
        size = min(dev.size, dev.limits.max_bytes * 2 + 4096)
        size -= size % 4096
        data = pattern(size, 8)
        assert dev.write(0, data) == size
        assert dev.read(0, size) == data
        if size > dev.limits.max_bytes:
            assert dev.statistics()["splits"] >= 2

    def test_plug_merges_adjacent_bios(self, block_device: BlockDevice) -> None:
        dev = block_device
        before = dev.statistics()["merges"]
        bios = [Bio(BioOp.WRITE, i, [pattern(512, i)]) for i in range(8)]
        with dev.plug():
            for bio in bios:
                dev.submit_bio(bio)
        assert [b.wait() for b in bios] == [512] * 8
        # as many merges as the limits allow (7 when they take 4 KiB in one request)
        twins = [Bio(BioOp.WRITE, i, [bytes(512)]) for i in range(8)]
        expect = 8 - len(merge_bios(twins, dev.limits))
        assert expect == 7 or dev.limits.max_bytes < 4096 or dev.limits.max_segments < 8
        assert dev.statistics()["merges"] - before == expect
        assert dev.read(0, 4096) == b"".join(pattern(512, i) for i in range(8))

    def test_threads_submit_concurrently(self, block_device: BlockDevice) -> None:
        dev = block_device
        errors: list[BaseException] = []

        def work(k: int) -> None:
            try:
                bios = []
                for i in range(32):
                    sector = (k * 64 + i) * 2
                    bio = Bio(BioOp.WRITE, sector, [pattern(1024, k * 100 + i)])
                    dev.submit_bio(bio)
                    bios.append(bio)
                for bio in bios:
                    bio.wait(30)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        for k in range(4):
            expect = b"".join(pattern(1024, k * 100 + i) for i in range(32))
            assert dev.read(k * 64 * 1024, 32 * 1024) == expect

    def test_close_waits_then_fails_new_bios(self, block_device: BlockDevice) -> None:
        dev = block_device
        bios = [Bio(BioOp.WRITE, i * 8, [pattern(4096, i)]) for i in range(16)]
        for bio in bios:
            dev.submit_bio(bio)
        dev.close()
        assert all(b.done for b in bios)
        assert [b.wait() for b in bios] == [4096] * 16
        dev.close()
        assert dev.closed
        late = Bio(BioOp.READ, 0, [bytearray(512)])
        dev.submit_bio(late)
        with pytest.raises(ValueError, match="closed") as info:
            late.wait()
        assert info.value.errno == errno.EBADF  # type: ignore[attr-defined]

    def test_readinto_many(self, block_device: BlockDevice) -> None:
        """Many reads in one call: each item as ``readinto`` would read it, with page-
        aligned buffers (io_uring's batch) and unaligned ones (the bios' path); a bad
        item fails the call with its own error once the others are read."""
        dev = block_device
        data = pattern(64 * KIB, 11)
        dev.write(0, data)
        rng = random.Random(5)
        for make in (lambda n: mmap.mmap(-1, n), bytearray):
            items: list[tuple[int, Any]] = []
            for _ in range(100):
                block = rng.randrange(120)
                items.append((block * 512, make(rng.choice((512, 1024, 4096)))))
            assert dev.readinto_many(items) == [len(b) for _, b in items]
            for offset, buf in items:
                assert bytes(buf) == data[offset : offset + len(buf)]
        assert dev.readinto_many([]) == []
        good = mmap.mmap(-1, 512)
        end = dev.size
        with pytest.raises(OSError, match=rf"sectors \[{end // 512 - 1}, ") as info:
            dev.readinto_many([(0, good), (end - 512, mmap.mmap(-1, 1024))])
        assert info.value.errno == errno.EINVAL
        assert bytes(good) == data[:512]
        with pytest.raises(ValueError, match="read-only"):
            dev.readinto_many([(0, bytes(512))])
        with pytest.raises(ValueError, match="sector size"):
            dev.readinto_many([(100, bytearray(512))])
        dev.close()
        with pytest.raises(OSError, match="closed") as closed:
            dev.readinto_many([(0, mmap.mmap(-1, 512))])
        assert closed.value.errno == errno.EBADF

    def test_close_while_plugged_fails_the_held_bios(self, block_device: BlockDevice) -> None:
        dev = block_device
        bio = Bio(BioOp.WRITE, 0, [pattern(512, 9)])
        with dev.plug():
            dev.submit_bio(bio)
            dev.close()  # nothing in flight: the bio is only held
        with pytest.raises(ValueError, match="closed"):
            bio.wait()

    def test_close_races_with_submitting_threads(self, block_device: BlockDevice) -> None:
        """Every bio ends, done or failed with EBADF; nothing else happens."""
        dev = block_device
        bios: list[Bio] = []
        started = threading.Barrier(3)

        def work(k: int) -> None:
            started.wait()
            for i in range(200):
                bio = Bio(BioOp.WRITE, (k * 256 + i % 256) * 2, [pattern(1024, i)])
                bios.append(bio)
                dev.submit_bio(bio)

        threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        started.wait()
        dev.close()
        for t in threads:
            t.join()
        assert len(bios) == 400
        for bio in bios:
            exc = bio.future.exception(timeout=30)
            if exc is not None:
                assert isinstance(exc, OSError)
                assert exc.errno == errno.EBADF
            else:
                assert bio.wait() == 1024
