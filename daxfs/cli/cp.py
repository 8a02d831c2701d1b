"""``daxfs cp [-r] SRC... DST``: copy files into, out of, between and within images.

Either side may be ``IMAGE:/path`` or a host path; the copy code reads from a
``Side`` (the host, or one mounted image) and writes into a ``Dir`` (see
daxfs.cli.sides), so every direction is the same code.  The rules are cp(1)'s:

* DST an existing directory: each SRC is copied into it, under its own name;
  otherwise there must be one SRC, copied to the name DST.
* A directory is copied only with ``-r``; inside it, symbolic links are
  copied as links; a SRC given on the command line is followed.
* A file never replaces a directory, nor a directory a file; a directory is
  never copied into itself; a file is never copied onto itself.
* New files and directories get the source's permission bits less the umask.

Where a copy writes.  An image is untrusted input; whatever it holds, a copy
writes only below the destination the user named:

1. Every name a source lists is checked before it is joined to a path
   (``check_entry_name``: not empty, "." or "..", no "/" or NUL): EUCLEAN.
2. Writes go through a ``Dir``, a handle on one destination directory that
   takes only plain names and never follows a symbolic link unless told to;
   on the host every call is relative to an open directory descriptor, so
   not even a link swapped in by another process is followed.
3. Only what the user named is followed: DST, and DST/<name of SRC> for a
   file, as cp(1) does.  Deeper, a link where a file or a directory is to be
   written is an error (cp(1) writes through a link in a tree it merges
   into; this cp does not).
4. Nothing this copy created is written through or overwritten: not a link
   ("will not copy ... through just-created symbolic link", as GNU cp), not
   a file ("will not overwrite just-created ..."), and no directory is
   copied into one it created ("into itself").  What a copy created is
   known by identity (side, st_dev, st_ino), never by path.
5. A file is checked once it is open and before it is truncated: never the
   source itself, never an image this command has mounted (truncating a
   mapped image kills the command with SIGBUS and loses the image).
6. A source directory is entered once per operand: one met again (a cycle,
   or a directory with two names, in a damaged image) is an error.  The walk
   keeps its own stack (no recursion); on the host it holds one open
   descriptor per level of depth.

Data streams in CHUNK-sized pieces through one buffer, with unbuffered
(``buffering=0``) files on both sides, so a daxfs write is durable when it
returns and memory stays flat whatever the size.  Only data is copied
(SEEK_DATA, SEEK_HOLE): holes stay holes, so a file that says it is huge
costs what it holds, not what it says.  A file of PROGRESS_MIN
bytes or more gets a progress bar (on a terminal).  The first error ends the
command; a file being written when it happened is left partly written, as
cp leaves it.
"""

from __future__ import annotations

import argparse
import errno
import io
import os
import posixpath
import stat as st
from collections.abc import Hashable, Iterator
from typing import Any

from daxfs.cli.common import (
    CHUNK,
    Mounts,
    Operand,
    ProgressBar,
    add_parser,
    add_persist_option,
    add_progress_option,
    identity,
    parse_operand,
    progress_wanted,
)
from daxfs.cli.sides import Dir, HostDir, HostSide, ImageSide, Side
from daxfs.errors import (
    Exists,
    InvalidArgument,
    IOFailure,
    IsADirectory,
    NotADirectory,
    NotFound,
    NotSupported,
    TooManyLinks,
)
from daxfs.fs.scan import check_entry_name

PROGRESS_MIN = 4 << 20
SEEK_DATA = getattr(os, "SEEK_DATA", 3)  # as Linux numbers them (daxfs files take them too)
SEEK_HOLE = getattr(os, "SEEK_HOLE", 4)


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


