"""The tiny real models that ship with the package, and the synthetic images the NSFW one was trained on.

Built by `scripts/make_tiny_models.py`; used by the demo and the tests through the same loading code as the Hub
models (`from_pretrained` on a local path). They are small but real: the Falcon was trained on English prose,
the classifiers on images whose labels they really learned to tell apart.

The NSFW stand-in task: no explicit imagery can ship here, so the "flagged" class is a synthetic proxy,
images dominated by large saturated magenta/pink blobs; the "safe" class is natural photographs (the
sample's) and blobs in other hues. A test can then check that scores mean something.
"""

from __future__ import annotations

import colorsys
import random

from PIL import Image, ImageDraw, ImageFilter


TINY_FALCON = "tiny-falcon"  # FalconForCausalLM + byte-level BPE, trained on Python's stdlib docstrings
TINY_NSFW_VIT = "tiny-nsfw-vit"  # ViTForImageClassification, labels {"safe", "nsfw"}
TINY_CLIP = "tiny-clip"  # CLIPVisionModelWithProjection (random init: an embedding, not a judgment)
TINY_CLIP_NSFW_HEAD = "tiny-clip-nsfw-head.safetensors"  # LAION-style head trained on tiny-clip's embeddings


def blob_image(rng: random.Random, flagged: bool, size: int = 96) -> Image.Image:
    """A noisy background with 2-4 large soft blobs; magenta/pink hues when `flagged`, other hues otherwise."""
    background = tuple(rng.randrange(40, 200) for _ in range(3))
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(2, 4)):
        hue = rng.uniform(0.83, 0.97) if flagged else rng.choice([rng.uniform(0.05, 0.75)])
        r, g, b = colorsys.hsv_to_rgb(hue, rng.uniform(0.6, 1.0), rng.uniform(0.7, 1.0))
        radius = rng.randint(size // 5, size // 2)
        x, y = rng.randrange(size), rng.randrange(size)
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=(int(r * 255), int(g * 255), int(b * 255)))
    return image.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 2.5)))
