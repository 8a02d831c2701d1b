"""The commands that read an image: ``ls``, ``tree``, ``stat``, ``df``, ``cat``.

Each mounts the images its operands name (``IMAGE:/path``; for ls, tree and
df a bare ``IMAGE`` is its root), prints, and unmounts.  Output imitates the
GNU tools closely enough to be read by the same eyes: ``ls -l`` columns,
``tree``'s branches and its closing count, ``stat``'s block of fields,
``df``'s table.  Several small commands share one module because they share
their helpers (listing, modes, owners, times); each has its ``run_<name>``.

The first error ends the command (one line on stderr, exit 1); output
already printed stays.

An image is untrusted input.  Names and link targets are printed with their
control characters shown as '?' (``printable``), so a crafted name cannot
drive the terminal; every name is checked before it becomes part of a path
(scandir does it); ``tree`` keeps its own stack (no recursion, whatever the
depth) and enters each directory once, so a cycle or a directory with two
names ends it with an error instead of running forever; ``cat`` refuses to
write into an image the command has mounted (its output a link to it).
"""

from __future__ import annotations

import argparse
import datetime
import grp
import io
import os
import posixpath
import pwd
import stat as st
import sys
import time
from collections.abc import Iterator
from typing import Any, cast

from daxfs.cli.common import (
    CHUNK,
    Mounts,
    Operand,
    add_parser,
    add_persist_option,
    image_operand,
    naming,
    printable,
    short,
)
from daxfs.errors import InvalidArgument, NotADirectory
from daxfs.fs.daxflag import DaxState
from daxfs.fs.filesystem import FileSystem
from daxfs.fs.scan import enter_once


def register(sub: Any) -> None:
    _register_ls(sub)
    _register_tree(sub)
    _register_stat(sub)
    _register_df(sub)
    _register_cat(sub)


def _register_ls(sub: Any) -> None:
    p = add_parser(
        sub,
        "ls",
        "list a directory of an image",
        "List directories (or files) of images: IMAGE:/dir, or IMAGE for its root.",
        h_is_human=True,
    )
    p.add_argument("paths", nargs="+", metavar="IMAGE:/PATH")
    p.add_argument("-l", dest="long", action="store_true", help="long listing")
    p.add_argument("-a", dest="all", action="store_true", help="show . and .. and dot files")
    p.add_argument("-h", dest="human", action="store_true", help="sizes as 4.0K, 12M (with -l)")
    add_persist_option(p)
    p.set_defaults(run=run_ls)


def _register_tree(sub: Any) -> None:
    p = add_parser(
        sub,
        "tree",
        "show a directory tree of an image",
        "Show the tree under IMAGE:/dir (or IMAGE, its root), with counts.",
    )
    p.add_argument("paths", nargs="+", metavar="IMAGE:/DIR")
    p.add_argument("-a", dest="all", action="store_true", help="show dot files too")
    p.add_argument("-L", dest="level", type=int, metavar="LEVEL", help="descend at most LEVEL")
    add_persist_option(p)
    p.set_defaults(run=run_tree)


def _register_stat(sub: Any) -> None:
    p = add_parser(
        sub, "stat", "show the attributes of a file of an image", "Show file attributes."
    )
    p.add_argument("paths", nargs="+", metavar="IMAGE:/PATH")
    p.add_argument("-L", dest="follow", action="store_true", help="follow symbolic links")
    add_persist_option(p)
    p.set_defaults(run=run_stat)


def _register_df(sub: Any) -> None:
    p = add_parser(
        sub,
        "df",
        "show the space used and free in images",
        "Show size, used and free space of the daxfs on each IMAGE.",
        h_is_human=True,
    )
    p.add_argument("paths", nargs="+", metavar="IMAGE")
    p.add_argument("-h", dest="human", action="store_true", help="sizes as 64M, 1.5G")
    p.add_argument("-i", dest="inodes", action="store_true", help="inodes instead of blocks")
    add_persist_option(p)
    p.set_defaults(run=run_df)


