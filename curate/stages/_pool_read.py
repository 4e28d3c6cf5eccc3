"""Reading new pool files into staged chunks, piece by piece on workers (ingest's ``read``).

Why: reading, checking and hashing the rows (a sha256 per pair for the uid) was ingest's
one serial part, on the driver: 7 of 11 s for 4M caption pairs on 2 cores. The driver now
reads only each file's footer (and, for a column of embeddings new to the pool, the first
rows that fix its dimension) and plans *pieces*: runs of whole row groups of about
:data:`PIECE_ROWS` rows, so no row group is read twice. Each piece is one engine task.

Chunks (the staged ``pool/_staging/part-N``) are planned from the footer too, before any row
is read: a file's rows are cut at multiples of ``shard_size`` (file row numbers, before
bad rows are dropped) and at piece boundaries, and numbered in pool order. So numbering is
fixed whatever order the tasks finish in, and a chunk that lost rows (bad rows) is simply
short, or empty: the dedup step's final layout (``_pool_dedup.final_layout``) cuts each
file's kept rows into ``shard_size`` shards whatever the chunks are, so the final shards
are exactly those of a sequential read.

Checks are those of a sequential read: the same batches (a row group at a time, at most
``min(65536, 2 * shard_size)`` rows), the same per-row checks (``pool_checks``), and the
dimension of each embedding column fixed on the driver from the first rows of the first
file that has it, as the sequential reader did. A task that finds a bad row (under
``on_bad_row: error``) returns the error instead of raising it; the driver raises the one
of the first piece in pool order, so the error names the same (first) bad row every run.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curate.config import PoolConfig
from curate.core import faults
from curate.core.io import shard_name, write_parquet_atomic
from curate.core.rundir import RunDir
from curate.errors import InputError
from curate.stages.pool_checks import (
    EMBEDDING_COLUMNS,
    EmbeddingDims,
    check_rows,
    check_uid_conflicts,
    check_uids,
    embeddings_as_float,
    learn_dims,
)

#: rows per read task, at least (whole row groups): enough to amortise a task, few
#: enough that a 4M-row file keeps 2 cores busy
PIECE_ROWS = 1 << 18

CANONICAL_DEFAULTS = {"uid": "uid", "url": "url", "caption": "caption", "image": "image",
                      "image_emb": "image_emb", "text_emb": "text_emb", "lang": "lang"}
#: ``lang`` (a language code the pool brings) is read as is by the language stage
_CANONICAL = ("uid", "url", "caption", "image", "image_emb", "text_emb", "lang")


def compute_uids(urls: pa.Array | None, captions: pa.Array) -> pa.Array:
    """uid = hex of the first 16 bytes of sha256(url + "\n" + caption).

    The hex of all digests is one ``bytes.hex`` call turned into an Arrow array without a
    Python string per pair (Arrow's element-wise join is slower than Python's f-string).
    """
    n = len(captions)
    caps = captions.to_pylist()
    us = urls.to_pylist() if urls is not None else [None] * n
    sha = hashlib.sha256
    digests = b"".join([sha(f"{u or ''}\n{c}".encode()).digest()[:16]
                        for u, c in zip(us, caps)])
    offsets = pa.array(np.arange(0, 32 * n + 1, 32, dtype=np.int32))
    return pa.StringArray.from_buffers(n, offsets.buffers()[1],
                                       pa.py_buffer(digests.hex().encode()))


def column_map(cfg: PoolConfig, names: list[str], path: str) -> dict[str, str]:
    """canonical name -> the file's column, per ``pool.columns`` (errors name the file)."""
    mapping: dict[str, str] = {}
    for canon, default in CANONICAL_DEFAULTS.items():
        src = cfg.columns.get(canon, default)
        if src in names:
            mapping[canon] = src
        elif canon in cfg.columns:
            raise InputError(
                f"pool {path}: column '{src}' (pool.columns.{canon}) not found; "
                f"columns are: {', '.join(names)}")
    if "caption" not in mapping:
        raise InputError(
            f"pool {path}: no caption column 'caption'; columns are: {', '.join(names)} "
            f"(map one with pool.columns.caption, e.g. --set pool.columns.caption=TEXT)")
    return mapping


def batches(pf: pq.ParquetFile, cfg: PoolConfig, mapping: dict[str, str],
            row_groups: list[int]):
    """(first file row, table with canonical names, extras last) per batch, in file order.

    One row group at a time: iter_batches over the whole file keeps every read buffer
    alive until it ends (measured: the whole file in memory)."""
    rename = {src: canon for canon, src in mapping.items()}
    extras = [c for c in pf.schema_arrow.names
              if c not in rename and not c.startswith("__index_level_")]
    md = pf.metadata
    row0 = sum(md.row_group(i).num_rows for i in range(row_groups[0])) if row_groups else 0
    for rg in row_groups:
        for batch in pf.iter_batches(batch_size=min(65_536, cfg.shard_size * 2),
                                     row_groups=[rg]):
            t = pa.Table.from_batches([batch])
            t = t.rename_columns([rename.get(c, c) for c in t.column_names])
            yield row0, t.select([c for c in _CANONICAL if c in t.column_names] + extras)
            row0 += t.num_rows


