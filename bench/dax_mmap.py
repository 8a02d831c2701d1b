"""DAX mmap benchmark (issue 4): daxfs.Mapping against numpy.memmap, libpmem2 and numpy.

    python bench/dax_mmap.py [--quick] [--plain]

One run measures, on this machine and in this process (sizes of the full run;
--quick uses 64 MiB instead of 1 GiB and fewer repetitions):

    msync, disk   a daxfs image on ext4 (bench/build/, or /var/tmp), mounted
                  with persist="auto" (msync path, page granular); a 1 GiB
                  file mapped writable, every page dirtied, then
                  Mapping.msync(offset, 4096) of one page.  Anchor: a 1 GiB
                  numpy.memmap of a plain file on the same filesystem, every
                  page dirtied, then memmap.flush() (msync of the whole map,
                  which is what numpy offers).  Goal: >= 200x the anchor's
                  rate.  For information: Python's mmap.flush(offset, 4096) of
                  the same page of the image file (mapped at the file's device
                  offset: the kernel's msync of that range without daxfs, the
                  floor), the same on the plain file (in the notes), and the
                  time and page faults of writing every page right after an
                  msync, through the daxfs Mapping and through Python's mmap
                  of the same bytes.  The calls take turns, round by round, so
                  a drift of the disk's flush latency falls on all; only one
                  of the two files is dirty at a time (the kernel's background
                  write-back starts at about 2 GiB here); all pages are
                  re-dirtied before each timed call, and only the msync/flush
                  call is timed.
    msync, cpu    a daxfs image on /dev/shm, persist="cpu": dirty one byte of a
                  line through the mapping, then Mapping.msync(line, 64),
                  cycling through the lines of 1 MiB.  Anchor: libpmem2's
                  persist_fn of 64 B, the same loop (bench/pmem2_bench.c via
                  bench/pmem.py, PMEM2_FORCE_GRANULARITY=CACHE_LINE).  Goal <= 2x.
                  For reference, the device layer's persist (PmemDevice.persist
                  on the device bytes behind the same lines) is shown too.
    numpy         Mapping.asarray(float64) over a 1 GiB file (/dev/shm,
                  persist="cpu") against an anonymous numpy array of the same
                  size: arr.sum() and np.copyto(dst, arr) into a third
                  (anonymous, pre-faulted) array, GiB/s of the source; goal
                  >= 0.9x.  Copying into the mapping (np.copyto(mapped, src))
                  is shown for information.  Both sides are written once and
                  each measurement has an untimed warm-up pass.
    map           File.mmap of a 1 GiB file held in 1 extent, and in 1024
                  extents (1 MiB pieces, 64 KiB with --quick, written
                  alternately with 4 KiB pieces of a second file, which is
                  then deleted, so the extents do
                  not merge; the count is checked with len(mapping._pieces)).
                  Only the mmap call is timed (close is not; pages are not
                  touched).  Informational, ms; the 1024-extent row's anchor
                  is the 1-extent row.

Latencies of the slow msync/flush and map calls are medians of individually
timed calls; the fast ones are medians of batches (bench/common.py).
Images and files are deleted at the end.  Nothing is asserted; a failure of a
section is reported under the table and the other sections still run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import mmap
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from itertools import cycle, islice
from pathlib import Path
from typing import Any

import numpy as np
import pmem as pmem_bench
from common import (
    FULL,
    GIB,
    KIB,
    MIB,
    QUICK,
    Goal,
    Timing,
    Unavailable,
    cpu_model,
    fs_type,
    gc_paused,
    median_gib_per_s,
    median_ns_per_op,
    parse_args,
    print_table,
)
from fs import Report, check_free, daxfs_image, describe, open_raw, temp_path

import daxfs

SHM = Path("/dev/shm")
PAGE = 4 * KIB
LINE = 64
FAULT_REPS = 2
#: room for daxfs metadata and the journal on top of the file data in an image
IMAGE_SLACK = 128 * MIB


@dataclasses.dataclass(frozen=True)
class Plan:
    """Sizes and repetitions of one run."""

    size: int  # the mapped files (1 GiB)
    disk_reps: int  # rounds of the msync, disk section (each flushes the whole file twice)
    hot_size: int  # 64 B msyncs cycle through the lines of this many bytes
    extents: int  # fragmented file for the map rows
    map_reps_one: int  # mmap calls timed, 1 extent
    map_reps_many: int  # mmap calls timed, many extents


FULL_PLAN = Plan(
    size=GIB,
    disk_reps=7,
    hot_size=MIB,
    extents=1024,
    map_reps_one=200,
    map_reps_many=25,
)
QUICK_PLAN = Plan(
    size=64 * MIB,
    disk_reps=5,
    hot_size=MIB,
    extents=1024,
    map_reps_one=50,
    map_reps_many=5,
)


def size_name(nbytes: int) -> str:
    return pmem_bench.size_name(nbytes)


def plural(n: int, what: str) -> str:
    return f"{n:,} {what}{'' if n == 1 else 's'}"


def fmt_ns(ns: float) -> str:
    """A duration with a unit that suits it."""
    if ns >= 1e9:
        return f"{ns / 1e9:.2f} s"
    if ns >= 1e6:
        return f"{ns / 1e6:.1f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.0f} us"
    return f"{ns:.0f} ns"


def spread(samples: Sequence[float]) -> str:
    """Durations in ns as: median .., min .., max .., n=.."""
    median, low, high = statistics.median(samples), min(samples), max(samples)
    return f"median {fmt_ns(median)}, min {fmt_ns(low)}, max {fmt_ns(high)}, n={len(samples)}"


@contextlib.contextmanager
def mapped_file(
    fs: daxfs.FileSystem, name: str, size: int
) -> Iterator[tuple[daxfs.File, daxfs.Mapping]]:
    """A ``size``-byte file, mapped writable (its blocks allocated, zeroed, written)."""
    f = open_raw(fs, name)
    try:
        f.truncate(size)
        mapping = f.mmap()
        try:
            yield f, mapping
        finally:
            mapping.close()
    finally:
        f.close()


# -- msync on the msync path (ext4) against numpy.memmap.flush -------------------


def page_dirtier(array: np.ndarray[Any, Any]) -> Callable[[], None]:
    """``dirty()``: store a new byte value in every 4 KiB page of a uint8 ``array``."""
    pages = array[::PAGE]
    stamp = iter(range(1, 1 << 62))

    def dirty() -> None:
        pages[:] = next(stamp) & 0xFF

    return dirty


def disk_dir() -> Path:
    directory = pmem_bench.msync_dir()
    kind = fs_type(directory)
    if kind != "ext4":
        raise Unavailable(f"{directory} is on {kind}, not ext4")
    return directory


def msync_disk_section(plan: Plan, timing: Timing, report: Report) -> None:
    directory = disk_dir()
    size, reps = plan.size, plan.disk_reps
    check_free(directory, 2 * size + IMAGE_SLACK)
    # each repetition msyncs another page, spread over the mapping
    step = size // reps
    targets = [(i * step + step // 2) // PAGE * PAGE for i in range(reps)]
    plain = temp_path(directory, ".bin")
    try:
        with (
            daxfs_image(directory, size + IMAGE_SLACK, "auto") as (fs, image),
            mapped_file(fs, "/data", size) as (f, mapping),
        ):
            method, described = fs.device.persist_method, describe(fs)
            with f.pin(0, size) as sg:
                segments = sg.segments
            if len(segments) != 1 or segments[0].dev is None:
                raise Unavailable(f"the daxfs file has {len(segments)} extents, not 1")
            mapping_va, image_dev = mapping.address, segments[0].dev
            dax_dirty = page_dirtier(mapping.asarray(np.uint8))
            try:
                samples = disk_reps(
                    mapping, dax_dirty, (image, segments[0].dev), plain, size, targets
                )
            finally:
                del dax_dirty  # the last reference to the array: the mapping can close
    finally:
        plain.unlink(missing_ok=True)
    where = f"{fs_type(directory)} at {directory}"
    dax_ns, numpy_ns = samples["dax"], samples["numpy"]
    image_ns, plain_ns = samples["image"], samples["plain"]
    by_place = sorted(zip(dax_ns, targets, strict=True))
    report.row(
        f"msync 4 KiB of {size_name(size)} all-dirty map (ext4) vs memmap.flush",
        1e9 / statistics.median(dax_ns),
        1e9 / statistics.median(numpy_ns),
        "op/s",
        Goal(">=", 200),
    )
    report.row(
        "  msync 4 KiB vs mmap.flush of the same image bytes",
        1e9 / statistics.median(dax_ns),
        1e9 / statistics.median(image_ns),
        "op/s",
    )
    dax_faults = statistics.median(n for n, _ in samples["fault_dax"])
    image_faults = statistics.median(n for n, _ in samples["fault_image"])
    report.row(
        f"  re-dirty {size_name(size)} after msync (ms): Mapping vs mmap",
        statistics.median(ns for _, ns in samples["fault_dax"]) / 1e6,
        statistics.median(ns for _, ns in samples["fault_image"]) / 1e6,
        "ms",
    )
    report.note(
        f"msync, disk: writing one byte in each of the {size // PAGE:,} pages right after an "
        f"msync of the whole file took {dax_faults:,.0f} page faults through the daxfs Mapping "
        f"(address {mapping_va % (2 * MIB):#x} mod 2 MiB) and {image_faults:,.0f} through "
        f"Python's mmap of the same image bytes (address {samples['image_va'][0] % (2 * MIB):#x}"
        f" mod 2 MiB, chosen by the kernel); the bytes are at image file offset "
        f"{image_dev % (2 * MIB):#x} mod 2 MiB; median of {FAULT_REPS}, each after msync()"
    )
    report.note(
        f"msync, disk: daxfs image {image.name} on {where}, persist='auto' -> {method} "
        f"({described}), a {size_name(size)} file mapped writable; a plain {size_name(size)} "
        "file next to it (blocks written first) as numpy.memmap(mode='r+') and as Python's "
        f"mmap. Each of {reps} rounds: write every page of the daxfs mapping, time "
        "Mapping.msync(off, 4096); write every page again, time Python's mmap.flush of the same "
        "4 KiB of the image file (mapped at the file's device offset: same file, same page, no "
        "daxfs); msync the rest (untimed); write every page of the plain "
        "file, time mmap.flush(off, 4096) (msync(2) of that page, no daxfs), write the page "
        "again, time memmap.flush() (the whole map). off moves through the mapping round by "
        "round. Only the msync/flush calls are timed"
    )
    report.note(
        f"msync, disk: Mapping.msync {spread(dax_ns)} (fastest at {by_place[0][1] // MIB} MiB, "
        f"slowest at {by_place[-1][1] // MIB} MiB); image mmap.flush {spread(image_ns)}; "
        f"plain file mmap.flush(off, 4096) {spread(plain_ns)}; memmap.flush() "
        f"{spread(numpy_ns)}"
    )


def disk_reps(
    mapping: daxfs.Mapping,
    dax_dirty: Callable[[], None],
    image_at: tuple[Path, int],
    plain: Path,
    size: int,
    targets: Sequence[int],
) -> dict[str, list[Any]]:
    """ns of each timed call of the rounds described in msync_disk_section's note.

    Then FAULT_REPS times: (page faults, ns) of writing every page of the mapping
    right after msync cleaned it, through the daxfs mapping ("fault_dax") and
    through Python's mmap of the same image bytes ("fault_image").
    """
    samples: dict[str, list[Any]] = {
        "dax": [],
        "image": [],
        "plain": [],
        "numpy": [],
        "fault_dax": [],
        "fault_image": [],
        "image_va": [],
    }
    clock = time.perf_counter_ns
    image, dev = image_at
    with (
        open(plain, "r+b") as raw,
        open(image, "r+b") as image_file,
        mmap.mmap(image_file.fileno(), size, offset=dev) as image_memory,
    ):
        raw.truncate(size)
        mm = np.memmap(plain, dtype=np.uint8, mode="r+", shape=(size,))
        try:
            mm[:] = 1
            mm.flush()  # blocks allocated and written: the timed flushes overwrite
            np_dirty = page_dirtier(mm)
            dax_dirty()  # first touch: write faults, ext4 page_mkwrite
            mapping.msync()

            def dirty_then_time(
                dirty: Callable[[], object], key: str, flush: Callable[[], object]
            ) -> None:
                """Dirty a page (untimed), then time ``flush()`` into samples[key]."""
                dirty()
                start = clock()
                flush()
                samples[key].append(clock() - start)

            with gc_paused(), mmap.mmap(raw.fileno(), size) as memory:
                for off in targets:
                    dirty_then_time(dax_dirty, "dax", partial(mapping.msync, off, PAGE))
                    dirty_then_time(dax_dirty, "image", partial(image_memory.flush, off, PAGE))
                    mapping.msync()  # clean, so only one file is dirty at a time
                    dirty_then_time(np_dirty, "plain", partial(memory.flush, off, PAGE))
                    dirty_then_time(np_dirty, "numpy", mm.flush)
            # first writes after a clean: page faults through the daxfs mapping and
            # through the kernel-placed mapping of the same image bytes
            held = [np.frombuffer(image_memory, dtype=np.uint8)]
            samples["image_va"].append(held[0].ctypes.data)
            try:
                image_dirty = page_dirtier(held[0])
                for _ in range(FAULT_REPS):
                    mapping.msync()
                    samples["fault_image"].append(faults_and_ns(image_dirty))
                    mapping.msync()
                    samples["fault_dax"].append(faults_and_ns(dax_dirty))
            finally:
                held.clear()
                del image_dirty
        finally:
            del mm  # unmapped when the last reference goes
    return samples


def faults_and_ns(op: Callable[[], object]) -> tuple[int, int]:
    """(minor page faults, ns) of ``op()``."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter_ns()
    op()
    ns = time.perf_counter_ns() - start
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, ns


