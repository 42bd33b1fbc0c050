"""A mixture's images: fitted within the stage's cap (aspect ratio kept, never enlarged past it), scaled up at
random where the stage asks for it (paper, section 4.1: "we randomly scale up images to adequately cover the
distribution of potential image sizes"), and re-encoded as JPEG at a fixed quality without metadata, so that the
same seed gives the same bytes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from filters.image_decode import (DAMAGED, DEFAULT_MAX_PIXELS, ImageRefused, encode_jpeg, fit_within, open_checked,
                                  resized_rgb)


class ImageProblem(ValueError):
    """The bytes are not a usable image: `reason` is not_an_image, too_many_pixels or corrupt."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ImageRule:
    max_side: int
    scale_up_probability: float = 0.0
    quality: int = 90


def target_side(longest: int, rule: ImageRule, draw: random.Random) -> int:
    """The longest side to store: the cap for larger images; for smaller ones their own, or with the scale-up
    probability a uniform draw between their own and the cap. Two draws every time, so the stream of random
    numbers does not depend on the image."""
    scale, size = draw.random(), draw.random()
    if longest >= rule.max_side:
        return rule.max_side
    if scale < rule.scale_up_probability:
        return longest + int(size * (rule.max_side - longest + 1))
    return longest


def fit_image(data: bytes, rule: ImageRule, draw: random.Random,
              max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[bytes, int, int]:
    """(JPEG bytes, width, height) of `data` under `rule`; raises ImageProblem."""
    try:
        image = open_checked(data, max_pixels)
    except ImageRefused as refused:
        raise ImageProblem(refused.reason) from None
    longest = max(image.size)
    size = fit_within(*image.size, target_side(longest, rule, draw))
    try:
        return encode_jpeg(resized_rgb(image, size), rule.quality), size[0], size[1]
    except DAMAGED:
        raise ImageProblem("corrupt") from None
