"""The download stage's consent checks and polite crawling: config sections, the global
steps that fetch each origin's robots.txt / tdmrep.json once per run, the configured
denylist, and the per-shard verdicts (``robots_disallowed``, ``tdm_reserved``,
``denylisted``).

Why global steps before the shards: an origin's files are fetched exactly once per run
whatever the number of shards and workers (a per-shard cache would race), the work is
O(origins) and spread over the cluster, and each origin's record is a file
``<download folder>/_robots/<origin>.json`` (written atomically) that a shard reads only
for the origins it holds. Steps: ``denylist`` (driver: write ``denylist/rules.parquet``)
→ ``hosts`` (per run of ``GROUP`` pool shards: their origins; the driver keeps the set,
O(origins), and writes ``_robots/_origins.json``) → ``robots`` (per batch of 64 origins:
fetch and write their records; an origin already recorded is not asked again, so a
crashed step resumes). A shard task reads each origin's record once per process and run
(``pre_fetch``'s ``stamp``), not once per shard.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import pyarrow as pa
from pydantic import Field

from curate.config import OPERATIONAL, Section
from curate.core.io import write_bytes_atomic
from curate.core.rundir import RunDir
from curate.media import robots
from curate.stages._download_denylist import (  # noqa: F401 - re-exported
    KIND_OF,
    DenylistConfig,
    denylist_rules,
    post_fetch,
    write_denylist,
)

BATCH = 64
REASONS = {
    "robots_disallowed": "robots.txt disallows the URL for download.consent.user_agent, or "
                         "the origin's robots.txt was unreachable (5xx, 429, timeout: "
                         "disallow-all); never requested (detail: the rule or the failure)",
    "tdm_reserved": "TDMRep: the origin's /.well-known/tdmrep.json (never requested) or "
                    "the response's 'tdm-reservation: 1' header (body not read) reserves "
                    "text-and-data-mining rights (detail: which)",
    "denylisted": "matches a download.denylist rule, before the fetch (domain, url, "
                  "url_pattern, uid) or after it (the hash lists sha256, md5, sha1, phash, "
                  "pdq: the image is purged) (detail: the rule, kind:value)",
}


class ConsentConfig(Section):
    """Consent before fetching. X-Robots-Tag stays ``download.disallowed_header_directives``."""

    robots: bool = True
    tdmrep: bool = True
    user_agent: str = Field("img2dataset", min_length=1,
                            description="product token matched against robots.txt groups")
    timeout: float = Field(5, gt=0, le=120, description="per consent file")
    on_unreachable: Literal["disallow", "allow"] = "disallow"
    recheck_unreachable_s: float = Field(
        3600, ge=0, json_schema_extra=OPERATIONAL,
        description="an origin recorded as unreachable longer ago than this is asked again "
        "when the consent step next runs (a new pool, or --retry-failed: always)")


class PoliteConfig(Section):
    per_host: int = Field(4, ge=1, le=1024,
                          description="requests in flight per host across the cluster")
    cluster_wide: bool = Field(
        True, description="hold per_host across every download task (one shared gate); "
        "false: per shard task, as img2dataset's processes would",
        json_schema_extra=OPERATIONAL)
    split_cap: bool = Field(
        True, description="cluster-wide: each of the N download tasks at once holds "
        "per_host // N of a host's slots alone (no remote calls), only the remainder is "
        "shared; false: every request takes a slot of the shared gate, so one task may use "
        "a host's whole cap while the others need none of it (a pool sorted by host)",
        json_schema_extra=OPERATIONAL)
    http_retries: int = Field(2, ge=0, le=10, description="extra tries after a 429/503")
    retry_after_max_s: float = Field(30, ge=0, le=600)
    backoff_s: float = Field(1.0, ge=0, le=60, description="429/503 without Retry-After")


GROUP = 16  # pool shards per task of the ``hosts`` step: a task per shard cost more in
#           Ray's scheduling than the shard's URL column does to read (measured: 64 shards)


def shard_groups(shards: list[str]) -> list[dict[str, Any]]:
    """The ``hosts`` step's items: runs of ``GROUP`` shards, named by their first and last."""
    groups = [shards[i:i + GROUP] for i in range(0, len(shards), GROUP)]
    return [{"name": g[0] if len(g) == 1 else f"{g[0]}..{g[-1]}", "shards": g}
            for g in groups]


def shard_origins(urls: list[str | None]) -> list[str]:
    return sorted({o for o in (robots.origin(u) for u in urls if u) if o})


def record_path(rd: RunDir, folder: str, org: str) -> str:
    return rd.path(folder, "_robots", robots.cache_name(org))


def fetch_records(rd: RunDir, folder: str, origins: list[str], section: Any,
                  skip_existing: bool = True, recheck_s: float | None = None
                  ) -> dict[str, dict]:
    """Each origin's consent record: read when recorded, else fetched and written.

    A record of an unreachable robots.txt (disallow-all) recorded more than ``recheck_s``
    seconds ago (default ``consent.recheck_unreachable_s``) is fetched again: a host that
    was down once must not stay excluded from every later run on the directory."""
    c = section.consent
    recheck = c.recheck_unreachable_s if recheck_s is None else recheck_s

    def one(org: str) -> dict:
        path = record_path(rd, folder, org)
        if skip_existing and rd.fs.exists(path):
            with rd.fs.open(path, "rb") as f:
                rec = json.loads(f.read())
            stale = time.time() - rec.get("fetched_at", 0) > recheck
            if not (stale and (rec.get("robots") or {}).get("state") == "unreachable"):
                return rec
        ok = _allowed_origin(org, section.allow_private_addresses)
        rec = (robots.fetch(org, c.timeout, section.user_agent_token, c.robots, c.tdmrep)
               if ok else {"origin": org})
        rec["fetched_at"] = round(time.time(), 3)
        write_bytes_atomic(rd.fs, path, json.dumps(rec).encode())
        return rec

    if not origins:
        return {}
    with ThreadPoolExecutor(max(1, min(section.threads, len(origins)))) as ex:
        return dict(zip(origins, ex.map(one, origins)))


