"""The demo's sections (``make demo``) run and say what they show, without the
benchmark and the FUSE mount (each tested in its own place: tests/bench, tests/fuse)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

DEMO = Path(__file__).resolve().parent.parent / "examples" / "demo.py"


def load_demo() -> ModuleType:
    spec = importlib.util.spec_from_file_location("daxfs_demo", DEMO)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_the_demo_sections_run_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # the demo makes demo.pmem in the working directory
    demo = load_demo()
    for section in (
        demo.show_detection,
        demo.direct_access,
        demo.power_failure,
        demo.filesystem,
        demo.crash_in_rename,
        demo.mmap_numpy,
        demo.pin_and_truncate,
        demo.block_device,
    ):
        section()
    out = capsys.readouterr().out
    assert "MIXED" not in out
    assert "as a block device:" in out
    assert "second read of 4 MiB: 0 pages read from the disk" in out
    assert "32 reads in flight as Futures: 131072 bytes, equal True" in out
    assert "direct, unaligned: InvalidArgument: [Errno 22]" in out
    assert "none mixed, fsck clean" in out
    assert not (tmp_path / "demo-block.img").exists()  # the block section's copy is removed
    assert (tmp_path / "demo.pmem").exists()
