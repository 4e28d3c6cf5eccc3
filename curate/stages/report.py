"""report: what the curation did, as three Parquet tables and one self-contained HTML page.

Outputs (``reports/``):

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
  pool shard and of the final pairs (read off match's output for the class names that are
  vocabulary entries when match saw every pair: same rule, no second pass). 998 distinct
  names among open_clip 3.3's 1000 ("missile", "sunglasses" twice): one row per name.
- ``report.html``: plots and tables of all of it (:mod:`curate.report.html`).
- ``README.md``: a Hugging Face dataset card answering the datasheet questions from run.json
  and these tables (:mod:`curate.stages._report_card`); ``curate publish`` copies it.

"Final" is the set of pairs kept by the last deciding stage that ran (what emit writes);
it is computed per pool shard, because ``curated/`` is resharded by emit and reading its
uids back would need the whole set in memory. When ``curated/`` exists its row count is
checked against it. Counting is the ``count`` global step: one engine call over the pool
shards (:mod:`curate.stages._report_counts`), summed on the driver, then the commit writes
the tables and the page. Stages are reported by instance, whatever their kind: a pipeline
with two score stages gets two rows and its drops under each one's reason codes.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.core.io import join, list_shards, write_bytes_atomic, write_parquet_atomic
from curate.core.rundir import now, step_info
from curate.stages._report_card import write_card
from curate.stages._report_config import ReportConfig
from curate.stages._report_counts import (
    MATCH_CAPTIONS,
    OUTPUTS,
    SCORE_EDGES,
    ShardPlan,
    Totals,
    coverage_entries,
    coverage_table,
    curated_rows,
    distinct_classes,
    full_coverage,
    imagenet_classes,
    imagenet_classnames,
    shard_stats,
)
from curate.stages._report_extras import extras_plan, page_extras, read_clusters
from curate.stages._report_safety import SafetyView, safety_plan
from curate.stages._report_thresholds import threshold_notes
from curate.stages.base import GlobalStep, Stage
from curate.vocab import load_vocabulary

log = logging.getLogger(__name__)


class ReportStage(Stage):
    """Global stage: reads every earlier stage's outputs, writes ``reports/``."""

    kind = "report"
    folder = "reports"
    per_shard = False
    always_rerun = True  # it describes the run as it is now (statuses, timings)
    Config = ReportConfig
    views = {"concept_frequency.parquet": "concepts"}
    help = "Reports: concept frequencies, stage summary by reason code, one HTML page."

    def steps(self) -> list:
        return [GlobalStep.on_driver("plan", self._plan),
                GlobalStep("count", plan=lambda: list(self.shards), map=self._count_shard,
                           start=self._totals, fold=_add, commit=self._write)]

    # ------------------------------------------------------------------ what ran
    def _ran(self) -> dict[str, bool]:
        return {r.name: bool(list_shards(self.rd.fs, self.rd.stage_dir(r.folder)))
                for r in self.before}

    def _first(self, kind: str, ran: dict[str, bool] | None = None) -> Any:
        """The first instance of ``kind`` before the report (that ran, when ``ran``)."""
        for r in self.before:
            if r.kind == kind and (ran is None or ran.get(r.name)):
                return r
        return None

    def _per_shard(self, ref: Any) -> bool:
        return self.pipeline.stage_class(ref.name).per_shard

    def _plan(self, _: Any) -> dict[str, Any]:
        ran = self._ran()
        per_shard = [r for r in self.before if self._per_shard(r) and ran[r.name]]
        deciding = [r.name for r in per_shard if r.decides]
        match = self._first("match", ran)
        score = self._first("score", ran)
        names = [r.name for r in self.before]
        after_match = ([d for d in deciding if names.index(d) > names.index(match.name)]
                       if match else [])
        note = None
        try:
            all_classes = imagenet_classnames()
            _, classes = distinct_classes(all_classes)
        except Exception as err:  # noqa: BLE001 - the rest of the report is still useful
            log.warning("report: ImageNet class names unavailable (%s)", err)
            all_classes, classes = [], []
            note = f"ImageNet class names unavailable ({err}); open_clip is needed."
        class_entries = None
        if classes and match and not [d for d in deciding if d in names[:names.index(
                match.name)]]:  # match saw every pool pair: its counts give most classes
            m = self.pipeline.section(match.name)  # per-language lists: match on captions
            if isinstance(m.metadata, str):
                class_entries = coverage_entries(classes, load_vocabulary(m.metadata), m.boundary)
        return {"ran": ran, "stages": [r.name for r in per_shard],
                "folders": [r.folder for r in per_shard], "deciding": deciding,
                "after_match": after_match, "match": match.name if match else None,
                "score": score.name if score else None, "coverage": bool(classes),
                "all_classes": len(all_classes), "coverage_note": note,
                "class_entries": class_entries, **extras_plan(self.rd, self.before, ran),
                "safety": safety_plan(self.before, ran), "safety_view": SafetyView.of(
                    self.pipeline, self.before, self.section.show_sensitive).to_plan()}

    def _classes(self) -> tuple[list[int], list[str]]:
        """(first index, name) of ImageNet's distinct class names; not kept in run.json."""
        if not self.state["plan"]["coverage"]:
            return [], []
        return imagenet_classes()

    def _matched_classes(self) -> list[str]:
        """The class names counted on captions by the workers (coverage_entries)."""
        codes = self.state["plan"].get("class_entries")
        names = self._classes()[1]
        return names if codes is None else [n for n, c in zip(names, codes)
                                            if c == MATCH_CAPTIONS]

    def _shard_plan(self) -> ShardPlan:
        p = self.state["plan"]
        return ShardPlan(self.rd.url, tuple(p["stages"]), tuple(p["folders"]),
                         tuple(p["deciding"]), tuple(p["after_match"]),
                         tuple(self._matched_classes()), p["match"], p["score"],
                         tuple(f for _, f in p["aesthetic"]), p["language"],
                         tuple(tuple(c) for c in p.get("sheet_clusters", [])), p.get("prune"),
                         p.get("download"),
                         tuple(SafetyView.from_plan(p).hidden_sheets()),
                         tuple(tuple(x) for x in p.get("safety", [])))

    def _count_shard(self, shard: str) -> dict[str, Any]:
        try:
            return shard_stats(self._shard_plan(), shard)
        except Exception as err:  # noqa: BLE001 - one unreadable shard leaves the rest
            log.exception("report: shard %s could not be read", shard)
            return {"shard": shard, "error": f"{type(err).__name__}: {err}"}

    def _totals(self) -> Totals:
        return Totals(len(self._matched_classes()))

    def _entries(self, n: int) -> list[str]:
        """Entry strings by id: balance's entry_counts.parquet, else the vocabulary."""
        bal = self._first("balance")
        path = self.rd.path(bal.folder if bal else "balance", "entry_counts.parquet")
        names: list[str] = []
        try:
            if self.rd.fs.exists(path):
                with self.rd.fs.open(path, "rb") as f:
                    t = pq.read_table(f, columns=["entry_id", "entry"])
                names = [""] * (int(pc.max(t["entry_id"]).as_py() or 0) + 1 if t.num_rows else 0)
                for i, e in zip(t["entry_id"].to_pylist(), t["entry"].to_pylist()):
                    names[i] = e
            else:
                names = load_vocabulary(self.pipeline.section(self._first("match").name)
                                        .metadata)
        except Exception as err:  # noqa: BLE001 - names are cosmetic; ids still identify
            log.warning("report: cannot read the metadata entries (%s); showing ids", err)
        if len(names) < n:
            names = names + [f"#{i}" for i in range(len(names), n)]
        return names

    # ------------------------------------------------------------------ tables
    def _stage_summary(self, manifest: dict[str, Any], totals: Totals,
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
        for r in self.before:
            s = r.name
            if not ran.get(s):
                continue
            st = mstages.get(s, {})
            if s in totals.stages:
                c = totals.stages[s]
                add(s, st.get("status"), st.get("seconds"), c["rows_in"], c["kept"],
                    c["dropped"])
            elif r.kind == "emit":
                emitted = curated_rows(self.rd, r.folder)
                gap = totals.final - emitted
                add(s, st.get("status"), st.get("seconds"), totals.final, emitted,
                    {"not_emitted": gap} if gap > 0 else {})
        schema = pa.schema([("stage", pa.string()), ("step", pa.int32()), ("status", pa.string()),
                            ("seconds", pa.float64()), ("pairs_in", pa.int64()),
                            ("kept", pa.int64()), ("dropped", pa.int64()),
                            ("reason", pa.string()), ("count", pa.int64())])
        return pa.Table.from_pylist(rows, schema=schema)

    def _concepts(self, totals: Totals, after_match: list[str]) -> pa.Table:
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
        bal = self._first("balance")
        t = self.pipeline.section(bal.name).t if bal else self.pipeline.balance.t
        data: dict[str, Any] = {"entry_id": pa.array(ids, pa.int32()),
                                "entry": pa.array([names[i] for i in ids], pa.string())}
        for c in cols:
            data[c] = pa.array(arrays[c][ids], pa.int64())
        data["rank"] = pa.array(rank, pa.int64())
        data["head"] = pa.array(pool > t, pa.bool_())
        return pa.table(data)

    def _score_data(self, totals: Totals, manifest: dict[str, Any]) -> dict[str, Any] | None:
        s = totals.score
        name = self.state["plan"]["score"]
        if s is None or name is None:
            return None
        f = self.pipeline.section(name).filter
        threshold, label = None, ""
        if f.min_score is not None:
            threshold, label = f.min_score, f"{name}.filter.min_score = {f.min_score:g}"
        elif f.top_fraction is not None:
            # the cut the score stage recorded (its lowest kept score)
            recorded = step_info(manifest.get("stages", {}).get(name), "apply").get(
                "threshold")
            if isinstance(recorded, int | float) and np.isfinite(recorded):
                threshold = float(recorded)
            elif s["min_kept"] is not None:
                threshold = s["min_kept"]
            if threshold is not None:
                label = f"top {100 * f.top_fraction:g}% cutoff ({threshold:.3f})"
        return {**s, "edges": SCORE_EDGES, "threshold": threshold, "threshold_label": label}

    def _notes(self, totals: Totals, plan: dict[str, Any]) -> list[str]:
        notes: list[str] = []
        ran = plan["ran"]
        all_shards = self.rd.pool_shards()
        left_out = len(all_shards) - len(totals.shards)
        if left_out:
            why = []
            if totals.missing:
                stages = sorted({s for m in totals.missing.values() for s in m})
                why.append(f"{len(totals.missing)} lack output of {', '.join(stages)}")
            if totals.failed:
                why.append(f"{len(totals.failed)} could not be read")
            blocked = len(all_shards) - len(self.shards)
            if blocked:
                why.append(f"{blocked} failed in an earlier stage")
            notes.append(f"{left_out:,} of {len(all_shards):,} pool shards are left out of the "
                         f"counts below ({'; '.join(why)}).")
        not_run = [r.name for r in self.before if not ran.get(r.name)]
        if not_run:
            notes.append(f"Configured but not run (no output): {', '.join(not_run)}. "
                         "'After curation' means after the stages that did run.")
        emit = self._first("emit", ran)
        if emit is not None:
            emitted = curated_rows(self.rd, emit.folder)
            if emitted != totals.final:
                notes.append(f"{emit.folder}/ holds {emitted:,} pairs but the last deciding "
                              f"stage kept {totals.final:,}: {emit.name} may be stale; rerun "
                              "it.")
        per_shard, match = plan["stages"], plan["match"]
        if match and per_shard.index(match) > 0:
            notes.append("Concept counts 'pool' are over the pairs that reached match "
                         f"(after {', '.join(per_shard[:per_shard.index(match)])}).")
        return notes

    # ------------------------------------------------------------------ the commit
    def _write(self, totals: Totals) -> dict[str, Any]:
        from curate.report import html as report_html

        rd, cfg, plan = self.rd, self.pipeline, self.state["plan"]
        manifest = rd.load_manifest()
        ran = plan["ran"]
        notes = self._notes(totals, plan) + threshold_notes(cfg, self.before, manifest)
        out_dir = rd.path(self.pipeline.ref(self.name).folder)
        summary = self._stage_summary(manifest, totals, ran)
        write_parquet_atomic(rd.fs, join(out_dir, OUTPUTS["stage summary"]), summary)
        outputs = {"report": OUTPUTS["report"], "stage summary": OUTPUTS["stage summary"]}

        concepts, concept_columns = None, {}
        after_match = plan["after_match"]
        if plan["match"]:
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

        coverage, coverage_note = None, plan["coverage_note"]
        class_index, class_names = self._classes()
        if class_names:
            coverage = coverage_table(class_index, class_names, *full_coverage(
                plan.get("class_entries"), totals))
            write_parquet_atomic(rd.fs, join(out_dir, OUTPUTS["downstream coverage"]), coverage)
            outputs["downstream coverage"] = OUTPUTS["downstream coverage"]
            from curate.algorithms.matching import spacing

            never = [n for n in class_names if spacing(n)[1:-1] != n]
            coverage_note = (
                f"IMAGENET_CLASSNAMES lists {plan['all_classes']:,} "
                f"classes but {len(class_names):,} distinct names (one row each, at the first "
                "index)." + (f" Never matchable under the v1 rule (punctuation that spacing() "
                             f"separates): {', '.join(never)}." if never else ""))

        score = plan["score"]
        recorded = step_info(manifest.get("stages", {}).get(score or ""), "model")
        random_weights = score is not None and (
            cfg.section(score).pretrained == "none" or recorded.get("random_init") is True)
        bal = self._first("balance")
        data = report_html.ReportData(
            run_url=rd.url, generated=now(), stages=list(cfg.stages),
            ran={**ran, self.name: True}, stage_summary=summary, config=cfg.dump(),
            versions=manifest.get("versions", {}), pool=manifest.get("pool", {}),
            top_n=self.section.top_n, random_weights=random_weights, notes=notes,
            concepts=concepts, concept_columns=concept_columns,
            t=cfg.section(bal.name).t if bal else cfg.balance.t,
            balance_ran=bool(bal and ran.get(bal.name)),
            scores=self._score_data(totals, manifest), clusters=read_clusters(
                self.rd, self._first("prune", ran)),
            coverage=coverage, coverage_note=coverage_note, final_pairs=totals.final,
            **page_extras(rd, totals, plan, manifest, self.before, cfg,
                          self.pipeline.ref(self.name).folder),
            kinds={**{r.name: r.kind for r in self.before}, self.name: self.kind},
        )
        page = report_html.render(data)
        write_bytes_atomic(rd.fs, join(out_dir, OUTPUTS["report"]), page.encode("utf-8"))
        urls = {k: join(rd.url, self.pipeline.ref(self.name).folder, v)
                for k, v in outputs.items()}
        log.info("report: %s (%d pairs after curation, %d shards counted)", urls["report"],
                 totals.final, len(totals.shards))
        return {"outputs": urls, "pairs_final": totals.final,
                "shards_counted": len(totals.shards), **write_card(self, manifest, totals)}


def _add(totals: Totals, shard: str, r: dict[str, Any]) -> Totals:
    if "error" in r:
        totals.failed[shard] = r["error"]
    else:
        totals.add(shard, r)
    return totals
