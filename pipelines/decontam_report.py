"""The decontamination report of a run: hits by benchmark and tier, with examples, as JSON and markdown."""

from __future__ import annotations

import json
from collections import Counter, defaultdict

from datatrove.io import DataFolder

from filters.shard_files import write_atomically

MATCHES_FOLDER = "decontam"  # OUTPUT/decontam/NNNNN.jsonl, written by filters.decontam.step
EXAMPLES = 3


def write_report(output: DataFolder) -> str | None:
    """Aggregate every shard's matches into decontam_report.json and .md; None when the step did not run."""
    if not output.isdir(MATCHES_FOLDER):
        return None
    hits: Counter[tuple[str, str]] = Counter()
    items: dict[str, set] = defaultdict(set)
    examples: dict[str, list[dict]] = defaultdict(list)
    for name in sorted(output.list_files(MATCHES_FOLDER)):
        with output.open(name) as f:
            for line in f:
                match = json.loads(line)
                hits[match["benchmark"], match["tier"]] += 1
                items[match["benchmark"]].add((match["split"], match["item"]))
                if len(examples[match["benchmark"]]) < EXAMPLES:
                    examples[match["benchmark"]].append(match)
    benchmarks = sorted(items)
    report = {"benchmarks": {b: {"matches": {t: n for (bb, t), n in sorted(hits.items()) if bb == b},
                                 "items_hit": len(items[b]), "examples": examples[b]} for b in benchmarks},
              "total_matches": sum(hits.values())}
    with write_atomically(output, "decontam_report.json", "w") as f:
        json.dump(report, f, indent=1)
    tiers = ("exact", "phash", "text")
    lines = ["| benchmark | " + " | ".join(tiers) + " | evaluation items hit |", "|---|" + "---|" * (len(tiers) + 1)]
    lines += [f"| {b} | " + " | ".join(str(hits[b, t]) for t in tiers) + f" | {len(items[b])} |" for b in benchmarks]
    lines += ["", "Examples:", ""]
    lines += [f"- {e['benchmark']}/{e['split']}/{e['item']} ({e['tier']}, distance {e['distance']}): document "
              f"{e['doc']}" + (f", image {e['url']}" if e["url"] else ", text")
              for b in benchmarks for e in examples[b]]
    with write_atomically(output, "decontam_report.md", "w") as f:
        f.write("# Decontamination report\n\n" + "\n".join(lines) + "\n")
    return (f"decontam: {report['total_matches']} match(es) with {len(benchmarks)} benchmark(s); report in "
            f"{output.resolve_paths('decontam_report.md')}")
