"""Semantic deduplication inside a concept cluster (SemDeDup, Abbas et al. 2023).

Pure functions on NumPy arrays: no Ray, no files. Two items of a cluster are near-duplicates
when the cosine similarity of their (L2-normalised) embeddings exceeds ``1 - eps``.

The rule: greedy suppression in priority order ("non-maximum suppression"). Items are
ranked by ``keep`` -- 'hard': farthest from the centroid first (SemDeDup's default),
'easy': nearest first, 'random': a seeded permutation -- and walked in that order; an
item is kept unless a near-duplicate of it was already *kept*, in which case it is dropped
and ``duplicate_of`` names the first (highest-priority) such kept item.

Why this rule and not the alternatives:

- SemDeDup's released code drops item j if *any* earlier item in the order (kept or not)
  is a near-duplicate (max over the upper triangle of the similarity matrix). On a chain
  a ~ b ~ c where a and c are not near-duplicates, it drops c because of b although b is
  itself dropped, so c's content is represented by nothing within eps.
- Connected components of the "> 1 - eps" graph keep one item per component; chains then
  merge arbitrarily dissimilar items (a long chain of small steps collapses to one item).
- Greedy suppression keeps a set with no two near-duplicates in it (like SemDeDup) and
  drops an item only when a *kept* item is within eps of it (unlike both), so every dropped
  item has a kept representative at similarity > 1 - eps. When a duplicate group is tight
  (all its pairs above the threshold, none near an outside item: the planted and the
  common case) all three rules
  agree: the group keeps exactly its highest-priority member, e.g. the one farthest from
  the centroid for 'hard'.

Blockwise: the ordered items are processed in blocks of ``block`` rows; each block is
compared with the items kept so far, ``block`` columns at a time, then with itself. Memory
is O(block^2 + block * d) whatever the cluster size; work is at most half of the n x n
similarity matrix (less, as dropped items are never compared again).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

import numpy as np

logger = logging.getLogger(__name__)

Keep = Literal["hard", "easy", "random"]
Seed = int | Sequence[int]


def priority_order(dist_to_centroid: np.ndarray, keep: Keep = "hard", seed: Seed = 0) -> np.ndarray:
    """Indices of the items from the one kept first to the one kept last.

    'hard': decreasing distance to the centroid (SemDeDup's default: prototypical items near
    the centroid are dropped first); 'easy': increasing distance; 'random': a permutation
    from ``np.random.default_rng(seed)`` (``seed`` may be a sequence, e.g. (seed,
    cluster_id)). Ties keep the input order (stable sort), so the caller fixes them by
    passing rows in a stable order, e.g. sorted by uid.
    """
    d = np.asarray(dist_to_centroid)
    if keep == "hard":
        return np.argsort(-d, kind="stable")
    if keep == "easy":
        return np.argsort(d, kind="stable")
    if keep == "random":
        return np.random.default_rng(seed).permutation(len(d))
    raise ValueError(f"keep must be 'hard', 'easy' or 'random', got {keep!r}")


def _check(emb: np.ndarray, dist: np.ndarray, eps: float) -> None:
    if emb.ndim != 2:
        raise ValueError(f"emb must be 2-D (n, d), got shape {emb.shape}")
    if dist.shape != (emb.shape[0],):
        raise ValueError(f"dist_to_centroid must have shape ({emb.shape[0]},), got {dist.shape}")
    if not 0.0 <= eps <= 2.0:
        raise ValueError(f"eps must be in [0, 2] (cosine distance), got {eps}")


def dedup_cluster(
    emb: np.ndarray,
    dist_to_centroid: np.ndarray,
    eps: float,
    keep: Keep = "hard",
    seed: Seed = 0,
    block: int = 4096,
) -> np.ndarray:
    """Near-duplicates of one cluster, by greedy suppression (module doc).

    emb: (n, d) L2-normalised embeddings of the cluster's items (float16 or float32; blocks
    are converted to float32). dist_to_centroid: (n,) cosine distance to the centroid.
    Returns ``duplicate_of`` int64 (n,): -1 for a kept item, else the index (into this
    cluster's rows) of the kept item it duplicates.
    """
    emb = np.asarray(emb)
    dist = np.asarray(dist_to_centroid)
    _check(emb, dist, eps)
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    n = emb.shape[0]
    thr = np.float32(1.0 - eps)
    order = priority_order(dist, keep, seed)
    dup = np.full(n, -1, dtype=np.int64)
    kept = np.empty(0, dtype=np.int64)  # kept item ids, in priority order

    for s in range(0, n, block):
        ids = order[s : s + block]
        xb = np.asarray(emb[ids], dtype=np.float32)
        alive = np.ones(len(ids), dtype=bool)
        rep = np.full(len(ids), -1, dtype=np.int64)
        # 1. against items kept in earlier blocks, oldest first: the first hit is the
        #    highest-priority kept near-duplicate.
        for t in range(0, len(kept), block):
            rows = np.flatnonzero(alive)
            if rows.size == 0:
                break
            kc = kept[t : t + block]
            hit = (xb[rows] @ np.asarray(emb[kc], dtype=np.float32).T) > thr
            any_hit = hit.any(axis=1)
            if any_hit.any():
                r = rows[any_hit]
                rep[r] = kc[hit[any_hit].argmax(axis=1)]
                alive[r] = False
        # 2. within the block: only alive rows can suppress, and only later rows.
        rows = np.flatnonzero(alive)
        if rows.size > 1:
            xa = xb[rows]
            adj = np.triu((xa @ xa.T) > thr, k=1)
            live = np.ones(rows.size, dtype=bool)
            for i in np.flatnonzero(adj.any(axis=1)):
                if not live[i]:
                    continue
                kill = adj[i] & live
                if kill.any():
                    live[kill] = False
                    rep[rows[kill]] = ids[rows[i]]
            alive[rows[~live]] = False
        dup[ids[~alive]] = rep[~alive]
        kept = np.concatenate([kept, ids[alive]])
    return dup


def dedup_cluster_reference(
    emb: np.ndarray,
    dist_to_centroid: np.ndarray,
    eps: float,
    keep: Keep = "hard",
    seed: Seed = 0,
) -> np.ndarray:
    """The same rule on the full n x n similarity matrix, one item at a time (for tests)."""
    emb = np.asarray(emb)
    dist = np.asarray(dist_to_centroid)
    _check(emb, dist, eps)
    x = emb.astype(np.float32)
    sim = x @ x.T
    thr = np.float32(1.0 - eps)
    dup = np.full(len(x), -1, dtype=np.int64)
    kept: list[int] = []
    for j in priority_order(dist, keep, seed):
        for i in kept:
            if sim[j, i] > thr:
                dup[j] = i
                break
        else:
            kept.append(int(j))
    return dup


def dedup_by_cluster(
    emb: np.ndarray,
    labels: np.ndarray,
    dist_to_centroid: np.ndarray,
    eps: float,
    keep: Keep = "hard",
    seed: int = 0,
    block: int = 4096,
) -> np.ndarray:
    """:func:`dedup_cluster` over every cluster of an in-memory set of rows.

    Returns ``duplicate_of`` int64 (n,) as row indices of the input (-1 = kept). Clusters
    are deduplicated independently (items of different clusters are never compared, as in
    SemDeDup); 'random' uses the seed (seed, cluster_id), so a cluster's result does not
    depend on the other clusters. Rows of a cluster keep their input order for ties.
    """
    labels = np.asarray(labels)
    dist = np.asarray(dist_to_centroid)
    out = np.full(len(labels), -1, dtype=np.int64)
    if len(labels) == 0:
        return out
    by = np.argsort(labels, kind="stable")
    cuts = np.flatnonzero(np.diff(labels[by])) + 1
    for rows in np.split(by, cuts):
        c = int(labels[rows[0]])
        dup = dedup_cluster(emb[rows], dist[rows], eps, keep, seed=(seed, c), block=block)
        has = dup >= 0
        out[rows[has]] = rows[dup[has]]
    return out
