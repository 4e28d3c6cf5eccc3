"""Preflight: what every stage of a run needs, checked before ingest, Ray and the first stage.

Why: a stage checks its own needs in its first step, on the driver — after every stage
before it ran. A pipeline whose score weights are not on the machine fetched 10,000 images
for 7 minutes before it said so. Here each instance is built on the driver (as the driver
builds it) and asked :meth:`~curate.stages.base.Stage.preflight`: weights, heads,
vocabularies, eval sets, denylists, reference embeddings, and the pool columns it reads,
against the pool's schema — read from the pool spec's first file before ingest (mapped to
canonical names as ingest maps them), or from the run directory's pool shards once there.
Every problem is collected, one line each, so a user fixes them all in one go.

Checks only look (a directory entry, a cache entry, a Parquet footer): no model is loaded,
nothing is downloaded. The driver raises :class:`NotReady` (exit 2) with the lines.
"""

from __future__ import annotations

import logging
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from curate.core.rundir import RunDir
from curate.errors import ConfigError, CurateError, InputError
from curate.stages.base import StageSpec

log = logging.getLogger(__name__)


class NotReady(ConfigError, InputError):
    """What a run needs is missing or wrong — a setting, a file, a pool column (so both a
    config and an input error): one line per problem; exit 2."""


def preflight(cfg: Any, out: str | RunDir, pool_spec: str | None,
              only: list[str] | None = None) -> list[str]:
    """Every problem of pipeline ``cfg`` (a :class:`~curate.stages.registry.Pipeline`) run
    into ``out`` over ``pool_spec``, one line each; ``only``: just these instances (the
    others must be done already). Empty: ready to run."""
    rd = out if isinstance(out, RunDir) else RunDir(out)
    names, problems = pool_columns(cfg, rd, pool_spec)
    conf, fps = cfg.dump(), cfg.fingerprints()
    for name in cfg.stages:
        if only is not None and name not in only:
            continue
        cls = cfg.stage_class(name)
        try:
            stage = cls(StageSpec(name, rd.url, conf, fps[name]), cfg)
            stage.preflight_pool = names
            found = _declared(stage, names) + stage.preflight()
        except CurateError as err:
            found = [str(err)]
        except Exception:  # noqa: BLE001 - a broken check must not stop a run that works
            log.warning("%s: preflight check failed; the stage checks again when it runs",
                        name, exc_info=True)
            found = []
        problems += [p for p in found if p not in problems]
    return problems


def pool_columns(cfg: Any, rd: RunDir, spec: str | None) -> tuple[list[str] | None, list[str]]:
    """(the pool's columns as stages see them, problems reading them): the run directory's
    first pool shard, else the first file of ``spec`` with ingest's column mapping. None
    (no column checks) when neither can be read."""
    shards = rd.pool_shards()
    if shards:
        with rd.fs.open(rd.shard_path("pool", shards[0]), "rb") as f:
            return pq.read_schema(f).names, []
    if spec is None:
        return None, []
    from curate.stages._pool_read import CANONICAL_DEFAULTS, column_map
    from curate.stages.ingest import resolve_pool

    try:
        fs, files = resolve_pool(spec)
        with fs.open(files[0], "rb") as f:
            found = pq.read_schema(f).names
        mapping = column_map(cfg.pool, found, files[0])
    except CurateError as err:
        return None, [str(err)]
    except (OSError, pa.ArrowInvalid) as err:
        return None, [f"pool {spec}: not a readable Parquet file ({err})"]
    taken = set(mapping.values())
    extras = [c for c in found if c not in taken and not c.startswith("__index_level_")]
    return ["uid", *[c for c in CANONICAL_DEFAULTS if c in mapping and c != "uid"], *extras], []


def _declared(stage: Any, names: list[str] | None) -> list[str]:
    """The pool columns a kind declares it reads (``pool_columns``)."""
    if names is None or not stage.pool_columns:
        return []
    return [f"{stage.name}: the pool has no `{c}` column (the stage reads it; the pool has "
            f"{', '.join(names)})" for c in stage.pool_columns if c not in names]
