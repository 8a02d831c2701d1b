"""The file objects DaxFileSystem.open returns: io's C buffered classes over a daxfs File.

A daxfs ``File`` (``buffering=0``) is a raw file whose ``readinto`` copies
straight from device memory into the caller's buffer and whose ``write`` is
one durable transaction.  fsspec wants a binary file object with a few
attributes more (``fs``, ``path``, ``size``, ``autocommit``, and ``commit``/
``discard`` for ``fs.transaction``), so each class here is
``io.BufferedReader``/``BufferedWriter``/``BufferedRandom`` (C code: a read
of at least the buffer's size goes from the raw file into the caller's
buffer, no intermediate copy) with those attributes, and pyarrow's
``read_buffer`` hook: one copy from device memory into pyarrow's memory
pool, or, where zero copy is on (``DaxFileSystem(zero_copy=...)``: by
default on read-only mounts) and the read is large, no copy at all.

Zero-copy buffers
-----------------
``pinned_buffer`` pins the file range (``File.pin``, daxfs.mm: the blocks
hold this file's data until unpinned) and, when the range is one extent of
written blocks, returns ``pyarrow.foreign_buffer`` over the device's own
memory there (the mapping the device keeps of the whole image: no new
mapping, no page faults), with a small owner object as its base: pyarrow
keeps the owner alive as long as the buffer, its slices, and the arrays and
tables built on them.  When the owner dies, its finalizer queues the pin
for the unpin worker thread, which releases it (daxfs.fsspec._mounts,
invariant 6).  A range
of several extents, or with holes, is copied instead.  While pinned, the
buffer's bytes cannot change: a write, truncate or punch-hole over the
range waits for the pin to go (``layout_timeout``, then EBUSY, nothing
changed: docs/ARCHITECTURE.md "Pins and break_layouts").  That is why it
is on by default only on read-only mounts, where nothing writes.

State diagram (autocommit=False is fsspec's ``with fs.transaction:``)::

    open(..., autocommit=True)  --> OPEN --close()--> CLOSED
    open("wb", autocommit=False) --> OPEN (writing a temporary name beside the path)
        --close()--> CLOSED --commit()--> the temporary renamed over the path
                            --discard()--> the temporary unlinked

Invariants
----------
1. ``close`` flushes the buffer (each flush is durable on return) before the
   raw file is closed; a file whose flush fails is closed all the same and
   the error raised.
2. A committed transaction file replaces its path in one rename (atomic and
   durable); until commit the path is unchanged, and a discard, or a crash,
   leaves it unchanged (a crash may leave the temporary name behind: it
   starts with ``.`` and ends with ``.daxfs-tmp``).
3. In a forked child an inherited file is inert: ``close`` (also from the
   garbage collector) neither flushes nor writes to the parent's image.
4. A zero-copy buffer's memory is pinned device memory for as long as any
   pyarrow object uses it: its bytes do not change, the image cannot be
   unmounted meanwhile (Busy), and the pin is released only after the
   buffer died.
"""

from __future__ import annotations

import contextlib
import io
import os
import posixpath
import uuid
import weakref
from typing import TYPE_CHECKING, Any

from daxfs.errors import InvalidArgument, NotSupported, WouldBlock, naming
from daxfs.fs.file import File
from daxfs.fsspec import _mounts
from daxfs.lifecycle import cleanup_after

if TYPE_CHECKING:
    from daxfs.fs.filesystem import FileSystem
    from daxfs.fsspec._mounts import Mount

#: suffix of the temporary name a transaction file writes to
TMP_SUFFIX = ".daxfs-tmp"
#: buffer sizes when fsspec's block_size is not given: reads are served from
#: device memory (a larger buffer only copies more than asked), writes are one
#: transaction per flush (a larger buffer means fewer commits)
READ_BUFFER = 64 << 10
WRITE_BUFFER = 1 << 20
#: a ``read_buffer`` of at least this many bytes pins its range (zero copy, where it
#: is on); a smaller one is copied, which costs less than the pin and its release
ZERO_COPY_MIN = 1 << 20


