"""DaxPath: universal-pathlib's path class for ``daxfs://`` URLs.

Registered by the entry point ``[project.entry-points."universal_pathlib.implementations"]``
(upath imports this module only when it meets the protocol), so that
``UPath("daxfs:///data/x.csv::/dev/shm/fs.img")`` is a DaxPath: a path
inside the image, rooted at ``/``, whose filesystem is a DaxFileSystem.
Without it upath falls back to its generic class with a warning.  Importing
it also puts DaxFileSystem in fsspec's registry of loaded classes, where
upath looks for how to parse the protocol's paths (else another warning).
"""

from __future__ import annotations

from fsspec.registry import get_filesystem_class
from upath.core import UPath

get_filesystem_class("daxfs")  # loads daxfs.fsspec into fsspec's registry

__all__ = ["DaxPath"]


class DaxPath(UPath):
    """A path inside a daxfs image (absolute, ``/`` separated)."""

    __slots__ = ()

    @property
    def path(self) -> str:
        path = super().path
        return "/" if path in {"", "."} else path
