"""Filesystem benchmark: daxfs against os.* on tmpfs and ext4, fio's libpmem and SQLite
(issues 3 and 9).

    python bench/fs.py [--quick] [--plain] [--profile] [--results DIR]

One run measures, on this machine and in this process, and prints one table
whose every row is daxfs against its anchor measured in the same run, with
the goal (issue 9's table) and whether it is met:

    data      daxfs (mount(persist="cpu") on a /dev/shm image) against os.* on a
              /dev/shm (tmpfs) file and an ext4 file, and against fio's libpmem
              engine and libpmem2 (bench/pmem2_bench.c) on /dev/shm:
                4 KiB random pread        goal >= 1.0x os.pread on tmpfs
                4 KiB random pwrite       durable; goal >= 1.0x os.pwrite on tmpfs,
                                          which is not durable at all
                sequential, 2 MiB pieces  read and write; goal >= 0.8x the C ceiling
              durable small records (bench/records.py): the same durable 4 KiB
              pwrite (an overwrite at random offsets) against SQLite (sqlite3,
              WAL, synchronous=FULL, on /dev/shm, one 4 KiB row inserted per
              transaction; goal >= 5x) and against os.pwrite + os.fdatasync of
              4 KiB on an ext4 file (informational)
    msync     the same 4 KiB operations on a daxfs image on ext4, mounted with
              persist="auto" (msync), against os.pread / os.pwrite (+ fdatasync)
              on an ext4 file; informational
    latency   (bench/fs_latency.py) p50 and p99 of single 4 KiB preads and
              pwrites, each timed on its own, daxfs and os.* on tmpfs; and 4 KiB
              pread throughput with 1, 2 and 4 threads (each daxfs thread has
              its own File of the one inode; the os threads share a descriptor);
              informational.  A 1-thread run runs in a worker thread while the
              main thread waits, which on this VM is slower than the same loop
              in the main thread (the data section's row): compare the two
              sides of one thread count, not a thread count with that row.
    metadata  in a directory of 100,000 entries (1,000 with --quick), against the
              same operations with os.* on tmpfs: create+close (goal >= 0.25x),
              stat (goal >= 0.5x), rename, unlink, listdir, each operation's
              daxfs and tmpfs batches interleaved; stat throughput of random
              names with 1, 2 and 4 threads (informational)
    scale     (full run only) a directory of up to 1,000,000 files, created under
              a time budget: stat there within 1.5x of stat in a 10-entry
              directory; mounting the filesystem takes under 1 s and 200 MB
              (RSS growth of a fresh process; the budgets are the anchors).
              With fewer files than the target (budget or failure) those rows
              are informational and say how many files were measured.

Rates are op/s (or GiB/s, entries/s) from medians of batches (bench/common.py),
so every ratio is daxfs / anchor with higher better, except where the unit is
a time or a size (ns, ms, MB).  Random 4 KiB offsets are block-aligned, drawn
once from a fixed seed and used by every side.  Paths are absolute on both
sides (daxfs "/d/f0000001", tmpfs "/dev/shm/daxfs-bench-.../d/f0000001").

The anchors:
  - fio --ioengine=libpmem on a /dev/shm file, PMEM_IS_PMEM_FORCE=1 (tmpfs is
    not DAX, libpmem refuses it otherwise), writes with direct=1 sync=1
    (non-temporal copy and a drain per 2 MiB: durable, as a daxfs write is),
    reads a memcpy; the same flush instruction as daxfs (bench/pmem.py).
    Time-based runs, so fio maps the file once (see run_fio); each run follows
    one timed daxfs pass (FioAnchor), so the two sides interleave.  Without fio
    or its libpmem engine the write ceiling falls back to libpmem2.
  - libpmem2: bench/pmem2_bench.c's sequential memcpy_fn, through bench/pmem.py.
  - ext4: a file under bench/build/ (or /var/tmp), in the page cache.

The daxfs image on /dev/shm is written through once before timing
(warm_image), as fio's ramp time and pmem2_bench's untimed pass do for theirs.

The seq write rows compare like with like in what is done: the same file size
(``data_size``: 64 MiB quick, 1 GiB full) written in the same 2 MiB pieces from
one 2 MiB buffer reused, every piece durable when the call returns (fio
libpmem with direct=1 sync=1 is ``pmem_memcpy`` with PMEM_F_MEM_NONTEMPORAL
and a drain: non-temporal stores and an sfence per piece; a daxfs pwrite
copies the piece into new blocks with non-temporal stores and commits its
transaction, three fences, before it returns), the same flush instruction.
They differ in what runs it: fio is one thread in its own process; a daxfs
pwrite runs on the calling thread and, on a native device, hands part of the
copy to a helper thread (daxfs.fs._copy, the copier) that needs the other
core.  The two never run at the same time (each fio run follows one daxfs
pass), and neither is pinned.  On this 2-vCPU machine, shared with other
work, whether the copier's thread finds a core decides most of the row, so a
second row repeats the passes with the copier off ("one core": the copy on
the calling thread, what daxfs does when no core is free), each right after
the fio run that follows a pass with it.  The daxfs figure is a median of
at least SEQ_PASSES short passes (32 writes in --quick, 512 in the full run),
fio's a median of as many runs of 300 ms (1 s): a preempted pass falls out of
the median, a preempted fio run does not.  docs/ARCHITECTURE.md ("The floor of a 2 MiB copy-on-write
overwrite") says where the time goes.

``python bench/fs.py --profile`` instead runs cProfile over 4 KiB pread,
preadinto and pwrite, 2 MiB sequential pwrite and preadinto, stat (in a
100,000-entry and a 10-entry directory) and create+close, and prints the top
functions by own time per operation (about 30 s; not through run.py, which
would pass the option to every benchmark).

After the table is printed, bench/report.py writes it, as text and JSON,
and PNG plots (each ratio against its goal, the latency percentiles, the
thread scaling) under bench/results/ (or ``--results DIR``); see
bench/results/README.md.  ``make bench`` runs the full size through
bench/run.py (a few minutes, most of it the scale section); ``--quick`` takes
under a minute.

Nothing is asserted; failures of daxfs operations are caught and reported in
the notes under the table, with what was measured instead.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import cProfile
import dataclasses
import os
import pstats
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import partial
from itertools import cycle, islice
from pathlib import Path
from typing import Literal, cast

import fs_latency
import pmem as pmem_bench
import records
from common import (
    FULL,
    GIB,
    KIB,
    MIB,
    QUICK,
    Goal,
    Row,
    Timing,
    Unavailable,
    cpu_model,
    fio_job,
    fs_type,
    gib_per_s,
    median_gib_per_s,
    median_ns_per_op,
    median_ns_per_op_interleaved,
    parse_results,
    print_table,
)
from report import RESULTS_DIR, Latency, Scaling, write_results

import daxfs
from daxfs.errors import NoSpace
from daxfs.fs.file import File

SHM = Path("/dev/shm")
SMALL = 4 * KIB
PIECE = 2 * MIB
RANDOM_OFFSETS = 1 << 16
#: names drawn (with replacement) for random stat: more than daxfs caches (64Ki dentries)
RANDOM_NAMES = 1 << 18
SEED = 3
#: timed passes of each sequential row at least (and as many fio runs)
SEQ_PASSES = 7


@dataclasses.dataclass(frozen=True)
class Plan:
    """Sizes of one run."""

    data_size: int  # the daxfs and tmpfs data files; sequential passes cover them
    random_size: int  # random 4 KiB operations fall in [0, random_size); also the ext4 files
    entries: int  # the metadata directory
    scale_files: int  # 0: no scale section
    scale_budget_s: float  # for creating the scale files
    mount_runs: int  # fresh processes that each mount the scale image once
    fio_runtime_ms: int  # per fio run, after its ramp time
    fio_ramp_ms: int
    latency_samples: int  # single 4 KiB operations timed one by one, per side
    thread_ops: int  # 4 KiB preads per thread in a thread-scaling run
    thread_stat_ops: int  # stats per thread in a thread-scaling run
    thread_repeats: int  # runs per thread count (median)


FULL_PLAN = Plan(
    data_size=GIB,
    random_size=256 * MIB,
    entries=100_000,
    scale_files=1_000_000,
    scale_budget_s=600.0,
    mount_runs=5,
    fio_runtime_ms=1000,
    fio_ramp_ms=500,
    latency_samples=200_000,
    thread_ops=50_000,
    thread_stat_ops=5_000,
    thread_repeats=5,
)
QUICK_PLAN = Plan(
    data_size=64 * MIB,
    random_size=16 * MIB,
    entries=1_000,
    scale_files=0,
    scale_budget_s=0.0,
    mount_runs=0,
    fio_runtime_ms=300,
    fio_ramp_ms=200,
    latency_samples=20_000,
    thread_ops=5_000,
    thread_stat_ops=1_000,
    thread_repeats=3,
)
THREADS = (1, 2, 4)


def per_s(ns: float) -> float:
    return 1e9 / ns


def fmt_count(n: int) -> str:
    return f"{n:,}"


class Report:
    """Rows and notes, collected as the sections run."""

    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.notes: list[str] = []
        self.latencies: list[Latency] = []
        self.scaling: list[Scaling] = []

    def row(
        self,
        name: str,
        value: float | None,
        anchor: float | None,
        unit: str,
        goal: Goal | None = None,
    ) -> None:
        if value is None:
            self.notes.append(f"{name}: no daxfs result (see the notes)")
            return
        self.rows.append(Row(name, value, anchor, unit, goal))

    def note(self, text: str) -> None:
        self.notes.append(text)

    def run_sections(
        self,
        sections: Sequence[tuple[str, Callable[[], None]]],
        skip: tuple[type[BaseException], ...] = (Unavailable,),
    ) -> None:
        """Run each section, timing it; a ``skip`` error becomes a note, not a crash."""
        for name, section in sections:
            t0 = time.perf_counter()
            try:
                section()
            except skip as exc:
                self.note(f"{name} section failed or skipped: {type(exc).__name__}: {exc}")
            self.note(f"({name} section: {time.perf_counter() - t0:.1f} s)")


def attempt(report: Report, what: str, measure: Callable[[], float]) -> float | None:
    """``measure()``, or None with a note if it raises an OSError (daxfs errors are OSErrors)."""
    try:
        return measure()
    except (OSError, Unavailable) as exc:
        report.note(f"{what}: failed: {type(exc).__name__}: {exc}")
        return None


# -- files and images --------------------------------------------------------


def temp_path(directory: Path, suffix: str) -> Path:
    fd, name = tempfile.mkstemp(prefix="daxfs-bench-", suffix=suffix, dir=directory)
    os.close(fd)
    return Path(name)


def check_free(directory: Path, nbytes: int) -> None:
    st = os.statvfs(directory)
    if st.f_bavail * st.f_frsize < nbytes:
        raise Unavailable(f"{directory} has less than the {nbytes >> 20} MiB this needs")


def random_offsets(size: int) -> list[int]:
    """Block-aligned offsets for 4 KiB operations in [0, size), the same on every side."""
    rng = random.Random(SEED)
    blocks = size // SMALL
    return [rng.randrange(blocks) * SMALL for _ in range(RANDOM_OFFSETS)]


@contextlib.contextmanager
def daxfs_image(
    directory: Path, size: int, persist: str
) -> Iterator[tuple[daxfs.FileSystem, Path]]:
    """A fresh daxfs image in ``directory``, mounted; unmounted and deleted after."""
    path = temp_path(directory, ".daxfs")
    try:
        daxfs.mkfs(path, size)
        fs = daxfs.mount(path, persist=persist)
        try:
            yield fs, path
        finally:
            for file in fs.open_files():
                file.close()
            with contextlib.suppress(OSError):
                fs.unmount()
    finally:
        path.unlink(missing_ok=True)


def describe(fs: daxfs.FileSystem) -> str:
    dev = fs.device
    instruction = getattr(dev, "flush_instruction", None)
    return f"{dev.granularity.name}, {instruction or dev.persist_method}"


def open_raw(fs: daxfs.FileSystem, name: str, mode: str = "xb+") -> File:
    return cast(File, fs.open(name, mode, buffering=0))


# -- data: loops ---------------------------------------------------------------


def os_pread_loop(fd: int, offsets: Sequence[int]) -> Callable[[int], None]:
    it = cycle(offsets)
    pread = os.pread

    def loop(n: int) -> None:
        for off in islice(it, n):
            pread(fd, SMALL, off)

    return loop


def os_preadv_loop(fd: int, offsets: Sequence[int]) -> Callable[[int], None]:
    it = cycle(offsets)
    preadv = os.preadv
    bufs = [bytearray(SMALL)]

    def loop(n: int) -> None:
        for off in islice(it, n):
            preadv(fd, bufs, off)

    return loop


def os_pwrite_loop(fd: int, offsets: Sequence[int], sync: bool) -> Callable[[int], None]:
    it = cycle(offsets)
    pwrite, fdatasync = os.pwrite, os.fdatasync
    data = pmem_bench.pattern(SMALL)

    def loop(n: int) -> None:
        for off in islice(it, n):
            pwrite(fd, data, off)

    def loop_sync(n: int) -> None:
        for off in islice(it, n):
            pwrite(fd, data, off)
            fdatasync(fd)

    return loop_sync if sync else loop


def dax_pread_loop(f: File, offsets: Sequence[int]) -> Callable[[int], None]:
    it = cycle(offsets)
    pread = f.pread

    def loop(n: int) -> None:
        for off in islice(it, n):
            pread(SMALL, off)

    return loop


def dax_preadinto_loop(f: File, offsets: Sequence[int]) -> Callable[[int], None]:
    it = cycle(offsets)
    preadinto = f.preadinto
    buf = bytearray(SMALL)

    def loop(n: int) -> None:
        for off in islice(it, n):
            preadinto(buf, off)

    return loop


def dax_pwrite_loop(f: File, offsets: Sequence[int]) -> Callable[[int], None]:
    it = cycle(offsets)
    pwrite = f.pwrite
    data = pmem_bench.pattern(SMALL)

    def loop(n: int) -> None:
        for off in islice(it, n):
            pwrite(data, off)

    return loop


def seq_read_pass(readinto: Callable[[bytearray, int], object], size: int) -> Callable[[], int]:
    buf = bytearray(PIECE)
    offsets = range(0, size - PIECE + 1, PIECE)

    def one_pass() -> int:
        for off in offsets:
            readinto(buf, off)
        return len(offsets) * PIECE

    return one_pass


def seq_write_pass(write: Callable[[bytes, int], object], size: int) -> Callable[[], int]:
    piece = pmem_bench.pattern(PIECE)
    offsets = range(0, size - PIECE + 1, PIECE)

    def one_pass() -> int:
        for off in offsets:
            write(piece, off)
        return len(offsets) * PIECE

    return one_pass


# -- data: sides ---------------------------------------------------------------


def measure_os_file(
    path: Path, size: int, offsets: Sequence[int], timing: Timing, *, disk: bool
) -> dict[str, float]:
    """os.* on ``path`` (``size`` bytes, written first); rates in op/s and GiB/s."""
    fd = os.open(path, os.O_RDWR)
    try:
        write_whole(lambda data, off: os.pwrite(fd, data, off), size)
        if disk:
            os.fsync(fd)
        out = {
            "pread": per_s(median_ns_per_op(os_pread_loop(fd, offsets), timing=timing)),
            "preadv": per_s(median_ns_per_op(os_preadv_loop(fd, offsets), timing=timing)),
            "pwrite": per_s(median_ns_per_op(os_pwrite_loop(fd, offsets, False), timing=timing)),
        }
        if disk:
            loop = os_pwrite_loop(fd, offsets, True)
            out["pwrite_sync"] = per_s(median_ns_per_op(loop, timing=timing))
        else:
            preadv = os.preadv

            def readinto(buf: bytearray, off: int) -> None:
                preadv(fd, [buf], off)

            out["seq_read"] = median_gib_per_s(seq_read_pass(readinto, size), timing=timing)
            write = seq_write_pass(lambda data, off: os.pwrite(fd, data, off), size)
            out["seq_write"] = median_gib_per_s(write, timing=timing)
    finally:
        os.close(fd)
    return out


def write_whole(write: Callable[[bytes, int], object], size: int) -> None:
    piece = pmem_bench.pattern(PIECE)
    for off in range(0, size, PIECE):
        write(piece[: min(PIECE, size - off)], off)


def measure_small_pairs(
    fs: daxfs.FileSystem,
    tmpfs_path: Path,
    offsets: Sequence[int],
    timing: Timing,
    dax: dict[str, float],
    tmpfs: dict[str, float],
    sqlite_loop: Callable[[int], object] | None,
) -> float:
    """4 KiB pread, preadinto and pwrite of daxfs's /data and of os.* on ``tmpfs_path``,
    each pair's batches interleaved (the pwrites also with ``sqlite_loop``'s durable
    inserts, if given); the rates (op/s) go into ``dax`` and ``tmpfs`` (the inserts'
    as tmpfs["sqlite"]).  Returns the number of pairs measured."""
    f = open_raw(fs, "/data", "rb+")
    fd = os.open(tmpfs_path, os.O_RDWR)
    try:
        pairs = (
            ("pread", dax_pread_loop(f, offsets), "pread", os_pread_loop(fd, offsets)),
            ("preadinto", dax_preadinto_loop(f, offsets), "preadv", os_preadv_loop(fd, offsets)),
            ("pwrite", dax_pwrite_loop(f, offsets), "pwrite", os_pwrite_loop(fd, offsets, False)),
        )
        for dax_key, dax_loop, os_key, os_loop in pairs:
            loops = [dax_loop, os_loop]
            if dax_key == "pwrite" and sqlite_loop is not None:
                loops.append(sqlite_loop)
            ns = median_ns_per_op_interleaved(loops, timing=timing)
            dax[dax_key], tmpfs[os_key] = per_s(ns[0]), per_s(ns[1])
            if len(ns) > 2:
                tmpfs["sqlite"] = per_s(ns[2])
    finally:
        os.close(fd)
        f.close()
    return float(len(pairs))


def measure_daxfs_file(
    fs: daxfs.FileSystem,
    size: int,
    offsets: Sequence[int],
    timing: Timing,
    report: Report,
    *,
    sequential: bool,
    small: bool = True,
    between: Mapping[str, Callable[[], object]] | None = None,
) -> dict[str, float]:
    """daxfs File.pread/preadinto/pwrite (``small``) and 2 MiB sequential passes
    (``sequential``) on a ``size``-byte file; op/s and GiB/s.  ``between[key]``
    runs after each timed pass of "seq_read" or "seq_write" (an interleaved
    anchor, see FioAnchor)."""
    out: dict[str, float] = {}
    between = dict(between or {})
    one_core: list[float] = []
    f = open_raw(fs, "/data")
    try:
        write_whole(f.pwrite, size)
        if sequential and fs.data.copier is not None:
            # the same passes on one core (the copy on this thread, no copier), each
            # after the anchor's run that follows a pass with the copier: interleaved
            between["seq_write"] = partial(
                one_core_pass,
                between.get("seq_write"),
                fs,
                seq_write_pass(f.pwrite, size),
                one_core,
            )
        loops = (
            ("pread", dax_pread_loop(f, offsets)),
            ("preadinto", dax_preadinto_loop(f, offsets)),
            ("pwrite", dax_pwrite_loop(f, offsets)),
        )
        for key, loop in loops if small else ():
            ns = attempt(
                report, f"daxfs {key}", lambda lp=loop: median_ns_per_op(lp, timing=timing)
            )
            if ns is not None:
                out[key] = per_s(ns)
        if sequential:
            passes = (
                ("seq_read", seq_read_pass(f.preadinto, size)),
                ("seq_write", seq_write_pass(f.pwrite, size)),
            )
            for key, one_pass in passes:
                rate = attempt(
                    report,
                    f"daxfs {key}",
                    lambda p=one_pass, k=key: median_gib_per_s(
                        p, timing=timing, between=between.get(k)
                    ),
                )
                if rate is not None:
                    out[key] = rate
            if one_core and "seq_write" in out:
                out["seq_write_one_core"] = statistics.median(one_core)
    finally:
        f.close()
    return out


def one_core_pass(
    anchor: Callable[[], object] | None,
    fs: daxfs.FileSystem,
    one_pass: Callable[[], int],
    rates: list[float],
) -> None:
    """``anchor()`` (the fio run interleaved with the seq write passes), then one timed
    pass of ``one_pass`` with ``fs``'s copier off (the copy on the writing thread, as
    when no second core is free); its GiB/s joins ``rates``."""
    if anchor is not None:
        anchor()
    copier = fs.data.copier
    fs.data.copier = None
    try:
        start = time.perf_counter_ns()
        nbytes = one_pass()
        rates.append(gib_per_s(nbytes, time.perf_counter_ns() - start))
    finally:
        fs.data.copier = copier


def run_fio(path: Path, size: int, rw: str, plan: Plan) -> float:
    """One time-based fio run with the libpmem engine; its bandwidth in GiB/s.

    Time-based (the offsets wrap around the file) rather than ``--loops``: fio
    reopens and maps the file afresh for every loop, so each loop would take
    the page faults of a new mapping again (about 4x slower on tmpfs), while
    daxfs maps its image once at mount.  ``--ramp_time`` takes the first faults.
    """
    args = [
        "--name=seq",
        "--ioengine=libpmem",
        f"--filename={path}",
        f"--size={size}",
        f"--bs={PIECE}",
        f"--rw={rw}",
        "--direct=1",  # non-temporal stores
        f"--sync={1 if rw == 'write' else 0}",  # a drain after each write: durable
        "--time_based",
        f"--runtime={plan.fio_runtime_ms}ms",
        f"--ramp_time={plan.fio_ramp_ms}ms",
        "--invalidate=0",
        "--output-format=json",
    ]
    env = {**os.environ, **pmem_bench.pmem2_env(), "PMEM_IS_PMEM_FORCE": "1"}
    job = fio_job(args, "libpmem", env=env)
    try:
        return float(job[rw]["bw_bytes"]) / GIB
    except (ValueError, KeyError, TypeError) as exc:
        raise Unavailable(f"cannot parse fio's JSON output: {exc}") from exc


class FioAnchor:
    """fio libpmem runs on a /dev/shm file of its own, one at a time, so that
    they interleave with daxfs's sequential passes (``between`` of
    measure_daxfs_file): a load change on the shared machine then falls on
    both sides alike, as it does for the interleaved 4 KiB rows.

    The file is written once, untimed, on entry: a sparse tmpfs file would be
    read from the shared zero page, faster than any real data.  The first
    Unavailable (no fio, fio failed) is kept in ``error`` and stops the runs.
    """

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.path: Path | None = None
        self.rates: dict[str, list[float]] = {"seq_write": [], "seq_read": []}
        self.error: Unavailable | None = None
        self.version = ""

    def __enter__(self) -> FioAnchor:
        try:
            self.path = pmem_bench.shm_file(self.plan.data_size)
            run_fio(self.path, self.plan.data_size, "write", self.plan)  # fill, untimed
            version = subprocess.run(
                ["fio", "--version"], capture_output=True, text=True, check=False
            )
            self.version = version.stdout.strip()
        except Unavailable as exc:
            self.error = exc
        return self

    def __exit__(self, *exc: object) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)

    def run(self, rw: Literal["read", "write"]) -> None:
        """One fio run of ``rw``; its bandwidth joins ``rates["seq_" + rw]``."""
        if self.error is not None or self.path is None:
            return
        try:
            self.rates[f"seq_{rw}"].append(run_fio(self.path, self.plan.data_size, rw, self.plan))
        except Unavailable as exc:
            self.error = exc

    def medians(self) -> dict[str, float]:
        """Median GiB/s of each kind run at least once (none after an error)."""
        if self.error is not None:
            return {}
        return {key: statistics.median(r) for key, r in self.rates.items() if r}


def measure_libpmem2(plan: Plan, timing: Timing) -> dict[str, str]:
    layout = pmem_bench.Layout(
        seq_size=plan.data_size, piece=PIECE, hot_offset=plan.data_size, hot_size=MIB
    )
    path = pmem_bench.shm_file(layout.file_size)
    try:
        return pmem_bench.measure_libpmem2(path, layout, timing)
    finally:
        path.unlink(missing_ok=True)


def warm_image(fs: daxfs.FileSystem) -> None:
    """Touch every free block once: write a file that fills the filesystem, then delete it.

    A fresh image on /dev/shm is sparse: the first touch of each page faults
    in a zeroed page, which made copy-on-write passes into never-used blocks
    about 5x slower than later passes.  fio (ramp time) and pmem2_bench (an
    untimed pass) write their whole file before timing; this is the same for
    the blocks daxfs's allocator may hand out.

    Every one: the file is written in 2 MiB pieces up to 16 MiB short of the
    free space (the extent map's own blocks need room), then in 64 KiB and
    4 KiB pieces until the filesystem is full.  The 16 MiB left untouched
    before made the third timed pass of ``--quick``'s seq write (64 MiB
    passes on a 320 MiB image: the first to reach the end of the data area)
    the slowest of every run, up to 4x the others.
    """
    free = fs.statvfs("/").f_bavail * fs.statvfs("/").f_frsize
    size = max(0, free - 16 * MIB) // PIECE * PIECE
    f = open_raw(fs, "/warm")
    try:
        write_whole(f.pwrite, size)
        for piece in (pmem_bench.pattern(64 * KIB), pmem_bench.pattern(SMALL)):
            with contextlib.suppress(NoSpace):
                while True:
                    f.pwrite(piece, size)
                    size += len(piece)
    finally:
        f.close()
    fs.unlink("/warm")


def data_section(plan: Plan, timing: Timing, report: Report) -> None:
    offsets = random_offsets(plan.random_size)
    # the sequential rows: at least SEQ_PASSES passes (and fio runs) each, so that one
    # preempted 4 ms pass of --quick moves their medians less on a shared machine
    seq_timing = dataclasses.replace(timing, passes=max(timing.passes, SEQ_PASSES))
    check_free(SHM, 3 * plan.data_size + 512 * MIB)
    # os on tmpfs (the file stays for the interleaved 4 KiB measurements below)
    tmpfs_path = temp_path(SHM, ".data")
    try:
        tmpfs = measure_os_file(tmpfs_path, plan.data_size, offsets, timing, disk=False)
        # daxfs, persist="cpu" on /dev/shm
        image_size = plan.data_size + 256 * MIB
        with FioAnchor(plan) as fio, daxfs_image(SHM, image_size, "cpu") as (fs, _):
            warm_image(fs)
            dax = measure_daxfs_file(
                fs,
                plan.data_size,
                offsets,
                seq_timing,
                report,
                sequential=True,
                small=False,
                between={
                    "seq_read": partial(fio.run, "read"),
                    "seq_write": partial(fio.run, "write"),
                },
            )
            pairs = None
            try:
                with records.sqlite_inserts(SHM, pmem_bench.pattern(SMALL)) as sqlite:
                    pairs = attempt(
                        report,
                        "daxfs 4 KiB pread/preadinto/pwrite",
                        lambda: measure_small_pairs(
                            fs, tmpfs_path, offsets, timing, dax, tmpfs, sqlite.loop
                        ),
                    )
                    report.note(f"durable records: {sqlite.describe()}")
            except (Unavailable, OSError, sqlite3.Error) as exc:
                report.note(f"sqlite anchor unavailable: {type(exc).__name__}: {exc}")
                tmpfs.pop("sqlite", None)
                if pairs is None:
                    pairs = attempt(
                        report,
                        "daxfs 4 KiB pread/preadinto/pwrite",
                        lambda: measure_small_pairs(
                            fs, tmpfs_path, offsets, timing, dax, tmpfs, None
                        ),
                    )
            report.note(
                f"daxfs cpu: mount(persist='cpu') on {SHM}: {describe(fs)}; every free block "
                "written once before timing (a sparse image's first touches fault, ~5x slower)"
            )
            if pairs is not None:
                report.note(
                    "4 KiB rows against tmpfs: daxfs and os batches interleaved "
                    "(bench/common.py median_ns_per_op_interleaved), the same offsets"
                )
    finally:
        tmpfs_path.unlink()
    # os on ext4, and daxfs with msync there
    ext4: dict[str, float] = {}
    msync: dict[str, float] = {}
    try:
        disk_dir = pmem_bench.msync_dir()
        check_free(disk_dir, 2 * plan.random_size + 256 * MIB)
        path = temp_path(disk_dir, ".data")
        try:
            ext4 = measure_os_file(path, plan.random_size, offsets, timing, disk=True)
        finally:
            path.unlink()
        with daxfs_image(disk_dir, plan.random_size + 64 * MIB, "auto") as (fs, _):
            msync = measure_daxfs_file(
                fs, plan.random_size, offsets, timing, report, sequential=False
            )
            report.note(
                f"msync rows: daxfs image on {fs_type(disk_dir)} at {disk_dir}, "
                f"mount(persist='auto'): {describe(fs)}; ext4 anchors on a file there "
                "(reads from the page cache)"
            )
    except (Unavailable, OSError) as exc:
        report.note(f"ext4 and msync rows skipped: {exc}")
    # C ceilings
    ceiling = fio.medians()
    if fio.error is None:
        report.note(
            f"fio: {fio.version}, ioengine=libpmem on {SHM} (PMEM_IS_PMEM_FORCE=1), bs=2M, "
            f"direct=1, write sync=1, time-based; median of {seq_timing.passes} runs of "
            f"{plan.fio_runtime_ms} ms, each run after one daxfs pass (interleaved)"
        )
    else:
        report.note(f"fio anchor unavailable ({fio.error}); the write ceiling is libpmem2 alone")
    pmem2: float | None = None
    try:
        pmem2 = float(measure_libpmem2(plan, timing)["seq_write_gib_s"])
        report.note("libpmem2: bench/pmem2_bench.c memcpy_fn, CACHE_LINE granularity (forced)")
    except (Unavailable, KeyError, ValueError) as exc:
        report.note(f"libpmem2 anchor unavailable: {exc}")

    rand = f"random in {plan.random_size >> 20} MiB"
    seq = f"2 MiB pieces over {plan.data_size >> 20} MiB"
    report.row(
        f"4 KiB pread ({rand}) vs os.pread tmpfs",
        dax.get("pread"),
        tmpfs["pread"],
        "op/s",
        Goal(">=", 1.0),
    )
    report.row("4 KiB preadinto vs os.preadv tmpfs", dax.get("preadinto"), tmpfs["preadv"], "op/s")
    report.row("4 KiB pread vs os.pread ext4", dax.get("pread"), ext4.get("pread"), "op/s")
    report.row(
        "4 KiB pwrite, durable, vs os.pwrite tmpfs (not durable)",
        dax.get("pwrite"),
        tmpfs["pwrite"],
        "op/s",
        Goal(">=", 1.0),
    )
    # durable small records: what a Python user would pick instead (bench/records.py)
    sqlite_rate = tmpfs.get("sqlite")
    report.row(
        "durable 4 KiB record: daxfs pwrite (overwrite) vs sqlite3 WAL FULL insert /dev/shm",
        dax.get("pwrite"),
        sqlite_rate,
        "op/s",
        Goal(">=", 5.0),
    )
    report.row(
        "durable 4 KiB record: daxfs pwrite (overwrite) vs os.pwrite+fdatasync ext4",
        dax.get("pwrite"),
        ext4.get("pwrite_sync"),
        "op/s",
    )
    report.row(
        f"seq read ({seq}) vs fio libpmem",
        dax.get("seq_read"),
        ceiling.get("seq_read"),
        "GiB/s",
        Goal(">=", 0.8),
    )
    report.row(
        "seq write vs fio libpmem",
        dax.get("seq_write"),
        ceiling.get("seq_write"),
        "GiB/s",
        Goal(">=", 0.8),
    )
    report.row(
        "seq write, one core (no copier), vs fio libpmem",
        dax.get("seq_write_one_core"),
        ceiling.get("seq_write"),
        "GiB/s",
    )
    report.row("seq write vs libpmem2", dax.get("seq_write"), pmem2, "GiB/s", Goal(">=", 0.8))
    report.row("seq read vs os.preadv tmpfs", dax.get("seq_read"), tmpfs["seq_read"], "GiB/s")
    report.row("seq write vs os.pwrite tmpfs", dax.get("seq_write"), tmpfs["seq_write"], "GiB/s")
    if msync:
        report.row(
            "msync: 4 KiB pread vs os.pread ext4", msync.get("pread"), ext4.get("pread"), "op/s"
        )
        report.row(
            "msync: 4 KiB pwrite vs os.pwrite+fdatasync ext4",
            msync.get("pwrite"),
            ext4.get("pwrite_sync"),
            "op/s",
        )
        report.row(
            "msync: 4 KiB pwrite vs os.pwrite ext4 (not durable)",
            msync.get("pwrite"),
            ext4.get("pwrite"),
            "op/s",
        )
    report.note(
        "daxfs 2 MiB overwrites are copy-on-write (new blocks, map swing; docs/GUARANTEES.md), "
        "4 KiB overwrites are journaled; fio and libpmem2 copy in place"
    )


# -- latency and threads -------------------------------------------------------


def latency_section(plan: Plan, report: Report) -> None:
    """p50/p99 of single 4 KiB preads and pwrites, and pread throughput with 1, 2, 4
    threads: daxfs against os.* on a tmpfs file, in this run (bench/fs_latency.py)."""
    size = plan.random_size
    offsets = random_offsets(size)
    data = pmem_bench.pattern(SMALL)
    samples = plan.latency_samples
    check_free(SHM, 2 * size + 256 * MIB)
    with daxfs_image(SHM, size + 64 * MIB, "cpu") as (fs, _):
        f = open_raw(fs, "/data")
        try:
            write_whole(f.pwrite, size)
            dax_read = fs_latency.latency(
                "daxfs pread", fs_latency.timed_loop(partial(f.pread, SMALL), offsets), samples
            )
            dax_write = fs_latency.latency(
                "daxfs pwrite (durable)",
                fs_latency.timed_loop(partial(f.pwrite, data), offsets),
                samples,
            )
            files = [open_raw(fs, "/data", "rb") for _ in range(max(THREADS))]
            try:
                dax_threads = {
                    t: fs_latency.threaded_rate(
                        lambda i: dax_pread_loop(files[i], offsets[i::4] or offsets),
                        t,
                        plan.thread_ops,
                        plan.thread_repeats,
                    )
                    for t in THREADS
                }
            finally:
                for g in files:
                    g.close()
        finally:
            f.close()
    path = temp_path(SHM, ".data")
    try:
        fd = os.open(path, os.O_RDWR)
        try:
            write_whole(lambda chunk, off: os.pwrite(fd, chunk, off), size)
            os_read = fs_latency.latency(
                "os.pread tmpfs",
                fs_latency.timed_loop(partial(os.pread, fd, SMALL), offsets),
                samples,
            )
            os_write = fs_latency.latency(
                "os.pwrite tmpfs (not durable)",
                fs_latency.timed_loop(partial(os.pwrite, fd, data), offsets),
                samples,
            )
            os_threads = {
                t: fs_latency.threaded_rate(
                    lambda i: os_pread_loop(fd, offsets[i::4] or offsets),
                    t,
                    plan.thread_ops,
                    plan.thread_repeats,
                )
                for t in THREADS
            }
        finally:
            os.close(fd)
    finally:
        path.unlink()
    report.latencies += [dax_read, os_read, dax_write, os_write]
    report.scaling += [
        Scaling("daxfs 4 KiB pread", dax_threads),
        Scaling("os.pread tmpfs", os_threads),
    ]
    for lat in report.latencies:
        report.note(
            f"latency: {lat.name}: p50 {lat.p50_ns / 1e3:.2f} us, p99 {lat.p99_ns / 1e3:.2f} us "
            f"({lat.samples:,} single operations, each timed)"
        )
    report.row(
        "4 KiB pread p99 latency vs os.pread tmpfs p99 (lower is better)",
        dax_read.p99_ns,
        os_read.p99_ns,
        "ns",
    )
    report.row(
        "4 KiB pwrite p99 latency (durable) vs os.pwrite tmpfs p99 (lower is better)",
        dax_write.p99_ns,
        os_write.p99_ns,
        "ns",
    )
    for t in THREADS[1:]:
        report.row(
            f"4 KiB pread, {t} threads vs os.pread tmpfs, {t} threads",
            dax_threads[t],
            os_threads[t],
            "op/s",
        )


# -- metadata ------------------------------------------------------------------


@dataclasses.dataclass
class Namespace:
    """One side of the metadata benchmark: a directory and the calls on it."""

    prefix: str  # directory path with a trailing "/"
    create: Callable[[str], None]
    stat: Callable[[str], object]
    rename: Callable[[str, str], None]
    unlink: Callable[[str], None]
    listdir: Callable[[], list[str]]


def dax_namespace(fs: daxfs.FileSystem, directory: str) -> Namespace:
    fs_open = fs.open

    def create(path: str) -> None:
        fs_open(path, "xb", buffering=0).close()

    return Namespace(
        directory + "/", create, fs.stat, fs.rename, fs.unlink, lambda: fs.listdir(directory)
    )


def os_namespace(directory: str) -> Namespace:
    os_open, os_close = os.open, os.close
    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC

    def create(path: str) -> None:
        os_close(os_open(path, flags, 0o666))

    return Namespace(
        directory + "/", create, os.stat, os.rename, os.unlink, lambda: os.listdir(directory)
    )


def builtin_namespace(directory: str) -> Namespace:
    """tmpfs through builtins.open, the same call as daxfs's fs.open (create only)."""
    ns = os_namespace(directory)

    def create(path: str) -> None:
        open(path, "xb", buffering=0).close()

    return dataclasses.replace(ns, create=create)


