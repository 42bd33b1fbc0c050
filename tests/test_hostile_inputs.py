"""Hostile input for every command, end to end: the real command as a subprocess on an input crafted in tmp_path.

Each case is one row of `CASES`: the command, how to build its input and flags, and what must come of it: an exit
status, and either one clear `error:` line naming the file, or the removals counted in summary.json. Every case
also checks what holds for all of them: no traceback, no file written outside the output folder (nor at the
absolute or `../` names the input carries), finished shards intact, and the (fake) Hugging Face and Spawning
tokens in the environment never in stdout, stderr or any file of the output.

Already covered elsewhere (not repeated here): hostile OBELICS rows (deep JSON, wrong types, smuggled URLs,
invalid UTF-8: `test_hostile_rows.py`); hostile img2dataset members read by the index (`../`, absolute, links,
devices, oversized, truncated tars: `test_img2dataset_join.py`); PDFA tars with `../`, absolute, link members,
JSON too deep, a member over the cap, not-a-tar and truncated tars (`test_pdfa.py`); hostile HTTP bodies (HTML
served as text/html, bombs, huge, truncated, drip: `test_image_fetch.py`); LAION-COCO rows with null, empty or
multi-line URLs (`test_laion_coco.py`). Adding the mixture or Cauldron commands is adding rows.
"""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import tarfile
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.demo import sample_path
from pipelines.obelics_format import OBELICS_SCHEMA
from scripts.make_pdf_sample import make_pdf
from tests.conftest import run_command
from tests.http_servers import SpawningStandIn, jpeg_bytes

HF_TOKEN = "hf_" + uuid.uuid4().hex  # fake values, unique per test session, searched for in everything written
SPAWNING_TOKEN = "spawning-" + uuid.uuid4().hex
UNIQUE = uuid.uuid4().hex[:12]  # in the absolute member names, so a file written there would be found
HTML = b"<!DOCTYPE html><html><head><title>404</title></head><body>Not Found</body></html>"


@dataclass(frozen=True)
class Case:
    """A command on a crafted input: `build(folder, server)` writes the input under `folder` and returns the flags
    (the output flag is added); then the exit `status`, and an `error` every word of which is in the one
    `error:` line, or `removed` (step/reason -> count) the summary must show, and `images` (image statuses)."""

    module: str
    build: Callable[[Path, "LoopbackHost"], list[str]]
    status: int = 0
    error: tuple[str, ...] = ()
    removed: dict[str, int] = field(default_factory=dict)
    images: dict[str, int] = field(default_factory=dict)
    check: Callable[[Path], None] | None = None  # anything else to assert on the output


# ---------------------------------------------------------------- inputs


class _Handler(BaseHTTPRequestHandler):
    """`/ok.jpg`: a JPEG; `/page.jpg`: an HTML page served as image/jpeg (a CDN's error page with the image's
    headers)."""

    def log_message(self, *args):
        pass

    def do_GET(self):  # noqa: N802 - http.server's naming
        body = jpeg_bytes((200, 200)) if self.path.startswith("/ok") else HTML
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class LoopbackHost:
    def __init__(self):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def obelics_row(name: str, urls: list[str]) -> dict:
    texts, images, metadata = [], [], []
    for url in urls:
        texts += [f"A paragraph about the picture of {name}, long enough to be a real paragraph.", None]
        images += [None, url]
        metadata += [None, {"src": url}]
    return {"images": images, "texts": texts, "metadata": json.dumps(metadata),
            "general_metadata": json.dumps({"url": f"https://site.example/{name}"})}


def write_obelics(folder: Path, name: str, rows: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=OBELICS_SCHEMA), folder / name)
    return folder


