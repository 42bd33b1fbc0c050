"""A generated corpus for the scale rehearsal, in the public formats the pipelines read; seeded, so the same
arguments give the same bytes.

    python benchmarks/scale_corpus.py --output /data/rehearsal/corpus --shards 64 --docs-per-shard 2000 --pdfs 300

- `obelics/train-NNNNN.parquet`: OBELICS rows (the `HuggingFaceM4/OBELICS` schema), 1 to 3 images each,
  paragraphs of the Python reference manual (`pydoc_data.topics`, as `scripts/make_sample_data.py`) with a unique
  sentence per paragraph, so no perplexity window or score is reused by the content-keyed caches.
- `laion_coco/part-NNNNN.parquet`: LAION-COCO pairs (the columns of `scripts/make_pairs_sample.py`), as many as
  the OBELICS documents.
- `img2dataset/NNNNN.tar` + `.parquet`: every image of both, as img2dataset writes a download (10,000 samples a
  tar, its default `number_sample_per_shard`; `<key>.jpg` + `<key>.json`); 1% of the URLs failed there. Each
  image is a distinct small JPEG (a random gradient with noise), so image caches never hit by accident.
- `optout.txt`: one whole site, and 0.5% of the image URLs.
- `pdfa/pdfa-eng-train-NNNN.tar`: PDFs of 1 to 6 pages with PDFA's JSON (`scripts/make_pdf_sample.py`), 50 a tar
  by default.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import random
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipelines.obelics_format import OBELICS_SCHEMA  # noqa: E402
from scripts.make_pairs_sample import schema as pairs_schema  # noqa: E402
from scripts.make_pdf_sample import make_pdf, pdfa_json, write_tar  # noqa: E402
from scripts.make_sample_data import prose_paragraphs  # noqa: E402

SITES = [f"www.site{i:02d}.example" for i in range(40)]
IMAGES_PER_TAR = 10_000  # img2dataset's default number_sample_per_shard
FAILED_SHARE, OPTOUT_SHARE = 0.01, 0.005


@dataclass(frozen=True)
class CorpusSize:
    shards: int = 4
    docs_per_shard: int = 200
    pdfs: int = 100
    seed: int = 0
    pdfs_per_tar: int = 50  # PDFA's tars hold about 1,200 documents; smaller here, so there are several tars


def jpeg(rng: np.random.Generator, side: int) -> bytes:
    """A distinct image: a random colour gradient with noise, `side` px a side, as JPEG."""
    ramp = np.linspace(0, 1, side, dtype=np.float32)
    start, end = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    pixels = start + (end - start) * ramp[None, :, None] * ramp[:, None, None] ** rng.uniform(0.3, 3)
    pixels += rng.normal(0, 12, (side, side, 3))
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


class Download:
    """Writes images into an img2dataset download as they are made, a tar and its parquet at a time."""

    def __init__(self, folder: Path, rng: np.random.Generator):
        self.folder, self.rng, self.number, self.members, self.rows = folder, rng, 0, [], []
        folder.mkdir(parents=True, exist_ok=True)

    def add(self, url: str, side: int) -> None:
        key = f"{self.number:05d}{len(self.rows):04d}"
        row = {"url": url, "key": key, "status": "success", "error_message": None, "width": side, "height": side,
               "original_width": side, "original_height": side, "sha256": None}
        if self.rng.random() < FAILED_SHARE:
            row.update(status="failed_to_download", error_message="HTTP Error 404: Not Found", width=None,
                       height=None, original_width=None, original_height=None)
        else:
            data = jpeg(self.rng, side)
            row["sha256"] = hashlib.sha256(data).hexdigest()
            self.members += [(f"{key}.jpg", data), (f"{key}.json", json.dumps(row).encode())]
        self.rows.append(row)
        if len(self.rows) == IMAGES_PER_TAR:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        write_tar(self.folder / f"{self.number:05d}.tar", self.members)
        pq.write_table(pa.Table.from_pylist(self.rows), self.folder / f"{self.number:05d}.parquet")
        self.number, self.members, self.rows = self.number + 1, [], []


def obelics_row(rng: random.Random, paragraphs: list[str], name: str, urls: list[str]) -> dict:
    site = rng.choice(SITES)
    images, texts, metadata = [], [], []
    for i, url in enumerate(urls):
        text = f"{rng.choice(paragraphs)} This is paragraph {i + 1} of document {name}."
        images += [None, url]
        texts += [text, None]
        metadata += [None, {"src": url, "document_url": f"https://{site}/{name}.html"}]
    general = {"url": f"https://{site}/{name}.html", "warc_filename": f"crawl-data/rehearsal/{name}.warc.gz"}
    return {"images": images, "metadata": json.dumps(metadata), "general_metadata": json.dumps(general),
            "texts": texts}


def pair_row(rng: random.Random, url: str, side: int) -> dict:
    caption = f"a photograph of thing {rng.randrange(10**6)} in place {rng.randrange(1000)}"
    return {"URL": url, "TEXT": caption.title(), "top_caption": caption, "all_captions": [caption],
            "all_similarities": [0.3], "WIDTH": side, "HEIGHT": side, "similarity": 0.3,
            "hash": int.from_bytes(hashlib.sha256(url.encode()).digest()[:8], "big", signed=True),
            "pwatermark": round(rng.random(), 4), "punsafe": round(rng.random() ** 8, 4)}


def generate(output: Path, size: CorpusSize) -> dict[str, Path]:
    """Writes the corpus under `output`; returns its parts' paths."""
    rng, np_rng = random.Random(size.seed), np.random.default_rng(size.seed)
    paragraphs = prose_paragraphs()
    download = Download(output / "img2dataset", np_rng)
    optouts = [SITES[-1]]
    for part, folder in (("obelics", output / "obelics"), ("laion_coco", output / "laion_coco")):
        folder.mkdir(parents=True, exist_ok=True)
        for shard in range(size.shards):
            rows = []
            for doc in range(size.docs_per_shard):
                name = f"{part}-{size.seed}-{shard:05d}-{doc:06d}"
                n_images = rng.randint(1, 3) if part == "obelics" else 1
                urls = [f"https://img{rng.randrange(50)}.example/{name}-{i}.jpg" for i in range(n_images)]
                side = rng.randint(64, 128) if part == "obelics" else rng.choice([120, 160, 192, 224])
                for url in urls:
                    download.add(url, side)
                    if rng.random() < OPTOUT_SHARE:
                        optouts.append(url)
                rows.append(obelics_row(rng, paragraphs, name, urls) if part == "obelics"
                            else pair_row(rng, urls[0], side))
            if part == "obelics":
                table = pa.Table.from_pylist(rows, schema=OBELICS_SCHEMA)
                pq.write_table(table, folder / f"train-{shard:05d}-of-{size.shards:05d}.parquet")
            else:
                pq.write_table(pa.Table.from_pylist(rows, schema=pairs_schema(float_sizes=False)),
                               folder / f"part-{shard:05d}.parquet")
    download.flush()
    (output / "optout.txt").write_text("\n".join(optouts) + "\n")
    write_pdfs(output / "pdfa", size, rng)
    return {name: output / name for name in ("obelics", "laion_coco", "img2dataset", "pdfa")} | {
        "optout": output / "optout.txt"}


