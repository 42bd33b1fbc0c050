"""Build one Cauldron subset: format its rows, merge rows on identical images, drop evaluation matches, write it.

Two passes over the subset's rows, so memory holds one group's images at a time, not the subset:
  1. format each row (the family's formatter, or the published schema's turns), key its images by their pixels
     (`filters.decontam.hashing.pixel_key` of the shared working copy: the same picture re-encoded or renamed
     gets the same key) and match images and Q/A text against the decontamination index. Rows whose images are
     the same join one group; a matched row is removed and recorded.
  2. read the rows again and write each group, once its last row is seen, as one row of the published schema
     (`images`: list of Image; `texts`: list of {user, assistant, source}) with all of its turns. The images of
     groups still open wait in memory up to `OPEN_IMAGES_IN_MEMORY`, past that in a local temporary file
     (`_OpenImages`), so pictures asked about again far apart cost disk, not memory.
Every input row ends up in exactly one place: a written row's turns, or `removed/<subset>.parquet` with its
reason (unreadable, evaluation match, over --max-rows); `stats/<subset>.json` counts them.
"""

from __future__ import annotations

import json
import random
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq
from datatrove.io import DataFolder, get_datafolder
from datatrove.pipeline.base import PipelineStep

from cauldron import sources
from cauldron.formatters import Example, FormatError, format_row
from cauldron.registry import Entry
from filters.decontam.hashing import pixel_key
from filters.decontam.index import UNDECODABLE, DecontaminationIndex
from filters.pixels import working_image
from filters.shard_files import TempFile, write_atomically
from mixtures.layout import conversation_features

ROWS_PER_GROUP = 64  # parquet row group: a few MB of images
OPEN_IMAGES_IN_MEMORY = 128 << 20  # images of open groups held in memory before they go to a temporary file
DATA_FILE = "{name}/train-00000-of-00001.parquet"  # the published repository's layout


def published_features():
    """The features of every published config: The Cauldron's schema, defined once in `mixtures.layout`."""
    return conversation_features(sft=False)


REMOVED_SCHEMA = pa.schema([("source_row", pa.int64()), ("reason", pa.string()), ("detail", pa.string())])
TOKENS_SCHEMA = pa.schema([("answer_tokens", pa.int64()), ("text_tokens", pa.int64()), ("images", pa.int64())])


@dataclass
class Item:
    row: int
    images: list[bytes]
    turns: list[tuple[str, str, str]]  # (user, assistant, source)


@dataclass
class Plan:
    """Pass 1's result: the group of every kept row, where each group ends, and what was removed."""

    group_of: dict[int, int] = field(default_factory=dict)  # source row -> group number
    last_row: dict[int, int] = field(default_factory=dict)  # group -> its last source row
    removed: list[tuple[int, str, str]] = field(default_factory=list)  # (row, reason, detail)
    rows: int = 0


def _item(entry: Entry, row: dict, number: int, from_published: bool) -> Item:
    if not from_published:
        example: Example = format_row(entry, row, number)
        return Item(number, example.images, [(u, a, entry.source_string) for u, a in example.turns])
    images, texts = row.get("images") or [], row.get("texts")
    if not isinstance(texts, list) or not texts:
        raise FormatError("field 'texts' is missing or empty")
    try:
        blobs = [bytes(i["bytes"]) for i in images]
        turns = [(t["user"], t["assistant"], t.get("source") or entry.source_string) for t in texts]
    except (TypeError, KeyError):
        raise FormatError("row is not in the published schema (images: [{bytes}], texts: [{user, ...}])") from None
    if any(not b for b in blobs):
        raise FormatError("image without bytes")
    if not all(isinstance(u, str) and isinstance(a, str) and u.strip() and a.strip() for u, a, _ in turns):
        raise FormatError("a turn without user or assistant text")
    return Item(number, blobs, turns)


