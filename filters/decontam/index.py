"""The decontamination index: build it from evaluation sets, save it versioned, load it, match against it.

An index is a folder:
  index.json      format version, radius, n-gram size, and per benchmark: source, split, items, images, texts
  images.parquet  one row per indexed image variant: benchmark, split, item, image, variant, sha256, phash
  texts.parquet   one row per question+answer window: benchmark, split, item, n, hash
Matching goes in tiers: `exact` (same decoded pixels), `phash` (a perceptual hash within the radius of one of
the image's indexed variants, found through `HammingIndex`), `text` (a question+answer window).
"""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from filters.decontam.hamming_index import HammingIndex
from filters.decontam.hashing import index_hashes, open_image, phash, pixel_sha256
from filters.decontam.registry import BENCHMARKS, GENERIC, Benchmark
from filters.decontam.text import item_windows, text_windows

INDEX_VERSION = 1
DEFAULT_RADIUS = 8  # calibrated in tests/test_decontam.py: recall >= 0.97 per transform, false matches < 0.1%
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


@dataclass
class EvalItem:
    benchmark: str
    split: str
    item: str
    images: list[Image.Image] = field(default_factory=list)
    question: str | None = None
    answers: list[str] = field(default_factory=list)


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
def _as_image(value) -> Image.Image | None:
    if value is None:
        return None
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict):
        value = value.get("bytes")
    return open_image(value) if isinstance(value, (bytes, bytearray)) else None


