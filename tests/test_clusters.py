"""The pipelines on a real Slurm cluster and a real Ray cluster: the local executor's files (OBELICS, pairs, pages),
a failed shard that Slurm sees as a failed array task, detached and split submissions followed with
`pipelines.status`, and every task's IDEFICS2_TASK_CPUS.

`.ci/run` starts both (and sets IDEFICS2_REQUIRE_CLUSTERS=1, so a cluster that is missing fails here);
elsewhere these tests skip when no cluster is reachable.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines.executors import ExecutorOptions, run_executor
from tests.conftest import REPO, SAMPLE_OBELICS, offline_steps, run_command, skip_or_fail
from tests.test_executors import RecordTaskCpus
from tests.test_status import corrupt_copy

SLURM_FLAGS = ("--executor", "slurm", "--slurm-time", "00:10:00", "--slurm-mem-per-cpu-gb", "1")


@pytest.fixture(scope="module")
def local_output(tmp_path_factory):
    output = tmp_path_factory.mktemp("local")
    result = run_command("pipelines.obelics", *offline_steps(), "--input", SAMPLE_OBELICS, "--output", str(output))
    assert result.returncode == 0, result.stderr[-2000:]
    return output


# a job that holds the node (its log goes nowhere, not into the working folder)
BLOCKER = ["sbatch", "--parsable", "--exclusive", "--time", "00:10:00", "--output", "/dev/null", "--wrap", "sleep 300"]


def assert_same_outputs(a, b):
    for kind in ("data", "removed", "images"):
        names = sorted(p.name for p in (a / kind).iterdir())
        assert names == sorted(p.name for p in (b / kind).iterdir()) and len(names) == 4
        for name in names:
            assert (a / kind / name).read_bytes() == (b / kind / name).read_bytes(), f"{kind}/{name}"
    assert (a / "summary.json").read_text() == (b / "summary.json").read_text()


def slurm_node_idle() -> bool:
    if not shutil.which("sinfo"):
        return False
    states = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True).stdout.split()
    return "idle" in states or "mixed" in states


@pytest.fixture
def slurm():
    """A Slurm node free to run jobs; one still finishing an earlier test's jobs (completing) is waited for."""
    if not shutil.which("sinfo"):
        skip_or_fail("no Slurm cluster (`.ci/slurm-up.sh` starts one)")
    deadline = time.monotonic() + 60
    while not slurm_node_idle():
        if time.monotonic() > deadline:
            skip_or_fail("no Slurm cluster with an idle node (`.ci/slurm-up.sh` starts one)")
        time.sleep(1)


def submitted_jobs(output: Path) -> list[str]:
    return json.loads((output / "logs" / "slurm_jobs.json").read_text())["job_ids"]


def wait_for_queue_to_empty(job_ids: list[str], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        queue = subprocess.run(["squeue", "-h", "-o", "%F"], capture_output=True, text=True).stdout.split()
        if not set(job_ids) & set(queue):
            return
        time.sleep(1)
    pytest.fail(f"Slurm jobs {job_ids} still queued after {timeout} s")


def array_task_states(job_id: str) -> dict[int, tuple[str, str]]:
    """Array index -> (JobState, ExitCode) from `scontrol show job` (this CI cluster has no accounting database
    for `sacct`; scontrol keeps finished jobs for MinJobAge = 300 s)."""
    shown = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True, check=True)
    states = {}
    for line in shown.stdout.splitlines():
        fields = dict(item.split("=", 1) for item in line.split() if "=" in item)
        states[int(fields["ArrayTaskId"])] = (fields["JobState"], fields["ExitCode"])
    return states


@pytest.mark.slurm
def test_slurm_executor_matches_local(slurm, local_output, tmp_path):
    result = run_command("pipelines.obelics", *offline_steps(), "--input", SAMPLE_OBELICS, "--output", str(tmp_path),
                         *SLURM_FLAGS, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "logs" / "launch_script.slurm").exists()
    assert_same_outputs(local_output, tmp_path)
    again = run_command("pipelines.obelics", *offline_steps(), "--input", SAMPLE_OBELICS, "--output", str(tmp_path),
                        "--executor", "slurm")
    assert again.returncode == 0 and "nothing to run" in again.stderr


