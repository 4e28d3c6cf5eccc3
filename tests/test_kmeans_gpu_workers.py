"""k-means on GPU workers, tested without a GPU (issue 12, item 1).

Training and assignment are engine tasks that ask Ray for a GPU when the cluster reports
one. On this CPU machine a Ray started with ``num_gpus=1`` reports a (fake) GPU: the tasks
must then request it, find that FAISS sees none, fall back to CPU and give exactly the CPU
path's results. That Ray runs in a subprocess so it does not collide with the session's
Ray (tests/conftest.py ``ray_session``: one Ray per process).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import base_config

from curate.algorithms.kmeans import KMeansModel, gpu_count, train_kmeans
from curate.core import engine
from curate.core.engine import Resources

PRUNE = {"k": 6, "niter": 20, "seed": 0, "dedup_eps": 0.01, "dbp": True,
         "target_fraction": 0.5}


def _planted(n_clusters=6, per=40, d=16, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_clusters, d))
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    x = np.repeat(centers, per, axis=0) + 0.15 * rng.normal(size=(n_clusters * per, d))
    x = np.concatenate([x, x[:8] + 1e-4 * rng.normal(size=(8, d))])  # near-duplicates
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _pool(path: Path, x: np.ndarray) -> str:
    emb = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1])
    pq.write_table(pa.table({"caption": [f"pair {i}" for i in range(len(x))],
                             "image_emb": emb}), path)
    return str(path)


def _prune_rows(out: Path) -> pa.Table:
    t = pa.concat_tables([pq.read_table(p) for p in sorted((out / "prune").glob("part-*"))])
    return t.sort_by("uid").select(["uid", "cluster_id", "dist_to_centroid",
                                    "dedup_cluster_id", "duplicate_of", "kept"])


_FAKE_GPU_RUN = """
import sys
sys.path.insert(0, sys.argv[1])
from conftest import base_config
from curate.core import engine
from curate.driver import run_pipeline
import json
engine.init(num_cpus=2, num_gpus=1)  # a GPU that Ray reports and FAISS cannot see
cfg = base_config(stages=["prune"], pool={"shard_size": 50}, prune=json.loads(sys.argv[4]))
run_pipeline(cfg, sys.argv[3], pool=sys.argv[2])
engine.shutdown()
"""


def test_tasks_request_a_gpu_fall_back_to_cpu_and_match_the_cpu_path(tmp_path, ray_session):
    from curate.driver import run_pipeline

    pool = _pool(tmp_path / "pool.parquet", _planted())
    fake = tmp_path / "fake_gpu"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # its own Ray, not the session's; a short path (Ray's sockets: <= 107 bytes)
    ray_tmp = tempfile.mkdtemp(prefix="crg-")
    env["CURATE_RAY_TMP"] = ray_tmp
    try:
        r = subprocess.run([sys.executable, "-c", _FAKE_GPU_RUN, str(Path(__file__).parent),
                            pool, str(fake), json.dumps(PRUNE)], env=env, capture_output=True,
                           text=True, timeout=600)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert r.returncode == 0, r.stderr[-3000:]

    cpu = tmp_path / "cpu"  # the session's Ray: no GPU
    run_pipeline(base_config(stages=["prune"], pool={"shard_size": 50}, prune=PRUNE),
                 str(cpu), pool=pool)

    steps = json.loads((fake / "run.json").read_text())["stages"]["prune"]["steps"]
    cpu_steps = json.loads((cpu / "run.json").read_text())["stages"]["prune"]["steps"]
    real_gpu = gpu_count() > 0  # this test also runs where there is a GPU
    for name, share in (("train", 1.0), ("assign", 0.125), ("dbp_train", 1.0),
                        ("dbp_assign", 0.125)):
        info = steps[name]["info"]
        assert info["gpus"] == share, (name, info)  # Ray gave the task a GPU (share)
        # FAISS sees no GPU here: the task fell back to CPU
        assert info["device"] == ("cuda" if real_gpu else "cpu"), (name, info)
        if not real_gpu:
            cpu_info = cpu_steps[name]["info"]  # the session's Ray: no GPU asked or given
            assert cpu_info["gpus"] == 0 and cpu_info["device"] == "cpu", (name, cpu_info)
    if real_gpu:  # GPU vs CPU: within the bounds, not bit-equal
        a, b = _prune_rows(fake), _prune_rows(cpu)
        assert (a["dedup_cluster_id"].to_numpy() == b["dedup_cluster_id"].to_numpy()).mean() \
            >= 0.999
        return
    assert steps["train"]["info"]["objective"] == cpu_steps["train"]["info"]["objective"]
    assert _prune_rows(fake).equals(_prune_rows(cpu))


def test_gpu_share_is_requested_only_when_the_cluster_has_gpus(monkeypatch):
    monkeypatch.setattr(engine, "cluster_gpus", lambda: 0)
    assert "num_gpus" not in engine.task_options(Resources(num_cpus=1, gpus_if_any=0.125))
    monkeypatch.setattr(engine, "cluster_gpus", lambda: 2)
    assert engine.task_options(Resources(num_cpus=1, gpus_if_any=0.125))["num_gpus"] == 0.125
    assert "num_gpus" not in engine.task_options(Resources(num_cpus=1))
    # an explicit request wins over the conditional one
    assert engine.task_options(Resources(num_gpus=1, gpus_if_any=0.5))["num_gpus"] == 1


def test_prune_steps_declare_gpu_shares(tmp_path):
    from curate.stages.base import GlobalStep, StageSpec
    from curate.stages.prune import PruneStage
    from curate.stages.prune import steps as prune_steps
    from curate.stages.runtime import build

    cfg = base_config(stages=["prune"], prune=PRUNE)
    stage = build(StageSpec("prune", str(tmp_path), cfg.dump(), "fp"), PruneStage)
    steps = {s.name: s for s in stage.steps() if isinstance(s, GlobalStep)}
    assert [n for n in steps if n.endswith(("sample", "train", "assign"))] == [
        "sample", "train", "assign", "dbp_sample", "dbp_train", "dbp_assign"]
    for name in ("train", "dbp_train"):
        assert steps[name].resources.gpus_if_any == 1
    for name in ("assign", "dbp_assign"):
        assert steps[name].resources is prune_steps.ASSIGN
        assert prune_steps.ASSIGN.gpus_if_any == prune_steps.ASSIGN_GPU_SHARE
        assert prune_steps.ASSIGN.num_cpus == 1


def test_assign_on_gpu_falls_back_to_the_same_labels():
    x = _planted(per=100)
    model = train_kmeans(x, 6, niter=10, seed=0)
    a = model.assign(x)
    b = model.assign(x, device="gpu")  # GPU where FAISS sees one, else CPU
    if gpu_count() == 0:
        assert all(np.array_equal(u, v) for u, v in zip(a, b))
    else:
        assert (a[0] == b[0]).mean() >= 0.999
    again = train_kmeans(x, 6, niter=10, seed=0)  # deterministic per seed and device
    assert np.array_equal(again.centroids, model.centroids)
    assert isinstance(model, KMeansModel) and model.device in ("cpu", "gpu")


@pytest.mark.skipif(gpu_count() == 0, reason="needs a GPU")
def test_gpu_and_cpu_training_agree_on_separated_data():
    x = _planted(n_clusters=20, per=500, d=64, seed=1)
    g = train_kmeans(x, 20, niter=20, seed=0, use_gpu=True)
    c = train_kmeans(x, 20, niter=20, seed=0, use_gpu=False)
    assert abs(g.objective - c.objective) <= 0.01 * abs(c.objective)
    assert (g.assign(x)[0] == c.assign(x)[0]).mean() >= 0.999
