"""Real HTTP servers on loopback for the tests: an image host with the web's bad habits, and a stand-in for the
Spawning opt-out API that counts the calls it gets. Each runs in a thread and stops when its `with` block ends.
Servers listen on a loopback address (127.0.0.1 unless told another of 127.0.0.0/8), over TLS if asked."""

from __future__ import annotations

import functools
import io
import json
import os
import ssl
import struct
import tempfile
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from PIL import Image

# A self-signed certificate for the name TEST_TLS_NAME only, valid 2000-2100, made once with
#   openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=images.test ...
#   openssl ca -selfsign -startdate 20000101000000Z -enddate 21000101000000Z (subjectAltName=DNS:images.test)
# Test material only: it secures nothing but a loopback server during a test.
TEST_TLS_NAME = "images.test"
TEST_TLS_CERT = """\
-----BEGIN CERTIFICATE-----
MIIBdzCCAR2gAwIBAgIBATAKBggqhkjOPQQDAjAWMRQwEgYDVQQDDAtpbWFnZXMu
dGVzdDAgFw0wMDAxMDEwMDAwMDBaGA8yMTAwMDEwMTAwMDAwMFowFjEUMBIGA1UE
AwwLaW1hZ2VzLnRlc3QwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAAQD2/gRbT8A
T/9isWmqkstRO4HPzpTe9oNKCbeZi3Nam+aPnDePsgY3bimRWBMa4bu+LkcER9Su
bs+HTKtMC7Ioo1owWDAWBgNVHREEDzANggtpbWFnZXMudGVzdDAPBgNVHRMBAf8E
BTADAQH/MA4GA1UdDwEB/wQEAwIChDAdBgNVHQ4EFgQUBfE5RvK4mC9e9TgBovUU
3RkpvUQwCgYIKoZIzj0EAwIDSAAwRQIge3eqeb8lJ8sUK++wIT/y3rOlKX/GJng9
Rf7pVttLFUQCIQDW5vGWsHM0Ktj8SUahdcuMoAqD7GDNuHec+M2UDYHN+w==
-----END CERTIFICATE-----
"""
TEST_TLS_KEY = """\
-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgp/bUmLu5wIe2KUv2
L4FNyLslnK1OrlxaF9Xr8Mb7gwqhRANCAAQD2/gRbT8AT/9isWmqkstRO4HPzpTe
9oNKCbeZi3Nam+aPnDePsgY3bimRWBMa4bu+LkcER9Subs+HTKtMC7Io
-----END PRIVATE KEY-----
"""


@functools.lru_cache(maxsize=1)
def tls_files() -> tuple[str, str]:
    """(certificate, key) written once to a temporary folder: the certificate doubles as the client's CA file."""
    folder = tempfile.mkdtemp(prefix="test-tls-")
    paths = os.path.join(folder, "cert.pem"), os.path.join(folder, "key.pem")
    for path, text in zip(paths, (TEST_TLS_CERT, TEST_TLS_KEY)):
        with open(path, "w") as f:
            f.write(text)
    return paths


