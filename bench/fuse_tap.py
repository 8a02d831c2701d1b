"""The FUSE wire tap's cost per request (daxfs/fuse/_wire.py, _tap.c).

    python bench/fuse_tap.py [--rounds N]

Three mounts of bench/fuse.py's in-memory passthrough (MemOperations), served
by DaxFUSE with the C tap (what daxfs mount uses), with the Python tap (the
reference and fallback; DaxFUSE serves it on libfuse's single-threaded loop,
daxfs/fuse/_binding.py says why) and with no tap (libfuse's own read and
writev; multi-threaded, as the C tap's): os.stat (a GETATTR
each time, attr_timeout=0) and 4 KiB O_DIRECT reads of one file, batches of
2,000 interleaved across the three mounts, medians of the rounds, wall time
(the work is in the daemons).  Ratios against "no tap", measured in the same
run.  Prints the load; nothing is asserted.  A focused A/B tool, not part of
``make bench`` (bench/run.py's NOT_BENCHMARKS).
"""

from __future__ import annotations

import argparse
import mmap
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

KINDS = ("c", "python", "none")


def serve(kind: str, mountpoint: str) -> None:
    import mfusepy
    from fuse import MemOperations

    from daxfs.fuse._binding import DaxFUSE

    class NoTap(DaxFUSE):  # type: ignore[misc]
        def init_fuse_3(self, conn: Any, config: Any) -> None:
            mfusepy.FUSE.init_fuse_3(self, conn, config)

    class PythonTap(DaxFUSE):  # type: ignore[misc]
        native_tap = False

    class Ops(MemOperations, mfusepy.Operations):  # type: ignore[misc]
        def init_with_config(self, conn: Any, config: Any) -> None:
            config.use_ino = 1
            print("ready", flush=True)

    binding = {"c": DaxFUSE, "python": PythonTap, "none": NoTap}[kind]
    binding(Ops(), mountpoint, foreground=True, attr_timeout="0", default_permissions=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--serve", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(*args.serve)
        return
    print(f"load before: {os.getloadavg()[0]:.2f}")
    mounts: dict[str, str] = {}
    daemons: dict[str, subprocess.Popen[str]] = {}
    fds: dict[str, tuple[str, int]] = {}
    try:
        for kind in KINDS:
            mp = tempfile.mkdtemp(prefix=f"daxfs-bench-tap-{kind}-")
            mounts[kind] = mp
            daemons[kind] = subprocess.Popen(
                [sys.executable, __file__, "--serve", kind, mp],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            assert daemons[kind].stdout is not None
            if daemons[kind].stdout.readline().strip() != "ready":
                raise SystemExit(f"the {kind} mount did not start")
        time.sleep(0.3)
        for kind, mp in mounts.items():
            path = os.path.join(mp, "f")
            fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
            os.write(fd, b"x" * (1 << 20))
            os.close(fd)
            fds[kind] = (path, os.open(path, os.O_RDONLY | os.O_DIRECT))
        buf = mmap.mmap(-1, 4096)
        n = 2000
        times: dict[tuple[str, str], list[float]] = {
            (k, op): [] for k in KINDS for op in ("stat", "read")
        }
        for r in range(args.rounds):
            for kind in KINDS if r % 2 else reversed(KINDS):
                path, fd = fds[kind]
                t = time.perf_counter_ns()
                for _ in range(n):
                    os.stat(path)
                times[(kind, "stat")].append((time.perf_counter_ns() - t) / n)
                t = time.perf_counter_ns()
                for i in range(n):
                    os.preadv(fd, [buf], (i % 256) * 4096)
                times[(kind, "read")].append((time.perf_counter_ns() - t) / n)
        for op, name in (("stat", "stat"), ("read", "read 4 KiB O_DIRECT")):
            med = {k: statistics.median(times[(k, op)]) for k in KINDS}
            c, py = med["c"] / 1000, med["python"] / 1000
            print(
                f"{name:20} C tap {c:7.1f} us   Python tap {py:7.1f} us"
                f"   no tap {med['none'] / 1000:7.1f} us   C/none {med['c'] / med['none']:.3f}"
                f"   Python/none {med['python'] / med['none']:.3f}"
            )
    finally:
        for _, fd in fds.values():
            os.close(fd)
        for kind, mp in mounts.items():
            subprocess.run(["fusermount3", "-u", mp], check=False, capture_output=True)
            if kind in daemons:
                daemons[kind].wait(30)
            os.rmdir(mp)
        print(f"load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
