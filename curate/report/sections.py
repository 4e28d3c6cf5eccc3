"""The report page's sections: each turns :class:`ReportData` into its template's context.

The numbers a section shows are formatted here (thousands separators, shares, table rows as
plain lists and dicts, plots from :mod:`curate.report.plots` as ``data:`` URIs); the markup is
in ``templates/``, one template per section, and :mod:`curate.report.html` assembles the page.
A section whose stage did not run returns ``{"notrun": "<one line>"}`` instead.

Stages are named as the pipeline names them: stage names are instance names (``score_b32``,
``lang_en``), a pipeline may hold several stages of one kind, and drop reasons are whatever
``stage_summary`` holds. Neither list is spelled out here or in the templates.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import yaml

from curate.report import plots
from curate.report.data import SECTIONS, ReportData
from curate.report.sections_extra import BUILDERS as EXTRA_BUILDERS
from curate.report.sections_safety import BUILDERS as SAFETY_BUILDERS

# --------------------------------------------------------------------------- text helpers


def fmt_int(v: Any) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "–"
    return f"{int(v):,}"


def fmt_pct(num: float, den: float, digits: int = 1) -> str:
    if not den:
        return "–"
    return f"{100.0 * num / den:.{digits}f}%"


def _table(headers: list[str], rows: list[list[Any]], numeric: list[bool] | None = None) -> dict:
    """A table as the ``table`` macro takes it; numeric columns are right-aligned."""
    numeric = numeric if numeric is not None else [False] * len(headers)
    return {"cols": [{"label": h, "num": n} for h, n in zip(headers, numeric)], "rows": rows}


def _plot(png: bytes, alt: str) -> dict:
    return {"src": plots.data_uri(png), "alt": alt}


# --------------------------------------------------------------------------- stage names


def _named(d: ReportData, kind: str) -> list[str]:
    """The pipeline's stages of one kind, by instance name, in pipeline order."""
    return [s for s in d.stages if d.kinds.get(s, s) == kind]


def _label(d: ReportData, kind: str) -> str:
    """A kind's stages as a subject: their names, or the kind when the pipeline has none."""
    return ", ".join(_named(d, kind)) or kind


def _the(d: ReportData, kind: str) -> str:
    """'the score stage' when the stage is called by its kind, else its instance names."""
    names = _named(d, kind)
    return f"the {kind} stage" if names in ([], [kind]) else ", ".join(names)


def _key(d: ReportData, kind: str, option: str) -> str:
    """The config key of an option of a kind's stage (``score_b32.pretrained``)."""
    names = _named(d, kind)
    return f"{names[0] if len(names) == 1 else kind}.{option}"


def _absent(d: ReportData, kind: str, what: str) -> str:
    """The one line a section shows when the stage it describes has no output."""
    why = "in the pipeline, but no output yet" if _named(d, kind) else "not in this pipeline"
    return f"{_label(d, kind)} not run ({why}): {what}"


# --------------------------------------------------------------------------- the sections
# each returns the section's template context; "notrun" set means the section is that line


def _overview(d: ReportData) -> dict:
    pool_rows = int(d.pool.get("rows", 0) or 0)
    kpis = [("pool pairs", fmt_int(pool_rows)), (d.final_label, fmt_int(d.final_pairs)),
            ("kept of pool", fmt_pct(d.final_pairs, pool_rows))]
    if d.concepts is not None:
        kpis.append(("entries matched", fmt_int(d.concepts.num_rows)))
    the_score = _the(d, "score")
    return {"notrun": None, "random_weights": d.random_weights,
            "score_stage": "The" + the_score[3:] if the_score.startswith("the ") else the_score,
            "pretrained_key": _key(d, "score", "pretrained"),
            "kpis": [{"label": k, "value": v} for k, v in kpis],
            "pipeline": [{"name": s, "ran": bool(d.ran.get(s))} for s in d.stages],
            "notes": list(d.notes),
            "nav": [{"id": sid, "title": title} for sid, title in SECTIONS[1:]]}


