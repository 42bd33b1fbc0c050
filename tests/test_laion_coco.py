"""The LAION-COCO pairs pipeline through the real `python -m pipelines.laion_coco`, on the shipped sample and on
generated pair files: rows written back unchanged in each file's own schema, sizes judged on decoded images,
the paper's 7% NSFW cut, other caption and URL columns, shards and resume, and every removal accounted for."""

from __future__ import annotations

import json
import math
import random
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datatrove.data import Document, Media, MediaType

from filters.min_size import MinImageSizeFilter
from pipelines.demo import sample_path
from tests.conftest import run_command, sample_decontam_index

SAMPLE = Path(sample_path("laion_coco"))
SAMPLE_FILES = sorted(SAMPLE.glob("*.parquet"))
CPU_STEPS = ["--optout-list", sample_path("optout.txt"), "--images", sample_path("img2dataset")]


def laion_coco(*args: str) -> subprocess.CompletedProcess:
    return run_command("pipelines.laion_coco", *args)


def same_value(a, b) -> bool:
    """Equal, with NaN equal to NaN (a NaN size must come back as NaN, not null)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


def same_rows(rows: list[dict], expected: list[dict]) -> bool:
    return len(rows) == len(expected) and all(
        r.keys() == e.keys() and all(same_value(r[k], e[k]) for k in r) for r, e in zip(rows, expected))


def assert_accounts(output: Path) -> dict:
    """summary.json adds up per shard and agrees with the kept and removed files on disk."""
    summary = json.loads((output / "summary.json").read_text())
    for name, record in summary["shards"].items():
        assert record["input"] == record["kept"] + sum(record["removed"].values()), name
        assert pq.read_metadata(output / "data" / f"{name}.parquet").num_rows == record["kept"]
        reasons: dict[str, int] = {}
        for row in pq.read_table(output / "removed" / f"{name}.parquet").to_pylist():
            key = f"{row['removed_step']}/{row['removed_reason']}"
            reasons[key] = reasons.get(key, 0) + 1
        assert reasons == record["removed"], name
    return summary


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> Path:
    """Every step on the sample, offline, with the paper's 7% NSFW cut."""
    output = tmp_path_factory.mktemp("laion") / "out"
    result = laion_coco("--input", str(SAMPLE), "--output", str(output), *CPU_STEPS,
                        "--decontam-index", sample_decontam_index(), "--nsfw-drop-top", "0.07")
    assert result.returncode == 0, result.stderr
    return output


def test_rows_come_back_unchanged_in_each_files_own_schema(full_run):
    for shard, path in enumerate(SAMPLE_FILES):
        source = pq.read_table(path)
        kept = pq.read_table(full_run / "data" / f"{shard:05d}.parquet")
        removed = pq.read_table(full_run / "removed" / f"{shard:05d}.parquet")
        assert kept.schema.equals(source.schema, check_metadata=True)
        assert removed.schema.names == source.schema.names + ["removed_step", "removed_reason", "source_file",
                                                              "source_row"]
        assert removed.select(source.schema.names).schema.equals(source.schema)
        rows = source.to_pylist()
        by_url = {row["URL"]: row for row in rows}
        assert same_rows(kept.to_pylist(), [by_url[url] for url in kept.column("URL").to_pylist()])
        for record in removed.to_pylist():
            assert record["source_file"] == path.name
            assert same_rows([{k: record[k] for k in source.schema.names}], [rows[record["source_row"]]])
        assert kept.num_rows + removed.num_rows == source.num_rows
    # the float copy keeps float sizes (NaN included), the int copy int ones
    assert pq.read_schema(full_run / "data" / "00000.parquet").field("WIDTH").type == pa.float64()
    assert pq.read_schema(full_run / "data" / "00001.parquet").field("WIDTH").type == pa.int64()
    assert pq.read_schema(full_run / "data" / "00000.parquet").field("punsafe").type == pa.float32()


def test_every_removal_is_counted(full_run):
    summary = assert_accounts(full_run)
    manifest = json.loads((full_run / "manifest.json").read_text())
    assert manifest["steps"] == ["optout", "images", "min_size", "nsfw", "decontam"]  # language: off by default
    removed = summary["total"]["removed"]
    assert summary["total"]["input"] == 80
    for reason in ("optout/all_images_opted_out", "images/no_image_left", "min_size/too_small", "nsfw/nsfw_image"):
        assert removed.get(reason, 0) > 0, reason


