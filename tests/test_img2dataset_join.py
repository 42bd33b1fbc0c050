"""Joining documents with an img2dataset download built here, in the format img2dataset writes."""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import pickle
import tarfile
import threading
import time
import tracemalloc

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from filters import img2dataset_index as i2d
from filters.images import Img2DatasetSource
from filters.img2dataset_index import Img2DatasetIndex, scan_tar
from tests.http_servers import jpeg_bytes


def write_download(folder, shard: int, samples: list[tuple[str, str, bytes | None]]) -> None:
    """samples: (url, status, image bytes); failures go only to the parquet, as in img2dataset."""
    rows, members = [], []
    for index, (url, status, data) in enumerate(samples):
        key = f"{shard:05d}{index:04d}"
        row = {"url": url, "key": key, "status": status,
               "error_message": None if status == "success" else "HTTP Error 404: Not Found"}
        rows.append(row)
        if status == "success":
            members += [(f"{key}.jpg", data), (f"{key}.json", json.dumps(row).encode()), (f"{key}.txt", b"a caption")]
    write_tar(folder / f"{shard:05d}.tar", members)
    pq.write_table(pa.Table.from_pylist(rows), folder / f"{shard:05d}.parquet")


def write_tar(path, members, format=tarfile.PAX_FORMAT) -> None:
    """members: (name, bytes) for files, or (TarInfo, None) for links and devices."""
    with tarfile.open(path, "w", format=format) as tar:
        for name, payload in members:
            if isinstance(name, tarfile.TarInfo):
                tar.addfile(name)
                continue
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))


def sample(key: str, url, image: bytes = b"\xff\xd8 an image") -> list[tuple[str, bytes]]:
    return [(f"{key}.jpg", image), (f"{key}.json", json.dumps({"url": url, "status": "success"}).encode())]


def new_index(tmp_path, max_bytes: int = 20 << 20, **options) -> Img2DatasetIndex:
    return Img2DatasetIndex(str(tmp_path / "download"), str(tmp_path / "cache"), max_bytes, **options)


@pytest.fixture
def download(tmp_path):
    (tmp_path / "download").mkdir()
    return tmp_path / "download"


def test_join_covers_success_failure_missing_and_truncated_tar(tmp_path, download):
    red, blue = jpeg_bytes(color=(255, 0, 0)), jpeg_bytes(color=(0, 0, 255))
    write_download(download, 0, [("https://a.example/red.jpg", "success", red),
                                 ("https://a.example/gone.jpg", "failed_to_download", None)])
    write_download(download, 1, [("https://a.example/blue.jpg", "success", blue),
                                 ("https://a.example/last.jpg", "success", jpeg_bytes((300, 300)))])
    tar = download / "00001.tar"
    whole = tar.read_bytes()
    tar.write_bytes(whole[:2048 + 512])  # cut inside the last image

    index = new_index(tmp_path)
    assert index.check() is None
    source = Img2DatasetSource(pickle.loads(pickle.dumps(index)))  # as every datatrove task gets it
    assert source.get("https://a.example/red.jpg").image.data == red
    assert source.get("https://a.example/blue.jpg").image.data == blue
    failed = source.get("https://a.example/gone.jpg")
    assert (failed.status, failed.error) == ("download_failed", "HTTP Error 404: Not Found")
    assert source.get("https://a.example/never-seen.jpg").status == "missing"
    assert source.get("https://a.example/last.jpg").status == "missing"  # truncated: never served as an image
    report = source.index.report()
    assert (report.tars, report.images, report.failed_rows) == (2, 2, 1)
    assert report.counts == {"truncated_or_corrupt_tar": 1} and "00001.tar" in report.problems[0]

    tar.write_bytes(whole)  # the shard is downloaded again: its part is indexed again, the other is not
    os.utime(tar, ns=(time.time_ns(), time.time_ns() + 10**9))
    again = new_index(tmp_path)
    assert again.lookup("https://a.example/last.jpg")[0] == "ok"
    assert again.built == ["00001.part", "b1-0.bucket"]


