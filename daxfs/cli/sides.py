"""Where cp reads and writes: a ``Side`` per operand, a ``Dir`` per destination directory.

A ``Side`` is where the paths of one operand live, the host or one mounted
image, and is read by path.  A ``Dir`` is one directory of the destination,
open, and is written by plain name: every method takes one path component
(checked again here, the last line of defence: EINVAL) and, except ``stat``
and ``open_write(follow=True)`` (which cp uses only for the name the user
gave), never follows a symbolic link.

* On the host a Dir is an open directory descriptor, and every call is
  relative to it (``dir_fd=``, ``O_NOFOLLOW``, ``O_DIRECTORY``, ``O_EXCL``
  for a new file).  A symbolic link that another process swaps in at any
  moment is refused by the kernel (ELOOP, ENOTDIR, EEXIST), never followed;
  a moved directory takes its descriptor with it.  Modes are set with
  fchmod on what was opened, never by path.
* In an image a Dir is a path: the mount belongs to this process alone, so
  what an lstat found is still there when the write comes.

A host file opened for reading is checked (by identity, on the open
descriptor) not to be an image this command has mounted.
"""

from __future__ import annotations

import abc
import errno
import io
import os
import posixpath
import stat as st
from collections.abc import Hashable
from typing import cast

from daxfs.cli.common import Mounts, naming
from daxfs.errors import Corrupted, InvalidArgument, NotADirectory, NotFound, TooManyLinks
from daxfs.fs.filesystem import FileSystem
from daxfs.lifecycle import Closeable


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _check_plain(name: str, where: str) -> None:
    """Refuse a name that is not one plain path component (the last line of defence).

    Raises:
        InvalidArgument (EINVAL): empty, "." or "..", or holding "/" or NUL.
    """
    if name in ("", ".", "..") or "/" in name or "\0" in name:
        raise InvalidArgument(f"not a plain file name: {name!r} (in {where})", where)


# -- where a copy reads: the two kinds of side ------------------------------------------


class Side(abc.ABC):
    """Where the paths of one operand live: the host or a mounted image."""

    key: Hashable  # equal keys: the same namespace (for "same file" and "into itself")

    @abc.abstractmethod
    def show(self, path: str) -> str:
        """``path`` as the user would write it (``IMAGE:/path`` for an image)."""

    @abc.abstractmethod
    def stat(self, path: str, follow: bool = True) -> os.stat_result | None:
        """The attributes, or None if nothing is there."""

    @abc.abstractmethod
    def open_read(self, path: str, follow: bool = True) -> io.RawIOBase:
        """An unbuffered file to read (``follow``: a final symbolic link too)."""

    @abc.abstractmethod
    def listdir(self, path: str) -> list[str]: ...

    @abc.abstractmethod
    def readlink(self, path: str) -> str: ...

    @abc.abstractmethod
    def real(self, path: str) -> str:
        """A canonical spelling of ``path`` (for "into itself")."""

    @abc.abstractmethod
    def open_dir(self, path: str) -> Dir:
        """The directory ``path`` (links followed: the user named it), to write into.

        Raises:
            NotADirectory, FileNotFoundError, and what opening raises.
        """

    def loop(self, path: str) -> OSError:
        """The error for a directory met a second time in one copy."""
        shown = self.show(path)
        return Corrupted(f"directory cycle, or a directory with two names: {shown}", shown)


class HostSide(Side):
    """The host's files; an image mounted by this command is not one of them."""

    key = "host"

    def __init__(self, mounts: Mounts) -> None:
        self.mounts = mounts
        self.umask = _umask()

    def show(self, path: str) -> str:
        return path

    def stat(self, path: str, follow: bool = True) -> os.stat_result | None:
        try:
            return os.stat(path, follow_symlinks=follow)
        except FileNotFoundError:
            return None

    def open_read(self, path: str, follow: bool = True) -> io.RawIOBase:
        flags = os.O_RDONLY | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
        fd = os.open(path, flags)
        try:
            self.mounts.check_not_mounted(os.fstat(fd), path, "read")
        except BaseException:
            os.close(fd)
            raise
        return cast(io.RawIOBase, io.FileIO(fd, "r"))

    def listdir(self, path: str) -> list[str]:
        return os.listdir(path)

    def readlink(self, path: str) -> str:
        return os.readlink(path)

    def real(self, path: str) -> str:
        return os.path.realpath(path)

    def open_dir(self, path: str) -> Dir:
        return HostDir.open(path, self.umask)

    def loop(self, path: str) -> OSError:
        return OSError(errno.ELOOP, f"directory loop (a directory inside itself): {path}", path)