@pytest.mark.slurm
def test_a_failed_shard_fails_its_array_task(slurm, tmp_path):
    source = tmp_path / "in"
    shutil.copytree(SAMPLE_OBELICS, source)
    broken = sorted(source.glob("*.parquet"))[2]
    corrupt_copy(Path(SAMPLE_OBELICS) / broken.name, broken)
    output = tmp_path / "out"
    result = run_command("pipelines.obelics", "--input", str(source), "--output", str(output), "--steps",
                         "structure", *SLURM_FLAGS, timeout=300)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "error: shard 00002 failed: ShardInputError" in result.stderr
    [job] = submitted_jobs(output)
    ranks = json.loads((output / "logs" / "ranks_to_run.json").read_text())  # array index -> shard
    by_shard = {ranks[index]: state for index, state in array_task_states(job).items()}
    assert by_shard == {0: ("COMPLETED", "0:0"), 1: ("COMPLETED", "0:0"), 2: ("FAILED", "1:0"),
                        3: ("COMPLETED", "0:0")}


@pytest.mark.slurm
def test_detached_split_submission_followed_with_status_and_resumed(slurm, tmp_path):
    """Four shards in arrays of at most two: two jobs submitted at once. A job holding the whole node keeps them
    pending while the command returns, a second submission is refused and status says pending."""
    output = tmp_path / "out"
    command = ("pipelines.obelics", "--input", SAMPLE_OBELICS, "--output", str(output), "--steps", "structure",
               *SLURM_FLAGS, "--slurm-max-array-size", "2", "--detach")
    blocker = subprocess.run(BLOCKER,
                             capture_output=True, text=True, check=True).stdout.strip()
    try:
        result = run_command(*command, timeout=120)
        assert result.returncode == 0, result.stderr[-3000:]
        jobs = submitted_jobs(output)
        assert len(jobs) == 2
        assert f"submitted Slurm jobs {','.join(jobs)}: 4 shard(s) of 0-3" in result.stderr
        assert f"follow: python -m pipelines.status {output}" in result.stderr
        assert "run the same command again" in result.stderr
        again = run_command(*command)
        assert again.returncode == 2 and "are still queued or running" in again.stderr, again.stderr[-2000:]
        pending = run_command("pipelines.status", str(output))
        assert pending.returncode == 3 and "  pending         4" in pending.stdout, pending.stdout
        assert f"Slurm job(s) {','.join(jobs)} still queued or running" in pending.stdout
    finally:
        subprocess.run(["scancel", blocker], check=True)
    wait_for_queue_to_empty(jobs)
    done = run_command("pipelines.status", str(output))
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads((output / "summary.json").read_text())["total"]["input"] == 200
    resumed = run_command(*command)
    assert resumed.returncode == 0 and "nothing to run" in resumed.stderr, resumed.stderr[-2000:]


