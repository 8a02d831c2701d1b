"""The host filesystem as an oracle for daxfs: the same steps on both, results compared.

A *step* is a tuple ``(operation, *arguments)``; ``run_steps`` performs each
one on a fresh daxfs (``FileSystem`` methods) and on a fresh temporary
directory of the host (``os`` and ``builtins.open``, every path joined under
the directory), and compares what each returned or raised.  The side under
test is pluggable (``Oracle(make_side)``): the Python API (``DaxSide`` on a
fresh SimulatedPmem, the default) or any directory reached through ``os``
(``HostSide`` rooted on a FUSE mount: daxfs.testing.posix_tests runs the same
suite on both front ends).  Comparison:

* a return value, normalised: ``listdir`` sorted; ``stat`` reduced to what
  daxfs promises to share with Linux (file type, permission bits, link count,
  size of regular files); ``walk`` and ``scandir`` sorted;
* an exception: daxfs must raise an instance of the host's class
  (``FileNotFoundError``, ``OSError``, ``io.UnsupportedOperation``, ...) with
  the same errno (EINVAL where the host raises a bare ``ValueError`` for a
  NUL byte), and the message must name one of the step's paths.

After the last step the two trees are compared whole (types, modes, link
counts, contents, link targets), so an operation that failed with the right
errno but changed something anyway is caught too.

Mapping to the host: an absolute symlink target is stored under the host
root and readlink strips that prefix again, so links mean the same on both
sides.  Above the root the host has a parent and daxfs has none ("/.." is
"/"), so a step must not climb above the root with "..", with one exception:
the names in ``ABOVE_ROOT``.  The host root's parent holds, for each of
them, a symbolic link to the same name in the root (``mirror_above_root``),
so that a relative link in the root that climbs to it ("../b", which random
step sequences make) finds on the host what daxfs's "/.." finds: the root's
own entry (one more link followed on the way, far below the 40 allowed).
A side reached through ``os`` on a directory (the FUSE mount's) gets the same
links above its root.  daxfs's "/.." itself is tested on its own.
``link`` on the host is linkat with AT_SYMLINK_FOLLOW when following (what
``os.link`` does only when given a directory descriptor: plain ``os.link``
calls link(2), which on Linux never follows).

Steps, besides the names of ``FileSystem`` methods (``mkdir``, ``rename``,
``stat``, ``listdir``, ...):

    ("open", path, mode, actions[, kwargs])  open, then call each action
        ``(method, *args)`` on the file object (``("mode",)`` reads the
        attribute); the result is the list of action outcomes; closed after
    ("put", path, data)             write a whole file ("wb")
    ("get", path)                   read a whole file ("rb")
    ("stat_times", path[, kwargs])  (st_atime_ns, st_mtime_ns)
    ("stat_owner", path[, kwargs])  (st_uid, st_gid)
    ("mtime_changed", path, ns)     whether mtime differs from ``ns``

Actions of an ``open`` step, besides the file object's methods (so that what
a program does to an open file whose name has gone can be compared):

    ("fs", step)                    run a whole step on the side meanwhile
                                    (rename or unlink the open file, ...)
    ("fstat",)  ("fstat_times",)  ("fstat_owner",)
    ("fchmod", mode)  ("fchown", uid, gid)  ("futime", ns)  ("ftruncate", n)
                                    os.fstat/fchmod/fchown/utime/ftruncate of
                                    the descriptor (daxfs: File.stat, chmod,
                                    chown, utime, truncate of the raw File)
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import gc
import os
import shutil
import stat as st
import tempfile
import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import Any, cast

from daxfs.errors import DaxfsError
from daxfs.fs.filesystem import FileSystem
from daxfs.fs.mount import mkfs, mount
from daxfs.lifecycle import Closeable, run_all
from daxfs.testing import SimulatedPmem

Step = tuple[Any, ...]
#: names a relative link in the root may climb to ("../b"): see mirror_above_root
ABOVE_ROOT = ("b",)
#: the actions of an ``open`` step that are os calls on the file's descriptor
FILE_OPS = ("fstat", "fstat_times", "fstat_owner", "fchmod", "fchown", "futime", "ftruncate")
SIZE = 16 << 20


class _Collector:
    """A full garbage collection every ``EVERY`` closed devices.

    The filesystem's layers hold each other in reference cycles, and a closed
    SimulatedPmem keeps its images (three times its size) until its cycle is
    collected; hundreds of oracles would otherwise hold gigabytes.
    """

    EVERY = 4
    closed = 0

    @classmethod
    def device_closed(cls) -> None:
        cls.closed += 1
        if cls.closed % cls.EVERY == 0:
            gc.collect()


def close_device(fs: FileSystem, dev: SimulatedPmem) -> None:
    """Close the files left open, unmount, close the device (and collect now and then)."""
    for f in fs.open_files():
        f.close()
    if fs.mounted:
        fs.unmount()
    dev.close()
    _Collector.device_closed()


@dataclasses.dataclass(frozen=True)
class StatView:
    """The fields of a stat result that daxfs shares with Linux."""

    kind: str
    perm: int
    nlink: int
    size: int | None  # regular files only (directories and links differ by design)


def stat_view(result: os.stat_result) -> StatView:
    mode = result.st_mode
    kind = {st.S_IFREG: "file", st.S_IFDIR: "dir", st.S_IFLNK: "link"}.get(
        st.S_IFMT(mode), oct(st.S_IFMT(mode))
    )
    size = result.st_size if kind == "file" else None
    return StatView(kind, st.S_IMODE(mode), result.st_nlink, size)


@dataclasses.dataclass
class Outcome:
    """What one step (or one action on an open file) did: a value or an exception.

    An exception is kept without its traceback (``where`` has a frame-free copy
    for messages): a traceback holds the frames that raised and caught it, and
    with them the filesystem and its device images, in a reference cycle.
    """

    value: Any = None
    exc: BaseException | None = None
    where: str = ""

    @classmethod
    def caught(cls, exc: BaseException) -> Outcome:
        parts = []
        link: BaseException | None = exc
        while link is not None:
            stack = traceback.StackSummary.extract(
                traceback.walk_tb(link.__traceback__), lookup_lines=False
            )
            parts.append(f"{type(link).__name__}: {link}\n" + "".join(stack.format()))
            link.__traceback__ = None
            link = link.__cause__ or link.__context__
        return cls(exc=exc, where="\n".join(parts))

    def __repr__(self) -> str:
        if self.exc is not None:
            return f"raised {type(self.exc).__name__}({self.exc})"
        return f"returned {self.value!r}"


class Side:
    """One filesystem under test; subclasses map paths and results."""

    def p(self, path: Any) -> Any:
        return path

    def unroot(self, path: Any) -> Any:
        return path

    def call(self, op: str, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    def open(self, path: Any, mode: str, **kwargs: Any) -> Any:
        raise NotImplementedError

    # -- steps --------------------------------------------------------------------

    def run(self, step: Step) -> Outcome:
        try:
            return Outcome(self._run(step))
        except (OSError, ValueError, TypeError, LookupError) as exc:
            return Outcome.caught(exc)

    def _run(self, step: Step) -> Any:
        op, *args = step
        if op == "open":
            return self._session(*args)
        if op == "put":
            with self.open(args[0], "wb") as f:
                return f.write(args[1])
        if op == "get":
            with self.open(args[0], "rb") as f:
                return f.read()
        if op == "mtime_changed":
            return self.call("stat", args[0]).st_mtime_ns != args[1]
        if op == "stat_owner":
            result = self.call("stat", args[0], **(args[1] if len(args) > 1 else {}))
            return result.st_uid, result.st_gid
        if op == "stat_times":
            result = self.call("stat", args[0], **(args[1] if len(args) > 1 else {}))
            return result.st_atime_ns, result.st_mtime_ns
        kwargs = args.pop() if args and isinstance(args[-1], dict) else {}
        result = self.call(op, *args, **kwargs)
        return self.normalise(op, result)

    def _session(
        self, path: Any, mode: str, actions: Sequence[Step], kwargs: dict[str, Any] | None = None
    ) -> list[Outcome]:
        out: list[Outcome] = []
        f = self.open(path, mode, **(kwargs or {}))
        try:
            for name, *args in actions:
                try:
                    if name == "fs":
                        out.append(self.run(args[0]))
                        continue
                    if name in FILE_OPS:
                        out.append(Outcome(self.file_op(f, name, *args)))
                        continue
                    attr = getattr(f, name)
                    out.append(Outcome(attr if name in ("mode", "closed") else attr(*args)))
                except (OSError, ValueError) as exc:
                    out.append(Outcome.caught(exc))
                    break
        finally:
            with contextlib.suppress(OSError, ValueError):
                f.close()
        return out

    def file_op(self, f: Any, name: str, *args: Any) -> Any:
        """One of ``FILE_OPS`` on the open file ``f``, its result normalised."""
        if name in ("fstat", "fstat_times", "fstat_owner"):
            result = self.fstat(f)
            if name == "fstat_times":
                return result.st_atime_ns, result.st_mtime_ns
            if name == "fstat_owner":
                return result.st_uid, result.st_gid
            return stat_view(result)
        self.fchange(f, name, *args)
        return None

    def fstat(self, f: Any) -> os.stat_result:
        raise NotImplementedError

    def fchange(self, f: Any, name: str, *args: Any) -> None:
        """fchmod, fchown, futime or ftruncate of ``f``."""
        raise NotImplementedError

    def normalise(self, op: str, result: Any) -> Any:
        if isinstance(result, os.stat_result):
            return stat_view(result)
        if op == "listdir":
            return sorted(result)
        if op == "readlink":
            return self.unroot(result)
        if op == "scandir":
            with result as entries:
                return sorted(self._entry(e) for e in entries)
        if op == "walk":
            return sorted(
                (self.unroot(top), sorted(dirs), sorted(files)) for top, dirs, files in result
            )
        return result

    def _entry(self, entry: Any) -> tuple[Any, ...]:
        def probe(call: Any) -> Any:
            try:
                return call()
            except OSError as exc:
                return f"errno {exc.errno}"

        return (
            entry.name,
            self.unroot(entry.path),
            probe(entry.is_dir),
            probe(lambda: entry.is_dir(follow_symlinks=False)),
            probe(entry.is_file),
            probe(lambda: entry.is_file(follow_symlinks=False)),
            probe(entry.is_symlink),
            probe(lambda: stat_view(entry.stat(follow_symlinks=False))),
        )

    def tree(self) -> dict[Any, Any]:
        """Every path under the root: stat view, and contents or link target."""
        out: dict[Any, Any] = {}
        todo = ["/"]
        while todo:
            top = todo.pop()
            for name in self.call("listdir", top):
                path = top.rstrip("/") + "/" + name
                view = stat_view(self.call("lstat", path))
                if view.kind == "dir":
                    todo.append(path)
                    out[path] = view
                elif view.kind == "link":
                    out[path] = (view, self.unroot(self.call("readlink", path)))
                else:
                    with self.open(path, "rb") as f:
                        out[path] = (view, f.read())
        return out


class DaxSide(Side):
    def __init__(self, fs: FileSystem) -> None:
        self.fs = fs

    def call(self, op: str, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.fs, op)(*args, **kwargs)

    def open(self, path: Any, mode: str, **kwargs: Any) -> Any:
        return self.fs.open(path, mode, **kwargs)

    def fstat(self, f: Any) -> os.stat_result:
        return cast(os.stat_result, getattr(f, "raw", f).stat())

    def fchange(self, f: Any, name: str, *args: Any) -> None:
        file = getattr(f, "raw", f)
        if name == "futime":
            file.utime(ns=args[0])
        else:
            getattr(file, name.removeprefix("f"))(*args)  # chmod, chown, truncate


class HostSide(Side):
    """os.* on a temporary directory standing for the root."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.broot = os.fsencode(root)
        self.dirfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)

    def close(self) -> None:
        os.close(self.dirfd)

    def p(self, path: Any) -> Any:
        if isinstance(path, bytes):
            return self.broot + (path if path.startswith(b"/") else b"/" + path)
        if isinstance(path, str):
            return self.root + (path if path.startswith("/") else "/" + path)
        return path

    def unroot(self, path: Any) -> Any:
        if isinstance(path, bytes) and path.startswith(self.broot):
            return path[len(self.broot) :] or b"/"
        if isinstance(path, str) and path.startswith(self.root):
            return path[len(self.root) :] or "/"
        return path

    def open(self, path: Any, mode: str, **kwargs: Any) -> Any:
        return open(self.p(path), mode, **kwargs)

    def fstat(self, f: Any) -> os.stat_result:
        return os.fstat(f.fileno())

    def fchange(self, f: Any, name: str, *args: Any) -> None:
        if name == "futime":
            os.utime(f.fileno(), ns=args[0])
        else:
            getattr(os, name)(f.fileno(), *args)

    def call(self, op: str, *args: Any, **kwargs: Any) -> Any:
        p = self.p
        if op == "symlink":
            target, path = args
            absolute = target.startswith(b"/" if isinstance(target, bytes) else "/")
            return os.symlink(p(target) if absolute else target, p(path))
        if op == "link":
            follow = kwargs.get("follow_symlinks", True)
            return os.link(p(args[0]), p(args[1]), src_dir_fd=self.dirfd, follow_symlinks=follow)
        if op in ("rename", "replace"):
            if kwargs:  # noreplace / exchange: renameat2(2)
                return renameat2(p(args[0]), p(args[1]), **kwargs)
            return getattr(os, op)(p(args[0]), p(args[1]))
        if op in ("exists", "isdir", "isfile", "islink"):
            return getattr(os.path, op)(p(args[0]))
        if op == "walk":
            return os.walk(p(args[0]), *args[1:], **kwargs)
        return getattr(os, op)(p(args[0]), *args[1:], **kwargs)


