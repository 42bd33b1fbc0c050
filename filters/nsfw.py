"""`nsfw`: score every image for explicit content and remove what is flagged.

The Idefics2 paper (arXiv:2405.02246, section A.1.1) and OBELICS (arXiv:2306.16527) remove NSFW images this way.

Two backends give a score in [0, 1] per image (1 = NSFW):
  - `ImageClassifierScorer`: any transformers image-classification model; the score is the summed probability
    of the labels named NSFW (default the LAION-SAFETY classes `porn`, `hentai`, `sexy`, plus `nsfw`).
  - `ClipNsfwScorer`: LAION's detector, a small head on the CLIP ViT-L/14 image embedding (the model behind
    LAION's `punsafe` column): L2-normalised embedding -> per-feature normalisation -> Linear 64 -> ReLU ->
    Linear 512 -> ReLU -> Linear 256 -> ReLU -> Linear 1 -> sigmoid, head weights from safetensors.
A third, `SourceScore`, reads a score the source already carries (LAION's `punsafe`) instead of recomputing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from datatrove.data import Document, Media
from datatrove.pipeline.writers.disk_base import DiskWriter

from filters.annotation_cache import ScoringFilter, ShardScoreCache
from filters.devices import load_once, model_dtype
from filters.layout import remove_images_or_document
from filters.pixels import content_key, working_image

NSFW_KEY = "nsfw_scores"  # metadata: one score per image, in media order
# LAION-SAFETY's classes are drawings, hentai, neutral, porn, sexy; these are the flagged ones (plus a plain "nsfw")
LAION_SAFETY_LABELS = ("porn", "hentai", "sexy", "nsfw")


class NsfwScorer(Protocol):
    def score(self, media: list[Media]) -> list[float]: ...


class _ModelScorer:
    """Loads its model lazily, once per worker process (workers receive the config, not the weights), and scores
    images in batches from their shared working copies (`filters.pixels`: decoded once per task)."""

    batch_size: int
    device: str | None

    def _load_models(self, device: str) -> tuple:
        raise NotImplementedError

    def _score_pixels(self, models: tuple, pixel_values):
        raise NotImplementedError

    def score(self, media: list[Media]) -> list[float]:
        import torch

        processor, *models = load_once((type(self).__name__, repr(self)), self._load_models, self.device)
        scores: list[float] = []
        for start in range(0, len(media), self.batch_size):
            images = [working_image(m.media_bytes) for m in media[start:start + self.batch_size]]
            pixels = processor(images=images, return_tensors="pt")
            with torch.inference_mode():
                scores += self._score_pixels(models, pixels["pixel_values"]).float().tolist()
        return scores


@dataclass
class ImageClassifierScorer(_ModelScorer):
    model: str
    nsfw_labels: tuple[str, ...] = LAION_SAFETY_LABELS
    batch_size: int = 64
    device: str | None = None

    def _load_models(self, device: str) -> tuple:
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        model = AutoModelForImageClassification.from_pretrained(self.model, dtype=model_dtype(device))
        model = model.to(device).eval()
        flagged = [i for i, name in model.config.id2label.items() if name.lower() in self.nsfw_labels]
        if not flagged:
            raise ValueError(f"{self.model}: none of its labels {list(model.config.id2label.values())} is one of "
                             f"the NSFW labels {list(self.nsfw_labels)}")
        return AutoImageProcessor.from_pretrained(self.model), model, flagged

    def _score_pixels(self, models: tuple, pixel_values):
        model, flagged = models
        logits = model(pixel_values=pixel_values.to(model.device, model.dtype)).logits
        return logits.float().softmax(-1)[:, flagged].sum(-1)


@dataclass
class ClipNsfwScorer(_ModelScorer):
    head: str  # safetensors of ClipNsfwHead (see scripts/convert_laion_nsfw_head.py for LAION's Keras weights)
    clip_model: str = "openai/clip-vit-large-patch14"  # LAION-AI/CLIP-based-NSFW-Detector embeds with CLIP ViT-L/14
    batch_size: int = 64
    device: str | None = None

    def _load_models(self, device: str) -> tuple:
        from safetensors.torch import load_file
        from transformers import AutoImageProcessor, CLIPVisionModelWithProjection

        from filters.nsfw_head import ClipNsfwHead

        clip = CLIPVisionModelWithProjection.from_pretrained(self.clip_model).to(device).eval()
        head = ClipNsfwHead(clip.config.projection_dim)
        head.load_state_dict(load_file(self.head))
        return AutoImageProcessor.from_pretrained(self.clip_model), clip, head.to(device).eval()

    def _score_pixels(self, models: tuple, pixel_values):
        import torch

        clip, head = models
        embeddings = clip(pixel_values=pixel_values.to(clip.device)).image_embeds
        return torch.sigmoid(head(embeddings)).squeeze(-1)


@dataclass
class SourceScore:
    """A score the source already carries in the image's metadata (LAION-COCO's `punsafe`)."""

    key: str = "punsafe"

    def score(self, media: list[Media]) -> list[float]:
        return [float(m.metadata[self.key]) for m in media]


POLICIES = ("document", "image")


class NsfwFilter(ScoringFilter):
    """Annotate `metadata["nsfw_scores"]` (one per image); with `threshold`, remove what scores above it.

    Policies: `document` (the OBELICS rule, and the one for image-text pairs): any flagged image removes the
    document (`nsfw_image`); `image`: flagged images are removed from the layout, and a document left with none
    is removed (`no_image_left`). An image the scorer cannot read is removed (stat `nsfw_unreadable`) rather
    than passed unchecked. Without `threshold` it only annotates.
    """

    name = "nsfw"

    def __init__(self, scorer: NsfwScorer, threshold: float | None = 0.5, policy: str = "document",
                 cache: ShardScoreCache | None = None, batch_size: int = 64,
                 exclusion_writer: DiskWriter | None = None):
        super().__init__(cache, batch_size, exclusion_writer)
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, not {policy!r}")
        self.scorer, self.threshold, self.policy = scorer, threshold, policy

    @property
    def scoring_only(self) -> bool:
        return self.threshold is None

    def _score_new(self, new: dict[str, Media]) -> dict[str, float]:
        """Score in one batch; if an image in it cannot be read, score one by one so only that one is lost."""
        try:
            return dict(zip(new, self.scorer.score(list(new.values()))))
        except (OSError, ValueError, KeyError, TypeError):
            pass
        scores = {}
        for key, m in new.items():
            try:
                scores[key] = self.scorer.score([m])[0]
            except (OSError, ValueError, KeyError, TypeError):
                scores[key] = float("nan")  # removed by _judge, never passed unchecked
        return scores

    def filter_batch(self, batch: list[Document]) -> list[bool | tuple[bool, str]]:
        keys = [[self._key(m) for m in doc.media] for doc in batch]
        new = {k: m for doc, doc_keys in zip(batch, keys) for k, m in zip(doc_keys, doc.media)
               if k not in self._scores}
        if new:
            self.add_scores(self._score_new(new))
            self.stat_update("images_scored", value=len(new))
        return [self._judge(doc, doc_keys) for doc, doc_keys in zip(batch, keys)]

    def _key(self, media: Media) -> str:
        """Model scores are keyed by the image's content: two copies of an image share a score, two different images
        never do (even without URLs). A score the source carries belongs to its own media item."""
        if isinstance(self.scorer, SourceScore):
            return f"source:{media.id}"
        return content_key(media.media_bytes or b"")

    def _judge(self, doc: Document, keys: list[str]) -> bool | tuple[bool, str]:
        scores = [self._scores[k] for k in keys]
        for score in scores:
            self.judged(score)
        doc.metadata[NSFW_KEY] = scores
        unreadable = [i for i, s in enumerate(scores) if math.isnan(s)]
        flagged = [i for i, s in enumerate(scores) if self.threshold is not None and s > self.threshold]
        self.stat_update("nsfw_unreadable", value=len(unreadable))
        self.stat_update("nsfw_images_flagged", value=len(flagged))
        if self.threshold is None:
            return True
        if flagged and self.policy == "document":
            return False, "nsfw_image"
        doc.metadata[NSFW_KEY] = [s for i, s in enumerate(scores) if i not in set(flagged + unreadable)]
        return remove_images_or_document(doc, flagged + unreadable, "no_image_left")


def __getattr__(name: str):
    """`ClipNsfwHead` lives in `filters.nsfw_head` (it imports torch); importing this module must not."""
    if name == "ClipNsfwHead":
        from filters.nsfw_head import ClipNsfwHead

        return ClipNsfwHead
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
