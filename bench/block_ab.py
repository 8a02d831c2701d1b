"""4 KiB random O_DIRECT reads: daxfs.block's paths against fio, A/B interleaved in one run.

    python bench/block_ab.py [--passes N] [--seconds S] [--dir DIR]

For a loaded machine, where bench/block.py's rows move by 30-50% between
runs: each pass runs every side once, in turn, on the same 64 MiB file of
random data on a disk file system, and the medians are compared.

QD1 sides: ``raw`` (the C extension's ``Ring.rw`` in a Python loop: one
private-ring SQE submitted and waited for in one system call, no daxfs.block
layer), ``inline`` (``FileBlockDevice.readinto``: the synchronous fast path,
one call of ``_uring.Fast.read``),
``bio`` (the path ``readinto`` took before the fast path: a Bio submitted
to the shared ring and reaped by the waiting thread), ``fio`` (io_uring,
direct=1, iodepth=1).  QD32 sides: ``raw`` (``Ring.rw_batch`` of 256 reads,
32 in flight), ``many`` (``FileBlockDevice.readinto_many`` of 256 reads: ``_uring.Fast.read_many``),
``fio`` (iodepth=32).  QD32 per-bio sides (``--bio``, one bio per read, 32 in
flight): ``endio`` (each read's ``end_io`` submits the next: bench/block.py's
row) and ``futures`` (one thread waits for the oldest bio's Future, then
submits the next), each through the C path of ``submit_bio``
(``_uring.BioRing``) and through the bio path it replaced (``*_old``: the same
device with ``_aio`` off), alternating in each pass; ``c_oldest`` and ``c_any``
(bench/block_oldest.c: the Futures pattern -- wait for the oldest read, then
replace it -- and fio's -- replace any completion -- in bare C, no Python: the
floor the pattern itself allows); ``futures_wake`` is the C path
with ``BioRing.lead`` off (the waiting thread sleeps on its Future until the reaper
ends the bio: two wake-ups per bio, as before the waiting leader).

Filesystem sides (``--fs``: bench/block.py's image, a 64 MiB file of it opened
direct=True, fio on the image file): QD1 ``c`` (``File.preadinto`` through the
C lean read, ``_direct.LeanRead``), ``py`` (the same with it off: the Python
lean read, its reference), ``dev`` (the device's own ``readinto`` of the same
blocks: the floor); QD32 (32 ``submit_read`` Futures from one thread) ``c_oldest``
(bench/block_oldest.c on the image file: the pattern's floor in bare C), ``lean``
(``DirectIO.submit_read_lean``: one plain bio, a LeanFuture; its steps in C,
``LeanRead.submit``, the bio ended by ``_direct.lean_end``), ``lean_py`` (the same
steps in Python, the reference), ``lean_wake`` (``lean_py`` with ``BioRing.lead``
off: the waiting thread sleeps until the reaper ends the read), ``request`` (the
request path it replaced: ``submit_read_lean`` off).  (``submit_read_lean``'s
steps up to the I/O in C alone, through a ``LeanRead.map``, measured no faster:
0.83x and 1.01x of the Python steps per pass, at load 5-7; not kept.  The whole
submit and its end in C, ``LeanRead.submit``, is ``lean``.)
"""

from __future__ import annotations

import argparse
import mmap
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from block import (
    BS,
    bench_dir,
    bench_file,
    fs_image,
    fs_randread_qd,
    offsets,
    randread_futures,
    randread_qd,
    run_fio,
)
from common import MIB, Unavailable, build_c, run_c

from daxfs.block import Bio, BioOp, open_block
from daxfs.block.file import FileBlockDevice
from daxfs.block.uring import UringEngine

BATCH = 256
#: the Futures rows' pattern in bare C (wait for the oldest read; or fio's: any)
OLDEST_C = Path(__file__).resolve().parent / "block_oldest.c"


def c_loop(path: Path, mode: str) -> Callable[[float], float]:
    """A side running bench/block_oldest.c on ``path`` (``mode`` "oldest": the
    Futures rows' pattern, "any": fio's) at QD32; op/s."""
    binary = build_c(OLDEST_C, libs=["uring"], hint="install gcc and liburing-dev")

    def side(seconds: float) -> float:
        got = run_c(binary, [str(path), str(seconds), "32", mode])
        return float(got["ops"]) / float(got["seconds"])

    return side


def rate(seconds: float, step: Callable[[int], int]) -> float:
    """Ops per second of ``step(i)`` (returning its ops) called for ``seconds``."""
    ops = i = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        ops += step(i)
        i += 1
    return ops / (time.perf_counter() - start)


