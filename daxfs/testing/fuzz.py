"""The corrupted-image fuzzer: corrupt an image, use it as a user would, classify.

Theory of operation
-------------------
Each *case* takes a base image (daxfs.testing.corrupt: the clean one, or the
one with a transaction to replay), corrupts one structure -- superblock,
journal, bitmap, inode record, inline extent, B+tree node, directory entry,
xattr block, value or pointer, or random bits of a metadata block -- with
its checksum left broken or recomputed, and runs these steps on it, each in a forked child with a
timeout (so that a hang or a crash of the interpreter is seen, not suffered)::

    mount   mount a copy read-write (recovery runs) and walk it: every name
            looked up, every file read, every link read, every extended
            attribute listed and read; then fs.walk must
            end; unmount
    cli     on another copy: ``daxfs tree`` and ``daxfs cp -r IMAGE:/ DEST``
            through the CLI's main(); cp must write nothing outside DEST
    fsck    check only
    repair  fsck --repair
    refsck  check only, after the repair
    reuse   mount, walk, then write: create, write, mkdir, rename, unlink;
            unmount and fsck

A share of the cases (``NEVER_SHARE``, drawn from the seed and the case
number) runs every step with ``dax="never"``: the image is reached as a block
device through daxfs.block.cache.BlockCache (the CLI with ``--dax never``),
where a damaged image must be as safe as on pmem.  Of those, a share
(``BOUNDED_SHARE``) mounts it with ``cache_size`` (mount and reuse steps): the
lazily loaded cache of daxfs.pagecache.bounded, whose loads follow offsets read
from the damaged media.  On those mounts the walk reads the first MiB of every
file again every other way (``_check_other_reads``): buffered again and page by
page (the page cache's hit reader, on a bounded mount), and ``direct=True``
(aligned chunks, a logical block again -- the C lean read on io_uring -- and a
``submit_read``, the device's C path); a read that differs is ``wrong``.

Outcomes, worst first (an image counts once, with its worst outcome)::

    crash        a step died of a signal (interpreter death)
    hang         a step outlived its timeout (killed)
    escape       cp wrote outside its destination
    wrong        a non-OSError exception, an OSError with an errno that
                 makes no sense for the step (EUCLEAN and EIO do), or the
                 CLI's internal-error exit (70); ENOENT for a name just listed
                 is wrong when checksums are broken (they must catch it), and
                 on a crafted image (checksums recomputed) is what
                 docs/GUARANTEES.md allows until repair, if fsck finds it
    silent       checksums left broken, and the walk read something other
                 than the base image showed (a name, a size, file bytes)
                 without an error, where the corruption touched no file data:
                 a checksum should have caught it
    worse        the repair made it worse: it said clean and a second fsck
                 finds problems, or finds more than the repair left; or
                 mount, walk or write fails after a clean repair; or after it
                 a file the corruption did not touch reads differently
    missed       fsck said clean although mount or the walk met damage (not
                 counted as a failure: a report for the fsck developer)
    refused      every failure was a clean OSError (EUCLEAN, EIO, ...)
    fine         nothing failed

Every case is reproducible from (seed, case number): ``python -m
daxfs.testing.fuzz --seed S --case N`` runs it alone and prints each step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import hashlib
import importlib
import io
import os
import random
import shutil
import stat as st
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, cast

from daxfs.fs.direct import aligned_buffer
from daxfs.fs.fsck import fsck
from daxfs.fs.mount import mount
from daxfs.testing.child import StepResult, disk_usage, run_in_child
from daxfs.testing.corrupt import STRUCTURES, Mutation, corrupt
from daxfs.testing.images import Base, Inventory, base_images
from daxfs.testing.images import inventory as take_inventory

if TYPE_CHECKING:
    from daxfs.fs.file import File
    from daxfs.fs.filesystem import FileSystem

#: outcomes, worst first
OUTCOMES = ("crash", "hang", "escape", "wrong", "silent", "worse", "missed", "refused", "fine")
BAD = frozenset({"crash", "hang", "escape", "wrong", "silent", "worse"})
#: errnos a step may fail with on a damaged image
ALLOWED = {
    "mount": {errno.EUCLEAN, errno.EIO, errno.EROFS, errno.EOPNOTSUPP},
    "walk": {errno.EUCLEAN, errno.EIO},
    "fsck": {errno.EUCLEAN, errno.EIO},
    "reuse": {errno.EUCLEAN, errno.EIO, errno.EROFS, errno.ENOSPC, errno.EOPNOTSUPP},
}
WALK_LIMIT = 20_000  # names a walk visits at most (the base image has about 330)
READ_LIMIT = 32 << 20  # bytes of a file the walk reads (a crafted size may be 2^56)
OTHER_READ_LIMIT = 1 << 20  # of them, read again every other way on a block mount
DIRECT_TIMEOUT = 10.0  # seconds a submit_read of the walk may take (else: wrong)
COPY_LIMIT = 256 << 20  # disk a copy of the image may take (the base image holds ~3 MiB)
API_WALK_LIMIT = 100_000  # entries fs.walk may yield before it counts as running away
Facts = list[Any]  # what a walk saw of one path (JSON-able)
REUSE_BIG_AT, REUSE_BIG = 1 << 20, 512 << 10  # reuse's aligned overwrite (copy-on-write)
NEVER_SHARE = 0.25  # of the cases run through the block layer (dax="never")
BOUNDED_SHARE = 0.5  # of those, mounted with cache_size=BOUNDED_CACHE (daxfs.pagecache)
BOUNDED_CACHE = "64K"


# --------------------------------------------------------------------------- the steps


def walk(fs: FileSystem) -> tuple[dict[str, Facts], list[dict[str, Any]]]:
    """Every path with what a user sees of it, and the errors met on the way.

    Each directory is entered once (by inode), so a cycle cannot trap it; at
    most WALK_LIMIT names.  Errors other than OSError propagate.
    """
    facts: dict[str, Facts] = {}
    errors: list[dict[str, Any]] = []
    answered: dict[str, os.stat_result] = {}
    stack = ["/"]
    entered: set[int] = set()
    while stack and len(facts) < WALK_LIMIT:
        path = stack.pop()
        try:
            s = answered[path] = fs.lstat(path)
            kind = st.S_IFMT(s.st_mode)
            if st.S_ISDIR(s.st_mode):
                names = sorted(fs.listdir(path))
                facts[path] = ["dir", kind, st.S_IMODE(s.st_mode), s.st_nlink, names]
                facts[path].append(_xattrs(fs, path))
                if s.st_ino not in entered:
                    entered.add(s.st_ino)
                    stack.extend(path.rstrip("/") + "/" + n for n in names)
            elif st.S_ISLNK(s.st_mode):
                facts[path] = ["link", kind, s.st_nlink, fs.readlink(path)]
            else:
                digest, got = _read_hash(fs, path, min(s.st_size, READ_LIMIT))
                facts[path] = ["file", kind, st.S_IMODE(s.st_mode), s.st_nlink, s.st_size, digest]
                facts[path].append(_xattrs(fs, path))
                if got != min(s.st_size, READ_LIMIT):
                    errors.append(
                        {"path": path, "errno": None, "message": f"read {got} of {s.st_size}"}
                    )
                elif fs.direct is not None:  # a block mount: the other read paths agree
                    _check_other_reads(fs, path, min(s.st_size, OTHER_READ_LIMIT), errors)
        except OSError as exc:
            facts[path] = ["error", exc.errno]
            errors.append({"path": path, "errno": exc.errno, "message": str(exc)[:200]})
    _check_stat_path(fs, answered, errors)
    return facts, errors


def _check_other_reads(fs: FileSystem, path: str, limit: int, errors: list[dict[str, Any]]) -> None:
    """On a block mount (``dax="never"``), the first ``limit`` bytes of a regular file
    read again every other way, each against the first read: buffered again (on a
    bounded mount the pages the walk just read: the page cache's hit reader), with
    ``preadinto`` of one page at a time (hits, one page each), and with
    ``direct=True``: ``preadinto`` of aligned chunks, each chunk's first logical
    block read again (its extent cached: on io_uring the C lean read,
    ``_direct.LeanRead``), and ``submit_read`` of the first chunk (on io_uring the
    device's C path, ``_uring.BioRing``).  A difference is an error with no errno
    (wrong); an OSError is recorded with its errno, as the walk's are."""
    try:
        with cast("File", fs.open(path, "rb", buffering=0)) as f:
            first = f.pread(limit, 0)
            if len(first) != limit:
                message = f"buffered read of {limit} bytes gave {len(first)}"
                errors.append({"path": path, "errno": None, "message": message})
                return
            page = bytearray(4096)
            for pos in range(0, limit, 4096):
                n = f.preadinto(page, pos)
                if page[:n] != first[pos : pos + 4096]:
                    _read_differs(errors, path, "buffered preadinto", pos)
                    return
        align = 4096
        with cast("File", fs.open(path, "rb", buffering=0, direct=True)) as d:
            chunk = 64 << 10
            buf = aligned_buffer(chunk)
            one = aligned_buffer(512)
            for pos in range(0, limit, chunk):
                n = min(chunk, -(-(limit - pos) // align) * align)
                got = d.preadinto(memoryview(buf)[:n], pos)
                if buf[: min(got, limit - pos)] != first[pos : pos + min(n, limit - pos)]:
                    _read_differs(errors, path, "direct preadinto", pos)
                    return
                got = d.preadinto(one, pos)
                if one[: min(got, limit - pos)] != first[pos : pos + min(512, limit - pos)]:
                    _read_differs(errors, path, "direct re-read", pos)
                    return
            n = min(chunk, -(-limit // align) * align)
            if n:
                got = d.submit_read(0, memoryview(buf)[:n]).result(DIRECT_TIMEOUT)
                if buf[: min(got, limit)] != first[: min(n, limit)]:
                    _read_differs(errors, path, "direct submit_read", 0)
    except OSError as exc:
        errors.append({"path": path, "errno": exc.errno, "message": str(exc)[:200]})


def _read_differs(errors: list[dict[str, Any]], path: str, how: str, pos: int) -> None:
    message = f"{how} at {pos} differs from the buffered read"
    errors.append({"path": path, "errno": None, "message": message})


def _xattrs(fs: FileSystem, path: str) -> list[list[str]]:
    """[name, sha256 of the value (16 hex digits)] of each extended attribute of ``path``."""
    out = []
    for name in sorted(fs.listxattr(path, follow_symlinks=False)):
        value = fs.getxattr(path, name, follow_symlinks=False)
        out.append([name, hashlib.sha256(value).hexdigest()[:16]])
    return out


def _check_stat_path(
    fs: FileSystem, answered: dict[str, os.stat_result], errors: list[dict[str, Any]]
) -> None:
    """Each lstat answered above (by stat's C path, daxfs/fs/_stat.c, where it could)
    against the walk's answer for the same path (the C path off, the path cache empty):
    a difference is an error with no errno, which classify counts as wrong.

    Then the same lstats again through the C path with a bucket array over every
    directory index (``StatPath.fence_min`` lowered to 1: the image's directories are
    small, and an index of 4096 names or more is probed through one), each against
    the walk's answer: bucket arrays built over indexes of damaged leaves.
    """
    fast, fs._fast = fs._fast, None
    fs._forget_paths()
    walked: dict[str, os.stat_result | OSError] = {}
    try:
        for path in answered:
            walked[path] = _lstat(fs, path)
    finally:
        fs._fast = fast
        fs._forget_paths()
    _compare("lstat", answered, walked, errors)
    if fast is None:
        return
    fence_min, fast.fence_min = fast.fence_min, 1
    try:
        again = {path: _lstat(fs, path) for path in answered}
    finally:
        fast.fence_min = fence_min
        fs._forget_paths()
    _compare("lstat through bucket arrays", again, walked, errors)


def _lstat(fs: FileSystem, path: str) -> os.stat_result | OSError:
    try:
        return fs.lstat(path)
    except OSError as exc:
        return exc


def _compare(
    what: str,
    answered: dict[str, os.stat_result] | dict[str, os.stat_result | OSError],
    walked: dict[str, os.stat_result | OSError],
    errors: list[dict[str, Any]],
) -> None:
    """An error (no errno: wrong) for each path whose answer is not the walk's (an
    OSError matches an OSError of the same errno)."""
    for path, got in answered.items():
        want = walked[path]
        if isinstance(got, OSError) and isinstance(want, OSError):
            same = got.errno == want.errno
        else:
            same = got == want
        if not same:
            shown = tuple(got) if isinstance(got, os.stat_result) else repr(got)
            message = f"{what} answered {shown}, the walk {want!r}"
            errors.append({"path": path, "errno": None, "message": message[:200]})


def _read_hash(fs: FileSystem, path: str, limit: int) -> tuple[str, int]:
    """sha256 (16 hex digits) of the first ``limit`` bytes of a file, read in chunks."""
    h = hashlib.sha256()
    got = 0
    with cast("File", fs.open(path, "rb", buffering=0)) as f:
        while got < limit:
            chunk = f.read(min(1 << 20, limit - got))
            if not chunk:
                break
            h.update(chunk)
            got += len(chunk)
    return h.hexdigest()[:16], got


def step_mount(image: str, dax: str = "inode", cache_size: str | None = None) -> dict[str, Any]:
    """Mount, walk everything, then ``fs.walk`` (the API's own walk) must end."""
    fs = mount(image, dax=dax, cache_size=cache_size)
    try:
        facts, errors = walk(fs)
        names = 0
        for _, dirs, files in fs.walk("/"):
            names += len(dirs) + len(files)
            if names > API_WALK_LIMIT:
                message = f"fs.walk yielded more than {API_WALK_LIMIT} names (a cycle?)"
                errors.append({"path": "/", "errno": None, "message": message})
                break
    finally:
        fs.unmount()
    return {"facts": facts, "errors": errors}


def step_cli(image: str, sandbox: str, dax: str = "inode") -> dict[str, Any]:
    """``daxfs tree`` and ``daxfs cp -r`` through main(); what cp wrote, and where."""
    main = _cli_main()

    out: dict[str, Any] = {}
    dest = os.path.join(sandbox, "inside", "dest")
    os.makedirs(os.path.dirname(dest))
    for name, argv in (
        ("tree", ["tree", "--dax", dax, image]),
        ("cp", ["cp", "--dax", dax, "-r", f"{image}:/", dest]),
    ):
        err = io.StringIO()
        with (
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(err),
        ):
            code = main(argv)
        out[name] = {"code": code, "stderr": err.getvalue().strip().splitlines()[-1:]}
    out["outside"] = _outside(sandbox, dest)
    return out


def _outside(sandbox: str, dest: str, limit: int = 10) -> list[str]:
    """Paths under ``sandbox`` that are not ``dest``, its parent or inside ``dest``.

    Iterative and bounded (a copy of a cyclic image may nest deeply), never
    following symbolic links.
    """
    found: list[str] = []
    stack = [sandbox]
    seen = 0
    while stack and len(found) < limit and seen < 100_000:
        with os.scandir(stack.pop()) as it:
            for entry in it:
                seen += 1
                p = entry.path
                if p == dest or p.startswith(dest + "/"):
                    continue  # inside the destination: anything goes
                if p != os.path.dirname(dest):
                    found.append(os.path.relpath(p, sandbox))
                if entry.is_dir(follow_symlinks=False):
                    stack.append(p)
    return found


def _cli_main() -> Callable[[list[str]], int]:
    """The CLI's ``main``.  The fuzzer runs the CLI as a program, the way a user does;
    the CLI is the layer above this one, so it is looked up by name in the child
    that runs it, not imported by this module (tests/test_layers.py)."""
    module = importlib.import_module("daxfs.cli")
    return cast("Callable[[list[str]], int]", module.main)


def step_fsck(image: str, repair: bool = False, dax: str = "inode") -> dict[str, Any]:
    report = fsck(image, repair=repair, dax=dax)
    left = [str(p) for p in report.problems if not p.repaired]
    return {
        "clean": report.clean,
        "complete": report.complete,
        "left": len(left),
        "found": len(report.problems),
        "problems": left[:6],
    }


def step_reuse(image: str, dax: str = "inode", cache_size: str | None = None) -> dict[str, Any]:
    """Mount, walk, write; unmount and fsck."""
    fs = mount(image, dax=dax, cache_size=cache_size)
    try:
        facts, errors = walk(fs)
        with cast("File", fs.open("/fuzz-new", "wb+", buffering=0)) as f:
            f.write(b"N" * 100_000)
            f.pwrite(b"M" * 5000, 200_000)
            f.pread(1, 0)  # the written extent cached: the next pwrite is a small overwrite,
            f.pwrite(b"O" * 100, 50)  # the C commit's case (daxfs/fs/_commit.c) on a pmem image
            f.pwrite(b"B" * REUSE_BIG, REUSE_BIG_AT)  # whole blocks: one new extent
            f.pread(1, REUSE_BIG_AT)  # cached: the next pwrite is an aligned overwrite inside
            f.pwrite(b"C" * REUSE_BIG, REUSE_BIG_AT)  # it, Allocator.move (DataPath._cow_blocks)
        fs.mkdir("/fuzz-dir")
        fs.rename("/fuzz-new", "/fuzz-dir/moved")
        with fs.open("/fuzz-dir/moved", "rb") as f:
            back = f.read()
        expect = b"N" * 50 + b"O" * 100 + b"N" * 99_850
        if (
            back[:100_000] != expect
            or back[200_000:205_000] != b"M" * 5000
            or back[REUSE_BIG_AT:] != b"C" * REUSE_BIG
        ):
            errors.append({"path": "/fuzz-dir/moved", "errno": None, "message": "wrote != read"})
        fs.unlink("/fuzz-dir/moved")
        fs.rmdir("/fuzz-dir")
    finally:
        fs.unmount()
    after = step_fsck(image, dax=dax)
    return {"facts": facts, "errors": errors, "fsck": after}


# --------------------------------------------------------------------------- a case


@dataclasses.dataclass
class Case:
    """One corrupted image, the results of its steps, and the verdict."""

    number: int
    mutation: Mutation
    base: str
    steps: dict[str, StepResult] = dataclasses.field(default_factory=dict)
    findings: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (outcome, why)
    #: how every step reached the image: "inode" (DAX) or "never" (BlockCache)
    dax: str = "inode"
    #: with dax="never": the mount and reuse steps' cache_size (None: the whole device)
    cache_size: str | None = None

    @property
    def outcome(self) -> str:
        found = {o for o, _ in self.findings}
        return next((o for o in OUTCOMES if o in found), "fine")

    @property
    def mode(self) -> str:
        return "resealed" if self.mutation.sealed else "broken"


class Fuzzer:
    """Corrupted images, one case after another (deterministic in the seed)."""

    def __init__(
        self,
        seed: int,
        *,
        timeout: float = 10.0,
        workdir: str | None = None,
        kinds: Iterable[tuple[str, bool]] | None = None,
        never: float = NEVER_SHARE,
        bounded: float = BOUNDED_SHARE,
    ) -> None:
        self.seed = seed
        #: the share of cases whose steps run with dax="never" (through BlockCache)
        self.never = never
        #: the share of those mounted with cache_size (daxfs.pagecache.bounded)
        self.bounded = bounded
        #: (structure, resealed) of each case in turn: all of them, or the ones asked for
        self.kinds = (
            list(kinds)
            if kinds is not None
            else [(s, sealed) for sealed in (False, True) for s in STRUCTURES]
        )
        self.timeout = timeout
        self.workdir = workdir or tempfile.mkdtemp(prefix="daxfs-fuzz-", dir=_scratch())
        self._own_workdir = workdir is None
        self.clean, self.journal, self.inventory = _bases()

    def close(self) -> None:
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def plan(self, number: int) -> tuple[str, bool]:
        """Structure and mode of case ``number``: every kind in turn."""
        return self.kinds[number % len(self.kinds)]

    def run_case(self, number: int) -> Case:
        structure, sealed = self.plan(number)
        rng = random.Random(f"{self.seed}:{number}")
        base = self.journal if structure == "journal" and rng.random() < 0.6 else self.clean
        image, mutation = corrupt(
            structure, self.seed * 1_000_003 + number, base.image, self.inventory, sealed
        )
        dax = self.dax(number)
        return self.run_image(number, image, mutation, base, dax, self.cache_size(number, dax))

    def dax(self, number: int) -> str:
        """How case ``number`` reaches its image: "never" for a share ``never`` of the
        cases (drawn from its own generator: the cases' corruptions stay as they were)."""
        draw = random.Random(f"{self.seed}:{number}:dax").random()
        return "never" if draw < self.never else "inode"

    def cache_size(self, number: int, dax: str) -> str | None:
        """The cache_size of case ``number``'s mounts: BOUNDED_CACHE for a share
        ``bounded`` of the dax="never" cases (its own generator, as ``dax``)."""
        draw = random.Random(f"{self.seed}:{number}:bounded").random()
        return BOUNDED_CACHE if dax == "never" and draw < self.bounded else None

    def run_image(
        self,
        number: int,
        image: bytes,
        mutation: Mutation,
        base: Base,
        dax: str = "inode",
        cache_size: str | None = None,
    ) -> Case:
        """Run the steps on ``image`` (``base`` corrupted by ``mutation``) and classify;
        ``dax="never"`` runs them through the block layer (mounted with ``cache_size``
        if given)."""
        case = Case(number, mutation, base.name, dax=dax, cache_size=cache_size)
        work = os.path.join(self.workdir, f"case{number}")
        os.makedirs(work, exist_ok=True)
        try:
            self._steps(case, image, work, dax, cache_size)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        classify(case, base, self.inventory)
        return case

    def _steps(
        self, case: Case, image: bytes, work: str, dax: str, cache_size: str | None = None
    ) -> None:
        paths = {}
        for name in ("mount", "cli", "main"):
            paths[name] = os.path.join(work, f"{name}.img")
            with open(paths[name], "wb") as f:
                f.write(image)
        sandbox = os.path.join(work, "sandbox")
        os.makedirs(sandbox)
        t = self.timeout
        steps: list[tuple[str, Callable[[], dict[str, Any]]]] = [
            ("mount", lambda: step_mount(paths["mount"], dax, cache_size)),
            ("cli", lambda: step_cli(paths["cli"], sandbox, dax)),
            ("fsck", lambda: step_fsck(paths["main"], dax=dax)),
            ("repair", lambda: step_fsck(paths["main"], repair=True, dax=dax)),
            ("refsck", lambda: step_fsck(paths["main"], dax=dax)),
            ("reuse", lambda: step_reuse(paths["main"], dax, cache_size)),
        ]

        def runaway() -> str | None:
            used = disk_usage(sandbox)
            if used > COPY_LIMIT:
                return f"the copy took {used >> 20} MiB of disk: runs away (the image holds ~3)"
            return None

        for name, fn in steps:
            case.steps[name] = run_in_child(name, fn, t, runaway if name == "cli" else None)


@functools.cache
def _bases() -> tuple[Base, Base, Inventory]:
    """The base images and the clean one's inventory (deterministic: built once)."""
    clean, journal = base_images()
    return clean, journal, take_inventory(clean.image)


# --------------------------------------------------------------------------- verdicts


def _comparable(facts: Facts, with_nlink: bool = True) -> tuple[Any, ...]:
    """The facts a corruption must not change silently (nlink optional)."""
    if facts[0] == "dir":
        return ("dir", facts[1], facts[2], facts[3] if with_nlink else None, tuple(facts[4]))
    if facts[0] == "link":
        return ("link", facts[1], facts[2] if with_nlink else None, facts[3])
    if facts[0] == "file":
        return ("file", facts[1], facts[2], facts[3] if with_nlink else None, facts[4], facts[5])
    return tuple(facts)


def base_facts(base: Base) -> list[dict[str, Facts]]:
    """The base image's allowed snapshots in the walk's own format."""
    out = []
    for snap in base.allowed:
        facts: dict[str, Facts] = {}
        for path, v in snap.items():
            fmt, mode, nlink = v[0], v[1], v[2]
            if st.S_ISDIR(cast(int, fmt)):
                facts[path] = ["dir", fmt, mode, nlink, list(cast(tuple[str, ...], v[3]))]
            elif st.S_ISLNK(cast(int, fmt)):
                facts[path] = ["link", fmt, nlink, v[3]]
            else:
                facts[path] = ["file", fmt, mode, nlink, v[3], v[5]]
        out.append(facts)
    return out


_BASE_FACTS: dict[int, list[dict[str, Facts]]] = {}


def classify(case: Case, base: Base, inv: Inventory) -> None:
    """Fill ``case.findings`` from its steps (see the module docstring)."""
    key = id(base)
    if key not in _BASE_FACTS:
        _BASE_FACTS[key] = base_facts(base)
    allowed = _BASE_FACTS[key]
    add = case.findings.append
    for name, r in case.steps.items():
        if r.status in ("hang", "crash"):
            add((r.status, f"{name}: {r.describe()}"))
        elif r.status == "error":
            ok_errnos = ALLOWED.get(name, ALLOWED["fsck"])
            if not r.data.get("oserror") or r.data.get("errno") not in ok_errnos:
                add(("wrong", f"{name}: {r.describe()}"))
            else:
                add(("refused", f"{name}: {r.describe()}"))
    fsck_r = case.steps.get("fsck")
    fsck_found = fsck_r is not None and fsck_r.ok and not fsck_r.data["clean"]
    for name in ("mount", "reuse"):
        walked = case.steps.get(name)
        if walked is not None and walked.ok:
            for e in walked.data["errors"]:
                where = f"{name} walk: {e['path']}: errno {e['errno']}: {e['message']}"
                if e["errno"] in ALLOWED["walk"]:
                    add(("refused", where))
                elif e["errno"] == errno.ENOENT and case.mutation.sealed:
                    # a listed name not found: what a crafted image may do until fsck
                    # --repair, provided fsck finds it (docs/GUARANTEES.md)
                    add(("refused", where) if fsck_found else ("missed", where))
                else:
                    add(("wrong", where))
    cli = case.steps.get("cli")
    if cli is not None and cli.ok:
        for tool in ("tree", "cp"):
            if cli.data[tool]["code"] not in (0, 1):
                add(
                    (
                        "wrong",
                        f"cli {tool}: exit {cli.data[tool]['code']}: {cli.data[tool]['stderr']}",
                    )
                )
        if cli.data["outside"]:
            add(("escape", f"cli cp wrote outside its destination: {cli.data['outside']}"))
    _silent(case, allowed, inv)
    _worse(case, allowed, inv)
    _missed(case)
    if not case.findings:
        add(("fine", ""))


def _differs(path: str, seen: Facts, allowed: list[dict[str, Facts]], nlink: bool) -> bool:
    if seen[0] == "error":
        return False
    options = [a[path] for a in allowed if path in a]
    if not options:  # a new path (lost+found, say): its parent's listing tells
        return False
    return all(_comparable(seen, nlink) != _comparable(o, nlink) for o in options)


def _silent(case: Case, allowed: list[dict[str, Facts]], inv: Inventory) -> None:
    """Checksums broken: what the walk read must be what the base showed, or an error."""
    m = case.mutation
    r = case.steps.get("mount")
    if m.sealed or r is None or not r.ok:
        return
    for path, seen in r.data["facts"].items():
        if inv.data_touched(path, m.touched):
            continue
        if _differs(path, seen, allowed, nlink=True):
            want = next((a[path] for a in allowed if path in a), None)
            case.findings.append(("silent", f"mount walk: {path}: {seen} (base: {want})"))
            return


def _worse(case: Case, allowed: list[dict[str, Facts]], inv: Inventory) -> None:
    repair, refsck, reuse = (case.steps.get(s) for s in ("repair", "refsck", "reuse"))
    if repair is None or not repair.ok:
        return
    add = case.findings.append
    clean = repair.data["clean"]
    if refsck is not None and refsck.ok:
        if clean and not refsck.data["clean"]:
            add(("worse", f"repair said clean, fsck then: {refsck.data['problems'][:3]}"))
        elif refsck.data["left"] > repair.data["left"]:
            add(
                (
                    "worse",
                    f"fsck after repair finds {refsck.data['left']} problems, "
                    f"repair left {repair.data['left']}: {refsck.data['problems'][:3]}",
                )
            )
    if reuse is None:
        return
    if clean and not reuse.ok:
        add(("worse", f"after a clean repair, reuse: {reuse.describe()}"))
    if not reuse.ok:
        return
    if clean and reuse.data["errors"]:
        add(("worse", f"after a clean repair, the walk: {reuse.data['errors'][:2]}"))
    if clean and not reuse.data["fsck"]["clean"]:
        add(
            (
                "worse",
                f"after a clean repair and writes, fsck: {reuse.data['fsck']['problems'][:3]}",
            )
        )
    if case.mutation.global_effect:
        return
    touched = case.mutation.touched
    for path, seen in reuse.data["facts"].items():
        if (
            seen[0] in ("file", "link")
            and not inv.touched(path, touched)
            and _differs(path, seen, allowed, nlink=False)
        ):
            add(("worse", f"after repair, untouched {path} changed: {seen}"))
            return
    if clean:  # untouched files must still be there
        for path in inv.data:
            if not inv.touched(path, touched) and path not in reuse.data["facts"]:
                add(("worse", f"after a clean repair, untouched {path} is gone"))
                return


def _missed(case: Case) -> None:
    fsck_r, mount_r = case.steps.get("fsck"), case.steps.get("mount")
    if fsck_r is None or not fsck_r.ok or not fsck_r.data["clean"] or mount_r is None:
        return
    if mount_r.status == "error" or (mount_r.ok and mount_r.data["errors"]):
        case.findings.append(("missed", "fsck said clean; mount or the walk met damage"))


# --------------------------------------------------------------------------- reports


@dataclasses.dataclass
class Table:
    """Outcome counts per (structure, mode), and the bad cases."""

    counts: dict[tuple[str, str], dict[str, int]] = dataclasses.field(default_factory=dict)
    bad: list[Case] = dataclasses.field(default_factory=list)
    cases: int = 0
    #: cases run through the block layer (dax="never"), and of those with cache_size
    never: int = 0
    bounded: int = 0

    def add(self, case: Case) -> None:
        row = self.counts.setdefault((case.mutation.structure, case.mode), {})
        row[case.outcome] = row.get(case.outcome, 0) + 1
        self.cases += 1
        self.never += case.dax == "never"
        self.bounded += case.cache_size is not None
        if case.outcome in BAD:
            self.bad.append(case)

    def totals(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for row in self.counts.values():
            for k, v in row.items():
                out[k] = out.get(k, 0) + v
        return out

    def render(self) -> str:
        head = f"{'structure':12} {'checksums':9} " + " ".join(f"{o:>7}" for o in OUTCOMES)
        lines = [head + f" {'total':>7}"]
        for (structure, mode), row in sorted(self.counts.items()):
            cells = " ".join(f"{row.get(o, 0):>7}" for o in OUTCOMES)
            lines.append(f"{structure:12} {mode:9} {cells} {sum(row.values()):>7}")
        tot = self.totals()
        cells = " ".join(f"{tot.get(o, 0):>7}" for o in OUTCOMES)
        lines.append(f"{'all':12} {'':9} {cells} {sum(tot.values()):>7}")
        lines.append(
            f"{self.never} of the {self.cases} images through the block layer (dax=never), "
            f"{self.bounded} of them mounted with cache_size={BOUNDED_CACHE}"
        )
        return "\n".join(lines)


def reproducer(seed: int, case: Case) -> str:
    m = case.mutation
    worst = next((why for o, why in case.findings if o == case.outcome), "")
    label = "BAD" if case.outcome in BAD else "NOTE"
    bounded = f", cache_size={case.cache_size}" if case.cache_size else ""
    return (
        f"{label} {case.outcome}: case {case.number} [{m.structure}/{m.field}, {case.mode}, "
        f"{case.base} base, dax={case.dax}{bounded}] {m.detail} -- {worst[:300]} -- "
        f"reproduce: python -m daxfs.testing.fuzz --seed {seed} --case {case.number} "
        f"--never {int(case.dax == 'never')} --bounded {int(case.cache_size is not None)}"
    )


def fuzz(
    seed: int,
    *,
    cases: int | None = None,
    seconds: float | None = None,
    timeout: float = 10.0,
    first: int = 0,
    progress: Callable[[Case], None] | None = None,
    kinds: Iterable[tuple[str, bool]] | None = None,
    at_least: int = 0,
    never: float = NEVER_SHARE,
    bounded: float = BOUNDED_SHARE,
) -> Table:
    """Run cases ``first``, ``first + 1``, ... until ``cases`` are done or ``seconds`` pass.

    ``kinds``: the (structure, resealed) pairs to take in turn (default: all).
    ``at_least``: cases run whatever the time budget says (a slow machine still
    tries each kind once when ``at_least`` is the number of kinds).
    ``never``: the share of cases run with dax="never" (through the block layer);
    ``bounded``: the share of those mounted with cache_size (daxfs.pagecache).
    """
    deadline = None if seconds is None else time.monotonic() + seconds
    fuzzer = Fuzzer(seed, timeout=timeout, kinds=kinds, never=never, bounded=bounded)
    table = Table()
    try:
        number = first
        while (cases is None or number < first + cases) and (
            deadline is None or number < first + at_least or time.monotonic() < deadline
        ):
            case = fuzzer.run_case(number)
            table.add(case)
            if progress is not None:
                progress(case)
            number += 1
    finally:
        fuzzer.close()
    return table


def _scratch() -> str:
    return "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()


def main(argv: list[str] | None = None) -> int:
    """``python -m daxfs.testing.fuzz``: print the table; exit 1 if any case was bad."""
    import argparse
    import shlex

    parser = argparse.ArgumentParser(
        prog="python -m daxfs.testing.fuzz",
        description="Corrupt daxfs images and classify what mount, fsck, repair and the CLI do.",
    )
    parser.add_argument("--seed", type=int, default=None, help="default: random, printed")
    parser.add_argument("--seconds", type=float, default=None, help="time budget")
    parser.add_argument("--cases", type=int, default=None, help="number of cases")
    parser.add_argument("--case", type=int, default=None, help="run this one case, verbosely")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per step")
    parser.add_argument("-v", "--verbose", action="store_true", help="one line per case")
    parser.add_argument(
        "--never",
        type=float,
        default=NEVER_SHARE,
        metavar="SHARE",
        help="share of the cases run with dax=never, through the block layer "
        f"(default {NEVER_SHARE}; 0: none, 1: all)",
    )
    parser.add_argument(
        "--bounded",
        type=float,
        default=BOUNDED_SHARE,
        metavar="SHARE",
        help="share of the dax=never cases mounted with cache_size="
        f"{BOUNDED_CACHE} (default {BOUNDED_SHARE}; 0: none, 1: all)",
    )
    parser.add_argument(
        "--only",
        action="append",
        default=None,
        metavar="STRUCTURE[/MODE]",
        help=f"corrupt only this structure ({', '.join(STRUCTURES)}), optionally only with "
        "checksums 'broken' or 'resealed' (repeatable)",
    )
    args = parser.parse_args(argv)
    kinds = None
    if args.only:
        kinds = []
        for item in args.only:
            structure, _, mode = item.partition("/")
            if structure not in STRUCTURES or mode not in ("", "broken", "resealed"):
                parser.error(f"--only {item}: expected STRUCTURE[/broken|/resealed]")
            kinds += [
                (structure, sealed)
                for sealed in (False, True)
                if not mode or (mode == "resealed") == sealed
            ]
    seed = args.seed if args.seed is not None else random.randrange(1 << 31)
    shown = list(argv if argv is not None else sys.argv[1:])
    if args.seed is None:
        shown += ["--seed", str(seed)]
    print(f"$ python -m daxfs.testing.fuzz {shlex.join(shown)}", flush=True)
    if args.case is not None:
        fuzzer = Fuzzer(
            seed, timeout=args.timeout, kinds=kinds, never=args.never, bounded=args.bounded
        )
        try:
            case = fuzzer.run_case(args.case)
        finally:
            fuzzer.close()
        m = case.mutation
        print(
            f"seed {seed} case {case.number}: {m.structure}/{m.field} ({case.mode}, "
            f"{case.base} base, dax={case.dax}): {m.detail}"
        )
        for name, r in case.steps.items():
            extra = ""
            if r.ok and "clean" in r.data:
                extra = f" clean={r.data['clean']} left={r.data['left']} {r.data['problems'][:3]}"
            elif r.ok and "errors" in r.data:
                extra = f" walk errors: {r.data['errors'][:3]}"
            print(f"  {name:7} {r.status:6} {r.seconds:5.2f}s {r.describe()}{extra}")
        for outcome, why in case.findings:
            print(f"  -> {outcome}: {why}")
        return 1 if case.outcome in BAD else 0

    def show(case: Case) -> None:
        if case.outcome in BAD or case.outcome == "missed":
            print(reproducer(seed, case), flush=True)
        elif args.verbose:
            m = case.mutation
            print(
                f"{case.outcome}: case {case.number} {m.structure}/{m.field} {case.mode}: "
                f"{m.detail}",
                flush=True,
            )

    cases = args.cases if args.cases is not None or args.seconds else 64
    start = time.monotonic()
    table = fuzz(
        seed,
        cases=cases,
        seconds=args.seconds,
        timeout=args.timeout,
        progress=show,
        kinds=kinds,
        never=args.never,
        bounded=args.bounded,
    )
    print(
        f"seed {seed}: {table.cases} corrupted images in {time.monotonic() - start:.0f} s, "
        f"{args.timeout:g} s per step"
    )
    print(table.render())
    return 1 if table.bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
