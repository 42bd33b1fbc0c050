"""Per-shard scores on disk, so a model judges each document or image once, however many passes read them.

A step that scores (perplexity, NSFW) loads its shard's file at the start of a task, scores only what is not
in it, and rewrites it at the end. A calibrated cut (drop the top 5% of the whole run) reads every shard's file
to set its threshold; the filtering pass then reuses the scores instead of running the model again.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from datatrove.data import DocumentsPipeline
from datatrove.io import get_datafolder
from datatrove.pipeline.writers.disk_base import DiskWriter

from filters.batched import BatchedFilter
from filters.shard_files import shard_name, write_atomically

SCHEMA = pa.schema([("key", pa.string()), ("value", pa.float64())])


class ShardScoreCache:
    """`folder/NNNNN.parquet`: key (a document id or an image URL) -> score, for one kind of score."""

    def __init__(self, folder: str):
        self.folder = folder

    def load(self, shard: int) -> dict[str, float]:
        folder = get_datafolder(self.folder)
        name = f"{shard_name(shard)}.parquet"
        if not folder.isfile(name):
            return {}
        with folder.open(name, "rb") as f:
            table = pq.read_table(f)
        return dict(zip(table.column("key").to_pylist(), table.column("value").to_pylist()))

    def save(self, shard: int, scores: dict[str, float]) -> None:
        folder = get_datafolder(self.folder)
        name = f"{shard_name(shard)}.parquet"
        table = pa.table({"key": list(scores), "value": [float(v) for v in scores.values()]}, schema=SCHEMA)
        with write_atomically(folder, name) as f:
            pq.write_table(table, f)

    def values(self, shards: list[int]) -> Iterator[np.ndarray]:
        """Each shard's scores as an array, one shard at a time (memory flat in the number of shards)."""
        folder = get_datafolder(self.folder)
        for shard in shards:
            name = f"{shard_name(shard)}.parquet"
            if folder.isfile(name):
                with folder.open(name, "rb") as f:
                    yield pq.read_table(f, columns=["value"]).column("value").to_numpy()


class ScoringFilter(BatchedFilter):
    """A filter that keeps `self._scores` (key -> score) for its shard, loaded from and saved to `cache`."""

    def __init__(self, cache: ShardScoreCache | None, batch_size: int, exclusion_writer: DiskWriter | None):
        super().__init__(exclusion_writer, batch_size=batch_size)
        self.cache = cache
        self._scores: dict[str, float] = {}

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        self._scores = self.cache.load(rank) if self.cache else {}
        yield from super().run(data, rank, world_size)
        if self.cache:
            self.cache.save(rank, self._scores)
