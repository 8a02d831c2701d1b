"""Run every benchmark: each bench/*.py that defines a top-level ``main(argv)``.

    python bench/run.py [--quick] [--plain] [--only NAME ...]

Options other than --only are passed to every benchmark.  A benchmark module
is recognised from its source (a top-level ``def main``), so helper modules
are never imported; NOT_BENCHMARKS names the modules with a ``main`` that are
not part of the suite (tests/bench/test_run.py checks the others take
--quick and --plain).  Modules run in name order; the exit status is the
highest any of them returned.

bench/ is the first entry of sys.path when these scripts run, so a module
named like a standard-library module (bench/mmap.py) would replace it for
daxfs too; such names are refused.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import cast

BENCH_DIR = Path(__file__).resolve().parent
# helpers, and the focused tools with options of their own (an image path, rounds),
# run by hand: main(["--quick", ...]) would stop the run there
NOT_BENCHMARKS = frozenset(
    {
        "run",
        "common",
        "cow_copy",
        "create_loop",
        "stat_scale",
        "stat_steps",
        "block_ab",
        "fuse_tap",
    }
)


def defines_main(path: Path) -> bool:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return any(isinstance(node, ast.FunctionDef) and node.name == "main" for node in tree.body)


def discover() -> list[str]:
    """Names of the benchmark modules in bench/, sorted."""
    return sorted(
        path.stem
        for path in BENCH_DIR.glob("*.py")
        if path.stem not in NOT_BENCHMARKS and not path.stem.startswith("_") and defines_main(path)
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the daxfs benchmarks in bench/.")
    parser.add_argument(
        "--only", action="append", metavar="NAME", help="run only this benchmark (repeatable)"
    )
    args, passed = parser.parse_known_args(argv)
    names = discover()
    if args.only:
        unknown = sorted(set(args.only) - set(names))
        if unknown:
            parser.error(f"no benchmark named {', '.join(unknown)} (have: {', '.join(names)})")
        names = [name for name in names if name in args.only]
    shadowing = [name for name in names if name in sys.stdlib_module_names]
    if shadowing:
        for name in shadowing:
            print(
                f"bench/{name}.py has the name of a standard-library module and would "
                f"replace it; rename it (e.g. bench/{name}_bench.py)",
                file=sys.stderr,
            )
        return 2
    if str(BENCH_DIR) not in sys.path:
        sys.path.insert(0, str(BENCH_DIR))
    status = 0
    for i, name in enumerate(names):
        if i:
            print()
        print(f"== bench/{name}.py {' '.join(passed)}".rstrip(), flush=True)
        module = importlib.import_module(name)
        bench_main = cast(Callable[[list[str]], int | None], module.main)
        status = max(status, bench_main(list(passed)) or 0)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
