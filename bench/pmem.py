"""Device-layer benchmark: daxfs.pmem against PMDK's libpmem2, on one /dev/shm file.

    python bench/pmem.py [--quick] [--plain]

One run creates a file in /dev/shm (1 GiB + 1 MiB; 64 MiB + 1 MiB with
--quick), times libpmem2 on it through bench/pmem2_bench.c (mapped at
CACHE_LINE granularity, forced with PMEM2_FORCE_GRANULARITY=CACHE_LINE since
tmpfs is not DAX), then times daxfs on it (open_device(path, persist="cpu")),
and deletes it.  Both sides do the same operations on the same offsets:

    persist 64 B     dirty one byte of a line, then persist the line
                     (daxfs dev.persist / libpmem2 persist_fn); goal <= 2x
    write 64 B,      copy + persist (dev.write / memcpy_fn(..., 0));
    write 4 KiB      goal <= 3x
    sequential       2 MiB pieces over 1 GiB, GiB/s; goal >= 0.8x
    msync path       dev.write of 4 KiB on a file on a disk filesystem
                     (persist="auto": msync), against the cpu path's 4 KiB
                     write: what emulation costs; informational

The small operations cycle through the lines (4 KiB blocks) of the last
1 MiB; the sequential writes cover the first 1 GiB.  Times are medians of
batches (bench/common.py); nothing is asserted.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from itertools import cycle, islice
from pathlib import Path

from common import (
    BENCH_DIR,
    BUILD_DIR,
    FULL,
    GIB,
    KIB,
    MIB,
    QUICK,
    Goal,
    Row,
    Timing,
    Unavailable,
    build_c,
    cpu_model,
    fs_type,
    median_gib_per_s,
    median_ns_per_op,
    parse_args,
    print_table,
    run_c,
)

from daxfs.pmem import PmemDevice, flush_instruction, open_device

SHM = Path("/dev/shm")
LINE = 64
SMALL_SIZES = (64, 4 * KIB)
#: directories tried, in order, for the msync device; tmpfs would not show msync's cost
MSYNC_DIRS = (BUILD_DIR, Path("/var/tmp"))
MEMORY_FILESYSTEMS = ("tmpfs", "ramfs", "devtmpfs")


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where on the file each benchmark works."""

    seq_size: int  # sequential writes cover [0, seq_size)
    piece: int  # bytes per sequential write
    hot_offset: int  # small operations cycle through [hot_offset, hot_offset + hot_size)
    hot_size: int

    @property
    def file_size(self) -> int:
        return self.hot_offset + self.hot_size

    def offsets(self, length: int) -> Iterator[int]:
        """Endless offsets for operations of ``length`` bytes, as pmem2_bench.c visits them."""
        step = max(length, LINE)
        last = self.hot_size - length
        return cycle(range(self.hot_offset, self.hot_offset + last + 1, step))


FULL_LAYOUT = Layout(seq_size=GIB, piece=2 * MIB, hot_offset=GIB, hot_size=MIB)
QUICK_LAYOUT = Layout(seq_size=64 * MIB, piece=2 * MIB, hot_offset=64 * MIB, hot_size=MIB)