def write_tar(path: Path, members: list) -> None:
    """members: (name, bytes) for files, or a TarInfo for links."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tar.addfile(member)
                continue
            name, data = member
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def download_sample(key: str, url: str, image: bytes) -> list:
    """One img2dataset sample: `<key>.jpg` and its `<key>.json` sidecar."""
    return [(f"{key}.jpg", image), (f"{key}.json", json.dumps({"url": url, "key": key, "status": "success"}).encode())]


def hostile_download(folder: Path) -> list[str]:
    """An img2dataset download whose tar climbs out, names absolute paths, links outside, holds an HTML page as a
    `.jpg`, a JSON sidecar over the 1 MiB cap and one with NaN and negative sizes; returns the URLs of its samples
    (the good one first)."""
    names = ("good", "dotdot", "absolute", "symlink", "hardlink", "html", "oversized-json", "nan-sizes")
    urls = [f"https://img.example/{n}.jpg" for n in names]
    oversized = json.dumps({"url": urls[6], "status": "success", "padding": " " * (1 << 20)}).encode()
    odd_sizes = b'{"url": "%s", "status": "success", "width": NaN, "height": -5, "original_width": -1e309}' % (
        urls[7].encode())
    members = (download_sample("000000000", urls[0], jpeg_bytes((200, 200)))
               + download_sample(f"../../escape-{UNIQUE}", urls[1], jpeg_bytes((200, 200)))
               + download_sample(f"/tmp/absolute-{UNIQUE}", urls[2], jpeg_bytes((200, 200)))
               + [link("000000003.jpg", "/etc/passwd")] + download_sample("000000003", urls[3], b"")[1:]
               + [link("000000004.jpg", "../secret.jpg", tarfile.LNKTYPE)]
               + download_sample("000000004", urls[4], b"")[1:]
               + download_sample("000000005", urls[5], HTML)
               + [("000000006.jpg", jpeg_bytes((200, 200))), ("000000006.json", oversized)]
               + [("000000007.jpg", jpeg_bytes((200, 200))), ("000000007.json", odd_sizes)])
    write_tar(folder / "00000.tar", members)
    rows = [{"url": u, "key": f"{i:09d}", "status": "success", "error_message": None} for i, u in enumerate(urls)]
    pq.write_table(pa.Table.from_pylist(rows), folder / "00000.parquet")
    return urls


def obelics_hostile_download(tmp: Path, host: LoopbackHost) -> list[str]:
    urls = hostile_download(tmp / "download")
    write_obelics(tmp / "in", "0.parquet", [obelics_row(f"doc{i}", [u]) for i, u in enumerate(urls)])
    return ["--input", str(tmp / "in"), "--steps", "structure,images", "--images", str(tmp / "download")]


def obelics_html_downloaded(tmp: Path, host: LoopbackHost) -> list[str]:
    write_obelics(tmp / "in", "0.parquet", [obelics_row("good", [host.url("/ok.jpg")]),
                                            obelics_row("html", [host.url("/page.jpg")])])
    return ["--input", str(tmp / "in"), "--steps", "structure,images", "--allow-private-hosts", "all"]


def obelics_spawning_token(tmp: Path, host: LoopbackHost) -> list[str]:
    """The Spawning API stand-in on loopback, asked with the token from the environment."""
    api = SpawningStandIn({"https://img.example/out.jpg"}, token=SPAWNING_TOKEN).__enter__()
    host.closers.append(lambda: api.__exit__(None, None, None))
    write_obelics(tmp / "in", "0.parquet", [obelics_row("kept", ["https://img.example/in.jpg"]),
                                            obelics_row("out", ["https://img.example/out.jpg"])])
    return ["--input", str(tmp / "in"), "--steps", "structure,optout", "--spawning-url", api.url("/")]


def good_obelics(tmp: Path) -> None:
    write_obelics(tmp / "in", "0-good.parquet", [obelics_row("good", ["https://img.example/a.jpg"])] * 3)


def obelics_truncated(tmp: Path, host: LoopbackHost) -> list[str]:
    good_obelics(tmp)
    write_obelics(tmp / "in", "1-cut.parquet", [obelics_row(f"d{i}", ["https://img.example/a.jpg"])
                                                for i in range(50)])
    data = (tmp / "in" / "1-cut.parquet").read_bytes()
    (tmp / "in" / "1-cut.parquet").write_bytes(data[:len(data) // 2])
    return ["--input", str(tmp / "in"), "--steps", "structure"]


def obelics_empty_shards(tmp: Path, host: LoopbackHost) -> list[str]:
    good_obelics(tmp)
    write_obelics(tmp / "in", "1-empty.parquet", [])
    return ["--input", str(tmp / "in"), "--steps", "structure"]


def obelics_zero_bytes(tmp: Path, host: LoopbackHost) -> list[str]:
    good_obelics(tmp)
    (tmp / "in" / "1-nothing.parquet").write_bytes(b"")
    return ["--input", str(tmp / "in"), "--steps", "structure"]


def pairs_file(folder: Path, name: str, urls: list[str], captions: list, width=None, height=None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    n = len(urls)
    table = pa.table({"URL": urls, "top_caption": pa.array(captions, type=pa.string()),
                      "WIDTH": pa.array(width or [200.0] * n, type=pa.float64()),
                      "HEIGHT": pa.array(height or [200.0] * n, type=pa.float64()), "punsafe": [0.01] * n})
    pq.write_table(table, folder / name)


def pairs_sizes(tmp: Path, host: LoopbackHost) -> list[str]:
    """Declared sizes that are NaN, negative, infinite or zero: the step judges decoded images, the rows come back
    unchanged."""
    urls = [host.url(f"/ok-{i}.jpg") for i in range(5)]
    sizes = [math.nan, -200.0, math.inf, 0.0, -1e308]
    pairs_file(tmp / "in", "a.parquet", urls, ["a caption"] * 5, width=sizes, height=sizes[::-1])
    return ["--input", str(tmp / "in"), "--steps", "images,min_size", "--allow-private-hosts", "all"]


def check_sizes_come_back(output: Path) -> None:
    rows = pq.read_table(output / "data" / "00000.parquet").to_pylist()
    assert len(rows) == 5
    assert math.isnan(rows[0]["WIDTH"]) and [r["WIDTH"] for r in rows[1:]] == [-200.0, math.inf, 0.0, -1e308]


def pairs_non_utf8(tmp: Path, host: LoopbackHost) -> list[str]:
    """A caption that is not UTF-8 (written without validation): its row is removed and counted."""
    captions = pa.array([b"fine", b"caf\xe9 \xff\xfe", b"fine too"], type=pa.binary()).view(pa.string())
    urls = ["https://img.example/1.jpg", "https://img.example/2.jpg", "https://img.example/3.jpg"]
    (tmp / "in").mkdir()
    pq.write_table(pa.table({"URL": urls, "top_caption": captions, "punsafe": [0.01] * 3}), tmp / "in" / "a.parquet")
    return ["--input", str(tmp / "in"), "--steps", "nsfw"]


def pairs_truncated(tmp: Path, host: LoopbackHost) -> list[str]:
    pairs_file(tmp / "in", "0.parquet", ["https://img.example/1.jpg"], ["ok"])
    pairs_file(tmp / "in", "1.parquet", [f"https://img.example/{i}.jpg" for i in range(500)], ["a caption"] * 500)
    data = (tmp / "in" / "1.parquet").read_bytes()
    (tmp / "in" / "1.parquet").write_bytes(data[:len(data) - 40])
    return ["--input", str(tmp / "in"), "--steps", "nsfw"]


def pairs_corrupt_pages(tmp: Path, host: LoopbackHost) -> list[str]:
    """A footer that reads but data pages overwritten with garbage: that shard fails with its error, the good
    shard is finished and kept."""
    pairs_file(tmp / "in", "0.parquet", ["https://img.example/1.jpg"], ["ok"])
    pairs_file(tmp / "in", "1.parquet", [f"https://img.example/{i}.jpg" for i in range(2000)],
               [f"caption number {i}" for i in range(2000)])
    path = tmp / "in" / "1.parquet"
    data = bytearray(path.read_bytes())
    footer = int.from_bytes(data[-8:-4], "little") + 8
    data[4:len(data) - footer] = os.urandom(len(data) - footer - 4)
    path.write_bytes(bytes(data))
    return ["--input", str(tmp / "in"), "--steps", "nsfw"]


def check_good_shard_finished(output: Path) -> None:
    assert pq.read_metadata(output / "data" / "00000.parquet").num_rows == 1
    assert not (output / "data" / "00001.parquet").exists()


def pairs_hostile_download(tmp: Path, host: LoopbackHost) -> list[str]:
    urls = hostile_download(tmp / "download")
    pairs_file(tmp / "in", "a.parquet", urls, ["a caption"] * len(urls))
    return ["--input", str(tmp / "in"), "--steps", "images,min_size", "--images", str(tmp / "download")]


def simple_pdf(page_count_declared: int | None = None) -> bytes:
    """A one-page PDF; `page_count_declared` replaces its page tree's /Count (a page tree that lies)."""
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>",
               b"<< /Type /Pages /Kids [3 0 R] /Count %d >>" % (page_count_declared or 1),
               b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R >>",
               b"<< /Length 0 >>\nstream\n\nendstream"]
    out, offsets = io.BytesIO(), []
    out.write(b"%PDF-1.4\n")
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n%s\nendobj\n" % (number, body))
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    out.write(b"".join(b"%010d 00000 n \n" % o for o in offsets))
    out.write(b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref))
    return out.getvalue()


