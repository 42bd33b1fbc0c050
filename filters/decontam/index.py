"""The decontamination index: build it from evaluation sets, save it versioned, load it, match against it.

An index is a folder:
  index.json      format version, radius, and per benchmark: source, splits, items, images, texts, problems
  items.parquet   one row per evaluation item: code, benchmark, split, item
  images.parquet  one row per indexed image variant: code, image, variant, phash
  exact.parquet   one row per pixel key of an image: code, image, key
  texts.parquet   one row per question+answer window: code, n, hash
Matching goes in tiers: `exact` (same working-copy pixels), `phash` (a perceptual hash of the image or of one of
its inward crops within the radius of one of an evaluation image's indexed variants, found through
`HammingIndex`), `text` (a question+answer window).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from filters.decontam.files import describe, walk
from filters.image_decode import IMAGE_EXTENSIONS
from filters.decontam.hamming_index import HammingIndex
from filters.decontam.hashing import index_hashes, pixel_key, query_hashes
from filters.decontam.registry import BENCHMARKS, GENERIC, Benchmark, answer_texts, question_text
from filters.decontam.text import MIN_WORDS, item_windows, text_windows
from filters.pixels import decode_working, reduce_to_working, working_image

INDEX_VERSION = 2  # 2: hashes of the 448 px working copy, photometric variants, pixel keys, item codes
DEFAULT_RADIUS = 8  # calibrated in tests/test_decontam.py: recall >= 0.99 per photometric edit, false <= 0.05%
UNDECODABLE = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)  # what Pillow raises on bad bytes
ROWS_PER_BATCH = 64  # parquet rows read at once: evaluation images can be several MB each


class IndexBuildError(ValueError):
    """A source that cannot give a useful index (nothing to index in it)."""


@dataclass
class EvalItem:
    benchmark: str
    split: str
    item: str
    images: list[bytes | Image.Image] = field(default_factory=list)  # encoded bytes, or a decoded image
    question: str | None = None
    answers: list[str] = field(default_factory=list)
    origin: str = ""  # where it was read from, for messages (a file, file#row)
    error: str | None = None  # set when the item could not be read at all


@dataclass(frozen=True)
class Match:
    benchmark: str
    split: str
    item: str
    tier: str  # exact, phash or text
    distance: int  # Hamming distance for phash; 0 otherwise

    def to_json(self) -> dict:
        return asdict(self)


# reading evaluation sets ---------------------------------------------------------------------------------------
def _image_values(value) -> list[bytes | Image.Image]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [v for item in value for v in _image_values(item)]
    if isinstance(value, Image.Image):
        return [value]
    if isinstance(value, dict):
        value = value.get("bytes")
    return [bytes(value)] if isinstance(value, (bytes, bytearray)) and value else []


def items_from_rows(rows: Iterable[dict], spec: Benchmark, name: str, split: str, origin: str = "",
                    first: int = 0) -> Iterator[EvalItem]:
    for number, row in enumerate(rows, start=first):
        item = str(row.get(spec.id_field, number)) if spec.id_field else str(number)
        images = [image for f in spec.image_fields for image in _image_values(row.get(f))]
        yield EvalItem(name, split, item, images, question_text(row, spec), answer_texts(row, spec),
                       f"{origin}#row{number}")


def items_from_hub(spec: Benchmark) -> Iterator[EvalItem]:
    from datasets import Image as ImageFeature
    from datasets import load_dataset

    for config in spec.configs:
        rows = load_dataset(spec.hub_id, config, split=spec.split, streaming=True)
        for name in spec.image_fields:  # bytes, not decoded images: a bad image is then one item's problem
            if rows.features and isinstance(rows.features.get(name), ImageFeature):
                rows = rows.cast_column(name, ImageFeature(decode=False))
        yield from items_from_rows(rows, spec, spec.name, spec.split, f"{spec.hub_id}:{config or ''}")


def items_from_path(name: str, path: str) -> Iterator[EvalItem]:
    """Parquet files (fields as the registry says for `name`, else image/question/answer/id) and image files;
    a file or folder that cannot be read becomes an item with `error` set."""
    spec = BENCHMARKS.get(name, GENERIC)
    root = Path(path)
    for file, error in walk(root):
        label = str(file.relative_to(root)) if root.is_dir() and error is None else file.name
        if error is not None:
            yield EvalItem(name, "?", label, origin=str(file), error=f"cannot list folder ({describe(error)})")
        elif file.suffix == ".parquet":
            yield from _parquet_items(file, spec, name)
        elif file.suffix.lower() in IMAGE_EXTENSIONS:
            try:
                yield EvalItem(name, "images", label, [file.read_bytes()], origin=str(file))
            except OSError as read_error:
                yield EvalItem(name, "images", label, origin=str(file), error=f"cannot read ({describe(read_error)})")


def _parquet_items(file: Path, spec: Benchmark, name: str) -> Iterator[EvalItem]:
    split = spec.split if spec is not GENERIC else file.stem
    try:
        batches = pq.ParquetFile(file).iter_batches(batch_size=ROWS_PER_BATCH)
        first = 0
        for batch in batches:
            rows = batch.to_pylist()
            yield from items_from_rows(rows, spec, name, split, str(file), first)
            first += len(rows)
    except (OSError, pa.ArrowException) as error:
        yield EvalItem(name, split, file.name, origin=str(file),
                       error=f"not a readable parquet file ({describe(error)})")


# building ------------------------------------------------------------------------------------------------------
ITEM_SCHEMA = pa.schema([("code", pa.int32()), ("benchmark", pa.string()), ("split", pa.string()),
                         ("item", pa.string())])
IMAGE_SCHEMA = pa.schema([("code", pa.int32()), ("image", pa.int16()), ("variant", pa.string()),
                          ("phash", pa.uint64())])
EXACT_SCHEMA = pa.schema([("code", pa.int32()), ("image", pa.int16()), ("key", pa.string())])
TEXT_SCHEMA = pa.schema([("code", pa.int32()), ("n", pa.int16()), ("hash", pa.uint64())])
FLUSH_ROWS = 100_000


class _TableWriter:
    """Rows appended to a parquet file in row groups, so a large index never sits in memory as Python tuples."""

    def __init__(self, path: str, schema: pa.Schema):
        self.schema, self.rows = schema, []
        self.writer = pq.ParquetWriter(path, schema)

    def add(self, rows: list[tuple]) -> None:
        self.rows += rows
        if len(self.rows) >= FLUSH_ROWS:
            self.flush()

    def flush(self) -> None:
        columns = list(zip(*self.rows)) if self.rows else [[] for _ in self.schema]
        self.writer.write_table(pa.Table.from_arrays([pa.array(c, t.type) for c, t in zip(columns, self.schema)],
                                                     schema=self.schema))
        self.rows = []

    def close(self) -> None:
        self.flush()
        self.writer.close()


def eval_image_fingerprints(image: bytes | Image.Image) -> tuple[list[tuple[str, int]], set[str]]:
    """(variant hashes, pixel keys) of one evaluation image. A training copy's working image is decoded either
    straight from its bytes (reduced-size JPEG decoding) or from a full decode (when the `images` step seeded the
    cache), so both pixel keys are indexed; a PNG with the same pixels as the full decode has the second."""
    if isinstance(image, Image.Image):
        working = reduce_to_working(image)
        return index_hashes(working), {pixel_key(working)}
    working = decode_working(image)
    full = Image.open(io.BytesIO(image))
    full.load()
    return index_hashes(working), {pixel_key(working), pixel_key(reduce_to_working(full))}


def build_index(output: str, sources: Iterable[tuple[str, str, Iterator[EvalItem]]], radius: int = DEFAULT_RADIUS,
                progress: Callable[[str], None] = lambda message: None) -> dict:
    """Index every item of every (name, source description, items) and write the index folder. Unreadable
    images and files are reported through `progress` and counted in the result; a source with nothing to index
    raises IndexBuildError. The folder's previous index stays in place until the new one is complete."""
    os.makedirs(output, exist_ok=True)
    staging = os.path.join(output, f".building-{os.getpid()}")
    os.makedirs(staging, exist_ok=True)
    try:
        meta = _write_tables(staging, sources, radius, progress)
        for name in ("index.json", "items.parquet", "images.parquet", "exact.parquet", "texts.parquet"):
            if os.path.exists(os.path.join(output, name)):
                os.remove(os.path.join(output, name))
        for name in ("items.parquet", "images.parquet", "exact.parquet", "texts.parquet", "index.json"):
            os.replace(os.path.join(staging, name), os.path.join(output, name))  # index.json last: the marker
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return meta


