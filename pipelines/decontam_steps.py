"""The `decontam` step as a pipeline declares it (the index is built by `python -m filters.decontam build`)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from filters.decontam.index import INDEX_VERSION, DecontaminationIndex
from filters.decontam.step import POLICIES, DecontaminationFilter
from pipelines.decontam_report import MATCHES_FOLDER
from pipelines.options import UsageError, option
from pipelines.steps import RunContext, StepSpec

BUILD_HINT = "build one with: python -m filters.decontam build --output INDEX --benchmarks ... | --from NAME=PATH"


@dataclass
class DecontamOptions:
    index: str | None = option(None, "index of the evaluation sets", path=True, flag="--decontam-index",
                               metavar="INDEX")
    policy: str = option("image", "image: remove matching images (interleaved); document: remove the document",
                         flag="--decontam-policy", choices=POLICIES)
    radius: int | None = option(None, "Hamming radius for perceptual matches (default: the index's)",
                                flag="--decontam-radius")


def build_decontam(options: DecontamOptions, ctx: RunContext) -> DecontaminationFilter:
    if not options.index:
        raise UsageError(f"step decontam: give --decontam-index; {BUILD_HINT}")
    meta = os.path.join(options.index, "index.json")
    if not os.path.isfile(meta):
        raise UsageError(f"--decontam-index {options.index}: not an index (no index.json); {BUILD_HINT}")
    with open(meta) as f:
        version = json.load(f).get("version")
    if version != INDEX_VERSION:
        raise UsageError(f"--decontam-index {options.index}: index format {version}, this version reads "
                         f"{INDEX_VERSION}; rebuild it with python -m filters.decontam build")
    return DecontaminationFilter(DecontaminationIndex(options.index, options.radius), options.policy,
                                 os.path.join(ctx.output, MATCHES_FOLDER), exclusion_writer=ctx.recorder("decontam"))


DECONTAM = StepSpec("decontam", build_decontam, DecontamOptions, title="decontamination (step decontam)")
