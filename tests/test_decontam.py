"""Decontamination: copies of evaluation images are found, distinct images are not, verbatim Q+A text is found,
the Hamming index equals a brute-force scan, and the CLI and the step do what they say."""

from __future__ import annotations

import io
import json
import random

import numpy as np
import pytest
from datatrove.data import Document, Media, MediaType
from PIL import Image, ImageEnhance, ImageOps

from filters.decontam.hamming_index import HammingIndex, brute_force_search
from filters.decontam.index import DEFAULT_RADIUS, DecontaminationIndex, EvalItem, build_index
from filters.decontam.step import DecontaminationFilter
from tests.conftest import run_command


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


def _random_crop(rng: random.Random):
    def crop(image: Image.Image) -> Image.Image:
        w, h = image.size
        cut = [rng.uniform(0, 0.05) for _ in range(4)]
        return image.crop((int(w * cut[0]), int(h * cut[1]), w - int(w * cut[2]), h - int(h * cut[3])))
    return crop


TRANSFORMS = {
    "jpeg q30": lambda im: _jpeg(im, 30),
    "resize x0.5": lambda im: im.resize((max(1, im.width // 2), max(1, im.height // 2))),
    "resize x2": lambda im: im.resize((im.width * 2, im.height * 2)),
    "grayscale": lambda im: im.convert("L"),
    "brighten 20%": lambda im: ImageEnhance.Brightness(im).enhance(1.2),
    "darken 20%": lambda im: ImageEnhance.Brightness(im).enhance(0.8),
    "mirror": ImageOps.mirror,
    "crop <=5%/side": _random_crop(random.Random(0)),
}


@pytest.fixture(scope="module")
def image_index(tmp_path_factory):
    images = natural_images()
    path = tmp_path_factory.mktemp("index") / "index"
    build_index(str(path), [("photos", "test", (EvalItem("photos", "test", str(i), [im]) for i, im in
                                                 enumerate(images)))])
    return images, DecontaminationIndex(str(path))


def test_copies_are_matched_and_distinct_images_are_not(image_index, capsys):
    images, index = image_index
    table = [f"{'transform':<16} recall  ({len(images)} natural images, radius {DEFAULT_RADIUS})"]
    recalls = {}
    for name, transform in TRANSFORMS.items():
        found = index.match_images([transform(im) for im in images])
        recalls[name] = np.mean([any(m.item == str(i) for m in matches) for i, matches in enumerate(found)])
        table.append(f"{name:<16} {recalls[name]:.3f}")
    own = index.match_images(images)
    false = sum(1 for i, matches in enumerate(own) for m in matches if m.item != str(i))
    pairs = len(images) * (len(images) - 1)
    table.append(f"{'distinct':<16} {false} false matches in {pairs} ordered pairs ({100 * false / pairs:.3f}%)")
    with capsys.disabled():  # the table belongs in the CI log
        print("\n" + "\n".join(table))
    assert all(recall >= 0.97 for recall in recalls.values()), recalls
    assert false / pairs <= 0.001
    assert all(any(m.tier == "exact" and m.item == str(i) for m in matches) for i, matches in enumerate(own))


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


def test_scan_cli_reports_matches_as_json(image_index, tmp_path):
    images, index = image_index
    folder = tmp_path / "scan"
    folder.mkdir()
    TRANSFORMS["jpeg q30"](images[3]).save(folder / "copy.jpg")
    ImageOps.mirror(images[5]).save(folder / "flipped.png")
    Image.new("RGB", (64, 64), (12, 200, 90)).save(folder / "unrelated.png")
    (folder / "broken.jpg").write_bytes(b"not an image")
    result = run_command("filters.decontam", "scan", "--index", index.path, str(folder), "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert {(r["file"].rsplit("/", 1)[1], r["item"], r["tier"]) for r in rows} == {
        ("copy.jpg", "3", "phash"), ("flipped.png", "5", "phash")}
    assert set(rows[0]) == {"file", "benchmark", "split", "item", "tier", "distance"}
    assert "broken.jpg: not a readable image" in result.stderr
    bad = run_command("filters.decontam", "scan", "--index", str(tmp_path), str(folder))
    assert bad.returncode == 2 and "not a decontamination index" in bad.stderr


def test_build_from_a_local_folder_and_unknown_benchmark(tmp_path):
    folder = tmp_path / "mybench"
    folder.mkdir()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(folder / "a.png")
    result = run_command("filters.decontam", "build", "--output", str(tmp_path / "i"), "--from", f"mine={folder}")
    assert result.returncode == 0, result.stderr
    meta = json.loads((tmp_path / "i" / "index.json").read_text())
    assert meta["version"] == 1 and meta["benchmarks"]["mine"]["images"] == 1
    bad = run_command("filters.decontam", "build", "--output", str(tmp_path / "j"), "--benchmarks", "vqa9")
    assert bad.returncode == 2 and "unknown 'vqa9'" in bad.stderr


def test_step_removes_matching_images_then_documents(image_index):
    images, index = image_index

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
