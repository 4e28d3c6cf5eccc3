"""datacomp_image: DataComp's image-based filter — keep pool pairs whose nearest k-means
centroid also holds a reference embedding (DataComp: ImageNet-1k train images).

Steps (algorithms in :mod:`curate.algorithms.datacomp_kmeans`):

1. ``train``: the image embeddings of every pair that reaches this stage (the nearest
   earlier score's ``image_emb``, else the pool's), in pool order, or a seeded uid-hash
   sample of them (``sample_fraction``; DataComp samples 0.3 for ``large`` and 0.03 for
   ``xlarge``), go to the driver and FAISS trains L2 k-means with DataComp's settings
   (k = 100,000, niter 20, seed 0, no FAISS sub-sampling). With ``centroids:`` (a ``.npy``
   (k, d) array, e.g. DataComp's released ``*_centroids_l14.pt`` saved with ``np.save``, or
   a Parquet with a ``centroid`` column) nothing is trained. Writes
   ``<folder>/centroids.parquet``.
2. ``reference``: every reference file (Parquet, column ``reference_column``) is assigned to
   the centroids by argmax inner product, one task per file; the driver ORs the clusters hit
   into ``<folder>/reference_clusters.parquet`` (cluster_id, references).
3. ``shards``: each pair's centroid (argmax inner product, chunk-invariant); kept when it is
   a reference cluster, else ``no_reference_cluster``.

What DataComp does before clustering — fastText English and ``len(fasttext.tokenize(t)) > 1``
and ``len(t) > 5`` (``caption_filter``), applied to the pairs clustered *and* to the pairs
filtered — is up to the stages before this one (``language``, and ``score.basic`` with
``word_rule: fasttext_tokens, min_caption_words: 2, min_caption_chars: 6``, the same rule):
see ``pipelines/datacomp_image_based.yaml``.

Memory: the training set is on the driver (n x d as stored — float16 from score — on the
wire, float32 for FAISS),
as in DataComp (which loads the whole caption-filtered pool); use ``sample_fraction`` for
large pools. Output ``<folder>/part-NNNNN.parquet``: uid, cluster_id int32, kept, reason,
detail (null).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from curate.algorithms.embeddings import as_matrix
from curate.config import Section
from curate.core.io import read_table, url_to_fs, write_parquet_atomic
from curate.errors import ConfigError, InputError
from curate.stages.base import DECISION_FIELDS, GlobalStep, ShardStep, Stage, decisions

log = logging.getLogger(__name__)

_MODELS: dict[str, Any] = {}


class DataCompImageConfig(Section):
    reference: str | None = Field(
        None, description="Parquet file, directory or glob of reference embeddings "
        "(DataComp: ImageNet-1k train, OpenAI ViT-L/14 image features)")
    reference_column: str = "image_emb"
    k: int = Field(100_000, ge=1)
    niter: int = Field(20, ge=1)
    seed: int = 0
    max_points_per_centroid: int = Field(10_000_000, ge=1)
    sample_fraction: float | None = Field(None, gt=0, le=1)
    centroids: str | None = Field(None, description=".npy or Parquet (column centroid) of "
                                  "given centroids: no training")
    use_gpu: bool | None = None


def _matrix(col: Any) -> np.ndarray:

    return as_matrix(col)


def _files(spec: str) -> list[tuple[Any, str]]:
    """(filesystem, path) of every Parquet file a reference spec names, sorted."""
    fs, path = url_to_fs(spec)
    if any(c in path for c in "*?["):
        paths = fs.glob(path)
    elif fs.isdir(path):
        paths = [p for p in fs.find(path) if p.endswith(".parquet")]
    else:
        paths = [path] if fs.exists(path) else []
    return [(fs, p) for p in sorted(paths)]


class DataCompImageStage(Stage):
    kind = "datacomp_image"
    folder = "datacomp_image"
    view = "datacomp_image"
    decides = True
    Config = DataCompImageConfig
    schema = pa.schema([("uid", pa.string()), ("cluster_id", pa.int32()), *DECISION_FIELDS])
    reasons = {"no_reference_cluster": "its nearest pool centroid holds no reference "
                                       "embedding (DataComp's image-based filter)"}
    views = {"reference_clusters.parquet": "reference_clusters"}
    pool_columns = ["uid"]
    help = "DataComp's image-based filter: keep pairs in k-means clusters of reference images."

    def steps(self) -> list:
        return [GlobalStep("train", plan=self._train_plan, map=self._sample,
                           commit=self._train),
                GlobalStep("reference", plan=self._reference_files, map=self._assign_reference,
                           start=self._zeros, fold=_add, commit=self._targets),
                ShardStep()]

    def preflight(self) -> list[str]:
        """The reference embeddings (files, and the column in the first one's footer), given
        centroids, and the pool's embeddings."""
        import pyarrow.parquet as pq

        from curate.stages import _needs

        s, key = self.section, f"{self.name}.reference"
        problems = _needs.image_embeddings(self) + _needs.missing_file(
            f"{self.name}.centroids", s.centroids, ".npy (k, d) or Parquet with a centroid column")
        if not s.reference:
            return [*problems, f"{key}: name the Parquet file(s) of reference embeddings"]
        files = _files(s.reference)
        if not files:
            return [*problems, f"{key}: no Parquet file at {s.reference!r}"]
        fs, path = files[0]
        try:
            with fs.open(path, "rb") as f:
                names = pq.read_schema(f).names
        except (OSError, pa.ArrowInvalid) as err:
            return [*problems, f"{key}: {path} is not a readable Parquet file ({err})"]
        if s.reference_column not in names:
            problems.append(f"{self.name}.reference_column: {path} has no "
                            f"{s.reference_column!r} column (it has {', '.join(names)})")
        return problems

    # ------------------------------------------------------------------ embeddings
    def inputs(self, shard: str) -> pa.Table:
        score = self.previous("score")
        if score is None:
            t = self.survivors(shard)
            if "image_emb" not in t.column_names:
                raise InputError(f"{self.name}: needs image embeddings: run a score stage "
                                 "before it, or bring image_emb in the pool")
            return t.select(["uid", "image_emb"])
        t = self.survivors(shard, ["uid"])
        s = self.rd.read(score.folder, shard, ["uid", "image_emb"])
        idx = pc.index_in(t["uid"].combine_chunks(), value_set=s["uid"].combine_chunks())
        return t.append_column("image_emb", pc.take(s["image_emb"].combine_chunks(), idx))

    def _embeddings(self, shard: str, t: pa.Table) -> np.ndarray:
        col = t["image_emb"].combine_chunks()
        if col.null_count:
            raise InputError(f"{self.name}: {shard}: {col.null_count} pairs have no image "
                             "embedding")
        return _matrix(col)

    # ------------------------------------------------------------------ train
    def _train_plan(self) -> list[str]:
        if not self.section.reference:  # checked before any work (exit 2)
            raise ConfigError(f"{self.name}.reference: name the Parquet file(s) of reference "
                              "embeddings")
        return [] if self.section.centroids else list(self.shards)

    def _sample(self, shard: str) -> tuple[str, np.ndarray]:
        from curate.algorithms.kmeans_sample import sample_mask

        t = self.inputs(shard)
        x = self._embeddings(shard, t)
        f = self.section.sample_fraction
        if f is not None and f < 1:
            x = x[sample_mask(t["uid"].combine_chunks().to_numpy(zero_copy_only=False), f,
                              self.section.seed)]
        # float16 on the wire only when stored so (score's output): never lose precision
        half = pa.types.is_float16(t.schema.field("image_emb").type.value_type)
        return shard, x.astype(np.float16 if half else np.float32)

    def _train(self, parts: list) -> dict[str, Any]:
        from curate.algorithms.datacomp_kmeans import centroid_model, train_l2_kmeans

        s = self.section
        if s.centroids:
            model = centroid_model(self._given_centroids(s.centroids))
        else:
            parts = sorted((r for _, r in parts), key=lambda p: p[0])  # pool order
            xs = [x for _, x in parts if len(x)]
            if not xs:
                raise InputError(f"{self.name}: no pair reaches the stage: nothing to cluster")
            x = np.concatenate(xs).astype(np.float32)
            if len(x) < s.k:
                raise InputError(f"{self.name}.k={s.k} exceeds the {len(x)} embeddings to "
                                 f"cluster; lower {self.name}.k")
            model = train_l2_kmeans(x, s.k, niter=s.niter, seed=s.seed,
                                    max_points_per_centroid=s.max_points_per_centroid,
                                    use_gpu=s.use_gpu)
            del x
        path = self.rd.path(self.pipeline.ref(self.name).folder, "centroids.parquet")
        c = model.centroids
        write_parquet_atomic(self.rd.fs, path, pa.table({
            "cluster_id": pa.array(np.arange(len(c)), pa.int32()),
            "centroid": pa.FixedSizeListArray.from_arrays(pa.array(c.reshape(-1)), c.shape[1])}))
        return {"k": model.k, "d": model.d, "n_train": int(model.n_train),
                "device": model.device, "objective": model.objective, "centroids": path,
                "given": s.centroids}

    def _given_centroids(self, spec: str) -> np.ndarray:
        fs, path = url_to_fs(spec)
        if path.endswith(".npy"):
            with fs.open(path, "rb") as f:
                return np.load(f, allow_pickle=False)
        return _matrix(read_table(fs, path, ["centroid"])["centroid"])

    def _model(self) -> Any:
        from curate.algorithms.datacomp_kmeans import centroid_model

        info = self.state["train"]
        key = f"{info['centroids']}:{self.spec.fingerprint}"
        if key not in _MODELS:
            _MODELS.clear()
            t = read_table(self.rd.fs, info["centroids"], ["centroid"])
            _MODELS[key] = centroid_model(_matrix(t["centroid"]))
        return _MODELS[key]

    # ------------------------------------------------------------------ reference
    def _reference_files(self) -> list[str]:
        files = [p for _, p in _files(self.section.reference)]
        if not files:
            raise InputError(f"{self.name}.reference: no Parquet file at "
                             f"{self.section.reference!r}")
        return files

    def _zeros(self) -> np.ndarray:
        return np.zeros(self.state["train"]["k"], np.int64)

    def _assign_reference(self, path: str) -> np.ndarray:
        from curate.algorithms.datacomp_kmeans import reference_clusters

        fs, _ = url_to_fs(self.section.reference)
        col = self.section.reference_column
        t = read_table(fs, path, [col])
        x = _matrix(t[col].drop_null())
        if x.shape[1] != self.state["train"]["d"]:
            raise InputError(f"{self.name}.reference: {path}: embeddings of dimension "
                             f"{x.shape[1]}, the centroids have {self.state['train']['d']}")
        return reference_clusters(self._model(), x)

    def _targets(self, counts: np.ndarray) -> dict[str, Any]:
        path = self.rd.path(self.pipeline.ref(self.name).folder, "reference_clusters.parquet")
        hit = np.flatnonzero(counts)
        write_parquet_atomic(self.rd.fs, path, pa.table({
            "cluster_id": pa.array(hit, pa.int32()), "references": pa.array(counts[hit])}))
        return {"reference_clusters": int(len(hit)), "references": int(counts.sum()),
                "path": path}

    def _target_mask(self) -> np.ndarray:
        key = f"targets:{self.state['reference']['path']}:{self.spec.fingerprint}"
        if key not in _MODELS:
            t = read_table(self.rd.fs, self.state["reference"]["path"], ["cluster_id"])
            mask = np.zeros(self.state["train"]["k"], bool)
            mask[t["cluster_id"].to_numpy()] = True
            _MODELS[key] = mask
        return _MODELS[key]

    # ------------------------------------------------------------------ shards
    def process(self, shard: str, inputs: pa.Table) -> pa.Table:
        from curate.algorithms.datacomp_kmeans import keep_mask

        model = self._model()
        mask = self._target_mask()
        x = self._embeddings(shard, inputs)
        kept, labels = (keep_mask(model, x, mask) if len(x)
                        else (np.zeros(0, bool), np.zeros(0, np.int32)))
        return pa.table({"uid": inputs["uid"], "cluster_id": pa.array(labels, pa.int32()),
                         **decisions(pa.array(kept), ["no_reference_cluster"] * len(kept))})


def _add(acc: np.ndarray, item: Any, counts: np.ndarray) -> np.ndarray:
    acc += counts
    return acc