# -- msync of 64 B on the cpu path against libpmem2 -------------------------------


def libpmem2_persist_64(plan: Plan, timing: Timing) -> tuple[float, str]:
    """libpmem2's persist of 64 B (pmem2_bench.c), on a small /dev/shm file."""
    layout = pmem_bench.Layout(
        seq_size=2 * MIB, piece=2 * MIB, hot_offset=2 * MIB, hot_size=plan.hot_size
    )
    path = pmem_bench.shm_file(layout.file_size)
    try:
        results = pmem_bench.measure_libpmem2(path, layout, timing)
    finally:
        path.unlink()
    return float(results["persist_64_ns"]), results.get("granularity", "?")


def msync_cpu_section(plan: Plan, timing: Timing, report: Report) -> None:
    try:
        anchor: float | None
        anchor, granularity = libpmem2_persist_64(plan, timing)
        report.note(
            f"msync, cpu: anchor libpmem2 persist_fn(line, 64) at {granularity} granularity "
            "(PMEM2_FORCE_GRANULARITY=CACHE_LINE, same flush instruction), line dirtied first, "
            f"cycling through the lines of {size_name(plan.hot_size)}"
        )
    except Unavailable as exc:
        anchor = None
        report.note(f"msync, cpu: libpmem2 anchor skipped: {exc}")
    hot = plan.hot_size
    with (
        daxfs_image(SHM, hot + 64 * MIB, "cpu") as (fs, image),
        mapped_file(fs, "/hot", hot) as (f, mapping),
    ):
        view = memoryview(mapping)
        try:
            msync = mapping.msync
            offsets = cycle(range(0, hot, LINE))

            def msync_loop(n: int) -> None:
                for off in islice(offsets, n):
                    view[off] = 1  # dirty the line through the mapping
                    msync(off, LINE)

            dax_ns = median_ns_per_op(msync_loop, timing=timing)
            with f.pin(0, hot) as sg:
                segments = sg.segments
            if len(segments) == 1 and segments[0].dev is not None:
                base = segments[0].dev
                persist = fs.device.persist

                def persist_loop(n: int) -> None:
                    for off in islice(offsets, n):
                        view[off] = 1
                        persist(base + off, LINE)

                dev_ns: float | None = median_ns_per_op(persist_loop, timing=timing)
            else:
                dev_ns = None
                report.note(f"msync, cpu: device row skipped: {len(segments)} segments")
        finally:
            view.release()
        report.note(
            f"msync, cpu: daxfs image {image.name} on {SHM}, persist='cpu' ({describe(fs)}); "
            f"a {size_name(hot)} file mapped; view[off] = 1 then Mapping.msync(off, 64)"
        )
    report.row("msync 64 B, cpu path (line dirtied first)", dax_ns, anchor, "ns", Goal("<=", 2))
    if dev_ns is not None:
        report.row("  for reference: PmemDevice.persist 64 B", dev_ns, anchor, "ns")


