"""The report's warning when a ``score.filter.min_score`` is a published threshold used with
another model than the one it was calibrated on.

Why: a CLIP-score threshold is a point on one model's cosine scale. LAION's 0.28 means "the
top ~X% of pairs" only for OpenAI's ViT-B/32; the same number on ViT-L/14 or on a DataComp
model keeps a very different set. Users copy these numbers from papers, so the report says
so when the configured scorer is not the calibration model. Values not in the table are
not judged (their calibration is unknown).

Known thresholds (cosine of L2-normalised image and text embeddings; pairs below dropped):

- LAION-400M: 0.3 on OpenAI CLIP ViT-B/32. Schuhmann et al., *LAION-400M*,
  arXiv:2111.02114, and LAION's release post ("drop all samples with a similarity below
  0.3", the ViT-B-32 model).
- LAION-5B English (laion2B-en): 0.28 on OpenAI CLIP ViT-B/32. Schuhmann et al., *LAION-5B*,
  NeurIPS 2022, arXiv:2210.08402; DataComp's ``laion2b`` baseline applies 0.28 to
  ``clip_b32_similarity_score`` (``baselines/apply_filter.py``, ``apply_filter``).
- LAION-5B multilingual (laion2B-multi, laion1B-nolang): 0.26 with the ViT-B/32 image tower
  and a multilingual CLIP text encoder (mCLIP), as in the LAION-5B paper. Not re-checked
  against the paper's text here; LAION's filtered-WIT card uses the same 0.26 with the
  multilingual ViT-B/32 text encoder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from curate.core.rundir import step_info


@dataclass(frozen=True)
class KnownThreshold:
    dataset: str
    threshold: float
    scorer: str  # a key of SCORERS, or "mclip" (no open_clip config is that model)
    source: str


#: scorer key -> words for the page
SCORERS = {"openai-b32": "OpenAI CLIP ViT-B/32", "openai-l14": "OpenAI CLIP ViT-L/14",
           "mclip": "ViT-B/32 image + multilingual CLIP text encoder (mCLIP)"}

KNOWN = (
    KnownThreshold("LAION-400M", 0.30, "openai-b32", "arXiv:2111.02114"),
    KnownThreshold("LAION-5B English (laion2B-en)", 0.28, "openai-b32", "arXiv:2210.08402"),
    KnownThreshold("LAION-5B multilingual (laion2B-multi)", 0.26, "mclip", "arXiv:2210.08402"),
)

#: DataComp's metadata columns (``baselines/apply_filter.py``, ``load_uids_with_clip_score``)
POOL_COLUMNS = {"clip_b32_similarity_score": "openai-b32",
                "clip_l14_similarity_score": "openai-l14"}


def scorer_of(section: Any) -> tuple[str | None, str]:
    """(scorer key or None when unknown, words) of a score section's configuration."""
    col = getattr(section, "pool_score_column", None)
    if col not in (None, "auto"):  # auto only takes the configured model's own column
        key = POOL_COLUMNS.get(col)
        return key, (SCORERS[key] if key else f"the pool's {col} column")
    if getattr(section, "model_config_path", None) and not section.model:
        return None, f"the model in {section.model_config_path}"
    model = (section.model or "ViT-B-32")
    name = model.lower().removesuffix("-quickgelu")
    key = None
    if section.pretrained == "openai":
        key = {"vit-b-32": "openai-b32", "vit-l-14": "openai-l14"}.get(name)
    return key, (SCORERS[key] if key else f"{model} ({section.pretrained})")


def threshold_notes(pipeline: Any, refs: Any, manifest: dict[str, Any] | None = None
                    ) -> list[str]:
    """One note per score instance whose ``min_score`` is a known threshold of another model.

    A pool that brought embeddings was scored without the configured model: the note then
    says the scorer is unknown (run.json records that as ``global.model``)."""
    notes = []
    stages = (manifest or {}).get("stages", {})
    for ref in refs:
        if ref.kind != "score":
            continue
        s = pipeline.section(ref.name)
        thr = s.filter.min_score
        if thr is None:
            continue
        key, words = scorer_of(s)
        recorded = str(step_info(stages.get(ref.name), "model").get("model", ""))
        if recorded.startswith("none: the pool brings embeddings"):
            key, words = None, "embeddings the pool brought (their model is unknown to curate)"
        for k in KNOWN:
            if abs(thr - k.threshold) < 1e-9 and key != k.scorer:
                notes.append(
                    f"{ref.name}.filter.min_score = {thr:g} is {k.dataset}'s threshold, "
                    f"calibrated on {SCORERS[k.scorer]} ({k.source}), but these scores come "
                    f"from {words}. Thresholds do not carry across models: the same number "
                    "keeps a different share of pairs on another model's scale.")
    return notes
