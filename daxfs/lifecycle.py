"""Closeable: ``with obj:`` calls ``obj.close()`` (devices, mappings, pins, iterators).

Shared by every layer, like daxfs.errors.
"""

from __future__ import annotations

import abc
from types import TracebackType
from typing import Self


class Closeable(abc.ABC):
    """A resource released by ``close()``; a context manager that closes on exit."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the resource (idempotent)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
