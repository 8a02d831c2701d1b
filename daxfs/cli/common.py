"""What the filesystem commands share: operands, sizes, mounts, progress bars.

Operands.  A file inside an image is written ``IMAGE:/path``; the operand is
split at the first ':' that is followed by '/', so ``a.img:/x:/y`` is the file
``/x:/y`` of ``a.img``.  ``IMAGE:`` alone is the image's root.  Anything else
is a host path (for cp), or, for the commands that only look at an image (ls,
tree, df), a bare ``IMAGE`` that means its root.  A host path containing ":/"
cannot be named; that is the price of the notation (scp pays it too).

Mounts.  ``Mounts`` mounts each image a command names once and unmounts every
one when the command ends, on success or failure.  An image is known by its
identity, (st_dev, st_ino) of the file (st_rdev of a device), never by its
path: a hard link, a symbolic link or another spelling of a mounted image is
that image, so a command never mounts it twice, and ``holds`` tells a writer
that the file it is about to write is an image it has mounted (writing there
would change, or truncating it would unmap, what the mount is using: the
command would die of SIGBUS and the image would be lost).  A mount failure
is one error naming the image.

Names.  A name read from an image is untrusted: daxfs.fs.scan's
``check_entry_name`` refuses one that is empty, ".", "..", holds "/" or NUL,
or is longer than 255 bytes (EUCLEAN), and every command checks each name
before it joins it to a path; ``printable`` shows a name or a link target
without the control characters a terminal would obey.

Errors.  ``naming(image)`` turns an error about ``/a`` inside an image into one
about ``IMAGE:/a``, so a command over two images says which one it meant.

Progress.  ``ProgressBar`` draws rich progress bars on stderr, only when stderr
is a terminal (and --no-progress was not given), and only once the work has
taken a moment, so quick commands never flash a bar.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import stat as st
import sys
import time
from collections.abc import Callable, Hashable, Iterator
from fractions import Fraction
from types import TracebackType
from typing import Any, Self

from daxfs.errors import DaxfsError, InvalidArgument
from daxfs.fs.devices import DAX_MODES
from daxfs.fs.filesystem import FileSystem
from daxfs.fs.mount import mount

PERSIST_CHOICES = ("auto", "cpu", "msync")
CHUNK = 4 << 20  # bytes per read or write when streaming file data

# -- operands ---------------------------------------------------------------------------


class Operand:
    """A command-line operand: a path inside an image, or a host path."""

    __slots__ = ("image", "path", "text")

    def __init__(self, text: str, image: str | None, path: str) -> None:
        self.text = text  # as the user wrote it
        self.image = image  # None: a host path
        self.path = path  # inside the image (absolute), or the host path

    def __repr__(self) -> str:
        return f"Operand({self.text!r}, image={self.image!r}, path={self.path!r})"

    def show(self, path: str | None = None) -> str:
        """How to name ``path`` (default: this operand's) in messages."""
        path = self.path if path is None else path
        return path if self.image is None else f"{self.image}:{path}"


def parse_operand(text: str) -> Operand:
    """Split ``IMAGE:/path`` (or ``IMAGE:``); anything else is a host path.

    Raises:
        InvalidArgument: an empty image name (``:/path``).
    """
    match = re.search(r":(?=/)", text)
    if match is not None:
        image, path = text[: match.start()], text[match.end() :]
    elif text.endswith(":") and len(text) > 1:
        image, path = text[:-1], "/"
    else:
        return Operand(text, None, text)
    if not image:
        raise InvalidArgument(f"no image before ':' in {text!r}: write IMAGE:/path", text)
    return Operand(text, image, path)


def image_operand(text: str, command: str, *, bare_is_root: bool = False) -> Operand:
    """An operand that must be inside an image (``bare_is_root``: IMAGE means IMAGE:/).

    Raises:
        InvalidArgument: a host path where an image path is needed.
    """
    op = parse_operand(text)
    if op.image is not None:
        return op
    if bare_is_root:
        return Operand(text, text, "/")
    raise InvalidArgument(f"{command}: expected IMAGE:/path, got {text!r}", text)


# -- sizes ------------------------------------------------------------------------------

_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(?:([kmgtpe])(i?b)?|(b))?\s*", re.IGNORECASE)
_UNITS = "kmgtpe"


def parse_size(text: str) -> int:
    """Bytes from ``4096``, ``64K``, ``1G``, ``1GiB``, ``1GB``, ``1.5T`` (powers of 1024).

    Raises:
        InvalidArgument: not a size, not a whole number of bytes, or zero.
    """
    match = _SIZE.fullmatch(text)
    if match is None:
        raise InvalidArgument(
            f"invalid size {text!r}: use a number of bytes with an optional "
            "K, M, G or T suffix (1024-based), as in 64M or 1G"
        )
    number, unit = Fraction(match.group(1)), match.group(2)
    scale = 1024 ** (_UNITS.index(unit.lower()) + 1) if unit else 1
    value = number * scale
    if value.denominator != 1:
        raise InvalidArgument(f"invalid size {text!r}: not a whole number of bytes")
    if value == 0:
        raise InvalidArgument(f"invalid size {text!r}: must be positive")
    return int(value)


def human(n: int) -> str:
    """``65536`` -> ``64.0 KiB``: for reports."""
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        value /= 1024
        if value < 1024 or unit == "EiB":
            break
    return f"{value:.1f} {unit}"


def short(n: int) -> str:
    """``65536`` -> ``64K``, as ``df -h`` and ``ls -lh`` print sizes (rounded up)."""
    if n < 1024:
        return str(n)
    value = float(n)
    for unit in "KMGTPE":
        value /= 1024
        if value < 1024 or unit == "E":
            break
    if value < 10:
        tenths = math.ceil(value * 10 - 1e-9) / 10
        if tenths < 10:
            return f"{tenths:.1f}{unit}"
    return f"{math.ceil(value - 1e-9)}{unit}"


# -- parsers ----------------------------------------------------------------------------


def add_parser(
    sub: Any, name: str, summary: str, description: str, *, h_is_human: bool = False
) -> Any:
    """A subcommand parser; ``h_is_human`` frees -h for "human-readable" (help is --help)."""
    parser = sub.add_parser(name, help=summary, description=description, add_help=not h_is_human)
    if h_is_human:
        parser.add_argument("--help", action="help", help="show this help message and exit")
    return parser


def add_persist_option(parser: argparse.ArgumentParser) -> None:
    """--persist, --dax (how the image is reached: daxfs.fs.devices), --cache-size and
    --queue-depth: what ``Mounts.from_args`` reads."""
    parser.add_argument(
        "--persist",
        choices=PERSIST_CHOICES,
        default="auto",
        help="how writes reach persistence: auto (what the device needs), cpu, msync",
    )
    add_dax_option(parser)
    add_cache_size_option(parser)
    parser.add_argument(
        "--queue-depth",
        type=int,
        default=None,
        metavar="N",
        help="with --dax never on a file or a block device: I/O requests in flight "
        "(1-4096; default 8)",
    )


def add_cache_size_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cache-size",
        default=None,
        metavar="SIZE",
        help="with --dax never: bound the DRAM of file data to SIZE (65536, 64M, 1G: "
        "a page cache with LRU eviction; metadata loaded as touched), instead of "
        "caching the whole image",
    )


