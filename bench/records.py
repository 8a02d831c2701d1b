"""Durable small records: what a Python user would pick instead of daxfs (for bench/fs.py).

Two anchors, each making one 4 KiB record durable per call, as a daxfs raw
File's pwrite does (durable on return: journaled, fenced):

  - SQLite (the standard library's sqlite3) in WAL mode with
    ``synchronous=FULL`` on /dev/shm: one row (an integer key and a 4 KiB
    blob) inserted per transaction (autocommit: each INSERT commits, which
    in WAL mode with FULL appends the pages to the WAL and fsyncs it; on
    tmpfs the fsync costs next to nothing, so this is SQLite's CPU cost);
  - os.pwrite + os.fdatasync of 4 KiB at random block-aligned offsets of a
    file on the ext4 disk (bench/build or /var/tmp), measured in
    bench/fs.py's data section (``measure_os_file(disk=True)``).

The daxfs side is the data section's 4 KiB durable pwrite, an overwrite at
the same random offsets: the rows compare it with both.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
from collections.abc import Callable
from pathlib import Path

from common import Timing, Unavailable, median_ns_per_op


def sqlite_insert_ns(directory: Path, record: bytes, timing: Timing) -> tuple[float, str]:
    """Median ns per durable one-row transaction; and a description of the setup.

    Raises:
        Unavailable: WAL mode could not be set (the directory's filesystem).
    """
    fd, name = tempfile.mkstemp(prefix="daxfs-bench-", suffix=".sqlite", dir=directory)
    os.close(fd)
    path = Path(name)
    con = sqlite3.connect(path, isolation_level=None)  # autocommit: a transaction per INSERT
    try:
        mode = con.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode != "wal":
            raise Unavailable(f"sqlite on {directory}: journal_mode is {mode!r}, not wal")
        con.execute("PRAGMA synchronous=FULL")
        sync = con.execute("PRAGMA synchronous").fetchone()[0]
        con.execute("CREATE TABLE records (id INTEGER PRIMARY KEY, body BLOB NOT NULL)")
        insert: Callable[..., object] = con.execute
        sql = "INSERT INTO records (body) VALUES (?)"
        args = (record,)

        def loop(n: int) -> None:
            for _ in range(n):
                insert(sql, args)

        ns = median_ns_per_op(loop, timing=timing)
        rows = con.execute("SELECT count(*) FROM records").fetchone()[0]
        if rows == 0:
            raise Unavailable("sqlite inserted no rows")
        what = (
            f"sqlite3 {sqlite3.sqlite_version} on {directory}: journal_mode=wal, "
            f"synchronous={sync} (2 = FULL), one {len(record)}-byte row per transaction "
            f"(autocommit), {rows:,} rows at the end"
        )
        return ns, what
    finally:
        con.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
