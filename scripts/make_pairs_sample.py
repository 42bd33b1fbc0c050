"""Build the LAION-COCO sample that ships in `pipelines/sample_data/laion_coco/`, reproducibly and offline.

    python scripts/make_pairs_sample.py        # rewrites pipelines/sample_data/laion_coco/

Two shards of 40 pairs in LAION-COCO's schema (the Hub copies' dataset cards: `Mayfull/laion-coco-1m` has
int64 `WIDTH`/`HEIGHT`, `danielz01/laion-coco-17m` float64 sizes and float32 `punsafe`/`pwatermark`): shard 0
has float sizes (one NaN, one null), shard 1 int sizes (one null). Every URL is an image URL of the shipped
img2dataset download (`pipelines/sample_data/img2dataset/`), except two it does not hold; shard 1 also has the
download's failed URLs and most of its images under 150 px. Planted cases: a pair whose declared size is large
but whose image is small (removed by `min_size`) and the reverse (kept); `punsafe` above 0.5 on three pairs per
shard and missing on one. Same inputs, same seed: same bytes.
"""

from __future__ import annotations

import hashlib
import random
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

SAMPLE = Path(__file__).resolve().parent.parent / "pipelines" / "sample_data"
OUT = SAMPLE / "laion_coco"
SEED = 20240415  # the Idefics2 paper's arXiv date
FILE_NAME = "part-{:05d}-2256f782-126f-4dc6-b9c6-e6757637749d-c000.snappy.parquet"  # the Hub's file names
ABSENT = ["https://static.riverside.example/media/photo_0036.jpg",  # not in the img2dataset download
          "https://images.fieldnotes.example/media/photo_0047.jpg"]
DECLARED_LARGE_DECODED_SMALL = "photo_0010.jpg"  # decoded 220x147
DECLARED_SMALL_DECODED_LARGE = "photo_0001.jpg"  # decoded 249x219
UNSAFE = {0: (3, 17, 29), 1: (5, 21, 33)}  # rows with punsafe > 0.5
NO_PUNSAFE = {1: 12}

ADJECTIVES = ["a red", "an old", "a small", "a wooden", "a bright", "a quiet", "a crowded", "a snowy", "a tall"]
THINGS = ["bicycle", "lighthouse", "kitchen table", "sailboat", "bookshelf", "street market", "mountain cabin",
          "garden path", "train station", "bowl of soup", "pair of boots", "city bridge"]
PLACES = ["at sunset", "in the rain", "on a white background", "near the sea", "in a small town", "under a blue sky"]


def schema(float_sizes: bool) -> pa.Schema:
    size, score = (pa.float64(), pa.float32()) if float_sizes else (pa.int64(), pa.float64())
    return pa.schema([("URL", pa.string()), ("TEXT", pa.string()), ("top_caption", pa.string()),
                      ("all_captions", pa.list_(pa.string())), ("all_similarities", pa.list_(pa.float64())),
                      ("WIDTH", size), ("HEIGHT", size), ("similarity", pa.float64()), ("hash", pa.int64()),
                      ("pwatermark", score), ("punsafe", score)])


def downloaded() -> dict[str, dict]:
    """URL -> the img2dataset row (status, original size) of the shipped download."""
    rows = {}
    for path in sorted((SAMPLE / "img2dataset").glob("*.parquet")):
        for row in pq.read_table(path).to_pylist():
            rows[row["url"]] = row
    return rows


def photo_number(url: str) -> int:
    return int(re.search(r"photo_(\d+)", url).group(1))


def caption(rng: random.Random) -> str:
    return f"{rng.choice(ADJECTIVES)} {rng.choice(THINGS)} {rng.choice(PLACES)}"


def pair(rng: random.Random, url: str, image: dict | None, unsafe: bool, float_sizes: bool) -> dict:
    width = (image or {}).get("original_width") or rng.randint(160, 1024)
    height = (image or {}).get("original_height") or rng.randint(160, 1024)
    name = url.rsplit("/", 1)[-1]
    if name == DECLARED_LARGE_DECODED_SMALL:
        width, height = 640, 480
    elif name == DECLARED_SMALL_DECODED_LARGE:
        width, height = 120, 90
    captions = [caption(rng) for _ in range(3)]
    similarities = sorted((round(rng.uniform(0.25, 0.45), 6) for _ in range(3)), reverse=True)
    return {
        "URL": url, "TEXT": f"{captions[1].split(' ', 1)[1].title()} | stock photo {photo_number(url)}",
        "top_caption": captions[0], "all_captions": captions, "all_similarities": similarities,
        "WIDTH": float(width) if float_sizes else width, "HEIGHT": float(height) if float_sizes else height,
        "similarity": round(rng.uniform(0.28, 0.4), 6),
        "hash": int.from_bytes(hashlib.sha256(url.encode()).digest()[:8], "big", signed=True),
        "pwatermark": round(rng.uniform(0.0, 0.9), 4),
        "punsafe": round(rng.uniform(0.55, 0.99), 4) if unsafe else round(rng.uniform(0.0, 0.2), 4),
    }


def shard_urls(images: dict[str, dict]) -> list[list[str]]:
    """Shard 0: the first 38 downloaded photos and the two absent URLs; shard 1: the last 40 (failed, tiny)."""
    urls = sorted(images, key=photo_number)
    first = urls[:38]
    return [sorted(first + ABSENT, key=photo_number), urls[-40:]]


def main() -> None:
    rng = random.Random(SEED)
    images = downloaded()
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.glob("*.parquet"):
        old.unlink()
    for shard, urls in enumerate(shard_urls(images)):
        float_sizes = shard == 0
        rows = [pair(rng, url, images.get(url), i in UNSAFE[shard], float_sizes) for i, url in enumerate(urls)]
        if float_sizes:
            rows[2]["WIDTH"] = float("nan")
            rows[7]["HEIGHT"] = None
        else:
            rows[9]["WIDTH"] = None
        if shard in NO_PUNSAFE:
            rows[NO_PUNSAFE[shard]]["punsafe"] = None
        table = pa.Table.from_pylist(rows, schema=schema(float_sizes))
        pq.write_table(table, OUT / FILE_NAME.format(shard), compression="snappy")


if __name__ == "__main__":
    main()
