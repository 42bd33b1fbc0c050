"""Shared helpers: the shipped sample, running a real command as a subprocess, reading outputs."""

from __future__ import annotations

import functools
import os
import subprocess
import tempfile
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipelines.demo import sample_path

SAMPLE_OBELICS = sample_path("obelics")
MODELS = sample_path("models")


@functools.lru_cache(maxsize=1)
def sample_decontam_index() -> str:
    """The sample evaluation set's decontamination index, built once per test session."""
    from filters.decontam.__main__ import main as decontam

    index = os.path.join(tempfile.mkdtemp(prefix="decontam-index-"), "index")
    assert decontam(["build", "--output", index, "--from", f"vqa_sample={sample_path('eval')}"]) == 0
    return index


def offline_steps() -> list[str]:
    """Flags for every OBELICS step, offline: opt-outs from the shipped list, images from the shipped img2dataset
    download, the shipped tiny models (the LAION-style CLIP detector for NSFW), the sample decontamination index."""
    return ["--optout-list", sample_path("optout.txt"), "--images", sample_path("img2dataset"),
            "--ppl-model", f"{MODELS}/tiny-falcon", "--nsfw-clip-model", f"{MODELS}/tiny-clip",
            "--nsfw-head", f"{MODELS}/tiny-clip-nsfw-head.safetensors", "--decontam-index", sample_decontam_index()]
REPO = Path(__file__).resolve().parent.parent


def run_command(module: str, *args: str, timeout: float = 600, env: dict | None = None,
                cwd: Path | str = REPO) -> subprocess.CompletedProcess:
    """`python -m module args...` as a user runs it (from the repository, or from `cwd`)."""
    environment = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd, env=environment)


def output_tables(output: Path, kind: str = "data") -> dict[str, "pq.Table"]:
    return {p.name: pq.read_table(p) for p in sorted((output / kind).glob("*.parquet"))}


def clusters_required() -> bool:
    """CI sets this so that a cluster that failed to start fails the tests instead of skipping them."""
    return os.environ.get("IDEFICS2_REQUIRE_CLUSTERS") == "1"


def skip_or_fail(reason: str) -> None:
    if clusters_required():
        pytest.fail(reason)
    pytest.skip(reason)
