"""Fixtures shared by the filesystem's tests."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from daxfs.fs import _commit
from tests.helpers import CLOCK


@pytest.fixture
def frozen(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Both paths (Python and C) stamp the same times: time.time_ns and the C commit's
    clock are frozen at ``CLOCK``."""
    monkeypatch.setattr(time, "time_ns", lambda: CLOCK)
    _commit.freeze_clock(CLOCK)
    yield
    _commit.freeze_clock(0)
