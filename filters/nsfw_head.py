"""LAION's CLIP-based NSFW detector head in torch (imports torch: loaded only by the `clip` NSFW backend).

The published detector (LAION-AI/CLIP-based-NSFW-Detector, an autokeras model) takes the CLIP ViT-L/14 image
embedding: L2-normalised embedding -> per-feature normalisation -> Linear 64 -> ReLU -> Linear 512 -> ReLU ->
Linear 256 -> ReLU -> Linear 1 -> sigmoid.
"""

from __future__ import annotations

import torch


class ClipNsfwHead(torch.nn.Module):
    """Outputs a logit; sigmoid gives the score."""

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
