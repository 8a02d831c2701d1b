"""Path resolution, with the semantics of Linux's namei.

``lookup(path, follow_last)`` walks a path from the root and returns the
directory that holds the last component, its name, and the inode it names
(None if absent), following symbolic links in every component but the last,
and in the last too when ``follow_last`` is true (then a dangling final link
yields the parent and name of the link's *target*, which is where
``open(..., O_CREAT)`` creates a file, as Linux does).

Rules, as on Linux:

* paths are absolute; a relative path is taken from the root (the
  filesystem has no working directory); the empty path is ENOENT;
* empty components ("a//b") are ignored; "." is the current directory; ".."
  is the parent, and the root's parent is the root;
* a trailing slash requires the last component to be a directory, and
  follows a final symbolic link -- except in a *parent* lookup (Linux's
  ``filename_parentat``), made for the operations that create, remove or
  rename the last component (mkdir, rmdir, unlink, rename, link, symlink,
  open with O_CREAT): there the final link is followed only if
  ``follow_last`` says so, and the trailing slash is only reported
  (``Lookup.slash``), for the operation to judge as Linux does (``rmdir`` of
  "link-to-dir/" is ENOTDIR, ``mkdir`` of "dangling-link/" is EEXIST, ...);
* at most 40 symbolic links are followed in one resolution (ELOOP);
* a component longer than 255 bytes is ENAMETOOLONG, a path longer than
  4095 bytes too; NUL in a path is EINVAL.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

from daxfs.errors import (
    InvalidArgument,
    NameTooLong,
    NotADirectory,
    NotFound,
    TooManyLinks,
)
from daxfs.fs.inode import Inode
from daxfs.fs.layout import MAX_NAME

MAX_PATH = 4095
MAX_SYMLINKS = 40
_S_IFMT, _S_IFDIR, _S_IFLNK = 0o170000, 0o040000, 0o120000

Path = str | bytes | os.PathLike[str] | os.PathLike[bytes]


def fspath(path: Path) -> bytes:
    """The path as bytes (str is encoded as os.fsencode does).

    Raises:
        InvalidArgument: NUL in the path, or not a path at all.
        NameTooLong: longer than 4095 bytes.
    """
    try:
        raw = os.fsencode(path)
    except TypeError:
        raise InvalidArgument(f"expected a str or bytes path, not {type(path).__name__}") from None
    if b"\0" in raw:
        raise InvalidArgument(
            f"embedded NUL byte in path {raw!r}", os.fsdecode(raw.replace(b"\0", b"?"))
        )
    if len(raw) > MAX_PATH:
        raise NameTooLong(f"path of {len(raw)} bytes is longer than {MAX_PATH}", os.fsdecode(raw))
    return raw


def check_name(name: bytes, path: str) -> None:
    """Raise unless ``name`` can be a directory entry."""
    if len(name) > MAX_NAME:
        raise NameTooLong(f"name of {len(name)} bytes is longer than {MAX_NAME}", path)


@dataclasses.dataclass(slots=True)
class Lookup:
    """The result of resolving a path."""

    parent: Inode  # directory that holds (or would hold) the last component
    name: bytes  # last component: b"" for "/", may be b"." or b".."
    inode: Inode | None  # what the last component names, None if absent
    slash: bool  # the path ended with "/"
    #: the name's directory key, when the parent's current index lacks that key (set by
    #: FileSystem._lookup_new, for the create fast path: no search of its own); else -1
    key: int = -1


class Resolver:
    """Walks paths; the filesystem supplies how to look a name up in a directory."""

    def __init__(
        self,
        root: Callable[[], Inode],
        child: Callable[[Inode, bytes], Inode | None],
        parent: Callable[[Inode], Inode],
        readlink: Callable[[Inode], bytes],
    ) -> None:
        self._root = root
        self._child = child
        self._parent = parent
        self._readlink = readlink

    def lookup(self, path: Path, follow_last: bool = True, *, parent: bool = False) -> Lookup:
        """Resolve ``path``; see the module docstring (``parent``: a parent lookup).

        Raises:
            NotFound: a directory on the way is missing, or the path is empty.
            NotADirectory: a component on the way is not a directory.
            TooManyLinks: more than 40 symbolic links.
            NameTooLong, InvalidArgument: see fspath.
        """
        raw = fspath(path)
        return self.resolve(raw, os.fsdecode(raw), follow_last, parent=parent)

    def resolve(
        self, raw: bytes, shown: str, follow_last: bool = True, *, parent: bool = False
    ) -> Lookup:
        """``lookup`` of a path already checked by ``fspath`` (``raw``), shown as ``shown``.

        Raises:
            as ``lookup``.
        """
        if not raw:
            raise NotFound("no such file or directory: '' (empty path)", shown)
        budget = [MAX_SYMLINKS]
        return self._walk(self._root(), raw, follow_last, parent, shown, budget)

    def _walk(
        self,
        start: Inode,
        raw: bytes,
        follow_last: bool,
        parent: bool,
        shown: str,
        budget: list[int],
    ) -> Lookup:
        slash = raw.endswith(b"/")
        parts = [p for p in raw.split(b"/") if p]
        cur = self._root() if raw.startswith(b"/") else start
        if not parts:
            return Lookup(cur, b"", cur, slash)
        for i, name in enumerate(parts):
            last = i == len(parts) - 1
            if cur.rec.mode & _S_IFMT != _S_IFDIR:
                raise NotADirectory(f"not a directory: {shown}", shown)
            if len(name) > MAX_NAME:
                check_name(name, shown)
            nxt = self._step(cur, name)
            if nxt is None:
                if last:
                    return Lookup(cur, name, None, slash)
                raise NotFound(f"no such file or directory: {shown}", shown)
            if nxt.rec.mode & _S_IFMT == _S_IFLNK and (
                not last or follow_last or (slash and not parent)
            ):
                budget[0] -= 1
                if budget[0] < 0:
                    raise TooManyLinks(f"too many levels of symbolic links: {shown}", shown)
                target = self._readlink(nxt)
                if not target:
                    raise NotFound(f"empty symbolic link target: {shown}", shown)
                rest = b"/".join(parts[i + 1 :])
                if rest or slash:
                    target = target + b"/" + rest + (b"/" if slash and rest else b"")
                return self._walk(cur, target, follow_last, parent, shown, budget)
            if last:
                if slash and not nxt.is_dir and not parent:
                    raise NotADirectory(f"not a directory: {shown}", shown)
                return Lookup(cur, name, nxt, slash)
            cur = nxt
        raise AssertionError("unreachable")

    def _step(self, cur: Inode, name: bytes) -> Inode | None:
        if name == b".":
            return cur
        if name == b"..":
            return self._parent(cur)
        return self._child(cur, name)
