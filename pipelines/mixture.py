"""`python -m pipelines.mixture --stage 1|2|SPEC --output DIR`: a pre-training stage's mixture as webdataset tars.

Reads the outputs of the OBELICS, pairs and pages pipelines, draws samples from them by the stage spec's shares
(`mixtures/stage1.toml`, `stage2.toml`: the paper's section 4.1), deterministically for a seed and in parallel
over output shards, enforces each source's maximum length (split or drop), fits the images to the stage's cap
(with stage 2's random scale-up) and writes `OUTPUT/data/NNNNN.tar` in the layout of `mixtures.layout`, with
`mixture.json`, `summary.json` (per source: samples, share, units available, read, distinct, repeat factor,
splits, drops, unreadable) and `manifest.json` (a resume with other settings is refused).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from collections import Counter
from dataclasses import replace

from datatrove.io import get_datafolder

from filters.errors import command
from filters.shard_files import shard_name
from mixtures.build import ACCOUNTING, MixtureShardBuilder, Plan, estimate_sample_bytes
from mixtures.draw import Allocation, UnitOrder, apportion, distinct_units
from mixtures.layout import MixtureInfo, SourceTarget, write_info
from mixtures.sources import check_source
from mixtures.spec import StageSpec, load_spec
from mixtures.tokens import DEFAULT_TOKENIZER, TokenCounter
from pipelines.cli import default_cache_dir
from pipelines.executors import ExecutorOptions, quiet_console, report_failed, run_executor, shard_outcomes
from pipelines.manifest import MANIFEST_FILE, read_json, write_json
from pipelines.options import UsageError, at_least, normalise_path

SUMMARY_FILE = "summary.json"
# webdataset's FAQ suggests shards of a few hundred MB to a few GB: large enough for sequential reads
DEFAULT_SHARD_SIZE = "512MB"
_UNITS = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}


def parse_shard_size(text: str) -> tuple[str, int]:
    """`1000` -> ("samples", 1000); `512MB` -> ("bytes", 512_000_000)."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT]B)?", text.strip().upper())
    if match and match.group(2) and float(match.group(1)) > 0:
        return "bytes", int(float(match.group(1)) * _UNITS[match.group(2)])
    if match and not match.group(2) and match.group(1).isdigit() and int(match.group(1)) > 0:
        return "samples", int(match.group(1))
    raise argparse.ArgumentTypeError(f"{text!r}: expected a number of samples or a size such as 512MB")

EXAMPLES = """examples:
  python -m pipelines.mixture --stage 1 --sources-root out --output out/stage1 --samples 100000
  python -m pipelines.mixture --stage 2 --source obelics=out/obelics --source pairs=out/laion_coco \\
      --source pages=out/pdfa --source pages=out/idl --output out/stage2 --workers 8
  python -m pipelines.mixture --stage my_stage.toml --output out/custom --tokenizer path/to/tokenizer"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipelines.mixture", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES)
    io = parser.add_argument_group("mixture")
    io.add_argument("--stage", required=True, metavar="1|2|SPEC",
                    help="the paper's stage 1 or 2 (mixtures/stage1.toml, stage2.toml), or a spec TOML file")
    io.add_argument("--output", required=True, help="output folder: data/, mixture.json, summary.json, logs/")
    io.add_argument("--source", action="append", default=[], metavar="NAME=PATH",
                    help="a pipeline output folder for the spec's source NAME (repeat for several folders of one "
                         "source); replaces the spec's default paths for that source")
    io.add_argument("--sources-root", default=".", metavar="DIR",
                    help="folder under which the spec's default (relative) source paths are read (default: .)")
    io.add_argument("--samples", type=at_least(int, 1), default=None, metavar="N",
                    help="samples in the mixture (default: as many as the scarcest source gives without repeating "
                         "any of its units, at its share)")
    io.add_argument("--seed", type=at_least(int, 0), default=0, help="seed of every random choice (default: 0)")
    io.add_argument("--shard-size", type=parse_shard_size, default=DEFAULT_SHARD_SIZE, metavar="N|SIZE",
                    help="a tar's target: N samples, or a size such as 512MB or 1GB, turned into samples from the "
                         "mean size of the mixture's first samples (default: %(default)s)")
    io.add_argument("--tokenizer", default=DEFAULT_TOKENIZER,
                    help="tokenizer counting text tokens: Hub id or folder (default: %(default)s)")
    io.add_argument("--cache-dir", default=None,
                    help="LOCAL folder for the image and page indexes (default: OUTPUT/cache for a local output, "
                         "else ~/.cache/idefics2-recipe/<hash of OUTPUT>)")
    ExecutorOptions.add_arguments(parser, job_name="idefics2-mixture")
    return parser


def source_folders(spec: StageSpec, given: list[str], root: str) -> dict[str, list[str]]:
    """Folders per source: `--source NAME=PATH` flags, else the spec's paths under `root`."""
    folders: dict[str, list[str]] = {}
    for item in given:
        name, sep, path = item.partition("=")
        if not sep or not path:
            raise UsageError(f"--source {item}: expected NAME=PATH")
        if name not in {s.name for s in spec.sources}:
            raise UsageError(f"--source {item}: the spec has no source {name!r} "
                             f"(it has {', '.join(s.name for s in spec.sources)})")
        folders.setdefault(name, []).append(path)
    for source in spec.sources:
        if source.name not in folders:
            if not source.paths:
                raise UsageError(f"source {source.name}: no paths in {spec.path}; give --source {source.name}=PATH")
            folders[source.name] = [p if os.path.isabs(p) else os.path.join(root, p) for p in source.paths]
    return folders


