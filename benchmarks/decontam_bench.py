"""Decontamination speed: the multi-index Hamming lookup against a brute-force scan, and hashing throughput.

    python benchmarks/decontam_bench.py [--entries 1000000] [--queries 2000]

1M random 64-bit hashes with near-duplicates planted (queries are entries with 0 to 10 bits flipped, plus
random queries): both methods must return exactly the same matches within radius 8, and the table gives
microseconds per query and the ratio. Then the step's cost per image, side by side on the same JPEGs (the
shipped sample, about 320 px, and the same photos enlarged to 6 MP): the old way (full decode, imagehash pHash,
sha256 of the full pixel buffer) against ours (the 448 px working copy decoded at reduced size, three pHashes of
it and its inward crops, a blake2b of its pixels), ours both cold (the step decodes) and warm (another pixel step
of the task decoded it already); and the cost of indexing one evaluation image.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import tarfile
import time

import numpy as np
import imagehash
from PIL import Image

from filters import pixels
from filters.decontam.hamming_index import HammingIndex, brute_force_search
from filters.decontam.hashing import pixel_key, query_hashes
from filters.decontam.index import eval_image_fingerprints
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
        small = [tar.extractfile(m).read() for m in tar if m.name.endswith(".jpg")]
    large = [_enlarged(blob, 3000, 2000) for blob in small[:20]]
    for label, blobs in (("sample JPEGs", small), ("6 MP JPEGs", large)):
        old = _per_image(blobs, _old_way)
        cold = _per_image(blobs, _new_way, clear_cache=True)
        warm = _per_image(blobs, _new_way)
        print(f"step cost per image, {label} ({len(blobs)}): old {old * 1e3:.1f} ms, ours {cold * 1e3:.1f} ms "
              f"decoding ({old / cold:.1f}x), {warm * 1e3:.2f} ms with the working copy shared ({old / warm:.0f}x)")
    index_cost = _per_image(small, eval_image_fingerprints)
    print(f"indexing an evaluation image (sample JPEGs): {index_cost * 1e3:.1f} ms")


def _enlarged(blob: bytes, width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(blob)).convert("RGB").resize((width, height), Image.Resampling.BICUBIC).save(
        buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _old_way(blob: bytes) -> None:
    """What the step did per image before: a full decode, imagehash's pHash, sha256 of every pixel."""
    image = Image.open(io.BytesIO(blob))
    image.load()
    int(np.packbits(imagehash.phash(image).hash.flatten()).view(">u8")[0])
    rgb = image.convert("RGB")
    hashlib.sha256(f"{rgb.width}x{rgb.height}".encode() + rgb.tobytes()).hexdigest()


def _new_way(blob: bytes) -> None:
    working = pixels.working_image(blob)
    query_hashes(working), pixel_key(working)


def _per_image(blobs: list[bytes], work, clear_cache: bool = False, rounds: int = 3) -> float:
    """Seconds per image, the best of a few rounds (one core)."""
    best = float("inf")
    for _ in range(rounds):
        pixels._CACHE.clear() if clear_cache else [pixels.working_image(b) for b in blobs]
        start = time.perf_counter()
        for blob in blobs:
            work(blob)
        best = min(best, (time.perf_counter() - start) / len(blobs))
    return best


if __name__ == "__main__":
    main()
