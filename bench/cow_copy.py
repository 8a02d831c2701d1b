"""Focused micro-benchmark of the 2 MiB copy-on-write overwrite (issue 9's seq-write row).

A 64 MiB file on a 320 MiB image in /dev/shm, warmed as ``bench/fs.py`` warms
it, overwritten in 2 MiB pieces.  Each round times one pass (32 writes) of
each variant, interleaved, so that the machine's load hits them alike:

  bare      ``Region.memcpy`` of the piece in place + fence (fio's libpmem work)
  sync      ``File.pwrite`` with the copy made by ``Device.write`` (no copier)
  async     ``File.pwrite`` with the copy on another core (``daxfs.fs._copy``)
  nohelp    as async, but the joiner waits instead of copying what is left

Prints the median us per 2 MiB write of each, over ``--rounds`` rounds.
Run it under ``chrt -f 10`` on a shared machine for steadier figures.

``--timeline`` instead times where one write's time goes on the writing
thread, through a stand-in for the copier that notes the time around its
``start`` and ``join`` (and one for the C committer): before the copy starts
(``File.pwrite`` to ``Copier.start``: the write path, the transaction, the
run's search and checked bitmap flip), while it runs (the bookkeeping on
this core: the old run's check, the map change, the record, the index
update, the commit's seal and line diff), the join (the rest of the copy),
the C commit, and what follows it; medians over the passes after two warm
ones.  ``--cpu`` takes thread CPU time instead of wall time (the figure to
compare on a loaded machine), ``--no-copy`` skips the copy itself (the
filesystem's work alone).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from daxfs.fs import _copy
from daxfs.pmem.pmem_device import PmemDevice

sys.path.insert(0, str(Path(__file__).parent))
import fs as bench_fs
import pmem as pmem_bench

MIB = 1 << 20
PIECE = 2 * MIB


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--size", type=int, default=64, help="file size in MiB")
    parser.add_argument(
        "--tune",
        action="append",
        default=[],
        metavar="WSPIN,JSPIN,CHUNK,YIELD",
        help="also an async variant with these worker and joiner spins (ns) and piece size",
    )
    parser.add_argument(
        "--timeline", action="store_true", help="instead: the phases of one write (see above)"
    )
    parser.add_argument("--cpu", action="store_true", help="--timeline in thread CPU time")
    parser.add_argument("--no-copy", action="store_true", help="--timeline without the copy")
    args = parser.parse_args(argv)
    size = args.size * MIB
    if args.timeline:
        return timeline(size, args.rounds, args.cpu, not args.no_copy)
    with bench_fs.daxfs_image(Path("/dev/shm"), 320 * MIB, "cpu") as (fs, _):
        bench_fs.warm_image(fs)
        f = bench_fs.open_raw(fs, "/data")
        try:
            bench_fs.write_whole(f.pwrite, size)
            data = fs.data
            copier = data.copier
            assert copier is not None, "no copier: not a native device in a flush mode"
            nohelp = _copy.Copier(fs.store.view, copier.mode, help=False)
            device = fs.device
            assert isinstance(device, PmemDevice)
            region = device.native_region()
            assert region is not None
            piece = pmem_bench.pattern(PIECE)
            offsets = range(0, size - PIECE + 1, PIECE)
            scratch = (device.size - PIECE) // PIECE * PIECE  # in place, past the data

            def bare() -> None:
                for _ in offsets:
                    region.memcpy(scratch, piece, True)

            default = _copy.tune(0, 0, 64, True)
            _copy.tune(*default)

            def writes(
                c: _copy.Copier | None, tune: tuple[int, int, int, bool, int] = default
            ) -> Callable[[], None]:
                def run() -> None:
                    _copy.tune(*tune)
                    data.copier = c
                    for off in offsets:
                        f.pwrite(piece, off)

                return run

            variants = {
                "bare": bare,
                "sync": writes(None),
                "async": writes(copier),
                "nohelp": writes(nohelp),
            }
            for spec in args.tune:
                ws, js, chunk, y = (int(x) for x in spec.split(","))
                variants[f"async {spec}"] = writes(copier, (ws, js, chunk, bool(y), default[4]))
            times: dict[str, list[float]] = {k: [] for k in variants}
            for _ in range(args.rounds):
                for name, run in variants.items():
                    t0 = time.perf_counter_ns()
                    run()
                    times[name].append((time.perf_counter_ns() - t0) / len(offsets) / 1000)
            data.copier = copier
            _copy.tune(*default)
            print(f"us per 2 MiB write, median of {args.rounds} passes of {len(offsets)}:")
            for name, values in times.items():
                q = statistics.quantiles(values, n=4)
                med = statistics.median(values)
                print(f"  {name:22s} {med:7.1f}  (quartiles {q[0]:.1f}-{q[2]:.1f})")
            print(f"  async copier: {copier.stats}; nohelp: {nohelp.stats}")
            nohelp.close()
        finally:
            f.close()
    return 0


#: the timeline's phases: (name, from mark, to mark)
PHASES = (
    ("before the copy starts", "entry", "start"),
    ("Copier.start", "start", "started"),
    ("while the copy runs", "started", "join"),
    ("join (the rest of the copy)", "join", "joined"),
    ("to the C commit", "joined", "commit"),
    ("C commit (log, 3 fences, apply)", "commit", "committed"),
    ("after the commit", "committed", "return"),
    ("total", "entry", "return"),
)


class _Marks(dict[str, int]):
    """The clock at each mark of the current write."""


class _TimedCopier:
    """Stands in for DataPath.copier: notes the clock around start and join."""

    def __init__(self, copier: _copy.Copier | None, marks: _Marks, clock: Callable[[], int]):
        self.copier = copier
        self.marks = marks
        self.clock = clock
        self.mode = copier.mode if copier is not None else "none"

    def start(self, offset: int, data: object) -> None:
        self.marks["start"] = self.clock()
        if self.copier is not None:
            self.copier.start(offset, data)  # type: ignore[arg-type]
        self.marks["started"] = self.clock()

    def join(self) -> None:
        self.marks["join"] = self.clock()
        if self.copier is not None:
            self.copier.join()
        self.marks["joined"] = self.clock()


class _TimedCommitter:
    """Stands in for Journal.committer: notes the clock around commit."""

    def __init__(self, committer: object, marks: _Marks, clock: Callable[[], int]):
        self.committer = committer
        self.marks = marks
        self.clock = clock

    def commit(self, *args: object) -> object:
        self.marks["commit"] = self.clock()
        done = self.committer.commit(*args)  # type: ignore[attr-defined]
        self.marks["committed"] = self.clock()
        return done

    def __getattr__(self, name: str) -> object:
        return getattr(self.committer, name)


def timeline(size: int, rounds: int, cpu: bool, copy: bool) -> int:
    """Print the median us of each phase of a 2 MiB copy-on-write pwrite (--timeline)."""
    clock = time.thread_time_ns if cpu else time.perf_counter_ns
    marks = _Marks()
    got: dict[str, list[float]] = {name: [] for name, _, _ in PHASES}
    with bench_fs.daxfs_image(Path("/dev/shm"), 320 * MIB, "cpu") as (fs, _):
        bench_fs.warm_image(fs)
        f = bench_fs.open_raw(fs, "/data")
        try:
            bench_fs.write_whole(f.pwrite, size)
            data, journal = fs.data, fs.journal
            real = data.copier
            assert real is not None, "no copier: not a native device in a flush mode"
            assert journal.committer is not None, "no C committer"
            committer = journal.committer
            data.copier = _TimedCopier(real if copy else None, marks, clock)  # type: ignore[assignment]
            journal.committer = _TimedCommitter(committer, marks, clock)  # type: ignore[assignment]
            piece = pmem_bench.pattern(PIECE)
            try:
                for r in range(rounds + 2):
                    for off in range(0, size - PIECE + 1, PIECE):
                        marks.clear()
                        marks["entry"] = clock()
                        f.pwrite(piece, off)
                        marks["return"] = clock()
                        if r < 2:
                            continue  # warm passes
                        for name, a, b in PHASES:
                            got[name].append((marks[b] - marks[a]) / 1000)
            finally:
                data.copier = real
                journal.committer = committer
            what = "thread CPU time" if cpu else "wall time"
            copied = "" if copy else ", the copy skipped"
            print(f"us per 2 MiB write ({what}{copied}), medians of {len(got['total'])} writes:")
            for name, values in got.items():
                print(f"  {name:34s} {statistics.median(values):7.1f}")
            print(f"  copier: {real.stats}")
        finally:
            f.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
