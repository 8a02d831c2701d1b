"""``daxfs cp [-r] SRC... DST``: copy files into, out of, between and within images.

Either side may be ``IMAGE:/path`` or a host path; the copy code sees only a
``Side`` (the host, or one mounted image), so every direction is the same
code.  The rules are cp(1)'s:

* DST an existing directory: each SRC is copied into it, under its own name;
  otherwise there must be one SRC, copied to the name DST.
* A directory is copied only with ``-r``; inside it, symbolic links are
  copied as links; a SRC given on the command line is followed.
* A file never replaces a directory, nor a directory a file; a directory is
  never copied into itself; a file is never copied onto itself.
* New files and directories get the source's permission bits less the umask.

Data streams in CHUNK-sized pieces through one buffer, with unbuffered
(``buffering=0``) files on both sides, so a daxfs write is durable when it
returns and memory stays flat whatever the size.  A file of PROGRESS_MIN
bytes or more gets a progress bar (on a terminal).  The first error ends the
command; a file being written when it happened is left partly written, as
cp leaves it.
"""

from __future__ import annotations

import abc
import argparse
import errno
import io
import os
import posixpath
import stat as st
from typing import Any, cast

from daxfs.cli.common import (
    CHUNK,
    Mounts,
    Operand,
    ProgressBar,
    add_parser,
    add_persist_option,
    add_progress_option,
    naming,
    parse_operand,
    progress_wanted,
)
from daxfs.errors import InvalidArgument, IOFailure, IsADirectory, NotADirectory, NotSupported
from daxfs.fs.filesystem import FileSystem

PROGRESS_MIN = 4 << 20


def register(sub: Any) -> None:
    p = add_parser(
        sub,
        "cp",
        "copy files into, out of and between images",
        "Copy SRC to DST, or SRC... into the directory DIR. Either side may be IMAGE:/path "
        "or a host path.",
    )
    p.add_argument("sources", nargs="+", metavar="SRC")
    p.add_argument("dest", metavar="DST")
    p.add_argument(
        "-r", "-R", dest="recursive", action="store_true", help="copy directories recursively"
    )
    add_persist_option(p)
    add_progress_option(p)
    p.set_defaults(run=run)


# -- the two kinds of side --------------------------------------------------------------


class Side(abc.ABC):
    """Where paths of one operand live: the host or a mounted image."""

    key: str  # equal keys: the same namespace (for "same file" and "into itself")

    @abc.abstractmethod
    def show(self, path: str) -> str:
        """``path`` as the user would write it (``IMAGE:/path`` for an image)."""

    @abc.abstractmethod
    def stat(self, path: str, follow: bool = True) -> os.stat_result | None:
        """The attributes, or None if nothing is there."""

    @abc.abstractmethod
    def open_read(self, path: str) -> io.RawIOBase:
        """An unbuffered file to read."""

    @abc.abstractmethod
    def open_write(self, path: str) -> io.RawIOBase:
        """An unbuffered file to write, created or truncated."""

    @abc.abstractmethod
    def mkdir(self, path: str) -> None:
        """A new directory, private (0700) until ``chmod`` when it is filled."""

    @abc.abstractmethod
    def chmod(self, path: str, mode: int) -> None:
        """Set the permission bits of a new file: ``mode`` less the umask."""

    @abc.abstractmethod
    def listdir(self, path: str) -> list[str]: ...

    @abc.abstractmethod
    def readlink(self, path: str) -> str: ...

    @abc.abstractmethod
    def symlink(self, target: str, path: str) -> None: ...

    @abc.abstractmethod
    def unlink(self, path: str) -> None: ...

    @abc.abstractmethod
    def real(self, path: str) -> str:
        """A canonical spelling of ``path`` (for "into itself")."""


