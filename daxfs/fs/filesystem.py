"""FileSystem: the mounted filesystem and its os-like API.

Each public method is one operation, atomic and durable on return: it takes
the filesystem lock, resolves paths (daxfs.fs.namei), and makes its changes
in one journal transaction (daxfs.fs.journal).  Errors are OSErrors with the
right errno and the path in the message (daxfs.errors), raised before any
change is made, or by aborting the transaction, which changes nothing.

Deleting is two-phase: the transaction that drops the last link puts the
inode on the orphan list (unless it is small and unused, then it is freed at
once); ``_reap`` frees its blocks in batches and then the inode.  An inode
still open, mapped or pinned stays on the orphan list until its last user
goes; after a crash, mount reaps what the orphan list holds.

Lock order: filesystem lock, then ``inode.lock``, then the journal lock.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import stat as st
import sys
import threading
import weakref
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, Self

from daxfs.block.cache import BlockCache
from daxfs.errors import (
    Busy,
    Corrupted,
    Exists,
    InvalidArgument,
    IsADirectory,
    NameTooLong,
    NoData,
    NotADirectory,
    NotEmpty,
    NotFound,
    NotPermitted,
    NotSupported,
    OutOfRange,
    ReadOnly,
    naming,
)
from daxfs.fs import daxflag, fastcreate, layout, modes, xattr
from daxfs.fs._stat import StatPath
from daxfs.fs.data import DataPath
from daxfs.fs.dir import Directories, DirIndex
from daxfs.fs.direct import DirectIO
from daxfs.fs.extmap import BlockMaps
from daxfs.fs.file import File
from daxfs.fs.inode import Inode, InodeTable, now_ns
from daxfs.fs.journal import Journal, Transaction
from daxfs.fs.layout import (
    BLOCK_SIZE,
    DT_DIR,
    DT_LNK,
    DT_REG,
    INLINE_AREA,
    INLINE_EXTENTS,
    INO_ROOT,
    MAP_BTREE,
    MAP_NONE,
    MAP_SYMLINK,
    MAX_NAME,
    InodeRecord,
    Superblock,
)
from daxfs.fs.namei import MAX_PATH, Lookup, Path, Resolver, fspath
from daxfs.fs.super import SuperState
from daxfs.lifecycle import cleanup_after, weak_method

if TYPE_CHECKING:
    from daxfs.fs.alloc import Allocator
    from daxfs.fs.store import PmemStore
    from daxfs.pmem.device import Device


#: entries in stat's path cache before it starts again (about 150 bytes each)
PATH_CACHE_LIMIT = 1 << 17
_S_IFMT = 0o170000
_S_IFDIR = st.S_IFDIR
_S_IFLNK = st.S_IFLNK
#: stat's C miss path takes paths of at most this many characters (bytes: at most 4095)
_FAST_PATH_CHARS = MAX_PATH // 4
_FS_ENCODING, _FS_ERRORS = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()
#: the format constants the C stat path checks records with (one owner: layout.py)
_STAT_CONSTANTS = {
    name: getattr(layout, name)
    for name in (
        "INODE_MAGIC",
        "MAX_FILE_SIZE",
        "MAX_SYMLINK",
        "INLINE_XATTR_AREA",
        "INLINE_AREA",
        "IFLAG_ORPHAN",
        "IFLAG_TRUNCATE",
        "MAP_NONE",
        "MAP_INLINE",
        "MAP_BTREE",
        "MAP_SYMLINK",
        "BLOCK_SIZE",
        "INODES_PER_BLOCK",
        "INODE_SIZE",
        "IFLAG_DAX",
        "EXTENT_SIZE",
    )
}
#: open()'s parsed mode strings (without encoding, errors or newline), by (mode, unbuffered)
_SPECS: dict[tuple[str, bool], modes.ModeSpec] = {}


class FileSystem:
    """A mounted daxfs filesystem.  Create with ``daxfs.mount``."""

    def __init__(
        self,
        *,
        device: Device,
        store: PmemStore,
        journal: Journal,
        sup: SuperState,
        alloc: Allocator,
        itable: InodeTable,
        maps: BlockMaps,
        dirs: Directories,
        data: DataPath,
        readonly: bool,
        on_unmount: Callable[[FileSystem], None],
        source: str,
    ) -> None:
        #: what was mounted, as errors of the whole filesystem name it (mount, unmount, sync)
        self.source = source
        self.device = device
        self.store = store
        self.journal = journal
        self.sup = sup
        self.alloc = alloc
        self.itable = itable
        self.maps = maps
        self.dirs = dirs
        self.data = data
        #: the direct-I/O engine (daxfs.fs.direct) on a block device; None on DAX,
        #: where direct=True is DAX itself
        self.direct: DirectIO | None = (
            DirectIO(data, device) if isinstance(device, BlockCache) else None
        )
        self.readonly = readonly
        self.umask = 0o022
        #: the permission bits open() creates a file with, before the umask (builtins.open's)
        self.file_mode = 0o666
        self.uid = os.getuid()
        self.gid = os.getgid()
        self._lock = threading.RLock()
        #: the open Files, by id, weakly (a File dropped unclosed is closed by its __del__,
        #: and File.close takes it out: a WeakSet would run Python at each add and death)
        self._files: dict[int, weakref.ref[File]] = {}
        self._on_unmount = on_unmount
        self._mounted = True
        self._dev = int.from_bytes(sup.sb.uuid[:4], "little") | 0x100000000
        #: stat's path cache: path as given -> the ino it resolved to,
        #: positive results only; cleared when ``dirs.removals`` moves (a name was removed
        #: or retargeted: only that can change what a path that resolved now names)
        #: by follow_symlinks (False, True); str and bytes paths apart (never compared)
        self._paths: tuple[dict[Any, int], dict[Any, int]] = ({}, {})
        self._bpaths: tuple[dict[Any, int], dict[Any, int]] = ({}, {})
        self._paths_epoch = dirs.removals
        #: path-cache hits and misses of stat's Python body (``path_hits`` adds C's)
        self._path_hits = 0
        self._path_misses = 0
        #: the inode cache (ino -> Inode), read by stat
        self._icache = itable.cache
        #: stat's C miss path (daxfs/fs/_stat.c); None: fsck-style mounts that load
        #: records get() would refuse (``check_records`` off), for which the walk answers,
        #: and lazy stores (daxfs.pagecache.bounded: it reads blocks never loaded).
        #: It holds the path caches, the inode cache, the index dict and the location
        #: array themselves: each is changed in place, never replaced, for the mount's life
        self._fast: StatPath | None = (
            StatPath(
                key=dirs.hash_key,
                view=store.view,
                places=itable.places,
                cache=itable.cache,
                stat_type=os.stat_result,
                index_type=DirIndex,
                dev=self._dev,
                constants=_STAT_CONSTANTS,
                heads=self._paths[True],
                bheads=self._bpaths[True],
                indexes=dirs.indexes,
                inode_type=Inode,
                record_type=InodeRecord,
                root=INO_ROOT,
                paths=self._paths,
                bpaths=self._bpaths,
                lock=self._lock,
                sb=sup.sb,
                dirs=dirs,
                limit=PATH_CACHE_LIMIT,
            )
            if itable.check_records and not store.lazy
            else None
        )
        #: the inodes' extended attributes (daxfs.fs.xattr)
        self.xattrs = xattr.XattrStore(store, alloc, itable, sup)
        # the layers call back into the filesystem weakly (daxfs.lifecycle: no cycles)
        itable.reap = weak_method(self._reap_unused)
        self.resolver = Resolver(
            root=weak_method(self._root),
            child=weak_method(self._child),
            parent=weak_method(self._parent),
            readlink=weak_method(self._link_target),
        )

    # -- lifecycle ----------------------------------------------------------------------

    @property
    def superblock(self) -> Superblock:
        return self.sup.sb

    @property
    def mounted(self) -> bool:
        return self._mounted

    def __repr__(self) -> str:
        sb = self.sup.sb
        state = "mounted" if self._mounted else "unmounted"
        return f"<FileSystem uuid={sb.uuid_str} label={sb.label!r} {state}>"

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._mounted:
            return
        if exc is None:
            self._close_and_unmount()
        else:  # the block's error stays the error: a failing unmount is a note on it
            cleanup_after(exc, self._close_and_unmount)

    def _close_and_unmount(self) -> None:
        for file in self.open_files():
            file.close()
        self.unmount()

    def open_files(self) -> list[File]:
        # list(): a snapshot, as another thread's close may take a File out meanwhile
        return [f for r in list(self._files.values()) if (f := r()) is not None and not f.closed]

    def unmount(self) -> None:
        """Write the clean state and release the device.

        Raises:
            Busy (EBUSY): files are still open (close them first).
            IOFailure (EIO): the device failed; it is released all the same
                (the image is not marked clean: the next mount recovers).
            Errors name the image (``source``).
        """
        with naming(self.source), self._lock:
            if not self._mounted:
                return
            busy = self.open_files()
            if busy:
                names = ", ".join(sorted(f.path for f in busy)[:5])
                raise Busy(f"cannot unmount: {len(busy)} open file(s): {names}")
            users = self.itable.held()
            if users:
                raise Busy(
                    f"cannot unmount: {len(users)} file(s) have live mappings or pins "
                    f"(inodes {', '.join(str(i.ino) for i in users[:5])}); close them first"
                )
            self.data.sync_all()  # stores of closed writable mappings (daxfs.fs.writeback)
            if self.direct is not None:
                self.direct.close()  # its completion worker (every File closed: nothing left)
            try:
                self._on_unmount(self)
            finally:  # the device is released even when writing the clean state failed
                self._mounted = False
                if self._fast is not None:
                    self._fast.release()

    @contextlib.contextmanager
    def as_caller(
        self, uid: int, gid: int, umask: int = 0, file_mode: int = 0o666
    ) -> Iterator[None]:
        """Run the block as one caller of a front end (daxfs.fuse): what it creates is
        owned by ``uid``:``gid`` and made with ``umask`` (files that open() creates with
        ``file_mode`` before it, as open(2)'s mode argument), and no other operation runs
        meanwhile (the filesystem lock is held throughout: a check and a change made
        inside are one step, as RENAME_NOREPLACE needs).

        The block must not wait for pins (truncate, punch-hole): it holds the lock.
        """
        with self._lock:
            saved = self.uid, self.gid, self.umask, self.file_mode
            self.uid, self.gid, self.umask, self.file_mode = uid, gid, umask, file_mode
            try:
                yield
            finally:
                self.uid, self.gid, self.umask, self.file_mode = saved

    def _check_mounted(self) -> None:
        """Every operation starts here, between operations: a good time to trim caches."""
        if not self._mounted:
            raise InvalidArgument("the filesystem is not mounted")
        self.itable.trim()

    def _check_writable(self, path: str) -> None:
        if self.readonly:
            raise ReadOnly(f"read-only filesystem: {path}", path)
        if self.journal.failed:
            raise ReadOnly(f"filesystem is read-only after a journal failure: {path}", path)

    @contextlib.contextmanager
    def _begin(self, path: str) -> Iterator[Transaction]:
        """A transaction for a change to ``path``; its errors name the path.

        Raises:
            ReadOnly (EROFS), and whatever the change raises (NoSpace, ...).
        """
        self._check_writable(path)
        with naming(path), self.journal.begin() as tx:
            yield tx

    # -- helpers ------------------------------------------------------------------------

    def _root(self) -> Inode:
        return self.itable.get(INO_ROOT)

    def _child(self, parent: Inode, name: bytes) -> Inode | None:
        found = self.dirs.lookup(self.journal.current() or self.store, parent, name)
        return self.itable.get(found[0]) if found is not None else None

    def _parent(self, directory: Inode) -> Inode:
        """The directory ``..`` of ``directory`` names (the root's is the root, whatever
        its record says: no path climbs above it).

        Raises:
            Corrupted (EUCLEAN): ``..`` names something that is not a directory.
        """
        if directory.ino == INO_ROOT:
            return directory
        parent = self.itable.get(directory.rec.parent or INO_ROOT)
        if not parent.is_dir:
            raise Corrupted(
                f"directory inode {directory.ino}: '..' is inode {parent.ino}, not a directory"
            )
        return parent

    def _link_target(self, inode: Inode) -> bytes:
        rec = inode.rec
        if rec.map_kind == MAP_SYMLINK:
            return rec.inline[: rec.map_count]
        buf = bytearray(rec.size)
        with inode.lock:
            n = self.data.read_into(inode, 0, memoryview(buf))
        return bytes(buf[:n])

    def _lookup(
        self, path: Path, follow: bool = True, *, parent: bool = False
    ) -> tuple[Lookup, str]:
        """Resolve ``path`` (``parent``: a parent lookup, see daxfs.fs.namei)."""
        self._check_mounted()
        raw = fspath(path)
        shown = os.fsdecode(raw)
        try:
            return self.resolver.resolve(raw, shown, follow, parent=parent), shown
        except BaseException:
            with naming(shown):  # as if the walk ran inside it (no generator on the way in)
                raise

    def _existing(self, path: Path, follow: bool = True) -> tuple[Inode, str]:
        found, shown = self._lookup(path, follow)
        if found.inode is None:
            raise NotFound(f"no such file or directory: {shown}", shown)
        return found.inode, shown

    @staticmethod
    def _check_new_name(found: Lookup, shown: str, *, is_dir: bool = False) -> bytes:
        """The name a parent lookup found, if something new may be created under it.

        Raises:
            Exists: the name exists (a dangling symbolic link too), or is
                ".", ".." or the root.
            NotFound: a trailing slash on a missing name, except for a directory
                (``is_dir``): Linux's filename_create.
        """
        name = found.name
        if found.inode is not None or name in (b"", b".", b".."):
            raise Exists(f"file exists: {shown}", shown)
        if len(name) > MAX_NAME:
            raise NameTooLong(f"name too long: {shown}", shown)
        if found.slash and not is_dir:
            raise NotFound(f"no such file or directory: {shown}", shown)
        return name

    def _touch_dir(self, tx: Transaction, inode: Inode, nlink: int = 0) -> None:
        rec = self.itable.dirty(tx, inode)
        rec.mtime_ns = rec.ctime_ns = now_ns()
        rec.nlink += nlink

    def _new_inode(
        self, tx: Transaction, parent: Inode, name: bytes, mode: int, dtype: int
    ) -> Inode:
        """Allocate an inode and link it as ``parent``/``name``.

        Owner as Linux's inode_init_owner: in a set-group-ID directory the new
        inode takes the directory's group, and a new directory the bit too.  A
        new regular file or directory takes the directory's DAX flag
        (daxfs.fs.daxflag).
        """
        gid = self.gid
        if parent.rec.mode & st.S_ISGID:
            gid = parent.rec.gid
            if st.S_ISDIR(mode):
                mode |= st.S_ISGID
        inode = self.itable.allocate(tx, mode, self.uid, gid)
        daxflag.inherit(parent, inode)
        self.dirs.add(tx, parent, name, inode.ino, dtype)
        return inode

    # -- files --------------------------------------------------------------------------

    def open(
        self,
        path: Path,
        mode: str = "r",
        buffering: int = -1,
        encoding: str | None = None,
        errors: str | None = None,
        newline: str | None = None,
        *,
        direct: bool = False,
    ) -> IO[Any]:
        """Open a file, with the semantics of ``builtins.open``.

        ``direct=True`` is O_DIRECT (daxfs.fs.direct, docs/GUARANTEES.md): on a
        mount over a block device, I/O moves in bios between the caller's buffer
        and the device, aligned to the device's logical block size
        (``File.direct_alignment``; EINVAL otherwise: open without direct=True
        for unaligned I/O); it needs ``buffering=0``.  On a DAX mount it is
        accepted and is DAX itself (no page cache to bypass).

        Raises:
            FileNotFoundError, FileExistsError ("x"), IsADirectoryError,
            NotADirectoryError, ReadOnly (EROFS), InvalidArgument (bad mode;
            direct=True with buffering other than 0).
        """
        if direct and (type(buffering) is not int or buffering != 0):
            shown = _shown(path)
            raise InvalidArgument(
                f"direct=True needs buffering=0 (an unbuffered binary File): {shown}", shown
            )
        spec = None
        plain = encoding is None and errors is None and newline is None
        if plain and type(mode) is str and type(buffering) is int:
            key = (mode, buffering == 0)  # all that parse() reads of them
            spec = _SPECS.get(key)
        if spec is None:
            spec = modes.parse(mode, buffering, encoding, errors, newline, _shown(path))
            if plain and len(_SPECS) < 64:
                _SPECS[mode, buffering == 0] = spec
        with self._lock:
            raw, truncate = self._open_raw(path, spec, direct)
        if truncate:
            # as O_TRUNC, after the file is open (it holds the inode) and without the
            # filesystem lock: waiting for pins must not stall other operations
            try:
                with naming(raw.path), raw.inode.lock:
                    self.data.truncate(raw.inode, 0)
            except BaseException as exc:
                cleanup_after(exc, raw.close)
                raise
        if buffering == 0:  # what wrap returns for it (the raw File), without the call
            return raw  # type: ignore[return-value]
        return modes.wrap(raw, spec, buffering, encoding, errors, newline)

    def _open_raw(
        self, path: Path, spec: modes.ModeSpec, direct: bool = False
    ) -> tuple[File, bool]:
        """The File (holding its inode), and whether O_TRUNC must still truncate it."""
        truncate = False
        if spec.create:
            fast = self._lookup_new(path) if isinstance(path, str) else None
            if fast is None:
                fast = self._lookup_create(path, follow=not spec.exclusive)
            found, shown = fast
        else:
            found, shown = self._lookup(path)
        inode = found.inode
        if inode is None:
            if not spec.create:
                raise NotFound(f"no such file or directory: {shown}", shown)
            inode = self._create(found, shown)
        else:
            if spec.exclusive:
                raise Exists(f"file exists: {shown}", shown)
            if inode.is_dir:
                raise IsADirectory(f"is a directory: {shown}", shown)
            if spec.writing:
                self._check_writable(shown)
            truncate = spec.truncate  # as O_TRUNC: sets mtime even when already empty
        # (a tuple, not ``str | bytes``: that union would be made at every call)
        name_out: str | bytes = path if isinstance(path, (str, bytes)) else os.fspath(path)
        file = File(
            self,
            inode,
            name_out,
            spec.raw_mode,
            readable=spec.reading,
            writable=spec.writing,
            append=spec.append,
            direct=bool(direct),
        )
        self.itable.hold(inode, file=True)
        self._files[id(file)] = weakref.ref(file)
        return file, truncate

    def _create(self, found: Lookup, shown: str) -> Inode:
        """Create the regular file a parent lookup found absent, in one transaction.

        ``_begin`` without its two generators (the hot path of open(..., "x")):
        the same checks, the transaction's own abort or commit, errors named as
        ``naming`` names them (entered only for an error).
        """
        name = self._check_new_name(found, shown)
        self._check_writable(shown)
        mode = st.S_IFREG | (self.file_mode & ~self.umask)
        try:
            inode = fastcreate.create(self, found.parent, name, mode, found.key)
            if inode is None:  # the reference: what fastcreate.create does, in general
                with self.journal.begin() as tx:
                    inode = self._new_inode(tx, found.parent, name, mode, DT_REG)
                    self._touch_dir(tx, found.parent)
        except BaseException:
            with naming(shown):
                raise
        return inode

    def _lookup_new(self, path: str) -> tuple[Lookup, str] | None:
        """``_lookup_create``'s answer for a str path "HEAD/NAME" whose NAME is absent
        from the directory HEAD resolves to, or None: the walk must answer.

        HEAD is taken from stat's path cache (``_paths``, filled here as stat fills
        it, and emptied by the same removals epoch): the walk of a path resolves
        its HEAD as a path of its own, following links, and a new name cannot
        change what it resolves to.  The walk answers everything else (a
        relative path, a trailing slash, ".", "..", a long name, a name that
        exists, NUL, errors), so this never raises what the walk would not.
        """
        self._check_mounted()
        if len(path) > _FAST_PATH_CHARS or "\0" in path:
            return None
        head, sep, tail = path.rpartition("/")
        if not sep or not tail or tail == "." or tail == "..":
            return None
        if self._paths_epoch != self.dirs.removals:
            self._forget_paths()
        parent = self._cached_parent(head, self._paths[True])
        if parent is None:
            return None
        try:
            name = tail.encode(_FS_ENCODING, _FS_ERRORS)  # os.fsencode
        except UnicodeError:
            return None
        if len(name) > MAX_NAME:
            return None
        key = self.dirs.absent_key(parent, name)  # absent by the index alone: the key
        if key < 0 and self.dirs.lookup(self.store, parent, name) is not None:
            return None
        return Lookup(parent, name, None, False, key), path  # a str path is shown as given

    def _lookup_create(self, path: Path, follow: bool) -> tuple[Lookup, str]:
        """Resolve the path of open(..., O_CREAT), as Linux's open_last_lookups.

        A trailing slash is EISDIR, on the path or on the target of a final
        symbolic link (followed unless ``follow`` is false, as for O_EXCL),
        unless the last component is "." or ".." (or the path is "/").

        Raises:
            IsADirectory: a trailing slash; and what the lookup raises.
        """
        found, shown = self._lookup(path, follow=False, parent=True)
        if not found.slash and follow and found.inode is not None and found.inode.is_lnk:
            found, shown = self._lookup(path, follow=True, parent=True)
        if found.slash and found.name not in (b"", b".", b".."):  # dots: EEXIST or EISDIR
            raise IsADirectory(f"is a directory: {shown}", shown)
        return found, shown

    def _reap_unused(self, inode: Inode) -> None:
        """InodeTable.reap: the last holder of an unlinked inode went; free it.

        Checked again under the filesystem and inode locks (lock order), since
        a new holder (mmap, pin) may have come in between.
        """
        with self._lock, inode.lock:
            if inode.rec.nlink == 0 and inode.rec.mode and not inode.in_use and self._mounted:
                self._reap(inode)

    def _touch_modified(self, inode: Inode) -> None:
        """Set mtime and ctime now: stores through a writable mapping changed the file."""
        with self._lock:
            if self.readonly or not self._mounted or inode.rec.nlink == 0:
                return
            with self.journal.begin() as tx:
                rec = self.itable.dirty(tx, inode)
                rec.mtime_ns = rec.ctime_ns = now_ns()

    def _reap(self, inode: Inode) -> None:
        """Free an unlinked, unused inode on the orphan list: blocks first, then the inode."""
        if self.readonly or inode.rec.mode == 0:  # read-only, or already freed
            return
        self._recount_blocks(inode)
        if inode.is_dir:
            with self.journal.begin() as tx:
                self.dirs.clear(tx, inode)
        elif inode.rec.map_kind != MAP_SYMLINK:
            self.data.free_all(inode)
        with self.journal.begin() as tx:
            self.xattrs.free_all(tx, inode)
            self.itable.remove_orphan(tx, inode)
            self.itable.free(tx, inode)

    def _recount_blocks(self, inode: Inode) -> None:
        """Set ``blocks`` from the map before freeing it: the counter is media, the map is
        what freeing walks, and a counter that lied would go negative (or stay positive)."""
        rec = inode.rec
        if inode.is_dir:
            owned = sum(1 for _ in self.dirs.tree_nodes(self.store, inode))
        elif rec.map_kind == MAP_SYMLINK:
            owned = 0
        else:
            owned = sum(e.length for e in self.maps.extents(self.store, inode))
            owned += sum(1 for _ in self.maps.tree_nodes(self.store, inode))
        owned += len(self.xattrs.owned(self.store, inode))
        if owned != rec.blocks:
            with self.journal.begin() as tx:
                self.itable.dirty(tx, inode).blocks = owned

    def _drop_link(self, tx: Transaction, inode: Inode) -> bool:
        """Remove one link; return True if the inode must be reaped after commit."""
        rec = self.itable.dirty(tx, inode)
        rec.ctime_ns = now_ns()
        if inode.is_dir:
            rec.nlink = 0
        elif rec.nlink == 0:
            raise Corrupted(f"inode {inode.ino}: link count 0, yet a directory names it")
        else:
            rec.nlink -= 1
        if rec.nlink > 0:
            return False
        small = rec.map_kind != MAP_BTREE and rec.map_count <= INLINE_EXTENTS
        if not inode.in_use and (small or inode.is_dir):
            if inode.is_dir:
                self.dirs.clear(tx, inode)
            elif rec.map_kind != MAP_SYMLINK:
                for piece in self.maps.punch(tx, inode, 0, 1 << 62):
                    self.alloc.free(tx, piece.pblk, piece.length)
                    rec.blocks -= piece.length
            self.xattrs.free_all(tx, inode)
            self.itable.free(tx, inode)
            return False
        self.itable.add_orphan(tx, inode)
        return not inode.in_use

    # -- directories --------------------------------------------------------------------

    def mkdir(self, path: Path, mode: int = 0o777) -> None:
        """Create a directory.

        Raises:
            FileExistsError, FileNotFoundError (parent missing), NotADirectoryError,
            NameTooLong, ReadOnly.
        """
        with self._lock:
            found, shown = self._lookup(path, follow=False, parent=True)
            name = self._check_new_name(found, shown, is_dir=True)
            with self._begin(shown) as tx:
                # as Linux: set-user-ID and set-group-ID are not taken from ``mode``
                imode = st.S_IFDIR | (mode & 0o1777 & ~self.umask)
                inode = self._new_inode(tx, found.parent, name, imode, DT_DIR)
                rec = self.itable.dirty(tx, inode)
                rec.nlink = 2
                rec.parent = found.parent.ino
                self._touch_dir(tx, found.parent, +1)

    def makedirs(self, path: Path, mode: int = 0o777, exist_ok: bool = False) -> None:
        """Create a directory and any missing parents, as os.makedirs.

        As os.makedirs: the parents are made with the default mode (``mode``
        is for the leaf), and with ``exist_ok`` any error is ignored when
        ``path`` turns out to be a directory.

        Raises:
            FileExistsError (``path`` exists and ``exist_ok`` is false, or is
            not a directory), and what mkdir raises.
        """
        name: str | bytes = os.fspath(path)
        head, tail = os.path.split(name)
        if not tail:
            head, tail = os.path.split(head)
        if head and tail and not self.exists(head):
            with contextlib.suppress(FileExistsError):  # made meanwhile by another thread
                self.makedirs(head, exist_ok=exist_ok)
            if tail in (".", b"."):  # "new/." exists once "new" does
                return
        try:
            self.mkdir(name, mode)
        except OSError:
            if not exist_ok or not self.isdir(name):
                raise

    def rmdir(self, path: Path) -> None:
        """Remove an empty directory.

        Raises:
            FileNotFoundError, NotADirectoryError (also a symbolic link, with
            or without a trailing slash), NotEmpty (ENOTEMPTY, also ".."),
            InvalidArgument ("."), Busy (the root), ReadOnly.
        """
        with self._lock:
            found, shown = self._lookup(path, follow=False, parent=True)
            inode = found.inode
            if found.name == b".":
                raise InvalidArgument(f"cannot remove '.': {shown}", shown)
            if found.name == b"..":
                raise NotEmpty(f"directory not empty: {shown}", shown)
            if found.name == b"":
                raise Busy(f"cannot remove the root directory: {shown}", shown)
            self._check_writable(shown)
            if inode is None:
                raise NotFound(f"no such file or directory: {shown}", shown)
            if not inode.is_dir:
                raise NotADirectory(f"not a directory: {shown}", shown)
            if inode.rec.entries or inode.rec.map_kind != MAP_NONE:
                raise NotEmpty(f"directory not empty: {shown}", shown)
            with self._begin(shown) as tx:
                self.dirs.remove(tx, found.parent, found.name)
                self._touch_dir(tx, found.parent, -1)
                self._drop_link(tx, inode)

    def unlink(self, path: Path) -> None:
        """Remove a name; the file goes when its last name and last user do.

        Raises:
            FileNotFoundError, IsADirectoryError (also ".", ".." and the root),
            NotADirectoryError (a trailing slash on what is not a directory,
            a symbolic link included), ReadOnly.
        """
        with self._lock:
            found, shown = self._lookup(path, follow=False, parent=True)
            inode = found.inode
            if found.name in (b"", b".", b".."):
                raise IsADirectory(f"is a directory: {shown}", shown)
            self._check_writable(shown)
            if inode is None:
                raise NotFound(f"no such file or directory: {shown}", shown)
            if inode.is_dir:
                raise IsADirectory(f"is a directory: {shown}", shown)
            if found.slash:
                raise NotADirectory(f"not a directory: {shown}", shown)
            with self._begin(shown) as tx:
                self.dirs.remove(tx, found.parent, found.name)
                self._touch_dir(tx, found.parent)
                reap = self._drop_link(tx, inode)
            if reap:
                with naming(shown):
                    self._reap(inode)

    remove = unlink

    def rename(
        self, src: Path, dst: Path, *, noreplace: bool = False, exchange: bool = False
    ) -> None:
        """Rename atomically, replacing ``dst`` as POSIX rename(2) does; or as
        renameat2(2) with RENAME_NOREPLACE (``noreplace``: never replace) or
        RENAME_EXCHANGE (``exchange``: swap the two names, which must both exist
        and may be of different types).

        The checks come in the order of Linux's renameat2, so that the same
        mistake gives the same errno.

        Raises:
            InvalidArgument (EINVAL): both ``noreplace`` and ``exchange``; a
            directory into itself or its subdirectory; with ``exchange``, also
            ``dst`` an ancestor of ``src``.
            FileNotFoundError (also ``dst`` missing with ``exchange``),
            FileExistsError (``dst`` exists with ``noreplace``; also "." or
            ".." as ``dst``), IsADirectoryError (file over directory),
            NotADirectoryError (directory over file; a trailing slash on a
            path whose file is not a directory), NotEmpty (ENOTEMPTY: a
            non-empty target, or the target is an ancestor of the source),
            Busy (EBUSY: ".", ".." or the root), ReadOnly.
        """
        if noreplace and exchange:
            shown = _shown(src)
            raise InvalidArgument(f"rename: RENAME_NOREPLACE with RENAME_EXCHANGE: {shown}", shown)
        with self._lock:
            a, a_shown = self._lookup(src, follow=False, parent=True)
            b, b_shown = self._lookup(dst, follow=False, parent=True)
            if a.name in (b"", b".", b".."):
                raise Busy(f"cannot rename '.', '..' or the root: {a_shown}", a_shown)
            if b.name in (b"", b".", b".."):
                if noreplace:
                    raise Exists(f"file exists: {b_shown}", b_shown)
                raise Busy(f"cannot rename '.', '..' or the root: {b_shown}", b_shown)
            self._check_writable(a_shown)
            moving = a.inode
            if moving is None:
                raise NotFound(f"no such file or directory: {a_shown}", a_shown)
            victim = b.inode
            if noreplace and victim is not None:
                raise Exists(f"file exists: {b_shown}", b_shown)
            if exchange:
                if victim is None:
                    raise NotFound(f"no such file or directory: {b_shown}", b_shown)
                if b.slash and not victim.is_dir:
                    raise NotADirectory(f"not a directory: {b_shown}", b_shown)
            with naming(b_shown):  # walks the '..' chain above the destination
                self._check_rename(moving, a, b, a_shown, b_shown, exchange)
            if victim is moving:
                return  # two names of one inode: POSIX says do nothing
            if exchange:
                assert victim is not None
                self._exchange(a, b, moving, victim, b_shown)
            else:
                self._rename(a, b, moving, victim, b_shown)

    replace = rename

    def _is_ancestor(self, node: Inode, inode: Inode) -> bool:
        """Whether directory ``inode`` is ``node`` or one of its ancestors.

        Walks ``..`` up from ``node``; each step must reach a directory not
        seen before, so the walk ends within the number of directories.

        Raises:
            Corrupted (EUCLEAN): the ``..`` chain loops before the root.
        """
        seen: set[int] = set()
        while node.ino != inode.ino:
            if node.ino == INO_ROOT:
                return False
            if node.ino in seen:
                raise Corrupted(
                    f"directory inode {node.ino}: its '..' chain loops without reaching the root"
                )
            seen.add(node.ino)
            node = self._parent(node)
        return True

    def _check_rename(
        self, moving: Inode, a: Lookup, b: Lookup, a_shown: str, b_shown: str, exchange: bool
    ) -> None:
        victim = b.inode
        if not moving.is_dir and (a.slash or (b.slash and not exchange)):
            shown = a_shown if a.slash else b_shown
            raise NotADirectory(f"not a directory: {shown}", shown)
        if moving.is_dir and self._is_ancestor(b.parent, moving):
            raise InvalidArgument(
                f"cannot move directory {a_shown} into itself ({b_shown})", a_shown
            )
        if victim is not None and victim.is_dir and self._is_ancestor(a.parent, victim):
            if exchange:  # renameat2: EINVAL, as the other way round
                raise InvalidArgument(
                    f"cannot exchange directory {b_shown} with a path inside it ({a_shown})",
                    b_shown,
                )
            raise NotEmpty(f"directory not empty: {b_shown} is an ancestor of {a_shown}", b_shown)
        if victim is None or victim is moving or exchange:
            return  # an exchange keeps both: any types, any contents
        if moving.is_dir:
            if not victim.is_dir:
                raise NotADirectory(f"not a directory: {b_shown}", b_shown)
            if victim.rec.entries or victim.rec.map_kind != MAP_NONE:
                raise NotEmpty(f"directory not empty: {b_shown}", b_shown)
        elif victim.is_dir:
            raise IsADirectory(f"is a directory: {b_shown}", b_shown)

    def _rename(
        self, a: Lookup, b: Lookup, moving: Inode, victim: Inode | None, b_shown: str
    ) -> None:
        reap = False
        dtype = self._dtype(moving)
        with self._begin(b_shown) as tx:
            self.dirs.remove(tx, a.parent, a.name)
            if victim is not None:
                self.dirs.retarget(tx, b.parent, b.name, moving.ino, dtype)
                if victim.is_dir:
                    self._touch_dir(tx, b.parent, -1)
                reap = self._drop_link(tx, victim)
            else:
                self.dirs.add(tx, b.parent, b.name, moving.ino, dtype)
            if moving.is_dir and a.parent.ino != b.parent.ino:
                self.itable.dirty(tx, moving).parent = b.parent.ino
                self._touch_dir(tx, a.parent, -1)
                self._touch_dir(tx, b.parent, +1)
            self._touch_dir(tx, a.parent)
            self._touch_dir(tx, b.parent)
            self.itable.dirty(tx, moving).ctime_ns = now_ns()
        if reap and victim is not None:
            with naming(b_shown):
                self._reap(victim)

    def _exchange(self, a: Lookup, b: Lookup, one: Inode, other: Inode, b_shown: str) -> None:
        """Swap the inodes of entries ``a`` and ``b`` in one transaction (as tmpfs's
        shmem_exchange): a directory that changes parents takes its new parent in
        ``..``, and when only one of the two is a directory the parents' link
        counts move with it; both parents' mtime and ctime and both inodes'
        ctime are set."""
        with self._begin(b_shown) as tx:
            self.dirs.retarget(tx, a.parent, a.name, other.ino, self._dtype(other))
            self.dirs.retarget(tx, b.parent, b.name, one.ino, self._dtype(one))
            if a.parent.ino != b.parent.ino:
                if one.is_dir:
                    self.itable.dirty(tx, one).parent = b.parent.ino
                if other.is_dir:
                    self.itable.dirty(tx, other).parent = a.parent.ino
                if one.is_dir != other.is_dir:
                    moved = 1 if one.is_dir else -1  # a directory goes from a's parent to b's
                    self._touch_dir(tx, a.parent, -moved)
                    self._touch_dir(tx, b.parent, +moved)
            self._touch_dir(tx, a.parent)
            self._touch_dir(tx, b.parent)
            t = now_ns()
            self.itable.dirty(tx, one).ctime_ns = t
            self.itable.dirty(tx, other).ctime_ns = t

    @staticmethod
    def _dtype(inode: Inode) -> int:
        return DT_DIR if inode.is_dir else DT_LNK if inode.is_lnk else DT_REG

    def link(self, src: Path, dst: Path, *, follow_symlinks: bool = True) -> None:
        """Make ``dst`` another name of ``src`` (as os.link).

        Unlike ``os.link`` on Linux, which calls link(2) and so never follows
        a symbolic link whatever ``follow_symlinks`` says, ``src`` is followed
        unless ``follow_symlinks`` is false (linkat with AT_SYMLINK_FOLLOW).

        Raises:
            FileNotFoundError (also a trailing slash on a missing ``dst``),
            FileExistsError, NotPermitted (EPERM, also PermissionError: a
            directory), ReadOnly.
        """
        with self._lock:
            inode, a_shown = self._existing(src, follow_symlinks)
            b, b_shown = self._lookup(dst, follow=False, parent=True)
            name = self._check_new_name(b, b_shown)
            if inode.is_dir:
                raise NotPermitted(f"cannot hard-link a directory: {a_shown}", a_shown)
            with self._begin(b_shown) as tx:
                self.dirs.add(tx, b.parent, name, inode.ino, self._dtype(inode))
                rec = self.itable.dirty(tx, inode)
                rec.nlink += 1
                rec.ctime_ns = now_ns()
                self._touch_dir(tx, b.parent)

    def symlink(self, target: Path, path: Path) -> None:
        """Create a symbolic link at ``path`` pointing to ``target`` (as os.symlink).

        Raises:
            FileExistsError, FileNotFoundError (empty target, missing parent,
            or a trailing slash on a missing ``path``), NameTooLong, ReadOnly.
        """
        raw_target = fspath(target)
        shown = os.fsdecode(fspath(path))
        if not raw_target:
            raise NotFound(f"empty symbolic link target for {shown}", shown)
        with self._lock:
            found, shown = self._lookup(path, follow=False, parent=True)
            name = self._check_new_name(found, shown)
            with self._begin(shown) as tx:
                inode = self._new_inode(tx, found.parent, name, st.S_IFLNK | 0o777, DT_LNK)
                rec = self.itable.dirty(tx, inode)
                if len(raw_target) <= INLINE_AREA:
                    rec.map_kind = MAP_SYMLINK
                    rec.map_count = len(raw_target)
                    rec.inline = raw_target + bytes(INLINE_AREA - len(raw_target))
                    rec.size = len(raw_target)
                else:
                    self.data.write_in(tx, inode, 0, memoryview(raw_target))
                self._touch_dir(tx, found.parent)

    def readlink(self, path: Path) -> str | bytes:
        """The target of a symbolic link (bytes if ``path`` is bytes).

        Raises:
            FileNotFoundError, InvalidArgument (not a symbolic link).
        """
        with self._lock:
            inode, shown = self._existing(path, follow=False)
            if not inode.is_lnk:
                raise InvalidArgument(f"not a symbolic link: {shown}", shown)
            with naming(shown):
                target = self._link_target(inode)
        return target if isinstance(fspath_type(path), bytes) else os.fsdecode(target)

    def listdir(self, path: Path = "/") -> list[Any]:
        """Names in a directory (str, or bytes if ``path`` is bytes), without . and .."""
        with self._lock:
            inode, shown = self._existing(path)
            if not inode.is_dir:
                raise NotADirectory(f"not a directory: {shown}", shown)
            with naming(shown):
                names = [name for _, name, _, _ in self.dirs.entries(self.store, inode)]
        if isinstance(fspath_type(path), bytes):
            return names
        return [os.fsdecode(n) for n in names]

    def scandir(self, path: Path = "/") -> Iterator[Any]:
        """Entries of a directory, as os.scandir (see daxfs.fs.scan.DirEntry)."""
        from daxfs.fs.scan import scandir

        return scandir(self, path)

    def walk(
        self,
        top: Path = "/",
        topdown: bool = True,
        onerror: Callable[[OSError], None] | None = None,
        followlinks: bool = False,
    ) -> Iterator[tuple[Any, list[Any], list[Any]]]:
        """Directory tree generator, as os.walk."""
        from daxfs.fs.scan import walk

        return walk(self, top, topdown, onerror, followlinks)

    # -- extended attributes ------------------------------------------------------------

    def getxattr(
        self, path: Path, attribute: str | bytes, *, follow_symlinks: bool = True
    ) -> bytes:
        """The value of the extended attribute ``attribute`` of ``path``, as os.getxattr.

        Namespaces and limits: daxfs.fs.xattr (``user.``, ``trusted.`` and
        ``security.`` as Linux allows them).

        Raises:
            NoData (ENODATA): no such attribute.
            BadRange (ERANGE): an empty name or one of more than 255 bytes.
            NotSupported (EOPNOTSUPP): a namespace daxfs does not store
                (``system.``, unknown prefixes); InvalidArgument (EINVAL): a
                prefix with nothing after it, or a NUL in the name.
            NotPermitted (EPERM): ``trusted.`` without privilege.
            FileNotFoundError and the other errors of a path lookup;
            Corrupted (EUCLEAN): the attributes on media are damaged.
        """
        name = xattr.attribute_name(attribute, _shown(path))
        with self._lock:
            inode, shown = self._existing(path, follow_symlinks)
            return self._getxattr(inode, shown, name)

    def setxattr(
        self,
        path: Path,
        attribute: str | bytes,
        value: Any,
        flags: int = 0,
        *,
        follow_symlinks: bool = True,
    ) -> None:
        """Set the extended attribute ``attribute`` of ``path`` to ``value`` (bytes-like),
        as os.setxattr: one transaction, atomic and durable on return; ctime is set.

        ``flags``: ``os.XATTR_CREATE`` (fail if it exists), ``os.XATTR_REPLACE``
        (fail if it does not).

        Raises:
            Exists (EEXIST): XATTR_CREATE and the attribute exists.
            NoData (ENODATA): XATTR_REPLACE and it does not.
            InvalidArgument (EINVAL): unknown flags; a prefix with nothing after it.
            BadRange (ERANGE): an empty name or one of more than 255 bytes.
            TooBig (E2BIG): a value of more than 64 KiB.
            NotSupported (EOPNOTSUPP): a namespace daxfs does not store, or a
                symbolic link itself (``follow_symlinks=False``) for ``trusted.``
                and ``security.``.
            NotPermitted (EPERM): ``user.`` on a symbolic link itself;
                ``trusted.`` or ``security.`` without privilege.
            NoSpace (ENOSPC): the file's attributes would not fit its 4 KiB
                xattr block, or no block is free.
            ReadOnly (EROFS); the errors of a path lookup; Corrupted (EUCLEAN).
            Nothing is changed when it raises.
        """
        shown = _shown(path)
        name = xattr.attribute_name(attribute, shown)
        data = xattr.check_set(value, flags, shown)
        with self._lock:
            inode, shown = self._existing(path, follow_symlinks)
            self._setxattr(inode, shown, name, data, flags)

    def listxattr(self, path: Path = "/", *, follow_symlinks: bool = True) -> list[str]:
        """The names of the extended attributes of ``path``, as os.listxattr (sorted;
        ``trusted.`` names only with privilege).  daxfs has no working directory:
        the default is the root.

        Raises:
            The errors of a path lookup; Corrupted (EUCLEAN).
        """
        with self._lock:
            inode, shown = self._existing(path, follow_symlinks)
            return self._listxattr(inode, shown)

    def removexattr(
        self, path: Path, attribute: str | bytes, *, follow_symlinks: bool = True
    ) -> None:
        """Remove the extended attribute ``attribute`` of ``path``, as os.removexattr:
        one transaction; ctime is set.

        Raises:
            NoData (ENODATA): no such attribute; ReadOnly (EROFS); and the name,
            namespace and permission errors of ``setxattr``.  Nothing is
            changed when it raises.
        """
        name = xattr.attribute_name(attribute, _shown(path))
        with self._lock:
            inode, shown = self._existing(path, follow_symlinks)
            self._removexattr(inode, shown, name)

    # the four on an inode (File's methods call them too: fgetxattr and the others)

    def _getxattr(self, inode: Inode, shown: str, name: bytes) -> bytes:
        with self._lock, naming(shown), inode.lock:
            self._check_mounted()
            if not xattr.check_access(inode, name, False, shown):
                raise NoData(f"no xattr {os.fsdecode(name)!r}: {shown}", shown)
            return self.xattrs.get(self.store, inode, name, shown)

    def _setxattr(self, inode: Inode, shown: str, name: bytes, data: bytes, flags: int) -> None:
        self._change_xattr(
            inode, shown, name, lambda tx: self.xattrs.set(tx, inode, name, data, flags, shown)
        )

    def _listxattr(self, inode: Inode, shown: str) -> list[str]:
        with self._lock, naming(shown), inode.lock:
            self._check_mounted()
            entries = self.xattrs.entries(self.store, inode)
            return [os.fsdecode(e.name) for e in entries if xattr.visible(e.name)]

    def _removexattr(self, inode: Inode, shown: str, name: bytes) -> None:
        self._change_xattr(
            inode, shown, name, lambda tx: self.xattrs.remove(tx, inode, name, shown)
        )

    def _change_xattr(
        self, inode: Inode, shown: str, name: bytes, change: Callable[[Transaction], None]
    ) -> None:
        """``change`` the attribute ``name`` of ``inode`` in one transaction, after the
        checks of a write (EROFS first, as Linux, then namespace and permission); ctime
        is set."""
        with self._lock:
            self._check_mounted()
            self._check_writable(shown)
            with naming(shown):
                xattr.check_access(inode, name, True, shown)
            with inode.lock, self._begin(shown) as tx:
                change(tx)
                self.itable.dirty(tx, inode).ctime_ns = now_ns()

    # -- attributes ---------------------------------------------------------------------

    def stat(self, path: Path, *, follow_symlinks: bool = True) -> os.stat_result:
        """os.stat_result of a file (mode, ino, nlink, uid, gid, size, blocks, ns times).

        A str or bytes path that resolved before is looked up in the path cache
        (``_paths``) instead of walked again; one whose parent directory did is
        answered by the C miss path (``_stat_fast_reference``); see "Fast paths and
        in-memory indexes" in docs/ARCHITECTURE.md.

        Raises:
            FileNotFoundError, NotADirectoryError, TooManyLinks (ELOOP),
            NameTooLong, InvalidArgument (NUL in the path, not mounted).
        """
        fast = self._fast
        if fast is not None:
            # the whole of what follows for the cases it covers, in C (_stat.c's stat):
            # the lock (if free), the epoch, a path cache hit, else the miss path
            found = fast.stat(path, follow_symlinks)
            if found is not None:
                return found
        with self._lock:
            kind = type(path)
            if kind is str:
                paths = self._paths[follow_symlinks]
            elif kind is bytes:
                paths = self._bpaths[follow_symlinks]
            else:
                inode, _ = self._existing(path, follow_symlinks)
                return self._stat_inode(inode)
            if self._paths_epoch != self.dirs.removals:
                self._forget_paths()
            ino = paths.get(path)
            if ino is not None and self._mounted:
                self._path_hits += 1
                itable = self.itable
                if ino not in self._icache and self._fast is not None:
                    found = self._fast.inode(ino, self.sup.sb.inode_hwm)
                    if found is not None:
                        return found
                inode = itable.get(ino)
                itable.trim()
                return self._stat_inode(inode)
            fast = self._fast
            if fast is not None and self._mounted:
                # _stat_fast_reference, in C (daxfs/fs/_stat.c)
                early: os.stat_result | int | None = fast.path(
                    path,  # type: ignore[arg-type]  # str or bytes: kind says so
                    follow_symlinks,
                    self.sup.sb.inode_hwm,
                )
                if isinstance(early, int):
                    early = self._stat_fast_rest(path, kind, follow_symlinks, early)
                if early is not None:
                    self._path_misses += 1
                    if len(paths) >= PATH_CACHE_LIMIT:
                        paths.clear()
                    paths[path] = early.st_ino
                    return early
            inode, _ = self._existing(path, follow_symlinks)
            self._path_misses += 1
            if len(paths) >= PATH_CACHE_LIMIT:
                paths.clear()
            paths[path] = inode.ino
            return self._stat_inode(inode)

    @property
    def path_hits(self) -> int:
        """stats answered from the path cache (by C or Python)."""
        return self._path_hits + (self._fast.hits if self._fast is not None else 0)

    @property
    def path_misses(self) -> int:
        """str and bytes stats the path cache did not answer."""
        return self._path_misses + (self._fast.misses if self._fast is not None else 0)

    def _stat_fast_reference(self, path: Any, kind: type, follow: bool) -> os.stat_result | None:
        """stat of ``path`` through the C miss path, or None: the walk must answer.

        The readable reference of ``StatPath.path`` (which ``stat`` calls, with
        ``_stat_fast_rest``): it answers only a path "HEAD/NAME" whose HEAD
        resolves (through the path cache, filled here) to a cached directory
        with a current index, and whose NAME that index holds: the rest
        (absent names, ".", "..", long names, symbolic links to follow,
        records that fail a check, errors of every kind) is left to the walk,
        the reference of it all, which raises what must be raised.  Caller
        holds the filesystem lock; mounted; no transaction open.
        """
        if len(path) > _FAST_PATH_CHARS:  # 4 bytes a character at most: under MAX_PATH
            return None
        if kind is str:
            head, sep, tail = path.rpartition("/")
            try:
                name = tail.encode(_FS_ENCODING, _FS_ERRORS)  # os.fsencode
            except UnicodeError:
                return None
            parents = self._paths[True]
        else:
            head, sep, name = path.rpartition(b"/")
            parents = self._bpaths[True]
        if not sep or not name:
            return None
        parent = self._cached_parent(head, parents)
        if parent is None:
            return None
        index = self.dirs.ready_index(parent)
        if index is None:
            return None
        assert self._fast is not None
        found = self._fast.child(index, name, self.sup.sb.inode_hwm, follow)
        if not isinstance(found, int):
            return found
        return self._stat_fast_rest(path, kind, follow, found)

    def _stat_fast_rest(
        self, path: Any, kind: type, follow: bool, code: int
    ) -> os.stat_result | None:
        """What an int from ``StatPath.path`` or ``child`` asks for: -1 the walk
        (None), -2 resolve HEAD into the path cache and try again, an ino the
        stat of that cached inode (a link to follow: the walk)."""
        if code == -2:
            assert self._fast is not None
            sep: Any = "/" if kind is str else b"/"
            parents = self._paths[True] if kind is str else self._bpaths[True]
            if self._resolve_parent(path.rpartition(sep)[0], parents) is None:
                return None
            found = self._fast.path(path, follow, self.sup.sb.inode_hwm)
            if not isinstance(found, int):
                return found
            code = found
        if code < 0:
            return None
        inode = self.itable.get(code)  # cached: answered from memory
        if follow and inode.rec.mode & _S_IFMT == _S_IFLNK:
            return None
        return self._stat_inode(inode)

    def _resolve_parent(self, head: Any, parents: dict[Any, int]) -> int | None:
        """The ino ``head`` resolves to (links followed), remembered in ``parents``;
        None if it does not resolve (the walk of the whole path says why)."""
        try:
            inode, _ = self._existing(head, True)
        except OSError:
            return None
        if len(parents) >= PATH_CACHE_LIMIT:
            parents.clear()
        parents[head] = inode.ino
        return inode.ino

    def _cached_parent(self, head: Any, parents: dict[Any, int]) -> Inode | None:
        """The directory ``head`` (a path's HEAD; empty: the root) resolves to, from
        stat's path cache of parents (``_resolve_parent`` on a miss), if its inode is
        cached; None: the walk of the whole path must answer."""
        parent_ino = parents.get(head) if head else INO_ROOT
        if parent_ino is None:
            parent_ino = self._resolve_parent(head, parents)
            if parent_ino is None:
                return None
        parent = self._icache.get(parent_ino)
        if parent is None or parent.rec.mode & _S_IFMT != _S_IFDIR:
            return None
        return parent

    def _forget_paths(self) -> None:
        """Empty stat's path cache (a name was removed or retargeted)."""
        for paths in (*self._paths, *self._bpaths):
            paths.clear()
        if self._fast is not None:
            self._fast.forget()  # its answer table too
        self._paths_epoch = self.dirs.removals

    def lstat(self, path: Path) -> os.stat_result:
        return self.stat(path, follow_symlinks=False)

    def _stat_inode(self, inode: Inode) -> os.stat_result:
        rec = inode.rec
        mode = rec.mode
        size = max(1, rec.blocks) * BLOCK_SIZE if mode & _S_IFMT == _S_IFDIR else rec.size
        atime, mtime, ctime = rec.atime_ns, rec.mtime_ns, rec.ctime_ns
        # the 19 fields in os.stat_result's order: 10 in the sequence, then the float
        # times, the ns times, st_blksize, st_blocks, st_rdev (no dict to build)
        return os.stat_result(
            (
                mode,
                rec.ino,
                self._dev,
                rec.nlink,
                rec.uid,
                rec.gid,
                size,
                atime // 1000000000,
                mtime // 1000000000,
                ctime // 1000000000,
                atime / 1e9,
                mtime / 1e9,
                ctime / 1e9,
                atime,
                mtime,
                ctime,
                BLOCK_SIZE,
                rec.blocks * (BLOCK_SIZE // 512),
                0,
            )
        )

    #: errnos that say "no such path" to exists/isdir/isfile/islink (as os.path,
    #: which returns False); device errors (EIO, EUCLEAN) still raise
    _ABSENT = frozenset({errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.ENAMETOOLONG})

    def _probe(self, path: Path, follow: bool) -> os.stat_result | None:
        """stat(path), or None where os.path's predicates return False."""
        self._check_mounted()
        try:
            fspath(path)
        except InvalidArgument:  # a NUL byte: os.path says False too
            return None
        try:
            return self.stat(path, follow_symlinks=follow)
        except OSError as exc:
            if exc.errno in self._ABSENT:
                return None
            raise

    def birthtime_ns(self, path: Path, *, follow_symlinks: bool = True) -> int:
        """When the file was created, in ns since the epoch (statx's ``stx_btime``:
        os.stat_result has no field for it on Linux).

        Raises:
            FileNotFoundError, NotADirectoryError, TooManyLinks (ELOOP),
            NameTooLong, InvalidArgument (NUL in the path, not mounted).
        """
        with self._lock:
            inode, _ = self._existing(path, follow_symlinks)
            return int(inode.rec.btime_ns)

    def exists(self, path: Path) -> bool:
        """Whether ``path`` names something, symbolic links followed (os.path.exists)."""
        return self._probe(path, True) is not None

    def isdir(self, path: Path) -> bool:
        found = self._probe(path, True)
        return found is not None and st.S_ISDIR(found.st_mode)

    def isfile(self, path: Path) -> bool:
        found = self._probe(path, True)
        return found is not None and st.S_ISREG(found.st_mode)

    def islink(self, path: Path) -> bool:
        found = self._probe(path, False)
        return found is not None and st.S_ISLNK(found.st_mode)

    def _set_attr(self, path: Path, follow: bool, change: _Change) -> None:
        """Change the record of the inode ``path`` names, in one transaction."""
        with self._lock:
            inode, shown = self._existing(path, follow)
            self._set_inode_attr(inode, shown, change)

    def _set_inode_attr(self, inode: Inode, shown: str, change: _Change) -> None:
        """Change ``inode``'s record in one transaction (a name's inode, or an open
        File's, named or not); ``change.check`` may refuse first, changing nothing."""
        with self._lock:
            change.check(inode, shown)
            with self._begin(shown) as tx:
                rec = self.itable.dirty(tx, inode)
                change.apply(rec)
                rec.ctime_ns = now_ns()

    def set_dax(self, path: Path, enabled: bool) -> None:
        """Set or clear the file's DAX flag (Linux's FS_XFLAG_DAX, ``chattr +x``), in
        one transaction with its ctime; symbolic links are followed.  New files and
        directories made in a flagged directory inherit it.  What the flag does
        under each ``dax=`` mount option: daxfs.fs.daxflag.

        Raises:
            TypeError: ``enabled`` is not a bool.
            FileNotFoundError, NotADirectoryError, TooManyLinks (ELOOP),
            NameTooLong, ReadOnly (EROFS), InvalidArgument (not mounted).
        """
        if not isinstance(enabled, bool):
            raise TypeError(f"set_dax: enabled must be a bool, not {type(enabled).__name__}")
        with self._lock:
            inode, shown = self._existing(path, True)
            with self._begin(shown) as tx:
                daxflag.set_flag(tx, self.itable, self.sup, inode, enabled)

    def get_dax(self, path: Path, *, follow_symlinks: bool = True) -> daxflag.DaxState:
        """The file's DAX flag and whether its data goes by DAX (statx's
        STATX_ATTR_DAX): daxfs.fs.daxflag.DaxState.

        Raises:
            FileNotFoundError, NotADirectoryError, TooManyLinks (ELOOP),
            NameTooLong, InvalidArgument (NUL in the path, not mounted).
        """
        with self._lock:
            inode, _ = self._existing(path, follow_symlinks)
            return daxflag.state(inode, self.direct is None)

    def chmod(self, path: Path, mode: int, *, follow_symlinks: bool = True) -> None:
        """Change permission bits (the low 12 bits of ``mode``).

        Raises:
            FileNotFoundError, NotSupported (EOPNOTSUPP: a symbolic link itself,
            with ``follow_symlinks=False``, as Linux), ReadOnly.
        """
        self._set_attr(path, follow_symlinks, _ChangeMode(mode))

    def chown(self, path: Path, uid: int, gid: int, *, follow_symlinks: bool = True) -> None:
        """Change owner and group; -1 (or 2**32 - 1, as the kernel's (uid_t)-1) leaves
        one unchanged.

        Raises:
            TypeError: an id that is not an integer (as os.chown).
            OutOfRange (EOVERFLOW, also OverflowError as os.chown raises): an id
                below -1 or above 2**32 - 1; nothing changed.
            FileNotFoundError, ReadOnly.
        """
        self._set_attr(path, follow_symlinks, _ChangeOwner(uid, gid, _shown(path)))

    def utime(
        self,
        path: Path,
        times: tuple[float, float] | None = None,
        *,
        ns: tuple[int, int] | None = None,
        follow_symlinks: bool = True,
    ) -> None:
        """Set access and modification times, as os.utime.

        Times are stored as signed 64-bit nanoseconds since the epoch (years
        1677 to 2262).

        Raises:
            TypeError: ``times`` or ``ns`` not a pair of numbers (ints for
                ``ns``), as os.utime.
            ValueError: a NaN time (as os.utime).
            OutOfRange (EOVERFLOW, also OverflowError as os.utime raises for
                times it cannot store): a time outside that range; nothing changed.
            InvalidArgument: both ``times`` and ``ns``.
            FileNotFoundError, ReadOnly.
        """
        self._set_attr(path, follow_symlinks, _ChangeTimes(times, ns, _shown(path)))

    # -- the same on an open File (os.fchmod, os.fchown, os.utime of an fd) ------------

    def _fchmod(self, inode: Inode, shown: str, mode: int) -> None:
        self._set_open_attr(inode, shown, _ChangeMode(mode))

    def _fchown(self, inode: Inode, shown: str, uid: int, gid: int) -> None:
        self._set_open_attr(inode, shown, _ChangeOwner(uid, gid, shown))

    def _futime(
        self,
        inode: Inode,
        shown: str,
        times: tuple[float, float] | None,
        ns: tuple[int, int] | None,
    ) -> None:
        self._set_open_attr(inode, shown, _ChangeTimes(times, ns, shown))

    def _set_open_attr(self, inode: Inode, shown: str, change: _Change) -> None:
        with self._lock:
            self._check_mounted()
            self._set_inode_attr(inode, shown, change)

    def truncate(self, path: Path, length: int, *, nowait: bool = False) -> None:
        """Set the size of a regular file.

        Pins on the bytes it removes make it wait (up to the mount's
        layout_timeout); ``nowait`` fails at once instead.

        Raises:
            FileNotFoundError, IsADirectoryError, InvalidArgument (negative),
            FileTooLarge, ReadOnly, Busy (pins outlived layout_timeout),
            WouldBlock (EAGAIN: nowait and pinned).
        """
        if isinstance(length, bool) or not isinstance(length, int) or length < 0:
            shown = _shown(path)
            raise InvalidArgument(f"invalid length {length!r} for {shown}", shown)
        with self._lock:
            inode, shown = self._existing(path)
            if inode.is_dir:
                raise IsADirectory(f"is a directory: {shown}", shown)
            self._check_writable(shown)
            self.itable.hold(inode)  # keeps it alive while the filesystem lock is let go
        try:
            # without the filesystem lock: waiting for pins must not stall other operations
            with naming(shown), inode.lock:
                self.data.truncate(inode, length, nowait)
        except BaseException as exc:
            cleanup_after(exc, lambda: self.itable.put(inode))
            raise
        self.itable.put(inode)

    def statvfs(self, path: Path = "/") -> os.statvfs_result:
        """Block and inode counts.

        ``f_bfree`` counts the allocator's reserve, ``f_bavail`` does not (as
        ext4).  The inode table grows, so free inodes (``f_ffree``, ``f_favail``)
        are what creates can still get: the free list, the unused slots of the
        inode table, and what the blocks outside the reserve let it grow by
        (InodeTable.available).
        """
        with self._lock:
            self._existing(path)
            sb = self.sup.sb
            bavail = self.alloc.unreserved()
            free_inodes = self.itable.available(bavail)
            flags = os.ST_RDONLY if self.readonly else 0
            return os.statvfs_result(
                (
                    BLOCK_SIZE,
                    BLOCK_SIZE,
                    sb.block_count,
                    sb.free_blocks,
                    bavail,
                    sb.used_inodes + free_inodes,
                    free_inodes,
                    free_inodes,
                    flags,
                    MAX_NAME,
                )
            )

    def sync(self) -> None:
        """Persist stores made through writable mappings, live or closed (see
        File.fsync); every operation is durable when it returns already.

        Raises:
            IOFailure (EIO): the device failed to flush, naming the image
                (``source``); a later sync tries again.
        """
        self._check_mounted()
        with naming(self.source), self._lock:
            self.data.sync_all()
            if self.direct is not None:  # times of direct overwrites (DirectIO.touch)
                self.direct.sync_all_times()
            self.store.drain()


def fspath_type(path: Path) -> str | bytes:
    """``path`` as str or bytes, to decide the type of what is returned."""
    return os.fspath(path)


class _Change:
    """A change of an inode's attributes, checked when it is made (arguments) and
    again against the inode (``check``) before its transaction."""

    def check(self, inode: Inode, shown: str) -> None:
        """Refuse (raise) before anything changes; the default accepts."""

    def apply(self, rec: Any) -> None:
        raise NotImplementedError


class _ChangeMode(_Change):
    """chmod: the low 12 bits of ``mode``; a symbolic link itself refuses (EOPNOTSUPP)."""

    def __init__(self, mode: int) -> None:
        self.mode = mode & 0o7777

    def check(self, inode: Inode, shown: str) -> None:
        if inode.is_lnk:
            raise NotSupported(f"cannot change the mode of a symbolic link: {shown}", shown)

    def apply(self, rec: Any) -> None:
        rec.mode = st.S_IFMT(rec.mode) | self.mode


class _ChangeOwner(_Change):
    """chown: -1 (or (uid_t)-1) keeps one of the two.

    Raises:
        TypeError, OutOfRange (EOVERFLOW): a bad id (``_owner_id``).
    """

    def __init__(self, uid: int, gid: int, shown: str) -> None:
        self.uid = _owner_id(uid, "uid", shown)
        self.gid = _owner_id(gid, "gid", shown)

    def apply(self, rec: Any) -> None:
        if self.uid is not None:
            rec.uid = self.uid
        if self.gid is not None:
            rec.gid = self.gid


class _ChangeTimes(_Change):
    """utime: ``times`` (seconds) or ``ns``, or now for both.

    Raises:
        TypeError, ValueError (NaN), OutOfRange (EOVERFLOW), InvalidArgument
        (both given): as FileSystem.utime.
    """

    def __init__(
        self, times: tuple[float, float] | None, ns: tuple[int, int] | None, shown: str
    ) -> None:
        if times is not None and ns is not None:
            raise InvalidArgument(f"utime: give times or ns, not both: {shown}", shown)
        if ns is not None:
            if not isinstance(ns, tuple) or len(ns) != 2:
                raise TypeError("utime: 'ns' must be a tuple of two ints")
            for value in ns:
                if not isinstance(value, int):
                    raise TypeError(
                        f"'{type(value).__name__}' object cannot be interpreted as an integer"
                    )
        elif times is None:
            t = now_ns()
            ns = (t, t)
        else:
            if not isinstance(times, tuple) or len(times) != 2:
                raise TypeError("utime: 'times' must be either a tuple of two numbers or None")
            ns = (_seconds_to_ns(times[0], shown), _seconds_to_ns(times[1], shown))
        for value in ns:
            if not -(1 << 63) <= value < 1 << 63:
                raise OutOfRange(
                    f"utime: {value} ns is outside what daxfs stores (signed 64-bit "
                    f"nanoseconds, years 1677 to 2262): {shown}",
                    shown,
                )
        self.ns = ns

    def apply(self, rec: Any) -> None:
        rec.atime_ns, rec.mtime_ns = self.ns


def _owner_id(value: int, what: str, path: Path) -> int | None:
    """A uid or gid for chown: None for "unchanged" (-1, or 2**32 - 1 as (uid_t)-1).

    Raises:
        TypeError: not an integer.  OutOfRange: below -1 or above 2**32 - 1.
    """
    if not isinstance(value, int):
        raise TypeError(f"{what} should be integer, not {type(value).__name__}")
    if value in (-1, 0xFFFFFFFF):
        return None
    if not 0 <= value < 0xFFFFFFFF:
        shown = _shown(path)
        raise OutOfRange(f"chown: {what} {value} is not a 32-bit id: {shown}", shown)
    return int(value)


def _seconds_to_ns(seconds: float, path: Path) -> int:
    """Seconds as ns, rounded as os.utime does (the fraction floored, from modf).

    Raises:
        TypeError: not a number.  ValueError: NaN.  OutOfRange: infinite.
    """
    if isinstance(seconds, int):
        return seconds * 1_000_000_000
    if not isinstance(seconds, float):
        raise TypeError(f"'{type(seconds).__name__}' object cannot be interpreted as an integer")
    if math.isnan(seconds):
        raise ValueError("Invalid value NaN (not a number)")
    if math.isinf(seconds):
        shown = _shown(path)
        raise OutOfRange(f"utime: time {seconds} is out of range: {shown}", shown)
    fraction, whole = math.modf(seconds)
    ns = math.floor(fraction * 1e9)
    if ns >= 1_000_000_000:
        ns -= 1_000_000_000
        whole += 1.0
    elif ns < 0:
        ns += 1_000_000_000
        whole -= 1.0
    return int(whole) * 1_000_000_000 + ns


def _shown(path: Path) -> str:
    """``path`` as error messages name it (before it is known to be valid)."""
    try:
        return os.fsdecode(path).replace("\0", "?")
    except TypeError:
        return repr(path)
