"""Decode + downscale + re-encode of multi-megapixel JPEGs: ours against plain Pillow and img2dataset's resizer.

    python benchmarks/resize_bench.py [--images 12] [--repeat 3]

All three get the same bytes in the same run; the table gives images/s per core and ratios. img2dataset is a
benchmark-only peer: `pip install --no-deps img2dataset==1.47.0 exifread-nocycle==3.0.1
opencv-python-headless==4.14.0.94 albumentations==1.4.24 albucore==0.0.23 simsimd==6.5.16 stringzilla==5.3.2`
(its own dependency pins clash with ours, so only its resizer module is loaded). Without it, that column is
skipped.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import os
import site
import tarfile
import time
from importlib import resources

import numpy as np
from PIL import Image

from filters.image_decode import JPEG_QUALITY, decode_image


def test_jpegs(count: int, size: tuple[int, int] = (3000, 2000)) -> list[bytes]:
    """Multi-megapixel JPEGs made from the shipped sample photographs, upscaled, with sensor-like noise."""
    sample = resources.files("pipelines").joinpath("sample_data", "img2dataset", "00000.tar")
    rng = np.random.default_rng(0)
    images = []
    with tarfile.open(str(sample)) as tar:
        for member in tar:
            if member.name.endswith(".jpg") and len(images) < count:
                photo = Image.open(tar.extractfile(member)).convert("RGB").resize(size, Image.Resampling.BICUBIC)
                noisy = np.asarray(photo, dtype=np.int16) + rng.normal(0, 6, (size[1], size[0], 3)).astype(np.int16)
                buffer = io.BytesIO()
                Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=90)
                images.append(buffer.getvalue())
    return images


def plain_pillow(data: bytes, max_side: int) -> bytes:
    image = Image.open(io.BytesIO(data)).convert("RGB")
    scale = max_side / max(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def ours(data: bytes, max_side: int) -> bytes:
    return decode_image(data, max_side=max_side).data


def img2dataset_resizer(max_side: int):
    """img2dataset's Resizer (keep_ratio_largest = longest side to max_side), or None if not installed."""
    path = next((os.path.join(p, "img2dataset", "resizer.py") for p in site.getsitepackages()
                 if os.path.exists(os.path.join(p, "img2dataset", "resizer.py"))), None)
    if path is None:
        return None
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    spec = importlib.util.spec_from_file_location("img2dataset_resizer", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    resizer = module.Resizer(image_size=max_side, resize_mode=module.ResizeMode.keep_ratio_largest,
                             resize_only_if_bigger=True, encode_quality=JPEG_QUALITY)
    return lambda data, _max_side: resizer(io.BytesIO(data))[0]


def psnr(a: bytes, b: bytes) -> float:
    x = np.asarray(Image.open(io.BytesIO(a)).convert("RGB"), dtype=np.float64)
    y = np.asarray(Image.open(io.BytesIO(b)).convert("RGB").resize(Image.open(io.BytesIO(a)).size), dtype=np.float64)
    return 10 * np.log10(255**2 / max(np.mean((x - y) ** 2), 1e-9))


def rate(function, images: list[bytes], max_side: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for data in images:
            function(data, max_side)
        best = min(best, time.perf_counter() - start)
    return len(images) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    images = test_jpegs(args.images)
    megapixels = Image.open(io.BytesIO(images[0])).width * Image.open(io.BytesIO(images[0])).height / 1e6
    print(f"{len(images)} JPEGs of {megapixels:.1f} MP, best of {args.repeat}, one core\n")
    print(f"{'max side':>8} | {'ours img/s':>10} | {'Pillow img/s':>12} | {'img2dataset img/s':>17} | "
          f"{'ours/Pillow':>11} | {'ours/img2dataset':>16} | {'PSNR ours vs Pillow':>19}")
    for max_side in (384, 980):
        mine, plain = rate(ours, images, max_side, args.repeat), rate(plain_pillow, images, max_side, args.repeat)
        peer = img2dataset_resizer(max_side)
        theirs = rate(peer, images, max_side, args.repeat) if peer else float("nan")
        quality = np.mean([psnr(ours(d, max_side), plain_pillow(d, max_side)) for d in images[:4]])
        print(f"{max_side:>8} | {mine:>10.1f} | {plain:>12.1f} | {theirs:>17.1f} | {mine / plain:>10.2f}x | "
              f"{mine / theirs:>15.2f}x | {quality:>16.1f} dB")
    if img2dataset_resizer(384) is None:
        print("\nimg2dataset is not installed: see this file's docstring")


if __name__ == "__main__":
    main()
