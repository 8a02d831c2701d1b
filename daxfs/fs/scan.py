"""scandir and walk over a daxfs filesystem, as os.scandir and os.walk.

Names and trees read from media are untrusted (a crafted image, or a bug of
ours), so these two hold on their own, whatever the directory layer checks:

1. Every name scandir yields is one path component: non-empty, neither "."
   nor "..", without "/" or NUL, at most 255 bytes (``check_entry_name``);
   a listing that holds another is EUCLEAN, naming the directory.
2. walk enters each directory at most once by a path of plain entries (by
   inode number).  A directory reached so again -- a cycle, or a directory
   with two names, both damage in daxfs, which has no hard links to
   directories -- is reported to ``onerror`` as EUCLEAN and not entered.
   With ``followlinks``, a directory reached through a symbolic link may be
   walked again under that name, as os.walk does, unless it is one of the
   directories above it on its path (a loop): that is reported as ELOOP and
   not entered.  So every walk ends.
3. walk keeps its own stack, so depth costs no recursion; a path grows by
   one component per level and is bounded by the longest path (4095 bytes).
"""

from __future__ import annotations

import os
import stat as st
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, NamedTuple, Self

from daxfs.errors import Corrupted, NotADirectory, TooManyLinks, naming
from daxfs.fs.layout import DT_DIR, DT_LNK, DT_REG, MAX_NAME
from daxfs.fs.namei import Path, fspath
from daxfs.lifecycle import Closeable

if TYPE_CHECKING:
    from daxfs.fs.filesystem import FileSystem

BATCH = 1024


def check_entry_name(name: str | bytes, where: str) -> None:
    """Refuse a name, read from a directory ``where``, that is not one path component.

    Raises:
        Corrupted (EUCLEAN): empty, "." or "..", holds "/" or NUL, or over
            255 bytes; the message names the directory (and ends with it).
    """
    raw = os.fsencode(name)
    if raw in (b"", b".", b"..") or b"/" in raw or b"\0" in raw or len(raw) > MAX_NAME:
        shown = os.fsdecode(raw[:64]) + ("..." if len(raw) > 64 else "")
        raise Corrupted(f"bad name {shown!r} in directory {where}", where)


def enter_once(visited: set[int], ino: int, shown: str) -> None:
    """Record that a walk enters directory ``ino`` (reached as ``shown``) by plain entries.

    daxfs has no hard links to directories, so a directory met so a second time
    in one walk is damage: a cycle, or a directory with two names.  Every walk
    over an untrusted image (``walk`` here, the CLI's tree and rm -r) checks
    each directory with this before it enters it, and so ends.

    Raises:
        Corrupted (EUCLEAN): ``ino`` was entered already; naming ``shown``.
    """
    if ino in visited:
        raise Corrupted(
            f"directory cycle, or a directory with two names (inode {ino}): {shown}", shown
        )
    visited.add(ino)


class DirEntry:
    """One entry from scandir, like os.DirEntry."""

    __slots__ = ("_fs", "_lstat", "_stat", "_type", "inode_number", "name", "path")

    def __init__(
        self, fs: FileSystem, name: str | bytes, path: str | bytes, ino: int, dtype: int
    ) -> None:
        self._fs = fs
        self.name = name
        self.path = path
        self.inode_number = ino
        self._type = dtype
        self._stat: os.stat_result | None = None
        self._lstat: os.stat_result | None = None

    def __repr__(self) -> str:
        return f"<DirEntry {self.name!r}>"

    def __fspath__(self) -> Any:
        return self.path

    def inode(self) -> int:
        return self.inode_number

    def is_dir(self, *, follow_symlinks: bool = True) -> bool:
        if self._type == DT_LNK and follow_symlinks:
            return self._follow(st.S_ISDIR)
        return self._type == DT_DIR

    def is_file(self, *, follow_symlinks: bool = True) -> bool:
        if self._type == DT_LNK and follow_symlinks:
            return self._follow(st.S_ISREG)
        return self._type == DT_REG

    def is_symlink(self) -> bool:
        return self._type == DT_LNK

    def is_junction(self) -> bool:
        return False

    def _follow(self, test: Callable[[int], bool]) -> bool:
        try:
            return test(self.stat().st_mode)
        except FileNotFoundError:
            return False

    def stat(self, *, follow_symlinks: bool = True) -> os.stat_result:
        if follow_symlinks and self._type == DT_LNK:
            if self._stat is None:
                self._stat = self._fs.stat(self.path)
            return self._stat
        if self._lstat is None:
            self._lstat = self._fs.lstat(self.path)
        return self._lstat


