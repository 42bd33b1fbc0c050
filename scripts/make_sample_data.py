"""Build the sample data that ships in `pipelines/sample_data/`, reproducibly and offline.

    python scripts/make_sample_data.py            # rewrites pipelines/sample_data/

- Text: real English prose, the paragraphs of the Python reference manual that every CPython carries
  (`pydoc_data.topics`), without its grammar and code blocks.
- Images: natural photographs and scans shipped inside scikit-image (`skimage/data`), cut into distinct crops,
  stored as JPEGs in an img2dataset-format download under `img2dataset/` (a few URLs failed there, a few are
  missing), so every image is available without a network.
- `optout.txt`: opt-outs for an offline run: one whole site, two documents per shard, eight images.
- `eval/vqa_sample.parquet`: a small evaluation set for the decontamination demo; 6 of its images are altered
  copies of training images and 2 of its question+answer pairs are lifted from training text.
- OBELICS: 4 shards of 50 documents in the Hub's schema (the `HuggingFaceM4/OBELICS` dataset card): interleaved
  texts and image URLs, per-image metadata, `general_metadata`, and in each shard two rows that break the layout rules.
Same inputs, same seed: same bytes.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import re
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pipelines.obelics_format import OBELICS_SCHEMA

OUT = Path(__file__).resolve().parent.parent / "pipelines" / "sample_data"
SEED = 20240415  # the Idefics2 paper's arXiv date
SHARDS, DOCS_PER_SHARD = 4, 50
CROPS_PER_PHOTO = 8
PHOTOS = ["astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "retina", "camera", "brick", "grass",
          "gravel", "moon", "coins", "immunohistochemistry", "page", "text"]
SITES = ["www.fieldnotes.example", "blog.kitchenlab.example", "news.riverside.example", "www.stargazers.example",
         "learn.pythonic.example", "www.makers-guild.example", "journal.tidepool.example", "www.oldmaps.example"]
IMAGE_HOSTS = ["images.fieldnotes.example", "cdn.photohost.example", "static.riverside.example"]


def prose_paragraphs() -> list[str]:
    """Paragraphs of the Python reference that read as prose: no indented code, no grammar, no headings."""
    from pydoc_data.topics import topics

    paragraphs = []
    for name in sorted(topics):
        for block in re.split(r"\n\s*\n", topics[name]):
            if block.startswith((" ", "\t")) or "::=" in block or "***" in block or "===" in block:
                continue
            text = " ".join(line.strip() for line in block.splitlines())
            letters = sum(c.isalpha() or c == " " for c in text)
            if 120 <= len(text) <= 1200 and letters / len(text) > 0.85 and text[-1] in ".:)" and text[0].isupper():
                paragraphs.append(text)
    return paragraphs


def photo_crops(rng: random.Random) -> list[bytes]:
    """Distinct crops of scikit-image's bundled photographs, as JPEG bytes of at most 320 px a side."""
    import skimage.data

    crops = []
    for name in PHOTOS:
        array = getattr(skimage.data, name)()
        photo = Image.fromarray(np.asarray(array)).convert("RGB")
        width, height = photo.size
        for _ in range(CROPS_PER_PHOTO):
            scale = rng.uniform(0.45, 0.8)
            w, h = int(width * scale), int(height * scale * rng.uniform(0.75, 1.25))
            h = min(h, height)
            left, top = rng.randrange(0, width - w + 1), rng.randrange(0, height - h + 1)
            crop = photo.crop((left, top, left + w, top + h))
            crop.thumbnail((320, 320), Image.Resampling.LANCZOS)
            buffer = io.BytesIO()
            crop.save(buffer, format="JPEG", quality=88)
            crops.append(buffer.getvalue())
    return crops


def image_entry(rng: random.Random, url: str, doc_url: str) -> dict:
    meta = {"document_url": doc_url, "unformatted_src": url.split("/", 3)[-1], "src": url,
            "formatted_filename": Path(url).stem.replace("_", " ")}
    if rng.random() < 0.6:
        meta["alt_text"] = rng.choice(["A photograph", "Figure", "Close-up view", "Picture of the scene", ""])
    if rng.random() < 0.5:
        meta["rendered_width"], meta["rendered_height"] = rng.choice([(300, 200), (640, 480), ("50%", "50%")])
    return meta


