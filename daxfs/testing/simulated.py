"""SimulatedPmem: an in-memory device that models what survives a power failure.

Theory of operation
-------------------
The model is x86 ADR, the persistence domain of Intel Optane and CXL memory
without eADR:

* A store lands in the CPU cache.  It is *certainly* persistent only after a
  flush of its cache line and a later fence (``flush`` then ``drain``).
* Before that it may or may not reach the media: caches evict lines at any
  time and in any order.
* Only aligned 8-byte pieces are failure-atomic: a larger store can tear at
  any 8-byte boundary.

The device keeps three images:

    current    what the CPU sees: every store, including those made through
               views from direct_access (an anonymous mapping)
    flushed    the persisted image with every flushed-but-not-drained line
               applied, as each line was at its flush
    persisted  what is certainly on the media

A store through a view is not observed when it happens; it is found by
comparing images when the device is flushed or crashed, which is exactly when
it matters.  At a crash, every aligned 8-byte piece where the images differ
is *pending*; its post-crash value is any of its distinct values in the three
images.  ``crash(seed)`` picks one value per piece with a seeded generator;
``crash_states()`` enumerates the distinct combinations when there are few
and samples them (seeded) otherwise, always including "nothing pending
survived" and "everything survived".

Persist points: ``schedule_power_failure(fence=n)`` makes the n-th later
``drain()`` raise ``PowerFailure`` *before* it takes effect, freezing the
three images; crash states are then taken from that moment.  Crash tests run
an operation once per fence, so that the power fails at every persist point
inside it (SQLite's crash VFS does the same at every sync).

State diagram::

    SimulatedPmem(size) --> LIVE --drain() while armed, n-th fence--> FAILED
      LIVE:   every Device method works; crash()/crash_states() describe a
              power failure "now"
      FAILED: every Device method raises PowerFailure; crash()/crash_states()
              describe the moment of failure
      either --close()--> CLOSED (methods raise ValueError)

Invariants
  1. persisted only changes in drain(), and only to values that were flushed.
  2. Every crash state equals persisted outside the pending pieces.
  3. crash(seed) and crash_states(limit, seed) depend only on the images and
     the seed.
"""

from __future__ import annotations

import dataclasses
import itertools
import mmap
import os
import weakref
from collections.abc import Iterator, Sequence, Sized
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from daxfs.errors import InvalidArgument
from daxfs.pmem.device import CACHE_LINE_SIZE, Device, Granularity, check_integer, check_range

if TYPE_CHECKING:
    from typing_extensions import Buffer

WORD = 8  # bytes of a failure-atomic store
DEFAULT_STATES = 64

Words = npt.NDArray[np.uint64]


class PowerFailure(BaseException):
    """The simulated power failed at a scheduled fence.

    A BaseException, like KeyboardInterrupt, so that ``except Exception`` in
    the code under test cannot swallow it.
    """


@dataclasses.dataclass(frozen=True)
class _Images:
    persisted: bytes
    flushed: bytes
    current: bytes


