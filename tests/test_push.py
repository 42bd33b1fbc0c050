"""`python -m pipelines.push`: the calls made at huggingface_hub's `HfApi` boundary (no network), the folder that is
uploaded loaded with `datasets.load_dataset` as the Hub would serve it, and the token kept out of logs and card."""

from __future__ import annotations

from pathlib import Path

import datasets
import httpx2  # huggingface_hub 2.x's HTTP client
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError

from pipelines.push import main
from tests.conftest import run_command
from tests.test_validate import (make_sample, write_cauldron_export, write_mixture, write_pipeline_output,
                                 write_sft_mixture)

FAKE_TOKEN = "hf_FakeTokenForTestsOnly0123456789abcdef"


class RecordingHub:
    """Stands in for the Hub at the `HfApi` methods push calls; loads the uploaded folder while it exists."""

    def __init__(self, monkeypatch, load=None, fail: Exception | None = None):
        self.calls, self.loaded, self.card, self.files, self.load, self.fail = [], None, "", [], load, fail
        monkeypatch.setattr(HfApi, "create_repo", self.create_repo)
        monkeypatch.setattr(HfApi, "create_branch", self.create_branch)
        monkeypatch.setattr(HfApi, "upload_folder", self.upload_folder)

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def create_branch(self, repo_id, **kwargs):
        self.calls.append(("create_branch", repo_id, kwargs))

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs["repo_id"], kwargs))
        if self.fail:
            raise self.fail
        folder = Path(kwargs["folder_path"])
        self.files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        self.card = (folder / "README.md").read_text()
        # what huggingface_hub itself would commit from this folder (its README check calls the Hub: left out)
        operations = HfApi()._prepare_upload_folder_additions(folder, "", ignore_patterns=["README.md"])
        self.uploaded_sizes = {op.path_in_repo: op.upload_info.size for op in operations}
        if self.load:
            self.loaded = self.load(str(folder))
        return type("CommitInfo", (), {"commit_url": f"https://huggingface.co/datasets/{kwargs['repo_id']}/commit/1"})


@pytest.fixture
def logs():
    """Everything push logs (datatrove's loguru logger), as one string at the end of the test."""
    from datatrove.utils.logging import logger

    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(str(message)), level="DEBUG")
    yield lines
    logger.remove(sink)