def items(entry: Entry, source: str | None, from_published: bool) -> Iterator[Item | tuple[int, str]]:
    """Each row as an Item, or (row, reason) when it cannot be read."""
    for number, row in enumerate(sources.rows(entry, source, from_published)):
        try:
            yield _item(entry, row, number, from_published)
        except FormatError as error:
            yield number, f"unreadable: {error}"


def _match(index: DecontaminationIndex | None, item: Item, working: list) -> str | None:
    """The first evaluation item the row's images (their working copies) or Q/A text match, described."""
    if index is None:
        return None
    for matches in index.match_working(working):
        if matches:
            m = matches[0]
            return f"{m.benchmark}/{m.split}/{m.item} ({m.tier}, distance {m.distance})"
    for user, assistant, _ in item.turns:
        if matches := index.match_text(f"{user}\n{assistant}"):
            m = matches[0]
            return f"{m.benchmark}/{m.split}/{m.item} (text)"
    return None


def plan(entry: Entry, source, from_published: bool, index, max_rows: int) -> Plan:
    """Pass 1: group rows by the pixels of their images, remove evaluation matches and rows past --max-rows."""
    result, groups = Plan(), {}
    for item in items(entry, source, from_published):
        result.rows += 1
        if isinstance(item, tuple):
            result.removed.append((item[0], "unreadable", item[1].removeprefix("unreadable: ")))
            continue
        try:
            working = [working_image(b) for b in item.images]  # cached: a picture repeated nearby decodes once
        except UNDECODABLE as error:
            result.removed.append((item.row, "unreadable", f"image does not decode ({type(error).__name__})"))
            continue
        if match := _match(index, item, working):
            result.removed.append((item.row, "eval_match", match))
            continue
        key = tuple(pixel_key(w) for w in working) if working else ("row", item.row)  # text-only: never merged
        group = groups.get(key)
        if group is None:
            if len(groups) >= max_rows:
                result.removed.append((item.row, "over_max_rows", f"--max-rows {max_rows}"))
                continue
            group = groups[key] = len(groups)
        result.group_of[item.row] = group
        result.last_row[group] = item.row
    return result


class _ParquetFile(TempFile):
    def __init__(self, folder: DataFolder, filename: str, schema: pa.Schema):
        super().__init__(folder, filename)
        self.writer, self.schema, self.buffer = pq.ParquetWriter(self.file, schema), schema, []

    def add(self, row: dict) -> None:
        self.buffer.append(row)
        if len(self.buffer) >= ROWS_PER_GROUP:
            self.flush()

    def flush(self) -> None:
        if self.buffer:
            self.writer.write_table(pa.Table.from_pylist(self.buffer, schema=self.schema))
            self.buffer = []

    def _close(self) -> None:
        self.flush()
        self.writer.close()
        self.file.close()