class ImageSide(Side):
    def __init__(self, image: str, fs: FileSystem, key: Hashable) -> None:
        self.image = image
        self.fs = fs
        self.key = key

    def show(self, path: str) -> str:
        return f"{self.image}:{path}"

    def stat(self, path: str, follow: bool = True) -> os.stat_result | None:
        with naming(self.image):
            try:
                return self.fs.stat(path, follow_symlinks=follow)
            except FileNotFoundError:
                return None

    def open_read(self, path: str, follow: bool = True) -> io.RawIOBase:
        # the mount is this process's alone: what copy found by lstat is still there
        with naming(self.image):
            return cast(io.RawIOBase, self.fs.open(path, "rb", buffering=0))

    def listdir(self, path: str) -> list[str]:
        with naming(self.image):
            return [entry.name for entry in self.fs.scandir(path)]

    def readlink(self, path: str) -> str:
        with naming(self.image):
            return os.fsdecode(self.fs.readlink(path))

    def real(self, path: str) -> str:
        return posixpath.normpath(path)

    def open_dir(self, path: str) -> Dir:
        with naming(self.image):
            if not self.fs.isdir(path):
                if self.fs.exists(path):
                    raise NotADirectory(f"not a directory: {path}", path)
                raise NotFound(f"no such directory: {path}", path)
        return ImageDir(self, path)


# -- where a copy writes: one destination directory at a time ---------------------------


class Dir(Closeable):
    """One directory of the destination, open for writing.

    Every method takes a plain name (one component, checked again here) and
    never follows a symbolic link, except ``stat`` and ``open_write(follow=
    True)``, which copy uses only for the name the user gave.
    """

    key: Hashable  # the side's key

    @abc.abstractmethod
    def show(self, name: str | None = None) -> str:
        """``name`` in this directory (the directory itself if None), for messages."""

    @abc.abstractmethod
    def lstat(self, name: str) -> os.stat_result | None:
        """What ``name`` is (a link is a link), or None."""

    @abc.abstractmethod
    def stat(self, name: str) -> os.stat_result | None:
        """What ``name`` is, links followed; None if nothing (or a dangling link)."""

    @abc.abstractmethod
    def info(self) -> os.stat_result:
        """What this directory is."""

    @abc.abstractmethod
    def mkdir(self, name: str) -> None:
        """A new directory, private (0700) until ``chmod`` when it is filled."""

    @abc.abstractmethod
    def child(self, name: str) -> Dir:
        """The directory ``name``, opened; a link there is refused (ELOOP or ENOTDIR)."""

    @abc.abstractmethod
    def open_write(
        self, name: str, *, new: bool, follow: bool
    ) -> tuple[io.RawIOBase, os.stat_result]:
        """Open ``name`` to write, not truncated, with what was opened.

        ``new``: create it, failing if anything is there (EEXIST), a link
        too.  ``follow``: a final symbolic link is followed (else ELOOP).
        """

    @abc.abstractmethod
    def symlink(self, target: str, name: str) -> None: ...

    @abc.abstractmethod
    def unlink(self, name: str) -> None: ...

    @abc.abstractmethod
    def chmod(self, mode: int) -> None:
        """Set this directory's permission bits: ``mode`` less the umask."""

    @abc.abstractmethod
    def chmod_file(self, name: str, writer: io.RawIOBase, mode: int) -> None:
        """Set the bits of ``name``, open as ``writer``: ``mode`` less the umask."""


