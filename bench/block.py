"""Block devices (issue 10, section 4): daxfs.block's file backend against fio.

    python bench/block.py [--quick] [--plain] [--dir DIR]

Rows (device level, the filesystem is not involved yet):
  - 4 KiB random direct read, QD1: ``FileBlockDevice.readinto`` of a
    page-aligned 4 KiB buffer at random 4 KiB-aligned offsets, one at a time;
  - 4 KiB random direct read, QD32: 32 read bios in flight, each one's
    ``end_io`` submitting the next (asynchronous use, as fio's single job
    with iodepth=32 keeps 32 in flight);
  - 4 KiB random direct read, QD32 Futures: 32 read bios in flight from one
    thread, which waits for the oldest's ``future`` and submits the next;
  - 4 KiB random direct read, QD32 batched: ``readinto_many`` of BATCH reads
    per call, up to 32 in flight (the io_uring device checks, submits and
    reaps them in one C call, ``_uring.Fast.read_many``, on a private ring):
    what a Python caller at QD32 would call;
  - 1 MiB sequential direct write, QD1: ``write`` of a page-aligned 1 MiB
    buffer, offsets marching through the file and wrapping around.
On io_uring, QD1 ``readinto`` and ``write`` take the synchronous fast path
(one C call, ``_uring.Fast``: the checks, then one private-ring SQE submitted
and waited for in one system call); the QD32 rows with ``end_io`` and with
Futures are the per-bio interface: a plain bio goes the C path of
``submit_bio`` (``_uring.BioRing``: checked and submitted in C, ended and its
``end_io`` called or Future resolved from C on the reaper thread -- or, for a
Future waited for, by the waiting thread itself, which reaps for it: the
BioRing's waiting leader);
``bench/block_ab.py --bio`` compares it with the bio path it replaced.
Figures of 2026-11-28 18:52 UTC, load 2.0-2.6, ``--quick``: QD1 0.86x,
QD32 end_io 0.24x, QD32 batched 0.95x, write 1.19x (docs/ARCHITECTURE.md,
"Closing the gap to fio", has these, earlier runs, and
``bench/block_ab.py``'s A/B).  With the C path of ``submit_bio``
(2026-11-29 02:35 UTC, load 1.0-2.9, ``--quick``): QD32 end_io 0.83x, QD32
Futures 0.67x, QD32 batched 0.99x, write 1.14x (docs/ARCHITECTURE.md, "The
asynchronous per-bio path in C").
Each row runs the io_uring engine (the goal's subject) and the thread pool
(for comparison, an informational row) of ``open_block(..., engine=...)``
with O_DIRECT, against fio's io_uring engine with ``direct=1`` on the same
file, measured in the same run: time-based runs of ``seconds`` each,
interleaved (daxfs io_uring, daxfs threads, fio; again ``passes`` times), the
median of each.  The goal is >= 0.8x fio (issue 10).

A second table runs the same three rows through the FILESYSTEM (issue 10,
section 2): a daxfs image file on the same disk, mounted with
``dax="never"`` (the image as an O_DIRECT block device through io_uring),
and one file of it opened with ``direct=True`` (daxfs.fs.direct): QD1 is
``preadinto`` of a page-aligned buffer (on io_uring the C lean read,
``daxfs.fs._direct.LeanRead``), QD32 keeps 32 ``submit_read`` Futures in
flight from one thread (``DirectIO.submit_read_lean``: in C, ``LeanRead.submit``,
one plain bio on the device's C path and a ``LeanFuture``, the bio ended by
``_direct.lean_end`` in the waiting thread), the batched QD32 row is
``File.preadinto_many`` of BATCH reads per call (the device keeps 32 in flight),
the write is ``pwrite`` of 1 MiB over the file's written blocks (durable
on return: on io_uring one RWF_DSYNC write, ``DirectIO._write_mapped``; the
times are committed lazily, as Linux's O_DIRECT|O_DSYNC overwrite does).  The
anchor is fio with the same job on the image file itself, in the same run.

The anchor of the durable write.  fio's plain ``--direct=1`` write is not
durable on this disk: it has a volatile write cache
(/sys/block/vda/queue/write_cache says "write back", fua 0), and O_DIRECT
alone sends no FLUSH.  The filesystem's write is durable on return, so its
goal is measured against fio's durable write with the same contract:
``--sync=dsync`` (the image file opened O_DIRECT|O_DSYNC: each write is
followed by the kernel's FLUSH before it completes, one system call per
write, as ours).  fio's plain write and ``--fdatasync=1`` (a write, then an
fdatasync SQE: a second round trip, so slower than dsync here) are printed
beside it, informational.  On this VM plain and dsync measure within the
noise of each other (the host's FLUSH is cheap), so the two ratios differ
little; on a disk with an expensive FLUSH the plain anchor would be
unreachable by any durable write.

Filesystem figures (``--quick``, 2026-11-29; docs/ARCHITECTURE.md, "The
durable direct overwrite" and "Fast paths of direct reads", has the A/B
runs): at 03:29 UTC, load 0.7-0.9: QD1 0.76x, QD32 batched 0.82x, the
durable write 0.78x of fio --sync=dsync (0.71x of plain fio, 0.93x of
--fdatasync=1); at 03:31 UTC, load 0.6-0.9: QD1 0.72x, batched 0.78x, the
write 0.44x of dsync (575 against 1,300 MiB/s: the disk's FLUSH time moves
by 3x between runs on this shared VM; in one-process A/B runs the write is
within 0.89-1.03x of the device's own FUA write of the same blocks, and
0.72-1.04x of fio --sync=dsync).  Before this session's changes: QD1 0.53x,
batched 0.45x, the write 0.24x of plain fio.  With the C lean read, the lean
``submit_read`` and LeanFutures (``--quick``, 2026-11-29 06:01 UTC, load
6.3-6.8): device QD32 Futures 0.71x, fs QD1 0.89x, fs QD32 ``submit_read``
0.33x (0.08x at 05:14 before them), fs QD32 batched 0.77x, the durable write
0.99x of --sync=dsync; ``bench/block_ab.py --fs`` interleaves the fs paths
(docs/ARCHITECTURE.md, "The lean reads in C, and the lean submit_read").  With
the waiting leader (BioRing) and the lean submit_read in C (``--quick``,
2026-11-29 09:25 UTC, load 2.8-4.1): device QD32 Futures 0.65x, fs QD32
``submit_read`` 0.66x; in ``bench/block_ab.py --bio`` / ``--fs`` (load 1.7-2.2)
0.84x and 0.61x, where the rows' pattern in bare C (``bench/block_oldest.c``)
runs at 1.03x and 1.06x of fio: what is left is the CPU of the Python per read
(docs/ARCHITECTURE.md, "The waiting thread leads").  Under ``chrt -f 10`` (09:47
UTC, load 5.2-6.0, with the Future resolved in C): device QD32 Futures 0.84x,
fs QD32 ``submit_read`` 0.77x.  A last pair of
rows reads 4 KiB at random through the pmem block driver (an image on
/dev/shm mounted ``dax="never"`` from its ``PmemDevice``, direct=True)
against DAX ``pread`` of the same image (informational: the cost of each
path).

The file is on the disk (ext4; not /dev/shm, which is RAM and has no
O_DIRECT path to a device), in ``--dir`` or $DAXFS_BENCH_DIR, else the first
of /var/tmp, bench/build, /tmp on a disk file system; it is written in full
first (a sparse file's holes would be read without touching the disk) and
removed afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import mmap
import os
import random
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from common import BUILD_DIR, MIB, Goal, Row, Unavailable, fio_job, fs_type, print_table

from daxfs.block import Bio, BioOp, open_block
from daxfs.block.file import FileBlockDevice
from daxfs.fs.direct import aligned_buffer
from daxfs.fs.file import File
from daxfs.fs.mount import mkfs, mount
from daxfs.pmem import open_device

GOAL = Goal(">=", 0.8)
DISK_TYPES = ("ext4", "ext3", "ext2", "xfs", "btrfs")
BS = 4096
PIECE = 1 * MIB
#: reads per ``readinto_many`` call of the batched QD32 row
BATCH = 256
#: fio jobs whose writes are durable on return, as the filesystem's direct write is:
#: O_DIRECT|O_DSYNC (the anchor of the goal; the same contract, one I/O per call) and
#: a write then an fdatasync (informational)
DURABLE_FIO: dict[str, tuple[str, ...]] = {
    "fio_dsync": ("--sync=dsync",),
    "fio_fdatasync": ("--fdatasync=1",),
}


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs (a few seconds)")
    parser.add_argument("--plain", action="store_true", help="plain-text table, without rich")
    parser.add_argument("--dir", type=Path, help="a directory on a disk file system (ext4)")
    return parser.parse_args(argv)


def bench_dir(explicit: Path | None) -> Path:
    """A directory on a disk file system that takes O_DIRECT."""
    env = os.environ.get("DAXFS_BENCH_DIR")
    candidates = [explicit] if explicit else [Path(env)] if env else []
    candidates += [Path("/var/tmp"), BUILD_DIR, Path("/tmp")]
    for directory in candidates:
        if directory is None:
            continue
        with contextlib.suppress(OSError):
            directory.mkdir(parents=True, exist_ok=True)
        writable = directory.is_dir() and os.access(directory, os.W_OK)
        if writable and fs_type(directory) in DISK_TYPES:
            return directory
    raise Unavailable(f"no writable directory on a disk file system ({', '.join(DISK_TYPES)})")


@contextlib.contextmanager
def bench_file(directory: Path, size: int) -> Iterator[Path]:
    """A file of ``size`` bytes of random data (no holes), removed afterwards."""
    path = directory / f"daxfs-bench-block-{os.getpid()}.img"
    try:
        write_random(path, size)
        yield path
    finally:
        path.unlink(missing_ok=True)


def write_random(path: Path, size: int) -> None:
    """``size`` bytes (a multiple of 4 MiB) of random data at ``path``, synced: no
    hole or unwritten extent that the file system could read without the disk."""
    chunk = random.Random(1).randbytes(4 * MIB)
    with open(path, "wb") as f:
        for _ in range(size // len(chunk)):
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())


# -- daxfs --------------------------------------------------------------------------------


def run_for(seconds: float, step: Callable[[int], int]) -> float:
    """Call ``step(i)`` (returns the ops it did) until ``seconds`` passed; ops per second."""
    ops = 0
    i = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        ops += step(i)
        i += 1
        if (i & 7) == 0 and time.perf_counter() >= deadline:
            break
    return ops / (time.perf_counter() - start)


def offsets(size: int, n: int = 1 << 16) -> list[int]:
    rng = random.Random(42)
    return [rng.randrange(size // BS) * BS for _ in range(n)]


def randread_qd1(dev: FileBlockDevice, seconds: float) -> float:
    buf = mmap.mmap(-1, BS)
    offs = offsets(dev.size)
    mask = len(offs) - 1

    def step(i: int) -> int:
        dev.readinto(offs[i & mask], buf)
        return 1

    return run_for(seconds, step)


def randread_qd(dev: FileBlockDevice, seconds: float, depth: int) -> float:
    """``depth`` read bios in flight: each one's ``end_io`` submits the next (on the
    engine's completion thread, or its workers), until ``seconds`` passed."""
    offs = offsets(dev.size)
    mask = len(offs) - 1
    lock = threading.Lock()
    finished = threading.Event()
    state = {"n": 0, "done": 0, "live": depth, "errors": 0}
    start = time.perf_counter()
    stop = start + seconds

    def submit(buf: mmap.mmap) -> None:
        with lock:
            n = state["n"]
            state["n"] = n + 1
        dev.submit_bio(Bio(BioOp.READ, offs[n & mask] >> 9, [buf], end_io=end_io, private=buf))

    def end_io(bio: Bio) -> None:
        with lock:
            state["done"] += 1
            state["errors"] += bio.status is not None
            more = time.perf_counter() < stop
            if not more:
                state["live"] -= 1
                if not state["live"]:
                    finished.set()
        if more:
            submit(bio.private)  # type: ignore[arg-type]

    for _ in range(depth):
        submit(mmap.mmap(-1, BS))
    finished.wait()
    elapsed = time.perf_counter() - start
    if state["errors"]:
        raise RuntimeError(f"{state['errors']} reads failed")
    return state["done"] / elapsed