def populate(ns: Namespace, count: int, budget_s: float = float("inf")) -> tuple[int, float, str]:
    """Create up to ``count`` files f0000000, ...; (created, seconds, why it stopped early)."""
    create, prefix = ns.create, ns.prefix
    start = time.perf_counter()
    done = 0
    why = ""
    try:
        for done in range(count):
            create(f"{prefix}f{done:07d}")
            if done % 1000 == 999 and time.perf_counter() - start > budget_s:
                done += 1
                why = f"time budget of {budget_s:.0f} s reached"
                break
        else:
            done = count
    except OSError as exc:
        why = f"{type(exc).__name__}: {exc}"
    return done, time.perf_counter() - start, why


def names(ns: Namespace, count: int) -> list[str]:
    return [f"{ns.prefix}f{i:07d}" for i in range(count)]


def create_loop(ns: Namespace) -> Callable[[int], None]:
    """``loop(n)``: create and close ``n`` new files c0000000, ... in ``ns``, one
    numbering across calls."""
    serial = iter(range(1 << 40))

    def loop(n: int) -> None:
        create, prefix = ns.create, ns.prefix
        for i in islice(serial, n):
            create(f"{prefix}c{i:07d}")

    return loop


def metadata_loops(ns: Namespace, count: int) -> dict[str, Callable[[int], None]]:
    """The timed loops of ``ns`` (``count`` entries): create+close, and with entries
    stat (random names), listdir, rename, unlink."""
    existing = names(ns, count)
    rng = random.Random(SEED)
    picks = [rng.choice(existing) for _ in range(RANDOM_NAMES)] if existing else []
    pick = cycle(picks)

    def stat_loop(n: int) -> None:
        stat = ns.stat
        for path in islice(pick, n):
            stat(path)

    def listdir_loop(n: int) -> None:
        for _ in range(n):
            if len(ns.listdir()) < count:
                raise AssertionError("listdir lost entries")

    serial = iter(range(1 << 40))
    pool = collections.deque(existing)

    def rename_loop(n: int) -> None:
        rename, prefix = ns.rename, ns.prefix
        for i in islice(serial, n):
            old = pool.popleft()
            new = f"{prefix}r{i:07d}"
            rename(old, new)
            pool.append(new)

    def unlink_loop(n: int) -> None:
        unlink, pop = ns.unlink, pool.popleft
        for _ in range(n):
            unlink(pop())

    loops = {"listdir": listdir_loop, "create": create_loop(ns)}
    if existing:
        loops |= {"stat": stat_loop, "rename": rename_loop, "unlink": unlink_loop}
    return loops


