"""Build the tiny real models that ship in `pipelines/sample_data/models/`, offline, in about two minutes on CPU.

    python scripts/make_tiny_models.py

- tiny-falcon: a byte-level BPE tokenizer and a `FalconForCausalLM` shaped like tiiuae/falcon-rw-1b (ALiBi,
  multi-head attention, sequential blocks, biases) but 2 layers of width 128, trained on the docstrings of
  Python's standard library (English prose every CPython carries, disjoint from the sample documents' text).
- tiny-nsfw-vit: a `ViTForImageClassification` (labels safe / nsfw) trained on the synthetic proxy task of
  `pipelines.sample_models`: flagged = magenta blobs; safe = the sample's photographs and other blobs.
- tiny-clip + tiny-clip-nsfw-head.safetensors: a randomly initialised `CLIPVisionModelWithProjection` and a
  LAION-style detector head (LAION-AI/CLIP-based-NSFW-Detector) trained on its embeddings of the same task.
"""

from __future__ import annotations

import importlib
import inspect
import io
import random
import re
import sys
import tarfile
import warnings
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    CLIPVisionConfig, CLIPVisionModelWithProjection, FalconConfig, FalconForCausalLM, PreTrainedTokenizerFast,
    ViTConfig, ViTForImageClassification, ViTImageProcessor,
)

from filters.nsfw import ClipNsfwHead
from pipelines.sample_models import TINY_CLIP, TINY_CLIP_NSFW_HEAD, TINY_FALCON, TINY_NSFW_VIT, blob_image

OUT = Path(__file__).resolve().parent.parent / "pipelines" / "sample_data" / "models"
SAMPLE_IMAGES = Path(__file__).resolve().parent.parent / "pipelines" / "sample_data" / "img2dataset" / "00000.tar"
SKIP_MODULES = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "lib2to3", "ensurepip",
                "venv", "__phello__", "pydoc_data"}
EOS = "<|endoftext|>"


def stdlib_docstrings() -> list[str]:
    """English paragraphs from the docstrings of the standard library's modules, classes and functions."""
    paragraphs, seen = [], set()
    warnings.simplefilter("ignore")
    for name in sorted(sys.stdlib_module_names - SKIP_MODULES):
        try:
            module = importlib.import_module(name)
        except Exception:  # noqa: BLE001 - platform-specific modules
            continue
        objects = [module] + [getattr(module, a) for a in sorted(dir(module)) if not a.startswith("_")]
        for obj in objects:
            doc = inspect.getdoc(obj) if inspect.ismodule(obj) or inspect.isclass(obj) or callable(obj) else None
            for block in re.split(r"\n\s*\n", doc or ""):
                text = " ".join(line.strip() for line in block.splitlines())
                letters = sum(c.isalpha() or c == " " for c in text)
                if len(text) >= 80 and letters / len(text) > 0.85 and text not in seen:
                    seen.add(text)
                    paragraphs.append(text)
    return paragraphs


