"""What a crafted or damaged image, or a careless destination, must not do.

The CLI reads images it cannot trust.  Whatever an image holds, a command
writes only where it was asked to (cp -r never leaves its destination, never
writes through a symbolic link it made itself, never truncates the image it
reads), ends every walk (cycles, a directory with two names, deep trees),
and fails with one line and exit 1, never a traceback or exit 70.

Crafted images are made with ``plant``, which writes a directory entry with
any name and any inode number straight into a directory's B+tree, past every
check of the directory layer.  When the library itself refuses such an entry
(EUCLEAN), the CLI test still holds; the CLI's own defences are tested on
their own too, with a source side that lists whatever the test wants
(``FakeSide``) and with the destination primitives (``HostDir``) directly.
"""

from __future__ import annotations

import errno
import inspect
import io
import itertools
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest

import daxfs
from daxfs.cli import common, cp, sides
from daxfs.cli.common import Mounts, ProgressBar
from daxfs.errors import Corrupted
from daxfs.fs.dir import pack_entries
from daxfs.fs.filesystem import FileSystem
from daxfs.fs.layout import DT_DIR
from tests.cli.conftest import Run

SIZE = 32 << 20


def plant(fs: FileSystem, directory: str, name: bytes, ino: int, dtype: int = DT_DIR) -> None:
    """Add the entry ``name -> ino`` to ``directory``, bypassing every name check."""
    with fs._lock:
        inode, _ = fs._existing(directory)
        with fs._begin(directory) as tx:
            tree = fs.dirs._tree(inode)
            key = fs.dirs.hash(name)
            old = tree.get(tx, key) or b""
            tree.put(tx, key, old + pack_entries([(name, ino, dtype)]))
            fs.dirs._store(tx, inode, tree, +1)
    fs.dirs._dcache.clear()


def tree_of(top: Path) -> set[str]:
    """Every path under ``top``, relative to it."""
    return {str(p.relative_to(top)) for p in top.rglob("*")}


def intact(image: Path) -> None:
    """The image of ``file_image`` is whole: its size, fsck clean, /f as written."""
    from daxfs.fs.fsck import fsck

    assert image.stat().st_size == SIZE
    report = fsck(image)
    assert report.clean, str(report)
    with daxfs.mount(image) as fs, fs.open("/f", "rb") as f:
        assert f.read() == b"data" * 1000


def daxfs_cmd(*argv: str | Path, **kw: object) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        [sys.executable, "-m", "daxfs.cli", *map(str, argv)],
        capture_output="stdout" not in kw,
        env={**os.environ, "DAXFS_DEBUG": ""},
        check=False,
        timeout=120,
        **kw,
    )


# -- 1. cp never writes outside its destination --------------------------------------------


@pytest.fixture
def dotdot_image(shm_dir: Path) -> Path:
    """An image whose /d holds an entry named ".." (and real files beside it)."""
    path = shm_dir / "dotdot.img"
    daxfs.mkfs(path, SIZE)
    with daxfs.mount(path) as fs:
        fs.makedirs("/d/sub")
        for i in range(8):
            with fs.open(f"/f{i}", "wb") as f:
                f.write(b"outside the source")
        with fs.open("/d/inside", "wb") as f:
            f.write(b"in")
        plant(fs, "/d", b"..", fs.stat("/d/sub").st_ino)
    return path


def test_cp_r_of_an_entry_named_dotdot_writes_nothing_outside(
    shm_dir: Path, dotdot_image: Path, run: Run
) -> None:
    """Regression: cp -r IMG:/d DEST wrote the image's root into DEST's parent."""
    out = shm_dir / "out"
    out.mkdir()
    line = run.fails("cp", "-r", f"{dotdot_image}:/d", out / "dest")
    assert "'..'" in line or "directory cycle" in line, line
    assert tree_of(out) <= {"dest", "dest/inside", "dest/sub"}, tree_of(out)


