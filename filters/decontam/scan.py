"""`scan`: check files against an index, one small batch at a time (memory stays flat in the folder's size).

Images are matched through the shared working copies (a few hundred KB each, not the full decode); text files
are read in chunks that overlap by a window; parquet files row batch by row batch, every image value (bytes or
`{"bytes": ...}`) and every string of a row. Every file that cannot be checked is named once and counted.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from filters.decontam.files import TEXT_SUFFIXES, describe, walk
from filters.image_decode import IMAGE_EXTENSIONS
from filters.decontam.index import DecontaminationIndex, Match
from filters.decontam.text import NGRAM_WORDS

IMAGE_BATCH = 32
ROW_BATCH = 64
TEXT_CHUNK = 1 << 20  # characters of a text file matched at once


@dataclass
class ScanResult:
    matches: list[dict] = field(default_factory=list)
    files: int = 0
    problems: int = 0  # files, folders, rows or images that could not be checked
    skipped: int = 0  # files of another kind

    def summary(self) -> str:
        text = f"{len(self.matches)} match(es) in {self.files} file(s)"
        if self.skipped:
            text += f"; {self.skipped} file(s) of another kind skipped (not an image, text or parquet file)"
        if self.problems:
            text += f"; {self.problems} could not be checked (named above)"
        return text


class Scan:
    def __init__(self, index: DecontaminationIndex, warn: Callable[[str], None]):
        self.index, self.warn = index, warn
        self.result = ScanResult()
        self._images: list[tuple[str, bytes]] = []

    def run(self, path: str) -> ScanResult:
        for file, error in walk(path):
            if error is not None:
                self._problem(f"{file}: cannot list folder ({describe(error)}); its files were not checked")
                continue
            self.result.files += 1
            try:
                self._file(file)
            except OSError as read_error:
                self._problem(f"{file}: cannot read ({describe(read_error)})")
        self._flush_images()
        return self.result

    def _problem(self, message: str) -> None:
        self.result.problems += 1
        self.warn(message)

    def _file(self, file: Path) -> None:
        suffix = file.suffix.lower()
        if suffix in IMAGE_EXTENSIONS:
            self._add_image(str(file), file.read_bytes())
        elif suffix == ".jsonl":
            with open(file, errors="replace") as f:
                for number, line in enumerate(f):
                    self._add_matches(f"{file}#line{number}", self.index.match_text(line))
        elif suffix in TEXT_SUFFIXES:
            found: set[Match] = set()
            for chunk in _text_chunks(file):
                found.update(self.index.match_text(chunk))
            self._add_matches(str(file), sorted(found, key=lambda m: (m.benchmark, m.split, m.item)))
        elif suffix == ".parquet":
            self._parquet(file)
        else:
            self.result.files -= 1
            self.result.skipped += 1

    def _parquet(self, file: Path) -> None:
        try:
            first = 0
            for batch in pq.ParquetFile(file).iter_batches(batch_size=ROW_BATCH):
                for number, row in enumerate(batch.to_pylist(), start=first):
                    images, texts = [], []
                    _collect(row, images, texts)
                    name = f"{file}#row{number}"
                    for image in images:
                        self._add_image(name, image)
                    self._add_matches(name, self.index.match_text("\n\n".join(texts)) if texts else [])
                first += batch.num_rows
        except pa.ArrowException as error:
            self._problem(f"{file}: not a readable parquet file ({describe(error)})")

    def _add_image(self, name: str, data: bytes) -> None:
        self._images.append((name, data))
        if len(self._images) >= IMAGE_BATCH:
            self._flush_images()

    def _flush_images(self) -> None:
        batch, self._images = self._images, []
        for (name, _), matches in zip(batch, self.index.match_image_bytes([data for _, data in batch])):
            if matches is None:
                self._problem(f"{name}: not a readable image")
            else:
                self._add_matches(name, matches)

    def _add_matches(self, name: str, matches: list[Match]) -> None:
        self.result.matches += [{"file": name, **m.to_json()} for m in matches]


def _collect(value, images: list[bytes], texts: list[str]) -> None:
    """Every image (raw bytes, or a datasets-style {"bytes": ...}) and string inside a parquet value."""
    if isinstance(value, (bytes, bytearray)):
        images.append(bytes(value))
    elif isinstance(value, str):
        texts.append(value)
    elif isinstance(value, dict):
        if isinstance(value.get("bytes"), (bytes, bytearray)):
            images.append(bytes(value["bytes"]))
        else:
            for item in value.values():
                _collect(item, images, texts)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _collect(item, images, texts)


def _text_chunks(file: Path) -> Iterator[str]:
    """The file's text in chunks; each starts with the previous chunk's last words (a cut word included, as it
    was), so every window of the file is whole in some chunk."""
    tail = re.compile(r"(?:\S+\s+){0,%d}\S*$" % (NGRAM_WORDS - 1))
    carry, read = "", False
    with open(file, errors="replace") as f:
        while chunk := f.read(TEXT_CHUNK):
            read = True
            text = carry + chunk
            yield text
            end = text[-4096:]
            carry = end[tail.search(end).start():]
    if not read:
        yield ""
