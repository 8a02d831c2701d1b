"""``daxfs info PATH``: what a path is as persistent memory, and why; and its filesystem.

The device report (backend, granularity, persist method, ...) comes first,
then how the path would be reached as a block device (daxfs.block: the I/O
engine, O_DIRECT or the buffered fallback, and why);
then whether ``daxfs mount`` can work here and with which FUSE wire tap (C,
or the Python fallback when daxfs.fuse._tap is not built, and why);
when the path holds a daxfs, the facts of its superblock follow (uuid, label,
size, free blocks, inodes in use, state, mount count, journal, creation time).
A block special file cannot be mapped: its report is how bios reach it and
its filesystem, the superblock read by bios.  A row says what DRAM a mount
through the block layer (``--dax never``; a block special file) would take
against MemAvailable: the whole image, or with ``--cache-size SIZE`` (as the
other commands take it) a page cache of SIZE, checked as mount checks it
(EINVAL, ENOMEM: one error line).
Read-only: the superblock is read without mounting or replaying anything,
and whether another process has the filesystem mounted is asked with a
shared lock, taken and dropped.  The counters are those of the last
transaction applied to the superblock (a crashed image may be a transaction
behind until it is mounted or repaired).
"""

from __future__ import annotations

import argparse
import datetime
import fcntl
import json
from typing import TYPE_CHECKING, Any

from daxfs.block import BlockDevice, open_block
from daxfs.block.cache import memory_available
from daxfs.block.file import FileBlockDevice
from daxfs.cli.common import add_cache_size_option, human
from daxfs.errors import Busy, Corrupted, NotSupported, ReadOnly
from daxfs.fs.devices import is_block_special
from daxfs.fs.layout import BLOCK_SIZE, SB_MAGIC, STATE_CLEAN
from daxfs.fs.mount import read_superblock
from daxfs.pagecache.cache import check_cache_size
from daxfs.pmem import PmemDevice, cpu, open_device
from daxfs.pmem.device import Device, Granularity, check_range

