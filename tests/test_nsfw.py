"""NSFW: scores that mean something, batched equal to one-by-one, both policies, corrupt images survived."""

from __future__ import annotations

import io
import random
import tarfile

import pytest
from datatrove.data import Document, Media, MediaType

from filters.nsfw import ClipNsfwScorer, ImageClassifierScorer, NsfwFilter, SourceScore
from pipelines.sample_models import blob_image
from tests.conftest import MODELS
from pipelines.demo import sample_path


def as_media(images) -> list[Media]:
    media = []
    for i, image in enumerate(images):
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        media.append(Media(id=str(i), type=MediaType.IMAGE, url=f"https://img.example/{i}.jpg",
                           media_bytes=buffer.getvalue()))
    return media


def sample_photos(n: int):
    from PIL import Image

    with tarfile.open(sample_path("img2dataset", "00001.tar")) as tar:  # the models saw crops of 00000.tar only
        return [Image.open(io.BytesIO(tar.extractfile(m).read())).convert("RGB") for m in tar
                if m.name.endswith(".jpg")][:n]


SCORERS = {
    "classifier": lambda: ImageClassifierScorer(f"{MODELS}/tiny-nsfw-vit", ("nsfw",), batch_size=16),
    "clip": lambda: ClipNsfwScorer(head=f"{MODELS}/tiny-clip-nsfw-head.safetensors", clip_model=f"{MODELS}/tiny-clip",
                                   batch_size=16),
}


@pytest.mark.parametrize("backend", sorted(SCORERS))
def test_scores_mean_something_and_batching_changes_nothing(backend):
    scorer = SCORERS[backend]()
    rng = random.Random(12345)  # not the training seed: held-out images
    flagged = as_media([blob_image(rng, True) for _ in range(30)])
    safe = as_media(sample_photos(30) + [blob_image(rng, False) for _ in range(15)])
    flagged_scores, safe_scores = scorer.score(flagged), scorer.score(safe)
    auc = sum((s < f) + 0.5 * (s == f) for f in flagged_scores for s in safe_scores) / (30 * 45)
    print(f"{backend}: ROC AUC flagged vs safe {auc:.3f}")
    assert auc >= 0.95
    one_by_one = [scorer.score([m])[0] for m in flagged[:10] + safe[:10]]
    assert one_by_one == pytest.approx(scorer.score(flagged[:10] + safe[:10]), abs=1e-5)


class FixedScorer:
    """Scores by URL: lets the policy tests say exactly which image is flagged. Fails on undecodable bytes, as a
    model's image processor does."""

    def __init__(self, scores: dict[str, float]):
        self.scores = scores

    def score(self, media):
        from PIL import Image

        for m in media:
            Image.open(io.BytesIO(m.media_bytes)).load()
        return [self.scores[m.url] for m in media]


def document(doc_id: str, urls: list[str], good: bytes) -> Document:
    """Each URL gets its own image: scores are keyed by content."""
    def image(url: str) -> bytes:
        if "corrupt" in url:
            return b"broken"
        return as_media([blob_image(random.Random(url), False)])[0].media_bytes

    media = [Media(id=u, type=MediaType.IMAGE, url=u, media_bytes=image(u)) for u in urls]
    texts = [t for u in urls for t in (f"text before {u}", None)]
    return Document(text="", id=doc_id, media=media, metadata={"texts": texts})


@pytest.fixture
def good_jpeg() -> bytes:
    return as_media([blob_image(random.Random(1), False)])[0].media_bytes


def test_document_and_image_policies(good_jpeg):
    scores = {"a": 0.1, "b": 0.9, "c": 0.2, "corrupt": 0.0}
    for policy, expected in (("document", [True, (False, "nsfw_image"), (False, "no_image_left")]),
                             ("image", [True, True, (False, "no_image_left")])):
        step = NsfwFilter(FixedScorer(scores), threshold=0.5, policy=policy)
        docs = [document("1", ["a", "c"], good_jpeg), document("2", ["a", "b", "c"], good_jpeg),
                document("3", ["corrupt"], good_jpeg)]
        assert step.filter_batch(docs) == expected
        if policy == "image":
            assert [m.url for m in docs[1].media] == ["a", "c"]
            assert docs[1].metadata["texts"] == ["text before a", None, "text before b\n\ntext before c", None]
            assert docs[1].metadata["nsfw_scores"] == [0.1, 0.2]
        assert step.stats["nsfw_unreadable"].total == 1  # the corrupt image: counted, removed, no crash


def test_annotate_only_and_source_scores(good_jpeg):
    step = NsfwFilter(SourceScore("punsafe"), threshold=None)
    doc = document("1", ["a", "b"], good_jpeg)
    doc.media[0].metadata["punsafe"], doc.media[1].metadata["punsafe"] = 0.02, 0.97
    assert step.filter_batch([doc]) == [True] and doc.metadata["nsfw_scores"] == [0.02, 0.97]
