"""The journal: every filesystem operation is one atomic, durable transaction.

Theory of operation
-------------------
daxfs uses a *redo* journal with a private write set, like jbd2 but applied
synchronously, which suits persistent memory where applying is a memcpy:

* ``Transaction.write(n)`` returns a private copy of block n; the structures
  modify that copy, and ``Transaction.read(n)`` returns it too, so a
  transaction sees its own changes while every other reader still sees the
  committed state on the device.
* ``Transaction.new_block(n)`` is for a block allocated in this transaction
  (free on the device): it is written in place at once, since nothing
  committed refers to it; it is flushed before the commit point.  File data
  written into newly allocated blocks follows the same rule.
* ``Transaction.log_data(offset, data)`` journals an overwrite of live data
  (the redo record itself is the data); that is how small overwrites of file
  data are atomic.

Commit (``Transaction.commit``)::

    1. seal every dirty block (checksums), diff it against the device and
       keep only the changed 64-byte lines: the redo records; then join the
       copies into new blocks that another core ran meanwhile
       (``join_before_fence``: daxfs.fs._copy; an abort joins them too)
    2. write the records to the log area; flush
    3. drain                                   (fence 1: the log and every
       block written in place are durable before any header points at them)
    4. write the header; drain                 <- COMMIT POINT (fence 2)
    5. copy every record to its place; flush
    6. drain                                   (fence 3)
    7. store applied_seq = seq (8-byte atomic); flush, no drain: the next
       fence of any operation makes it durable

Small overwrites (``Journal.overwrite``) make one transaction of two
records, the file data and the inode record (size, mtime, ctime), and commit
it in C (daxfs/fs/_commit.c, ``Committer.overwrite``): the same records, the
same device operations in the same order, so the media is the same at every
fence; ``_overwrite`` is the Python reference that builds it through
``begin`` and ``Transaction.commit``.  On a PmemDevice the C code copies and
flushes itself (the same bytes: tests/fs/test_commit.py compares the images);
on any other device (SimulatedPmem) it calls the store's ``write`` and
``drain``, so crash tests see every operation.
``Committer.pwrite`` (File.pwrite's first try) is the same commit with
DataPath.write's checks and both locks in one C call; a device failure in it
comes back to ``_overwrite_failed`` under those locks.

Steps 2-7 run in C for every transaction (``Committer.commit``, called by
``Transaction._commit_native``): the records, gathered and sealed in Python
as step 1 says, are laid out, checksummed and written by the same device
operations in the same order, through the same two operations as the
overwrite commit below (so SimulatedPmem sees each one); a failure is handled
by how far it got (``Committer.stage``), as here.  The code of ``commit``
after that call is the readable reference; it runs when ``NATIVE_COMMIT`` was
off at mount, and for a log too large for its area (to raise
TransactionTooLarge).

Recovery (``Journal.recover``) replays the log if its header and log
checksums are intact and ``seq > applied_seq``.  It first checks what no
checksum covers or proves (``Journal.problems``): sequence numbers below
SEQ_LIMIT (one commit per nanosecond would take 292 years to reach it, so a
larger one is damage, and would overflow the u64 at the next commit), an
``applied_seq`` never ahead of an intact header's ``seq`` (commit writes the
header before it applies), and records that lie inside the filesystem,
outside the journal, and fill the log exactly.  Replay is idempotent, so a
crash during recovery is harmless.  The log always starts at the same place:
a transaction is applied in place before the next one writes its log, so the
log never holds more than one transaction.

Why step 7 may be lazy: replaying transaction N again after later changes
would undo them, but any later change is made durable by a later fence, and
that fence also makes applied_seq = N durable first.

Invariants
  1. Nothing but ``new_block`` blocks, file data in new blocks, and the log
     itself is written before the commit point; so a crash before it leaves
     the committed state untouched.
  2. After the commit point, every record reaches its place (now, or by
     replay at the next mount).
  3. One transaction at a time: ``Journal.begin`` holds the journal lock
     until commit or abort.
  4. An error after the commit point, or while an abort undoes memory,
     makes the filesystem read-only until remount (SQLite's pager ERROR
     state): memory and media may disagree.  Such an error never replaces
     the one that made the transaction abort (it becomes a note on it).
     An error before the commit point changes nothing and leaves the
     filesystem writable (the error may be transient), unless the device
     says it is lost for good (``Device.lost``: an NBD server that
     disconnected): then too the filesystem turns read-only
     (``_failed_before_commit``).
  5. ``applied_seq <= header.seq`` whenever the header is intact, and both
     stay below SEQ_LIMIT.
  6. The C commits (of any transaction's records, and of an overwrite) and
     the reference make the same device operations with the same bytes
     (tests/fs/test_commit.py, test_commit_records.py); the overwrite's inode
     record is the committed one, checked against memory (daxfs.fs.inode,
     invariant 2), so it is the record the reference packs.

State diagram (Transaction)::

    Journal.begin() --> OPEN --commit()--> COMMITTED
                          |
                          '--abort() (or an exception in `with`)--> ABORTED
"""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

