"""``curate plan``: pick MetaCLIP's t for a target size without re-running balance.

Expected kept size for a given t is the sum over matched pairs of P(keep) =
1 - prod(1 - min(1, t/count_e)), computed from the entry counts and match shards of a run
that has run match and balance; it is monotone in t, so the t for a target is a search.
Streams the match shards (one at a time per pass), so memory stays flat.

With ``balance.per_language`` (MetaCLIP 2) the knob is English's t: each candidate t_en
gives every language its own t (curate.algorithms.balancing_languages), so the curve and
``t_for_target`` are in t_en, and ``languages`` lists, per language, its t, tail fraction and
expected kept pairs at the configured t_en (and at the target's t_en).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from curate.core.rundir import RunDir
from curate.errors import CurateError


class _Shards:
    """Re-iterable over the run's matched entry_ids, one shard at a time."""

    def __init__(self, rd: RunDir, deciding: list[str], match: str, shards: list[str]):
        self.rd, self.deciding, self.match, self.shards = rd, deciding, match, shards

    def __iter__(self):
        from curate.stages.balance import matched

        for s in self.shards:
            yield matched(self.rd, self.deciding, self.match, s)["entry_ids"].combine_chunks()


def plan_run(run: str, target: int | None, png: str | None) -> dict[str, Any]:
    from curate.algorithms.balancing import expected_size, t_for_target
    from curate.core.io import read_table
    from curate.stages.registry import recorded_pipeline

    rd = RunDir(run)
    cfg = recorded_pipeline(run)
    balances = cfg.instances_of("balance")
    if not balances:
        raise CurateError(f"{run}: plan needs a run whose pipeline ran match and balance")
    bal = cfg.ref(balances[0])
    counts_path = rd.path(bal.folder, "entry_counts.parquet")
    if not rd.fs.exists(counts_path):
        raise CurateError(f"{run}: plan needs a run whose pipeline ran match and balance")
    counts = read_table(rd.fs, counts_path, ["count"])["count"].to_numpy()
    before = [cfg.ref(n) for n in cfg.stages[: cfg.stages.index(bal.name)]]
    match = [r for r in before if r.kind == "match"][-1]
    deciding = [r.folder for r in before if r.decides]
    shards = [s for s in rd.pool_shards() if rd.fs.exists(rd.shard_path(match.folder, s))]
    data = _Shards(rd, deciding, match.folder, shards)
    if cfg.section(bal.name).per_language:
        return _plan_languages(rd, cfg, bal, match, data, counts, target, png)
    hi = max(int(counts.max(initial=1)), 1)
    ts = np.unique(np.round(np.geomspace(1, hi, 25)))
    expected = np.zeros(ts.size)
    for ids in data:
        expected += expected_size(ids, counts, ts)
    out: dict[str, Any] = {"t": ts.tolist(), "expected": expected.tolist()}
    if target is not None:
        try:
            out["t_for_target"] = t_for_target(data, counts, target)
        except ValueError as err:
            raise CurateError(f"plan --target {target}: {err}") from None
    out["png"] = _plot(rd, ts, expected, target, out.get("t_for_target"),
                       cfg.section(bal.name).t, png)
    return out


def _plan_languages(rd: RunDir, cfg, bal, match, data: _Shards, counts, target, png
                    ) -> dict[str, Any]:
    """The plan in t_en, with a per-language table (MetaCLIP 2's per-language t)."""
    from curate.algorithms.balancing import expected_size
    from curate.algorithms.balancing_languages import (
        expected_by_language,
        language_thresholds,
        split_counts,
        t_en_for_target,
        thresholds_for,
    )
    from curate.vocab import load_metadata

    meta = load_metadata(cfg.section(match.name).metadata)
    langs, offsets = meta.languages, meta.offsets
    if not meta.per_language or "en" not in langs or counts.size != offsets[-1]:
        raise CurateError(f"{rd.url}: plan: balance.per_language needs the run's per-language "
                          "metadata (with en) and its entry counts")
    hi = max(int(counts.max(initial=1)), 1) + 1
    ts = np.unique(np.round(np.geomspace(1, hi, 25)))
    try:
        vecs = np.stack([thresholds_for(counts, langs, offsets, t) for t in ts])
    except ValueError as err:
        raise CurateError(f"plan: {err}") from None
    expected = np.zeros(ts.size)
    for ids in data:
        expected += expected_size(ids, counts, vecs)
    out: dict[str, Any] = {"t": ts.tolist(), "expected": expected.tolist()}
    t_now = cfg.section(bal.name).t
    rows = {"configured": t_now}
    if target is not None:
        try:
            out["t_for_target"] = t_en_for_target(data, counts, langs, offsets, target)
        except ValueError as err:
            raise CurateError(f"plan --target {target}: {err}") from None
        rows["target"] = out["t_for_target"]
    split = split_counts(counts, langs, offsets)
    out["languages"] = {}
    for label, t_en in rows.items():
        by_lang = language_thresholds(split, t_en)
        size = expected_by_language(data, counts, thresholds_for(counts, langs, offsets, t_en),
                                    offsets)
        out["languages"][label] = [
            {"lang": lang, "t": by_lang[lang][0], "tail_fraction": by_lang[lang][1],
             "expected": float(size[k])} for k, lang in enumerate(langs)]
    out["png"] = _plot(rd, ts, expected, target, out.get("t_for_target"), t_now, png,
                       xlabel="t_en (English's cap; other languages follow)")
    return out


def _plot(rd: RunDir, ts, expected, target, t_target, t_now, png,
          xlabel: str = "t (per-entry cap)") -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    ax.plot(ts, expected, marker=".")
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("expected kept pairs")
    ax.axvline(t_now, color="grey", ls=":", label=f"configured t = {t_now:,}")
    if target is not None and t_target is not None:
        ax.axhline(target, color="C1", ls="--", label=f"target {target:,} -> t = {t_target:,.0f}")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    import io

    from curate.core.io import write_bytes_atomic

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    if png:
        with open(png, "wb") as f:
            f.write(buf.getvalue())
        return png
    path = rd.path("plan", "plan.png")  # not in reports/, which the report stage owns
    write_bytes_atomic(rd.fs, path, buf.getvalue())
    return path
