"""LAION-COCO pairs through the whole CPU path, against a plain pandas loop doing the same checks, in one run.

    python benchmarks/pairs_bench.py [--shards 2 --pairs 4000]

Builds a LAION-COCO-format corpus from the shipped sample's pairs with one distinct URL per pair (as in LAION-COCO,
where URLs barely repeat), and an img2dataset-format download holding them: the sample download's images, each
copy made distinct by a trailing tag (the same decode work, a different content key, so no cache shares a
decode). Runs `python -m pipelines.laion_coco` with one worker over the opt-out list, that download, `min_size`,
`nsfw` on `punsafe` and `decontam` (the sample evaluation set's index), and prints pairs/s and pairs per
CPU-second (user + system of the whole process tree, sampled every 50 ms: the images step's threads count).
Then the same without `decontam` against the obvious alternative: a pandas loop over the same files with the
same opt-out matcher, the download's tar read into a dict, every image decoded, the same size and `punsafe`
rules, kept rows written with `DataFrame.to_parquet` and kept images to a tar (the pipeline's `images/` output).
The ratio is pipeline / pandas loop. The loop keeps no removal records, no shards, no resume, holds every image
in memory and changes types (an int size column with a null comes back float): it is a floor, not an equal.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import pandas as pd
import psutil
import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent.parent
SAMPLE = HERE / "pipelines" / "sample_data"
sys.path.insert(0, str(HERE))


def sample_images() -> list[tuple[str, bytes]]:
    """(original URL, JPEG bytes) of every image in the shipped download."""
    images = []
    for listing in sorted((SAMPLE / "img2dataset").glob("*.parquet")):
        urls = {r["key"]: r["url"] for r in pq.read_table(listing).to_pylist() if r["status"] == "success"}
        with tarfile.open(listing.with_suffix(".tar")) as tar:
            for member in tar:
                key, _, extension = member.name.partition(".")
                if extension == "jpg" and key in urls:
                    images.append((urls[key], tar.extractfile(member).read()))
    return images


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def make_inputs(tmp: Path, shards: int, pairs: int) -> tuple[Path, Path]:
    """The corpus (one file per shard, the sample's rows in turn, int sizes) and its img2dataset download."""
    images = sample_images()
    source = sorted((SAMPLE / "laion_coco").glob("*.parquet"))
    schema = pq.read_schema(source[1])
    rows = [r for p in source for r in pq.read_table(p).to_pylist()]
    (tmp / "corpus").mkdir()
    (tmp / "download").mkdir()
    for shard in range(shards):
        out, listing = [], []
        with tarfile.open(tmp / "download" / f"{shard:05d}.tar", "w") as tar:
            for i in range(pairs):
                original, data = images[i % len(images)]
                url = original.replace("/media/", f"/bench/{shard}-{i}/")  # same host: domain opt-outs apply
                key = hashlib.sha1(url.encode()).hexdigest()[:16]
                _add(tar, f"{key}.jpg", data + f"copy {shard}-{i}".encode())  # after the JPEG end: ignored
                _add(tar, f"{key}.json", json.dumps({"url": url, "key": key, "status": "success"}).encode())
                listing.append({"url": url, "key": key, "status": "success", "error_message": None})
                row = dict(rows[i % len(rows)], URL=url)
                for column in ("WIDTH", "HEIGHT"):
                    value = row[column]
                    row[column] = None if value is None or value != value else int(value)
                out.append(row)
        pq.write_table(pa.Table.from_pylist(listing), tmp / "download" / f"{shard:05d}.parquet")
        pq.write_table(pa.Table.from_pylist(out, schema=schema), tmp / "corpus" / f"part-{shard:05d}.parquet")
    return tmp / "corpus", tmp / "download"


def build_index(where: Path) -> str:
    index = str(where / "index")
    subprocess.run([sys.executable, "-m", "filters.decontam", "build", "--output", index, "--from",
                    f"vqa_sample={SAMPLE / 'eval'}"], cwd=HERE, check=True, capture_output=True,
                   env={**os.environ, "PYTHONPATH": str(HERE)})
    return index


def tree_cpu(process: psutil.Popen) -> float:
    """CPU seconds of a running command and its descendants, sampled until it exits (each process's own time, its
    last sample: a process loses at most the 50 ms before it ended)."""
    seen: dict[int, float] = {}
    while process.poll() is None:
        try:
            for p in [process, *process.children(recursive=True)]:
                times = p.cpu_times()
                seen[p.pid] = times.user + times.system  # own time only: reaped children are counted here
        except psutil.Error:
            pass  # a process ended between listing and reading: its last sample stands
        time.sleep(0.05)
    return sum(seen.values())


def run_pipeline(corpus: Path, download: Path, output: Path, steps: str, index: str) -> tuple[float, float]:
    """Wall seconds and CPU seconds of one run of the command (one worker)."""
    command = [sys.executable, "-m", "pipelines.laion_coco", "--input", str(corpus), "--output", str(output),
               "--workers", "1", "--steps", steps, "--optout-list", str(SAMPLE / "optout.txt"),
               "--images", str(download), "--decontam-index", index]
    start = time.perf_counter()
    process = psutil.Popen(command, cwd=HERE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           env={**os.environ, "PYTHONPATH": str(HERE)})
    cpu = tree_cpu(process)
    if process.wait() != 0:
        raise SystemExit(f"pipeline failed: {process.stderr.read().decode()[-2000:]}")
    return time.perf_counter() - start, cpu


def pandas_loop(corpus: Path, download: Path, output: Path, min_side: int = 150, cut: float = 0.5) -> int:
    """The obvious script: same checks, same files, one process. Returns the pairs kept."""
    from PIL import Image

    from filters.optout import OptOutList

    optouts = OptOutList(str(SAMPLE / "optout.txt"))
    images: dict[str, bytes] = {}
    for listing in sorted(download.glob("*.parquet")):
        urls = {r["key"]: r["url"] for r in pq.read_table(listing).to_pylist() if r["status"] == "success"}
        with tarfile.open(listing.with_suffix(".tar")) as tar:
            for member in tar:
                key, _, extension = member.name.partition(".")
                if extension == "jpg" and key in urls:
                    images[urls[key]] = tar.extractfile(member).read()
    kept = 0
    output.mkdir(parents=True)
    for path in sorted(corpus.glob("*.parquet")):
        frame = pd.read_parquet(path)
        keep, tar = [], tarfile.open(output / f"{path.stem}.tar", "w")
        for url, punsafe in zip(frame["URL"], frame["punsafe"]):
            size = None
            if url in images and not optouts.opted_out([url]):
                try:
                    with Image.open(io.BytesIO(images[url])) as image:
                        image.load()
                        size = image.size
                except OSError:
                    pass
            keep.append(size is not None and min(size) >= min_side and punsafe == punsafe and punsafe <= cut)
            if keep[-1]:  # the kept images, as the pipeline's images/NNNNN.tar has them
                key = hashlib.sha1(url.encode()).hexdigest()[:20]
                _add(tar, f"{key}.jpg", images[url])
                meta = {"url": url, "key": key, "status": "success", "width": size[0], "height": size[1],
                        "sha256": hashlib.sha256(images[url]).hexdigest()}
                _add(tar, f"{key}.json", json.dumps(meta).encode())
        tar.close()
        frame[keep].to_parquet(output / path.name)
        kept += sum(keep)
    return kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--pairs", type=int, default=4000, help="pairs per shard")
    args = parser.parse_args()
    total = args.shards * args.pairs
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (corpus, download), index = make_inputs(tmp, args.shards, args.pairs), build_index(tmp)
        wall, cpu = run_pipeline(corpus, download, tmp / "full", "optout,images,min_size,nsfw,decontam", index)
        print(f"whole CPU path (optout, images, min_size, nsfw source, decontam), {total} pairs, 1 worker: "
              f"{total / wall:.0f} pairs/s, {total / cpu:.0f} pairs per CPU-second")
        ours_wall, ours_cpu = run_pipeline(corpus, download, tmp / "four", "optout,images,min_size,nsfw", index)
        start, cpu_start = time.perf_counter(), time.process_time()
        kept = pandas_loop(corpus, download, tmp / "pandas")
        loop_wall, loop_cpu = time.perf_counter() - start, time.process_time() - cpu_start
        ours_kept = sum(pq.read_metadata(p).num_rows for p in (tmp / "four" / "data").glob("*.parquet"))
        print(f"pipeline without decontam: {total / ours_wall:.0f} pairs/s, {total / ours_cpu:.0f} pairs per "
              f"CPU-second, {ours_kept} kept")
        print(f"pandas loop, same checks:  {total / loop_wall:.0f} pairs/s, {total / loop_cpu:.0f} pairs per "
              f"CPU-second, {kept} kept")
        print(f"ratio pipeline / pandas loop: {loop_wall / ours_wall:.2f}x in pairs/s, "
              f"{loop_cpu / ours_cpu:.2f}x in pairs per CPU-second")


if __name__ == "__main__":
    main()
