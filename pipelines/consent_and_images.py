"""The `optout` and `images` steps as a pipeline declares them: options, how each is built, what it writes."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from dataclasses import dataclass, replace

from datatrove.data import Document
from datatrove.io import DataFolder

from filters.fetched_images import FetchedCleanup, FetchedImages
from filters.image_fetch import FetchConfig
from filters.images import DEFAULT_OUTAGE, HttpImageSource, ImageAcquisitionFilter, Img2DatasetSource
from filters.img2dataset_index import Img2DatasetIndex
from filters.optout import (
    SPAWNING_URL, TOKEN_VARIABLES, OptOutCache, OptOutList, SpawningConfig, SpawningOptOutChecker,
    SpawningOptOutFilter, spawning_token,
)
from filters.shard_files import shard_name
from pipelines.options import UsageError, option
from filters.shard_files import TempFile
from pipelines.steps import RunContext, StepSpec


FETCHED_FOLDER = "fetched"  # a calibration pass's downloads, kept for the filtering pass


def _hosts(text: str) -> bool | tuple[str, ...]:
    return True if text == "all" else tuple(h.strip() for h in text.split(",") if h.strip())


@dataclass
class OptOutOptions:
    list: str | None = option(None, "offline opt-outs: URLs and domains, one a line, instead of the Spawning API",
                              path=True, flag="--optout-list", metavar="FILE")
    spawning_url: str = option(SPAWNING_URL, "Spawning API endpoint; the token is read from "
                               f"{' or '.join(TOKEN_VARIABLES)}", flag="--spawning-url")
    spawning_retries: int = option(SpawningConfig.retries, "tries after the first on 429, 5xx and timeouts",
                                   changes_output=False, flag="--spawning-retries")
    spawning_backoff: float = option(SpawningConfig.backoff, "wait before the first retry, doubling after",
                                     unit="s", changes_output=False, flag="--spawning-backoff")
    cache: str | None = option(None, "SQLite cache of API answers on a local disk, shareable by runs "
                               "(default: CACHE_DIR/optout.sqlite)", changes_output=False, flag="--optout-cache",
                               metavar="PATH")


def build_optout(options: OptOutOptions, ctx: RunContext) -> SpawningOptOutFilter:
    if options.list:
        if not os.path.isfile(options.list):
            raise UsageError(f"--optout-list {options.list}: no such file")
        checker = OptOutList(options.list)
    else:
        token = spawning_token()
        if not token:
            raise UsageError(f"step optout: set {' or '.join(TOKEN_VARIABLES)} to query the Spawning API, "
                             f"or give --optout-list FILE")
        cache = OptOutCache(options.cache or os.path.join(ctx.cache_dir, "optout.sqlite"))
        config = SpawningConfig(url=options.spawning_url, token=token, retries=options.spawning_retries,
                                backoff=options.spawning_backoff)
        checker = SpawningOptOutChecker(config, cache)
    return SpawningOptOutFilter(checker, exclusion_writer=ctx.recorder("optout"))


@dataclass
class ImageOptions:
    source: str = option("download", "download over HTTP(S), or join with an img2dataset download folder",
                         path=True, flag="--images", metavar="download|PATH")
    threads: int = option(16, "downloads in flight per task", changes_output=False, flag="--image-threads")
    timeout: float = option(FetchConfig.timeout, "per image, all tries included", unit="s", flag="--image-timeout")
    max_bytes: int = option(FetchConfig.max_bytes, "largest image accepted", unit="bytes", flag="--image-max-bytes")
    max_side: int | None = option(None, "store images downscaled to this longest side (default: as downloaded)",
                                  unit="px", flag="--image-max-side")
    allow_private_hosts: bool | tuple[str, ...] = option(
        False, "allow loopback and private addresses: 'all', or only the hosts listed (tests, mirrors)",
        parse=_hosts, flag="--allow-private-hosts", metavar="all|HOST[:PORT],...")
    window: int | None = option(None, "distinct URLs in flight or waiting, across documents (default: 16 x "
                                "--image-threads)", changes_output=False, flag="--image-window")
    outage_rate: float = option(DEFAULT_OUTAGE.max_failure_rate,
                                f"fail the shard (to be retried) when this share of its last "
                                f"{DEFAULT_OUTAGE.window} downloads fail for network reasons across "
                                f"{DEFAULT_OUTAGE.min_hosts}+ hosts; 0 turns the check off",
                                changes_output=False, flag="--image-outage-rate")
    ca_certs: str | None = option(None, "PEM file of trusted certificate authorities (default: certifi's)",
                                  changes_output=False, path=True, flag="--image-ca-certs", metavar="PEM")


def build_images(options: ImageOptions, ctx: RunContext) -> ImageAcquisitionFilter:
    if options.threads < 1:
        raise UsageError(f"--image-threads {options.threads}: must be at least 1")
    if not 0 <= options.outage_rate <= 1:
        raise UsageError(f"--image-outage-rate {options.outage_rate}: must be between 0 and 1")
    config = FetchConfig(timeout=options.timeout, max_bytes=options.max_bytes, max_side=options.max_side,
                         allow_private_hosts=options.allow_private_hosts, ca_certs=options.ca_certs)
    if options.source == "download":  # a calibration pass keeps what it downloads for the filtering pass
        source = FetchedImages(HttpImageSource(config), os.path.join(ctx.output, FETCHED_FOLDER),
                               record=bool(ctx.scoring_only), max_pixels=config.max_pixels, max_side=config.max_side)
    else:
        if not os.path.isdir(options.source):
            raise UsageError(f"--images {options.source}: not 'download' and not a folder")
        index = Img2DatasetIndex(options.source, os.path.join(ctx.cache_dir, "img2dataset"), options.max_bytes)
        if problem := index.check():
            raise UsageError(f"--images {options.source}: {problem}")
        source = Img2DatasetSource(index, config.max_pixels, config.max_side)
    outage = replace(DEFAULT_OUTAGE, max_failure_rate=options.outage_rate) if options.outage_rate else None
    return ImageAcquisitionFilter(source, threads=options.threads, exclusion_writer=ctx.recorder("images"),
                                  window=options.window, outage=outage)


def _extension(data: bytes) -> str:
    """The file extension of encoded image bytes, from their magic number."""
    for magic, extension in ((b"\x89PNG", "png"), (b"GIF8", "gif"), (b"BM", "bmp"), (b"II*\x00", "tif"),
                             (b"MM\x00*", "tif")):
        if data.startswith(magic):
            return extension
    return "webp" if data[8:12] == b"WEBP" else "jpg"


class ImageTar(TempFile):
    """Fetched images of one shard as an img2dataset-style webdataset tar (`<key>.<ext>` + `<key>.json` with
    `url` and `status`), so the output can itself be given to a later run as `--images PATH`."""

    def __init__(self, folder: DataFolder, filename: str):
        super().__init__(folder, filename)
        self.tar = tarfile.open(fileobj=self.file, mode="w|")
        self.seen: set[str] = set()

    def _add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        self.tar.addfile(info, io.BytesIO(data))

    def write(self, doc: Document, **extra) -> None:
        for media in doc.media:
            if media.media_bytes is None or media.url in self.seen:
                continue
            self.seen.add(media.url)
            key = hashlib.sha1(media.url.encode()).hexdigest()[:20]
            self._add(f"{key}.{_extension(media.media_bytes)}", media.media_bytes)
            meta = {"url": media.url, "key": key, "status": "success",
                    "sha256": hashlib.sha256(media.media_bytes).hexdigest(),
                    **{k: media.metadata.get(k) for k in ("original_width", "original_height", "format")}}
            self._add(f"{key}.json", json.dumps(meta).encode())

    def _close(self) -> None:
        self.tar.close()
        super()._close()


def image_tar(folder: DataFolder, rank: int) -> ImageTar:
    return ImageTar(folder, f"images/{shard_name(rank)}.tar")


def fetched_cleanup(folder: DataFolder, rank: int) -> FetchedCleanup:
    return FetchedCleanup(folder.resolve_paths(FETCHED_FOLDER), rank)


OPTOUT = StepSpec("optout", build_optout, OptOutOptions, title="opt-out (step optout)")
IMAGES = StepSpec("images", build_images, ImageOptions, title="images (step images)", expensive=True,
                  outputs=(image_tar, fetched_cleanup))
