"""The directory index refuses, at build, every name unpack_entries refuses.

A crafted leaf can hold an entry named ".", "..", or with "/" or NUL in it,
stored under the hash of that name, checksums valid.  The index must not
answer for it (it would hand out a name the tree's checks refuse): it keeps
the key as "read the tree", so a lookup reads the tree and raises EUCLEAN.
"""

from __future__ import annotations

import errno
import hashlib

import pytest

import daxfs
from daxfs.errors import Corrupted
from daxfs.fs.dir import MAYBE
from daxfs.fs.layout import DT_REG
from tests.fs import crafting


def populate(fs: daxfs.FileSystem) -> None:
    fs.mkdir("/d")
    fs.open("/d/x", "xb").close()


@pytest.mark.parametrize("name", [b".", b"..", b"/", b"a/b", b"a\0b", b"\0", b"abc/"])
def test_index_build_keeps_a_forbidden_name_for_the_tree(name: bytes) -> None:
    dev = crafting.fresh(populate)
    d, x = crafting.ino_of(dev, "/d"), crafting.ino_of(dev, "/d/x")
    hash_key = crafting.superblock(dev).hash_key
    key = int.from_bytes(hashlib.blake2b(name, digest_size=8, key=hash_key).digest(), "little")
    items = [*crafting.dir_leaf_entries(dev, d), (key, [(name, x, DT_REG)])]
    crafting.write_dir_leaf(dev, d, items)
    with daxfs.mount(dev) as fs:
        inode = fs.itable.get(d)
        assert fs.dirs.hash(name) == key
        index = fs.dirs._index(inode, True)
        assert index is not None
        assert index.find(key, name) is MAYBE  # not answered from the index
        assert index.find(fs.dirs.hash(b"x"), b"x") == (x, DT_REG)  # the good entry is
        with pytest.raises(Corrupted, match="malformed directory entry name") as raised:
            fs.dirs.lookup(fs.store, inode, name)
        assert raised.value.errno == errno.EUCLEAN
        assert fs.stat("/d/x").st_ino == x