def qd1_sides(dev: FileBlockDevice, offs: list[int]) -> dict[str, Callable[[int], int]]:
    from daxfs.block import _uring

    engine = dev._engine
    assert isinstance(engine, UringEngine)
    ring = _uring.Ring(1)
    buf = mmap.mmap(-1, BS)
    views = [memoryview(buf)]
    mask = len(offs) - 1

    def raw(i: int) -> int:
        ring.rw(_uring.READV, dev.fd, offs[i & mask], views, 0)
        return 1

    def inline(i: int) -> int:
        dev.readinto(offs[i & mask], buf)
        return 1

    def bio(i: int) -> int:
        b = Bio(BioOp.READ, offs[i & mask] >> 9, [buf])
        engine.poll_begin()
        try:
            dev.submit_bio(b)
            engine.poll_until(lambda: b.done)
        finally:
            engine.poll_end()
        return 1 if b.wait() == BS else 0

    return {"raw": raw, "inline": inline, "bio": bio}


def qd32_sides(dev: FileBlockDevice, offs: list[int]) -> dict[str, Callable[[int], int]]:
    from daxfs.block import _uring

    ring = _uring.Ring(32)
    bufs = [mmap.mmap(-1, BS) for _ in range(BATCH)]
    mask = len(offs) - 1

    def items(i: int) -> list[tuple[int, mmap.mmap]]:
        return [(offs[(i * BATCH + k) & mask], b) for k, b in enumerate(bufs)]

    def raw(i: int) -> int:
        ring.rw_batch(_uring.READV, dev.fd, items(i), 0, 32)
        return BATCH

    def many(i: int) -> int:
        dev.readinto_many(items(i))
        return BATCH

    return {"raw": raw, "many": many}


