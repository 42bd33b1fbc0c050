"""The pipelines' outputs read as numbered units, for the sampler to pick from at random.

A source is one or more output folders of one pipeline (each finished: `summary.json` present):

* `obelics` (`pipelines.obelics`): a unit is a row of `data/NNNNN.parquet` (OBELICS schema, see
  `pipelines.obelics_format`); its images are joined by URL from the run's `images/NNNNN.tar` (img2dataset-style,
  indexed by `filters.img2dataset_index`).
* `pairs` (`pipelines.laion_coco`): a unit is a row of `data/*.parquet`; the URL and caption columns are the ones
  the run's `manifest.json` records (`--url-column`, `--caption-column`; LAION-COCO's `URL`, `top_caption`
  otherwise); images joined as for OBELICS. A pair is laid out as its image followed by its caption.
* `pages` (`pipelines.pdfa`): a unit is a sample of `data/NNNNN.tar`, `<key>_<page>.jpg` + `.json` (`text`, `key`,
  `page`); a page is its image followed by its text.

Units are numbered across the folders' files in sorted order: counts come from parquet footers, and for tars from
one scan of their headers, kept as a small offset index (`<cache>/pages/...npy`, memory-mapped by the tasks) so
a task reads one page's bytes without scanning its tar. A row or sample that cannot be used is returned as the
reason (a string) for the builder to count; nothing here raises on bad input once the files are open.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import tarfile
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import pyarrow.parquet as pq
from datatrove.utils.logging import logger

from filters.errors import UsageError
from filters.img2dataset_index import Img2DatasetIndex
from filters.layout import layout_problem
from mixtures.layout import MAX_MEMBER_BYTES

SUMMARY_FILE = "summary.json"
MANIFEST_FILE = "manifest.json"
PAIR_COLUMNS = {"--url-column": "URL", "--caption-column": "top_caption"}  # LAION-COCO's (pipelines.pairs_format)
IMAGE_MAX_BYTES = MAX_MEMBER_BYTES  # an image larger than a mixture may store is not read


@dataclass
class Unit:
    """One document, pair or page: OBELICS-style parallel layout (`texts` None where `images` has a reference)."""

    texts: list[str | None]
    images: list[object]  # opaque references for `UnitSource.image`, one per image position, in order
    origin: dict  # {"id", "file", "row"}


@dataclass
class InputFile:
    folder: str  # the pipeline output folder
    name: str  # relative to it: data/00000.parquet
    units: int


@dataclass
class UnitSource:
    """A source's units across its folders' files; subclasses read them."""

    name: str
    folders: list[str]
    cache_dir: str
    files: list[InputFile] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # found while counting (a truncated tar...)

    suffix = ".parquet"

    @property
    def units(self) -> int:
        return sum(f.units for f in self.files)

    def check(self) -> UnitSource:
        """The folders are finished runs with data files (and what else the format needs); writes nothing. A
        UsageError names the folder that is not usable."""
        for folder in self.folders:
            if not os.path.isdir(folder):
                raise UsageError(f"source {self.name}: {folder}: no such folder")
            if not os.path.isfile(os.path.join(folder, SUMMARY_FILE)):
                raise UsageError(f"source {self.name}: {folder}: no {SUMMARY_FILE}: not a finished pipeline run")
            if not self._names(folder):
                raise UsageError(f"source {self.name}: {folder}: no data/*{self.suffix} files")
            self._check_folder(folder)
        return self

    def _names(self, folder: str) -> list[str]:
        found = glob.glob(os.path.join(folder, "data", f"*{self.suffix}"))
        return sorted(os.path.relpath(p, folder) for p in found)

    def open(self) -> UnitSource:
        """Count the (checked) folders' units; a UsageError names a file that cannot be read."""
        for folder in self.folders:
            self._prepare(folder)
            self.files += [InputFile(folder, name, self._count(folder, name)) for name in self._names(folder)]
        if self.units == 0:
            raise UsageError(f"source {self.name}: {', '.join(self.folders)} hold no {self.name} units")
        return self

    def _check_folder(self, folder: str) -> None:
        pass

    def _prepare(self, folder: str) -> None:
        pass

    def _count(self, folder: str, name: str) -> int:
        raise NotImplementedError

    def _starts(self) -> np.ndarray:
        if getattr(self, "_cumulative", None) is None:
            self._cumulative = np.cumsum([0] + [f.units for f in self.files])
        return self._cumulative

    def locate(self, unit: int) -> tuple[int, int]:
        """(file number, row or sample within it) of a unit number."""
        starts = self._starts()
        index = int(np.searchsorted(starts, unit, side="right")) - 1
        return index, int(unit - starts[index])

    def read(self, units: list[int]) -> list[Unit | str]:
        """The units asked for, in that order, each a Unit or the reason it cannot be used; files are read once
        per call, in file order."""
        by_file: dict[int, list[tuple[int, int]]] = defaultdict(list)
        for place, unit in enumerate(units):
            index, row = self.locate(unit)
            by_file[index].append((row, place))
        out: list[Unit | str] = [""] * len(units)
        for index in sorted(by_file):
            for place, value in self._read_file(index, by_file[index]):
                out[place] = value
        return out

    def _read_file(self, index: int, rows: list[tuple[int, int]]):
        raise NotImplementedError

    def image(self, ref: object) -> bytes | str:
        """The image's bytes, or why there are none."""
        raise NotImplementedError

    def label(self, index: int) -> str:
        """A file as recorded in a sample's origin: the output folder's name and the file's path in it."""
        f = self.files[index]
        return f"{os.path.basename(os.path.normpath(f.folder))}/{f.name}"


