"""`python -m pipelines.cauldron`: The Cauldron, the instruction fine-tuning data of the Idefics2 paper (4.2).

Rebuilds each subset from its source dataset (`--source DIR` of per-subset parquet in the source's schema, or the
Hub ids of `cauldron/registry.toml`), or reads the published configs (`--from-published`); prompts every row with
its task family's formatter, merges Q/A on identical images into one row of several turns, removes rows whose
images or Q/A match the evaluation index, and writes one parquet config per subset in the published schema
(`OUT/<subset>/train-00000-of-00001.parquet`), the removed rows with their reasons (`OUT/removed/`), a
decontamination report, and the SFT mixture drawn by Table 14's shares of answer tokens (`OUT/sft/`).

It runs on the shared spine (manifest, executors, completion markers) but not through `pipelines.cli`'s
document pipeline: merging rows on identical images needs the whole subset, so a task is a subset, not a shard.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from dataclasses import dataclass

from datatrove.io import get_datafolder

from cauldron import registry, sources
from cauldron.build import SubsetSettings, BuildSubsets
from cauldron.sft_mixture import SftOptions, build as build_sft
from filters.errors import UsageError, command
from filters.shard_files import write_atomically
from pipelines.executors import ExecutorOptions, report_failed, run_executor, shard_outcomes
from pipelines.manifest import check_and_write
from pipelines.options import add_arguments, from_args, normalise_path, option, output_options

DEFAULT_TOKENIZER = "HuggingFaceM4/idefics2-8b"  # the paper's model; contract 4
ORIGINAL_BENCHMARKS = ("mmbench", "mathvista", "mmmu")  # the original build dropped these test images


@dataclass
class CauldronOptions:
    subsets: str = option("all", "all, subsets (the 50 image subsets), text (the text-only sets) or a,b,c; with a "
                                 "local --source, `all` means those present in it", metavar="NAMES")
    source: str | None = option(None, "local folder of <subset>.parquet or <subset>/*.parquet, or a Hub id with "
                                      "--from-published (default: each subset's source on the Hub; with "
                                      f"--from-published, {registry.PUBLISHED_HUB_ID})", path=True, flag="--source",
                                metavar="HUB_OR_DIR")
    max_rows: int = option(200_000, "rows per subset at most (the original build's cap)", flag="--max-rows",
                           minimum=1)
    decontam_index: str | None = option(None, "decontamination index (python -m filters.decontam build); every "
                                              "benchmark in it is removed. Default: an index of the MMBench, "
                                              "MathVista and MMMU images built from the Hub, as the original; "
                                              "'none' to skip", path=True, flag="--decontam-index", metavar="INDEX")
    tokenizer: str = option(DEFAULT_TOKENIZER, "tokenizer that counts answer tokens", path=True, flag="--tokenizer")
    sft_tokens: int | None = option(None, "answer tokens of the SFT mixture (default: the most for which no subset "
                                          "repeats a row)", flag="--sft-tokens", minimum=1)
    seed: int = option(0, "seed of the SFT mixture's draw and order", flag="--seed")
    sft_rows_per_file: int = option(10_000, "rows per SFT parquet file", flag="--sft-rows-per-file", minimum=1)
    from_published: bool = option(False, "read rows in the published Cauldron schema instead of rebuilding them",
                                  flag="--from-published", switch=True)
    shuffle_turns: bool = option(False, "shuffle the turns of merged rows (seeded by the row)",
                                 flag="--shuffle-turns", switch=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.cauldron", description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  python -m pipelines.cauldron --list\n"
               "  python -m pipelines.cauldron --source sources/ --output cauldron/ --decontam-index INDEX\n"
               "  python -m pipelines.cauldron --from-published --subsets ai2d,chartqa --output cauldron/")
    parser.add_argument("--list", action="store_true", help="print the registry (name, family, share) and exit")
    parser.add_argument("--output", help="output folder")
    parser.add_argument("--logging-dir", default=None, help="logs and completion markers (default: OUTPUT/logs)")
    add_arguments(parser, "The Cauldron", CauldronOptions, "")
    ExecutorOptions.add_arguments(parser, job_name="idefics2-cauldron")
    return parser


def default_index(cache: str) -> str:
    """The original build's decontamination: MMBench, MathVista and MMMU images, indexed once from the Hub."""
    from filters.decontam.index import build_index, items_from_hub
    from filters.decontam.registry import BENCHMARKS

    path = os.path.join(cache, "decontam_index")
    if not os.path.isfile(os.path.join(path, "index.json")):
        print(f"cauldron: indexing {', '.join(ORIGINAL_BENCHMARKS)} from the Hub into {path}", file=sys.stderr)
        build_index(path, [(n, BENCHMARKS[n].hub_id, items_from_hub(BENCHMARKS[n])) for n in ORIGINAL_BENCHMARKS])
    return path