class HostDir(Dir):
    """A host directory, as an open descriptor: every call is relative to it."""

    key = "host"

    def __init__(self, fd: int, path: str, umask: int) -> None:
        self.fd = fd
        self.path = path
        self.umask = umask

    @classmethod
    def open(cls, path: str, umask: int | None = None) -> HostDir:
        """The directory ``path``, links followed (the user named it).

        Raises:
            NotADirectory, FileNotFoundError, PermissionError.
        """
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        return cls(fd, path, _umask() if umask is None else umask)

    def __repr__(self) -> str:
        return f"HostDir({self.path!r}, fd={self.fd})"

    def show(self, name: str | None = None) -> str:
        return self.path if name is None else os.path.join(self.path, name)

    def _name(self, name: str) -> str:
        _check_plain(name, self.path)
        return name

    def _named(self, exc: OSError, name: str) -> OSError:
        """``exc`` naming the whole path, not the name relative to the descriptor."""
        return OSError(exc.errno, exc.strerror, self.show(name))

    def lstat(self, name: str) -> os.stat_result | None:
        try:
            return os.stat(self._name(name), dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._named(exc, name) from None

    def stat(self, name: str) -> os.stat_result | None:
        try:
            return os.stat(self._name(name), dir_fd=self.fd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._named(exc, name) from None

    def info(self) -> os.stat_result:
        return os.fstat(self.fd)

    def mkdir(self, name: str) -> None:
        try:
            os.mkdir(self._name(name), 0o700, dir_fd=self.fd)
        except OSError as exc:
            raise self._named(exc, name) from None

    def child(self, name: str) -> Dir:
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(self._name(name), flags, dir_fd=self.fd)
        except OSError as exc:
            raise self._named(exc, name) from None
        return HostDir(fd, self.show(name), self.umask)

    def open_write(
        self, name: str, *, new: bool, follow: bool
    ) -> tuple[io.RawIOBase, os.stat_result]:
        flags = os.O_WRONLY | os.O_CLOEXEC
        flags |= os.O_CREAT | os.O_EXCL if new else 0
        flags |= 0 if follow else os.O_NOFOLLOW
        try:
            fd = os.open(self._name(name), flags, 0o600, dir_fd=self.fd)
        except OSError as exc:
            raise self._named(exc, name) from None
        try:
            opened = os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise
        return cast(io.RawIOBase, io.FileIO(fd, "w")), opened

    def symlink(self, target: str, name: str) -> None:
        try:
            os.symlink(target, self._name(name), dir_fd=self.fd)
        except OSError as exc:
            raise self._named(exc, name) from None

    def unlink(self, name: str) -> None:
        try:
            os.unlink(self._name(name), dir_fd=self.fd)
        except OSError as exc:
            raise self._named(exc, name) from None

    def chmod(self, mode: int) -> None:
        os.fchmod(self.fd, mode & 0o7777 & ~self.umask)

    def chmod_file(self, name: str, writer: io.RawIOBase, mode: int) -> None:
        os.fchmod(writer.fileno(), mode & 0o7777 & ~self.umask)

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)


class ImageDir(Dir):
    """A directory of a mounted image, by path (the mount is this process's alone)."""

    def __init__(self, side: ImageSide, path: str) -> None:
        self.side = side
        self.fs = side.fs
        self.key = side.key
        self.path = path

    def __repr__(self) -> str:
        return f"ImageDir({self.side.show(self.path)!r})"

    def _path(self, name: str) -> str:
        _check_plain(name, self.show())
        return posixpath.join(self.path, name)

    def show(self, name: str | None = None) -> str:
        return self.side.show(self.path if name is None else posixpath.join(self.path, name))

    def lstat(self, name: str) -> os.stat_result | None:
        return self.side.stat(self._path(name), follow=False)

    def stat(self, name: str) -> os.stat_result | None:
        return self.side.stat(self._path(name))

    def info(self) -> os.stat_result:
        with naming(self.side.image):
            return self.fs.stat(self.path)

    def mkdir(self, name: str) -> None:
        path = self._path(name)
        with naming(self.side.image):
            self.fs.mkdir(path, 0o700)

    def child(self, name: str) -> Dir:
        path = self._path(name)
        with naming(self.side.image):
            found = self.fs.lstat(path)
            if st.S_ISLNK(found.st_mode):
                raise TooManyLinks(f"a symbolic link, not followed: {path}", path)
            if not st.S_ISDIR(found.st_mode):
                raise NotADirectory(f"not a directory: {path}", path)
        return ImageDir(self.side, path)

    def open_write(
        self, name: str, *, new: bool, follow: bool
    ) -> tuple[io.RawIOBase, os.stat_result]:
        path = self._path(name)
        with naming(self.side.image):
            if new:
                file = self.fs.open(path, "xb", buffering=0)  # as O_EXCL: not through a link
            else:
                if not follow and st.S_ISLNK(self.fs.lstat(path).st_mode):
                    raise TooManyLinks(f"a symbolic link, not followed: {path}", path)
                file = self.fs.open(path, "r+b", buffering=0)
            writer = cast(io.RawIOBase, file)
            try:
                return writer, self.fs.stat(path)
            except BaseException:
                writer.close()
                raise

    def symlink(self, target: str, name: str) -> None:
        path = self._path(name)
        with naming(self.side.image):
            self.fs.symlink(target, path)

    def unlink(self, name: str) -> None:
        path = self._path(name)
        with naming(self.side.image):
            self.fs.unlink(path)

    def chmod(self, mode: int) -> None:
        with naming(self.side.image):
            self.fs.chmod(self.path, mode & 0o7777 & ~self.fs.umask)

    def chmod_file(self, name: str, writer: io.RawIOBase, mode: int) -> None:
        path = self._path(name)
        with naming(self.side.image):
            self.fs.chmod(path, mode & 0o7777 & ~self.fs.umask)

    def close(self) -> None:
        pass
