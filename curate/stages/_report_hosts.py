"""Per-host download statistics: pairs, failures by cause, and the top failing hosts.

Why not a step of the download stage: a global step after download's shard step would
change its failure policy (ARCHITECTURE §9.2: a failed shard would leave download
``incomplete`` and block the run instead of being left out within
``run.max_failed_fraction``). The statistics are read back from download's shard files
instead, by whoever runs a per-shard pass later (the report's ``count`` step):
``shard_host_counts`` per pool shard (worker) → ``merge`` (driver fold, O(hosts)) →
``write_host_failures`` (commit) → ``top_failing_hosts`` (the page's table).
"""

from __future__ import annotations

import re
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from curate.algorithms.denylist import hosts as url_hosts

SCHEMA = pa.schema([
    ("host", pa.string()), ("pairs", pa.int64()), ("failed", pa.int64()),
    ("failure_rate", pa.float64()),
    ("by_reason", pa.list_(pa.struct([("reason", pa.string()), ("count", pa.int64())]))),
])

_CAUSES = [  # first match wins; a download_failed error's text -> a short cause
    (re.compile(r"HTTP Error (\d{3})|HTTP (\d{3})"), None),
    (re.compile(r"timed out|timeout", re.I), "timeout"),
    (re.compile(r"X-Robots-Tag"), "x_robots_tag"),
    (re.compile(r"refused private|redirect refused"), "address_refused"),
    (re.compile(r"could not resolve|Name or service not known", re.I), "dns"),
    (re.compile(r"Connection refused|Connection reset|Remote end closed", re.I), "connection"),
    (re.compile(r"truncated|HTML page|not an image|decompression bomb|too large|"
                r"cannot identify|unsupported", re.I), "bad_image"),
]


def cause(reason: str | None, error: str | None) -> str | None:
    """None for a kept pair; a consent code as is; ``download_failed`` by its error."""
    if reason is None:
        return None
    if reason != "download_failed":
        return reason
    for pat, name in _CAUSES:
        m = pat.search(error or "")
        if m:
            return name or f"http_{m.group(1) or m.group(2)}"
    return "other"


def shard_host_counts(rd: Any, download_folder: str, shard: str) -> dict[str, dict[str, int]]:
    """host -> {"pairs": n, "failed": n, <cause>: n} for one pool shard (small: O(hosts
    of the shard)). Pairs without a URL are not counted."""
    path = rd.shard_path(download_folder, shard)
    if not rd.fs.exists(path):
        return {}
    img = rd.read(download_folder, shard, ["uid", "reason", "error"])
    import pyarrow.parquet as pq

    with rd.fs.open(rd.shard_path("pool", shard), "rb") as f:
        if "url" not in pq.read_schema(f).names:
            return {}
    pool = rd.read("pool", shard, ["uid", "url"])
    idx = pc.index_in(img["uid"].combine_chunks(), value_set=pool["uid"].combine_chunks())
    host = url_hosts(pc.take(pool["url"].combine_chunks(), idx)).to_pylist()
    out: dict[str, dict[str, int]] = {}
    for h, reason, error in zip(host, img["reason"].to_pylist(), img["error"].to_pylist()):
        if not h:
            continue
        d = out.setdefault(h, {"pairs": 0, "failed": 0})
        d["pairs"] += 1
        c = cause(reason, error)
        if c is not None:
            d["failed"] += 1
            d[c] = d.get(c, 0) + 1
    return out


def merge(acc: dict, counts: dict[str, dict[str, int]]) -> dict:
    for h, d in counts.items():
        a = acc.setdefault(h, {})
        for k, v in d.items():
            a[k] = a.get(k, 0) + v
    return acc


def to_table(acc: dict[str, dict[str, int]]) -> pa.Table:
    hosts = sorted(acc, key=lambda h: (-acc[h]["failed"], h))
    rows = []
    for h in hosts:
        d = acc[h]
        why = sorted(((k, v) for k, v in d.items() if k not in ("pairs", "failed")),
                     key=lambda kv: (-kv[1], kv[0]))
        rows.append({"host": h, "pairs": d["pairs"], "failed": d["failed"],
                     "failure_rate": d["failed"] / d["pairs"] if d["pairs"] else 0.0,
                     "by_reason": [{"reason": k, "count": v} for k, v in why]})
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def write_host_failures(rd: Any, rel_path: str, acc: dict) -> pa.Table:
    """Write ``rel_path`` (e.g. ``reports/host_failures.parquet``): one row per host,
    most failures first."""
    from curate.core.io import write_parquet_atomic

    table = to_table(acc)
    write_parquet_atomic(rd.fs, rd.path(*rel_path.split("/")), table)
    return table


def top_failing_hosts(table: pa.Table, n: int = 20, min_pairs: int = 1) -> list[dict]:
    """The ``n`` hosts with most failed pairs (ties: host name), for the report's table."""
    t = table.filter(pc.and_(pc.greater_equal(table["pairs"], min_pairs),
                             pc.greater(table["failed"], 0)))
    return t.slice(0, n).to_pylist()
