"""The proportional sampler: which source fills which sample of which output shard, and which unit (document,
pair, page) of the source it reads, computed by each output shard for itself in memory that does not grow with
the mixture.

* Counts per source: the mixture's N samples are apportioned by the shares (largest remainders), so the totals
  are exact.
* Slots per shard: every source's samples are spread evenly over the mixture (source i's j-th sample sits at
  "virtual time" (j + u_i) / n_i, u_i a seeded offset); shard k holds the samples of ranks [k*S, (k+1)*S) in
  that merged order. A shard finds its own counts by a binary search, exactly, in integer arithmetic.
* Units: a source's units are read in a seeded pseudo-random order that repeats with a fresh order each epoch
  (a prefix of one order when the source is subsampled, several orders when it is repeated). The order is of
  blocks of 64 consecutive units, each block's units shuffled too (`UnitOrder`), computed per position by keyed
  Feistel networks (bijections with cycle walking), so no shard holds a U-long permutation. Output shard k reads
  runs k, k + K, k + 2K, ... of 64 positions (K shards) until its count is filled, so however many parts a
  document is split into, or however many units are dropped, shards never read the same position and never
  depend on each other or on the number of workers.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

import numpy as np

_OFFSET_RESOLUTION = 1 << 20  # granularity of the seeded per-source offsets u_i
# Units read together: at most one parquet row group (our pipelines write 500-row groups) or a stretch of a tar
# per 64 units, instead of one per unit; small enough that a shard of a few thousand samples mixes ~50+ blocks.
BLOCK_UNITS = 64
_ROUNDS = 4  # Feistel rounds: 4 give a pseudo-random permutation (Luby-Rackoff)
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)  # splitmix64's finaliser constants


def seed_int(*parts: object) -> int:
    """A 64-bit integer from any parts: the one way every seeded choice here is keyed (stable across runs and
    Python versions, unlike `hash`)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def rng(*parts: object) -> random.Random:
    return random.Random(seed_int(*parts))