def _funnel(d: ReportData) -> dict:
    rows = d.stage_summary.to_pylist()
    # a stage's reason rows share its step (its name when the table has no step column)
    key = ("stage", "step") if "step" in d.stage_summary.column_names else ("stage",)
    totals = [r for r in rows if r["reason"] is None]
    if not totals:
        return {"notrun": "No stage has run yet."}
    stages = []
    for tr in totals:
        pairs_in = tr["pairs_in"] or 0
        reasons = sorted((r for r in rows if r["reason"] is not None
                          and all(r[k] == tr[k] for k in key)), key=lambda r: -(r["count"] or 0))
        stages.append({
            "name": tr["stage"], "status": tr["status"] or "", "pairs_in": fmt_int(tr["pairs_in"]),
            "kept": fmt_int(tr["kept"]), "dropped": fmt_int(tr["dropped"]),
            "share": fmt_pct(tr["kept"] or 0, pairs_in),
            "seconds": "–" if tr["seconds"] is None else f"{tr['seconds']:,.1f}",
            "reasons": [{"reason": r["reason"], "count": fmt_int(r["count"]),
                         "share": fmt_pct(r["count"] or 0, pairs_in)} for r in reasons]})
    png = plots.funnel_png([r["stage"] for r in totals], [r["pairs_in"] or 0 for r in totals],
                           [r["kept"] or 0 for r in totals])
    missing = [s for s in d.stages if d.kinds.get(s, s) != "report" and not d.ran.get(s)]
    return {"notrun": None, "plot": _plot(png, "pairs in and kept per stage"),
            "stages": stages, "missing": missing}


def _display_counts(d: ReportData) -> dict[str, np.ndarray]:
    assert d.concepts is not None
    return {label: d.concepts[c].to_numpy() for c, label in d.concept_columns.items()}


def _no_concepts(d: ReportData, what: str) -> dict | None:
    """The not-run context of a concept section, or None when there are concepts to show."""
    if d.concepts is None:
        return {"notrun": _absent(d, "match", what)}
    if d.concepts.num_rows == 0:
        return {"notrun": f"{_label(d, 'match')} ran, but no caption matched any metadata "
                          "entry."}
    return None


def _rank_frequency(d: ReportData) -> dict:
    if (absent := _no_concepts(d, "no concept frequencies.")) is not None:
        return absent
    curves = _display_counts(d)
    colours = {}
    for i, label in enumerate(curves):
        colours[label] = plots.POOL_COLOUR if i == 0 else (
            plots.FINAL_COLOUR if i == len(curves) - 1
            else plots.STAGE_COLOURS[(i - 1) % len(plots.STAGE_COLOURS)])
    png = plots.rank_frequency_png(curves, d.t if d.balance_ran else None, colours)
    return {"notrun": None, "plot": _plot(png, "rank-frequency of metadata entries")}


def _head_tail(d: ReportData) -> dict:
    if d.concepts is None:
        return {"notrun": _absent(d, "match", "no head/tail split.")}
    head = d.concepts["head"].to_numpy(zero_copy_only=False)
    rows, labels, hs, ts = [], [], [], []
    for label, c in _display_counts(d).items():
        total = int(c.sum())
        h = int(c[head].sum())
        labels.append(label)
        hs.append(h)
        ts.append(total - h)
        rows.append([label, fmt_int(total), fmt_int(int((c[head] > 0).sum())), fmt_int(h),
                     fmt_pct(h, total), fmt_int(total - h), fmt_pct(total - h, total)])
    png = plots.head_tail_png(labels, hs, ts) if sum(hs) + sum(ts) else None
    return {"notrun": None, "t": fmt_int(d.t), "head_entries": fmt_int(int(head.sum())),
            "matched": fmt_int(d.concepts.num_rows),
            "balance": None if d.balance_ran else _label(d, "balance"),
            "plot": _plot(png, "head and tail share of matches") if png else None,
            "table": _table(["pairs", "matches", "head entries present", "head matches",
                             "head share", "tail matches", "tail share"], rows,
                            [False] + [True] * 6)}


