"""Run a pipeline: ingest the pool, then every stage's steps in order, recorded in run.json.

This is the driver. It holds the run's lock, decides what is stale (fingerprints, resume
keys) and runs every step the same way (docs/ARCHITECTURE.md, "The driver"):

- a shard step is one engine call over the pool shards that reach the stage; a shard that
  fails after the engine's retries is recorded and left out of later stages, and the run
  ends with exit 3 when failed shards exceed ``run.max_failed_fraction``;
- a global step is plan (here) -> one engine call -> fold (here, as results arrive) ->
  commit (here); any failure in it, or a shard failure before it in the same stage, leaves
  the stage *incomplete*: no later stage runs (none ever reads provisional decisions), and
  the run ends with exit 3 and one line. A rerun of the same command resumes.

Resume keys: a shard step's is each shard file's footer; a global step's is its record in
run.json, keyed by the stage fingerprint, the identity of the stage's input (the output ids
of the stages before it and the shards it sees) and what earlier steps committed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from functools import partial
from typing import Any

from curate.core import batches, engine, faults, slots
from curate.core.io import list_shards
from curate.core.rundir import RunDir, now, versions
from curate.errors import CurateError, FailedShardsError, InputError, RunDirError
from curate.stages.base import GlobalStep, ShardStep, StageSpec
from curate.stages.ingest import ingest
from curate.stages.preflight import NotReady, preflight
from curate.stages.registry import Pipeline
from curate.stages.runtime import run_map, run_shard

log = logging.getLogger(__name__)


class StageIncomplete(FailedShardsError):
    """A stage could not finish a step; later stages wait for it (exit 3, resumable)."""


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()
                          ).hexdigest()[:16]


def _clear_stage(rd: RunDir, folder: str, name: str) -> None:
    d = rd.stage_dir(folder)
    if rd.fs.exists(d):
        log.info("%s: config changed, discarding its previous outputs", name)
        rd.fs.rm(d, recursive=True)


def run_pipeline(
    cfg: Pipeline,
    out: str,
    pool: str | None = None,
    only: list[str] | None = None,
    options: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Run ``cfg`` into the run directory ``out``; returns the manifest.

    ``only`` restricts to some of the pipeline's stages (``curate download RUN``); the stages
    before them must then be complete. ``options`` passes per-stage options to workers
    (``{"download": {"retry_failed": True}}``).
    """
    rd = RunDir(out)
    with rd:
        manifest = rd.load_manifest()
        pfp = cfg.pool_fingerprint()
        if manifest and manifest.get("pool_fingerprint") not in (None, pfp):
            raise RunDirError(
                f"{out}: created with different pool settings (pool.columns/shard_size/...); "
                "use a new --out, or the pool settings recorded in its run.json")
        if not manifest:
            manifest = {"created": now(), "stages": {}}
        manifest.update(pool_fingerprint=pfp, config=cfg.dump(), versions=versions())
        spec = pool or manifest.get("pool", {}).get("spec")
        if spec is None:
            raise InputError(f"{out}: no pool given and none recorded; pass --pool")
        problems = preflight(cfg, rd, spec, only)  # before Ray, ingest and any stage
        if problems:
            raise NotReady("\n".join(problems))
        engine.init(cfg.run.num_cpus)
        t0 = time.monotonic()
        ingest(rd, spec, cfg.pool, manifest, save=rd.save_manifest)
        manifest.setdefault("timings", {})["ingest"] = round(time.monotonic() - t0, 3)
        manifest.pop("finished", None)
        rd.save_manifest(manifest)

        fps = cfg.fingerprints()
        shards = rd.pool_shards()
        blocked: set[str] = set()  # shards an earlier stage failed on
        failed_any: set[str] = set()
        upstream: list[str] = []  # output ids of the stages so far
        for name in cfg.stages:
            ref = cfg.ref(name)
            st = manifest["stages"].setdefault(name, {})
            if only is not None and name not in only:
                if (st.get("fingerprint") != fps[name]
                        or st.get("status") not in ("done", "failed")):
                    if any(cfg.stages.index(o) > cfg.stages.index(name) for o in only):
                        raise CurateError(  # a usage error: exit 2
                            f"{out}: {name} is not done with the current config; run the "
                            "whole pipeline (`curate run --out RUN`) first")
                blocked |= set(st.get("failed_shards", []))
                upstream.append(st.get("output_id", ""))
                continue
            if st.get("fingerprint") != fps[name]:
                _clear_stage(rd, ref.folder, name)
                st.clear()
            # what the last finished run's shard step was given (None: it did not finish)
            done_key = st.get("shard_key") if st.get("status") == "done" else None
            # recorded before any shard runs: a crash mid-stage must not look like a
            # config change (which would discard the shards that did finish)
            st.update(fingerprint=fps[name], status="running", started=now(), kind=ref.kind,
                      folder=ref.folder)
            st.pop("error", None)
            rd.save_manifest(manifest)
            todo = [s for s in shards if s not in blocked]
            input_id = _digest(upstream, todo)
            try:
                failed = _run_stage(rd, cfg, name, fps[name], todo, len(shards), input_id, st,
                                    (options or {}).get(name, {}), manifest, done_key)
            except CurateError as err:
                if not isinstance(err, FailedShardsError):
                    st.update(status="failed", error=str(err), finished=now())
                    rd.save_manifest(manifest)
                    raise
                _block_after(manifest, cfg, name, str(err))
                rd.save_manifest(manifest)
                raise
            rd.save_manifest(manifest)
            blocked |= failed
            failed_any |= failed
            upstream.append(st["output_id"])
            if _too_many(failed_any, shards, cfg):
                # later stages would only curate what is left: stop here, resumable
                _block_after(manifest, cfg, name)
                rd.save_manifest(manifest)
                raise _failed_shards(out, failed_any, shards, cfg, name)
        manifest["finished"] = now()
        rd.save_manifest(manifest)
        if _too_many(failed_any, shards, cfg):
            raise _failed_shards(out, failed_any, shards, cfg, None)
        return manifest


