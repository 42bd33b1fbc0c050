"""The model judgments, `perplexity` and `nsfw`, as a pipeline declares them: options, calibrated cuts, caches."""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass

from filters.annotation_cache import ShardScoreCache
from filters.nsfw import LAION_SAFETY_LABELS, POLICIES, ClipNsfwScorer, ImageClassifierScorer, NsfwFilter, SourceScore
from filters.perplexity import PerplexityConfig, PerplexityFilter, PerplexityScorer
from pipelines.options import UsageError, normalise_path, option
from pipelines.steps import Calibration, RunContext, StepSpec

PAPER_PPL_DROP_TOP = 0.05  # Idefics2 paper, section A.1.1: the 5% of OBELICS documents of highest perplexity removed
LAION_PUNSAFE_CUT = 0.5  # LAION-5B's safety tag: images with punsafe above 0.5 are marked unsafe (LAION blog, 2022)


def _fraction(value: float | None, flag: str) -> float | None:
    if value is not None and not 0 < value < 1:
        raise UsageError(f"{flag} {value}: must be between 0 and 1")
    return value


def _score_cache(ctx: RunContext, step: str, identity: dict) -> ShardScoreCache:
    """Scores live under the model's identity: another model or window reads and writes other files."""
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
    return ShardScoreCache(os.path.join(ctx.output, "scores", step, digest))


@functools.lru_cache(maxsize=None)  # the steps are built for the flag check, the calibration pass and the run
def _check_model(path_or_id: str, flag: str) -> None:
    """Fail before any task starts if the model cannot be found: a path that does not exist is named as such, and
    a Hub id not in the local cache is looked up once (no retries), so an offline machine fails in seconds."""
    if not os.path.exists(path_or_id):
        if path_or_id.startswith(("/", ".", "~")) or path_or_id.count("/") > 1:
            raise UsageError(f"{flag} {path_or_id}: no such file or folder")
        _check_hub_model(path_or_id, flag)
        return
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(path_or_id)
    except Exception as error:  # noqa: BLE001 - any failure to read the model is the flag's problem
        raise UsageError(f"{flag} {path_or_id}: not a model folder ({type(error).__name__})") from None


def _check_hub_model(model_id: str, flag: str) -> None:
    from huggingface_hub import model_info, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(model_id, "config.json"), str):
        return  # downloaded before: loads offline
    try:
        model_info(model_id, timeout=10)
    except Exception as error:  # noqa: BLE001 - not found, no network, no access: the flag's problem
        raise UsageError(f"{flag} {model_id}: not a local path, and the Hub has no such model or cannot be "
                         f"reached ({type(error).__name__})") from None


@dataclass
class PerplexityOptions:
    model: str = option(PerplexityConfig.model, "causal LM, Hub id or path", flag="--ppl-model")
    window: int = option(PerplexityConfig.window, "scored per document", unit="tokens", flag="--ppl-window")
    batch_tokens: int | None = option(None, "padded tokens per forward pass (default: 2048 on CPU, 32768 on GPU)",
                                      changes_output=False, flag="--ppl-batch-tokens")
    drop_top: float | None = option(None, f"remove the fraction F with the highest perplexity over the whole run "
                                    f"(default: {PAPER_PPL_DROP_TOP}, the paper's rule)", flag="--ppl-drop-top",
                                    metavar="F")
    max: float | None = option(None, "instead, remove above this fixed perplexity (the OBELICS team's script used "
                               "42)", flag="--ppl-max")

    def fraction(self) -> float | None:
        if self.max is not None:
            if self.drop_top is not None:
                raise UsageError("--ppl-max and --ppl-drop-top: give one cut, not both")
            return None
        return _fraction(self.drop_top, "--ppl-drop-top") or PAPER_PPL_DROP_TOP

    def cache(self, ctx: RunContext) -> ShardScoreCache:
        return _score_cache(ctx, "perplexity", {"model": normalise_path(self.model), "window": self.window})


