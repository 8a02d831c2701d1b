"""The page cache atop direct I/O (issue 10, section 4): re-reads and the memory bound.

    python bench/pagecache.py [--quick] [--plain] [--dir DIR]

Rows (a daxfs file: an image on the disk mounted with ``dax="never"`` and
``cache_size="64M"``, its file data in the file's address space, whose misses
are the file's direct I/O -- daxfs.fs.filecache):
  - 4 KiB buffered re-read of cached data, daxfs file: ``File.pread`` of 4 KiB
    at random 4 KiB-aligned offsets of a 32 MiB file already cached, against
    ``os.pread`` of 4 KiB of a file on the same disk whose pages are in the
    kernel's page cache; goal >= 0.5x;
  - the same, the page cache alone: ``AddressSpace.read`` over an O_DIRECT
    ``FileBlockDevice`` (no filesystem; informational);
  - 1 GiB sequential buffered read, daxfs file, 64 MiB cache: ``File.readinto``
    of 1 MiB pieces of a 1 GiB file after a remount (cold), against fio's
    sequential 1 MiB direct reads of a 1 GiB file (informational: the cost of
    the cache over direct I/O);
  - page cache memory under that read: the files' pool's own count (its peak of
    resident pages) against the limit (goal <= 1x), and the process's RSS
    growth over the read (``VmRSS`` of /proc/self/status, after minus before:
    the arena's touched pages, the folios' Python objects, the metadata the
    mount loads and the device's own fixed 64 KiB page cache) against the
    limit plus a fixed 16 MiB (goal <= 1x of that).
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


def fs_reread(directory: str, path: str, timing: Timing) -> tuple[float, float]:
    """ns per 4 KiB re-read: (a file on a daxfs image mounted with cache_size, os.pread
    of the anchor file, interleaved)."""
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
                    a, b = median_ns_per_op_interleaved(
                        [loop, pread_loop(anchor_fd)], timing=timing
                    )
                finally:
                    os.close(anchor_fd)
                misses = fs.device.files.stats.misses  # type: ignore[attr-defined]
                assert misses <= HOT // BS, "the re-reads missed"
                return a, b
            finally:
                f.close()
    finally:
        os.unlink(image)


def stream(directory: str) -> tuple[int, int, float]:
    """A 1 GiB sequential read of a daxfs file through a 64 MiB cache: (the files'
    pool's peak, RSS growth, bytes/s)."""
    from daxfs.fs.direct import aligned_buffer

    fd, image = tempfile.mkstemp(dir=directory, suffix=".daxfs")
    os.close(fd)
    try:
        mkfs(image, STREAM + 128 * MIB)
        with mount(image, dax="never") as fs:  # written by direct I/O: fast, no cache
            buf = aligned_buffer(4 * MIB)
            with fs.open("/stream", "wb", buffering=0, direct=True) as f:
                for pos in range(0, STREAM, len(buf)):
                    buf[:] = os.urandom(len(buf))
                    f.pwrite(buf, pos)
        before = rss()
        with mount(image, dax="never", cache_size=LIMIT) as fs:
            out = bytearray(MIB)
            with fs.open("/stream", "rb", buffering=0) as f:
                pos = 0
                start = time.perf_counter()
                while pos < STREAM:
                    pos += f.readinto(out)
                rate = STREAM / (time.perf_counter() - start)
                grown = rss() - before
                pool = fs.device.files  # type: ignore[attr-defined]
                return pool.stats.peak * BS, grown, rate
    finally:
        os.unlink(image)


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
        fs_ns, fs_pread_ns = fs_reread(str(directory), str(path), timing)
        peak, grown, rate = stream(str(directory))
        try:  # fio's sequential 1 MiB direct reads of the same file: IOPS = MiB/s
            fio: float | None = run_fio(path, STREAM, "read", MIB, 1, 2.0 if args.quick else 5.0)
        except Unavailable:
            fio = None
    table = [
        Row(
            "4 KiB buffered re-read, daxfs file, cache_size=64M",
            1e9 / fs_ns,
            1e9 / fs_pread_ns,
            "op/s",
            Goal(">=", 0.5),
        ),
        Row("4 KiB buffered re-read, the page cache alone", 1e9 / cache_ns, 1e9 / pread_ns, "op/s"),
        Row("1 GiB sequential buffered read, daxfs file, 64 MiB cache", rate / MIB, fio, "MiB/s"),
        Row(
            "page cache peak, same read, 64 MiB limit",
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
        f"daxfs image on the disk beside {path} (1 GiB, the anchors' file), mounted "
        "dax='never' (O_DIRECT io_uring bios) with cache_size=64M; anchor: os.pread of "
        "the 1 GiB file, its pages in the kernel's page cache",
        "memory: the files' pool's own count (peak resident pages) and VmRSS after - "
        "before the mount and read",
        "sequential read: 1 MiB File.readinto through the file's address space "
        "(asynchronous readahead: windows up to 2 MiB submitted ahead, not waited "
        "for) vs fio --rw=read --bs=1M --direct=1 --iodepth=1",
    ]
    print_results("page cache atop direct I/O", table, notes=notes, plain=args.plain)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