def _too_many(failed: set[str], shards: list[str], cfg: Pipeline) -> bool:
    return bool(failed) and len(failed) / max(1, len(shards)) > cfg.run.max_failed_fraction


def _failed_shards(out: str, failed: set[str], shards: list[str], cfg: Pipeline,
                   stage: str | None) -> FailedShardsError:
    where = f" (in {stage}; later stages wait)" if stage else ""
    return FailedShardsError(
        f"{out}: {len(failed)} of {len(shards)} shards failed{where} "
        f"(> run.max_failed_fraction={cfg.run.max_failed_fraction}); "
        "`curate status` lists them; rerun the same command to retry them")


def _block_after(manifest: dict[str, Any], cfg: Pipeline, name: str,
                 why: str | None = None) -> None:
    """Mark every stage after ``name`` as waiting for it, and ``name`` itself incomplete
    when ``why`` says why (a stage that finished with failed shards keeps its status)."""
    if why is not None:
        manifest["stages"][name].update(status="incomplete", error=why, finished=now())
    for later in cfg.stages[cfg.stages.index(name) + 1:]:
        lst = manifest["stages"].setdefault(later, {})
        if lst.get("status") != "done":
            lst["status"] = "blocked"
        lst["blocked_by"] = name


def _engine_opts(cfg: Pipeline) -> dict[str, Any]:
    return {"max_retries": cfg.run.max_retries, "timeout_s": cfg.run.shard_timeout_s}