def _register_cat(sub: Any) -> None:
    p = add_parser(sub, "cat", "print files of an image", "Write files of images to stdout.")
    p.add_argument("paths", nargs="+", metavar="IMAGE:/FILE")
    add_persist_option(p)
    p.set_defaults(run=run_cat)


# -- ls ---------------------------------------------------------------------------------

Row = tuple[str, os.stat_result, FileSystem, str]  # name shown, lstat, where, path in fs


def run_ls(args: argparse.Namespace) -> int:
    ops = [image_operand(text, "ls", bare_is_root=True) for text in args.paths]
    with Mounts.from_args(args) as mounts:
        files: list[Row] = []
        dirs: list[tuple[Operand, FileSystem]] = []
        for op in ops:
            assert op.image is not None
            fs = mounts.get(op.image)
            with naming(op.image):
                info = fs.lstat(op.path)
                if st.S_ISLNK(info.st_mode) and not args.long and fs.isdir(op.path):
                    info = fs.stat(op.path)
            if st.S_ISDIR(info.st_mode):
                dirs.append((op, fs))
            else:
                files.append((op.text, info, fs, op.path))
        _print_rows(files, args, total=False)
        for i, (op, fs) in enumerate(dirs):
            if len(ops) > 1:
                print(("\n" if files or i else "") + f"{op.text}:")
            with naming(op.image):
                _print_rows(_directory_rows(fs, op.path, args.all), args, total=args.long)
    return 0


def _directory_rows(fs: FileSystem, path: str, all_: bool) -> list[Row]:
    rows = []
    if all_:
        rows.append((".", fs.stat(path), fs, path))
        rows.append(("..", fs.stat(posixpath.join(path, "..")), fs, path))
    rows.extend(
        (entry.name, entry.stat(follow_symlinks=False), fs, entry.path)
        for entry in fs.scandir(path)
        if all_ or not entry.name.startswith(".")
    )
    rows.sort(key=lambda row: row[0])
    return rows


def _print_rows(rows: list[Row], args: argparse.Namespace, total: bool) -> None:
    if not args.long:
        for row in rows:
            print(printable(row[0]))
        return
    if total:
        print(f"total {sum(row[1].st_blocks for row in rows) // 2}")
    cells = []
    for name, s, fs, path in rows:
        shown = printable(name)
        if st.S_ISLNK(s.st_mode):
            shown += f" -> {printable(os.fsdecode(fs.readlink(path)))}"
        cells.append(
            (
                st.filemode(s.st_mode),
                str(s.st_nlink),
                _user(s.st_uid),
                _group(s.st_gid),
                short(s.st_size) if args.human else str(s.st_size),
                _ls_time(s.st_mtime_ns),
                shown,
            )
        )
    widths = [max((len(c[i]) for c in cells), default=0) for i in range(5)]
    for c in cells:
        print(
            f"{c[0]} {c[1]:>{widths[1]}} {c[2]:<{widths[2]}} {c[3]:<{widths[3]}} "
            f"{c[4]:>{widths[4]}} {c[5]} {c[6]}"
        )


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _ls_time(ns: int) -> str:
    """ "Nov 25 22:58" for the last six months, else "Nov 25  2024", as ls."""
    t = ns / 1e9
    recent = abs(time.time() - t) < 182 * 86400
    return time.strftime("%b %e %H:%M" if recent else "%b %e  %Y", time.localtime(t))


# -- tree -------------------------------------------------------------------------------


def run_tree(args: argparse.Namespace) -> int:
    ops = [image_operand(text, "tree", bare_is_root=True) for text in args.paths]
    with Mounts.from_args(args) as mounts:
        ndirs = nfiles = 0
        for op in ops:
            assert op.image is not None
            fs = mounts.get(op.image)
            with naming(op.image):
                if not fs.isdir(op.path):
                    raise NotADirectory(f"not a directory: {op.path}", op.path)
                print(printable(op.text))
                for line, is_dir in _tree_lines(fs, op.path, args):
                    print(line)
                    ndirs += is_dir
                    nfiles += not is_dir
        print(f"\n{_count(ndirs, 'directory', 'directories')}, {_count(nfiles, 'file', 'files')}")
    return 0