GOOD_PDF_TEXT = [["A page with enough words on it to be kept by the text rule"]]


def pdfa_hostile_pdfs(tmp: Path, host: LoopbackHost) -> list[str]:
    good = make_pdf(GOOD_PDF_TEXT)
    members = [("good.pdf", good),
               ("encrypted.pdf", make_pdf(GOOD_PDF_TEXT, encrypted=True)),
               ("truncated.pdf", good[:len(good) // 3]),
               ("million.pdf", simple_pdf(page_count_declared=1_000_000)),
               ("html.pdf", HTML),
               ("badjson.pdf", good), ("badjson.json", b'{"pages": [{"lines": {"text": ["caf\xe9 \xff"]}}]}'),
               (f"/tmp/absolute-{UNIQUE}.pdf", good), (f"../escape-{UNIQUE}.pdf", good)]
    write_tar(tmp / "in" / "0.tar", members)
    return ["--input", str(tmp / "in"), "--steps", "pages,min_text"]


def pdfa_lying_page_tree(tmp: Path, host: LoopbackHost) -> list[str]:
    """A 1-page PDF whose page tree declares 50,000 pages (under the reader's 100,000 ceiling): believed, it would
    become 50,000 page records from 500 bytes."""
    write_tar(tmp / "in" / "0.tar", [("good.pdf", make_pdf(GOOD_PDF_TEXT)), ("liar.pdf", simple_pdf(50_000)),
                                     ("three.pdf", simple_pdf(3))])
    return ["--input", str(tmp / "in"), "--steps", "pages,min_text"]


def pdfa_duplicate_keys(tmp: Path, host: LoopbackHost) -> list[str]:
    """The same key twice, apart and in a row: each PDF is accounted for, and no kept key is written twice."""
    one, two = make_pdf(GOOD_PDF_TEXT), make_pdf([["Another page with enough words on it to be kept here"]])
    write_tar(tmp / "in" / "0.tar", [("a.pdf", one), ("b.pdf", two), ("a.pdf", two), ("c.pdf", one), ("c.pdf", two)])
    return ["--input", str(tmp / "in"), "--steps", "pages,min_text"]


def check_unique_kept_names(output: Path) -> None:
    with tarfile.open(output / "data" / "00000.tar") as tar:
        names = tar.getnames()
    assert names == ["a_00000.jpg", "a_00000.json", "b_00000.jpg", "b_00000.json"]
    with tarfile.open(output / "removed" / "00000.tar") as tar:
        causes = [json.load(tar.extractfile(m))["unreadable"] for m in tar if m.name.endswith(".json")]
    assert causes == ["duplicate_key", "duplicate_member"]


def pdfa_empty_tars(tmp: Path, host: LoopbackHost) -> list[str]:
    write_tar(tmp / "in" / "0.tar", [("good.pdf", make_pdf(GOOD_PDF_TEXT))])
    write_tar(tmp / "in" / "1.tar", [])
    return ["--input", str(tmp / "in"), "--steps", "pages,min_text"]


def pdfa_zero_bytes(tmp: Path, host: LoopbackHost) -> list[str]:
    write_tar(tmp / "in" / "0.tar", [("good.pdf", make_pdf(GOOD_PDF_TEXT))])
    (tmp / "in" / "1.tar").write_bytes(b"")
    return ["--input", str(tmp / "in"), "--steps", "pages,min_text"]


CASES = {
    "obelics/img2dataset tar: ../, absolute, links, HTML as .jpg": Case(
        "pipelines.obelics", obelics_hostile_download,
        removed={"images/no_image_left": 4}, images={"ok": 4, "missing": 3, "not_an_image": 1}),
    "obelics/download: HTML served as image/jpeg": Case(
        "pipelines.obelics", obelics_html_downloaded, removed={"images/no_image_left": 1},
        images={"ok": 1, "not_an_image": 1}),
    "obelics/Spawning token only in the request": Case(
        "pipelines.obelics", obelics_spawning_token, removed={"optout/all_images_opted_out": 1}),
    "obelics/parquet truncated mid-file": Case(
        "pipelines.obelics", obelics_truncated, status=2, error=("1-cut.parquet", "not a readable parquet")),
    "obelics/empty shard": Case("pipelines.obelics", obelics_empty_shards),
    "obelics/zero-byte shard": Case(
        "pipelines.obelics", obelics_zero_bytes, status=2, error=("1-nothing.parquet", "not a readable parquet")),
    "laion_coco/NaN, negative, infinite sizes": Case(
        "pipelines.laion_coco", pairs_sizes, images={"ok": 5}, check=check_sizes_come_back),
    "laion_coco/caption not UTF-8": Case("pipelines.laion_coco", pairs_non_utf8, removed={"read/unreadable_row": 1}),
    "laion_coco/parquet truncated mid-file": Case(
        "pipelines.laion_coco", pairs_truncated, status=2, error=("1.parquet", "not a readable parquet")),
    "laion_coco/data pages corrupt behind a good footer": Case(
        "pipelines.laion_coco", pairs_corrupt_pages, status=1, error=("shard 00001 failed",),
        check=check_good_shard_finished),
    "laion_coco/img2dataset tar: ../, absolute, links, HTML as .jpg": Case(
        "pipelines.laion_coco", pairs_hostile_download,
        removed={"images/no_image_left": 4}, images={"ok": 4, "missing": 3, "not_an_image": 1}),
    "pdfa/encrypted, truncated, million-page, HTML PDFs; non-UTF-8 JSON; ../ and absolute names": Case(
        "pipelines.pdfa", pdfa_hostile_pdfs,
        removed={"pages/encrypted": 1, "pages/corrupt": 3,  # the million-page PDF is one of the corrupt
                 "read/unreadable_row": 2}),
    "pdfa/a page tree that declares more pages than it has": Case(
        "pipelines.pdfa", pdfa_lying_page_tree, removed={"pages/corrupt": 2}),
    "pdfa/duplicate keys": Case("pipelines.pdfa", pdfa_duplicate_keys, removed={"read/unreadable_row": 2},
                                check=check_unique_kept_names),
    "pdfa/empty tar": Case("pipelines.pdfa", pdfa_empty_tars),
    "pdfa/zero-byte tar": Case("pipelines.pdfa", pdfa_zero_bytes, status=2, error=("1.tar", "not a readable tar")),
}


# ---------------------------------------------------------------- the checks every case shares


def snapshot(folder: Path, skip: Path) -> dict[str, int]:
    return {str(p): p.stat().st_size for p in folder.rglob("*") if not p.is_relative_to(skip)}


def written_anywhere(text: str, output: Path, result: subprocess.CompletedProcess) -> list[str]:
    places = [name for name, stream in (("stdout", result.stdout), ("stderr", result.stderr)) if text in stream]
    needle = text.encode()
    return places + [str(p) for p in output.rglob("*") if p.is_file() and needle in p.read_bytes()]


@pytest.fixture(scope="module")
def host():
    server = LoopbackHost()
    server.closers = []
    yield server
    for close in server.closers:
        close()
    server.close()


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_input(tmp_path, host, name):
    case = CASES[name]
    flags = case.build(tmp_path, host)
    output = tmp_path / "out"
    before = snapshot(tmp_path, output)
    outside = [Path(f"/tmp/absolute-{UNIQUE}.jpg"), Path(f"/tmp/absolute-{UNIQUE}.pdf")]
    result = run_command(case.module, *flags, "--output", str(output), "--workers", "2",
                         env={"HF_TOKEN": HF_TOKEN, "SPAWNING_TOKEN": SPAWNING_TOKEN}, timeout=300)
    log = result.stdout + result.stderr
    assert result.returncode == case.status, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    assert snapshot(tmp_path, output) == before, "a file was written outside the output folder"
    assert not any(p.exists() for p in outside) and not list(tmp_path.parent.glob(f"escape-{UNIQUE}*"))
    for token in (HF_TOKEN, SPAWNING_TOKEN):
        assert not written_anywhere(token, output, result)
    if case.error:
        lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert lines and all(word in lines[0] for word in case.error), result.stderr[-3000:]
        if case.status == 2:
            assert len(lines) == 1, result.stderr[-3000:]
            assert not (output / "data").exists() or not any((output / "data").iterdir())
    if case.status == 0:
        summary = json.loads((output / "summary.json").read_text())
        total = summary["total"]
        assert total["removed"] == case.removed
        assert total["input"] == total["kept"] + sum(total["removed"].values())
        assert total.get("images", {}) == case.images
        assert not list(output.rglob("*.tmp"))
    if case.check:
        case.check(output)


# ---------------------------------------------------------------- exit codes: the same for the same outcome

# Every command: a missing input is exit status 2 with one `error:` line naming it, no traceback, nothing created.
# (0: done; 1: some shards or checks failed; 2: usage or unreadable input; 3: pending (status) or upload to resume
# (push); 130: interrupted.) A new command is a new row.
MISSING_INPUT = {
    "pipelines.obelics": ["--input", "{missing}", "--output", "{output}"],
    "pipelines.laion_coco": ["--input", "{missing}", "--output", "{output}"],
    "pipelines.pdfa": ["--input", "{missing}", "--output", "{output}"],
    "pipelines.mixture": ["--stage", "1", "--source", "obelics={missing}", "--output", "{output}"],
    "pipelines.cauldron": ["--source", "{missing}", "--output", "{output}"],
    "mixtures.validate": ["{missing}"],
    "pipelines.push": ["{missing}", "--repo-id", "org/name"],
    "pipelines.status": ["{missing}"],
    "filters.decontam": ["scan", "--index", "{missing}", "{missing}"],
    "trainer.train": ["--data", "{missing}", "--output", "{output}"],
}


@pytest.mark.parametrize("module", list(MISSING_INPUT))
def test_a_missing_input_is_one_line_and_status_2(tmp_path, module):
    missing, output = tmp_path / "no-such-input", tmp_path / "out"
    args = [a.format(missing=missing, output=output) for a in MISSING_INPUT[module]]
    result = run_command(module, *args, env={"HF_TOKEN": HF_TOKEN, "SPAWNING_TOKEN": SPAWNING_TOKEN}, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "no-such-input" in lines[0], result.stderr
    assert not output.exists() and sorted(p.name for p in tmp_path.iterdir()) == []
    assert HF_TOKEN not in result.stdout + result.stderr
