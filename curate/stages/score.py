"""score: open_clip embeddings and the CLIP score of every surviving pair, then filters.

Per shard, on long-lived actors (one per GPU with ``num_gpus=1``, else CPU actors sized to
the cores) so the model loads once per actor: DataComp's basic filters first (caption
words/characters, image side, aspect ratio; each its own reason code, no model time spent on
them), then images decode and preprocess on a thread pool inside the actor while the model
encodes batches of ``score.batch_size``. Output ``scores/part-NNNNN.parquet``: uid,
clip_score (float32 cosine of the normalised embeddings), image_emb and text_emb
(``fixed_size_list<float16>[D]``), kept, reason, detail. A pool that brings ``image_emb``
and ``text_emb``, or a score column (``pool_score_column``, e.g. DataComp's
``clip_l14_similarity_score``), is scored from them without a model. The decode and encode
loop is :mod:`curate.stages.score_encode` (``decode: exact | fast | gpu``, ``batch_size:
auto``, pinned host memory on CUDA).

Filters: ``min_score`` per shard; ``top_fraction``, DataComp's global cut, in global steps
after the shards (:mod:`curate.stages.cut`, one ``Cut``): over the whole pool that reached the
stage, basic-filtered pairs scored too, with DataComp's ``get_threshold`` rule by default
(``top_fraction_of: survivors``, ``top_fraction_rule: exact_k`` are options). A
distributed radix selection: the driver holds one histogram, never the scores.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import ConfigDict, Field, model_validator

from curate.algorithms.embeddings import as_matrix, fp16_list
from curate.config import Section
from curate.core import engine
from curate.core.engine import Resources
from curate.stages.base import GlobalStep, ShardStep, Stage, decisions
from curate.stages.cut import Cut, cut_steps
from curate.stages.score_filters import BasicFilterConfig, basic_reasons

log = logging.getLogger(__name__)

_MODEL: dict[str, Any] = {}


class ScoreFilterConfig(Section):
    min_score: float | None = Field(None, ge=-1, le=1)
    top_fraction: float | None = Field(None, gt=0, le=1)
    top_fraction_of: Literal["pool", "survivors"] = Field(
        "pool", description="pool: every scored pair that reached the stage, basic-filtered "
        "ones included (DataComp); survivors: only pairs that passed the basic filter")
    top_fraction_rule: Literal["datacomp", "exact_k"] = Field(
        "datacomp", description="datacomp (DataComp's get_threshold): score >= "
        "sorted_desc(scores)[int(n*f)], ties kept; exact_k: exactly round(f*n), ties by uid")

    @model_validator(mode="after")
    def _one_of(self) -> ScoreFilterConfig:
        if self.min_score is not None and self.top_fraction is not None:
            raise ValueError("score.filter: set min_score or top_fraction, not both")
        return self


class ScoreConfig(Section):
    model: str | None = Field(None, description="default ViT-B-32, or the model_config's name")
    pretrained: str = "datacomp_xl_s13b_b90k"
    model_config_path: str | None = Field(None, alias="model_config")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    batch_size: Annotated[int, Field(ge=1, le=65_536)] | Literal["auto"] = Field(
        256, description="pairs per model call; auto: from the free GPU memory (256 on CPU)")
    num_actors: int | None = Field(None, ge=1)
    decode: Literal["exact", "fast", "gpu"] = Field(
        "exact", description="exact: open_clip's preprocess; fast: libjpeg-turbo + one "
        "antialiased resample (curate.models.fast_preprocess); gpu: nvJPEG + resample on "
        "the model's GPU (curate.models.gpu_decode; on the CPU without one)")
    pool_score_column: str | None = Field(
        "auto", description="a pool column of precomputed scores (no model runs); auto: "
        "DataComp's clip_l14/clip_b32_similarity_score when the pool has the one of the "
        "configured model (ViT-L-14/ViT-B-32, pretrained openai); null: never")
    basic: BasicFilterConfig = Field(default_factory=BasicFilterConfig)
    filter: ScoreFilterConfig = Field(default_factory=ScoreFilterConfig)

    model_config = ConfigDict(extra="forbid", populate_by_name=True, protected_namespaces=())


class ScoreStage(Stage):
    kind = "score"
    folder = "scores"
    view = "scores"
    decides = True
    Config = ScoreConfig
    reasons = {
        "caption_too_few_words": "fewer words than score.basic.min_caption_words",
        "caption_too_short": "fewer characters than score.basic.min_caption_chars",
        "image_too_small": "shorter side below score.basic.min_image_side",
        "aspect_ratio_too_high": "aspect ratio above score.basic.max_aspect_ratio",
        "image_undecodable": "the image could not be decoded (detail: the error)",
        "below_min_score": "CLIP score below score.filter.min_score (detail: the score)",
        "below_top_fraction": "not in the score.filter.top_fraction cut (over top_fraction_of)",
    }
    joins = ("clip_score",)
    pool_columns = None
    help = "CLIP embeddings and scores (open_clip), DataComp's basic and score filters."
    doc_notes = {"module": "+ `score_encode.py`",
                 "joins": "+ `image_emb, text_emb` with `emit.include_embeddings`"}
    doc_sections = ({}, {"filter": {"top_fraction": 0.5}})

    def steps(self) -> list:
        steps: list = [GlobalStep.on_driver("model", self._check_model), ShardStep()]
        f = self.section.filter
        if f.top_fraction is not None:  # DataComp's global cut (curate.stages.cut)
            steps += cut_steps(self, Cut("clip_score", "below_top_fraction",
                                         top_fraction=f.top_fraction,
                                         rule=f.top_fraction_rule, of=f.top_fraction_of))
        return steps

    # -- driver side
    def _pool_names(self) -> list[str]:
        import pyarrow.parquet as pq

        if not self.shards:
            return []
        with self.rd.fs.open(self.rd.shard_path("pool", self.shards[0]), "rb") as f:
            return pq.read_schema(f).names

    def _brings_embeddings(self) -> bool:
        """A pool that brings both embeddings is scored without a model."""
        return {"image_emb", "text_emb"} <= set(self._pool_names())

    def _resolve_score_column(self, names: list[str] | None = None) -> str | None:
        """The pool column the scores come from, decided once on the driver: a named column
        must exist (else exit 2, before any shard); ``auto`` takes DataComp's column of the
        configured model when the pool has it (the same model's score, precomputed)."""
        from curate.errors import ConfigError

        col = self.section.pool_score_column
        names = self._pool_names() if names is None else names
        if col == "auto":
            s = self.section
            model = (s.model or ("" if s.model_config_path else "ViT-B-32")).lower()
            auto = {"vit-l-14": "clip_l14_similarity_score",
                    "vit-b-32": "clip_b32_similarity_score"}.get(model.removesuffix("-quickgelu"))
            return auto if s.pretrained == "openai" and auto in names else None
        if col is not None and names and col not in names:
            raise ConfigError(f"{self.name}.pool_score_column: the pool has no column {col!r} "
                              f"(it has {', '.join(names)})")
        return col

    def _score_column(self) -> str | None:
        """What the ``model`` step resolved (workers read it from the stage's state)."""
        return (self.state.get("model") or {}).get("pool_score_column")

    def _gpus(self) -> int:
        if self.section.device == "cpu":
            return 0
        return engine.cluster_gpus()

    def _model_free(self) -> bool:
        """Whether the ``model`` step found the pool scores without a model (a score column,
        or both embeddings): then the shards need no model, no torch and no actor."""
        return str((self.state.get("model") or {}).get("model", "")).startswith("none:")

    def resources(self) -> Resources:
        if self._model_free():
            return Resources()
        gpus = self._gpus()
        cpus = engine.cluster_cpus()
        if gpus:
            return Resources(num_cpus=max(1, cpus // gpus), num_gpus=1)
        per = max(1, cpus // self.num_actors())
        return Resources(num_cpus=per)

    def num_actors(self) -> int | None:
        """Long-lived actors that each load the model once; without a model to hold, plain
        tasks (a new actor process costs seconds: importing torch alone is ~3 s)."""
        if self._model_free():
            return None
        gpus = self._gpus()
        if gpus:
            return gpus
        return self.section.num_actors or max(1, min(engine.cluster_cpus(), 4) // 2)

    def preflight(self) -> list[str]:
        """Before the run: the weights, unless the pool brings what scores without a model
        (a score column, or both embeddings), and the images the model reads."""
        from curate.errors import CurateError
        from curate.models.offline import weights_problem
        from curate.stages import _needs

        names = _needs.pool_names(self)
        if names is None:  # the pool is unreadable (its own line): nothing to judge by
            return []
        try:
            if self._resolve_score_column(names) is not None:
                return []
        except CurateError as err:
            return [str(err)]
        if {"image_emb", "text_emb"} <= set(names):
            return []
        problem = weights_problem(self._spec(device="cpu"), self.name)
        return ([problem] if problem else []) + _needs.images(self)

    def _check_model(self, _: Any) -> dict[str, Any]:
        """Fail fast on weights that cannot be had, on the driver, before any actor starts:
        loading proves the weights exist (cached) and fit the model, or fails in seconds with
        one line."""
        col = self._resolve_score_column()
        if col is not None:
            return {"random_init": False, "model": f"none: the pool's {col} column",
                    "pool_score_column": col}
        if self._brings_embeddings():
            return {"random_init": False, "model": "none: the pool brings embeddings"}
        if self.section.decode == "gpu" and not self._gpus():
            log.warning("score.decode: gpu without a GPU for the score actors: images are "
                        "decoded by the same code on the CPU (libjpeg-turbo)")
        _load(self._spec(device="cpu"))
        return {"random_init": self.section.pretrained == "none"}

    def _spec(self, device: str | None = None):
        from curate.models.spec import ModelSpec

        s = self.section
        model = s.model or (None if s.model_config_path else "ViT-B-32")
        return ModelSpec(model=model, pretrained=s.pretrained, model_config=s.model_config_path,
                         device=device or s.device, precision=s.precision)

    # -- worker side
    def setup(self) -> None:
        if self._model_free():
            return
        import torch

        torch.set_num_threads(_assigned_cpus())
        if "model" in self.state and "model" not in self.state["model"]:
            self._model()  # once per actor, before its first shard (not in a shard's time)

    def _model(self):
        key = self.spec.fingerprint
        if key not in _MODEL:
            _MODEL.clear()
            _MODEL[key] = _load(self._spec())
        return _MODEL[key]

    def inputs(self, shard: str) -> pa.Table:
        t = self.survivors(shard)
        dl = self.previous("download")
        if dl is not None:
            img = self.rd.read(dl.folder, shard, ["uid", "image", "width", "height"])
            idx = pc.index_in(t["uid"].combine_chunks(), value_set=img["uid"].combine_chunks())
            for c in ("image", "width", "height"):
                if c in t.column_names:
                    t = t.drop_columns([c])
                t = t.append_column(c, pc.take(img[c].combine_chunks(), idx))
        return t

    def process(self, shard: str, inputs: pa.Table) -> pa.Table:
        s = self.section
        n = inputs.num_rows
        uids = inputs["uid"].combine_chunks()
        captions = inputs["caption"].to_pylist()
        w = (pc.fill_null(inputs["width"], 0).to_numpy(zero_copy_only=False)
             if "width" in inputs.column_names else np.zeros(n))
        h = (pc.fill_null(inputs["height"], 0).to_numpy(zero_copy_only=False)
             if "height" in inputs.column_names else np.zeros(n))
        codes, details = basic_reasons(inputs["caption"], w, h, s.basic)
        todo = np.array([c is None for c in codes], bool)
        if s.filter.top_fraction is not None and s.filter.top_fraction_of == "pool":
            # the cut ranks the whole pool, basic-filtered pairs included: score them too
            todo = np.ones(n, bool)
        scores = np.full(n, np.nan, np.float32)
        img_emb: np.ndarray | None = None
        txt_emb: np.ndarray | None = None
        brought = {"image_emb", "text_emb"} <= set(inputs.column_names)
        if brought:
            img_emb = _normalise(as_matrix(inputs["image_emb"]))
            txt_emb = _normalise(as_matrix(inputs["text_emb"]))
        score_col = self._score_column()
        if score_col is not None:
            col = pc.cast(inputs[score_col], pa.float64())
            given = pc.fill_null(col, np.nan).to_numpy(zero_copy_only=False)
            scores[todo] = given[todo].astype(np.float32)
        elif brought:
            scores[todo] = np.einsum("ij,ij->i", img_emb[todo], txt_emb[todo])
        elif todo.any():
            img_emb, txt_emb, scores, errs = self._encode(inputs, todo, captions)
            for i, e in enumerate(errs):
                if e is not None and codes[i] is None:
                    codes[i], details[i] = "image_undecodable", e
        if s.filter.min_score is not None:
            for i in np.flatnonzero(scores < s.filter.min_score):
                if codes[i] is None:
                    codes[i] = "below_min_score"
                    details[i] = f"{scores[i]:.4f} < {s.filter.min_score:g}"
        kept = np.array([c is None for c in codes], bool)
        scored = ~np.isnan(scores)
        out = {"uid": uids, "clip_score": pa.array(scores, pa.float32(), mask=~scored)}
        if img_emb is None and score_col is None:
            img_emb = txt_emb = np.zeros((n, self._embed_dim()), np.float32)
        if img_emb is not None and txt_emb is not None:
            out["image_emb"] = _with_nulls(fp16_list(img_emb), scored)
            out["text_emb"] = _with_nulls(fp16_list(txt_emb), scored)
        return pa.table({**out, **decisions(kept, codes, details)})

    def _embed_dim(self) -> int:
        return self._model().embed_dim

    def _encode(self, inputs: pa.Table, todo: np.ndarray, captions: list[str | None]):
        """Decode (threads) and encode (model) the pairs in ``todo``, batch by batch."""
        from curate.stages.score_encode import encode_rows

        s = self.section
        return encode_rows(self._model(), inputs, todo, captions, decode=s.decode,
                           batch_size=s.batch_size, cpus=_assigned_cpus())


def _load(spec: Any) -> Any:
    """Load the model; random init (``pretrained: none``) is seeded, so every actor, and every
    rerun, gets the same weights: meaningless scores, but consistent ones."""
    import torch

    from curate.models.clip import load_model

    if spec.pretrained == "none":
        state = torch.random.get_rng_state()
        torch.manual_seed(0)
        try:
            return load_model(spec)
        finally:
            torch.random.set_rng_state(state)
    return load_model(spec)


def _assigned_cpus() -> int:
    """CPUs the engine gave this actor: threads for decode and for torch."""
    return engine.assigned_cpus()


def _normalise(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(norm == 0, 1, norm)).astype(np.float32)


def _with_nulls(arr: pa.FixedSizeListArray, valid: np.ndarray) -> pa.Array:
    if valid.all():
        return arr
    return pa.FixedSizeListArray.from_arrays(arr.values, arr.type.list_size,
                                             mask=pa.array(~valid))
