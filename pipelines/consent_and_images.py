"""Flags and step wiring for `optout` and `images`, shared by every pipeline whose sources carry URLs."""

from __future__ import annotations

import argparse
import os

from datatrove.utils.logging import logger

from filters.image_fetch import FetchConfig
from filters.images import HttpImageSource, ImageAcquisitionFilter, Img2DatasetSource
from filters.img2dataset_index import Img2DatasetIndex
from filters.optout import (
    SPAWNING_URL, TOKEN_VARIABLES, OptOutCache, OptOutList, SpawningConfig, SpawningOptOutChecker,
    SpawningOptOutFilter, spawning_token,
)
from pipelines.cli import UsageError
from pipelines.shards import ParquetShardWriter

RUN_OPTIONS = ("optout_list", "images", "image_max_side")  # flags that change what an output holds


def _hosts(text: str) -> tuple[str, ...]:
    return tuple(h.strip() for h in text.split(",") if h.strip())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    consent = parser.add_argument_group("opt-out (step optout)")
    consent.add_argument("--optout-list", default=None, metavar="FILE",
                         help="offline opt-outs: URLs and domains, one a line, instead of the Spawning API")
    consent.add_argument("--spawning-url", default=SPAWNING_URL, help="Spawning API endpoint (default: %(default)s)")
    consent.add_argument("--spawning-retries", type=int, default=SpawningConfig.retries,
                         help="tries after the first on 429, 5xx and timeouts (default: %(default)s)")
    consent.add_argument("--spawning-backoff", type=float, default=SpawningConfig.backoff,
                         help="seconds before the first retry, doubling after (default: %(default)s)")
    consent.add_argument("--optout-cache", default=None, metavar="PATH",
                         help="SQLite cache of API answers, shareable by runs (default: OUTPUT/cache/optout.sqlite)")
    images = parser.add_argument_group("images (step images)")
    images.add_argument("--images", default="download", metavar="download|PATH",
                        help="download over HTTP(S), or join with an img2dataset download folder (default: download)")
    images.add_argument("--image-threads", type=int, default=16, help="downloads in flight per task")
    images.add_argument("--image-timeout", type=float, default=FetchConfig.timeout, help="seconds per image, all tries")
    images.add_argument("--image-max-bytes", type=int, default=FetchConfig.max_bytes, help="largest body accepted")
    images.add_argument("--image-max-side", type=int, default=None,
                        help="store images downscaled to this longest side (default: as downloaded)")
    images.add_argument("--allow-private-hosts", nargs="?", const=True, default=False, type=_hosts,
                        metavar="HOST[:PORT],...",
                        help="allow loopback/private addresses: all, or only the hosts listed (tests, mirrors)")


def optout_step(args: argparse.Namespace, writer: ParquetShardWriter) -> SpawningOptOutFilter:
    if args.optout_list:
        if not os.path.isfile(args.optout_list):
            raise UsageError(f"--optout-list {args.optout_list}: no such file")
        checker = OptOutList(args.optout_list)
    else:
        token = spawning_token()
        if not token:
            raise UsageError(f"step optout: set {' or '.join(TOKEN_VARIABLES)} to query the Spawning API, "
                             f"or give --optout-list FILE")
        cache = OptOutCache(args.optout_cache or os.path.join(args.output, "cache", "optout.sqlite"))
        config = SpawningConfig(url=args.spawning_url, token=token, retries=args.spawning_retries,
                                backoff=args.spawning_backoff)
        checker = SpawningOptOutChecker(config, cache)
    return SpawningOptOutFilter(checker, exclusion_writer=writer.removal_recorder("optout"))


def images_step(args: argparse.Namespace, writer: ParquetShardWriter) -> ImageAcquisitionFilter:
    if args.image_threads < 1:
        raise UsageError(f"--image-threads {args.image_threads}: must be at least 1")
    config = FetchConfig(timeout=args.image_timeout, max_bytes=args.image_max_bytes, max_side=args.image_max_side,
                         allow_private_hosts=args.allow_private_hosts)
    if args.images == "download":
        source = HttpImageSource(config)
    else:
        source = Img2DatasetSource(_img2dataset_index(args.images, args.output), config.max_pixels, config.max_side)
    return ImageAcquisitionFilter(source, threads=args.image_threads,
                                  exclusion_writer=writer.removal_recorder("images"))


def _img2dataset_index(download: str, output: str) -> Img2DatasetIndex:
    """Index the download once, before any task starts, and share the index file between tasks."""
    if not os.path.isdir(download):
        raise UsageError(f"--images {download}: not 'download' and not a folder")
    index = Img2DatasetIndex(download, os.path.join(output, "cache", "img2dataset_urls.sqlite"))
    if not index.is_current():
        logger.info(f"Indexing the img2dataset download {download} ...")
        report = index.build()
        if report.tars == 0:
            raise UsageError(f"--images {download}: no .tar shards (expected an img2dataset webdataset download)")
        for problem in report.problems:
            logger.warning(f"img2dataset download: {problem}")
        logger.info(f"Indexed {report.images} images in {report.tars} tars, {report.failed_rows} failed downloads")
    return index
