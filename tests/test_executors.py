"""The executors as users run them: a failing shard is recorded and retried while the others finish, each task
knows its cores, the console shows one progress line (datatrove's logs stay in the log files unless --verbose),
and Ctrl-C ends a run with one line and status 130."""

from __future__ import annotations

import argparse
import io
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from datatrove.data import Document
from datatrove.pipeline.base import PipelineStep

from pipelines.executors import (
    TASK_CPUS_ENV, ExecutorOptions, ProgressLine, ShardSlurmExecutor, TaskSettings, parse_max_array_size,
    run_executor, usable_cpus,
)
from pipelines.options import UsageError
from tests.conftest import REPO, SAMPLE_OBELICS, run_command
from tests.http_servers import SpawningStandIn


class FailOn(PipelineStep):
    """Yields one document per task, or raises on the listed ranks."""

    name = "fail_on"

    def __init__(self, ranks: set[int]):
        super().__init__()
        self.ranks = ranks

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        if rank in self.ranks:
            raise RuntimeError(f"shard {rank} is broken")
        yield Document(text="x", id=str(rank))


class RecordTaskCpus(PipelineStep):
    """Writes the task's IDEFICS2_TASK_CPUS to `folder/<rank>`."""

    name = "record_cpus"

    def __init__(self, folder: str):
        super().__init__()
        self.folder = folder

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        Path(self.folder, str(rank)).write_text(os.environ.get(TASK_CPUS_ENV, "unset"))
        yield Document(text="x", id=str(rank))


def test_failed_shard_is_isolated_recorded_and_retried(tmp_path):
    logs = tmp_path / "logs"
    run_executor([FailOn({1})], world_size=4, shards=range(0, 3), logging_dir=str(logs),
                 options=ExecutorOptions(workers=1))
    assert sorted(p.name for p in (logs / "completions").iterdir()) == ["00000", "00002"]
    assert (logs / "errors" / "00001.txt").read_text() == "RuntimeError: shard 1 is broken\n"

    run_executor([FailOn(set())], world_size=4, shards=range(0, 3), logging_dir=str(logs),
                 options=ExecutorOptions(workers=1))
    assert sorted(p.name for p in (logs / "completions").iterdir()) == ["00000", "00001", "00002"]
    assert not (logs / "errors" / "00001.txt").exists()


def test_a_failing_step_leaves_no_partial_files(tmp_path):
    from datatrove.pipeline.filters.base_filter import BaseFilter

    from pipelines.obelics_format import OBELICS_SOURCE
    from pipelines.shards import ShardWriter

    class Explodes(BaseFilter):
        name = "explodes"

        def filter(self, doc):
            if doc.id.endswith("0000020"):
                raise RuntimeError("model crashed")
            return True

    files = sorted(p.name for p in Path(SAMPLE_OBELICS).glob("*.parquet"))
    pipeline = [OBELICS_SOURCE.reader(SAMPLE_OBELICS, files), Explodes(), ShardWriter(str(tmp_path / "out"),
                                                                                       OBELICS_SOURCE)]
    run_executor(pipeline, world_size=4, shards=range(0, 1), logging_dir=str(tmp_path / "logs"),
                 options=ExecutorOptions(workers=1))
    assert "model crashed" in (tmp_path / "logs" / "errors" / "00000.txt").read_text()
    assert [p for p in (tmp_path / "out").rglob("*") if p.is_file()] == []


