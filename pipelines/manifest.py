"""`OUTPUT/manifest.json`: one output folder holds one configuration, recorded before any work.

It names the pipeline, the input (its normalised path and its numbered files), the steps, the document limit
and every option of the selected steps that changes the output (derived from their option dataclasses, see
`pipelines.options`), plus the hull of the shard ranges run so far. A resume with any difference is refused with
one line naming the option and both values. Written atomically; a torn file left by an older writer is reported
and replaced, never a reason for every later run to fail.
"""

from __future__ import annotations

import json
import logging

from datatrove.io import DataFolder

from filters.shard_files import write_atomically
from pipelines.options import UsageError

MANIFEST_FILE = "manifest.json"
logger = logging.getLogger(__name__)


def read_json(folder: DataFolder, name: str) -> dict | None:
    """The JSON object in `name`, or None if there is none or it is torn (reported as a warning)."""
    if not folder.isfile(name):
        return None
    try:
        with folder.open(name) as f:
            value = json.load(f)
        if isinstance(value, dict):
            return value
    except (ValueError, UnicodeDecodeError):
        pass
    logger.warning(f"{folder.resolve_paths(name)} is torn or not JSON (an interrupted write?); it is rebuilt")
    return None


def write_json(folder: DataFolder, name: str, value: dict) -> None:
    with write_atomically(folder, name, "w") as f:
        json.dump(value, f, indent=1)


def _show(value) -> str:
    return "(not set)" if value is None else json.dumps(value) if not isinstance(value, str) else value


def check_and_write(output: DataFolder, manifest: dict, shards: range) -> None:
    """Refuse a run whose settings differ from the output's; otherwise record this run's (shard hull widened)."""
    previous = read_json(output, MANIFEST_FILE)
    hull = [shards.start, shards.stop - 1]
    if previous:
        for key in ("pipeline", "input", "steps", "limit"):
            if previous.get(key) != manifest[key]:
                raise UsageError(f"--output {output.path} was made with {key} {_show(previous.get(key))}; this run "
                                 f"has {_show(manifest[key])}: use another --output or the same flags")
        options, before = manifest["options"], previous.get("options", {})
        for flag in sorted(set(options) | set(before)):
            if options.get(flag) != before.get(flag):
                raise UsageError(f"--output {output.path} was made with {flag} {_show(before.get(flag))}; this "
                                 f"run has {_show(options.get(flag))}: use another --output or the same flags")
        if len(previous["files"]) != len(manifest["files"]):  # numbering and the default calibration range move
            raise UsageError(f"--input: has {len(manifest['files'])} files now, {len(previous['files'])} when "
                             f"{output.path} was made; use another --output")
        changed = [i for i, (a, b) in enumerate(zip(previous["files"], manifest["files"])) if a != b]
        if changed:
            raise UsageError(f"--input: file number {changed[0]} is now {manifest['files'][changed[0]]}, it was "
                             f"{previous['files'][changed[0]]} when {output.path} was made")
        old = previous.get("shards") or hull
        hull = [min(old[0], hull[0]), max(old[1], hull[1])]
    write_json(output, MANIFEST_FILE, {**manifest, "shards": hull})
