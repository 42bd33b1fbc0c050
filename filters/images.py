"""`images`: give every image of a document its bytes, or remove it; shared by every pipeline with image URLs."""

from __future__ import annotations

import contextlib
import threading
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol, runtime_checkable
from urllib.parse import urlsplit

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


@runtime_checkable
class ShardAwareSource(Protocol):
    """A source told when a task starts and ends its shard (`filters.fetched_images` keeps a shard's downloads)."""

    def get(self, url: str) -> FetchResult: ...

    def start(self, rank: int) -> None: ...

    def finish(self, completed: bool) -> None: ...


class ImageNetworkOutage(Exception):
    """Nearly all of a shard's recent downloads failed for network reasons: the task fails, so the shard stays
    undone and the next run retries it, instead of finishing with every image removed."""


@dataclass(frozen=True)
class OutageConfig:
    """When a shard's downloads count as an outage rather than the web's usual failures.

    A healthy download loses 5-25% of images to every cause together (img2dataset: LAION-400M went from 95% to
    87% success in eight months of link rot, rom1504/img2dataset#277; "75% success may be normal" for
    LAION-COCO, #439), and timeouts and refused connections are a small part of that (most failures are 404
    and 403, #277). A window where 90% fail for network reasons, across several hosts, is no healthy run:
    it is our network, or a DNS resolver, that is down (#430 shows such a run, 95% failed).
    """

    window: int = 200  # the last this-many fetches are judged
    min_fetches: int = 50  # judged only once this many are in the window
    max_failure_rate: float = 0.9  # of the window failing with `FetchResult.network_failure`
    min_hosts: int = 5  # failures spread over at least this many hosts: one dead host is that host's problem


DEFAULT_OUTAGE = OutageConfig()

class _OutageGuard:
    """The last `window` fetches, with counts of network failures per host kept as they come and go."""

    def __init__(self, config: OutageConfig):
        self.config = config
        self.recent: deque[tuple[str, FetchResult]] = deque()
        self.failed_hosts: Counter[str] = Counter()

    def record(self, result: FetchResult) -> None:
        host = _host(result.url)
        self.recent.append((host, result))
        if result.network_failure:
            self.failed_hosts[host] += 1
        if len(self.recent) > self.config.window:
            old_host, old = self.recent.popleft()
            if old.network_failure:
                self.failed_hosts[old_host] -= 1
                if not self.failed_hosts[old_host]:
                    del self.failed_hosts[old_host]
        self._judge()

    def _judge(self) -> None:
        failed = sum(self.failed_hosts.values())
        if (len(self.recent) < self.config.min_fetches or failed < self.config.max_failure_rate * len(self.recent)
                or len(self.failed_hosts) < self.config.min_hosts):
            return
        statuses = Counter(r.status for _, r in self.recent if r.network_failure)
        example = next(r for _, r in reversed(self.recent) if r.network_failure)
        raise ImageNetworkOutage(
            f"{failed} of the last {len(self.recent)} image downloads failed for network reasons "
            f"({', '.join(f'{s} {n}' for s, n in statuses.most_common())}) across {len(self.failed_hosts)} "
            f"hosts, e.g. {example.url[:100]}: {example.error[:150]}; is the network up? The shard is left "
            f"undone for the next run")


def _host(url: str) -> str:
    try:
        return urlsplit(url).hostname or ""
    except ValueError:
        return ""


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

    def __getstate__(self) -> dict:  # workers build their own fetcher (connection pools, locks)
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


class _Window:
    """Documents waiting for their images, in input order, and one future per distinct URL they need."""

    def __init__(self, pool: ThreadPoolExecutor, source: ImageSource):
        self.pool, self.source = pool, source
        self.documents: deque[Document] = deque()
        self.futures: dict[str, Future] = {}
        self.users: Counter[str] = Counter()

    def add(self, doc: Document) -> None:
        for url in dict.fromkeys(m.url for m in doc.media):
            if url not in self.futures:
                self.futures[url] = self.pool.submit(self.source.get, url)
            self.users[url] += 1
        self.documents.append(doc)

    def pop(self) -> tuple[Document, dict[str, FetchResult], list[FetchResult]]:
        """The first document with its results (waiting for them), and the fetches no document needs anymore."""
        doc = self.documents.popleft()
        results, finished = {}, []
        for url in dict.fromkeys(m.url for m in doc.media):
            results[url] = self.futures[url].result()
            self.users[url] -= 1
            if not self.users[url]:
                del self.users[url], self.futures[url]
                finished.append(results[url])
        return doc, results, finished


