"""Tools for testing daxfs and code built on it.

``SimulatedPmem`` models power failure on x86 persistent memory,
``SimulatedBlockDevice`` on a disk with a volatile write cache;
``DeviceTests`` is the conformance suite every device passes (subclass it
with a ``make_device`` fixture to test a new backend).  The modules that
find bugs (docs/ARCHITECTURE.md, "Tools that keep bugs found"): ``crash``
(crash at every fence), ``faults`` (fail the N-th device operation or
allocation), ``fsx`` (model-checked random workload on one file),
``nsstress`` and ``stress`` (threaded namespace stress, ``daxfs stress``),
``images``, ``corrupt``, ``child`` and ``fuzz`` (the corrupted-image fuzzer);
for block devices ``simblock``, ``blockfaults`` and ``block_tests``.
"""

from daxfs.testing.simblock import SimulatedBlockDevice
from daxfs.testing.simulated import PowerFailure, SimulatedPmem

__all__ = ["PowerFailure", "SimulatedBlockDevice", "SimulatedPmem"]
