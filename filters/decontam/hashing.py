"""Fingerprints of an image: an exact one (sha256 of the decoded pixels) and 64-bit perceptual hashes.

The perceptual hash is pHash (the DCT of a 32x32 grey thumbnail, 8x8 low frequencies against their median):
stable under re-encoding, resizing, grey conversion and brightness changes (facts.md: Hamming distance <= 8),
but not under mirroring or cropping. So an evaluation image is indexed with the hashes of its mirror and of a
few inward crops too, and a training copy that was flipped or trimmed still lands near one of them.
"""

from __future__ import annotations

import hashlib
import io

import imagehash
import numpy as np
from PIL import Image, ImageOps

# (left, top, right, bottom) fractions cut from each side: the original, trims of 2.5% and 5% all round, and
# 5% off one side at a time (copies are often trimmed unevenly)
CROPS = ((0, 0, 0, 0), (0.025,) * 4, (0.05,) * 4, (0.05, 0, 0, 0), (0, 0.05, 0, 0), (0, 0, 0.05, 0),
         (0, 0, 0, 0.05), (0.05, 0.05, 0, 0), (0, 0, 0.05, 0.05))


def open_image(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def pixel_sha256(image: Image.Image) -> str:
    """Identical pixels, whatever the container or metadata: the team's md5-of-pixels check, with sha256."""
    rgb = image.convert("RGB")
    return hashlib.sha256(f"{rgb.width}x{rgb.height}".encode() + rgb.tobytes()).hexdigest()


def phash(image: Image.Image) -> int:
    bits = imagehash.phash(image).hash.flatten()
    return int(np.packbits(bits).view(">u8")[0])


def _crop(image: Image.Image, box: tuple[float, float, float, float]) -> Image.Image:
    left, top, right, bottom = box
    w, h = image.size
    return image.crop((round(w * left), round(h * top), round(w * (1 - right)), round(h * (1 - bottom))))


def index_hashes(image: Image.Image) -> list[tuple[str, int]]:
    """(variant, pHash) for the image, its crops, and the mirror of each: what an evaluation image indexes."""
    grey = image.convert("L")
    mirror = ImageOps.mirror(grey)
    variants = []
    for box in CROPS:
        name = "crop" + "-".join(f"{c:g}" for c in box) if any(box) else "original"
        variants.append((name, phash(_crop(grey, box))))
        mirrored_box = (box[2], box[1], box[0], box[3])
        variants.append(("mirror-" + name, phash(_crop(mirror, mirrored_box))))
    return variants


def hamming(a: int | np.ndarray, b: int | np.ndarray) -> int | np.ndarray:
    return np.bitwise_count(np.bitwise_xor(np.uint64(a) if isinstance(a, int) else a,
                                           np.uint64(b) if isinstance(b, int) else b))
