"""Decoded pixels shared by every step of a task: an image is decoded once, not once per step that looks at it.

The steps that judge pixels (NSFW, decontamination) need a small RGB copy, not the full image: the models
resize to 224 px and perceptual hashes to 32 px. `working_image` returns that copy (longest side at most
`WORKING_SIDE`), decoded with the JPEG decoder's reduced-size mode, from a process-wide cache keyed by the
bytes' hash and bounded in memory, so a task decodes each image once whatever the number of steps, and memory
stays flat in the shard size. The `images` step seeds the cache with the working copy it decodes anyway to
check the image, so the copy is the same whichever step decodes it first (scores never depend on the cache).
The last step that reads pixels (decontamination, last in every pipeline's declared order) takes its copy out
and stores none it decodes, so an image leaves the cache once every pixel step has read it (images of documents
removed before decontamination stay until evicted), and PDFA's cache, whose only pixel step is that one, stays
empty.
"""

from __future__ import annotations

import hashlib
import io
import threading
from collections import OrderedDict

from PIL import Image

WORKING_SIDE = 448  # covers CLIP/SigLIP inputs (224-384 px) and the 32 px perceptual hashes with margin
CACHE_BYTES = 256 * 2**20  # about 400 working copies at 448 px; an evicted image is decoded again, never lost


def content_key(data: bytes) -> str:
    """The key of an image's scores and decoded pixels: a hash of its bytes (blake2b, 16 bytes, about 1 GB/s)."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def reduce_to_working(image: Image.Image) -> Image.Image:
    """An RGB copy with its longest side at most `WORKING_SIDE` (the image itself if already small and RGB)."""
    scale = WORKING_SIDE / max(image.size)
    if scale < 1:
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        return image.convert("RGB").resize(size, Image.Resampling.BICUBIC, reducing_gap=2.0)
    return image if image.mode == "RGB" else image.convert("RGB")


def decode_working(data: bytes) -> Image.Image:
    """Decode `data` straight to a working copy; JPEGs decode at reduced size (`Image.draft`). Raises what
    Pillow raises for bytes that are not an image."""
    image = Image.open(io.BytesIO(data))
    if image.format == "JPEG" and max(image.size) > WORKING_SIDE:
        scale = WORKING_SIDE / max(image.size)
        image.draft("RGB", (round(image.width * scale), round(image.height * scale)))
    image.load()
    return reduce_to_working(image)


def _cost(image: Image.Image) -> int:
    return image.width * image.height * len(image.getbands())


class _PixelCache:
    """Least recently used working copies, bounded by their pixel bytes; thread-safe."""

    def __init__(self, max_bytes: int):
        self.max_bytes, self.size = max_bytes, 0
        self._images: OrderedDict[str, Image.Image] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> Image.Image | None:
        with self._lock:
            image = self._images.get(key)
            if image is not None:
                self._images.move_to_end(key)
            return image

    def put(self, key: str, image: Image.Image) -> None:
        cost = _cost(image)
        with self._lock:
            if key in self._images or cost > self.max_bytes:
                return
            self._images[key] = image
            self.size += cost
            while self.size > self.max_bytes:
                _, old = self._images.popitem(last=False)
                self.size -= _cost(old)

    def take(self, key: str) -> Image.Image | None:
        with self._lock:
            image = self._images.pop(key, None)
            if image is not None:
                self.size -= _cost(image)
            return image

    def clear(self) -> None:
        with self._lock:
            self._images.clear()
            self.size = 0


_CACHE = _PixelCache(CACHE_BYTES)
decodes = 0  # working copies decoded from bytes in this process (the benchmark counts them)


def remember(data: bytes, image: Image.Image) -> None:
    """Seed the cache with the working copy of `data` a step has decoded anyway (`decode_working(data)`)."""
    _CACHE.put(content_key(data), reduce_to_working(image))


def working_image(data: bytes, last_use: bool = False) -> Image.Image:
    """The working copy of the image `data`, decoded at most once while it stays in the cache. With `last_use`
    (the task's last pixel step) the copy leaves the cache, and one decoded here is not stored."""
    global decodes
    key = content_key(data)
    image = _CACHE.take(key) if last_use else _CACHE.get(key)
    if image is None:
        image = decode_working(data)
        decodes += 1
        if not last_use:
            _CACHE.put(key, image)
    return image
