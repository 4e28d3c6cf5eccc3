"""The report's plots: matplotlib figures from arrays and tables to PNG bytes.

Kept apart from :mod:`curate.report.html` so the page module holds only the data the templates
show, and the drawing can be tested on arrays without building a page.

- Matplotlib is driven through ``matplotlib.figure.Figure`` and the Agg canvas directly, not
  ``pyplot``: no global backend switch, no figure registry to leak, safe inside a worker.
- PNGs are written without the "Software" chunk, so no URL ends up in the page and the bytes
  are stable; :func:`data_uri` embeds them, so the page never fetches anything.
- Labels that name stages are passed in, never spelled here: stage names are instance names
  (``score_b32``), and a pipeline may hold more than one stage of a kind.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

POOL_COLOUR = "#9aa0a6"
FINAL_COLOUR = "#d62728"
STAGE_COLOURS = ("#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def data_uri(png: bytes) -> str:
    """A PNG as a ``data:`` URI for an ``<img src>``: the page stays one self-contained file."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


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
                   threshold: float | None, threshold_label: str,
                   kept_label: str = "kept by the score stage",
                   xlabel: str = "clip_score (cosine of image and text embeddings)") -> bytes:
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
    ax.bar(left, k, width=step * group, align="edge", color="#1f77b4", label=kept_label)
    if threshold is not None:
        ax.axvline(threshold, color=FINAL_COLOUR, lw=1.6, ls="--", label=threshold_label)
    ax.set_xlabel(xlabel)
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
        # few ticks: complexities are small decimals whose labels otherwise run together
        ax.xaxis.set_major_locator(MaxNLocator(4))
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
