"""The image fetcher against a real HTTP server on loopback: every refusal shows up under its status."""

from __future__ import annotations

import io
import socket
import time
from urllib.parse import quote

import numpy as np
import pytest
from PIL import Image

from filters import image_fetch, pixels
from filters.image_decode import decode_image
from filters.image_fetch import FetchConfig, ImageFetcher
from tests.http_servers import TEST_TLS_NAME, ImageHost, jpeg_bytes, tls_files

DECOY = "127.0.0.2"  # plays a public host in the address tests: the one loopback address they allow


@pytest.fixture(scope="module")
def host():
    with ImageHost(stall_seconds=2.0) as server:
        yield server


@pytest.fixture(scope="module")
def decoy():
    with ImageHost(address=DECOY) as server:
        yield server


def resolving(monkeypatch, answers: dict[str, list[str]]) -> list[str]:
    """Make `socket.getaddrinfo` answer each name in `answers` with its addresses in turn (the last one repeats);
    returns the names asked, in order. Other names (and addresses) resolve as usual."""
    real, asked = socket.getaddrinfo, []

    def fake(host, port, *args, **kwargs):
        if host not in answers:
            return real(host, port, *args, **kwargs)
        asked.append(host)
        turn = answers[host]
        return real(turn.pop(0) if len(turn) > 1 else turn[0], port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    return asked


@pytest.fixture
def fetcher(host):
    return ImageFetcher(FetchConfig(read_timeout=0.5, timeout=5, retries=2, backoff=0.05, max_bytes=2**20,
                                    allow_private_hosts=(f"127.0.0.1:{host.port}",)))


@pytest.mark.parametrize("path, status", [
    ("/ok.jpg", "ok"),
    ("/redirect-to-ok", "ok"),
    ("/noai.jpg", "blocked_by_header"),
    ("/noimageindex.jpg", "blocked_by_header"),
    ("/tdm.jpg", "blocked_by_header"),
    ("/redirect-to-localhost", "private_address"),
    ("/truncated.jpg", "corrupt"),
    ("/bomb.png", "too_many_pixels"),
    ("/not-an-image.jpg", "not_an_image"),
    ("/missing.jpg", "http_error"),
])
def test_status_of_each_case(host, fetcher, path, status):
    result = fetcher.fetch(host.url(path))
    assert result.status == status, result.error
    if status == "ok":
        assert result.image.data == host.image and (result.image.original_width, result.image.format) == (64, "jpeg")


def test_slow_drip_hits_the_total_deadline(host):
    fetcher = ImageFetcher(FetchConfig(read_timeout=1, timeout=1.5, retries=0,
                                       allow_private_hosts=(f"127.0.0.1:{host.port}",)))
    start = time.monotonic()
    result = fetcher.fetch(host.url("/drip.jpg"))
    assert result.status == "timeout" and time.monotonic() - start < 3


def test_malformed_urls_are_a_status_not_a_crash():
    fetcher = ImageFetcher(FetchConfig())
    for url in ("http://a.example:99999/x.jpg", "http://a.example:abc/x.jpg", "http://[::1/x.jpg",
                "http://a.example\\b.example/x.jpg", "http://a.example\t@b.example/x.jpg",
                "http://a.example /x.jpg", "http://a.example/x\r\nHost: b.example"):
        assert fetcher.fetch(url).status == "bad_url", url


def test_backslash_url_cannot_reach_a_private_host(host, decoy):
    """`http://127.0.0.1:P\\@DECOY/../x.jpg`: urllib.parse reads the host as DECOY, the HTTP client as
    127.0.0.1 (issue 9 item 1). Refused, whether given directly or as a redirect from an allowed host."""
    fetcher = ImageFetcher(FetchConfig(retries=0, allow_private_hosts=(DECOY,)))
    sneaky = f"http://127.0.0.1:{host.port}\\@{DECOY}/../ok-secret.jpg"
    direct = fetcher.fetch(sneaky)
    redirected = fetcher.fetch(decoy.url("/redirect?to=" + quote(sneaky, safe="")))
    assert (direct.status, redirected.status) == ("bad_url", "bad_url"), (direct.error, redirected.error)
    assert decoy.hits.get("/redirect?to=" + quote(sneaky, safe="")) == 1
    assert not [path for path in host.hits if "secret" in path], "the private host was reached"


def test_dns_rebinding_connects_to_the_checked_address(decoy, monkeypatch):
    """A name that resolves to an allowed address when checked and to a private one afterwards: the connection
    goes to the address that was checked, with the name in the Host header; the name is resolved once."""
    asked = resolving(monkeypatch, {"rebind.test": [DECOY, "127.0.0.1"]})
    monkeypatch.setattr(image_fetch, "_blocked_address", lambda address: address != DECOY)  # DECOY is "public"
    result = ImageFetcher(FetchConfig(retries=0)).fetch(f"http://rebind.test:{decoy.port}/ok-rebind.jpg")
    assert result.status == "ok", result.error
    assert decoy.hits.get("/ok-rebind.jpg") == 1 and decoy.host_headers[-1] == f"rebind.test:{decoy.port}"
    assert asked == ["rebind.test"]
    assert ImageFetcher(FetchConfig(retries=0)).fetch(f"http://rebind.test:{decoy.port}/x.jpg").status \
        == "private_address"  # the next resolution gives 127.0.0.1: checked, and refused


def test_https_to_the_checked_address_still_verifies_the_certificate_name(monkeypatch):
    """Over TLS the connection goes to the checked address while SNI and the certificate check use the name."""
    resolving(monkeypatch, {TEST_TLS_NAME: ["127.0.0.1"], "other.test": ["127.0.0.1"]})
    with ImageHost(tls=True) as server:
        fetcher = ImageFetcher(FetchConfig(retries=0, ca_certs=tls_files()[0], allow_private_hosts=True))
        named = fetcher.fetch(server.url("/ok.jpg", host=TEST_TLS_NAME))
        assert named.status == "ok", named.error
        assert server.host_headers == [f"{TEST_TLS_NAME}:{server.port}"]
        for url in (server.url("/ok.jpg", host="other.test"), server.url("/ok.jpg")):  # names the cert lacks
            assert fetcher.fetch(url).status == "tls_error", url
        untrusted = ImageFetcher(FetchConfig(retries=0, allow_private_hosts=True))  # the system's CAs only
        assert untrusted.fetch(server.url("/ok.jpg", host=TEST_TLS_NAME)).status == "tls_error"
        assert len(server.host_headers) == 1  # no request was sent over a connection that failed its check


def test_private_hosts_refused_unless_allowed(host):
    assert ImageFetcher(FetchConfig()).fetch(host.url("/ok.jpg")).status == "private_address"
    assert ImageFetcher(FetchConfig(allow_private_hosts=True)).fetch(host.url("/redirect-to-localhost")).status == "ok"
    assert ImageFetcher(FetchConfig()).fetch("ftp://example.org/a.jpg").status == "bad_scheme"
    assert ImageFetcher(FetchConfig()).fetch("http://[::1]/a.jpg").status == "private_address"
    for address in ("100.100.100.200", "169.254.169.254", "10.1.2.3", "0.0.0.0", "224.0.0.1", "[::ffff:127.0.0.1]",
                    "[64:ff9b::a01:203]", "[2002:a01:203::1]", "[::127.0.0.1]", "[fe80::1]", "[fc00::1]"):
        assert ImageFetcher(FetchConfig()).fetch(f"http://{address}/a.jpg").status == "private_address", address


def test_huge_bodies_refused_without_reading_them(host, fetcher):
    assert fetcher.fetch(host.url("/huge-declared.jpg")).status == "too_large"
    host.bytes_streamed = 0
    result = fetcher.fetch(host.url("/huge-chunked.jpg"))
    time.sleep(0.3)  # let the server notice the closed connection
    assert result.status == "too_large"
    assert host.bytes_streamed < 16 * 2**20, "the 50 MB body was read far past the 1 MB limit"


def test_stalled_server_times_out_and_retries_are_bounded(host, fetcher):
    start = time.monotonic()
    result = fetcher.fetch(host.url("/stall.jpg"))
    assert result.status == "timeout" and result.attempts == 3
    assert time.monotonic() - start < 5


def test_retry_on_503_then_success(host, fetcher):
    result = fetcher.fetch(host.url("/flaky.jpg"))
    assert result.status == "ok" and result.attempts == 3


def test_downscale_keeps_aspect_and_uses_jpeg_draft():
    big = io.BytesIO()
    Image.new("RGB", (2000, 1000), (10, 200, 30)).save(big, format="JPEG")
    small = decode_image(big.getvalue(), max_side=384)
    assert small.status == "ok" and (small.width, small.height) == (384, 192)
    assert (small.original_width, small.original_height) == (2000, 1000)
    assert Image.open(io.BytesIO(small.data)).size == (384, 192)
    untouched = decode_image(jpeg_bytes((100, 50)), max_side=384)
    assert untouched.data == jpeg_bytes((100, 50)) and untouched.width == 100


def test_body_shorter_than_announced_is_a_connection_error(host):
    fetcher = ImageFetcher(FetchConfig(retries=0, allow_private_hosts=(f"127.0.0.1:{host.port}",)))
    assert fetcher.fetch(host.url("/short-body.jpg")).status == "connection_error"


def photo_like(size: tuple[int, int], fmt: str = "JPEG", **save) -> bytes:
    """Noisy pixels, so that a reduced-size JPEG decode and a full decode give different working copies."""
    rng = np.random.default_rng(sum(size))
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buffer, format=fmt, **save)
    return buffer.getvalue()


