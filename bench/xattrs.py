"""Extended attributes: daxfs's setxattr, getxattr and listxattr against os's on tmpfs.

    python bench/xattrs.py [--quick] [--plain]

One run creates a daxfs image on /dev/shm, mounted with persist="cpu", and a
file on /dev/shm itself (the anchor: Linux's tmpfs through os, in the same
run), and measures, each side's batches interleaved with the other's:

    setxattr 100 B inline    replacing a 100-byte user. value of a file whose
                             attributes are inline in its inode: one daxfs
                             transaction, durable on return, against
                             os.setxattr (tmpfs: memory, not durable)
    setxattr 100 B in block  the same on a second file that also holds a
                             200-byte attribute, so its set is in an xattr block
    ... inline vs block      the two daxfs medians of the same run, one
                             against the other (issue 11: inline when small)
    setxattr 16 KiB          replacing a 16 KiB value (four value blocks of its
                             own, the old four freed in the same transaction)
    getxattr 100 B ...       reading the 100-byte value back, the same three rows
    listxattr                the names of 8 attributes

Medians in ns per call (bench/common.py: batches after a warm-up, the GC
paused); no goal: informational.  The image and the file are deleted at the
end; nothing is asserted.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from common import (
    FULL,
    MIB,
    QUICK,
    Row,
    Unavailable,
    cpu_model,
    median_ns_per_op_interleaved,
    parse_args,
    print_table,
)
from fs import check_free, daxfs_image, describe, open_raw

SHM = Path("/dev/shm")
IMAGE = 64 * MIB
NAMES = [f"user.n{i}" for i in range(8)]


def _set(call: Callable[..., object], path: str, value: bytes) -> Callable[[int], None]:
    def loop(n: int) -> None:
        for _ in range(n):
            call(path, "user.v", value)

    return loop


def _get(call: Callable[..., object], path: str, *_: bytes) -> Callable[[int], None]:
    def loop(n: int) -> None:
        for _ in range(n):
            call(path, "user.v")

    return loop


def _list(call: Callable[..., object], path: str) -> Callable[[int], None]:
    def loop(n: int) -> None:
        for _ in range(n):
            call(path)

    return loop


def measure(quick: bool) -> tuple[list[Row], list[str]]:
    """The rows and the notes of one run.

    Raises:
        Unavailable: /dev/shm is missing, too small, or stores no user xattrs.
    """
    timing = QUICK if quick else FULL
    check_free(SHM, IMAGE + MIB)
    host = SHM / f"daxfs-bench-xattr-{os.getpid()}"
    host.write_bytes(b"")
    try:
        try:
            os.setxattr(host, "user.probe", b"1")
        except OSError as exc:
            raise Unavailable(f"{SHM} stores no user xattrs: {exc}") from None
        with daxfs_image(SHM, IMAGE, "cpu") as (fs, _):
            open_raw(fs, "/f").close()
            open_raw(fs, "/g").close()
            small = bytes(100)
            fs.setxattr("/f", "user.v", small)  # inline in /f's inode
            fs.setxattr("/g", "user.pad", bytes(200))  # too long inline: /g's set is in a block
            fs.setxattr("/g", "user.v", small)
            os.setxattr(host, "user.v", small)
            rows = []
            for op, loop, os_call in (("setxattr", _set, os.setxattr), ("getxattr", _get, None)):
                args: tuple[bytes, ...] = (small,) if op == "setxattr" else ()
                inline, block, theirs = median_ns_per_op_interleaved(
                    [
                        loop(getattr(fs, op), "/f", *args),
                        loop(getattr(fs, op), "/g", *args),
                        loop(os_call or os.getxattr, str(host), *args),
                    ],
                    timing=timing,
                )
                rows.append(Row(f"{op} 100 B inline", inline, theirs, "ns"))
                rows.append(Row(f"{op} 100 B in block", block, theirs, "ns"))
                rows.append(Row(f"{op} 100 B inline vs block", inline, block, "ns"))
            big = bytes(16 << 10)
            fs.setxattr("/f", "user.v", big)
            os.setxattr(host, "user.v", big)
            ours, theirs = median_ns_per_op_interleaved(
                [_set(fs.setxattr, "/f", big), _set(os.setxattr, str(host), big)],
                timing=timing,
            )
            rows.append(Row("setxattr 16 KiB", ours, theirs, "ns"))
            fs.setxattr("/f", "user.v", small)
            os.setxattr(host, "user.v", small)
            for name in NAMES[1:]:
                fs.setxattr("/f", name, b"x")
                os.setxattr(host, name, b"x")
            ours, theirs = median_ns_per_op_interleaved(
                [_list(fs.listxattr, "/f"), _list(os.listxattr, str(host))], timing=timing
            )
            rows.append(Row("listxattr (8 names)", ours, theirs, "ns"))
            notes = [
                f"daxfs: image on {SHM}, persist=cpu ({describe(fs)}); anchor: os.*xattr on "
                f"a {SHM} file (tmpfs, not durable); {cpu_model()}",
                "each set is one transaction, atomic and durable on return",
                "inline vs block: the anchor is daxfs itself, the set in an xattr block "
                "(same run, batches interleaved)",
            ]
    finally:
        host.unlink(missing_ok=True)
    return rows, notes


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv, "Extended attributes: daxfs against os on tmpfs.")
    try:
        rows, notes = measure(args.quick)
    except Unavailable as exc:
        print(f"xattrs: skipped: {exc}")
        return 0
    print_table("Extended attributes (median per call)", rows, notes=notes, plain=args.plain)
    return 0


if __name__ == "__main__":
    sys.exit(main())
