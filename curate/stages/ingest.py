"""Ingest: read a pool (a Parquet file, a folder or a glob of them) into ``pool/part-NNNNN``.

Columns are mapped to canonical names (``pool.columns``), every other column is kept, a
``uid`` is derived (DESIGN §3) unless the pool brings one, exact duplicate pairs are dropped
and counted, and rows are cut into shards of ``pool.shard_size``. A shard never spans two
input files, so a pool that gains files later is ingested incrementally: files already
recorded in the manifest (same path, size and modification time) are skipped.

Bad rows (null, empty, non-UTF-8 or huge captions, non-http URLs) are errors naming file,
row and field. Real pools carry such rows, so this is the one-line error a user sees first;
the message says how to drop and count them instead (``pool.on_bad_row: drop``).
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.config import PoolConfig
from curate.core import faults
from curate.core.io import shard_name, url_to_fs, write_parquet_atomic
from curate.core.rundir import RunDir
from curate.errors import InputError

log = logging.getLogger(__name__)

CANONICAL_DEFAULTS = {"uid": "uid", "url": "url", "caption": "caption", "image": "image",
                      "image_emb": "image_emb", "text_emb": "text_emb"}


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


def compute_uids(urls: pa.Array | None, captions: pa.Array) -> pa.Array:
    """uid = hex of the first 16 bytes of sha256(url + "\\n" + caption) (DESIGN §3)."""
    caps = captions.to_pylist()
    us = urls.to_pylist() if urls is not None else [""] * len(caps)
    out = [hashlib.sha256(f"{u or ''}\n{c}".encode()).hexdigest()[:32] for u, c in zip(us, caps)]
    return pa.array(out, pa.string())


_HEX32 = re.compile(r"[0-9a-f]{32}")


class _SeenUids:
    """Set of uids seen so far, as sorted 16-byte arrays (16 B per pair, no Python objects).

    Chunks are merged when there are many, so a lookup is a few binary searches.
    """

    def __init__(self) -> None:
        self.chunks: list[np.ndarray] = []

    @staticmethod
    def _bytes(uids: pa.Array) -> np.ndarray:
        """16 bytes per uid: our hex uids decoded in one call; any other uid (a pool's own,
        of any form) is hashed, so it can never be mistaken for a hex one."""
        if pc.all(pc.match_substring_regex(uids, "^[0-9a-f]{32}$")).as_py() in (True, None):
            return np.frombuffer(bytes.fromhex("".join(uids.to_pylist())), dtype="S16")
        return np.array([bytes.fromhex(u) if _HEX32.fullmatch(u) else
                         hashlib.sha256(u.encode()).digest()[:16]
                         for u in uids.to_pylist()], dtype="S16")

    def add_new(self, uids: pa.Array) -> np.ndarray:
        """Mask of the uids not seen before (first occurrence within ``uids`` wins); adds them."""
        keys = self._bytes(uids)
        _, first = np.unique(keys, return_index=True)
        fresh = np.zeros(len(keys), bool)
        fresh[first] = True
        for chunk in self.chunks:
            pos = np.searchsorted(chunk, keys)
            pos[pos == len(chunk)] = 0
            fresh &= ~(chunk[pos] == keys) if len(chunk) else True
        new = np.sort(keys[fresh])
        if len(new):
            self.chunks.append(new)
        if len(self.chunks) > 16:
            self.chunks = [np.sort(np.concatenate(self.chunks))]
        return fresh


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
    """Cuts one input file's rows into ``pool/part-NNNNN`` shards of ``size`` rows."""

    def __init__(self, rd: RunDir, size: int, next_index: int, source: str):
        self.rd, self.size, self.next_index, self.source = rd, size, next_index, source
        self.buf: list[pa.Table] = []
        self.buffered = 0
        self.shards: list[str] = []

    def add(self, table: pa.Table) -> None:
        self.buf.append(table)
        self.buffered += table.num_rows
        self.flush(final=False)

    def flush(self, final: bool) -> None:
        while self.buffered >= self.size or (final and self.buffered):
            table = pa.concat_tables(self.buf, promote_options="permissive")
            head, rest = table.slice(0, self.size), table.slice(self.size)
            name = shard_name(self.next_index)
            write_parquet_atomic(self.rd.fs, self.rd.path("pool", name), head,
                                 meta={"source": self.source})
            self.shards.append(name)
            faults.trace("ingest", name)
            faults.maybe_fail("ingest", name, after_write=True)
            self.next_index += 1
            self.buf = [rest] if rest.num_rows else []
            self.buffered = rest.num_rows


