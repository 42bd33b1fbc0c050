"""Perplexity throughput: our batched, length-grouped scorer against the naive one-document-at-a-time loop.

    python benchmarks/perplexity_bench.py [--docs 400] [--width 128|1024]

Same model, same documents, same windows, in one run: prints tokens/s of both, the ratio, and the largest
relative difference between their perplexities. `--width 1024` builds a randomly initialised Falcon of 4 layers
at width 1024 with the tiny model's tokenizer (closer to falcon-rw-1b's compute per token than the 2-layer
width-128 model that ships); the default scores with the shipped tiny Falcon. On a GPU the scorer runs bf16.
"""

from __future__ import annotations

import argparse
import math
import random
import time
from pathlib import Path

import pyarrow.parquet as pq
import torch
from transformers import FalconConfig, FalconForCausalLM

from filters.perplexity import PerplexityConfig, PerplexityScorer
from pipelines.demo import sample_path

FALCON = sample_path("models", "tiny-falcon")


def documents(count: int) -> list[str]:
    """Sample paragraphs recombined into documents of 1 to 8 paragraphs: a spread of lengths, some past 512."""
    paragraphs = [t for p in sorted(Path(sample_path("obelics")).glob("*.parquet"))
                  for r in pq.read_table(p).to_pylist() if isinstance(r["texts"], list)
                  for t in r["texts"] if isinstance(t, str)]
    rng = random.Random(0)
    return ["\n\n".join(rng.sample(paragraphs, rng.randint(1, 8))) for _ in range(count)]


def naive(scorer: PerplexityScorer, windows: list[list[int]]) -> list[float]:
    model = scorer.model
    scores = []
    for window in windows:
        ids = torch.tensor([window], device=model.device)
        with torch.inference_mode():
            scores.append(math.exp(model(input_ids=ids, labels=ids).loss.float().item()))
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=400)
    parser.add_argument("--width", type=int, default=128)
    args = parser.parse_args()
    scorer = PerplexityScorer(PerplexityConfig(model=FALCON))
    scorer.load()
    if args.width != 128:
        config = FalconConfig.from_pretrained(FALCON)
        config.hidden_size, config.num_hidden_layers = args.width, 4
        config.num_attention_heads = config.num_kv_heads = args.width // 64
        torch.manual_seed(0)
        scorer._model = FalconForCausalLM(config).to(scorer._model.device, scorer._model.dtype).eval()
    windows = scorer.windows(documents(args.docs))
    tokens = sum(len(w) for w in windows)
    naive(scorer, windows[:5]), scorer.score_windows(windows[:5])  # warm-up
    start = time.perf_counter()
    reference = naive(scorer, windows)
    naive_s = time.perf_counter() - start
    start = time.perf_counter()
    ours = scorer.score_windows(windows)
    ours_s = time.perf_counter() - start
    worst = max(abs(a - b) / b for a, b in zip(ours, reference))
    device = scorer.model.device
    print(f"{args.docs} documents, {tokens:,} tokens scored, width {args.width}, {device}, "
          f"{torch.get_num_threads()} threads")
    print(f"naive loop : {tokens / naive_s:10,.0f} tokens/s")
    print(f"batched    : {tokens / ours_s:10,.0f} tokens/s   ({naive_s / ours_s:.2f}x)")
    print(f"largest relative difference in perplexity: {worst:.2e}")


if __name__ == "__main__":
    main()
