"""Per-row checks of a pool batch, for ingest: captions, URLs, embeddings and uids.

Every check is a whole-column pyarrow/numpy operation (no Python loop over rows), so a
pool of millions of rows validates in seconds; Python only looks at a row to word the
error about it.

A bad row has one reason code, the first that applies in ``BAD_ROW_CODES`` order. The
codes are stable names for ``run.json``'s ``pool.bad_rows`` counts (what ``on_bad_row:
drop`` dropped), so reports and scripts can rely on them; the error messages are for
people and may be reworded.

Problems of a whole column (a caption column of integers, embeddings stored as strings, a
fixed-size embedding type of another dimension) are errors even under ``drop``: dropping
would drop every row, which is never what the user meant.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.config import PoolConfig
from curate.errors import InputError

#: reason codes of bad rows, in the order they are checked (a row counts under its first)
BAD_ROW_CODES = ("caption_null", "caption_empty", "caption_too_long", "caption_nul_char",
                 "url_null", "url_not_http", "embedding_null", "embedding_wrong_dim",
                 "embedding_not_finite")
EMBEDDING_COLUMNS = ("image_emb", "text_emb")
_DROP_HINT = "fix the pool or set pool.on_bad_row=drop to drop and count such rows"


@dataclass
class _Problem:
    code: str
    mask: np.ndarray  # bool per row of the batch
    describe: Callable[[int], str]  # batch row -> what is wrong with it (for the error)


class EmbeddingDims:
    """The pool's dimension of each embedding column, and where it came from.

    Every row of the pool must have the same dimension (score and prune stack them into
    one matrix), across batches and files and across runs that add files: the dimensions
    are recorded in ``run.json`` as ``pool.embedding_dims`` and later files are checked
    against them. A new column's dimension is that of most rows of its first batch (ties:
    the earliest), so one broken first row does not make every good row "wrong".
    """

    def __init__(self, recorded: dict[str, int] | None = None):
        self.dims: dict[str, int] = {k: int(v) for k, v in (recorded or {}).items()}
        self._origin: dict[str, tuple[str, str | None]] = {
            k: ("the pool's dimension recorded in run.json", None) for k in self.dims}

    def set(self, col: str, dim: int, how: str, path: str) -> None:
        self.dims[col] = dim
        self._origin[col] = (how, path)

    def origin(self, col: str, path: str) -> str:
        """Where ``col``'s dimension came from, as seen from file ``path``."""
        how, source = self._origin[col]
        return how if source in (None, path) else f"{how} of {source}"

    def expected(self, col: str, path: str, lengths: np.ndarray, usable: np.ndarray
                 ) -> int | None:
        """The dimension rows of ``col`` must have; sets it from this batch if new."""
        if col not in self.dims:
            valid = lengths[usable & (lengths > 0)]
            if not valid.size:
                return None
            values, first, counts = np.unique(valid, return_index=True, return_counts=True)
            best = max(range(len(values)), key=lambda j: (counts[j], -first[j]))
            self.set(col, int(values[best]), "the dimension of most of the first rows", path)
        return self.dims[col]


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _embedding_type(col: str, arr: pa.Array, path: str, dims: EmbeddingDims) -> None:
    """Column-level checks: a list of floats or integers, of the pool's size if fixed."""
    t = arr.type
    if not (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)) \
            or not (pa.types.is_floating(t.value_type) or pa.types.is_integer(t.value_type)):
        raise InputError(
            f"pool {path}: {col} column has type {t}, expected a list of floats (one "
            f"embedding per row); map another column with pool.columns.{col}")
    if pa.types.is_fixed_size_list(t) and t.list_size:
        d = dims.dims.get(col)
        if d is None:
            dims.set(col, t.list_size, f"the size of the {col} type", path)
        elif d != t.list_size:
            raise InputError(
                f"pool {path}: {col} has type {t}, {t.list_size} values a row, but the pool's "
                f"{col} dimension is {d} ({dims.origin(col, path)}); every file of a pool must "
                "bring embeddings of one dimension")


