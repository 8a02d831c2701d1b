"""Block devices for the direct-I/O tests: one that holds requests until released,
and one that completes them late, on other threads, in any order."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable

from daxfs.block.bio import BioOp, Request
from daxfs.block.device import BlockDevice
from daxfs.testing.blockfaults import FaultyBlockDevice


class Inspected(FaultyBlockDevice):
    """``inspect(req)``, if set, sees each READ and WRITE request at the moment it
    reaches the media (after any delay); what it raises is kept in ``problems``."""

    inspect: Callable[[Request], None] | None = None

    def __init__(self, inner: BlockDevice) -> None:
        super().__init__(inner)
        self.problems: list[BaseException] = []

    def _go(self, req: Request) -> None:
        if self.inspect is not None and req.op.has_data:
            try:
                self.inspect(req)
            except Exception as exc:
                self.problems.append(exc)
        FaultyBlockDevice._dispatch(self, req)


class HeldBlockDevice(Inspected):
    """``inner``, but while ``hold(buffer)`` is in force its READ and WRITE requests
    with a segment of ``buffer``'s memory wait (on their own threads) until
    ``release()``; ``held`` counts those that waited."""

    def __init__(self, inner: BlockDevice) -> None:
        super().__init__(inner)
        self._gate = threading.Event()
        self._gate.set()
        self.held = 0
        self._count = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._buffers: list[object] = []

    def hold(self, buffer: object) -> None:
        self._buffers.append(buffer)
        self._gate.clear()

    def release(self) -> None:
        self._buffers = []
        self._gate.set()

    def wait_held(self, n: int, timeout: float = 10.0) -> None:
        """Wait until ``n`` requests are held."""
        with self._count:
            assert self._count.wait_for(lambda: self.held >= n, timeout), f"held {self.held}"

    def _dispatch(self, req: Request) -> None:
        if self._gate.is_set() or not any(
            seg.obj is buf for seg in req.segments for buf in self._buffers
        ):
            self._go(req)
            return

        def later() -> None:
            self._gate.wait()
            self._go(req)

        with self._count:
            self.held += 1
            self._count.notify_all()
        thread = threading.Thread(target=later, daemon=True)
        self._threads.append(thread)
        thread.start()


class LateBlockDevice(Inspected):
    """``inner``, with each READ and WRITE request completed after a random delay of
    up to ``delay`` seconds on a thread of its own: completions in any order, from
    threads that are not the submitter's (as an io_uring completion thread)."""

    #: if set, only the requests it selects are late (the others go at once)
    late: Callable[[Request], bool] | None = None

    def __init__(self, inner: BlockDevice, seed: int, delay: float = 0.002) -> None:
        super().__init__(inner)
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()
        self.delay = delay

    def _dispatch(self, req: Request) -> None:
        if req.op is BioOp.FLUSH or (self.late is not None and not self.late(req)):
            self._go(req)
            return
        with self._rng_lock:
            pause = self._rng.random() * self.delay

        def later() -> None:
            time.sleep(pause)
            self._go(req)

        threading.Thread(target=later, daemon=True).start()
