"""Shared helpers: the shipped sample, running a real command as a subprocess, reading outputs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipelines.demo import sample_path

SAMPLE_OBELICS = sample_path("obelics")
MODELS = sample_path("models")
# every OBELICS step, offline: opt-outs from the shipped list, images from the shipped img2dataset download,
# the shipped tiny models (the LAION-style CLIP detector for NSFW)
OFFLINE_STEPS = ["--optout-list", sample_path("optout.txt"), "--images", sample_path("img2dataset"),
                 "--ppl-model", f"{MODELS}/tiny-falcon", "--nsfw-clip-model", f"{MODELS}/tiny-clip",
                 "--nsfw-head", f"{MODELS}/tiny-clip-nsfw-head.safetensors"]
REPO = Path(__file__).resolve().parent.parent


def run_command(module: str, *args: str, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m module args...` as a user runs it."""
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO, env={**os.environ, **(env or {})})


def output_tables(output: Path, kind: str = "data") -> dict[str, "pq.Table"]:
    return {p.name: pq.read_table(p) for p in sorted((output / kind).glob("*.parquet"))}


def clusters_required() -> bool:
    """CI sets this so that a cluster that failed to start fails the tests instead of skipping them."""
    return os.environ.get("IDEFICS2_REQUIRE_CLUSTERS") == "1"


def skip_or_fail(reason: str) -> None:
    if clusters_required():
        pytest.fail(reason)
    pytest.skip(reason)
