"""The SFT mixture: rows of the built subsets drawn so that each holds its Table 14 share of answer tokens.

Table 14 (Idefics2 paper, section 4.2) gives each subset's share of the fine-tuning mixture's answer tokens; over
the subsets present they are renormalised to sum to 100%. For a total of T answer tokens (`--sft-tokens`; by
default the largest T for which no subset has to repeat a row), subset i gets rows until its answer tokens reach
share_i x T: its rows in a seeded random order, again in a new order when they run out (repetition), a row taken
while it brings the total closer to the target. The drawn rows are shuffled together (seeded) and written as
`OUT/sft/data/NNNNN.parquet` with the columns of contract 3: `images`, `texts`, `subset`, `answer_tokens`.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from datatrove.io import get_datafolder

from cauldron.build import DATA_FILE
from cauldron.registry import renormalised_shares
from mixtures.layout import MixtureInfo, SourceTarget, conversation_features, write_info
from filters.shard_files import TempFile, write_atomically

SHARE_TOLERANCE = 0.5  # percentage points: answer-token shares are held to half a point of renormalised Table 14


@dataclass
class SftOptions:
    total_tokens: int | None  # answer tokens of the whole mixture; None: the most without repeating a row
    seed: int
    rows_per_file: int
    tokenizer: str
    image_tokens: int = 64  # paper, section 2.3


def _draw(tokens: list[int], target: float, rng: random.Random) -> list[int]:
    """Row numbers whose answer tokens sum as close to `target` as whole rows allow (rows repeat when needed)."""
    usable = [i for i, t in enumerate(tokens) if t > 0]
    picked, total = [], 0
    while usable:
        order = list(usable)
        rng.shuffle(order)
        for i in order:
            if total + tokens[i] / 2 > target:
                return picked
            picked.append(i)
            total += tokens[i]
    return picked


def build(output: str, names: list[str], options: SftOptions) -> dict:
    """Draw and write `OUTPUT/sft`; returns its summary (target and achieved share per subset)."""
    out = get_datafolder(output)
    tokens = {}
    for name in names:
        with out.open(f"tokens/{name}.parquet", "rb") as f:
            tokens[name] = pq.read_table(f, columns=["answer_tokens"]).column(0).to_pylist()
    present = [n for n in names if sum(tokens[n]) > 0]
    shares = renormalised_shares(present)
    total = options.total_tokens or min(sum(tokens[n]) / shares[n] for n in present)
    picks = {n: _draw(tokens[n], shares[n] * total, random.Random(f"{options.seed}:{n}")) for n in present}
    order = [(n, i) for n in present for i in picks[n]]
    random.Random(options.seed).shuffle(order)
    files = _write(out, order, tokens, options.rows_per_file)
    achieved = {n: sum(tokens[n][i] for i in picks[n]) for n in present}
    grand = sum(achieved.values()) or 1
    summary = {"answer_tokens": grand, "target_answer_tokens": round(total), "rows": len(order), "files": files,
               "left_out_empty": [n for n in names if n not in present],
               "subsets": {n: {"target_share": shares[n], "share": achieved[n] / grand, "rows": len(picks[n]),
                               "distinct_rows": len(set(picks[n])), "answer_tokens": achieved[n]}
                           for n in present}}
    sft = get_datafolder(f"{output}/sft")
    write_info(sft, MixtureInfo(
        kind="sft", name="sft", share_of="answer_tokens", files="data/*.parquet",
        sources={n: SourceTarget(share=shares[n]) for n in present}, image_tokens=options.image_tokens,
        tokenizer=options.tokenizer, seed=options.seed, tolerance=SHARE_TOLERANCE,
        extra={"table14_percent": "Idefics2 paper, Table 14, renormalised over the subsets present",
               "target_answer_tokens": round(total)}))
    with write_atomically(sft, "summary.json", "w") as f:
        json.dump(summary, f, indent=1, sort_keys=True)
    return summary


def _write(out, order: list[tuple[str, int]], tokens: dict, rows_per_file: int) -> int:
    schema = conversation_features(sft=True).arrow_schema
    datasets = {}
    for number, start in enumerate(range(0, max(len(order), 1), rows_per_file)):
        chunk = order[start:start + rows_per_file]
        wanted: dict[str, list[int]] = {}
        for name, row in chunk:
            wanted.setdefault(name, []).append(row)
        fetched = {}
        for name, rows in wanted.items():
            if name not in datasets:
                datasets[name] = ds.dataset(out.resolve_paths(DATA_FILE.format(name=name)), filesystem=out.fs)
            distinct = sorted(set(rows))
            table = datasets[name].take(pa.array(distinct)).to_pylist()
            fetched[name] = dict(zip(distinct, table))
        rows = [{**fetched[name][row], "subset": name, "answer_tokens": tokens[name][row]} for name, row in chunk]
        target = TempFile(out, f"sft/data/{number:05d}.parquet")
        try:
            pq.write_table(pa.Table.from_pylist(rows, schema=schema), target.file)
            target.commit()
        except BaseException:
            target.abort()
            raise
    return number + 1