def randread_futures(dev: FileBlockDevice, seconds: float, depth: int = 32) -> float:
    """``depth`` read bios in flight from this one thread: wait for the oldest's
    Future, submit the next; op/s."""
    offs = offsets(dev.size)
    mask = len(offs) - 1
    bufs = [mmap.mmap(-1, BS) for _ in range(depth)]

    def submit(n: int) -> Bio:
        bio = Bio(BioOp.READ, offs[n & mask] >> 9, [bufs[n % depth]])
        dev.submit_bio(bio)
        return bio

    window = [submit(n) for n in range(depth)]
    done = 0
    n = depth
    start = time.perf_counter()
    stop = start + seconds
    while True:
        slot = n % depth
        window[slot].future.result()
        done += 1
        if time.perf_counter() >= stop:
            break
        window[slot] = submit(n)
        n += 1
    for bio in window:
        bio.future.result()
    return done / (time.perf_counter() - start)


def randread_batched(dev: FileBlockDevice, seconds: float) -> float:
    """``readinto_many`` of BATCH random 4 KiB reads per call (the device keeps its
    queue depth in flight); op/s."""
    offs = offsets(dev.size)
    mask = len(offs) - 1
    bufs = [mmap.mmap(-1, BS) for _ in range(BATCH)]

    def step(i: int) -> int:
        base = i * BATCH
        dev.readinto_many([(offs[(base + k) & mask], buf) for k, buf in enumerate(bufs)])
        return BATCH

    return run_for(seconds, step)


