"""Exact top-k by distributed radix selection (the score stage's ``top_fraction`` filter).

The filter keeps exactly the k pairs with the highest CLIP score over the whole pool, ties
broken by uid key ascending (:func:`curate.algorithms.uids.uid_keys`), so the kept set
does not depend on sharding, order or worker count. The driver must never hold per-pair
data (a pool has billions of pairs), so it runs an MSD radix select over a 96-bit key:

1. Every row gets the key ``(hi, lo)`` of :func:`sort_keys`; ascending key order is
   (score descending, uid key ascending). The key is cut into 6 digits of 16 bits.
2. Each pass, every shard returns :func:`digit_histogram` (65,536 int64 counts) of the
   next digit over its rows that share the current prefix; the driver sums them and
   :class:`TopKSelector` picks the digit where the cumulative count reaches the number
   still needed (:func:`next_prefix`).
3. When the chosen bin is kept whole (or all 6 digits are fixed), every shard keeps the
   rows whose key prefix is <= the final prefix (:func:`keep_mask`).

Scores are mostly distinct in their top 32 bits, so 2-3 passes usually suffice and 6 is
the worst case. The driver's state is a prefix of <= 6 ints and one histogram: O(1) in
pairs. Pure NumPy: no Ray, no I/O.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from curate.algorithms.uids import uid_keys

#: Digits in a key and bits per digit: 2 digits from ``hi`` (32 bits), 4 from ``lo`` (64).
LEVELS = 6
DIGIT_BITS = 16
BINS = 1 << DIGIT_BITS
_HI_LEVELS = 2
#: Digits that hold the score: a prefix of this many digits fixes one float32 score, so a
#: selection stopped there keeps every row scoring at least the k-th score (ties included,
#: DataComp's ``>=`` threshold rule) and :func:`keep_mask` needs no uid digits.
SCORE_LEVELS = _HI_LEVELS

Prefix = tuple[int, ...]


# --------------------------------------------------------------------------- keys


def sort_keys(scores: np.ndarray, uids: Any) -> tuple[np.ndarray, np.ndarray]:
    """The composite 96-bit key ``(hi uint32, lo uint64)`` per row.

    Ascending ``(hi, lo)`` order is score descending, then uid key ascending. ``hi`` is the
    float32 score's bits made order-preserving (negative: all bits flipped; positive: the
    sign bit flipped) and then inverted, so a higher score gets a smaller ``hi``; ``-0.0``
    is first turned into ``+0.0`` so the two zeros tie (and fall to the uid tie-break).
    ``lo`` is ``uid_keys(uids)``. Scores are compared as float32 (float64 input is rounded).
    NaN scores have no place in the order: the caller drops those rows first; a NaN here
    raises ``ValueError``.
    """
    s = np.asarray(scores, dtype=np.float32).ravel()
    if np.isnan(s).any():
        raise ValueError("sort_keys: scores contain NaN; drop those rows before selecting")
    s = s + np.float32(0.0)  # -0.0 + 0.0 == +0.0
    bits = s.view(np.uint32)
    neg = (bits >> np.uint32(31)).astype(bool)
    ordered = np.where(neg, ~bits, bits | np.uint32(1 << 31))
    hi = ~ordered
    lo = uid_keys(uids)
    if len(lo) != len(hi):
        raise ValueError(f"sort_keys: {len(hi)} scores for {len(lo)} uids")
    return hi.astype(np.uint32, copy=False), lo


def _check_prefix(prefix: Prefix) -> Prefix:
    prefix = tuple(int(d) for d in prefix)
    if len(prefix) > LEVELS:
        raise ValueError(f"a prefix has at most {LEVELS} digits, got {len(prefix)}")
    if any(not 0 <= d < BINS for d in prefix):
        raise ValueError(f"prefix digits must be in [0, {BINS}), got {prefix}")
    return prefix


def _prefix_parts(prefix: Prefix) -> tuple[int, int, int, int]:
    """(hi digits, hi value, lo digits, lo value) of a prefix, each part as one integer."""
    nh = min(len(prefix), _HI_LEVELS)
    nl = len(prefix) - nh
    hv = lv = 0
    for d in prefix[:nh]:
        hv = (hv << DIGIT_BITS) | d
    for d in prefix[nh:]:
        lv = (lv << DIGIT_BITS) | d
    return nh, hv, nl, lv


def _top(x: np.ndarray, digits: int, width: int) -> np.ndarray | None:
    """The top ``digits`` 16-bit digits of each element of ``x`` (a ``width``-bit array);
    None when ``digits`` is 0."""
    if digits == 0:
        return None
    shift = width - DIGIT_BITS * digits
    return x >> x.dtype.type(shift) if shift else x


def _digit(hi: np.ndarray, lo: np.ndarray, level: int) -> np.ndarray:
    """Digit number ``level`` (0 = most significant) of each key, as intp."""
    if level < _HI_LEVELS:
        x, shift = hi, 32 - DIGIT_BITS * (level + 1)
    else:
        x, shift = lo, 64 - DIGIT_BITS * (level - _HI_LEVELS + 1)
    return ((x >> x.dtype.type(shift)) & x.dtype.type(BINS - 1)).astype(np.intp)


def _arrays(hi: np.ndarray, lo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    hi = np.asarray(hi, dtype=np.uint32)
    lo = np.asarray(lo, dtype=np.uint64)
    if hi.shape != lo.shape or hi.ndim != 1:
        raise ValueError(f"hi and lo must be 1-D of one length, got {hi.shape}, {lo.shape}")
    return hi, lo


# --------------------------------------------------------------------------- shard side


def digit_histogram(hi: np.ndarray, lo: np.ndarray, prefix: Prefix) -> np.ndarray:
    """Counts (int64, 65,536 bins) of digit ``len(prefix)`` over the rows whose first
    ``len(prefix)`` digits equal ``prefix``. What one shard returns per pass; histograms of
    shards add up. ``prefix`` must have fewer than 6 digits."""
    hi, lo = _arrays(hi, lo)
    prefix = _check_prefix(prefix)
    level = len(prefix)
    if level >= LEVELS:
        raise ValueError(f"the prefix already fixes all {LEVELS} digits: nothing to count")
    nh, hv, nl, lv = _prefix_parts(prefix)
    if nh:
        m = _top(hi, nh, 32) == np.uint32(hv)
        if nl:
            m &= _top(lo, nl, 64) == np.uint64(lv)
        hi, lo = hi[m], lo[m]
    return np.bincount(_digit(hi, lo, level), minlength=BINS).astype(np.int64, copy=False)


def keep_mask(hi: np.ndarray, lo: np.ndarray, prefix: Prefix | None) -> np.ndarray:
    """The final per-shard decision: rows whose first ``len(prefix)`` digits, read as one
    number, are <= ``prefix`` (lexicographic on the digit sequence).

    ``prefix`` is :attr:`TopKSelector.prefix` once the selector is done: ``()`` keeps every
    row (k >= n) and ``None`` keeps none (k = 0).
    """
    hi, lo = _arrays(hi, lo)
    if prefix is None:
        return np.zeros(hi.shape, dtype=bool)
    nh, hv, nl, lv = _prefix_parts(_check_prefix(prefix))
    if nh == 0:
        return np.ones(hi.shape, dtype=bool)
    top_hi = _top(hi, nh, 32)
    if nl == 0:
        return top_hi <= np.uint32(hv)
    lo_ok = _top(lo, nl, 64) <= np.uint64(lv)
    return (top_hi < np.uint32(hv)) | ((top_hi == np.uint32(hv)) & lo_ok)


# --------------------------------------------------------------------------- driver side


def next_prefix(hist: np.ndarray, need: int) -> tuple[int, int, int]:
    """``(digit, need_after, count_in_digit)``: the first digit whose cumulative count
    reaches ``need`` (>= 1); ``need_after = need - sum(hist[:digit])`` rows are still to be
    taken from that digit's bin, which holds ``count_in_digit`` (>= need_after) rows.
    Raises ``ValueError`` when the histogram holds fewer than ``need`` rows."""
    hist = np.asarray(hist, dtype=np.int64)
    if hist.shape != (BINS,):
        raise ValueError(f"a histogram has {BINS} bins, got shape {hist.shape}")
    need = int(need)
    if need < 1:
        raise ValueError(f"need must be >= 1, got {need}")
    cum = np.cumsum(hist)
    if cum[-1] < need:
        raise ValueError(f"the histogram holds {int(cum[-1])} rows, {need} are needed: were "
                         "the shards' histograms computed for the current prefix?")
    d = int(np.searchsorted(cum, need, side="left"))
    count = int(hist[d])
    return d, need - int(cum[d] - count), count


class TopKSelector:
    """Driver-side state of the radix select for the top ``k`` of ``n`` rows.

    Loop: while not :attr:`done`, send :attr:`prefix` to every shard, sum the shards'
    :func:`digit_histogram` results and pass the sum to :meth:`feed`. Then every shard
    applies :func:`keep_mask` with the final :attr:`prefix`.

    ``n`` (rows over the pool, NaN scores excluded) may be None: the first histogram's
    total is used, and a k >= n is then found after one pass instead of with none.
    ``k = 0`` is done at once with ``prefix = None`` (keep nothing); ``k >= n`` with
    ``prefix = ()`` (keep everything). Done when the chosen bin is kept whole (exactly k
    rows kept) or when all 6 digits are fixed: the rows left in the last bin then share the
    full 96-bit key (same float32 score and same uid key, i.e. duplicate uids or a 64-bit
    hash collision) and all of them are kept, so :attr:`n_kept` may exceed k.
    Picklable; holds O(1) state.
    """

    def __init__(self, k: int, n: int | None = None):
        k = int(k)
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        if n is not None and int(n) < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        self.k = k
        self.n = None if n is None else int(n)
        self.need = k  # rows still to take from those matching the prefix
        self.prefix: Prefix | None = ()
        self.n_kept: int | None = None
        self.done = False
        self.passes = 0
        if k == 0:
            self._finish(None, 0)
        elif self.n is not None and k >= self.n:
            self._finish((), self.n)

    @classmethod
    def resume(cls, k: int, n: int, prefix: Prefix, need: int) -> TopKSelector:
        """A selector part way through (``prefix`` non-empty), rebuilt from the state a
        driver recorded after an earlier pass (:attr:`prefix`, :attr:`need`)."""
        sel = cls(k, n)
        if not sel.done:
            sel.prefix, sel.need, sel.passes = tuple(int(d) for d in prefix), int(need), len(prefix)
        return sel

    def _finish(self, prefix: Prefix | None, n_kept: int) -> None:
        self.prefix, self.n_kept, self.done = prefix, n_kept, True

    def feed(self, hist: np.ndarray) -> Prefix | None:
        """Fold one pass's summed histogram (for the current prefix); returns the new
        :attr:`prefix` (final when :attr:`done`)."""
        if self.done:
            raise RuntimeError("TopKSelector.feed: the selection is already done")
        assert self.prefix is not None
        hist = np.asarray(hist, dtype=np.int64)
        if not self.prefix:  # first pass: the histogram covers the whole pool
            total = int(hist.sum())
            if self.n is not None and total != self.n:
                raise ValueError(f"the first histogram counts {total} rows, n = {self.n}")
            self.n = total
            if self.k >= total:
                self.passes += 1
                self._finish((), total)
                return self.prefix
        digit, need_after, count = next_prefix(hist, self.need)
        self.passes += 1
        self.prefix = (*self.prefix, digit)
        self.need = need_after
        if count == need_after or len(self.prefix) == LEVELS:
            self._finish(self.prefix, self.k - need_after + count)
        return self.prefix

    def __repr__(self) -> str:
        return (f"TopKSelector(k={self.k}, n={self.n}, prefix={self.prefix}, "
                f"need={self.need}, done={self.done})")
