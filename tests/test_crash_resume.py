"""Crash-resume for every command: SIGKILL the whole run (its process group: the command and every worker) at
three seeded random moments, resume each time with the same command, and compare the final output with an
uninterrupted run's: every kept, removed, image and decontamination file byte for byte, and the summary and
calibrated thresholds exactly (summary.json holds no timing field).

A command is one row of `COMMANDS`: its module, how to build its flags for an input and output, and which of its
output folders and files must come out identical. Adding the mixture or the Cauldron build is one more row.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.demo import sample_path
from tests.conftest import MODELS, REPO, run_command, sample_decontam_index

KILLS = 3
SEED = 14  # the number: the kill moments are random, but the same on every run of the test


@dataclass(frozen=True)
class Command:
    """A command as a user runs it, and what of its output must not depend on being killed and resumed."""

    module: str
    make_input: Callable[[Path], None]  # writes the command's input into an empty folder
    flags: Callable[[Path, Path], list[str]]  # (input folder, output folder) -> every flag
    folders: tuple[str, ...]  # every file in them compared byte for byte ("." the whole output but logs/, cache/)
    files: tuple[str, ...] = ("summary.json",)  # compared byte for byte too (JSON: but for `timing`)
    timing: tuple[str, ...] = ()  # keys of those JSON files that hold times, left out of the comparison


def copies(source: str, suffix: str, n: int, repeat: int = 1) -> Callable[[Path], None]:
    """`n` copies of the sample's files, parquet rows repeated `repeat` times: more and longer shards, so the
    kills land between and inside them."""
    def make(folder: Path) -> None:
        for copy in range(n):
            for path in sorted(Path(source).glob(f"*{suffix}")):
                target = folder / f"{copy:02d}-{path.name}"
                if repeat == 1:
                    shutil.copyfile(path, target)
                else:
                    pq.write_table(pa.concat_tables([pq.read_table(path)] * repeat), target)
    return make


def pipeline_outputs(folder: Path) -> None:
    """What a mixture is built from: the sample pipelines' outputs with the steps a mixture needs (fast)."""
    images = sample_path("img2dataset")
    for module, name, flags in (("pipelines.obelics", "obelics", ["--input", sample_path("obelics"), "--steps",
                                                                  "structure,images", "--images", images]),
                                ("pipelines.laion_coco", "laion_coco", ["--input", sample_path("laion_coco"),
                                                                        "--steps", "images", "--images", images]),
                                ("pipelines.pdfa", "pdfa", ["--input", sample_path("pdfa"), "--steps", "pages"])):
        result = run_command(module, *flags, "--output", str(folder / name), "--workers", "2")
        assert result.returncode == 0, result.stderr[-3000:]


WORKERS = ["--workers", "2"]
TOKENIZER = f"{MODELS}/tiny-falcon"

COMMANDS = {
    # every step, the calibrated perplexity cut (a pre-pass) and two model steps with the tiny models
    "obelics": Command("pipelines.obelics", copies(sample_path("obelics"), ".parquet", 2), lambda inp, out: [
        "--input", str(inp), "--output", str(out), *WORKERS, "--limit", "30",
        "--optout-list", sample_path("optout.txt"), "--images", sample_path("img2dataset"), "--ppl-model", f"{MODELS}/tiny-falcon",
        "--nsfw-backend", "classifier", "--nsfw-model", f"{MODELS}/tiny-nsfw-vit",
        "--decontam-index", sample_decontam_index()],
        folders=("data", "removed", "images", "decontam"),
        files=("summary.json", "thresholds.json", "decontam_report.json")),
    # the paper's 7% NSFW cut (calibrated on punsafe), decoded sizes, and the fastText language model step
    "laion_coco": Command("pipelines.laion_coco", copies(sample_path("laion_coco"), ".parquet", 3, repeat=10), lambda inp, out: [
        "--input", str(inp), "--output", str(out), *WORKERS, "--optout-list", sample_path("optout.txt"),
        "--images", sample_path("img2dataset"), "--nsfw-drop-top", "0.07",
        "--steps", "optout,images,min_size,nsfw,decontam,language",
        "--lang-model", f"{MODELS}/tiny-lid/model.bin", "--decontam-index", sample_decontam_index()],
        folders=("data", "removed", "decontam"), files=("summary.json", "thresholds.json", "decontam_report.json")),
    # rendering, text, the language model step and decontamination
    "pdfa": Command("pipelines.pdfa", copies(sample_path("pdfa"), ".tar", 5), lambda inp, out: [
        "--input", str(inp), "--output", str(out), *WORKERS, "--steps", "pages,min_text,language,decontam",
        "--lang-model", f"{MODELS}/tiny-lid/model.bin", "--decontam-index", sample_decontam_index()],
        folders=("data", "removed", "decontam"), files=("summary.json", "decontam_report.json")),
    # stage 2 (all three sources), 2,000 samples in 10 shards
    "mixture": Command("pipelines.mixture", pipeline_outputs, lambda inp, out: [
        "--stage", "2", "--sources-root", str(inp), "--source", f"pages={inp / 'pdfa'}", "--output", str(out),
        "--tokenizer", TOKENIZER, "--samples", "2000", "--shard-size", "200", *WORKERS],
        folders=("data",), files=("summary.json", "mixture.json"), timing=("seconds",)),
    # every subset of the shipped Cauldron sample, decontaminated, and the SFT mixture
    "cauldron": Command("pipelines.cauldron", lambda folder: None, lambda inp, out: [
        "--source", sample_path("cauldron", "sources"), "--output", str(out), "--decontam-index",
        sample_decontam_index(), "--tokenizer", TOKENIZER, "--sft-tokens", "20000", *WORKERS],
        folders=(".",), files=()),
}


