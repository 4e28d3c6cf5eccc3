"""The worker side of prune's k-means steps, for either clustering (its :class:`Where`):
draw the sample, train on it, assign every pair and shuffle it into bucket files.

Scratch in ``<work>/``: ``sample/<shard>`` (the sample rows, fp16), ``centroids.parquet``
(the model, footer: device, objective, iterations), ``assign/<shard>`` (cluster and
distance per pair) and ``bucket-NNNNN/<shard>`` (the shuffle: a bucket holds the rows of
the clusters ``cluster_id % B`` = NNNNN, with their embedding and source shard).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from curate.algorithms.embeddings import as_matrix, fp16_list
from curate.core.io import read_table, shard_index, write_parquet_atomic
from curate.core.rundir import RunDir
from curate.errors import InputError
from curate.stages.prune.clustering import Where
from curate.stages.prune.embeddings import load_embeddings


def sample_shard(w: Where, fraction: float, seed: int, shard: str) -> int:
    """Write this shard's k-means sample rows (fp16) to ``<work>/sample/<shard>``; return
    how many. On disk, not returned: the training task reads them wherever it runs, so the
    driver never holds the sample."""
    from curate.algorithms.kmeans_sample import sample_mask

    uids, x = load_embeddings(w, shard)
    x = x[sample_mask(uids.to_numpy(zero_copy_only=False), fraction, seed)]
    if len(x):  # a shard whose pairs were all dropped may not even know the width
        rd = RunDir(w.run_url)
        write_parquet_atomic(rd.fs, f"{w.work}/sample/{shard}", pa.table({"emb": fp16_list(x)}))
    return len(x)


def device_name(device: str) -> str:
    """How run.json names a FAISS device: 'cuda' | 'cpu'."""
    return "cuda" if device == "gpu" else "cpu"


def fit_kmeans(w: Where, shards: list[str], k: int, niter: int, seed: int, cap: int,
               publish: str | None) -> dict[str, Any]:
    """Train k-means on the sample of ``shards`` (in shard order: a fixed row order) on this
    worker's device — the GPU Ray gave it when FAISS sees one, else its CPUs — and write the
    model to ``<work>/centroids.parquet`` (and a copy to ``publish``). A task, not the
    driver's commit, so a cluster whose head node has no GPU still trains on one."""
    from curate.algorithms.kmeans import train_kmeans
    from curate.core import engine

    rd = RunDir(w.run_url)
    parts = [as_matrix(read_table(rd.fs, f"{w.work}/sample/{s}")["emb"])
             for s in sorted(shards) if rd.fs.exists(f"{w.work}/sample/{s}")]
    sample = (np.concatenate(parts).astype(np.float32) if parts
              else np.zeros((0, 0), np.float32))
    del parts
    if len(sample) < k:
        raise InputError(f"{w.stage}: the k-means sample has {len(sample)} rows, fewer "
                         f"than k={k}; raise {w.stage}.sample_size")
    model = train_kmeans(sample, k, niter=niter, seed=seed, threads=engine.assigned_cpus(),
                         max_points_per_centroid=max(1, cap // k))  # threads: what Ray gave
    del sample
    save_model(rd, w.work, model)
    if publish:
        write_parquet_atomic(rd.fs, publish, read_table(rd.fs, f"{w.work}/centroids.parquet"))
    return {"device": device_name(model.device), "kmeans_device": model.device, "d": model.d,
            "sample": int(model.n_train), "objective": float(model.objective),
            "gpus": engine.assigned_gpus()}


#: the model last loaded in this worker process, by its scratch folder
_MODELS: dict[str, Any] = {}


def save_model(rd: RunDir, work: str, model: Any) -> None:
    write_parquet_atomic(rd.fs, f"{work}/centroids.parquet", pa.table({
        "cluster_id": pa.array(np.arange(model.k), pa.int32()),
        "centroid": pa.FixedSizeListArray.from_arrays(pa.array(model.centroids.reshape(-1)),
                                                      model.d)}),
        meta={"device": model.device, "objective": model.objective,
              "iterations": model.iterations})


def load_model(w: Where) -> Any:
    """The trained k-means of this input, read once per worker process."""
    from curate.algorithms.kmeans_model import KMeansModel
    from curate.core.io import read_shard_meta

    if w.work not in _MODELS:
        rd = RunDir(w.run_url)
        path = f"{w.work}/centroids.parquet"
        meta = read_shard_meta(rd.fs, path) or {}
        t = read_table(rd.fs, path)
        c = t["centroid"].combine_chunks()
        centroids = c.values.to_numpy().reshape(len(c), -1).astype(np.float32)
        _MODELS.clear()
        _MODELS[w.work] = KMeansModel(centroids, meta.get("device", "cpu"),
                                      float(meta.get("objective", 0.0)),
                                      int(meta.get("iterations", 0)))
    return _MODELS[w.work]


def assign_shard(w: Where, buckets: int, shard: str) -> tuple[Any, ...]:
    """Labels and distances of one shard, written to assign/ and to the bucket files.
    Returns per-cluster (count, sum_dist), the device used and the GPUs Ray gave: a GPU
    where FAISS sees one, whichever device trained the model (same labels either way:
    :mod:`curate.algorithms.kmeans_model`)."""
    from curate.algorithms.dbp import accumulate
    from curate.algorithms.kmeans_device import resolve_device
    from curate.core import engine

    rd = RunDir(w.run_url)
    work = w.work
    model = load_model(w)
    uids, x = load_embeddings(w, shard)
    if len(uids) == 0:  # every pair of this shard was dropped before prune
        x = np.zeros((0, model.d), np.float32)
    device = resolve_device(None)
    labels, sims = model.assign(x, device=device)
    dist = (1.0 - sims).astype(np.float32)
    table = pa.table({"uid": uids, "cluster_id": pa.array(labels, pa.int32()),
                      "dist_to_centroid": pa.array(dist, pa.float32())})
    write_parquet_atomic(rd.fs, f"{work}/assign/{shard}", table)
    if buckets:
        b = labels % buckets
        shard_no = pa.array(np.full(len(uids), shard_index(shard), np.int32))
        tagged = table.append_column("shard", shard_no)
        for j in np.unique(b):
            rows = np.flatnonzero(b == j)
            part = tagged.take(pa.array(rows)).append_column("emb", fp16_list(x[rows]))
            write_parquet_atomic(rd.fs, f"{work}/bucket-{j:05d}/{shard}", part)
    size, sums = accumulate(labels, dist, model.k)
    return size, sums, device_name(device), engine.assigned_gpus()
