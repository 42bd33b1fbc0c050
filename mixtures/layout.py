"""The one layout every mixture uses: a webdataset sample per training example, and `mixture.json` beside the shards.

A pretraining sample (one OBELICS document or part of one, one image-text pair, one PDF page) is written as

    KEY.json          {"source", "origin", "texts", "images", "image_sizes", "tokens"}
    KEY.0.jpg ...     the images in document order, named by the `images` entries

`texts` and `images` are parallel lists, as in OBELICS: at each position exactly one of them is set, so
`texts=[None, "a caption"]`, `images=["0.jpg", None]` is an image followed by its caption. The JSON member that
names image members of the same sample is what webdataset's maintainer recommends for interleaved data
(https://github.com/webdataset/webdataset/issues/289). Keys hold no dot: webdataset and `datasets` take a
member's key up to the first dot of its name.

`mixture.json` (written by every mixture builder, read by `mixtures.validate` and the trainer) says what the
mixture was meant to be: its kind, what shares are measured in, and per source the target share and limits.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
from dataclasses import asdict, dataclass, field
from typing import IO, Iterator

from filters.shard_files import write_atomically

MIXTURE_FILE = "mixture.json"
IMAGE_EXTENSION = "jpg"
MAX_MEMBER_BYTES = 64 << 20  # an image or JSON member larger than this is refused unread
_KEY = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_FIELD = re.compile(r"^(json|\d{1,4}\.jpg)$")


@dataclass
class Sample:
    """One training example: the interleaved layout, its images' bytes, where it came from and what it costs."""

    key: str
    source: str
    texts: list[str | None]
    images: list[bytes]
    origin: dict = field(default_factory=dict)  # {"id", "file", "row", "part", "parts"}
    image_sizes: list[list[int]] = field(default_factory=list)  # [width, height] per image, as stored
    tokens: dict = field(default_factory=dict)  # {"text", "image", "total"}

    def layout(self) -> tuple[list[str | None], list[str | None]]:
        """(`texts`, `images`) as written: image positions are where `texts` is None, in order."""
        names, index = [], 0
        for text in self.texts:
            names.append(f"{index}.{IMAGE_EXTENSION}" if text is None else None)
            index += text is None
        if index != len(self.images):
            raise ValueError(f"sample {self.key}: {index} image positions but {len(self.images)} images")
        return self.texts, names

    def members(self) -> list[tuple[str, bytes]]:
        """The tar members of this sample, JSON first, in a fixed order (same sample -> same bytes)."""
        if not _KEY.match(self.key):
            raise ValueError(f"sample key {self.key!r}: use letters, digits, '_' and '-' only")
        texts, names = self.layout()
        record = {"source": self.source, "origin": self.origin, "texts": texts, "images": names,
                  "image_sizes": self.image_sizes, "tokens": self.tokens}
        out = [(f"{self.key}.json", json.dumps(record, ensure_ascii=False, sort_keys=True).encode())]
        out += [(f"{self.key}.{i}.{IMAGE_EXTENSION}", data) for i, data in enumerate(self.images)]
        return out


@dataclass
class BadSample:
    """A sample that could not be read: counted and reported by readers, never a crash."""

    key: str
    reason: str  # unsafe_member, oversized_member, duplicate_member, unknown_member, bad_json, missing_image, ...


def add_sample(tar: tarfile.TarFile, sample: Sample) -> int:
    """Append `sample` to an open tar with fixed metadata (no time, owner or mode noise); returns bytes written."""
    written = 0
    for name, data in sample.members():
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), 0, 0o644
        tar.addfile(info, io.BytesIO(data))
        written += len(data)
    return written


def _decode(key: str, members: dict[str, bytes]) -> Sample | BadSample:
    try:
        record = json.loads(members.pop("json"))
    except KeyError:
        return BadSample(key, "missing_json")
    except (ValueError, UnicodeDecodeError, RecursionError):
        return BadSample(key, "bad_json")
    if not isinstance(record, dict):
        return BadSample(key, "bad_json")
    texts, names = record.get("texts"), record.get("images")
    if not (isinstance(texts, list) and isinstance(names, list)
            and len(texts) == len(names) and all((t is None) != (n is None) for t, n in zip(texts, names))
            and all(t is None or isinstance(t, str) for t in texts)):
        return BadSample(key, "bad_layout")
    images = []
    for name in names:
        if name is None:
            continue
        if not isinstance(name, str) or name not in members:
            return BadSample(key, "missing_image")
        images.append(members.pop(name))
    if members:
        return BadSample(key, "unknown_member")
    return Sample(key, str(record.get("source", "")), texts, images, record.get("origin") or {},
                  record.get("image_sizes") or [], record.get("tokens") or {})


class _EndCheck:
    """Reads through to `raw`, keeping the last chunks, so the reader can tell a tar's end-of-archive block from a
    file cut at a 512-byte boundary: `tarfile`'s stream mode takes both for a clean end."""

    def __init__(self, raw: IO[bytes]):
        self.raw, self.position, self.chunks = raw, 0, []

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.chunks = [*self.chunks[-3:], (self.position, data)]
        self.position += len(data)
        return data

    def zero_block_at(self, offset: int) -> bool:
        tail = b"".join(data for _, data in self.chunks)
        start = offset - (self.chunks[0][0] if self.chunks else 0)
        block = tail[start:start + tarfile.BLOCKSIZE] if start >= 0 else b""
        return len(block) == tarfile.BLOCKSIZE and not any(block)