def make_falcon(paragraphs: list[str]) -> None:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(paragraphs, trainers.BpeTrainer(
        vocab_size=2048, special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS, pad_token=EOS)
    config = FalconConfig(vocab_size=len(fast), hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                          alibi=True, multi_query=False, parallel_attn=False, new_decoder_architecture=False,
                          bias=True, bos_token_id=fast.eos_token_id, eos_token_id=fast.eos_token_id,
                          pad_token_id=fast.eos_token_id)
    model = FalconForCausalLM(config)
    ids = [i for p in paragraphs for i in fast(p + "\n\n", add_special_tokens=False)["input_ids"]]
    data = torch.tensor(ids)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    steps, length, batch = 1500, 128, 16
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for step in range(steps):
        starts = torch.randint(0, len(data) - length - 1, (batch,), generator=generator)
        inputs = torch.stack([data[s:s + length] for s in starts])
        loss = model(input_ids=inputs, labels=inputs).loss
        loss.backward()
        optimizer.step(), schedule.step(), optimizer.zero_grad()
        if step % 250 == 0 or step == steps - 1:
            print(f"  falcon step {step:4d}: loss {loss.item():.3f}", flush=True)
    model.eval()
    model.save_pretrained(OUT / TINY_FALCON)
    fast.save_pretrained(OUT / TINY_FALCON)
    print(f"tiny-falcon: {sum(p.numel() for p in model.parameters()):,} parameters, {len(ids):,} training tokens")


def labelled_images(rng: random.Random, count: int) -> tuple[list[Image.Image], list[int]]:
    """Half flagged blobs; half safe: the sample's photographs (random crops) and blobs in other hues."""
    with tarfile.open(SAMPLE_IMAGES) as tar:
        photos = [Image.open(io.BytesIO(tar.extractfile(m).read())).convert("RGB") for m in tar
                  if m.name.endswith(".jpg")]
    images, labels = [], []
    for i in range(count):
        flagged = i % 2 == 0
        if not flagged and rng.random() < 0.5:
            photo = rng.choice(photos)
            side = rng.randint(48, min(photo.size))
            x, y = rng.randrange(photo.width - side + 1), rng.randrange(photo.height - side + 1)
            images.append(photo.crop((x, y, x + side, y + side)))
        else:
            images.append(blob_image(rng, flagged))
        labels.append(int(flagged))
    return images, labels


def train_classifier(forward, parameters, pixels: torch.Tensor, labels: torch.Tensor, steps: int, name: str) -> None:
    optimizer = torch.optim.AdamW(parameters, lr=2e-3)
    generator = torch.Generator().manual_seed(0)
    for step in range(steps):
        batch = torch.randint(0, len(labels), (32,), generator=generator)
        loss = torch.nn.functional.cross_entropy(forward(pixels[batch]), labels[batch])
        loss.backward()
        optimizer.step(), optimizer.zero_grad()
        if step % 100 == 0 or step == steps - 1:
            print(f"  {name} step {step:4d}: loss {loss.item():.3f}", flush=True)


def make_nsfw_vit(images: list[Image.Image], labels: torch.Tensor) -> None:
    processor = ViTImageProcessor(size={"height": 32, "width": 32}, do_normalize=True, image_mean=[0.5] * 3,
                                  image_std=[0.5] * 3)
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=48, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=96, num_labels=2, id2label={0: "safe", 1: "nsfw"},
                       label2id={"safe": 0, "nsfw": 1})
    model = ViTForImageClassification(config)
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    model.train()
    train_classifier(lambda x: model(pixel_values=x).logits, model.parameters(), pixels, labels, 600, "nsfw-vit")
    model.eval()
    model.save_pretrained(OUT / TINY_NSFW_VIT)
    processor.save_pretrained(OUT / TINY_NSFW_VIT)


def make_clip_detector(images: list[Image.Image], labels: torch.Tensor) -> None:
    processor = ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.48145466, 0.4578275, 0.40821073],
                                  image_std=[0.26862954, 0.26130258, 0.27577711])  # CLIP's normalisation
    config = CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=48, intermediate_size=96,
                              num_hidden_layers=2, num_attention_heads=2, projection_dim=32)
    clip = CLIPVisionModelWithProjection(config).eval()
    clip.save_pretrained(OUT / TINY_CLIP)
    processor.save_pretrained(OUT / TINY_CLIP)
    with torch.no_grad():
        embeddings = clip(pixel_values=processor(images=images, return_tensors="pt")["pixel_values"]).image_embeds
    head = ClipNsfwHead(config.projection_dim)
    head.fit_normalization(embeddings)
    two_class = lambda x: torch.cat([torch.zeros_like(head(x)), head(x)], dim=1)  # noqa: E731 - logit vs 0
    train_classifier(two_class, head.parameters(), embeddings, labels, 800, "clip-head")
    save_file(head.state_dict(), OUT / TINY_CLIP_NSFW_HEAD)


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    make_falcon(stdlib_docstrings())
    images, labels = labelled_images(random.Random(0), 1200)
    labels = torch.tensor(labels)
    make_nsfw_vit(images, labels)
    make_clip_detector(images, labels)
    print(f"wrote {sorted(p.name for p in OUT.iterdir())} under {OUT}")


if __name__ == "__main__":
    main()
