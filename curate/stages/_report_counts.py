"""The report stage's per-shard counting (workers) and the driver's sums of it.

Everything streams one pool shard at a time: each shard gives sparse per-entry counts,
per-class counts, a fixed-bin clip_score histogram and per-stage drop counts by reason code,
which the driver adds up in :class:`Totals` (count vectors only, never rows).
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.core.rundir import RunDir
from curate.stages._report_extras import Extras, shard_extras
from curate.stages.base import summarize

log = logging.getLogger(__name__)

#: clip_score histogram bins: cosine similarities live in [-1, 1]; 0.005 wide
SCORE_EDGES = np.linspace(-1.0, 1.0, 401)

OUTPUTS = {
    "report": "report.html",
    "stage summary": "stage_summary.parquet",
    "concept frequency": "concept_frequency.parquet",
    "downstream coverage": "downstream_coverage.parquet",
}


# --------------------------------------------------------------------------- ImageNet names


def imagenet_classnames() -> list[str]:
    """open_clip's IMAGENET_CLASSNAMES (1000 names, in class-index order, duplicates kept).

    ``open_clip/zero_shot_metadata.py`` is plain data, but importing it through the package
    imports torch and all of open_clip (~10 s cold). The file is therefore loaded on its own
    when open_clip is installed but not yet imported.
    """
    mod = sys.modules.get("open_clip.zero_shot_metadata")
    if mod is None:
        spec = importlib.util.find_spec("open_clip")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("open_clip is not installed")
        path = f"{list(spec.submodule_search_locations)[0]}/zero_shot_metadata.py"
        file_spec = importlib.util.spec_from_file_location("_curate_zero_shot_metadata", path)
        if file_spec is None or file_spec.loader is None:
            raise ImportError(f"cannot load {path}")
        mod = importlib.util.module_from_spec(file_spec)
        file_spec.loader.exec_module(mod)
    return list(mod.IMAGENET_CLASSNAMES)


@functools.cache
def imagenet_classes() -> tuple[list[int], list[str]]:
    """:func:`distinct_classes` of ImageNet's names, read once per process (every shard of
    the report's count step asks for them)."""
    return distinct_classes(imagenet_classnames())


def distinct_classes(names: list[str]) -> tuple[list[int], list[str]]:
    """(first index, name) of each distinct class name, in index order."""
    seen: dict[str, int] = {}
    for i, n in enumerate(names):
        seen.setdefault(n, i)
    return list(seen.values()), list(seen.keys())


#: :func:`coverage_entries` codes besides an entry id
MATCH_CAPTIONS, NEVER = -1, -2


def coverage_entries(classes: list[str], entries: list[str], boundary: str) -> list[int]:
    """How each class's coverage is counted when match ran over every pool pair: the id of
    the match vocabulary's entry that is the class name with the same key as under v1 (its
    pool and final counts are then that entry's, read off the concept counts: no second
    pass over the captions), :data:`NEVER` when the v1 rule can match it to no caption,
    :data:`MATCH_CAPTIONS` otherwise (matched on the captions, shard by shard)."""
    from curate.algorithms.matching import entry_key, never_matches

    ids = {e: i for i, e in enumerate(entries)}
    out = []
    for name in classes:
        i = ids.get(name)
        if never_matches(name):
            out.append(NEVER)
        elif i is not None and entry_key(name, boundary) == entry_key(name, "metaclip1"):
            out.append(i)
        else:
            out.append(MATCH_CAPTIONS)
    return out