class ScandirIterator(Closeable):
    """Iterator over a directory, fetching entries in batches under the fs lock."""

    def __init__(self, fs: FileSystem, path: Path) -> None:
        self._fs = fs
        raw = fspath(path)
        self._bytes = isinstance(os.fspath(path), bytes)
        with fs._lock:
            self._inode, shown = fs._existing(path)
            if not self._inode.is_dir:
                raise NotADirectory(f"not a directory: {shown}", shown)
        self._shown = shown
        self._prefix = raw if raw.endswith(b"/") else raw + b"/"
        self._after: tuple[int, int] | None = None
        self._batch: list[DirEntry] = []
        self._done = False

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> DirEntry:
        if not self._batch:
            if self._done:
                raise StopIteration
            self._fetch()
            if not self._batch:
                raise StopIteration
        return self._batch.pop()

    def _fetch(self) -> None:
        fs = self._fs
        out: list[DirEntry] = []
        with naming(self._shown), fs._lock:
            for pos, name, ino, dtype in fs.dirs.entries(fs.store, self._inode, self._after):
                check_entry_name(name, self._shown)
                full = self._prefix + name
                if self._bytes:
                    out.append(DirEntry(fs, name, full, ino, dtype))
                else:
                    out.append(DirEntry(fs, os.fsdecode(name), os.fsdecode(full), ino, dtype))
                self._after = pos
                if len(out) >= BATCH:
                    break
            else:
                self._done = True
        out.reverse()
        self._batch = out

    @property
    def dir_ino(self) -> int:
        """The inode number of the directory being listed."""
        return self._inode.ino

    def close(self) -> None:
        self._done = True
        self._batch = []


def remove_tree(fs: FileSystem, top: str) -> None:
    """Remove a directory tree, children before parents, without recursion.

    Symbolic links are removed, never followed (``daxfs rm -r``, fsspec's ``rm``).

    Raises:
        Corrupted: a directory met twice (a cycle, or a directory with two names).
        What unlink, rmdir and scandir raise, naming the path.
    """
    visited = {fs.lstat(top).st_ino}
    stack = [(top, False)]
    while stack:
        path, emptied = stack.pop()
        if emptied:
            fs.rmdir(path)
            continue
        stack.append((path, True))
        entries = list(fs.scandir(path))
        dirs = [e for e in entries if e.is_dir(follow_symlinks=False)]
        others = [e for e in entries if not e.is_dir(follow_symlinks=False)]
        for entry in dirs:  # all checked before anything here is removed
            enter_once(visited, entry.inode_number, entry.path)
        for entry in others:
            fs.unlink(entry.path)
        stack.extend((entry.path, False) for entry in dirs)


def scandir(fs: FileSystem, path: Path) -> ScandirIterator:
    return ScandirIterator(fs, path)


def walk(
    fs: FileSystem,
    top: Path,
    topdown: bool,
    onerror: Callable[[OSError], None] | None,
    followlinks: bool,
) -> Iterator[tuple[Any, list[Any], list[Any]]]:
    """os.walk over ``fs``; every walk ends (see the module docstring)."""
    visited: set[int] = set()  # directories entered by paths without links
    # ("scan", _Way) or ("yield", path, dirs, files): bottom-up output
    stack: list[tuple[Any, ...]] = [("scan", _Way(os.fspath(top), False, ()))]
    while stack:
        item = stack.pop()
        if item[0] == "yield":
            yield item[1], item[2], item[3]
            continue
        way: _Way = item[1]
        try:
            ino, entries = _enter(fs, way, visited)
        except OSError as exc:
            if onerror is not None:
                onerror(exc)
            continue
        dirs: list[Any] = []
        files: list[Any] = []
        links: dict[Any, bool] = {}
        for entry in entries:
            try:
                is_dir = entry.is_dir()
            except OSError:  # a link loop, ...: not a directory, as os.walk says
                is_dir = False
            (dirs if is_dir else files).append(entry.name)
            links[entry.name] = entry.is_symlink()
        if topdown:
            yield way.path, dirs, files
            children = [(d, links.get(d)) for d in dirs]  # as the caller left ``dirs``
        else:
            stack.append(("yield", way.path, dirs, files))
            children = [(d, links[d]) for d in dirs]
        above = (*way.above, ino)
        for name, is_link in reversed(children):
            child = os.path.join(way.path, name)
            if is_link is None:  # a name the caller added: ask
                try:
                    is_link = fs.islink(child)
                except OSError:
                    is_link = False
            if followlinks or not is_link:
                stack.append(("scan", _Way(child, way.through_link or is_link, above)))


class _Way(NamedTuple):
    """How walk reached a directory: its path, whether through a symbolic link,
    and the inode numbers of the directories above it on that path."""

    path: Any
    through_link: bool
    above: tuple[int, ...]


def _enter(fs: FileSystem, way: _Way, visited: set[int]) -> tuple[int, list[DirEntry]]:
    """(inode number, entries) of the directory ``way`` reaches, unless walked already.

    Raises:
        Corrupted: reached again by plain entries (a cycle, or a second name).
        TooManyLinks: reached through a symbolic link, and above itself (a loop).
        and what scandir raises.
    """
    shown = os.fsdecode(way.path)
    with scandir(fs, way.path) as it:
        ino = it.dir_ino
        if way.through_link:
            if ino in way.above:
                raise TooManyLinks(f"symbolic link loop, not followed: {shown}", shown)
        else:
            enter_once(visited, ino, shown)
        return ino, list(it)