def jpeg_bytes(size: tuple[int, int] = (64, 48), color: tuple[int, int, int] = (200, 80, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels but that carries almost no data: a decompression bomb's
    calling card."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + \
        chunk(b"IEND", b"")


class _HTTPServer(ThreadingHTTPServer):
    request_queue_size = 128  # socketserver's 5 drops connections under a burst of concurrent downloads
    daemon_threads = True


class _Server:
    handler: type[BaseHTTPRequestHandler]
    address = "127.0.0.1"
    port = 0  # any free port unless told one
    tls = False  # serve HTTPS with the test certificate for TEST_TLS_NAME

    def __enter__(self):
        self.httpd = _HTTPServer((self.address, self.port), self.handler)
        if self.tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls_files())
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.httpd.handle_error = lambda request, address: None  # clients hanging up early is what we test
        self.httpd.owner = self
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    def url(self, path: str, host: str | None = None) -> str:
        return f"{'https' if self.tls else 'http'}://{host or self.address}:{self.port}{path}"


class _ImageHandler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass

    def _send(self, body: bytes, status: int = 200, headers: dict | None = None, content_type: str = "image/jpeg"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # noqa: N802 - http.server's naming
        host: ImageHost = self.server.owner
        host.hits[self.path] = host.hits.get(self.path, 0) + 1
        host.host_headers.append(self.headers.get("Host", ""))
        path = self.path.split("?")[0]
        image = host.image
        if path.startswith("/ok"):
            time.sleep(host.latency)
            self._send(image)
        elif path == "/noai.jpg":
            self._send(image, headers={"X-Robots-Tag": "noai"})
        elif path == "/noimageindex.jpg":
            self._send(image, headers={"X-Robots-Tag": "googlebot: noimageindex"})
        elif path == "/tdm.jpg":
            self._send(image, headers={"tdm-reservation": "1"})
        elif path == "/redirect-to-localhost":
            self.send_response(302)
            self.send_header("Location", f"http://localhost:{host.port}/ok.jpg")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path == "/redirect":  # to the URL in ?to=, byte for byte
            self.send_response(302)
            self.send_header("Location", parse_qs(urlsplit(self.path).query)["to"][0])
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path == "/redirect-to-ok":
            self.send_response(301)
            self.send_header("Location", "/ok-after-redirect.jpg")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path == "/huge-declared.jpg":
            self._send_stream(50 * 2**20, declare_length=True)
        elif path == "/huge-chunked.jpg":
            self._send_stream(50 * 2**20, declare_length=False)
        elif path == "/truncated.jpg":
            self._send(host.big_image[: len(host.big_image) // 2])
        elif path == "/bomb.png":
            self._send(png_claiming(30000, 30000), content_type="image/png")
        elif path == "/not-an-image.jpg":
            self._send(b"<html><body>Not here</body></html>", content_type="text/html")
        elif path == "/short-body.jpg":  # announces more than it sends, then hangs up
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(image) * 2))
            self.end_headers()
            self.wfile.write(image)
            self.close_connection = True
        elif path == "/drip.jpg":  # a byte every 0.2 s: never trips a read timeout
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", "100000")
            self.end_headers()
            try:
                for _ in range(50):
                    self.wfile.write(b"\xff")
                    self.wfile.flush()
                    time.sleep(0.2)
            except (BrokenPipeError, ConnectionResetError):
                pass
            self.close_connection = True
        elif path == "/stall.jpg":
            time.sleep(host.stall_seconds)
            self._send(image)
        elif path == "/flaky.jpg":
            if host.hits[self.path] <= 2:
                self._send(b"busy", status=503, content_type="text/plain")
            else:
                self._send(image)
        else:
            self._send(b"no such image", status=404, content_type="text/plain")

    def _send_stream(self, size: int, declare_length: bool):
        host: ImageHost = self.server.owner
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        if declare_length:
            self.send_header("Content-Length", str(size))
        self.end_headers()
        block = b"\xff" * 65536
        try:
            for _ in range(size // len(block)):
                self.wfile.write(block)
                host.bytes_streamed += len(block)
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.close_connection = True


class ImageHost(_Server):
    """Serves one small JPEG under many behaviours; counts hits per path and bytes streamed by the huge ones."""

    handler = _ImageHandler

    def __init__(self, stall_seconds: float = 3.0, latency: float = 0.0, address: str = "127.0.0.1",
                 tls: bool = False, port: int = 0):
        self.address, self.tls, self.port = address, tls, port
        self.latency = latency  # seconds before answering /ok*: a stand-in for a real network's round trips
        self.image = jpeg_bytes()
        self.big_image = jpeg_bytes((640, 480), (30, 120, 200))
        self.stall_seconds = stall_seconds
        self.hits: dict[str, int] = {}
        self.host_headers: list[str] = []  # the Host header of each request, in order
        self.bytes_streamed = 0


class _SpawningHandler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):  # noqa: N802
        api: SpawningStandIn = self.server.owner
        body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
        with api.lock:
            api.calls += 1
            mode = api.script.pop(0) if api.script else api.mode
        urls = body.split("\n")
        if self.headers.get("Authorization") != f"API {api.token}":
            return self._reply(401, {"error": "bad token"})
        if mode != "ok":
            return self._reply(int(mode), {"error": "try later"})
        if len(urls) < 2:
            return self._reply(400, {"error": "send more than one URL"})  # the real API's quirk
        with api.lock:
            api.urls_asked += [u for u in urls if u]
        answers = [{"url": u, "optOut": u in api.opted_out, "optIn": False} for u in urls]
        self._reply(200, {"urls": answers[::-1]})  # reversed: clients must match by URL

    def _reply(self, status: int, payload: dict):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class SpawningStandIn(_Server):
    """The opt-out API contract (see `filters.optout`). `mode` is "ok" or an HTTP status to answer every call with;
    `script` lists per-call answers that come first (e.g. ["429", "ok"])."""

    handler = _SpawningHandler

    def __init__(self, opted_out: set[str], token: str = "test-token", mode: str = "ok"):
        self.opted_out, self.token, self.mode = set(opted_out), token, mode
        self.script: list[str] = []
        self.calls = 0
        self.urls_asked: list[str] = []
        self.lock = threading.Lock()
