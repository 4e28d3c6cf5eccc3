"""DataComp's image-based filter on synthetic embeddings, against references computed here:
FAISS k-means set up as DataComp's ``train_kmeans`` (baselines/image_based_clustering.py)
and a brute-force argmax inner product (``get_centroid_ids_gpu``) with the same centroids;
a pool pair is kept when its centroid is among the reference embeddings' centroids
(``load_uids_with_image_filter``)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import base_config
from helpers import fsl, read_parts

from curate.core.rundir import step_info
from curate.driver import run_pipeline


def _data(tmp_path, n=240, d=8, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(6, d)).astype(np.float32) * 3
    x = centers[rng.integers(0, 6, n)] + 0.3 * rng.normal(size=(n, d)).astype(np.float32)
    pool = tmp_path / "pool.parquet"
    pq.write_table(pa.table({"caption": [f"pair {i}" for i in range(n)],
                             "image_emb": fsl(x)}), pool)
    ref = centers[[0, 0, 1]] + 0.3 * rng.normal(size=(3, d)).astype(np.float32)
    refs = tmp_path / "refs"
    refs.mkdir()
    pq.write_table(pa.table({"image_emb": fsl(ref[:2])}), refs / "a.parquet")
    pq.write_table(pa.table({"image_emb": fsl(ref[2:])}), refs / "b.parquet")
    return pool, refs, x, ref


def _expected(x: np.ndarray, ref: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Brute force, float64: argmax_j <v, c_j> for the pool and the reference."""
    lab = np.argmax(x.astype(np.float64) @ c.T.astype(np.float64), axis=1)
    target = np.unique(np.argmax(ref.astype(np.float64) @ c.T.astype(np.float64), axis=1))
    return np.isin(lab, target)


def _kept_by_caption(out) -> dict[str, bool]:
    t = read_parts(out / "datacomp_image")
    p = read_parts(out / "pool")
    cap = dict(zip(p["uid"].to_pylist(), p["caption"].to_pylist()))
    return {cap[u]: k for u, k in zip(t["uid"].to_pylist(), t["kept"].to_pylist())}


def test_trained_centroids_match_datacomps_faiss_setup(tmp_path, ray_session):
    import faiss

    pool, refs, x, ref = _data(tmp_path)
    cfg = base_config(stages=["datacomp_image"], pool={"shard_size": 50},
                      datacomp_image={"reference": str(refs), "k": 6, "use_gpu": False})
    out = tmp_path / "run"
    m = run_pipeline(cfg, str(out), pool=str(pool))

    # DataComp's train_kmeans, written out (on CPU: IndexFlatL2 for GpuIndexFlatL2)
    cl = faiss.Clustering(8, 6)
    cl.niter = 20
    cl.seed = 0
    cl.max_points_per_centroid = 10000000
    cl.train(np.ascontiguousarray(x, np.float32), faiss.IndexFlatL2(8))
    c = faiss.vector_float_to_array(cl.centroids).reshape(6, 8)
    got = pq.read_table(out / "datacomp_image" / "centroids.parquet")
    np.testing.assert_allclose(np.array(got["centroid"].to_pylist()), c, atol=1e-5)

    want = _expected(x, ref, c)
    kept = _kept_by_caption(out)
    assert [kept[f"pair {i}"] for i in range(len(x))] == want.tolist()
    assert 0 < want.sum() < len(x)
    info = {**step_info(m["stages"]["datacomp_image"], "train"),
            **step_info(m["stages"]["datacomp_image"], "reference")}
    assert info["k"] == 6 and info["n_train"] == len(x) and info["reference_clusters"] >= 1


def test_given_centroids_assign_by_inner_product_not_l2(tmp_path, ray_session):
    """Unnormalised centroids: DataComp's argmax <v, c> differs from the L2-nearest one."""
    pool, refs, x, ref = _data(tmp_path, seed=1)
    rng = np.random.default_rng(5)
    c = rng.normal(size=(5, 8)).astype(np.float32) * rng.uniform(0.2, 4, (5, 1)).astype(
        np.float32)
    np.save(tmp_path / "c.npy", c)
    l2 = np.argmin(((x[:, None, :] - c[None]) ** 2).sum(-1), axis=1)
    ip = np.argmax(x @ c.T, axis=1)
    assert (l2 != ip).any()  # the two rules disagree on this data
    cfg = base_config(stages=["datacomp_image"], pool={"shard_size": 70},
                      datacomp_image={"reference": str(refs / "*.parquet"),
                                      "centroids": str(tmp_path / "c.npy")})
    out = tmp_path / "run"
    m = run_pipeline(cfg, str(out), pool=str(pool))
    kept = _kept_by_caption(out)
    assert [kept[f"pair {i}"] for i in range(len(x))] == _expected(x, ref, c).tolist()
    t = read_parts(out / "datacomp_image")
    assert set(t.filter(pc.invert(t["kept"]))["reason"].to_pylist()) <= {
        "no_reference_cluster"}
    rc = pq.read_table(out / "datacomp_image" / "reference_clusters.parquet")
    assert sum(rc["references"].to_pylist()) == len(ref)
    assert step_info(m["stages"]["datacomp_image"], "train")["n_train"] == 0


def test_algorithms_against_brute_force():
    from curate.algorithms.datacomp_kmeans import centroid_model, keep_mask, reference_clusters

    rng = np.random.default_rng(2)
    c = rng.normal(size=(7, 5)).astype(np.float32)
    x = rng.normal(size=(300, 5)).astype(np.float32)
    ref = rng.normal(size=(4, 5)).astype(np.float32)
    model = centroid_model(c)
    counts = reference_clusters(model, ref)
    assert counts.sum() == 4
    kept, labels = keep_mask(model, x, counts > 0)
    np.testing.assert_array_equal(labels, np.argmax(x.astype(np.float64) @ c.T, axis=1))
    np.testing.assert_array_equal(kept, _expected(x, ref, c))


def test_missing_reference_is_a_config_error(tmp_path, ray_session):
    from curate.errors import ConfigError

    pool, _, _, _ = _data(tmp_path, n=20)
    cfg = base_config(stages=["datacomp_image"], datacomp_image={"k": 2})
    with pytest.raises(ConfigError, match="reference"):
        run_pipeline(cfg, str(tmp_path / "run"), pool=str(pool))
