"""The daxfs demo (``make demo``): persistent memory from Python, end to end.

1. Create an emulated pmem image in the working directory and show what
   daxfs detected about it, and why.
2. Store a record through direct access (a memoryview onto device memory, no
   copy), persist it, and read it back from a fresh mapping.
3. Simulate power failures on a SimulatedPmem: what was persisted survives
   every crash; what was only stored may or may not; large stores tear at
   8-byte boundaries.
4. Format the image as a daxfs filesystem, create a small tree, write and
   read files, fsck it.
5. Crash a simulated copy in the middle of a rename, at every persist point,
   and show that recovery yields the tree before or after the rename, never a
   mix, with fsck clean every time.
6. DAX mmap: map a file as a numpy array, update it, msync one range, crash a
   simulated copy and show that exactly the msync'ed range survived.
7. Pinning: pin a range, send it over a loopback socket while a truncate of
   that range waits, and show the truncate completing after the unpin.
8. The same filesystem on a block device (no persistent memory needed): a
   copy of the image mounted ``dax="never"`` through io_uring and O_DIRECT,
   buffered reads served by a bounded page cache built atop direct I/O,
   direct reads with 32 Futures in flight, and a buffered overwrite crashed
   at every persist point of a simulated disk with a volatile write cache.
9. Quick benchmark figures against PMDK's libpmem2.
10. A FUSE mount (where /dev/fuse exists): the image mounted with ``daxfs mount``,
   used by ordinary programs (cp, ls, tar, sqlite3, pandas), unmounted, fsck
   clean.  A failure there is printed and makes the demo exit 1.
"""

from __future__ import annotations

import mmap
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from rich.console import Console

import daxfs
from daxfs.cli.info import describe_device
from daxfs.fs.fsck import fsck
from daxfs.pmem import open_device
from daxfs.testing import PowerFailure, SimulatedPmem
from daxfs.testing.blockcrash import check_fs_block_operation

IMAGE = Path("demo.pmem")
SIZE = 64 << 20
console = Console(highlight=False, markup=False, soft_wrap=True)


def step(title: str) -> None:
    console.print(f"\n== {title}", style="bold cyan")


def show_detection() -> None:
    step(f"1. An emulated pmem image: {IMAGE.resolve()} ({SIZE >> 20} MiB)")
    if IMAGE.exists():
        IMAGE.unlink()
    for persist in ("auto", "cpu"):
        with open_device(IMAGE, SIZE, create=True, persist=persist) as dev:
            facts = describe_device(dev)
        console.print(f"persist={persist!r}:")
        for key in ("backend", "granularity", "persist_method", "flush_instruction"):
            console.print(f"  {key:<18} {facts[key]}")
        console.print(f"  {'power_fail_safe':<18} {facts['power_fail_safe']}")
        console.print(f"  why: {facts['reasons']['persist']}")


def direct_access() -> None:
    step("2. Store through direct access, persist, read back after remapping")
    record = b"daxfs: hello, persistent memory!"
    with open_device(IMAGE) as dev:
        with dev.direct_access(4096, len(record)) as view:  # aliases device memory
            view[:] = record  # a plain store: not durable yet
        dev.persist(4096, len(record))  # msync of the one page covering it
        console.print(f"stored {len(record)} bytes at offset 4096 and persisted them")
    with open_device(IMAGE) as dev:
        console.print(f"after remapping, offset 4096 holds: {dev.read(4096, len(record))!r}")


def power_failure() -> None:
    step("3. Power failure on a simulated device (x86 ADR model)")
    dev = SimulatedPmem(1 << 16)
    dev.write(0, b"PERSISTED-RECORD")  # copy + flush + fence: durable
    with dev.direct_access(64, 16) as view:
        view[:] = b"only-stored-here"  # stored, never flushed
    console.print(f"pending (not yet durable) ranges: {dev.pending()}")
    outcomes: dict[bytes, int] = {}
    for state in dev.crash_states():
        assert state.read(0, 16) == b"PERSISTED-RECORD"
        outcome = state.read(64, 16)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    console.print("every crash state holds the persisted record: b'PERSISTED-RECORD'")
    console.print("the unflushed store, after each possible crash (8-byte pieces tear):")
    for outcome in outcomes:
        console.print(f"  {outcome!r}")

    dev = SimulatedPmem(1 << 16)
    dev.schedule_power_failure(fence=2)
    dev.write(128, b"first-write-ok!!")
    try:
        dev.write(144, b"second-write....")
    except BaseException as exc:  # PowerFailure is a BaseException by design
        console.print(f"scheduled failure at the 2nd fence: {type(exc).__name__}: {exc}")
    console.print("possible contents of [128, 160) afterwards:")
    for survivor in sorted({s.read(128, 32) for s in dev.crash_states()}):
        console.print(f"  {survivor!r}")


