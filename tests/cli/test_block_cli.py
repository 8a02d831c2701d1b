"""The CLI on an image reached through the block layer (``--dax never``).

mkfs, cp, cat, ls, fsck through the file backend (O_DIRECT where the file
system allows) and the buffer cache; the same image then read through DAX,
and errors one line naming the image.
"""

from __future__ import annotations

from pathlib import Path

from tests.cli.conftest import Run


def test_mkfs_cp_ls_cat_fsck_through_the_block_layer(tmp_path: Path, run: Run) -> None:
    image = tmp_path / "blk.img"
    out = run.ok("mkfs", image, "--size", "16M", "--dax", "never")
    assert f"created a daxfs filesystem on {image}" in out
    host = tmp_path / "host.txt"
    host.write_bytes(b"through bios\n" * 1000)
    run.ok("cp", host, f"{image}:/copy.txt", "--dax", "never")
    run.ok("mkdir", f"{image}:/dir", "--dax", "never")
    assert run.ok("ls", image, "--dax", "never") == "copy.txt\ndir\n"
    assert run.ok("cat", f"{image}:/copy.txt", "--dax", "never") == "through bios\n" * 1000
    assert "clean" in run.ok("fsck", image, "--dax", "never")
    # the same image through DAX (the file as emulated pmem): the format is the same
    assert run.ok("cat", f"{image}:/copy.txt") == "through bios\n" * 1000
    assert "clean" in run.ok("fsck", image)


def test_cp_out_of_a_block_backed_image(tmp_path: Path, run: Run) -> None:
    image = tmp_path / "blk.img"
    run.ok("mkfs", image, "--size", "16M")
    host = tmp_path / "in.bin"
    host.write_bytes(bytes(range(256)) * 4096)
    run.ok("cp", host, f"{image}:/f", "--dax", "never")
    run.ok("cp", f"{image}:/f", tmp_path / "out.bin", "--dax", "never")
    assert (tmp_path / "out.bin").read_bytes() == host.read_bytes()


def test_block_errors_are_one_line_naming_the_image(tmp_path: Path, run: Run) -> None:
    missing = tmp_path / "missing.img"
    assert str(missing) in run.fails("ls", missing, "--dax", "never")
    assert str(missing) in run.fails("fsck", missing, "--dax", "never")
    other = tmp_path / "zeros.img"
    other.write_bytes(bytes(16 << 20))
    line = run.fails("fsck", other, "--dax", "never")
    assert "not a daxfs" in line
    line = run.fails("ls", other, "--dax", "never")
    assert str(other) in line


def test_cache_size_bounds_a_block_backed_image(tmp_path: Path, run: Run) -> None:
    """--cache-size with --dax never: the page cache of daxfs.pagecache.bounded; a file
    larger than the cache goes in and comes back out whole; without --dax never it is a
    one-line EINVAL naming why."""
    image = tmp_path / "blk.img"
    run.ok("mkfs", image, "--size", "32M")
    host = tmp_path / "in.bin"
    host.write_bytes(bytes(range(251)) * 8192)  # 2 MiB: 32 times the cache
    bounded = ("--dax", "never", "--cache-size", "64K")
    run.ok("cp", host, f"{image}:/f", *bounded)
    run.ok("cp", f"{image}:/f", tmp_path / "out.bin", *bounded)
    assert (tmp_path / "out.bin").read_bytes() == host.read_bytes()
    assert run.ok("ls", image, *bounded) == "f\n"
    assert "clean" in run.ok("fsck", image)
    line = run.fails("ls", image, "--cache-size", "64K")
    assert "cache_size is for a block-backed mount" in line
    line = run.fails("ls", image, "--dax", "never", "--cache-size", "lots")
    assert "not a size" in line
