"""LeanFuture (daxfs/block/future.py): a concurrent.futures.Future without a Condition
of its own, held to the base class's behaviour -- results, exceptions, timeouts,
cancellation, callbacks, concurrent.futures.wait / as_completed, asyncio.wrap_future,
threads parked in result() -- and to its own: the reaper's nested wait."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from daxfs.block.future import LeanFuture


def kinds() -> list[Callable[[], cf.Future[Any]]]:
    return [cf.Future, LeanFuture]


@pytest.mark.parametrize("make", kinds())
def test_result_exception_and_state_as_the_base_class(make: Callable[[], cf.Future[Any]]) -> None:
    f = make()
    assert isinstance(f, cf.Future)
    assert not f.done()
    assert not f.cancelled()
    assert not f.running()
    f.set_result(5)
    assert f.done()
    assert f.result() == 5
    assert f.exception() is None
    with pytest.raises(cf.InvalidStateError):
        f.set_result(6)
    with pytest.raises(cf.InvalidStateError):
        f.set_exception(OSError(5, "x"))
    assert f.result(0) == 5
    assert "finished returned int" in repr(f)
    g = make()
    error = OSError(5, "at offset 4096")
    g.set_exception(error)
    assert g.exception() is error
    with pytest.raises(OSError, match="offset 4096"):
        g.result()
    h = make()
    with pytest.raises(cf.TimeoutError):
        h.result(0.01)
    with pytest.raises(cf.TimeoutError):
        h.exception(0)
    assert h.cancel()
    assert h.cancelled()
    assert h.done()
    assert h.cancel()
    with pytest.raises(cf.CancelledError):
        h.result()
    assert not h.set_running_or_notify_cancel()
    r = make()
    assert r.set_running_or_notify_cancel()
    assert r.running()
    assert not r.cancel()
    r.set_result(1)
    assert not r.cancel()


@pytest.mark.parametrize("make", kinds())
def test_callbacks_run_once_in_order_after_the_result(make: Callable[[], cf.Future[Any]]) -> None:
    f = make()
    seen: list[Any] = []
    f.add_done_callback(lambda x: seen.append(("a", x.result())))
    f.add_done_callback(lambda x: 1 / 0)  # logged, the next still runs
    f.add_done_callback(lambda x: seen.append(("b", x.result())))
    f.set_result(3)
    f.add_done_callback(lambda x: seen.append(("late", x.result())))
    assert seen == [("a", 3), ("b", 3), ("late", 3)]


@pytest.mark.parametrize("make", kinds())
def test_threads_parked_in_result_are_all_woken(make: Callable[[], cf.Future[Any]]) -> None:
    f = make()
    got: list[Any] = []
    threads = [threading.Thread(target=lambda: got.append(f.result(30))) for _ in range(6)]
    threads += [threading.Thread(target=lambda: got.append(f.exception(30))) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(0.05)
    f.set_result(9)
    for t in threads:
        t.join(30)
    assert sorted(got, key=repr) == sorted([9] * 6 + [None] * 2, key=repr)


def test_a_timed_out_waiter_leaves_nothing_behind() -> None:
    f: LeanFuture[int] = LeanFuture()
    for _ in range(50):
        with pytest.raises(cf.TimeoutError):
            f.result(0.0005)
    assert not f._sleepers
    f.set_result(1)
    assert f.result() == 1


def test_wait_as_completed_and_wrap_future_take_it() -> None:
    futures: list[LeanFuture[int]] = [LeanFuture() for _ in range(6)]

    def resolve() -> None:
        time.sleep(0.02)
        for i, f in enumerate(futures):
            if i == 3:
                f.set_exception(OSError(5, "three"))
            else:
                f.set_result(i)

    threading.Thread(target=resolve).start()
    done = {f.result() if f.exception() is None else -1 for f in cf.as_completed(futures, 30)}
    assert done == {0, 1, 2, -1, 4, 5}
    more: list[LeanFuture[int]] = [LeanFuture(), LeanFuture()]
    threading.Timer(0.02, lambda: more[1].set_result(1)).start()
    first = cf.wait(more, 30, return_when=cf.FIRST_COMPLETED)
    assert first.done == {more[1]}
    assert first.not_done == {more[0]}
    mixed = [cf.Future(), LeanFuture()]  # type: ignore[var-annotated]
    threading.Timer(0.02, lambda: [m.set_result(0) for m in mixed]).start()
    assert len(cf.wait(mixed, 30).done) == 2

    async def main() -> int:
        f: LeanFuture[int] = LeanFuture()
        threading.Timer(0.02, lambda: f.set_result(7)).start()
        return await asyncio.wrap_future(f)

    assert asyncio.run(main()) == 7

    async def cancelled() -> None:
        f: LeanFuture[int] = LeanFuture()
        task = asyncio.ensure_future(asyncio.wrap_future(f))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0)  # (the chained cancel runs as a callback of the loop)
        assert f.cancelled()

    asyncio.run(cancelled())


def test_result_asks_its_waiter_first_and_not_with_a_timeout() -> None:
    """The reaper's nested wait: ``waiter.wait(future)`` runs before parking (on the
    reaper it resolves the future), never for a bounded wait."""
    calls: list[Any] = []

    class Reaper:
        def wait(self, obj: Any) -> None:
            calls.append(obj)
            obj.set_result(4)

    f: LeanFuture[int] = LeanFuture(Reaper())
    assert f.result() == 4
    assert calls == [f]
    g: LeanFuture[int] = LeanFuture(Reaper())
    with pytest.raises(cf.TimeoutError):
        g.result(0.001)
    assert calls == [f]
