"""The memory floor of a stat miss among 1,000,000 names, by index layout, in bare C.

    python bench/stat_floor.py [--plain]

bench/stat_floor.c searches a directory index of N random 64-bit keys laid out
as daxfs's DirIndex is (three arrays, searched by interpolation as before,
through a bucket array of 4-8 keys a bucket as daxfs/fs/_stat.c did next, or
through one of 64-128 keys a bucket with a guess in it, as _stat.c now does:
"guess"), or as one array of 32-byte entries, on 4 KiB or 2 MiB pages, with and without the copy
of a 256-byte record from a random place of a 1 GiB /dev/shm file; each lookup
waits for the one before.  Rows: each layout among 1,000,000 names against the
same among 10 (ns a lookup; lower is better).  docs/ARCHITECTURE.md ("The stat
miss path") quotes these figures; nothing is asserted.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from common import GIB, Row, Unavailable, build_c, cpu_model, parse_args, print_table, run_c
from pmem import shm_file

SOURCE = Path(__file__).resolve().parent / "stat_floor.c"
LAYOUTS = ("interp", "fence", "packed", "packed_fence", "guess")


def measure(counts: Sequence[int], only: str = "") -> dict[int, dict[str, float]]:
    """Run bench/stat_floor.c for each count of names on one 1 GiB /dev/shm file:
    every measurement, or ``only`` the one of that name (e.g. "guess_4k_rec_ns")."""
    binary = build_c(SOURCE, hint="install gcc")
    path = shm_file(GIB, written=True, spare=256 << 20)  # no first-touch faults
    try:
        return {
            n: {
                k: float(v)
                for k, v in run_c(
                    binary, [str(path), str(n), *([only] if only else [])], timeout=900
                ).items()
            }
            for n in counts
        }
    finally:
        path.unlink(missing_ok=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv, "a stat miss's memory work by index layout (bench/stat_floor.c)")
    rows: list[Row] = []
    notes: list[str] = []
    try:
        got = measure([1_000_000, 10])
        for pages in ("4k", "2m"):
            for layout in LAYOUTS:
                for rec in ("", "_rec"):
                    key = f"{layout}_{pages}{rec}_ns"
                    what = "index + record" if rec else "index only"
                    rows.append(
                        Row(
                            f"{layout}, {pages} pages, {what}: 1,000,000 names vs 10 (ns)",
                            got[1_000_000][key],
                            got[10][key],
                            "ns",
                        )
                    )
        notes.append(
            "bare C (bench/stat_floor.c); each lookup waits for the one before; records "
            "on /dev/shm (4 KiB pages); interp = DirIndex searched as before, fence = "
            "as _stat.c did next, guess = as _stat.c now searches it"
        )
    except (Unavailable, OSError, KeyError) as exc:
        notes.append(f"stat floor unavailable: {type(exc).__name__}: {exc}")
    print_table(f"stat miss floor in bare C ({cpu_model()})", rows, notes=notes, plain=args.plain)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