def _write_tables(folder: str, sources, radius: int, progress) -> dict:
    writers = {name: _TableWriter(os.path.join(folder, f"{name}.parquet"), schema) for name, schema in
               (("items", ITEM_SCHEMA), ("images", IMAGE_SCHEMA), ("exact", EXACT_SCHEMA), ("texts", TEXT_SCHEMA))}
    meta = {"version": INDEX_VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "radius": radius, "benchmarks": {}}
    code = 0
    for name, source, items in sources:
        counts = {"source": source, "items": 0, "images": 0, "images_flat": 0, "unreadable": 0, "texts": 0,
                  "texts_too_short": 0, "splits": set()}
        for item in items:
            if item.error:
                counts["unreadable"] += 1
                progress(f"warning: {item.origin}: {item.error}; not indexed")
                continue
            counts["items"] += 1
            counts["splits"].add(item.split)
            writers["items"].add([(code, item.benchmark, item.split, item.item)])
            _index_item(item, code, writers, counts, progress)
            code += 1
            if counts["items"] % 1000 == 0:
                progress(f"{name}: {counts['items']:,} items")
        counts["splits"] = sorted(counts["splits"])
        meta["benchmarks"][name] = counts
        progress(f"{name}: {counts['items']:,} items, {counts['images']:,} images, {counts['texts']:,} texts"
                 + (f", {counts['unreadable']:,} unreadable" if counts["unreadable"] else ""))
        if counts["images"] == 0 and counts["texts"] == 0:
            raise IndexBuildError(f"{name} ({source}): nothing to index: no readable image and no question+answer "
                                  f"text of {MIN_WORDS}+ words in {counts['items']:,} item(s); an index of it "
                                  f"could never match")
    for writer in writers.values():
        writer.close()
    with open(os.path.join(folder, "index.json"), "w") as f:
        json.dump(meta, f, indent=1)
    return meta


