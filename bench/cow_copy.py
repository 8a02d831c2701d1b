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
    args = parser.parse_args(argv)
    size = args.size * MIB
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


if __name__ == "__main__":
    sys.exit(main())
