"""Decontamination speed: the multi-index Hamming lookup against a brute-force scan, and hashing throughput.

    python benchmarks/decontam_bench.py [--entries 1000000] [--queries 2000]

1M random 64-bit hashes with near-duplicates planted (queries are entries with 0 to 10 bits flipped, plus
random queries): both methods must return exactly the same matches within radius 8, and the table gives
microseconds per query and the ratio. Then images/s on one core for a query hash (pHash + pixel sha256 of a
decoded image) and for an index entry (the 18 variants: image, mirror and crops).
"""

from __future__ import annotations

import argparse
import io
import tarfile
import time

import numpy as np
from PIL import Image

from filters.decontam.hamming_index import HammingIndex, brute_force_search
from filters.decontam.hashing import index_hashes, phash, pixel_sha256
from pipelines.demo import sample_path


def planted(entries: int, queries: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    hashes = rng.integers(0, 2**64 - 1, entries, dtype=np.uint64)
    near = hashes[rng.choice(entries, queries // 2, replace=False)].copy()
    for q in range(len(near)):
        for bit in rng.choice(64, rng.integers(0, 11), replace=False):
            near[q] ^= np.uint64(1) << np.uint64(bit)
    return hashes, np.concatenate([near, rng.integers(0, 2**64 - 1, queries - len(near), dtype=np.uint64)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--radius", type=int, default=8)
    args = parser.parse_args()
    hashes, queries = planted(args.entries, args.queries)
    start = time.perf_counter()
    index = HammingIndex(hashes, args.radius)
    build = time.perf_counter() - start
    index.search(queries[:100])  # warm-up
    start = time.perf_counter()
    ours = index.search(queries)
    ours_s = (time.perf_counter() - start) / len(queries)
    sample = slice(0, min(len(queries), 300))  # brute force is slow: time it on a subset
    start = time.perf_counter()
    reference = brute_force_search(hashes, queries[sample], args.radius)
    brute_s = (time.perf_counter() - start) / len(reference)
    assert ours[sample] == reference, "the index and the brute-force scan disagree"
    found = sum(bool(r) for r in ours)
    print(f"{args.entries:,} hashes, {len(queries):,} queries ({found:,} with a match), radius {args.radius}; "
          f"chunks {index.bounds}, index built in {build:.2f} s")
    print(f"brute force : {brute_s * 1e6:9.1f} us/query")
    print(f"index       : {ours_s * 1e6:9.1f} us/query   ({brute_s / ours_s:.0f}x faster, identical results "
          f"on {len(reference)} queries)")

    with tarfile.open(sample_path("img2dataset", "00000.tar")) as tar:
        blobs = [tar.extractfile(m).read() for m in tar if m.name.endswith(".jpg")]
    start = time.perf_counter()
    for blob in blobs:
        image = Image.open(io.BytesIO(blob))
        phash(image), pixel_sha256(image)
    query_rate = len(blobs) / (time.perf_counter() - start)
    start = time.perf_counter()
    for blob in blobs:
        index_hashes(Image.open(io.BytesIO(blob)))
    entry_rate = len(blobs) / (time.perf_counter() - start)
    size = Image.open(io.BytesIO(blobs[0])).size
    print(f"hashing, one core, {len(blobs)} JPEGs of about {size[0]}x{size[1]}: {query_rate:.0f} images/s to "
          f"match, {entry_rate:.0f} images/s to index")


if __name__ == "__main__":
    main()
