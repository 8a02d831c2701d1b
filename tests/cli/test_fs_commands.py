"""The filesystem commands: mkfs, fsck, info's filesystem facts, and the file tools.

Each command runs through ``main([...])`` with its output captured; a few run
as the installed command in a subprocess, to see that no error ever ends in a
traceback.  Images are 16-32 MiB files under tmp_path.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import daxfs
from daxfs.cli import main
from daxfs.cli.common import (
    ProgressBar,
    image_operand,
    parse_operand,
    parse_size,
    short,
)
from daxfs.fs.layout import BLOCK_SHIFT, BLOCK_SIZE, INODE_SIZE, Superblock, seal_bitmap_block
from tests.cli.conftest import Run

SIZE = 32 << 20


@pytest.fixture
def image(tmp_path: Path) -> Path:
    """An image holding /a/{file,hard,b/small}, /empty, /sym -> /a/file and /.hidden."""
    path = tmp_path / "fs.img"
    daxfs.mkfs(path, SIZE, label="test")
    with daxfs.mount(path) as fs:
        fs.makedirs("/a/b")
        fs.mkdir("/empty")
        with fs.open("/a/file", "wb") as f:
            f.write(b"x" * 10000)
        with fs.open("/a/b/small", "wb") as f:
            f.write(b"small\n")
        with fs.open("/.hidden", "wb") as f:
            f.write(b"h")
        fs.link("/a/file", "/a/hard")
        fs.symlink("/a/file", "/sym")
    return path


def img(image: Path, path: str = "/") -> str:
    return f"{image}:{path}"


def superblock(path: Path) -> Superblock:
    with open(path, "rb") as f:
        return Superblock.unpack(f.read(BLOCK_SIZE), "superblock")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_clean(image: Path) -> None:
    """The image is unmounted cleanly and fsck finds nothing."""
    from daxfs.fs.fsck import fsck

    assert superblock(image).state == 0
    report = fsck(image)
    assert report.clean, str(report)


# -- common: operands, sizes, progress ---------------------------------------------------


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("4096", 4096),
        ("64K", 64 << 10),
        ("64k", 64 << 10),
        ("1M", 1 << 20),
        ("1G", 1 << 30),
        ("1GiB", 1 << 30),
        ("1GB", 1 << 30),
        ("1gib", 1 << 30),
        ("1.5K", 1536),
        ("2T", 2 << 40),
        ("100B", 100),
    ],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "G", "1Q", "-1", "0", "1.3", "1 G B", "1iB", "0.1K"])
def test_parse_size_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="invalid size"):
        parse_size(text)


def test_parse_operand() -> None:
    op = parse_operand("dir/a.img:/x/y")
    assert (op.image, op.path) == ("dir/a.img", "/x/y")
    assert parse_operand("a.img:/x:/y").path == "/x:/y"  # split at the first ":/"
    assert (parse_operand("a.img:").image, parse_operand("a.img:").path) == ("a.img", "/")
    assert parse_operand("host/file").image is None
    assert parse_operand("c:file").image is None
    assert parse_operand("a.img:/x").show("/z") == "a.img:/z"
    with pytest.raises(ValueError, match="no image before"):
        parse_operand(":/x")
    assert image_operand("a.img", "ls", bare_is_root=True).path == "/"
    with pytest.raises(ValueError, match="expected IMAGE:/path"):
        image_operand("a.img", "cat")


def test_short_sizes() -> None:
    assert [short(n) for n in (500, 1024, 1536, 65536, 10 << 20, (1 << 30) + 1)] == [
        "500",
        "1.0K",
        "1.5K",
        "64K",
        "10M",
        "1.1G",
    ]


def test_progress_bar_draws_only_when_enabled_and_slow() -> None:
    from rich.console import Console

    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=100)
    with ProgressBar(True, delay=0, console=console) as bar:
        report = bar.callback("mkfs: writing the bitmap")
        for i in range(1, 5):
            report(i, 4)
        phases = bar.phases()
        phases("inodes", 4096, 8192)
    assert "mkfs: writing the bitmap" in screen.getvalue()
    quiet = io.StringIO()
    with ProgressBar(True, delay=3600, console=Console(file=quiet, force_terminal=True)) as bar:
        bar.advance(bar.add("copy", 10), 10)
    assert quiet.getvalue() == ""
    off = ProgressBar(False)
    assert off.add("x", 1) == -1
    off.update(-1, 1)
    off.callback("y")(1, 2)
    off.close()


# -- mkfs -------------------------------------------------------------------------------


def test_mkfs_creates_and_summarises(tmp_path: Path, run: Run) -> None:
    path = tmp_path / "new.img"
    out = run.ok("mkfs", path, "--size", "32M", "--label", "data", "--no-progress")
    sb = superblock(path)
    assert path.stat().st_size == 32 << 20
    assert f"uuid:     {sb.uuid_str}" in out
    assert "label:    data" in out
    assert "size:     32.0 MiB (8192 blocks of 4096 bytes)" in out
    assert f"journal:  {sb.journal_blocks * BLOCK_SIZE >> 20}.0 MiB" in out
    assert_clean(path)


def test_mkfs_refuses_an_existing_filesystem_without_force(image: Path, run: Run) -> None:
    before = superblock(image).uuid
    err = run.fails("mkfs", image, "--size", "32M")
    assert "already holds a daxfs filesystem" in err
    assert "--force" in err
    assert superblock(image).uuid == before
    run.ok("mkfs", image, "--force")  # the whole existing file
    assert superblock(image).uuid != before
    with daxfs.mount(image) as fs:
        assert fs.listdir("/") == []


def test_mkfs_refuses_other_data(tmp_path: Path, run: Run) -> None:
    path = tmp_path / "data.img"
    path.write_bytes(b"precious" * (4 << 20))
    assert "holds data that is not a daxfs" in run.fails("mkfs", path)
    assert path.read_bytes()[:8] == b"precious"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--size", "1M"], "needs at least 16 MiB"),
        (["--size", "1Q"], "invalid size '1Q'"),
        (["--size", "0"], "must be positive"),
        ([], "give --size to create it"),
        (["--size", "32M", "--label", "x" * 64], "label must be at most 63"),
    ],
)
def test_mkfs_errors_leave_nothing(tmp_path: Path, run: Run, args: list[str], message: str) -> None:
    path = tmp_path / "new.img"
    assert message in run.fails("mkfs", path, *args)
    assert not path.exists()


# -- info -------------------------------------------------------------------------------


def test_info_adds_filesystem_facts_without_changing_the_image(image: Path, run: Run) -> None:
    sb = superblock(image)
    before, mtime = digest(image), image.stat().st_mtime_ns
    out = run.ok("info", image)
    assert "backend:           file" in out  # the device report is still there
    assert f"uuid:              {sb.uuid_str}" in out
    assert "label:             test" in out
    assert "fs size:           33554432 bytes (32.0 MiB)" in out
    assert "blocks:            8192 of 4096 bytes" in out
    assert f"free blocks:       {sb.free_blocks} " in out
    assert f"inodes in use:     {sb.used_inodes}" in out
    assert "state:             clean" in out
    assert f"mount count:       {sb.mount_count} (last " in out
    assert f"journal:           1.0 MiB ({sb.journal_blocks} blocks)" in out
    assert "created:           20" in out
    assert (digest(image), image.stat().st_mtime_ns) == (before, mtime)


def test_info_json_and_mounted_state(image: Path, run: Run) -> None:
    with daxfs.mount(image):
        facts = json.loads(run.ok("info", "--json", image))
    fs = facts["filesystem"]
    assert fs["state"] == "mounted"
    assert fs["label"] == "test"
    assert fs["block_count"] == SIZE >> BLOCK_SHIFT
    assert json.loads(run.ok("info", "--json", image))["filesystem"]["state"] == "clean"


def test_info_without_or_with_a_damaged_filesystem(tmp_path: Path, image: Path, run: Run) -> None:
    plain = tmp_path / "plain.img"
    plain.write_bytes(bytes(1 << 20))
    assert "filesystem:        none (no daxfs superblock)" in run.ok("info", plain)
    with open(image, "r+b") as f:
        f.seek(100)
        f.write(b"garbage!")
    out = run.ok("info", image)
    assert (
        "filesystem:        daxfs, DAMAGED: primary superblock: superblock checksum mismatch" in out
    )
    assert "fsck --repair" in out


# -- fsck -------------------------------------------------------------------------------


def test_fsck_clean(image: Path, run: Run) -> None:
    out = run.ok("fsck", image)
    assert out.startswith("clean: 3 files, 4 directories, 1 symlinks")


def test_fsck_detects_a_flipped_byte_in_an_inode(image: Path, run: Run) -> None:
    with daxfs.mount(image) as fs:
        ino = fs.stat("/a/b/small").st_ino
    sb = superblock(image)
    where = (sb.inode_block0 << BLOCK_SHIFT) + ino * INODE_SIZE + 32
    assert ino < BLOCK_SIZE // INODE_SIZE  # in inode block 0
    with open(image, "r+b") as f:
        f.seek(where)
        byte = f.read(1)
        f.seek(where)
        f.write(bytes([byte[0] ^ 0xFF]))
    status, out, err = run("fsck", image)
    assert (status, err) == (1, "")
    assert f"inode {ino}: checksum mismatch" in out
    assert "NOT clean" in out


def test_fsck_repairs_a_leaked_block(image: Path, run: Run) -> None:
    sb = superblock(image)
    leaked = sb.block_count - 100  # free: mkfs and the fixture wrote at the start
    with open(image, "r+b") as f:
        f.seek(sb.bitmap_start << BLOCK_SHIFT)
        block = bytearray(f.read(BLOCK_SIZE))
        assert not block[leaked // 8] & (1 << leaked % 8)
        block[leaked // 8] |= 1 << leaked % 8
        seal_bitmap_block(block)
        f.seek(sb.bitmap_start << BLOCK_SHIFT)
        f.write(block)
    status, out, _ = run("fsck", "--no-progress", image)
    assert status == 1
    assert "1 blocks are marked used but nothing owns them (leaked)" in out
    out = run.ok("fsck", "--repair", image)
    assert "(leaked) [repaired]" in out
    assert out.rstrip().splitlines()[-1].startswith("clean: ")
    assert run.ok("fsck", image).startswith("clean: ")


def test_fsck_errors_are_one_line(tmp_path: Path, image: Path, run: Run) -> None:
    assert "no such file or device" in run.fails("fsck", tmp_path / "missing.img")
    plain = tmp_path / "plain.img"
    plain.write_bytes(bytes(1 << 20))
    assert "not a daxfs filesystem" in run.fails("fsck", plain)
    with daxfs.mount(image):
        assert "in use" in run.fails("fsck", image)


# -- ls, tree, stat, df, cat ------------------------------------------------------------


def test_ls(image: Path, run: Run) -> None:
    assert run.ok("ls", img(image)) == "a\nempty\nsym\n"
    assert run.ok("ls", image) == "a\nempty\nsym\n"  # a bare image is its root
    assert run.ok("ls", "-a", img(image)) == ".\n..\n.hidden\na\nempty\nsym\n"
    assert run.ok("ls", img(image, "/a/file")) == f"{img(image, '/a/file')}\n"
    both = run.ok("ls", img(image, "/a"), img(image, "/a/b"))
    assert both == f"{img(image, '/a')}:\nb\nfile\nhard\n\n{img(image, '/a/b')}:\nsmall\n"


def test_ls_long(image: Path, run: Run) -> None:
    lines = run.ok("ls", "-l", img(image)).splitlines()
    assert lines[0].startswith("total ")
    a, empty, sym = lines[1:]
    assert a.startswith("drwxr-xr-x 3 ")  # ".", "..", and b's ".."
    assert a.endswith(" a")
    assert empty.split()[1] == "2"
    assert sym.startswith("lrwxrwxrwx 1 ")
    assert sym.endswith(" sym -> /a/file")
    files = run.ok("ls", "-lh", img(image, "/a")).splitlines()
    assert files[2].startswith("-rw-r--r-- 2 ")
    assert " 9.8K " in files[2]
    assert files[2].endswith(" file")
    assert " 10000 " in run.ok("ls", "-l", img(image, "/a/hard"))


def test_ls_errors(tmp_path: Path, image: Path, run: Run) -> None:
    assert run.fails("ls", img(image, "/nope")) == (
        f"daxfs: no such file or directory: {image}:/nope"
    )
    assert "no such file or device" in run.fails("ls", tmp_path / "missing.img")
    plain = tmp_path / "plain.img"
    plain.write_bytes(bytes(1 << 20))
    err = run.fails("ls", plain)
    assert f"cannot mount {plain}" in err
    assert "no daxfs superblock" in err


def test_tree(image: Path, run: Run) -> None:
    out = run.ok("tree", image)
    assert out == (
        f"{image}\n"
        "├── a\n"
        "│   ├── b\n"
        "│   │   └── small\n"
        "│   ├── file\n"
        "│   └── hard\n"
        "├── empty\n"
        "└── sym -> /a/file\n"
        "\n"
        "3 directories, 4 files\n"
    )
    shallow = run.ok("tree", "-L", "1", "-a", img(image))
    assert shallow.splitlines()[1:4] == ["├── .hidden", "├── a", "├── empty"]
    assert shallow.endswith("2 directories, 2 files\n")
    assert run.ok("tree", img(image, "/a/b")).endswith("\n0 directories, 1 file\n")
    assert "not a directory" in run.fails("tree", img(image, "/a/file"))


def test_stat(image: Path, run: Run) -> None:
    out = run.ok("stat", img(image, "/a/file"))
    lines = out.splitlines()
    assert lines[0] == f"  File: {image}:/a/file"
    assert lines[1].split()[:6] == ["Size:", "10000", "Blocks:", "24", "IO", "Block:"]
    assert lines[1].endswith("regular file")
    assert "Links: 2" in lines[2]
    assert lines[3].startswith("Access: (0644/-rw-r--r--)  Uid: (")
    assert [line.split(":")[0] for line in lines[4:7]] == ["Access", "Modify", "Change"]
    assert lines[7:] == ["   DAX: flag off, data path DAX"]
    sym = run.ok("stat", img(image, "/sym")).splitlines()
    assert sym[0] == f"  File: {image}:/sym -> /a/file"
    assert sym[1].endswith("symbolic link")
    assert run.ok("stat", "-L", img(image, "/sym")).splitlines()[1].endswith("regular file")
    assert run.ok("stat", img(image, "/empty")).splitlines()[1].endswith("directory")
    assert "no such file or directory" in run.fails("stat", img(image, "/zzz"))
    assert "expected IMAGE:/path" in run.fails("stat", image)


def test_stat_shows_extended_attributes(image: Path, run: Run) -> None:
    with daxfs.mount(image) as fs:
        fs.setxattr("/a/file", "user.text", b"hello")
        fs.setxattr("/a/file", "user.bin", b"\x00\xff")
        fs.setxattr("/a/file", "user.long", b"y" * 100)
    lines = run.ok("stat", img(image, "/a/file")).splitlines()
    assert lines[7:10] == [
        " Xattr: user.bin=0x00ff",
        ' Xattr: user.long="' + "y" * 64 + '"... (100 bytes)',
        ' Xattr: user.text="hello"',
    ]
    assert " Xattr: user.text" in run.ok("stat", "-L", img(image, "/sym"))
    assert "Xattr" not in run.ok("stat", img(image, "/sym"))  # the link itself has none


def test_df(image: Path, run: Run) -> None:
    with daxfs.mount(image) as fs:
        v = fs.statvfs()
    used_k = (v.f_blocks - v.f_bfree) * 4
    head, row = run.ok("df", image).splitlines()
    assert head.split() == ["Image", "1K-blocks", "Used", "Available", "Use%", "Label"]
    assert row.split() == [str(image), "32768", str(used_k), str(v.f_bavail * 4), "4%", "test"]
    head, row = run.ok("df", "-h", img(image, "/a")).splitlines()
    assert head.split() == ["Image", "Size", "Used", "Avail", "Use%", "Label"]
    assert row.split()[1] == "32M"
    head, row = run.ok("df", "-i", image).splitlines()
    assert head.split()[:3] == ["Image", "Inodes", "IUsed"]
    assert row.split()[2] == str(v.f_files - v.f_ffree)
    assert "is a directory" in run.fails("df", image.parent)


def test_cat(image: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    assert main(["cat", img(image, "/a/b/small"), img(image, "/sym")]) == 0
    assert capsysbinary.readouterr().out == b"small\n" + b"x" * 10000
    assert main(["cat", img(image, "/a")]) == 1
    assert capsysbinary.readouterr().err == f"daxfs: is a directory: {image}:/a\n".encode()
    assert main(["cat", img(image, "/nope")]) == 1
    assert b"no such file or directory" in capsysbinary.readouterr().err


# -- cp ---------------------------------------------------------------------------------


def test_cp_host_to_image_and_back(tmp_path: Path, image: Path, run: Run) -> None:
    src = tmp_path / "data.bin"
    payload = os.urandom(9 << 20)  # three chunks, and a progress bar's worth
    src.write_bytes(payload)
    src.chmod(0o600)
    run.ok("cp", src, img(image, "/data.bin"))
    run.ok("cp", img(image, "/data.bin"), tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == payload
    with daxfs.mount(image) as fs:
        assert stat.S_IMODE(fs.stat("/data.bin").st_mode) == 0o600
    assert_clean(image)


def test_cp_into_a_directory_and_between_images(tmp_path: Path, image: Path, run: Run) -> None:
    other = tmp_path / "other.img"
    daxfs.mkfs(other, 16 << 20)
    run.ok("cp", img(image, "/a/file"), img(image, "/a/b/small"), img(other))
    run.ok("cp", img(image, "/a/file"), img(image, "/empty"))  # into a directory
    run.ok("cp", img(other, "/small"), img(image, "/copy"))
    with daxfs.mount(other) as fs:
        assert sorted(fs.listdir("/")) == ["file", "small"]
    with daxfs.mount(image) as fs, fs.open("/empty/file", "rb") as f:
        assert f.read() == b"x" * 10000
        with fs.open("/copy", "rb") as g:
            assert g.read() == b"small\n"


def test_cp_recursive_round_trip(tmp_path: Path, image: Path, run: Run) -> None:
    tree = tmp_path / "tree"
    (tree / "sub" / "deeper").mkdir(parents=True)
    (tree / "sub" / "deeper" / "f").write_bytes(b"deep")
    (tree / "top").write_bytes(b"top")
    (tree / "link").symlink_to("sub/deeper/f")
    run.ok("cp", "-r", tree, img(image))
    assert run.ok("ls", img(image, "/tree")) == "link\nsub\ntop\n"
    run.ok("cp", "-r", img(image, "/tree"), tmp_path / "back")
    back = tmp_path / "back"
    assert (back / "sub" / "deeper" / "f").read_bytes() == b"deep"
    assert os.readlink(back / "link") == "sub/deeper/f"
    assert (back / "top").read_bytes() == b"top"
    run.ok("cp", "-r", img(image, "/a"), img(image, "/a2"))  # within the image
    assert run.ok("tree", img(image, "/a2")).endswith("1 directory, 3 files\n")
    assert_clean(image)


def test_cp_errors(tmp_path: Path, image: Path, run: Run) -> None:
    host_dir = tmp_path / "d"
    host_dir.mkdir()
    (host_dir / "x").write_bytes(b"x")
    assert "-r not specified; omitting directory" in run.fails("cp", host_dir, img(image))
    # a file onto a directory: /empty is a directory, so is /a/b inside /a
    run.ok("mkdir", img(image, "/empty/small"))
    err = run.fails("cp", img(image, "/a/b/small"), img(image, "/empty"))
    assert err == (
        f"daxfs: cannot overwrite directory {image}:/empty/small "
        f"with non-directory {image}:/a/b/small"
    )
    assert "cannot overwrite non-directory" in run.fails("cp", "-r", host_dir, img(image, "/sym"))
    assert "are the same file" in run.fails("cp", img(image, "/a/file"), img(image, "/a/hard"))
    assert "into itself" in run.fails("cp", "-r", img(image, "/a"), img(image, "/a/b"))
    assert "target is not a directory" in run.fails(
        "cp", img(image, "/a/file"), img(image, "/.hidden"), img(image, "/sym")
    )
    assert run.fails("cp", img(image, "/nope"), tmp_path) == (
        f"daxfs: no such file or directory: {image}:/nope"
    )
    with pytest.raises(SystemExit) as usage:  # no destination: a usage error
        main(["cp", img(image, "/a/file")])
    assert usage.value.code == 2
    assert "required: DST" in run.capsys.readouterr().err
    mounted = "it is an image this command has mounted"
    assert mounted in run.fails("cp", img(image, "/a/file"), image)  # would truncate it
    assert mounted in run.fails("cp", image, img(image, "/copy"))
    assert "no such file or directory" in run.fails("cp", tmp_path / "nope", img(image))
    assert_clean(image)


def test_cp_out_of_space_names_the_copy(tmp_path: Path, run: Run) -> None:
    small = tmp_path / "small.img"
    daxfs.mkfs(small, 16 << 20)
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(20 << 20))
    err = run.fails("cp", big, img(small, "/big"))
    assert f"copying {big} to {small}:/big" in err
    assert_clean(small)


# -- mkdir, rm, mv ----------------------------------------------------------------------


def test_mkdir(image: Path, run: Run) -> None:
    run.ok("mkdir", img(image, "/new"), img(image, "/new/inner"))
    run.ok("mkdir", "-p", img(image, "/p/q/r"), img(image, "/a"))
    with daxfs.mount(image) as fs:
        assert fs.isdir("/new/inner")
        assert fs.isdir("/p/q/r")
    assert run.fails("mkdir", img(image, "/a")) == f"daxfs: file exists: {image}:/a"
    assert "no such file or directory" in run.fails("mkdir", img(image, "/x/y"))
    assert "expected IMAGE:/path" in run.fails("mkdir", "hostdir")


def test_rm(image: Path, run: Run) -> None:
    err = run.fails("rm", img(image, "/a"))
    assert err == f"daxfs: is a directory (use -r to remove it): {image}:/a"
    assert "is a directory" in run.fails("rm", img(image, "/empty"))
    run.ok("rm", img(image, "/sym"), img(image, "/a/hard"))
    run.ok("rm", "-r", img(image, "/a"), img(image, "/empty"))
    assert "no such file or directory" in run.fails("rm", img(image, "/a"))
    run.ok("rm", "-f", img(image, "/a"), img(image, "/nope"))
    assert "refusing to remove the root" in run.fails("rm", "-r", img(image, "/"))
    assert run.ok("ls", "-a", image) == ".\n..\n.hidden\n"
    assert_clean(image)


def test_mv(tmp_path: Path, image: Path, run: Run) -> None:
    run.ok("mv", img(image, "/a/file"), img(image, "/renamed"))
    run.ok("mv", img(image, "/renamed"), img(image, "/sym"), img(image, "/empty"))
    assert run.ok("ls", img(image, "/empty")) == "renamed\nsym\n"
    run.ok("mv", img(image, "/empty"), img(image, "/a"))  # into a directory
    assert run.ok("ls", img(image, "/a")) == "b\nempty\nhard\n"
    assert "no such file or directory" in run.fails("mv", img(image, "/x"), img(image, "/y"))
    other = tmp_path / "other.img"
    assert "not on the same image" in run.fails("mv", img(image, "/a"), img(other, "/a"))
    err = run.fails("mv", img(image, "/a"), img(image, "/a/b"))
    assert err.startswith(f"daxfs: {image}: cannot move directory /a into itself")
    assert "not a directory" in run.fails(
        "mv", img(image, "/.hidden"), img(image, "/a/hard"), img(image, "/a/b/small")
    )
    assert_clean(image)


def test_chattr_sets_and_clears_the_dax_flag(image: Path, run: Run) -> None:
    run.ok("chattr", "+x", img(image, "/a"), img(image, "/a/file"))
    run.ok("cp", img(image, "/.hidden"), img(image, "/a/new"))  # inherits /a's flag
    assert run.ok("stat", img(image, "/a")).splitlines()[-1] == (
        "   DAX: flag on (what is made in it inherits it)"
    )
    assert run.ok("stat", img(image, "/a/new")).splitlines()[-1] == (
        "   DAX: flag on, data path DAX"
    )
    run.ok("chattr", "-x", img(image, "/a/file"))
    last = run.ok("stat", "--dax", "never", img(image, "/a/file")).splitlines()[-1]
    assert last == "   DAX: flag off, data path not DAX"
    assert run.ok("stat", img(image, "/sym")).splitlines()[-1].startswith("   DAX: -")
    assert "no such file or directory" in run.fails("chattr", "+x", img(image, "/zzz"))
    assert "expected IMAGE:/path" in run.fails("chattr", "+x", image)
    for argv in (("chattr", img(image, "/a")), ("chattr", "+x", "-x", img(image, "/a"))):
        with pytest.raises(SystemExit) as info:
            run(*argv)
        assert info.value.code == 2
    assert_clean(image)
    with daxfs.mount(image) as fs:
        assert fs.get_dax("/a").flag
        assert fs.get_dax("/a/new").flag
        assert not fs.get_dax("/a/file").flag
        assert not fs.get_dax("/empty").flag


def test_queue_depth_option(image: Path, run: Run) -> None:
    assert run.ok("ls", "--dax", "never", "--queue-depth", "2", image) == "a\nempty\nsym\n"
    err = run.fails("ls", "--dax", "never", "--queue-depth", "0", image)
    assert "queue_depth must be an integer from 1 to 4096, not 0" in err
    assert "queue_depth is for an image opened as a block device" in run.fails(
        "ls", "--queue-depth", "2", image
    )
    assert_clean(image)


def test_persist_option(image: Path, run: Run) -> None:
    assert run.ok("ls", "--persist", "msync", image) == "a\nempty\nsym\n"
    with pytest.raises(SystemExit) as info:
        main(["ls", "--persist", "bogus", str(image)])
    assert info.value.code == 2


def test_every_command_unmounts_after_an_error(image: Path, run: Run) -> None:
    run.fails("cp", img(image, "/a"), img(image, "/z"))
    run.fails("cat", img(image, "/a"))
    run.fails("rm", img(image, "/a"))
    assert_clean(image)
    assert "state:             clean" in run.ok("info", image)


# -- as the installed command -----------------------------------------------------------


def daxfs_cmd(*argv: str | Path, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "daxfs.cli", *map(str, argv)],
        capture_output=True,
        input=stdin,
        env={**os.environ, "DAXFS_DEBUG": ""},
        check=False,
    )


def test_subprocess_session(tmp_path: Path) -> None:
    image = tmp_path / "fs.img"
    host = tmp_path / "hello.txt"
    host.write_bytes(b"hello\n")
    assert daxfs_cmd("mkfs", image, "--size", "16M").returncode == 0
    assert daxfs_cmd("mkdir", "-p", img(image, "/docs")).returncode == 0
    assert daxfs_cmd("cp", host, img(image, "/docs")).returncode == 0
    cat = daxfs_cmd("cat", img(image, "/docs/hello.txt"))
    assert (cat.returncode, cat.stdout, cat.stderr) == (0, b"hello\n", b"")
    assert daxfs_cmd("fsck", image).stdout.startswith(b"clean: 1 files")


@pytest.mark.parametrize(
    "argv",
    [
        ["ls", "{image}:/missing"],
        ["cat", "{image}:/docs"],
        ["cp", "{tmp}", "{image}:/"],
        ["rm", "{image}:/docs"],
        ["mkfs", "{image}"],
        ["fsck", "{tmp}/nothing.img"],
        ["mkfs", "{tmp}/x.img", "--size", "lots"],
        ["mv", "{image}:/docs", "{tmp}/other.img:/docs"],
    ],
)
def test_subprocess_errors_have_no_traceback(tmp_path: Path, argv: list[str]) -> None:
    image = tmp_path / "fs.img"
    daxfs.mkfs(image, 16 << 20)
    with daxfs.mount(image) as fs:
        fs.mkdir("/docs")
        fs.mkdir("/docs/inner")
    proc = daxfs_cmd(*(a.format(image=image, tmp=tmp_path) for a in argv))
    err = proc.stderr.decode()
    assert proc.returncode == 1, err
    assert "Traceback" not in err
    assert err.startswith("daxfs: ")
    assert err.count("\n") == 1


def test_cat_into_a_closed_pipe(tmp_path: Path) -> None:
    image = tmp_path / "fs.img"
    daxfs.mkfs(image, 32 << 20)
    with daxfs.mount(image) as fs, fs.open("/big", "wb") as f:
        f.write(bytes(12 << 20))
    proc = subprocess.Popen(
        [sys.executable, "-m", "daxfs.cli", "cat", img(image, "/big")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    assert proc.stdout.read(10) == bytes(10)
    proc.stdout.close()
    err = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(timeout=30) == 1
    assert b"Traceback" not in err
    assert_clean(image)


# -- bugs found below the CLI (daxfs/fs), kept failing until fixed -------------------------


def test_fsck_names_a_missing_superblock_once(tmp_path: Path) -> None:
    from daxfs.fs.fsck import fsck

    plain = tmp_path / "plain.img"
    plain.write_bytes(bytes(16 << 20))
    text = str(fsck(plain))
    assert "primary superblock: primary superblock:" not in text


def test_mkfs_of_a_too_small_size_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "small.img"
    with pytest.raises(ValueError, match="at least 16 MiB"):
        daxfs.mkfs(path, 1 << 20)
    assert not path.exists()


def test_stat_of_a_damaged_xattr_block_is_one_line(image: Path, run: Run) -> None:
    with daxfs.mount(image) as fs:
        fs.setxattr("/a/file", "user.text", b"hello")
        inode, _ = fs._existing("/a/file")
        block = inode.rec.xattr
    with open(image, "r+b") as f:
        f.seek((block << BLOCK_SHIFT) + 100)
        f.write(b"\x01")
    err = run.fails("stat", img(image, "/a/file"))
    assert "checksum mismatch" in err
    assert len(err.strip().splitlines()) == 1
