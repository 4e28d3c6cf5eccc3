"""quantile: keep the pairs in a cut of any numeric column of any earlier stage or the pool.

``quantile: {column: aesthetic_score, top_fraction: 0.3}`` keeps the top 30% of the pairs
that reach the stage by ``aesthetic_score``; also ``bottom_fraction`` (the lowest values)
and ``min``/``max`` (bounds, inclusive). ``rule`` names how a fraction becomes a count, as
score's ``top_fraction_rule`` does: ``datacomp`` (DataComp's ``get_threshold``: the value
at index int(n x f) of the sorted values is the threshold, ties kept) or ``exact_k``
(exactly round(f x n) pairs, ties by uid key). The cut itself is :mod:`curate.stages.cut`.

The column comes from ``source`` (an earlier instance, or ``pool``) or, by default, from the
nearest earlier stage whose per-shard output has it, else the pool; the ``source`` step
resolves it once, on the driver, before any shard (exit 2 naming what exists when nothing
has it). Output ``quantile/part-NNNNN.parquet``: uid, the column, kept, reason, detail; a
pair without a value (null, NaN) is dropped as ``no_value`` and never ranked.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field, model_validator

from curate.config import Section
from curate.errors import ConfigError
from curate.stages.base import GlobalStep, ShardStep, Stage, decisions
from curate.stages.cut import Cut, cut_steps

_DECISION = {"uid", "kept", "reason", "detail"}


class QuantileConfig(Section):
    column: str = Field(description="a numeric column of an earlier stage or the pool")
    source: str | None = Field(None, description="the earlier instance (or pool) holding "
                               "column; default: the nearest that has it, else the pool")
    top_fraction: float | None = Field(None, gt=0, le=1)
    bottom_fraction: float | None = Field(None, gt=0, le=1)
    min: float | None = None
    max: float | None = None
    rule: Literal["datacomp", "exact_k"] = Field(
        "datacomp", description="datacomp: value >= sorted_desc[int(n*f)], ties kept; "
        "exact_k: exactly round(f*n) pairs, ties by uid")

    @model_validator(mode="after")
    def _one_cut(self) -> QuantileConfig:
        try:
            self.cut()
        except ValueError as err:
            raise ValueError(f"quantile: {err}") from None
        if self.column in _DECISION:
            raise ValueError(f"quantile.column: {self.column!r} is not a value to cut on")
        return self

    def cut(self) -> Cut:
        return Cut(self.column, "outside_quantile", top_fraction=self.top_fraction,
                   bottom_fraction=self.bottom_fraction, min=self.min, max=self.max,
                   rule=self.rule, of="survivors")


class QuantileStage(Stage):
    kind = "quantile"
    folder = "quantile"
    decides = True
    Config = QuantileConfig
    reasons = {
        "outside_quantile": "not in the quantile stage's cut of its column (top_fraction, "
                            "bottom_fraction, or min/max)",
        "no_value": "the quantile stage's column is null or NaN for this pair",
    }
    help = "Keep a top/bottom fraction, or a range, of any numeric column of an earlier stage."
    doc_sections = ({"column": "aesthetic_score", "top_fraction": 0.3},
                    {"column": "aesthetic_score", "min": 5.0})

    def steps(self) -> list:
        return [GlobalStep.on_driver("source", self._resolve), ShardStep(),
                *cut_steps(self, self.section.cut())]

    def preflight(self) -> list[str]:
        src, names = self.section.source, [r.name for r in self.before]
        if src is not None and src != "pool" and src not in names:
            return [f"{self.name}.source: {src!r} is not a stage before {self.name} "
                    f"({', '.join(names) or 'none'}) nor pool"]
        return []

    # -- driver: where the column is
    def _schema(self, folder: str) -> pa.Schema | None:
        for shard in self.shards:
            path = self.rd.shard_path(folder, shard)
            if self.rd.fs.exists(path):
                with self.rd.fs.open(path, "rb") as f:
                    return pq.read_schema(f)
        return None

    def _resolve(self, _: Any) -> dict[str, Any]:
        col, src = self.section.column, self.section.source
        places = [("pool", "pool")] if src == "pool" else (
            [(r.name, r.folder) for r in reversed(self.before) if src in (None, r.name)]
            + ([("pool", "pool")] if src is None else []))
        seen = []
        for name, folder in places:
            schema = self._schema(folder)
            if schema is None:
                continue
            seen.append(name)
            if col in schema.names:
                t = schema.field(col).type
                if not (pa.types.is_integer(t) or pa.types.is_floating(t)
                        or pa.types.is_decimal(t)):
                    raise ConfigError(f"{self.name}.column: {name}'s {col!r} is {t}, not a "
                                      "number")
                return {"source": name, "folder": folder, "type": str(t)}
        if not self.shards:
            return {"source": None, "folder": None}
        raise ConfigError(f"{self.name}.column: no {col!r} in the output of "
                          f"{', '.join(seen) or 'any stage before it'}; name a column one "
                          "of them writes")

    # -- workers
    def inputs(self, shard: str) -> pa.Table:
        col, where = self.section.column, self.state["source"]
        if where["folder"] == "pool":
            return self.survivors(shard, ["uid", col])
        ids = self.survivors(shard, ["uid"])
        src = self.rd.read(where["folder"], shard, ["uid", col])
        idx = pc.index_in(ids["uid"], value_set=src["uid"].combine_chunks())
        return ids.append_column(col, pc.take(src[col], idx))

    def process(self, shard: str, inputs: pa.Table) -> pa.Table:
        col = inputs[self.section.column]
        v = pc.cast(col, pa.float64())
        valued = pc.and_(pc.is_valid(v), pc.invert(pc.fill_null(pc.is_nan(v), True)))
        kept = pc.fill_null(valued, False)
        reason = pa.array(np.full(inputs.num_rows, "no_value", object), pa.string())
        return pa.table({"uid": inputs["uid"], self.section.column: col,
                         **decisions(kept, reason)})
