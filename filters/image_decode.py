"""Check that bytes are an image, and optionally store it downscaled: the decode half of image acquisition.

The one place that opens image bytes to check them. Its decode also seeds `filters.pixels`, so the later steps
that look at pixels (NSFW, decontamination) find the image there instead of decoding it again.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from filters import pixels

# The project's one list of image file extensions (tar members, image folders). img2dataset writes .jpg by default
# and .png or .webp on request (its Resizer's `encode_format`); the rest are what evaluation sets ship.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
# Pillow's own decompression-bomb threshold (PIL.Image.MAX_IMAGE_PIXELS, about 89.5 MP): above it we refuse to
# decode rather than let one image take gigabytes of memory.
DEFAULT_MAX_PIXELS = 89_478_485
JPEG_QUALITY = 95  # img2dataset's default encode quality


@dataclass
class DecodedImage:
    status: str  # "ok", "not_an_image", "corrupt" or "too_many_pixels"
    data: bytes | None = None  # what to store: the original bytes, or the downscaled JPEG
    width: int | None = None  # of the stored image
    height: int | None = None
    original_width: int | None = None
    original_height: int | None = None
    format: str | None = None  # of the original ("jpeg", "png", ...)
    error: str = ""


def _fit(width: int, height: int, max_side: int) -> tuple[int, int]:
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _downscaled(image: Image.Image, max_side: int) -> tuple[bytes, tuple[int, int]]:
    """JPEG bytes of `image` fitted within `max_side`; a JPEG is decoded at reduced size first (`Image.draft`:
    the decoder skips the DCT coefficients it does not need, about 3x faster than a full decode)."""
    target = _fit(image.width, image.height, max_side)
    if image.format == "JPEG":
        image.draft("RGB", target)
    image = image.convert("RGB").resize(target, Image.Resampling.BICUBIC, reducing_gap=2.0)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue(), target


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, max_side: int | None = None) -> DecodedImage:
    """Decode `data` to its last byte (a truncated file fails here, not in training) and downscale it if asked.

    With `max_side`, a larger image is resized with a reducing filter and stored as JPEG; others keep their
    original bytes. The stored bytes' working copy (`filters.pixels`) is what checks them: the entropy-coded
    data of a JPEG is read to the end even at reduced size, so a truncated file fails there too, and later
    steps get from the cache exactly the pixels they would decode themselves (a cache hit or miss never
    changes a score).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as error:
        return DecodedImage("too_many_pixels", error=str(error))
    except (UnidentifiedImageError, OSError, ValueError) as error:
        return DecodedImage("not_an_image", error=str(error) or type(error).__name__)
    result = DecodedImage("ok", original_width=width, original_height=height,
                          format=(image.format or "unknown").lower())
    if width * height > max_pixels:
        return DecodedImage("too_many_pixels", error=f"{width}x{height} > {max_pixels} pixels",
                            original_width=width, original_height=height, format=result.format)
    try:
        if max_side and max(width, height) > max_side:
            result.data, (result.width, result.height) = _downscaled(image, max_side)
        else:
            result.data, result.width, result.height = data, width, height
        pixels.remember(result.data, pixels.decode_working(result.data))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:  # truncated or damaged
        return DecodedImage("corrupt", error=str(error), original_width=width, original_height=height,
                            format=result.format)
    return result
