"""``curate plan``: pick MetaCLIP's t for a target size without re-running balance.

Expected kept size for a given t is the sum over matched pairs of P(keep) =
1 - prod(1 - min(1, t/count_e)), computed from the entry counts and match shards of a run
that has run match and balance; it is monotone in t, so the t for a target is a search.
Streams the match shards (one at a time per pass), so memory stays flat.
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


def _plot(rd: RunDir, ts, expected, target, t_target, t_now, png) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    ax.plot(ts, expected, marker=".")
    ax.set_xscale("log")
    ax.set_xlabel("t (per-entry cap)")
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
