"""`python -m pipelines.obelics`: filter OBELICS interleaved web documents, one datatrove task per input file.

Steps, in order: `structure` (the layout rules). Later issues add `optout`, `images`, `perplexity`, `nsfw`
and `decontam`.
"""

from __future__ import annotations

import sys

from filters.structure import InterleavedStructureFilter
from pipelines.cli import PipelineSpec, main
from pipelines.obelics_format import OBELICS_FORMAT, OBELICS_HUB_INPUT

SPEC = PipelineSpec(
    name="obelics",
    description="Filter OBELICS (HuggingFaceM4/OBELICS) the Idefics2 way, shard by shard.",
    default_input=OBELICS_HUB_INPUT,
    row_format=OBELICS_FORMAT,
    steps={
        "structure": lambda args, writer: InterleavedStructureFilter(writer.removal_recorder("structure")),
    },
)

if __name__ == "__main__":
    sys.exit(main(SPEC))
