"""reach: count what a test tool reached of the fast paths (the proof a harness exercises them).

Theory of operation
-------------------
A harness that never runs a path cannot find its bugs, and it passes either
way.  ``reaching()`` wraps, for the time of a ``with`` block, the entry points
of the paths below and counts the calls that took them (the wrapped code runs
unchanged; the counting is Python around it):

    lean_c        direct reads done by the C lean read (``_direct.LeanRead.read``
                  returned the bytes read, or ``LeanRead.submit`` took the read
                  and returned its Future): a mount made inside the block, on a
                  file device on io_uring with a whole-device BlockCache
    bioring       bios of the device's asynchronous C path (``_uring.BioRing``):
                  ``FileBlockDevice.statistics()["async"]`` of the devices that
                  submitted a bio inside the block, read at their close or at the
                  end of the block
    cache_hits    buffered reads answered by the page cache's hit reader
                  (``FileCache.reader``, File's ``_reader`` on a bounded mount:
                  cached pages, no I/O) of a FileCache made inside the block
    cache_reads   buffered reads through the full path (``FileCache.read``,
                  ``read_bytes``: hits and misses)
    cache_misses  runs of pages a buffered read (or a partly covered page of a
                  write) read from the file (``FileBacking.read_pages``)
    cache_writes  buffered writes through a space (``FileCache.write``)
    out_of_place  out-of-place writes committed (``DirectIO.write_out_of_place``)
    fast_creates  files made by the create fast path (``fastcreate.create``)

Not thread-safe as a tool (it patches classes; use it around a harness that
runs in this process).  ``Reached.missing(names)`` lists the counters that
stayed at zero.

Invariants
  1. Outside a ``with reaching()`` block nothing is patched.
  2. A counter counts only calls that took the path (a decline is not counted).
"""

from __future__ import annotations

import contextlib
import dataclasses
import weakref
from collections.abc import Iterator
from typing import Any

from daxfs.block.file import FileBlockDevice
from daxfs.fs import fastcreate, filecache
from daxfs.fs.direct import DirectIO
from daxfs.fs.filecache import FileBacking, FileCache

#: the counters, in the order ``Reached.summary`` prints them
COUNTERS = (
    "lean_c",
    "bioring",
    "cache_hits",
    "cache_reads",
    "cache_misses",
    "cache_writes",
    "out_of_place",
    "fast_creates",
)


@dataclasses.dataclass
class Reached:
    """What the code inside ``reaching()`` took of each path (module docstring)."""

    lean_c: int = 0
    bioring: int = 0
    cache_hits: int = 0
    cache_reads: int = 0
    cache_misses: int = 0
    cache_writes: int = 0
    out_of_place: int = 0
    fast_creates: int = 0

    def missing(self, names: tuple[str, ...] = COUNTERS) -> list[str]:
        """The counters of ``names`` that stayed at zero."""
        return [n for n in names if not getattr(self, n)]

    def summary(self) -> str:
        return ", ".join(f"{n} {getattr(self, n)}" for n in COUNTERS)


class _CountingHits:
    """A hit reader (``filecache.hit_reader``) whose answers (not None) are counted."""

    def __init__(self, real: Any, reached: Reached) -> None:
        self._real = real
        self._reached = reached

    def pread(self, inode: Any, n: Any, pos: Any) -> Any:
        got = self._real.pread(inode, n, pos)
        self._reached.cache_hits += got is not None
        return got

    def preadinto(self, inode: Any, buffer: Any, pos: Any) -> Any:
        got = self._real.preadinto(inode, buffer, pos)
        self._reached.cache_hits += got is not None
        return got


class _CountingLean:
    """A ``_direct.LeanRead`` whose reads that returned the bytes are counted."""

    def __init__(self, real: Any, reached: Reached) -> None:
        self._real = real
        self._reached = reached

    def read(self, inode: Any, pos: int, buffer: Any) -> Any:
        got = self._real.read(inode, pos, buffer)
        if type(got) is int:
            self._reached.lean_c += 1
        return got

    def submit(self, *args: Any) -> Any:
        future = self._real.submit(*args)
        self._reached.lean_c += future is not None
        return future

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


