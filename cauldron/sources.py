"""Where a subset's rows come from: a local folder or the Hub, in the source's own schema or the published one.

A local `--source DIR` holds, per subset, `DIR/<name>.parquet` or `DIR/<name>/*.parquet` (the published Cauldron's
layout is `DIR/<name>/train-*.parquet`). Rows are read a batch at a time; images stay encoded bytes.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterator

import pyarrow.parquet as pq

from datatrove.io import get_datafolder

from cauldron.registry import PUBLISHED_HUB_ID, Entry
from filters.errors import UsageError
from filters.shard_files import check_files, footer_problem

BATCH_ROWS = 64  # rows read at once: source images can be several MB each


def is_local(source: str | None) -> bool:
    return source is not None and "://" not in source and os.path.isdir(source)


def is_hub_id(source: str) -> bool:
    """`org/name` (the published Cauldron or a copy of it), not a path."""
    return re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", source) is not None and not os.path.exists(source)


def local_files(source: str, name: str) -> list[str]:
    single = os.path.join(source, f"{name}.parquet")
    if os.path.isfile(single):
        return [single]
    return sorted(glob.glob(os.path.join(source, name, "*.parquet")))


def check_source(source: str | None, from_published: bool, entries: list[Entry], explicit: bool) -> list[Entry]:
    """The entries this run can read, checked before any work. A local folder without a subset is refused when
    the subset was named, and left out (the caller reports it) under `--subsets all`."""
    if source is not None and not is_local(source) and not (from_published and is_hub_id(source)):
        raise UsageError(f"--source {source}: no such folder" + ("" if from_published else
                         " (without --from-published, --source is a local folder; the Hub sources are the "
                         "registry's, used when --source is left out)"))
    if is_local(source):
        present = [e for e in entries if local_files(source, e.name)]
        missing = [e.name for e in entries if e not in present]
        if missing and explicit:
            raise UsageError(f"--source {source}: no {missing[0]}.parquet or {missing[0]}/*.parquet for subset "
                             f"{missing[0]}")
        if not present:
            raise UsageError(f"--source {source}: holds none of the selected subsets (files <name>.parquet or "
                             f"<name>/*.parquet)")
        check_footers(source, present, from_published)
        return present
    if not from_published:
        unsourced = [e.name for e in entries if not e.hub_id]
        if unsourced:
            raise UsageError(f"subset {unsourced[0]}: no verified Hub source in the registry; rebuild it from "
                             f"--source DIR, or use --from-published ({len(unsourced)} such subsets selected)")
    return entries


def check_footers(source: str, entries: list[Entry], from_published: bool) -> None:
    """Before any work, every file's footer: a file that is not parquet, or lacks a column its entry maps (the
    published schema's `images` and `texts` with --from-published), stops the run with one line naming it."""
    owner = {os.path.relpath(path, source): e for e in entries for path in local_files(source, e.name)}

    def judge(entry: Entry):
        wanted = ("images", "texts") if from_published else tuple(entry.fields.values())
        return lambda schema: (f"no column {missing[0]!r} (subset {entry.name})"
                               if (missing := [c for c in wanted if c not in schema.names]) else None)

    check_files(get_datafolder(source), sorted(owner),
                lambda folder, path: footer_problem(folder, path, judge(owner[path])))


def _local_rows(files: list[str]) -> Iterator[dict]:
    for path in files:
        try:
            parquet = pq.ParquetFile(path)
            for batch in parquet.iter_batches(batch_size=BATCH_ROWS):
                yield from batch.to_pylist()
        except (OSError, ValueError) as error:  # pyarrow raises ArrowInvalid (a ValueError) on a torn file
            raise OSError(f"{path}: not a readable parquet file ({error})") from None


def _hub_rows(hub_id: str, config: str | None, split: str, columns: tuple[str, ...]) -> Iterator[dict]:
    from datasets import Image, List, load_dataset

    rows = load_dataset(hub_id, config or None, split=split, streaming=True)
    missing = [c for c in columns if rows.features is not None and c not in rows.features]
    if missing:  # a source whose schema moved: one line, not every row unreadable
        raise OSError(f"{hub_id}:{config or ''}:{split} has no column {missing[0]!r} (columns: "
                      f"{', '.join(rows.features)}); fix its fields in cauldron/registry.toml")
    for column, feature in (rows.features or {}).items():  # keep images as bytes: a bad one is one row's problem
        if isinstance(feature, Image):
            rows = rows.cast_column(column, Image(decode=False))
        elif isinstance(feature, List) and isinstance(feature.feature, Image):
            rows = rows.cast_column(column, List(Image(decode=False)))
    yield from rows


def rows(entry: Entry, source: str | None, from_published: bool) -> Iterator[dict]:
    """The subset's rows in order, as dicts (images as `{"bytes", "path"}`)."""
    if is_local(source):
        return _local_rows(local_files(source, entry.name))
    if from_published:
        return _hub_rows(source or PUBLISHED_HUB_ID, entry.name, "train", ("images", "texts"))
    return _hub_rows(entry.hub_id, entry.config, entry.split, tuple(entry.fields.values()))


def describe(entry: Entry, source: str | None, from_published: bool) -> str:
    if is_local(source):
        return ",".join(local_files(source, entry.name))
    if from_published:
        return f"{source or PUBLISHED_HUB_ID}:{entry.name}"
    return f"{entry.hub_id}:{entry.config}:{entry.split}"
