"""The report's sections for contact sheets, aesthetic scores, language mix and audit rates.

Split from :mod:`curate.report.sections` (one module per group of sections); the data comes
from :mod:`curate.stages._report_extras` through :class:`curate.report.data.ReportData`.
"""

from __future__ import annotations

from curate.report import plots
from curate.report.data import ReportData


def _fmt(v: int) -> str:
    return f"{v:,}"


def contact_sheets(d: ReportData) -> dict:
    if not d.sheets and not d.contamination and not d.cluster_sheets and not d.hosts:
        return {"notrun": "No stage dropped a pair, or no deciding stage ran."}
    shown = sum(len(s["items"]) for s in d.sheets)
    thumbs = sum(1 for s in d.sheets for it in s["items"] if it["thumb"])
    contamination = [[name, eval_set, _fmt(n)] for name, hits in d.contamination.items()
                     for eval_set, n in sorted(hits.items())]
    return {"notrun": None, "sheets": d.sheets, "shown": shown, "thumbs": thumbs,
            "per_sheet": max([len(s["items"]) for s in d.sheets] + [0]),
            "dropped": sum(s["dropped"] for s in d.sheets), "contamination": contamination,
            "clusters": d.cluster_sheets,
            "hosts": [[h["host"], _fmt(h["pairs"]), _fmt(h["failed"]),
                       f"{100 * h['failure_rate']:.1f}%",
                       ", ".join(f"{b['reason']} {b['count']:,}" for b in h["by_reason"][:3])]
                      for h in d.hosts]}


def aesthetic(d: ReportData) -> dict:
    if not d.aesthetic:
        return {"notrun": "No aesthetic stage ran."}
    out = []
    for name, h in d.aesthetic.items():
        edges, all_, fin = h["edges"], h["all"], h["final"]
        centres = (edges[:-1] + edges[1:]) / 2
        mean = float((centres * all_).sum() / max(all_.sum(), 1))
        png = plots.score_hist_png(edges, all_, fin, None, "", kept_label="final",
                                   xlabel="aesthetic score (LAION predictor)")
        out.append({"name": name, "plot": {"src": plots.data_uri(png),
                                           "alt": f"{name}: aesthetic scores, all and final"},
                    "n": _fmt(int(all_.sum())), "n_final": _fmt(int(fin.sum())),
                    "mean": f"{mean:.2f}", "warning": h.get("warning")})
    return {"notrun": None, "stages": out}


def languages(d: ReportData) -> dict:
    pool, final = d.languages.get("pool", {}), d.languages.get("final", {})
    head_tail = [[r["lang"] or "(other)", "-" if r["t"] is None else _fmt(r["t"]),
                  f"{r['tail_fraction'] or 0:.3f}", _fmt(r["matched"]), _fmt(r["head"]),
                  _fmt(r["matched"] - r["head"])] for r in d.languages.get("head_tail", [])]
    to = d.languages.get("to_other") or {}
    fell = sorted((to.get("languages") or {}).items(), key=lambda kv: (-kv[1], kv[0]))
    to_other = None
    if fell:
        where = ("matched against the `other` list" if to.get("other_list")
                 else "matched nothing (no `other` list)")
        shown = ", ".join(f"{k} {_fmt(v)}" for k, v in fell[:40])
        more = f", and {len(fell) - 40} more" if len(fell) > 40 else ""
        to_other = (f"No list of their own, so {where}: {_fmt(to.get('pairs', 0))} pairs "
                    f"in {len(fell)} languages ({shown}{more}).")
    if not pool and not head_tail and not to_other:
        return {"notrun": "No language stage ran and the pool has no lang column."}
    tot_p, tot_f = max(sum(pool.values()), 1), max(sum(final.values()), 1)
    order = sorted(pool, key=lambda k: (-pool[k], k))
    rows = [[k, _fmt(pool[k]), f"{100 * pool[k] / tot_p:.1f}%", _fmt(final.get(k, 0)),
             f"{100 * final.get(k, 0) / tot_f:.1f}%"] for k in order[:40]]
    return {"notrun": None, "rows": rows, "more": max(0, len(order) - 40),
            "head_tail": head_tail, "to_other": to_other}


def audit(d: ReportData) -> dict:
    if d.false_drops is None or not d.false_drops.num_rows:
        return {"notrun": "No audit labels yet: curate audit RUN --reason CODE, label the "
                          "page, then curate audit RUN --labels FILE."}
    rows = [[r["reason"], _fmt(r["labelled"]), _fmt(r["false_drops"]),
             f"{100 * r['rate']:.1f}%", f"{100 * r['ci_low']:.1f}-{100 * r['ci_high']:.1f}%"]
            for r in d.false_drops.to_pylist()]
    return {"notrun": None, "rows": rows}


BUILDERS = {"contact-sheets": contact_sheets, "aesthetic": aesthetic,
            "languages": languages, "false-drops": audit}
