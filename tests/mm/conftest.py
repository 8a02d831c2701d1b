"""Fixtures shared by the tests of mappings and pins."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import daxfs
from daxfs.testing import SimulatedPmem

#: how long operations wait for pins in tests that do not test the timeout: far longer than
#: any wait here takes even on a loaded machine (a shorter one made them fail under load)
PATIENCE = 60.0


@pytest.fixture
def fs(dev: SimulatedPmem) -> Iterator[daxfs.FileSystem]:
    """The module's ``dev`` mounted, waits for pins bounded by ``PATIENCE`` (a module's
    own ``fs`` replaces it)."""
    with daxfs.mount(dev, layout_timeout=PATIENCE) as filesystem:
        yield filesystem


def put(fs: daxfs.FileSystem, path: str, data: bytes) -> None:
    """``path`` made (or emptied) holding ``data``."""
    with fs.open(path, "wb", buffering=0) as f:
        f.write(data)
