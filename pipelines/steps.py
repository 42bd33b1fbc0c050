"""What a pipeline declares about each of its steps, and the one context every step is built with.

A `StepSpec` names a step, its options dataclass (flags `--<prefix>-...`), and how to build the datatrove step
from the filled options and the `RunContext`. Steps never see the command line: what the run knows (output
folder, local cache folder, scoring pass or filtering pass, calibrated thresholds, where removals go) reaches
them through the context.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from datatrove.pipeline.base import PipelineStep


class RemovalSink(Protocol):
    """Where a step's removed documents go: `recorder(step)` is its datatrove `exclusion_writer` (or None)."""

    def removal_recorder(self, step: str) -> Any: ...


@dataclass
class RunContext:
    output: str  # the output folder (any fsspec path)
    cache_dir: str  # a LOCAL folder for caches that SQLite or many small reads need
    removals: RemovalSink
    scoring_only: frozenset[str] = frozenset()  # steps that only annotate in this pass (a calibration pass)
    thresholds: dict[str, float] = field(default_factory=dict)  # cuts set by calibration, by step

    def recorder(self, step: str) -> Any:
        return self.removals.removal_recorder(step)


@dataclass
class Calibration:
    """A cut set on the whole run's scores: the step removes the top `fraction(options)` of them."""

    fraction: Callable[[Any], float | None]  # None: this run uses a fixed cut instead
    scores: Callable[[Any, RunContext], Any]  # the step's ShardScoreCache
    needs: tuple[str, ...] = ()  # earlier expensive steps the scores depend on
    log_scale: bool = False  # histogram in log10 (perplexity) or linear (probabilities)


@dataclass
class StepSpec:
    name: str
    build: Callable[[Any, RunContext], PipelineStep]
    options: type | None = None  # a dataclass made with pipelines.options.option
    prefix: str = ""  # flags are --<prefix>-<field>
    title: str = ""  # the --help group's title
    calibration: Calibration | None = None
    expensive: bool = False  # a calibration pass skips it unless a calibrated step needs it
    outputs: Sequence[Callable[[Any, int], Any]] = ()  # (folder, rank) -> extra per-shard file the writer keeps
    # runs when --steps is not given: True, False (only when --steps names it), or a rule on the parsed flags
    default: bool | Callable[[Any], bool] = True
    required: bool = False  # runs whatever --steps says (the step that makes the pipeline's documents, e.g. pages)

    @property
    def flag_prefix(self) -> str:
        return self.prefix or self.name

    def runs_by_default(self, args: Any) -> bool:
        return self.default(args) if callable(self.default) else self.default

