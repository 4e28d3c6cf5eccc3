"""Checks the stages' ``preflight`` methods share: a file is there, the pool has a column,
an earlier stage or the pool gives the images or embeddings a stage reads.

Each returns a list of problem lines (empty: fine), one line each naming the instance and
the key, so a stage's ``preflight`` is a sum of them. They look only — a directory entry, a
Parquet footer — so checking a whole pipeline takes milliseconds (:mod:`curate.stages.preflight`).
"""

from __future__ import annotations

from typing import Any

import pyarrow.parquet as pq

from curate.core.io import url_to_fs


def pool_names(stage: Any) -> list[str] | None:
    """The pool's columns as stages see them (canonical names, ``uid`` included): what
    preflight read before ingest (``stage.preflight_pool``), else the run directory's first
    pool shard; None when unknown (then no column is checked)."""
    if stage.preflight_pool is not None:
        return stage.preflight_pool
    shards = stage.rd.pool_shards()
    if not shards:
        return None
    with stage.rd.fs.open(stage.rd.shard_path("pool", shards[0]), "rb") as f:
        return pq.read_schema(f).names


def missing_file(key: str, path: str | None, what: str) -> list[str]:
    """``key``'s file (a local path or an fsspec URL) must exist; ``what`` says what it is."""
    if not path:
        return []
    try:
        fs, p = url_to_fs(path)
        if fs.isfile(p):
            return []
    except (OSError, ValueError, ImportError) as err:
        return [f"{key}: {path} cannot be reached ({type(err).__name__}: {err})"]
    return [f"{key}: {path} does not exist ({what})"]


def image_embeddings(stage: Any) -> list[str]:
    """The nearest earlier score stage's ``image_emb``, else the pool's."""
    names = pool_names(stage)
    if stage.previous("score") is not None or names is None or "image_emb" in names:
        return []
    return [f"{stage.name}: needs image embeddings: no score stage runs before it and the "
            "pool has no image_emb column (add a score stage, or map one with "
            "pool.columns.image_emb)"]


def images(stage: Any, instead: tuple[str, ...] = ()) -> list[str]:
    """The nearest earlier download stage's images, else the pool's ``image`` column (or one
    of the columns ``instead``: what the stage reads when the pool brings it)."""
    names = pool_names(stage)
    if stage.previous("download") is not None or names is None:
        return []
    if "image" in names or any(c in names for c in instead):
        return []
    alt = "".join(f" or {c}" for c in instead)
    return [f"{stage.name}: needs images: no download stage runs before it and the pool has "
            f"no image{alt} column (add a download stage, or map one with pool.columns.image)"]


def columns(stage: Any, needed: list[str], why: str) -> list[str]:
    """Pool columns ``needed`` (canonical names), one line per missing one."""
    names = pool_names(stage)
    if names is None:
        return []
    return [f"{stage.name}: the pool has no `{c}` column ({why}; it has "
            f"{', '.join(names)})" for c in needed if c not in names]