@pytest.mark.parametrize("bad", [b"..", b".", b"a/b", b"x\0y"])  # 255 bytes at most on media
def test_scandir_refuses_a_bad_name_from_the_image(shm_dir: Path, bad: bytes) -> None:
    path = shm_dir / "bad.img"
    daxfs.mkfs(path, SIZE)
    with daxfs.mount(path) as fs:
        fs.mkdir("/d")
        plant(fs, "/d", bad, fs.stat("/d").st_ino)
        with pytest.raises(Corrupted):
            list(fs.scandir("/d"))
        errors: list[OSError] = []
        walked = list(fs.walk("/", onerror=errors.append))  # as os.walk: reported, skipped
    assert [top for top, _, _ in walked] == ["/"]
    assert [e.errno for e in errors] == [errno.EUCLEAN]


def test_rm_r_of_an_entry_named_dotdot_removes_nothing_above(shm_dir: Path, run: Run) -> None:
    """Regression: rm -r IMG:/d followed an entry named ".." up to the root."""
    path = shm_dir / "rm.img"
    daxfs.mkfs(path, SIZE)
    with daxfs.mount(path) as fs:
        fs.makedirs("/d")
        fs.makedirs("/keep")
        for name in ("/precious", "/keep/precious"):
            with fs.open(name, "wb") as f:
                f.write(b"x")
        plant(fs, "/d", b"..", fs.stat("/d").st_ino)
    assert "'..'" in run.fails("rm", "-r", f"{path}:/d")  # the library's words, or scan's
    with daxfs.mount(path) as fs:
        assert fs.exists("/precious")
        assert fs.exists("/keep/precious")


class FakeSide(sides.Side):
    """A source that lists whatever the test wants: the CLI's own checks, alone.

    ``tree`` maps a directory path to its listing, name -> (inode number,
    kind); a file's content is its path.  Nothing in it is validated.
    """

    key = "fake"

    def __init__(self, tree: dict[str, dict[str, tuple[int, int]]]) -> None:
        self.tree = tree
        self.inodes: dict[str, tuple[int, int]] = {"/": (1, stat.S_IFDIR)}
        for parent, listing in tree.items():
            for name, node in listing.items():
                self.inodes[os.path.join(parent, name)] = node

    def show(self, path: str) -> str:
        return f"fake:{path}"

    def stat(self, path: str, follow: bool = True) -> os.stat_result | None:
        node = self.inodes.get(path)
        if node is None:
            return None
        ino, kind = node
        return os.stat_result((kind | 0o755, ino, 99, 1, 0, 0, len(path), 0, 0, 0))

    def open_read(self, path: str, follow: bool = True) -> io.RawIOBase:
        return cast(io.RawIOBase, io.BytesIO(path.encode()))

    def listdir(self, path: str) -> list[str]:
        return list(self.tree.get(path, {}))

    def readlink(self, path: str) -> str:
        return "/etc/passwd"

    def real(self, path: str) -> str:
        return path

    def open_dir(self, path: str) -> sides.Dir:
        raise AssertionError("FakeSide is only a source")


def fake_copy(fake: FakeSide, src: str, dest: Path) -> None:
    with Mounts() as mounts, ProgressBar(False) as bar:
        copier = cp.Copier(mounts, bar, recursive=True)
        info = fake.stat(src)
        assert info is not None
        copier.copy_operand(fake, src, info, copier.host, str(dest))


@pytest.mark.parametrize("bad", ["..", ".", "a/b", "../../escape", "", "x\0y", "n" * 256])
def test_cp_checks_every_name_a_source_lists(shm_dir: Path, bad: str) -> None:
    """cp's own check, whatever the library lets through."""
    fake = FakeSide(
        {"/": {"d": (2, stat.S_IFDIR)}, "/d": {"ok": (3, stat.S_IFREG), bad: (2, stat.S_IFDIR)}}
    )
    (shm_dir / "out").mkdir()
    with pytest.raises(Corrupted, match="name"):
        fake_copy(fake, "/d", shm_dir / "out" / "dest")
    assert tree_of(shm_dir / "out") <= {"dest", "dest/ok"}


