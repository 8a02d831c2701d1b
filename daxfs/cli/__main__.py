"""python -m daxfs.cli"""

from daxfs.cli import entry_point

entry_point()
