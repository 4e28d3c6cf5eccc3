"""Per metadata entry, what the pilot's stages did: ``RUN/plan/entries.parquet``.

Why per entry: a stage that drops pairs unevenly across entries (downloads of one site's
images failing, a CLIP cut that dislikes one concept) changes balance's input per entry,
not just its size. Balance counts its entries on the pairs that reach it
(``balance/entry_counts.parquet``), so the stages *before* balance are already in the
counts the prediction scales by 1/f, entry by entry: nothing to correct there. The stages
after match that decide (balance itself, and in MetaCLIP's order — match, balance,
download, filters — the per-pair stages after balance) are measured here per entry with
95% Wilson intervals, for the plan to show which entries lose the most. Their overall
rates are what the prediction multiplies by (a pair has several entries, so per-entry
rates do not compose into a pair's rate without a model). Stages before match cannot be
split by entry: the pairs they drop were never matched.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from curate.algorithms.intervals import wilson_arrays


def stage_entry_counts(m: Any, stage: str, match_folder: str, n_entries: int
                       ) -> tuple[np.ndarray, np.ndarray]:
    """(pairs in, pairs kept) per entry for one deciding stage after match: its decisions
    joined with match's entry_ids by uid, the lists flattened (a pair counts once for each
    of its entries)."""
    import pyarrow.compute as pc

    rd, folder = m.rd, m.cfg.ref(stage).folder
    n_in = np.zeros(n_entries, np.int64)
    n_kept = np.zeros(n_entries, np.int64)
    for shard in rd.pool_shards():
        if not (rd.fs.exists(rd.shard_path(folder, shard))
                and rd.fs.exists(rd.shard_path(match_folder, shard))):
            continue
        d = rd.read(folder, shard, ["uid", "kept"])
        lists = rd.column_for(match_folder, shard, d["uid"], "entry_ids")
        ids = pc.list_flatten(lists).to_numpy(zero_copy_only=False).astype(np.int64)
        parent = pc.list_parent_indices(lists).to_numpy(zero_copy_only=False)
        kept = d["kept"].combine_chunks().to_numpy(zero_copy_only=False)[parent]
        n_in += np.bincount(ids, minlength=n_entries)[:n_entries]
        n_kept += np.bincount(ids[kept], minlength=n_entries)[:n_entries]
    return n_in, n_kept


def write_entries(m: Any, t: float, worst: int = 5) -> tuple[str, list[dict[str, Any]]]:
    """``RUN/plan/entries.parquet``: per entry, the pilot's count at balance, its full-pool
    estimate (count / f), balance's per-entry rate min(1, t / estimate) at the chosen (else
    configured) t, and for each deciding stage after match but balance its pairs in, kept,
    survival and 95% Wilson interval. Returns the path and, per such stage, the ``worst``
    entries by the upper end of their interval (the entries surely losing the most)."""
    import pyarrow as pa

    from curate.core.io import read_table, write_parquet_atomic

    cfg = m.cfg
    bal = cfg.ref(m.balance)
    tab = read_table(m.rd.fs, m.rd.path(bal.folder, "entry_counts.parquet"), None)
    est = m.counts / m.f
    with np.errstate(divide="ignore"):
        rate = np.where(est > 0, np.minimum(1.0, t / np.maximum(est, 1e-300)), 1.0)
    names = [c for c in ("entry_id", "entry") if c in tab.column_names]
    cols: dict[str, Any] = {c: tab[c] for c in names}
    cols.update({"pilot_count": tab["count"], "estimated_count": est, "balance_rate": rate})
    match = cfg.instances_of("match")[-1]
    after = [s["name"] for s in m.stages
             if cfg.stages.index(s["name"]) > cfg.stages.index(match) and s["kind"] != "balance"]
    label = (tab["entry"].to_pylist() if "entry" in tab.column_names
             else [str(i) for i in range(len(est))])
    losses = []
    for name in after:
        n_in, k = stage_entry_counts(m, name, cfg.ref(match).folder, len(est))
        lo, hi = wilson_arrays(k, n_in)
        surv = np.where(n_in > 0, k / np.maximum(n_in, 1), np.nan)
        cols.update({f"{name}_in": n_in, f"{name}_kept": k, f"{name}_survival": surv,
                     f"{name}_low": lo, f"{name}_high": hi})
        seen = np.flatnonzero(n_in > 0)
        for i in seen[np.argsort(hi[seen], kind="stable")][:worst]:
            losses.append({"stage": name, "entry": label[i], "in": int(n_in[i]),
                           "kept": int(k[i]), "survival": float(surv[i]),
                           "interval": [float(lo[i]), float(hi[i])]})
    path = m.rd.path("plan", "entries.parquet")
    write_parquet_atomic(m.rd.fs, path, pa.table(cols))
    return path, losses