@pytest.mark.slurm
def test_ctrl_c_while_waiting_leaves_the_jobs_running(slurm, tmp_path):
    output = tmp_path / "out"
    blocker = subprocess.run(BLOCKER,
                             capture_output=True, text=True, check=True).stdout.strip()
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "pipelines.obelics", "--input", SAMPLE_OBELICS, "--output", str(output),
             "--steps", "structure", *SLURM_FLAGS], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, start_new_session=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        jobs_file = output / "logs" / "slurm_jobs.json"
        deadline = time.monotonic() + 120
        while not jobs_file.exists() and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.2)
        time.sleep(1)  # into the wait
        os.killpg(process.pid, signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
        jobs = submitted_jobs(output)
        assert process.returncode == 130, stderr[-3000:]
        assert "Traceback" not in stderr
        assert stderr.strip().splitlines()[-1] == (
            f"interrupted: stopped waiting with 0 of 4 shards done; Slurm job(s) {jobs[0]} keep running: follow "
            f"with python -m pipelines.status {output}")
        queue = subprocess.run(["squeue", "-h", "-o", "%F"], capture_output=True, text=True).stdout.split()
        assert jobs[0] in queue
    finally:
        subprocess.run(["scancel", blocker, *json.loads(jobs_file.read_text())["job_ids"]] if jobs_file.exists()
                       else ["scancel", blocker])


@pytest.mark.slurm
def test_slurm_tasks_get_their_cpus(slurm, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # the job unpickles this test module's step
    seen = tmp_path / "seen"
    seen.mkdir()
    run_executor([RecordTaskCpus(str(seen))], world_size=1, shards=range(0, 1), logging_dir=str(tmp_path / "logs"),
                 options=ExecutorOptions(executor="slurm", slurm_cpus_per_task=2, slurm_time="00:10:00",
                                         slurm_mem_per_cpu_gb=1))
    assert (seen / "0").read_text() == "2"


@pytest.fixture
def ray_address():
    if importlib.util.find_spec("ray") is None:
        skip_or_fail("ray is not installed (pip install -e '.[ray]')")
    return os.environ.get("IDEFICS2_TEST_RAY_ADDRESS")  # .ci/run starts a cluster and sets "auto"


@pytest.mark.ray
def test_ray_executor_matches_local(ray_address, local_output, tmp_path):
    extra = ["--ray-address", ray_address] if ray_address else []
    result = run_command("pipelines.obelics", *offline_steps(), "--input", SAMPLE_OBELICS, "--output", str(tmp_path),
                         "--executor", "ray", *extra, timeout=300, env={"RAY_AUTH_MODE": "disabled"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_outputs(local_output, tmp_path)


@pytest.mark.ray
def test_ray_tasks_get_their_cpus(ray_address, tmp_path, monkeypatch):
    import ray.cloudpickle

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    ray.cloudpickle.register_pickle_by_value(sys.modules[RecordTaskCpus.__module__])  # workers need not import it
    try:
        seen = tmp_path / "seen"
        seen.mkdir()
        run_executor([RecordTaskCpus(str(seen))], world_size=1, shards=range(0, 1),
                     logging_dir=str(tmp_path / "logs"),
                     options=ExecutorOptions(executor="ray", ray_address=ray_address, ray_cpus_per_task=2))
    finally:
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[RecordTaskCpus.__module__])
    assert (seen / "0").read_text() == "2"


def _pairs_and_pages() -> dict[str, tuple[str, list[str]]]:
    from pipelines.demo import sample_path

    return {
        "laion_coco": ("pipelines.laion_coco", ["--input", sample_path("laion_coco"), "--optout-list",
                                                sample_path("optout.txt"), "--images", sample_path("img2dataset"),
                                                "--steps", "optout,images,min_size,nsfw", "--nsfw-drop-top", "0.07"]),
        "pdfa": ("pipelines.pdfa", ["--input", sample_path("pdfa"), "--steps", "pages,min_text"]),
    }


def _same_files(a: Path, b: Path) -> None:
    for kind in ("data", "removed"):
        names = sorted(p.name for p in (a / kind).iterdir())
        assert names == sorted(p.name for p in (b / kind).iterdir()) and names
        for name in names:
            assert (a / kind / name).read_bytes() == (b / kind / name).read_bytes(), f"{kind}/{name}"


@pytest.mark.slurm
@pytest.mark.parametrize("pipeline", ["laion_coco", "pdfa"])
def test_pairs_and_pages_on_slurm_match_local(slurm, pipeline, tmp_path):
    """The new pipelines run on Slurm through the shared code, calibration pass included, as OBELICS does."""
    module, flags = _pairs_and_pages()[pipeline]
    local = run_command(module, *flags, "--output", str(tmp_path / "local"))
    assert local.returncode == 0, local.stderr[-3000:]
    remote = run_command(module, *flags, "--output", str(tmp_path / "slurm"), *SLURM_FLAGS, timeout=300)
    assert remote.returncode == 0, remote.stderr[-3000:]
    _same_files(tmp_path / "local", tmp_path / "slurm")


@pytest.mark.ray
@pytest.mark.parametrize("pipeline", ["laion_coco", "pdfa"])
def test_pairs_and_pages_on_ray_match_local(ray_address, pipeline, tmp_path):
    module, flags = _pairs_and_pages()[pipeline]
    extra = ["--ray-address", ray_address] if ray_address else []
    local = run_command(module, *flags, "--output", str(tmp_path / "local"))
    assert local.returncode == 0, local.stderr[-3000:]
    remote = run_command(module, *flags, "--output", str(tmp_path / "ray"), "--executor", "ray", *extra,
                         timeout=300, env={"RAY_AUTH_MODE": "disabled"})
    assert remote.returncode == 0, remote.stderr[-3000:]
    _same_files(tmp_path / "local", tmp_path / "ray")
