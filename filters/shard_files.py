"""Shard numbering shared by steps and pipelines: task `rank` works on input file number `rank`."""


def shard_name(shard: int) -> str:
    """`00042`: how logs, stats, outputs and caches of shard 42 are named."""
    return f"{shard:05d}"
