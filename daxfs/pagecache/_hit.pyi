"""Type stub for the C extension daxfs.pagecache._hit (see _hit.c)."""

from typing import Any

class HitReader:
    def __new__(
        cls,
        spaces: dict[int, Any],
        pool: Any,
        inode_type: type[Any],
        record_type: type[Any],
        entry_type: type[Any],
        folio_type: type[Any],
    ) -> HitReader: ...
    def pread(self, inode: object, n: object, offset: object, /) -> bytes | None: ...
    def preadinto(self, inode: object, buffer: object, offset: object, /) -> int | None: ...
