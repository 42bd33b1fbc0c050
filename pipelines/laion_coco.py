"""`python -m pipelines.laion_coco`: filter LAION-COCO image-text pairs (or any url/caption parquet), one datatrove
task per input file, every row written back unchanged with its file's own schema.

Steps, in order: `optout` (Spawning opt-outs on the image URLs), `images` (download, or join with an img2dataset
download), `min_size` (decoded shorter side under 150 px), `nsfw` (by default LAION's own `punsafe` column; the
paper removed 7%: `--nsfw-drop-top 0.07`), `decontam` (a pair matching an evaluation set is removed whole), and
`language` (fastText on the caption), which runs only when `--steps` names it: BLIP captions are English already.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace

from filters.min_size import IDEFICS2_MIN_SIDE, MinImageSizeFilter
from pipelines import cli
from pipelines.consent_and_images import IMAGES, OPTOUT
from pipelines.decontam_report import write_report
from pipelines.decontam_steps import DecontamOptions, build_decontam
from pipelines.language_steps import LANGUAGE
from pipelines.model_steps import NsfwOptions, build_nsfw
from pipelines.options import option
from pipelines.pairs_format import LAION_COCO_HUB_INPUT, PairColumns, PairsSource
from pipelines.steps import Calibration, RunContext, StepSpec


@dataclass
class MinSizeOptions:
    min_side: int = option(IDEFICS2_MIN_SIDE, "remove images whose decoded width or height is under this (the M4 "
                           "team's LAION-COCO processing for Idefics2 used 150)", unit="px", flag="--min-size", minimum=1)


def build_min_size(options: MinSizeOptions, ctx: RunContext) -> MinImageSizeFilter:
    return MinImageSizeFilter(options.min_side, exclusion_writer=ctx.recorder("min_size"))


@dataclass
class PairsNsfwOptions(NsfwOptions):
    """Pairs default to the score LAION ships (`punsafe`); `--nsfw-drop-top` calibrates on it like a model's."""

    backend: str = option("source", "source: the score the pairs carry (--nsfw-source-key); clip: LAION's CLIP "
                          "detector (needs --nsfw-head); classifier: a transformers image classifier (--nsfw-model)",
                          flag="--nsfw-backend", choices=("clip", "classifier", "source"))


@dataclass
class PairsDecontamOptions(DecontamOptions):
    policy: str = option("document", "document: a matching pair is removed (image-text pairs); image: only the "
                         "image, which for a pair is the same", flag="--decontam-policy", choices=("document", "image"))


@dataclass
class ColumnOptions:
    url: str = option(PairColumns.url, "column of the image URLs", flag="--url-column")
    caption: str = option(PairColumns.caption, "column of the captions (TEXT: LAION's alt text)",
                          flag="--caption-column")


MIN_SIZE = StepSpec("min_size", build_min_size, MinSizeOptions, title="minimum image size (step min_size)")
NSFW = StepSpec("nsfw", build_nsfw, PairsNsfwOptions, title="NSFW (step nsfw)",
                calibration=Calibration(PairsNsfwOptions.fraction, PairsNsfwOptions.cache, needs=("images",)))
DECONTAM = StepSpec("decontam", build_decontam, PairsDecontamOptions, title="decontamination (step decontam)")

SPEC = cli.PipelineSpec(
    name="laion_coco",
    description="Filter LAION-COCO (laion/laion-coco) image-text pairs the Idefics2 way, shard by shard. The "
                "pair's columns: --url-column (default URL) and --caption-column (default top_caption, the BLIP "
                "caption Idefics2 used; TEXT is the alt text); other columns are carried unchanged.",
    default_input=LAION_COCO_HUB_INPUT,
    source=PairsSource(),
    source_options=ColumnOptions,
    steps=(OPTOUT, IMAGES, MIN_SIZE, NSFW, DECONTAM, replace(LANGUAGE, default=False)),  # BLIP captions: English
    examples=(
        "python -m pipelines.laion_coco --output s3://bucket/laion_coco --shards 0-127 --executor slurm "
        "--nsfw-drop-top 0.07 --decontam-index eval_index",
        "python -m pipelines.laion_coco --input ./cc3m --output ./out --url-column url --caption-column caption "
        "--steps optout,images,min_size --optout-list optouts.txt --images ./cc3m_download",
    ),
    reports=(write_report,),
)


if __name__ == "__main__":
    sys.exit(cli.main(SPEC))
