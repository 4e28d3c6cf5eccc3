"""Which k-means clustering a prune step works on, and where its scratch files are.

prune clusters its input once (``first``: every pair that reaches it; SemDeDup, and DBP
when it shares that clustering) and, when DBP re-clusters (``dbp_clustering: recluster``),
a second time (``dbp``: SemDeDup's survivors, ``dbp_k`` clusters), as DBP's official code
does. Both are trained, assigned and shuffled the same way: a :class:`Clustering` says
which one a step is for — its step names, k, the pairs it covers, its scratch folder —
so the steps are built once for either (:mod:`curate.stages.prune.steps`).

:class:`Where` is the one type for "where the work files are": the run, the deciding
stages and embeddings prune reads, and the scratch folder of one clustering.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal


@dataclass(frozen=True)
class Where:
    """Where a prune worker reads from and writes to: small and picklable."""

    run_url: str
    #: folders of the deciding stages before prune
    deciding: tuple[str, ...]
    #: the score stage's folder whose embeddings prune clusters (None: the pool's)
    scores: str | None
    #: this clustering's scratch folder (``<prune>/_work/<key>``, or its ``dbp`` sub-folder)
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


@dataclass(frozen=True)
class Clustering:
    """One k-means clustering of prune's input (see the module docstring)."""

    name: Literal["first", "dbp"]
    k: int
    #: prefix of its steps' names: '' (sample, train, assign) | 'dbp_'
    prefix: str = ""
    #: the section key that sets k, for messages
    k_key: str = "k"
    #: (step, info key) that counts the pairs it covers
    covers: tuple[str, str] = ("count", "n")
    #: its scratch folder under the first clustering's ('': that folder itself)
    sub: str = ""
    #: the first clustering's decisions folder whose uids it leaves out (None: none)
    drop: str | None = None

    def step(self, what: str) -> str:
        """This clustering's name of step ``what`` (sample, train, assign)."""
        return f"{self.prefix}{what}"

    def pairs(self, state: dict[str, Any]) -> int:
        """The pairs it covers, from what the stage's steps committed (``state``)."""
        step, key = self.covers
        return state[step][key]

    def buckets(self, state: dict[str, Any]) -> int:
        """Its shuffle's bucket count, from what its train step committed."""
        return state[self.step("train")]["buckets"]

    def where(self, first: Where) -> Where:
        """Its scratch, given the first clustering's: the re-clustering reads the same
        embeddings less the semantic duplicates."""
        if not self.sub:
            return first
        return replace(first, work=f"{first.work}/{self.sub}",
                       drop=f"{first.work}/{self.drop}" if self.drop else None)


def first_clustering(section: Any) -> Clustering:
    """Every pair reaching prune, ``k`` clusters: SemDeDup's (and DBP's when shared)."""
    return Clustering("first", section.k)


def dbp_clustering(section: Any) -> Clustering:
    """SemDeDup's survivors, ``dbp_k`` clusters (DBP's re-clustering), in ``<work>/dbp/``."""
    return Clustering("dbp", section.quota_k, prefix="dbp_", k_key="dbp_k",
                      covers=("dedup", "deduplicated_pairs"), sub="dbp", drop="dedup")


def clusterings(section: Any) -> list[Clustering]:
    """The clusterings prune trains, in the order it trains them."""
    return [first_clustering(section), *([dbp_clustering(section)] if section.reclusters
                                         else [])]


def quota_clustering(section: Any) -> Clustering:
    """The clustering whose statistics and quotas DBP uses (clusters.parquet's)."""
    return dbp_clustering(section) if section.reclusters else first_clustering(section)
