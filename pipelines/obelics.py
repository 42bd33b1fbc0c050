"""`python -m pipelines.obelics`: filter OBELICS interleaved web documents, one datatrove task per input file.

Steps, in order: `structure` (the layout rules), `optout` (Spawning opt-outs, before anything is fetched),
`images` (download, or join with an img2dataset download), `perplexity` (Falcon-1B; by default the 5% highest
of the whole run are removed), `nsfw` (any flagged image removes its document), `decontam` (images and texts
that match an evaluation set).
"""

from __future__ import annotations

import sys

from filters.structure import InterleavedStructureFilter
from pipelines.cli import PipelineSpec, main
from pipelines.consent_and_images import IMAGES, OPTOUT
from pipelines.decontam_report import write_report
from pipelines.decontam_steps import DECONTAM
from pipelines.model_steps import NSFW, PERPLEXITY
from pipelines.obelics_format import OBELICS_HUB_INPUT, OBELICS_SOURCE
from pipelines.steps import StepSpec

STRUCTURE = StepSpec("structure", lambda options, ctx: InterleavedStructureFilter(ctx.recorder("structure")))

SPEC = PipelineSpec(
    name="obelics",
    description="Filter OBELICS (HuggingFaceM4/OBELICS) the Idefics2 way, shard by shard.",
    default_input=OBELICS_HUB_INPUT,
    source=OBELICS_SOURCE,
    steps=(STRUCTURE, OPTOUT, IMAGES, PERPLEXITY, NSFW, DECONTAM),
    examples=(
        "python -m pipelines.obelics --output s3://bucket/obelics --shards 0-999 --executor slurm "
        "--nsfw-head laion_nsfw_head.safetensors --decontam-index eval_index",
        "python -m pipelines.obelics --input ./obelics --output ./out --steps structure,optout "
        "--optout-list optouts.txt --shards 0-9",
    ),
    reports=(write_report,),
)

if __name__ == "__main__":
    sys.exit(main(SPEC))
