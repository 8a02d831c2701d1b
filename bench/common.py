"""Shared helpers for the daxfs benchmarks (bench/*.py).

Every benchmark compares a daxfs operation with an *anchor*: the same
operation done by a reference implementation (PMDK's libpmem2 through a small
C program, the kernel, or another daxfs path), and states a goal as a ratio
to the anchor.  Benchmarks only print; nothing here asserts on times.

Timing: ``median_ns_per_op`` runs a loop in batches long enough that the
timer's own cost (tens of ns) is negligible, after a warm-up that also finds
the batch size, and returns the median ns per operation over the batches.
The C anchors (e.g. pmem2_bench.c) use the same scheme so the two sides are
measured alike.

C anchors are built with ``build_c`` into bench/build/ (gitignored) and run
with ``run_c``; both raise ``Unavailable`` with a message saying what is
missing, and the benchmark then prints its daxfs numbers without an anchor.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

BENCH_DIR = Path(__file__).resolve().parent
BUILD_DIR = BENCH_DIR / "build"
GIB = 1 << 30
MIB = 1 << 20
KIB = 1 << 10


class Unavailable(Exception):
    """A benchmark or anchor cannot run on this machine; str() says why."""


# -- options -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Timing:
    """How long to measure: batches of at least ``batch_ns`` each."""

    batch_ns: int
    batches: int
    passes: int  # for bandwidth runs: timed passes after one untimed pass


FULL = Timing(batch_ns=20_000_000, batches=15, passes=7)
QUICK = Timing(batch_ns=1_000_000, batches=5, passes=3)


def parse_args(argv: Sequence[str] | None, description: str) -> argparse.Namespace:
    """The options every benchmark accepts: --quick and --plain."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--quick", action="store_true", help="small sizes and few iterations (a few seconds)"
    )
    parser.add_argument("--plain", action="store_true", help="plain-text table, without rich")
    return parser.parse_args(argv)


# -- timing ------------------------------------------------------------------


def median_ns_per_op(
    loop: Callable[[int], object],
    *,
    timing: Timing = FULL,
    max_ops: int = 1 << 30,
) -> float:
    """Median ns per operation of ``loop(n)``, which must run ``n`` operations.

    Warm-up: ``loop`` runs with n = 1, 2, 4, ... until one call lasts
    ``timing.batch_ns`` (or n reaches ``max_ops``); that n is the batch size.
    Then ``timing.batches`` batches are timed with ``time.perf_counter_ns``.
    The garbage collector is off while timing.
    """
    return median_ns_per_op_interleaved([loop], timing=timing, max_ops=max_ops)[0]


