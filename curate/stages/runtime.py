"""The worker runtime: how a declared :class:`~curate.stages.base.Stage` is built and run.

:mod:`curate.stages.base` is the contract (what a stage declares); this module is what the
driver hands the engine and what runs in workers: :func:`run_shard` (one shard of the shard
step, resumable by its footer), :func:`run_map` (one item of a global step's map),
:func:`rewrite_shard` (a global step that rewrites a shard's decisions — a cut — through the
same checks, counts and footer as the shard step), and :func:`run_inline` (every step in
this process, for tests, notebooks and benches).

A worker builds each stage once per process (:func:`get_stage`, a small LRU keyed by the
:class:`StageSpec`) from a pipeline parsed once per recorded config (:func:`pipeline_of`),
so a stage never parses the pipeline itself.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from curate.core import faults
from curate.core.io import read_shard_meta, write_parquet_atomic
from curate.stages.base import ShardStep, Stage, StageSpec, output_digest, summarize
from curate.stages.registry import Pipeline, parse_pipeline, remember

#: stages and parsed pipelines kept per worker process (least recently used goes first)
_KEEP = 8
_STAGES: OrderedDict[str, Stage] = OrderedDict()
_PIPELINES: OrderedDict[str, Pipeline] = OrderedDict()


def _remember(cache: OrderedDict, key: str, value: Any) -> Any:
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > _KEEP:
        cache.popitem(last=False)
    return value


def pipeline_of(config: dict[str, Any]) -> Pipeline:
    """The parsed pipeline of a recorded config, parsed once per process."""
    key = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()
    pipe = _PIPELINES.get(key)
    if pipe is not None:
        _PIPELINES.move_to_end(key)
        return pipe
    return _remember(_PIPELINES, key, parse_pipeline(config, "run config"))


def build(spec: StageSpec, cls: type[Stage] | None = None,
          pipeline: Pipeline | None = None) -> Stage:
    """A stage instance for ``spec`` (no ``setup()``); ``cls`` given: a plugin class the
    worker received by value is remembered, so the pipeline parses without importing it."""
    if cls is not None:
        remember(str((spec.config.get(spec.name) or {}).get("kind", spec.name)), cls)
    pipe = pipeline if pipeline is not None else pipeline_of(spec.config)
    return (cls or pipe.stage_class(spec.name))(spec, pipe)


def get_stage(spec: StageSpec, cls: type[Stage] | None = None, setup: bool = True) -> Stage:
    """The stage for ``spec``, built once per worker process; ``setup()`` (a model, an
    automaton) only for the shard step's workers, not for a global step's map."""
    key = spec.key() + ("+setup" if setup else "")
    stage = _STAGES.get(key)
    if stage is not None:
        _STAGES.move_to_end(key)
        return stage
    stage = build(spec, cls)
    if setup:
        stage.setup()
    return _remember(_STAGES, key, stage)


def check_reasons(stage: Stage, table: pa.Table) -> None:
    """A deciding stage writes only the reason codes it declares, and one on every drop:
    codes are stable API (run.json, report, SQL), so an undeclared one is a bug, caught
    where it is written rather than in a report that cannot explain it."""
    if not stage.decides or "reason" not in table.column_names:
        return
    dropped = pc.invert(pc.fill_null(table["kept"], False))
    codes = pc.unique(pc.fill_null(table["reason"].filter(dropped), "")).to_pylist()
    wrong = sorted(c for c in codes if c not in stage.reasons)
    if wrong:
        shown = ", ".join(repr(c) if c else "a null reason" for c in wrong)
        raise ValueError(f"{stage.name}: wrote {shown}, not among the reason codes its kind "
                         f"declares ({', '.join(stage.reasons) or 'none'})")


def run_shard(spec: StageSpec, cls: type[Stage], shard: str) -> dict[str, Any]:
    """Process one shard of a stage unless its output is already current. Runs in a worker."""
    t = [time.monotonic()]
    # the resume check needs no model: setup() (a model, an automaton) only once a shard
    # of this process really has work, so a resumed run skips done shards without it
    stage = get_stage(spec, cls, setup=False)
    rd = stage.rd
    inputs = stage.inputs(shard)
    t.append(time.monotonic())
    digest = stage.input_digest(shard, inputs)
    out = rd.shard_path(stage.pipeline.ref(spec.name).folder, shard)
    meta = read_shard_meta(rd.fs, out)
    if (meta and meta.get("fingerprint") == spec.fingerprint and meta.get("input") == digest
            and "output" in meta and not stage.needs_rerun(meta)):
        return {**meta.get("counts", {}), "output": meta["output"], "skipped": True}
    faults.maybe_fail(spec.name, shard)
    t.append(time.monotonic())
    stage = get_stage(spec, cls)
    table = stage.process(shard, inputs)
    if stage.schema is not None:
        table = table.select(stage.schema.names).cast(stage.schema)
    check_reasons(stage, table)
    t.append(time.monotonic())
    counts = summarize(stage.decides, table, inputs.num_rows, stage.count_detail_kinds)
    produced = output_digest(table)
    t.append(time.monotonic())
    counts["seconds"] = round(t[3] - t[2], 3)
    meta = {"stage": spec.name, "fingerprint": spec.fingerprint, "input": digest,
            "output": produced, "counts": counts}
    write_parquet_atomic(rd.fs, out, table, meta=meta)
    t.append(time.monotonic())
    faults.trace(spec.name, shard)
    faults.maybe_fail(spec.name, shard, after_write=True)
    # where a shard's time goes (run.json sums it per stage): reading inputs, digests and
    # resume check, the stage's own work (+ setup on a process's first shard), counting,
    # writing
    timings = {"read": t[1] - t[0], "digest": t[2] - t[1], "process": t[3] - t[2],
               "count": t[4] - t[3], "write": t[5] - t[4]}
    return {**counts, "output": produced, "skipped": False,
            "timings": {k: round(v, 4) for k, v in timings.items()}}


def rewrite_shard(stage: Stage, shard: str, decide: Callable[[pa.Table], pa.Table]
                  ) -> dict[str, Any]:
    """Rewrite one shard file of ``stage`` with ``decide(table)`` (a global cut's apply):
    the same schema cast, reason-code check and counts as the shard step, written
    atomically with its footer's counts updated. The footer keeps the shard step's
    ``fingerprint``/``input``/``output``: the shard step stays current (a rerun does not
    redo it), and the step that rewrote it is resumed by its own record in run.json — so
    ``decide`` must be idempotent (it may see its own earlier output after a crash)."""
    path = stage.rd.shard_path(stage.pipeline.ref(stage.name).folder, shard)
    meta = read_shard_meta(stage.rd.fs, path) or {}
    table = decide(stage.rd.read(stage.pipeline.ref(stage.name).folder, shard))
    if stage.schema is not None:
        table = table.select(stage.schema.names).cast(stage.schema)
    check_reasons(stage, table)
    before = meta.get("counts", {})
    counts = summarize(stage.decides, table, before.get("rows_in", table.num_rows),
                       stage.count_detail_kinds)
    write_parquet_atomic(stage.rd.fs, path, table, meta={**meta,
                                                         "counts": {**before, **counts}})
    return counts


def run_map(spec: StageSpec, cls: type[Stage], step: str, item: Any) -> Any:
    """One item of a global step's map. Runs in a worker."""
    stage = get_stage(spec, cls, setup=False)
    faults.maybe_fail(f"{spec.name}.{step}", _label(item))
    fn = next(s for s in stage.steps() if s.name == step)
    return fn.map(item)


def _label(item: Any) -> str:
    """How fault rules and logs name a work item: a shard name, a bucket number, ..."""
    if isinstance(item, dict):
        return str(item.get("name", item))
    return str(item)


def run_inline(stage: Stage, shards: list[str],
               mapper: Callable[[Callable[[Any], Any], list[Any]], list[Any]] | None = None
               ) -> dict[str, dict[str, Any]]:
    """Run every step of ``stage`` in this process, without the driver's bookkeeping.

    For tests and notebooks: the same plan/map/fold/commit as a pipeline run, the map done
    by ``mapper(fn, items) -> results`` (default: a plain loop). Returns each global step's
    info by step name, as run.json records them.
    """
    mapper = mapper or (lambda fn, items: [fn(i) for i in items])
    stage.shards = list(shards)
    state: dict[str, Any] = {}
    for step in stage.steps():
        stage.state = dict(state)
        stage.spec = StageSpec(stage.spec.name, stage.spec.run_url, stage.spec.config,
                               stage.spec.fingerprint, stage.spec.options, dict(state))
        if isinstance(step, ShardStep):
            mapper(lambda s: run_shard(stage.spec, type(stage), s), list(shards))
            continue
        items = step.plan()
        acc = step.start()
        for item, result in zip(items, mapper(step.map, items)):
            acc = step.fold(acc, item, result)
        state[step.name] = step.commit(acc) or {}
    return state