def make_document(rng: random.Random, paragraphs: list[str], image_urls: list[str], number: int) -> dict:
    site = rng.choice(SITES)
    doc_url = f"https://{site}/articles/{number:04d}-{rng.randrange(10**6):06d}.html"
    n_images = rng.randint(1, 3)
    kinds = ["I", "T"] * n_images if rng.random() < 0.5 else ["T", "I"] * n_images  # alternating, as OBELICS
    if n_images > 1 and rng.random() < 0.5:
        kinds = kinds[:-1]
    images, texts, metadata = [], [], []
    for kind in kinds:
        if kind == "I":
            url = rng.choice(image_urls)
            images.append(url), texts.append(None), metadata.append(image_entry(rng, url, doc_url))
        else:
            images.append(None), texts.append(paragraphs.pop()), metadata.append(None)
    general = {"url": doc_url,
               "warc_filename": f"crawl-data/CC-MAIN-2023-06/segments/1674764500{rng.randrange(10**6):06d}.27/"
                                f"warc/CC-MAIN-20230205-{rng.randrange(10**5):05d}.warc.gz",
               "warc_record_offset": rng.randrange(10**9), "warc_record_length": rng.randrange(5000, 60000)}
    return {"images": images, "metadata": json.dumps(metadata), "general_metadata": json.dumps(general),
            "texts": texts}


def break_layout(row: dict, how: str) -> dict:
    """The layout errors the `structure` step must catch, one per kind."""
    row = dict(row, images=list(row["images"]), texts=list(row["texts"]))
    if how == "length_mismatch":
        row["texts"].append("A trailing text with no matching image slot.")
    elif how == "text_and_image_at_one_position":
        first_image = next(i for i, u in enumerate(row["images"]) if u)
        row["texts"][first_image] = "A caption that shares a position with its image."
    elif how == "empty_position":
        row["images"].insert(0, None), row["texts"].insert(0, None)
        row["metadata"] = json.dumps([None] + json.loads(row["metadata"]))
    elif how == "no_image":
        keep = [i for i, t in enumerate(row["texts"]) if t is not None]
        row["images"], row["texts"] = [None] * len(keep), [row["texts"][i] for i in keep]
        row["metadata"] = json.dumps([None] * len(keep))
    elif how == "no_text":
        keep = [i for i, u in enumerate(row["images"]) if u is not None]
        metadata = json.loads(row["metadata"])
        row["images"], row["texts"] = [row["images"][i] for i in keep], [None] * len(keep)
        row["metadata"] = json.dumps([metadata[i] for i in keep])
    elif how == "bad_metadata_json":
        row["metadata"] = row["metadata"][:-7]
    elif how == "bad_metadata_length":
        row["metadata"] = json.dumps(json.loads(row["metadata"])[:-1])
    elif how == "consecutive_texts":  # valid: `structure` merges the two texts
        position = next(i for i, t in enumerate(row["texts"]) if t is not None)
        metadata = json.loads(row["metadata"])
        metadata.insert(position + 1, None)
        row["images"].insert(position + 1, None)
        row["texts"].insert(position + 1, "This paragraph continues the one before it.")
        row["metadata"] = json.dumps(metadata)
    return row


