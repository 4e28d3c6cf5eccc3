"""toxicity: a caption toxicity score per pair (``ptoxic``), optionally a filter.

Output ``toxicity/part-NNNNN.parquet``: ``uid``, ``ptoxic`` (float32, the probability that
the caption is offensive), ``kept``, ``reason``, ``detail``; emit joins ``ptoxic``.

- **Model**: ``alt_profanity_check`` (the only one): the TF-IDF + calibrated linear SVM that
  the alt-profanity-check wheel ships, scored exactly as its ``predict_prob``; loading,
  provenance, licence and held-out quality are in :mod:`curate.models.toxicity`. The
  ``model`` step loads it once on the driver (a broken install fails before any worker
  starts) and records package, version, file sha256s, licence and the held-out figures in
  run.json (``stages.<name>.global``). Workers load it once per process (``setup``).
- **Null or empty captions** score 0.0.
- **Filter**: with ``max_ptoxic`` a pair is dropped when ``ptoxic > max_ptoxic``, reason
  ``toxic``, detail ``"0.9731 > 0.8"``; without it every pair is kept and only tagged.
  ``toxic`` is a sensitive code: the report and audits count such pairs, never show them.
- **Limits**: English words only, no meaning (see the model module): a tag for review and
  a coarse filter, not a safety guarantee. Ordinary captions about dogs score high (5.9% of
  Flickr8k's benign captions are above 0.5, 0.23% above 0.9): read the tagged pairs before
  choosing ``max_ptoxic``, and prefer 0.9 or more.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from curate.config import Section
from curate.stages.base import DECISION_FIELDS, GlobalStep, ShardStep, Stage, decisions


class ToxicityConfig(Section):
    max_ptoxic: float | None = Field(
        None, ge=0.0, le=1.0, description="drop pairs whose ptoxic is above this; unset: "
        "tag only")
    model: Literal["alt_profanity_check"] = Field(
        "alt_profanity_check", description="the caption toxicity model (shipped in its "
        "package's wheel)")


def detail(scores: np.ndarray, threshold: float) -> pa.Array:
    """``"<ptoxic> > <threshold>"`` per pair, the score rounded to 4 decimals."""
    text = pc.cast(pc.round(pa.array(scores, pa.float64()), 4), pa.string())
    return pc.binary_join_element_wise(text, f" > {threshold:g}", "")


class ToxicityStage(Stage):
    kind = "toxicity"
    folder = "toxicity"
    view = "toxicity"
    decides = True
    Config = ToxicityConfig
    schema = pa.schema([("uid", pa.string()), ("ptoxic", pa.float32()), *DECISION_FIELDS])
    reasons = {"toxic": "ptoxic > toxicity.max_ptoxic (detail: ptoxic > t)"}
    sensitive = ("toxic",)
    joins = ("ptoxic",)
    pool_columns = ["uid", "caption"]
    help = "caption toxicity score (alt-profanity-check's model); max_ptoxic filters."

    def steps(self) -> list:
        return [GlobalStep.on_driver("model", self._check_model), ShardStep()]

    def preflight(self) -> list[str]:
        """The model's package and files (installed, not loaded)."""
        from curate.errors import CurateError
        from curate.models import toxicity

        try:
            toxicity.data_dir(self.section.model)
        except CurateError as err:
            return [f"{self.name}.model: {err}"]
        return []

    def _check_model(self, _: Any) -> dict[str, Any]:
        from curate.models import toxicity

        return toxicity.describe(self.section.model)

    def setup(self) -> None:
        from curate.models import toxicity

        toxicity.load(self.section.model)  # once per worker, not in a shard's time

    def process(self, shard: str, inputs: pa.Table) -> pa.Table:
        from curate.models import toxicity

        scores = toxicity.ptoxic(inputs["caption"], self.section.model)
        t = self.section.max_ptoxic
        if t is None:
            kept, why = np.ones(scores.size, bool), None
        else:
            kept, why = ~(scores.astype(np.float64) > t), detail(scores, t)
        reason = pa.array(["toxic"] * scores.size, pa.string())
        return pa.table({"uid": inputs["uid"], "ptoxic": pa.array(scores, pa.float32()),
                         **decisions(kept, reason, why)})