def _tree_lines(fs: FileSystem, top: str, args: argparse.Namespace) -> Iterator[tuple[str, bool]]:
    """The lines under ``top``, with whether each names a directory: depth first, no recursion.

    Raises:
        Corrupted: a directory met a second time (a cycle, or two names).
        and what scandir and readlink raise.
    """
    visited = {fs.stat(top).st_ino}
    stack = [(iter(_tree_entries(fs, top, args)), "", 1)]
    while stack:
        entries, prefix, depth = stack[-1]
        nxt = next(entries, None)
        if nxt is None:
            stack.pop()
            continue
        entry, last = nxt
        name = printable(entry.name)
        if entry.is_symlink():
            name += f" -> {printable(os.fsdecode(fs.readlink(entry.path)))}"
        yield prefix + ("└── " if last else "├── ") + name, _is_dir(entry)
        descend = entry.is_dir(follow_symlinks=False)
        if descend and (args.level is None or depth < args.level):
            enter_once(visited, entry.inode_number, entry.path)
            more = prefix + ("    " if last else "│   ")
            stack.append((iter(_tree_entries(fs, entry.path, args)), more, depth + 1))


def _tree_entries(fs: FileSystem, path: str, args: argparse.Namespace) -> list[tuple[Any, bool]]:
    """The entries of ``path`` that tree shows, sorted, each with whether it is the last."""
    entries = sorted(
        (e for e in fs.scandir(path) if args.all or not e.name.startswith(".")),
        key=lambda e: e.name,
    )
    return [(e, i == len(entries) - 1) for i, e in enumerate(entries)]


def _is_dir(entry: Any) -> bool:
    """A directory, or a symbolic link to one (counted as tree(1) counts it)."""
    try:
        return bool(entry.is_dir())
    except OSError:  # a loop of links, a damaged target: not a directory
        return False


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


# -- stat -------------------------------------------------------------------------------

_KINDS = {
    st.S_IFREG: "regular file",
    st.S_IFDIR: "directory",
    st.S_IFLNK: "symbolic link",
}


def run_stat(args: argparse.Namespace) -> int:
    ops = [image_operand(text, "stat") for text in args.paths]
    with Mounts.from_args(args) as mounts:
        for op in ops:
            assert op.image is not None
            fs = mounts.get(op.image)
            with naming(op.image):
                s = fs.stat(op.path) if args.follow else fs.lstat(op.path)
                name = printable(op.text)
                if st.S_ISLNK(s.st_mode):
                    name += f" -> {printable(os.fsdecode(fs.readlink(op.path)))}"
                xattrs = [
                    (n, fs.getxattr(op.path, n, follow_symlinks=args.follow))
                    for n in fs.listxattr(op.path, follow_symlinks=args.follow)
                ]
                dax = fs.get_dax(op.path, follow_symlinks=args.follow)
            kind = _KINDS.get(st.S_IFMT(s.st_mode), "unknown")
            if st.S_ISREG(s.st_mode) and s.st_size == 0:
                kind = "regular empty file"
            perm = st.S_IMODE(s.st_mode)
            print(f"  File: {name}")
            print(
                f"  Size: {s.st_size:<15} Blocks: {s.st_blocks:<10} "
                f"IO Block: {s.st_blksize:<6} {kind}"
            )
            print(f" Inode: {s.st_ino:<15} Links: {s.st_nlink}")
            print(
                f"Access: ({perm:04o}/{st.filemode(s.st_mode)})  "
                f"Uid: ({s.st_uid:>5}/{_user(s.st_uid):>8})   "
                f"Gid: ({s.st_gid:>5}/{_group(s.st_gid):>8})"
            )
            print(f"Access: {_stat_time(s.st_atime_ns)}")
            print(f"Modify: {_stat_time(s.st_mtime_ns)}")
            print(f"Change: {_stat_time(s.st_ctime_ns)}")
            for attr, value in xattrs:  # as getfattr -d: one per line, the value quoted
                print(f" Xattr: {printable(attr)}={_xattr_value(value)}")
            print(_dax_line(s, dax))
    return 0