def raw_ring_qd1(dev: FileBlockDevice, seconds: float) -> float:
    """The floor of the QD1 row: one read SQE submitted and waited for in one system
    call on a private ring of the C extension (``Ring.rw``, what the fast path
    calls), on the device's file descriptor, with none of daxfs.block's Python
    layers (BlockDevice, UringEngine); op/s.  The difference from the row's daxfs
    figure is what those layers cost per op ("where the time goes")."""
    from daxfs.block import _uring

    ring = _uring.Ring(1)
    buf = mmap.mmap(-1, BS)
    views = [memoryview(buf)]
    offs = offsets(dev.size)
    mask = len(offs) - 1

    def step(i: int) -> int:
        ring.rw(_uring.READV, dev.fd, offs[i & mask], views, 0)
        return 1

    try:
        return run_for(seconds, step)
    finally:
        views[0].release()
        ring.close()


def with_cpu(run: Callable[[], float]) -> tuple[float, float]:
    """``run()``'s rate and the process CPU seconds it used (all threads: the
    completion thread runs the end_io callbacks)."""
    cpu = time.process_time()
    rate = run()
    return rate, time.process_time() - cpu


def seqwrite(dev: FileBlockDevice, seconds: float) -> float:
    """Bytes per second of 1 MiB writes marching through the file."""
    buf = mmap.mmap(-1, PIECE)
    buf[:] = random.Random(2).randbytes(PIECE)
    pieces = dev.size // PIECE

    def step(i: int) -> int:
        dev.write((i % pieces) * PIECE, buf)
        return PIECE

    return run_for(seconds, step)


