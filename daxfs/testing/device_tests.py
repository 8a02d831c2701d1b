"""DeviceTests: the conformance suite for ``daxfs.pmem.Device`` implementations.

Subclass it in a test module and provide a ``device`` fixture that yields an
open device of at least 64 KiB (zero-filled); pytest collects the subclass.
Every backend of daxfs runs the same checks (zarr's ``StoreTests`` pattern).
"""

from __future__ import annotations

import errno
import threading

import pytest

from daxfs.pmem.device import Device, Granularity

KIB = 1024


class DeviceTests:
    """Behaviour every device must show; needs a ``device`` fixture."""

    def test_size_and_properties(self, device: Device) -> None:
        assert device.size >= 64 * KIB
        assert isinstance(device.granularity, Granularity)
        assert device.persist_method in ("cpu", "msync")
        assert not device.closed

    def test_write_then_read(self, device: Device) -> None:
        device.write(100, b"hello pmem")
        assert device.read(100, 10) == b"hello pmem"
        buf = bytearray(5)
        assert device.readinto(106, buf) == 5
        assert buf == b"pmem\x00"

    @pytest.mark.parametrize("length", [1, 63, 64, 255, 256, 257, 4096, 4099, 70000])
    @pytest.mark.parametrize("misalign", [0, 1, 13, 64])
    def test_write_lengths_and_alignment(self, device: Device, length: int, misalign: int) -> None:
        data = bytes((i * 7 + length) % 251 for i in range(length))
        offset = 256 + misalign
        device.fill(0, offset + length + 64, 0xEE)
        device.write(offset, data)
        assert device.read(offset, length) == data
        assert device.read(offset - 1, 1) == b"\xee"
        assert device.read(offset + length, 1) == b"\xee"

    def test_write_drain_false_then_drain(self, device: Device) -> None:
        device.write(0, b"x" * 300, drain=False)
        device.drain()
        assert device.read(0, 300) == b"x" * 300

    def test_direct_access_aliases_memory(self, device: Device) -> None:
        view = device.direct_access(4096, 16)
        assert len(view) == 16
        assert not view.readonly
        view[0:4] = b"abcd"
        device.persist(4096, 4)
        assert device.read(4096, 4) == b"abcd"
        device.write(4100, b"efgh")
        assert bytes(view[4:8]) == b"efgh"
        view.release()

    def test_fill(self, device: Device) -> None:
        device.fill(1000, 5000, 0x5A)
        assert device.read(1000, 5000) == b"\x5a" * 5000
        assert device.read(999, 1) == b"\x00"
        device.fill(1000, 5000)
        assert device.read(1000, 5000) == bytes(5000)

    def test_flush_drain_persist_accept_any_inside_range(self, device: Device) -> None:
        device.flush(0, 1)
        device.flush(device.size - 1, 1)
        device.drain()
        device.persist(3, 4093)
        device.persist(0, 0)
        device.persist(device.size, 0)

    def test_whole_device_range(self, device: Device) -> None:
        device.persist(0, device.size)
        assert len(device.read(device.size - 8, 8)) == 8

    @pytest.mark.parametrize(
        ("offset", "length"),
        [(-1, 4), (0, -1), ("x", 4), (1.5, 4), (0, None), (True, 1)],
    )
    def test_bad_arguments(self, device: Device, offset: object, length: object) -> None:
        for call in (
            lambda: device.persist(offset, length),  # type: ignore[arg-type]
            lambda: device.flush(offset, length),  # type: ignore[arg-type]
            lambda: device.read(offset, length),  # type: ignore[arg-type]
            lambda: device.direct_access(offset, length),  # type: ignore[arg-type]
            lambda: device.fill(offset, length),  # type: ignore[arg-type]
        ):
            with pytest.raises(ValueError, match=r"offset|length|range") as info:
                call()
            assert getattr(info.value, "errno", errno.EINVAL) == errno.EINVAL

    def test_out_of_range_names_the_range(self, device: Device) -> None:
        size = device.size
        for call in (
            lambda: device.read(size - 4, 8),
            lambda: device.write(size - 4, b"12345678"),
            lambda: device.persist(size, 1),
            lambda: device.direct_access(size - 1, 2),
            lambda: device.readinto(size - 1, bytearray(2)),
            lambda: device.fill(size, 1),
        ):
            with pytest.raises(ValueError, match=r"range \[\d+, \d+\) is outside") as info:
                call()
            assert isinstance(info.value, OSError)
            assert info.value.errno == errno.EINVAL
        assert device.read(size - 4, 4) == bytes(4)  # nothing was written

    def test_huge_values_do_not_overflow(self, device: Device) -> None:
        for offset, length in ((2**63, 1), (1, 2**63), (2**64, 2**64), (2**200, 0)):
            with pytest.raises(ValueError, match=r"range|out of range"):
                device.persist(offset, length)
            with pytest.raises(ValueError, match=r"range|out of range"):
                device.read(offset, length)

    def test_close_is_idempotent_and_final(self, device: Device) -> None:
        device.close()
        device.close()
        assert device.closed
        for call in (
            lambda: device.read(0, 1),
            lambda: device.write(0, b"x"),
            lambda: device.persist(0, 1),
            lambda: device.direct_access(0, 1),
            lambda: device.drain(),
        ):
            with pytest.raises(ValueError, match="closed"):
                call()

    def test_close_refused_while_views_alive(self, device: Device) -> None:
        view = device.direct_access(0, 8)
        with pytest.raises(BufferError):
            device.close()
        assert not device.closed
        view[0:1] = b"z"  # the view still points at live memory
        assert device.read(0, 1) == b"z"
        view.release()
        device.close()
        assert device.closed

    def test_context_manager_closes(self, device: Device) -> None:
        with device as d:
            assert d is device
        assert device.closed

    def test_threads_write_disjoint_ranges(self, device: Device) -> None:
        def work(k: int) -> None:
            for i in range(50):
                device.write(k * 8192 + i * 64, bytes([k + 1]) * 64)

        threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for k in range(4):
            assert device.read(k * 8192, 50 * 64) == bytes([k + 1]) * (50 * 64)
