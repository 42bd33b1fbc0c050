"""`images`: give every image of a document its bytes, or remove it; shared by every pipeline with image URLs."""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.writers.disk_base import DiskWriter

from filters.batched import BatchedFilter
from filters.image_decode import DEFAULT_MAX_PIXELS, decode_image
from filters.image_fetch import FetchConfig, FetchResult, ImageFetcher
from filters.img2dataset_index import Img2DatasetIndex
from filters.layout import remove_images_or_document

IMAGE_STATUS_PREFIX = "image_status/"  # stats: image_status/ok, image_status/timeout, ...


class ImageSource(Protocol):
    def get(self, url: str) -> FetchResult: ...


class HttpImageSource:
    """Download from the web (see `filters.image_fetch` for the rules)."""

    def __init__(self, config: FetchConfig | None = None):
        self.config = config or FetchConfig()
        self._fetcher: ImageFetcher | None = None
        self._lock = threading.Lock()

    def get(self, url: str) -> FetchResult:
        if self._fetcher is None:
            with self._lock:  # one fetcher, so one set of per-host limits, for all download threads
                if self._fetcher is None:
                    self._fetcher = ImageFetcher(self.config)
        return self._fetcher.fetch(url)

    def __getstate__(self) -> dict:  # workers build their own fetcher (sessions, locks)
        return {"config": self.config}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["config"])


class Img2DatasetSource:
    """Read from an img2dataset download (see `filters.img2dataset_index`), with the same decode checks."""

    def __init__(self, index: Img2DatasetIndex, max_pixels: int = DEFAULT_MAX_PIXELS, max_side: int | None = None):
        self.index, self.max_pixels, self.max_side = index, max_pixels, max_side

    def get(self, url: str) -> FetchResult:
        status, data, error = self.index.lookup(url)
        if data is None:
            return FetchResult(url=url, status=status, error=error)
        image = decode_image(data, self.max_pixels, self.max_side)
        return FetchResult(url=url, status=image.status, image=image, error=image.error)


class ImageAcquisitionFilter(BatchedFilter):
    """Fetch every image of a batch of documents concurrently; keep those that arrive and decode.

    Rules (the OBELICS ones): an image that fails is removed from the document's media and layout, its
    status counted as `image_status/<status>`; a document left with no image is removed (`no_image_left`).
    Kept images carry their bytes in `Media.media_bytes` and `original_width`, `original_height`, `format`
    in their metadata, as OBELICS records them after download. Each URL is fetched once per batch.
    """

    name = "images"

    def __init__(self, source: ImageSource, threads: int = 16, batch_size: int = 64,
                 exclusion_writer: DiskWriter | None = None):
        super().__init__(exclusion_writer, batch_size=batch_size)
        self.source = source
        self.threads = threads
        self._pool: ThreadPoolExecutor | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_pool": None}

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        """One thread pool for the whole task, so download threads keep their HTTP connections alive."""
        try:
            yield from super().run(data, rank, world_size)
        finally:
            if self._pool:
                self._pool.shutdown()
                self._pool = None

    def filter_batch(self, batch: list[Document]) -> list[bool | tuple[bool, str]]:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads)
        urls = list(dict.fromkeys(m.url for doc in batch for m in doc.media))
        results = dict(zip(urls, self._pool.map(self.source.get, urls)))
        return [self._apply(doc, results) for doc in batch]

    def _apply(self, doc: Document, results: dict[str, FetchResult]) -> bool | tuple[bool, str]:
        failed, statuses = [], Counter()
        for index, media in enumerate(doc.media):
            result = results[media.url]
            statuses[result.status] += 1
            if result.status != "ok":
                failed.append(index)
                continue
            image = result.image
            media.media_bytes = image.data
            media.metadata.update(original_width=image.original_width, original_height=image.original_height,
                                  format=image.format)
        for status, count in statuses.items():
            self.stat_update(f"{IMAGE_STATUS_PREFIX}{status}", value=count)
        return remove_images_or_document(doc, failed, "no_image_left")
