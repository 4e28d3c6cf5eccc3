"""The stage protocol and the one per-shard loop every stage shares.

A stage is a small class: ``setup()`` once per worker process (load a model, build an
automaton), ``process(shard, inputs) -> Table`` per shard, and optional driver-side global
steps ``prepare()`` (before the shards, e.g. entry counts) and ``finalize()`` (after).
``run_shard`` owns resume: a shard whose output footer carries the current fingerprint and
input digest is not processed again; anything else is (re)computed and written atomically.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.compute as pc

from curate.config import PipelineConfig
from curate.core import faults
from curate.core.engine import Resources
from curate.core.io import read_shard_meta, write_parquet_atomic
from curate.core.rundir import DECIDING, REASON_DETAIL, RunDir, uid_digest

log = logging.getLogger(__name__)

REGISTRY = {
    "download": "curate.stages.download:DownloadStage",
    "score": "curate.stages.score:ScoreStage",
    "match": "curate.stages.match:MatchStage",
    "balance": "curate.stages.balance:BalanceStage",
    "prune": "curate.stages.prune:PruneStage",
    "emit": "curate.stages.emit:EmitStage",
    "report": "curate.stages.report:ReportStage",
}


@dataclass(frozen=True)
class StageSpec:
    """Everything a worker needs to rebuild a stage: picklable, small."""

    stage: str
    run_url: str
    config: dict[str, Any]
    fingerprint: str
    extra: dict[str, Any] = field(default_factory=dict)

    def key(self) -> str:
        payload = json.dumps([self.stage, self.run_url, self.fingerprint, self.extra],
                             sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()


class Stage:
    """Base class; subclasses set ``name`` and implement ``process`` (or ``run_global``)."""

    name: ClassVar[str]
    per_shard: ClassVar[bool] = True
    #: pool columns the stage reads (None: all)
    pool_columns: ClassVar[list[str] | None] = None

    def __init__(self, spec: StageSpec):
        self.spec = spec
        self.cfg = PipelineConfig.model_validate(spec.config)
        self.rd = RunDir(spec.run_url)
        self.section = getattr(self.cfg, self.name)
        i = self.cfg.stages.index(self.name)
        self.before: list[str] = list(self.cfg.stages[:i])

    # -- worker side
    def setup(self) -> None:
        """Once per worker process, before the first shard."""

    def inputs(self, shard: str) -> pa.Table:
        return self.rd.survivors(self.before, shard, self.pool_columns)

    def input_digest(self, shard: str, inputs: pa.Table) -> str:
        extra = json.dumps(self.spec.extra, sort_keys=True, default=str)
        return uid_digest(inputs["uid"]) + hashlib.sha256(extra.encode()).hexdigest()[:8]

    def needs_rerun(self, meta: dict[str, Any]) -> bool:
        """Process a shard again although its output is current (e.g. retry failures)."""
        return False

    def process(self, shard: str, inputs: pa.Table) -> pa.Table:
        raise NotImplementedError

    # -- driver side
    def resources(self) -> Resources:
        return Resources(num_cpus=1)

    def max_in_flight(self) -> int | None:
        return None

    def num_actors(self) -> int | None:
        """Run shards on this many long-lived actors instead of tasks (a model per actor)."""
        return None

    def prepare(self, shards: list[str]) -> dict[str, Any]:
        """Global step before the shards; what it returns reaches every worker (``extra``)."""
        return {}

    def finalize(self, shards: list[str]) -> dict[str, Any]:
        """Global step after the shards; what it returns is recorded in the manifest."""
        return {}

    def run_global(self, shards: list[str]) -> dict[str, Any]:
        """For stages that are not per shard (emit, report)."""
        raise NotImplementedError


def stage_class(name: str) -> type[Stage]:
    module, cls = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)


_CACHE: dict[str, Stage] = {}


def get_stage(spec: StageSpec) -> Stage:
    """The stage for ``spec``, built and set up once per worker process."""
    key = spec.key()
    stage = _CACHE.get(key)
    if stage is None:
        if len(_CACHE) > 4:
            _CACHE.clear()
        stage = stage_class(spec.stage)(spec)
        stage.setup()
        _CACHE[key] = stage
    return stage


def summarize(stage: str, table: pa.Table, rows_in: int) -> dict[str, Any]:
    """Counts for one shard: pairs in, kept, and dropped per reason."""
    counts: dict[str, Any] = {"rows_in": rows_in, "rows_out": table.num_rows}
    if stage in DECIDING and "kept" in table.column_names:
        kept = table["kept"]
        counts["kept"] = int(pc.sum(kept).as_py() or 0)
        dropped = table.filter(pc.invert(kept))
        reasons: dict[str, int] = {}
        if dropped.num_rows:
            # group long reasons ("semantic duplicate of <uid>") by their stem
            stems = pc.replace_substring_regex(dropped["reason"], REASON_DETAIL, "")
            vc = pc.value_counts(stems.combine_chunks())
            for item in vc.to_pylist():
                reasons[str(item["values"])] = int(item["counts"])
        counts["dropped"] = reasons
    else:
        counts["kept"] = table.num_rows
        counts["dropped"] = {}
    return counts


def run_shard(spec: StageSpec, shard: str) -> dict[str, Any]:
    """Process one shard of a stage unless its output is already current. Runs in a worker."""
    stage = get_stage(spec)
    rd = stage.rd
    inputs = stage.inputs(shard)
    digest = stage.input_digest(shard, inputs)
    out = rd.shard_path(spec.stage, shard)
    meta = read_shard_meta(rd.fs, out)
    if (meta and meta.get("fingerprint") == spec.fingerprint and meta.get("input") == digest
            and not stage.needs_rerun(meta)):
        return {**meta.get("counts", {}), "skipped": True}
    faults.maybe_fail(spec.stage, shard)
    t0 = time.monotonic()
    table = stage.process(shard, inputs)
    counts = summarize(spec.stage, table, inputs.num_rows)
    counts["seconds"] = round(time.monotonic() - t0, 3)
    write_parquet_atomic(rd.fs, out, table, meta={
        "stage": spec.stage, "fingerprint": spec.fingerprint, "input": digest, "counts": counts})
    faults.trace(spec.stage, shard)
    faults.maybe_fail(spec.stage, shard, after_write=True)
    return {**counts, "skipped": False}
