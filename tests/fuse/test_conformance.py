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

import hypothesis.strategies as stx
import pytest
from hypothesis import HealthCheck, given, settings

from daxfs.testing.posix import (
    HostSide,
    Side,
    SideFactory,
    Step,
    host_umask,
    mirror_above_root,
    run_steps,
)
from daxfs.testing.posix_tests import SEED, PosixTests, random_steps
from tests.fuse.mounts import FuseMount, skip_reason

pytestmark = pytest.mark.skipif(skip_reason() is not None, reason=f"no FUSE: {skip_reason()}")


def fresh_side(mnt: FuseMount, name: str) -> tuple[Side, Callable[[], None]]:
    """A side rooted at ``name/root`` on the mount: its parent is fresh and holds
    what the host side's does (Oracle: ``mirror_above_root``), so a relative link
    climbing out of the root ('../b') finds the root's own entry on both sides,
    and a directory made through one goes away with the case."""
    top = mnt.path(name)
    root = f"{top}/root"
    with host_umask():
        os.mkdir(top)
        os.mkdir(root)  # 0o755, as daxfs's root
    mirror_above_root(root)
    side = HostSide(root)

    def close() -> None:
        side.close()
        shutil.rmtree(top)

    return side, close


class TestFuseMount(PosixTests):
    """The POSIX suite on a real FUSE mount of a daxfs image."""

    random_examples = 100  # each example mounts nothing, but every step is a round trip

    @pytest.fixture(scope="class")
    @classmethod
    def posix_side(cls) -> Iterator[SideFactory]:
        mnt = FuseMount(256 << 20, options="")
        numbers = itertools.count()

        def make() -> tuple[Side, Callable[[], None]]:
            return fresh_side(mnt, f"case{next(numbers)}")

        try:
            yield make
        finally:
            mnt.close()


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_random_sequences_through_the_mount_long() -> None:
    """The suite's Hypothesis sequences, 2,000 examples (make test runs 100)."""
    mnt = FuseMount(256 << 20, options="")
    numbers = itertools.count()

    def make() -> tuple[Side, Callable[[], None]]:
        return fresh_side(mnt, f"long{next(numbers)}")

    @settings(
        max_examples=2000,
        derandomize=True,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(steps=stx.lists(random_steps, min_size=1, max_size=20))
    def check(steps: list[Step]) -> None:
        run_steps([*SEED, *steps], make)

    try:
        check()
    finally:
        mnt.close()