# -- fio ----------------------------------------------------------------------------------


def run_fio(
    path: Path,
    size: int,
    rw: str,
    bs: int,
    depth: int,
    seconds: float,
    extra: Sequence[str] = (),
) -> float:
    """One time-based fio run, io_uring engine, direct=1: IOPS (reads) or bytes/s (writes)."""
    args = [
        *extra,
        "--name=block",
        "--ioengine=io_uring",
        "--direct=1",
        f"--filename={path}",
        f"--size={size}",
        f"--bs={bs}",
        f"--rw={rw}",
        f"--iodepth={depth}",
        "--norandommap",
        "--randrepeat=0",
        "--time_based",
        f"--runtime={int(seconds * 1000)}ms",
        "--ramp_time=100ms",
        "--output-format=json",
    ]
    job = fio_job(args, "io_uring", timeout=120)
    try:
        side = job["read" if "read" in rw else "write"]
        return float(side["iops"] if "read" in rw else side["bw_bytes"])
    except (KeyError, TypeError, ValueError) as exc:
        raise Unavailable(f"cannot parse fio's JSON output: {exc}") from exc


# -- through the filesystem (direct=True) ---------------------------------------------------

FS_FILE = "/bench"


def fs_randread_qd1(f: File, size: int, seconds: float) -> float:
    buf = aligned_buffer(BS)
    offs = offsets(size)
    mask = len(offs) - 1

    def step(i: int) -> int:
        f.preadinto(buf, offs[i & mask])
        return 1

    return run_for(seconds, step)


