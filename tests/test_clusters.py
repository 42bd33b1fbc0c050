"""The OBELICS pipeline on a real Slurm cluster and a real Ray cluster gives the local executor's files.

`.ci/run` starts both (and sets IDEFICS2_REQUIRE_CLUSTERS=1, so a cluster that is missing fails here);
elsewhere these tests skip when no cluster is reachable.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess

import pytest

from tests.conftest import SAMPLE_OBELICS, offline_steps, run_command, skip_or_fail


@pytest.fixture(scope="module")
def local_output(tmp_path_factory):
    output = tmp_path_factory.mktemp("local")
    result = run_command("pipelines.obelics", *offline_steps(), "--input", SAMPLE_OBELICS, "--output", str(output))
    assert result.returncode == 0, result.stderr[-2000:]
    return output


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


@pytest.mark.slurm
def test_slurm_executor_matches_local(local_output, tmp_path):
    if not slurm_node_idle():
        skip_or_fail("no Slurm cluster with an idle node (`.ci/slurm-up.sh` starts one)")
    result = run_command("pipelines.obelics", *offline_steps(), "--input", SAMPLE_OBELICS, "--output", str(tmp_path),
                         "--executor", "slurm", "--slurm-time", "00:10:00", "--slurm-mem-per-cpu-gb", "1",
                         timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "logs" / "launch_script.slurm").exists()
    assert_same_outputs(local_output, tmp_path)
    again = run_command("pipelines.obelics", *offline_steps(), "--input", SAMPLE_OBELICS, "--output", str(tmp_path),
                        "--executor", "slurm")
    assert again.returncode == 0 and "nothing to run" in again.stderr


@pytest.mark.ray
def test_ray_executor_matches_local(local_output, tmp_path):
    if importlib.util.find_spec("ray") is None:
        skip_or_fail("ray is not installed (pip install -e '.[ray]')")
    address = os.environ.get("IDEFICS2_TEST_RAY_ADDRESS")  # .ci/run starts a cluster and sets "auto"
    extra = ["--ray-address", address] if address else []
    result = run_command("pipelines.obelics", *offline_steps(), "--input", SAMPLE_OBELICS, "--output", str(tmp_path),
                         "--executor", "ray", *extra, timeout=300, env={"RAY_AUTH_MODE": "disabled"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_outputs(local_output, tmp_path)
