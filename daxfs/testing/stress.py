"""The stress run: fsx and the threaded namespace stress, on an image and simulated.

``run_stress(image, seconds, seed)`` shares a time budget between four phases:

    fsx          fsx on a file in a scratch directory of the image (the real
                 device: remounts and fsck, no simulated power failures)
    fsx-crash    fsx on a simulated 16 MiB device, with power failures inside
                 and between operations
    namespace    the threaded namespace stress in the scratch directory
    full-disk    the namespace stress on a simulated 16 MiB device, filled
                 until ENOSPC is common

The scratch directory (``/.daxfs-stress-<seed>``) is removed at the end when
nothing failed, and left for inspection otherwise; nothing else of the image
is written (the full-disk phase never runs on the image).  Every phase takes
its seed from ``seed``; each failure is one line that names it and says how
to reproduce it.  ``image=None`` runs the image phases on a simulated device
too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import shlex
import time
from collections.abc import Callable, Iterable

from daxfs.fs.fsck import fsck
from daxfs.fs.mount import mkfs, mount
from daxfs.testing import fsx, nsstress
from daxfs.testing.simulated import SimulatedPmem

#: share of the budget per phase
PHASES = {"fsx": 0.25, "fsx-crash": 0.35, "namespace": 0.2, "full-disk": 0.2}
SHRINK_SHARE = 0.25  # at most this share of a phase's budget goes into shrinking a failure


@dataclasses.dataclass
class StressReport:
    """What a stress run did and found: one line per phase, one per failure."""

    seed: int
    lines: list[str] = dataclasses.field(default_factory=list)
    failures: list[str] = dataclasses.field(default_factory=list)
    fsx: fsx.FsxStats = dataclasses.field(default_factory=fsx.FsxStats)
    namespace_ops: int = 0

    @property
    def ok(self) -> bool:
        return not self.failures


def run_stress(
    image: str | None,
    seconds: float,
    seed: int,
    *,
    without: Iterable[str] = (),
    threads: int = 4,
    phases: Iterable[str] = tuple(PHASES),
    say: Callable[[str], None] | None = None,
) -> StressReport:
    """Run the phases for ``seconds`` in all; see the module docstring.

    ``without`` names operations not to make (fsx kinds such as ``mapfsync``,
    namespace kinds such as ``punch``), to run around a known bug.
    """
    report = StressReport(seed)
    skip = frozenset(without)
    rng = random.Random(seed)
    seeds = {name: rng.randrange(1 << 31) for name in PHASES}
    chosen = [p for p in PHASES if p in set(phases)]
    total = sum(PHASES[p] for p in chosen) or 1.0
    top = f"/.daxfs-stress-{seed}"
    emit = say or (lambda line: None)

    def line(text: str) -> None:
        report.lines.append(text)
        emit(text)

    def fail(text: str) -> None:
        report.failures.append(text)
        emit(f"FAIL {text}")

    for phase in chosen:
        budget = seconds * PHASES[phase] / total
        where = image if image is not None and phase in ("fsx", "namespace") else None
        try:
            if phase in ("fsx", "fsx-crash"):
                _fsx_phase(report, phase, seeds[phase], budget, where, top, skip, line, fail)
            else:
                _namespace_phase(
                    report, phase, seeds[phase], budget, where, top, skip, threads, line, fail
                )
        except Exception as exc:  # a failure of the harness itself must be seen too
            fail(f"{phase} seed={seeds[phase]}: {type(exc).__name__}: {exc}")
    if image is not None and report.ok:
        _remove(image, top)
    return report


def _fsx_phase(
    report: StressReport,
    phase: str,
    seed: int,
    budget: float,
    image: str | None,
    top: str,
    skip: frozenset[str],
    line: Callable[[str], None],
    fail: Callable[[str], None],
) -> None:
    options = fsx.FsxOptions()
    for kind in skip & set(options.weights):
        options.weights[kind] = 0
    device: str | SimulatedPmem
    if image is not None:
        device = image
        directory = top
        _prepare(image, top)
        where = image
    else:
        device = SimulatedPmem(options.device_size)
        mkfs(device)
        directory = ""
        where = f"a simulated {options.device_size >> 20} MiB device"
    start = time.monotonic()
    try:
        stats = fsx.run(
            seed,
            seconds=budget * (1 - SHRINK_SHARE),
            options=options,
            device=device,
            directory=directory,
        )
    except fsx.FsxFailure as exc:
        ops = exc.ops[: exc.index + 1]
        with contextlib.suppress(Exception):
            ops = fsx.shrink(exc, options=options, budget=budget * SHRINK_SHARE)
        weights = " ".join(f"--weight {k}=0" for k in sorted(skip & set(options.weights)))
        fail(
            f"{phase} seed={seed} op#{exc.index} ({exc.ops[exc.index]}): {exc.message}; "
            f"reproduce ({len(ops)} ops): python -m daxfs.testing.fsx --seed {seed} "
            f"{weights + ' ' if weights else ''}--replay {shlex.quote(fsx.format_ops(ops))}"
        )
        return
    report.fsx.add(stats)
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(stats.by_kind.items()))
    line(
        f"{phase} (seed {seed}) on {where}: {stats.summary()} "
        f"in {time.monotonic() - start:.0f} s [{kinds}]"
    )


def _namespace_phase(
    report: StressReport,
    phase: str,
    seed: int,
    budget: float,
    image: str | None,
    top: str,
    skip: frozenset[str],
    threads: int,
    line: Callable[[str], None],
    fail: Callable[[str], None],
) -> None:
    full = phase == "full-disk"
    options = nsstress.StressOptions.full(threads) if full else nsstress.StressOptions(threads)
    options.skip = skip
    device: str | SimulatedPmem
    if image is not None:
        _prepare(image, top)
        device = image
        where = image
        stress_top = f"{top}/ns"
    else:
        device = SimulatedPmem(options.device_size)
        mkfs(device)
        where = f"a simulated {options.device_size >> 20} MiB device"
        stress_top = ""
    start = time.monotonic()
    try:
        stats = nsstress.run(seed, seconds=budget, options=options, device=device, top=stress_top)
    except nsstress.StressFailure as exc:
        for text in exc.lines:
            fail(f"{phase} seed={seed}: {text}")
        return
    report.namespace_ops += stats.ops
    line(
        f"{phase} (seed {seed}, {threads} threads) on {where}: {stats.summary()}, fsck clean, "
        f"in {time.monotonic() - start:.0f} s"
    )


def _prepare(image: str, top: str) -> None:
    """The scratch directory on the image exists (and the image is a daxfs)."""
    with mount(image) as fs:
        if not fs.exists(top):
            fs.mkdir(top)


def _remove(image: str, top: str) -> None:
    """Remove the scratch directory; fsck the image."""
    with mount(image) as fs:
        if fs.exists(top):
            for root, dirs, files in list(fs.walk(top, topdown=False)):
                for name in files:
                    fs.unlink(f"{root}/{name}")
                for name in dirs:
                    path = f"{root}/{name}"
                    if fs.islink(path):
                        fs.unlink(path)
                    else:
                        fs.rmdir(path)
            fs.rmdir(top)
    report = fsck(image)
    if not report.clean:
        raise AssertionError(f"fsck of {image} after removing {top}:\n{report}")
