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

``dax="never"`` runs every phase through the block layer and the buffer cache
(daxfs.block.cache.BlockCache): the image phases reach the image as a block
device (daxfs.block.open_block), the simulated ones run on a
``SimulatedBlockDevice`` (power failures at its FLUSH and FUA writes);
``cache_size`` with it bounds every mount of a block device by a page cache of
that size (daxfs.pagecache.bounded), the image's too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import random
import shlex
import time
from collections.abc import Callable, Iterable, Iterator

from daxfs.block.device import BlockDevice
from daxfs.block.file import open_block
from daxfs.errors import InvalidArgument
from daxfs.fs.devices import check_dax
from daxfs.fs.fsck import fsck
from daxfs.fs.mount import mkfs, mount
from daxfs.pagecache.cache import check_cache_size
from daxfs.testing import fsx, nsstress
from daxfs.testing.simblock import SimulatedBlockDevice
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
    dax: str = "inode",
    cache_size: str | None = None,
) -> StressReport:
    """Run the phases for ``seconds`` in all; see the module docstring.

    ``without`` names operations not to make (fsx kinds such as ``mapfsync``,
    namespace kinds such as ``punch``), to run around a known bug.  ``dax``:
    "never" runs every phase through the block layer, and ``cache_size`` (with
    it only) bounds each mount's page cache.

    Raises:
        InvalidArgument (EINVAL): a bad ``dax``; a bad ``cache_size``, or one
            without ``dax="never"``.
        OSError(ENOMEM): ``cache_size`` above MemAvailable.
    """
    block = check_dax(dax) == "never"
    if cache_size is not None:
        check_cache_size(cache_size)
        if not block:
            raise InvalidArgument(
                f"cache_size={cache_size!r} bounds a block-backed mount: use dax='never'"
            )
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
            with _target(where, block) as target:
                run = (
                    _fsx_phase
                    if phase in ("fsx", "fsx-crash")
                    else functools.partial(_namespace_phase, threads=threads)
                )
                how = (block, cache_size)
                run(report, phase, seeds[phase], budget, target, top, skip, how, line, fail)
        except Exception as exc:  # a failure of the harness itself must be seen too
            fail(f"{phase} seed={seeds[phase]}: {type(exc).__name__}: {exc}")
    if image is not None and report.ok:
        with _target(image, block) as target:
            assert target is not None
            _remove(target, top, cache_size)
    return report


Image = str | BlockDevice  # an image phase's target: the path, or the path opened as a block device


@contextlib.contextmanager
def _target(image: str | None, block: bool) -> Iterator[Image | None]:
    """What a phase mounts: ``image`` itself, or (``block``) it opened as a block device
    (every mount then goes through the buffer cache), closed after the phase."""
    if image is None or not block:
        yield image
        return
    with open_block(image) as bdev:
        yield bdev


def _simulated(size: int, block: bool) -> tuple[SimulatedPmem | SimulatedBlockDevice, str]:
    """An empty simulated device holding a fresh daxfs, and its description."""
    device = nsstress.simulated(size, block)
    mkfs(device)
    return device, f"a simulated {size >> 20} MiB {'block ' if block else ''}device"


def _fsx_phase(
    report: StressReport,
    phase: str,
    seed: int,
    budget: float,
    image: Image | None,
    top: str,
    skip: frozenset[str],
    how: tuple[bool, str | None],
    line: Callable[[str], None],
    fail: Callable[[str], None],
) -> None:
    block, cache_size = how
    options = fsx.FsxOptions(block=block, cache_size=cache_size)
    for kind in skip & set(options.weights):
        options.weights[kind] = 0
    device: Image | SimulatedPmem | SimulatedBlockDevice
    if image is not None:
        device = image
        directory = top
        _prepare(image, top, cache_size)
        where = _name(image)
    else:
        device, where = _simulated(options.device_size, block)
        directory = ""
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
        weights += " --block" if block else ""
        fail(
            f"{phase} seed={seed} op#{exc.index} ({exc.ops[exc.index]}): {exc.message}; "
            f"reproduce ({len(ops)} ops): python -m daxfs.testing.fsx --seed {seed} "
            f"{weights.strip() + ' ' if weights else ''}--replay "
            f"{shlex.quote(fsx.format_ops(ops))}"
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
    image: Image | None,
    top: str,
    skip: frozenset[str],
    how: tuple[bool, str | None],
    line: Callable[[str], None],
    fail: Callable[[str], None],
    *,
    threads: int,
) -> None:
    block, cache_size = how
    full = phase == "full-disk"
    options = (
        nsstress.StressOptions.full(threads, block=block)
        if full
        else nsstress.StressOptions(threads, block=block)
    )
    options.skip = skip
    options.cache_size = cache_size
    device: Image | SimulatedPmem | SimulatedBlockDevice
    if image is not None:
        _prepare(image, top, cache_size)
        device = image
        where = _name(image)
        stress_top = f"{top}/ns"
    else:
        device, where = _simulated(options.device_size, block)
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


def _name(image: Image) -> str:
    return image if isinstance(image, str) else f"{image.name} (block device, {image.engine})"


def _prepare(image: Image, top: str, cache_size: str | None) -> None:
    """The scratch directory on the image exists (and the image is a daxfs)."""
    with mount(image, cache_size=_bounded(image, cache_size)) as fs:
        if not fs.exists(top):
            fs.mkdir(top)


def _bounded(image: Image, cache_size: str | None) -> str | None:
    """``cache_size`` for a mount of ``image`` opened as a block device, else None."""
    return cache_size if isinstance(image, BlockDevice) else None


def _remove(image: Image, top: str, cache_size: str | None) -> None:
    """Remove the scratch directory; fsck the image."""
    with mount(image, cache_size=_bounded(image, cache_size)) as fs:
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
        raise AssertionError(f"fsck of {_name(image)} after removing {top}:\n{report}")