class _FsspecFile:
    """The attributes and methods fsspec expects of a file, over ``raw``."""

    fs: Any  #: the DaxFileSystem that opened the file
    path: str  #: the path inside the image
    autocommit: bool
    _temp: str | None  #: the temporary name a transaction writes (None: autocommit)
    _forked: bool

    def _setup(self, fs: Any, path: str, temp: str | None) -> None:
        self.fs = fs
        self.path = path
        self._temp = temp
        self.autocommit = temp is None
        self._forked = False

    @property
    def size(self) -> int:
        """The file's size now (written bytes still in the buffer not counted)."""
        return self.daxfs_file.stat().st_size

    @property
    def daxfs_file(self) -> File:
        """The raw daxfs File: ``mmap()`` (DAX), ``pin()``, ``pread``/``preadinto``."""
        raw = self.raw  # type: ignore[attr-defined]  # the io class's, beside this mixin
        assert isinstance(raw, File)
        return raw

    def read_buffer(self, nbytes: int) -> Any:
        """pyarrow's hook (its PythonFile calls it instead of ``read``): up to ``nbytes``
        at the position (all to the end if negative) in a pyarrow buffer; the position
        moves past them.

        With zero copy on (``fs.zero_copy_reads``) and at least ZERO_COPY_MIN bytes
        in one extent, the buffer is device memory itself (``pinned_buffer``:
        read-only, pinned as long as pyarrow uses it).  Otherwise they are copied
        once from device memory by ``preadinto`` into a buffer of pyarrow's memory
        pool: a bytes object of the size would cost more than the copy (large ones
        come as fresh pages from the kernel at every read, while the pool reuses
        its memory).

        Raises:
            ImportError: no pyarrow (only pyarrow calls this).
            ClosedFile (EBADF): the file is closed.
        """
        import pyarrow as pa

        if self.writable():  # type: ignore[attr-defined]
            self.flush()  # type: ignore[attr-defined]
        pos: int = self.tell()  # type: ignore[attr-defined]
        left = max(0, self.size - pos)
        n = left if nbytes < 0 else min(nbytes, left)
        mapped = None
        if n >= ZERO_COPY_MIN and self.fs.zero_copy_reads:
            # InvalidArgument: truncated since the size was read; the copy reads what is left
            with contextlib.suppress(InvalidArgument):
                mapped = pinned_buffer(self.fs.mount, self.daxfs_file, pos, n)
        if mapped is not None:
            self.seek(pos + n)  # type: ignore[attr-defined]
            return mapped
        buf = pa.allocate_buffer(n)
        got = self.daxfs_file.preadinto(memoryview(buf), pos) if n else 0
        self.seek(pos + got)  # type: ignore[attr-defined]
        return buf if got == n else buf.slice(0, got)

    def commit(self) -> None:
        """Move the written file into place (fsspec transactions): one atomic rename.

        Raises:
            ValueError: the file was opened with autocommit (as fsspec's files).
            and what FileSystem.rename raises, naming the paths.
        """
        if self._temp is None:
            raise ValueError(f"{self.path}: commit of a file opened with autocommit")
        self.close()  # type: ignore[attr-defined]
        temp, self._temp = self._temp, None
        self.fs.filesystem.rename(temp, self.path)

    def discard(self) -> None:
        """Drop what was written (fsspec transactions): the path is unchanged.

        Raises:
            ValueError: the file was opened with autocommit.
        """
        if self._temp is None:
            raise ValueError(f"{self.path}: discard of a file opened with autocommit")
        self.close()  # type: ignore[attr-defined]
        temp, self._temp = self._temp, None
        self.fs.filesystem.unlink(temp)

    def _forget(self) -> None:
        """Make an inherited file inert (a forked child: invariant 3)."""
        self._forked = True


class DaxReader(_FsspecFile, io.BufferedReader):
    """A daxfs file open for reading ("rb")."""

    def close(self) -> None:
        if not self._forked:
            super().close()


class DaxWriter(_FsspecFile, io.BufferedWriter):
    """A daxfs file open for writing ("wb", "ab", "xb")."""

    def close(self) -> None:
        if not self._forked:
            super().close()


class DaxRandom(_FsspecFile, io.BufferedRandom):
    """A daxfs file open for reading and writing ("rb+", "wb+", "ab+", "xb+")."""

    def close(self) -> None:
        if not self._forked:
            super().close()