def _row_groups(parquet: pq.ParquetFile) -> np.ndarray:
    return np.cumsum([0] + [parquet.metadata.row_group(g).num_rows for g in range(parquet.num_row_groups)])


class ParquetUnits(UnitSource):
    """Rows of parquet files; images joined by URL with each folder's `images/` img2dataset-style tars."""

    columns: tuple[str, ...] = ()

    def _check_folder(self, folder: str) -> None:
        images = os.path.join(folder, "images")
        if not os.path.isdir(images) or not glob.glob(os.path.join(images, "*.tar")):
            raise UsageError(f"source {self.name}: {folder}: no images/*.tar (the run's `images` step output)")

    def _count(self, folder: str, name: str) -> int:
        if problem := self._index(folder).check():  # also makes the index's cache folder
            raise UsageError(f"source {self.name}: {folder}: images/: {problem}")
        return self._count_rows(folder, name)

    def _index(self, folder: str) -> Img2DatasetIndex:
        key = hashlib.sha1(os.path.abspath(folder).encode()).hexdigest()[:12]
        return Img2DatasetIndex(os.path.join(folder, "images"), os.path.join(self.cache_dir, "img2dataset", key),
                                IMAGE_MAX_BYTES)

    def _count_rows(self, folder: str, name: str) -> int:
        path = os.path.join(folder, name)
        try:
            parquet = pq.ParquetFile(path)
        except Exception as error:  # noqa: BLE001 - pyarrow raises several types for a bad footer
            raise UsageError(f"source {self.name}: {path}: not a readable parquet file ({error})") from None
        missing = [c for c in self._columns(folder) if c not in parquet.schema_arrow.names]
        if missing:
            raise UsageError(f"source {self.name}: {path}: no column {missing[0]}")
        return parquet.metadata.num_rows

    def _columns(self, folder: str) -> list[str]:
        return list(self.columns)

    def _read_file(self, index: int, rows: list[tuple[int, int]]):
        f = self.files[index]
        columns = self._columns(f.folder)
        try:
            parquet = pq.ParquetFile(os.path.join(f.folder, f.name))
            groups = _row_groups(parquet)
            by_group: dict[int, list[tuple[int, int]]] = defaultdict(list)
            for row, place in rows:
                by_group[int(np.searchsorted(groups, row, side="right")) - 1].append((row, place))
            for group, wanted in sorted(by_group.items()):
                table = parquet.read_row_group(group, columns=columns)
                taken = table.take([row - int(groups[group]) for row, _ in wanted]).to_pylist()
                for (row, place), record in zip(wanted, taken):
                    yield place, self._unit(index, row, record, columns)
        except Exception as error:  # noqa: BLE001 - a file damaged after it was counted: its units are unreadable
            logger.warning(f"{self.name}: {os.path.join(f.folder, f.name)}: {type(error).__name__}: {error}")
            for _, place in rows:
                yield place, "unreadable_file"

    def _unit(self, index: int, row: int, record: dict, columns: list[str]) -> Unit | str:
        raise NotImplementedError

    def image(self, ref: object) -> bytes | str:
        folder, url = ref
        if not hasattr(self, "_indexes"):
            self._indexes = {}
        if folder not in self._indexes:
            self._indexes[folder] = self._index(folder)
        status, data, _ = self._indexes[folder].lookup(url)
        return data if status == "ok" and data is not None else f"image_{status}"

    def __getstate__(self) -> dict:  # indexes hold memory maps: opened again in each task
        return {k: v for k, v in self.__dict__.items() if k not in ("_indexes", "_cumulative")}


