"""Shard files shared by steps and pipelines: task `rank` works on input file number `rank`, and what a task
writes appears under its final name only once complete."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import IO

import pyarrow as pa
import pyarrow.parquet as pq
from datatrove.io import DataFolder

from filters.errors import UsageError


def shard_name(shard: int) -> str:
    """`00042`: how logs, stats, outputs and caches of shard 42 are named."""
    return f"{shard:05d}"


@contextmanager
def write_atomically(folder: DataFolder, name: str, mode: str = "wb") -> Iterator[IO]:
    """Write `name` as `name.tmp`, renamed into place when the block ends without an error (deleted if not)."""
    tmp = f"{name}.tmp"
    try:
        with folder.open(tmp, mode) as f:
            yield f
    except BaseException:
        if folder.exists(tmp):
            folder.rm(tmp)
        raise
    folder.mv(tmp, name)


class TempFile:
    """An output file written under `<name>.tmp`; subclasses close what they wrap around `self.file` in `_close`."""

    def __init__(self, folder: DataFolder, filename: str):
        self.folder, self.filename, self.tmp_name = folder, filename, f"{filename}.tmp"
        self.file = folder.open(self.tmp_name, "wb")

    def _close(self) -> None:
        self.file.close()

    def commit(self) -> None:
        self._close()
        self.folder.mv(self.tmp_name, self.filename)

    def abort(self) -> None:
        try:
            self._close()
        except Exception:  # noqa: BLE001 - already failing; the file is deleted next
            self.file.close()
        if self.folder.exists(self.tmp_name):
            self.folder.rm(self.tmp_name)


def check_files(folder: DataFolder, files: list[str], problem: Callable[[DataFolder, str], str | None]) -> None:
    """Run `problem` on every file (16 at a time: remote footers are latency-bound); the first one found stops the
    run with one line."""
    with ThreadPoolExecutor(16) as pool:
        problems = [p for p in pool.map(lambda f: problem(folder, f), files) if p]
    if problems:
        more = f" (and {len(problems) - 1} more files)" if len(problems) > 1 else ""
        raise UsageError(problems[0] + more)


def footer_problem(folder: DataFolder, path: str, judge: Callable[[pa.Schema], str | None]) -> str | None:
    """What is wrong with a parquet file, read from its footer alone: not parquet, or what `judge` finds in its
    schema; one line naming the file, or None."""
    try:
        with folder.open(path, "rb") as f:
            schema = pq.ParquetFile(f).schema_arrow
    except Exception as error:  # noqa: BLE001 - any failure to read the footer is the file's problem
        return f"{folder.resolve_paths(path)}: not a readable parquet file ({type(error).__name__})"
    problem = judge(schema)
    return f"{folder.resolve_paths(path)}: {problem}" if problem else None
