"""A Hypothesis state machine: daxfs against a dict model, with power failures.

Rules create, write, truncate, link, symlink, rename, unlink, mkdir, rmdir,
setxattr and removexattr over a small name space; an extra rule cuts the power at a random moment
between operations (every completed operation must survive) and another
crashes *inside* an operation at a random fence (the tree must then equal the
model before or after it).  After every step the whole tree is compared with
the model; at the end fsck must be clean.
"""

from __future__ import annotations

import errno
import os
import posixpath
import re
from typing import Any

import hypothesis.strategies as stx
import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
)

import daxfs
from daxfs.fs.fsck import fsck
from daxfs.testing import PowerFailure, SimulatedPmem
from daxfs.testing.crash import snapshot

SIZE = 16 << 20
NAMES = ["a", "b", "c"]
DIRS = ["/", "/d", "/d/e"]

Model = dict[str, Any]  # path -> ("file", bytes) | ("dir",) | ("link", target)
#: path -> its extended attributes; hard links share one dict (one inode)
Xattrs = dict[str, dict[str, bytes]]

names = stx.sampled_from(NAMES)
payload = stx.binary(min_size=0, max_size=9000)
xattr_names = stx.sampled_from(["user.a", "user.b", "trusted.c"])
#: inline in the inode (small), in the block, and in blocks of their own
xattr_values = stx.one_of(stx.binary(max_size=48), stx.binary(min_size=0, max_size=6000))
xattr_flags = stx.sampled_from([0, os.XATTR_CREATE, os.XATTR_REPLACE])


def model_snapshot(model: Model, xattrs: Xattrs) -> dict[str, tuple[str, Any, Any]]:
    return {
        p: (v[0], v[1] if len(v) > 1 else None, sorted(xattrs.get(p, {}).items()))
        for p, v in model.items()
    }


def fs_view(fs: daxfs.FileSystem) -> dict[str, tuple[str, Any, Any]]:
    out: dict[str, tuple[str, Any, Any]] = {}
    for path in snapshot(fs):
        if path == "/":
            continue
        if fs.islink(path):
            out[path] = ("link", fs.readlink(path), [])
            continue
        attrs = sorted((n, fs.getxattr(path, n)) for n in fs.listxattr(path))
        if fs.isdir(path):
            out[path] = ("dir", None, attrs)
        else:
            with fs.open(path, "rb") as f:
                out[path] = ("file", f.read(), attrs)
    return out


class FsMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dev = SimulatedPmem(SIZE)
        daxfs.mkfs(self.dev)
        self.fs = daxfs.mount(self.dev)
        self.model: Model = {}
        self.xattrs: Xattrs = {}
        self.crashes = 0

    # -- helpers --------------------------------------------------------------------

    def parent_ok(self, path: str) -> bool:
        parent = posixpath.dirname(path)
        return parent == "/" or self.model.get(parent, ("",))[0] == "dir"

    def files(self) -> list[str]:
        return sorted(p for p, v in self.model.items() if v[0] == "file")

    def set_contents(self, path: str, data: bytes) -> None:
        """New contents for ``path`` and every hard link of it."""
        ino = self.fs.stat(path).st_ino
        for other, value in list(self.model.items()):
            if value[0] == "file" and self.fs.stat(other).st_ino == ino:
                self.model[other] = ("file", data)

    def children(self, path: str) -> list[str]:
        prefix = path.rstrip("/") + "/"
        return [p for p in self.model if p.startswith(prefix)]

    # -- rules ------------------------------------------------------------------------

    @rule(parent=stx.sampled_from(DIRS), name=names, data=payload)
    def create(self, parent: str, name: str, data: bytes) -> None:
        path = posixpath.join(parent, name)
        if path in self.model or not self.parent_ok(path):
            return
        with self.fs.open(path, "xb", buffering=0) as f:
            f.write(data)
        self.model[path] = ("file", data)
        self.xattrs[path] = {}

    @precondition(lambda self: self.files())
    @rule(data=stx.data(), chunk=payload, offset=stx.integers(0, 20000))
    def pwrite(self, data: stx.DataObject, chunk: bytes, offset: int) -> None:
        path = data.draw(stx.sampled_from(self.files()))
        with self.fs.open(path, "rb+", buffering=0) as f:
            f.pwrite(chunk, offset)
        old = self.model[path][1]
        if chunk:
            grown = old + bytes(max(0, offset - len(old)))
            old = grown[:offset] + chunk + grown[offset + len(chunk) :]
        self.model[path] = ("file", old)
        for other, value in self.model.items():  # hard links share the inode
            if (
                value[0] == "file"
                and other != path
                and self.fs.stat(other).st_ino == self.fs.stat(path).st_ino
            ):
                self.model[other] = ("file", old)

    @precondition(lambda self: self.files())
    @rule(data=stx.data(), size=stx.integers(0, 20000))
    def truncate(self, data: stx.DataObject, size: int) -> None:
        path = data.draw(stx.sampled_from(self.files()))
        self.fs.truncate(path, size)
        old = self.model[path][1]
        self.set_contents(path, old[:size] + bytes(max(0, size - len(old))))

    @rule(parent=stx.sampled_from(DIRS), name=names)
    def mkdir(self, parent: str, name: str) -> None:
        path = posixpath.join(parent, name)
        if path in self.model or not self.parent_ok(path):
            return
        self.fs.mkdir(path)
        self.model[path] = ("dir",)
        self.xattrs[path] = {}

    @rule(parent=stx.sampled_from(DIRS), name=names, dest=stx.sampled_from(["/d", "x", "/a"]))
    def symlink(self, parent: str, name: str, dest: str) -> None:
        path = posixpath.join(parent, name)
        if path in self.model or not self.parent_ok(path):
            return
        self.fs.symlink(dest, path)
        self.model[path] = ("link", dest)

    @precondition(lambda self: self.files())
    @rule(data=stx.data(), parent=stx.sampled_from(DIRS), name=names)
    def link(self, data: stx.DataObject, parent: str, name: str) -> None:
        src = data.draw(stx.sampled_from(self.files()))
        dst = posixpath.join(parent, name)
        if dst in self.model or not self.parent_ok(dst):
            return
        self.fs.link(src, dst)
        self.model[dst] = self.model[src]
        self.xattrs[dst] = self.xattrs[src]

    @precondition(lambda self: self.model)
    @rule(data=stx.data())
    def unlink_or_rmdir(self, data: stx.DataObject) -> None:
        path = data.draw(stx.sampled_from(sorted(self.model)))
        if self.model[path][0] == "dir":
            if self.children(path):
                with pytest.raises(OSError, match=re.escape(path)) as info:
                    self.fs.rmdir(path)
                assert info.value.errno == errno.ENOTEMPTY
                return
            self.fs.rmdir(path)
        else:
            self.fs.unlink(path)
        del self.model[path]
        self.xattrs.pop(path, None)

    @precondition(lambda self: self.model)
    @rule(data=stx.data(), parent=stx.sampled_from(DIRS), name=names)
    def rename(self, data: stx.DataObject, parent: str, name: str) -> None:
        src = data.draw(stx.sampled_from(sorted(self.model)))
        dst = posixpath.join(parent, name)
        expected = self.rename_errno(src, dst)
        if expected is not None:
            with pytest.raises(OSError, match=f"{re.escape(src)}|{re.escape(dst)}") as info:
                self.fs.rename(src, dst)
            assert info.value.errno == expected, (src, dst, info.value)
            return
        same = dst in self.model and self.fs.lstat(src).st_ino == self.fs.lstat(dst).st_ino
        self.fs.rename(src, dst)
        if same:
            return  # two names of one inode: POSIX rename does nothing
        moved = {src: self.model.pop(src)}
        for p in self.children(src):
            moved[p] = self.model.pop(p)
        for p in self.children(dst):
            del self.model[p]
        attrs = {p: self.xattrs.pop(p, {}) for p in moved}
        for p in self.children(dst):
            self.xattrs.pop(p, None)
        for p, v in moved.items():
            self.model[dst + p[len(src) :]] = v
            self.xattrs[dst + p[len(src) :]] = attrs[p]

    def rename_errno(self, src: str, dst: str) -> int | None:
        if not self.parent_ok(dst):
            return errno.ENOENT
        kind = self.model[src][0]
        target = self.model.get(dst)
        if src == dst:
            return None
        if kind == "dir" and (dst + "/").startswith(src + "/"):
            return errno.EINVAL
        if target is None:
            return None
        if kind == "dir":
            if target[0] != "dir":
                return errno.ENOTDIR
            return errno.ENOTEMPTY if self.children(dst) else None
        if target[0] == "dir":
            return errno.EISDIR
        return None

    def xattr_targets(self) -> list[str]:
        return sorted(p for p, v in self.model.items() if v[0] in ("file", "dir"))

    @precondition(lambda self: self.xattr_targets())
    @rule(data=stx.data(), name=xattr_names, value=xattr_values, flags=xattr_flags)
    def setxattr(self, data: stx.DataObject, name: str, value: bytes, flags: int) -> None:
        path = data.draw(stx.sampled_from(self.xattr_targets()))
        attrs = self.xattrs[path]
        expected = None
        if flags == os.XATTR_CREATE and name in attrs:
            expected = errno.EEXIST
        elif flags == os.XATTR_REPLACE and name not in attrs:
            expected = errno.ENODATA
        if expected is not None:
            with pytest.raises(OSError, match=re.escape(path)) as info:
                self.fs.setxattr(path, name, value, flags)
            assert info.value.errno == expected
            return
        self.fs.setxattr(path, name, value, flags)
        attrs[name] = value

    @precondition(lambda self: self.xattr_targets())
    @rule(data=stx.data(), name=xattr_names)
    def removexattr(self, data: stx.DataObject, name: str) -> None:
        path = data.draw(stx.sampled_from(self.xattr_targets()))
        attrs = self.xattrs[path]
        if name not in attrs:
            with pytest.raises(OSError, match=re.escape(path)) as info:
                self.fs.removexattr(path, name)
            assert info.value.errno == errno.ENODATA
            return
        self.fs.removexattr(path, name)
        del attrs[name]

    @precondition(lambda self: self.xattr_targets())
    @rule(
        data=stx.data(),
        name=xattr_names,
        value=xattr_values,
        fence=stx.integers(1, 6),
        seed=stx.integers(0, 2**16),
    )
    def power_failure_inside_setxattr(
        self, data: stx.DataObject, name: str, value: bytes, fence: int, seed: int
    ) -> None:
        """A setxattr cut by a power failure is there wholly or not at all."""
        path = data.draw(stx.sampled_from(self.xattr_targets()))
        old = dict(self.xattrs[path])
        self.dev.schedule_power_failure(fence)
        try:
            self.fs.setxattr(path, name, value)
            completed = True
        except PowerFailure:
            completed = False
        self.dev.schedule_power_failure(None)
        new = {**old, name: value}
        self.dev = self.dev.crash(seed)
        self.fs = daxfs.mount(self.dev)
        now = {n: self.fs.getxattr(path, n) for n in self.fs.listxattr(path)}
        assert now == new if completed else now in (old, new)
        event(f"setxattr crashed inside: completed={completed}, new={now == new}")
        self.xattrs[path].clear()
        self.xattrs[path].update(now)

    @rule(seed=stx.integers(0, 2**16))
    def power_failure_between_operations(self, seed: int) -> None:
        """Everything that returned is durable: a crash now loses nothing."""
        self.dev = self.dev.crash(seed)
        self.fs = daxfs.mount(self.dev)
        self.crashes += 1
        event("power failure between operations")

    @precondition(lambda self: self.files())
    @rule(data=stx.data(), fence=stx.integers(1, 6), seed=stx.integers(0, 2**16))
    def power_failure_inside_write(self, data: stx.DataObject, fence: int, seed: int) -> None:
        """A write cut by a power failure is there wholly or not at all."""
        path = data.draw(stx.sampled_from(self.files()))
        chunk = data.draw(payload)
        old = self.model[path][1]
        self.dev.schedule_power_failure(fence)
        try:
            with self.fs.open(path, "rb+", buffering=0) as f:
                f.pwrite(chunk, 0)
            completed = True
        except PowerFailure:
            completed = False
        self.dev.schedule_power_failure(None)
        new = chunk + old[len(chunk) :]
        self.dev = self.dev.crash(seed)
        self.fs = daxfs.mount(self.dev)
        with self.fs.open(path, "rb") as f:
            now = f.read()
        assert now == new if completed else now in (old, new)
        event(f"write crashed inside: completed={completed}, new={now == new}")
        self.set_contents(path, now)

    # -- checks -----------------------------------------------------------------------

    @invariant()
    def tree_matches_model(self) -> None:
        assert fs_view(self.fs) == model_snapshot(self.model, self.xattrs)

    def teardown(self) -> None:
        self.fs.unmount()
        report = fsck(self.dev)
        assert report.clean, str(report)


FsMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestFsModel = FsMachine.TestCase
