"""DaxFileSystem: fsspec's AbstractFileSystem over one mounted daxfs image.

Each method strips the ``daxfs://`` protocol from its paths (paths inside the
image: absolute, ``/`` separated), asks the process's mount table for the
image's FileSystem (daxfs.fsspec._mounts: mounted on first use, shared by
every instance on that image), and makes one call of the os-like API, so
each change is atomic and durable on return, as with daxfs's own API.
Errors are daxfs's OSErrors (FileNotFoundError, FileExistsError, ... with
the errno and the path inside the image), passed through unchanged.

Copies move bytes once: ``cat_file`` from device memory into the bytes it
returns; ``get_file`` and ``cp_file`` pin the source range (daxfs.mm.SGList)
and hand views of device memory to the destination's write, no buffer in
between; a file object's ``readinto`` (and a ``read`` of at least its buffer
size) copies from device memory into the caller's buffer.  No copy at all:
``cat_buffer`` and, with ``zero_copy``, pyarrow's large reads return pyarrow
buffers of pinned device memory, pinned as long as they live
(daxfs.fsspec._files, "Zero-copy buffers").

Invariants
----------
1. Paths reach daxfs stripped: absolute, ``/`` separated, no protocol, no
   trailing slash, no ``::IMAGE`` part (``_strip_protocol``).
2. A method that fails has changed nothing the daxfs call it failed in did
   not change; the multi-step ones (pipe_file, put_file, cp_file, rm of a
   tree, mv of a list) leave what docs/GUARANTEES.md says.
3. A view of device memory (a pinned copy's) is released before its range
   is unpinned, and never handed out past the call; a zero-copy buffer's
   pin is released only after the buffer died (daxfs.fsspec._mounts,
   invariant 6).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import posixpath
import re
import stat as st
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any, Self

from fsspec.callbacks import DEFAULT_CALLBACK
from fsspec.spec import AbstractFileSystem
from fsspec.utils import isfilelike, stringify_path

from daxfs.errors import InvalidArgument, IsADirectory, NotFound, NotSupported, naming
from daxfs.fs.file import File
from daxfs.fs.filesystem import FileSystem
from daxfs.fs.scan import remove_tree
from daxfs.fsspec import _mounts
from daxfs.fsspec._files import DaxFile, open_file, pinned_buffer, read_range
from daxfs.lifecycle import cleanup_after

#: bytes pinned (or buffered) at a time by get_file, put_file and cp_file
CHUNK = 16 << 20
_SLASHES = re.compile("/{2,}")
_MAGIC = re.compile("[*?[]")


class DaxFileSystem(AbstractFileSystem):  # type: ignore[misc]  # fsspec is untyped
    """The files of one daxfs image, for fsspec (protocol ``daxfs``).

    ``DaxFileSystem(image, readonly=False, persist="auto", dax="inode",
    layout_timeout=10.0, auto_mkdir=True, zero_copy=None)``; ``fo`` is the
    same as ``image`` (the name fsspec gives the outer part of a chained URL,
    ``daxfs:///path/in/image::/path/of/image``).  The keywords are
    ``daxfs.mount``'s; ``auto_mkdir`` makes writes create missing parent
    directories, as object stores do; ``zero_copy`` makes pyarrow's large
    reads (``read_buffer``) buffers of pinned device memory instead of
    copies: None (the default) on read-only mounts only, True also on
    read-write ones (a write or truncate of a range such a buffer pins then
    waits for it to die, EBUSY after ``layout_timeout``: daxfs.fsspec._files,
    "Zero-copy buffers"), False never.

    Raises (at construction, as daxfs.mount):
        InvalidArgument (EINVAL): no image, or an image that is not a local path.
        FileNotFoundError, Busy (EBUSY: mounted read-write elsewhere, or by
        this process with other options), Corrupted (EUCLEAN), ReadOnly.
    """

    protocol = "daxfs"
    root_marker = "/"

    def __init__(
        self,
        image: str | os.PathLike[str] | None = None,
        *,
        fo: str | os.PathLike[str] | None = None,
        readonly: bool = False,
        persist: str = "auto",
        dax: str = "inode",
        layout_timeout: float = 10.0,
        auto_mkdir: bool = True,
        zero_copy: bool | None = None,
        target_protocol: str | None = None,
        target_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if image is not None and fo is not None and image != fo:
            raise InvalidArgument(f"two images given: image={image!r}, fo={fo!r}")
        given = image if image is not None else fo
        if given is None or (isinstance(given, str) and not given):
            raise InvalidArgument(
                "daxfs: which image? give image=PATH (pandas: storage_options={'image': PATH}) "
                "or the URL daxfs:///path/in/image::/path/of/image"
            )
        if target_protocol not in (None, "", "file", "local") or target_options:
            raise InvalidArgument(
                f"daxfs mounts a local image; {target_protocol}:// {target_options or ''} "
                "cannot be mapped (copy the image to a local path first)"
            )
        if isinstance(given, str):
            given = given.removeprefix("file://").removeprefix("local://")
        self.image = _mounts.image_key(given)
        if zero_copy not in (None, True, False):
            raise InvalidArgument(f"zero_copy must be None, True or False: {zero_copy!r}")
        self.auto_mkdir = auto_mkdir
        self.zero_copy = zero_copy
        self._options = _mounts.Options(
            readonly=readonly, persist=persist, dax=dax, layout_timeout=layout_timeout
        )
        try:
            self._mount = _mounts.acquire(self.image, self._options)
        except FileNotFoundError as exc:
            raise NotFound(
                f"no daxfs image at {self.image} (a daxfs URL names the image last: "
                "daxfs:///path/in/image::/path/of/image)",
                self.image,
            ) from exc

    # -- the mount ----------------------------------------------------------------------

    def _current(self) -> _mounts.Mount:
        """The image's mount, mounted again if it was unmounted meanwhile (or forked)."""
        mount = self._mount
        if not (mount.live and mount.fs.mounted):
            mount = self._mount = _mounts.acquire(self.image, self._options)
        return mount

    @property
    def mount(self) -> _mounts.Mount:
        """The image's entry in the process's mount table (daxfs.fsspec._mounts)."""
        return self._current()

    @property
    def zero_copy_reads(self) -> bool:
        """Whether pyarrow's large reads are buffers of device memory (``zero_copy``)."""
        if self.zero_copy is None:
            return self._options.readonly
        return self.zero_copy

    @property
    def filesystem(self) -> FileSystem:
        """The mounted daxfs.FileSystem (the whole API: DAX mmap, pins, fsck-clean state)."""
        return self._current().fs

    @property
    def fsid(self) -> str:
        return f"daxfs-{self.filesystem.superblock.uuid_str}"

    def unmount(self, timeout: float = 1.0, *, force: bool = False) -> None:
        """Unmount the image now (it is mounted again if this or another instance is used).

        Files still open are waited for, up to ``timeout`` seconds (pyarrow closes
        what it read from its own threads, just after the read returned, and now
        and then keeps one until its threads run again); ``force`` then closes the
        fsspec files still open (writers flushed) instead of failing.

        Raises:
            Busy (EBUSY): files are still open on it (close them first, or
                ``force``), or zero-copy buffers (``cat_buffer``, pyarrow's reads
                with ``zero_copy``) still pin its memory (drop them: ``force``
                cannot); nothing changed.
            IOFailure (EIO): the device failed; the image is released all the same.
        """
        _mounts.release(self.image, timeout, force=force)

    close = unmount

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # as daxfs.FileSystem's exit: close what is open, unmount; on the way out of an
        # exception a failed unmount becomes a note on it (lifecycle.cleanup_after)
        if exc is None:
            self.unmount(force=True)
        else:
            cleanup_after(exc, lambda: self.unmount(force=True))

    def __repr__(self) -> str:
        return f"<DaxFileSystem image={self.image!r}>"

    # -- paths --------------------------------------------------------------------------

    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        """``daxfs:///a/b``, ``daxfs://a/b``, ``/a/b/``, ``a//b`` -> ``/a/b``.

        The part after ``::`` of a chained URL names the image, not a path: dropped.
        """
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        path = stringify_path(path)
        if path.startswith("daxfs://"):
            path = path[len("daxfs://") :]
        path = path.partition("::")[0]
        path = _SLASHES.sub("/", "/" + path)
        return path.rstrip("/") or "/"

    def unstrip_protocol(self, name: str) -> str:
        """The URL of ``name`` that reopens it: ``daxfs:///name::/path/of/image``."""
        return f"daxfs://{self._strip_protocol(name)}::{self.image}"

    def _make_parent(self, fs: FileSystem, path: str) -> None:
        if self.auto_mkdir:
            parent = posixpath.dirname(path)
            if parent != "/":
                fs.makedirs(parent, exist_ok=True)

    # -- looking -------------------------------------------------------------------------

    def info(self, path: Any, **kwargs: Any) -> dict[str, Any]:
        """name, size, type ("file", "directory", "other"), created, mtime, islink,
        mode, uid, gid, ino, nlink, and destination for a symbolic link.

        Raises:
            FileNotFoundError, NotADirectoryError, ..., naming the path.
        """
        path = self._strip_protocol(path)
        return _info(self.filesystem, path)

    def ls(self, path: Any, detail: bool = True, **kwargs: Any) -> list[Any]:
        """A directory's entries sorted by name (a file: itself), as info dicts or names.

        Raises:
            FileNotFoundError, NotADirectoryError, naming the path.
        """
        path = self._strip_protocol(path)
        fs = self.filesystem
        if not st.S_ISDIR(fs.stat(path).st_mode):
            return [_info(fs, path)] if detail else [path]
        names = [posixpath.join(path, name) for name in sorted(fs.listdir(path))]
        if not detail:
            return names
        out = []
        for name in names:
            with contextlib.suppress(FileNotFoundError):  # removed since the listing
                out.append(_info(fs, name))
        return out

    def exists(self, path: Any, **kwargs: Any) -> bool:
        return self._answers(self.filesystem.stat, path)

    def lexists(self, path: Any, **kwargs: Any) -> bool:
        return self._answers(self.filesystem.lstat, path)

    def _answers(self, look: Callable[[str], object], path: Any) -> bool:
        """True if ``look`` (stat or lstat) finds ``path``."""
        try:
            look(self._strip_protocol(path))
        except OSError:
            return False
        return True

    def islink(self, path: Any) -> bool:
        return bool(self.filesystem.islink(self._strip_protocol(path)))

    def created(self, path: Any) -> datetime.datetime:
        """When the file was created (its birth time), in UTC."""
        ns = self.filesystem.birthtime_ns(self._strip_protocol(path))
        return _utc(ns)

    def modified(self, path: Any) -> datetime.datetime:
        """When the file's data last changed (mtime), in UTC."""
        return _utc(self.filesystem.stat(self._strip_protocol(path)).st_mtime_ns)

    def sign(self, path: Any, expiration: int = 100, **kwargs: Any) -> str:
        """Not supported: an image is reached through this process's mount, no server.

        Raises:
            NotImplementedError: always.
        """
        raise NotImplementedError(
            f"daxfs cannot sign URLs: {self._strip_protocol(path)} lives in the image "
            f"{self.image}, reached through this process's mount, not a server"
        )

    def _isfilestore(self) -> bool:
        return True  # a POSIX-like tree: directories exist on their own

    # -- extended attributes -------------------------------------------------------------

    # fsspec itself has no xattr API; these follow the os module (as daxfs does), and
    # ``metadata`` returns them all, as s3fs's ``metadata`` does an object's.

    def getxattr(self, path: Any, attribute: str | bytes) -> bytes:
        """The value of extended attribute ``attribute`` (e.g. ``user.origin``).

        Raises:
            NoData (ENODATA): no such attribute; BadRange (ERANGE), NotSupported
            (EOPNOTSUPP): a bad name or namespace; FileNotFoundError, ...
        """
        return self.filesystem.getxattr(self._strip_protocol(path), attribute)

    def setxattr(self, path: Any, attribute: str | bytes, value: Any, flags: int = 0) -> None:
        """Set extended attribute ``attribute`` (one transaction, durable on return);
        ``flags``: os.XATTR_CREATE or os.XATTR_REPLACE.

        Raises:
            Exists (EEXIST) / NoData (ENODATA): the flag's condition fails;
            TooBig (E2BIG), NoSpace (ENOSPC), ReadOnly (EROFS), and getxattr's.
        """
        self.filesystem.setxattr(self._strip_protocol(path), attribute, value, flags)

    def listxattr(self, path: Any) -> list[str]:
        """The names of the extended attributes of ``path``, sorted.

        Raises:
            FileNotFoundError, ...
        """
        return self.filesystem.listxattr(self._strip_protocol(path))

    def removexattr(self, path: Any, attribute: str | bytes) -> None:
        """Remove extended attribute ``attribute``.

        Raises:
            NoData (ENODATA): no such attribute; ReadOnly (EROFS), and getxattr's.
        """
        self.filesystem.removexattr(self._strip_protocol(path), attribute)

    def metadata(self, path: Any) -> dict[str, bytes]:
        """Every extended attribute of ``path``: {name: value}.

        Raises:
            FileNotFoundError, ...
        """
        fs = self.filesystem
        path = self._strip_protocol(path)
        return {name: fs.getxattr(path, name) for name in fs.listxattr(path)}

    # -- files ---------------------------------------------------------------------------

    def _open(
        self,
        path: Any,
        mode: str = "rb",
        block_size: int | None = None,
        autocommit: bool = True,
        cache_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> DaxFile:
        """A binary file object (daxfs.fsspec._files): seekable, random access.

        Raises:
            FileNotFoundError, FileExistsError ("xb"), IsADirectoryError,
            ReadOnly (EROFS), InvalidArgument (a bad mode or block_size).
        """
        path = self._strip_protocol(path)
        mount = self._current()
        if any(c in mode for c in "wax"):
            self._make_parent(mount.fs, path)
        f = open_file(self, mount.fs, path, mode, block_size, autocommit)
        mount.files.add(f)
        return f

    def cat_file(
        self, path: Any, start: int | None = None, end: int | None = None, **kwargs: Any
    ) -> bytes:
        """Bytes ``[start, end)`` (negative: from the end), copied once from device memory.

        Raises:
            FileNotFoundError, IsADirectoryError, ..., naming the path.
        """
        return read_range(self.filesystem, self._strip_protocol(path), start, end)

    def cat_buffer(self, path: Any, start: int | None = None, end: int | None = None) -> Any:
        """Bytes ``[start, end)`` (as ``cat_file``) as a read-only ``pyarrow.Buffer``:
        device memory itself, no copy, whatever ``zero_copy`` says, when the range is
        one extent of written blocks (else one copy).  ``memoryview(buf)`` and
        ``numpy.frombuffer(buf)`` see the same memory.  The range stays pinned as
        long as the buffer, or anything made from it, is alive: its bytes do not
        change (a write, truncate or punch-hole over it waits, then fails with EBUSY
        after ``layout_timeout``), and the image cannot be unmounted (Busy).  An
        empty range is an empty buffer.

        Raises:
            ImportError: no pyarrow.
            FileNotFoundError, IsADirectoryError, ..., naming the path.
            TypeError: ``start`` or ``end`` not an int or None.
        """
        import pyarrow as pa

        path = self._strip_protocol(path)
        mount = self._current()
        with mount.fs.open(path, "rb", buffering=0) as raw:
            assert isinstance(raw, File)
            first, last, _ = slice(start, end).indices(raw.stat().st_size)
            if last <= first:
                return pa.py_buffer(b"")
            buf = pinned_buffer(mount, raw, first, last - first)
            if buf is None:  # several extents, holes, or a device that cannot pin
                with naming(path):
                    return pa.py_buffer(raw.pread(last - first, first))
            return buf

    def pipe_file(self, path: Any, value: Any, mode: str = "overwrite", **kwargs: Any) -> None:
        """Write ``value`` as the whole file: an O_TRUNC open, then one durable write.

        ``mode="create"`` fails if the file exists (an O_EXCL open: atomic).
        Inside ``fs.transaction`` the file appears at commit, in one rename.

        Raises:
            FileExistsError (mode "create"), IsADirectoryError, NoSpace, ReadOnly.
            InvalidArgument: another mode.
        """
        if mode not in ("overwrite", "create"):
            raise InvalidArgument(f"pipe_file: mode must be 'overwrite' or 'create': {mode!r}")
        if self._intrans:
            super().pipe_file(path, value, mode=mode, **kwargs)
            return
        path = self._strip_protocol(path)
        fs = self.filesystem
        self._make_parent(fs, path)
        with fs.open(path, "xb" if mode == "create" else "wb", buffering=0) as f:
            _write_whole(f.write, memoryview(value).cast("B"))

    def put_file(
        self,
        lpath: Any,
        rpath: Any,
        callback: Any = DEFAULT_CALLBACK,
        mode: str = "overwrite",
        **kwargs: Any,
    ) -> None:
        """Copy a host file into the image (a host directory: makedirs).

        Raises:
            FileExistsError (mode "create"), and the host's and daxfs's OSErrors.
        """
        if os.path.isdir(lpath):
            self.makedirs(rpath, exist_ok=True)
            return
        if self._intrans:
            super().put_file(lpath, rpath, callback=callback, mode=mode, **kwargs)
            return
        rpath = self._strip_protocol(rpath)
        fs = self.filesystem
        self._make_parent(fs, rpath)
        with open(lpath, "rb", buffering=0) as src:
            size = os.fstat(src.fileno()).st_size
            callback.set_size(size)
            buf = memoryview(bytearray(max(1, min(size, CHUNK))))
            with fs.open(rpath, "xb" if mode == "create" else "wb", buffering=0) as dst:
                while n := src.readinto(buf):
                    _write_whole(dst.write, buf[:n])
                    callback.relative_update(n)

    def get_file(
        self,
        rpath: Any,
        lpath: Any,
        callback: Any = DEFAULT_CALLBACK,
        outfile: Any = None,
        **kwargs: Any,
    ) -> None:
        """Copy a file of the image to a host path or file object, straight from
        device memory (pinned: a truncate of the range waits for the copy).

        Raises:
            FileNotFoundError, ..., naming the path; the host's OSErrors.
        """
        rpath = self._strip_protocol(rpath)
        fs = self.filesystem
        if outfile is None and isfilelike(lpath):
            outfile = lpath
        if outfile is None and st.S_ISDIR(fs.stat(rpath).st_mode):
            os.makedirs(lpath, exist_ok=True)
            return
        with fs.open(rpath, "rb", buffering=0) as src:
            assert isinstance(src, File)
            if outfile is not None:
                _copy_out(src, outfile.write, callback)
                return
            parent = os.path.dirname(os.fspath(lpath))
            if parent:
                os.makedirs(parent, exist_ok=True)
            with open(lpath, "wb", buffering=0) as out:
                _copy_out(src, out.write, callback)

    def cp_file(self, path1: Any, path2: Any, **kwargs: Any) -> None:
        """Copy a file inside the image (a directory: makedirs); the source's bytes
        go from its pinned device memory into the copy's writes.

        Raises:
            FileNotFoundError, IsADirectoryError (onto a directory),
            InvalidArgument (EINVAL: both name one file), NoSpace, ReadOnly.
        """
        p1, p2 = self._strip_protocol(path1), self._strip_protocol(path2)
        fs = self.filesystem
        info = fs.stat(p1)
        if st.S_ISDIR(info.st_mode):
            fs.makedirs(p2, exist_ok=True)
            return
        try:
            same = fs.stat(p2).st_ino == info.st_ino
        except FileNotFoundError:
            same = False
        if same:
            raise InvalidArgument(f"cp_file: {p1} and {p2} are the same file", p2)
        self._make_parent(fs, p2)
        with fs.open(p1, "rb", buffering=0) as src, fs.open(p2, "wb", buffering=0) as dst:
            assert isinstance(src, File)
            _copy_out(src, dst.write, DEFAULT_CALLBACK)

    def mv(
        self,
        path1: Any,
        path2: Any,
        recursive: bool = False,
        maxdepth: int | None = None,
        **kwargs: Any,
    ) -> None:
        """Move a file or a whole directory in one rename (atomic and durable); into
        ``path2`` if it is a directory (or ends with ``/``), as fsspec's mv.  Lists
        and globs go through fsspec's copy and rm.

        Raises:
            FileNotFoundError, FileExistsError, NotEmpty (ENOTEMPTY),
            InvalidArgument (a directory into itself), ..., naming the paths.
        """
        if not (isinstance(path1, str) and isinstance(path2, str)) or _MAGIC.search(path1):
            super().mv(path1, path2, recursive=recursive, maxdepth=maxdepth, **kwargs)
            return
        into = path2.endswith("/")
        p1, p2 = self._strip_protocol(path1), self._strip_protocol(path2)
        fs = self.filesystem
        if p1 == p2:
            fs.lstat(p1)  # as rename(2): nothing to do, but it must exist
            return
        if into or fs.isdir(p2):
            p2 = posixpath.join(p2, posixpath.basename(p1))
        self._make_parent(fs, p2)
        fs.rename(p1, p2)

    # -- directories and removal ---------------------------------------------------------

    def mkdir(self, path: Any, create_parents: bool = True, **kwargs: Any) -> None:
        """Create a directory (and its parents, with ``create_parents``).

        Raises:
            FileExistsError: it exists; FileNotFoundError: a missing parent
            without ``create_parents``.
        """
        path = self._strip_protocol(path)
        fs = self.filesystem
        if create_parents:
            fs.makedirs(path)
        else:
            fs.mkdir(path)

    def makedirs(self, path: Any, exist_ok: bool = False) -> None:
        """Create a directory and its missing parents, as os.makedirs."""
        self.filesystem.makedirs(self._strip_protocol(path), exist_ok=exist_ok)

    def rmdir(self, path: Any) -> None:
        """Remove an empty directory (NotEmpty, ENOTEMPTY, otherwise)."""
        self.filesystem.rmdir(self._strip_protocol(path))

    def rm_file(self, path: Any) -> None:
        """Remove a file (IsADirectoryError for a directory)."""
        self.filesystem.unlink(self._strip_protocol(path))

    _rm = rm_file

    def rm(self, path: Any, recursive: bool = False, maxdepth: int | None = None) -> None:
        """Remove files, and directories: a whole tree with ``recursive``, else only
        empty ones.  Each removal is its own transaction (a crash leaves a subtree).

        Raises:
            FileNotFoundError; IsADirectory (EISDIR): a directory without
            ``recursive``; NotEmpty: a directory below ``maxdepth``'s reach.
        """
        fs = self.filesystem
        if isinstance(path, str) and maxdepth is None and not _MAGIC.search(path):
            one = self._strip_protocol(path)
            if st.S_ISDIR(fs.lstat(one).st_mode):
                if not recursive:
                    raise IsADirectory(f"rm: {one} is a directory (use recursive=True)", one)
                remove_tree(fs, one)
            else:
                fs.unlink(one)
            return
        for one in reversed(self.expand_path(path, recursive=recursive, maxdepth=maxdepth)):
            if st.S_ISDIR(fs.lstat(one).st_mode):
                fs.rmdir(one)
            else:
                fs.unlink(one)

    def touch(self, path: Any, truncate: bool = True, **kwargs: Any) -> None:
        """Create an empty file; an existing one is emptied (``truncate``) or has
        its times set to now.

        Raises:
            IsADirectoryError (``truncate`` on a directory), ReadOnly, ...
        """
        path = self._strip_protocol(path)
        fs = self.filesystem
        self._make_parent(fs, path)
        if not truncate:
            try:
                fs.utime(path)
                return
            except FileNotFoundError:
                pass
        with fs.open(path, "wb" if truncate else "ab", buffering=0):
            pass


# -- helpers ------------------------------------------------------------------------------


def _info(fs: FileSystem, path: str) -> dict[str, Any]:
    """fsspec's info dict of ``path`` (a symbolic link: its target's, with islink)."""
    found = fs.lstat(path)
    islink = st.S_ISLNK(found.st_mode)
    created = fs.birthtime_ns(path, follow_symlinks=False)
    destination = None
    if islink:
        destination = fs.readlink(path)
        try:
            found = fs.stat(path)
            created = fs.birthtime_ns(path)
        except OSError:
            pass  # dangling or looping: the link itself, of type "other"
    mode = found.st_mode
    kind = "directory" if st.S_ISDIR(mode) else "file" if st.S_ISREG(mode) else "other"
    out: dict[str, Any] = {
        "name": path,
        "size": found.st_size,
        "type": kind,
        "created": created / 1e9,
        "islink": islink,
        "mode": mode,
        "uid": found.st_uid,
        "gid": found.st_gid,
        "mtime": found.st_mtime,
        "ino": found.st_ino,
        "nlink": found.st_nlink,
    }
    if islink:
        out["destination"] = destination
    return out


def _utc(ns: int) -> datetime.datetime:
    seconds, rest = divmod(ns, 1_000_000_000)
    return datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC).replace(
        microsecond=rest // 1000
    )


def _views(src: File, size: int) -> Iterator[memoryview]:
    """Views of device memory holding ``src``'s first ``size`` bytes, CHUNK pinned at
    a time (each view released before its chunk is unpinned); where pinning is not
    supported, a buffer filled by preadinto.
    """
    offset = 0
    while offset < size:
        n = min(CHUNK, size - offset)
        try:
            sg = src.pin(offset, n)
        except NotSupported:
            yield from _buffered_views(src, offset, size)
            return
        with sg:
            for view in sg.views():
                try:
                    yield view
                finally:
                    view.release()
        offset += n


def _buffered_views(src: File, offset: int, size: int) -> Iterator[memoryview]:
    buf = memoryview(bytearray(min(CHUNK, size - offset)))
    while offset < size:
        n = src.preadinto(buf[: size - offset], offset)
        if not n:
            return  # truncated meanwhile
        yield buf[:n]
        offset += n


def _copy_out(src: File, write: Callable[[memoryview], object], callback: Any) -> None:
    """Hand ``src``'s bytes to ``write``, straight from device memory where possible.

    Raises:
        what ``write`` raises; FileNotFoundError/..., naming ``src``.
    """
    size = src.stat().st_size
    callback.set_size(size)
    with naming(src.path):
        for view in _views(src, size):
            _write_whole(write, view)
            callback.relative_update(len(view))


def _write_whole(write: Callable[[memoryview], object], view: memoryview) -> None:
    """``write(view)`` until all of it is written (a host raw file may write less)."""
    while view:
        n = write(view)
        if n is None:  # a file object that does not count: it took all of it
            return
        assert isinstance(n, int), f"write returned {n!r}"
        assert n > 0, f"write of {len(view)} bytes wrote nothing"
        view = view[n:]
