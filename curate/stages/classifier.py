"""classifier: a head a user brings (NSFW, watermark, ...) on each pair's CLIP image embedding.

``head`` is a PyTorch state dict of linear layers (see ``curate.models.head``; a small MLP
names its ``activation``), ``sigmoid`` turns logits into probabilities, and ``keep`` says
which side of ``threshold`` stays: ``below`` (an NSFW or watermark probability: kept when
``score < threshold``) or ``above`` (kept when ``score >= threshold``). Name instances after
what they detect (``nsfw: {kind: classifier, ...}``): the drops then show under that name.
A head is taken for a safety rule unless ``sensitive: false``: what it drops is counted and
never shown as a picture (report, audit); say false for a watermark or quality head to see
its drops on the contact sheets.
Output ``<folder>/part-NNNNN.parquet``: uid, score, kept, reason, detail.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pyarrow as pa

from curate.config import Section
from curate.stages._head_stage import HeadStage, detail
from curate.stages.base import DECISION_FIELDS


class ClassifierConfig(Section):
    head: str
    threshold: float
    keep: Literal["below", "above"] = "below"
    sigmoid: bool = False
    activation: Literal["none", "relu"] = "none"
    #: a safety head (NSFW, ...): its drops are never shown as pictures; false: shown
    sensitive: bool = True


class ClassifierStage(HeadStage):
    kind = "classifier"
    folder = "classifier"
    view = "classifier"
    Config = ClassifierConfig
    score_column = "score"
    head_key = "head"
    schema = pa.schema([("uid", pa.string()), ("score", pa.float32()), *DECISION_FIELDS])
    reasons = {"classifier_above_threshold": "head score >= threshold with keep: below "
                                                 "(NSFW, watermark heads)",
               "classifier_below_threshold": "head score < threshold with keep: above"}
    help = "A user's classifier head (NSFW, watermark) on CLIP image embeddings."
    doc_notes = {"sensitive": "yes, unless `sensitive: false`"}
    doc_sections = ({"head": "my_head.pt", "threshold": 0.5},)

    @classmethod
    def sensitive_with(cls, section: Any) -> tuple[str, ...]:
        return tuple(cls.reasons) if section.sensitive else ()

    def head_name(self) -> str:
        return self.section.head

    def sigmoid(self) -> bool:
        return self.section.sigmoid

    def keep(self, scores: np.ndarray) -> tuple[np.ndarray, str, pa.Array | None]:
        t = self.section.threshold
        if self.section.keep == "below":
            return scores < t, "classifier_above_threshold", detail(scores, ">=", t)
        return scores >= t, "classifier_below_threshold", detail(scores, "<", t)
