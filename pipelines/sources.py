"""Sources: how a pipeline lists, checks, reads and writes back the files of one public format.

A source is declared once per format and knows nothing of steps: `list` numbers the input files, `check` reads
what it can cheaply before any work (a footer, a first member) so a bad file stops the run with one line,
`reader` yields Documents for shard `rank`, and `open_kept`/`open_removed` write documents back in the same
format (removal records add the step, the reason and where the document was read). Parquet rows (OBELICS,
LAION-COCO, the Cauldron) are the first kind; webdataset tars (PDFA, OCR-IDL) plug in the same way.

A row that cannot be read as a Document (deeply nested JSON, invalid UTF-8, a value of the wrong type) never
fails its shard: it becomes a document flagged `unreadable`, which `UnreadableFilter` removes and records, right
after the reader.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.parquet as pq
from datatrove.data import Document, DocumentsPipeline
from datatrove.io import DataFolder, get_datafolder
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters.base_filter import BaseFilter

from filters.shard_files import TempFile, check_files, footer_problem, shard_name
from pipelines.options import UsageError
from pipelines.shards import REMOVED_REASON, REMOVED_STEP, SOURCE_FILE, SOURCE_ROW, ShardFile

ORIGIN_KEY = "origin"  # metadata: {"file": input file, "row": row number}: where a document was read
UNREADABLE_KEY = "unreadable"  # metadata: why the row could not be read as a Document
RAW_ROW_KEY = "raw_row"  # metadata of an unreadable row: the row as read, when it could be read at all


class ShardInputError(Exception):
    """An input shard cannot be read as the expected format; the message names the file."""


class Source(Protocol):
    suffix: str

    def check(self, folder: DataFolder, files: list[str]) -> None: ...

    def reader(self, folder: str, files: list[str], limit: int = -1) -> PipelineStep: ...

    def open_kept(self, folder: DataFolder, filename: str) -> ShardFile: ...

    def open_removed(self, folder: DataFolder, filename: str) -> ShardFile: ...


def list_input(path: str, suffix: str) -> tuple[str, list[str]]:
    """The folder and the sorted list of its `suffix` files (relative paths); a single file is a one-file folder."""
    try:
        folder = get_datafolder(path)
        if folder.isfile(""):
            return os.path.dirname(path.rstrip("/")) or ".", [os.path.basename(path.rstrip("/"))]
        if not folder.exists(""):
            raise UsageError(f"--input {path}: no such file or folder")
        files = sorted(f for f in folder.list_files(recursive=True) if f.endswith(suffix))
    except UsageError:
        raise
    except Exception as error:  # network, credentials, permissions: all the user's to fix
        raise UsageError(f"--input {path}: cannot list ({type(error).__name__}: {error})") from None
    if not files:
        raise UsageError(f"--input {path}: no {suffix} files")
    return path, files


class UnreadableFilter(BaseFilter):
    """Removes the rows the reader could not turn into Documents (`unreadable_row`, the cause in the stats)."""

    name = "read"

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if cause := doc.metadata.get(UNREADABLE_KEY):
            self.stat_update(f"unreadable/{cause}")
            return False, "unreadable_row"
        return True


# parquet rows ----------------------------------------------------------------------------------------------------
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
    """How one parquet format maps rows to Documents and back."""

    schema: pa.Schema
    to_document: Callable[[dict, str], Document]
    to_row: Callable[[Document], dict]


class ParquetFile(TempFile):
    """One output parquet file, written in row batches."""

    def __init__(self, folder: DataFolder, filename: str, schema: pa.Schema, to_row: Callable[[Document], dict],
                 batch_rows: int = 500):
        super().__init__(folder, filename)
        self.schema, self.to_row, self.batch_rows = schema, to_row, batch_rows
        self.rows: list[dict] = []
        self.writer = pq.ParquetWriter(self.file, schema)

    def write(self, doc: Document, **extra: Any) -> None:
        self.rows.append({**self.to_row(doc), **extra})
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


REMOVED_FIELDS = [(REMOVED_STEP, pa.string()), (REMOVED_REASON, pa.string()), (SOURCE_FILE, pa.string()),
                  (SOURCE_ROW, pa.int64())]


@dataclass(frozen=True)
class ParquetSource:
    """Parquet files of one `RowFormat`, read in record batches (memory flat in the shard size)."""

    row_format: RowFormat
    suffix: str = ".parquet"
    batch_rows: int = 500

    def check(self, folder: DataFolder, files: list[str]) -> None:
        """Read each file's footer: a file that is not parquet, lacks a column or has one of a type that does not
        cast stops here."""
        check_files(folder, files, self._problem)

    def _problem(self, folder: DataFolder, path: str) -> str | None:
        return footer_problem(folder, path, lambda schema: schema_problem(schema, self.row_format.schema))

    def reader(self, folder: str, files: list[str], limit: int = -1) -> PipelineStep:
        return ParquetShardReader(folder, files, self.row_format, limit)

    def open_kept(self, folder: DataFolder, filename: str) -> ShardFile:
        return ParquetFile(folder, filename, self.row_format.schema, self.row_format.to_row, self.batch_rows)

    def open_removed(self, folder: DataFolder, filename: str) -> ShardFile:
        schema = pa.schema(list(self.row_format.schema) + REMOVED_FIELDS)
        return ParquetFile(folder, filename, schema, self._removed_row, self.batch_rows)

    def _removed_row(self, doc: Document) -> dict:
        """The row as the format writes it; an unreadable row as it was read (or nulls, if even that failed)."""
        if UNREADABLE_KEY in doc.metadata:
            raw = doc.metadata.get(RAW_ROW_KEY) or {}
            return {name: _castable(raw.get(name), field.type)
                    for name, field in zip(self.row_format.schema.names, self.row_format.schema)}
        return self.row_format.to_row(doc)


def _castable(value: Any, kind: pa.DataType) -> Any:
    """`value` if it can be stored as `kind`, else null (the record still names the file and row)."""
    try:
        pa.array([value], type=kind)
        return value
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
        return None


class ParquetShardReader(PipelineStep):
    """Reads input file number `rank` (of `files`, the sorted listing of `input_folder`) as Documents.

    Streams record batches, so memory stays flat in the shard size. A batch that cannot be converted (invalid
    UTF-8) is read row by row, and a row that cannot be read is passed on flagged `unreadable`. Stats:
    `documents`.
    """

    name = "reader"
    type = "📖 - READER"

    def __init__(self, input_folder: str, files: list[str], row_format: RowFormat, limit: int = -1,
                 batch_size: int = 256):
        super().__init__()
        self.input_folder, self.files, self.row_format = input_folder, files, row_format
        self.limit, self.batch_size = limit, batch_size

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

    def _rows(self, batch: pa.RecordBatch, schema: pa.Schema) -> list[dict | Exception]:
        """The batch's rows in `schema`; a value that does not cast or decode (invalid UTF-8 in a binary or string
        column) makes its row an error, not the batch's."""
        try:
            return batch.cast(schema).to_pylist()
        except Exception:  # noqa: BLE001 - one bad value: find it row by row
            rows = []
            for i in range(batch.num_rows):
                try:
                    rows.append(batch.slice(i, 1).cast(schema).to_pylist()[0])
                except Exception as error:  # noqa: BLE001 - e.g. UnicodeDecodeError, ArrowInvalid
                    rows.append(error)
            return rows

    def _document(self, row: dict | Exception, path: str, number: int, rank: int) -> Document:
        doc_id = f"{shard_name(rank)}/{number:07d}"
        origin = {"file": path, "row": number}
        if not isinstance(row, Exception):
            try:
                doc = self.row_format.to_document(row, doc_id)
                doc.metadata[ORIGIN_KEY] = origin
                return doc
            except Exception as error:  # noqa: BLE001 - a hostile row (RecursionError, ...) is removed, not fatal
                row, cause = {**row}, type(error).__name__
        else:
            row, cause = None, type(row).__name__
        return Document(text="", id=doc_id, metadata={UNREADABLE_KEY: cause, RAW_ROW_KEY: row, ORIGIN_KEY: origin})

    def _read(self, folder: DataFolder, path: str, parquet: pq.ParquetFile, rank: int) -> DocumentsPipeline:
        read = 0
        columns = self.row_format.schema.names
        try:
            for batch in parquet.iter_batches(batch_size=self.batch_size, columns=columns):
                for row in self._rows(batch.select(columns), self.row_format.schema):
                    if 0 <= self.limit <= read:
                        return
                    with self.track_time():
                        doc = self._document(row, path, read, rank)
                    read += 1
                    self.stat_update("documents")
                    yield doc
        except (pa.ArrowInvalid, OSError) as error:
            raise ShardInputError(f"{folder.resolve_paths(path)}: unreadable after {read} rows ({error})") from None
