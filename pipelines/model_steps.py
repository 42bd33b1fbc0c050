"""Flags and step wiring for the model judgments, `perplexity` and `nsfw`, with their calibrated cuts."""

from __future__ import annotations

import argparse
import os

from filters.annotation_cache import ShardScoreCache
from filters.nsfw import LAION_SAFETY_LABELS, POLICIES, ClipNsfwScorer, ImageClassifierScorer, NsfwFilter, SourceScore
from filters.perplexity import PerplexityConfig, PerplexityFilter, PerplexityScorer
from pipelines.calibration import Calibration
from pipelines.cli import UsageError
from pipelines.shards import ParquetShardWriter

PAPER_PPL_DROP_TOP = 0.05  # Idefics2: the 5% of OBELICS documents with the highest perplexity are removed
LAION_PUNSAFE_CUT = 0.5  # facts.md: the common cut on LAION's detector score
RUN_OPTIONS = ("ppl_model", "ppl_window", "ppl_drop_top", "ppl_max", "nsfw_backend", "nsfw_model", "nsfw_labels",
               "nsfw_clip_model", "nsfw_head", "nsfw_threshold", "nsfw_drop_top", "nsfw_policy")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    ppl = parser.add_argument_group("perplexity (step perplexity)")
    ppl.add_argument("--ppl-model", default=PerplexityConfig.model,
                     help="causal LM, Hub id or path (default: %(default)s)")
    ppl.add_argument("--ppl-window", type=int, default=PerplexityConfig.window, help="tokens scored per document")
    ppl.add_argument("--ppl-batch-tokens", type=int, default=None,
                     help="padded tokens per forward pass (default: 2048 on CPU, 32768 on GPU)")
    ppl.add_argument("--ppl-drop-top", type=float, default=None, metavar="F",
                     help=f"remove the fraction F with the highest perplexity over the whole run "
                          f"(default: {PAPER_PPL_DROP_TOP}, the paper's rule)")
    ppl.add_argument("--ppl-max", type=float, default=None, help="instead, remove above this fixed perplexity "
                                                                  "(the team's script used 42)")
    nsfw = parser.add_argument_group("NSFW (step nsfw)")
    nsfw.add_argument("--nsfw-backend", choices=("clip", "classifier", "source"), default="clip",
                      help="clip: LAION's CLIP detector (needs --nsfw-head); classifier: a transformers image "
                           "classifier (--nsfw-model); source: a score the source carries (default: %(default)s)")
    nsfw.add_argument("--nsfw-model", default=None, help="image-classification model, Hub id or path")
    nsfw.add_argument("--nsfw-labels", default=",".join(LAION_SAFETY_LABELS),
                      help="the classifier's labels that mean NSFW (default: %(default)s)")
    nsfw.add_argument("--nsfw-clip-model", default=ClipNsfwScorer.clip_model)
    nsfw.add_argument("--nsfw-head", default=None, help="safetensors of the LAION detector head")
    nsfw.add_argument("--nsfw-source-key", default="punsafe", help="image metadata key for --nsfw-backend source")
    nsfw.add_argument("--nsfw-threshold", type=float, default=LAION_PUNSAFE_CUT, help="flag above this score")
    nsfw.add_argument("--nsfw-drop-top", type=float, default=None, metavar="F",
                      help="instead, flag the fraction F of images with the highest scores over the whole run")
    nsfw.add_argument("--nsfw-policy", choices=POLICIES, default="document",
                      help="document: a flagged image removes its document (OBELICS); image: only the image")


def _fraction(value: float | None, flag: str) -> float | None:
    if value is not None and not 0 < value < 1:
        raise UsageError(f"{flag} {value}: must be between 0 and 1")
    return value


def ppl_fraction(args: argparse.Namespace) -> float | None:
    if args.ppl_max is not None:
        if args.ppl_drop_top is not None:
            raise UsageError("--ppl-max and --ppl-drop-top: give one cut, not both")
        return None
    return _fraction(args.ppl_drop_top, "--ppl-drop-top") or PAPER_PPL_DROP_TOP


def _score_cache(args: argparse.Namespace, step: str) -> ShardScoreCache:
    return ShardScoreCache(os.path.join(args.output, "scores", step))


def _check_model(path_or_id: str, flag: str) -> None:
    """Fail before any task starts if the model cannot be found (a typo, or a Hub id with no network)."""
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(path_or_id)
    except Exception as error:  # noqa: BLE001 - any failure to find the model is the flag's problem
        raise UsageError(f"{flag} {path_or_id}: cannot load ({type(error).__name__})") from None


def perplexity_step(args: argparse.Namespace, writer: ParquetShardWriter) -> PerplexityFilter:
    _check_model(args.ppl_model, "--ppl-model")
    scorer = PerplexityScorer(PerplexityConfig(model=args.ppl_model, window=args.ppl_window,
                                               batch_tokens=args.ppl_batch_tokens))
    threshold = None if "perplexity" in args.annotate_only else args.calibrated.get("perplexity", args.ppl_max)
    if threshold is None and "perplexity" not in args.annotate_only:
        raise UsageError("step perplexity: no cut set (give --ppl-max, or let --ppl-drop-top calibrate it)")
    return PerplexityFilter(scorer, threshold, _score_cache(args, "perplexity"),
                            exclusion_writer=writer.removal_recorder("perplexity"))


def nsfw_fraction(args: argparse.Namespace) -> float | None:
    return _fraction(args.nsfw_drop_top, "--nsfw-drop-top")


def nsfw_step(args: argparse.Namespace, writer: ParquetShardWriter) -> NsfwFilter:
    if args.nsfw_backend == "classifier":
        if not args.nsfw_model:
            raise UsageError("--nsfw-backend classifier: give --nsfw-model (a Hub id or a path)")
        _check_model(args.nsfw_model, "--nsfw-model")
        labels = tuple(label.strip().lower() for label in args.nsfw_labels.split(",") if label.strip())
        scorer = ImageClassifierScorer(args.nsfw_model, labels)
    elif args.nsfw_backend == "clip":
        if not args.nsfw_head or not os.path.isfile(args.nsfw_head):
            raise UsageError(f"--nsfw-backend clip: give --nsfw-head, the detector head as safetensors "
                             f"(got {args.nsfw_head!r}; see scripts/convert_laion_nsfw_head.py)")
        _check_model(args.nsfw_clip_model, "--nsfw-clip-model")
        scorer = ClipNsfwScorer(head=args.nsfw_head, clip_model=args.nsfw_clip_model)
    else:
        scorer = SourceScore(args.nsfw_source_key)
    threshold = None if "nsfw" in args.annotate_only else args.calibrated.get("nsfw", args.nsfw_threshold)
    return NsfwFilter(scorer, threshold, args.nsfw_policy, _score_cache(args, "nsfw"),
                      exclusion_writer=writer.removal_recorder("nsfw"))


CALIBRATIONS = (
    Calibration("perplexity", ppl_fraction, lambda args: _score_cache(args, "perplexity"), log_scale=True),
    Calibration("nsfw", nsfw_fraction, lambda args: _score_cache(args, "nsfw"), needs=("images",)),
)