def _column_map(cfg: PoolConfig, names: list[str], path: str) -> dict[str, str]:
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


def _check_rows(table: pa.Table, cfg: PoolConfig, path: str, row0: int) -> pa.Array:
    """Validate a batch; returns a mask of good rows, or raises naming the first bad one."""
    n = table.num_rows
    problems: list[tuple[str, pa.Array]] = []
    cap = table["caption"]
    if not (pa.types.is_string(cap.type) or pa.types.is_large_string(cap.type)):
        raise InputError(f"pool {path}: caption column has type {cap.type}, expected string")
    problems.append(("caption is null", pc.is_null(cap)))
    problems.append(("caption is empty", pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(cap)),
                                                  0)))
    problems.append((f"caption longer than {cfg.max_caption_bytes} bytes",
                     pc.greater(pc.binary_length(cap), cfg.max_caption_bytes)))
    problems.append(("caption contains a NUL character", pc.match_substring(cap, "\x00")))
    if "url" in table.column_names:
        url = table["url"]
        if not (pa.types.is_string(url.type) or pa.types.is_large_string(url.type)):
            raise InputError(f"pool {path}: url column has type {url.type}, expected string")
        if "image" not in table.column_names:
            problems.append(("url is null", pc.is_null(url)))
            problems.append(("url is not http(s)", pc.invert(pc.match_substring_regex(
                url, r"^[hH][tT][tT][pP][sS]?://[^\s/]"))))
    bad_any = pa.array(np.zeros(n, bool))
    for reason, mask in problems:
        mask = pc.fill_null(mask, False)
        if pc.any(mask).as_py():
            first = int(np.flatnonzero(mask.to_numpy(zero_copy_only=False))[0])
            if cfg.on_bad_row == "error":
                value = table.column("url" if reason.startswith("url") else "caption")[first]
                shown = repr(value.as_py())[:80]
                raise InputError(
                    f"pool {path}: row {row0 + first}: {reason} ({shown}); fix the pool or set "
                    f"pool.on_bad_row=drop to drop and count such rows")
            bad_any = pc.or_(bad_any, mask)
    return pc.invert(bad_any)


def _check_uid_conflicts(t: pa.Table, path: str, row0: int) -> None:
    """A pool's own uids must name one pair each: the same uid with another caption or URL
    is an error (two different pairs would be conflated), not a duplicate to drop.
    Checked within each batch read (up to 65k rows); across batches a repeated uid is
    treated as an exact duplicate."""
    cols = [c for c in ("url", "caption") if c in t.column_names]
    g = t.select(["uid", *cols]).group_by("uid").aggregate(
        [(c, "count_distinct") for c in cols])
    for c in cols:
        bad = g.filter(pc.greater(g[f"{c}_count_distinct"], 1))
        if bad.num_rows:
            uid = bad["uid"][0].as_py()
            rows = np.flatnonzero(pc.equal(t["uid"], uid).to_numpy(zero_copy_only=False))
            raise InputError(f"pool {path}: uid {uid!r} names different pairs (rows "
                             f"{row0 + rows[0]} and {row0 + rows[1]} differ in {c})")


