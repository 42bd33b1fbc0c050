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
    return np.array(masks, dtype=np.intp)


class HammingIndex:
    """Exact radius search over a fixed set of 64-bit hashes (`uint64`)."""

    def __init__(self, hashes: np.ndarray, radius: int):
        self.hashes = np.ascontiguousarray(hashes, dtype=np.uint64)
        self.radius = radius
        self.bounds = _chunk_bounds(len(self.hashes))
        self.flips = radius // len(self.bounds)
        self.tables = []  # per chunk: bucket sizes, bucket starts, entry ids and hashes in bucket order, masks
        for low, high in self.bounds:
            keys = self._chunk(self.hashes, low, high)
            order = np.argsort(keys, kind="stable").astype(np.int64)
            counts = np.bincount(keys.astype(np.int64), minlength=1 << (high - low))
            starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32 if len(keys) < 2**31 else np.int64)
            # a byte a bucket (255: "255 or more, ask `starts`"): small enough to stay in cache, so the many empty
            # probes cost little and most occupied ones (a single entry) need no further lookup
            sizes = np.minimum(counts, 255).astype(np.uint8)
            # the hashes in bucket order, and each bucket's first hash addressed by the bucket itself: most
            # buckets hold one entry, so most candidates are checked with a single read
            bucket_hashes = self.hashes[order]
            first = np.zeros(len(counts), dtype=np.uint64)
            first[counts > 0] = bucket_hashes[starts[:-1][counts > 0]]
            self.tables.append((sizes, starts, order, bucket_hashes, first,
                                _neighbour_masks(high - low, self.flips)))

    @staticmethod
    def _chunk(values: np.ndarray, low: int, high: int) -> np.ndarray:
        return (values >> np.uint64(low)) & np.uint64((1 << (high - low)) - 1)

    def search(self, queries: np.ndarray, batch: int | None = None) -> list[list[tuple[int, int]]]:
        """For each query, [(entry index, distance), ...] of every entry within the radius, nearest first."""
        queries = np.asarray(queries, dtype=np.uint64)
        if batch is None:  # about 16 MB of probes a table, whatever the radius makes the neighbour count
            batch = max(1, 2**21 // max(len(masks) for *_, masks in self.tables)) if self.tables else 4096
        results: list[list[tuple[int, int]]] = []
        for start in range(0, len(queries), batch):
            results += self._search_batch(queries[start:start + batch])
        return results

    def _search_batch(self, queries: np.ndarray) -> list[list[tuple[int, int]]]:
        hits: set[tuple[int, int, int]] = set()  # (query, entry, distance); a set: two tables may find one entry
        for (low, high), (sizes, starts, order, bucket_hashes, first, masks) in zip(self.bounds, self.tables):
            probes = (self._chunk(queries, low, high).astype(np.intp)[:, None] ^ masks[None, :]).ravel()
            counts = sizes[probes]
            hit = np.flatnonzero(counts != 0)
            buckets, counts, query_of = probes[hit], counts[hit], hit // len(masks)
            distance = np.bitwise_count(first[buckets] ^ queries[query_of])
            keep = distance <= self.radius
            hits.update(zip(query_of[keep].tolist(), order[starts[buckets[keep]]].tolist(), distance[keep].tolist()))
            more = np.flatnonzero(counts > 1)  # the rest of the buckets that hold several, one position at a time
            buckets, counts, query_of = buckets[more], counts[more].astype(np.intp) - 1, query_of[more]
            begin = starts[buckets] + 1
            full = counts == 254
            counts[full] = starts[buckets[full] + 1] - begin[full]
            while len(begin):
                distance = np.bitwise_count(bucket_hashes[begin] ^ queries[query_of])
                keep = distance <= self.radius
                hits.update(zip(query_of[keep].tolist(), order[begin[keep]].tolist(), distance[keep].tolist()))
                more = counts > 1
                begin, counts, query_of = begin[more] + 1, counts[more] - 1, query_of[more]
        found: list[list[tuple[int, int]]] = [[] for _ in range(len(queries))]
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
