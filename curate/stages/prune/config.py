"""prune's section of the pipeline (``PruneConfig``): k-means, SemDeDup and DBP settings."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from curate.config import Section


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
