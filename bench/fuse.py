"""FUSE mount benchmark (issue 11): daxfs through the mount against the binding's ceiling.

    python bench/fuse.py [--quick] [--plain]

Two mounts served by the same binding (daxfs.fuse's DaxFUSE over mfusepy and
libfuse3, multi-threaded, attr_timeout=0, the same adapters):

    daxfs    ``daxfs mount`` of an image on /dev/shm (persist=cpu, as the anchor
             keeps its data in DRAM too)
    anchor   an in-memory passthrough: ``MemOperations`` below, a dict of
             bytearrays answering the same callbacks with no filesystem under
             them: what a request costs through the kernel, libfuse, ctypes
             and mfusepy alone -- the binding's own ceiling

and measures through each, with os.* calls in this process:

    read 4 KiB / read 1 MiB   os.preadv of a 64 MiB file opened O_DIRECT (so every
                              read reaches the daemon; without it the kernel page
                              cache answers and neither side is measured), aligned
                              buffers, offsets walking the file
    stat                      os.stat of one file (attr_timeout=0: a GETATTR each time)
    create                    os.open(O_CREAT | O_EXCL) + close of a new name

Medians of interleaved batches (bench/common.py); ratio = daxfs / anchor time
(goal: within 2x of the ceiling for the small operations, 1 MiB reads
informational).  "Where the time goes": each operation is also timed on the
Python API alone (no FUSE: fs.stat, File.preadinto, open "xb" + close), and the
notes split the mount's time into the binding's ceiling, the API's own time
and the rest (the adapters in daxfs.fuse and the Python path between them).
The image and mount points are removed at the end; nothing is asserted.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import mmap
import os
import shutil
import stat as st
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from common import (
    FULL,
    MIB,
    QUICK,
    Goal,
    Row,
    Timing,
    Unavailable,
    cpu_model,
    median_ns_per_op,
    median_ns_per_op_interleaved,
    parse_args,
    print_table,
)

FILE_SIZE = 64 * MIB
SERVE_MEMORY = "--serve-memory"


# -- the anchor: an in-memory passthrough on the same binding ---------------------------


class MemOperations:
    """The FUSE callbacks DaxFUSE calls, over a dict of files in memory."""

    use_ns = True

    def __init__(self) -> None:
        now = time.time_ns()
        self.now = now
        self.nodes: dict[str, dict[str, Any]] = {"/": self._node(st.S_IFDIR | 0o755, 2)}
        self.data: dict[str, bytearray] = {}
        self.fh: dict[int, str] = {}
        self.numbers = itertools.count(1)

    def _node(self, mode: int, nlink: int = 1) -> dict[str, Any]:
        return {"mode": mode, "nlink": nlink, "ino": len(getattr(self, "nodes", {})) + 1}

    def stat(self, path: str | None, fh: int | None = None) -> os.stat_result:
        name = self.fh[fh] if fh is not None else path
        node = self.nodes.get(name or "")
        if node is None:
            raise OSError(errno.ENOENT, "no such file")
        size = len(self.data.get(name or "", b""))
        t = self.now
        return os.stat_result(
            (
                node["mode"],
                node["ino"],
                0,
                node["nlink"],
                0,
                0,
                size,
                t // 10**9,
                t // 10**9,
                t // 10**9,
            ),
            {
                "st_blocks": (size + 511) // 512,
                "st_blksize": 4096,
                "st_atime_ns": t,
                "st_mtime_ns": t,
                "st_ctime_ns": t,
            },
        )

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        raise AssertionError("DaxFUSE calls stat")

    def readdir(self, path: str, fh: int) -> list[str]:
        prefix = path.rstrip("/") + "/"
        names = [p[len(prefix) :] for p in self.nodes if p.startswith(prefix) and p != prefix]
        return [".", "..", *(n for n in names if "/" not in n)]

    def mkdir(self, path: str, mode: int) -> int:
        self.nodes[path] = self._node(st.S_IFDIR | mode, 2)
        return 0

    def create(self, path: str, mode: int, flags: int = 0) -> int:
        self.nodes[path] = self._node(st.S_IFREG | mode)
        self.data[path] = bytearray()
        number = next(self.numbers)
        self.fh[number] = path
        return number

    def open(self, path: str, flags: int) -> int:
        number = next(self.numbers)
        self.fh[number] = path
        return number

    def release(self, path: str | None, fh: int) -> int:
        self.fh.pop(fh, None)
        return 0

    def read(self, path: str | None, size: int, offset: int, fh: int) -> bytes:
        return bytes(self.data[self.fh[fh]][offset : offset + size])  # (DaxFUSE calls readinto)

    def readinto(self, buffer: memoryview, offset: int, fh: int) -> int:
        data = self.data[self.fh[fh]]
        n = max(0, min(len(buffer), len(data) - offset))
        buffer[:n] = memoryview(data)[offset : offset + n]
        return n

    def write(self, path: str | None, data: Any, offset: int, fh: int) -> int:
        buf = self.data[self.fh[fh]]
        if len(buf) < offset:
            buf.extend(bytes(offset - len(buf)))
        buf[offset : offset + len(data)] = data
        return len(data)

    def truncate(self, path: str | None, length: int, fh: int | None = None) -> int:
        name = self.fh[fh] if fh is not None else path
        buf = self.data[name or ""]
        del buf[length:]
        buf.extend(bytes(length - len(buf)))
        return 0

    def unlink(self, path: str) -> int:
        self.nodes.pop(path)
        self.data.pop(path, None)
        return 0

    def utimens(self, path: str | None, times: Any = None, fh: int | None = None) -> int:
        return 0

    def chmod(self, path: str | None, mode: int, fh: int | None = None) -> int:
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        return {"f_bsize": 4096, "f_frsize": 4096, "f_blocks": 1 << 20, "f_namemax": 255}

    def flush(self, path: str | None, fh: int) -> int:
        return 0

    # the wire tap's calls (daxfs.fuse._wire.Handles): the anchor pays for the tap too

    def opened(self, node: int, fh: int) -> None:
        pass

    def node_stat(self, node: int) -> os.stat_result:
        raise OSError(errno.ESTALE, "no path")

    def node_setattr(self, node: int, change: Any) -> os.stat_result:
        raise OSError(errno.ESTALE, "no path")

    def node_getxattr(self, node: int, name: str) -> bytes:
        raise OSError(errno.ESTALE, "no path")

    def node_listxattr(self, node: int) -> list[str]:
        raise OSError(errno.ESTALE, "no path")

    def node_setxattr(self, node: int, name: str, value: bytes, flags: int) -> None:
        raise OSError(errno.ESTALE, "no path")

    def node_removexattr(self, node: int, name: str) -> None:
        raise OSError(errno.ESTALE, "no path")


def serve_memory(mountpoint: str) -> None:
    """Serve MemOperations on ``mountpoint`` in the foreground (the anchor's process)."""
    import mfusepy

    from daxfs.fuse._binding import DaxFUSE

    base = mfusepy.Operations

    class Ops(MemOperations, base):  # type: ignore[misc, valid-type]
        def init_with_config(self, conn: Any, config: Any) -> None:
            config.use_ino = 1
            print("ready", flush=True)

    DaxFUSE(
        Ops(),
        mountpoint,
        foreground=True,
        attr_timeout="0",
        default_permissions=True,
        fsname="memory",
    )


# -- mounts -----------------------------------------------------------------------------


@contextlib.contextmanager
def mounts(report_notes: list[str]) -> Iterator[tuple[str, str, str]]:
    """(daxfs mount point, anchor mount point, image path), both unmounted at the end."""
    from daxfs.fuse import available

    why = available()
    if why is not None:
        raise Unavailable(why)
    import daxfs

    image = tempfile.mktemp(prefix="daxfs-bench-fuse-", suffix=".img", dir="/dev/shm")
    dax_mp = tempfile.mkdtemp(prefix="daxfs-bench-mnt-")
    mem_mp = tempfile.mkdtemp(prefix="daxfs-bench-mem-")
    anchor: subprocess.Popen[str] | None = None
    mounted = False
    try:
        daxfs.mkfs(image, FILE_SIZE * 2 + 256 * MIB)
        cli = [sys.executable, "-m", "daxfs.cli"]
        subprocess.run(
            [*cli, "mount", image, dax_mp, "-o", "persist=cpu"],
            check=True,
            capture_output=True,
        )
        mounted = True
        anchor = subprocess.Popen(
            [sys.executable, __file__, SERVE_MEMORY, mem_mp],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert anchor.stdout is not None
        if anchor.stdout.readline().strip() != "ready":
            raise Unavailable("the in-memory anchor did not mount")
        yield dax_mp, mem_mp, image
    finally:
        if anchor is not None:
            subprocess.run(["fusermount3", "-u", mem_mp], check=False)
            anchor.wait(30)
        if mounted:
            subprocess.run([sys.executable, "-m", "daxfs.cli", "umount", dax_mp], check=False)
        shutil.rmtree(dax_mp, ignore_errors=True)
        shutil.rmtree(mem_mp, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(image)


def make_file(root: str) -> str:
    path = os.path.join(root, "data")
    with open(path, "wb") as f:
        chunk = bytes(range(256)) * (MIB // 256)
        for _ in range(FILE_SIZE // MIB):
            f.write(chunk)
    return path


def reader(path: str, size: int) -> tuple[Callable[[int], object], Callable[[], None]]:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    buf = mmap.mmap(-1, size)  # page-aligned, as O_DIRECT needs
    offsets = itertools.cycle(range(0, FILE_SIZE, size))

    def loop(n: int) -> None:
        for _ in range(n):
            os.preadv(fd, [buf], next(offsets))

    def close() -> None:
        os.close(fd)
        buf.close()

    return loop, close


def stater(path: str) -> Callable[[int], object]:
    def loop(n: int) -> None:
        for _ in range(n):
            os.stat(path)

    return loop


def creator(root: str, tag: str) -> Callable[[int], object]:
    folder = os.path.join(root, f"create-{tag}")
    os.mkdir(folder)
    names = itertools.count()

    def loop(n: int) -> None:
        flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY
        for _ in range(n):
            os.close(os.open(f"{folder}/f{next(names)}", flags, 0o644))

    return loop


# -- the Python API alone, for the split --------------------------------------------------


def api_times(timing: Timing) -> dict[str, float]:
    """ns per operation of each measured operation on the Python API, no FUSE."""
    import daxfs

    image = tempfile.mktemp(prefix="daxfs-bench-api-", suffix=".img", dir="/dev/shm")
    try:
        daxfs.mkfs(image, FILE_SIZE + 256 * MIB)
        with daxfs.mount(image, persist="cpu") as fs:
            with fs.open("/data", "wb") as f:
                f.truncate(FILE_SIZE)
                f.write(bytes(FILE_SIZE))
            fs.mkdir("/c")
            out: dict[str, float] = {}
            with fs.open("/data", "rb", buffering=0) as f:
                for size, name in ((4096, "read 4 KiB"), (MIB, "read 1 MiB")):
                    buf = bytearray(size)
                    offsets = itertools.cycle(range(0, FILE_SIZE, size))

                    def read(n: int, buf: bytearray = buf, offsets: Any = offsets) -> None:
                        for _ in range(n):
                            f.preadinto(buf, next(offsets))

                    out[name] = median_ns_per_op(read, timing=timing)
            out["stat"] = median_ns_per_op(
                lambda n: [fs.lstat("/data") for _ in range(n)], timing=timing
            )
            names = itertools.count()

            def create(n: int) -> None:
                for _ in range(n):
                    fs.open(f"/c/f{next(names)}", "xb", buffering=0).close()

            out["create"] = median_ns_per_op(create, timing=timing, max_ops=20_000)
            return out
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(image)


# -- main ---------------------------------------------------------------------------------


def measure(timing: Timing, notes: list[str]) -> list[Row]:
    rows: list[Row] = []
    with mounts(notes) as (dax_mp, mem_mp, _):
        dax_file, mem_file = make_file(dax_mp), make_file(mem_mp)
        for size, name in ((4096, "read 4 KiB"), (MIB, "read 1 MiB")):
            (a, close_a), (b, close_b) = reader(dax_file, size), reader(mem_file, size)
            try:
                dax, mem = median_ns_per_op_interleaved([a, b], timing=timing)
            finally:
                close_a()
                close_b()
            goal = Goal("<=", 2.0) if size == 4096 else None
            rows.append(Row(f"{name} (O_DIRECT)", dax, mem, "ns", goal))
        dax, mem = median_ns_per_op_interleaved([stater(dax_file), stater(mem_file)], timing=timing)
        rows.append(Row("stat", dax, mem, "ns", Goal("<=", 2.0)))
        dax, mem = median_ns_per_op_interleaved(
            [creator(dax_mp, "d"), creator(mem_mp, "m")], timing=timing, max_ops=20_000
        )
        rows.append(Row("create + close", dax, mem, "ns", Goal("<=", 2.0)))
    api = api_times(timing)
    for row in rows:
        key = row.name.split(" (")[0].replace(" + close", "")
        own = api.get(key)
        if own is None or row.anchor is None:
            continue
        rest = row.value - row.anchor - own
        notes.append(
            f"{key}: {row.value / 1000:.1f} us through the mount = {row.anchor / 1000:.1f} us "
            f"binding ceiling (kernel + libfuse + ctypes + mfusepy) + {own / 1000:.1f} us daxfs "
            f"API alone + {rest / 1000:.1f} us adapters and the rest"
        )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv, "daxfs through FUSE against an in-memory passthrough (issue 11)")
    timing = QUICK if args.quick else FULL
    notes: list[str] = []
    started = time.perf_counter()
    try:
        rows = measure(timing, notes)
    except (Unavailable, OSError, subprocess.CalledProcessError) as exc:
        rows = []
        notes.append(f"skipped: {exc}")
    notes.append(
        "anchor: MemOperations (in-memory) on the same DaxFUSE binding; both mounts "
        f"attr_timeout=0; total {time.perf_counter() - started:.0f} s"
    )
    mode = "quick" if args.quick else "full"
    title = f"daxfs FUSE mount vs in-memory passthrough ({mode}, {cpu_model()})"
    print_table(title, rows, notes=notes, plain=args.plain)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == SERVE_MEMORY:
        serve_memory(sys.argv[2])
        sys.exit(0)
    sys.exit(main(sys.argv[1:]))
