"""Scale rehearsal: every pipeline with all its steps on a generated corpus, then both stage mixtures and the
Cauldron SFT mixture; per-step throughput per core, peak memory per worker at 1x and 4x the documents per shard,
and the projected cost of the full runs.

    python benchmarks/scale_rehearsal.py --root /data/rehearsal                          # small: 4 x 200
    python benchmarks/scale_rehearsal.py --root /data/rehearsal --shards 64 --docs-per-shard 2000 --pdfs 300 \
        --slurm                                                                          # the issue's size

What it does, in order:
1. `benchmarks/scale_corpus.py` writes the corpus (OBELICS, LAION-COCO, their img2dataset download, an opt-out
   list, PDFA tars) at 1x, and at 4x the documents per shard on `--shards-4x` shards (memory depends on a shard's
   size, not on how many there are).
2. Each pipeline runs with all its steps on the local executor with `--workers` workers (the shipped tiny models;
   a decontamination index of the shipped evaluation set), at 1x and 4x; with `--slurm`, again at 1x on the Slurm
   cluster (`.ci/slurm-up.sh` starts a single-node one).
3. `pipelines.mixture --stage 1` and `--stage 2` on the 1x outputs, and `pipelines.cauldron` on the shipped
   Cauldron sample, timed and measured the same way (skipped if those modules are absent).

How it measures:
- Per step: datatrove's per-task stats (`OUTPUT/logs/stats/NNNNN.json`, and `logs/calibration/stats/` for a
  calibration pre-pass): the seconds each step spent in each task, summed over tasks, and the documents that
  entered it. One task runs on one core (the executors give each task its share of the cores), so documents
  per step-second is documents per second per core. Images per second where the step counts them (`images`:
  every image status; `nsfw`: images scored); pairs carry one image each; PDFA's documents are pages.
- Peak memory per worker: the kernel's high-water mark (`VmHWM` in `/proc/PID/status`) of every process the
  command starts, read every 0.1 s until it exits; the largest among the workers (the command's own process is
  reported apart). Beside it the largest anonymous memory seen (`RssAnon`, sampled at the same reads): the
  high-water mark also counts file pages mapped in (the img2dataset index, model weights), which the kernel can
  drop and which grow with the files a worker has read, not with what it holds. Not measured for Slurm jobs
  (slurmd starts them, not this script).
- Projection: the full runs' CPU-hours from the per-core figures of the CPU steps, and GPU-hours of the model
  steps from measured GPU figures (below), since the tiny models' CPU speed says nothing about the real ones.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from importlib.util import find_spec
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.scale_corpus import CorpusSize, generate  # noqa: E402
from filters.pixels import CACHE_BYTES  # noqa: E402

SAMPLE = REPO / "pipelines" / "sample_data"
MODELS = SAMPLE / "models"

# Full-run sizes. OBELICS: 141,047,697 documents (Hub dataset card, config default), 350M images (Idefics2 paper,
# section 3.1). LAION-COCO: 600M pairs (laion/laion-coco card). PDFA: 2,159,432 documents, 18M pages in 1,800
# shards (pixparse/pdfa-eng-wds card).
FULL_RUNS = {"obelics": {"documents": 141_047_697, "images": 350_000_000},
             "laion_coco": {"documents": 600_000_000, "images": 600_000_000},
             "pdfa": {"documents": 18_000_000, "images": 18_000_000}}
# GPU figures, one H200 in bf16, random weights of the real shapes (the scale issue's measurements):
# Falcon-RW-1B on 512-token windows, length-sorted padded batches of 32; CLIP ViT-L/14.
GPU_PERPLEXITY_TOKENS_PER_S = 128_000
GPU_CLIP_IMAGES_PER_S = 2_360
PERPLEXITY_WINDOW = 512  # the paper's Falcon-1B window; most OBELICS documents are longer (115B tokens / 141M)
MODEL_STEPS = {"perplexity", "nsfw"}  # on a GPU in a real run (language is fastText: CPU, counted with the CPU steps)
MEMORY_TOLERANCE = 0.20  # the issue: peak memory at 4x within 20% of 1x


@dataclass
class StepFigure:
    name: str
    seconds: float  # summed over tasks: core-seconds
    documents: int
    images: int | None = None

    @property
    def per_core(self) -> float:
        return self.documents / self.seconds if self.seconds > 0 else float("inf")


@dataclass
class Measured:
    label: str
    seconds: float
    status: int
    worker_peak_mib: float | None
    main_peak_mib: float | None
    worker_anon_mib: float | None = None  # largest RssAnon sampled in a worker
    documents: int | None = None
    steps: list[StepFigure] = field(default_factory=list)


# ---------------------------------------------------------------- measuring a command


def _children_of() -> dict[int, list[int]]:
    children = defaultdict(list)
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children[ppid].append(int(entry.name))
    return children


def _descendants(pid: int) -> list[int]:
    children, found, todo = _children_of(), [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _memory_kib(pid: int) -> dict[str, int]:
    """`VmHWM` (peak resident, file pages included) and `RssAnon` (resident anonymous memory now) of `pid`."""
    found = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmHWM:", "RssAnon:")):
                    found[line.split(":")[0]] = int(line.split()[1])
    except OSError:
        pass
    return found


def measure(label: str, command: list[str], log: Path) -> Measured:
    """Run `command`; its wall time and the peak memory of its own process and of its largest worker."""
    start = time.perf_counter()
    with open(log, "w") as out:
        process = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                   env={**os.environ, "PYTHONPATH": str(REPO)})
        peaks: dict[int, int] = {}
        anon: dict[int, int] = {}
        while process.poll() is None:
            for pid in [process.pid, *_descendants(process.pid)]:
                kib = _memory_kib(pid)
                peaks[pid] = max(peaks.get(pid, 0), kib.get("VmHWM", 0))
                anon[pid] = max(anon.get(pid, 0), kib.get("RssAnon", 0))
            time.sleep(0.1)
    seconds = time.perf_counter() - start
    workers = [kib for pid, kib in peaks.items() if pid != process.pid and kib]
    workers_anon = [kib for pid, kib in anon.items() if pid != process.pid and kib]
    main = peaks.get(process.pid)
    return Measured(label, seconds, process.returncode, max(workers) / 1024 if workers else None,
                    main / 1024 if main else None, max(workers_anon) / 1024 if workers_anon else None)


# ---------------------------------------------------------------- per-step figures from datatrove's stats


def _value(value) -> float:
    return value.get("total", 0) if isinstance(value, dict) else value


def step_figures(logs: Path, prefix: str = "") -> list[StepFigure]:
    """Every step's summed seconds and documents in, over the per-task stats files of `logs/stats/`."""
    seconds: dict[str, float] = defaultdict(float)
    counts: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    order: list[str] = []
    for path in sorted((logs / "stats").glob("*.json")):
        for entry in json.loads(path.read_text()):
            name = prefix + entry["name"].rsplit(": ", 1)[-1]
            if name not in order:
                order.append(name)
            seconds[name] += _value(entry.get("time_stats") or 0.0)  # a step never timed has a bare 0
            for key, value in entry.get("stats", {}).items():
                counts[name][key] += _value(value)
    figures = []
    for name in order:
        stats = counts[name]
        documents = stats.get("documents", stats.get("total", stats.get("kept", 0)))
        if name.endswith("writer"):
            documents = stats.get("kept", 0) + sum(v for k, v in stats.items() if k.startswith("removed/"))
        images = (sum(v for k, v in stats.items() if k.startswith("image_status/")) or stats.get("images_scored")
                  or None)
        figures.append(StepFigure(name, seconds[name], int(documents), int(images) if images else None))
    return figures


