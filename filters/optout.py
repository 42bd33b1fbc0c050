"""`optout`: remove content its owners opted out of AI training, via the Spawning API or an offline list.

The API contract (Spawning's API documentation and its `datadiligence` client): `POST {url}` with `Authorization:
API <token>`, a text/plain body of URLs joined by newlines, answer `{"urls": [{"url", "optOut", "optIn"}, ...]}`.
Answers are matched by URL, never by position; a lone URL is padded with an empty one, since the API wants more than
one.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

import requests
from datatrove.data import Document
from datatrove.pipeline.writers.disk_base import DiskWriter

from filters.batched import BatchedFilter
from filters.layout import remove_images_or_document

SPAWNING_URL = "https://opts-api.spawningaiapi.com/api/v2/query/urls"
TOKEN_VARIABLES = ("SPAWNING_TOKEN", "SPAWNING_OPTS_KEY")  # ours, and Spawning's own client's (datadiligence)


def sendable(url: str) -> bool:
    """A URL that can go in the newline-separated request body as one URL: no whitespace or control characters.
    Any other is treated as opted out (it cannot be asked about, so it is not used)."""
    return isinstance(url, str) and bool(url) and not any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url)


class OptOutServiceError(Exception):
    """The opt-out service could not answer after the retries; the shard must not be written unchecked."""


def spawning_token() -> str | None:
    return next((os.environ[v] for v in TOKEN_VARIABLES if os.environ.get(v)), None)


class OptOutChecker(Protocol):
    def opted_out(self, urls: list[str]) -> set[str]: ...


class OptOutList:
    """Offline opt-outs: a file of URLs (exact match) and domains (the domain and its subdomains), one a line."""

    def __init__(self, path: str):
        self.path = path
        self.urls, self.domains = set(), set()
        with open(path, encoding="utf-8") as f:
            for line in f:
                entry = line.split(" #", 1)[0].strip()  # "#" starts a comment at a line's start or after a space
                if entry.startswith("#") or not entry:
                    continue
                if "://" in entry:
                    self.urls.add(entry)
                else:
                    self.domains.add(entry.lower().strip("."))

    def _domain_listed(self, url: str) -> bool:
        try:
            host = (urlsplit(url).hostname or "").lower().rstrip(".")
        except ValueError:  # a malformed URL has no host to match; it is never fetched either
            return False
        parts = host.split(".")
        return any(".".join(parts[i:]) in self.domains for i in range(len(parts)))

    def opted_out(self, urls: list[str]) -> set[str]:
        return {u for u in urls if u in self.urls or self._domain_listed(u)}


class OptOutCache:
    """URL -> opted out, on disk (SQLite), shared by every task and run that points at the same file."""

    def __init__(self, path: str):
        self.path = path
        self._local = threading.local()

    def _db(self) -> sqlite3.Connection:
        if not hasattr(self._local, "db"):
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            db = sqlite3.connect(self.path, timeout=60)
            db.execute("CREATE TABLE IF NOT EXISTS optout (url TEXT PRIMARY KEY, opted_out INTEGER, checked REAL)")
            self._local.db = db
        return self._local.db

    def get(self, urls: list[str]) -> dict[str, bool]:
        found: dict[str, bool] = {}
        for start in range(0, len(urls), 500):
            chunk = urls[start:start + 500]
            marks = ",".join("?" * len(chunk))
            for url, opted in self._db().execute(f"SELECT url, opted_out FROM optout WHERE url IN ({marks})", chunk):
                found[url] = bool(opted)
        return found

    def put(self, answers: dict[str, bool]) -> None:
        now = time.time()
        with self._db() as db:
            db.executemany("INSERT OR REPLACE INTO optout VALUES (?, ?, ?)",
                           [(u, int(o), now) for u, o in answers.items()])

    def __getstate__(self) -> dict:
        return {"path": self.path}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"])


@dataclass
class SpawningConfig:
    url: str = SPAWNING_URL
    token: str | None = None
    batch_size: int = 1000  # the team's client; the API takes up to 10,000
    max_in_flight: int = 10  # the team's client: at most 10 requests in flight ...
    max_per_second: float = 20.0  # ... and 20 a second
    timeout: float = 60.0  # the team's client
    retries: int = 6
    backoff: float = 2.0  # seconds, doubling: 2, 4, ... 64 s, the "long back-off" of the team's client


class SpawningOptOutChecker:
    """Asks the Spawning API about the URLs its cache does not know yet."""

    def __init__(self, config: SpawningConfig, cache: OptOutCache | None = None):
        self.config, self.cache = config, cache
        self._lock = threading.Lock()
        self._next_request = 0.0

    def __getstate__(self) -> dict:
        return {"config": self.config, "cache": self.cache}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["config"], state["cache"])

    def _wait_for_rate(self) -> None:
        with self._lock:
            now = time.monotonic()
            wait = self._next_request - now
            self._next_request = max(now, self._next_request) + 1.0 / self.config.max_per_second
        if wait > 0:
            time.sleep(wait)

    def _post(self, urls: list[str]) -> dict[str, bool]:
        body = "\n".join(urls if len(urls) > 1 else [*urls, ""])  # the API wants more than one URL
        headers = {"Authorization": f"API {self.config.token}", "Content-Type": "text/plain"}
        problem = ""
        for attempt in range(self.config.retries + 1):
            if attempt:
                time.sleep(self.config.backoff * 2 ** (attempt - 1))
            self._wait_for_rate()
            try:
                response = requests.post(self.config.url, data=body.encode(), headers=headers,
                                         timeout=self.config.timeout)
            except requests.RequestException as error:
                problem = type(error).__name__
                continue
            if response.status_code == 429 or response.status_code >= 500:
                problem = f"HTTP {response.status_code}"
                continue
            if response.status_code != 200:
                raise OptOutServiceError(f"{self.config.url}: HTTP {response.status_code} "
                                         f"({response.text[:120].strip()})")
            try:
                answers = {a["url"]: bool(a["optOut"]) for a in response.json()["urls"]}
            except (ValueError, KeyError, TypeError):
                raise OptOutServiceError(f"{self.config.url}: unexpected answer {response.text[:120]!r}") from None
            missing = [u for u in urls if u not in answers]
            if missing:
                raise OptOutServiceError(f"{self.config.url}: no answer for {len(missing)} URL(s), e.g. {missing[0]}")
            return {u: answers[u] for u in urls}
        raise OptOutServiceError(f"{self.config.url}: {problem} after {self.config.retries + 1} tries")

    def opted_out(self, urls: list[str]) -> set[str]:
        urls = list(dict.fromkeys(urls))
        known = self.cache.get(urls) if self.cache else {}
        unknown = [u for u in urls if u not in known]
        batches = [unknown[i:i + self.config.batch_size] for i in range(0, len(unknown), self.config.batch_size)]
        pool = ThreadPoolExecutor(self.config.max_in_flight)
        try:
            for answers in pool.map(self._post, batches):
                known.update(answers)
                if self.cache:
                    self.cache.put(answers)  # kept even if a later batch fails: no URL is asked twice
        finally:  # on a failure (or Ctrl-C), batches not started are cancelled rather than waited out
            pool.shutdown(wait=False, cancel_futures=True)
        return {u for u, opted in known.items() if opted}


class SpawningOptOutFilter(BatchedFilter):
    """Remove opted-out content, the Idefics2-era policy (Idefics2 paper, arXiv:2405.02246, section A.1.1).

    Rules: a document whose own URL (`metadata["url"]`) is opted out is removed whole
    (`document_opted_out`); opted-out images are removed from the other documents; a document left with no
    image is removed (`all_images_opted_out`). Annotates `metadata["optout"]` with what it removed. If the
    service cannot answer, the task fails (`OptOutServiceError`) rather than pass anything unchecked. A URL that
    cannot be sent as one line of the request (whitespace, control characters) counts as opted out.
    """

    name = "optout"

    def __init__(self, checker: OptOutChecker, batch_size: int = 1000, exclusion_writer: DiskWriter | None = None):
        super().__init__(exclusion_writer, batch_size=batch_size)
        self.checker = checker

    def filter_batch(self, batch: list[Document]) -> list[bool | tuple[bool, str]]:
        urls = [u for doc in batch for u in _urls(doc)]
        unsendable = {u for u in urls if not sendable(u)}
        opted = self.checker.opted_out([u for u in urls if u not in unsendable]) | unsendable
        self.stat_update("urls_unsendable", value=len(unsendable))
        self.stat_update("urls_checked", value=len(set(urls)))
        return [self._apply(doc, opted) for doc in batch]

    def _apply(self, doc: Document, opted: set[str]) -> bool | tuple[bool, str]:
        if doc.metadata.get("url") in opted:
            doc.metadata["optout"] = {"document": True, "images": 0}
            return False, "document_opted_out"
        removed = [i for i, media in enumerate(doc.media) if media.url in opted]
        doc.metadata["optout"] = {"document": False, "images": len(removed)}
        self.stat_update("images_opted_out", value=len(removed))
        return remove_images_or_document(doc, removed, "all_images_opted_out")


def _urls(doc: Document) -> Iterable[str]:
    if doc.metadata.get("url"):
        yield doc.metadata["url"]
    yield from (m.url for m in doc.media if m.url)
