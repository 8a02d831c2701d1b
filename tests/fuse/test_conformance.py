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
from typing import ClassVar

import pytest

from daxfs.testing.posix import HostSide, Side, SideFactory, host_umask
from daxfs.testing.posix_tests import PosixTests
from tests.fuse.mounts import FuseMount, skip_reason

pytestmark = pytest.mark.skipif(skip_reason() is not None, reason=f"no FUSE: {skip_reason()}")


class TestFuseMount(PosixTests):
    """The POSIX suite on a real FUSE mount of a daxfs image."""

    random_examples = 100  # each example mounts nothing, but every step is a round trip
    #: libfuse's high-level API knows an inode by its path; the kernel sends fstat,
    #: fchmod, fchown and futimens with the inode alone (a handle only with ftruncate),
    #: so once the file's last name through the mount is gone libfuse answers ESTALE
    #: before any callback (docs/ARCHITECTURE.md, "The FUSE front end")
    open_file_failures: ClassVar[dict[str, str]] = dict.fromkeys(
        [
            "replaced-by-rename",
            "unlinked-last-name",
            "unlinked-other-name-left",
            "unlinked-read-only",
            "unlinked-then-directory-removed",
        ],
        "libfuse high-level API: fstat/fchmod/fchown/futimens of an unlinked file is ESTALE",
    )

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
