"""NbdBlockDevice against a real nbdkit started on a Unix socket (skipped without nbdkit)."""

from __future__ import annotations

import errno
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import daxfs
from daxfs.block import Bio, BioFlags, BioOp, BlockDevice
from daxfs.block.nbd import NbdBlockDevice, open_nbd
from daxfs.errors import IOFailure
from daxfs.testing.block_tests import BlockDeviceTests, pattern

pytestmark = pytest.mark.skipif(shutil.which("nbdkit") is None, reason="nbdkit is not installed")


class Servers:
    """nbdkit processes started by one test, each on its own Unix socket."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def __call__(self, *args: str) -> str:
        """Start ``nbdkit ARGS``; the socket's path."""
        sock = str(self.folder / f"nbd{len(self.procs)}.sock")
        proc = subprocess.Popen(
            ["nbdkit", "--foreground", "--exit-with-parent", "--unix", sock, *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.procs[sock] = proc
        # ready when it accepts a connection: the socket file appears at bind(), before
        # listen(), and a connect in between is refused (seen once under load)
        deadline = time.monotonic() + 20
        while not self._accepts(sock):
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                pytest.fail(f"nbdkit {' '.join(args)} exited: {err}")
            assert time.monotonic() < deadline, "nbdkit did not start"
            time.sleep(0.02)
        return sock

    @staticmethod
    def _accepts(sock: str) -> bool:
        """Whether a server listens on ``sock`` (the probe connection is closed at once)."""
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(sock)
        except (FileNotFoundError, ConnectionRefusedError):
            return False
        finally:
            probe.close()
        return True

    def kill(self, sock: str) -> None:
        """Kill the server of ``sock`` (by its process, which this test started)."""
        proc = self.procs[sock]
        proc.kill()
        proc.wait()


Start = Servers


@pytest.fixture
def nbdkit(tmp_path: Path) -> Iterator[Servers]:
    servers = Servers(tmp_path)
    yield servers
    for proc in servers.procs.values():
        proc.kill()
        proc.wait()
        if proc.stderr:
            proc.stderr.close()


class TestNbdMemory(BlockDeviceTests):
    @pytest.fixture
    def block_device(self, nbdkit: Start) -> Iterator[BlockDevice]:
        dev = open_nbd(nbdkit("memory", "2M"))
        yield dev
        if not dev.closed:
            dev.close()


def test_an_image_file_served_by_nbdkit(nbdkit: Start, tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(1 << 20))
    with open_nbd(nbdkit("file", str(image))) as dev:
        assert isinstance(dev, NbdBlockDevice)
        assert dev.size == 1 << 20
        assert dev.write_cache
        assert "nbd" in dev.engine
        dev.write(4096, pattern(8192, 1), fua=True)
        dev.flush()
        assert dev.read(4096, 8192) == pattern(8192, 1)
    assert image.read_bytes()[4096 : 4096 + 8192] == pattern(8192, 1)


def test_server_errors_reach_the_future(nbdkit: Start) -> None:
    sock = nbdkit("--filter=error", "memory", "1M", "error-pread=EIO", "error-pread-rate=100%")
    with open_nbd(sock) as dev:
        bio = Bio(BioOp.READ, 16, [bytearray(4096)])
        dev.submit_bio(bio)
        with pytest.raises(IOFailure, match=r"read of 4096 bytes at sector 16 of nbd:") as info:
            bio.wait()
        assert info.value.errno == errno.EIO
        dev.write(0, bytes(512))  # writes still work: the connection is fine
    with open_nbd(nbdkit("full", "1M")) as dev:
        with pytest.raises(OSError, match="sector 8") as info:
            dev.write(4096, bytes(4096))
        assert info.value.errno == errno.ENOSPC


def test_a_read_only_export(nbdkit: Start) -> None:
    with open_nbd(nbdkit("--readonly", "memory", "1M")) as dev:
        assert dev.readonly
        assert dev.read(0, 512) == bytes(512)
        with pytest.raises(OSError, match="read-only") as info:
            dev.write(0, bytes(512))
        assert info.value.errno == errno.EROFS


def test_disconnect_mid_io_fails_with_eio(nbdkit: Start) -> None:
    sock = nbdkit("--filter=delay", "memory", "1M", "delay-read=3")
    dev = open_nbd(sock)
    bio = Bio(BioOp.READ, 0, [bytearray(512)])
    dev.submit_bio(bio)
    time.sleep(0.2)
    nbdkit.kill(sock)
    with pytest.raises(IOFailure, match="disconnected") as info:
        bio.wait(timeout=20)
    assert info.value.errno == errno.EIO
    assert dev.disconnected
    later = Bio(BioOp.WRITE, 0, [bytes(512)], flags=BioFlags.FUA)
    dev.submit_bio(later)
    with pytest.raises(IOFailure, match="disconnected"):
        later.wait(timeout=20)
    dev.close()


def test_connection_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        open_nbd(str(tmp_path / "no.sock"))


def test_a_mount_goes_read_only_when_the_server_disconnects(nbdkit: Start) -> None:
    """Issue 10, section 3: an NBD server that disconnects mid-I/O: the operation fails
    with EIO, the mount turns read-only until remount (a failed journal commit is never
    guessed around), what was committed before stays readable, unmount still works."""
    sock = nbdkit("memory", "64M")
    dev = open_nbd(sock)
    daxfs.mkfs(dev)
    fs = daxfs.mount(dev)
    with fs.open("/kept", "wb") as f:
        f.write(b"committed before the disconnect")
    nbdkit.kill(sock)
    with pytest.raises(OSError, match="disconnected") as info, fs.open("/lost", "wb") as f:
        f.write(b"x" * 10_000)
    assert info.value.errno == errno.EIO
    with pytest.raises(OSError, match="read-only") as info:
        fs.mkdir("/later")
    assert info.value.errno == errno.EROFS
    with fs.open("/kept", "rb") as f:
        assert f.read() == b"committed before the disconnect"
    del info  # its traceback's frames hold views of the cache: unmount would be EBUSY
    fs.unmount()  # nothing can be written back: the loss was reported above
    assert not fs.mounted
    dev.close()