# -- the command --------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    sources = [parse_operand(text) for text in args.sources]
    dest = parse_operand(args.dest)
    with (
        Mounts.from_args(args) as mounts,
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
            copier.copy_operand(src, src_op.path, info, dst, _target(src_op, dest, into))
    return 0


def _target(src: Operand, dest: Operand, into: bool) -> str:
    """``dest``, or ``dest/<name of src>`` when copying into a directory."""
    if not into:
        return dest.path
    name = os.path.basename(os.path.normpath(src.path))
    if name in ("", "/", ".", ".."):
        return dest.path  # the root (or "x/.."): its contents go into dest
    return os.path.join(dest.path, name)


def _split(path: str) -> tuple[str, str | None]:
    """(directory, name) of a target; name None when ``path`` is a directory itself."""
    stripped = path.rstrip("/")
    if not stripped:
        return "/", None
    name = os.path.basename(stripped)
    if name in (".", ".."):
        return path, None
    return os.path.dirname(stripped) or ".", name


class _Frame:
    """A directory being copied: where it is read, where it is written, what is left."""

    __slots__ = ("dir", "info", "names", "new", "path")

    def __init__(self, path: str, info: os.stat_result, names: list[str], d: Dir, new: bool):
        self.path = path
        self.info = info
        self.names: Iterator[str] = iter(names)
        self.dir = d
        self.new = new

    def finish(self) -> None:
        """The directory is filled: give a new one its mode, and close it."""
        try:
            if self.new:
                self.dir.chmod(self.info.st_mode)
        finally:
            self.dir.close()


class Copier:
    """Copies files and trees from sides into directories, through one buffer.

    Invariant: ``made`` holds the identity (side key, st_dev, st_ino) of
    everything this copy created, for rule 4 of the module docstring.
    """

    def __init__(self, mounts: Mounts, bar: ProgressBar, *, recursive: bool) -> None:
        self.mounts = mounts
        self.bar = bar
        self.recursive = recursive
        self.host = HostSide(mounts)
        self.buf = bytearray(CHUNK)
        self.made: set[tuple[Hashable, tuple[int, int]]] = set()

    def side(self, op: Operand) -> Side:
        if op.image is None:
            return self.host
        return ImageSide(op.image, self.mounts.get(op.image), self.mounts.key(op.image))

    def _made(self, key: Hashable, info: os.stat_result) -> bool:
        return (key, identity(info)) in self.made

    def copy_operand(self, src: Side, sp: str, info: os.stat_result, dst: Side, dp: str) -> None:
        """Copy the operand ``sp`` (``info``, links followed) to the target ``dp``.

        Raises:
            IsADirectory: a directory without -r, or a file onto a directory.
            NotADirectory: a directory onto a file.
            InvalidArgument: onto itself, or a directory into itself.
            NotSupported: a device, FIFO or socket.
            Corrupted: a bad name or a directory cycle in the source.
            TooManyLinks, Exists: a link or file in the way (rules 3, 4).
            and what the sides raise.
        """
        if st.S_ISDIR(info.st_mode):
            if not self.recursive:
                raise IsADirectory(
                    f"-r not specified; omitting directory {src.show(sp)}", src.show(sp)
                )
            if src.key == dst.key:
                top, inner = src.real(sp), dst.real(dp)
                if inner == top or inner.startswith(top.rstrip("/") + "/"):
                    raise InvalidArgument(
                        f"cannot copy a directory, {src.show(sp)}, into itself, {dst.show(dp)}",
                        src.show(sp),
                    )
        parent, name = _split(dp)
        with dst.open_dir(parent) as d:
            if name is not None:
                self.copy(src, sp, info, d, name, top=True)
            elif st.S_ISDIR(info.st_mode):  # the root into an existing directory: merge
                self._copy_tree(src, _Frame(sp, info, self._listing(src, sp, info), d, False))
            else:
                raise IsADirectory(
                    f"cannot overwrite directory {dst.show(dp)} with non-directory {src.show(sp)}",
                    dst.show(dp),
                )

    def copy(
        self, src: Side, sp: str, info: os.stat_result, parent: Dir, name: str, *, top: bool
    ) -> None:
        """Copy what ``sp`` is (``info``) to ``name`` in ``parent``."""
        if st.S_ISDIR(info.st_mode):
            self._copy_tree(src, self._enter(src, sp, info, parent, name))
        elif st.S_ISLNK(info.st_mode):
            self.copy_link(src, sp, parent, name)
        elif st.S_ISREG(info.st_mode):
            self.copy_file(src, sp, info, parent, name, top=top)
        else:
            raise NotSupported(f"cannot copy special file {src.show(sp)}", src.show(sp))

    def _copy_tree(self, src: Side, first: _Frame) -> None:
        """Copy the directory of ``first`` and all below it, depth first, without recursion."""
        visited = {identity(first.info)}
        stack = [first]
        try:
            while stack:
                frame = stack[-1]
                name = next(frame.names, None)
                if name is None:
                    stack.pop().finish()
                    continue
                child = posixpath.join(frame.path, name)
                info = src.stat(child, follow=False)
                if info is None:  # gone since listed: skip it
                    continue
                if not st.S_ISDIR(info.st_mode):
                    self.copy(src, child, info, frame.dir, name, top=False)
                    continue
                if identity(info) in visited:
                    raise src.loop(child)
                visited.add(identity(info))
                stack.append(self._enter(src, child, info, frame.dir, name))
        finally:
            for frame in stack:
                frame.dir.close()

    def _listing(self, src: Side, sp: str, info: os.stat_result) -> list[str]:
        """The names in source directory ``sp``, sorted, each checked (rule 1)."""
        if self._made(src.key, info):
            raise InvalidArgument(
                f"cannot copy a directory, {src.show(sp)}, into itself", src.show(sp)
            )
        names = sorted(src.listdir(sp))
        for name in names:
            check_entry_name(name, src.show(sp))
        return names

    def _enter(self, src: Side, sp: str, info: os.stat_result, parent: Dir, name: str) -> _Frame:
        """Make (or take) directory ``name`` in ``parent`` for the directory ``sp``."""
        names = self._listing(src, sp, info)
        existing = parent.lstat(name)
        if existing is not None and not st.S_ISDIR(existing.st_mode):
            what = " (a symbolic link)" if st.S_ISLNK(existing.st_mode) else ""
            raise NotADirectory(
                f"cannot overwrite non-directory {parent.show(name)}{what} "
                f"with directory {src.show(sp)}",
                parent.show(name),
            )
        if existing is None:
            parent.mkdir(name)
        d = parent.child(name)
        if existing is None:
            try:
                self.made.add((d.key, identity(d.info())))
            except BaseException:
                d.close()
                raise
        return _Frame(sp, info, names, d, existing is None)

    def copy_link(self, src: Side, sp: str, parent: Dir, name: str) -> None:
        """Make ``name`` a symbolic link with the target of ``sp``."""
        target = src.readlink(sp)
        existing = parent.lstat(name)
        if existing is not None:
            if st.S_ISDIR(existing.st_mode):
                raise IsADirectory(
                    f"cannot overwrite directory {parent.show(name)} with a symbolic link",
                    parent.show(name),
                )
            if self._made(parent.key, existing):
                raise Exists(
                    f"will not overwrite just-created {parent.show(name)} with {src.show(sp)}",
                    parent.show(name),
                )
            parent.unlink(name)
        parent.symlink(target, name)
        made = parent.lstat(name)
        if made is not None:
            self.made.add((parent.key, identity(made)))

    def copy_file(
        self, src: Side, sp: str, info: os.stat_result, parent: Dir, name: str, *, top: bool
    ) -> None:
        """Stream the bytes of ``sp`` into ``name`` (created, or truncated once checked)."""
        existing, follow = self._file_target(src, sp, info, parent, name, top=top)
        size = info.st_size
        task = self.bar.add(os.path.basename(sp), size) if size >= PROGRESS_MIN else -1
        with src.open_read(sp, follow=top) as reader:
            writer, opened = parent.open_write(name, new=existing is None, follow=follow)
            with writer:
                if isinstance(parent, HostDir):  # rule 5, on what was opened
                    self.mounts.check_not_mounted(opened, parent.show(name), "write")
                self._not_the_same(src, sp, info, parent, name, opened)
                if existing is None:
                    self.made.add((parent.key, identity(opened)))
                elif st.S_ISREG(opened.st_mode):
                    writer.truncate(0)
                try:
                    self._stream(reader, writer, task, sparse=st.S_ISREG(opened.st_mode))
                except OSError as exc:  # which file failed is said here, once
                    text = f"copying {src.show(sp)} to {parent.show(name)}: {exc.strerror or exc}"
                    raise OSError(exc.errno, text) from None
                finally:
                    self.bar.remove(task)
                if existing is None:
                    parent.chmod_file(name, writer, info.st_mode)

    def _file_target(
        self, src: Side, sp: str, info: os.stat_result, parent: Dir, name: str, *, top: bool
    ) -> tuple[os.stat_result | None, bool]:
        """What a file copy will write over (None: nothing) and whether through a link.

        Raises:
            Exists, TooManyLinks, NotFound: a link or a file in the way (rules 3, 4).
            IsADirectory, InvalidArgument: a directory, or the source itself.
        """
        existing = parent.lstat(name)
        if existing is None:
            return None, False
        shown = parent.show(name)
        follow = False
        if self._made(parent.key, existing):
            if st.S_ISLNK(existing.st_mode):
                raise Exists(
                    f"will not copy {src.show(sp)} through just-created symbolic link {shown}",
                    shown,
                )
            raise Exists(f"will not overwrite just-created {shown} with {src.show(sp)}", shown)
        if st.S_ISLNK(existing.st_mode):
            if not top:
                raise TooManyLinks(
                    f"will not write {src.show(sp)} through symbolic link {shown} "
                    "(links below the destination are not followed)",
                    shown,
                )
            followed = parent.stat(name)
            if followed is None:
                raise NotFound(f"not writing through dangling symbolic link {shown}", shown)
            if self._made(parent.key, followed):
                raise Exists(f"will not overwrite just-created {shown} with {src.show(sp)}", shown)
            existing, follow = followed, True
        if st.S_ISDIR(existing.st_mode):
            raise IsADirectory(
                f"cannot overwrite directory {shown} with non-directory {src.show(sp)}", shown
            )
        self._not_the_same(src, sp, info, parent, name, existing)
        return existing, follow

    @staticmethod
    def _not_the_same(
        src: Side, sp: str, info: os.stat_result, parent: Dir, name: str, other: os.stat_result
    ) -> None:
        if src.key == parent.key and identity(info) == identity(other):
            shown = parent.show(name)
            raise InvalidArgument(f"{src.show(sp)} and {shown} are the same file", shown)

    def _stream(
        self, reader: io.RawIOBase, writer: io.RawIOBase, task: int, *, sparse: bool
    ) -> None:
        """Copy ``reader`` (from its start) to ``writer``.

        With ``sparse`` (the writer is a regular file) only the data is
        copied: a hole stays a hole (a seek over it, and a truncate to the
        size at the end), so the work and the space are those of the data,
        whatever size a file says it has.
        """
        if not sparse:
            self._copy_range(reader, writer, task, None)
            return
        done = 0
        for start, end in _data_ranges(reader):
            self.bar.advance(task, start - done)
            reader.seek(start)
            writer.seek(start)
            self._copy_range(reader, writer, task, end - start)
            done = end
        size = reader.seek(0, os.SEEK_END)
        self.bar.advance(task, max(0, size - done))
        writer.truncate(size)

    def _copy_range(
        self, reader: io.RawIOBase, writer: io.RawIOBase, task: int, length: int | None
    ) -> None:
        """Copy ``length`` bytes (None: to the end) from the reader's position on."""
        view = memoryview(self.buf)
        left = length
        while left is None or left > 0:
            want = CHUNK if left is None else min(CHUNK, left)
            n = reader.readinto(view[:want])
            if not n:
                return
            done = 0
            while done < n:
                wrote = writer.write(view[done:n])
                if not wrote:
                    raise IOFailure("short write")
                done += wrote
            self.bar.advance(task, n)
            if left is not None:
                left -= n


def _data_ranges(reader: io.RawIOBase) -> Iterator[tuple[int, int]]:
    """The (start, end) of each run of data in ``reader``, by SEEK_DATA and SEEK_HOLE.

    A file whose filesystem cannot say (EINVAL) is one run of data.
    """
    pos = 0
    while True:
        try:
            start = reader.seek(pos, SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no data past ``pos``
                return
            if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP) and pos == 0:
                yield 0, reader.seek(0, os.SEEK_END)
                return
            raise
        end = reader.seek(start, SEEK_HOLE)
        yield start, end
        pos = end