def test_host_destination_refuses_names_that_are_not_one_component(shm_dir: Path) -> None:
    """The last line of defence: the destination primitives take only plain names."""
    (shm_dir / "dest").mkdir()
    with sides.HostDir.open(str(shm_dir / "dest")) as d:
        for bad in ["..", ".", "a/b", "", "x\0y"]:
            with pytest.raises(OSError, match="name") as e1:
                d.mkdir(bad)
            assert e1.value.errno == errno.EINVAL
            with pytest.raises(OSError, match="name"):
                d.open_write(bad, new=True, follow=False)
            with pytest.raises(OSError, match="name"):
                d.symlink("/x", bad)
            with pytest.raises(OSError, match="name"):
                d.child(bad)
    assert tree_of(shm_dir) == {"dest"}


def test_host_destination_never_follows_a_symbolic_link_below_it(shm_dir: Path) -> None:
    """Even if a link appears after cp looked (a race), no write goes through it."""
    outside = shm_dir / "outside"
    outside.mkdir()
    dest = shm_dir / "dest"
    dest.mkdir()
    (dest / "dirlink").symlink_to(outside)
    (dest / "filelink").symlink_to(outside / "file")
    with sides.HostDir.open(str(dest)) as d:
        with pytest.raises(OSError, match="dirlink") as e1:
            d.child("dirlink")
        assert e1.value.errno in (errno.ELOOP, errno.ENOTDIR)
        with pytest.raises(OSError, match="filelink") as e2:
            d.open_write("filelink", new=False, follow=False)
        assert e2.value.errno == errno.ELOOP
        with pytest.raises(FileExistsError):
            d.open_write("filelink", new=True, follow=False)
    assert tree_of(outside) == set()


# -- 1b. never through a symbolic link the same copy made --------------------------------


@pytest.fixture
def twin_image(shm_dir: Path) -> Path:
    """/a/x/s -> OUTSIDE (a link), /b/x/s/pwn (a file): the two halves of an escape."""
    path = shm_dir / "twin.img"
    daxfs.mkfs(path, SIZE)
    with daxfs.mount(path) as fs:
        fs.makedirs("/a/x")
        fs.makedirs("/b/x/s")
        fs.makedirs("/c/x")
        fs.symlink(str(shm_dir / "outside"), "/a/x/s")
        with fs.open("/b/x/s/pwn", "wb") as f:
            f.write(b"pwned")
        with fs.open("/c/x/s", "wb") as f:
            f.write(b"pwned")
    (shm_dir / "outside").mkdir()
    return path


def test_cp_r_never_writes_through_a_link_it_made(
    shm_dir: Path, twin_image: Path, run: Run
) -> None:
    """Regression: the second source wrote OUTSIDE/pwn through DEST/x/s."""
    dest = shm_dir / "dest"
    dest.mkdir()
    line = run.fails("cp", "-r", f"{twin_image}:/a/x", f"{twin_image}:/b/x", dest)
    assert "symbolic link" in line, line
    assert tree_of(shm_dir / "outside") == set()
    assert (dest / "x" / "s").is_symlink()


def test_cp_never_copies_a_file_through_a_link_it_made(
    shm_dir: Path, twin_image: Path, run: Run
) -> None:
    dest = shm_dir / "dest"
    dest.mkdir()
    line = run.fails("cp", "-r", f"{twin_image}:/a/x", f"{twin_image}:/c/x", dest)
    assert "just-created symbolic link" in line, line
    assert tree_of(shm_dir / "outside") == set()