def _run_stage(rd: RunDir, cfg: Pipeline, name: str, fingerprint: str, todo: list[str],
               n_shards: int, input_id: str, st: dict[str, Any], options: dict[str, Any],
               manifest: dict[str, Any], done_key: str | None = None) -> set[str]:
    """Run one stage's steps; fills its manifest entry ``st``; returns the failed shards.
    ``done_key``: the shard step's key when the stage last finished (see ``_unchanged``)."""
    cls = cfg.stage_class(name)
    conf = cfg.dump()
    state: dict[str, Any] = {}
    stage = cls(StageSpec(name, rd.url, conf, fingerprint, dict(options), state), cfg)
    stage.shards = list(todo)
    steps = stage.steps()
    records = st.setdefault("steps", {})
    st.update(shards_total=n_shards)
    t0 = time.monotonic()
    failed: set[str] = set()
    produced = ""  # fold of the shard outputs (order-independent)
    log.info("%s: %d shards", name, len(todo))
    # a cluster-wide cap (Stage.gates) is split over the shard tasks run at once; what is
    # left to share opens as a gate with the stage (its actor starts while the earlier
    # global steps run) and closes after its last step
    caps = stage.gates() if todo else {}
    in_flight = stage.max_in_flight()
    if caps:
        in_flight = engine.in_flight_limit(stage.resources(), in_flight, stage.num_actors())
    shares = {w: slots.split(cap, in_flight) if stage.split_gates() else (0, cap)
              for w, cap in caps.items()}
    gate_names = {w: stage.gate_name(w) for w, (_, shared) in shares.items() if shared}
    gates = engine.shared_gates({gate_names[w]: shares[w][1] for w in gate_names})
    with gates as gate_stats:
        for i, step in enumerate(steps):
            spec = StageSpec(name, rd.url, conf, fingerprint, dict(options), dict(state),
                             shares)
            stage.spec, stage.state = spec, spec.state
            if isinstance(step, ShardStep):
                key = _digest(fingerprint, input_id, state, "shards")
                if done_key == key and _unchanged(rd, cfg.ref(name).folder, cls, steps, todo,
                                                  options):
                    log.info("%s: unchanged since it finished, its %d shards kept", name,
                             len(todo))
                    produced = st["produced"]
                    st.update(shards_skipped=len(todo), worker_seconds={})
                    continue
                st.pop("shard_key", None)
                outcomes = _map_shards(spec, cls, stage, todo, in_flight, _engine_opts(cfg))
                failed, produced = _fold_shards(outcomes, st)
                st.update(shard_key=key, produced=produced)
                if failed and any(isinstance(s, GlobalStep) for s in steps[i + 1:]):
                    later = next(s.name for s in steps[i + 1:] if isinstance(s, GlobalStep))
                    raise StageIncomplete(
                        f"{name}: {len(failed)} of {len(todo)} shards failed (e.g. "
                        f"{sorted(failed)[0]}: {st['errors'][sorted(failed)[0]]}); its global "
                        f"step '{later}' needs every shard, so later stages wait; rerun the "
                        "same command to retry")
                continue
            key = _digest(fingerprint, step.name, input_id, produced, state)
            if step.version is not None:  # what it reads from outside the run directory
                key = _digest(key, step.version())
            if options:  # e.g. --retry-failed: download's consent step asks again
                key = _digest(key, options)
            rec = records.get(step.name)
            if rec and rec.get("key") == key and not cls.always_rerun:
                log.info("%s.%s: done before, reusing it", name, step.name)
                info = rec.get("info", {})
            else:
                info = _run_global(stage, spec, cls, step, cfg)
                records[step.name] = {"key": key, "info": info, "finished": now()}
                rd.save_manifest(manifest)
            state[step.name] = info
            if isinstance(info, dict) and "counts" in info:  # a step that rewrote decisions
                st.update(**info["counts"])
    if shares:  # the split, and each gate's statistics (filled as it closes): e.g. how
        # often a host's cap made a fetch wait
        st["gates"] = {w: {"tasks_at_once": in_flight, "reserved_per_task": r, "shared": sh,
                           **gate_stats.get(gate_names.get(w, ""), {})}
                       for w, (r, sh) in shares.items()}
    st.pop("global", None)  # before issue 24 every step's info, merged flat: steps.<s>.info
    outputs = {k: v for info in state.values() if isinstance(info, dict)
               for k, v in (info.get("outputs") or {}).items()}
    if outputs:
        st["outputs"] = outputs
    if not any(isinstance(s, ShardStep) for s in steps):
        st.update(shards_done=len(todo), failed_shards=[], errors={})
    st.update(status="done" if not failed else "failed", finished=now(),
              seconds=round(time.monotonic() - t0, 3),
              output_id=_digest(fingerprint, input_id, produced,
                                {k: r.get("key") for k, r in records.items()}))
    return failed


def _unchanged(rd: RunDir, folder: str, cls: type, steps: list[Any], todo: list[str],
               options: dict[str, Any]) -> bool:
    """Whether a finished stage's shard step can be skipped without a task per shard: its
    config, inputs (the earlier stages' outputs, the shards) and earlier steps' results are
    those it finished with (the caller's key), and every output file is there (one listing).
    A shard's footer holds the digest of its inputs and the stage's state (``input_digest``
    sees nothing else), which the key covers for all shards at once. Not for a stage that
    always reruns or got options (``needs_rerun``, e.g. download's --retry-failed, is asked
    per shard then): the per-shard footer check in the workers stays the rule for those
    and for a missing file. Files are written whole (temporary name, then rename), so a
    listed one is complete; a file changed by hand is not noticed."""
    if (options or cls.always_rerun
            or sum(isinstance(s, ShardStep) for s in steps) != 1):
        return False
    return set(todo) <= set(list_shards(rd.fs, rd.path(folder)))


