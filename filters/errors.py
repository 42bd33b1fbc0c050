"""The one error type for user mistakes, shared by every command (a step's flags, the decontamination CLI)."""


class UsageError(Exception):
    """A user mistake (a flag, a path, an input file): reported as one line and exit status 2."""
