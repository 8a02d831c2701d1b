"""FaultyBlockDevice: a block device whose N-th request fails or completes short.

Theory of operation
-------------------
The block variant of ``daxfs.testing.faults``: SQLite's fault loops fail the
N-th I/O for N = 1, 2, ... and check that the error reaches the caller and
that nothing else is harmed.  ``FaultyBlockDevice(inner)`` forwards every
request to ``inner`` (any BlockDevice: the simulator, a pmem or a file one)
as a bio of its own, except the planned one:

    arm(kind, nth)                 the nth request of ``kind`` (read, write,
                                   flush, discard, write_zeroes, or any) fails
                                   with ``error`` (EIO by default) before it
                                   has any effect
    arm(kind, nth, short=True)     the nth one moves only its first half (whole
                                   logical blocks, possibly none) and completes
                                   short: its bios that were not wholly moved
                                   fail with IOFailure naming the sector
    persistent=True                every later request of that kind fails too

Requests are what reaches a device after splitting and merging, so "the N-th
I/O" is what a disk would see.  The ``Fault`` plan is the one of
daxfs.testing.faults (``seen``, ``fired``).

``check_fs_block_faults(setup, op, kind)`` is ``daxfs.testing.faults.check_faults``
for a filesystem mounted on a block device (``SimulatedBlockDevice`` behind a
``FaultyBlockDevice``, through the mount's ``BlockCache``): for n = 1, 2, ...
the n-th request of ``kind`` fails (or completes short) while ``op`` runs;
``op`` must complete or raise an OSError; then the power fails (seeded crash
states of the simulated disk: before or after, only after if ``op``
returned), or the system goes on (the fault heals, a probe mkdir, unmount:
the image must hold what the live filesystem showed).  Nothing committed is
lost, nothing reported failed comes back.

Invariants
  1. Faults fire only while armed; a failed request changed nothing on
     ``inner``; a short one changed exactly the blocks it reports done.
  2. Every error reaches the bios of the request (and their futures), never
     the submitting code: ``submit_bio`` returns normally.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
from collections.abc import Callable
from typing import TYPE_CHECKING

from daxfs.block.bio import SECTOR_SHIFT, Bio, BioOp, Request
from daxfs.block.device import BlockDevice
from daxfs.errors import InvalidArgument
from daxfs.testing.blockcrash import abandon
from daxfs.testing.faults import (
    Fault,
    FaultCheckFailed,
    FaultReport,
    _check_image_snap,
    check_live,
    look_and_unmount,
)
from daxfs.testing.simblock import SimulatedBlockDevice
from daxfs.testing.simulated import PowerFailure

if TYPE_CHECKING:
    from daxfs.fs.filesystem import FileSystem
    from daxfs.testing.crash import Snapshot

Step = Callable[["FileSystem"], object]

#: Request kinds that can be made to fail ("any" counts every request).
BLOCK_KINDS = (*tuple(op.value for op in BioOp), "any")


class FaultyBlockDevice(BlockDevice):
    """``inner`` with planned failures; see the module docstring."""

    def __init__(self, inner: BlockDevice) -> None:
        super().__init__(
            f"faulty:{inner.name}", inner.nr_sectors, inner.limits, readonly=inner.readonly
        )
        self.inner = inner
        self.write_cache = inner.write_cache
        self.fua = inner.fua
        self.fault: Fault | None = None
        self._short = False
        #: requests that moved only part of their bytes
        self.shorts = 0

    @property
    def engine(self) -> str:
        return f"faulty over {self.inner.engine}"

    def arm(
        self,
        kind: str,
        nth: int,
        *,
        persistent: bool = False,
        error: int = errno.EIO,
        short: bool = False,
    ) -> Fault:
        """Fail (or, with ``short``, cut short) the ``nth`` (1 = the next) request of
        ``kind``; returns the plan.

        Raises:
            InvalidArgument (EINVAL): an unknown kind, nth below 1, short on a
                kind without data.
        """
        if kind not in BLOCK_KINDS:
            raise InvalidArgument(f"unknown request kind {kind!r}: one of {BLOCK_KINDS}")
        if isinstance(nth, bool) or not isinstance(nth, int) or nth < 1:
            raise InvalidArgument(f"nth counts from 1, got {nth!r}")
        if short and kind not in ("read", "write", "any"):
            raise InvalidArgument(f"a {kind} request moves no data: it cannot be short")
        self.fault = Fault(kind, nth, persistent, error)
        self._short = short
        return self.fault

    def disarm(self) -> None:
        self.fault = None

    def _dispatch(self, req: Request) -> None:
        fault = self.fault
        if fault is not None and fault.kind in (req.op.value, "any"):
            exc = fault.hit()
            if exc is not None:
                if self._short and req.op.has_data:
                    self._cut_short(req)
                else:
                    self._end(req, exc)
                return
        self._forward(req, req.segments, req.size)

    def _cut_short(self, req: Request) -> None:
        lbs = self.limits.logical_block_size
        keep = (req.size // 2) // lbs * lbs
        self.shorts += 1
        views: list[memoryview] = []
        left = keep
        for view in req.segments:
            if left == 0:
                break
            views.append(view[:left])
            left -= len(views[-1])
        self._forward(req, views, keep)

    def _forward(self, req: Request, views: list[memoryview], size: int) -> None:
        """Submit the first ``size`` bytes of ``req`` (``views``, for READ and WRITE) to
        ``inner``; end ``req`` with ``size`` bytes done, or the inner bio's error."""
        if req.op.has_data and size == 0:
            self._end(req, 0)
            return

        def end_io(bio: Bio) -> None:
            self._end(req, bio.status if bio.status is not None else size)

        if req.op.has_data:
            bio = Bio(req.op, req.sector, views, flags=req.flags, end_io=end_io)
        else:
            bio = Bio(req.op, req.sector, size=size, flags=req.flags, end_io=end_io)
        assert bio.end_sector == req.sector + (size >> SECTOR_SHIFT)
        self.inner.submit_bio(bio)

    def _close(self) -> None:
        self.inner.close()


