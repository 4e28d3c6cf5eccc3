"""The ``curate diff`` page: one self-contained HTML file (jinja2 template, PNG data URIs).

Kept beside the report's modules because it shares their conventions: every value goes
through autoescaping, plots are Agg figures embedded as ``data:`` URIs, nothing is fetched.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from curate.report.plots import _figure, _png, _style, data_uri

A_COLOUR, B_COLOUR = "#9aa0a6", "#1f6feb"


def _stages_png(rows: list[dict[str, Any]]) -> bytes | None:
    rows = [r for r in rows if isinstance(r["a"], int) and isinstance(r["b"], int)]
    if not rows:
        return None
    fig = _figure(9.6, 0.5 + 0.45 * len(rows))
    ax = fig.add_subplot()
    y = np.arange(len(rows))[::-1]
    ax.barh(y + 0.2, [r["a"] for r in rows], 0.4, color=A_COLOUR, label="A")
    ax.barh(y - 0.2, [r["b"] for r in rows], 0.4, color=B_COLOUR, label="B")
    ax.set_yticks(y, [r["stage"] for r in rows])
    ax.set_xlabel("pairs kept")
    ax.legend(loc="lower right")
    _style(ax)
    return _png(fig)


def _entries_png(entries: list[dict[str, Any]]) -> bytes | None:
    if not entries:
        return None
    fig = _figure(9.6, 0.5 + 0.32 * len(entries))
    ax = fig.add_subplot()
    y = np.arange(len(entries))[::-1]
    d = [e["delta"] for e in entries]
    ax.barh(y, d, color=[B_COLOUR if v > 0 else "#d62728" for v in d])
    ax.set_yticks(y, [str(e["entry"])[:40] for e in entries])
    ax.set_xlabel("final pairs, B minus A")
    _style(ax)
    return _png(fig)


def _clusters_png(sizes: dict[str, list[int]]) -> bytes | None:
    if not sizes or not any(sizes.values()):
        return None
    fig = _figure(9.6, 3.2)
    ax = fig.add_subplot()
    top = max(max(v, default=0) for v in sizes.values())
    bins = np.linspace(0, max(top, 1), 30)
    for key, colour in (("a", A_COLOUR), ("b", B_COLOUR)):
        ax.hist(sizes.get(key, []), bins, color=colour, alpha=0.6, label=key.upper())
    ax.set_xlabel("pairs kept per cluster")
    ax.set_ylabel("clusters")
    ax.legend()
    _style(ax)
    return _png(fig)


def render(s: dict[str, Any], changed_sample: list[tuple[str, str]]) -> str:
    from curate.report.html import _environment

    plots = {name: data_uri(png) for name, png in (
        ("stages", _stages_png(s["stages"])), ("entries", _entries_png(s.get("entries", []))),
        ("clusters", _clusters_png(s.get("cluster_sizes", {})))) if png}
    return _environment().get_template("diff.html").render(s=s, plots=plots,
                                                           sample=changed_sample)