def full_coverage(class_entries: list[int] | None, totals: Totals
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(pool, final) counts of every class: the ones matched on captions from ``totals``'
    coverage vectors, the others from its concept counts (see :func:`coverage_entries`)."""
    if class_entries is None:
        return totals.cov_pool, totals.cov_final
    code = np.asarray(class_entries, np.int64)
    out = []
    for cov, col in ((totals.cov_pool, "count_pool"), (totals.cov_final, "count_final")):
        full = np.zeros(code.size, np.int64)
        full[code == MATCH_CAPTIONS] = cov
        counts = totals.concepts.get(col, np.zeros(0, np.int64))
        known = np.flatnonzero((code >= 0) & (code < counts.size))
        full[known] = counts[code[known]]
        out.append(full)
    return out[0], out[1]


def coverage_table(indices: list[int], names: list[str], cp: np.ndarray, cf: np.ndarray
                   ) -> pa.Table:
    """downstream_coverage.parquet from the classes' pool and final counts."""
    idx = np.asarray(indices, np.int64)
    order = np.lexsort((idx, -cp, -cf))
    rank = np.empty(idx.size, np.int64)
    rank[order] = np.arange(1, idx.size + 1)
    return pa.table({"class_index": pa.array(idx, pa.int32()),
                     "classname": pa.array(names, pa.string()),
                     "count_pool": pa.array(cp, pa.int64()),
                     "count_final": pa.array(cf, pa.int64()),
                     "rank_final": pa.array(rank, pa.int32())})


_MATCHERS: dict[tuple[str, ...], Any] = {}


def _class_matcher(names: tuple[str, ...]):
    from curate.algorithms.matching import Matcher

    if names not in _MATCHERS:
        _MATCHERS.clear()
        _MATCHERS[names] = Matcher(list(names))
    return _MATCHERS[names]


# --------------------------------------------------------------------------- per shard


@dataclass(frozen=True)
class ShardPlan:
    """What to count in each shard; small and picklable (it travels to workers)."""

    run_url: str
    #: per-shard stage instances that ran, in pipeline order; a shard lacking one is left out
    stages: tuple[str, ...]
    #: their output folders, in the same order
    folders: tuple[str, ...]
    #: the deciding ones among them; the last one's kept uids are the final pairs
    deciding: tuple[str, ...]
    #: deciding stages after match: one count_after_<stage> column each
    after_match: tuple[str, ...]
    #: the distinct ImageNet class names matched on captions (empty: none)
    classnames: tuple[str, ...] = ()
    #: the match and score instances whose outputs the report reads (None: none ran)
    match: str | None = None
    score: str | None = None
    #: aesthetic stages' folders and the language stage's (the report's extra sections)
    aesthetic: tuple[str, ...] = ()
    language: str | None = None
    #: (label, cluster id) of the clusters whose kept and dropped pairs the report shows
    sheet_clusters: tuple[tuple[str, int], ...] = ()
    prune: str | None = None
    #: the download stage's folder: per-host failure counts
    download: str | None = None
    #: (stage, reason) a safety rule drops for: no contact-sheet candidates are collected
    hidden: tuple[tuple[str, str], ...] = ()
    #: (instance, folder, kind) of the nsfw and toxicity stages: their histograms
    safety: tuple[tuple[str, str, str], ...] = ()

    def folder(self, name: str) -> str:
        return self.folders[self.stages.index(name)]


def _flat_ids(entry_ids: pa.Array) -> np.ndarray:
    flat = pc.list_flatten(entry_ids)
    if not len(flat):
        return np.zeros(0, np.int64)
    return flat.to_numpy(zero_copy_only=False).astype(np.int64)


def _sparse_counts(entry_ids: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(ids, counts) of the entries present: small to ship from a worker to the driver."""
    c = np.bincount(_flat_ids(entry_ids))
    nz = np.flatnonzero(c)
    # int32 counts (a shard holds < 2**31 pairs): results over 100 KB travel through Ray's
    # shared-memory store, whose pages then count in the driver's RSS (see driver.py)
    return nz.astype(np.int32), c[nz].astype(np.int32)


def _decisions(rd: RunDir, folder: str, shard: str) -> pa.Table:
    """uid, kept, reason of one deciding stage's shard; reason filled for every drop."""
    path = rd.shard_path(folder, shard)
    with rd.fs.open(path, "rb") as f:
        names = pq.read_schema(f).names
    t = rd.read(folder, shard, [c for c in ("uid", "kept", "reason") if c in names])
    kept = pc.fill_null(t["kept"], False)
    reason = t["reason"] if "reason" in names else pa.nulls(t.num_rows, pa.string())
    reason = pc.if_else(kept, pa.scalar(None, pa.string()),
                        pc.fill_null(reason.cast(pa.string()), "unknown"))
    return pa.table({"uid": t["uid"], "kept": kept, "reason": reason})


def curated_rows(rd: RunDir, folder: str) -> int:
    """Rows in emit's output shards (their footers only)."""
    from curate.core.io import list_shards

    total = 0
    for name in list_shards(rd.fs, rd.stage_dir(folder)):
        with rd.fs.open(rd.path(folder, name), "rb") as f:
            total += pq.ParquetFile(f).metadata.num_rows
    return total


def _num_rows(rd: RunDir, folder: str, shard: str) -> int:
    with rd.fs.open(rd.shard_path(folder, shard), "rb") as f:
        return pq.ParquetFile(f).metadata.num_rows


def shard_stats(plan: ShardPlan, shard: str) -> dict[str, Any]:
    """Everything the report needs from one pool shard (runs in a worker or in a loop)."""
    rd = RunDir(plan.run_url)
    missing = [s for s in plan.stages
               if not rd.fs.exists(rd.shard_path(plan.folder(s), shard))]
    if missing:
        return {"shard": shard, "missing": missing}
    out: dict[str, Any] = {"shard": shard, "stages": {}}
    kept: dict[str, pa.Array] = {}
    decided: dict[str, pa.Table] = {}
    for s in plan.stages:
        if s in plan.deciding:
            t = _decisions(rd, plan.folder(s), shard)
            decided[s] = t
            c = summarize(True, t, t.num_rows)
            out["stages"][s] = {"rows_in": c["rows_in"], "kept": c["kept"],
                                "dropped": c["dropped"]}
            kept[s] = t.filter(t["kept"])["uid"].combine_chunks()
        else:
            n = _num_rows(rd, plan.folder(s), shard)
            out["stages"][s] = {"rows_in": n, "kept": n, "dropped": {}}
    final = kept[plan.deciding[-1]] if plan.deciding else None
    out["extras"] = shard_extras(rd, shard, decided, final, plan.aesthetic, plan.language,
                                 plan.sheet_clusters, plan.prune, plan.download,
                                 plan.hidden, plan.safety)

    out["pool_rows"] = _num_rows(rd, "pool", shard)
    out["final"] = len(final) if final is not None else out["pool_rows"]
    if plan.classnames:
        pool = rd.read("pool", shard, ["uid", "caption"])
        uids = pool["uid"].combine_chunks()
        in_final = (pc.is_in(uids, value_set=final) if final is not None
                    else pa.array(np.ones(len(uids), bool)))
        ids = _class_matcher(plan.classnames).match(pool["caption"].combine_chunks())
        n = len(plan.classnames)
        out["cov_pool"] = np.bincount(_flat_ids(ids), minlength=n)
        out["cov_final"] = np.bincount(_flat_ids(ids.filter(in_final)), minlength=n)

    if plan.match:
        m = rd.read(plan.folder(plan.match), shard, ["uid", "entry_ids"])
        ids = m["entry_ids"].combine_chunks()
        uids = m["uid"].combine_chunks()
        conc = {"count_pool": _sparse_counts(ids)}
        for s in plan.after_match:
            conc[f"count_after_{s}"] = _sparse_counts(ids.filter(pc.is_in(uids,
                                                                           value_set=kept[s])))
        if final is None:
            conc["count_final"] = conc["count_pool"]
        elif plan.after_match and plan.after_match[-1] == plan.deciding[-1]:
            conc["count_final"] = conc[f"count_after_{plan.after_match[-1]}"]
        else:
            conc["count_final"] = _sparse_counts(ids.filter(pc.is_in(uids, value_set=final)))
        out["concepts"] = conc

    if plan.score:
        sc = rd.read(plan.folder(plan.score), shard, ["clip_score", "kept"])
        score = sc["clip_score"].combine_chunks()
        valid = pc.is_valid(score)
        s_all = score.filter(valid).to_numpy(zero_copy_only=False).astype(np.float64)
        k = pc.fill_null(sc["kept"].combine_chunks(), False).filter(valid)
        s_kept = s_all[k.to_numpy(zero_copy_only=False)]
        out["score"] = {
            "all": np.histogram(np.clip(s_all, -1, 1), SCORE_EDGES)[0],
            "kept": np.histogram(np.clip(s_kept, -1, 1), SCORE_EDGES)[0],
            "n": int(s_all.size), "n_kept": int(s_kept.size), "sum": float(s_all.sum()),
            "min_kept": float(s_kept.min()) if s_kept.size else None,
        }
    return out


# --------------------------------------------------------------------------- driver side


class Totals:
    """Sums of the per-shard results; holds only count vectors, never rows."""

    def __init__(self, n_classes: int):
        self.stages: dict[str, dict[str, Any]] = {}
        self.concepts: dict[str, np.ndarray] = {}
        self.cov_pool = np.zeros(n_classes, np.int64)
        self.cov_final = np.zeros(n_classes, np.int64)
        self.score: dict[str, Any] | None = None
        self.final = 0
        self.pool_rows = 0
        self.shards: list[str] = []
        self.missing: dict[str, list[str]] = {}
        self.failed: dict[str, str] = {}
        self.extras = Extras()

    def add(self, shard: str, r: dict[str, Any]) -> None:
        if r.get("missing"):
            self.missing[shard] = r["missing"]
            return
        self.shards.append(shard)
        self.extras.add(r.get("extras", {}))
        self.final += r["final"]
        self.pool_rows += r["pool_rows"]
        for s, c in r["stages"].items():
            t = self.stages.setdefault(s, {"rows_in": 0, "kept": 0, "dropped": {}})
            t["rows_in"] += c["rows_in"]
            t["kept"] += c["kept"]
            for reason, n in c["dropped"].items():
                t["dropped"][reason] = t["dropped"].get(reason, 0) + n
        if "cov_pool" in r:
            self.cov_pool += r["cov_pool"]
            self.cov_final += r["cov_final"]
        for col, (ids, counts) in r.get("concepts", {}).items():
            arr = self.concepts.get(col, np.zeros(0, np.int64))
            need = int(ids.max()) + 1 if ids.size else 0
            if need > arr.size:
                arr = np.concatenate([arr, np.zeros(need - arr.size, np.int64)])
            arr[ids] += counts  # ids are unique within a shard's result
            self.concepts[col] = arr
        if "score" in r:
            s = r["score"]
            if self.score is None:
                self.score = {"all": np.zeros(len(SCORE_EDGES) - 1, np.int64),
                              "kept": np.zeros(len(SCORE_EDGES) - 1, np.int64),
                              "n": 0, "n_kept": 0, "sum": 0.0, "min_kept": None}
            t = self.score
            t["all"] += s["all"]
            t["kept"] += s["kept"]
            t["n"] += s["n"]
            t["n_kept"] += s["n_kept"]
            t["sum"] += s["sum"]
            if s["min_kept"] is not None:
                t["min_kept"] = s["min_kept"] if t["min_kept"] is None else min(
                    t["min_kept"], s["min_kept"])