def write_img2dataset_download(rng: random.Random, folder: Path, urls: list[str], images: list[bytes]) -> None:
    """The sample images as img2dataset writes a download (its README, output format): tars of `<key>.jpg` +
    `<key>.json`, and a parquet per tar listing every URL, failures included. A few URLs failed there and a few
    were never tried."""
    folder.mkdir(parents=True, exist_ok=True)
    failed = set(rng.sample(range(len(urls)), 6))
    never_tried = set(rng.sample(sorted(set(range(len(urls))) - failed), 3))
    per_tar = len(urls) // 2
    for shard in range(2):
        rows = []
        with tarfile.open(folder / f"{shard:05d}.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
            for index in range(shard * per_tar, (shard + 1) * per_tar):
                if index in never_tried:
                    continue
                key = f"{shard:05d}{index - shard * per_tar:04d}"
                row = {"url": urls[index], "key": key, "status": "success", "error_message": None,
                       "width": None, "height": None, "original_width": None, "original_height": None,
                       "sha256": hashlib.sha256(images[index]).hexdigest()}
                if index in failed:
                    row.update(status="failed_to_download", error_message="HTTP Error 404: Not Found", sha256=None)
                else:
                    with Image.open(io.BytesIO(images[index])) as image:
                        row.update(width=image.width, height=image.height, original_width=image.width,
                                   original_height=image.height)
                    for name, data in ((f"{key}.jpg", images[index]), (f"{key}.json", json.dumps(row).encode())):
                        info = tarfile.TarInfo(name)
                        info.size, info.mtime = len(data), 0
                        tar.addfile(info, io.BytesIO(data))
                rows.append(row)
        pq.write_table(pa.Table.from_pylist(rows), folder / f"{shard:05d}.parquet")


def write_optout_list(rng: random.Random, path: Path, image_urls: list[str]) -> None:
    """Opt-outs for the demo's offline run: one whole site, a few documents and a few images."""
    lines = ["# Sample opt-outs: a domain opts out everything under it; a URL opts out just itself.",
             SITES[-1]]
    lines += rng.sample(image_urls, 8)
    path.write_text("\n".join(lines) + "\n")


def _jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def write_eval_sample(folder: Path, training_images: list[bytes], training_texts: list[str]) -> None:
    """A small VQA-style evaluation set (image, question, answer, id) for the decontamination demo: 6 items whose
    images are altered copies of training images, 2 whose question and answer were lifted from training text,
    and 20 that have nothing in common with the training sample."""
    import skimage.data

    rng = random.Random(SEED + 1)
    alter = [("re-encoded at JPEG quality 35", lambda im: Image.open(io.BytesIO(_jpeg(im, 35)))),
             ("resized to 60%", lambda im: im.resize((int(im.width * 0.6), int(im.height * 0.6)))),
             ("cropped by 4% on each side", lambda im: im.crop((int(im.width * .04), int(im.height * .04),
                                                                 int(im.width * .96), int(im.height * .96)))),
             ("mirrored", lambda im: im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)),
             ("in grey", lambda im: im.convert("L")),
             ("brightened by 20%", lambda im: im.point(lambda v: min(255, int(v * 1.2))))]
    rows = []
    for number, (how, change) in enumerate(alter):
        source = Image.open(io.BytesIO(training_images[rng.randrange(len(training_images))]))
        rows.append({"image": {"bytes": _jpeg(change(source)), "path": None}, "id": f"leak-image-{number}",
                     "question": f"Which photograph is this ({how})?", "answer": "a training image"})
    distinct = [np.asarray(getattr(skimage.data, n)()) for n in ("cell", "microaneurysms", "clock", "logo")]
    left, right, _ = skimage.data.stereo_motorcycle()
    for photo in (left, right):
        h, w = photo.shape[:2]
        distinct += [photo[i * h // 2:(i + 1) * h // 2, j * w // 2:(j + 1) * w // 2]
                     for i in range(2) for j in range(2)]
    distinct += [(face * 255).astype(np.uint8) for face in skimage.data.lfw_subset()[:8]]
    for number, array in enumerate(distinct):
        image = Image.fromarray(array).convert("RGB")
        image = image.resize((max(image.width, 96), max(image.height, 96)))
        rows.append({"image": {"bytes": _jpeg(image), "path": None}, "id": f"distinct-{number}",
                     "question": "What is in the picture?", "answer": "something"})
    for number, text in enumerate(rng.sample(training_texts, 2)):
        words = text.split()[:12]
        rows.append({"image": {"bytes": rows[-1 - number]["image"]["bytes"], "path": None},
                     "id": f"leak-text-{number}", "question": " ".join(words[:9]) + "?",
                     "answer": " ".join(words[9:12])})
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), folder / "vqa_sample.parquet")


BREAKS = ["length_mismatch", "text_and_image_at_one_position", "empty_position", "no_image", "no_text",
          "bad_metadata_json", "bad_metadata_length", "no_image"]


def main() -> None:
    rng = random.Random(SEED)
    paragraphs = prose_paragraphs()
    rng.shuffle(paragraphs)
    crops = photo_crops(rng)
    image_urls = [f"https://{IMAGE_HOSTS[i % len(IMAGE_HOSTS)]}/media/photo_{i:04d}.jpg" for i in range(len(crops))]
    write_img2dataset_download(rng, OUT / "img2dataset", image_urls, crops)
    write_optout_list(rng, OUT / "optout.txt", image_urls)
    (OUT / "obelics").mkdir(parents=True, exist_ok=True)
    opted_docs: list[str] = []
    for shard in range(SHARDS):
        rows = [make_document(rng, paragraphs, image_urls, shard * DOCS_PER_SHARD + i) for i in range(DOCS_PER_SHARD)]
        for k, how in enumerate(BREAKS[2 * shard: 2 * shard + 2]):
            rows[7 + 20 * k] = break_layout(rows[7 + 20 * k], how)
        rows[3] = break_layout(rows[3], "consecutive_texts")
        opted_docs += [json.loads(rows[k]["general_metadata"])["url"] for k in (11, 31)]
        table = pa.Table.from_pylist(rows, schema=OBELICS_SCHEMA)
        pq.write_table(table, OUT / "obelics" / f"train-{shard:05d}-of-{SHARDS:05d}.parquet")
    training_texts = [t for p in sorted((OUT / "obelics").glob("*.parquet")) for r in pq.read_table(p).to_pylist()
                      if isinstance(r["texts"], list) for t in r["texts"] if isinstance(t, str) and len(t.split()) > 12]
    write_eval_sample(OUT / "eval", crops, training_texts)
    with open(OUT / "optout.txt", "a") as f:
        f.write("\n".join(opted_docs) + "\n")
    print(f"wrote {SHARDS} x {DOCS_PER_SHARD} documents, {len(crops)} images, "
          f"{len(paragraphs)} paragraphs unused, under {OUT}")


if __name__ == "__main__":
    main()
