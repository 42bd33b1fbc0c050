"""Shard-per-task parquet reading and writing, shared by every pipeline.

A source's files are numbered by their place in the sorted listing; datatrove task `rank` processes file number
`rank`, so logs, stats, completion markers and outputs all carry the shard number (`data/00042.parquet`).
The writer is the last step: it writes kept documents, owns the sink that the filters' `exclusion_writer`s
feed, and commits both files by renaming them into place only once the shard is complete, so a killed task
leaves no half-written output under a final name.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq
from datatrove.data import Document, DocumentsPipeline
from datatrove.io import DataFolder, get_datafolder
from datatrove.pipeline.base import PipelineStep

from filters.shard_files import shard_name

REMOVED_STEP_COLUMN = "removed_step"
REMOVED_REASON_COLUMN = "removed_reason"
REMOVED_COLUMNS = [(REMOVED_STEP_COLUMN, pa.string()), (REMOVED_REASON_COLUMN, pa.string())]


class ShardInputError(Exception):
    """An input shard cannot be read as the expected format; the message names the file."""


def schema_problem(actual: pa.Schema, expected: pa.Schema) -> str | None:
    """Why a file with schema `actual` cannot be read as `expected` (missing columns, types that do not cast)."""
    missing = [n for n in expected.names if n not in actual.names]
    if missing:
        return f"missing column(s) {', '.join(missing)}"
    for field in expected:
        found = actual.field(field.name).type
        try:
            pa.array([], type=found).cast(field.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            return f"column {field.name} is {found}, expected {field.type}"
    return None


@dataclass(frozen=True)
class RowFormat:
    """How one source format maps parquet rows to Documents and back."""

    schema: pa.Schema
    to_document: Callable[[dict, str], Document]
    to_row: Callable[[Document], dict]


class ParquetShardReader(PipelineStep):
    """Reads input file number `rank` (of `files`, the sorted listing of `input_folder`) as Documents.

    Streams record batches, so memory stays flat in the shard size. Stats: `documents`.
    """

    name = "reader"
    type = "📖 - READER"

    def __init__(self, input_folder: str, files: list[str], row_format: RowFormat, limit: int = -1,
                 batch_size: int = 256):
        super().__init__()
        self.input_folder = input_folder
        self.files = files
        self.row_format = row_format
        self.limit = limit
        self.batch_size = batch_size

    def _open(self, folder: DataFolder, path: str, file) -> pq.ParquetFile:
        try:
            parquet = pq.ParquetFile(file)
        except (pa.ArrowInvalid, OSError) as error:
            raise ShardInputError(f"{folder.resolve_paths(path)}: not a readable parquet file ({error})") from None
        if problem := schema_problem(parquet.schema_arrow, self.row_format.schema):
            raise ShardInputError(f"{folder.resolve_paths(path)}: {problem}")
        return parquet

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        folder = get_datafolder(self.input_folder)
        path = self.files[rank]
        with folder.open(path, "rb") as file:
            yield from self._read(folder, path, self._open(folder, path, file), rank)

    def _read(self, folder: DataFolder, path: str, parquet: pq.ParquetFile, rank: int) -> DocumentsPipeline:
        read = 0
        columns = self.row_format.schema.names
        try:
            for batch in parquet.iter_batches(batch_size=self.batch_size, columns=columns):
                for row in batch.select(columns).cast(self.row_format.schema).to_pylist():
                    if 0 <= self.limit <= read:
                        return
                    with self.track_time():
                        doc = self.row_format.to_document(row, f"{shard_name(rank)}/{read:07d}")
                    read += 1
                    self.stat_update("documents")
                    yield doc
        except (pa.ArrowInvalid, OSError) as error:
            raise ShardInputError(f"{folder.resolve_paths(path)}: unreadable after {read} rows ({error})") from None


class _ShardFile:
    """An output file written under `<name>.tmp`: `commit` renames it into place, `abort` deletes it, so a failed
    shard leaves nothing behind. Subclasses close what they wrap around `self.file` in `_close`."""

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


class _ParquetShardFile(_ShardFile):
    """One output parquet file, written in row batches."""

    def __init__(self, folder: DataFolder, filename: str, schema: pa.Schema, batch_rows: int):
        super().__init__(folder, filename)
        self.schema, self.batch_rows = schema, batch_rows
        self.rows: list[dict] = []
        self.writer = pq.ParquetWriter(self.file, schema)

    def write(self, row: dict) -> None:
        self.rows.append(row)
        if len(self.rows) >= self.batch_rows:
            self._flush()

    def _flush(self) -> None:
        if self.rows:
            self.writer.write_table(pa.Table.from_pylist(self.rows, schema=self.schema))
            self.rows = []

    def _close(self) -> None:
        self.writer.close()
        super()._close()

    def commit(self) -> None:
        self._flush()
        super().commit()


def _extension(data: bytes) -> str:
    """The file extension of encoded image bytes, from their magic number."""
    for magic, extension in ((b"\x89PNG", "png"), (b"GIF8", "gif"), (b"BM", "bmp"), (b"II*\x00", "tif"),
                             (b"MM\x00*", "tif")):
        if data.startswith(magic):
            return extension
    return "webp" if data[8:12] == b"WEBP" else "jpg"


class _ImageShardTar(_ShardFile):
    """Fetched images of one shard as an img2dataset-style webdataset tar (`<key>.<ext>` + `<key>.json` with
    `url` and `status`), so the output can itself be given to a later run as `--images PATH`."""

    def __init__(self, folder: DataFolder, filename: str):
        super().__init__(folder, filename)
        self.tar = tarfile.open(fileobj=self.file, mode="w|")
        self.seen: set[str] = set()

    def _add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        self.tar.addfile(info, io.BytesIO(data))

    def write(self, doc: Document) -> None:
        for media in doc.media:
            if media.media_bytes is None or media.url in self.seen:
                continue
            self.seen.add(media.url)
            key = hashlib.sha1(media.url.encode()).hexdigest()[:20]
            self._add(f"{key}.{_extension(media.media_bytes)}", media.media_bytes)
            meta = {"url": media.url, "key": key, "status": "success",
                    "sha256": hashlib.sha256(media.media_bytes).hexdigest(),
                    **{k: media.metadata.get(k) for k in ("original_width", "original_height", "format")}}
            self._add(f"{key}.json", json.dumps(meta).encode())

    def _close(self) -> None:
        self.tar.close()
        super()._close()


class RemovedDocumentsSink:
    """Collects the documents every filter of a task removes into `removed/NNNNN.parquet`.

    Filters reach it through `recorder(step)`, which plays the role of their datatrove `exclusion_writer`.
    """

    def __init__(self, output_folder: str, row_format: RowFormat, batch_rows: int):
        self.output_folder = output_folder
        self.row_format = row_format
        self.schema = pa.schema(list(row_format.schema) + REMOVED_COLUMNS)
        self.batch_rows = batch_rows
        self._file: _ParquetShardFile | None = None
        self.counts: Counter[str] = Counter()

    def recorder(self, step: str) -> RemovalRecorder:
        return RemovalRecorder(self, step)

    def open(self, rank: int) -> None:
        self._file = _ParquetShardFile(get_datafolder(self.output_folder), f"removed/{shard_name(rank)}.parquet",
                                       self.schema, self.batch_rows)
        self.counts.clear()

    def write(self, doc: Document, step: str, reason: str) -> None:
        row = self.row_format.to_row(doc)
        row[REMOVED_STEP_COLUMN], row[REMOVED_REASON_COLUMN] = step, reason
        self._file.write(row)
        self.counts[f"{step}/{reason}"] += 1

    def commit(self) -> None:
        self._file.commit()
        self._file = None

    def abort(self) -> None:
        if self._file:
            self._file.abort()
            self._file = None


class RemovalRecorder:
    """A filter's `exclusion_writer`: forwards removed documents, tagged with the step, to the shared sink."""

    def __init__(self, sink: RemovedDocumentsSink, step: str):
        self.sink, self.step = sink, step

    def __enter__(self) -> RemovalRecorder:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def write(self, doc: Document, rank: int = 0, **kwargs) -> None:
        self.sink.write(doc, self.step, doc.metadata.get("filter_reason") or "unspecified")


