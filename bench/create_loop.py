"""Focused benchmark of issue 9's create row: open(path, "xb", buffering=0).close()
in a directory of N entries on /dev/shm, against os.open+os.close on tmpfs, in
batches interleaved in one process (the row of bench/fs.py measures a directory of
1,000 with --quick, of 100,000 in a full run; this measures any size in seconds).

    python bench/create_loop.py [--entries N] [--batches B] [--batch-size S] [--cpu]

Both directories are filled with N files and the creates made as bench/fs.py's
metadata section makes them (``populate``, ``create_loop``); every batch is S
creates, the two sides' batches interleaved (``median_ns_per_op_interleaved``,
after a warm-up of about 2 S creates each).  The machine is shared: run it under
``chrt -f 10`` and repeat, or time by thread CPU time (``--cpu``: a batch's system
calls count, the waits for a core do not); it prints each side's median and their
ratio (the goal is >= 0.25).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from common import Timing, median_ns_per_op_interleaved
from fs import SHM, create_loop, dax_namespace, os_namespace, populate

import daxfs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--batches", type=int, default=7)
    parser.add_argument("--batch-size", type=int, default=2000)
    parser.add_argument(
        "--cpu",
        action="store_true",
        help="time batches by the thread's CPU time (system calls included): a loaded machine",
    )
    args = parser.parse_args()
    n, size = args.entries, args.batch_size
    # every batch ``size`` creates: the warm-up doubles up to max_ops, never reaching batch_ns
    timing = Timing(batch_ns=1 << 62, batches=args.batches, passes=1)
    work = Path(tempfile.mkdtemp(prefix="daxfs-create-", dir=SHM))
    try:
        image = work / "image.daxfs"
        daxfs.mkfs(image, max(64 << 20, (n + (args.batches + 2) * size) * 4096 * 2))
        fs = daxfs.mount(image, persist="cpu")
        try:
            fs.mkdir("/d")
            (work / "tmpfs").mkdir()
            sides = [dax_namespace(fs, "/d"), os_namespace(str(work / "tmpfs"))]
            for ns in sides:
                populate(ns, n)
            d, h = median_ns_per_op_interleaved(
                [create_loop(ns) for ns in sides],
                timing=timing,
                max_ops=size,
                clock=time.thread_time_ns if args.cpu else time.perf_counter_ns,
            )
        finally:
            fs.unmount()
    finally:
        shutil.rmtree(work)
    clock = "thread CPU time" if args.cpu else "wall time"
    print(
        f"create+close, dir of {n:,}: daxfs {d / 1e3:.1f} us, os.open+os.close tmpfs "
        f"{h / 1e3:.2f} us (medians of {args.batches} batches of {size}, {clock}): "
        f"{h / d:.3f}x (goal >= 0.25x)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
