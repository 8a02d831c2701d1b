"""bench/run.py (``make bench``) runs only benchmarks that take the suite's options.

run.py calls ``main(["--quick", "--plain", ...])`` of every module it discovers;
a focused tool with options of its own (an image path, rounds) would stop the
whole run there (argparse exits, or ``main()`` takes no argv), so every
discovered module must take those options (its ``--help`` says so), and the
tools are listed in NOT_BENCHMARKS.  Nothing is timed: only ``--help`` runs.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture
def run() -> Iterator[ModuleType]:
    sys.path.insert(0, str(BENCH))
    try:
        import run

        yield run
    finally:
        sys.path.remove(str(BENCH))


def options(module: ModuleType, capsys: pytest.CaptureFixture[str]) -> str:
    """The help text of ``module.main(["--help"])``, as run.py would call it."""
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code in (0, None)
    return capsys.readouterr().out


def test_every_discovered_benchmark_takes_the_suite_options(
    run: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    names = run.discover()
    assert {"fs", "floors"} <= set(names)  # the discovery itself works
    for name in names:
        text = options(importlib.import_module(name), capsys)
        missing = [option for option in ("--quick", "--plain") if option not in text]
        assert missing == [], f"bench/{name}.py lacks {missing}: list it in NOT_BENCHMARKS"


def test_the_focused_tools_are_not_run(run: ModuleType) -> None:
    names = set(run.discover())
    for tool in ("cow_copy", "create_loop", "stat_scale", "stat_steps"):
        assert (BENCH / f"{tool}.py").exists()
        assert tool not in names