from daxfs.errors import Corrupted, InvalidArgument, IOFailure, ReadOnly
from daxfs.fs import _commit, _create
from daxfs.fs.layout import (
    BLOCK_SHIFT,
    BLOCK_SIZE,
    JH_APPLIED_OFFSET,
    JREC,
    JournalHeader,
    crc32c,
    seal_node,
)
from daxfs.fs.store import PmemStore
from daxfs.pmem.cpu import diff_lines
from daxfs.pmem.pmem_device import PmemDevice

if TYPE_CHECKING:
    from typing_extensions import Buffer

Seal = Callable[[memoryview], None]
LINE = 64
#: sequence numbers at or above this are damage, not history (see the module docstring)
SEQ_LIMIT = 1 << 63
#: journals made from now on commit small overwrites in C (daxfs.fs._commit); tests
#: turn it off to run the Python reference (Journal.overwrite) instead
NATIVE_COMMIT = True
#: ``Transaction._records`` seals and diffs its private block copies in C
#: (``_create.block_records``); tests turn it off to run the Python loop, the reference
NATIVE_RECORDS = True

_commit.set_error_class(InvalidArgument)
_create.set_error_class(InvalidArgument)


class InodeLog(Protocol):
    """What ``Journal.overwrite`` needs of the inode table (daxfs.fs.inode, a layer above)."""

    def dirty(self, tx: Transaction, inode: Any) -> Any: ...

    def address(self, reader: Any, ino: int) -> tuple[int, int]: ...


class TransactionTooLarge(AssertionError):
    """A transaction does not fit the log: a bug in the caller, which must split work."""


