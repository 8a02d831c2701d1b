"""Running a function in a forked child, with a timeout and limits, as a verdict.

Theory of operation
-------------------
``run_in_child(name, fn, timeout)`` forks; the child runs ``fn`` (which returns
a JSON-able dict) and writes ``{"status": "ok", ...}``, or the exception's
facts (type, errno, message, the daxfs frame that raised it) as ``{"status":
"error", ...}``, through a pipe, then leaves with ``os._exit``.  The parent
reads with a deadline.  What it returns says what happened:

    ok       fn returned
    error    fn raised (StepResult.data says what)
    hang     no result before the timeout (the child is killed), or ``watch``
             (polled every WATCH_INTERVAL seconds) gave a reason to stop it:
             a copy that runs away, say
    crash    the child died of a signal or without a result (interpreter death)

The child's address space is limited (what the parent has plus 2 GiB) so that
a runaway allocation is a MemoryError, not the machine's memory.  Disk use is
watched from the parent (``disk_usage``), not limited with RLIMIT_FSIZE: a
sparse file may rightly be huge and hold nothing.

Invariants
  1. The parent never blocks longer than ``timeout`` (plus the time to kill).
  2. Every child is reaped (waitpid), whatever happened.
"""

from __future__ import annotations

import contextlib
import dataclasses
import faulthandler
import json
import os
import resource
import select
import signal
import time
import traceback
from collections.abc import Callable
from typing import Any

WATCH_INTERVAL = 0.2  # seconds between two calls of a watch


@dataclasses.dataclass
class StepResult:
    """What a step did: ``status`` is ok, error (an exception), hang or crash."""

    step: str
    status: str
    data: dict[str, Any] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def describe(self) -> str:
        d = self.data
        if self.status == "error":
            where = f" at {d['where']}" if d.get("where") else ""
            return f"{d['type']}(errno={d.get('errno')}): {d['message']}{where}"
        if self.status in ("hang", "crash"):
            return str(d.get("why", self.status))
        return "ok"


def _address_limit() -> int:
    """The child's address-space limit: what it has now plus 2 GiB (a runaway
    allocation fails with MemoryError rather than taking the machine down)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024 + (2 << 30)
    return resource.RLIM_INFINITY


def run_in_child(
    step: str,
    fn: Callable[[], dict[str, Any]],
    timeout: float,
    watch: Callable[[], str | None] | None = None,
) -> StepResult:
    """Run ``fn`` in a forked child; its dict comes back as JSON through a pipe.

    ``watch``, if given, is called in the parent while the child runs; a string
    it returns stops the child (killed) and is the reason of the "hang".
    """
    limit = _address_limit()
    start = time.monotonic()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        status = 0
        try:
            os.close(r)
            faulthandler.disable()  # a crash is reported by the parent, not dumped here
            with contextlib.suppress(ValueError, OSError):
                resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
            try:
                result: dict[str, Any] = {"status": "ok", **fn()}
            except BaseException as exc:
                result = {"status": "error", **describe_exception(exc)}
            payload = json.dumps(result, default=repr).encode()
            view = memoryview(payload)
            while view:
                n = os.write(w, view)
                view = view[n:]
        except BaseException:
            status = 3
        finally:
            os._exit(status)
    os.close(w)
    chunks: list[bytes] = []
    deadline = start + timeout
    hung = False
    stopped: str | None = None
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                hung = True
                break
            ready, _, _ = select.select([r], [], [], min(left, WATCH_INTERVAL))
            if not ready:
                stopped = watch() if watch is not None else None
                if stopped is not None:
                    hung = True
                    break
                continue
            chunk = os.read(r, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(r)
        if hung:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _, wstatus = os.waitpid(pid, 0)
    seconds = time.monotonic() - start
    if hung:
        why = stopped or f"no result after {timeout:g} s"
        return StepResult(step, "hang", {"why": why}, seconds)
    if os.WIFSIGNALED(wstatus):
        sig = signal.Signals(os.WTERMSIG(wstatus)).name
        return StepResult(step, "crash", {"why": f"killed by {sig}"}, seconds)
    code = os.WEXITSTATUS(wstatus)
    if code or not chunks:
        return StepResult(step, "crash", {"why": f"exit status {code}, no result"}, seconds)
    data = json.loads(b"".join(chunks))
    return StepResult(step, data.pop("status"), data, seconds)


def describe_exception(exc: BaseException) -> dict[str, Any]:
    """An exception as JSON-able facts: type, errno, message, where it was raised."""
    frames = traceback.extract_tb(exc.__traceback__)
    daxfs_frames = [f for f in frames if "/daxfs/" in f.filename] or frames
    where = ""
    if daxfs_frames:
        f = daxfs_frames[-1]
        where = f"{f.filename.rsplit('/daxfs/', 1)[-1]}:{f.lineno} in {f.name}"
    return {
        "type": type(exc).__name__,
        "oserror": isinstance(exc, OSError),
        "errno": exc.errno if isinstance(exc, OSError) else None,
        "message": str(exc)[:300],
        "where": where,
    }


def disk_usage(top: str, limit: int = 100_000) -> int:
    """Bytes of disk the files under ``top`` take (allocated blocks, not sizes: a
    sparse file takes what it holds); at most ``limit`` entries are looked at."""
    total = 0
    seen = 0
    stack = [top]
    while stack and seen < limit:
        try:
            with os.scandir(stack.pop()) as it:
                for entry in it:
                    seen += 1
                    with contextlib.suppress(OSError):
                        st = entry.stat(follow_symlinks=False)
                        total += st.st_blocks * 512
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
        except OSError:
            continue
    return total
