"""What one download pass fetched for a shard, kept so that the next pass over that shard downloads nothing again.

A calibrated NSFW cut (`--nsfw-drop-top`) needs every image scored before any is filtered, so its calibration
pass downloads the images, and the filtering pass needs them again (to score by content, to check pixels, to
store them). `FetchedImages` wraps the image source: in the recording pass it keeps each URL's outcome and the
bytes that arrived in `folder/NNNNN.bin` (the bytes, one after another) with `folder/NNNNN.jsonl` (url, status,
error, offset, size), both committed when the task finishes; in the next pass it answers from them, and asks the
source only for what they lack; `FetchedCleanup` deletes them once the shard's output is committed. One writer per
shard, on any fsspec filesystem.
"""

from __future__ import annotations

import json
import threading

from datatrove.io import DataFolder, get_datafolder

from filters.image_decode import DEFAULT_MAX_PIXELS, decode_image
from filters.image_fetch import FetchResult
from filters.shard_files import shard_name


class FetchedImages:
    """An image source that records (`record=True`) or replays a shard's downloads. Thread-safe."""

    def __init__(self, source, folder: str, record: bool, max_pixels: int = DEFAULT_MAX_PIXELS,
                 max_side: int | None = None):
        self.source, self.folder, self.record = source, folder, record
        self.max_pixels, self.max_side = max_pixels, max_side
        self._init_task()

    def _init_task(self) -> None:
        self._lock = threading.Lock()
        self._index: dict[str, dict] = {}
        self._blob = self._lines = None
        self._size = 0
        self._name = ""

    def __getstate__(self) -> dict:
        return {k: self.__dict__[k] for k in ("source", "folder", "record", "max_pixels", "max_side")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._init_task()

    def start(self, rank: int) -> None:
        folder: DataFolder = get_datafolder(self.folder)
        self._name = shard_name(rank)
        if self.record:
            self._blob = folder.open(f"{self._name}.bin.tmp", "wb")
            self._lines = folder.open(f"{self._name}.jsonl.tmp", "w")
        elif folder.isfile(f"{self._name}.jsonl") and folder.isfile(f"{self._name}.bin"):
            with folder.open(f"{self._name}.jsonl") as f:
                self._index = {entry["url"]: entry for entry in map(json.loads, f)}
            self._blob = folder.open(f"{self._name}.bin", "rb")

    def finish(self, completed: bool) -> None:
        """Commit what was recorded (or drop it, if the task failed); close what was replayed (its files are
        deleted by `FetchedCleanup` once the shard's output is committed)."""
        folder = get_datafolder(self.folder)
        for handle in (self._blob, self._lines):
            if handle:
                handle.close()
        for suffix in (".bin", ".jsonl"):
            if self.record and completed:
                folder.mv(f"{self._name}{suffix}.tmp", f"{self._name}{suffix}")
            elif self.record and folder.exists(f"{self._name}{suffix}.tmp"):
                folder.rm(f"{self._name}{suffix}.tmp")
        self._init_task()

    def get(self, url: str) -> FetchResult:
        entry = self._index.get(url)
        if entry is not None:
            return self._replay(entry)
        result = self.source.get(url)
        if self.record and self._blob is not None:
            self._save(result)
        return result

    def _replay(self, entry: dict) -> FetchResult:
        if entry["status"] != "ok":
            return FetchResult(url=entry["url"], status=entry["status"], error=entry["error"])
        with self._lock:
            self._blob.seek(entry["offset"])
            data = self._blob.read(entry["size"])
        image = decode_image(data, self.max_pixels, self.max_side)
        if image.status == "ok":  # the stored bytes may be downscaled: the download's own size and format stand
            image.original_width, image.original_height, image.format = (
                entry["original_width"], entry["original_height"], entry["format"])
        return FetchResult(url=entry["url"], status=image.status, image=image, error=image.error)

    def _save(self, result: FetchResult) -> None:
        image = result.image if result.status == "ok" and result.image else None
        data = image.data if image else b""
        with self._lock:
            entry = {"url": result.url, "status": result.status, "error": result.error, "offset": self._size,
                     "size": len(data), "original_width": image and image.original_width,
                     "original_height": image and image.original_height, "format": image and image.format}
            self._blob.write(data)
            self._size += len(data)
            self._lines.write(json.dumps(entry) + "\n")


class FetchedCleanup:
    """A per-shard output of the filtering pass that writes nothing and, when the shard commits, deletes the
    downloads the calibration pass kept for it (a failed shard keeps them for its retry)."""

    def __init__(self, folder: str, rank: int):
        self.folder, self.name = folder, shard_name(rank)

    def write(self, doc, **extra) -> None:
        return None

    def commit(self) -> None:
        folder = get_datafolder(self.folder)
        for suffix in (".bin", ".jsonl"):
            if folder.exists(f"{self.name}{suffix}"):
                folder.rm(f"{self.name}{suffix}")

    def abort(self) -> None:
        return None
