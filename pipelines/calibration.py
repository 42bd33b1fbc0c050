"""Calibrated cuts: "remove the 5% of documents with the highest perplexity" over the whole run, not per shard.

A first pass scores every calibration shard (the scores land in the steps' per-shard caches), the scores of
all shards are merged into one fine histogram (memory flat in the number of documents), and the threshold that
removes the asked fraction is read off it. The filtering pass then reuses the cached scores. One task or
four, one run or two: the same shards give the same histogram and the same threshold.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
from datatrove.io import DataFolder

from filters.annotation_cache import ShardScoreCache

THRESHOLDS_FILE = "thresholds.json"


@dataclass
class Calibration:
    """How one step's cut is calibrated on the run's scores."""

    step: str
    fraction: Callable[[argparse.Namespace], float | None]  # the top fraction to drop, or None: a fixed cut
    scores: Callable[[argparse.Namespace], ShardScoreCache]
    needs: tuple[str, ...] = ()  # earlier steps the scores depend on (beyond the cheap ones)
    log_scale: bool = False  # histogram in log10 (perplexity) or linear (probabilities)


@dataclass
class Cut:
    step: str
    fraction: float
    threshold: float
    scored: int
    above: int  # scores above the threshold: what the cut removes
    histogram: tuple[list[float], list[int]]  # coarse, for the plot: bin edges, counts

    def to_json(self) -> dict:
        return {"fraction": self.fraction, "threshold": self.threshold, "scored": self.scored, "above": self.above}


def _edges(log_scale: bool) -> np.ndarray:
    return np.linspace(-2.0, 8.0, 200_001) if log_scale else np.linspace(0.0, 1.0, 200_001)


def top_fraction_cut(step: str, shards: Iterable[np.ndarray], fraction: float, log_scale: bool) -> Cut:
    """The threshold above which `fraction` of all finite scores lie, from a merged 200,000-bin histogram."""
    edges = _edges(log_scale)
    counts = np.zeros(len(edges) - 1, dtype=np.int64)
    for values in shards:
        values = values[np.isfinite(values)]
        values = np.log10(np.clip(values, 10 ** edges[0], 10 ** edges[-1])) if log_scale else values
        counts += np.histogram(np.clip(values, edges[0], edges[-1]), edges)[0]
    total = int(counts.sum())
    if total == 0:
        raise ValueError(f"{step}: no scores to calibrate on (every document too short to score, or no documents)")
    above = np.concatenate([np.cumsum(counts[::-1])[::-1], [0]])  # above[i]: scores in bins i..end
    target = fraction * total
    i = int(np.argmin(np.abs(above - target)))  # cut at edge i: removes above[i]
    threshold = float(10 ** edges[i] if log_scale else edges[i])
    coarse = counts.reshape(1000, -1).sum(1)
    coarse_edges = edges[::200]
    plot_edges = (10 ** coarse_edges if log_scale else coarse_edges).tolist()
    return Cut(step, fraction, threshold, total, int(above[i]), (plot_edges, coarse.tolist()))


def plot_cut(cut: Cut, path: str, folder: DataFolder, log_scale: bool) -> None:
    """Histogram of the run's scores with the threshold marked, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    edges, counts = np.array(cut.histogram[0]), np.array(cut.histogram[1])
    nonzero = np.nonzero(counts)[0]
    lo, hi = (nonzero[0], nonzero[-1] + 1) if len(nonzero) else (0, len(counts))
    figure, axis = plt.subplots(figsize=(7, 3.5), dpi=120)
    axis.stairs(counts[lo:hi], edges[lo:hi + 1], fill=True, color="#4C72B0")
    axis.axvline(cut.threshold, color="#C44E52", linestyle="--",
                 label=f"threshold {cut.threshold:.4g}: top {100 * cut.fraction:g}% ({cut.above:,} of {cut.scored:,})")
    if log_scale:
        axis.set_xscale("log")
    axis.set_xlabel(cut.step)
    axis.set_ylabel("count")
    axis.set_title(f"{cut.step}: distribution over the whole run")
    axis.legend(loc="upper right", fontsize=8)
    figure.tight_layout()
    with folder.open(path, "wb") as f:
        figure.savefig(f, format="png")
    plt.close(figure)


def save_cuts(folder: DataFolder, cuts: list[Cut]) -> None:
    previous = {}
    if folder.isfile(THRESHOLDS_FILE):
        with folder.open(THRESHOLDS_FILE) as f:
            previous = json.load(f)
    previous.update({cut.step: cut.to_json() for cut in cuts})
    with folder.open(THRESHOLDS_FILE, "w") as f:
        json.dump(previous, f, indent=1)
