"""The img2dataset url index: the old serial SQLite build against the parallel build by the tasks, and lookups/s.

A synthetic img2dataset download (tars of small images with their `.json` sidecars and `.txt` captions, a parquet
of every row per shard, a quarter of the rows failed) is indexed by:
  - the old way: one process, `tarfile` + SQLite, before any task starts (the module as of `--old-rev`, read from
    git history, so both run side by side on the same files);
  - ours: `Img2DatasetIndex.build()` by 1 worker, then by `--workers` processes at once on a fresh cache folder.
Then the same mix of urls (images, failures, unknown urls) is looked up through both, image bytes read.

    python benchmarks/img2dataset_index_bench.py [--shards 8] [--per-shard 5000] [--workers 2]
    python benchmarks/img2dataset_index_bench.py --extra-failed-rows 5000000   # scale: a few minutes
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import multiprocessing
import random
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from filters.img2dataset_index import Img2DatasetIndex  # noqa: E402

OLD_REV = "7c575a4"  # the last commit with the SQLite index built by the launcher


def make_download(folder: Path, shards: int, per_shard: int) -> list[str]:
    """img2dataset's layout: `NNNNN.tar` (key.jpg, key.json, key.txt) + `NNNNN.parquet`; returns every url."""
    urls, image = [], b"\xff\xd8" + bytes(range(256)) * 4
    for shard in range(shards):
        rows = []
        with tarfile.open(folder / f"{shard:05d}.tar", "w") as tar:
            for n in range(per_shard):
                key, url, ok = f"{shard:05d}{n:04d}", f"https://host{n % 97}.example/{shard}/{n}.jpg", n % 4 != 0
                row = {"url": url, "key": key, "status": "success" if ok else "failed_to_download",
                       "error_message": None if ok else "HTTP Error 404: Not Found"}
                rows.append(row)
                urls.append(url)
                for name, payload in ((f"{key}.jpg", image), (f"{key}.json", json.dumps(row, indent=4).encode()),
                                      (f"{key}.txt", b"a caption")) if ok else ():
                    info = tarfile.TarInfo(name)
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
        pq.write_table(pa.Table.from_pylist(rows), folder / f"{shard:05d}.parquet")
    return urls


def add_failed_rows(folder: Path, rows: int, per_shard: int = 500_000) -> list[str]:
    """Parquet-only shards of failed rows (a tar-less shard is legal): index size at little generation cost."""
    urls = []
    for first in range(0, rows, per_shard):
        batch = [f"https://failed{n % 991}.example/{n}/image.jpg" for n in range(first, min(rows, first + per_shard))]
        pq.write_table(pa.table({"url": batch, "status": ["failed_to_download"] * len(batch),
                                 "error_message": [f"HTTP Error {400 + n % 20}" for n in range(len(batch))]}),
                       folder / f"failed{first // per_shard:05d}.parquet")
        urls += batch
    return urls


