"""The POSIX conformance suite through the FUSE mount (os.* on the mount point).

The same cases as the Python API's (tests/fs/test_posix_oracle.py), from
daxfs.testing.posix_tests: each fresh side is a new directory on one mount
(mounted once for the class), reached with os.* as any program reaches it,
and compared with the host filesystem.  A case passes on both front ends or
the two disagree about POSIX.
"""

from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import Callable, Iterator

import pytest

from daxfs.testing.posix import HostSide, Side, SideFactory, host_umask
from daxfs.testing.posix_tests import PosixTests
from tests.fuse.mounts import FuseMount, skip_reason

pytestmark = pytest.mark.skipif(skip_reason() is not None, reason=f"no FUSE: {skip_reason()}")


class TestFuseMount(PosixTests):
    """The POSIX suite on a real FUSE mount of a daxfs image."""

    random_examples = 100  # each example mounts nothing, but every step is a round trip

    @pytest.fixture(scope="class")
    @classmethod
    def posix_side(cls) -> Iterator[SideFactory]:
        mnt = FuseMount(256 << 20, options="")
        numbers = itertools.count()

        def make() -> tuple[Side, Callable[[], None]]:
            root = mnt.path(f"case{next(numbers)}")
            with host_umask():
                os.mkdir(root)  # 0o755, as daxfs's root
            side = HostSide(root)

            def close() -> None:
                side.close()
                shutil.rmtree(root)

            return side, close

        try:
            yield make
        finally:
            mnt.close()