if TYPE_CHECKING:
    from typing_extensions import Buffer


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "info",
        help="show how a path is used as persistent memory",
        description="Show the backend, size, granularity, persist method and CPU flush "
        "instruction chosen for PATH, and why each was chosen.",
    )
    parser.add_argument("path", metavar="PATH", help="image file or /dev/daxN.M")
    parser.add_argument(
        "--persist",
        choices=("auto", "cpu", "msync"),
        default="auto",
        help="persist method to evaluate (default: auto)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    add_cache_size_option(parser)
    parser.set_defaults(run=run)


def describe_device(dev: PmemDevice) -> dict[str, Any]:
    det = dev.detection
    features = cpu.cpu_features()
    return {
        "path": dev.path,
        "backend": det.backend.value,
        "size": dev.size,
        "granularity": det.granularity.name,
        "persist_method": det.persist_method,
        "flush_instruction": det.flush_instruction,
        "power_fail_safe": det.power_fail_safe,
        "native_extension": cpu.native_available(),
        "cpu": sorted(name for name, ok in features.items() if ok and name != "x86"),
        "reasons": dict(det.reasons),
    }


def describe_cache(size: int, cache_size: str | None) -> dict[str, Any]:
    """The DRAM a mount through the block layer takes: a page cache of ``cache_size``
    (checked as mount checks it), else the whole image of ``size`` bytes; against
    MemAvailable (None where it cannot be read).

    Raises:
        InvalidArgument (EINVAL), OSError(ENOMEM): a bad ``cache_size``
            (daxfs.pagecache.cache.check_cache_size).
    """
    available = memory_available()
    if cache_size is not None:
        n = check_cache_size(cache_size)
        return {"bytes": n, "bounded": True, "memory_available": available, "fits": True}
    fits = available is None or size <= available
    return {"bytes": size, "bounded": False, "memory_available": available, "fits": fits}


def _cache_row(cache: dict[str, Any]) -> tuple[str, str, str]:
    n, available = cache["bytes"], cache["memory_available"]
    of = "" if available is None else f" of {human(available)} available"
    if cache["bounded"]:
        return ("block cache", f"{human(n)} page cache{of}", "--cache-size: file data bounded")
    verdict = "" if cache["fits"] else " (ENOMEM: a mount fails; give --cache-size)"
    return ("block cache", f"{human(n)}, the whole image{of}{verdict}", "")


def run(args: argparse.Namespace) -> int:
    if is_block_special(args.path):
        return _run_block(args)
    try:
        dev = open_device(args.path, persist=args.persist)
    except PermissionError:
        dev = open_device(args.path, persist=args.persist, readonly=True)
    with dev:
        facts = describe_device(dev)
        facts["filesystem"] = describe_filesystem(dev)
    facts["block"] = describe_block(args.path)
    facts["cache"] = describe_cache(facts["size"], args.cache_size)
    facts["fuse"] = describe_fuse()
    if args.json:
        print(json.dumps(facts, indent=2))
        return 0
    why = facts["reasons"]
    rows = [
        ("path", facts["path"], ""),
        ("backend", facts["backend"], why.get("backend", "")),
        ("size", f"{facts['size']} bytes ({human(facts['size'])})", ""),
        ("granularity", facts["granularity"], why.get("granularity", "")),
        ("persist", facts["persist_method"], why.get("persist", "")),
        ("flush instruction", _flush_text(facts), why.get("flush instruction", "")),
        ("power-fail safe", "yes" if facts["power_fail_safe"] else "NO", ""),
        ("native extension", "loaded" if facts["native_extension"] else "missing", ""),
        ("cpu features", " ".join(facts["cpu"]) or "none", ""),
        _block_row(facts["block"]),
        _cache_row(facts["cache"]),
        _fuse_row(facts["fuse"]),
    ]
    rows += _filesystem_rows(facts["filesystem"])
    _print_rows(rows)
    return 0


def _print_rows(rows: list[tuple[str, str, str]]) -> None:
    for name, value, reason in rows:
        line = f"{name + ':':<19}{value}"
        if reason:
            line += f"\n{'':<19}  why: {reason}"
        print(line)


def _run_block(args: argparse.Namespace) -> int:
    """A block special file: no pmem report (it cannot be mapped); how bios reach it,
    and its filesystem, read by two bios (nothing is cached or mounted)."""
    with open_block(args.path, readonly=True) as bdev:
        reader = _BlockReader(bdev)
        facts: dict[str, Any] = {
            "path": args.path,
            "backend": "block device",
            "size": bdev.size,
            "dax": False,
            "block": _describe_open(bdev),
            "filesystem": describe_filesystem(reader),
            "cache": describe_cache(bdev.size, args.cache_size),
            "fuse": describe_fuse(),
        }
    if args.json:
        print(json.dumps(facts, indent=2))
        return 0
    rows = [
        ("path", facts["path"], ""),
        (
            "backend",
            "block device",
            "a block special file: no DAX; mounts go through "
            "daxfs.block and a DRAM cache (dax=never, or inode)",
        ),
        ("size", f"{facts['size']} bytes ({human(facts['size'])})", ""),
        _block_row(facts["block"]),
        _cache_row(facts["cache"]),
        _fuse_row(facts["fuse"]),
    ]
    rows += _filesystem_rows(facts["filesystem"])
    _print_rows(rows)
    return 0


class _BlockReader(Device):
    """Just enough of a Device over a block device for the superblock report: ``read``
    by bios (whole logical blocks, cut to the range), ``size``, and a shared claim by
    flock(2) on its file to ask whether another process has it mounted."""

    persist_method = "bio"
    granularity = Granularity.PAGE

    def __init__(self, bdev: BlockDevice) -> None:
        self.bdev = bdev
        self.size = bdev.size

    @property
    def closed(self) -> bool:
        return self.bdev.closed

    def read(self, offset: int, length: int) -> bytes:
        check_range(offset, length, self.size)
        bs = self.bdev.limits.logical_block_size
        start = offset - offset % bs
        end = min(-(-(offset + length) // bs) * bs, self.size)
        data = self.bdev.read(start, end - start)
        return data[offset - start : offset - start + length]

    def readinto(self, offset: int, buffer: Buffer) -> int:
        with memoryview(buffer) as view, view.cast("B") as out:
            out[:] = self.read(offset, len(out))
            return len(out)

    def direct_access(self, offset: int, length: int) -> memoryview:
        raise NotSupported(f"{self.bdev.name}: a block device has no direct access")

    def write(self, offset: int, data: Buffer, *, drain: bool = True) -> None:
        raise ReadOnly(f"{self.bdev.name} is open read-only")

    def fill(self, offset: int, length: int, byte: int = 0, *, drain: bool = True) -> None:
        raise ReadOnly(f"{self.bdev.name} is open read-only")

    def flush(self, offset: int, length: int) -> None:
        pass

    def drain(self) -> None:
        pass

    def persist(self, offset: int, length: int) -> None:
        pass

    def claim(self, exclusive: bool, who: str) -> None:
        fd = getattr(self.bdev, "fd", None)
        if isinstance(fd, int):
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                raise Busy(f"{self.bdev.name} is mounted by another process") from None

    def unclaim(self) -> None:
        fd = getattr(self.bdev, "fd", None)
        if isinstance(fd, int):
            fcntl.flock(fd, fcntl.LOCK_UN)

    def close(self) -> None:
        pass


def describe_block(path: str) -> dict[str, Any]:
    """How daxfs.block would reach ``path`` (opened read-only): engine and why."""
    try:
        with open_block(path, readonly=True) as blk:
            return _describe_open(blk)
    except OSError as exc:
        return {"error": exc.strerror or str(exc)}


def _describe_open(blk: FileBlockDevice) -> dict[str, Any]:
    """``describe_block`` of a block device already open."""
    return {
        "engine": blk.engine,
        "reason": blk.engine_reason,
        "direct": blk.direct,
        "logical_block_size": blk.limits.logical_block_size,
    }


def describe_fuse() -> dict[str, Any]:
    """Whether ``daxfs mount`` can work here (why not), and its wire tap: "C", or
    "Python", the fallback when daxfs.fuse._tap is not built (why)."""
    try:
        from daxfs.fuse import available, tap_engine
    except (ImportError, OSError) as exc:  # mfusepy missing, or no libfuse to load
        return {"available": False, "reason": f"daxfs.fuse: {exc}", "tap": None, "tap_reason": ""}
    why = available()
    tap, tap_why = tap_engine()
    return {"available": why is None, "reason": why or "", "tap": tap, "tap_reason": tap_why}


def _fuse_row(fuse: dict[str, Any]) -> tuple[str, str, str]:
    if fuse["tap"] is None:
        return ("FUSE mount", "unavailable", fuse["reason"])
    tap = "wire tap in C" if fuse["tap"] == "C" else "wire tap in Python (fallback)"
    if not fuse["available"]:
        return ("FUSE mount", f"unavailable ({tap})", fuse["reason"])
    return ("FUSE mount", f"daxfs mount works, {tap}", fuse["tap_reason"])


def _block_row(block: dict[str, Any]) -> tuple[str, str, str]:
    if "error" in block:
        return ("block I/O", "not available", block["error"])
    return ("block I/O", block["engine"], block["reason"])


def describe_filesystem(dev: Device) -> dict[str, Any] | None:
    """The superblock's facts; None if no daxfs is here; {"damaged": why} if unreadable."""
    try:
        sb = read_superblock(dev)
    except Corrupted as exc:
        last = dev.size - dev.size % BLOCK_SIZE - BLOCK_SIZE
        heads = [dev.read(0, len(SB_MAGIC))]
        if last > 0:
            heads.append(dev.read(last, len(SB_MAGIC)))
        if SB_MAGIC not in heads:
            return None
        return {"damaged": exc.strerror or str(exc)}
    if sb.state == STATE_CLEAN:
        state = "clean"
    elif _in_use(dev):
        state = "mounted"
    else:
        state = "not clean (mounted, or crashed while mounted: the next mount recovers it)"
    return {
        "uuid": sb.uuid_str,
        "label": sb.label,
        "version": sb.version,
        "size": sb.block_count * sb.block_size,
        "block_size": sb.block_size,
        "block_count": sb.block_count,
        "free_blocks": sb.free_blocks,
        "inodes_in_use": sb.used_inodes,
        "state": state,
        "mount_count": sb.mount_count,
        "last_mount": _time(sb.last_mount_ns) if sb.last_mount_ns else None,
        "journal_blocks": sb.journal_blocks,
        "journal_size": sb.journal_blocks * sb.block_size,
        "created": _time(sb.created_ns),
    }


def _in_use(dev: Device) -> bool:
    """True if a process holds the device exclusively (a read-write mount)."""
    try:
        dev.claim(False, "info")
    except Busy:
        return True
    dev.unclaim()
    return False


def _time(ns: int) -> str:
    when = datetime.datetime.fromtimestamp(ns / 1e9, tz=datetime.UTC).astimezone()
    return when.isoformat(sep=" ", timespec="seconds")


def _filesystem_rows(fs: dict[str, Any] | None) -> list[tuple[str, str, str]]:
    if fs is None:
        return [("filesystem", "none (no daxfs superblock)", "")]
    if "damaged" in fs:
        return [("filesystem", f"daxfs, DAMAGED: {fs['damaged']}", "")]
    bs = fs["block_size"]
    mounts = str(fs["mount_count"])
    if fs["last_mount"]:
        mounts += f" (last {fs['last_mount']})"
    return [
        ("filesystem", f"daxfs (format version {fs['version']})", ""),
        ("uuid", fs["uuid"], ""),
        ("label", fs["label"] or "(none)", ""),
        ("fs size", f"{fs['size']} bytes ({human(fs['size'])})", ""),
        ("blocks", f"{fs['block_count']} of {bs} bytes", ""),
        ("free blocks", f"{fs['free_blocks']} ({human(fs['free_blocks'] * bs)})", ""),
        ("inodes in use", str(fs["inodes_in_use"]), ""),
        ("state", fs["state"], ""),
        ("mount count", mounts, ""),
        ("journal", f"{human(fs['journal_size'])} ({fs['journal_blocks']} blocks)", ""),
        ("created", fs["created"], ""),
    ]


def _flush_text(facts: dict[str, Any]) -> str:
    name = facts["flush_instruction"]
    if name is None:
        return "none"
    if facts["persist_method"] == "msync":
        return f"{name} (available, unused: persist is msync)"
    return str(name)
