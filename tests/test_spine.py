"""The shared spine: a pipeline is a declaration, one manifest guards an output, scores are keyed by content,
outputs go through fsspec, and our steps drop into any datatrove pipeline."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datatrove.data import Document, Media, MediaType
from PIL import Image

from pipelines.demo import sample_path
from tests.conftest import MODELS, REPO, SAMPLE_OBELICS, run_command

TINY_FALCON = f"{MODELS}/tiny-falcon"


# a new pipeline is a declaration -------------------------------------------------------------------------------
PAIRS_SCHEMA = pa.schema([("url", pa.string()), ("caption", pa.string())])


def pair_to_document(row: dict, doc_id: str) -> Document:
    return Document(text=row["caption"] or "", id=doc_id,
                    media=[Media(id=doc_id, type=MediaType.IMAGE, url=row["url"])] if row["url"] else [])


def document_to_pair(doc: Document) -> dict:
    return {"url": doc.media[0].url if doc.media else None, "caption": doc.text}


def write_pairs(folder: Path, shards: int, rows: int) -> None:
    folder.mkdir()
    for shard in range(shards):
        pq.write_table(pa.Table.from_pylist(
            [{"url": f"https://img.example/{shard}/{i}.jpg", "caption": f"caption {i} " * (i % 5)}
             for i in range(rows)], schema=PAIRS_SCHEMA), folder / f"pairs-{shard:02d}.parquet")


@dataclass
class MinWords:
    from pipelines.options import option

    words: int = option(2, "fewest words a caption may have", unit="words", flag="--min-words")


def pairs_spec():
    from datatrove.pipeline.filters import LambdaFilter

    from pipelines.cli import PipelineSpec
    from pipelines.sources import ParquetSource, RowFormat
    from pipelines.steps import StepSpec

    def build(options: MinWords, ctx):
        return LambdaFilter(lambda doc: len(doc.text.split()) >= options.words,
                            exclusion_writer=ctx.recorder("min_words"))

    return PipelineSpec(name="pairs_test", description="test pairs", default_input="", examples=("x",),
                        source=ParquetSource(RowFormat(PAIRS_SCHEMA, pair_to_document, document_to_pair)),
                        steps=(StepSpec("min_words", build, MinWords),))


def test_a_new_pipeline_is_a_declaration(tmp_path, capsys):
    from pipelines.cli import main

    write_pairs(tmp_path / "in", shards=2, rows=20)
    out = tmp_path / "out"
    args = ["--input", str(tmp_path / "in"), "--output", str(out), "--workers", "1"]
    assert main(pairs_spec(), args + ["--min-words", "4"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["total"]["input"] == 40
    kept = pq.read_table(out / "data" / "00000.parquet")
    assert kept.schema == PAIRS_SCHEMA and all(len(c.split()) >= 4 for c in kept.column("caption").to_pylist())
    removed = pq.read_table(out / "removed" / "00001.parquet").to_pylist()
    assert removed and {r["removed_step"] for r in removed} == {"min_words"}
    assert all(r["source_file"] == "pairs-01.parquet" and isinstance(r["source_row"], int) for r in removed)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["options"]["--min-words"] == 4 and manifest["shards"] == [0, 1]

    assert main(pairs_spec(), args + ["--min-words", "3"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: --output {out} was made with --min-words 4; this run has 3: use another --output or the same flags")


# the manifest --------------------------------------------------------------------------------------------------
def obelics(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return run_command("pipelines.obelics", "--input", SAMPLE_OBELICS, *args, **kwargs)


def test_manifest_names_the_changed_option_normalises_paths_and_ignores_steps_not_run(tmp_path, monkeypatch):
    out = tmp_path / "out"
    first = obelics("--output", str(out), "--steps", "structure", "--ppl-window", "100", "--shards", "0")
    assert first.returncode == 0, first.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert "--ppl-window" not in manifest["options"] and manifest["input"] == os.path.abspath(SAMPLE_OBELICS)
    # a step that does not run: its options do not bind the output; the same input given relative is the same
    relative = os.path.relpath(SAMPLE_OBELICS, REPO)
    again = run_command("pipelines.obelics", "--input", relative, "--output", str(out), "--steps", "structure",
                        "--ppl-window", "200", "--shards", "1")
    assert again.returncode == 0, again.stderr
    # options the old run file forgot are in the manifest
    steps = ["--steps", "structure,optout,images", "--optout-list", sample_path("optout.txt"),
             "--images", sample_path("img2dataset"), "--shards", "0"]
    images = tmp_path / "images"
    assert obelics("--output", str(images), *steps).returncode == 0
    changed = obelics("--output", str(images), *steps, "--image-max-bytes", "1000")
    assert changed.returncode == 2
    assert changed.stderr.strip().splitlines()[-1] == (
        f"error: --output {images} was made with --image-max-bytes 20971520; this run has 1000: "
        f"use another --output or the same flags")


def test_calibration_interrupted_then_resumed_with_another_window_is_refused(tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "pipelines.obelics", "--input", SAMPLE_OBELICS, "--output", str(out),
               "--steps", "structure,perplexity", "--ppl-model", TINY_FALCON, "--workers", "1"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    markers = out / "logs" / "calibration" / "completions"
    deadline = time.monotonic() + 240
    while not (markers.is_dir() and any(markers.iterdir())) and time.monotonic() < deadline:
        assert process.poll() is None, "the run ended before it could be interrupted"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (out / "thresholds.json").exists(), "the calibration pass had finished"

    resumed = subprocess.run([*command, "--ppl-window", "64"], cwd=REPO, capture_output=True, text=True)
    assert resumed.returncode == 2
    assert resumed.stderr.strip().splitlines()[-1] == (
        f"error: --output {out} was made with --ppl-window 512; this run has 64: use another --output or the same "
        f"flags")
    assert not (out / "thresholds.json").exists()


def test_recorded_paths_do_not_depend_on_the_working_folder():
    from pipelines.options import normalise_path

    assert normalise_path("download") == "download" and normalise_path("tiiuae/falcon-rw-1b") == "tiiuae/falcon-rw-1b"
    assert normalise_path(os.path.relpath(SAMPLE_OBELICS)) == os.path.abspath(SAMPLE_OBELICS)
    assert normalise_path("s3://bucket/out/") == "s3://bucket/out"


def test_a_grown_input_is_refused(tmp_path):
    source = tmp_path / "in"
    source.mkdir()
    for p in sorted(Path(SAMPLE_OBELICS).glob("*.parquet"))[:2]:
        (source / p.name).write_bytes(p.read_bytes())
    out = tmp_path / "out"
    assert run_command("pipelines.obelics", "--input", str(source), "--output", str(out),
                       "--steps", "structure").returncode == 0
    last = sorted(Path(SAMPLE_OBELICS).glob("*.parquet"))[-1]
    (source / last.name).write_bytes(last.read_bytes())  # sorts last: the old check compared only a prefix
    grown = run_command("pipelines.obelics", "--input", str(source), "--output", str(out), "--steps", "structure")
    assert grown.returncode == 2 and "has 3 files now, 2 when" in grown.stderr


def test_a_calibrated_cut_is_the_same_for_every_run_into_an_output(tmp_path):
    """The filtering pass sees fewer documents than the calibration pass (images removes some first): it must not
    rewrite what the cut is computed from, or a later run over other shards gets another threshold."""
    out = tmp_path / "out"
    flags = ["--steps", "structure,images,perplexity", "--images", sample_path("img2dataset"),
             "--ppl-model", TINY_FALCON, "--workers", "1"]
    lines = []
    for shards in ("0-0", "1-1"):
        result = obelics("--output", str(out), "--shards", shards, *flags)
        assert result.returncode == 0, result.stderr[-2000:]
        lines.append(next(line for line in result.stderr.splitlines() if "threshold" in line))
    assert lines[0] == lines[1]


def test_torn_manifest_and_summary_are_rebuilt(tmp_path):
    out = tmp_path / "out"
    assert obelics("--output", str(out), "--steps", "structure", "--shards", "0-1").returncode == 0
    whole = json.loads((out / "summary.json").read_text())
    (out / "summary.json").write_text(json.dumps(whole)[:57])
    (out / "manifest.json").write_text('{"pipeline": "obel')
    again = obelics("--output", str(out), "--steps", "structure", "--shards", "0-2")
    assert again.returncode == 0, again.stderr
    rebuilt = json.loads((out / "summary.json").read_text())
    assert set(rebuilt["shards"]) == {"00000", "00001", "00002"}
    assert {k: rebuilt["shards"][k] for k in whole["shards"]} == whole["shards"]
    assert json.loads((out / "manifest.json").read_text())["pipeline"] == "obelics"


# content-keyed scores ------------------------------------------------------------------------------------------
def jpeg(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), color).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_two_images_without_url_are_scored_separately(tmp_path):
    from filters.annotation_cache import ShardScoreCache
    from filters.nsfw import ImageClassifierScorer, NsfwFilter

    magenta, green = jpeg((230, 20, 200)), jpeg((20, 160, 40))
    docs = [Document(text="a", id=str(i), media=[Media(id=str(i), type=MediaType.IMAGE, url="", media_bytes=b)])
            for i, b in enumerate((magenta, green))]
    step = NsfwFilter(ImageClassifierScorer(f"{MODELS}/tiny-nsfw-vit", ("nsfw",)), threshold=None,
                      cache=ShardScoreCache(str(tmp_path / "scores")))
    list(step.run(iter(docs)))
    scores = [doc.metadata["nsfw_scores"][0] for doc in docs]
    assert scores[0] != scores[1]
    assert len(ShardScoreCache(str(tmp_path / "scores")).load(0)) == 2


def test_perplexity_is_keyed_by_the_scored_window_and_saved_as_computed(tmp_path):
    from filters.annotation_cache import ShardScoreCache
    from filters.perplexity import PerplexityConfig, PerplexityFilter, PerplexityScorer

    texts = [f"The module returns a list of {w} objects for each call." for w in ("file", "socket", "thread")]
    docs = [Document(text=t, id="same-id") for t in texts] * 2  # one id for all; each text twice
    cache = ShardScoreCache(str(tmp_path / "scores"))

    def killed_after(n):
        yield from docs[:n]
        raise KeyboardInterrupt  # the task dies part-way

    step = PerplexityFilter(PerplexityScorer(PerplexityConfig(model=TINY_FALCON)), cache=cache, batch_size=1)
    step.flush_every = 1
    with pytest.raises(KeyboardInterrupt):
        list(step.run(killed_after(2)))
    assert len(cache.load(0)) == 2  # what it scored before dying is on disk
    step = PerplexityFilter(PerplexityScorer(PerplexityConfig(model=TINY_FALCON)), cache=cache, batch_size=4)
    list(step.run(iter(docs)))
    assert len(cache.load(0)) == 3  # three distinct windows, whatever the ids
    assert step.stats["tokens_scored"].total < sum(len(t.split()) for t in texts[2:]) * 4  # only the new one
    scores = [doc.metadata["perplexity"] for doc in docs]
    assert scores[:3] == scores[3:] and len(set(scores[:3])) == 3


# outputs through fsspec ----------------------------------------------------------------------------------------
def test_file_url_output_with_the_optout_api(tmp_path):
    from tests.http_servers import SpawningStandIn

    out = f"file://{tmp_path}/out"
    with SpawningStandIn({"https://site.example/doc-3"}) as api:
        result = run_command("pipelines.obelics", "--input", SAMPLE_OBELICS, "--output", out, "--shards", "0",
                             "--steps", "structure,optout", "--spawning-url", api.url("/q"),
                             env={"SPAWNING_TOKEN": "test-token"}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "file:").exists()
    assert (tmp_path / "out" / "data" / "00000.parquet").is_file()
    assert (tmp_path / "out" / "cache" / "optout.sqlite").is_file()


@pytest.fixture
def s3_stand_in(tmp_path):
    """A real S3 API on loopback (moto's server), with a bucket; yields the environment a client needs."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://{host}:{port}", "HOME": str(tmp_path / "home")}
    boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id="testing",
                 aws_secret_access_key="testing", region_name="us-east-1").create_bucket(Bucket="recipe")
    yield env
    server.stop()


