"""datatrove's executors (local, Slurm, Ray) as clusters run them: a range of shards, failures that stay alone but
show, task environments sized to the task, and a console that shows one progress line instead of every log.

Task `rank` is shard number `rank` of the whole input, so every run into one output shares one logging folder
and datatrove's completion markers say which shards are done, across runs and executors. A shard whose task
raises is recorded under `errors/NNNNN.txt` (one line) and stays incomplete; the other shards go on. On Slurm the
array task that ran it then exits non-zero, so `squeue`, `sacct` and the cluster's dashboards see the failure.

Each task gets `IDEFICS2_TASK_CPUS` (the cores it may use: model steps size their thread pools with it). Local
tasks publish how many documents they have read in a small file that the command turns into one progress line;
datatrove's INFO logs stay in `logs/task_NNNNN.log` and reach the console only with `--verbose`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import datatrove.executor.base as datatrove_executor_base
from datatrove.executor import LocalPipelineExecutor, SlurmPipelineExecutor
from datatrove.io import DataFolder, get_datafolder
from datatrove.utils.logging import logger, setup_default_logger
from datatrove.utils.stats import PipelineStats

from filters.shard_files import shard_name, write_atomically
from pipelines.options import UsageError, at_least

TASK_CPUS_ENV = "IDEFICS2_TASK_CPUS"  # read by the model steps to size torch's thread pool
SLURM_JOBS_FILE = "slurm_jobs.json"  # in the logging folder: the last submission's job ids
# Slurm's own default (slurm.conf(5), MaxArraySize: array indices run 0 to MaxArraySize - 1); also datatrove's
SLURM_DEFAULT_MAX_ARRAY_SIZE = 1001
PROGRESS_TTY_SECONDS = 1.0  # refresh of the in-place progress line on a terminal
PROGRESS_LOG_SECONDS = 30.0  # one progress line this often when stderr is a file or a pipe
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for a command stopped by Ctrl-C


class CommandExit(SystemExit):
    """Ends the command with `code` once `message` is on stderr: a detached submission (0), a refused one (2),
    Ctrl-C (130). A SystemExit, so no caller turns it into a traceback."""

    def __init__(self, code: int, message: str):
        super().__init__(code)
        self.message = message
        sys.stderr.write(message + "\n")
        sys.stderr.flush()


# ---------------------------------------------------------------------------------------------------------------
# Options: the command line's executor flags, in one place with their defaults


_positive_int = at_least(int, 1)


def _non_negative(kind: type) -> Callable[[str], float]:
    return at_least(kind, 0)


class _StoreExplicit(argparse.Action):
    """Stores the value and notes that the user gave it: `--workers` throttles Slurm and Ray only when asked."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        setattr(namespace, f"{self.dest}_given", True)


def default_local_workers() -> int:
    return min(usable_cpus(), 4)


