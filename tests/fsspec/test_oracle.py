"""DaxFileSystem against fsspec's LocalFileSystem on a host directory (Hypothesis state
machine): the same random fsspec calls on both, the same answers or the same errno.

The host filesystem is the oracle (STYLE.md): pipe_file, cat_file ranges, open
and append, writes at an offset through "rb+", reads of ranges through a file
object, a write read back through a second file object opened while the
first is still open (after its flush, and again after its close), ls and
info, mkdir, makedirs, touch, cp_file, mv, rm (recursive or not) over a few
names two levels deep, compared call by call, and the zero-copy reads
(cat_buffer, pyarrow's read_buffer: pinned device memory) against the host's
cat_file and read; after each step both trees
list the same names with the same types and file sizes.  At the end fsck finds
the image clean.  Where LocalFileSystem answers with something that is not an
OSError or has no errno (ValueError for rm of a directory, shutil.Error and
SameFileError), only "both failed" is compared.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

import daxfs
from daxfs.fsspec import DaxFileSystem, _files, _mounts

fsspec = pytest.importorskip("fsspec")
from fsspec.implementations.local import LocalFileSystem  # noqa: E402

NAMES = ["a", "b", "a/c", "a/d", "b/c", "e"]
paths = st.sampled_from(NAMES)
data = st.binary(max_size=9000)
ends = st.one_of(st.none(), st.integers(-10_000, 10_000))
offsets = st.integers(0, 12_000)
sizes = st.integers(-1, 12_000)


def outcome(call: Callable[[], Any]) -> tuple[str, Any]:
    """("ok", result) or ("error", errno or the exception type's name)."""
    try:
        return "ok", call()
    except OSError as exc:
        return "error", exc.errno if exc.errno is not None else type(exc).__name__
    except ValueError as exc:
        return "error", type(exc).__name__


def agree(dax: tuple[str, Any], host: tuple[str, Any]) -> bool:
    if dax[0] != host[0]:
        return False
    if dax[0] == "ok":
        return bool(dax[1] == host[1])
    # both failed: the same errno, unless the host's error has none; where a parent is
    # a file, the host's auto_mkdir fails in its makedirs (EEXIST), daxfs as open(2) would
    return isinstance(host[1], str) or dax[1] == host[1] or (dax[1], host[1]) == EXISTS_AS_FILE


EXISTS_AS_FILE = (errno.ENOTDIR, errno.EEXIST)


class AgainstTheHost(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.host_dir = tempfile.mkdtemp(prefix="daxfs-oracle-")
        self.image = os.path.join("/dev/shm", os.path.basename(self.host_dir) + ".img")
        daxfs.mkfs(self.image, 32 << 20)
        # zero copy on, from 1 byte up: pyarrow's read_buffer pins what it can
        self.dax = DaxFileSystem(
            self.image, persist="cpu", zero_copy=True, skip_instance_cache=True
        )
        self.host = LocalFileSystem(auto_mkdir=True)
        self.zero_copy_min, _files.ZERO_COPY_MIN = _files.ZERO_COPY_MIN, 1

    def both(self, name: str, *args: Any, **kwargs: Any) -> tuple[str, Any]:
        """Run method ``name`` on both, paths (str args) mapped; return daxfs's outcome."""
        dax_args = [f"/{a}" if isinstance(a, str) and a in NAMES else a for a in args]
        host_args = [
            os.path.join(self.host_dir, a) if isinstance(a, str) and a in NAMES else a for a in args
        ]
        dax = outcome(lambda: getattr(self.dax, name)(*dax_args, **kwargs))
        host = outcome(lambda: getattr(self.host, name)(*host_args, **kwargs))
        assert agree(dax, host), f"{name}{tuple(args)} {kwargs}: daxfs {dax}, host {host}"
        return dax

    @rule(path=paths, value=data)
    def pipe_file(self, path: str, value: bytes) -> None:
        self.both("pipe_file", path, value)

    @rule(path=paths, value=data)
    def pipe_file_create(self, path: str, value: bytes) -> None:
        self.both("pipe_file", path, value, mode="create")

    @rule(path=paths, start=ends, end=ends)
    def cat_file(self, path: str, start: int | None, end: int | None) -> None:
        # fsspec documents start and end as Python slice bounds; its default cat_file
        # (the host's) raises ValueError for some (a negative length), so the oracle
        # is the host's whole file, sliced
        dax = outcome(lambda: self.dax.cat_file(f"/{path}", start, end))
        host = outcome(lambda: self.host.cat_file(os.path.join(self.host_dir, path)))
        if host[0] == "ok":
            host = ("ok", host[1][start:end])
        assert agree(dax, host), f"cat_file {path}[{start}:{end}]: daxfs {dax}, host {host}"

    @rule(path=paths, value=data)
    def append(self, path: str, value: bytes) -> None:
        def write(fs: Any, p: str) -> None:
            with fs.open(p, "ab") as f:
                f.write(value)

        dax = outcome(lambda: write(self.dax, f"/{path}"))
        host = outcome(lambda: write(self.host, os.path.join(self.host_dir, path)))
        assert agree(dax, host), f"append {path}: daxfs {dax}, host {host}"

    def on_both(self, path: str, call: Callable[[Any, str], Any]) -> tuple[str, Any]:
        """``call(fs, path)`` on both (the path mapped); daxfs's outcome, checked to agree."""
        dax = outcome(lambda: call(self.dax, f"/{path}"))
        host = outcome(lambda: call(self.host, os.path.join(self.host_dir, path)))
        assert agree(dax, host), f"{path}: daxfs {dax}, host {host}"
        return dax

    @rule(path=paths, offset=offsets, value=data)
    def write_at(self, path: str, offset: int, value: bytes) -> None:
        def write(fs: Any, p: str) -> int:
            with fs.open(p, "rb+") as f:
                f.seek(offset)
                f.write(value)
                return int(f.tell())

        self.on_both(path, write)

    @rule(path=paths, offset=offsets, size=sizes)
    def read_at(self, path: str, offset: int, size: int) -> None:
        def read(fs: Any, p: str) -> tuple[bytes, int]:
            with fs.open(p, "rb") as f:
                f.seek(offset)
                got = f.read(size)
                return got, int(f.tell())

        self.on_both(path, read)

    @rule(path=paths, value=data, offset=offsets, size=sizes, mode=st.sampled_from(["ab", "rb+"]))
    def read_through_a_second_file(
        self, path: str, value: bytes, offset: int, size: int, mode: str
    ) -> None:
        def write_then_read(fs: Any, p: str) -> tuple[bytes, bytes]:
            with fs.open(p, mode) as writer:
                writer.write(value)
                writer.flush()  # flushed: a second file object sees it
                with fs.open(p, "rb") as reader:
                    reader.seek(offset)
                    flushed = reader.read(size)
                writer.write(value[::-1])  # still in the buffer until the close
            with fs.open(p, "rb") as reader:
                reader.seek(offset)
                closed = reader.read(size)
            return flushed, closed

        self.on_both(path, write_then_read)

    def a_file(self, choice: st.DataObject) -> str:
        """One of the names that is a file now, on both (the zero-copy rules read
        files; what they do with other names, cat_file's rule covers); if there is
        none, ``e`` is made one (when ``e`` is a directory, pipe_file fails alike on both)."""
        files = [n for n in NAMES if os.path.isfile(os.path.join(self.host_dir, n))]
        if files:
            return choice.draw(st.sampled_from(files))
        self.both("pipe_file", "e", choice.draw(data))
        return "e"

    @rule(choice=st.data(), start=ends, end=ends)
    def cat_buffer(self, choice: st.DataObject, start: int | None, end: int | None) -> None:
        path = self.a_file(choice)
        # zero copy: a pinned view of device memory (or one copy, for several extents),
        # dropped at once so that later writes do not wait for its pin
        dax = outcome(lambda: self.dax.cat_buffer(f"/{path}", start, end).to_pybytes())
        host = outcome(lambda: self.host.cat_file(os.path.join(self.host_dir, path)))
        if host[0] == "ok":
            host = ("ok", host[1][start:end])
        assert agree(dax, host), f"cat_buffer {path}[{start}:{end}]: daxfs {dax}, host {host}"

    @rule(choice=st.data(), offset=st.integers(0, 10_000), size=sizes)
    def read_buffer(self, choice: st.DataObject, offset: int, size: int) -> None:
        path = self.a_file(choice)

        # pyarrow's hook (daxfs: pinned when the range is one extent), against read()
        def dax_read(p: str) -> tuple[bytes, int]:
            with self.dax.open(p, "rb") as f:
                f.seek(offset)
                got = f.read_buffer(size).to_pybytes()
                return got, int(f.tell())

        def host_read(p: str) -> tuple[bytes, int]:
            with self.host.open(p, "rb") as f:
                f.seek(offset)
                got = f.read(size)
                return got, int(f.tell())

        dax = outcome(lambda: dax_read(f"/{path}"))
        host = outcome(lambda: host_read(os.path.join(self.host_dir, path)))
        assert agree(dax, host), f"read_buffer {path} {offset}+{size}: daxfs {dax}, host {host}"

    @rule(path=paths)
    def ls(self, path: str) -> None:
        def listing(fs: Any, p: str) -> list[tuple[str, str, int]]:
            return [
                (
                    os.path.basename(info["name"].rstrip("/")),
                    info["type"],
                    info["size"] if info["type"] == "file" else 0,
                )
                for info in sorted(fs.ls(p, detail=True), key=lambda i: i["name"])
            ]

        self.on_both(path, listing)

    @rule(path=paths)
    def info(self, path: str) -> None:
        def look(fs: Any, p: str) -> tuple[str, int, bool, bool]:
            info = fs.info(p)
            size = info["size"] if info["type"] == "file" else 0
            return info["type"], size, bool(fs.isfile(p)), bool(fs.isdir(p))

        self.on_both(path, look)

    @rule(path=paths)
    def mkdir(self, path: str) -> None:
        self.both("mkdir", path)

    @rule(path=paths)
    def makedirs(self, path: str) -> None:
        self.both("makedirs", path, exist_ok=True)

    @rule(path=paths)
    def touch(self, path: str) -> None:
        self.both("touch", path)

    @rule(src=paths, dst=paths)
    def cp_file(self, src: str, dst: str) -> None:
        # the host's shutil copies a file onto itself by name (SameFileError), and its
        # auto_mkdir makes the destination's parents before it finds a source missing
        if src != dst and self.host.exists(os.path.join(self.host_dir, src)):
            self.both("cp_file", src, dst)

    @rule(src=paths, dst=paths)
    def mv(self, src: str, dst: str) -> None:
        # into itself, or into a directory already holding the name (onto itself
        # included): the host's shutil.move refuses (shutil.Error, no errno) where
        # rename(2) and fsspec's mv replace (daxfs: EINVAL into itself, and nothing to
        # do onto itself); a missing source: the host's auto_mkdir has made the
        # destination's parents before it fails
        host_dst = os.path.join(self.host_dir, dst)
        name_taken = self.host.isdir(host_dst) and self.host.lexists(
            os.path.join(host_dst, os.path.basename(src))
        )
        if (
            not dst.startswith(src + "/")
            and not name_taken
            and self.host.lexists(os.path.join(self.host_dir, src))
        ):
            self.both("mv", src, dst)

    @rule(path=paths, recursive=st.booleans())
    def rm(self, path: str, recursive: bool) -> None:
        self.both("rm", path, recursive=recursive)

    @invariant()
    def same_trees(self) -> None:
        def tree(fs: Any, root: str) -> dict[str, tuple[str, int]]:
            found = fs.find(root, withdirs=True, detail=True)
            return {
                os.path.relpath(name, root): (
                    info["type"],
                    info["size"] if info["type"] == "file" else 0,
                )
                for name, info in found.items()
                if name.rstrip("/") != root.rstrip("/")
            }

        assert tree(self.dax, "/") == tree(self.host, self.host_dir)

    def teardown(self) -> None:
        _files.ZERO_COPY_MIN = self.zero_copy_min
        try:
            self.dax.unmount()
            report = daxfs.fsck(self.image)
            assert report.clean, report.problems
        finally:
            _mounts.release_all()
            os.unlink(self.image)
            shutil.rmtree(self.host_dir)


TestAgainstTheHost = AgainstTheHost.TestCase
TestAgainstTheHost.settings = settings(
    max_examples=40,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