class ImageAcquisitionFilter(BatchedFilter):
    """Fetch every image of the documents, many at once; keep those that arrive and decode.

    Rules (the OBELICS ones): an image that fails is removed from the document's media and layout, its
    status counted as `image_status/<status>`; a document left with no image is removed (`no_image_left`).
    Kept images carry their bytes in `Media.media_bytes` and `original_width`, `original_height`, `format`
    in their metadata, as OBELICS records them after download.

    Downloads run in a rolling window across documents: up to `window` distinct URLs are in flight or done
    and waiting for an earlier document, so a slow URL holds back only the documents behind it, and only once
    the window is full. Documents leave in input order (outputs are the same from run to run); a URL shared
    by documents in the window is fetched once. If nearly all recent fetches fail for network reasons
    (`OutageConfig`), the task fails with `ImageNetworkOutage` rather than finish with every image removed.
    """

    name = "images"

    def __init__(self, source: ImageSource, threads: int = 16, batch_size: int = 64,
                 exclusion_writer: DiskWriter | None = None, window: int | None = None,
                 outage: OutageConfig | None = DEFAULT_OUTAGE):
        super().__init__(exclusion_writer, batch_size=batch_size)
        self.source = source
        self.threads = threads
        # 256 for 16 threads: covers a 10 s stall (the read timeout) at the ~20 images/s that 16 threads reach
        # when 5% of URLs stall, and stays within what `filters.pixels` keeps (~400 working copies), so the pixel
        # steps downstream still find the images this step decoded
        self.window = window or 16 * threads
        self.outage = outage
        self._pool: ThreadPoolExecutor | None = None
        self._guard: _OutageGuard | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_pool": None, "_guard": None}

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        """Stream documents through the window; one thread pool for the task keeps HTTP connections alive."""
        self._guard = None  # each task (shard) is judged on its own fetches
        self._start()
        finished = False
        writer_context = self.exclusion_writer if self.exclusion_writer else contextlib.nullcontext()
        try:
            if isinstance(self.source, ShardAwareSource):
                self.source.start(rank)
            with writer_context as writer:
                window = _Window(self._pool, self.source)
                for doc in data:
                    while window.documents and (len(window.futures) + len(doc.media) > self.window
                                                or len(window.documents) >= self.window):
                        yield from self._emit(window, writer, rank)
                    window.add(doc)  # documents leave only when the window is full: when upstream steps run (and
                    # record their removals) depends on counts alone, never on fetch timing, so outputs repeat
                while window.documents:
                    yield from self._emit(window, writer, rank)
            finished = True
        finally:
            self._pool.shutdown(wait=finished, cancel_futures=True)  # a failing task does not wait for stalls
            self._pool = None
            if isinstance(self.source, ShardAwareSource):
                self.source.finish(finished)

    def _start(self) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="images")
        if self._guard is None and self.outage:
            self._guard = _OutageGuard(self.outage)

    def _emit(self, window: _Window, writer: DiskWriter | None, rank: int) -> Iterator[Document]:
        """Judge the window's first document as datatrove's `BaseFilter.run` judges one: same stats and writer."""
        with self.track_time():
            doc, results, finished = window.pop()
            self._record(finished)
            images_before = len(doc.media)
            verdict = self._apply(doc, results)
        yield from self.route(doc, verdict, writer, rank, images_before)

    def filter_batch(self, batch: list[Document]) -> list[bool | tuple[bool, str]]:
        """The same judgement for a batch (datatrove's `filter_batch`/`filter` API); `run` does not use it."""
        self._start()
        urls = list(dict.fromkeys(m.url for doc in batch for m in doc.media))
        results = dict(zip(urls, self._pool.map(self.source.get, urls)))
        self._record(results.values())
        return [self._apply(doc, results) for doc in batch]

    def _record(self, results: Iterable[FetchResult]) -> None:
        if self._guard:
            for result in results:
                self._guard.record(result)

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
