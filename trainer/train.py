"""`python -m trainer.train`: train an Idefics2 on what the pipelines produce, to check the data by training on it.

    python -m trainer.train --data OUT/stage1 --stage pretrain --model tiny --steps 30 --output runs/stage1
    torchrun --nproc_per_node 8 -m trainer.train --data OUT/sft --stage sft --model idefics2-8b ...

Read top to bottom: flags -> model, optimizer, schedule -> resume from the latest checkpoint -> the loop (a step =
`grad_accum` batches; the loss is the mean over every learned token of the step, on every rank) -> checkpoints
holding model, optimizer, schedule, RNG and data position -> `metrics.jsonl` and `loss.png`.
Rerunning a command into the same `--output` resumes it exactly; a different configuration there is refused.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from collections import Counter
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from trainer.config import ConfigError, ModelConfig, TrainConfig, load_model_config
from trainer.collate import IGNORE, Renderer
from trainer.data import START, BatchStream, StreamSpec, find_files
from trainer.flops import flop_model, peak_flops
from trainer.model import (add_adapters, add_neftune, adapter_kind, build_model, build_processor, param_groups)

METRICS, RUN, CHECKPOINTS = "metrics.jsonl", "run.json", "checkpoints"


FLAGS = [  # (TrainConfig field, type, help); defaults and their sources are in trainer.config
    ("steps", int, "optimizer steps in the whole run"),
    ("batch_size", int, "samples per batch per rank"),
    ("grad_accum", int, "batches per optimizer step"),
    ("max_length", int, "cap on a sample's rendered tokens, image tokens included; longer samples are counted and "
                        "skipped (unset: a mixture's sources' max_tokens, 2048 for other data)"),
    ("lr_new", float, "peak learning rate of the new parameters (the connector; all of a model built from scratch)"),
    ("lr_adapted", float, "peak learning rate of the adapters and other adapted parameters"),
    ("warmup_steps", int, "linear warmup steps, then cosine decay"),
    ("min_lr_ratio", float, "the cosine ends at this fraction of the peak"),
    ("weight_decay", float, "AdamW weight decay of matrices"),
    ("clip_norm", float, "gradient norm clipping"),
    ("lora_rank", int, "LoRA/DoRA rank"),
    ("lora_alpha", int, "LoRA/DoRA alpha"),
    ("neftune_alpha", float, "NEFTune noise in SFT (0: off)"),
    ("seed", int, "seed of the weights' initialisation and the data order"),
    ("length_buffer", int, "samples sorted by length at a time to form batches (the batch size: no grouping)"),
    ("workers", int, "DataLoader worker processes that decode and collate"),
    ("prefetch", int, "batches each worker prepares ahead"),
    ("log_every", int, "steps between metrics.jsonl lines"),
    ("checkpoint_every", int, "steps between checkpoints (the last step is always saved)"),
    ("stop_after", int, "stop after this many steps of this run; run the command again to resume"),
    ("peak_tflops", float, "the accelerator's dense bf16 TFLOP/s for MFU (guessed from the GPU name)"),
]


def parse_args(argv: list[str] | None) -> tuple[TrainConfig, ModelConfig]:
    parser = argparse.ArgumentParser(prog="python -m trainer.train", description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True,
                        help="mixture folders, Cauldron subset folders or files, comma-separated")
    parser.add_argument("--stage", choices=["pretrain", "sft"], default="pretrain",
                        help="pretrain: loss on every text token; sft: on the assistant answers only")
    parser.add_argument("--model", default="tiny", help="tiny, 1b, idefics2-8b, or a JSON file of ModelConfig fields")
    parser.add_argument("--output", required=True, help="run folder: metrics.jsonl, loss.png, checkpoints/")
    parser.add_argument("--image-splitting", action="store_true", help="4 crops + the image (paper section 2.3)")
    parser.add_argument("--gradient-checkpointing", action="store_true",
                        help="recompute activations in the backward pass (less memory, more compute)")
    defaults = TrainConfig()
    for name, kind, text in FLAGS:
        parser.add_argument("--" + name.replace("_", "-"), type=kind, default=getattr(defaults, name),
                            help=text + " (default: %(default)s)")
    parser.add_argument("--adapter", choices=["auto", "lora", "dora", "none"], default="auto",
                        help="auto: DoRA on pretrained backbones, full training of a model built from scratch")
    args = vars(parser.parse_args(argv))
    model = load_model_config(args.pop("model"))
    model.image_splitting = model.image_splitting or args.pop("image_splitting")
    train = TrainConfig(**{**args, "data": [p for p in args["data"].split(",") if p]})
    for name in ("steps", "batch_size", "grad_accum", "max_length", "length_buffer", "checkpoint_every", "log_every"):
        if getattr(train, name) is not None and getattr(train, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1")
    if train.length_buffer < train.batch_size:
        raise ConfigError("--length-buffer must hold at least one batch (>= --batch-size)")
    return train, model


def lr_factor(step: int, train: TrainConfig) -> float:
    """Linear warmup, then cosine down to `min_lr_ratio` of the peak at the last step."""
    if step < train.warmup_steps:
        return (step + 1) / train.warmup_steps
    progress = (step - train.warmup_steps) / max(1, train.steps - train.warmup_steps)
    return train.min_lr_ratio + (1 - train.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def setup_distributed() -> tuple[int, int, torch.device]:
    """torchrun sets RANK/WORLD_SIZE; NCCL on GPUs, gloo on CPUs."""
    cuda = torch.cuda.is_available()
    if "RANK" not in os.environ:
        return 0, 1, torch.device("cuda" if cuda else "cpu")
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, local = dist.get_rank(), int(os.environ.get("LOCAL_RANK", 0))
    if cuda:
        torch.cuda.set_device(local)
    return rank, dist.get_world_size(), torch.device(f"cuda:{local}" if cuda else "cpu")


def all_sum(values: list[float], world: int, device) -> list[float]:
    if world == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def check_run_folder(output: Path, identity: dict, rank: int, write: bool) -> None:
    """An output folder holds one configuration: a resume with another is refused, naming what changed."""
    run = output / RUN
    if run.is_file():
        before = json.loads(run.read_text())
        changed = sorted(k for k in set(before) | set(identity) if before.get(k) != identity.get(k))
        if changed:
            raise ConfigError(f"--output {output}: holds a run with other settings ({', '.join(changed)}); "
                              "use a new folder")
    elif write and rank == 0:
        output.mkdir(parents=True, exist_ok=True)
        run.write_text(json.dumps(identity, indent=1, sort_keys=True))


def trainable_state(model) -> dict:
    return {name: p.detach().cpu() for name, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(output: Path, step: int, model, optimizer, scheduler, ranks: list[dict]):
    """Atomically (temporary file, then rename); the two newest are kept."""
    folder = output / CHECKPOINTS
    folder.mkdir(exist_ok=True)
    state = {"step": step, "model": trainable_state(model), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(), "ranks": ranks}
    path = folder / f"step_{step:07d}.pt"
    torch.save(state, str(path) + ".tmp")
    os.replace(str(path) + ".tmp", path)
    for old in sorted(folder.glob("step_*.pt"))[:-2]:
        old.unlink()


def rank_state(position: dict, skipped: Counter, device) -> dict:
    """What each rank must restore: where its data stream stands, what it skipped, its random generators."""
    state = {"data": position, "skipped": dict(skipped), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def gather(obj, world: int) -> list:
    if world == 1:
        return [obj]
    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


def latest_checkpoint(output: Path) -> Path | None:
    found = sorted((output / CHECKPOINTS).glob("step_*.pt"))
    return found[-1] if found else None


def truncate_metrics(output: Path, step: int) -> None:
    """Keep the lines of steps up to `step` (a crashed run's later lines would otherwise be logged twice)."""
    path = output / METRICS
    if path.is_file():
        lines = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        path.write_text("".join(line + "\n" for line in lines))


def plot_loss(output: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in (output / METRICS).read_text().splitlines() if line]
    figure, axis = plt.subplots(figsize=(6, 3.5))
    axis.plot([r["step"] for r in rows], [r["loss"] for r in rows])
    axis.set(xlabel="step", ylabel="loss", title=f"training loss ({output.name})")
    figure.tight_layout()
    figure.savefig(output / "loss.png", dpi=100)
    plt.close(figure)


def step_loss(model, batch, device, autocast, total_learned: float, world: int) -> tuple[torch.Tensor, float]:
    """Sum of token losses of one batch divided by the learned tokens of the whole step on every rank (times the
    world size, which DDP's gradient averaging divides out): every token of the step weighs the same."""
    inputs = {k: v.to(device, non_blocking=True) for k, v in batch.tensors.items()}
    labels = inputs.pop("labels")
    with autocast:
        logits = model(**inputs, use_cache=False).logits
    summed = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE,
                             reduction="sum")
    return summed * world / max(total_learned, 1.0), summed.item()


