"""One output shard of a stage mixture, as a datatrove step: task `rank` writes `data/NNNNN.tar` and its accounting
`accounting/NNNNN.json`, from the plan alone (`mixtures.draw`), so shards can be built in any order, on any number
of workers, and a re-run rebuilds exactly what a killed one left unfinished.

For each source the shard reads the stream positions that are its own until the source's count of samples is
filled: each unit is tokenized, fitted to the maximum length (`mixtures.lengths`), and its parts count against
the quota. The shard's samples are then shuffled (seeded by the shard) and written one at a time: images read,
fitted to the stage's cap and re-encoded (`mixtures.images`), so only one sample's images are in memory. A pair or
page whose image cannot be had, or a document part that lost every image it had, is no sample: it is counted
(`unreadable/images_lost`) and the next part of the same source's stream takes its slot, so quotas stay exact.
"""

from __future__ import annotations

import json
from collections import Counter, deque
from dataclasses import dataclass, replace

from datatrove.data import DocumentsPipeline
from datatrove.io import get_datafolder
from datatrove.pipeline.base import PipelineStep

from filters.shard_files import TempFile, shard_name
from mixtures.draw import Allocation, UnitOrder, apportion, rng, shard_positions
from mixtures.images import ImageProblem, ImageRule, fit_image
from mixtures.layout import Sample
from mixtures.lengths import Fitted, Part, fit
from mixtures.shard_writer import SampleTar
from mixtures.sources import Unit, UnitSource
from mixtures.spec import StageSpec
from mixtures.tokens import TokenCounter

GIVE_UP_AFTER = 1000  # unusable units in a row after which a shard stops reading a source (it holds none usable)
UNUSABLE_WITHOUT_IMAGES = "images_lost"  # `unreadable/` reason of a part dropped because its images could not be had
ACCOUNTING = "accounting"
TAR_MEMBER_OVERHEAD = 1024  # a member's 512-byte header plus, on average, half a block of padding


@dataclass
class Plan:
    """Everything a shard needs, pickled to every task."""

    spec: StageSpec
    sources: list[UnitSource]  # in the spec's order
    allocation: Allocation
    samples_per_shard: int
    shards: int
    seed: int
    tokenizer: str
    output: str
    counter: TokenCounter | None = None  # set by the command: the tokenizer, loaded once

    @property
    def samples(self) -> int:
        return sum(self.allocation.counts)


@dataclass
class Planned:
    source: int
    part: Part
    origin: dict
    position: int  # in the source's stream: keys the sample's random draws


