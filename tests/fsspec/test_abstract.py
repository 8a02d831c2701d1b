"""fsspec's own conformance suite (fsspec.tests.abstract) run on a daxfs image.

As fsspec's docs ask of a new implementation: subclass its test classes with
fixtures giving the filesystem (``fs``), a directory in it (``fs_path``) and
how its paths join (``fs_join``).  The suite covers copy, get, put, open and
pipe with files, directories, globs, lists, trailing slashes and maxdepth.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Iterator

import pytest

from daxfs.fsspec import DaxFileSystem

abstract = pytest.importorskip("fsspec.tests.abstract")


class DaxFixtures(abstract.AbstractFixtures):  # type: ignore[misc]
    @pytest.fixture
    def fs(self, dfs: DaxFileSystem) -> Iterator[DaxFileSystem]:
        yield dfs
        assert dfs.filesystem.open_files() == []  # the suite closed what it opened

    @pytest.fixture
    def fs_path(self) -> str:
        return "/suite"

    @pytest.fixture
    def fs_join(self) -> Callable[..., str]:
        return posixpath.join

    @pytest.fixture
    def supports_empty_directories(self) -> bool:
        return True


class TestDaxCopy(abstract.AbstractCopyTests, DaxFixtures):  # type: ignore[misc]
    pass


class TestDaxGet(abstract.AbstractGetTests, DaxFixtures):  # type: ignore[misc]
    pass


class TestDaxPut(abstract.AbstractPutTests, DaxFixtures):  # type: ignore[misc]
    pass


class TestDaxOpen(abstract.AbstractOpenTests, DaxFixtures):  # type: ignore[misc]
    pass


class TestDaxPipe(abstract.AbstractPipeTests, DaxFixtures):  # type: ignore[misc]
    pass