def test_each_local_task_gets_its_share_of_the_cores(tmp_path):
    seen = tmp_path / "seen"
    seen.mkdir()
    run_executor([RecordTaskCpus(str(seen))], world_size=3, shards=range(0, 2), logging_dir=str(tmp_path / "a"),
                 options=ExecutorOptions(workers=2))
    assert {p.name: p.read_text() for p in seen.iterdir()} == {"0": str(max(1, usable_cpus() // 2)),
                                                               "1": str(max(1, usable_cpus() // 2))}
    # more workers than shards left: the one task running gets every core
    run_executor([RecordTaskCpus(str(seen))], world_size=3, shards=range(2, 3), logging_dir=str(tmp_path / "b"),
                 options=ExecutorOptions(workers=4))
    assert (seen / "2").read_text() == str(usable_cpus())


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--output", default="out")
    parser.add_argument("--logging-dir", default=None)
    ExecutorOptions.add_arguments(parser)
    return parser.parse_args(argv)


def test_workers_throttle_clusters_only_when_asked():
    assert ExecutorOptions.from_args(parse("--executor", "slurm")).workers is None
    assert ExecutorOptions.from_args(parse("--executor", "slurm", "--workers", "3")).workers == 3
    options = ExecutorOptions.from_args(parse("--output", "s3://b/o"))
    assert options.status_command == "python -m pipelines.status s3://b/o"


def test_bad_executor_flags_are_one_line_errors(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse("--workers", "0")
    assert exit_info.value.code == 2 and "--workers: 0: must be at least 1" in capsys.readouterr().err
    with pytest.raises(UsageError, match="--detach: only with --executor slurm"):
        ExecutorOptions.from_args(parse("--detach"))


def test_slurm_job_script_asks_for_gpus_splits_arrays_and_does_not_throttle(tmp_path):
    executor = ShardSlurmExecutor([FailOn(set())], tasks=10, time="01:00:00", partition=None, gpus_per_task=1,
                                  logging_dir=str(tmp_path), max_array_size=4, workers=-1)
    executor.settings = TaskSettings(range(10))
    args = executor.get_sbatch_args(max_array=4)
    assert args["gpus"] == 1 and args["array"] == "0-3" and "partition" not in args
    assert parse_max_array_size("MaxArraySize            = 40001\nMaxJobCount = 10000\n") == 40001
    assert parse_max_array_size("no such line") == 1001


def test_progress_line_counts_the_selected_shards_and_estimates_the_rest():
    stream = io.StringIO()
    line = ProgressLine(selected=10, done_before=6, stream=stream, in_place=False, interval=30)
    states = {6: (100, "done"), 7: (50, "running"), 8: (0, "failed")}
    text = line.render(states, now=line.start + 10)
    # 7 of 10 done; this run: 150 docs in 10 s; 1 done + 1 failed + half of one out of 4 -> 62.5% in 10 s
    assert text == "progress: 7/10 shards done, 1 failed | 150 docs, 15.0 docs/s | ETA 6s"
    line.update(states)
    assert stream.getvalue() == ""  # not before the interval has passed
    line.update(states, force=True)
    assert stream.getvalue().count("\n") == 1 and "\r" not in stream.getvalue()


def structure_run(output: Path, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return run_command("pipelines.obelics", "--input", SAMPLE_OBELICS, "--output", str(output),
                       "--steps", "structure", *extra, env=env)


def test_default_console_is_short_and_logs_keep_datatrove_info(tmp_path):
    result = structure_run(tmp_path / "out")
    assert result.returncode == 0, result.stderr[-2000:]
    console = (result.stdout + result.stderr).splitlines()
    assert len(console) < 25, "\n".join(console)
    assert not any("| INFO" in line or "Stats:" in line for line in console)
    task_log = (tmp_path / "out" / "logs" / "logs" / "task_00000.log").read_text()
    assert "INFO" in task_log and "Processing done for rank=0" in task_log


def test_verbose_brings_datatrove_logs_back(tmp_path):
    result = structure_run(tmp_path / "out", "--verbose")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| INFO     | datatrove" in result.stderr and "Launching pipeline for rank=0" in result.stderr


def read_until_exit(fd: int, process: subprocess.Popen, timeout: float) -> bytes:
    output, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline:
        if select.select([fd], [], [], 0.2)[0]:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # the other end closed
                break
            output += chunk
        elif process.poll() is not None:
            break
    return output


def test_progress_line_is_rewritten_in_place_on_a_terminal(tmp_path):
    primary, secondary = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "pipelines.obelics", "--input", SAMPLE_OBELICS, "--output", str(tmp_path / "out"),
         "--steps", "structure"], cwd=REPO, stdout=subprocess.DEVNULL, stderr=secondary,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    os.close(secondary)
    console = read_until_exit(primary, process, timeout=120).decode()
    os.close(primary)
    assert process.wait(timeout=30) == 0, console
    assert "\rprogress: 4/4 shards done | 200 docs" in console
    assert "INFO" not in console


@pytest.mark.parametrize("workers", ["1", "2"])  # tasks in the command's process, or in worker processes
def test_ctrl_c_stops_with_one_line_and_status_130(tmp_path, workers):
    """The opt-out API answers 503 forever, so the tasks are busy retrying when Ctrl-C comes; the terminal sends
    SIGINT to the whole process group, workers included."""
    with SpawningStandIn(set(), mode="503") as api:
        process = subprocess.Popen(
            [sys.executable, "-m", "pipelines.obelics", "--input", SAMPLE_OBELICS, "--output", str(tmp_path / "o"),
             "--steps", "structure,optout", "--spawning-url", api.url("/api/v2/query/urls"),
             "--spawning-retries", "100", "--spawning-backoff", "0.2", "--workers", workers],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
            env={**os.environ, "PYTHONPATH": str(REPO), "SPAWNING_TOKEN": api.token})
        deadline = time.monotonic() + 120
        while api.calls < int(workers) + 1 and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.05)
        if api.calls <= int(workers):
            os.killpg(process.pid, signal.SIGKILL)
            pytest.fail(f"the tasks never called the API: {process.communicate()[1][-2000:]}")
        os.killpg(process.pid, signal.SIGINT)
        try:
            stdout, stderr = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            pytest.fail(f"still running 60 s after Ctrl-C: {process.communicate()[1][-2000:]}")
    assert process.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == "interrupted: 0 of 4 shards done; run the same command to resume"