def filesystem() -> None:
    step(f"4. A daxfs filesystem on {IMAGE}")
    sb = daxfs.mkfs(IMAGE, label="demo", force=True)  # force: step 2 left data there
    console.print(
        f"mkfs: uuid {sb.uuid_str}, {sb.block_count} blocks of 4 KiB, "
        f"journal {sb.journal_blocks} blocks"
    )
    with daxfs.mount(IMAGE) as fs:
        fs.makedirs("/projects/daxfs")
        with fs.open("/projects/daxfs/README", "w") as f:
            f.write("Every operation is atomic and durable on return.\n")
        with fs.open("/projects/data.bin", "wb", buffering=0) as raw:
            raw.write(bytes(range(256)) * 64)  # durable when write returns
            raw.pwrite(b"DAX!", 4096)
        fs.symlink("/projects/daxfs/README", "/README")
        for top, dirs, files in fs.walk("/"):
            console.print(f"  {top:<18} dirs={sorted(dirs)} files={sorted(files)}")
        with fs.open("/README") as f:
            console.print(f"  /README -> {fs.readlink('/README')}: {f.read().strip()!r}")
        st = fs.stat("/projects/data.bin")
        console.print(
            f"  /projects/data.bin: {st.st_size} bytes, {st.st_blocks // 8} blocks, ino {st.st_ino}"
        )
    report = fsck(IMAGE)
    console.print(f"fsck {IMAGE}: {report}")


def crash_in_rename() -> None:
    step("5. Power failure in the middle of a rename, at every persist point")
    base = SimulatedPmem(16 << 20)
    daxfs.mkfs(base)
    with daxfs.mount(base) as fs:
        fs.makedirs("/inbox")
        fs.mkdir("/archive")
        with fs.open("/inbox/report.txt", "w") as f:
            f.write("quarterly numbers\n")
        with fs.open("/archive/report.txt", "w") as f:
            f.write("last year's numbers\n")
    image = base.read(0, base.size)
    fence = 0
    while True:
        fence += 1
        dev = SimulatedPmem(base.size, image=image)
        fs = daxfs.mount(dev)
        dev.schedule_power_failure(fence)
        try:
            fs.rename("/inbox/report.txt", "/archive/report.txt")  # replaces the target
        except PowerFailure:
            pass
        else:
            console.print(
                f"the rename issued {fence - 1} fences; at each, every crash state recovered "
                "to the tree before or after it"
            )
            break
        outcomes = set()
        for state in dev.crash_states(limit=8, seed=fence):
            with daxfs.mount(state) as after:  # recovery replays the journal
                inbox = after.listdir("/inbox")
                with after.open("/archive/report.txt") as f:
                    text = f.read().strip()
            assert fsck(state).clean
            outcomes.add(
                "after"
                if not inbox and text == "quarterly numbers"
                else "before"
                if inbox and text == "last year's numbers"
                else "MIXED"
            )
        console.print(f"  fence {fence}: recovered states {sorted(outcomes)}, fsck clean")


def mmap_numpy() -> None:
    step("6. DAX mmap: a file as a numpy array, msync of one range, then a crash")
    dev = SimulatedPmem(32 << 20)
    daxfs.mkfs(dev)
    fs = daxfs.mount(dev)
    with fs.open("/matrix.f64", "wb", buffering=0) as f:
        f.write(np.zeros((512, 512)).tobytes())  # 2 MiB, durable
    f = fs.open("/matrix.f64", "rb+", buffering=0)
    m = f.mmap()  # the file's extents, mapped straight from device memory
    a = m.asarray(np.float64, shape=(512, 512))  # zero-copy numpy view
    a[0, :] = 1.0  # row 0: 4 KiB, one page
    a[100, :] = 2.0  # row 100: stored, never msync'ed
    m.msync(0, 512 * 8)  # exactly row 0's 4 KiB: 64 cache lines flushed, one fence
    console.print(
        f"mapped {len(m)} bytes at {m.address:#x}; row 0 and row 100 updated; msync of row 0 only"
    )
    rows = {0: set(), 100: set()}
    for state in dev.crash_states(limit=12, seed=6):
        with daxfs.mount(state) as after, after.open("/matrix.f64", "rb") as g:
            data = np.frombuffer(g.read(), np.float64).reshape(512, 512)
        rows[0].add(float(data[0].mean()))
        rows[100].add(float(data[100].mean()))
    console.print(
        f"after 12 simulated power failures: row 0 means {sorted(rows[0])} (always "
        f"survives), row 100 means {sorted(rows[100])} (may be lost or torn)"
    )
    del a
    m.close()
    f.close()
    fs.unmount()