def private_mib() -> int:
    """Anonymous resident memory: what a process holds itself, not the page cache of files it maps."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("RssAnon:")) // 1024


def old_index_class(rev: str):
    source = subprocess.run(["git", "show", f"{rev}:filters/img2dataset_index.py"], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parent.parent)
    if source.returncode:
        sys.exit(f"--old-rev {rev}: cannot read the old index from git ({source.stderr.strip()})")
    path = Path(tempfile.mkdtemp()) / "old_img2dataset_index.py"
    path.write_text(source.stdout)
    spec = importlib.util.spec_from_file_location("old_img2dataset_index", path)
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # dataclasses look themselves up there
    spec.loader.exec_module(module)
    return module.Img2DatasetIndex


def _build(download: str, cache: str, barrier, cpu_seconds) -> None:
    barrier.wait()
    started = time.process_time()
    Img2DatasetIndex(download, cache).build()
    cpu_seconds.put(time.process_time() - started)


def parallel_build(download: Path, cache: Path, workers: int) -> tuple[float, float]:
    """(wall seconds from the moment all workers are ready until the last one has a complete index, the largest
    CPU seconds one worker spent: the wall time when each worker has a core of its own)."""
    context = multiprocessing.get_context("fork")
    barrier, cpu_seconds = context.Barrier(workers + 1), context.Queue()
    processes = [context.Process(target=_build, args=(str(download), str(cache), barrier, cpu_seconds))
                 for _ in range(workers)]
    for process in processes:
        process.start()
    barrier.wait()
    started = time.perf_counter()
    for process in processes:
        process.join()
    if any(process.exitcode for process in processes):
        sys.exit("a build worker failed")
    return time.perf_counter() - started, max(cpu_seconds.get() for _ in processes)


def lookups_per_second(index, urls: list[str]) -> float:
    started = time.perf_counter()
    for url in urls:
        index.lookup(url)
    return len(urls) / (time.perf_counter() - started)


def lookup_line(name: str, index, queries: list[str], baseline: float | None = None) -> float:
    before = private_mib()
    rate = lookups_per_second(index, queries)
    ratio = f"  ({rate / baseline:4.2f}x)" if baseline else ""
    print(f"lookups, {name:<20}: {rate:9,.0f} /s{ratio:9}  private memory {before} -> {private_mib()} MiB")
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--per-shard", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--lookups", type=int, default=20000)
    parser.add_argument("--extra-failed-rows", type=int, default=0, help="parquet-only failed rows, for scale")
    parser.add_argument("--old-rev", default=OLD_REV)
    args = parser.parse_args()
    old_class = old_index_class(args.old_rev)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "download").mkdir()
        urls = make_download(tmp / "download", args.shards, args.per_shard)
        urls += add_failed_rows(tmp / "download", args.extra_failed_rows)
        print(f"{args.shards} tars, {len(urls):,} rows ({args.shards * args.per_shard * 3 // 4:,} images); "
              f"wall times depend on what "
              f"else runs, CPU seconds of the busiest worker are the wall time when each worker has its own core")

        old = old_class(str(tmp / "download"), str(tmp / "old.sqlite"))
        started, cpu_started = time.perf_counter(), time.process_time()
        old.build()
        old_wall, old_cpu = time.perf_counter() - started, time.process_time() - cpu_started
        print(f"{'build':<28} | {'wall s':>6} | {'vs old':>6} | {'CPU s, busiest worker':>21} | {'vs old':>6}")
        print(f"{'old: serial SQLite':<28} | {old_wall:6.2f} | {1:5.2f}x | {old_cpu:21.2f} | {1:5.2f}x")
        for workers in sorted({1, args.workers}):
            wall, cpu = parallel_build(tmp / "download", tmp / f"cache{workers}", workers)
            print(f"{f'ours: {workers} worker(s)':<28} | {wall:6.2f} | {old_wall / wall:5.2f}x | {cpu:21.2f} | "
                  f"{old_cpu / cpu:5.2f}x")

        rng = random.Random(0)
        queries = [rng.choice(urls) if rng.random() < 0.9 else f"https://unknown.example/{n}.jpg"
                   for n in range(args.lookups)]
        new = Img2DatasetIndex(str(tmp / "download"), str(tmp / f"cache{args.workers}"))
        assert all(old.lookup(url) == new.lookup(url) for url in queries[:2000]), "old and new disagree"
        old_rate = lookup_line("old SQLite", old, queries)
        lookup_line("ours (memory-mapped)", new, queries, old_rate)
        old_mb = (tmp / "old.sqlite").stat().st_size / 1e6
        new_mb = sum(p.stat().st_size for p in (tmp / f"cache{args.workers}").rglob("*") if p.is_file()) / 1e6
        print(f"index on disk: old {old_mb:,.0f} MB, ours {new_mb:,.0f} MB (parts and buckets); same answers")


if __name__ == "__main__":
    main()
