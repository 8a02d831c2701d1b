"""Latency percentiles and thread scaling of small filesystem operations (for bench/fs.py).

Latency: each operation is timed on its own with ``time.perf_counter_ns``
(the two timer reads, tens of ns, are in every sample on both sides alike),
over a fixed list of random block-aligned offsets; p50 and p99 of the
samples, with the garbage collector off.

Thread scaling: ``threads`` threads start together at a barrier and each
runs the same number of operations on its own cycle of offsets (or names);
the rate is all their operations over the wall time from the barrier to the
last one's end; the median of ``repeats`` such runs.  daxfs threads each
open their own File on the one inode (as processes would hold their own
descriptors); os threads share one descriptor (pread is thread-safe).  With
the GIL, Python-level work does not run in parallel: the figures show how
much of each operation runs without it (os.pread's system call does).

Nothing here asserts; the callers catch OSError and Unavailable.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Sequence
from itertools import cycle, islice

from common import gc_paused
from report import Latency, percentile

#: op(offset_or_name) for one operation
Op = Callable[[int], object]


def latency(name: str, op_loop: Callable[[int], list[int]], samples: int) -> Latency:
    """Percentiles of ``op_loop(samples)``, which returns one duration (ns) per operation."""
    with gc_paused():
        op_loop(min(samples, 1000))  # warm up
        durations = sorted(op_loop(samples))
    return Latency(name, percentile(durations, 0.5), percentile(durations, 0.99), len(durations))


def timed_loop(call: Callable[[int], object], offsets: Sequence[int]) -> Callable[[int], list[int]]:
    """Durations of ``call(offset)`` calls, the offsets taken in turn.

    ``call`` puts the offset last on the real call, the same way on both sides
    (``partial(f.pread, size)``, ``partial(os.pread, fd, size)``,
    ``partial(f.pwrite, data)``, ``partial(os.pwrite, fd, data)``), so each pays
    the same one C-level partial call around what is timed.
    """
    it = cycle(offsets)
    clock = time.perf_counter_ns

    def loop(n: int) -> list[int]:
        out = []
        append = out.append
        for off in islice(it, n):
            start = clock()
            call(off)
            append(clock() - start)
        return out

    return loop


def threaded_rate(
    make_loop: Callable[[int], Callable[[int], object]],
    threads: int,
    ops_per_thread: int,
    repeats: int,
) -> float:
    """Median op/s of ``threads`` threads each running ``make_loop(i)(ops_per_thread)``.

    ``make_loop(i)`` is called once per thread and run, before timing, on a
    tenth of the operations (warm-up); an exception in a thread is re-raised.
    """
    loops = [make_loop(i) for i in range(threads)]
    for loop in loops:
        loop(max(1, ops_per_thread // 10))
    with gc_paused():
        rates = [_one_run(loops, ops_per_thread) for _ in range(repeats)]
    return statistics.median(rates)


def _one_run(loops: Sequence[Callable[[int], object]], ops: int) -> float:
    barrier = threading.Barrier(len(loops) + 1)
    errors: list[BaseException] = []

    def body(loop: Callable[[int], object]) -> None:
        barrier.wait()
        try:
            loop(ops)
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=body, args=(loop,)) for loop in loops]
    for w in workers:
        w.start()
    barrier.wait()
    start = time.perf_counter_ns()
    for w in workers:
        w.join()
    elapsed = time.perf_counter_ns() - start
    if errors:
        raise errors[0]
    return len(loops) * ops / (elapsed / 1e9)