_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2


def renameat2(src: Any, dst: Any, *, noreplace: bool = False, exchange: bool = False) -> None:
    """renameat2(2) through libc (os has no renameat2).

    Raises:
        OSError: the kernel's errno (its builtin subclass), naming ``src``.
    """
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    flags = (_RENAME_NOREPLACE if noreplace else 0) | (_RENAME_EXCHANGE if exchange else 0)
    at_fdcwd = -100
    if libc.renameat2(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst), flags) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), src, None, dst)


def shown(path: Any) -> str:
    """How daxfs names ``path`` in a message."""
    text = os.fsdecode(path)
    return text.replace("\0", "?")


def check_error(
    host: BaseException, dax: BaseException | None, paths: list[Any], where: str
) -> None:
    if dax is None:
        raise AssertionError(f"{where}: host raised {host!r}, daxfs did not")
    assert isinstance(dax, type(host)), f"{where}: host raised {host!r}, daxfs {dax!r}"
    if isinstance(host, OSError) and host.errno is not None:
        assert dax.errno == host.errno, (  # type: ignore[attr-defined]
            f"{where}: host errno {errno.errorcode[host.errno]} ({host}), daxfs {dax!r}"
        )
    elif isinstance(dax, OSError) and dax.errno is not None and not isinstance(host, OSError):
        # where the host raises a bare ValueError, daxfs's is also OSError:
        # EINVAL for a bad argument (a NUL byte, ...), EBADF for a closed file
        assert dax.errno in (errno.EINVAL, errno.EBADF), f"{where}: {host!r}, daxfs {dax!r}"
    if isinstance(dax, DaxfsError) and paths:
        message = str(dax)
        assert any(shown(q) in message for q in paths), (
            f"{where}: message {message!r} names none of {paths!r}"
        )


