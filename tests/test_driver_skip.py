"""A finished stage with unchanged config, inputs and files is skipped by the driver without
a Ray task per shard; a missing output file, a changed config or new shards send it through
the per-shard footer check as before."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
from conftest import base_config
from helpers import read_parts

from curate.core import engine
from curate.driver import run_pipeline

WORDS = ["dog", "cat", "red car", "tree", "house"]


def _setup(tmp_path, t: int = 5):
    pool = tmp_path / "pool"
    pool.mkdir(exist_ok=True)
    caps = [f"a {WORDS[i % 5]} and the {WORDS[(i * 3) % 5]} {i}" for i in range(120)]
    pq.write_table(pa.table({"caption": caps}), pool / "a.parquet")
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(WORDS) + "\n")
    return base_config(stages=["match", "balance"], pool={"shard_size": 20},  # 6 shards
                       match={"metadata": str(vocab)}, balance={"t": t, "seed": 3}), pool


def _spy(monkeypatch) -> list[tuple[str, int]]:
    calls: list[tuple[str, int]] = []
    real = engine.map_items

    def spy(fn, items, **kw):
        items = list(items)
        calls.append((kw.get("desc"), len(items)))
        return real(fn, items, **kw)

    monkeypatch.setattr(engine, "map_items", spy)
    return calls


def _files(out):
    return {p.relative_to(out).as_posix(): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(out.rglob("part-*.parquet")) if p.parts[-2] != "pool"}


def test_unchanged_stages_send_no_shard_to_ray(tmp_path, ray_session, monkeypatch):
    cfg, pool = _setup(tmp_path)
    out = tmp_path / "run"
    first = run_pipeline(cfg, str(out), pool=str(pool))
    before = _files(out)
    calls = _spy(monkeypatch)
    again = run_pipeline(cfg, str(out), pool=str(pool))
    assert not [c for c in calls if c[0] in ("match", "balance", "balance.count")], calls
    assert _files(out) == before
    for name in ("match", "balance"):
        a, b = first["stages"][name], again["stages"][name]
        assert b["status"] == "done" and b["shards_skipped"] == b["shards_total"] == 6
        assert (b["rows_in"], b["kept"], b["dropped"]) == (a["rows_in"], a["kept"], a["dropped"])
        assert b["output_id"] == a["output_id"]


def test_a_missing_file_or_new_shards_go_through_the_footers(tmp_path, ray_session,
                                                            monkeypatch):
    cfg, pool = _setup(tmp_path)
    out = tmp_path / "run"
    run_pipeline(cfg, str(out), pool=str(pool))
    want = read_parts(out / "balance").sort_by("uid")
    (out / "balance" / "part-00002.parquet").unlink()
    calls = _spy(monkeypatch)
    m = run_pipeline(cfg, str(out), pool=str(pool))
    assert ("match", 6) not in calls and ("balance", 6) in calls
    assert m["stages"]["balance"]["shards_skipped"] == 5  # the other five by their footers
    assert read_parts(out / "balance").sort_by("uid").equals(want)

    # new pool rows: new shards, so both stages run (the old shards skipped by footers)
    pq.write_table(pa.table({"caption": [f"a tree {i}" for i in range(40)]}),
                   pool / "b.parquet")
    calls.clear()
    m = run_pipeline(cfg, str(out), pool=str(pool))
    assert ("match", 8) in calls and m["stages"]["match"]["shards_skipped"] == 6
    assert m["stages"]["match"]["rows_in"] == 160


def test_a_changed_config_reruns(tmp_path, ray_session, monkeypatch):
    cfg, pool = _setup(tmp_path)
    out = tmp_path / "run"
    run_pipeline(cfg, str(out), pool=str(pool))
    cfg2, _ = _setup(tmp_path, t=2)
    calls = _spy(monkeypatch)
    run_pipeline(cfg2, str(out), pool=str(pool))
    assert ("match", 6) not in calls and ("balance", 6) in calls
    st = json.loads((out / "run.json").read_text())["stages"]["balance"]
    assert st["shards_skipped"] == 0 and st["status"] == "done"
