"""The download stage's configured denylist (``download.denylist``): its files, the rules
file it becomes, the check after the fetch, and the purge of what a hash list matched.

Kinds: domain, url, url_pattern, uid (before the fetch) and the image-hash lists sha256,
md5, sha1, phash, pdq (after it: what child-safety organisations share, as Re-LAION-5B
used them). A pair an image-hash list matches is dropped as ``denylisted`` (detail: the
rule, ``md5:<hex>``) and **purged**: its bytes reach no file of the run directory.

- download's own shard: :func:`post_fetch` runs before the shard file is written, and the
  matched rows' ``image`` is nulled.
- the pool shard, where the pool brought the bytes: :func:`purge_pool_shard` rewrites
  ``pool/part-N`` with those rows' ``image`` nulled, footer and uids unchanged (so no
  stage's input digest moves). A download shard task may write the pool shard because at
  that moment it is its only reader: the download stage's global steps before the shards
  are done, later stages wait for the stage's last step, and the write is atomic.
- reruns: a shard's earlier hash-list drops stay dropped without a fetch while their rule
  is still listed (:func:`previous_hash_drops`); a changed hash list changes download's
  input digest (:func:`hash_rules_digest` in the ``denylist`` step's info), so every shard
  is checked again: its stored bytes are re-matched without a fetch, and a newly listed
  image's bytes leave ``images/part-N`` (and the pool shard).
- the ``denylist`` step reads the files on every run (its ``version``: their content), so
  a list whose file changed under the same path is seen.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from curate.algorithms.denylist import HEX_DIGITS, IMAGE_KINDS, PDQ_DISTANCE
from curate.config import Section
from curate.core.rundir import RunDir, now
from curate.stages._denylist import (
    DENYLIST,
    PDQ_KEY,
    RULE_SCHEMA,
    hash_rules_digest,
    image_hash_columns,
    load_rules,
    pdq_distance,
)


class DenylistConfig(Section):
    """Files of one value per line (``#`` starts a comment). The hash lists hold hex of the
    image bytes as stored (``sha256``, ``md5``, ``sha1``; case-insensitive), imagehash's
    64-bit ``phash`` (16 hex digits) or Meta's ``pdq`` (64 hex digits, ThreatExchange's
    form; a match is a Hamming distance <= ``pdq_distance`` of 256 bits)."""

    domains: str | None = None
    urls: str | None = None
    url_patterns: str | None = None
    uids: str | None = None
    sha256: str | None = None
    md5: str | None = None
    sha1: str | None = None
    phash: str | None = None
    pdq: str | None = None
    pdq_distance: int = Field(PDQ_DISTANCE, ge=0, le=256,
                              description="PDQ match: Hamming distance of 256 bits")


KIND_OF = {"domains": "domain", "urls": "url", "url_patterns": "url_pattern", "uids": "uid",
           "sha256": "sha256", "md5": "md5", "sha1": "sha1", "phash": "phash", "pdq": "pdq"}
_HEX = re.compile(r"[0-9a-fA-F]+")


def _read(key: str, src: str) -> list[str]:
    import fsspec

    from curate.errors import ConfigError

    try:
        with fsspec.open(src, "rt") as f:
            return list(f)
    except OSError as err:
        raise ConfigError(f"download.denylist.{key}: cannot read {src} ({err})") from None


def files_version(cfg: DenylistConfig | None) -> str:
    """A digest of the configured files' content (and the PDQ distance): the ``denylist``
    step's version, so the step runs again when a file changed under the same path."""
    if cfg is None:
        return ""
    h = hashlib.sha256(str(cfg.pdq_distance).encode())
    for key in KIND_OF:
        src = getattr(cfg, key)
        if src:
            h.update(f"\0{key}\0".encode())
            h.update("".join(_read(key, src)).encode())
    return h.hexdigest()[:16]


def _values(key: str, kind: str, src: str) -> list[str]:
    """The values of one file; a malformed hash or pattern is a ConfigError naming the
    file, line and value."""
    from curate.errors import ConfigError

    out = []
    for n, line in enumerate(_read(key, src), 1):
        v = line.split("#", 1)[0].strip()
        if not v:
            continue
        if kind in HEX_DIGITS:
            if len(v) != HEX_DIGITS[kind] or not _HEX.fullmatch(v):
                raise ConfigError(f"download.denylist.{key}: {src} line {n}: {v!r} is not "
                                  f"a {kind} value ({HEX_DIGITS[kind]} hex digits)")
            v = v.lower()
        elif kind == "url_pattern":
            try:
                re.compile(v)
            except re.error as err:
                raise ConfigError(f"download.denylist.url_patterns: bad pattern {v!r} "
                                  f"({src} line {n}: {err})") from None
        out.append(v)
    return out


