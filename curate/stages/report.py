"""report: what the curation did, as three Parquet tables and one self-contained HTML page.

Outputs (``reports/``, DESIGN §4):

- ``stage_summary.parquet``: stage, step, status, seconds, pairs_in, kept, dropped, reason,
  count. One total row per stage that ran (``reason`` null, ``pairs_in = kept + dropped``)
  followed by one row per drop reason (``count``; the stage-level columns null there, so
  ``SUM(count)`` and ``SUM(dropped)`` never double count). The first stage is ``ingest``
  (rows read, duplicates and bad rows, from run.json). Counts come from the shard files, not
  from run.json, so they describe exactly what is on disk now.
- ``concept_frequency.parquet`` (when match ran): entry_id, entry, count_pool (pairs in the
  match shards, i.e. that reached match), count_after_<stage> for each deciding stage after
  match, count_final, rank (by count_pool, 1 = most frequent, ties by entry_id) and head
  (count_pool > balance.t). Only entries with count_pool > 0, so at most the vocabulary's
  size (500k rows for MetaCLIP's list): a table Parquet and DuckDB handle easily.
- ``downstream_coverage.parquet``: class_index (first index in open_clip's
  IMAGENET_CLASSNAMES), classname, count_pool, count_final, rank_final (1 = most covered;
  ties by count_pool, then class_index). MetaCLIP's matching rule over the captions of every
  pool shard and of the final pairs. IMAGENET_CLASSNAMES has 1000 names but fewer distinct
  ones (998 in open_clip 3.3: "missile" and "sunglasses" appear twice, while the two
  cranes are already "crane bird" and "construction crane"): one row per distinct name.
- ``report.html``: plots and tables of all of it (:mod:`curate.report.html`).

"Final" is the set of pairs kept by the last deciding stage that ran (what emit writes);
it is computed per pool shard, because ``curated/`` is resharded by emit and reading its
uids back would need the whole set in memory. When ``curated/`` exists its row count is
checked against it. Everything streams one pool shard at a time: each shard gives sparse
per-entry counts, per-class counts, a fixed-bin clip_score histogram and per-stage drop
counts, which the driver adds up. With Ray running (in a pipeline) the shards are counted in
parallel through the engine; without it (tests, a notebook) in a plain loop.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.core.io import join, list_shards, write_bytes_atomic, write_parquet_atomic
from curate.core.rundir import DECIDING, RunDir, now
from curate.stages.base import Stage, summarize

log = logging.getLogger(__name__)

#: stages whose output is one file per pool shard
PER_SHARD = ("download", "score", "match", "balance", "prune")
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


def distinct_classes(names: list[str]) -> tuple[list[int], list[str]]:
    """(first index, name) of each distinct class name, in index order."""
    seen: dict[str, int] = {}
    for i, n in enumerate(names):
        seen.setdefault(n, i)
    return list(seen.values()), list(seen.keys())


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
    #: per-shard stages that ran, in pipeline order; a shard lacking one is left out
    stages: tuple[str, ...]
    #: the deciding ones among them; the last one's kept uids are the final pairs
    deciding: tuple[str, ...]
    #: deciding stages after match: one count_after_<stage> column each
    after_match: tuple[str, ...]
    #: distinct ImageNet class names (empty: no coverage)
    classnames: tuple[str, ...] = ()


def _flat_ids(entry_ids: pa.Array) -> np.ndarray:
    flat = pc.list_flatten(entry_ids)
    if not len(flat):
        return np.zeros(0, np.int64)
    return flat.to_numpy(zero_copy_only=False).astype(np.int64)


def _sparse_counts(entry_ids: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(ids, counts) of the entries present: small to ship from a worker to the driver."""
    c = np.bincount(_flat_ids(entry_ids))
    nz = np.flatnonzero(c)
    return nz.astype(np.int32), c[nz].astype(np.int64)


def _decisions(rd: RunDir, stage: str, shard: str) -> pa.Table:
    """uid, kept, reason of one deciding stage's shard; reason filled for every drop."""
    path = rd.shard_path(stage, shard)
    with rd.fs.open(path, "rb") as f:
        names = pq.read_schema(f).names
    t = rd.read(stage, shard, [c for c in ("uid", "kept", "reason") if c in names])
    kept = pc.fill_null(t["kept"], False)
    reason = t["reason"] if "reason" in names else pa.nulls(t.num_rows, pa.string())
    reason = pc.if_else(kept, pa.scalar(None, pa.string()),
                        pc.fill_null(reason.cast(pa.string()), "no reason recorded"))
    return pa.table({"uid": t["uid"], "kept": kept, "reason": reason})


