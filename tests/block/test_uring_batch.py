"""io_uring batches (daxfs/block/uring.py ``run_batch``, _uring.c ``rw_batch``):
regressions found by review on 2026-11-28, each failing before its fix: an item
continued after a short transfer counts its bytes once (it counted the first part
twice, so a short read passed as whole); the engine's queue-depth bound is the
extension's."""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import pytest

from daxfs.block import open_block
from daxfs.block.engine import MAX_QUEUE_DEPTH
from daxfs.block.uring import availability
from daxfs.errors import IOFailure
from daxfs.testing.block_tests import pattern

MIB = 1 << 20


def test_an_io_uring_batch_item_continued_after_a_short_transfer_counts_once(
    tmp_path: Path,
) -> None:
    if availability():
        pytest.skip(f"io_uring unavailable: {availability()}")
    path = tmp_path / "d.img"
    with open_block(path, MIB, create=True, engine="io_uring") as dev:
        dev.write(0, pattern(MIB, 5))
        os.truncate(path, MIB - 4096)  # an 8 KiB read across the new end: 4 KiB, then 0
        buf = mmap.mmap(-1, 8192)
        with pytest.raises(IOFailure, match="short read: 4096 of 8192"):
            dev.readinto_many([(MIB - 8192, buf)])
        assert bytes(buf[:4096]) == pattern(MIB, 5)[MIB - 8192 : MIB - 4096]


def test_the_queue_depth_bound_is_the_io_uring_extensions() -> None:
    uring = pytest.importorskip("daxfs.block._uring")
    assert uring.MAX_ENTRIES == MAX_QUEUE_DEPTH