def add_dax_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dax",
        choices=DAX_MODES,
        default="inode",
        help="inode (default): DAX where the image can (a file, /dev/daxN.M), the block "
        "layer where not (a block device); never: always through the block layer and a "
        "DRAM cache (O_DIRECT on a file); always: DAX or fail",
    )


def add_progress_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="never draw a progress bar (drawn on stderr only when it is a terminal)",
    )


def progress_wanted(args: argparse.Namespace) -> bool:
    return not getattr(args, "no_progress", False) and sys.stderr.isatty()


# -- errors -----------------------------------------------------------------------------


@contextlib.contextmanager
def naming(image: str | None) -> Iterator[None]:
    """Name ``image`` in daxfs errors raised inside: "/a" becomes "IMAGE:/a".

    A message that ends with the path gets ``IMAGE:/path`` there; one that
    has its paths inside gets ``IMAGE: `` in front.
    """
    try:
        yield
    except DaxfsError as exc:
        name = exc.filename
        if image is None or not isinstance(name, str) or not name.startswith("/"):
            raise
        shown = f"{image}:{name}"
        text = exc.strerror or ""
        if text.endswith(name):
            raise type(exc)(text[: -len(name)] + shown, shown) from None
        # the paths are inside the message: say which image they are in
        raise type(exc)(f"{image}: {text}") from None


