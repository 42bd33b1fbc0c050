"""Fetch one image over HTTP(S), politely and safely: the network half of image acquisition.

Rules, in the order they apply to each hop (a redirect is a new hop, checked again):
  - only well-formed (`bad_url`) http and https (`bad_scheme`) URLs;
  - the host must resolve to globally routable addresses only: loopback, private, shared, link-local,
    multicast, reserved and unspecified are refused (`private_address`) unless `allow_private_hosts` allows
    them (the name is resolved again by the HTTP client when it connects: DNS rebinding is not closed);
  - at most `per_host` requests in flight to one host, connect and read timeouts, a total deadline
    (`timeout`, enforced while the body streams too), bounded retries with exponential backoff on timeouts,
    connection errors, 429 and 5xx;
  - `X-Robots-Tag` directives `noai`, `noimageai`, `noindex`, `noimageindex` (img2dataset's defaults) and
    `tdm-reservation: 1` refuse the image (`blocked_by_header`);
  - a body over `max_bytes` is refused as soon as that is known, from Content-Length or while streaming,
    without reading it all (`too_large`);
  - the bytes must decode as an image within the pixel limit (`filters.image_decode`).
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

import requests
import urllib3

from filters.image_decode import DEFAULT_MAX_PIXELS, DecodedImage, decode_image

# img2dataset's default `disallowed_header_directives`
DEFAULT_BLOCKING_DIRECTIVES = ("noai", "noimageai", "noindex", "noimageindex")
RETRYABLE_HTTP = {429, 500, 502, 503, 504}


@dataclass
class FetchConfig:
    connect_timeout: float = 5.0
    read_timeout: float = 10.0  # img2dataset's default timeout
    timeout: float = 30.0  # whole fetch, retries included
    retries: int = 2
    backoff: float = 0.5  # seconds; doubles on each retry
    max_bytes: int = 20 * 2**20
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_side: int | None = None  # store images downscaled to this longest side
    per_host: int = 4
    max_redirects: int = 5
    blocking_directives: tuple[str, ...] = DEFAULT_BLOCKING_DIRECTIVES
    honour_tdm_reservation: bool = True
    # True: any host; a tuple of "host" or "host:port": only those (tests, mirrors on a private network)
    allow_private_hosts: bool | tuple[str, ...] = False
    user_agent: str = "idefics2-recipe/0.1 (image fetcher; honours X-Robots-Tag noai and tdm-reservation)"


@dataclass
class FetchResult:
    url: str
    status: str  # "ok" or the reason it failed
    image: DecodedImage | None = None
    error: str = ""
    final_url: str | None = None
    attempts: int = field(default=0)


class _Refused(Exception):
    def __init__(self, status: str, error: str = ""):
        super().__init__(error)
        self.status, self.error = status, error


class _Retryable(_Refused):
    """A refusal worth another try (429, 5xx)."""


def _blocked_address(address: str) -> bool:
    """Anything not globally routable: loopback, private, link-local, shared (100.64/10, where some clouds keep
    their metadata service), reserved, unspecified, and multicast."""
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast


class ImageFetcher:
    """Thread-safe: one per task, shared by its download threads."""

    def __init__(self, config: FetchConfig | None = None):
        self.config = config or FetchConfig()
        self._host_slots: dict[str, threading.BoundedSemaphore] = defaultdict(
            lambda: threading.BoundedSemaphore(self.config.per_host))
        self._slots_lock = threading.Lock()
        self._local = threading.local()

    def _session(self) -> requests.Session:
        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
            self._local.session.headers["User-Agent"] = self.config.user_agent
        return self._local.session

    def _slot(self, host: str) -> threading.BoundedSemaphore:
        with self._slots_lock:
            return self._host_slots[host]

    def _check_host(self, url: str) -> tuple[str, int]:
        try:
            parts = urlsplit(url)
            explicit_port = parts.port
        except ValueError as error:  # "http://a.com:99999/", "http://[::1/": a malformed URL, not a crash
            raise _Refused("bad_url", f"{url[:100]}: {error}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise _Refused("bad_scheme", url[:100])
        port = explicit_port or (443 if parts.scheme == "https" else 80)
        allowed = self.config.allow_private_hosts
        if allowed is True or (allowed and (parts.hostname in allowed or f"{parts.hostname}:{port}" in allowed)):
            return parts.hostname, port
        try:
            addresses = {info[4][0] for info in socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)}
        except (socket.gaierror, UnicodeError) as error:
            raise _Refused("connection_error", f"cannot resolve {parts.hostname}: {error}") from None
        if any(_blocked_address(a) for a in addresses):
            raise _Refused("private_address", f"{parts.hostname} resolves to {sorted(addresses)[0]}")
        return parts.hostname, port

    def _blocked_by(self, headers: requests.structures.CaseInsensitiveDict) -> str | None:
        for value in headers.get("X-Robots-Tag", "").split(","):
            # "noai", or "googlebot: noindex": the directive is the last word
            directive = value.split(":")[-1].strip().lower()
            if directive in self.config.blocking_directives:
                return f"X-Robots-Tag: {directive}"
        if self.config.honour_tdm_reservation and headers.get("tdm-reservation", "").strip() == "1":
            return "tdm-reservation: 1"
        return None

    def _read_body(self, response: requests.Response, deadline: float) -> bytes:
        length = response.headers.get("Content-Length")
        if length and length.isdigit() and int(length) > self.config.max_bytes:
            raise _Refused("too_large", f"Content-Length {length} > {self.config.max_bytes}")
        # read1 returns what one read of the socket gives, so the deadline is checked even when a server drips
        # a byte at a time (which never trips the read timeout)
        chunks, size = [], 0
        while chunk := response.raw.read1(64 * 1024, decode_content=True):
            size += len(chunk)
            if size > self.config.max_bytes:
                raise _Refused("too_large", f"body over {self.config.max_bytes} bytes")
            if time.monotonic() > deadline:
                raise _Refused("timeout", f"body not received within {self.config.timeout} s")
            chunks.append(chunk)
        return b"".join(chunks)

    def _get_once(self, url: str, deadline: float) -> tuple[str, bytes]:
        """Follow redirects (each hop checked) to the final body; raises _Refused or a requests error."""
        for _ in range(self.config.max_redirects + 1):
            host, _port = self._check_host(url)
            with self._slot(host):
                timeout = (self.config.connect_timeout, self.config.read_timeout)
                with self._session().get(url, stream=True, timeout=timeout, allow_redirects=False) as response:
                    if response.is_redirect and "Location" in response.headers:
                        try:
                            url = urljoin(url, response.headers["Location"])
                        except ValueError:
                            raise _Refused("bad_url", f"redirect to {response.headers['Location'][:100]}") from None
                        continue
                    if response.status_code >= 400:
                        kind = _Retryable if response.status_code in RETRYABLE_HTTP else _Refused
                        raise kind("http_error", f"HTTP {response.status_code}")
                    if blocked := self._blocked_by(response.headers):
                        raise _Refused("blocked_by_header", blocked)
                    return url, self._read_body(response, deadline)
        raise _Refused("too_many_redirects", f"more than {self.config.max_redirects} redirects")

    def fetch(self, url: str) -> FetchResult:
        deadline = time.monotonic() + self.config.timeout
        result = FetchResult(url=url, status="timeout")
        for attempt in range(self.config.retries + 1):
            result.attempts = attempt + 1
            try:
                final_url, body = self._get_once(url, deadline)
            except _Retryable as error:
                result.status, result.error = error.status, error.error
            except _Refused as error:
                result.status, result.error = error.status, error.error
                return result
            except (requests.Timeout, urllib3.exceptions.TimeoutError) as error:
                result.status, result.error = "timeout", type(error).__name__
            except (requests.RequestException, urllib3.exceptions.HTTPError) as error:  # body reads are urllib3's
                result.status, result.error = "connection_error", type(error).__name__
            else:
                result.final_url = final_url
                result.image = decode_image(body, self.config.max_pixels, self.config.max_side)
                result.status, result.error = result.image.status, result.image.error
                return result
            pause = self.config.backoff * 2**attempt
            if attempt == self.config.retries or time.monotonic() + pause > deadline:
                return result
            time.sleep(pause)
        return result
