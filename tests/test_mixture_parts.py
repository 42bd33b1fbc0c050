"""The mixture builder's parts on their own: the sampler, length fitting, image fitting, stage specs."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
from PIL import Image

from filters.errors import UsageError
from mixtures.draw import Allocation, UnitOrder, apportion, distinct_units, shard_positions
from mixtures.images import ImageProblem, ImageRule, fit_image
from mixtures.lengths import fit, split_text
from mixtures.spec import load_spec


def words(texts: list[str]) -> list[int]:
    """A stand-in tokenizer: one token a word (whitespace-separated)."""
    return [len(t.split()) for t in texts]


# -- sampler ---------------------------------------------------------------------------------------------------


def test_apportion_is_exact_and_follows_the_shares():
    assert apportion(2000, [0.45, 0.35, 0.20]) == [900, 700, 400]
    assert sum(apportion(7, [0.45, 0.35, 0.20])) == 7


def test_allocation_is_monotone_exact_and_even_over_shards():
    allocation = Allocation.make(apportion(5003, [0.45, 0.35, 0.2]), seed=3)
    previous = [0, 0, 0]
    for rank in range(0, 5004, 7):
        counts = allocation.cumulative(rank)
        assert sum(counts) == rank and all(a >= b for a, b in zip(counts, previous))
        previous = counts
    shards = [allocation.shard_counts(k, 250) for k in range(21)]
    assert [sum(c) for c in shards] == [250] * 20 + [3]
    assert [sum(c[i] for c in shards) for i in range(3)] == list(allocation.counts)
    for counts in shards[:-1]:  # each shard within one sample of its share
        assert all(abs(n - 250 * s) <= 1 for n, s in zip(counts, (0.45, 0.35, 0.2)))


@pytest.mark.parametrize("units", [1, 2, 5, 64, 1000, 4097])
def test_unit_order_is_a_fresh_permutation_each_epoch(units):
    order = UnitOrder(units, seed=7, source="obelics")
    epoch = order.epoch_positions
    stream = order.units_at(np.arange(3 * epoch))
    for number in range(3):
        read = stream[number * epoch:(number + 1) * epoch]
        assert sorted(read[read >= 0].tolist()) == list(range(units))
    if units >= 1000:
        assert stream[:epoch].tolist() != stream[epoch:2 * epoch].tolist()
        other = UnitOrder(units, seed=8, source="obelics").units_at(np.arange(epoch))
        assert stream[:epoch].tolist() != other.tolist()
        runs = [set(stream[i:i + 64].tolist()) - {-1} for i in range(0, epoch, 64)]
        assert all(len({u // 64 for u in run}) == 1 for run in runs)  # a run of 64 positions is one block


def test_shards_read_disjoint_positions_and_distinct_units_are_counted():
    positions = [shard_positions(k, 3, 0, 200, 64).tolist() for k in range(3)]
    assert len(set(sum(positions, []))) == 600 and positions[1][:2] == [64, 65] and positions[0][64] == 192
    order = UnitOrder(1000, seed=1, source="pairs")  # 16 blocks of 64, the last one short: 1,024 positions
    assert distinct_units(order, 3, [10, 10, 10]) == 30  # a subsample: nothing repeated
    assert distinct_units(order, 3, [384, 320, 320]) == 1000  # exactly one epoch
    seen = {int(u) for k, n in enumerate([500, 400, 400])
            for u in order.units_at(shard_positions(k, 3, 0, n, 64))} - {-1}
    assert distinct_units(order, 3, [500, 400, 400]) == len(seen)  # a partial second epoch, counted exactly


# -- lengths ---------------------------------------------------------------------------------------------------


def test_a_unit_that_fits_is_one_part():
    fitted = fit(["a b", None, "c"], ["img"], [2, 1], max_tokens=10, image_tokens=4, too_long="split", count=words)
    assert fitted.outcome == "fits" and len(fitted.parts) == 1


def test_split_keeps_each_image_with_the_text_after_it_and_every_part_fits():
    texts = ["intro " * 6, None, "caption one " * 3, None, None, "caption two " * 3, "tail " * 4]
    images = ["i1", "i2", "i3"]
    fitted = fit(texts, images, words([t for t in texts if t]), max_tokens=14, image_tokens=4, too_long="split",
                 count=words)
    assert fitted.outcome == "split" and len(fitted.parts) > 1
    for part in fitted.parts:
        assert part.cost(4) <= 14 and part.text_tokens == words([t for t in part.texts if t is not None])
    layout = [(t, i) for p in fitted.parts for t, i in zip(p.texts, p.texts)]
    assert "".join(t for t, _ in layout if t) == "".join(t for t in texts if t)  # no text lost or reordered
    for part in fitted.parts:  # an image is never the last thing of a part unless the document ends with images
        assert part.texts[-1] is not None
    assert [i for p in fitted.parts for i in p.images] == images


def test_drop_policy_and_texts_too_long_to_cut():
    texts = [None, "word " * 30]
    assert fit(texts, ["i"], [30], 20, 4, "drop", words).outcome == "too_long"
    pieces, dropped = split_text("one two three. four five six.\n\nseven eight", 3, words)
    assert "".join(p for p, _ in pieces) == "one two three. four five six.\n\nseven eight" and dropped == 0
    assert all(n <= 3 for _, n in pieces)
    assert split_text("unbreakable", 0, words) == ([], 1)


# -- images ----------------------------------------------------------------------------------------------------


def jpeg(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 60)).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_images_are_capped_keeping_the_aspect_ratio():
    data, width, height = fit_image(jpeg(1200, 600), ImageRule(384), random.Random(0))
    assert (width, height) == (384, 192) and Image.open(io.BytesIO(data)).size == (384, 192)
    _, width, height = fit_image(jpeg(100, 50), ImageRule(384), random.Random(0))
    assert (width, height) == (100, 50)  # no scale-up asked: left as it is


def test_scale_up_stays_within_the_cap_and_is_seeded():
    rule = ImageRule(980, scale_up_probability=0.5)
    sides = [fit_image(jpeg(200, 100), rule, random.Random(seed))[1] for seed in range(40)]
    assert set(sides) & {200} and any(s > 200 for s in sides) and max(sides) <= 980
    assert fit_image(jpeg(200, 100), rule, random.Random(5)) == fit_image(jpeg(200, 100), rule, random.Random(5))


def test_bad_image_bytes_are_a_problem_not_a_crash():
    with pytest.raises(ImageProblem) as problem:
        fit_image(b"not an image", ImageRule(384), random.Random(0))
    assert problem.value.reason == "not_an_image"
    with pytest.raises(ImageProblem) as problem:
        noise = Image.frombytes("RGB", (300, 300), random.Random(1).randbytes(300 * 300 * 3))
        buffer = io.BytesIO()
        noise.save(buffer, format="JPEG")
        fit_image(buffer.getvalue()[:len(buffer.getvalue()) // 2], ImageRule(100), random.Random(0))
    assert problem.value.reason == "corrupt"


# -- specs -----------------------------------------------------------------------------------------------------


def test_shipped_specs_hold_the_papers_numbers():
    one, two = load_spec("1"), load_spec("2")
    assert (one.image_max_side, two.image_max_side, one.image_tokens) == (384, 980, 64)
    assert {s.name: (s.share, s.max_tokens) for s in one.sources} == {"obelics": (0.7, 2048), "pairs": (0.3, 1536)}
    assert {s.name: (s.share, s.max_tokens) for s in two.sources} == {
        "obelics": (0.45, 2048), "pairs": (0.35, 1536), "pages": (0.2, 1024)}
    assert one.scale_up.probability == 0 and two.scale_up.probability > 0


@pytest.mark.parametrize("text, message", [
    ('name="x"\nimage_max_side=384\nimage_tokens=64\n[sources.a]\nformat="obelics"\nshare=0.5\nmax_tokens=10\n',
     "the shares sum to 0.5"),
    ('name="x"\nimage_max_side=384\nimage_tokens=64\n[sources.a]\nformat="video"\nshare=1\nmax_tokens=10\n',
     "format 'video'"),
    ('name="x"\nimage_max_side="big"\n', "`image_max_side` must be int"),
    ("name = [", "not valid TOML"),
])
def test_a_bad_spec_is_one_line_naming_the_file(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(UsageError, match=message) as error:
        load_spec(str(path))
    assert str(path) in str(error.value) and "\n" not in str(error.value)


# -- shard writer ----------------------------------------------------------------------------------------------


def test_the_shard_writer_writes_the_bytes_tarfile_writes(tmp_path):
    import tarfile

    from datatrove.io import get_datafolder

    from mixtures.layout import Sample, add_sample, iter_samples
    from mixtures.shard_writer import SampleTar

    samples = [Sample(f"{n:05d}_000001", "obelics", ["é text " * n, None, "x"] if n % 2 else [None, "caption"],
                      [bytes(range(256)) * (n + 1)], {"id": "u", "file": "f", "row": n, "part": 0, "parts": 1},
                      [[4, 5]], {"text": n, "image": 64, "total": n + 64}) for n in range(30)]
    ours = SampleTar(get_datafolder(str(tmp_path)), "ours.tar")
    for sample in samples:
        ours.write(sample)
    ours.commit()
    with tarfile.open(tmp_path / "stdlib.tar", "w") as tar:
        for sample in samples:
            add_sample(tar, sample)
    assert (tmp_path / "ours.tar").read_bytes() == (tmp_path / "stdlib.tar").read_bytes()
    with open(tmp_path / "ours.tar", "rb") as f:
        assert [s.texts for s in iter_samples(f)] == [s.texts for s in samples]


def test_a_part_is_never_images_alone():
    texts = ["word " * 8, None, None]  # a document that ends with images that do not fit with its text
    fitted = fit(texts, ["i1", "i2"], [8], max_tokens=12, image_tokens=4, too_long="split", count=words)
    assert [p.texts for p in fitted.parts] == [["word " * 8]] and fitted.pieces_dropped == 1


def test_a_long_text_after_images_fills_every_part_and_joins_back_exactly():
    """Only the first piece (the one beside the images) gets the smaller budget: the rest of the text is cut at
    the full maximum, and each part holds the text as one piece, so no paragraph break is invented."""
    text = " ".join(f"w{i}" for i in range(100))
    fitted = fit([None, None, text], ["i1", "i2"], [100], max_tokens=20, image_tokens=4, too_long="split",
                 count=words)
    assert fitted.outcome == "split" and fitted.pieces_dropped == 0
    costs = [part.cost(4) for part in fitted.parts]
    assert all(cost == 20 for cost in costs[:-1]) and costs[-1] <= 20  # 8 + 12 words, then 20 a part
    assert len(fitted.parts) == 6 and fitted.parts[0].images == ["i1", "i2"]
    assert all(len([t for t in part.texts if t is not None]) == 1 for part in fitted.parts)
    assert "".join(t for part in fitted.parts for t in part.texts if t is not None) == text


def test_pieces_of_one_text_never_sit_in_one_part_as_two_texts():
    """With a tokenizer whose count of a join exceeds the sum of its pieces' counts, two cut pieces of one text
    could fit one part together: they are then one text, counted again, or two parts, never two texts (the
    trainer would put a paragraph break between them)."""
    def heavy(texts: list[str]) -> list[int]:
        return [len(t.split()) + len(t.split()) // 4 for t in texts]

    for length in range(4, 30):
        text = " ".join(f"w{i}" for i in range(length))
        for max_tokens in range(6, 16):
            fitted = fit([None, text], ["i"], heavy([text]), max_tokens, 2, "split", heavy)
            assert "".join(t for part in fitted.parts for t in part.texts if t is not None) == text
            for part in fitted.parts:
                texts = [t for t in part.texts if t is not None]
                assert len(texts) == 1 and part.text_tokens == heavy(texts) and part.cost(2) <= max_tokens