def with_context(exc: OSError, prefix: str) -> OSError:
    """The same error with ``prefix`` in front of its message (the errno kept)."""
    text = f"{prefix}: {exc.strerror or exc}"
    if exc.filename is not None and os.fsdecode(exc.filename) not in text:
        text += f": {os.fsdecode(exc.filename)}"
    return OSError(exc.errno, text)


# -- mounts -----------------------------------------------------------------------------


def identity(info: os.stat_result) -> tuple[int, int]:
    """What makes a file that file: (st_dev, st_ino), or the device number of a device."""
    if st.S_ISCHR(info.st_mode) or st.S_ISBLK(info.st_mode):
        return (-1, info.st_rdev)
    return (info.st_dev, info.st_ino)


class Mounts:
    """The images a command uses, each mounted once, all unmounted on exit.

    ::

        Mounts() --get(image)--> mounted (known by identity) --__exit__--> unmounted

    Invariant: ``_ids`` holds the identity of the file each mount has open
    (taken from its descriptor, so a path swapped after the mount cannot lie).
    """

    def __init__(
        self,
        persist: str = "auto",
        dax: str = "inode",
        cache_size: str | None = None,
        queue_depth: int | None = None,
    ) -> None:
        self.persist = persist
        self.dax = dax
        self.cache_size = cache_size
        self.queue_depth = queue_depth
        self._mounted: dict[Hashable, FileSystem] = {}
        self._ids: set[tuple[int, int]] = set()

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Mounts:
        """The Mounts of a command's options (add_persist_option: --persist, --dax,
        --cache-size, --queue-depth; a command without one gets the default)."""
        return cls(
            getattr(args, "persist", "auto"),
            getattr(args, "dax", "inode"),
            getattr(args, "cache_size", None),
            getattr(args, "queue_depth", None),
        )

    def each(self, ops: list[Operand], action: Callable[[FileSystem, Operand], object]) -> None:
        """``action(fs, op)`` for each image operand in order, on its image's mount, its
        errors naming the image (the first error ends the command).

        Raises:
            OSError: a mount failed, or what ``action`` raised (named).
        """
        for op in ops:
            assert op.image is not None
            fs = self.get(op.image)
            with naming(op.image):
                action(fs, op)

    def key(self, image: str) -> Hashable:
        """What identifies an image: the identity of its file (its real path if none)."""
        try:
            return identity(os.stat(image))
        except (OSError, ValueError):  # missing, NUL in the name...: mount will say
            return os.path.realpath(image)

    def get(self, image: str) -> FileSystem:
        """The mounted filesystem of ``image``, mounting it on first use.

        Raises:
            OSError: the mount failed; the message names the image.
        """
        key = self.key(image)
        fs = self._mounted.get(key)
        if fs is None:
            try:
                fs = mount(
                    image,
                    persist=self.persist,
                    dax=self.dax,
                    cache_size=self.cache_size,
                    queue_depth=self.queue_depth,
                )
            except OSError as exc:
                text = exc.strerror or str(exc)
                if text.endswith(f": {image}"):  # mount names the image: say it once, in front
                    text = text[: -len(image) - 2]
                if image in text:
                    raise
                raise OSError(exc.errno, f"cannot mount {image}: {text}") from None
            self._mounted[key] = fs
            # the file the mount has open, if it says (through a block cache: its device's)
            fd = getattr(getattr(fs.device, "bdev", fs.device), "fd", None)
            self._ids.add(identity(os.fstat(fd) if isinstance(fd, int) else os.stat(image)))
        return fs

    def holds(self, info: os.stat_result) -> bool:
        """True if the file ``info`` describes is one of the images mounted here."""
        return identity(info) in self._ids

    def is_mounted(self, path: str) -> bool:
        """True if ``path`` (a host path, links followed) is one of the images mounted here."""
        try:
            return self.holds(os.stat(path))
        except (OSError, ValueError):
            return False

    def check_not_mounted(self, info: os.stat_result, shown: str, doing: str) -> None:
        """Refuse to ``doing`` (read, write) a file that is an image mounted here.

        Raises:
            InvalidArgument: it is.
        """
        if self.holds(info):
            raise InvalidArgument(
                f"cannot {doing} {shown}: it is an image this command has mounted", shown
            )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        first: BaseException | None = None
        self._ids.clear()
        while self._mounted:
            _, fs = self._mounted.popitem()
            try:
                fs.__exit__(None, None, None)  # closes what is open, then unmounts
            except BaseException as failure:
                first = first or failure
        if first is not None and exc is None:
            raise first