def check_data(train_cfg: TrainConfig):
    files = find_files(train_cfg.data)
    wrong = [f.path for f in files if f.kind != train_cfg.stage]
    if wrong:
        raise ConfigError(f"--data {wrong[0]}: {'SFT' if train_cfg.stage == 'pretrain' else 'pretraining'} data, "
                          f"but --stage {train_cfg.stage}")
    return files


def build_training(train_cfg: TrainConfig, model_cfg: ModelConfig, device):
    """The processor, the model with its adapters on `device`, AdamW with its two learning rates, the schedule."""
    torch.manual_seed(train_cfg.seed)  # same initial weights on every rank and on every resume
    pretrained = model_cfg.checkpoint or model_cfg.vision or model_cfg.text
    dtype = torch.bfloat16 if device.type == "cuda" and pretrained else torch.float32  # frozen weights in bf16
    try:
        processor = build_processor(model_cfg)
        model = build_model(model_cfg, processor, dtype)
    except OSError as err:  # transformers' "not found / cannot connect" (a Hub id offline, a wrong folder)
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"--model {model_cfg.name}: cannot load its weights or tokenizer ({first})") from None
    kind = adapter_kind(model_cfg, train_cfg)
    new_tokens = processor.tokenizer.convert_tokens_to_ids(
        [processor.fake_image_token, processor.image_token, str(processor.end_of_utterance_token)])
    model = add_adapters(model, kind, train_cfg, [] if model_cfg.checkpoint else new_tokens)
    groups = param_groups(model, kind, from_scratch=not pretrained)
    model.to(device).train()
    if train_cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if train_cfg.stage == "sft" and train_cfg.neftune_alpha > 0:
        add_neftune(model, train_cfg.neftune_alpha)
    optimizer = torch.optim.AdamW(groups.optimizer_groups(train_cfg), betas=train_cfg.betas)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, train_cfg))
    return processor, model, optimizer, scheduler


