"""scandir and walk over a daxfs filesystem, as os.scandir and os.walk."""

from __future__ import annotations

import os
import stat as st
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Self

from daxfs.errors import NotADirectory
from daxfs.fs.layout import DT_DIR, DT_LNK, DT_REG
from daxfs.fs.namei import Path, fspath
from daxfs.lifecycle import Closeable

if TYPE_CHECKING:
    from daxfs.fs.filesystem import FileSystem

BATCH = 1024


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
        with fs._lock:
            for pos, name, ino, dtype in fs.dirs.entries(fs.store, self._inode, self._after):
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

    def close(self) -> None:
        self._done = True
        self._batch = []


def scandir(fs: FileSystem, path: Path) -> ScandirIterator:
    return ScandirIterator(fs, path)


def walk(
    fs: FileSystem,
    top: Path,
    topdown: bool,
    onerror: Callable[[OSError], None] | None,
    followlinks: bool,
) -> Iterator[tuple[Any, list[Any], list[Any]]]:
    """os.walk over ``fs``."""
    stack: list[Any] = [os.fspath(top)]
    while stack:
        top_path = stack.pop()
        if isinstance(top_path, tuple):  # bottom-up: yield after children
            yield top_path
            continue
        dirs: list[Any] = []
        files: list[Any] = []
        try:
            with scandir(fs, top_path) as it:
                entries = list(it)
        except OSError as exc:
            if onerror is not None:
                onerror(exc)
            continue
        walk_into = []
        for entry in entries:
            try:
                is_dir = entry.is_dir()
            except OSError:  # a link loop, ...: not a directory, as os.walk says
                is_dir = False
            (dirs if is_dir else files).append(entry.name)
            if is_dir and (followlinks or not entry.is_symlink()):
                walk_into.append(entry.path)
        if topdown:
            yield top_path, dirs, files
            join = os.path.join
            stack.extend(
                join(top_path, d)
                for d in reversed(dirs)
                if followlinks or not fs.islink(join(top_path, d))
            )
        else:
            stack.append((top_path, dirs, files))
            stack.extend(reversed(walk_into))