def _map_shards(spec: StageSpec, cls: type, stage: Any, todo: list[str], in_flight: int | None,
                opts: dict[str, Any]) -> list[engine.Outcome]:
    """A shard step's outcomes, in ``todo`` order (k shards per task where that pays:
    curate/core/batches.py)."""
    return batches.map_batched(partial(run_shard, spec, cls), todo,
                               resources=stage.resources(), max_in_flight=in_flight,
                               num_actors=stage.num_actors(), desc=spec.name, **opts)


def _fold_shards(outcomes: list[engine.Outcome], st: dict[str, Any]
                 ) -> tuple[set[str], str]:
    """Record a shard step's outcomes in ``st``: counts by reason, failures, worker seconds
    by phase; returns the failed shards and the fold of the shards' output digests."""
    failed = {o.item for o in outcomes if not o.ok}
    ok = [o.value for o in outcomes if o.ok]
    dropped: dict[str, int] = {}
    by_detail: dict[str, dict[str, int]] = {}  # reason -> kind of detail -> pairs
    timings: dict[str, float] = {}
    for v in ok:
        for k, n in v.get("dropped", {}).items():
            dropped[k] = dropped.get(k, 0) + n
        for code, kinds in (v.get("by_detail") or {}).items():
            acc = by_detail.setdefault(code, {})
            for k, n in kinds.items():
                acc[k] = acc.get(k, 0) + n
        for k, sec in (v.get("timings") or {}).items():
            timings[k] = round(timings.get(k, 0.0) + sec, 3)
    counts = {"rows_in": sum(v.get("rows_in", 0) for v in ok),
              "kept": sum(v.get("kept", 0) for v in ok), "dropped": dropped}
    if by_detail:
        counts["by_detail"] = by_detail
    else:
        st.pop("by_detail", None)
    st.update(shards_done=len(ok), shards_skipped=sum(1 for v in ok if v.get("skipped")),
              failed_shards=sorted(failed), worker_seconds=timings,
              errors={o.item: o.error for o in outcomes if not o.ok}, **counts)
    produced = _digest(sorted((o.item, o.value.get("output")) for o in outcomes if o.ok))
    return failed, produced


def _run_global(stage: Any, spec: StageSpec, cls: type, step: GlobalStep, cfg: Pipeline
                ) -> dict[str, Any]:
    """plan -> map -> fold -> commit, with one failure path: exit 3 and one line."""
    where = f"{spec.name}.{step.name}"
    try:
        items = step.plan()
    except CurateError:
        raise
    except Exception as err:  # noqa: BLE001 - any failure of a step is resumable work
        log.exception("%s: plan failed", where)
        raise StageIncomplete(f"{where}: planning failed: {_one_line(err)}") from None
    acc = step.start()
    errors: list[tuple[Any, str]] = []

    def fold(outcome: engine.Outcome) -> None:
        nonlocal acc
        if not outcome.ok:
            errors.append((outcome.item, outcome.error or "failed"))
            return
        acc = step.fold(acc, outcome.item, outcome.value)
        outcome.value = None  # the driver keeps only the fold

    try:
        batches.map_batched(partial(run_map, spec, cls, step.name), items,
                            resources=step.resources, on_done=fold, desc=where,
                            **_engine_opts(cfg))
    except CurateError:
        raise
    except Exception as err:  # noqa: BLE001 - the engine or a fold broke: resumable
        log.exception("%s: map failed", where)
        raise StageIncomplete(f"{where}: {_one_line(err)}; rerun the same command to "
                              "retry") from None
    if errors:
        item, err = errors[0]
        raise StageIncomplete(f"{where}: {len(errors)} of {len(items)} items failed (e.g. "
                              f"{_item_label(item)}: {err}); rerun the same command to retry")
    try:
        faults.maybe_fail(where, "commit")
        return step.commit(acc) or {}
    except CurateError:
        raise
    except Exception as err:  # noqa: BLE001
        log.exception("%s: commit failed", where)
        raise StageIncomplete(f"{where}: commit failed: {_one_line(err)}; rerun the same "
                              "command to retry") from None


def _item_label(item: Any) -> str:
    return str(item.get("name", item)) if isinstance(item, dict) else str(item)


def _one_line(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}".strip().splitlines()
    return text[0][:300] if text else type(err).__name__