def build_perplexity(options: PerplexityOptions, ctx: RunContext) -> PerplexityFilter:
    if options.window < 2:
        raise UsageError(f"--ppl-window {options.window}: must be at least 2 tokens")
    options.fraction()  # checks the cut's flags
    _check_model(options.model, "--ppl-model")
    scorer = PerplexityScorer(PerplexityConfig(model=options.model, window=options.window,
                                               batch_tokens=options.batch_tokens))
    scoring_only = "perplexity" in ctx.scoring_only
    threshold = None if scoring_only else ctx.thresholds.get("perplexity", options.max)
    if threshold is None and not scoring_only:
        raise UsageError("step perplexity: no cut set (give --ppl-max, or let --ppl-drop-top calibrate it)")
    return PerplexityFilter(scorer, threshold, options.cache(ctx), exclusion_writer=ctx.recorder("perplexity"))


@dataclass
class NsfwOptions:
    backend: str = option("clip", "clip: LAION's CLIP detector (needs --nsfw-head); classifier: a transformers image "
                          "classifier (--nsfw-model); source: a score the source carries", flag="--nsfw-backend",
                          choices=("clip", "classifier", "source"))
    model: str | None = option(None, "image-classification model, Hub id or path", flag="--nsfw-model")
    labels: str = option(",".join(LAION_SAFETY_LABELS), "the classifier's labels that mean NSFW",
                         flag="--nsfw-labels")
    clip_model: str = option(ClipNsfwScorer.clip_model, "CLIP vision model of --nsfw-backend clip",
                             flag="--nsfw-clip-model")
    head: str | None = option(None, "safetensors of the LAION detector head (scripts/convert_laion_nsfw_head.py)",
                              path=True, flag="--nsfw-head")
    source_key: str = option("punsafe", "image metadata key for --nsfw-backend source", flag="--nsfw-source-key")
    threshold: float = option(LAION_PUNSAFE_CUT, "flag images scoring above this", flag="--nsfw-threshold")
    drop_top: float | None = option(None, "instead, flag the fraction F of images with the highest scores over "
                                    "the whole run", flag="--nsfw-drop-top", metavar="F")
    policy: str = option("document", "document: a flagged image removes its document (OBELICS); image: only "
                         "the image", flag="--nsfw-policy", choices=POLICIES)

    def fraction(self) -> float | None:
        return _fraction(self.drop_top, "--nsfw-drop-top")

    def cache(self, ctx: RunContext) -> ShardScoreCache:
        """Scores by backend and model; the source's own scores are kept too, so a cut can be calibrated on them."""
        if self.backend == "source":
            return _score_cache(ctx, "nsfw", {"backend": "source", "key": self.source_key})
        identity = {"backend": self.backend, "model": normalise_path(self.model), "labels": self.labels,
                    "clip": normalise_path(self.clip_model), "head": normalise_path(self.head)}
        return _score_cache(ctx, "nsfw", identity)


def _nsfw_scorer(options: NsfwOptions):
    if options.backend == "classifier":
        if not options.model:
            raise UsageError("--nsfw-backend classifier: give --nsfw-model (a Hub id or a path)")
        _check_model(options.model, "--nsfw-model")
        labels = tuple(label.strip().lower() for label in options.labels.split(",") if label.strip())
        return ImageClassifierScorer(options.model, labels)
    if options.backend == "clip":
        if not options.head:
            raise UsageError("--nsfw-backend clip: give --nsfw-head, the detector head as safetensors "
                             "(see scripts/convert_laion_nsfw_head.py)")
        if not os.path.isfile(options.head):
            raise UsageError(f"--nsfw-head {options.head}: no such file")
        _check_model(options.clip_model, "--nsfw-clip-model")
        return ClipNsfwScorer(head=options.head, clip_model=options.clip_model)
    return SourceScore(options.source_key)


def build_nsfw(options: NsfwOptions, ctx: RunContext) -> NsfwFilter:
    options.fraction()
    threshold = None if "nsfw" in ctx.scoring_only else ctx.thresholds.get("nsfw", options.threshold)
    return NsfwFilter(_nsfw_scorer(options), threshold, options.policy, options.cache(ctx),
                      exclusion_writer=ctx.recorder("nsfw"))


PERPLEXITY = StepSpec("perplexity", build_perplexity, PerplexityOptions, title="perplexity (step perplexity)",
                      calibration=Calibration(PerplexityOptions.fraction, PerplexityOptions.cache, log_scale=True))
NSFW = StepSpec("nsfw", build_nsfw, NsfwOptions, title="NSFW (step nsfw)",
                calibration=Calibration(NsfwOptions.fraction, NsfwOptions.cache, needs=("images",)))
