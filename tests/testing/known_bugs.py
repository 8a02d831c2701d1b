"""Operations the bounded tool runs leave out while a bug they hit is being fixed.

Each entry names the finding in /work/wt/tools-findings.md (the report to the lead)
and the developer fixing it; delete the entry when the fix lands on main, and the
bounded runs cover the operation again.
"""

from __future__ import annotations

import os

from daxfs.testing.corrupt import STRUCTURES

#: fsx operations left out (kind -> why)
FSX_WITHOUT: dict[str, str] = {}  # F1, F2 fixed on main (8a7bd39, 99e65e2)
#: namespace-stress operations left out
NSSTRESS_WITHOUT: dict[str, str] = {}  # F3 fixed on main (99e65e2)
#: budget of each long (slow) run, seconds
SLOW_SECONDS = float(os.environ.get("DAXFS_SLOW_SECONDS", "120"))
#: (structure, checksums resealed) kinds of corruption the bounded fuzz runs take: those
#: that meet no open bug (F4-F15 of tools-findings.md are fixed on main): all of them
_OPEN: set[tuple[str, bool]] = set()
FUZZ_KINDS = [
    (s, sealed) for sealed in (False, True) for s in STRUCTURES if (s, sealed) not in _OPEN
]
