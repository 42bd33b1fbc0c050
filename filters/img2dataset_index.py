"""Join documents with an existing img2dataset download, as the OBELICS authors did.

An img2dataset webdataset download is a folder of `NNNNN.tar` shards holding, per downloaded image, `<key>.jpg`
(or another image extension), `<key>.json` (`url`, `status`, ...) and `<key>.txt`, one sample's members next to
each other; beside each tar a `NNNNN.parquet` of every row, failures included (`url`, `status`, `error_message`).
(img2dataset's `writer.py`: `WebDatasetSampleWriter` writes the tar and the parquet; failures only reach the
parquet.) This module maps url -> where the image bytes lie in which tar, or why there are none, and serves
lookups by reading just those bytes: no image is held in memory beyond the one asked for.

Interface (one object, pickled to every datatrove task):

    index = Img2DatasetIndex(download, cache_dir, max_bytes)
    index.check()        # cheap pre-flight for the launcher: None, or a one-line problem ("no .tar shards")
    index.lookup(url)    # (status, bytes | None, error); builds or opens the index on first use in each process

`status` is `ok` (with the bytes), `too_large` (the image is over `max_bytes`: never read), `download_failed`
(with img2dataset's error message) or `missing` (the download never saw the URL, or its tar is cut short).
`report()` gives the counts and problems (bad sidecars, truncated tars, unreadable parquets) once built.

How the index is built, by the tasks themselves, in parallel (no launcher step, no shared database):
  1. one *part* per shard (`cache_dir/parts/<stem>.part`): the shard's entries sorted by a 128-bit hash of the
     url. It records the tar's and parquet's size and mtime, so a changed shard is indexed again.
  2. *buckets* (`cache_dir/sets/<download fingerprint>/b<B>-<b>.bucket`): bucket b holds every part's entries
     whose hash starts with b, merged (an image beats a failure; then the first shard in name order). A lookup
     memory-maps one bucket and binary-searches it: pages touched, not entries loaded.
Every file is written once, to a temporary name then renamed, with content that depends only on the download, so
two tasks building the same file by chance is harmless. A task builds what is missing starting at an offset of its
own and claims each file with an exclusive `.claim` file first; it waits only for files another task claimed, and
builds them itself when a claim shows no sign of life for `claim_timeout` seconds (a killed builder blocks nobody).

Hostile input: tar headers are parsed here (checksum, octal or base-256 sizes, pax and GNU long names) and only
byte ranges of the tar itself are ever read, so member names with `../`, absolute paths, links and devices never
reach the filesystem; links, devices and sparse members are not images. A sidecar over `SIDECAR_MAX_BYTES` is
skipped unread; a sidecar that is not a JSON object with a string `url` skips its image only; every skip is
counted and reported, never silent.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import socket
import struct
import threading
import time
import zlib
from array import array
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from datatrove.utils.logging import logger

from filters.image_decode import IMAGE_EXTENSIONS
from filters.image_fetch import FetchConfig

INDEX_VERSION = 2
SIDECAR_MAX_BYTES = 1 << 20  # img2dataset's sidecars are well under 1 KiB; larger ones are skipped unread
HEADER_MAX_BYTES = 1 << 20  # pax and GNU long-name headers: a name, not a payload
ENTRIES_PER_BUCKET = 1 << 21  # about 96 MiB a bucket on disk; a lookup touches a few of its pages
MAX_ENTRIES_PER_SHARD = 10_000_000  # 1000x img2dataset's default of 10,000 samples a shard
MAX_PROBLEM_LINES = 20  # per shard; every problem is counted, the first lines are kept as examples
MAX_REPORT_LINES = 100  # over the download, in the report every task loads
OK, FAILED = 0, 1  # entry statuses, in order of precedence when a url appears twice
ERROR_MAX_CHARS = 500

BLOCK = 512
_FILE_TYPES = {b"0", b"\0", b"7"}  # regular and contiguous files
_NO_DATA_TYPES = {b"1", b"2", b"3", b"4", b"5", b"6"}  # links, devices, dirs, fifos: tar ignores their size
_ZERO_BLOCK = bytes(BLOCK)
_MAGIC = b"I2DIDX\x00\x02"


class Img2DatasetError(Exception):
    """A download the index cannot be built from; the message is one line for the user."""


@dataclass
class IndexReport:
    tars: int = 0
    images: int = 0
    failed_rows: int = 0
    problems: list[str] = field(default_factory=list)  # example lines, at most MAX_PROBLEM_LINES a shard
    counts: dict[str, int] = field(default_factory=dict)  # every problem, by kind


# reading tars ---------------------------------------------------------------------------------------------------
class TarError(Exception):
    """The tar cannot be read past this point (truncated or corrupt)."""


@dataclass
class TarMember:
    name: str
    offset: int  # where its data starts in the tar
    size: int
    is_file: bool  # a regular file whose bytes are [offset, offset + size): not a link, device or sparse file
    problem: str = ""  # why it cannot be used even if it is a file


def _number(field_bytes: bytes) -> int:
    """A tar numeric field: NUL/space padded octal, or GNU base-256 when the high bit is set."""
    if field_bytes[:1] == b"\x80":
        return int.from_bytes(field_bytes[1:], "big")
    digits = field_bytes.replace(b"\0", b" ").strip()
    if digits.strip(b"01234567"):
        raise TarError(f"bad numeric field {field_bytes!r}")
    return int(digits, 8) if digits else 0


def _checksum_ok(header: bytes) -> bool:
    stored = _number(header[148:156])
    if stored == sum(header) - sum(header[148:156]) + 8 * 32:
        return True
    return stored == sum(struct.unpack_from("148b8x356b", header)) + 8 * 32  # old tars summed signed bytes


def _header_name(header: bytes) -> str:
    name = header[:100].split(b"\0", 1)[0]
    if header[257:263] == b"ustar\0":  # POSIX: a prefix field; GNU's "ustar  " uses those bytes for times
        prefix = header[345:500].split(b"\0", 1)[0]
        if prefix:
            name = prefix + b"/" + name
    return name.decode("utf-8", "surrogateescape")


def _pax_records(data: bytes) -> dict[str, str]:
    """`<length> <key>=<value>\\n` records (POSIX pax extended header)."""
    records, pos = {}, 0
    while pos < len(data) and data[pos:pos + 1] not in (b"\0", b""):
        space = data.find(b" ", pos, pos + 20)
        length_digits = data[pos:space] if space > 0 else b""
        if not length_digits.isdigit() or int(length_digits) <= space - pos or pos + int(length_digits) > len(data):
            raise TarError("malformed pax header")
        key, _, value = data[space + 1:pos + int(length_digits) - 1].partition(b"=")
        records[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos += int(length_digits)
    return records


def _blocks(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


def scan_tar(f: BinaryIO, file_size: int) -> Iterator[TarMember]:
    """Every member of a tar, from its headers alone (no member's data is read, only pax and GNU long-name headers
    up to HEADER_MAX_BYTES). Ends at the end-of-archive marker; raises TarError where the tar is cut or corrupt."""
    pos, pending, problem = 0, {}, ""
    while True:
        f.seek(pos)
        header = f.read(BLOCK)
        if len(header) < BLOCK:
            raise TarError(f"truncated: no end-of-archive marker after byte {pos}")
        if header == _ZERO_BLOCK:
            return
        if not _checksum_ok(header):
            raise TarError(f"corrupt header at byte {pos}")
        kind, data = header[156:157], pos + BLOCK
        size = 0 if kind in _NO_DATA_TYPES else _number(header[124:136])
        if kind in (b"x", b"L"):
            records = _extended_header(f, kind, data, size, file_size)
            if records is None:
                problem = f"extended header of {size} bytes, over the {HEADER_MAX_BYTES} limit (not read)"
            pending.update(records or {})
        elif kind not in (b"g", b"K"):  # global pax headers and GNU long link names change nothing we use
            size = size if kind in _NO_DATA_TYPES else int(pending.get("size", size))
            if data + size > file_size:
                raise TarError(f"truncated: {pending.get('path') or _header_name(header)} is cut short")
            sparse = any(key.startswith("GNU.sparse.") for key in pending)
            yield TarMember(pending.get("path") or _header_name(header), data, size,
                            kind in _FILE_TYPES and not sparse, problem)
            pending, problem = {}, ""
        pos = data + _blocks(size)


def _extended_header(f: BinaryIO, kind: bytes, data: int, size: int, file_size: int) -> dict[str, str] | None:
    """The overrides a pax (`x`) or GNU long-name (`L`) header sets for the next member; None when too large."""
    if data + size > file_size:
        raise TarError(f"truncated: extended header at byte {data - BLOCK} is cut short")
    if size > HEADER_MAX_BYTES:
        return None
    f.seek(data)
    raw = f.read(size)
    if kind == b"L":
        return {"path": raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")}
    records = _pax_records(raw)
    if "size" in records and not (records["size"].isascii() and records["size"].isdigit()):
        raise TarError(f"bad pax size {records['size'][:40]!r}")
    return records


def _samples(members: Iterator[TarMember]) -> Iterator[tuple[str, dict[str, TarMember]]]:
    """Consecutive members sharing a key form a sample (webdataset's grouping rule); a sample read before the tar
    turned out cut or corrupt is still yielded, then the error raised."""
    key, sample = None, {}
    try:
        for member in members:
            stem, ext = os.path.splitext(member.name)
            if stem != key and sample:
                yield key, sample
                sample = {}
            key = stem
            sample[ext.lower()] = member
    except TarError:
        if sample:
            yield key, sample
        raise
    if sample:
        yield key, sample


def _sidecar_url(f: BinaryIO, sidecar: TarMember | None) -> tuple[str | None, str, str]:
    """(url, problem kind, reason) from a `.json` sidecar that may be anything."""
    if sidecar is None:
        return None, "no_sidecar", "no .json sidecar"
    if not sidecar.is_file or sidecar.problem:
        return None, "bad_sidecar", sidecar.problem or "sidecar is not a regular file"
    if sidecar.size > SIDECAR_MAX_BYTES:
        return None, "sidecar_too_large", f"sidecar of {sidecar.size} bytes, over {SIDECAR_MAX_BYTES} (not read)"
    f.seek(sidecar.offset)
    try:
        sample = json.loads(f.read(sidecar.size))
    except (ValueError, RecursionError) as error:  # invalid JSON or UTF-8, nesting deeper than the parser allows
        return None, "bad_sidecar", f"sidecar is not valid JSON ({type(error).__name__})"
    if not isinstance(sample, dict) or not isinstance(sample.get("url"), str) or not sample["url"]:
        return None, "bad_sidecar", "sidecar is not a JSON object with a string url"
    if sample.get("status", "success") != "success":
        return None, "sidecar_not_success", f"sidecar status is {str(sample.get('status'))[:40]!r}"
    return sample["url"], "", ""


# one shard's entries --------------------------------------------------------------------------------------------
def url_hash(url: str) -> bytes:
    """128 bits: 353M urls collide with odds of about 1e-22 (64 bits would give about 3e-3)."""
    return hashlib.blake2b(url.encode("utf-8", "surrogatepass"), digest_size=16).digest()


class _Problems:
    """Every problem counted by kind; the first lines (each naming its file) kept as examples."""

    def __init__(self):
        self.counts, self.lines = Counter(), []

    def add(self, kind: str, line: str) -> None:
        self.counts[kind] += 1
        if len(self.lines) < MAX_PROBLEM_LINES:
            self.lines.append(line)


class _Entries:
    """A shard's entries in compact arrays (about 40 bytes each), sorted and deduplicated by url hash at the end."""

    def __init__(self, problems: _Problems):
        self.problems, self.digests = problems, bytearray()
        self.offsets, self.sizes, self.statuses, self.errors = array("Q"), array("Q"), array("B"), array("I")
        self.error_ids: dict[str, int] = {}

    def add(self, url: str, status: int, offset: int = 0, size: int = 0, error: str = "") -> None:
        if len(self.statuses) >= MAX_ENTRIES_PER_SHARD:
            self.problems.add("too_many_entries", f"more than {MAX_ENTRIES_PER_SHARD} entries, the rest not indexed")
            return
        self.digests += url_hash(url)
        self.offsets.append(offset)
        self.sizes.append(size)
        self.statuses.append(status)
        self.errors.append(self.error_ids.setdefault(error[:ERROR_MAX_CHARS], len(self.error_ids)))

    def columns(self) -> dict[str, np.ndarray]:
        hashes = np.frombuffer(bytes(self.digests), "<u8").reshape(-1, 2)
        statuses = np.frombuffer(self.statuses, np.uint8)
        order = np.lexsort((np.arange(len(statuses)), statuses, hashes[:, 1], hashes[:, 0]))
        columns = {"h1": hashes[order, 0], "h2": hashes[order, 1], "offset": np.frombuffer(self.offsets, "<u8")[order],
                   "size": np.frombuffer(self.sizes, "<u8")[order], "status": statuses[order],
                   "error": np.frombuffer(self.errors, "<u4")[order]}
        keep = _first_of_each_hash(columns["h1"], columns["h2"])
        return {name: column[keep] for name, column in columns.items()} | _string_columns(list(self.error_ids))


def _first_of_each_hash(h1: np.ndarray, h2: np.ndarray) -> np.ndarray:
    keep = np.ones(len(h1), bool)
    keep[1:] = (h1[1:] != h1[:-1]) | (h2[1:] != h2[:-1])
    return keep


def _string_columns(strings: list[str]) -> dict[str, np.ndarray]:
    encoded = [s.encode("utf-8", "surrogatepass") for s in strings]
    ends = np.cumsum([0] + [len(e) for e in encoded], dtype="<u8")
    return {"error_offsets": ends, "error_blob": np.frombuffer(b"".join(encoded), np.uint8)}


def _index_parquet(path: Path, entries: _Entries, problems: _Problems) -> int:
    """Failed rows (`status` other than `success`) with img2dataset's `error_message`; streamed by batch."""
    count = 0
    try:
        parquet = pq.ParquetFile(path)
        names = set(parquet.schema_arrow.names)
        if not {"url", "status"} <= names or not _is_text(parquet.schema_arrow, "url", "status"):
            problems.add("unreadable_parquet", f"{path.name}: no string columns url and status")
            return 0
        columns = ["url", "status"] + (["error_message"] if _is_text(parquet.schema_arrow, "error_message") else [])
        for batch in parquet.iter_batches(batch_size=65536, columns=columns):
            rows = zip(*(batch.column(name).to_pylist() for name in columns))
            for url, status, *message in rows:
                if status != "success" and url:
                    entries.add(url, FAILED, error=(message[0] if message else None) or status or "")
                    count += 1
    except Exception as error:  # noqa: BLE001 - any pyarrow failure: report it and index the tar anyway
        problems.add("unreadable_parquet",
                     f"{path.name}: unreadable after {count} failed rows ({type(error).__name__})")
    return count


def _is_text(schema: pa.Schema, *names: str) -> bool:
    types = [schema.field(n).type for n in names if n in schema.names]
    return len(types) == len(names) and all(pa.types.is_string(t) or pa.types.is_large_string(t) for t in types)


def _index_tar(path: Path, entries: _Entries, problems: _Problems, heartbeat: Callable[[], None]) -> int:
    count = 0
    try:
        with open(path, "rb", buffering=1 << 18) as f:
            for number, (_, sample) in enumerate(_samples(scan_tar(f, os.fstat(f.fileno()).st_size))):
                count += _index_sample(f, path.name, sample, entries, problems)
                if number % 1024 == 0:
                    heartbeat()
    except TarError as error:
        problems.add("truncated_or_corrupt_tar", f"{path.name}: {error} (indexed {count} images before)")
    except OSError as error:
        problems.add("unreadable_tar", f"{path.name}: {error.strerror or error} (indexed {count} images before)")
    return count


def _index_sample(f: BinaryIO, tar: str, sample: dict[str, TarMember], entries: _Entries,
                  problems: _Problems) -> int:
    image = next((m for ext, m in sample.items() if ext in IMAGE_EXTENSIONS), None)
    if image is None:
        if ".json" in sample:
            problems.add("sidecar_without_image", f"{tar}: {sample['.json'].name} has no image")
        return 0
    if not image.is_file or image.problem:
        problems.add("not_a_file", f"{tar}: {image.name} not indexed: {image.problem or 'not a regular file'}")
        return 0
    url, kind, reason = _sidecar_url(f, sample.get(".json"))
    if url is None:
        problems.add(kind, f"{tar}: {image.name} not indexed: {reason}")
        return 0
    entries.add(url, OK, image.offset, image.size)
    return 1


# index files: a JSON header, then aligned little-endian columns, memory-mapped for reading ------------------------
def _align(n: int) -> int:
    return -(-n // 64) * 64


def _write_table(path: Path, meta: dict, columns: dict[str, np.ndarray]) -> None:
    """Write once, atomically: a temporary name in the same folder, fsync, rename."""
    layout, pos = {}, 0
    for name, column in columns.items():
        layout[name] = [column.dtype.str, pos, len(column)]
        pos = _align(pos + column.nbytes)
    header = json.dumps({"meta": meta, "columns": layout}, sort_keys=True).encode()
    start = _align(16 + len(header))
    tmp = path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(_MAGIC + struct.pack("<Q", len(header)) + header)
        for name, column in columns.items():
            f.write(bytes(start + layout[name][1] - f.tell()))
            f.write(memoryview(np.ascontiguousarray(column)).cast("B"))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_header(path: Path) -> dict | None:
    """The header of an index file (with `start`, where its columns begin), or None when there is none or it is
    not one of ours (then it is rebuilt)."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
            length = struct.unpack("<Q", head[8:])[0] if len(head) == 16 and head[:8] == _MAGIC else 1 << 31
            if length > 1 << 30:
                return None
            return json.loads(f.read(length)) | {"start": _align(16 + length)}
    except (OSError, ValueError):
        return None


class _Table:
    """A memory-mapped index file: columns are views on the file's pages, read as lookups touch them."""

    def __init__(self, path: Path):
        header = _read_header(path)
        if header is None:
            raise Img2DatasetError(f"{path}: not an index file of this version")
        self.meta, self._layout, self._start = header["meta"], header["columns"], header["start"]
        self._columns: dict[str, np.ndarray] = {}
        with open(path, "rb") as f:  # plain ndarrays over an mmap: numpy's memmap indexes through Python code
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        size = len(self._map)
        for dtype, offset, count in self._layout.values():
            if self._start + offset + np.dtype(dtype).itemsize * count > size:
                raise Img2DatasetError(f"{path}: shorter than its header says")

    def column(self, name: str) -> np.ndarray:
        column = self._columns.get(name)
        if column is None:
            dtype, offset, count = self._layout[name]
            column = self._columns[name] = np.frombuffer(self._map, dtype, count, self._start + offset)
        return column

    def string(self, index: int) -> str:
        offsets = self.column("error_offsets")
        return self.column("error_blob")[int(offsets[index]):int(offsets[index + 1])].tobytes().decode(
            "utf-8", "surrogatepass")


# building parts and buckets ---------------------------------------------------------------------------------------
def _stat(folder: Path, name: str | None) -> list | None:
    if name is None:
        return None
    st = os.stat(folder / name)
    return [name, st.st_size, st.st_mtime_ns]


@dataclass(frozen=True)
class _Shard:
    """One img2dataset shard: `<stem>.tar` and/or `<stem>.parquet`, with their size and mtime."""
    stem: str
    tar: list | None
    parquet: list | None

    @property
    def fingerprint(self) -> list:
        return [INDEX_VERSION, self.stem, self.tar, self.parquet]


def _list_shards(download: Path) -> list[_Shard]:
    names: dict[str, dict[str, str]] = {}
    with os.scandir(download) as entries:
        for entry in entries:
            stem, ext = os.path.splitext(entry.name)
            if ext in (".tar", ".parquet") and entry.is_file():
                names.setdefault(stem, {})[ext] = entry.name
    return [_Shard(stem, _stat(download, found.get(".tar")), _stat(download, found.get(".parquet")))
            for stem, found in sorted(names.items())]


def _build_part(download: Path, shard: _Shard, path: Path, heartbeat: Callable[[], None]) -> None:
    problems = _Problems()
    entries = _Entries(problems)
    failed = _index_parquet(download / shard.parquet[0], entries, problems) if shard.parquet else 0
    images = _index_tar(download / shard.tar[0], entries, problems, heartbeat) if shard.tar else 0
    if sum(problems.counts.values()):
        logger.warning(f"img2dataset shard {shard.stem}: {dict(problems.counts)}; first: {problems.lines[0]}")
    meta = {"fingerprint": shard.fingerprint, "tar": shard.tar and shard.tar[0], "images": images,
            "failed_rows": failed, "counts": dict(problems.counts), "problems": problems.lines}
    _write_table(path, meta, entries.columns())


def _build_bucket(parts: list[tuple[Path, list]], bucket: int, shift: int, path: Path,
                  heartbeat: Callable[[], None]) -> None:
    """Every part's entries whose hash starts with `bucket`, merged: sorted by hash, an image before a failure,
    then the first shard in name order."""
    pieces, error_ids = [], {}
    for number, (part_path, fingerprint) in enumerate(parts):
        table = _Table(part_path)
        if table.meta["fingerprint"] != fingerprint:
            raise Img2DatasetError(f"img2dataset shard {fingerprint[1]}: changed while the index was being built")
        h1 = table.column("h1")
        low, high = (int(np.searchsorted(h1, np.uint64(edge))) if edge < 1 << 64 else len(h1)
                     for edge in (bucket << shift, (bucket + 1) << shift))
        if low < high:
            piece = {name: np.array(table.column(name)[low:high]) for name in ("h1", "h2", "offset", "size", "status")}
            local = np.array(table.column("error")[low:high])
            remap = np.zeros(int(local.max()) + 1, "<u4")
            for e in np.unique(local):
                remap[e] = error_ids.setdefault(table.string(int(e)), len(error_ids))
            piece["error"] = remap[local]
            piece["part"] = np.full(high - low, number, "<u4")
            pieces.append(piece)
        heartbeat()
    merged = {name: np.concatenate([p[name] for p in pieces]) if pieces else np.zeros(0, dtype)
              for name, dtype in (("h1", "<u8"), ("h2", "<u8"), ("offset", "<u8"), ("size", "<u8"),
                                  ("status", "u1"), ("error", "<u4"), ("part", "<u4"))}
    order = np.lexsort((merged["part"], merged["status"], merged["h2"], merged["h1"]))
    merged = {name: column[order] for name, column in merged.items()}
    keep = _first_of_each_hash(merged["h1"], merged["h2"])
    _write_table(path, {"bucket": bucket}, {n: c[keep] for n, c in merged.items()} | _string_columns(list(error_ids)))


# claims: who builds what -----------------------------------------------------------------------------------------
class _Claim:
    """An exclusive `<file>.claim` beside a file being built; its mtime is the builder's heartbeat."""

    def __init__(self, target: Path, timeout: float):
        self.path, self.timeout, self._touched = Path(f"{target}.claim"), timeout, time.monotonic()

    def take(self) -> bool:
        """True when this process may build: the claim was free, or its builder shows no sign of life."""
        try:
            os.close(os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            return True
        except FileExistsError:
            pass
        try:
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:  # its builder just finished: look again at the target
            return False
        if age < self.timeout:
            return False
        logger.warning(f"{self.path}: no sign of life for {age:.0f} s (builder killed?); building it here")
        self.beat(force=True)
        return True

    def beat(self, force: bool = False) -> None:
        if force or time.monotonic() - self._touched > self.timeout / 4:
            self._touched = time.monotonic()
            try:
                os.utime(self.path)
            except FileNotFoundError:
                pass

    def release(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


@dataclass
class _Job:
    path: Path
    current: Callable[[], bool]
    build: Callable[[Callable[[], None]], None]  # given a heartbeat to call now and then


@dataclass
class _Ready:
    """What lookups need once the index is complete."""
    set_dir: Path
    buckets: int
    shift: int
    tars: list[str | None]  # paths, by part number
    report: IndexReport
    tables: dict[int, _Table] = field(default_factory=dict)


# the index -------------------------------------------------------------------------------------------------------
class Img2DatasetIndex:
    """url -> (status, image bytes) over an img2dataset download; built lazily by the tasks that use it (see the
    module docstring). Cheap to construct and to pickle; thread-safe for lookups."""

    def __init__(self, download: str, cache_dir: str, max_bytes: int = FetchConfig.max_bytes, *,
                 claim_timeout: float = 300.0, entries_per_bucket: int = ENTRIES_PER_BUCKET):
        self.download, self.cache_dir, self.max_bytes = Path(download), Path(cache_dir), max_bytes
        self.claim_timeout, self.entries_per_bucket = claim_timeout, entries_per_bucket
        self.built: list[str] = []  # index files this process built (logs, tests, benchmarks)
        self._lock = threading.Lock()
        self._ready: _Ready | None = None

    def check(self) -> str | None:
        """A cheap pre-flight for the launcher: None, or a one-line problem."""
        if not self.download.is_dir():
            return f"{self.download}: not a folder"
        with os.scandir(self.download) as entries:  # names only: no stat of every file
            has_tar = any(entry.name.endswith(".tar") for entry in entries)
        if not has_tar:
            return f"{self.download}: no .tar shards (expected an img2dataset webdataset download)"
        try:
            (self.cache_dir / "parts").mkdir(parents=True, exist_ok=True)
        except OSError as error:
            return f"{self.cache_dir}: cannot create the index folder ({error.strerror})"
        if not os.access(self.cache_dir / "parts", os.W_OK):
            return f"{self.cache_dir}: not writable"
        return None

    def lookup(self, url: str) -> tuple[str, bytes | None, str]:
        """(status, bytes, error): `ok` with the bytes, `too_large` (not read), `download_failed` with img2dataset's
        error, or `missing`."""
        ready = self._ready or self._open()
        if not isinstance(url, str):
            return "missing", None, "no URL"
        digest = url_hash(url)
        h1, h2 = int.from_bytes(digest[:8], "little"), int.from_bytes(digest[8:], "little")
        table = self._bucket(ready, h1 >> ready.shift if ready.shift < 64 else 0)
        row = _find(table, h1, h2)
        if row is None:
            return "missing", None, "not in the img2dataset download"
        if table.column("status")[row] != OK:
            return "download_failed", None, table.string(int(table.column("error")[row]))
        return self._read_image(ready.tars[table.column("part")[row]], int(table.column("offset")[row]),
                                int(table.column("size")[row]))

    def _read_image(self, tar: str, offset: int, size: int) -> tuple[str, bytes | None, str]:
        if size > self.max_bytes:
            return "too_large", None, f"{size} bytes in {os.path.basename(tar)}, over the {self.max_bytes}-byte limit"
        fd = os.open(tar, os.O_RDONLY)
        try:
            data = os.pread(fd, size, offset)
        finally:
            os.close(fd)
        if len(data) != size:
            return "missing", None, f"{os.path.basename(tar)} is shorter than its index says"
        return "ok", data, ""

    def report(self) -> IndexReport:
        """Counts and problems over the whole download (builds the index if needed)."""
        return (self._ready or self._open()).report

    def build(self) -> IndexReport:
        """Build everything now, in this process (what the first lookup does otherwise)."""
        return self.report()

    def is_current(self) -> bool:
        """True when the index of the download as it is now is complete (nothing left to build)."""
        if not self.download.is_dir():
            return False
        return (self.cache_dir / "sets" / _set_id(_list_shards(self.download)) / "complete.json").exists()

    def __getstate__(self) -> dict:  # memory maps and locks stay in the process that opened them
        return {"download": str(self.download), "cache_dir": str(self.cache_dir), "max_bytes": self.max_bytes,
                "claim_timeout": self.claim_timeout, "entries_per_bucket": self.entries_per_bucket}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state.pop("download"), state.pop("cache_dir"), **state)

    # opening and building ----------------------------------------------------------------------------------------
    def _open(self) -> _Ready:
        with self._lock:
            if self._ready is None:
                problem = self.check()
                if problem:
                    raise Img2DatasetError(problem)
                self._ready = self._complete_index(_list_shards(self.download))
        return self._ready

    def _complete_index(self, shards: list[_Shard]) -> _Ready:
        set_dir = self.cache_dir / "sets" / _set_id(shards)
        done = set_dir / "complete.json"
        if not done.exists():
            started, before = time.monotonic(), len(self.built)
            parts = [self.cache_dir / "parts" / f"{shard.stem}.part" for shard in shards]
            self._build_all([self._part_job(shard, path) for shard, path in zip(shards, parts)])
            manifest = _manifest(shards, parts, self.entries_per_bucket)
            set_dir.mkdir(parents=True, exist_ok=True)
            expected = [(path, shard.fingerprint) for shard, path in zip(shards, parts)]
            self._build_all([self._bucket_job(expected, manifest, set_dir, b) for b in range(manifest["buckets"])])
            _write_json(done, manifest)
            logger.info(f"img2dataset index of {self.download}: {manifest['report']['images']} images, "
                        f"{manifest['report']['failed_rows']} failed downloads; this task built "
                        f"{len(self.built) - before} of its files in {time.monotonic() - started:.1f} s")
        manifest = json.loads(done.read_text())
        buckets = manifest["buckets"]
        tars = [name and os.path.join(self.download, os.path.basename(name)) for name in manifest["tars"]]
        return _Ready(set_dir, buckets, 64 - buckets.bit_length() + 1, tars, IndexReport(**manifest["report"]))

    def _part_job(self, shard: _Shard, path: Path) -> _Job:
        def current() -> bool:
            header = _read_header(path)
            return header is not None and header["meta"].get("fingerprint") == shard.fingerprint
        return _Job(path, current, lambda beat: _build_part(self.download, shard, path, beat))

    def _bucket_job(self, parts: list[tuple[Path, list]], manifest: dict, set_dir: Path, bucket: int) -> _Job:
        buckets = manifest["buckets"]
        path = set_dir / f"b{buckets}-{bucket}.bucket"
        shift = 64 - buckets.bit_length() + 1
        return _Job(path, lambda: _read_header(path) is not None,
                    lambda beat: _build_bucket(parts, bucket, shift, path, beat))

    def _build_all(self, jobs: list[_Job]) -> None:
        """Build every job not current, starting at this process's own offset so that tasks spread over different
        files; then wait for those other tasks claimed (or build them when their builder went silent)."""
        start = zlib.crc32(f"{socket.gethostname()}:{os.getpid()}".encode()) % max(len(jobs), 1)
        waiting = [job for job in jobs[start:] + jobs[:start] if not self._claim_and_build(job)]
        while waiting:
            time.sleep(min(0.2, self.claim_timeout / 10))
            waiting = [job for job in waiting if not self._claim_and_build(job)]

    def _claim_and_build(self, job: _Job) -> bool:
        """True when the job is done (here or elsewhere), False when another task is building it."""
        if job.current():
            return True
        claim = _Claim(job.path, self.claim_timeout)
        if not claim.take():
            return False
        try:
            if not job.current():  # another task may have finished it between our look and our claim
                job.build(claim.beat)
                self.built.append(job.path.name)
        finally:
            claim.release()
        return True

    def _bucket(self, ready: _Ready, bucket: int) -> _Table:
        table = ready.tables.get(bucket)
        if table is None:
            table = ready.tables.setdefault(bucket, _Table(ready.set_dir / f"b{ready.buckets}-{bucket}.bucket"))
        return table


def _find(table: _Table, h1: int, h2: int) -> int | None:
    hashes = table.column("h1")
    row = int(np.searchsorted(hashes, np.uint64(h1)))
    seconds = table.column("h2")
    while row < len(hashes) and hashes[row] == h1:
        if seconds[row] == h2:
            return row
        row += 1
    return None


def _set_id(shards: list[_Shard]) -> str:
    return hashlib.sha256(json.dumps([s.fingerprint for s in shards]).encode()).hexdigest()[:20]


def _manifest(shards: list[_Shard], parts: list[Path], entries_per_bucket: int) -> dict:
    """What every lookup needs, from the parts' headers: tars by part number, bucket count, the report."""
    report, tars, total = IndexReport(), [], 0
    counts = Counter()
    for shard, path in zip(shards, parts):
        meta = _read_header(path)["meta"]
        tars.append(meta["tar"])
        report.tars += bool(meta["tar"])
        report.images += meta["images"]
        report.failed_rows += meta["failed_rows"]
        report.problems += meta["problems"][:MAX_REPORT_LINES - len(report.problems)]
        counts.update(meta["counts"])
        total += meta["images"] + meta["failed_rows"]
    report.counts = dict(sorted(counts.items()))
    buckets = 1 << max(0, (max(total, 1) - 1) // entries_per_bucket).bit_length()
    return {"tars": tars, "buckets": buckets, "report": report.__dict__}


def _write_json(path: Path, content: dict) -> None:
    tmp = path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(content, sort_keys=True))
    os.replace(tmp, path)
