"""nsstress through a real FUSE mount (daxfs.testing.osstress): several threads
create, rename (plain, RENAME_EXCHANGE), link, unlink, rmdir, symlink, write,
punch, truncate and set or remove extended attributes with os.* on a mounted
image, in private directories (checked against a model after every operation)
and a shared one (raced); then every check, ``daxfs umount``, fsck, mount and
every check again.  A short run is part of make test; a long one is slow.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

from daxfs.fuse import mount_background, unmount
from daxfs.testing import osstress
from daxfs.testing.nsstress import StressFailure, StressOptions, StressStats
from tests.fuse.mounts import skip_reason
from tests.testing.known_bugs import SLOW_SECONDS

pytestmark = pytest.mark.skipif(skip_reason() is not None, reason=f"no FUSE: {skip_reason()}")

#: what a run must have made through the mount (the DAX flag is not drawn there)
KINDS = (
    "create", "write", "punch", "shrink", "rename", "exchange", "link", "unlink", "mkdir",
    "rmdir", "symlink", "setxattr", "removexattr", "shared create", "shared write",
    "shared exchange", "shared rename", "shared link", "shared unlink", "shared rmdir",
)  # fmt: skip


@pytest.fixture
def mountpoint() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="daxfs-stress-mnt-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def run(seed: int, mountpoint: str, **kwargs: Any) -> StressStats:
    """osstress.run_mounted with ``daxfs mount`` (background) and ``daxfs umount``."""

    def mount(image: str) -> str:
        pid, why = mount_background(image, mountpoint)
        if not pid:
            raise OSError(f"daxfs mount {image}: {why}")
        assert os.path.ismount(mountpoint)
        return mountpoint

    return osstress.run_mounted(seed, mount=mount, unmount=unmount, **kwargs)


@pytest.mark.parametrize("seed", [1, 2])
def test_nsstress_through_the_mount(seed: int, mountpoint: str) -> None:
    stats = run(seed, mountpoint, ops=300, options=StressOptions(threads=4))
    assert stats.checks == 2  # at the end, and after umount + fsck + mount
    missing = [k for k in KINDS if not stats.by_kind.get(k)]
    assert missing == [], stats.by_kind
    assert "set_dax" not in stats.by_kind


def test_a_wrong_answer_through_the_mount_is_caught(
    monkeypatch: pytest.MonkeyPatch, mountpoint: str
) -> None:
    """A planted bug in the os.* side (RENAME_EXCHANGE done as a plain rename):
    the private models see it."""
    rename = osstress.OsFileSystem.rename

    def no_exchange(
        self: osstress.OsFileSystem, src: str, dst: str, *, noreplace: bool = False,
        exchange: bool = False,
    ) -> None:  # fmt: skip
        rename(self, src, dst, noreplace=noreplace)

    monkeypatch.setattr(osstress.OsFileSystem, "rename", no_exchange)
    with pytest.raises(StressFailure, match="exchange"):
        run(1, mountpoint, ops=300)


@pytest.mark.slow
@pytest.mark.timeout(SLOW_SECONDS * 2 + 300)
@pytest.mark.parametrize("seed", [3, 4])
def test_nsstress_through_the_mount_long(seed: int, mountpoint: str) -> None:
    stats = run(
        seed, mountpoint, seconds=SLOW_SECONDS / 2, options=StressOptions(threads=6), size=64 << 20
    )
    assert stats.checks == 2
    assert stats.ops > 0
