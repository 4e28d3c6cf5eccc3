"""prune: concept clusters on image embeddings; semantic dedup and density-based pruning.

Global steps, each one engine call that never holds the pool on the driver:

1. ``count``: the pairs that reach prune, per shard (and a digest of them);
2. ``sample``: draw the k-means sample — rows whose uid hashes below a fraction
   (algorithms.kmeans), so it does not depend on sharding — into ``<work>/sample/``;
3. ``train``: one task trains FAISS spherical k-means on it and writes the centroids; it
   asks Ray for a GPU when the cluster has one (FAISS GPU index in that worker, CPU
   fallback where FAISS sees none), so a head node without a GPU does not matter;
4. ``assign``: every embedding to its centroid, shard by shard (tasks with a share of a GPU
   when the cluster has one); each shard's rows are also written to one of B bucket files
   by ``cluster_id % B`` (a shuffle: a cluster's rows end up together);
5. ``dedup``: SemDeDup inside each cluster, bucket by bucket (rows sorted by uid, so the
   result does not depend on sharding), by ``dedup_rule``;
6. ``dbp_sample``, ``dbp_train``, ``dbp_assign`` (DBP after SemDeDup,
   ``dbp_clustering: recluster``): as DBP's official code does, the *deduplicated* pairs
   are clustered again (``dbp_k`` clusters; duplicates would dominate the first
   clustering's dense clusters), in ``<work>/dbp/``;
7. ``clusters``: cluster statistics and DBP quotas of the clustering DBP uses, written to
   ``prune/clusters.parquet`` (column ``clustering``: dedup | dbp | shared); with two
   clusterings the first one's sizes go to ``prune/dedup_clusters.parquet``;
8. ``select``: DBP's kept items of each cluster, bucket by bucket.

Then the shard step writes ``prune/part-NNNNN.parquet`` (uid, cluster_id and
dist_to_centroid in the clustering of clusters.parquet — null for a semantic duplicate
when DBP re-clustered —, dedup_cluster_id, duplicate_of, kept, reason
``semantic_duplicate`` | ``over_cluster_quota``, detail). Scratch lives in
``prune/_work/<key>/``, the key hashing the stage fingerprint and the digest of its input,
so a different input never reuses it; ``cleanup`` removes the scratch of inputs that no
longer exist, the samples and the bucket copies of the embeddings. The device of each
k-means step is in its run.json record (``device``: cpu | cuda; ``gpus``: what Ray gave).

The modules, one job each: ``config`` (the section), ``clustering`` (which clustering a
step is for, and :class:`Where` its files are), ``steps`` (the k-means steps of either
clustering, from one factory), ``kmeans`` (their worker side), ``embeddings`` (what prune
reads), ``buckets`` (SemDeDup and DBP's selection per bucket, their decisions files),
``clusters`` (per-cluster sums and the published cluster tables).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.config import fingerprint
from curate.core import engine
from curate.core.engine import Resources
from curate.core.io import read_table, write_parquet_atomic
from curate.core.rundir import count_survivors
from curate.errors import InputError
from curate.stages.base import DECISION_FIELDS, GlobalStep, ShardStep, Stage, decisions
from curate.stages.prune.buckets import bucket_folders, dedup_bucket, read_decisions, select_bucket
from curate.stages.prune.clustering import (
    Clustering,
    Where,
    clusterings,
    quota_clustering,
    where_for,
)
from curate.stages.prune.clusters import add_sums, cluster_table, read_sums, save_sums, zero_sums
from curate.stages.prune.config import PruneConfig
from curate.stages.prune.kmeans import load_model
from curate.stages.prune.steps import kmeans_steps

__all__ = ["PruneConfig", "PruneStage"]


class PruneStage(Stage):
    kind = "prune"
    folder = "prune"
    decides = True
    Config = PruneConfig
    schema = pa.schema([("uid", pa.string()), ("cluster_id", pa.int32()),
                        ("dist_to_centroid", pa.float32()), ("dedup_cluster_id", pa.int32()),
                        ("duplicate_of", pa.string()), *DECISION_FIELDS])
    reasons = {"semantic_duplicate": "SemDeDup: within prune.dedup_eps of an earlier pair in "
                                     "its cluster's order (detail: the most similar such "
                                     "pair's uid; with dedup_rule kept_only, a kept one)",
               "over_cluster_quota": "DBP: beyond its cluster's quota"}
    joins = ("cluster_id",)
    views = {"clusters.parquet": "clusters", "dedup_clusters.parquet": "dedup_clusters"}
    pool_columns = ["uid"]
    help = "Concept-cluster pruning: FAISS k-means, SemDeDup, density-based pruning."
    doc_sections = ({}, {"dedup_eps": 0.1}, {"dbp": True, "target_fraction": 0.5},
                    {"dedup_eps": 0.1, "dbp": True, "target_fraction": 0.5})

    def steps(self) -> list:
        s = self.section
        first, *again = clusterings(s)
        quota = quota_clustering(s)
        steps = [GlobalStep("count", plan=self._all, map=self._count, start=_count0,
                            fold=_count_add, commit=self._counted),
                 *kmeans_steps(self, first, self._fit_resources())]
        if s.dedup_eps:
            steps.append(GlobalStep("dedup", plan=partial(self._buckets, first),
                                    map=self._dedup, start=partial(zero_sums, first.k),
                                    fold=add_sums, commit=self._deduplicated))
        for c in again:  # DBP's re-clustering of SemDeDup's survivors
            steps += kmeans_steps(self, c, self._fit_resources())
        steps.append(GlobalStep.on_driver("clusters", self._clusters))
        if s.dbp:
            steps.append(GlobalStep("select", plan=partial(self._buckets, quota),
                                    map=self._select, start=int, fold=lambda a, i, r: a + r,
                                    commit=lambda n: {"over_quota": n}))
        steps += [ShardStep(), GlobalStep.on_driver("cleanup", self._cleanup)]
        return steps

    def preflight(self) -> list[str]:
        """Image embeddings: an earlier score stage's, else the pool's ``image_emb``."""
        from curate.stages import _needs

        return _needs.image_embeddings(self)

    # ------------------------------------------------------------------ where things are
    def where(self, c: Clustering | None = None) -> Where:
        """Where clustering ``c``'s scratch is (default: the first clustering's) and what
        it reads; known once the ``count`` step committed."""
        w = where_for(self.pipeline, self.name, self.rd.url,
                      self.state.get("count", {}).get("work", ""))
        return c.where(w) if c is not None else w

    def _all(self) -> list[str]:
        return list(self.shards)

    def _buckets(self, c: Clustering) -> list[int]:
        return list(range(c.buckets(self.state)))

    def _fit_resources(self) -> Resources:
        """The training task's: a GPU when the cluster has one, and all CPUs of one (GPU)
        node, a fixed FAISS thread count (so training is deterministic per seed and
        device) on a node where the task can be placed. Driver only (no Ray: unused)."""
        if getattr(self, "_fit_res", None) is None:
            up = engine.is_initialized()
            cpus = engine.node_cpus(with_gpu=engine.cluster_gpus() > 0) if up else 1
            self._fit_res = Resources(num_cpus=cpus, gpus_if_any=1)
        return self._fit_res

    # ------------------------------------------------------------------ count
    def _count(self, shard: str) -> tuple[int, str]:
        return count_survivors(self.rd.url, self.deciding_before(), shard)

    def _counted(self, acc: dict[str, Any]) -> dict[str, Any]:
        s = self.section
        if acc["n"] < s.k:
            raise InputError(f"{self.name}.k={s.k} exceeds the {acc['n']} pairs that reach "
                             f"{self.name}; lower {self.name}.k")
        key = fingerprint([self.spec.fingerprint, acc["digest"]])
        folder = self.pipeline.ref(self.name).folder
        return {"n": acc["n"], "work": self.rd.path(folder, "_work", key)}

    # ------------------------------------------------------------------ dedup
    def _dedup(self, j: int) -> tuple[np.ndarray, np.ndarray]:
        s = self.section
        return dedup_bucket(self.where(), s.dedup_eps, s.keep, s.seed, s.k, s.dedup_rule, j)

    def _deduplicated(self, sums: tuple[np.ndarray, np.ndarray]) -> dict[str, Any]:
        return save_sums(self.rd.fs, self.where(), "deduplicated", sums)

    # ------------------------------------------------------------------ clusters, select
    def _clusters(self, _: Any) -> dict[str, Any]:
        from curate.algorithms import dbp
        from curate.algorithms.dbp_quota import plan_quotas

        s, two = self.section, self.section.reclusters
        fs, folder, w = self.rd.fs, self.pipeline.ref(self.name).folder, self.where()
        size, _sum = read_sums(fs, w, "assigned")
        size_after, sum_after = (read_sums(fs, w, "deduplicated") if s.dedup_eps
                                 else (size, _sum))
        quota_c = quota_clustering(s)
        if two:  # the first clustering's sizes; DBP's statistics come from the second
            write_parquet_atomic(fs, self.rd.path(folder, "dedup_clusters.parquet"),
                                 cluster_table("dedup", size, size_after))
            size, _sum = size_after, sum_after = read_sums(fs, self.where(quota_c), "assigned")
        model = load_model(self.where(quota_c))
        stats = dbp.cluster_stats_from_sums(model.centroids, size_after, sum_after,
                                            s.n_neighbors)
        quota, target = size_after.copy(), None
        if s.dbp:
            survivors = int(size_after.sum())
            target = (s.target_size if s.target_size is not None
                      else int(s.target_fraction * survivors))  # int(): prune.py's truncation
            quota = plan_quotas(stats["complexity"], size_after, target, tau=s.tau,
                                solver=s.quota_solver, floor=s.min_per_cluster,
                                floor_ratio=s.quota_floor_ratio, rounding=s.quota_rounding)
        which = "dbp" if two else ("shared" if s.dbp and s.dedup_eps
                                   else "dbp" if s.dbp else "dedup")
        write_parquet_atomic(fs, self.rd.path(folder, "clusters.parquet"),
                             cluster_table(which, size, size_after, stats, quota))
        dups = (self.state["assign"]["assigned_pairs"] - self.state["dedup"]["deduplicated_pairs"]
                if s.dedup_eps else 0)
        return {"duplicates": int(dups), "target": target, "clustering": which,
                "quota_sum": int(quota.sum()) if s.dbp else None}

    def _select(self, j: int) -> int:
        s = self.section
        folder = self.pipeline.ref(self.name).folder
        quota = read_table(self.rd.fs, self.rd.path(folder, "clusters.parquet"),
                           ["quota"])["quota"].to_numpy()
        return select_bucket(self.where(quota_clustering(s)), quota, s.keep, s.seed, j)

    # ------------------------------------------------------------------ per shard
    def process(self, shard: str, inputs: pa.Table) -> pa.Table:
        s = self.section
        w, quota_w = self.where(), self.where(quota_clustering(s))
        a = read_table(self.rd.fs, f"{w.work}/assign/{shard}")
        uids = a["uid"].combine_chunks()
        dups = read_decisions(self.rd, f"{w.work}/dedup", shard)
        over = read_decisions(self.rd, f"{quota_w.work}/select", shard)
        dup_of = pa.nulls(len(uids), pa.string())
        if dups is not None and dups.num_rows:
            idx = pc.index_in(uids, value_set=dups["uid"].combine_chunks())
            dup_of = pc.take(dups["duplicate_of"].combine_chunks(), idx)
        cluster, dist = a["cluster_id"], a["dist_to_centroid"]
        if s.reclusters:  # the re-clustering's id and distance; null for the semantic dups
            b = read_table(self.rd.fs, f"{quota_w.work}/assign/{shard}")
            idx = pc.index_in(uids, value_set=b["uid"].combine_chunks())
            cluster = pc.take(b["cluster_id"].combine_chunks(), idx)
            dist = pc.take(b["dist_to_centroid"].combine_chunks(), idx)
        is_over = (pc.is_in(uids, value_set=over["uid"].combine_chunks())
                   if over is not None and over.num_rows
                   else pa.array(np.zeros(len(uids), bool)))
        is_dup = pc.is_valid(dup_of)
        kept = pc.invert(pc.or_(is_dup, is_over))
        reason = pc.if_else(is_dup, "semantic_duplicate", "over_cluster_quota")
        return pa.table({"uid": uids, "cluster_id": cluster, "dist_to_centroid": dist,
                         "dedup_cluster_id": a["cluster_id"], "duplicate_of": dup_of,
                         **decisions(kept, reason, dup_of)})

    def _cleanup(self, _: Any) -> dict[str, Any]:
        """Keep this input's small scratch (assignments, decisions: a rerun reuses them);
        drop the bucket copies of the embeddings and scratch of inputs that are gone."""
        fs = self.rd.fs
        for c in clusterings(self.section):
            w = self.where(c)
            for folder in [f"{w.work}/sample", *bucket_folders(w, c.buckets(self.state))]:
                if fs.exists(folder):
                    fs.rm(folder, recursive=True)
        current = self.where().work.rstrip("/")
        parent = current.rsplit("/", 1)[0]
        for path in fs.ls(parent, detail=False) if fs.exists(parent) else []:
            if path.rstrip("/").rsplit("/", 1)[-1] != current.rsplit("/", 1)[-1]:
                fs.rm(path, recursive=True)
        return {"kmeans_device": self.state["train"]["kmeans_device"]}


def _count0() -> dict[str, Any]:
    return {"n": 0, "digest": 0}


def _count_add(acc: dict[str, Any], shard: str, r: tuple[int, str]) -> dict[str, Any]:
    """Sum the counts; combine the per-shard digests order-independently (XOR of hashes)."""
    n, digest = r
    acc["n"] += n
    acc["digest"] ^= int(fingerprint([shard, digest]), 16)
    return acc
