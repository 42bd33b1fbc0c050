"""Flags and wiring for the `decontam` step (the index is built by `python -m filters.decontam build`)."""

from __future__ import annotations

import argparse
import json
import os

from filters.decontam.index import INDEX_VERSION, DecontaminationIndex
from filters.decontam.step import POLICIES, DecontaminationFilter
from pipelines.cli import UsageError
from pipelines.decontam_report import MATCHES_FOLDER
from pipelines.shards import ParquetShardWriter

RUN_OPTIONS = ("decontam_index", "decontam_policy", "decontam_radius")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("decontamination (step decontam)")
    group.add_argument("--decontam-index", default=None, metavar="INDEX",
                       help="index of the evaluation sets (python -m filters.decontam build --output INDEX ...)")
    group.add_argument("--decontam-policy", choices=POLICIES, default="image",
                       help="image: remove matching images (interleaved); document: remove the document")
    group.add_argument("--decontam-radius", type=int, default=None,
                       help="Hamming radius for perceptual matches (default: the index's)")


def decontam_step(args: argparse.Namespace, writer: ParquetShardWriter) -> DecontaminationFilter:
    meta = os.path.join(args.decontam_index or "", "index.json")
    if not args.decontam_index or not os.path.isfile(meta):
        raise UsageError(f"step decontam: --decontam-index {args.decontam_index!r} is not an index; build one with "
                         f"python -m filters.decontam build --output INDEX --benchmarks ... | --from NAME=PATH")
    with open(meta) as f:
        version = json.load(f).get("version")
    if version != INDEX_VERSION:
        raise UsageError(f"--decontam-index {args.decontam_index}: index format {version}, this version reads "
                         f"{INDEX_VERSION}; rebuild it with python -m filters.decontam build")
    return DecontaminationFilter(DecontaminationIndex(args.decontam_index, args.decontam_radius),
                                 args.decontam_policy, os.path.join(args.output, MATCHES_FOLDER),
                                 exclusion_writer=writer.removal_recorder("decontam"))
