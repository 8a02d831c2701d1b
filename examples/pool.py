"""A persistent pool that stores raw pointers, mapped at the same address on every run.

Pointer-based structures (linked lists, trees) in persistent memory store
virtual addresses.  They stay valid across runs only if the pool is mapped at
the same address each time: this example asks for it with
``fixed="noreplace"`` (MAP_WEAK, Linux's MAP_FIXED_NOREPLACE), which maps
exactly there or fails with FileExistsError, leaving everything as it was.

When the address is taken (another mapping, a different process layout), the
pool falls back to any address and *relocates*: every stored pointer is
rebased by the difference, and the new base is recorded.  Never MAP_FIXED
("replace"): that would silently destroy whatever occupies the address.

Run it twice (``python examples/pool.py IMAGE``): the second run finds the
list the first one built, at the same address.
"""

from __future__ import annotations

import ctypes
import os
import struct
import sys

import daxfs

POOL_SIZE = 1 << 20
PREFERRED = 0x7E0000000000  # an address high in the user half, usually free
HEADER = struct.Struct("<8sQQQ")  # magic, base address, head pointer, next free offset
NODE = struct.Struct("<QQ")  # next pointer, value
MAGIC = b"DAXPOOL1"


class Pool:
    def __init__(self, mapping: daxfs.Mapping) -> None:
        self.m = mapping
        self.base = mapping.address
        self.view = memoryview(mapping)

    def header(self) -> tuple[bytes, int, int, int]:
        magic, base, head, free = HEADER.unpack_from(self.view, 0)
        return magic, base, head, free

    def format(self) -> None:
        HEADER.pack_into(self.view, 0, MAGIC, self.base, 0, HEADER.size)
        self.m.msync(0, HEADER.size)

    def relocate(self, old_base: int) -> int:
        """Rebase every pointer from ``old_base`` to this mapping's address."""
        delta = self.base - old_base
        _, _, head, free = self.header()
        moved = 0
        node = head + delta if head else 0
        while node:
            nxt, value = NODE.unpack_from(self.view, node - self.base)
            NODE.pack_into(self.view, node - self.base, nxt + delta if nxt else 0, value)
            node = nxt + delta if nxt else 0
            moved += 1
        HEADER.pack_into(self.view, 0, MAGIC, self.base, head + delta if head else 0, free)
        self.m.msync()
        return moved

    def push(self, value: int) -> int:
        """Allocate a node holding ``value`` and link it at the head; returns its address."""
        _, base, head, free = self.header()
        addr = self.base + free
        NODE.pack_into(self.view, free, head, value)
        self.m.msync(free, NODE.size)  # the node is durable before anything points to it
        HEADER.pack_into(self.view, 0, MAGIC, base, addr, free + NODE.size)
        self.m.msync(0, HEADER.size)
        return addr

    def values(self) -> list[int]:
        """Walk the list by following raw pointers through real memory (ctypes)."""
        _, _, head, _ = self.header()
        out = []
        node = head
        while node:
            nxt = ctypes.c_uint64.from_address(node).value
            out.append(ctypes.c_uint64.from_address(node + 8).value)
            node = nxt
        return out

    def close(self) -> None:
        self.view.release()
        self.m.close()


def open_pool(fs: daxfs.FileSystem, path: str) -> tuple[Pool, str]:
    if not fs.exists(path):
        with fs.open(path, "wb", buffering=0) as f:
            f.truncate(POOL_SIZE)
    f = fs.open(path, "rb+", buffering=0)
    try:
        mapping = f.mmap(address=PREFERRED, fixed="noreplace")
        how = f"mapped at the preferred address {PREFERRED:#x}"
    except FileExistsError as exc:
        mapping = f.mmap()  # fall back: anywhere, then relocate the pointers
        how = f"preferred address taken ({exc.strerror}); mapped at {mapping.address:#x}"
    f.close()  # the mapping stays valid
    return Pool(mapping), how


def main(image: str) -> None:
    if not os.path.exists(image):
        daxfs.mkfs(image, 16 << 20)
    with daxfs.mount(image) as fs:
        pool, how = open_pool(fs, "/pool")
        print(how)
        magic, base, _, _ = pool.header()
        if magic != MAGIC:
            pool.format()
            print("new pool")
        elif base != pool.base:
            print(f"relocated {pool.relocate(base)} pointers from {base:#x} to {pool.base:#x}")
        addr = pool.push(len(pool.values()) + 1)
        print(f"pushed a node at {addr:#x}; list (newest first): {pool.values()}")
        pool.close()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "pool.pmem")
