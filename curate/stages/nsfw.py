"""nsfw: LAION's CLIP-based NSFW detector and clip-retrieval's violence flag per pair.

The heads are LAION-AI/CLIP-based-NSFW-Detector's (MIT, bundled in ``curate/models/heads``,
commit and sha256 in its README): a Keras-style normalisation ``(x - mean) / (sqrt(variance)
+ 1e-10)``, Linear+ReLU layers, a last Linear and a sigmoid (ViT-B/32: 512→32→32→1;
ViT-L/14: 768→64→512→256→1), trained on OpenAI CLIP image embeddings. As clip-retrieval
(``clip_back.py``) does, each embedding is L2-normalised first (a zero norm divides by 1);
``punsafe`` is the head's output. ``violent`` is clip-retrieval's violence detector: of the
two prompt embeddings LAION ships (``violence_detection_vit_*.npy``), the second has the
larger dot product with the normalised embedding (``np.argmax(np.einsum("ij,kj->ik", emb,
prompts), axis=1) == 1``).

Without ``max_punsafe`` the stage only tags (every pair kept); with it a pair is dropped when
``punsafe > max_punsafe`` (reason ``nsfw``), and with ``drop_violent`` when ``violent``
(reason ``violent``; ``nsfw`` wins when both hold). Both codes are ``sensitive``: the report
counts those drops and never shows them as pictures. Embeddings: see ``_head_stage``. The
``head`` step (on the driver, before any worker) refuses a score stage whose model is not
the head's OpenAI model unless ``allow_other_model``, and records the head's file, sha256,
source commit and licence. Output ``nsfw/part-NNNNN.parquet``: uid, punsafe, violent, kept,
reason, detail.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, model_validator

from curate.algorithms.embeddings import as_matrix
from curate.config import Section
from curate.errors import ConfigError, InputError
from curate.stages._head_stage import HeadStage, cached_head, detail
from curate.stages.base import DECISION_FIELDS, decisions

_PROMPTS: dict[str, np.ndarray] = {}


class NsfwConfig(Section):
    #: which bundled head (and violence prompts): the OpenAI CLIP model of the embeddings
    model: Literal["vit_b_32", "vit_l_14"] = "vit_l_14"
    #: None: tag only (every pair kept); else drop ``punsafe > max_punsafe``
    max_punsafe: float | None = Field(None, ge=0, le=1)
    #: compute the violence flag (False: the column is null)
    violence: bool = True
    drop_violent: bool = False
    #: run on a score stage whose model is not the head's (the scores are then not LAION's)
    allow_other_model: bool = False

    @model_validator(mode="after")
    def _violence_to_drop(self) -> NsfwConfig:
        if self.drop_violent and not self.violence:
            raise ValueError("drop_violent needs violence: true (the flag it drops on)")
        return self


def _prompts(model: str) -> np.ndarray:
    from curate.models.head import load_prompts

    if model not in _PROMPTS:
        _PROMPTS[model] = load_prompts(model)
    return _PROMPTS[model]


def _scatter(values: pa.Array, where: np.ndarray) -> pa.Array:
    """``values`` (one per True of ``where``) at those rows, null elsewhere."""
    pos = np.cumsum(where) - 1
    return pc.take(values, pa.array(pos, pa.int64(), mask=~where))


class NsfwStage(HeadStage):
    kind = "nsfw"
    folder = "nsfw"
    view = "nsfw"
    Config = NsfwConfig
    score_column = "punsafe"
    schema = pa.schema([("uid", pa.string()), ("punsafe", pa.float32()),
                        ("violent", pa.bool_()), *DECISION_FIELDS])
    reasons = {"nsfw": "punsafe > nsfw.max_punsafe (detail: punsafe > t)",
               "violent": "clip-retrieval's violence prompt wins (nsfw.drop_violent)"}
    joins = ("punsafe", "violent")
    sensitive = ("nsfw", "violent")
    help = "LAION's CLIP-based NSFW detector (punsafe) and violence flag; max_punsafe drops."

    def head_name(self) -> str:
        from curate.models.head import nsfw_path

        return str(nsfw_path(self.section.model))

    def sigmoid(self) -> bool:
        return True

    # ------------------------------------------------------------------ driver
    def preflight(self) -> list[str]:
        """The bundled head, the embeddings, and a score stage of the head's model."""
        from curate.models.head import NSFW

        _, _, width, clip = NSFW[self.section.model]
        try:
            self._model_check(width, clip)
        except (ConfigError, InputError) as err:
            return [*super().preflight(), str(err)]
        return super().preflight()

    # ------------------------------------------------------------------ driver: the head step
    def _check(self, _: object) -> dict:
        from curate.models.head import NSFW, NSFW_LICENCE, NSFW_SOURCE, nsfw_path
        from curate.models.weights import file_sha256 as sha256

        s = self.section
        file, prompts, width, clip = NSFW[s.model]
        layers = cached_head(self.head_name())
        info = {"head": file, "model": s.model, "clip_model": f"{clip} (openai)",
                "file": f"curate/models/heads/{file}", "sha256": sha256(nsfw_path(s.model)),
                "source": f"{NSFW_SOURCE[0]}@{NSFW_SOURCE[1]}: models/{file}",
                "source_commit": NSFW_SOURCE[1], "licence": NSFW_LICENCE,
                "inputs": int(layers[0][0].shape[1]), "layers": len(layers),
                "warning": self._model_check(width, clip)}
        if s.violence:
            info.update(violence_prompts=prompts,
                        violence_sha256=sha256(nsfw_path(s.model, "prompts")),
                        violence_source=f"{NSFW_SOURCE[0]}@{NSFW_SOURCE[1]}: {prompts}")
        return info

    def _model_check(self, width: int, clip: str) -> str | None:
        """Refuse (exit 2) a score stage of another model than the head's, unless
        ``allow_other_model``: then a warning. Pool embeddings: their width must fit."""
        s = self.section
        score = self._score_stage()
        if score is None:
            got = self._pool_width()
            if got is not None and got != width:
                raise InputError(f"{self.name}: head {s.model} takes {width}-d OpenAI {clip} "
                                 f"embeddings but the pool's image_emb is {got}-d")
            return (f"nsfw head {s.model} expects OpenAI {clip} image embeddings; the pool's "
                    "image_emb must come from that model")
        sec = self.pipeline.section(score.name)
        model = sec.model or ("" if sec.model_config_path else "ViT-B-32")
        if model.lower().removesuffix("-quickgelu") == clip.lower() and \
                sec.pretrained == "openai":
            return None
        said = f"{model or sec.model_config_path} ({sec.pretrained})"
        if not s.allow_other_model:
            raise ConfigError(f"{self.name}: head {s.model} was trained on OpenAI {clip} "
                              f"embeddings but {score.name} uses {said}; score with model "
                              f"{clip}, pretrained openai, or set {self.name}."
                              "allow_other_model: true")
        return (f"nsfw head {s.model} was trained on OpenAI {clip} embeddings but "
                f"{score.name} uses {said}: its punsafe scores are not LAION's")

    def _pool_width(self) -> int | None:
        import pyarrow.parquet as pq

        shards = self.shards or self.rd.pool_shards()
        if not shards:
            return None
        path = self.rd.shard_path("pool", shards[0])
        with self.rd.fs.open(path, "rb") as f:
            schema = pq.read_schema(f)
        if "image_emb" not in schema.names:
            return None  # inputs() says what is missing, naming the stage
        typ = schema.field("image_emb").type
        if pa.types.is_fixed_size_list(typ):
            return typ.list_size
        col = self.rd.read("pool", shards[0], ["image_emb"])["image_emb"].drop_null()
        return len(col[0]) if len(col) else None

    # ------------------------------------------------------------------ worker: one shard
    def process(self, shard: str, inputs: pa.Table) -> pa.Table:
        from curate.algorithms.heads import head_scores, l2_normalised, violent

        s = self.section
        col = inputs["image_emb"].combine_chunks()
        if col.null_count:
            raise InputError(f"{self.name}: {shard}: {col.null_count} pairs have no image "
                             "embedding")
        layers = cached_head(self.head_name())
        want = layers[0][0].shape[1]
        x = as_matrix(col) if len(col) else np.zeros((0, want), np.float32)
        if x.shape[1] != want:
            raise InputError(f"{self.name}: head {s.model} takes {want}-d embeddings but the "
                             f"image embeddings are {x.shape[1]}-d: use the head of the CLIP "
                             "model that made them")
        x = l2_normalised(x)  # once, for both (clip-retrieval's ``normalized``)
        punsafe = head_scores(x, layers, "relu", sigmoid=True, normalise=False)
        flag = violent(x, _prompts(s.model), normalise=False) if s.violence else None
        kept, reason, why = self._decide(punsafe, flag)
        return pa.table({"uid": inputs["uid"].combine_chunks(),
                         "punsafe": pa.array(punsafe, pa.float32()),
                         "violent": (pa.array(flag, pa.bool_()) if flag is not None
                                     else pa.nulls(len(punsafe), pa.bool_())),
                         **decisions(kept, reason, why)})

    def _decide(self, punsafe: np.ndarray, flag: np.ndarray | None
                ) -> tuple[pa.Array, pa.Array, pa.Array | None]:
        s = self.section
        n = punsafe.size
        unsafe = punsafe > s.max_punsafe if s.max_punsafe is not None else np.zeros(n, bool)
        drop_v = flag & ~unsafe if s.drop_violent and flag is not None else np.zeros(n, bool)
        kept = pa.array(~(unsafe | drop_v), pa.bool_())
        is_unsafe = pa.array(unsafe, pa.bool_())
        reason = pc.if_else(is_unsafe, pa.scalar("nsfw"), pa.scalar("violent"))
        if not (unsafe.any() or drop_v.any()):
            return kept, reason, None
        # details of the dropped pairs only (decisions() nulls the kept ones' anyway)
        over = _scatter(detail(punsafe[unsafe], ">", s.max_punsafe), unsafe) if unsafe.any() \
            else pa.nulls(n, pa.string())
        return kept, reason, pc.if_else(is_unsafe, over, pa.scalar("violence prompt wins"))

    def keep(self, scores: np.ndarray) -> tuple[np.ndarray, str, pa.Array | None]:
        raise NotImplementedError("nsfw decides in process (punsafe and the violence flag)")
