"""Walk a file or folder for `build` and `scan`: every file in a stable order, and every folder that could not
be listed reported, not skipped (`Path.rglob` skips unreadable folders without a word)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

TEXT_SUFFIXES = (".txt", ".md", ".json", ".jsonl")


def walk(root: str | Path) -> Iterator[tuple[Path, OSError | None]]:
    """(file, None) for each file under `root` (or `root` itself), sorted; (folder, error) for each folder that
    could not be listed. Links to folders are followed, each real folder once."""
    root = Path(root)
    if not root.is_dir():
        yield root, None
        return
    errors: list[OSError] = []
    seen: set[str] = set()
    for folder, subfolders, files in os.walk(root, onerror=errors.append, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:  # a second link to a folder already read, or a link loop: its files are checked once
            subfolders.clear()
            continue
        seen.add(real)
        subfolders.sort()
        while errors:
            error = errors.pop(0)
            yield Path(error.filename or folder), error
        for name in sorted(files):
            yield Path(folder) / name, None
    for error in errors:
        yield Path(error.filename or root), error


def describe(error: BaseException) -> str:
    """A short reason for one line of output: the OS's words without the repeated path."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return f"{type(error).__name__}: {error}"
