"""Training data streamed from what the pipelines write, in a deterministic order that a checkpoint can resume.

Inputs (`--data`, several allowed): a pretraining mixture (`mixture.json` kind "pretrain", webdataset tars in the
`mixtures.layout` layout), an SFT mixture (kind "sft", parquet with `images` and `texts` columns), a Cauldron
subset folder (same columns, the published `HuggingFaceM4/the_cauldron` schema), or single .tar/.parquet files.

The order: an endless stream of epochs; each epoch visits the files in an order drawn from (seed, epoch) and each
file from its first sample. Rank r of w keeps files r, r+w, ... of that order (or, with fewer files than ranks,
every w-th sample), so ranks read disjoint parts. Samples are grouped by length: `length_buffer` samples at a
time are sorted by estimated length and cut into batches, whose order is then shuffled from (seed, rank, buffer).
Every batch gets a global index; its **position** is the buffer's first sample (epoch, file, row) plus that index.
Restarting from a position rebuilds the same buffer and skips the batches already trained on: an exact resume
that reads at most one buffer again. DataLoader worker k of K collates batches k, k+K, ... (all workers walk the
same cheap sequence; only the owner decodes images and tokenizes), so the loader returns batches in order.
"""

from __future__ import annotations

import glob
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pyarrow.parquet as pq
import torch

from mixtures.layout import MIXTURE_FILE, BadSample, iter_samples
from trainer.collate import Batch, Example, Renderer, collate
from trainer.config import ConfigError


@dataclass(frozen=True)
class DataFile:
    path: str
    kind: str  # "pretrain" (tar) or "sft" (parquet)
    # A pretraining mixture's ((source, max_tokens), ...) and image_tokens from its mixture.json: the length limit
    # each sample was accepted under, which the trainer keeps (`collate.Renderer`)
    max_tokens: tuple[tuple[str, int], ...] = ()
    image_tokens: int = 64


def find_files(paths: list[str]) -> list[DataFile]:
    """The data files of every `--data` entry, checked before any training (one line naming a bad entry)."""
    found = []
    for path in paths:
        found += _files_of(path)
    if not found:
        raise ConfigError("--data: no .tar or .parquet files in " + ", ".join(paths))
    for data in found:
        if data.kind == "sft":
            _check_parquet(data.path)
    return found