def compare(host: Outcome, dax: Outcome, paths: list[Any], where: str) -> None:
    if host.exc is not None:
        try:
            check_error(host.exc, dax.exc, paths, where)
        except AssertionError as failed:
            raise AssertionError(f"{failed}\n{dax.where}") from None
        return
    if dax.exc is not None:
        raise AssertionError(f"{where}: host {host!r}, daxfs raised {dax.exc!r}\n{dax.where}")
    if isinstance(host.value, list) and host.value and isinstance(host.value[0], Outcome):
        assert len(dax.value) == len(host.value), f"{where}: host {host.value}, daxfs {dax.value}"
        for i, (h, d) in enumerate(zip(host.value, dax.value, strict=True)):
            compare(h, d, paths, f"{where} action {i}")
        return
    assert dax.value == host.value, f"{where}: host {host!r}, daxfs {dax!r}"


def step_paths(step: Step) -> list[Any]:
    return [a for a in step[1:] if isinstance(a, str | bytes)]


@contextlib.contextmanager
def host_umask() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def mirror_above_root(root: str) -> None:
    """In the parent of the directory ``root``, a link NAME -> ROOT/NAME for each of
    ``ABOVE_ROOT``: what "../NAME" from ``root`` then finds is ``root``'s own NAME,
    as daxfs's "/../NAME" is "/NAME"."""
    parent, base = os.path.split(root.rstrip("/"))
    for name in ABOVE_ROOT:
        os.symlink(f"{base}/{name}", os.path.join(parent, name))