def _index_item(item: EvalItem, code: int, writers: dict, counts: dict, progress) -> None:
    for number, image in enumerate(item.images):
        try:
            hashes, keys = eval_image_fingerprints(image)
        except UNDECODABLE as error:
            counts["unreadable"] += 1
            progress(f"warning: {item.origin or item.item}: image {number} is not a readable image "
                     f"({describe(error)}); not indexed")
            continue
        counts["images"] += 1
        counts["images_flat"] += not hashes
        writers["images"].add([(code, number, variant, value) for variant, value in hashes])
        writers["exact"].add([(code, number, key) for key in sorted(keys)])
    for answer in item.answers:
        windows = item_windows(item.question, answer)
        counts["texts" if windows else "texts_too_short"] += 1
        writers["texts"].add([(code, n, value) for n, value in windows])


# matching ------------------------------------------------------------------------------------------------------
@dataclass
class _Tables:
    """An index in memory: item names, a Hamming index over variant hashes, sorted text hashes, pixel keys."""

    radius: int
    items: list[tuple[str, str, str]]
    variant_codes: np.ndarray
    hamming: HammingIndex
    exact: dict[str, list[int]]
    text_hashes: np.ndarray  # sorted
    text_codes: np.ndarray  # in text_hashes' order
    text_sizes: set[int]


_LOADED: dict[tuple[str, int | None], _Tables] = {}
_LOAD_LOCK = threading.Lock()


