"""prune's k-means steps — ``sample``, ``train``, ``assign`` — built by one factory for
either clustering (:class:`~curate.stages.prune.clustering.Clustering`: the first one, or
DBP's re-clustering as ``dbp_sample``, ``dbp_train``, ``dbp_assign``).

The driver side is here (plans, folds, commits and their run.json infos); what runs in
workers is :mod:`curate.stages.prune.kmeans`. Each step's info stays under its own step in
run.json (``stages.<prune>.steps.<step>.info``), so both clusterings use the same keys.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from curate.core import engine
from curate.core.engine import Resources
from curate.errors import InputError
from curate.stages.base import GlobalStep
from curate.stages.prune import kmeans
from curate.stages.prune.buckets import n_buckets
from curate.stages.prune.clustering import Clustering
from curate.stages.prune.clusters import save_sums

log = logging.getLogger(__name__)

#: the share of a GPU each assignment task asks for when the cluster has GPUs (8 per GPU:
#: reading embeddings, not the search, bounds an assignment task)
ASSIGN_GPU_SHARE = 0.125
#: assignment tasks: one CPU, and a share of a GPU when the cluster has one
ASSIGN = Resources(num_cpus=1, gpus_if_any=ASSIGN_GPU_SHARE)


def kmeans_steps(stage: Any, c: Clustering, fit: Resources) -> list[GlobalStep]:
    """Clustering ``c``'s sample, train and assign steps of prune instance ``stage`` (a
    :class:`~curate.stages.prune.PruneStage`); ``fit``: the training task's resources."""
    k = KMeansSteps(stage, c)
    return [
        GlobalStep(c.step("sample"), plan=k.shards, map=k.sample, start=int, fold=add_count,
                   commit=sampled),
        GlobalStep(c.step("train"), plan=k.one, map=k.fit, commit=k.trained, resources=fit),
        GlobalStep(c.step("assign"), plan=k.shards, map=k.assign, start=assigned0,
                   fold=assign_add, commit=k.assigned, resources=ASSIGN),
    ]


class KMeansSteps:
    """Plans, maps and commits of one clustering's k-means steps; reads the stage's
    ``state`` when called (the driver sets it before each step)."""

    def __init__(self, stage: Any, c: Clustering):
        self.stage, self.c = stage, c

    # ------------------------------------------------------------------ sizes
    def pairs(self) -> int:
        """Pairs the clustering covers: those reaching prune, or SemDeDup's survivors."""
        return self.c.pairs(self.stage.state)

    def cap(self) -> int:
        """The k-means sample's size at most."""
        s = self.stage.section
        return s.sample_size or s.max_points_per_centroid * self.c.k

    def fraction(self) -> float:
        from curate.algorithms.kmeans_sample import sample_fraction

        k, n = self.c.k, self.pairs()
        # a pool within a few k of its size: take it all, so the sample never falls short
        return 1.0 if n <= 4 * k else sample_fraction(n, 1, self.cap())

    # ------------------------------------------------------------------ plans
    def shards(self) -> list[str]:
        return list(self.stage.shards)

    def one(self) -> list[dict[str, Any]]:
        """One item: the shards whose samples it reads (a worker's stage lacks them)."""
        return [{"name": "0", "shards": list(self.stage.shards)}]

    # ------------------------------------------------------------------ maps (workers)
    def sample(self, shard: str) -> int:
        return kmeans.sample_shard(self.stage.where(self.c), self.fraction(),
                                   self.stage.section.seed, shard)

    def fit(self, item: dict[str, Any]) -> dict[str, Any]:
        st, c = self.stage, self.c
        s, n = st.section, self.pairs()
        key = f"{st.name}.{c.k_key}"
        if n < c.k:
            raise InputError(f"{key}={c.k} exceeds the {n} pairs it clusters; lower {key}")
        # prune/centroids.parquet publishes the first clustering's model
        publish = (st.rd.path(st.pipeline.ref(st.name).folder, "centroids.parquet")
                   if c.name == "first" else None)
        return kmeans.fit_kmeans(st.where(c), item["shards"], c.k, s.niter, s.seed, self.cap(),
                                 publish)

    def assign(self, shard: str) -> tuple[Any, ...]:
        return kmeans.assign_shard(self.stage.where(self.c), self.c.buckets(self.stage.state),
                                   shard)

    # ------------------------------------------------------------------ commits (driver)
    def trained(self, fits: list) -> dict[str, Any]:
        (_, fit), = fits
        st, c = self.stage, self.c
        s = st.section
        log.info("%s: k-means k=%d on %d points (%s), device %s, objective %.2f", st.name, c.k,
                 fit["sample"], "survivors of dedup" if c.drop else "input", fit["device"],
                 fit["objective"])
        buckets = (n_buckets(c.k, self.pairs(), fit["d"], engine.cluster_cpus())
                   if (s.dedup_eps or s.dbp) else 0)
        return {"kmeans_device": fit["kmeans_device"], "k": c.k, "sample": fit["sample"],
                "objective": fit["objective"], "buckets": buckets, "device": fit["device"],
                "gpus": fit["gpus"]}

    def assigned(self, acc: dict[str, Any]) -> dict[str, Any]:
        k = self.c.k
        size, dist = ((acc["size"], acc["dist"]) if isinstance(acc["size"], np.ndarray)
                      else (np.zeros(k, np.int64), np.zeros(k)))  # no shards
        info = save_sums(self.stage.rd.fs, self.stage.where(self.c), "assigned", (size, dist))
        devices = sorted(acc["devices"])
        return {**info, "device": "+".join(devices) or "cpu", "gpus": acc["gpus"]}


# ------------------------------------------------------------------ folds
def add_count(acc: int, item: Any, n: int) -> int:
    return acc + n


def sampled(n: int) -> dict[str, Any]:
    return {"sampled": n}


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
