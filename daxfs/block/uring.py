"""UringEngine: the file backend's IoOps through one io_uring shared by all threads.

Theory of operation
-------------------
The C extension ``daxfs.block._uring`` (liburing) owns the ring: ``submit``
fills one SQE under a lock and calls io_uring_submit with the GIL released;
``reap`` waits for completions with the GIL released and returns them in a
batch, releasing the buffers it held for each.  This module does the rest,
so that the engine agrees with ``run_op`` (daxfs.block.engine), the
reference:

    READV / WRITEV   one IORING_OP_READV / WRITEV (RWF_DSYNC as rw_flags for
                     FUA); a partial transfer is continued from where it
                     stopped with another SQE; a transfer that moves nothing
                     ends the op short.  RWF_DSYNC refused (EOPNOTSUPP): the
                     write again without it, then an fdatasync.
    FDATASYNC        IORING_OP_FSYNC with IORING_FSYNC_DATASYNC.
    FALLOCATE        IORING_OP_FALLOCATE; a file system without the mode
                     (EOPNOTSUPP, ENOTTY, ENODEV): the range written with
                     zeros, 1 MiB per SQE.
    datasync_after   an fdatasync SQE once the op succeeded, then completion.

Threading: any thread submits (the C submission lock orders them); the
leader's submissions (a continuation, a ``done`` callback's new op -- the
next read of an ``end_io`` chain) are *deferred*: queued in the ring and
submitted with one system call when the leader flushes, before it steps
down, or by the next ``reap`` before it waits (``Ring.submit(..., defer)``,
``Ring.flush``).
Completions are reaped by whoever waits, one thread at a time (the
*leader*, leader/follower): a thread that will wait for its own op says so
first (``poll_begin``, before submitting), then ``poll_until(done)`` makes it
the leader when no one else leads -- it waits in the kernel, reaps a batch
of CQEs and runs their continuations and ``done`` callbacks, its own and
other threads' alike -- and otherwise waits for the leader to finish a
batch.  ``FileBlockDevice``'s synchronous helpers (``read``, ``write``,
``flush``, ...) wait this way, so a QD1 bio costs no thread handoff.  The
completion thread ("daxfs-uring", started the first time it is needed: an
engine only polled never has one) leads whenever ops are pending and no
thread means to poll (bios completed through futures and ``end_io``), or
when a thread waits for a slot.  ``queue_depth`` bounds the ops in flight:
``submit`` waits for a free slot, except on the leader, which never waits
(a ``done`` callback may start a new op -- a PREFLUSH's data -- and only the
leader frees slots; the ring's completion queue holds the overflow, as the
kernel keeps overflowed CQEs).  Each op has at most one SQE in flight.  The
leader steps down only after completing its whole batch, so a follower
never waits in the kernel for a CQE that another thread already took; a
``done`` callback that waits for another op on the same engine reaps nested.

Synchronous calls (``run``, ``run_batch``): a thread that waits only for its
own I/O -- a synchronous bio (``FileBlockDevice._run``), a batch of reads --
needs none of that.  ``run(op)`` does a READV or WRITEV on one of the ring's
*private* rings (``_uring.Ring.rw``: one SQE, submitted and waited for in one
io_uring_submit_and_wait, GIL released; no slot, no leader, no Python between
submission and completion) and agrees with ``run_op``: a short transfer is
continued, RWF_DSYNC refused is a write and an fdatasync, an error is the
OSError ``_error`` names.  ``run_batch`` does many reads or writes of one
buffer each, up to ``queue_depth`` in flight, refilled and reaped in C
(``Ring.rw_batch``), then finishes each item as ``run`` would.  Both count in
``_sync``, which ``close`` waits for.

``UringEngine(queue_depth)`` raises the OSError of io_uring_setup where the
kernel has no io_uring (ENOSYS), forbids it (EPERM: the
kernel.io_uring_disabled sysctl, a seccomp filter) or lacks an opcode
(EOPNOTSUPP); ``availability()`` says, without raising, whether it can be
had and why not, which ``choose_engine`` reports as the fallback's reason.

Invariants
  1. ``done`` is called exactly once per op accepted by ``submit`` (one that
     raised was not accepted), on the leader (the completion thread or a
     polling thread), after the kernel finished with the op's buffers.
  2. The result is the one ``run_op`` gives: all the bytes, or fewer only when
     a transfer moved nothing; an error is an OSError with the kernel's errno
     naming the system call and the offset.
  3. ``close()`` stops new submissions (EBADF), waits for every op in flight,
     then stops the completion thread and releases the ring.
  4. At most one thread reaps at a time (``_leader``), and while ops are
     pending some thread leads or will: a poller, or the completion thread
     when no thread polls or one waits for a slot.
  5. ``run`` and ``run_batch`` return the result ``run_op`` would give for
     the same op (a batch: for each item), or raise its OSError; they never
     touch the shared ring, so they need no leader and make none wait.
"""