# ---------------------------------------------------------------- the commands


def pipeline_commands(corpus: dict[str, Path], index: str, workers: int) -> dict[str, list[str]]:
    """Each pipeline with all its steps, offline, with the shipped tiny models."""
    common = ["--workers", str(workers), "--decontam-index", index]
    optout_images = ["--optout-list", str(corpus["optout"]), "--images", str(corpus["img2dataset"])]
    language = ["--lang-model", str(MODELS / "tiny-lid" / "model.bin")]
    return {
        "obelics": ["pipelines.obelics", "--input", str(corpus["obelics"]), *common, *optout_images,
                    "--ppl-model", str(MODELS / "tiny-falcon"), "--nsfw-clip-model", str(MODELS / "tiny-clip"),
                    "--nsfw-head", str(MODELS / "tiny-clip-nsfw-head.safetensors")],
        "laion_coco": ["pipelines.laion_coco", "--input", str(corpus["laion_coco"]), *common, *optout_images,
                       "--nsfw-drop-top", "0.07", "--steps", "optout,images,min_size,nsfw,decontam,language",
                       *language],
        "pdfa": ["pipelines.pdfa", "--input", str(corpus["pdfa"]), *common,
                 "--steps", "pages,min_text,language,decontam", *language],
    }


SLURM_FLAGS = ["--executor", "slurm", "--slurm-time", "02:00:00", "--slurm-mem-per-cpu-gb", "2"]


