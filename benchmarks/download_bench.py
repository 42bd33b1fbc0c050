"""Images/s through the `images` step's fetcher from an image host on loopback, by number of threads.

    python benchmarks/download_bench.py [--images 400] [--latency 0.05]

The host is the tests' threaded Python server on the same 2 cores, answering after `--latency` seconds (a
stand-in for the round trips of the real web; 0 measures the fetcher's own CPU cost: per-hop address checks,
streaming with a size cap, full decode). Compares 1 thread (the obvious loop) with N threads, with the per-host
politeness limit lifted and at its default of 4.
"""

from __future__ import annotations

import argparse
import sys
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from filters.image_fetch import FetchConfig, ImageFetcher  # noqa: E402
from tests.http_servers import ImageHost  # noqa: E402


def sample_photo() -> bytes:
    """One of the shipped sample photographs (a real JPEG of typical web size)."""
    sample = resources.files("pipelines").joinpath("sample_data", "img2dataset", "00000.tar")
    with tarfile.open(str(sample)) as tar:
        return next(tar.extractfile(m).read() for m in tar if m.name.endswith(".jpg"))


def images_per_second(host: ImageHost, count: int, threads: int, per_host: int) -> float:
    fetcher = ImageFetcher(FetchConfig(per_host=per_host, allow_private_hosts=(f"127.0.0.1:{host.port}",)))
    urls = [host.url(f"/ok-{threads}-{per_host}-{i}.jpg") for i in range(count)]
    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        statuses = list(pool.map(lambda u: fetcher.fetch(u).status, urls))
    elapsed = time.perf_counter() - start
    assert statuses.count("ok") == count, set(statuses)
    return count / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--latency", type=float, default=0.05)
    args = parser.parse_args()
    with ImageHost(latency=args.latency) as host:
        host.image = sample_photo()
        print(f"{args.images} JPEGs of {len(host.image) / 1024:.0f} KB each from 127.0.0.1, "
              f"{args.latency * 1000:.0f} ms server latency\n")
        print(f"{'threads':>7} | {'per-host limit':>14} | {'images/s':>8} | {'vs 1 thread':>11}")
        base = images_per_second(host, args.images, 1, 1)
        print(f"{1:>7} | {1:>14} | {base:>8.0f} | {1:>10.2f}x")
        for threads in (4, 16, 32):
            for per_host in sorted({4, threads}):
                speed = images_per_second(host, args.images, threads, per_host)
                print(f"{threads:>7} | {per_host:>14} | {speed:>8.0f} | {speed / base:>10.2f}x")


if __name__ == "__main__":
    main()
