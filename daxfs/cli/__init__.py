"""The ``daxfs`` command line: subcommands by module, errors as one line.

Modules: ``mkfs``, ``fsck``, ``info``; the file tools that read an image
(``files``: ls, tree, stat, df, cat), that copy (``cp``) and that change
names (``edit``: mkdir, rm, mv), the FUSE mount (``mounting``: mount,
umount); ``common`` holds what they share (IMAGE:/path
operands, sizes, mounts, progress bars).  Each module has ``register(sub)``,
which adds its subcommands and sets ``run`` on their arguments.

Every error a user can cause ends the command with one line on stderr,
``daxfs: <what went wrong>``, and a non-zero exit status: 1 for an OSError
(the message names the path), 2 for bad usage (argparse), 130 for Ctrl-C.
Anything else is a bug and exits 70 with a one-line report; set
``DAXFS_DEBUG=1`` to see the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence

from daxfs.cli import cp, edit, files, fsck, info, mkfs, mounting, stress
from daxfs.cli.common import printable

EXIT_ERROR = 1
EXIT_BUG = 70
EXIT_INTERRUPTED = 130

COMMANDS = (mkfs, fsck, info, files, cp, edit, stress, mounting)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="daxfs", description="daxfs: a persistent-memory DAX storage stack"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status: int = args.run(args)
        return status
    except KeyboardInterrupt:
        print("daxfs: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader went away (daxfs cat ... | head): not an error to report
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        return EXIT_ERROR
    except (OSError, ValueError, BufferError) as exc:
        print(f"daxfs: {describe(exc)}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as exc:
        if os.environ.get("DAXFS_DEBUG"):
            raise
        print(
            f"daxfs: internal error ({type(exc).__name__}: {exc}); "
            "rerun with DAXFS_DEBUG=1 for the traceback",
            file=sys.stderr,
        )
        return EXIT_BUG


def describe(exc: BaseException) -> str:
    """One line for an error: strerror and path for OSError, the message otherwise.

    The path is ``exc.filename`` (daxfs errors carry the path of the operation
    there); it is added unless the message holds it already.  Control
    characters (a name from a crafted image may hold any) are shown as '?'.
    """
    if isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror
        if exc.filename is not None and os.fsdecode(exc.filename) not in text:
            text += f": {os.fsdecode(exc.filename)}"
    else:
        text = str(exc)
    return printable(text.replace("\n", " "))


def entry_point() -> None:
    sys.exit(main())