@contextlib.contextmanager
def reaching() -> Iterator[Reached]:
    """Count, inside the block, what is taken of each path (module docstring)."""
    reached = Reached()
    devices: weakref.WeakSet[FileBlockDevice] = weakref.WeakSet()
    counted: set[int] = set()

    def count_device(dev: FileBlockDevice) -> None:
        if id(dev) in counted or dev.closed:
            return
        counted.add(id(dev))
        reached.bioring += dev.statistics().get("async", 0)

    real_make = DirectIO._make_lean_read
    real_submit = FileBlockDevice.submit_bio
    real_close = FileBlockDevice.close
    real_hit_reader = filecache.hit_reader
    real_read = FileCache.read
    real_read_bytes = FileCache.read_bytes
    real_write = FileCache.write
    real_read_pages = FileBacking.read_pages
    real_oop = DirectIO.write_out_of_place
    real_create = fastcreate.create

    def make_lean_read(self: DirectIO) -> Any:
        lean = real_make(self)
        return None if lean is None else _CountingLean(lean, reached)

    def submit_bio(self: FileBlockDevice, bio: Any) -> None:
        devices.add(self)
        real_submit(self, bio)

    def close(self: FileBlockDevice) -> None:
        if self in devices:
            count_device(self)
        real_close(self)

    def hit_reader(*args: Any, **kwargs: Any) -> Any:
        return _CountingHits(real_hit_reader(*args, **kwargs), reached)

    def read(self: FileCache, inode: Any, pos: int, view: memoryview) -> int:
        reached.cache_reads += 1
        return real_read(self, inode, pos, view)

    def read_bytes(self: FileCache, inode: Any, pos: int, n: int) -> bytes:
        reached.cache_reads += 1
        return real_read_bytes(self, inode, pos, n)

    def write(self: FileCache, inode: Any, pos: int, data: Any) -> int:
        reached.cache_writes += 1
        return real_write(self, inode, pos, data)

    def read_pages(self: FileBacking, offset: int, views: list[memoryview]) -> None:
        real_read_pages(self, offset, views)
        reached.cache_misses += 1

    def write_out_of_place(self: DirectIO, *args: Any, **kwargs: Any) -> None:
        real_oop(self, *args, **kwargs)
        reached.out_of_place += 1

    def create(*args: Any, **kwargs: Any) -> Any:
        made = real_create(*args, **kwargs)
        reached.fast_creates += made is not None
        return made

    patches: list[tuple[Any, str, Any, Any]] = [
        (DirectIO, "_make_lean_read", real_make, make_lean_read),
        (FileBlockDevice, "submit_bio", real_submit, submit_bio),
        (FileBlockDevice, "close", real_close, close),
        (filecache, "hit_reader", real_hit_reader, hit_reader),
        (FileCache, "read", real_read, read),
        (FileCache, "read_bytes", real_read_bytes, read_bytes),
        (FileCache, "write", real_write, write),
        (FileBacking, "read_pages", real_read_pages, read_pages),
        (DirectIO, "write_out_of_place", real_oop, write_out_of_place),
        (fastcreate, "create", real_create, create),
    ]
    for owner, name, _, wrapped in patches:
        setattr(owner, name, wrapped)
    try:
        yield reached
    finally:
        for owner, name, real, _ in patches:
            setattr(owner, name, real)
        for dev in list(devices):
            count_device(dev)


def main(argv: list[str] | None = None) -> int:
    """``python -m daxfs.testing.reach``: each tool run briefly inside ``reaching()``,
    one line of counters per tool (the audit of docs/ARCHITECTURE.md, "Tools that keep
    bugs found")."""
    import argparse
    import os
    import shutil
    import tempfile
    from collections.abc import Callable

    from daxfs.fs.mount import mount
    from daxfs.testing import fsx, fuzz, nsstress

    parser = argparse.ArgumentParser(prog="python -m daxfs.testing.reach")
    parser.add_argument("--ops", type=int, default=300, help="operations of each fsx/nsstress run")
    args = parser.parse_args(argv)

    def fsx_run(**options: Any) -> Callable[[], object]:
        return lambda: fsx.run(1, ops=args.ops, options=fsx.FsxOptions(**options))

    def ns_run(**options: Any) -> Callable[[], object]:
        return lambda: nsstress.run(1, ops=args.ops, options=nsstress.StressOptions(**options))

    def walk(cache_size: str | None) -> Callable[[], object]:
        def go() -> None:
            fz = fuzz.Fuzzer(1)
            scratch = tempfile.mkdtemp(prefix="daxfs-reach-")
            try:
                path = os.path.join(scratch, "image")
                with open(path, "wb") as f:
                    f.write(fz.clean.image)
                fs = mount(path, dax="never", cache_size=cache_size)
                try:
                    fuzz.walk(fs)
                finally:
                    fs.unmount()
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
                fz.close()

        return go

    tools: list[tuple[str, Callable[[], object]]] = [
        ("fsx pmem", fsx_run()),
        ("fsx --block", fsx_run(block=True)),
        ("fsx --block --cache-size 64K", fsx_run(block=True, cache_size="64K")),
        ("fsx --uring", fsx_run(uring=True)),
        ("fsx --uring --cache-size 64K", fsx_run(uring=True, cache_size="64K")),
        ("nsstress pmem", ns_run()),
        ("nsstress block 64K", ns_run(block=True, cache_size="64K")),
        ("fuzz walk, clean image, dax=never", walk(None)),
        ("fuzz walk, clean image, dax=never 64K", walk("64K")),
    ]
    for name, run in tools:
        with reaching() as reached:
            run()
        print(f"{name:40s} {reached.summary()}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
