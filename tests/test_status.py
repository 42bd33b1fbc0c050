"""`python -m pipelines.status OUTPUT` on outputs that are done, failed, pending, old (run.json) or not outputs,
through the real commands."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipelines.executors import printable
from tests.conftest import SAMPLE_OBELICS, run_command


def structure_run(input_folder, output: Path, *extra: str):
    result = run_command("pipelines.obelics", "--input", str(input_folder), "--output", str(output),
                         "--steps", "structure", *extra)
    assert result.returncode in (0, 1), result.stderr[-2000:]
    return result


def status(output: str, *extra: str):
    return run_command("pipelines.status", output, *extra)


@pytest.fixture(scope="module")
def done_output(tmp_path_factory):
    output = tmp_path_factory.mktemp("done") / "out"
    assert structure_run(SAMPLE_OBELICS, output).returncode == 0
    return output


def corrupt_copy(source: Path, target: Path) -> None:
    """`source` rewritten in row groups of 10, with the page header of the third one overwritten: the footer
    still reads (so the run's up-front check passes) and the task fails midway."""
    pq.write_table(pq.read_table(source), target, row_group_size=10)
    offset = pq.ParquetFile(target).metadata.row_group(2).column(0).data_page_offset
    with open(target, "r+b") as f:
        f.seek(offset)
        f.write(b"\xff" * 16)


@pytest.mark.parametrize("as_url", [False, True])
def test_done_output_and_its_summary(done_output, as_url):
    (done_output / "summary.json").unlink(missing_ok=True)  # as after a detached run: records not merged yet
    result = status(f"file://{done_output}" if as_url else str(done_output))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[1:4] == ["  done            4", "  failed          0", "  pending         0"]
    assert "  input           200" in lines and "  kept            192   96.0%" in lines
    summary = json.loads((done_output / "summary.json").read_text())
    assert sorted(summary["shards"]) == ["00000", "00001", "00002", "00003"] and summary["total"]["input"] == 200
    assert "4 shard record(s) merged" in result.stdout


def test_failed_shard_shows_its_error_and_log(tmp_path):
    source = tmp_path / "in"
    shutil.copytree(SAMPLE_OBELICS, source)
    broken = sorted(source.glob("*.parquet"))[1]
    corrupt_copy(Path(SAMPLE_OBELICS) / broken.name, broken)
    assert structure_run(source, tmp_path / "out").returncode == 1
    result = status(str(tmp_path / "out"))
    assert result.returncode == 1, result.stdout + result.stderr
    log = tmp_path / "out" / "logs" / "logs" / "task_00001.log"
    line = next(x for x in result.stdout.splitlines() if x.startswith("    00001  "))
    assert f"ShardInputError: {broken}: unreadable after" in line and line.endswith(f"(log: {log})")
    assert log.is_file() and "Traceback" in log.read_text()
    assert "  done            3" in result.stdout


def test_pending_shards_between_two_runs(tmp_path):
    structure_run(SAMPLE_OBELICS, tmp_path / "out", "--shards", "0-0")
    structure_run(SAMPLE_OBELICS, tmp_path / "out", "--shards", "3-3")
    result = status(str(tmp_path / "out"))
    assert result.returncode == 3, result.stdout + result.stderr
    assert "  pending         2  00001-00002" in result.stdout and "  done            2" in result.stdout


def test_an_older_output_with_run_json_selects_all_its_files(done_output, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(done_output, old)
    files = json.loads((old / "manifest.json").read_text())["files"]
    (old / "manifest.json").unlink()
    (old / "run.json").write_text(json.dumps({"pipeline": "obelics", "files": files + ["extra.parquet"]}))
    result = status(str(old))
    assert result.returncode == 3 and "  pending         1  00004" in result.stdout, result.stdout


def test_a_folder_that_is_not_an_output_is_one_line(tmp_path):
    result = status(str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: {tmp_path}: no manifest.json or run.json: not an output "
                                                  f"of these pipelines, or its first run has not started"]
    assert status(str(tmp_path / "missing")).returncode == 2


def test_error_lines_quote_hostile_text_escaped():
    assert printable("bad\x1b[31mred\u202eevil\ttab é") == "bad\\x1b[31mred\\u202eevil\\x09tab é"


def test_calibration_pass_is_shown(tmp_path):
    from tests.conftest import MODELS

    output = tmp_path / "out"
    run = run_command("pipelines.obelics", "--input", SAMPLE_OBELICS, "--output", str(output), "--steps",
                      "structure,perplexity", "--ppl-model", f"{MODELS}/tiny-falcon", "--limit", "10",
                      "--shards", "0-1",
                      "--calibration-shards", "0-1")
    assert run.returncode == 0, run.stderr[-2000:]
    result = status(str(output))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "  calibration pass: 2 shard(s) scored, 0 failed" in result.stdout


@pytest.mark.parametrize("manifest", [
    {"pipeline": "cauldron", "files": ["ai2d", "vqav2"], "shards": [0, 1], "summary": "own"},
    {"pipeline": "mixture", "tasks": 2, "summary": "own"}])
def test_outputs_with_their_own_summary_are_reported_and_left_alone(tmp_path, manifest):
    """A Cauldron or mixture output: status shows its tasks and never rewrites the summary its command wrote."""
    (tmp_path / "logs" / "completions").mkdir(parents=True)
    (tmp_path / "logs" / "completions" / "00000").touch()
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "summary.json").write_text('{"total": {"rows": 7}}')
    result = status(str(tmp_path))
    assert result.returncode == 3, result.stderr  # one task done, one pending
    assert "done            1" in result.stdout and "pending         1" in result.stdout
    assert (tmp_path / "summary.json").read_text() == '{"total": {"rows": 7}}'