def ingest(rd: RunDir, spec: str, cfg: PoolConfig, manifest: dict[str, Any],
           save: Any = None) -> IngestStats:
    """Ingest new pool files into ``rd/pool``; updates ``manifest['pool']`` in place.

    ``save(manifest)`` is called after each input file, so a crash loses at most the file
    being ingested: its shards are not in the manifest, and the next run deletes them and
    ingests that file again.
    """
    fs, files = resolve_pool(spec)
    pool_m = manifest.setdefault("pool", {"inputs": [], "rows": 0, "duplicates": 0,
                                          "bad_rows": {}})
    done = {(i["path"], i["size"], i["mtime"]) for i in pool_m["inputs"]}
    stats = IngestStats()
    recorded = {s for i in pool_m["inputs"] for s in i["shards"]}
    for orphan in sorted(set(rd.pool_shards()) - recorded):
        log.warning("ingest: removing %s, left by an ingest that did not finish", orphan)
        rd.fs.rm(rd.path("pool", orphan))
    existing = rd.pool_shards()
    next_index = (int(existing[-1][5:10]) + 1) if existing else 0
    seen = _SeenUids()
    if cfg.drop_duplicates and existing:
        for s in existing:
            seen.add_new(rd.read("pool", s, ["uid"])["uid"].combine_chunks())

    for path in files:
        info = fs.info(path)
        key = (path, int(info.get("size") or 0), str(info.get("mtime") or info.get("LastModified")
                                                     or ""))
        if key in done:
            stats.files_skipped += 1
            continue
        try:
            with fs.open(path, "rb") as f:
                pf = pq.ParquetFile(f)
                mapping = _column_map(cfg, pf.schema_arrow.names, path)
                rename = {src: canon for canon, src in mapping.items()}
                extras = [c for c in pf.schema_arrow.names
                          if c not in rename and not c.startswith("__index_level_")]
                writer = _ShardWriter(rd, cfg.shard_size, next_index, path)
                row0 = 0
                file_rows = 0
                file_dups = 0
                file_bad = 0
                # one row group at a time: iter_batches over the whole file keeps every read
                # buffer alive until it ends (measured: the whole file in memory)
                batches = (b for rg in range(pf.num_row_groups)
                           for b in pf.iter_batches(batch_size=min(65_536, cfg.shard_size * 2),
                                                    row_groups=[rg]))
                for batch in batches:
                    t = pa.Table.from_batches([batch])
                    t = t.rename_columns([rename.get(c, c) for c in t.column_names])
                    t = t.select([c for c in ("uid", "url", "caption", "image", "image_emb",
                                              "text_emb") if c in t.column_names] + extras)
                    stats.rows_read += t.num_rows
                    good = _check_rows(t, cfg, path, row0)
                    row0 += t.num_rows
                    if not pc.all(good).as_py():
                        n_bad = t.num_rows - pc.sum(good).as_py()
                        stats.bad_rows["bad row"] = stats.bad_rows.get("bad row", 0) + n_bad
                        file_bad += n_bad
                        t = t.filter(good)
                    if "uid" in t.column_names:
                        if t["uid"].null_count:
                            raise InputError(f"pool {path}: uid column has null values")
                        t = t.set_column(t.column_names.index("uid"), "uid",
                                         pc.cast(t["uid"], pa.string()))
                        _check_uid_conflicts(t, path, row0 - t.num_rows)
                    else:
                        uids = compute_uids(t["url"].combine_chunks() if "url" in t.column_names
                                            else None, t["caption"].combine_chunks())
                        t = t.add_column(0, "uid", uids)
                    if cfg.drop_duplicates:
                        fresh = seen.add_new(t["uid"].combine_chunks())
                        dups = int((~fresh).sum())
                        if dups:
                            stats.duplicates += dups
                            file_dups += dups
                            t = t.filter(pa.array(fresh))
                    file_rows += t.num_rows
                    writer.add(t)
                writer.flush(final=True)
                shards, next_index = writer.shards, writer.next_index
        except InputError:
            raise
        except (pa.ArrowInvalid, OSError) as err:
            raise InputError(f"pool {path}: not a readable Parquet file ({err})") from None
        stats.files_new += 1
        stats.rows += file_rows
        stats.shards_new.extend(shards)
        pool_m["inputs"].append({"path": key[0], "size": key[1], "mtime": key[2],
                                 "rows": file_rows, "shards": shards})
        pool_m["rows"] = pool_m.get("rows", 0) + file_rows
        pool_m["duplicates"] = pool_m.get("duplicates", 0) + file_dups
        if file_bad:
            pool_m["bad_rows"]["bad row"] = pool_m["bad_rows"].get("bad row", 0) + file_bad
        if save is not None:
            save(manifest)
    if stats.files_new == 0 and not existing:
        raise InputError(f"pool {spec}: no rows")
    pool_m["rows_read"] = pool_m.get("rows_read", 0) + stats.rows_read
    pool_m["shards"] = len(rd.pool_shards())
    pool_m["spec"] = spec
    if pool_m["rows"] == 0:
        raise InputError(f"pool {spec}: no usable rows (0 rows after dropping "
                         f"{stats.duplicates} duplicates and {sum(stats.bad_rows.values())} "
                         "bad rows)")
    log.info("ingest: %d new files, %d rows, %d duplicates dropped, %d new shards",
             stats.files_new, stats.rows, stats.duplicates, len(stats.shards_new))
    return stats