def _num_rows(rd: RunDir, stage: str, shard: str) -> int:
    with rd.fs.open(rd.shard_path(stage, shard), "rb") as f:
        return pq.ParquetFile(f).metadata.num_rows


def shard_stats(plan: ShardPlan, shard: str) -> dict[str, Any]:
    """Everything the report needs from one pool shard (runs in a worker or in a loop)."""
    rd = RunDir(plan.run_url)
    missing = [s for s in plan.stages if not rd.fs.exists(rd.shard_path(s, shard))]
    if missing:
        return {"shard": shard, "missing": missing}
    out: dict[str, Any] = {"shard": shard, "stages": {}}
    kept: dict[str, pa.Array] = {}
    for s in plan.stages:
        if s in DECIDING:
            t = _decisions(rd, s, shard)
            c = summarize(s, t, t.num_rows)
            out["stages"][s] = {"rows_in": c["rows_in"], "kept": c["kept"],
                                "dropped": c["dropped"]}
            kept[s] = t.filter(t["kept"])["uid"].combine_chunks()
        else:
            n = _num_rows(rd, s, shard)
            out["stages"][s] = {"rows_in": n, "kept": n, "dropped": {}}
    final = kept[plan.deciding[-1]] if plan.deciding else None

    pool = rd.read("pool", shard, ["uid", "caption"] if plan.classnames else ["uid"])
    uids = pool["uid"].combine_chunks()
    in_final = (pc.is_in(uids, value_set=final) if final is not None
                else pa.array(np.ones(len(uids), bool)))
    out["pool_rows"] = pool.num_rows
    out["final"] = int(pc.sum(in_final).as_py() or 0)
    if plan.classnames:
        ids = _class_matcher(plan.classnames).match(pool["caption"].combine_chunks())
        n = len(plan.classnames)
        out["cov_pool"] = np.bincount(_flat_ids(ids), minlength=n)
        out["cov_final"] = np.bincount(_flat_ids(ids.filter(in_final)), minlength=n)

    if "match" in plan.stages:
        m = rd.read("match", shard, ["uid", "entry_ids"])
        ids = m["entry_ids"].combine_chunks()
        uids = m["uid"].combine_chunks()
        conc = {"count_pool": _sparse_counts(ids)}
        for s in plan.after_match:
            conc[f"count_after_{s}"] = _sparse_counts(ids.filter(pc.is_in(uids,
                                                                           value_set=kept[s])))
        conc["count_final"] = (_sparse_counts(ids.filter(pc.is_in(uids, value_set=final)))
                               if final is not None else conc["count_pool"])
        out["concepts"] = conc

    if "score" in plan.stages:
        sc = rd.read("score", shard, ["clip_score", "kept"])
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


class _Totals:
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

    def add(self, shard: str, r: dict[str, Any]) -> None:
        if r.get("missing"):
            self.missing[shard] = r["missing"]
            return
        self.shards.append(shard)
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
            np.add.at(arr, ids, counts)
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


def _ray_running() -> bool:
    ray = sys.modules.get("ray")
    return bool(ray is not None and ray.is_initialized())


