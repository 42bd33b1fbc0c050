"""Image-text pair rows (LAION-COCO, CC3M-style url/caption parquet) <-> Documents, each file written back with its
own schema.

LAION-COCO (Hub `laion/laion-coco`, 128 files `part-000NN-2256f782-...-c000.snappy.parquet`) has the columns
`URL`, `TEXT` (the alt text), `top_caption` (the BLIP caption Idefics2 trained on), `all_captions`,
`all_similarities`, `WIDTH`, `HEIGHT`, `similarity`, `hash`, `pwatermark` and `punsafe`. Copies differ in types:
`WIDTH`/`HEIGHT` are int64 in one (the `Mayfull/laion-coco-1m` dataset card) and float64 in another, where
`punsafe`/`pwatermark` are float32 (the `danielz01/laion-coco-17m` dataset card). So no schema is fixed here:
only the URL and caption columns the run uses are required, every other column is carried as it was read, and
kept and removed rows are written with the input file's own schema (removed ones with the removal columns added).

A Document is one pair: `text` is the caption, one `Media` holds the URL with `punsafe`, `pwatermark` and the
declared size (`declared_width`, `declared_height`; None when missing or NaN) in its metadata; the row itself is
kept under `metadata["pair_row"]` and written back unchanged. A row without a usable URL or caption is removed
as unreadable (`NoUsableUrl`, `NoCaption` in the read step's stats).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from datatrove.data import Document, DocumentsPipeline, Media, MediaType
from datatrove.io import DataFolder
from datatrove.pipeline.base import PipelineStep

from filters.optout import sendable
from filters.shard_files import shard_name
from filters.shard_files import TempFile
from pipelines.sources import (
    RAW_ROW_KEY, REMOVED_FIELDS, UNREADABLE_KEY, ParquetFile, ParquetShardReader, RowFormat, ShardFile, ShardInputError,
    _castable, check_files, footer_problem, schema_problem,
)

LAION_COCO_HUB_INPUT = "hf://datasets/laion/laion-coco"  # the 128 part-*.snappy.parquet files (its dataset card)
PAIR_ROW_KEY = "pair_row"  # metadata: the row as read, written back as it is
SCORE_COLUMNS = ("punsafe", "pwatermark")  # LAION's safety and watermark probabilities, copied to Media.metadata
SIZE_COLUMNS = {"declared_width": "WIDTH", "declared_height": "HEIGHT"}  # the size LAION recorded, not decoded
RESERVED = tuple(name for name, _ in REMOVED_FIELDS)

# the schema each shard's reader found, by shard name: its writer (same task, same process) writes with it
_INPUT_SCHEMAS: dict[str, pa.Schema] = {}


class NoUsableUrl(ValueError):
    """The URL column is null, empty, or holds whitespace or control characters."""


class NoCaption(ValueError):
    """The caption column is null, not text, or blank."""


@dataclass(frozen=True)
class PairColumns:
    url: str = "URL"  # LAION-COCO's image URL column
    caption: str = "top_caption"  # the synthetic caption the Idefics2 paper used (section 3.1)

    def required(self) -> pa.Schema:
        return pa.schema([(self.url, pa.string()), (self.caption, pa.string())])


def _number(value: Any) -> float | None:
    """A finite number, or None for null, NaN and anything that is not a number."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return value


def row_to_document(columns: PairColumns, row: dict, doc_id: str) -> Document:
    url, caption = row.get(columns.url), row.get(columns.caption)
    if not sendable(url):
        raise NoUsableUrl(columns.url)
    if not isinstance(caption, str) or not caption.strip():
        raise NoCaption(columns.caption)
    metadata = {key: _number(row.get(key)) for key in SCORE_COLUMNS}
    for key, column in SIZE_COLUMNS.items():
        size = _number(row.get(column))
        metadata[key] = None if size is None else int(size)
    media = Media(id=f"{doc_id}/0", type=MediaType.IMAGE, url=url, metadata=metadata)
    return Document(text=caption, id=doc_id, media=[media], metadata={PAIR_ROW_KEY: row})


def document_to_row(doc: Document) -> dict:
    return doc.metadata[PAIR_ROW_KEY]


def _schema_of(shard: str) -> pa.Schema:
    try:
        return _INPUT_SCHEMAS[shard]
    except KeyError:
        raise RuntimeError(f"shard {shard}: no input schema recorded (the reader did not open its file)") from None