def fs_randread_qd(f: File, size: int, seconds: float, depth: int) -> float:
    """``depth`` ``submit_read`` Futures in flight from this one thread: wait for the
    oldest, submit the next."""
    offs = offsets(size)
    mask = len(offs) - 1
    bufs = [aligned_buffer(BS) for _ in range(depth)]
    window = [f.submit_read(offs[i & mask], bufs[i]) for i in range(depth)]
    done = 0
    n = depth
    start = time.perf_counter()
    stop = start + seconds
    while True:
        slot = n % depth
        window[slot].result()
        done += 1
        if time.perf_counter() >= stop:
            break
        window[slot] = f.submit_read(offs[n & mask], bufs[slot])
        n += 1
    for future in window:
        future.result()
    return done / (time.perf_counter() - start)


def fs_randread_batched(f: File, size: int, seconds: float) -> float:
    """``File.preadinto_many`` of BATCH random 4 KiB reads per call; op/s."""
    offs = offsets(size)
    mask = len(offs) - 1
    bufs = [aligned_buffer(BS) for _ in range(BATCH)]

    def step(i: int) -> int:
        base = i * BATCH
        f.preadinto_many([(offs[(base + k) & mask], buf) for k, buf in enumerate(bufs)])
        return BATCH

    return run_for(seconds, step)


def fs_seqwrite(f: File, size: int, seconds: float) -> float:
    buf = aligned_buffer(PIECE)
    buf[:] = random.Random(2).randbytes(PIECE)
    pieces = size // PIECE

    def step(i: int) -> int:
        f.pwrite(buf, (i % pieces) * PIECE)
        return PIECE

    return run_for(seconds, step)


@contextlib.contextmanager
def fs_image(directory: Path, size: int) -> Iterator[tuple[Path, File]]:
    """A daxfs image on ``directory``'s disk mounted dax="never" (O_DIRECT through
    io_uring), holding one file of ``size`` bytes written in full by direct I/O; the
    file opened with direct=True."""
    image = directory / f"daxfs-bench-fs-{os.getpid()}.img"
    try:
        # written in full first (force: mkfs over the random bytes), so that fio's reads of
        # the image file hit the disk everywhere, as the file's do (a sparse image's holes
        # read as zeros without I/O: before this, fio's anchor was 2-3x too fast)
        write_random(image, size + 64 * MIB)
        mkfs(str(image), size=size + 64 * MIB, dax="never", force=True)
        # the image as an O_DIRECT block device on io_uring, 32 requests deep (as fio)
        with (
            open_block(str(image), engine="io_uring", queue_depth=32) as bdev,
            mount(bdev) as fs,
            fs.open(FS_FILE, "wb+", buffering=0, direct=True) as f,
        ):
            fs_seqwrite_once(f, size)  # type: ignore[arg-type]
            yield image, f  # type: ignore[misc]
    finally:
        image.unlink(missing_ok=True)


def fs_seqwrite_once(f: File, size: int) -> None:
    buf = aligned_buffer(PIECE)
    rng = random.Random(3)
    for off in range(0, size, PIECE):
        buf[:] = rng.randbytes(PIECE)
        f.pwrite(buf, off)


