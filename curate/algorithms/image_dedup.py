"""Exact and near-duplicate images from 64-bit hashes, and placeholder images (pure NumPy).

The rule, for every kind of hash: a pair is a duplicate when another pair with a smaller
*order key* (a 64-bit hash of its uid: which member is kept does not depend on shards or
arrival order) has the same bytes hash, the same pixel hash, or a perceptual hash within
``radius`` bits. Like SemDeDup's reference rule it looks at every earlier pair, kept or not,
so a chain a~b~c drops b and c even when a and c are far apart.

Near duplicates are found by multi-index hashing: the 64 bits are cut into ``radius + 1``
bands, and two hashes within ``radius`` bits agree exactly on at least one band
(pigeonhole). Records are routed by (band, band value), so each partition task compares only
hashes that share a band value; the union over bands finds every pair within the radius.

Placeholders ("photo unavailable" images a host serves for every missing file): a group of
equal bytes, pixel or perceptual hashes whose pairs come from at least ``min_hosts`` distinct
hosts with at least ``min_hosts`` distinct captions; every member is dropped, none kept.
"""

from __future__ import annotations

import numpy as np

from curate.algorithms.uids import mix64

#: record kinds: how a record was routed to its partition
BYTES, PIXELS, BAND0 = 0, 1, 2
#: decision codes, in precedence order (a pair flagged twice gets the lowest)
PLACEHOLDER, DUP_BYTES, DUP_PIXELS, DUP_NEAR = 0, 1, 2, 3


def bands(radius: int) -> list[tuple[int, int]]:
    """(shift, width) of the ``radius + 1`` bands of a 64-bit hash, as equal as possible."""
    n = radius + 1
    widths = [64 // n + (1 if i < 64 % n else 0) for i in range(n)]
    out, at = [], 64
    for w in widths:
        at -= w
        out.append((at, w))
    return out


def band_values(h: np.ndarray, radius: int) -> list[np.ndarray]:
    """Each band's value per hash (uint64), band 0 = the most significant bits."""
    h = h.astype(np.uint64)
    return [(h >> np.uint64(s)) & np.uint64((1 << w) - 1) for s, w in bands(radius)]


def route(key: np.ndarray, salt: int, partitions: int) -> np.ndarray:
    """Partition of each key (mixed with ``salt``, so bands do not pile into one partition)."""
    z = key.astype(np.uint64) ^ np.uint64((salt * 0x9E3779B97F4A7C15) & (2**64 - 1))
    return (mix64(z) % np.uint64(partitions)).astype(np.int64)


def popcount(x: np.ndarray) -> np.ndarray:
    return np.bitwise_count(x.astype(np.uint64)).astype(np.int64)


def exact(order: np.ndarray, key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For records of equal ``key``: (is a duplicate, index of the group's first record)."""
    idx = np.lexsort((order, key))
    k = key[idx]
    start = np.ones(len(k), bool)
    start[1:] = k[1:] != k[:-1]
    first = idx[np.flatnonzero(start)[np.cumsum(start) - 1]]
    dup = np.zeros(len(key), bool)
    dup[idx[~start]] = True
    winner = np.empty(len(key), np.int64)
    winner[idx] = first
    return dup, winner


def placeholders(key: np.ndarray, host: np.ndarray, caption: np.ndarray, min_hosts: int
                 ) -> np.ndarray:
    """Records whose ``key`` group spans >= min_hosts hosts and >= min_hosts captions."""
    if not len(key):
        return np.zeros(0, bool)
    _, g = np.unique(key, return_inverse=True)
    ok = np.ones(int(g.max()) + 1, bool)
    for col in (host, caption):
        pairs = np.unique(np.stack([g.astype(np.uint64), col.astype(np.uint64)]), axis=1)
        ok &= np.bincount(pairs[0].astype(np.int64), minlength=ok.size) >= min_hosts
    return ok[g]


#: rows of the distance matrix computed at once (a band group of many distinct hashes)
_CHUNK = 1024
_NONE = np.uint64(2**64 - 1)


def near(order: np.ndarray, h: np.ndarray, band: np.ndarray, radius: int
         ) -> tuple[np.ndarray, np.ndarray]:
    """Records tagged with one band's value (``band``): (has an earlier record within
    ``radius`` bits among those sharing its band value, index of the earliest such one).
    Compares distinct hash values only, so a group of many equal hashes (a placeholder)
    costs one comparison per distinct value. ``order`` is uint64."""
    n = len(h)
    if n < 2:
        return np.zeros(n, bool), np.arange(n)
    h = h.astype(np.uint64)
    idx = np.lexsort((order, h, band))  # by band value, then hash, then order
    b, hh = band[idx], h[idx]
    start = np.ones(n, bool)
    start[1:] = (b[1:] != b[:-1]) | (hh[1:] != hh[:-1])
    firsts = idx[start]  # the earliest record of each distinct (band value, hash)
    slot = np.empty(n, np.int64)
    slot[idx] = np.cumsum(start) - 1  # each record's distinct (band value, hash)
    fb = band[firsts]
    gs = np.flatnonzero(np.r_[True, fb[1:] != fb[:-1]])
    ge = np.r_[gs[1:], len(firsts)]
    win = firsts.copy()  # per distinct hash: the earliest record within the radius
    big = (ge - gs) > 1
    for a, e in zip(gs[big], ge[big]):
        f = firsts[a:e]
        for r0 in range(0, len(f), _CHUNK):
            rows = f[r0:r0 + _CHUNK]
            within = popcount(h[rows][:, None] ^ h[f][None, :]) <= radius
            o = np.where(within, order[f][None, :], _NONE)
            win[a + r0:a + r0 + len(rows)] = f[np.argmin(o, axis=1)]
    best = win[slot]
    return order[best] < order, best
