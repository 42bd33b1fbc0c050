"""`nsfw`: score every image for explicit content and remove what is flagged (Idefics2/OBELICS, facts.md).

Two backends give a score in [0, 1] per image (1 = NSFW):
  - `ImageClassifierScorer`: any transformers image-classification model; the score is the summed probability
    of the labels named NSFW (default the LAION-SAFETY classes `porn`, `hentai`, `sexy`, plus `nsfw`).
  - `ClipNsfwScorer`: LAION's detector, a small head on the CLIP ViT-L/14 image embedding (the model behind
    LAION's `punsafe` column): L2-normalised embedding -> per-feature normalisation -> Linear 64 -> ReLU ->
    Linear 512 -> ReLU -> Linear 256 -> ReLU -> Linear 1 -> sigmoid, head weights from safetensors.
A third, `SourceScore`, reads a score the source already carries (LAION's `punsafe`) instead of recomputing.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Protocol

import torch
from datatrove.data import Document, Media
from datatrove.pipeline.writers.disk_base import DiskWriter

from filters.annotation_cache import ScoringFilter, ShardScoreCache
from filters.devices import model_dtype, pick_device
from filters.layout import remove_images_or_document

NSFW_KEY = "nsfw_scores"  # metadata: one score per image, in media order
LAION_SAFETY_LABELS = ("porn", "hentai", "sexy", "nsfw")  # facts.md: drawings, hentai, neutral, porn, sexy


class ClipNsfwHead(torch.nn.Module):
    """LAION's NSFW head (facts.md), in torch. Outputs a logit; sigmoid gives the score."""

    def __init__(self, dim: int = 768):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("variance", torch.ones(dim))
        self.layers = torch.nn.Sequential(
            torch.nn.Linear(dim, 64), torch.nn.ReLU(), torch.nn.Linear(64, 512), torch.nn.ReLU(),
            torch.nn.Linear(512, 256), torch.nn.ReLU(), torch.nn.Linear(256, 1))

    @staticmethod
    def _unit(embeddings: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(embeddings.float(), dim=-1)

    def fit_normalization(self, embeddings: torch.Tensor) -> None:
        unit = self._unit(embeddings)
        self.mean.copy_(unit.mean(0))
        self.variance.copy_(unit.var(0))

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        x = (self._unit(embeddings) - self.mean) / torch.sqrt(self.variance + 1e-7)
        return self.layers(x)


class NsfwScorer(Protocol):
    def score(self, media: list[Media]) -> list[float]: ...


def _decode(media: list[Media]):
    from PIL import Image

    return [Image.open(io.BytesIO(m.media_bytes)).convert("RGB") for m in media]


class _ModelScorer:
    """Loads its model lazily, once per process (workers receive the config, not the weights), and scores
    images in batches."""

    batch_size: int
    device: str | None

    def __post_init__(self):
        self._loaded = None

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_loaded"} | {"_loaded": None}

    def _load_models(self, device: str) -> tuple:
        raise NotImplementedError

    def _score_pixels(self, models: tuple, pixel_values: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def score(self, media: list[Media]) -> list[float]:
        if self._loaded is None:
            self._loaded = self._load_models(pick_device(self.device))
        processor, *models = self._loaded
        scores: list[float] = []
        for start in range(0, len(media), self.batch_size):
            pixels = processor(images=_decode(media[start:start + self.batch_size]), return_tensors="pt")
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

    def _score_pixels(self, models: tuple, pixel_values: torch.Tensor) -> torch.Tensor:
        model, flagged = models
        logits = model(pixel_values=pixel_values.to(model.device, model.dtype)).logits
        return logits.float().softmax(-1)[:, flagged].sum(-1)


@dataclass
class ClipNsfwScorer(_ModelScorer):
    head: str  # safetensors of ClipNsfwHead (see scripts/convert_laion_nsfw_head.py for LAION's Keras weights)
    clip_model: str = "openai/clip-vit-large-patch14"  # LAION's detector embeds with CLIP ViT-L/14 (facts.md)
    batch_size: int = 64
    device: str | None = None

    def _load_models(self, device: str) -> tuple:
        from safetensors.torch import load_file
        from transformers import AutoImageProcessor, CLIPVisionModelWithProjection

        clip = CLIPVisionModelWithProjection.from_pretrained(self.clip_model).to(device).eval()
        head = ClipNsfwHead(clip.config.projection_dim)
        head.load_state_dict(load_file(self.head))
        return AutoImageProcessor.from_pretrained(self.clip_model), clip, head.to(device).eval()

    def _score_pixels(self, models: tuple, pixel_values: torch.Tensor) -> torch.Tensor:
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

    def _score_new(self, media: list[Media]) -> None:
        """Score in one batch; if an image in it cannot be read, score one by one so only that one is lost."""
        try:
            self._scores.update(zip((m.url for m in media), self.scorer.score(media)))
            return
        except (OSError, ValueError, KeyError, TypeError):
            pass
        for m in media:
            try:
                self._scores[m.url] = self.scorer.score([m])[0]
            except (OSError, ValueError, KeyError, TypeError):
                self._scores[m.url] = float("nan")  # removed by _judge, never passed unchecked

    def filter_batch(self, batch: list[Document]) -> list[bool | tuple[bool, str]]:
        new = {m.url: m for doc in batch for m in doc.media if m.url not in self._scores}
        if new:
            with self.track_time("batch"):
                self._score_new(list(new.values()))
            self.stat_update("images_scored", value=len(new))
        return [self._judge(doc) for doc in batch]

    def _judge(self, doc: Document) -> bool | tuple[bool, str]:
        scores = [self._scores[m.url] for m in doc.media]
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
