"""PosixTests: the POSIX conformance suite for daxfs's front ends, the host as oracle.

Every case is a sequence of steps run on a side under test and on a host
temporary directory (daxfs.testing.posix explains the harness and the
normalisation); results, errnos and the final trees must agree.  All start
from ``BASE``: a small tree with every kind of symbolic link (to a file, to a
directory, relative, absolute, chained, climbing, dangling, with a trailing
slash, looping).

Subclass ``PosixTests`` in a test module and give it a class-scoped
``posix_side`` fixture returning a ``SideFactory`` (a fresh side and its
disposer per call): the Python API (tests/fs/test_posix_oracle.py) and the
FUSE mount (tests/fuse/test_conformance.py) run the same cases, so both front
ends are held to the same semantics (zarr's ``StoreTests`` pattern, as
DeviceTests is for devices).  ``random_examples`` bounds the Hypothesis run.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import hypothesis.strategies as stx
import pytest
from hypothesis import HealthCheck, given, settings

from daxfs.testing.posix import ABOVE_ROOT, Oracle, Outcome, SideFactory, Step, run_steps

T1 = (1_000_000_000, 2_000_000_000)  # (atime, mtime) in ns for utime probes

BASE: list[Step] = [
    ("mkdir", "/d"),
    ("mkdir", "/d/e"),
    ("mkdir", "/empty"),
    ("put", "/f", b"hello"),
    ("put", "/d/g", b"world!"),
    ("link", "/f", "/d/hard"),
    ("symlink", "f", "/lf"),  # relative, to a file
    ("symlink", "/d", "/ld"),  # absolute, to a directory
    ("symlink", "lf", "/lf2"),  # a chain of two
    ("symlink", "d/e", "/lde"),  # relative, through a directory
    ("symlink", "../f", "/d/up"),  # relative, climbing
    ("symlink", "nope", "/dang"),  # dangling
    ("symlink", "/d/nope", "/dangabs"),  # dangling, absolute
    ("symlink", "nope/", "/dangs"),  # dangling, target ends with a slash
    ("symlink", "f/", "/lfs"),  # to a file, target ends with a slash
    ("symlink", "loop", "/loop"),  # a loop of one
    ("symlink", "loop2", "/loop1"),  # a loop of two
    ("symlink", "loop1", "/loop2"),
]

# -- every operation on every kind of path --------------------------------------------

TARGETS = [
    "/f",
    "/f/",
    "/f//",
    "/f/.",
    "/f/x",
    "/d",
    "/d/",
    "/d//",
    "/d/.",
    "/d/./",
    "/d/..",
    "/d/e/..",
    "/d/e/../g",
    "//d",
    "/d//e",
    "/./d/./e/",
    "/empty",
    "/empty/",
    "/empty/.",
    "/missing",
    "/missing/",
    "/missing/x",
    "/d/hard",
    "/lf",
    "/lf/",
    "/lf2",
    "/lf2/",
    "/ld",
    "/ld/",
    "/ld/g",
    "/ld/e/",
    "/ld/new",
    "/lde/..",
    "/d/up",
    "/dang",
    "/dang/",
    "/dangabs",
    "/dangs",
    "/lfs",
    "/loop",
    "/loop/",
    "/loop1/x",
    "d/g",  # relative: from the root
    "f",
]

READ_ONLY: dict[str, Callable[[Any], Step]] = {
    "stat": lambda t: ("stat", t),
    "lstat": lambda t: ("lstat", t),
    "stat-nofollow": lambda t: ("stat", t, {"follow_symlinks": False}),
    "readlink": lambda t: ("readlink", t),
    "listdir": lambda t: ("listdir", t),
    "scandir": lambda t: ("scandir", t),
    "walk": lambda t: ("walk", t),
    "exists": lambda t: ("exists", t),
    "isdir": lambda t: ("isdir", t),
    "isfile": lambda t: ("isfile", t),
    "islink": lambda t: ("islink", t),
    "open-r": lambda t: ("open", t, "r", [("read",)]),
    "open-rb": lambda t: ("open", t, "rb", [("read", 3)]),
}

MUTATING: dict[str, Callable[[Any], Step]] = {
    "open-r+": lambda t: ("open", t, "r+", [("write", "J")]),
    "open-w": lambda t: ("open", t, "w", [("write", "new")]),
    "open-w+": lambda t: ("open", t, "w+b", [("read",)]),
    "open-x": lambda t: ("open", t, "x", [("write", "new")]),
    "open-a": lambda t: ("open", t, "a", [("tell",), ("write", "++")]),
    "mkdir": lambda t: ("mkdir", t),
    "rmdir": lambda t: ("rmdir", t),
    "unlink": lambda t: ("unlink", t),
    "rename-from": lambda t: ("rename", t, "/new"),
    "rename-file-to": lambda t: ("rename", "/d/g", t),
    "rename-dir-to": lambda t: ("rename", "/empty", t),
    "rename-link-to": lambda t: ("rename", "/lf", t),
    "replace-from": lambda t: ("replace", t, "/empty"),
    "link-from": lambda t: ("link", t, "/new"),
    "link-from-nofollow": lambda t: ("link", t, "/new", {"follow_symlinks": False}),
    "link-to": lambda t: ("link", "/f", t),
    "symlink": lambda t: ("symlink", "target", t),
    "chmod": lambda t: ("chmod", t, 0o700),
    "utime": lambda t: ("utime", t, {"ns": T1}),
    "truncate": lambda t: ("truncate", t, 2),
    "makedirs": lambda t: ("makedirs", t),
    "makedirs-exist-ok": lambda t: ("makedirs", t, 0o777, True),
}


class Pool:
    """One oracle with BASE applied, reused while no step changed anything."""

    def __init__(self, make_side: SideFactory) -> None:
        self.make_side = make_side
        self.oracle: Oracle | None = None
        self.clean = False

    def get(self) -> Oracle:
        if self.oracle is None or not self.clean:
            self.close()
            self.oracle = Oracle(self.make_side)
            self.oracle.run(BASE, check_tree=False)
        self.clean = False  # until the test proves otherwise
        return self.oracle

    def close(self) -> None:
        if self.oracle is not None:
            self.oracle.close()
            self.oracle = None


def run_pooled(pool: Pool, step: Step, read_only: bool) -> Outcome:
    oracle = pool.get()
    out = oracle.step(step)
    if step[0] == "utime" and out.exc is None:  # times are not part of the tree
        oracle.step(("stat_times", step[1]))
    oracle.check_tree()
    pool.clean = read_only or out.exc is not None
    return out


# -- rename, every POSIX case ----------------------------------------------------------

RENAMES = {
    "file-over-file": ("/f", "/d/g"),
    "file-to-new-name-elsewhere": ("/f", "/d/e/f2"),
    "file-onto-itself": ("/f", "/f"),
    "hard-links-of-one-inode": ("/f", "/d/hard"),
    "file-over-empty-dir": ("/f", "/empty"),
    "file-over-nonempty-dir": ("/f", "/d"),
    "file-over-its-parent": ("/d/g", "/d"),
    "file-over-dangling-link": ("/f", "/dang"),
    "file-over-link-to-itself": ("/f", "/lf"),
    "link-over-its-target": ("/lf", "/f"),
    "dir-over-empty-dir": ("/d/e", "/empty"),
    "dir-over-nonempty-dir": ("/empty", "/d"),
    "dir-over-file": ("/empty", "/f"),
    "dir-over-link-to-dir": ("/empty", "/ld"),
    "dir-into-itself": ("/d", "/d/x"),
    "dir-into-its-subdir": ("/d", "/d/e/x"),
    "dir-over-its-subdir": ("/d", "/d/e"),
    "dir-over-its-parent": ("/d/e", "/d"),
    "dir-over-root-via-dotdot": ("/d/e", "/d/.."),
    "dir-onto-itself": ("/d", "/d"),
    "dir-onto-itself-slash": ("/d", "/d/"),
    "dir-up-a-level": ("/d/e", "/e2"),
    "dir-down-a-level": ("/empty", "/d/e/empty"),
    "dir-slash-to-new-slash": ("/d/", "/x/"),
    "dir-to-new-slash": ("/empty", "/x/"),
    "file-slash": ("/f/", "/x"),
    "file-to-slash": ("/f", "/x/"),
    "link-to-dir-slash": ("/ld/", "/x"),
    "link-to-slash": ("/lf", "/x/"),
    "link-moved": ("/lf", "/d/e/lf"),
    "absolute-link-moved": ("/ld", "/d/e/ld"),
    "dot-source": ("/d/.", "/x"),
    "dotdot-source": ("/d/e/..", "/x"),
    "dot-target": ("/f", "/d/."),
    "dotdot-target": ("/f", "/d/.."),
    "missing-source": ("/missing", "/x"),
    "missing-source-slash": ("/missing/", "/x"),
    "missing-target-parent": ("/f", "/missing/x"),
    "target-parent-is-file": ("/f", "/d/g/x"),
    "through-link-in-path": ("/ld/g", "/lde/g2"),
    "name-255": ("/f", "/" + "n" * 255),
    "name-256": ("/f", "/" + "n" * 256),
    "relative-paths": ("d/g", "empty/g"),
    "bytes-paths": (b"/d/g", b"/d/e/g"),
    # for RENAME_EXCHANGE above all: both names exist, any types, across parents
    "file-with-dir-elsewhere": ("/f", "/d/e"),
    "dir-with-file-elsewhere": ("/d/e", "/f"),
    "dirs-across-parents": ("/d/e", "/empty"),
    "link-with-dir": ("/lf", "/d"),
    "file-with-file-in-subdir": ("/f", "/d/g"),
    "file-slash-with-dir": ("/f", "/empty/"),
    "dir-with-file-slash": ("/empty", "/f/"),
    "dir-slash-with-dir-slash": ("/d/e/", "/empty/"),
}
#: renameat2's flags each RENAMES case runs with
RENAME_FLAGS: dict[str, dict[str, bool]] = {
    "rename": {},
    "noreplace": {"noreplace": True},
    "exchange": {"exchange": True},
    "both": {"noreplace": True, "exchange": True},
}


# -- sequences ---------------------------------------------------------------------------

SEQUENCES: dict[str, list[Step]] = {
    # open modes, reading, writing, appending, truncating, seek/tell
    "r-read-seek-tell": [
        ("open", "/f", "r", [("read", 2), ("tell",), ("seek", 1), ("read",), ("tell",)]),
        ("open", "/f", "rb", [("seek", -2, 2), ("read",), ("seek", 0, 1), ("read1", 9)]),
        ("open", "/f", "rb", [("seek", 10), ("read",), ("tell",), ("seek", -1)]),
        ("open", "/f", "rb", [("seek", 0, 99)]),
    ],
    "r-cannot-write": [
        ("open", "/f", "r", [("write", "x")]),
        ("open", "/f", "rb", [("write", b"x")]),
    ],
    "r-missing": [("open", "/missing", "r", [])],
    "w-truncates-and-cannot-read": [
        ("open", "/f", "w", [("tell",), ("write", "abc"), ("tell",), ("read",)]),
        ("get", "/f"),
        ("open", "/f", "wb", [("mode",), ("write", b"xy")]),
        ("get", "/d/hard"),
    ],
    "w+-read-back": [
        ("open", "/f", "w+", [("mode",), ("write", "abcdef"), ("seek", 0), ("read",)]),
        ("open", "/new", "w+b", [("mode",), ("write", b"12345"), ("seek", 2), ("read", 2)]),
        ("open", "/f", "rb+", [("mode",), ("truncate", 2), ("tell",), ("read",), ("write", b"Z")]),
        ("get", "/f"),
    ],
    "x-creates-once": [
        ("open", "/new", "x", [("mode",), ("write", "one")]),
        ("open", "/new", "x", [("write", "two")]),
        ("open", "/new2", "xb+", [("mode",), ("write", b"ab"), ("seek", 0), ("read",)]),
        ("get", "/new"),
        ("stat", "/new"),
    ],
    "x-on-symlinks": [
        ("open", "/lf", "x", []),
        ("open", "/dang", "x", []),
        ("open", "/loop", "xb", []),
        ("open", "/ld/new", "x", [("write", "via link")]),
        ("get", "/d/new"),
    ],
    "a-appends": [
        ("open", "/f", "a", [("tell",), ("write", "+1"), ("tell",), ("seek", 0), ("write", "+2")]),
        ("get", "/f"),
        ("open", "/f", "a+", [("tell",), ("read",), ("seek", 0), ("read", 3), ("write", "!")]),
        ("open", "/f", "ab", [("mode",), ("write", b"?")]),
        ("open", "/new", "a", [("tell",), ("write", "fresh")]),
        ("get", "/f"),
        ("get", "/new"),
    ],
    "r+-overwrites": [
        ("open", "/f", "r+", [("write", "J"), ("tell",), ("read",), ("write", "Y"), ("tell",)]),
        ("get", "/f"),
        ("open", "/missing", "r+", []),
    ],
    "sparse-write-past-end": [
        ("open", "/f", "rb+", [("seek", 10000), ("write", b"end"), ("seek", 4), ("read", 8)]),
        ("get", "/f"),
        ("stat", "/f"),
    ],
    "truncate-grow-shrink": [
        ("truncate", "/f", 100),
        ("get", "/f"),
        ("truncate", "/f", 2),
        ("get", "/f"),
        ("truncate", "/lf", 0),
        ("get", "/f"),
        ("truncate", "/f", -1),
        ("truncate", "/d", 0),
        ("truncate", "/missing", 0),
        ("open", "/d/g", "r+b", [("truncate", 3), ("truncate",), ("seek", 0), ("read",)]),
        ("open", "/d/g", "r+b", [("seek", 9), ("truncate",), ("read",), ("seek", 0), ("read",)]),
    ],
    "text-newlines": [
        ("open", "/t", "w", [("write", "a\nb\r\nc\rd")]),
        ("get", "/t"),
        ("open", "/t", "r", [("read",)]),
        ("open", "/t", "r", [("read",)], {"newline": ""}),
        ("open", "/t", "r", [("readline",), ("readline",), ("readline",)], {"newline": ""}),
        ("open", "/t", "r", [("readlines",)], {"newline": "\r"}),
        ("open", "/t", "w", [("write", "x\ny\n")], {"newline": "\r\n"}),
        ("get", "/t"),
        ("open", "/t", "r", [("read",)], {"newline": "\n"}),
        ("open", "/t", "w", [("write", "x")], {"newline": "bad"}),
    ],
    "text-encodings": [
        ("open", "/t", "w", [("write", "h\u00e9\u20ac")], {"encoding": "utf-8"}),
        ("get", "/t"),
        ("open", "/t", "r", [("read",)], {"encoding": "latin-1"}),
        ("open", "/t", "r", [("read",)], {"encoding": "ascii"}),
        ("open", "/t", "r", [("read",)], {"encoding": "ascii", "errors": "replace"}),
        ("open", "/t", "w", [("write", "\u20ac")], {"encoding": "latin-1"}),
        ("open", "/u", "w", [("write", "ab")], {"encoding": "utf-16"}),
        ("open", "/u", "a", [("write", "cd")], {"encoding": "utf-16"}),  # no second BOM
        ("get", "/u"),
        ("open", "/u", "r", [("read",)], {"encoding": "utf-16"}),
        ("open", "/t", "rt", [("mode",), ("read",)], {"encoding": "nonexistent-codec"}),
    ],
    "unbuffered": [
        ("open", "/f", "rb", [("read", 2)], {"buffering": 0}),
        ("open", "/f", "r+b", [("mode",), ("write", b"H"), ("readall",)], {"buffering": 0}),
        ("open", "/f", "rb", [("write", b"x")], {"buffering": 0}),
        ("open", "/f", "wb", [("read",)], {"buffering": 0}),
        ("open", "/f", "r", [], {"buffering": 0}),
        ("open", "/f", "rb", [("read",)], {"buffering": 3}),
        ("open", "/f", "ab", [("tell",)], {"buffering": 0}),
        ("get", "/f"),
    ],
    "bad-modes": [
        ("open", "/f", "rw", []),
        ("open", "/f", "rr", []),
        ("open", "/f", "", []),
        ("open", "/f", "b", []),
        ("open", "/f", "U", []),
        ("open", "/f", "rbt", []),
        ("open", "/f", "rb", [], {"encoding": "utf-8"}),
        ("open", "/f", "rb", [], {"newline": "\n"}),
    ],
    "closed-file": [
        ("open", "/f", "rb", [("close",), ("closed",), ("read",)]),
        ("open", "/f", "r", [("close",), ("tell",)]),
        ("open", "/f", "wb", [("close",), ("write", b"x")], {"buffering": 0}),
    ],
    # symbolic links
    "symlink-resolution": [
        ("get", "/lf"),
        ("get", "/lf2"),
        ("get", "/d/up"),
        ("get", "/lfs"),
        ("listdir", "/ld"),
        ("listdir", "/lde/.."),
        ("get", "/ld/../f"),
        ("readlink", "/lf2"),
        ("readlink", "/ld"),
        ("readlink", "/d/up"),
        ("readlink", "/dangs"),
        ("lstat", "/lf2"),
        ("stat", "/lf2"),
        ("stat", "/loop1"),
        ("lstat", "/loop1"),
    ],
    "create-through-dangling-link": [
        ("open", "/dang", "w", [("write", "made")]),
        ("get", "/nope"),
        ("readlink", "/dang"),
        ("open", "/dangabs", "a", [("write", "abs")]),
        ("get", "/d/nope"),
        ("open", "/dangs", "w", []),
        ("open", "/loop", "w", []),
    ],
    "symlink-chain-of-40-and-41": [
        *(("symlink", f"c{i + 1}", f"/c{i}") for i in range(41)),
        ("symlink", "f", "/c41"),
        ("get", "/c1"),  # 41 links: ELOOP
        ("get", "/c2"),  # 40 links: fine
        ("lstat", "/c0"),
    ],
    "symlink-errors": [
        ("symlink", "", "/new"),
        ("symlink", "", "/f"),
        ("symlink", "x", "/f"),
        ("symlink", "x", "/dang"),
        ("symlink", "x", "/missing/new"),
        ("symlink", "x", "/new/"),
        ("symlink", "x" * 300, "/long"),
        ("readlink", "/long"),
        ("symlink", "x", "/" + "n" * 256),
        ("symlink", "a\0b", "/new"),
        ("symlink", "x", "/d/."),
        ("readlink", "/d"),
        ("readlink", "/missing"),
    ],
    # hard links and link counts
    "hard-links-and-nlink": [
        ("stat", "/f"),
        ("link", "/f", "/f2"),
        ("stat", "/f2"),
        ("link", "/lf", "/f3"),  # follows: a link to the file
        ("lstat", "/f3"),
        ("link", "/lf", "/l3", {"follow_symlinks": False}),  # a second name of the link
        ("lstat", "/l3"),
        ("link", "/dang", "/l4", {"follow_symlinks": False}),
        ("link", "/dang", "/l5"),
        ("link", "/d", "/d2"),
        ("link", "/d", "/f"),
        ("link", "/f", "/d/g"),
        ("link", "/missing", "/x"),
        ("unlink", "/f"),
        ("stat", "/f2"),
        ("unlink", "/f2"),
        ("unlink", "/f3"),
        ("stat", "/d/hard"),
        ("get", "/d/hard"),
    ],
    "directory-nlink": [
        ("stat", "/"),
        ("stat", "/d"),
        ("mkdir", "/d/x"),
        ("mkdir", "/d/x/y"),
        ("stat", "/d"),
        ("stat", "/d/x"),
        ("rename", "/d/x", "/x"),
        ("stat", "/d"),
        ("stat", "/"),
        ("rename", "/x/y", "/d/e/y"),
        ("stat", "/x"),
        ("stat", "/d/e"),
        ("rmdir", "/d/e/y"),
        ("stat", "/d/e"),
    ],
    # removing
    "rmdir-cases": [
        ("rmdir", "/d"),
        ("rmdir", "/d/."),
        ("rmdir", "/d/.."),
        ("rmdir", "/d/e/."),
        ("rmdir", "/f"),
        ("rmdir", "/ld"),
        ("rmdir", "/ld/"),
        ("rmdir", "/missing"),
        ("rmdir", "/empty/"),
        ("rmdir", "/empty"),
        ("rmdir", "/d/e//"),
    ],
    "unlink-cases": [
        ("unlink", "/d"),
        ("unlink", "/d/"),
        ("unlink", "/d/."),
        ("unlink", "/ld/"),
        ("unlink", "/lf/"),
        ("unlink", "/ld"),
        ("stat", "/d"),
        ("remove", "/lf"),
        ("stat", "/f"),
        ("unlink", "/loop"),
        ("unlink", "/missing"),
        ("unlink", "/f/x"),
    ],
    "mkdir-cases": [
        ("mkdir", "/d"),
        ("mkdir", "/f"),
        ("mkdir", "/lf"),
        ("mkdir", "/dang"),
        ("mkdir", "/dang/"),
        ("mkdir", "/d/."),
        ("mkdir", "/d/.."),
        ("mkdir", "/missing/x"),
        ("mkdir", "/f/x"),
        ("mkdir", "/new/"),
        ("mkdir", "/new2//"),
        ("mkdir", "/ld/new"),
        ("mkdir", "/m1", 0o700),
        ("mkdir", "/m2", 0o4777),
        ("mkdir", "/m3", 0o1777),
        ("mkdir", "/m4", 0o2750),
        ("stat", "/m1"),
        ("stat", "/m2"),
        ("stat", "/m3"),
        ("stat", "/m4"),
    ],
    # names
    "name-lengths": [
        ("mkdir", "/" + "a" * 255),
        ("mkdir", "/" + "b" * 256),
        ("put", "/d/" + "c" * 255, b"x"),
        ("put", "/d/" + "c" * 256, b"x"),
        ("stat", "/" + "d" * 256),
        ("stat", "/" + "d" * 256 + "/x"),
        ("open", "/" + "e" * 300, "w", []),
        ("link", "/f", "/" + "f" * 256),
        ("listdir", "/d"),
        ("put", "/" + "\u00e9" * 127, b"x"),  # 254 bytes of UTF-8
        ("put", "/" + "\u00e9" * 128, b"x"),  # 256 bytes
    ],
    "nul-in-names": [
        ("mkdir", "/a\0b"),
        ("open", "/a\0b", "w", []),
        ("stat", "/f\0"),
        ("rename", "/f", "/g\0"),
        ("unlink", "/f\0x"),
        ("exists", "/f\0"),
        ("listdir", "/d\0"),
    ],
    "bytes-paths": [
        ("listdir", b"/"),
        ("listdir", b"/d"),
        ("readlink", b"/lf"),
        ("readlink", b"/ld"),
        ("scandir", b"/d"),
        ("walk", b"/d"),
        ("stat", b"/f"),
        ("mkdir", b"/by\xffte"),
        ("listdir", b"/"),
        ("listdir", "/"),
        ("put", b"/by\xffte/f", b"x"),
        ("rename", b"/by\xffte", b"/b2"),
        ("open", b"/b2/f", "r", [("read",)]),
    ],
    "unicode-names": [
        ("put", "/\u00e9t\u00e9", b"x"),
        ("mkdir", "/\u65e5\u672c"),
        ("listdir", "/"),
        ("listdir", b"/"),
        ("symlink", "\u00e9t\u00e9", "/\u65e5\u672c/l"),
        ("readlink", "/\u65e5\u672c/l"),
        ("put", "/surrogate\udcff", b"y"),
        ("listdir", b"/"),
    ],
    # attributes
    "chmod-and-stat": [
        ("stat", "/f"),
        ("stat", "/d"),
        ("lstat", "/lf"),
        ("chmod", "/f", 0o4751),
        ("stat", "/f"),
        ("chmod", "/lf", 0o600),
        ("stat", "/f"),
        ("lstat", "/lf"),
        ("chmod", "/d", 0o1700),
        ("stat", "/d"),
        ("chmod", "/f", 0o100644),
        ("stat", "/f"),
        ("chmod", "/dang", 0o600),
        ("chmod", "/missing", 0o600),
    ],
    "utime-and-times": [
        ("utime", "/f", {"ns": T1}),
        ("stat_times", "/f"),
        ("utime", "/lf", {"ns": (5, 6)}),
        ("stat_times", "/f"),
        ("utime", "/f", (3.5, 4.25)),
        ("stat_times", "/f"),
        ("utime", "/d", {"ns": (-1_000_000_000, 2**40)}),
        ("stat_times", "/d"),
        ("utime", "/dang", {"ns": T1}),
        ("utime", "/f", (1, 2), {"ns": T1}),
        ("utime", "/f", (0.3, -0.3)),
        ("stat_times", "/f"),
        ("utime", "/f", (1.1, 2**31 + 0.7)),
        ("stat_times", "/f"),
        ("utime", "/f", (123456789.123456789, -0.999999999)),
        ("stat_times", "/f"),
        ("utime", "/f", (-1.5, 1e-9)),
        ("stat_times", "/f"),
    ],
    "chown-and-nofollow": [
        ("chown", "/f", 1234, 5678),
        ("stat_owner", "/f"),
        ("chown", "/f", -1, 42),
        ("stat_owner", "/f"),
        ("chown", "/f", 7, -1),
        ("stat_owner", "/f"),
        ("chown", "/lf", 99, 98),  # follows
        ("stat_owner", "/f"),
        ("chown", "/lf", 11, 12, {"follow_symlinks": False}),
        ("stat_owner", "/lf", {"follow_symlinks": False}),
        ("stat_owner", "/f"),
        ("chown", "/dang", 1, 1),
        ("chown", "/dang", 1, 1, {"follow_symlinks": False}),
        ("utime", "/f", {"ns": T1}),
        ("utime", "/lf", {"ns": (7, 8), "follow_symlinks": False}),
        ("stat_times", "/f"),
        ("stat_times", "/lf", {"follow_symlinks": False}),
        ("utime", "/dang", {"ns": (7, 8), "follow_symlinks": False}),
        ("stat", "/f", {"follow_symlinks": False}),
        ("stat", "/lf", {"follow_symlinks": False}),
    ],
    "dir-over-empty-sibling": [
        ("mkdir", "/e2"),
        ("stat", "/"),
        ("rename", "/empty", "/e2"),
        ("stat", "/"),
        ("rename", "/d/e", "/d/e"),
        ("stat", "/d"),
        ("mkdir", "/d/e3"),
        ("rename", "/d/e3", "/d/e"),
        ("stat", "/d"),
    ],
    "set-group-id-directory": [
        ("chown", "/d", -1, 4242),
        ("chmod", "/d", 0o2775),
        ("mkdir", "/d/sub"),
        ("mkdir", "/d/sub/deeper", 0o700),
        ("put", "/d/file", b"x"),
        ("symlink", "file", "/d/link"),
        ("link", "/f", "/d/hardlink"),  # an existing inode keeps its group
        ("stat", "/d/sub"),
        ("stat", "/d/sub/deeper"),
        ("stat", "/d/file"),
        ("stat_owner", "/d/sub"),
        ("stat_owner", "/d/sub/deeper"),
        ("stat_owner", "/d/file"),
        ("stat_owner", "/d/link", {"follow_symlinks": False}),
        ("stat_owner", "/d/hardlink"),
        ("stat_owner", "/empty"),
    ],
    "dotdot-after-moving-a-directory": [
        ("rename", "/d/e", "/empty/e"),
        ("stat", "/empty/e/.."),
        ("listdir", "/empty/e/.."),
        ("stat", "/d"),
        ("rename", "/empty", "/d/e2"),
        ("listdir", "/d/e2/e/../.."),
        ("put", "/d/e2/e/../../x", b"x"),
        ("get", "/d/x"),
    ],
    "mtime-updates": [
        ("utime", "/d", {"ns": T1}),
        ("utime", "/f", {"ns": T1}),
        ("utime", "/d/g", {"ns": T1}),
        ("open", "/f", "r", [("read",)]),
        ("stat", "/d/g"),
        ("mtime_changed", "/f", T1[1]),
        ("mtime_changed", "/d", T1[1]),
        ("chmod", "/f", 0o600),
        ("link", "/d/g", "/g2"),
        ("mtime_changed", "/f", T1[1]),
        ("mtime_changed", "/d/g", T1[1]),
        ("open", "/f", "a", []),
        ("mtime_changed", "/f", T1[1]),
        ("put", "/d/new", b""),
        ("mtime_changed", "/d", T1[1]),
        ("truncate", "/f", 5),  # same size: truncate(2) sets mtime anyway
        ("mtime_changed", "/f", T1[1]),
    ],
    "mtime-open-w-on-empty-file": [
        ("put", "/empty-file", b""),
        ("utime", "/empty-file", {"ns": T1}),
        ("open", "/empty-file", "w", []),
        ("mtime_changed", "/empty-file", T1[1]),
    ],
    "mtime-write": [
        ("utime", "/f", {"ns": T1}),
        ("open", "/f", "r+b", [("write", b"J")], {"buffering": 0}),
        ("mtime_changed", "/f", T1[1]),
        ("utime", "/d/e", {"ns": T1}),
        ("rmdir", "/d/e"),
        ("mtime_changed", "/d", T1[1]),
    ],
    # makedirs, walk, scandir
    "makedirs": [
        ("makedirs", "/x/y/z"),
        ("makedirs", "/x/y/z"),
        ("makedirs", "/x/y/z", 0o777, True),
        ("makedirs", "/x/y/z/", 0o777, True),
        ("makedirs", "/f", 0o777, True),
        ("makedirs", "/f/x", 0o777, True),
        ("makedirs", "/ld/new/deeper"),
        ("makedirs", "/dang/x"),
        ("makedirs", "/p/q", 0o700),
        ("stat", "/p"),
        ("stat", "/p/q"),
        ("makedirs", "/dot/.", 0o777, True),
        ("makedirs", b"/bytes/dir"),
        ("makedirs", "/"),
        ("makedirs", "/", 0o777, True),
    ],
    "walk": [
        ("mkdir", "/d/e/deep"),
        ("put", "/d/e/deep/file", b"x"),
        ("walk", "/"),
        ("walk", "/", False),
        ("walk", "/", True, None, True),
        ("walk", "/d/"),
        ("walk", "/ld"),
        ("walk", b"/d"),
        ("walk", "/missing"),
        ("walk", "/f"),
    ],
    "scandir": [
        ("scandir", "/"),
        ("scandir", "/d"),
        ("scandir", "/ld"),
        ("scandir", b"/"),
        ("scandir", "/f"),
        ("scandir", "/missing"),
    ],
}


# -- an open file whose name has gone: os.f* calls work on the descriptor ---------------

GID = os.getgid()
_PROBES: list[Step] = [
    ("fstat",),
    ("fchmod", 0o640),
    ("fstat",),
    ("fchown", -1, GID),
    ("fstat_owner",),
    ("futime", T1),
    ("fstat_times",),
    ("ftruncate", 3),
    ("fstat",),
    ("seek", 0),
    ("read",),
    ("write", b"Z"),
    ("fstat",),
]
_RAW = {"buffering": 0}
OPEN_FILES: dict[str, list[Step]] = {
    "renamed": [
        ("open", "/f", "rb+", [("fs", ("rename", "/f", "/moved")), *_PROBES], _RAW),
        ("stat", "/moved"),
        ("get", "/moved"),
    ],
    "renamed-directory-above": [
        ("open", "/d/g", "rb+", [("fs", ("rename", "/d", "/d2")), *_PROBES], _RAW),
        ("get", "/d2/g"),
    ],
    "unlinked-other-name-left": [
        ("open", "/f", "rb+", [("fs", ("unlink", "/f")), *_PROBES], _RAW),
        ("stat", "/d/hard"),
        ("get", "/d/hard"),
    ],
    "unlinked-last-name": [
        ("unlink", "/d/hard"),
        ("open", "/f", "rb+", [("fs", ("unlink", "/f")), *_PROBES], _RAW),
        ("listdir", "/"),
    ],
    "replaced-by-rename": [
        ("open", "/d/g", "rb+", [("fs", ("rename", "/f", "/d/g")), *_PROBES], _RAW),
        ("get", "/d/g"),
    ],
    "unlinked-read-only": [
        ("unlink", "/d/hard"),
        (
            "open",
            "/f",
            "rb",
            [("fs", ("unlink", "/f")), ("fstat",), ("fchmod", 0o600), ("fstat",), ("read",)],
            _RAW,
        ),
    ],
    "unlinked-then-directory-removed": [
        (
            "open",
            "/d/g",
            "rb+",
            [
                ("fs", ("unlink", "/d/g")),
                ("fs", ("unlink", "/d/hard")),
                ("fs", ("rmdir", "/d/e")),
                ("fs", ("unlink", "/d/up")),
                ("fs", ("rmdir", "/d")),
                *_PROBES,
            ],
            _RAW,
        ),
    ],
}


# -- random sequences --------------------------------------------------------------------

# Paths over a small name space, mostly shallow, starting from SEED (so that
# most steps meet something).  A ".." in a path only ever follows a component
# that is not the root.  A link target does climb above the root when its link
# lies in the root (or is moved there): "../b" (TARGET_TEXTS); on the host,
# and on a side reached through os, the root's parent holds b -> root/b
# (daxfs.testing.posix.mirror_above_root), so "../b" from the root finds the
# root's own b there, as daxfs's "/../b" does.  CLIMBS checks those cases.
SEED: list[Step] = [
    ("mkdir", "/a"),
    ("mkdir", "/a/b"),
    ("put", "/b", b"seed"),
    ("symlink", "a", "/l"),
]
component = stx.sampled_from(["a", "b", "c", "l"])
paths = stx.builds(
    lambda parts, dotdot, slash: (
        "/"
        + "/".join(parts[:1] + ([".."] if dotdot and len(parts) > 1 else []) + parts[1:])
        + ("/" if slash else "")
    ),
    stx.sampled_from([1, 1, 1, 2, 2, 3]).flatmap(
        lambda n: stx.lists(component, min_size=n, max_size=n)
    ),
    stx.sampled_from([False, False, False, False, True]),
    stx.sampled_from([False, False, False, True]),
)
#: link targets of the random steps; "../NAME" only for NAME in ABOVE_ROOT
TARGET_TEXTS = ["a", "/a", "a/b", "b", "l", "../b", "c", "/a/b/", "b/"]
targets = stx.sampled_from(TARGET_TEXTS)
payloads = stx.binary(max_size=64)
random_steps = stx.one_of(
    stx.tuples(stx.just("mkdir"), paths),
    stx.tuples(stx.just("rmdir"), paths),
    stx.tuples(stx.just("unlink"), paths),
    stx.tuples(stx.just("rename"), paths, paths),
    stx.tuples(
        stx.just("rename"),
        paths,
        paths,
        stx.sampled_from([{"exchange": True}, {"noreplace": True}]),
    ),
    stx.tuples(stx.just("link"), paths, paths),
    stx.tuples(stx.just("symlink"), targets, paths),
    stx.tuples(stx.just("put"), paths, payloads),
    stx.tuples(stx.just("open"), paths, stx.sampled_from(["ab", "xb", "rb+"]), stx.just([])),
    stx.builds(lambda p, data: ("open", p, "ab", [("write", data), ("tell",)]), paths, payloads),
    stx.tuples(stx.just("get"), paths),
    stx.tuples(stx.just("truncate"), paths, stx.integers(0, 100)),
    stx.tuples(stx.sampled_from(["stat", "lstat", "listdir", "readlink", "exists"]), paths),
    stx.tuples(stx.just("chmod"), paths, stx.sampled_from([0o600, 0o755, 0o4711])),
)


# -- a link in the root that climbs out of it ("../b"): "/.." is "/" ----------------------

CLIMBS: dict[str, list[Step]] = {
    "read-through-it": [
        ("symlink", "../b", "/c"),
        ("get", "/c"),
        ("stat", "/c"),
        ("lstat", "/c"),
        ("readlink", "/c"),
        ("exists", "/c"),
    ],
    "moved-into-the-root": [
        ("symlink", "../b", "/a/c"),  # in /a: /b
        ("get", "/a/c"),
        ("rename", "/a/c", "/c"),  # in the root: "/../b", that is /b again
        ("get", "/c"),
    ],
    "hard-link-follows-it": [
        ("symlink", "../b", "/c"),
        ("link", "/c", "/n"),
        ("stat", "/n"),
        ("get", "/n"),
    ],
    "create-through-it": [
        ("unlink", "/b"),
        ("symlink", "../b", "/c"),
        ("exists", "/c"),
        ("put", "/c", b"made"),
        ("get", "/b"),
        ("listdir", "/"),
    ],
    "directory-through-it": [
        ("unlink", "/b"),
        ("mkdir", "/b"),
        ("symlink", "../b", "/c"),
        ("put", "/c/x", b"x"),
        ("listdir", "/b"),
        ("stat", "/c/.."),
        ("listdir", "/c/.."),
        ("rmdir", "/c/"),
    ],
    "dangling": [
        ("unlink", "/b"),
        ("symlink", "../b", "/c"),
        ("stat", "/c"),
        ("open", "/c", "rb", []),
        ("link", "/c", "/n"),
    ],
    "a-loop-through-the-root": [
        ("unlink", "/b"),
        ("symlink", "../b", "/b"),
        ("stat", "/b"),
        ("symlink", "b", "/c"),
        ("get", "/c"),
    ],
}


class PosixTests:
    """The POSIX cases every front end must pass; needs a class-scoped ``posix_side``
    fixture (a SideFactory)."""

    #: Hypothesis examples of random step sequences
    random_examples = 200
    #: cases of OPEN_FILES this front end is known to fail, with why (strict xfail)
    open_file_failures: ClassVar[dict[str, str]] = {}

    @pytest.fixture(scope="class")
    @classmethod
    def pool(cls, posix_side: SideFactory) -> Iterator[Pool]:
        p = Pool(posix_side)
        yield p
        p.close()

    @pytest.mark.parametrize("target", TARGETS)
    @pytest.mark.parametrize("op", sorted(READ_ONLY))
    def test_read_only_operation(self, pool: Pool, op: str, target: str) -> None:
        run_pooled(pool, READ_ONLY[op](target), read_only=True)

    @pytest.mark.parametrize("target", TARGETS)
    @pytest.mark.parametrize("op", sorted(MUTATING))
    def test_mutating_operation(self, pool: Pool, op: str, target: str) -> None:
        run_pooled(pool, MUTATING[op](target), read_only=False)

    @pytest.mark.parametrize("case", sorted(RENAMES))
    @pytest.mark.parametrize("flags", sorted(RENAME_FLAGS))
    def test_rename(self, posix_side: SideFactory, flags: str, case: str) -> None:
        src, dst = RENAMES[case]
        run_steps(
            [
                *BASE,
                ("utime", "/d", {"ns": T1}),
                ("utime", "/empty", {"ns": T1}),
                ("rename", src, dst, RENAME_FLAGS[flags])
                if flags != "rename"
                else ("rename", src, dst),
                ("mtime_changed", "/d", T1[1]),
                ("mtime_changed", "/empty", T1[1]),
                ("stat", "/"),
                ("stat", "/d"),
                ("stat", "/d/e"),
                ("stat", "/empty"),
                ("listdir", "/d/e"),
                ("stat", "/d/e/.."),  # a directory that moved: its '..' is its new parent
                ("stat", "/empty/.."),
            ],
            posix_side,
        )

    @pytest.mark.parametrize("case", sorted(SEQUENCES))
    def test_sequence(self, posix_side: SideFactory, case: str) -> None:
        run_steps([*BASE, *SEQUENCES[case]], posix_side)

    @pytest.mark.parametrize("case", sorted(OPEN_FILES))
    def test_open_file(
        self, posix_side: SideFactory, case: str, request: pytest.FixtureRequest
    ) -> None:
        if case in self.open_file_failures:
            why = self.open_file_failures[case]
            request.applymarker(pytest.mark.xfail(reason=why, strict=True))
        run_steps([*BASE, *OPEN_FILES[case]], posix_side)

    @pytest.mark.parametrize("case", sorted(CLIMBS))
    def test_link_climbing_out_of_the_root(self, posix_side: SideFactory, case: str) -> None:
        run_steps([*SEED, *CLIMBS[case]], posix_side)

    def test_random_links_climb_only_to_mirrored_names(self) -> None:
        climbs = [t for t in TARGET_TEXTS if t.startswith("..")]
        assert climbs, "the random steps no longer make a link that climbs"
        for target in climbs:
            assert target.split("/")[1] in ABOVE_ROOT, target

    def test_random_sequences(self, posix_side: SideFactory) -> None:
        @settings(
            max_examples=self.random_examples,
            derandomize=True,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(steps=stx.lists(random_steps, min_size=1, max_size=20))
        def check(steps: list[Step]) -> None:
            run_steps([*SEED, *steps], posix_side)

        check()
