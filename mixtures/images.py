"""A mixture's images: fitted within the stage's cap (aspect ratio kept, never enlarged past it), scaled up at
random where the stage asks for it (paper, section 4.1: "we randomly scale up images to adequately cover the
distribution of potential image sizes"), and re-encoded as JPEG at a fixed quality without metadata, so that the
same seed gives the same bytes.
"""

from __future__ import annotations

import io
import random
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from filters.image_decode import DEFAULT_MAX_PIXELS


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
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise ImageProblem("too_many_pixels") from None
    except (UnidentifiedImageError, OSError, ValueError):
        raise ImageProblem("not_an_image") from None
    if width * height > max_pixels or width < 1 or height < 1:
        raise ImageProblem("too_many_pixels")
    longest = max(width, height)
    side = target_side(longest, rule, draw)
    size = (max(1, round(width * side / longest)), max(1, round(height * side / longest)))
    try:
        if image.format == "JPEG" and side < longest:
            image.draft("RGB", size)  # decode at a reduced scale: much faster for large JPEGs
        image = image.convert("RGB")
        if image.size != size:
            image = image.resize(size, Image.Resampling.BICUBIC, reducing_gap=2.0 if side < longest else None)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=rule.quality)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        raise ImageProblem("corrupt") from None
    return buffer.getvalue(), size[0], size[1]
