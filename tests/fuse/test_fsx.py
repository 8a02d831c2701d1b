"""fsx through a real FUSE mount: os.* on a file of a mounted daxfs image.

daxfs.testing.osfsx runs fsx's generator, model and checks with os.pread,
os.pwrite, ftruncate, fallocate(2), SEEK_DATA/SEEK_HOLE, mmap of the
descriptor, O_DIRECT and fsync; each ``remount`` unmounts (``daxfs umount``),
runs fsck on the image (must be clean), mounts again and checks the whole
file.  A short run is part of make test; longer ones are marked slow.
"""

from __future__ import annotations

import pytest

from daxfs.testing.fsx import FsxFailure, Op
from daxfs.testing.osfsx import API_ONLY, OsFsx, os_options
from tests.fuse.mounts import FuseMount, skip_reason

pytestmark = pytest.mark.skipif(skip_reason() is not None, reason=f"no FUSE: {skip_reason()}")


def remounting(mnt: FuseMount) -> None:
    mnt.unmount()
    mnt.fsck()
    mnt.mount()


def run(seed: int, ops: int, remount_every: int) -> str:
    mnt = FuseMount(64 << 20, options="")
    try:
        opts = os_options(remount_every=remount_every, device_size=64 << 20)
        fsx = OsFsx(seed, mnt.root, opts, remount=lambda: remounting(mnt))
        try:
            stats = fsx.run(ops=ops)
        finally:
            fsx.close()
        for kind in API_ONLY:
            assert kind not in stats.by_kind
        for kind in ("read", "write", "truncate", "fallocate", "mapwrite", "seek", "dwrite"):
            assert stats.by_kind.get(kind, 0) > 0, f"{kind} never drawn: {stats.by_kind}"
        assert stats.remounts == ops // (remount_every + 1)
        return stats.summary()
    finally:
        mnt.close()  # unmount + fsck clean


def test_fsx_through_fuse_short() -> None:
    print(run(seed=11, ops=400, remount_every=150))


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_fsx_through_fuse_long(seed: int) -> None:
    print(run(seed=seed, ops=5000, remount_every=1000))


def test_a_wrong_result_through_the_mount_is_caught() -> None:
    """The checks bite through os.*: a byte changed behind fsx's back fails the next read."""
    mnt = FuseMount(64 << 20, options="")
    try:
        opts = os_options(remount_every=0)
        opts.weights = {k: 0 for k in opts.weights} | {"write": 1}
        fsx = OsFsx(5, mnt.root, opts)
        try:
            fsx.run(ops=10)
            size = len(fsx.model)
            assert size > 0
            middle = size // 2
            with open(fsx.path, "r+b") as f:
                f.seek(middle)
                f.write(bytes([fsx.model[middle] ^ 0xFF]))
            with pytest.raises(FsxFailure, match="pread"):
                fsx.run_ops([Op("read", 0, size)])
        finally:
            fsx.close()
    finally:
        mnt.close()
