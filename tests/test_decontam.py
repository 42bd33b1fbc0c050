"""Decontamination: copies of evaluation images are found, distinct images are not, verbatim Q+A text is found,
the Hamming index equals a brute-force scan, and the CLI and the step do what they say."""

from __future__ import annotations

import io
import json
import os
import pickle
import random
import struct
import subprocess
import sys
import tempfile
import zlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datatrove.data import Document, Media, MediaType
from PIL import Image, ImageEnhance, ImageOps

from filters import pixels
from filters.decontam import index as index_module
from filters.decontam.__main__ import main as decontam_main
from filters.decontam.hamming_index import HammingIndex, brute_force_search
from filters.decontam.index import (
    DEFAULT_RADIUS, INDEX_VERSION, DecontaminationIndex, EvalItem, build_index, items_from_rows,
)
from filters.decontam.registry import BENCHMARKS
from filters.decontam.step import DecontaminationFilter
from tests.conftest import REPO, run_command


def natural_images() -> list[Image.Image]:
    """Photographs and scans bundled with scikit-image, their quarters, and faces: 150 distinct images."""
    import skimage.data as data

    names = ["astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "retina", "camera", "brick", "grass",
             "gravel", "moon", "coins", "immunohistochemistry", "page", "text", "cell", "microaneurysms", "clock",
             "horse", "logo", "colorwheel"]
    photos = [Image.fromarray(np.asarray(getattr(data, n)())).convert("RGB") for n in names]
    photos.append(Image.fromarray(data.stereo_motorcycle()[0]))
    quarters = [p.crop((i * p.width // 2, j * p.height // 2, (i + 1) * p.width // 2, (j + 1) * p.height // 2))
                for p in photos for i in range(2) for j in range(2)]
    faces = [Image.fromarray((f * 255).astype("uint8")).convert("RGB").resize((100, 100))
             for f in data.lfw_subset()[:40]]
    return photos + quarters + faces


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue()))


def _cut(image: Image.Image, left: float, top: float, right: float, bottom: float) -> Image.Image:
    w, h = image.size
    return image.crop((round(w * left), round(h * top), round(w * (1 - right)), round(h * (1 - bottom))))


def _gamma(value: float):
    table = [round(255 * (v / 255) ** value) for v in range(256)]
    return lambda image: image.point(table * len(image.getbands()))


def _random_crop(rng: random.Random, most: float):
    return lambda image: _cut(image, *(rng.uniform(0, most) for _ in range(4)))


# The evaluation image is the middle 80% of a photograph (a benchmark crops the web image it took, up to 10% a
# side); a training copy is an edit of the evaluation image, or a larger cut of the photograph.
MARGIN = 0.1


def _evaluation_image(photo: Image.Image) -> Image.Image:
    return _cut(photo, *(MARGIN,) * 4)


def _outward(sides):
    """A cut of the photograph extending the evaluation image by sides[i] of its own size on each side."""
    return lambda photo: _cut(photo, *(MARGIN - s * (1 - 2 * MARGIN) for s in sides(photo)))