def test_min_size_judges_the_decoded_image_not_the_declared_size(full_run):
    kept = pq.read_table(full_run / "data" / "00000.parquet").to_pylist()
    removed = pq.read_table(full_run / "removed" / "00000.parquet").to_pylist()
    small = next(r for r in removed if r["URL"].endswith("photo_0010.jpg"))  # declared 640x480, decoded 220x147
    assert (small["WIDTH"], small["removed_step"], small["removed_reason"]) == (640.0, "min_size", "too_small")
    large = next(r for r in kept if r["URL"].endswith("photo_0001.jpg"))  # declared 120x90, decoded 249x219
    assert (large["WIDTH"], large["HEIGHT"]) == (120.0, 90.0)


def _doc(width, height) -> Document:
    media = Media(id="0", type=MediaType.IMAGE, url="https://a.example/x.jpg",
                  metadata={"original_width": width, "original_height": height, "declared_width": 1000})
    return Document(text="a caption", id="d", media=[media])


def test_min_size_rules():
    step = MinImageSizeFilter(150)
    verdicts = step.filter_batch([_doc(150, 150), _doc(149, 900), _doc(900, 149), _doc(None, None), _doc(True, 200)])
    assert verdicts == [True, (False, "too_small"), (False, "too_small"), (False, "unmeasured"),
                        (False, "unmeasured")]


def _write_pairs(path: Path, punsafe: list[float | None]) -> None:
    rows = [{"URL": f"https://img.example/{i}.jpg", "TEXT": f"alt {i}", "top_caption": f"caption {i}",
             "WIDTH": 640.0, "HEIGHT": 480.0, "punsafe": p, "hash": i} for i, p in enumerate(punsafe)]
    pq.write_table(pa.Table.from_pylist(rows), path)


def test_nsfw_drop_top_removes_the_papers_seven_percent(tmp_path):
    rng = random.Random(7)
    (tmp_path / "in").mkdir()
    for shard in range(2):  # varied scores: most safe, a long tail, a few missing
        scores = [rng.betavariate(0.6, 6) for _ in range(500)]
        scores[:3] = [None, float("nan"), None]
        _write_pairs(tmp_path / "in" / f"part-{shard:05d}.parquet", scores)
    output = tmp_path / "out"
    result = laion_coco("--input", str(tmp_path / "in"), "--output", str(output), "--steps", "nsfw",
                        "--nsfw-drop-top", "0.07")
    assert result.returncode == 0, result.stderr
    summary = assert_accounts(output)
    flagged = summary["total"]["removed"]["nsfw/nsfw_image"]
    assert abs(flagged / 994 - 0.07) <= 0.005  # of the pairs with a score
    assert summary["total"]["removed"]["nsfw/no_image_left"] == 6  # no score: removed, not passed unchecked
    assert json.loads((output / "thresholds.json").read_text())["nsfw"]["fraction"] == 0.07


def test_caption_and_url_columns(tmp_path):
    (tmp_path / "in").mkdir()
    source = pq.read_table(SAMPLE_FILES[1])
    texts = source.column("TEXT").to_pylist()
    texts[4] = None  # no alt text: unusable only when TEXT is the caption
    pq.write_table(source.set_column(1, "TEXT", pa.array(texts)), tmp_path / "in" / "part-00000.parquet")
    runs = {}
    for column in ("top_caption", "TEXT"):
        output = tmp_path / column
        result = laion_coco("--input", str(tmp_path / "in"), "--output", str(output), "--steps", "nsfw",
                            "--caption-column", column)
        assert result.returncode == 0, result.stderr
        runs[column] = assert_accounts(output)["total"]["removed"]
    assert "read/unreadable_row" not in runs["top_caption"]
    assert runs["TEXT"]["read/unreadable_row"] == 1

    # a CC3M-style file: other column names, an extra column of another type, carried as it was
    cc3m = pa.table({"image_url": ["https://img.example/1.jpg", "https://img.example/2.jpg"],
                     "caption": ["a dog on a beach", "a red bicycle"], "punsafe": [0.1, 0.9],
                     "extra": pa.array([[1, 2], None], pa.list_(pa.int32()))})
    (tmp_path / "cc3m").mkdir()
    pq.write_table(cc3m, tmp_path / "cc3m" / "train.parquet")
    output = tmp_path / "cc3m_out"
    result = laion_coco("--input", str(tmp_path / "cc3m"), "--output", str(output), "--steps", "nsfw",
                        "--url-column", "image_url", "--caption-column", "caption")
    assert result.returncode == 0, result.stderr
    kept = pq.read_table(output / "data" / "00000.parquet")
    assert kept.schema.equals(cc3m.schema) and kept.to_pylist() == cc3m.slice(0, 1).to_pylist()

    missing = laion_coco("--input", str(tmp_path / "cc3m"), "--output", str(tmp_path / "x"), "--steps", "nsfw")
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert missing.stderr.strip().splitlines()[-1].endswith("train.parquet: missing column(s) URL, top_caption")


