"""The process's table of images mounted for fsspec: one mount per image, shared.

Why a table
-----------
fsspec caches filesystem instances by their arguments *and by thread*
(``fsspec.spec._Cached`` puts ``threading.get_ident()`` in the key), and makes
new instances after unpickling (dask, pyarrow's dataset layer).  A read-write
daxfs mount excludes every other mount of its image (EBUSY), so if each
instance mounted on its own, the second thread to open a ``daxfs://`` URL
would fail.  Instead every ``DaxFileSystem`` in a process names its image and
asks this table for the mount: the first ask mounts, the others share it
(``daxfs.FileSystem`` is thread-safe).

Lifetime::

    acquire(image) --> MOUNTED --release(image)--> (gone) --acquire--> MOUNTED ...
                          |
                          +--- interpreter exit (atexit: release_all) --> (gone)
                          +--- fork, in the child (forget_in_child) --> (gone, not unmounted)

Invariants
----------
1. At most one mount per image (by ``os.path.realpath``) in the table; a
   mounted entry's ``fs.mounted`` is True.
2. ``acquire`` with options other than the mount's raises Busy (EBUSY): one
   image is not mounted twice, read-write and read-only, by one process.
3. ``release`` unmounts only when no fsspec file of the mount is open
   (after a bounded wait for closes on other threads; Busy otherwise,
   nothing changed); the entry leaves the table only once
   the unmount returned, or the FileSystem reports itself unmounted.
4. At interpreter exit every open fsspec file is closed (its buffer flushed:
   durable) before its mount is unmounted; a failure there is one line on
   stderr, never a traceback, and the next mount recovers (the image was
   never left inconsistent: every operation is atomic and durable).
5. A forked child never uses or unmounts its parent's mounts: it forgets
   them (the parent's unmount is the parent's); the child's first acquire
   mounts for itself (EBUSY while the parent holds it read-write).
6. A zero-copy buffer (daxfs.fsspec._files.pinned_buffer) keeps its pin
   while it is alive; when it dies, its finalizer (which may run in any
   thread, inside any lock, even the garbage collector's run inside daxfs)
   only puts the pin on a SimpleQueue (reentrant-safe), and the unpin
   worker thread releases it, holding no lock but those the unpin takes, as
   any caller of the API; a finalizer in a forked child drops its inherited
   pin (the parent's).  ``settle`` waits until every pin queued before it is
   released; ``release`` settles before it unmounts, and refuses (Busy) while one is alive,
   force or not: its memory is the device's mapping.  At exit a mount held
   by them stays mounted, and referenced (``_KEPT``) so that the device's
   mapping outlives every buffer until the process ends: silently if
   read-only (nothing to write), in one line on stderr if read-write (the
   next mount recovers).
"""

from __future__ import annotations

import atexit
import dataclasses
import gc
import os
import queue
import sys
import threading
import time
import weakref
from typing import Any, Protocol

from daxfs.errors import Busy
from daxfs.fs.filesystem import FileSystem
from daxfs.fs.mount import mount
from daxfs.lifecycle import cleanup_after


class OpenFile(Protocol):
    """What the table needs of an open fsspec file (daxfs.fsspec._files)."""

    path: str

    @property
    def closed(self) -> bool: ...

    def close(self) -> None: ...

    def _forget(self) -> None: ...


@dataclasses.dataclass(frozen=True)
class Options:
    """How an image is mounted (daxfs.mount's keywords)."""

    readonly: bool = False
    persist: str = "auto"
    dax: str = "inode"
    layout_timeout: float = 10.0


@dataclasses.dataclass(eq=False)
class Mount:
    """One mounted image and the fsspec files open on it."""

    image: str
    options: Options
    fs: FileSystem
    files: weakref.WeakSet[Any] = dataclasses.field(default_factory=weakref.WeakSet)
    #: False once forgotten (in a forked child): instances holding it must acquire again
    live: bool = True
    #: the owners of the zero-copy buffers alive (invariant 6)
    views: weakref.WeakSet[Any] = dataclasses.field(default_factory=weakref.WeakSet)

    def open_files(self) -> list[OpenFile]:
        return [f for f in list(self.files) if not f.closed]

    def live_views(self) -> list[str]:
        """The paths of the zero-copy buffers alive, after a collection (cycles)."""
        if self.views:
            gc.collect()
        return sorted(view.path for view in list(self.views))


