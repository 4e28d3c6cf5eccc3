"""The report's safety section: numbers only, never a picture.

Per nsfw and toxicity stage: what its model step recorded (model, weights digest, licence,
warnings), the score histogram of every scored pair and of the final ones, how many were
above 0.5 and the violence flag's rate; per download stage: how many pairs each denylist
kind (hash lists included) dropped; and which safety drops the contact sheets withhold.
The data comes from :mod:`curate.stages._report_safety` through ``ReportData.safety``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from curate.report import plots
from curate.report.data import ReportData

#: run.json info keys shown per safety stage, when the stage recorded them
INFO_KEYS = ("model", "file", "sha256", "version", "commit", "licence", "license")


def _fmt(v: int) -> str:
    return f"{int(v):,}"


def _pct(n: float, d: float) -> str:
    return f"{100 * n / d:.2f}%" if d else "–"


def _stage(h: dict[str, Any], blur_above: float) -> dict[str, Any]:
    edges, all_, fin = h["edges"], np.asarray(h["all"]), np.asarray(h["final"])
    above = edges[:-1] >= blur_above  # bins wholly above the line (0.5 is a bin edge)
    n, n_fin = int(all_.sum()), int(fin.sum())
    col = h["column"]
    label = (f"max_{col} = {h['threshold']:g}" if h["threshold"] is not None else "")
    png = plots.score_hist_png(edges, all_, fin, h["threshold"], label, kept_label="final",
                               xlabel=f"{col} ({h['kind']} stage {h['name']})")
    info = h.get("info") or {}
    facts = []
    for k in INFO_KEYS:
        v = info.get(k)
        if isinstance(v, str | int | float):
            facts.append([k, str(v)])
        elif isinstance(v, dict):  # e.g. a sha256 per file
            facts += [[f"{k} {f}", str(x)] for f, x in v.items() if isinstance(x, str)]
    rows = [[f"{col} > {blur_above:g}", _fmt(all_[above].sum()), _pct(all_[above].sum(), n),
             _fmt(fin[above].sum()), _pct(fin[above].sum(), n_fin)]]
    v = h.get("violent")
    if v is not None and v[2]:
        rows.append(["violent (clip-retrieval's prompts)", _fmt(v[0]), _pct(v[0], v[2]),
                     _fmt(v[1]), _pct(v[1], v[3])])
    quality = [f"{name}: " + ", ".join(f"{k} {v}" for k, v in q.items())
               for name, q in (info.get("quality") or {}).items() if isinstance(q, dict)]
    return {"name": h["name"], "kind": h["kind"], "column": col, "n": _fmt(n),
            "n_final": _fmt(n_fin), "rows": rows, "facts": facts, "quality": quality,
            "warning": info.get("warning"),
            "dropped": [[c, _fmt(k)] for c, k in sorted(h["dropped"].items())],
            "plot": {"src": plots.data_uri(png),
                     "alt": f"{h['name']}: {col} of every scored pair and of the final ones"}}


def safety(d: ReportData) -> dict:
    s = d.safety or {}
    stages = s.get("stages") or []
    lists = s.get("lists") or {}
    withheld = s.get("withheld") or []
    if not stages and not lists and not withheld:
        return {"notrun": "No safety stage ran (nsfw, toxicity, a download denylist): "
                          "see pipelines/laion_safety.yaml."}
    blur_above = s.get("blur_above", 0.5)
    return {"notrun": None, "stages": [_stage(h, blur_above) for h in stages],
            "lists": [[stage, kind, _fmt(n)] for stage, counts in lists.items()
                      for kind, n in counts.items()],
            "withheld": [[w["stage"], w["reason"], _fmt(w["dropped"])] for w in withheld],
            "blurs": s.get("blurs", False), "show_sensitive": s.get("show_sensitive", False),
            "blur_above": blur_above}


BUILDERS = {"safety": safety}
