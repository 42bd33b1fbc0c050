"""Webdataset tar shards as a source: samples grouped by key in, kept and removed samples out as tars.

A webdataset sample is the run of consecutive tar members that share a key: the member's directories plus its
file name up to the first dot (`docs/0001.pdf`, `docs/0001.json` -> key `docs/0001`, fields `pdf`, `json`), as
the webdataset specification and its reader (`webdataset.tariterators.base_plus_ext`) define it.

Tars are read as a stream (`tarfile` mode `r|`): one member in memory at a time, never the whole shard, never a
file written to disk. Every archive may be hostile: a member whose name is absolute or climbs out (`..`), a link
or a device, and a member larger than `max_member_bytes` is never read; the sample it belongs to becomes a
Document flagged `unreadable` (cause `unsafe_member` or `member_too_large`), which `UnreadableFilter` removes and
records, so it is counted in the summary rather than dropped; so does a key that comes back later in the tar or
a field repeated within a sample. What a sample means (one Document or one per PDF
page) is the `SampleFormat`'s business.
"""

from __future__ import annotations

import io
import re
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from datatrove.data import Document, DocumentsPipeline
from datatrove.io import DataFolder, get_datafolder
from datatrove.pipeline.base import PipelineStep

from filters.shard_files import TempFile, check_files
from pipelines.shards import ShardFile
from pipelines.sources import ORIGIN_KEY, UNREADABLE_KEY, ShardInputError

# webdataset's own split of a member name into key and field (webdataset/tariterators.py, base_plus_ext)
_KEY_AND_FIELD = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")
DEFAULT_MAX_MEMBER_BYTES = 256 * 1024 * 1024  # our cap: well above a large PDF of PDFA or IDL, below a bomb


def split_name(name: str) -> tuple[str, str] | None:
    """`(key, field)` of a member name, or None when it has no extension (webdataset skips those too)."""
    match = _KEY_AND_FIELD.match(name)
    return (match.group(1), match.group(2)) if match else None


def unsafe_member(member: tarfile.TarInfo) -> str | None:
    """Why a member must not be read: not a regular file, or a name that would escape an extraction folder."""
    if not member.isfile():
        return "link_or_special_member"
    name = member.name
    if name.startswith("/") or "\\" in name or ".." in name.split("/") or "\x00" in name:
        return "unsafe_member_name"
    return None


@dataclass
class Sample:
    """One sample as read: its key, the fields read (field -> bytes), and why it cannot be used, if so."""

    key: str
    fields: dict[str, bytes] = field(default_factory=dict)
    problem: str | None = None


def iter_samples(stream: Any, wanted: Callable[[str], bool], max_member_bytes: int) -> Iterator[Sample]:
    """Samples in tar order, grouping consecutive members by key. Fields `wanted` rejects are not read. A key seen
    earlier in the tar (`duplicate_key`) or a field repeated within a sample (`duplicate_member`, which
    webdataset's own reader refuses too) makes the sample unusable: written back, its outputs would overwrite or
    shadow another sample's, and one of the two would be lost without a record."""
    current: Sample | None = None
    seen: set[str] = set()  # keys of this tar: a few thousand per PDFA or IDL shard
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            if member.isdir():
                continue
            if problem := unsafe_member(member):
                if current:
                    yield current
                    current = None
                yield Sample(key=member.name, problem=problem)  # its own record; never joined to a real sample
                continue
            parts = split_name(member.name)
            if parts is None:
                continue
            key, name = parts
            if current is None or current.key != key:
                if current:
                    yield current
                current = Sample(key, problem="duplicate_key" if key in seen else None)
                seen.add(key)
            if not wanted(name) or current.problem:
                continue
            if name in current.fields:
                current.problem, current.fields = "duplicate_member", {}
                continue
            if member.size > max_member_bytes:
                current.problem, current.fields = "member_too_large", {}
                continue
            current.fields[name] = tar.extractfile(member).read()
    if current:
        yield current