def median_ns_per_op_interleaved(
    loops: Sequence[Callable[[int], object]],
    *,
    timing: Timing = FULL,
    max_ops: int = 1 << 30,
    clock: Callable[[], int] = time.perf_counter_ns,
) -> list[float]:
    """``median_ns_per_op`` of each loop, their timed batches interleaved (a, b, a, b, ...).

    On a machine shared with other work the load changes from second to
    second; interleaving puts each change on every side alike, so the ratio
    of two medians is steadier than with one side measured after the other.
    ``clock`` times the batches: wall time, or ``time.thread_time_ns`` (the
    thread's CPU time, its system calls' included) on a loaded machine, where
    the time spent waiting for a core would swamp both sides.
    """
    with gc_paused():
        sizes = [_batch_size(loop, timing, max_ops) for loop in loops]
        per_op: list[list[float]] = [[] for _ in loops]
        for _ in range(timing.batches):
            for loop, n, samples in zip(loops, sizes, per_op, strict=True):
                start = clock()
                loop(n)
                samples.append((clock() - start) / n)
    return [statistics.median(samples) for samples in per_op]


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """The cyclic garbage collector off inside the block (as it was, after it).

    Timed loops run without it so that a collection triggered by one side's
    garbage is not charged to the other side's batch.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _batch_size(loop: Callable[[int], object], timing: Timing, max_ops: int) -> int:
    """The n for which ``loop(n)`` lasts ``timing.batch_ns`` (doubling from 1; warms up)."""
    n = 1
    while True:
        start = time.perf_counter_ns()
        loop(n)
        if time.perf_counter_ns() - start >= timing.batch_ns or n >= max_ops:
            return n
        n = min(2 * n, max_ops)


def time_op(op: Callable[[], object], *, timing: Timing = FULL) -> float:
    """Median ns per call of ``op()`` (includes the cost of calling ``op`` itself).

    Prefer ``median_ns_per_op`` with a loop that calls the operation inline
    when the operation takes less than a microsecond.
    """

    def loop(n: int) -> None:
        for _ in range(n):
            op()

    return median_ns_per_op(loop, timing=timing)


def median_gib_per_s(
    one_pass: Callable[[], int],
    *,
    timing: Timing = FULL,
    between: Callable[[], object] | None = None,
) -> float:
    """Median bandwidth in GiB/s of ``one_pass()``, which returns the bytes it moved.

    One untimed pass first (warm-up, page faults), then ``timing.passes``.
    ``between()``, if given, runs (untimed) after each timed pass: an anchor
    measured there is interleaved with this one (a, b, a, b, ...), as
    ``median_ns_per_op_interleaved`` does for short operations.
    """
    one_pass()
    rates = []
    for _ in range(timing.passes):
        start = time.perf_counter_ns()
        nbytes = one_pass()
        rates.append(gib_per_s(nbytes, time.perf_counter_ns() - start))
        if between is not None:
            between()
    return statistics.median(rates)


def gib_per_s(nbytes: int, ns: float) -> float:
    """Bandwidth in GiB/s of ``nbytes`` moved in ``ns`` nanoseconds."""
    return nbytes / GIB / (ns / 1e9) if ns > 0 else float("inf")


# -- C anchors ---------------------------------------------------------------


def build_c(
    source: Path,
    *,
    libs: Sequence[str] = (),
    hint: str = "",
    cflags: Sequence[str] = ("-O2", "-Wall", "-Wextra"),
) -> Path:
    """Compile ``source`` with gcc -O2 into bench/build/; return the executable.

    Rebuilds only when the source is newer than the executable.  Raises
    ``Unavailable`` (with ``hint``, e.g. which package to install) when the
    compiler, a header or a library is missing.
    """
    cc = os.environ.get("CC", "gcc")
    compiler = shutil.which(cc)
    if compiler is None:
        raise Unavailable(f"no C compiler ({cc}) to build {source.name}: install gcc or set CC")
    BUILD_DIR.mkdir(exist_ok=True)
    binary = BUILD_DIR / source.stem
    if binary.exists() and binary.stat().st_mtime >= source.stat().st_mtime:
        return binary
    partial = binary.with_name(f".{binary.name}.{os.getpid()}")
    cmd = [compiler, *cflags, "-o", str(partial), str(source), *(f"-l{lib}" for lib in libs)]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        raise Unavailable(
            f"cannot build {source.name}: {_first_error(result.stderr)}" + _hint(hint)
        )
    partial.replace(binary)
    return binary


def _hint(hint: str) -> str:
    return f" ({hint})" if hint else ""


def _first_error(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in lines:
        if "error" in line or "cannot find" in line:
            return line
    return lines[0] if lines else "compiler failed without a message"


def run_c(
    binary: Path,
    args: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 300,
) -> dict[str, str]:
    """Run a C anchor and return its ``name value`` output lines as a dict.

    ``env`` entries are added to the current environment.  Raises
    ``Unavailable`` with the program's error output if it fails.
    """
    full_env = {**os.environ, **(env or {})}
    try:
        result = subprocess.run(
            [str(binary), *args],
            capture_output=True,
            text=True,
            env=full_env,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise Unavailable(f"{binary.name} did not run: {exc}") from exc
    if result.returncode != 0:
        message = result.stderr.strip() or f"exit status {result.returncode}"
        raise Unavailable(f"{binary.name} failed: {message}")
    return parse_results(result.stdout)


def parse_results(text: str) -> dict[str, str]:
    """``name value`` lines to a dict; other lines are ignored."""
    results = {}
    for line in text.splitlines():
        name, _, value = line.strip().partition(" ")
        if name and value:
            results[name] = value.strip()
    return results


def fio_job(
    args: Sequence[str],
    engine: str,
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 600,
) -> dict[str, Any]:
    """Run fio with ``args`` (``--output-format=json`` among them); its first job's JSON.

    Raises ``Unavailable`` when fio is missing, does not run, fails or reports
    a job error (naming ``engine`` and fio's first line before its JSON), or
    prints no JSON; the caller reads the fields it needs from the job.
    """
    fio = shutil.which("fio")
    if fio is None:
        raise Unavailable("fio is not installed")
    try:
        result = subprocess.run(
            [fio, *args], capture_output=True, text=True, env=env, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise Unavailable(f"fio did not run: {exc}") from exc
    start = result.stdout.find("{")
    preamble = (result.stdout[:start] if start >= 0 else result.stdout) + result.stderr
    message = next((line.strip() for line in preamble.splitlines() if line.strip()), "")
    if start < 0 or result.returncode != 0:
        raise Unavailable(f"fio {engine} failed: {message or f'exit {result.returncode}'}")
    try:
        job: dict[str, Any] = json.loads(result.stdout[start:])["jobs"][0]
    except (ValueError, KeyError, IndexError) as exc:
        raise Unavailable(f"cannot parse fio's JSON output: {exc}") from exc
    error = job.get("error")
    if error:
        raise Unavailable(f"fio {engine} failed: {message or f'error {error}'}")
    return job


# -- machine -----------------------------------------------------------------


def fs_type(path: str | os.PathLike[str]) -> str:
    """Filesystem type ("ext4", "tmpfs", ...) holding ``path``, from /proc/self/mounts."""
    target = os.path.realpath(path)
    best, best_type = "", "unknown"
    try:
        with open("/proc/self/mounts", encoding="utf-8", errors="replace") as mounts:
            for line in mounts:
                fields = line.split()
                if len(fields) < 3:
                    continue
                point = fields[1].replace("\\040", " ")
                inside = target == point or target.startswith(point.rstrip("/") + "/")
                if inside and len(point) >= len(best):
                    best, best_type = point, fields[2]
    except OSError:
        pass
    return best_type


def cpu_model() -> str:
    """The CPU's model name, from /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return "unknown CPU"


# -- results -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Goal:
    """daxfs / anchor must be ``<=`` or ``>=`` ``factor``."""

    relation: Literal["<=", ">="]
    factor: float

    def met(self, ratio: float) -> bool:
        return ratio <= self.factor if self.relation == "<=" else ratio >= self.factor

    def __str__(self) -> str:
        return f"{self.relation} {self.factor:g}x"


@dataclasses.dataclass(frozen=True)
class Row:
    """One line of a results table.

    ``value`` and ``anchor`` are in ``unit`` ("ns" or "GiB/s"); ``anchor`` is
    None when the anchor could not run.  Without a goal the row is
    informational.
    """

    name: str
    value: float
    anchor: float | None
    unit: str
    goal: Goal | None = None

    @property
    def ratio(self) -> float | None:
        if self.anchor is None or self.anchor == 0:
            return None
        return self.value / self.anchor

    @property
    def verdict(self) -> str:
        ratio = self.ratio
        if self.goal is None:
            return "info"
        if ratio is None:
            return "n/a"
        return "yes" if self.goal.met(ratio) else "NO"


def format_value(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if unit == "ns":
        return f"{value:,.0f} ns" if value >= 100 else f"{value:.1f} ns"
    if unit.endswith("/s") and unit != "GiB/s":  # rates such as op/s: whole numbers
        return f"{value:,.0f} {unit}" if value >= 100 else f"{value:.1f} {unit}"
    return f"{value:.2f} {unit}"


def table_cells(row: Row) -> list[str]:
    ratio = row.ratio
    return [
        row.name,
        format_value(row.value, row.unit),
        format_value(row.anchor, row.unit),
        "n/a" if ratio is None else f"{ratio:.2f}x",
        "-" if row.goal is None else str(row.goal),
        row.verdict,
    ]


HEADERS = ("name", "daxfs median", "anchor median", "ratio", "goal", "met")


def print_table(
    title: str, rows: Iterable[Row], *, notes: Sequence[str] = (), plain: bool = False
) -> None:
    """Print the results with rich, or as plain text if rich is missing or ``plain``."""
    rows = list(rows)
    if not plain:
        try:
            _print_rich(title, rows, notes)
        except ImportError:
            pass
        else:
            return
    print(format_plain(title, rows, notes))


def _print_rich(title: str, rows: Sequence[Row], notes: Sequence[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for i, header in enumerate(HEADERS):
        table.add_column(header, justify="left" if i == 0 else "right", no_wrap=i > 0)
    styles = {"yes": "green", "NO": "bold red"}
    for row in rows:
        cells = table_cells(row)
        style = styles.get(row.verdict)
        cells[-1] = f"[{style}]{cells[-1]}[/]" if style else cells[-1]
        table.add_row(*cells)
    console = Console(width=None if sys.stdout.isatty() else 110)
    console.print(table)
    for note in notes:
        console.print(note, highlight=False, markup=False)


def format_plain(title: str, rows: Sequence[Row], notes: Sequence[str] = ()) -> str:
    """The table as plain text, columns aligned."""
    lines = [list(HEADERS), *(table_cells(row) for row in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEADERS))]
    out = [title]
    for n, line in enumerate(lines):
        cells = [
            cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i])
            for i, cell in enumerate(line)
        ]
        out.append("  ".join(cells).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    out.extend(notes)
    return "\n".join(out)
