"""Errors that daxfs raises, each an OSError with a fixed errno.

Every error a user can cause is an ``OSError`` whose ``errno`` says what went
wrong and whose message names the path, offset or range involved.  Where Python
has a matching builtin subclass (``FileNotFoundError`` for ENOENT, ...) the
daxfs error is also that builtin, so ``except FileNotFoundError`` works as it
does with ``os``.  ``InvalidArgument`` is both ``OSError(EINVAL)`` and
``ValueError``, so callers that treat bad arguments as ``ValueError`` (the
convention of ``io`` and ``mmap``) catch it too.

A broken internal invariant is an ``AssertionError``, never one of these.

Paths are attached in one place, ``naming(path)``: below the API, errors name
the structure they are about (an inode, a block, a range) in their message;
the API (``FileSystem``, ``File``, ``mount``) wraps the work of each operation
in ``naming(path)`` (the image's name for mount, unmount and sync), which
makes the path of that operation the error's ``filename`` (so a caller, the
CLI say, reads it from ``exc.filename``).  A plain ``OSError`` from below (a
device that failed a read, a flush or a fence) becomes ``IOFailure`` (EIO)
there, naming the path, with the device's error as its ``__cause__``.
"""

from __future__ import annotations

import contextlib
import errno
import io
from collections.abc import Iterator

from daxfs.lifecycle import drop_frame_locals


class DaxfsError(OSError):
    """Base class: an OSError with ``errno`` fixed by the subclass."""

    errno_code: int = errno.EIO

    def __init__(self, message: str, filename: str | bytes | None = None) -> None:
        if filename is None:
            super().__init__(self.errno_code, message)
        else:
            super().__init__(self.errno_code, message, filename)

    def __str__(self) -> str:
        text = f"[Errno {self.errno_code}] {self.strerror}"
        if self.filename is not None:
            text += f": {self.filename!r}"
        return text

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.strerror, self.filename))


class InvalidArgument(DaxfsError, ValueError):
    """EINVAL: an argument out of range or of the wrong kind."""

    errno_code = errno.EINVAL


class NotFound(DaxfsError, FileNotFoundError):
    """ENOENT."""

    errno_code = errno.ENOENT


class Exists(DaxfsError, FileExistsError):
    """EEXIST."""

    errno_code = errno.EEXIST


class NotADirectory(DaxfsError, NotADirectoryError):
    """ENOTDIR."""

    errno_code = errno.ENOTDIR


class IsADirectory(DaxfsError, IsADirectoryError):
    """EISDIR."""

    errno_code = errno.EISDIR


class NotEmpty(DaxfsError):
    """ENOTEMPTY."""

    errno_code = errno.ENOTEMPTY


class NameTooLong(DaxfsError):
    """ENAMETOOLONG."""

    errno_code = errno.ENAMETOOLONG


class TooManyLinks(DaxfsError):
    """ELOOP: too many levels of symbolic links."""

    errno_code = errno.ELOOP


class CrossDevice(DaxfsError):
    """EXDEV."""

    errno_code = errno.EXDEV


class FileTooLarge(DaxfsError):
    """EFBIG."""

    errno_code = errno.EFBIG


class NoSpace(DaxfsError):
    """ENOSPC."""

    errno_code = errno.ENOSPC


class Busy(DaxfsError):
    """EBUSY: the object is in use (mounted, mapped, pinned)."""

    errno_code = errno.EBUSY


class ReadOnly(DaxfsError):
    """EROFS."""

    errno_code = errno.EROFS


class BadFileDescriptor(DaxfsError):
    """EBADF: operation on a closed or wrongly opened file."""

    errno_code = errno.EBADF


class ClosedFile(BadFileDescriptor, ValueError):
    """EBADF: I/O on a closed file (also ValueError, as io raises for closed files)."""


class UnsupportedIO(BadFileDescriptor, io.UnsupportedOperation):
    """EBADF: reading a file opened write-only, or writing one opened read-only."""


class NotPermitted(DaxfsError, PermissionError):
    """EPERM: the operation is not allowed at all (hard-linking a directory)."""

    errno_code = errno.EPERM


class PermissionDenied(DaxfsError, PermissionError):
    """EACCES."""

    errno_code = errno.EACCES


class NotSupported(DaxfsError):
    """EOPNOTSUPP."""

    errno_code = errno.EOPNOTSUPP


class NoData(DaxfsError):
    """ENODATA: no such extended attribute."""

    errno_code = errno.ENODATA


class TooBig(DaxfsError):
    """E2BIG: an extended attribute's value is longer than a value can be (64 KiB)."""

    errno_code = errno.E2BIG


class BadRange(DaxfsError):
    """ERANGE: an extended attribute's name is empty or longer than 255 bytes, or a
    value or list does not fit the size the caller gave."""

    errno_code = errno.ERANGE


class WouldBlock(DaxfsError, BlockingIOError):
    """EAGAIN: the non-blocking variant of an operation would have to wait."""

    errno_code = errno.EAGAIN


class IOFailure(DaxfsError):
    """EIO: the device failed or returned something unusable."""

    errno_code = errno.EIO


class Corrupted(DaxfsError):
    """EUCLEAN: on-media structure failed its checksum or a sanity check."""

    errno_code = errno.EUCLEAN


class OutOfRange(DaxfsError, OverflowError):
    """EOVERFLOW: a value does not fit the field that stores it (also OverflowError, as os
    raises for a uid or a time it cannot represent)."""

    errno_code = errno.EOVERFLOW


@contextlib.contextmanager
def naming(path: str) -> Iterator[None]:
    """Make ``path`` the ``filename`` of an OSError raised inside (the one place paths attach).

    A daxfs error gets ``path`` whatever it named (below the API errors name
    structures, not paths), and the message ends with it unless it holds it
    already; type, errno and traceback are kept: the same exception is
    re-raised.  Any other OSError comes from below the filesystem (the device,
    or the kernel under a mapping): it is raised as ``IOFailure`` (EIO) naming
    ``path``, the original chained as its cause -- except ENOMEM, which says
    the process ran out of memory or address space, not that the device
    failed, and keeps its type and errno with ``path`` as its filename.

    Every exception leaving through here also drops the locals of the frames
    it unwound (``daxfs.lifecycle.drop_frame_locals``): they may hold views of
    device memory, and a caller that keeps the exception (or unmounts in a
    ``finally``) must still be able to close the device.
    """
    try:
        yield
    except BaseException as exc:
        drop_frame_locals(exc)
        if isinstance(exc, DaxfsError):
            exc.filename = path
            text = exc.strerror or ""
            if path not in text:
                exc.strerror = f"{text}: {path}" if text else path
        elif isinstance(exc, OSError):
            if exc.errno != errno.ENOMEM:
                why = exc.strerror or str(exc) or type(exc).__name__
                raise IOFailure(f"{why}: {path}", path) from exc
            if exc.filename is None:
                exc.filename = path
        raise


__all__ = [
    "BadFileDescriptor",
    "Busy",
    "ClosedFile",
    "Corrupted",
    "CrossDevice",
    "DaxfsError",
    "Exists",
    "FileTooLarge",
    "IOFailure",
    "InvalidArgument",
    "IsADirectory",
    "NameTooLong",
    "NoSpace",
    "NotADirectory",
    "NotEmpty",
    "NotFound",
    "NotPermitted",
    "NotSupported",
    "OutOfRange",
    "PermissionDenied",
    "ReadOnly",
    "TooManyLinks",
    "UnsupportedIO",
    "WouldBlock",
    "naming",
]
