"""``curate takedown``: remove pairs from a run's curated set on request, and keep them out.

A request becomes *rules* (``takedown/rules.parquet``: kind, value, added, why; kinds as in
:mod:`curate.algorithms.denylist`: uid, url, domain, and the image-hash lists sha256, md5,
sha1, phash, pdq). ``--images DIR`` turns
each image file into a sha256 rule and a phash rule, so re-encoded or resized copies go too.
Then every pool pair is checked against all rules (the pool's uid and url, the images the
download stage stored or the pool brought), matches are appended to the removal manifest
``takedown/removed.parquet`` (uid, url, rule, removed, why), and each ``curated/`` Parquet
shard and WebDataset tar holding one is rewritten without it, atomically. Emit applies the
same rules on every later run (reruns, new pool files), so taken-down pairs stay out.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.algorithms.denylist import HEX_DIGITS, KINDS
from curate.core.io import list_shards, write_bytes_atomic, write_parquet_atomic
from curate.core.rundir import RunDir, now
from curate.errors import InputError
from curate.stages._denylist import REMOVED, RULE_SCHEMA, RULES, load_rules, matched


def rules_from(kind: str, source: str) -> list[tuple[str, str]]:
    """(kind, value) rules from a file of values (one per line) or, for images, a folder."""
    if kind == "images":
        from curate.media.imagehashes import image_hashes

        folder = Path(source)
        if not folder.is_dir():
            raise InputError(f"--images {source}: not a folder")
        out = []
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                data = p.read_bytes()
                out.append(("sha256", hashlib.sha256(data).hexdigest()))
                ph = image_hashes(data)[2]
                if ph is not None:
                    out.append(("phash", f"{ph:016x}"))
        if not out:
            raise InputError(f"--images {source}: no files")
        return out
    try:
        lines = Path(source).read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise InputError(f"{source}: {err.strerror}") from None
    values = [s.strip() for s in lines if s.strip() and not s.lstrip().startswith("#")]
    if not values:
        raise InputError(f"{source}: no {kind} values (one per line)")
    digits = HEX_DIGITS.get(kind)
    for v in values if digits else []:
        if len(v) != digits or any(c not in "0123456789abcdefABCDEF" for c in v):
            raise InputError(f"{source}: {v!r} is not a {kind} value ({digits} hex digits)")
    return [(kind, v.lower() if kind == "domain" or digits else v) for v in values]


def add_rules(rd: RunDir, rules: list[tuple[str, str]], why: str) -> pa.Table:
    old = load_rules(rd)
    stamp = now()
    new = pa.table({"kind": [k for k, _ in rules], "value": [v for _, v in rules],
                    "added": [stamp] * len(rules), "why": [why] * len(rules)},
                   schema=RULE_SCHEMA)
    table = pa.concat_tables([old, new]) if old is not None else new
    keys = pc.binary_join_element_wise(table["kind"], table["value"], "\t")
    _, first = np.unique(np.array(keys.to_pylist(), object), return_index=True)
    table = table.take(pa.array(np.sort(first)))  # a rule given twice is kept once
    write_parquet_atomic(rd.fs, rd.path(RULES), table)
    return table


def takedown(run: str, selectors: dict[str, str], why: str) -> dict[str, Any]:
    """Add the selectors' rules, find and record the matching pairs, rewrite curated/."""
    from curate.stages.registry import recorded_pipeline

    rd = RunDir(run)
    if not rd.fs.exists(rd.path("pool")):
        raise InputError(f"{run}: not a run directory (no pool/ folder)")
    new_rules = [r for kind, src in selectors.items() for r in rules_from(kind, src)]
    bad = {k for k, _ in new_rules} - set(KINDS)
    if bad:
        raise InputError(f"unknown rule kinds {sorted(bad)}")
    rules = add_rules(rd, new_rules, why)
    pipeline = recorded_pipeline(rd.url)
    dl = next((r.folder for r in pipeline.refs() if r.kind == "download"), None)
    stamp = now()
    found = []
    for shard in rd.pool_shards():
        pool, label = matched(rd, rules, shard, dl)
        hit = pc.is_valid(label)
        if pc.any(hit).as_py():
            t = pool.filter(hit)
            found.append(pa.table({
                "uid": t["uid"], "url": t["url"] if "url" in t.column_names
                else pa.nulls(t.num_rows, pa.string()), "rule": label.filter(hit),
                "removed": [stamp] * t.num_rows, "why": [why] * t.num_rows}))
    removed = _record(rd, found)
    rewritten = _rewrite_curated(rd, pipeline, removed)
    return {"rules": rules.num_rows, "matched": int(sum(t.num_rows for t in found)),
            "rewritten": rewritten}


def _record(rd: RunDir, found: list[pa.Table]) -> pa.Array:
    """Append new matches to the removal manifest; returns every removed uid."""
    path = rd.path(REMOVED)
    old = None
    if rd.fs.exists(path):
        with rd.fs.open(path, "rb") as f:
            old = pq.read_table(f)
    tables = ([old] if old is not None else []) + found
    if not tables:
        return pa.array([], pa.string())
    table = pa.concat_tables(tables, promote_options="permissive")
    if old is not None and found:  # already removed: keep the first record
        new = pa.concat_tables(found)
        new = new.filter(pc.invert(pc.is_in(new["uid"], value_set=old["uid"])))
        table = pa.concat_tables([old, new], promote_options="permissive")
    write_parquet_atomic(rd.fs, path, table)
    return table["uid"].combine_chunks()


def _rewrite_curated(rd: RunDir, pipeline: Any, removed: pa.Array) -> int:
    """curated/ shards (and tars) without the removed uids; returns how many changed."""
    from curate.stages.emit import to_tar

    emit = next((r for r in pipeline.refs() if r.kind == "emit"), None)
    if emit is None or not rd.fs.exists(rd.path(emit.folder)) or not len(removed):
        return 0
    changed, rows = 0, {}
    for name in list_shards(rd.fs, rd.path(emit.folder)):
        path = rd.path(emit.folder, name)
        with rd.fs.open(path, "rb") as f:
            pf = pq.ParquetFile(f)
            meta = pf.schema_arrow.metadata
            t = pf.read()
        keep = pc.invert(pc.is_in(t["uid"], value_set=removed))
        if pc.all(keep).as_py():
            continue
        t = t.filter(keep).replace_schema_metadata(meta)
        write_parquet_atomic(rd.fs, path, t)
        tar = rd.path(emit.folder, "wds", name.replace("part-", "").replace(".parquet", ".tar"))
        if rd.fs.exists(tar):
            write_bytes_atomic(rd.fs, tar, to_tar(t))
        rows[name] = t.num_rows
        changed += 1
    stats_path = rd.path(emit.folder, "stats.json")
    if changed and rd.fs.exists(stats_path):
        with rd.fs.open(stats_path, "rb") as f:
            stats = json.loads(f.read())
        for s in stats.get("shards", []):
            s["rows"] = rows.get(s["name"], s["rows"])
        stats["rows"] = sum(s["rows"] for s in stats.get("shards", []))
        write_bytes_atomic(rd.fs, stats_path, json.dumps(stats, indent=2).encode())
    return changed
