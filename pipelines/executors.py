"""datatrove's executors (local, Slurm, Ray), taught two things: run a range of shards, and let a shard fail alone.

Task `rank` is shard number `rank` of the whole input, so every run into one output shares one logging folder
and datatrove's completion markers say which shards are done, across runs and executors. A shard whose task
raises is recorded under `errors/NNNNN.txt` (one line) and stays incomplete; the other shards go on.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass

from datatrove.executor import LocalPipelineExecutor, SlurmPipelineExecutor
from datatrove.utils.logging import logger
from datatrove.utils.stats import PipelineStats

from pipelines.shards import shard_name


class ShardRangeMixin:
    """Restricts any datatrove executor to `self.shard_range` and isolates failing shards."""

    shard_range: range

    def get_incomplete_ranks(self, ranks=None, skip_completed=None) -> list[int]:
        ranks = [r for r in (self.shard_range if ranks is None else ranks) if r in self.shard_range]
        return super().get_incomplete_ranks(ranks, skip_completed)

    def _run_for_rank(self, rank: int, local_rank: int = 0, node_rank: int = -1) -> PipelineStats:
        error_file = f"errors/{shard_name(rank)}.txt"
        try:
            stats = super()._run_for_rank(rank, local_rank, node_rank)
        except Exception as error:  # noqa: BLE001 - one shard's failure must not take the others down
            with self.logging_dir.open(error_file, "w") as f:
                f.write(f"{type(error).__name__}: {error}".replace("\n", " ") + "\n")
            return PipelineStats()
        if self.logging_dir.exists(error_file):
            self.logging_dir.rm(error_file)
        return stats


class ShardLocalExecutor(ShardRangeMixin, LocalPipelineExecutor):
    pass


class ShardSlurmExecutor(ShardRangeMixin, SlurmPipelineExecutor):
    pass


def _ray_executor_class():
    from datatrove.executor.ray import RayPipelineExecutor

    class ShardRayExecutor(ShardRangeMixin, RayPipelineExecutor):
        pass

    return ShardRayExecutor


@dataclass
class ExecutorOptions:
    """The command line's executor flags (see `pipelines.cli`)."""

    executor: str = "local"
    workers: int = 1
    slurm_partition: str = "debug"
    slurm_time: str = "04:00:00"
    slurm_cpus_per_task: int = 1
    slurm_mem_per_cpu_gb: int = 2
    slurm_qos: str = ""
    slurm_venv: str | None = None
    slurm_job_name: str = "idefics2-recipe"
    ray_address: str | None = None


def default_venv_activate() -> str | None:
    """The running interpreter's venv activate script, which Slurm jobs source to find this project."""
    activate = os.path.join(sys.prefix, "bin", "activate")
    return activate if sys.prefix != sys.base_prefix and os.path.exists(activate) else None


def run_executor(pipeline: list, world_size: int, shards: range, logging_dir: str, options: ExecutorOptions) -> None:
    """Run `pipeline` for every incomplete shard in `shards`; returns when they have all finished or failed."""
    if options.executor == "local":
        executor = ShardLocalExecutor(pipeline, tasks=world_size, workers=options.workers, logging_dir=logging_dir,
                                      local_tasks=len(shards), local_rank_offset=shards.start)
        executor.shard_range = shards
        executor.run()
    elif options.executor == "slurm":
        venv = options.slurm_venv or default_venv_activate()
        if venv and os.path.isdir(venv):
            venv = os.path.join(venv, "bin", "activate")
        executor = ShardSlurmExecutor(
            pipeline, tasks=world_size, time=options.slurm_time, partition=options.slurm_partition,
            cpus_per_task=options.slurm_cpus_per_task, mem_per_cpu_gb=options.slurm_mem_per_cpu_gb,
            workers=options.workers, qos=options.slurm_qos, venv_path=venv, job_name=options.slurm_job_name,
            logging_dir=logging_dir, mail_type="NONE", requeue=False,
        )
        executor.shard_range = shards
        executor.run()
        if executor.job_id not in (None, -1):
            _wait_for_slurm_job(executor, shards)
    elif options.executor == "ray":
        import ray

        ray.init(address=options.ray_address, include_dashboard=False, log_to_driver=False,
                 ignore_reinit_error=True)
        try:
            executor = _ray_executor_class()(pipeline, tasks=world_size, workers=options.workers,
                                             logging_dir=logging_dir, cpus_per_task=1)
            executor.shard_range = shards
            executor.run()
        finally:
            ray.shutdown()
    else:
        raise ValueError(f"unknown executor {options.executor!r}")


def _wait_for_slurm_job(executor: ShardSlurmExecutor, shards: range, poll_s: float = 2.0) -> None:
    """Block until the submitted array job has left the queue, reporting progress from the completion markers."""
    job_id = str(executor.job_id)
    logger.info(f"Slurm job {job_id} submitted; waiting for it (Ctrl-C stops waiting, not the job)")
    last = None
    while True:
        queue = subprocess.run(["squeue", "-h", "-j", job_id], capture_output=True, text=True)
        done = len(shards) - len(executor.get_incomplete_ranks())
        if done != last:
            logger.info(f"Slurm job {job_id}: {done}/{len(shards)} shards done")
            last = done
        if queue.returncode != 0 or not queue.stdout.strip():
            return
        time.sleep(poll_s)
