"""Fault injection: fail the N-th device operation or allocation, for every N.

Theory of operation
-------------------
SQLite's test harness proves its error paths by making the N-th I/O (or
malloc) fail, for N = 1, 2, ... until the statement under test completes
without the fault being reached; after each failure the database must be
intact.  ``check_faults`` does the same for one filesystem operation:

    1. build a filesystem, run ``setup``, unmount: the *before* image; run
       ``op`` on a copy: the *after* state (as daxfs.testing.crash)
    2. for n = 1, 2, ...: mount a copy on a ``FaultyPmem``, arm a fault at the
       n-th operation of one kind (write, fill, flush, drain, read of the
       device, or an allocation of blocks or inodes), run ``op``:
         - it must complete or raise an OSError, never another exception;
         - if the fault never fired, stop: every fault point was tried;
         - power fails right now: every crash state (seeded) must mount,
           pass fsck, and hold *before* or *after* (only *after* if ``op``
           returned: it reported success, so it is durable);
         - or the system goes on (the fault was transient, or the device is
           replaced): what the live filesystem shows, a later operation and
           unmount all work, and the image then mounts, passes fsck and holds
           what the live filesystem showed (nothing reported failed comes back,
           nothing reported done is lost) -- unless the journal failed after its
           commit point: the filesystem is then read-only and its memory may lag
           the media until remount (daxfs.fs.journal, invariant 4).
    3. a fault is *transient* (only the n-th operation fails) or *persistent*
       (the n-th and every later one of that kind fail, until disarmed).

A device operation fails *before* it has any effect: a failed write stores
nothing, a failed flush writes nothing back, a failed fence makes nothing
durable.  Reads through ``direct_access`` views (the store's metadata reads)
are not device operations and never fail; ``read``/``readinto`` (file data)
do.

Invariants
  1. Faults fire only between ``arm`` and ``disarm``, and only at public
     entry points: a write's own internal flush and fence are part of the
     write, not operations of their own.
  2. ``check_faults`` is deterministic: crash states are seeded by n.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import itertools
import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, cast

from daxfs.errors import IOFailure, NoSpace
from daxfs.fs import fastcreate
from daxfs.fs.fsck import fsck
from daxfs.fs.mount import mkfs, mount
from daxfs.testing.crash import DEFAULT_SIZE, Snapshot, snapshot
from daxfs.testing.simulated import PowerFailure, SimulatedPmem

if TYPE_CHECKING:
    from typing_extensions import Buffer

    from daxfs.block.device import BlockDevice
    from daxfs.fs.filesystem import FileSystem

#: Device operations that can be made to fail.
DEVICE_KINDS = ("write", "fill", "flush", "drain", "read")
#: Allocations that can be made to fail (blocks: Allocator.alloc; inodes: InodeTable.allocate).
ALLOC_KINDS = ("alloc",)
KINDS = DEVICE_KINDS + ALLOC_KINDS

Step = Callable[["FileSystem"], object]


@dataclasses.dataclass
class Fault:
    """A planned failure: the ``nth`` operation of ``kind`` after arming."""

    kind: str
    nth: int
    persistent: bool = False
    errno: int = errno.EIO
    message: str | None = None  # default: "simulated <strerror>: <kind> #<n>"
    seen: int = 0  # operations of ``kind`` since arming
    fired: int = 0  # failures raised

    def hit(self) -> OSError | None:
        """Count one operation; the error to raise if it must fail."""
        self.seen += 1
        if self.seen == self.nth or (self.persistent and self.seen > self.nth):
            self.fired += 1
            text = self.message or f"simulated {os.strerror(self.errno)}: {self.kind} #{self.seen}"
            return _error(self.errno, text)
        return None


def _error(code: int, message: str) -> OSError:
    if code == errno.ENOSPC:
        return NoSpace(message)
    if code == errno.EIO:
        return IOFailure(message)
    return OSError(code, message)


class FaultyPmem(SimulatedPmem):
    """A SimulatedPmem whose N-th write, fill, flush, drain or read fails.

    ``arm(kind, nth)`` plans the failure; ``fault.fired`` says whether it
    happened.  Counting is per kind, from arming, at public entry points only
    (a write's internal flush and fence belong to the write).
    """

    def __init__(self, size: int, *, image: Buffer | None = None) -> None:
        super().__init__(size, image=image)
        self.fault: Fault | None = None
        self._inside = 0  # > 0 while a write or fill runs its own flush and fence

    def arm(
        self, kind: str, nth: int, *, persistent: bool = False, error: int = errno.EIO
    ) -> Fault:
        """Fail the ``nth`` (1 = the next) operation of ``kind``; returns the plan."""
        if kind not in DEVICE_KINDS:
            raise ValueError(f"unknown device operation {kind!r}: one of {DEVICE_KINDS}")
        if nth < 1:
            raise ValueError(f"nth counts from 1, got {nth}")
        self.fault = Fault(kind, nth, persistent, error)
        return self.fault

    def disarm(self) -> None:
        self.fault = None

    def _check(self, kind: str) -> None:
        fault = self.fault
        if fault is not None and fault.kind == kind and not self._inside:
            exc = fault.hit()
            if exc is not None:
                raise exc

    def image(self) -> bytes:
        """What the device holds now (the CPU's view), whatever is armed."""
        return self._images().current

    def read(self, offset: int, length: int) -> bytes:
        self._check("read")
        return super().read(offset, length)

    def readinto(self, offset: int, buffer: Buffer) -> int:
        self._check("read")
        return super().readinto(offset, buffer)

    def write(self, offset: int, data: Buffer, *, drain: bool = True) -> None:
        self._check("write")
        self._inside += 1
        try:
            super().write(offset, data, drain=drain)
        finally:
            self._inside -= 1

    def fill(self, offset: int, length: int, byte: int = 0, *, drain: bool = True) -> None:
        self._check("fill")
        self._inside += 1
        try:
            super().fill(offset, length, byte, drain=drain)
        finally:
            self._inside -= 1

    def flush(self, offset: int, length: int) -> None:
        self._check("flush")
        super().flush(offset, length)

    def drain(self) -> None:
        self._check("drain")
        super().drain()


class FlakyPmem(FaultyPmem):
    """A device whose next fence fails once with EIO when ``fail_next`` is set.

    The simplest fault (a device error at a fence, not a power failure); kept
    for tests written against it.
    """

    @property
    def fail_next(self) -> bool:
        fault = self.fault
        return fault is not None and fault.kind == "drain" and not fault.fired

    @fail_next.setter
    def fail_next(self, value: bool) -> None:
        if value:
            self.fault = Fault("drain", 1, message="simulated device error at a fence")
        else:
            self.disarm()


@contextlib.contextmanager
def failing_allocations(
    fs: FileSystem, nth: int, *, persistent: bool = False, error: int = errno.ENOSPC
) -> Iterator[Fault]:
    """Fail the ``nth`` allocation (of blocks or of an inode) made by ``fs`` while inside.

    Blocks are counted at ``Allocator.alloc`` and ``alloc_one``, inodes at
    ``InodeTable.allocate`` and at the create fast path (``fastcreate.create``,
    which takes an inode without ``allocate``; a create it refuses counts again at
    ``allocate``); a call made by another counted call (an inode allocation that
    grows the inode file) is part of it.
    """
    fault = Fault("alloc", nth, persistent, error)
    targets: list[tuple[object, str]] = [
        (fs.alloc, "alloc"),
        (fs.alloc, "alloc_one"),
        (fs.itable, "allocate"),
        (fastcreate, "create"),
    ]
    with _counting(fault, targets):
        yield fault


_ABSENT = object()


@contextlib.contextmanager
def _counting(fault: Fault, targets: list[tuple[object, str]]) -> Iterator[None]:
    """Plant ``fault`` in each method ``obj.name`` (of an instance or of a class) while
    inside: the outermost counted call counts, one made by another counted call is part
    of it. The methods are put back as they were on the way out."""
    depth = [0]
    saved = [(obj, name, vars(obj).get(name, _ABSENT)) for obj, name in targets]

    def wrap(real: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any, **kwargs: Any) -> Any:
            if depth[0] == 0:
                exc = fault.hit()
                if exc is not None:
                    raise exc
            depth[0] += 1
            try:
                return real(*args, **kwargs)
            finally:
                depth[0] -= 1

        return counted

    for obj, name in targets:
        setattr(obj, name, wrap(getattr(obj, name)))
    try:
        yield
    finally:
        for obj, name, real in saved:
            if real is _ABSENT:
                with contextlib.suppress(AttributeError):
                    delattr(obj, name)  # the class's method shows through again
            else:
                setattr(obj, name, real)


# --------------------------------------------------------------------------- the loop


class FaultCheckFailed(AssertionError):
    """An injected fault left a bad image, or the operation raised a non-OSError."""


@dataclasses.dataclass
class FaultReport:
    """What check_faults did for one operation and one kind of fault."""

    kind: str
    persistent: bool
    points: int = 0  # values of n at which the fault fired
    raised: int = 0  # ... and the operation raised an OSError
    completed: int = 0  # ... and the operation still completed (the error was absorbed)
    states: int = 0  # images mounted, fsck'ed and compared
    before_seen: int = 0
    after_seen: int = 0

    def add(self, other: FaultReport) -> None:
        for f in ("points", "raised", "completed", "states", "before_seen", "after_seen"):
            setattr(self, f, getattr(self, f) + getattr(other, f))


def build_image(setup: Step, size: int = DEFAULT_SIZE) -> bytes:
    """A fresh filesystem with ``setup`` run on it, unmounted: the image bytes."""
    base = SimulatedPmem(size)
    mkfs(base)
    with mount(base) as fs:
        setup(fs)
    image = base.read(0, size)
    base.close()
    return image


def check_faults(
    setup: Step,
    op: Step,
    kind: str,
    *,
    persistent: bool = False,
    error: int | None = None,
    size: int = DEFAULT_SIZE,
    states: int = 2,
    max_points: int = 5000,
    image: bytes | None = None,
) -> FaultReport:
    """Fail the n-th ``kind`` operation of ``op`` for every n; see the module docstring.

    ``error`` defaults to EIO for device faults and ENOSPC for allocations.

    Raises:
        FaultCheckFailed: naming the kind, n, and what was wrong.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown fault kind {kind!r}: one of {KINDS}")
    code = error if error is not None else (errno.ENOSPC if kind == "alloc" else errno.EIO)
    if image is None:
        image = build_image(setup, size)
    before = _observe(image, size)
    after_dev = SimulatedPmem(size, image=image)
    with mount(after_dev) as fs:
        op(fs)
    after = _observe(after_dev.read(0, size), size)
    after_dev.close()
    report = FaultReport(kind, persistent)
    for n in range(1, max_points + 1):
        mode = "persistent" if persistent else "transient"
        where = f"{kind} fault #{n} ({mode}, {errno.errorcode.get(code, code)})"
        dev = FaultyPmem(size, image=image)
        fs = mount(dev)
        completed, fired = _run_faulted(fs, dev, op, kind, n, persistent, code, where)
        if not fired:
            _dispose(fs, dev)
            return report
        report.points += 1
        report.completed += completed
        report.raised += not completed
        allowed = {"after": after} if completed else {"before": before, "after": after}
        # the power fails right after the error
        crashes = [dev.crash(n)] if states == 1 else dev.crash_states(limit=states, seed=n)
        for state in itertools.islice(crashes, states):
            seen = _check_image(state, allowed, f"{where}, then a power failure")
            report.states += 1
            report.before_seen += seen == "before"
            report.after_seen += seen == "after"
        # or the system goes on: the fault heals (a persistent one only once everything
        # the filesystem does next has also failed)
        seen = _go_on(fs, dev, allowed, persistent, where)
        report.states += 1
        report.before_seen += seen == "before"
        report.after_seen += seen == "after"
    raise FaultCheckFailed(f"{kind}: faults still firing after {max_points} points")


def recovery_image(size: int = DEFAULT_SIZE) -> bytes:
    """An image whose mount has work to do: an unlinked file still on the orphan list
    (it was open), and a batched truncate begun but unfinished, its last transaction
    committed and perhaps not applied -- the power failed at the first fence after
    which the truncate had begun."""
    from daxfs.fs.file import File

    dev = SimulatedPmem(size)
    mkfs(dev)
    with mount(dev) as fs:
        with fs.open("/a", "wb", buffering=0) as f:
            f.write(b"a" * 20_000)
        with cast("File", fs.open("/frag", "wb", buffering=0)) as f:
            for i in range(300):  # more extents than one truncate transaction frees
                f.pwrite(b"f" * 100, 2 * i * 4096)
        with fs.open("/gone", "wb", buffering=0) as f:
            f.write(b"g" * 50_000)
    image = dev.read(0, size)
    for fence in range(1, 50):
        dev = SimulatedPmem(size, image=image)
        fs = mount(dev)
        held = fs.open("/gone", "rb", buffering=0)
        fs.unlink("/gone")  # open: it stays on the orphan list
        frag = cast("File", fs.open("/frag", "rb+", buffering=0))
        dev.schedule_power_failure(fence)
        try:
            frag.truncate(4096)  # batched: the inode is on the orphan list meanwhile
        except PowerFailure:
            pass
        else:  # pragma: no cover - the truncate is batched
            raise AssertionError("the truncate finished before its last fence")
        for file in (held, frag):  # the power is off: their close cannot reach the device
            with contextlib.suppress(PowerFailure):
                file.close()
        state = dev.persisted_image()
        with mount(SimulatedPmem(size, image=state)) as probe:
            if probe.stat("/frag").st_size == 4096:
                return state
    raise AssertionError("no fence of the truncate leaves it begun")  # pragma: no cover


def check_mount_faults(
    kind: str,
    *,
    image: bytes | None = None,
    persistent: bool = False,
    error: int | None = None,
    states: int = 2,
    max_points: int = 5000,
) -> FaultReport:
    """Fail the n-th ``kind`` operation of a mount that recovers (replay, orphans),
    for every n: the mount raises an OSError or succeeds; the image then mounts,
    passes fsck and holds what a mount without faults finds.

    Raises:
        FaultCheckFailed.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown fault kind {kind!r}: one of {KINDS}")
    code = error if error is not None else (errno.ENOSPC if kind == "alloc" else errno.EIO)
    if image is None:
        image = recovery_image()
    size = len(image)
    expect = {"recovered": _observe(image, size)}
    report = FaultReport(kind, persistent)
    for n in range(1, max_points + 1):
        mode = "persistent" if persistent else "transient"
        where = f"mount: {kind} fault #{n} ({mode}, {errno.errorcode.get(code, code)})"
        dev = FaultyPmem(size, image=image)
        if kind == "alloc":  # allocations happen while mount reaps: count them there
            fault = Fault("alloc", n, persistent, code)
        else:
            fault = dev.arm(kind, n, persistent=persistent, error=code)
        try:
            fs = _mount_counting_allocations(dev, fault) if kind == "alloc" else mount(dev)
            fs.unmount()
            completed = True
        except OSError:
            completed = False
        except BaseException as exc:
            raise FaultCheckFailed(
                f"{where}: mount raised {type(exc).__name__}: {exc} (not an OSError)"
            ) from exc
        if not fault.fired:
            return report
        report.points += 1
        report.completed += completed
        report.raised += not completed
        crashes = [dev.crash(n)] if states == 1 else dev.crash_states(limit=states, seed=n)
        for state in itertools.islice(crashes, states):
            _check_image(state, expect, f"{where}, then a power failure")
            report.states += 1
            report.after_seen += 1
        dev.disarm()
        _check_image(SimulatedPmem(size, image=dev.image()), expect, f"{where}, then a reboot")
        report.states += 1
        report.after_seen += 1
    raise FaultCheckFailed(f"mount: {kind} faults still firing after {max_points} points")


def _mount_counting_allocations(dev: FaultyPmem, fault: Fault) -> FileSystem:
    """mount(dev) with ``fault`` planted in every allocator and inode table (the mount
    builds its own, then reaps orphans and finishes truncates with them)."""
    from daxfs.fs.alloc import Allocator
    from daxfs.fs.inode import InodeTable

    with _counting(
        fault, [(Allocator, "alloc"), (Allocator, "alloc_one"), (InodeTable, "allocate")]
    ):
        return mount(dev)


def _run_faulted(
    fs: FileSystem,
    dev: FaultyPmem,
    op: Step,
    kind: str,
    n: int,
    persistent: bool,
    code: int,
    where: str,
) -> tuple[bool, bool]:
    """Run ``op`` with the fault armed; (op completed, fault fired)."""
    cm: contextlib.AbstractContextManager[Fault]
    if kind == "alloc":
        cm = failing_allocations(fs, n, persistent=persistent, error=code)
    else:
        cm = contextlib.nullcontext(dev.arm(kind, n, persistent=persistent, error=code))
    with cm as fault:
        try:
            op(fs)
            completed = True
        except OSError:
            completed = False
        except PowerFailure:
            raise
        except BaseException as exc:
            raise FaultCheckFailed(
                f"{where}: the operation raised {type(exc).__name__}: {exc} (not an OSError)"
            ) from exc
        if not persistent:
            dev.disarm()
    return completed, fault.fired > 0


PROBE = "/.fault-probe"


def _go_on(
    fs: FileSystem,
    dev: FaultyPmem,
    allowed: dict[str, Snapshot],
    persistent: bool,
    where: str,
) -> str:
    """After the fault: look, do one more operation, unmount; the image must agree.

    With a persistent fault the device stays broken for all of this (each step
    may fail with an OSError); it is disarmed only to read the image back.
    """
    live, _ = look_and_unmount(fs, where)
    dev.disarm()
    image = dev.image()  # what a reboot finds, whether unmount finished or not
    if not fs.mounted:
        with contextlib.suppress(BufferError):
            dev.close()
    seen, plain = _check_image_snap(
        SimulatedPmem(dev.size, image=image), allowed, f"{where}, then unmount"
    )
    check_live(plain, live, where)
    return seen


def look_and_unmount(fs: FileSystem, where: str) -> tuple[Snapshot | None, bool]:
    """After a fault: snapshot the live tree (unless the journal failed), one more
    operation, close the files and unmount.  Returns the snapshot and whether the
    unmount finished (an OSError there is allowed: the caller disposes of the mount).

    Raises:
        FaultCheckFailed: anything but an OSError was raised.
    """
    live: Snapshot | None = None
    try:
        if not fs.journal.failed:  # after a journal failure memory may lag the media
            live = snapshot(fs)
        fs.mkdir(PROBE)
    except OSError:
        pass  # EIO of a read, EROFS after a journal failure: allowed
    except BaseException as exc:
        raise FaultCheckFailed(
            f"{where}: after the fault, {type(exc).__name__}: {exc} (not an OSError)"
        ) from exc
    try:
        for file in fs.open_files():
            file.close()
        fs.unmount()
    except OSError:
        return live, False
    except BaseException as exc:
        raise FaultCheckFailed(
            f"{where}: unmount after the fault raised {type(exc).__name__}: {exc}"
        ) from exc
    return live, True


def check_live(plain: Snapshot, live: Snapshot | None, where: str) -> None:
    """The tree mounted again (``plain``) is the one the live filesystem showed.

    Raises:
        FaultCheckFailed: naming the paths that differ.
    """
    if live is not None and plain != live:
        diff = sorted(p for p in set(plain) | set(live) if plain.get(p) != live.get(p))
        raise FaultCheckFailed(
            f"{where}: after unmount and mount the tree differs from what the live "
            f"filesystem showed after the fault: {diff[:5]}"
        )


def _dispose(fs: FileSystem, dev: FaultyPmem) -> None:
    dev.disarm()
    with contextlib.suppress(OSError, BufferError):
        fs.unmount()
        dev.close()


def _observe(image: bytes, size: int) -> Snapshot:
    dev = SimulatedPmem(size, image=image)
    try:
        with mount(dev) as fs:
            return snapshot(fs)
    finally:
        with contextlib.suppress(BufferError):
            dev.close()


def _without_probe(seen: Snapshot) -> Snapshot:
    """The tree as if the probe directory had never been made."""
    if PROBE not in seen:
        return seen
    plain = {p: v for p, v in seen.items() if p != PROBE and not p.startswith(PROBE + "/")}
    fmt, mode, nlink, names, *rest = plain["/"]
    assert isinstance(nlink, int)
    assert isinstance(names, tuple)
    plain["/"] = (fmt, mode, nlink - 1, tuple(n for n in names if n != PROBE[1:]), *rest)
    return plain


def _check_image(state: SimulatedPmem, allowed: dict[str, Snapshot], where: str) -> str:
    return _check_image_snap(state, allowed, where)[0]


def _check_image_snap(
    state: SimulatedPmem | BlockDevice, allowed: dict[str, Snapshot], where: str
) -> tuple[str, Snapshot]:
    """Mount (recovery), snapshot, fsck: which allowed state it is, and the tree
    without the probe directory."""
    try:
        with mount(state) as fs:
            seen = _without_probe(snapshot(fs))
    except Exception as exc:
        raise FaultCheckFailed(f"{where}: mount failed: {exc!r}") from exc
    report = fsck(state)
    with contextlib.suppress(BufferError):
        state.close()
    if not report.clean:
        raise FaultCheckFailed(f"{where}: fsck:\n{report}")
    for name, snap in allowed.items():
        if seen == snap:
            return name, seen
    ref = allowed.get("before", allowed["after"])
    diff = sorted(p for p in set(seen) | set(ref) if seen.get(p) != ref.get(p))
    raise FaultCheckFailed(
        f"{where}: the image is neither {' nor '.join(allowed)}; differing paths: {diff[:8]}"
    )


# --------------------------------------------------------------------------- command line


def load_operations(spec: str) -> dict[str, tuple[Step, Step]]:
    """``module:attribute`` naming a dict of name -> (setup, op), such as the crash suite's."""
    import importlib

    module, _, attr = spec.partition(":")
    table = getattr(importlib.import_module(module), attr or "OPERATIONS")
    return dict(table)


def main(argv: list[str] | None = None) -> int:
    """Run the fault loop over a catalogue of operations and print one line per
    (operation, kind, mode) and the totals; exit 1 if any check failed."""
    import argparse
    import shlex
    import sys
    import time

    parser = argparse.ArgumentParser(
        prog="python -m daxfs.testing.faults",
        description="Fail the N-th device operation or allocation of each operation, every N.",
    )
    parser.add_argument(
        "--operations",
        default="tests.crash.test_fs_ops:OPERATIONS",
        help="module:attribute of a dict name -> (setup, op) (default: the crash suite's; "
        "run from the repository root)",
    )
    parser.add_argument("--only", nargs="*", default=None, help="operation names to run")
    parser.add_argument("--kinds", nargs="*", default=list(KINDS), choices=KINDS)
    parser.add_argument(
        "--modes",
        nargs="*",
        default=["transient", "persistent"],
        choices=["transient", "persistent"],
    )
    parser.add_argument("--states", type=int, default=2, help="crash states per fault point")
    parser.add_argument(
        "--error",
        choices=("EIO", "ENOSPC"),
        default=None,
        help="the error faults raise (default: EIO for the device, ENOSPC for allocations)",
    )
    parser.add_argument(
        "--no-mount", action="store_true", help="skip the faults inside a recovering mount"
    )
    args = parser.parse_args(argv)
    code = getattr(errno, args.error) if args.error else None
    if "" not in sys.path:
        sys.path.insert(0, "")
    operations = load_operations(args.operations)
    names = list(args.only) if args.only else sorted(operations)
    total = FaultReport("all", False)
    failures = 0
    start = time.monotonic()
    print(f"$ python -m daxfs.testing.faults {shlex.join(argv or sys.argv[1:])}")

    def one(name: str, kind: str, mode: str, check: Callable[[], FaultReport]) -> None:
        nonlocal failures
        try:
            r = check()
        except FaultCheckFailed as exc:
            failures += 1
            print(f"FAIL {name} / {kind} / {mode}: {str(exc).splitlines()[0]}", flush=True)
            return
        total.add(r)
        print(
            f"ok   {name:32} {kind:6} {mode:10} points={r.points:<4} raised={r.raised:<4} "
            f"completed={r.completed:<4} states={r.states:<4} "
            f"before={r.before_seen:<4} after={r.after_seen}",
            flush=True,
        )

    for name in names:
        setup, op = operations[name]
        image = build_image(setup)
        for kind in args.kinds:
            for mode in args.modes:
                check = functools.partial(
                    check_faults,
                    setup,
                    op,
                    kind,
                    persistent=mode == "persistent",
                    error=code,
                    states=args.states,
                    image=image,
                )
                one(name, kind, mode, check)
    if not args.no_mount:
        names.append("mount (recovery)")
        recovering = recovery_image()
        for kind in args.kinds:
            for mode in args.modes:
                check = functools.partial(
                    check_mount_faults,
                    kind,
                    image=recovering,
                    persistent=mode == "persistent",
                    error=code,
                    states=args.states,
                )
                one("mount (recovery)", kind, mode, check)
    print(
        f"fault points tried: {total.points} ({total.raised} raised an OSError, "
        f"{total.completed} completed); images mounted and fsck'ed: {total.states} "
        f"({total.before_seen} before, {total.after_seen} after); failures: {failures}; "
        f"{len(names)} operations x {len(args.kinds)} kinds x {len(args.modes)} modes "
        f"in {time.monotonic() - start:.0f} s"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
