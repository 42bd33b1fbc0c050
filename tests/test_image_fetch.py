"""The image fetcher against a real HTTP server on loopback: every refusal shows up under its status."""

from __future__ import annotations

import io
import time

import pytest
from PIL import Image

from filters.image_decode import decode_image
from filters.image_fetch import FetchConfig, ImageFetcher
from tests.http_servers import ImageHost, jpeg_bytes


@pytest.fixture(scope="module")
def host():
    with ImageHost(stall_seconds=2.0) as server:
        yield server


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
    for url in ("http://a.example:99999/x.jpg", "http://a.example:abc/x.jpg", "http://[::1/x.jpg"):
        assert fetcher.fetch(url).status == "bad_url", url


def test_private_hosts_refused_unless_allowed(host):
    assert ImageFetcher(FetchConfig()).fetch(host.url("/ok.jpg")).status == "private_address"
    assert ImageFetcher(FetchConfig(allow_private_hosts=True)).fetch(host.url("/redirect-to-localhost")).status == "ok"
    assert ImageFetcher(FetchConfig()).fetch("ftp://example.org/a.jpg").status == "bad_scheme"
    assert ImageFetcher(FetchConfig()).fetch("http://[::1]/a.jpg").status == "private_address"
    for address in ("100.100.100.200", "169.254.169.254", "10.1.2.3", "0.0.0.0", "224.0.0.1"):
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
