"""Run a pipeline: ingest the pool, then each stage in order, recording it all in run.json.

This is the driver. It holds the run's lock, decides what is stale (stage fingerprints),
runs global steps itself and hands per-shard work to the engine. A shard that fails (after
the engine's retries) is recorded and left out of later stages; the run ends with exit 3
when failed shards exceed ``run.max_failed_fraction``, and a rerun retries them.
"""

from __future__ import annotations

import logging
import time
from functools import partial
from typing import Any

from curate.config import PipelineConfig
from curate.core import engine
from curate.core.rundir import RunDir, now, pool_fingerprint, stage_fingerprints, versions
from curate.errors import FailedShardsError, InputError, RunDirError
from curate.stages.base import StageSpec, run_shard, stage_class
from curate.stages.ingest import ingest

log = logging.getLogger(__name__)


def _clear_stage(rd: RunDir, stage: str) -> None:
    d = rd.stage_dir(stage)
    if rd.fs.exists(d):
        log.info("%s: config changed, discarding its previous outputs", stage)
        rd.fs.rm(d, recursive=True)


def run_pipeline(
    cfg: PipelineConfig,
    out: str,
    pool: str | None = None,
    only: list[str] | None = None,
    extra: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Run ``cfg`` into the run directory ``out``; returns the manifest.

    ``only`` restricts to some of the pipeline's stages (``curate download RUN``); ``extra``
    passes per-stage options to workers (``{"download": {"retry_failed": True}}``).
    """
    rd = RunDir(out)
    with rd:
        manifest = rd.load_manifest()
        pfp = pool_fingerprint(cfg)
        if manifest and manifest.get("pool_fingerprint") not in (None, pfp):
            raise RunDirError(
                f"{out}: created with different pool settings (pool.columns/shard_size/...); "
                "use a new --out, or the pool settings recorded in its run.json")
        if not manifest:
            manifest = {"created": now(), "stages": {}}
        manifest.update(pool_fingerprint=pfp, config=cfg.model_dump(mode="json", by_alias=True),
                        versions=versions())
        spec = pool or manifest.get("pool", {}).get("spec")
        if spec is None:
            raise InputError(f"{out}: no pool given and none recorded; pass --pool")
        t0 = time.monotonic()
        ingest(rd, spec, cfg.pool, manifest, save=rd.save_manifest)
        manifest.setdefault("timings", {})["ingest"] = round(time.monotonic() - t0, 3)
        rd.save_manifest(manifest)

        engine.init(cfg.run.num_cpus)
        fps = stage_fingerprints(cfg, pfp)
        shards = rd.pool_shards()
        blocked: set[str] = set()  # shards a previous stage failed on
        failed_any: set[str] = set()
        for stage in cfg.stages:
            st = manifest["stages"].setdefault(stage, {})
            if only is not None and stage not in only:
                # not run now; later stages may still depend on it
                blocked |= set(st.get("failed_shards", []))
                continue
            if st.get("fingerprint") != fps[stage]:
                _clear_stage(rd, stage)
                st.clear()
            # recorded before any shard runs: a crash mid-stage must not look like a
            # config change (which would discard the shards that did finish)
            st.update(fingerprint=fps[stage], status="running", started=now())
            rd.save_manifest(manifest)
            failed = _run_stage(rd, cfg, stage, fps[stage], shards, blocked, st,
                                (extra or {}).get(stage, {}))
            rd.save_manifest(manifest)
            blocked |= failed
            failed_any |= failed
        manifest["finished"] = now()
        rd.save_manifest(manifest)
        total = max(1, len(shards))
        if failed_any and len(failed_any) / total > cfg.run.max_failed_fraction:
            raise FailedShardsError(
                f"{out}: {len(failed_any)} of {len(shards)} shards failed "
                f"(> run.max_failed_fraction={cfg.run.max_failed_fraction}); "
                "`curate status` lists them; rerun the same command to retry them")
        return manifest


def _run_stage(rd: RunDir, cfg: PipelineConfig, stage: str, fingerprint: str,
               shards: list[str], blocked: set[str], st: dict[str, Any],
               extra: dict[str, Any]) -> set[str]:
    """Run one stage; fills its manifest entry ``st``; returns the shards that failed."""
    cls = stage_class(stage)
    spec = StageSpec(stage, rd.url, cfg.model_dump(mode="json", by_alias=True), fingerprint,
                     dict(extra))
    driver_stage = cls(spec)
    todo = [s for s in shards if s not in blocked]
    st.update(shards_total=len(shards))
    t0 = time.monotonic()
    log.info("%s: %d shards", stage, len(todo))
    if not cls.per_shard:
        info = driver_stage.run_global(todo)
        st.update(status="done", finished=now(), seconds=round(time.monotonic() - t0, 3),
                  shards_done=len(todo), failed_shards=[], **info)
        return set()
    global_info = driver_stage.prepare(todo)
    spec = StageSpec(stage, rd.url, spec.config, fingerprint, {**extra, **global_info})
    driver_stage.spec = spec  # finalize sees what prepare found
    outcomes = engine.map_items(
        partial(run_shard, spec), todo, resources=driver_stage.resources(),
        max_retries=cfg.run.max_retries, timeout_s=cfg.run.shard_timeout_s,
        max_in_flight=driver_stage.max_in_flight(), num_actors=driver_stage.num_actors(),
        desc=stage)
    failed = {o.item for o in outcomes if not o.ok}
    ok = [o.value for o in outcomes if o.ok]
    dropped: dict[str, int] = {}
    for c in ok:
        for k, v in c.get("dropped", {}).items():
            dropped[k] = dropped.get(k, 0) + v
    st.update(
        shards_done=len(ok), shards_skipped=sum(1 for c in ok if c.get("skipped")),
        rows_in=sum(c.get("rows_in", 0) for c in ok), kept=sum(c.get("kept", 0) for c in ok),
        dropped=dropped, failed_shards=sorted(failed),
        errors={o.item: o.error for o in outcomes if not o.ok},
    )
    st["global"] = {k: v for k, v in global_info.items() if not isinstance(v, list | dict)
                     or len(str(v)) < 2000}
    if not failed:
        info = driver_stage.finalize(todo)
        st["global"].update(info.pop("global", {}))
        st.update(info)
    st.update(status="failed" if failed else "done", finished=now(),
              seconds=round(time.monotonic() - t0, 3))
    return failed
