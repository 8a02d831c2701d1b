"""The commands that change the names in an image: ``mkdir``, ``rm``, ``mv``;
and ``chattr``, which changes a file's DAX flag.

As their coreutils namesakes: ``mkdir -p`` makes parents and accepts what
exists; ``rm`` refuses directories without ``-r`` and, with ``-f``, ignores
what does not exist; ``rm -r`` never removes the root; ``mv SRC DST`` renames
(atomically, replacing DST as rename(2) does) and ``mv SRC... DIR`` moves
into a directory.  mv works within one image; between images or to the host
it refuses (EXDEV) and says to use cp and rm.  Each operand is one operation,
durable when done; the first error ends the command.

``rm -r`` trusts nothing it lists: scandir checks every name (an entry named
".." would otherwise lead it up to the root), and a directory met a second
time (a cycle, or a directory with two names) ends it with EUCLEAN before
anything in the directory listing it is removed.  It keeps its own stack: no recursion.

``chattr +x|-x IMAGE:/PATH...`` sets or clears the per-inode DAX flag, as
chattr(1)'s ``x`` attribute (FS_XFLAG_DAX; daxfs.fs.daxflag); ``daxfs stat``
shows it.
"""

from __future__ import annotations

import argparse
import posixpath
import stat as st
from typing import Any

from daxfs.cli.common import Mounts, Operand, add_parser, add_persist_option, image_operand, naming
from daxfs.errors import Busy, CrossDevice, IsADirectory, NotADirectory
from daxfs.fs.filesystem import FileSystem
from daxfs.fs.scan import remove_tree


def register(sub: Any) -> None:
    p = add_parser(sub, "mkdir", "make directories in an image", "Make directories.")
    p.add_argument("paths", nargs="+", metavar="IMAGE:/DIR")
    p.add_argument(
        "-p", dest="parents", action="store_true", help="make parents; no error if it exists"
    )
    add_persist_option(p)
    p.set_defaults(run=run_mkdir)

    p = add_parser(sub, "rm", "remove files or directories of an image", "Remove files.")
    p.add_argument("paths", nargs="+", metavar="IMAGE:/PATH")
    p.add_argument(
        "-r", "-R", dest="recursive", action="store_true", help="remove directories and contents"
    )
    p.add_argument("-f", dest="force", action="store_true", help="ignore missing files")
    add_persist_option(p)
    p.set_defaults(run=run_rm)

    p = add_parser(
        sub,
        "mv",
        "rename or move files within an image",
        "Rename SRC to DST, or move SRC... into the directory DIR (within one image).",
    )
    p.add_argument("sources", nargs="+", metavar="IMAGE:/SRC")
    p.add_argument("dest", metavar="IMAGE:/DST")
    add_persist_option(p)
    p.set_defaults(run=run_mv)

    p = sub.add_parser(  # +x is an option, as chattr(1) writes it: prefix "+" too
        "chattr",
        help="set or clear the DAX flag of files of an image",
        description="+x sets the per-inode DAX flag (FS_XFLAG_DAX), -x clears it; files "
        "and directories made in a flagged directory inherit it.",
        prefix_chars="-+",
    )
    change = p.add_mutually_exclusive_group(required=True)
    change.add_argument(
        "+x", dest="dax_flag", action="store_const", const=True, help="set the DAX flag"
    )
    change.add_argument(
        "-x", dest="dax_flag", action="store_const", const=False, help="clear the DAX flag"
    )
    p.add_argument("paths", nargs="+", metavar="IMAGE:/PATH")
    add_persist_option(p)
    p.set_defaults(run=run_chattr)


# -- mkdir ------------------------------------------------------------------------------


def run_mkdir(args: argparse.Namespace) -> int:
    ops = [image_operand(text, "mkdir") for text in args.paths]

    def make(fs: FileSystem, op: Operand) -> None:
        if args.parents:
            fs.makedirs(op.path, exist_ok=True)
        else:
            fs.mkdir(op.path)

    with Mounts.from_args(args) as mounts:
        mounts.each(ops, make)
    return 0


# -- rm ---------------------------------------------------------------------------------


def run_rm(args: argparse.Namespace) -> int:
    ops = [image_operand(text, "rm") for text in args.paths]
    with Mounts.from_args(args) as mounts:
        mounts.each(
            ops, lambda fs, op: remove(fs, op.path, recursive=args.recursive, force=args.force)
        )
    return 0


def remove(fs: FileSystem, path: str, *, recursive: bool, force: bool) -> None:
    """Remove ``path`` (a directory and all below it if ``recursive``).

    Raises:
        FileNotFoundError (unless ``force``), IsADirectoryError (a directory
        without ``recursive``), Busy (the root), and what unlink/rmdir raise.
        Partial effect: a recursive removal that fails leaves what it had
        not yet removed.
    """
    try:
        info = fs.lstat(path)
    except FileNotFoundError:
        if force:
            return
        raise
    if not st.S_ISDIR(info.st_mode):
        fs.unlink(path)
        return
    if not recursive:
        raise IsADirectory(f"is a directory (use -r to remove it): {path}", path)
    if info.st_ino == fs.stat("/").st_ino:
        raise Busy(f"refusing to remove the root directory: {path}", path)
    remove_tree(fs, path)


# -- mv ---------------------------------------------------------------------------------


def run_mv(args: argparse.Namespace) -> int:
    sources = [image_operand(text, "mv") for text in args.sources]
    dest = image_operand(args.dest, "mv")
    with Mounts.from_args(args) as mounts:
        assert dest.image is not None
        for src in sources:
            assert src.image is not None
            if mounts.key(src.image) != mounts.key(dest.image):
                raise CrossDevice(
                    f"cannot move {src.text} to {dest.text}: not on the same image "
                    "(use cp, then rm)",
                    src.text,
                )
        fs = mounts.get(dest.image)
        with naming(dest.image):
            into = fs.isdir(dest.path)
            if len(sources) > 1 and not into:
                raise NotADirectory(f"target is not a directory: {dest.path}", dest.path)
            for src in sources:
                fs.rename(src.path, _target(src, dest, into))
    return 0


def _target(src: Operand, dest: Operand, into: bool) -> str:
    """Where ``src`` goes: ``dest`` itself, or ``dest/<name of src>`` if a directory."""
    if not into:
        return dest.path
    name = posixpath.basename(src.path.rstrip("/"))
    return posixpath.join(dest.path, name) if name else dest.path


# -- chattr -----------------------------------------------------------------------------


def run_chattr(args: argparse.Namespace) -> int:
    ops = [image_operand(text, "chattr") for text in args.paths]
    with Mounts.from_args(args) as mounts:
        mounts.each(ops, lambda fs, op: fs.set_dax(op.path, args.dax_flag))
    return 0