def pin_and_truncate() -> None:
    step("7. Pinning: send a pinned range while a truncate of it waits")
    dev = SimulatedPmem(32 << 20)
    daxfs.mkfs(dev)
    with daxfs.mount(dev) as fs:
        with fs.open("/video", "wb", buffering=0) as f:
            f.write(bytes(range(256)) * 4096)  # 1 MiB
        f = fs.open("/video", "rb+", buffering=0)
        sg = f.pin(0, 1 << 20)
        console.print(f"pinned 1 MiB: {len(sg.segments)} segment(s) {sg.bio_segments()}")
        events: list[str] = []
        t0 = time.monotonic()

        def truncate() -> None:
            fs.truncate("/video", 4096)
            events.append(f"truncate done after {time.monotonic() - t0:.2f} s")

        worker = threading.Thread(target=truncate)
        worker.start()
        a, b = socket.socketpair()
        received = bytearray()
        reader = threading.Thread(target=lambda: received.extend(_recv_all(b, sg.length)))
        reader.start()
        sent = sg.send(a)  # zero-copy: sendfile from the device's file
        reader.join()
        time.sleep(0.3)
        console.print(
            f"sent {sent} bytes over a loopback socket; received intact: "
            f"{bytes(received) == bytes(range(256)) * 4096}; "
            f"truncate still waiting: {worker.is_alive()}"
        )
        sg.unpin()
        worker.join()
        console.print(f"unpinned: {events[0]}; size now {fs.stat('/video').st_size}")
        a.close()
        b.close()
        f.close()
    console.print(f"fsck: {fsck(dev)}")


