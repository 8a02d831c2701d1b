"""Fixtures of the FUSE tests: one mount per module, a fresh directory per test."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.fuse.mounts import FuseMount


@pytest.fixture(scope="module")
def mnt(request: pytest.FixtureRequest) -> Iterator[FuseMount]:
    """A mounted image (``MOUNT_SIZE`` of the module, 256 MiB by default), unmounted
    and checked with fsck after the module's tests."""
    m = FuseMount(getattr(request.module, "MOUNT_SIZE", 256 << 20))
    try:
        yield m
    finally:
        m.close()


@pytest.fixture
def work(mnt: FuseMount, request: pytest.FixtureRequest) -> str:
    """A new directory on the mount, named after the test."""
    path = mnt.path(request.node.name.replace("[", "-").replace("]", ""))
    os.mkdir(path)
    return path