class ReportStage(Stage):
    """Global stage: reads every earlier stage's outputs, writes ``reports/``."""

    name = "report"
    per_shard = False

    # ------------------------------------------------------------------ what ran
    def _ran(self) -> dict[str, bool]:
        ran = {}
        for s in self.before:
            if s in PER_SHARD:
                ran[s] = bool(list_shards(self.rd.fs, self.rd.stage_dir(s)))
            elif s == "emit":
                ran[s] = bool(list_shards(self.rd.fs, self.rd.stage_dir(s)))
            else:
                ran[s] = False
        return ran

    def _entries(self, n: int) -> list[str]:
        """Entry strings by id: balance's entry_counts.parquet, else the vocabulary."""
        path = self.rd.path("balance", "entry_counts.parquet")
        names: list[str] = []
        try:
            if self.rd.fs.exists(path):
                with self.rd.fs.open(path, "rb") as f:
                    t = pq.read_table(f, columns=["entry_id", "entry"])
                names = [""] * (int(pc.max(t["entry_id"]).as_py() or 0) + 1 if t.num_rows else 0)
                for i, e in zip(t["entry_id"].to_pylist(), t["entry"].to_pylist()):
                    names[i] = e
            else:
                from curate.vocab import load_vocabulary

                names = load_vocabulary(self.cfg.match.metadata)
        except Exception as err:  # noqa: BLE001 - names are cosmetic; ids still identify
            log.warning("report: cannot read the metadata entries (%s); showing ids", err)
        if len(names) < n:
            names = names + [f"#{i}" for i in range(len(names), n)]
        return names

    # ------------------------------------------------------------------ counting
    def _count(self, plan: ShardPlan, shards: list[str], totals: _Totals) -> None:
        fn = partial(shard_stats, plan)
        if _ray_running():
            from curate.core import engine

            def done(outcome) -> None:
                if outcome.ok:
                    totals.add(outcome.item, outcome.value)
                    outcome.value = None  # keep the driver's memory flat
                else:
                    totals.failed[outcome.item] = outcome.error or "failed"

            engine.map_items(fn, shards, max_retries=self.cfg.run.max_retries,
                             timeout_s=self.cfg.run.shard_timeout_s, on_done=done,
                             desc="report: count")
            return
        for s in shards:
            try:
                r = fn(s)
            except Exception as err:  # noqa: BLE001 - one unreadable shard leaves the rest
                log.exception("report: shard %s could not be read", s)
                totals.failed[s] = f"{type(err).__name__}: {err}"
                continue
            totals.add(s, r)

    # ------------------------------------------------------------------ tables
    def _stage_summary(self, manifest: dict[str, Any], totals: _Totals,
                       ran: dict[str, bool]) -> pa.Table:
        rows: list[dict[str, Any]] = []
        mstages = manifest.get("stages", {})

        def add(stage: str, status: str | None, seconds: float | None, pairs_in: int,
                kept: int, dropped: dict[str, int]) -> None:
            step = len({r["stage"] for r in rows})
            rows.append({"stage": stage, "step": step, "status": status, "seconds": seconds,
                         "pairs_in": pairs_in, "kept": kept, "dropped": pairs_in - kept,
                         "reason": None, "count": None})
            for reason, n in sorted(dropped.items(), key=lambda kv: (-kv[1], kv[0])):
                rows.append({"stage": stage, "step": step, "status": None, "seconds": None,
                             "pairs_in": None, "kept": None, "dropped": None,
                             "reason": reason, "count": int(n)})

        pool = manifest.get("pool", {})
        if pool:
            dups = int(pool.get("duplicates", 0) or 0)
            bad = {str(k): int(v) for k, v in (pool.get("bad_rows") or {}).items() if v}
            reasons = ({"duplicate": dups} if dups else {}) | bad
            n = int(pool.get("rows", 0) or 0)
            add("ingest", "done", (manifest.get("timings") or {}).get("ingest"),
                n + sum(reasons.values()), n, reasons)
        for s in self.before:
            if not ran.get(s):
                continue
            st = mstages.get(s, {})
            if s in totals.stages:
                c = totals.stages[s]
                add(s, st.get("status"), st.get("seconds"), c["rows_in"], c["kept"],
                    c["dropped"])
            elif s == "emit":
                emitted = self._curated_rows()
                gap = totals.final - emitted
                add(s, st.get("status"), st.get("seconds"), totals.final, emitted,
                    {"not emitted": gap} if gap > 0 else {})
        schema = pa.schema([("stage", pa.string()), ("step", pa.int32()), ("status", pa.string()),
                            ("seconds", pa.float64()), ("pairs_in", pa.int64()),
                            ("kept", pa.int64()), ("dropped", pa.int64()),
                            ("reason", pa.string()), ("count", pa.int64())])
        return pa.Table.from_pylist(rows, schema=schema)

    def _curated_rows(self) -> int:
        total = 0
        for name in list_shards(self.rd.fs, self.rd.stage_dir("emit")):
            with self.rd.fs.open(self.rd.path("curated", name), "rb") as f:
                total += pq.ParquetFile(f).metadata.num_rows
        return total

    def _concepts(self, totals: _Totals, after_match: list[str]) -> pa.Table:
        cols = ["count_pool", *[f"count_after_{s}" for s in after_match], "count_final"]
        n = max([totals.concepts.get(c, np.zeros(0)).size for c in cols] + [0])
        arrays = {}
        for c in cols:
            a = totals.concepts.get(c, np.zeros(0, np.int64))
            arrays[c] = np.concatenate([a, np.zeros(n - a.size, np.int64)])
        ids = np.flatnonzero(arrays["count_pool"] > 0)
        names = self._entries(n)
        pool = arrays["count_pool"][ids]
        order = np.lexsort((ids, -pool))
        rank = np.empty(ids.size, np.int64)
        rank[order] = np.arange(1, ids.size + 1)
        t = self.cfg.balance.t
        data: dict[str, Any] = {"entry_id": pa.array(ids, pa.int32()),
                                "entry": pa.array([names[i] for i in ids], pa.string())}
        for c in cols:
            data[c] = pa.array(arrays[c][ids], pa.int64())
        data["rank"] = pa.array(rank, pa.int64())
        data["head"] = pa.array(pool > t, pa.bool_())
        return pa.table(data)

    @staticmethod
    def _coverage(indices: list[int], names: list[str], totals: _Totals) -> pa.Table:
        cp, cf = totals.cov_pool, totals.cov_final
        idx = np.asarray(indices, np.int64)
        order = np.lexsort((idx, -cp, -cf))
        rank = np.empty(idx.size, np.int64)
        rank[order] = np.arange(1, idx.size + 1)
        return pa.table({"class_index": pa.array(idx, pa.int32()),
                         "classname": pa.array(names, pa.string()),
                         "count_pool": pa.array(cp, pa.int64()),
                         "count_final": pa.array(cf, pa.int64()),
                         "rank_final": pa.array(rank, pa.int32())})

    def _score_data(self, totals: _Totals, manifest: dict[str, Any]) -> dict[str, Any] | None:
        s = totals.score
        if s is None:
            return None
        f = self.cfg.score.filter
        threshold, label = None, ""
        if f.min_score is not None:
            threshold, label = f.min_score, f"score.filter.min_score = {f.min_score:g}"
        elif f.top_fraction is not None:
            # the global quantile the score stage recorded, else the lowest kept score
            recorded = ((manifest.get("stages", {}).get("score", {}).get("global") or {})
                        .get("threshold"))
            if isinstance(recorded, int | float) and np.isfinite(recorded):
                threshold = float(recorded)
            elif s["min_kept"] is not None:
                threshold = s["min_kept"]
            if threshold is not None:
                label = f"top {100 * f.top_fraction:g}% cutoff ({threshold:.3f})"
        return {**s, "edges": SCORE_EDGES, "threshold": threshold, "threshold_label": label}

    def _clusters(self) -> pa.Table | None:
        path = self.rd.path("prune", "clusters.parquet")
        if not self.rd.fs.exists(path):
            return None
        with self.rd.fs.open(path, "rb") as f:
            return pq.read_table(f)

    # ------------------------------------------------------------------ the stage
    def run_global(self, shards: list[str]) -> dict[str, Any]:
        from curate.report import html as report_html

        rd, cfg = self.rd, self.cfg
        manifest = rd.load_manifest()
        ran = self._ran()
        per_shard = [s for s in self.before if s in PER_SHARD and ran[s]]
        deciding = [s for s in per_shard if s in DECIDING]
        match_ran = "match" in per_shard
        after_match = ([s for s in deciding if self.before.index(s) > self.before.index("match")]
                       if match_ran else [])
        notes: list[str] = []

        coverage_note = None
        try:
            all_classes = imagenet_classnames()
            class_idx, class_names = distinct_classes(all_classes)
        except Exception as err:  # noqa: BLE001 - the rest of the report is still useful
            log.warning("report: ImageNet class names unavailable (%s)", err)
            all_classes, class_idx, class_names = [], [], []
            coverage_note = f"ImageNet class names unavailable ({err}); open_clip is needed."

        plan = ShardPlan(rd.url, tuple(per_shard), tuple(deciding), tuple(after_match),
                         tuple(class_names))
        totals = _Totals(len(class_names))
        self._count(plan, shards, totals)

        all_shards = rd.pool_shards()
        left_out = len(all_shards) - len(totals.shards)
        if left_out:
            why = []
            if totals.missing:
                stages = sorted({s for m in totals.missing.values() for s in m})
                why.append(f"{len(totals.missing)} lack output of {', '.join(stages)}")
            if totals.failed:
                why.append(f"{len(totals.failed)} could not be read")
            blocked = len(all_shards) - len(shards)
            if blocked:
                why.append(f"{blocked} failed in an earlier stage")
            notes.append(f"{left_out:,} of {len(all_shards):,} pool shards are left out of the "
                         f"counts below ({'; '.join(why)}).")
        not_run = [s for s in self.before if not ran.get(s)]
        if not_run:
            notes.append(f"Configured but not run (no output): {', '.join(not_run)}. "
                         "'After curation' means after the stages that did run.")
        if ran.get("emit"):
            emitted = self._curated_rows()
            if emitted != totals.final:
                notes.append(f"curated/ holds {emitted:,} pairs but the last deciding stage "
                              f"kept {totals.final:,}: emit may be stale; rerun it.")
        if match_ran and per_shard.index("match") > 0:
            notes.append("Concept counts 'pool' are over the pairs that reached match "
                         f"(after {', '.join(per_shard[:per_shard.index('match')])}).")

        out_dir = rd.path("reports")
        summary = self._stage_summary(manifest, totals, ran)
        write_parquet_atomic(rd.fs, join(out_dir, OUTPUTS["stage summary"]), summary)
        outputs = {"report": OUTPUTS["report"], "stage summary": OUTPUTS["stage summary"]}

        concepts, concept_columns = None, {}
        if match_ran:
            concepts = self._concepts(totals, after_match)
            write_parquet_atomic(rd.fs, join(out_dir, OUTPUTS["concept frequency"]), concepts)
            outputs["concept frequency"] = OUTPUTS["concept frequency"]
            concept_columns = {"count_pool": "pool"}
            final = concepts["count_final"]
            for i, s in enumerate(after_match):
                col = f"count_after_{s}"
                if i == len(after_match) - 1 and concepts[col].equals(final):
                    continue  # identical to final: shown once, as final
                concept_columns[col] = f"after {s}"
            concept_columns["count_final"] = "final"

        coverage = None
        if class_names:
            coverage = self._coverage(class_idx, class_names, totals)
            write_parquet_atomic(rd.fs, join(out_dir, OUTPUTS["downstream coverage"]), coverage)
            outputs["downstream coverage"] = OUTPUTS["downstream coverage"]
            from curate.algorithms.matching import spacing

            never = [n for n in class_names if spacing(n)[1:-1] != n]
            coverage_note = (
                f"IMAGENET_CLASSNAMES lists {len(all_classes):,} "
                f"classes but {len(class_idx):,} distinct names (one row each, at the first "
                "index)." + (f" Never matchable under the v1 rule (punctuation that spacing() "
                             f"separates): {', '.join(never)}." if never else ""))

        recorded = (manifest.get("stages", {}).get("score", {}).get("global") or {})
        random_weights = "score" in self.before and (
            cfg.score.pretrained == "none" or recorded.get("random_init") is True)
        data = report_html.ReportData(
            run_url=rd.url, generated=now(), stages=list(cfg.stages), ran={**ran, "report": True},
            # the config this report ran with, in the pipeline's section order (run.json's
            # copy has sorted keys); the pipeline records the same one in run.json
            stage_summary=summary, config=cfg.model_dump(mode="json", by_alias=True),
            versions=manifest.get("versions", {}), pool=manifest.get("pool", {}),
            top_n=self.section.top_n, random_weights=random_weights, notes=notes,
            concepts=concepts, concept_columns=concept_columns, t=cfg.balance.t,
            balance_ran=bool(ran.get("balance")), scores=self._score_data(totals, manifest),
            clusters=self._clusters() if ran.get("prune") else None, coverage=coverage,
            coverage_note=coverage_note, final_pairs=totals.final,
        )
        page = report_html.render(data)
        write_bytes_atomic(rd.fs, join(out_dir, OUTPUTS["report"]), page.encode("utf-8"))
        urls = {k: join(rd.url, "reports", v) for k, v in outputs.items()}
        log.info("report: %s (%d pairs after curation, %d shards counted)", urls["report"],
                 totals.final, len(totals.shards))
        return {"outputs": urls, "pairs_final": totals.final,
                "shards_counted": len(totals.shards)}