def test_cp_never_overwrites_a_file_it_made(shm_dir: Path, run: Run) -> None:
    path = shm_dir / "two.img"
    daxfs.mkfs(path, SIZE)
    with daxfs.mount(path) as fs:
        fs.makedirs("/a")
        fs.makedirs("/b")
        for d in "ab":
            with fs.open(f"/{d}/f", "wb") as f:
                f.write(d.encode())
    dest = shm_dir / "dest"
    dest.mkdir()
    line = run.fails("cp", f"{path}:/a/f", f"{path}:/b/f", dest)
    assert "just-created" in line, line
    assert (dest / "f").read_bytes() == b"a"


def test_cp_r_never_follows_a_link_already_in_the_destination(
    shm_dir: Path, twin_image: Path, run: Run
) -> None:
    """Below the named destination, a link is never followed, whoever made it."""
    dest = shm_dir / "dest"
    (dest / "x").mkdir(parents=True)
    (dest / "x" / "s").symlink_to(shm_dir / "outside")
    run.fails("cp", "-r", f"{twin_image}:/b/x", dest)
    run.fails("cp", "-r", f"{twin_image}:/c/x", dest)
    assert tree_of(shm_dir / "outside") == set()


def test_cp_still_writes_through_a_link_named_on_the_command_line(
    shm_dir: Path, twin_image: Path, run: Run
) -> None:
    """As cp(1): DST itself, a link the user named, is followed."""
    target = shm_dir / "target"
    target.write_bytes(b"old")
    link = shm_dir / "link"
    link.symlink_to(target)
    status, _, err = run("cp", f"{twin_image}:/c/x/s", link)
    assert (status, err) == (0, "")
    assert target.read_bytes() == b"pwned"
    assert link.is_symlink()


# -- 1b'. a file that says it is huge costs what it holds ---------------------------------


