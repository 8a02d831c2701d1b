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
the same random offsets: the rows compare it with both.  The SQLite inserts
are timed in batches interleaved with the daxfs pwrites (and os.pwrite on
tmpfs), so that a change of the machine's load hits all sides alike.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path

from common import Unavailable


@contextlib.contextmanager
def sqlite_inserts(directory: Path, record: bytes) -> Iterator[SqliteInserts]:
    """A fresh SQLite database in ``directory`` (deleted after), WAL and FULL, ready for
    ``loop(n)``: n durable one-row transactions of ``record``.

    Raises:
        Unavailable: WAL mode could not be set (the directory's filesystem).
        sqlite3.Error: SQLite failed.
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
        con.execute("CREATE TABLE records (id INTEGER PRIMARY KEY, body BLOB NOT NULL)")
        yield SqliteInserts(con, directory, record)
    finally:
        con.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)


class SqliteInserts:
    """``loop(n)`` inserts n rows, one transaction each; ``describe()`` says how."""

    def __init__(self, con: sqlite3.Connection, directory: Path, record: bytes) -> None:
        self.con = con
        self.directory = directory
        self.record = record

    def loop(self, n: int) -> None:
        insert = self.con.execute
        sql = "INSERT INTO records (body) VALUES (?)"
        args = (self.record,)
        for _ in range(n):
            insert(sql, args)

    def describe(self) -> str:
        """The setup, read back from SQLite, and the rows inserted.

        Raises:
            Unavailable: no row was inserted (nothing was measured).
        """
        sync = self.con.execute("PRAGMA synchronous").fetchone()[0]
        mode = self.con.execute("PRAGMA journal_mode").fetchone()[0]
        rows = self.con.execute("SELECT count(*) FROM records").fetchone()[0]
        if rows == 0:
            raise Unavailable("sqlite inserted no rows")
        return (
            f"sqlite3 {sqlite3.sqlite_version} on {self.directory}: journal_mode={mode}, "
            f"synchronous={sync} (2 = FULL), one {len(self.record)}-byte row per transaction "
            f"(autocommit), {rows:,} rows at the end"
        )
