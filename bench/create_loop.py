"""Focused benchmark of issue 9's create row: open(path, "xb", buffering=0).close()
in a directory of N entries on /dev/shm, against os.open+os.close on tmpfs, in
batches interleaved in one process (the row of bench/fs.py measures a directory of
1,000 with --quick, of 100,000 in a full run; this measures any size in seconds).

    python bench/create_loop.py [--entries N] [--batches B] [--batch-size S]

The machine is shared: run it under ``chrt -f 10`` and repeat; it prints the
median and the fastest batch of each side and their ratio (the goal is >= 0.25).
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import tempfile
import time

import daxfs

SHM = "/dev/shm"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--batches", type=int, default=7)
    parser.add_argument("--batch-size", type=int, default=2000)
    args = parser.parse_args()
    n, size = args.entries, args.batch_size
    work = tempfile.mkdtemp(prefix="daxfs-create-", dir=SHM)
    try:
        image = os.path.join(work, "image.daxfs")
        daxfs.mkfs(image, max(64 << 20, (n + args.batches * size) * 4096 * 2))
        fs = daxfs.mount(image, persist="cpu")
        fs.mkdir("/d")
        fs_open = fs.open
        for i in range(n):
            fs_open(f"/d/f{i:07d}", "xb", buffering=0).close()
        tmp = os.path.join(work, "tmpfs")
        os.mkdir(tmp)
        flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC
        for i in range(n):
            os.close(os.open(f"{tmp}/f{i:07d}", flags, 0o666))
        gc.disable()
        dax: list[float] = []
        host: list[float] = []
        try:
            for b in range(args.batches):
                names = [f"/d/c{b * size + i:07d}" for i in range(size)]
                start = time.perf_counter_ns()
                for name in names:
                    fs_open(name, "xb", buffering=0).close()
                dax.append((time.perf_counter_ns() - start) / size / 1e3)
                names = [f"{tmp}/c{b * size + i:07d}" for i in range(size)]
                start = time.perf_counter_ns()
                for name in names:
                    os.close(os.open(name, flags, 0o666))
                host.append((time.perf_counter_ns() - start) / size / 1e3)
        finally:
            gc.enable()
        fs.unmount()
    finally:
        shutil.rmtree(work)
    d, h = statistics.median(dax), statistics.median(host)
    print(
        f"create+close, dir of {n:,}: daxfs {d:.1f} us (fastest {min(dax):.1f}), "
        f"os.open+os.close tmpfs {h:.2f} us (fastest {min(host):.2f}): {h / d:.3f}x (goal >= 0.25x)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
