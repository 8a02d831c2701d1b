"""The wire tap (daxfs.fuse._wire) without a mount: its read and writev, C and Python.

Requests go into a pipe, the tap's ``read`` takes them out into a buffer as
libfuse's worker would, and replies go through the tap's ``writev`` into
another pipe; what comes out is what the kernel would get.  Both
implementations (the C one libfuse is given when built, and the Python
reference) must agree on every case.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import stat as st
import time
from collections.abc import Iterator

import pytest

from daxfs.fuse import _wire
from daxfs.fuse._wire import (
    ATTR_OUT,
    IN_HEADER,
    OP_CREATE,
    OP_GETATTR,
    OP_OPEN,
    OP_SETATTR,
    OUT_HEADER,
    SETATTR_IN,
    SetAttr,
    Tap,
    iovec,
)

OP_LOOKUP = 1
STALE = -errno.ESTALE
STAT = os.stat_result(
    (st.S_IFREG | 0o640, 42, 0, 0, 1000, 1001, 12345, 1, 2, 3),
    {
        "st_blocks": 32,
        "st_blksize": 4096,
        "st_atime_ns": 1_000_000_001,
        "st_mtime_ns": 2_000_000_002,
        "st_ctime_ns": 3_000_000_003,
    },
)


class FakeHandles:
    """Node 7 has an open file; node 9's changes fail with EPERM; node 13 has a bug."""

    def __init__(self) -> None:
        self.opened_on: list[tuple[int, int]] = []
        self.changes: list[tuple[int, SetAttr]] = []
        self.xattrs: dict[str, bytes] = {"user.a": b"value", "user.bb": b""}

    def opened(self, node: int, fh: int) -> None:
        self.opened_on.append((node, fh))

    def node_stat(self, node: int) -> os.stat_result:
        if node == 13:
            raise ValueError("a bug")
        if node not in (7, 9):
            raise OSError(errno.ESTALE, f"node {node}: no open file")
        return STAT

    def node_setattr(self, node: int, change: SetAttr) -> os.stat_result:
        self.changes.append((node, change))
        if node == 9:
            raise OSError(errno.EPERM, "not the owner")
        return self.node_stat(node)

    def _xattr_node(self, node: int) -> None:
        if node == 9:
            raise OSError(errno.EPERM, "not permitted")
        self.node_stat(node)

    def node_getxattr(self, node: int, name: str) -> bytes:
        self._xattr_node(node)
        if name not in self.xattrs:
            raise OSError(errno.ENODATA, name)
        return self.xattrs[name]

    def node_listxattr(self, node: int) -> list[str]:
        self._xattr_node(node)
        return sorted(self.xattrs)

    def node_setxattr(self, node: int, name: str, value: bytes, flags: int) -> None:
        self._xattr_node(node)
        if flags == 1 and name in self.xattrs:
            raise OSError(errno.EEXIST, name)
        self.xattrs[name] = value

    def node_removexattr(self, node: int, name: str) -> None:
        self._xattr_node(node)
        del self.xattrs[name]


IMPLEMENTATIONS = ["python", "native"]


@pytest.fixture(params=IMPLEMENTATIONS)
def tap(request: pytest.FixtureRequest) -> Iterator[Tap]:
    native = request.param == "native"
    if native and _wire._native is None:
        pytest.skip("daxfs.fuse._tap is not built")
    t = Tap(FakeHandles(), native=native)  # type: ignore[arg-type]
    yield t
    if native:
        assert _wire._native is not None
        _wire._native.set_hook(None)


def request(opcode: int, unique: int, node: int, body: bytes = b"") -> bytes:
    return IN_HEADER.pack(IN_HEADER.size + len(body), opcode, unique, node, 0, 0, 1, 0, 0) + body


def reply(error: int, unique: int, *body: bytes) -> list[bytes]:
    size = OUT_HEADER.size + sum(len(b) for b in body)
    return [OUT_HEADER.pack(size, error, unique), *body]


def through(tap: Tap, req: bytes, parts: list[bytes]) -> bytes:
    """``req`` read through the tap, then ``parts`` written through it: what is sent."""
    r_in, w_in = os.pipe()
    r_out, w_out = os.pipe()
    try:
        os.write(w_in, req)
        buf = ctypes.create_string_buffer(4096)
        assert tap._io.read(r_in, ctypes.addressof(buf), 4096, None) == len(req)
        assert buf.raw[: len(req)] == req
        keep = [ctypes.create_string_buffer(p, len(p)) for p in parts]
        iov = (iovec * len(parts))()
        for i, b in enumerate(keep):
            iov[i].iov_base = ctypes.addressof(b)
            iov[i].iov_len = len(parts[i])
        sent = tap._io.writev(w_out, iov, len(parts), None)
        out = os.read(r_out, 4096)
        assert sent == len(out)
        return out
    finally:
        for fd in (r_in, w_in, r_out, w_out):
            os.close(fd)