@pytest.fixture
def token(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    return FAKE_TOKEN


def mixture_with_many_images(tmp_path: Path) -> Path:
    """Seven samples of one or two images, then one of three: `datasets` infers columns from the first five."""
    many = make_sample("pairs-many", "pairs", n_images=3)
    return write_mixture(tmp_path / "m", {"obelics": 7, "pairs": 2}, shards=1, extra_samples=[many],
                         shares={"obelics": 0.7, "pairs": 0.3})


def test_push_calls_the_hub_with_the_folder_that_loads(tmp_path, monkeypatch, token, capfd, logs):
    folder = mixture_with_many_images(tmp_path)
    hub = RecordingHub(monkeypatch, load=lambda path: datasets.load_dataset(path, split="train"))
    code = main([str(folder), "--repo-id", "org/stage1", "--private", "--revision", "v1", "--message", "stage 1"])
    assert code == 0
    (_, repo, create), (_, _, branch), (_, _, upload) = hub.calls
    assert repo == "org/stage1" and create == {"repo_type": "dataset", "private": True, "exist_ok": True}
    assert branch == {"repo_type": "dataset", "branch": "v1", "exist_ok": True}
    assert upload["repo_type"] == "dataset" and upload["revision"] == "v1" and upload["commit_message"] == "stage 1"
    assert hub.files == ["README.md", "data/00000.tar", "mixture.json", "summary.json"]
    assert hub.uploaded_sizes == {name: (folder / name).stat().st_size for name in hub.files[1:]}  # links followed
    rows = hub.loaded
    assert len(rows) == 10 and set(rows.features) == {"json", "0.jpg", "1.jpg", "2.jpg"}
    last = rows[-1]
    assert last["json"]["source"] == "pairs" and all(last[f"{i}.jpg"] is not None for i in range(3))
    assert not Path(upload["folder_path"]).exists()  # the staging view is removed after the upload
    printed, logged = capfd.readouterr(), "".join(logs)
    assert token not in printed.out + printed.err + logged + hub.card
    assert "pushed: https://huggingface.co/datasets/org/stage1" in logged


def test_card_holds_configs_recipe_validation_summary_and_licences(tmp_path, monkeypatch, token):
    folder = write_mixture(tmp_path / "m", {"obelics": 70, "pairs": 30})
    (folder / "decontam_report.md").write_text("# Decontamination\n\n3 documents matched vqa_sample\n")
    hub = RecordingHub(monkeypatch)
    assert main([str(folder), "--repo-id", "org/m"]) == 0
    card = hub.card
    front = card.split("---\n")[1]
    assert "license: cc-by-4.0" in front and "path: data/*.tar" in front and "name: 1.jpg" in front
    assert "| OBELICS | HuggingFaceM4/OBELICS | CC-BY-4.0 |" in card and "laion/laion-coco" in card
    assert "| obelics | 70.00% | 2048 | 384 |" in card and '"stage": 1' in card  # the recipe and stage spec
    assert "all checks passed" in card and "## Run summary" in card and '"max_images": 2' in card
    assert "3 documents matched vqa_sample" in card and "decontam_report.md" in hub.files
    assert str(tmp_path) not in card  # no local paths
    create = hub.calls[0][2]
    assert create["private"] is False and hub.calls[1][2]["revision"] is None  # no branch call without --revision


def test_failed_checks_push_nothing(tmp_path, monkeypatch, token, logs):
    folder = write_mixture(tmp_path / "m", {"obelics": 50, "pairs": 50})
    hub = RecordingHub(monkeypatch)
    assert main([str(folder), "--repo-id", "org/m"]) == 1
    assert hub.calls == [] and "not pushed" in "".join(logs)
    assert main([str(folder), "--repo-id", "org/m", "--force"]) == 0
    assert [c[0] for c in hub.calls] == ["create_repo", "upload_folder"] and "FAILED: obelics" in hub.card


def test_no_token_is_one_line(tmp_path, monkeypatch, capsys):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    hub = RecordingHub(monkeypatch)
    assert main([str(write_mixture(tmp_path / "m")), "--repo-id", "org/m"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no Hugging Face token") and err.count("\n") == 1 and hub.calls == []


def refused() -> Exception:
    request = httpx2.Request("POST", "https://huggingface.co/api/datasets/org/m/commit/main")
    return HfHubHTTPError("403 Forbidden: you cannot write to org/m", response=httpx2.Response(403, request=request))


def unreachable() -> Exception:
    return httpx2.ConnectError("[Errno 111] Connection refused")  # what the Hub's HTTP client raises offline


@pytest.mark.parametrize("failure", [refused, unreachable])
def test_a_refused_or_unreachable_hub_is_one_line_without_the_token(tmp_path, monkeypatch, token, capsys, failure):
    RecordingHub(monkeypatch, fail=failure())
    assert main([str(write_mixture(tmp_path / "m")), "--repo-id", "org/m"]) == 3
    err = capsys.readouterr().err
    assert err.startswith("error: upload to datasets/org/m failed: ") and "run the same command again" in err
    assert err.count("\n") == 1 and token not in err


def test_bad_arguments_are_one_line(tmp_path, token, capsys):
    folder = write_mixture(tmp_path / "m")
    for args in (["--repo-id", "no-slash"], ["--repo-id", "a/../b"]):
        assert main([str(folder), *args]) == 2
    assert main([str(tmp_path / "missing"), "--repo-id", "org/m"]) == 2
    assert main(["hf://datasets/org/m", "--repo-id", "org/m"]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 4 and all(line.startswith("error: ") for line in errors)


def test_a_link_leading_outside_the_folder_is_refused(tmp_path, token, monkeypatch, capsys):
    secret = tmp_path / "secret.json"
    secret.write_text("{}")
    folder = write_mixture(tmp_path / "m")
    (folder / "manifest.json").symlink_to(secret)
    hub = RecordingHub(monkeypatch)
    assert main([str(folder), "--repo-id", "org/m"]) == 2
    assert "leads outside" in capsys.readouterr().err and hub.calls == []


def test_pipeline_output_dry_run_loads_the_kept_documents(tmp_path):
    folder = write_pipeline_output(tmp_path / "out", kept=4)
    for name in ("logs", "cache", "scores"):
        (folder / name).mkdir()
        (folder / name / "x.json").write_text("{}")
    result = run_command("pipelines.push", str(folder), "--repo-id", "org/obelics", "--dry-run",
                         str(tmp_path / "stage"))
    assert result.returncode == 0, result.stderr
    staged = sorted(p.relative_to(tmp_path / "stage").as_posix() for p in (tmp_path / "stage").rglob("*")
                    if p.is_file())
    assert staged == ["README.md", "data/00000.parquet", "manifest.json", "summary.json"]
    rows = datasets.load_dataset(str(tmp_path / "stage"), split="train")
    assert rows["text"] == [f"doc {i}" for i in range(4)]
    card = (tmp_path / "stage" / "README.md").read_text()
    assert "HuggingFaceM4/OBELICS" in card and "optout/document_opted_out" in card


def test_cauldron_export_has_one_config_per_subset_and_the_sft_mixture_as_default(tmp_path):
    folder = write_cauldron_export(tmp_path / "cauldron", {"ai2d": 3, "vqav2": 5})
    write_sft_mixture(folder / "sft", {"vqav2": 60, "ai2d": 40}, {"vqav2": 0.6, "ai2d": 0.4})
    (folder / "removed").mkdir()  # the build's removal records: not a subset, not pushed
    pq.write_table(pa.table({"reason": ["eval_match"]}), folder / "removed" / "ai2d.parquet")
    assert main([str(folder), "--repo-id", "org/cauldron", "--dry-run", str(tmp_path / "stage")]) == 0
    stage = str(tmp_path / "stage")
    staged = sorted(p.relative_to(tmp_path / "stage").as_posix() for p in (tmp_path / "stage").rglob("*")
                    if p.is_file())
    assert staged == ["README.md", "ai2d/train-00000.parquet", "sft/data/00000.parquet", "sft/mixture.json",
                      "vqav2/train-00000.parquet"]
    assert len(datasets.load_dataset(stage, "ai2d", split="train")) == 3
    vqav2 = datasets.load_dataset(stage, "vqav2", split="train")
    assert vqav2[0]["texts"][0]["assistant"] == "A red square." and vqav2[0]["images"][0].size == (40, 30)
    sft = datasets.load_dataset(stage, split="train")
    assert len(sft) == 10 and set(sft["subset"]) == {"vqav2", "ai2d"}
    card = (tmp_path / "stage" / "README.md").read_text()
    assert "varies per subset" in card and "license: other" in card