class SimulatedPmem(Device):
    """A crash-simulating persistent-memory device of ``size`` bytes (a multiple of 8)."""

    granularity = Granularity.CACHE_LINE
    persist_method = "cpu"

    def __init__(self, size: int, *, image: Buffer | None = None) -> None:
        check_integer(size, "size")
        if size == 0 or size % WORD:
            raise InvalidArgument(f"size must be a positive multiple of {WORD}, got {size}")
        self.size = size
        # current image in a memfd, so that file extents can be mapped from it (DAX mmap)
        self._fd = os.memfd_create("daxfs-simulated-pmem", os.MFD_CLOEXEC)
        # a device dropped without close() must not keep its memory: close the fd on GC
        self._fd_closer = weakref.finalize(self, os.close, self._fd)
        os.ftruncate(self._fd, size)
        self._map: mmap.mmap | None = mmap.mmap(self._fd, size)
        self._view = memoryview(self._map)
        if image is not None:
            data = memoryview(image).cast("B")
            if len(data) != size:
                raise InvalidArgument(f"image holds {len(data)} bytes, not {size}")
            self._view[:] = data
        self._persisted = bytearray(self._view)
        self._pending_flushes: list[tuple[int, bytes]] = []
        self._fail_at: int | None = None
        self._failed: _Images | None = None
        #: cache lines flushed so far (each write counts its lines too)
        self.flush_count = 0
        #: fences (drains) so far; each is a persist point
        self.fence_count = 0

    def __repr__(self) -> str:
        state = "closed" if self.closed else "failed" if self._failed else "live"
        return f"<SimulatedPmem {self.size} bytes {state} fences={self.fence_count}>"

    # -- Device interface ----------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._map is None

    @property
    def fd(self) -> int:
        """A file descriptor of the current image (a memfd), for mapping extents."""
        if self._map is None:
            raise ValueError("I/O operation on closed device")
        return self._fd

    @property
    def power_failed(self) -> bool:
        """True once a scheduled power failure has happened."""
        return self._failed is not None

    def _live(self) -> memoryview:
        if self._map is None:
            raise ValueError("I/O operation on closed device")
        if self._failed is not None:
            raise PowerFailure("the simulated power has failed")
        return self._view

    def direct_access(self, offset: int, length: int) -> memoryview:
        view = self._live()
        check_range(offset, length, self.size)
        return view[offset : offset + length]

    def read(self, offset: int, length: int) -> bytes:
        view = self._live()
        check_range(offset, length, self.size)
        return bytes(view[offset : offset + length])

    def readinto(self, offset: int, buffer: Buffer) -> int:
        view = self._live()
        dst = memoryview(buffer).cast("B")
        check_range(offset, len(dst), self.size)
        dst[:] = view[offset : offset + len(dst)]
        return len(dst)

    def write(self, offset: int, data: Buffer, *, drain: bool = True) -> None:
        view = self._live()
        src = memoryview(data).cast("B")
        check_range(offset, len(src), self.size)
        view[offset : offset + len(src)] = src
        self.flush(offset, len(src))
        if drain:
            self.drain()

    def fill(self, offset: int, length: int, byte: int = 0, *, drain: bool = True) -> None:
        view = self._live()
        check_range(offset, length, self.size)
        if isinstance(byte, bool) or not isinstance(byte, int) or not 0 <= byte <= 255:
            raise InvalidArgument(f"byte must be in range(256), got {byte!r}")
        view[offset : offset + length] = bytes([byte]) * length
        self.flush(offset, length)
        if drain:
            self.drain()

    def flush(self, offset: int, length: int) -> None:
        view = self._live()
        check_range(offset, length, self.size)
        if length == 0:
            return
        start = offset - offset % CACHE_LINE_SIZE
        end = min(-(-(offset + length) // CACHE_LINE_SIZE) * CACHE_LINE_SIZE, self.size)
        self._pending_flushes.append((start, bytes(view[start:end])))
        self.flush_count += (end - start + CACHE_LINE_SIZE - 1) // CACHE_LINE_SIZE

    def drain(self) -> None:
        self._live()
        if self._fail_at is not None:
            self._fail_at -= 1
            if self._fail_at == 0:
                self._fail_at = None
                self._failed = self._images()
                raise PowerFailure(f"simulated power failure at fence {self.fence_count + 1}")
        for start, data in self._pending_flushes:
            self._persisted[start : start + len(data)] = data
        self._pending_flushes.clear()
        self.fence_count += 1

    def persist(self, offset: int, length: int) -> None:
        self.flush(offset, length)
        self.drain()

    def close(self) -> None:
        if self._map is None:
            return
        self._view.release()
        try:
            self._map.close()
        except BufferError:
            self._view = memoryview(self._map)
            raise BufferError("cannot close SimulatedPmem: direct_access views are alive") from None
        self._map = None
        self._fd_closer()

    # -- power failure -------------------------------------------------------------

    def schedule_power_failure(self, fence: int | None) -> None:
        """Fail the power at the ``fence``-th later drain (1 = the next); None disarms."""
        if fence is not None:
            check_integer(fence, "fence")
            if fence == 0:
                raise InvalidArgument("fence counts from 1 (the next drain)")
        self._fail_at = fence

    def _images(self) -> _Images:
        if self._failed is not None:
            return self._failed
        if self._map is None:
            raise ValueError("I/O operation on closed device")
        flushed = bytearray(self._persisted)
        for start, data in self._pending_flushes:
            flushed[start : start + len(data)] = data
        return _Images(bytes(self._persisted), bytes(flushed), bytes(self._view))

    def _candidates(self) -> tuple[npt.NDArray[np.intp], list[Words], _Images]:
        """Indices of pending words and, per image, their values there."""
        images = self._images()
        p, f, c = (
            np.frombuffer(x, dtype=np.uint64)
            for x in (images.persisted, images.flushed, images.current)
        )
        idx = np.flatnonzero((p != f) | (p != c))
        return idx, [p[idx], f[idx], c[idx]], images

    def pending(self) -> list[tuple[int, int]]:
        """Ranges ``(offset, length)`` that are not certainly persistent, merged, 8-byte aligned."""
        idx, _, _ = self._candidates()
        ranges: list[tuple[int, int]] = []
        for word in idx.tolist():
            extend_ranges(ranges, word * WORD, WORD)
        return ranges

    def persisted_image(self) -> bytes:
        """What is certainly on the media (what every crash state contains)."""
        return self._images().persisted

    def crash(self, seed: int = 0) -> SimulatedPmem:
        """One possible device after a power failure now (or at the scheduled one).

        Each pending 8-byte piece takes one of its possible values, chosen by a
        generator seeded with ``seed``; the result has nothing pending.
        """
        idx, values, images = self._candidates()
        rng = np.random.default_rng(seed)
        choice = rng.integers(0, 3, size=len(idx))
        chosen = np.choose(choice, values)
        return self._from(images.persisted, idx, chosen)

    def crash_states(self, limit: int | None = None, *, seed: int = 0) -> Iterator[SimulatedPmem]:
        """Distinct devices that a power failure now could leave.

        All of them when there are at most ``limit`` (default 64); otherwise a
        seeded sample of ``limit``, starting with "nothing pending survived"
        and "everything survived".
        """
        limit = DEFAULT_STATES if limit is None else check_integer(limit, "limit")
        idx, values, images = self._candidates()
        stacked = np.stack(values, axis=1) if len(idx) else np.zeros((0, 3), np.uint64)
        options = [np.unique(row) for row in stacked]
        if at_most(options, limit):
            for combo in itertools.product(*options):
                yield self._from(images.persisted, idx, np.array(combo, dtype=np.uint64))
            return
        yield self._from(images.persisted, idx, values[0])
        yield self._from(images.persisted, idx, values[2])
        rng = np.random.default_rng(seed)
        seen: set[bytes] = {values[0].tobytes(), values[2].tobytes()}
        tries = 0
        while len(seen) < limit and tries < 20 * limit:
            tries += 1
            chosen = np.choose(rng.integers(0, 3, size=len(idx)), values)
            key = chosen.tobytes()
            if key not in seen:
                seen.add(key)
                yield self._from(images.persisted, idx, chosen)

    def _from(self, persisted: bytes, idx: npt.NDArray[np.intp], chosen: Words) -> SimulatedPmem:
        image = bytearray(persisted)
        np.frombuffer(image, dtype=np.uint64)[idx] = chosen
        return SimulatedPmem(self.size, image=image)


def extend_ranges(ranges: list[tuple[int, int]], offset: int, length: int) -> None:
    """Append ``(offset, length)`` to ``ranges`` (sorted, as they are built), joined to
    the last range if it ends where this one starts."""
    if ranges and ranges[-1][0] + ranges[-1][1] == offset:
        ranges[-1] = (ranges[-1][0], ranges[-1][1] + length)
    else:
        ranges.append((offset, length))


def at_most(options: Sequence[Sized], limit: int) -> bool:
    """Whether the product of the options' lengths (the number of combinations) is
    at most ``limit``; stops multiplying once it is past."""
    total = 1
    for opts in options:
        total *= len(opts)
        if total > limit:
            return False
    return True
