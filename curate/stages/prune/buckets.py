"""SemDeDup and DBP's selection, one bucket of clusters at a time, and the decisions files
they write.

The assignment step shuffled every pair into one of B bucket files by ``cluster_id % B``
(:mod:`curate.stages.prune.kmeans`), so a task holds whole clusters and never the pool.
A bucket's rows are sorted by uid before either rule runs, so a decision does not depend on
how the pool was sharded. Decisions are the uids each rule drops, in ``<work>/dedup/`` and
``<work>/select/`` (``part-NNNNN.parquet`` per bucket, with the pair's source shard), read
back per pool shard by the shard step.
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.core.io import list_shards, read_table, shard_index, write_parquet_atomic
from curate.core.rundir import RunDir
from curate.stages.prune.clustering import Where

log = logging.getLogger(__name__)


def n_buckets(k: int, n_total: int, d: int, cpus: int, budget: int = 32 << 20) -> int:
    """Buckets for the cluster shuffle: enough that one bucket's rows (fp16 embedding +
    uid + a few numbers) fit ``budget`` bytes, so a dedup task's memory does not grow with
    the pool. Capped at k: beyond that a bucket is one cluster (n/k rows, inherent to
    SemDeDup; scale k with the pool)."""
    per_row = 6 * d + 256
    want = max(4 * cpus, -(-n_total * per_row // budget))
    if want > k and n_total * per_row // k > budget:
        log.warning("prune: clusters average %d rows; dedup memory grows with cluster size: "
                    "raise prune.k for a pool this large", n_total // k)
    return int(min(k, want))


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
    """The decisions in ``folder`` about pool shard ``shard``'s pairs (None: no files)."""
    import pyarrow.dataset as ds

    if not rd.fs.exists(folder) or not rd.fs.ls(folder):
        return None
    dataset = ds.dataset(folder, filesystem=rd.fs, format="parquet")
    return dataset.to_table(filter=ds.field("shard") == shard_index(shard))


def dedup_bucket(w: Where, eps: float, keep: str, seed: int, k: int, rule: str,
                 j: int) -> tuple[np.ndarray, np.ndarray]:
    """SemDeDup (``rule``: 'reference' | 'kept_only') over the clusters of one bucket;
    returns per-cluster (count, sum_dist) after."""
    from curate.algorithms.dbp import accumulate
    from curate.algorithms.embeddings import as_matrix
    from curate.algorithms.semdedup import dedup_by_cluster

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


def bucket_folders(w: Where, buckets: int) -> list[str]:
    """The shuffle's bucket folders of a clustering (scratch ``cleanup`` removes)."""
    return [f"{w.work}/bucket-{j:05d}" for j in range(buckets)]