def apportion(total: int, shares: list[float]) -> list[int]:
    """`total` split by `shares` (largest remainders, ties to the earlier source): the counts sum to `total`."""
    exact = [total * s / sum(shares) for s in shares]
    counts = [int(x) for x in exact]
    order = sorted(range(len(shares)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[:total - sum(counts)]:
        counts[i] += 1
    return counts


# ---------------------------------------------------------------------------------------------------------------
# Slots: how many samples of each source shard k holds


@dataclass(frozen=True)
class Allocation:
    """Source i's samples at virtual times (j*R + r_i) / (n_i*R), j < n_i, merged over sources (ties by source)."""

    counts: tuple[int, ...]
    offsets: tuple[int, ...]  # r_i in [0, R)

    @classmethod
    def make(cls, counts: list[int], seed: int) -> Allocation:
        offsets = [seed_int("offset", seed, i) % _OFFSET_RESOLUTION for i in range(len(counts))]
        return cls(tuple(counts), tuple(offsets))

    def _below(self, source: int, num: int, den: int, tie_source: int) -> int:
        """Samples of `source` before the point num/den of source `tie_source`, in (time, source) order."""
        n, r, R = self.counts[source], self.offsets[source], _OFFSET_RESOLUTION
        bound_num, bound_den = num * n * R - r * den, R * den  # j*R*den + r*den < num*n*R  <=>  j < bound
        if source < tie_source:  # equal times count too
            count = bound_num // bound_den + 1 if bound_num >= 0 else 0
        else:
            count = -(-bound_num // bound_den) if bound_num > 0 else 0
        return max(0, min(n, count))

    def _rank(self, source: int, j: int) -> int:
        num, den = j * _OFFSET_RESOLUTION + self.offsets[source], self.counts[source] * _OFFSET_RESOLUTION
        return sum(self._below(i, num, den, source) for i in range(len(self.counts)) if i != source) + j

    def cumulative(self, rank: int) -> list[int]:
        """Per source, how many of the first `rank` samples of the merged order are its."""
        if rank <= 0:
            return [0] * len(self.counts)
        if rank >= sum(self.counts):
            return list(self.counts)
        target = rank - 1  # the last sample included
        for source, n in enumerate(self.counts):
            low, high = 0, n - 1
            while low < high:  # the first j whose rank is >= target
                middle = (low + high) // 2
                low, high = (middle + 1, high) if self._rank(source, middle) < target else (low, middle)
            if n and self._rank(source, low) == target:
                num, den = low * _OFFSET_RESOLUTION + self.offsets[source], n * _OFFSET_RESOLUTION
                return [low + 1 if i == source else self._below(i, num, den, source) for i in range(len(self.counts))]
        raise AssertionError(f"no sample of rank {target}")  # every rank below the total belongs to a source

    def shard_counts(self, shard: int, samples_per_shard: int) -> list[int]:
        start = self.cumulative(shard * samples_per_shard)
        end = self.cumulative((shard + 1) * samples_per_shard)
        return [b - a for a, b in zip(start, end)]


# ---------------------------------------------------------------------------------------------------------------
# Units: the seeded order of a source's units, epoch after epoch


def _mix(values: np.ndarray, key: int) -> np.ndarray:
    x = values ^ np.uint64(key)
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


class Feistel:
    """A keyed bijection of [0, n), for any n >= 1: a balanced Feistel network on the smallest even number of
    bits that covers n, with cycle walking (a value that lands outside [0, n) is encrypted again)."""

    def __init__(self, n: int, *key: object):
        bits = max(2, (n - 1).bit_length() + ((n - 1).bit_length() & 1))
        self.n, self.half, self.mask = n, np.uint64(bits // 2), np.uint64((1 << (bits // 2)) - 1)
        self.keys = [seed_int("feistel", *key, r) for r in range(_ROUNDS)]

    def _round_trip(self, x: np.ndarray) -> np.ndarray:
        left, right = x >> self.half, x & self.mask
        with np.errstate(over="ignore"):
            for key in self.keys:
                left, right = right, left ^ (_mix(right, key) & self.mask)
        return (left << self.half) | right

    def __call__(self, values: np.ndarray) -> np.ndarray:
        out = self._round_trip(values.astype(np.uint64))
        outside = out >= np.uint64(self.n)
        while outside.any():  # the domain is under 4n: a few steps on average
            out[outside] = self._round_trip(out[outside])
            outside = out >= np.uint64(self.n)
        return out.astype(np.int64)


class UnitOrder:
    """The seeded order in which a source of `units` units is read; see the module docstring.

    Units are taken in blocks of `block` consecutive ones (a parquet row group or a stretch of a tar holds them
    together, so a task reads it once for many units, not once per unit): an epoch is the blocks in a seeded
    order, each block's units in a seeded order of their own. Positions past the last unit (the last block
    may be short) read as -1, and are skipped."""

    def __init__(self, units: int, seed: int, source: str, block: int = BLOCK_UNITS):
        if units < 1:
            raise ValueError("a source with no units has no order")
        self.units, self.seed, self.source = units, seed, source
        self.block = min(block, units)
        self.blocks = -(-units // self.block)
        self.epoch_positions = self.blocks * self.block

    def units_at(self, positions: np.ndarray) -> np.ndarray:
        """The unit read at each stream position (-1: none, past the last unit)."""
        positions = np.asarray(positions, dtype=np.int64)
        epochs, within = np.divmod(positions, self.epoch_positions)
        runs, inner = np.divmod(within, self.block)
        out = np.empty_like(positions)
        for epoch in np.unique(epochs):
            chosen = epochs == epoch
            blocks = Feistel(self.blocks, self.seed, self.source, int(epoch))(runs[chosen])
            units = blocks * self.block
            inner_chosen = inner[chosen]
            for block in np.unique(blocks):  # each block's own order
                here = blocks == block
                units[here] += Feistel(self.block, self.seed, self.source, int(epoch), int(block))(inner_chosen[here])
            out[chosen] = units
        out[out >= self.units] = -1
        return out


def shard_positions(shard: int, shards: int, start: int, count: int, block: int) -> np.ndarray:
    """Positions j in [start, start + count) of output shard k: the k-th, (k+K)-th, ... runs of `block` positions."""
    j = np.arange(start, start + count, dtype=np.int64)
    runs, inner = np.divmod(j, block)
    return (shard + shards * runs) * block + inner


def distinct_units(order: UnitOrder, shards: int, read: list[int], chunk: int = 1 << 20) -> int:
    """How many distinct units the shards read when shard k read its first `read[k]` positions."""
    last = [int(shard_positions(k, shards, r - 1, 1, order.block)[0]) for k, r in enumerate(read) if r]
    if not last:
        return 0
    seen = None if max(last) < order.epoch_positions else np.zeros(order.units, dtype=bool)
    valid = 0  # all in the first epoch: every position is a different unit
    for shard, count in enumerate(read):
        for start in range(0, count, chunk):
            units = order.units_at(shard_positions(shard, shards, start, min(chunk, count - start), order.block))
            units = units[units >= 0]
            valid += len(units)
            if seen is not None:
                seen[units] = True
    return valid if seen is None else int(seen.sum())
