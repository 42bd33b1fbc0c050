"""Fingerprints of an image: an exact one (a hash of the working copy's pixels) and 64-bit perceptual hashes.

Both are computed from the shared working copy (`filters.pixels`: RGB, longest side at most 448 px), for
evaluation images at build time and for training images at match time, so distances stay comparable and the
decode is shared with the other pixel steps.

The perceptual hash is pHash (the DCT of a 32x32 grey thumbnail, 8x8 low frequencies against their median).
Being linear, it ignores brightness and contrast changes that clip nothing, and it survives re-encoding, resizing
and grey conversion; it does not survive mirroring, cropping, or the per-channel clipping of strong photometric
edits (on saturated or low-texture images, +30% brightness moved it by 10 to 14 bits). So an evaluation image is
indexed with several variants (its mirror, inward crops, and brightened, higher-contrast, gamma-lifted and
saturated copies), and a training image is queried with a few inward crops of itself, so that a benchmark image
that was cut out of a larger web image (up to 10% a side) is still found. The recall table in
tests/test_decontam.py measures each case.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

THUMB_SIDE, LOW_FREQUENCIES = 32, 8  # pHash's usual sizes (imagehash's defaults)
# less than 2 grey levels of variation in the 32x32 thumbnail: nothing for a perceptual hash to hold on to (the
# DCT collapses to its DC term, and every flat image would get the same hash); such images match exactly or not
# at all. The least textured natural image of the test set varies by 3.2 levels.
FLAT_STD = 2.0

Box = tuple[float, float, float, float]  # fractions cut from the left, top, right and bottom
# evaluation side: the original, trims of 2.5% and 5% all round, 5% off one side at a time (copies are often
# trimmed unevenly) and off two adjacent sides; each also mirrored
INDEX_CROPS: tuple[Box, ...] = ((0, 0, 0, 0), (0.025,) * 4, (0.05,) * 4, (0.05, 0, 0, 0), (0, 0.05, 0, 0),
                                (0, 0, 0.05, 0), (0, 0, 0, 0.05), (0.05, 0.05, 0, 0), (0, 0, 0.05, 0.05))
# training side: the image, and trims of 4% and 8% all round. A training image that extends the benchmark's
# by p a side (p <= 10%) trimmed by the nearest of these is within +1.5% / -5% of it, inside what the index's
# inward crops catch
QUERY_CROPS: tuple[Box, ...] = ((0, 0, 0, 0), (0.04,) * 4, (0.08,) * 4)


def _gamma(value: float) -> Callable[[Image.Image], Image.Image]:
    table = [round(255 * (v / 255) ** value) for v in range(256)]
    return lambda image: image.point(table * len(image.getbands()))


# photometric variants of the whole evaluation image (and its mirror): the edits that clip channels and so move
# the hash. One mid-range setting each covers the +-30% range the recall table tests.
PHOTOMETRIC: dict[str, Callable[[Image.Image], Image.Image]] = {
    "brighter": lambda image: ImageEnhance.Brightness(image).enhance(1.25),
    "contrast": lambda image: ImageEnhance.Contrast(image).enhance(1.3),
    "gamma": _gamma(0.8),
    "saturated": lambda image: ImageEnhance.Color(image).enhance(1.5),
}


def _dct_rows(n: int = THUMB_SIDE, k: int = LOW_FREQUENCIES) -> np.ndarray:
    x = np.arange(n)
    return np.cos(np.pi * (2 * x[None, :] + 1) * np.arange(k)[:, None] / (2 * n))


_DCT = _dct_rows()  # the k lowest DCT-II basis rows: D @ X @ D.T is the thumbnail's low-frequency block


def pixel_key(working: Image.Image) -> str:
    """Identical pixels: blake2b of the working copy (about 0.6 ms), in place of a sha256 of the full decode
    (60-70 ms on a 6 MP image). Two images with the same working copy are the same picture at 448 px."""
    digest = hashlib.blake2b(f"{working.mode}{working.width}x{working.height}".encode(), digest_size=16)
    digest.update(working.tobytes())
    return digest.hexdigest()


def phash(grey: Image.Image, box: Box = (0, 0, 0, 0)) -> int | None:
    """pHash of the region `box` of a grey image; None when the region is near-flat (its hash is noise)."""
    w, h = grey.size
    left, top, right, bottom = box
    region = (w * left, h * top, w * (1 - right), h * (1 - bottom))
    thumb = np.asarray(grey.resize((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BOX, box=region), dtype=np.float64)
    if thumb.std() < FLAT_STD:
        return None
    low = (_DCT @ thumb @ _DCT.T).ravel()
    return int(np.packbits(low > np.median(low)).view(">u8")[0])


def _mirrored(box: Box) -> Box:
    return box[2], box[1], box[0], box[3]


def _crop_name(box: Box) -> str:
    return "crop" + "-".join(f"{c:g}" for c in box) if any(box) else "original"


def index_hashes(working: Image.Image) -> list[tuple[str, int]]:
    """(variant, pHash) of every indexed variant of an evaluation image's working copy; near-flat ones omitted."""
    grey = working.convert("L")
    mirror = ImageOps.mirror(grey)
    variants = []
    for box in INDEX_CROPS:
        variants += [(_crop_name(box), phash(grey, box)), ("mirror-" + _crop_name(box), phash(mirror, _mirrored(box)))]
    rgb = working.convert("RGB")
    for name, edit in PHOTOMETRIC.items():
        edited = edit(rgb).convert("L")
        variants += [(name, phash(edited)), ("mirror-" + name, phash(ImageOps.mirror(edited)))]
    return [(name, value) for name, value in variants if value is not None]


def query_hashes(working: Image.Image) -> list[int]:
    """The pHashes a training image is looked up with (itself and its inward crops); [] when it is near-flat."""
    grey = working.convert("L")
    return [value for box in QUERY_CROPS if (value := phash(grey, box)) is not None]

