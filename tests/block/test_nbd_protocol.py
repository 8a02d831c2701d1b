"""The NBD client against a scripted fake server: handshake failures, protocol errors,
and a connection lost in the middle of a READ's data (no nbdkit needed)."""

from __future__ import annotations

import errno
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from daxfs.block import Bio, BioFlags, BioOp
from daxfs.block import nbd as nbd_mod
from daxfs.block.nbd import open_nbd
from daxfs.errors import InvalidArgument, IOFailure, NotSupported

Script = Callable[[socket.socket], None]
SIZE = 1 << 20


def recv_exact(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise ConnectionError("client went away")
        data += chunk
    return data


def greet(conn: socket.socket) -> None:
    conn.sendall(struct.pack(">QQH", nbd_mod.NBDMAGIC, nbd_mod.IHAVEOPT, 1))
    recv_exact(conn, 4)  # client flags
    _, _, length = struct.unpack(">QII", recv_exact(conn, 16))
    recv_exact(conn, length)


def option_reply(conn: socket.socket, rtype: int, payload: bytes = b"") -> None:
    head = struct.pack(">QIII", nbd_mod.REPLY_MAGIC, nbd_mod.OPT_GO, rtype, len(payload))
    conn.sendall(head + payload)


def export_ok(conn: socket.socket, tflags: int = 1 | nbd_mod.TF_SEND_FLUSH) -> None:
    greet(conn)
    option_reply(conn, nbd_mod.REP_INFO, struct.pack(">HQH", nbd_mod.INFO_EXPORT, SIZE, tflags))
    option_reply(conn, nbd_mod.REP_ACK)


def next_request(conn: socket.socket) -> tuple[int, int, int, int]:
    _, _, kind, cookie, offset, length = nbd_mod._HEADER.unpack(recv_exact(conn, 28))
    return kind, cookie, offset, length


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[Callable[[Script], str]]:
    threads: list[threading.Thread] = []
    listeners: list[socket.socket] = []

    def serve(script: Script) -> str:
        path = str(tmp_path / f"fake{len(listeners)}.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(1)
        listeners.append(listener)

        def run() -> None:
            conn, _ = listener.accept()
            try:
                script(conn)
            except (ConnectionError, OSError):
                pass
            finally:
                conn.close()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        threads.append(thread)
        return path

    yield serve
    for listener in listeners:
        listener.close()
    for thread in threads:
        thread.join(5)


def test_not_an_nbd_server(fake: Callable[[Script], str]) -> None:
    path = fake(lambda conn: conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n"))
    with pytest.raises(IOFailure, match="not a fixed-newstyle NBD server") as info:
        open_nbd(path)
    assert info.value.errno == errno.EIO


def test_server_closes_during_the_handshake(fake: Callable[[Script], str]) -> None:
    path = fake(lambda conn: conn.sendall(struct.pack(">Q", nbd_mod.NBDMAGIC)))
    with pytest.raises(IOFailure, match="closed the connection"):
        open_nbd(path)


def test_unknown_export_and_refused_go(fake: Callable[[Script], str]) -> None:
    def unknown(conn: socket.socket) -> None:
        greet(conn)
        option_reply(conn, nbd_mod.REP_FLAG_ERROR | 6, b"no such export")

    with pytest.raises(InvalidArgument, match="no such export"):
        open_nbd(fake(unknown), "nope")

    def unsupported(conn: socket.socket) -> None:
        greet(conn)
        option_reply(conn, nbd_mod.REP_FLAG_ERROR | 1)

    with pytest.raises(NotSupported, match="NBD_OPT_GO"):
        open_nbd(fake(unsupported))


def test_connection_lost_in_the_middle_of_a_reads_data(fake: Callable[[Script], str]) -> None:
    def half_a_read(conn: socket.socket) -> None:
        export_ok(conn)
        kind, cookie, _, length = next_request(conn)
        assert kind == 0
        reply = struct.pack(">IIQ", nbd_mod.SIMPLE_REPLY_MAGIC, 0, cookie)
        conn.sendall(reply + bytes(length // 2))  # then the connection ends

    dev = open_nbd(fake(half_a_read))
    bio = Bio(BioOp.READ, 0, [bytearray(4096)])
    dev.submit_bio(bio)
    with pytest.raises(IOFailure, match="disconnected"):
        bio.wait(timeout=20)
    assert dev.disconnected
    dev.close()


def test_a_reply_for_no_request_drops_the_connection(fake: Callable[[Script], str]) -> None:
    def wrong_cookie(conn: socket.socket) -> None:
        export_ok(conn)
        _, cookie, _, _ = next_request(conn)
        conn.sendall(struct.pack(">IIQ", nbd_mod.SIMPLE_REPLY_MAGIC, 0, cookie + 1000))
        recv_exact(conn, 1)  # hold the connection until the client drops it

    dev = open_nbd(fake(wrong_cookie))
    bio = Bio(BioOp.WRITE, 0, [bytes(512)])
    dev.submit_bio(bio)
    with pytest.raises(IOFailure, match="protocol error"):
        bio.wait(timeout=20)
    dev.close()


def test_replies_out_of_order_reach_their_bios(fake: Callable[[Script], str]) -> None:
    def reversed_replies(conn: socket.socket) -> None:
        export_ok(conn)
        requests = [next_request(conn) for _ in range(3)]
        for kind, cookie, offset, length in reversed(requests):
            assert kind == 0
            data = bytes([offset // 512 + 1]) * length
            conn.sendall(struct.pack(">IIQ", nbd_mod.SIMPLE_REPLY_MAGIC, 0, cookie) + data)
        recv_exact(conn, 28)  # NBD_CMD_DISC at close

    dev = open_nbd(fake(reversed_replies))
    bufs = [bytearray(512) for _ in range(3)]
    bios = [Bio(BioOp.READ, i, [bufs[i]]) for i in range(3)]
    for bio in bios:
        dev.submit_bio(bio)
    assert [b.wait(timeout=20) for b in bios] == [512] * 3
    assert [bytes(b) for b in bufs] == [bytes([i + 1]) * 512 for i in range(3)]
    dev.close()


def test_a_reply_with_a_bad_magic_fails_its_request(fake: Callable[[Script], str]) -> None:
    # the cookie is the request's own: the request must still be ended (it was lost)
    def bad_magic(conn: socket.socket) -> None:
        export_ok(conn)
        _, cookie, _, _ = next_request(conn)
        conn.sendall(struct.pack(">IIQ", 0xDEADBEEF, 0, cookie))
        recv_exact(conn, 1)  # hold the connection until the client drops it

    dev = open_nbd(fake(bad_magic))
    bio = Bio(BioOp.WRITE, 0, [bytes(512)])
    dev.submit_bio(bio)
    with pytest.raises(IOFailure, match="protocol error"):
        bio.wait(timeout=20)
    assert dev.disconnected
    dev.close()


def test_server_error_values_unknown_ones_are_einval(fake: Callable[[Script], str]) -> None:
    # proto.md: "The client SHOULD treat an unexpected error value as if it had been
    # NBD_EINVAL, rather than disconnecting from the server."
    def errors(conn: socket.socket) -> None:
        export_ok(conn)
        for error in (errno.ENOSPC, 0xFFFFFFFF, 0):
            _, cookie, _, length = next_request(conn)
            data = bytes(length) if not error else b""
            conn.sendall(struct.pack(">IIQ", nbd_mod.SIMPLE_REPLY_MAGIC, error, cookie) + data)
        recv_exact(conn, 28)  # NBD_CMD_DISC at close

    dev = open_nbd(fake(errors))
    results = []
    for _ in range(3):
        bio = Bio(BioOp.READ, 0, [bytearray(512)])
        dev.submit_bio(bio)
        try:
            results.append(bio.wait(timeout=20))
        except OSError as exc:
            results.append(exc.errno)
    assert results == [errno.ENOSPC, errno.EINVAL, 512]
    assert not dev.disconnected
    dev.close()


def test_an_option_reply_too_long_is_refused_unread(fake: Callable[[Script], str]) -> None:
    def huge(conn: socket.socket) -> None:
        greet(conn)
        rtype = nbd_mod.REP_INFO
        conn.sendall(struct.pack(">QIII", nbd_mod.REPLY_MAGIC, nbd_mod.OPT_GO, rtype, 2**32 - 1))
        recv_exact(conn, 1)  # hold the connection: the client must not wait for 4 GiB

    with pytest.raises(IOFailure, match="bad option reply"):
        open_nbd(fake(huge), timeout=20)


def test_a_port_that_is_not_a_number_is_einval() -> None:
    for address in ("localhost:nbd", "localhost:", "localhost:99999"):
        with pytest.raises(InvalidArgument, match="port") as info:
            open_nbd(address)
        assert info.value.errno == errno.EINVAL


def test_a_preflush_write_does_not_block_the_reader(fake: Callable[[Script], str]) -> None:
    """The PREFLUSH's data is dispatched when its FLUSH completes, on the reader thread:
    sent from there, a large write blocks once the socket fills, while a server that
    answers in order blocks sending READ replies nobody reads any more (a deadlock)."""
    nreads, read_len, write_len = 32, SIZE, SIZE

    def in_order(conn: socket.socket) -> None:
        export_ok(conn)
        requests = [next_request(conn) for _ in range(1 + nreads)]
        assert requests[0][0] == 3  # the PREFLUSH's FLUSH first
        for kind, cookie, _, length in requests:
            data = bytes(length) if kind == 0 else b""
            conn.sendall(struct.pack(">IIQ", nbd_mod.SIMPLE_REPLY_MAGIC, 0, cookie) + data)
        kind, cookie, _, length = next_request(conn)
        assert (kind, length) == (1, write_len)
        recv_exact(conn, length)
        conn.sendall(struct.pack(">IIQ", nbd_mod.SIMPLE_REPLY_MAGIC, 0, cookie))
        recv_exact(conn, 28)  # NBD_CMD_DISC at close

    dev = open_nbd(fake(in_order))
    write = Bio(BioOp.WRITE, 0, [bytes(write_len)], flags=BioFlags.PREFLUSH)
    reads = [Bio(BioOp.READ, 0, [bytearray(read_len)]) for _ in range(nreads)]
    dev.submit_bio(write)
    for bio in reads:
        dev.submit_bio(bio)
    assert write.wait(timeout=30) == write_len
    assert [bio.wait(timeout=30) for bio in reads] == [read_len] * nreads
    dev.close()
