"""Worker-side steps of the prune stage: embeddings, k-means sample and assignment, the
cluster shuffle into buckets, SemDeDup and DBP selection per bucket, decisions per shard.

Plain functions of a :class:`Where` and one item (a shard or a bucket number), so the prune
stage's global steps are one engine call each. Scratch lives in ``<work>/``: the centroids,
``assign/`` (cluster and distance per row), ``bucket-NNNNN/`` (the shuffle: embeddings of the
clusters of one bucket), ``dedup/`` and ``select/`` (the uids each decision drops). DBP's
second clustering (of SemDeDup's survivors) has the same layout in ``<work>/dbp/``: its
:class:`Where` names the first clustering's ``dedup/`` as ``drop``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.core.engine import Resources
from curate.core.io import list_shards, read_table, write_parquet_atomic
from curate.core.rundir import RunDir
from curate.errors import InputError

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Where:
    """Where a prune worker reads from: small and picklable."""

    run_url: str
    #: folders of the deciding stages before prune
    deciding: tuple[str, ...]
    #: the score stage's folder whose embeddings prune clusters (None: the pool's)
    scores: str | None
    work: str
    #: a decisions folder whose uids are left out (the second clustering skips the
    #: semantic duplicates), or None
    drop: str | None = None
    #: the stage instance's name, for messages
    stage: str = "prune"


def where_for(pipeline: Any, stage: str, run_url: str, work: str) -> Where:
    """Where prune instance ``stage`` of ``pipeline`` reads its first clustering from: the
    deciding stages before it and the nearest earlier score stage's embeddings. One rule
    for the stage and for the planner's dedup model (``app/pilot_dedup``), which must read
    the rows prune read."""
    before = [pipeline.ref(n) for n in pipeline.stages[: pipeline.stages.index(stage)]]
    score = [r for r in before if r.kind == "score"]
    return Where(run_url, tuple(r.folder for r in before if r.decides),
                 score[-1].folder if score else None, work, stage=stage)


def load_embeddings(w: Where, shard: str) -> tuple[pa.Array, np.ndarray]:
    """uids and float32 L2-normalised image embeddings of the pairs reaching prune (less
    the uids of ``w.drop``'s decisions: DBP's re-clustering sees SemDeDup's survivors)."""
    from curate.stages.score import as_matrix

    rd = RunDir(w.run_url)
    surv = rd.survivors(list(w.deciding), shard, ["uid"] if w.scores else None)
    uids = surv["uid"].combine_chunks()
    if w.scores:
        s = rd.read(w.scores, shard, ["uid", "image_emb"])
        idx = pc.index_in(uids, value_set=s["uid"].combine_chunks())
        col = pc.take(s["image_emb"].combine_chunks(), idx)
    elif "image_emb" in surv.column_names:
        col = surv["image_emb"].combine_chunks()
    else:
        raise InputError("prune: needs image embeddings: run the score stage before it, or "
                         "bring an image_emb column in the pool (pool.columns.image_emb)")
    if col.null_count:
        raise InputError(f"prune: {shard}: {col.null_count} pairs have no image embedding")
    x = as_matrix(col)
    if w.drop:
        gone = read_decisions(rd, w.drop, shard)
        if gone is not None and gone.num_rows:
            keep = pc.invert(pc.is_in(uids, value_set=gone["uid"].combine_chunks()))
            uids, x = uids.filter(keep), x[keep.to_numpy(zero_copy_only=False)]
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return uids, x / np.where(norms == 0, 1, norms)


def sample_shard(w: Where, fraction: float, seed: int, shard: str) -> int:
    """Write this shard's k-means sample rows (fp16) to ``<work>/sample/<shard>``; return
    how many. On disk, not returned: the training task reads them wherever it runs, so the
    driver never holds the sample."""
    from curate.algorithms.kmeans_sample import sample_mask
    from curate.stages.score import fp16_list

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
    from curate.stages.score import as_matrix

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
    from curate.stages.score import fp16_list

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
        shard_no = pa.array(np.full(len(uids), int(shard[5:10]), np.int32))
        tagged = table.append_column("shard", shard_no)
        for j in np.unique(b):
            rows = np.flatnonzero(b == j)
            part = tagged.take(pa.array(rows)).append_column("emb", fp16_list(x[rows]))
            write_parquet_atomic(rd.fs, f"{work}/bucket-{j:05d}/{shard}", part)
    size, sums = accumulate(labels, dist, model.k)
    return size, sums, device_name(device), engine.assigned_gpus()


def _bucket(rd: RunDir, work: str, j: int, columns: list[str] | None = None
            ) -> pa.Table | None:
    folder = f"{work}/bucket-{j:05d}"
    files = list_shards(rd.fs, folder)
    if not files:
        return None
    t = pa.concat_tables([read_table(rd.fs, f"{folder}/{f}", columns) for f in files])
    return t.take(pc.sort_indices(t["uid"]))  # a fixed order, whatever the sharding


def _write_decisions(rd: RunDir, path: str, table: pa.Table) -> None:
    """Decisions sorted by source shard in small row groups, so ``process(shard)`` reads
    only its own rows (row-group statistics), never the whole pool's decisions."""
    table = table.take(pc.sort_indices(table, sort_keys=[("shard", "ascending")]))
    write_parquet_atomic(rd.fs, path, table, row_group_size=4096)


def read_decisions(rd: RunDir, folder: str, shard: str) -> pa.Table | None:
    import pyarrow.dataset as ds

    if not rd.fs.exists(folder) or not rd.fs.ls(folder):
        return None
    dataset = ds.dataset(folder, filesystem=rd.fs, format="parquet")
    return dataset.to_table(filter=ds.field("shard") == int(shard[5:10]))


def dedup_bucket(w: Where, eps: float, keep: str, seed: int, k: int, rule: str,
                 j: int) -> tuple[np.ndarray, np.ndarray]:
    """SemDeDup (``rule``: 'reference' | 'kept_only') over the clusters of one bucket;
    returns per-cluster (count, sum_dist) after."""
    from curate.algorithms.dbp import accumulate
    from curate.algorithms.semdedup import dedup_by_cluster
    from curate.stages.score import as_matrix

    rd, work = RunDir(w.run_url), w.work
    t = _bucket(rd, work, j)
    if t is None:
        return np.zeros(k, np.int64), np.zeros(k)
    shard_no = t["shard"].to_numpy()
    labels = t["cluster_id"].to_numpy()
    dist = t["dist_to_centroid"].to_numpy()
    dup = dedup_by_cluster(as_matrix(t["emb"]), labels, dist, eps, keep=keep, seed=seed,
                           block=2048, rule=rule)  # ~16 MB similarity blocks, not 64 MB
    uids = t["uid"].to_numpy(zero_copy_only=False)
    is_dup = dup >= 0
    _write_decisions(rd, f"{work}/dedup/part-{j:05d}.parquet", pa.table({
        "shard": pa.array(shard_no[is_dup], pa.int32()),
        "uid": pa.array(uids[is_dup], pa.string()),
        "duplicate_of": pa.array(uids[dup[is_dup]], pa.string())}))
    return accumulate(labels[~is_dup], dist[~is_dup], k)


def select_bucket(w: Where, quotas: np.ndarray, keep: str, seed: int, j: int) -> int:
    """DBP selection inside each cluster of one bucket; writes the uids over quota."""
    from curate.algorithms.dbp import select_in_cluster

    rd, work = RunDir(w.run_url), w.work
    t = _bucket(rd, work, j, ["uid", "cluster_id", "dist_to_centroid", "shard"])
    if t is None:
        return 0
    dup_file = f"{work}/dedup/part-{j:05d}.parquet"
    if rd.fs.exists(dup_file):  # this bucket's duplicates are all in its own file
        dups = read_table(rd.fs, dup_file, ["uid"])["uid"].combine_chunks()
        t = t.filter(pc.invert(pc.is_in(t["uid"], value_set=dups)))
    labels = t["cluster_id"].to_numpy()
    dist = t["dist_to_centroid"].to_numpy()
    uids = t["uid"].to_numpy(zero_copy_only=False)
    shard_no = t["shard"].to_numpy()
    over = []
    order = np.argsort(labels, kind="stable")
    cuts = np.flatnonzero(np.diff(labels[order])) + 1
    for rows in np.split(order, cuts) if len(order) else []:
        c = int(labels[rows[0]])
        mask = select_in_cluster(dist[rows], int(quotas[c]), keep=keep, seed=(seed, c),
                                 tiebreak=uids[rows])
        over.append(rows[~mask])
    dropped = np.concatenate(over) if over else np.zeros(0, np.int64)
    _write_decisions(rd, f"{work}/select/part-{j:05d}.parquet", pa.table({
        "shard": pa.array(shard_no[dropped], pa.int32()),
        "uid": pa.array(uids[dropped], pa.string())}))
    return len(dropped)


def cluster_table(which: str, size: np.ndarray, size_after: np.ndarray,
                  stats: dict[str, np.ndarray] | None = None,
                  quota: np.ndarray | None = None) -> pa.Table:
    """One row per cluster; ``clustering`` says which clustering the rows describe:
    'dedup' (SemDeDup's alone), 'dbp' (DBP's re-clustering, or DBP alone), 'shared' (both
    steps on one clustering). Without ``stats`` (SemDeDup's clustering when DBP
    re-clustered): sizes only."""
    k = len(size)
    cols = {"cluster_id": pa.array(np.arange(k), pa.int32()),
            "clustering": pa.array([which] * k, pa.string()),
            "size": pa.array(size, pa.int64()),
            "size_after_dedup": pa.array(size_after, pa.int64())}
    if stats is not None:
        cols.update({name: pa.array(stats[name], pa.float64())
                     for name in ("d_intra", "d_inter", "complexity")})
        cols["quota"] = pa.array(size_after if quota is None else quota, pa.int64())
    return pa.table(cols)


# ------------------------------------------------------------ the k-means steps' plumbing
#: the share of a GPU each assignment task asks for when the cluster has GPUs (8 per GPU:
#: reading embeddings, not the search, bounds an assignment task)
ASSIGN_GPU_SHARE = 0.125


def add_count(acc: int, item: Any, n: int) -> int:
    return acc + n


#: assignment tasks: one CPU, and a share of a GPU when the cluster has one
ASSIGN = Resources(num_cpus=1, gpus_if_any=ASSIGN_GPU_SHARE)


def assigned0() -> dict[str, Any]:
    return {"size": 0, "dist": 0.0, "devices": set(), "gpus": 0.0}


def assign_add(acc: dict[str, Any], item: Any, r: tuple[Any, ...]) -> dict[str, Any]:
    """Sum the per-cluster counts and distances; note the devices and GPU shares used."""
    size, dist, device, gpus = r
    acc["size"] = acc["size"] + size
    acc["dist"] = acc["dist"] + dist
    acc["devices"].add(device)
    acc["gpus"] = max(acc["gpus"], gpus)
    return acc
