"""Focused benchmark of bench/fs.py's scale row: stat of random names, dir of N vs dir of 10.

    python bench/stat_scale.py IMAGE [--files N] [--rounds R] [--threads]

bench/fs.py's scale section builds a 4 GiB image with a million files on
/dev/shm (several minutes) and measures the row once.  This runs the same
measurement on an image kept between runs, so that a change to the stat path
can be measured in seconds: if IMAGE does not exist it is made as the scale
section makes it (mkfs 4 GiB, /small with 10 files, /big with N files, the
same names and the same create calls); then each round mounts it, draws the
same random names as the scale section (2^18 with replacement from /big,
random.Random(3)) and measures them as the scale section does (``scale_stat``:
stat of those against stat of the 10 names of /small, batch by batch
interleaved).  It prints each round's medians and ratio, then the median ratio.
``--threads`` adds stat throughput with 1, 2 and 4 threads on each set
(``fs_latency.threaded_rate``, one run of 100,000 stats a thread after a warm-up).

The image is not removed: delete it when done (it is 4 GiB of /dev/shm).
Nothing is asserted.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import fs_latency
from common import FULL, GIB
from fs import dax_namespace, names, populate, scale_picks, scale_stat, stat_loop

import daxfs


def make(image: Path, files: int) -> None:
    daxfs.mkfs(image, 4 * GIB)
    fs = daxfs.mount(image, persist="cpu")
    try:
        fs.mkdir("/small")
        fs.mkdir("/big")
        populate(dax_namespace(fs, "/small"), 10)
        count, seconds, why = populate(dax_namespace(fs, "/big"), files)
        print(f"made {image}: {count} files in {seconds:.0f} s {why}", flush=True)
    finally:
        fs.unmount()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image", type=Path)
    parser.add_argument("--files", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", action="store_true")
    parser.add_argument(
        "--no-remember",
        action="store_true",
        help="the C stat path does not put the misses it answers into its answer table",
    )
    args = parser.parse_args(argv)
    if not args.image.exists():
        make(args.image, args.files)
    big = scale_picks(args.files)
    ratios = []
    for r in range(args.rounds):
        fs = daxfs.mount(args.image, persist="cpu")
        if args.no_remember and fs._fast is not None:
            fs._fast.remember = False
        try:
            start = time.perf_counter_ns()
            fs.stat(big[0])
            first = (time.perf_counter_ns() - start) / 1e6
            big_ns, small_ns = scale_stat(fs, big, FULL)
            assert big_ns is not None  # big is not empty
            ratios.append(big_ns / small_ns)
            print(
                f"round {r}: big {big_ns:,.0f} ns  small {small_ns:,.0f} ns  "
                f"ratio {big_ns / small_ns:.2f}x  (first stat {first:.0f} ms)",
                flush=True,
            )
            if args.threads:
                small = names(dax_namespace(fs, "/small"), 10)
                for t in (1, 2, 4):
                    rates = [
                        fs_latency.threaded_rate(
                            lambda k, p=picks, st=fs.stat: stat_loop(
                                st, p[k * 997 :] + p[: k * 997]
                            ),
                            t,
                            100_000,
                            1,
                        )
                        for picks in (big, small)
                    ]
                    print(f"  threads {t}: big {rates[0]:,.0f} op/s  small {rates[1]:,.0f} op/s")
        finally:
            fs.unmount()
    print(f"median ratio {statistics.median(ratios):.2f}x over {len(ratios)} rounds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