def _embedding_problems(col: str, arr: pa.Array, path: str, dims: EmbeddingDims
                        ) -> list[_Problem]:
    _embedding_type(col, arr, path, dims)
    n = len(arr)
    null = arr.is_null().to_numpy(zero_copy_only=False)
    lengths = pc.fill_null(pc.list_value_length(arr), 0).to_numpy(zero_copy_only=False)
    d = dims.expected(col, path, lengths, ~null)
    wrong = ~null & ((lengths != d) if d is not None else np.ones(n, bool))
    flat = pc.list_flatten(arr)
    ok = pc.is_finite(flat) if pa.types.is_floating(flat.type) else pc.is_valid(flat)
    bad_values = pc.invert(pc.fill_null(ok, False))
    not_finite = np.zeros(n, bool)
    if pc.any(bad_values).as_py():
        # list_flatten emits lengths[i] values per non-null row, in order (null rows none,
        # whatever their slots hold), so a value's row is found from the running lengths
        at = np.flatnonzero(_np(bad_values))
        not_finite[np.searchsorted(np.cumsum(lengths), at, side="right")] = True

    def first_bad_value(i: int) -> str:
        values = arr[i].as_py()
        j = next(j for j, v in enumerate(values) if v is None or not math.isfinite(v))
        return f"{col} has a non-finite value ({values[j]}) at index {j}"

    def wrong_dim(i: int) -> str:
        if d is None:
            return f"{col} is an empty list (no values)"
        return f"{col} has {lengths[i]} values, expected {d} ({dims.origin(col, path)})"

    return [_Problem("embedding_null", null, lambda i: f"{col} is null"),
            _Problem("embedding_wrong_dim", wrong, wrong_dim),
            _Problem("embedding_not_finite", not_finite, first_bad_value)]


def learn_dims(table: pa.Table, path: str, dims: EmbeddingDims, cols: list[str]) -> bool:
    """Fix each of ``cols``' dimension from this batch as :func:`check_rows` would (the
    column's type, else most rows); True once all of them are known. Ingest calls it on
    the driver, on a file's first batches, before workers check the rows with the result."""
    for col in cols:
        if col not in table.column_names or col in dims.dims:
            continue
        arr = table[col].combine_chunks()
        _embedding_type(col, arr, path, dims)
        if col not in dims.dims:
            null = arr.is_null().to_numpy(zero_copy_only=False)
            lengths = pc.fill_null(pc.list_value_length(arr), 0).to_numpy(
                zero_copy_only=False)
            dims.expected(col, path, lengths, ~null)
    return all(c in dims.dims for c in cols)


def _np(mask: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return pc.fill_null(mask, False).to_numpy(zero_copy_only=False).astype(bool, copy=False)


def check_rows(table: pa.Table, cfg: PoolConfig, path: str, row0: int, dims: EmbeddingDims
               ) -> tuple[np.ndarray, dict[str, int]]:
    """Validate a batch whose first row is row ``row0`` of ``path``.

    Returns the mask of good rows and the bad rows counted by code; with ``on_bad_row:
    error`` raises instead, naming the first bad row and its first problem.
    """
    cap = table["caption"].combine_chunks()
    if not _is_text(cap.type):
        raise InputError(f"pool {path}: caption column has type {cap.type}, expected string")

    def shown(col: pa.Array, reason: str) -> Callable[[int], str]:
        return lambda i: f"{reason} ({repr(col[i].as_py())[:80]})"

    problems = [
        _Problem("caption_null", _np(pc.is_null(cap)), shown(cap, "caption is null")),
        _Problem("caption_empty", _np(pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(cap)),
                                               0)), shown(cap, "caption is empty")),
        _Problem("caption_too_long", _np(pc.greater(pc.binary_length(cap),
                                                    cfg.max_caption_bytes)),
                 shown(cap, f"caption longer than {cfg.max_caption_bytes} bytes")),
        _Problem("caption_nul_char", _np(pc.match_substring(cap, "\x00")),
                 shown(cap, "caption contains a NUL character")),
    ]
    if "url" in table.column_names:
        url = table["url"].combine_chunks()
        if not _is_text(url.type):
            raise InputError(f"pool {path}: url column has type {url.type}, expected string")
        if "image" not in table.column_names:  # URLs only matter when there is no image
            problems.append(_Problem("url_null", _np(pc.is_null(url)),
                                     shown(url, "url is null")))
            problems.append(_Problem("url_not_http", _np(pc.invert(pc.match_substring_regex(
                url, r"^[hH][tT][tT][pP][sS]?://[^\s/]"))), shown(url, "url is not http(s)")))
    emb = [p for col in EMBEDDING_COLUMNS if col in table.column_names
           for p in _embedding_problems(col, table[col].combine_chunks(), path, dims)]
    # one entry per code, columns in order, so each row counts under its first problem
    problems += sorted(emb, key=lambda p: BAD_ROW_CODES.index(p.code))

    bad = np.zeros(table.num_rows, bool)
    counts: dict[str, int] = {}
    for p in problems:
        new = int((p.mask & ~bad).sum())
        if new:
            counts[p.code] = counts.get(p.code, 0) + new
            bad |= p.mask
    if counts and cfg.on_bad_row == "error":
        i = int(np.flatnonzero(bad)[0])
        first = next(p for p in problems if p.mask[i])
        raise InputError(f"pool {path}: row {row0 + i}: {first.describe(i)}; {_DROP_HINT}")
    return ~bad, counts


