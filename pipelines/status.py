"""`python -m pipelines.status OUTPUT`: where any output stands, local or remote (any fsspec path).

The shards a run selected come from `OUTPUT/manifest.json` (its files and the range of shards run into it; an
older output's `run.json`, which has no range, selects all its files). Each is done (datatrove's completion
marker), failed (an error file: its line and the path of its log are shown) or pending (neither: not run yet,
running, or killed). The counts so far are those of the done shards; their records are merged into
`summary.json`, so the runs of a detached Slurm submission end up there too.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from datatrove.io import DataFolder, get_datafolder

from filters.errors import command
from filters.shard_files import shard_name
from pipelines import summary as summaries
from pipelines.executors import printable, queued_slurm_jobs, read_slurm_jobs, shard_outcomes
from pipelines.manifest import MANIFEST_FILE, read_json
from pipelines.options import UsageError

OLD_RUN_FILE = "run.json"  # what outputs made before the manifest recorded: the files, not the shard range
EXIT_DONE, EXIT_FAILED, EXIT_USAGE, EXIT_PENDING = 0, 1, 2, 3
ERRORS_SHOWN = 20  # failed shards listed with their error line; more are counted

EPILOG = f"""exit status:
  {EXIT_DONE}  every selected shard is done
  {EXIT_FAILED}  some shards failed (run the pipeline's command again to retry them)
  {EXIT_USAGE}  OUTPUT is not an output of these pipelines, or cannot be read
  {EXIT_PENDING}  none failed, some are pending (not run yet, running, or killed: run the command again)"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.status", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Shards done, failed (with the error and its log) and pending of an output, and its counts so "
                    "far; merges finished shards into OUTPUT/summary.json.")
    parser.add_argument("output", metavar="OUTPUT", help="the pipeline's --output (local, s3://, hf://, file://...)")
    parser.add_argument("--logging-dir", default=None, help="the run's --logging-dir (default: OUTPUT/logs)")
    return parser


def selected_shards(output: DataFolder) -> tuple[str, range, bool]:
    """(pipeline name, the shards selected so far, whether summary.json is the document pipelines' to merge) from
    the manifest, or from an older output's run.json. A task is an input file, or (`tasks`: the mixture builder's
    output shards) a number; `"summary": "own"` (mixtures, The Cauldron) means its command writes its summary."""
    if not output.exists(""):
        raise UsageError(f"{output.path}: no such folder")
    for name in (MANIFEST_FILE, OLD_RUN_FILE):
        record = read_json(output, name)
        if record is None:
            continue
        files, tasks = record.get("files"), record.get("tasks")
        if not isinstance(files, list) and not isinstance(tasks, int):
            raise UsageError(f"{output.resolve_paths(name)}: has no list of input files")
        count = len(files) if isinstance(files, list) else tasks
        merges = record.get("summary", "documents") == "documents"
        return str(record.get("pipeline", "?")), _shard_range(record.get("shards"), count, output, name), merges
    raise UsageError(f"{output.path}: no {MANIFEST_FILE} or {OLD_RUN_FILE}: not an output of these pipelines, or "
                     f"its first run has not started")


def _shard_range(hull, n_files: int, output: DataFolder, name: str) -> range:
    """The manifest's `shards`, [A, B] inclusive like --shards A-B; all files where it has none."""
    if hull is None:
        return range(n_files)
    if (not isinstance(hull, list) or len(hull) != 2 or not all(isinstance(x, int) for x in hull)
            or not 0 <= hull[0] <= hull[1] < n_files):
        raise UsageError(f"{output.resolve_paths(name)}: shards {hull!r} is not [A, B] within its {n_files} files")
    return range(hull[0], hull[1] + 1)


def compact(shards: Sequence[int]) -> str:
    """`00002-00005, 00009`: shard numbers as ranges."""
    parts, start = [], None
    for i, shard in enumerate(shards):
        if start is None:
            start = shard
        if i + 1 == len(shards) or shards[i + 1] != shard + 1:
            parts.append(shard_name(start) if start == shard else f"{shard_name(start)}-{shard_name(shard)}")
            start = None
    return ", ".join(parts)