def test_s3_output(s3_stand_in, tmp_path):
    import s3fs

    from tests.http_servers import SpawningStandIn

    with SpawningStandIn({"https://site.example/doc-3"}) as api:
        result = run_command("pipelines.obelics", "--input", SAMPLE_OBELICS, "--output", "s3://recipe/out",
                             "--steps", "structure,optout", "--shards", "0-1", "--spawning-url", api.url("/q"),
                             env={**s3_stand_in, "SPAWNING_TOKEN": "test-token"}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    fs = s3fs.S3FileSystem(key="testing", secret="testing",
                           client_kwargs={"endpoint_url": s3_stand_in["AWS_ENDPOINT_URL"]})
    assert fs.isfile("recipe/out/data/00001.parquet") and fs.isfile("recipe/out/manifest.json")
    with fs.open("recipe/out/summary.json") as f:
        assert json.load(f)["total"]["input"] == 100
    caches = list((tmp_path / "home" / ".cache" / "idefics2-recipe").glob("*/optout.sqlite"))
    assert len(caches) == 1  # SQLite stays on a local disk, never on the shared store
    status = run_command("pipelines.status", "s3://recipe/out", env=s3_stand_in)
    assert status.returncode == 0, status.stdout + status.stderr


# steps that drop into any datatrove pipeline ------------------------------------------------------------------
def test_steps_drop_into_a_plain_datatrove_pipeline(tmp_path):
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    from filters.optout import OptOutList, SpawningOptOutFilter
    from filters.perplexity import PerplexityConfig, PerplexityFilter, PerplexityScorer
    from filters.structure import InterleavedStructureFilter

    prose = "The function returns the number of items in the container, or raises an error if it is closed."

    def image(url: str) -> list[dict]:
        return [{"id": "m", "type": 0, "url": url, "media_bytes": None}]

    rows = [{"text": prose, "id": "kept", "media": image("https://ok.example/a.jpg")},
            {"text": prose, "id": "opted", "media": image("https://optout.example/b.jpg")},
            {"text": "zq xv kj qq zz xk vv jq qz kx zq jj", "id": "gibberish",
             "media": image("https://ok.example/c.jpg")},
            {"text": prose, "id": "no-image", "media": []}]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "docs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "optout.txt").write_text("optout.example\n")
    removed = JsonlWriter(str(tmp_path / "removed"), output_filename="${rank}.jsonl", compression=None)
    pipeline = [
        JsonlReader(str(tmp_path / "in")),
        InterleavedStructureFilter(exclusion_writer=removed),
        SpawningOptOutFilter(OptOutList(str(tmp_path / "optout.txt"))),
        PerplexityFilter(PerplexityScorer(PerplexityConfig(model=TINY_FALCON)), max_perplexity=1000.0),
        JsonlWriter(str(tmp_path / "kept"), output_filename="${rank}.jsonl", compression=None),
    ]
    LocalPipelineExecutor(pipeline, tasks=1, workers=1, logging_dir=str(tmp_path / "logs")).run()
    kept = [json.loads(line) for line in (tmp_path / "kept" / "00000.jsonl").read_text().splitlines()]
    assert [d["id"] for d in kept] == ["kept"] and kept[0]["metadata"]["perplexity"] < 1000
    dropped = [json.loads(line) for line in (tmp_path / "removed" / "00000.jsonl").read_text().splitlines()]
    assert [(d["id"], d["metadata"]["filter_reason"]) for d in dropped] == [("no-image", "no_image")]


def test_importing_the_steps_imports_no_torch():
    modules = sorted(f"filters.{p.stem}" for p in (REPO / "filters").glob("*.py") if p.stem != "__init__")
    modules += ["filters.decontam.step", "filters.decontam.index", "pipelines.obelics"]
    code = ("import sys\n" + "".join(f"import {m}\n" for m in modules if m != "filters.nsfw_head") +
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
