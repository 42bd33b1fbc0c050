"""`python -m pipelines.obelics`: filter OBELICS interleaved web documents, one datatrove task per input file.

Steps, in order: `structure` (the layout rules), `optout` (Spawning opt-outs, before anything is fetched),
`images` (download, or join with an img2dataset download), `perplexity` (Falcon-1B; by default the 5% highest
of the whole run are removed), `nsfw` (any flagged image removes its document), `decontam` (images and texts
that match an evaluation set).
"""

from __future__ import annotations

import sys

from filters.structure import InterleavedStructureFilter
from pipelines import consent_and_images, decontam_steps, model_steps
from pipelines.cli import PipelineSpec, main
from pipelines.decontam_report import write_report
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
        "perplexity": model_steps.perplexity_step,
        "nsfw": model_steps.nsfw_step,
        "decontam": decontam_steps.decontam_step,
    },
    add_arguments=lambda parser: (consent_and_images.add_arguments(parser), model_steps.add_arguments(parser),
                                  decontam_steps.add_arguments(parser)),
    run_options=consent_and_images.RUN_OPTIONS + model_steps.RUN_OPTIONS + decontam_steps.RUN_OPTIONS,
    calibrations=model_steps.CALIBRATIONS,
    reports=(write_report,),
)

if __name__ == "__main__":
    sys.exit(main(SPEC))
