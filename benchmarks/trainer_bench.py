"""Length grouping in the trainer: padding and real tokens/s with a length buffer against plain stream-order batches.

    python benchmarks/trainer_bench.py [--samples 640] [--steps 40] [--buffer 64]

Both runs train the tiny model with the real `python -m trainer.train` on the same generated mixture (lengths
spread from ~20 to ~600 tokens, a third of the samples with an image), same seed and steps, in one process one
after the other; the only difference is `--length-buffer` (the batch size = no grouping, or `--buffer` samples
sorted by length). It prints the medians of `padding_fraction` and `tokens_per_s` (real tokens, data wait
included) from each run's `metrics.jsonl` and their ratios.

    python benchmarks/trainer_bench.py --walk [--samples 128]

Every DataLoader worker walks the whole sample stream (tar parsing, JSON, image bytes read but not decoded) to
know the batches, and collates only its own. `--walk` times that shared walk against collating the same batches
(decode, fit, tokenize, pad), side by side on one mixture of the GPU benchmark's 1b shape (`trainer_gpu.py`: 4
images at 378 px, ~2,048 tokens a sample): with K workers each one's extra work is about K x that ratio.
"""

from __future__ import annotations

import argparse
import io
import random
import statistics
import sys
import tarfile
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from PIL import Image  # noqa: E402

from mixtures.layout import MixtureInfo, Sample, SourceTarget, add_sample  # noqa: E402

WORDS = "the a of to in on for with by cat dog house tree river stone light dark green blue red old new".split()


def write_mixture(folder: Path, samples: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    buffer = io.BytesIO()
    Image.new("RGB", (48, 36), (120, 30, 200)).save(buffer, format="JPEG")
    (folder / "data").mkdir(parents=True)
    with tarfile.open(folder / "data" / "00000.tar", "w") as tar:
        for i in range(samples):
            words = int(min(600, max(20, rng.lognormvariate(4.5, 0.8))))
            text = " ".join(rng.choice(WORDS) for _ in range(words))
            image = rng.random() < 1 / 3
            add_sample(tar, Sample(f"s{i:05d}", "obelics", [None, text] if image else [text],
                                   [buffer.getvalue()] if image else []))
    info = MixtureInfo("pretrain", "bench", "samples", {"obelics": SourceTarget(1.0)}, "data/*.tar")
    (folder / "mixture.json").write_text(__import__("json").dumps(info.to_json()))


def run(data: Path, output: Path, steps: int, batch: int, buffer: int) -> dict[str, float]:
    import json

    from trainer.train import main

    code = main(["--data", str(data), "--model", "tiny", "--steps", str(steps), "--batch-size", str(batch),
                 "--length-buffer", str(buffer), "--workers", "1", "--checkpoint-every", str(steps),
                 "--max-length", "1024", "--output", str(output)])
    assert code == 0
    rows = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()][3:]
    return {name: statistics.median(r[name] for r in rows) for name in ("padding_fraction", "tokens_per_s")}


def walk_share(root: Path, samples: int, batch: int = 8) -> None:
    """Seconds of the shared walk and of the owners' collation over the same batches, and their ratio."""
    import time

    from benchmarks.trainer_gpu import write_mixture as write_1b
    from trainer.collate import Renderer, collate
    from trainer.config import one_b_model
    from trainer.data import StreamSpec, batches, find_files
    from trainer.model import build_processor

    write_1b(root / "walk", samples, 2048, 4, 378, 64)
    renderer = Renderer(build_processor(one_b_model()), None, answers_only=False)
    spec = StreamSpec(find_files([str(root / "walk")]), batch, 4 * batch, renderer.image_tokens)
    started, walked = time.perf_counter(), []
    for index, _, examples, _ in batches(spec):
        if index >= samples // batch:
            break
        walked.append((index, examples))
    walk = time.perf_counter() - started
    started = time.perf_counter()
    for index, examples in walked:
        collate(renderer, examples, index, {})
    work = time.perf_counter() - started
    print(f"{len(walked)} batches of {batch}: shared walk {walk:.2f} s, collate {work:.2f} s, "
          f"walk / collate {walk / work:.3f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--walk", action="store_true", help="time the workers' shared walk against collation")
    parser.add_argument("--samples", type=int, default=640)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--buffer", type=int, default=64)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="trainer-bench-"))
    if args.walk:
        walk_share(root, args.samples)
        return 0
    write_mixture(root / "data", args.samples)
    plain = run(root / "data", root / "plain", args.steps, args.batch, args.batch)
    grouped = run(root / "data", root / "grouped", args.steps, args.batch, args.buffer)
    for name, result in (("stream order", plain), (f"grouped by {args.buffer}", grouped)):
        print(f"{name:>14}: padding {result['padding_fraction']:.1%} of positions, "
              f"{result['tokens_per_s']:,.0f} real tokens/s")
    positions = (1 - plain["padding_fraction"]) / (1 - grouped["padding_fraction"])  # per real token, ratio
    print(f"ratio grouped / stream order: tokens/s {grouped['tokens_per_s'] / plain['tokens_per_s']:.2f}x, "
          f"padded positions per real token {positions:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
