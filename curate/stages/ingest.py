"""Ingest: read a pool (a Parquet file, a folder or a glob of them) into ``pool/part-NNNNN``.

Columns are mapped to canonical names (``pool.columns``), every other column is kept, a
``uid`` is derived (docs/ARCHITECTURE.md, "uids") unless the pool brings one, exact
duplicate pairs are dropped and counted, and rows are cut into shards of
``pool.shard_size``. A shard never spans two input files, so a pool that gains files later
is ingested incrementally: files already recorded in the manifest (same path, size and
modification time) are skipped.

Duplicates (a uid seen earlier in the pool: earlier run, file or row; the first wins) are
found on Ray workers, not in a set on the driver, which would hold 16 B per pair
(``_pool_dedup`` says how). So with ``drop_duplicates`` (the default) the new files of a
call are a *batch*: read and checked by workers, piece by piece, into ``pool/_staging``
(``_pool_read`` says how; recorded in run.json as ``pool.pending``), then deduplicated
and cut into their final shards by workers, and committed to ``pool.inputs`` in one save. The shards
are exactly those of an ingest that drops each duplicate as it reads it. A rerun finishes
a pending batch before anything else, and ingest returns only when none is pending: no
stage ever sees a pool with duplicates left in it. Without ``drop_duplicates`` files are
cut straight into ``pool/`` and recorded one by one.

Bad rows (null, empty, huge or NUL-holding captions, non-http URLs, null, ragged or
non-finite embeddings) are errors naming file, row and field. Real pools carry such rows,
so this is the one-line error a user sees first; the message says how to drop and count
them instead (``pool.on_bad_row: drop``). Dropped rows are counted in ``run.json`` under
``pool.bad_rows`` by stable reason code (``pool_checks.BAD_ROW_CODES``), duplicates under
``pool.duplicates``. The checks live in ``pool_checks``.

Embeddings a pool brings (``image_emb``, ``text_emb``) must be lists of floats (integers
are cast to float32; floats are kept bit for bit) of one dimension for the whole pool,
recorded as ``pool.embedding_dims`` so files added later are held to it: score and prune
stack them into one matrix, where a ragged row or a NaN would fail a whole shard later or,
worse, silently poison a cluster.

A pool's own uids may be any non-empty strings (hex or not, numeric with leading zeros,
dots, slashes, ``..``, unicode, spaces, long ones) or integers (cast to strings); they are
compared as given. Null and empty-string uids are errors naming the row, under either
``on_bad_row`` mode: the uid is the key every later stage joins on, so a missing one is
a broken pool column, not a row to drop.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curate.config import PoolConfig
from curate.core import faults
from curate.core.io import shard_index, shard_name, url_to_fs, write_parquet_atomic
from curate.core.rundir import RunDir
from curate.errors import InputError
from curate.stages._pool_dedup import (
    GROUP_ROWS,
    PARTITIONS,
    STAGING,
    WORK,
    Batch,
    dedup_partition,
    final_layout,
    run_step,
    write_keys,
    write_shards,
)
from curate.stages._pool_read import Piece, batches, column_map, plan_file, prepare, read_piece
from curate.stages.pool_checks import (
    EmbeddingDims,
)

log = logging.getLogger(__name__)

def resolve_pool(spec: str) -> tuple[Any, list[str]]:
    """The Parquet files a pool spec names: one file, a folder (recursive) or a glob."""
    fs, path = url_to_fs(spec)
    if any(c in path for c in "*?["):
        files = sorted(fs.glob(path))
    elif fs.isdir(path):
        files = sorted(p for p in fs.find(path) if p.endswith(".parquet"))
        if not files:
            raise InputError(f"pool {spec}: folder holds no .parquet files")
    elif fs.exists(path):
        files = [path]
    else:
        raise InputError(f"pool {spec}: no such file or folder")
    files = [f for f in files if fs.isfile(f)]
    if not files:
        raise InputError(f"pool {spec}: matches no Parquet file")
    return fs, files


@dataclass
class IngestStats:
    files_new: int = 0
    files_skipped: int = 0
    rows_read: int = 0
    rows: int = 0
    duplicates: int = 0
    bad_rows: dict[str, int] = field(default_factory=dict)
    shards_new: list[str] = field(default_factory=list)


class _ShardWriter:
    """Cuts one input file's rows into ``part-NNNNN`` files of ``size`` rows in ``folder``
    (``pool``, or the staging folder when duplicates are dropped afterwards)."""

    def __init__(self, rd: RunDir, size: int, next_index: int, source: str, folder: str):
        self.rd, self.size, self.next_index, self.source = rd, size, next_index, source
        self.folder = folder
        self.buf: list[pa.Table] = []
        self.buffered = 0
        self.shards: list[str] = []
        self.rows: list[int] = []

    def add(self, table: pa.Table) -> None:
        self.buf.append(table)
        self.buffered += table.num_rows
        self.flush(final=False)

    def flush(self, final: bool) -> None:
        while self.buffered >= self.size or (final and self.buffered):
            table = pa.concat_tables(self.buf, promote_options="permissive")
            head, rest = table.slice(0, self.size), table.slice(self.size)
            name = shard_name(self.next_index)
            write_parquet_atomic(self.rd.fs, self.rd.path(self.folder, name), head,
                                 meta={"source": self.source})
            self.shards.append(name)
            self.rows.append(head.num_rows)
            faults.trace("ingest", name)
            faults.maybe_fail("ingest", name, after_write=True)
            self.next_index += 1
            self.buf = [rest] if rest.num_rows else []
            self.buffered = rest.num_rows


def _stage_file(rd: RunDir, fs: Any, path: str, key: tuple[str, int, str], cfg: PoolConfig,
                dims: EmbeddingDims, next_index: int, folder: str) -> dict[str, Any]:
    """Read, check and cut one input file into ``folder``/part-N from ``next_index`` on.

    Returns its record: ``path size mtime rows_read bad_rows first chunks`` (rows per
    file written) ``rows shards``.
    """
    try:
        with fs.open(path, "rb") as f:
            pf = pq.ParquetFile(f)
            mapping = column_map(cfg, pf.schema_arrow.names, path)
            writer = _ShardWriter(rd, cfg.shard_size, next_index, path, folder)
            rows_read = 0
            bad: dict[str, int] = {}
            for row0, t in batches(pf, cfg, mapping, list(range(pf.num_row_groups))):
                rows_read += t.num_rows
                t, _, bad_counts = prepare(t, cfg, path, row0, dims)
                for code, n_bad in bad_counts.items():
                    bad[code] = bad.get(code, 0) + n_bad
                writer.add(t)
            writer.flush(final=True)
    except InputError:
        raise
    except (pa.ArrowInvalid, OSError) as err:
        raise InputError(f"pool {path}: not a readable Parquet file ({err})") from None
    return {"path": key[0], "size": key[1], "mtime": key[2], "rows_read": rows_read,
            "bad_rows": bad, "first": next_index, "chunks": writer.rows,
            "rows": sum(writer.rows), "shards": writer.shards}


def _record(pool_m: dict[str, Any], f: dict[str, Any], dups: int, keyed: bool) -> None:
    """Add an ingested file to ``pool_m``: its input entry and its counts."""
    pool_m["inputs"].append({"path": f["path"], "size": f["size"], "mtime": f["mtime"],
                             "rows": f["rows"], "shards": f["shards"],
                             **({"keyed": True} if keyed else {})})
    pool_m["rows"] = pool_m.get("rows", 0) + f["rows"]
    pool_m["rows_read"] = pool_m.get("rows_read", 0) + f["rows_read"]
    pool_m["duplicates"] = pool_m.get("duplicates", 0) + dups
    for code, n_bad in f["bad_rows"].items():
        pool_m["bad_rows"][code] = pool_m["bad_rows"].get(code, 0) + n_bad


def ingest(rd: RunDir, spec: str, cfg: PoolConfig, manifest: dict[str, Any],
           save: Any = None) -> IngestStats:
    """Ingest new pool files into ``rd/pool``; updates ``manifest['pool']`` in place.

    ``save(manifest)`` is called once the batch's files are staged and when the batch is
    committed, so a crash loses at most the reading of the batch: the next run finishes a
    batch staged before it (``pool.pending``), or reads the files again. Returns only
    once every shard in ``pool/`` is free of duplicates. Without ``drop_duplicates``
    files are read one by one on the driver, straight into final shards.
    """
    fs, files = resolve_pool(spec)
    pool_m = manifest.setdefault("pool", {"inputs": [], "rows": 0, "duplicates": 0,
                                          "bad_rows": {}, "embedding_dims": {}})
    stats = IngestStats()
    save = save or (lambda _m: None)
    if pool_m.get("pending"):
        log.info("ingest: finishing the batch of %d files a run that did not finish staged",
                 len(pool_m["pending"]["files"]))
        _finish(rd, manifest, save, stats)
    _remove_leftovers(rd, pool_m)
    done = {(i["path"], i["size"], i["mtime"]) for i in pool_m["inputs"]}
    existing = rd.pool_shards()
    next_index = max((shard_index(s) + 1 for s in existing), default=0)  # 6 digits sort early
    dims = EmbeddingDims(pool_m.get("embedding_dims"))
    pend: dict[str, Any] | None = None
    if cfg.drop_duplicates:
        dd = pool_m.setdefault("dedup", {"partitions": PARTITIONS, "batches": 0})
        pend = {"gen": dd["batches"], "first": next_index, "next": next_index,
                "group": max(1, -(-GROUP_ROWS // cfg.shard_size)),
                "shard_size": cfg.shard_size, "files": [],
                "old": [s for i in pool_m["inputs"] if not i.get("keyed")
                        for s in i["shards"]]}

    new = []
    for path in files:
        info = fs.info(path)
        key = (path, int(info.get("size") or 0), str(info.get("mtime") or info.get("LastModified")
                                                     or ""))
        if key in done:
            stats.files_skipped += 1
        else:
            new.append(key)
    if pend is not None and new:
        try:
            pend["next"], pend["read_seconds"] = _read_batch(
                rd, fs, new, cfg, dims, pend["files"], next_index, stats)
            pool_m["pending"] = pend
            pool_m["embedding_dims"] = dict(dims.dims)
            save(manifest)
        except BaseException:  # nothing records the staged chunks: leave none behind
            pool_m.pop("pending", None)
            try:
                _remove_leftovers(rd, pool_m)
            except Exception:  # noqa: BLE001 - the next run removes them; the cause matters
                log.warning("ingest: could not remove the staged chunks", exc_info=True)
            raise
    for key in new if pend is None else []:
        f = _stage_file(rd, fs, key[0], key, cfg, dims, next_index, "pool")
        next_index += len(f["chunks"])
        _count_read(stats, f["rows_read"], f["bad_rows"])
        _record(pool_m, f, 0, keyed=False)
        stats.files_new += 1
        stats.rows += f["rows"]
        stats.shards_new.extend(f["shards"])
        pool_m["embedding_dims"] = dict(dims.dims)
        save(manifest)
    if pool_m.get("pending"):
        _finish(rd, manifest, save, stats)
    if stats.files_new == 0 and not existing:
        raise InputError(f"pool {spec}: no rows")
    pool_m["shards"] = len(rd.pool_shards())
    pool_m["spec"] = spec
    if pool_m["rows"] == 0:
        raise InputError(f"pool {spec}: no usable rows (0 rows after dropping "
                         f"{stats.duplicates} duplicates and {sum(stats.bad_rows.values())} "
                         "bad rows)")
    log.info("ingest: %d new files, %d rows, %d duplicates dropped, %d new shards",
             stats.files_new, stats.rows, stats.duplicates, len(stats.shards_new))
    return stats


def _count_read(stats: IngestStats, rows_read: int, bad: dict[str, int]) -> None:
    stats.rows_read += rows_read
    for code, n_bad in bad.items():
        stats.bad_rows[code] = stats.bad_rows.get(code, 0) + n_bad


def _read_batch(rd: RunDir, fs: Any, new: list[tuple[str, int, str]], cfg: PoolConfig,
                dims: EmbeddingDims, files: list[dict[str, Any]], next_index: int,
                stats: IngestStats) -> tuple[int, float]:
    """Stage the new files into ``pool/_staging`` on workers, piece by piece (_pool_read);
    appends their records to ``files``; returns the next chunk number and the seconds
    taken. The first bad row in pool order is the error (exit 2), as when files were read
    one after another."""
    pieces: list[Piece] = []
    owners: list[tuple[dict[str, Any], int, int]] = []  # record, its pieces [a, b)
    for key in new:
        rec = {"path": key[0], "size": key[1], "mtime": key[2], "rows_read": 0,
               "bad_rows": {}, "first": next_index, "chunks": []}
        ps, n = plan_file(fs, key[0], cfg, dims, next_index, len(pieces), rd.url, STAGING)
        owners.append((rec, len(pieces), len(pieces) + len(ps)))
        pieces += ps
        next_index += n
    results: dict[int, dict[str, Any]] = {}
    seconds = run_step(read_piece, pieces, "ingest.read",
                       lambda r: results.__setitem__(r["index"], r))
    errors = sorted((i, r["error"]) for i, r in results.items() if "error" in r)
    if errors:
        raise InputError(errors[0][1])
    for rec, a, b in owners:
        for i in range(a, b):
            r = results[i]
            rec["rows_read"] += r["rows_read"]
            rec["chunks"] += r["chunks"]
            for code, n_bad in r["bad"].items():
                rec["bad_rows"][code] = rec["bad_rows"].get(code, 0) + n_bad
        _count_read(stats, rec["rows_read"], rec["bad_rows"])
        files.append(rec)
    return next_index, seconds


def _remove_leftovers(rd: RunDir, pool_m: dict[str, Any]) -> None:
    """With no batch pending: shards and work files of an ingest that did not finish."""
    recorded = {s for i in pool_m["inputs"] for s in i["shards"]}
    for orphan in sorted(set(rd.pool_shards()) - recorded):
        log.warning("ingest: removing %s, left by an ingest that did not finish", orphan)
        rd.fs.rm(rd.path("pool", orphan))
    for folder in (STAGING, WORK):
        if rd.fs.exists(rd.path(folder)):
            rd.fs.rm(rd.path(folder), recursive=True)


def _finish(rd: RunDir, manifest: dict[str, Any], save: Any, stats: IngestStats) -> None:
    """Drop the pending batch's duplicates (_pool_dedup), write its final shards, commit."""
    pool_m = manifest["pool"]
    pend = pool_m["pending"]
    first, size, per = pend["first"], pend["shard_size"], pend["group"]
    n, old = pend["next"] - first, pend["old"]
    batch = Batch(rd.url, pool_m["dedup"]["partitions"], pend["gen"], first, n, per,
                  -(-len(old) // per))
    dups = np.zeros(n, np.int64)
    seconds: dict[str, float] = {"read": pend.get("read_seconds", 0.0)}
    if n or old:
        staged = [shard_name(first + i) for i in range(n)]
        items = ([("keys", g, staged[g * per:(g + 1) * per]) for g in range(batch.groups)]
                 + [("old", g, old[g * per:(g + 1) * per]) for g in range(batch.old_groups)])
        seconds["keys"] = run_step(partial(write_keys, batch), items, "ingest.keys")

        def fold(counts: np.ndarray) -> None:
            dups[:] += counts

        seconds["dedup"] = run_step(partial(dedup_partition, batch),
                                    list(range(batch.partitions)), "ingest.dedup", fold)
    specs = final_layout(pend["files"], dups, first, size)
    groups: dict[int, list[dict[str, Any]]] = {}
    for s in specs:
        groups.setdefault((s["parts"][0][0] - first) // per, []).append(s)
    seconds["write"] = run_step(partial(write_shards, batch), list(groups.values()),
                                "ingest.write")
    faults.maybe_fail("ingest.dedup", "commit")
    for f in pend["files"]:
        f_dups = int(dups[f["first"] - first: f["first"] - first + len(f["chunks"])].sum())
        _record(pool_m, f, f_dups, keyed=True)
        stats.files_new += 1
        stats.rows += f["rows"]
        stats.duplicates += f_dups
        stats.shards_new.extend(f["shards"])
    for i in pool_m["inputs"]:
        i["keyed"] = True
    pool_m["dedup"].update(batches=pend["gen"] + 1,
                           seconds={k: round(v, 3) for k, v in seconds.items()})
    del pool_m["pending"]
    save(manifest)
    _remove_leftovers(rd, pool_m)
