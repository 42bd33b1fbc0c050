"""Per-shard scores on disk, keyed by what was scored, so a model judges each text window or image once.

A step that scores (perplexity, NSFW) loads its shard's scores at the start of a task and scores only what is
not there. Keys are content hashes (of the scored token window, of the image bytes); the folder is chosen by the
caller from the model's identity, so another model never reads these scores. New scores are saved as they are
computed, in small part files (`NNNNN/part-000001.parquet`), so a task killed part-way keeps what it scored; the
task compacts them into `NNNNN.parquet` when it finishes. A calibrated cut needs one score per document (or per
image), duplicates included, so each finished task also writes the scores of what it judged, in order
(`NNNNN.judged.parquet`, by the scoring pass only); the cut is read off those, and the filtering pass reuses the keyed scores. Each file
has one writer (the shard's task), so the folder can live on any fsspec filesystem.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from datatrove.data import DocumentsPipeline
from datatrove.io import DataFolder, get_datafolder
from datatrove.pipeline.writers.disk_base import DiskWriter

from filters.batched import BatchedFilter
from filters.shard_files import shard_name, write_atomically

SCHEMA = pa.schema([("key", pa.string()), ("value", pa.float64())])


class ShardScoreCache:
    """`folder/NNNNN.parquet` (+ `folder/NNNNN/part-*.parquet` while a task runs): content key -> score."""

    def __init__(self, folder: str):
        self.folder = folder

    def _files(self, folder: DataFolder, shard: int) -> list[str]:
        name = shard_name(shard)
        files = [f"{name}.parquet"] if folder.isfile(f"{name}.parquet") else []  # not NNNNN.judged.parquet
        if folder.isdir(name):
            files += sorted(p for p in folder.list_files(name) if p.endswith(".parquet"))
        return files

    def load(self, shard: int) -> dict[str, float]:
        folder = get_datafolder(self.folder)
        scores: dict[str, float] = {}
        for name in self._files(folder, shard):
            with folder.open(name, "rb") as f:
                table = pq.read_table(f)
            scores.update(zip(table.column("key").to_pylist(), table.column("value").to_pylist()))
        return scores

    @staticmethod
    def _write(folder: DataFolder, name: str, scores: dict[str, float]) -> None:
        table = pa.table({"key": list(scores), "value": [float(v) for v in scores.values()]}, schema=SCHEMA)
        with write_atomically(folder, name) as f:
            pq.write_table(table, f)

    def save_part(self, shard: int, scores: dict[str, float]) -> None:
        """Append new scores as one more part file of the shard."""
        folder = get_datafolder(self.folder)
        parts = [p for p in self._files(folder, shard) if "/" in p]
        self._write(folder, f"{shard_name(shard)}/part-{len(parts):06d}.parquet", scores)

    def has_parts(self, shard: int) -> bool:
        return get_datafolder(self.folder).isdir(shard_name(shard))

    def compact(self, shard: int, scores: dict[str, float]) -> None:
        """Replace the shard's files by one holding `scores` (every score it has, old and new)."""
        folder = get_datafolder(self.folder)
        parts = [p for p in self._files(folder, shard) if "/" in p]
        self._write(folder, f"{shard_name(shard)}.parquet", scores)
        for part in parts:
            folder.rm(part)

    def save_judged(self, shard: int, values: list[float]) -> None:
        """The score of every document (or image) the shard's task judged, duplicates included."""
        table = pa.table({"value": pa.array(values, type=pa.float64())})
        with write_atomically(get_datafolder(self.folder), f"{shard_name(shard)}.judged.parquet") as f:
            pq.write_table(table, f)

    def values(self, shards: list[int]) -> Iterator[np.ndarray]:
        """Each finished shard's judged scores as an array, one shard at a time (memory flat in the number of
        shards)."""
        folder = get_datafolder(self.folder)
        for shard in shards:
            name = f"{shard_name(shard)}.judged.parquet"
            if folder.isfile(name):
                with folder.open(name, "rb") as f:
                    yield pq.read_table(f).column("value").to_numpy()


class ScoringFilter(BatchedFilter):
    """A filter that keeps `self._scores` (content key -> score) for its shard, loaded from and saved to `cache`
    every `flush_every` new scores and compacted at the end."""

    flush_every = 256

    def __init__(self, cache: ShardScoreCache | None, batch_size: int, exclusion_writer: DiskWriter | None):
        super().__init__(exclusion_writer, batch_size=batch_size)
        self.cache = cache
        self._scores: dict[str, float] = {}
        self._new: dict[str, float] = {}
        self._judged: list[float] = []
        self._rank = 0

    def __getstate__(self) -> dict:  # a fresh task starts with no scores in memory
        return {**self.__dict__, "_scores": {}, "_new": {}, "_judged": []}

    @property
    def scoring_only(self) -> bool:
        """True when this step only annotates (no cut): the pass a calibrated cut is set on."""
        raise NotImplementedError

    def judged(self, score: float) -> None:
        """Record the score of one judged document or image, for calibrated cuts."""
        self._judged.append(score)

    def add_scores(self, scores: dict[str, float]) -> None:
        self._scores.update(scores)
        self._new.update(scores)
        if self.cache and len(self._new) >= self.flush_every:
            self.cache.save_part(self._rank, self._new)
            self._new = {}

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        self._rank, self._new, self._judged = rank, {}, []
        self._scores = self.cache.load(rank) if self.cache else {}
        loaded = len(self._scores)
        yield from super().run(data, rank, world_size)
        if self.cache:
            if len(self._scores) > loaded or self.cache.has_parts(rank):
                self.cache.compact(rank, self._scores)
            if self.scoring_only:  # the calibration pass: what a cut is set on (the filtering pass sees fewer)
                self.cache.save_judged(rank, self._judged)
        self._new, self._judged = {}, []