def run_pipelines(corpus: dict[str, Path], out: Path, index: str, workers: int, label: str,
                  extra: list[str] = ()) -> list[Measured]:
    results = []
    out.mkdir(parents=True, exist_ok=True)
    for name, command in pipeline_commands(corpus, index, workers).items():
        output = out / name
        run = measure(f"{label} {name}", [sys.executable, "-m", *command, *extra, "--output", str(output)],
                      out / f"{name}.log")
        if extra == SLURM_FLAGS:  # the workers are slurmd's children: what was measured is the submitting side
            run.worker_peak_mib = run.worker_anon_mib = None
        if run.status == 0:
            summary = json.loads((output / "summary.json").read_text())["total"]
            run.documents = summary["input"]
            calibration = output / "logs" / "calibration"
            run.steps = (step_figures(calibration, "calibration: ") if calibration.is_dir() else []) + \
                step_figures(output / "logs")
        results.append(run)
        print(report_line(run), file=sys.stderr, flush=True)
    return results


def run_mixtures(outputs: Path, index: str, workers: int) -> list[Measured]:
    """Both stage mixtures from the pipelines' 1x outputs, and the Cauldron SFT mixture from its shipped sample."""
    tokenizer = str(MODELS / "tiny-falcon")
    commands = {}
    if find_spec("pipelines.mixture"):
        for stage, extra in (("1", []), ("2", ["--source", f"pages={outputs / 'pdfa'}"])):
            commands[f"mixture stage {stage}"] = [
                "pipelines.mixture", "--stage", stage, "--sources-root", str(outputs), *extra, "--tokenizer",
                tokenizer, "--workers", str(workers), "--output", str(outputs / f"stage{stage}")]
    if find_spec("pipelines.cauldron") and (SAMPLE / "cauldron" / "sources").is_dir():
        commands["cauldron"] = ["pipelines.cauldron", "--source", str(SAMPLE / "cauldron" / "sources"),
                                "--decontam-index", index, "--tokenizer", tokenizer, "--workers", str(workers),
                                "--output", str(outputs / "cauldron")]
    results = []
    for label, command in commands.items():
        run = measure(label, [sys.executable, "-m", *command], outputs / f"{label.replace(' ', '_')}.log")
        summary = Path(command[-1]) / "summary.json"
        if run.status == 0 and summary.exists():
            data = json.loads(summary.read_text())
            run.documents = data.get("samples") or data.get("total", {}).get("input") if isinstance(data, dict) \
                else None
        results.append(run)
        print(report_line(run), file=sys.stderr, flush=True)
    return results


# ---------------------------------------------------------------- reporting


def _mib(value: float | None) -> str:
    return f"{value:,.0f} MiB" if value is not None else "n/a"