class MixtureShardBuilder(PipelineStep):
    """Builds output shard `rank`. Stats: `documents` (samples), `bytes`; the full accounting is in
    `accounting/NNNNN.json`."""

    name = "mixture"
    type = "🧪 - MIXTURE"

    def __init__(self, plan: Plan):
        super().__init__()
        self.plan = plan

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        plan = self.plan
        counts = plan.allocation.shard_counts(rank, plan.samples_per_shard)
        accounts = [Counter() for _ in plan.sources]
        streams = [self._stream(index, rank, accounts[index]) for index in range(len(plan.sources))]
        planned: list[Planned] = []
        for stream, quota in zip(streams, counts):
            planned += stream.take(quota)
        rng(plan.seed, "shard-order", rank).shuffle(planned)
        folder = get_datafolder(plan.output)
        tar = SampleTar(folder, f"data/{shard_name(rank)}.tar")
        try:
            for number, item in enumerate(planned):
                sample = self._usable_sample(f"{shard_name(rank)}_{number:06d}", item, streams[item.source])
                if sample is None:
                    continue
                with self.track_time():
                    tar.write(sample)
                self.stat_update("documents")  # what the command's progress line counts: samples here
        except BaseException:
            tar.abort()
            raise
        tar.commit()
        self.stat_update("bytes", value=tar.bytes)
        for stream, quota in zip(streams, counts):
            stream.close(quota)
        self._write_accounting(folder, rank, counts, accounts, tar)
        return
        yield  # a generator, like every datatrove step

    # -- drawing ------------------------------------------------------------------------------------------------

    def _stream(self, index: int, rank: int, account: Counter) -> "_Stream":
        return _Stream(self, index, rank, account)

    def _fitted(self, index: int, unit: Unit) -> Fitted:
        """The unit tokenized and fitted to its source's maximum length."""
        spec, count = self.plan.spec.sources[index], self.plan.counter
        tokens = count([t for t in unit.texts if t is not None])
        return fit(unit.texts, unit.images, tokens, spec.max_tokens, self.plan.spec.image_tokens, spec.too_long,
                   count)

    # -- writing ------------------------------------------------------------------------------------------------

    def _usable_sample(self, key: str, item: Planned, stream: "_Stream") -> Sample | None:
        """The sample of `item`, or of the next parts of its source while one cannot be had (an image lost where
        the sample cannot do without it): the slot is filled from the same source, so its quota stays exact.
        None once the source gives up."""
        while item is not None:
            sample = self._sample(key, item, stream.account)
            if sample is not None:
                stream.lost_in_row = 0
                return sample
            item = stream.replacement()
        return None

    def _sample(self, key: str, item: Planned, account: Counter) -> Sample | None:
        """The sample of one part, its images read and fitted; None (counted) when a pair or page lost its image, or
        a document part all the images it had. A document part that lost some keeps the rest with their texts."""
        spec, plan = self.plan.spec.sources[item.source], self.plan
        source = plan.sources[item.source]
        rule = ImageRule(plan.spec.image_max_side, plan.spec.scale_up.probability, plan.spec.jpeg_quality)
        draw = rng(plan.seed, "images", spec.name, item.position, item.origin["part"])
        texts, images, sizes = [], [], []
        refs = iter(item.part.images)
        for text in item.part.texts:
            if text is not None:
                texts.append(text)
                continue
            data = source.image(next(refs))
            try:
                if isinstance(data, str):
                    raise ImageProblem(data)
                encoded, width, height = fit_image(data, rule, draw)
            except ImageProblem as problem:
                account[f"images_lost/{problem.reason}"] += 1
                if spec.format != "obelics":  # a pair without its image, a page without its scan: not a sample
                    break
                continue
            texts.append(None)
            images.append(encoded)
            sizes.append([width, height])
        if len(images) < len(item.part.images) and (spec.format != "obelics" or not images):
            account[f"unreadable/{UNUSABLE_WITHOUT_IMAGES}"] += 1
            return None
        text = sum(item.part.text_tokens)
        image = len(images) * plan.spec.image_tokens
        account["samples"] += 1
        account["images"] += len(images)
        account["text_tokens"] += text
        account["image_tokens"] += image
        account["max_images"] = max(account["max_images"], len(images))
        account["max_tokens_seen"] = max(account["max_tokens_seen"], text + image)
        return Sample(key, spec.name, texts, images, item.origin, sizes,
                      {"text": text, "image": image, "total": text + image})

    def _write_accounting(self, folder, rank: int, counts: list[int], accounts: list[Counter], tar) -> None:
        record = {"shard": rank, "samples": tar.samples, "bytes": tar.bytes,
                  "sources": {s.name: {"quota": q, **dict(a)} for s, q, a in zip(self.plan.spec.sources, counts,
                                                                                 accounts)}}
        out = TempFile(folder, f"{ACCOUNTING}/{shard_name(rank)}.json")
        out.file.write(json.dumps(record, sort_keys=True).encode())
        out.commit()