class HostSide(Side):
    """The host's files; an image mounted by this command is not one of them."""

    key = "host"

    def __init__(self, mounts: Mounts) -> None:
        self.mounts = mounts
        self.umask = os.umask(0o022)
        os.umask(self.umask)

    def _not_an_image(self, path: str) -> None:
        if self.mounts.is_mounted(path):
            raise InvalidArgument(
                f"cannot copy into or out of an image it has mounted: {path}", path
            )

    def show(self, path: str) -> str:
        return path

    def stat(self, path: str, follow: bool = True) -> os.stat_result | None:
        try:
            return os.stat(path, follow_symlinks=follow)
        except FileNotFoundError:
            return None

    def open_read(self, path: str) -> io.RawIOBase:
        self._not_an_image(path)
        return cast(io.RawIOBase, open(path, "rb", buffering=0))

    def open_write(self, path: str) -> io.RawIOBase:
        self._not_an_image(path)
        return cast(io.RawIOBase, open(path, "wb", buffering=0))

    def mkdir(self, path: str) -> None:
        os.mkdir(path, 0o700)

    def chmod(self, path: str, mode: int) -> None:
        os.chmod(path, mode & 0o7777 & ~self.umask)

    def listdir(self, path: str) -> list[str]:
        return os.listdir(path)

    def readlink(self, path: str) -> str:
        return os.readlink(path)

    def symlink(self, target: str, path: str) -> None:
        os.symlink(target, path)

    def unlink(self, path: str) -> None:
        self._not_an_image(path)
        os.unlink(path)

    def real(self, path: str) -> str:
        return os.path.realpath(path)


class ImageSide(Side):
    def __init__(self, image: str, fs: FileSystem, key: str) -> None:
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

    def open_read(self, path: str) -> io.RawIOBase:
        with naming(self.image):
            return cast(io.RawIOBase, self.fs.open(path, "rb", buffering=0))

    def open_write(self, path: str) -> io.RawIOBase:
        with naming(self.image):
            return cast(io.RawIOBase, self.fs.open(path, "wb", buffering=0))

    def mkdir(self, path: str) -> None:
        with naming(self.image):
            self.fs.mkdir(path, 0o700)

    def chmod(self, path: str, mode: int) -> None:
        with naming(self.image):
            self.fs.chmod(path, mode & 0o7777 & ~self.fs.umask)

    def listdir(self, path: str) -> list[str]:
        with naming(self.image):
            return [os.fsdecode(name) for name in self.fs.listdir(path)]

    def readlink(self, path: str) -> str:
        with naming(self.image):
            return os.fsdecode(self.fs.readlink(path))

    def symlink(self, target: str, path: str) -> None:
        with naming(self.image):
            self.fs.symlink(target, path)

    def unlink(self, path: str) -> None:
        with naming(self.image):
            self.fs.unlink(path)

    def real(self, path: str) -> str:
        return posixpath.normpath(path)


# -- cp ---------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    sources = [parse_operand(text) for text in args.sources]
    dest = parse_operand(args.dest)
    with (
        Mounts(args.persist) as mounts,
        ProgressBar(progress_wanted(args), unit="bytes") as bar,
    ):
        copier = Copier(mounts, bar, recursive=args.recursive)
        dst = copier.side(dest)
        dst_stat = dst.stat(dest.path)
        into = dst_stat is not None and st.S_ISDIR(dst_stat.st_mode)
        if len(sources) > 1 and not into:
            raise NotADirectory(f"target is not a directory: {dest.text}", dest.text)
        for src_op in sources:
            src = copier.side(src_op)
            info = src.stat(src_op.path)
            if info is None:
                raise FileNotFoundError(errno.ENOENT, "no such file or directory", src_op.text)
            copier.copy(src, src_op.path, info, dst, _target(src_op, dest, into))
    return 0


def _target(src: Operand, dest: Operand, into: bool) -> str:
    """``dest``, or ``dest/<name of src>`` when copying into a directory."""
    if not into:
        return dest.path
    name = os.path.basename(os.path.normpath(src.path))
    if name in ("", "/", ".", ".."):
        return dest.path  # the root (or "x/.."): its contents go into dest
    return os.path.join(dest.path, name)