def measure_metadata(
    sides: Sequence[Namespace], count: int, timing: Timing, report: Report
) -> list[dict[str, float]]:
    """For each namespace (``count`` entries each): op/s of create+close, stat, rename,
    unlink and entries/s of listdir, every operation's batches interleaved across the
    sides (``median_ns_per_op_interleaved``: a change of load falls on all alike)."""
    loops = [metadata_loops(ns, count) for ns in sides]
    outs: list[dict[str, float]] = [{} for _ in sides]
    budget = max(1, count // (timing.batches + 3))  # operations that use up names
    for key, per_op, max_ops in (
        ("stat", 1, 1 << 30),
        ("listdir", count, 1 << 30),
        ("create", 1, budget),
        ("rename", 1, 1 << 30),
        ("unlink", 1, budget),
    ):
        if not all(key in side for side in loops):
            continue
        try:
            ns = median_ns_per_op_interleaved(
                [side[key] for side in loops], timing=timing, max_ops=max_ops
            )
        except (OSError, Unavailable) as exc:
            report.note(f"{key}: failed: {type(exc).__name__}: {exc}")
            continue
        for out, value in zip(outs, ns, strict=True):
            out[key] = per_op * per_s(value)
    return outs


def stat_threads(ns: Namespace, count: int, plan: Plan) -> dict[int, float]:
    """stat throughput (op/s) of random names with 1, 2, 4 threads (bench/fs_latency.py)."""
    if not count:
        return {}
    rng = random.Random(SEED)
    existing = names(ns, count)
    picks = [rng.choice(existing) for _ in range(RANDOM_NAMES // 16)]

    def make_loop(i: int) -> Callable[[int], None]:
        it = cycle(picks[i::4])
        stat = ns.stat

        def loop(n: int) -> None:
            for path in islice(it, n):
                stat(path)

        return loop

    return {
        t: fs_latency.threaded_rate(make_loop, t, plan.thread_stat_ops, plan.thread_repeats)
        for t in THREADS
    }


def metadata_section(plan: Plan, timing: Timing, report: Report) -> None:
    image_size = max(64 * MIB, plan.entries * 4 * KIB)
    directory = Path(tempfile.mkdtemp(prefix="daxfs-bench-", dir=SHM))
    try:
        with daxfs_image(SHM, image_size, "cpu") as (fs, _):
            fs.mkdir("/d")
            dax_ns = dax_namespace(fs, "/d")
            count, seconds, why = populate(dax_ns, plan.entries)
            rate = f"{count / seconds:,.0f}/s" if seconds > 0 else "-"
            report.note(
                f"metadata: daxfs created {fmt_count(count)} files in {seconds:.1f} s ({rate})"
            )
            if why:
                report.note(
                    f"metadata: daxfs stopped at {fmt_count(count)} of "
                    f"{fmt_count(plan.entries)} files: {why}; both sides measured with "
                    f"{fmt_count(count)} entries"
                )
            (directory / "d").mkdir()
            os_ns = os_namespace(str(directory / "d"))
            populate(os_ns, count)
            dax_threads = stat_threads(dax_ns, count, plan)
            os_threads = stat_threads(os_ns, count, plan)
            dax, tmpfs = measure_metadata([dax_ns, os_ns], count, timing, report)
        (directory / "e").mkdir()
        builtin = builtin_namespace(str(directory / "e"))
        populate(builtin, count)
        serial = iter(range(1 << 40))

        def builtin_create(n: int) -> None:
            for i in islice(serial, n):
                builtin.create(f"{builtin.prefix}c{i:07d}")

        budget = max(1, count // (timing.batches + 3))
        builtin_ns = median_ns_per_op(builtin_create, timing=timing, max_ops=budget)
    finally:
        shutil.rmtree(directory)
    where = f"dir of {fmt_count(count)}"
    report.row(
        f"create+close ({where}) vs os.open+os.close tmpfs",
        dax.get("create"),
        tmpfs.get("create"),
        "op/s",
        Goal(">=", 0.25),
    )
    report.row(
        "create+close vs builtins.open('xb').close() tmpfs",
        dax.get("create"),
        per_s(builtin_ns),
        "op/s",
    )
    report.row(
        f"stat ({where}) vs os.stat tmpfs",
        dax.get("stat"),
        tmpfs.get("stat"),
        "op/s",
        Goal(">=", 0.5),
    )
    report.scaling += [Scaling("daxfs stat", dax_threads), Scaling("os.stat tmpfs", os_threads)]
    for t in THREADS[1:]:
        report.row(
            f"stat, {t} threads vs os.stat tmpfs, {t} threads",
            dax_threads.get(t),
            os_threads.get(t),
            "op/s",
        )
    report.row("rename vs os.rename tmpfs", dax.get("rename"), tmpfs.get("rename"), "op/s")
    report.row("unlink vs os.unlink tmpfs", dax.get("unlink"), tmpfs.get("unlink"), "op/s")
    report.row(
        f"listdir ({where}) vs os.listdir tmpfs",
        dax.get("listdir"),
        tmpfs.get("listdir"),
        "entries/s",
    )


# -- scale ---------------------------------------------------------------------

MOUNT_PROBE = r"""
import gc, os, resource, sys, time, tracemalloc
import daxfs

def rss_kib():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0

path, trace, name = sys.argv[1], sys.argv[2] == "1", sys.argv[3]
gc.collect()
rss_before = rss_kib()
max_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if trace:
    tracemalloc.start()
start = time.perf_counter_ns()
fs = daxfs.mount(path, persist="cpu")
elapsed = time.perf_counter_ns() - start
if trace:
    print("traced_peak_bytes", tracemalloc.get_traced_memory()[1])
    tracemalloc.stop()
print("mount_ns", elapsed)
print("maxrss_delta_kib", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - max_before)
print("rss_delta_kib", rss_kib() - rss_before)
print("rss_kib", rss_kib())
start = time.perf_counter_ns()
fs.stat(name)
print("first_stat_ns", time.perf_counter_ns() - start)
probe = f"{name.rpartition('/')[0]}/probe-{os.getpid()}"
start = time.perf_counter_ns()
fs.open(probe, "xb", buffering=0).close()
print("first_create_ns", time.perf_counter_ns() - start)
fs.unlink(probe)
fs.unmount()
"""


def probe_mount(image: Path, trace: bool, name: str) -> dict[str, float]:
    """Mount ``image`` once in a fresh interpreter: time and memory; then stat ``name``
    and create a file beside it (what mount left for the first operations)."""
    result = subprocess.run(
        [sys.executable, "-c", MOUNT_PROBE, str(image), "1" if trace else "0", name],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines()
        raise Unavailable(f"mount probe failed: {lines[-1] if lines else result.returncode}")
    return {key: float(value) for key, value in parse_results(result.stdout).items()}


def rss_mib() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def stat_loop(stat: Callable[[str], object], picks: Sequence[str]) -> Callable[[int], None]:
    """``loop(n)``: ``stat`` of the next ``n`` paths of ``picks``, cycling through them."""
    it = cycle(picks)

    def loop(n: int) -> None:
        for p in islice(it, n):
            stat(p)

    return loop


def scale_picks(count: int) -> list[str]:
    """The scale row's paths: RANDOM_NAMES drawn with replacement (random.Random(SEED))
    from the ``count`` files f0000000, ... of /big."""
    rng = random.Random(SEED)
    return [f"/big/f{rng.randrange(count):07d}" for _ in range(RANDOM_NAMES)]


def scale_stat(
    fs: daxfs.FileSystem, big_picks: Sequence[str], timing: Timing
) -> tuple[float | None, float]:
    """The scale row: median ns of a stat of ``big_picks`` (None if there are none) and
    of /small's 10 names, the two sides' batches interleaved (the load of a shared
    machine falls on both alike)."""
    small = stat_loop(fs.stat, names(dax_namespace(fs, "/small"), 10))
    if not big_picks:
        return None, median_ns_per_op(small, timing=timing)
    big_ns, small_ns = median_ns_per_op_interleaved(
        [stat_loop(fs.stat, big_picks), small], timing=timing
    )
    return big_ns, small_ns


def scale_section(plan: Plan, timing: Timing, report: Report) -> None:
    target = plan.scale_files
    check_free(SHM, 4 * GIB)
    path = temp_path(SHM, ".daxfs")
    try:
        daxfs.mkfs(path, 4 * GIB)
        fs = daxfs.mount(path, persist="cpu")
        try:
            fs.mkdir("/small")
            fs.mkdir("/big")
            small = dax_namespace(fs, "/small")
            populate(small, 10)
            big = dax_namespace(fs, "/big")
            print(
                f"fs.py: scale: creating up to {fmt_count(target)} files "
                f"(budget {plan.scale_budget_s:.0f} s)...",
                flush=True,
            )
            rss_before = rss_mib()
            count, seconds, why = populate(big, target, plan.scale_budget_s)
            report.note(
                f"scale: created {fmt_count(count)} files in one directory in {seconds:.0f} s "
                f"({count / max(seconds, 1e-9):,.0f}/s); this process grew by "
                f"{rss_mib() - rss_before:,.0f} MiB RSS meanwhile"
            )
            if why:
                report.note(
                    f"scale: stopped at {fmt_count(count)} of {fmt_count(target)} files: {why}; "
                    "the rows below are for what was created, without goals"
                )
            big_picks = scale_picks(count) if count else []
            big_ns, small_ns = scale_stat(fs, big_picks, timing)
        finally:
            with contextlib.suppress(OSError):
                fs.unmount()
        reached = count >= target
        files = fmt_count(count)
        report.row(
            f"stat, random names: dir of {files} vs dir of 10",
            big_ns,
            small_ns,
            "ns",
            Goal("<=", 1.5) if reached else None,
        )
        probe_name = big_picks[0] if big_picks else "/small/f0000000"
        probes = [probe_mount(path, False, probe_name) for _ in range(plan.mount_runs)]
        traced = probe_mount(path, True, probe_name)

        def median_of(key: str) -> float:
            return statistics.median(p[key] for p in probes)

        mount_ms = median_of("mount_ns") / 1e6
        # ru_maxrss misses growth that stays below the peak of the imports; VmRSS sees it
        grew_kib = max(median_of("maxrss_delta_kib"), median_of("rss_delta_kib"))
        report.row(
            f"mount, {files} files (ms) vs the 1 s budget",
            mount_ms,
            1000.0,
            "ms",
            Goal("<=", 1.0) if reached else None,
        )
        report.row(
            f"mount, {files} files: memory (MB) vs 200 MB",
            grew_kib * KIB / 1e6,
            200.0,
            "MB",
            Goal("<=", 1.0) if reached else None,
        )
        report.note(
            f"scale: mount = median of {plan.mount_runs} fresh processes mounting once; memory "
            "= growth of VmRSS (or of ru_maxrss, if more) across mount; tracemalloc peak "
            f"during mount {traced.get('traced_peak_bytes', 0) / 1e3:,.0f} kB; RSS after "
            f"mount {median_of('rss_kib') / 1024:,.0f} MiB in all (python, numpy, daxfs); "
            f"then the first stat took {median_of('first_stat_ns') / 1e3:,.0f} us and "
            f"the first create+close {median_of('first_create_ns') / 1e3:,.0f} us"
        )
        report.note(
            f"scale: stat draws {fmt_count(RANDOM_NAMES)} names with replacement from the "
            "whole directory (more than daxfs's caches hold) and cycles through them; its "
            "batches and the 10 names' interleaved (median_ns_per_op_interleaved)"
        )
    finally:
        path.unlink(missing_ok=True)


# -- profile -------------------------------------------------------------------


def profile_op(name: str, loop: Callable[[int], None], n: int, top: int = 14) -> None:
    """Run ``loop(n)`` under cProfile; print the top functions by own time, per operation."""
    loop(min(n, 200))  # warm caches
    start = time.perf_counter_ns()
    loop(n)
    plain_ns = (time.perf_counter_ns() - start) / n
    profiler = cProfile.Profile()
    profiler.enable()
    loop(n)
    profiler.disable()
    stats = pstats.Stats(profiler)
    entries = stats.stats  # type: ignore[attr-defined]
    total = sum(tt for _, _, tt, _, _ in entries.values())
    print(
        f"\n{name}: {plain_ns / 1000:.2f} us/op unprofiled, "
        f"{total / n * 1e6:.2f} us/op under cProfile ({n:,} ops)"
    )
    print(f"  {'own us/op':>9} {'share':>6} {'calls/op':>8} {'cum us/op':>9}  function")
    ranked = sorted(entries.items(), key=lambda item: item[1][2], reverse=True)
    for (filename, line, func), (_, ncalls, tt, ct, _) in ranked[:top]:
        where = short_location(filename, line, func)
        own, cum = tt / n * 1e6, ct / n * 1e6
        print(f"  {own:9.2f} {tt / total:6.1%} {ncalls / n:8.2f} {cum:9.2f}  {where}")


def short_location(filename: str, line: int, func: str) -> str:
    if filename == "~":
        return func  # a builtin
    marker = f"{os.sep}daxfs{os.sep}"
    if marker in filename:
        filename = "daxfs/" + filename.rsplit(marker, 1)[1]
    else:
        filename = Path(filename).name
    return f"{filename}:{line}({func})"


def run_profile() -> int:
    """cProfile of the hot paths, on the sizes of the full run (a 100,000-entry directory)."""
    plan = FULL_PLAN
    offsets = random_offsets(plan.random_size)
    print(f"cProfile of daxfs hot paths ({cpu_model()}); own time per operation, top first")
    with daxfs_image(SHM, plan.random_size + 128 * MIB, "cpu") as (fs, _):
        warm_image(fs)
        f = open_raw(fs, "/data")
        try:
            write_whole(f.pwrite, plan.random_size)
            profile_op("4 KiB pread", dax_pread_loop(f, offsets), 100_000)
            profile_op("4 KiB preadinto", dax_preadinto_loop(f, offsets), 100_000)
            profile_op("4 KiB pwrite (durable)", dax_pwrite_loop(f, offsets), 30_000)
            size = plan.random_size
            profile_op("2 MiB sequential pwrite (copy-on-write)", pass_loop(f.pwrite, size), 256)
            profile_op("2 MiB sequential preadinto", pass_loop(f.preadinto, size, True), 1024)
        finally:
            f.close()
    with daxfs_image(SHM, max(64 * MIB, plan.entries * 4 * KIB), "cpu") as (fs, _):
        fs.mkdir("/d")
        fs.mkdir("/s")
        ns = dax_namespace(fs, "/d")
        populate(dax_namespace(fs, "/s"), 10)
        count, seconds, why = populate(ns, plan.entries)
        print(f"(created {count:,} files in /d in {seconds:.1f} s{'; ' + why if why else ''})")
        serial = iter(range(1 << 40))

        def create_loop(n: int) -> None:
            for i in islice(serial, n):
                ns.create(f"/d/c{i:07d}")

        rng = random.Random(SEED)
        big = cycle([f"/d/f{rng.randrange(count):07d}" for _ in range(RANDOM_NAMES)])
        small = cycle(f"/s/f{i:07d}" for i in range(10))

        def stat_loop(names: Iterator[str]) -> Callable[[int], None]:
            def loop(n: int) -> None:
                stat = fs.stat
                for p in islice(names, n):
                    stat(p)

            return loop

        profile_op(f"stat, random names in a dir of {count:,}", stat_loop(big), 100_000)
        profile_op("stat, dir of 10", stat_loop(small), 100_000)
        profile_op(f"create+close (dir of {count:,}+)", create_loop, 10_000)
    return 0


def pass_loop(
    op: Callable[[bytearray, int], object], size: int, read: bool = False
) -> Callable[[int], None]:
    """``loop(n)``: n 2 MiB operations, sequential, wrapping around ``size`` bytes."""
    buf = bytearray(PIECE) if read else bytearray(pmem_bench.pattern(PIECE))
    it = cycle(range(0, size - PIECE + 1, PIECE))

    def loop(n: int) -> None:
        for off in islice(it, n):
            op(buf, off)

    return loop


# -- main ----------------------------------------------------------------------


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="daxfs against os.* on tmpfs and ext4, and fio libpmem (see bench/fs.py)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="small sizes and few iterations, no scale section"
    )
    parser.add_argument("--plain", action="store_true", help="plain-text table, without rich")
    parser.add_argument(
        "--profile", action="store_true", help="only profile the hot paths with cProfile"
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=RESULTS_DIR,
        help=f"where the table, JSON and PNG plots go (default {RESULTS_DIR})",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    if not SHM.is_dir():
        print(f"fs benchmark skipped: {SHM} does not exist")
        return 0
    if args.profile:
        return run_profile()
    timing, plan = (QUICK, QUICK_PLAN) if args.quick else (FULL, FULL_PLAN)
    report = Report()
    started = time.perf_counter()
    sections = [
        ("data", partial(data_section, plan, timing, report)),
        ("latency", partial(latency_section, plan, report)),
        ("metadata", partial(metadata_section, plan, timing, report)),
    ]
    if plan.scale_files:
        sections.append(("scale", partial(scale_section, plan, timing, report)))
    else:
        report.note("scale section skipped (--quick): it creates up to 1,000,000 files")
    report.run_sections(sections)
    report.note(
        "not measured: sequential I/O on ext4 and on the msync path (not in the issue); "
        f"total {time.perf_counter() - started:.0f} s"
    )
    mode = "quick" if args.quick else "full"
    title = f"daxfs filesystem vs os.* / fio libpmem ({mode}, {cpu_model()})"
    written, skipped = write_results(
        args.results, title, report.rows, report.notes, report.latencies, report.scaling
    )
    report.notes += skipped
    report.note(f"results written: {', '.join(str(p) for p in written)}")
    print_table(title, report.rows, notes=report.notes, plain=args.plain)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