def test_malformed_sidecars_skip_their_image_only_and_are_counted(tmp_path, download):
    """Before: a JSON list, a list or dict url and deep nesting crashed the build; invalid UTF-8 stopped the tar."""
    bad = {"json_list": b"[1, 2]", "url_list": b'{"url": ["x"]}', "url_dict": b'{"url": {"a": 1}}',
           "deep": b"[" * 100_000, "bad_utf8": b'{"url": "\xff\xfe"}', "not_success": b'{"url": "u", "status": "x"}'}
    members = sample("000000000", "https://a.example/first.jpg")
    for number, sidecar in enumerate(bad.values(), start=1):
        members += [(f"00000000{number}.jpg", b"img"), (f"00000000{number}.json", sidecar)]
    members += [("000000008.jpg", b"no sidecar"), ("000000008.txt", b"caption")]
    members += [("000000009.jpg", b"big sidecar"), ("000000009.json", b" " * (i2d.SIDECAR_MAX_BYTES + 1))]
    members += sample("000000010", "https://a.example/\udcff-lone-surrogate.jpg", b"surrogate")
    members += sample("000000011", "https://a.example/last.jpg", b"last")
    write_tar(download / "00000.tar", members)

    index = new_index(tmp_path)
    assert index.lookup("https://a.example/first.jpg")[0] == "ok"
    assert index.lookup("https://a.example/last.jpg") == ("ok", b"last", "")
    assert index.lookup("https://a.example/\udcff-lone-surrogate.jpg") == ("ok", b"surrogate", "")
    report = index.report()
    assert report.images == 3
    assert report.counts == {"bad_sidecar": 5, "sidecar_not_success": 1, "no_sidecar": 1, "sidecar_too_large": 1}
    assert any("000000004.jpg" in line and "JSON" in line for line in report.problems)  # the deep one, by name


def test_members_over_max_bytes_are_never_read(tmp_path, download):
    """Before: the whole member was read, whatever max_bytes said (a 64 MiB image cost 64 MiB)."""
    huge = 64 << 20
    write_tar(download / "00000.tar", sample("000000000", "https://a.example/huge.jpg", bytes(huge))
              + [("000000001.jpg", b"img"), ("000000001.json", b"{" + bytes(8 << 20) + b"}")]
              + sample("000000002", "https://a.example/small.jpg", b"small"))
    index = new_index(tmp_path, max_bytes=1 << 20)
    tracemalloc.start()
    try:
        assert index.lookup("https://a.example/huge.jpg") == (
            "too_large", None, f"{huge} bytes in 00000.tar, over the {1 << 20}-byte limit")
        assert index.lookup("https://a.example/small.jpg") == ("ok", b"small", "")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, f"{peak} bytes allocated"
    assert index.report().counts == {"sidecar_too_large": 1}


def test_links_and_hostile_names_never_read_outside_the_tar(tmp_path, download):
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(b"outside the tar")
    symlink = tarfile.TarInfo("000000002.jpg")
    symlink.type, symlink.linkname = tarfile.SYMTYPE, str(secret)
    hardlink = tarfile.TarInfo("000000003.jpg")
    hardlink.type, hardlink.linkname = tarfile.LNKTYPE, "../secret.jpg"
    device = tarfile.TarInfo("000000004.jpg")
    device.type = tarfile.CHRTYPE
    write_tar(download / "00000.tar",
              sample("../../000000000", "https://a.example/dotdot.jpg", b"dotdot")
              + sample("/etc/000000001", "https://a.example/absolute.jpg", b"absolute")
              + [(symlink, None)] + sample("000000002", "https://a.example/symlink.jpg")[1:]
              + [(hardlink, None)] + sample("000000003", "https://a.example/hardlink.jpg")[1:]
              + [(device, None)] + sample("000000004", "https://a.example/device.jpg")[1:])
    index = new_index(tmp_path)
    assert index.lookup("https://a.example/dotdot.jpg") == ("ok", b"dotdot", "")  # bytes of the tar itself
    assert index.lookup("https://a.example/absolute.jpg") == ("ok", b"absolute", "")
    for name in ("symlink", "hardlink", "device"):
        assert index.lookup(f"https://a.example/{name}.jpg")[0] == "missing"
    assert index.report().counts == {"not_a_file": 3}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "download", "secret.jpg"]