def start(command: Command, output: Path) -> subprocess.Popen:
    inputs = output.parent / "input"
    return subprocess.Popen([sys.executable, "-m", command.module, *command.flags(inputs, output)], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def uninterrupted(command: Command, output: Path) -> float:
    """Run to the end; return the mean time between two shards finishing (the pace kills are placed at)."""
    process, finished = start(command, output), []
    while process.poll() is None:
        if shards_done(output) > len(finished):
            finished.append(time.monotonic())
        time.sleep(0.005)
    assert process.returncode == 0, process.stderr.read()[-3000:]
    process.stderr.close()
    return (finished[-1] - finished[0]) / max(len(finished) - 1, 1) if finished else 0.5


def killed_and_resumed(command: Command, output: Path, shards: int, pace: float, rng: random.Random) -> list:
    """Kill the run KILLS times, then let it finish. Kill i comes once the output holds at least c_i finished
    shards (c_1 < c_2 < c_3 drawn from 0..shards-3: during the calibration pass or the first shards, and between
    later ones) plus a random delay of up to half the uninterrupted run's time between two shards, so kills land
    both between and inside shards. Returns the kill moments: (seconds after that start, shards done then).
    A file written by the run itself starts the count (not the previous run's), so no kill lands in Python's
    start-up."""
    targets = sorted(rng.sample(range(shards - 2), KILLS))
    moments = []
    for target in targets:
        delay = rng.uniform(0, pace / 2)
        process = start(command, output)
        began, started_at, reached = time.monotonic(), time.time(), None
        while process.poll() is None:  # the target counts only once this run has written something
            if reached is None and shards_done(output) >= target and touched_since(output, started_at):
                reached = time.monotonic()
            if reached is not None and time.monotonic() - reached >= delay:
                break
            time.sleep(0.005)
        assert process.poll() is None, f"the run finished before its kill ({target} shards done + {delay:.2f} s)"
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        process.stderr.close()
        moments.append((round(time.monotonic() - began, 2), shards_done(output)))
    final = start(command, output)
    _, stderr = final.communicate(timeout=600)
    assert final.returncode == 0, stderr[-3000:]
    return moments


def shards_done(output: Path) -> int:
    completions = output / "logs" / "completions"
    return len(list(completions.iterdir())) if completions.is_dir() else 0


def touched_since(folder: Path, moment: float) -> bool:
    return any(p.stat().st_mtime > moment for p in folder.rglob("*") if p.is_file())


def comparable(path: Path, timing: tuple[str, ...]):
    """The file's bytes; for JSON with timing keys, its value with those keys left out, wherever they are."""
    if not timing:
        return path.read_bytes()

    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in timing}
        return [strip(v) for v in value] if isinstance(value, list) else value
    return strip(json.loads(path.read_text()))


def files_under(folder: Path) -> dict[str, bytes]:
    """Every file under `folder`, but for the logs and caches of a whole output (folder "."): those hold times."""
    files = {str(p.relative_to(folder)): p for p in sorted(folder.rglob("*")) if p.is_file()}
    return {name: p.read_bytes() for name, p in files.items() if name.split("/")[0] not in ("logs", "cache")}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_killed_three_times_then_resumed_equals_an_uninterrupted_run(tmp_path, name):
    command = COMMANDS[name]
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    (tmp_path / "input").mkdir()
    command.make_input(tmp_path / "input")
    pace = uninterrupted(command, clean)
    shards = shards_done(clean)
    moments = killed_and_resumed(command, killed, shards, pace, random.Random(f"{SEED}-{name}"))
    print(f"{name}: {shards} shards, one every {pace:.2f} s; killed at (s, shards done) {moments}")
    for folder in command.folders:
        expected = files_under(clean / folder)
        assert expected, f"{folder}/ is empty: the comparison would prove nothing"
        got = files_under(killed / folder)
        assert sorted(got) == sorted(expected), f"{folder}/ after kills at {moments} s"
        different = [n for n in expected if got[n] != expected[n]]
        assert not different, f"{folder}/ differs after kills at {moments} s: {different}"
    for file in command.files:
        assert comparable(killed / file, command.timing) == comparable(clean / file, command.timing), \
            f"{file} after kills at {moments} s"
    leftovers = [str(p) for folder in command.folders for p in (killed / folder).rglob("*.tmp")]
    assert not leftovers