class Copier:
    """Copies files and trees between sides, through one buffer."""

    def __init__(self, mounts: Mounts, bar: ProgressBar, *, recursive: bool) -> None:
        self.mounts = mounts
        self.bar = bar
        self.recursive = recursive
        self.host = HostSide(mounts)
        self.buf = bytearray(CHUNK)

    def side(self, op: Operand) -> Side:
        if op.image is None:
            return self.host
        return ImageSide(op.image, self.mounts.get(op.image), self.mounts.key(op.image))

    def copy(self, src: Side, sp: str, info: os.stat_result, dst: Side, dp: str) -> None:
        """Copy what ``sp`` is (``info``) to ``dp``.

        Raises:
            IsADirectory: a directory without -r, or a file onto a directory.
            NotADirectory: a directory onto a file.
            InvalidArgument: onto itself, or a directory into itself.
            NotSupported: a device, FIFO or socket.
            and what the sides raise.
        """
        existing = dst.stat(dp)
        if existing is not None and src.key == dst.key and _same(info, existing):
            raise InvalidArgument(
                f"{src.show(sp)} and {dst.show(dp)} are the same file", dst.show(dp)
            )
        if st.S_ISDIR(info.st_mode):
            self.copy_tree(src, sp, info, dst, dp, existing)
        elif st.S_ISLNK(info.st_mode):
            if existing is not None and st.S_ISDIR(existing.st_mode):
                raise IsADirectory(
                    f"cannot overwrite directory {dst.show(dp)} with a symbolic link", dst.show(dp)
                )
            if dst.stat(dp, follow=False) is not None:
                dst.unlink(dp)
            dst.symlink(src.readlink(sp), dp)
        elif st.S_ISREG(info.st_mode):
            if existing is not None and st.S_ISDIR(existing.st_mode):
                raise IsADirectory(
                    f"cannot overwrite directory {dst.show(dp)} with non-directory {src.show(sp)}",
                    dst.show(dp),
                )
            self.copy_file(src, sp, info, dst, dp, new=existing is None)
        else:
            raise NotSupported(f"cannot copy special file {src.show(sp)}", src.show(sp))

    def copy_tree(
        self,
        src: Side,
        sp: str,
        info: os.stat_result,
        dst: Side,
        dp: str,
        existing: os.stat_result | None,
    ) -> None:
        if not self.recursive:
            raise IsADirectory(f"-r not specified; omitting directory {src.show(sp)}", src.show(sp))
        if existing is not None and not st.S_ISDIR(existing.st_mode):
            raise NotADirectory(
                f"cannot overwrite non-directory {dst.show(dp)} with directory {src.show(sp)}",
                dst.show(dp),
            )
        if src.key == dst.key:
            top, inner = src.real(sp), dst.real(dp)
            if inner == top or inner.startswith(top.rstrip("/") + "/"):
                raise InvalidArgument(
                    f"cannot copy a directory, {src.show(sp)}, into itself, {dst.show(dp)}",
                    src.show(sp),
                )
        if existing is None:
            dst.mkdir(dp)
        for name in sorted(src.listdir(sp)):
            child = os.path.join(sp, name)
            child_info = src.stat(child, follow=False)
            if child_info is not None:  # gone since listed: skip it
                self.copy(src, child, child_info, dst, os.path.join(dp, name))
        if existing is None:
            dst.chmod(dp, info.st_mode)

    def copy_file(
        self, src: Side, sp: str, info: os.stat_result, dst: Side, dp: str, *, new: bool
    ) -> None:
        """Stream the bytes of ``sp`` into ``dp`` (created or truncated)."""
        size = info.st_size
        task = self.bar.add(os.path.basename(sp), size) if size >= PROGRESS_MIN else -1
        with src.open_read(sp) as reader, dst.open_write(dp) as writer:
            try:
                self._stream(reader, writer, task)
            except OSError as exc:  # which file failed is said here, once
                text = f"copying {src.show(sp)} to {dst.show(dp)}: {exc.strerror or exc}"
                raise OSError(exc.errno, text) from None
            finally:
                self.bar.remove(task)
        if new:
            dst.chmod(dp, info.st_mode)

    def _stream(self, reader: io.RawIOBase, writer: io.RawIOBase, task: int) -> None:
        view = memoryview(self.buf)
        while n := reader.readinto(self.buf):
            done = 0
            while done < n:
                wrote = writer.write(view[done:n])
                if not wrote:
                    raise IOFailure("short write")
                done += wrote
            self.bar.advance(task, n)


def _same(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