def attrs(out: bytes) -> tuple[int, ...]:
    length, error, _ = OUT_HEADER.unpack_from(out)
    assert (length, error) == (len(out), 0)
    return ATTR_OUT.unpack_from(out, OUT_HEADER.size)


def test_getattr_refused_stale_is_answered_from_the_open_file(tap: Tap) -> None:
    out = through(tap, request(OP_GETATTR, 5, 7, bytes(16)), reply(STALE, 5))
    assert OUT_HEADER.unpack_from(out)[2] == 5
    (valid, _, _, ino, size, blocks, asec, msec, csec, ans, mns, cns, mode, nlink, uid, gid) = (
        attrs(out)[:16]
    )
    assert (ino, size, blocks, mode, nlink, uid, gid) == (
        42,
        12345,
        32,
        STAT.st_mode,
        0,
        1000,
        1001,
    )
    assert (asec, ans, msec, mns, csec, cns) == (1, 1, 2, 2, 3, 3)
    assert valid == 0  # not cached: the mount's attr_timeout is 0


@pytest.mark.parametrize(
    ("opcode", "node", "error", "unique"),
    [
        (OP_GETATTR, 8, STALE, 5),  # no open file on node 8: libfuse's ESTALE stands
        (OP_GETATTR, 7, -errno.ENOENT, 5),  # another error: not the tap's
        (OP_LOOKUP, 7, STALE, 5),  # another request
        (OP_GETATTR, 7, STALE, 6),  # a reply to another request (unique differs)
        (OP_GETATTR, 7, 0, 5),  # libfuse answered
    ],
)
def test_other_replies_go_out_as_libfuse_made_them(
    tap: Tap, opcode: int, node: int, error: int, unique: int
) -> None:
    parts = reply(error, unique, b"x" * 24)
    assert through(tap, request(opcode, 5, node, bytes(16)), parts) == b"".join(parts)
    assert tap.handles.opened_on == []  # type: ignore[attr-defined]


def test_a_bug_in_the_handles_leaves_the_reply_alone(
    tap: Tap, caplog: pytest.LogCaptureFixture
) -> None:
    parts = reply(STALE, 5)
    with caplog.at_level(logging.ERROR, logger="daxfs.fuse"):
        assert through(tap, request(OP_GETATTR, 5, 13, bytes(16)), parts) == b"".join(parts)
    assert "looking at a reply failed" in caplog.text


def setattr_in(valid: int, **fields: int) -> bytes:
    f = {"fh": 0, "size": 0, "atime": 0, "mtime": 0, "atimensec": 0, "mtimensec": 0}
    f.update({k: v for k, v in fields.items() if k in f})
    return SETATTR_IN.pack(
        valid, 0, f["fh"], f["size"], 0, f["atime"], f["mtime"], 0,
        f["atimensec"], f["mtimensec"], 0,
        fields.get("mode", 0), 0, fields.get("uid", 0), fields.get("gid", 0), 0,
    )  # fmt: skip


def test_setattr_refused_stale_is_applied_to_the_open_file(tap: Tap) -> None:
    valid = _wire.FATTR_MODE | _wire.FATTR_UID | _wire.FATTR_SIZE | _wire.FATTR_MTIME
    body = setattr_in(valid, mode=st.S_IFREG | 0o600, uid=77, gid=88, size=10, mtime=5, mtimensec=6)
    out = through(tap, request(OP_SETATTR, 9001, 7, body), reply(STALE, 9001))
    assert attrs(out)[3] == 42
    [(node, change)] = tap.handles.changes  # type: ignore[attr-defined]
    assert node == 7
    assert change.mode == st.S_IFREG | 0o600
    assert change.owner == (77, -1)  # FATTR_GID not set: the group stays
    assert change.size == 10
    assert change.set_times
    assert change.times == (None, 5_000_000_006)


def test_setattr_times_now(tap: Tap) -> None:
    valid = _wire.FATTR_ATIME | _wire.FATTR_ATIME_NOW | _wire.FATTR_MTIME
    before = time.time_ns()
    through(tap, request(OP_SETATTR, 3, 7, setattr_in(valid, mtime=1)), reply(STALE, 3))
    [(_, change)] = tap.handles.changes  # type: ignore[attr-defined]
    assert change.mode is None
    assert change.owner is None
    assert change.size is None
    atime, mtime = change.times
    assert atime is not None
    assert atime >= before
    assert mtime == 1_000_000_000
    valid |= _wire.FATTR_MTIME_NOW
    through(tap, request(OP_SETATTR, 4, 7, setattr_in(valid)), reply(STALE, 4))
    assert tap.handles.changes[1][1].times is None  # type: ignore[attr-defined]


