"""``daxfs info PATH``: what a path is as persistent memory, and why."""

from __future__ import annotations

import argparse
import json
from typing import Any

from daxfs.pmem import PmemDevice, cpu, open_device


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "info",
        help="show how a path is used as persistent memory",
        description="Show the backend, size, granularity, persist method and CPU flush "
        "instruction chosen for PATH, and why each was chosen.",
    )
    parser.add_argument("path", metavar="PATH", help="image file or /dev/daxN.M")
    parser.add_argument(
        "--persist",
        choices=("auto", "cpu", "msync"),
        default="auto",
        help="persist method to evaluate (default: auto)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(run=run)


def describe_device(dev: PmemDevice) -> dict[str, Any]:
    det = dev.detection
    features = cpu.cpu_features()
    return {
        "path": dev.path,
        "backend": det.backend.value,
        "size": dev.size,
        "granularity": det.granularity.name,
        "persist_method": det.persist_method,
        "flush_instruction": det.flush_instruction,
        "power_fail_safe": det.power_fail_safe,
        "native_extension": cpu.native_available(),
        "cpu": sorted(name for name, ok in features.items() if ok and name != "x86"),
        "reasons": dict(det.reasons),
    }


def run(args: argparse.Namespace) -> int:
    try:
        dev = open_device(args.path, persist=args.persist)
    except PermissionError:
        dev = open_device(args.path, persist=args.persist, readonly=True)
    with dev:
        facts = describe_device(dev)
    if args.json:
        print(json.dumps(facts, indent=2))
        return 0
    why = facts["reasons"]
    rows = [
        ("path", facts["path"], ""),
        ("backend", facts["backend"], why.get("backend", "")),
        ("size", f"{facts['size']} bytes ({_human(facts['size'])})", ""),
        ("granularity", facts["granularity"], why.get("granularity", "")),
        ("persist", facts["persist_method"], why.get("persist", "")),
        ("flush instruction", _flush_text(facts), why.get("flush instruction", "")),
        ("power-fail safe", "yes" if facts["power_fail_safe"] else "NO", ""),
        ("native extension", "loaded" if facts["native_extension"] else "missing", ""),
        ("cpu features", " ".join(facts["cpu"]) or "none", ""),
    ]
    for name, value, reason in rows:
        line = f"{name + ':':<19}{value}"
        if reason:
            line += f"\n{'':<19}  why: {reason}"
        print(line)
    return 0


def _flush_text(facts: dict[str, Any]) -> str:
    name = facts["flush_instruction"]
    if name is None:
        return "none"
    if facts["persist_method"] == "msync":
        return f"{name} (available, unused: persist is msync)"
    return str(name)


def _human(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{n} B"
        value /= 1024
    raise AssertionError("unreachable")
