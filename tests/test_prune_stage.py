"""prune as a pipeline stage on a pool that brings its own embeddings."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from conftest import base_config

from curate.core.rundir import step_info
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
    assert step_info(m["stages"]["prune"], "train")["kmeans_device"] == "cpu"


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


def test_preflight_needs_embeddings_from_score_or_the_pool(tmp_path):
    """Checked before Ray starts: a pool without image_emb and no score stage before prune
    is one line naming the instance; the pool's column or an earlier score stage is enough."""
    from curate.stages.preflight import preflight
    from curate.stages.registry import parse_pipeline

    bare = tmp_path / "bare.parquet"
    pq.write_table(pa.table({"url": ["http://127.0.0.1:9/a.jpg"], "caption": ["a dog"]}), bare)
    with_emb = _pool(tmp_path, np.ones((2, 4), np.float32))

    def problems(pool, stages, **sections):
        cfg = parse_pipeline({"stages": stages, "pool": {"shard_size": 8}, **sections})
        return [p for p in preflight(cfg, str(tmp_path / "run"), str(pool))
                if p.startswith("prune")]

    found = problems(bare, ["prune_b"], prune_b={"kind": "prune", "k": 2})
    assert len(found) == 1 and found[0].startswith("prune_b: needs image embeddings"), found
    assert "image_emb" in found[0]
    assert problems(with_emb, ["prune"], prune={"k": 2}) == []
    assert problems(bare, ["score", "prune"], prune={"k": 2}) == []


def test_the_reclustering_reads_the_first_ones_input_less_its_duplicates():
    """One value per clustering: DBP's re-clustering has its own step names, k and scratch
    folder under the first one's, and leaves out the first one's dedup decisions."""
    from curate.stages.prune.clustering import Where, clusterings
    from curate.stages.prune.config import PruneConfig

    alone = clusterings(PruneConfig(k=8, dbp=True, target_fraction=0.5))
    assert [c.name for c in alone] == ["first"]
    first, again = clusterings(PruneConfig(k=8, dbp_k=3, dedup_eps=0.1, dbp=True,
                                           target_fraction=0.5))
    assert (first.k, again.k) == (8, 3)
    assert [again.step(s) for s in ("sample", "train", "assign")] == [
        "dbp_sample", "dbp_train", "dbp_assign"]
    w = Where("run", ("match",), None, "run/prune/_work/abc", stage="p")
    assert first.where(w) == w
    assert again.where(w) == Where("run", ("match",), None, "run/prune/_work/abc/dbp",
                                   drop="run/prune/_work/abc/dedup", stage="p")
    state = {"count": {"n": 100}, "dedup": {"deduplicated_pairs": 90},
             "train": {"buckets": 4}, "dbp_train": {"buckets": 2}}
    assert (first.pairs(state), again.pairs(state)) == (100, 90)
    assert (first.buckets(state), again.buckets(state)) == (4, 2)
