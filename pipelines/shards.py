"""The last step of every pipeline: kept documents to `data/`, removed ones to `removed/`, in the source's format.

A source's files are numbered by their place in the sorted listing; datatrove task `rank` processes file number
`rank`, so logs, stats, completion markers and outputs all carry the shard number (`data/00042.parquet`). The
writer owns the sink that the filters' `exclusion_writer`s feed, and commits every file of the shard by renaming
it into place only once the shard is complete, so a killed task leaves no half-written output under a final name.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from datatrove.data import Document, DocumentsPipeline
from datatrove.io import DataFolder, get_datafolder
from datatrove.pipeline.base import PipelineStep

from filters.shard_files import shard_name

__all__ = ["ShardFile", "ShardWriter", "DiscardingWriter", "shard_name"]

REMOVED_STEP, REMOVED_REASON = "removed_step", "removed_reason"  # the columns a removal record adds
SOURCE_FILE, SOURCE_ROW = "source_file", "source_row"  # where the removed document was read: its input file and row


class ShardFile(Protocol):
    """One output file of a shard, written under a temporary name: `commit` puts it in place, `abort` deletes it."""

    def write(self, doc: Document, **extra: Any) -> None: ...

    def commit(self) -> None: ...

    def abort(self) -> None: ...


class ShardSource(Protocol):
    """What the writer needs of a source (see `pipelines.sources`)."""

    suffix: str

    def open_kept(self, folder: DataFolder, filename: str) -> ShardFile: ...

    def open_removed(self, folder: DataFolder, filename: str) -> ShardFile: ...


class RemovedDocuments:
    """Collects what every filter of a task removes into `removed/NNNNN.<suffix>`, each record naming the step,
    the reason and where the document was read. Filters reach it through `recorder(step)`, their datatrove
    `exclusion_writer`."""

    def __init__(self, output_folder: str, source: ShardSource):
        self.output_folder, self.source = output_folder, source
        self._file: ShardFile | None = None
        self.counts: Counter[str] = Counter()  # step/reason -> documents
        self.images: Counter[str] = Counter()  # step -> images the removed documents still held

    def recorder(self, step: str) -> RemovalRecorder:
        return RemovalRecorder(self, step)

    def open(self, rank: int) -> None:
        self._file = self.source.open_removed(get_datafolder(self.output_folder),
                                              f"removed/{shard_name(rank)}{self.source.suffix}")
        self.counts.clear()
        self.images.clear()

    def write(self, doc: Document, step: str, reason: str) -> None:
        origin = doc.metadata.get("origin") or {}
        self._file.write(doc, **{REMOVED_STEP: step, REMOVED_REASON: reason, SOURCE_FILE: origin.get("file"),
                                 SOURCE_ROW: origin.get("row")})
        self.counts[f"{step}/{reason}"] += 1
        self.images[step] += len(doc.media)

    def commit(self) -> None:
        self._file.commit()
        self._file = None

    def abort(self) -> None:
        if self._file:
            self._file.abort()
            self._file = None


class RemovalRecorder:
    """A filter's `exclusion_writer`: forwards removed documents, tagged with the step, to the shared sink."""

    def __init__(self, sink: RemovedDocuments, step: str):
        self.sink, self.step = sink, step

    def __enter__(self) -> RemovalRecorder:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def write(self, doc: Document, rank: int = 0, **kwargs) -> None:
        self.sink.write(doc, self.step, doc.metadata.get("filter_reason") or "unspecified")


class ShardWriter(PipelineStep):
    """Kept documents to `data/NNNNN<suffix>`, removed ones to `removed/NNNNN<suffix>`, plus the extra per-shard
    files the steps declare (`extra_outputs`: each `(folder, rank) -> ShardFile`, e.g. the fetched images).

    Every file exists for every finished shard, empty or not, and appears under its final name only when the
    whole shard is done. Stats: `kept`, `removed/<step>/<reason>` and `removed_images/<step>`.
    """

    name = "writer"
    type = "💽 - WRITER"

    def __init__(self, output_folder: str, source: ShardSource,
                 extra_outputs: Sequence[Callable[[DataFolder, int], ShardFile]] = ()):
        super().__init__()
        self.output_folder, self.source, self.extra_outputs = output_folder, source, tuple(extra_outputs)
        self.removed = RemovedDocuments(output_folder, source)

    def removal_recorder(self, step: str) -> RemovalRecorder:
        return self.removed.recorder(step)

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        folder = get_datafolder(self.output_folder)
        files: list[ShardFile] = []
        try:
            self.removed.open(rank)
            files.append(self.source.open_kept(folder, f"data/{shard_name(rank)}{self.source.suffix}"))
            files += [make(folder, rank) for make in self.extra_outputs]
            for doc in data or ():
                with self.track_time():
                    for file in files:
                        file.write(doc)
                self.stat_update("kept")
        except BaseException:  # a step failed (or the task was stopped): remove the shard's partial files
            for partial in (*files, self.removed):
                partial.abort()
            raise
        # every upstream generator has finished here, so every removal has reached the sink
        self.removed.commit()
        for file in reversed(files):  # data/ last: its presence means the shard's other files are there
            file.commit()
        for key, count in self.removed.counts.items():
            self.stat_update(f"removed/{key}", value=count)
        for step, count in self.removed.images.items():
            self.stat_update(f"removed_images/{step}", value=count)
        return
        yield  # a generator, like every datatrove step


class DiscardingWriter(PipelineStep):
    """The end of a scoring-only pass: consumes documents, writes nothing; its filters record no removals."""

    name = "discard"
    type = "🗑 - SINK"

    def removal_recorder(self, step: str) -> None:
        return None

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for _ in data or ():
            self.stat_update("documents")
        return
        yield
