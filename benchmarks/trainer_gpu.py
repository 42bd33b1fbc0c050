"""Trainer throughput on one accelerator: tokens/s, MFU and data-wait fraction of `python -m trainer.train`.

    python benchmarks/trainer_gpu.py --shape 1b     # on a GPU: ~1B Idefics2, batch 8 x 2,048 tokens, 4 images each
    python benchmarks/trainer_gpu.py --shape tiny   # anywhere (CPU too): the tiny model, to check the script works

It writes a pretraining mixture of generated samples (each `--tokens` long with `--images` images at 378 px) in the
contract layout, runs the real trainer on it (bf16 autocast, DataLoader workers, pinned memory on GPU), and prints
the medians over the steps after `--warmup`, read from the run's `metrics.jsonl`. Shapes: `1b` is Mistral-style
text of width 2,048 x 20 layers, SigLIP-base-style vision (768 x 12) at 378 px, resampler 64 x 3
(`trainer.config.one_b_model`); weights are initialised, not downloaded (the machine needs no network). `mfu` counts
6 FLOPs per parameter per token plus causal attention and 6 per vision parameter per patch (`trainer.flops`);
`mfu_6n` is the plain 6 N FLOPs per token most reports quote; on CPU there is no MFU. The tokenizer is the
repository's tiny one (2,051 entries), so the LM head is smaller than Mistral's (32,000): the text FLOPs are those
of the model as built.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tarfile
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from PIL import Image  # noqa: E402

from mixtures.layout import MixtureInfo, Sample, SourceTarget, add_sample, write_info  # noqa: E402

SHAPES = {"tiny": {"batch": 8, "tokens": 256, "images": 4, "side": 56},
          "1b": {"batch": 8, "tokens": 2048, "images": 4, "side": 378}}


def image_bytes(seed: int, side: int) -> bytes:
    noise = Image.effect_noise((side, side), 40 + seed % 50).convert("RGB")
    buffer = io.BytesIO()
    noise.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def text_of_tokens(tokenizer, count: int, seed: int) -> str:
    """A text of about `count` tokens (words drawn from the tokenizer's own vocabulary)."""
    import random

    rng = random.Random(seed)
    words = [w for w in tokenizer.get_vocab() if w.isalpha() and len(w) > 2][:2000]
    text = " ".join(rng.choice(words) for _ in range(count))
    ids = tokenizer(text, add_special_tokens=False).input_ids[:count]
    return tokenizer.decode(ids)


def write_mixture(folder: Path, samples: int, tokens: int, images: int, side: int, image_tokens: int) -> None:
    from transformers import AutoTokenizer

    from trainer.model import REPO
    from trainer.config import TINY_TOKENIZER

    tokenizer = AutoTokenizer.from_pretrained(str(REPO / TINY_TOKENIZER))
    text_tokens = max(8, tokens - images * (image_tokens + 2) - 8)
    pictures = [image_bytes(i, side) for i in range(8)]
    (folder / "data").mkdir(parents=True)
    with tarfile.open(folder / "data" / "00000.tar", "w") as tar:
        for i in range(samples):
            text = text_of_tokens(tokenizer, text_tokens // images, i)
            texts = [t for _ in range(images) for t in (None, text)]
            add_sample(tar, Sample(f"s{i:05d}", "obelics", texts, [pictures[(i + j) % 8] for j in range(images)]))
    from datatrove.io import get_datafolder

    write_info(get_datafolder(str(folder)), MixtureInfo("pretrain", "bench", "samples",
                                                         {"obelics": SourceTarget(1.0)}, "data/*.tar"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5, help="steps left out of the medians")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--output", default=None, help="keep the run here (default: a temporary folder)")
    args = parser.parse_args(argv)
    shape = SHAPES[args.shape]
    from trainer.config import PRESETS
    from trainer.train import main as train

    latents = PRESETS[args.shape]().latents
    root = Path(args.output or tempfile.mkdtemp(prefix="trainer-gpu-"))
    samples = shape["batch"] * (args.steps + 2)
    write_mixture(root / "data", samples, shape["tokens"], shape["images"], shape["side"], latents)
    run = root / "run"
    code = train(["--data", str(root / "data"), "--model", args.shape, "--steps", str(args.steps),
                  "--batch-size", str(shape["batch"]), "--max-length", str(shape["tokens"] + 64),
                  "--length-buffer", str(shape["batch"] * 4), "--workers", str(args.workers),
                  "--checkpoint-every", str(args.steps), "--output", str(run)])
    if code:
        return code
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][args.warmup:]
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(f"{args.shape} on {device}: batch {shape['batch']} x ~{shape['tokens']} tokens, {shape['images']} images "
          f"each, {len(rows)} steps measured")
    for name in ("tokens_per_s", "images_per_s", "data_wait_fraction", "padding_fraction", "mfu", "mfu_6n"):
        if rows and name in rows[0]:
            print(f"  {name:>20}: {statistics.median(r[name] for r in rows):.4g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
