"""DBP as its official code runs it, through the prune stage: SemDeDup on a first clustering,
then the *deduplicated* pairs clustered again (``dbp_k``), complexity and QP quotas on that
second clustering (``dbp_clustering: recluster``, the default), versus one shared clustering
(``dbp_clustering: dedup_clusters``). Which clustering each step used shows in the outputs:
``clusters.parquet`` (column ``clustering``), ``dedup_clusters.parquet``, and the per-pair
``cluster_id`` / ``dedup_cluster_id``."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import base_config
from test_dbp_quota import pruning_qp

from curate.core.rundir import step_info
from curate.driver import run_pipeline


def _pool_with_duplicate_heavy_clusters(tmp_path, d=16, seed=0):
    """6 concepts x 40 pairs, plus 3 items of concept 0 and 2 of concept 3 copied 25 times
    each (cos > 0.9999 to their original): two clusters dominated by duplicates."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(6, d))
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    x = np.repeat(centers, 40, axis=0) + 0.2 * rng.normal(size=(240, d))
    src = np.array([0, 1, 2, 120, 121])
    copies = np.repeat(x[src], 25, axis=0) + 1e-4 * rng.normal(size=(125, d))
    x = np.concatenate([x, copies])
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    p = tmp_path / "pool.parquet"
    pq.write_table(pa.table({
        "caption": [f"pair {i}" for i in range(len(x))],
        "image_emb": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), d)}), p)
    return str(p), len(x), len(copies)


def _run(tmp_path, name, shard_size=60, **prune):
    pool, n, n_dups = _pool_with_duplicate_heavy_clusters(tmp_path)
    out = tmp_path / name
    cfg = base_config(stages=["prune"], pool={"shard_size": shard_size},
                      prune={"k": 6, "niter": 20, "seed": 0, "dedup_eps": 0.01, "dbp": True,
                             "target_fraction": 0.5, **prune})
    m = run_pipeline(cfg, str(out), pool=pool)
    t = pa.concat_tables([pq.read_table(f) for f in sorted((out / "prune").glob("part-*"))])
    return t, m, out, n, n_dups


@pytest.mark.usefixtures("ray_session")
def test_recluster_flow(tmp_path):
    t, m, out, n, n_dups = _run(tmp_path, "two", dbp_k=4)
    rec = m["stages"]["prune"]
    # each clustering's info under its own step, with the same keys
    first, again = step_info(rec, "train"), step_info(rec, "dbp_train")
    assert first["k"] == 6 and again["k"] == 4
    assert step_info(rec, "clusters")["clustering"] == "dbp"
    assert step_info(rec, "dbp_sample")["sampled"] == again["sample"] == n - n_dups
    assert step_info(rec, "assign")["assigned_pairs"] == n
    assert step_info(rec, "dbp_assign")["assigned_pairs"] == n - n_dups
    is_dup = pc.fill_null(pc.equal(t["reason"], "semantic_duplicate"), False).to_numpy(
        zero_copy_only=False)
    assert is_dup.sum() == n_dups  # one pair of each group of 26 near-copies stays
    # SemDeDup's clustering: all pairs, sizes before and after dedup
    first = pq.read_table(out / "prune" / "dedup_clusters.parquet")
    assert first.num_rows == 6 and set(first["clustering"].to_pylist()) == {"dedup"}
    assert first["size"].to_numpy().sum() == n
    assert first["size_after_dedup"].to_numpy().sum() == n - n_dups
    dedup_id = t["dedup_cluster_id"].to_numpy()
    np.testing.assert_array_equal(np.bincount(dedup_id, minlength=6), first["size"].to_numpy())
    # DBP's clustering: the survivors only, dbp_k clusters
    cl = pq.read_table(out / "prune" / "clusters.parquet")
    assert cl.num_rows == 4 and set(cl["clustering"].to_pylist()) == {"dbp"}
    size = cl["size"].to_numpy()
    assert size.sum() == n - n_dups and (cl["size_after_dedup"].to_numpy() == size).all()
    np.testing.assert_array_equal(pc.is_null(t["cluster_id"]).to_numpy(zero_copy_only=False),
                                  is_dup)  # no id in DBP's clustering for the duplicates
    surv = t.filter(pc.is_valid(t["cluster_id"]))
    cid = surv["cluster_id"].to_numpy()
    dist = surv["dist_to_centroid"].to_numpy().astype(np.float64)
    np.testing.assert_array_equal(np.bincount(cid, minlength=4), size)
    # complexity from the second clustering: d_intra = mean distance of its members
    np.testing.assert_allclose(cl["d_intra"].to_numpy(),
                               np.bincount(cid, weights=dist, minlength=4) / size, rtol=1e-5)
    np.testing.assert_allclose(cl["complexity"].to_numpy(),
                               cl["d_intra"].to_numpy() * cl["d_inter"].to_numpy())
    # quotas: DBP's QP on those clusters, solved here with SciPy, then rint
    target = int(0.5 * (n - n_dups))
    x = pruning_qp(cl["complexity"].to_numpy(), size, target, 0.5, 0.5)
    sure = np.abs(x - np.floor(x) - 0.5) > 1e-4  # rint undecidable at SLSQP's accuracy
    np.testing.assert_array_equal(cl["quota"].to_numpy()[sure], np.rint(x)[sure])
    kept = surv["kept"].to_numpy(zero_copy_only=False)
    np.testing.assert_array_equal(np.bincount(cid[kept], minlength=4), cl["quota"].to_numpy())
    for c in range(4):  # 'hard': the farthest from the (second) centroid are kept
        k_, g_ = dist[(cid == c) & kept], dist[(cid == c) & ~kept]
        if len(k_) and len(g_):
            assert k_.min() >= g_.max()
    over = t.filter(pc.equal(t["reason"], "over_cluster_quota"))
    assert over.num_rows == (n - n_dups) - int(cl["quota"].to_numpy().sum())


@pytest.mark.usefixtures("ray_session")
def test_shared_clustering_option(tmp_path):
    t, m, out, n, n_dups = _run(tmp_path, "one", dbp_clustering="dedup_clusters",
                                quota_solver="waterfill", quota_rounding="largest_remainder")
    assert not (out / "prune" / "dedup_clusters.parquet").exists()
    cl = pq.read_table(out / "prune" / "clusters.parquet")
    assert cl.num_rows == 6 and set(cl["clustering"].to_pylist()) == {"shared"}
    assert cl["size"].to_numpy().sum() == n
    assert cl["size_after_dedup"].to_numpy().sum() == n - n_dups
    assert t["cluster_id"].equals(t["dedup_cluster_id"]) and t["cluster_id"].null_count == 0
    assert cl["quota"].to_numpy().sum() == int(0.5 * (n - n_dups))  # exact total
    assert "dbp_train" not in m["stages"]["prune"]["steps"]


@pytest.mark.usefixtures("ray_session")
def test_recluster_does_not_depend_on_sharding(tmp_path):
    """The second clustering's sample is uid-hashed and its buckets sorted by uid, like the
    first's: other shard boundaries, the same decisions and clusters."""
    cols = ["uid", "cluster_id", "dedup_cluster_id", "duplicate_of", "kept", "reason"]
    a, _, out_a, _, _ = _run(tmp_path, "a", 60, dbp_k=4)
    b, _, out_b, _, _ = _run(tmp_path, "b", 37, dbp_k=4)
    assert a.select(cols).sort_by("uid").equals(b.select(cols).sort_by("uid"))
    for f in ("clusters.parquet", "dedup_clusters.parquet"):
        assert pq.read_table(out_a / "prune" / f).equals(pq.read_table(out_b / "prune" / f))
