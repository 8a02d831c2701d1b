"""Pinning benchmark (issue 5): daxfs SGList consumers against read() and a copy.

    python bench/pin.py [--quick] [--plain]

One run creates a daxfs image on /dev/shm, mounted with persist="cpu", holding
a 1 GiB file and a 256 MiB file (64 MiB and 32 MiB with --quick), each in one
extent (allocated by a writable mapping, then filled with a byte pattern
through it and msync'ed), and measures:

    pin+unpin       File.pin(0, n).unpin() of 4 KiB and of the whole 1 GiB
                    file (one extent): median us per pair, from batches
                    (bench/common.py); informational, the 1 GiB row's anchor
                    is the 4 KiB row.  The memory of a 1 GiB pin is what
                    tracemalloc sees retained by creating the SGList (after a
                    first pin/unpin, so one-time allocations are not counted),
                    against the same for a 4 KiB pin; informational.
    send            the 256 MiB file over a loopback TCP connection:
                    File.pin + SGList.send(sock) + unpin (os.sendfile from the
                    device) against File.read(1 MiB) + sock.sendall per chunk
                    (the raw file, buffering=0); goal >= 2x.  A receiver
                    thread drains the other end with recv_into into one
                    reusable 1 MiB buffer; a pass is timed from the first send
                    until the receiver has every byte.  For information:
                    File.readinto of a reusable buffer + sendall; os.sendfile
                    of a plain /dev/shm file with the same bytes (no daxfs:
                    what sendfile itself reaches here); sock.sendall of each
                    of SGList.views() (device memory, one copy into the socket).
    sha-256         the 1 GiB file: File.pin + SGList.update(hashlib.sha256())
                    + unpin against hashlib.sha256().update of File.read(1 MiB)
                    chunks; goal >= 1x (the digests are compared).  For
                    information: the pinned views copied 1 MiB at a time into
                    one reused buffer that is hashed (a bounce buffer).

Bandwidths are medians of passes after an untimed one (GiB/s of the file);
the sides of a comparison take turns pass by pass (interleaved_gib_per_s), so
a drift of the machine's speed falls on all of them; the notes give each
side's min-max.
The image is deleted at the end.  Nothing is asserted; a failure of a section
is reported under the table and the other sections still run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import hashlib
import os
import queue
import socket
import statistics
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path

import numpy as np
from common import (
    FULL,
    GIB,
    KIB,
    MIB,
    QUICK,
    Goal,
    Timing,
    Unavailable,
    cpu_model,
    gib_per_s,
    median_ns_per_op,
    parse_args,
    print_table,
)
from fs import Report, check_free, daxfs_image, describe, open_raw
from pmem import size_name

import daxfs

SHM = Path("/dev/shm")
CHUNK = MIB  # read() chunks of the anchors, and the receiver's buffer
SMALL_PIN = 4 * KIB
IMAGE_SLACK = 128 * MIB


@dataclasses.dataclass(frozen=True)
class Plan:
    size: int  # the big file: pin of the whole, SHA-256
    send_size: int  # the file sent over TCP


FULL_PLAN = Plan(size=GIB, send_size=256 * MIB)
QUICK_PLAN = Plan(size=64 * MIB, send_size=32 * MIB)


@dataclasses.dataclass
class Files:
    big: daxfs.File
    send: daxfs.File
    described: str
    image: str


def make_file(fs: daxfs.FileSystem, name: str, size: int) -> daxfs.File:
    """A ``size``-byte file in one extent (if the allocator can), holding a byte pattern."""
    f = open_raw(fs, name)
    f.truncate(size)
    with f.mmap() as mapping:
        held = [mapping.asarray(np.uint8, (size // 256, 256))]
        held[0][:] = np.arange(256, dtype=np.uint8)
        held.clear()
        mapping.msync()
    f.close()  # the consumers only read: read-only pins (a writable one writes back at unpin)
    return open_raw(fs, name, "rb")


def extents(f: daxfs.File, size: int) -> int:
    with f.pin(0, size) as sg:
        return len(sg.segments)


@contextlib.contextmanager
def files(plan: Plan, report: Report) -> Iterator[Files]:
    check_free(SHM, plan.size + plan.send_size + IMAGE_SLACK)
    with daxfs_image(SHM, plan.size + plan.send_size + IMAGE_SLACK, "cpu") as (fs, image):
        big = make_file(fs, "/big", plan.size)
        send = make_file(fs, "/send", plan.send_size)
        try:
            for f, size in ((big, plan.size), (send, plan.send_size)):
                count = extents(f, size)
                if count != 1:
                    report.note(f"{f.path}: {count} extents, not 1 (the rows are for that)")
            yield Files(big, send, describe(fs), image.name)
        finally:
            big.close()
            send.close()


def interleaved_gib_per_s(
    sides: dict[str, Callable[[], int]], passes: int
) -> tuple[dict[str, float], str]:
    """Median GiB/s of each side's ``one_pass()`` (which returns the bytes it moved).

    As common.median_gib_per_s, but the sides take turns, pass by pass, so a
    drift of the machine's speed during the run falls on all of them alike.
    One untimed pass of each first.  Also returns "name min-max" spreads.
    """
    for one_pass in sides.values():
        one_pass()
    rates: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(passes):
        for name, one_pass in sides.items():
            start = time.perf_counter_ns()
            nbytes = one_pass()
            rates[name].append(gib_per_s(nbytes, time.perf_counter_ns() - start))
    spread = ", ".join(f"{name} {min(r):.2f}-{max(r):.2f}" for name, r in rates.items())
    return {name: statistics.median(r) for name, r in rates.items()}, spread


# -- pin+unpin ---------------------------------------------------------------------


def pin_loop(f: daxfs.File, length: int) -> Callable[[int], None]:
    pin = f.pin

    def loop(n: int) -> None:
        for _ in range(n):
            pin(0, length).unpin()

    return loop


def pin_memory(f: daxfs.File, length: int) -> tuple[int, int]:
    """(bytes retained, peak bytes) that tracemalloc sees while ``f.pin(0, length)`` runs."""
    f.pin(0, length).unpin()  # one-time allocations (the inode's Layouts) happen here
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        sg = f.pin(0, length)
        after, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    sg.unpin()
    return after - before, peak - before


def pin_section(plan: Plan, timing: Timing, report: Report, fl: Files) -> None:
    small_ns = median_ns_per_op(pin_loop(fl.big, SMALL_PIN), timing=timing)
    big_ns = median_ns_per_op(pin_loop(fl.big, plan.size), timing=timing)
    big_name = size_name(plan.size)
    report.row("pin+unpin 4 KiB (us)", small_ns / 1e3, None, "us")
    report.row(f"pin+unpin {big_name}, 1 extent (us) vs 4 KiB", big_ns / 1e3, small_ns / 1e3, "us")
    small_kept, small_peak = pin_memory(fl.big, SMALL_PIN)
    big_kept, big_peak = pin_memory(fl.big, plan.size)
    report.row(f"memory of a {big_name} pin vs a 4 KiB pin", big_kept, small_kept, "bytes")
    report.note(
        f"pin: File.pin(0, n).unpin() in a loop, batches of >= {timing.batch_ns / 1e6:g} ms; "
        f"memory = tracemalloc growth across File.pin (the SGList, its segments, the layout "
        f"lease), {big_kept:,} B retained / {big_peak:,} B peak for {big_name}, "
        f"{small_kept:,} B / {small_peak:,} B for 4 KiB"
    )


# -- send over loopback TCP ---------------------------------------------------------


class Receiver(threading.Thread):
    """Drains a socket: ``expect(n)`` then ``wait()`` returns when n bytes have arrived."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(name="pin-bench-receiver", daemon=True)
        self.sock = sock
        self.jobs: queue.Queue[int | None] = queue.Queue()
        self.results: queue.Queue[int | BaseException] = queue.Queue()

    def run(self) -> None:
        buffer = memoryview(bytearray(CHUNK))
        recv_into = self.sock.recv_into
        while (want := self.jobs.get()) is not None:
            got = 0
            try:
                while got < want:
                    n = recv_into(buffer, min(CHUNK, want - got))
                    if n == 0:
                        raise ConnectionError(f"peer closed after {got} of {want} bytes")
                    got += n
            except OSError as exc:
                self.results.put(exc)
                return
            self.results.put(got)

    def expect(self, nbytes: int) -> None:
        self.jobs.put(nbytes)

    def wait(self) -> int:
        result = self.results.get(timeout=120)
        if isinstance(result, BaseException):
            raise result
        return result

    def stop(self) -> None:
        self.jobs.put(None)
        self.join(timeout=10)


