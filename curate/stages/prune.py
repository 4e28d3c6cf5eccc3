"""prune: concept clusters on image embeddings; semantic dedup and density-based pruning.

The global work happens in ``prepare`` on the driver, each step an engine map so it runs
in parallel and never holds the pool:

1. count the pairs that reach prune, per shard;
2. draw the k-means sample: rows whose uid hashes below a fraction (algorithms.kmeans), so the
   sample does not depend on sharding; train FAISS spherical k-means (GPU when present);
3. assign every embedding, shard by shard; each shard's rows are also written to one of B
   bucket files by ``cluster_id % B`` (a shuffle, so a cluster's items end up together);
4. SemDeDup inside each cluster, bucket by bucket (rows sorted by uid, so the result does
   not depend on sharding); 5. DBP quotas from cluster complexity, and the selection of the
   kept items of each cluster, bucket by bucket.

Scratch lives in ``prune/_work/<key>/`` where the key hashes the stage fingerprint and the
digests of every shard's input, so a crash mid-prune resumes the finished steps of the same
input and a different input never reuses them. The per-shard ``process`` then writes
``prune/part-NNNNN.parquet`` (uid, cluster_id, dist_to_centroid, duplicate_of, kept,
reason). The bucket copies of the embeddings are deleted as soon as they are used; the small
per-row scratch stays so a rerun on the same input redoes nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
from functools import partial
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.core import engine, faults
from curate.core.io import list_shards, read_table, write_bytes_atomic, write_parquet_atomic
from curate.core.rundir import RunDir, count_survivors
from curate.errors import InputError
from curate.stages.base import Stage

log = logging.getLogger(__name__)

# ----------------------------------------------------------------- worker-side steps
def load_embeddings(rd: RunDir, before: list[str], shard: str) -> tuple[pa.Array, np.ndarray]:
    """uids and float32 L2-normalised image embeddings of the pairs reaching prune."""
    from curate.stages.score import as_matrix

    surv = rd.survivors(before, shard, ["uid"] if "score" in before else None)
    uids = surv["uid"].combine_chunks()
    if "score" in before:
        s = rd.read("score", shard, ["uid", "image_emb"])
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
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return uids, x / np.where(norms == 0, 1, norms)


def sample_shard(run_url: str, before: list[str], fraction: float, seed: int,
                 shard: str) -> np.ndarray:
    from curate.algorithms.kmeans import sample_mask

    uids, x = load_embeddings(RunDir(run_url), before, shard)
    return x[sample_mask(uids.to_numpy(zero_copy_only=False), fraction, seed)].astype(
        np.float16)


def assign_shard(run_url: str, before: list[str], work: str, model: Any, buckets: int,
                 shard: str) -> tuple[np.ndarray, np.ndarray]:
    """Labels and distances of one shard, written to assign/ and to the bucket files."""
    from curate.algorithms.dbp import accumulate
    from curate.stages.score import fp16_list

    faults.maybe_fail("prune-assign", shard)
    rd = RunDir(run_url)
    uids, x = load_embeddings(rd, before, shard)
    labels, sims = model.assign(x)
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
    return accumulate(labels, dist, model.k)


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


def _read_decisions(rd: RunDir, folder: str, shard: str) -> pa.Table | None:
    import pyarrow.dataset as ds

    if not rd.fs.exists(folder) or not rd.fs.ls(folder):
        return None
    dataset = ds.dataset(folder, filesystem=rd.fs, format="parquet")
    return dataset.to_table(filter=ds.field("shard") == int(shard[5:10]))


def dedup_bucket(run_url: str, work: str, eps: float, keep: str, seed: int, k: int,
                 j: int) -> tuple[np.ndarray, np.ndarray]:
    """SemDeDup over the clusters of one bucket; returns per-cluster (count, sum_dist) after."""
    from curate.algorithms.dbp import accumulate
    from curate.algorithms.semdedup import dedup_by_cluster
    from curate.stages.score import as_matrix

    rd = RunDir(run_url)
    t = _bucket(rd, work, j)
    if t is None:
        return np.zeros(k, np.int64), np.zeros(k)
    shard_no = t["shard"].to_numpy()
    labels = t["cluster_id"].to_numpy()
    dist = t["dist_to_centroid"].to_numpy()
    dup = dedup_by_cluster(as_matrix(t["emb"]), labels, dist, eps, keep=keep, seed=seed,
                           block=2048)  # ~16 MB similarity blocks, not 64 MB
    uids = t["uid"].to_numpy(zero_copy_only=False)
    is_dup = dup >= 0
    _write_decisions(rd, f"{work}/dedup/part-{j:05d}.parquet", pa.table({
        "shard": pa.array(shard_no[is_dup], pa.int32()),
        "uid": pa.array(uids[is_dup], pa.string()),
        "duplicate_of": pa.array(uids[dup[is_dup]], pa.string())}))
    return accumulate(labels[~is_dup], dist[~is_dup], k)


def select_bucket(run_url: str, work: str, quotas: np.ndarray, keep: str, seed: int,
                  j: int) -> int:
    """DBP selection inside each cluster of one bucket; writes the uids over quota."""
    from curate.algorithms.dbp import select_in_cluster

    rd = RunDir(run_url)
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


# ----------------------------------------------------------------- the stage
class PruneStage(Stage):
    name = "prune"
    pool_columns = ["uid"]

    def _map(self, fn, items, desc):
        outs = engine.map_items(fn, items, max_retries=self.cfg.run.max_retries,
                                timeout_s=self.cfg.run.shard_timeout_s, desc=desc)
        bad = [o for o in outs if not o.ok]
        if bad:
            raise RuntimeError(f"{desc}: {bad[0].item} failed: {bad[0].error}")
        return [o.value for o in outs]

    def prepare(self, shards: list[str]) -> dict[str, Any]:
        from curate.algorithms import dbp
        from curate.algorithms.kmeans import sample_fraction, train_kmeans

        s = self.section
        url = self.rd.url
        counts = self._map(partial(count_survivors, url, self.before), shards, "prune: count")
        n_total = sum(c for c, _ in counts)
        key = hashlib.sha256(json.dumps([self.spec.fingerprint, counts]).encode()
                             ).hexdigest()[:16]
        work = self.rd.path("prune", "_work", key)
        done_path = f"{work}/done.json"
        if self.rd.fs.exists(done_path):
            with self.rd.fs.open(done_path, "rb") as f:
                info = json.loads(f.read())
            log.info("prune: reusing the finished global steps in %s", work)
            return info
        if n_total < s.k:
            raise InputError(f"prune.k={s.k} exceeds the {n_total} pairs that reach prune; "
                             "lower prune.k")

        cap = s.sample_size or s.max_points_per_centroid * s.k
        fraction = sample_fraction(n_total, 1, cap)
        parts = self._map(partial(sample_shard, url, self.before, fraction, s.seed), shards,
                          "prune: sample")
        sample = np.concatenate(parts).astype(np.float32)
        del parts
        if len(sample) < s.k:  # a tiny pool: the hash sample fell short of k; take all
            sample = np.concatenate(self._map(partial(sample_shard, url, self.before, 1.0,
                                                      s.seed), shards, "prune: sample"))
        model = train_kmeans(sample.astype(np.float32), s.k, niter=s.niter, seed=s.seed,
                             max_points_per_centroid=max(1, cap // s.k))
        log.info("prune: k-means k=%d on %d points, device %s, objective %.2f", s.k,
                 len(sample), model.device, model.objective)
        del sample
        faults.maybe_fail("prune-kmeans", "driver")
        write_parquet_atomic(self.rd.fs, self.rd.path("prune", "centroids.parquet"),
                             pa.table({"cluster_id": pa.array(np.arange(s.k), pa.int32()),
                                       "centroid": pa.FixedSizeListArray.from_arrays(
                                           pa.array(model.centroids.reshape(-1)), model.d)}))

        buckets = n_buckets(s.k, n_total, model.d, engine.cluster_cpus()) \
            if (s.dedup_eps or s.dbp) else 0
        sums = self._map(partial(assign_shard, url, self.before, work, model, buckets), shards,
                         "prune: assign")
        size = np.sum([c for c, _ in sums], axis=0)
        sum_dist = np.sum([d for _, d in sums], axis=0)
        size_after, sum_after = size, sum_dist
        if s.dedup_eps:
            after = self._map(partial(dedup_bucket, url, work, s.dedup_eps, s.keep, s.seed,
                                      s.k), range(buckets), "prune: dedup")
            size_after = np.sum([c for c, _ in after], axis=0)
            sum_after = np.sum([d for _, d in after], axis=0)
        stats = dbp.cluster_stats_from_sums(model.centroids, size_after, sum_after,
                                            s.n_neighbors)
        quota = size_after.copy()
        target = None
        if s.dbp:
            survivors = int(size_after.sum())
            target = (s.target_size if s.target_size is not None
                      else int(round(s.target_fraction * survivors)))
            quota = dbp.quotas(stats["complexity"], size_after, target, tau=s.tau,
                               min_per_cluster=s.min_per_cluster)
            self._map(partial(select_bucket, url, work, quota, s.keep, s.seed),
                      range(buckets), "prune: select")
        clusters = pa.table({
            "cluster_id": pa.array(np.arange(s.k), pa.int32()),
            "size": pa.array(size, pa.int64()),
            "size_after_dedup": pa.array(size_after, pa.int64()),
            "d_intra": pa.array(stats["d_intra"], pa.float64()),
            "d_inter": pa.array(stats["d_inter"], pa.float64()),
            "complexity": pa.array(stats["complexity"], pa.float64()),
            "quota": pa.array(quota, pa.int64()),
        })
        write_parquet_atomic(self.rd.fs, self.rd.path("prune", "clusters.parquet"), clusters)
        for j in range(buckets):  # the embedding copies are no longer needed
            folder = f"{work}/bucket-{j:05d}"
            if self.rd.fs.exists(folder):
                self.rd.fs.rm(folder, recursive=True)
        info = {"work": work, "kmeans_device": model.device, "k": s.k, "n": n_total,
                "sample": int(model.n_train), "objective": float(model.objective),
                "duplicates": int(size.sum() - size_after.sum()), "target": target}
        write_bytes_atomic(self.rd.fs, done_path, json.dumps(info).encode())
        return info

    def process(self, shard: str, inputs: pa.Table) -> pa.Table:
        work = self.spec.extra["work"]
        a = read_table(self.rd.fs, f"{work}/assign/{shard}")
        uids = a["uid"].combine_chunks()
        dups = _read_decisions(self.rd, f"{work}/dedup", shard)
        over = _read_decisions(self.rd, f"{work}/select", shard)
        dup_of = pa.nulls(len(uids), pa.string())
        if dups is not None and dups.num_rows:
            idx = pc.index_in(uids, value_set=dups["uid"].combine_chunks())
            dup_of = pc.take(dups["duplicate_of"].combine_chunks(), idx)
        is_over = (pc.is_in(uids, value_set=over["uid"].combine_chunks())
                   if over is not None and over.num_rows
                   else pa.array(np.zeros(len(uids), bool)))
        is_dup = pc.invert(pc.is_null(dup_of))
        kept = pc.invert(pc.or_(is_dup, is_over))
        reason = pc.if_else(is_dup, pc.binary_join_element_wise(
            "semantic duplicate of ", dup_of, ""),
            pc.if_else(is_over, "over cluster quota", pa.scalar(None, pa.string())))
        return pa.table({"uid": uids, "cluster_id": a["cluster_id"],
                         "dist_to_centroid": a["dist_to_centroid"], "duplicate_of": dup_of,
                         "kept": kept, "reason": reason})

    def finalize(self, shards: list[str]) -> dict[str, Any]:
        """Keep this input's small scratch (assignments, dedup and quota decisions: a rerun
        reuses them), drop scratch of inputs that no longer exist."""
        current = self.spec.extra["work"].rstrip("/").rsplit("/", 1)[-1]
        folder = self.rd.path("prune", "_work")
        for path in self.rd.fs.ls(folder, detail=False) if self.rd.fs.exists(folder) else []:
            if path.rstrip("/").rsplit("/", 1)[-1] != current:
                self.rd.fs.rm(path, recursive=True)
        return {"kmeans_device": self.spec.extra.get("kmeans_device")}