def _read_tables(path: str, radius: int | None) -> _Tables:
    with open(os.path.join(path, "index.json")) as f:
        meta = json.load(f)
    if meta.get("version") != INDEX_VERSION:
        raise ValueError(f"{path}: index format {meta.get('version')}, this code reads {INDEX_VERSION}; rebuild it "
                         f"with python -m filters.decontam build")
    items_table = pq.read_table(os.path.join(path, "items.parquet"))
    items: list = [None] * len(items_table)
    for code, *key in zip(*(items_table.column(c).to_pylist() for c in ("code", "benchmark", "split", "item"))):
        items[code] = tuple(key)
    images = pq.read_table(os.path.join(path, "images.parquet"), columns=["code", "phash"])
    exact: dict[str, list[int]] = {}
    for code, key in zip(*(pq.read_table(os.path.join(path, "exact.parquet")).column(c).to_pylist()
                           for c in ("code", "key"))):
        exact.setdefault(key, []).append(code)
    texts = pq.read_table(os.path.join(path, "texts.parquet"))
    hashes = texts.column("hash").to_numpy()
    order = np.argsort(hashes, kind="stable")
    radius = radius if radius is not None else meta["radius"]
    return _Tables(radius, items, images.column("code").to_numpy(),
                   HammingIndex(images.column("phash").to_numpy(), radius), exact, hashes[order],
                   texts.column("code").to_numpy()[order], set(texts.column("n").to_pylist()))


class DecontaminationIndex:
    """An index on disk, opened on first use. Constructing and pickling it read nothing: datatrove sends it to
    every task, and each process loads the tables once (shared by every instance with the same path and radius);
    the loaded tables never travel in a pickle."""

    def __init__(self, path: str, radius: int | None = None):
        self.path, self._radius = path, radius

    def __getstate__(self) -> dict:
        return {"path": self.path, "_radius": self._radius}

    @property
    def tables(self) -> _Tables:
        key = (os.path.abspath(self.path), self._radius)
        tables = _LOADED.get(key)
        if tables is None:
            with _LOAD_LOCK:
                tables = _LOADED.get(key)
                if tables is None:
                    tables = _LOADED[key] = _read_tables(self.path, self._radius)
        return tables

    @property
    def radius(self) -> int:
        return self.tables.radius

    def match_working(self, images: list[Image.Image]) -> list[list[Match]]:
        """Per working copy (RGB, longest side <= 448 px), its matches: exact ones, then perceptual ones (the
        nearest variant per evaluation item, over the image and its inward crops)."""
        tables = self.tables
        if not images:
            return []
        queries = [query_hashes(image) for image in images]
        flat = np.array([h for hashes in queries for h in hashes], dtype=np.uint64)
        near = iter(tables.hamming.search(flat) if len(flat) else [])
        found = []
        for image, hashes in zip(images, queries):
            exact = set(tables.exact.get(pixel_key(image), ()))
            best: dict[int, int] = {}
            for _ in hashes:
                for entry, distance in next(near):
                    code = int(tables.variant_codes[entry])
                    if code not in exact and distance < best.get(code, 65):
                        best[code] = distance
            matches = [Match(*tables.items[code], "exact", 0) for code in sorted(exact, key=tables.items.__getitem__)]
            matches += [Match(*tables.items[code], "phash", d)
                        for code, d in sorted(best.items(), key=lambda kv: (kv[1], tables.items[kv[0]]))]
            found.append(matches)
        return found

    def match_images(self, images: list[Image.Image]) -> list[list[Match]]:
        """Like match_working, for decoded images of any size and mode."""
        return self.match_working([reduce_to_working(image) for image in images])

    def match_image_bytes(self, data: list[bytes]) -> list[list[Match] | None]:
        """Like match_images, from encoded bytes through the task's shared working copies (`filters.pixels`);
        None for bytes that do not decode. Decontamination is the last step that reads pixels in every
        pipeline: the copies leave the cache."""
        decoded: list[Image.Image | None] = []
        for blob in data:
            try:
                decoded.append(working_image(blob, last_use=True))
            except UNDECODABLE:
                decoded.append(None)
        matched = iter(self.match_working([d for d in decoded if d is not None]))
        return [next(matched) if d is not None else None for d in decoded]

    def match_text(self, text: str) -> list[Match]:
        tables = self.tables
        windows = np.fromiter((value for _, value in text_windows(text, tables.text_sizes)), dtype=np.uint64)
        if not len(windows) or not len(tables.text_hashes):
            return []
        left = np.searchsorted(tables.text_hashes, windows, side="left")
        right = np.searchsorted(tables.text_hashes, windows, side="right")
        codes = {int(c) for lo, hi in zip(left, right) if hi > lo for c in tables.text_codes[lo:hi]}
        return [Match(*tables.items[code], "text", 0) for code in sorted(codes, key=tables.items.__getitem__)]