@dataclass(frozen=True)
class SampleFormat:
    """How one webdataset format maps samples to Documents and Documents back to tar members."""

    wanted: Callable[[str], bool]  # which fields the reader reads (others are skipped unread)
    to_documents: Callable[[Sample, str, str], Iterator[Document]]  # (sample, doc_id, path) -> Documents
    kept_members: Callable[[Document], list[tuple[str, bytes]]]
    removed_members: Callable[[Document, int, dict], list[tuple[str, bytes]]]  # (doc, record number, columns)
    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES


class TarShardReader(PipelineStep):
    """Reads tar number `rank` of `files` as Documents, streaming. Stats: `documents` (what the format yields:
    the unit of the shard's accounting), `samples`, `unreadable/<cause>`."""

    name = "reader"
    type = "📖 - READER"

    def __init__(self, input_folder: str, files: list[str], sample_format: SampleFormat, limit: int = -1):
        super().__init__()
        self.input_folder, self.files, self.format, self.limit = input_folder, files, sample_format, limit

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        folder = get_datafolder(self.input_folder)
        path = self.files[rank]
        read = 0
        try:
            with folder.open(path, "rb") as stream:
                for number, sample in enumerate(iter_samples(stream, self.format.wanted,
                                                             self.format.max_member_bytes)):
                    self.stat_update("samples")
                    for doc in self._documents(sample, path, number, rank):
                        if 0 <= self.limit <= read:
                            return
                        read += 1
                        self.stat_update("documents")
                        yield doc
        except (tarfile.TarError, EOFError, OSError) as error:
            raise ShardInputError(f"{folder.resolve_paths(path)}: unreadable tar after {read} documents "
                                  f"({type(error).__name__}: {error})") from None

    def _documents(self, sample: Sample, path: str, number: int, rank: int) -> Iterator[Document]:
        doc_id = f"{rank:05d}/{number:07d}"
        origin = {"file": path, "row": number, "key": sample.key}
        if sample.problem:
            self.stat_update(f"unreadable/{sample.problem}")
            yield Document(text="", id=doc_id, metadata={UNREADABLE_KEY: sample.problem, ORIGIN_KEY: origin})
            return
        with self.track_time():
            docs = list(self.format.to_documents(sample, doc_id, path))
        for doc in docs:
            doc.metadata[ORIGIN_KEY] = {**origin, **doc.metadata.get(ORIGIN_KEY, {})}
            yield doc


class TarShardFile(TempFile):
    """One output tar, written member by member (what a member holds comes from the format)."""

    def __init__(self, folder: DataFolder, filename: str, members: Callable[..., list[tuple[str, bytes]]],
                 removed: bool):
        super().__init__(folder, filename)
        self.members, self.removed, self.records = members, removed, 0
        self.tar = tarfile.open(fileobj=self.file, mode="w|", format=tarfile.PAX_FORMAT)

    def write(self, doc: Document, **extra: Any) -> None:
        members = self.members(doc, self.records, extra) if self.removed else self.members(doc)
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644  # fixed mtime: reproducible shards
            self.tar.addfile(info, io.BytesIO(data))
        self.records += 1

    def _close(self) -> None:
        self.tar.close()
        super()._close()


@dataclass(frozen=True)
class WebDatasetSource:
    """Tar shards of one `SampleFormat`: `data/NNNNN.tar` and `removed/NNNNN.tar` come out as tars too."""

    sample_format: SampleFormat
    suffix: str = ".tar"

    def check(self, folder: DataFolder, files: list[str]) -> None:
        """Read each tar's first header: a file that is not a tar stops the run here, with one line."""
        check_files(folder, files, self._problem)

    @staticmethod
    def _problem(folder: DataFolder, path: str) -> str | None:
        try:
            with folder.open(path, "rb") as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
                tar.next()
        except Exception as error:  # noqa: BLE001 - any failure to read the first header is the file's problem
            return f"{folder.resolve_paths(path)}: not a readable tar file ({type(error).__name__})"
        return None

    def reader(self, folder: str, files: list[str], limit: int = -1) -> PipelineStep:
        return TarShardReader(folder, files, self.sample_format, limit)

    def open_kept(self, folder: DataFolder, filename: str) -> ShardFile:
        return TarShardFile(folder, filename, self.sample_format.kept_members, removed=False)

    def open_removed(self, folder: DataFolder, filename: str) -> ShardFile:
        return TarShardFile(folder, filename, self.sample_format.removed_members, removed=True)