def default_samples(spec: StageSpec, units: list[int]) -> int:
    return max(1, min(math.floor(u / s.share) for u, s in zip(units, spec.sources)))


def plan_from_args(args: argparse.Namespace) -> Plan:
    spec = load_spec(args.stage)
    folders = source_folders(spec, args.source, args.sources_root)
    cache = args.cache_dir or default_cache_dir(args.output)
    sources = [check_source(s.name, s.format, folders[s.name], cache) for s in spec.sources]  # all, before writing
    sources = [source.open() for source in sources]
    samples = args.samples or default_samples(spec, [s.units for s in sources])
    counts = apportion(samples, [s.share for s in spec.sources])
    kind, size = args.shard_size
    per_shard = size if kind == "samples" else samples  # bytes: set once the tokenizer is loaded (`size_shards`)
    return Plan(spec, sources, Allocation.make(counts, args.seed), per_shard, math.ceil(samples / per_shard),
                args.seed, args.tokenizer, args.output)


def size_shards(plan: Plan, shard_size: tuple[str, int]) -> Plan:
    """A byte target as samples a shard, from the pilot's mean sample size."""
    kind, size = shard_size
    if kind == "samples":
        return plan
    per_shard = max(1, min(plan.samples, int(size // estimate_sample_bytes(plan))))
    return replace(plan, samples_per_shard=per_shard, shards=math.ceil(plan.samples / per_shard))


def manifest(plan: Plan) -> dict:
    return {"pipeline": "mixture", "tasks": plan.shards, "summary": "own",  # for pipelines.status
            "spec": plan.spec.to_json(), "samples": plan.samples, "seed": plan.seed,
            "samples_per_shard": plan.samples_per_shard, "tokenizer": normalise_path(plan.tokenizer),
            "sources": {s.name: [[normalise_path(f.folder), f.name, f.units] for f in s.files] for s in plan.sources}}


def check_and_write_manifest(plan: Plan) -> None:
    """One output, one configuration: a resume with any other setting or input is refused in one line."""
    output = get_datafolder(plan.output)
    previous, current = read_json(output, MANIFEST_FILE), json.loads(json.dumps(manifest(plan)))
    if previous:
        for key in current:
            if previous.get(key) != current[key]:
                raise UsageError(f"--output {plan.output} was made with another {key} "
                                 f"({json.dumps(previous.get(key))[:120]}); use another --output or the same "
                                 f"flags and inputs")
    write_json(output, MANIFEST_FILE, current)


def mixture_info(plan: Plan) -> MixtureInfo:
    sources = {s.name: SourceTarget(s.share, s.max_tokens, plan.spec.image_max_side) for s in plan.spec.sources}
    return MixtureInfo("pretrain", plan.spec.name, "samples", sources, "data/*.tar", plan.spec.image_tokens,
                       plan.tokenizer, plan.seed, {"spec": plan.spec.to_json(), "samples": plan.samples,
                                                   "samples_per_shard": plan.samples_per_shard})


# ---------------------------------------------------------------------------------------------------------------
# summary.json: the shards' accounting merged


def read_accounting(plan: Plan) -> dict[int, dict]:
    folder = get_datafolder(plan.output)
    records = {}
    for shard in range(plan.shards):
        name = f"{ACCOUNTING}/{shard_name(shard)}.json"
        if folder.isfile(name):
            with folder.open(name) as f:
                records[shard] = json.load(f)
    return records


def summarise(plan: Plan, records: dict[int, dict], seconds: float) -> dict:
    written = sum(r["samples"] for r in records.values())
    sources = {}
    for index, (spec, source) in enumerate(zip(plan.spec.sources, plan.sources)):
        total = Counter()
        for record in records.values():
            total.update({k: v for k, v in record["sources"][spec.name].items() if not k.startswith("max_")})
        read = [records[k]["sources"][spec.name]["positions_read"] if k in records else 0
                for k in range(plan.shards)]
        distinct = distinct_units(UnitOrder(source.units, plan.seed, spec.name), plan.shards, read)
        maxima = {k: max((r["sources"][spec.name].get(k, 0) for r in records.values()), default=0)
                  for k in ("max_images", "max_tokens_seen")}
        sources[spec.name] = {
            "target_share": spec.share, "samples": total["samples"],
            "share": total["samples"] / written if written else 0.0,
            "target_samples": plan.allocation.counts[index], "units_available": source.units,
            "units_read": total["units_read"], "units_distinct": distinct,
            "repeat_factor": total["units_read"] / distinct if distinct else 0.0,
            "subsampled_fraction": distinct / source.units, "split_units": total["split_units"],
            "split_parts": total["split_parts"], "dropped_too_long": total["dropped_too_long"],
            "unreadable": {k.split("/", 1)[1]: v for k, v in total.items() if k.startswith("unreadable/")},
            "images_lost": {k.split("/", 1)[1]: v for k, v in total.items() if k.startswith("images_lost/")},
            "text_pieces_dropped": total["text_pieces_dropped"], "parts_cut_at_quota": total["parts_cut_at_quota"],
            "images": total["images"], "text_tokens": total["text_tokens"], "image_tokens": total["image_tokens"],
            "max_tokens": spec.max_tokens, **maxima, "exhausted_in_shards": total["exhausted"],
            "count_problems": source.problems,
        }
    return {"stage": plan.spec.name, "samples": written, "target_samples": plan.samples,
            "shards_done": len(records), "shards": plan.shards, "bytes": sum(r["bytes"] for r in records.values()),
            "max_images": max((s["max_images"] for s in sources.values()), default=0),
            "seconds": round(seconds, 1), "sources": sources}


def format_summary(summary: dict) -> str:
    lines = [f"{summary['stage']}: {summary['samples']:,} samples in {summary['shards_done']}/{summary['shards']} "
             f"shards, {summary['bytes'] / 1e6:,.1f} MB, max {summary['max_images']} images a sample, "
             f"{summary['seconds']} s"]
    for name, s in summary["sources"].items():
        extra = f", split {s['split_units']} into {s['split_parts']}" if s["split_units"] else ""
        extra += f", dropped {s['dropped_too_long']} too long" if s["dropped_too_long"] else ""
        extra += f", unreadable {sum(s['unreadable'].values())}" if s["unreadable"] else ""
        extra += f", images lost {sum(s['images_lost'].values())}" if s["images_lost"] else ""
        lines.append(f"  {name:<10} {s['samples']:>9,} samples  {100 * s['share']:5.1f}% (target "
                     f"{100 * s['target_share']:.0f}%)  {s['units_distinct']:,}/{s['units_available']:,} units "
                     f"used, repeat x{s['repeat_factor']:.2f}{extra}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    executor = ExecutorOptions.from_args(args)
    if not args.verbose:
        quiet_console()  # the image indexes' INFO lines stay out of the console, as in the tasks
    if get_datafolder(args.output).isfile(""):
        raise UsageError(f"--output {args.output}: is a file, not a folder")
    plan = plan_from_args(args)
    try:
        plan.counter = TokenCounter(plan.tokenizer)  # fail here, in one line, not in every task
    except (OSError, ValueError) as error:
        raise UsageError(f"--tokenizer {plan.tokenizer}: cannot be loaded ({str(error).splitlines()[0]})") from None
    plan = size_shards(plan, args.shard_size)
    check_and_write_manifest(plan)
    write_info(get_datafolder(plan.output), mixture_info(plan))
    logging_path = os.path.join(args.output, "logs")
    done, _ = shard_outcomes(get_datafolder(logging_path))
    print(f"mixture {plan.spec.name}: {plan.samples:,} samples in {plan.shards} shards of {plan.samples_per_shard} "
          f"into {args.output}; {len(set(range(plan.shards)) - done)} to build", file=sys.stderr)
    start = time.perf_counter()
    run_executor([MixtureShardBuilder(plan)], plan.shards, range(plan.shards), logging_path, executor)
    records = read_accounting(plan)
    summary = summarise(plan, records, time.perf_counter() - start)
    write_json(get_datafolder(plan.output), SUMMARY_FILE, summary)
    print(format_summary(summary))
    return _problems(plan, summary, logging_path)


def _problems(plan: Plan, summary: dict, logging_path: str) -> int:
    status = 0
    for name, s in summary["sources"].items():
        if s["exhausted_in_shards"]:
            print(f"error: source {name}: no usable units left in {s['exhausted_in_shards']} shard(s) "
                  f"({s['samples']} of {s['target_samples']} samples); see its unreadable and dropped counts in "
                  f"{plan.output}/{SUMMARY_FILE}", file=sys.stderr)
            status = 1
    missing = sorted(set(range(plan.shards)) - set(read_accounting(plan)))
    if report_failed(get_datafolder(logging_path), missing):
        status = 1
    return status


@command
def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