def check_fs_block_faults(
    setup: Step,
    op: Step,
    kind: str,
    *,
    persistent: bool = False,
    short: bool = False,
    error: int = errno.EIO,
    size: int = 16 << 20,
    states: int = 2,
    max_points: int = 2000,
    cache_size: str | None = None,
) -> FaultReport:
    """Fail the n-th ``kind`` request of ``op`` on a block device, for every n.

    With ``cache_size`` the operation's mounts are bounded (daxfs.pagecache.bounded):
    its misses, loads and page write-backs are requests that fail too.

    Raises:
        FaultCheckFailed: naming the kind, n, and what was wrong.
    """
    from daxfs.fs.mount import mkfs, mount
    from daxfs.testing.crash import snapshot

    base = SimulatedBlockDevice(size)
    mkfs(base)
    with mount(base) as fs:
        setup(fs)
    image = base.durable_image()
    with mount(SimulatedBlockDevice(size, image=image)) as fs:
        before = snapshot(fs)
    done = SimulatedBlockDevice(size, image=image)
    with mount(done, cache_size=cache_size) as fs:
        op(fs)
        after = snapshot(fs)
    report = FaultReport(kind, persistent)
    how = "short" if short else errno.errorcode.get(error, str(error))
    for n in range(1, max_points + 1):
        where = f"{kind} request #{n} ({'persistent' if persistent else 'transient'}, {how})"
        inner = SimulatedBlockDevice(size, image=image)
        dev = FaultyBlockDevice(inner)
        fs = mount(dev, cache_size=cache_size)
        fault = dev.arm(kind, n, persistent=persistent, error=error, short=short)
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
        if not fault.fired:
            dev.disarm()
            fs.unmount()
            dev.close()
            return report
        report.points += 1
        report.completed += completed
        report.raised += not completed
        allowed = {"after": after} if completed else {"before": before, "after": after}
        for state in itertools.islice(inner.crash_states(limit=states, seed=n), states):
            seen = _check_image_snap(state, allowed, f"{where}, then a power failure")[0]
            report.states += 1
            report.before_seen += seen == "before"
            report.after_seen += seen == "after"
        seen = _go_on(fs, dev, inner, allowed, where)
        report.states += 1
        report.before_seen += seen == "before"
        report.after_seen += seen == "after"
    raise FaultCheckFailed(f"{kind}: faults still firing after {max_points} points")


def _go_on(
    fs: FileSystem,
    dev: FaultyBlockDevice,
    inner: SimulatedBlockDevice,
    allowed: dict[str, Snapshot],
    where: str,
) -> str:
    """After the fault: look, one more operation, unmount; the image must agree."""
    live, unmounted = look_and_unmount(fs, where)
    if not unmounted:
        abandon(fs)  # the cache could not write back: give its memory back now
    dev.disarm()
    image = inner.durable_image()  # what a power failure right after unmount leaves
    if not fs.mounted:
        with contextlib.suppress(BufferError, OSError):
            fs.device.close()
    seen, plain = _check_image_snap(
        SimulatedBlockDevice(inner.size, image=image), allowed, f"{where}, then unmount"
    )
    check_live(plain, live, where)
    return seen
