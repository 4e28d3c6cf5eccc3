"""Which pool images are near-copies of evaluation images (pure NumPy / FAISS).

Two tests, either one flags a pair: a 64-bit perceptual hash within ``radius`` bits of an
eval image's (re-encoded, resized, lightly cropped copies; found through the same
multi-index bands as ``image_dedup``: a pair within the radius agrees on one band), and,
when both sides have CLIP image embeddings, a cosine similarity of at least ``threshold`` to
an eval image (exact inner-product search: eval sets are small next to the pool).
"""

from __future__ import annotations

import numpy as np

from curate.algorithms.image_dedup import band_values


def near_any(pool_h: np.ndarray, eval_h: np.ndarray, radius: int
             ) -> tuple[np.ndarray, np.ndarray]:
    """(pool hash within ``radius`` bits of some eval hash, that eval hash's index; -1)."""
    pool_h, eval_h = pool_h.astype(np.uint64), eval_h.astype(np.uint64)
    hit = np.zeros(len(pool_h), bool)
    which = np.full(len(pool_h), -1, np.int64)
    if not len(pool_h) or not len(eval_h):
        return hit, which
    for pb, eb in zip(band_values(pool_h, radius), band_values(eval_h, radius)):
        order = np.argsort(eb, kind="stable")
        sorted_eb = eb[order]
        lo = np.searchsorted(sorted_eb, pb, side="left")
        hi = np.searchsorted(sorted_eb, pb, side="right")
        rows = np.flatnonzero((hi > lo) & ~hit)
        # candidates: every eval hash sharing this band value (a few per pool hash)
        counts = hi[rows] - lo[rows]
        cand_row = np.repeat(rows, counts)
        offs = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        cand_eval = order[np.repeat(lo[rows], counts) + offs]
        close = np.bitwise_count(pool_h[cand_row] ^ eval_h[cand_eval]) <= radius
        found, first = np.unique(cand_row[close], return_index=True)
        which[found] = cand_eval[close][first]
        hit[found] = True
    return hit, which


def embedding_hits(pool_x: np.ndarray, eval_x: np.ndarray, threshold: float
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(max cosine similarity >= threshold, its eval index, that similarity) per pool row;
    rows of both are L2-normalised here."""
    import faiss

    def unit(x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, np.float32)
        n = np.linalg.norm(x, axis=1, keepdims=True)
        return x / np.where(n == 0, 1, n)

    if not len(pool_x) or not len(eval_x):
        return (np.zeros(len(pool_x), bool), np.full(len(pool_x), -1, np.int64),
                np.zeros(len(pool_x), np.float32))
    index = faiss.IndexFlatIP(eval_x.shape[1])
    index.add(unit(eval_x))
    sim, idx = index.search(unit(pool_x), 1)
    return sim[:, 0] >= threshold, idx[:, 0].astype(np.int64), sim[:, 0]
