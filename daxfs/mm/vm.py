"""The process's address space, as DAX mmap sees it: reserve, map, replace, unmap.

``Kernel`` wraps the raw calls of ``daxfs.mm._vm`` (tests substitute a
kernel that, like Linux before 4.17, ignores MAP_FIXED_NOREPLACE), and reads
``/proc/self/maps`` to learn what else occupies a range.  ``Registry`` knows
which ranges daxfs mappings own, so that ``fixed="replace"`` can refuse to
clobber memory that is not ours.

Placement policies, as the 2014 discussion named them:

    reserve(length, address=None)        the kernel picks (address is a hint)
    reserve(length, address, "noreplace") MAP_WEAK / MAP_FIXED_NOREPLACE: that
                                         address or FileExistsError, nothing changed
    reserve(length, address, "replace")  MAP_FIXED: replaces what is there, but
                                         only daxfs mappings; anything else is
                                         refused (EEXIST) since clobbering the
                                         interpreter's own memory would crash it

A mapping that ``replace`` destroys is finished in two steps: ``replaced``,
under the registry lock, unmaps what is left of it; ``after_replaced`` lets
go of its file -- and the last hold on an unlinked file frees it, which takes
the filesystem lock.  ``reserve`` runs under the inode lock of the file being
mapped, and the filesystem lock comes before any inode lock, so it only
collects the replaced mappings; the caller calls their ``after_replaced``
once it holds no inode lock (``File.mmap`` does, after the mapping is made).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Protocol

from daxfs.errors import Busy, Exists
from daxfs.mm import _vm

PAGE_SIZE = _vm.PAGE_SIZE
PROT_NONE = _vm.PROT_NONE
PROT_READ = _vm.PROT_READ
PROT_WRITE = _vm.PROT_WRITE
MAP_SHARED = _vm.MAP_SHARED
MAP_PRIVATE = _vm.MAP_PRIVATE
MAP_FIXED = _vm.MAP_FIXED
MAP_ANONYMOUS = _vm.MAP_ANONYMOUS
MAP_NORESERVE = _vm.MAP_NORESERVE
MAP_FIXED_NOREPLACE = _vm.MAP_FIXED_NOREPLACE

_RESERVE = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE
#: the large page size whose alignment placement keeps (x86-64 PMD)
HUGE_PAGE = 2 << 20


def page_up(n: int) -> int:
    return -(-n // PAGE_SIZE) * PAGE_SIZE


class Kernel:
    """mmap(2), munmap(2) and /proc/self/maps."""

    def mmap(self, addr: int, length: int, prot: int, flags: int, fd: int, offset: int) -> int:
        return _vm.mmap(addr, length, prot, flags, fd, offset)

    def munmap(self, addr: int, length: int) -> None:
        _vm.munmap(addr, length)

    def regions(self) -> Iterator[tuple[int, int, str]]:
        """(start, end, description) of every mapping of this process."""
        with open("/proc/self/maps", encoding="ascii", errors="replace") as f:
            for line in f:
                fields = line.split(maxsplit=5)
                start, end = (int(x, 16) for x in fields[0].split("-"))
                yield start, end, fields[5].strip() if len(fields) > 5 else "[anonymous]"


class Owner(Protocol):
    """A daxfs mapping, as the registry sees it."""

    @property
    def span(self) -> tuple[int, int]: ...

    def release(self) -> None: ...

    def reopen(self) -> None: ...

    def replaced(self, by: tuple[int, int]) -> None: ...

    def after_replaced(self) -> None: ...

    def busy(self) -> bool: ...


class Registry:
    """Address ranges owned by live daxfs mappings (one per process)."""

    def __init__(self) -> None:
        self._owners: dict[int, Owner] = {}
        self.lock = threading.RLock()

    def add(self, owner: Owner) -> None:
        with self.lock:
            self._owners[id(owner)] = owner

    def remove(self, owner: Owner) -> None:
        with self.lock:
            self._owners.pop(id(owner), None)

    def overlapping(self, start: int, end: int) -> list[Owner]:
        with self.lock:
            return [o for o in self._owners.values() if o.span[0] < end and start < o.span[1]]

    def owned(self, start: int, end: int) -> bool:
        """True if every byte of [start, end) lies in some daxfs mapping."""
        spans = sorted(o.span for o in self.overlapping(start, end))
        cur = start
        for lo, hi in spans:
            if lo > cur:
                return False
            cur = max(cur, hi)
            if cur >= end:
                return True
        return cur >= end


REGISTRY = Registry()


class AddressSpace:
    """Reservations of contiguous virtual ranges for mappings."""

    def __init__(self, kernel: Kernel | None = None, registry: Registry = REGISTRY) -> None:
        self.kernel = kernel or Kernel()
        self.registry = registry

    def reserve(
        self,
        length: int,
        address: int | None,
        fixed: str | None,
        align: int | None = None,
        *,
        replaced: list[Owner] | None = None,
    ) -> int:
        """Reserve ``length`` bytes (page multiple) of PROT_NONE address space.

        ``align``: when the kernel picks the place, make the address congruent to
        ``align`` modulo 2 MiB, as the kernel does for file mappings, so that
        the pages of a device extent can be mapped large (and fault in whole
        folios on the msync path).

        ``replaced`` (needed with ``fixed="replace"``): the daxfs mappings the
        reservation replaced are appended; the caller must call their
        ``after_replaced`` once it holds no inode lock (module docstring),
        whether or not what it does next succeeds.

        Raises:
            Exists (EEXIST, FileExistsError): noreplace over anything in use, or
                replace over memory daxfs does not own; nothing is changed.
            Busy: replace over a daxfs mapping whose buffers are exported.
        """
        kernel = self.kernel
        if fixed is None:
            if align is None or address is not None:
                return kernel.mmap(address or 0, length, PROT_NONE, _RESERVE, -1, 0)
            raw = kernel.mmap(0, length + HUGE_PAGE, PROT_NONE, _RESERVE, -1, 0)
            start = raw + (align - raw) % HUGE_PAGE
            if start > raw:
                kernel.munmap(raw, start - raw)
            tail = raw + length + HUGE_PAGE - (start + length)
            if tail:
                kernel.munmap(start + length, tail)
            return start
        assert address is not None
        if fixed == "noreplace":
            return self._noreplace(address, length)
        assert replaced is not None, "fixed='replace' needs a list for what it replaces"
        return self._replace(address, length, replaced)

    def _noreplace(self, address: int, length: int) -> int:
        try:
            got = self.kernel.mmap(
                address, length, PROT_NONE, _RESERVE | MAP_FIXED_NOREPLACE, -1, 0
            )
        except FileExistsError:
            raise Exists(
                f"address range [{address:#x}, {address + length:#x}) is in use "
                f"(fixed='noreplace', MAP_FIXED_NOREPLACE): {self._who(address, length)}"
            ) from None
        if got != address:  # a kernel before 4.17 ignores the flag and picks elsewhere
            self.kernel.munmap(got, length)
            raise Exists(
                f"address range [{address:#x}, {address + length:#x}) is in use "
                "(the kernel ignored MAP_FIXED_NOREPLACE and placed the mapping elsewhere)"
            )
        return got

    def _replace(self, address: int, length: int, replaced: list[Owner]) -> int:
        end = address + length
        with self.registry.lock:
            for start, stop, what in self.kernel.regions():
                if start < end and address < stop:
                    lo, hi = max(start, address), min(stop, end)
                    if not self.registry.owned(lo, hi):
                        raise Exists(
                            f"fixed='replace' refused: [{lo:#x}, {hi:#x}) holds {what}, which "
                            "daxfs does not own; MAP_FIXED there would silently destroy it "
                            "(use fixed='noreplace' to map only where the range is free)"
                        )
            victims = self.registry.overlapping(address, end)
            released: list[Owner] = []
            for victim in victims:
                try:
                    victim.release()  # atomically: no live buffer now, and none from now on
                except BufferError:
                    for done in released:
                        done.reopen()
                    raise Busy(
                        f"fixed='replace' refused: the daxfs mapping at {victim.span[0]:#x} "
                        "has live buffers (memoryview, numpy array); release them first"
                    ) from None
                released.append(victim)
            try:
                got = self.kernel.mmap(address, length, PROT_NONE, _RESERVE | MAP_FIXED, -1, 0)
            except BaseException:
                for done in released:
                    done.reopen()
                raise
            assert got == address, "MAP_FIXED placed a mapping elsewhere"
            for victim in victims:
                victim.replaced((address, end))
        replaced.extend(victims)  # their after_replaced: by the caller, without inode locks
        return got

    def _who(self, address: int, length: int) -> str:
        try:
            found = [
                what
                for start, stop, what in self.kernel.regions()
                if start < address + length and address < stop
            ]
        except OSError as exc:  # pragma: no cover - /proc is always there on Linux
            return f"(cannot read /proc/self/maps: {exc})"
        return ", ".join(sorted(set(found))) or "a mapping that went away"
