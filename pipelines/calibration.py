"""Calibrated cuts: "remove the 5% of documents with the highest perplexity" over the whole run, not per shard.

A first pass scores every calibration shard (the scores land in the steps' per-shard caches), the scores of
all shards are merged into one fine histogram (memory flat in the number of documents), and the threshold that
removes the asked fraction is read off it. The filtering pass then reuses the cached scores. One task or
four, one run or two: the same shards give the same histogram and the same threshold.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from datatrove.io import DataFolder, get_datafolder

from filters.shard_files import write_atomically
from pipelines.executors import run_executor
from pipelines.manifest import read_json, write_json
from pipelines.options import UsageError
from pipelines.shards import shard_name

if TYPE_CHECKING:
    from pipelines.cli import Run

THRESHOLDS_FILE = "thresholds.json"


class CalibrationError(Exception):
    """The scoring pass of a calibrated cut did not finish: reported as one line and exit status 1."""


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
    shown = counts[lo:hi][counts[lo:hi] > 0]
    if len(shown) and shown.max() > 100 * shown.min():  # bins differ by orders of magnitude: show them all
        axis.set_yscale("log")
    axis.set_xlabel(cut.step)
    axis.set_ylabel("count")
    axis.set_title(f"{cut.step}: distribution over the whole run")
    axis.legend(loc="upper right", fontsize=8)
    figure.tight_layout()
    with write_atomically(folder, path) as f:
        figure.savefig(f, format="png")
    plt.close(figure)


def save_cuts(folder: DataFolder, cuts: list[Cut]) -> None:
    thresholds = read_json(folder, THRESHOLDS_FILE) or {}
    thresholds.update({cut.step: cut.to_json() for cut in cuts})
    write_json(folder, THRESHOLDS_FILE, thresholds)


def calibrated_steps(run: Run) -> list:
    """The selected steps whose cut this run calibrates (a fraction asked, not a fixed cut)."""
    specs = [run.spec.step(name) for name in run.steps]
    return [s for s in specs if s.calibration and s.calibration.fraction(run.options[s.name]) is not None]


def calibration_shards(run: Run) -> range:
    from pipelines.cli import parse_shard_range

    return parse_shard_range(run.args.calibration_shards, len(run.files), "--calibration-shards",
                             f"--input {run.args.input}")


def check_calibration_inputs(run: Run, checked: set[int]) -> None:
    """Before any work: the calibration shards' files (those not in `checked` already) are readable."""
    if not calibrated_steps(run):
        return
    shards = calibration_shards(run)
    try:
        run.source.check(get_datafolder(run.input_path), [run.files[s] for s in shards if s not in checked])
    except UsageError as error:
        raise UsageError(f"{error}; it is a calibration shard: choose others with --calibration-shards") from None


def calibrate(run: Run, logging_dir: DataFolder, output: DataFolder) -> dict[str, float]:
    """Score the calibration shards with every calibrated step (only what those steps need runs before them), then
    set each step's threshold from the merged scores (their inputs are checked by `check_calibration_inputs`)."""
    active = calibrated_steps(run)
    if not active:
        return {}
    specs = [run.spec.step(name) for name in run.steps]
    needed = {n for s in active for n in s.calibration.needs}
    last = max(run.steps.index(s.name) for s in active)
    prefix = [s.name for s in specs[:last + 1] if s.name in needed or not s.expensive]
    shards = calibration_shards(run)
    fractions = {s.name: s.calibration.fraction(run.options[s.name]) for s in active}
    print(f"calibration: scoring shards {shards.start}-{shards.stop - 1} with {','.join(prefix)} to set "
          f"{', '.join(f'{name} (top {100 * f:g}%)' for name, f in fractions.items())}", file=sys.stderr)
    pipeline = run.pipeline(prefix, scoring_only=frozenset(fractions), write=False)
    calibration_logs = get_datafolder(logging_dir.resolve_paths("calibration"))
    run_executor(pipeline, len(run.files), shards, calibration_logs.path, run.executor)
    unfinished = [s for s in shards if not calibration_logs.isfile(f"completions/{shard_name(s)}")]
    if unfinished:
        raise CalibrationError(f"calibration: {len(unfinished)} shard(s) failed to score, e.g. {unfinished[0]} "
                               f"(see {calibration_logs.resolve_paths('errors')}); run the command again")
    cuts = []
    for step in active:
        ctx = run.context(None)
        scores = step.calibration.scores(run.options[step.name], ctx)
        try:
            cut = top_fraction_cut(step.name, scores.values(list(shards)), fractions[step.name],
                                   step.calibration.log_scale)
        except ValueError as error:
            raise CalibrationError(f"calibration: {error}; check --calibration-shards") from None
        plot_cut(cut, f"{cut.step}_histogram.png", output, step.calibration.log_scale)
        print(f"calibration: {cut.step} threshold {cut.threshold:.6g} (top {100 * cut.fraction:g}% of "
              f"{cut.scored:,} scores: {cut.above:,} above); plot {output.resolve_paths(cut.step)}_histogram.png",
              file=sys.stderr)
        cuts.append(cut)
    save_cuts(output, cuts)
    return {cut.step: cut.threshold for cut in cuts}