def _dax_line(s: os.stat_result, dax: DaxState) -> str:
    """The DAX flag (FS_XFLAG_DAX, as lsattr's x) and, for a regular file, whether its
    data goes by DAX (statx's STATX_ATTR_DAX): daxfs.fs.daxflag."""
    flag = "on" if dax.flag else "off"
    if st.S_ISREG(s.st_mode):
        return f"   DAX: flag {flag}, data path {'DAX' if dax.active else 'not DAX'}"
    if st.S_ISDIR(s.st_mode):
        return f"   DAX: flag {flag} (what is made in it inherits it)"
    return "   DAX: - (a symbolic link carries no flag)"


def _xattr_value(value: bytes, limit: int = 64) -> str:
    """A value as getfattr shows it: "text" if it is printable UTF-8, else 0x and hex;
    past ``limit`` bytes cut, with the length."""
    shown = value[:limit]
    try:
        text = shown.decode()
    except UnicodeDecodeError:
        text = None
    out = f'"{text}"' if text is not None and text.isprintable() else "0x" + shown.hex()
    return out if len(value) <= limit else f"{out}... ({len(value)} bytes)"


def _stat_time(ns: int) -> str:
    when = datetime.datetime.fromtimestamp(ns // 10**9).astimezone()
    return f"{when:%Y-%m-%d %H:%M:%S}.{ns % 10**9:09d} {when:%z}"


# -- df ---------------------------------------------------------------------------------


def run_df(args: argparse.Namespace) -> int:
    ops = [image_operand(text, "df", bare_is_root=True) for text in args.paths]
    rows: list[tuple[str, ...]] = []
    with Mounts.from_args(args) as mounts:
        for op in ops:
            assert op.image is not None
            fs = mounts.get(op.image)
            with naming(op.image):
                v = fs.statvfs(op.path)
            label = fs.superblock.label or "-"
            if args.inodes:
                used = v.f_files - v.f_ffree
                rows.append((op.image, str(v.f_files), str(used), str(v.f_ffree)))
                avail = v.f_ffree
            else:
                size, used = v.f_blocks * v.f_frsize, (v.f_blocks - v.f_bfree) * v.f_frsize
                avail = v.f_bavail * v.f_frsize
                show = short if args.human else (lambda n: str(-(-n // 1024)))
                rows.append((op.image, show(size), show(used), show(avail)))
            pct = f"{-(-used * 100 // (used + avail))}%" if used + avail else "-"
            rows[-1] += (pct, label)
    if args.inodes:
        head = ("Image", "Inodes", "IUsed", "IFree", "IUse%", "Label")
    elif args.human:
        head = ("Image", "Size", "Used", "Avail", "Use%", "Label")
    else:
        head = ("Image", "1K-blocks", "Used", "Available", "Use%", "Label")
    table = [head, *rows]
    widths = [max(len(r[i]) for r in table) for i in range(6)]
    for r in table:
        cells = [f"{r[0]:<{widths[0]}}"]
        cells += [f"{r[i]:>{widths[i]}}" for i in range(1, 5)]
        print(" ".join([*cells, r[5]]))
    return 0


# -- cat --------------------------------------------------------------------------------


def run_cat(args: argparse.Namespace) -> int:
    ops = [image_operand(text, "cat") for text in args.paths]
    out = sys.stdout.buffer
    sys.stdout.flush()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    output = _output_identity(out)
    with Mounts.from_args(args) as mounts:
        for op in ops:
            assert op.image is not None
            fs = mounts.get(op.image)
            if output is not None and mounts.holds(output):
                raise InvalidArgument(f"{op.image}: input file is output file", op.image)
            with naming(op.image), cast(io.RawIOBase, fs.open(op.path, "rb", buffering=0)) as f:
                while n := f.readinto(buf):
                    out.write(view[:n])
    out.flush()
    return 0


def _output_identity(out: Any) -> os.stat_result | None:
    """What stdout is (None if it is no file: a test's capture, a closed descriptor)."""
    try:
        return os.fstat(out.fileno())
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        return None