def measure_fs(
    directory: Path, size: int, seconds: float, passes: int
) -> tuple[dict[str, dict[str, float]], list[str]]:
    """Medians per row of the filesystem rows ("daxfs", "fio"), and notes."""
    rows = {
        "4 KiB random direct read, QD1": ("randread", BS, 1),
        "4 KiB random direct read, QD32": ("randread", BS, 32),
        f"4 KiB random direct read, QD32 batched ({BATCH} per preadinto_many)": (
            "batch",
            BS,
            32,
        ),
        "1 MiB sequential direct write": ("write", PIECE, 1),
    }
    notes: list[str] = []
    out: dict[str, dict[str, float]] = {}
    with fs_image(directory, size) as (image, f):
        dev = f._owner.device  # type: ignore[attr-defined]
        bdev = dev.bdev
        notes.append(f"filesystem rows: {image} as a block device: {bdev.engine}")
        for label, (rw, bs, depth) in rows.items():
            samples: dict[str, list[float]] = {"daxfs": [], "fio": []}
            for _ in range(passes):
                if rw == "write":
                    samples["daxfs"].append(fs_seqwrite(f, size, seconds))
                elif rw == "batch":
                    samples["daxfs"].append(fs_randread_batched(f, size, seconds))
                elif depth == 1:
                    samples["daxfs"].append(fs_randread_qd1(f, size, seconds))
                else:
                    samples["daxfs"].append(fs_randread_qd(f, size, seconds, depth))
                try:  # the image file itself, while mounted (fio reads and writes its blocks)
                    fio_rw = "randread" if rw == "batch" else rw
                    samples["fio"].append(
                        run_fio(image, image.stat().st_size, fio_rw, bs, depth, seconds)
                    )
                    if rw == "write":  # durable on return, as ours (see the docstring)
                        for key, extra in DURABLE_FIO.items():
                            samples.setdefault(key, []).append(
                                run_fio(image, image.stat().st_size, rw, bs, depth, seconds, extra)
                            )
                except Unavailable as exc:
                    if not any("fio" in note for note in notes):
                        notes.append(f"fio anchor: {exc}")
            out[label] = {side: statistics.median(v) for side, v in samples.items() if v}
    return out, notes


def measure_pmem(size: int, seconds: float, passes: int) -> dict[str, float] | None:
    """4 KiB random reads of one image on /dev/shm: direct=True through the pmem block
    driver (dax="never" over its PmemDevice) and DAX pread; op/s medians."""
    shm = Path("/dev/shm")
    if not shm.is_dir():
        return None
    image = shm / f"daxfs-bench-pmemblk-{os.getpid()}.img"
    try:
        mkfs(str(image), size=size + 64 * MIB)
        with mount(str(image)) as fs, fs.open(FS_FILE, "wb", buffering=0) as w:
            w.write(random.Random(4).randbytes(size))
        samples: dict[str, list[float]] = {"block": [], "dax": []}
        device = open_device(str(image))
        try:
            for _ in range(passes):
                with (
                    mount(device, dax="never") as fs,
                    fs.open(FS_FILE, "rb", buffering=0, direct=True) as f,
                ):
                    samples["block"].append(fs_randread_qd1(f, size, seconds))  # type: ignore[arg-type]
                with mount(device) as fs, fs.open(FS_FILE, "rb", buffering=0) as f:
                    samples["dax"].append(fs_randread_qd1(f, size, seconds))  # type: ignore[arg-type]
        finally:
            device.close()
        return {side: statistics.median(v) for side, v in samples.items()}
    finally:
        image.unlink(missing_ok=True)


# -- main ---------------------------------------------------------------------------------


