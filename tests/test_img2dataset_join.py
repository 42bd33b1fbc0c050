"""Joining documents with an img2dataset download built here, in the format img2dataset writes."""

from __future__ import annotations

import io
import json
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq

from filters.images import Img2DatasetSource
from filters.img2dataset_index import Img2DatasetIndex
from tests.http_servers import jpeg_bytes


def write_download(folder, shard: int, samples: list[tuple[str, str, bytes | None]]) -> None:
    """samples: (url, status, image bytes); failures go only to the parquet, as in img2dataset."""
    rows = []
    with tarfile.open(folder / f"{shard:05d}.tar", "w") as tar:
        for index, (url, status, data) in enumerate(samples):
            key = f"{shard:05d}{index:04d}"
            row = {"url": url, "key": key, "status": status,
                   "error_message": None if status == "success" else "HTTP Error 404: Not Found"}
            rows.append(row)
            if status == "success":
                for name, payload in ((f"{key}.jpg", data), (f"{key}.json", json.dumps(row).encode()),
                                      (f"{key}.txt", b"a caption")):
                    info = tarfile.TarInfo(name)
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
    pq.write_table(pa.Table.from_pylist(rows), folder / f"{shard:05d}.parquet")


def test_join_covers_success_failure_missing_and_truncated_tar(tmp_path):
    download = tmp_path / "download"
    download.mkdir()
    red, blue = jpeg_bytes(color=(255, 0, 0)), jpeg_bytes(color=(0, 0, 255))
    write_download(download, 0, [("https://a.example/red.jpg", "success", red),
                                 ("https://a.example/gone.jpg", "failed_to_download", None)])
    write_download(download, 1, [("https://a.example/blue.jpg", "success", blue),
                                 ("https://a.example/last.jpg", "success", jpeg_bytes((300, 300)))])
    tar = download / "00001.tar"
    tar.write_bytes(tar.read_bytes()[:2048 + 512])  # cut inside the last image

    index = Img2DatasetIndex(str(download), str(tmp_path / "index.sqlite"))
    assert not index.is_current()
    report = index.build()
    assert index.is_current() and report.tars == 2 and report.failed_rows == 1
    assert any("00001.tar" in p for p in report.problems)

    source = Img2DatasetSource(index)
    assert source.get("https://a.example/red.jpg").image.data == red
    assert source.get("https://a.example/blue.jpg").image.data == blue
    failed = source.get("https://a.example/gone.jpg")
    assert (failed.status, failed.error) == ("download_failed", "HTTP Error 404: Not Found")
    assert source.get("https://a.example/never-seen.jpg").status == "missing"
    assert source.get("https://a.example/last.jpg").status != "ok"  # truncated: never served as an image

    (download / "00002.tar").write_bytes(b"")  # a new shard makes the index stale
    assert not index.is_current()