@contextlib.contextmanager
def loopback() -> Iterator[tuple[socket.socket, Receiver]]:
    """A connected TCP pair on 127.0.0.1: the sending socket and a running receiver."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        sender = socket.create_connection(listener.getsockname()[:2])
        peer, _ = listener.accept()
    receiver = Receiver(peer)
    receiver.start()
    try:
        yield sender, receiver
    finally:
        sender.close()  # the receiver's recv returns 0 if it still waits
        receiver.stop()
        peer.close()


def transfer(receiver: Receiver, nbytes: int, send: Callable[[], object]) -> Callable[[], int]:
    """A timed pass: the receiver expects ``nbytes``, ``send()`` runs, wait for the last byte."""

    def one_pass() -> int:
        receiver.expect(nbytes)
        send()
        got = receiver.wait()
        if got != nbytes:
            raise OSError(f"received {got} of {nbytes} bytes")
        return nbytes

    return one_pass


def send_section(plan: Plan, timing: Timing, report: Report, fl: Files) -> None:
    f, size = fl.send, plan.send_size

    with loopback() as (sock, receiver):

        def sg_send() -> None:
            with f.pin(0, size) as sg:
                sent = sg.send(sock)
            if sent != size:
                raise OSError(f"SGList.send sent {sent} of {size} bytes")

        def read_sendall() -> None:
            f.seek(0)
            while chunk := f.read(CHUNK):
                sock.sendall(chunk)

        buffer = bytearray(CHUNK)
        view = memoryview(buffer)

        def readinto_sendall() -> None:
            f.seek(0)
            while n := f.readinto(buffer):
                sock.sendall(view[:n])

        def views_sendall() -> None:
            with f.pin(0, size) as sg:
                for segment in sg.views():
                    sock.sendall(segment)

        plain_fd, plain_name = plain_shm_file(f, size)
        try:

            def plain_sendfile() -> None:
                done = 0
                while done < size:
                    done += os.sendfile(sock.fileno(), plain_fd, done, size - done)

            sides = {
                "sg": sg_send,
                "read": read_sendall,
                "readinto": readinto_sendall,
                "views": views_sendall,
                "plain": plain_sendfile,
            }
            passes = 2 * timing.passes + 1  # short passes, noisy: more of them
            rates, spread = interleaved_gib_per_s(
                {key: transfer(receiver, size, send) for key, send in sides.items()}, passes
            )
        finally:
            os.close(plain_fd)
            Path(plain_name).unlink(missing_ok=True)
        sndbuf = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    name = size_name(size)
    dax, read = rates["sg"], rates["read"]
    report.row(
        f"send {name} over TCP: SGList.send vs read+sendall", dax, read, "GiB/s", Goal(">=", 2)
    )
    report.row("  SGList.send vs readinto(reused buffer)+sendall", dax, rates["readinto"], "GiB/s")
    report.row("  os.sendfile, plain /dev/shm file vs read+sendall", rates["plain"], read, "GiB/s")
    report.row("  sendall(each of SGList.views()) vs read+sendall", rates["views"], read, "GiB/s")
    report.note(
        f"send: a {name} file, loopback TCP (127.0.0.1, default buffers, SO_SNDBUF {sndbuf:,}), "
        f"a receiver thread recv_into one reused {size_name(CHUNK)} buffer; daxfs = File.pin + "
        f"SGList.send (sendmsg of device-memory views) + unpin per pass; anchor = File.read("
        f"{size_name(CHUNK)}) + sendall; GiB/s from the first send to the receiver's last byte. "
        "Info rows: os.sendfile of the same bytes in a plain /dev/shm file (no daxfs: the "
        "sendfile ceiling here), and sock.sendall of the pinned device memory views (one copy "
        f"into the socket, none through a buffer); {passes} interleaved passes, GiB/s {spread}"
    )


def plain_shm_file(f: daxfs.File, size: int) -> tuple[int, str]:
    """A /dev/shm file (no daxfs) holding the bytes of ``f``: (open fd, path)."""
    fd, name = tempfile.mkstemp(prefix="daxfs-bench-", suffix=".bin", dir=SHM)
    try:
        buffer = bytearray(CHUNK)
        for off in range(0, size, CHUNK):
            n = f.preadinto(buffer, off)
            os.pwrite(fd, memoryview(buffer)[:n], off)
    except BaseException:
        os.close(fd)
        os.unlink(name)
        raise
    return fd, name


# -- SHA-256 --------------------------------------------------------------------------


def hash_section(plan: Plan, timing: Timing, report: Report, fl: Files) -> None:
    f, size = fl.big, plan.size
    digests: dict[str, bytes] = {}

    def sg_hash() -> int:
        with f.pin(0, size) as sg:
            digests["sg"] = sg.update(hashlib.sha256()).digest()
        return size

    def read_hash() -> int:
        h = hashlib.sha256()
        f.seek(0)
        while chunk := f.read(CHUNK):
            h.update(chunk)
        digests["read"] = h.digest()
        return size

    bounce = bytearray(CHUNK)
    bounce_view = memoryview(bounce)

    def sg_bounce_hash() -> int:
        h = hashlib.sha256()
        with f.pin(0, size) as sg:
            for view in sg.views():
                for off in range(0, len(view), CHUNK):
                    n = min(CHUNK, len(view) - off)
                    bounce_view[:n] = view[off : off + n]
                    h.update(bounce_view[:n])
        digests["bounce"] = h.digest()
        return size

    rates, spread = interleaved_gib_per_s(
        {"sg": sg_hash, "read": read_hash, "bounce": sg_bounce_hash}, timing.passes
    )
    dax, anchor, bounced = rates["sg"], rates["read"], rates["bounce"]
    name = size_name(size)
    report.row(
        f"SHA-256 of {name}: SGList.update vs read chunks", dax, anchor, "GiB/s", Goal(">=", 1)
    )
    report.row("  SGList.views() via a 1 MiB bounce buffer vs read", bounced, anchor, "GiB/s")
    same = "equal" if len(set(digests.values())) == 1 else "DIFFERENT"
    report.note(
        f"sha-256: File.pin + SGList.update(hashlib.sha256()) + unpin, against "
        f"hashlib.sha256().update(File.read({size_name(CHUNK)})) per chunk; the digests are "
        f"{same} ({digests['sg'].hex()[:16]}...); info row: each 1 MiB of the pinned views "
        "copied into one reused buffer, which is hashed (what read() does, without File.read); "
        f"{timing.passes} interleaved passes, GiB/s {spread}"
    )


# -- main -----------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv, "daxfs pinning (SGList) against read() and copies (issue 5)")
    if not SHM.is_dir():
        print(f"pin benchmark skipped: {SHM} does not exist")
        return 0
    timing, plan = (QUICK, QUICK_PLAN) if args.quick else (FULL, FULL_PLAN)
    report = Report()
    started = time.perf_counter()
    sections: list[tuple[str, Callable[[Plan, Timing, Report, Files], None]]] = [
        ("pin", pin_section),
        ("send", send_section),
        ("sha-256", hash_section),
    ]
    try:
        with files(plan, report) as fl:
            report.note(
                f"daxfs image {fl.image} on {SHM}, persist='cpu' ({fl.described}); files of "
                f"{size_name(plan.size)} and {size_name(plan.send_size)}, raw (buffering=0)"
            )
            report.run_sections(
                [(name, partial(section, plan, timing, report, fl)) for name, section in sections],
                skip=(Unavailable, OSError, BufferError),
            )
    except (Unavailable, OSError) as exc:
        report.note(f"setup failed: {type(exc).__name__}: {exc}")
    report.note(f"total {time.perf_counter() - started:.0f} s")
    mode = "quick" if args.quick else "full"
    title = f"daxfs pinning (SGList) vs read() copies ({mode}, {cpu_model()})"
    print_table(title, report.rows, notes=report.notes, plain=args.plain)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