def test_shards_resume_and_an_emptied_shard(tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    common = ["--input", str(SAMPLE), *CPU_STEPS, "--steps", "optout,images,min_size,nsfw"]
    assert laion_coco(*common, "--output", str(whole)).returncode == 0
    assert laion_coco(*common, "--output", str(split), "--shards", "1-1").returncode == 0
    assert laion_coco(*common, "--output", str(split), "--shards", "0-0").returncode == 0
    for name in ("00000.parquet", "00001.parquet"):
        assert (whole / "data" / name).read_bytes() == (split / "data" / name).read_bytes()
        # the same removal records, in the same order (the images step's download timing does not change it)
        assert same_rows(*[pq.read_table(run / "removed" / name).to_pylist() for run in (whole, split)])
    assert assert_accounts(whole) == assert_accounts(split)
    again = laion_coco(*common, "--output", str(whole))
    assert again.returncode == 0 and "already done, nothing to run" in again.stderr
    refused = laion_coco(*common, "--output", str(whole), "--min-size", "200")
    assert refused.returncode == 2 and "--min-size" in refused.stderr
    refused = laion_coco(*common, "--output", str(whole), "--caption-column", "TEXT")  # a source option
    assert refused.returncode == 2 and "was made with --caption-column top_caption; this run has TEXT" in refused.stderr

    emptied = tmp_path / "emptied"  # every pair removed: the kept file still has the input's schema
    assert laion_coco(*common, "--output", str(emptied), "--min-size", "100000").returncode == 0
    for shard, path in enumerate(SAMPLE_FILES):
        kept = pq.read_table(emptied / "data" / f"{shard:05d}.parquet")
        assert kept.num_rows == 0 and kept.schema.equals(pq.read_schema(path), check_metadata=True)
    assert_accounts(emptied)


def test_hostile_files_and_rows(tmp_path):
    (tmp_path / "in").mkdir()
    rows = [{"URL": "https://img.example/1.jpg", "top_caption": "ok", "removed_step": "x"}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in" / "a.parquet")
    result = laion_coco("--input", str(tmp_path / "in"), "--output", str(tmp_path / "o1"), "--steps", "nsfw")
    assert result.returncode == 2 and "removal records add" in result.stderr and "Traceback" not in result.stderr

    (tmp_path / "in" / "a.parquet").unlink()
    urls = ["https://img.example/1.jpg", None, "", "https://img.example/a b.jpg\nhttps://evil.example/",
            "https://img.example/5.jpg"]
    captions = ["fine", "fine", "fine", "fine", "   "]
    pq.write_table(pa.table({"URL": urls, "top_caption": captions, "punsafe": [0.1] * 5}),
                   tmp_path / "in" / "b.parquet")
    output = tmp_path / "o2"
    result = laion_coco("--input", str(tmp_path / "in"), "--output", str(output), "--steps", "nsfw")
    assert result.returncode == 0, result.stderr
    summary = assert_accounts(output)
    assert summary["total"]["kept"] == 1 and summary["total"]["removed"] == {"read/unreadable_row": 4}
    removed = pq.read_table(output / "removed" / "00000.parquet").to_pylist()
    assert [r["URL"] for r in removed] == urls[1:]  # the rows as they were, for the record


def test_language_runs_when_named(tmp_path):
    output = tmp_path / "out"
    result = laion_coco("--input", str(SAMPLE), "--output", str(output), "--steps", "language",
                        "--lang-model", sample_path("models", "tiny-lid", "model.bin"))
    assert result.returncode == 0, result.stderr
    summary = assert_accounts(output)
    assert json.loads((output / "manifest.json").read_text())["steps"] == ["language"]
    assert summary["total"]["kept"] > 0 and set(summary["total"]["removed"]) <= {"language/wrong_language",
                                                                                 "language/low_language_score"}


def test_pair_columns_must_be_text(tmp_path):
    result = laion_coco("--input", str(SAMPLE), "--output", str(tmp_path / "o"), "--steps", "nsfw",
                        "--caption-column", "WIDTH")
    assert result.returncode == 2 and "column WIDTH is double, expected text" in result.stderr
    assert not (tmp_path / "o").exists()
