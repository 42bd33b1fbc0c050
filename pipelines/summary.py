"""Per-shard accounting and `OUTPUT/summary.json`.

Each shard's record comes from the stats datatrove saves for its task: `input` is what the reader read, `kept`
what the writer wrote to `data/`, `removed` what reached `removed/`, by `step/reason`. The three are counted in
different places, so `input == kept + sum(removed)` is a real check: a step that loses a document breaks it.
"""

from __future__ import annotations

import json
import os
from collections import Counter

from datatrove.io import DataFolder

from filters.images import IMAGE_STATUS_PREFIX
from pipelines.manifest import read_json, write_json
from pipelines.shards import shard_name

SUMMARY_FILE = "summary.json"


def _step_stats(pipeline_stats: list[dict], step: str) -> dict[str, float]:
    """One step's counters from a datatrove stats file (a list of {"name": "TYPE: name", "stats": {...}})."""
    for stats in pipeline_stats:
        if stats["name"].rsplit(": ", 1)[-1] == step:
            return {key: value["total"] if isinstance(value, dict) else value
                    for key, value in stats["stats"].items()}
    return {}


def _images_removed(pipeline_stats: list[dict], writer: dict[str, float]) -> dict[str, int]:
    """Images each step took out of the data: those it removed from documents it kept (its `images_removed`
    stat) plus those of the documents it removed (counted by the writer's removal sink)."""
    removed: Counter[str] = Counter()
    for stats in pipeline_stats:
        step = stats["name"].rsplit(": ", 1)[-1]
        value = stats["stats"].get("images_removed")
        if value:
            removed[step] += int(value["total"] if isinstance(value, dict) else value)
    for key, n in writer.items():
        if key.startswith("removed_images/"):
            removed[key.removeprefix("removed_images/")] += int(n)
    return {step: n for step, n in sorted(removed.items()) if n}


def shard_record(pipeline_stats: list[dict]) -> dict:
    reader, writer = _step_stats(pipeline_stats, "reader"), _step_stats(pipeline_stats, "writer")
    removed = {key.removeprefix("removed/"): int(n) for key, n in writer.items() if key.startswith("removed/")}
    record = {"input": int(reader.get("documents", 0)), "kept": int(writer.get("kept", 0)),
              "removed": dict(sorted(removed.items()))}
    if images_removed := _images_removed(pipeline_stats, writer):
        record["images_removed"] = images_removed
    images = _step_stats(pipeline_stats, "images")
    if images:  # every image the step looked at, by how it ended ("ok", "timeout", ...)
        record["images"] = {k.removeprefix(IMAGE_STATUS_PREFIX): int(n) for k, n in sorted(images.items())
                            if k.startswith(IMAGE_STATUS_PREFIX)}
    return record


def finished_shards(logging_dir: DataFolder) -> list[int]:
    """Every shard with a completion marker in `logging_dir`."""
    if not logging_dir.isdir("completions"):
        return []
    return sorted(int(os.path.basename(p)) for p in logging_dir.list_files("completions")
                  if os.path.basename(p).isdigit())


def read_shard_records(logging_dir: DataFolder, shards: list[int]) -> dict[str, dict]:
    """The records of the given shards that have finished (those with a completion marker)."""
    records = {}
    for shard in shards:
        name = shard_name(shard)
        if logging_dir.isfile(f"completions/{name}") and logging_dir.isfile(f"stats/{name}.json"):
            with logging_dir.open(f"stats/{name}.json") as f:
                records[name] = shard_record(json.load(f))
    return records


def total(records: dict[str, dict]) -> dict:
    removed: Counter[str] = Counter()
    images: Counter[str] = Counter()
    images_removed: Counter[str] = Counter()
    for record in records.values():
        removed.update(record["removed"])
        images.update(record.get("images", {}))
        images_removed.update(record.get("images_removed", {}))
    result = {"input": sum(r["input"] for r in records.values()), "kept": sum(r["kept"] for r in records.values()),
              "removed": dict(sorted(removed.items()))}
    if images:
        result["images"] = dict(sorted(images.items()))
    if images_removed:
        result["images_removed"] = dict(sorted(images_removed.items()))
    return result


def unbalanced(record: dict) -> bool:
    return record["input"] != record["kept"] + sum(record["removed"].values())


def update_summary(output: DataFolder, records: dict[str, dict], logging_dir: DataFolder) -> dict:
    """Merge `records` into the output's summary.json (every run into one output adds to it) and return it. A torn
    summary is rebuilt from the records of every finished shard in `logging_dir`."""
    previous = read_json(output, SUMMARY_FILE)
    if previous is None or not isinstance(previous.get("shards"), dict):
        previous = {"shards": read_shard_records(logging_dir, finished_shards(logging_dir))}
    shards = {**previous["shards"], **records}
    summary = {"total": total(shards), "shards": dict(sorted(shards.items()))}
    write_json(output, SUMMARY_FILE, summary)
    return summary


def format_report(title: str, totals: dict, seconds: float | None = None) -> str:
    """A human-readable block: kept, removed by reason, time and throughput."""
    n = totals["input"]
    pct = (lambda k: f"{100 * k / n:5.1f}%") if n else (lambda k: "    -")
    lines = [title, f"  input    {n:>10,}", f"  kept     {totals['kept']:>10,}  {pct(totals['kept'])}"]
    removed = sum(totals["removed"].values())
    lines.append(f"  removed  {removed:>10,}  {pct(removed)}")
    width = max((len(k) for k in totals["removed"]), default=0)
    lines += [f"    {reason:<{width}}  {count:>8,}  {pct(count)}" for reason, count in totals["removed"].items()]
    if totals.get("images_removed"):
        lines.append("  images removed by step: " +
                     ", ".join(f"{step} {count:,}" for step, count in totals["images_removed"].items()))
    if totals.get("images"):
        n_images = sum(totals["images"].values())
        lines.append(f"  images   {n_images:>10,}  by status: " +
                     ", ".join(f"{status} {count:,}" for status, count in totals["images"].items()))
    if seconds is not None:
        rate = f", {n / seconds:,.1f} docs/s" if seconds > 0 and n else ""
        lines.append(f"  time     {seconds:>10.1f} s{rate}")
    return "\n".join(lines)
