"""Plots and HTML for the run report: pure functions from tables and arrays to PNG bytes/HTML.

No Ray, no files: :mod:`curate.stages.report` gathers the numbers and writes the outputs;
this module only draws and renders, so it is testable on hand-made inputs.

Why the page looks the way it does:

- One self-contained file (DESIGN §4): plots are PNGs embedded as ``data:`` URIs, the CSS is
  inline, there is no JavaScript, and nothing refers to the network. Text that contains
  ``://`` (a run directory on s3, a vocabulary URL in the config) is written with the colon
  as ``&#58;``: it reads the same in a browser, but the file holds no literal URL that a
  viewer could turn into a fetch or a link, and a grep for ``https://`` finds none.
- Matplotlib is driven through ``matplotlib.figure.Figure`` and the Agg canvas directly, not
  ``pyplot``: no global backend switch, no figure registry to leak, safe inside a worker.
- Every section has an ``id`` and is always present; a section whose stage did not run says
  so in one line, so a reader never wonders whether something is missing or was skipped.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import yaml

#: the sections of the page, in order: (id, title); tests check every id is present
SECTIONS = (
    ("overview", "Overview"),
    ("funnel", "Stage funnel"),
    ("rank-frequency", "Concept rank-frequency"),
    ("head-tail", "Head and tail"),
    ("entry-counts", "Entries with at least k pairs"),
    ("top-entries", "Most and least frequent entries"),
    ("scores", "CLIP scores"),
    ("clusters", "Concept clusters"),
    ("imagenet", "ImageNet-1k coverage"),
    ("config", "Configuration"),
)

POOL_COLOUR = "#9aa0a6"
FINAL_COLOUR = "#d62728"
STAGE_COLOURS = ("#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")

CSS = """
:root { --fg:#1f2328; --muted:#59636e; --line:#d1d9e0; --bg-alt:#f6f8fa; --accent:#1f6feb; }
* { box-sizing: border-box; }
body { margin:0; color:var(--fg); background:#fff;
  font:15px/1.5 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; }
main { max-width:1100px; margin:0 auto; padding:24px 28px 64px; }
h1 { font-size:26px; margin:0 0 4px; }
h2 { font-size:20px; margin:0 0 12px; padding-bottom:6px; border-bottom:1px solid var(--line); }
h3 { font-size:16px; margin:18px 0 8px; }
section { margin-top:36px; }
p { margin:6px 0 10px; }
.meta { color:var(--muted); margin:0 0 16px; }
code, pre { font-family:ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size:13px; }
code { background:var(--bg-alt); padding:1px 4px; border-radius:4px; word-break:break-all; }
pre { background:var(--bg-alt); border:1px solid var(--line); border-radius:6px; padding:12px;
  overflow-x:auto; line-height:1.4; }
table { border-collapse:collapse; margin:8px 0 14px; font-size:14px; }
th, td { padding:4px 10px; border-bottom:1px solid var(--line); text-align:left;
  vertical-align:top; }
th { background:var(--bg-alt); font-weight:600; white-space:nowrap; }
td.num, th.num { text-align:right; font-variant-numeric:tabular-nums; white-space:nowrap; }
tr.total td { font-weight:600; border-top:1px solid #8c959f; }
tr.reason td { color:var(--muted); }
tr.reason td:first-child { padding-left:26px; }
img.plot { display:block; max-width:100%; height:auto; margin:8px 0 12px;
  border:1px solid var(--line); border-radius:6px; }
.warning { background:#fff1f0; border:2px solid #cf222e; color:#82071e; border-radius:8px;
  padding:12px 16px; margin:14px 0; font-size:16px; }
.warning strong { display:block; font-size:18px; margin-bottom:4px; }
.note { background:#fff8c5; border:1px solid #d4a72c; border-radius:6px; padding:8px 12px;
  margin:10px 0; }
.notrun { color:var(--muted); font-style:italic; }
.kpis { display:flex; flex-wrap:wrap; gap:12px; margin:12px 0; }
.kpi { border:1px solid var(--line); border-radius:8px; padding:8px 14px; min-width:150px; }
.kpi .v { font-size:22px; font-weight:600; font-variant-numeric:tabular-nums; }
.kpi .l { color:var(--muted); font-size:13px; }
nav ol { columns:2; margin:8px 0; padding-left:20px; }
nav a { color:var(--accent); text-decoration:none; }
.cols { display:flex; flex-wrap:wrap; gap:28px; }
.cols > div { flex:1 1 480px; min-width:0; }
.head-flag { color:#cf222e; font-size:12px; font-weight:600; }
footer { margin-top:48px; color:var(--muted); font-size:13px; }
"""


# --------------------------------------------------------------------------- text helpers


def esc(value: Any) -> str:
    """HTML-escape ``value`` and defuse URLs (``://`` -> ``&#58;//``, same on screen)."""
    return html.escape(str(value), quote=True).replace("://", "&#58;//")


def fmt_int(v: Any) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "–"
    return f"{int(v):,}"


def fmt_pct(num: float, den: float, digits: int = 1) -> str:
    if not den:
        return "–"
    return f"{100.0 * num / den:.{digits}f}%"


def table_html(headers: Sequence[str], rows: Sequence[Sequence[Any]],
               numeric: Sequence[bool] | None = None,
               row_classes: Sequence[str] | None = None, raw: bool = False) -> str:
    """A table; numeric columns are right-aligned. Cells are escaped unless ``raw``."""
    numeric = list(numeric) if numeric is not None else [False] * len(headers)

    def cls(i: int) -> str:
        return ' class="num"' if numeric[i] else ""

    out = ["<table><thead><tr>"]
    out += [f"<th{cls(i)}>{esc(h)}</th>" for i, h in enumerate(headers)]
    out.append("</tr></thead><tbody>")
    for r, row in enumerate(rows):
        rc = row_classes[r] if row_classes else ""
        out.append(f'<tr class="{rc}">' if rc else "<tr>")
        for i, cell in enumerate(row):
            text = str(cell) if raw else esc(cell)
            out.append(f"<td{cls(i)}>{text}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def not_run(what: str) -> str:
    return f'<p class="notrun">{esc(what)}</p>'


def absent(d: ReportData, stage: str, what: str) -> str:
    """The one line a section shows when the stage it describes has no output."""
    why = ("in the pipeline, but no output yet" if stage in d.stages
           else "not in this pipeline")
    return not_run(f"{stage} not run ({why}): {what}")


def img_tag(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img class="plot" alt="{esc(alt)}" src="data:image/png;base64,{data}">'


# --------------------------------------------------------------------------- plots


def _figure(w: float = 9.6, h: float = 3.8):
    """A standalone Agg figure (no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    # no "Software" chunk: keeps matplotlib's URL out of the file, and the bytes stable
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def _style(ax) -> None:
    ax.grid(alpha=0.3, which="major")
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def funnel_png(stages: Sequence[str], pairs_in: Sequence[int], kept: Sequence[int]) -> bytes:
    """Horizontal bars per stage: pairs in (grey) with pairs kept (blue) on top."""
    n = len(stages)
    fig = _figure(9.6, 0.55 * n + 1.4)
    ax = fig.add_subplot()
    y = np.arange(n)
    ax.barh(y, pairs_in, color="#d0d7de", label="pairs in", height=0.7)
    ax.barh(y, kept, color="#1f77b4", label="kept", height=0.7)
    top = max([*pairs_in, 1])
    for i in range(n):
        share = f"{100.0 * kept[i] / pairs_in[i]:.1f}%" if pairs_in[i] else "–"
        ax.text(max(pairs_in[i], kept[i]) + top * 0.01, i, f"{kept[i]:,} of {pairs_in[i]:,} "
                f"kept ({share})", va="center", fontsize=9)
    ax.set_yticks(y, list(stages))
    ax.invert_yaxis()
    ax.set_xlim(0, top * 1.35)
    ax.set_xlabel("pairs")
    ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=2, frameon=False, fontsize=9)
    _style(ax)
    ax.grid(False, axis="y")
    return _png(fig)


def _rank_curve(counts: np.ndarray, max_points: int = 3000) -> tuple[np.ndarray, np.ndarray]:
    """(rank, count) of the non-zero counts, sorted, thinned on a log grid for plotting."""
    c = np.sort(np.asarray(counts)[np.asarray(counts) > 0])[::-1]
    if c.size == 0:
        return np.zeros(0), np.zeros(0)
    ranks = np.arange(1, c.size + 1)
    if c.size > max_points:
        idx = np.unique(np.geomspace(1, c.size, max_points).astype(np.int64) - 1)
        return ranks[idx], c[idx]
    return ranks, c


def rank_frequency_png(curves: dict[str, np.ndarray], t: float | None,
                       colours: dict[str, str] | None = None) -> bytes:
    """Log-log rank-frequency curves, one per label; a dotted line at balancing's t."""
    fig = _figure(9.6, 4.4)
    ax = fig.add_subplot()
    for i, (label, counts) in enumerate(curves.items()):
        r, c = _rank_curve(counts)
        if r.size == 0:
            continue
        colour = (colours or {}).get(label, STAGE_COLOURS[i % len(STAGE_COLOURS)])
        ax.plot(r, c, label=f"{label} ({int((np.asarray(counts) > 0).sum()):,} entries)",
                color=colour, lw=1.8, marker="o" if r.size <= 60 else None, ms=3)
    if t is not None:
        ax.axhline(t, color="#444", ls=":", lw=1.2, label=f"t = {t:,.0f}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("rank of entry (1 = most frequent)")
    ax.set_ylabel("pairs matching the entry")
    ax.legend(frameon=False, fontsize=9)
    _style(ax)
    return _png(fig)


def head_tail_png(labels: Sequence[str], head: Sequence[float], tail: Sequence[float]) -> bytes:
    """Stacked bars: share of entry matches in head vs tail entries, per column."""
    fig = _figure(9.6, 0.45 * len(labels) + 1.3)
    ax = fig.add_subplot()
    y = np.arange(len(labels))
    tot = np.maximum(np.asarray(head, float) + np.asarray(tail, float), 1e-12)
    h = 100 * np.asarray(head, float) / tot
    ax.barh(y, h, color="#cf222e", label="head entries (count > t)", height=0.6)
    ax.barh(y, 100 - h, left=h, color="#1f77b4", label="tail entries", height=0.6)
    for i in range(len(labels)):
        if h[i] >= 8:
            ax.text(h[i] / 2, i, f"{h[i]:.0f}%", ha="center", va="center", color="white",
                    fontsize=9)
        if 100 - h[i] >= 8:
            ax.text(h[i] + (100 - h[i]) / 2, i, f"{100 - h[i]:.0f}%", ha="center",
                    va="center", color="white", fontsize=9)
    ax.set_yticks(y, list(labels))
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("share of entry matches (%)")
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False,
              fontsize=9)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return _png(fig)


def score_hist_png(edges: np.ndarray, all_counts: np.ndarray, kept_counts: np.ndarray,
                   threshold: float | None, threshold_label: str) -> bytes:
    """Histogram of clip_score (all scored pairs, and those the score stage kept)."""
    fig = _figure(9.6, 3.8)
    ax = fig.add_subplot()
    nz = np.flatnonzero(all_counts)
    lo, hi = (nz[0], nz[-1] + 1) if nz.size else (0, len(all_counts))
    # at least ~40 bins on screen; regroup fine bins when the range is wide
    group = max(1, (hi - lo) // 80)
    lo = max(0, lo - group)
    hi = min(len(all_counts), hi + group)
    width = hi - lo
    hi = lo + int(np.ceil(width / group)) * group
    pad = hi - len(all_counts)
    a = np.pad(all_counts, (0, max(0, pad)))[lo:hi].reshape(-1, group).sum(1)
    k = np.pad(kept_counts, (0, max(0, pad)))[lo:hi].reshape(-1, group).sum(1)
    step = edges[1] - edges[0]
    left = edges[0] + step * (lo + group * np.arange(a.size))
    ax.bar(left, a, width=step * group, align="edge", color="#d0d7de", label="scored")
    ax.bar(left, k, width=step * group, align="edge", color="#1f77b4",
           label="kept by the score stage")
    if threshold is not None:
        ax.axvline(threshold, color=FINAL_COLOUR, lw=1.6, ls="--", label=threshold_label)
    ax.set_xlabel("clip_score (cosine of image and text embeddings)")
    ax.set_ylabel("pairs")
    ax.legend(frameon=False, fontsize=9)
    _style(ax)
    return _png(fig)


def clusters_png(clusters: pa.Table) -> bytes:
    """Cluster size vs complexity, and quota vs size (when DBP set quotas)."""
    from matplotlib.ticker import MaxNLocator

    size = clusters["size"].to_numpy(zero_copy_only=False).astype(float)
    has_c = "complexity" in clusters.column_names and clusters["complexity"].null_count < len(
        clusters)
    has_q = "quota" in clusters.column_names and clusters["quota"].null_count < len(clusters)
    panels = 1 + int(has_c) + int(has_q)
    fig = _figure(9.6 if panels > 1 else 6.4, 3.8)
    axes = [fig.add_subplot(1, panels, i + 1) for i in range(panels)]
    i = 0
    if has_c:
        ax = axes[i]
        i += 1
        comp = clusters["complexity"].to_numpy(zero_copy_only=False).astype(float)
        ax.scatter(comp, size, s=10, alpha=0.6, color="#1f77b4", edgecolors="none")
        ax.set_xlabel("complexity  d_intra × d_inter")
        ax.set_ylabel("cluster size (pairs)")
        ax.set_title("size vs complexity", fontsize=10)
        _style(ax)
    if has_q:
        ax = axes[i]
        i += 1
        quota = clusters["quota"].to_numpy(zero_copy_only=False).astype(float)
        base = size
        if "size_after_dedup" in clusters.column_names and clusters["size_after_dedup"].null_count \
                < len(clusters):
            base = clusters["size_after_dedup"].to_numpy(zero_copy_only=False).astype(float)
        ax.scatter(base, quota, s=10, alpha=0.6, color="#2ca02c", edgecolors="none")
        top = np.nanmax(np.concatenate([base, quota, [1.0]]))
        ax.plot([0, top], [0, top], color="#444", ls=":", lw=1, label="quota = size")
        ax.set_xlabel("cluster size after dedup")
        ax.set_ylabel("quota (pairs kept)")
        ax.set_title("quota vs size", fontsize=10)
        ax.legend(frameon=False, fontsize=9)
        _style(ax)
    ax = axes[i]
    pos = size[size > 0]
    bins = np.unique(np.geomspace(1, max(pos.max(initial=1), 2), 40).round()) if pos.size else 10
    ax.hist(pos, bins=bins, color="#9467bd")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xscale("log")
    ax.set_xlabel("cluster size (pairs)")
    ax.set_ylabel("clusters")
    ax.set_title("cluster sizes", fontsize=10)
    _style(ax)
    return _png(fig)


def coverage_png(count_pool: np.ndarray, count_final: np.ndarray) -> bytes:
    """ImageNet classes sorted by coverage, before and after (log y; zeros at the floor)."""
    fig = _figure(9.6, 3.6)
    ax = fig.add_subplot()
    for label, c, colour in (("pool", count_pool, POOL_COLOUR),
                             ("after curation", count_final, FINAL_COLOUR)):
        s = np.sort(np.asarray(c))[::-1]
        ax.plot(np.arange(1, s.size + 1), s, color=colour, lw=1.8,
                label=f"{label}: {int((s > 0).sum()):,} of {s.size:,} classes with a pair")
    # symlog: classes without a pair sit visibly at 0 instead of vanishing from a log axis
    ax.set_yscale("symlog", linthresh=1)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("ImageNet class, sorted by its number of pairs")
    ax.set_ylabel("pairs mentioning the class")
    ax.legend(frameon=False, fontsize=9)
    _style(ax)
    return _png(fig)


# --------------------------------------------------------------------------- the page


@dataclass
class ReportData:
    """Everything the page shows; built by the report stage, rendered by :func:`render`."""

    run_url: str
    generated: str
    stages: list[str]
    ran: dict[str, bool]
    stage_summary: pa.Table
    config: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    pool: dict[str, Any] = field(default_factory=dict)
    top_n: int = 30
    random_weights: bool = False
    notes: list[str] = field(default_factory=list)
    #: concept_frequency table (None: match did not run)
    concepts: pa.Table | None = None
    #: column name -> label, in display order (count_pool, count_after_X..., count_final)
    concept_columns: dict[str, str] = field(default_factory=dict)
    t: int | None = None
    balance_ran: bool = False
    #: {"edges", "all", "kept", "threshold", "threshold_label", "n", "sum", "n_kept"}
    scores: dict[str, Any] | None = None
    clusters: pa.Table | None = None
    coverage: pa.Table | None = None
    coverage_note: str | None = None
    final_label: str = "after curation"
    final_pairs: int = 0


def _section(sid: str, body: str) -> str:
    title = dict(SECTIONS)[sid]
    return f'<section id="{sid}"><h2>{esc(title)}</h2>{body}</section>'


def _overview(d: ReportData) -> str:
    parts = []
    if d.random_weights:
        parts.append(
            '<div class="warning" id="random-weights-warning"><strong>CLIP scores are '
            "meaningless in this run</strong>The score stage used randomly initialised weights "
            "(<code>score.pretrained: none</code>). Every clip_score, the score filter's "
            "decisions and anything built on the embeddings (prune clusters, deduplication) "
            "are noise. Use this run to test the plumbing only.</div>")
    pool_rows = int(d.pool.get("rows", 0) or 0)
    kpis = [("pool pairs", fmt_int(pool_rows)),
            (d.final_label, fmt_int(d.final_pairs)),
            ("kept of pool", fmt_pct(d.final_pairs, pool_rows))]
    if d.concepts is not None:
        kpis.append(("entries matched", fmt_int(d.concepts.num_rows)))
    parts.append('<div class="kpis">' + "".join(
        f'<div class="kpi"><div class="v">{esc(v)}</div><div class="l">{esc(label)}</div></div>'
        for label, v in kpis) + "</div>")
    stage_list = ", ".join(
        f"{esc(s)}" + ("" if d.ran.get(s) else " <em>(not run)</em>") for s in d.stages)
    parts.append(f"<p>Pipeline: {stage_list}.</p>")
    for n in d.notes:
        parts.append(f'<div class="note">{esc(n)}</div>')
    parts.append("<nav><ol>" + "".join(f'<li><a href="#{sid}">{esc(title)}</a></li>'
                                       for sid, title in SECTIONS[1:]) + "</ol></nav>")
    return "".join(parts)


def _funnel(d: ReportData) -> str:
    s = d.stage_summary.to_pylist()
    totals = [r for r in s if r["reason"] is None]
    if not totals:
        return not_run("No stage has run yet.")
    png = funnel_png([r["stage"] for r in totals], [r["pairs_in"] or 0 for r in totals],
                     [r["kept"] or 0 for r in totals])
    rows, classes = [], []
    for tr in totals:
        rows.append([esc(tr["stage"]), esc(tr["status"] or ""), fmt_int(tr["pairs_in"]),
                     fmt_int(tr["kept"]), fmt_int(tr["dropped"]),
                     fmt_pct(tr["kept"] or 0, tr["pairs_in"] or 0),
                     "–" if tr["seconds"] is None else f"{tr['seconds']:,.1f}"])
        classes.append("total")
        reasons = sorted((r for r in s if r["stage"] == tr["stage"] and r["reason"] is not None),
                         key=lambda r: -(r["count"] or 0))
        for r in reasons:
            rows.append([f"dropped: {esc(r['reason'])}", "", "", "", fmt_int(r["count"]),
                         fmt_pct(r["count"] or 0, tr["pairs_in"] or 0), ""])
            classes.append("reason")
    table = table_html(["stage", "status", "pairs in", "kept", "dropped", "% of in", "seconds"],
                       rows, [False, False, True, True, True, True, True], classes, raw=True)
    missing = [st for st in d.stages if st != "report" and not d.ran.get(st)]
    extra = not_run("Not run: " + ", ".join(missing) + ".") if missing else ""
    return (img_tag(png, "pairs in and kept per stage") + table
            + "<p>% of in: share of the stage's pairs in. Reasons are grouped by their stem "
            "(e.g. all <em>semantic duplicate of …</em> together).</p>" + extra)


def _display_counts(d: ReportData) -> dict[str, np.ndarray]:
    assert d.concepts is not None
    return {label: d.concepts[c].to_numpy() for c, label in d.concept_columns.items()}


def _rank_frequency(d: ReportData) -> str:
    if d.concepts is None:
        return absent(d, "match", "no concept frequencies.")
    if d.concepts.num_rows == 0:
        return not_run("match ran, but no caption matched any metadata entry.")
    curves = _display_counts(d)
    colours = {}
    for i, label in enumerate(curves):
        colours[label] = POOL_COLOUR if i == 0 else (
            FINAL_COLOUR if i == len(curves) - 1 else STAGE_COLOURS[(i - 1) % 5])
    png = rank_frequency_png(curves, d.t if d.balance_ran else None, colours)
    text = ("<p>Each curve is sorted on its own: the entry at rank r is the r-th most frequent "
            "at that point. Web captions give a power law; MetaCLIP's balancing caps each "
            "entry at about t pairs, flattening the head while keeping the tail whole.</p>")
    return img_tag(png, "rank-frequency of metadata entries") + text


def _head_tail(d: ReportData) -> str:
    if d.concepts is None:
        return absent(d, "match", "no head/tail split.")
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
    intro = (f"<p>Head entries: those with more than t = {d.t:,} pairs in the pool "
             f"({int(head.sum()):,} of {d.concepts.num_rows:,} matched entries); the rest is the "
             "tail. Matches: (pair, entry) incidences, so a pair with three entries counts three "
             "times." + ("" if d.balance_ran else " balance did not run: t is the configured "
                         "default, shown for reference.") + "</p>")
    table = table_html(["pairs", "matches", "head entries present", "head matches", "head share",
                        "tail matches", "tail share"], rows,
                       [False, True, True, True, True, True, True])
    png = head_tail_png(labels, hs, ts) if sum(hs) + sum(ts) else None
    return intro + (img_tag(png, "head and tail share of matches") if png else "") + table


def _entry_counts(d: ReportData) -> str:
    if d.concepts is None:
        return absent(d, "match", "no entry counts.")
    counts = _display_counts(d)
    rows = []
    for k in (1, 10, 100, 1000):
        rows.append([f"≥ {k:,} pairs", *[fmt_int(int((c >= k).sum())) for c in counts.values()]])
    if d.t is not None:
        rows.append([f"> t ({d.t:,}) pairs", *[fmt_int(int((c > d.t).sum()))
                                               for c in counts.values()]])
    return ("<p>How many metadata entries are backed by at least k pairs: the long tail "
            "that zero-shot accuracy depends on (Udandarao et al. 2024).</p>"
            + table_html(["", *counts.keys()], rows, [False] + [True] * len(counts)))


def _entry_rows(d: ReportData, idx: np.ndarray) -> list[list[str]]:
    assert d.concepts is not None
    sub = d.concepts.take(pa.array(idx, pa.int64())).to_pylist()
    rows = []
    for r in sub:
        flag = ' <span class="head-flag">head</span>' if r["head"] else ""
        rows.append([fmt_int(r["rank"]), esc(r["entry"]) + flag,
                     *[fmt_int(r[c]) for c in d.concept_columns]])
    return rows


def _top_entries(d: ReportData) -> str:
    if d.concepts is None:
        return absent(d, "match", "no entry counts.")
    if d.concepts.num_rows == 0:
        return not_run("No entry matched.")
    n = d.top_n
    pool = d.concepts["count_pool"].to_numpy()
    ids = d.concepts["entry_id"].to_numpy()
    order_desc = np.lexsort((ids, -pool))
    order_asc = np.lexsort((ids, pool))
    headers = ["rank", "entry", *d.concept_columns.values()]
    num = [True, False] + [True] * len(d.concept_columns)
    most = table_html(headers, _entry_rows(d, order_desc[:n]), num, raw=True)
    least = table_html(headers, _entry_rows(d, order_asc[:n]), num, raw=True)
    ones = int((pool == 1).sum())
    ones_text = (f" {ones:,} of them {'has' if ones == 1 else 'have'} exactly one pair; among "
                 "equal counts the order is by entry id." if ones else "")
    return (f"<p>Ranked by pool count. reports/concept_frequency.parquet holds all "
            f"{d.concepts.num_rows:,} entries with at least one pair.{ones_text}</p>"
            f'<div class="cols"><div><h3>Top {n} most frequent</h3>{most}</div>'
            f"<div><h3>{n} least frequent (count ≥ 1)</h3>{least}</div></div>")


def _scores(d: ReportData) -> str:
    if d.scores is None:
        return absent(d, "score", "no CLIP scores.")
    s = d.scores
    warn = ""
    if d.random_weights:
        warn = ('<div class="warning"><strong>Random weights</strong>These scores come from an '
                "untrained model and carry no information about image-text agreement.</div>")
    if not s["n"]:
        return warn + not_run("score ran, but no pair has a score.")
    edges, allc = np.asarray(s["edges"]), np.asarray(s["all"])
    centres = (edges[:-1] + edges[1:]) / 2
    cum = np.cumsum(allc) / max(allc.sum(), 1)

    def q(p: float) -> float:
        return float(centres[min(np.searchsorted(cum, p), len(centres) - 1)])

    png = score_hist_png(edges, allc, np.asarray(s["kept"]), s.get("threshold"),
                         s.get("threshold_label", ""))
    rows = [["pairs scored", fmt_int(s["n"])], ["kept by the score stage", fmt_int(s["n_kept"])],
            ["mean", f"{s['sum'] / s['n']:.4f}"],
            ["10th / 50th / 90th percentile", f"{q(0.1):.3f} / {q(0.5):.3f} / {q(0.9):.3f}"]]
    if s.get("threshold") is not None:
        rows.append(["threshold", f"{s['threshold']:.4f} ({s.get('threshold_label', '')})"])
    return (warn + img_tag(png, "clip_score histogram")
            + table_html(["", "value"], rows, [False, True])
            + f"<p>Percentiles from the histogram (bin width {edges[1] - edges[0]:.3f}).</p>")


def _clusters(d: ReportData) -> str:
    if d.clusters is None:
        return absent(d, "prune", "no concept clusters.")
    c = d.clusters
    if c.num_rows == 0:
        return not_run("prune ran, but clusters.parquet is empty.")
    size = c["size"].to_numpy(zero_copy_only=False)
    rows = [["clusters", fmt_int(c.num_rows)], ["pairs clustered", fmt_int(int(size.sum()))],
            ["median size", fmt_int(int(np.median(size)))], ["largest", fmt_int(int(size.max()))]]
    for col, label in (("size_after_dedup", "pairs after dedup"), ("quota", "sum of quotas")):
        if col in c.column_names and c[col].null_count < c.num_rows:
            rows.append([label, fmt_int(int(np.nansum(
                c[col].to_numpy(zero_copy_only=False).astype(float))))])
    note = ""
    if "complexity" not in c.column_names or c["complexity"].null_count == c.num_rows:
        note = "<p>No complexity/quota: density-based pruning (prune.dbp) was off.</p>"
    warn = ('<p class="note">Clusters are built on embeddings from random weights: '
            "meaningless.</p>") if d.random_weights else ""
    return (warn + img_tag(clusters_png(c), "cluster size, complexity and quota")
            + table_html(["", "value"], rows, [False, True]) + note)


def _imagenet(d: ReportData) -> str:
    if d.coverage is None:
        return not_run(d.coverage_note or "ImageNet class names are not available.")
    cov = d.coverage
    cp = cov["count_pool"].to_numpy()
    cf = cov["count_final"].to_numpy()
    idx = cov["class_index"].to_numpy()
    n = d.top_n
    rows = [[f"≥ {k:,} pairs", fmt_int(int((cp >= k).sum())), fmt_int(int((cf >= k).sum()))]
            for k in (1, 10, 100)]
    rows.insert(0, ["no pair", fmt_int(int((cp == 0).sum())), fmt_int(int((cf == 0).sum()))])
    summary = table_html(["classes with", "pool", d.final_label], rows, [False, True, True])

    def listing(order: np.ndarray) -> str:
        sub = cov.take(pa.array(order[:n], pa.int64())).to_pylist()
        return table_html(["rank", "class", "pool", d.final_label],
                          [[fmt_int(r["rank_final"]), r["classname"], fmt_int(r["count_pool"]),
                            fmt_int(r["count_final"])] for r in sub],
                          [True, False, True, True])

    covered = np.flatnonzero(cp > 0)
    most = (listing(covered[np.lexsort((idx[covered], -cp[covered], -cf[covered]))])
            if covered.size else not_run("No class has a pair in the pool."))
    present = np.flatnonzero(cf > 0)
    least = (listing(present[np.lexsort((idx[present], -cp[present], cf[present]))])
             if present.size else not_run("No class has a pair after curation."))
    names = cov["classname"].to_pylist()

    def name_list(sel: np.ndarray, with_counts: bool, limit: int = 80) -> str:
        sel = sel[np.lexsort((idx[sel], -cp[sel]))]
        items = [f"{names[i]} ({int(cp[i]):,})" if with_counts else names[i]
                 for i in sel[:limit]]
        more = f", … ({sel.size - limit:,} more)" if sel.size > limit else ""
        return esc(", ".join(items) + more)

    lost = np.flatnonzero((cp > 0) & (cf == 0))
    never = np.flatnonzero(cp == 0)
    zero_text = ""
    if lost.size:
        zero_text += (f"<p><strong>Lost by curation</strong> ({lost.size:,} classes, pool "
                      f"count in brackets): {name_list(lost, True)}</p>")
    if never.size:
        zero_text += (f"<p><strong>No pair even in the pool</strong> ({never.size:,} classes): "
                      f"{name_list(never, False)}</p>")
    intro = ("<p>Pairs whose caption mentions each ImageNet-1k class name, by MetaCLIP's "
             "substring rule (case-sensitive, space-bounded), in the pool and "
             f"{esc(d.final_label)}. {esc(d.coverage_note or '')}</p>")
    return (intro + img_tag(coverage_png(cp, cf), "ImageNet class coverage") + summary
            + f'<div class="cols"><div><h3>Most covered</h3>{most}</div>'
              f"<div><h3>Least covered (at least one pair)</h3>{least}</div></div>"
            + zero_text)


class _ConfigDumper(yaml.SafeDumper):
    """Block-style mappings, one-line lists: the YAML a person would write by hand."""


_ConfigDumper.add_representer(
    list, lambda dumper, data: dumper.represent_sequence("tag:yaml.org,2002:seq", data,
                                                         flow_style=True))


def _config(d: ReportData) -> str:
    text = yaml.dump(d.config, Dumper=_ConfigDumper, sort_keys=False, allow_unicode=True,
                     default_flow_style=False, width=96) if d.config else "(no config recorded)"
    vers = ", ".join(f"{k} {v}" for k, v in sorted(d.versions.items()))
    return (f"<pre>{esc(text)}</pre>"
            + (f"<p class=\"meta\">Versions: {esc(vers)}</p>" if vers else ""))


def render(d: ReportData) -> str:
    """The whole page as one string."""
    body = {
        "overview": _overview, "funnel": _funnel, "rank-frequency": _rank_frequency,
        "head-tail": _head_tail, "entry-counts": _entry_counts, "top-entries": _top_entries,
        "scores": _scores, "clusters": _clusters, "imagenet": _imagenet, "config": _config,
    }
    sections = []
    for sid, _ in SECTIONS:
        if sid == "overview":
            sections.append(f'<section id="overview">{body[sid](d)}</section>')
        else:
            sections.append(_section(sid, body[sid](d)))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>curate report: {esc(d.run_url)}</title><style>{CSS}</style></head><body><main>"
        f"<h1>Curation report</h1><p class=\"meta\">Run <code>{esc(d.run_url)}</code> · "
        f"generated {esc(d.generated)}</p>" + "".join(sections)
        + "<footer>Written by curate's report stage. Tables behind this page: "
        "reports/stage_summary.parquet, reports/concept_frequency.parquet, "
        "reports/downstream_coverage.parquet.</footer></main></body></html>\n")