def measure(
    path: Path, seconds: float, passes: int
) -> tuple[dict[str, dict[str, float]], list[str]]:
    """Medians per row and side ("io_uring", "threads", "fio"), and notes."""
    size = path.stat().st_size
    rows = {
        "4 KiB random direct read, QD1": ("randread", BS, 1),
        "4 KiB random direct read, QD32": ("randread", BS, 32),
        "4 KiB random direct read, QD32 Futures": ("futures", BS, 32),
        f"4 KiB random direct read, QD32 batched ({BATCH} per readinto_many)": (
            "batch",
            BS,
            32,
        ),
        "1 MiB sequential direct write": ("write", PIECE, 1),
    }
    notes: list[str] = []
    devs = {name: open_block(path, engine=name, queue_depth=32) for name in ("io_uring", "threads")}
    try:
        for name, dev in devs.items():
            if not dev.direct:
                raise Unavailable(f"{path}: no O_DIRECT ({dev.engine_reason})")
            notes.append(f"daxfs {name}: {dev.engine}; {dev.engine_reason}")
        out: dict[str, dict[str, float]] = {}
        for label, (rw, bs, depth) in rows.items():
            samples: dict[str, list[float]] = {"io_uring": [], "threads": [], "fio": []}
            cpu_per_op: list[float] = []  # io_uring side: process CPU seconds per op
            for _ in range(passes):
                for name, dev in devs.items():

                    def run(dev: FileBlockDevice = dev, rw: str = rw, depth: int = depth) -> float:
                        if rw == "write":
                            return seqwrite(dev, seconds)
                        if rw == "batch":
                            return randread_batched(dev, seconds)
                        if rw == "futures":
                            return randread_futures(dev, seconds, depth)
                        if depth == 1:
                            return randread_qd1(dev, seconds)
                        return randread_qd(dev, seconds, depth)

                    rate, cpu = with_cpu(run)
                    samples[name].append(rate)
                    if name == "io_uring":
                        ops = rate * seconds / (PIECE if rw == "write" else 1)
                        cpu_per_op.append(cpu / ops if ops else 0.0)
                if rw != "write" and depth == 1:
                    samples.setdefault("raw", []).append(raw_ring_qd1(devs["io_uring"], seconds))
                try:
                    fio_rw = "randread" if rw in ("batch", "futures") else rw
                    samples["fio"].append(run_fio(path, size, fio_rw, bs, depth, seconds))
                except Unavailable as exc:
                    if not any("fio" in note for note in notes):
                        notes.append(f"fio anchor: {exc}")
            out[label] = {side: statistics.median(v) for side, v in samples.items() if v}
            notes.append(where_time_goes(label, out[label], samples, cpu_per_op, rw))
        return out, notes
    finally:
        for dev in devs.values():
            dev.close()


def where_time_goes(
    label: str,
    medians: dict[str, float],
    samples: dict[str, list[float]],
    cpu_per_op: list[float],
    rw: str,
) -> str:
    """One line per row: the io_uring side's spread, its time and CPU per op against
    fio's time per op, and (QD1) the raw ring's floor measured in the same run."""
    ours = samples["io_uring"]
    spread = f"io_uring passes {min(ours):,.0f}..{max(ours):,.0f}"
    if rw == "write":
        spread = f"io_uring passes {min(ours) / MIB:,.0f}..{max(ours) / MIB:,.0f} MiB/s"
    unit = PIECE if rw == "write" else 1  # rates are bytes/s for writes
    per_op = 1e6 * unit / medians["io_uring"]
    cpu = statistics.median(cpu_per_op) * 1e6
    line = f"{label}: {spread}; {per_op:.1f} us/op, of it {cpu:.1f} us CPU (process)"
    if "fio" in medians:
        line += f"; fio {1e6 * unit / medians['fio']:.1f} us/op"
    if "raw" in medians:
        raw = 1e6 / medians["raw"]
        line += (
            f"; raw private ring (C Ring.rw, no daxfs.block layers) {raw:.1f} us/op: "
            f"the BlockDevice/UringEngine layers add {per_op - raw:.1f} us/op"
        )
    elif rw == "batch":
        line += (
            ": the items are checked, submitted and reaped in C (_uring.Fast.read_many); "
            "the CPU per op is the kernel's, plus the Python that builds each item; the "
            "queue drains at the end of each call"
        )
    elif rw == "write":
        line += ": the device's transfer time; the Python work per 1 MiB bio is hidden in it"
    elif rw == "futures":
        line += (
            ": a bio each, submitted by this thread (the C path of submit_bio, "
            "_uring.BioRing), its Future resolved in C by this thread as it waits "
            "(it reaps for it: the BioRing's waiting leader)"
        )
    else:
        line += (
            ": a bio each (Bio(), submit_bio through the C path _uring.BioRing, end_io "
            "called from C on its reaper thread), all on that one thread"
        )
    return line


