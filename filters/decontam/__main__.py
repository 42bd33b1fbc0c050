"""`python -m filters.decontam build|scan`: build a decontamination index, or check files against one.

    python -m filters.decontam build --output INDEX [--benchmarks vqav2,mmmu] [--from NAME=PATH ...]
    python -m filters.decontam scan --index INDEX PATH [--json] [--exit-zero]

`scan` reads images, text files (.txt .md .json .jsonl) and parquet files (every image and string of every row),
one batch at a time. Exit status: 0 nothing found, 1 matches found (0 with --exit-zero), 2 a usage error or files
that could not be checked (each named on stderr). `build` exits 1 when some evaluation images could not be read
(the index is written without them, each named on stderr).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from filters.decontam.index import (
    DEFAULT_RADIUS, INDEX_VERSION, DecontaminationIndex, IndexBuildError, build_index, items_from_hub,
    items_from_path,
)
from filters.decontam.registry import BENCHMARKS
from filters.decontam.scan import Scan
from filters.errors import UsageError, command


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
    scan = commands.add_parser("scan", help="match images, texts and parquet rows against an index")
    scan.add_argument("--index", required=True)
    scan.add_argument("path", help="an image, a text or parquet file, or a folder of them")
    scan.add_argument("--json", action="store_true", help="print a JSON list of matches")
    scan.add_argument("--exit-zero", action="store_true", help="exit 0 even when matches are found")
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
    except IndexBuildError as error:
        raise UsageError(f"build: {error}") from None
    except (OSError, ValueError, ConnectionError) as error:
        raise UsageError(f"build: cannot read an evaluation set ({type(error).__name__}: {error})") from None
    total = sum(b["items"] for b in meta["benchmarks"].values())
    unreadable = sum(b["unreadable"] for b in meta["benchmarks"].values())
    print(f"decontam: index of {total:,} items from {len(meta['benchmarks'])} set(s) written to {args.output}")
    if unreadable:
        print(f"decontam: {unreadable:,} evaluation image(s) or file(s) could not be read and are not in the index "
              f"(named above)", file=sys.stderr)
        return 1
    return 0


def _check_index(path: str) -> None:
    meta_path = os.path.join(path, "index.json")
    if not os.path.isfile(meta_path):
        raise UsageError(f"--index {path}: not a decontamination index (no index.json)")
    try:
        with open(meta_path) as f:
            version = json.load(f).get("version")
    except (OSError, ValueError) as error:
        raise UsageError(f"--index {path}: unreadable index.json ({error})") from None
    if version != INDEX_VERSION:
        raise UsageError(f"--index {path}: index format {version}, this version reads {INDEX_VERSION}; rebuild it "
                         f"with python -m filters.decontam build")


def scan(args: argparse.Namespace) -> int:
    _check_index(args.index)
    if not os.path.exists(args.path):
        raise UsageError(f"{args.path}: no such file or folder")
    warn = lambda message: print(f"warning: {message}", file=sys.stderr)  # noqa: E731
    result = Scan(DecontaminationIndex(args.index), warn).run(args.path)
    if args.json:
        print(json.dumps(result.matches, indent=1))
    else:
        for row in result.matches:
            print(f"{row['file']}\t{row['benchmark']}/{row['split']}/{row['item']}\t{row['tier']}\t{row['distance']}")
    print(result.summary(), file=sys.stderr)
    if result.problems:
        return 2
    return 1 if result.matches and not args.exit_zero else 0


@command
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return build(args) if args.command == "build" else scan(args)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