def test_setattr_error_is_the_reply_errno(tap: Tap) -> None:
    out = through(
        tap, request(OP_SETATTR, 11, 9, setattr_in(_wire.FATTR_MODE, mode=0o600)), reply(STALE, 11)
    )
    assert out == OUT_HEADER.pack(OUT_HEADER.size, -errno.EPERM, 11)


def test_open_and_create_replies_teach_the_node_of_a_handle(tap: Tap) -> None:
    open_out = (31).to_bytes(8, "little") + bytes(8)
    out = through(tap, request(OP_OPEN, 20, 7, bytes(8)), reply(0, 20, open_out))
    assert out == b"".join(reply(0, 20, open_out))  # sent unchanged
    entry = (55).to_bytes(8, "little") + bytes(_wire.ENTRY_OUT_SIZE - 8)
    parts = reply(0, 21, entry + (32).to_bytes(8, "little") + bytes(8))
    assert through(tap, request(OP_CREATE, 21, 1, b"name\0"), parts) == b"".join(parts)
    assert tap.handles.opened_on == [(7, 31), (55, 32)]  # type: ignore[attr-defined]
    failed = reply(-errno.EACCES, 22)
    assert through(tap, request(OP_OPEN, 22, 8, bytes(8)), failed) == b"".join(failed)
    assert len(tap.handles.opened_on) == 2  # type: ignore[attr-defined]


def test_errors_of_the_device_reach_libfuse_with_their_errno(tap: Tap) -> None:
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    buf = ctypes.create_string_buffer(64)
    assert tap._io.read(r, ctypes.addressof(buf), 64, None) == -1
    assert ctypes.get_errno() == errno.EBADF
    part = ctypes.create_string_buffer(16)
    iov = (iovec * 1)()
    iov[0].iov_base, iov[0].iov_len = ctypes.addressof(part), 16
    assert tap._io.writev(w, iov, 1, None) == -1
    assert ctypes.get_errno() == errno.EBADF


def xattr_in(size: int, flags: int = 0) -> bytes:
    return _wire.XATTR_IN.pack(size, flags)


def test_xattrs_refused_stale_are_answered_from_the_open_file(tap: Tap) -> None:
    h: FakeHandles = tap.handles  # type: ignore[assignment]

    def ask(opcode: int, node: int, body: bytes) -> bytes:
        return through(tap, request(opcode, 40, node, body), reply(STALE, 40))

    def ok(out: bytes) -> bytes:
        length, error, unique = OUT_HEADER.unpack_from(out)
        assert (length, error, unique) == (len(out), 0, 40)
        return out[OUT_HEADER.size :]

    def error(out: bytes) -> int:
        assert len(out) == OUT_HEADER.size
        return -int(OUT_HEADER.unpack(out)[1])

    assert ok(ask(_wire.OP_GETXATTR, 7, xattr_in(0) + b"user.a\0")) == xattr_in(5)  # its size
    assert ok(ask(_wire.OP_GETXATTR, 7, xattr_in(64) + b"user.a\0")) == b"value"
    assert error(ask(_wire.OP_GETXATTR, 7, xattr_in(2) + b"user.a\0")) == errno.ERANGE
    assert error(ask(_wire.OP_GETXATTR, 7, xattr_in(64) + b"user.no\0")) == errno.ENODATA
    listed = b"user.a\0user.bb\0"
    assert ok(ask(_wire.OP_LISTXATTR, 7, xattr_in(0))) == xattr_in(len(listed))
    assert ok(ask(_wire.OP_LISTXATTR, 7, xattr_in(64))) == listed
    assert error(ask(_wire.OP_LISTXATTR, 7, xattr_in(3))) == errno.ERANGE
    assert ok(ask(_wire.OP_SETXATTR, 7, xattr_in(3, 0) + b"user.c\0new")) == b""
    assert h.xattrs["user.c"] == b"new"
    assert error(ask(_wire.OP_SETXATTR, 7, xattr_in(1, 1) + b"user.c\0x")) == errno.EEXIST
    assert ok(ask(_wire.OP_REMOVEXATTR, 7, b"user.c\0")) == b""
    assert "user.c" not in h.xattrs
    assert error(ask(_wire.OP_SETXATTR, 9, xattr_in(1) + b"user.d\0x")) == errno.EPERM
    stale = reply(STALE, 40)  # no open file on node 8: libfuse's ESTALE stands
    assert ask(_wire.OP_GETXATTR, 8, xattr_in(64) + b"user.a\0") == b"".join(stale)
