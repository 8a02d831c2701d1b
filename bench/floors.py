"""The floors: what the unavoidable memory work of three daxfs operations costs in bare C.

    python bench/floors.py [--quick] [--plain]

Issue 9's goals not met are explained by floors (docs/ARCHITECTURE.md, "Fast
paths"): this benchmark measures them, so that the figures quoted there can be
reproduced.  bench/floors.c runs on a 512 MiB /dev/shm file, written through
once first (a sparse file's first touches fault); every figure is a median of 7
rounds, in ns per operation:

  - the durable 4 KiB overwrite's protocol (a redo journal: the log with its
    CRC-32C, the header, the data and the inode record in place, applied_seq;
    four fences) against one 4 KiB copy and one fence (data written once);
  - a 2 MiB non-temporal copy into new places (copy-on-write) against in place;
  - a stat miss's memory work among 1,000,000 names against the same among 10:
    bench/stat_floor.c's lookup as daxfs/fs/_stat.c makes it (the bucket array
    and the guess in the key's bucket, the 256-byte record from a random place of
    1 GiB of /dev/shm, each lookup waiting for the one before; bench/stat_floor.py
    has the other layouts).

The rows carry no goal: they say how far below daxfs's own figures (bench/fs.py,
same machine) the hardware would let it go.  --quick changes nothing here (the
program takes about 15 s).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from common import MIB, Row, Unavailable, build_c, cpu_model, parse_args, print_table, run_c
from pmem import shm_file
from stat_floor import measure as stat_floor

SOURCE = Path(__file__).resolve().parent / "floors.c"
FILE_SIZE = 512 * MIB  # the device area of the overwrite and the 2 MiB copies
STAT_FLOOR = "guess_4k_rec_ns"  # as _stat.c: bucket array + guess, the record on 4 KiB pages


def measure() -> dict[str, float]:
    """bench/floors.c's figures (ns) and bench/stat_floor.c's STAT_FLOOR (probe_*)."""
    binary = build_c(SOURCE, cflags=("-O2", "-Wall", "-Wextra", "-msse4.2"), hint="install gcc")
    path = shm_file(FILE_SIZE, written=True, spare=256 * MIB)  # no first-touch faults
    try:
        out = run_c(binary, [str(path)], timeout=600)
    finally:
        path.unlink(missing_ok=True)
    try:
        figures = {name: float(value) for name, value in out.items()}
    except ValueError as exc:
        raise Unavailable(f"cannot parse floors' output: {exc}") from exc
    got = stat_floor([1_000_000, 10], STAT_FLOOR)
    figures["probe_1m_ns"], figures["probe_10_ns"] = (got[n][STAT_FLOOR] for n in (1_000_000, 10))
    return figures


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv, "the floors of issue 9's goals, in bare C (see bench/floors.c)")
    rows: list[Row] = []
    notes: list[str] = []
    try:
        f = measure()
        rows = [
            Row(
                "floor: durable 4 KiB overwrite, journal protocol (ns) vs one copy + fence",
                f["overwrite_ns"],
                f["one_copy_ns"],
                "ns",
            ),
            Row(
                "floor: 2 MiB non-temporal copy to new places (ns) vs in place",
                f["cow_2m_ns"],
                f["inplace_2m_ns"],
                "ns",
            ),
            Row(
                "floor: stat miss memory work (as _stat.c), 1,000,000 names (ns) vs 10 names",
                f["probe_1m_ns"],
                f["probe_10_ns"],
                "ns",
            ),
        ]
        notes.append(
            "bare C on /dev/shm files (bench/floors.c; the stat row bench/stat_floor.c's "
            f"{STAT_FLOOR}): non-temporal stores and sfence, CRC-32C by the crc32 "
            "instruction; no Python, no filesystem; lower is better"
        )
    except (Unavailable, OSError, KeyError) as exc:
        notes.append(f"floors unavailable: {type(exc).__name__}: {exc}")
    print_table(f"floors in bare C ({cpu_model()})", rows, notes=notes, plain=args.plain)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
