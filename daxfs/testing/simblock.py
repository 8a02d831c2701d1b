"""SimulatedBlockDevice: an in-memory block device with a volatile write cache.

Theory of operation
-------------------
The model is a disk (or SSD, or network block device) with a volatile write
cache, the device Linux's FLUSH and FUA are for:

* A write completes when it is in the cache.  It is *certainly* on the media
  only after a later FLUSH (a FLUSH bio, or the PREFLUSH of a bio) has
  completed, or when it carried FUA (then it is on the media when it
  completes; earlier writes still need a FLUSH).
* Until then the cache may have written it back or not, in any order: at a
  crash any subset of the unflushed writes survives.
* One logical block is written atomically; a write of several blocks may
  tear at block boundaries (each block old or new).

Together: after a crash each logical block independently holds its durable
value (what the last FLUSH or FUA write made certain) or the value of any
write made to it since -- the newest of the writes that reached the media,
and any of them may be the newest that did.  A FUA write to a block replaces
everything older there: its value is durable, and the cache cannot later
write back an older one over it.

The device keeps two images and a list per block:

    current    what reads see: every completed write
    media      what is certainly durable
    pending    per block, the values written since its durable one, oldest first

``crash(seed)`` picks one value per pending block with a seeded generator;
``crash_states()`` enumerates the distinct combinations when there are few
and samples them (seeded) otherwise, always including "nothing pending
survived" and "everything survived" -- the interface of ``SimulatedPmem``.

Persist points are FLUSH requests and FUA writes (``flush_count`` counts
them).  ``schedule_power_failure(flush=n)`` makes the n-th later one raise
``PowerFailure`` *before* it takes effect: a FLUSH makes nothing durable, and
a FUA write was in flight, so its blocks are pending like an unflushed
write's.  Crash tests run an operation once per persist point, so that the
power fails at each of them (SQLite's crash VFS does the same at every
sync).  Every bio runs synchronously in ``submit_bio``, so crash states are
reproducible.

State diagram::

    SimulatedBlockDevice(size) --> LIVE --n-th persist point while armed--> FAILED
      LIVE:   bios run; crash()/crash_states() describe a power failure "now"
      FAILED: every bio fails with PowerFailure, which submit_bio also raises;
              crash()/crash_states() describe the moment of failure
      either --close()--> CLOSED (bios fail with ClosedFile; crash() still works)

Invariants
  1. ``media`` changes only at a persist point, and only to values written
     before it (FLUSH: every completed write; FUA: that write's blocks).
  2. Every crash state equals ``media`` outside the pending blocks, and each
     pending block holds its media value or one of its pending values.
  3. ``crash(seed)`` and ``crash_states(limit, seed)`` depend only on the
     images and the seed.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from daxfs.block.bio import SECTOR_SHIFT, BioFlags, BioOp, QueueLimits, Request
from daxfs.block.device import BlockDevice
from daxfs.errors import InvalidArgument
from daxfs.pmem.device import check_integer
from daxfs.testing.simulated import DEFAULT_STATES, PowerFailure, at_most, extend_ranges

if TYPE_CHECKING:
    from typing_extensions import Buffer


class SimulatedBlockDevice(BlockDevice):
    """A crash-simulating block device of ``size`` bytes (a multiple of the block size).

    Raises (construction):
        InvalidArgument (EINVAL): a size that is not a positive multiple of the
            logical block size, an image of another size, bad limits.
    """

    write_cache = True
    fua = True

    def __init__(
        self,
        size: int,
        *,
        image: Buffer | None = None,
        logical_block_size: int = 512,
        limits: QueueLimits | None = None,
    ) -> None:
        check_integer(size, "size")
        if limits is None:
            limits = QueueLimits(
                logical_block_size=logical_block_size, physical_block_size=logical_block_size
            )
        lbs = limits.logical_block_size
        if size == 0 or size % lbs:
            raise InvalidArgument(f"size must be a positive multiple of {lbs}, got {size}")
        super().__init__("simulated-block", size >> SECTOR_SHIFT, limits)
        self.block_size = lbs
        if image is not None:
            data = memoryview(image).cast("B")
            if len(data) != size:
                raise InvalidArgument(f"image holds {len(data)} bytes, not {size}")
            self._current = bytearray(data)
        else:
            self._current = bytearray(size)
        self._media = bytearray(self._current)
        self._pending: dict[int, list[bytes]] = {}
        self._model_lock = threading.Lock()
        self._fail_at: int | None = None
        self._failed = False
        #: persist points so far (FLUSH requests and FUA writes)
        self.flush_count = 0
        #: write requests so far (WRITE, WRITE_ZEROES, DISCARD)
        self.write_count = 0

    @property
    def engine(self) -> str:
        return "simulated (volatile write cache, synchronous)"

    @property
    def engine_reason(self) -> str:
        return "daxfs.testing: the crash model of a disk with a write cache"

    @property
    def power_failed(self) -> bool:
        """True once a scheduled power failure has happened."""
        return self._failed

    # -- the backend -------------------------------------------------------------------

    def _execute(self, req: Request) -> int:
        with self._model_lock:  # threads submit at once: one request at a time
            return self._execute_locked(req)

    def _execute_locked(self, req: Request) -> int:
        if self._failed:
            raise PowerFailure("the simulated power has failed")
        op = req.op
        offset = req.offset
        if op is BioOp.READ:
            for view in req.segments:
                view[:] = self._current[offset : offset + len(view)]
                offset += len(view)
            return req.size
        if op is BioOp.FLUSH:
            self._persist_point(None)
            for block in self._pending:
                start = block * self.block_size
                self._media[start : start + self.block_size] = self._current[
                    start : start + self.block_size
                ]
            self._pending.clear()
            return 0
        # WRITE_ZEROES and DISCARD: the range reads as zeros
        data = b"".join(req.segments) if op is BioOp.WRITE else bytes(req.size)
        self.write_count += 1
        if req.flags & BioFlags.FUA:
            self._persist_point((offset, data))
            self._store(offset, data, durable=True)
        else:
            self._store(offset, data, durable=False)
        return req.size

    def _persist_point(self, in_flight: tuple[int, bytes] | None) -> None:
        if self._fail_at is not None:
            self._fail_at -= 1
            if self._fail_at == 0:
                self._fail_at = None
                if in_flight is not None:  # a FUA write was on its way: it may have landed
                    self._store(*in_flight, durable=False)
                self._failed = True
                raise PowerFailure(f"simulated power failure at flush point {self.flush_count + 1}")
        self.flush_count += 1

    def _store(self, offset: int, data: bytes, *, durable: bool) -> None:
        bs = self.block_size
        self._current[offset : offset + len(data)] = data
        if durable:
            self._media[offset : offset + len(data)] = data
        first = offset // bs
        for i in range(len(data) // bs):
            block = first + i
            if durable:
                self._pending.pop(block, None)
            else:
                values = self._pending.setdefault(block, [])
                value = data[i * bs : (i + 1) * bs]
                if not values or values[-1] != value:
                    values.append(value)

    # -- power failure -----------------------------------------------------------------

    def schedule_power_failure(self, flush: int | None) -> None:
        """Fail the power at the ``flush``-th later persist point (1 = the next FLUSH or FUA
        write); None disarms.

        Raises:
            InvalidArgument (EINVAL): not a positive integer.
        """
        if flush is not None:
            check_integer(flush, "flush")
            if flush == 0:
                raise InvalidArgument("flush counts from 1 (the next persist point)")
        self._fail_at = flush

    def _options(self) -> tuple[list[int], list[list[bytes]]]:
        """Pending blocks, and per block its distinct possible values (durable first)."""
        blocks = sorted(self._pending)
        options = []
        bs = self.block_size
        for block in blocks:
            start = block * bs
            values = [bytes(self._media[start : start + bs])]
            for value in self._pending[block]:
                if value not in values:
                    values.append(value)
            options.append(values)
        return blocks, options

    def pending(self) -> list[tuple[int, int]]:
        """Byte ranges ``(offset, length)`` not certainly durable, merged (whole blocks)."""
        ranges: list[tuple[int, int]] = []
        bs = self.block_size
        for block, values in zip(*self._options(), strict=True):
            if len(values) == 1:
                continue  # written back to what the media holds already
            extend_ranges(ranges, block * bs, bs)
        return ranges

    def durable_image(self) -> bytes:
        """What is certainly on the media (what every crash state holds outside pending)."""
        return bytes(self._media)

    def image(self) -> bytes:
        """What reads see now."""
        return bytes(self._current)

    def crash(self, seed: int = 0) -> SimulatedBlockDevice:
        """One possible device after a power failure now (or at the scheduled one).

        Each pending block takes one of its possible values, chosen by a
        generator seeded with ``seed``; the result has nothing pending.
        """
        blocks, options = self._options()
        rng = np.random.default_rng(seed)
        choice = [int(rng.integers(0, len(opts))) for opts in options]
        return self._from(blocks, [opts[c] for opts, c in zip(options, choice, strict=True)])

    def crash_states(
        self, limit: int | None = None, *, seed: int = 0
    ) -> Iterator[SimulatedBlockDevice]:
        """Distinct devices that a power failure now could leave.

        All of them when there are at most ``limit`` (default 64); otherwise a
        seeded sample of ``limit``, starting with "nothing pending survived"
        and "everything survived".
        """
        limit = DEFAULT_STATES if limit is None else check_integer(limit, "limit")
        blocks, options = self._options()
        keep = [i for i, opts in enumerate(options) if len(opts) > 1]
        blocks = [blocks[i] for i in keep]
        options = [options[i] for i in keep]
        if at_most(options, limit):
            for combo in itertools.product(*options):
                yield self._from(blocks, list(combo))
            return
        nothing = [opts[0] for opts in options]
        everything = [
            bytes(self._current[b * self.block_size : (b + 1) * self.block_size]) for b in blocks
        ]
        yield self._from(blocks, nothing)
        yield self._from(blocks, everything)
        seen = {b"".join(nothing), b"".join(everything)}
        rng = np.random.default_rng(seed)
        tries = 0
        while len(seen) < limit and tries < 20 * limit:
            tries += 1
            chosen = [opts[int(rng.integers(0, len(opts)))] for opts in options]
            key = b"".join(chosen)
            if key not in seen:
                seen.add(key)
                yield self._from(blocks, chosen)

    def _from(self, blocks: list[int], values: list[bytes]) -> SimulatedBlockDevice:
        image = bytearray(self._media)
        bs = self.block_size
        for block, value in zip(blocks, values, strict=True):
            image[block * bs : (block + 1) * bs] = value
        return SimulatedBlockDevice(len(image), image=image, limits=self.limits)
