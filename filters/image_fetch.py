"""Fetch one image over HTTP(S), politely and safely: the network half of image acquisition.

Rules, in the order they apply to each hop (a redirect is a new hop, checked again):
  - only well-formed (`bad_url`) http and https (`bad_scheme`) URLs; a URL that parsers read differently is
    refused as `bad_url`: a backslash, space or control character before the path, or a host on which
    `urllib.parse` and urllib3 disagree (`http://127.0.0.1:8080\\@public.example/` is public.example to one and
    127.0.0.1 to the other);
  - the host is resolved once and every address it has must be globally routable: loopback, private, shared,
    link-local, multicast, reserved and unspecified are refused (`private_address`) unless `allow_private_hosts`
    allows the host. The connection then goes to exactly the address that was checked, with the name in the
    Host header, the TLS SNI and the certificate check, so no parser trick and no DNS rebinding can send it
    elsewhere. A name that does not resolve is a `connection_error`;
  - at most `per_host` requests in flight to one host, connect and read timeouts, a total deadline
    (`timeout`, enforced while the body streams too), bounded retries with exponential backoff on timeouts,
    connection errors, 429 and 5xx; a certificate that does not verify is a `tls_error`, not retried;
  - `X-Robots-Tag` directives `noai`, `noimageai`, `noindex`, `noimageindex` (img2dataset's defaults) and
    `tdm-reservation: 1` refuse the image (`blocked_by_header`);
  - a body over `max_bytes` is refused as soon as that is known, from Content-Length or while streaming,
    without reading it all (`too_large`);
  - the bytes must decode as an image within the pixel limit (`filters.image_decode`).

Environment proxies (HTTP_PROXY, ...) are not used: a proxy resolves names itself, after our check.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import certifi  # the CA bundle requests uses (installed with it)
import urllib3
from urllib3.exceptions import HTTPError, NewConnectionError, ProtocolError, SSLError, TimeoutError
from urllib3.util import parse_url

from filters.image_decode import DEFAULT_MAX_PIXELS, DecodedImage, decode_image

# img2dataset's default `disallowed_header_directives`
DEFAULT_BLOCKING_DIRECTIVES = ("noai", "noimageai", "noindex", "noimageindex")
RETRYABLE_HTTP = {429, 500, 502, 503, 504}
REDIRECTS = {301, 302, 303, 307, 308}
# failures that say the network did not carry the request, rather than what a server answered: what an outage
# looks like (`filters.images` fails a shard when nearly all of its fetches end this way)
NETWORK_STATUSES = ("timeout", "connection_error")
_AMBIGUOUS_AUTHORITY = re.compile(r"[\\\s\x00-\x1f\x7f]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


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
    ca_certs: str | None = None  # PEM file of trusted CAs; None: certifi's bundle, as `requests` uses
    user_agent: str = "idefics2-recipe/0.1 (image fetcher; honours X-Robots-Tag noai and tdm-reservation)"


@dataclass
class FetchResult:
    url: str
    status: str  # "ok" or the reason it failed
    image: DecodedImage | None = None
    error: str = ""
    attempts: int = 0

    @property
    def network_failure(self) -> bool:
        return self.status in NETWORK_STATUSES


@dataclass(frozen=True)
class _Target:
    """One hop as the HTTP client will send it: `host` as resolved (lowercase, IDNA, IPv6 without brackets)."""

    scheme: str
    host: str
    port: int
    path: str  # the request target: path and query

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == (443 if self.scheme == "https" else 80) else f"{host}:{self.port}"


class _Refused(Exception):
    def __init__(self, status: str, error: str = ""):
        super().__init__(error)
        self.status, self.error = status, error


class _Retryable(_Refused):
    """A refusal worth another try (429, 5xx)."""


_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052: the IPv4 address is the last 32 bits
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")  # deprecated (RFC 4291), ditto


def _blocked_address(address: str) -> bool:
    """Anything not globally routable: loopback, private, link-local, shared (100.64/10, where some clouds keep
    their metadata service), reserved, unspecified, and multicast; an IPv6 address that carries an IPv4 one
    (mapped, 6to4, NAT64, IPv4-compatible) is judged by the IPv4 address it leads to."""
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in _NAT64 or (ip in _IPV4_COMPATIBLE and int(ip) > 1):
            ip = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        else:
            ip = ip.ipv4_mapped or ip.sixtofour or ip
    return not ip.is_global or ip.is_multicast


def _parse_target(url: str) -> _Target:
    """The hop urllib3 will make for `url`, or `_Refused` when the URL is malformed or ambiguous."""
    if not isinstance(url, str):
        raise _Refused("bad_url", f"not a URL: {url!r:.100}")
    if _CONTROL.search(url):
        raise _Refused("bad_url", f"control character in {url[:100]!r}")
    try:
        split, parsed = urlsplit(url), parse_url(url)
        split.port  # noqa: B018 - raises on a bad port
    except ValueError as error:  # "http://a.com:99999/", "http://[::1/": a malformed URL, not a crash
        raise _Refused("bad_url", f"{url[:100]}: {error}") from None
    if (parsed.scheme or "").lower() not in ("http", "https") or not parsed.host:
        raise _Refused("bad_scheme", url[:100])
    host = parsed.host.strip("[]")
    authority = url.split("//", 1)[1] if "//" in url else ""
    authority = re.split(r"[/?#]", authority, maxsplit=1)[0]
    if _AMBIGUOUS_AUTHORITY.search(authority) or (split.hostname or "").isascii() and split.hostname != host:
        raise _Refused("bad_url", f"ambiguous host in {url[:100]!r}")
    scheme = parsed.scheme.lower()
    return _Target(scheme, host, parsed.port or (443 if scheme == "https" else 80), parsed.request_uri)


class ImageFetcher:
    """Thread-safe: one per task, shared by its download threads (one pool of kept-alive connections)."""

    def __init__(self, config: FetchConfig | None = None):
        self.config = config or FetchConfig()
        self._host_slots: dict[str, threading.BoundedSemaphore] = defaultdict(
            lambda: threading.BoundedSemaphore(self.config.per_host))
        self._slots_lock = threading.Lock()
        self._pools: urllib3.PoolManager | None = None

    def _pool(self, target: _Target, address: str) -> urllib3.HTTPConnectionPool:
        """Connections to `address` (and only there) for `target`'s host: SNI and certificate use the name."""
        with self._slots_lock:
            if self._pools is None:
                self._pools = urllib3.PoolManager(num_pools=256, maxsize=self.config.per_host,
                                                  cert_reqs="CERT_REQUIRED",
                                                  ca_certs=self.config.ca_certs or certifi.where())
        return self._pools.connection_from_host(address, target.port, target.scheme,
                                                pool_kwargs={"server_hostname": target.host})

    def _slot(self, host: str) -> threading.BoundedSemaphore:
        with self._slots_lock:
            return self._host_slots[host]

    def _allowed_private(self, target: _Target) -> bool:
        allowed = self.config.allow_private_hosts
        return allowed is True or bool(allowed) and (target.host in allowed or
                                                     f"{target.host}:{target.port}" in allowed)

    def _resolve(self, target: _Target) -> list[str]:
        """Every address of the host, each checked; the connection will use one of these and nothing else."""
        try:
            infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as error:  # socket.gaierror is an OSError
            raise _Refused("connection_error", f"cannot resolve {target.host}: {error}") from None
        addresses = list(dict.fromkeys(info[4][0] for info in infos))
        if not self._allowed_private(target):
            if blocked := [a for a in addresses if _blocked_address(a)]:
                raise _Refused("private_address", f"{target.host} resolves to {blocked[0]}")
        return addresses

    def _blocked_by(self, headers: urllib3.HTTPHeaderDict) -> str | None:
        for value in headers.get("X-Robots-Tag", "").split(","):
            # "noai", or "googlebot: noindex": the directive is the last word
            directive = value.split(":")[-1].strip().lower()
            if directive in self.config.blocking_directives:
                return f"X-Robots-Tag: {directive}"
        if self.config.honour_tdm_reservation and headers.get("tdm-reservation", "").strip() == "1":
            return "tdm-reservation: 1"
        return None

    def _read_body(self, response: urllib3.BaseHTTPResponse, deadline: float) -> bytes:
        length = response.headers.get("Content-Length")
        if length and length.isdigit() and int(length) > self.config.max_bytes:
            raise _Refused("too_large", f"Content-Length {length} > {self.config.max_bytes}")
        # read1 returns what one read of the socket gives, so the deadline is checked even when a server drips
        # a byte at a time (which never trips the read timeout)
        chunks, size = [], 0
        while chunk := response.read1(64 * 1024, decode_content=True):
            size += len(chunk)
            if size > self.config.max_bytes:
                raise _Refused("too_large", f"body over {self.config.max_bytes} bytes")
            if time.monotonic() > deadline:
                raise _Refused("timeout", f"body not received within {self.config.timeout} s")
            chunks.append(chunk)
        return b"".join(chunks)

    def _open(self, target: _Target, addresses: list[str]) -> urllib3.BaseHTTPResponse:
        """Send the request to the first checked address that accepts a connection."""
        headers = {"Host": target.host_header, "User-Agent": self.config.user_agent, "Accept": "*/*",
                   "Accept-Encoding": "identity"}
        timeout = urllib3.Timeout(connect=self.config.connect_timeout, read=self.config.read_timeout)
        for index, address in enumerate(addresses):
            try:
                return self._pool(target, address).urlopen(
                    "GET", target.path, headers=headers, timeout=timeout, retries=False, redirect=False,
                    preload_content=False, assert_same_host=False)
            except (NewConnectionError, urllib3.exceptions.ConnectTimeoutError):
                if index == len(addresses) - 1:
                    raise
        raise _Refused("connection_error", f"{target.host} has no address")

    def _get_once(self, url: str, deadline: float) -> bytes:
        """Follow redirects (each hop checked) to the final body; raises _Refused or a urllib3 error."""
        for _ in range(self.config.max_redirects + 1):
            target = _parse_target(url)
            addresses = self._resolve(target)
            with self._slot(target.host):
                response = self._open(target, addresses)
                try:
                    if response.status in REDIRECTS and "Location" in response.headers:
                        try:
                            url = urljoin(url, response.headers["Location"])
                        except ValueError:
                            raise _Refused("bad_url", f"redirect to {response.headers['Location'][:100]}") from None
                        continue
                    if response.status >= 400:
                        kind = _Retryable if response.status in RETRYABLE_HTTP else _Refused
                        raise kind("http_error", f"HTTP {response.status}")
                    if blocked := self._blocked_by(response.headers):
                        raise _Refused("blocked_by_header", blocked)
                    return self._read_body(response, deadline)
                finally:  # a body read to its end has already gone back to the pool; anything else is dropped
                    response.close()
                    response.release_conn()
        raise _Refused("too_many_redirects", f"more than {self.config.max_redirects} redirects")

    def fetch(self, url: str) -> FetchResult:
        deadline = time.monotonic() + self.config.timeout
        result = FetchResult(url=url, status="timeout")
        for attempt in range(self.config.retries + 1):
            result.attempts = attempt + 1
            try:
                body = self._get_once(url, deadline)
            except _Retryable as error:
                result.status, result.error = error.status, error.error
            except _Refused as error:
                result.status, result.error = error.status, error.error
                return result
            except SSLError as error:  # the host's certificate: another try gives the same answer
                result.status, result.error = "tls_error", str(error)[:200]
                return result
            except NewConnectionError as error:  # before TimeoutError: urllib3 makes it a subclass of it
                result.status, result.error = "connection_error", str(error)[:200]
            except TimeoutError as error:
                result.status, result.error = "timeout", type(error).__name__
            except (ProtocolError, HTTPError, OSError) as error:  # resets, short bodies, bad responses
                result.status, result.error = "connection_error", type(error).__name__
            else:
                result.image = decode_image(body, self.config.max_pixels, self.config.max_side)
                result.status, result.error = result.image.status, result.image.error
                return result
            pause = self.config.backoff * 2**attempt
            if attempt == self.config.retries or time.monotonic() + pause > deadline:
                return result
            time.sleep(pause)
        return result
