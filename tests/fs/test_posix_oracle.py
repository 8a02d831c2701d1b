"""POSIX behaviour of the daxfs API, checked against the host filesystem.

``TestPythonAPI`` runs the conformance suite (daxfs.testing.posix_tests:
every case a sequence of steps run on daxfs and on a host temporary
directory, results, errnos and final trees compared) on the Python API; the
FUSE mount runs the same suite in tests/fuse/test_conformance.py.

Some checks cannot use the host: "/.." and the root itself (the host's
root is a temporary directory with a parent), and paths near PATH_MAX (the
host path is longer by its prefix); they are daxfs-only tests at the end.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from pathlib import PurePosixPath
from typing import Any

import pytest

import daxfs
from daxfs.testing import SimulatedPmem
from daxfs.testing.posix import SideFactory, close_device, dax_side
from daxfs.testing.posix_tests import PosixTests


class TestPythonAPI(PosixTests):
    """The POSIX suite on the Python API (a fresh SimulatedPmem per case)."""

    @pytest.fixture(scope="class")
    @classmethod
    def posix_side(cls) -> SideFactory:
        return dax_side


# -- daxfs only: what the host cannot stand for ------------------------------------------


@pytest.fixture
def fs() -> Iterator[daxfs.FileSystem]:
    dev = SimulatedPmem(16 << 20)
    daxfs.mkfs(dev)
    mounted = daxfs.mount(dev)
    yield mounted
    close_device(mounted, dev)


def errno_of(call: Any, *args: Any, **kwargs: Any) -> int:
    """The errno ``call`` fails with; its message must name one of the paths."""
    with pytest.raises(OSError, match=r"^\[Errno \d+\]") as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert any(a in message for a in args if isinstance(a, str)), message
    assert info.value.errno is not None
    return info.value.errno


def test_root_and_its_parent(fs: daxfs.FileSystem) -> None:
    fs.mkdir("/d")
    root = fs.stat("/").st_ino
    for path in ("/..", "/../..", "/d/../..", "//", "/.", "..", "."):
        assert fs.stat(path).st_ino == root, path
    assert fs.listdir("/..") == ["d"]
    fs.mkdir("/../x")  # "/.." is "/": x lands in the root
    assert sorted(fs.listdir("/")) == ["d", "x"]
    assert errno_of(fs.rmdir, "/") == errno.EBUSY
    assert errno_of(fs.rmdir, "/..") == errno.ENOTEMPTY
    assert errno_of(fs.rmdir, "/.") == errno.EINVAL
    assert errno_of(fs.unlink, "/") == errno.EISDIR
    assert errno_of(fs.rename, "/", "/y") == errno.EBUSY
    assert errno_of(fs.rename, "/d", "/") == errno.EBUSY
    assert errno_of(fs.mkdir, "/") == errno.EEXIST
    assert errno_of(fs.open, "/", "w") == errno.EISDIR
    assert errno_of(fs.open, "/", "x") == errno.EEXIST
    assert errno_of(fs.link, "/d", "/") == errno.EEXIST
    assert errno_of(fs.stat, "") == errno.ENOENT
    assert fs.exists("/")
    assert not fs.exists("")


def test_relative_paths_resolve_from_the_root(fs: daxfs.FileSystem) -> None:
    fs.makedirs("a/b")
    with fs.open("a/b/f", "w") as f:
        f.write("x")
    assert fs.listdir("a") == ["b"]
    assert fs.stat("a/b/f").st_ino == fs.stat("/a/b/f").st_ino
    fs.symlink("b/f", "a/rel")
    assert fs.readlink("/a/rel") == "b/f"
    assert fs.stat("/a/rel").st_ino == fs.stat("/a/b/f").st_ino


def test_path_length_limit(fs: daxfs.FileSystem) -> None:
    fs.mkdir("/a")
    longest = "/a" + "/." * ((4095 - 2) // 2)
    longest += "/" * (4095 - len(longest))
    assert len(longest) == 4095
    assert fs.stat(longest).st_ino == fs.stat("/a").st_ino
    assert errno_of(fs.stat, longest + "/") == errno.ENAMETOOLONG
    assert errno_of(fs.mkdir, longest + "x") == errno.ENAMETOOLONG
    assert errno_of(fs.symlink, "t" * 4096, "/l") == errno.ENAMETOOLONG
    fs.symlink("t" * 4095, "/l")
    assert fs.readlink("/l") == "t" * 4095


@pytest.mark.parametrize(
    ("call", "args"),
    [
        ("stat", ("/a\0b",)),
        ("mkdir", ("/a\0b",)),
        ("open", ("/a\0b", "w")),
        ("rename", ("/f", "/a\0b")),
        ("symlink", ("x\0", "/l")),
        ("listdir", (b"/\0",)),
    ],
)
def test_nul_in_a_path_is_einval_and_valueerror(
    fs: daxfs.FileSystem, call: str, args: tuple[Any, ...]
) -> None:
    fs.open("/f", "w").close()
    with pytest.raises(ValueError, match=r"a\?b|x\?|/\?|\\\\x00") as info:
        getattr(fs, call)(*args)
    assert isinstance(info.value, OSError)
    assert info.value.errno == errno.EINVAL
    assert fs.listdir("/") == ["f"]


def test_every_error_names_its_path(fs: daxfs.FileSystem) -> None:
    """A sample of daxfs-only errors (the oracle checks the rest)."""
    fs.mkdir("/d")
    calls: list[tuple[Any, tuple[Any, ...], dict[str, Any]]] = [
        (fs.rmdir, ("/",), {}),
        (fs.open, ("/d", "rbt"), {}),
        (fs.truncate, ("/d", -5), {}),
        (fs.utime, ("/d", (1, 1)), {"ns": (1, 1)}),
        (fs.stat, ("/" + "n" * 256,), {}),
    ]
    for call, args, kwargs in calls:
        errno_of(call, *args, **kwargs)


def test_bytes_and_str_results(fs: daxfs.FileSystem) -> None:
    fs.mkdir("/d\u00e9")
    fs.symlink("d\u00e9", "/l")
    assert sorted(fs.listdir(b"/")) == [b"d\xc3\xa9", b"l"]
    assert all(isinstance(n, str) for n in fs.listdir("/"))
    assert fs.readlink(b"/l") == b"d\xc3\xa9"
    assert fs.readlink("/l") == "d\u00e9"
    entries = {e.name: e for e in fs.scandir(b"/")}
    assert set(entries) == {b"d\xc3\xa9", b"l"}
    assert entries[b"l"].path == b"/l"
    assert entries[b"l"].is_dir()
    assert not entries[b"l"].is_dir(follow_symlinks=False)
    assert [top for top, _, _ in fs.walk(b"/")] == [b"/", b"/d\xc3\xa9"]


def test_scandir_over_several_batches(fs: daxfs.FileSystem) -> None:
    """scandir fetches 1024 entries at a time: every entry once, also while deleting."""
    fs.mkdir("/big")
    count = 2 * 1024 + 30
    for i in range(count):
        fs.open(f"/big/f{i}", "x").close()
    names = [e.name for e in fs.scandir("/big")]
    assert sorted(names) == sorted(fs.listdir("/big"))
    assert len(names) == len(set(names)) == count
    seen = []
    with fs.scandir("/big") as entries:
        for k, entry in enumerate(entries):
            seen.append(entry.name)
            if k == 10:  # delete every other entry, the first batch already fetched
                for i in range(0, count, 2):
                    fs.unlink(f"/big/f{i}")
    assert len(seen) == len(set(seen))
    assert set(seen) >= {f"f{i}" for i in range(1, count, 2)}  # survivors all seen
    assert len(fs.listdir("/big")) == count // 2


def test_walk_bottom_up_yields_children_first(fs: daxfs.FileSystem) -> None:
    fs.makedirs("/a/b/c")
    fs.makedirs("/a/x")
    order = [top for top, _, _ in fs.walk("/", topdown=False)]
    assert sorted(order) == ["/", "/a", "/a/b", "/a/b/c", "/a/x"]
    for top in order:
        parent = top.rsplit("/", 1)[0] or "/"
        if top != "/":
            assert order.index(top) < order.index(parent)
    pruned = []
    for top, dirs, _ in fs.walk("/"):
        pruned.append(top)
        dirs[:] = [d for d in dirs if d != "b"]  # topdown: editing dirs prunes
    assert sorted(pruned) == ["/", "/a", "/a/x"]
    errors: list[OSError] = []
    assert list(fs.walk("/missing", onerror=errors.append)) == []
    assert [e.errno for e in errors] == [errno.ENOENT]


def test_path_like_arguments(fs: daxfs.FileSystem) -> None:
    fs.makedirs(PurePosixPath("/a/b"))
    assert fs.listdir(PurePosixPath("/a")) == ["b"]
    with fs.open(PurePosixPath("/a/f"), "w") as f:
        assert f.name == "/a/f"
    fs.symlink(PurePosixPath("f"), PurePosixPath("/a/l"))
    assert fs.readlink(PurePosixPath("/a/l")) == "f"
    assert sorted(e.path for e in fs.scandir(PurePosixPath("/a"))) == ["/a/b", "/a/f", "/a/l"]
    assert [top for top, _, _ in fs.walk(PurePosixPath("/a"))] == ["/a", "/a/b"]
    fs.rename(PurePosixPath("/a/f"), PurePosixPath("/a/g"))
    assert fs.isfile(PurePosixPath("/a/l")) is False
    assert fs.islink(PurePosixPath("/a/l"))


def test_chmod_of_a_symlink_itself_is_eopnotsupp(fs: daxfs.FileSystem) -> None:
    """As Linux (fchmodat with AT_SYMLINK_NOFOLLOW): a link's mode is always 0777."""
    fs.open("/f", "w").close()
    fs.symlink("f", "/l")
    assert errno_of(fs.chmod, "/l", 0o600, follow_symlinks=False) == errno.EOPNOTSUPP
    assert fs.lstat("/l").st_mode & 0o7777 == 0o777
    fs.chmod("/f", 0o640, follow_symlinks=False)  # not a link: fine
    assert fs.stat("/f").st_mode & 0o7777 == 0o640


def test_umask_applies_to_new_files_and_directories(fs: daxfs.FileSystem) -> None:
    fs.umask = 0o077
    fs.open("/f", "w").close()
    fs.mkdir("/d")
    assert fs.stat("/f").st_mode & 0o7777 == 0o600
    assert fs.stat("/d").st_mode & 0o7777 == 0o700
