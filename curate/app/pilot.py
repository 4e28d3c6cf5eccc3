"""``curate pilot`` and the loss-aware plan: predict a full run's final size from a pilot.

Why: MetaCLIP's t is set on counts after download and filtering, so a user cannot tell which
t gives 400M pairs (MetaCLIP issues #19, #24) without running everything. A pilot runs the
whole pipeline on a uid-hash sample of fraction f of the pool (``pool.sample_fraction``,
applied per uid at ingest, :func:`curate.stages._pool_read.in_sample`): each unique pair is
in it with probability f, independently of sharding, so the pilot's pairs reaching any
stage are a Bernoulli(f) sample of the full run's (for per-pair stages) and sums over them,
divided by f, are Horvitz-Thompson estimates of the full run's sums.

The model (docs/ARCHITECTURE.md §8.2.1): final = pre × Π post-balance rates × d × g, where
``pre = (r/f) Σ_{pilot pairs reaching balance} P_i(t; counts · r / f)`` (r = top_fraction /
configured top_fraction, a proportional-thinning assumption; r = 1 unless swept), ``d`` is
prune's dedup survival at eps, corrected to full scale (:mod:`curate.app.pilot_dedup`: the
pilot's own is biased up, it holds only f of each pair's near-duplicates) and ``g`` DBP's
target_fraction (deterministic given its input). Without balance, pre = r × (pilot pairs
past the last stage before prune) / f. The interval is a normal approximation: HT sampling
variance ``(1 - f)/f² Σ y_i²`` plus the balance draws' own variance ``Σ P(1 - P)/f``, plus
each measured post-balance rate's binomial variance and the dedup correction's bootstrap
variance, relative errors added in quadrature. Balance's entry counts are counted on the
pairs that reach it, so stages before balance (download, filters, the CLIP cut) are already
in them, per entry; per-entry survival of the stages after match is a table
(:mod:`curate.app.pilot_entries`), not a factor of the prediction.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from curate.algorithms.intervals import Z95, wilson
from curate.core.rundir import RunDir
from curate.errors import CurateError


def run_pilot(pool: str | None, pipeline: str | None, fraction: float, out: str, seed: int,
              overrides: list[str]) -> dict[str, Any]:
    """Ingest the pool keeping the uid-hash sample and run the pipeline on it."""
    from curate.driver import run_pipeline
    from curate.stages.registry import load_pipeline

    if not 0 < fraction <= 1:
        raise CurateError(f"pilot --fraction must be in (0, 1], got {fraction}")
    cfg = load_pipeline(pipeline, [*overrides, f"pool.sample_fraction={fraction}",
                                   f"pool.sample_seed={seed}"])
    return run_pipeline(cfg, out, pool=pool)


class PilotModel:
    """What a (pilot) run measured, and the predicted final size for other knob values."""

    def __init__(self, run: str):
        from curate.stages.registry import recorded_pipeline

        self.rd = RunDir(run)
        self.manifest = self.rd.load_manifest()
        self.cfg = cfg = recorded_pipeline(run)
        self.f = float(cfg.pool.sample_fraction or 1.0)
        recs = self.manifest.get("stages", {})
        self.stages: list[dict[str, Any]] = []
        for ref in cfg.refs():
            rec = recs.get(ref.name)
            if not ref.decides or not rec or rec.get("status") not in ("done", "failed"):
                continue
            n, k = int(rec.get("rows_in", 0)), int(rec.get("kept", 0))
            lo, hi = wilson(k, n)
            self.stages.append({"name": ref.name, "kind": ref.kind, "rows_in": n, "kept": k,
                                "survival": k / n if n else 0.0, "interval": [lo, hi],
                                "dropped": dict(rec.get("dropped") or {})})
        self.pool_rows = int(self.manifest.get("pool", {}).get("rows", 0))
        names = [s["name"] for s in self.stages]
        bal = cfg.instances_of("balance")
        self.balance = bal[0] if bal and bal[0] in names else None
        prune = cfg.instances_of("prune")
        self.prune = prune[-1] if prune and prune[-1] in names else None
        self.score = next((n for n in cfg.instances_of("score") if n in names
                           and cfg.section(n).filter.top_fraction is not None), None)
        self.tf0 = cfg.section(self.score).filter.top_fraction if self.score else None
        psec = cfg.section(self.prune) if self.prune else None
        self.g0 = psec.target_fraction if psec is not None and psec.dbp else None
        self.target_size = psec.target_size if psec is not None and psec.dbp else None
        self.eps0 = psec.dedup_eps if psec is not None else None
        self._post_rates()
        self._load_balance()
        self.dedup = None
        if self.eps0 and self.f < 1:
            from curate.app.pilot_dedup import DedupModel

            self.dedup = DedupModel(self.rd, cfg, self.prune, self.f, recs[self.prune])

    def _post_rates(self) -> None:
        """Measured rates of the stages after balance (or after the last per-pair stage),
        prune's dedup survival among them; DBP's own cut is modelled, not measured."""
        names = [s["name"] for s in self.stages]
        start = names.index(self.balance) + 1 if self.balance else (
            names.index(self.prune) if self.prune else len(names))
        self.post: list[tuple[str, float, int]] = []  # (name, rate, n)
        for s in self.stages[start:]:
            n = s["rows_in"]
            if s["name"] == self.prune:
                dup = s["dropped"].get("semantic_duplicate", 0)
                self.post.append((f"{s['name']} (dedup)", (n - dup) / n if n else 0.0, n))
            else:
                self.post.append((s["name"], s["survival"], n))
        if self.balance is None:
            last = self.stages[start - 1] if start else None
            self.base = last["kept"] if last else self.pool_rows

    def _load_balance(self) -> None:
        self.ids: list[Any] = []
        self.counts = None
        if self.balance is None:
            return
        from curate.core.io import read_table
        from curate.stages.balance import matched

        cfg, rd = self.cfg, self.rd
        bal = cfg.ref(self.balance)
        before = [cfg.ref(n) for n in cfg.stages[: cfg.stages.index(bal.name)]]
        match = [r for r in before if r.kind == "match"][-1]
        deciding = [r.folder for r in before if r.decides]
        self.counts = read_table(rd.fs, rd.path(bal.folder, "entry_counts.parquet"),
                                 ["count"])["count"].to_numpy().astype(np.float64)
        for s in rd.pool_shards():
            if rd.fs.exists(rd.shard_path(match.folder, s)):
                ids = matched(rd, deciding, match.folder, s)["entry_ids"].combine_chunks()
                if len(ids):
                    self.ids.append(ids)
        self.t0 = float(cfg.section(bal.name).t)
        if cfg.section(bal.name).per_language:
            raise CurateError("plan: a pilot prediction with balance.per_language is not "
                              "supported yet (use plan without a pilot for t_en)")

    # ------------------------------------------------------------------ prediction
    def _pre(self, t: float | None, r: float) -> tuple[float, float, float]:
        """(estimate, HT variance, draw variance) of the pairs balance keeps (or of the
        pairs reaching the post stages, without balance), full-pool scale."""
        f = self.f
        if self.balance is None:
            est = r * self.base / f
            return est, r * r * self.base * (1 - f) / f**2, 0.0
        from curate.algorithms.balancing import keep_prob

        scaled = self.score is not None and self.cfg.stages.index(self.score) < \
            self.cfg.stages.index(self.balance)  # thinning before balance lowers the counts
        counts = self.counts * (r if scaled else 1.0) / f
        s1 = s2 = s3 = 0.0
        for ids in self.ids:
            p = keep_prob(ids, counts, t).astype(np.float64)
            s1, s2, s3 = s1 + p.sum(), s2 + (p * p).sum(), s3 + (p * (1 - p)).sum()
        return r * s1 / f, r * r * s2 * (1 - f) / f**2, r * s3 / f

    def predict(self, t: float | None = None, top_fraction: float | None = None,
                target_fraction: float | None = None, eps: float | None = None
                ) -> dict[str, float]:
        """Predicted final size and its 95% interval for these knobs (None: configured)."""
        t = self.t0 if t is None and self.balance else t
        eps = self.eps0 if eps is None else eps
        tf = top_fraction if top_fraction is not None else self.tf0
        r = tf / self.tf0 if self.tf0 else 1.0
        est, v_ht, v_draw = self._pre(t, r)
        est0, f_r = est, self.f / r if r else 0.0  # balance's predicted rate, full scale
        rel2 = (v_ht + v_draw) / est**2 if est > 0 else 0.0
        dedup: dict[str, float] = {}
        cap, rel2_d = math.inf, 0.0  # the dedup term's share: its survival is at most d(f)
        for name, rate, n in self.post:
            if self.dedup is not None and name.endswith("(dedup)"):
                # the pilot's prune input as a fraction of the full run's (est, here): f,
                # unless balance came first (its head entries keep ~t pairs in both)
                s_eff = min(1.0, max(self.f, n / est)) if est > 0 else self.f
                d_f, rate, sd = self.dedup.survival(eps, s_eff)  # corrected to full scale
                est *= rate
                rel2_d = (sd / rate) ** 2 if rate > 0 else 0.0
                cap = d_f / rate if rate > 0 else math.inf
                dedup = {"dedup_survival": rate, "dedup_fraction": s_eff}
                continue
            est *= rate
            if n and 0 < rate:
                rel2 += (1 - rate) / (rate * n)
        g = target_fraction if target_fraction is not None else self.g0
        if g is not None:
            est *= g
        elif self.target_size is not None:
            est = min(est, float(self.target_size))
        half = Z95 * est * math.sqrt(rel2 + rel2_d)
        high = min(est + half, est * cap * (1 + Z95 * math.sqrt(rel2)))
        n_bal = sum(len(ids) for ids in self.ids)
        bal_rate = {"balance_rate": est0 * f_r / n_bal} if n_bal else {}
        return {**bal_rate, **dedup, "predicted": est, "low": max(0.0, est - half),
                "high": high, "t": t, "top_fraction": tf, "target_fraction": g, "eps": eps}

    def solve(self, target: float) -> dict[str, float]:
        """The knob values for ``target``: t (others as configured) when the pipeline
        balances; else DBP's target_fraction; else score's top_fraction; else eps. eps is
        a quality knob (what counts as a duplicate), so it is turned last: with another
        knob it stays as configured, and the sweep shows what other values would give."""
        if self.balance is not None:
            lo, hi = 1e-6, float(max(self.counts.max(initial=1), 1)) / self.f * 2
            if self.predict(t=hi)["predicted"] < target:
                raise CurateError(
                    f"plan --target {target:,.0f}: above what t can give "
                    f"({self.predict(t=hi)['predicted']:,.0f}: every matched pair kept); "
                    "raise top_fraction/target_fraction or use a larger pool")
            for _ in range(100):
                mid = math.sqrt(lo * hi)
                if hi / lo < 1 + 1e-6:
                    break
                lo, hi = (mid, hi) if self.predict(t=mid)["predicted"] < target else (lo, mid)
            # balance.t is an integer: the nearer of the two around the solution
            cands = [self.predict(t=float(c)) for c in {max(1, math.floor(hi)), math.ceil(hi)}]
            return min(cands, key=lambda p: abs(p["predicted"] - target))
        if self.g0 is not None:
            full = self.predict(target_fraction=1.0)["predicted"]
            return self.predict(target_fraction=min(1.0, target / full) if full else 1.0)
        if self.tf0 is not None:
            full = self.predict(top_fraction=1.0)["predicted"]
            return self.predict(top_fraction=min(1.0, target / full) if full else 1.0)
        if self.dedup is not None:  # eps alone: the sweep's eps nearest the target
            return min((self.predict(eps=e) for e in self.dedup.eps),
                       key=lambda p: abs(p["predicted"] - target))
        raise CurateError("plan --target: the pipeline has no knob to turn (balance.t, "
                          "prune.target_fraction, score.filter.top_fraction or "
                          "prune.dedup_eps)")

    def sweep(self) -> list[dict[str, float]]:
        """Predictions over a grid: t (balance), top_fraction and target_fraction around
        the configured values (x0.5 .. x1.5, capped at 1) at the configured eps; then, at
        the configured top_fraction and target_fraction, every t for each other eps of
        the dedup sweep (x0.25 .. x4)."""
        ts = [None]
        if self.balance is not None:
            hi = float(max(self.counts.max(initial=1), 1)) / self.f
            ts = sorted({float(x) for x in np.round(np.geomspace(1, max(hi, 2), 9))}
                        | {self.t0})
        tfs = _around(self.tf0)
        gs = _around(self.g0)
        rows = [self.predict(t=t, top_fraction=tf, target_fraction=g)
                for t in ts for tf in tfs for g in gs]
        others = [e for e in self.dedup.eps if e != round(self.eps0, 6)] if self.dedup else []
        return rows + [self.predict(t=t, eps=e) for e in others for t in ts]


def _around(v: float | None) -> list[float | None]:
    if v is None:
        return [None]
    return sorted({round(min(1.0, v * m), 4) for m in (0.5, 0.75, 1.0, 1.25, 1.5)})


def plan_pilot(run: str, target: int | None) -> dict[str, Any]:
    """Per-stage survival, the prediction at the configured values, the sweep, and (with a
    target) the chosen values written as ``RUN/plan/pipeline.yaml``."""
    import yaml

    from curate.core.io import write_bytes_atomic

    m = PilotModel(run)
    out: dict[str, Any] = {"fraction": m.f, "pool_rows": m.pool_rows,
                           "pool_rows_full": m.pool_rows / m.f, "stages": m.stages,
                           "configured": m.predict(), "sweep": m.sweep(), "notes": []}
    if m.dedup is not None:
        from curate.app.pilot_dedup import describe

        out["dedup"] = m.dedup.table(out["configured"]["dedup_fraction"])
        out["notes"].append(describe(m.dedup, out["configured"]["dedup_fraction"]))
    if target is not None:
        chosen = m.solve(float(target))
        out["chosen"] = chosen
        data = m.cfg.dump()
        data["pool"].pop("sample_fraction", None)
        data["pool"].pop("sample_seed", None)
        if m.balance and chosen["t"] is not None:
            data[m.balance]["t"] = int(chosen["t"])
        if m.score and chosen["top_fraction"] is not None:
            data[m.score]["filter"]["top_fraction"] = chosen["top_fraction"]
        if m.prune and chosen["target_fraction"] is not None:
            data[m.prune]["target_fraction"] = chosen["target_fraction"]
        if m.prune and chosen["eps"] is not None:
            data[m.prune]["dedup_eps"] = chosen["eps"]
        path = m.rd.path("plan", "pipeline.yaml")
        head = (f"# curate plan --target {target}: predicted {chosen['predicted']:,.0f} "
                f"(95% interval {chosen['low']:,.0f} .. {chosen['high']:,.0f}) from the "
                f"pilot at fraction {m.f}\n")
        write_bytes_atomic(m.rd.fs, path, (head + yaml.safe_dump(data, sort_keys=False)
                                           ).encode())
        out["pipeline"] = path
    if m.balance is not None:
        from curate.app.pilot_entries import write_entries

        out["entries"], out["entry_losses"] = write_entries(
            m, (out.get("chosen") or out["configured"])["t"])
    return out