from __future__ import annotations

import collections
import dataclasses
import errno
import logging
import mmap
import os
import threading
from collections.abc import Callable
from typing import Any

from daxfs.block.engine import Done, IoEngine, IoKind, IoOp, advance_views
from daxfs.errors import ClosedFile, InvalidArgument

LOG = logging.getLogger("daxfs.block")

try:
    from daxfs.block import _uring
except ImportError as exc:  # built without liburing
    _uring = None  # type: ignore[assignment]
    _IMPORT_ERROR = str(exc)
else:
    _IMPORT_ERROR = ""

IO_URING_DISABLED = "/proc/sys/kernel/io_uring_disabled"
_ZERO_CHUNK = 1 << 20
_FALLOCATE_MISSING = (errno.EOPNOTSUPP, errno.ENOTTY, errno.ENODEV)
_STOP = object()  # the token of the NOP that stops the completion thread
_zeros: mmap.mmap | None = None


def _sysctl_note() -> str:
    """What kernel.io_uring_disabled says, or ''."""
    try:
        with open(IO_URING_DISABLED, encoding="ascii") as f:
            value = f.read().strip()
    except OSError:
        return ""
    if value == "1":
        return " (kernel.io_uring_disabled=1: only members of kernel.io_uring_group may use it)"
    if value == "2":
        return " (kernel.io_uring_disabled=2: io_uring is disabled for everyone)"
    return ""


def availability(queue_depth: int = 1) -> str:
    """'' when a ring of ``queue_depth`` can be set up here, else why not."""
    try:
        UringEngine(queue_depth).close()
    except OSError as exc:
        return exc.strerror or str(exc)
    return ""


@dataclasses.dataclass(slots=True, eq=False)
class _Task:
    """One op's progress across its SQEs (the token the ring hands back)."""

    op: IoOp
    done: Done
    views: list[memoryview]
    total: int
    moved: int = 0
    rw_flags: int = 0
    sync_after: bool = False
    phase: str = "main"  # "main", "zeros" (fallocate emulated), "sync" (fdatasync after)
    result: int = 0


