"""What the ``aesthetic`` and ``classifier`` stages share: a head on each pair's image embedding.

The embeddings are the nearest earlier score stage's ``image_emb`` or, with no score stage,
the pool's own ``image_emb`` column (DataComp's metadata brings ViT-L/14 ones), so a pool
with embeddings needs no images and no model. The head is loaded once per worker process
(``curate.models.head``) and checked once on the driver first (the ``head`` step), so a
missing file or a head of the wrong width is one line before any worker starts.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curate.algorithms.embeddings import as_matrix
from curate.errors import InputError
from curate.stages.base import GlobalStep, ShardStep, Stage, decisions

_HEADS: dict[str, Any] = {}


def detail(scores: np.ndarray, op: str, threshold: float) -> pa.Array:
    """``"<score> <op> <threshold>"`` per pair, in Arrow (the decisions view's detail)."""
    text = pc.cast(pc.round(pa.array(scores, pa.float64()), 4), pa.string())
    return pc.binary_join_element_wise(text, f" {op} {threshold:g}", "")


def cached_head(name: str) -> Any:
    from curate.models.head import load_head

    if name not in _HEADS:
        _HEADS.clear()
        _HEADS[name] = load_head(name)
    return _HEADS[name]


class HeadStage(Stage):
    """A deciding stage that scores each surviving pair with a head (subclasses say which
    head, which column and how a score keeps a pair)."""

    decides = True
    score_column: ClassVar[str] = "score"
    #: the section key that names the head (preflight's lines name it)
    head_key: ClassVar[str] = "model"

    # ------------------------------------------------------------------ subclass hooks
    def head_name(self) -> str:
        raise NotImplementedError

    def keep(self, scores: np.ndarray) -> tuple[np.ndarray, str, pa.Array | None]:
        """(kept mask, the drop reason code, details or None) for a shard's scores."""
        raise NotImplementedError

    def warning(self) -> str | None:
        """A note for the report when the head does not fit the embeddings' model."""
        return None

    # ------------------------------------------------------------------ steps
    def steps(self) -> list:
        return [GlobalStep.on_driver("head", self._check), ShardStep()]

    def preflight(self) -> list[str]:
        """The head's file (bundled, or the user's) and the image embeddings it reads."""
        from pathlib import Path

        from curate.models.head import BUNDLED, HEADS_DIR
        from curate.stages import _needs

        name = self.head_name()
        path = HEADS_DIR / BUNDLED[name][0] if name in BUNDLED else Path(name).expanduser()
        return (_needs.missing_file(f"{self.name}.{self.head_key}", str(path),
                                    "a head: a PyTorch state dict of linear layers")
                + _needs.image_embeddings(self))

    def _check(self, _: object) -> dict:
        from curate.models.head import head_path

        layers = cached_head(self.head_name())
        return {"head": head_path(self.head_name()).name, "inputs": int(layers[0][0].shape[1]),
                "layers": len(layers), "warning": self.warning()}

    def _score_stage(self):
        return self.previous("score")

    def inputs(self, shard: str) -> pa.Table:
        score = self._score_stage()
        surv = self.survivors(shard, ["uid"] if score else None)
        if score is None:
            if "image_emb" not in surv.column_names:
                raise InputError(f"{self.name}: needs image embeddings: run the score stage "
                                 "before it, or bring an image_emb column in the pool "
                                 "(pool.columns.image_emb)")
            return surv.select(["uid", "image_emb"])
        return pa.table({"uid": surv["uid"].combine_chunks(), "image_emb": self.rd.column_for(
            score.folder, shard, surv["uid"], "image_emb")})

    def process(self, shard: str, inputs: pa.Table) -> pa.Table:
        from curate.algorithms.heads import head_scores

        col = inputs["image_emb"].combine_chunks()
        if col.null_count:
            raise InputError(f"{self.name}: {shard}: {col.null_count} pairs have no image "
                             "embedding")
        x = as_matrix(col) if len(col) else np.zeros((0, 0), np.float32)
        layers = cached_head(self.head_name())
        want = layers[0][0].shape[1]
        if len(col) and x.shape[1] != want:
            raise InputError(f"{self.name}: head {self.head_name()} takes {want}-d embeddings "
                             f"but the image embeddings are {x.shape[1]}-d: use the head of "
                             "the CLIP model that made them")
        scores = (head_scores(x, layers, self.section.activation, self.sigmoid())
                  if len(col) else np.zeros(0, np.float32))
        kept, code, detail = self.keep(scores)
        return pa.table({"uid": inputs["uid"].combine_chunks(),
                         self.score_column: pa.array(scores, pa.float32()),
                         **decisions(pa.array(kept, pa.bool_()),
                                     pa.array([code] * len(kept), pa.string()), detail)})

    def sigmoid(self) -> bool:
        return False
