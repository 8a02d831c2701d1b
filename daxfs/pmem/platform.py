"""What the kernel answers, behind one small interface that tests can fake.

Backend selection (daxfs.pmem.detect) asks the kernel a handful of questions:
what kind of file is this, what does sysfs say about the device behind it, will
mmap accept MAP_SYNC.  ``Platform`` is the real kernel; tests substitute a
subclass that answers as a machine with device-DAX or a DAX filesystem would,
so those backends are exercised on machines without persistent memory.
"""

from __future__ import annotations

import mmap
import os
import re

#: mmap flag: validate every flag bit, fail with EOPNOTSUPP on unknown ones (Linux 4.15).
MAP_SHARED_VALIDATE = 0x03
#: mmap flag: blocks behind a writable mapping are in the file after a crash (DAX only).
MAP_SYNC = 0x80000
#: mmap flag: map at exactly the hint address or fail with EEXIST (Linux 4.17).
MAP_FIXED_NOREPLACE = 0x100000

_REGION_RE = re.compile(r"/(region\d+)(?:/|$)")


class Platform:
    """The real kernel: stat, sysfs and mmap."""

    def stat(self, path: str) -> os.stat_result:
        return os.stat(path)

    def open(self, path: str, flags: int, mode: int = 0o666) -> int:
        return os.open(path, flags | os.O_CLOEXEC, mode)

    def fstat(self, fd: int) -> os.stat_result:
        return os.fstat(fd)

    def ftruncate(self, fd: int, size: int) -> None:
        os.ftruncate(fd, size)

    def close(self, fd: int) -> None:
        os.close(fd)

    def read_sysfs(self, path: str) -> str | None:
        """Contents of a sysfs attribute, stripped, or None if it is absent."""
        try:
            with open(path, encoding="ascii", errors="replace") as f:
                return f.read().strip()
        except OSError:
            return None

    def realpath(self, path: str) -> str:
        return os.path.realpath(path)

    def mmap(self, fd: int, length: int, flags: int, prot: int) -> mmap.mmap:
        return mmap.mmap(fd, length, flags=flags, prot=prot)

    # -- derived questions, built on the primitives above -----------------------

    def char_subsystem(self, st: os.stat_result) -> str | None:
        """Subsystem of a character device ("dax" for device-DAX), from sysfs."""
        link = f"/sys/dev/char/{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}/subsystem"
        target = self.realpath(link)
        if target == link:
            return None
        return os.path.basename(target)

    def devdax_size(self, st: os.stat_result) -> int | None:
        text = self.read_sysfs(f"/sys/dev/char/{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}/size")
        return int(text) if text and text.isdigit() else None

    def persistence_domain(self, st: os.stat_result, is_char: bool) -> str | None:
        """The NVDIMM region's persistence_domain ("cpu_cache", "memory_controller").

        For a device-DAX node the region is found from the char device, for a
        file from the block device that holds its filesystem.  None when the
        device is not on an NVDIMM region (emulated pmem).
        """
        if is_char:
            link = f"/sys/dev/char/{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}/device"
        else:
            link = f"/sys/dev/block/{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
        match = _REGION_RE.search(self.realpath(link))
        if match is None:
            return None
        return self.read_sysfs(f"/sys/bus/nd/devices/{match.group(1)}/persistence_domain")
