"""NbdBlockDevice: a block device served by an NBD server (nbdkit, qemu-nbd, rbd-nbd).

Theory of operation
-------------------
A small client of the NBD protocol (github.com/NetworkBlockDevice/nbd,
doc/proto.md), so that an image can live on networked and distributed
storage.  libnbd is not used: it is not on PyPI, and the part daxfs needs is
small.

Handshake (fixed newstyle): the server greets with ``NBDMAGIC IHAVEOPT`` and
its flags; the client answers with its flags and asks for the export with
``NBD_OPT_GO`` (export name, no info requests); the server replies with
``NBD_REP_INFO`` records -- ``NBD_INFO_EXPORT`` gives the size and the
transmission flags -- and ``NBD_REP_ACK``.  The transmission flags become the
device's properties: READ_ONLY, SEND_FLUSH (a volatile write cache: FLUSH is
sent), SEND_FUA (else the block layer emulates FUA with a flush), SEND_TRIM
(DISCARD), SEND_WRITE_ZEROES.

Transmission: each request is a 28-byte header (magic, command flags, type,
cookie, offset, length), followed by the data of a WRITE, sent under a lock
with ``sendmsg`` straight from the request's segments.  The server may answer
in any order: a reader thread reads each 16-byte simple reply (magic, error,
cookie), finds the request by its cookie, reads a READ's data straight into
its segments (``recv_into``), and ends the request.  Many requests are in
flight at once from any number of threads.

    READ READ, WRITE WRITE (+FUA), FLUSH FLUSH, DISCARD TRIM,
    WRITE_ZEROES WRITE_ZEROES (+FUA)

A server error is its errno (EIO, ENOSPC, EINVAL, ...) naming the operation,
the sector and the export; an error value the protocol does not define is
EINVAL, as proto.md tells clients.  A lost connection (EOF or a socket error) fails
every request in flight and every later one with EIO ("disconnected"); the
device stays so until it is opened again.

Invariants
  1. Every request sent is ended exactly once: by its reply, or by the
     disconnection that fails everything in flight.
  2. Replies are matched by cookie only; a reply with an unknown cookie or a
     bad magic is a protocol error: the connection is dropped (EIO for all,
     the request a bad-magic reply names included).  Nothing the server
     sends is used before it is checked: the magic before the cookie, the
     error value against the protocol's list, an option reply's length
     against ``MAX_OPTION_REPLY`` before it is read.
  3. ``close()`` waits for the requests in flight (BlockDevice), then sends
     NBD_CMD_DISC, closes the socket and joins the reader.
  4. The reader thread never sends: a request dispatched from a completion
     it runs (a PREFLUSH's data, the flush of an emulated FUA) is sent by a
     sender thread, so that replies are always read while a request is sent.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import socket
import struct
import threading
from concurrent.futures import ThreadPoolExecutor

from daxfs.block.bio import SECTOR_SHIFT, BioFlags, BioOp, QueueLimits, Request
from daxfs.block.device import BlockDevice
from daxfs.errors import InvalidArgument, IOFailure, NotSupported

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698

FLAG_FIXED_NEWSTYLE = 1
FLAG_NO_ZEROES = 2
OPT_GO = 7
REP_ACK = 1
REP_INFO = 3
REP_FLAG_ERROR = 1 << 31
INFO_EXPORT = 0

# transmission flags
TF_READ_ONLY = 1 << 1
TF_SEND_FLUSH = 1 << 2
TF_SEND_FUA = 1 << 3
TF_SEND_TRIM = 1 << 5
TF_SEND_WRITE_ZEROES = 1 << 6

CMD = {
    BioOp.READ: 0,
    BioOp.WRITE: 1,
    BioOp.FLUSH: 3,
    BioOp.DISCARD: 4,
    BioOp.WRITE_ZEROES: 6,
}
CMD_DISC = 2
CMD_FLAG_FUA = 1

#: The error values a server may send (proto.md: NBD_EPERM ... NBD_ESHUTDOWN, equal to
#: Linux's errno values); any other is taken as EINVAL, as the protocol tells clients.
NBD_ERRORS = frozenset(
    {
        errno.EPERM,
        errno.EIO,
        errno.ENOMEM,
        errno.EINVAL,
        errno.ENOSPC,
        errno.EOVERFLOW,
        errno.ENOTSUP,
        errno.ESHUTDOWN,
    }
)
#: The longest option reply payload read during the handshake (the server's length is
#: untrusted: a larger one is a protocol error, not a huge allocation).
MAX_OPTION_REPLY = 64 << 10

_HEADER = struct.Struct(">IHHQQI")
_REPLY = struct.Struct(">IIQ")


def _recv_exact(sock: socket.socket, view: memoryview) -> None:
    while len(view):
        n = sock.recv_into(view)
        if n == 0:
            raise ConnectionError("the NBD server closed the connection")
        view = view[n:]


def _recv(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    _recv_exact(sock, memoryview(buf))
    return bytes(buf)


def _sendall(sock: socket.socket, views: list[memoryview]) -> None:
    while views:
        sent = sock.sendmsg(views[:64])
        while sent and views:
            if sent >= len(views[0]):
                sent -= len(views[0])
                views = views[1:]
            else:
                views[0] = views[0][sent:]
                sent = 0


class NbdBlockDevice(BlockDevice):
    """A block device over an NBD connection; create with ``open_nbd``."""

    def __init__(self, name: str, sock: socket.socket, size: int, tflags: int) -> None:
        limits = QueueLimits(
            max_segments=1024,
            max_bytes=4 << 20,
            max_segment_bytes=4 << 20,
            max_discard_bytes=(1 << 30) if tflags & TF_SEND_TRIM else 0,
            max_write_zeroes_bytes=(1 << 30) if tflags & TF_SEND_WRITE_ZEROES else 0,
        )
        super().__init__(name, size >> SECTOR_SHIFT, limits, readonly=bool(tflags & TF_READ_ONLY))
        self.transmission_flags = tflags
        self.write_cache = bool(tflags & TF_SEND_FLUSH)
        self.fua = bool(tflags & TF_SEND_FUA)
        self._sock = sock
        self._send_lock = threading.Lock()
        self._cookies = itertools.count(1)
        self._waiting: dict[int, Request] = {}
        self._waiting_lock = threading.Lock()
        self._dead: str | None = None
        self._sender = ThreadPoolExecutor(max_workers=1, thread_name_prefix="daxfs-nbd-send")
        self._reader = threading.Thread(target=self._read_replies, name="daxfs-nbd", daemon=True)
        self._reader.start()

    @property
    def engine(self) -> str:
        return "nbd (simple replies, one connection, a reader thread)"

    @property
    def engine_reason(self) -> str:
        return "an NBD export: a small client of the documented protocol (no libnbd)"

    @property
    def disconnected(self) -> bool:
        return self._dead is not None

    @property
    def lost(self) -> str | None:
        dead = self._dead
        return f"{self.name}: {dead}" if dead is not None and dead != "closed" else None

    # -- requests ------------------------------------------------------------------------

    def _dispatch(self, req: Request) -> None:
        if threading.current_thread() is self._reader:
            # a completion dispatches (a PREFLUSH's data, an emulated FUA's flush): sent
            # from the reader, a large write blocks once the socket fills, while the
            # server blocks sending replies the reader no longer reads (invariant 4)
            self._sender.submit(self._dispatch_later, req)
            return
        self._send_request(req)

    def _dispatch_later(self, req: Request) -> None:
        try:
            self._send_request(req)
        except Exception as exc:  # raised before the request was handed off
            self._end(req, exc)

    def _send_request(self, req: Request) -> None:
        if req.op is BioOp.FLUSH and not self.write_cache:
            self._end(req, 0)  # nothing to flush, and the server may not take FLUSH
            return
        cookie = next(self._cookies)
        flags = CMD_FLAG_FUA if req.flags & BioFlags.FUA else 0
        header = _HEADER.pack(REQUEST_MAGIC, flags, CMD[req.op], cookie, req.offset, req.size)
        views = [memoryview(header)]
        if req.op is BioOp.WRITE:
            views += req.segments
        with self._waiting_lock:
            if self._dead is not None:
                raise IOFailure(f"{self.name}: {self._dead}")
            self._waiting[cookie] = req
        try:
            with self._send_lock:
                _sendall(self._sock, views)
        except OSError as exc:
            self._disconnect(f"disconnected while sending ({exc})")

    def _read_replies(self) -> None:
        header = bytearray(_REPLY.size)
        try:
            while True:
                _recv_exact(self._sock, memoryview(header))
                self._reply(*_REPLY.unpack(header))
        except (OSError, ValueError) as exc:
            self._disconnect(f"disconnected ({exc})")

    def _reply(self, magic: int, error: int, cookie: int) -> None:
        """End the request of one reply (a READ's data is received into its segments).

        A method of its own so that nothing of the request -- its segments are views of
        the caller's memory, a block cache's among them -- stays referenced by the reader
        while it waits for the next reply: the cache could not close while they lived.

        Raises:
            ConnectionError: a protocol error.
            OSError, ValueError: the connection failed (the request was ended with EIO).
        """
        if magic != SIMPLE_REPLY_MAGIC:  # before the pop: the request stays to fail
            raise ConnectionError(f"protocol error: reply {magic:#x} for cookie {cookie}")
        with self._waiting_lock:
            req = self._waiting.pop(cookie, None)
        if req is None:
            raise ConnectionError(f"protocol error: reply {magic:#x} for cookie {cookie}")
        if error:
            code = error if error in NBD_ERRORS else errno.EINVAL
            self._end(req, OSError(code, os.strerror(code)))
            return
        if req.op is BioOp.READ:
            try:
                for view in req.segments:
                    _recv_exact(self._sock, view)
            except (OSError, ValueError) as exc:  # no longer in _waiting: end it here
                self._end(req, IOFailure(f"{self.name}: disconnected ({exc})"))
                raise
        self._end(req, req.size)

    def _disconnect(self, why: str) -> None:
        """Fail every request in flight, and every later one, with EIO (invariant 1)."""
        with self._waiting_lock:
            if self._dead is None:
                self._dead = why
            waiting = list(self._waiting.values())
            self._waiting.clear()
        for req in waiting:
            self._end(req, IOFailure(f"{self.name}: {why}"))
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)

    def _close(self) -> None:
        if self._dead is None:
            with self._send_lock, contextlib.suppress(OSError):
                self._sock.sendall(_HEADER.pack(REQUEST_MAGIC, 0, CMD_DISC, 0, 0, 0))
            with self._waiting_lock:
                self._dead = "closed"
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
        self._reader.join(10)
        self._sender.shutdown(wait=True)
        self._sock.close()


def open_nbd(address: str, export: str = "", *, timeout: float = 10.0) -> NbdBlockDevice:
    """Connect to an NBD server and open ``export``.

    ``address`` is a Unix socket path, or ``host:port`` for TCP.

    Raises:
        OSError: the connection failed (errno of the socket: ENOENT,
            ECONNREFUSED, ...).
        IOFailure (EIO): the server does not speak fixed-newstyle NBD, or
            closed the connection during the handshake.
        NotSupported (EOPNOTSUPP): the server refused NBD_OPT_GO.
        InvalidArgument (EINVAL): the export is unknown to the server, or
            its size is not a whole number of 512-byte sectors; a ``host:port``
            address whose port is not a number.
    """
    if ":" in address and not address.startswith("/"):
        host, _, port = address.rpartition(":")
        if not port.isdigit() or int(port) > 65535:
            raise InvalidArgument(f"nbd:{address}: the port must be a number up to 65535")
        sock = socket.create_connection((host, int(port)), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    else:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(address)
        except OSError:
            sock.close()
            raise
    name = f"nbd:{address}" + (f"/{export}" if export else "")
    try:
        size, tflags = _handshake(sock, export, name)
        sock.settimeout(None)
        if size % 512:
            raise InvalidArgument(f"{name}: {size} bytes is not a whole number of sectors")
        return NbdBlockDevice(name, sock, size, tflags)
    except ConnectionError as exc:
        sock.close()
        raise IOFailure(f"{name}: {exc}") from exc
    except BaseException:
        sock.close()
        raise


def _handshake(sock: socket.socket, export: str, name: str) -> tuple[int, int]:
    magic, opt_magic, hflags = struct.unpack(">QQH", _recv(sock, 18))
    if magic != NBDMAGIC or opt_magic != IHAVEOPT or not hflags & FLAG_FIXED_NEWSTYLE:
        raise IOFailure(f"{name}: not a fixed-newstyle NBD server")
    sock.sendall(struct.pack(">I", FLAG_FIXED_NEWSTYLE | (hflags & FLAG_NO_ZEROES)))
    raw = export.encode()
    data = struct.pack(">I", len(raw)) + raw + struct.pack(">H", 0)
    sock.sendall(struct.pack(">QII", IHAVEOPT, OPT_GO, len(data)) + data)
    size = tflags = None
    while True:
        rmagic, option, rtype, length = struct.unpack(">QIII", _recv(sock, 20))
        if rmagic != REPLY_MAGIC or option != OPT_GO or length > MAX_OPTION_REPLY:
            raise IOFailure(f"{name}: bad option reply {rmagic:#x} of {length} bytes")
        payload = _recv(sock, length)
        if rtype & REP_FLAG_ERROR:
            text = payload.decode(errors="replace")
            if rtype == REP_FLAG_ERROR | 1:  # NBD_REP_ERR_UNSUP
                raise NotSupported(f"{name}: the server refused NBD_OPT_GO {text}".rstrip())
            raise InvalidArgument(f"{name}: the server refused the export: {text}".rstrip())
        if rtype == REP_INFO and len(payload) >= 12:
            (info,) = struct.unpack_from(">H", payload)
            if info == INFO_EXPORT:
                size, tflags = struct.unpack_from(">QH", payload, 2)
        elif rtype == REP_ACK:
            break
    if size is None or tflags is None:
        raise IOFailure(f"{name}: the server gave no export information")
    return size, tflags


__all__ = ["NbdBlockDevice", "open_nbd"]