def iter_samples(fileobj: IO[bytes], max_member_bytes: int = MAX_MEMBER_BYTES) -> Iterator[Sample | BadSample]:
    """Stream the samples of one tar, in order. Hostile members (links, `..` or absolute names, oversized, names
    outside the layout, a field twice) turn their sample into a `BadSample`; the rest of the tar is still read.
    A tar that ends mid-member or without its end-of-archive block raises `tarfile.ReadError` after the samples
    before the cut were yielded."""
    key, members, problem = None, {}, None
    stream = _EndCheck(fileobj)

    def finish():
        return BadSample(key, problem) if problem else _decode(key, members)

    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for info in tar:
            name = info.name
            base, _, rest = name.partition(".")
            if base != key:
                if key is not None:
                    yield finish()
                key, members, problem = base, {}, None
            if not info.isfile() or "/" in name or name.startswith(".") or not _KEY.match(base):
                problem = problem or "unsafe_member"
            elif info.size > max_member_bytes:
                problem = problem or "oversized_member"
            elif not _FIELD.match(rest):
                problem = problem or "unknown_member"
            elif rest in members:
                problem = problem or "duplicate_member"
            if problem:
                continue
            members[rest] = tar.extractfile(info).read()
        if key is not None:
            yield finish()
        if not stream.zero_block_at(tar.offset):
            raise tarfile.ReadError(f"truncated: the tar ends at byte {tar.offset} without its end-of-archive block")


@dataclass
class SourceTarget:
    """What a mixture wants from one source."""

    share: float  # of `MixtureInfo.share_of`, 0..1
    max_tokens: int | None = None  # the longest sample allowed, image tokens included
    image_max_side: int | None = None  # longest image side allowed, px


@dataclass
class MixtureInfo:
    """`mixture.json`: what a mixture was built to be, so `validate` can check it against what it is."""

    kind: str  # "pretrain" (webdataset tars) or "sft" (Cauldron-schema parquet)
    name: str  # "stage1", "stage2", "sft", ...
    share_of: str  # "samples" or "answer_tokens"
    sources: dict[str, SourceTarget]
    files: str  # glob of the data files, relative to the mixture folder: "data/*.tar"
    image_tokens: int = 64  # tokens an image costs (paper, section 2.3: 64 visual tokens per image)
    tokenizer: str = ""
    seed: int = 0
    extra: dict = field(default_factory=dict)  # the spec and build options, for the dataset card
    tolerance: float = 1.0  # percentage points a share may miss its target before `validate` fails it

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, value: dict) -> "MixtureInfo":
        sources = {name: SourceTarget(**target) for name, target in value.pop("sources").items()}
        return cls(sources=sources, **value)


def read_info(folder) -> MixtureInfo | None:
    """The `mixture.json` of a datatrove `DataFolder`, or None when the folder is not a mixture."""
    if not folder.isfile(MIXTURE_FILE):
        return None
    with folder.open(MIXTURE_FILE) as f:
        return MixtureInfo.from_json(json.load(f))


def write_info(folder, info: MixtureInfo) -> None:
    with write_atomically(folder, MIXTURE_FILE, "w") as f:
        json.dump(info.to_json(), f, indent=1, sort_keys=True)


def datasets_features(max_images: int):
    """`datasets.Features` for a pretraining mixture whose samples hold at most `max_images` images.

    `datasets.load_dataset("webdataset", ...)` infers columns from the first five samples and drops member fields
    it did not see there; passing these features (or the dataset card's, which `pipelines.push` writes) keeps
    every image. Missing images of a sample load as None."""
    import datasets

    record = {"source": datasets.Value("string"),
              "origin": {"id": datasets.Value("string"), "file": datasets.Value("string"),
                         "row": datasets.Value("int64"), "part": datasets.Value("int64"),
                         "parts": datasets.Value("int64")},
              "texts": datasets.List(datasets.Value("string")),
              "images": datasets.List(datasets.Value("string")),
              "image_sizes": datasets.List(datasets.List(datasets.Value("int64"))),
              "tokens": {"text": datasets.Value("int64"), "image": datasets.Value("int64"),
                         "total": datasets.Value("int64")}}
    features = {"json": record}
    features.update({f"{i}.{IMAGE_EXTENSION}": datasets.Image() for i in range(max_images)})
    return datasets.Features(features)


def conversation_features(sft: bool = False):
    """`datasets.Features` of The Cauldron's published schema (HuggingFaceM4/the_cauldron's card: `images`, a list
    of images; `texts`, a list of {user, assistant, source}), plus the SFT mixture's `subset` and `answer_tokens`."""
    import datasets

    features = {"images": datasets.List(datasets.Image()),
                "texts": datasets.List({"user": datasets.Value("string"), "assistant": datasets.Value("string"),
                                        "source": datasets.Value("string")})}
    if sft:
        features.update(subset=datasets.Value("string"), answer_tokens=datasets.Value("int64"))
    return datasets.Features(features)
