"""Results of bench/fs.py on disk: the table as text and JSON, and PNG plots.

    write_results(directory, title, rows, notes, latencies, scaling) -> [paths]

writes, into ``directory`` (bench/results/ by default; gitignored but for
its README):

    fs-table.txt    the printed table (plain text): each row with its daxfs
                    median, the anchor measured in the same run, the ratio,
                    the goal and whether it is met; then the notes
    fs-results.json the same rows, the latency percentiles and the thread
                    scaling, as numbers
    ratios.png      each row that has a goal: its ratio (daxfs / anchor, or
                    daxfs time / anchor time) and the goal it must reach,
                    green where met, red where not (log scale)
    latency.png     p50 and p99 latency of single 4 KiB operations (pread,
                    pwrite) of daxfs and of the tmpfs anchor
    threads.png     throughput against the number of threads (1, 2, 4) for
                    4 KiB pread and stat, daxfs and the tmpfs anchor

Without matplotlib the plots are skipped with a note (``Unavailable``); the
text and JSON are always written.  Nothing here measures or asserts: it
only renders what the benchmark measured (tests/bench/test_report.py runs it
on synthetic numbers).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from common import BENCH_DIR, Row, Unavailable, format_plain

RESULTS_DIR = BENCH_DIR / "results"


@dataclasses.dataclass(frozen=True)
class Latency:
    """Percentiles of single-operation latency, in ns."""

    name: str  # e.g. "daxfs pread"
    p50_ns: float
    p99_ns: float
    samples: int


@dataclasses.dataclass(frozen=True)
class Scaling:
    """Throughput (op/s, all threads together) by number of threads."""

    name: str  # e.g. "daxfs pread"
    rates: Mapping[int, float]  # threads -> op/s


def write_results(
    directory: Path,
    title: str,
    rows: Sequence[Row],
    notes: Sequence[str],
    latencies: Sequence[Latency],
    scaling: Sequence[Scaling],
) -> tuple[list[Path], list[str]]:
    """Write the table, the JSON and the plots; return (files written, notes on what
    was skipped)."""
    directory.mkdir(parents=True, exist_ok=True)
    written = [
        _write(directory / "fs-table.txt", format_plain(title, rows, notes) + "\n"),
        _write(directory / "fs-results.json", to_json(title, rows, latencies, scaling)),
    ]
    skipped: list[str] = []
    try:
        written += plot_all(directory, title, rows, latencies, scaling)
    except Unavailable as exc:
        skipped.append(f"plots skipped: {exc}")
    return written, skipped


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def to_json(
    title: str, rows: Sequence[Row], latencies: Sequence[Latency], scaling: Sequence[Scaling]
) -> str:
    return json.dumps(
        {
            "title": title,
            "rows": [
                {
                    "name": row.name,
                    "daxfs": row.value,
                    "anchor": row.anchor,
                    "unit": row.unit,
                    "ratio": row.ratio,
                    "goal": None if row.goal is None else str(row.goal),
                    "met": row.verdict,
                }
                for row in rows
            ],
            "latency_ns": [dataclasses.asdict(lat) for lat in latencies],
            "threads_op_s": [
                {"name": s.name, "rates": {str(k): v for k, v in s.rates.items()}} for s in scaling
            ],
        },
        indent=2,
    )


# -- plots ---------------------------------------------------------------------


def _pyplot() -> Any:
    """matplotlib.pyplot with the Agg backend (no display), or Unavailable."""
    try:
        import matplotlib
    except ImportError as exc:
        raise Unavailable(f"matplotlib is not installed ({exc})") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_all(
    directory: Path,
    title: str,
    rows: Sequence[Row],
    latencies: Sequence[Latency],
    scaling: Sequence[Scaling],
) -> list[Path]:
    out = [plot_ratios(directory / "ratios.png", title, rows)]
    if latencies:
        out.append(plot_latency(directory / "latency.png", latencies))
    if scaling:
        out.append(plot_threads(directory / "threads.png", scaling))
    return out


def plot_ratios(path: Path, title: str, rows: Sequence[Row]) -> Path:
    """Each row with a goal and a ratio: a bar for the ratio, a mark for the goal."""
    plt = _pyplot()
    goals = [row for row in rows if row.goal is not None and row.ratio is not None]
    fig, ax = plt.subplots(figsize=(11, 0.5 * len(goals) + 1.8))
    for i, row in enumerate(goals):
        assert row.goal is not None
        assert row.ratio is not None
        met = row.goal.met(row.ratio)
        ax.barh(i, row.ratio, color="tab:green" if met else "tab:red", alpha=0.8)
        ax.plot([row.goal.factor] * 2, [i - 0.4, i + 0.4], color="black", linewidth=2)
        ax.annotate(
            f"{row.ratio:.2f}x (goal {row.goal})",
            (max(row.ratio, row.goal.factor), i),
            xytext=(4, 0),
            textcoords="offset points",
            va="center",
            fontsize=8,
        )
    ax.set_yticks(range(len(goals)), [_short(row.name) for row in goals], fontsize=8)
    ax.invert_yaxis()
    if goals:
        ax.set_xscale("log")
        ratios = [r.ratio for r in goals if r.ratio]
        lo = min([*ratios, *(r.goal.factor for r in goals if r.goal)])
        hi = max([*ratios, *(r.goal.factor for r in goals if r.goal)])
        ax.set_xlim(lo / 2, hi * 12)  # room for the labels right of the bars
    ax.axvline(1.0, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("ratio to the anchor measured in the same run (black mark: goal)")
    ax.set_title(title, fontsize=9)
    return _save(plt, fig, path)


def plot_latency(path: Path, latencies: Sequence[Latency]) -> Path:
    """p50 and p99 of each operation, side by side, in microseconds."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.38
    xs = range(len(latencies))
    p50 = [lat.p50_ns / 1e3 for lat in latencies]
    p99 = [lat.p99_ns / 1e3 for lat in latencies]
    ax.bar([x - width / 2 for x in xs], p50, width, label="p50")
    ax.bar([x + width / 2 for x in xs], p99, width, label="p99")
    for x, a, b in zip(xs, p50, p99, strict=True):
        ax.annotate(f"{a:.2f}", (x - width / 2, a), ha="center", va="bottom", fontsize=7)
        ax.annotate(f"{b:.2f}", (x + width / 2, b), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(list(xs), [lat.name for lat in latencies], fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("latency of one 4 KiB operation (us, log scale)")
    ax.set_title("4 KiB operation latency percentiles (same run)", fontsize=9)
    ax.legend()
    return _save(plt, fig, path)


def plot_threads(path: Path, scaling: Sequence[Scaling]) -> Path:
    """Throughput against threads, one line per operation and side."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for s in scaling:
        threads = sorted(s.rates)
        ax.plot(threads, [s.rates[t] for t in threads], marker="o", label=s.name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    all_threads = sorted({t for s in scaling for t in s.rates})
    ax.set_xticks(all_threads, [str(t) for t in all_threads])
    ax.set_xlabel("threads")
    ax.set_ylabel("operations per second, all threads")
    ax.set_title("throughput against threads (same run)", fontsize=9)
    ax.legend(fontsize=8)
    return _save(plt, fig, path)


def _save(plt: Any, fig: Any, path: Path) -> Path:
    """Lay out ``fig``, write it to ``path`` as PNG, and free it."""
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _short(name: str, width: int = 72) -> str:
    return name if len(name) <= width else name[: width - 1] + "\u2026"


def percentile(sorted_ns: Sequence[int], q: float) -> float:
    """The ``q``-quantile (0..1) of sorted samples (nearest rank)."""
    if not sorted_ns:
        return math.nan
    rank = min(len(sorted_ns) - 1, max(0, math.ceil(q * len(sorted_ns)) - 1))
    return float(sorted_ns[rank])
