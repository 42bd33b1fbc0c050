"""`python -m filters.decontam build|scan`: build a decontamination index, or check files against one.

    python -m filters.decontam build --output INDEX [--benchmarks vqav2,mmmu] [--from NAME=PATH ...]
    python -m filters.decontam scan --index INDEX PATH [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from filters.decontam.index import (
    DEFAULT_RADIUS, IMAGE_SUFFIXES, DecontaminationIndex, build_index, items_from_hub, items_from_path,
)
from filters.decontam.registry import BENCHMARKS


class UsageError(Exception):
    pass


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m filters.decontam", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="index evaluation sets")
    build.add_argument("--output", required=True, help="index folder to write")
    build.add_argument("--benchmarks", default=None,
                       help=f"registered sets to load from the Hub (choose from {','.join(BENCHMARKS)}; 'all')")
    build.add_argument("--from", dest="sources", action="append", default=[], metavar="NAME=PATH",
                       help="a local set: parquet files and/or image files; repeatable")
    build.add_argument("--radius", type=int, default=DEFAULT_RADIUS, help="Hamming radius for perceptual matches")
    scan = commands.add_parser("scan", help="match images and texts against an index")
    scan.add_argument("--index", required=True)
    scan.add_argument("path", help="an image, a text file, or a folder of them")
    scan.add_argument("--json", action="store_true", help="print a JSON list of matches")
    return parser.parse_args(argv)


def _sources(args: argparse.Namespace):
    names = [] if not args.benchmarks else list(BENCHMARKS) if args.benchmarks == "all" else \
        [n.strip() for n in args.benchmarks.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise UsageError(f"--benchmarks: unknown {unknown[0]!r} (choose from {','.join(BENCHMARKS)})")
    local = []
    for source in args.sources:
        name, _, path = source.rpartition("=")
        name = name or Path(path).stem
        if not os.path.exists(path):
            raise UsageError(f"--from {source}: no such file or folder")
        local.append((name, path))
    if not names and not local:
        raise UsageError("build: give --benchmarks and/or --from")
    return [(n, BENCHMARKS[n].hub_id, items_from_hub(BENCHMARKS[n])) for n in names] + \
        [(n, os.path.abspath(p), items_from_path(n, p)) for n, p in local]


def build(args: argparse.Namespace) -> int:
    try:
        meta = build_index(args.output, _sources(args), args.radius,
                           progress=lambda message: print(f"decontam: {message}", file=sys.stderr))
    except UsageError:
        raise
    except (OSError, ValueError, ConnectionError) as error:
        raise UsageError(f"build: cannot read an evaluation set ({type(error).__name__}: {error})") from None
    total = sum(b["items"] for b in meta["benchmarks"].values())
    print(f"decontam: index of {total:,} items from {len(meta['benchmarks'])} set(s) written to {args.output}")
    return 0


def scan(args: argparse.Namespace) -> int:
    if not os.path.isfile(os.path.join(args.index, "index.json")):
        raise UsageError(f"--index {args.index}: not a decontamination index (no index.json)")
    if not os.path.exists(args.path):
        raise UsageError(f"{args.path}: no such file or folder")
    index = DecontaminationIndex(args.index)
    root = Path(args.path)
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    rows = []
    images = [f for f in files if f.suffix.lower() in IMAGE_SUFFIXES]
    for file, matches in zip(images, index.match_image_bytes([f.read_bytes() for f in images])):
        if matches is None:
            print(f"warning: {file}: not a readable image", file=sys.stderr)
        rows += [{"file": str(file), **m.to_json()} for m in matches or []]
    for file in (f for f in files if f.suffix in (".txt", ".md", ".json", ".jsonl")):
        rows += [{"file": str(file), **m.to_json()} for m in index.match_text(file.read_text(errors="replace"))]
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        for row in rows:
            print(f"{row['file']}\t{row['benchmark']}/{row['split']}/{row['item']}\t{row['tier']}\t{row['distance']}")
        print(f"{len(rows)} match(es) in {len(files)} file(s)", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return build(args) if args.command == "build" else scan(args)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