def write_denylist(rd: RunDir, cfg: DenylistConfig | None) -> dict[str, Any]:
    """``denylist/rules.parquet`` from the configured files (removed when none). Its info:
    the number of rules and the digest of the image-hash rules (``hash_rules``) that
    download's shards are checked against."""
    from curate.core.io import write_parquet_atomic

    path = rd.path(DENYLIST)
    kinds, values = [], []
    for key, kind in KIND_OF.items():
        src = getattr(cfg, key) if cfg is not None else None
        if src:
            vals = _values(key, kind, src)
            kinds += [kind] * len(vals)
            values += vals
    if not kinds:
        if rd.fs.exists(path):
            rd.fs.rm(path)
        return {"denylist_rules": 0}
    stamp = now()
    table = pa.table({"kind": kinds, "value": values, "added": [stamp] * len(kinds),
                      "why": ["download.denylist"] * len(kinds)}, schema=RULE_SCHEMA)
    table = table.replace_schema_metadata({PDQ_KEY: str(cfg.pdq_distance).encode()})
    write_parquet_atomic(rd.fs, path, table)
    return {"denylist_rules": len(kinds), "hash_rules": hash_rules_digest(table)}


def denylist_rules(rd: RunDir) -> pa.Table | None:
    """The rules ``write_denylist`` wrote for this run (None: no denylist)."""
    return load_rules(rd, DENYLIST)


def post_fetch(rules: pa.Table | None, uids: list[str], images: list[bytes | None],
               shas: list[str | None]) -> dict[int, str]:
    """index -> denylist label for stored images matching an image-hash rule (sha256, md5,
    sha1, phash, pdq; each hash computed only when a rule of its kind exists)."""
    if rules is None:
        return {}
    kinds = set(rules["kind"].to_pylist()) & set(IMAGE_KINDS)
    if not kinds:
        return {}
    from curate.algorithms.denylist import match

    cols = image_hash_columns(images, kinds - {"sha256"})
    if "sha256" in kinds:
        cols["sha256"] = pa.array(shas, pa.string())
    label = match(rules, pa.array(uids, pa.string()), pdq_distance=pdq_distance(rules),
                  **cols)
    return {i: lab for i, lab in enumerate(label.to_pylist()) if lab is not None}


def is_hash_label(detail: str | None) -> bool:
    """Whether a ``denylisted`` detail names an image-hash rule (``md5:<hex>``, ...)."""
    return bool(detail) and detail.split(":", 1)[0] in IMAGE_KINDS


def previous_hash_drops(t: pa.Table, rules: pa.Table | None) -> dict[str, str]:
    """uid -> label of an earlier attempt's rows (``uid, reason, detail``) that an
    image-hash rule dropped and that the rules still list: they stay dropped without a
    fetch (their bytes were purged; fetching them again would bring them back)."""
    if rules is None or not t.num_rows:
        return {}
    listed = {f"{k}:{v.lower()}" for k, v in zip(rules["kind"].to_pylist(),
                                                 rules["value"].to_pylist())
              if k in IMAGE_KINDS}
    t = t.filter(pc.equal(pc.fill_null(t["reason"], ""), "denylisted"))
    return {u: d for u, d in zip(t["uid"].to_pylist(), t["detail"].to_pylist())
            if is_hash_label(d) and d.lower() in listed}


def purge_pool_shard(rd: RunDir, shard: str, uids: list[str]) -> int:
    """Null ``image`` of ``uids`` in ``pool/<shard>`` (atomically; every other column, the
    row order and the footer as they were). Returns the rows purged (0: nothing to do)."""
    import pyarrow.parquet as pq

    from curate.core.io import write_parquet_atomic

    if not uids:
        return 0
    path = rd.shard_path("pool", shard)
    with rd.fs.open(path, "rb") as f:
        pf = pq.ParquetFile(f)
        if "image" not in pf.schema_arrow.names:
            return 0
        t = pf.read()
    hit = pc.and_(pc.is_in(t["uid"], value_set=pa.array(uids, pa.string())),
                  pc.is_valid(t["image"]))
    n = int(pc.sum(hit).as_py() or 0)
    if not n:
        return 0
    i = t.schema.get_field_index("image")
    image = pc.if_else(hit, pa.scalar(None, t.schema.field(i).type), t["image"])
    t = t.set_column(i, t.schema.field(i), image)  # schema metadata (footer) kept
    write_parquet_atomic(rd.fs, path, t)
    return n
