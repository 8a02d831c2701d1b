"""Tools for testing daxfs and code built on it.

``SimulatedPmem`` models power failure on x86 persistent memory;
``DeviceTests`` is the conformance suite every device passes (subclass it
with a ``make_device`` fixture to test a new backend).
"""

from daxfs.testing.simulated import PowerFailure, SimulatedPmem

__all__ = ["PowerFailure", "SimulatedPmem"]