@dataclass
class ExecutorOptions:
    """How and where the tasks run. `workers=None` means: local, `default_local_workers()`; Slurm and Ray, no
    limit (the scheduler decides, as datatrove's `workers=-1`)."""

    executor: str = "local"
    workers: int | None = None
    verbose: bool = False
    detach: bool = False
    slurm_partition: str | None = None  # None: the cluster's default partition
    slurm_time: str = "04:00:00"
    slurm_cpus_per_task: int = 1  # datatrove's default
    slurm_mem_per_cpu_gb: int = 2  # datatrove's default
    slurm_gpus_per_task: int = 0
    slurm_qos: str = ""
    slurm_venv: str | None = None
    slurm_job_name: str = "idefics2-recipe"
    slurm_max_array_size: int | None = None  # None: the cluster's MaxArraySize (`scontrol show config`)
    ray_address: str | None = None
    ray_cpus_per_task: int = 1  # datatrove's default
    ray_gpus_per_task: float = 0
    status_command: str = "python -m pipelines.status OUTPUT"  # how to follow a detached or interrupted run

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser, job_name: str = "idefics2-recipe") -> None:
        run = parser.add_argument_group("execution")
        run.add_argument("--executor", choices=("local", "slurm", "ray"), default="local")
        run.add_argument("--workers", type=_positive_int, default=None, action=_StoreExplicit, metavar="N",
                         help="tasks running at once (default: local, min(cores, 4); slurm and ray, no limit)")
        run.add_argument("--verbose", action="store_true",
                         help="show datatrove's logs and model-loading progress bars on the console (they are "
                              "always in OUTPUT/logs/logs/)")
        run.add_argument("--detach", action="store_true",
                         help="slurm: submit, print the job ids and exit without waiting; follow with "
                              "`python -m pipelines.status OUTPUT`, resume by running the same command again")
        slurm = parser.add_argument_group("slurm")
        slurm.add_argument("--slurm-partition", default=None, metavar="NAME",
                           help="(default: the cluster's default partition)")
        slurm.add_argument("--slurm-time", default=ExecutorOptions.slurm_time, metavar="HH:MM:SS",
                           help="time limit per task (default: %(default)s)")
        slurm.add_argument("--slurm-cpus-per-task", type=_positive_int, metavar="N",
                           default=ExecutorOptions.slurm_cpus_per_task,
                           help="cores per task, also the model steps' threads (default: %(default)s)")
        slurm.add_argument("--slurm-mem-per-cpu-gb", type=_positive_int, metavar="GB",
                           default=ExecutorOptions.slurm_mem_per_cpu_gb, help="(default: %(default)s)")
        slurm.add_argument("--slurm-gpus-per-task", type=_non_negative(int), default=0, metavar="N",
                           help="GPUs per task, for the model steps (default: %(default)s)")
        slurm.add_argument("--slurm-qos", default="", metavar="NAME",
                           help="quality of service (default: the cluster's)")
        slurm.add_argument("--slurm-venv", default=None, metavar="PATH",
                           help="venv (folder or bin/activate) the jobs activate (default: the one running this)")
        slurm.add_argument("--slurm-job-name", default=job_name, metavar="NAME", help="(default: %(default)s)")
        slurm.add_argument("--slurm-max-array-size", type=_positive_int, default=None, metavar="N",
                           help="array tasks per job; more shards are split into several jobs "
                                "(default: the cluster's MaxArraySize)")
        ray = parser.add_argument_group("ray")
        ray.add_argument("--ray-address", default=None, metavar="ADDRESS",
                         help="cluster to join, e.g. auto (default: start a local one)")
        ray.add_argument("--ray-cpus-per-task", type=_positive_int, default=ExecutorOptions.ray_cpus_per_task,
                         metavar="N",
                         help="cores per task, also the model steps' threads (default: %(default)s)")
        ray.add_argument("--ray-gpus-per-task", type=_non_negative(float), default=0, metavar="N",
                         help="GPUs per task, for the model steps (default: %(default)s)")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ExecutorOptions:
        """The options of parsed flags; a UsageError names the flag that does not fit."""
        if args.detach and args.executor != "slurm":
            raise UsageError(f"--detach: only with --executor slurm (a {args.executor} run ends with the command)")
        explicit = getattr(args, "workers_given", False)
        status = f"python -m pipelines.status {args.output}" if getattr(args, "output", None) else \
            cls.status_command
        if getattr(args, "logging_dir", None):
            status += f" --logging-dir {args.logging_dir}"
        return cls(
            executor=args.executor, workers=args.workers if explicit else None, verbose=args.verbose,
            detach=args.detach, slurm_partition=args.slurm_partition, slurm_time=args.slurm_time,
            slurm_cpus_per_task=args.slurm_cpus_per_task, slurm_mem_per_cpu_gb=args.slurm_mem_per_cpu_gb,
            slurm_gpus_per_task=args.slurm_gpus_per_task, slurm_qos=args.slurm_qos, slurm_venv=args.slurm_venv,
            slurm_job_name=args.slurm_job_name, slurm_max_array_size=args.slurm_max_array_size,
            ray_address=args.ray_address, ray_cpus_per_task=args.ray_cpus_per_task,
            ray_gpus_per_task=args.ray_gpus_per_task, status_command=status,
        )