def _answers(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(dict.fromkeys(str(v) for v in value if v is not None))[:5]
    return [str(value)]


def items_from_rows(rows: Iterable[dict], spec: Benchmark, name: str, split: str) -> Iterator[EvalItem]:
    for number, row in enumerate(rows):
        item = str(row.get(spec.id_field, number)) if spec.id_field else str(number)
        images = [image for f in spec.image_fields if (image := _as_image(row.get(f))) is not None]
        question = row.get(spec.question_field) if spec.question_field else None
        yield EvalItem(name, split, item, images, question, _answers(row.get(spec.answer_field)))


def items_from_hub(spec: Benchmark) -> Iterator[EvalItem]:
    from datasets import load_dataset

    for config in spec.configs:
        rows = load_dataset(spec.hub_id, config, split=spec.split, streaming=True)
        yield from items_from_rows(rows, spec, spec.name, spec.split)


def items_from_path(name: str, path: str) -> Iterator[EvalItem]:
    """Parquet files (fields as the registry says for `name`, else image/question/answer/id) and image files."""
    spec = BENCHMARKS.get(name, GENERIC)
    root = Path(path)
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    for file in files:
        if file.suffix == ".parquet":
            for batch in pq.ParquetFile(file).iter_batches(batch_size=256):
                yield from items_from_rows(batch.to_pylist(), spec, name, spec.split if spec is not GENERIC else
                                           file.stem)
        elif file.suffix.lower() in IMAGE_SUFFIXES:
            yield EvalItem(name, "images", str(file.relative_to(root) if root.is_dir() else file.name),
                           [open_image(file.read_bytes())])


# building ------------------------------------------------------------------------------------------------------
IMAGE_SCHEMA = pa.schema([("benchmark", pa.string()), ("split", pa.string()), ("item", pa.string()),
                          ("image", pa.int32()), ("variant", pa.string()), ("sha256", pa.string()),
                          ("phash", pa.uint64())])
TEXT_SCHEMA = pa.schema([("benchmark", pa.string()), ("split", pa.string()), ("item", pa.string()),
                         ("n", pa.int32()), ("hash", pa.uint64())])


def build_index(output: str, sources: Iterable[tuple[str, str, Iterator[EvalItem]]], radius: int = DEFAULT_RADIUS,
                progress=lambda message: None) -> dict:
    """Index every item of every (name, source description, items) and write the index folder."""
    os.makedirs(output, exist_ok=True)
    image_rows, text_rows = [], []
    meta = {"version": INDEX_VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "radius": radius, "benchmarks": {}}
    for name, source, items in sources:
        counts = {"source": source, "items": 0, "images": 0, "texts": 0, "texts_too_short": 0, "splits": set()}
        for item in items:
            counts["items"] += 1
            counts["splits"].add(item.split)
            for number, image in enumerate(item.images):
                digest = pixel_sha256(image)
                image_rows += [(item.benchmark, item.split, item.item, number, variant, digest, value)
                               for variant, value in index_hashes(image)]
                counts["images"] += 1
            for answer in item.answers:
                windows = item_windows(item.question, answer)
                counts["texts" if windows else "texts_too_short"] += 1
                text_rows += [(item.benchmark, item.split, item.item, n, value) for n, value in windows]
            if counts["items"] % 1000 == 0:
                progress(f"{name}: {counts['items']:,} items")
        counts["splits"] = sorted(counts["splits"])
        meta["benchmarks"][name] = counts
        progress(f"{name}: {counts['items']:,} items, {counts['images']:,} images, {counts['texts']:,} texts")
    pq.write_table(pa.Table.from_pylist([dict(zip(IMAGE_SCHEMA.names, r)) for r in image_rows], IMAGE_SCHEMA),
                   os.path.join(output, "images.parquet"))
    pq.write_table(pa.Table.from_pylist([dict(zip(TEXT_SCHEMA.names, r)) for r in text_rows], TEXT_SCHEMA),
                   os.path.join(output, "texts.parquet"))
    with open(os.path.join(output, "index.json"), "w") as f:
        json.dump(meta, f, indent=1)
    return meta


# matching ------------------------------------------------------------------------------------------------------
class DecontaminationIndex:
    """A loaded index. Cheap to pickle (workers load it themselves, once)."""

    def __init__(self, path: str, radius: int | None = None):
        self.path, self._radius = path, radius
        self._loaded = False

    def __getstate__(self) -> dict:
        return {"path": self.path, "_radius": self._radius, "_loaded": False}

    def _load(self) -> None:
        if self._loaded:
            return
        with open(os.path.join(self.path, "index.json")) as f:
            self.meta = json.load(f)
        if self.meta.get("version") != INDEX_VERSION:
            raise ValueError(f"{self.path}: index format {self.meta.get('version')}, this code reads {INDEX_VERSION}")
        self.radius = self._radius if self._radius is not None else self.meta["radius"]
        images = pq.read_table(os.path.join(self.path, "images.parquet"))
        self.image_keys = list(zip(images.column("benchmark").to_pylist(), images.column("split").to_pylist(),
                                   images.column("item").to_pylist()))
        self.exact: dict[str, set[tuple]] = defaultdict(set)
        for key, digest in zip(self.image_keys, images.column("sha256").to_pylist()):
            self.exact[digest].add(key)
        self.hamming = HammingIndex(images.column("phash").to_numpy(), self.radius)
        texts = pq.read_table(os.path.join(self.path, "texts.parquet"))
        self.texts: dict[int, set[tuple]] = defaultdict(set)
        for b, s, i, value in zip(*(texts.column(c).to_pylist() for c in ("benchmark", "split", "item", "hash"))):
            self.texts[value].add((b, s, i))
        self.text_sizes = set(texts.column("n").to_pylist())
        self._loaded = True

    def match_images(self, images: list[Image.Image]) -> list[list[Match]]:
        """Per image, its matches: exact ones, then perceptual ones (nearest variant per item)."""
        self._load()
        if not images:
            return []
        found = []
        hashes = np.array([phash(image) for image in images], dtype=np.uint64)
        for image, near in zip(images, self.hamming.search(hashes)):
            exact = self.exact.get(pixel_sha256(image), set())
            matches = [Match(*key, "exact", 0) for key in sorted(exact)]
            best: dict[tuple, int] = {}
            for entry, distance in near:
                key = self.image_keys[entry]
                if key not in exact and distance < best.get(key, 65):
                    best[key] = distance
            matches += [Match(*key, "phash", d) for key, d in sorted(best.items(), key=lambda kv: (kv[1], kv[0]))]
            found.append(matches)
        return found

    def match_image_bytes(self, data: list[bytes]) -> list[list[Match] | None]:
        """Like match_images, from encoded bytes; None for bytes that do not decode."""
        decoded = []
        for blob in data:
            try:
                decoded.append(open_image(blob))
            except (OSError, ValueError, Image.DecompressionBombError):
                decoded.append(None)
        matched = iter(self.match_images([d for d in decoded if d is not None]))
        return [next(matched) if d is not None else None for d in decoded]

    def match_text(self, text: str) -> list[Match]:
        self._load()
        keys = set()
        for _, value in text_windows(text, self.text_sizes):
            keys |= self.texts.get(value, set())
        return [Match(*key, "text", 0) for key in sorted(keys)]

