"""Build the Cauldron sample that ships in `pipelines/sample_data/cauldron/`, reproducibly and offline.

    python scripts/make_cauldron_sample.py [--output DIR]     # default: rewrites pipelines/sample_data/cauldron/

`sources/<name>.parquet`: three or four rows of every registry entry (the 50 subsets and the text-only sets) in
its source's schema, as `cauldron/registry.toml` maps it (images as the `datasets` Image encoding
{bytes, path}), with small generated pictures. Planted cases:
  - vqav2 rows 0 and 1 ask two questions about the same picture, stored as two different PNG files (other
    compression, other file name): one output row with two turns;
  - vqav2 row 2's image is an evaluation image of `eval/vqa_sample.parquet` (item distinct-3) resized to 90% and
    re-encoded as JPEG: removed by the decontamination and reported;
  - cocoqa row 2 has no answer and row 3 an image that does not decode: counted as unreadable.
`published/<name>/train-00000-of-00001.parquet`: two configs (ai2d, chartqa) in the published Cauldron schema.
Same inputs, same seed: same bytes.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cauldron.registry import entries  # noqa: E402

SAMPLE = ROOT / "pipelines" / "sample_data"
OUT = SAMPLE / "cauldron"
SIDE = 40  # px: small pictures keep the sample under a megabyte
WORDS = ["red", "small", "wooden", "bright", "round", "striped", "tall", "empty", "quiet", "old", "blue", "green"]


def picture(seed: int, compress: int = 6) -> bytes:
    """A small picture of coloured blocks, distinct per seed (blocks, not noise: hashes see structure)."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(5, 5, 3), dtype=np.uint8)
    pixels = np.kron(blocks, np.ones((SIDE // 5, SIDE // 5, 1), dtype=np.uint8))
    out = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(out, "PNG", compress_level=compress)
    return out.getvalue()


def image(seed: int, name: str = "", compress: int = 6) -> dict:
    return {"bytes": picture(seed, compress), "path": name or f"{seed}.png"}


def words(seed: int, n: int) -> str:
    return " ".join(WORDS[(seed * 7 + i * 3) % len(WORDS)] for i in range(n))


def value(role: str, entry, row: int, seed: int):
    """The value of `role` in row `row` of `entry`'s source, typed as that source types it."""
    family, kind = entry.family, entry.answer_kind
    if role in ("image", "image_0", "image_1"):
        return image(seed * 10 + ("image", "image_0", "image_1").index(role))
    if role == "images":
        return [image(seed * 10 + 1), image(seed * 10 + 2)]
    if role == "question":
        return f"What is the {words(seed, 1)} thing in picture {row} made of?"
    if role in ("qa", "questions", "answers"):  # all of an image's questions in one row, as the source keeps them
        asked = [f"What is the {words(seed + k, 1)} value in chart {row}?" for k in range(2)]
        said = [("no", "yes")[(row + k) % 2] if family == "yes_no" else words(seed + k, 1 + k) for k in range(2)]
        if role == "qa":
            return [{"question": q, "answer": a} for q, a in zip(asked, said)]
        return asked if role == "questions" else said
    if role == "choices":
        return [words(seed + k, 2) for k in range(3 if entry.name == "visual7w" else 4)]
    if role == "explanation":
        text = f"The {words(seed, 2)} part is counted first, then the {words(seed + 1, 2)} part is added."
        return [text] if entry.name == "aokvqa" else text
    if role == "caption":
        text = f"A {words(seed, 3)} scene with a {words(seed + 2, 2)} object in the middle."
        return [text, "another reference"] if entry.fields["caption"] in ("reference_strs", "captions") else text
    if role in ("text", "code"):
        if entry.style == "tikz":
            return "\\begin{tikzpicture}\\draw (0,0) -- (%d,1);\\end{tikzpicture}" % row
        if entry.style == "html":
            return f"<html><body><h1>{words(seed, 2)}</h1><p>{words(seed + 1, 6)}</p></body></html>"
        return f"{words(seed, 4)} {row}"
    if role == "conversations":
        return [{"from": "system", "value": "You are a helpful assistant."},
                {"from": "human", "value": f"Write a sentence about {words(seed, 2)} things."},
                {"from": "gpt", "value": f"Here is one: the {words(seed, 5)} things stood in a row."}]
    if role == "turns":
        return [f"How do I keep {words(seed, 1)} plants alive?", f"Water them and give them {words(seed, 3)} light.",
                "And in winter?", "Less water, more light."]
    if role == "context":
        return "" if row % 2 else f"Background: {words(seed, 8)}."
    if role == "answer":
        if family == "multiple_choice":
            return {"index": row % 3, "letter": "ABC"[row % 3], "text": f"{words(seed, 1)} answer"}[kind]
        if family in ("yes_no",) or entry.name == "nlvr2":
            return bool(row % 2) if entry.name == "nlvr2" else row % 2
        if family == "counting":
            return row + 2
        if entry.name == "spot_the_diff":
            return [f"the {words(seed, 1)} car is gone", f"a {words(seed + 1, 1)} sign appeared"]
        if family in ("math", "text_only"):
            return f"First add {row} and {row + 3}, which gives {2 * row + 3}. The answer is {2 * row + 3}."
        text = f"{words(seed, 1 + row % 3)}"
        return [text, text, "other"] if entry.fields["answer"] in ("answers", "label") else text
    raise ValueError(f"{entry.name}: no sample value for role {role}")


def source_rows(entry) -> list[dict]:
    base = sum(ord(c) for c in entry.name) * 100
    rows = []
    for row in range(3):
        rows.append({column: value(role, entry, row, base + row) for role, column in entry.fields.items()})
    return rows


def plant(name: str, rows: list[dict]) -> list[dict]:
    if name == "vqav2":
        same = {**rows[0], "question": "What colour is the top left block?", "multiple_choice_answer": "red"}
        same["image"] = image(sum(ord(c) for c in name) * 1000, "copy_of_first.png", compress=9)
        rows[0]["image"] = image(sum(ord(c) for c in name) * 1000, "first.png", compress=1)
        rows.insert(1, same)
        rows[2]["image"] = {"bytes": edited_eval_image(), "path": "from_an_evaluation_set.jpg"}
    if name == "cocoqa":
        rows[2]["answer"] = None
        rows.append({**rows[0], "image": {"bytes": b"\x89PNG\r\n\x1a\n not really", "path": "broken.png"},
                     "question": "Is this image readable?"})
    return rows


def edited_eval_image() -> bytes:
    table = pq.read_table(SAMPLE / "eval" / "vqa_sample.parquet").to_pylist()
    original = next(r for r in table if r["id"] == "distinct-3")["image"]["bytes"]
    picture = Image.open(io.BytesIO(original)).convert("RGB")
    picture = picture.resize((round(picture.width * 0.9), round(picture.height * 0.9)), Image.Resampling.BICUBIC)
    out = io.BytesIO()
    picture.save(out, "JPEG", quality=85)
    return out.getvalue()


def write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path, compression="zstd")


def published_rows(name: str) -> list[dict]:
    seed = sum(ord(c) for c in name) * 100 + 50
    return [{"images": [image(seed)], "texts": [
                {"user": f"Question: Which {words(seed, 1)} part is on the left?\nChoices:\nA. one\nB. two\n"
                         "Answer with the letter.", "assistant": "Answer: B", "source": name},
                {"user": "How many blocks are there?\nGive a very brief answer.", "assistant": "25", "source": name}]},
            {"images": [image(seed + 1)], "texts": [
                {"user": f"What is the {words(seed, 2)} value?\nAnswer briefly.", "assistant": words(seed, 3),
                 "source": name}]}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=OUT)
    out = parser.parse_args().output
    for entry in entries().values():
        write(out / "sources" / f"{entry.name}.parquet", plant(entry.name, source_rows(entry)))
    for name in ("ai2d", "chartqa"):
        write(out / "published" / name / "train-00000-of-00001.parquet", published_rows(name))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