def usable_cpus() -> int:
    """The cores this process may run on (a container's or a Slurm allocation's, not the machine's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# ---------------------------------------------------------------------------------------------------------------
# The task side: what runs around each shard, wherever the executor runs it


@dataclass
class TaskSettings:
    """What every task of a run needs besides the pipeline (pickled with the executor into local workers, Slurm
    jobs and Ray actors)."""

    shard_range: range
    task_cpus: int = 1
    progress_bars: bool = False  # model-loading bars (--verbose)
    quiet_console: bool = False  # local runs: the task's console is the user's terminal
    progress_dir: str | None = None  # local runs: where tasks publish their document counts
    main_pid: int | None = None  # local runs: the command's process; its worker processes leave Ctrl-C to it


class ShardRangeMixin:
    """Restricts any datatrove executor to the run's shards and isolates failing shards."""

    settings: TaskSettings

    @property
    def shard_range(self) -> range:
        return self.settings.shard_range

    def get_incomplete_ranks(self, ranks=None, skip_completed=None) -> list[int]:
        ranks = [r for r in (self.shard_range if ranks is None else ranks) if r in self.shard_range]
        return super().get_incomplete_ranks(ranks, skip_completed)

    def _run_for_rank(self, rank: int, local_rank: int = 0, node_rank: int = -1) -> PipelineStats:
        error_file = f"errors/{shard_name(rank)}.txt"
        _prepare_task_environment(self.settings)
        progress = _ProgressFile(self.settings.progress_dir, rank, self.pipeline)
        try:
            with _task_console(self.settings.quiet_console):
                stats = super()._run_for_rank(rank, local_rank, node_rank)
        except BaseException as error:  # noqa: BLE001 - one shard's failure must not take the others down
            progress.finish("failed")
            if not isinstance(error, Exception):  # Ctrl-C, SystemExit: the run stops, not just this shard
                raise
            with self.logging_dir.open(error_file, "w") as f:
                f.write(printable(f"{type(error).__name__}: {error}".replace("\n", " ")) + "\n")
            self.failed_ranks = [*getattr(self, "failed_ranks", []), rank]
            return PipelineStats()
        progress.finish("done")
        if self.logging_dir.exists(error_file):
            self.logging_dir.rm(error_file)
        return stats


def printable(text: str) -> str:
    """`text` with control characters escaped: error messages quote input files, which may be hostile."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}"
                   for c in text)


def _prepare_task_environment(settings: TaskSettings) -> None:
    """The task's cores for the model steps; no model-loading progress bars and no Ctrl-C tracebacks from local
    worker processes (the command reports the interruption once) unless the run is verbose."""
    os.environ[TASK_CPUS_ENV] = str(settings.task_cpus)
    if settings.main_pid is not None and os.getpid() != settings.main_pid:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the command stops the pool and says so in one line
    if not settings.progress_bars:
        _disable_progress_bars()


def _disable_progress_bars() -> None:
    """huggingface_hub's bars (downloads), and transformers' (loading weights) when it is already imported:
    when it is imported later, it reads hub's setting (transformers.utils.logging, `_tqdm_active`)."""
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()
    if "transformers" in sys.modules:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()


# ---------------------------------------------------------------------------------------------------------------
# Console: datatrove's INFO logs go to the log files only


CONSOLE_FORMAT = "{level}: {message}"


def _add_console_handler() -> None:
    """Warnings and errors, without tracebacks: a failed shard's traceback is in its log file and the command
    prints its error line and that file's path."""
    logger.add(sys.stderr, level="WARNING", format=CONSOLE_FORMAT, filter=lambda record: record["exception"] is None)


