"""MetaCLIP balancing: flatten the head of the entry distribution, keep the tail whole.

Every entry ``e`` gets a sampling probability ``p_e = min(1, t / count_e)`` where
``count_e`` is the number of captions of the (filtered) pool that match it. A pair is kept
when at least one of its matched entries passes a Bernoulli(p_e) draw, so
``P(keep) = 1 - prod_e (1 - p_e)``; pairs that match nothing are dropped.

The draws are deterministic so that results do not depend on sharding, order or worker
count: the draw of entry ``e`` for pair ``uid`` is ``u(seed, uid, e) < p_e`` with ``u`` the
hash of :func:`draw_u` (documented there so other tools can reproduce it).

``t`` is one number, or one number per entry (MetaCLIP 2: each entry gets its language's t,
:mod:`curate.algorithms.balancing_languages`); a per-entry t may be 0 (that language keeps
nothing, as in MetaCLIP 2), a single t must be positive.

Everything here works on one shard at a time: counts and expected sizes are sums over
shards, so a caller accumulates them and no whole-pool array is ever needed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.algorithms.uids import GOLDEN as _GOLDEN
from curate.algorithms.uids import M64 as _M64
from curate.algorithms.uids import mix64 as _mix64
from curate.algorithms.uids import mix64_int as _mix64_int
from curate.algorithms.uids import uid_key, uid_keys

logger = logging.getLogger(__name__)

#: uid_key and uid_keys are re-exported: they define the draws (see :func:`draw_u`).
__all__ = [
    "count_entries",
    "draw_kept",
    "draw_u",
    "expected_size",
    "keep_prob",
    "t_for_target",
    "tail_share",
    "uid_key",
    "uid_keys",
]


# --------------------------------------------------------------------------- inputs


def _flat(entry_ids) -> tuple[np.ndarray, np.ndarray, int]:
    """(parent row, entry id) of every matched pair, and the number of rows.

    Accepts ``list<int>`` Arrow arrays (chunked, sliced, with null lists = no match) or a
    Python list of lists.
    """
    if isinstance(entry_ids, pa.ChunkedArray):
        entry_ids = (entry_ids.combine_chunks() if entry_ids.num_chunks
                     else pa.array([], pa.list_(pa.int32())))
    if not isinstance(entry_ids, pa.Array):
        entry_ids = pa.array(entry_ids, pa.list_(pa.int32()))
    if not (pa.types.is_list(entry_ids.type) or pa.types.is_large_list(entry_ids.type)):
        raise TypeError(f"entry_ids must be a list<int> array, got {entry_ids.type}")
    values = entry_ids.flatten()
    if values.null_count:
        raise ValueError("entry_ids contains null entry ids")
    ids = values.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    parent = pc.list_parent_indices(entry_ids).to_numpy().astype(np.int64, copy=False)
    return parent, ids, len(entry_ids)


def _check_t(t, n_entries: int | None = None):
    """A positive finite float, or a per-entry float64 array of finite values >= 0."""
    if np.ndim(t) == 0:
        t = float(t)
        if not t > 0 or not np.isfinite(t):
            raise ValueError(f"t must be a positive finite number, got {t}")
        return t
    t = np.asarray(t, dtype=np.float64)
    if t.ndim != 1 or not np.all(np.isfinite(t)) or (t < 0).any():
        raise ValueError("a per-entry t must be a 1-D array of finite numbers >= 0")
    if n_entries is not None and t.size != n_entries:
        raise ValueError(f"per-entry t has {t.size} values for {n_entries} entries")
    return t


def _entry_probs(counts: np.ndarray, t) -> np.ndarray:
    """p_e = min(1, t_e / count_e) as float64 (MetaCLIP 2's ``count_to_prob``: t / max(count,
    t)); entries with count 0 get 1 (they match no pair, so the value is never drawn)."""
    counts = np.asarray(counts, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.minimum(1.0, t / counts)
    p[counts == 0] = 1.0
    return p


def _check_ids(ids: np.ndarray, n_entries: int) -> None:
    if ids.size and (ids.min() < 0 or ids.max() >= n_entries):
        raise ValueError(f"entry ids must be in [0, {n_entries}); got {ids.min()}..{ids.max()}")


# --------------------------------------------------------------------------- counts, P(keep)


def count_entries(entry_ids, n_entries: int) -> np.ndarray:
    """Per-entry number of captions matching it, as int64 of length ``n_entries``.

    Entry ids are unique within a caption (the matcher guarantees it), so this counts
    captions. Counts of shards add up: sum them for the pool.
    """
    _, ids, _ = _flat(entry_ids)
    _check_ids(ids, n_entries)
    return np.bincount(ids, minlength=n_entries).astype(np.int64)


def keep_prob(entry_ids, counts: np.ndarray, t) -> np.ndarray:
    """P(keep) = 1 - prod(1 - min(1, t/count_e)) per pair (float32); 0 for no match."""
    counts = np.asarray(counts)
    t = _check_t(t, counts.size)
    parent, ids, n = _flat(entry_ids)
    _check_ids(ids, counts.size)
    return _keep_prob_flat(parent, _entry_probs(counts, t)[ids], n).astype(np.float32)


def _keep_prob_flat(parent, p, n) -> np.ndarray:
    """P(keep) per row from ``p``, the probability of each (row, entry) pair."""
    # Sum log(1 - p) per row; rows without matches sum to 0 -> P(keep) = 0. p = 1 gives
    # -inf -> exp = 0 -> P(keep) = 1, with no NaN since every term is <= 0.
    with np.errstate(divide="ignore"):
        log_miss = np.log1p(-p)
    total = np.bincount(parent, weights=log_miss, minlength=n)
    return 0.0 - np.expm1(total)  # 0.0 - ... turns -0.0 into 0.0


# --------------------------------------------------------------------------- draws


def draw_u(seed: int, uid: str, entry_id: int) -> float:
    """The uniform draw of entry ``entry_id`` for pair ``uid``, in [0, 1). Reference version.

    With ``mix(z)`` splitmix64's finaliser on 64-bit unsigned integers (all arithmetic
    modulo 2**64)::

        mix(z):  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
                 z = (z ^ (z >> 27)) * 0x94D049BB133111EB
                 return z ^ (z >> 31)

        key = int(uid[:16], 16)          if uid starts with 16 hex digits (curate's uids are
                                         32 hex digits), else the first 8 bytes of
                                         sha256(uid as UTF-8) read big-endian
        s   = mix((seed mod 2**64) ^ 0x9E3779B97F4A7C15)
        h   = mix(mix(key ^ s) + (entry_id + 1) * 0x9E3779B97F4A7C15)
        u   = (h >> 11) / 2**53

    The pair keeps entry ``e``'s draw when ``u < min(1, t / count_e)``. :func:`draw_kept`
    computes the same numbers vectorised.
    """
    s = _mix64_int((seed & _M64) ^ _GOLDEN)
    a = _mix64_int(uid_key(uid) ^ s)
    h = _mix64_int((a + (entry_id + 1) * _GOLDEN) & _M64)
    return (h >> 11) / float(1 << 53)


def _draws(keys_per_pair: np.ndarray, ids: np.ndarray, seed: int) -> np.ndarray:
    s = np.uint64(_mix64_int((int(seed) & _M64) ^ _GOLDEN))
    with np.errstate(over="ignore"):
        a = _mix64(keys_per_pair ^ s)
        h = _mix64(a + (ids.astype(np.uint64) + np.uint64(1)) * np.uint64(_GOLDEN))
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def draw_kept(uids, entry_ids, counts: np.ndarray, t, seed: int = 0) -> np.ndarray:
    """Kept flag per pair: some matched entry e passes ``draw_u(seed, uid, e) < p_e``.

    Deterministic in (seed, uid, matched ids, counts, t) only, so any sharding, order or
    worker count gives the same kept set. Pairs matching nothing are not kept.
    """
    return balance(uids, entry_ids, counts, t, seed)[1]


def balance(uids, entry_ids, counts: np.ndarray, t, seed: int = 0
            ) -> tuple[np.ndarray, np.ndarray]:
    """(:func:`keep_prob`, :func:`draw_kept`) of the same pairs, in one pass.

    A pair with a tail entry (p_e = 1) is kept whatever its draws, so draws are computed
    only for the pairs that have none: in a pool of long captions most pairs hold a tail
    entry (measured on synthetic 16-token captions: 5x fewer hashes). Same result as
    drawing every entry, since ``u < 1`` always holds.
    """
    counts = np.asarray(counts)
    t = _check_t(t, counts.size)
    parent, ids, n = _flat(entry_ids)
    _check_ids(ids, counts.size)
    if len(uids) != n:
        raise ValueError(f"{len(uids)} uids for {n} rows of entry_ids")
    kept = np.zeros(n, dtype=bool)
    p = _entry_probs(counts, t)[ids]
    kept[parent[p >= 1.0]] = True
    todo = np.flatnonzero(~kept[parent])  # every (pair, entry) of the pairs without one
    # P(keep) of those pairs from their own terms, in the same order: the same float sums
    prob = _keep_prob_flat(parent[todo], p[todo], n)
    prob[kept] = 1.0
    if todo.size:
        keys = uid_keys(uids)
        passed = _draws(keys[parent[todo]], ids[todo], seed) < p[todo]
        kept[parent[todo[passed]]] = True
    return prob.astype(np.float32), kept


# --------------------------------------------------------------------------- planning


def expected_size(entry_ids, counts: np.ndarray, t_values) -> np.ndarray:
    """Sum over the rows of ``entry_ids`` of P(keep), for each t in ``t_values`` (float64).

    ``t_values``: numbers, or a 2-D array with one per-entry t per row. Pass one shard at a
    time and add the results: the pool's expected kept size.
    """
    counts = np.asarray(counts)
    t_values = np.atleast_1d(np.asarray(t_values, dtype=np.float64))
    for t in t_values:
        _check_t(t, counts.size)
    parent, ids, n = _flat(entry_ids)
    _check_ids(ids, counts.size)
    return np.array([_keep_prob_flat(parent, _entry_probs(counts, t)[ids], n).sum()
                     for t in t_values])


def t_for_target(
    entry_ids: pa.Array | Sequence[pa.Array] | Iterable[pa.Array],
    counts: np.ndarray,
    target: float,
    rel_tol: float = 1e-4,
    grid: int = 16,
) -> float:
    """The t whose expected kept size is ``target`` (expected size is monotone in t).

    ``entry_ids`` is one list array or a re-iterable collection of shards (a list, or an
    object whose ``__iter__`` reads the shards again): each pass over it evaluates a grid
    of ``grid`` values of t at once, so the bracket shrinks by a factor ``grid`` per pass rather
    than by 2 as in plain bisection. Stops when the bracket is within ``rel_tol`` of t.
    Raises ValueError when the target exceeds the number of pairs that match something.
    """
    counts = np.asarray(counts)
    shards = [entry_ids] if isinstance(entry_ids, pa.Array | pa.ChunkedArray) else entry_ids

    def sizes(ts: np.ndarray) -> np.ndarray:
        total = np.zeros(ts.size)
        for shard in shards:
            total += expected_size(shard, counts, ts)
        return total

    target = float(target)
    hi = float(max(counts.max(initial=0), 1))
    ceiling = sizes(np.array([hi]))[0]  # every p_e = 1: every matched pair is kept
    if not 0 < target <= ceiling:
        raise ValueError(f"target must be in (0, {ceiling:.0f}] (pairs that match an entry), "
                         f"got {target}")
    return grid_search(sizes, hi, target, grid, rel_tol)


def grid_search(sizes: Any, hi: float, target: float, grid: int, rel_tol: float) -> float:
    """The smallest t in (0, hi] (to ``rel_tol`` of it) with ``sizes(t) >= target``, for a
    ``sizes`` that grows with t and reaches ``target`` at ``hi``. Each pass evaluates
    ``grid`` values of t in one call (one read of the shards), so the bracket shrinks by a
    factor ``grid`` a pass rather than 2."""
    lo = 0.0
    for _ in range(200):  # each pass divides the bracket by `grid`: 200 is never reached
        if hi - lo <= rel_tol * hi:
            break
        ts = np.linspace(lo, hi, grid + 1)[1:]
        s = sizes(ts)
        above = np.flatnonzero(s >= target)[0]  # s[-1] >= target always holds
        lo, hi = (ts[above - 1] if above else lo), ts[above]
    return hi


def tail_share(counts: np.ndarray, t: float) -> float:
    """Share of all matches that fall in tail entries (count < t)."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    return float(counts[counts < t].sum() / total) if total > 0 else 0.0