def report_line(run: Measured) -> str:
    docs = f", {run.documents:,} in" if run.documents is not None else ""
    state = "" if run.status == 0 else f"  FAILED (exit {run.status})"
    return (f"{run.label}: {run.seconds:.1f} s{docs}; peak per worker {_mib(run.worker_peak_mib)} "
            f"(anonymous {_mib(run.worker_anon_mib)}), command {_mib(run.main_peak_mib)}{state}")


def step_table(run: Measured, unit: str) -> list[str]:
    lines = [f"| {run.label} | step | core-seconds | {unit} in | {unit}/s/core | images/s/core |",
             "|---|---|---:|---:|---:|---:|"]
    for step in run.steps:
        images = f"{step.images / step.seconds:,.1f}" if step.images and step.seconds > 0 else ""
        lines.append(f"| | {step.name} | {step.seconds:,.2f} | {step.documents:,} | {step.per_core:,.1f} | "
                     f"{images} |")
    return lines


def cpu_rate(run: Measured) -> float:
    """Documents per core-second through every CPU step (model steps excluded: they run on GPUs at scale)."""
    seconds = sum(s.seconds for s in run.steps if s.name.split(": ")[-1] not in MODEL_STEPS)
    return run.documents / seconds if seconds else float("inf")


def projection(runs: list[Measured]) -> list[str]:
    lines = ["| run | size | CPU steps, core-hours | model steps on one H200, GPU-hours |", "|---|---|---:|---:|"]
    for run in runs:
        name = run.label.split()[-1]
        if run.status or name not in FULL_RUNS or not run.documents:
            continue
        full = FULL_RUNS[name]
        cpu_hours = full["documents"] / cpu_rate(run) / 3600
        gpu_seconds = 0.0
        if name == "obelics":  # perplexity on every document, CLIP on every image
            gpu_seconds = full["documents"] * PERPLEXITY_WINDOW / GPU_PERPLEXITY_TOKENS_PER_S
            gpu_seconds += full["images"] / GPU_CLIP_IMAGES_PER_S
        gpu = f"{gpu_seconds / 3600:,.0f}" if gpu_seconds else "none (no GPU model step by default)"
        lines.append(f"| {name} | {full['documents']:,} | {cpu_hours:,.0f} | {gpu} |")
    return lines


def memory_table(one: list[Measured], four: list[Measured]) -> tuple[list[str], bool]:
    lines = ["| pipeline | peak per worker, 1x | 4x | ratio | anonymous, 1x | 4x | ratio |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    within = True
    for a, b in zip(one, four):
        if a.worker_peak_mib and b.worker_peak_mib:
            ratio = b.worker_peak_mib / a.worker_peak_mib
            within &= ratio <= 1 + MEMORY_TOLERANCE
            anon = (f"{_mib(a.worker_anon_mib)} | {_mib(b.worker_anon_mib)} | "
                    f"{b.worker_anon_mib / a.worker_anon_mib:.2f}" if a.worker_anon_mib and b.worker_anon_mib
                    else "n/a | n/a | n/a")
            lines.append(f"| {a.label.split()[-1]} | {_mib(a.worker_peak_mib)} | {_mib(b.worker_peak_mib)} | "
                         f"{ratio:.2f} | {anon} |")
    return lines, within


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "unknown CPU")
    memory = int(Path("/proc/meminfo").read_text().split()[1]) / 2**20
    return f"{os.cpu_count()} cores ({model}), {memory:.0f} GiB"


# ---------------------------------------------------------------- main


