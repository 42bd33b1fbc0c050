"""The command line every pipeline shares: input and shard selection, steps, executors, resume and the summary.

A pipeline module declares a `PipelineSpec` (its format, its steps in order) and calls `main(spec)`. This module
turns flags into a datatrove pipeline `reader -> steps -> writer`, one task per input file, runs the shards not
yet done, and merges their accounting into `OUTPUT/summary.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pyarrow.parquet as pq
from datatrove.io import DataFolder, get_datafolder
from datatrove.pipeline.base import PipelineStep

from pipelines import summary as summaries
from pipelines.calibration import Calibration, Cut, plot_cut, save_cuts, top_fraction_cut
from pipelines.executors import ExecutorOptions, run_executor
from pipelines.shards import (
    DiscardingWriter, ParquetShardReader, ParquetShardWriter, RowFormat, ShardInputError, schema_problem, shard_name,
)

RUN_FILE = "run.json"


class UsageError(Exception):
    """A user mistake (a flag, a path, an input file): reported as one line and exit status 2."""


class CalibrationError(Exception):
    """The scoring pass of a calibrated cut did not finish: reported as one line and exit status 1."""


StepFactory = Callable[[argparse.Namespace, ParquetShardWriter], PipelineStep]


@dataclass
class PipelineSpec:
    """What a pipeline module declares: its input format and its steps, in pipeline order."""

    name: str
    description: str
    default_input: str
    row_format: RowFormat
    steps: dict[str, StepFactory]
    add_arguments: Callable[[argparse.ArgumentParser], None] = lambda parser: None
    file_suffix: str = ".parquet"
    run_options: Sequence[str] = field(default_factory=tuple)  # flags that change the output: checked on resume
    calibrations: Sequence[Calibration] = field(default_factory=tuple)  # cuts set on the whole run's scores
    expensive_steps: Sequence[str] = ("images",)  # skipped by a calibration pass whose scores do not need them
    reports: Sequence[Callable[[DataFolder], str | None]] = field(default_factory=tuple)  # written after a run


def build_parser(spec: PipelineSpec) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m pipelines.{spec.name}", description=spec.description)
    io = parser.add_argument_group("input and output")
    io.add_argument("--input", default=spec.default_input,
                    help=f"folder (local, s3://, hf://...) or file of {spec.file_suffix} shards (default: %(default)s)")
    io.add_argument("--output", required=True, help="output folder: data/, removed/, summary.json, logs/")
    io.add_argument("--shards", default=None, metavar="A-B",
                    help="inclusive range of input files, numbered in sorted order (default: all)")
    io.add_argument("--steps", default=None, metavar="a,b,c",
                    help=f"steps to run, in pipeline order (default: all: {','.join(spec.steps)})")
    io.add_argument("--limit", type=int, default=-1, help="documents per shard, for smoke runs (default: all)")
    io.add_argument("--logging-dir", default=None, help="logs, stats, completion markers (default: OUTPUT/logs)")
    io.add_argument("--calibration-shards", default=None, metavar="A-B",
                    help="shards whose scores set calibrated cuts such as --ppl-drop-top (default: all input files)")
    run = parser.add_argument_group("execution")
    run.add_argument("--executor", choices=("local", "slurm", "ray"), default="local")
    run.add_argument("--workers", type=int, default=min(os.cpu_count() or 1, 4),
                     help="tasks running at once (default: %(default)s)")
    slurm = parser.add_argument_group("slurm")
    slurm.add_argument("--slurm-partition", default="debug")
    slurm.add_argument("--slurm-time", default="04:00:00", help="time limit per task (default: %(default)s)")
    slurm.add_argument("--slurm-cpus-per-task", type=int, default=1)
    slurm.add_argument("--slurm-mem-per-cpu-gb", type=int, default=2)
    slurm.add_argument("--slurm-qos", default="", help="quality of service (default: the cluster's)")
    slurm.add_argument("--slurm-venv", default=None,
                       help="venv (folder or bin/activate) the jobs activate (default: the one running this)")
    slurm.add_argument("--slurm-job-name", default=f"idefics2-{spec.name}")
    ray = parser.add_argument_group("ray")
    ray.add_argument("--ray-address", default=None, help="cluster to join, e.g. auto (default: start a local one)")
    spec.add_arguments(parser)
    return parser


def parse_steps(text: str | None, spec: PipelineSpec) -> list[str]:
    if text is None:
        return list(spec.steps)
    asked = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in asked if s not in spec.steps]
    if unknown:
        raise UsageError(f"--steps: unknown step {unknown[0]!r} (choose from {','.join(spec.steps)})")
    return [s for s in spec.steps if s in asked]


def parse_shard_range(text: str | None, n_files: int, source: str) -> range:
    if text is None:
        return range(n_files)
    try:
        first, _, last = text.partition("-")
        shards = range(int(first), int(last or first) + 1)
    except ValueError:
        raise UsageError(f"--shards {text}: expected A-B, e.g. 0-999") from None
    if shards.start < 0 or len(shards) == 0:
        raise UsageError(f"--shards {text}: expected A-B with 0 <= A <= B")
    if shards.stop > n_files:
        raise UsageError(f"--shards {text}: {source} has {n_files} files, numbered 0-{n_files - 1}")
    return shards


def list_input(path: str, suffix: str) -> tuple[str, list[str]]:
    """The folder and the sorted list of its `suffix` files (relative paths); a single file is a one-file folder."""
    try:
        folder = get_datafolder(path)
        if folder.isfile(""):
            return os.path.dirname(path.rstrip("/")) or ".", [os.path.basename(path.rstrip("/"))]
        if not folder.exists(""):
            raise UsageError(f"--input {path}: no such file or folder")
        files = sorted(f for f in folder.list_files(recursive=True) if f.endswith(suffix))
    except UsageError:
        raise
    except Exception as error:  # network, credentials, permissions: all the user's to fix
        raise UsageError(f"--input {path}: cannot list ({type(error).__name__}: {error})") from None
    if not files:
        raise UsageError(f"--input {path}: no {suffix} files")
    return path, files


def check_inputs(folder: DataFolder, files: list[str], row_format: RowFormat) -> None:
    """Read each file's parquet footer before any work: a file that is not parquet, lacks a column or has one of
    a type that does not cast stops here."""

    def problem(path: str) -> str | None:
        try:
            with folder.open(path, "rb") as f:
                schema = pq.ParquetFile(f).schema_arrow
        except Exception as error:  # noqa: BLE001 - any failure to read the footer is the file's problem
            return f"{folder.resolve_paths(path)}: not a readable parquet file ({type(error).__name__})"
        problem = schema_problem(schema, row_format.schema)
        return f"{folder.resolve_paths(path)}: {problem}" if problem else None

    with ThreadPoolExecutor(16) as pool:
        problems = [p for p in pool.map(problem, files) if p]
    if problems:
        more = f" (and {len(problems) - 1} more files)" if len(problems) > 1 else ""
        raise UsageError(problems[0] + more)


def check_run_file(output: DataFolder, run: dict) -> None:
    """An output folder holds one run's settings: resuming with others would mix two datasets in one.
    (The settings are written once the pipeline is built, so a refused first attempt binds nothing.)"""
    if output.isfile(RUN_FILE):
        with output.open(RUN_FILE) as f:
            previous = json.load(f)
        for key in ("pipeline", "input", "steps", "limit", "options"):
            if previous.get(key) != run[key]:
                raise UsageError(f"--output {output.path}: made with {key}={previous.get(key)!r}, this run has "
                                 f"{run[key]!r}; use another --output or the same flags")
        changed = [i for i, (a, b) in enumerate(zip(previous["files"], run["files"])) if a != b]
        if changed:
            raise UsageError(f"--input: file number {changed[0]} is now {run['files'][changed[0]]!r}, it was "
                             f"{previous['files'][changed[0]]!r} when {output.path} was made")


def executor_options(args: argparse.Namespace) -> ExecutorOptions:
    return ExecutorOptions(
        executor=args.executor, workers=args.workers, slurm_partition=args.slurm_partition,
        slurm_time=args.slurm_time, slurm_cpus_per_task=args.slurm_cpus_per_task,
        slurm_mem_per_cpu_gb=args.slurm_mem_per_cpu_gb, slurm_qos=args.slurm_qos, slurm_venv=args.slurm_venv,
        slurm_job_name=args.slurm_job_name, ray_address=args.ray_address,
    )


def build_pipeline(spec: PipelineSpec, args: argparse.Namespace, input_path: str, files: list[str],
                   steps: list[str], scoring_only: bool = False) -> list[PipelineStep]:
    writer = DiscardingWriter() if scoring_only else \
        ParquetShardWriter(args.output, spec.row_format, write_images="images" in steps)
    reader = ParquetShardReader(input_path, files, spec.row_format, limit=args.limit)
    return [reader, *(spec.steps[name](args, writer) for name in steps), writer]


def calibrate(spec: PipelineSpec, args: argparse.Namespace, input_path: str, files: list[str], steps: list[str],
              logging_dir: DataFolder, output: DataFolder, checked: set[int]) -> list[Cut]:
    """Score the calibration shards with every calibrated step (only what those steps need runs before them),
    then set each step's threshold from the merged scores into `args.calibrated`. Step factories build the
    calibrated steps as scorers only while `args.annotate_only` names them. Shards in `checked` have had their
    input files checked already."""
    active = [c for c in spec.calibrations if c.step in steps and c.fraction(args) is not None]
    if not active:
        return []
    needed = {n for c in active for n in c.needs}
    last = max(steps.index(c.step) for c in active)
    prefix = [s for s in steps[:last + 1] if s in needed or s not in spec.expensive_steps]
    shards = parse_shard_range(args.calibration_shards, len(files), f"--input {args.input}")
    try:
        check_inputs(get_datafolder(input_path), [files[s] for s in shards if s not in checked], spec.row_format)
    except UsageError as error:
        raise UsageError(f"{error}; it is a calibration shard: choose others with --calibration-shards") from None
    print(f"calibration: scoring shards {shards.start}-{shards.stop - 1} with {','.join(prefix)} to set "
          f"{', '.join(f'{c.step} (top {100 * c.fraction(args):g}%)' for c in active)}", file=sys.stderr)
    args.annotate_only = {c.step for c in active}
    pipeline = build_pipeline(spec, args, input_path, files, prefix, scoring_only=True)
    calibration_logs = get_datafolder(logging_dir.resolve_paths("calibration"))
    run_executor(pipeline, len(files), shards, calibration_logs.path, executor_options(args))
    args.annotate_only = set()
    unfinished = [s for s in shards if not calibration_logs.isfile(f"completions/{shard_name(s)}")]
    if unfinished:
        raise CalibrationError(f"calibration: {len(unfinished)} shard(s) failed to score, e.g. {unfinished[0]} "
                               f"(see {calibration_logs.resolve_paths('errors')}); run the command again")
    cuts = []
    for calibration in active:
        try:
            cut = top_fraction_cut(calibration.step, calibration.scores(args).values(list(shards)),
                                   calibration.fraction(args), calibration.log_scale)
        except ValueError as error:
            raise CalibrationError(f"calibration: {error}; check --calibration-shards") from None
        args.calibrated[calibration.step] = cut.threshold
        plot_cut(cut, f"{cut.step}_histogram.png", output, calibration.log_scale)
        print(f"calibration: {cut.step} threshold {cut.threshold:.6g} (top {100 * cut.fraction:g}% of "
              f"{cut.scored:,} scores: {cut.above:,} above); plot {output.resolve_paths(cut.step)}_histogram.png",
              file=sys.stderr)
        cuts.append(cut)
    save_cuts(output, cuts)
    return cuts


def run(spec: PipelineSpec, args: argparse.Namespace) -> int:
    if args.workers < 1:
        raise UsageError(f"--workers {args.workers}: must be at least 1")
    steps = parse_steps(args.steps, spec)
    input_path, files = list_input(args.input, spec.file_suffix)
    shards = parse_shard_range(args.shards, len(files), f"--input {args.input}")
    output = get_datafolder(args.output)
    logging_dir = get_datafolder(args.logging_dir or os.path.join(args.output, "logs"))
    options = {k: getattr(args, k) for k in (*spec.run_options, "calibration_shards")}
    run_settings = {"pipeline": spec.name, "input": args.input, "steps": steps, "limit": args.limit,
                    "options": options, "files": files}
    check_run_file(output, run_settings)

    done = summaries.read_shard_records(logging_dir, list(shards))
    pending = [s for s in shards if shard_name(s) not in done]
    title = f"{spec.name}: shards {shards.start}-{shards.stop - 1} of {len(files)} into {args.output}"
    if not pending:
        print(f"{title}: all {len(shards)} shards already done, nothing to run", file=sys.stderr)
        print(summaries.format_report("output so far", summaries.update_summary(output, done)["total"]))
        return 0
    print(f"{title}: {len(pending)} to run, {len(done)} already done; steps {','.join(steps) or '(none)'}",
          file=sys.stderr)
    check_inputs(get_datafolder(input_path), [files[s] for s in pending], spec.row_format)
    args.annotate_only = {c.step for c in spec.calibrations}  # build every step once: its flags are checked
    build_pipeline(spec, args, input_path, files, steps)  # before any work, even a calibration pass
    args.annotate_only = set()
    start = time.perf_counter()
    calibrate(spec, args, input_path, files, steps, logging_dir, output, checked=set(pending))
    pipeline = build_pipeline(spec, args, input_path, files, steps)
    with output.open(RUN_FILE, "w") as f:
        json.dump(run_settings, f, indent=1)
    run_executor(pipeline, len(files), shards, logging_dir.path, executor_options(args))
    seconds = time.perf_counter() - start

    records = summaries.read_shard_records(logging_dir, list(shards))
    report = summaries.update_summary(output, records)
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
    failed = [s for s in pending if shard_name(s) not in records]
    for shard in failed:
        error_file = f"errors/{shard_name(shard)}.txt"
        reason = "did not finish"
        if logging_dir.isfile(error_file):
            reason = logging_dir.open(error_file, "r").read().strip()
        print(f"error: shard {shard_name(shard)} failed: {reason} "
              f"(log: {logging_dir.resolve_paths(f'logs/task_{shard_name(shard)}.log')})", file=sys.stderr)
    if failed:
        print(f"{len(failed)} shard(s) failed; run the same command again to retry them", file=sys.stderr)
        status = 1
    return status


def main(spec: PipelineSpec, argv: Sequence[str] | None = None) -> int:
    args = build_parser(spec).parse_args(argv)
    args.annotate_only, args.calibrated = set(), {}
    try:
        return run(spec, args)
    except (UsageError, ShardInputError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except CalibrationError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