def prepare(t: pa.Table, cfg: PoolConfig, path: str, row0: int, dims: EmbeddingDims
            ) -> tuple[pa.Table, np.ndarray, dict[str, int]]:
    """Check one batch: (its good rows with a uid, their file row numbers, bad-row counts)."""
    good, bad_counts = check_rows(t, cfg, path, row0, dims)
    if "uid" in t.column_names:
        t = check_uids(t, good, path, row0)
    rows = row0 + np.flatnonzero(good)
    if bad_counts:
        t = t.filter(pa.array(good))
    t = embeddings_as_float(t)
    if "uid" in t.column_names:
        check_uid_conflicts(t, path, rows)
    else:
        t = t.add_column(0, "uid", compute_uids(
            t["url"].combine_chunks() if "url" in t.column_names else None,
            t["caption"].combine_chunks()))
    if cfg.sample_fraction is not None:
        keep = in_sample(t["uid"], cfg.sample_fraction, cfg.sample_seed)
        t, rows = t.filter(pa.array(keep)), rows[keep]
    return t, rows, bad_counts


#: mixed into ``pool.sample_seed`` so the pilot's sample is independent of prune's k-means
#: training sample, which hashes the same uids with its own (often equal) seed
_PILOT_SALT = 0x50494C4F54  # "PILOT"


def in_sample(uids: Any, fraction: float, seed: int) -> np.ndarray:
    """A pilot run's rows (``pool.sample_fraction``): a seeded uniform of the uid below
    ``fraction``. Per uid, so the sample is the same whatever the sharding, file order or
    workers, and both copies of a duplicated uid are in or out together (so ingest's
    duplicate check sees the same pairs it would in the full pool)."""
    from curate.algorithms.kmeans_sample import uid_uniform

    return uid_uniform(uids, seed ^ _PILOT_SALT) < fraction


@dataclass(frozen=True)
class Piece:
    """One read task: whole row groups of one file, and the chunks they are cut into."""

    index: int  # in pool order: errors are reported for the first piece that has one
    url: str  # run directory
    fs: Any  # the pool's filesystem (fsspec filesystems pickle)
    path: str
    row_groups: tuple[int, ...]
    chunks: tuple[tuple[int, int, int], ...]  # (chunk number, first file row, end row)
    cfg: PoolConfig
    dims: EmbeddingDims
    folder: str


def plan_file(fs: Any, path: str, cfg: PoolConfig, dims: EmbeddingDims, first_chunk: int,
              first_piece: int, url: str, folder: str) -> tuple[list[Piece], int]:
    """The pieces of one input file and its number of chunks; fixes new embedding dims."""
    try:
        with fs.open(path, "rb") as f:
            pf = pq.ParquetFile(f)
            mapping = column_map(cfg, pf.schema_arrow.names, path)
            rg_rows = [pf.metadata.row_group(i).num_rows for i in range(pf.num_row_groups)]
            new = [c for c in EMBEDDING_COLUMNS if c in mapping and c not in dims.dims]
            if new:  # the first rows that fix a dimension: the same batches workers read
                for _, t in batches(pf, cfg, mapping, list(range(len(rg_rows)))):
                    if learn_dims(t, path, dims, new):
                        break
    except (pa.ArrowInvalid, OSError) as err:
        raise InputError(f"pool {path}: not a readable Parquet file ({err})") from None
    size, pieces, chunk = cfg.shard_size, [], first_chunk
    start, groups, rows = 0, [], 0
    for i, n in enumerate(rg_rows):
        groups.append(i)
        rows += n
        if rows >= PIECE_ROWS or i == len(rg_rows) - 1:
            end, cuts = start + rows, []
            at = start
            while at < end:
                nxt = min(end, (at // size + 1) * size)
                cuts.append((chunk, at, nxt))
                chunk, at = chunk + 1, nxt
            pieces.append(Piece(first_piece + len(pieces), url, fs, path, tuple(groups),
                                tuple(cuts), cfg, dims, folder))
            start, groups, rows = end, [], 0
    return pieces, chunk - first_chunk


def read_piece(piece: Piece) -> dict[str, Any]:
    """Read, check and stage one piece: ``{index, rows_read, bad, chunks}`` (rows per
    chunk), or ``{index, error}`` for a bad row or an unreadable file."""
    rd = RunDir(piece.url)
    out: dict[str, Any] = {"index": piece.index, "rows_read": 0, "bad": {}, "chunks": []}
    buf: list[pa.Table] = []
    cuts = list(piece.chunks)

    def flush(empty: pa.Table) -> None:
        name = shard_name(cuts.pop(0)[0])
        t = pa.concat_tables(buf, promote_options="permissive") if buf else empty
        try:
            write_parquet_atomic(rd.fs, rd.path(piece.folder, name), t,
                                 meta={"source": piece.path})
        except OSError as err:  # the run directory's fault, not the pool's: retried
            raise RuntimeError(f"writing {name}: {err}") from err
        out["chunks"].append(t.num_rows)
        buf.clear()
        faults.trace("ingest", name)
        faults.maybe_fail("ingest", name, after_write=True)

    try:
        with piece.fs.open(piece.path, "rb") as f:
            pf = pq.ParquetFile(f)
            mapping = column_map(piece.cfg, pf.schema_arrow.names, piece.path)
            for row0, t in batches(pf, piece.cfg, mapping, list(piece.row_groups)):
                out["rows_read"] += t.num_rows
                batch_end = row0 + t.num_rows
                t, rows, bad = prepare(t, piece.cfg, piece.path, row0, piece.dims)
                for code, n in bad.items():
                    out["bad"][code] = out["bad"].get(code, 0) + n
                at = 0  # kept rows of this batch already in a chunk
                while cuts:
                    stop = cuts[0][2]
                    k = int(np.searchsorted(rows, stop))
                    if k > at:
                        buf.append(t.slice(at, k - at))
                        at = k
                    if stop > batch_end:
                        break  # the chunk goes on in the next batch
                    flush(t.slice(0, 0))
    except InputError as err:
        return {"index": piece.index, "error": str(err)}
    except (pa.ArrowInvalid, OSError) as err:
        return {"index": piece.index,
                "error": f"pool {piece.path}: not a readable Parquet file ({err})"}
    return out