def _quiet_task_logger(logging_dir: DataFolder, rank: int, local_rank: int = 0, node_rank: int = -1):
    """Stands in for datatrove's `add_task_logger` (same log file, every level) with a console for warnings only:
    datatrove's prints INFO from the first worker and has no option for a level."""
    logger.remove()
    logfile = logging_dir.open(f"logs/task_{shard_name(rank)}.log", "w")
    logger.add(logfile, level="DEBUG", colorize=False,
               format="{time:YYYY-MM-DD HH:mm:ss.SSS} | {level: <8} | {name}:{function}:{line} - {message}")
    _add_console_handler()
    logger.info(f"Launching pipeline for {rank=}")
    return logfile


@contextmanager
def _task_console(quiet: bool) -> Iterator[None]:
    if not quiet:
        yield
        return
    original = datatrove_executor_base.add_task_logger
    datatrove_executor_base.add_task_logger = _quiet_task_logger
    try:
        yield
    finally:
        datatrove_executor_base.add_task_logger = original
        quiet_console()  # datatrove puts its DEBUG console back after each task


def quiet_console() -> None:
    """The command's own process: datatrove's console handler replaced by one for warnings and errors."""
    logger.remove()
    _add_console_handler()


@contextmanager
def _console(verbose: bool) -> Iterator[None]:
    if verbose:
        yield
        return
    quiet_console()
    try:
        yield
    finally:
        setup_default_logger()


# ---------------------------------------------------------------------------------------------------------------
# Progress: local tasks publish their counts; the command shows one line across the selected shards


class _ProgressFile:
    """A local task's `<progress_dir>/<shard>`: "<documents read> <running|done|failed>", rewritten by a thread
    every second from the first step's `documents` counter, so the task itself does no extra work."""

    def __init__(self, folder: str | None, rank: int, pipeline: list):
        self.path = os.path.join(folder, shard_name(rank)) if folder else None
        self.reader = pipeline[0] if pipeline else None
        self.stop = threading.Event()
        self.thread = None
        if self.path:
            self.thread = threading.Thread(target=self._loop, daemon=True)
            self.thread.start()

    def _documents(self) -> int:
        stats = getattr(getattr(self.reader, "stats", None), "stats", None)
        metric = stats.get("documents") if stats is not None else None
        return int(metric.total) if metric is not None else 0

    def _write(self, state: str) -> None:
        tmp = f"{self.path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write(f"{self._documents()} {state}")
        os.replace(tmp, self.path)

    def _loop(self) -> None:
        while not self.stop.wait(PROGRESS_TTY_SECONDS):
            try:
                self._write("running")
            except OSError:  # the command has gone (and removed the folder): nobody is reading
                return

    def finish(self, state: str) -> None:
        if self.thread:
            self.stop.set()
            self.thread.join()
            try:
                self._write(state)
            except OSError:
                pass


def read_progress_dir(folder: str) -> dict[int, tuple[int, str]]:
    """shard -> (documents read, state) from the files local tasks keep in `folder`."""
    states = {}
    for name in os.listdir(folder):
        if name.isdigit():
            try:
                with open(os.path.join(folder, name)) as f:
                    documents, state = f.read().split()
                states[int(name)] = (int(documents), state)
            except (OSError, ValueError):  # replaced while being read: the next poll sees it
                continue
    return states