_TABLE: dict[str, Mount] = {}
#: mounts left mounted at exit because zero-copy buffers still use them (invariant 6)
_KEPT: list[Mount] = []
_LOCK = threading.Lock()


def image_key(image: str | os.PathLike[str]) -> str:
    """The table's key for an image path: absolute, symbolic links resolved."""
    return os.path.realpath(os.fsdecode(os.fspath(image)))


def acquire(image: str, options: Options) -> Mount:
    """The mount of ``image`` (a key from ``image_key``), mounting it if needed.

    Raises:
        Busy (EBUSY): mounted by this process with other options, or by
            another process (read-write excludes every other mount).
        and whatever daxfs.mount raises (FileNotFoundError, Corrupted, ...),
        each naming the image.
    """
    with _LOCK:
        found = _TABLE.get(image)
        if found is not None and found.live and found.fs.mounted:
            if found.options != options:
                raise Busy(
                    f"{image} is already mounted for fsspec with {_shown(found.options)}; "
                    f"cannot mount it again with {_shown(options)} "
                    "(unmount it first: DaxFileSystem.unmount)",
                    image,
                )
            return found
        fs = mount(
            image,
            readonly=options.readonly,
            persist=options.persist,
            dax=options.dax,
            layout_timeout=options.layout_timeout,
        )
        entry = Mount(image, options, fs)
        _TABLE[image] = entry
        _register_at_exit()
        return entry


def release(image: str, timeout: float = 1.0, *, force: bool = False) -> None:
    """Unmount ``image`` if this table mounted it (nothing if not).

    Files still open are waited for, up to ``timeout`` seconds: pyarrow closes
    the files it reads from its own I/O threads, just after the read returned
    (and now and then keeps one until its threads run again).  With ``force``
    the fsspec files still open then are closed (a writer's buffer flushed:
    durable) before the unmount, as daxfs.FileSystem's ``with`` exit does.

    Raises:
        Busy (EBUSY): fsspec files (without ``force``; or daxfs files, mappings,
            pins taken through ``DaxFileSystem.filesystem``) are still open on
            it; nothing changed.
        an OSError of a flush (``force``): that file is closed all the same,
            the image stays mounted.
        IOFailure (EIO): the device failed writing the clean state; the image
            is released all the same (the next mount recovers).
    """
    deadline = time.monotonic() + timeout
    with _LOCK:
        entry = _TABLE.get(image)
        if entry is None:
            return
        busy = entry.open_files()
        while busy and time.monotonic() < deadline:
            time.sleep(0.001)  # holding _LOCK: no new mount or acquire meanwhile
            busy = entry.open_files()
        if busy and force:
            for file in busy:
                file.close()
            busy = []
        if busy:
            names = ", ".join(sorted(f.path for f in busy)[:5])
            raise Busy(f"cannot unmount {image}: {len(busy)} open file(s): {names}", image)
        views = entry.live_views()
        if views:
            raise Busy(
                f"cannot unmount {image}: {len(views)} zero-copy buffer(s) of "
                f"{', '.join(sorted(set(views))[:5])} still pin its memory (pyarrow buffers, "
                "or the tables and arrays made from them): drop them first",
                image,
            )
        settle(max(0.0, deadline - time.monotonic()) + 1.0)
        try:
            entry.fs.unmount()
        finally:
            if not entry.fs.mounted:
                del _TABLE[image]


def mounted() -> list[str]:
    """The images this process has mounted for fsspec."""
    with _LOCK:
        return sorted(_TABLE)


