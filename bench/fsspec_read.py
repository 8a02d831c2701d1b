"""pandas reading a Parquet file through ``daxfs://`` against the same file on tmpfs (issue 11).

    python bench/fsspec_read.py [--quick] [--plain]

One run writes a Parquet file of about 256 MiB (--quick: 32 MiB) of random
float64 columns (they do not compress, so the file is as large as the
data), once as a plain file on /dev/shm and once into a daxfs image on
/dev/shm (mounted persist="cpu") through ``daxfs://``, then times, alternated
(daxfs, anchor, daxfs, anchor, ...), medians of the passes:

    pandas.read_parquet("daxfs:///t.parquet::IMAGE")   vs  pandas.read_parquet("/dev/shm/...")
    pyarrow.parquet.read_table(path, filesystem=DaxFileSystem)  (same anchor)
    DaxFileSystem.cat_file(path) (the whole file)       vs  a read of the plain file

The anchor reads the plain file with pyarrow's own C++ local filesystem;
through daxfs, pandas opens the file with fsspec and pyarrow reads it with
Python file calls (seek, read).  Rates are GiB/s of the Parquet file's
size.  Both files and the image are deleted at the end.  Nothing asserts.
"""

from __future__ import annotations

import gc
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from common import MIB, Goal, Row, cpu_model, gib_per_s, parse_args, print_table

SHM = Path("/dev/shm")
FULL_BYTES = 256 * MIB
QUICK_BYTES = 32 * MIB
FULL_PASSES = 7
QUICK_PASSES = 3
COLUMNS = 4


def write_files(nbytes: int, tag: str) -> tuple[str, str, int]:
    """The plain Parquet file and the daxfs image holding the same bytes: (plain, image, size)."""
    import numpy as np
    import pandas as pd

    import daxfs

    rows = nbytes // (8 * COLUMNS)
    rng = np.random.default_rng(1)
    df = pd.DataFrame({f"c{i}": rng.random(rows) for i in range(COLUMNS)})
    plain = str(SHM / f"daxfs-bench-fsspec-{tag}.parquet")
    image = str(SHM / f"daxfs-bench-fsspec-{tag}.img")
    df.to_parquet(plain, compression=None)
    size = os.path.getsize(plain)
    daxfs.mkfs(image, size + size // 4 + 64 * MIB)
    df.to_parquet(f"daxfs:///t.parquet::{image}", compression=None, storage_options=OPTIONS)
    return plain, image, size


OPTIONS = {"persist": "cpu"}


def alternated(sides: Sequence[Callable[[], object]], passes: int) -> list[float]:
    """Median seconds of each side, the sides run in turn each pass (one untimed pass first)."""
    for side in sides:
        side()
    times: list[list[float]] = [[] for _ in sides]
    for _ in range(passes):
        for side, samples in zip(sides, times, strict=True):
            gc.collect()
            start = time.perf_counter()
            side()
            samples.append(time.perf_counter() - start)
    return [statistics.median(samples) for samples in times]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv, "pandas Parquet reads through daxfs:// vs tmpfs (issue 11)")
    try:
        import pandas as pd
        import pyarrow.parquet as pq

        from daxfs.fsspec import DaxFileSystem
    except ImportError as exc:
        print(f"fsspec_read benchmark skipped: {exc} (pip install -e .[dev])")
        return 0
    if not SHM.is_dir():
        print(f"fsspec_read benchmark skipped: {SHM} does not exist")
        return 0
    nbytes, passes = (QUICK_BYTES, QUICK_PASSES) if args.quick else (FULL_BYTES, FULL_PASSES)
    started = time.perf_counter()
    plain, image, size = write_files(nbytes, str(os.getpid()))
    rows: list[Row] = []
    try:
        fs = DaxFileSystem(image, **OPTIONS)
        url = f"daxfs:///t.parquet::{image}"
        expected = pd.read_parquet(plain)
        assert pd.read_parquet(url, storage_options=OPTIONS).equals(expected)
        del expected

        def read_plain() -> None:
            with open(plain, "rb") as f:
                f.read()

        dax_pd, tmpfs_pd, dax_pa, dax_cat, plain_read = alternated(
            [
                lambda: pd.read_parquet(url, storage_options=OPTIONS),
                lambda: pd.read_parquet(plain),
                lambda: pq.read_table("/t.parquet", filesystem=fs),
                lambda: fs.cat_file("/t.parquet"),
                read_plain,
            ],
            passes,
        )
        rate = lambda seconds: gib_per_s(size, seconds * 1e9)  # noqa: E731
        rows = [
            Row(
                "pandas.read_parquet daxfs:// vs /dev/shm",
                rate(dax_pd),
                rate(tmpfs_pd),
                "GiB/s",
                Goal(">=", 0.5),
            ),
            Row(
                "pyarrow read_table(filesystem=DaxFileSystem)",
                rate(dax_pa),
                rate(tmpfs_pd),
                "GiB/s",
            ),
            Row(
                "cat_file (whole file) vs read() of the /dev/shm file",
                rate(dax_cat),
                rate(plain_read),
                "GiB/s",
            ),
        ]
        fs.unmount()
    finally:
        os.unlink(plain)
        os.unlink(image)
    notes = [
        f"Parquet file of {size / MIB:.0f} MiB ({COLUMNS} float64 columns, uncompressed); "
        f"median of {passes} passes, sides alternated; image on {SHM}, persist='cpu'",
        "anchor of the pandas rows: pandas.read_parquet of the same file on /dev/shm "
        "(pyarrow's C++ local filesystem)",
        f"total {time.perf_counter() - started:.0f} s; load average "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (other work skews the ratios)",
    ]
    mode = "quick" if args.quick else "full"
    print_table(
        f"pandas Parquet through daxfs:// vs tmpfs ({mode}, {cpu_model()})",
        rows,
        notes=notes,
        plain=args.plain,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
