"""The pilot's SemDeDup survival corrected to full scale, its eps sweep, and per-entry
survival: on a synthetic pool with planted near-duplicate groups, the full runs' dedup
survival and final size fall inside the intervals a pilot predicts, for several eps."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import base_config

from curate.driver import run_pipeline

WORDS = ["dog", "cat", "tree", "house", "kite"]


def _dup_pool(path, n_groups: int = 900, d: int = 16, seed: int = 0) -> str:
    """Near-duplicate groups: 60% singletons, the rest groups of 2-12 copies of a random
    direction plus noise, half tight (sigma 0.004: 1 - cos ~ 5e-4) and half loose (sigma
    0.025: 1 - cos ~ 0.02), so eps 0.005 and 0.02 remove different shares. A group's
    caption names one word, so the entries' dedup survival differs."""
    rng = np.random.default_rng(seed)
    sizes = np.where(rng.random(n_groups) < 0.6, 1, rng.integers(2, 13, n_groups))
    sigma = np.where(rng.random(n_groups) < 0.5, 0.004, 0.025)
    c = rng.normal(size=(n_groups, d))
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    g = np.repeat(np.arange(n_groups), sizes)
    x = c[g] + sigma[g, None] * rng.normal(size=(len(g), d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    emb = pa.FixedSizeListArray.from_arrays(pa.array(x.astype(np.float32).reshape(-1)), d)
    caps = [f"a {WORDS[k % len(WORDS)]} number {i}" for i, k in enumerate(g)]
    pq.write_table(pa.table({"caption": caps, "image_emb": emb}), path)
    return str(path)


def _cfg(eps: float, dbp: bool = True, **pool):
    prune = {"k": 6, "seed": 0, "dedup_eps": eps}
    if dbp:
        prune.update(dbp=True, target_fraction=0.8)
    return base_config(stages=["prune"], pool={"shard_size": 500, **pool}, prune=prune)


# ------------------------------------------------------------------ the pure algorithm
@pytest.mark.parametrize("sizes", [np.full(300, 5), np.r_[np.ones(3000), np.full(300, 5)],
                                   np.random.default_rng(0).geometric(0.4, 3000)])
def test_group_fit_recovers_full_survival_from_a_sample(sizes):
    """Expected survival at s of a pool of tight groups is Σ_g (1 - (1-s)^m_g) / (s N);
    from s = 0.3 .. 0.0375 alone the fit reads d(1) = groups / pairs."""
    from curate.algorithms.dedup_survival import PHIS, fit_full_survival

    s = 0.3 * np.asarray(PHIS)
    d = np.array([(1 - (1 - x) ** sizes).sum() / (x * sizes.sum()) for x in s])
    truth = len(sizes) / sizes.sum()
    assert abs(fit_full_survival(s, d) - truth) < 0.025
    assert d[0] - truth > 0.1  # the sample's own survival: biased up


def test_groups_of_follows_duplicate_chains():
    from curate.algorithms.dedup_survival import groups_of

    dup = np.array([-1, 0, 1, -1, 3, 2, -1])
    assert groups_of(dup).tolist() == [0, 0, 0, 3, 3, 0, 6]


def _reference_kept(x, labels, dist, uids, eps, keep_rows):
    """SemDeDup's rule, written from its description: in each cluster, rows in decreasing
    distance to the centroid (ties by uid), a row goes when any earlier row of the order is
    within eps (cosine similarity above 1 - eps), whether that row was kept or not."""
    kept = np.zeros(len(x), bool)
    rows = np.flatnonzero(keep_rows)
    x = x.astype(np.float16).astype(np.float32)
    for c in np.unique(labels[rows]):
        r = rows[labels[rows] == c]
        r = r[np.lexsort((uids[r], -dist[r].astype(np.float64)))]
        for j, row in enumerate(r):
            kept[row] = j == 0 or float((x[r[:j]] @ x[row]).max()) <= 1 - eps
    return kept


def test_subsample_counts_follow_the_rule_on_each_subsample():
    from curate.algorithms.dedup_survival import PHIS, subsample_counts
    from curate.algorithms.kmeans_sample import uid_uniform

    rng = np.random.default_rng(3)
    base = rng.normal(size=(40, 8))
    x = base[rng.integers(0, 40, 300)] + 0.02 * rng.normal(size=(300, 8))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    uids = np.array([f"{i:04x}" for i in rng.permutation(300)], dtype=object)
    order = np.argsort(uids)  # the stage's order for ties
    x, uids = x[order], uids[order]
    labels = rng.integers(0, 4, 300)
    dist = rng.random(300).astype(np.float32)
    eps_list = [0.002, 0.01]
    group, n, kept = subsample_counts(x.astype(np.float16), labels, dist, uids, eps_list,
                                      "hard", 0, "reference", replicates=2)
    for p, phi in enumerate(PHIS):
        for r in range(2 if phi < 1 else 1):
            rows = uid_uniform(uids, 7919 + r) < phi if phi < 1 else np.ones(300, bool)
            assert n[p, r].sum() == rows.sum()
            for e, eps in enumerate(eps_list):
                ref = _reference_kept(x, labels, dist, uids, eps, rows)
                assert kept[e, p, r].sum() == ref.sum(), (phi, r, eps)
                np.testing.assert_array_equal(kept[e, p, r],
                                              np.bincount(group[ref], minlength=n.shape[-1]))


# ------------------------------------------------------------------ pilot vs full runs
def _survival(out) -> tuple[float, int]:
    m = json.loads((out / "run.json").read_text())["stages"]["prune"]
    return 1 - m["dropped"].get("semantic_duplicate", 0) / m["rows_in"], m["kept"]


def test_pilot_predicts_dedup_survival_and_size_for_each_eps(tmp_path, ray_session):
    import yaml

    from curate.app.pilot import PilotModel, plan_pilot

    pool = _dup_pool(tmp_path / "pool.parquet")
    run_pipeline(_cfg(0.01, sample_fraction=0.3, sample_seed=0), str(tmp_path / "pilot"),
                 pool=pool)
    m = PilotModel(str(tmp_path / "pilot"))
    assert m.dedup is not None and m.dedup.matches  # the re-run is the stage's rule
    table = {d["eps"]: d for d in m.dedup.table()}
    assert sorted(table) == [0.0025, 0.005, 0.01, 0.02, 0.04]
    for eps in (0.005, 0.01, 0.02):
        full = tmp_path / f"full{eps}"
        run_pipeline(_cfg(eps), str(full), pool=pool)
        d_full, kept = _survival(full)
        d = table[eps]
        assert d["high"] >= d_full >= d["low"], (eps, d, d_full)
        assert d["pilot_survival"] > d_full + 0.1  # the bias the correction removes
        p = m.predict(eps=eps)
        assert p["low"] <= kept <= p["high"], (eps, p, kept)
        # wide: it carries the extrapolation's uncertainty (docs/ARCHITECTURE.md 8.2.1)
        assert p["high"] - p["low"] < 2 * kept
        # nearer than the uncorrected one: pilot pairs / f x the pilot's survival x 0.8
        raw = 0.8 * d["pilot_survival"] * m.pool_rows / 0.3
        assert abs(p["predicted"] - kept) < abs(raw - kept)
    res = plan_pilot(str(tmp_path / "pilot"), 500)
    assert {p["eps"] for p in res["sweep"]} == set(table)
    data = yaml.safe_load((tmp_path / "pilot" / "plan" / "pipeline.yaml").read_text())
    assert data["prune"]["dedup_eps"] == 0.01  # eps stays: target_fraction hits the target
    assert data["prune"]["target_fraction"] == pytest.approx(res["chosen"]["target_fraction"])


def test_eps_alone_is_the_knob_without_dbp(tmp_path, ray_session):
    import yaml
    from typer.testing import CliRunner

    from curate.cli import app

    pool = _dup_pool(tmp_path / "pool.parquet", n_groups=500, seed=1)
    run_pipeline(_cfg(0.01, dbp=False, sample_fraction=0.4, sample_seed=1),
                 str(tmp_path / "pilot"), pool=pool)
    r = CliRunner().invoke(app, ["plan", str(tmp_path / "pilot"), "--target", "700"])
    assert r.exit_code == 0, r.output
    assert "dedup survival per eps" in r.output and "eps=0.04" in r.output
    data = yaml.safe_load((tmp_path / "pilot" / "plan" / "pipeline.yaml").read_text())
    assert data["prune"]["dedup_eps"] in (0.0025, 0.005, 0.01, 0.02, 0.04)
    assert f"eps={data['prune']['dedup_eps']:g}" in r.output.split("for 700:")[1]


def test_per_entry_survival_after_match(tmp_path, ray_session):
    """match, balance (t high: keeps all), prune: prune's survival per entry, with Wilson
    intervals, equals a count written here from the decisions."""
    from curate.app.pilot import plan_pilot

    pool = _dup_pool(tmp_path / "pool.parquet", n_groups=400, seed=2)
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(WORDS) + "\n")
    cfg = base_config(stages=["match", "balance", "prune"],
                      pool={"shard_size": 500, "sample_fraction": 0.5, "sample_seed": 0},
                      match={"metadata": str(vocab)}, balance={"t": 100000, "seed": 0},
                      prune={"k": 4, "seed": 0, "dedup_eps": 0.01})
    out = tmp_path / "pilot"
    run_pipeline(cfg, str(out), pool=pool)
    res = plan_pilot(str(out), None)
    e = pq.read_table(res["entries"]).to_pylist()
    prune = pa.concat_tables([pq.read_table(p) for p in sorted((out / "prune").glob("part-*"))])
    match = pa.concat_tables([pq.read_table(p) for p in sorted((out / "match").glob("part-*"))])
    ids = dict(zip(match["uid"].to_pylist(), match["entry_ids"].to_pylist()))
    want_in, want_kept = {}, {}
    for uid, kept in zip(prune["uid"].to_pylist(), prune["kept"].to_pylist()):
        for i in ids[uid]:
            want_in[i] = want_in.get(i, 0) + 1
            want_kept[i] = want_kept.get(i, 0) + int(kept)
    for row in e:
        i = row["entry_id"]
        assert row["prune_in"] == want_in.get(i, 0) and row["prune_kept"] == want_kept.get(i, 0)
        if row["prune_in"]:
            assert row["prune_low"] <= row["prune_survival"] <= row["prune_high"]
    assert res["entry_losses"] and res["entry_losses"][0]["stage"] == "prune"
    assert int(pc.sum(prune["kept"]).as_py()) < prune.num_rows


def test_plan_names_another_knob_when_the_chosen_one_falls_short(tmp_path, ray_session):
    """DBP's target_fraction is the knob with DBP on, capped at 1: a target beyond it gets
    a note naming the sweep's setting that reaches it (here a smaller eps)."""
    from typer.testing import CliRunner

    from curate.cli import app

    pool = _dup_pool(tmp_path / "pool.parquet", n_groups=500, seed=1)
    run_pipeline(_cfg(0.01, dbp=True, sample_fraction=0.4, sample_seed=1),
                 str(tmp_path / "pilot"), pool=pool)
    r = CliRunner().invoke(app, ["plan", str(tmp_path / "pilot"), "--target", "700"])
    assert r.exit_code == 0, r.output
    chosen = r.output.split("for 700:")[1].splitlines()[0]
    assert "target_fraction=1 " in chosen + " "
    note = next(line for line in r.output.splitlines() if "beyond what the chosen knob" in line)
    assert "the sweep reaches it with:" in note and "eps=" in note
    r = CliRunner().invoke(app, ["plan", str(tmp_path / "pilot"), "--target", "50000"])
    assert "no setting in the sweep reaches it" in r.output
