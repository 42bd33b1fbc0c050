"""One output shard of a stage mixture, as a datatrove step: task `rank` writes `data/NNNNN.tar` and its accounting
`accounting/NNNNN.json`, from the plan alone (`mixtures.draw`), so shards can be built in any order, on any number
of workers, and a re-run rebuilds exactly what a killed one left unfinished.

For each source the shard reads the stream positions that are its own until the source's count of samples is
filled: each unit is tokenized, fitted to the maximum length (`mixtures.lengths`), and its parts count against
the quota. The shard's samples are then shuffled (seeded by the shard) and written one at a time: images read,
fitted to the stage's cap and re-encoded (`mixtures.images`), so only one sample's images are in memory.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, replace

from datatrove.data import DocumentsPipeline
from datatrove.io import get_datafolder
from datatrove.pipeline.base import PipelineStep

from filters.shard_files import TempFile, shard_name
from mixtures.draw import Allocation, UnitOrder, apportion, rng, shard_positions
from mixtures.images import ImageProblem, ImageRule, fit_image
from mixtures.layout import Sample
from mixtures.lengths import Part, fit
from mixtures.shard_writer import SampleTar
from mixtures.sources import UnitSource
from mixtures.spec import StageSpec
from mixtures.tokens import TokenCounter

GIVE_UP_AFTER = 1000  # unusable units in a row after which a shard stops reading a source (it holds none usable)
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
        planned: list[Planned] = []
        for index, (source, quota) in enumerate(zip(plan.sources, counts)):
            planned += self._draw(index, source, quota, rank, accounts[index])
        rng(plan.seed, "shard-order", rank).shuffle(planned)
        folder = get_datafolder(plan.output)
        tar = SampleTar(folder, f"data/{shard_name(rank)}.tar")
        try:
            for number, item in enumerate(planned):
                sample = self._sample(f"{shard_name(rank)}_{number:06d}", item, accounts[item.source])
                with self.track_time():
                    tar.write(sample)
                self.stat_update("documents")  # what the command's progress line counts: samples here
        except BaseException:
            tar.abort()
            raise
        tar.commit()
        self.stat_update("bytes", value=tar.bytes)
        self._write_accounting(folder, rank, counts, accounts, tar)
        return
        yield  # a generator, like every datatrove step

    # -- drawing ------------------------------------------------------------------------------------------------

    def _draw(self, index: int, source: UnitSource, quota: int, rank: int, account: Counter) -> list:
        spec = self.plan.spec.sources[index]
        order = UnitOrder(source.units, self.plan.seed, spec.name)
        count = self.plan.counter
        out: list[Planned] = []
        read = unusable = 0
        while len(out) < quota and unusable < GIVE_UP_AFTER:
            positions = shard_positions(rank, self.plan.shards, read, max(quota - len(out), 8), order.block)
            units = order.units_at(positions)
            wanted = units >= 0  # past the last unit: nothing to read
            found = iter(source.read(units[wanted].tolist()))
            for position, present in zip(positions.tolist(), wanted.tolist()):
                if len(out) >= quota or unusable >= GIVE_UP_AFTER:
                    break
                read += 1
                if not present:
                    continue
                account["units_read"] += 1
                unit = next(found)
                if isinstance(unit, str):
                    account[f"unreadable/{unit}"] += 1
                    unusable += 1
                    continue
                tokens = count([t for t in unit.texts if t is not None])
                fitted = fit(unit.texts, unit.images, tokens, spec.max_tokens, self.plan.spec.image_tokens,
                             spec.too_long, count)
                account["text_pieces_dropped"] += fitted.pieces_dropped
                if not fitted.parts:
                    account[f"dropped_{fitted.outcome}"] += 1
                    unusable += 1
                    continue
                unusable = 0
                if fitted.outcome == "split":
                    account["split_units"] += 1
                    account["split_parts"] += len(fitted.parts)
                room = quota - len(out)
                account["parts_cut_at_quota"] += max(0, len(fitted.parts) - room)
                parts = fitted.parts[:room]
                for number, part in enumerate(parts):
                    origin = {**unit.origin, "part": number, "parts": len(fitted.parts)}
                    out.append(Planned(index, part, origin, position))
        account["positions_read"] = read
        account["exhausted"] = int(len(out) < quota)
        return out

    # -- writing ------------------------------------------------------------------------------------------------

    def _sample(self, key: str, item: Planned, account: Counter) -> Sample:
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
                continue
            texts.append(None)
            images.append(encoded)
            sizes.append([width, height])
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
    for index, (source, quota) in enumerate(zip(trial.sources, counts)):
        for item in builder._draw(index, source, quota, 0, Counter()):
            sample = builder._sample("pilot", item, Counter())
            sizes.append(sum(len(data) + TAR_MEMBER_OVERHEAD for _, data in sample.members()))
    return sum(sizes) / len(sizes) if sizes else 1.0