@pytest.mark.parametrize("data, max_side", [
    (photo_like((1600, 1200)), None),  # stored as downloaded: the reduced-size decode is the check
    (photo_like((1600, 1200), progressive=True), None),
    (photo_like((1600, 1200)), 980),  # stored downscaled, still larger than the working copy
    (photo_like((1600, 1200)), 384),
    (photo_like((700, 500), "PNG"), None),
    (photo_like((300, 200)), None),
])
def test_decode_seeds_the_pixel_cache_with_what_a_later_step_would_decode(data, max_side):
    """Issue 8 item 7: the pixel steps find the image the `images` step decoded (no second decode), and the
    pixels are exactly those they would decode themselves, so a cache miss never changes a score."""
    pixels._CACHE.clear()
    stored = decode_image(data, max_side=max_side)
    assert stored.status == "ok", stored.error
    before = pixels.decodes
    cached = pixels.working_image(stored.data)
    assert pixels.decodes == before, "the pixel step decoded the image again"
    fresh = pixels.decode_working(stored.data)
    assert (cached.size, cached.mode, cached.tobytes()) == (fresh.size, fresh.mode, fresh.tobytes())


@pytest.mark.parametrize("progressive", [False, True])
@pytest.mark.parametrize("max_side", [None, 384])
def test_truncated_jpeg_is_corrupt_at_any_decode_size(progressive, max_side):
    data = photo_like((1600, 1200), progressive=progressive)
    for cut in (0.5, 0.97):
        result = decode_image(data[: int(len(data) * cut)], max_side=max_side)
        assert result.status == "corrupt" and result.original_width == 1600, (cut, result.error)
