"""`python -m pipelines.demo`: the whole recipe on the sample data that ships with the project, offline.

Today: the OBELICS pipeline over the 4 sample shards (layout rules, opt-outs from the shipped list, images joined
from the shipped img2dataset download, perplexity with the top 5% of the run removed and NSFW scores from the
shipped tiny models), the LAION-COCO pipeline over the sample pairs (opt-outs, the same img2dataset join, decoded
sizes under 150 px, the paper's 7% NSFW cut on `punsafe`), and the PDF pages pipeline over a PDFA and an OCR-IDL
sample (rendering, text, the language step on IDL with a tiny fastText model), each decontaminated against a small
evaluation set that shares altered images and question+answer pairs with the samples. Then, from those outputs: the
stage 1 and stage 2 pretraining mixtures (webdataset), validated with an HTML report and staged for the Hub as a
dry run; The Cauldron rebuilt from its sample sources with its SFT mixture; and the tiny Idefics2 trained a few
steps on the stage 1 mixture and on the SFT mixture, with the loss going down.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from importlib import resources

from filters.decontam import __main__ as decontam_cli
from mixtures import validate
from pipelines import cauldron, cli, laion_coco, mixture, obelics, pdfa, push


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
    status = recipe_after_pipelines(output, index, workers)
    if status:
        return status
    print(f"demo: done in {output}:\n"
          f"  obelics/ laion_coco/ pdfa/ idl/  kept data in data/, removed ones with their reasons in removed/, "
          f"counts in summary.json (python -m pipelines.status FOLDER)\n"
          f"  stage1/ stage2/  the pretraining mixtures; open stage1-report.html and stage2-report.html in a browser\n"
          f"  stage2-hub/  what python -m pipelines.push would upload, dataset card included\n"
          f"  cauldron/  one folder per subset, decontam_report.md, sft/ (report: sft-report.html)\n"
          f"  train-stage1/ train-sft/  metrics.jsonl and loss.png of the tiny model's training")
    return 0


def recipe_after_pipelines(output: str, index: str, workers: list[str]) -> int:
    """Mixtures, their reports, The Cauldron and the trainer, from the pipelines' outputs in `output`."""
    tokenizer = ["--tokenizer", sample_path("models", "tiny-falcon")]
    steps = [
        ("stage 1 mixture", mixture.main, ["--stage", "1", "--sources-root", output, "--output", f"{output}/stage1",
                                           "--samples", "200", "--shard-size", "100", *tokenizer, *workers]),
        ("stage 2 mixture", mixture.main, ["--stage", "2", "--sources-root", output, "--output", f"{output}/stage2",
                                           "--samples", "200", "--shard-size", "100", *tokenizer, *workers]),
        ("validate stage 1", validate.main, [f"{output}/stage1", "--html", f"{output}/stage1-report.html",
                                             "--plot", f"{output}/stage1-shares.png"]),
        ("validate stage 2", validate.main, [f"{output}/stage2", "--html", f"{output}/stage2-report.html",
                                             "--plot", f"{output}/stage2-shares.png"]),
        ("stage 2 as it would be pushed to the Hub (dry run)", push.main, [
            f"{output}/stage2", "--repo-id", "demo/idefics2-stage2", "--dry-run", f"{output}/stage2-hub"]),
        ("The Cauldron from its sample sources, with its SFT mixture", cauldron.main, [
            "--source", sample_path("cauldron", "sources"), "--output", f"{output}/cauldron", "--decontam-index",
            index, *tokenizer, "--sft-tokens", "20000", *workers]),
        ("validate the SFT mixture against Table 14", validate.main, [
            f"{output}/cauldron/sft", "--tolerance", "0.5", "--html", f"{output}/sft-report.html"]),
        ("train the tiny Idefics2 on the stage 1 mixture", train_main, [
            "--data", f"{output}/stage1", "--stage", "pretrain", "--model", "tiny", "--steps", "30",
            "--lr-new", "1e-3", "--log-every", "5", "--output", f"{output}/train-stage1"]),
        ("train the tiny Idefics2 on the SFT mixture", train_main, [
            "--data", f"{output}/cauldron/sft", "--stage", "sft", "--model", "tiny", "--steps", "30",
            "--lr-new", "1e-3", "--log-every", "5", "--output", f"{output}/train-sft"]),
    ]
    for title, command, argv in steps:
        print(f"demo: {title}", file=sys.stderr)
        status = command(argv)
        if status:
            return status
    return 0


def train_main(argv: list[str]) -> int:
    from trainer import train  # torch and transformers: imported only when the demo gets here

    status = train.main(argv)
    if status == 0:
        print(loss_line(argv[argv.index("--output") + 1]), file=sys.stderr)
    return status


def loss_line(run: str) -> str:
    """The loss at the first and last logged steps of a training run, and where its curve is."""
    with open(f"{run}/metrics.jsonl") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    first, last = rows[0], rows[-1]
    return (f"demo: loss {first['loss']:.2f} at step {first['step']} -> {last['loss']:.2f} at step {last['step']}; "
            f"curve in {run}/loss.png")


if __name__ == "__main__":
    sys.exit(main())