def answer_token_counter(tokenizer_name: str):
    """Contract 4: tokens of a text = len(tokenizer(text, add_special_tokens=False).input_ids)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_name)
    return lambda text: len(tokenizer(text, add_special_tokens=False).input_ids)


@dataclass
class SubsetSettings:
    """What every subset task needs (pickled into each worker)."""

    output: str
    names: list[str]  # rank -> subset name
    source: str | None
    from_published: bool
    max_rows: int
    decontam_index: str | None
    tokenizer: str
    shuffle_turns: bool
    image_tokens: int = 64  # paper, section 2.3


class BuildSubsets(PipelineStep):
    """datatrove step: task `rank` builds subset `names[rank]` (one task per subset, whatever the workers)."""

    name = "🍲 Cauldron subset"
    type = "🔨 - BUILD"

    def __init__(self, settings: SubsetSettings):
        super().__init__()
        self.settings = settings

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        from cauldron.registry import entries

        build_subset(entries()[self.settings.names[rank]], self.settings)
        self.stat_update("subsets")
        yield from ()


def build_subset(entry: Entry, s: SubsetSettings) -> dict:
    index = DecontaminationIndex(s.decontam_index) if s.decontam_index else None
    result = plan(entry, s.source, s.from_published, index, s.max_rows)
    count = answer_token_counter(s.tokenizer)
    out = get_datafolder(s.output)
    data = _ParquetFile(out, DATA_FILE.format(name=entry.name), published_features().arrow_schema)
    tokens = _ParquetFile(out, f"tokens/{entry.name}.parquet", TOKENS_SCHEMA)
    removed = _ParquetFile(out, f"removed/{entry.name}.parquet", REMOVED_SCHEMA)
    stats = Counter()
    try:
        with _OpenImages(OPEN_IMAGES_IN_MEMORY) as waiting:
            open_groups: dict[int, Item] = {}  # images as `waiting` handles
            for item in items(entry, s.source, s.from_published):
                group = result.group_of.get(item.row) if isinstance(item, Item) else None
                if group is None:
                    continue
                last = result.last_row[group] == item.row
                if last and group not in open_groups:  # a group of one row, the common case: written at once
                    _write_group(item, entry, s, data, tokens, count, stats)
                    continue
                if group not in open_groups:
                    open_groups[group] = Item(item.row, waiting.put(item.images), [])
                open_groups[group].turns.extend(item.turns)
                if last:
                    held = open_groups.pop(group)
                    _write_group(Item(held.row, waiting.pop(held.images), held.turns), entry, s, data, tokens, count,
                                 stats)
        for row, reason, detail in result.removed:
            removed.add({"source_row": row, "reason": reason, "detail": detail})
            stats[f"removed_{reason}"] += 1
        for f in (data, tokens, removed):
            f.commit()
    except BaseException:
        for f in (data, tokens, removed):
            f.abort()
        raise
    record = {"subset": entry.name, "source": sources.describe(entry, s.source, s.from_published),
              "input_rows": result.rows, "merged_rows": result.rows - len(result.removed) - stats["rows"], **stats}
    with write_atomically(out, f"stats/{entry.name}.json", "w") as f:
        json.dump(record, f, indent=1, sort_keys=True)
    return record


class _OpenImages:
    """The images of groups still open: in memory up to `memory_bytes`, past that appended to a local temporary
    file (deleted when the block ends)."""

    def __init__(self, memory_bytes: int):
        self.memory_bytes, self.held, self.file = memory_bytes, 0, None

    def __enter__(self) -> "_OpenImages":
        return self

    def __exit__(self, *exc) -> None:
        if self.file is not None:
            self.file.close()

    def put(self, images: list[bytes]) -> tuple[str, list]:
        size = sum(map(len, images))
        if self.held + size <= self.memory_bytes:
            self.held += size
            return "memory", images
        if self.file is None:
            self.file = tempfile.TemporaryFile()
        spans = []
        for data in images:
            spans.append((self.file.seek(0, 2), len(data)))
            self.file.write(data)
        return "file", spans

    def pop(self, handle: tuple[str, list]) -> list[bytes]:
        where, value = handle
        if where == "memory":
            self.held -= sum(map(len, value))
            return value
        found = []
        for offset, length in value:
            self.file.seek(offset)
            found.append(self.file.read(length))
        return found


def _write_group(group: Item, entry: Entry, s: SubsetSettings, data, tokens, count, stats: Counter) -> None:
    turns = group.turns
    if s.shuffle_turns and len(turns) > 1:
        turns = list(turns)
        random.Random(f"{entry.name}:turns:{group.row}").shuffle(turns)
    answer = sum(count(a) for _, a, _ in turns)
    text = sum(count(u) + count(a) for u, a, _ in turns)
    data.add({"images": [{"bytes": b, "path": None} for b in group.images],
              "texts": [{"user": u, "assistant": a, "source": src} for u, a, src in turns]})
    tokens.add({"answer_tokens": answer, "text_tokens": text, "images": len(group.images)})
    stats.update(rows=1, turns=len(turns), images=len(group.images), answer_tokens=answer)
