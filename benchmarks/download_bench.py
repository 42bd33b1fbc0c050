"""Images/s through the `images` step when some URLs stall: the rolling window against waiting for each batch.

    python benchmarks/download_bench.py [--images 1000] [--stall-rate 0.05] [--timeout 1] [--latency 0.02]

The host is the tests' threaded Python server on loopback, on the same 2 cores, serving one of the shipped sample
photographs after `--latency` seconds (a stand-in for the web's round trips); a `--stall-rate` share of the URLs
never answer before the fetch timeout, as some hosts on the web do. Both ways run the same step, fetcher, thread
count and URLs, one document per image:

  - batch-wait: the step as it was, `filter_batch` on batches of 64 documents: fetch the batch's URLs
    concurrently and wait for all of them, so nearly every batch waits for a stalled URL;
  - rolling: the step's `run`, a window of URLs in flight across documents, documents still leaving in order.

Each way runs `--repeats` times, alternating, and the best run counts. Run time is about
images * (1 / rolling rate + 1 / batch rate) * repeats: about a minute with the defaults on 2 cores.
"""

from __future__ import annotations

import argparse
import random
import sys
import tarfile
import time
from importlib import resources
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from datatrove.data import Document, Media, MediaType  # noqa: E402
from datatrove.utils.batching import batched  # noqa: E402

from filters.image_fetch import FetchConfig  # noqa: E402
from filters.images import HttpImageSource, ImageAcquisitionFilter  # noqa: E402
from tests.http_servers import ImageHost  # noqa: E402

BATCH = 64  # the step's batch size before the rolling window


def sample_photo() -> bytes:
    """One of the shipped sample photographs (a real JPEG of typical web size)."""
    sample = resources.files("pipelines").joinpath("sample_data", "img2dataset", "00000.tar")
    with tarfile.open(str(sample)) as tar:
        return next(tar.extractfile(m).read() for m in tar if m.name.endswith(".jpg"))


def documents(urls: list[str]) -> list[Document]:
    return [Document(text="caption", id=str(i), media=[Media(id=str(i), type=MediaType.IMAGE, url=url)],
                     metadata={"texts": ["caption", None]}) for i, url in enumerate(urls)]


def make_step(host: ImageHost, args: argparse.Namespace) -> ImageAcquisitionFilter:
    config = FetchConfig(read_timeout=args.timeout, timeout=args.timeout, retries=0, per_host=args.threads,
                         allow_private_hosts=(f"127.0.0.1:{host.port}",))
    return ImageAcquisitionFilter(HttpImageSource(config), threads=args.threads, batch_size=BATCH, outage=None)


def batch_wait(step: ImageAcquisitionFilter, docs: list[Document]) -> list[str]:
    kept = []
    for batch in batched(docs, BATCH):
        kept += [doc.id for doc, verdict in zip(batch, step.filter_batch(batch)) if verdict is True]
    return kept


def rolling(step: ImageAcquisitionFilter, docs: list[Document]) -> list[str]:
    return [doc.id for doc in step.run(iter(docs))]


def images_per_second(way, host: ImageHost, args: argparse.Namespace, urls: list[str]) -> tuple[float, list[str]]:
    step, docs = make_step(host, args), documents(urls)
    start = time.perf_counter()
    kept = way(step, docs)
    return len(kept) / (time.perf_counter() - start), kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--stall-rate", type=float, default=0.05)
    parser.add_argument("--timeout", type=float, default=1.0, help="seconds; stalled URLs take this long to fail")
    parser.add_argument("--latency", type=float, default=0.02, help="seconds before the host answers")
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    with ImageHost(stall_seconds=args.timeout + 2, latency=args.latency) as host:
        host.image = sample_photo()
        stalls = set(random.Random(0).sample(range(args.images), round(args.images * args.stall_rate)))
        print(f"{args.images} JPEGs of {len(host.image) / 1024:.0f} KB from 127.0.0.1, {len(stalls)} of them "
              f"stalling past the {args.timeout:g} s timeout, {args.latency * 1000:.0f} ms latency, "
              f"{args.threads} threads, rolling window {make_step(host, args).window} URLs\n")
        best = {"batch-wait": 0.0, "rolling": 0.0}
        for repeat in range(args.repeats):
            kept = {}
            for name, way in (("batch-wait", batch_wait), ("rolling", rolling)):
                urls = [host.url(f"/stall.jpg?{repeat}-{i}" if i in stalls else f"/ok-{repeat}-{name}-{i}.jpg")
                        for i in range(args.images)]
                speed, kept[name] = images_per_second(way, host, args, urls)
                best[name] = max(best[name], speed)
            assert kept["batch-wait"] == kept["rolling"], "the two ways kept different documents"
            assert len(kept["rolling"]) == args.images - len(stalls)
        print(f"{'way':>10} | {'images/s':>8} | vs batch-wait")
        for name, speed in best.items():
            print(f"{name:>10} | {speed:>8.0f} | {speed / best['batch-wait']:>11.2f}x")


if __name__ == "__main__":
    main()
