"""Focused benchmark of issue 9's create row: open(path, "xb", buffering=0).close()
in a directory of N entries on /dev/shm, against os.open+os.close on tmpfs, in
batches interleaved in one process (the row of bench/fs.py measures a directory of
1,000 with --quick, of 100,000 in a full run; this measures any size in seconds).

    python bench/create_loop.py [--entries N] [--batches B] [--batch-size S] [--cpu]
                                [--against CHECKOUT]

Both directories are filled with N files and the creates made as bench/fs.py's
metadata section makes them (``populate``, ``create_loop``); every batch is S
creates, the two sides' batches interleaved (``median_ns_per_op_interleaved``,
after a warm-up of about 2 S creates each).  The machine is shared: run it under
``chrt -f 10`` and repeat, or time by thread CPU time (``--cpu``: a batch's system
calls count, the waits for a core do not); it prints each side's median and their
ratio (the goal is >= 0.25).

``--against CHECKOUT`` is an A/B against another checkout of daxfs (its own built
extensions, e.g. /work/main): this tree and that one each run in a worker process of
their own, set up alike, and the parent interleaves their batches (this tree's daxfs,
its tmpfs, the other's daxfs, its tmpfs, ...), one batch running at a time, so that
both trees see the same load; it prints each tree's medians and ratio, and the ratio
of the two trees' daxfs medians.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from common import Timing, gc_paused, median_ns_per_op_interleaved
from fs import SHM, Namespace, create_loop, dax_namespace, os_namespace, populate

import daxfs

HERE = Path(__file__).resolve().parent


def image_size(n: int, batches: int, size: int) -> int:
    return max(64 << 20, (n + (batches + 2) * size) * 4096 * 2)


def worker(args: argparse.Namespace) -> int:
    """Set up both sides, then run one batch per line read ("dax" or "tmpfs"), answering
    with the batch's ns per create; "ready" once set up."""
    clock = time.thread_time_ns if args.cpu else time.perf_counter_ns
    n, size = args.entries, args.batch_size
    with filled_sides("daxfs-create-ab-", n, image_size(n, 2 * args.batches, size)) as sides:
        loops: dict[str, Callable[[int], None]] = {
            "dax": create_loop(sides[0]),
            "tmpfs": create_loop(sides[1]),
        }
        with gc_paused():
            for loop in loops.values():
                loop(2 * size)  # the warm-up
            print("ready", flush=True)
            for line in sys.stdin:
                loop = loops[line.strip()]
                start = clock()
                loop(size)
                print((clock() - start) / size, flush=True)
    return 0


@contextlib.contextmanager
def filled_sides(prefix: str, n: int, image_bytes: int) -> Iterator[list[Namespace]]:
    """A daxfs image of ``image_bytes`` mounted and a tmpfs directory, in a new
    directory on /dev/shm named from ``prefix``, each with a directory of ``n``
    files: [daxfs's, tmpfs's]; unmounted and removed after."""
    work = Path(tempfile.mkdtemp(prefix=prefix, dir=SHM))
    try:
        image = work / "image.daxfs"
        daxfs.mkfs(image, image_bytes)
        fs = daxfs.mount(image, persist="cpu")
        try:
            fs.mkdir("/d")
            (work / "tmpfs").mkdir()
            sides = [dax_namespace(fs, "/d"), os_namespace(str(work / "tmpfs"))]
            for ns in sides:
                populate(ns, n)
            yield sides
        finally:
            fs.unmount()
    finally:
        shutil.rmtree(work)


def against(args: argparse.Namespace) -> int:
    """The A/B of this tree and ``args.against``, batches interleaved across two workers."""
    trees = {"this": HERE.parent, "other": Path(args.against).resolve()}
    flags = ["--entries", str(args.entries), "--batches", str(args.batches)]
    flags += ["--batch-size", str(args.batch_size)] + (["--cpu"] if args.cpu else [])
    workers = {}
    for name, root in trees.items():
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), str(HERE)]))
        workers[name] = subprocess.Popen(
            [sys.executable, str(HERE / "create_loop.py"), "--worker", *flags],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
    try:
        for proc in workers.values():
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                raise SystemExit("a worker failed to set up")
        samples: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.batches):
            for name, proc in workers.items():
                for side in ("dax", "tmpfs"):
                    assert proc.stdin is not None
                    assert proc.stdout is not None
                    proc.stdin.write(side + "\n")
                    proc.stdin.flush()
                    samples.setdefault((name, side), []).append(float(proc.stdout.readline()))
    finally:
        for proc in workers.values():
            if proc.stdin is not None:
                proc.stdin.close()
        for proc in workers.values():
            proc.wait()
    med = {key: statistics.median(values) for key, values in samples.items()}
    clock = "thread CPU time" if args.cpu else "wall time"
    print(
        f"create+close, dir of {args.entries:,}, medians of {args.batches} batches of "
        f"{args.batch_size} ({clock}), the two trees' batches interleaved:"
    )
    for name, root in trees.items():
        d, h = med[name, "dax"], med[name, "tmpfs"]
        print(
            f"  {name} ({root}): daxfs {d / 1e3:.1f} us, os.open+os.close tmpfs "
            f"{h / 1e3:.2f} us: {h / d:.3f}x (goal >= 0.25x)"
        )
    print(f"  daxfs this / other: {med['this', 'dax'] / med['other', 'dax']:.3f}")
    return 0


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
    parser.add_argument(
        "--against", metavar="CHECKOUT", help="A/B against another daxfs checkout (its root)"
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if args.against:
        return against(args)
    n, size = args.entries, args.batch_size
    # every batch ``size`` creates: the warm-up doubles up to max_ops, never reaching batch_ns
    timing = Timing(batch_ns=1 << 62, batches=args.batches, passes=1)
    with filled_sides("daxfs-create-", n, image_size(n, args.batches, size)) as sides:
        d, h = median_ns_per_op_interleaved(
            [create_loop(ns) for ns in sides],
            timing=timing,
            max_ops=size,
            clock=time.thread_time_ns if args.cpu else time.perf_counter_ns,
        )
    clock = "thread CPU time" if args.cpu else "wall time"
    print(
        f"create+close, dir of {n:,}: daxfs {d / 1e3:.1f} us, os.open+os.close tmpfs "
        f"{h / 1e3:.2f} us (medians of {args.batches} batches of {size}, {clock}): "
        f"{h / d:.3f}x (goal >= 0.25x)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
