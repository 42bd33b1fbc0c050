"""`python -m pipelines.obelics`: filter OBELICS interleaved web documents, one datatrove task per input file.

Steps, in order: `structure` (the layout rules), `optout` (Spawning opt-outs, before anything is fetched),
`images` (download, or join with an img2dataset download). Later issues add `perplexity`, `nsfw` and
`decontam`.
"""

from __future__ import annotations

import sys

from filters.structure import InterleavedStructureFilter
from pipelines import consent_and_images
from pipelines.cli import PipelineSpec, main
from pipelines.obelics_format import OBELICS_FORMAT, OBELICS_HUB_INPUT

SPEC = PipelineSpec(
    name="obelics",
    description="Filter OBELICS (HuggingFaceM4/OBELICS) the Idefics2 way, shard by shard.",
    default_input=OBELICS_HUB_INPUT,
    row_format=OBELICS_FORMAT,
    steps={
        "structure": lambda args, writer: InterleavedStructureFilter(writer.removal_recorder("structure")),
        "optout": consent_and_images.optout_step,
        "images": consent_and_images.images_step,
    },
    add_arguments=consent_and_images.add_arguments,
    run_options=consent_and_images.RUN_OPTIONS,
)

if __name__ == "__main__":
    sys.exit(main(SPEC))