# -- numpy over a mapping against anonymous memory ---------------------------------


def numpy_section(plan: Plan, timing: Timing, report: Report) -> None:
    size = plan.size
    check_free(SHM, size + IMAGE_SLACK)
    count = size // 8
    with (
        daxfs_image(SHM, size + IMAGE_SLACK, "cpu") as (fs, image),
        mapped_file(fs, "/array", size) as (f, mapping),
    ):
        mapped = mapping.asarray(np.float64)
        try:
            anon = np.empty(count, dtype=np.float64)
            dst = np.empty(count, dtype=np.float64)
            mapped.fill(1.5)  # written (and faulted in) once, both sides
            anon.fill(1.5)
            dst.fill(0.0)
            results = measure_numpy(mapped, anon, dst, timing)
        finally:
            del mapped
        with f.pin(0, size) as sg:
            segments = sg.segments
        if len(segments) == 1 and segments[0].dev is not None:
            same_pages: float | None = same_pages_sum(image, segments[0].dev, size, timing)
        else:
            same_pages = None
            report.note(f"numpy: the file has {len(segments)} extents: no same-pages row")
        report.note(
            f"numpy: Mapping.asarray(float64) of a {size_name(size)} file in daxfs image "
            f"{image.name} on {SHM} (persist='cpu') vs np.empty of the same size; both filled "
            f"first; GiB/s of the {size_name(size)} read (sum, copy out) or written (copy in); "
            "median of passes after an untimed one"
        )
    mapped_sum, anon_sum = results["sum"]
    report.row(
        f"numpy sum, {size_name(size)} mapped vs anonymous",
        mapped_sum,
        anon_sum,
        "GiB/s",
        Goal(">=", 0.9),
    )
    if same_pages is not None:
        report.row(
            "  sum: mapped vs mmap.mmap of the same image bytes", mapped_sum, same_pages, "GiB/s"
        )
    report.note(
        f"numpy: transparent huge pages: anonymous {thp_mode('enabled')}, shmem "
        f"{thp_mode('shmem_enabled')}: numpy madvises its own large arrays MADV_HUGEPAGE, a "
        "mapping of a /dev/shm file gets 4 KiB pages unless shmem THP is on. The same-bytes row "
        "maps the file's extent of the image with Python's mmap (no daxfs): same physical "
        "pages, so it separates daxfs from page size and placement"
    )
    out, out_anchor = results["copy_out"]
    report.row("np.copyto(anon, mapped) vs (anon, anon)", out, out_anchor, "GiB/s", Goal(">=", 0.9))
    into, into_anchor = results["copy_in"]
    report.row("np.copyto(mapped, anon) vs (anon, anon)", into, into_anchor, "GiB/s")