def shard_outcomes(logging_dir: DataFolder) -> tuple[set[int], set[int]]:
    """(done, failed) shard numbers from the completion markers and error files (one listing each)."""
    def numbers(folder: str, suffix: str = "") -> set[int]:
        if not logging_dir.isdir(folder):
            return set()
        names = (os.path.basename(p) for p in logging_dir.list_files(folder))
        return {int(n.removesuffix(suffix)) for n in names if n.removesuffix(suffix).isdigit() and n.endswith(suffix)}

    done = numbers("completions")
    return done, numbers("errors", ".txt") - done


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class ProgressLine:
    """One line across the selected shards: shards done, documents per second, ETA. On a terminal it is
    rewritten in place every second; elsewhere (a log file, CI) it is printed every 30 s."""

    def __init__(self, selected: int, done_before: int, stream=None, in_place: bool | None = None,
                 interval: float | None = None):
        self.stream = stream or sys.stderr
        self.in_place = self.stream.isatty() if in_place is None else in_place
        self.interval = interval or (PROGRESS_TTY_SECONDS if self.in_place else PROGRESS_LOG_SECONDS)
        self.selected, self.done_before = selected, done_before
        self.start = self.last = time.monotonic()
        self.shown = False

    def render(self, states: dict[int, tuple[int, str]], now: float | None = None) -> str:
        """`states`: this run's shards, shard -> (documents read, running|done|failed)."""
        elapsed = max((now or time.monotonic()) - self.start, 1e-9)
        done = [d for d, s in states.values() if s == "done"]
        failed = sum(s == "failed" for _, s in states.values())
        documents = sum(d for d, _ in states.values())
        line = f"progress: {self.done_before + len(done)}/{self.selected} shards done"
        line += f", {failed} failed" if failed else ""
        line += f" | {documents:,} docs, {documents / elapsed:,.1f} docs/s"
        eta = self._eta(states, done, failed, elapsed)
        return line + (f" | ETA {_duration(eta)}" if eta is not None else "")

    def _eta(self, states, done: list[int], failed: int, elapsed: float) -> float | None:
        """From the share of this run's work finished: whole shards, plus running ones by their documents read
        against a finished shard's average."""
        todo = self.selected - self.done_before
        finished = len(done) + failed
        if todo <= 0 or not done:
            return None
        average = sum(done) / len(done)
        running = sum(min(d / average, 0.95) for d, s in states.values() if s == "running") if average else 0
        fraction = (finished + running) / todo
        return elapsed * (1 - fraction) / fraction if fraction < 1 else None

    def update(self, states: dict[int, tuple[int, str]], force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < self.interval:
            return
        self.last = now
        text = self.render(states, now)
        self.stream.write(f"\r{text}\x1b[K" if self.in_place else text + "\n")
        self.stream.flush()
        self.shown = True

    def close(self, states: dict[int, tuple[int, str]]) -> None:
        """A terminal keeps the final state on its line; a log got its lines already."""
        if self.in_place:
            self.update(states, force=True)
            self.stream.write("\n")
            self.stream.flush()


class _LocalProgress:
    """Polls the local tasks' progress files in a thread of the command's process."""

    def __init__(self, line: ProgressLine, folder: str):
        self.line, self.folder = line, folder
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def _loop(self) -> None:
        while not self.stop.wait(min(self.line.interval, PROGRESS_TTY_SECONDS)):
            self.line.update(read_progress_dir(self.folder))

    def __exit__(self, exc_type, *exc) -> None:
        self.stop.set()
        self.thread.join()
        if exc_type is None:
            self.line.close(read_progress_dir(self.folder))
        elif self.line.shown and self.line.in_place:
            self.line.stream.write("\n")


# ---------------------------------------------------------------------------------------------------------------
# Executors


class _OneWorkerProcess(int):
    """The worker count 1, which datatrove's `workers == 1` test does not take for "run in this process"."""

    def __eq__(self, other) -> bool:
        return False

    __hash__ = int.__hash__


class ShardLocalExecutor(ShardRangeMixin, LocalPipelineExecutor):
    """datatrove's local executor, except that a single worker runs in a child process too: in the command's own
    process a step's cleanup (a thread pool waiting out an API's retries and back-offs) holds Ctrl-C for minutes,
    while a pool's worker is stopped at once."""

    def run(self):
        if self.workers != 1:
            return super().run()
        self.workers = _OneWorkerProcess(1)
        try:
            return super().run()
        finally:
            self.workers = 1


class ShardSlurmExecutor(ShardRangeMixin, SlurmPipelineExecutor):
    """Slurm arrays, one shard per array task: a task whose shard failed exits non-zero; arrays larger than the
    cluster allows are split into jobs submitted at once; every job id is kept (`job_ids`)."""

    @property
    def job_id(self):
        return self.__dict__.get("_job_id")

    @job_id.setter
    def job_id(self, value) -> None:  # datatrove sets it once per sbatch: keep them all
        self.__dict__["_job_id"] = value
        if value not in (None, -1):
            self.__dict__.setdefault("job_ids", []).append(str(value))

    def run(self):
        if "SLURM_ARRAY_TASK_ID" not in os.environ:
            return super().run()  # the submitting side
        super().run()
        if failed := getattr(self, "failed_ranks", []):
            raise SystemExit(f"shard(s) {', '.join(map(shard_name, failed))} failed: see "
                             f"{self.logging_dir.resolve_paths('errors')} and the task logs")

    def launch_merge_stats(self):
        """Not submitted: it waits on the last array only (`afterok`), never runs when a shard failed and, on
        clusters without `kill_invalid_depend`, stays pending forever. The command and `pipelines.status` merge
        the per-shard stats into summary.json instead."""

    def get_sbatch_args(self, max_array: int = 1) -> dict:
        args = super().get_sbatch_args(max_array)
        return {key: value for key, value in args.items() if value is not None}  # no partition: the default one


def _ray_executor_class():
    from datatrove.executor.ray import RayPipelineExecutor

    class ShardRayExecutor(ShardRangeMixin, RayPipelineExecutor):
        pass

    return ShardRayExecutor


def default_venv_activate() -> str | None:
    """The running interpreter's venv activate script, which Slurm jobs source to find this project."""
    activate = os.path.join(sys.prefix, "bin", "activate")
    return activate if sys.prefix != sys.base_prefix and os.path.exists(activate) else None


def run_executor(pipeline: list, world_size: int, shards: range, logging_dir: str, options: ExecutorOptions) -> None:
    """Run `pipeline` for every incomplete shard in `shards`; returns when they have all finished or failed.
    Ctrl-C ends the command with one line and status 130; a detached Slurm submission ends it with status 0."""
    folder = get_datafolder(logging_dir)
    _forget_old_failures(folder, shards)
    with _console(options.verbose):
        try:
            if options.executor == "local":
                _run_local(pipeline, world_size, shards, folder, options)
            elif options.executor == "slurm":
                _run_slurm(pipeline, world_size, shards, folder, options)
            elif options.executor == "ray":
                _run_ray(pipeline, world_size, shards, folder, options)
            else:
                raise ValueError(f"unknown executor {options.executor!r}")
        except KeyboardInterrupt:
            done, _ = shard_outcomes(folder)
            raise CommandExit(EXIT_INTERRUPTED, f"interrupted: {len(done & set(shards))} of {len(shards)} shards "
                                                f"done; run the same command to resume") from None


def _forget_old_failures(folder: DataFolder, shards: range) -> None:
    """The error files of shards about to be retried: until they fail again, they are pending, not failed."""
    _, failed = shard_outcomes(folder)
    for shard in failed & set(shards):
        folder.rm(f"errors/{shard_name(shard)}.txt")


def _run_local(pipeline: list, world_size: int, shards: range, folder: DataFolder, options: ExecutorOptions) -> None:
    workers = options.workers or default_local_workers()
    progress_dir = tempfile.mkdtemp(prefix="idefics2-progress-")
    try:
        executor = ShardLocalExecutor(pipeline, tasks=world_size, workers=workers, logging_dir=folder,
                                      local_tasks=len(shards), local_rank_offset=shards.start)
        executor.settings = TaskSettings(shards, progress_bars=options.verbose, quiet_console=not options.verbose,
                                         progress_dir=progress_dir, main_pid=os.getpid())
        todo = len(executor.get_incomplete_ranks())
        executor.settings.task_cpus = max(1, usable_cpus() // max(1, min(workers, todo)))
        line = ProgressLine(len(shards), len(shards) - todo, in_place=None if not options.verbose else False)
        with _LocalProgress(line, progress_dir):
            executor.run()
    finally:
        shutil.rmtree(progress_dir, ignore_errors=True)


def _run_ray(pipeline: list, world_size: int, shards: range, folder: DataFolder, options: ExecutorOptions) -> None:
    import ray

    ray.init(address=options.ray_address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    try:
        executor = _ray_executor_class()(pipeline, tasks=world_size, workers=options.workers or -1,
                                         logging_dir=folder, cpus_per_task=options.ray_cpus_per_task,
                                         gpus_per_task=options.ray_gpus_per_task)
        executor.settings = TaskSettings(shards, task_cpus=options.ray_cpus_per_task, progress_bars=options.verbose)
        executor.run()
    finally:
        ray.shutdown()


# ---------------------------------------------------------------------------------------------------------------
# Slurm: submit (refusing to run shards twice), then wait with a progress line, or detach


def _run_slurm(pipeline: list, world_size: int, shards: range, folder: DataFolder, options: ExecutorOptions) -> None:
    _refuse_if_still_queued(folder, options)
    executor = _slurm_executor(pipeline, world_size, shards, folder, options)
    incomplete = executor.get_incomplete_ranks()
    todo = len(incomplete)
    try:
        executor.run()
    except FileNotFoundError:
        raise CommandExit(2, "error: --executor slurm: sbatch not found; run this where Slurm's commands are "
                             "installed (a login node)") from None
    except subprocess.CalledProcessError as error:
        raise CommandExit(2, f"error: --executor slurm: sbatch refused the job (exit {error.returncode}, its "
                             f"message is above); check the --slurm-* flags") from None
    job_ids = getattr(executor, "job_ids", [])
    if not job_ids:
        return
    with write_atomically(folder, SLURM_JOBS_FILE, "w") as f:
        json.dump({"job_ids": job_ids, "shards": [shards.start, shards.stop - 1]}, f)
    jobs = ",".join(job_ids)
    sys.stderr.write(f"submitted Slurm job{'s' * (len(job_ids) > 1)} {jobs}: {todo} shard(s) of "
                     f"{shards.start}-{shards.stop - 1}, logs in {folder.resolve_paths('logs')}\n")
    if options.detach:
        raise CommandExit(0, f"follow: {options.status_command}\n"
                             f"resume or retry failed shards: run the same command again once the jobs are done "
                             f"(finished shards are skipped)")
    try:
        _wait_for_slurm_jobs(job_ids, folder, shards, incomplete)
    except KeyboardInterrupt:
        done, _ = shard_outcomes(folder)
        raise CommandExit(EXIT_INTERRUPTED, f"interrupted: stopped waiting with {len(done & set(shards))} of "
                                            f"{len(shards)} shards done; Slurm job(s) {jobs} keep running: "
                                            f"follow with {options.status_command}") from None


def _slurm_executor(pipeline, world_size: int, shards: range, folder: DataFolder,
                    options: ExecutorOptions) -> ShardSlurmExecutor:
    venv = options.slurm_venv or default_venv_activate()
    if venv and os.path.isdir(venv):
        venv = os.path.join(venv, "bin", "activate")
    executor = ShardSlurmExecutor(
        pipeline, tasks=world_size, time=options.slurm_time, partition=options.slurm_partition,
        cpus_per_task=options.slurm_cpus_per_task, mem_per_cpu_gb=options.slurm_mem_per_cpu_gb,
        gpus_per_task=options.slurm_gpus_per_task, workers=options.workers or -1, qos=options.slurm_qos,
        venv_path=venv, job_name=options.slurm_job_name, logging_dir=folder, mail_type="NONE", requeue=False,
        max_array_size=options.slurm_max_array_size or cluster_max_array_size(),
        max_array_launch_parallel=True,  # split arrays run side by side, not one after the other
    )
    executor.settings = TaskSettings(shards, task_cpus=options.slurm_cpus_per_task, progress_bars=options.verbose)
    return executor


def cluster_max_array_size() -> int:
    """The cluster's MaxArraySize from `scontrol show config` (Slurm's default when it cannot be read)."""
    try:
        config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return SLURM_DEFAULT_MAX_ARRAY_SIZE
    return parse_max_array_size(config)


def parse_max_array_size(config: str) -> int:
    for line in config.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "MaxArraySize" and value.strip().isdigit():
            return int(value.strip())
    return SLURM_DEFAULT_MAX_ARRAY_SIZE


def queued_slurm_jobs(job_ids: list[str]) -> list[str]:
    """Those of `job_ids` still in the queue (pending or running); [] when squeue cannot tell."""
    try:
        queue = subprocess.run(["squeue", "-h", "-o", "%F"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return []
    listed = set(queue.stdout.split()) if queue.returncode == 0 else set()
    return [job for job in job_ids if job in listed]


def read_slurm_jobs(folder: DataFolder) -> list[str]:
    if not folder.isfile(SLURM_JOBS_FILE):
        return []
    with folder.open(SLURM_JOBS_FILE) as f:
        return [str(job) for job in json.load(f).get("job_ids", [])]


def _refuse_if_still_queued(folder: DataFolder, options: ExecutorOptions) -> None:
    """Submitting again while the last jobs run would run their shards twice, into the same files."""
    if queued := queued_slurm_jobs(read_slurm_jobs(folder)):
        raise CommandExit(2, f"error: Slurm job(s) {','.join(queued)} for this output are still queued or running; "
                             f"follow them with {options.status_command}, or `scancel {' '.join(queued)}` first")


def _wait_for_slurm_jobs(job_ids: list[str], folder: DataFolder, shards: range, submitted: list[int],
                         poll_s: float = 2.0) -> None:
    """Block until the jobs have left the queue, with the progress line (from completion markers and stats)."""
    line = ProgressLine(len(shards), len(shards) - len(submitted))
    documents: dict[int, int] = {}
    while queued_slurm_jobs(job_ids):
        time.sleep(poll_s)
        line.update(_slurm_states(folder, set(submitted), documents))
    line.close(_slurm_states(folder, set(submitted), documents))


def _slurm_states(folder: DataFolder, submitted: set[int], documents: dict[int, int]) -> dict[int, tuple[int, str]]:
    """The submitted shards that have finished, as progress states; documents from each done shard's stats, read
    once."""
    done, failed = shard_outcomes(folder)
    states = {}
    for shard in (done | failed) & submitted:
        if shard in done and shard not in documents:
            documents[shard] = _documents_read(folder, shard)
        states[shard] = (documents.get(shard, 0), "done" if shard in done else "failed")
    return states


def _documents_read(folder: DataFolder, shard: int) -> int:
    try:
        with folder.open(f"stats/{shard_name(shard)}.json") as f:
            first_step = json.load(f)[0]["stats"]
        documents = first_step.get("documents", 0)
        return int(documents["total"] if isinstance(documents, dict) else documents)
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return 0


def report_failed(logging_dir: DataFolder, ranks: list[int], unit: str = "shard",
                  name: Callable[[int], str] = shard_name) -> int:
    """One `error:` line per task that did not finish (its error file's text and its log), then how to retry;
    returns how many."""
    for rank in ranks:
        error_file, reason = f"errors/{shard_name(rank)}.txt", "did not finish"
        if logging_dir.isfile(error_file):
            with logging_dir.open(error_file, "r") as f:
                reason = f.read().strip()
        log = logging_dir.resolve_paths(f"logs/task_{shard_name(rank)}.log")
        print(f"error: {unit} {name(rank)} failed: {reason} (log: {log})", file=sys.stderr)
    if ranks:
        print(f"{len(ranks)} {unit}(s) failed; run the same command again to retry them", file=sys.stderr)
    return len(ranks)
