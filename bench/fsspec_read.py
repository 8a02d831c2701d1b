"""pandas reading a Parquet file through ``daxfs://`` against the same file on tmpfs (issue 11).

    python bench/fsspec_read.py [--quick] [--plain]

One run writes a Parquet file of about 256 MiB (--quick: 32 MiB) of random
float64 columns (they do not compress, so the file is as large as the
data), once as a plain file on /dev/shm and once into a daxfs image on
/dev/shm (mounted persist="cpu") through ``daxfs://``, then times, alternated
(every side once per pass, in turn), medians of the passes:

    pd.read_parquet("daxfs:///t.parquet::IMAGE")   vs  pd.read_parquet("/dev/shm/...")
    the same, zero_copy=True                      (same anchor)
    pq.read_table(path, filesystem=fs)            vs  pq.read_table("/dev/shm/...")
    the same, fs with zero_copy=True              (same anchor)
    fs.cat_file(path) (the whole file)            vs  a read() of the plain file
    fs.cat_buffer(path) (the whole file)          (same anchor)

The anchors read the plain file with pyarrow's own C++ local filesystem (a
read of the whole file: Python's).  Through daxfs, pyarrow reads with
Python file calls (seek, read_buffer): copies into pyarrow's pool, or, with
zero_copy, pyarrow buffers of pinned device memory (daxfs.fsspec._files).
Rates are GiB/s of the Parquet file's size.  Both files and the image are
deleted at the end.  Nothing asserts.
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

        zc_fs = DaxFileSystem(image, zero_copy=True, **OPTIONS)
        zc_options = {"zero_copy": True, **OPTIONS}
        (dax_pd, zc_pd, tmpfs_pd, dax_pa, zc_pa, tmpfs_pa, dax_cat, zc_cat, plain_read) = (
            alternated(
                [
                    lambda: pd.read_parquet(url, storage_options=OPTIONS),
                    lambda: pd.read_parquet(url, storage_options=zc_options),
                    lambda: pd.read_parquet(plain),
                    lambda: pq.read_table("/t.parquet", filesystem=fs),
                    lambda: pq.read_table("/t.parquet", filesystem=zc_fs),
                    lambda: pq.read_table(plain),
                    lambda: fs.cat_file("/t.parquet"),
                    lambda: fs.cat_buffer("/t.parquet"),
                    read_plain,
                ],
                passes,
            )
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
                "pandas.read_parquet daxfs:// zero_copy vs /dev/shm",
                rate(zc_pd),
                rate(tmpfs_pd),
                "GiB/s",
            ),
            Row(
                "pyarrow.parquet.read_table daxfs:// vs /dev/shm",
                rate(dax_pa),
                rate(tmpfs_pa),
                "GiB/s",
            ),
            Row(
                "pyarrow.parquet.read_table daxfs:// zero_copy vs /dev/shm",
                rate(zc_pa),
                rate(tmpfs_pa),
                "GiB/s",
            ),
            Row(
                "cat_file (whole file) vs read() of the /dev/shm file",
                rate(dax_cat),
                rate(plain_read),
                "GiB/s",
            ),
            Row(
                "cat_buffer (whole file: a pin, no bytes moved) vs read()",
                rate(zc_cat),
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
        "anchors: the same file on /dev/shm read by pandas.read_parquet and "
        "pyarrow.parquet.read_table (pyarrow's C++ local filesystem), and by read()",
        "zero_copy sides: pins released by the unpin worker thread after each side "
        "returns (daxfs.fsspec._mounts), outside the timed call",
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
