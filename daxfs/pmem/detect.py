"""Backend selection: what kind of persistent memory a path is, and how to persist it.

The decision follows PMDK's libpmem2 (pmem2_source_from_fd, pmem2_map_new):

    path is a character device whose sysfs subsystem is "dax"
        -> device-DAX: whole-device MAP_SHARED mapping, size from sysfs,
           CPU flushes (msync does not apply to device-DAX)
    path is a regular file and mmap accepts MAP_SHARED_VALIDATE|MAP_SYNC
        -> file on a DAX filesystem: CPU flushes are enough (CACHE_LINE)
    any other regular file
        -> emulated pmem: MAP_SHARED, persist = msync of the pages (PAGE);
           persist="cpu" forces CPU flushes anyway (PMEM_IS_PMEM_FORCE), for
           DRAM-backed files on /dev/shm; not power-fail safe
    and wherever the CPU flushes: if the NVDIMM region's persistence_domain
    is "cpu_cache" (eADR), the caches are persistent: BYTE, fences only.

Every choice carries a reason in words; ``daxfs info`` prints them.
"""

from __future__ import annotations

import dataclasses
import enum
import errno
import mmap
import os

from daxfs.errors import InvalidArgument, NotSupported
from daxfs.pmem import cpu
from daxfs.pmem.device import Granularity
from daxfs.pmem.platform import MAP_SHARED_VALIDATE, MAP_SYNC, Platform

PERSIST_CHOICES = ("auto", "cpu", "msync")


class Backend(enum.Enum):
    """Kinds of persistent memory a path can be."""

    DEVDAX = "devdax"  # /dev/daxN.M character device
    FSDAX = "fsdax"  # file on a filesystem mounted -o dax, MAP_SYNC accepted
    FILE = "file"  # any other regular file: emulated pmem


@dataclasses.dataclass(frozen=True)
class Detection:
    """What open_device decided, with the reason for each decision."""

    backend: Backend
    granularity: Granularity
    persist_method: str  # "cpu" or "msync"
    region_mode: str  # flush instruction, "none" (fences only) or "msync"
    flush_instruction: str | None
    power_fail_safe: bool
    reasons: dict[str, str]


def choose_persist(
    platform: Platform,
    st: os.stat_result,
    backend: Backend,
    persist: str,
    map_sync: bool,
    backend_reason: str,
) -> Detection:
    """Decide granularity and persist method for an opened, mapped device."""
    if persist not in PERSIST_CHOICES:
        raise InvalidArgument(f"persist must be one of {PERSIST_CHOICES}, not {persist!r}")
    instruction, why_instruction = cpu.flush_instruction()
    reasons = {"backend": backend_reason, "flush instruction": why_instruction}
    hw_cpu_ok = backend is Backend.DEVDAX or map_sync  # CPU flushes are power-fail safe
    page = Granularity.PAGE

    if persist == "msync":
        if backend is Backend.DEVDAX:
            raise InvalidArgument("persist='msync' does not apply to device-DAX: no page cache")
        reasons["persist"] = "msync requested"
        reasons["granularity"] = "msync works on whole pages"
        return Detection(backend, page, "msync", "msync", instruction, True, reasons)
    if persist == "auto" and not hw_cpu_ok:
        reasons["persist"] = "not DAX (no MAP_SYNC): only msync makes stores durable"
        reasons["granularity"] = "msync works on whole pages"
        return Detection(backend, page, "msync", "msync", instruction, True, reasons)

    domain = platform.persistence_domain(st, is_char=backend is Backend.DEVDAX)
    eadr = hw_cpu_ok and domain == "cpu_cache" and cpu.native_available()
    if instruction is None and not eadr:
        if persist == "auto" and map_sync:
            reasons["persist"] = f"{why_instruction}: falling back to msync"
            reasons["granularity"] = "msync works on whole pages"
            return Detection(backend, page, "msync", "msync", None, True, reasons)
        raise NotSupported(
            f"{backend.value} with CPU persistence needs cache flushes: {why_instruction}"
        )

    if eadr:
        reasons["granularity"] = "region persistence_domain is cpu_cache (eADR): fences suffice"
        granularity, mode = Granularity.BYTE, "none"
    else:
        reasons["granularity"] = "CPU cache-line flushes reach the persistence domain"
        granularity, mode = Granularity.CACHE_LINE, str(instruction)
    if backend is Backend.DEVDAX:
        reasons["persist"] = "device-DAX: no page cache, CPU flushes and fences"
    elif map_sync:
        reasons["persist"] = "mmap accepted MAP_SYNC: the filesystem keeps blocks durable"
    else:
        reasons["persist"] = (
            "persist='cpu' forced on a non-DAX file (as PMEM_IS_PMEM_FORCE): "
            "fast, but NOT power-fail safe; fine for DRAM-backed /dev/shm"
        )
        reasons["granularity"] = "forced: CPU cache-line flushes, no msync"
    return Detection(backend, granularity, "cpu", mode, instruction, hw_cpu_ok, reasons)


def map_file(
    platform: Platform, fd: int, size: int, persist: str, readonly: bool
) -> tuple[mmap.mmap, bool, str]:
    """Map a regular file; try MAP_SYNC first unless msync is asked for.

    Returns (mapping, map_sync_accepted, why).
    """
    prot = mmap.PROT_READ if readonly else mmap.PROT_READ | mmap.PROT_WRITE
    if persist != "msync" and not readonly:
        try:
            mapping = platform.mmap(fd, size, MAP_SHARED_VALIDATE | MAP_SYNC, prot)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOTSUP):
                raise
            why = f"mmap refused MAP_SYNC ({errno.errorcode.get(exc.errno or 0, exc.errno)})"
            why += ": not a DAX filesystem, so this is emulated pmem"
        else:
            return mapping, True, "regular file on a DAX filesystem (mmap accepted MAP_SYNC)"
    elif readonly:
        why = "regular file mapped read-only (MAP_SYNC needs a writable mapping)"
    else:
        why = "regular file; MAP_SYNC not tried because persist='msync'"
    return platform.mmap(fd, size, mmap.MAP_SHARED, prot), False, why
