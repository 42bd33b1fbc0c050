"""What a training run is: the model to build and how to train it, as dataclasses a person can read in one screen.

Defaults are the Idefics2 paper's (Laurençon et al. 2024, "What matters when building vision-language models?",
section 2.3 and appendix A.2) where it gives one; the rest say where they come from.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

# Hub ids, checked against their model cards:
# https://huggingface.co/google/siglip-so400m-patch14-384 (SigLIP so400m, patch 14, 384 px, width 1152, 27 layers)
# https://huggingface.co/mistralai/Mistral-7B-v0.1 (the language backbone of Idefics2)
# https://huggingface.co/HuggingFaceM4/idefics2-8b (the released Idefics2, for fine-tuning)
SIGLIP_SO400M = "google/siglip-so400m-patch14-384"
MISTRAL_7B = "mistralai/Mistral-7B-v0.1"
IDEFICS2_8B = "HuggingFaceM4/idefics2-8b"
TINY_TOKENIZER = "pipelines/sample_data/models/tiny-falcon"


class ConfigError(ValueError):
    """A model or training setting that cannot work: reported as one line naming the setting."""


@dataclass
class ModelConfig:
    """Which Idefics2 to train. Exactly one way to get weights: `checkpoint` (a released Idefics2 to fine-tune),
    `vision` + `text` (pretrained backbones with a new connector, as the paper builds it), or neither (every
    weight initialised from `seed`: the tiny model of the tests and the demo)."""

    name: str = "tiny"
    tokenizer: str = TINY_TOKENIZER
    checkpoint: str | None = None  # a released Idefics2 (Hub id or folder)
    vision: str | None = None  # a SigLIP vision model (Hub id or folder)
    text: str | None = None  # a Mistral-style causal LM (Hub id or folder)
    # Built from scratch when no backbone is given (sizes of the tiny model; ignored for loaded backbones):
    vision_hidden: int = 32
    vision_layers: int = 2
    vision_heads: int = 2
    vision_image_size: int = 56
    patch_size: int = 14  # SigLIP's patch (paper section 2.3)
    text_hidden: int = 64
    text_layers: int = 2
    text_heads: int = 4
    text_kv_heads: int = 2
    text_intermediate: int = 128
    # The connector, always new: perceiver resampler of 64 latents x 3 layers (paper section 2.3, "Learned pooling")
    latents: int = 64
    resampler_depth: int = 3
    resampler_heads: int = 16  # 16 heads of 96 (released idefics2-8b config)
    resampler_head_dim: int = 96
    resampler_kv_heads: int = 4
    # Images: longest side at most 980 px, shortest at least 378 px, aspect ratio kept (paper section 2.3)
    image_longest_edge: int = 980
    image_shortest_edge: int = 378
    image_splitting: bool = False  # 4 crops + the original (paper section 2.3, used in the SFT stage)


def tiny_model() -> ModelConfig:
    """A model that trains on CPU in well under a second a step: small SigLIP-style vision, small Mistral-style
    text, the paper's connector shape scaled down (16 latents x 2). Images are bounded to 28..56 px."""
    return ModelConfig(name="tiny", latents=16, resampler_depth=2, resampler_heads=2, resampler_head_dim=16,
                       resampler_kv_heads=1, image_longest_edge=56, image_shortest_edge=28)


def idefics2_8b() -> ModelConfig:
    """The paper's architecture from its backbones: SigLIP so400m + Mistral-7B, new resampler and projection."""
    return ModelConfig(name="idefics2-8b", tokenizer=MISTRAL_7B, vision=SIGLIP_SO400M, text=MISTRAL_7B)


def one_b_model() -> ModelConfig:
    """A ~1B model for throughput checks: Mistral-style text of width 2048 x 20 layers, SigLIP-base-style vision at
    378 px (width 768 x 12 layers), resampler 64 x 3; weights initialised from `seed` (no download)."""
    return ModelConfig(name="1b", vision_hidden=768, vision_layers=12, vision_heads=12, vision_image_size=378,
                       text_hidden=2048, text_layers=20, text_heads=16, text_kv_heads=8, text_intermediate=5632,
                       resampler_heads=16, resampler_head_dim=128, resampler_kv_heads=4,
                       image_longest_edge=378, image_shortest_edge=378)


PRESETS = {"tiny": tiny_model, "idefics2-8b": idefics2_8b, "1b": one_b_model}


def load_model_config(value: str) -> ModelConfig:
    """`--model`: a preset name or a JSON file of `ModelConfig` fields (unknown fields refused)."""
    if value in PRESETS:
        return PRESETS[value]()
    path = Path(value)
    if not path.is_file():
        raise ConfigError(f"--model {value}: not a preset ({', '.join(PRESETS)}) nor a JSON file")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"--model {value}: cannot read JSON ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--model {value}: not a JSON object of ModelConfig fields")
    unknown = set(data) - {f.name for f in fields(ModelConfig)}
    if unknown:
        raise ConfigError(f"--model {value}: unknown fields {sorted(unknown)}")
    return ModelConfig(**data)


@dataclass
class TrainConfig:
    """How to train. Learning rates: the paper trains the new connector fully and adapts the backbones with LoRA
    (section 2.3); the two groups get their own rate."""

    data: list[str] = field(default_factory=list)
    stage: str = "pretrain"  # "pretrain" (loss on every text token) or "sft" (loss on the answers only)
    output: str = ""
    steps: int = 100
    batch_size: int = 4
    grad_accum: int = 1
    # Rendered tokens a sample may have, a cap over all data; None: a pretraining mixture's samples keep the
    # mixture's own limit (its sources' max_tokens, template tokens not counted), other samples get 2,048
    max_length: int | None = None
    lr_new: float = 1e-4  # connector (and every weight of a model without pretrained backbones)
    lr_adapted: float = 1e-5  # LoRA/DoRA adapters on the backbones
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 10
    min_lr_ratio: float = 0.1  # cosine decays to this fraction of the peak
    clip_norm: float = 1.0
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~30% more compute
    adapter: str = "auto"  # lora, dora, none (full training), auto: dora with pretrained backbones, else none
    lora_rank: int = 8
    lora_alpha: int = 8
    neftune_alpha: float = 5.0  # NEFTune noise in SFT (Jain et al. 2023, arXiv 2310.05914, their default 5)
    seed: int = 0
    length_buffer: int = 64  # samples sorted by length at a time (batches drawn from one buffer)
    workers: int = 2
    prefetch: int = 2
    log_every: int = 1
    checkpoint_every: int = 50
    stop_after: int | None = None  # stop after this many steps of this run (a job's time limit); rerun to resume
    peak_tflops: float | None = None  # the accelerator's dense bf16 peak, for MFU; guessed from the GPU name

    def identity(self) -> dict:
        """What must not change between a run and its resume (everything that changes the results)."""
        keep = asdict(self)
        for name in ("output", "workers", "prefetch", "log_every", "checkpoint_every", "stop_after", "peak_tflops"):
            keep.pop(name)
        keep["betas"] = list(keep["betas"])
        return keep