def build_index(root: Path) -> str:
    index = root / "decontam_index"
    subprocess.run([sys.executable, "-m", "filters.decontam", "build", "--output", str(index), "--from",
                    f"vqa_sample={SAMPLE / 'eval'}"], cwd=REPO, check=True, capture_output=True,
                   env={**os.environ, "PYTHONPATH": str(REPO)})
    return str(index)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, type=Path, help="a new folder for corpora, outputs and logs")
    parser.add_argument("--shards", type=int, default=4, help="shards of OBELICS and of LAION-COCO at 1x")
    parser.add_argument("--docs-per-shard", type=int, default=200)
    parser.add_argument("--pdfs", type=int, default=100, help="PDFs at 1x")
    parser.add_argument("--pdfs-per-tar", type=int, default=CorpusSize.pdfs_per_tar,
                        help="PDFs a PDFA tar holds at 1x (4 times as many at 4x; PDFA's own hold about 1,200)")
    parser.add_argument("--shards-4x", type=int, default=None, help="shards at 4x (default: --workers)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--slurm", action="store_true", help="also run the 1x pipelines on the Slurm cluster")
    parser.add_argument("--skip-4x", action="store_true")
    args = parser.parse_args(argv)
    if args.root.exists():
        parser.error(f"--root {args.root}: exists; choose a new folder")
    if args.slurm and not shutil.which("sbatch"):
        parser.error("--slurm: sbatch not found (start a cluster with .ci/slurm-up.sh)")
    args.root.mkdir(parents=True)
    shards_4x = args.shards_4x or args.workers

    began = time.perf_counter()
    corpus = generate(args.root / "corpus-1x", CorpusSize(args.shards, args.docs_per_shard, args.pdfs,
                                                          pdfs_per_tar=args.pdfs_per_tar))
    if not args.skip_4x:
        pdfs_per_tar = 4 * args.pdfs_per_tar  # 4x the documents (PDFs) per shard too
        corpus_4x = generate(args.root / "corpus-4x", CorpusSize(shards_4x, 4 * args.docs_per_shard,
                                                                 pdfs_per_tar * shards_4x, 1, pdfs_per_tar))
    print(f"corpus written in {time.perf_counter() - began:.1f} s", file=sys.stderr)
    index = build_index(args.root)

    local = run_pipelines(corpus, args.root / "local-1x", index, args.workers, "local 1x")
    four = [] if args.skip_4x else run_pipelines(corpus_4x, args.root / "local-4x", index, args.workers, "local 4x")
    slurm = run_pipelines(corpus, args.root / "slurm-1x", index, args.workers, "slurm 1x", SLURM_FLAGS) \
        if args.slurm else []
    mixtures = run_mixtures(args.root / "local-1x", index, args.workers)

    units = {"obelics": "documents", "laion_coco": "pairs", "pdfa": "pages"}
    lines = [f"# Scale rehearsal: {args.shards} shards x {args.docs_per_shard} documents, {args.pdfs} PDFs "
             f"({args.pdfs_per_tar} a tar); {args.workers} workers", f"machine: {machine()}", ""]
    for run in [*local, *four, *slurm, *mixtures]:
        lines.append(report_line(run))
    lines.append("")
    for run in [*local, *slurm]:
        if run.steps:
            lines += [*step_table(run, units[run.label.split()[-1]]), ""]
    within = True
    if four:
        table, within = memory_table(local, four)
        lines += [f"Peak memory per worker, {args.docs_per_shard:,} and {4 * args.docs_per_shard:,} documents "
                  f"per shard (within {MEMORY_TOLERANCE:.0%}: {'yes' if within else 'NO'})", *table,
                  f"(a worker's decoded images waiting for a later pixel step are cached up to filters.pixels."
                  f"CACHE_BYTES = {CACHE_BYTES >> 20} MiB, reached within a task's first few hundred images; "
                  f"PDFA caches none)", ""]
    lines += ["Projected full runs (CPU steps from the figures above; model steps from the GPU figures)",
              *projection(local), ""]
    report = "\n".join(lines)
    print(report)
    (args.root / "rehearsal.md").write_text(report + "\n")
    (args.root / "rehearsal.json").write_text(json.dumps(
        {"machine": machine(), "runs": [asdict(r) for r in [*local, *four, *slurm, *mixtures]]}, indent=1))
    failed = [r.label for r in [*local, *four, *slurm, *mixtures] if r.status]
    if failed:
        print(f"error: failed: {', '.join(failed)} (logs under {args.root})", file=sys.stderr)
        return 1
    return 0 if within else 1


if __name__ == "__main__":
    sys.exit(main())