class ObelicsUnits(ParquetUnits):
    columns = ("texts", "images", "general_metadata")

    def _unit(self, index: int, row: int, record: dict, columns: list[str]) -> Unit | str:
        texts, images = record.get("texts"), record.get("images")
        if problem := layout_problem(images, texts):
            return problem
        if any(t is not None and not isinstance(t, str) for t in texts) or \
                any(u is not None and not isinstance(u, str) for u in images):
            return "bad_layout"
        try:
            general = json.loads(record.get("general_metadata") or "{}")
        except (ValueError, RecursionError):
            general = {}
        url = general.get("url") if isinstance(general, dict) else None
        folder = self.files[index].folder
        return Unit(list(texts), [(folder, u) for u in images if u is not None],
                    {"id": url if isinstance(url, str) else "", "file": self.label(index), "row": row})


class PairsUnits(ParquetUnits):
    def _columns(self, folder: str) -> list[str]:
        """The URL and caption columns the run used (its manifest's flags), LAION-COCO's otherwise."""
        options = {}
        try:
            with open(os.path.join(folder, MANIFEST_FILE)) as f:
                options = json.load(f).get("options") or {}
        except (OSError, ValueError, AttributeError):
            pass
        return [options.get(flag) if isinstance(options.get(flag), str) else default
                for flag, default in PAIR_COLUMNS.items()]

    def _unit(self, index: int, row: int, record: dict, columns: list[str]) -> Unit | str:
        url, caption = record.get(columns[0]), record.get(columns[1])
        if not isinstance(url, str) or not url:
            return "no_url"
        if not isinstance(caption, str) or not caption.strip():
            return "no_caption"
        return Unit([None, caption], [(self.files[index].folder, url)],
                    {"id": url, "file": self.label(index), "row": row})


# ---------------------------------------------------------------------------------------------------------------
# Pages: webdataset tars, with an offset index per tar


_INDEX_COLUMNS = 4  # json offset, json size, jpg offset, jpg size (-1: member absent or unusable)


def _member_key(name: str) -> tuple[str, str] | None:
    """(key, extension) of a member name, the key keeping its folders (`dir/doc_00000.jpg` -> `dir/doc_00000`, as
    webdataset keys nested members); None for a name that is absolute, climbs (`..`), or has an empty or hidden
    part. Members are only ever read by offset, never extracted, so a safe nested name is just a longer key."""
    parts = name.split("/")
    if any(not part or part.startswith(".") for part in parts):
        return None
    stem, _, ext = parts[-1].partition(".")
    return "/".join([*parts[:-1], stem]), ext


