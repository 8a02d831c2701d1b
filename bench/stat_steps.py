"""Where a stat's time goes, step by step: daxfs/fs/_stat.c built with its step clocks.

    python bench/stat_steps.py IMAGE [--rounds R]

IMAGE is bench/stat_scale.py's kept image (make it with stat_scale.py first: 1,000,000
files in /big, 10 in /small).  daxfs/fs/_stat.c is compiled once more, into bench/build/,
with -DDAXFS_STAT_STEPS: each step of ``StatPath.stat`` then adds the time-stamp
counter's cycles since the step before to its own total, behind an lfence, so that
the cache and TLB misses a step waits for are charged to it (the overlap of a miss
with the steps after it, which the CPU finds in the module daxfs imports, is lost:
the per-step figures add up to more than a plain stat).  A step over 20,000 cycles
(the thread preempted) is dropped and counted.  The mount's ``StatPath`` is that
build (FileSystem makes it from ``daxfs.fs.filesystem.StatPath``, replaced here).

Three cases, each over the same calls as the scale row makes (``fs.stat`` of the
picks, the GC off), then the same loop on a mount with the plain module, thread
time (a shared machine's preemptions excluded):

- big, random names: the scale row's 2^18 picks of /big (the miss path, memory
  cold: the answer table cannot hold them);
- big, one name again (hot): one name of /big, not put into the answer table
  (``remember`` off): the same code path with every line in the cache;
- small (hit): the 10 names of /small, answered by the answer table.

Prints each step's cycles in ns, over all the stats of the case (a step some stats
skip says in how many it ran), the median of ``--rounds`` rounds.  Nothing is
asserted.  docs/ARCHITECTURE.md ("The stat miss path") quotes it.
"""

from __future__ import annotations

import argparse
import gc
import importlib.machinery
import importlib.util
import os
import statistics
import sys
import sysconfig
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from common import build_c
from fs import scale_picks

import daxfs
from daxfs.fs import filesystem

SOURCE = Path(__file__).resolve().parent.parent / "daxfs" / "fs" / "_stat.c"
# the STEP numbers of _stat.c, in the order a miss takes them
STEPS = [
    (0, "epoch, high-water mark"),
    (1, "answer table + path cache"),
    (2, "HEAD (split, LastHead)"),
    (3, "directory_index"),
    (4, "BLAKE2b of the name"),
    (5, "bucket bounds (fence)"),
    (6, "index probe (keys, values, name)"),
    (7, "record place (places[])"),
    (8, "record prefetch + inode cache"),
    (9, "record copy (the wait left)"),
    (10, "record checks + crc32c"),
    (11, "fields of the record"),
    (12, "build_stat (the result made)"),
    (13, "back from path_stat"),
    (14, "answer table insert"),
]
DROPPED = 15


def build() -> ModuleType:
    """daxfs.fs._stat compiled with -DDAXFS_STAT_STEPS (bench/build/_stat), loaded."""
    flags = [
        *sysconfig.get_config_var("CFLAGS").split(),
        *sysconfig.get_config_var("CCSHARED").split(),
        "-shared",
        "-O2",
        "-DDAXFS_STAT_STEPS",
        f"-I{sysconfig.get_paths()['include']}",
    ]
    path = build_c(SOURCE, cflags=flags, hint="install gcc")
    loader = importlib.machinery.ExtensionFileLoader("daxfs.fs._stat", str(path))
    spec = importlib.util.spec_from_file_location("daxfs.fs._stat", path, loader=loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def tsc_ghz(fast: Any) -> float:
    """The time-stamp counter's rate, against perf_counter over 0.2 s."""
    t0, c0 = time.perf_counter_ns(), fast.tsc()
    time.sleep(0.2)
    return float(fast.tsc() - c0) / (time.perf_counter_ns() - t0)


def loop_ns(stat: Callable[[str], object], picks: Sequence[str]) -> float:
    start = time.thread_time_ns()
    for p in picks:
        stat(p)
    return (time.thread_time_ns() - start) / len(picks)


def cases(fs: daxfs.FileSystem) -> list[tuple[str, list[str], bool]]:
    big = scale_picks(1_000_000)
    small = [f"/small/f{i:07d}" for i in range(10)] * (len(big) // 10)
    for p in big:  # HEAD remembered, the inode file's places known, as in the scale row
        fs.stat(p)
    one = big[len(big) // 2]
    return [
        ("big, random names", big, True),
        ("big, one name again (hot)", [one] * len(big), False),
        ("small (hit)", small, True),
    ]


def measure(image: Path, module: ModuleType | None, rounds: int) -> dict[str, list[Any]]:
    """Each case's rounds: (ns a stat, steps() or None) with ``module``'s StatPath."""
    plain = filesystem.StatPath
    if module is not None:
        filesystem.StatPath = module.StatPath  # type: ignore[misc]
    try:
        fs = daxfs.mount(image, persist="cpu")
    finally:
        filesystem.StatPath = plain  # type: ignore[misc]
    out: dict[str, list[Any]] = {}
    try:
        fast = fs._fast
        assert fast is not None
        todo = cases(fs)
        gc.disable()
        try:
            for _ in range(rounds):
                for label, picks, remember in todo:
                    fast.remember = remember
                    if module is not None:
                        fast.steps()
                    ns = loop_ns(fs.stat, picks)
                    steps = fast.steps() if module is not None else None
                    out.setdefault(label, []).append((ns, steps, len(picks)))
        finally:
            gc.enable()
        if module is not None:
            out["ghz"] = [tsc_ghz(fast)]
    finally:
        fs.unmount()
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image", type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    if not args.image.exists():
        print(
            f"stat_steps: {args.image}: no such image (make it with stat_scale.py)", file=sys.stderr
        )
        return 2
    timed = measure(args.image, build(), args.rounds)
    plain = measure(args.image, None, args.rounds)
    ghz = timed.pop("ghz")[0]
    print(
        f"TSC {ghz:.3f} GHz; load average {os.getloadavg()[0]:.1f}; medians of {args.rounds} rounds"
    )
    for label, runs in timed.items():
        ns = statistics.median(r[0] for r in runs)
        plain_ns = statistics.median(r[0] for r in plain[label])
        print(f"{label}: {plain_ns:,.0f} ns a stat ({ns:,.0f} ns with the step clocks)")
        inside = 0.0
        for number, name in STEPS:
            # each round's cycles over its stats, in ns, and the share of stats taking it
            cost = statistics.median(r[1][number][0] / ghz / r[2] for r in runs)
            share = statistics.median(r[1][number][1] / r[2] for r in runs)
            inside += cost
            if share >= 0.01:
                taken = f"  (in {share:.0%} of the stats)" if share < 0.99 else ""
                print(f"    {name:34s} {cost:6,.0f} ns{taken}")
        dropped = statistics.median(r[1][DROPPED][1] for r in runs)
        print(f"    {'the call, the lock, the loop':34s} {ns - inside:6,.0f} ns")
        print(f"    ({dropped:,.0f} step times dropped: preempted)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
