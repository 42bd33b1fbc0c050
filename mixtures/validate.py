"""`python -m mixtures.validate PATH`: what a mixture or pipeline output holds, checked against what it was meant to be.

PATH is recognised by what it holds:

- a pretraining mixture (`mixture.json` kind "pretrain"): its webdataset tars are streamed sample by sample
  (`mixtures.layout.iter_samples`); per source: samples, images, text and image tokens, the share against the
  target, image sizes against the cap (read from each image's header), lengths against the maximum, unreadable
  samples and duplicate keys;
- an SFT mixture (`mixture.json` kind "sft"): its parquet is read a row group batch at a time; per subset: rows,
  images, turns and answer tokens, the share of answer tokens against the target;
- a Cauldron export (subset folders of parquet in the published `images`/`texts` schema): rows, images and turns
  per subset;
- a pipeline output (`manifest.json` + `summary.json`): input = kept + removed per shard, the kept and removed
  counts against the rows of the shard files, the removal reasons.

Every folder is read through datatrove's `DataFolder` (fsspec), so `hf://` and `s3://` paths work as local ones.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tarfile
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field

from datatrove.io import DataFolder, get_datafolder
from datatrove.utils.logging import logger

from filters.errors import command
from filters.image_decode import encode_jpeg, fit_within, open_checked, resized_rgb
from mixtures.layout import MIXTURE_FILE, BadSample, MixtureInfo, Sample, iter_samples, read_info

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
DEFAULT_TOLERANCE = 1.0  # percentage points a share may be off its target (the mixture issue's acceptance rule)
GALLERY_PER_SOURCE = 3  # samples per source shown in the HTML gallery
THUMBNAIL_SIDE = 256  # px, longest side of a gallery image
GALLERY_TEXT_CHARS = 1200  # a gallery text longer than this is cut (the page stays light with long documents)
SUMMARY_FILE, MANIFEST_FILE = "summary.json", "manifest.json"
SFT_COLUMNS = ["images", "texts", "subset", "answer_tokens"]  # the SFT mixture's parquet columns (contract)
REMOTE_ERROR_MODULES = {"httpx", "httpx2", "huggingface_hub", "botocore", "aiobotocore", "s3fs", "gcsfs", "aiohttp",
                        "requests", "fsspec"}  # where hf://, s3://, gs://... errors come from: "cannot be read"
PARQUET_BATCH_ROWS = 64  # rows held at once while reading SFT/Cauldron parquet (images are large)


class ValidateError(Exception):
    """A usage mistake or an input that cannot be read at all: one line, exit 2."""


@dataclass
class SourceStats:
    """What one source (pretraining) or subset (SFT, Cauldron) holds."""

    target: float | None = None  # target share, 0..1
    samples: int = 0  # samples (pretraining) or rows (SFT, Cauldron)
    images: int = 0
    turns: int = 0  # user/assistant turns (SFT, Cauldron)
    text_tokens: int = 0
    image_tokens: int = 0
    answer_tokens: int = 0
    max_tokens_seen: int = 0
    max_side_seen: int = 0
    max_images: int = 0  # largest image count of one sample
    over_image_cap: int = 0  # images whose longest side exceeds the source's image_max_side
    over_max_tokens: int = 0  # samples whose tokens.total exceeds max_tokens
    bad_image_tokens: int = 0  # samples whose tokens.image != images x image_tokens
    bad_total: int = 0  # samples whose tokens.total != tokens.text + tokens.image
    size_mismatch: int = 0  # images whose header size differs from the recorded image_sizes
    bad_images: int = 0  # images whose header cannot be read
    share: float | None = None  # actual share, 0..1, filled by `finish`
    reference: dict = field(default_factory=dict)  # published figures to compare with (Table 14)
    gallery: list = field(default_factory=list)  # [[("text", str) | ("image", data-URI or None)...]...]
    flagged: list = field(default_factory=list)  # the first samples that broke a hard limit, shown like the gallery


# hard limits counted per source -> what the failure line says
LIMITS = {"over_image_cap": "images over the image size cap",
          "over_max_tokens": "samples over the token maximum (or without a total)",
          "bad_image_tokens": "samples whose image tokens are not images x image_tokens",
          "bad_total": "samples whose total tokens are not text + image tokens",
          "size_mismatch": "images whose size is not the recorded image_sizes",
          "bad_images": "images whose header cannot be read"}


@dataclass
class Report:
    """Everything `validate` found; `failures` empty means exit 0."""

    path: str
    kind: str  # "pretrain", "sft", "cauldron" or "pipeline"
    name: str = ""
    share_of: str = "samples"
    tolerance: float = DEFAULT_TOLERANCE
    sources: dict[str, SourceStats] = field(default_factory=dict)
    files_read: int = 0
    files_total: int = 0
    unreadable: Counter = field(default_factory=Counter)  # reason -> samples or files
    duplicate_keys: int = 0
    accounting: dict = field(default_factory=dict)  # pipeline outputs: input, kept, removed by reason, shards
    info: dict = field(default_factory=dict)  # mixture.json as read
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        value = asdict(self)
        for stats in value["sources"].values():
            stats.pop("gallery")
            stats.pop("flagged")
        value["unreadable"] = dict(self.unreadable)
        return value


# ---- images ----------------------------------------------------------------------------------------------------

def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the image header alone (Pillow opens lazily: no pixel is decoded), None if unreadable."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                return image.size
    except Exception:  # hostile bytes: Pillow raises many types; the image is counted, never a crash
        return None


def thumbnail_uri(data: bytes) -> str | None:
    """A small JPEG of the image as a data: URI for the self-contained HTML page; None when it cannot be decoded
    (not an image, over Pillow's bomb threshold, truncated or damaged: shown as a missing image)."""
    import base64

    try:
        image = open_checked(data)
        fitted = resized_rgb(image, fit_within(*image.size, min(THUMBNAIL_SIDE, max(image.size))))
        return "data:image/jpeg;base64," + base64.b64encode(encode_jpeg(fitted, quality=80)).decode()
    except Exception:  # hostile bytes: Pillow raises many types; never a crash
        return None


def _gallery_text(text: str) -> str:
    return text if len(text) <= GALLERY_TEXT_CHARS else text[:GALLERY_TEXT_CHARS] + " [...]"


# ---- pretraining mixtures --------------------------------------------------------------------------------------

def select_files(files: list[str], sample: int | None) -> list[str]:
    """All files, or `sample` of them spread evenly over the list (first and last included)."""
    if not sample or sample >= len(files):
        return files
    if sample == 1:
        return files[:1]
    return [files[round(i * (len(files) - 1) / (sample - 1))] for i in range(sample)]


def _check_images(stats: SourceStats, sample: Sample, cap: int | None) -> None:
    recorded = sample.image_sizes if isinstance(sample.image_sizes, list) else []
    for i, data in enumerate(sample.images):
        size = header_size(data)
        if size is None:
            stats.bad_images += 1
            continue
        stats.max_side_seen = max(stats.max_side_seen, max(size))
        if cap and max(size) > cap:
            stats.over_image_cap += 1
        if (recorded[i] if i < len(recorded) else None) != list(size):  # any hostile value compares unequal
            stats.size_mismatch += 1


def _int(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _check_tokens(stats: SourceStats, sample: Sample, target, image_tokens: int) -> None:
    tokens = sample.tokens if isinstance(sample.tokens, dict) else {}
    text, image, total = (_int(tokens.get(k)) for k in ("text", "image", "total"))
    stats.text_tokens += text or 0
    stats.image_tokens += image or 0
    stats.max_tokens_seen = max(stats.max_tokens_seen, total or 0)
    if image != len(sample.images) * image_tokens:
        stats.bad_image_tokens += 1
    if text is None or image is None or total != text + image:
        stats.bad_total += 1
    if total is None or (target is not None and target.max_tokens and total > target.max_tokens):
        stats.over_max_tokens += 1


def _add_pretrain_sample(report: Report, info: MixtureInfo, sample: Sample, gallery: int) -> None:
    name = sample.source or "(none)"
    target = info.sources.get(name)
    stats = report.sources.setdefault(name, SourceStats(target=None))
    stats.samples += 1
    stats.images += len(sample.images)
    stats.max_images = max(stats.max_images, len(sample.images))
    before = {limit: getattr(stats, limit) for limit in LIMITS}
    _check_images(stats, sample, target.image_max_side if target else None)
    _check_tokens(stats, sample, target, info.image_tokens)
    broken = [what for limit, what in LIMITS.items() if getattr(stats, limit) != before[limit]]
    if len(stats.gallery) < gallery or (broken and len(stats.flagged) < gallery):
        images = iter(sample.images)
        shown = [("text", _gallery_text(t)) if t is not None else ("image", thumbnail_uri(next(images)))
                 for t in sample.texts]
        if len(stats.gallery) < gallery:
            stats.gallery.append(shown)
        if broken and len(stats.flagged) < gallery:
            stats.flagged.append([("failed", f"{sample.key}: {'; '.join(broken)}")] + shown)


def validate_pretrain(folder: DataFolder, info: MixtureInfo, report: Report, sample: int | None,
                      gallery: int) -> None:
    """Stream every selected tar; keys are remembered across shards to find duplicates."""
    files = sorted(folder.list_files(glob_pattern=info.files))
    report.files_total = len(files)
    for name, target in info.sources.items():
        report.sources[name] = SourceStats(target=target.share)
    keys: set[str] = set()
    for path in select_files(files, sample):
        report.files_read += 1
        try:
            with folder.open(path, "rb") as f:
                for item in iter_samples(f):
                    if item.key in keys:
                        report.duplicate_keys += 1
                    keys.add(item.key)
                    if isinstance(item, BadSample):
                        report.unreadable[item.reason] += 1
                    else:
                        _add_pretrain_sample(report, info, item, gallery)
        except Exception as error:  # a damaged tar, or a remote file system failing mid-stream: counted, not a crash
            report.unreadable["unreadable_tar"] += 1
            report.notes.append(f"{folder.resolve_paths(path)}: {type(error).__name__}: {error}; samples before it "
                                f"were counted")


# ---- SFT mixtures and Cauldron exports (parquet) --------------------------------------------------------------

def _parquet_batches(folder: DataFolder, path: str, columns: list[str], report: Report):
    """Record batches of one parquet file, or nothing (the file counted unreadable) when it cannot be read."""
    import pyarrow.parquet as pq

    try:
        with folder.open(path, "rb") as f:
            parquet = pq.ParquetFile(f)
            missing = [c for c in columns if c not in parquet.schema_arrow.names]
            if missing:
                report.unreadable["missing_columns"] += 1
                report.notes.append(f"{folder.resolve_paths(path)}: no column {', '.join(missing)}")
                return
            yield from parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=columns)
    except Exception as error:  # pyarrow raises ArrowInvalid, OSError, ...: the file is counted, never a crash
        report.unreadable["unreadable_parquet"] += 1
        report.notes.append(f"{folder.resolve_paths(path)}: {type(error).__name__}: {error}")


def _image_bytes(images) -> list[bytes] | None:
    """The bytes of a `datasets` Image list ([{bytes, path}]), None when the value is not one."""
    if not isinstance(images, list):
        return None
    out = []
    for image in images:
        data = image.get("bytes") if isinstance(image, dict) else None
        if not isinstance(data, bytes):
            return None
        out.append(data)
    return out


def _turns(texts) -> list[tuple[str, str]] | None:
    if not isinstance(texts, list) or not texts:
        return None
    turns = [(t.get("user"), t.get("assistant")) for t in texts if isinstance(t, dict)]
    if len(turns) != len(texts) or not all(isinstance(u, str) and isinstance(a, str) for u, a in turns):
        return None
    return turns


def _add_conversation(report: Report, stats: SourceStats, row: dict, cap: int | None, gallery: int) -> bool:
    """Count one published-schema row; False when its images or texts do not follow the schema."""
    images, turns = _image_bytes(row.get("images")), _turns(row.get("texts"))
    if images is None or turns is None:
        return False
    stats.samples += 1
    stats.images += len(images)
    stats.turns += len(turns)
    stats.max_images = max(stats.max_images, len(images))
    for data in images:
        size = header_size(data)
        if size is None:
            stats.bad_images += 1
            continue
        stats.max_side_seen = max(stats.max_side_seen, max(size))
        stats.over_image_cap += bool(cap and max(size) > cap)
    if len(stats.gallery) < gallery:
        shown = [("image", thumbnail_uri(d)) for d in images]
        for user, assistant in turns:
            shown += [("user", _gallery_text(user)), ("assistant", _gallery_text(assistant))]
        stats.gallery.append(shown)
    return True


def validate_sft(folder: DataFolder, info: MixtureInfo, report: Report, sample: int | None, gallery: int) -> None:
    files = sorted(folder.list_files(glob_pattern=info.files))
    report.files_total = len(files)
    for name, target in info.sources.items():
        report.sources[name] = SourceStats(target=target.share)
    for path in select_files(files, sample):
        report.files_read += 1
        for batch in _parquet_batches(folder, path, SFT_COLUMNS, report):
            for row in batch.to_pylist():
                _add_sft_row(report, info, row, gallery)


def _add_sft_row(report: Report, info: MixtureInfo, row: dict, gallery: int) -> None:
    subset, tokens = row.get("subset"), _int(row.get("answer_tokens"))
    if not isinstance(subset, str) or tokens is None or tokens < 0:
        report.unreadable["bad_row"] += 1
        return
    target = info.sources.get(subset)
    stats = report.sources.setdefault(subset, SourceStats(target=None))
    if not _add_conversation(report, stats, row, target.image_max_side if target else None, gallery):
        report.unreadable["bad_row"] += 1
        return
    stats.answer_tokens += tokens
    stats.max_tokens_seen = max(stats.max_tokens_seen, tokens)
    stats.over_max_tokens += bool(target and target.max_tokens and tokens > target.max_tokens)


def _published_schema(folder: DataFolder, path: str) -> bool:
    """Whether a parquet file has the Cauldron's columns: `images`, and `texts` as a list of {user, assistant}."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        with folder.open(path, "rb") as f:
            schema = pq.read_schema(f)
    except Exception:  # unreadable files of a recognised export are counted when it is read
        return False
    if "images" not in schema.names or "texts" not in schema.names:
        return False
    texts = schema.field("texts").type
    return (pa.types.is_list(texts) or pa.types.is_large_list(texts)) and pa.types.is_struct(texts.value_type) \
        and {"user", "assistant"} <= {f.name for f in texts.value_type}


def cauldron_subsets(folder: DataFolder) -> dict[str, list[str]]:
    """{subset: its parquet files} for every subfolder whose first parquet has the published schema (`sft/`, the
    SFT mixture, excepted)."""
    subsets: dict[str, list[str]] = {}
    for path in sorted(folder.list_files(recursive=True)):
        top = path.split("/", 1)[0]
        if path.endswith(".parquet") and "/" in path and top != "sft" and not top.startswith("."):
            subsets.setdefault(top, []).append(path)
    return {name: files for name, files in subsets.items() if _published_schema(folder, files[0])}


def table14() -> dict[str, dict]:
    """Table 14's figures per Cauldron config, from the Cauldron registry."""
    from cauldron.registry import TABLE14

    return {name: dict(value) if isinstance(value, dict) else asdict(value) for name, value in TABLE14.items()}


def validate_cauldron(folder: DataFolder, report: Report, sample: int | None, gallery: int) -> None:
    subsets, reference = cauldron_subsets(folder), table14()
    for subset, files in subsets.items():
        if reference and subset not in reference:
            report.failures.append(f"{subset}: not a subset of The Cauldron (Table 14)")
        stats = report.sources.setdefault(subset, SourceStats(reference=reference.get(subset, {})))
        report.files_total += len(files)
        for path in select_files(files, sample):
            report.files_read += 1
            for batch in _parquet_batches(folder, path, ["images", "texts"], report):
                for row in batch.to_pylist():
                    if not _add_conversation(report, stats, row, None, gallery):
                        report.unreadable["bad_row"] += 1
    if folder.isfile(f"sft/{MIXTURE_FILE}"):
        report.notes.append(f"{folder.resolve_paths('sft')} is the SFT mixture: validate it on its own")


# ---- pipeline outputs ------------------------------------------------------------------------------------------

def read_json_file(folder: DataFolder, name: str) -> dict:
    try:
        with folder.open(name) as f:
            value = json.load(f)
    except (OSError, ValueError, UnicodeDecodeError) as error:
        raise ValidateError(f"{folder.resolve_paths(name)}: cannot be read as JSON ({type(error).__name__})")
    if not isinstance(value, dict):
        raise ValidateError(f"{folder.resolve_paths(name)}: is not a JSON object")
    return value


def count_records(folder: DataFolder, path: str) -> int:
    """Rows of a parquet shard (from its footer) or samples of a tar shard (distinct keys, headers only)."""
    import pyarrow.parquet as pq

    with folder.open(path, "rb") as f:
        if path.endswith(".parquet"):
            return pq.ParquetFile(f).metadata.num_rows
        keys = set()
        with tarfile.open(fileobj=f, mode="r|") as tar:
            for info in tar:
                keys.add(info.name.split("/")[-1].split(".", 1)[0])
        return len(keys)


def _shard_files(folder: DataFolder, subfolder: str) -> dict[str, str]:
    """{shard name: file} of `data/` or `removed/` (NNNNN.parquet or NNNNN.tar)."""
    if not folder.isdir(subfolder):
        return {}
    files = folder.list_files(subfolder, recursive=False)
    return {os.path.basename(p).split(".", 1)[0]: p for p in files if p.endswith((".parquet", ".tar"))}


def _valid_record(record) -> bool:
    return (isinstance(record, dict) and all(_int(record.get(k)) is not None for k in ("input", "kept"))
            and isinstance(record.get("removed"), dict)
            and all(_int(v) is not None for v in record["removed"].values()))


def _check_shard(folder: DataFolder, report: Report, shard: str, record, files: dict) -> None:
    if not _valid_record(record):
        report.failures.append(f"shard {shard}: its summary record is not {{input, kept, removed}}")
        return
    removed = sum(record["removed"].values())
    if record["input"] != record["kept"] + removed:
        report.failures.append(f"shard {shard}: input {record['input']} != kept {record['kept']} + removed {removed}")
    for kind, expected in (("data", record["kept"]), ("removed", removed)):
        path = files[kind].get(shard)
        if path is None:
            if expected:
                report.failures.append(f"shard {shard}: {expected} {kind} records but no {kind}/{shard} file")
            continue
        try:
            found = count_records(folder, path)
        except Exception as error:  # hostile file: reported, never a crash
            report.unreadable["unreadable_shard"] += 1
            report.notes.append(f"{folder.resolve_paths(path)}: {type(error).__name__}: {error}")
            continue
        if found != expected:
            report.failures.append(f"shard {shard}: {folder.resolve_paths(path)} holds {found} records, the summary "
                                   f"says {expected}")


def validate_pipeline(folder: DataFolder, report: Report, sample: int | None) -> None:
    """Accounting per shard: input = kept + removed, and those counts are what the shard files hold."""
    summary, manifest = read_json_file(folder, SUMMARY_FILE), read_json_file(folder, MANIFEST_FILE)
    report.name = str(manifest.get("pipeline", ""))
    shards = summary.get("shards")
    if not isinstance(shards, dict):
        raise ValidateError(f"{folder.resolve_paths(SUMMARY_FILE)}: has no per-shard records")
    files = {kind: _shard_files(folder, kind) for kind in ("data", "removed")}
    report.files_total = len(shards)
    removed: Counter[str] = Counter()
    totals = Counter()
    for shard in select_files(sorted(shards), sample):
        report.files_read += 1
        record = shards[shard]
        _check_shard(folder, report, shard, record, files)
        if _valid_record(record):
            totals.update(input=record["input"], kept=record["kept"])
            removed.update(record["removed"])
    report.accounting = {"input": totals["input"], "kept": totals["kept"], "removed": dict(sorted(removed.items())),
                         "shards": len(shards)}
    for key in ("images", "images_removed"):
        if isinstance(summary.get("total", {}).get(key), dict):
            report.accounting[key] = summary["total"][key]


# ---- the whole check -------------------------------------------------------------------------------------------

def finish(report: Report) -> None:
    """Actual shares, and a failure line for every share off target and every hard limit broken."""
    measure = (lambda s: s.answer_tokens) if report.share_of == "answer_tokens" else (lambda s: s.samples)
    total = sum(measure(s) for s in report.sources.values())
    for name, stats in report.sources.items():
        stats.share = measure(stats) / total if total else 0.0
        if report.kind in ("pretrain", "sft"):
            _check_share(report, name, stats)
        _check_limits(report, name, stats)
    for reason, n in sorted(report.unreadable.items()):
        report.failures.append(f"{n} unreadable ({reason})")
    if report.duplicate_keys:
        report.failures.append(f"{report.duplicate_keys} duplicate sample keys")
    if report.kind in ("pretrain", "sft") and total == 0:
        report.failures.append("no samples")


def _check_share(report: Report, name: str, stats: SourceStats) -> None:
    if stats.target is None:
        report.failures.append(f"{name}: {stats.samples} samples from a source mixture.json does not name")
        return
    off = 100 * (stats.share - stats.target)
    if abs(off) > report.tolerance:
        report.failures.append(f"{name}: share {100 * stats.share:.2f}% is {off:+.2f} points off its target "
                               f"{100 * stats.target:.2f}% (tolerance {report.tolerance:g})")


def _check_limits(report: Report, name: str, stats: SourceStats) -> None:
    for attribute, what in LIMITS.items():
        if n := getattr(stats, attribute):
            what = what.replace("image_tokens", str(report.info.get("image_tokens")))
            report.failures.append(f"{name}: {n} {what}")


def detect(folder: DataFolder) -> str:
    """What PATH is: "pretrain", "sft", "cauldron" or "pipeline"."""
    if not folder.exists("") or not folder.isdir(""):
        raise ValidateError(f"{folder.path}: no such folder")
    if folder.isfile(MIXTURE_FILE):
        return "mixture"
    if cauldron_subsets(folder):  # before pipeline outputs: the Cauldron's build writes a summary and manifest too
        return "cauldron"
    if folder.isfile(SUMMARY_FILE) and folder.isfile(MANIFEST_FILE):
        return "pipeline"
    raise ValidateError(f"{folder.path}: not a mixture (no {MIXTURE_FILE}), a pipeline output (no {SUMMARY_FILE} and "
                        f"{MANIFEST_FILE}) or a Cauldron export (no subset folders of parquet)")


def load_info(folder: DataFolder) -> MixtureInfo:
    try:
        info = read_info(folder)
    except (ValueError, UnicodeDecodeError, TypeError, KeyError, AttributeError) as error:
        raise ValidateError(f"{folder.resolve_paths(MIXTURE_FILE)}: not a mixture.json ({type(error).__name__}: "
                            f"{error})")
    if not isinstance(info.files, str) or info.files.startswith("/") or ".." in info.files.split("/"):
        raise ValidateError(f"{folder.resolve_paths(MIXTURE_FILE)}: files {info.files!r} must be a glob inside the "
                            f"mixture folder")
    if info.kind not in ("pretrain", "sft"):
        raise ValidateError(f"{folder.resolve_paths(MIXTURE_FILE)}: unknown kind {info.kind!r}")
    return info


def validate(path: str, tolerance: float | None = None, sample: int | None = None,
             gallery: int = 0) -> Report:
    """Check the folder at `path` (local or any fsspec URL); raises `ValidateError` when it cannot be read."""
    try:
        return _validate(path, tolerance, sample, gallery)
    except ValidateError:
        raise
    except (OSError, ImportError) as error:
        raise ValidateError(f"{path}: cannot be read ({type(error).__name__}: {_first_line(error)})")
    except Exception as error:  # what a remote file system raises (HTTP, credentials) is not OSError everywhere
        if type(error).__module__.split(".")[0] in REMOTE_ERROR_MODULES:
            raise ValidateError(f"{path}: cannot be read ({type(error).__name__}: {_first_line(error)})")
        raise


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else "no detail"


def _validate(path: str, tolerance: float | None, sample: int | None, gallery: int) -> Report:
    """`tolerance` None: the mixture's own (`mixture.json`: 1 point for the stages, 0.5 for the SFT mixture)."""
    folder = get_datafolder(path)
    kind = detect(folder)
    report = Report(path=folder.path, kind=kind, tolerance=DEFAULT_TOLERANCE if tolerance is None else tolerance)
    if kind == "mixture":
        info = load_info(folder)
        report.tolerance = info.tolerance if tolerance is None else tolerance
        report.kind, report.name, report.share_of, report.info = info.kind, info.name, info.share_of, info.to_json()
        (validate_pretrain if info.kind == "pretrain" else validate_sft)(folder, info, report, sample, gallery)
    elif kind == "pipeline":
        validate_pipeline(folder, report, sample)
    else:
        validate_cauldron(folder, report, sample, gallery)
    if sample and report.files_read < report.files_total:
        report.notes.append(f"read {report.files_read} of {report.files_total} shards (--sample): shares are "
                            f"estimates and duplicate keys across unread shards are not seen")
    finish(report)
    return report


EPILOG = """exit status:
  0  every check passed
  1  a check failed: a share outside --tolerance, an image over its source's cap, a sample over its token maximum
     or with image tokens != images x image_tokens, unreadable samples or files, duplicate keys, or a pipeline
     output whose per-shard accounting (input = kept + removed) or shard files do not match its summary
  2  usage error, or PATH is not a mixture, Cauldron export or pipeline output, or cannot be read"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mixtures.validate", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Check a pretraining or SFT mixture, a Cauldron export or a pipeline output against what it "
                    "was meant to be: shares, token counts, image sizes, unreadable samples, accounting.")
    parser.add_argument("path", metavar="PATH", help="the folder: local, hf://datasets/ORG/NAME/..., s3://...")
    parser.add_argument("--tolerance", type=float, default=None,
                        help="percentage points a share may be off its target (default: the mixture's own, recorded "
                             f"in mixture.json: 1 for the stages, 0.5 for the SFT mixture; else {DEFAULT_TOLERANCE})")
    parser.add_argument("--sample", type=int, default=None, metavar="N",
                        help="read only N shards, spread over the mixture (for very large mixtures)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    parser.add_argument("--plot", metavar="FILE", help="write a PNG of actual against target shares")
    parser.add_argument("--html", metavar="FILE",
                        help="write one self-contained HTML page: the figures, charts and a gallery of samples")
    return parser


@command
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from mixtures import report as output

    try:
        if (args.tolerance is not None and args.tolerance < 0) or (args.sample is not None and args.sample < 1):
            raise ValidateError("--tolerance must be >= 0 and --sample >= 1")
        report = validate(args.path, args.tolerance, args.sample, GALLERY_PER_SOURCE if args.html else 0)
        for flag, path, write in (("--plot", args.plot, output.write_plot), ("--html", args.html, output.write_html)):
            if path:
                _write(flag, path, write, report)
    except ValidateError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps(report.to_json(), indent=1) if args.json else output.format_table(report))
    return EXIT_FAILED if report.failures else EXIT_OK


def _write(flag: str, path: str, write, report: Report) -> None:
    try:
        write(report, path)
    except OSError as error:
        raise ValidateError(f"{flag} {path}: cannot be written ({error.strerror or error})")
    logger.info(f"{flag}: wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
