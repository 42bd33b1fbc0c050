"""Shard ranges, resume, crash safety and accounting, through the real `python -m pipelines.obelics`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import REPO, SAMPLE_OBELICS, offline_steps, output_tables, run_command


def obelics(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """All steps, offline, unless `args` choose otherwise."""
    steps = [] if "--steps" in args else offline_steps()
    return run_command("pipelines.obelics", *steps, *args, env=env)


def assert_accounts(output: Path) -> dict:
    """summary.json adds up per shard and in total, and agrees with the files on disk."""
    summary = json.loads((output / "summary.json").read_text())
    for name, record in [("total", summary["total"]), *summary["shards"].items()]:
        assert record["input"] == record["kept"] + sum(record["removed"].values()), name
    for name, record in summary["shards"].items():
        assert pq.read_metadata(output / "data" / f"{name}.parquet").num_rows == record["kept"]
        removed = pq.read_table(output / "removed" / f"{name}.parquet").to_pylist()
        reasons: dict[str, int] = {}
        for row in removed:
            key = f"{row['removed_step']}/{row['removed_reason']}"
            reasons[key] = reasons.get(key, 0) + 1
        assert reasons == record["removed"], name
    return summary


def test_split_runs_equal_one_run_and_rerun_does_nothing(tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert obelics("--input", SAMPLE_OBELICS, "--output", str(whole), "--shards", "0-3").returncode == 0
    assert obelics("--input", SAMPLE_OBELICS, "--output", str(split), "--shards", "0-1").returncode == 0
    assert obelics("--input", SAMPLE_OBELICS, "--output", str(split), "--shards", "2-3").returncode == 0
    for kind in ("data", "removed", "images"):
        names = sorted(p.name for p in (whole / kind).iterdir())
        assert [n.split(".")[0] for n in names] == ["00000", "00001", "00002", "00003"]
        assert names == sorted(p.name for p in (split / kind).iterdir())
        for name in names:
            assert (whole / kind / name).read_bytes() == (split / kind / name).read_bytes()
    assert assert_accounts(whole) == assert_accounts(split)

    before = {p: p.stat().st_mtime_ns for p in (whole / "data").iterdir()}
    again = obelics("--input", SAMPLE_OBELICS, "--output", str(whole), "--shards", "0-3")
    assert again.returncode == 0
    assert "already done, nothing to run" in again.stderr
    assert before == {p: p.stat().st_mtime_ns for p in (whole / "data").iterdir()}


def big_input(folder: Path, shards: int, copies: int) -> Path:
    """The sample rows repeated, so a run lasts long enough to be killed part-way."""
    rows = pq.read_table(sorted(Path(SAMPLE_OBELICS).glob("*.parquet"))[0])
    folder.mkdir()
    for shard in range(shards):
        pq.write_table(pa.concat_tables([rows] * copies), folder / f"part-{shard:03d}.parquet")
    return folder


def all_rows(output: Path) -> list[tuple]:
    rows = []
    for kind in ("data", "removed"):
        for name, table in output_tables(output, kind).items():
            rows += [(name, r["general_metadata"], r["metadata"]) for r in table.to_pylist()]
    return sorted(rows)


def test_killed_run_resumes_without_duplicates_or_holes(tmp_path):
    source = big_input(tmp_path / "in", shards=6, copies=300)  # 6 shards x 15,000 documents
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    structure = ["--steps", "structure", "--workers", "1"]
    assert obelics("--input", str(source), "--output", str(clean), *structure).returncode == 0

    process = subprocess.Popen([sys.executable, "-m", "pipelines.obelics", "--input", str(source), "--output",
                                str(killed), *structure], cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    completions = killed / "logs" / "completions"
    deadline = time.time() + 120
    while time.time() < deadline and not (completions.exists() and len(os.listdir(completions)) >= 2):
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    finished = len(os.listdir(completions))
    assert 2 <= finished < 6, "the kill should land part-way through the run"

    resumed = obelics("--input", str(source), "--output", str(killed), *structure)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"{6 - finished} to run, {finished} already done" in resumed.stderr
    assert not list(killed.rglob("*.tmp"))
    assert all_rows(killed) == all_rows(clean)
    assert assert_accounts(killed) == assert_accounts(clean)


def one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:") or ": error: argument" in line]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_missing_input_path(tmp_path):
    line = one_error_line(obelics("--input", str(tmp_path / "nope"), "--output", str(tmp_path / "o")))
    assert "--input" in line and "nope" in line


def test_shard_range_past_the_last_file(tmp_path):
    line = one_error_line(obelics("--input", SAMPLE_OBELICS, "--output", str(tmp_path / "o"), "--shards", "2-9"))
    assert "--shards 2-9" in line and "4 files" in line


@pytest.mark.parametrize("flag", [["--steps", "structure,bogus"], ["--shards", "3-1"], ["--workers", "0"],
                                  ["--limit", "0"], ["--limit", "-3"], ["--steps", ""], ["--steps", " , "],
                                  ["--calibration-shards", "0-7"]])
def test_bad_flags(tmp_path, flag):
    line = one_error_line(obelics("--input", SAMPLE_OBELICS, "--output", str(tmp_path / "o"), *flag))
    assert f"{flag[0]}" in line.split(":", 2)[1 if line.startswith("error:") else 2] and "None" not in line
    assert not (tmp_path / "o").exists()


def test_messages_name_what_is_wrong(tmp_path):
    line = one_error_line(obelics("--input", SAMPLE_OBELICS, "--output", str(tmp_path / "o"),
                                  "--steps", "structure,perplexity", "--ppl-model", "/no/such/path"))
    assert line == "error: --ppl-model /no/such/path: no such file or folder"
    line = one_error_line(obelics("--input", SAMPLE_OBELICS, "--output", str(tmp_path / "o"), "--steps", "decontam"))
    assert "--decontam-index" in line and "None" not in line
    start = time.monotonic()  # a Hub id with no network fails at once, not after a minute of retries
    line = one_error_line(obelics("--input", SAMPLE_OBELICS, "--output", str(tmp_path / "o"),
                                  "--steps", "structure,perplexity", "--ppl-model", "no-such-org/no-such-model",
                                  env={"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf")}))
    assert "--ppl-model no-such-org/no-such-model" in line and time.monotonic() - start < 20


def test_output_inside_input_or_a_file_and_slurm_without_sbatch_are_refused(tmp_path):
    source = tmp_path / "in"
    source.mkdir()
    for p in Path(SAMPLE_OBELICS).glob("*.parquet"):
        (source / p.name).write_bytes(p.read_bytes())
    line = one_error_line(obelics("--input", str(source), "--output", str(source / "out"), "--steps", "structure"))
    assert "--output" in line and "inside --input" in line
    assert not (source / "out").exists()
    one_file = obelics("--input", str(next(source.glob("*.parquet"))), "--output", str(source / "out"),
                       "--steps", "structure", "--shards", "0")
    assert one_file.returncode == 0, one_file.stderr  # a one-file input lists only itself
    (tmp_path / "a-file").write_text("x")
    line = one_error_line(obelics("--input", str(source), "--output", str(tmp_path / "a-file"), "--steps", "structure"))
    assert "is a file" in line
    no_slurm = {"PATH": os.path.dirname(sys.executable)}
    line = one_error_line(obelics("--input", str(source), "--output", str(tmp_path / "o"), "--steps", "structure",
                                  "--executor", "slurm", env=no_slurm))
    assert "sbatch" in line and not (tmp_path / "o").exists()


def test_help_shows_defaults_units_environment_and_examples():
    result = run_command("pipelines.obelics", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for expected in ("--ppl-window", "(default: 512 tokens)", "--image-timeout", "(default: 30.0 s)",
                     "--image-max-bytes", "SPAWNING_TOKEN", "examples:", "python -m pipelines.obelics --output"):
        assert expected in text, expected


def test_parquet_missing_a_column_and_unreadable_file(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    table = pq.read_table(sorted(Path(SAMPLE_OBELICS).glob("*.parquet"))[0])
    pq.write_table(table, folder / "a.parquet")
    pq.write_table(table.drop_columns(["texts"]), folder / "b.parquet")
    line = one_error_line(obelics("--input", str(folder), "--output", str(tmp_path / "o")))
    assert "b.parquet" in line and "texts" in line

    struct = table.drop_columns(["general_metadata"]).append_column(
        "general_metadata", pa.array([{"url": "https://x.example"}] * len(table)))
    pq.write_table(struct, folder / "b.parquet")
    line = one_error_line(obelics("--input", str(folder), "--output", str(tmp_path / "o1")))
    assert "b.parquet" in line and "column general_metadata is struct" in line

    (folder / "b.parquet").write_bytes(b"this is not parquet at all")
    line = one_error_line(obelics("--input", str(folder), "--output", str(tmp_path / "o2")))
    assert "b.parquet" in line and "not a readable parquet" in line
    # the good shard alone still runs, once the perplexity cut is calibrated on it alone too
    line = one_error_line(obelics("--input", str(folder), "--output", str(tmp_path / "o3"), "--shards", "0-0"))
    assert "b.parquet" in line and "--calibration-shards" in line
    assert obelics("--input", str(folder), "--output", str(tmp_path / "o3"), "--shards", "0-0",
                   "--calibration-shards", "0-0").returncode == 0


def test_resuming_with_other_flags_is_refused(tmp_path):
    assert obelics("--input", SAMPLE_OBELICS, "--output", str(tmp_path), "--shards", "0-0").returncode == 0
    line = one_error_line(obelics("--input", SAMPLE_OBELICS, "--output", str(tmp_path), "--limit", "5"))
    assert "limit" in line


def test_a_step_missing_its_flag_stops_before_any_work(tmp_path):
    flags = offline_steps()
    cut = flags.index("--decontam-index")
    del flags[cut:cut + 2]
    result = run_command("pipelines.obelics", *flags, "--input", SAMPLE_OBELICS, "--output", str(tmp_path / "o"))
    line = one_error_line(result)
    assert "--decontam-index" in line and "calibration:" not in result.stderr
    assert not (tmp_path / "o" / "scores").exists()