#: makes a fresh side under test and the function that disposes of it
SideFactory = Callable[[], tuple["Side", Callable[[], None]]]


def dax_side() -> tuple[Side, Callable[[], None]]:
    """The Python API on a fresh 16 MiB SimulatedPmem."""
    dev = SimulatedPmem(SIZE)
    mkfs(dev)
    fs = mount(dev)
    return DaxSide(fs), lambda: close_device(fs, dev)


class Oracle(Closeable):
    """A fresh side under test (``make_side``: the API by default) and a fresh host
    directory, stepped together."""

    def __init__(self, make_side: SideFactory | None = None) -> None:
        self.tmp = tempfile.mkdtemp(prefix="daxfs-oracle-")
        with host_umask():
            os.mkdir(self.tmp + "/root")  # 0o755, as daxfs's root
        mirror_above_root(self.tmp + "/root")
        self.host = HostSide(self.tmp + "/root")
        self.dax, self._close_side = (make_side or dax_side)()

    def close(self) -> None:
        """Close both sides: every step runs even if one fails (the first error raised,
        the others notes on it); leaving a ``with`` by an exception never replaces it."""
        run_all([self.host.close, lambda: shutil.rmtree(self.tmp), self._close_side])

    def step(self, step: Step, where: str = "") -> Outcome:
        """Run one step on both sides and compare; return daxfs's outcome."""
        with host_umask():  # a side reached through os creates with the process's umask
            host = self.host.run(step)
            dax = self.dax.run(step)
        compare(host, dax, step_paths(step), f"{where}{step!r}")
        return dax

    def run(self, steps: Sequence[Step], check_tree: bool = True) -> list[Outcome]:
        out = [self.step(s, f"step {i}: ") for i, s in enumerate(steps)]
        if check_tree:
            self.check_tree()
        return out

    def check_tree(self) -> None:
        host, dax = self.host.tree(), self.dax.tree()
        assert dax == host, f"trees differ:\nhost  {host}\ndaxfs {dax}"


def run_steps(steps: Sequence[Step], make_side: SideFactory | None = None) -> list[Outcome]:
    with Oracle(make_side) as oracle:
        return oracle.run(steps)
