"""Rows whose image is an evaluation image, also after the edits the decontamination index is built to catch,
are removed (and recorded) by the Cauldron build; turn shuffling is seeded."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageEnhance, ImageOps

from cauldron.build import SubsetSettings, build_subset, plan
from cauldron.registry import entries
from filters.decontam.index import DecontaminationIndex
from pipelines.demo import sample_path
from tests.conftest import sample_decontam_index

EVAL_ITEM = "distinct-7"


def _eval_image() -> Image.Image:
    rows = pq.read_table(sample_path("eval", "vqa_sample.parquet")).to_pylist()
    data = next(r for r in rows if r["id"] == EVAL_ITEM)["image"]["bytes"]
    return Image.open(io.BytesIO(data)).convert("RGB")


def _encode(image: Image.Image, quality: int = 90) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality)
    return out.getvalue()


def _crop(image: Image.Image, fraction: float) -> Image.Image:
    dx, dy = round(image.width * fraction), round(image.height * fraction)
    return image.crop((dx, dy, image.width - dx, image.height - dy))


EDITS = {
    "re-encoded at JPEG quality 35": lambda im: _encode(im, 35),
    "resized to 60%": lambda im: _encode(im.resize((im.width * 3 // 5, im.height * 3 // 5))),
    "cropped by 4% on each side": lambda im: _encode(_crop(im, 0.04)),
    "mirrored": lambda im: _encode(ImageOps.mirror(im)),
    "in grey": lambda im: _encode(ImageOps.grayscale(im)),
    "brightened by 20%": lambda im: _encode(ImageEnhance.Brightness(im).enhance(1.2)),
}


def _vqav2_source(folder, images: list[bytes]) -> str:
    rows = [{"image": {"bytes": b, "path": f"{i}.jpg"}, "question": f"What is in picture {i}?",
             "multiple_choice_answer": "something else"} for i, b in enumerate(images)]
    pq.write_table(pa.Table.from_pylist(rows), folder / "vqav2.parquet")
    return str(folder)


@pytest.mark.parametrize("edit", EDITS)
def test_an_edited_evaluation_image_is_removed_with_its_match(tmp_path, edit):
    clean = _encode(Image.new("RGB", (64, 48), (30, 140, 200)).rotate(0))
    source = _vqav2_source(tmp_path, [clean, EDITS[edit](_eval_image())])
    result = plan(entries()["vqav2"], source, False, DecontaminationIndex(sample_decontam_index()), 200_000)
    assert [(row, reason) for row, reason, _ in result.removed] == [(1, "eval_match")]
    assert EVAL_ITEM in result.removed[0][2]
    assert list(result.group_of) == [0]


def test_shuffled_turns_are_the_same_turns_in_a_seeded_order(tmp_path):
    picture = _encode(Image.new("RGB", (32, 32), (200, 10, 10)))
    rows = [{"image": {"bytes": picture, "path": f"{i}.jpg"}, "question": f"Question {i}?",
             "multiple_choice_answer": f"answer {i}"} for i in range(6)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "vqav2.parquet")

    def build(out: str, shuffle: bool) -> list[str]:
        settings = SubsetSettings(out, ["vqav2"], str(tmp_path), False, 200_000, None,
                                  sample_path("models", "tiny-falcon"), shuffle)
        build_subset(entries()["vqav2"], settings)
        table = pq.read_table(f"{out}/vqav2/train-00000-of-00001.parquet").to_pylist()
        assert len(table) == 1  # six questions on one picture: one row
        return [t["assistant"] for t in table[0]["texts"]]

    plain = build(str(tmp_path / "plain"), False)
    shuffled = build(str(tmp_path / "shuffled"), True)
    assert plain == [f"answer {i}" for i in range(6)]
    assert sorted(shuffled) == plain and shuffled != plain
    assert build(str(tmp_path / "again"), True) == shuffled
