"""DaxOperations: the FUSE callbacks, each one call of the daxfs Python API.

Every callback is one ``FileSystem`` or ``File`` method, so every operation
through the mount is what the API makes it: atomic and durable when it
returns.  An ``OSError`` the API raises reaches the kernel as its errno,
unchanged (``_boundary``: the one place errors are translated); anything else
is a bug, logged with its traceback and returned as EIO.

File handles.  ``open``/``create`` open a raw ``File`` (``buffering=0``) and
return a number; ``read``/``write``/``truncate``/``fallocate``/``fsync``/
``lseek``/``getattr`` with a handle use that File, which holds its inode, so
they keep working after the name is unlinked (the mount runs with
``hard_remove`` and ``nullpath_ok``: libfuse then passes no path for an
unlinked file instead of renaming it to ``.fuse_hidden*``); so do ``chmod``,
``chown`` and ``utimens`` when libfuse gives a handle and no path (File.chmod,
chown, utime).  The kernel sends a handle only with ftruncate, though:
fstat, fchmod, fchown and futimens reach libfuse by inode alone, and libfuse's
high-level API has no path for an inode whose last name it removed, so it
answers them ESTALE itself, before any callback.  The wire tap
(daxfs.fuse._wire) replaces those ESTALE replies: the OPEN and CREATE replies
tell it which libfuse node each handle is open on (``opened``), and it asks
``node_stat`` / ``node_setattr`` / ``node_*xattr``, which use that handle's
File (fgetxattr and the others come by node alone too).

Invariants:
1. A handle number maps to exactly one open File from ``open``/``create``
   until ``release``; ``close_all`` (at unmount) closes what the kernel never
   released.
2. Files are created with the mode the kernel passes (the caller's umask is
   already applied) and owned by the calling user and group: creation runs
   inside ``FileSystem.as_caller`` with umask 0, so owner and mode are set in
   the creating transaction, never by a second one.
3. Reads and writes are positional (``preadinto``/``pwrite`` at the kernel's
   offset); a File's own position is never used, so threads sharing a handle
   cannot disturb each other.  O_APPEND opens an append-mode File: its
   writes go to the end of file whatever offset the kernel sends, as
   Linux's pwrite does with O_APPEND.
"""

from __future__ import annotations

import errno
import functools
import itertools
import logging
import os
import posixpath
import stat as st
from collections.abc import Callable, Iterator
from typing import Any, TypeVar, cast

import mfusepy

from daxfs.errors import InvalidArgument, NotFound, NotPermitted
from daxfs.fs.file import File
from daxfs.fs.filesystem import FileSystem
from daxfs.fuse._wire import SetAttr
from daxfs.lifecycle import cleanup_after

log = logging.getLogger("daxfs.fuse")

RENAME_NOREPLACE = 1  # fail with EEXIST if the new name exists
RENAME_EXCHANGE = 2  # swap the two names atomically
_O_ACCMODE = os.O_RDONLY | os.O_WRONLY | os.O_RDWR

F = TypeVar("F", bound=Callable[..., Any])


def _boundary(method: F) -> F:
    """Translate errors once: an OSError keeps its errno; anything else is EIO, logged."""

    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except OSError as exc:
            if isinstance(exc.errno, int) and exc.errno > 0:
                raise
            log.error("daxfs.fuse: %s raised %r without an errno: EIO", method.__name__, exc)
            raise mfusepy.FuseOSError(errno.EIO) from exc
        except Exception as exc:  # a bug: the kernel gets EIO, the log gets the traceback
            log.exception("daxfs.fuse: %s failed: EIO", method.__name__)
            raise mfusepy.FuseOSError(errno.EIO) from exc

    return cast(F, call)


