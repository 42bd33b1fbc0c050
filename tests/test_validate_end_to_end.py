"""`mixtures.validate` and `pipelines.push --dry-run` on a mixture the real builder made (`pipelines.mixture`) from
the sample pipelines' outputs, as a user chains the commands."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

from pipelines.demo import sample_path
from tests.conftest import run_command
from tests.test_mixture import sources  # noqa: F401  (the sample pipelines' outputs, a pytest fixture)


@pytest.fixture(scope="module")
def stage2(sources, tmp_path_factory) -> Path:  # noqa: F811
    output = tmp_path_factory.mktemp("stage2") / "mixture"
    result = run_command("pipelines.mixture", "--stage", "2", "--sources-root", str(sources), "--output", str(output),
                         "--tokenizer", sample_path("models", "tiny-falcon"), "--samples", "200", "--shard-size",
                         "50", "--workers", "1", "--source", f"pages={sources / 'pdfa'}")
    assert result.returncode == 0, result.stderr
    return output


def test_builder_output_validates_and_pushes(stage2, tmp_path):
    result = run_command("mixtures.validate", str(stage2), "--json")
    report = json.loads(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    assert set(report["sources"]) == {"obelics", "pairs", "pages"}
    assert sum(s["samples"] for s in report["sources"].values()) == 200
    assert all(s["max_side_seen"] <= 980 for s in report["sources"].values())
    result = run_command("pipelines.push", str(stage2), "--repo-id", "org/stage2", "--dry-run", str(tmp_path / "hub"))
    assert result.returncode == 0, result.stderr
    rows = datasets.load_dataset(str(tmp_path / "hub"), split="train")
    assert len(rows) == 200
    most = max(sum(r[k] is not None for k in rows.features if k.endswith(".jpg")) for r in rows)
    assert most == json.loads((stage2 / "summary.json").read_text())["max_images"]  # every image kept


def test_a_target_the_builder_did_not_meet_fails(stage2, tmp_path):
    skewed = tmp_path / "skewed"
    skewed.mkdir()
    (skewed / "data").symlink_to(stage2 / "data")
    info = json.loads((stage2 / "mixture.json").read_text())
    info["sources"]["obelics"]["share"] -= 0.05
    info["sources"]["pairs"]["share"] += 0.05
    (skewed / "mixture.json").write_text(json.dumps(info))
    result = run_command("mixtures.validate", str(skewed))
    assert result.returncode == 1 and "obelics: share" in result.stdout and "pairs: share" in result.stdout
