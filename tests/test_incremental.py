"""A pool that gained files: only new shards go through per-shard stages, global steps are
recomputed, and the result equals a from-scratch run on the whole pool."""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from conftest import base_config
from helpers import curated

from curate.driver import run_pipeline

WORDS = ["dog", "cat", "tree", "house", "sky", "beach", "kite", "red", "blue", "car"]


def _write(path, start: int, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    caps = [" ".join(rng.choice(WORDS, 3, p=np.r_[[0.4, 0.2], [0.05] * 8])) + f" #{start + i}"
            for i in range(n)]
    centers = np.eye(8, dtype=np.float32)
    x = centers[rng.integers(0, 4, n)] + 0.05 * rng.normal(size=(n, 8)).astype(np.float32)
    emb = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 8)
    pq.write_table(pa.table({"caption": caps, "image_emb": emb}), path)


def _cfg(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(WORDS) + "\n")
    return base_config(stages=["match", "balance", "prune", "emit"], pool={"shard_size": 50},
                       match={"metadata": str(vocab)}, balance={"t": 30, "seed": 0},
                       prune={"k": 4, "niter": 10, "dedup_eps": 0.002, "dbp": True,
                              "target_fraction": 0.8},
                       emit={"rows_per_shard": 40})


def test_grown_pool_equals_from_scratch(tmp_path, ray_session):
    grow = tmp_path / "pool"
    grow.mkdir()
    _write(grow / "a.parquet", 0, 120, seed=1)
    cfg = _cfg(tmp_path)
    out = tmp_path / "incremental"
    run_pipeline(cfg, str(out), pool=str(grow))
    first_match = {p.name: p.stat().st_mtime_ns for p in (out / "match").glob("part-*")}
    assert len(first_match) == 3

    _write(grow / "b.parquet", 120, 90, seed=2)
    m = run_pipeline(cfg, str(out), pool=str(grow))
    assert m["pool"]["shards"] == 5
    # per-shard stages: only the new shards were processed
    assert m["stages"]["match"]["shards_skipped"] == 3
    assert {p.name: p.stat().st_mtime_ns for p in (out / "match").glob("part-*")
            if p.name in first_match} == first_match

    scratch = tmp_path / "scratch_pool"
    shutil.copytree(grow, scratch)
    fresh = tmp_path / "fresh"
    run_pipeline(cfg, str(fresh), pool=str(scratch))
    a, b = curated(out), curated(fresh)
    assert a.num_rows > 0 and a.equals(b)
    counts_a = pq.read_table(out / "balance" / "entry_counts.parquet")
    counts_b = pq.read_table(fresh / "balance" / "entry_counts.parquet")
    assert counts_a.equals(counts_b)
    assert pq.read_table(out / "prune" / "clusters.parquet").equals(
        pq.read_table(fresh / "prune" / "clusters.parquet"))