DaxFile = DaxReader | DaxWriter | DaxRandom


def open_file(
    fs: Any, daxfs: FileSystem, path: str, mode: str, block_size: int | None, autocommit: bool
) -> DaxFile:
    """Open ``path`` of the mounted ``daxfs`` for fsspec ``fs``, in binary ``mode``.

    ``autocommit=False`` with a "w" mode writes a temporary name in the same
    directory, renamed over ``path`` by ``commit``.

    Raises:
        InvalidArgument (EINVAL): a text mode, or a bad ``block_size``.
        and what FileSystem.open raises (FileNotFoundError, FileExistsError
        for "x", IsADirectoryError, ReadOnly, ...), naming ``path``.
    """
    if "b" not in mode or "t" in mode:
        raise InvalidArgument(f"daxfs fsspec files are binary: mode {mode!r} for {path}", path)
    reading = "r" in mode or "+" in mode
    writing = mode.strip("b") != "r"
    if block_size is None:
        size = WRITE_BUFFER if writing else READ_BUFFER
    elif isinstance(block_size, bool) or not isinstance(block_size, int) or block_size <= 0:
        raise InvalidArgument(f"block_size must be a positive int: {block_size!r}", path)
    else:
        size = block_size
    temp = None
    target = path
    if not autocommit and "w" in mode:
        head, tail = posixpath.split(path)
        temp = posixpath.join(head, f".{tail}.{uuid.uuid4().hex[:12]}{TMP_SUFFIX}")
        target = temp
    raw = daxfs.open(target, mode, buffering=0)
    assert isinstance(raw, File)
    try:
        wrapped: DaxFile
        if reading and writing:
            wrapped = DaxRandom(raw, size)
        elif writing:
            wrapped = DaxWriter(raw, size)
        else:
            wrapped = DaxReader(raw, size)
        wrapped._setup(fs, path, temp)
    except BaseException:
        raw.close()
        raise
    return wrapped


class _View:
    """The owner of one zero-copy buffer: pyarrow keeps it alive with the buffer."""

    __slots__ = ("__weakref__", "path")

    def __init__(self, path: str) -> None:
        self.path = path


def pinned_buffer(mount: Mount, raw: File, pos: int, n: int) -> Any:
    """A read-only pyarrow buffer over ``raw``'s bytes ``[pos, pos+n)`` in device
    memory, no copy (n > 0, the range inside the file), pinned until the buffer,
    its slices and what pyarrow built on them died (module docstring, "Zero-copy
    buffers").  None where it cannot be: the range is not one extent of written
    blocks, a truncate is breaking it (EAGAIN), or the device cannot pin.

    Raises:
        ImportError: no pyarrow.
        InvalidArgument: the range is past the end of file (truncated meanwhile).
    """
    import pyarrow as pa

    _mounts.start_unpinning()
    try:
        sg = raw.pin(pos, n)
    except (NotSupported, WouldBlock):
        return None
    try:
        segments = sg.segments
        if len(segments) != 1 or segments[0].dev is None:
            sg.unpin()
            return None
        with next(sg.views()) as view:  # released at once: the device refuses to close
            address = pa.py_buffer(view).address  # while a view of it is alive
    except BaseException as exc:
        cleanup_after(exc, sg.close)
        raise
    owner = _View(raw.path)
    weakref.finalize(owner, _mounts.unpin_later, sg, os.getpid())
    mount.views.add(owner)
    return pa.foreign_buffer(address, n, base=owner)


def read_range(daxfs: FileSystem, path: str, start: int | None, end: int | None) -> bytes:
    """Bytes ``[start, end)`` of a file, as a Python slice (negative: from the end).

    One copy: from device memory into the bytes returned (File.pread's C path).

    Raises:
        FileNotFoundError, IsADirectoryError, ..., naming ``path``.
        TypeError: ``start`` or ``end`` not an int or None.
    """
    with daxfs.open(path, "rb", buffering=0) as raw:
        assert isinstance(raw, File)
        size = raw.stat().st_size
        first, last, _ = slice(start, end).indices(size)
        if last <= first:
            return b""
        with naming(path):
            return raw.pread(last - first, first)