def release_all() -> None:
    """Close every open fsspec file, then unmount every image (atexit).

    Never raises: a failure is one line on stderr per image.
    """
    with _LOCK:
        entries = list(_TABLE.values())
        _TABLE.clear()
    for entry in entries:
        for file in entry.open_files():
            try:
                file.close()  # flushes: what was written is durable
            except Exception as exc:
                _warn(f"could not close {file.path} on {entry.image} at exit: {exc}")
        views = entry.live_views()
        if views:  # invariant 6: the device's mapping must outlive the buffers
            _KEPT.append(entry)
        if views and entry.options.readonly:
            continue
        if views:
            _warn(
                f"{len(views)} zero-copy buffer(s) of {entry.image} still alive at exit: "
                "left mounted; the next mount recovers"
            )
            continue
        try:
            settle(1.0)
            _close_and_unmount(entry.fs)
        except Exception as exc:
            _warn(f"could not unmount {entry.image} at exit: {exc}; the next mount recovers")


def _close_and_unmount(fs: FileSystem) -> None:
    """Close the daxfs files still open on ``fs`` (raw ones, opened past fsspec), unmount.

    Raises:
        what FileSystem.unmount raises.
    """
    if not fs.mounted:
        return
    try:
        for file in fs.open_files():
            file.close()
    except BaseException as exc:
        cleanup_after(exc, fs.unmount)
        raise
    fs.unmount()


def _warn(message: str) -> None:
    print(f"daxfs.fsspec: {message}", file=sys.stderr)


def forget_in_child() -> None:
    """After fork, in the child: drop the parent's mounts without unmounting them."""
    global _LOCK, _UNPIN, _WORKER_LOCK, _worker
    _LOCK = threading.Lock()  # the parent may have held it while forking
    _UNPIN, _WORKER_LOCK, _worker = queue.SimpleQueue(), threading.Lock(), None
    for entry in _TABLE.values():
        entry.live = False
        for file in list(entry.files):
            file._forget()
    _TABLE.clear()


# -- the unpin worker (invariant 6) --------------------------------------------------------

_UNPIN: queue.SimpleQueue[Any] = queue.SimpleQueue()
_worker: threading.Thread | None = None
_WORKER_LOCK = threading.Lock()


def unpin_later(sg: Any, pid: int) -> None:
    """A zero-copy buffer's finalizer: queue its pin ``sg`` (made in process ``pid``)
    for the worker; in another process (a forked child) drop it: it is the parent's.

    Never raises, never blocks (SimpleQueue.put is safe inside finalizers).
    """
    if pid == os.getpid():
        _UNPIN.put(sg)


def start_unpinning() -> None:
    """Start the unpin worker thread, once per process (before the first pin it takes)."""
    global _worker
    with _WORKER_LOCK:
        if _worker is None or not _worker.is_alive():
            _worker = threading.Thread(target=_unpin_loop, name="daxfs-fsspec-unpin", daemon=True)
            _worker.start()


def _unpin_loop() -> None:
    while True:
        item = _UNPIN.get()
        if isinstance(item, threading.Event):  # settle's marker: all before it are done
            item.set()
            continue
        try:
            item.close()
        except Exception as exc:  # the pin is gone all the same (SGList.unpin)
            _warn(f"releasing the pin of a zero-copy buffer ({item!r}) failed: {exc}")


def settle(timeout: float) -> bool:
    """Wait up to ``timeout`` seconds until every pin queued so far is released;
    False if the worker did not get there in time (or never ran: nothing queued)."""
    with _WORKER_LOCK:
        if _worker is None or not _worker.is_alive():
            return _UNPIN.empty()
    done = threading.Event()
    _UNPIN.put(done)
    return done.wait(timeout)


def _shown(options: Options) -> str:
    return ", ".join(f"{f.name}={getattr(options, f.name)!r}" for f in dataclasses.fields(options))


_registered = False


def _register_at_exit() -> None:
    """Register ``release_all`` once, after the first mount (caller holds _LOCK).

    After, not at import: a device closes its descriptor in a
    ``weakref.finalize``, whose own exit hook weakref registers when the first
    one is made (in the first mount).  atexit runs hooks last registered
    first, so registering after that mount unmounts before descriptors close.
    """
    global _registered
    if not _registered:
        atexit.register(release_all)
        _registered = True


os.register_at_fork(after_in_child=forget_in_child)