def embeddings_as_float(table: pa.Table) -> pa.Table:
    """Integer embeddings (quantised ones) become float32, keeping the list kind; float
    embeddings are kept as they are, bit for bit."""
    for col in EMBEDDING_COLUMNS:
        if col not in table.column_names:
            continue
        t = table.schema.field(col).type
        if pa.types.is_integer(t.value_type):
            to = (pa.list_(pa.float32(), t.list_size) if pa.types.is_fixed_size_list(t) else
                  pa.large_list(pa.float32()) if pa.types.is_large_list(t) else
                  pa.list_(pa.float32()))
            table = table.set_column(table.column_names.index(col), col,
                                     pc.cast(table[col], to, safe=False))
    return table


def check_uids(table: pa.Table, good: np.ndarray, path: str, row0: int) -> pa.Table:
    """A pool's own uid column: strings of any form, or integers (cast to strings).

    Only null and empty uids are errors (in either on_bad_row mode: a uid is the key every
    later stage joins on, and there is no reason code for a missing one), checked on the
    rows that are otherwise good.
    """
    uid = table["uid"]
    if pa.types.is_integer(uid.type) or pa.types.is_large_string(uid.type):
        uid = pc.cast(uid, pa.string())
    elif not pa.types.is_string(uid.type):
        raise InputError(f"pool {path}: uid column has type {uid.type}, expected string or "
                         "integer")
    for reason, mask in (("uid is null", pc.is_null(uid)),
                         ("uid is an empty string", pc.equal(pc.binary_length(uid), 0))):
        bad = _np(mask) & good
        if bad.any():
            raise InputError(f"pool {path}: row {row0 + int(np.flatnonzero(bad)[0])}: "
                             f"{reason}; a pool's own uids must be non-empty")
    return table.set_column(table.column_names.index("uid"), "uid", uid)


def check_uid_conflicts(t: pa.Table, path: str, rows: np.ndarray) -> None:
    """A pool's own uids must name one pair each: the same uid with another caption or URL
    is an error (two different pairs would be conflated), not a duplicate to drop.
    Checked within each batch read (up to 65k rows); across batches a repeated uid is
    treated as an exact duplicate. ``rows``: each row's number in the file."""
    cols = [c for c in ("url", "caption") if c in t.column_names]
    g = t.select(["uid", *cols]).group_by("uid").aggregate(
        [(c, "count_distinct") for c in cols])
    for c in cols:
        bad = g.filter(pc.greater(g[f"{c}_count_distinct"], 1))
        if bad.num_rows:
            uid = bad["uid"][0].as_py()
            at = rows[np.flatnonzero(_np(pc.equal(t["uid"], uid)))]
            raise InputError(f"pool {path}: uid {uid!r} names different pairs (rows "
                             f"{at[0]} and {at[1]} differ in {c})")