def units(label: str, sides: dict[str, float]) -> tuple[str, float, float | None]:
    """A row's unit, the scale of its rates into that unit, and its fio anchor scaled."""
    write = "write" in label
    unit = "MiB/s" if write else "op/s"
    scale = 1 / MIB if write else 1.0
    fio = sides.get("fio")
    return unit, scale, fio * scale if fio is not None else None


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    seconds, passes, size = (0.4, 3, 64 * MIB) if args.quick else (1.0, 5, 256 * MIB)
    try:
        directory = bench_dir(args.dir)
    except Unavailable as exc:
        print(f"bench/block.py: skipped: {exc}")
        return 0
    with bench_file(directory, size) as path:
        try:
            results, notes = measure(path, seconds, passes)
        except Unavailable as exc:
            print(f"bench/block.py: skipped: {exc}")
            return 0
    table: list[Row] = []
    for label, sides in results.items():
        unit, scale, anchor = units(label, sides)
        table.append(Row(f"{label} (io_uring)", sides["io_uring"] * scale, anchor, unit, GOAL))
        table.append(Row(f"{label} (threads)", sides["threads"] * scale, anchor, unit))
    notes = [
        f"file: {path} ({fs_type(directory)}, {size // MIB} MiB, O_DIRECT); "
        f"anchor: fio --ioengine=io_uring --direct=1 on the same file; "
        f"{passes} interleaved runs of {seconds:g} s per side, medians",
        *notes,
    ]
    print_table(
        "block devices: daxfs.block file backend vs fio", table, notes=notes, plain=args.plain
    )
    fs_size = 64 * MIB if args.quick else 256 * MIB
    try:
        fs_results, fs_notes = measure_fs(directory, fs_size, seconds, passes)
    except Unavailable as exc:
        print(f"bench/block.py: filesystem rows skipped: {exc}")
        return 0
    fs_table: list[Row] = []
    for label, sides in fs_results.items():
        unit, scale, anchor = units(label, sides)
        if "fio_dsync" not in sides:
            fs_table.append(
                Row(f"{label} (fs, direct=True)", sides["daxfs"] * scale, anchor, unit, GOAL)
            )
            continue
        # the durable write: its goal is against fio's durable write (O_DSYNC), the
        # plain fio write (not durable: the disk's volatile cache) and a write +
        # fdatasync are shown beside it
        ours = sides["daxfs"] * scale
        fs_table += [
            Row(
                f"{label} (fs, direct=True, durable) vs fio --sync=dsync",
                ours,
                sides["fio_dsync"] * scale,
                unit,
                GOAL,
            ),
            Row(f"{label} (fs, direct=True, durable) vs fio (not durable)", ours, anchor, unit),
        ]
        if "fio_fdatasync" in sides:
            fs_table.append(
                Row(
                    f"{label} (fs, direct=True, durable) vs fio --fdatasync=1",
                    ours,
                    sides["fio_fdatasync"] * scale,
                    unit,
                )
            )
    pmem = measure_pmem(16 * MIB, seconds, passes)
    if pmem is not None:
        fs_table.append(
            Row(
                "4 KiB random read, pmem block driver (direct=True) vs DAX pread",
                pmem["block"],
                pmem["dax"],
                "op/s",
            )
        )
    fs_notes = [
        f"a {fs_size // MIB} MiB file of a daxfs image on {directory} ({fs_type(directory)}); "
        f"anchor: fio --ioengine=io_uring --direct=1 on the image file, same run; "
        f"{passes} interleaved runs of {seconds:g} s per side, medians; the write is "
        "durable on return (an overwrite: one FUA write, no transaction), so its goal's "
        "anchor is fio's durable write (--sync=dsync: O_DIRECT|O_DSYNC); fio's plain "
        "write is not durable (the disk has a volatile write cache)",
        "pmem row: a 16 MiB file of an image on /dev/shm, the same image read by DAX",
        *fs_notes,
    ]
    print_table(
        "direct I/O through the filesystem vs fio", fs_table, notes=fs_notes, plain=args.plain
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
