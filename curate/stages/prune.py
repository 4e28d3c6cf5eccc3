"""prune: concept clusters on image embeddings; semantic dedup and density-based pruning.

Global steps, each one engine call that never holds the pool on the driver
(worker side in :mod:`curate.stages._prune_work`):

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
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_validator

from curate.config import Section, fingerprint
from curate.core import engine
from curate.core.engine import Resources
from curate.core.io import read_table, write_parquet_atomic
from curate.core.rundir import count_survivors
from curate.errors import InputError
from curate.stages import _prune_work as work
from curate.stages.base import DECISION_FIELDS, GlobalStep, ShardStep, Stage, decisions

log = logging.getLogger(__name__)


class PruneConfig(Section):
    k: int = Field(1000, ge=1)
    niter: int = Field(20, ge=1, le=1000)
    seed: int = Field(0, ge=0)
    sample_size: int | None = Field(None, ge=1)
    max_points_per_centroid: int = Field(256, ge=1)
    dedup_eps: float | None = Field(None, gt=0, lt=1)
    dbp: bool = False
    tau: float = Field(0.5, gt=0)
    n_neighbors: int = Field(20, ge=1)
    target_fraction: float | None = Field(None, gt=0, le=1)
    target_size: int | None = Field(None, ge=1)
    keep: Literal["hard", "easy", "random"] = "hard"
    #: None: DBP's reference floor, min(int(quota_floor_ratio * N / k), size - 1)
    min_per_cluster: int | None = Field(None, ge=0)
    #: SemDeDup: 'reference' removes an item when any earlier item of its cluster's order
    #: is within eps (SemDeDup's code); 'kept_only' only when an earlier *kept* one is
    dedup_rule: Literal["reference", "kept_only"] = "reference"
    #: DBP after SemDeDup: 'recluster' the survivors (DBP's code) or reuse 'dedup_clusters'
    dbp_clustering: Literal["recluster", "dedup_clusters"] = "recluster"
    dbp_k: int | None = Field(None, ge=1)  # clusters of the re-clustering (None: k)
    quota_solver: Literal["qp", "waterfill"] = "qp"
    quota_floor_ratio: float = Field(0.5, ge=0, le=1)  # DBP's cls_bal_ratio
    quota_rounding: Literal["rint", "largest_remainder"] = "rint"

    @property
    def reclusters(self) -> bool:
        """Whether DBP runs on a second clustering of SemDeDup's survivors."""
        return bool(self.dbp and self.dedup_eps and self.dbp_clustering == "recluster")

    @property
    def quota_k(self) -> int:
        """Clusters of the clustering that DBP's quotas are computed on."""
        return (self.dbp_k or self.k) if self.reclusters else self.k

    @model_validator(mode="after")
    def _target(self) -> PruneConfig:
        if self.target_fraction is not None and self.target_size is not None:
            raise ValueError("prune: set target_fraction or target_size, not both")
        if self.dbp and self.target_fraction is None and self.target_size is None:
            raise ValueError("prune.dbp: needs prune.target_fraction or prune.target_size")
        return self


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

    def steps(self) -> list:
        s = self.section
        steps = [
            GlobalStep("count", plan=self._all, map=self._count, start=_count0, fold=_count_add,
                       commit=self._counted),
            GlobalStep("sample", plan=self._all, map=self._sample, start=int,
                       fold=work.add_count, commit=lambda n: {"sampled": n}),
            GlobalStep("train", plan=self._one, map=self._fit, commit=self._train,
                       resources=self._fit_resources()),
            GlobalStep("assign", plan=self._all, map=self._assign, start=work.assigned0,
                       fold=work.assign_add, commit=partial(self._save_assigned, False),
                       resources=work.ASSIGN),
        ]
        if s.dedup_eps:
            steps.append(GlobalStep("dedup", plan=partial(self._buckets, False), map=self._dedup,
                                    start=self._sums0, fold=_sum_add,
                                    commit=partial(self._save_sums, "deduplicated", False)))
        if s.reclusters:
            steps += [
                GlobalStep("dbp_sample", plan=self._all, map=partial(self._sample, second=True),
                           start=int, fold=work.add_count, commit=lambda n: {"dbp_sampled": n}),
                GlobalStep("dbp_train", plan=self._one, map=partial(self._fit, second=True),
                           commit=partial(self._train, second=True),
                           resources=self._fit_resources()),
                GlobalStep("dbp_assign", plan=self._all,
                           map=partial(self._assign, second=True), start=work.assigned0,
                           fold=work.assign_add, commit=partial(self._save_assigned, True),
                           resources=work.ASSIGN),
            ]
        steps.append(GlobalStep.on_driver("clusters", self._clusters))
        if s.dbp:
            steps.append(GlobalStep("select", plan=partial(self._buckets, s.reclusters),
                                    map=self._select, start=int, fold=lambda a, i, r: a + r,
                                    commit=lambda n: {"over_quota": n}))
        steps += [ShardStep(), GlobalStep.on_driver("cleanup", self._cleanup)]
        return steps

    # ------------------------------------------------------------------ where things are
    def _where(self, second: bool = False) -> work.Where:
        """The first clustering's scratch, or (``second``) the re-clustering's, which reads
        the same embeddings less the semantic duplicates."""
        w = self.state.get("count", {}).get("work", "")
        first = work.where_for(self.pipeline, self.name, self.rd.url, w)
        if not second:
            return first
        return work.Where(first.run_url, first.deciding, first.scores, f"{w}/dbp",
                          drop=f"{w}/dedup", stage=self.name)

    def _all(self) -> list[str]:
        return list(self.shards)

    def _n_buckets(self, second: bool) -> int:
        return (self.state["dbp_train"]["dbp_buckets"] if second
                else self.state["train"]["buckets"])

    def _buckets(self, second: bool) -> list[int]:
        return list(range(self._n_buckets(second)))

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

    # ------------------------------------------------------------------ train
    def _k(self, second: bool) -> int:
        return self.section.quota_k if second else self.section.k

    def _n(self, second: bool) -> int:
        """Pairs the clustering covers: those reaching prune, or SemDeDup's survivors."""
        return self.state["dedup"]["deduplicated_pairs"] if second else self.state["count"]["n"]

    def _cap(self, second: bool) -> int:
        s = self.section
        return s.sample_size or s.max_points_per_centroid * self._k(second)

    def _fraction(self, second: bool = False) -> float:
        from curate.algorithms.kmeans_sample import sample_fraction

        k, n = self._k(second), self._n(second)
        # a pool within a few k of its size: take it all, so the sample never falls short
        return 1.0 if n <= 4 * k else sample_fraction(n, 1, self._cap(second))

    def _sample(self, shard: str, second: bool = False) -> int:
        return work.sample_shard(self._where(second), self._fraction(second), self.section.seed,
                                 shard)

    def _fit_resources(self) -> Resources:
        """The training task's: a GPU when the cluster has one, and all CPUs of one (GPU)
        node, a fixed FAISS thread count (so training is deterministic per seed and
        device) on a node where the task can be placed. Driver only (no Ray: unused)."""
        if getattr(self, "_fit_res", None) is None:
            up = engine.is_initialized()
            cpus = engine.node_cpus(with_gpu=engine.cluster_gpus() > 0) if up else 1
            self._fit_res = Resources(num_cpus=cpus, gpus_if_any=1)
        return self._fit_res

    def _one(self) -> list[dict[str, Any]]:
        """One item: the shards whose samples it reads (a worker's stage lacks them)."""
        return [{"name": "0", "shards": list(self.shards)}]

    def _fit(self, item: dict[str, Any], second: bool = False) -> dict[str, Any]:
        s, k = self.section, self._k(second)
        key = f"{self.name}.dbp_k" if second else f"{self.name}.k"
        if self._n(second) < k:
            raise InputError(f"{key}={k} exceeds the {self._n(second)} pairs it clusters; "
                             f"lower {key}")
        publish = None if second else self.rd.path(self.pipeline.ref(self.name).folder,
                                                   "centroids.parquet")
        return work.fit_kmeans(self._where(second), item["shards"], k, s.niter, s.seed,
                               self._cap(second), publish)

    def _train(self, fits: list, second: bool = False) -> dict[str, Any]:
        (_, fit), = fits
        s, k = self.section, self._k(second)
        log.info("%s: k-means k=%d on %d points (%s), device %s, objective %.2f", self.name, k,
                 fit["sample"], "survivors of dedup" if second else "input", fit["device"],
                 fit["objective"])
        buckets = (n_buckets(k, self._n(second), fit["d"], engine.cluster_cpus())
                   if (s.dedup_eps or s.dbp) else 0)
        pre = "dbp_" if second else ""  # the manifest's "global" merges every step's keys
        return {f"{pre}kmeans_device": fit["kmeans_device"], f"{pre}k": k,
                f"{pre}sample": fit["sample"], f"{pre}objective": fit["objective"],
                f"{pre}buckets": buckets, "device": fit["device"], "gpus": fit["gpus"]}

    # ------------------------------------------------------------------ assign, dedup
    def _sums0(self, second: bool = False) -> tuple[np.ndarray, np.ndarray]:
        k = self._k(second)
        return np.zeros(k, np.int64), np.zeros(k, np.float64)

    def _assign(self, shard: str, second: bool = False) -> tuple[Any, ...]:
        return work.assign_shard(self._where(second), self._n_buckets(second), shard)

    def _save_assigned(self, second: bool, acc: dict[str, Any]) -> dict[str, Any]:
        k = self._k(second)
        size, dist = ((acc["size"], acc["dist"]) if isinstance(acc["size"], np.ndarray)
                      else (np.zeros(k, np.int64), np.zeros(k)))  # no shards
        info = self._save_sums("assigned", second, (size, dist))
        devices = sorted(acc["devices"])
        return {**info, "device": "+".join(devices) or "cpu", "gpus": acc["gpus"]}

    def _dedup(self, j: int) -> tuple[np.ndarray, np.ndarray]:
        s = self.section
        return work.dedup_bucket(self._where(), s.dedup_eps, s.keep, s.seed, s.k, s.dedup_rule,
                                 j)

    def _save_sums(self, what: str, second: bool,
                   sums: tuple[np.ndarray, np.ndarray]) -> dict[str, Any]:
        size, dist = sums
        path = f"{self._where(second).work}/{what}.parquet"
        write_parquet_atomic(self.rd.fs, path, pa.table({"size": size, "sum_dist": dist}))
        pre = "dbp_" if second else ""
        return {f"{pre}{what}_path": path, f"{pre}{what}_pairs": int(size.sum())}

    def _sums(self, what: str, second: bool = False) -> tuple[np.ndarray, np.ndarray]:
        t = read_table(self.rd.fs, f"{self._where(second).work}/{what}.parquet")
        return t["size"].to_numpy(), t["sum_dist"].to_numpy()

    # ------------------------------------------------------------------ clusters, select
    def _clusters(self, _: Any) -> dict[str, Any]:
        from curate.algorithms import dbp
        from curate.algorithms.dbp_quota import plan_quotas

        s, two = self.section, self.section.reclusters
        folder = self.pipeline.ref(self.name).folder
        size, _sum = self._sums("assigned")
        size_after, sum_after = (self._sums("deduplicated") if s.dedup_eps else (size, _sum))
        if two:  # the first clustering's sizes; DBP's statistics come from the second
            write_parquet_atomic(self.rd.fs, self.rd.path(folder, "dedup_clusters.parquet"),
                                 work.cluster_table("dedup", size, size_after))
            size, _sum = size_after, sum_after = self._sums("assigned", second=True)
        model = work.load_model(self._where(two))
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
        write_parquet_atomic(self.rd.fs, self.rd.path(folder, "clusters.parquet"),
                             work.cluster_table(which, size, size_after, stats, quota))
        dups = (self.state["assign"]["assigned_pairs"] - self.state["dedup"]["deduplicated_pairs"]
                if s.dedup_eps else 0)
        return {"duplicates": int(dups), "target": target, "clustering": which,
                "quota_sum": int(quota.sum()) if s.dbp else None}

    def _select(self, j: int) -> int:
        s = self.section
        folder = self.pipeline.ref(self.name).folder
        quota = read_table(self.rd.fs, self.rd.path(folder, "clusters.parquet"),
                           ["quota"])["quota"].to_numpy()
        return work.select_bucket(self._where(s.reclusters), quota, s.keep, s.seed, j)

    # ------------------------------------------------------------------ per shard
    def process(self, shard: str, inputs: pa.Table) -> pa.Table:
        w, two = self._where(), self.section.reclusters
        a = read_table(self.rd.fs, f"{w.work}/assign/{shard}")
        uids = a["uid"].combine_chunks()
        dups = work.read_decisions(self.rd, f"{w.work}/dedup", shard)
        over = work.read_decisions(self.rd, f"{self._where(two).work}/select", shard)
        dup_of = pa.nulls(len(uids), pa.string())
        if dups is not None and dups.num_rows:
            idx = pc.index_in(uids, value_set=dups["uid"].combine_chunks())
            dup_of = pc.take(dups["duplicate_of"].combine_chunks(), idx)
        cluster, dist = a["cluster_id"], a["dist_to_centroid"]
        if two:  # the re-clustering's id and distance; null for the semantic duplicates
            b = read_table(self.rd.fs, f"{self._where(True).work}/assign/{shard}")
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
        current = self._where().work.rstrip("/")
        for second, sub in ((False, ""), (True, "/dbp")):
            if second and not self.section.reclusters:
                continue
            folders = [f"{current}{sub}/bucket-{j:05d}" for j in range(self._n_buckets(second))]
            for folder in [f"{current}{sub}/sample", *folders]:
                if fs.exists(folder):
                    fs.rm(folder, recursive=True)
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


def _sum_add(acc: tuple[np.ndarray, np.ndarray], item: Any,
             r: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    return acc[0] + r[0], acc[1] + r[1]
