"""Several shards per Ray task (issue 24 part 9): same outputs as one shard per task, and a
shard that fails inside a batch fails alone, through the usual retry path."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import base_config
from helpers import read_parts

from curate import driver
from curate.core import engine
from curate.driver import run_pipeline
from curate.errors import FailedShardsError

WORDS = ["dog", "cat", "red car", "tree", "house", "blue", "sky"]


def _setup(tmp_path, retries: int = 0):
    pool = tmp_path / "pool.parquet"
    caps = [f"a {WORDS[i % 7]} and the {WORDS[(i * 3) % 7]} {i}" for i in range(600)]
    pq.write_table(pa.table({"caption": caps}), pool)
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(WORDS) + "\n")
    cfg = base_config(stages=["match", "balance"], pool={"shard_size": 20},  # 30 shards
                      match={"metadata": str(vocab)}, balance={"t": 40, "seed": 3},
                      run={"max_retries": retries})
    return cfg, str(pool)


def _spy(monkeypatch) -> list[tuple[str, int]]:
    """(function, items) of every engine call the driver makes."""
    calls: list[tuple[str, int]] = []
    real = engine.map_items

    def spy(fn, items, **kw):
        items = list(items)
        calls.append((getattr(fn, "func", fn).__name__, len(items)))
        return real(fn, items, **kw)

    monkeypatch.setattr(engine, "map_items", spy)
    return calls


def test_batched_shards_equal_one_per_task(tmp_path, ray_session, monkeypatch):
    cfg, pool = _setup(tmp_path)
    calls = _spy(monkeypatch)
    run_pipeline(cfg, str(tmp_path / "batched"), pool=pool)
    # 2 Ray CPUs: 30 shards >= 4 x 3 per task at once, so 10 tasks of 3 shards
    assert ("_run_batch", 10) in calls and ("run_shard", 30) not in calls
    monkeypatch.setattr(driver, "BATCH_MAX", 1)
    calls.clear()
    run_pipeline(cfg, str(tmp_path / "single"), pool=pool)
    assert ("run_shard", 30) in calls and not any(c[0] == "_run_batch" for c in calls)
    for folder in ("match", "balance"):
        a = read_parts(tmp_path / "batched" / folder).sort_by("uid")
        b = read_parts(tmp_path / "single" / folder).sort_by("uid")
        assert a.equals(b)


@pytest.mark.parametrize("retries", [0, 1])
def test_a_failing_shard_in_a_batch_fails_alone(tmp_path, ray_session, monkeypatch, retries):
    cfg, pool = _setup(tmp_path, retries)
    calls = _spy(monkeypatch)
    monkeypatch.setenv("CURATE_FAULT", "match:4:raise")
    with pytest.raises(FailedShardsError):
        run_pipeline(cfg, str(tmp_path / "r"), pool=pool)
    st = json.loads((tmp_path / "r" / "run.json").read_text())["stages"]["match"]
    assert st["failed_shards"] == ["part-00004.parquet"]
    assert st["errors"]["part-00004.parquet"].startswith("InjectedFault: injected fault")
    assert st["shards_done"] == 29
    # tried once in its batch, then alone for the rest of its retries (if any)
    assert (("run_shard", 1) in calls) == bool(retries) and ("run_shard", 30) not in calls
    assert len(list((tmp_path / "r" / "match").glob("part-*.parquet"))) == 29