# -- names ------------------------------------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def printable(text: str) -> str:
    """``text`` with control characters and undecodable bytes as '?', as ls shows names."""
    return _CONTROL.sub("?", text)


# -- progress ---------------------------------------------------------------------------


class ProgressBar:
    """Progress bars on stderr (rich), shown only when ``enabled`` and after ``delay`` s.

    ``unit`` is "bytes" (sizes and speed) or "items" (done/total).  Tasks may be
    added and advanced while the display is not yet started; it starts on the
    first update after ``delay`` seconds and is erased when the bar closes.
    A disabled bar accepts every call and does nothing.
    """

    def __init__(
        self,
        enabled: bool,
        *,
        unit: str = "items",
        delay: float = 0.3,
        console: Any = None,
    ) -> None:
        self.enabled = enabled
        self.delay = delay
        self._started = False
        self._t0 = time.monotonic()
        self._progress: Any = None
        self._phases: dict[str, int] = {}
        if enabled:
            self._progress = _make_progress(unit, console)

    def __enter__(self) -> Self:
        self._t0 = time.monotonic()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._started:
            self._progress.stop()
            self._started = False

    def add(self, description: str, total: int) -> int:
        """A new bar; returns its id (-1 when disabled)."""
        if self._progress is None:
            return -1
        task: int = self._progress.add_task(description, total=total)
        return task

    def update(self, task: int, completed: int, total: int | None = None) -> None:
        if self._progress is None or task < 0:
            return
        self._progress.update(task, completed=completed, total=total)
        self._tick()

    def advance(self, task: int, amount: int) -> None:
        if self._progress is None or task < 0:
            return
        self._progress.advance(task, amount)
        self._tick()

    def remove(self, task: int) -> None:
        if self._progress is not None and task >= 0:
            self._progress.remove_task(task)

    def callback(self, description: str) -> Callable[[int, int], None]:
        """A ``progress(done, total)`` function, as daxfs.mkfs takes."""
        task = self.add(description, 0)

        def report(done: int, total: int) -> None:
            self.update(task, done, total)

        return report

    def phases(self) -> Callable[[str, int, int], None]:
        """A ``progress(phase, done, total)`` function, as fsck takes: a bar per phase."""

        def report(phase: str, done: int, total: int) -> None:
            if phase not in self._phases:
                self._phases[phase] = self.add(phase, total)
            self.update(self._phases[phase], done, total)

        return report

    def _tick(self) -> None:
        if not self._started and time.monotonic() - self._t0 >= self.delay:
            self._progress.start()
            self._started = True


def _make_progress(unit: str, console: Any) -> Any:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns: list[Any] = [TextColumn("{task.description}"), BarColumn(), TaskProgressColumn()]
    if unit == "bytes":
        columns += [DownloadColumn(binary_units=True), TransferSpeedColumn()]
    else:
        columns.append(MofNCompleteColumn())
    columns.append(TimeRemainingColumn())
    return Progress(
        *columns,
        console=console if console is not None else Console(stderr=True),
        transient=True,
    )
