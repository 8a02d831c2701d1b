"""``daxfs stress IMAGE --seconds N --seed S``: random workloads that check themselves.

Runs daxfs.testing.stress: fsx (a model-checked random workload on one file,
with remounts and fsck) and the threaded namespace stress in a scratch
directory of IMAGE, and both again on simulated devices with power failures
and a full disk.  Prints one line per phase with what it did, one line per
failure with the seed and the way to reproduce it, and exits 1 if anything
failed (0 otherwise).  IMAGE must hold a daxfs (``daxfs mkfs`` first); only
the scratch directory ``/.daxfs-stress-SEED`` is written, and it is removed
when nothing failed.  ``--dax never`` runs every phase through the block
layer (the image as a block device, simulated block devices), and
``--cache-size SIZE`` with it bounds every mount's page cache (as the other
commands' ``--cache-size``).
"""

from __future__ import annotations

import argparse
import random
import shlex
import sys
import time
from typing import Any

from daxfs.cli.common import add_cache_size_option, add_dax_option, add_parser
from daxfs.errors import InvalidArgument
from daxfs.fs.mount import mount
from daxfs.testing.stress import PHASES, run_stress


def register(sub: Any) -> None:
    parser = add_parser(
        sub,
        "stress",
        "run self-checking random workloads on an image",
        "Run fsx and the threaded namespace stress on IMAGE (in a scratch directory) and on "
        "simulated devices with power failures and a full disk. Exit 1 if anything failed.",
    )
    parser.add_argument("image", metavar="IMAGE", help="image file holding a daxfs")
    parser.add_argument("--seconds", type=float, default=60.0, help="time budget (default 60)")
    parser.add_argument("--seed", type=int, default=None, help="default: random, printed")
    parser.add_argument("--threads", type=int, default=4, help="namespace stress threads")
    parser.add_argument(
        "--phase",
        action="append",
        choices=tuple(PHASES),
        default=None,
        help="run only this phase (repeatable; default: all)",
    )
    parser.add_argument(
        "--without",
        action="append",
        default=[],
        metavar="OP",
        help="do not make this operation (e.g. mapfsync, punch), to work around a known bug",
    )
    add_dax_option(parser)
    add_cache_size_option(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if not args.seconds > 0:
        raise InvalidArgument(f"--seconds must be positive, got {args.seconds}")
    if args.threads < 1:
        raise InvalidArgument(f"--threads must be at least 1, got {args.threads}")
    # a daxfs that mounts (with these options): else one error line first
    with mount(args.image, dax=args.dax, cache_size=args.cache_size):
        pass
    seed = args.seed if args.seed is not None else random.randrange(1 << 31)
    argv = ["daxfs", "stress", args.image, "--seconds", f"{args.seconds:g}", "--seed", str(seed)]
    for phase in args.phase or ():
        argv += ["--phase", phase]
    for op in args.without:
        argv += ["--without", op]
    if args.dax != "inode":
        argv += ["--dax", args.dax]
    if args.cache_size is not None:
        argv += ["--cache-size", args.cache_size]
    print(f"$ {shlex.join(argv)}", flush=True)
    start = time.monotonic()
    report = run_stress(
        args.image,
        args.seconds,
        seed,
        without=args.without,
        threads=args.threads,
        phases=args.phase or tuple(PHASES),
        say=lambda line: print(line, flush=True),
        dax=args.dax,
        cache_size=args.cache_size,
    )
    verdict = "ok" if report.ok else f"{len(report.failures)} failure(s)"
    print(f"seed {seed}: {verdict} in {time.monotonic() - start:.0f} s", flush=True)
    sys.stdout.flush()
    return 0 if report.ok else 1
