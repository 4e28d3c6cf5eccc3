"""aesthetic: LAION's aesthetic predictor on each pair's CLIP image embedding.

LAION-Aesthetics V1 (LAION-AI/aesthetic-predictor, MIT): a linear head on L2-normalised OpenAI
CLIP image embeddings, scores roughly 1-10. ``model`` picks the bundled head of the CLIP
model that made the embeddings (``vit_b_32``, ``vit_b_16``, ``vit_l_14``) or names another
head file of the same form. Output ``aesthetic/part-NNNNN.parquet``: uid, aesthetic_score,
kept, reason, detail; with ``min_score`` a pair is kept when ``aesthetic_score > min_score``,
strictly, as LAION's subsets were cut (LAION-AI/laion-datasets, laion-aesthetic.md: 120M
"laion-aesthetic" pairs scored > 7 and 8M "laion-art" > 8, with the ViT-L/14 head); without
it every pair is kept and only scored. Embeddings: see ``_head_stage``.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import field_validator

from curate.config import Section
from curate.stages._head_stage import HeadStage, detail
from curate.stages.base import DECISION_FIELDS


class AestheticConfig(Section):
    model: str = "vit_l_14"
    min_score: float | None = None
    #: between the layers of a multi-layer head brought as a file (LAION's V2 MLP: none)
    activation: Literal["none", "relu"] = "none"

    @field_validator("model")
    @classmethod
    def _known(cls, v: str) -> str:
        from curate.models.head import BUNDLED

        if v not in BUNDLED and not v.endswith((".pth", ".pt", ".bin")):
            raise ValueError(f"{v!r}: a bundled head ({', '.join(BUNDLED)}) or a .pth/.pt "
                             "file of linear layers")
        return v


class AestheticStage(HeadStage):
    kind = "aesthetic"
    folder = "aesthetic"
    view = "aesthetic"
    Config = AestheticConfig
    score_column = "aesthetic_score"
    schema = pa.schema([("uid", pa.string()), ("aesthetic_score", pa.float32()),
                        *DECISION_FIELDS])
    reasons = {"below_aesthetic_score": "aesthetic score not above aesthetic.min_score "
                                         "(detail: score <= t)"}
    joins = ("aesthetic_score",)
    help = "LAION's aesthetic predictor on CLIP image embeddings; min_score filters."

    def head_name(self) -> str:
        return self.section.model

    def keep(self, scores: np.ndarray) -> tuple[np.ndarray, str, pa.Array | None]:
        t = self.section.min_score
        if t is None:
            return np.ones(scores.size, bool), "below_aesthetic_score", None
        return scores > t, "below_aesthetic_score", detail(scores, "<=", t)

    def warning(self) -> str | None:
        from curate.models.head import BUNDLED

        if self.section.model not in BUNDLED:
            return None
        model = BUNDLED[self.section.model][2]
        score = self._score_stage()
        if score is None:
            return (f"aesthetic head {self.section.model} expects OpenAI {model} image "
                    "embeddings; the pool's image_emb must come from that model")
        sec = self.pipeline.section(score.name)
        if sec.model != model or sec.pretrained != "openai":
            return (f"aesthetic head {self.section.model} was trained on OpenAI {model} "
                    f"embeddings but {score.name} uses {sec.model} ({sec.pretrained}): its "
                    "scores are not LAION aesthetic scores")
        return None