def test_cp_copies_holes_as_holes(shm_dir: Path, run: Run) -> None:
    """Regression: a sparse file was copied as zeros (a crafted size of 64 PiB would
    fill the host's disk; a 1 GiB file did not fit a 32 MiB image)."""
    path = shm_dir / "sparse.img"
    daxfs.mkfs(path, SIZE)
    gib = 1 << 30
    with daxfs.mount(path) as fs, fs.open("/sparse", "wb", buffering=0) as f:
        f.pwrite(b"head", 0)
        f.pwrite(b"middle", gib // 2)
        f.truncate(gib)
    out = shm_dir / "out"
    status, _, err = run("cp", f"{path}:/sparse", out)
    assert (status, err) == (0, ""), err
    assert out.stat().st_size == gib
    assert out.stat().st_blocks * 512 < 1 << 20  # the data, not the size
    with open(out, "rb") as f:
        assert f.read(4) == b"head"
        f.seek(gib // 2 - 2)
        assert f.read(10) == b"\0\0middle\0\0"
    status, _, err = run("cp", out, f"{path}:/back")  # 1 GiB into a 32 MiB image
    assert (status, err) == (0, ""), err
    with daxfs.mount(path) as fs, fs.open("/back", "rb", buffering=0) as f:
        assert fs.stat("/back").st_size == gib
        assert f.pread(6, gib // 2) == b"middle"
        assert f.pread(4, 0) == b"head"


# -- 1c. files are compared by identity, not by path ---------------------------------------


@pytest.fixture
def file_image(shm_dir: Path) -> Path:
    path = shm_dir / "file.img"
    daxfs.mkfs(path, SIZE)
    with daxfs.mount(path) as fs, fs.open("/f", "wb") as f:
        f.write(b"data" * 1000)
    return path


def test_cp_onto_a_hard_link_of_the_image_leaves_the_image_alone(
    shm_dir: Path, file_image: Path
) -> None:
    """Regression: the image was truncated while mapped (SIGBUS, the image lost)."""
    hard = shm_dir / "hard"
    os.link(file_image, hard)
    proc = daxfs_cmd("cp", f"{file_image}:/f", hard)
    err = proc.stderr.decode()
    assert proc.returncode == 1, (proc.returncode, err)
    assert err.startswith("daxfs: "), err
    assert err.count("\n") == 1, err
    assert "mounted" in err
    intact(file_image)


def test_cat_into_the_image_it_reads_is_refused(shm_dir: Path, file_image: Path) -> None:
    """Regression: cat wrote into the image it had mounted (stdout a hard link of it)."""
    hard = shm_dir / "hard"
    os.link(file_image, hard)
    with open(hard, "r+b") as out:
        proc = daxfs_cmd("cat", f"{file_image}:/f", stdout=out, stderr=subprocess.PIPE)
    err = proc.stderr.decode()
    assert proc.returncode == 1, (proc.returncode, err)
    assert "input file is output file" in err, err
    intact(file_image)


def test_cp_from_a_hard_link_of_an_image_it_writes_is_refused(
    shm_dir: Path, file_image: Path, run: Run
) -> None:
    hard = shm_dir / "hard"
    os.link(file_image, hard)
    line = run.fails("cp", hard, f"{file_image}:/copy")
    assert "mounted" in line
    intact(file_image)


def test_two_spellings_of_one_image_are_one_image(
    shm_dir: Path, file_image: Path, run: Run
) -> None:
    """A hard link (or a symbolic link) to an image names the same image, mounted once."""
    hard = shm_dir / "hard"
    os.link(file_image, hard)
    soft = shm_dir / "soft"
    soft.symlink_to(file_image)
    line = run.fails("cp", f"{file_image}:/f", f"{hard}:/f")
    assert "same file" in line, line
    status, _, err = run("mv", f"{file_image}:/f", f"{soft}:/g")
    assert (status, err) == (0, "")
    status, _, err = run("mv", f"{hard}:/g", f"{file_image}:/f")
    assert (status, err) == (0, "")
    with Mounts() as mounts:
        mounts.get(str(file_image))
        assert mounts.is_mounted(str(hard))
        assert mounts.is_mounted(str(soft))
        assert not mounts.is_mounted(str(shm_dir))


# -- 2. walks end: cycles, a directory with two names, deep trees -------------------------


@pytest.fixture(scope="module")
def cycle_master() -> Iterator[Path]:
    """/d holds 100 files and two entries that name /d itself; /e is /d's second name.

    Two ways back at every level: a walk that does not remember where it has
    been takes 2**depth steps (it ran "forever" on a 3000-entry directory).
    """
    where = Path(tempfile.mkdtemp(prefix="daxfs-cycle-", dir="/dev/shm"))
    path = where / "cycle.img"
    daxfs.mkfs(path, SIZE)
    with daxfs.mount(path) as fs:
        fs.mkdir("/d")
        fs.mkdir("/z")
        with fs.open("/d/file", "wb") as f:
            f.write(b"x")
        for i in range(100):
            fs.link("/d/file", f"/d/n{i:04d}")
        ino = fs.stat("/d").st_ino
        plant(fs, "/d", b"loop1", ino)
        plant(fs, "/d", b"loop2", ino)
        plant(fs, "/", b"e", ino)
    yield path
    shutil.rmtree(where)


@pytest.fixture
def cycle_image(shm_dir: Path, cycle_master: Path) -> Path:
    path = shm_dir / "cycle.img"
    shutil.copyfile(cycle_master, path)
    return path


@pytest.mark.timeout(120)
def test_walk_visits_each_directory_once(cycle_image: Path) -> None:
    """Regression: fs.walk ran forever through the cycle (two ways back, 3000 entries each)."""
    errors: list[OSError] = []
    with daxfs.mount(cycle_image) as fs:
        walked = list(itertools.islice(fs.walk("/", onerror=errors.append), 100))
        bottom_up = list(itertools.islice(fs.walk("/", topdown=False), 100))
    tops = [top for top, _, _ in walked]
    assert sorted(tops) == ["/", "/d", "/z"] or sorted(tops) == ["/", "/e", "/z"], tops
    assert len(bottom_up) == 3
    assert errors, "the cycle must be reported through onerror"
    assert all(e.errno == errno.EUCLEAN for e in errors), errors


def test_walk_with_followlinks_ends_at_a_link_loop(shm_dir: Path) -> None:
    """A link to a directory is walked again under its name (as os.walk); a loop is not."""
    path = shm_dir / "links.img"
    daxfs.mkfs(path, SIZE)
    errors: list[OSError] = []
    with daxfs.mount(path) as fs:
        fs.makedirs("/d/e")
        fs.symlink("/d", "/ld")
        fs.symlink("/d", "/d/e/up")  # a loop: /d/e/up/e/up/...
        walked = list(itertools.islice(fs.walk("/", onerror=errors.append, followlinks=True), 50))
    assert sorted(top for top, _, _ in walked) == ["/", "/d", "/d/e", "/ld", "/ld/e"]
    assert [e.errno for e in errors] == [errno.ELOOP, errno.ELOOP]


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "argv",
    [["tree", "{image}"], ["cp", "-r", "{image}:/", "{tmp}/out"], ["rm", "-r", "{image}:/d"]],
)
def test_commands_end_a_cycle_with_one_line(
    shm_dir: Path, cycle_image: Path, run: Run, argv: list[str]
) -> None:
    """Regression: RecursionError (exit 70), or running forever."""
    if argv[0] == "cp":
        (shm_dir / "out").mkdir()
    line = run.fails(*(a.format(image=cycle_image, tmp=shm_dir) for a in argv))
    assert "directory cycle, or a directory with two names" in line, line


@pytest.mark.timeout(120)
def test_deep_trees_are_walked_without_recursion(shm_dir: Path, run: Run) -> None:
    """Regression: tree and cp -r recursed once per level (RecursionError at ~1000).

    The recursion limit is lowered to 300 frames above this one, so that a
    tree of 400 levels (cheap to make) is deeper than any recursion could go.
    """
    path = shm_dir / "deep.img"
    daxfs.mkfs(path, SIZE)
    depth = 400
    with daxfs.mount(path) as fs:
        here = ""
        for _ in range(depth):
            here += "/a"
            fs.mkdir(here)
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(len(inspect.stack(0)) + 300)
    try:
        status, out, err = run("tree", path)
        (shm_dir / "out").mkdir()
        cp_status, _, cp_err = run("cp", "-r", f"{path}:/a", shm_dir / "out")
    finally:
        sys.setrecursionlimit(limit)
    assert (status, err) == (0, ""), err
    assert out.rstrip().endswith(f"{depth} directories, 0 files")
    assert (cp_status, cp_err) == (0, ""), cp_err
    assert (shm_dir / "out" / "/".join(["a"] * depth)).is_dir()


# -- 3. clean errors ---------------------------------------------------------------------


@pytest.mark.parametrize("size", ["99999P", "8E", "16E", "1" + "0" * 30])
def test_mkfs_of_an_impossible_size_is_one_line(shm_dir: Path, run: Run, size: str) -> None:
    """Regression: mkfs --size 99999P exited 70 (OverflowError)."""
    image = shm_dir / "huge.img"
    line = run.fails("mkfs", image, "--size", size)
    assert str(image) in line, line
    assert not image.exists()


def test_describe_names_the_path_once() -> None:
    from daxfs.cli import describe

    assert describe(Corrupted("bad thing: /a/b", "/a/b")) == "bad thing: /a/b"
    assert describe(Corrupted("bad thing", "/a/b")) == "bad thing: /a/b"
    assert describe(FileNotFoundError(errno.ENOENT, "No such file", "x")) == "No such file: x"
    assert common.printable("a\x1b]0;title\x07b\n") == "a?]0;title?b?"
    assert describe(Corrupted("bad name 'x\x1b[2J'", "/d\x1b")) == "bad name 'x?[2J': /d?"