def restore(output: Path, model, optimizer, scheduler, rank: int, world: int, device) -> tuple[int, dict, Counter]:
    """(step, data position, skipped counts) from the newest checkpoint, every state restored; a fresh start
    without one. Metrics logged after that step are dropped (they are about to be logged again)."""
    checkpoint = latest_checkpoint(output)
    state = torch.load(checkpoint, weights_only=True, map_location="cpu") if checkpoint else None  # no pickled code
    if rank == 0:
        truncate_metrics(output, state["step"] if state else 0)
    if state is None:
        return 0, dict(START), Counter()
    if len(state["ranks"]) != world:
        raise ConfigError(f"--output {output}: checkpoint of {len(state['ranks'])} ranks, running {world}")
    missing = set(trainable_state(model)) - set(state["model"])
    if missing:
        raise ConfigError(f"--output {output}: checkpoint lacks {sorted(missing)[:3]}")
    model.load_state_dict(state["model"], strict=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    mine = state["ranks"][rank]
    torch.set_rng_state(mine["torch"])
    if "cuda" in mine:
        torch.cuda.set_rng_state(mine["cuda"], device)
    from datatrove.utils.logging import logger

    logger.info(f"resuming from {checkpoint} at step {state['step']}")
    return state["step"], mine["data"], Counter(mine["skipped"])


def next_batches(batches, count: int, world: int, device, skipped: Counter) -> tuple[list, dict, float]:
    """A step's `count` batches, the data position after them, and the seconds spent waiting for them. A batch
    left empty on any rank (every sample bad) is dropped on all ranks alike, so DDP stays in step."""
    micro, waited, position, empty_in_a_row = [], 0.0, None, 0
    while len(micro) < count:
        before = time.perf_counter()
        batch = next(batches)
        waited += time.perf_counter() - before
        skipped.update(batch.skipped)
        position = batch.position
        if all_sum([float(not batch.tensors)], world, device)[0] == 0:
            micro.append(batch)
            empty_in_a_row = 0
        else:
            empty_in_a_row += 1
            if empty_in_a_row >= 100:
                raise ConfigError(f"--data: 100 batches in a row without a usable sample ({dict(skipped)})")
    return micro, position, waited


def metrics_row(step: int, lr: float, totals: list[float], learned: float, elapsed: float, world: int,
                peak: float | None) -> dict:
    loss, tokens, padded, images, waited, flops, flops_6n = totals
    row = {"step": step, "loss": loss / max(learned, 1.0), "lr": lr, "tokens_per_s": tokens / elapsed,
           "images_per_s": images / elapsed, "padding_fraction": 1 - tokens / padded,
           "data_wait_fraction": waited / world / elapsed}
    if peak:
        row["mfu"] = flops / elapsed / (peak * world)
        row["mfu_6n"] = flops_6n / elapsed / (peak * world)
    return row


def train(train_cfg: TrainConfig, model_cfg: ModelConfig) -> int:
    from datatrove.utils.logging import logger

    rank, world, device = setup_distributed()
    output = Path(train_cfg.output)
    files = check_data(train_cfg)
    listing = hashlib.sha256(json.dumps([(f.path, os.path.getsize(f.path)) for f in files]).encode()).hexdigest()
    identity = {**train_cfg.identity(), **{f"model.{k}": v for k, v in asdict(model_cfg).items()},
                "data_files": listing}  # the data position means nothing if the files changed
    check_run_folder(output, identity, rank, write=False)
    processor, model, optimizer, scheduler = build_training(train_cfg, model_cfg, device)
    check_run_folder(output, identity, rank, write=True)  # once everything checked out
    step, position, skipped = restore(output, model, optimizer, scheduler, rank, world, device)

    renderer = Renderer(processor, train_cfg.max_length, answers_only=train_cfg.stage == "sft")
    spec = StreamSpec(files, train_cfg.batch_size, train_cfg.length_buffer, renderer.image_tokens,
                      train_cfg.seed, rank, world)
    loader = torch.utils.data.DataLoader(
        BatchStream(spec, renderer, position), batch_size=None, num_workers=train_cfg.workers,
        prefetch_factor=train_cfg.prefetch if train_cfg.workers else None, pin_memory=device.type == "cuda",
        collate_fn=lambda batch: batch, generator=torch.Generator().manual_seed(train_cfg.seed))
    # (its own generator: drawing worker seeds from the global one would shift the restored RNG on resume)
    batches = iter(loader)
    flops = flop_model(model)
    peak = peak_flops(torch.cuda.get_device_name(device), train_cfg.peak_tflops) if device.type == "cuda" else None
    if world > 1:  # unused parameters: the vision side in a batch without images
        model = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    trainable = [p for p in model.parameters() if p.requires_grad]
    metrics = open(output / METRICS, "a") if rank == 0 else None
    stop = train_cfg.steps if train_cfg.stop_after is None else min(train_cfg.steps, step + train_cfg.stop_after)

    while step < stop:
        started = time.perf_counter()
        micro, position, waited = next_batches(batches, train_cfg.grad_accum, world, device, skipped)
        learned, = all_sum([float(sum(int((b.tensors["labels"][:, 1:] != IGNORE).sum()) for b in micro))],
                           world, device)
        loss_sum = 0.0
        for number, batch in enumerate(micro):
            with model.no_sync() if world > 1 and number < len(micro) - 1 else nullcontext():
                loss, summed = step_loss(model, batch, device, autocast, learned, world)
                loss.backward()
            loss_sum += summed
        torch.nn.utils.clip_grad_norm_(trainable, train_cfg.clip_norm)
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - started
        lengths = [int(n) for b in micro for n in b.tensors["attention_mask"].sum(1)]
        totals = all_sum([loss_sum, sum(b.tokens for b in micro), sum(b.padded for b in micro),
                          sum(b.images for b in micro), waited,
                          flops.step_flops(lengths, sum(b.pixels for b in micro)), flops.step_flops_6n(lengths)],
                         world, device)
        if rank == 0 and (step % train_cfg.log_every == 0 or step == stop):
            row = metrics_row(step, lr, totals, learned, elapsed, world, peak)
            metrics.write(json.dumps(row) + "\n")
            metrics.flush()
            logger.info(" ".join(f"{k}={v:.4g}" for k, v in row.items()))
        if step % train_cfg.checkpoint_every == 0 or step == stop:
            ranks = gather(rank_state(position, skipped, device), world)
            if rank == 0:
                save_checkpoint(output, step, model.module if world > 1 else model, optimizer, scheduler, ranks)

    skipped = sum((Counter(s) for s in gather(dict(skipped), world)), Counter())
    if rank == 0:
        metrics.close()
        (output / "skipped.json").write_text(json.dumps(dict(skipped), indent=1, sort_keys=True))
        if skipped:
            logger.warning(f"samples skipped (counted in {output / 'skipped.json'}): {dict(skipped)}")
        plot_loss(output)
    if world > 1:
        dist.barrier()  # all ranks leave together; tearing down early can hang (pytorch/pytorch#75097)
        dist.destroy_process_group()
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        train_cfg, model_cfg = parse_args(argv)
        return train(train_cfg, model_cfg)
    except ConfigError as err:  # from a DataLoader worker it arrives with the worker's traceback: keep its last line
        print(f"error: {str(err).strip().splitlines()[-1].split('ConfigError: ', 1)[-1]}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; the last checkpoint is kept: run the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