def pattern(size: int) -> bytes:
    """``size`` bytes of a non-zero pattern (the C side uses a similar one)."""
    return (bytes((i * 131 + 7) & 0xFF for i in range(256)) * (size // 256 + 1))[:size]


# -- libpmem2 ----------------------------------------------------------------


def pmem2_env() -> dict[str, str]:
    """Environment for pmem2_bench: CACHE_LINE on tmpfs, same flush instruction as daxfs."""
    env = {"PMEM2_FORCE_GRANULARITY": "CACHE_LINE"}
    instruction, _ = flush_instruction()
    if instruction in ("clflushopt", "clflush"):
        env["PMEM_NO_CLWB"] = "1"
    if instruction == "clflush":
        env["PMEM_NO_CLFLUSHOPT"] = "1"
    return env


def measure_libpmem2(path: Path, layout: Layout, timing: Timing) -> dict[str, str]:
    """Run pmem2_bench.c on ``path``; raises Unavailable without gcc or libpmem2."""
    binary = build_c(
        BENCH_DIR / "pmem2_bench.c",
        libs=["pmem2"],
        hint="install libpmem2-dev, e.g. apt-get install -y libpmem2-dev",
    )
    args = [
        f"--hot-offset={layout.hot_offset}",
        f"--hot-size={layout.hot_size}",
        f"--seq-size={layout.seq_size}",
        f"--piece={layout.piece}",
        f"--batch-ns={timing.batch_ns}",
        f"--batches={timing.batches}",
        f"--passes={timing.passes}",
        str(path),
    ]
    return run_c(binary, args, env=pmem2_env())


# -- daxfs -------------------------------------------------------------------


def persist_loop(
    dev: PmemDevice, view: memoryview, offsets: Iterator[int]
) -> Callable[[int], None]:
    persist = dev.persist

    def loop(n: int) -> None:
        for off in islice(offsets, n):
            view[off] = 1  # dirty the line
            persist(off, LINE)

    return loop


def write_loop(dev: PmemDevice, data: bytes, offsets: Iterator[int]) -> Callable[[int], None]:
    write = dev.write

    def loop(n: int) -> None:
        for off in islice(offsets, n):
            write(off, data)

    return loop


def sequential_pass(dev: PmemDevice, layout: Layout) -> Callable[[], int]:
    write = dev.write
    piece = pattern(layout.piece)
    offsets = range(0, layout.seq_size - layout.piece + 1, layout.piece)

    def one_pass() -> int:
        for off in offsets:
            write(off, piece)
        return len(offsets) * layout.piece

    return one_pass


def measure_daxfs(path: Path, layout: Layout, timing: Timing) -> tuple[dict[str, float], str]:
    """daxfs results on ``path`` (persist="cpu"), and a description of the device."""
    results: dict[str, float] = {}
    with open_device(path, persist="cpu") as dev:
        with dev.direct_access(0, dev.size) as view:
            loop = persist_loop(dev, view, layout.offsets(LINE))
            results["persist_64"] = median_ns_per_op(loop, timing=timing)
        for size in SMALL_SIZES:
            loop = write_loop(dev, pattern(size), layout.offsets(size))
            results[f"write_{size}"] = median_ns_per_op(loop, timing=timing)
        results["seq_write"] = median_gib_per_s(sequential_pass(dev, layout), timing=timing)
        described = f"{dev.granularity.name}, {dev.flush_instruction or dev.persist_method}"
    return results, described


def msync_dir() -> Path:
    """A directory on a disk filesystem, for the msync device."""
    for directory in MSYNC_DIRS:
        try:
            directory.mkdir(exist_ok=True)
        except OSError:
            continue
        if fs_type(directory) not in MEMORY_FILESYSTEMS and os.access(directory, os.W_OK):
            return directory
    tried = ", ".join(str(d) for d in MSYNC_DIRS)
    raise Unavailable(f"no writable directory on a disk filesystem (tried {tried})")


def measure_msync(layout: Layout, timing: Timing) -> tuple[float, str]:
    """ns per 4 KiB dev.write with the default persist (msync on a non-DAX file)."""
    directory = msync_dir()
    fd, name = tempfile.mkstemp(prefix="daxfs-bench-", suffix=".pmem", dir=directory)
    try:
        # real blocks, synced, so the timed msyncs overwrite rather than allocate
        os.write(fd, pattern(layout.hot_size))
        os.fsync(fd)
        os.close(fd)
        size = 4 * KIB
        with open_device(name) as dev:
            local = Layout(seq_size=0, piece=size, hot_offset=0, hot_size=layout.hot_size)
            loop = write_loop(dev, pattern(size), local.offsets(size))
            ns = median_ns_per_op(loop, timing=timing)
            where = f"{fs_type(directory)} at {directory}, persist via {dev.persist_method}"
    finally:
        os.unlink(name)
    return ns, where


# -- main --------------------------------------------------------------------


def shm_file(size: int, *, written: bool = False, spare: int = 0) -> Path:
    """Create a sparse ``size``-byte file in /dev/shm, or with ``written`` one whose
    every page is written once (a sparse tmpfs file's first touch of a page faults in
    a zeroed one: a C program mapping it then times no faults); ``spare`` more bytes
    must be free."""
    if not SHM.is_dir():
        raise Unavailable(f"{SHM} does not exist")
    st = os.statvfs(SHM)
    if st.f_bavail * st.f_frsize < size + spare:
        raise Unavailable(f"{SHM} has less than the {size + spare} bytes free this benchmark needs")
    fd, name = tempfile.mkstemp(prefix="daxfs-bench-", suffix=".pmem", dir=SHM)
    try:
        os.ftruncate(fd, size)
        if written:
            chunk = memoryview(bytes(64 * MIB))
            for off in range(0, size, len(chunk)):
                os.pwrite(fd, chunk[: size - off], off)
    except OSError:
        os.unlink(name)
        raise
    finally:
        os.close(fd)
    return Path(name)


def size_name(nbytes: int) -> str:
    for unit, name in ((GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB")):
        if nbytes >= unit and nbytes % unit == 0:
            return f"{nbytes // unit} {name}"
    return f"{nbytes} B"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv, "daxfs device layer against libpmem2 (see bench/pmem.py)")
    timing, layout = (QUICK, QUICK_LAYOUT) if args.quick else (FULL, FULL_LAYOUT)
    notes: list[str] = []
    try:
        path = shm_file(layout.file_size)
    except Unavailable as exc:
        print(f"pmem benchmark skipped: {exc}")
        return 0
    try:
        try:
            anchor = measure_libpmem2(path, layout, timing)
            notes.append(
                f"anchor: libpmem2 at {anchor.get('granularity', '?')} granularity "
                "(PMEM2_FORCE_GRANULARITY=CACHE_LINE), same file, same offsets"
            )
        except Unavailable as exc:
            anchor = {}
            notes.append(f"anchor: libpmem2 skipped: {exc}")
        daxfs, described = measure_daxfs(path, layout, timing)
    finally:
        path.unlink()
    try:
        msync_ns: float | None
        msync_ns, where = measure_msync(layout, timing)
        notes.append(f"msync row: {where}; its anchor is the cpu 4 KiB write above")
    except (Unavailable, OSError) as exc:
        msync_ns = None
        notes.append(f"msync row skipped: {exc}")

    def anchor_value(key: str) -> float | None:
        return float(anchor[key]) if key in anchor else None

    seq = f"sequential write, {size_name(layout.piece)} pieces over {size_name(layout.seq_size)}"
    specs = [  # name, daxfs key, pmem2_bench key, unit, goal
        ("persist 64 B (line dirtied first)", "persist_64", "persist_64_ns", "ns", Goal("<=", 2)),
        ("write 64 B (copy + persist)", "write_64", "memcpy_persist_64_ns", "ns", Goal("<=", 3)),
        (
            "write 4 KiB (copy + persist)",
            "write_4096",
            "memcpy_persist_4096_ns",
            "ns",
            Goal("<=", 3),
        ),
        (seq, "seq_write", "seq_write_gib_s", "GiB/s", Goal(">=", 0.8)),
    ]
    rows = [
        Row(name, daxfs[key], anchor_value(anchor_key), unit, goal)
        for name, key, anchor_key, unit, goal in specs
    ]
    if msync_ns is not None:
        rows.append(
            Row("write 4 KiB, msync (disk file) vs cpu", msync_ns, daxfs["write_4096"], "ns")
        )
    mode = "quick" if args.quick else "full"
    notes.insert(0, f"daxfs: open_device({path.name}, persist='cpu') on {SHM}: {described}")
    title = f"daxfs.pmem vs libpmem2 ({mode}, {cpu_model()})"
    print_table(title, rows, notes=notes, plain=args.plain)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