class SchemaOfInputFile(ParquetFile):
    """A parquet output whose schema is its shard's input file's (plus `extra` columns), known only once the
    reader has opened that file: the writer is created at the first flush, or at commit for an empty file."""

    def __init__(self, folder: DataFolder, filename: str, shard: str, extra: list, keep_metadata: bool,
                 batch_rows: int):
        TempFile.__init__(self, folder, filename)  # ParquetFile.__init__ would open a writer with a fixed schema
        self.shard, self.extra, self.keep_metadata = shard, extra, keep_metadata
        self.to_row, self.batch_rows, self.rows, self.writer = self._row, batch_rows, [], None

    def _row(self, doc: Document) -> dict:
        if UNREADABLE_KEY in doc.metadata:  # as read, or nulls where even that failed
            raw = doc.metadata.get(RAW_ROW_KEY) or {}
            return {f.name: _castable(raw.get(f.name), f.type) for f in _schema_of(self.shard)}
        return document_to_row(doc)

    def _flush(self) -> None:
        if self.writer is None:
            schema = _schema_of(self.shard)
            fields = [f.with_nullable(True) for f in schema] if self.extra else list(schema)  # records may hold nulls
            self.schema = pa.schema(fields + self.extra, schema.metadata if self.keep_metadata else None)
            self.writer = pq.ParquetWriter(self.file, self.schema)
        super()._flush()

    def _close(self) -> None:
        if self.writer is None:
            TempFile._close(self)
        else:
            super()._close()


class PairsShardReader(ParquetShardReader):
    """`ParquetShardReader` over a file's own schema: checks the run's columns, reads every column uncast."""

    def __init__(self, input_folder: str, files: list[str], columns: PairColumns, limit: int = -1):
        row_format = RowFormat(columns.required(), partial(row_to_document, columns), document_to_row)
        super().__init__(input_folder, files, row_format, limit)
        self.columns, self.required, self.shard = columns, columns.required(), ""

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        self.shard = shard_name(rank)
        yield from super().run(data, rank, world_size)

    def _open(self, folder: DataFolder, path: str, file) -> pq.ParquetFile:
        self.row_format = replace(self.row_format, schema=self.required)
        parquet = super()._open(folder, path, file)
        if problem := own_schema_problem(parquet.schema_arrow, self.columns):
            raise ShardInputError(f"{folder.resolve_paths(path)}: {problem}")
        self.row_format = replace(self.row_format, schema=parquet.schema_arrow)
        _INPUT_SCHEMAS[self.shard] = parquet.schema_arrow
        return parquet


def own_schema_problem(schema: pa.Schema, columns: PairColumns) -> str | None:
    """What makes a file's schema unusable: the pair's columns not text, repeated names, or the removal columns."""
    for name in (columns.url, columns.caption):
        if name in schema.names and not pa.types.is_string(kind := schema.field(name).type) \
                and not pa.types.is_large_string(kind):
            return f"column {name} is {kind}, expected text"
    repeated = sorted({n for n in schema.names if schema.names.count(n) > 1})
    if repeated:
        return f"column(s) {', '.join(repeated)} appear more than once"
    taken = [n for n in schema.names if n in RESERVED]
    return f"column(s) {', '.join(taken)} are the ones removal records add" if taken else None


@dataclass(frozen=True)
class PairsSource:
    """Parquet files of image-text pairs, each read and written with its own schema (see the module docstring)."""

    columns: PairColumns = PairColumns()
    suffix: str = ".parquet"
    batch_rows: int = 500

    def configured(self, options) -> PairsSource:
        """This source reading the columns the run's `--url-column` and `--caption-column` name."""
        return replace(self, columns=PairColumns(options.url, options.caption))

    def check(self, folder: DataFolder, files: list[str]) -> None:
        """Read each file's footer: not parquet, a run column missing or not text, or an unusable schema stops here."""
        check_files(folder, files, self._problem)

    def _problem(self, folder: DataFolder, path: str) -> str | None:
        return footer_problem(folder, path, lambda schema: schema_problem(schema, self.columns.required())
                              or own_schema_problem(schema, self.columns))

    def reader(self, folder: str, files: list[str], limit: int = -1) -> PipelineStep:
        return PairsShardReader(folder, files, self.columns, limit)

    def open_kept(self, folder: DataFolder, filename: str) -> ShardFile:
        return SchemaOfInputFile(folder, filename, _shard_of(filename), [], True, self.batch_rows)

    def open_removed(self, folder: DataFolder, filename: str) -> ShardFile:
        return SchemaOfInputFile(folder, filename, _shard_of(filename), REMOVED_FIELDS, False, self.batch_rows)


def _shard_of(filename: str) -> str:
    """`data/00042.parquet` -> `00042`: the writer names files by shard, as the reader registers schemas."""
    return filename.rsplit("/", 1)[-1].split(".", 1)[0]
