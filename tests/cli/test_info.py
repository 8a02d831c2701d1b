"""daxfs info, and the CLI's error contract: one line, non-zero exit, no traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from daxfs.block import open_block
from daxfs.cli import main


def test_info_reports_backend_and_reasons(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = tmp_path / "x.img"
    image.write_bytes(bytes(1 << 20))
    assert main(["info", str(image)]) == 0
    out = capsys.readouterr().out
    assert "backend:           file" in out
    assert "granularity:       PAGE" in out
    assert "persist:           msync" in out
    assert "why: mmap refused MAP_SYNC" in out
    assert "flush instruction:" in out
    assert "1048576 bytes (1.0 MiB)" in out


def test_info_json_with_cpu_persist(shm_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shm_path.write_bytes(bytes(1 << 20))
    assert main(["info", "--json", "--persist", "cpu", str(shm_path)]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["granularity"] == "CACHE_LINE"
    assert facts["persist_method"] == "cpu"
    assert facts["power_fail_safe"] is False
    assert facts["flush_instruction"] in ("clwb", "clflushopt", "clflush")
    assert "NOT power-fail safe" in facts["reasons"]["persist"]


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("missing.img", "no such file or device"),
        (".", "is a directory"),
        ("/dev/null", "not device-DAX"),
    ],
)
def test_errors_are_one_line(
    tmp_path: Path, target: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = target if target.startswith("/") else str(tmp_path / target)
    assert main(["info", path]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("daxfs: ")
    assert message in err


def test_no_traceback_from_the_installed_command(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "daxfs.cli", "info", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        env={**os.environ, "DAXFS_DEBUG": ""},
        check=False,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("daxfs: ")


def test_usage_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["info"])
    assert info.value.code == 2
    assert "usage" in capsys.readouterr().err


def test_info_says_how_bios_reach_the_image(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = tmp_path / "b.img"
    image.write_bytes(bytes(1 << 20))
    # what info must say depends on whether tmp_path's file system takes O_DIRECT
    # and on whether io_uring can be set up here (its fallback: tests/block/test_uring.py)
    with open_block(image) as dev:
        direct = dev.direct
        engine, reason = dev.engine, dev.engine_reason
    mode = "O_DIRECT" if direct else "buffered"
    assert f", {mode}, queue depth 8)" in engine
    assert main(["info", str(image)]) == 0
    out = capsys.readouterr().out
    assert f"block I/O:         {engine}" in out
    assert f"why: {reason}" in out
    assert ("why: O_DIRECT;" in out) is direct
    assert main(["info", "--json", str(image)]) == 0
    block = json.loads(capsys.readouterr().out)["block"]
    assert block["direct"] is direct
    assert block["logical_block_size"] == 512
    odd = tmp_path / "odd.img"
    odd.write_bytes(bytes(5000))  # pmem maps it; as a block device it is not whole sectors
    assert main(["info", str(odd)]) == 0
    out = capsys.readouterr().out
    assert "block I/O:         not available" in out
    assert "multiple of the logical block size" in out


def test_info_says_what_a_block_mount_would_cache(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole image against MemAvailable, or --cache-size checked as mount checks it."""
    from daxfs.block import cache as block_cache
    from daxfs.cli import info
    from daxfs.pagecache import cache as page_cache

    image = tmp_path / "x.img"
    image.write_bytes(bytes(4 << 20))
    for module in (info, page_cache):
        monkeypatch.setattr(module, "memory_available", lambda: 2 << 20)
    assert block_cache.memory_available() is not None
    assert main(["info", str(image)]) == 0
    out = capsys.readouterr().out
    assert "block cache:       4.0 MiB, the whole image of 2.0 MiB available (ENOMEM" in out
    assert main(["info", str(image), "--cache-size", "1M"]) == 0
    assert "block cache:       1.0 MiB page cache of 2.0 MiB available" in capsys.readouterr().out
    assert main(["info", "--json", str(image), "--cache-size", "64K"]) == 0
    cache = json.loads(capsys.readouterr().out)["cache"]
    assert cache == {"bytes": 65536, "bounded": True, "memory_available": 2 << 20, "fits": True}
    for bad, said in (("3M", "more than the 2097152 bytes"), ("4K", "below the minimum")):
        assert main(["info", str(image), "--cache-size", bad]) == 1
        err = capsys.readouterr().err
        assert err.startswith("daxfs: ")
        assert said in err
        assert err.count("\n") == 1
