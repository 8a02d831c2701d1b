"""The daxfs demo (``make demo``): persistent memory from Python, end to end.

1. Create an emulated pmem image in the working directory and show what
   daxfs detected about it, and why.
2. Store a record through direct access (a memoryview onto device memory, no
   copy), persist it, and read it back from a fresh mapping.
3. Simulate power failures on a SimulatedPmem: what was persisted survives
   every crash; what was only stored may or may not; large stores tear at
   8-byte boundaries.
4. Quick benchmark figures against PMDK's libpmem2.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from rich.console import Console

from daxfs.cli.info import describe_device
from daxfs.pmem import open_device
from daxfs.testing import SimulatedPmem

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


def benchmark() -> None:
    step("4. Quick benchmark: daxfs against PMDK's libpmem2 (full run: make bench)")
    script = Path(__file__).resolve().parent.parent / "bench" / "pmem.py"
    if not script.exists():
        console.print("bench/pmem.py is missing; skipping")
        return
    subprocess.run([sys.executable, str(script), "--quick"], check=False, env=os.environ.copy())


def main() -> int:
    show_detection()
    direct_access()
    power_failure()
    benchmark()
    console.print(f"\ndone: the image is {IMAGE.resolve()}", style="bold green")
    return 0


if __name__ == "__main__":
    sys.exit(main())