def _allowed_origin(org: str, allow_private: bool) -> bool:
    """netguard's rule for the origin itself: a refused host is never asked for its files
    (its images are refused anyway)."""
    from curate.media import netguard

    return netguard.url_refusal(org + "/", allow_private) is None


def write_origins(rd: RunDir, folder: str, origins: set[str]) -> dict[str, Any]:
    write_bytes_atomic(rd.fs, rd.path(folder, "_robots", "_origins.json"),
                       json.dumps(sorted(origins)).encode())
    return {"origins": len(origins)}


def origin_batches(rd: RunDir, folder: str) -> list[list[str]]:
    with rd.fs.open(rd.path(folder, "_robots", "_origins.json"), "rb") as f:
        origins = json.loads(f.read())
    return [origins[i:i + BATCH] for i in range(0, len(origins), BATCH)]


def summarize_records(recs: dict[str, dict]) -> dict[str, int]:
    out: dict[str, int] = {}
    for rec in recs.values():
        for key in ("robots", "tdmrep"):
            if key in rec:
                k = f"{key}_{rec[key]['state']}"
                out[k] = out.get(k, 0) + 1
    return out


def add_counts(acc: dict, item: Any, result: dict) -> dict:
    for k, v in result.items():
        acc[k] = acc.get(k, 0) + v
    return acc


#: a worker process's consent records and robots.txt parsers, kept across the shards of
#: one consent step's records (``stamp``): a shard reads only the origins no earlier shard
#: of the process read. Read per shard, 64 origins' JSON records (and the thread pool to
#: read them) cost ~18 ms of CPU per 250-URL shard, more than its fetches (measured).
_KEPT: dict[str, Any] = {"key": None}
KEPT_MAX = 100_000  # origins; past it the process starts over (memory stays bounded)


def _kept(key: tuple) -> dict[str, Any]:
    if _KEPT["key"] != key or len(_KEPT["recs"]) > KEPT_MAX:
        _KEPT.update(key=key, recs={}, verdicts=robots.Verdicts(key[3], key[4]))
    return _KEPT


def pre_fetch(rd: RunDir, folder: str, section: Any, uids: list[str],
              urls: list[str | None], todo: list[int], to_fetch: list[int],
              stamp: int | None = None, rules: pa.Table | None | bool = True
              ) -> tuple[dict[int, tuple[str, str]], pa.Table | None]:
    """Verdicts before any image request: index -> (code, detail), the denylist for the
    rows ``todo`` (all of them), robots.txt and TDMRep for ``to_fetch`` (those without
    bytes); and the denylist rules (for the image-hash check after the fetch).

    ``stamp``: when the consent step wrote the records (its commit): records read under
    one stamp are kept in the process for the next shard; a new stamp (the step ran
    again) starts over. None: read every record afresh. ``rules``: the denylist rules
    when the caller already read them (:func:`denylist_rules`); True: read them here."""
    out: dict[int, tuple[str, str]] = {}
    if rules is True:
        rules = denylist_rules(rd)
    if rules is not None and todo:
        from curate.algorithms.denylist import match

        label = match(rules, pa.array([uids[i] for i in todo], pa.string()),
                      pa.array([urls[i] for i in todo], pa.string())).to_pylist()
        for i, lab in zip(todo, label):
            if lab is not None:
                out[i] = ("denylisted", lab)
    rest = [i for i in to_fetch if i not in out and urls[i]]
    if not rest:
        return out, rules
    c = section.consent
    if c.robots or c.tdmrep:
        orgs = {i: robots.origin(urls[i]) for i in rest}  # urlsplit once per URL
        need = sorted({o for o in orgs.values() if o})
        if stamp is None:
            recs = fetch_records(rd, folder, need, section)
            v = robots.Verdicts(c.user_agent, c.on_unreachable)
        else:
            kept = _kept((rd.url, folder, stamp, c.user_agent, c.on_unreachable))
            recs = kept["recs"]
            recs.update(fetch_records(rd, folder, [o for o in need if o not in recs], section))
            v = kept["verdicts"]
        for i in rest:
            rec = recs.get(orgs[i] or "")
            if rec is None:
                continue
            why = v.robots(rec, urls[i]) if c.robots else None
            if why:
                out[i] = ("robots_disallowed", why)
                continue
            why = v.tdm(rec, urls[i]) if c.tdmrep else None
            if why:
                out[i] = ("tdm_reserved", why)
    return out, rules


def classify(error: str) -> str | None:
    """The reason code of a fetch error that is a consent verdict (None: download_failed)."""
    from curate.media.polite import TDM_HEADER

    return "tdm_reserved" if error == TDM_HEADER else None