def _recv_all(sock: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        out += sock.recv(n - len(out))
    return bytes(out)


def block_device() -> None:
    step("8. The same filesystem on a block device: direct I/O, a page cache, a power failure")
    disk = IMAGE.with_name("demo-block.img")  # beside the image, on a disk (O_DIRECT)
    shutil.copyfile(IMAGE, disk)
    try:
        with daxfs.mount(disk, dax="never", cache_size="8M") as fs:
            bdev = fs.device.bdev  # type: ignore[attr-defined]
            console.print(f"{disk} as a block device: {bdev.engine}")
            data = np.random.default_rng(8).integers(0, 256, 4 << 20, dtype=np.uint8).tobytes()
            with fs.open("/block.bin", "wb") as f:  # buffered: through the page cache
                f.write(data)
            stats = fs.device.files.stats  # type: ignore[attr-defined]
            for attempt in ("first", "second"):
                hits, misses = stats.hits, stats.misses
                with fs.open("/block.bin", "rb") as f:
                    assert f.read() == data
                console.print(
                    f"buffered, {attempt} read of 4 MiB: {stats.misses - misses} pages read "
                    f"from the disk (readahead runs of the file's own direct-I/O bios), "
                    f"{stats.hits - hits} page reads served by the 8 MiB page cache"
                )
            with fs.open("/block.bin", "rb", buffering=0, direct=True) as f:
                bufs = [mmap.mmap(-1, 4096) for _ in range(32)]
                apart = 128 << 10  # 4 KiB every 128 KiB
                futures = [f.submit_read(i * apart, buf) for i, buf in enumerate(bufs)]
                done = sum(future.result() for future in futures)
                same = all(bytes(b) == data[i * apart :][:4096] for i, b in enumerate(bufs))
                console.print(f"direct: 32 reads in flight as Futures: {done} bytes, equal {same}")
                try:
                    f.preadinto(bytearray(100), 3)
                except OSError as exc:
                    console.print(f"direct, unaligned: {type(exc).__name__}: {exc}")
        console.print(f"fsck {disk}: {fsck(str(disk))}")
    finally:
        disk.unlink(missing_ok=True)

    def setup(fs: daxfs.FileSystem) -> None:
        with fs.open("/ledger", "wb") as f:
            f.write(b"old " * 16384)

    def overwrite(fs: daxfs.FileSystem) -> None:
        with fs.open("/ledger", "r+b") as f:
            f.seek(8192)
            f.write(b"new " * 8192)

    report = check_fs_block_operation(setup, overwrite, cache_size="256K")
    console.print(
        f"a 32 KiB buffered overwrite on a simulated disk with a volatile write cache: "
        f"{report.points} persist points (FLUSH or FUA), {report.states} crash states, "
        f"{report.before_seen} before and {report.after_seen} after, none mixed, fsck clean"
    )


def benchmark() -> None:
    step("9. Quick benchmark: daxfs against PMDK's libpmem2 (full run: make bench)")
    script = Path(__file__).resolve().parent.parent / "bench" / "pmem.py"
    if not script.exists():
        console.print("bench/pmem.py is missing; skipping")
        return
    subprocess.run([sys.executable, str(script), "--quick"], check=False, env=os.environ.copy())


def fuse_mount() -> bool:
    """Section 10; False if it failed (printed)."""
    step("9. A FUSE mount: the image for every program (daxfs mount / daxfs umount)")
    from daxfs.fuse import available, tap_engine

    why = available()
    if why is not None:
        console.print(f"skipped: {why}")
        return True
    console.print(f"wire tap: {tap_engine()[0]} ({tap_engine()[1]})")
    import shutil
    import tempfile

    daxfs_cli = [sys.executable, "-m", "daxfs.cli"]
    mountpoint = tempfile.mkdtemp(prefix="daxfs-demo-")
    daxfs.mkfs(IMAGE, SIZE, label="demo-fuse", force=True)

    def run(*args: str) -> str:
        done = subprocess.run(args, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise OSError(f"{' '.join(args)}: {done.stderr.strip()}")
        for note in done.stderr.splitlines():  # daxfs mount's notes, if any
            console.print(f"  {note}")
        return done.stdout

    ok = True
    try:
        run(*daxfs_cli, "mount", str(IMAGE), mountpoint)
        console.print(f"$ daxfs mount {IMAGE} {mountpoint}")
        examples = Path(__file__).resolve().parent
        run("cp", "-a", str(examples), f"{mountpoint}/examples")
        console.print("$ cp -a examples/ MOUNT/examples && ls -l MOUNT/examples")
        for line in run("ls", "-l", f"{mountpoint}/examples").splitlines():
            console.print(f"  {line}")
        run("tar", "cf", f"{mountpoint}/examples.tar", "-C", mountpoint, "examples")
        listed = run("tar", "tf", f"{mountpoint}/examples.tar").split()
        console.print(f"$ tar cf MOUNT/examples.tar ...: {len(listed)} entries")
        import sqlite3

        db = sqlite3.connect(f"{mountpoint}/demo.db")
        db.execute("PRAGMA journal_mode=WAL")
        with db:
            db.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
            db.executemany("INSERT INTO t VALUES (?, ?)", ((i, f"row {i}") for i in range(1000)))
        count = db.execute("SELECT count(*) FROM t").fetchone()[0]
        db.close()
        console.print(f"sqlite3 with a WAL database on the mount: {count} rows")
        import pandas as pd

        frame = pd.DataFrame({"k": range(1000), "v": [i * 0.5 for i in range(1000)]})
        frame.to_csv(f"{mountpoint}/frame.csv", index=False)
        back = pd.read_csv(f"{mountpoint}/frame.csv")
        console.print(f"pandas to_csv / read_csv on the mount: equal = {back.equals(frame)}")
        ok = bool(back.equals(frame))
    except OSError as exc:
        console.print(f"the FUSE section failed: {exc}", style="bold red")
        ok = False
    finally:
        subprocess.run([*daxfs_cli, "umount", mountpoint], capture_output=True, check=False)
        shutil.rmtree(mountpoint, ignore_errors=True)
    console.print("$ daxfs umount: the image is released; through the Python API again:")
    with daxfs.mount(IMAGE) as fs:
        console.print(f"  / holds {sorted(fs.listdir('/'))}")
    result = fsck(IMAGE)
    console.print(f"fsck {IMAGE}: {result}")
    console.print("real DAX mmap is File.mmap in Python: a mmap on the mount is page cache")
    return ok and result.clean


def main() -> int:
    show_detection()
    direct_access()
    power_failure()
    filesystem()
    crash_in_rename()
    mmap_numpy()
    pin_and_truncate()
    block_device()
    benchmark()
    if not fuse_mount():
        console.print("\nthe FUSE section failed (above)", style="bold red")
        return 1
    console.print(f"\ndone: the image is {IMAGE.resolve()}", style="bold green")
    return 0


if __name__ == "__main__":
    sys.exit(main())
