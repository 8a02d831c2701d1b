"""The page cache atop direct I/O (issue 10, section 4): re-reads and the memory bound.

    python bench/pagecache.py [--quick] [--plain] [--dir DIR]

Rows:
  - 4 KiB buffered re-read of cached data, page cache: ``AddressSpace.read``
    of 4 KiB (bytes returned, as os.pread) at random 4 KiB-aligned offsets of a 32 MiB range
    already cached (daxfs.pagecache over an O_DIRECT ``FileBlockDevice``),
    against ``os.pread`` of 4 KiB of a file on the same disk whose pages are in
    the kernel's page cache; goal >= 0.5x;
  - the same through the filesystem: ``File.pread`` of a file on a daxfs image
    on the disk mounted with ``cache_size="64M"`` (dax="never": the image
    through the block layer), against the same ``os.pread`` (informational);
  - 1 GiB sequential buffered read through a 64 MiB cache (its misses and
    readahead are O_DIRECT bios), against fio's sequential 1 MiB direct reads
    of the same file (informational: the cost of the cache over direct I/O);
  - page cache memory under a 1 GiB sequential read with a 64 MiB limit:
    ``AddressSpace.readinto`` of 1 MiB pieces of a 1 GiB file; the cache's own
    count (its peak of resident pages) against the limit (goal <= 1x), and
    the process's RSS growth over the read (``VmRSS`` of /proc/self/status,
    after minus before: the arena's touched pages plus the folios' Python
    objects) against the limit plus a fixed 16 MiB (goal <= 1x of that).
Timed sides are interleaved (daxfs, anchor, again ``passes`` times) and
medians kept (bench/common.py).  The files are on the disk (bench/block.py's
``bench_dir``), written in full first, removed afterwards.
"""

from __future__ import annotations

import os
import random
import sys
import tempfile
import time
from collections.abc import Callable, Sequence

from block import bench_dir, bench_file, parse, run_fio
from common import (
    FULL,
    MIB,
    QUICK,
    Goal,
    Row,
    Timing,
    Unavailable,
    median_ns_per_op_interleaved,
)
from common import print_table as print_results

from daxfs.block import open_block
from daxfs.fs.mount import mkfs, mount
from daxfs.pagecache import BlockBacking, PageCache

BS = 4096
HOT = 32 * MIB
LIMIT = 64 * MIB
STREAM = 1024 * MIB
OVERHEAD = 16 * MIB


def rss() -> int:
    """Resident bytes of this process now (VmRSS)."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise Unavailable("no VmRSS in /proc/self/status")


def offsets(n: int = 1 << 14) -> list[int]:
    rng = random.Random(1)
    return [rng.randrange(HOT // BS) * BS for _ in range(n)]


def pread_loop(fd: int) -> Callable[[int], None]:
    offs = offsets()

    def loop(n: int) -> None:
        for i in range(n):
            os.pread(fd, BS, offs[i & 0x3FFF])

    return loop


def reread(path: str, timing: Timing) -> tuple[float, float]:
    """ns per 4 KiB re-read: (page cache, os.pread)."""
    dev = open_block(path)
    pool = PageCache(LIMIT)
    fd = os.open(path, os.O_RDONLY)
    try:
        space = pool.space(BlockBacking(dev))
        space.readinto(0, bytearray(HOT))  # cache the range
        os.pread(fd, HOT, 0)  # and the kernel's pages
        offs = offsets()

        read = space.read

        def cached(n: int) -> None:
            for i in range(n):
                read(offs[i & 0x3FFF], BS)

        a, b = median_ns_per_op_interleaved([cached, pread_loop(fd)], timing=timing)
        assert space.pool.stats.misses <= HOT // BS, "the re-reads missed"
        return a, b
    finally:
        os.close(fd)
        pool.close()
        dev.close()


def fs_reread(directory: str, path: str, timing: Timing) -> float:
    """ns per 4 KiB re-read of a file on a daxfs image mounted with cache_size."""
    fd, image = tempfile.mkstemp(dir=directory, suffix=".daxfs")
    os.close(fd)
    try:
        mkfs(image, 128 * MIB)
        with mount(image, dax="never", cache_size="64M") as fs:
            with fs.open("/hot", "wb") as f:
                f.write(os.urandom(HOT))
            f = fs.open("/hot", "rb", buffering=0)
            try:
                f.read()  # cached now
                offs = offsets()
                pread = f.pread

                def loop(n: int) -> None:
                    for i in range(n):
                        pread(BS, offs[i & 0x3FFF])

                anchor_fd = os.open(path, os.O_RDONLY)
                try:
                    os.pread(anchor_fd, HOT, 0)
                    a, _ = median_ns_per_op_interleaved(
                        [loop, pread_loop(anchor_fd)], timing=timing
                    )
                finally:
                    os.close(anchor_fd)
                return a
            finally:
                f.close()
    finally:
        os.unlink(image)


def stream(path: str) -> tuple[int, int, float]:
    """A 1 GiB sequential read through a 64 MiB cache: (the cache's peak, RSS growth,
    bytes/s)."""
    dev = open_block(path)
    before = rss()
    pool = PageCache(LIMIT)
    try:
        space = pool.space(BlockBacking(dev))
        buf = bytearray(MIB)
        pos = 0
        start = time.perf_counter()
        while pos < STREAM:
            pos += space.readinto(pos, buf)
        rate = STREAM / (time.perf_counter() - start)
        grown = rss() - before
        return pool.stats.peak * BS, grown, rate
    finally:
        pool.close()
        dev.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    timing = QUICK if args.quick else FULL
    try:
        directory = bench_dir(args.dir)
    except Unavailable as exc:
        print(f"bench/pagecache.py: skipped: {exc}")
        return 0
    with bench_file(directory, STREAM) as path:
        cache_ns, pread_ns = reread(str(path), timing)
        fs_ns = fs_reread(str(directory), str(path), timing)
        peak, grown, rate = stream(str(path))
        try:  # fio's sequential 1 MiB direct reads of the same file: IOPS = MiB/s
            fio: float | None = run_fio(path, STREAM, "read", MIB, 1, 2.0 if args.quick else 5.0)
        except Unavailable:
            fio = None
    table = [
        Row(
            "4 KiB buffered re-read of cached data",
            1e9 / cache_ns,
            1e9 / pread_ns,
            "op/s",
            Goal(">=", 0.5),
        ),
        Row("4 KiB re-read, daxfs file, cache_size=64M", 1e9 / fs_ns, 1e9 / pread_ns, "op/s"),
        Row("1 GiB sequential buffered read, 64 MiB cache", rate / MIB, fio, "MiB/s"),
        Row(
            "page cache peak, 1 GiB read, 64 MiB limit",
            peak / MIB,
            LIMIT / MIB,
            "MiB",
            Goal("<=", 1.0),
        ),
        Row(
            "RSS growth, same read (limit + 16 MiB)",
            grown / MIB,
            (LIMIT + OVERHEAD) / MIB,
            "MiB",
            Goal("<=", 1.0),
        ),
    ]
    notes = [
        f"file: {path} (1 GiB on the disk); page cache over open_block (O_DIRECT bios); "
        "anchor: os.pread of the same file, its pages in the kernel's page cache",
        "memory: the cache's own count (peak resident pages) and VmRSS after - before",
        "sequential read: 1 MiB reads through the cache (readahead up to 256 KiB, one "
        "bio at a time, waited) vs fio --rw=read --bs=1M --direct=1 --iodepth=1",
    ]
    print_results("page cache atop direct I/O", table, notes=notes, plain=args.plain)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