def same_pages_sum(image: Path, dev: int, size: int, timing: Timing) -> float:
    """GiB/s of numpy sum over Python's mmap of bytes [dev, dev+size) of the image file."""
    with (
        open(image, "rb") as raw,
        mmap.mmap(raw.fileno(), size, access=mmap.ACCESS_READ, offset=dev) as memory,
    ):
        held = [np.frombuffer(memory, dtype=np.float64)]  # cleared before close
        try:

            def one_pass() -> int:
                held[0].sum()
                return size

            return median_gib_per_s(one_pass, timing=timing)
        finally:
            held.clear()


def measure_numpy(
    mapped: np.ndarray[Any, Any],
    anon: np.ndarray[Any, Any],
    dst: np.ndarray[Any, Any],
    timing: Timing,
) -> dict[str, tuple[float, float]]:
    nbytes = mapped.nbytes

    def summing(array: np.ndarray[Any, Any]) -> Callable[[], int]:
        def one_pass() -> int:
            array.sum()
            return nbytes

        return one_pass

    def copying(to: np.ndarray[Any, Any], source: np.ndarray[Any, Any]) -> Callable[[], int]:
        def one_pass() -> int:
            np.copyto(to, source)
            return nbytes

        return one_pass

    return {
        "sum": (
            median_gib_per_s(summing(mapped), timing=timing),
            median_gib_per_s(summing(anon), timing=timing),
        ),
        "copy_out": (
            median_gib_per_s(copying(dst, mapped), timing=timing),
            median_gib_per_s(copying(dst, anon), timing=timing),
        ),
        "copy_in": (
            median_gib_per_s(copying(mapped, anon), timing=timing),
            median_gib_per_s(copying(dst, anon), timing=timing),
        ),
    }


