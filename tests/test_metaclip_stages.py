"""match + balance as pipeline stages: text-first curation, shard independence, plan."""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from conftest import base_config, pool_rows, write_pool
from helpers import read_parts

from curate.driver import run_pipeline

WORDS = ["dog", "cat", "red car", "tree", "house", "blue", "sky", "beach", "umbrella", "kite"]


def _captions(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    weights = [60, 25, 10, 8, 5, 4, 3, 2, 1, 1]
    return [f"a {rng.choices(WORDS, weights)[0]} and the {rng.choice(WORDS)}, photo {i}"
            for i in range(n)]


def _vocab(tmp_path) -> str:
    p = tmp_path / "vocab.txt"
    p.write_text("\n".join(WORDS + ["photo", "car"]) + "\n")
    return str(p)


def _text_cfg(tmp_path, shard_size: int, **extra):
    return base_config(stages=["match", "balance"], pool={"shard_size": shard_size},
                       match={"metadata": _vocab(tmp_path)}, balance={"t": 40, "seed": 3},
                       **extra)


def test_text_first_kept_set_independent_of_sharding(tmp_path, ray_session):
    caps = _captions(600)
    caps[5] = "nothing from the vocabulary here"
    pool = tmp_path / "pool.parquet"
    pq.write_table(pa.table({"caption": caps}), pool)  # no URLs: text-first
    kept = []
    for size in (600, 86):
        out = tmp_path / f"run{size}"
        run_pipeline(_text_cfg(tmp_path, size), str(out), pool=str(pool))
        b = read_parts(out / "balance")
        kept.append(set(b.filter(b["kept"])["uid"].to_pylist()))
        counts = pq.read_table(out / "balance" / "entry_counts.parquet")
        # counts equal a recount from the match shards
        m = pq.read_table(out / "match")
        flat = pc.list_flatten(m["entry_ids"]).to_numpy()
        assert counts["count"].to_pylist() == np.bincount(flat, minlength=len(counts)).tolist()
        reasons = dict(zip(b["uid"].to_pylist(), b["reason"].to_pylist()))
        none_uid = pq.read_table(out / "pool").filter(
            pc.equal(pq.read_table(out / "pool")["caption"], caps[5]))["uid"][0].as_py()
        assert reasons[none_uid] == "no_metadata_match"
    assert kept[0] == kept[1]
    assert 0 < len(kept[0]) < 600


def test_download_after_balance_fetches_only_kept(tmp_path, image_server, ray_session):
    rows = [r for r in pool_rows(image_server) if "/ok/" in r["url"]]
    for i, r in enumerate(rows):
        r["caption"] = "a dog photo" if i % 3 else "a kite"
    pool = write_pool(tmp_path / "pool.parquet", rows)
    cfg = base_config(stages=["match", "balance", "download"],
                      match={"metadata": _vocab(tmp_path)}, balance={"t": 3, "seed": 0})
    out = tmp_path / "run"
    run_pipeline(cfg, str(out), pool=pool)
    b = read_parts(out / "balance")
    images = pq.read_table(out / "images")
    assert sorted(images["uid"].to_pylist()) == sorted(b.filter(b["kept"])["uid"].to_pylist())
    assert images.num_rows < len(rows)


def test_plan_finds_t_for_target(tmp_path, ray_session):
    from curate.app.plan import plan_run

    pool = tmp_path / "pool.parquet"
    pq.write_table(pa.table({"caption": _captions(400, seed=1)}), pool)
    out = tmp_path / "run"
    run_pipeline(_text_cfg(tmp_path, 100), str(out), pool=str(pool))
    res = plan_run(str(out), 200, None)
    assert (out / "plan" / "plan.png").stat().st_size > 1000
    assert res["expected"] == sorted(res["expected"])  # monotone in t
    t = res["t_for_target"]
    from curate.algorithms.balancing import expected_size

    m = pq.read_table(out / "match")["entry_ids"].combine_chunks()
    counts = pq.read_table(out / "balance" / "entry_counts.parquet")["count"].to_numpy()
    assert abs(expected_size(m, counts, [t])[0] - 200) < 1.0
