"""Shard files shared by steps and pipelines: task `rank` works on input file number `rank`, and what a task
writes appears under its final name only once complete."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

from datatrove.io import DataFolder


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
