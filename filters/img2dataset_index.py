"""Join documents with an existing img2dataset download, as the OBELICS authors did.

An img2dataset webdataset download (facts.md) is a folder of `NNNNN.tar` shards holding `<key>.jpg` (or another
image extension) with `<key>.json` (`url`, `status`, ...), and beside each tar a `NNNNN.parquet` of every row,
failures included (`status`, `error_message`). We index it once into SQLite: url -> where the image bytes
lie (tar, offset, size), or why there are none. Lookups then read just those bytes, so no image is held in
memory beyond the one being decoded and the index is shared by every task.
"""

from __future__ import annotations

import json
import os
import sqlite3
import tarfile
import threading
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
INDEX_VERSION = 1


@dataclass
class IndexReport:
    tars: int = 0
    images: int = 0
    failed_rows: int = 0
    problems: list[str] | None = None  # one line per unreadable or truncated file


def _fingerprint(folder: Path) -> str:
    files = sorted(p for p in folder.iterdir() if p.suffix in (".tar", ".parquet"))
    return json.dumps([INDEX_VERSION] + [[p.name, p.stat().st_size, int(p.stat().st_mtime)] for p in files])


class Img2DatasetIndex:
    """url -> (status, image bytes) over an img2dataset download. Thread-safe for lookups."""

    def __init__(self, download: str, index_file: str):
        self.download = Path(download)
        self.index_file = index_file
        self._local = threading.local()

    # building ----------------------------------------------------------------------------------------------
    def is_current(self) -> bool:
        if not os.path.exists(self.index_file):
            return False
        with sqlite3.connect(self.index_file) as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'fingerprint'").fetchone()
        return row is not None and row[0] == _fingerprint(self.download)

    def build(self) -> IndexReport:
        """Index every tar and parquet of the download; truncated or unreadable files are indexed as far as they
        can be read, and reported."""
        if not self.download.is_dir():
            raise FileNotFoundError(f"{self.download}: not a folder")
        report = IndexReport(problems=[])
        tmp = f"{self.index_file}.tmp"
        if os.path.exists(tmp):
            os.remove(tmp)
        os.makedirs(os.path.dirname(os.path.abspath(self.index_file)), exist_ok=True)
        with sqlite3.connect(tmp) as db:
            db.execute("CREATE TABLE images (url TEXT PRIMARY KEY, status TEXT, error TEXT, tar TEXT, "
                       "offset INTEGER, size INTEGER)")
            db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
            for parquet in sorted(self.download.glob("*.parquet")):  # failures first: a success overrides
                report.failed_rows += self._index_parquet(db, parquet, report)
            for tar in sorted(self.download.glob("*.tar")):
                report.tars += 1
                report.images += self._index_tar(db, tar, report)
            db.execute("INSERT INTO meta VALUES ('fingerprint', ?)", (_fingerprint(self.download),))
        os.replace(tmp, self.index_file)
        return report

    @staticmethod
    def _index_parquet(db: sqlite3.Connection, path: Path, report: IndexReport) -> int:
        try:
            table = pq.read_table(path, columns=["url", "status", "error_message"])
        except Exception as error:  # noqa: BLE001 - report and go on with the tars
            report.problems.append(f"{path}: unreadable ({type(error).__name__})")
            return 0
        rows = [(r["url"], "download_failed", r["error_message"] or r["status"]) for r in table.to_pylist()
                if r["url"] and r["status"] != "success"]
        db.executemany("INSERT OR REPLACE INTO images (url, status, error) VALUES (?, ?, ?)", rows)
        return len(rows)

    @staticmethod
    def _index_tar(db: sqlite3.Connection, path: Path, report: IndexReport) -> int:
        images: dict[str, tuple[int, int]] = {}
        urls: dict[str, str] = {}
        end = 0  # where the last member's data ends, padded to the 512-byte block
        try:
            with tarfile.open(path, mode="r:") as tar:
                for member in tar:
                    end = member.offset_data + -(-member.size // 512) * 512
                    key, ext = os.path.splitext(member.name)
                    if ext.lower() in IMAGE_EXTENSIONS:
                        images[key] = (member.offset_data, member.size)
                    elif ext == ".json":
                        sample = json.load(tar.extractfile(member))
                        if sample.get("status", "success") == "success" and sample.get("url"):
                            urls[key] = sample["url"]
        except (tarfile.TarError, OSError, ValueError) as error:
            report.problems.append(f"{path}: truncated or corrupt after {len(images)} images ({error})")
        file_size = path.stat().st_size
        cut = [key for key, (offset, size) in images.items() if offset + size > file_size]
        if cut:
            report.problems.append(f"{path}: truncated, {len(cut)} image(s) cut short")
        elif file_size < end + 512:  # a cut at a member boundary reads like a normal end but lacks the end marker
            report.problems.append(f"{path}: truncated (no end-of-archive marker after {len(images)} images)")
        rows = [(url, "ok", "", path.name, *images[key]) for key, url in urls.items()
                if key in images and key not in cut]
        db.executemany("INSERT OR REPLACE INTO images VALUES (?, ?, ?, ?, ?, ?)", rows)
        return len(rows)

    # lookups -----------------------------------------------------------------------------------------------
    def _db(self) -> sqlite3.Connection:
        if not hasattr(self._local, "db"):
            self._local.db = sqlite3.connect(f"file:{self.index_file}?mode=ro", uri=True)
        return self._local.db

    def lookup(self, url: str) -> tuple[str, bytes | None, str]:
        """(status, bytes, error): `ok` with the image bytes, `download_failed` with img2dataset's error, or
        `missing` when the download never saw the URL."""
        row = self._db().execute("SELECT status, error, tar, offset, size FROM images WHERE url = ?",
                                 (url,)).fetchone()
        if row is None:
            return "missing", None, "not in the img2dataset download"
        status, error, tar, offset, size = row
        if status != "ok":
            return status, None, error or ""
        with open(self.download / tar, "rb") as f:
            f.seek(offset)
            data = f.read(size)
        if len(data) != size:
            return "missing", None, f"{tar} is shorter than its index says"
        return "ok", data, ""

    def __getstate__(self) -> dict:  # connections stay in the process that opened them
        return {"download": self.download, "index_file": self.index_file}

    def __setstate__(self, state: dict) -> None:
        self.__init__(str(state["download"]), state["index_file"])
