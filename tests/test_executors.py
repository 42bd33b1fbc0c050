"""A shard whose task raises is recorded and retried; the other shards of the run still finish."""

from __future__ import annotations

from pathlib import Path

from datatrove.data import Document
from datatrove.pipeline.base import PipelineStep

from pipelines.executors import ExecutorOptions, run_executor


class FailOn(PipelineStep):
    """Yields one document per task, or raises on the listed ranks."""

    name = "fail_on"

    def __init__(self, ranks: set[int]):
        super().__init__()
        self.ranks = ranks

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        if rank in self.ranks:
            raise RuntimeError(f"shard {rank} is broken")
        yield Document(text="x", id=str(rank))


def test_failed_shard_is_isolated_recorded_and_retried(tmp_path):
    logs = tmp_path / "logs"
    run_executor([FailOn({1})], world_size=4, shards=range(0, 3), logging_dir=str(logs),
                 options=ExecutorOptions(workers=1))
    assert sorted(p.name for p in (logs / "completions").iterdir()) == ["00000", "00002"]
    assert (logs / "errors" / "00001.txt").read_text() == "RuntimeError: shard 1 is broken\n"

    run_executor([FailOn(set())], world_size=4, shards=range(0, 3), logging_dir=str(logs),
                 options=ExecutorOptions(workers=1))
    assert sorted(p.name for p in (logs / "completions").iterdir()) == ["00000", "00001", "00002"]
    assert not (logs / "errors" / "00001.txt").exists()


def test_a_failing_step_leaves_no_partial_files(tmp_path):
    from datatrove.pipeline.filters.base_filter import BaseFilter

    from pipelines.obelics_format import OBELICS_FORMAT
    from pipelines.shards import ParquetShardReader, ParquetShardWriter
    from tests.conftest import SAMPLE_OBELICS

    class Explodes(BaseFilter):
        name = "explodes"

        def filter(self, doc):
            if doc.id.endswith("0000020"):
                raise RuntimeError("model crashed")
            return True

    files = sorted(p.name for p in Path(SAMPLE_OBELICS).glob("*.parquet"))
    writer = ParquetShardWriter(str(tmp_path / "out"), OBELICS_FORMAT, batch_rows=5)
    pipeline = [ParquetShardReader(SAMPLE_OBELICS, files, OBELICS_FORMAT), Explodes(), writer]
    run_executor(pipeline, world_size=4, shards=range(0, 1), logging_dir=str(tmp_path / "logs"),
                 options=ExecutorOptions(workers=1))
    assert "model crashed" in (tmp_path / "logs" / "errors" / "00000.txt").read_text()
    assert [p for p in (tmp_path / "out").rglob("*") if p.is_file()] == []
