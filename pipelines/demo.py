"""`python -m pipelines.demo`: the whole recipe on the sample data that ships with the project, offline.

Today: the OBELICS pipeline over the 4 sample shards: layout rules, opt-outs from the shipped list, images
joined from the shipped img2dataset download, perplexity (top 5% of the run removed) and NSFW scores from the
shipped tiny models, and decontamination against a small evaluation set that shares a few altered images and
two question+answer pairs with the training sample. Each issue that lands adds its part here.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from importlib import resources

from filters.decontam import __main__ as decontam_cli
from pipelines import cli, obelics


def sample_path(*parts: str) -> str:
    """A path inside the shipped sample data."""
    return str(resources.files("pipelines").joinpath("sample_data", *parts))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=None, help="output folder (default: a new temporary folder)")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    output = args.output or tempfile.mkdtemp(prefix="idefics2-demo-")
    index = f"{output}/decontam_index"
    print(f"demo: decontamination index of the sample evaluation set -> {index}", file=sys.stderr)
    status = decontam_cli.main(["build", "--output", index, "--from", f"vqa_sample={sample_path('eval')}"])
    if status:
        return status
    print(f"demo: OBELICS sample -> {output}/obelics", file=sys.stderr)
    status = cli.main(obelics.SPEC, [
        "--input", sample_path("obelics"), "--output", f"{output}/obelics", "--workers", str(args.workers),
        "--optout-list", sample_path("optout.txt"), "--images", sample_path("img2dataset"),
        "--ppl-model", sample_path("models", "tiny-falcon"),
        "--nsfw-backend", "classifier", "--nsfw-model", sample_path("models", "tiny-nsfw-vit"),
        "--decontam-index", index,
    ])
    if status == 0:
        print(f"demo: done; kept documents in {output}/obelics/data (their images in images/), removed ones with "
              f"their reasons in {output}/obelics/removed, counts in {output}/obelics/summary.json")
    return status


if __name__ == "__main__":
    sys.exit(main())
