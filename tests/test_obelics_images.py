"""`pipelines.obelics` downloading from a real image host on loopback, after the opt-out step."""

from __future__ import annotations

import io
import json
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pipelines.obelics_format import OBELICS_SCHEMA
from tests.conftest import run_command
from tests.http_servers import ImageHost, SpawningStandIn


def row(doc: str, urls: list[str]) -> dict:
    texts, images, metadata = [], [], []
    for url in urls:
        texts += [f"A paragraph of {doc}.", None]
        images += [None, url]
        metadata += [None, {"src": url}]
    return {"images": images, "texts": texts, "metadata": json.dumps(metadata),
            "general_metadata": json.dumps({"url": f"https://site.example/{doc}"})}


def test_download_after_optout_with_statuses_and_stored_images(tmp_path):
    with ImageHost(stall_seconds=1.5) as host, SpawningStandIn(set()) as api:
        docs = {
            "good": [host.url("/ok-1.jpg"), host.url("/ok-2.jpg")],
            "mixed": [host.url("/ok-3.jpg"), host.url("/noai.jpg"), host.url("/truncated.jpg")],
            "all-bad": [host.url("/bomb.png"), host.url("/stall.jpg"), host.url("/redirect-to-localhost")],
            "opted": [host.url("/ok-opted.jpg")],
        }
        api.opted_out = {host.url("/ok-opted.jpg")}
        source = tmp_path / "in"
        source.mkdir()
        pq.write_table(pa.Table.from_pylist([row(d, u) for d, u in docs.items()], schema=OBELICS_SCHEMA),
                       source / "0.parquet")
        result = run_command(
            "pipelines.obelics", "--input", str(source), "--output", str(tmp_path / "out"),
            "--steps", "structure,optout,images",
            "--spawning-url", api.url("/q"), "--allow-private-hosts", f"127.0.0.1:{host.port}",
            "--image-timeout", "1", "--image-max-side", "32", env={"SPAWNING_TOKEN": api.token})
        assert result.returncode == 0, result.stderr[-3000:]
        assert "/ok-opted.jpg" not in host.hits  # opted-out images are never fetched

    summary = json.loads((tmp_path / "out" / "summary.json").read_text())["total"]
    assert summary["removed"] == {"images/no_image_left": 1, "optout/all_images_opted_out": 1}
    assert summary["images"] == {"blocked_by_header": 1, "corrupt": 1, "ok": 3, "private_address": 1,
                                 "timeout": 1, "too_many_pixels": 1}
    kept = pq.read_table(tmp_path / "out" / "data" / "00000.parquet").to_pylist()
    assert [json.loads(r["general_metadata"])["url"][-5:] for r in kept] == ["/good", "mixed"]
    mixed_meta = [m for m in json.loads(kept[1]["metadata"]) if m]
    assert len(mixed_meta) == 1 and mixed_meta[0]["original_width"] == 64 and mixed_meta[0]["format"] == "jpeg"
    with tarfile.open(tmp_path / "out" / "images" / "00000.tar") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar}
    urls = {json.loads(v)["url"] for k, v in members.items() if k.endswith(".json")}
    assert urls == {host.url("/ok-1.jpg"), host.url("/ok-2.jpg"), host.url("/ok-3.jpg")}
    sizes = {Image.open(io.BytesIO(v)).size for k, v in members.items() if k.endswith(".jpg")}
    assert sizes == {(32, 24)}  # 64x48 stored downscaled to a 32 px longest side
