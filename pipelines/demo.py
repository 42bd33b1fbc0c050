"""`python -m pipelines.demo`: the whole recipe on the sample data that ships with the project, offline.

Today: the OBELICS pipeline over the 4 sample shards (layout rules, opt-outs from the shipped list, images joined
from the shipped img2dataset download, perplexity with the top 5% of the run removed and NSFW scores from the
shipped tiny models), the LAION-COCO pipeline over the sample pairs (opt-outs, the same img2dataset join, decoded
sizes under 150 px, the paper's 7% NSFW cut on `punsafe`), and the PDF pages pipeline over a PDFA and an OCR-IDL
sample (rendering, text, the language step on IDL with a tiny fastText model), each decontaminated against a small
evaluation set that shares altered images and question+answer pairs with the samples. Each issue that lands adds
its part here.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from importlib import resources

from filters.decontam import __main__ as decontam_cli
from pipelines import cli, laion_coco, obelics, pdfa


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
    workers = ["--workers", str(args.workers)]
    runs = [
        ("OBELICS sample", obelics.SPEC, "obelics", [
            "--input", sample_path("obelics"), "--optout-list", sample_path("optout.txt"),
            "--images", sample_path("img2dataset"), "--ppl-model", sample_path("models", "tiny-falcon"),
            "--nsfw-backend", "classifier", "--nsfw-model", sample_path("models", "tiny-nsfw-vit")]),
        ("LAION-COCO sample (the paper's 7% NSFW cut on punsafe)", laion_coco.SPEC, "laion_coco", [
            "--input", sample_path("laion_coco"), "--optout-list", sample_path("optout.txt"),
            "--images", sample_path("img2dataset"), "--nsfw-drop-top", "0.07"]),
        ("PDFA sample", pdfa.SPEC, "pdfa", ["--input", sample_path("pdfa")]),
        ("OCR-IDL sample (with the language step)", pdfa.SPEC, "idl", [
            "--input", sample_path("idl"), "--format", "idl",
            "--lang-model", sample_path("models", "tiny-lid", "model.bin")]),
    ]
    for title, spec, name, flags in runs:
        print(f"demo: {title} -> {output}/{name}", file=sys.stderr)
        status = cli.main(spec, [*flags, "--output", f"{output}/{name}", "--decontam-index", index, *workers])
        if status:
            return status
    print(f"demo: done; in each of {output}/{{obelics,laion_coco,pdfa,idl}}: kept data in data/, removed ones with "
          f"their reasons in removed/, counts in summary.json; status with python -m pipelines.status FOLDER")
    return 0


if __name__ == "__main__":
    sys.exit(main())
