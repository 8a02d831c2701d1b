"""The kernel's own scale row: os.stat of random names in a tmpfs directory of N vs one of 10.

    python bench/kernel_scale.py [DIR] [--files N]

The anchor for bench/stat_scale.py's ratio (issue 9: stat in a directory of
1M entries within 1.5x of one in a directory of 10): the same method on the
host's tmpfs through the kernel's dentry cache -- N empty files in DIR/big and
10 in DIR/small, 2^18 names drawn with replacement from big
(random.Random(3)), os.stat in batches of 4,096 alternating with batches on
small, three passes, medians.  DIR (default: a new directory on /dev/shm) is
removed afterwards.  Nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import tempfile
import time

BATCH = 4096
PICKS = 1 << 18


def batch_ns(paths: list[str], lo: int) -> float:
    stat = os.stat
    start = time.perf_counter_ns()
    for path in paths[lo : lo + BATCH]:
        stat(path)
    return (time.perf_counter_ns() - start) / BATCH


def run(root: str, files: int) -> tuple[float, float]:
    """Median ns of a stat in big and in small."""
    big, small = os.path.join(root, "big"), os.path.join(root, "small")
    for folder, count in ((big, files), (small, 10)):
        os.makedirs(folder)
        for i in range(count):
            os.close(os.open(os.path.join(folder, f"f{i:07d}"), os.O_CREAT | os.O_WRONLY, 0o644))
    rng = random.Random(3)
    big_paths = [os.path.join(big, f"f{rng.randrange(files):07d}") for _ in range(PICKS)]
    small_paths = [os.path.join(small, f"f{i % 10:07d}") for i in range(PICKS)]
    for path in big_paths[:50_000]:  # warm-up
        os.stat(path)
    big_ns: list[float] = []
    small_ns: list[float] = []
    for _ in range(3):
        for lo in range(0, PICKS, BATCH):
            big_ns.append(batch_ns(big_paths, lo))
            small_ns.append(batch_ns(small_paths, lo))
    return statistics.median(big_ns), statistics.median(small_ns)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", nargs="?", help="a new directory on tmpfs (default: /dev/shm)")
    parser.add_argument("--files", type=int, default=1_000_000)
    args = parser.parse_args()
    root = args.dir or tempfile.mkdtemp(prefix="daxfs-kernel-scale-", dir="/dev/shm")
    try:
        big_ns, small_ns = run(root, args.files)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(
        f"os.stat on {root}: dir of {args.files:,} {big_ns:,.0f} ns, dir of 10 {small_ns:,.0f} ns,"
        f" ratio {big_ns / small_ns:.2f}x (load {os.getloadavg()[0]:.1f})"
    )