def estimate_sample_bytes(plan: Plan, pilot: int = 64) -> float:
    """Mean bytes of a sample, from the first `pilot` samples of a one-shard plan with the same shares: what a
    byte target for the tars turns into samples a shard (the same inputs and seed give the same estimate)."""
    counts = apportion(min(pilot, plan.samples), [s.share for s in plan.spec.sources])
    trial = replace(plan, allocation=Allocation.make(counts, plan.seed), samples_per_shard=sum(counts), shards=1)
    builder = MixtureShardBuilder(trial)
    sizes = []
    for index, quota in enumerate(counts):
        stream = builder._stream(index, 0, Counter())
        for item in stream.take(quota):
            sample = builder._usable_sample("pilot", item, stream)
            if sample is not None:
                sizes.append(sum(len(data) + TAR_MEMBER_OVERHEAD for _, data in sample.members()))
    return sum(sizes) / len(sizes) if sizes else 1.0


class _Stream:
    """The parts one shard draws from one source, in stream order: the first `quota` planned up front, and more on
    demand to replace parts whose images cannot be had. The positions read depend only on the plan, the shard and
    which parts proved unusable, so the same inputs and seed give the same samples on any number of workers."""

    def __init__(self, builder: MixtureShardBuilder, index: int, rank: int, account: Counter):
        self.builder, self.index, self.rank, self.account = builder, index, rank, account
        plan = builder.plan
        self.order = UnitOrder(plan.sources[index].units, plan.seed, plan.spec.sources[index].name)
        self.read = self.unusable = self.lost_in_row = 0
        self.pending: deque[Planned] = deque()  # parts of the last unit not handed out yet
        self.gave_up = False
        self.batch: deque = deque()  # (position, unit or None) read ahead, not looked at yet

    def take(self, count: int) -> list[Planned]:
        out = []
        while len(out) < count and (self.pending or self._refill(count - len(out))):
            out.append(self.pending.popleft())
        return out

    def replacement(self) -> Planned | None:
        """The next part, after one proved unusable; None once too many in a row were."""
        self.lost_in_row += 1
        if self.lost_in_row >= GIVE_UP_AFTER:
            self.gave_up = True
            return None
        found = self.take(1)
        return found[0] if found else None

    def close(self, quota: int) -> None:
        self.account["parts_cut_at_quota"] += len(self.pending)
        self.account["positions_read"] = self.read
        self.account["exhausted"] = int(self.account["samples"] < quota)

    def _refill(self, wanted: int) -> bool:
        """Read positions until a unit gives parts (queued in `pending`); False when the source gives up. Units are
        read `wanted` (at least 8) positions at a time; a position counts as read when its unit is looked at."""
        while not self.gave_up:
            if not self.batch:
                self.batch = self._read_batch(max(wanted, 8))
            position, unit = self.batch.popleft()
            self.read += 1
            if unit is None:  # past the last unit: nothing to read
                continue
            if self._queue(position, unit):
                return True
            self.gave_up = self.unusable >= GIVE_UP_AFTER
        return False

    def _read_batch(self, count: int) -> deque:
        plan = self.builder.plan
        positions = shard_positions(self.rank, plan.shards, self.read, count, self.order.block)
        units = self.order.units_at(positions)
        found = iter(plan.sources[self.index].read(units[units >= 0].tolist()))
        return deque((p, next(found) if u >= 0 else None) for p, u in zip(positions.tolist(), units.tolist()))

    def _queue(self, position: int, unit: Unit | str) -> bool:
        account = self.account
        account["units_read"] += 1
        if isinstance(unit, str):
            account[f"unreadable/{unit}"] += 1
            self.unusable += 1
            return False
        fitted = self.builder._fitted(self.index, unit)
        account["text_pieces_dropped"] += fitted.pieces_dropped
        if not fitted.parts:
            account[f"dropped_{fitted.outcome}"] += 1
            self.unusable += 1
            return False
        self.unusable = 0
        if fitted.outcome == "split":
            account["split_units"] += 1
            account["split_parts"] += len(fitted.parts)
        for number, part in enumerate(fitted.parts):
            origin = {**unit.origin, "part": number, "parts": len(fitted.parts)}
            self.pending.append(Planned(self.index, part, origin, position))
        return True
