"""Threaded namespace stress: several threads create, rename, link, unlink, rmdir,
symlink, write, truncate, set or remove extended attributes and set or clear the
DAX flag, in private and shared directories, then everything is checked.

Theory of operation
-------------------
Each thread owns a private directory and keeps a model of it (paths to
directories, symbolic links, and files -- a file node is shared by its hard
links); after every operation there it checks the result against the model:
the errno it expected (ENOENT, EEXIST, ENOTEMPTY, ...) or the change, read
back at once.  The threads also work on a shared directory, where they race
each other: there any outcome is allowed as long as it is an OSError with an
errno the operation may give, and every file only ever holds zeros or 8-byte
*tags* some thread wrote (writes and truncates there are 8-byte aligned).

In the *full-disk* variant the device is small and the writes large, so the
filesystem fills: ENOSPC is then allowed for anything that needs space, must
change nothing (checked in the private directory), and must never come from
an operation that only frees space (unlink, rmdir, a shrinking truncate).

At the end, with every thread joined::

    1. each private directory equals its model (hard links: one inode)
    2. a walk of the whole tree: every name it lists can be looked up, each
       inode's link count equals the names that point at it (directories:
       2 + subdirectories), shared files hold only zeros and tags
    3. unmount, fsck must be clean, mount, and 1 and 2 again (durability)

``StressOptions(block=True)`` runs it on a simulated block device: the
filesystem through its buffer cache (daxfs.block.cache.BlockCache), whose
write-back and FLUSH the remount in 3 checks.

A failure is one line: the thread, its seed, the operation and its index;
the thread's sequence is kept for reproduction (interleavings are not
reproducible, each thread's own sequence of operations is).

Invariants
  1. Only its owner touches a private directory, so its model is exact at
     every moment, whatever the other threads do.
  2. Every 8-byte word a thread writes in the shared directory is a tag it
     recorded first (zeros aside), so a word nobody wrote is corruption.
  3. The first failure of a thread stops every thread (``Stress.stop``).
"""

from __future__ import annotations

import dataclasses
import errno
import posixpath
import random
import stat as st
import struct
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from daxfs.block.device import BlockDevice
from daxfs.fs.fsck import fsck
from daxfs.fs.mount import mkfs, mount
from daxfs.testing.simblock import SimulatedBlockDevice
from daxfs.testing.simulated import SimulatedPmem

if TYPE_CHECKING:
    from daxfs.fs.file import File as DaxFile
    from daxfs.fs.filesystem import FileSystem
    from daxfs.pmem.device import Device

NAMES = ("a", "b", "c", "d")
SHARED_NAMES = ("a", "b", "c", "d", "e", "f")
#: symbolic link targets in a private directory: all dangle, so that a link met as a
#: directory on a path is ENOENT (the model does not follow links)
PRIVATE_TARGETS = ("nowhere", "../nowhere", "/nowhere", "x" * 200)
#: in the shared directory links may resolve, loop (d0 -> d0) or dangle
SHARED_TARGETS = ("a", "../a", "/nowhere", "d0", "x" * 200)
#: errnos an operation in the shared directory may give (the others raced it)
SHARED_ERRNOS = frozenset(
    {
        errno.ENOENT,
        errno.EEXIST,
        errno.ENOTEMPTY,
        errno.ENOTDIR,
        errno.EISDIR,
        errno.EINVAL,
        errno.EPERM,
        errno.ELOOP,
    }
)
#: operations that only free space: ENOSPC from them is a bug
FREEING = frozenset({"unlink", "rmdir", "shrink", "punch", "removexattr"})
#: the share of extra operations on extended attributes of private files: drawn from a
#: random stream of their own (``Worker.xrng``), so that the other operations of a
#: seed are the same with or without them (``skip`` "xattr" turns them off)
XATTR_SHARE = 0.1
XATTR_NAMES = ("user.x", "user.y", "trusted.big")
XATTR_FLAGS = (0, 0, 1, 2)  # 0, XATTR_CREATE, XATTR_REPLACE
#: the share of extra set_dax operations (the per-inode DAX flag, inherited by what a
#: flagged directory gets made in it), from a stream of their own (``Worker.drng``;
#: ``skip`` "dax" turns them off)
DAX_SHARE = 0.05
BLOCK = 4096
PUNCH = 0x02 | 0x01  # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE


class File:
    """A regular file of a model: its contents, shared by its hard links."""

    __slots__ = ("data", "dax", "xattrs")

    def __init__(self, data: bytes = b"", dax: bool = False) -> None:
        self.data = data
        #: its extended attributes (name -> value), shared by its hard links too
        self.xattrs: dict[str, bytes] = {}
        #: its DAX flag (set_dax, or its directory's at create)
        self.dax = dax


class Dir:
    """A directory of a model: its DAX flag (it moves with the directory)."""

    __slots__ = ("dax",)

    def __init__(self, dax: bool = False) -> None:
        self.dax = dax


Entry = tuple[str, Any]  # ("dir", Dir) | ("link", target) | ("file", File)


@dataclasses.dataclass
class StressOptions:
    threads: int = 4
    full_disk: bool = False
    device_size: int = 32 << 20
    max_write: int = 48 << 10
    shared_share: float = 0.35  # fraction of operations in the shared directory
    headroom: int = 0  # full disk: a filler file leaves this many bytes free at the start
    switch_interval: float = 1e-5  # sys.setswitchinterval while the threads run
    skip: frozenset[str] = frozenset()  # private operation kinds not to make
    #: the default device is a SimulatedBlockDevice (the filesystem through its block
    #: cache) instead of a SimulatedPmem
    block: bool = False
    #: mounts of a block device bounded by this ``cache_size`` (daxfs.pagecache.bounded)
    cache_size: str | None = None

    @classmethod
    def full(
        cls, threads: int = 4, *, block: bool = False, cache_size: str | None = None
    ) -> StressOptions:
        return cls(
            threads=threads,
            block=block,
            cache_size=cache_size,
            full_disk=True,
            device_size=16 << 20,
            max_write=512 << 10,
            headroom=2 << 20,
        )


@dataclasses.dataclass
class StressStats:
    ops: int = 0
    errors: dict[str, int] = dataclasses.field(default_factory=dict)  # errno name -> count
    by_kind: dict[str, int] = dataclasses.field(default_factory=dict)
    checks: int = 0  # end-of-run checks passed (before and after remount)
    fences: int = 0  # bucket arrays the stat path built (odd seeds: see Stress)

    def summary(self) -> str:
        errs = ", ".join(f"{k} {v}" for k, v in sorted(self.errors.items()))
        return f"{self.ops} ops ({errs or 'no errors'}), {self.checks} end checks"


class StressFailure(AssertionError):
    """Failures of a run, one line each."""

    def __init__(self, seed: int, lines: list[str]) -> None:
        self.seed = seed
        self.lines = lines
        super().__init__(f"seed {seed}: {len(lines)} failure(s):\n" + "\n".join(lines))


class _Mismatch(Exception):
    pass