def _files_of(path: str) -> list[DataFile]:
    root = Path(path)
    if root.is_file():
        kinds = {".tar": "pretrain", ".parquet": "sft"}
        if root.suffix not in kinds:
            raise ConfigError(f"--data {path}: not a .tar or .parquet file")
        return [DataFile(str(root), kinds[root.suffix])]
    if not root.is_dir():
        raise ConfigError(f"--data {path}: no such file or folder")
    if (root / MIXTURE_FILE).is_file():
        try:
            info = json.loads((root / MIXTURE_FILE).read_text())
            kind, pattern = info["kind"], info["files"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ConfigError(f"--data {path}: unreadable {MIXTURE_FILE} ({err})") from None
        outside = not isinstance(pattern, str) or ".." in pattern or pattern.startswith("/")
        if kind not in ("pretrain", "sft") or outside:
            raise ConfigError(f"--data {path}: {MIXTURE_FILE} has kind {kind!r}, files {pattern!r}")
        limits, image_tokens = _limits(path, info) if kind == "pretrain" else ((), 64)
        return [DataFile(f, kind, limits, image_tokens) for f in sorted(glob.glob(str(root / pattern)))]
    inner = sorted(p.parent for p in root.rglob(MIXTURE_FILE))
    if inner:  # e.g. the Cauldron's output: its subsets and the SFT mixture drawn from them (the same rows twice)
        raise ConfigError(f"--data {path}: holds the mixture {inner[0]}; name it, or the subset folders, instead")
    tars = sorted(str(p) for p in root.rglob("*.tar"))
    parquets = sorted(str(p) for p in root.rglob("*.parquet") if "removed" not in p.relative_to(root).parts)
    return [DataFile(f, "pretrain") for f in tars] + [DataFile(f, "sft") for f in parquets]


def _limits(path: str, info: dict) -> tuple[tuple[tuple[str, int], ...], int]:
    """The sources' `max_tokens` and the `image_tokens` of a mixture.json (`mixtures.layout.MixtureInfo`)."""
    sources, image_tokens = info.get("sources", {}), info.get("image_tokens", 64)
    if not isinstance(sources, dict) or not isinstance(image_tokens, int) or image_tokens < 0:
        raise ConfigError(f"--data {path}: {MIXTURE_FILE} has sources {sources!r}, image_tokens {image_tokens!r}")
    limits = []
    for name, target in sorted(sources.items()):
        limit = target.get("max_tokens") if isinstance(target, dict) else None
        if limit is not None and (not isinstance(limit, int) or limit < 1):
            raise ConfigError(f"--data {path}: {MIXTURE_FILE} source {name!r} has max_tokens {limit!r}")
        if limit is not None:
            limits.append((name, limit))
    return tuple(limits), image_tokens


def _check_parquet(path: str) -> None:
    try:
        names = set(pq.ParquetFile(path).schema_arrow.names)
    except Exception as err:  # pyarrow raises ArrowInvalid, OSError, ... on a damaged footer
        raise ConfigError(f"--data {path}: not a readable parquet file ({err})") from None
    if not {"images", "texts"} <= names:
        raise ConfigError(f"--data {path}: columns {sorted(names)}; SFT data needs 'images' and 'texts'")


def _tar_examples(data: DataFile, start: int) -> Iterator[tuple[int, Example | str]]:
    """(row, example or the reason it is bad) of one tar from row `start`; a sample of a source with a
    `max_tokens` carries that limit."""
    limits = dict(data.max_tokens)
    with open(data.path, "rb") as f:
        for row, sample in enumerate(iter_samples(f)):
            if row < start:
                continue
            if isinstance(sample, BadSample):
                yield row, sample.reason
            else:
                limit = limits.get(sample.source)
                yield row, Example(f"{data.path}:{row}", sample.images, texts=sample.texts,
                                   mixture_limit=None if limit is None else (limit, data.image_tokens))


def _parquet_row(path: str, row: int, images, texts) -> Example | str:
    """A row in the Cauldron schema: images [{bytes, path}], texts [{user, assistant, source}]."""
    if not isinstance(images, list) or not isinstance(texts, list) or not texts:
        return "bad_row"
    data = [image.get("bytes") if isinstance(image, dict) else None for image in images]
    turns = [(t.get("user"), t.get("assistant")) if isinstance(t, dict) else (None, None) for t in texts]
    if not all(isinstance(d, bytes) for d in data) or not all(isinstance(u, str) and isinstance(a, str)
                                                              for u, a in turns):
        return "bad_row"
    return Example(f"{path}:{row}", data, turns=turns)


def _parquet_examples(data: DataFile, start: int) -> Iterator[tuple[int, Example | str]]:
    """Rows from `start`, a row group at a time in slices of 64 rows (bounded memory)."""
    path = data.path
    source = pq.ParquetFile(path)
    row = 0
    for group in range(source.num_row_groups):
        size = source.metadata.row_group(group).num_rows
        if row + size <= start:
            row += size
            continue
        for table in source.iter_batches(batch_size=64, row_groups=[group], columns=["images", "texts"]):
            for images, texts in zip(table.column("images").to_pylist(), table.column("texts").to_pylist()):
                if row >= start:
                    yield row, _parquet_row(path, row, images, texts)
                row += 1


def examples_of(data: DataFile, start: int) -> Iterator[tuple[int, Example | str]]:
    """A file's rows from `start`; a file that breaks midway ends there with one 'unreadable_file' entry."""
    reader = _tar_examples if data.kind == "pretrain" else _parquet_examples
    row = start
    try:
        for row, item in reader(data, start):
            yield row, item
    except Exception as err:  # a truncated tar or parquet, a file removed under us: counted, never a crash
        from datatrove.utils.logging import logger

        logger.warning(f"{data.path}: unreadable after row {row} ({type(err).__name__}: {err})")
        yield row + 1, "unreadable_file"


@dataclass
class StreamSpec:
    files: list[DataFile]
    batch_size: int
    length_buffer: int
    image_tokens: int  # tokens an image costs, for the length estimate
    seed: int = 0
    rank: int = 0
    world: int = 1


def _epoch_files(spec: StreamSpec, epoch: int) -> tuple[list[DataFile], bool]:
    """This rank's files in `epoch`, and whether samples (rather than files) are split between ranks."""
    order = list(spec.files)
    random.Random(f"{spec.seed}:files:{epoch}").shuffle(order)
    if len(order) >= spec.world:
        return order[spec.rank::spec.world], False
    return order, True


def _samples(spec: StreamSpec, position: dict) -> Iterator[tuple[dict, Example | str]]:
    """Endless (position of this sample, example or bad reason) from `position` = {epoch, file, row, seen}."""
    epoch, file, row, seen = position["epoch"], position["file"], position["row"], position["seen"]
    while True:
        files, split_samples = _epoch_files(spec, epoch)
        found = False
        for index in range(file, len(files)):
            for row_, item in examples_of(files[index], row):
                found = True
                here = {"epoch": epoch, "file": index, "row": row_, "seen": seen}
                seen += 1
                if not split_samples or (seen - 1) % spec.world == spec.rank:
                    yield here, item
            row = 0
        if not found and file == 0:
            raise ConfigError(f"--data: rank {spec.rank} found no samples in an epoch")
        epoch, file = epoch + 1, 0


START = {"epoch": 0, "file": 0, "row": 0, "seen": 0, "buffer_batch": 0, "batch": 0}


def batches(spec: StreamSpec, position: dict = START) -> Iterator[tuple[int, dict, list[Example], dict]]:
    """Endless (batch index, its buffer's position, examples, bad-row counts). `position` names a buffer's first
    sample ({epoch, file, row, seen}) and its first batch index (`buffer_batch`). A buffer of bad rows only
    gives one empty batch, so a loop over hopeless data sees it rather than waiting forever."""
    stream = _samples(spec, position)
    index = position["buffer_batch"]
    while True:
        start, buffer, bad = None, [], {}
        for here, item in stream:
            start = start or {**here, "buffer_batch": index}
            if isinstance(item, str):
                bad[item] = bad.get(item, 0) + 1
            else:
                buffer.append(item)
            if len(buffer) + sum(bad.values()) == spec.length_buffer:
                break
        buffer.sort(key=lambda e: e.length_estimate(spec.image_tokens))
        chunks = [buffer[i:i + spec.batch_size] for i in range(0, len(buffer), spec.batch_size)] or [[]]
        random.Random(f"{spec.seed}:batches:{spec.rank}:{index}").shuffle(chunks)
        for number, chunk in enumerate(chunks):
            yield index, start, chunk, bad if number == 0 else {}
            index += 1


class BatchStream(torch.utils.data.IterableDataset):
    """Collated batches in index order from `position["batch"]`; with DataLoader workers, each collates its
    share. A batch's `position` is where to restart to train on the batch after it (`batch` = its index + 1)."""

    def __init__(self, spec: StreamSpec, renderer: Renderer, position: dict = START):
        self.spec, self.renderer, self.position = spec, renderer, position

    def __iter__(self) -> Iterator[Batch]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        first = self.position["batch"]
        for index, start, examples, bad in batches(self.spec, self.position):
            if index < first or (index - first) % workers != worker:
                continue
            batch = collate(self.renderer, examples, index, {**start, "batch": index + 1})
            batch.skipped.update(bad)
            yield batch