EDITS = {  # training copy = edit(evaluation image)
    "jpeg q30": lambda im: _jpeg(im, 30),
    "resize x0.5": lambda im: im.resize((max(1, im.width // 2), max(1, im.height // 2))),
    "resize x2": lambda im: im.resize((im.width * 2, im.height * 2)),
    "grayscale": lambda im: im.convert("L"),
    "mirror": ImageOps.mirror,
    "crop in 2.5%/side": lambda im: _cut(im, *(0.025,) * 4),
    "crop in 5%/side": lambda im: _cut(im, *(0.05,) * 4),
    "crop in <=5% random": _random_crop(random.Random(0), 0.05),
}
PHOTOMETRIC = {  # each must be found with recall >= 0.99
    "brightness +20%": lambda im: ImageEnhance.Brightness(im).enhance(1.2),
    "brightness +30%": lambda im: ImageEnhance.Brightness(im).enhance(1.3),
    "brightness -30%": lambda im: ImageEnhance.Brightness(im).enhance(0.7),
    "contrast +30%": lambda im: ImageEnhance.Contrast(im).enhance(1.3),
    "contrast -30%": lambda im: ImageEnhance.Contrast(im).enhance(0.7),
    "gamma 0.8": _gamma(0.8),
    "gamma 1.25": _gamma(1.25),
    "saturation x1.5": lambda im: ImageEnhance.Color(im).enhance(1.5),
}
_rng = random.Random(2)
LARGER = {  # training copy = a larger cut of the photograph than the evaluation image
    "crop out 2.5%/side": _outward(lambda _: (0.025,) * 4),
    "crop out 5%/side": _outward(lambda _: (0.05,) * 4),
    "crop out 7.5%/side": _outward(lambda _: (0.075,) * 4),
    "crop out 10%/side": _outward(lambda _: (0.1,) * 4),
    "crop out <=10% random": _outward(lambda _: [_rng.uniform(0, 0.1) for _ in range(4)]),
}


@pytest.fixture(scope="module")
def image_index(tmp_path_factory):
    photos = natural_images()
    images = [_evaluation_image(photo) for photo in photos]
    path = tmp_path_factory.mktemp("index") / "index"
    build_index(str(path), [("photos", "test", (EvalItem("photos", "test", str(i), [im]) for i, im in
                                                 enumerate(images)))])
    return images, DecontaminationIndex(str(path)), photos


def recall_table(images, photos, index) -> tuple[dict[str, float], int, int, list[str]]:
    """Recall per edit and per crop size, and false matches between distinct images; the table's lines."""
    def recall(copies) -> float:
        found = index.match_images(copies)
        return float(np.mean([any(m.item == str(i) for m in matches) for i, matches in enumerate(found)]))

    recalls = {name: recall([edit(im) for im in images]) for name, edit in {**EDITS, **PHOTOMETRIC}.items()}
    recalls |= {name: recall([cut(photo) for photo in photos]) for name, cut in LARGER.items()}
    own = index.match_images(images)
    false = sum(1 for i, matches in enumerate(own) for m in matches if m.item != str(i))
    pairs = len(images) * (len(images) - 1)
    lines = [f"{'training copy':<22} recall  ({len(images)} natural images, radius {DEFAULT_RADIUS})"]
    lines += [f"{name:<22} {value:.3f}" for name, value in recalls.items()]
    lines.append(f"{'distinct images':<22} {false} false matches in {pairs} ordered pairs ({100 * false / pairs:.3f}%)")
    return recalls, false, pairs, lines


def test_copies_are_matched_and_distinct_images_are_not(image_index, capsys):
    images, index, photos = image_index
    recalls, false, pairs, lines = recall_table(images, photos, index)
    with capsys.disabled():  # the table belongs in the CI log
        print("\n" + "\n".join(lines))
    assert all(recalls[name] >= 0.97 for name in EDITS), recalls
    assert all(recalls[name] >= 0.99 for name in PHOTOMETRIC), recalls
    assert all(recalls[name] >= 0.97 for name in LARGER if "random" not in name), recalls
    assert recalls["crop out <=10% random"] >= 0.9, recalls
    assert false / pairs <= 0.0005
    own = index.match_images(images)
    assert all(any(m.tier == "exact" and m.item == str(i) for m in matches) for i, matches in enumerate(own))


def test_near_flat_images_match_only_exactly(tmp_path):
    """A flat or near-flat image has no stable perceptual hash: it must not match every other flat image."""
    rng = np.random.default_rng(0)
    def near_flat(level: int) -> Image.Image:
        noise = rng.integers(-1, 2, (120, 160, 1))
        return Image.fromarray(np.clip(level + noise, 0, 255).repeat(3, axis=2).astype("uint8"))

    evaluation = [Image.new("RGB", (160, 120), (200, 200, 200)), near_flat(90), *natural_images()[:20]]
    items = (EvalItem("e", "test", str(i), [im]) for i, im in enumerate(evaluation))
    meta = build_index(str(tmp_path / "i"), [("e", "test", items)])
    assert meta["benchmarks"]["e"]["images_flat"] == 2
    index = DecontaminationIndex(str(tmp_path / "i"))
    queries = [Image.new("RGB", (64, 64), (30, 120, 40)), near_flat(200), near_flat(90), evaluation[0]]
    found = index.match_images(queries)
    assert found[:3] == [[], [], []]
    assert [(m.item, m.tier) for m in found[3]] == [("0", "exact")]


def test_text_windows_catch_verbatim_question_and_answer(tmp_path):
    question = "What is the name of the river that flows through the old town of Heidelberg?"
    items = [EvalItem("textqa", "test", "7", [], question, ["The Neckar"]),
             EvalItem("textqa", "test", "8", [], "What color?", ["red"])]  # too short to index
    meta = build_index(str(tmp_path / "i"), [("textqa", "test", iter(items))])
    assert meta["benchmarks"]["textqa"]["texts_too_short"] == 1
    index = DecontaminationIndex(str(tmp_path / "i"))
    copied = ("Quiz night!\n WHAT is the name of the river that flows   through the old town of heidelberg -- "
              "the NECKAR.")
    assert [(m.item, m.tier) for m in index.match_text(copied)] == [("7", "text")]
    common = ("The river flows through the old town, and the name of the town is known to every visitor; "
              "what is the color of the river? It is red.")
    assert index.match_text(common) == []
    assert index.match_text(question) == []  # the question alone, without its answer, is not a leak


def test_hamming_index_equals_brute_force():
    rng = np.random.default_rng(1)
    hashes = rng.integers(0, 2**64 - 1, 50_000, dtype=np.uint64)
    queries = hashes[rng.choice(len(hashes), 300)].copy()
    for q in range(len(queries)):
        for bit in rng.choice(64, rng.integers(0, 12), replace=False):
            queries[q] ^= np.uint64(1) << np.uint64(bit)
    queries = np.concatenate([queries, rng.integers(0, 2**64 - 1, 100, dtype=np.uint64)])
    for radius in (3, 8, 10):
        assert HammingIndex(hashes, radius).search(queries) == brute_force_search(hashes, queries, radius)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares a huge size in a few bytes: what a decompression bomb looks like to Pillow."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)) + \
        chunk(b"IEND", b"")


def test_scan_cli_reports_matches_and_exits_1(image_index, tmp_path):
    images, index, _ = image_index
    folder = tmp_path / "scan"
    folder.mkdir()
    EDITS["jpeg q30"](images[3]).save(folder / "copy.jpg")
    ImageOps.mirror(images[5]).save(folder / "flipped.png")
    Image.new("RGB", (64, 64), (12, 200, 90)).save(folder / "unrelated.png")
    (folder / "notes.csv").write_text("a,b\n")
    result = run_command("filters.decontam", "scan", "--index", index.path, str(folder), "--json")
    assert result.returncode == 1, result.stderr
    rows = json.loads(result.stdout)
    assert {(r["file"].rsplit("/", 1)[1], r["item"], r["tier"]) for r in rows} == {
        ("copy.jpg", "3", "phash"), ("flipped.png", "5", "phash")}
    assert set(rows[0]) == {"file", "benchmark", "split", "item", "tier", "distance"}
    assert "2 match(es) in 3 file(s); 1 file(s) of another kind skipped" in result.stderr
    assert run_command("filters.decontam", "scan", "--index", index.path, str(folder), "--exit-zero").returncode == 0
    clean = run_command("filters.decontam", "scan", "--index", index.path, str(folder / "unrelated.png"))
    assert clean.returncode == 0 and "0 match(es) in 1 file(s)" in clean.stderr
    bad = run_command("filters.decontam", "scan", "--index", str(tmp_path), str(folder))
    assert bad.returncode == 2 and "not a decontamination index" in bad.stderr


def test_scan_names_every_file_it_cannot_check_and_reads_parquet(image_index, tmp_path, monkeypatch, capsys):
    images, index, _ = image_index
    folder = tmp_path / "scan"
    (folder / "locked").mkdir(parents=True)
    EDITS["resize x0.5"](images[7]).save(folder / "locked" / "leak.png")  # inside a folder that cannot be listed
    (folder / "broken.jpg").write_bytes(b"not an image")
    (folder / "gone.jpg").symlink_to(tmp_path / "missing.jpg")  # listed, but cannot be read
    (folder / "bomb.png").write_bytes(_png_header_only(30_000, 30_000))
    (folder / "bad.parquet").write_bytes(b"PAR1 not parquet")
    leak = io.BytesIO()
    images[9].save(leak, format="PNG")
    pq.write_table(pa.Table.from_pylist([
        {"images": [{"bytes": leak.getvalue(), "path": None}], "texts": [{"user": "hi", "assistant": "ok"}]},
        {"images": [], "texts": [{"user": "Tell me", "assistant": "Unrelated words only here, nothing else."}]},
    ]), folder / "rows.parquet")
    real_scandir = os.scandir

    def scandir(path="."):
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    status = decontam_main(["scan", "--index", index.path, str(folder), "--json"])
    out, err = capsys.readouterr()
    assert status == 2, err
    assert [(r["file"].rsplit("/", 1)[1], r["item"]) for r in json.loads(out)] == [("rows.parquet#row0", "9")]
    lines = err.strip().splitlines()
    assert sorted(line.split(": ")[1].rsplit("/", 1)[1] for line in lines[:-1]) == [
        "bad.parquet", "bomb.png", "broken.jpg", "gone.jpg", "locked"]
    assert lines[-1].endswith("; 5 could not be checked (named above)")
    assert "Traceback" not in err


def test_scan_streams_large_images(image_index, tmp_path):
    """24 photos of 12 MP: decoded all at once they need 860 MB; streamed through 448 px working copies, little."""
    images, index, _ = image_index
    folder = tmp_path / "big"
    folder.mkdir()
    base = images[0].resize((4000, 3000))
    for number in range(24):
        base.rotate(number, fillcolor=(number, 0, 0)).save(folder / f"{number:02d}.jpg", quality=80)
    # VmHWM: this process's peak resident memory (ru_maxrss would carry the forking parent's peak over exec)
    code = ("import re, sys; from filters.decontam.__main__ import main; status = main(sys.argv[1:]); "
            "peak = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1); "
            "print(int(peak) // 1024, status)")
    result = subprocess.run([sys.executable, "-c", code, "scan", "--index", index.path, str(folder)],
                            capture_output=True, text=True, cwd=REPO, timeout=300)
    peak_mb, status = map(int, result.stdout.splitlines()[-1].split())
    assert status == 1 and peak_mb < 600, (peak_mb, result.stderr)


def test_build_names_unreadable_images_and_refuses_an_empty_source(tmp_path):
    folder = tmp_path / "mybench"
    folder.mkdir()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(folder / "a.png")
    natural_images()[0].save(folder / "b.jpg")
    (folder / "bomb.png").write_bytes(_png_header_only(30_000, 30_000))
    (folder / "gone.jpg").symlink_to(tmp_path / "missing.jpg")
    result = run_command("filters.decontam", "build", "--output", str(tmp_path / "i"), "--from", f"mine={folder}")
    assert result.returncode == 1, result.stderr
    assert f"{folder}/bomb.png: image 0 is not a readable image (DecompressionBombError" in result.stderr
    assert f"{folder}/gone.jpg: cannot read (No such file or directory); not indexed" in result.stderr
    assert "Traceback" not in result.stderr
    meta = json.loads((tmp_path / "i" / "index.json").read_text())
    assert meta["version"] == INDEX_VERSION and meta["benchmarks"]["mine"]["images"] == 2
    assert meta["benchmarks"]["mine"]["unreadable"] == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    pq.write_table(pa.Table.from_pylist([{"question": "What color?", "answer": "red"}]), empty / "q.parquet")
    (empty / "notes.txt").write_text("nothing")
    refused = run_command("filters.decontam", "build", "--output", str(tmp_path / "j"), "--from", f"e={empty}")
    assert refused.returncode == 2 and "e (" in refused.stderr and "nothing to index" in refused.stderr
    assert not (tmp_path / "j" / "index.json").exists()
    bad = run_command("filters.decontam", "build", "--output", str(tmp_path / "j"), "--benchmarks", "vqa9")
    assert bad.returncode == 2 and "unknown 'vqa9'" in bad.stderr


def test_index_opens_lazily_once_per_process(image_index, monkeypatch):
    _, index, _ = image_index
    DecontaminationIndex("/no/such/index")  # constructing reads nothing
    calls = []
    real = index_module._read_tables
    monkeypatch.setattr(index_module, "_LOADED", {})
    monkeypatch.setattr(index_module, "_read_tables", lambda *a: calls.append(a) or real(*a))
    first, second = DecontaminationIndex(index.path), pickle.loads(pickle.dumps(DecontaminationIndex(index.path)))
    assert first.match_text("x") == [] and second.match_text("x") == [] and len(calls) == 1
    assert first.tables is second.tables
    assert len(pickle.dumps(first)) < 300  # the loaded tables never travel


def test_step_hashes_the_shared_working_copy_once(image_index):
    images, index, _ = image_index
    buffer = io.BytesIO()
    images[4].resize((1600, 1200)).save(buffer, format="JPEG", quality=90)
    data = buffer.getvalue()
    before = pixels.decodes
    pixels.working_image(data)  # an earlier pixel step of the same task (NSFW)
    assert index.match_image_bytes([data])[0][0].item == "4"
    assert pixels.decodes - before == 1
    # decontamination is the last pixel step: it takes the copy out of the cache and stores none it decodes, so
    # a pipeline whose only pixel step it is (PDFA) keeps no cache at all
    assert pixels._CACHE.get(pixels.content_key(data)) is None
    assert index.match_image_bytes([data])[0][0].item == "4"
    assert pixels.decodes - before == 2 and pixels._CACHE.get(pixels.content_key(data)) is None
    # the `images` step seeds the cache from its own full decode: the pixel key of that copy is indexed too
    full = Image.open(io.BytesIO(data))
    full.load()
    assert index.match_working([pixels.reduce_to_working(full)])[0][0].tier == "phash"  # not an indexed image
    evaluation = tmp_index_with_bytes(data)
    assert [m.tier for m in evaluation.match_working([pixels.reduce_to_working(full)])[0]] == ["exact"]
    assert [m.tier for m in evaluation.match_image_bytes([data])[0]] == ["exact"]


def tmp_index_with_bytes(data: bytes) -> DecontaminationIndex:
    path = os.path.join(tempfile.mkdtemp(prefix="decontam-bytes-"), "index")
    build_index(path, [("b", "test", iter([EvalItem("b", "test", "0", [data])]))])
    return DecontaminationIndex(path)


def test_multiple_choice_answers_are_matched_by_option_text(tmp_path):
    """Rows shaped like the real ones: AI2D (index as a string into `options`), ScienceQA (int into `choices`),
    MMBench (letter, options in columns A-E with "nan" for missing ones), MMMU (letter, options as the literal
    of a list), MMStar (letter, options inside the question)."""
    rows = {
        "ai2d": {"question": "Which stage of the life cycle follows the egg in this diagram of the frog?",
                 "options": ["adult frog", "tadpole with legs", "froglet", "spawn"], "answer": "1"},
        "scienceqa": {"question": "Which of these states is farthest north on the map shown here?",
                      "choices": ["West Virginia", "Louisiana", "Arizona", "Oklahoma"], "answer": 0, "image": None},
        "mmbench": {"index": 17, "question": "What is the main material of the object shown in the picture?",
                    "A": "polished oak wood", "B": "brushed stainless steel", "C": "clear glass", "D": "nan",
                    "answer": "B", "hint": "nan"},
        "mmmu": {"id": "validation_Art_1", "question": "Which artistic movement does the painting <image 1> belong to?",
                 "options": "['Impressionism', 'Cubism', 'Baroque painting', 'Surrealism']", "answer": "C"},
        "mmstar": {"index": 3, "question": "Which option describe the object relationship in the image correctly?"
                   "\nOptions: A: The suitcase is on the book., B: The suitcase is beneath the cat., "
                   "C: The suitcase is beneath the bed., D: The suitcase is beneath the book.", "answer": "D"},
    }
    sources = [(name, "rows", items_from_rows([row], BENCHMARKS[name], name, "test")) for name, row in rows.items()]
    build_index(str(tmp_path / "i"), sources)
    index = DecontaminationIndex(str(tmp_path / "i"))
    copies = {
        "ai2d": "Quiz: which stage of the life cycle follows the egg in this diagram of the frog? Tadpole with legs!",
        "scienceqa": "Which of these states is farthest north on the map shown here? West Virginia.",
        "mmbench": "What is the main material of the object shown in the picture? Brushed stainless steel",
        "mmmu": "Which artistic movement does the painting belong to? Baroque painting.",
        "mmstar": "Which option describe the object relationship in the image correctly? The suitcase is beneath "
                  "the book.",
    }
    for name, text in copies.items():
        assert [m.benchmark for m in index.match_text(text)] == [name], name
    wrong = "Which of these states is farthest north on the map shown here? Louisiana."
    assert index.match_text(wrong) == []
    letter = "What is the main material of the object shown in the picture? B"
    assert index.match_text(letter) == []


def test_step_removes_matching_images_then_documents(image_index):
    images, index, _ = image_index

    def media(image: Image.Image, url: str) -> Media:
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="JPEG", quality=90)
        return Media(id=url, type=MediaType.IMAGE, url=url, media_bytes=buffer.getvalue())

    unrelated = Image.new("RGB", (80, 60), (10, 90, 200))
    mixed = Document(text="A page.", id="mixed", media=[media(images[0], "u0"), media(unrelated, "u1")],
                     metadata={"texts": ["A page.", None, None]})
    only = Document(text="Another.", id="only", media=[media(images[1], "u2")], metadata={"texts": ["Another.", None]})
    step = DecontaminationFilter(index, policy="image")
    assert step.filter_batch([mixed, only]) == [True, (False, "eval_images")]
    assert [m.url for m in mixed.media] == ["u1"] and mixed.metadata["texts"] == ["A page.", None]
    assert mixed.metadata["eval_match"][0]["item"] == "0"
    whole = DecontaminationFilter(index, policy="document")
    pair = Document(text="x", id="p", media=[media(images[2], "u3")], metadata={"texts": ["x", None]})
    assert whole.filter_batch([pair]) == [(False, "eval_image")]
