"""PmemDevice: persistent memory reached through a shared mapping of a path.

``open_device(path)`` stats the path, picks a backend (daxfs.pmem.detect),
maps the whole device once, and wraps the mapping in a persistence engine
(daxfs.pmem.cpu) that flushes with the CPU or with msync.

State diagram::

    open_device() --> OPEN --close()--> CLOSED
                       |  ^
                       |  '-- close() raised BufferError (views alive): still OPEN
                       '-- every method works; after CLOSED they raise ValueError

Invariants
  1. The mapping covers exactly ``[0, size)`` of the path and lives until
     close() succeeds; views from direct_access alias it.
  2. close() succeeds only when no view is exported (mmap refuses otherwise),
     so a view can never point at unmapped memory.
  3. The file descriptor stays open with the mapping: later layers map file
     extents from it (DAX mmap) and send from it (pinning).
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import stat as stat_mod
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING

from daxfs.errors import (
    Busy,
    InvalidArgument,
    IsADirectory,
    NotFound,
    NotSupported,
    ReadOnly,
)
from daxfs.pmem import cpu
from daxfs.pmem.detect import Backend, Detection, choose_persist, map_file
from daxfs.pmem.device import Device, Granularity, check_integer, check_range
from daxfs.pmem.platform import MAP_SHARED_VALIDATE, MAP_SYNC, Platform

if TYPE_CHECKING:
    from typing_extensions import Buffer

    from daxfs.pmem import _native


class PmemDevice(Device):
    """A mapped persistent-memory device; create with ``open_device``."""

    #: Device.native_stores: nothing but the persist primitives stands between a
    #: store and the media
    native_stores = True

    def __init__(
        self,
        path: str,
        fd: int,
        mapping: mmap.mmap,
        size: int,
        detection: Detection,
        readonly: bool,
        platform: Platform,
    ) -> None:
        assert 0 < size <= len(mapping)
        self.path = path
        self.size = size
        self.granularity: Granularity = detection.granularity
        self.persist_method = detection.persist_method
        self.detection = detection
        self.readonly = readonly
        self._fd = fd
        self._platform = platform
        # a device dropped while still open (its close refused: views alive on an
        # error path) must not keep its descriptor: close the fd when collected
        self._fd_closer = weakref.finalize(self, platform.close, fd)
        self._map: mmap.mmap | None = mapping
        self._view, self._region = self._attach()
        if detection.backend is Backend.FSDAX:
            self.map_flags = MAP_SHARED_VALIDATE | MAP_SYNC

    def _attach(self) -> tuple[memoryview, cpu.Region]:
        """View and persistence engine over the first ``size`` bytes of the mapping."""
        assert self._map is not None
        with memoryview(self._map) as whole:
            view = whole[: self.size]
        region = cpu.make_region(self._map, view, self.detection.region_mode, self.readonly)
        return view, region

    # -- properties ------------------------------------------------------------

    @property
    def backend(self) -> Backend:
        return self.detection.backend

    @property
    def flush_instruction(self) -> str | None:
        """The CPU flush instruction in use, or None (msync or fences only)."""
        mode = self._region.mode
        return mode if mode in cpu.FLUSH_INSTRUCTIONS else None

    @property
    def closed(self) -> bool:
        return self._map is None

    @property
    def fd(self) -> int:
        """The open file descriptor of the device (for mapping extents, sendfile)."""
        self._check_open()
        return self._fd

    @property
    def address(self) -> int:
        """Virtual address of device byte 0 in this process."""
        return self._region.address

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{self.size} bytes"
        return (
            f"<PmemDevice {self.path!r} {self.backend.value} {state} "
            f"{self.granularity.name} via {self.persist_method}>"
        )

    # -- data path -------------------------------------------------------------

    def _check_open(self) -> None:
        if self._map is None:
            raise ValueError("I/O operation on closed device")

    def direct_access(self, offset: int, length: int) -> memoryview:
        self._check_open()
        check_range(offset, length, self.size)
        return self._view[offset : offset + length]

    def native_region(self) -> _native.Region | None:
        """Device.native_region: the C engine, unless devices fell back to msync without
        it (after a refused close, the engine made anew: a reader of the old one misses)."""
        region = self._region
        return region if cpu.is_native(region) else None

    def read(self, offset: int, length: int) -> bytes:
        return self._region.read(offset, length)

    def readinto(self, offset: int, buffer: Buffer) -> int:
        return self._region.read_into(offset, buffer)

    def write(self, offset: int, data: Buffer, *, drain: bool = True) -> None:
        if self.readonly:
            raise ReadOnly(f"device {self.path} is open read-only", self.path)
        self._region.memcpy(offset, data, drain)

    def writer(self) -> Callable[[int, Buffer], None]:
        """Device.writer: the engine's memcpy itself (drain=False), after the same checks."""
        if self.readonly:
            return super().writer()

        def write_nodrain(offset: int, data: Buffer) -> None:
            self._region.memcpy(offset, data, False)

        return write_nodrain

    def fill(self, offset: int, length: int, byte: int = 0, *, drain: bool = True) -> None:
        if self.readonly:
            raise ReadOnly(f"device {self.path} is open read-only", self.path)
        self._region.memset(offset, length, byte, drain)

    def flush(self, offset: int, length: int) -> None:
        self._region.flush(offset, length)

    def drain(self) -> None:
        self._region.drain()

    def persist(self, offset: int, length: int) -> None:
        self._region.persist(offset, length)

    def persister(self) -> Callable[[int, int], None]:
        """Device.persister: the engine's own persist (a C method, checked there)."""
        return self._region.persist

    def claim(self, exclusive: bool, who: str) -> None:
        """As Device.claim, and across processes with flock(2) on the device file."""
        self._check_open()
        super().claim(exclusive, who)
        try:
            fcntl.flock(self._fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except BlockingIOError:
            super().unclaim()
            raise Busy(
                f"{self.path} is in use by another process (already mounted)", self.path
            ) from None

    def unclaim(self) -> None:
        super().unclaim()
        if getattr(self, "_claims", 0) == 0 and self._map is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    # -- lifecycle -------------------------------------------------------------

    def close(self) -> None:
        mapping = self._map
        if mapping is None:
            return
        self._region.release()
        self._view.release()
        try:
            mapping.close()
        except BufferError:
            self._view, self._region = self._attach()
            raise BufferError(
                f"cannot close {self.path}: views from direct_access are still alive"
            ) from None
        self._map = None
        self._fd_closer()


def open_device(
    path: str | os.PathLike[str],
    size: int | None = None,
    *,
    create: bool = False,
    persist: str = "auto",
    readonly: bool = False,
    platform: Platform | None = None,
) -> PmemDevice:
    """Open persistent memory at ``path`` and map it.

    ``size`` is the number of bytes to use (default: the whole file or device).
    With ``create=True`` a missing file is created, and a file smaller than
    ``size`` is grown (sparse).  ``persist`` is "auto" (what the backend
    needs), "cpu" (force CPU flushes, PMEM_IS_PMEM_FORCE) or "msync".

    Raises:
        FileNotFoundError (ENOENT): path missing and create is False.
        IsADirectoryError (EISDIR): path is a directory.
        OSError(ENODEV): a FIFO, socket, block or non-DAX character device.
        InvalidArgument (EINVAL): bad size or persist; file smaller than size
            without create; persist="msync" on device-DAX.
        NotSupported (EOPNOTSUPP): persist="cpu" without flush instructions.
        PermissionError (EACCES): the path cannot be opened.
        Nothing is created or changed when an error is raised, except that
        create=True may have created or grown the file before a later failure.
    """
    platform = platform or Platform()
    name = os.fsdecode(os.fspath(path))
    if size is not None:
        check_integer(size, "size")
        if size == 0:
            raise InvalidArgument(f"size must be positive for {name}", name)
    if not isinstance(persist, str) or persist not in ("auto", "cpu", "msync"):
        raise InvalidArgument(f"persist must be 'auto', 'cpu' or 'msync', not {persist!r}", name)
    if readonly and create:
        raise InvalidArgument(f"cannot create {name} read-only", name)

    _stat_or_create(platform, name, size, create)
    flags = os.O_RDONLY if readonly else os.O_RDWR
    fd = platform.open(name, flags)
    try:
        return _map_device(platform, name, fd, platform.fstat(fd), size, create, persist, readonly)
    except BaseException:
        platform.close(fd)
        raise


def _stat_or_create(
    platform: Platform, name: str, size: int | None, create: bool
) -> os.stat_result:
    try:
        st = platform.stat(name)
    except FileNotFoundError:
        if not create:
            raise NotFound(f"no such file or device: {name}", name) from None
        if size is None:
            raise InvalidArgument(f"size is required to create {name}", name) from None
        fd = platform.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            platform.ftruncate(fd, size)
        finally:
            platform.close(fd)
        return platform.stat(name)
    if stat_mod.S_ISDIR(st.st_mode):
        raise IsADirectory(f"{name} is a directory, not a file or device", name)
    if not (stat_mod.S_ISREG(st.st_mode) or stat_mod.S_ISCHR(st.st_mode)):
        kind = _kind(st.st_mode)
        raise OSError(errno.ENODEV, f"{name} is a {kind}: cannot be mapped as pmem", name)
    return st


def _kind(mode: int) -> str:
    for test, word in (
        (stat_mod.S_ISFIFO, "FIFO"),
        (stat_mod.S_ISSOCK, "socket"),
        (stat_mod.S_ISBLK, "block device (use daxfs.block)"),
    ):
        if test(mode):
            return word
    return "special file"


def _map_device(
    platform: Platform,
    name: str,
    fd: int,
    st: os.stat_result,
    size: int | None,
    create: bool,
    persist: str,
    readonly: bool,
) -> PmemDevice:
    if stat_mod.S_ISCHR(st.st_mode):
        return _map_devdax(platform, name, fd, st, size, persist, readonly)
    if not stat_mod.S_ISREG(st.st_mode):  # replaced between stat and open
        raise OSError(errno.ENODEV, f"{name} is a {_kind(st.st_mode)}: cannot be mapped", name)
    length = size if size is not None else st.st_size
    if length == 0:
        raise InvalidArgument(f"{name} is empty: give a size and create=True", name)
    if st.st_size < length:
        if not create:
            raise InvalidArgument(
                f"{name} holds {st.st_size} bytes, fewer than the {length} asked for "
                "(use create=True to grow it)",
                name,
            )
        platform.ftruncate(fd, length)
    mapping, map_sync, why = map_file(platform, fd, length, persist, readonly)
    try:
        backend = Backend.FSDAX if map_sync else Backend.FILE
        detection = choose_persist(platform, st, backend, persist, map_sync, why)
        return PmemDevice(name, fd, mapping, length, detection, readonly, platform)
    except BaseException:
        mapping.close()
        raise


def _map_devdax(
    platform: Platform,
    name: str,
    fd: int,
    st: os.stat_result,
    size: int | None,
    persist: str,
    readonly: bool,
) -> PmemDevice:
    subsystem = platform.char_subsystem(st)
    if subsystem != "dax":
        raise OSError(
            errno.ENODEV, f"{name} is a character device but not device-DAX ({subsystem})", name
        )
    dev_size = platform.devdax_size(st)
    if dev_size is None:
        raise NotSupported(f"{name}: sysfs gives no size for this device-DAX", name)
    if size is not None and size > dev_size:
        raise InvalidArgument(f"{name} holds {dev_size} bytes, fewer than the {size} asked", name)
    prot = mmap.PROT_READ if readonly else mmap.PROT_READ | mmap.PROT_WRITE
    # device-DAX must be mapped whole (its alignment, usually 2 MiB, applies)
    mapping = platform.mmap(fd, dev_size, mmap.MAP_SHARED, prot)
    try:
        why = f"character device with sysfs subsystem 'dax' ({dev_size} bytes from sysfs)"
        detection = choose_persist(platform, st, Backend.DEVDAX, persist, False, why)
        return PmemDevice(name, fd, mapping, size or dev_size, detection, readonly, platform)
    except BaseException:
        mapping.close()
        raise
