"""The command line every pipeline shares: input and shard selection, steps, executors, resume and the summary.

A pipeline module declares a `PipelineSpec` (its source, its steps in order) and calls `main(spec)`. This module
turns flags into a datatrove pipeline `reader -> steps -> writer`, one task per input file, records the output's
manifest before any work, sets calibrated cuts, runs the shards not yet done, and merges their accounting into
`OUTPUT/summary.json`. It names no step and no file format: those come from the declaration.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from datatrove.io import DataFolder, get_datafolder
from datatrove.pipeline.base import PipelineStep

from filters.errors import command
from pipelines import summary as summaries
from pipelines.calibration import CalibrationError, calibrate, calibrated_steps, check_calibration_inputs
from pipelines.executors import ExecutorOptions, report_failed, run_executor
from pipelines.manifest import check_and_write
from pipelines.options import UsageError, add_arguments, from_args, normalise_path, output_options
from pipelines.shards import DiscardingWriter, ShardWriter, shard_name
from pipelines.sources import ShardInputError, Source, UnreadableFilter, list_input
from pipelines.steps import RunContext, StepSpec

__all__ = ["PipelineSpec", "UsageError", "main"]


@dataclass
class PipelineSpec:
    """What a pipeline module declares: its source and its steps, in pipeline order."""

    name: str
    description: str
    default_input: str
    source: Source
    steps: Sequence[StepSpec]
    examples: Sequence[str] = ()  # shown by --help
    # the source's own options (e.g. which columns hold the pair): a dataclass made with `option`, flags without
    # a prefix, recorded in the manifest; `source.configured(options)` gives the source the run reads
    source_options: type | None = None
    reports: Sequence[Callable[[DataFolder], str | None]] = field(default_factory=tuple)  # written after a run

    def step(self, name: str) -> StepSpec:
        return next(s for s in self.steps if s.name == name)


ENVIRONMENT = """environment variables read:
  SPAWNING_TOKEN / SPAWNING_OPTS_KEY  Spawning API token (step optout, without --optout-list)
  HF_TOKEN                            Hugging Face token, for hf:// inputs and outputs and gated models
  HF_HOME                             where Hub models are cached
  IDEFICS2_TASK_CPUS                  threads for the model steps of each task (set by the executors)"""


def build_parser(spec: PipelineSpec) -> argparse.ArgumentParser:
    examples = "\n".join(f"  {e}" for e in spec.examples)
    parser = argparse.ArgumentParser(prog=f"python -m pipelines.{spec.name}", description=spec.description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=f"examples:\n{examples}\n\n{ENVIRONMENT}")
    io = parser.add_argument_group("input and output")
    io.add_argument("--input", default=spec.default_input,
                    help=f"folder (local, s3://, hf://...) or file of {spec.source.suffix} shards "
                         f"(default: {spec.default_input})")
    io.add_argument("--output", required=True,
                    help="output folder, local or any fsspec URL: data/, removed/, summary.json, logs/")
    io.add_argument("--shards", default=None, metavar="A-B",
                    help="inclusive range of input files, numbered in sorted order (default: all)")
    defaults = ",".join(s.name for s in spec.steps if s.default is True)
    optional = [s.name for s in spec.steps if s.default is not True]
    required = [s.name for s in spec.steps if s.required]
    io.add_argument("--steps", default=None, metavar="a,b,c",
                    help=f"steps to run, in pipeline order (default: {defaults}"
                         f"{'; also on request: ' + ','.join(optional) if optional else ''}"
                         f"{'; always: ' + ','.join(required) if required else ''})")
    io.add_argument("--limit", type=int, default=None, help="documents per shard, for smoke runs (default: all)")
    io.add_argument("--logging-dir", default=None, help="logs, stats, completion markers (default: OUTPUT/logs)")
    io.add_argument("--cache-dir", default=None,
                    help="LOCAL folder for caches (opt-out answers, image indexes) (default: OUTPUT/cache for a "
                         "local output, else ~/.cache/idefics2-recipe/<hash of OUTPUT>)")
    io.add_argument("--calibration-shards", default=None, metavar="A-B",
                    help="shards whose scores set calibrated cuts such as --ppl-drop-top (default: all input files)")
    if spec.source_options:
        add_arguments(parser, "source", spec.source_options, "")
    ExecutorOptions.add_arguments(parser, job_name=f"idefics2-{spec.name}")
    for step in spec.steps:
        if step.options:
            add_arguments(parser, step.title or f"step {step.name}", step.options, step.flag_prefix)
    return parser


def parse_steps(text: str | None, spec: PipelineSpec, args: argparse.Namespace) -> list[str]:
    names = [s.name for s in spec.steps]
    if text is None:
        return [s.name for s in spec.steps if s.runs_by_default(args)]
    asked = [s.strip() for s in text.split(",") if s.strip()]
    if not asked:
        raise UsageError(f"--steps: give at least one step (choose from {','.join(names)})")
    unknown = [s for s in asked if s not in names]
    if unknown:
        raise UsageError(f"--steps: unknown step {unknown[0]!r} (choose from {','.join(names)})")
    return [s.name for s in spec.steps if s.name in asked or s.required]


def parse_shard_range(text: str | None, n_files: int, flag: str, source: str) -> range:
    if text is None:
        return range(n_files)
    try:
        first, _, last = text.partition("-")
        shards = range(int(first), int(last or first) + 1)
    except ValueError:
        raise UsageError(f"{flag} {text}: expected A-B, e.g. 0-999") from None
    if shards.start < 0 or len(shards) == 0:
        raise UsageError(f"{flag} {text}: expected A-B with 0 <= A <= B")
    if shards.stop > n_files:
        raise UsageError(f"{flag} {text}: {source} has {n_files} files, numbered 0-{n_files - 1}")
    return shards


def default_cache_dir(output: str) -> str:
    if "://" not in output or output.startswith("file://"):
        return os.path.join(output.removeprefix("file://"), "cache")
    digest = hashlib.sha256(normalise_path(output).encode()).hexdigest()[:16]
    return os.path.join(os.path.expanduser("~"), ".cache", "idefics2-recipe", digest)


def _inside(child: str, parent: str) -> bool:
    child, parent = normalise_path(child).rstrip("/") + "/", normalise_path(parent).rstrip("/") + "/"
    return child.startswith(parent)


def check_paths(args: argparse.Namespace, input_path: str) -> None:
    """Refuse, before anything is written, an output that would be read as input (or written over it) or that is a
    file. A one-file input lists only itself, so an output beside it is fine."""
    input_is_folder = not get_datafolder(args.input).isfile("")
    if input_is_folder and _inside(args.output, input_path) or _inside(input_path, args.output):
        raise UsageError(f"--output {args.output}: inside --input {args.input} (or the reverse): a re-run would "
                         f"read its own output as input; choose a folder outside it")
    if get_datafolder(args.output).isfile(""):
        raise UsageError(f"--output {args.output}: is a file, not a folder")
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit {args.limit}: must be at least 1 (leave it out for all documents)")
    if args.executor == "slurm" and not shutil.which("sbatch"):
        raise UsageError("--executor slurm: sbatch not found on this machine's PATH (run from a Slurm login node)")


@dataclass
class Run:
    """One invocation, resolved: what every pass builds its pipeline from."""

    spec: PipelineSpec
    args: argparse.Namespace
    source: Source  # the spec's source, configured by the source options
    source_options: object | None
    input_path: str
    files: list[str]
    steps: list[str]
    options: dict  # step name -> filled options dataclass
    executor: ExecutorOptions

    @property
    def cache_dir(self) -> str:
        return self.args.cache_dir or default_cache_dir(self.args.output)

    def context(self, removals, scoring_only: frozenset[str] = frozenset(), thresholds: dict | None = None):
        return RunContext(self.args.output, self.cache_dir, removals, scoring_only, dict(thresholds or {}))

    def pipeline(self, steps: list[str], scoring_only: frozenset[str] = frozenset(),
                 thresholds: dict | None = None, write: bool = True) -> list[PipelineStep]:
        specs = [self.spec.step(name) for name in steps]
        if write:
            writer = ShardWriter(self.args.output, self.source, [out for s in specs for out in s.outputs])
        else:
            writer = DiscardingWriter()
        ctx = self.context(writer, scoring_only, thresholds)
        reader = self.source.reader(self.input_path, self.files, -1 if self.args.limit is None else self.args.limit)
        return [reader, UnreadableFilter(exclusion_writer=ctx.recorder("read")),
                *(s.build(self.options.get(s.name), ctx) for s in specs), writer]

    def manifest(self) -> dict:
        options = {"--calibration-shards": self.args.calibration_shards} if calibrated_steps(self) else {}
        if self.source_options is not None:
            options.update(output_options(self.source_options, ""))
        for name in self.steps:
            step = self.spec.step(name)
            if step.options:
                options.update(output_options(self.options[name], step.flag_prefix))
        return {"pipeline": self.spec.name, "input": normalise_path(self.input_path), "files": self.files,
                "steps": self.steps, "limit": self.args.limit, "options": options}


def resolve(spec: PipelineSpec, args: argparse.Namespace) -> Run:
    steps = parse_steps(args.steps, spec, args)
    executor = ExecutorOptions.from_args(args)
    source_options = from_args(spec.source_options, args, "") if spec.source_options else None
    source = spec.source.configured(source_options) if source_options is not None else spec.source
    input_path, files = list_input(args.input, source.suffix)
    check_paths(args, input_path)
    options = {s.name: from_args(s.options, args, s.flag_prefix) for s in spec.steps if s.options}
    return Run(spec, args, source, source_options, input_path, files, steps, options, executor)


def run(spec: PipelineSpec, args: argparse.Namespace) -> int:
    run = resolve(spec, args)
    shards = parse_shard_range(args.shards, len(run.files), "--shards", f"--input {args.input}")
    parse_shard_range(args.calibration_shards, len(run.files), "--calibration-shards", f"--input {args.input}")
    output = get_datafolder(args.output)
    logging_path = args.logging_dir or os.path.join(args.output, "logs")  # a URL: the executor opens it itself
    logging_dir = get_datafolder(logging_path)

    done = summaries.read_shard_records(logging_dir, list(shards))
    pending = [s for s in shards if shard_name(s) not in done]
    title = f"{spec.name}: shards {shards.start}-{shards.stop - 1} of {len(run.files)} into {args.output}"
    if not pending:
        check_and_write(output, run.manifest(), shards)
        print(f"{title}: all {len(shards)} shards already done, nothing to run", file=sys.stderr)
        print(summaries.format_report("output so far", summaries.update_summary(output, done, logging_dir)["total"]))
        return 0
    print(f"{title}: {len(pending)} to run, {len(done)} already done; steps {','.join(run.steps)}", file=sys.stderr)
    run.source.check(get_datafolder(run.input_path), [run.files[s] for s in pending])
    run.pipeline(run.steps, scoring_only=frozenset(run.steps))  # every step built once: flags checked before work
    check_calibration_inputs(run, checked=set(pending))
    check_and_write(output, run.manifest(), shards)  # before any work, calibration included
    start = time.perf_counter()
    thresholds = calibrate(run, logging_dir, output)
    run_executor(run.pipeline(run.steps, thresholds=thresholds), len(run.files), shards, logging_path, run.executor)
    seconds = time.perf_counter() - start

    records = summaries.read_shard_records(logging_dir, list(shards))
    report = summaries.update_summary(output, records, logging_dir)
    this_run = {name: r for name, r in records.items() if int(name) in pending}
    print(summaries.format_report(f"this run: {len(this_run)} shards", summaries.total(this_run), seconds))
    if len(report["shards"]) > len(this_run):
        print(summaries.format_report(f"output so far: {len(report['shards'])} shards", report["total"]))
    for write in spec.reports:
        if line := write(output):
            print(line)
    return _report_problems(logging_dir, pending, records)


def _report_problems(logging_dir: DataFolder, pending: list[int], records: dict[str, dict]) -> int:
    status = 0
    for name, record in records.items():
        if summaries.unbalanced(record):
            print(f"error: shard {name}: input {record['input']} != kept {record['kept']} + removed "
                  f"{sum(record['removed'].values())}: a step lost documents", file=sys.stderr)
            status = 1
    if report_failed(logging_dir, [s for s in pending if shard_name(s) not in records]):
        status = 1
    return status


def main(spec: PipelineSpec, argv: Sequence[str] | None = None) -> int:
    """A pipeline's command: usage errors and Ctrl-C end as every command's do (`filters.errors.command`)."""

    @command
    def pipeline(argv: Sequence[str] | None) -> int:
        args = build_parser(spec).parse_args(argv)
        try:
            return run(spec, args)
        except ShardInputError as error:  # an input file unreadable before any work: the user's to fix
            print(f"error: {error}", file=sys.stderr)
            return 2
        except CalibrationError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
    return pipeline(argv)