def thp_mode(name: str) -> str:
    """The selected transparent-huge-page mode, e.g. "madvise", from sysfs."""
    try:
        text = Path(f"/sys/kernel/mm/transparent_hugepage/{name}").read_text(encoding="ascii")
    except OSError:
        return "unknown"
    chosen = [word for word in text.split() if word.startswith("[")]
    return chosen[0].strip("[]") if chosen else text.strip()


# -- map time -------------------------------------------------------------------------


def map_section(plan: Plan, timing: Timing, report: Report) -> None:
    size = plan.size
    piece = size // plan.extents
    gap = PAGE
    check_free(SHM, 2 * size + IMAGE_SLACK)
    with daxfs_image(SHM, 2 * size + plan.extents * gap + IMAGE_SLACK, "cpu") as (fs, image):
        # one extent: a writable mapping allocates the whole file at once
        with mapped_file(fs, "/one", size):
            pass
        # many extents: pieces of /many alternate on the device with pieces of /gap
        many = open_raw(fs, "/many")
        spacer = open_raw(fs, "/gap")
        data = pmem_bench.pattern(piece)
        for i in range(plan.extents):
            many.pwrite(data, i * piece)
            spacer.pwrite(data[:gap], i * gap)
        spacer.close()
        fs.unlink("/gap")
        one = open_raw(fs, "/one", "rb+")
        try:
            results = {}
            for name, f, reps in (
                ("one", one, plan.map_reps_one),
                ("many", many, plan.map_reps_many),
            ):
                mapping = f.mmap()
                pieces = len(mapping._pieces)
                mapping.close()
                times = {"map": [], "close": []}  # type: dict[str, list[int]]
                for _ in range(reps):
                    start = time.perf_counter_ns()
                    mapping = f.mmap()
                    mapped = time.perf_counter_ns()
                    mapping.close()
                    times["map"].append(mapped - start)
                    times["close"].append(time.perf_counter_ns() - mapped)
                results[name] = (pieces, times)
        finally:
            one.close()
            many.close()
        described = describe(fs)
    one_count, one_times = results["one"]
    many_count, many_times = results["many"]
    if one_count != 1 or many_count != plan.extents:
        report.note(
            f"map: asked for 1 and {plan.extents} extents, the mappings have {one_count} and "
            f"{many_count} pieces (the rows say what was measured)"
        )
    one_ms = statistics.median(one_times["map"]) / 1e6
    many_ms = statistics.median(many_times["map"]) / 1e6
    report.row(f"map {size_name(size)}, {plural(one_count, 'extent')} (ms)", one_ms, None, "ms")
    report.row(
        f"map {size_name(size)}, {many_count} extents (ms) vs 1 extent",
        many_ms,
        one_ms,
        "ms",
    )
    report.note(
        f"map: image {image.name} on {SHM} ({described}); File.mmap() writable of a whole "
        f"{size_name(size)} file; {many_count}-extent file built from {size_name(piece)} "
        f"pwrites alternating with 4 KiB pwrites to a spacer file (deleted after); "
        f"mmap {spread(one_times['map'])} (1 extent) / {spread(many_times['map'])} "
        f"({many_count}); close {fmt_ns(statistics.median(one_times['close']))} / "
        f"{fmt_ns(statistics.median(many_times['close']))}; "
        f"{fmt_ns(statistics.median(many_times['map']) / max(many_count, 1))} per extent"
    )


# -- main -------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv, "daxfs DAX mmap against numpy.memmap, libpmem2 and numpy (issue 4)")
    if not SHM.is_dir():
        print(f"dax_mmap benchmark skipped: {SHM} does not exist")
        return 0
    timing, plan = (QUICK, QUICK_PLAN) if args.quick else (FULL, FULL_PLAN)
    report = Report()
    started = time.perf_counter()
    sections = [
        (name, partial(section, plan, timing, report))
        for name, section in (
            ("msync, disk", msync_disk_section),
            ("msync, cpu", msync_cpu_section),
            ("numpy", numpy_section),
            ("map", map_section),
        )
    ]
    report.run_sections(sections, skip=(Unavailable, OSError, BufferError))
    report.note(f"total {time.perf_counter() - started:.0f} s")
    mode = "quick" if args.quick else "full"
    title = f"daxfs DAX mmap vs numpy.memmap / libpmem2 / numpy ({mode}, {cpu_model()})"
    print_table(title, report.rows, notes=report.notes, plain=args.plain)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
