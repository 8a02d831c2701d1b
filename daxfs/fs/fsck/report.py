"""What fsck tells its caller: a Report of Problems, each one line."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

#: progress(phase, done, total): called now and then during long passes
Progress = Callable[[str, int, int], None]


@dataclasses.dataclass
class Problem:
    """One thing fsck found wrong."""

    structure: str  # what is wrong: "inode 12", "bitmap block 3", "/a/b", "superblock"
    message: str
    repaired: bool = False

    def __str__(self) -> str:
        """One line, whatever the names in it hold (control characters and
        undecodable bytes are escaped, so the line prints on any terminal)."""
        tail = " [repaired]" if self.repaired else ""
        return _one_line(f"{self.structure}: {self.message}{tail}")

    @property
    def key(self) -> tuple[str, str]:
        return self.structure, self.message


@dataclasses.dataclass
class Report:
    """What fsck checked and found.

    ``clean`` is the answer: True when every pass ran and nothing is left
    wrong (with repair: everything found was repaired and a fresh check of the
    repaired image found nothing).
    """

    problems: list[Problem] = dataclasses.field(default_factory=list)
    files: int = 0
    directories: int = 0
    symlinks: int = 0
    blocks_used: int = 0
    block_count: int = 0
    journal_replayed: bool = False
    #: a committed transaction the next mount replays (a crash's state, not damage):
    #: a check-only fsck checked a private copy with it replayed; None: none
    replay_pending: str | None = None
    complete: bool = True  # False when a pass could not run (e.g. no superblock)

    @property
    def clean(self) -> bool:
        """No problem left unrepaired, and every pass ran."""
        return self.complete and all(p.repaired for p in self.problems)

    @property
    def remaining(self) -> list[Problem]:
        """The problems not repaired."""
        return [p for p in self.problems if not p.repaired]

    def __str__(self) -> str:
        lines = [str(p) for p in self.problems]
        if self.replay_pending is not None:
            lines.insert(0, self.replay_pending)
        summary = (
            f"{self.files} files, {self.directories} directories, {self.symlinks} symlinks, "
            f"{self.blocks_used}/{self.block_count} blocks used"
        )
        if not self.complete:
            lines.append("check incomplete: see the problems above")
        lines.append(("clean: " if self.clean else "NOT clean: ") + summary)
        return "\n".join(lines)


def _one_line(text: str) -> str:
    """``text`` with every non-printable character (newline, escape, a surrogate
    from os.fsdecode) written as its Python escape."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
