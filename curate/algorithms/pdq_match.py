"""Nearest listed PDQ hash within a Hamming distance (pure NumPy).

A PDQ hash is 256 bits packed as 4 ``uint64`` words (:mod:`curate.media.pdq`). The
distance of every query to every listed hash is computed block by block: a block of
``q`` queries x ``m`` listed hashes costs one ``(q, m)`` uint64 XOR and popcount per
word (``np.bitwise_count``) summed into a ``(q, m)`` uint16, so memory stays at
~``BLOCK`` x 10 bytes whatever the sizes (a hash list of millions is walked in slices).
ThreatExchange's own matcher for lists this size is a brute-force scan too (its ``flat``
index; ``mih`` for more).
"""

from __future__ import annotations

import numpy as np

#: query x listed pairs per block (~10 MB of temporaries)
BLOCK = 1 << 20


def nearest(queries: np.ndarray, listed: np.ndarray, distance: int,
            block: int = BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """(index of the nearest listed hash within ``distance`` bits, or -1; that distance,
    or 257) per query. Ties go to the lower listed index. Both arrays (n, 4) uint64."""
    q = np.ascontiguousarray(queries, np.uint64).reshape(-1, 4)
    ls = np.ascontiguousarray(listed, np.uint64).reshape(-1, 4)
    best = np.full(len(q), 257, np.int32)
    which = np.full(len(q), -1, np.int64)
    if not len(q) or not len(ls):
        return which, best
    m_step = max(1, min(len(ls), block))
    q_step = max(1, block // m_step)
    for m0 in range(0, len(ls), m_step):
        lb = ls[m0:m0 + m_step]
        for q0 in range(0, len(q), q_step):
            qb = q[q0:q0 + q_step]
            d = np.zeros((len(qb), len(lb)), np.uint16)
            for w in range(4):
                d += np.bitwise_count(qb[:, w, None] ^ lb[None, :, w])
            j = np.argmin(d, axis=1)
            dj = d[np.arange(len(qb)), j].astype(np.int32)
            better = dj < best[q0:q0 + q_step]  # strictly: an earlier slice wins ties
            best[q0:q0 + q_step][better] = dj[better]
            which[q0:q0 + q_step][better] = m0 + j[better]
    within = best <= distance
    which[~within] = -1
    return which, np.where(within, best, 257)
