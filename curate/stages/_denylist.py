"""Takedown rules in a run directory, and which pool pairs they match (used by emit on
every run and by ``curate takedown``; the rules' format is :mod:`curate.algorithms.denylist`).

Two rule files, kept apart because they have different owners: ``takedown/rules.parquet``
(``curate takedown`` appends to it, by hand) and ``denylist/rules.parquet`` (the download
stage rewrites it from ``download.denylist`` on each run of that stage). Emit applies both
(:func:`load_all_rules`); ``curate takedown`` reads and appends only its own.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.algorithms.denylist import match
from curate.core.rundir import RunDir

RULES, REMOVED = "takedown/rules.parquet", "takedown/removed.parquet"
DENYLIST = "denylist/rules.parquet"
RULE_SCHEMA = pa.schema([("kind", pa.string()), ("value", pa.string()),
                         ("added", pa.string()), ("why", pa.string())])


def load_rules(rd: RunDir, which: str = RULES) -> pa.Table | None:
    """The takedown rules (or, with ``which=DENYLIST``, the download denylist's)."""
    path = rd.path(which)
    if not rd.fs.exists(path):
        return None
    with rd.fs.open(path, "rb") as f:
        return pq.read_table(f).cast(RULE_SCHEMA)


def load_all_rules(rd: RunDir) -> pa.Table | None:
    """Takedown and denylist rules together: what emit leaves out."""
    parts = [t for t in (load_rules(rd), load_rules(rd, DENYLIST)) if t is not None]
    return pa.concat_tables(parts) if parts else None


def rules_version(rd: RunDir) -> str:
    """A digest of every rule emit applies: part of emit's output identity (a new rule
    rewrites what it touches)."""
    rules = load_all_rules(rd)
    if rules is None:
        return ""
    text = "\n".join(f"{k}\t{v}" for k, v in zip(rules["kind"].to_pylist(),
                                                  rules["value"].to_pylist()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def image_columns(rd: RunDir, shard: str, uids: pa.Array, download: str | None,
                  pool: pa.Table, need_phash: bool) -> tuple[pa.Array | None, np.ndarray | None]:
    """(sha256 hex, phash uint64) of each pair's image: the download stage's, else the
    pool's; (None, None) when there are no images."""
    if download is not None and rd.fs.exists(rd.shard_path(download, shard)):
        images = rd.column_for(download, shard, uids, "image")
    elif "image" in pool.column_names:
        images = pool["image"].combine_chunks()
    else:
        return None, None
    from curate.media.imagehashes import image_hashes

    data = images.to_pylist()
    sha = pa.array([hashlib.sha256(d).hexdigest() if d else None for d in data], pa.string())
    ph = None
    if need_phash:
        ph = np.array([(image_hashes(d)[2] or 0) if d else 0 for d in data], np.uint64)
    return sha, ph


def matched(rd: RunDir, rules: pa.Table, shard: str, download: str | None,
            uids: pa.Array | None = None) -> tuple[pa.Table, pa.Array]:
    """(pool rows uid, url of ``shard`` — or of ``uids`` — , the rule label per row)."""
    with rd.fs.open(rd.shard_path("pool", shard), "rb") as f:
        names = pq.read_schema(f).names
    cols = [c for c in ("uid", "url", "image") if c in names]
    pool = rd.read("pool", shard, cols)
    if uids is not None:
        pool = pool.filter(pc.is_in(pool["uid"], value_set=uids))
    u = pool["uid"].combine_chunks()
    url = pool["url"].combine_chunks() if "url" in pool.column_names else None
    kinds = set(rules["kind"].to_pylist())
    sha = ph = None
    if kinds & {"sha256", "phash"}:
        sha, ph = image_columns(rd, shard, u, download, pool, "phash" in kinds)
    return pool, match(rules, u, url, sha, ph)
