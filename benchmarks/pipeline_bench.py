"""All six OBELICS steps, this checkout against another (the baseline), side by side in one run.

    git worktree add /tmp/baseline 731fabf   # the commit before the spine rework
    python benchmarks/pipeline_bench.py --baseline /tmp/baseline [--shards 4 --docs 1000 --workers 2]

Builds an OBELICS-format corpus from the shipped sample (rows repeated, each text made unique so no score is
reused), joined with the shipped img2dataset download, with the shipped opt-out list, tiny models and a
decontamination index of the sample evaluation set. Prints documents/s/core for each checkout and their ratio,
the peak memory of the largest worker at 1x and 4x the documents per shard, and how many times each kept image
is decoded (PIL decodes counted in every process of a run of each checkout over a sample shard).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent.parent
SAMPLE = HERE / "pipelines" / "sample_data"

# loaded by every Python process of a run (sitecustomize), so worker processes count too: one byte per PIL decode
COUNT_DECODES = """
import os
from PIL import ImageFile
_load = ImageFile.ImageFile.load
def _counting(self, *args, **kwargs):
    if getattr(self, "tile", None):
        with open(os.environ["DECODE_COUNT_FILE"], "ab") as f:
            f.write(b".")
    return _load(self, *args, **kwargs)
ImageFile.ImageFile.load = _counting
"""


def make_corpus(folder: Path, shards: int, docs: int) -> Path:
    rows = [r for p in sorted((SAMPLE / "obelics").glob("*.parquet")) for r in pq.read_table(p).to_pylist()]
    folder.mkdir(parents=True)
    schema = pq.read_schema(next((SAMPLE / "obelics").glob("*.parquet")))
    for shard in range(shards):
        out = []
        for i in range(docs):
            row = dict(rows[i % len(rows)])
            texts = list(row["texts"]) if isinstance(row["texts"], list) else row["texts"]
            if texts and isinstance(texts[0], str):
                texts[0] = f"{texts[0]} (copy {shard}-{i})"  # unique text: every document is scored
            out.append({**row, "texts": texts})
        pq.write_table(pa.Table.from_pylist(out, schema=schema), folder / f"train-{shard:05d}.parquet")
    return folder


def flags(index: str) -> list[str]:
    models = SAMPLE / "models"
    return ["--optout-list", str(SAMPLE / "optout.txt"), "--images", str(SAMPLE / "img2dataset"),
            "--ppl-model", str(models / "tiny-falcon"), "--nsfw-clip-model", str(models / "tiny-clip"),
            "--nsfw-head", str(models / "tiny-clip-nsfw-head.safetensors"), "--decontam-index", index]


def build_index(repo: Path, where: Path) -> str:
    index = str(where / "index")
    subprocess.run([sys.executable, "-m", "filters.decontam", "build", "--output", index, "--from",
                    f"vqa_sample={SAMPLE / 'eval'}"], cwd=repo, check=True, capture_output=True,
                   env={**os.environ, "PYTHONPATH": str(repo)})
    return index


# runs a command and reports the largest peak RSS among its processes (a fresh parent per run)
PEAK_RSS = """
import resource, subprocess, sys
code = subprocess.run(sys.argv[1:]).returncode
print(f"PEAK_RSS_KIB {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}", file=sys.stderr)
sys.exit(code)
"""


def timed_run(repo: Path, corpus: Path, output: Path, index: str, workers: int) -> tuple[float, int, float]:
    """Seconds, documents and the largest process's peak RSS (MiB) of one run of all six steps."""
    command = [sys.executable, "-m", "pipelines.obelics", "--input", str(corpus), "--output", str(output),
               "--workers", str(workers), *flags(index)]
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", PEAK_RSS, *command], cwd=repo, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(repo)})
    seconds = time.perf_counter() - start
    if result.returncode:
        raise SystemExit(f"{repo}: run failed\n{result.stderr[-3000:]}")
    peak = int(result.stderr.rsplit("PEAK_RSS_KIB ", 1)[1].split()[0])
    docs = json.loads((output / "summary.json").read_text())["total"]["input"]
    return seconds, docs, peak / 1024


def decodes(repo: Path, output: Path, index: str) -> dict:
    """PIL decodes per kept-or-checked image over the first sample shard (every row once: no image is repeated on
    purpose), counted in every process of the run."""
    hook = output.parent / f"{output.name}-hook"
    hook.mkdir(parents=True)
    (hook / "sitecustomize.py").write_text(COUNT_DECODES)
    counts = hook / "decodes"
    counts.touch()
    result = subprocess.run([sys.executable, "-m", "pipelines.obelics", "--input", str(SAMPLE / "obelics"),
                             "--output", str(output), "--shards", "0", *flags(index)], cwd=repo, capture_output=True,
                            text=True, env={**os.environ, "PYTHONPATH": f"{hook}:{repo}",
                                            "DECODE_COUNT_FILE": str(counts)})
    if result.returncode:
        raise SystemExit(f"{repo}: decode count failed\n{result.stderr[-3000:]}")
    images = json.loads((output / "summary.json").read_text())["total"]["images"].get("ok", 0)
    return {"decodes": counts.stat().st_size, "images_ok": images}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=True, help="another checkout of this repository (git worktree)")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--docs", type=int, default=1000, help="documents per shard")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    cores = min(args.workers, os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        corpus = make_corpus(tmp / "corpus", args.shards, args.docs)
        rates = {}
        for name, repo in (("baseline", Path(args.baseline).resolve()), ("this checkout", HERE)):
            index = build_index(repo, tmp / name)
            seconds, docs, peak = timed_run(repo, corpus, tmp / name / "out", index, args.workers)
            rates[name] = docs / seconds / cores
            count = decodes(repo, tmp / name / "decodes", index)
            print(f"{name:>14}: {docs:,} documents in {seconds:.1f} s = {rates[name]:.1f} documents/s/core; "
                  f"largest process {peak:.0f} MiB; {count['decodes'] / max(count['images_ok'], 1):.2f} decodes "
                  f"per image ({count['decodes']} for {count['images_ok']} images)")
        print(f"ratio this checkout / baseline: {rates['this checkout'] / rates['baseline']:.2f}x")
        big = make_corpus(tmp / "corpus4x", args.shards, args.docs * 4)
        index = build_index(HERE, tmp / "4x")
        _, docs, peak4 = timed_run(HERE, big, tmp / "4x" / "out", index, args.workers)
        print(f"memory at 4x documents per shard ({docs:,} documents): largest process {peak4:.0f} MiB")


if __name__ == "__main__":
    main()
