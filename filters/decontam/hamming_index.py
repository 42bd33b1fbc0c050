"""Find every stored 64-bit hash within Hamming radius r of a query without scanning them all.

Multi-index hashing (Norouzi et al., 2012): split the 64 bits into m chunks. Two hashes within distance r
differ by at most floor(r / m) bits in at least one chunk (pigeonhole), so the candidates are the entries whose
chunk equals one of the query chunk's few neighbours in some table; each table is a bucket array addressed
directly by the chunk's value. Chunks are about log2(n) + 2 bits wide, so buckets hold a fraction of an entry
on average and a lookup touches a few hundred candidates, whatever n is. Queries are answered in batches with
numpy, and every candidate is checked at full 64 bits, so the result is exactly a brute-force scan's.
"""

from __future__ import annotations

import itertools
import math

import numpy as np


def _chunk_bounds(n: int) -> list[tuple[int, int]]:
    width = min(24, max(8, math.ceil(math.log2(max(n, 2))) + 2))
    chunks = math.ceil(64 / width)
    edges = np.linspace(0, 64, chunks + 1).round().astype(int)
    return list(zip(edges[:-1].tolist(), edges[1:].tolist()))


def _neighbour_masks(bits: int, flips: int) -> np.ndarray:
    masks = [0]
    for k in range(1, flips + 1):
        masks += [sum(1 << b for b in combo) for combo in itertools.combinations(range(bits), k)]
    return np.array(masks, dtype=np.uint64)


class HammingIndex:
    """Exact radius search over a fixed set of 64-bit hashes (`uint64`)."""

    def __init__(self, hashes: np.ndarray, radius: int):
        self.hashes = np.ascontiguousarray(hashes, dtype=np.uint64)
        self.radius = radius
        self.bounds = _chunk_bounds(len(self.hashes))
        self.flips = radius // len(self.bounds)
        self.tables = []  # per chunk: (bucket occupied, bucket starts, entry ids by chunk value, neighbour masks)
        for low, high in self.bounds:
            keys = self._chunk(self.hashes, low, high)
            order = np.argsort(keys, kind="stable").astype(np.int64)
            counts = np.bincount(keys.astype(np.int64), minlength=1 << (high - low))
            starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32 if len(keys) < 2**31 else np.int64)
            occupied = counts > 0  # a byte a bucket: small enough to stay in cache, so empty probes cost little
            self.tables.append((occupied, starts, order, _neighbour_masks(high - low, self.flips)))

    @staticmethod
    def _chunk(values: np.ndarray, low: int, high: int) -> np.ndarray:
        return (values >> np.uint64(low)) & np.uint64((1 << (high - low)) - 1)

    def search(self, queries: np.ndarray, batch: int = 4096) -> list[list[tuple[int, int]]]:
        """For each query, [(entry index, distance), ...] of every entry within the radius, nearest first."""
        queries = np.asarray(queries, dtype=np.uint64)
        results: list[list[tuple[int, int]]] = []
        for start in range(0, len(queries), batch):
            results += self._search_batch(queries[start:start + batch])
        return results

    def _search_batch(self, queries: np.ndarray) -> list[list[tuple[int, int]]]:
        pairs = []
        for (low, high), (occupied, starts, order, masks) in zip(self.bounds, self.tables):
            probes = (self._chunk(queries, low, high)[:, None] ^ masks[None, :]).astype(np.intp).ravel()
            hit = np.flatnonzero(occupied[probes])
            if not len(hit):
                continue
            buckets = probes[hit]
            begin = starts[buckets]
            counts = starts[buckets + 1] - begin
            query_of = np.repeat(hit // len(masks), counts)
            offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
            pairs.append((query_of, order[np.repeat(begin, counts) + offsets]))
        found: list[list[tuple[int, int]]] = [[] for _ in range(len(queries))]
        if not pairs:
            return found
        query_of = np.concatenate([p[0] for p in pairs])
        entry = np.concatenate([p[1] for p in pairs])
        distance = np.bitwise_count(queries[query_of] ^ self.hashes[entry])
        keep = distance <= self.radius  # check first, then drop the duplicates (one per table that found it)
        hits = set(zip(query_of[keep].tolist(), entry[keep].tolist(), distance[keep].tolist()))
        for q, e, d in sorted(hits, key=lambda t: (t[0], t[2], t[1])):
            found[q].append((e, d))
        return found


def brute_force_search(hashes: np.ndarray, queries: np.ndarray, radius: int) -> list[list[tuple[int, int]]]:
    """The reference: every query against every entry."""
    hashes = np.asarray(hashes, dtype=np.uint64)
    found = []
    for query in np.asarray(queries, dtype=np.uint64):
        distance = np.bitwise_count(hashes ^ query)
        hits = np.nonzero(distance <= radius)[0]
        found.append(sorted(((int(e), int(distance[e])) for e in hits), key=lambda t: (t[1], t[0])))
    return found
