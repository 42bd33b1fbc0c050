"""Check that bytes are an image, and optionally store it downscaled: the decode half of image acquisition.

The one place that opens image bytes to check them (`open_checked`) and fits them to a size (`resized_rgb`): the
pipelines' `images` step, the mixture builder and the trainer all go through it. The step's decode also seeds
`filters.pixels`, so the later steps that look at pixels (NSFW, decontamination) find the image there instead of
decoding it again.
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


class ImageRefused(ValueError):
    """Bytes refused before any pixel is decoded: `reason` is "not_an_image" or "too_many_pixels"."""

    def __init__(self, reason: str, detail: str, image: Image.Image | None = None):
        super().__init__(detail)
        self.reason = reason
        self.size = image.size if image is not None else (None, None)
        self.format = (image.format or "unknown").lower() if image is not None else None


DAMAGED = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)  # what Pillow raises decoding bad data


def open_checked(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """`data` opened lazily (its header read, no pixels yet); raises ImageRefused for bytes that are not an
    image and for images over `max_pixels` (Pillow's bomb warning becomes a refusal, not a log line)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as error:
        raise ImageRefused("too_many_pixels", str(error)) from None
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise ImageRefused("not_an_image", str(error) or type(error).__name__) from None
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageRefused("not_an_image", f"{width}x{height} pixels", image)
    if width * height > max_pixels:
        raise ImageRefused("too_many_pixels", f"{width}x{height} > {max_pixels} pixels", image)
    return image


def fit_within(width: int, height: int, max_side: int) -> tuple[int, int]:
    """The size with the longest side `max_side` and the aspect ratio kept."""
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def resized_rgb(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """RGB pixels of an opened image at `size`, decoded to the end. A JPEG that shrinks is decoded at reduced
    size first (`Image.draft`: the decoder skips the DCT coefficients it does not need, about 3x faster than a
    full decode); shrinking uses a reducing filter. Raises one of `DAMAGED` on truncated or damaged data."""
    shrinking = size[0] < image.width or size[1] < image.height
    if image.format == "JPEG" and shrinking:
        image.draft("RGB", size)
    image = image.convert("RGB")
    if image.size != size:
        image = image.resize(size, Image.Resampling.BICUBIC, reducing_gap=2.0 if shrinking else None)
    return image


def encode_jpeg(image: Image.Image, quality: int = JPEG_QUALITY) -> bytes:
    """JPEG bytes without metadata: the same pixels and quality give the same bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, max_side: int | None = None) -> DecodedImage:
    """Decode `data` to its last byte (a truncated file fails here, not in training) and downscale it if asked.

    With `max_side`, a larger image is resized with a reducing filter and stored as JPEG; others keep their
    original bytes. The stored bytes' working copy (`filters.pixels`) is what checks them: the entropy-coded
    data of a JPEG is read to the end even at reduced size, so a truncated file fails there too, and later
    steps get from the cache exactly the pixels they would decode themselves (a cache hit or miss never
    changes a score).
    """
    try:
        image = open_checked(data, max_pixels)
    except ImageRefused as refused:
        return DecodedImage(refused.reason, error=str(refused), original_width=refused.size[0],
                            original_height=refused.size[1], format=refused.format)
    width, height = image.size
    result = DecodedImage("ok", original_width=width, original_height=height,
                          format=(image.format or "unknown").lower())
    try:
        if max_side and max(width, height) > max_side:
            size = fit_within(width, height, max_side)
            result.data, (result.width, result.height) = encode_jpeg(resized_rgb(image, size)), size
        else:
            result.data, result.width, result.height = data, width, height
        pixels.remember(result.data, pixels.decode_working(result.data))
    except DAMAGED as error:  # truncated or damaged
        return DecodedImage("corrupt", error=str(error), original_width=width, original_height=height,
                            format=result.format)
    return result
