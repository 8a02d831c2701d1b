"""Fixtures shared by the filesystem's tests."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

import daxfs
from daxfs.fs import _commit
from daxfs.testing import SimulatedPmem
from tests import helpers
from tests.helpers import CLOCK


@pytest.fixture
def frozen(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Both paths (Python and C) stamp the same times: time.time_ns and the C commit's
    clock are frozen at ``CLOCK``."""
    monkeypatch.setattr(time, "time_ns", lambda: CLOCK)
    _commit.freeze_clock(CLOCK)
    yield
    _commit.freeze_clock(0)


@pytest.fixture
def dev() -> Iterator[SimulatedPmem]:
    """A formatted 16 MiB simulated device (a module's own ``dev`` replaces it)."""
    yield from helpers.fresh_device(16 << 20)


@pytest.fixture
def fs(dev: SimulatedPmem) -> Iterator[daxfs.FileSystem]:
    """``dev`` mounted (a module's own ``fs`` replaces it)."""
    with daxfs.mount(dev) as mounted:
        yield mounted
