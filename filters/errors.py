"""The one error type for user mistakes, shared by every command (a step's flags, the decontamination CLI), and how
every command ends on Ctrl-C."""

import functools
import sys
from collections.abc import Callable


class UsageError(Exception):
    """A user mistake (a flag, a path, an input file): reported as one line and exit status 2."""


def command(main: Callable[[list[str] | None], int]) -> Callable[[list[str] | None], int]:
    """A command's `main`: a `UsageError` becomes one `error:` line and status 2, Ctrl-C one line and 130, never
    a traceback (the same command resumes)."""

    @functools.wraps(main)
    def run(argv: list[str] | None = None) -> int:
        try:
            return main(argv)
        except UsageError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted; run the same command to resume", file=sys.stderr)
            return 130
    return run
