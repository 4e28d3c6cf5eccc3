"""prune as a pipeline stage on a pool that brings its own embeddings."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from conftest import base_config

from curate.driver import run_pipeline


def _planted(n_clusters=6, per=40, d=16, dups=10, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_clusters, d))
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    x = np.repeat(centers, per, axis=0) + 0.15 * rng.normal(size=(n_clusters * per, d))
    truth = np.repeat(np.arange(n_clusters), per)
    src = rng.choice(len(x), dups, replace=False)
    x = np.concatenate([x, x[src] + 1e-4 * rng.normal(size=(dups, d))])
    truth = np.concatenate([truth, truth[src]])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), truth, src


def _pool(tmp_path, x) -> str:
    p = tmp_path / "pool.parquet"
    emb = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1])
    pq.write_table(pa.table({"caption": [f"pair {i}" for i in range(len(x))],
                             "image_emb": emb}), p)
    return str(p)


def _run(tmp_path, name, x, shard_size, **prune):
    out = tmp_path / name
    cfg = base_config(stages=["prune"], pool={"shard_size": shard_size},
                      prune={"k": 6, "niter": 20, "seed": 0, **prune})
    m = run_pipeline(cfg, str(out), pool=_pool(tmp_path, x))
    t = pa.concat_tables([pq.read_table(p) for p in sorted((out / "prune").glob("part-*"))])
    pool = pq.read_table(out / "pool", columns=["uid", "caption"])
    idx = pc.index_in(t["uid"], value_set=pool["uid"])
    t = t.append_column("caption", pc.take(pool["caption"], idx))
    return t.sort_by("caption"), m, out


def test_clusters_dedup_and_shard_independence(tmp_path, ray_session):
    from sklearn.metrics import adjusted_rand_score

    x, truth, src = _planted()
    a, m, out = _run(tmp_path, "one", x, 1000, dedup_eps=0.01)
    b, _, _ = _run(tmp_path, "many", x, 37, dedup_eps=0.01)
    assert a.select(["caption", "cluster_id", "kept", "duplicate_of"]).equals(
        b.select(["caption", "cluster_id", "kept", "duplicate_of"]))
    order = np.argsort([int(c.split()[1]) for c in a["caption"].to_pylist()])
    labels = a["cluster_id"].to_numpy()[order]
    assert adjusted_rand_score(truth, labels) >= 0.99
    dropped = a.filter(pc.invert(a["kept"]))
    assert dropped.num_rows == len(src)  # exactly the planted near-duplicates
    assert set(dropped["reason"].to_pylist()) == {"semantic_duplicate"}
    assert dropped["detail"].equals(dropped["duplicate_of"])
    clusters = pq.read_table(out / "prune" / "clusters.parquet")
    assert clusters["size"].to_numpy().sum() == len(x)
    assert clusters["size_after_dedup"].to_numpy().sum() == len(x) - len(src)
    assert m["stages"]["prune"]["global"]["kmeans_device"] == "cpu"


def test_dbp_target_fraction(tmp_path, ray_session):
    x, _, _ = _planted(dups=0)
    t, m, out = _run(tmp_path, "dbp", x, 50, dbp=True, target_fraction=0.5,
                     quota_rounding="largest_remainder")  # DBP's rint may miss the total
    clusters = pq.read_table(out / "prune" / "clusters.parquet")
    assert set(clusters["clustering"].to_pylist()) == {"dbp"}  # DBP alone: one clustering
    quota = clusters["quota"].to_numpy()
    assert quota.sum() == round(0.5 * len(x)) == pc.sum(t["kept"]).as_py()
    assert (quota <= clusters["size"].to_numpy()).all()
    per = {c: 0 for c in range(6)}
    for c, k in zip(t["cluster_id"].to_pylist(), t["kept"].to_pylist()):
        per[c] += k
    assert [per[c] for c in range(6)] == quota.tolist()
    # inside a cluster the kept ones are the farthest from the centroid ("hard")
    for c in range(6):
        rows = t.filter(pc.equal(t["cluster_id"], c))
        kept = rows.filter(rows["kept"])["dist_to_centroid"].to_numpy()
        gone = rows.filter(pc.invert(rows["kept"]))["dist_to_centroid"].to_numpy()
        if len(kept) and len(gone):
            assert kept.min() >= gone.max()
    assert set(t.filter(pc.invert(t["kept"]))["reason"].to_pylist()) == {"over_cluster_quota"}