class ParquetShardWriter(PipelineStep):
    """Last step of a pipeline: kept documents to `data/NNNNN.parquet`, removed ones to `removed/NNNNN.parquet`,
    and with `write_images` their fetched images to `images/NNNNN.tar`.

    Both files exist for every finished shard, empty or not, and appear under their final names only when the
    whole shard is done. Stats: `kept`, and `removed/<step>/<reason>` as counted by the sink.
    """

    name = "writer"
    type = "💽 - WRITER"

    def __init__(self, output_folder: str, row_format: RowFormat, batch_rows: int = 500, write_images: bool = False):
        super().__init__()
        self.output_folder = output_folder
        self.row_format = row_format
        self.batch_rows = batch_rows
        self.write_images = write_images
        self.removed = RemovedDocumentsSink(output_folder, row_format, batch_rows)

    def removal_recorder(self, step: str) -> RemovalRecorder:
        return self.removed.recorder(step)

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        folder = get_datafolder(self.output_folder)
        self.removed.open(rank)
        kept = _ParquetShardFile(folder, f"data/{shard_name(rank)}.parquet", self.row_format.schema,
                                 self.batch_rows)
        images = _ImageShardTar(folder, f"images/{shard_name(rank)}.tar") if self.write_images else None
        try:
            for doc in data or ():
                with self.track_time():
                    kept.write(self.row_format.to_row(doc))
                    if images:
                        images.write(doc)
                self.stat_update("kept")
        except BaseException:  # a step failed (or the task was stopped): remove the shard's partial files
            for partial in (kept, images, self.removed):
                if partial:
                    partial.abort()
            raise
        # every upstream generator has finished here, so every removal has reached the sink
        self.removed.commit()
        if images:
            images.commit()
        kept.commit()
        for key, count in self.removed.counts.items():
            self.stat_update(f"removed/{key}", value=count)
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