def _entry_counts(d: ReportData) -> dict:
    if d.concepts is None:
        return {"notrun": _absent(d, "match", "no entry counts.")}
    counts = _display_counts(d)
    rows = [[f"≥ {k:,} pairs", *[fmt_int(int((c >= k).sum())) for c in counts.values()]]
            for k in (1, 10, 100, 1000)]
    if d.t is not None:
        rows.append([f"> t ({d.t:,}) pairs",
                     *[fmt_int(int((c > d.t).sum())) for c in counts.values()]])
    return {"notrun": None,
            "table": _table(["", *counts], rows, [False] + [True] * len(counts))}


def _entry_rows(d: ReportData, idx: np.ndarray) -> list[dict]:
    assert d.concepts is not None
    return [{"rank": fmt_int(r["rank"]), "entry": r["entry"], "head": bool(r["head"]),
             "counts": [fmt_int(r[c]) for c in d.concept_columns]}
            for r in d.concepts.take(pa.array(idx, pa.int64())).to_pylist()]


def _top_entries(d: ReportData) -> dict:
    if d.concepts is None:
        return {"notrun": _absent(d, "match", "no entry counts.")}
    if d.concepts.num_rows == 0:
        return {"notrun": "No entry matched."}
    n = d.top_n
    pool = d.concepts["count_pool"].to_numpy()
    ids = d.concepts["entry_id"].to_numpy()
    ones = int((pool == 1).sum())
    return {"notrun": None, "n": n, "matched": fmt_int(d.concepts.num_rows),
            "ones": {"count": fmt_int(ones), "one": ones == 1} if ones else None,
            "columns": list(d.concept_columns.values()),
            "most": _entry_rows(d, np.lexsort((ids, -pool))[:n]),
            "least": _entry_rows(d, np.lexsort((ids, pool))[:n])}


def _scores(d: ReportData) -> dict:
    if d.scores is None:
        return {"notrun": _absent(d, "score", "no CLIP scores.")}
    s = d.scores
    base = {"notrun": None, "warn": d.random_weights, "empty": None}
    if not s["n"]:
        return {**base, "empty": f"{_label(d, 'score')} ran, but no pair has a score."}
    edges, allc = np.asarray(s["edges"]), np.asarray(s["all"])
    centres = (edges[:-1] + edges[1:]) / 2
    cum = np.cumsum(allc) / max(allc.sum(), 1)

    def q(p: float) -> float:
        return float(centres[min(np.searchsorted(cum, p), len(centres) - 1)])

    kept_label = f"kept by {_the(d, 'score')}"
    png = plots.score_hist_png(edges, allc, np.asarray(s["kept"]), s.get("threshold"),
                               s.get("threshold_label", ""), kept_label)
    rows = [["pairs scored", fmt_int(s["n"])], [kept_label, fmt_int(s["n_kept"])],
            ["mean", f"{s['sum'] / s['n']:.4f}"],
            ["10th / 50th / 90th percentile", f"{q(0.1):.3f} / {q(0.5):.3f} / {q(0.9):.3f}"]]
    if s.get("threshold") is not None:
        rows.append(["threshold", f"{s['threshold']:.4f} ({s.get('threshold_label', '')})"])
    return {**base, "plot": _plot(png, "clip_score histogram"),
            "table": _table(["", "value"], rows, [False, True]),
            "bin_width": f"{edges[1] - edges[0]:.3f}"}


def _clusters(d: ReportData) -> dict:
    if d.clusters is None:
        return {"notrun": _absent(d, "prune", "no concept clusters.")}
    c = d.clusters
    if c.num_rows == 0:
        return {"notrun": f"{_label(d, 'prune')} ran, but clusters.parquet is empty."}
    size = c["size"].to_numpy(zero_copy_only=False)
    rows = [["clusters", fmt_int(c.num_rows)], ["pairs clustered", fmt_int(int(size.sum()))],
            ["median size", fmt_int(int(np.median(size)))], ["largest", fmt_int(int(size.max()))]]
    for col, label in (("size_after_dedup", "pairs after dedup"), ("quota", "sum of quotas")):
        if col in c.column_names and c[col].null_count < c.num_rows:
            rows.append([label, fmt_int(int(np.nansum(
                c[col].to_numpy(zero_copy_only=False).astype(float))))])
    dbp_off = "complexity" not in c.column_names or c["complexity"].null_count == c.num_rows
    return {"notrun": None, "warn": d.random_weights,
            "plot": _plot(plots.clusters_png(c), "cluster size, complexity and quota"),
            "table": _table(["", "value"], rows, [False, True]),
            "dbp_key": _key(d, "prune", "dbp") if dbp_off else None}