class Journal:
    """The log region and the lock that serialises transactions."""

    # __slots__: Committer.pwrite (File.pwrite's fast path, C) reads lock, active,
    # failed and seq, and sets seq and commits, by slot offset (no attribute lookups)
    __slots__ = (
        "active",
        "capacity",
        "commits",
        "committer",
        "failed",
        "header_offset",
        "lock",
        "log_offset",
        "native_commits",
        "owner",
        "readonly",
        "region",
        "seq",
        "store",
    )

    def __init__(self, store: PmemStore, start: int, blocks: int, readonly: bool = False) -> None:
        self.store = store
        self.header_offset = start << BLOCK_SHIFT
        self.log_offset = (start + 1) << BLOCK_SHIFT
        self.capacity = (blocks - 1) << BLOCK_SHIFT
        self.region = (start, start + blocks)
        store.ensure(self.header_offset, blocks << BLOCK_SHIFT)  # read through ``view``
        self.readonly = readonly
        self.failed: str | None = None
        self.lock = threading.RLock()
        self.seq = 0
        self.commits = 0
        #: of which committed by the C commit of records (Committer.commit)
        self.native_commits = 0
        self.active: Transaction | None = None
        self.owner = 0
        #: the C commit of small overwrites, or None: the Python reference only
        self.committer = _committer(self) if NATIVE_COMMIT and not readonly else None

    # -- recovery ---------------------------------------------------------------------

    def applied_seq(self) -> int:
        (value,) = struct.unpack_from("<Q", self.store.view, self.header_offset + JH_APPLIED_OFFSET)
        return int(value)

    def _header(self) -> JournalHeader | None:
        """The header if intact (it may describe a transaction applied long ago)."""
        return JournalHeader.unpack(self.store.view[self.header_offset : self.header_offset + 32])

    def pending(self) -> JournalHeader | None:
        """The committed transaction that recovery would replay, if any.

        A header whose log fails its checksum is not pending: the log is being
        reused by a later transaction, so that one was applied long ago.
        """
        view = self.store.view
        header = self._header()
        if header is None or header.seq <= self.applied_seq():
            return None
        if header.log_bytes > self.capacity:
            return None
        log = view[self.log_offset : self.log_offset + header.log_bytes]
        if crc32c(log) != header.log_crc:
            return None  # torn: the transaction never committed
        return header

    def records(self, header: JournalHeader) -> list[tuple[int, int, int]]:
        """(device offset, log offset, length) of each record of a committed transaction.

        Work is bounded by ``log_bytes`` (at most the log's capacity), whatever
        ``nrecords`` says.

        Raises:
            Corrupted: a record is malformed, points outside the filesystem or
                into the journal, or the records do not fill the log exactly.
        """
        where = f"journal transaction {header.seq}"
        if header.log_bytes > self.capacity:
            raise Corrupted(f"{where}: {header.log_bytes} bytes of log exceed the log area")
        if header.nrecords > header.log_bytes // JREC.size:
            raise Corrupted(f"{where}: {header.nrecords} records cannot fit its log")
        limit = self.store.block_count << BLOCK_SHIFT
        jstart, jend = (b << BLOCK_SHIFT for b in self.region)
        out = []
        pos = 0
        for i in range(header.nrecords):
            if pos + JREC.size > header.log_bytes:
                raise Corrupted(f"{where}: record {i} is truncated")
            offset, length, _ = JREC.unpack_from(self.store.view, self.log_offset + pos)
            pos += JREC.size
            if pos + length > header.log_bytes or offset + length > limit:
                raise Corrupted(
                    f"{where}: record {i} ({length} bytes at device offset {offset}) "
                    "is out of range"
                )
            if offset < jend and offset + length > jstart:
                raise Corrupted(f"{where}: record {i} (device offset {offset}) targets the log")
            out.append((offset, self.log_offset + pos, length))
            pos += (length + 7) & ~7
        if pos != header.log_bytes:
            raise Corrupted(f"{where}: {header.log_bytes - pos} log bytes after its last record")
        return out

    def problems(self) -> list[str]:
        """What is wrong with the journal's header, ``applied_seq`` or pending records.

        Never raises on damage (for fsck; ``recover`` raises the first one).
        A torn header or log is not a problem: that transaction never committed.
        """
        out = []
        applied = self.applied_seq()
        found = self._header()
        if applied >= SEQ_LIMIT:
            out.append(f"journal: applied_seq {applied} is out of range (limit {SEQ_LIMIT})")
        if found is not None and found.seq >= SEQ_LIMIT:
            out.append(f"journal: header seq {found.seq} is out of range (limit {SEQ_LIMIT})")
        if found is not None and applied > found.seq:
            out.append(
                f"journal: applied_seq {applied} is ahead of the last committed "
                f"transaction {found.seq}"
            )
        if found is not None and found.seq > applied and found.log_bytes > self.capacity:
            out.append(
                f"journal: transaction {found.seq} claims {found.log_bytes} bytes of log, "
                f"more than the {self.capacity}-byte log area"
            )
        header = self.pending()
        if header is not None and not out:
            try:
                self.records(header)
            except Corrupted as exc:
                out.append(str(exc.strerror))
        return out

    def recover(self) -> int:
        """Replay the committed transaction in the log, if any; return records replayed.

        Raises:
            Corrupted (EUCLEAN): ``problems()`` found something; nothing written.
            ReadOnly (EROFS): read-only, and a transaction awaits replay.
        """
        problems = self.problems()
        if problems:
            raise Corrupted("; ".join(problems))
        header = self.pending()
        applied = self.applied_seq()
        found = self._header()
        self.seq = max(applied, found.seq if found else 0)
        if header is None:
            return 0
        if self.readonly:
            raise ReadOnly(
                f"the journal holds transaction {header.seq} to replay: mount read-write once"
            )
        view = self.store.view
        recs = self.records(header)
        for offset, log_pos, length in recs:
            self.store.write(offset, view[log_pos : log_pos + length])
        self.store.drain()
        self._mark_applied(header.seq)
        self.store.drain()
        return len(recs)

    def _mark_applied(self, seq: int) -> None:
        offset = self.header_offset + JH_APPLIED_OFFSET
        self.store.write(offset, struct.pack("<Q", seq))

    # -- transactions -----------------------------------------------------------------

    def begin(self) -> Transaction:
        """Start a transaction; the journal lock is held until commit or abort.

        Raises:
            ReadOnly (EROFS): mounted read-only, or read-only after a journal failure.
        """
        if self.readonly:
            raise ReadOnly("filesystem is mounted read-only")
        if self.failed is not None:
            raise ReadOnly(f"filesystem is read-only after a journal failure: {self.failed}")
        self.lock.acquire()
        if self.active is not None:
            self.lock.release()
            raise AssertionError("nested transaction")
        tx = Transaction(self)
        self.active = tx
        self.owner = threading.get_ident()
        return tx

    def overwrite(self, itable: InodeLog, inode: Any, addr: int, data: Buffer, end: int) -> None:
        """Commit one small overwrite of live file data as its own transaction.

        The data goes to device byte ``addr``; the inode's size becomes at
        least ``end`` and its mtime and ctime now: two redo records (the data,
        then the inode record).  ``itable`` is the inode table (the layer
        above: ``dirty`` and ``address``), ``inode`` its Inode.  The C
        ``committer`` makes exactly the transaction that the Python reference
        (``_overwrite``, through ``begin`` and ``Transaction.commit``) makes,
        with the same device operations (daxfs/fs/_commit.c); without it, or
        when the committed record does not match memory, the reference runs.

        Raises:
            ReadOnly (EROFS), OSError: as ``begin`` and ``Transaction.commit``.
        """
        committer = self.committer
        if committer is not None:
            rec = inode.rec
            inode.data_changed()  # the page cache's stamp (the C commit dirties nothing)
            with self.lock:
                # else nested, or read-only: the reference raises
                if self.active is None and self.failed is None:
                    seq = self.seq + 1
                    blockno, offset = itable.address(self.store, rec.ino)
                    try:
                        stamp = committer.overwrite(
                            seq,
                            addr,
                            data,
                            (blockno << BLOCK_SHIFT) + offset,
                            rec.ino,
                            rec.size,
                            rec.mtime_ns,
                            end,
                        )
                    except BaseException as exc:
                        self._overwrite_failed(committer, exc, seq, rec, end)
                        raise
                    if stamp >= 0:
                        self.seq = seq
                        self.commits += 1
                        if end > rec.size:
                            rec.size = end
                        rec.mtime_ns = rec.ctime_ns = stamp
                        return
        self._overwrite(itable, inode, addr, data, end)

    def _overwrite(self, itable: InodeLog, inode: Any, addr: int, data: Buffer, end: int) -> None:
        """The reference of ``overwrite``: the same transaction, built and committed in Python."""
        with self.begin() as tx:
            rec = itable.dirty(tx, inode)
            tx.log_data(addr, data)
            if end > rec.size:
                rec.size = end
            rec.mtime_ns = rec.ctime_ns = time.time_ns()

    def _overwrite_failed(
        self, committer: _commit.Committer, exc: BaseException, seq: int, rec: Any, end: int
    ) -> None:
        """A device operation of the C commit failed: what ``Transaction.commit`` does.

        Before the header: nothing changed.  After the header, before the
        commit point: the header is erased (``_invalidate_header``).  After
        the commit point: memory takes the committed values and the
        filesystem turns read-only (invariant 4); the caller raises
        ``IOFailure`` from the cause.
        """
        stage = committer.stage
        if stage < _commit.STAGE_COMMITTED:
            self._failed_before_commit(exc, stage == _commit.STAGE_HEADER)
        else:
            self.seq = seq
            if end > rec.size:
                rec.size = end
            rec.mtime_ns = rec.ctime_ns = committer.stamp
            if isinstance(exc, OSError):
                self.failed = f"applying transaction {seq}: {exc}"
                raise IOFailure(
                    f"journal apply failed, filesystem is now read-only: {exc}"
                ) from exc

    def _failed_before_commit(self, exc: BaseException, header_written: bool) -> None:
        """A commit failed before its commit point (nothing changed), by a device error:
        a header already written is unwritten (``_invalidate_header``); and if the device
        is lost for good, the filesystem turns read-only until remount (invariant 4), as
        every later commit would fail the same way.  A transient error leaves it writable.
        """
        if not isinstance(exc, OSError):
            return
        if header_written:
            self._invalidate_header(exc)
        lost = self.store.device.lost
        if lost is not None and self.failed is None:
            self.failed = f"the device is lost ({lost})"

    def _invalidate_header(self, exc: OSError) -> None:
        """The commit fence failed after the header was written: unwrite it.

        Otherwise a later fence could make it durable and recovery would replay
        an operation that reported failure.  If even that fails, the
        filesystem turns read-only (memory and media may disagree).
        """
        try:
            self.store.write(self.header_offset, bytes(32))
            self.store.drain()
        except OSError as again:
            self.failed = f"commit failed ({exc}) and its header could not be erased ({again})"

    def current(self) -> Transaction | None:
        """The open transaction of the calling thread, if any."""
        tx = self.active
        if tx is not None and self.owner == threading.get_ident():
            return tx
        return None

    def _finish(self, tx: Transaction) -> None:
        assert self.active is tx
        self.active = None
        self.lock.release()


