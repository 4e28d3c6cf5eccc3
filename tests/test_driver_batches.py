"""Several shards per Ray task (issue 24 part 9): same outputs as one shard per task, and a
shard that fails inside a batch fails alone, through the usual retry path."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import base_config
from helpers import read_parts

from curate.core import batches, engine
from curate.driver import StageIncomplete, run_pipeline
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
    """(function, items) of every engine call the driver makes (and its desc, last)."""
    calls: list[tuple[str, int]] = []
    real = engine.map_items

    def spy(fn, items, **kw):
        items = list(items)
        calls.append((getattr(fn, "func", fn).__name__, len(items)))
        descs.append(kw.get("desc"))
        return real(fn, items, **kw)

    descs: list[str] = []
    spy.descs = descs

    monkeypatch.setattr(engine, "map_items", spy)
    return calls


def test_batched_shards_equal_one_per_task(tmp_path, ray_session, monkeypatch):
    cfg, pool = _setup(tmp_path)
    calls = _spy(monkeypatch)
    run_pipeline(cfg, str(tmp_path / "batched"), pool=pool)
    # 2 Ray CPUs: 30 shards >= 4 x 3 per task at once, so 10 tasks of 3 shards
    assert ("run_batch", 10) in calls and ("run_shard", 30) not in calls
    monkeypatch.setattr(batches, "BATCH_MAX", 1)
    calls.clear()
    run_pipeline(cfg, str(tmp_path / "single"), pool=pool)
    assert ("run_shard", 30) in calls and not any(c[0] == "run_batch" for c in calls)
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


def test_a_global_steps_items_batch_too(tmp_path, ray_session, monkeypatch):
    """balance's count (one item per shard) goes 3 shards a task like the shard steps, gives
    the counts one task per shard gives, and an item failing in its batch is retried alone."""
    cfg, pool = _setup(tmp_path, retries=1)
    calls = _spy(monkeypatch)
    run_pipeline(cfg, str(tmp_path / "batched"), pool=pool)
    descs = engine.map_items.descs
    assert calls[descs.index("balance.count")] == ("run_batch", 10)
    monkeypatch.setattr(batches, "BATCH_MAX", 1)
    run_pipeline(cfg, str(tmp_path / "single"), pool=pool)
    assert calls[len(calls) - 1 - descs[::-1].index("balance.count")] == ("run_map", 30)
    counts = [pq.read_table(tmp_path / r / "balance" / "entry_counts.parquet")
              .sort_by("entry_id") for r in ("batched", "single")]
    assert counts[0].equals(counts[1]) and counts[0].num_rows > 0
    # the exact counts, from the captions themselves: each word's pairs (one match per pair
    # and word at most, as MetaCLIP's substring matching counts them)
    caps = pq.read_table(pool)["caption"].to_pylist()
    want = {w: sum(1 for c in caps if w in c) for w in WORDS}
    got = dict(zip(counts[0]["entry"].to_pylist(), counts[0]["count"].to_pylist(), strict=True))
    assert got == {w: n for w, n in want.items() if n}

    monkeypatch.setattr(batches, "BATCH_MAX", 16)
    calls.clear()
    monkeypatch.setenv("CURATE_FAULT", "balance.count:7:raise")
    with pytest.raises(StageIncomplete, match=r"balance.count: 1 of 30 items failed \(e.g. "
                       r"part-00007.parquet: InjectedFault"):
        run_pipeline(cfg, str(tmp_path / "fault"), pool=pool)
    assert ("run_map", 1) in calls  # shard 7's count, alone, after failing in its batch
    monkeypatch.delenv("CURATE_FAULT")
    run_pipeline(cfg, str(tmp_path / "fault"), pool=pool)  # resumes
    got = pq.read_table(tmp_path / "fault" / "balance" / "entry_counts.parquet").sort_by(
        "entry_id")
    assert got.equals(counts[0])