def _error_line(logging_dir: DataFolder, shard: int) -> str:
    try:
        with logging_dir.open(f"errors/{shard_name(shard)}.txt", "r", errors="replace") as f:
            return printable(f.readline().strip()) or "(empty error file)"
    except OSError as error:
        return f"(error file unreadable: {type(error).__name__})"


def merge_summary(output: DataFolder, logging_dir: DataFolder, done: list[int]) -> tuple[dict, int]:
    """summary.json with every done shard's record (only those it lacks are read); (summary, records added)."""
    summary = read_json(output, summaries.SUMMARY_FILE)
    known = set(summary["shards"]) if summary and isinstance(summary.get("shards"), dict) else set()
    new = [shard for shard in done if shard_name(shard) not in known]
    if not new:
        return summary or {"shards": {}}, 0
    records = summaries.read_shard_records(logging_dir, new)
    return summaries.update_summary(output, records, logging_dir), len(records)


def _report_calibration(logging_dir: DataFolder) -> None:
    """The scoring pass that sets calibrated cuts runs first, into its own folder (a detached run submits it, and
    the same command again submits the main run once it is done)."""
    if not logging_dir.isdir("calibration"):
        return
    calibration = get_datafolder(logging_dir.resolve_paths("calibration"))
    done, failed = shard_outcomes(calibration)
    print(f"  calibration pass: {len(done):,} shard(s) scored, {len(failed):,} failed"
          + (f" (errors in {calibration.resolve_paths('errors')})" if failed else ""))
    if queued := queued_slurm_jobs(read_slurm_jobs(calibration)):
        print(f"  Slurm job(s) {','.join(queued)} of the calibration pass still queued or running")


def report(output_path: str, logging_path: str | None) -> int:
    output = get_datafolder(output_path)
    logging_dir = get_datafolder(logging_path or os.path.join(output_path, "logs"))
    pipeline, shards, merges = selected_shards(output)
    done_all, failed_all = shard_outcomes(logging_dir)
    done = sorted(done_all & set(shards))
    failed = sorted(failed_all & set(shards))
    pending = sorted(set(shards) - set(done) - set(failed))

    print(f"{output_path}: {pipeline}, shards {shards.start}-{shards.stop - 1} ({len(shards)} selected)")
    print(f"  done     {len(done):>8,}")
    print(f"  failed   {len(failed):>8,}")
    for shard in failed[:ERRORS_SHOWN]:
        log = logging_dir.resolve_paths(f"logs/task_{shard_name(shard)}.log")
        print(f"    {shard_name(shard)}  {_error_line(logging_dir, shard)} (log: {log})")
    if len(failed) > ERRORS_SHOWN:
        print(f"    ... and {len(failed) - ERRORS_SHOWN} more (errors in {logging_dir.resolve_paths('errors')})")
    print(f"  pending  {len(pending):>8,}" + (f"  {compact(pending)}" if pending else ""))
    if queued := queued_slurm_jobs(read_slurm_jobs(logging_dir)):
        print(f"  Slurm job(s) {','.join(queued)} still queued or running")
    _report_calibration(logging_dir)

    if not merges:
        print(f"  counts: {output.resolve_paths(summaries.SUMMARY_FILE)}, written by the {pipeline} command when its "
              f"tasks are done")
        return EXIT_FAILED if failed else EXIT_PENDING if pending else EXIT_DONE
    summary, added = merge_summary(output, logging_dir, done)
    totals = summaries.total({n: r for n, r in summary["shards"].items() if int(n) in shards})
    print(summaries.format_report(f"counts so far ({len(done)} done shards)", totals))
    if added:
        print(f"{output.resolve_paths(summaries.SUMMARY_FILE)}: {added} shard record(s) merged")
    return EXIT_FAILED if failed else EXIT_PENDING if pending else EXIT_DONE


@command
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return report(args.output, args.logging_dir)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # `| head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_USAGE
    except OSError as error:  # network, credentials, permissions
        print(f"error: {args.output}: cannot read ({type(error).__name__}: {error})", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