def bio_sides(dev: FileBlockDevice) -> dict[str, Callable[[float], float]]:
    """The per-bio QD32 sides: each runs for the seconds given, the C path of
    submit_bio on (``endio``, ``futures``) or off (``*_old``)."""
    aio = dev._aio
    assert aio is not None

    def on(
        run: Callable[[FileBlockDevice, float], float], c_path: bool, lead: bool = True
    ) -> Callable[[float], float]:
        def side(seconds: float) -> float:
            dev._aio = aio if c_path else None
            aio.lead = lead
            try:
                return run(dev, seconds)
            finally:
                dev._aio = aio
                aio.lead = True

        return side

    def endio(d: FileBlockDevice, seconds: float) -> float:
        return randread_qd(d, seconds, 32)

    return {
        "endio": on(endio, True),
        "endio_old": on(endio, False),
        "futures": on(randread_futures, True),
        "futures_wake": on(randread_futures, True, lead=False),
        "futures_old": on(randread_futures, False),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passes", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=0.5)
    parser.add_argument("--dir", type=Path)
    parser.add_argument(
        "--bio", action="store_true", help="only the per-bio QD32 sides (C path against old)"
    )
    parser.add_argument(
        "--fs", action="store_true", help="only the filesystem sides (lean C, Python, old)"
    )
    args = parser.parse_args(argv)
    try:
        directory = bench_dir(args.dir)
    except Unavailable as exc:
        print(f"bench/block_ab.py: skipped: {exc}")
        return 0
    size = 64 * MIB
    if args.fs:
        report_fs(directory, size, args.passes, args.seconds)
        return 0
    with (
        bench_file(directory, size) as path,
        open_block(path, engine="io_uring", queue_depth=32) as dev,
    ):
        if not dev.direct or not isinstance(dev._engine, UringEngine):
            print(f"bench/block_ab.py: skipped: {dev.engine} ({dev.engine_reason})")
            return 0
        offs = offsets(size)
        if args.bio:
            report_bio(dev, path, size, args.passes, args.seconds)
            return 0
        for depth, sides in ((1, qd1_sides(dev, offs)), (32, qd32_sides(dev, offs))):
            samples: dict[str, list[float]] = {name: [] for name in (*sides, "fio")}
            for _ in range(args.passes):
                for name, step in sides.items():
                    samples[name].append(rate(args.seconds, step))
                samples["fio"].append(run_fio(path, size, "randread", BS, depth, args.seconds))
            fio = statistics.median(samples["fio"])
            print(f"QD{depth}, {args.passes} interleaved passes of {args.seconds:g} s, medians:")
            for name, values in samples.items():
                med = statistics.median(values)
                print(
                    f"  {name:7s} {med:9,.0f} op/s {1e6 / med:7.1f} us/op {med / fio:5.2f}x fio"
                    f"  (passes {min(values):,.0f}..{max(values):,.0f})"
                )
    return 0


def report_bio(dev: FileBlockDevice, path: Path, size: int, passes: int, seconds: float) -> None:
    """The per-bio sides and fio, interleaved; medians, process CPU per op, and
    each C-path side against its old side pass by pass."""
    sides = bio_sides(dev)
    floors = {"c_oldest": c_loop(path, "oldest"), "c_any": c_loop(path, "any")}
    samples: dict[str, list[float]] = {name: [] for name in (*sides, *floors, "fio")}
    cpu: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(passes):
        for name, side in sides.items():
            before = time.process_time()
            rate_ = side(seconds)
            samples[name].append(rate_)
            cpu[name].append((time.process_time() - before) / (rate_ * seconds) * 1e6)
        for name, floor in floors.items():
            samples[name].append(floor(seconds))
        samples["fio"].append(run_fio(path, size, "randread", BS, 32, seconds))
    fio = statistics.median(samples["fio"])
    print(f"QD32 per bio, {passes} interleaved passes of {seconds:g} s, medians:")
    for name, values in samples.items():
        med = statistics.median(values)
        note = f" {statistics.median(cpu[name]):5.1f} us CPU/op" if name in cpu else ""
        print(
            f"  {name:11s} {med:9,.0f} op/s{note} {med / fio:5.2f}x fio"
            f"  (passes {min(values):,.0f}..{max(values):,.0f})"
        )
    for name, old in (
        ("endio", "endio_old"),
        ("futures", "futures_old"),
        ("futures", "futures_wake"),
        ("futures", "c_oldest"),
        ("c_oldest", "c_any"),
    ):
        ratios = [a / b for a, b in zip(samples[name], samples[old], strict=True)]
        print(
            f"  {name}/{old} per pass: median {statistics.median(ratios):.2f}"
            f" ({min(ratios):.2f}..{max(ratios):.2f})"
        )


def report_fs(directory: Path, size: int, passes: int, seconds: float) -> None:
    """The filesystem sides (see the module docstring), interleaved with fio on the
    image file; medians, process CPU per op, and each side against another pass
    by pass."""
    from daxfs.fs import direct

    with fs_image(directory, size) as (image, f):
        dio = f._dio  # type: ignore[attr-defined]
        lean_c = dio._lean_c
        bdev = dio.bdev
        ext = next(iter(f._owner.maps.extents(f._owner.store, f.inode, 0)))  # type: ignore[attr-defined]
        base = (ext.pblk - ext.lblk) * BS
        offs = offsets(size)
        mask = len(offs) - 1
        buf = mmap.mmap(-1, BS)
        submit_lean = direct.DirectIO.submit_read_lean

        def qd1(c_path: bool) -> Callable[[float], float]:
            def side(secs: float) -> float:
                dio._lean_c = lean_c if c_path else None
                try:
                    return rate(secs, lambda i: f.preadinto(buf, offs[i & mask]) and 1)
                finally:
                    dio._lean_c = lean_c

            return side

        aio = bdev._aio
        lean_submit = dio._lean_submit

        def qd32(lean: bool, lead: bool = True, c_path: bool = True) -> Callable[[float], float]:
            def side(secs: float) -> float:
                if not lean:
                    direct.DirectIO.submit_read_lean = lambda *a, **k: None  # type: ignore[method-assign]
                if aio is not None:
                    aio.lead = lead
                dio._lean_submit = lean_submit if c_path else None
                try:
                    return fs_randread_qd(f, size, secs, 32)  # type: ignore[arg-type]
                finally:
                    direct.DirectIO.submit_read_lean = submit_lean  # type: ignore[method-assign]
                    dio._lean_submit = lean_submit
                    if aio is not None:
                        aio.lead = True

            return side

        def dev(secs: float) -> float:
            return rate(secs, lambda i: bdev.readinto(base + offs[i & mask], buf) and 1)

        groups: dict[int, dict[str, Callable[[float], float]]] = {
            1: {"c": qd1(True), "py": qd1(False), "dev": dev},
            32: {
                "c_oldest": c_loop(image, "oldest"),
                "lean": qd32(True),
                "lean_py": qd32(True, c_path=False),
                "lean_wake": qd32(True, lead=False, c_path=False),
                "request": qd32(False),
            },
        }
        for depth, sides in groups.items():
            samples: dict[str, list[float]] = {name: [] for name in (*sides, "fio")}
            cpu: dict[str, list[float]] = {name: [] for name in sides}
            for _ in range(passes):
                for name, side in sides.items():
                    before = time.process_time()
                    got = side(seconds)
                    samples[name].append(got)
                    cpu[name].append((time.process_time() - before) / (got * seconds) * 1e6)
                samples["fio"].append(
                    run_fio(image, image.stat().st_size, "randread", BS, depth, seconds)
                )
            fio = statistics.median(samples["fio"])
            what = "preadinto" if depth == 1 else "submit_read Futures"
            print(f"fs QD{depth} ({what}), {passes} interleaved passes of {seconds:g} s, medians:")
            for name, values in samples.items():
                med = statistics.median(values)
                # (a C side's CPU is its own process's: not counted here)
                shown = name in cpu and not name.startswith("c_")
                note = f" {statistics.median(cpu[name]):5.1f} us CPU/op" if shown else ""
                print(
                    f"  {name:8s} {med:9,.0f} op/s{note} {med / fio:5.2f}x fio"
                    f"  (passes {min(values):,.0f}..{max(values):,.0f})"
                )
            pairs = (
                (("c", "py"), ("c", "dev"))
                if depth == 1
                else (
                    ("lean", "request"),
                    ("lean", "lean_py"),
                    ("lean_py", "lean_wake"),
                    ("lean", "c_oldest"),
                )
            )
            for a, b in pairs:
                ratios = [x / y for x, y in zip(samples[a], samples[b], strict=True)]
                print(f"  {a}/{b} per pass: median {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