class Worker:
    """One thread's operations, model and log."""

    def __init__(self, run: Stress, index: int, seed: int) -> None:
        self.run = run
        self.index = index
        self.seed = seed
        self.rng = random.Random(seed)
        self.xrng = random.Random(seed * 7919 + 1)
        self.drng = random.Random(seed * 7919 + 2)
        self.root = f"{run.top}/p{index}"
        self.model: dict[str, Entry] = {}
        self.log: list[str] = []
        self.tags: list[int] = []
        self.errors: dict[str, int] = {}
        self.failure: str | None = None

    @property
    def fs(self) -> FileSystem:
        return self.run.fs

    # -- the loop ---------------------------------------------------------------------------

    def work(self, ops: int | None, deadline: float | None) -> None:
        n = 0
        while (ops is None or n < ops) and (deadline is None or time.monotonic() < deadline):
            if self.run.stop.is_set():
                return
            if "xattr" not in self.run.options.skip and self.xrng.random() < XATTR_SHARE:
                # not counted in ``ops``: the other operations stay those of the seed
                if not self._step(self.p_xattr):
                    return
                continue
            if "dax" not in self.run.options.skip and self.drng.random() < DAX_SHARE:
                if not self._step(self.p_dax):  # not counted either
                    return
                continue
            n += 1
            shared = self.rng.random() < self.run.options.shared_share
            if not self._step(self.shared_op if shared else self.private_op):
                return

    def _step(self, op: Callable[[], None]) -> bool:
        """Run one operation; False if it failed (the failure is recorded)."""
        try:
            op()
        except _Mismatch as exc:
            self.fail(str(exc))
            return False
        except BaseException as exc:
            self.fail(f"{type(exc).__name__}: {exc}")
            return False
        return True

    def fail(self, message: str) -> None:
        last = self.log[-1] if self.log else "?"
        self.failure = (
            f"thread {self.index} (seed {self.seed}) op #{len(self.log) - 1} [{last}]: {message}"
        )
        self.run.stop.set()

    def count(self, exc: OSError) -> None:
        name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        self.errors[name] = self.errors.get(name, 0) + 1

    # -- private directory: exact model -------------------------------------------------

    def path(self) -> str:
        rng = self.rng
        depth = rng.choice((1, 1, 2))
        return "/".join(rng.choice(NAMES) for _ in range(depth))

    #: private operations, weighted by repetition
    PRIVATE_KINDS = (
        *("create",) * 2,
        *("write",) * 3,
        "truncate",
        "punch",
        "link",
        *("unlink",) * 2,
        "mkdir",
        "rmdir",
        *("rename",) * 2,
        "exchange",
        "symlink",
    )
    ON_FILES = frozenset({"write", "truncate", "punch", "link"})

    def private_op(self) -> None:
        rng = self.rng
        kind = rng.choice([k for k in self.PRIVATE_KINDS if k not in self.run.options.skip])
        a, b = self.path(), self.path()
        if kind in self.ON_FILES and rng.random() < 0.8:
            files = sorted(p for p, e in self.model.items() if e[0] == "file")
            if files:
                a = rng.choice(files)
        getattr(self, f"p_{kind}")(a, b)

    def expect(self, kind: str, detail: str, call: Callable[[], Any], errno_: int | None) -> bool:
        """Run ``call``; it must raise ``errno_`` (None: succeed).  True if it succeeded.

        ENOSPC on a full disk is allowed instead of success (except for operations
        that only free space); it returns False and the caller checks nothing changed.
        """
        self.log.append(f"{kind} {detail}")
        self.run.count_op(kind)
        try:
            call()
        except OSError as exc:
            self.count(exc)
            if exc.errno == errno_:
                return False
            if exc.errno == errno.ENOSPC and self.run.options.full_disk and errno_ is None:
                if kind in FREEING:
                    raise _Mismatch(f"{kind} failed with ENOSPC on a full disk: {exc}") from exc
                return False
            raise _Mismatch(f"expected {_name(errno_)}, got {exc!r}") from exc
        if errno_ is not None:
            raise _Mismatch(f"expected {_name(errno_)}, but it succeeded")
        return True

    def full(self, rel: str) -> str:
        return f"{self.root}/{rel}"

    def parent_ok(self, rel: str) -> int | None:
        """None if ``rel``'s parent is a directory of the model, else the errno."""
        parent = posixpath.dirname(rel)
        if not parent:
            return None
        entry = self.model.get(parent)
        if entry is None or entry[0] == "link":  # links dangle: ENOENT
            return errno.ENOENT
        return None if entry[0] == "dir" else errno.ENOTDIR

    def children(self, rel: str) -> list[str]:
        return [p for p in self.model if p.startswith(rel + "/")]

    def data(self, length: int) -> bytes:
        return self.rng.randbytes(length)

    def write_size(self) -> int:
        top = self.run.options.max_write
        return self.rng.choice((self.rng.randint(0, 5000), self.rng.randint(0, top)))

    def wrote(self, n: int, want: int) -> int:
        """``n`` bytes of ``want`` were written: short only on a full disk (as write(2))."""
        if n != want and not (self.run.options.full_disk and 0 < n < want):
            raise _Mismatch(f"short write: {n} of {want} bytes")
        return n

    def p_create(self, a: str, _b: str) -> None:
        data = self.data(self.write_size())
        err = self.parent_ok(a) or (errno.EEXIST if a in self.model else None)
        written = [0]

        def call() -> None:
            with _raw(self.fs.open(self.full(a), "xb", buffering=0)) as f:
                written[0] = -1  # created, nothing written yet
                written[0] = self.wrote(f.write(data), len(data)) if data else 0

        if self.expect("create", f"{a} {len(data)}", call, err):
            self.model[a] = ("file", File(data[: written[0]], self.inherits(a)))
        elif written[0] == -1:  # ENOSPC from the write: the file exists, empty
            self.model[a] = ("file", File(b"", self.inherits(a)))
        self.verify(a)

    def p_write(self, a: str, _b: str) -> None:
        entry = self.model.get(a)
        if entry is None or entry[0] != "file":
            return
        node: File = entry[1]
        rng = self.rng
        if rng.random() < 0.5:  # somewhere, or a few blocks past the end (a hole)
            offset = rng.randint(0, len(node.data) + 4096)
        else:
            offset = BLOCK * rng.randint(0, len(node.data) // BLOCK + 16)
        chunk = self.data(self.write_size())
        written = [0]

        def call() -> None:
            with _raw(self.fs.open(self.full(a), "rb+", buffering=0)) as f:
                written[0] = self.wrote(f.pwrite(chunk, offset), len(chunk)) if chunk else 0

        if self.expect("write", f"{a} {offset}+{len(chunk)}", call, None):
            piece = chunk[: written[0]]
            old = node.data
            if piece:
                grown = old + bytes(max(0, offset - len(old)))
                node.data = grown[:offset] + piece + grown[offset + len(piece) :]
        self.verify(a)

    def p_truncate(self, a: str, _b: str) -> None:
        entry = self.model.get(a)
        if entry is None or entry[0] != "file":
            return
        node: File = entry[1]
        size = self.rng.randint(0, len(node.data) + 8192)
        kind = "shrink" if size <= len(node.data) else "truncate"
        if self.expect(kind, f"{a} {size}", lambda: self.fs.truncate(self.full(a), size), None):
            node.data = node.data[:size] + bytes(max(0, size - len(node.data)))
        self.verify(a)

    def p_punch(self, a: str, _b: str) -> None:
        """Punch one or a few blocks: files fragment, maps grow into B+trees."""
        entry = self.model.get(a)
        if entry is None or entry[0] != "file" or not entry[1].data:
            return
        node: File = entry[1]
        rng = self.rng
        offset = BLOCK * rng.randrange(-(-len(node.data) // BLOCK))
        length = BLOCK * rng.randint(1, 3)

        def call() -> None:
            with _raw(self.fs.open(self.full(a), "rb+", buffering=0)) as f:
                f.fallocate(offset, length, PUNCH)

        if self.expect("punch", f"{a} {offset}+{length}", call, None):
            hi = min(offset + length, len(node.data))
            node.data = node.data[:offset] + bytes(hi - offset) + node.data[hi:]
        self.verify(a)

    def p_link(self, a: str, b: str) -> None:
        entry = self.model.get(a)
        if entry is None or entry[0] != "file":
            return
        err = self.parent_ok(b) or (errno.EEXIST if b in self.model else None)
        if self.expect("link", f"{a} {b}", lambda: self.fs.link(self.full(a), self.full(b)), err):
            self.model[b] = entry
        self.verify(a)
        self.verify(b)

    def p_unlink(self, a: str, _b: str) -> None:
        entry = self.model.get(a)
        if entry is None:
            err: int | None = self.parent_ok(a) or errno.ENOENT
        else:
            err = errno.EISDIR if entry[0] == "dir" else None
        if self.expect("unlink", a, lambda: self.fs.unlink(self.full(a)), err):
            del self.model[a]
        self.verify(a)

    def p_xattr(self, _a: str = "", _b: str = "") -> None:
        """Set (with a flag) or remove an extended attribute of a private file."""
        rng = self.xrng
        files = sorted(p for p, e in self.model.items() if e[0] == "file")
        if not files:
            return
        a = rng.choice(files)
        node: File = self.model[a][1]
        name = rng.choice(XATTR_NAMES)
        path = self.full(a)
        if rng.random() < 0.3:
            err = None if name in node.xattrs else errno.ENODATA
            if self.expect(
                "removexattr", f"{a} {name}", lambda: self.fs.removexattr(path, name), err
            ):
                del node.xattrs[name]
        else:
            flags = rng.choice(XATTR_FLAGS)
            top = 20000 if name == "trusted.big" else 600
            if rng.random() < 0.4:  # small enough for the inode record (inline)
                top = 40
            value = rng.randbytes(rng.randint(0, top))
            err = None
            if flags == 1 and name in node.xattrs:
                err = errno.EEXIST
            elif flags == 2 and name not in node.xattrs:
                err = errno.ENODATA
            detail = f"{a} {name} {len(value)} flags {flags}"
            if self.expect(
                "setxattr", detail, lambda: self.fs.setxattr(path, name, value, flags), err
            ):
                node.xattrs[name] = value
        self.verify(a)

    def inherits(self, rel: str) -> bool:
        """The DAX flag something new at ``rel`` gets: its directory's."""
        parent = posixpath.dirname(rel)
        return bool(parent) and self.model[parent][1].dax

    def p_dax(self) -> None:
        """Set or clear the DAX flag of a private file or directory (or of a name that
        is absent, a dangling link or under a file: the errno)."""
        rng = self.drng
        names = sorted(self.model)
        a = rng.choice(names) if names and rng.random() < 0.9 else rng.choice(NAMES)
        on = rng.random() < 0.6
        entry = self.model.get(a)
        if entry is None:
            err: int | None = self.parent_ok(a) or errno.ENOENT
        else:
            err = errno.ENOENT if entry[0] == "link" else None  # private links dangle
        if self.expect("set_dax", f"{a} {on}", lambda: self.fs.set_dax(self.full(a), on), err):
            assert entry is not None
            entry[1].dax = on
        self.verify(a)

    def p_mkdir(self, a: str, _b: str) -> None:
        err = self.parent_ok(a) or (errno.EEXIST if a in self.model else None)
        if self.expect("mkdir", a, lambda: self.fs.mkdir(self.full(a)), err):
            self.model[a] = ("dir", Dir(self.inherits(a)))
        self.verify(a)

    def p_rmdir(self, a: str, _b: str) -> None:
        entry = self.model.get(a)
        if entry is None:
            err: int | None = self.parent_ok(a) or errno.ENOENT
        elif entry[0] != "dir":
            err = errno.ENOTDIR
        else:
            err = errno.ENOTEMPTY if self.children(a) else None
        if self.expect("rmdir", a, lambda: self.fs.rmdir(self.full(a)), err):
            del self.model[a]
        self.verify(a)

    def p_symlink(self, a: str, _b: str) -> None:
        target = self.rng.choice(PRIVATE_TARGETS)
        err = self.parent_ok(a) or (errno.EEXIST if a in self.model else None)
        if self.expect(
            "symlink", f"{target[:20]} {a}", lambda: self.fs.symlink(target, self.full(a)), err
        ):
            self.model[a] = ("link", target)
        self.verify(a)

    def p_rename(self, a: str, b: str) -> None:
        err = self.rename_errno(a, b)
        if self.expect(
            "rename", f"{a} {b}", lambda: self.fs.rename(self.full(a), self.full(b)), err
        ):
            src, dst = self.model.get(a), self.model.get(b)
            if not (
                a == b
                or (src is not None and dst is not None and src[1] is dst[1] and src[0] == "file")
            ):
                moved = {a: self.model.pop(a)}
                for p in self.children(a):
                    moved[p] = self.model.pop(p)
                for p in self.children(b):
                    del self.model[p]
                self.model.pop(b, None)
                for p, v in moved.items():
                    self.model[b + p[len(a) :]] = v
        self.verify(a)
        self.verify(b)

    def p_exchange(self, a: str, b: str) -> None:
        """renameat2 with RENAME_EXCHANGE: the two subtrees swap names."""
        err = self.exchange_errno(a, b)
        call = lambda: self.fs.rename(self.full(a), self.full(b), exchange=True)  # noqa: E731
        if self.expect("exchange", f"{a} {b}", call, err):
            src, dst = self.model[a], self.model[b]
            if not (a == b or (src[1] is dst[1] and src[0] == "file")):
                trees = {}
                for top in (a, b):
                    trees[top] = {p: self.model.pop(p) for p in [top, *self.children(top)]}
                for top, other in ((a, b), (b, a)):
                    for p, v in trees[top].items():
                        self.model[other + p[len(top) :]] = v
        for rel in (a, b):
            self.verify(rel)
            for p in self.children(rel):
                self.verify(p)

    def exchange_errno(self, a: str, b: str) -> int | None:
        """As Linux's renameat2 with RENAME_EXCHANGE: parents, then both names, then
        neither may be an ancestor of the other (EINVAL)."""
        err = self.parent_ok(a) or self.parent_ok(b)
        if err is not None:
            return err
        if a not in self.model or b not in self.model:
            return errno.ENOENT
        if a != b and ((b + "/").startswith(a + "/") or (a + "/").startswith(b + "/")):
            return errno.EINVAL
        return None

    def rename_errno(self, a: str, b: str) -> int | None:
        """As Linux's renameat2: both parents first, then the source, then the target."""
        err = self.parent_ok(a) or self.parent_ok(b)
        if err is not None:
            return err
        src = self.model.get(a)
        if src is None:
            return errno.ENOENT
        if a == b:
            return None
        if src[0] == "dir" and (b + "/").startswith(a + "/"):
            return errno.EINVAL  # the source is an ancestor of the target
        if a.startswith(b + "/"):
            return errno.ENOTEMPTY  # the target is an ancestor of the source
        dst = self.model.get(b)
        if dst is None:
            return None
        if src[0] == "dir":
            if dst[0] != "dir":
                return errno.ENOTDIR
            return errno.ENOTEMPTY if self.children(b) else None
        if dst[0] == "dir":
            return errno.EISDIR
        return None

    def verify(self, rel: str) -> None:
        """``rel`` is what the model says (absent, a directory, a link, a file's bytes)."""
        entry = self.model.get(rel)
        path = self.full(rel)
        try:
            s = self.fs.lstat(path)
        except OSError as exc:
            if entry is None and exc.errno in (errno.ENOENT, errno.ENOTDIR):
                return
            raise _Mismatch(f"{rel}: lstat raised {exc!r}, model has {entry}") from exc
        if entry is None:
            raise _Mismatch(f"{rel} exists, the model says it does not")
        kind, value = entry
        if kind == "dir" and not st.S_ISDIR(s.st_mode):
            raise _Mismatch(f"{rel}: not a directory")
        if kind != "link" and self.fs.get_dax(path).flag != value.dax:
            raise _Mismatch(f"{rel}: DAX flag {not value.dax}, expected {value.dax}")
        if kind != "link":  # stat follows links: here the same inode as lstat's
            followed = self.fs.stat(path)
            if (followed.st_ino, followed.st_mode, followed.st_size) != (
                s.st_ino,
                s.st_mode,
                s.st_size,
            ):
                raise _Mismatch(f"{rel}: stat {followed} differs from lstat {s}")
        if kind == "link":
            got = self.fs.readlink(path) if st.S_ISLNK(s.st_mode) else None
            if got != value:
                raise _Mismatch(f"{rel}: link target {got!r}, expected {value!r}")
        if kind == "file":
            with self.fs.open(path, "rb") as f:
                data = f.read()
            if data != value.data or s.st_size != len(value.data):
                raise _Mismatch(
                    f"{rel}: {len(data)} bytes, expected {len(value.data)} (contents differ)"
                )
            attrs = {n: self.fs.getxattr(path, n) for n in self.fs.listxattr(path)}
            if attrs != value.xattrs:
                have = {n: len(v) for n, v in attrs.items()}
                want = {n: len(v) for n, v in value.xattrs.items()}
                raise _Mismatch(f"{rel}: xattrs {have} (lengths), expected {want}")

    # -- shared directory: races, loose checks ----------------------------------------------

    def shared_path(self) -> str:
        rng = self.rng
        top = self.run.top + "/shared"
        if rng.random() < 0.6:
            return f"{top}/{rng.choice(SHARED_NAMES)}"
        return f"{top}/d{rng.randrange(2)}/{rng.choice(SHARED_NAMES)}"

    def tag_data(self, words: int) -> bytes:
        tag = ((self.index + 1) << 48) | len(self.tags)
        self.tags.append(tag)
        return struct.pack("<Q", tag) * words

    def shared_op(self) -> None:
        rng = self.rng
        kind = rng.choice(
            (
                "create",
                "write",
                "truncate",
                "link",
                "unlink",
                "mkdir",
                "rmdir",
                "rename",
                "exchange",
                "symlink",
            )
        )
        a, b = self.shared_path(), self.shared_path()
        fs = self.fs
        self.log.append(f"shared {kind} {a} {b}")
        self.run.count_op("shared " + kind)
        top = max(1, self.run.options.max_write // 8)
        try:
            if kind == "create":
                data = self.tag_data(rng.randint(0, min(top, 1024)))
                with fs.open(a, "xb", buffering=0) as f:
                    f.write(data)
            elif kind == "write":
                data = self.tag_data(rng.randint(1, top))
                with _raw(fs.open(a, "rb+", buffering=0)) as f:
                    f.pwrite(data, 8 * rng.randrange(2048))
            elif kind == "truncate":
                fs.truncate(a, 8 * rng.randrange(4096))
            elif kind == "link":
                fs.link(a, b)
            elif kind == "unlink":
                fs.unlink(a)
            elif kind == "mkdir":
                fs.mkdir(a)
            elif kind == "rmdir":
                fs.rmdir(a)
            elif kind == "rename":
                fs.rename(a, b)
            elif kind == "exchange":
                fs.rename(a, b, exchange=True)
            else:
                fs.symlink(rng.choice(SHARED_TARGETS), a)
        except OSError as exc:
            self.count(exc)
            allowed = exc.errno in SHARED_ERRNOS or (
                exc.errno == errno.ENOSPC and self.run.options.full_disk
            )
            if not allowed:
                raise _Mismatch(f"shared {kind}: {exc!r}") from exc
            if exc.errno == errno.ENOSPC and kind in ("unlink", "rmdir"):
                raise _Mismatch(f"shared {kind} failed with ENOSPC: {exc!r}") from exc


def _raw(f: Any) -> DaxFile:
    """A file opened with buffering=0: the raw daxfs File (pwrite, pread)."""
    return cast("DaxFile", f)


def _name(code: int | None) -> str:
    return "success" if code is None else errno.errorcode.get(code, str(code))


class Stress:
    """A threaded namespace stress run over one filesystem."""

    def __init__(
        self,
        seed: int,
        options: StressOptions | None = None,
        *,
        device: Device | BlockDevice | str | None = None,
        top: str = "",
    ) -> None:
        self.seed = seed
        self.options = options or StressOptions()
        if device is None:
            device = simulated(self.options.device_size, self.options.block)
            mkfs(device)
        self.dev = device
        self.top = top
        self.stop = threading.Event()
        self._ops = 0
        self.by_kind: dict[str, int] = {}
        self._ops_lock = threading.Lock()
        self.fs = self._mount(device)
        # odd seeds probe every directory index through a bucket array (the C stat
        # path's fence, daxfs/fs/_stat.c, which only directories of 4,096 names get
        # otherwise), rebuilt whenever the threads' creates and unlinks merge an index
        fast = self.fs._fast
        if fast is not None and seed % 2:
            fast.fence_min = 1
        if top:
            self.fs.mkdir(top)
        self.fs.makedirs(f"{top}/shared/d0")
        self.fs.makedirs(f"{top}/shared/d1")
        if self.options.headroom:
            self._fill(f"{top}/filler", self.options.headroom)
        rng = random.Random(seed)
        self.workers = [
            Worker(self, i, rng.randrange(1 << 31)) for i in range(self.options.threads)
        ]
        for w in self.workers:
            self.fs.mkdir(w.root)

    def _mount(self, device: Device | BlockDevice | str) -> FileSystem:
        """mount, bounded by ``options.cache_size`` on a block device."""
        bounded = self.options.cache_size if isinstance(device, BlockDevice) else None
        return mount(device, cache_size=bounded)

    def _fill(self, path: str, headroom: int) -> None:
        """A file that leaves about ``headroom`` bytes free."""
        sv = self.fs.statvfs("/")
        size = max(0, sv.f_bfree * sv.f_bsize - headroom)
        with _raw(self.fs.open(path, "wb", buffering=0)) as f:
            chunk = bytes(1 << 20)
            done = 0
            while done < size:
                done += f.write(chunk[: min(len(chunk), size - done)])

    def count_op(self, kind: str) -> None:
        with self._ops_lock:
            self._ops += 1
            self.by_kind[kind] = self.by_kind.get(kind, 0) + 1

    def run(self, ops: int | None = None, seconds: float | None = None) -> StressStats:
        """Run every thread (``ops`` each, or for ``seconds``), then check everything.

        Raises:
            StressFailure: one line per failure.
        """
        deadline = None if seconds is None else time.monotonic() + seconds
        threads = [
            threading.Thread(target=w.work, args=(ops, deadline), name=f"stress-{w.index}")
            for w in self.workers
        ]
        interval = sys.getswitchinterval()
        sys.setswitchinterval(self.options.switch_interval)  # interleave finely
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        finally:
            sys.setswitchinterval(interval)
        lines = [w.failure for w in self.workers if w.failure]
        stats = StressStats(ops=self._ops, by_kind=dict(self.by_kind))
        fast = self.fs._fast
        stats.fences = fast.fences if fast is not None else 0
        for w in self.workers:
            for k, v in w.errors.items():
                stats.errors[k] = stats.errors.get(k, 0) + v
        if not lines:
            lines = self.check_all("at the end")
            stats.checks += not lines
        if not lines:
            self.fs.unmount()
            report = fsck(self.dev)
            if not report.clean:
                lines = [f"fsck after the run: {p}" for p in str(report).splitlines()]
            else:
                self.fs = self._mount(self.dev)
                lines = self.check_all("after remount")
                stats.checks += not lines
                self.fs.unmount()
        else:
            self._unmount_quietly()
        if lines:
            raise StressFailure(self.seed, lines)
        return stats

    def _unmount_quietly(self) -> None:
        try:
            for f in self.fs.open_files():
                f.close()
            self.fs.unmount()
        except OSError:
            pass

    # -- end checks ---------------------------------------------------------------------

    def check_all(self, when: str) -> list[str]:
        lines: list[str] = []
        for w in self.workers:
            lines.extend(f"{when}: {x}" for x in self.check_private(w))
        lines.extend(f"{when}: {x}" for x in self.check_tree())
        return lines

    def check_private(self, w: Worker) -> list[str]:
        out: list[str] = []
        seen: dict[str, int] = {}
        for rel in sorted(w.model):
            try:
                w.verify(rel)
            except _Mismatch as exc:
                out.append(f"thread {w.index} (seed {w.seed}): {exc}")
            except OSError as exc:
                out.append(f"thread {w.index} (seed {w.seed}): {rel}: {exc!r}")
        listed = self.listed(w.root)
        extra = sorted(set(listed) - set(w.model))
        if extra:
            out.append(f"thread {w.index} (seed {w.seed}): names not in the model: {extra[:5]}")
        for rel, (kind, value) in w.model.items():
            if kind == "file":
                ino = self.fs.lstat(w.full(rel)).st_ino
                key = str(id(value))
                if seen.setdefault(key, ino) != ino:
                    out.append(f"thread {w.index}: hard links of one file have two inodes ({rel})")
        return out

    def listed(self, root: str) -> list[str]:
        """Relative paths below ``root`` (directories not followed through links)."""
        out = []
        stack = [""]
        while stack:
            rel = stack.pop()
            for name in self.fs.listdir(f"{root}/{rel}" if rel else root):
                child = f"{rel}/{name}" if rel else name
                out.append(child)
                if st.S_ISDIR(self.fs.lstat(f"{root}/{child}").st_mode):
                    stack.append(child)
        return out

    def check_tree(self) -> list[str]:
        """Every name resolves; link counts equal names; shared files hold only tags."""
        out: list[str] = []
        names: dict[int, int] = {}
        subdirs: dict[int, int] = {}
        kinds: dict[int, tuple[str, int]] = {}
        tags = {0}
        for w in self.workers:
            tags.update(w.tags)
        root_ino = self.fs.lstat("/").st_ino
        stack = ["/"]
        visited = {root_ino}
        while stack and len(out) < 20:
            path = stack.pop()
            d_ino = self.fs.lstat(path).st_ino
            for name in self.fs.listdir(path):
                child = posixpath.join(path, name)
                try:
                    s = self.fs.lstat(child)
                except OSError as exc:
                    out.append(f"{child} is listed but lstat raised {exc!r}")
                    continue
                names[s.st_ino] = names.get(s.st_ino, 0) + 1
                kinds[s.st_ino] = (child, s.st_nlink)
                if st.S_ISDIR(s.st_mode):
                    subdirs[d_ino] = subdirs.get(d_ino, 0) + 1
                    if s.st_ino in visited:
                        out.append(f"{child}: directory reached twice (inode {s.st_ino})")
                        continue
                    visited.add(s.st_ino)
                    stack.append(child)
                elif st.S_ISREG(s.st_mode) and "/shared/" in child:
                    with self.fs.open(child, "rb") as f:
                        data = f.read()
                    if len(data) % 8:
                        out.append(f"{child}: size {len(data)} is not a multiple of 8")
                    else:
                        bad = {w for (w,) in struct.iter_unpack("<Q", data)} - tags
                        if bad:
                            out.append(f"{child}: words no thread wrote: {sorted(bad)[:3]}")
        for ino, (path, nlink) in kinds.items():
            s = self.fs.lstat(path)
            want = 2 + subdirs.get(ino, 0) if st.S_ISDIR(s.st_mode) else names[ino]
            if nlink != want:
                out.append(f"{path}: link count {nlink}, {want} expected")
        return out


def simulated(size: int, block: bool) -> SimulatedPmem | SimulatedBlockDevice:
    """An empty simulated device: a block device (through the cache) or pmem."""
    return SimulatedBlockDevice(size) if block else SimulatedPmem(size)


def run(
    seed: int,
    *,
    ops: int | None = None,
    seconds: float | None = None,
    options: StressOptions | None = None,
    device: Device | BlockDevice | str | None = None,
    top: str = "",
) -> StressStats:
    """One stress run; see the module docstring.

    Raises:
        StressFailure: one line per failure, with the seeds.
    """
    return Stress(seed, options, device=device, top=top).run(ops, seconds)