def _imagenet(d: ReportData) -> dict:
    if d.coverage is None:
        return {"notrun": d.coverage_note or "ImageNet class names are not available."}
    cov = d.coverage
    cp = cov["count_pool"].to_numpy()
    cf = cov["count_final"].to_numpy()
    idx = cov["class_index"].to_numpy()
    names = cov["classname"].to_pylist()
    rows = [[f"≥ {k:,} pairs", fmt_int(int((cp >= k).sum())), fmt_int(int((cf >= k).sum()))]
            for k in (1, 10, 100)]
    rows.insert(0, ["no pair", fmt_int(int((cp == 0).sum())), fmt_int(int((cf == 0).sum()))])

    def listing(sel: np.ndarray, order: tuple, empty: str) -> dict:
        if not sel.size:
            return {"table": None, "empty": empty}
        sub = cov.take(pa.array(sel[np.lexsort(order)][:d.top_n], pa.int64())).to_pylist()
        return {"table": _table(["rank", "class", "pool", d.final_label],
                                [[fmt_int(r["rank_final"]), r["classname"],
                                  fmt_int(r["count_pool"]), fmt_int(r["count_final"])]
                                 for r in sub], [True, False, True, True]), "empty": None}

    def name_list(sel: np.ndarray, with_counts: bool, limit: int = 80) -> dict | None:
        if not sel.size:
            return None
        sel = sel[np.lexsort((idx[sel], -cp[sel]))]
        items = [f"{names[i]} ({int(cp[i]):,})" if with_counts else names[i]
                 for i in sel[:limit]]
        more = f", … ({sel.size - limit:,} more)" if sel.size > limit else ""
        return {"count": fmt_int(sel.size), "names": ", ".join(items) + more}

    covered, present = np.flatnonzero(cp > 0), np.flatnonzero(cf > 0)
    return {
        "notrun": None, "final_label": d.final_label, "note": d.coverage_note or "",
        "plot": _plot(plots.coverage_png(cp, cf), "ImageNet class coverage"),
        "summary": _table(["classes with", "pool", d.final_label], rows, [False, True, True]),
        "most": listing(covered, (idx[covered], -cp[covered], -cf[covered]),
                        "No class has a pair in the pool."),
        "least": listing(present, (idx[present], -cp[present], cf[present]),
                         "No class has a pair after curation."),
        "lost": name_list(np.flatnonzero((cp > 0) & (cf == 0)), True),
        "never": name_list(np.flatnonzero(cp == 0), False)}


class _ConfigDumper(yaml.SafeDumper):
    """Block-style mappings, one-line lists: the YAML a person would write by hand."""


_ConfigDumper.add_representer(
    list, lambda dumper, data: dumper.represent_sequence("tag:yaml.org,2002:seq", data,
                                                         flow_style=True))


def _config(d: ReportData) -> dict:
    text = yaml.dump(d.config, Dumper=_ConfigDumper, sort_keys=False, allow_unicode=True,
                     default_flow_style=False, width=96) if d.config else "(no config recorded)"
    return {"notrun": None, "yaml": text,
            "versions": ", ".join(f"{k} {v}" for k, v in sorted(d.versions.items()))}


#: section id -> the function that builds its template context (every id in SECTIONS)
BUILDERS = {
    "overview": _overview, "funnel": _funnel, "rank-frequency": _rank_frequency,
    "head-tail": _head_tail, "entry-counts": _entry_counts, "top-entries": _top_entries,
    "scores": _scores, "clusters": _clusters, "imagenet": _imagenet, "config": _config,
    **EXTRA_BUILDERS, **SAFETY_BUILDERS,
}
