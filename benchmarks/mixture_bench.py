"""The stage-mixture builder: samples per second per core for a stage 2 build, its largest process's memory as the
mixture grows, random unit reads one by one against in blocks, and the tar shard writer's throughput against
writing the same bytes to one plain file.

    python benchmarks/mixture_bench.py [--sources-root DIR] [--samples 2000] [--repeat 3]

Without `--sources-root`, the sample OBELICS, LAION-COCO and PDFA pipelines are run first (only the steps a
mixture needs) into a temporary folder. The build runs the real command with one worker (one core), at N and at
4N samples with the same shard size: the samples/s figure comes from the first, the memory from both. The
writer comparison takes the built samples, in memory, and writes them side by side in the same process: through
`mixtures.shard_writer.SampleTar` (tar headers, temp name, rename), through the standard `tarfile` with
`mixtures.layout.add_sample` (the same bytes), and as their members' bytes to a plain file.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import resource
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from datatrove.io import get_datafolder

from mixtures.draw import BLOCK_UNITS, UnitOrder, shard_positions
from mixtures.layout import add_sample, iter_samples
from mixtures.shard_writer import SampleTar
from mixtures.sources import open_source
from pipelines import cli, laion_coco, obelics, pdfa
from pipelines.demo import sample_path

TOKENIZER = sample_path("models", "tiny-falcon")


def build_sources(root: Path) -> None:
    images = sample_path("img2dataset")
    runs = [(obelics.SPEC, "obelics", ["--input", sample_path("obelics"), "--steps", "structure,images",
                                       "--images", images]),
            (laion_coco.SPEC, "laion_coco", ["--input", sample_path("laion_coco"), "--steps", "images",
                                             "--images", images]),
            (pdfa.SPEC, "pdfa", ["--input", sample_path("pdfa"), "--steps", "pages"])]
    for spec, name, flags in runs:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            assert cli.main(spec, [*flags, "--output", str(root / name), "--workers", "2"]) == 0, name


def timed_build(sources: Path, output: Path, samples: int) -> float:
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "pipelines.mixture", "--stage", "2", "--sources-root",
                             str(sources), "--source", f"pages={sources / 'pdfa'}", "--output", str(output),
                             "--samples", str(samples), "--shard-size", "500", "--workers", "1",
                             "--tokenizer", TOKENIZER], capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(result.stderr)
    return time.perf_counter() - start


def largest_child_mib() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def write_tar(samples: list, folder: str) -> float:
    start = time.perf_counter()
    tar = SampleTar(get_datafolder(folder), "bench.tar")
    for sample in samples:
        tar.write(sample)
    tar.commit()
    return time.perf_counter() - start


def write_tarfile(samples: list, folder: str) -> float:
    """The obvious way: `tarfile` with `mixtures.layout.add_sample` (the same bytes as ours)."""
    start = time.perf_counter()
    with tarfile.open(os.path.join(folder, "stdlib.tar"), "w") as tar:
        for sample in samples:
            add_sample(tar, sample)
    return time.perf_counter() - start


def write_plain(samples: list, folder: str) -> float:
    start = time.perf_counter()
    with open(os.path.join(folder, "bench.bin"), "wb") as f:
        for sample in samples:
            for _, data in sample.members():
                f.write(data)
    return time.perf_counter() - start


def big_obelics(sources: Path, folder: Path, files: int = 20, rows: int = 5000) -> None:
    """An OBELICS output of `files` x `rows` rows in 500-row groups (what our pipelines write), made by repeating
    the sample output's rows; its images folder is the sample's."""
    table = pq.read_table(sources / "obelics" / "data")
    repeated = pa.concat_tables([table] * (rows // len(table) + 1)).slice(0, rows)
    (folder / "data").mkdir(parents=True)
    for number in range(files):
        pq.write_table(repeated, folder / "data" / f"{number:05d}.parquet", row_group_size=500)
    shutil.copytree(sources / "obelics" / "images", folder / "images")
    (folder / "summary.json").write_text("{}")


def read_units(source, order: UnitOrder, count: int) -> float:
    """Seconds to read the first `count` units of shard 0 of 8 in `order`."""
    start = time.perf_counter()
    units = order.units_at(shard_positions(0, 8, 0, count, order.block))
    source.read(units[units >= 0].tolist())
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources-root", default=None)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mixture-bench-"))
    sources = Path(args.sources_root) if args.sources_root else work / "sources"
    if not args.sources_root:
        build_sources(sources)

    seconds = timed_build(sources, work / "small", args.samples)
    small_memory = largest_child_mib()
    large_seconds = timed_build(sources, work / "large", 4 * args.samples)
    large_memory = largest_child_mib()
    print(f"stage 2 build, 1 worker: {args.samples:,} samples in {seconds:.1f} s = "
          f"{args.samples / seconds:.1f} samples/s/core (command start and tokenizer load included); "
          f"{4 * args.samples:,} samples: {4 * args.samples / large_seconds:.1f} samples/s/core")
    print(f"largest process: {small_memory:.0f} MiB at {args.samples:,} samples, {large_memory:.0f} MiB (max so far) "
          f"at {4 * args.samples:,}")

    big = work / "big_obelics"
    big_obelics(sources, big)
    source = open_source("obelics", "obelics", [str(big)], str(work / "cache"))
    per_unit = read_units(source, UnitOrder(source.units, 0, "obelics", block=1), 2000)
    blocks = read_units(source, UnitOrder(source.units, 0, "obelics"), 2000)
    print(f"reading 2,000 units of a 100,000-row OBELICS output (500-row groups): one at a time at random "
          f"{per_unit:.1f} s, in blocks of {BLOCK_UNITS} {blocks:.2f} s; ratio {per_unit / blocks:.1f}x")

    samples = []
    for tar in sorted((work / "small" / "data").glob("*.tar")):
        with open(tar, "rb") as f:
            samples += list(iter_samples(f))
    total = sum(len(data) for s in samples for _, data in s.members())
    best = {"plain": float("inf"), "tarfile": float("inf"), "ours": float("inf")}
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory(dir=work) as folder:
            best["plain"] = min(best["plain"], write_plain(samples, folder))
            best["tarfile"] = min(best["tarfile"], write_tarfile(samples, folder))
            best["ours"] = min(best["ours"], write_tar(samples, folder))
    rates = {k: total / v / 1e6 for k, v in best.items()}
    print(f"shard writer, {total / 1e6:,.1f} MB of members (best of {args.repeat}): plain file "
          f"{rates['plain']:,.0f} MB/s, tarfile + add_sample {rates['tarfile']:,.0f} MB/s, SampleTar "
          f"{rates['ours']:,.0f} MB/s; SampleTar / plain file = {rates['ours'] / rates['plain']:.2f}x, "
          f"SampleTar / tarfile = {rates['ours'] / rates['tarfile']:.2f}x")


if __name__ == "__main__":
    main()
