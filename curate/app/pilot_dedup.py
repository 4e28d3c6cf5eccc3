"""The pilot's SemDeDup survival corrected to full scale, for the configured eps and a sweep.

Why: prune's dedup survival measured on a pilot at fraction f is biased up (the pilot holds
only f of each pair's near-duplicates: 0.85-0.93 at f = 0.3 on the example against 0.76 in
full runs). :mod:`curate.algorithms.dedup_survival` says how the correction is fitted; this
module feeds it what the pilot's prune actually used, without re-clustering: the rows that
reached prune, their cluster and distance from prune's own assignments
(``<work>/assign/<shard>``, kept after the run; ``<work>`` is the ``work`` of prune's
record in run.json), the embeddings prune read (the score stage's or the pool's, rounded
to float16 as prune's buckets store them), sorted by uid as prune's dedup sorts them, and
the rule, order, seed of prune's config. The re-run at φ = 1 and the configured eps
therefore reproduces the stage's own semantic_duplicate count (checked, and said when not).
Cost: the pilot's prune input is held in memory on the driver (float16: 1M pairs at 512-d
is 1 GB) and deduplicated ~(1 + 0.875 R) times in all under the reference rule (one pass
of each row's best earlier similarity serves every eps), ~(1 + 0.875 R) times per eps
under kept_only (R hash replicates, 3 for pilots of 1,333 pairs and more): meant for
pilots, not for full runs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from curate.core.rundir import step_info
from curate.errors import CurateError

#: the eps sweep: the configured eps times these
EPS_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)


def eps_grid(eps0: float) -> list[float]:
    return sorted({round(min(0.99, eps0 * m), 6) for m in EPS_FACTORS})


class DedupModel:
    """Full-scale SemDeDup survival per eps from a pilot's prune (``survival(eps)``)."""

    def __init__(self, rd: Any, cfg: Any, prune: str, f: float, rec: dict[str, Any]):
        """``rec``: prune's record in run.json (its ``work`` and semantic_duplicate count)."""
        sec = cfg.section(prune)
        self.eps0 = float(sec.dedup_eps)
        self.eps = eps_grid(self.eps0)
        self.f = f
        self.rule = sec.dedup_rule
        emb, labels, dist, uids = _load(rd, cfg, prune, step_info(rec, "count").get("work"))
        self.rows = len(labels)
        self._cache: dict[tuple[float, float], tuple[float, float, float]] = {}
        self.n = self.kept = None
        self.rerun_dups = self.groups_seen = 0
        if self.rows:
            from curate.algorithms.dedup_survival import subsample_counts

            # more hash replicates for a small pilot: its sub-samples' survivals are noisy
            reps = int(np.clip(np.ceil(4000 / self.rows), 3, 32))
            _, self.n, self.kept = subsample_counts(emb, labels, dist, uids, self.eps,
                                                    sec.keep, sec.seed, sec.dedup_rule,
                                                    replicates=reps)
            k = self.kept[self.eps.index(round(self.eps0, 6)), 0, 0]
            self.rerun_dups = self.rows - int(k.sum())
            # groups (trees) of more than one pair at the configured eps: what the fit rests on
            self.groups_seen = int(((self.n[0, 0] - k) > 0).sum())
        self.matches = self.rerun_dups == int(
            (rec.get("dropped") or {}).get("semantic_duplicate", 0))

    def survival(self, eps: float | None = None, fraction: float | None = None
                 ) -> tuple[float, float, float]:
        """(survival measured in the pilot, full-scale estimate, its sd) at ``eps``, the
        pilot's prune input being ``fraction`` (default f) of the full run's."""
        eps = round(self.eps0 if eps is None else eps, 6)
        if eps not in self.eps:
            raise CurateError(f"plan: eps {eps} is not in the sweep {self.eps}")
        s = round(self.f if fraction is None else fraction, 4)
        if (eps, s) not in self._cache:
            from curate.algorithms.dedup_survival import full_survival

            self._cache[eps, s] = ((1.0, 1.0, 0.0) if not self.rows else
                                   full_survival(self.n, self.kept[self.eps.index(eps)], s))
        return self._cache[eps, s]

    def row(self, eps: float | None = None, fraction: float | None = None
            ) -> dict[str, float]:
        """At ``eps``: measured, corrected, 95% interval (at most the pilot's own
        survival: a larger pool only adds near-duplicates)."""
        from curate.algorithms.intervals import Z95

        d_f, est, sd = self.survival(eps, fraction)
        return {"eps": round(self.eps0 if eps is None else eps, 6), "pilot_survival": d_f,
                "survival": est, "low": max(0.0, est - Z95 * sd),
                "high": min(d_f, est + Z95 * sd)}

    def table(self, fraction: float | None = None) -> list[dict[str, float]]:
        """One row per eps of the sweep: measured, corrected, 95% interval."""
        return [self.row(eps, fraction) for eps in self.eps]


def _load(rd: Any, cfg: Any, prune: str, work: str | None
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, Any]:
    """Embeddings (float16-rounded, as prune's buckets hold them), cluster ids, distances
    and uids of the rows that reached prune (its scratch ``work``), in prune's dedup order
    for ties (by uid)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from curate.core.io import read_table
    from curate.stages.prune.clustering import where_for
    from curate.stages.prune.embeddings import load_embeddings

    if not work or not rd.fs.exists(f"{work}/assign"):
        raise CurateError(f"plan: {prune}'s assignments ({work}/assign) are gone: rerun "
                          "the pilot to correct its dedup survival")
    where = where_for(cfg, prune, rd.url, work)
    uids, embs, labels, dist = [], [], [], []
    for shard in rd.pool_shards():
        path = f"{work}/assign/{shard}"
        if not rd.fs.exists(path):
            continue
        a = read_table(rd.fs, path)
        u, x = load_embeddings(where, shard)
        idx = pc.index_in(u, value_set=a["uid"].combine_chunks()).to_numpy(
            zero_copy_only=False)
        uids.append(u)
        embs.append(x.astype(np.float16))
        labels.append(a["cluster_id"].to_numpy()[idx])
        dist.append(a["dist_to_centroid"].to_numpy()[idx])
    if not uids:
        return np.zeros((0, 1), np.float32), np.zeros(0, np.int32), np.zeros(0), []
    u = pa.concat_arrays(uids)
    order = pc.sort_indices(u).to_numpy()
    emb = np.concatenate(embs)[order]
    return (emb, np.concatenate(labels)[order], np.concatenate(dist)[order],
            u.take(pa.array(order)).to_numpy(zero_copy_only=False))


def describe(model: DedupModel, fraction: float | None = None) -> str:
    r = model.row(None, fraction)
    # measured: pilots that saw ~40-55 groups covered 24 of 30 planted cases, ~180-210: 30
    few = (f"; only {model.groups_seen} near-duplicate groups seen in the pilot: the "
           "correction is uncertain, a larger pilot narrows it"
           if model.groups_seen < 100 else "")
    return (f"dedup survival at eps {model.eps0:g}: {r['pilot_survival']:.3f} in the pilot, "
            f"{r['survival']:.3f} at full scale (95% {r['low']:.3f} .. {r['high']:.3f}"
            f"; {model.rule} rule, re-run on {model.rows:,} pilot pairs, which are "
            f"{fraction or model.f:.3g} of the full run's{few})"
            + ("" if model.matches else
               f"; note: the re-run found {model.rerun_dups:,} duplicates, not the stage's"))