class UringEngine(IoEngine):
    """IoOps on one shared io_uring; see the module docstring."""

    name = "io_uring"

    def __init__(self, queue_depth: int = 8) -> None:
        """Set up the ring and start the completion thread.

        Raises:
            InvalidArgument (EINVAL): queue_depth not an integer in 1..4096.
            OSError: io_uring unavailable: ENOSYS (not built, or no kernel
                support), EPERM (forbidden), EOPNOTSUPP (an opcode missing).
        """
        if isinstance(queue_depth, bool) or not isinstance(queue_depth, int) or queue_depth < 1:
            raise InvalidArgument(f"queue_depth must be a positive integer, not {queue_depth!r}")
        if _uring is None:
            raise OSError(errno.ENOSYS, f"the io_uring extension is not built ({_IMPORT_ERROR})")
        if queue_depth > _uring.MAX_ENTRIES:
            raise InvalidArgument(
                f"queue_depth must be at most {_uring.MAX_ENTRIES}, not {queue_depth}"
            )
        try:
            ring = _uring.Ring(queue_depth)
        except OSError as exc:
            note = _sysctl_note() if exc.errno == errno.EPERM else ""
            raise OSError(exc.errno, f"{exc.strerror}{note}") from exc
        missing = ring.unsupported()
        if missing:
            ring.close()
            raise OSError(errno.EOPNOTSUPP, f"this kernel's io_uring lacks {', '.join(missing)}")
        self.queue_depth = queue_depth
        self._ring = ring
        lock = threading.Lock()
        self._mutex = lock  # the lock of both conditions (``with`` it is cheaper)
        self._cv = threading.Condition(lock)  # pollers, slot waiters, close
        self._bg_cv = threading.Condition(lock)  # the completion thread
        self._free = queue_depth  # slots (may go below 0: the leader's ops)
        self._pending = 0  # ops accepted, not yet done
        self._leader: threading.Thread | None = None  # the thread in reap() or completing
        self._intents = 0  # threads that will poll for their own op (poll_begin)
        # reaped, not yet completed (the leader's; a nested reap completes these first)
        self._backlog: collections.deque[tuple[Any, int]] = collections.deque()
        self._slot_waiters = 0
        self._sync = 0  # run / run_batch calls in progress (close waits for them)
        self._sleepers = 0  # threads in self._cv.wait(): notify only when there are some
        self._closing = False
        self._stopped = False
        self._closed = threading.Event()
        # the completion thread, started the first time it is needed (an engine used
        # only by polling threads -- the synchronous helpers -- never starts one)
        self._thread: threading.Thread | None = None

    # -- submission ------------------------------------------------------------------

    def submit(self, op: IoOp, done: Done) -> None:
        """Start ``op``; ``done`` gets its result on the completion thread.

        Raises:
            ClosedFile (EBADF): the engine is closed or closing.
            TypeError, ValueError, BufferError: a buffer the ring cannot use
                (read-only for a READV, not contiguous), too many buffers.
        """
        leading = threading.current_thread() is self._leader
        with self._cv:
            if self._closing and not leading:
                raise ClosedFile("the io_uring engine is closed")
            if self._free <= 0 and not leading:
                self._slot_waiters += 1
                self._wake_background()  # someone must reap while this thread waits
                try:
                    while self._free <= 0:
                        self._wait()
                        if self._closing:
                            raise ClosedFile("the io_uring engine is closed")
                finally:
                    self._slot_waiters -= 1
            self._free -= 1
            self._pending += 1
            if not self._intents and self._leader is None:
                self._wake_background()  # nobody will poll for this op: the thread reaps
        views = [v for v in op.buffers if len(v)] if op.kind in _RW else []
        task = _Task(
            op,
            done,
            views,
            sum(len(v) for v in views),
            rw_flags=op.flags if op.kind is IoKind.WRITEV else 0,
            sync_after=op.datasync_after,
        )
        try:
            if op.kind in _RW and not task.total:
                # nothing to move (preadv of nothing returns 0): a NOP, so that done
                # still runs on the completion thread
                self._ring.submit(task, _uring.NOP, -1, 0, (), 0, 0, leading)
            else:
                self._submit_main(task, leading)
        except BaseException:
            self._release()
            raise

    def _submit_main(self, task: _Task, defer: bool = True) -> None:
        """The op's (next) SQE; ``defer`` (the leader: a continuation, or a ``done``
        callback's new op) queues it for the leader's flush before it steps down or
        waits, so that one system call submits a batch's new SQEs."""
        op = task.op
        kind = op.kind
        ring = self._ring
        if kind is IoKind.READV:
            ring.submit(task, _uring.READV, op.fd, op.offset + task.moved, task.views, 0, 0, defer)
        elif kind is IoKind.WRITEV:
            ring.submit(
                task,
                _uring.WRITEV,
                op.fd,
                op.offset + task.moved,
                task.views,
                0,
                task.rw_flags,
                defer,
            )
        elif kind is IoKind.FDATASYNC:
            ring.submit(task, _uring.FDATASYNC, op.fd, 0, (), 0, 0, defer)
        else:
            ring.submit(task, _uring.FALLOCATE, op.fd, op.offset, (), op.length, op.flags, defer)

    def _submit_zeros(self, task: _Task) -> None:
        global _zeros
        if _zeros is None:
            _zeros = mmap.mmap(-1, _ZERO_CHUNK, prot=mmap.PROT_READ)
        n = min(task.op.length - task.moved, _ZERO_CHUNK)
        offset = task.op.offset + task.moved
        self._ring.submit(
            task, _uring.WRITEV, task.op.fd, offset, [memoryview(_zeros)[:n]], 0, 0, True
        )

    # -- synchronous calls on private rings (invariant 5) ------------------------------

    def run(self, op: IoOp) -> int:
        """Execute a READV or WRITEV ``op`` in this thread and wait, on a private
        ring: what ``run_op(op)`` returns (see the module docstring).

        Raises:
            ClosedFile (EBADF): the engine is closed or closing.
            InvalidArgument (EINVAL): ``op`` is not a READV or WRITEV.
            OSError: the kernel's error, errno kept, naming the call and offset.
        """
        kind = op.kind
        if kind is not IoKind.READV and kind is not IoKind.WRITEV:
            raise InvalidArgument(f"UringEngine.run takes a READV or WRITEV, not {kind.value}")
        self._enter_sync()
        try:
            return self._run_rw(op, [v for v in op.buffers if len(v)], 0)
        finally:
            self._leave_sync()

    def transfer(
        self, write: bool, fd: int, offset: int, views: list[memoryview], size: int, flags: int = 0
    ) -> int:
        """``run`` of a READV (or WRITEV, with ``flags``) of ``views`` (non-empty,
        ``size`` bytes in all) at ``offset``, without an IoOp: the lean form the
        block device's synchronous fast path calls.

        Raises:
            As ``run``.
        """
        with self._mutex:
            if self._closing:
                raise ClosedFile("the io_uring engine is closed")
            self._sync += 1
        try:
            res = self._ring.rw(_uring.WRITEV if write else _uring.READV, fd, offset, views, flags)
            if res == size:
                return res
            return self.finish(write, fd, offset, views, size, flags, res)
        finally:
            self._leave_sync()

    def finish(
        self,
        write: bool,
        fd: int,
        offset: int,
        views: list[memoryview],
        size: int,
        flags: int,
        res: int,
    ) -> int:
        """The rest of a ``transfer`` whose first SQE gave ``res`` (not ``size``): a
        short transfer continued, RWF_DSYNC refused done as a write and an
        fdatasync, an error raised named (``transfer``'s and the C fast path's end,
        ``_uring.Fast``).  The caller keeps the engine open meanwhile.

        Raises:
            As ``run``.
        """
        kind = IoKind.WRITEV if write else IoKind.READV
        op = IoOp(kind, fd, offset, views, flags=flags)
        if res > 0:  # short: the rest
            return self._run_rw(op, advance_views(views, res), res)
        if res == 0:
            return 0
        if write and flags and -res == errno.EOPNOTSUPP:
            return self._run_rw(op, views, 0)
        raise _error(offset, -res, _CALL[kind])

    def fast_path(
        self, block_size: int, max_bytes: int, dma_alignment: int, size: int, readonly: bool
    ) -> _uring.Fast:
        """A ``_uring.Fast`` on this engine's ring for a block device of ``size``
        bytes with those limits (``daxfs.block.file``'s fast path), reads in
        flight up to ``queue_depth``.  Its owner shuts it down before ``close``."""
        return _uring.Fast(
            self._ring, block_size, max_bytes, dma_alignment, size, readonly, self.queue_depth
        )

    def run_batch(
        self, kind: IoKind, fd: int, items: list[tuple[int, memoryview]], flags: int = 0
    ) -> list[int | OSError]:
        """Read into (READV) or write from (WRITEV, ``flags`` the RWF_* flags) each
        ``(offset, buffer)`` of ``items``, up to ``queue_depth`` in flight, and wait
        for all: per item, what ``run`` would return, or the OSError it would raise.

        Raises:
            ClosedFile (EBADF): the engine is closed or closing.
            InvalidArgument (EINVAL): ``kind`` is not READV or WRITEV.
            TypeError, ValueError, BufferError: an item the ring cannot use (a
                negative offset, a buffer read-only for a read or not contiguous).
        """
        if kind is not IoKind.READV and kind is not IoKind.WRITEV:
            raise InvalidArgument(f"run_batch takes READV or WRITEV, not {kind.value}")
        opcode = _uring.READV if kind is IoKind.READV else _uring.WRITEV
        self._enter_sync()
        try:
            results = self._ring.rw_batch(opcode, fd, items, flags, self.queue_depth)
            return self.finish_batch(kind, fd, items, results, flags)
        finally:
            self._leave_sync()

    def finish_batch(
        self,
        kind: IoKind,
        fd: int,
        items: list[tuple[int, memoryview]],
        results: list[int],
        flags: int = 0,
    ) -> list[int | OSError]:
        """Per item of a batch whose SQEs gave ``results``: what ``run`` would
        return, or the OSError it would raise (a short transfer continued, RWF_DSYNC
        refused done again without it): ``run_batch``'s end, and the C fast
        path's (``_uring.Fast.read_many``).  The caller keeps the engine open."""
        out: list[int | OSError] = []
        for (offset, view), res in zip(items, results, strict=True):
            if res == len(view) or res == 0:
                out.append(res)
                continue
            # short, failed, or RWF_DSYNC refused: the rest as ``run`` does it
            op = IoOp(kind, fd, offset, [view], flags=flags)
            try:
                if res > 0:
                    out.append(self._run_rw(op, [view[res:]], res))
                elif kind is IoKind.WRITEV and flags and -res == errno.EOPNOTSUPP:
                    out.append(self._run_rw(op, [view], 0))
                else:
                    out.append(_error(op.offset, -res, _CALL[kind]))
            except OSError as exc:
                out.append(exc)
        return out

    def _enter_sync(self) -> None:
        with self._mutex:
            if self._closing:
                raise ClosedFile("the io_uring engine is closed")
            self._sync += 1

    def _leave_sync(self) -> None:
        with self._mutex:
            self._sync -= 1
            if self._sleepers:
                self._cv.notify_all()

    def _run_rw(self, op: IoOp, views: list[memoryview], moved: int) -> int:
        """``op`` from byte ``moved`` on (``views``: what is left), continued until
        done or a transfer moves nothing; the bytes moved in all (``run_op``'s)."""
        kind = op.kind
        fd = op.fd
        flags = op.flags if kind is IoKind.WRITEV else 0
        sync_after = op.datasync_after
        opcode = _uring.READV if kind is IoKind.READV else _uring.WRITEV
        total = moved + sum(len(v) for v in views)
        rw = self._ring.rw
        while moved < total:
            res = rw(opcode, fd, op.offset + moved, views, flags)
            if res < 0:
                if flags and -res == errno.EOPNOTSUPP:
                    flags = 0  # no RWF_DSYNC here: write, then fdatasync
                    sync_after = True
                    continue
                raise _error(op.offset, -res, _CALL[kind])
            if res == 0:
                break
            moved += res
            if moved < total:
                views = advance_views(views, res)
        if sync_after:
            try:
                os.fdatasync(fd)
            except OSError as exc:
                raise _error(op.offset, exc.errno or errno.EIO, "fdatasync") from None
        return moved

    # -- completion: the leader reaps -------------------------------------------------

    def _wait(self) -> None:
        """``self._cv.wait()``, counted in ``_sleepers`` (caller holds the lock)."""
        self._sleepers += 1
        try:
            self._cv.wait()
        finally:
            self._sleepers -= 1

    def poll_begin(self) -> None:
        """Say that this thread will ``poll_until`` its op completes (before submitting
        it, so that the completion thread does not take the leadership first)."""
        with self._cv:
            self._intents += 1

    def poll_end(self) -> None:
        """The matching end of ``poll_begin``."""
        with self._cv:
            self._intents -= 1
            if not self._intents and self._pending:
                self._wake_background()

    def poll_until(self, done: Callable[[], bool]) -> None:
        """Reap completions in this thread until ``done()``: whoever waits reaps.

        Only one thread (the leader) reaps at a time; the others wait for it to
        finish a batch.  Called while already leading (from a completion that waits
        for another op), it reaps nested.
        """
        me = threading.current_thread()
        if me is self._leader:
            while not done():
                self._reap_batch()
            return
        cv = self._cv
        while True:
            with cv:
                while self._leader is not None and not done():
                    self._wait()
                if done():
                    return
                self._leader = me
            self._lead()

    def _wake_background(self) -> None:
        """Wake the completion thread, starting it if need be (caller holds the lock)."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._background, name="daxfs-uring", daemon=True
            )
            self._thread.start()  # it runs once this thread releases the lock
        else:
            self._bg_cv.notify()

    def _background(self) -> None:
        """The completion thread: reaps while ops are pending and no thread polls."""
        cv = self._bg_cv
        try:
            while True:
                with cv:
                    while True:
                        if self._leader is None:
                            if self._stopped:
                                return
                            if self._pending and (not self._intents or self._slot_waiters):
                                break
                        cv.wait()
                    self._leader = threading.current_thread()
                self._lead()
        except OSError:
            LOG.exception("io_uring: reaping completions failed")

    def _lead(self) -> None:
        """One batch as the leader (the caller made itself leader), then step down."""
        try:
            self._reap_batch()
        finally:
            try:
                self._ring.flush()  # the batch's deferred SQEs, before stepping down
            finally:
                with self._cv:
                    self._leader = None
                    if self._sleepers:
                        self._cv.notify_all()
                    if self._pending and (not self._intents or self._slot_waiters):
                        self._wake_background()

    def _reap_batch(self) -> None:
        """Complete what was reaped and not yet completed (a nested call finds the
        rest of the outer batch there), else wait for completions (GIL released).
        Leader only."""
        backlog = self._backlog
        if not backlog:
            backlog.extend(self._ring.reap())
        while backlog:
            token, res = backlog.popleft()
            if token is _STOP:
                continue
            try:
                self._complete(token, res)
            except BaseException:  # a bug in a completion: log it, keep reaping
                LOG.exception("io_uring: completion of %s failed", token.op)
        # nothing reaped stays referenced: the tasks hold the callers' buffers

    def _complete(self, task: _Task, res: int) -> None:
        try:
            if task.phase == "sync":
                if res < 0:
                    self._end(task, self._error(task, -res, "fdatasync"))
                else:
                    self._end(task, task.result)
            elif task.phase == "zeros":
                self._complete_zeros(task, res)
            else:
                self._complete_main(task, res)
        except OSError as exc:
            if task.phase == "done":  # raised by done(): a bug there, logged by the caller
                raise
            self._end(task, exc)  # a continuation could not be submitted

    def _complete_main(self, task: _Task, res: int) -> None:
        op = task.op
        kind = op.kind
        if res < 0:
            code = -res
            if kind is IoKind.WRITEV and task.rw_flags and code == errno.EOPNOTSUPP:
                task.rw_flags = 0  # no RWF_DSYNC here: write, then fdatasync
                task.sync_after = True
                self._submit_main(task)
            elif kind is IoKind.FALLOCATE and code in _FALLOCATE_MISSING:
                task.phase = "zeros"
                self._submit_zeros(task)
            else:
                self._end(task, self._error(task, code, _CALL[kind]))
            return
        if kind in _RW:
            if res > 0:
                task.moved += res
                if task.moved < task.total:
                    task.views = advance_views(task.views, res)
                    self._submit_main(task)
                    return
            self._finish(task, task.moved)
        elif kind is IoKind.FALLOCATE:
            self._finish(task, op.length)
        else:
            self._finish(task, 0)

    def _complete_zeros(self, task: _Task, res: int) -> None:
        if res < 0:
            self._end(task, self._error(task, -res, "pwritev of zeros"))
            return
        if res == 0:
            moved = task.moved
            self._end(task, OSError(errno.EIO, f"writing zeros stopped after {moved} bytes"))
            return
        task.moved += res
        if task.moved < task.op.length:
            self._submit_zeros(task)
        else:
            self._finish(task, task.op.length)

    def _finish(self, task: _Task, result: int) -> None:
        """The op's own work is done: an fdatasync after it if asked, then ``done``."""
        if task.sync_after:
            task.sync_after = False
            task.phase = "sync"
            task.result = result
            self._ring.submit(task, _uring.FDATASYNC, task.op.fd, 0, (), 0, 0, True)
            return
        self._end(task, result)

    def _end(self, task: _Task, result: int | BaseException) -> None:
        task.phase = "done"
        task.views = []
        try:
            task.done(result)
        finally:
            self._release()

    def _release(self) -> None:
        with self._cv:
            self._free += 1
            self._pending -= 1
            if self._sleepers:
                self._cv.notify_all()

    @staticmethod
    def _error(task: _Task, code: int, call: str) -> OSError:
        return _error(task.op.offset, code, call)

    # -- lifecycle -----------------------------------------------------------------------

    def close(self) -> None:
        """Wait for every op in flight, then stop the completion thread and free the ring.

        Idempotent.  Must not be called from a ``done`` callback (it would wait for
        itself): that raises RuntimeError.
        """
        me = threading.current_thread()
        if me is self._thread or me is self._leader:
            raise RuntimeError("UringEngine.close() called from a completion")
        thread: threading.Thread | None = None
        with self._cv:
            if self._closing:
                wait_closed = True
            else:
                wait_closed = False
                self._closing = True
                self._cv.notify_all()  # submitters waiting for a slot: EBADF
                while self._pending or self._sync:
                    self._wait()
                self._stopped = True
                self._bg_cv.notify()
                thread = self._thread
        if wait_closed:  # another thread is closing: wait for it to finish
            self._closed.wait()
            return
        try:
            # wake the completion thread if it waits in the kernel (after a failed
            # submission left it leading with nothing in flight)
            if thread is not None:
                self._ring.submit(_STOP, _uring.NOP, -1, 0, (), 0, 0)
                thread.join()
            while self._ring.inflight:  # the NOP, if the thread did not reap it
                self._ring.reap()
            self._ring.close()
        finally:
            self._closed.set()

    @property
    def inflight(self) -> int:
        """Ops accepted and not yet completed."""
        with self._cv:
            return self._pending


def _error(offset: int, code: int, call: str) -> OSError:
    """The OSError of a failed call: the kernel's errno, naming the call and offset."""
    return OSError(code, f"{os.strerror(code)} ({call} at offset {offset})")


_RW = (IoKind.READV, IoKind.WRITEV)
_CALL = {
    IoKind.READV: "preadv",
    IoKind.WRITEV: "pwritev",
    IoKind.FDATASYNC: "fdatasync",
    IoKind.FALLOCATE: "fallocate",
}

__all__ = ["UringEngine", "availability"]
