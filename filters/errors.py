"""The one error type for user mistakes, shared by every command (a step's flags, the decontamination CLI), and how
every command ends on Ctrl-C."""

import sys
from collections.abc import Callable


class UsageError(Exception):
    """A user mistake (a flag, a path, an input file): reported as one line and exit status 2."""


def run_main(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """A command's `main` as a script runs it: Ctrl-C is one line and status 130, not a traceback."""
    try:
        return main(argv)
    except KeyboardInterrupt:
        print("interrupted; run the same command to resume", file=sys.stderr)
        return 130
