"""`python -m pipelines.cauldron` end to end on the shipped sample sources, as a user runs it."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cauldron.build import published_features
from cauldron.registry import renormalised_shares
from pipelines import cauldron as cauldron_cli
from pipelines.demo import sample_path
from tests.conftest import run_command, sample_decontam_index

TOKENIZER = sample_path("models", "tiny-falcon")
SFT_TOKENS = "20000"


def build(output: Path, *extra: str, source: str = sample_path("cauldron", "sources")):
    return run_command("pipelines.cauldron", "--source", source, "--output", str(output), "--decontam-index",
                       sample_decontam_index(), "--tokenizer", TOKENIZER, "--sft-tokens", SFT_TOKENS, *extra)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("cauldron") / "out"
    result = build(output, "--workers", "2")
    assert result.returncode == 0, result.stderr
    return output


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.parquet"))}


def test_output_loads_with_datasets_with_exactly_the_published_features(built):
    import datasets

    subsets = [p.parent.name for p in built.glob("*/train-00000-of-00001.parquet")]
    assert len(subsets) == 59
    for name in ("vqav2", "nlvr2", "openhermes"):
        loaded = datasets.load_dataset("parquet", data_files=str(built / name / "*.parquet"), split="train")
        assert loaded.features == published_features()
        assert all(t["source"] == name for row in loaded for t in row["texts"])
    assert len(datasets.load_dataset("parquet", data_files=str(built / "nlvr2" / "*.parquet"),
                                     split="train")[0]["images"]) == 2


def test_two_questions_on_the_same_pixels_become_one_row_with_two_turns(built):
    rows = pq.read_table(built / "vqav2" / "train-00000-of-00001.parquet").to_pylist()
    turns = [[t["assistant"] for t in row["texts"]] for row in rows]
    assert turns[0] == ["round", "red"]  # rows 0 and 1: one picture stored as two different PNG files
    assert len(rows) == 2 and len(rows[0]["images"]) == 1
    stats = json.loads((built / "stats" / "vqav2.json").read_text())
    assert stats["input_rows"] == 4 and stats["merged_rows"] == 1 and stats["removed_eval_match"] == 1


def test_a_row_with_an_edited_evaluation_image_is_removed_and_reported(built):
    report = json.loads((built / "decontam_report.json").read_text())
    assert [(r["subset"], r["source_row"]) for r in report["rows"]] == [("vqav2", 2)]
    assert report["rows"][0]["match"].startswith("vqa_sample/vqa_sample/distinct-3")
    assert "| vqav2 | 2 |" in (built / "decontam_report.md").read_text()
    removed = pq.read_table(built / "removed" / "vqav2.parquet").to_pylist()
    assert removed == [{"source_row": 2, "reason": "eval_match", "detail": report["rows"][0]["match"]}]
    written = pq.read_table(built / "vqav2" / "train-00000-of-00001.parquet").to_pylist()
    assert "green wooden" not in [t["assistant"] for row in written for t in row["texts"]]


def test_unreadable_rows_are_counted_and_recorded_never_dropped(built):
    removed = pq.read_table(built / "removed" / "cocoqa.parquet").to_pylist()
    assert [(r["source_row"], r["reason"]) for r in removed] == [(2, "unreadable"), (3, "unreadable")]
    assert "answer" in removed[0]["detail"] and "decode" in removed[1]["detail"]
    summary = json.loads((built / "summary.json").read_text())["total"]
    assert summary["input_rows"] == summary["merged_rows"] + summary["rows"] + summary["removed_eval_match"] + \
        summary["removed_unreadable"] + summary.get("removed_over_max_rows", 0)


def test_sft_mixture_shares_match_renormalised_table14(built):
    sft = built / "sft"
    info = json.loads((sft / "mixture.json").read_text())
    assert (info["kind"], info["name"], info["share_of"], info["files"]) == \
        ("sft", "sft", "answer_tokens", "data/*.parquet")
    expected = renormalised_shares(sorted(info["sources"]))
    tokens: dict[str, int] = {}
    for path in sorted((sft / "data").glob("*.parquet")):
        table = pq.read_table(path)
        assert table.column_names == ["images", "texts", "subset", "answer_tokens"]
        for subset, count in zip(table.column("subset").to_pylist(), table.column("answer_tokens").to_pylist()):
            tokens[subset] = tokens.get(subset, 0) + count
    total = sum(tokens.values())
    assert len(expected) == 59 and len(tokens) >= 58  # DaTikz's 0.03% of 20,000 tokens is less than half a row
    for subset, share in expected.items():
        assert abs(tokens.get(subset, 0) / total - share) * 100 < 0.5, subset
        assert abs(info["sources"][subset]["share"] - share) < 1e-9
    result = run_command("mixtures.validate", str(sft), "--tolerance", "0.5")
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_rebuild_gives_identical_files_whatever_the_workers(built, tmp_path):
    result = build(tmp_path / "again", "--workers", "1")
    assert result.returncode == 0, result.stderr
    first, second = _files(built), _files(tmp_path / "again")
    assert first.keys() == second.keys() and len(first) > 59 * 3
    assert [name for name in first if first[name] != second[name]] == []


def test_a_resume_with_other_options_is_refused_in_one_line(built):
    result = build(built, "--max-rows", "1")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "--max-rows" in result.stderr
    again = build(built)  # the same flags: every subset done, nothing rebuilt
    assert again.returncode == 0, again.stderr


def test_max_rows_caps_each_subset_and_reports_the_rest(tmp_path):
    args = ["--source", sample_path("cauldron", "sources"), "--output", str(tmp_path / "out"), "--decontam-index",
            sample_decontam_index(), "--tokenizer", TOKENIZER, "--subsets", "vqav2,lima", "--max-rows", "1",
            "--workers", "1"]
    assert cauldron_cli.main(args) == 0  # in this process: the executor's one-worker path
    assert pq.read_metadata(tmp_path / "out" / "vqav2" / "train-00000-of-00001.parquet").num_rows == 1
    reasons = [r["reason"] for r in pq.read_table(tmp_path / "out" / "removed" / "lima.parquet").to_pylist()]
    assert reasons == ["over_max_rows", "over_max_rows"]


def test_from_published_reads_the_published_schema(tmp_path):
    result = build(tmp_path / "out", "--from-published", source=sample_path("cauldron", "published"))
    assert result.returncode == 0, result.stderr
    assert "2 selected subset" not in result.stderr and "building the 2 present" in result.stderr
    rows = pq.read_table(tmp_path / "out" / "ai2d" / "train-00000-of-00001.parquet").to_pylist()
    shipped = pq.read_table(sample_path("cauldron", "published", "ai2d", "train-00000-of-00001.parquet")).to_pylist()
    assert [r["texts"] for r in rows] == [r["texts"] for r in shipped]
    assert json.loads((tmp_path / "out" / "sft" / "mixture.json").read_text())["sources"].keys() == \
        {"ai2d", "chartqa"}


@pytest.mark.parametrize("flags, message", [
    (["--subsets", "vqav3"], "--subsets: unknown subset 'vqav3'"),
    (["--source", "/nonexistent/cauldron"], "--source /nonexistent/cauldron: no such folder"),
    (["--decontam-index", "/tmp"], "--decontam-index /tmp: not a decontamination index"),
    (["--tokenizer", "/nonexistent/tokenizer"], "--tokenizer /nonexistent/tokenizer: cannot be loaded"),
])
def test_bad_flags_give_one_line(tmp_path, capsys, flags, message):
    args = ["--source", sample_path("cauldron", "sources"), "--output", str(tmp_path / "out"), "--subsets", "ai2d",
            "--decontam-index", sample_decontam_index(), "--tokenizer", TOKENIZER]
    capsys.readouterr()  # the shared index's build messages
    assert cauldron_cli.main([*args, *flags]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and error.startswith("error: ") and message in error
    assert not (tmp_path / "out" / "manifest.json").exists()  # refused before anything is written


def test_a_named_subset_missing_from_the_source_is_refused(tmp_path):
    result = build(tmp_path / "out", "--subsets", "ai2d,vqav2", source=sample_path("cauldron", "published"))
    assert result.returncode == 2 and "vqav2" in result.stderr and "Traceback" not in result.stderr


def test_the_sample_rebuilds_byte_for_byte(tmp_path):
    result = run_command("scripts.make_cauldron_sample", "--output", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert _files(tmp_path) == _files(Path(sample_path("cauldron")))


def test_a_torn_or_foreign_source_file_stops_the_run_in_one_line(tmp_path, capsys):
    source = tmp_path / "sources"
    source.mkdir()
    shipped = Path(sample_path("cauldron", "sources"))
    (source / "ai2d.parquet").write_bytes((shipped / "ai2d.parquet").read_bytes()[:-100])  # torn: no footer
    (source / "chartqa.parquet").write_bytes((shipped / "vqav2.parquet").read_bytes())  # another schema
    args = ["--source", str(source), "--output", str(tmp_path / "out"), "--decontam-index", sample_decontam_index(),
            "--tokenizer", TOKENIZER]
    capsys.readouterr()
    assert cauldron_cli.main([*args, "--subsets", "ai2d"]) == 2
    assert capsys.readouterr().err.strip() == \
        f"error: {source}/ai2d.parquet: not a readable parquet file (ArrowInvalid)"
    assert cauldron_cli.main([*args, "--subsets", "chartqa"]) == 2
    assert capsys.readouterr().err.strip() == f"error: {source}/chartqa.parquet: no column 'query' (subset chartqa)"


def test_without_an_index_the_default_one_needs_the_hub_and_says_so_offline(tmp_path):
    offline = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}  # no traffic leaves the machine
    result = run_command("pipelines.cauldron", "--source", sample_path("cauldron", "published"), "--from-published",
                         "--output", str(tmp_path / "out"), "--tokenizer", TOKENIZER, "--subsets", "ai2d", env=offline)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: --decontam-index: the default index (MMBench, "
                                                             "MathVista and MMMU images from the Hub) cannot be built")
    assert "Traceback" not in result.stderr


def test_questions_on_one_picture_far_apart_are_merged_without_holding_every_open_picture(tmp_path, monkeypatch):
    """800 pictures, each asked about again 800 rows later: until its second row every group is open. Past a
    memory budget (4 MB here) the groups' images wait in a temporary file: the build's peak Python memory (about
    17 MB) stays under what the 800 open pictures alone take (24 MB; holding them all, it was 36 MB), and every
    picture still ends as one row with both questions."""
    import io
    import tracemalloc

    import numpy as np
    import pyarrow as pa
    from PIL import Image

    from cauldron import build as build_module
    from filters import pixels
    from cauldron.build import SubsetSettings, answer_token_counter, build_subset
    from cauldron.registry import entries

    def noise(seed: int) -> bytes:  # 30 KB of PNG that does not compress
        pixels = np.random.default_rng(seed).integers(0, 256, size=(100, 100, 3), dtype=np.uint8)
        out = io.BytesIO()
        Image.fromarray(pixels, "RGB").save(out, "PNG", compress_level=0)
        return out.getvalue()

    pictures = [noise(seed) for seed in range(800)]
    rows = [{"image": {"bytes": pictures[i % 800], "path": f"{i}.png"}, "question": f"What is {i}?",
             "multiple_choice_answer": f"answer {i}"} for i in range(1600)]
    source = tmp_path / "sources"
    source.mkdir()
    pq.write_table(pa.Table.from_pylist(rows), source / "vqav2.parquet")
    held = len(pictures) * len(pictures[0])
    del rows, pictures
    settings = SubsetSettings(str(tmp_path / "out"), ["vqav2"], str(source), False, 200_000,
                              sample_decontam_index(), TOKENIZER, shuffle_turns=False)
    answer_token_counter(TOKENIZER)("imports transformers and torch before measuring")
    monkeypatch.setattr(build_module, "OPEN_IMAGES_IN_MEMORY", 4 << 20)
    monkeypatch.setattr(pixels._CACHE, "max_bytes", 1 << 20)  # the decoded-pixel cache has its own bound
    tracemalloc.start()
    try:
        build_subset(entries()["vqav2"], settings)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < held, (peak, held)
    written = pq.read_table(tmp_path / "out" / "vqav2" / "train-00000-of-00001.parquet").to_pylist()
    assert len(written) == 800 and all(len(r["texts"]) == 2 for r in written)
    assert [t["user"].split("?")[0][-3:] for t in written[7]["texts"]] == ["s 7", "807"]
    assert [written[i]["images"][0]["bytes"] for i in (0, 799)] == [noise(0), noise(799)]  # from memory, from disk