def scan_tar(path: str) -> tuple[np.ndarray, list[str]]:
    """One row per sample key of a pages tar, in tar order, and the problems found: member names skipped (counted,
    with the first one named) and what ended the scan early. Only headers are read (tarfile seeks over the data);
    links and oversized members leave their field absent, so the sample reads as unusable."""
    rows: list[list[int]] = []
    keys: dict[str, int] = {}
    problems, skipped = [], []
    try:
        with tarfile.open(path, mode="r:") as tar:
            for info in tar:
                found = _member_key(info.name)
                if found is None:
                    skipped.append(info.name)
                    continue
                base, ext = found
                if base not in keys:
                    keys[base] = len(rows)
                    rows.append([-1] * _INDEX_COLUMNS)
                column = {"json": 0, "jpg": 2}.get(ext)
                if column is not None and info.isfile() and info.size <= MAX_MEMBER_BYTES:
                    rows[keys[base]][column:column + 2] = [info.offset_data, info.size]
    except (tarfile.TarError, OSError, EOFError) as error:
        problems.append(f"{path}: {type(error).__name__}: {error} (samples before it are used)")
    if skipped:
        problems.insert(0, f"{path}: {len(skipped)} member(s) skipped for an unsafe name (absolute, '..', empty or "
                           f"hidden part), first {skipped[0]!r}")
    return np.array(rows, dtype=np.int64).reshape(-1, _INDEX_COLUMNS), problems


class PagesUnits(UnitSource):
    suffix = ".tar"

    def _index_path(self, folder: str, name: str) -> str:
        path = os.path.join(folder, name)
        stat = os.stat(path)
        key = hashlib.sha1(f"{os.path.abspath(path)}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
        return os.path.join(self.cache_dir, "pages", f"{key}.npy")

    def _count(self, folder: str, name: str) -> int:
        target = self._index_path(folder, name)
        notes = f"{target}.problems.json"  # kept beside the index, so a cached scan still reports them
        if not os.path.isfile(target):
            rows, problems = scan_tar(os.path.join(folder, name))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(f"{notes}.{os.getpid()}.tmp", "w") as f:
                json.dump(problems, f)
            os.replace(f"{notes}.{os.getpid()}.tmp", notes)
            with open(f"{target}.{os.getpid()}.tmp", "wb") as f:
                np.save(f, rows)
            os.replace(f"{target}.{os.getpid()}.tmp", target)
        try:
            with open(notes) as f:
                problems = json.load(f)
        except (OSError, ValueError):
            problems = []
        for problem in problems:
            self.problems.append(problem)
            logger.warning(f"{self.name}: {problem}")
        return int(np.load(target, mmap_mode="r").shape[0])

    def _read_file(self, index: int, rows: list[tuple[int, int]]):
        f = self.files[index]
        offsets = np.load(self._index_path(f.folder, f.name), mmap_mode="r")
        path = os.path.join(f.folder, f.name)
        with open(path, "rb") as tar:
            for row, place in sorted(rows):
                yield place, self._page(index, row, offsets[row], tar, path)

    def _page(self, index: int, row: int, entry: np.ndarray, tar, path: str) -> Unit | str:
        json_offset, json_size, jpg_offset, jpg_size = (int(x) for x in entry)
        if json_offset < 0:
            return "no_json"
        if jpg_offset < 0:
            return "no_image"
        tar.seek(json_offset)
        try:
            record = json.loads(tar.read(json_size))
        except (ValueError, UnicodeDecodeError, RecursionError):
            return "bad_json"
        text = record.get("text") if isinstance(record, dict) else None
        if not isinstance(text, str) or not text.strip():
            return "no_text"
        key, page = record.get("key"), record.get("page")
        ident = f"{key}_{page:05d}" if isinstance(key, str) and isinstance(page, int) else ""
        return Unit([None, text], [(path, jpg_offset, jpg_size)], {"id": ident, "file": self.label(index), "row": row})

    def image(self, ref: object) -> bytes | str:
        path, offset, size = ref
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                data = f.read(size)
        except OSError:
            return "image_unreadable"
        return data if len(data) == size else "image_truncated"


FORMATS = {"obelics": ObelicsUnits, "pairs": PairsUnits, "pages": PagesUnits}


def check_source(name: str, fmt: str, folders: list[str], cache_dir: str) -> UnitSource:
    """The source, checked (nothing written); `.open()` counts its units."""
    return FORMATS[fmt](name, list(folders), cache_dir).check()


def open_source(name: str, fmt: str, folders: list[str], cache_dir: str) -> UnitSource:
    return check_source(name, fmt, folders, cache_dir).open()
