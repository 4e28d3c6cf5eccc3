"""Takedown rules in a run directory, and which pool pairs they match (used by emit on
every run and by ``curate takedown``; the rules' format is :mod:`curate.algorithms.denylist`).

Two rule files, kept apart because they have different owners: ``takedown/rules.parquet``
(``curate takedown`` appends to it, by hand) and ``denylist/rules.parquet`` (the download
stage rewrites it from ``download.denylist`` on each run of that stage). Emit applies both
(:func:`load_all_rules`); ``curate takedown`` reads and appends only its own.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.algorithms.denylist import IMAGE_KINDS, PDQ_DISTANCE, match
from curate.core.rundir import RunDir

RULES, REMOVED = "takedown/rules.parquet", "takedown/removed.parquet"
DENYLIST = "denylist/rules.parquet"
RULE_SCHEMA = pa.schema([("kind", pa.string()), ("value", pa.string()),
                         ("added", pa.string()), ("why", pa.string())])
#: schema metadata key of a rules file carrying its PDQ match distance (the denylist's
#: ``pdq_distance``; takedown rules: the default)
PDQ_KEY = b"pdq_distance"


def load_rules(rd: RunDir, which: str = RULES) -> pa.Table | None:
    """The takedown rules (or, with ``which=DENYLIST``, the download denylist's)."""
    path = rd.path(which)
    if not rd.fs.exists(path):
        return None
    with rd.fs.open(path, "rb") as f:
        t = pq.read_table(f)
    md = {k: v for k, v in (t.schema.metadata or {}).items() if k == PDQ_KEY}
    return t.cast(RULE_SCHEMA).replace_schema_metadata(md or None)


def pdq_distance(rules: pa.Table) -> int:
    """The PDQ match distance a rules table carries (default 31)."""
    raw = (rules.schema.metadata or {}).get(PDQ_KEY)
    return int(raw) if raw is not None else PDQ_DISTANCE


def load_all_rules(rd: RunDir) -> pa.Table | None:
    """Takedown and denylist rules together: what emit leaves out (the denylist's PDQ
    distance applies to all)."""
    deny = load_rules(rd, DENYLIST)
    parts = [t for t in (load_rules(rd), deny) if t is not None]
    if not parts:
        return None
    md = deny.schema.metadata if deny is not None else None
    return pa.concat_tables([t.replace_schema_metadata(None) for t in parts]
                            ).replace_schema_metadata(md)


def hash_rules_digest(rules: pa.Table | None) -> str:
    """A digest of the image-hash rules (sha256, md5, sha1, phash, pdq) and the PDQ
    distance: what download's shards are checked against after the fetch ("" for none)."""
    if rules is None:
        return ""
    t = rules.filter(pc.is_in(rules["kind"], value_set=pa.array(IMAGE_KINDS)))
    if not t.num_rows:
        return ""
    text = "\n".join(sorted(f"{k}\t{v.lower()}" for k, v in zip(t["kind"].to_pylist(),
                                                                 t["value"].to_pylist())))
    text += f"\n{pdq_distance(rules)}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def image_hash_columns(images: list[bytes | None], kinds: set[str]) -> dict[str, Any]:
    """The ``match`` keyword arguments for the image kinds in ``kinds`` (each computed only
    when a rule of that kind exists): ``sha256``/``md5``/``sha1`` hex, ``phash`` uint64,
    ``pdq`` (hashes, known)."""
    out: dict[str, Any] = {}
    for kind in ("sha256", "md5", "sha1"):
        if kind in kinds:
            fn = getattr(hashlib, kind)
            out[kind] = pa.array([fn(d).hexdigest() if d else None for d in images],
                                 pa.string())
    if "phash" in kinds:
        from curate.media.imagehashes import image_hashes

        out["phash"] = np.array([(image_hashes(d)[2] or 0) if d else 0 for d in images],
                                np.uint64)
    if "pdq" in kinds:
        from curate.media.pdq import pdq_hashes

        out["pdq"] = pdq_hashes(images)
    return out


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
                  pool: pa.Table, kinds: set[str]) -> dict[str, Any]:
    """The image hashes ``kinds`` asks for (:func:`image_hash_columns`) of each pair's
    image: the download stage's, else the pool's; {} when there are no images."""
    if download is not None and rd.fs.exists(rd.shard_path(download, shard)):
        images = rd.column_for(download, shard, uids, "image")
    elif "image" in pool.column_names:
        images = pool["image"].combine_chunks()
    else:
        return {}
    return image_hash_columns(images.to_pylist(), kinds)


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
    kinds = set(rules["kind"].to_pylist()) & set(IMAGE_KINDS)
    cols = image_columns(rd, shard, u, download, pool, kinds) if kinds else {}
    return pool, match(rules, u, url, pdq_distance=pdq_distance(rules), **cols)