class DaxOperations(mfusepy.Operations):  # type: ignore[misc]
    """The FUSE operations of one mounted daxfs ``FileSystem``."""

    use_ns = True  # times in nanoseconds, as daxfs stores them

    def __init__(self, fs: FileSystem, *, ready: Callable[[], None] | None = None) -> None:
        self.fs = fs
        self._ready = ready
        self._files: dict[int, File] = {}
        self._dirs: dict[int, str] = {}  # open directories: handle -> path
        self._nodes: dict[int, dict[int, None]] = {}  # libfuse node id -> its open handles
        self._node_of: dict[int, int] = {}  # handle -> node id
        self._numbers = itertools.count(1)

    # -- lifecycle ----------------------------------------------------------------------

    def init_with_config(self, conn: Any, config: Any) -> None:
        if config is not None:
            config.use_ino = 1  # st_ino is daxfs's inode number (hard links, tar, git)
            config.readdir_ino = 1
            config.hard_remove = 1  # unlink unlinks: no .fuse_hidden renames
            config.nullpath_ok = 1  # and the handle carries on without a path
        if self._ready is not None:
            self._ready()

    def destroy(self, path: str) -> None:
        self.close_all()

    def close_all(self) -> None:
        """Close every File the kernel did not release (invariant 1)."""
        while self._files:
            _, file = self._files.popitem()
            try:
                file.close()
            except OSError as exc:
                log.error("daxfs.fuse: closing %s at unmount: %s", file.path, exc)

    # -- helpers ------------------------------------------------------------------------

    def _file(self, fh: int) -> File:
        try:
            return self._files[fh]
        except KeyError:
            raise OSError(errno.EBADF, f"no open file with handle {fh}") from None

    def _add(self, file: File) -> int:
        number = next(self._numbers)
        self._files[number] = file
        return number

    @staticmethod
    def _caller() -> tuple[int, int]:
        uid, gid, _ = mfusepy.fuse_get_context()
        return uid, gid

    # -- attributes ---------------------------------------------------------------------

    @_boundary
    def stat(self, path: str | None, fh: int | None = None) -> os.stat_result:
        """stat of a handle (when given) or of a name (links not followed)."""
        if fh is not None:
            return self._file(fh).stat()
        if path is None:
            raise NotFound("no path and no handle")
        return self.fs.lstat(path)

    def getattr(self, path: str | None, fh: int | None = None) -> dict[str, Any]:
        result = self.stat(path, fh)
        return {
            "st_ino": result.st_ino,
            "st_mode": result.st_mode,
            "st_nlink": result.st_nlink,
            "st_uid": result.st_uid,
            "st_gid": result.st_gid,
            "st_size": result.st_size,
            "st_blocks": result.st_blocks,
            "st_blksize": result.st_blksize,
            "st_atime": result.st_atime_ns,
            "st_mtime": result.st_mtime_ns,
            "st_ctime": result.st_ctime_ns,
        }

    def _handle(self, path: str | None, fh: int | None, what: str) -> File | None:
        """The open File to change when libfuse gives a handle and no path (with
        ``nullpath_ok``: the file's name is gone); None: change ``path``.

        Raises:
            NotFound (ENOENT): neither a path nor a handle.
            OSError (EBADF): a handle that is not open.
        """
        if path is not None:
            return None
        if fh is None:
            raise NotFound(f"{what}: no path and no handle")
        return self._file(fh)

    @_boundary
    def chmod(self, path: str | None, mode: int, fh: int | None = None) -> int:
        file = self._handle(path, fh, "chmod")
        if file is not None:
            file.chmod(st.S_IMODE(mode))
        else:
            self.fs.chmod(cast(str, path), st.S_IMODE(mode), follow_symlinks=False)
        return 0

    @_boundary
    def chown(self, path: str | None, uid: int, gid: int, fh: int | None = None) -> int:
        file = self._handle(path, fh, "chown")
        if file is not None:
            file.chown(uid, gid)
        else:
            self.fs.chown(cast(str, path), uid, gid, follow_symlinks=False)
        return 0

    @_boundary
    def utimens(
        self,
        path: str | None,
        times: tuple[int | None, int | None] | None = None,
        fh: int | None = None,
    ) -> int:
        """Set times in ns; None for one of them is UTIME_OMIT (keeps it); no times: now."""
        file = self._handle(path, fh, "utimens")
        with self.fs.as_caller(*self._caller()):  # the kept time and the change: one step
            ns: tuple[int, int] | None = None
            if times is not None:
                atime, mtime = times
                if atime is None or mtime is None:
                    now = file.stat() if file is not None else self.fs.lstat(cast(str, path))
                    atime = now.st_atime_ns if atime is None else atime
                    mtime = now.st_mtime_ns if mtime is None else mtime
                ns = (atime, mtime)
            if file is not None:
                file.utime(ns=ns)
            else:
                self.fs.utime(cast(str, path), ns=ns, follow_symlinks=False)
        return 0

    @_boundary
    def truncate(self, path: str | None, length: int, fh: int | None = None) -> int:
        if fh is not None:
            self._file(fh).truncate(length)
        elif path is None:
            raise NotFound("truncate of an unlinked file")
        else:
            self.fs.truncate(path, length)
        return 0

    @_boundary
    def statfs(self, path: str) -> dict[str, int]:
        v = self.fs.statvfs(path)
        return {
            "f_bsize": v.f_bsize,
            "f_frsize": v.f_frsize,
            "f_blocks": v.f_blocks,
            "f_bfree": v.f_bfree,
            "f_bavail": v.f_bavail,
            "f_files": v.f_files,
            "f_ffree": v.f_ffree,
            "f_favail": v.f_favail,
            "f_flag": v.f_flag,
            "f_namemax": v.f_namemax,
        }

    # -- names --------------------------------------------------------------------------

    @_boundary
    def readlink(self, path: str) -> str:
        return cast(str, self.fs.readlink(path))

    @_boundary
    def opendir(self, path: str) -> int:
        """A handle for the directory: its path (libfuse gives readdir none)."""
        if not self.fs.isdir(path):
            self.fs.listdir(path)  # raises what listing it would (ENOENT, ENOTDIR)
        number = next(self._numbers)
        self._dirs[number] = path
        return number

    @_boundary
    def readdir(self, path: str | None, fh: int) -> list[tuple[str, dict[str, int], int]]:
        """The entries with their inode numbers and types (with use_ino, an entry
        without an inode number would be skipped by readdir(3))."""
        where = self._dirs.get(fh, path or "/")
        here = self.fs.lstat(where)
        parent = self.fs.lstat(posixpath.dirname(where.rstrip("/")) or "/")
        out = [
            (".", {"st_ino": here.st_ino, "st_mode": st.S_IFDIR}, 0),
            ("..", {"st_ino": parent.st_ino, "st_mode": st.S_IFDIR}, 0),
        ]
        for e in self.fs.scandir(where):  # fetched in batches, closed when exhausted
            if e.is_symlink():
                kind = st.S_IFLNK
            else:
                kind = st.S_IFDIR if e.is_dir(follow_symlinks=False) else st.S_IFREG
            out.append((e.name, {"st_ino": e.inode(), "st_mode": kind}, 0))
        return out

    @_boundary
    def releasedir(self, path: str | None, fh: int) -> int:
        self._dirs.pop(fh, None)
        return 0

    @_boundary
    def mkdir(self, path: str, mode: int) -> int:
        with self.fs.as_caller(*self._caller()):
            self.fs.mkdir(path, mode)
        return 0

    @_boundary
    def mknod(self, path: str, mode: int, dev: int) -> int:
        if not st.S_ISREG(mode):  # daxfs stores regular files, directories and links only
            raise NotPermitted(f"daxfs cannot store device, FIFO or socket nodes: {path}", path)
        file = self._create(path, mode, os.O_WRONLY)
        file.close()
        return 0

    @_boundary
    def symlink(self, path: str, target: str) -> int:
        with self.fs.as_caller(*self._caller()):
            self.fs.symlink(target, path)
        return 0

    @_boundary
    def link(self, path: str, existing: str) -> int:
        self.fs.link(existing, path, follow_symlinks=False)
        return 0

    @_boundary
    def unlink(self, path: str) -> int:
        self.fs.unlink(path)
        return 0

    @_boundary
    def rmdir(self, path: str) -> int:
        self.fs.rmdir(path)
        return 0

    @_boundary
    def rename(self, old: str, new: str, flags: int = 0) -> int:
        """rename(2) and renameat2's RENAME_NOREPLACE and RENAME_EXCHANGE, each one
        transaction of FileSystem.rename; any other flag (RENAME_WHITEOUT) is EINVAL."""
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE):
            raise InvalidArgument(f"rename flags {flags:#x} not supported: {old}", old)
        self.fs.rename(
            old,
            new,
            noreplace=bool(flags & RENAME_NOREPLACE),
            exchange=bool(flags & RENAME_EXCHANGE),
        )
        return 0

    # -- extended attributes (the API's, with its errnos: ENODATA, ERANGE, EEXIST, ...) --

    @_boundary
    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        return self.fs.getxattr(path, name, follow_symlinks=False)

    @_boundary
    def setxattr(self, path: str, name: str, value: bytes, options: int, position: int = 0) -> int:
        self.fs.setxattr(path, name, value, options, follow_symlinks=False)
        return 0

    def _visible(self, names: list[str]) -> list[str]:
        """The names listxattr shows the calling user: ``trusted.`` ones to uid 0 only
        (CAP_SYS_ADMIN, as daxfs.fs.xattr takes it).  The kernel checks get and set of
        ``trusted.`` and ``security.`` itself, but passes a FUSE list on as it is;
        daxfs's own check asks this process, which serves every caller."""
        if self._caller()[0] == 0:
            return names
        return [n for n in names if not n.startswith("trusted.")]

    @_boundary
    def listxattr(self, path: str) -> list[str]:
        return self._visible(self.fs.listxattr(path, follow_symlinks=False))

    @_boundary
    def removexattr(self, path: str, name: str) -> int:
        self.fs.removexattr(path, name, follow_symlinks=False)
        return 0

    # -- files --------------------------------------------------------------------------

    @staticmethod
    def _mode(flags: int) -> str:
        access = flags & _O_ACCMODE
        if access == os.O_RDONLY:
            return "rb"
        return "a+b" if flags & os.O_APPEND else "r+b"

    def _create(self, path: str, mode: int, flags: int) -> File:
        """Create ``path`` (exclusive) as the caller with ``mode``, in one transaction."""
        with self.fs.as_caller(*self._caller(), file_mode=st.S_IMODE(mode)):
            self.fs.open(path, "xb", buffering=0).close()
        # reopened as the flags ask (readable, append): opening changes nothing on media
        return cast(File, self.fs.open(path, self._mode(flags), buffering=0))

    @_boundary
    def create(self, path: str, mode: int, flags: int = os.O_WRONLY) -> int:
        return self._add(self._create(path, mode, flags))

    @_boundary
    def open(self, path: str, flags: int) -> int:
        file = cast(File, self.fs.open(path, self._mode(flags), buffering=0))
        if flags & os.O_TRUNC:  # the kernel passes O_TRUNC on (atomic_o_trunc)
            try:
                file.truncate(0)
            except BaseException as exc:
                cleanup_after(exc, file.close)  # a failed close never hides the truncate's
                raise
        return self._add(file)

    @_boundary
    def release(self, path: str | None, fh: int) -> int:
        node = self._node_of.pop(fh, None)
        if node is not None:
            handles = self._nodes.get(node, {})
            handles.pop(fh, None)
            if not handles:
                self._nodes.pop(node, None)
        file = self._files.pop(fh, None)
        if file is not None:
            file.close()
        return 0

    @_boundary
    def read(self, path: str | None, size: int, offset: int, fh: int) -> bytes:
        return self._file(fh).pread(size, offset)

    @_boundary
    def readinto(self, buffer: memoryview, offset: int, fh: int) -> int:
        """Fill ``buffer`` (the kernel's reply buffer) from ``offset``: one copy."""
        return self._file(fh).preadinto(buffer, offset)

    @_boundary
    def write(self, path: str | None, data: Any, offset: int, fh: int) -> int:
        return self._file(fh).pwrite(data, offset)

    @_boundary
    def fallocate(self, path: str | None, mode: int, offset: int, size: int, fh: int) -> int:
        self._file(fh).fallocate(offset, size, mode)
        return 0

    @_boundary
    def fsync(self, path: str | None, datasync: int, fh: int) -> int:
        self._file(fh).fsync()
        return 0

    @_boundary
    def flush(self, path: str | None, fh: int) -> int:
        return 0  # every write is durable when it returns

    @_boundary
    def lseek(self, path: str | None, offset: int, whence: int, fh: int) -> int:
        """SEEK_DATA and SEEK_HOLE (the kernel answers the other whences itself)."""
        return self._file(fh).seek(offset, whence)

    # -- by node id (the wire tap, daxfs.fuse._wire: where libfuse has no path) --------

    def opened(self, node: int, fh: int) -> None:
        """Handle ``fh`` was opened on libfuse's node ``node`` (OPEN or CREATE reply)."""
        if fh in self._files:
            self._node_of[fh] = node
            self._nodes.setdefault(node, {})[fh] = None

    def _node_handle(self, node: int) -> int:
        """A handle open on ``node``; OSError(ESTALE) if none is (libfuse's answer stands)."""
        for fh in self._nodes.get(node, ()):
            return fh
        raise OSError(errno.ESTALE, f"node {node}: no path and no open file")

    @_boundary
    def node_stat(self, node: int) -> os.stat_result:
        """fstat of a file whose name is gone: the attributes of its open File."""
        return self._file(self._node_handle(node)).stat()

    @_boundary
    def node_setattr(self, node: int, change: SetAttr) -> os.stat_result:
        """fchmod, fchown, futimens (and a truncate) of a file whose name is gone,
        applied to its open File in libfuse's order; returns its attributes."""
        fh = self._node_handle(node)
        if change.mode is not None:
            self.chmod(None, change.mode, fh)
        if change.owner is not None:
            self.chown(None, *change.owner, fh)
        if change.size is not None:
            self.truncate(None, change.size, fh)
        if change.set_times:
            self.utimens(None, change.times, fh)
        return self._file(fh).stat()

    @_boundary
    def node_getxattr(self, node: int, name: str) -> bytes:
        return self._file(self._node_handle(node)).getxattr(name)

    @_boundary
    def node_listxattr(self, node: int) -> list[str]:
        return self._visible(self._file(self._node_handle(node)).listxattr())

    @_boundary
    def node_setxattr(self, node: int, name: str, value: bytes, flags: int) -> None:
        self._file(self._node_handle(node)).setxattr(name, value, flags)

    @_boundary
    def node_removexattr(self, node: int, name: str) -> None:
        self._file(self._node_handle(node)).removexattr(name)

    def files(self) -> Iterator[File]:
        """The Files open through the kernel now (for tests and statistics)."""
        return iter(list(self._files.values()))