def resolve_index(value: str | None, output: str) -> str | None:
    if value == "none":
        return None
    if value is None:
        try:
            return default_index(os.path.join(output, "cache"))
        except Exception as error:  # noqa: BLE001 - network, credentials, a moved set: all the user's to see
            cause = (str(error).splitlines() or [""])[0]
            raise UsageError(f"--decontam-index: the default index (MMBench, MathVista and MMMU images from the Hub) "
                             f"cannot be built ({type(error).__name__}: {cause}); give --decontam-index INDEX, or "
                             f"'none' to skip") from None
    if not os.path.isfile(os.path.join(value, "index.json")):
        raise UsageError(f"--decontam-index {value}: not a decontamination index (no index.json); build one with "
                         f"python -m filters.decontam build")
    return value


def check_tokenizer(name: str) -> None:
    try:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as error:
        raise UsageError(f"--tokenizer {name}: cannot be loaded ({str(error).splitlines()[0]})") from None


def run(args: argparse.Namespace) -> int:
    if args.list:
        print(registry.listing())
        return 0
    if not args.output:
        raise UsageError("--output: required (or --list)")
    options = from_args(CauldronOptions, args, "")
    executor = ExecutorOptions.from_args(args)
    chosen = registry.select(options.subsets)
    explicit = options.subsets not in ("all", "subsets", "text")
    entries = sources.check_source(options.source, options.from_published, chosen, explicit)
    if len(entries) < len(chosen):
        print(f"cauldron: {len(chosen) - len(entries)} selected subset(s) not in --source {options.source}: "
              f"building the {len(entries)} present", file=sys.stderr)
    check_tokenizer(options.tokenizer)
    output = get_datafolder(args.output)
    names = [e.name for e in entries]
    manifest = {"pipeline": "cauldron", "input": normalise_path(options.source), "files": names,
                "steps": ["format", "decontam", "write", "sft"], "limit": None,
                "options": output_options(options, ""), "summary": "own"}  # pipelines.status must not merge it
    index = resolve_index(options.decontam_index, args.output)
    check_and_write(output, manifest, range(len(names)))
    settings = SubsetSettings(os.path.abspath(args.output), names, normalise_path(options.source),
                              options.from_published, options.max_rows, index, options.tokenizer,
                              options.shuffle_turns)
    logging_dir = args.logging_dir or os.path.join(args.output, "logs")
    run_executor([BuildSubsets(settings)], len(names), range(len(names)), logging_dir, executor)
    _, failed = shard_outcomes(get_datafolder(logging_dir))
    if report_failed(get_datafolder(logging_dir), sorted(failed), "subset", names.__getitem__):
        return 1
    print(report(output, names))
    sft = build_sft(args.output, names, SftOptions(options.sft_tokens, options.seed, options.sft_rows_per_file,
                                                   options.tokenizer))
    print(f"cauldron: SFT mixture of {sft['rows']:,} rows, {sft['answer_tokens']:,} answer tokens over "
          f"{len(sft['subsets'])} subsets in {output.resolve_paths('sft')}")
    return 0


def report(output, names: list[str]) -> str:
    """Merge the subsets' counts into summary.json and write the decontamination report (JSON and markdown)."""
    import pyarrow.parquet as pq

    stats, matches = {}, []
    for name in names:
        with output.open(f"stats/{name}.json") as f:
            stats[name] = json.load(f)
        with output.open(f"removed/{name}.parquet", "rb") as f:
            for row in pq.read_table(f).to_pylist():
                if row["reason"] == "eval_match":
                    matches.append({"subset": name, "source_row": row["source_row"], "match": row["detail"]})
    total = Counter()
    for record in stats.values():
        total.update({k: v for k, v in record.items() if isinstance(v, int)})
    with write_atomically(output, "summary.json", "w") as f:
        json.dump({"total": dict(total), "subsets": stats}, f, indent=1, sort_keys=True)
    by_benchmark = Counter(m["match"].split("/", 1)[0] for m in matches)
    with write_atomically(output, "decontam_report.json", "w") as f:
        json.dump({"removed_rows": len(matches), "by_benchmark": dict(by_benchmark), "rows": matches}, f, indent=1)
    lines = ["# Decontamination report", "", f"{len(matches)} row(s) removed for matching an evaluation set.", "",
             "| subset | source row | match |", "|---|---|---|"]
    lines += [f"| {m['subset']} | {m['source_row']} | {m['match']} |" for m in matches]
    with write_atomically(output, "decontam_report.md", "w") as f:
        f.write("\n".join(lines) + "\n")
    return (f"cauldron: {total['rows']:,} rows ({total['turns']:,} turns) from {total['input_rows']:,} source rows "
            f"in {len(names)} subsets; removed: {total['removed_eval_match']:,} evaluation matches, "
            f"{total['removed_unreadable']:,} unreadable, {total['removed_over_max_rows']:,} over --max-rows; "
            f"decontamination report in {output.resolve_paths('decontam_report.md')}")


@command
def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
