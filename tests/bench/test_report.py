"""bench/report.py on synthetic numbers: the table carries the goal column, and the
text, JSON and PNG files are written (nothing is timed here)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture
def bench() -> Iterator[tuple[ModuleType, ModuleType]]:
    """bench/common.py and bench/report.py, imported as the benchmarks import them."""
    sys.path.insert(0, str(BENCH))
    try:
        import common
        import report

        yield common, report
    finally:
        sys.path.remove(str(BENCH))


def synthetic(common: ModuleType, report: ModuleType) -> tuple[list[Any], list[Any], list[Any]]:
    rows = [
        common.Row("4 KiB pread vs os.pread tmpfs", 2.0e6, 1.0e6, "op/s", common.Goal(">=", 1.0)),
        common.Row("stat vs os.stat tmpfs", 1.0e5, 5.0e5, "op/s", common.Goal(">=", 0.5)),
        common.Row("lookup, 1M vs 10", 1200.0, 1000.0, "ns", common.Goal("<=", 1.5)),
        common.Row("listdir vs os.listdir", 3.0e5, 5.0e6, "entries/s"),
        common.Row("seq write vs fio", 4.0, None, "GiB/s", common.Goal(">=", 0.8)),
    ]
    latencies = [
        report.Latency("daxfs pread", 900.0, 1700.0, 100),
        report.Latency("os.pread tmpfs", 1300.0, 3500.0, 100),
    ]
    scaling = [
        report.Scaling("daxfs 4 KiB pread", {1: 1.0e6, 2: 1.1e6, 4: 1.2e6}),
        report.Scaling("os.stat tmpfs", {1: 4.0e5, 2: 7.0e5, 4: 7.5e5}),
    ]
    return rows, latencies, scaling


def test_results_are_written_with_goals(
    bench: tuple[ModuleType, ModuleType], tmp_path: Path
) -> None:
    common, report = bench
    rows, latencies, scaling = synthetic(common, report)
    written, skipped = report.write_results(
        tmp_path, "synthetic", rows, ["a note"], latencies, scaling
    )
    assert skipped == []  # matplotlib is a dev dependency: the plots are made
    names = {p.name for p in written}
    assert names == {
        "fs-table.txt",
        "fs-results.json",
        "ratios.png",
        "latency.png",
        "threads.png",
    }
    for path in written:
        assert path.parent == tmp_path
        assert path.stat().st_size > 0
    for png in ("ratios.png", "latency.png", "threads.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    table = (tmp_path / "fs-table.txt").read_text().splitlines()
    header = table[1].split()
    assert header[-2:] == ["goal", "met"]
    by_name = {line.split("  ")[0].strip(): line for line in table[3:]}
    assert by_name["4 KiB pread vs os.pread tmpfs"].split()[-4:] == ["2.00x", ">=", "1x", "yes"]
    assert by_name["stat vs os.stat tmpfs"].split()[-4:] == ["0.20x", ">=", "0.5x", "NO"]
    assert by_name["lookup, 1M vs 10"].split()[-4:] == ["1.20x", "<=", "1.5x", "yes"]
    assert by_name["listdir vs os.listdir"].split()[-3:] == ["0.06x", "-", "info"]
    assert by_name["seq write vs fio"].split()[-4:] == ["n/a", ">=", "0.8x", "n/a"]  # no anchor
    assert table[-1] == "a note"

    data = json.loads((tmp_path / "fs-results.json").read_text())
    first = data["rows"][0]
    assert first["goal"] == ">= 1x"
    assert first["met"] == "yes"
    assert first["ratio"] == pytest.approx(2.0)
    assert data["latency_ns"][1]["p99_ns"] == 3500.0
    assert data["threads_op_s"][1]["rates"]["4"] == 7.5e5


def test_percentile_is_nearest_rank(bench: tuple[ModuleType, ModuleType]) -> None:
    _, report = bench
    samples = list(range(1, 101))
    assert report.percentile(samples, 0.5) == 50
    assert report.percentile(samples, 0.99) == 99
    assert report.percentile([7], 0.99) == 7


def test_gc_paused_restores_the_collector_as_it_was(bench: tuple[ModuleType, ModuleType]) -> None:
    import gc

    common, _ = bench
    was = gc.isenabled()
    try:
        for before in (True, False):
            (gc.enable if before else gc.disable)()
            with pytest.raises(KeyError), common.gc_paused():
                assert not gc.isenabled()
                raise KeyError("the error passes through")
            assert gc.isenabled() is before
    finally:
        (gc.enable if was else gc.disable)()


def test_bandwidth_runs_the_anchor_between_timed_passes(
    bench: tuple[ModuleType, ModuleType],
) -> None:
    common, _ = bench
    events: list[str] = []

    def one_pass() -> int:
        events.append("pass")
        return 1 << 20

    timing = common.Timing(batch_ns=1, batches=1, passes=3)
    rate = common.median_gib_per_s(one_pass, timing=timing, between=lambda: events.append("anchor"))
    assert rate > 0
    # one untimed warm-up pass, then each timed pass followed by one anchor run
    assert events == ["pass"] + ["pass", "anchor"] * 3