@pytest.mark.parametrize("format", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_scanner_agrees_with_tarfile(tmp_path, format):
    names = ["a.jpg", "dir/" * 30 + "long.json", "b.txt", "empty.json"]
    if format != tarfile.USTAR_FORMAT:
        names += ["x" * 150 + ".jpg", "näme-ünicode.jpg"]
    path = tmp_path / "t.tar"
    write_tar(path, [(name, os.urandom(n * 300)) for n, name in enumerate(names)], format=format)
    with tarfile.open(path) as tar:
        expected = [(m.name, m.offset_data, m.size, m.isreg()) for m in tar]
    with open(path, "rb") as f:
        found = [(m.name, m.offset, m.size, m.is_file) for m in scan_tar(f, path.stat().st_size)]
    assert found == expected


def test_corrupt_header_or_parquet_keeps_what_can_be_read(tmp_path, download):
    write_download(download, 0, [(f"https://a.example/{n}.jpg", "success", b"img") for n in range(3)]
                   + [("https://a.example/failed.jpg", "failed_to_download", None)])
    tar = bytearray((download / "00000.tar").read_bytes())
    third = tar.index(b"000000002.jpg")
    tar[third + 148:third + 156] = b"0000000\0"  # the third sample's header checksum
    (download / "00000.tar").write_bytes(bytes(tar))
    write_download(download, 1, [("https://a.example/other.jpg", "success", b"other"),
                                 ("https://a.example/other-failed.jpg", "failed_to_download", None)])
    pq.write_table(pa.table({"url": [1, 2], "status": ["x", "y"]}), download / "00001.parquet")  # url not a string
    write_tar(download / "00002.tar", sample("000200000", "https://a.example/two.jpg"))
    (download / "00002.parquet").write_bytes(b"PAR1 not really")

    index = new_index(tmp_path)
    assert [index.lookup(f"https://a.example/{n}.jpg")[0] for n in range(3)] == ["ok", "ok", "missing"]
    assert index.lookup("https://a.example/failed.jpg")[0] == "download_failed"
    assert index.lookup("https://a.example/other.jpg")[0] == "ok"
    assert index.lookup("https://a.example/two.jpg")[0] == "ok"
    assert index.report().counts == {"truncated_or_corrupt_tar": 1, "unreadable_parquet": 2}


def test_many_buckets_and_duplicate_urls(tmp_path, download):
    for shard in range(3):
        write_download(download, shard, [(f"https://a.example/{shard}/{n}.jpg", "success", f"{shard}/{n}".encode())
                                         for n in range(300)]
                       + [(f"https://a.example/{shard}/failed.jpg", "failed_to_download", None)])
    write_download(download, 3, [("https://a.example/0/1.jpg", "success", b"a second copy"),  # first shard wins
                                 ("https://a.example/0/2.jpg", "failed_to_download", None),  # an image wins
                                 ("https://a.example/2/failed.jpg", "success", b"retried")])
    index = new_index(tmp_path, entries_per_bucket=64)
    assert index.report().images == 902  # images in the tars, a url in two tars counted twice
    assert sum(name.endswith(".bucket") for name in index.built) == 16
    for shard in range(3):
        for n in range(300):
            assert index.lookup(f"https://a.example/{shard}/{n}.jpg") == ("ok", f"{shard}/{n}".encode(), "")
    assert index.lookup("https://a.example/0/failed.jpg")[0] == "download_failed"
    assert index.lookup("https://a.example/2/failed.jpg") == ("ok", b"retried", "")


def test_index_files_are_deterministic(tmp_path, download):
    for shard in range(2):
        write_download(download, shard, [(f"https://a.example/{shard}/{n}.jpg", status, b"img")
                                         for n, status in enumerate(["success", "failed_to_download"] * 20)])
    first = Img2DatasetIndex(str(download), str(tmp_path / "one"), entries_per_bucket=32)
    second = Img2DatasetIndex(str(download), str(tmp_path / "two"), entries_per_bucket=32)
    first.build(), second.build()
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*") if p.is_file())
    assert len(files) == 2 + 4 + 1  # parts, buckets, completion marker; no temporary or claim file left
    for name in files:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name


def _build_and_look_up(download, cache, urls, barrier, results):
    index = Img2DatasetIndex(download, cache)
    barrier.wait()
    results.put((index.built, [index.lookup(url) for url in urls]))


def test_tasks_build_different_parts_at_once(tmp_path, download):
    urls = []
    for shard in range(8):
        samples = [(f"https://a.example/{shard}/{n}.jpg", "success", b"i%d" % n) for n in range(500)]
        write_download(download, shard, samples)
        urls += [url for url, _, _ in samples[::50]]
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(2), context.Queue()
    workers = [context.Process(target=_build_and_look_up, args=(str(download), str(tmp_path / "cache"), urls,
                                                                  barrier, results)) for _ in range(2)]
    for worker in workers:
        worker.start()
    (built_a, found_a), (built_b, found_b) = results.get(timeout=60), results.get(timeout=60)
    for worker in workers:
        worker.join(timeout=10)
    assert not set(built_a) & set(built_b)  # claims: no part built twice
    assert sorted(built_a + built_b) == sorted([f"{s:05d}.part" for s in range(8)] + ["b1-0.bucket"])
    assert found_a == found_b == [("ok", b"i%d" % (n * 50), "") for _ in range(8) for n in range(10)]


def test_waits_for_a_part_another_task_is_building(tmp_path, download):
    for shard in range(3):
        write_download(download, shard, [(f"https://a.example/{shard}.jpg", "success", b"img")])
    (tmp_path / "cache" / "parts").mkdir(parents=True)
    claim = tmp_path / "cache" / "parts" / "00001.part.claim"
    claim.touch()

    def other_task():  # finishes the part it claimed a moment later
        time.sleep(0.5)
        shard = i2d._list_shards(download)[1]
        i2d._build_part(download, shard, tmp_path / "cache" / "parts" / "00001.part", lambda: None)
        claim.unlink()

    helper = threading.Thread(target=other_task)
    helper.start()
    index = new_index(tmp_path, claim_timeout=30)
    assert index.lookup("https://a.example/1.jpg")[0] == "ok"
    helper.join()
    assert "00001.part" not in index.built and {"00000.part", "00002.part"} <= set(index.built)


def test_a_killed_builder_blocks_nobody(tmp_path, download):
    write_download(download, 0, [("https://a.example/0.jpg", "success", b"img")])
    (tmp_path / "cache" / "parts").mkdir(parents=True)
    (tmp_path / "cache" / "parts" / "00000.part.claim").touch()  # its builder was killed just after
    index = new_index(tmp_path, claim_timeout=1.0)
    started = time.monotonic()
    assert index.lookup("https://a.example/0.jpg")[0] == "ok"
    assert 0.9 < time.monotonic() - started < 10 and "00000.part" in index.built


def test_check_is_a_one_line_preflight(tmp_path, download):
    assert new_index(tmp_path).check() == f"{download}: no .tar shards (expected an img2dataset webdataset download)"
    missing = Img2DatasetIndex(str(tmp_path / "nowhere"), str(tmp_path / "cache"), 1)
    assert missing.check() == f"{tmp_path / 'nowhere'}: not a folder"
    with pytest.raises(i2d.Img2DatasetError, match="not a folder"):
        missing.lookup("https://a.example/x.jpg")
    write_download(download, 0, [("https://a.example/0.jpg", "success", b"img")])
    (tmp_path / "file").write_text("")
    assert "cannot create" in Img2DatasetIndex(str(download), str(tmp_path / "file" / "cache"), 1).check()
    index = new_index(tmp_path)
    assert index.check() is None and not index.is_current()
    index.lookup("https://a.example/0.jpg")
    assert index.is_current() and len(pickle.dumps(index)) < 400  # nothing of the opened index in the pickle