class Transaction:
    """A set of block changes that reach the media all together or not at all."""

    # (slots: a create makes one per call, and a __dict__ of fifteen fields cost more
    # than the rest of __init__)
    __slots__ = (
        "_data",
        "_data_bytes",
        "_dirty",
        "_joins",
        "_new",
        "_on_abort",
        "_on_commit",
        "_on_seal",
        "blocks",
        "journal",
        "new_blocks",
        "scratch",
        "state",
        "store",
        "verified",
    )

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.store = journal.store
        self._dirty: dict[int, tuple[bytearray, Seal | None]] = {}
        self._new: dict[int, Seal | None] = {}
        self._data: list[tuple[int, bytes]] = []
        self._data_bytes = 0
        self._on_commit: list[Callable[[], None]] = []
        self._on_abort: list[Callable[[], None]] = []
        self._on_seal: list[Callable[[], None]] = []
        self._joins: list[Callable[[], None]] = []
        self.state = "open"
        #: per-transaction bookkeeping of the layers above, by layer name
        self.scratch: dict[str, Any] = {}
        #: shared with the store: see PmemStore.verified
        self.verified = journal.store.verified
        #: the write set as ``write`` and ``new_block`` keep it, for C that does what
        #: ``write`` does (daxfs/fs/_create.c: block -> (private copy, seal); new blocks)
        self.blocks = self._dirty
        self.new_blocks = self._new

    def __enter__(self) -> Transaction:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.state != "open":
            return
        if exc is None:
            self.commit()
        else:
            self.abort(exc)

    # -- block access -------------------------------------------------------------------

    def read(self, blockno: int) -> memoryview:
        """Block contents as this transaction sees them (its own changes included)."""
        entry = self._dirty.get(blockno)
        if entry is not None:
            return memoryview(entry[0])
        return self.store.block(blockno)

    def write(self, blockno: int, seal: Seal | None = None) -> memoryview:
        """A writable view of block ``blockno`` whose changes commit with the transaction.

        ``seal`` is called on the block just before commit (to store checksums).
        """
        assert self.state == "open"
        if blockno in self._new:
            if seal is not None:
                self._new[blockno] = seal
            return self.store.block(blockno)
        entry = self._dirty.get(blockno)
        if entry is None:
            entry = (bytearray(self.store.block(blockno)), seal)
            self._dirty[blockno] = entry
        elif seal is not None and entry[1] is None:
            self._dirty[blockno] = entry = (entry[0], seal)
        return memoryview(entry[0])

    def new_block(self, blockno: int, seal: Seal | None = None) -> memoryview:
        """Device memory of a block allocated in this transaction, written in place."""
        assert self.state == "open"
        assert blockno not in self._dirty, f"block {blockno} is both live and new"
        self._new[blockno] = seal
        return self.store.block(blockno)

    def forget(self, blockno: int) -> None:
        """Drop pending changes to a block this transaction freed."""
        self._dirty.pop(blockno, None)
        self._new.pop(blockno, None)

    def is_new(self, blockno: int) -> bool:
        return blockno in self._new

    def log_data(self, offset: int, data: Buffer) -> None:
        """Journal ``data`` to be written at device byte ``offset`` when the transaction commits."""
        assert self.state == "open"
        raw = bytes(data)
        self._data.append((offset, raw))
        self._data_bytes += len(raw) + JREC.size + 8

    def log_meta(self, offset: int, data: Buffer) -> None:
        """Journal a metadata range kept in memory (an inode record, superblock counters).

        Structures whose authoritative copy lives in memory log exactly their
        bytes at seal time instead of copying and diffing a whole block.
        """
        assert self.state == "open"
        raw = bytes(data)  # log_data's body (hot: a create logs four)
        self._data.append((offset, raw))
        self._data_bytes += len(raw) + JREC.size + 8

    def on_seal(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` at the start of commit, before records are gathered (to log_meta)."""
        self._on_seal.append(fn)

    def join_before_fence(self, join: Callable[[], None]) -> None:
        """Run ``join`` before the commit writes its log (before its first fence), and
        before an abort ends the transaction: a copy into this transaction's new
        blocks that another core runs meanwhile (daxfs.fs._copy) is finished then.
        An error ``join`` raises at commit aborts the transaction (nothing written)."""
        self._joins.append(join)

    def _join(self) -> None:
        """Run the joins (each once), every one even if one fails (a copy left running
        would store into blocks an abort frees); then raise the first failure."""
        joins = self._joins
        failure: BaseException | None = None
        while joins:
            try:
                joins.pop()()
            except BaseException as exc:
                if failure is None:
                    failure = exc
                else:
                    failure.add_note(f"(another join also failed: {exc!r})")
        if failure is not None:
            raise failure

    @property
    def data_bytes(self) -> int:
        return self._data_bytes

    def on_commit(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` after the transaction is durable."""
        self._on_commit.append(fn)

    def on_abort(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` if the transaction is abandoned (to undo in-memory state)."""
        self._on_abort.append(fn)

    # -- commit -------------------------------------------------------------------------

    def _records(self) -> list[tuple[int, memoryview | bytes]]:
        records: list[tuple[int, memoryview | bytes]] = []
        if NATIVE_RECORDS:  # the loop below, in C (seal_node's seal in C too)
            _create.block_records(self._dirty, self.store.view, seal_node, records)
            records.extend(self._data)
            return records
        for blockno, (copy, seal) in self._dirty.items():
            view = memoryview(copy)
            if seal is not None:
                seal(view)
            base = blockno << BLOCK_SHIFT
            for start, end in changed_ranges(copy, self.store.block(blockno)):
                records.append((base + start, view[start:end]))
        records.extend(self._data)
        return records

    def commit(self) -> None:
        """Make every change durable, atomically; see the module docstring.

        Raises:
            TransactionTooLarge: the records do not fit the log (nothing written).
            OSError: the device failed; before the commit point nothing changed
                (the header is invalidated, or the filesystem turns read-only if
                even that fails), after it the filesystem turns read-only.
        """
        assert self.state == "open"
        journal = self.journal
        store = self.store
        header_written = False
        try:
            for fn in self._on_seal:
                fn()
            for blockno, seal in self._new.items():
                view = store.block(blockno)
                if seal is not None:
                    seal(view)
                store.flush(blockno << BLOCK_SHIFT, BLOCK_SIZE)
            records = self._records()
            if self._joins:
                self._join()  # copies into new blocks: finished and fenced before fence 1
            committer = journal.committer
            if records and committer is not None:
                seq = journal.seq + 1
                if self._commit_native(committer, seq, records):
                    return
            if records:
                payload = _serialize(records)
                if len(payload) > journal.capacity:
                    raise TransactionTooLarge(
                        f"transaction of {len(payload)} bytes exceeds the "
                        f"{journal.capacity}-byte log"
                    )
                seq = journal.seq + 1
                store.write(journal.log_offset, payload)
                # fence 1: the log and every block written in place (new blocks, file
                # data in new blocks) are durable before a header can point at them
                store.drain()
                header = JournalHeader(seq, len(records), len(payload), crc32c(payload))
                header_written = True
                store.write(journal.header_offset, header.pack())
            store.drain()  # COMMIT POINT: the transaction is durable
        except BaseException as exc:
            self.journal._failed_before_commit(exc, header_written)
            self.abort(exc)
            raise
        try:
            if records:
                journal.seq = seq
                for offset, data in records:
                    store.write(offset, data)
                store.drain()
                journal._mark_applied(seq)
            journal.commits += 1
        except OSError as exc:
            journal.failed = f"applying transaction {journal.seq}: {exc}"
            self._finish("committed")
            raise IOFailure(f"journal apply failed, filesystem is now read-only: {exc}") from exc
        except BaseException:
            self._finish("committed")
            raise
        self._dirty.clear()
        self._finish("committed", self._on_commit)

    def _commit_native(
        self, committer: _commit.Committer, seq: int, records: list[tuple[int, Any]]
    ) -> bool:
        """Steps 2-7 of the commit in C (``Committer.commit``): the device operations
        the code below makes for ``records``, with the same bytes in the same order.
        False: nothing done (the log would not fit: the reference raises).  A failure
        is handled as the reference handles it, by how far the commit got (``stage``).
        """
        journal = self.journal
        try:
            if not committer.commit(seq, records):
                return False
        except BaseException as exc:
            stage = committer.stage
            if stage < _commit.STAGE_COMMITTED:
                journal._failed_before_commit(exc, stage == _commit.STAGE_HEADER)
                self.abort(exc)
                raise
            journal.seq = seq
            self._finish("committed")
            if isinstance(exc, OSError):
                journal.failed = f"applying transaction {seq}: {exc}"
                raise IOFailure(
                    f"journal apply failed, filesystem is now read-only: {exc}"
                ) from exc
            raise
        journal.seq = seq
        journal.commits += 1
        journal.native_commits += 1
        self._dirty.clear()
        self._finish("committed", self._on_commit)
        return True

    def _finish(
        self,
        state: str,
        callbacks: list[Callable[[], None]] | None = None,
        cause: BaseException | None = None,
    ) -> None:
        """End the transaction: callbacks first, still under the journal lock.

        Every callback runs even if one fails.  A failure means memory may no
        longer match the media, so the filesystem turns read-only (invariant
        4); it is raised after the others ran -- or, on the error path of
        ``cause``, recorded as a note on it, never in its place.
        """
        self.state = state
        failure: Exception | None = None
        try:
            for fn in callbacks or ():
                try:
                    fn()
                except Exception as exc:
                    failure = failure or exc
                    self.journal.failed = f"undoing a transaction in memory failed: {exc}"
        finally:
            # the callbacks close over the transaction (tx.on_seal(lambda: ...(tx))): drop
            # them so that it is freed by reference counting, not left to the cyclic GC
            self._on_seal.clear()
            self._on_commit.clear()
            self._on_abort.clear()
            self.scratch.clear()
            self.journal._finish(self)
        if failure is not None:
            if cause is None:
                raise failure
            cause.add_note(f"(undoing the transaction in memory also failed: {failure!r})")

    def abort(self, cause: BaseException | None = None) -> None:
        """Abandon every change; run the on_abort callbacks (in reverse order).

        The callbacks (which re-read inodes and the superblock from the device)
        run before the journal lock is released, so that no other transaction
        can start from the state they are about to undo.  ``cause``: the
        error being handled, which a failing callback must not replace.
        """
        if self.state != "open":
            return
        try:
            self._join()  # no copy may run on after the abort: its blocks are free again
        except BaseException as exc:
            if cause is None:
                cause = exc
            else:
                cause.add_note(f"(the copy into new blocks also failed: {exc!r})")
        self._dirty.clear()
        self._new.clear()
        self._data.clear()
        self._finish("aborted", list(reversed(self._on_abort)), cause)


def _serialize(records: list[tuple[int, memoryview | bytes]]) -> bytes:
    parts: list[bytes | memoryview] = []
    for offset, data in records:
        n = len(data)
        parts.append(JREC.pack(offset, n, 0))
        parts.append(data)
        pad = -n & 7
        if pad:
            parts.append(bytes(pad))
    return b"".join(parts)


def changed_ranges(
    new: bytes | bytearray | memoryview, old: bytes | bytearray | memoryview
) -> list[tuple[int, int]]:
    """Byte ranges, in whole 64-byte lines, where two 4 KiB blocks differ."""
    return diff_lines(new, old, LINE)


def _committer(journal: Journal) -> _commit.Committer:
    """The C commit for the journal's device: native where the device allows native
    stores (``Device.native_stores``: a PmemDevice, in its own persist mode), else
    through the store's write and drain (SimulatedPmem, FaultyPmem, BlockCache, any
    Device: they see every operation, as from the Python reference)."""
    store = journal.store
    device = store.device
    capacity = journal.capacity
    if device.native_stores:
        assert isinstance(device, PmemDevice), f"{device!r}: native stores, no persist mode"
        mode = device.detection.region_mode
        return _commit.Committer(
            store.view, journal.header_offset, journal.log_offset, capacity, mode
        )
    return _commit.Committer(
        store.view,
        journal.header_offset,
        journal.log_offset,
        capacity,
        "callback",
        store.write,
        store.drain,
    )