def write_pdfs(folder: Path, size: CorpusSize, rng: random.Random) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for tar in range(0, size.pdfs, size.pdfs_per_tar):
        members = []
        for number in range(tar, min(tar + size.pdfs_per_tar, size.pdfs)):
            pages = [[f"Document {number} page {p + 1} line {i + 1}: {rng.choice(SITES)} reports on item "
                      f"{rng.randrange(10**6)} with enough words to keep" for i in range(rng.randint(2, 6))]
                     for p in range(rng.randint(1, 6))]
            key = f"{size.seed:02d}{number:06d}"
            members += [(f"{key}.pdf", make_pdf(pages)), (f"{key}.json", pdfa_json(pages))]
        write_tar(folder / f"pdfa-eng-train-{tar // size.pdfs_per_tar:04d}.tar", members)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--shards", type=int, default=CorpusSize.shards)
    parser.add_argument("--docs-per-shard", type=int, default=CorpusSize.docs_per_shard)
    parser.add_argument("--pdfs", type=int, default=CorpusSize.pdfs)
    parser.add_argument("--seed", type=int, default=CorpusSize.seed)
    args = parser.parse_args(argv)
    if args.output.exists():
        parser.error(f"--output {args.output}: exists; choose a new folder")
    generate(args.output, CorpusSize(args.shards, args.docs_per_shard, args.pdfs, args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
